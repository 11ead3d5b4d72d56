"""Incident tracker on hand-made observations, and the suspected-attack classifier."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from detector.core.brands import load_fleet
from detector.core.config import DetectionConfig, IncidentConfig
from detector.core.schema import make_frames
from detector.evaluation.evaluate import score_frames
from detector.features.columns import FEATURE_NAMES, N_FEATURES, F, Rows
from detector.incidents.evidence import classify_window, describe, evidence
from detector.incidents.tracker import (
    IncidentTracker,
    Observation,
    incident_id,
    observations,
    severity_of,
)
from detector.model.pipeline import ScoredRows
from detector.model.platform import N_EVIDENCE
from detector.model.training import train_platform

QUIET = 3
DESIGN_FIELDS = {
    "incident_id",
    "status",
    "vehicle",
    "brand",
    "first_seen",
    "last_seen",
    "windows",
    "peak_score",
    "severity",
    "suspected_attack",
    "can_ids",
    "evidence",
    "model_version",
    "detector",
}
ATTACKS = {"dos", "fuzzing", "spoofing", "masquerade", "suspension", "replay", "unknown"}


def obs(
    window: int,
    score: float,
    kind: str = "spoofing",
    vehicle: str = "veh-jeep-0001",
    can_ids: dict[str, float] | None = None,
    evidence: list[dict] | None = None,
) -> Observation:
    return Observation(
        vehicle=vehicle,
        brand="jeep",
        window_start=float(window),
        window_s=1.0,
        score=score,
        kind=kind,
        can_ids=can_ids if can_ids is not None else {"0x1E4": score},
        evidence=evidence
        if evidence is not None
        else [
            {
                "can_id": "0x1E4",
                "feature": "rate",
                "observed": 4.0,
                "excess": 6.0,
                "text": "0x1E4: 400 frames in the 1 s window (4.0× its learned rate)",
            }
        ],
        model_version=3,
    )


def line(can_id: str, feature: str, excess: float) -> dict:
    return {"can_id": can_id, "feature": feature, "observed": 1.0, "excess": excess,
            "text": f"{can_id}: {feature}"}  # fmt: skip


def tracker() -> IncidentTracker:
    return IncidentTracker(IncidentConfig(quiet_windows=QUIET), detector="det-a")


def run_windows(t: IncidentTracker, observed: dict[int, Observation], last: int) -> list[dict]:
    """Feed windows 0..last one at a time, as a streaming detector would."""
    events = []
    for w in range(last + 1):
        o = observed.get(w)
        events += t.observe([o] if o else [], {"veh-jeep-0001": w + 1.0})
    return events


def test_consecutive_windows_make_one_incident() -> None:
    observed = {10: obs(10, 1.5), 11: obs(11, 3.0), 12: obs(12, 6.0), 13: obs(13, 2.0)}
    events = run_windows(tracker(), observed, 20)
    statuses = [e["status"] for e in events]
    assert statuses[0] == "open" and statuses.count("open") == 1
    assert statuses.count("closed") == 1 and statuses[-1] == "closed"
    assert "update" in statuses
    assert len({e["incident_id"] for e in events}) == 1
    closed = events[-1]
    assert closed["windows"] == 4
    assert closed["first_seen"] == 10.0 and closed["last_seen"] == 14.0
    assert closed["peak_score"] == 6.0 and closed["severity"] == "high"
    assert closed["suspected_attack"] == "spoofing"


def test_close_happens_exactly_after_quiet_windows() -> None:
    t = tracker()
    assert [e["status"] for e in t.observe([obs(10, 2.0)], {"veh-jeep-0001": 11.0})] == ["open"]
    # clock = end of the newest scored window; last_seen = 11.0
    for now in (12.0, 13.0):
        assert t.observe([], {"veh-jeep-0001": now}) == []
    (closed,) = t.observe([], {"veh-jeep-0001": 11.0 + QUIET})
    assert closed["status"] == "closed" and closed["windows"] == 1
    assert t.observe([], {"veh-jeep-0001": 20.0}) == []


def test_gap_longer_than_quiet_makes_two_incidents() -> None:
    events = tracker().observe([obs(10, 2.0), obs(11, 2.0), obs(20, 8.0)], {})
    assert [e["status"] for e in events] == ["open", "update", "closed", "open"]
    first, second = events[2], events[3]
    assert first["incident_id"] != second["incident_id"]
    assert first["windows"] == 2 and second["windows"] == 1
    assert second["first_seen"] == 20.0


def test_gap_shorter_than_quiet_stays_one_incident() -> None:
    events = tracker().observe([obs(10, 2.0), obs(12, 2.0), obs(14, 2.0)], {})
    assert len({e["incident_id"] for e in events}) == 1
    assert all(e["status"] != "closed" for e in events)


def test_vehicles_are_tracked_separately() -> None:
    t = tracker()
    events = t.observe([obs(10, 2.0, vehicle="a"), obs(10, 2.0, vehicle="b")], {})
    assert [e["vehicle"] for e in events] == ["a", "b"]
    assert events[0]["incident_id"] != events[1]["incident_id"]
    closed = t.observe([], {"a": 11.0 + QUIET})
    assert [(e["vehicle"], e["status"]) for e in closed] == [("a", "closed")]
    assert [e["vehicle"] for e in t.close_all()] == ["b"]


def test_ids_are_deterministic() -> None:
    observed = {10: obs(10, 1.5), 11: obs(11, 3.0), 30: obs(30, 12.0, "dos")}
    first = run_windows(tracker(), observed, 40)
    second = run_windows(tracker(), observed, 40)
    assert first == second
    ids = [e["incident_id"] for e in first]
    assert len(set(ids)) == 2
    assert ids[0] == incident_id("veh-jeep-0001", 10.0)
    assert incident_id("veh-jeep-0001", 10.0) != incident_id("veh-jeep-0002", 10.0)


@pytest.mark.parametrize(
    ("peak", "severity"),
    [
        (1.0, "low"),
        (1.99, "low"),
        (2.0, "medium"),
        (4.99, "medium"),
        (5.0, "high"),
        (9.99, "high"),
        (10.0, "critical"),
        (1e6, "critical"),
    ],
)
def test_severity_mapping(peak: float, severity: str) -> None:
    assert severity_of(peak) == severity


def test_severity_follows_the_peak_and_is_announced() -> None:
    events = tracker().observe([obs(10, 1.2), obs(11, 2.5), obs(12, 11.0), obs(13, 1.1)], {})
    assert [e["severity"] for e in events][:3] == ["low", "medium", "critical"]
    assert events[-1]["severity"] == "critical" and events[-1]["peak_score"] == 11.0


def test_suspected_attack_is_the_score_weighted_majority() -> None:
    events = tracker().observe(
        [obs(10, 1.1, "masquerade"), obs(11, 1.1, "masquerade"), obs(12, 9.0, "spoofing")], {}
    )
    assert events[-1]["suspected_attack"] == "spoofing"


def test_a_second_attack_joining_an_open_incident_shows_in_its_evidence() -> None:
    """A flood of 0x1E4 is under way when 0x2C6 starts being replayed: one incident (the
    windows are contiguous), whose evidence keeps the flood's peak lines and adds the
    replay's strongest line right after the first, announced by an update even though
    the ids and the majority attack did not change; ``attacks`` counts each one's windows."""
    flood = [line("0x1E4", "rate", 40.0), line("0x1E4", "dt_min", 9.0),
             line("0x1E4", "dt_mean", 8.0), line("0x1E4", "dt_cv", 7.0),
             line("0x1E4", "forest", 6.0)]  # fmt: skip
    ids = {"0x1E4": 9.0, "0x2C6": 3.0}
    observed = {w: obs(w, 9.0, "dos", can_ids=ids, evidence=flood) for w in range(10, 14)}
    observed[14] = obs(14, 2.0, "replay", can_ids=ids, evidence=[line("0x2C6", "counter_err", 2.5)])
    replayed = [line("0x2C6", "counter_err", 3.5), line("0x2C6", "rate", 3.0)]
    observed[15] = obs(15, 3.0, "replay", can_ids=ids, evidence=replayed)
    events = run_windows(tracker(), observed, 25)
    assert len({e["incident_id"] for e in events}) == 1
    joined = next(e for e in events if e["attacks"].get("replay"))
    assert joined["status"] == "update" and joined["windows"] == 5
    assert joined["suspected_attack"] == "dos" and joined["attacks"] == {"dos": 4, "replay": 1}
    assert [e["text"] for e in joined["evidence"]] == [
        "0x1E4: rate", "0x2C6: counter_err", "0x1E4: dt_min", "0x1E4: dt_mean", "0x1E4: dt_cv"
    ]  # max_evidence (5): the flood's last line gives way
    closed = events[-1]
    assert closed["status"] == "closed" and closed["attacks"] == {"dos": 4, "replay": 2}
    assert closed["evidence"][1] == line("0x2C6", "counter_err", 3.5)  # its strongest window's


def test_each_attack_of_an_incident_names_the_top_id_of_its_strongest_window() -> None:
    """``attack_ids``: what campaigns key a second attack on (its id, not the flood's)."""
    flood = {w: obs(w, 9.0, "dos", can_ids={"0x1E4": 9.0}) for w in range(10, 13)}
    replay = {13: obs(13, 2.0, "replay", can_ids={"0x2C6": 2.0, "0x1E4": 1.5}),
              14: obs(14, 3.0, "replay", can_ids={"0x3A0": 3.0, "0x2C6": 2.5})}  # fmt: skip
    closed = run_windows(tracker(), flood | replay, 25)[-1]
    assert closed["attacks"] == {"dos": 3, "replay": 2}
    assert closed["attack_ids"] == {"dos": "0x1E4", "replay": "0x3A0"}


def test_an_incident_of_one_attack_keeps_its_peak_windows_evidence() -> None:
    peak = [line("0x1E4", "rate", 6.0), line("0x1E4", "dt_min", 3.0)]
    observed = {10: obs(10, 2.0), 11: obs(11, 6.0, evidence=peak), 12: obs(12, 3.0)}
    closed = run_windows(tracker(), observed, 20)[-1]
    assert closed["evidence"] == peak and closed["attacks"] == {"spoofing": 3}


def test_events_carry_every_design_field() -> None:
    t = tracker()
    events = t.observe(
        [
            obs(10, 2.0, can_ids={"0x1E4": 2.0, "0x2EC": 1.3}),
            obs(11, 4.0, can_ids={"0x1E4": 4.0}),
        ],
        {},
    )
    events += t.close_all()
    assert {e["status"] for e in events} == {"open", "update", "closed"}
    for e in events:
        assert set(e) >= DESIGN_FIELDS, DESIGN_FIELDS - set(e)
        assert e["status"] in {"open", "update", "closed"}
        assert e["severity"] in {"low", "medium", "high", "critical"}
        assert e["suspected_attack"] in ATTACKS
        assert e["detector"] == "det-a" and e["model_version"] == 3 and e["brand"] == "jeep"
        assert all(set(c) == {"can_id", "score"} for c in e["can_ids"])
        assert all({"feature", "observed", "text"} <= set(ev) for ev in e["evidence"])
        json.dumps(e)  # goes on a Kafka topic as JSON
    closed = events[-1]
    assert [c["can_id"] for c in closed["can_ids"]] == ["0x1E4", "0x2EC"]
    assert closed["can_ids"][0]["score"] == 4.0


def test_events_list_each_windows_score_up_to_a_cap(monkeypatch) -> None:
    observed = {w: obs(w, 1.0 + w / 10) for w in range(10, 14)}
    closed = run_windows(tracker(), observed, 20)[-1]
    assert closed["window_scores"] == [[10.0, 2.0], [11.0, 2.1], [12.0, 2.2], [13.0, 2.3]]
    assert closed["provenance"] is None  # the tracker does not know where frames are
    monkeypatch.setattr("detector.incidents.tracker.MAX_WINDOW_SCORES", 2)
    closed = run_windows(tracker(), observed, 20)[-1]
    assert closed["windows"] == 4 and closed["window_scores"] == [[10.0, 2.0], [11.0, 2.1]]


def test_can_ids_are_capped() -> None:
    t = IncidentTracker(IncidentConfig(quiet_windows=QUIET, max_can_ids=2), detector="d")
    many = {f"0x{i:03X}": float(i) for i in range(1, 6)}
    (event,) = t.observe([obs(10, 5.0, can_ids=many)], {})
    assert [c["can_id"] for c in event["can_ids"]] == ["0x005", "0x004"]


# --- observations() and the classifier on hand-made scored rows ----------


def scored(
    X: np.ndarray, excess: np.ndarray, scores: list[float], count: list[int], can_id: list[int]
) -> ScoredRows:
    n = len(scores)
    rows = Rows(
        np.zeros(n, np.int64),
        np.full(n, 5, np.int64),
        np.asarray(can_id, np.uint32),
        np.asarray(count, np.int64),
        np.zeros(n, np.int8),
        X,
    )
    return ScoredRows(
        "cusw", 3, rows, np.asarray(scores, float), excess, ["veh"], ["jeep"], np.full(n, 0.01)
    )


def one_row(features: dict[str, tuple[float, float]], count: int = 100) -> ScoredRows:
    """One row at normal values but for ``features``: name -> (observed, excess)."""
    X = np.zeros((1, N_FEATURES))
    X[0, [F["rate"], F["dt_min"], F["dt_mean"]]] = 1.0
    ex = np.zeros((1, N_FEATURES))
    for name, (x, e) in features.items():
        X[0, F[name]], ex[0, F[name]] = x, e
    return scored(X, ex, [3.0], [count], [0x1E4])


@pytest.mark.parametrize(
    ("features", "count", "kind"),
    [
        ({"rate": (2.0, 2.0), "out_of_range": (0.5, 5.0)}, 200, "spoofing"),
        ({"rate": (2.0, 2.0), "counter_err": (0.5, 5.0)}, 200, "replay"),
        ({"rate": (30.0, 50.0)}, 3000, "dos"),
        ({"out_of_range": (1.0, 10.0)}, 100, "masquerade"),
        ({"counter_err": (0.3, 3.0)}, 100, "replay"),
        # a genuine frame re-sent keeps its checksum and its own signals' agreement
        ({"rate": (2.0, 2.0), "counter_err": (0.5, 5.0), "checksum_err": (0.5, 5.0)}, 200,
         "spoofing"),
        ({"counter_err": (0.3, 3.0), "coupling_out": (0.3, 3.0)}, 100, "masquerade"),
        ({"silence": (50.0, 10.0), "rate": (0.0, 2.0)}, 0, "suspension"),
        ({"novel_id": (1.0, 10.0)}, 5, "fuzzing"),
    ],
)
def test_classify_window(features: dict, count: int, kind: str) -> None:
    sc = one_row(features, count)
    assert classify_window(sc, np.array([0])) == kind


def test_observations_pick_anomalous_windows_with_their_ids() -> None:
    X = np.zeros((3, N_FEATURES))
    X[:, F["rate"]] = [4.0, 1.0, 1.0]
    ex = np.zeros((3, N_FEATURES))
    ex[0, F["rate"]] = 6.0
    sc = scored(X, ex, [5.0, 0.4, 0.2], [400, 100, 50], [0x1E4, 0x2EC, 0x3A0])
    (o,) = observations(sc, 1.0)
    assert o.vehicle == "veh" and o.window_start == 5.0 and o.score == 5.0
    assert o.kind == "spoofing" and o.can_ids == {"0x1E4": 5.0}
    assert o.evidence and o.evidence[0]["feature"] == "rate"
    assert "0x1E4" in o.evidence[0]["text"]
    assert FEATURE_NAMES[F["rate"]] == "rate"
    sc.scores[:] = 0.5
    assert observations(sc, 1.0) == []


def test_one_note_names_every_coupling_a_forged_id_broke() -> None:
    """0x1E4's forged speed breaks its line with 0x1F0 (seen from both rows), 0x2E4 and
    0x2E6; 0x300 and 0x310 break one of their own. The first is one note naming the
    others; the second stays a note of its own; other evidence is not crowded out."""
    ids = [0x1E4, 0x1F0, 0x2E4, 0x2E6, 0x300, 0x310]
    partner = [0x1F0, 0x1E4, 0x1E4, 0x1E4, 0x310, 0x300]
    n = len(ids)
    X = np.zeros((n, N_FEATURES))
    X[:, [F["rate"], F["dt_min"], F["dt_mean"]]] = 1.0
    X[:, F["cross_out"]] = 1.0
    ex = np.zeros((n, N_EVIDENCE))
    ex[:, F["cross_out"]] = [9.0, 8.0, 7.0, 6.0, 5.0, 4.5]
    ex[0, F["counter_err"]] = 3.0
    sc = scored(X, ex, [9.0, 8.0, 7.0, 6.0, 5.0, 4.5], [100] * n, ids)
    sc.rows.signal = np.full(n, 900.0)
    sc.rows.cross = np.array([[p, 2.0, 4.0, 800.0, 20.0] for p in partner])
    notes = evidence(sc, np.arange(n), 1.0)
    crossing = [e["text"] for e in notes if e["feature"] == "cross_out"]
    assert len(crossing) == 2, crossing
    assert crossing[0].startswith("0x1E4 bytes 2-3 and 0x1F0 bytes 4-5 disagree")
    assert crossing[0].endswith("; 0x1E4 also left its line with 0x2E4, 0x2E6")
    assert crossing[1].startswith("0x300 bytes 2-3 and 0x310") and "also" not in crossing[1]
    assert [e["feature"] for e in notes] == ["cross_out", "cross_out", "counter_err"]
    # no model to say where the counter sits: the note says what it can
    assert notes[2]["text"] == "0x1E4: message counter out of sequence in 0% of frames"


def speeds(seed: int, t0: float, forged: tuple[float, float] | None = None) -> np.ndarray:
    """60 s of an id 0x100 whose bytes 0-1 and 2-3 carry two readings of one speed
    (little-endian), beside a slow 0x200; ``forged``: from when to when the second
    reads 9000 whatever the first says."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, 60, 0.01)
    speed = (3000 + 2500 * np.sin(t / 7 + seed) + rng.normal(0, 3, len(t))).astype(np.int64)
    second = speed + rng.integers(-20, 21, len(t))
    if forged is not None:
        second[(t >= forged[0]) & (t < forged[1])] = 9000
    data = np.zeros((len(t), 8), np.uint8)
    for at, value in ((0, speed), (2, second)):
        data[:, at + 1], data[:, at] = value >> 8, value & 0xFF
    data[:, 7] = np.arange(len(t)) % 256
    slow_t = np.arange(0, 60, 0.1)
    slow = make_frames(t0 + slow_t + 0.003, np.full(len(slow_t), 0x200),
                       np.tile(np.arange(8, dtype=np.uint8), (len(slow_t), 1)))  # fmt: skip
    frames = np.concatenate([make_frames(t0 + t, np.full(len(t), 0x100), data), slow])
    return frames[np.argsort(frames["ts"], kind="stable")]


def test_a_broken_coupling_is_named_with_its_signals_and_bounds() -> None:
    """Trained on three drives where 0x100's two speeds agree, a drive whose second
    speed is forged for 5 s: the incident says which two words disagreed, and which
    two bytes (the speeds' high bytes), by how much, and how far apart they stayed in
    training."""
    cfg = DetectionConfig()
    drives = [speeds(seed, 1.7e9 + 1000 * seed) for seed in (1, 2, 3)]
    model, _ = train_platform("coupled", drives, cfg)
    forged = speeds(4, 1.7e9 + 5000, forged=(30, 35))
    ev = score_frames(forged, "coupled", "v", model, load_fleet(), cfg.window_s, IncidentConfig())
    (incident,) = ev.incidents
    (note,) = [e["text"] for e in incident["evidence"] if e["feature"] == "coupling_out"]
    named = re.search(r"; bytes 0-1 minus bytes 2-3 was ([+-]\d+) \(learned ([+-]\d+) to "
                      r"([+-]\d+), or within [\d.]+% of the larger\)$", note)  # fmt: skip
    assert named, note
    diff, lo, hi = (int(g) for g in named.groups())
    assert diff < lo - 1000 and -100 < lo < 0 < hi < 100
    (pair,) = [e["text"] for e in incident["evidence"] if e["feature"] == "pair_out"]
    named = re.search(r"; byte 1 minus byte 3 was ([+-]\d+) \(learned ([+-]\d+) to ([+-]\d+)\)$",
                      pair)  # fmt: skip
    assert named, pair
    diff, lo, hi = (int(g) for g in named.groups())
    assert not lo <= diff <= hi


def test_fewer_bit_flips_than_learned_read_below() -> None:
    """A payload that flips fewer bits than learned (a frozen, forged one) is "below"."""
    assert describe(one_row({"hamming_z": (-1.5, 2.0)}), 0, "hamming_z", 1.0) == (
        "0x1E4: payload bit flips 1.5 σ below learned"
    )
    assert describe(one_row({"hamming_z": (3.0, 2.0)}), 0, "hamming_z", 1.0).endswith(
        "3.0 σ above learned"
    )
