"""CAN FD end to end: a simulated FD fleet (brand ds, platform stla) through the wire
format's schema 2 and the embedded broker into ``Detector``, and through the CLI's
simulate -> train -> evaluate on FD candump logs.

The stla model here is small (quick to train); how well each attack family is seen
on FD ids is tests/test_detection_quality.py's subject, not this module's.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_detect_service import (
    TopicReader,
    now_start,
    running,
    sample,
    send_all,
    service_config,
    wait_for,
)
from test_train_evaluate_cli import CANWATCH, REPO

from detector.core.brands import load_fleet
from detector.core.config import DetectionConfig
from detector.core.schema import FLAG_FD, is_fd_array
from detector.model.store import save_model
from detector.model.training import train_platform
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from replay.attacks import AttackSpec, inject
from replay.readers import read_frames
from replay.simulator import simulate_drives, simulate_vehicle

pytestmark = pytest.mark.kafka
FLEET = load_fleet()
ADAS = 0x1F4  # FD_ADAS_OBJECTS: 64 bytes, 50 ms, CRC in byte 0


@pytest.fixture(scope="module")
def stla_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("stla-models")
    recordings, vehicles = simulate_drives("stla", 4, 2, 45.0, 1.7e9, 700)
    model, summary = train_platform("stla", recordings, DetectionConfig(), drives=vehicles)
    save_model(model, d, FLEET.brands_of("stla"), summary)
    return d


def test_ds_runs_on_the_can_fd_platform():
    assert FLEET.platform_of("ds") == "stla"
    frames = simulate_vehicle("stla", 2.0, 1.7e9, seed=1)
    assert is_fd_array(frames) and ((frames["flags"] & FLAG_FD) != 0).any()


def test_an_fd_fleet_through_kafka_raises_incidents_on_fd_ids_and_error_floods(
    broker, unique_topic, stla_models
):
    cfg = service_config(broker, unique_topic, stla_models)
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-fd")
    start = now_start(30.0)
    attacks = {
        "veh-ds-masq": f"masquerade:start=10,duration=6,id={ADAS:#x}",
        "veh-ds-errors": "errorflood:start=10,duration=4",
    }
    streams = []
    for i, vehicle in enumerate(["veh-ds-masq", "veh-ds-errors", "veh-ds-benign"]):
        frames = simulate_vehicle("stla", 30.0, start, seed=7100 + i)
        if vehicle in attacks:
            frames, _ = inject(frames, AttackSpec.parse(attacks[vehicle]), seed=i)
        streams.append((vehicle, "ds", frames))
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    dlq = TopicReader(broker.bootstrap, cfg.kafka.dlq_topic)
    try:
        with running(detector):
            sent = send_all(cfg, streams)

            def done() -> bool:
                closed = {e["vehicle"] for e in reader.events() if e["status"] == "closed"}
                consumed = sample(metrics, "canwatch_frames_consumed_total", brand="ds")
                return consumed == sent and set(attacks) <= closed

            wait_for("every FD frame consumed and both incidents closed", done)
        events = reader.events()
        assert dlq.poll() == [], "schema-2 records must decode"
    finally:
        reader.close()
        dlq.close()
    assert sent == sum(len(f) for _, _, f in streams)  # frames, not lanes, are counted
    last = {e["vehicle"]: e for e in events}
    assert set(last) == set(attacks), f"benign FD vehicle flagged: {sorted(last)}"
    masq = last["veh-ds-masq"]
    named = {c["can_id"] for c in masq["can_ids"]} | {e["can_id"] for e in masq["evidence"]}
    assert any(str(n).startswith("0x1F4 FD") for n in named), named
    flood = last["veh-ds-errors"]
    assert flood["suspected_attack"] == "dos"
    assert flood["can_ids"][0]["can_id"] == "error frames"
    assert any("error frames" in e["text"] for e in flood["evidence"])


def _reports(node) -> list[dict]:
    """Every per-file report (a dict with "attacks") anywhere in an evaluate report."""
    if isinstance(node, dict):
        return ([node] if isinstance(node.get("attacks"), dict) else []) + [r for v in node.values() for r in _reports(v)]
    if isinstance(node, list):
        return [r for v in node for r in _reports(v)]
    return []


def _canwatch(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(CANWATCH), *args], capture_output=True, text=True, cwd=REPO, timeout=600
    )


def test_simulate_train_evaluate_on_fd_candump_logs(tmp_path: Path, stla_models: Path):
    out = tmp_path / "fleet"
    sim = _canwatch(
        "simulate", "--brands", "ds", "--vehicles", "3", "--duration", "30", "--seed", "5",
        "--out", str(out), "--attack", f"masquerade:start=12,duration=8,id={ADAS:#x}",
    )  # fmt: skip
    assert sim.returncode == 0, sim.stderr
    logs = sorted(out.glob("*.log"))
    assert len(logs) == 3
    victim = next(p for p in logs if "0000" in p.name)  # the i-th attack hits vehicle i
    frames = read_frames(victim)
    assert is_fd_array(frames) and ((frames["flags"] & FLAG_FD) != 0).any()
    assert b"##" in victim.read_bytes()[:20000]  # candump's FD notation
    models = tmp_path / "m"
    train = _canwatch("train", "--brand", "ds", "--out", str(models), *map(str, logs[1:]))
    assert train.returncode == 0, train.stderr
    report = tmp_path / "r.json"
    ev = _canwatch(
        "evaluate", "--models", str(stla_models), "--brand", "ds", "--report", str(report),
        str(victim),
    )  # fmt: skip
    assert ev.returncode == 0, ev.stderr
    got = json.loads(report.read_text())
    masq = [r["attacks"]["masquerade"] for r in _reports(got) if "masquerade" in r.get("attacks", {})]
    assert masq and masq[0]["detected"] and masq[0]["roc_auc"] >= 0.95, masq
    inspect = _canwatch("inspect", str(victim))
    assert inspect.returncode == 0, inspect.stderr
    assert np.isfinite(frames["ts"]).all()
