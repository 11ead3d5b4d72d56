"""Embedded broker, Kafka client config, paced publisher; integration against real Tansu."""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict

import numpy as np
import pytest
from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer, TopicPartition
from kafka.errors import KafkaError

from detector.core.config import KafkaConfig
from detector.core.errors import ConfigError
from detector.core.schema import make_frames
from detector.transport import wire
from detector.transport.broker import EmbeddedBroker, create_topics, free_port
from detector.transport.kafka_io import (
    Secret,
    admin_config,
    consumer_config,
    crc32c_accelerated,
    end_offsets,
    make_consumer,
    make_producer,
    producer_config,
)
from replay.publisher import (
    Batch,
    PublishError,
    chunk_bounds,
    fan_out,
    interleave,
    paced,
    publish,
)

T0 = 1_700_000_000.0
CLI = "import sys; from detector.cli import main; sys.exit(main(sys.argv[1:]))"


def frames_at(ts, can_id=0x100) -> np.ndarray:
    ts = np.asarray(ts, dtype=float)
    data = (np.arange(len(ts))[:, None] + np.arange(8)) % 256
    return make_frames(ts=ts, can_id=np.full(len(ts), can_id), data=data)


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


# -- publisher: pure parts ------------------------------------------------------


def test_chunk_bounds_cut_by_span_and_count():
    ts = np.array([0.0, 0.01, 0.05, 0.12, 0.13, 0.31])
    assert chunk_bounds(ts, max_frames=500, max_span_s=0.1).tolist() == [0, 3, 5]
    assert chunk_bounds(ts, max_frames=2, max_span_s=0.1).tolist() == [0, 2, 3, 5]
    assert chunk_bounds(np.zeros(0)).tolist() == []


def test_interleave_orders_all_vehicles_by_event_time():
    a = ("veh-a", "jeep", frames_at(T0 + np.arange(0, 1, 0.01)))
    b = ("veh-b", "opel", frames_at(T0 + 0.05 + np.arange(0, 1, 0.01)))
    out = list(interleave([a, b], max_frames=500, max_span_s=0.1))
    assert [x.due for x in out] == sorted(x.due for x in out)
    assert {x.vehicle for x in out} == {"veh-a", "veh-b"}
    assert sum(len(x.frames) for x in out) == 200
    assert all(x.frames["ts"][-1] - x.frames["ts"][0] < 0.1 for x in out)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.now += s


@pytest.mark.parametrize("speed,expected", [(1.0, [1.0, 2.0]), (10.0, [0.1, 0.2]), (None, [])])
def test_paced_sleeps_event_gaps_divided_by_speed(speed, expected):
    items = [Batch(T0 + d, "v", "jeep", frames_at([T0 + d])) for d in (0.0, 1.0, 3.0)]
    clock = FakeClock()
    assert list(paced(items, speed, clock, clock.sleep)) == items
    np.testing.assert_allclose(clock.slept, expected)


def test_fan_out_makes_distinct_time_shifted_vehicles():
    frames = frames_at(T0 + np.arange(5) * 0.1)
    copies = fan_out(frames, 4, "veh", time_shift_s=2.5)
    ids = [v for v, _ in copies]
    assert len(set(ids)) == 4 and all(v.startswith("veh-") for v in ids)
    assert ids == [v for v, _ in fan_out(frames, 4, "veh", 2.5)], "deterministic"
    for i, (_, f) in enumerate(copies):
        np.testing.assert_allclose(f["ts"], frames["ts"] + 2.5 * i)
    assert frames["ts"][0] == T0, "input untouched"
    assert fan_out(frames, 1, "veh", 2.5)[0][0] == "veh"


# -- kafka_io: configuration ----------------------------------------------------


def test_producer_and_consumer_config():
    cfg = KafkaConfig(bootstrap="a:1,b:2", max_poll_records=7)
    p = producer_config(cfg)
    assert p["bootstrap_servers"] == ["a:1", "b:2"]
    assert (p["acks"], p["enable_idempotence"], p["linger_ms"]) == ("all", True, 5)
    assert (p["batch_size"], p["compression_type"]) == (1 << 20, "lz4")
    assert producer_config(KafkaConfig(compression="none"))["compression_type"] is None
    c = consumer_config(cfg, group_id="g")
    assert (c["group_id"], c["enable_auto_commit"], c["auto_offset_reset"]) == (
        "g",
        False,
        "earliest",
    )
    assert (c["session_timeout_ms"], c["heartbeat_interval_ms"]) == (6000, 2000)
    assert (c["fetch_max_wait_ms"], c["max_poll_records"]) == (10, 7)
    assert "sasl_plain_password" not in c


def test_sasl_password_from_env_or_file_and_never_shown(tmp_path):
    cfg = KafkaConfig(
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="SCRAM-SHA-256",
        sasl_username="svc",
        sasl_password_env="MY_PW",
    )
    c = consumer_config(cfg, env={"MY_PW": "hunter2"})
    assert c["sasl_plain_password"] == "hunter2" and c["sasl_plain_username"] == "svc"
    assert "hunter2" not in repr(c) and "hunter2" not in str(c) and "hunter2" not in f"{c}"
    assert "hunter2" not in repr(dict(c)), "the bare value has a redacting repr too"
    assert isinstance(c["sasl_plain_password"], Secret)
    assert "\0".join(["svc", c["sasl_plain_password"]]).endswith("hunter2")  # SASL PLAIN use
    with pytest.raises(ConfigError, match="MY_PW"):
        producer_config(cfg, env={})
    pw = tmp_path / "pw"
    pw.write_text("s3cret\n")
    from dataclasses import replace

    p = producer_config(replace(cfg, sasl_password_file=str(pw)), env={})
    assert p["sasl_plain_password"] == "s3cret"
    with pytest.raises(ConfigError, match="ssl_cafile"):
        producer_config(KafkaConfig(security_protocol="SSL", ssl_cafile=str(tmp_path / "nope")))


def test_option_names_are_kafka_pythons(tmp_path):
    pw = tmp_path / "pw"
    pw.write_text("x")
    cfg = KafkaConfig(
        security_protocol="SASL_SSL",
        sasl_mechanism="PLAIN",
        sasl_username="u",
        sasl_password_file=str(pw),
        ssl_cafile=str(pw),
    )
    assert set(producer_config(cfg)) <= set(KafkaProducer.DEFAULT_CONFIG)
    assert set(consumer_config(cfg)) <= set(KafkaConsumer.DEFAULT_CONFIG)


def test_kafka_python_debug_log_never_shows_the_password(caplog):
    cfg = KafkaConfig(
        bootstrap="127.0.0.1:9",  # discard port: nothing answers
        security_protocol="SASL_PLAINTEXT",
        sasl_mechanism="PLAIN",
        sasl_username="u",
    )
    kwargs = admin_config(cfg, env={"CANWATCH_SASL_PASSWORD": "hunter2"})
    with caplog.at_level(logging.DEBUG, logger="kafka"), pytest.raises(KafkaError):
        KafkaAdminClient(**kwargs, bootstrap_timeout_ms=300)
    assert "Starting KafkaAdminClient with configuration" in caplog.text
    assert "hunter2" not in caplog.text


def test_kafka_python_uses_the_crc32c_extension():
    assert crc32c_accelerated()


# -- embedded broker ------------------------------------------------------------


@pytest.mark.kafka
def test_broker_stop_and_restart_on_the_same_port(tmp_path):
    with EmbeddedBroker(log_path=tmp_path / "t.log") as b:
        pid, bootstrap = b.pid, b.bootstrap
        assert b.running and port_open(b.port) and bootstrap.startswith("127.0.0.1:")
        create_topics(bootstrap, {"before": 1})
        b.stop()
        assert not b.running and b.pid is None and not port_open(b.port)
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)
        b.start()
        assert b.bootstrap == bootstrap and b.pid != pid
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            assert "before" not in admin.list_topics(), "memory storage starts empty"
        finally:
            admin.close()
    assert not port_open(int(bootstrap.rsplit(":", 1)[1]))
    assert "listening on" in (tmp_path / "t.log").read_text()


@pytest.mark.kafka
def test_cli_runs_in_foreground_and_stops_on_sigterm():
    proc = subprocess.Popen(
        [sys.executable, "-c", CLI, "broker", "--topic", "cli.t:6"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        bootstrap = proc.stdout.readline().strip()
        assert bootstrap.startswith("127.0.0.1:"), proc.stderr.read() if proc.poll() else ""
        admin = KafkaAdminClient(bootstrap_servers=bootstrap)
        try:
            assert len(admin.describe_topics(["cli.t"])[0]["partitions"]) == 6
        finally:
            admin.close()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=15) == 0
        assert not port_open(int(bootstrap.rsplit(":", 1)[1]))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.kafka
def test_create_topics_with_partitions_and_again(broker, unique_topic):
    names = {unique_topic("a"): 6, unique_topic("b"): 8}
    create_topics(broker.bootstrap, names)
    create_topics(broker.bootstrap, names)  # already there: no error
    admin = KafkaAdminClient(bootstrap_servers=broker.bootstrap)
    try:
        described = {t["name"]: len(t["partitions"]) for t in admin.describe_topics(list(names))}
    finally:
        admin.close()
    assert described == names


# -- publish -> consume through the real broker --------------------------------


@pytest.mark.kafka
def test_publish_and_consume_binary_and_json(broker, unique_topic):
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 6})
    cfg = KafkaConfig(bootstrap=broker.bootstrap)
    streams = {
        "binary": [
            (v, "jeep", f) for v, f in fan_out(frames_at(T0 + np.arange(300) * 0.01), 3, "b", 0.5)
        ],
        "json": [("j-1", "opel", frames_at(T0 + np.arange(120) * 0.02, can_id=0x7FF))],
    }
    producer = make_producer(cfg)
    try:
        sent = {
            enc: publish(producer, topic, s, speed=None, encoding=enc) for enc, s in streams.items()
        }
        # the default codec (lz4) went on the wire; the consumer below reads it back
        assert producer.metrics()["producer-metrics"]["compression-rate-avg"] < 0.9
    finally:
        producer.close()
    assert (
        sent["binary"].frames == 900 and sent["binary"].vehicles == 3 and sent["json"].frames == 120
    )
    records = sent["binary"].records + sent["json"].records

    consumer = make_consumer(cfg, [topic], group_id=f"g-{topic}")
    got: dict[str, list[np.ndarray]] = defaultdict(list)
    n = 0
    try:
        deadline = time.monotonic() + 30
        while n < records and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                for r in recs:
                    batch = wire.decode_record(
                        r.key,
                        r.value,
                        r.headers,
                        known_brands={"jeep", "opel"},
                        now=time.time(),
                        max_future_s=300,
                        min_ts=0,
                    )
                    got[batch.vehicle].append(batch.frames)
                    n += 1
        consumer.commit()
    finally:
        consumer.close()
    assert n == records
    for v, _brand, frames in streams["binary"] + streams["json"]:
        np.testing.assert_array_equal(np.concatenate(got[v]), frames)


@pytest.mark.kafka
def test_end_offsets_counts_every_record(broker, unique_topic):
    """Tansu's ListOffsets(latest) = last batch's base offset + 1 (under-reports);
    end_offsets() must still give the true log end once the partition was fetched."""
    topic = unique_topic("offsets")
    create_topics(broker.bootstrap, {topic: 1})
    cfg = KafkaConfig(bootstrap=broker.bootstrap)
    producer = make_producer(cfg, linger_ms=200)
    try:
        for _ in range(4):  # four single-record batches, then one batch of five
            producer.send(topic, value=b"x").get(timeout=10)
        futures = [producer.send(topic, value=b"y") for _ in range(5)]
        producer.flush()
        assert [f.get(timeout=10).offset for f in futures] == [4, 5, 6, 7, 8]
    finally:
        producer.close()

    tp = TopicPartition(topic, 0)
    consumer = KafkaConsumer(
        bootstrap_servers=broker.bootstrap, fetch_max_wait_ms=10, auto_offset_reset="earliest"
    )
    try:
        consumer.assign([tp])
        listed = consumer.end_offsets([tp])[tp]
        assert listed <= 9  # Tansu 0.6.0 answers 5 here; real Kafka answers 9
        seen = 0
        deadline = time.monotonic() + 10
        while seen < 9 and time.monotonic() < deadline:
            seen += sum(len(v) for v in consumer.poll(timeout_ms=200).values())
        assert seen == 9
        assert end_offsets(consumer, [tp]) == {tp: 9}
    finally:
        consumer.close()


@pytest.mark.kafka
def test_producer_errors_surface(broker, unique_topic, tmp_path):
    topic = unique_topic("errors")
    create_topics(broker.bootstrap, {topic: 1})
    stream = [("v", "jeep", frames_at(T0 + np.arange(200) * 0.001))]
    small = make_producer(KafkaConfig(bootstrap=broker.bootstrap), max_request_size=1000)
    try:
        with pytest.raises(PublishError, match="cannot send"):
            publish(small, topic, stream, speed=None)
    finally:
        small.close()

    with EmbeddedBroker(log_path=tmp_path / "outage.log") as own:
        create_topics(own.bootstrap, {topic: 1})
        producer = make_producer(
            KafkaConfig(bootstrap=own.bootstrap),
            request_timeout_ms=500,
            delivery_timeout_ms=1500,
            max_block_ms=1000,
            retry_backoff_ms=100,
        )
        try:
            assert publish(producer, topic, stream, speed=None).frames == 200
            own.stop()
            with pytest.raises(PublishError, match="failed"):
                publish(producer, topic, stream, speed=None)
        finally:
            producer.close(timeout=1)


def test_a_producer_holding_records_it_cannot_deliver_is_discarded_at_once(tmp_path):
    """kafka-python's close() flushes first: with records pending and no broker it raised
    and left the producer open, whose __del__ then flushed for 1 s again and printed a
    traceback (canwatch replay, after the broker died mid-replay)."""
    from detector.transport.kafka_io import discard_producer

    with EmbeddedBroker(log_path=tmp_path / "gone.log") as own:
        create_topics(own.bootstrap, {"t": 1})
        producer = make_producer(KafkaConfig(bootstrap=own.bootstrap), linger_ms=60_000)
        own.stop()
        producer.send("t", value=b"x")  # held: no broker will take it
        discard_producer(producer)
        producer._sender.join(5)
        assert not producer._sender.is_alive()
        producer.__del__()  # nothing left to flush, nothing raised


def test_free_ports_lie_below_the_kernels_ephemeral_range():
    """Outgoing connections take their local port from the ephemeral range: a port
    drawn below it cannot be taken by one between free_port and its owner's bind."""
    low = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
    if low < 11024:
        pytest.skip(f"ephemeral range starts at {low}: no room below it")
    ports = [free_port() for _ in range(20)]
    assert all(10000 <= p < low for p in ports), ports
    for p in ports:
        with socket.socket() as s:
            s.bind(("127.0.0.1", p))
