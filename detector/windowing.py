"""Tumbling event-time windows per vehicle, folded as frames arrive.

``WindowState.push`` takes any batch of frames (any vehicles, any order inside
the batch) and returns the feature rows of every window that the batch closes.
A vehicle's window closes when one of its frames lies past the window's end.

Frames are not kept: each (vehicle, id) stream has one row in a
``StreamTable`` holding its last frame (for inter-arrival times, payload
changes and counters) and the running sums of its open window (the features
are all counts, sums and extremes), so the state is a fixed ~220 bytes per
stream however busy the bus is. A batch is grouped by stream (in time order
inside the batch), folded into those sums by one compiled loop
(``detector.kernels``), and the groups whose window the batch closed become
feature rows.

The result is identical however a vehicle's stream is cut into batches as
long as each vehicle's frames arrive in time order (Kafka keeps a vehicle's
records in order; each record's frames are sorted on decode). A frame older
than its stream's predecessor in a later batch is folded without a
predecessor; one older than its stream's open window, or than a window the
vehicle already closed, is counted as late and dropped.

A vehicle's first window is partial (the recording or upload began inside it)
and is never scored; neither is the still-open last window at ``flush``.
"""

from __future__ import annotations

import numpy as np

from detector.baseline import Baseline
from detector.features import N_FEATURES, Rows, absent_rows, add_bus_features
from detector.kernels import (
    A_COUNT,
    F_LAST,
    F_MIN,
    N_ACC_F,
    N_ACC_I,
    NO_WINDOW,
    Emitted,
    close,
    fold,
    id_slots,
    segments,
    stream_groups,
    stream_keys,
    window_pass,
)
from detector.schema import take_frames

_NONE = np.iinfo(np.int64).min // 4
_LOW32 = np.uint64(0xFFFF_FFFF)


class StreamTable:
    """One row per (vehicle, id) stream, sorted by key: its last frame, the ts of
    its last frame in a closed window, and the running sums of its open window."""

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.uint64)
        self.last_ts = np.zeros(0)  # nan: no frame yet
        self.last_data = np.zeros((0, 8), np.uint8)
        self.closed_ts = np.zeros(0)  # nan: no closed window yet
        self.open_window = np.zeros(0, np.int64)  # NO_WINDOW: none open
        self.acc_i = np.zeros((0, N_ACC_I), np.int32)
        self.acc_f = np.zeros((0, N_ACC_F))

    _COLUMNS = ("keys", "last_ts", "last_data", "closed_ts", "open_window", "acc_i", "acc_f")

    def __len__(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each key (clipped) and whether it is there."""
        if len(self.keys) == 0:
            return np.zeros(len(keys), np.int64), np.zeros(len(keys), bool)
        pos = np.minimum(np.searchsorted(self.keys, keys), len(self.keys) - 1)
        return pos, self.keys[pos] == keys

    def rows_for(self, keys: np.ndarray) -> np.ndarray:
        """Rows of sorted unique ``keys``, inserting empty streams for new ones."""
        _, found = self.find(keys)
        new = keys[~found]
        if len(new):
            at = np.searchsorted(self.keys, new)
            n = len(new)
            empty_f = np.zeros((n, N_ACC_F))
            empty_f[:, F_MIN] = np.inf
            empty_f[:, F_LAST] = np.nan
            fill = {
                "keys": new,
                "last_ts": np.full(n, np.nan),
                "last_data": np.zeros((n, 8), np.uint8),
                "closed_ts": np.full(n, np.nan),
                "open_window": np.full(n, NO_WINDOW),
                "acc_i": np.zeros((n, N_ACC_I), np.int32),
                "acc_f": empty_f,
            }
            for name in self._COLUMNS:
                setattr(self, name, np.insert(getattr(self, name), at, fill[name], axis=0))
        return np.searchsorted(self.keys, keys)

    def vehicle_rows(self, vehicles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All rows of ``vehicles`` (their streams are contiguous) and each row's vehicle."""
        v = vehicles.astype(np.uint64)
        lo = np.searchsorted(self.keys, v << np.uint64(32))
        hi = np.searchsorted(self.keys, (v + np.uint64(1)) << np.uint64(32))
        n = hi - lo
        rows = np.repeat(lo - np.r_[0, np.cumsum(n)[:-1]], n) + np.arange(n.sum())
        return rows, np.repeat(vehicles, n)

    def keep(self, mask: np.ndarray) -> None:
        for name in self._COLUMNS:
            setattr(self, name, getattr(self, name)[mask])

    def drop_vehicles(self, vehicles: np.ndarray) -> None:
        self.keep(~np.isin(self.keys >> np.uint64(32), vehicles.astype(np.uint64)))

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, name).nbytes for name in self._COLUMNS)


def stream_key(vehicle: np.ndarray, can_id: np.ndarray) -> np.ndarray:
    return (vehicle.astype(np.uint64) << np.uint64(32)) | can_id.astype(np.uint64)


def batch_ids(can_id: np.ndarray, bl: Baseline) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids (the baseline's plus any unseen ones of the batch), and each frame's rank."""
    slot, known = id_slots(can_id, bl.ids)
    if known.all():
        return bl.ids, slot
    ids = np.union1d(bl.ids, can_id[~known]).astype(np.uint32)
    return ids, np.searchsorted(ids, can_id)


class WindowState:
    """Windowing state for the vehicles of one platform (one partition)."""

    def __init__(self, window_s: float) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        self.window_s = float(window_s)
        self.closed_upto = np.zeros(0, np.int64)  # per vehicle: windows below are closed
        self.first_window = np.zeros(0, np.int64)  # per vehicle: partial first window
        self.newest = np.zeros(0)  # per vehicle: newest event time since the last flush
        self.streams = StreamTable()
        self.late_frames = 0
        self.last_late = np.zeros(0, np.int64)

    def _grow(self, n_vehicles: int) -> None:
        if n_vehicles > len(self.closed_upto):
            extra = n_vehicles - len(self.closed_upto)
            self.closed_upto = np.r_[self.closed_upto, np.full(extra, _NONE)]
            self.first_window = np.r_[self.first_window, np.full(extra, _NONE)]
            self.newest = np.r_[self.newest, np.full(extra, -np.inf)]

    def push(self, frames: np.ndarray, vehicle: np.ndarray, bl: Baseline) -> Rows:
        """Add a batch (``vehicle`` = caller's vehicle index per frame); rows of closed windows."""
        vehicle = np.asarray(vehicle, dtype=np.int64)
        self._grow(int(vehicle.max()) + 1 if len(vehicle) else 0)
        can_id = frames["can_id"]
        win, late, n_late, in_batch, id_rank, all_known = window_pass(
            frames["ts"], can_id, vehicle, self.window_s, self.closed_upto, self.first_window,
            self.newest, _NONE, bl.ids,
        )  # fmt: skip
        self.last_late = vehicle[late]  # per late frame, its vehicle index
        self.late_frames += n_late
        if n_late:
            frames, vehicle, win = take_frames(frames, ~late), vehicle[~late], win[~late]
            can_id, id_rank = frames["can_id"], id_rank[~late]
        if len(vehicle) == 0:
            return Rows.empty()

        ids = bl.ids
        if not all_known:  # ids the baseline never saw get ranks of their own
            ids, id_rank = batch_ids(can_id, bl)
        vrank = np.cumsum(in_batch) - 1
        n_keys = int(in_batch.sum()) * len(ids)
        key = stream_keys(vehicle, vrank, id_rank, len(ids))  # ordered by (vehicle, id)
        ts = frames["ts"]
        in_order = False
        if n_keys <= 4 * len(ts) + 100_000:  # else too sparse to count (a fuzzer's extended ids)
            order, in_order, seg_start, groups = stream_groups(key, n_keys, ts, win)
        if not in_order:
            order = np.lexsort((ts, key))
            seg_start, groups = segments(key, win, order)
        first = order[seg_start[:-1]]
        rows = self.streams.rows_for(stream_key(vehicle[first], can_id[first]))

        batch_vehicles = np.flatnonzero(in_batch)
        scan, scan_vehicle = self.streams.vehicle_rows(batch_vehicles)
        emitted = Emitted(groups + len(scan), N_FEATURES)
        late_open = fold(frames, win, order, seg_start, rows, self.streams, bl, self.window_s, emitted)
        cut = np.floor(self.newest / self.window_s)
        cut = np.where(np.isfinite(cut), cut, _NONE).astype(np.int64)
        close(scan, cut[scan_vehicle], self.streams, bl, self.window_s, emitted)
        if late_open.any():
            self.last_late = np.r_[self.last_late, vehicle[late_open]]
            self.late_frames += int(late_open.sum())
        return self._rows(emitted, cut, bl)

    def _rows(self, emitted: Emitted, cut: np.ndarray, bl: Baseline) -> Rows:
        if emitted.n == 0:
            return Rows.empty()
        row, window, X, attack, last_ts, count = emitted.take(np.arange(emitted.n))
        o = np.lexsort((window, row))  # by (vehicle, id, window), as the table is sorted
        row, window, X, attack, last_ts, count = row[o], window[o], X[o], attack[o], last_ts[o], count[o]
        keys = self.streams.keys[row]
        veh = (keys >> np.uint64(32)).astype(np.int64)
        seen = np.zeros(len(self.closed_upto), bool)
        seen[veh] = True
        self.closed_upto[seen] = np.maximum(self.closed_upto[seen], cut[seen])
        present = Rows(veh, window, (keys & _LOW32).astype(np.uint32), count, attack, X)
        closed_ts = self.streams.closed_ts  # before this push's windows

        def last_seen(qveh: np.ndarray, qid: np.ndarray, qwin: np.ndarray) -> np.ndarray:
            qrow, found = self.streams.find(stream_key(qveh, qid))
            w0 = int(window.min()) - 1
            span = int(window.max()) - w0 + 2
            gkey = row * span + (window - w0)
            j = np.searchsorted(gkey, qrow * span + (qwin - w0)) - 1
            jc = np.maximum(j, 0)
            hit = found & (j >= 0) & (row[jc] == qrow)
            before = np.where(found, closed_ts[qrow] if len(closed_ts) else np.nan, np.nan)
            return np.where(hit, last_ts[jc], before)

        absent = absent_rows(present, bl, last_seen, self.window_s)
        newest_per_row = np.r_[row[1:] != row[:-1], True]
        self.streams.closed_ts[row[newest_per_row]] = last_ts[newest_per_row]
        rows = Rows.concat([present, absent])
        add_bus_features(rows, bl)
        scored = rows.window > self.first_window[rows.vehicle]
        return rows.take(np.flatnonzero(scored))

    def close_vehicles(self, vehicles: np.ndarray, bl: Baseline) -> Rows:
        """Close the open window of each of ``vehicles`` now, as a later frame would:
        for vehicles that went quiet, whose last window would otherwise never close."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        vehicles = vehicles[vehicles < len(self.closed_upto)]
        rows, row_vehicle = self.streams.vehicle_rows(vehicles)
        open_w = self.streams.open_window[rows]
        has = open_w != NO_WINDOW
        if not has.any():
            return Rows.empty()
        cut = self.closed_upto.copy()
        np.maximum.at(cut, row_vehicle[has], open_w[has] + 1)
        emitted = Emitted(len(rows), N_FEATURES)
        close(rows, cut[row_vehicle], self.streams, bl, self.window_s, emitted)
        return self._rows(emitted, cut, bl)

    def flush(self) -> int:
        """End of stream: drop the still-open windows (partial, never scored).

        Returns the number of frames dropped.
        """
        st = self.streams
        open_ = np.flatnonzero(st.open_window != NO_WINDOW)
        n = int(st.acc_i[open_, A_COUNT].sum())
        if len(open_):
            veh = (st.keys[open_] >> np.uint64(32)).astype(np.int64)
            np.maximum.at(self.closed_upto, veh, st.open_window[open_] + 1)
            st.open_window[open_] = NO_WINDOW
            st.acc_i[open_] = 0
            st.acc_f[open_] = [0.0, 0.0, np.inf, np.nan]
        self.newest[:] = -np.inf
        return n

    def forget_vehicles(self, vehicles: np.ndarray) -> None:
        """Drop all state of some vehicles (e.g. partitions revoked)."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        self.streams.drop_vehicles(vehicles)
        valid = vehicles[vehicles < len(self.closed_upto)]
        self.closed_upto[valid] = _NONE
        self.first_window[valid] = _NONE
        self.newest[valid] = -np.inf

    @property
    def nbytes(self) -> int:
        return (
            self.closed_upto.nbytes
            + self.first_window.nbytes
            + self.newest.nbytes
            + self.streams.nbytes
        )
