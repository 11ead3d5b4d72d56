"""Calibration on drives held out of training, and the vehicle's own reference.

Tiny hand-built drives where the answer is obvious: a state byte that differs per
drive, a twin recording, an attacked stream, warm-up. The simulator-wide figures
are tests/test_detection_quality.py's.
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.brands import load_fleet
from detector.core.config import DetectionConfig
from detector.core.schema import LABEL_CODE, make_frames
from detector.features.columns import N_FEATURES, F
from detector.model.pipeline import Scorer
from detector.model.platform import (
    ENVELOPE_FLOOR,
    EVIDENCE_NAMES,
    N_EVIDENCE,
    cross_drive_scale,
    envelope_excess,
    envelope_floor,
    fit_envelope,
)
from detector.model.reference import REF_STEPS, WARMUP_FACTOR, WARMUP_WINDOWS, StreamReference
from detector.model.training import (
    DRIVE_VARYING,
    Recording,
    drive_groups,
    stream_window_keys,
    train_platform,
)

CFG = DetectionConfig()
FAST, STATE = 0x100, 0x200
T0 = 1000.0


def drive(t0: float, seconds: float, state: int, seed: int, state_from: float = 0.0) -> np.ndarray:
    """0x100 every 10 ms (a counter and a noisy signal), 0x200 every 20 ms whose byte 0
    is a setting of the drive: 0x10 before ``state_from`` s, ``state`` after."""
    rng = np.random.default_rng(seed)
    k = np.arange(int(seconds / 0.01))
    fast = np.zeros((len(k), 8), np.uint8)
    fast[:, 0] = k % 256
    fast[:, 1] = 100 + rng.integers(-20, 21, len(k))
    j = np.arange(int(seconds / 0.02))
    slow = np.zeros((len(j), 8), np.uint8)
    slow[:, 0] = np.where(j * 0.02 < state_from, 0x10, state)
    slow[:, 1] = 7
    frames = np.concatenate(
        [
            make_frames(t0 + 0.005 + k * 0.01, np.full(len(k), FAST), fast),
            make_frames(t0 + 0.013 + j * 0.02, np.full(len(j), STATE), slow),
        ]
    )
    return frames[np.argsort(frames["ts"], kind="stable")]


def window_scores(model, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window age from the vehicle's first window, highest score) per scored window."""
    sc = Scorer({"pad": model}, load_fleet(), CFG.window_s).push([("v", "pad", frames)])[0]
    w = sc.rows.window
    ages = np.unique(w)
    best = np.full(len(ages), -np.inf)
    np.maximum.at(best, np.searchsorted(ages, w), sc.scores)
    return ages - np.floor(frames["ts"][0]), best


@pytest.fixture(scope="module")
def model():
    # four drives, all with 0x200's byte 0 at 0x10: to the platform it never moves
    recordings = [drive(T0 + 100 * i, 30.0, 0x10, seed=i) for i in range(4)]
    m, summary = train_platform("pad", recordings, CFG)
    assert summary["drives"] == 4 and summary["calibration"] == "leave-one-drive-out"
    return m


def test_a_twin_recording_is_the_same_drive() -> None:
    a = drive(T0, 20.0, 0x20, seed=1)
    twin = a.copy()
    hit = np.flatnonzero(twin["can_id"] == FAST)[500:700]
    twin["data"][hit, 1] = 0xEE  # an edited copy: a masquerade on part of the trace
    twin["label"][hit] = LABEL_CODE["masquerade"]
    other = drive(T0, 20.0, 0x20, seed=2)
    assert drive_groups([a, twin, other]) == [0, 0, 1]


def test_an_attack_leaves_out_only_the_streams_it_touched() -> None:
    frames = drive(T0, 12.0, 0x20, seed=3)
    extra = make_frames(T0 + 5.2 + np.arange(10) * 0.003, np.full(10, STATE), np.zeros((10, 8)))
    extra["label"] = LABEL_CODE["spoofing"]
    frames = np.concatenate([frames, extra])
    rec = Recording.of(frames, drive=0, index=0, window_s=1.0)
    assert (rec.frames["label"] == 0).all() and len(rec.frames) == len(frames) - 10
    # the attacked stream's window and the next one; every other stream stays
    assert rec.dirty.tolist() == stream_window_keys(np.full(2, STATE), [1005, 1006]).tolist()
    from detector.features.baseline import learn_baseline
    from detector.features.windowing import WindowState

    bl = learn_baseline(rec.frames, np.zeros(len(rec.frames), np.int64), 1.0)
    rows = WindowState(1.0).push(rec.frames, np.zeros(len(rec.frames), np.int64), bl)
    dropped = rows.take(np.flatnonzero(~rec.clean(rows)))
    assert sorted(zip(dropped.can_id.tolist(), dropped.window.tolist(), strict=True)) == [
        (STATE, 1005),
        (STATE, 1006),
    ]
    runs = rec.segment_runs()
    slow = rec.frames["can_id"] == STATE
    assert set(runs[slow & (rec.frames["ts"] < T0 + 5)].tolist()) == {0}
    assert set(runs[slow & (rec.frames["ts"] >= T0 + 7)].tolist()) == {2}
    assert not runs[~slow].any()


def test_an_attack_in_a_training_capture_leaves_its_ids_expected() -> None:
    """Captures with an attack in them (the ROAD ones) train too. The attacked stream's
    frames after the attack are a segment of their own, but the vehicle's windows are
    the recording's: every id is still expected there (with them counted alone, no id
    was, so a ROAD model saw no suspension and no telemetry gap), and a silenced ECU of a
    new drive is an alert."""
    recordings = []
    for i in range(4):
        t0 = T0 + 100 * i
        frames = drive(t0, 30.0, 0x10, seed=i)
        if i < 2:
            spoof = make_frames(t0 + 5.2 + np.arange(10) * 0.003, np.full(10, STATE), np.zeros((10, 8)))
            spoof["label"] = LABEL_CODE["spoofing"]
            frames = np.concatenate([frames, spoof])
        recordings.append(frames[np.argsort(frames["ts"], kind="stable")])
    m, _ = train_platform("pad", recordings, CFG)
    assert m.baseline.expected.tolist() == [True, True]
    frames = drive(T0 + 1000, 20.0, 0x10, seed=9)
    t = frames["ts"] - (T0 + 1000)
    silenced = frames[~((frames["can_id"] == FAST) & (t >= 8.0) & (t < 11.0))]
    ages, best = window_scores(m, silenced)
    assert (best[(ages >= 8) & (ages <= 10)] >= 1.0).all() and (best[ages <= 6] < 1.0).all()


def test_a_setting_of_the_drive_is_not_an_attack(model) -> None:
    """A value no training drive had, there from the vehicle's first window: its state."""
    ages, best = window_scores(model, drive(T0 + 1000, 20.0, 0x50, seed=9, state_from=0.0))
    assert best.max() < 1.0, best


def test_the_same_value_appearing_mid_stream_is_an_alert(model) -> None:
    """Warm-up saw 0x10 for 0x200; moving to a value no drive had, later, is a change."""
    frames = drive(T0 + 2000, 20.0, 0x50, seed=9, state_from=10.0)
    ages, best = window_scores(model, frames)
    assert (best[(ages > WARMUP_WINDOWS) & (ages < 10)] < 1.0).all(), best
    assert (best[ages >= 11] >= 1.0).all(), best


def test_a_mid_stream_masquerade_is_not_absorbed_by_the_reference(model) -> None:
    """Frames whose counter stops stepping after warm-up stay anomalous for as long."""
    frames = drive(T0 + 3000, 20.0, 0x10, seed=5)
    fast = np.flatnonzero((frames["can_id"] == FAST) & (frames["ts"] >= T0 + 3010))
    frames["data"][fast, 0] = 0x42  # a frozen counter
    ages, best = window_scores(model, frames)
    assert (best[ages >= 11] >= 1.0).all(), best
    assert (best[(ages > WARMUP_WINDOWS) & (ages < 10)] < 1.0).all(), best


def test_warm_up_teaches_the_reference_and_later_windows_lose_it() -> None:
    ref = StreamReference(n_ids=2)
    cal = np.zeros((3, N_EVIDENCE))
    col = EVIDENCE_NAMES.index("out_of_range")
    cal[:, col] = 2.0
    vehicle, slot, known = np.zeros(3, np.int64), np.zeros(3, np.int64), np.ones(3, bool)
    eff, factor = ref.apply(vehicle, slot, known, np.array([1, 2, 9]), cal, threshold=1.25)
    assert factor.tolist() == [WARMUP_FACTOR, WARMUP_FACTOR, 1.0]
    assert eff[2, col] == 0.0  # window 9: all of it was there in warm-up
    assert ref.table[0, 0, col] == np.ceil(2.0 * REF_STEPS)
    eff, _ = ref.apply(vehicle[:1], slot[:1], known[:1], np.array([12]), cal[:1] * 3, 1.25)
    np.testing.assert_allclose(eff[0, col], 4.0)  # what exceeds the reference
    ref.forget(np.array([0]))
    assert not ref.table.any()


def test_warm_up_absorbs_a_flood_only_up_to_the_gross_level() -> None:
    ref = StreamReference(n_ids=1)
    cal = np.zeros((1, N_EVIDENCE))
    rate = EVIDENCE_NAMES.index("rate")
    cal[0, rate] = 40.0  # a flood running when the stream began
    args = np.zeros(1, np.int64), np.zeros(1, np.int64), np.ones(1, bool)
    ref.apply(*args, np.array([1]), cal, threshold=1.25)
    eff, _ = ref.apply(*args, np.array([8]), cal, threshold=1.25)
    np.testing.assert_allclose(eff[0, rate], 40.0 - WARMUP_FACTOR * 1.25)


def test_cross_drive_scale_shares_the_budget_and_bounds_shares() -> None:
    rng = np.random.default_rng(0)
    maxima = rng.uniform(0.0, 0.5, (1000, N_EVIDENCE))
    rate, oor = EVIDENCE_NAMES.index("rate"), EVIDENCE_NAMES.index("out_of_range")
    maxima[0, rate] = 3.0  # one held-out window went to 3: with 23 columns sharing
    maxima[:10, oor] = 8.0  # 0.2 %, the scale is its maximum; a share near its bound
    scale = cross_drive_scale(maxima, target_fpr=0.002)
    assert scale[rate] == 3.0
    assert scale[oor] == 10.0  # 1 / floor: alone it never alerts
    assert scale[EVIDENCE_NAMES.index("checksum_err")] == 1.0  # at least one width


def test_a_single_drive_is_halved_in_time_and_a_short_one_refused() -> None:
    m, summary = train_platform("pad", [drive(T0, 40.0, 0x20, seed=1)], CFG)
    assert summary["calibration"] == "single drive, halves in time"
    assert len(summary["calibration_folds"]) == 2
    # halves of one drive cannot show how payloads differ between drives: those
    # columns are held at their bound (alone they never alert)
    for name in DRIVE_VARYING:
        col = EVIDENCE_NAMES.index(name)
        assert m.evidence_scale[col] == 1.0 / ENVELOPE_FLOOR[name], name
    two, _ = train_platform("pad", [drive(T0 + 100 * i, 20.0, 0x20, seed=i) for i in (1, 2)], CFG)
    assert two.evidence_scale[EVIDENCE_NAMES.index("pair_out")] == 1.0
    with pytest.raises(ValueError, match="too short to hold half of it out"):
        train_platform("pad", [drive(T0, 8.0, 0x20, seed=1)], CFG)


SLOW = 0x300


def slow_drive(t0: float, seconds: float, seed: int, hold: tuple[float, float] = (0, 0)):
    """``drive`` plus 0x300 every 0.45 s (2 frames a window, 3 in every fourth or fifth):
    a counter in byte 0 and a smooth signal in byte 2 that moves every frame, held
    still in [hold)."""
    j = np.arange(int(seconds / 0.45))
    t = t0 + 0.2 + j * 0.45
    data = np.zeros((len(j), 8), np.uint8)
    data[:, 0] = j % 16
    signal = (40 + 3 * j + seed * 7) % 256
    held = (t >= t0 + hold[0]) & (t < t0 + hold[1])
    if held.any():
        signal[held] = signal[np.flatnonzero(held)[0]]
    data[:, 2] = signal
    frames = np.concatenate(
        [drive(t0, seconds, 0x10, seed), make_frames(t, np.full(len(j), SLOW), data)]
    )
    return frames[np.argsort(frames["ts"], kind="stable")]


def test_a_slow_id_s_signal_holding_still_a_window_is_no_alert_a_busy_one_s_is() -> None:
    """A byte's change rate over a slow id's two or three frames is a share of a few
    pairs: a smooth signal holding still for them (a plateau) is a transition, no
    attack, as a frame share of one frame is (MIN_BAD_FRAMES). The busy id's noisy
    byte frozen for whole windows still alerts on the same model."""
    m, _ = train_platform("pad", [slow_drive(T0 + 100 * i, 30.0, seed=i) for i in range(4)], CFG)
    # held from the frame before a 3-frame window (11.0, 11.45, 11.9 s) to its end: 3
    # pairs, none changed, where the byte changed in every training pair (was 2.7)
    plateau = slow_drive(T0 + 5000, 20.0, seed=7, hold=(10.5, 12.0))
    ages, best = window_scores(m, plateau)
    assert (best[ages > WARMUP_WINDOWS] < 1.0).all(), best
    frozen = slow_drive(T0 + 6000, 20.0, seed=7)
    fast = np.flatnonzero((frozen["can_id"] == FAST) & (frozen["ts"] >= T0 + 6012))
    frozen["data"][fast, 1] = 0x55
    ages, best = window_scores(m, frozen)
    assert (best[ages >= 13] >= 1.0).all() and (
        best[(ages > WARMUP_WINDOWS) & (ages < 12)] < 1.0
    ).all(), best
    # the evidence names the byte, how often it changed with the others, and training's rate
    from detector.incidents.evidence import describe

    sc = Scorer({"pad": m}, load_fleet(), CFG.window_s).push([("v", "pad", frozen)])[0]
    late = np.flatnonzero((sc.rows.can_id == FAST) & (sc.rows.window >= T0 + 6013))
    text = describe(sc, int(late[0]), "change_drop", CFG.window_s)
    assert (
        text
        == "0x100: byte 1 changed in 0 of the 100 frame pairs where the others did (learned 98%)"
    )


def test_a_byte_changing_more_often_than_learned_is_named_with_its_counts() -> None:
    """0x200's byte 1 held 7 on every training drive; a drive where it changes in every
    frame names it, with the window's counts and training's rate."""
    from detector.features.baseline import learn_baseline
    from detector.features.windowing import WindowState
    from detector.incidents.evidence import describe
    from detector.model.pipeline import ScoredRows

    train = np.concatenate([drive(T0 + 100 * i, 20.0, 0x10, seed=i) for i in range(2)])
    bl = learn_baseline(train, np.repeat([0, 1], len(train) // 2 + 1)[: len(train)], 1.0)
    frames = drive(T0 + 1000, 5.0, 0x10, seed=5)
    state = np.flatnonzero(frames["can_id"] == STATE)
    frames["data"][state, 1] = np.arange(len(state)) % 200  # now it moves every frame
    rows = WindowState(1.0).push(frames, np.zeros(len(frames), np.int64), bl)
    zeros = np.zeros(len(rows))
    sc = ScoredRows("pad", 1, rows, zeros, np.zeros((len(rows), N_EVIDENCE)), ["v"], ["b"], zeros)
    i = int(np.flatnonzero(rows.can_id == STATE)[0])
    assert describe(sc, i, "change_rise", 1.0) == (
        "0x200: byte 1 changed in 50 of the 50 frame pairs (learned 0%)"
    )


def test_one_sided_features_count_only_above_what_was_learned() -> None:
    """Bit flips above the learned z-scores are evidence, fewer are not (a payload that
    stands still is change_drop's); silence and jitter likewise only above."""
    X = np.zeros((20, N_FEATURES))
    X[:, F["hamming_z"]] = np.linspace(-0.5, 2.0, 20)
    X[:, F["silence"]] = np.linspace(0.2, 1.0, 20)
    slot = np.zeros(20, np.int64)
    lo, hi, scale = fit_envelope(X, slot, 1, envelope_floor(np.array([50.0])))
    probe = np.zeros((2, N_FEATURES))
    probe[:, F["silence"]] = 0.5
    probe[:, F["hamming_z"]] = [-3.0, 5.0]
    excess = envelope_excess(probe, lo[[0, 0]], hi[[0, 0]], scale[[0, 0]])
    assert excess[0, F["hamming_z"]] == 0.0 and excess[1, F["hamming_z"]] > 1.0
    probe[:, F["silence"]] = [0.0, 3.0]
    excess = envelope_excess(probe, lo[[0, 0]], hi[[0, 0]], scale[[0, 0]])
    assert excess[0, F["silence"]] == 0.0 and excess[1, F["silence"]] > 1.0
