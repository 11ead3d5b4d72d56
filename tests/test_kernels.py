"""The compiled hot-path loops agree with their plain definitions.

``detector.kernels`` fuses the per-frame checks and the per-group reductions
into one loop and walks the isolation forest's trees itself; both must give the
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

from detector.baseline import learn_baseline
from detector.features import FEATURE_NAMES, N_FEATURES, present_rows
from detector.kernels import CompiledForest, stream_order
from detector.schema import FRAME_DTYPE
from detector.windowing import stream_sort
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

W = 1.0
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


def layout(frames: np.ndarray, vehicle: np.ndarray):
    """Frames grouped by (vehicle, id) in time order, as ``WindowState`` lays them out."""
    key = vehicle * 2**32 + frames["can_id"].astype(np.int64)
    order = np.lexsort((frames["ts"], key))
    skey = key[order]
    win = np.floor(frames["ts"] / W).astype(np.int64)
    stream_first = np.r_[True, skey[1:] != skey[:-1]]
    starts = np.flatnonzero(stream_first | np.r_[True, win[order][1:] != win[order][:-1]])
    return order, stream_first, starts, win


def test_group_rows_match_the_numpy_reference(traffic) -> None:
    platform, bl, frames = traffic
    rng = np.random.default_rng(0)
    vehicle = rng.integers(0, 3, len(frames))  # three interleaved streams per id
    order, first, starts, win = layout(frames, vehicle)
    n_streams = int(first.sum())
    # some streams continue an earlier batch, others start here
    found = rng.random(n_streams) < 0.5
    c_ts = np.where(found, frames["ts"][order[first]] - 0.01, np.nan)
    c_data = np.where(found[:, None], rng.integers(0, 256, (n_streams, 8)), 0).astype(np.uint8)

    rows, last = present_rows(
        frames, order, first, (found, c_ts, c_data), starts, vehicle, win, bl, W
    )

    f = frames[order]
    prev_ts = np.r_[np.nan, f["ts"][:-1]]
    prev_data = np.roll(f["data"], 1, axis=0)
    has_prev = ~first
    prev_ts[first], prev_data[first], has_prev[first] = c_ts, c_data, found
    checks = frame_checks(f, prev_ts, prev_data, has_prev, bl)
    ref, ref_last = reference_present_rows(f, vehicle[order], win[order], checks, bl, W)

    assert len(rows) == len(ref) > 100
    np.testing.assert_array_equal(rows.vehicle, ref.vehicle)
    np.testing.assert_array_equal(rows.window, ref.window)
    np.testing.assert_array_equal(rows.can_id, ref.can_id)
    np.testing.assert_array_equal(rows.count, ref.count)
    np.testing.assert_array_equal(rows.attack, ref.attack)
    np.testing.assert_array_equal(last, ref_last)
    np.testing.assert_allclose(rows.X, ref.X, rtol=1e-12, atol=1e-12)
    # every check fired somewhere, so none of them is compared only on zeros
    # (aee2010's nibble checksums are not learned: no checksum check there)
    fired = dict(zip(FEATURE_NAMES[:16], (ref.X[:, :16] != 0).any(axis=0), strict=True))
    if platform == "aee2010":
        fired.pop("checksum_err")
    assert all(fired.values()), fired


def test_stream_sort_is_a_stable_sort_by_stream_then_time() -> None:
    rng = np.random.default_rng(1)
    key = rng.integers(0, 50, 5000)
    ts = np.round(rng.random(5000) * 10, 1)  # many ties
    in_order = np.lexsort((np.arange(5000), ts))
    key, ts = key[in_order], ts[in_order]  # time-ordered arrival: the counting path
    order, ok = stream_order(key, 50, ts)
    assert ok
    np.testing.assert_array_equal(order, np.lexsort((ts, key)))
    shuffled = rng.permutation(5000)  # out of order: the comparison path
    np.testing.assert_array_equal(
        stream_sort(key[shuffled], 50, ts[shuffled]), np.lexsort((ts[shuffled], key[shuffled]))
    )


def test_compiled_forest_scores_like_sklearn() -> None:
    rng = np.random.default_rng(2)
    X = rng.normal(size=(3000, N_FEATURES))
    X[:, 5] = 0.0  # a constant feature: no splits on it
    forest = IsolationForest(n_estimators=50, max_samples=256, random_state=3).fit(X)
    Q = rng.normal(0, 3, size=(2000, N_FEATURES))
    Q[::9, 2] = np.inf
    Q[::11, 4] = 1e30  # beyond float32: sklearn's cast makes it inf too
    np.testing.assert_array_equal(CompiledForest(forest).raw_scores(Q), -forest.score_samples(Q))
    sub = IsolationForest(n_estimators=20, max_features=0.5, random_state=4).fit(X)
    np.testing.assert_array_equal(CompiledForest(sub).raw_scores(Q), -sub.score_samples(Q))


def test_empty_frames_give_no_rows(traffic) -> None:
    _, bl, _ = traffic
    empty = np.zeros(0, FRAME_DTYPE)
    none = np.zeros(0, np.int64)
    carried = (np.zeros(0, bool), np.zeros(0), np.zeros((0, 8), np.uint8))
    rows, last = present_rows(empty, none, none.astype(bool), carried, none, none, none, bl, W)
    assert len(rows) == 0 and len(last) == 0
