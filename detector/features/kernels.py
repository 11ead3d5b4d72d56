"""Compiled passes over a batch of frames (numba), and the fold's entry points.

Before the fold, a batch is placed: each frame's window and its id's slot in the
baseline (``window_pass``, ``id_slots``), then its order by (vehicle, id) stream
and time, with the bounds of each stream's run (``stream_keys``,
``stream_groups``, or ``segments`` after a comparison sort). ``fold`` and
``close`` then run the fold (``detector.features.fold_kernel``) over those runs.

Each pass compiles in nothing from another file (numba's on-disk cache only
sees the file a function is defined in change).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from detector.core.schema import DLC_MASKS, frame_words
from detector.features.baseline import Baseline
from detector.features.fold_kernel import _close, _fold
from detector.features.fold_steps import _CRC8_POW

_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)  # as the baseline salts its payload hashes


@njit(cache=True, nogil=True)
def _id_table(ids):  # pragma: no cover - compiled
    """Position of each standard id (0..0x7FF) in the sorted ``ids``, -1 if not there."""
    lut = np.full(2048, -1, np.int64)
    for k in range(ids.shape[0]):
        if ids[k] < 2048:
            lut[ids[k]] = k
    return lut


@njit(cache=True, nogil=True)
def id_slots(can_id, ids):  # pragma: no cover - compiled
    """``Baseline.slots``: each id's position in the sorted ``ids`` (clipped) and
    whether it is there; the table answers standard ids without a search."""
    n_ids = ids.shape[0]
    lut = _id_table(ids)
    slot = np.zeros(can_id.shape[0], np.int64)
    known = np.zeros(can_id.shape[0], np.bool_)
    for i in range(can_id.shape[0]):
        c = can_id[i]
        k = lut[c] if c < 2048 else -1
        if k < 0 and n_ids > 0:
            k = min(np.searchsorted(ids, c), n_ids - 1)
        elif k >= 0:
            known[i] = True
        if k >= 0:
            slot[i] = k
            if not known[i]:
                known[i] = ids[k] == c
    return slot, known


@njit(cache=True, nogil=True)
def window_pass(  # pragma: no cover - compiled
    ts, can_id, vehicle, window_s, closed_upto, first_window, newest, none, ids, gap_s,
    gap_at, gap_from,
):  # fmt: skip
    """Each frame's window, whether it is late (in a window its vehicle has
    closed), and its id's slot in the sorted baseline ``ids`` (0 for an id not
    there, and then ``all_known`` is False). Over the frames that are not
    late: per vehicle, set ``first_window`` if still ``none``, raise ``newest``
    to the newest ts, and mark it in the batch. Each frame newer than its
    vehicle's newest by more than ``gap_s`` is a candidate telemetry gap: its
    index in ``gap_at`` and that newest ts in ``gap_from`` (as many as the
    returned ``n_gaps``; frames of the batch out of order may fill it). ``disorder``:
    per vehicle, whether its frames that are not late came out of time order (then its
    candidates are not all its gaps: see ``windowing._true_gaps``)."""
    n = ts.shape[0]
    n_ids = ids.shape[0]
    lut = _id_table(ids)
    win = np.empty(n, np.int64)
    late = np.zeros(n, np.bool_)
    slot = np.zeros(n, np.int64)
    in_batch = np.zeros(closed_upto.shape[0], np.bool_)
    earliest = np.full(closed_upto.shape[0], np.iinfo(np.int64).max)
    previous = np.full(closed_upto.shape[0], -np.inf)
    disorder = np.zeros(closed_upto.shape[0], np.bool_)
    n_late = 0
    n_gaps = 0
    all_known = True
    for i in range(n):
        w = np.int64(np.floor(ts[i] / window_s))
        win[i] = w
        v = vehicle[i]
        if w < closed_upto[v]:
            late[i] = True
            n_late += 1
            continue
        in_batch[v] = True
        if w < earliest[v]:
            earliest[v] = w
        if ts[i] < previous[v]:
            disorder[v] = True
        previous[v] = ts[i]
        if ts[i] > newest[v]:
            if ts[i] - newest[v] > gap_s and newest[v] > -np.inf:
                gap_at[n_gaps] = i
                gap_from[n_gaps] = newest[v]
                n_gaps += 1
            newest[v] = ts[i]
        c = can_id[i]
        k = lut[c] if c < 2048 else -1
        if k < 0 and c >= 2048 and n_ids > 0:  # extended: a binary search
            k = min(np.searchsorted(ids, c), n_ids - 1)
            if ids[k] != c:
                k = -1
        if k < 0:
            all_known = False
        else:
            slot[i] = k
    for v in range(closed_upto.shape[0]):
        if in_batch[v] and first_window[v] == none:
            first_window[v] = earliest[v]
    return win, late, n_late, in_batch, slot, all_known, earliest, n_gaps, disorder


@njit(cache=True, nogil=True)
def stream_groups(key, n_keys, ts, win):  # pragma: no cover - compiled
    """Counting sort of frames by stream ``key`` (0..n_keys-1, see ``stream_keys``),
    stable, with the bounds of each stream's run (plus a final end) and the
    number of (stream, window) groups. ``in_order`` False when some stream's
    frames were not in time order: then the rest is not valid and the caller
    sorts by (key, ts) and calls ``segments``."""
    n = key.shape[0]
    pos = np.zeros(n_keys + 1, np.int64)
    for i in range(n):
        pos[key[i] + 1] += 1
    n_seg = 0
    for k in range(n_keys):
        if pos[k + 1] > 0:
            n_seg += 1
        pos[k + 1] += pos[k]
    starts = np.empty(n_seg + 1, np.int64)
    q = 0
    for k in range(n_keys):
        if pos[k + 1] > pos[k]:
            starts[q] = pos[k]
            q += 1
    starts[n_seg] = n
    order = np.empty(n, np.int64)
    last_ts = np.full(n_keys, -np.inf)
    last_w = np.zeros(n_keys, np.int64)
    seen = np.zeros(n_keys, np.bool_)
    in_order = True
    changes = 0
    for i in range(n):
        k = key[i]
        if ts[i] < last_ts[k]:
            in_order = False
        last_ts[k] = ts[i]
        if seen[k] and win[i] != last_w[k]:
            changes += 1  # in arrival order, which is time order when in_order
        seen[k] = True
        last_w[k] = win[i]
        order[pos[k]] = i
        pos[k] += 1
    return order, in_order, starts, n_seg + changes


@njit(cache=True, nogil=True)
def stream_keys(vehicle, vrank, id_rank, n_ids):  # pragma: no cover - compiled
    """Stream number of each frame, ordered by (vehicle, id)."""
    key = np.empty(vehicle.shape[0], np.int64)
    for i in range(vehicle.shape[0]):
        key[i] = vrank[vehicle[i]] * n_ids + id_rank[i]
    return key


@njit(cache=True, nogil=True)
def segments(key, win, order):  # pragma: no cover - compiled
    """Bounds of each stream's run in ``order`` (with a final end), and the number
    of (stream, window) groups: each can close the one before it."""
    n = order.shape[0]
    starts = np.empty(n + 1, np.int64)
    n_seg = 0
    groups = 0
    for i in range(n):
        j = order[i]
        if i == 0 or key[j] != key[order[i - 1]]:
            starts[n_seg] = i
            n_seg += 1
            groups += 1
        elif win[j] != win[order[i - 1]]:
            groups += 1
    starts[n_seg] = n
    return starts[: n_seg + 1], groups


class Emitted:
    """Groups closed by one push: table row, window, features (bus columns 0) and
    after them the mean of the id's cross-coupled word, the note of its byte furthest
    outside its range, those of its bytes furthest below and above their learned
    change rates, those of the window's first byte step outside the learned ones, its
    first broken coupling and its first broken byte pair (``n_features`` + 7 columns)."""

    def __init__(self, capacity: int, n_features: int) -> None:
        self.row = np.zeros(capacity, np.int64)
        self.window = np.zeros(capacity, np.int64)
        self.X = np.zeros((capacity, n_features + 7))
        self.attack = np.zeros(capacity, np.int8)
        self.last_ts = np.zeros(capacity)
        self.count = np.zeros(capacity, np.int64)
        self.n = 0

    def buffers(self) -> tuple:
        return self.row, self.window, self.X, self.attack, self.last_ts, self.count

    def take(self, idx: np.ndarray) -> tuple:
        return tuple(a[idx] for a in self.buffers())


def fold(
    frames: np.ndarray,
    win: np.ndarray,
    order: np.ndarray,
    seg_start: np.ndarray,
    seg_row: np.ndarray,
    table,
    bl: Baseline,
    window_s: float,
    emitted: Emitted,
) -> np.ndarray:
    """Fold ``frames[order]`` (grouped by stream: ``seg_start`` bounds, table row
    ``seg_row``) into the table's open groups, closing a stream's open group when
    its next window begins. Returns the per-frame "late" mask: frames older than
    their stream's open window, which are not folded."""
    ids = (table.keys[seg_row] & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    slot, known = id_slots(ids, bl.ids)
    late = np.zeros(len(frames), np.bool_)
    emitted.n = _fold(
        order, seg_start, seg_row, slot, known,
        frames["ts"], frames["can_id"], frames["dlc"], frame_words(np.ascontiguousarray(frames))[:, 2], frames["label"], win,
        table.last_ts, table.last_data, table.open_window, table.acc_i, table.acc_f,
        float(window_s), bl.period, bl.mean_count, bl.ham_mean, bl.ham_std, bl.change_rate,
        bl.cond_change, bl.byte_min, bl.byte_max, bl.delta_min, bl.delta_max,
        bl.pair_min, bl.pair_max, bl.pair_tight, bl.counter_byte, bl.counter_mask,
        bl.counter_shift, bl.counter_step, bl.counter2_byte, bl.counter2_mask,
        bl.counter2_shift, bl.counter2_step, bl.checksum_kind, bl.checksum_byte, bl.has_dict,
        bl.payload_hashes.astype(np.uint64), bl.dlc_mask,
        bl.couple_a, bl.couple_b, bl.couple_le, bl.couple_lo, bl.couple_hi, bl.couple_rel,
        bl.fixed_mask.astype(np.uint64), bl.fixed_value.astype(np.uint64),
        bl.signal_at, bl.signal_be, _CRC8_POW, DLC_MASKS, _HASH_MUL,
        late, *emitted.buffers(),
    )  # fmt: skip
    return late


def close(
    rows: np.ndarray, cut: np.ndarray, table, bl: Baseline, window_s: float, emitted: Emitted
) -> None:
    """Close the open groups of table ``rows`` whose window lies before ``cut`` (per row)."""
    ids = (table.keys[rows] & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    slot, known = id_slots(ids, bl.ids)
    emitted.n = _close(
        rows, slot, known, cut, table.open_window, table.acc_i, table.acc_f, float(window_s),
        bl.period, bl.mean_count, bl.ham_mean, bl.ham_std, bl.change_rate, bl.cond_change,
        emitted.n, *emitted.buffers(),
    )  # fmt: skip
