"""Window features: pure functions over frame arrays, no I/O, no per-frame Python.

One feature row per (vehicle, CAN id, window) for every id seen in a window and
for every *expected* id that is absent from it (suspension attacks are
absences). Every value is relative to the platform's learned ``Baseline`` so one
model serves all ids. The vehicle-level (bus) features are repeated on each of
the vehicle's rows for that window.

Inputs are the frames of *closed* windows, grouped by stream and in time order,
plus, for the first frame of each stream, the stream's previous frame (carried
across batches by ``detector.windowing``) — so features never depend on how a
stream was cut into batches.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.baseline import PAIRS, Baseline, checksum_values, payload_hash, payload_u64

FEATURE_NAMES: tuple[str, ...] = (
    "rate",  # frames / learned frames per window
    "dt_min",  # shortest inter-arrival / learned period
    "dt_mean",  # mean inter-arrival / learned period
    "dt_cv",  # inter-arrival std / learned period
    "silence",  # time since the id's last frame at window end / learned period
    "hamming_z",  # mean Hamming distance between consecutive payloads, z vs learned
    "change_drop",  # largest fall of a byte's rate of changing with the rest of the payload (frozen byte)
    "change_rise",  # largest rise of a byte's change rate above its learned rate
    "out_of_range",  # frames with a byte outside its learned range
    "delta_out",  # frames whose byte-to-byte change exceeds the learned range
    "pair_out",  # frames breaking a learned coupling between two bytes
    "counter_err",  # frames whose counter does not step as learned
    "checksum_err",  # frames whose learned checksum does not match
    "novel_payload",  # frames with a payload never seen (ids with few distinct payloads)
    "novel_dlc",  # frames with a DLC never seen for the id
    "novel_id",  # 1 if the id was never seen on this platform
    "bus_load",  # vehicle's frames in the window / learned
    "bus_novel",  # fraction of the vehicle's frames with unseen ids
    "bus_missing",  # fraction of expected ids absent
    "bus_ids",  # distinct ids / learned
)
F = {name: i for i, name in enumerate(FEATURE_NAMES)}
N_FEATURES = len(FEATURE_NAMES)


@dataclass
class Rows:
    """Feature rows; ``vehicle`` indexes the caller's vehicle table."""

    vehicle: np.ndarray  # (r,) i8
    window: np.ndarray  # (r,) i8 window index (start = window * window_s)
    can_id: np.ndarray  # (r,) u4
    count: np.ndarray  # (r,) i8
    attack: np.ndarray  # (r,) i1 most severe ground-truth label among the row's frames
    X: np.ndarray  # (r, N_FEATURES) f8

    def __len__(self) -> int:
        return len(self.vehicle)

    @staticmethod
    def empty() -> Rows:
        return Rows(
            np.zeros(0, np.int64),
            np.zeros(0, np.int64),
            np.zeros(0, np.uint32),
            np.zeros(0, np.int64),
            np.zeros(0, np.int8),
            np.zeros((0, N_FEATURES)),
        )

    def take(self, idx: np.ndarray) -> Rows:
        return Rows(
            self.vehicle[idx],
            self.window[idx],
            self.can_id[idx],
            self.count[idx],
            self.attack[idx],
            self.X[idx],
        )

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        parts = [p for p in parts if len(p)]
        if not parts:
            return Rows.empty()
        return Rows(
            *(
                np.concatenate([getattr(p, a) for p in parts])
                for a in ("vehicle", "window", "can_id", "count", "attack")
            ),
            np.concatenate([p.X for p in parts]),
        )


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
        b = bl.counter_byte[s].astype(np.int64)
        mask = bl.counter_mask[s].astype(np.int64)
        shift = bl.counter_shift[s].astype(np.int64)
        cur = (data[idx, b].astype(np.int64) & mask) >> shift
        prv = (prev_data[idx, b].astype(np.int64) & mask) >> shift
        counter_err[idx] = ((cur - prv) % ((mask >> shift) + 1)) != bl.counter_step[s]
    checksum_err = np.zeros(len(frames), bool)
    kinds = np.where(known, bl.checksum_kind[slot], 0)
    for kind in np.unique(kinds[kinds > 0]):
        idx = np.flatnonzero(kinds == kind)
        pos_code = bl.checksum_byte[slot[idx]].astype(np.int64)
        pos = np.where(pos_code == -2, dlc[idx].astype(np.int64) - 1, pos_code)
        pos = np.clip(pos, 0, 7)
        expect = checksum_values(int(kind), data[idx], dlc[idx], can_id[idx], pos)
        checksum_err[idx] = expect != data[idx, pos]
    novel_payload = np.zeros(len(frames), bool)
    dict_ids = known & bl.has_dict[slot]
    if dict_ids.any() and len(bl.payload_hashes):
        idx = np.flatnonzero(dict_ids)
        h = payload_hash(slot[idx], payload_u64(data[idx]))
        pos = np.minimum(np.searchsorted(bl.payload_hashes, h), len(bl.payload_hashes) - 1)
        novel_payload[idx] = bl.payload_hashes[pos] != h
    novel_dlc = known & ((bl.dlc_mask[slot] >> dlc.astype(np.uint16)) & 1 == 0)
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
    min_dt = np.minimum.reduceat(np.where(has_dt, dt, np.inf), starts)
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
    for name in ("out_of_range", "pair_out", "checksum_err", "novel_payload", "novel_dlc"):
        X[:, F[name]] = _segment_sum(checks[name], starts) / count
    for name in ("delta_out", "counter_err"):
        X[:, F[name]] = _segment_sum(checks[name], starts) / n_pairs
    X[:, F["novel_id"]] = (~known).astype(np.float64)
    attack = np.maximum.reduceat(frames["label"], starts).astype(np.int8)
    rows = Rows(vehicle[starts].astype(np.int64), window[starts], can_id[starts], count, attack, X)
    return rows, last_ts


def absent_rows(
    present: Rows,
    bl: Baseline,
    last_seen: callable,
    window_s: float,
) -> Rows:
    """Rows (count 0) for expected ids missing from a (vehicle, window) that has frames.

    ``last_seen(vehicle, can_id, window)`` returns, vectorized, the ts of each
    stream's last frame before that window (nan if never).
    """
    exp_ids = bl.ids[bl.expected]
    if len(present) == 0 or len(exp_ids) == 0:
        return Rows.empty()
    vw = np.unique(np.stack([present.vehicle, present.window], axis=1), axis=0)
    veh = np.repeat(vw[:, 0], len(exp_ids))
    win = np.repeat(vw[:, 1], len(exp_ids))
    ids = np.tile(exp_ids, len(vw))
    have = set_membership(
        (present.vehicle, present.window, present.can_id.astype(np.int64)),
        (veh, win, ids.astype(np.int64)),
    )
    veh, win, ids = veh[~have], win[~have], ids[~have]
    if len(veh) == 0:
        return Rows.empty()
    slot, _ = bl.slots(ids)
    period = np.where(
        np.isfinite(bl.period[slot]) & (bl.period[slot] > 0), bl.period[slot], window_s
    )
    last = last_seen(veh, ids, win)
    silence = np.where(np.isnan(last), window_s / period, ((win + 1) * window_s - last) / period)
    X = np.zeros((len(veh), N_FEATURES))
    X[:, F["dt_min"]] = 1.0
    X[:, F["dt_mean"]] = 1.0
    X[:, F["silence"]] = silence
    return Rows(veh, win, ids, np.zeros(len(veh), np.int64), np.zeros(len(veh), np.int8), X)


def set_membership(
    have: tuple[np.ndarray, np.ndarray, np.ndarray],
    query: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> np.ndarray:
    """For each query triple, whether it occurs in ``have`` (integer columns)."""
    cols_h = np.stack(have, axis=1)
    cols_q = np.stack(query, axis=1)
    both = np.concatenate([cols_h, cols_q])
    _, inv = np.unique(both, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    present = np.zeros(inv.max() + 1, bool)
    present[inv[: len(cols_h)]] = True
    return present[inv[len(cols_h) :]]


def add_bus_features(rows: Rows, bl: Baseline) -> None:
    """Fill the vehicle-level columns of ``rows`` in place."""
    if len(rows) == 0:
        return
    key_rows = np.stack([rows.vehicle, rows.window], axis=1)
    vw, inv = np.unique(key_rows, axis=0, return_inverse=True)
    inv = inv.reshape(-1)
    present = rows.count > 0
    frames_per = np.bincount(inv, weights=rows.count, minlength=len(vw))
    ids_per = np.bincount(inv, weights=present, minlength=len(vw))
    novel_per = np.bincount(inv, weights=rows.count * rows.X[:, F["novel_id"]], minlength=len(vw))
    missing = np.bincount(inv, weights=~present, minlength=len(vw))
    n_expected = max(int(bl.expected.sum()), 1)
    rows.X[:, F["bus_load"]] = frames_per[inv] / max(bl.bus_mean_frames, 1.0)
    rows.X[:, F["bus_novel"]] = novel_per[inv] / np.maximum(frames_per[inv], 1)
    rows.X[:, F["bus_missing"]] = missing[inv] / n_expected
    rows.X[:, F["bus_ids"]] = ids_per[inv] / max(bl.bus_mean_ids, 1.0)
