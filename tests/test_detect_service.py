"""The detector service driven the way a user runs it, against the real (Tansu) broker.

Each test publishes telemetry into unique topics, runs a ``Detector`` (in a
thread, step by step, or as the ``canwatch detect`` process) and checks what
comes out: incidents, dead letters, offsets, metrics and model reloads.
Simulated timestamps sit just before the wall clock (the detector rejects
frames beyond now + ``detection.max_future_s``).
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from detector.core.brands import load_fleet
from detector.core.config import Config, load_config
from detector.core.schema import ATTACK_KINDS
from detector.incidents.tracker import SEVERITIES
from detector.model.pipeline import window_scores
from detector.model.store import list_manifests, save_model
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.transport.broker import create_topics, free_port
from detector.transport.kafka_io import make_producer
from detector.transport.wire import CONTENT_TYPE_JSON, encode_record, headers_for
from replay.attacks import AttackSpec, inject
from replay.publisher import publish
from replay.simulator import simulate_vehicle

pytestmark = pytest.mark.kafka

REPO = Path(__file__).resolve().parents[1]
CANWATCH = Path(sys.executable).parent / "canwatch"
if not CANWATCH.exists():
    CANWATCH = REPO / ".venv" / "bin" / "canwatch"
DATA = REPO.parent / "shared" / "data"
ROAD_FILES = (
    "fuzzing_attack_1.csv",
    "correlated_signal_attack_2.csv",
    "correlated_signal_attack_2_masquerade.csv",
)
WAIT_S = 60.0  # upper bound for anything to show up; tests finish as soon as it does
FLEET = load_fleet()
INCIDENT_FIELDS = {
    "incident_id": str,
    "status": str,
    "vehicle": str,
    "brand": str,
    "first_seen": float,
    "last_seen": float,
    "windows": int,
    "peak_score": float,
    "severity": str,
    "suspected_attack": str,
    "can_ids": list,
    "evidence": list,
    "model_version": int,
    "detector": str,
}


# -- helpers -------------------------------------------------------------------------


def wait_for(what: str, predicate: Callable[[], bool], timeout_s: float = WAIT_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:g} s waiting for {what}")
        time.sleep(0.05)


class TopicReader:
    """Reads a whole topic from the beginning, without a group; ``poll()`` adds new records."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest"
        )
        wait_for(f"metadata of {topic}", lambda: self.consumer.partitions_for_topic(topic))
        parts = sorted(self.consumer.partitions_for_topic(topic))
        self.consumer.assign([TopicPartition(topic, p) for p in parts])
        self.records: list = []

    def poll(self) -> list:
        for recs in self.consumer.poll(timeout_ms=100).values():
            self.records.extend(recs)
        return self.records

    def events(self) -> list[dict]:
        return [json.loads(r.value) for r in self.poll()]

    def close(self) -> None:
        self.consumer.close()


def topics_toml(k, more: str = "") -> str:
    """A config file's ``[kafka]`` table naming the topics of ``k`` (a KafkaConfig),
    for a ``canwatch detect`` subprocess; ``more`` follows (more [kafka] keys first)."""
    return (
        "[kafka]\n"
        f'telemetry_topic = "{k.telemetry_topic}"\n'
        f'incident_topic = "{k.incident_topic}"\n'
        f'dlq_topic = "{k.dlq_topic}"\n' + more
    )


def service_config(broker, unique_topic, model_dir: Path, partitions: int = 4, **extra) -> Config:
    topics = {
        "kafka.telemetry_topic": unique_topic("telemetry"),
        "kafka.incident_topic": unique_topic("incidents"),
        "kafka.dlq_topic": unique_topic("dlq"),
        "kafka.group_id": unique_topic("group"),
    }
    cfg = load_config(
        None,
        env={},
        overrides={**topics, "kafka.bootstrap": broker.bootstrap, "models.dir": str(model_dir)}
        | extra,
    )
    create_topics(
        broker.bootstrap,
        {
            cfg.kafka.telemetry_topic: partitions,
            cfg.kafka.incident_topic: 1,
            cfg.kafka.dlq_topic: 1,
        },
    )
    return cfg


@contextmanager
def running(detector: Detector, name: str = "detector") -> Iterator[Detector]:
    """``detector.run`` (or any service's ``run(stop)``) in a thread; stopped with its
    Event and joined on exit."""
    stop = threading.Event()
    errors: list[BaseException] = []

    def target() -> None:
        try:
            detector.run(stop)
        except BaseException as exc:  # surfaced in the test thread below
            errors.append(exc)

    thread = threading.Thread(target=target, name=name, daemon=True)
    thread.start()
    try:
        yield detector
    finally:
        stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive(), f"{name} did not stop"
    assert not errors, f"{name} crashed: {errors[0]!r}"


def sample(metrics: DetectorMetrics, name: str, **labels: str) -> float:
    return metrics.registry.get_sample_value(name, labels) or 0.0


def now_start(duration_s: float) -> float:
    """A start time such that the recording ends at (about) the wall clock."""
    return float(int(time.time()) - int(duration_s) - 1)


def fleet_streams(
    n: int, duration_s: float, attacks: dict[int, str], seed: int = 500
) -> tuple[list, dict[str, str]]:
    """``n`` jeep vehicles; ``attacks`` maps a vehicle index to an attack spec."""
    start = now_start(duration_s)
    streams, attacked = [], {}
    for i in range(n):
        vehicle = f"veh-jeep-{seed}-{i:02d}"
        frames = simulate_vehicle("cusw", duration_s, start, seed=seed + i)
        if i in attacks:
            spec = AttackSpec.parse(attacks[i])
            frames, _ = inject(frames, spec, seed=seed + i)
            attacked[vehicle] = spec.kind
        streams.append((vehicle, "jeep", frames))
    return streams, attacked


def send_all(cfg: Config, streams: list) -> int:
    producer = make_producer(cfg.kafka)
    try:
        return publish(producer, cfg.kafka.telemetry_topic, streams, speed=None).frames
    finally:
        producer.close()


def check_incident_shape(ev: dict, detector_id: str, brand: str = "jeep") -> None:
    assert set(INCIDENT_FIELDS) <= set(ev), sorted(set(INCIDENT_FIELDS) - set(ev))
    for key, typ in INCIDENT_FIELDS.items():
        ok = isinstance(ev[key], typ) or typ is float and isinstance(ev[key], int)
        assert ok and not isinstance(ev[key], bool), f"{key}: {ev[key]!r} is not {typ.__name__}"
    assert ev["status"] in ("open", "update", "closed")
    assert ev["severity"] in SEVERITIES
    assert ev["suspected_attack"] in ATTACK_KINDS
    assert ev["brand"] == brand and ev["detector"] == detector_id
    assert ev["first_seen"] < ev["last_seen"] and ev["windows"] >= 1 and ev["peak_score"] >= 1.0
    assert ev["can_ids"] and ev["evidence"]
    for c in ev["can_ids"]:
        assert isinstance(c["can_id"], str) and c["can_id"].startswith("0x")
        assert isinstance(c["score"], float | int)
    for e in ev["evidence"]:
        assert isinstance(e["text"], str) and e["text"]
    assert ev["model_version"] == 1


# -- 1. fleet with attacks -> incidents ---------------------------------------------------


def test_fleet_with_attacks_yields_incidents(broker, unique_topic, cusw_models):
    cfg = service_config(broker, unique_topic, cusw_models)
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-fleet")
    # the masquerade forges BRAKE_1 (0x1E4), which carries a checksum: how well each
    # kind of target is seen is the quality tests' subject, not this one's
    streams, attacked = fleet_streams(
        6,
        30,
        {0: "dos:start=8,duration=6", 1: "masquerade:start=8,duration=6,id=0x1E4"},
    )
    dos_vehicle, masq_vehicle = list(attacked)
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    try:
        with running(detector):
            frames = send_all(cfg, streams)

            def done() -> bool:
                closed = {e["vehicle"] for e in reader.events() if e["status"] == "closed"}
                consumed = sample(metrics, "canwatch_frames_consumed_total", brand="jeep")
                return consumed == frames and set(attacked) <= closed

            wait_for("all frames consumed and both incidents closed", done)
        events = reader.events()
    finally:
        reader.close()
    for ev in events:
        check_incident_shape(ev, "det-fleet")
    by_vehicle: dict[str, list[dict]] = {}
    for ev in events:
        by_vehicle.setdefault(ev["vehicle"], []).append(ev)
    assert set(by_vehicle) == set(attacked), "benign vehicles must raise no incident"
    for evs in by_vehicle.values():
        assert evs[0]["status"] == "open" and evs[-1]["status"] == "closed"
        assert len({e["incident_id"] for e in evs}) == 1  # one attack, one incident
    dos = by_vehicle[dos_vehicle][-1]
    assert dos["suspected_attack"] == "dos"
    assert "0x000" in {c["can_id"] for c in dos["can_ids"]}
    masq = by_vehicle[masq_vehicle][-1]
    assert masq["status"] == "closed"
    print(f"\nmasquerade incident: suspected {masq['suspected_attack']}, ids {masq['can_ids']}")
    opened = sum(
        sample(metrics, "canwatch_incidents_opened_total", brand="jeep", severity=s, attack=a)
        for s in ("low", "medium", "high", "critical")
        for a in ("dos", "masquerade", "fuzzing", "spoofing", "suspension", "replay", "unknown")
    )
    assert opened == 2


# -- 2. malformed records -> DLQ, valid traffic fully processed ---------------------------


def _bad_records(frames: np.ndarray) -> list[tuple[bytes | None, bytes, list, str]]:
    """(key, value, headers, expected reason) of 50 records the detector must dead-letter."""
    _, good, headers = encode_record("v", "jeep", frames[:20])
    hdr = dict(headers)
    json_hdr = headers_for("jeep", CONTENT_TYPE_JSON)
    dlc9 = bytearray(good)
    dlc9[16 + 12] = 9  # first record's dlc byte (ts f8, can_id u4, then dlc)
    peugeot = encode_record("v", "peugeot", frames[:20])[2]  # valid brand, aee2010 not trained
    kinds = [
        (b'{"vehicle": "v", "frames": [', json_hdr, "bad_json"),
        (good[:-5], headers, "truncated"),
        (good, [("brand", b"tesla"), *headers[1:]], "unknown_brand"),
        (good, [("content-type", hdr["content-type"]), ("schema", b"1")], "missing_header"),
        (bytes(dlc9), headers, "bad_dlc"),
        (good, peugeot, "no_model"),
        (b"XXXX" + good[4:], headers, "bad_magic"),
    ]
    out = []
    for i in range(50):
        value, hs, reason = kinds[i % len(kinds)]
        out.append((f"bad-{i:02d}".encode(), value, hs, reason))
    out.append((None, good, headers, "missing_key"))
    return out


def test_malformed_records_go_to_the_dlq_and_valid_traffic_is_processed(
    broker, unique_topic, cusw_models
):
    cfg = service_config(broker, unique_topic, cusw_models, partitions=2)
    metrics = DetectorMetrics(CollectorRegistry())
    streams, _ = fleet_streams(2, 10, {}, seed=700)
    bad = _bad_records(streams[0][2])
    producer = make_producer(cfg.kafka)
    valid_frames = 0
    try:
        # Interleave: a bad record after every few valid ones, in one go.
        valid = []
        for vehicle, brand, frames in streams:
            for chunk in np.array_split(frames, 40):
                valid.append(encode_record(vehicle, brand, chunk))
                valid_frames += len(chunk)
        for i, (key, value, headers) in enumerate(valid):
            producer.send(cfg.kafka.telemetry_topic, key=key, value=value, headers=headers)
            if i < len(bad):
                k, v, h, _ = bad[i]
                producer.send(cfg.kafka.telemetry_topic, key=k, value=v, headers=h)
        for k, v, h, _ in bad[len(valid) :]:
            producer.send(cfg.kafka.telemetry_topic, key=k, value=v, headers=h)
        producer.flush()
    finally:
        producer.close()
    expected = Counter(reason for *_, reason in bad)
    reader = TopicReader(broker.bootstrap, cfg.kafka.dlq_topic)
    try:
        with running(Detector(cfg, FLEET, metrics, "det-dlq")):
            wait_for(
                "every valid frame consumed and every bad record dead-lettered",
                lambda: (
                    sample(metrics, "canwatch_frames_consumed_total", brand="jeep") == valid_frames
                    and len(reader.poll()) >= len(bad)
                ),
            )
        dead = reader.poll()
    finally:
        reader.close()
    assert len(dead) == len(bad)
    got = Counter()
    assert dead, "the malformed record must be dead-lettered"
    for r in dead:
        h = dict(r.headers)
        got[(r.key, r.value, h["error"].decode())] += 1
        assert h["error-detail"] and h["source"].startswith(cfg.kafka.telemetry_topic.encode())
    assert got == Counter((k, v, reason) for k, v, _, reason in bad)
    for reason, n in expected.items():
        assert sample(metrics, "canwatch_dead_letters_total", reason=reason) == n, reason
    assert sample(metrics, "canwatch_frames_consumed_total", brand="jeep") == valid_frames
    # consumed, dead-lettered and counted: CanwatchBrandWithoutModel names the brand
    unserved = expected["no_model"]
    assert sample(metrics, "canwatch_records_consumed_total", brand="peugeot") == unserved
    assert sample(metrics, "canwatch_frames_consumed_total", brand="peugeot") == 20 * unserved


# -- 3. offsets are committed only after incidents are acknowledged ------------------------


class _Crash(Exception):
    """Stands in for the process dying between produce and commit."""


def test_an_error_after_decode_commits_and_counts_nothing_of_its_poll(
    broker, unique_topic, cusw_models
):
    """A bug anywhere after decoding (scoring, incidents) ends ``run``; its final commit
    must not cover the poll whose dead letters were sent but never acknowledged (it
    committed them from the ledger, which decoding had moved on), nor count them."""
    cfg = service_config(
        broker, unique_topic, cusw_models, partitions=1, **{"kafka.commit_interval_s": 0.0}
    )
    producer = make_producer(cfg.kafka)
    for i in range(5):  # a brand nobody serves: five dead letters
        producer.send(
            cfg.kafka.telemetry_topic, key=f"veh-{i}".encode(), value=b"{}",
            headers=headers_for("nosuch", CONTENT_TYPE_JSON),
        )  # fmt: skip
    producer.flush()
    producer.close()
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-bug")

    def bug(scored):
        raise RuntimeError("a bug after intake")

    detector._incidents = bug
    with pytest.raises(RuntimeError, match="a bug after intake"):
        detector.run(threading.Event())
    check = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, group_id=cfg.kafka.group_id, enable_auto_commit=False
    )
    try:
        committed = check.committed(TopicPartition(cfg.kafka.telemetry_topic, 0))
    finally:
        check.close()
    assert committed in (None, 0), f"committed {committed} past unacknowledged dead letters"
    assert (sample(metrics, "canwatch_dead_letters_total", reason="unknown_brand") or 0) == 0


@pytest.mark.parametrize(
    ("vehicles", "attacks", "poll_records", "commits_in_incident"),
    [
        (4, {0: "dos:start=8,duration=6", 1: "dos:start=12,duration=6",
             2: "fuzzing:start=6,duration=6"}, 50, 0),
        # payload evidence (counters out of step), crashed after two commits while its
        # incident was open: a restart that re-read the vehicle from the window before the
        # incident warmed up on the replay, took it for the vehicle's own state, and
        # neither re-emitted the incident nor saw the rest of the attack
        (1, {0: "replay:start=8,duration=14"}, 5, 2),
    ],  # fmt: skip
    ids=["floods-and-fuzzing-before-commit", "replay-mid-incident"],
)
def test_crash_between_produce_and_commit_re_emits_the_same_incident(
    broker, unique_topic, cusw_models, vehicles, attacks, poll_records, commits_in_incident
):
    # Small polls, each committed: many commits happen before the first incident.
    cfg = service_config(
        broker,
        unique_topic,
        cusw_models,
        partitions=2,
        **{"kafka.max_poll_records": poll_records, "kafka.commit_interval_s": 0.0},
    )
    streams, attacked = fleet_streams(vehicles, 30, attacks, seed=900)
    frames = send_all(cfg, streams)
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    first = Detector(cfg, FLEET, DetectorMetrics(CollectorRegistry()), "det-crashing")
    emitted: list[dict] = []
    real_incidents, real_commit = first._incidents, first._commit

    def incidents(scored):
        events = real_incidents(scored)
        emitted.extend(events)
        return events

    commits = []

    def commit():
        if any(e["status"] == "open" for e in emitted):
            if len(commits) >= commits_in_incident:
                raise _Crash("killed after producing an incident, before committing")
            commits.append(1)
        real_commit()

    first._incidents, first._commit = incidents, commit
    first.start()
    try:
        with pytest.raises(_Crash):
            deadline = time.monotonic() + WAIT_S
            while time.monotonic() < deadline:
                first.step()
        opened = [e for e in emitted if e["status"] == "open"]
        # Acknowledged before the commit was attempted: it is on the topic.
        wait_for(
            "the open event on the incident topic",
            lambda: [e for e in reader.events() if e["status"] == "open"] == opened,
        )
    finally:
        # The crash: nothing more is committed; the group sees the member leave.
        first.consumer.close(autocommit=False)
        first.producer.close()
    metrics = DetectorMetrics(CollectorRegistry())
    try:
        with running(Detector(cfg, FLEET, metrics, "det-restarted")):

            def recovered() -> bool:
                evs = reader.events()
                again = {e["incident_id"] for e in evs if e["detector"] == "det-restarted"}
                closed = {e["vehicle"] for e in evs if e["status"] == "closed"}
                return {e["incident_id"] for e in opened} <= again and set(attacked) <= closed

            wait_for("the crashed incident re-emitted and every attack closed", recovered)
            consumed = sample(metrics, "canwatch_frames_consumed_total", brand="jeep")
        events = reader.events()
    finally:
        reader.close()
    print(f"\nrestart re-read {consumed:g} of {frames} frames")
    assert 0 < consumed < frames  # resumed from the committed offsets, not from the start
    by_vehicle: dict[str, set[str]] = {}
    for e in events:
        by_vehicle.setdefault(e["vehicle"], set()).add(e["incident_id"])
    assert set(by_vehicle) == set(attacked)  # every attack caught, nothing else
    assert all(len(ids) == 1 for ids in by_vehicle.values()), by_vehicle


# -- 4. canwatch detect as a process: metrics over HTTP, SIGTERM -> exit 0 ---------------


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def total(samples: dict, name: str, **labels: str) -> float:
    want = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and want <= set(ls))


def test_detect_process_serves_consistent_metrics_and_stops_on_sigterm(
    broker, unique_topic, cusw_models, tmp_path
):
    cfg = service_config(broker, unique_topic, cusw_models)
    toml = tmp_path / "canwatch.toml"
    toml.write_text(topics_toml(cfg.kafka), encoding="utf-8")
    port = free_port()
    proc = subprocess.Popen(
        [
            str(CANWATCH),
            "detect",
            "--bootstrap",
            broker.bootstrap,
            "--models",
            str(cusw_models),
            "--group",
            cfg.kafka.group_id,
            "--metrics",
            f"127.0.0.1:{port}",
            "--config",
            str(toml),
            "--detector-id",
            "det-cli",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    url = f"http://127.0.0.1:{port}/metrics"
    try:
        streams, attacked = fleet_streams(3, 25, {1: "dos:start=6,duration=5"}, seed=1100)
        frames = send_all(cfg, streams)
        producer = make_producer(cfg.kafka)
        try:
            for i in range(5):
                producer.send(
                    cfg.kafka.telemetry_topic,
                    key=f"bad-{i}".encode(),
                    value=b"{oops",
                    headers=headers_for("jeep", CONTENT_TYPE_JSON),
                )
            producer.flush()
        finally:
            producer.close()
        samples: dict = {}

        def settled() -> bool:
            nonlocal samples
            assert proc.poll() is None, proc.stderr.read()
            try:
                samples = scrape(url)
            except OSError:
                return False  # not listening yet
            return (
                total(samples, "canwatch_frames_consumed_total", brand="jeep") == frames
                and total(samples, "canwatch_dead_letters_total") == 5
                and total(samples, "canwatch_incidents_closed_total", brand="jeep") >= 1
            )

        wait_for("the scrape to account for everything sent", settled)
        records = total(samples, "canwatch_records_consumed_total", brand="jeep")
        windows = total(samples, "canwatch_windows_scored_total", brand="jeep")
        anomalous = total(samples, "canwatch_anomalous_windows_total", brand="jeep")
        opened = total(samples, "canwatch_incidents_opened_total", brand="jeep")
        assert records > 0 and records == total(samples, "canwatch_records_consumed_total")
        # 3 vehicles x 25 s of 1 s windows; each vehicle's last windows stay open.
        assert 3 * 20 <= windows <= 3 * 26
        assert total(samples, "canwatch_anomaly_score_count", brand="jeep") == windows
        assert opened == 1 and total(samples, "canwatch_incidents_opened_total", attack="dos") == 1
        assert 1 <= anomalous <= windows
        assert total(samples, "canwatch_dead_letters_total", reason="bad_json") == 5
        assert total(samples, "canwatch_model_info", brand="jeep", version="1") == 1
        assert total(samples, "canwatch_up") == 1
        # Readiness is a live signal: a rebalance or a late heartbeat on a loaded
        # machine (the full suite) lowers it for a moment; it must come back.
        wait_for(
            "the detector to report ready",
            lambda: total(scrape(url), "canwatch_ready") == 1,
            timeout_s=20,
        )
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, err
    assert f"127.0.0.1:{port}/metrics" in out


# -- 5. model hot reload -------------------------------------------------------------------


def reloading_detector(
    broker, unique_topic, cusw_models: Path, tmp_path: Path, name: str
) -> tuple[Path, DetectorMetrics, Detector]:
    """A detector on a copy of the models that looks for new versions twice a second."""
    live = tmp_path / "models"
    shutil.copytree(cusw_models, live)
    cfg = service_config(
        broker, unique_topic, live, partitions=1, **{"models.reload_interval_s": 0.5}
    )
    metrics = DetectorMetrics(CollectorRegistry())
    return live, metrics, Detector(cfg, FLEET, metrics, name)


def test_new_model_versions_are_loaded_and_corrupt_ones_refused(
    broker, unique_topic, cusw_models, tmp_path
):
    live, metrics, detector = reloading_detector(
        broker, unique_topic, cusw_models, tmp_path, "det-reload"
    )

    def info(version: str) -> float:
        return sample(
            metrics, "canwatch_model_info", brand="jeep", platform="cusw", version=version
        )

    with running(detector):
        wait_for("v1 loaded", lambda: info("1") == 1)
        model = detector.registry.models["cusw"]
        save_model(model, live, FLEET.brands_of("cusw"), {"note": "v2"})
        wait_for("v2 loaded without a restart", lambda: info("2") == 1)
        assert (
            metrics.registry.get_sample_value(
                "canwatch_model_info", {"brand": "jeep", "platform": "cusw", "version": "1"}
            )
            is None
        )  # the old series is gone
        # v3, corrupted after its manifest was written, then moved in (skops first).
        staging = tmp_path / "staging"
        shutil.copytree(live, staging)
        manifest = save_model(model, staging, FLEET.brands_of("cusw"), {"note": "v3"})
        skops = staging / "cusw-v3.skops"
        blob = bytearray(skops.read_bytes())
        blob[len(blob) // 2] ^= 0xFF
        skops.write_bytes(bytes(blob))
        shutil.copy(skops, live / skops.name)
        shutil.copy(manifest, live / ".cusw-v3.json.tmp")
        (live / ".cusw-v3.json.tmp").replace(live / manifest.name)
        failures = lambda: sample(  # noqa: E731
            metrics, "canwatch_model_reload_failures_total", reason="checksum"
        )
        wait_for("v3 refused", lambda: failures() == 1)
        reloads = detector._last_reload
        wait_for("two more reload rounds", lambda: detector._last_reload >= reloads + 1.0)
        assert failures() == 1  # refused once, not retried until its manifest changes
        assert info("2") == 1 and info("3") == 0
        assert detector.registry.models["cusw"].version == 2
        assert detector.scorer.models["cusw"].version == 2
    assert sorted(m.version for m in list_manifests(live)["cusw"]) == [1, 2, 3]


# -- 6. ROAD through Kafka scores exactly like canwatch evaluate ----------------------------


class RecordingDetector(Detector):
    """A Detector that also keeps every (vehicle, window, score) it scored."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.scored: dict[tuple[str, int], float] = {}

    def _incidents(self, scored: list) -> list[dict]:
        for sc in scored:
            v, w, s = window_scores(sc)
            for vi, wi, si in zip(v.tolist(), w.tolist(), s.tolist(), strict=True):
                key = (sc.names[vi], wi)
                assert key not in self.scored, f"window {key} scored twice"
                self.scored[key] = si
        return super()._incidents(scored)


def road_brands_file(tmp_path: Path) -> Path:
    """The fleet map plus ROAD's vehicle as a brand of its own platform (see the xfail below)."""
    path = tmp_path / "brands.toml"
    text = (REPO / "configs" / "brands.toml").read_text(encoding="utf-8")
    text = text.replace(
        "[brands]\n",
        '[platforms.road]\ndbc = ""\n\n[brands]\nroad = { name = "ROAD", platform = "road" }\n',
    )
    path.write_text(text, encoding="utf-8")
    return path


def canwatch(*args: str) -> subprocess.CompletedProcess:
    proc = subprocess.run([str(CANWATCH), *args], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.mark.realdata
def test_road_through_kafka_scores_like_evaluate(broker, unique_topic, tmp_path):
    if not all((DATA / "road" / f).is_file() for f in ROAD_FILES):
        pytest.skip(f"ROAD captures not found under {DATA / 'road'}")
    from detector.evaluation.evaluate import score_frames
    from detector.model.store import load_model
    from replay.readers import read_frames

    files = [DATA / "road" / f for f in ROAD_FILES]
    frames = {f.stem: read_frames(f) for f in files}
    models = tmp_path / "models"
    canwatch("train", *map(str, files), "--brand", "road", "--out", str(models))
    windows_csv = tmp_path / "windows.csv"
    canwatch(
        "evaluate",
        *map(str, files),
        "--models",
        str(models),
        "--brand",
        "road",
        "--windows-out",
        str(windows_csv),
    )
    model = load_model(list_manifests(models)["road"][-1].path)
    W = model.baseline.window_s
    with open(windows_csv, newline="", encoding="utf-8") as fh:
        cli = {
            (r["vehicle"], round(float(r["window_start"]) / W)): float(r["score"])
            for r in csv.DictReader(fh)
        }

    cfg = service_config(broker, unique_topic, models)
    toml = tmp_path / "replay.toml"
    toml.write_text(
        f'[kafka]\ntelemetry_topic = "{cfg.kafka.telemetry_topic}"\n\n'
        f'[fleet]\nbrands_file = "{road_brands_file(tmp_path)}"\n',
        encoding="utf-8",
    )
    metrics = DetectorMetrics(CollectorRegistry())
    detector = RecordingDetector(cfg, FLEET, metrics, "det-road")  # the stock fleet map
    records = 0
    with running(detector):
        for f in files:
            out = canwatch(
                "replay",
                str(f),
                "--brand",
                "road",
                "--max-speed",
                "--vehicle",
                f.stem,
                "--no-rebase-time",
                "--bootstrap",
                broker.bootstrap,
                "--config",
                str(toml),
            ).stdout
            records += int(out.split("published ")[1].split()[0])

        def handled() -> float:
            dead = sum(
                s.value
                for fam in metrics.registry.collect()
                for s in fam.samples
                if s.name == "canwatch_dead_letters_total"
            )
            return sample(metrics, "canwatch_records_consumed_total", brand="road") + dead

        wait_for("every ROAD record consumed", lambda: handled() == records)
    consumed = sample(metrics, "canwatch_records_consumed_total", brand="road")
    assert consumed == records, f"{records - consumed:g} of {records} records dead-lettered"
    n = sum(len(x) for x in frames.values())
    assert sample(metrics, "canwatch_frames_consumed_total", brand="road") == n

    # Exact reference: the function `canwatch evaluate` runs, in process.
    exact: dict[tuple[str, int], float] = {}
    for stem, fr in frames.items():
        ev = score_frames(fr, "road", stem, model, FLEET, W, cfg.incidents)
        for t, s in zip(ev.window_start.tolist(), ev.score.tolist(), strict=True):
            exact[(stem, round(t / W))] = s
    assert set(exact) == set(cli)
    keys = sorted(detector.scored)
    # Kafka leaves each vehicle's last (open) window unscored; evaluate drops it too.
    assert set(keys) == set(exact), (sorted(set(exact) - set(keys)), sorted(set(keys) - set(exact)))
    kafka = np.array([detector.scored[k] for k in keys])
    ref = np.array([exact[k] for k in keys])
    csv_ref = np.array([cli[k] for k in keys])
    np.testing.assert_allclose(kafka, ref, rtol=1e-9, atol=0)
    np.testing.assert_allclose(kafka, csv_ref, rtol=0, atol=5e-7)  # the CSV has 6 decimals
    # The labelled recordings' attacks appear as incidents on the topic.
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    labelled = {stem for stem, fr in frames.items() if (fr["label"] != 0).any()}
    try:
        # One poll may come back empty while the first fetch is on its way (seen on a
        # loaded machine): read until every labelled capture has an event, or time out.
        wait_for(
            "incident events of every labelled capture",
            lambda: labelled <= {e["vehicle"] for e in reader.events()},
        )
        events = reader.events()
    finally:
        reader.close()
    for ev in events:
        check_incident_shape(ev, ev["detector"], brand="road")
    for stem, fr in frames.items():
        attack_ts = fr["ts"][fr["label"] != 0]
        spans: dict[str, list[float]] = {}  # incident -> [first_seen, newest last_seen]
        for e in events:
            if e["vehicle"] == stem:
                span = spans.setdefault(e["incident_id"], [e["first_seen"], e["last_seen"]])
                span[1] = max(span[1], e["last_seen"])
        hit = [i for i, (a, b) in spans.items() if a <= attack_ts.max() and b >= attack_ts.min()]
        assert hit, (
            f"{stem}: no incident overlapping its attack frames "
            f"[{attack_ts.min():.3f}, {attack_ts.max():.3f}]: "
            f"{[(e['vehicle'], e['status'], e['first_seen'], e['last_seen']) for e in events]}"
        )
    print(
        f"\nROAD via Kafka vs evaluate: {len(keys)} windows in {len(frames)} files, "
        f"max |diff| {np.abs(kafka - ref).max():.3g} (in process), "
        f"{np.abs(kafka - csv_ref).max():.3g} (--windows-out CSV)"
    )


@pytest.mark.realdata
def test_replay_accepts_an_external_brand_like_train_and_evaluate(broker, unique_topic):
    path = DATA / "road" / ROAD_FILES[0]
    if not path.is_file():
        pytest.skip(f"ROAD capture not found: {path}")
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 1})
    canwatch(
        "replay",
        str(path),
        "--brand",
        "road",
        "--max-speed",
        "--bootstrap",
        broker.bootstrap,
        "--topic",
        topic,
    )


# -- 7. pseudonymous vehicle ids ------------------------------------------------------------


def test_pseudonymized_ids_never_leave_the_decoder(
    broker, unique_topic, cusw_models, monkeypatch, caplog
):
    from prometheus_client import generate_latest

    from detector.incidents.privacy import pseudonym

    raw, other = "VIN-ZFA31200000123456", "VIN-ZFA31200000999999"
    secret = "canwatch-test-hmac-key-0123456789"
    monkeypatch.setenv("CW_TEST_PSEUDO_KEY", secret)
    cfg = service_config(
        broker, unique_topic, cusw_models, **{"privacy.pseudonymize_key_env": "CW_TEST_PSEUDO_KEY"}
    )
    streams, _ = fleet_streams(2, 20.0, {0: "dos:start=6,duration=3"}, seed=700)
    streams = [(raw if i == 0 else v, b, f) for i, (v, b, f) in enumerate(streams)]
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-privacy")
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    dlq = TopicReader(broker.bootstrap, cfg.kafka.dlq_topic)
    caplog.set_level("DEBUG", logger="canwatch")
    caplog.set_level("DEBUG", logger="detector")
    try:
        with running(detector):
            frames = send_all(cfg, streams)
            producer = make_producer(cfg.kafka)
            bad = json.dumps({"vehicle": raw, "brand": "jeep", "bus": "can0", "frames": "x"})
            # the raw id in the body of a record without a key (nothing says which id to
            # scrub), of one keyed by another vehicle (mismatch), and of one whose key is
            # the id with a newline or a BOM (bad_key: the body's id is not the key's
            # bytes): their bytes withheld; a producer's own "vin" header too
            keys = (raw.encode(), None, b"veh-jeep-other", raw.encode() + b"\n",
                    "\ufeff".encode() + raw.encode())  # fmt: skip
            for key in keys:
                producer.send(
                    cfg.kafka.telemetry_topic,
                    key=key,
                    value=bad.encode(),
                    headers=[*headers_for("jeep", CONTENT_TYPE_JSON), ("vin", raw.encode())],
                )
            # a record the Kafka format cannot describe (a header name not UTF-8): its raw
            # bytes, which run to its batch's end, named another vehicle the key cannot scrub
            from tests.test_poison_records import RawName

            producer.send(
                cfg.kafka.telemetry_topic, key=raw.encode(), value=bad.encode(),
                headers=[(RawName(b"\xfftrace"), other.encode()),
                         *headers_for("jeep", CONTENT_TYPE_JSON)],
            )  # fmt: skip
            producer.flush()
            producer.close()

            def done() -> bool:
                consumed = sample(metrics, "canwatch_frames_consumed_total", brand="jeep")
                return consumed == frames and any(e["status"] == "open" for e in reader.events())

            wait_for("frames consumed and an incident opened", done)
            wait_for("the dead letters on the DLQ topic", lambda: len(dlq.poll()) >= 6)
        incidents = reader.events()
        dead = dlq.poll()
    finally:
        reader.close()
        dlq.close()
    alias = pseudonym(secret.encode(), raw)
    assert {e["vehicle"] for e in incidents} == {alias}
    exported = generate_latest(metrics.registry).decode()
    published = json.dumps(incidents)
    # canwatch's own log lines (kafka-python's DEBUG wire dumps are the client library's)
    logs = "\n".join(
        r.getMessage() for r in caplog.records if r.name.startswith(("canwatch", "detector"))
    )
    for where, text in (("incidents", published), ("metrics", exported), ("logs", logs)):
        assert raw not in text, f"raw vehicle id found in {where}"
    assert dead, "the malformed record must be dead-lettered"
    for r in dead:
        blob = (r.key or b"") + (r.value or b"") + b"".join(v for _, v in r.headers or [])
        assert raw.encode() not in blob, "raw vehicle id found in the DLQ"
        assert other.encode() not in blob, "another vehicle's raw id found in the DLQ"


# -- 9. a vehicle that goes quiet is retired: its last window scored, offsets move on ---


def test_a_parked_vehicle_is_retired_and_no_longer_holds_offsets_back(
    broker, unique_topic, cusw_models, monkeypatch
):
    import detector.service.activity as service

    monkeypatch.setattr(service, "IDLE_S", 1.0)
    monkeypatch.setattr(service, "LAG_INTERVAL_S", 0.5)
    cfg = service_config(
        broker, unique_topic, cusw_models, partitions=1, **{"kafka.commit_interval_s": 0.0}
    )
    streams, _ = fleet_streams(2, 20, {0: "dos:start=17,duration=3"}, seed=950)
    parked, moving = streams
    # the parked vehicle sends 20 s (its attack runs to the end), the other only 10 s now
    first = [parked, (moving[0], moving[1], moving[2][moving[2]["ts"] < moving[2]["ts"][0] + 10])]
    sent = send_all(cfg, first)
    metrics = DetectorMetrics(CollectorRegistry())
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    detector = Detector(cfg, FLEET, metrics, "det-parking")
    tp = TopicPartition(cfg.kafka.telemetry_topic, 0)
    try:
        with running(detector):
            wait_for(
                "all frames consumed",
                lambda: sample(metrics, "canwatch_frames_consumed_total", brand="jeep") >= sent,
            )
            parked_ids = {e["incident_id"] for e in reader.events() if e["vehicle"] == parked[0]}
            # the other vehicle keeps sending; the parked one stays silent
            rest = moving[2][moving[2]["ts"] >= moving[2]["ts"][0] + 10]
            send_all(cfg, [(moving[0], moving[1], rest)])
            end = sent + len(rest)
            wait_for(
                "the rest consumed",
                lambda: sample(metrics, "canwatch_frames_consumed_total", brand="jeep") >= end,
            )

            def parked_closed() -> bool:
                evs = [e for e in reader.events() if e["vehicle"] == parked[0]]
                return any(e["status"] == "closed" for e in evs)

            wait_for("the parked vehicle's incident closed", parked_closed)
            high = detector.consumer.highwater(tp) or 0
            # every record of the parked vehicle is behind the committed offset now:
            # only the moving vehicle's open window may still hold some back
            wait_for(
                "offsets committed past the parked vehicle's records",
                lambda: (detector.consumer.committed(tp) or 0) > high - 40,
            )
        events = [e for e in reader.events() if e["vehicle"] == parked[0]]
    finally:
        reader.close()
    assert {e["incident_id"] for e in events} >= parked_ids
    assert events[-1]["status"] == "closed" and events[-1]["suspected_attack"] == "dos"


def test_freeze_heap_moves_start_up_objects_out_of_the_gc(
    broker, unique_topic, cusw_models, tmp_path
):
    """``canwatch detect`` (freeze_heap=True): modules, models and clients are frozen
    once started, so full collections during consumption do not walk them."""
    import gc

    live = tmp_path / "models"
    shutil.copytree(cusw_models, live)
    cfg = service_config(broker, unique_topic, live)
    detector = Detector(cfg, FLEET, DetectorMetrics(CollectorRegistry()), "det-freeze", freeze_heap=True)
    frozen = gc.get_freeze_count()
    try:
        detector.start()
        assert detector.scorer.models  # the models were loaded before the freeze
        assert gc.get_freeze_count() > frozen + 10_000
        # a new version: the old one is let go (unfrozen, collected), the rest re-frozen
        save_model(detector.registry.models["cusw"], live, FLEET.brands_of("cusw"), {})
        assert [m.version for m in detector.registry.refresh()] == [2]
        assert detector.scorer.models["cusw"].version == 2
        assert gc.get_freeze_count() > frozen + 10_000
    finally:
        detector.close()
        gc.unfreeze()  # this is the test process, not a detector's


def test_a_model_that_cannot_score_is_refused_and_the_old_one_keeps_serving(
    broker, unique_topic, cusw_models, tmp_path, monkeypatch
):
    """Each loaded model scores synthetic frames before it serves; if that raises,
    the version is refused like a corrupt file, not left to crash the detector."""
    import detector.service.model_reload as service

    real = service.warm_up

    def broken_v2(model, window_s):
        if model.version == 2:
            raise IndexError("a forest this detector cannot walk")
        real(model, window_s)

    monkeypatch.setattr(service, "warm_up", broken_v2)
    live, metrics, detector = reloading_detector(
        broker, unique_topic, cusw_models, tmp_path, "det-unusable"
    )
    with running(detector):
        wait_for("v1 loaded", lambda: detector.scorer.models.get("cusw") is not None)
        save_model(detector.registry.models["cusw"], live, FLEET.brands_of("cusw"), {})
        refused = lambda: sample(  # noqa: E731
            metrics, "canwatch_model_reload_failures_total", reason="load"
        )
        wait_for("v2 refused", lambda: refused() == 1)
        assert detector.registry.models["cusw"].version == 1
        assert detector.scorer.models["cusw"].version == 1


def test_a_rebalance_while_a_batch_is_gathered_keeps_every_record_once_per_batch(
    broker, unique_topic, cusw_models, tmp_path, monkeypatch
):
    """``Detector.step`` gathers what the next polls bring into one batch
    (``GATHER_S``). A member that joins the group, and leaves again, in the middle
    of that (a real rebalance, inside one of those polls) may move partitions and
    their positions: the batch then keeps nothing from before it, and the
    partitions still ours are read again from the first record gathered. So every
    batch holds each of its records once, and no record is skipped."""
    import detector.service.polling as service

    # batches of up to 100 records, ~1 s of this traffic: the detector is mostly gathering
    monkeypatch.setattr(service, "GATHER_S", 3.0)
    cfg = service_config(
        broker, unique_topic, cusw_models, partitions=2, **{"kafka.max_poll_records": 100}
    )
    topic, group = cfg.kafka.telemetry_topic, cfg.kafka.group_id
    start = time.time() - 40.0
    streams = [
        (f"veh-jeep-gather-{i}", "jeep", simulate_vehicle("cusw", 12.0, start, seed=2100 + i))
        for i in range(4)
    ]
    audit = tmp_path / "windows.jsonl"
    det = Detector(cfg, FLEET, DetectorMetrics(CollectorRegistry()), "det-gather", windows_out=audit)
    rebalanced_in_gather: list[bool] = []
    gather = det._gather

    def watched(polled: dict, n: int) -> tuple[dict, int]:
        before = det._rebalances
        out = gather(polled, n)
        rebalanced_in_gather.append(det._rebalances != before)
        return out

    det._gather = watched

    published: list[int] = []

    def publish_paced() -> None:  # records keep coming while the detector gathers
        producer = make_producer(cfg.kafka)
        try:
            published.append(publish(producer, topic, streams, speed=1.0, max_frames=200).records)
        finally:
            producer.close()

    def join_then_leave() -> None:  # another member for a few seconds: two rebalances
        other = KafkaConsumer(
            bootstrap_servers=broker.bootstrap,
            group_id=group,
            enable_auto_commit=False,
            session_timeout_ms=6000,
            heartbeat_interval_ms=2000,
        )
        other.subscribe([topic])
        deadline = time.monotonic() + 4.0
        while time.monotonic() < deadline:
            other.poll(timeout_ms=100)
        other.close(autocommit=False)

    publisher = threading.Thread(target=publish_paced)
    joiner = threading.Thread(target=join_then_leave)
    with running(det):
        wait_for("its partitions", lambda: det.consumer and len(det.consumer.assignment()) == 2)
        publisher.start()
        time.sleep(1.0)
        joiner.start()
        joiner.join()
        publisher.join()
        ends = topic_ends(broker, topic, published[0])
        wait_for("every record read", lambda: audit.exists() and _covered(audit, ends), 90.0)
    polls = audited_polls(audit)
    assert published[0] > 20 and len(polls) > 2
    for p in polls:  # each batch: each record once (ranges add up to its record count)
        assert p["records"] == sum(hi - lo + 1 for lo, hi in p["offsets"].values()), p
    # a partition the detector kept through both rebalances: each record in one batch
    kept = set.intersection(*(set(p["assigned"]) for p in polls))
    assert kept
    for part in kept:
        ranges = sorted(tuple(p["offsets"][str(part)]) for p in polls if str(part) in p["offsets"])
        assert all(a[1] < b[0] for a, b in zip(ranges, ranges[1:], strict=False)), (part, ranges)
    assert any(rebalanced_in_gather), "no rebalance happened while a batch was gathered"


def topic_ends(broker, topic: str, records: int) -> dict[int, int]:
    """End offset of each partition of ``topic``, once its ``records`` are all read
    back (Tansu's ListOffsets was seen to under-report the latest offset)."""
    reader = TopicReader(broker.bootstrap, topic)
    try:
        wait_for(f"{records} records in {topic}", lambda: len(reader.poll()) >= records)
        ends: dict[int, int] = {}
        for r in reader.records:
            ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
        return ends
    finally:
        reader.close()


def audited_polls(audit: Path) -> list[dict]:
    """The poll lines of a ``--windows-out`` file (a line being written is skipped)."""
    polls = []
    for line in audit.read_text().splitlines():
        if '"type":"poll"' in line:
            with contextlib.suppress(json.JSONDecodeError):
                polls.append(json.loads(line))
    return polls


def _covered(audit: Path, ends: dict[int, int]) -> bool:
    """Whether the audited batches together read every offset of every partition."""
    seen: dict[int, set[int]] = {p: set() for p in ends}
    for poll in audited_polls(audit):
        for p, (lo, hi) in poll["offsets"].items():
            seen[int(p)].update(range(lo, hi + 1))
    return all(seen[p] >= set(range(end)) for p, end in ends.items())
