"""``canwatch inspect`` end to end: table, JSON lines, format override, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from detector.core.schema import FRAME_DTYPE, LABEL_CODE
from replay.writers import write_frames

REPO = Path(__file__).parents[1]
DATA = Path(__file__).parents[2] / "shared" / "data"


def _frames(n: int, labelled: int = 0) -> np.ndarray:
    f = np.zeros(n, FRAME_DTYPE)
    f["ts"] = 100.0 + np.arange(n) * 0.01
    f["can_id"] = 0x100 + np.arange(n) % 5
    f["dlc"] = 8
    f["data"] = np.arange(8)
    f["label"][:labelled] = LABEL_CODE["fuzzing"]
    return f


@pytest.fixture
def logs(tmp_path):
    road = tmp_path / "attack.csv"
    write_frames(road, _frames(101, labelled=7), "road")
    cand = tmp_path / "plain.log"
    write_frames(cand, _frames(50))
    return road, cand


def test_table(logs, capsys):
    road, cand = logs
    assert main(["inspect", str(road), str(cand)]) == 0
    out = capsys.readouterr().out.splitlines()
    head = ["FILE", "FORMAT", "FRAMES", "DURATION", "IDS", "CHANNELS", "LABELS"]
    assert out[0].split() == head
    assert out[1].split() == [
        str(road), "road", "101", "1.000", "s", "5", "-", "benign=94", "fuzzing=7"
    ]
    # a candump log without label columns cannot say its frames are benign
    assert out[2].split() == [str(cand), "candump", "50", "0.490", "s", "5", "can0", "unlabelled"]


def test_json_lines(logs, capsys):
    road, cand = logs
    assert main(["inspect", "--json", str(road), str(cand)]) == 0
    records = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [r["file"] for r in records] == [str(road), str(cand)]
    first = records[0]
    assert first["format"] == "road" and first["frames"] == 101 and first["ids"] == 5
    assert first["duration_s"] == pytest.approx(1.0)
    assert first["labels"] == {"benign": 94, "fuzzing": 7}


def test_a_format_without_labels_is_not_called_benign(tmp_path, capsys):
    """An ASC capture of a DoS read "benign=57,399": ASC has no place for labels."""
    frames = np.zeros(3, FRAME_DTYPE)
    frames["ts"] = [1.7e9, 1.7e9 + 0.1, 1.7e9 + 0.2]
    frames["can_id"], frames["dlc"] = 0x100, 8
    write_frames(tmp_path / "dos.asc", frames, "asc")
    assert main(["inspect", str(tmp_path / "dos.asc")]) == 0
    assert capsys.readouterr().out.splitlines()[1].split()[-1] == "unlabelled"
    assert main(["inspect", "--json", str(tmp_path / "dos.asc")]) == 0
    assert json.loads(capsys.readouterr().out)["labels"] is None


def test_format_override(tmp_path, capsys):
    odd = tmp_path / "capture.dat"
    odd.write_text("(1.000000) can0 123#11\n(2.500000) can0 456#R\n")
    assert main(["inspect", "--json", "--format", "candump", str(odd)]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert (rec["format"], rec["frames"], rec["duration_s"], rec["ids"]) == ("candump", 2, 1.5, 2)


def test_bad_file_among_good_ones_is_reported_and_fails(logs, tmp_path, capsys):
    bad = tmp_path / "bad.log"
    bad.write_text("(1.0) can0 123#11\n(1.1) can0 123#ZZ\n")
    assert main(["inspect", "--json", str(bad), str(logs[1])]) == 2
    captured = capsys.readouterr()
    assert captured.err.strip() == f"canwatch inspect: error: {bad}:2: bad hex in data 'ZZ'"
    assert json.loads(captured.out)["frames"] == 50


def test_console_script_error_is_one_line(tmp_path):
    bad = tmp_path / "bad.csv"
    bad.write_text("Time,Id,Byte1,Byte2,Byte3,Byte4,Byte5,Byte6,Byte7,Byte8,Label\n1.0,20E,4E\n")
    exe = Path(sys.executable).parent / "canwatch"
    if not exe.exists():
        exe = REPO / ".venv" / "bin" / "canwatch"
    proc = subprocess.run(
        [str(exe), "inspect", str(bad)], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert f"{bad}:2: expected 11 columns, got 3" in lines[0]


@pytest.mark.realdata
@pytest.mark.skipif(not DATA.is_dir(), reason=f"real captures not found at {DATA}")
def test_real_capture_json(capsys):
    path = DATA / "road" / "fuzzing_attack_1.csv"
    assert main(["inspect", "--json", str(path)]) == 0
    rec = json.loads(capsys.readouterr().out)
    assert rec["frames"] == 49_342 and rec["labels"]["fuzzing"] == 592
