"""The compiled hot-path loops agree with their plain definitions.

``detector.features.kernels`` folds the per-frame checks into per-window sums as frames
arrive and walks the isolation forest's trees itself; both must give the
numbers of the readable numpy reference (tests/reference_features.py) and of
scikit-learn's ``score_samples``, on traffic that trips every check: every
attack family on a platform with counters, checksums and payload dictionaries,
plus frames without a predecessor and ids the baseline never saw.
"""

from __future__ import annotations

import numpy as np
import pytest
from reference_features import frame_checks
from reference_features import present_rows as reference_present_rows
from sklearn.ensemble import IsolationForest

from detector.core.schema import DLC_MASKS as _DLC_MASKS
from detector.core.schema import make_frames
from detector.features.baseline import checksum_values, learn_baseline
from detector.features.columns import (
    FEATURE_NAMES,
    N_FEATURES,
    F,
    Rows,
    read_change_note,
    read_coupling_note,
    read_far_note,
    read_jump_note,
    read_pair_note,
)
from detector.features.fold_steps import _CRC8_POW, _checksum
from detector.features.kernels import segments, stream_groups, stream_keys
from detector.features.windowing import WindowState
from detector.model.forest_kernel import CompiledForest
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

W = 1.0
#: the per-id columns the fold computes (rate .. fixed_out), all compared with the reference
PER_ID = FEATURE_NAMES.index("fixed_out") + 1
ATTACKS = (
    "dos:start=5,duration=3",
    "fuzzing:start=10,duration=3",
    "spoofing:start=15,duration=3",
    "masquerade:start=20,duration=3",
    "suspension:start=25,duration=3",
    "replay:start=30,duration=3",
)


@pytest.fixture(scope="module", params=["cusw", "aee2010"])
def traffic(request: pytest.FixtureRequest):
    platform = request.param
    train = np.concatenate([simulate_vehicle(platform, 40.0, 1.7e9, seed) for seed in (1, 2)])
    owner = np.repeat([0, 1], len(train) // 2 + 1)[: len(train)]
    bl = learn_baseline(train, owner, W)
    frames = simulate_vehicle(platform, 40.0, 1.7e9 + 100, 3)
    for i, spec in enumerate(ATTACKS):
        frames, _ = inject(frames, AttackSpec.parse(spec), seed=i)
    return platform, bl, frames


def reference_rows(frames: np.ndarray, vehicle: np.ndarray, bl) -> Rows:
    """Present rows of every window from the numpy definitions, all frames at once."""
    key = vehicle * 2**32 + frames["can_id"].astype(np.int64)
    order = np.lexsort((frames["ts"], key))
    f, v, k = frames[order], vehicle[order], key[order]
    win = np.floor(f["ts"] / W).astype(np.int64)
    first = np.r_[True, k[1:] != k[:-1]]
    prev_ts = np.where(first, np.nan, np.r_[np.nan, f["ts"][:-1]])
    prev_data = np.where(first[:, None], 0, np.roll(f["data"], 1, axis=0)).astype(np.uint8)
    checks = frame_checks(f, prev_ts, prev_data, ~first, bl)
    rows, _ = reference_present_rows(f, v, win, checks, bl, W)
    return rows


def keyed(rows: Rows) -> dict[tuple[int, int, int], int]:
    return {
        (int(v), int(w), int(c)): i
        for i, (v, w, c) in enumerate(zip(rows.vehicle, rows.window, rows.can_id, strict=True))
    }


#: the change-rate column each change note explains
CHANGE_FEATURE = {"frozen": "change_drop", "rising": "change_rise"}


def check_change_notes(
    rows: Rows, i: np.ndarray, slot: np.ndarray, note: str, learned_rate: np.ndarray,
    min_pairs: int, sign: int,
) -> None:  # fmt: skip
    """Rows ``i`` carry a change ``note`` exactly when their change-rate column is above
    0, and the note's counts and learned rate (``learned_rate``, by id slot and byte)
    give that column: ``sign`` * (changed / pairs - learned)."""
    column = rows.X[i, F[CHANGE_FEATURE[note]]]
    noted = rows.notes(note)[i] >= 0
    np.testing.assert_array_equal(noted, column > 0)
    for r in np.flatnonzero(noted):
        byte, changed, pairs, learned = read_change_note(int(rows.notes(note)[i[r]]))
        assert pairs >= min_pairs and 0 <= changed <= pairs
        assert learned == pytest.approx(learned_rate[slot[r], byte], abs=5e-4)
        assert sign * (changed / pairs - learned) == pytest.approx(column[r], abs=5e-4)


def test_folded_windows_match_the_numpy_reference(traffic) -> None:
    platform, bl, frames = traffic
    rng = np.random.default_rng(0)
    vehicle = rng.integers(0, 3, len(frames))  # three interleaved vehicles
    state = WindowState(W)
    parts = [
        state.push(frames[cut], vehicle[cut], bl)
        for cut in np.array_split(np.arange(len(frames)), 37)  # batches of any size
    ]
    rows = Rows.concat(parts)
    rows = rows.take(np.flatnonzero(rows.count > 0))
    ref = reference_rows(frames, vehicle, bl)
    got, want = keyed(rows), keyed(ref)
    assert len(got) == len(rows) > 100  # one row per (vehicle, window, id)
    for v in range(3):  # every window but each vehicle's partial first and still-open last
        wins = ref.window[ref.vehicle == v]
        inner = {k for k in want if k[0] == v and wins.min() < k[1] < wins.max()}
        assert {k for k in got if k[0] == v} == inner
    i = np.array(list(got.values()))
    j = np.array([want[k] for k in got])
    np.testing.assert_array_equal(rows.count[i], ref.count[j])
    np.testing.assert_array_equal(rows.attack[i], ref.attack[j])
    np.testing.assert_allclose(rows.X[i, :PER_ID], ref.X[j, :PER_ID], rtol=1e-12, atol=1e-12)
    # a row names a byte outside its range exactly when it had one, with that byte's range
    noted = rows.notes("far")[i] >= 0
    np.testing.assert_array_equal(noted, rows.X[i, F["out_of_range"]] > 0)
    slot, _ = bl.slots(rows.can_id[i])
    for r in np.flatnonzero(noted):
        byte, value, lo, hi = read_far_note(int(rows.far[i[r]]))
        s = slot[r]
        assert (lo, hi) == (bl.byte_min[s, byte], bl.byte_max[s, byte])
        assert not lo <= value <= hi
    # a row names the byte that fell furthest below its learned change rate exactly
    # when one fell, with the counts and the learned rate its drop comes from; and the
    # byte that rose furthest above it
    check_change_notes(rows, i, slot, "frozen", bl.cond_change, min_pairs=3, sign=-1)
    check_change_notes(rows, i, slot, "rising", bl.change_rate, min_pairs=1, sign=1)
    # a row names a byte that stepped outside its learned steps only when it had one
    # (a frame repeating its predecessor where a byte always changed has no byte to
    # name), with that byte's learned steps
    jumped = rows.notes("jump")[i] >= 0
    assert not (jumped & (rows.X[i, F["delta_out"]] == 0)).any()
    assert jumped.any() == (rows.X[i, F["delta_out"]] > 0).any()
    # a row names a tight byte pair whose difference left its bounds exactly when one
    # did, with a difference outside that pair's learned ones
    paired = rows.notes("pair")[i] >= 0
    np.testing.assert_array_equal(paired, rows.X[i, F["pair_out"]] > 0)
    for r in np.flatnonzero(paired):
        p, diff = read_pair_note(int(rows.pair[i[r]]))
        assert bl.pair_tight[slot[r], p]
        assert not bl.pair_min[slot[r], p] <= diff <= bl.pair_max[slot[r], p]
    for r in np.flatnonzero(jumped):
        byte, step, lo, hi = read_jump_note(int(rows.jump[i[r]]))
        learned = bl.delta_min[slot[r], byte], bl.delta_max[slot[r], byte]
        assert (lo, hi) == tuple(np.clip(learned, -255, 255)), learned
        assert not lo <= step <= hi
    # every check fired somewhere, so none of them is compared only on zeros
    # (aee2010's nibble checksums are not learned: no checksum check there)
    fired = dict(zip(FEATURE_NAMES[:PER_ID], (ref.X[j, :PER_ID] != 0).any(axis=0), strict=True))
    if platform == "aee2010":
        fired.pop("checksum_err")
    else:  # cusw's wheel speeds are 13-bit fields: no byte-aligned coupling is learned
        assert (bl.couple_a < 0).all()
        fired.pop("coupling_out")  # test_couplings_in_either_byte_order_fold_like_the_reference
    assert all(fired.values()), fired


def test_couplings_in_either_byte_order_fold_like_the_reference() -> None:
    """Two ids, each with two 16-bit speeds that track each other, one id little-endian
    (bytes 0-1 and 2-3), the other big-endian (4-5 and 6-7); then each speed of each
    id forged in turn. The fold breaks exactly the reference's couplings, in both byte
    orders (a swapped order reads other values and breaks others)."""
    rng = np.random.default_rng(5)
    t = np.arange(0, 60, 0.01)
    speed = (3000 + 2500 * np.sin(t / 7) + rng.normal(0, 3, len(t))).astype(np.int64)
    data = np.zeros((len(t), 8), np.uint8)
    second = speed + rng.integers(-20, 21, len(t))
    for at, value, big in ((0, speed, False), (2, second, False), (4, speed, True), (6, second, True)):
        hi, lo = (at, at + 1) if big else (at + 1, at)
        data[:, hi], data[:, lo] = value >> 8, value & 0xFF
    frames = [make_frames(1.7e9 + t, np.full(len(t), i), data) for i in (0x100, 0x200)]
    train = np.concatenate(frames)
    bl = learn_baseline(train, np.repeat([0, 1], len(t)), W)
    for can_id, pair in ((0x100, (0, 2, True)), (0x200, (4, 6, False))):
        s = int(np.searchsorted(bl.ids, can_id))
        learned = zip(bl.couple_a[s], bl.couple_b[s], bl.couple_le[s], strict=True)
        assert pair in {(min(a, b), max(a, b), bool(le)) for a, b, le in learned if a >= 0}
    test = np.concatenate(frames)
    test["ts"] += 1000
    for k, byte in enumerate((1, 3, 4, 6)):  # each speed's high byte, in its own 5 s
        at = (test["ts"] >= 1.7e9 + 1005 + 10 * k) & (test["ts"] < 1.7e9 + 1010 + 10 * k)
        test["data"][at, byte] ^= 0x40
    test = test[np.argsort(test["ts"], kind="stable")]
    vehicle = np.zeros(len(test), np.int64)
    rows = WindowState(W).push(test, vehicle, bl)
    ref = reference_rows(test, vehicle, bl)
    got, want = keyed(rows), keyed(ref)
    col = FEATURE_NAMES.index("coupling_out")
    broken = {k for k, j in want.items() if ref.X[j, col] > 0}
    assert {k[2] for k in broken} == {0x100, 0x200}
    for k, i in got.items():
        assert rows.X[i, col] == ref.X[want[k], col], k
    # a row that broke a coupling names it, the first frame's difference outside its bounds
    noted = rows.notes("coupling") >= 0
    np.testing.assert_array_equal(noted, rows.X[:, col] > 0)
    slot, _ = bl.slots(rows.can_id)
    for i in np.flatnonzero(noted):
        c, diff = read_coupling_note(int(rows.coupling[i]))
        s = slot[i]
        assert bl.couple_a[s, c] >= 0 and not bl.couple_lo[s, c] <= diff <= bl.couple_hi[s, c]


def test_a_stream_busier_than_a_16_bit_lane_folds_like_the_reference(traffic) -> None:
    """The fold counts byte changes of up to 65,535 frames in 16-bit lanes before
    adding them to the window's sums: a stream with more changing frames in one
    window and one batch (a flood of one id) gives the reference counts."""
    _, bl, frames = traffic
    # an id with a byte that changes whenever another does (a counter's checksum)
    can_id = int(bl.ids[np.argmax(bl.cond_change.max(axis=1))])
    n = 70_000
    rng = np.random.default_rng(2)
    data = np.tile(frames["data"][frames["can_id"] == can_id][:1], (n, 1))
    cols = rng.integers(0, 8, n)
    data[np.arange(n), cols] = rng.integers(0, 256, n, dtype=np.uint8)  # one byte changes
    two = rng.random(n) < 0.5
    data[np.flatnonzero(two), (cols[two] + 3) % 8] ^= 0x5A  # ...or two
    ts = np.r_[np.linspace(0.1, 0.9, 10), np.linspace(1.0, 1.999, n - 20), np.linspace(2.1, 2.9, 10)]
    flood = make_frames(1.7e9 + ts, np.full(n, can_id), data)
    vehicle = np.zeros(n, np.int64)
    rows = WindowState(W).push(flood, vehicle, bl)  # one batch: closes the flooded window
    ref = reference_rows(flood, vehicle, bl)
    got, want = keyed(rows), keyed(ref)
    (key,) = [k for k in got if k[2] == can_id]
    i, j = got[key], want[key]
    assert rows.count[i] == n - 20 > 65_535
    np.testing.assert_allclose(rows.X[i, :16], ref.X[j, :16], rtol=1e-12, atol=1e-12)
    assert (ref.X[j, 5:8] != 0).all()  # hamming and both change features: not only zeros


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 5])
def test_checksums_over_the_payload_word_are_the_baselines(kind: int) -> None:
    """The fold works a checksum out from the payload as one 64-bit word; it is
    the one the baseline learns, for every dlc and checksum position."""
    rng = np.random.default_rng(kind)
    n = 3000
    data = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    dlc = rng.integers(0, 9, n)
    pos = rng.integers(0, 8, n)
    can_id = rng.integers(0, 0x800, n).astype(np.uint32)
    want = checksum_values(kind, data, dlc, can_id, pos)
    words = data.view(np.uint64).ravel()
    got = [
        _checksum(kind, words[i], dlc[i], can_id[i], pos[i], _CRC8_POW, _DLC_MASKS)
        for i in range(n)
    ]
    np.testing.assert_array_equal(got, want)


def test_stream_groups_is_a_stable_sort_by_stream_then_time() -> None:
    """The counting sort by (vehicle, id) stream: the order, each stream's run and
    the number of (stream, window) groups equal those of a comparison sort."""
    rng = np.random.default_rng(1)
    n, n_vehicles, n_ids = 5000, 5, 10
    vehicle = rng.integers(0, n_vehicles, n)
    id_rank = rng.integers(0, n_ids, n)
    ts = np.round(rng.random(n) * 10, 1)  # many ties
    arrival = np.lexsort((np.arange(n), ts))  # time-ordered arrival: the counting path
    vehicle, id_rank, ts = vehicle[arrival], id_rank[arrival], ts[arrival]
    win = np.floor(ts).astype(np.int64)
    key = stream_keys(vehicle, np.arange(n_vehicles), id_rank, n_ids)
    np.testing.assert_array_equal(key, vehicle * n_ids + id_rank)
    order, in_order, starts, groups = stream_groups(key, n_vehicles * n_ids, ts, win)
    assert in_order
    np.testing.assert_array_equal(order, np.lexsort((ts, key)))
    want_starts, want_groups = segments(key, win, np.lexsort((ts, key)))
    np.testing.assert_array_equal(starts, want_starts)
    assert groups == want_groups
    swapped = ts.copy()
    swapped[[0, -1]] = swapped[[-1, 0]]  # one frame out of time order
    assert not stream_groups(key, n_vehicles * n_ids, swapped, win)[1]


def test_compiled_forest_scores_like_sklearn() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, N_FEATURES))
    X[:, 5] = 0.0  # a constant feature: no splits on it
    forest = IsolationForest(n_estimators=50, max_samples=256, random_state=3).fit(X)
    Q = rng.normal(0, 3, size=(2000, N_FEATURES))  # not a whole number of walk blocks
    cf = CompiledForest(forest)
    for rows in (Q, Q[:1]):  # finite: the level-by-level walk
        np.testing.assert_array_equal(cf.raw_scores(rows), -forest.score_samples(rows))
    Q[::9, 2] = np.inf  # the node-by-node walk from here on
    Q[::11, 4] = 1e30  # beyond float32: sklearn's cast makes it inf too
    np.testing.assert_array_equal(CompiledForest(forest).raw_scores(Q), -forest.score_samples(Q))
    Q[::5, 1] = np.nan  # the walk that follows sklearn's missing-value side
    np.testing.assert_array_equal(CompiledForest(forest).raw_scores(Q), -forest.score_samples(Q))
    sub = IsolationForest(n_estimators=20, max_features=0.5, random_state=4).fit(X)
    np.testing.assert_array_equal(CompiledForest(sub).raw_scores(Q), -sub.score_samples(Q))


def test_a_walk_that_stops_early_gives_every_score_above_its_floor_exactly() -> None:
    """Rows whose score cannot exceed the floor stop being walked (forest evidence only
    counts above it): those above it keep sklearn's exact score, the others stay <= it."""
    rng = np.random.default_rng(5)
    X = rng.normal(size=(3000, N_FEATURES))
    forest = IsolationForest(n_estimators=60, max_samples=256, random_state=6).fit(X)
    cf = CompiledForest(forest)
    Q = np.r_[rng.normal(0, 1, size=(1500, N_FEATURES)), rng.normal(0, 4, size=(700, N_FEATURES))]
    exact = -forest.score_samples(Q)
    for floor in (np.quantile(exact, 0.5), np.quantile(exact, 0.999), 0.3, 0.99):
        bounded = cf.raw_scores(Q, floor=floor)
        above = exact > floor
        np.testing.assert_array_equal(bounded[above], exact[above])
        assert (bounded[~above] <= floor).all()
    np.testing.assert_array_equal(cf.raw_scores(Q, floor=None), exact)




_WARM_CHECK = """
import sys
from pathlib import Path
import numpy as np
from numba.core.registry import CPUDispatcher
from detector.features import kernels
from detector.model import pipeline
from detector.transport import wire
from detector.core.brands import load_fleet
from detector.model.store import load_latest
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

model = load_latest(Path(sys.argv[1]))["cusw"]
wire.warm_up()
pipeline.warm_up(model, 1.0)
def loaded():
    return {n: len(f.signatures) for n, f in vars(kernels).items() if isinstance(f, CPUDispatcher)}
before = loaded()
frames, _ = inject(simulate_vehicle("cusw", 20.0, 1.7e9, 5), AttackSpec.parse("fuzzing:start=5,duration=5"), seed=1)
key, value, headers = wire.encode_record("v1", "jeep", frames)
batches = wire.decode_records([(key, value, headers)], known_brands=None, now=2e9, max_future_s=60, min_ts=0)
sc = pipeline.Scorer({model.platform: model}, load_fleet(), 1.0)
scored = sc.push([("v1", "jeep", batches[0].frames)])
swapped = simulate_vehicle("cusw", 3.0, 1.7e9 + 30, 6)[::-1].copy()  # out of time order
scored += sc.push([("v1", "jeep", swapped)]) + sc.retire({"v1"})
assert sum(len(s.rows) for s in scored) > 0
print(before == loaded(), before, loaded())
"""


def test_warm_up_loads_every_kernel_the_scoring_path_calls(cusw_models) -> None:
    """After ``wire.warm_up`` and ``pipeline.warm_up``, decoding and scoring real
    traffic (fuzzing: unseen ids; a batch out of time order: the comparison sort)
    loads no further compiled code, so the first poll does not pay for it. A fresh
    interpreter: this one has them loaded."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", _WARM_CHECK, str(cusw_models)],
        capture_output=True, text=True, timeout=300, check=True,
    ).stdout.strip()
    assert out.startswith("True"), out


def test_window_pass_finds_standard_and_extended_ids_like_id_slots() -> None:
    from detector.features.kernels import id_slots, window_pass

    ids = np.array([0x10, 0x7FF, 0x8000_0123, 0x9ABC_DEF0], np.uint32)  # sorted, 2 extended
    can_id = np.array([0x7FF, 0x9ABC_DEF0, 0x10, 0x8000_0123], np.uint32)
    ts = np.array([0.5, 1.5, 2.5, 3.5])
    vehicle = np.zeros(4, np.int64)
    none = np.iinfo(np.int64).min // 4
    gaps = np.empty(4, np.int64), np.empty(4)
    args = (vehicle, 1.0, np.full(1, none), np.full(1, none), np.full(1, -np.inf), none, ids, 5.0, *gaps)
    win, late, n_late, in_batch, slot, all_known, earliest, n_gaps, disorder = window_pass(
        ts, can_id, *args
    )
    assert n_gaps == 0 and not disorder.any()
    assert all_known and n_late == 0 and in_batch.all()
    np.testing.assert_array_equal(win, [0, 1, 2, 3])
    np.testing.assert_array_equal(earliest, [0])
    np.testing.assert_array_equal(slot, id_slots(can_id, ids)[0])
    unseen = can_id.copy()
    unseen[1] = 0x9ABC_DEF1  # an extended id the baseline never saw
    assert not window_pass(ts, unseen, *args)[5]
