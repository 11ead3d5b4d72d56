"""simulate -> train -> evaluate end to end through the command line."""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from detector.cli import main
from detector.evaluation.evaluate import WINDOW_COLUMNS

REPO = Path(__file__).resolve().parents[1]
CANWATCH = Path(sys.executable).parent / "canwatch"
if not CANWATCH.exists():
    CANWATCH = REPO / ".venv" / "bin" / "canwatch"

FILE_KEYS = {
    "windows",
    "attacked_windows",
    "roc_auc",
    "benign_flagged_fraction",
    "incidents",
    "incidents_overlapping_attacks",
    "false_incidents",
    "false_incidents_per_hour",
    "benign_windows",
    "benign_hours",
    "true_incidents",
    "recall",
    "time_to_detect_s",
    "attacks",
}
ATTACK_KEYS = {
    "windows",
    "attacked_windows",
    "roc_auc",
    "precision",
    "recall",
    "f1",
    "time_to_detect_s",
    "incidents_overlapping",
    "true_incidents",
    "early_incidents",
    "detected",
    "benign_flagged_fraction",
    "false_incidents",
    "false_incidents_per_hour",
}


@pytest.fixture(scope="module")
def fleet_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("fleet")
    # attack i goes to vehicle i mod N: dos -> vehicle 0, suspension -> vehicle 1
    rc = main(
        [
            "simulate",
            "--brands",
            "jeep",
            "--vehicles",
            "4",
            "--duration",
            "40",
            "--seed",
            "3",
            "--out",
            str(out),
            "--attack",
            "dos:start=10,duration=5",
            "--attack",
            "suspension:start=25,duration=6",
        ]
    )
    assert rc == 0
    return out


def test_simulate_train_evaluate(fleet_dir: Path, tmp_path: Path, capsys) -> None:
    fleet = json.loads((fleet_dir / "fleet.json").read_text())
    files = [fleet_dir / v["file"] for v in fleet["vehicles"]]
    kind_of = {a["vehicle"]: a["kind"] for a in fleet["attacks"]}
    assert sorted(kind_of.values()) == ["dos", "suspension"]
    victims = [f for f in files if f.stem in kind_of]
    benign = [f for f in files if f.stem not in kind_of]
    assert len(victims) == 2 and len(benign) == 2

    models = tmp_path / "models"
    rc = main(["train", "--brand", "jeep", "--out", str(models), *map(str, benign)])
    assert rc == 0
    out = capsys.readouterr()
    assert "trained cusw v1" in out.out and "2 drives" in out.out
    assert "warning" not in out.err
    assert (models / "cusw-v1.json").is_file() and (models / "cusw-v1.skops").is_file()

    windows_csv, report_json = tmp_path / "W.csv", tmp_path / "R.json"
    rc = main(
        [
            "evaluate",
            "--models",
            str(models),
            "--brand",
            "jeep",
            "--windows-out",
            str(windows_csv),
            "--report",
            str(report_json),
            *map(str, victims),
        ]
    )
    assert rc == 0
    table = capsys.readouterr().out
    assert "dos" in table and "suspension" in table

    with open(windows_csv, newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert (
        tuple(rows[0])
        == WINDOW_COLUMNS
        == (
            "file",
            "vehicle",
            "window_start",
            "score",
            "label",
            "attack",
            "counted",
        )
    )
    body = rows[1:]
    assert all(r[6] in ("0", "1") and (r[6] == "1" or r[4] == "0") for r in body)
    assert {r[0] for r in body} == {str(f) for f in victims}
    assert {r[1] for r in body} == set(kind_of)
    assert all((r[4] == "1") == (r[5] != "") for r in body)
    assert all(float(r[3]) >= 0 for r in body)

    report = json.loads(report_json.read_text())
    assert report["model"] == {"platform": "cusw", "version": 1}
    assert set(report["files"]) == {str(f) for f in victims}
    for f in victims:
        kind = kind_of[f.stem]
        mine = [r for r in body if r[0] == str(f)]
        assert len(mine) >= 35
        assert {r[5] for r in mine} == {"", kind}
        file_report = report["files"][str(f)]
        assert set(file_report) >= FILE_KEYS
        assert file_report["windows"] == len(mine)
        assert file_report["attacked_windows"] == sum(r[4] == "1" for r in mine)
        assert set(file_report["attacks"]) == {kind}
        r = file_report["attacks"][kind]
        assert set(r) >= ATTACK_KEYS, kind
        assert r["attacked_windows"] >= 4, (kind, r)
        assert r["roc_auc"] is not None and r["roc_auc"] >= 0.95, (kind, r)
        # the first attacked window is flagged within 2 windows; whether an incident of its
        # own reports it (time_to_detect_s) depends on benign windows just before it
        assert r["first_flagged_window_s"] is not None, (kind, r)
        assert r["first_flagged_window_s"] <= 2.0, (kind, r)
        assert r["incidents_overlapping"] >= 1, (kind, r)
        assert r["detected"] == (r["time_to_detect_s"] is not None), (kind, r)
        assert r["true_incidents"] + r["early_incidents"] == r["incidents_overlapping"]
        assert file_report["incidents"] >= 1
        assert (
            file_report["incidents"]
            == file_report["true_incidents"] + file_report["false_incidents"]
        )
    pooled = report["pooled"]
    assert pooled["windows"] == len(body) and pooled["recordings"] == len(victims)
    assert pooled["attacks_total"] == 2


def _canwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CANWATCH), *args], capture_output=True, text=True, cwd=REPO, timeout=120
    )


def _one_line_error(proc: subprocess.CompletedProcess) -> str:
    assert proc.returncode == 2, proc
    assert "Traceback" not in proc.stderr, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_evaluate_with_empty_models_dir(fleet_dir: Path, tmp_path: Path) -> None:
    empty = tmp_path / "models"
    empty.mkdir()
    victim = next(fleet_dir.glob("*.log"))
    line = _one_line_error(
        _canwatch("evaluate", "--models", str(empty), "--brand", "jeep", str(victim))
    )
    assert line.startswith("canwatch evaluate: error:")
    assert "no model" in line and "cusw" in line


def test_train_on_malformed_file(fleet_dir: Path, tmp_path: Path) -> None:
    good = sorted(fleet_dir.glob("*.log"))[1]
    lines = good.read_text().splitlines()
    lines[6] = "(1700000000.5) can0 NOT#A#FRAME"
    bad = tmp_path / "bad.log"
    bad.write_text("\n".join(lines) + "\n")
    line = _one_line_error(
        _canwatch("train", "--brand", "jeep", "--out", str(tmp_path / "m"), str(bad))
    )
    assert f"{bad}:7:" in line, line
    assert not (tmp_path / "m").exists() or not list((tmp_path / "m").iterdir())


def test_training_on_one_drive_warns(fleet_dir: Path, tmp_path: Path, capsys) -> None:
    """One drive cannot show what changes between drives: the model trains, with a
    warning that says so."""
    fleet = json.loads((fleet_dir / "fleet.json").read_text())
    attacked = {a["vehicle"] for a in fleet["attacks"]}
    one = next(fleet_dir / v["file"] for v in fleet["vehicles"] if Path(v["file"]).stem not in attacked)
    rc = main(["train", "--brand", "jeep", "--out", str(tmp_path / "m"), str(one)])
    assert rc == 0
    out = capsys.readouterr()
    assert "1 drives" in out.out
    assert out.err.strip().startswith("canwatch train: warning: trained on one drive")
