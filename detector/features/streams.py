"""The rows of (vehicle, CAN id) streams: a pool of rows, a hash index, a list per vehicle.

A row holds one stream's last frame and the running sums of its open window
(see ``detector.features.windowing``). Rows are allocated when a stream's first frame
arrives and freed when the stream is dropped; a freed row is reused. Nothing
here costs time in proportion to the whole table:

- adding k streams is O(k), amortised: the columns grow by an eighth when
  full (and the hash index is rebuilt at most half full once it is three
  quarters full), so a stream is copied a few times over its life, never once
  per batch;
- finding a key is one probe of an open-addressing hash index (linear
  probing; a freed key leaves a tombstone until the index is rebuilt);
- the rows of a vehicle are found through its own linked list, in time
  proportional to its streams.

Row order means nothing: callers sort what they emit by key.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from detector.features.fold_steps import F_LAST, F_MIN, F_MIN2, N_ACC_F, N_ACC_I, NO_WINDOW

FREE_KEY = np.uint64(0xFFFF_FFFF_FFFF_FFFF)  # the key of a row not in use
_EMPTY, _TOMB = -1, -2  # index slots: never used, freed
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_GROWTH = 1.125  # columns grow by this factor: at most 1/8 spare, ~8 copies of a row in its life
_MIN_ROWS = 1024
_MAX_LOAD = 3 / 4  # index slots used (live + tombstones) before it is rebuilt


@njit(cache=True, nogil=True, inline="always")
def _slot(key, mask):  # pragma: no cover - compiled
    return np.int64((key * _HASH_MUL) >> np.uint64(32)) & mask


@njit(cache=True, nogil=True)
def _find(slots, row_keys, keys):  # pragma: no cover - compiled
    """Row of each key, -1 where it has none."""
    mask = slots.shape[0] - 1
    out = np.full(keys.shape[0], -1, np.int64)
    for i in range(keys.shape[0]):
        k = keys[i]
        s = _slot(k, mask)
        while True:
            r = slots[s]
            if r == _EMPTY:
                break
            if r >= 0 and row_keys[r] == k:
                out[i] = r
                break
            s = (s + 1) & mask
    return out


@njit(cache=True, nogil=True)
def _insert(slots, row_keys, rows):  # pragma: no cover - compiled
    """Index ``rows`` (their keys absent from the index); returns tombstones reused."""
    mask = slots.shape[0] - 1
    reused = 0
    for i in range(rows.shape[0]):
        r = rows[i]
        s = _slot(row_keys[r], mask)
        while slots[s] >= 0:
            s = (s + 1) & mask
        if slots[s] == _TOMB:
            reused += 1
        slots[s] = r
    return reused


@njit(cache=True, nogil=True)
def _delete(slots, row_keys, rows):  # pragma: no cover - compiled
    mask = slots.shape[0] - 1
    for i in range(rows.shape[0]):
        r = rows[i]
        s = _slot(row_keys[r], mask)
        while slots[s] != r:
            s = (s + 1) & mask
        slots[s] = _TOMB


@njit(cache=True, nogil=True)
def _link(head, count, next_row, rows, vehicles):  # pragma: no cover - compiled
    for i in range(rows.shape[0]):
        v = vehicles[i]
        next_row[rows[i]] = head[v]
        head[v] = rows[i]
        count[v] += 1


@njit(cache=True, nogil=True)
def _walk(head, count, next_row, vehicles):  # pragma: no cover - compiled
    """Rows of each of ``vehicles`` (its list, newest first) and each row's position
    in ``vehicles``."""
    n = 0
    for i in range(vehicles.shape[0]):
        n += count[vehicles[i]]
    rows = np.empty(n, np.int64)
    which = np.empty(n, np.int64)
    q = 0
    for i in range(vehicles.shape[0]):
        r = head[vehicles[i]]
        while r >= 0:
            rows[q] = r
            which[q] = i
            q += 1
            r = next_row[r]
    return rows, which


def grown(a: np.ndarray, n: int, fill) -> np.ndarray:
    """``a`` with ``n`` rows: its own, then rows of ``fill``."""
    out = np.empty((n, *a.shape[1:]), a.dtype)
    out[: len(a)] = a
    out[len(a) :] = fill
    return out


class StreamTable:
    """One row per (vehicle, id) stream (key = vehicle << 32 | id): its last frame, the
    ts of its last frame in a closed window, and the running sums of its open window."""

    _COLUMNS = (
        "keys", "last_ts", "last_data", "closed_ts", "open_window", "acc_i", "acc_f", "kind",
        "next_row",
    )  # fmt: skip

    def __init__(self) -> None:
        self.keys = np.zeros(0, np.uint64)
        self.last_ts = np.zeros(0)  # nan: no frame yet
        self.last_data = np.zeros((0, 8), np.uint8)
        self.closed_ts = np.zeros(0)  # nan: no closed window yet
        self.open_window = np.zeros(0, np.int64)  # NO_WINDOW: none open
        self.acc_i = np.zeros((0, N_ACC_I), np.int32)
        self.acc_f = np.zeros((0, N_ACC_F))
        self.kind = np.zeros(0, np.uint8)  # the caller's class of the stream (0 when added)
        self.next_row = np.zeros(0, np.int32)  # the vehicle's next row, -1 at the end
        self.n_alloc = 0  # rows ever handed out (the rest of the columns is spare)
        self.free = np.zeros(0, np.int64)  # freed rows below n_alloc, reused first
        self.n_free = 0
        self.high_water = 0  # the most rows held at once, mid-push included
        self.slots = np.full(1024, _EMPTY, np.int32)  # the hash index: row, or _EMPTY/_TOMB
        self.n_tomb = 0
        self.head = np.zeros(0, np.int32)  # per vehicle: its newest row, -1 if none
        self.count = np.zeros(0, np.int32)  # per vehicle: its rows

    def __len__(self) -> int:
        return self.n_alloc - self.n_free

    @property
    def capacity(self) -> int:
        return len(self.keys)

    def find(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Row of each key (0 where absent) and whether it is there."""
        rows = _find(self.slots, self.keys, np.ascontiguousarray(keys, np.uint64))
        found = rows >= 0
        return np.where(found, rows, 0), found

    def rows_for(self, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Rows of unique ``keys``, with empty streams added for new ones; and which were new."""
        keys = np.ascontiguousarray(keys, np.uint64)
        rows = _find(self.slots, self.keys, keys)
        new = rows < 0
        n = int(new.sum())
        if n:
            fresh = self._allocate(n)
            self.keys[fresh] = keys[new]
            self._reset(fresh)
            self._index(fresh)
            vehicles = (keys[new] >> np.uint64(32)).astype(np.int64)
            self._grow_vehicles(int(vehicles.max()) + 1)
            _link(self.head, self.count, self.next_row, fresh, vehicles)
            rows[new] = fresh
        return rows, new

    def vehicle_rows(self, vehicles: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """All rows of ``vehicles`` and, per row, its vehicle's position in ``vehicles``."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        vehicles = vehicles[vehicles < len(self.head)]
        if len(vehicles) == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        rows, which = _walk(self.head, self.count, self.next_row, vehicles)
        return rows, which

    def prune(
        self, vehicles: np.ndarray, rows: np.ndarray, which: np.ndarray, drop: np.ndarray
    ) -> None:
        """Free ``rows[drop]``: ``rows``/``which`` are all rows of ``vehicles``, as
        ``vehicle_rows`` gave them; the lists of those vehicles are rebuilt from the rest."""
        if not drop.any():
            return
        vehicles = np.asarray(vehicles, dtype=np.int64)
        self._release(rows[drop])
        self.head[vehicles] = -1
        self.count[vehicles] = 0
        keep = ~drop
        # linked newest first: link oldest first (reversed walk order) to keep the order
        kept = rows[keep][::-1].copy()
        _link(self.head, self.count, self.next_row, kept, vehicles[which[keep][::-1]])

    def drop_vehicles(self, vehicles: np.ndarray) -> None:
        rows, which = self.vehicle_rows(vehicles)
        vehicles = np.asarray(vehicles, dtype=np.int64)
        vehicles = vehicles[vehicles < len(self.head)]
        if len(rows):
            self._release(rows)
        self.head[vehicles] = -1
        self.count[vehicles] = 0

    def in_use(self) -> np.ndarray:
        """Every row in use."""
        return np.flatnonzero(self.keys[: self.n_alloc] != FREE_KEY)

    # -- storage --------------------------------------------------------------------

    def _allocate(self, n: int) -> np.ndarray:
        reuse = min(n, self.n_free)
        rows = self.free[self.n_free - reuse : self.n_free][::-1].copy()
        self.n_free -= reuse
        more = n - reuse
        if more:
            if self.n_alloc + more > len(self.keys):
                self._grow_rows(self.n_alloc + more)
            rows = np.r_[rows, np.arange(self.n_alloc, self.n_alloc + more)]
            self.n_alloc += more
        self.high_water = max(self.high_water, len(self))
        return rows

    def _grow_rows(self, need: int) -> None:
        n = max(need, int(len(self.keys) * _GROWTH), _MIN_ROWS)
        self.keys = grown(self.keys, n, FREE_KEY)
        self.last_ts = grown(self.last_ts, n, np.nan)
        self.last_data = grown(self.last_data, n, 0)
        self.closed_ts = grown(self.closed_ts, n, np.nan)
        self.open_window = grown(self.open_window, n, NO_WINDOW)
        self.acc_i = grown(self.acc_i, n, 0)
        self.acc_f = grown(self.acc_f, n, 0.0)
        self.kind = grown(self.kind, n, 0)
        self.next_row = grown(self.next_row, n, -1)

    def _grow_vehicles(self, n: int) -> None:
        if n > len(self.head):
            size = max(n, int(len(self.head) * 1.5), 64)
            self.head = grown(self.head, size, -1)
            self.count = grown(self.count, size, 0)

    def clear_windows(self, rows: np.ndarray) -> None:
        """Close ``rows``' open windows unscored: no window open, empty sums (as the
        fold's ``_emit`` leaves a row it scored)."""
        self.open_window[rows] = NO_WINDOW
        self.acc_i[rows] = 0
        self.acc_f[rows] = 0.0
        self.acc_f[rows, F_MIN] = np.inf
        self.acc_f[rows, F_MIN2] = np.inf
        self.acc_f[rows, F_LAST] = np.nan

    def _reset(self, rows: np.ndarray) -> None:
        self.last_ts[rows] = np.nan
        self.last_data[rows] = 0
        self.closed_ts[rows] = np.nan
        self.clear_windows(rows)
        self.kind[rows] = 0

    def _index(self, rows: np.ndarray) -> None:
        """Add ``rows`` (keys set) to the index; rebuilt, at most half full and without
        tombstones, once live keys and tombstones fill three quarters (amortised O(1))."""
        live = len(self)  # already counts ``rows``
        if live + self.n_tomb > _MAX_LOAD * len(self.slots):
            size = 1024
            while size < 2 * live:
                size *= 2
            self.slots = np.full(size, _EMPTY, np.int32)
            self.n_tomb = 0
            _insert(self.slots, self.keys, self.in_use())  # ``rows`` among them
        else:
            self.n_tomb -= _insert(self.slots, self.keys, rows)

    def _release(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        _delete(self.slots, self.keys, rows)
        self.n_tomb += len(rows)
        self.keys[rows] = FREE_KEY
        self.open_window[rows] = NO_WINDOW
        if self.n_free + len(rows) > len(self.free):
            self.free = grown(self.free, max(self.n_free + len(rows), 2 * len(self.free), 64), -1)
        self.free[self.n_free : self.n_free + len(rows)] = rows
        self.n_free += len(rows)

    @property
    def nbytes(self) -> int:
        cols = sum(getattr(self, name).nbytes for name in self._COLUMNS)
        return cols + self.free.nbytes + self.slots.nbytes + self.head.nbytes + self.count.nbytes
