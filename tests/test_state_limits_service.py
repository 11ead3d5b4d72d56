"""Bounded state through ``canwatch detect``'s loop and the embedded broker (issue 22):
a flood of vehicle keys and a fuzzer that outruns limits.max_novel_ids, each with
what the detector holds sampled while it runs, what it counted, and the incidents
it still raised. Short versions of bench/adversarial.py's runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_detect_service import (
    FLEET,
    TopicReader,
    fleet_streams,
    now_start,
    running,
    sample,
    send_all,
    service_config,
    wait_for,
)

from detector.core.schema import EXTENDED_FLAG, make_frames
from detector.model.pipeline import reserve_per_vehicle
from detector.model.store import load_latest
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.transport.kafka_io import make_producer
from replay.publisher import publish
from replay.simulator import simulate_vehicle

pytestmark = pytest.mark.kafka


def total(metrics: DetectorMetrics, name: str, **labels: str) -> float:
    """Sum of a family's samples whose labels include ``labels``."""
    out = 0.0
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                out += s.value
    return out


class Peak:
    """The largest values of what the detector holds, sampled while waiting."""

    def __init__(self, detector: Detector) -> None:
        self.detector = detector
        self.vehicles = self.streams = self.numbers = self.seen = 0

    def __call__(self) -> None:
        d = self.detector
        self.vehicles = max(self.vehicles, d.scorer.n_vehicles)
        self.streams = max(self.streams, d.scorer.n_streams)
        self.numbers = max(self.numbers, len(d._vnames))
        self.seen = max(self.seen, len(d.last_seen))


def test_a_flood_of_vehicle_keys_is_bounded_and_the_fleet_is_still_watched(
    broker, unique_topic, cusw_models
):
    limit, per_poll = 30, 100
    cfg = service_config(
        broker,
        unique_topic,
        cusw_models,
        partitions=2,
        **{"limits.max_vehicles": limit, "kafka.max_poll_records": per_poll},
    )
    streams, attacked = fleet_streams(4, 30, {0: "dos:start=14,duration=6"}, seed=500)
    (dos_vehicle,) = attacked
    first = [(v, b, f[f["ts"] < f["ts"][0] + 8]) for v, b, f in streams]
    rest = [(v, b, f[f["ts"] >= f["ts"][0] + 8]) for v, b, f in streams]
    one = make_frames(np.array([now_start(0)]), np.array([0x1E4], np.uint32), np.zeros((1, 8)))
    flood = [(f"flood-{i:04d}", "jeep", one) for i in range(800)]
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-keyflood")
    peak = Peak(detector)
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)

    def consumed(n: int) -> Callable[[], bool]:
        def done() -> bool:
            peak()
            return sample(metrics, "canwatch_frames_consumed_total", brand="jeep") >= n

        return done

    try:
        with running(detector):
            sent = send_all(cfg, first)
            wait_for("the fleet's first 8 s consumed", consumed(sent))
            producer = make_producer(cfg.kafka)
            try:  # one JSON record of one frame per key, then the fleet goes on
                sent += publish(producer, cfg.kafka.telemetry_topic, flood, None, "json").frames
            finally:
                producer.close()
            sent += send_all(cfg, rest)
            wait_for("everything consumed", consumed(sent))

            def dos_raised() -> bool:
                peak()
                return any(e["vehicle"] == dos_vehicle for e in reader.events())

            wait_for("the dos incident", dos_raised)
        events = reader.events()
    finally:
        reader.close()
    assert peak.vehicles <= limit
    assert peak.seen <= limit + per_poll  # (sampled from another thread: maybe mid-poll)
    assert sample(metrics, "canwatch_state_vehicles") <= limit
    assert sample(metrics, "canwatch_state_vehicles_max") == limit
    # the table of record numbers reuses those of vehicles let go
    assert peak.numbers <= limit + 3 * per_poll < len(flood)
    shed = total(metrics, "canwatch_frames_shed_total", reason="vehicle_limit")
    evicted = total(metrics, "canwatch_vehicles_evicted_total", reason="vehicle_limit")
    assert shed > 0 and evicted > 0 and shed + evicted >= len(flood) - limit
    # the known fleet kept being scored: its attack is an incident, and nothing else is
    assert {e["vehicle"] for e in events} == {dos_vehicle}
    assert {e["suspected_attack"] for e in events} == {"dos"}
    assert {v for v, _, _ in streams} <= set(detector.scorer.state["cusw"].index)


def test_a_fuzzer_past_max_novel_ids_is_one_fuzzing_incident_within_bounded_state(
    broker, unique_topic, cusw_models
):
    max_novel = 256
    cfg = service_config(
        broker, unique_topic, cusw_models, partitions=1, **{"limits.max_novel_ids": max_novel}
    )
    duration, rate = 30.0, 4000
    start = now_start(duration)
    normal = simulate_vehicle("cusw", duration, start, seed=2300)
    rng = np.random.default_rng(7)
    n = int(rate * 16)
    ts = np.sort(start + 8 + rng.uniform(0, 16, n))
    ids = rng.integers(0, 2**29, n).astype(np.uint32) | np.uint32(EXTENDED_FLAG)
    fuzz = make_frames(ts, ids, rng.integers(0, 256, (n, 8)).astype(np.uint8))
    frames = np.concatenate([normal, fuzz])
    frames = frames[np.argsort(frames["ts"], kind="stable")]
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-fuzz")
    peak = Peak(detector)
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    try:
        with running(detector):
            sent = send_all(cfg, [("veh-fuzzer", "jeep", frames)])

            def closed() -> bool:
                peak()
                done = sample(metrics, "canwatch_frames_consumed_total", brand="jeep") >= sent
                return done and any(e["status"] == "closed" for e in reader.events())

            wait_for("all consumed and the incident closed", closed)
        events = reader.events()
    finally:
        reader.close()
    n_ids = len(load_latest(cusw_models)["cusw"].baseline.ids)
    assert peak.streams <= n_ids + max_novel + 1 <= reserve_per_vehicle(n_ids) + max_novel
    assert detector.scorer.peak_streams <= n_ids + max_novel + 1  # mid-push too
    assert len({e["incident_id"] for e in events}) == 1  # one attack, one incident, kept open
    last = events[-1]
    assert last["status"] == "closed" and last["suspected_attack"] == "fuzzing"
    assert last["windows"] >= 14
    named = [c["can_id"] for c in last["can_ids"]]
    assert sum(c.endswith("x") for c in named) >= 5  # the fuzzer's own (extended) ids
    text = " ".join(e["text"] for e in last["evidence"])
    assert "further unseen ids" in text and re.search(r"0x[0-9A-F]{8}x", text)  # examples
    pooled = total(metrics, "canwatch_frames_shed_total", reason="novel_id_limit")
    assert pooled >= 14 * (rate - max_novel - 400)
    assert total(metrics, "canwatch_frames_shed_total", reason="vehicle_limit") == 0
