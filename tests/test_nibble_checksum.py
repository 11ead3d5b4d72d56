"""A 4-bit nibble-sum checksum (PSA's, Honda's) is learned, with its unpublished
constant, and a forged byte that does not recompute it is counted."""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.schema import DLC_MASKS, make_frames
from detector.features.baseline import (
    NIBBLE_SUM,
    checksum_bad,
    learn_baseline,
    nibble_sums,
)
from detector.features.columns import FEATURE_NAMES
from detector.features.fold_steps import _CRC8_POW, _checksum_bad
from detector.features.windowing import WindowState
from replay.profiles import SignalSpec
from replay.simulator import compute_checksum

W = 1.0
CAN_ID = 0x3F2
#: the checksum in the low nibble of byte 7 (Motorola bit numbering as the DBCs)
PSA_FIELD = SignalSpec("CHECKSUM", 59, 4, False, False, 1.0, 0.0, "", "checksum")


def psa_frames(seed: int, n: int = 600, t0: float = 1.7e9) -> np.ndarray:
    """One vehicle's 0x3F2 every 20 ms: a moving angle in byte 6, a 4-bit counter in
    byte 7's high nibble, PSA's checksum (opendbc ``psa_checksum``) in its low one."""
    rng = np.random.default_rng(seed)
    data = np.zeros((n, 8), np.uint8)
    data[:, 0] = rng.integers(0, 4, n)  # a mode that moves now and then
    data[:, 6] = (np.cumsum(rng.integers(-3, 4, n)) + 128).clip(0, 255)
    data[:, 7] = (np.arange(n) % 16) << 4
    data[:, 7] |= compute_checksum("psa", CAN_ID, data, PSA_FIELD, 8).astype(np.uint8)
    return make_frames(t0 + 0.02 * np.arange(n), np.full(n, CAN_ID), data)


def test_psa_checksums_sum_the_frames_nibbles_to_one_constant() -> None:
    f = psa_frames(1)
    sums = nibble_sums(f["data"], f["dlc"])
    assert len(np.unique(sums)) == 1
    assert len(np.unique(f["data"][:, 7] & 0xF)) > 8  # the checksum itself moves


def test_the_nibble_sum_and_its_constant_are_learned_from_every_vehicle() -> None:
    train = np.concatenate([psa_frames(1), psa_frames(2, t0=1.7e9 + 100)])
    bl = learn_baseline(train, np.repeat([0, 1], 600), W)
    want = int(nibble_sums(train["data"][:1], train["dlc"][:1])[0])
    assert (bl.checksum_kind[0], bl.checksum_byte[0]) == (NIBBLE_SUM, want)


@pytest.mark.parametrize(
    "payload",
    [
        pytest.param(lambda rng, n: rng.integers(0, 256, (n, 8)), id="random bytes"),
        pytest.param(
            lambda rng, n: np.repeat([[1, 2, 3, 4, 5, 6, 7, 8], [2, 1, 3, 4, 5, 6, 7, 8]], n // 2, 0),
            id="two payloads",
        ),
    ],
)
def test_no_nibble_sum_is_learned_where_none_holds_or_too_few_payloads_show_it(payload) -> None:
    rng = np.random.default_rng(3)
    n = 600
    f = make_frames(1.7e9 + 0.02 * np.arange(n), np.full(n, CAN_ID), payload(rng, n).astype(np.uint8))
    bl = learn_baseline(f, np.zeros(n, np.int64), W)
    assert bl.checksum_kind[0] == 0


@pytest.mark.parametrize("kind", [1, 2, 3, 4, 5, NIBBLE_SUM])
def test_the_folds_checksum_verdict_is_the_baselines(kind: int) -> None:
    rng = np.random.default_rng(kind)
    n = 2000
    data = rng.integers(0, 256, (n, 8), dtype=np.uint8)
    dlc = rng.integers(2, 9, n)
    can_id = rng.integers(0, 0x800, n).astype(np.uint32)
    at = rng.integers(0, 16, n) if kind == NIBBLE_SUM else rng.choice([0, -2], n)
    want = checksum_bad(kind, at, data, dlc, can_id)
    words = data.view(np.uint64).ravel()
    got = [
        _checksum_bad(kind, at[i], words[i], dlc[i], can_id[i], _CRC8_POW, DLC_MASKS)
        for i in range(n)
    ]
    np.testing.assert_array_equal(got, want)
    assert 0 < want.sum() < n


def test_a_forged_byte_fails_the_nibble_sum_in_the_fold() -> None:
    """A masquerade that writes its angle without recomputing the checksum: every
    forged window counts bad checksums, no benign one does (the simulated aee2010
    fleet's masquerade is caught this way: tests/test_detection_quality.py)."""
    train = np.concatenate([psa_frames(1), psa_frames(2, t0=1.7e9 + 100)])
    bl = learn_baseline(train, np.repeat([0, 1], 600), W)
    test = psa_frames(7, t0=1.7e9 + 500)
    forged = (test["ts"] >= 1.7e9 + 506) & (test["ts"] < 1.7e9 + 509)
    test["data"][forged, 6] = 0x40
    rows = WindowState(W).push(test, np.zeros(len(test), np.int64), bl)
    col = FEATURE_NAMES.index("checksum_err")
    start = rows.window * W
    attacked = (start >= 1.7e9 + 506) & (start < 1.7e9 + 509)
    assert attacked.sum() == 3
    assert (rows.X[attacked, col] > 0.5).all()  # a forged 0x40 keeps the sum 1 time in 16
    assert (rows.X[~attacked, col] == 0).all()
