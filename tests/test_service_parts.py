"""Parts of the detector service driven alone, without a broker: the offset ledger
(how far a commit may go) with hand-built offsets, the horizon it holds each vehicle's
records back to, and the audit file written and read back. The service tests
(tests/test_detect_service.py) drive them together through a real Kafka broker."""

from __future__ import annotations

import json
import math

from kafka.consumer.fetcher import ConsumerRecord
from kafka.structs import TopicPartition

from detector.service.audit_log import AuditLog, poll_summary
from detector.service.offset_ledger import OffsetLedger
from detector.transport.kafka_salvage import Problem, UnreadableRecord

TP0, TP1 = TopicPartition("telemetry", 0), TopicPartition("telemetry", 1)


def record(tp: TopicPartition, offset: int) -> ConsumerRecord:
    return ConsumerRecord(tp.topic, tp.partition, -1, offset, 0, 0, b"k", b"v", [], None, 1, 1, -1)


def read(ledger: OffsetLedger, tp: TopicPartition, rows: list[tuple[int, str, float]]) -> None:
    """``rows`` (offset, vehicle, newest event time) read from ``tp``, as intake enters them."""
    ledger.read_to({tp: [record(tp, o) for o, _, _ in rows]})
    nums = [ledger.track(v, "jeep", tp) for _, v, _ in rows]
    ledger.hold(tp, [o for o, _, _ in rows], nums, [ts for _, _, ts in rows])


def test_the_safe_offset_is_the_oldest_record_a_vehicle_still_needs():
    ledger = OffsetLedger()
    read(ledger, TP0, [(10, "a", 100.0), (11, "a", 101.0), (12, "a", 102.0), (13, "b", 100.5)])
    read(ledger, TP0, [(14, "b", 103.0)])
    read(ledger, TP1, [(7, "c", 100.0)])
    horizon = {"a": 101.5, "b": 0.0, "c": 100.0}
    assert ledger.safe_offsets(lambda v, b: horizon[v]) == {TP0: 12, TP1: 7}
    # b's window moves on past both its records: a's oldest needed one decides
    horizon["b"] = 104.0
    assert ledger.safe_offsets(lambda v, b: horizon[v]) == {TP0: 12, TP1: 7}
    # nothing held back: the partition's next offset
    horizon["a"] = horizon["c"] = math.inf
    assert ledger.safe_offsets(lambda v, b: horizon[v]) == {TP0: 15, TP1: 8}
    assert all(not chunks for chunks in ledger.pending.values())  # all pruned


def test_a_vehicle_let_go_holds_nothing_back_and_its_number_is_reused():
    ledger = OffsetLedger()
    read(ledger, TP0, [(0, "gone", 1.0), (1, "kept", 5.0)])
    number = ledger.vnum["gone"]
    ledger.forget_vehicles({"gone"})
    assert ledger.vnames[number] is None and "gone" not in ledger.vehicle_tp
    # its record no longer counts; the kept vehicle's record does
    assert ledger.safe_offsets(lambda v, b: 0.0) == {TP0: 1}
    read(ledger, TP0, [(2, "new", 6.0)])
    assert ledger.vnum["new"] == number  # the table does not grow with every key
    assert ledger.vnames[number] == ("new", "jeep")


def test_an_unreadable_span_moves_the_next_offset_past_its_end():
    ledger = OffsetLedger()
    span = UnreadableRecord("telemetry", 1, -1, 20, Problem("bad_crc", "CRC mismatch", 24), b"")
    ledger.read_to({TP1: [record(TP1, 19), span]})
    assert ledger.safe_offsets(lambda v, b: 0.0) == {TP1: 25}
    ledger.forget_partitions({TP1})
    assert ledger.safe_offsets(lambda v, b: 0.0) == {}


def test_an_incidents_span_is_the_records_with_frames_in_its_windows():
    """Provenance: the vehicle's records whose [oldest, newest] event times meet
    [start, end), however the poll interleaves other vehicles; kept through a prune
    whose horizon is the incident's."""
    ledger = OffsetLedger()
    rows = [(20, "a", 9.0, 9.9), (21, "b", 10.5, 9.8), (22, "a", 10.4, 9.9),
            (23, "a", 11.2, 10.4), (24, "b", 12.0, 10.5), (25, "a", 12.6, 11.2),
            (26, "a", 13.5, 12.6)]  # fmt: skip
    ledger.read_to({TP0: [record(TP0, o) for o, *_ in rows]})
    nums = [ledger.track(v, "jeep", TP0) for _, v, _, _ in rows]
    ledger.hold(TP0, [r[0] for r in rows], nums, [r[2] for r in rows], [r[3] for r in rows])
    assert ledger.span("a", 10.0, 12.0) == (TP0, 22, 25, 3)  # 20 ends before, 26 starts after
    assert ledger.span("b", 10.0, 12.0) == (TP0, 21, 24, 2)
    assert ledger.span("a", 20.0, 21.0) is None and ledger.span("nobody", 0, 99) is None
    ledger.safe_offsets(lambda v, b: 9.0)  # the horizon of an incident from 10.0 on
    assert ledger.span("a", 10.0, 12.0) == (TP0, 22, 25, 3)


def test_the_audit_file_gets_windows_then_the_poll_line_appended(tmp_path):
    path = tmp_path / "windows.jsonl"
    polled = {TP1: [record(TP1, 3), record(TP1, 4)], TP0: [record(TP0, 9)]}
    batches = [("a", "jeep", [1, 2, 3]), ("b", "jeep", [4])]
    summary = poll_summary(polled, 3, batches, 1, 2, 1)
    window = json.dumps({"type": "window", "vehicle": "a", "score": 0.5})
    for detector_id in ("det-1", "det-2"):  # a restart appends to the same file
        audit = AuditLog(path, detector_id, 1.0)
        assert not audit.is_open
        audit.open()
        audit.write(summary, [window], [TP1, TP0])
        audit.close()
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [x["type"] for x in lines] == ["window", "poll", "window", "poll"]
    assert lines[0] == json.loads(window)
    poll = lines[3]
    assert poll["detector"] == "det-2" and poll["assigned"] == [0, 1]
    assert {k: poll[k] for k in summary} == {
        "records": 3,
        "frames": 4,
        "dead_letters": 1,
        "incidents": 2,
        "windows": 1,
        "offsets": {"1": [3, 4], "0": [9, 9]},
    }


def test_the_audit_file_survives_a_torn_last_line_and_follows_logrotate(tmp_path):
    """A write cut by kill -9 left half a line, and the restarted detector's first line
    was fused to it; a file renamed by logrotate (``create``) was written on for ever."""
    path = tmp_path / "windows.jsonl"
    summary = {"records": 1}
    path.write_text('{"type":"poll","records":1}\n{"type":"window","brand":"je')
    audit = AuditLog(path, "det-1", 1.0)
    audit.open()
    audit.write(summary, [], [TP0])
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # all parse
    assert [x["type"] for x in lines] == ["poll", "poll"]
    path.rename(tmp_path / "windows.jsonl.1")
    audit.write(summary, [], [TP0])
    audit.close()
    assert len(path.read_text().splitlines()) == 1
    assert len((tmp_path / "windows.jsonl.1").read_text().splitlines()) == 2


def test_the_audit_file_may_be_a_pipe_to_a_log_shipper(tmp_path):
    import os

    fifo = tmp_path / "audit.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)  # the shipper, reading
    try:
        audit = AuditLog(fifo, "det-1", 1.0)
        audit.open()  # was UnsupportedOperation (seeking a pipe): the detector did not start
        audit.write({"records": 1}, [], [TP0])
        audit.close()
        assert json.loads(os.read(reader, 65536).decode())["records"] == 1
    finally:
        os.close(reader)


def test_without_a_path_the_audit_writes_nothing(tmp_path):
    audit = AuditLog(None, "det", 1.0)
    audit.open()
    assert not audit.is_open and audit.windows([object()]) == []
    audit.write({"records": 0}, [], [TP0])  # no file: nothing to do
    audit.close()
    assert list(tmp_path.iterdir()) == []


def test_a_restart_re_reads_a_warm_up_before_the_open_window_and_every_incident_in_it(
    cusw_models,
):
    """The horizon: 4 windows (the partial one and a warm-up of 3) before a vehicle's
    open window, or before its open incident, or before an incident that closed within
    those windows (quiet_windows 2: a restart re-forms it under its id instead of opening
    one anew from its last windows)."""
    from detector.core.brands import load_fleet
    from detector.core.config import IncidentConfig
    from detector.incidents.tracker import IncidentTracker, Observation
    from detector.model.pipeline import Scorer
    from detector.model.store import load_latest
    from detector.service.vehicle_state import VehicleState
    from replay.simulator import simulate_vehicle

    t0 = 1.7e9
    scorer = Scorer({"cusw": load_latest(cusw_models)["cusw"]}, load_fleet(), 1.0)
    frames = simulate_vehicle("cusw", 20.5, t0, seed=5)
    scorer.push([("veh", "jeep", frames)])
    assert scorer.closed_until("veh", "jeep") == t0 + 20
    tracker = IncidentTracker(IncidentConfig(quiet_windows=2), detector="d")
    # only the scorer and the tracker say where a vehicle's state begins
    state = VehicleState(scorer, tracker, None, None, None, None, window_s=1.0)
    assert state.horizon("veh", "jeep") == t0 + 16

    def seen(window: float) -> Observation:
        return Observation("veh", "jeep", t0 + window, 1.0, 3.0, "dos", {"0x000": 3.0}, [], 1)

    tracker.observe([seen(10), seen(11)], {"veh": t0 + 12})
    assert state.horizon("veh", "jeep") == t0 + 6  # open since window 10
    tracker.observe([], {"veh": t0 + 14})  # quiet for 2 windows: closed
    assert not tracker.open and state.horizon("veh", "jeep") == t0 + 16  # ended at 12 < 16
    tracker.observe([seen(16), seen(17)], {"veh": t0 + 18})
    tracker.observe([], {"veh": t0 + 20})  # closed, within what a restart re-reads
    assert not tracker.open and state.horizon("veh", "jeep") == t0 + 12
    tracker.forget({"veh"})
    assert state.horizon("veh", "jeep") == t0 + 16


def test_a_restart_reaches_back_past_a_telemetry_gap_for_a_warm_up(cusw_models):
    """A vehicle's uplink stops for 10 s, and a replay starts 0.5 s after it sends again.
    A restart while its incident is open must re-read windows with frames before the
    incident: 4 windows before it lie in the gap, so the horizon reaches back past the
    gap, and the re-read flags the same windows as the detector that never stopped (from
    the gap's end it warmed up on the replay and flagged nothing)."""
    import numpy as np

    from detector.core.brands import load_fleet
    from detector.core.config import IncidentConfig
    from detector.core.schema import concat_frames
    from detector.incidents.tracker import IncidentTracker, observations
    from detector.model.pipeline import Scorer, window_scores
    from detector.model.store import load_latest
    from detector.service.vehicle_state import VehicleState
    from replay.attacks import AttackSpec, inject
    from replay.simulator import simulate_vehicle

    t0, model, fleet = 1.7e9 + 10_000, load_latest(cusw_models)["cusw"], load_fleet()
    before = simulate_vehicle("cusw", 30.0, t0, seed=5, drive=0)
    after, _ = inject(simulate_vehicle("cusw", 30.0, t0 + 40, seed=5, drive=1),
                      AttackSpec("replay", 0.5, 25.0), seed=1)  # fmt: skip
    frames = concat_frames([before, after])

    def run(frames: np.ndarray, restart_at: float | None = None) -> tuple[list[int], float]:
        """Flagged windows (s from t0) of the frames pushed 0.5 s at a time, and the
        horizon a restart at ``restart_at`` would re-read from."""
        scorer = Scorer({"cusw": model}, fleet, 1.0)
        tracker = IncidentTracker(IncidentConfig(), "d")
        state = VehicleState(scorer, tracker, None, None, None, None, window_s=1.0)
        flagged, horizon = [], math.inf
        for lo in np.arange(np.floor(frames["ts"][0]), frames["ts"][-1] + 1.0, 0.5):
            batch = frames[(frames["ts"] >= lo) & (frames["ts"] < lo + 0.5)]
            for sc in scorer.push([("veh", "jeep", batch)]) if len(batch) else []:
                _, w, x = window_scores(sc)
                flagged += [int(wi - t0) for wi in w[x >= 1.0]]
                if len(w):
                    tracker.observe(observations(sc, 1.0), {"veh": float(w.max() + 1)})
            if restart_at is not None and lo >= restart_at and horizon == math.inf:
                horizon = state.horizon("veh", "jeep")
        return flagged, horizon

    flagged, horizon = run(frames, restart_at=t0 + 48)
    assert flagged and flagged[0] in (41, 42), flagged
    assert horizon <= before["ts"][-1] - 3.0  # warm-up windows with frames, before the gap
    again, _ = run(frames[frames["ts"] >= horizon])
    assert again == flagged


def test_a_send_the_producer_gave_up_on_is_no_acknowledgement():
    """Done is not acknowledged: kafka-python's IO thread may fail a send between the
    loop's look for failures and its look for acknowledgements (then the poll was
    committed over a lost dead letter or incident)."""
    from kafka.errors import KafkaTimeoutError
    from kafka.future import Future

    from detector.service.outbox import Delivery

    taken, given_up = Future(), Future()
    taken.success(None)
    delivery = Delivery([taken, given_up], 0.0, 0.0, {})
    assert not delivery.acknowledged()
    given_up.failure(KafkaTimeoutError("delivery timed out"))
    assert given_up.is_done and not delivery.acknowledged()
    assert Delivery([taken], 0.0, 0.0, {}).acknowledged()


def test_a_parked_vehicle_raises_nothing_and_an_attack_up_to_its_stop_still_shows(cusw_models):
    """A vehicle that stops inside a window (parked, ignition off) is retired after its
    idle time, its open window closed then: that window's silences and low rates are the
    stop's, not the bus's (it scored 40x the threshold, a critical suspension, for every
    parked vehicle), while what its frames show still counts."""
    from detector.core.brands import load_fleet
    from detector.model.pipeline import Scorer, window_scores
    from detector.model.store import load_latest
    from replay.attacks import AttackSpec, inject
    from replay.simulator import simulate_vehicle

    t0 = 1.7e9
    model = load_latest(cusw_models)["cusw"]
    for seed, stop in ((41, 10.3), (42, 10.5), (43, 10.9)):
        frames = simulate_vehicle("cusw", 20.0, t0, seed=seed)
        scorer = Scorer({"cusw": model}, load_fleet(), 1.0)
        scorer.push([("parked", "jeep", frames[frames["ts"] < t0 + stop])])
        retired = scorer.retire({"parked"})
        _, window, score = window_scores(retired[0])
        assert window.tolist() == [t0 + 10] and score.max() < 1.0, (stop, score)
    # a flood of an id never seen, up to the stop: the last window still alerts
    frames = simulate_vehicle("cusw", 20.0, t0, seed=44)
    frames, _ = inject(frames, AttackSpec.parse("dos:start=8,duration=12"), seed=1)
    scorer = Scorer({"cusw": model}, load_fleet(), 1.0)
    scorer.push([("parked", "jeep", frames[frames["ts"] < t0 + 10.3])])
    _, window, score = window_scores(scorer.retire({"parked"})[0])
    assert window.tolist() == [t0 + 10] and score.max() >= 1.0
