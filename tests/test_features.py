"""Window features on tiny hand-built streams where the answer is obvious, and the
batch-invariance guarantee of ``WindowState.push`` on a simulated fleet."""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.schema import make_frames
from detector.features.baseline import Baseline, learn_baseline
from detector.features.columns import FEATURE_NAMES, F, Rows
from detector.features.windowing import WindowState

W = 1.0
FAST, SLOW, NOVEL = 0x100, 0x200, 0x7AB
FAST_PERIOD, SLOW_PERIOD = 0.010, 0.020
#: Frames sit half a period off the window grid so no frame straddles a boundary.
T0 = 1000.0


def fast_frames(t_start: float, t_end: float) -> np.ndarray:
    """0x100 every 10 ms: byte 0 a counter (+1 per frame), byte 1 in 10..20."""
    k = np.arange(round((t_start - T0) / FAST_PERIOD), round((t_end - T0) / FAST_PERIOD))
    data = np.zeros((len(k), 8), np.uint8)
    data[:, 0] = k % 256
    data[:, 1] = 10 + k % 11
    return make_frames(T0 + FAST_PERIOD / 2 + k * FAST_PERIOD, np.full(len(k), FAST), data)


def slow_frames(t_start: float, t_end: float) -> np.ndarray:
    """0x200 every 20 ms with one constant payload."""
    k = np.arange(round((t_start - T0) / SLOW_PERIOD), round((t_end - T0) / SLOW_PERIOD))
    data = np.tile(np.array([1, 2, 3, 4], np.uint8), (len(k), 1))
    return make_frames(T0 + SLOW_PERIOD / 4 + k * SLOW_PERIOD, np.full(len(k), SLOW), data)


def merge(*parts: np.ndarray) -> np.ndarray:
    out = np.concatenate(parts)
    return out[np.argsort(out["ts"], kind="stable")]


@pytest.fixture(scope="module")
def baseline() -> Baseline:
    train = merge(fast_frames(T0, T0 + 30), slow_frames(T0, T0 + 30))
    return learn_baseline(train, np.zeros(len(train), np.int64), W)


def rows_of(frames: np.ndarray, bl: Baseline) -> Rows:
    return WindowState(W).push(frames, np.zeros(len(frames), np.int64), bl)


def row(rows: Rows, window: int, can_id: int) -> np.ndarray:
    hit = np.flatnonzero((rows.window == window) & (rows.can_id == can_id))
    assert len(hit) == 1, f"expected one row for window {window} id {can_id:#x}, got {len(hit)}"
    return rows.X[hit[0]]


def test_baseline_learns_the_obvious(baseline: Baseline) -> None:
    np.testing.assert_array_equal(baseline.ids, [FAST, SLOW])
    np.testing.assert_allclose(baseline.period, [FAST_PERIOD, SLOW_PERIOD], rtol=1e-6)
    np.testing.assert_allclose(baseline.mean_count, [100, 50])
    assert baseline.expected.tolist() == [True, True]
    assert baseline.counter_byte[0] == 0 and baseline.counter_step[0] == 1
    assert baseline.has_dict.tolist() == [False, True]


def test_normal_traffic_is_at_its_learned_values(baseline: Baseline) -> None:
    t = T0 + 100
    rows = rows_of(merge(fast_frames(t, t + 5), slow_frames(t, t + 5)), baseline)
    # the first (partial) window is never scored; the last is still open
    assert sorted(set(rows.window.tolist())) == [1101, 1102, 1103]
    for w in (1101, 1102, 1103):
        x = row(rows, w, FAST)
        np.testing.assert_allclose(
            x[[F["rate"], F["dt_min"], F["dt_mean"]]], [1.0, 1.0, 1.0], rtol=1e-6
        )
        np.testing.assert_allclose(x[F["dt_cv"]], 0.0, atol=1e-6)
        for name in ("out_of_range", "counter_err", "novel_id", "novel_payload", "novel_dlc"):
            assert x[F[name]] == 0.0, name
        np.testing.assert_allclose(x[F["bus_load"]], 1.0, rtol=1e-6)
        np.testing.assert_allclose(x[F["bus_missing"]], 0.0)
    np.testing.assert_array_equal(rows.count[rows.can_id == FAST], 100)
    np.testing.assert_array_equal(rows.count[rows.can_id == SLOW], 50)


def test_doubled_frames_double_the_rate_and_halve_the_gaps(baseline: Baseline) -> None:
    t = T0 + 100
    fast = fast_frames(t, t + 5)
    copies = fast.copy()
    copies["ts"] += FAST_PERIOD / 2
    rows = rows_of(merge(fast, copies, slow_frames(t, t + 5)), baseline)
    x = row(rows, 1102, FAST)
    np.testing.assert_allclose(x[F["rate"]], 2.0, rtol=1e-6)
    np.testing.assert_allclose(x[F["dt_min"]], 0.5, rtol=1e-6)
    np.testing.assert_allclose(x[F["dt_mean"]], 0.5, rtol=1e-6)
    # every copy repeats its original's counter: half of the steps are wrong
    np.testing.assert_allclose(x[F["counter_err"]], 0.5, atol=0.01)
    np.testing.assert_allclose(x[F["bus_load"]], 250 / 150, rtol=1e-6)


def test_one_frame_out_of_phase_is_not_frames_squeezed_in(baseline: Baseline) -> None:
    """dt_min is a window's second-shortest gap: one extra frame (a send-on-change frame
    beside a periodic message's, as a car shifting into reverse sends) makes one short
    gap and one long one; frames an attacker squeezes in make many short ones."""
    t = T0 + 100
    slow = slow_frames(t, t + 5)
    one = slow[(slow["ts"] > 1102) & (slow["ts"] < 1103)][:1].copy()
    one["ts"] += 0.2 * SLOW_PERIOD  # 4 ms after a periodic frame, 16 ms before the next
    rows = rows_of(merge(fast_frames(t, t + 5), slow, one), baseline)
    np.testing.assert_allclose(row(rows, 1102, SLOW)[F["dt_min"]], 0.8, rtol=1e-6)
    squeezed = slow[(slow["ts"] > 1102) & (slow["ts"] < 1103)][:5].copy()
    squeezed["ts"] += 0.2 * SLOW_PERIOD
    rows = rows_of(merge(fast_frames(t, t + 5), slow, squeezed), baseline)
    np.testing.assert_allclose(row(rows, 1102, SLOW)[F["dt_min"]], 0.2, rtol=1e-6)


def test_an_id_not_sent_yet_is_not_absent_and_its_first_window_is_partial(baseline) -> None:
    """0x200's ECU comes up at 1102.5 (a vehicle waking ECU by ECU): before that its
    row is partial (no evidence about the bus; drift still sees it) and it is not
    missing, the window it begins in is partial too (its rate counts half a window),
    the next one is whole, and 0x100's rows are never partial."""
    t = T0 + 100
    rows = rows_of(merge(fast_frames(t, t + 5), slow_frames(t + 2.5, t + 5)), baseline)
    partial = rows.partial_mask()
    unsent = np.flatnonzero((rows.can_id == SLOW) & (rows.window == 1101))
    assert rows.count[unsent].tolist() == [0] and partial[unsent].all()
    np.testing.assert_allclose(row(rows, 1101, FAST)[F["bus_missing"]], 0.0)
    first = np.flatnonzero((rows.can_id == SLOW) & (rows.window == 1102))
    nxt = np.flatnonzero((rows.can_id == SLOW) & (rows.window == 1103))
    assert rows.count[first].tolist() == [25] and rows.count[nxt].tolist() == [50]
    assert partial[first].all() and not partial[nxt].any()
    assert not partial[rows.can_id == FAST].any()


def test_expected_id_gone_silent_yields_absence_rows(baseline: Baseline) -> None:
    t = T0 + 100
    # 0x200 stops at 1102.0: windows 1102 and 1103 hold no frame of it
    rows = rows_of(merge(fast_frames(t, t + 5), slow_frames(t, t + 2)), baseline)
    for w, silent_s in ((1102, 1.0), (1103, 2.0)):
        hit = np.flatnonzero((rows.window == w) & (rows.can_id == SLOW))
        assert len(hit) == 1
        i = hit[0]
        assert rows.count[i] == 0
        x = rows.X[i]
        # silence measured from the last frame (1101.985) to the window end, in periods
        np.testing.assert_allclose(x[F["silence"]], (silent_s + 0.015) / SLOW_PERIOD, rtol=1e-6)
        assert x[F["silence"]] > 1
        np.testing.assert_allclose(x[F["bus_missing"]], 0.5)
    assert row(rows, 1101, SLOW)[F["silence"]] < 1


def test_novel_id_counts_its_frames(baseline: Baseline) -> None:
    t = T0 + 100
    novel = make_frames(
        np.arange(1102.1, 1102.6, 0.1), np.full(5, NOVEL), np.zeros((5, 8), np.uint8)
    )
    rows = rows_of(merge(fast_frames(t, t + 5), slow_frames(t, t + 5), novel), baseline)
    x = row(rows, 1102, NOVEL)
    assert x[F["novel_id"]] == 5.0  # a fuzzer's stray frame weighs less than a flood
    assert rows.count[(rows.window == 1102) & (rows.can_id == NOVEL)].tolist() == [5]
    np.testing.assert_allclose(x[F["bus_novel"]], 5 / 155, rtol=1e-6)
    assert row(rows, 1102, FAST)[F["novel_id"]] == 0.0
    assert not np.any((rows.can_id == NOVEL) & (rows.window != 1102))


def test_byte_outside_learned_range_sets_out_of_range(baseline: Baseline) -> None:
    t = T0 + 100
    fast = fast_frames(t, t + 5)
    in_1102 = np.flatnonzero(np.floor(fast["ts"]) == 1102)
    fast["data"][in_1102[:25], 1] = 200  # learned 10..20
    rows = rows_of(merge(fast, slow_frames(t, t + 5)), baseline)
    np.testing.assert_allclose(row(rows, 1102, FAST)[F["out_of_range"]], 0.25)
    assert row(rows, 1101, FAST)[F["out_of_range"]] == 0.0
    assert row(rows, 1103, FAST)[F["out_of_range"]] == 0.0


def test_counter_breaks_set_counter_err(baseline: Baseline) -> None:
    t = T0 + 100
    fast = fast_frames(t, t + 5)
    in_1102 = np.flatnonzero(np.floor(fast["ts"]) == 1102)
    fast["data"][in_1102, 0] = 7  # a frozen counter: every step within the window is 0
    rows = rows_of(merge(fast, slow_frames(t, t + 5)), baseline)
    # 100 steps in window 1102; only the first (from 1101's last frame to 7) could be right
    np.testing.assert_allclose(row(rows, 1102, FAST)[F["counter_err"]], 1.0, atol=0.011)
    # the first step of 1103 (7 -> genuine counter) is broken too, the rest are fine
    np.testing.assert_allclose(row(rows, 1103, FAST)[F["counter_err"]], 0.01)
    assert row(rows, 1101, FAST)[F["counter_err"]] == 0.0


def test_novel_payload_and_dlc_on_a_dictionary_id(baseline: Baseline) -> None:
    t = T0 + 100
    slow = slow_frames(t, t + 5)
    in_1102 = np.flatnonzero(np.floor(slow["ts"]) == 1102)
    slow["data"][in_1102[:10], 3] = 99
    slow["dlc"][in_1102[:5]] = 8
    rows = rows_of(merge(fast_frames(t, t + 5), slow), baseline)
    x = row(rows, 1102, SLOW)
    np.testing.assert_allclose(x[F["novel_payload"]], 10 / 50)
    np.testing.assert_allclose(x[F["novel_dlc"]], 5 / 50)
    assert row(rows, 1103, SLOW)[F["novel_payload"]] == 0.0


WHEELS = 0x300


def wheel_frames(t_start: float, t_end: float, seed: int) -> np.ndarray:
    """0x300 every 10 ms: two big-endian 16-bit wheel speeds at bytes 0-1 and 4-5 that
    track one speed (0..3000) within a few units; byte 2 an unrelated 0..255 ramp."""
    rng = np.random.default_rng(seed)
    k = np.arange(round((t_start - T0) / FAST_PERIOD), round((t_end - T0) / FAST_PERIOD))
    speed = 1500 + 1400 * np.sin(k / 700.0 + seed)
    data = np.zeros((len(k), 8), np.uint8)
    for at in (0, 4):
        v = np.clip(speed + rng.integers(-4, 5, len(k)), 0, 65535).astype(np.int64)
        data[:, at], data[:, at + 1] = v >> 8, v & 0xFF
    data[:, 2] = k % 256
    return make_frames(T0 + FAST_PERIOD / 2 + k * FAST_PERIOD, np.full(len(k), WHEELS), data)


def test_coupled_signals_are_learned_and_a_forged_one_breaks_them() -> None:
    train = merge(*(wheel_frames(T0 + 60 * i, T0 + 60 * i + 40, seed=i) for i in range(3)))
    drive = np.floor((train["ts"] - T0) / 60).astype(np.int64)
    bl = learn_baseline(train, drive, W, drive)
    couplings = {
        (int(a), int(b), bool(le))
        for a, b, le in zip(bl.couple_a[0], bl.couple_b[0], bl.couple_le[0], strict=True)
        if a >= 0
    }
    assert (0, 4, False) in couplings  # the two wheel speeds, big-endian
    assert all(2 not in (a, b) and 3 not in (a, b) for a, b, _ in couplings)  # not the ramp
    t = T0 + 300
    test = wheel_frames(t, t + 5, seed=9)
    assert not row(rows_of(test, bl), 1302, WHEELS)[F["coupling_out"]]
    in_302 = np.flatnonzero(np.floor(test["ts"]) == 1302)
    test["data"][in_302[:40], 0] = 0xFF  # one wheel speed forged, the other genuine
    np.testing.assert_allclose(row(rows_of(test, bl), 1302, WHEELS)[F["coupling_out"]], 0.4)


# --- batch invariance ------------------------------------------------------


@pytest.fixture(scope="module")
def fleet_stream() -> tuple[np.ndarray, np.ndarray, Baseline]:
    """Two cusw vehicles x 12 s (one spoofed, one masqueraded + suspended), baseline of a third."""
    from replay.attacks import AttackSpec, inject
    from replay.simulator import simulate_vehicle

    train = simulate_vehicle("cusw", 20.0, seed=11)
    bl = learn_baseline(train, np.zeros(len(train), np.int64), W)
    a, _ = inject(
        simulate_vehicle("cusw", 12.0, start_ts=1.7e9 + 0.3, seed=12),
        AttackSpec.parse("spoofing:start=4,duration=3"),
        seed=1,
    )
    b, _ = inject(
        simulate_vehicle("cusw", 12.0, seed=13),
        AttackSpec.parse("masquerade:start=3,duration=3"),
        seed=2,
    )
    # a suspension leaves absence rows, whose silence reaches back across batches
    b, _ = inject(b, AttackSpec.parse("suspension:start=6,duration=4"), seed=3)
    frames = np.concatenate([a, b])
    vehicle = np.repeat([0, 1], [len(a), len(b)])
    order = np.argsort(frames["ts"], kind="stable")
    return frames[order], vehicle[order], bl


def push_in_batches(frames, vehicle, bl, cuts) -> tuple[Rows, WindowState]:
    state = WindowState(W)
    parts = []
    bounds = np.r_[0, np.asarray(cuts, dtype=np.int64), len(frames)]
    for lo, hi in zip(bounds[:-1], bounds[1:], strict=True):
        parts.append(state.push(frames[lo:hi], vehicle[lo:hi], bl))
    return Rows.concat(parts), state


def canonical(rows: Rows) -> Rows:
    return rows.take(np.lexsort((rows.can_id, rows.window, rows.vehicle)))


def assert_same_rows(got: Rows, want: Rows) -> None:
    got, want = canonical(got), canonical(want)
    assert len(got) == len(want)
    for name in ("vehicle", "window", "can_id", "count", "attack"):
        np.testing.assert_array_equal(getattr(got, name), getattr(want, name), err_msg=name)
    for j, name in enumerate(FEATURE_NAMES):
        np.testing.assert_array_equal(got.X[:, j], want.X[:, j], err_msg=name)
    np.testing.assert_array_equal(got.partial_mask(), want.partial_mask(), err_msg="partial")


def per_record_order(frames, vehicle, size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """Kafka-like: each record holds ``size`` frames of one vehicle; records by first ts."""
    chunks = []
    for v in np.unique(vehicle):
        idx = np.flatnonzero(vehicle == v)
        chunks += [idx[i : i + size] for i in range(0, len(idx), size)]
    chunks.sort(key=lambda c: frames["ts"][c[0]])
    order = np.concatenate(chunks)
    return frames[order], vehicle[order], np.cumsum([len(c) for c in chunks])[:-1].tolist()


def test_batch_invariance(fleet_stream) -> None:
    frames, vehicle, bl = fleet_stream
    whole, state = push_in_batches(frames, vehicle, bl, [])
    assert state.late_frames == 0
    assert len(np.unique(whole.window)) >= 10 and set(whole.vehicle.tolist()) == {0, 1}
    assert (whole.attack > 0).any() and (whole.count == 0).any()

    rng = np.random.default_rng(5)
    random_cuts = np.sort(rng.choice(np.arange(1, len(frames)), 40, replace=False))
    got, state = push_in_batches(frames, vehicle, bl, random_cuts)
    assert state.late_frames == 0
    assert_same_rows(got, whole)

    # 1..3-frame batches over a stretch crossing a window boundary (and the attack)
    start = int(np.searchsorted(frames["ts"], 1.7e9 + 4.9))
    tiny = np.cumsum(rng.integers(1, 4, 600)) + start
    cuts = np.r_[start, tiny[tiny < len(frames)]]
    got, state = push_in_batches(frames, vehicle, bl, cuts)
    assert state.late_frames == 0
    assert_same_rows(got, whole)

    f2, v2, cuts = per_record_order(frames, vehicle, 500)
    got, state = push_in_batches(f2, v2, bl, cuts)
    assert state.late_frames == 0
    assert_same_rows(got, whole)


def test_frames_of_closed_windows_are_counted_late_and_not_folded(fleet_stream) -> None:
    """A vehicle's frames from a window it already closed are late: counted per
    vehicle, dropped, and the rows are those of the stream without them."""
    frames, vehicle, bl = fleet_stream
    cut = int(np.searchsorted(frames["ts"], 1.7e9 + 6.5))
    whole, _ = push_in_batches(frames, vehicle, bl, [cut])
    # replay vehicle 1's frames of 2.0-4.0 s after the cut: windows it has closed
    old = np.flatnonzero((vehicle == 1) & (frames["ts"] >= 1.7e9 + 2) & (frames["ts"] < 1.7e9 + 4))
    state = WindowState(W)
    parts = [state.push(frames[:cut], vehicle[:cut], bl)]
    parts.append(state.push(frames[old], vehicle[old], bl))
    assert state.late_frames == len(old) > 0
    np.testing.assert_array_equal(state.last_late, np.ones(len(old)))
    assert len(parts[1]) == 0
    parts.append(state.push(frames[cut:], vehicle[cut:], bl))
    assert state.late_frames == len(old)
    assert_same_rows(Rows.concat(parts), whole)


def test_comparison_sort_path_gives_the_rows_of_the_counting_sort(fleet_stream, monkeypatch) -> None:
    """The fallback of ``WindowState.push`` (stream keys, lexsort, segments), taken for
    batches out of time order or too sparse to count, sizes the compiled kernels'
    output buffers too: forced on in-order traffic it must give the same rows."""
    from detector.features import windowing

    frames, vehicle, bl = fleet_stream
    rng = np.random.default_rng(8)
    cuts = np.sort(rng.choice(np.arange(1, len(frames)), 30, replace=False))
    counted, _ = push_in_batches(frames, vehicle, bl, cuts)
    real = windowing.stream_groups

    def not_in_order(*args):
        order, _, starts, groups = real(*args)
        return order, False, starts, groups

    monkeypatch.setattr(windowing, "stream_groups", not_in_order)
    sorted_, _ = push_in_batches(frames, vehicle, bl, cuts)
    assert_same_rows(sorted_, counted)


def test_a_telemetry_gap_leaves_its_windows_unscored_however_batched(fleet_stream) -> None:
    """Vehicle 0 sends nothing from 5.5 to 8.2 s (its uplink stopped): the windows the gap
    touches (5 to 9) have no rows, the other vehicle's are untouched, and the rows are
    the same pushed whole or in batches of a few frames across the gap."""
    frames, vehicle, bl = fleet_stream
    t = frames["ts"] - 1.7e9
    keep = ~((vehicle == 0) & (t >= 5.5) & (t < 8.2))
    frames, vehicle = frames[keep], vehicle[keep]
    whole, state = push_in_batches(frames, vehicle, bl, [])
    assert state.telemetry_gaps == 1
    w0 = whole.window[whole.vehicle == 0] - int(1.7e9)
    assert not ((w0 >= 5) & (w0 <= 9)).any() and (w0 == 10).any() and (w0 == 4).any()
    w1 = whole.window[whole.vehicle == 1] - int(1.7e9)
    assert ((w1 >= 5) & (w1 <= 9)).sum() >= 5
    start = int(np.searchsorted(frames["ts"], 1.7e9 + 5.0))
    rng = np.random.default_rng(9)
    tiny = np.cumsum(rng.integers(1, 4, 3000)) + start
    got, _ = push_in_batches(frames, vehicle, bl, tiny[tiny < len(frames)])
    assert_same_rows(got, whole)


def test_a_short_telemetry_gap_leaves_its_windows_scored_and_marked(fleet_stream) -> None:
    """Vehicle 0 sends nothing from 5.5 to 5.8 s, far longer than its bus ever went quiet
    in training but under 2 windows: the windows it touches (5 and 6) keep their rows,
    marked partial (the model does not read their timing), nothing else is marked, and
    the marks are the same however the stream was batched."""
    frames, vehicle, bl = fleet_stream
    assert 0 < bl.bus_silence < 0.05
    t = frames["ts"] - 1.7e9
    keep = ~((vehicle == 0) & (t >= 5.5) & (t < 5.8))
    frames, vehicle = frames[keep], vehicle[keep]
    whole, state = push_in_batches(frames, vehicle, bl, [])
    assert state.telemetry_gaps == 0  # counted are the gaps that leave windows unscored
    w = whole.window - int(1.7e9)
    g = whole.partial_mask()
    marked = set(zip(whole.vehicle[g].tolist(), w[g].tolist(), strict=True))
    assert marked == {(0, 5), (0, 6)}
    assert ((whole.vehicle == 0) & (w == 5)).sum() >= 5
    start = int(np.searchsorted(frames["ts"], 1.7e9 + 5.0))
    rng = np.random.default_rng(10)
    tiny = np.cumsum(rng.integers(1, 4, 3000)) + start
    got, _ = push_in_batches(frames, vehicle, bl, tiny[tiny < len(frames)])
    assert_same_rows(got, whole)
    _, state = push_in_batches(*fleet_stream[:2], bl, [])
    assert not state.gaps.size  # the bus's own quiet moments are no gap


def test_two_telemetry_gaps_in_one_push_and_records_out_of_order(fleet_stream) -> None:
    """Two gaps of vehicle 0 in one push both leave their windows unscored; its records
    swapped in a batch (a backfilled upload) invent none; and a batch cut into windows
    (another vehicle's unseen ids past max_novel_ids) notes a gap before it closes
    any of its windows."""
    from detector.core.schema import make_frames

    frames, vehicle, bl = fleet_stream
    t = frames["ts"] - 1.7e9
    gapped = ~((vehicle == 0) & (((t >= 2.5) & (t < 5.2)) | ((t >= 8.3) & (t < 10.9))))
    two, state = push_in_batches(frames[gapped], vehicle[gapped], bl, [])
    assert state.telemetry_gaps == 2
    w0 = set((two.window[two.vehicle == 0] - int(1.7e9)).tolist())
    assert w0.isdisjoint({2, 3, 4, 5, 6, 8, 9, 10, 11}) and {1, 7} <= w0

    mine = np.flatnonzero(vehicle == 0)
    half = mine[len(mine) // 2]
    swapped = np.r_[mine[mine >= half], mine[mine < half]]  # later record first
    rows, state = push_in_batches(frames[swapped], vehicle[swapped], bl, [])
    assert state.telemetry_gaps == 0
    assert_same_rows(rows, push_in_batches(frames[mine], vehicle[mine], bl, [])[0])
    # ... and hide none: the later record read first used to leave the gap before it
    # unseen, its windows scored as a bus gone silent (40x the threshold)
    mine = np.flatnonzero(gapped & (vehicle == 0))
    half = mine[np.searchsorted(t[mine], 7.0)]
    swapped = np.r_[mine[mine >= half], mine[mine < half]]
    rows, state = push_in_batches(frames[swapped], vehicle[swapped], bl, [])
    assert state.telemetry_gaps == 2
    assert_same_rows(rows, push_in_batches(frames[mine], vehicle[mine], bl, [])[0])

    one = ~((vehicle == 0) & (t >= 3.5) & (t < 6.5))
    ids = np.r_[0x600 + np.arange(12), 0x650 + np.arange(12)]  # unseen: 12 in window 4, 12 in 7
    fuzz = make_frames(1.7e9 + np.r_[4.1 + 0.01 * np.arange(12), 7.1 + 0.01 * np.arange(12)],
                       ids, np.zeros((24, 8), np.uint8))  # fmt: skip
    f = np.concatenate([frames[one], fuzz])
    v = np.r_[vehicle[one], np.ones(24, np.int64)]
    o = np.argsort(f["ts"], kind="stable")
    for limit in (1024, 8):  # 8: the batch is pushed a window at a time
        state = WindowState(W, max_novel_ids=limit)
        rows = state.push(f[o], v[o], bl)
        w0 = set((rows.window[rows.vehicle == 0] - int(1.7e9)).tolist())
        assert state.telemetry_gaps == 1 and w0.isdisjoint({3, 4, 5, 6, 7}), (limit, w0)


def test_remote_frames_are_a_stream_of_their_own_not_zero_frames_of_their_id(fleet_stream):
    """Three remote (RTR) frames of a learned id in window 10: its row is the row without
    them (they were folded in as frames of zeros: out of range, counter and checksum
    broken), and they are counted as "remote frames", an id of its own that training
    with remote frames learns like any other."""
    from detector.core.fd import REMOTE_FRAMES_ID, describe_id, parse_described_id, to_lanes
    from detector.core.schema import FLAG_RTR, concat_frames

    frames, vehicle, bl = fleet_stream
    mine = frames[vehicle == 1]
    learned = int(bl.ids[0])
    rtr = make_frames(1.7e9 + np.array([10.203, 10.503, 10.803]), [learned] * 3,
                      np.zeros((3, 0), np.uint8), dlc=[8] * 3)  # fmt: skip
    rtr["flags"] = FLAG_RTR
    with_rtr = concat_frames([mine, rtr])
    with_rtr = to_lanes(with_rtr[np.argsort(with_rtr["ts"], kind="stable")])
    clean, got = rows_of(mine, bl), rows_of(with_rtr, bl)
    window = int(1.7e9) + 10
    bus = [F[n] for n in ("bus_load", "bus_novel", "bus_ids")]  # the bus did carry them
    own = np.setdiff1d(np.arange(len(FEATURE_NAMES)), bus)
    np.testing.assert_array_equal(row(got, window, learned)[own], row(clean, window, learned)[own])
    remote = (got.can_id == REMOTE_FRAMES_ID) & (got.window == window)
    assert got.count[remote].tolist() == [3]
    assert describe_id(REMOTE_FRAMES_ID) == "remote frames"
    assert parse_described_id("remote frames") == REMOTE_FRAMES_ID
    train = to_lanes(with_rtr)
    assert REMOTE_FRAMES_ID in learn_baseline(train, np.zeros(len(train), np.int64), W).ids
