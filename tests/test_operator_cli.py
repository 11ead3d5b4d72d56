"""What a first-time operator meets: log levels, kafka-python's noise, progress bars,
and the demo's tables, each tried the way a person at a shell would."""

from __future__ import annotations

import fcntl
import os
import pty
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest

from detector.cli import _subcommand_modules, main
from detector.cli._logging import configured
from detector.demo import format_incident, incident_widths, render_scorecard
from detector.transport.broker import free_port
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

CANWATCH = Path(sys.executable).parent / "canwatch"
REPO = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(REPO)}
#: a log line as canwatch formats them: time, level, logger name
LOG_LINE = re.compile(r"^\S+ \S+ (DEBUG|INFO|WARNING|ERROR|CRITICAL) (\S+): ")
BAR = ("\r", "%|", "\u2588")  # what a tqdm bar writes


# -- 1. no broker: canwatch's own lines, not kafka-python's ------------------------------


def _detect(tmp_path: Path, *extra: str) -> subprocess.Popen:
    argv = [
        str(CANWATCH), "detect", "--bootstrap", f"127.0.0.1:{free_port()}",
        "--metrics", "127.0.0.1:0", "--models", str(tmp_path / "models"), *extra,
    ]  # fmt: skip
    return subprocess.Popen(
        argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV
    )


def _loggers(stderr: str) -> list[str]:
    return [m.group(2) for m in map(LOG_LINE.match, stderr.splitlines()) if m]


def test_detect_without_a_broker_shows_only_canwatch_lines(tmp_path):
    quiet = _detect(tmp_path, "--connect-timeout", "3")
    debug = _detect(tmp_path, "--connect-timeout", "1", "--log-level", "debug")
    try:
        _, err = quiet.communicate(timeout=120)
        _, debug_err = debug.communicate(timeout=120)
    finally:
        for proc in (quiet, debug):
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert quiet.returncode == 2, err
    lines = err.strip().splitlines()
    assert not any(name.startswith("kafka") for name in _loggers(err)), err
    retries = [line for line in lines if "trying again" in line]
    assert retries and all(" WARNING canwatch.detect: cannot reach Kafka at " in r for r in retries)
    assert "no broker accepts connections" in retries[0]
    errors = [line for line in lines if line.startswith("canwatch detect: error:")]
    assert errors == [lines[-1]], err  # one clean error, last
    assert "cannot reach Kafka at 127.0.0.1:" in lines[-1] and "Traceback" not in err
    # --log-level debug: kafka-python's own lines are shown too
    assert debug.returncode == 2, debug_err[-2000:]
    assert any(name.startswith("kafka.") for name in _loggers(debug_err)), debug_err[-2000:]
    assert debug_err.strip().splitlines()[-1].startswith("canwatch detect: error: cannot reach")


def test_kafka_python_is_quiet_below_debug_and_restored_after():
    import logging

    kafka = logging.getLogger("kafka")
    before = kafka.level
    with configured("info"):
        assert not logging.getLogger("kafka.net.manager").isEnabledFor(logging.ERROR)
        assert logging.getLogger("canwatch.detect").isEnabledFor(logging.INFO)
    with configured("debug"):
        assert logging.getLogger("kafka.net.manager").isEnabledFor(logging.DEBUG)
    assert kafka.level == before


# -- 2. --log-level on every subcommand -------------------------------------------------


@pytest.mark.parametrize("command", _subcommand_modules())
def test_every_subcommand_takes_log_level(command, capsys):
    with pytest.raises(SystemExit) as help_exit:
        main([command, "--help"])
    assert help_exit.value.code == 0
    assert "--log-level" in capsys.readouterr().out
    with pytest.raises(SystemExit) as accepted:  # parsed (and checked) before --help acts
        main([command, "--log-level", "DEBUG", "--help"])
    assert accepted.value.code == 0
    capsys.readouterr()
    with pytest.raises(SystemExit) as refused:
        main([command, "--log-level", "loud"])
    assert refused.value.code == 2
    assert "invalid choice: 'loud'" in capsys.readouterr().err


def test_log_level_before_the_command_works_too(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--log-level", "info", "train", "--help"])
    assert exit_.value.code == 0 and "--log-level" in capsys.readouterr().out


# -- 3. progress: a bar on a terminal, nothing otherwise ------------------------------


@pytest.fixture(scope="module")
def drives(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    """Two short jeep drives, and a config with a small forest (the bars are the point)."""
    out = tmp_path_factory.mktemp("drives")
    config = out / "small.toml"
    config.write_text("[detection]\nn_estimators = 10\nmax_samples = 64\n")
    paths = ["--config", str(config)]
    for i in range(2):
        path = out / f"veh-jeep-{i}.log"
        write_frames(path, simulate_vehicle("cusw", 30, 1.7e9, seed=40 + i))
        paths.append(str(path))
    return paths


def on_pty(argv: list[str]) -> str:
    """What ``argv`` writes to a terminal (stdout and stderr both the pty, 120 columns)."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, 120, 0, 0))
    proc = subprocess.Popen(argv, stdout=follower, stderr=follower, env=ENV)
    os.close(follower)
    out = b""
    try:
        while chunk := _read(leader):
            out += chunk
        assert proc.wait(timeout=120) == 0, out.decode(errors="replace")[-2000:]
    finally:
        os.close(leader)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return out.decode(errors="replace")


def _read(fd: int) -> bytes:
    try:
        return os.read(fd, 65536)
    except OSError:  # EIO: the other end is closed
        return b""


def test_no_bar_without_a_terminal(drives, tmp_path, capsys):
    models = str(tmp_path / "models")
    assert main(["train", "--brand", "jeep", "--out", models, *drives]) == 0
    trained = capsys.readouterr()
    assert trained.err == ""
    assert trained.out.startswith("trained cusw v1 for ") and trained.out.count("\n") == 1
    assert main(["evaluate", "--brand", "jeep", "--models", models, *drives]) == 0
    evaluated = capsys.readouterr()
    assert evaluated.err == ""
    assert evaluated.out.startswith("file ") and not any(c in evaluated.out for c in BAR)


def test_bars_on_a_terminal(drives, tmp_path):
    models = str(tmp_path / "models")
    train = ["train", "--brand", "jeep", "--out", models, *drives]
    evaluate = ["evaluate", "--brand", "jeep", "--models", models, *drives]
    # both commands in one interpreter: canwatch's entry point, one start-up less
    script = f"from detector.cli import main; raise SystemExit(main({train}) or main({evaluate}))"
    shown = on_pty([sys.executable, "-c", script])
    trained, evaluated = shown.split("trained cusw v1 for ")
    assert "reading:" in trained and "fitting:" in trained and "%|" in trained, shown
    assert "scoring:" in evaluated and "%|" in evaluated, shown
    assert "veh-jeep-0.log" in evaluated  # the table, after the bar is gone


@pytest.mark.kafka
def test_publishing_bar_counts_the_frames_sent(broker, unique_topic, capsys):
    """replay and simulate --to-kafka: the bar wraps the producer and counts each record's
    frames (``progress=True`` stands in for a terminal on stderr)."""
    from detector.cli.replay import stream_to_kafka
    from detector.core.config import load_config
    from detector.transport.broker import create_topics

    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 1})
    cfg = load_config(None, env={}, overrides={"kafka.bootstrap": broker.bootstrap})
    frames = simulate_vehicle("cusw", 3, 1.7e9, seed=5)
    summary = stream_to_kafka(cfg, topic, [("veh-1", "jeep", frames)], None, "binary", 10, True)
    assert summary.frames == len(frames)
    err = capsys.readouterr().err
    assert "publishing:" in err and "frame" in err, err
    summary = stream_to_kafka(cfg, topic, [("veh-1", "jeep", frames)], None, "binary", 10)
    assert summary.frames == len(frames) and capsys.readouterr().err == ""  # not a terminal


# -- 4. the demo's tables line up whatever the vehicle names --------------------------


def _incident(vehicle: str, brand: str, ids: list[str]) -> dict:
    return {
        "status": "open",
        "severity": "critical",
        "suspected_attack": "dos",
        "brand": brand,
        "vehicle": vehicle,
        "can_ids": [{"can_id": i} for i in ids],
        "evidence": [{"text": "0x000: 2999 frames in the 1 s window"}],
    }


def test_demo_incident_rows_line_up_with_long_vehicle_names():
    fleet = [
        ("v1", "ds", None),
        ("veh-fiat-professional-0006", "fiat-professional", None),
        ("a-much-longer-vehicle-name-than-the-table-used-to-allow-0001", "jeep", None),
    ]
    widths = incident_widths(fleet)
    rows = [format_incident(_incident(v, b, ["0x000"]), widths) for v, b, _ in fleet]
    starts = {row.index("0x000") for row in rows}
    assert len(starts) == 1, "\n".join(rows)
    for (vehicle, _, _), row in zip(fleet, rows, strict=True):
        assert f" {vehicle} " in row  # whole, never cut


def test_demo_scorecard_columns_line_up_with_long_vehicle_names():
    attacks = [
        {"kind": k, "vehicle": v, "brand": b, "detected": d, "time_to_detect_s": t,
         "suspected_attack": k if d else None}
        for k, v, b, d, t in [
            ("dos", "v1", "ds", True, 1.0),
            ("fuzzing", "veh-fiat-professional-0006-long-name", "fiat-professional", True, 2.0),
            ("replay", "veh-x", None, False, None),
        ]
    ]  # fmt: skip
    campaign = {"campaigns": [], "expected_vehicles": ["v2", "v3", "v4"], "found": False, "unrelated": 0}
    card = {"attacks": attacks, "false_incidents": 0, "campaign": campaign}
    lines = render_scorecard(card).splitlines()
    head, rows = lines[0], lines[1:4]
    col = head.index("detected")
    assert all(row[col : col + 3] in ("yes", "NO ") for row in rows), "\n".join(lines)
    ttd_end = head.index("ttd_s") + len("ttd_s")
    assert [row[ttd_end - 4 : ttd_end] for row in rows] == ["1.00", "2.00", "   -"]
