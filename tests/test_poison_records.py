"""Issue 21's measurement, as a test: one poison record must not blind the detector.

A topic of 4 partitions and ``canwatch detect`` running. One record is produced
to partition 3 whose header *name* is not valid UTF-8 (``b"\\xfftrace"``; any
librdkafka producer can send it, and the broker stores it as it is). Then a
fleet is replayed, one vehicle of which, on partition 0, is under a
fabrication (spoofing) attack. Before the fix: no frame consumed on any
partition, no incident, ``canwatch_ready`` 1 and consumer lag 0 throughout, and
still running 30 s after SIGTERM. Now:

- every valid frame is consumed, the attack is an incident, benign vehicles
  (partition 3's among them) raise none;
- the poison record is in the DLQ with reason ``bad_header_name``, its
  partition and its offset, and counted in the metrics;
- ready 1 and consumer lag 0 on every partition once all is read;
- SIGTERM: exit 0 within ``watchdog.shutdown_timeout_s`` (10 s by default).
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from kafka.partitioner.default import murmur2
from test_detect_service import (
    CANWATCH,
    TopicReader,
    now_start,
    scrape,
    send_all,
    service_config,
    topics_toml,
    total,
    wait_for,
)

from detector.transport.broker import free_port
from detector.transport.kafka_io import make_producer
from detector.transport.wire import CONTENT_TYPE_BINARY, encode_record
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

PARTITIONS = 4
ATTACK = "spoofing:start=8,duration=6"


class RawName(str):
    """A header name whose wire bytes are not UTF-8 (kafka-python writes ``encode()``)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> RawName:
        self = super().__new__(cls, raw.decode("latin-1"))
        self.raw = raw
        return self

    def encode(self, *args, **kwargs) -> bytes:
        return self.raw


def partition_of(vehicle: str) -> int:
    """Where kafka-python's default partitioner puts a record keyed ``vehicle``."""
    return (murmur2(vehicle.encode()) & 0x7FFFFFFF) % PARTITIONS


def vehicle_on(partition: int, prefix: str) -> str:
    return next(
        f"{prefix}-{i}" for i in range(10_000) if partition_of(f"{prefix}-{i}") == partition
    )


def test_a_poison_record_blinds_nothing(broker, unique_topic, cusw_models, tmp_path):
    cfg = service_config(broker, unique_topic, cusw_models, partitions=PARTITIONS)
    toml = tmp_path / "canwatch.toml"
    toml.write_text(topics_toml(cfg.kafka), encoding="utf-8")
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    err_path = tmp_path / "detect.err"
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [
                str(CANWATCH), "detect", "--config", str(toml), "--bootstrap", broker.bootstrap,
                "--models", str(cusw_models), "--group", cfg.kafka.group_id,
                "--metrics", f"127.0.0.1:{port}", "--detector-id", "det-poison",
            ],
            stdout=subprocess.DEVNULL, stderr=err, env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)

    def metrics() -> dict:
        assert proc.poll() is None, err_path.read_text(errors="replace")[-3000:]
        try:
            return scrape(url)
        except OSError:
            return {}

    try:
        wait_for("the detector ready", lambda: total(metrics(), "canwatch_ready") == 1)
        # the poison, alone in its batch, on partition 3
        poisoned = vehicle_on(3, "veh-poison")
        producer = make_producer(cfg.kafka)
        try:
            frames = simulate_vehicle("cusw", 1, now_start(1), seed=3)
            key, value, headers = encode_record(poisoned, "jeep", frames, "binary")
            sent = producer.send(
                cfg.kafka.telemetry_topic, key=key, value=value,
                headers=[(RawName(b"\xfftrace"), b"00-4bf92f3577b34da6-01"), *headers],
                partition=3,
            )  # fmt: skip
            poison_at = sent.get(timeout=30)
        finally:
            producer.close()
        assert poison_at.partition == 3

        # then the fleet: the attacked vehicle on partition 0, a benign one on each partition
        start = now_start(25)
        attacked = vehicle_on(0, "veh-attacked")
        streams = []
        for p in range(PARTITIONS):
            vehicle = vehicle_on(p, f"veh-benign-p{p}")
            streams.append((vehicle, "jeep", simulate_vehicle("cusw", 25, start, seed=40 + p)))
        victim, _ = inject(simulate_vehicle("cusw", 25, start, seed=50), AttackSpec.parse(ATTACK),
                           seed=50)  # fmt: skip
        streams.append((attacked, "jeep", victim))
        n_frames = send_all(cfg, streams)

        def settled() -> bool:
            s = metrics()
            closed = {e["vehicle"] for e in reader.events() if e["status"] == "closed"}
            return (
                total(s, "canwatch_frames_consumed_total", brand="jeep") == n_frames
                and total(s, "canwatch_dead_letters_total", reason="bad_header_name") == 1
                and attacked in closed
            )

        wait_for("every frame consumed, the poison dead-lettered, the attack an incident",
                 settled, timeout_s=90)  # fmt: skip
        # the watchdog's figures, not the loop's: all read, all ready
        wait_for(
            "ready 1 and no lag on any partition",
            lambda: total(metrics(), "canwatch_ready") == 1
            and [total(metrics(), "canwatch_consumer_lag_records", partition=str(p))
                 for p in range(PARTITIONS)] == [0] * PARTITIONS,  # fmt: skip
            timeout_s=30,
        )
        s = metrics()
        events = reader.events()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=10 + 20)
        except subprocess.TimeoutExpired:
            code = None
        took = time.monotonic() - t0
    finally:
        reader.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    log = err_path.read_text(errors="replace")
    assert code == 0, log[-3000:]
    assert took < 10 + 5, f"exit {took:.1f} s after SIGTERM"

    incidents = {e["vehicle"] for e in events}
    assert incidents == {attacked}, incidents  # benign vehicles, partition 3's too: none
    assert total(s, "canwatch_unreadable_records_total", reason="bad_header_name") == 1
    assert total(s, "canwatch_poll_stalled_seconds") == 0
    for p in range(PARTITIONS):  # every partition was read
        assert total(s, "canwatch_event_time_lag_seconds", partition=str(p)) > 0

    dlq = TopicReader(broker.bootstrap, cfg.kafka.dlq_topic)
    try:
        wait_for("the dead letter", lambda: len(dlq.poll()) >= 1)
        dead = dlq.poll()
    finally:
        dlq.close()
    assert len(dead) == 1
    h = dict(dead[0].headers)
    source = f"{cfg.kafka.telemetry_topic}/3/{poison_at.offset}"
    assert h["error"] == b"bad_header_name" and h["source"] == source.encode()
    assert h["source-offsets"] == f"{poison_at.offset}-{poison_at.offset}".encode()
    assert dead[0].key == poisoned.encode() and b"\xfftrace" in dead[0].value
    assert CONTENT_TYPE_BINARY.encode() in dead[0].value  # the record's own bytes
    assert "unreadable Kafka records (1 bad_header_name)" in log
    print(
        f"\npoison at partition 3 offset {poison_at.offset}; {n_frames} frames consumed, "
        f"incident for {attacked} (partition 0); exit 0 {took:.1f} s after SIGTERM"
    )
