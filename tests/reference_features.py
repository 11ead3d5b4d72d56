"""The per-frame feature definitions in plain numpy: the reference the compiled
loop of ``detector.features.kernels`` must reproduce (tests/test_kernels.py).

Readable, vectorized and ~6x slower than the kernel: each check gathers the
baseline rows of every frame and materialises (n, 8) temporaries.
"""

from __future__ import annotations

import numpy as np

from detector.features.baseline import (
    COUPLED_REL_UNIT,
    PAIRS,
    Baseline,
    checksum_bad,
    payload_hash,
    payload_u64,
)
from detector.features.columns import N_FEATURES, F, Rows
from detector.features.words import words16


def popcount8(x: np.ndarray) -> np.ndarray:
    """Set bits per row of an (n, 8) uint8 array."""
    return np.unpackbits(x, axis=1).sum(axis=1, dtype=np.int64)


def frame_checks(
    frames: np.ndarray,
    prev_ts: np.ndarray,
    prev_data: np.ndarray,
    has_prev: np.ndarray,
    bl: Baseline,
) -> dict[str, np.ndarray]:
    """Per-frame comparisons against the previous frame of the stream and the baseline."""
    data = frames["data"]
    can_id = frames["can_id"]
    dlc = frames["dlc"]
    slot, known = bl.slots(can_id)
    dt = np.where(has_prev, frames["ts"] - prev_ts, np.nan)
    xor = data ^ prev_data
    ham = np.where(has_prev, popcount8(xor), 0)
    changed = (xor != 0) & has_prev[:, None]
    out_range = known & ((data < bl.byte_min[slot]) | (data > bl.byte_max[slot])).any(axis=1)
    delta = data.astype(np.int16) - prev_data.astype(np.int16)
    delta_out = (
        known & has_prev & ((delta < bl.delta_min[slot]) | (delta > bl.delta_max[slot])).any(axis=1)
    )
    pair_out = np.zeros(len(frames), bool)
    tight_any = known & bl.pair_tight[slot].any(axis=1)
    if tight_any.any():
        idx = np.flatnonzero(tight_any)
        d = data[idx]
        s = slot[idx]
        pairs = d[:, PAIRS[:, 0]].astype(np.int16) - d[:, PAIRS[:, 1]].astype(np.int16)
        bad = ((pairs < bl.pair_min[s]) | (pairs > bl.pair_max[s])) & bl.pair_tight[s]
        pair_out[idx] = bad.any(axis=1)
    counter_err = np.zeros(len(frames), bool)
    has_counter = known & has_prev & (bl.counter_byte[slot] >= 0)
    if has_counter.any():
        idx = np.flatnonzero(has_counter)
        s = slot[idx]
        counter_err[idx] = True  # a frame breaks the counters when it breaks each one learned
        for byte, mask, shift, step in (
            (bl.counter_byte, bl.counter_mask, bl.counter_shift, bl.counter_step),
            (bl.counter2_byte, bl.counter2_mask, bl.counter2_shift, bl.counter2_step),
        ):
            on = byte[s] >= 0
            b = np.maximum(byte[s], 0).astype(np.int64)
            m = mask[s].astype(np.int64)
            sh = shift[s].astype(np.int64)
            cur = (data[idx, b].astype(np.int64) & m) >> sh
            prv = (prev_data[idx, b].astype(np.int64) & m) >> sh
            counter_err[idx] &= ~on | (((cur - prv) % ((m >> sh) + 1)) != step[s])
    checksum_err = np.zeros(len(frames), bool)
    kinds = np.where(known, bl.checksum_kind[slot], 0)
    for kind in np.unique(kinds[kinds > 0]):
        idx = np.flatnonzero(kinds == kind)
        at = bl.checksum_byte[slot[idx]]
        checksum_err[idx] = checksum_bad(int(kind), at, data[idx], dlc[idx], can_id[idx])
    novel_payload = np.zeros(len(frames), bool)
    dict_ids = known & bl.has_dict[slot]
    if dict_ids.any() and len(bl.payload_hashes):
        idx = np.flatnonzero(dict_ids)
        h = payload_hash(slot[idx], payload_u64(data[idx]))
        pos = np.minimum(np.searchsorted(bl.payload_hashes, h), len(bl.payload_hashes) - 1)
        novel_payload[idx] = bl.payload_hashes[pos] != h
    novel_dlc = known & ((bl.dlc_mask[slot] >> dlc.astype(np.uint16)) & 1 == 0)
    coupling_out = np.zeros(len(frames), bool)
    words = words16(data)  # (n, byte order, offset)
    rows = np.arange(len(frames))
    for c in range(bl.couple_a.shape[1]):
        on = known & (bl.couple_a[slot, c] >= 0)
        le = bl.couple_le[slot, c].astype(np.int64)
        a = np.maximum(bl.couple_a[slot, c], 0).astype(np.int64)
        b = np.maximum(bl.couple_b[slot, c], 0).astype(np.int64)
        wa, wb = words[rows, le, a].astype(np.int64), words[rows, le, b].astype(np.int64)
        diff = wa - wb
        lo, hi = bl.couple_lo[slot, c].astype(np.int64), bl.couple_hi[slot, c].astype(np.int64)
        off = np.abs(diff - (lo + hi) // 2) * COUPLED_REL_UNIT
        beyond = off > bl.couple_rel[slot, c].astype(np.int64) * np.maximum(wa, wb)
        coupling_out |= on & ((diff < lo) | (diff > hi)) & beyond
    fixed_out = known & ((payload_u64(data) & bl.fixed_mask[slot]) != bl.fixed_value[slot])
    return {
        "slot": slot,
        "known": known,
        "dt": dt,
        "ham": ham,
        "changed": changed,
        "other_changed": (changed.sum(axis=1)[:, None] - changed) > 0,
        "out_of_range": out_range,
        "delta_out": delta_out,
        "pair_out": pair_out,
        "counter_err": counter_err,
        "checksum_err": checksum_err,
        "novel_payload": novel_payload,
        "novel_dlc": novel_dlc,
        "coupling_out": coupling_out,
        "fixed_out": fixed_out,
    }


def _segment_sum(x: np.ndarray, starts: np.ndarray) -> np.ndarray:
    if len(starts) == 0:
        return np.zeros((0,) + x.shape[1:], dtype=np.float64)
    return np.add.reduceat(x.astype(np.float64), starts, axis=0)


def present_rows(
    frames: np.ndarray,
    vehicle: np.ndarray,
    window: np.ndarray,
    checks: dict[str, np.ndarray],
    bl: Baseline,
    window_s: float,
) -> tuple[Rows, np.ndarray]:
    """Rows for the (vehicle, id, window) groups that hold frames.

    ``frames`` are grouped by stream in time order. Returns the rows and the
    ts of each group's last frame (for silence of later absences).
    """
    n = len(frames)
    if n == 0:
        return Rows.empty(), np.zeros(0)
    can_id = frames["can_id"]
    boundary = np.r_[
        True,
        (vehicle[1:] != vehicle[:-1]) | (can_id[1:] != can_id[:-1]) | (window[1:] != window[:-1]),
    ]
    starts = np.flatnonzero(boundary)
    ends = np.r_[starts[1:], n]
    count = ends - starts
    slot = checks["slot"][starts]
    known = checks["known"][starts]
    dt = checks["dt"]
    has_dt = ~np.isnan(dt)
    n_dt = _segment_sum(has_dt, starts)
    dt0 = np.where(has_dt, dt, 0.0)
    sum_dt = _segment_sum(dt0, starts)
    sum_dt2 = _segment_sum(dt0 * dt0, starts)
    gaps = np.where(has_dt, dt, np.inf)
    min_dt = np.minimum.reduceat(gaps, starts)
    # the second-shortest gap: each segment's first shortest one set aside
    seg = np.repeat(np.arange(len(starts)), np.diff(np.r_[starts, n]))
    first_min = np.full(len(starts), -1)
    is_min = np.flatnonzero(gaps == min_dt[seg])
    first_min[seg[is_min[::-1]]] = is_min[::-1]  # the last write of each segment wins
    rest = gaps.copy()
    rest[first_min[first_min >= 0]] = np.inf
    min_dt2 = np.minimum.reduceat(rest, starts)
    min_dt = np.where(np.isfinite(min_dt2), min_dt2, min_dt)
    period = np.where(known, bl.period[slot], np.nan)
    period = np.where(np.isfinite(period) & (period > 0), period, window_s)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_dt = sum_dt / n_dt
        std_dt = np.sqrt(np.maximum(sum_dt2 / n_dt - mean_dt**2, 0.0))
    X = np.zeros((len(starts), N_FEATURES))
    mean_count = np.where(known, bl.mean_count[slot], 0.0)
    X[:, F["rate"]] = np.where(mean_count > 0, count / np.maximum(mean_count, 1e-9), count)
    X[:, F["dt_min"]] = np.where(np.isfinite(min_dt) & known, min_dt / period, 1.0)
    X[:, F["dt_mean"]] = np.where((n_dt > 0) & known, mean_dt / period, 1.0)
    X[:, F["dt_cv"]] = np.where((n_dt > 1) & known, std_dt / period, 0.0)
    last_ts = frames["ts"][ends - 1]
    win_end = (window[starts] + 1) * window_s
    X[:, F["silence"]] = np.where(known, (win_end - last_ts) / period, 0.0)
    n_pairs = np.maximum(n_dt, 1)
    ham_mean = _segment_sum(checks["ham"], starts) / n_pairs
    X[:, F["hamming_z"]] = np.where(
        known & (n_dt > 0), (ham_mean - bl.ham_mean[slot]) / (bl.ham_std[slot] + 0.5), 0.0
    )
    change = _segment_sum(checks["changed"], starts) / n_pairs[:, None]
    dev = change - bl.change_rate[slot]
    other = checks["other_changed"]
    n_other = _segment_sum(other, starts)
    cond = _segment_sum(checks["changed"] & other, starts) / np.maximum(n_other, 1)
    drop = np.where(n_other >= 3, bl.cond_change[slot] - cond, 0.0)
    X[:, F["change_drop"]] = np.where(known, np.maximum(drop.max(axis=1), 0.0), 0.0)
    X[:, F["change_rise"]] = np.where(known & (n_dt > 0), np.maximum(dev.max(axis=1), 0.0), 0.0)
    for name in ("out_of_range", "pair_out", "checksum_err", "novel_payload", "novel_dlc", "coupling_out", "fixed_out"):
        X[:, F[name]] = _segment_sum(checks[name], starts) / count
    for name in ("delta_out", "counter_err"):
        X[:, F[name]] = _segment_sum(checks[name], starts) / n_pairs
    X[:, F["novel_id"]] = np.where(known, 0.0, count)
    attack = np.maximum.reduceat(frames["label"], starts).astype(np.int8)
    rows = Rows(vehicle[starts].astype(np.int64), window[starts], can_id[starts], count, attack, X)
    return rows, last_ts


