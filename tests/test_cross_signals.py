"""Signals two ids carry of one quantity: learned across drives, checked per window.

Hand-built drives of a car whose speed is sent by three ids in three units and
byte orders, beside an engine speed that follows the vehicle speed through a
gear ratio that differs from drive to drive (no coupling: it does not transfer).
"""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.schema import make_frames
from detector.features.baseline import learn_baseline
from detector.features.columns import F, Rows
from detector.features.windowing import WindowState
from detector.features.words import word, words16
from detector.incidents.evidence import describe
from detector.model.pipeline import ScoredRows
from detector.model.platform import N_EVIDENCE
from detector.model.reference import StreamReference

W = 1.0
#: id -> (period s, first byte of its speed word, big-endian, units per km/h, offset)
SPEED_IDS = {0x0D0: (0.02, 5, True, 8.0, 0.0), 0x20E: (0.05, 3, True, 4.0, 40960.0),
             0x6E0: (0.01, 0, False, 7.0, 0.0)}  # fmt: skip
ENGINE_ID = 0x354


def speed_kmh(t: np.ndarray, drive: int) -> np.ndarray:
    """A drive's speed: its own level and swings."""
    rng = np.random.default_rng(drive)
    level, swing, period = rng.uniform(20, 90), rng.uniform(10, 30), rng.uniform(15, 40)
    return np.clip(level + swing * np.sin(2 * np.pi * t / period), 0, None)


def drive_frames(
    drive: int, seconds: float = 60.0, t0: float = 1.7e9, speed=speed_kmh, top: dict | None = None
) -> np.ndarray:
    """A drive of ``speed(t, drive)``; ``top``: id -> the largest value its field holds."""
    rng = np.random.default_rng(100 + drive)
    ratio = rng.uniform(30, 33)  # engine rpm per km/h: this drive's gear, close to the others
    parts = []
    for can_id, (period, at, be, unit, offset) in SPEED_IDS.items():
        t = np.arange(0, seconds, period)
        data = rng.integers(0, 256, (len(t), 8)).astype(np.uint8)  # other signals: noise
        value = np.round(speed(t, drive) * unit + offset).astype(np.int64)
        value = np.minimum(value, (top or {}).get(can_id, value.max()))
        hi, lo = (at, at + 1) if be else (at + 1, at)
        data[:, hi], data[:, lo] = value >> 8, value & 0xFF
        parts.append(make_frames(t0 + t, np.full(len(t), can_id), data))
    t = np.arange(0, seconds, 0.02)
    data = np.zeros((len(t), 8), np.uint8)
    rpm = np.round(speed(t, drive) * ratio).astype(np.int64)
    data[:, 0], data[:, 1] = rpm >> 8, rpm & 0xFF
    parts.append(make_frames(t0 + t, np.full(len(t), ENGINE_ID), data))
    frames = np.concatenate(parts)
    return frames[np.argsort(frames["ts"], kind="stable")]


@pytest.fixture(scope="module")
def trained():
    drives = [drive_frames(d, t0=1.7e9 + 1000 * d) for d in range(4)]
    owner = np.concatenate([np.full(len(f), d) for d, f in enumerate(drives)])
    return learn_baseline(np.concatenate(drives), owner, W)


def pairs(bl) -> set[tuple[int, int]]:
    return {
        tuple(sorted((int(bl.ids[a]), int(bl.ids[b]))))
        for a, b in zip(bl.xc_a, bl.xc_b, strict=True)
    }


def test_the_speed_ids_couple_and_an_engine_speed_through_a_drive_s_gear_does_not(trained) -> None:
    bl = trained
    assert pairs(bl) == {(0x0D0, 0x20E), (0x0D0, 0x6E0), (0x20E, 0x6E0)}
    for can_id, (_, at, be, _, _) in SPEED_IDS.items():
        s = int(np.searchsorted(bl.ids, can_id))
        assert (bl.signal_at[s], bl.signal_be[s]) == (at, be)
    s = int(np.searchsorted(bl.ids, ENGINE_ID))
    assert (
        bl.signal_at[s] == -1
    )  # within each drive it is a line too: only a held-out drive shows it
    i = next(c for c, (a, b) in enumerate(zip(bl.xc_a, bl.xc_b, strict=True))
             if {int(bl.ids[a]), int(bl.ids[b])} == {0x0D0, 0x20E})  # fmt: skip
    slope = bl.xc_slope[i] if bl.ids[bl.xc_a[i]] == 0x0D0 else 1 / bl.xc_slope[i]
    assert slope == pytest.approx(4.0 / 8.0, rel=1e-3)


def counter_frames(drive: int, seconds: float = 60.0, t0: float = 1.7e9) -> np.ndarray:
    """Two ids of one ECU, each with a 4-bit counter in its byte 3, both sent on one
    tick and started in step (so their window means agree on every drive)."""
    t = np.arange(0, seconds, 1 / 7)  # 7 frames a window: the means take 16 values
    data = np.zeros((len(t), 8), np.uint8)
    data[:, 3] = (np.arange(len(t)) % 16) << 4 | 0x5
    data[:, 4] = 0x20 + drive  # a drive's setting
    ids = [make_frames(t0 + t, np.full(len(t), i), data) for i in (0x120, 0x121)]
    return np.concatenate(ids)


def test_counters_in_step_are_no_coupling() -> None:
    """A counter is no physical quantity: two counters started in step on every training
    drive keep one line there, and miss it on the first vehicle that starts them apart."""
    drives = [drive_frames(d, t0=1.7e9 + 1000 * d) for d in range(4)]
    drives = [
        np.concatenate([f, counter_frames(d, t0=1.7e9 + 1000 * d)]) for d, f in enumerate(drives)
    ]
    drives = [f[np.argsort(f["ts"], kind="stable")] for f in drives]
    owner = np.concatenate([np.full(len(f), d) for d, f in enumerate(drives)])
    bl = learn_baseline(np.concatenate(drives), owner, W)
    slots = np.searchsorted(bl.ids, [0x120, 0x121])
    assert (bl.counter_byte[slots] == 3).all()  # learned as counters
    assert pairs(bl) == {(0x0D0, 0x20E), (0x0D0, 0x6E0), (0x20E, 0x6E0)}
    assert (bl.signal_at[slots] == -1).all()


def distance_frames(drive: int, seconds: float = 60.0, t0: float = 1.7e9, start: int = 0):
    """Two ids of two ECUs carrying one distance (metres, 16 bits, wrapping), each on its
    own tick: an accumulator, whose window means rise together on every drive."""
    parts = []
    for can_id, period, phase in ((0x3A0, 0.02, 0.0), (0x3A1, 0.02, 0.011)):
        t = np.arange(phase, seconds, period)
        metres = start + np.cumsum(speed_kmh(t, drive) / 3.6 * period)
        value = np.round(metres).astype(np.int64) % 65536
        data = np.zeros((len(t), 8), np.uint8)
        data[:, 2], data[:, 3] = value >> 8, value & 0xFF
        parts.append(make_frames(t0 + t, np.full(len(t), can_id), data))
    return np.concatenate(parts)


def test_an_accumulator_two_ids_carry_is_no_coupling() -> None:
    """A distance sent by two ids keeps one line on every training drive (none wraps),
    but on a drive that wraps it, the window of the wrap mixes values 65,000 apart in
    other shares in each id: it is left out, and that drive breaks no coupling."""
    drives = []
    for d in range(4):
        f = np.concatenate(
            [
                drive_frames(d, t0=1.7e9 + 1000 * d),
                distance_frames(d, t0=1.7e9 + 1000 * d, start=1000 * d),
            ]
        )
        drives.append(f[np.argsort(f["ts"], kind="stable")])
    owner = np.concatenate([np.full(len(f), d) for d, f in enumerate(drives)])
    bl = learn_baseline(np.concatenate(drives), owner, W)
    assert pairs(bl) == {(0x0D0, 0x20E), (0x0D0, 0x6E0), (0x20E, 0x6E0)}
    slots = np.searchsorted(bl.ids, [0x3A0, 0x3A1])
    assert (bl.signal_at[slots] == -1).all()
    wrapping = distance_frames(7, seconds=30.0, t0=1.7e9 + 9000, start=65536 - 300)
    rows = scored(np.concatenate([drive_frames(7, 30.0, 1.7e9 + 9000), wrapping]), bl)
    assert (rows.X[:, F["cross_out"]] == 0).all()


def test_two_drives_teach_no_coupling() -> None:
    """A line seen on two drives cannot be checked on a third held out of it."""
    drives = [drive_frames(d, t0=1.7e9 + 1000 * d) for d in range(2)]
    owner = np.concatenate([np.full(len(f), d) for d, f in enumerate(drives)])
    bl = learn_baseline(np.concatenate(drives), owner, W)
    assert len(bl.xc_a) == 0 and (bl.signal_at == -1).all()


def test_the_fold_gives_each_row_its_word_s_window_mean(trained) -> None:
    frames = drive_frames(9, seconds=20.0, t0=1.7e9 + 9000)
    rows = WindowState(W).push(frames, np.zeros(len(frames), np.int64), trained)
    signal = rows.signals()
    for can_id, (_, at, be, _, _) in SPEED_IDS.items():
        mine = frames[frames["can_id"] == can_id]
        win = np.floor(mine["ts"] / W).astype(np.int64)
        values = word(words16(mine["data"]), at, be)
        for r in np.flatnonzero(rows.can_id == can_id):
            want = values[win == rows.window[r]].mean()
            assert signal[r] == pytest.approx(want, rel=1e-12)
    assert np.isnan(signal[rows.can_id == ENGINE_ID]).all()


def test_a_window_s_word_sum_past_2_31_keeps_its_mean(trained) -> None:
    """A flood of a coupled id (45,000 frames of a word of 60,000 in a 5 s window) sums
    its word past 2^31: the window's mean is still the word, however batched (its int32
    sum wrapped to -35,444 and broke the coupling's evidence)."""
    can_id, (_, at, be, _, _) = next(iter(SPEED_IDS.items()))
    n, window_s = 45_000, 5.0
    data = np.zeros((n, 8), np.uint8)
    hi, lo = (at, at + 1) if be else (at + 1, at)
    data[:, hi], data[:, lo] = 0xEA, 0x60  # 60,000
    # three windows: the first (partial) is not scored, the third closes the second
    frames = make_frames(1.7e9 + np.arange(3 * n) / 9000.0, np.full(3 * n, can_id),
                         np.r_[data, data, data])  # fmt: skip
    for cut in (3 * n, 977):
        state, rows = WindowState(window_s), []
        for start in range(0, 3 * n, cut):
            part = frames[start : start + cut]
            rows.append(state.push(part, np.zeros(len(part), np.int64), trained))
        rows = Rows.concat(rows)
        mine = rows.can_id == can_id
        assert rows.count[mine].tolist() == [n], cut
        assert rows.signals()[mine].tolist() == [60_000.0], cut


def forged(frames: np.ndarray, can_id: int, start: float, end: float) -> np.ndarray:
    """``can_id``'s speed word set to a constant in [start, end): a masquerade."""
    out = frames.copy()
    _, at, be, _, _ = SPEED_IDS[can_id]
    hit = (out["can_id"] == can_id) & (out["ts"] >= start) & (out["ts"] < end)
    hi, lo = (at, at + 1) if be else (at + 1, at)
    out["data"][hit, hi], out["data"][hit, lo] = 0x30, 0x00
    return out


def scored(frames: np.ndarray, bl, batches: int = 1) -> Rows:
    """Rows as the scorer sees them, after the cross check, pushed in ``batches``."""
    state, ref = WindowState(W), StreamReference(len(bl.ids))
    out = []
    for part in np.array_split(frames, batches):
        rows = state.push(part, np.zeros(len(part), np.int64), bl)
        ref.cross(rows, bl)
        out.append(rows)
    return Rows.concat(out)


@pytest.mark.parametrize("batches", [1, 97])
def test_a_forged_speed_breaks_its_couplings_in_its_windows_however_batched(
    trained, batches
) -> None:
    """Whether both ids of a pair close a window in one batch or not (97 batches split
    windows between them), exactly the forged windows break a coupling, as far (a
    coupling is checked once, on the row that closes its window second: which id shows
    it may vary with the batching, the window's evidence does not)."""
    t0 = 1.7e9 + 9000
    frames = forged(drive_frames(9, seconds=30.0, t0=t0), 0x20E, t0 + 10, t0 + 20)
    rows = scored(frames, trained, batches)
    cross = rows.X[:, F["cross_out"]]
    windows = np.unique(rows.window)
    worst = np.array([cross[rows.window == w].max() for w in windows])
    forged_windows = (windows * W >= t0 + 10) & (windows * W < t0 + 20)
    assert (worst[forged_windows] == 1.0).all()  # far off the line
    assert (worst[~forged_windows] == 0).all()
    assert 0x20E in set(rows.can_id[cross > 0].tolist())


@pytest.mark.parametrize("batches", [1, 7])
def test_a_silenced_partner_is_no_crash(trained, batches) -> None:
    """Rows of one id of a coupling and none of its partner in a push (a suspension of the
    partner, a vehicle whose uplink forwards one of them): the partner's row was indexed
    at -1 of nothing, an IndexError that stopped the detector (the demo's 6 vehicles)."""
    a, b = (int(trained.ids[i]) for i in (trained.xc_a[0], trained.xc_b[0]))
    frames = drive_frames(9, seconds=20.0, t0=1.7e9 + 9000)
    for silenced in (a, b):
        alone = frames[frames["can_id"] != silenced]
        rows = scored(alone, trained, batches)
        assert (rows.X[:, F["cross_out"]] == 0).all()  # nothing to compare with: no break


def test_benign_drives_never_seen_break_nothing(trained) -> None:
    for d in (11, 12, 13):
        rows = scored(drive_frames(d, t0=1.7e9 + 20000 * d), trained)
        assert (rows.X[:, F["cross_out"]] == 0).all(), d


def test_the_evidence_says_where_the_partner_puts_the_forged_signal(trained) -> None:
    """An analyst reads the word, its window mean, the partner that contradicts it and
    the value that partner implies: the true mean of the forged word, within the bound."""
    t0 = 1.7e9 + 9000
    real = drive_frames(9, seconds=30.0, t0=t0)
    rows = scored(forged(real, 0x20E, t0 + 10, t0 + 20), trained)
    hit = np.flatnonzero((rows.can_id == 0x20E) & (rows.X[:, F["cross_out"]] > 0))
    assert len(hit) >= 8
    zeros = np.zeros(len(rows))
    sc = ScoredRows("p", 1, rows, zeros, np.zeros((len(rows), N_EVIDENCE)), ["v"], ["b"], zeros)
    _, at, be, _, _ = SPEED_IDS[0x20E]
    mine = real[real["can_id"] == 0x20E]
    true = word(words16(mine["data"]), at, be)
    win = np.floor(mine["ts"] / W).astype(np.int64)
    for i in hit:
        partner, _, _, expected, bound = rows.cross[i]
        assert int(partner) in (0x0D0, 0x6E0)
        assert abs(expected - true[win == rows.window[i]].mean()) <= bound
        text = describe(sc, int(i), "cross_out", W)
        assert text.startswith("0x20E bytes 3-4 and 0x")
        assert f"disagree: window mean {rows.signal[i]:.0f}, where 0x" in text
        assert f"'s puts it at {expected:.0f} ± {bound:.0f}, " in text


def test_a_field_that_saturates_past_every_training_drive_breaks_nothing(trained) -> None:
    """A drive faster than any training drive, where 0x20E's field stops at its top
    while the other speeds go on: past the range training saw, a signal may sit anywhere
    between that range's edge and the line. A value off that, or one inside the range
    but off the line, still breaks it."""

    def fast(t: np.ndarray, drive: int) -> np.ndarray:
        return 150 + 20 * np.sin(2 * np.pi * t / 20)

    i = int(np.searchsorted(trained.ids, 0x20E))
    c = int(np.flatnonzero((trained.xc_a == i) | (trained.xc_b == i))[0])
    top = trained.xc_seen[c, 3 if trained.xc_b[c] == i else 1] + 40  # past training's largest
    t0 = 1.7e9 + 9000
    frames = drive_frames(9, seconds=30.0, t0=t0, speed=fast, top={0x20E: int(top)})
    assert (scored(frames, trained).X[:, F["cross_out"]] == 0).all()
    rows = scored(forged(frames, 0x20E, t0 + 10, t0 + 20), trained)
    hit = np.unique(rows.window[rows.X[:, F["cross_out"]] > 0]) * W
    assert ((hit >= t0 + 10) & (hit < t0 + 21)).all() and len(hit) >= 9
