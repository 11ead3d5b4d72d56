"""Tumbling event-time windows per vehicle, with state carried between batches.

``WindowState.push`` takes any batch of frames (any vehicles, any order inside
the batch) and returns the feature rows of every window that the batch closes.
A vehicle's window closes when one of its frames is at least ``lateness_s``
past the window's end; frames of still-open windows are carried to the next
push, and each (vehicle, id) stream keeps its last frame so inter-arrival
times, payload changes and counters continue across batch boundaries. The
result is identical however the stream is cut into batches.

A vehicle's first window is partial (the recording or upload began inside it)
and is never scored; neither is the still-open last window at ``flush``.
Frames older than an already closed window are counted as late and dropped.
"""

from __future__ import annotations

import numpy as np

from detector.baseline import Baseline
from detector.features import Rows, absent_rows, add_bus_features, present_rows
from detector.kernels import id_slots, stream_order
from detector.schema import FRAME_DTYPE, concat_frames, take_frames

_NONE = np.iinfo(np.int64).min // 4


class StreamTable:
    """Last frame (ts, payload) of each (vehicle, id) stream, sorted by key."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.uint64)
        self.ts = np.zeros(0, np.float64)
        self.data = np.zeros((0, 8), np.uint8)

    def lookup(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = np.searchsorted(self.keys, keys)
        pos_c = np.minimum(pos, max(len(self.keys) - 1, 0))
        found = (self.keys[pos_c] == keys) if len(self.keys) else np.zeros(len(keys), bool)
        ts = np.where(found, self.ts[pos_c] if len(self.keys) else np.nan, np.nan)
        data = np.where(found[:, None], self.data[pos_c] if len(self.keys) else 0, 0).astype(
            np.uint8
        )
        return found, ts, data

    def update(self, keys: np.ndarray, ts: np.ndarray, data: np.ndarray) -> None:
        """Insert or overwrite; ``keys`` must be unique."""
        all_keys = np.concatenate([keys, self.keys])
        # new values first so np.unique's first occurrence picks them
        uniq, first = np.unique(all_keys, return_index=True)
        self.keys = uniq
        self.ts = np.concatenate([ts, self.ts])[first]
        self.data = np.concatenate([data, self.data])[first]

    def drop_vehicles(self, vehicles: np.ndarray) -> None:
        keep = ~np.isin(self.keys >> np.uint64(32), vehicles.astype(np.uint64))
        self.keys, self.ts, self.data = self.keys[keep], self.ts[keep], self.data[keep]

    @property
    def nbytes(self) -> int:
        return self.keys.nbytes + self.ts.nbytes + self.data.nbytes


def stream_key(vehicle: np.ndarray, can_id: np.ndarray) -> np.ndarray:
    return (vehicle.astype(np.uint64) << np.uint64(32)) | can_id.astype(np.uint64)


def batch_ids(can_id: np.ndarray, bl: Baseline) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids (the baseline's plus any unseen ones of the batch), and each frame's rank."""
    slot, known = id_slots(can_id, bl.ids)
    if known.all():
        return bl.ids, slot
    ids = np.union1d(bl.ids, can_id[~known]).astype(np.uint32)
    return ids, np.searchsorted(ids, can_id)


def stream_sort(key: np.ndarray, n_keys: int, ts: np.ndarray) -> np.ndarray:
    """Positions grouping frames by ``key``, each group in time order (ties: arrival order).

    Frames usually arrive in time order per stream, so a linear counting sort
    does; when they do not, or keys are too sparse for counting (a fuzzer's
    random extended ids), a comparison sort.
    """
    if n_keys <= 4 * len(key) + 100_000:
        order, in_order = stream_order(key, n_keys, ts)
        if in_order:
            return order
    return np.lexsort((ts, key))


class WindowState:
    """Carried windowing state for the vehicles of one platform (one partition)."""

    def __init__(self, window_s: float, lateness_s: float = 0.0) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self.lateness_s = float(lateness_s)
        self.carry = np.zeros(0, FRAME_DTYPE)
        self.carry_vehicle = np.zeros(0, np.int64)
        self.closed_upto = np.zeros(0, np.int64)  # per vehicle: windows below are closed
        self.first_window = np.zeros(0, np.int64)  # per vehicle: partial first window
        self.streams = StreamTable()
        self.late_frames = 0
        self.last_late = np.zeros(0, np.int64)

    def _grow(self, n_vehicles: int) -> None:
        if n_vehicles > len(self.closed_upto):
            extra = n_vehicles - len(self.closed_upto)
            self.closed_upto = np.r_[self.closed_upto, np.full(extra, _NONE)]
            self.first_window = np.r_[self.first_window, np.full(extra, _NONE)]

    def push(self, frames: np.ndarray, vehicle: np.ndarray, bl: Baseline) -> Rows:
        """Add a batch (``vehicle`` = caller's vehicle index per frame); rows of closed windows."""
        vehicle = np.asarray(vehicle, dtype=np.int64)
        self._grow(int(vehicle.max()) + 1 if len(vehicle) else 0)
        win = np.floor(frames["ts"] / self.window_s).astype(np.int64)
        late = win < self.closed_upto[vehicle]
        self.last_late = vehicle[late]  # per-frame vehicle index of the frames dropped as late
        if late.any():
            self.late_frames += int(late.sum())
            frames, vehicle, win = take_frames(frames, ~late), vehicle[~late], win[~late]
        if len(vehicle):
            earliest = np.full(len(self.first_window), np.iinfo(np.int64).max)
            np.minimum.at(earliest, vehicle, win)
            fresh = (self.first_window == _NONE) & (earliest != np.iinfo(np.int64).max)
            self.first_window[fresh] = earliest[fresh]
        # arrival order is kept: _rows groups the closed frames by stream itself
        allf = concat_frames([self.carry, frames])
        allv = np.concatenate([self.carry_vehicle, vehicle])
        win = np.floor(allf["ts"] / self.window_s).astype(np.int64)
        # per-vehicle watermark: the newest event time seen for it
        newest = np.full(len(self.closed_upto), -np.inf)
        np.maximum.at(newest, allv, allf["ts"])
        cut = np.floor((newest - self.lateness_s) / self.window_s)
        cut = np.where(np.isfinite(cut), cut, _NONE).astype(np.int64)
        closed = win < cut[allv]
        self.carry, self.carry_vehicle = take_frames(allf, ~closed), allv[~closed]
        cv = allv[closed]
        seen = np.zeros(len(self.closed_upto), bool)
        seen[cv] = True
        self.closed_upto[seen] = np.maximum(self.closed_upto[seen], cut[seen])
        return self._rows(take_frames(allf, closed), cv, win[closed], bl)

    def flush(self) -> int:
        """End of stream: drop the still-open windows (partial, never scored).

        Returns the number of frames dropped.
        """
        n = len(self.carry)
        if n:
            win = np.floor(self.carry["ts"] / self.window_s).astype(np.int64)
            np.maximum.at(self.closed_upto, self.carry_vehicle, win + 1)
        self.carry, self.carry_vehicle = self.carry[:0], self.carry_vehicle[:0]
        return n

    def forget_vehicles(self, vehicles: np.ndarray) -> None:
        """Drop all state of some vehicles (e.g. partitions revoked)."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        keep = ~np.isin(self.carry_vehicle, vehicles)
        self.carry, self.carry_vehicle = self.carry[keep], self.carry_vehicle[keep]
        self.streams.drop_vehicles(vehicles)
        valid = vehicles[vehicles < len(self.closed_upto)]
        self.closed_upto[valid] = _NONE
        self.first_window[valid] = _NONE

    def _rows(self, frames: np.ndarray, vehicle: np.ndarray, win: np.ndarray, bl: Baseline) -> Rows:
        if len(frames) == 0:
            return Rows.empty()
        can_id = frames["can_id"]
        ids, id_rank = batch_ids(can_id, bl)
        n_ids = len(ids)
        in_batch = np.zeros(len(self.closed_upto), bool)
        in_batch[vehicle] = True
        vrank = np.cumsum(in_batch) - 1
        key = vrank[vehicle] * n_ids + id_rank  # stream number, ordered by (vehicle, id)
        order = stream_sort(key, int(in_batch.sum()) * n_ids, frames["ts"])
        skey = key[order]
        swin = win[order]
        stream_first = np.r_[True, skey[1:] != skey[:-1]]
        starts = np.flatnonzero(stream_first | np.r_[True, swin[1:] != swin[:-1]])
        first = order[stream_first]
        carried = self.streams.lookup(stream_key(vehicle[first], can_id[first]))
        present, group_last = present_rows(
            frames, order, stream_first, carried, starts, vehicle, win, bl, self.window_s
        )
        group_stream = skey[starts]
        before = self.streams  # state before this batch's frames

        def last_seen(qveh: np.ndarray, qid: np.ndarray, qwin: np.ndarray) -> np.ndarray:
            pos = np.minimum(np.searchsorted(ids, qid), n_ids - 1)
            known_id = ids[pos] == qid
            qstream = np.where(known_id, vrank[qveh] * n_ids + pos, -1)
            w0 = int(present.window.min()) - 1
            span = int(present.window.max()) - w0 + 2
            gkey = group_stream * span + (present.window - w0)
            qkey = qstream * span + (qwin - w0)
            j = np.searchsorted(gkey, qkey) - 1
            jc = np.maximum(j, 0)
            hit = known_id & (j >= 0) & (group_stream[jc] == qstream)
            _, ts_before, _ = before.lookup(stream_key(qveh, qid))
            return np.where(hit, group_last[jc], ts_before)

        absent = absent_rows(present, bl, last_seen, self.window_s)
        last = order[np.r_[stream_first[1:], True]]
        self.streams.update(
            stream_key(vehicle[last], can_id[last]), frames["ts"][last], frames["data"][last]
        )
        rows = Rows.concat([present, absent])
        add_bus_features(rows, bl)
        scored = rows.window > self.first_window[rows.vehicle]
        return rows.take(np.flatnonzero(scored))

    @property
    def nbytes(self) -> int:
        return (
            self.carry.nbytes
            + self.carry_vehicle.nbytes
            + self.closed_upto.nbytes
            + self.first_window.nbytes
            + self.streams.nbytes
        )
