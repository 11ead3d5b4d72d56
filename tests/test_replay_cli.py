"""``canwatch replay`` and ``canwatch simulate --to-kafka`` against the real (Tansu) broker."""

from __future__ import annotations

import json
import re
import time
from collections import defaultdict

import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from detector.cli import main
from detector.cli.replay import rebase_lag
from detector.transport import wire
from detector.transport.broker import create_topics
from replay.attacks import AttackSpec, inject
from replay.readers import read_frames
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

DOS = "dos:start=1,duration=1"


def recording(tmp_path, name="car-7", seconds=2.0):
    """A candump log with relative timestamps (starting at 0.0), and its frames as read back."""
    path = tmp_path / f"{name}.log"
    write_frames(path, simulate_vehicle("cusw", seconds, start_ts=0.0, seed=3), "candump")
    return path, read_frames(path)


def published(out: str) -> int:
    match = re.search(r"published (\d+) records, (\d+) frames, (\d+) vehicles", out)
    assert match, out
    return int(match.group(1))


def consume(bootstrap: str, topic: str, records: int, timeout_s: float = 20.0) -> list:
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, auto_offset_reset="earliest", fetch_max_wait_ms=10
    )
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        got: list = []
        deadline = time.monotonic() + timeout_s
        while len(got) < records and time.monotonic() < deadline:
            for recs in consumer.poll(timeout_ms=200).values():
                got.extend(recs)
        assert len(got) == records
        return got
    finally:
        consumer.close()


def decode(r) -> wire.DecodedBatch:
    return wire.decode_record(
        r.key, r.value, r.headers, known_brands=None, now=time.time(), max_future_s=300, min_ts=0
    )


def test_rebase_lag_keeps_every_frame_in_the_past():
    assert rebase_lag(10.0, None) == 10.0  # max speed: the replay ends now
    assert rebase_lag(10.0, 1.0) == 0.0  # real time: the first frame is now
    assert rebase_lag(10.0, 5.0) == pytest.approx(8.0)
    assert rebase_lag(10.0, 0.5) == 0.0


@pytest.mark.kafka
@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_replay_fans_out_injects_and_publishes(broker, unique_topic, tmp_path, capsys, encoding):
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 3})
    path, frames = recording(tmp_path)
    injected = len(inject(frames, AttackSpec.parse(DOS), seed=0)[0]) - len(frames)
    assert injected > 1000
    argv = ["replay", str(path), "--brand", "jeep", "--max-speed", "--vehicles", "3"]
    argv += ["--attack", DOS, "--encoding", encoding, "--bootstrap", broker.bootstrap]
    before = time.time()
    assert main([*argv, "--topic", topic]) == 0
    out, err = capsys.readouterr()
    assert err == "", "no progress line when stderr is not a terminal"
    records = consume(broker.bootstrap, topic, published(out))

    per_vehicle: dict[str, list[np.ndarray]] = defaultdict(list)
    ctype = wire.CONTENT_TYPE_BINARY if encoding == "binary" else wire.CONTENT_TYPE_JSON
    for r in records:
        headers = dict(r.headers)
        assert headers["brand"] == b"jeep" and headers["content-type"] == ctype.encode()
        batch = decode(r)
        assert batch.vehicle == r.key.decode() and batch.brand == "jeep"
        per_vehicle[batch.vehicle].append(batch.frames)
    assert len(per_vehicle) == 3 and all(v.startswith("car-7-") for v in per_vehicle)
    got = {v: np.concatenate(f) for v, f in per_vehicle.items()}
    assert sum(len(f) for f in got.values()) == 3 * (len(frames) + injected)
    for f in got.values():
        assert len(f) == len(frames) + injected
        assert not f["label"].any(), "ground truth never goes on the wire"
        # rebased to the present (max speed: the replay ends now), recorded gaps kept
        assert before - 10 < f["ts"].min() and f["ts"].max() <= time.time()
        assert f["ts"].max() - f["ts"].min() == pytest.approx(np.ptp(frames["ts"]), abs=1.5)


@pytest.mark.kafka
def test_replay_speed_paces_and_no_rebase_keeps_timestamps(broker, unique_topic, tmp_path, capsys):
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 1})
    path, frames = recording(tmp_path, seconds=2.0)
    argv = ["replay", str(path), "--brand", "opel", "--vehicle", "veh-x", "--speed", "5"]
    argv += ["--no-rebase-time", "--bootstrap", broker.bootstrap, "--topic", topic]
    t0 = time.monotonic()
    assert main(argv) == 0
    assert time.monotonic() - t0 >= 0.3  # ~2 s of traffic at 5x
    records = consume(broker.bootstrap, topic, published(capsys.readouterr().out))
    assert {r.key for r in records} == {b"veh-x"}
    got = np.concatenate([decode(r).frames for r in records])
    np.testing.assert_array_equal(got["ts"], np.sort(frames["ts"]))


def test_replay_errors_are_one_line_exit_2(tmp_path, capsys):
    path, _ = recording(tmp_path, seconds=0.5)
    cases = [
        (["--brand", "Jeep!"], "brand must be a lower-case slug"),
        (["--brand", "jeep", "--attack", "dos:start=1,durration=2"], "durration"),
        (["--brand", "jeep", "--vehicles", "0"], "--vehicles"),
        (["--brand", "jeep", "--vehicles", "2", "--shift", "inf"], "--shift must be in [0,"),
        (["--brand", "jeep", "--speed", "1e-300"], "--speed must be >= 0.001"),
        (["--brand", "jeep", "--shift", "2"], "--shift spaces the copies of --vehicles N"),
        (["--brand", "jeep", "--attack", "dos:start=0.1,duration=1e308"], "frames to inject"),
    ]
    for extra, needle in cases:
        assert main(["replay", str(path), *extra, "--bootstrap", "127.0.0.1:1"]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert main(["replay", str(tmp_path / "missing.log"), "--brand", "jeep"]) == 2
    assert "missing.log" in capsys.readouterr().err
    (tmp_path / "junk.log").write_text("not a CAN log\n")
    assert main(["replay", str(tmp_path / "junk.log"), "--brand", "jeep"]) == 2
    assert "junk.log" in capsys.readouterr().err


def test_replay_broker_unreachable_exit_2(tmp_path, capsys):
    from detector.transport.broker import free_port

    path, _ = recording(tmp_path, seconds=0.5)
    argv = ["replay", str(path), "--brand", "jeep", "--max-speed", "--connect-timeout", "0.5"]
    assert main([*argv, "--bootstrap", f"127.0.0.1:{free_port()}"]) == 2
    err = capsys.readouterr().err
    assert "cannot reach Kafka" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("command", ["replay", "simulate", "incidents", "train"])
def test_a_connect_timeout_out_of_range_is_an_option_error(tmp_path, capsys, command):
    """inf and nan reached kafka-python as tracebacks; 0 as "cannot reach Kafka"."""
    path, _ = recording(tmp_path, seconds=0.5)
    head = {
        "replay": ["replay", str(path), "--brand", "jeep"],
        "simulate": ["simulate", "--to-kafka"],
        "incidents": ["incidents"],
        "train": ["train", "--from-kafka", "--platform", "cusw", "--out", str(tmp_path)],
    }[command]
    for value in ("inf", "nan", "0", "-1"):
        with pytest.raises(SystemExit) as done:
            main([*head, "--connect-timeout", value, "--bootstrap", "127.0.0.1:1"])
        assert done.value.code == 2
        err = capsys.readouterr().err
        assert f"--connect-timeout: must be in (0, 3600] s, got {value}" in err, err
        assert "Traceback" not in err


@pytest.mark.kafka
def test_simulate_to_kafka_streams_the_fleet(broker, unique_topic, tmp_path, capsys):
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 2})
    argv = ["simulate", "--brands", "jeep,peugeot", "--duration", "1.5", "--out", str(tmp_path)]
    argv += ["--attack", "dos:start=0.5,duration=0.5", "--to-kafka", "--max-speed"]
    assert (
        main([*argv, "--encoding", "json", "--bootstrap", broker.bootstrap, "--topic", topic]) == 0
    )
    out = capsys.readouterr().out
    fleet = json.loads((tmp_path / "fleet.json").read_text())
    records = consume(broker.bootstrap, topic, published(out))
    frames: dict[str, list[np.ndarray]] = defaultdict(list)
    for r in records:
        batch = decode(r)
        frames[batch.vehicle].append(batch.frames)
        assert dict(r.headers)["brand"] == batch.brand.encode()
    for v in fleet["vehicles"]:
        assert sum(len(f) for f in frames[v["vehicle"]]) == v["frames"]
    # fleet.json's ground truth is in the same (present-day) time base as the stream
    span = fleet["attacks"][0]
    ts = np.concatenate(frames[span["vehicle"]])["ts"]
    assert ts.min() < span["start_ts"] < span["end_ts"] < ts.max() <= time.time()


@pytest.mark.kafka
def test_simulate_to_kafka_keeps_an_attack_past_the_duration_in_the_past(
    broker, unique_topic, tmp_path, capsys
):
    """A flood running 10 s past --duration: the fleet is placed earlier, so no frame
    is ahead of the clock (a detector refuses those past detection.max_future_s)."""
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 1})
    argv = ["simulate", "--brands", "jeep", "--duration", "2", "--out", str(tmp_path)]
    argv += ["--attack", "dos:start=1,duration=11", "--to-kafka", "--max-speed"]
    assert main([*argv, "--bootstrap", broker.bootstrap, "--topic", topic]) == 0
    records = consume(broker.bootstrap, topic, published(capsys.readouterr().out))
    ts = np.concatenate([decode(r).frames["ts"] for r in records])
    span = json.loads((tmp_path / "fleet.json").read_text())["attacks"][0]
    assert ts.max() <= time.time() and span["end_ts"] <= time.time()
    assert span["end_ts"] - span["start_ts"] == pytest.approx(11)


@pytest.mark.kafka
def test_simulate_to_kafka_warns_of_frames_a_detector_will_refuse(broker, unique_topic, capsys):
    """--start-ts put ahead of the clock, sent at once: said before publishing (they were
    published without a word, and dead-lettered as bad_timestamp); paced at real time
    from now, they are not ahead when sent, and nothing is said."""
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 1})
    now = time.time()
    argv = ["simulate", "--brands", "jeep", "--duration", "1", "--to-kafka"]
    argv += ["--bootstrap", broker.bootstrap, "--topic", topic]
    assert main([*argv, "--max-speed", "--start-ts", str(now + 3600)]) == 0
    err = capsys.readouterr().err
    assert "frames have timestamps the detector will reject" in err, err
    assert "leave out --start-ts" in err and err.count("\n") == 1, err
    assert main([*argv, "--speed", "1", "--start-ts", str(now + 1)]) == 0
    assert capsys.readouterr().err == ""


def test_simulate_needs_a_sink(tmp_path, capsys):
    assert main(["simulate", "--brands", "jeep", "--duration", "1"]) == 2
    assert "--to-kafka" in capsys.readouterr().err
