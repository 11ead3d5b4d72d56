"""The watchdog (detector.service.watchdog) and a stop that always stops (canwatch detect).

- ``StallWatch``, ``Health`` and ``Watchdog.tick`` on hand-made loop states: when a
  stall begins and ends, what is exported, the one log line, the exit;
- the watchdog's end offsets against the real broker, whose ListOffsets
  under-reports, checked against reading the topic back;
- ``canwatch detect`` whose poll blocks inside kafka-python (tests/blocked_detect.py):
  not ready, lag growing, one line naming the partition, exit 3 after exit_s;
  and after SIGTERM it exits at watchdog.shutdown_timeout_s (exit 4) although its
  main thread never comes back;
- ``canwatch detect`` against a broker frozen with SIGSTOP: SIGTERM, and it is gone
  within watchdog.shutdown_timeout_s.

Durations are printed; the only time bounds asserted are the deadlines the
feature promises (plus slack for a loaded 2-core machine).
"""

from __future__ import annotations

import logging
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from kafka.record.util import calc_crc32c
from prometheus_client import CollectorRegistry
from test_detect_service import CANWATCH, scrape, service_config, topics_toml, total, wait_for

from detector.core.config import load_config
from detector.service.metrics import DetectorMetrics
from detector.service.watchdog import EndOffsets, Health, LoopState, StallWatch, Watchdog
from detector.transport.broker import EmbeddedBroker, create_topics, free_port
from detector.transport.kafka_io import make_producer
from detector.transport.wire import encode_record
from replay.simulator import simulate_vehicle

TESTS = Path(__file__).resolve().parent
sys.path.insert(0, str(TESTS))
from blocked_detect import BLOCK_KEY  # noqa: E402

TP0, TP1 = TopicPartition("t", 0), TopicPartition("t", 1)


def state(beat: float, positions: dict) -> LoopState:
    return LoopState(beat, positions)


# -- StallWatch: the verdict --------------------------------------------------------------


def test_records_waiting_and_no_progress_for_stall_s_is_a_stall_naming_the_partition():
    w = StallWatch(stall_s=10, exit_s=30)
    ends = {TP0: 100, TP1: 50}
    assert not w.observe(0, state(0, {TP0: 40, TP1: 50}), ends).stalled
    assert not w.observe(9, state(9, {TP0: 40, TP1: 50}), ends).stalled
    v = w.observe(10, state(10, {TP0: 40, TP1: 50}), ends)
    assert v.stalled and v.partitions == (TP0,) and v.stalled_s == 10 and not v.exit_due
    assert w.observe(30, state(30, {TP0: 40, TP1: 50}), ends).exit_due
    # progress ends it, and the clock starts again
    assert not w.observe(31, state(31, {TP0: 41, TP1: 50}), ends).stalled
    assert not w.observe(40, state(40, {TP0: 41, TP1: 50}), ends).stalled
    assert w.observe(41, state(41, {TP0: 41, TP1: 50}), ends).stalled


def test_an_idle_partition_is_never_stalled_and_new_records_get_the_full_stall_s():
    w = StallWatch(stall_s=10, exit_s=30)
    for t in range(0, 1000, 5):  # caught up for a long time
        assert not w.observe(t, state(t, {TP0: 70}), {TP0: 70}).stalled
    assert not w.observe(1000, state(1000, {TP0: 70}), {TP0: 75}).stalled  # records arrive
    assert not w.observe(1004, state(1004, {TP0: 70}), {TP0: 75}).stalled
    assert w.observe(1005, state(1005, {TP0: 70}), {TP0: 75}).stalled


def test_unknown_end_offsets_are_no_stall_but_a_silent_loop_is():
    w = StallWatch(stall_s=10, exit_s=30)
    for t in (0, 20, 100):  # the broker does not answer: an outage, the loop reports it
        assert not w.observe(t, state(t, {TP0: 40}), None).stalled
    v = w.observe(112, state(100, {TP0: 40}), None)  # the loop has not come round for 12 s
    assert v.stalled and v.partitions == () and v.loop_silent_s == 12 and v.stalled_s == 12
    assert w.observe(130, state(100, {TP0: 40}), None).exit_due


def test_time_without_word_from_the_broker_is_no_stall():
    w = StallWatch(stall_s=10, exit_s=30)
    w.observe(0, state(0, {TP0: 40}), {TP0: 90})
    for t in range(1, 300, 5):  # a long outage: the loop goes round, no end offsets
        assert not w.observe(t, state(t, {TP0: 40}), None).stalled
    v = w.observe(300, state(300, {TP0: 40}), {TP0: 95})  # back: the clock starts now
    assert not v.stalled and not v.exit_due
    assert w.observe(310, state(310, {TP0: 40}), {TP0: 95}).stalled


def test_a_revoked_partition_starts_afresh_and_a_rewind_is_no_progress():
    w = StallWatch(stall_s=10, exit_s=30)
    w.observe(0, state(0, {TP0: 40}), {TP0: 90})
    assert w.observe(10, state(10, {TP0: 30}), {TP0: 90}).stalled  # went back: not progress
    w.observe(11, state(11, {}), {TP0: 90})  # revoked
    assert not w.observe(12, state(12, {TP0: 30}), {TP0: 90}).stalled  # assigned again
    assert w.observe(22, state(22, {TP0: 30}), {TP0: 90}).stalled


def test_ready_is_the_loops_claim_unless_the_watchdog_sees_a_stall():
    m = DetectorMetrics(CollectorRegistry())
    h = Health(m)

    def ready():
        return m.registry.get_sample_value("canwatch_ready")

    h.loop_ready(True)
    assert ready() == 1
    h.stalled(True)
    assert ready() == 0
    h.loop_ready(True)  # the loop cannot overrule it
    assert ready() == 0
    h.stalled(False)
    assert ready() == 1


# -- Watchdog.tick: what it exports, logs and does -------------------------------------------


def test_a_tick_exports_lag_stall_and_ready_logs_once_and_exits_once(caplog):
    cfg = load_config(None, env={}, overrides={"watchdog.stall_s": 4, "watchdog.exit_s": 8})
    m = DetectorMetrics(CollectorRegistry())
    h = Health(m)
    h.loop_ready(True)
    now = [0.0]
    loop = {"beat": 0.0, "positions": {TP0: 40, TP1: 50}}
    ends: dict = {TP0: 100, TP1: 50}
    exits: list[str] = []
    answers = [True]

    def end_offsets(positions):
        if not answers[0]:
            raise ConnectionError("broker away")
        return dict(ends)

    dog = Watchdog(
        cfg, m, h, lambda: LoopState(loop["beat"], loop["positions"], {TP0: time.time() - 3}),
        exits.append, end_offsets,
    )  # fmt: skip

    def value(name, **labels):
        return m.registry.get_sample_value(name, labels)

    caplog.set_level(logging.INFO, "canwatch.watchdog")
    for t in (0.0, 1.0, 2.0, 3.0):
        loop["beat"] = t
        dog.tick(t)
    assert value("canwatch_consumer_lag_records", partition="0") == 60
    assert value("canwatch_consumer_lag_records", partition="1") == 0
    assert value("canwatch_event_time_lag_seconds", partition="0") >= 3  # current, not cached
    assert value("canwatch_poll_stalled_seconds") == 0 and value("canwatch_ready") == 1
    for t in (4.0, 5.0, 6.0, 7.0):
        loop["beat"] = t  # the loop goes round, but partition 0 does not move
        dog.tick(t)
    assert value("canwatch_ready") == 0 and value("canwatch_poll_stalled_seconds") == 7
    stalled_lines = [r for r in caplog.records if "poll loop stalled" in r.getMessage()]
    assert len(stalled_lines) == 1 and "t/0 at 40 of 100" in stalled_lines[0].getMessage()
    assert not exits
    answers[0] = False  # the broker stops answering: lag is unknown, not the old number
    for t in (8.0, 9.0, 10.0, 11.0, 12.0, 13.0, 14.0):
        loop["beat"] = t
        dog.tick(t)
    assert len(exits) == 1 and "t/0" in exits[0]  # exit_s since the last progress
    assert math.isnan(value("canwatch_consumer_lag_records", partition="0"))
    loop["positions"] = {TP0: 100, TP1: 50}  # progress again
    answers[0] = True
    now[0] = 15.0
    dog._last_probe = -math.inf
    dog.tick(15.0)
    assert value("canwatch_ready") == 1 and value("canwatch_poll_stalled_seconds") == 0
    assert any("progressing again" in r.getMessage() for r in caplog.records)
    assert len(exits) == 1


# -- end offsets: Tansu's ListOffsets under-reports ------------------------------------------


@pytest.mark.kafka
def test_end_offsets_equal_the_records_read_back_where_list_offsets_under_reports(
    broker, unique_topic
):
    topic = unique_topic("telemetry")
    create_topics(broker.bootstrap, {topic: 1})
    producer = KafkaProducer(bootstrap_servers=broker.bootstrap, linger_ms=50)
    try:
        for n in (1, 1, 1, 1, 5):  # five batches, the last of five records
            for _ in range(n):
                producer.send(topic, b"x", partition=0)
            producer.flush()
    finally:
        producer.close()
    tp = TopicPartition(topic, 0)
    reader = KafkaConsumer(bootstrap_servers=broker.bootstrap, group_id=None,
                           auto_offset_reset="earliest", fetch_max_wait_ms=10)  # fmt: skip
    try:
        listed = reader.end_offsets([tp])[tp]
        reader.assign([tp])
        records: list = []
        wait_for("the topic read back", lambda: len(records.__iadd__(
            reader.poll(timeout_ms=200).get(tp, []))) >= 9)  # fmt: skip
    finally:
        reader.close()
    cfg = load_config(None, env={}, overrides={"kafka.bootstrap": broker.bootstrap})
    probe = EndOffsets(cfg)
    try:
        ends = [probe({tp: at})[tp] for at in (None, 0, 4, 8, 9)]
    finally:
        probe.close()
    print(f"\nListOffsets(latest) {listed}, records read back {len(records)}, watchdog {ends}")
    assert len(records) == 9 and [r.offset for r in records] == list(range(9))
    # behind ListOffsets: its figure, a lower bound; caught up with it: exact
    assert ends == [listed, listed, listed, 9, 9] and listed <= 9


@pytest.mark.kafka
def test_offsets_the_broker_numbered_but_cannot_give_are_records_waiting_only_before_others(
    broker, unique_topic
):
    """Tansu refuses a batch of unknown codec (7) but numbers its offsets all the same,
    and a fetch from inside such a gap returns nothing. At the end of the log that is
    no record waiting (else a stall that no restart ends); before stored records it is
    (the consumer cannot get past it: a stall the watchdog must report)."""
    from test_fuzz_batches import RawKafka

    from detector.transport import kafka_records as kr

    good = kr.build_batch([(i, 1_700_000_000_000, b"k", b"v", []) for i in range(3)])
    bad = bytearray(good)
    bad[21:23] = (7).to_bytes(2, "big")
    bad[17:21] = calc_crc32c(bytes(bad[21:])).to_bytes(4, "big")
    cfg = load_config(None, env={}, overrides={"kafka.bootstrap": broker.bootstrap})
    ends = {}
    for case, batches in (("end", [good, bytes(bad)]), ("middle", [good, bytes(bad), good])):
        topic = unique_topic(case)
        create_topics(broker.bootstrap, {topic: 1})
        raw = RawKafka(broker.bootstrap)
        try:
            for batch in batches:
                raw.produce(topic, 0, batch)
            answers = [raw.produced() for _ in batches]
        finally:
            raw.close()
        assert answers[0] == (0, 0) and answers[1][0] != 0  # the bad one refused
        tp = TopicPartition(topic, 0)
        probe = EndOffsets(cfg)
        try:
            ends[case] = probe({tp: 0})[tp], probe({tp: 3})[tp]
        finally:
            probe.close()
    print(f"\nend offsets from 0 and from 3 (the gap): {ends}")
    assert ends["end"][1] == 3  # from the gap: nothing waits
    assert ends["middle"][1] > 3  # records wait beyond a gap the broker cannot serve


# -- canwatch detect with a poll that never returns ---------------------------------------------


def detect_args(cfg, tmp_path: Path, port: int, name: str, **watchdog: float) -> list[str]:
    toml = tmp_path / f"{name}.toml"
    k = cfg.kafka
    toml.write_text(
        topics_toml(
            k,
            'compression = "none"\n[watchdog]\n'
            + "".join(f"{key} = {value}\n" for key, value in watchdog.items()),
        ),
        encoding="utf-8",
    )
    return [
        "detect", "--config", str(toml), "--bootstrap", k.bootstrap, "--models", cfg.models.dir,
        "--group", k.group_id, "--metrics", f"127.0.0.1:{port}", "--detector-id", name,
    ]  # fmt: skip


def start(args: list[str], tmp_path: Path, name: str, blocked: bool) -> subprocess.Popen:
    cmd = [sys.executable, str(TESTS / "blocked_detect.py")] if blocked else [str(CANWATCH)]
    with open(tmp_path / f"{name}.err", "wb") as err:
        return subprocess.Popen(
            cmd + args, stdout=subprocess.DEVNULL, stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )  # fmt: skip


def traffic(cfg, seconds: float, vehicle: str, partition: int, block: bool = False) -> int:
    """A jeep's records to ``partition`` (the last one the blocking record if ``block``)."""
    frames = simulate_vehicle("cusw", seconds, time.time() - seconds - 1, seed=77)
    producer = make_producer(cfg.kafka)
    try:
        for i in range(0, len(frames), 400):
            key, value, headers = encode_record(vehicle, "jeep", frames[i : i + 400], "binary")
            producer.send(cfg.kafka.telemetry_topic, key=key, value=value, headers=headers,
                          partition=partition)  # fmt: skip
        if block:
            producer.send(cfg.kafka.telemetry_topic, key=BLOCK_KEY, value=b"x",
                          headers=headers, partition=partition)  # fmt: skip
        producer.flush()
    finally:
        producer.close()
    return len(frames)


def metrics_of(url: str) -> dict:
    try:
        return scrape(url)
    except OSError:
        return {}


def ended(proc: subprocess.Popen, timeout_s: float) -> int | None:
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return None


@pytest.mark.kafka
@pytest.mark.slow
def test_a_poll_that_never_returns_is_a_stall_then_an_exit(
    broker, unique_topic, cusw_models, tmp_path
):
    cfg = service_config(broker, unique_topic, cusw_models, partitions=2)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    stall_s, exit_s = 3.0, 12.0
    args = detect_args(cfg, tmp_path, port, "stall", stall_s=stall_s, exit_s=exit_s)
    proc = start(args, tmp_path, "stall", blocked=True)
    try:
        wait_for("ready", lambda: total(metrics_of(url), "canwatch_ready") == 1)
        frames = traffic(cfg, 3, "veh-stall-0", 0)
        wait_for("frames consumed", lambda: total(
            metrics_of(url), "canwatch_frames_consumed_total") == frames)  # fmt: skip
        t0 = time.monotonic()
        traffic(cfg, 3, "veh-stall-0", 0, block=True)  # the poll now hangs on partition 0
        seen: dict = {}

        def unready() -> bool:
            nonlocal seen
            seen = metrics_of(url)
            return bool(seen) and total(seen, "canwatch_ready") == 0
        wait_for("ready 0", unready, timeout_s=exit_s)
        t_unready = time.monotonic() - t0
        assert proc.poll() is None  # not ready long before it exits
        wait_for("lag and stall seconds", lambda: total(
            metrics_of(url), "canwatch_poll_stalled_seconds") > 0)  # fmt: skip
        lag = total(metrics_of(url), "canwatch_consumer_lag_records", partition="0")
        code = ended(proc, exit_s + 30)
        t_exit = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "stall.err").read_text(errors="replace")
    print(f"\nstall_s {stall_s:g}, exit_s {exit_s:g}: ready 0 after {t_unready:.1f} s, "
          f"exit {code} after {t_exit:.1f} s; lag on partition 0: {lag:g}")  # fmt: skip
    assert code == 3, err[-3000:]
    assert lag > 0  # records wait, and the lag says so
    stalled = [line for line in err.splitlines() if "poll loop stalled" in line]
    assert len(stalled) == 1, err[-3000:]
    assert f"{cfg.kafka.telemetry_topic}/0 at " in stalled[0]
    assert "exiting so that the supervisor restarts" in err


@pytest.mark.kafka
@pytest.mark.slow
def test_sigterm_ends_a_detector_whose_poll_never_returns(
    broker, unique_topic, cusw_models, tmp_path
):
    cfg = service_config(broker, unique_topic, cusw_models, partitions=1)
    port = free_port()
    url = f"http://127.0.0.1:{port}/metrics"
    timeout_s = 3.0
    args = detect_args(cfg, tmp_path, port, "term", stall_s=2, exit_s=600,
                       shutdown_timeout_s=timeout_s)  # fmt: skip
    proc = start(args, tmp_path, "term", blocked=True)
    try:
        wait_for("ready", lambda: total(metrics_of(url), "canwatch_ready") == 1)
        traffic(cfg, 2, "veh-term-0", 0, block=True)
        wait_for("the stall", lambda: total(metrics_of(url), "canwatch_poll_stalled_seconds") > 0)
        t0 = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        code = ended(proc, timeout_s + 20)
        took = time.monotonic() - t0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err = (tmp_path / "term.err").read_text(errors="replace")
    print(f"\nSIGTERM with the poll hung: exit {code} after {took:.1f} s (deadline {timeout_s:g} s)")
    assert code == 4, err[-3000:]
    assert took < timeout_s + 5  # the promised deadline, plus slack for process exit
    assert "not stopped 3 s after the signal" in err


@pytest.mark.kafka
@pytest.mark.slow
def test_sigterm_ends_a_detector_whose_broker_is_frozen(unique_topic, cusw_models, tmp_path):
    """The broker stopped with SIGSTOP (a hung broker: connections open, nothing
    answers): canwatch detect still exits within watchdog.shutdown_timeout_s (default
    10 s) of SIGTERM."""
    with EmbeddedBroker(port=free_port()) as own:
        cfg = service_config(own, unique_topic, cusw_models, partitions=2)
        port = free_port()
        url = f"http://127.0.0.1:{port}/metrics"
        proc = start(detect_args(cfg, tmp_path, port, "frozen"), tmp_path, "frozen", False)
        try:
            wait_for("ready", lambda: total(metrics_of(url), "canwatch_ready") == 1)
            frames = traffic(cfg, 3, "veh-frozen-0", 1)
            wait_for("frames consumed", lambda: total(
                metrics_of(url), "canwatch_frames_consumed_total") == frames)  # fmt: skip
            os.kill(own.pid, signal.SIGSTOP)
            try:
                time.sleep(1.0)  # the detector's next requests are in flight to a frozen broker
                t0 = time.monotonic()
                proc.send_signal(signal.SIGTERM)
                code = ended(proc, 10 + 20)
                took = time.monotonic() - t0
            finally:
                os.kill(own.pid, signal.SIGCONT)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    err = (tmp_path / "frozen.err").read_text(errors="replace")
    print(f"\nSIGTERM with the broker frozen: exit {code} after {took:.1f} s (deadline 10 s)")
    assert code in (0, 4), err[-3000:]
    assert took < 10 + 5, err[-3000:]


def test_every_unreadable_reason_is_a_metric_label_and_lag_series_follow_the_assignment():
    from detector.service.metrics import DEAD_LETTER_REASONS, UNREADABLE_REASONS
    from detector.transport import kafka_salvage

    assert kafka_salvage.REASONS == UNREADABLE_REASONS
    assert set(UNREADABLE_REASONS) <= set(DEAD_LETTER_REASONS)
    m = DetectorMetrics(CollectorRegistry())
    m.set_consumer_lag({0: 5.0, 1: math.nan})
    m.set_consumer_lag({1: 3.0})  # partition 0 revoked: its series goes, not a stale 5
    assert m.registry.get_sample_value("canwatch_consumer_lag_records", {"partition": "0"}) is None
    assert m.registry.get_sample_value("canwatch_consumer_lag_records", {"partition": "1"}) == 3
