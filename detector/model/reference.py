"""What each vehicle showed from its first windows on: its own state, not an attack.

A drive carries state the training drives did not: a gear, a light, a drive
mode, a byte that is 0x40 on this car and 0x20 on the last, a message that is
bursty today. Such state shows from the vehicle's first windows and stays; an
attack starts in the middle of a stream. So the first ``WARMUP_WINDOWS``
scored windows of each vehicle teach its *reference*: per (vehicle, id) stream
and evidence column, the largest calibrated evidence seen. Every later window
is scored on what exceeds it, so a state that was there from the start cannot
mask what changes later, on the same id or another.

During warm-up, payload evidence is the vehicle's state, not an alert. The
traffic's volume and timing (``VOLUME``: rates, inter-arrival times, unseen ids,
bus load) are scored against the platform and alert only when gross
(``WARMUP_FACTOR`` times the threshold); warm-up absorbs them only up to that
level, so a flood or a fuzzer already running when the vehicle's stream began
still shows afterwards. The reference does not learn after warm-up: an attack
that starts later is never taken for normal, however slowly it grows.

The reference is a dense (vehicle, id slot, column) table of uint8 in
1/REF_STEPS calibrated units, one byte per column and stream; ids the platform
never saw have none.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.features.baseline import Baseline
from detector.features.columns import CROSS_NOTE, F, Rows
from detector.model.platform import EVIDENCE_NAMES, N_EVIDENCE

#: Scored windows per vehicle that teach its reference.
WARMUP_WINDOWS = 3
#: During warm-up only evidence this many times the threshold alerts, and at most
#: this much is absorbed.
WARMUP_FACTOR = 4.0
#: Reference resolution: 1/REF_STEPS of a calibrated unit; the table saturates at
#: 255 steps, above any column's evidence (model.EXCESS_CAP, scales >= 1).
REF_STEPS = 4
#: The traffic's volume and timing, and broken cross-id couplings (one quantity sent
#: twice that disagrees is no vehicle's state): warm-up scores them (when gross) and
#: absorbs them only up to that level, so a flood, or a forged speed, running from
#: the start is not taken for state; and a restart that re-forms an incident from
#: its first window (detector.service.offset_ledger) scores those windows alike.
VOLUME = ("rate", "dt_min", "dt_mean", "dt_cv", "silence", "novel_id", "bus_load",
          "bus_novel", "bus_missing", "bus_ids", "cross_out")  # fmt: skip
VOLUME_COLUMNS = np.isin(np.array(EVIDENCE_NAMES), VOLUME)


class StreamReference:
    """Per-stream reference evidence of one platform's vehicles (see module doc), and
    each vehicle's last window mean of every cross-coupled signal (``cross``)."""

    def __init__(self, n_ids: int) -> None:
        self.n_ids = int(n_ids)
        self.table = np.zeros((0, self.n_ids, N_EVIDENCE), np.uint8)
        self.signals = SignalMemory()
        # per vehicle: the window before the one its warm-up restarted at after a model
        # swap (``rewarm``; _REWARM: at its next scored window), else _NO_WINDOW
        self.since = np.zeros(0, np.int64)

    def rewarm(self, vehicles: np.ndarray) -> None:
        """Restart the warm-up of ``vehicles`` at their next scored window: the reference
        of a model that did not watch them from their first windows is taught by their
        next WARMUP_WINDOWS scored windows, as a new vehicle's is (a vehicle silent at the
        swap, whose windows go unscored in its telemetry gap, keeps its warm-up for when
        it sends again)."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        if len(vehicles):
            self.since = _grown(self.since, int(vehicles.max()) + 1, _NO_WINDOW)
            self.since[vehicles] = _REWARM

    def ages(self, vehicle: np.ndarray, window: np.ndarray, first_window: np.ndarray) -> np.ndarray:
        """Each scored row's window counted from its vehicle's first (partial, unscored)
        one, or from where ``rewarm`` restarted its warm-up (what ``apply`` takes as
        ``age``). Called once per batch of scored rows: a warm-up waiting for its
        vehicle's next scored window starts at the earliest of them here."""
        if len(vehicle) == 0:
            return np.zeros(0, np.int64)
        start = first_window[vehicle]
        held = vehicle < len(self.since)
        if held.any():
            waiting = held.copy()
            waiting[held] = self.since[vehicle[held]] == _REWARM
            if waiting.any():
                first = np.full(len(self.since), _REWARM)
                np.minimum.at(first, vehicle[waiting], window[waiting])
                began = np.flatnonzero(first < _REWARM)
                self.since[began] = first[began] - 1
            start = start.copy()
            start[held] = np.maximum(start[held], self.since[vehicle[held]])
        return window - start

    def cross(self, rows: Rows, bl: Baseline) -> None:
        """Fill ``cross_out`` of ``rows`` (in place): how far their window breaks a
        cross-id coupling (``SignalMemory.breaks``)."""
        if len(bl.xc_a) == 0 or rows.signal is None or len(rows) == 0:
            return
        rows.X[:, F["cross_out"]], notes = self.signals.breaks(rows, bl)
        rows.cross = notes if np.isfinite(notes[:, 0]).any() else None

    def apply(
        self,
        vehicle: np.ndarray,
        slot: np.ndarray,
        known: np.ndarray,
        age: np.ndarray,
        calibrated: np.ndarray,
        threshold: float,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Effective evidence of rows, and the threshold factor of each row.

        ``age``: the row's window counted from the vehicle's first (partial,
        unscored) window. Warm-up rows first teach the reference, since they
        precede any later window of their stream in the same batch; rows after
        warm-up then lose what their stream's reference holds.
        """
        vehicle = np.asarray(vehicle, dtype=np.int64)
        warm = age <= WARMUP_WINDOWS
        factor = np.where(warm, WARMUP_FACTOR, 1.0)
        if len(vehicle) == 0 or self.n_ids == 0:
            return calibrated, factor
        self.table = _grown(self.table, int(vehicle.max()) + 1)
        teach = warm & known
        if teach.any():
            cap = np.where(VOLUME_COLUMNS, WARMUP_FACTOR * threshold, np.inf)
            steps = np.ceil(np.minimum(calibrated[teach], cap) * REF_STEPS)
            np.maximum.at(
                self.table,
                (vehicle[teach], slot[teach]),
                np.minimum(steps, 255).astype(np.uint8),
            )
        later = ~warm & known
        effective = calibrated.copy()
        effective[warm] *= VOLUME_COLUMNS  # the vehicle's payload state, not evidence
        if later.any():
            ref = self.table[vehicle[later], slot[later]].astype(np.float64) / REF_STEPS
            effective[later] = np.maximum(calibrated[later] - ref, 0.0)
        return effective, factor

    def forget(self, vehicles: np.ndarray) -> None:
        """Drop the reference of vehicles whose state was dropped (their index is reused)."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        self.table[vehicles[vehicles < len(self.table)]] = 0
        self.since[vehicles[vehicles < len(self.since)]] = _NO_WINDOW
        self.signals.forget(vehicles)

    @property
    def nbytes(self) -> int:
        return self.table.nbytes + self.signals.nbytes


class SignalMemory:
    """Each vehicle's window means of each cross-coupled signal (an id whose
    ``Baseline.signal_at`` is set) over its last MEMORY_WINDOWS windows, so that a
    coupling whose two ids close a window in different batches is checked all the
    same, however the traffic was batched (a restart batches it otherwise)."""

    def __init__(self) -> None:
        self.mean = np.zeros((0, 0, MEMORY_WINDOWS))
        self.window = np.zeros((0, 0, MEMORY_WINDOWS), np.int64)

    def forget(self, vehicles: np.ndarray) -> None:
        vehicles = vehicles[vehicles < len(self.window)]
        self.window[vehicles] = _NO_WINDOW

    @property
    def nbytes(self) -> int:
        return self.mean.nbytes + self.window.nbytes

    def _fit(self, n_vehicles: int, n_signals: int) -> None:
        if self.mean.shape[1] != n_signals:  # another baseline: nothing carries over
            self.mean = np.zeros((0, n_signals, MEMORY_WINDOWS))
            self.window = np.zeros((0, n_signals, MEMORY_WINDOWS), np.int64)
        self.mean = _grown(self.mean, n_vehicles)
        self.window = _grown(self.window, n_vehicles, _NO_WINDOW)

    def breaks(self, rows: Rows, bl: Baseline) -> tuple[np.ndarray, np.ndarray]:
        """(r,) how far each row's window breaks its id's cross couplings: 0 within the
        bound, rising to 1 at twice it; and (r, CROSS_NOTE) what the worst one says
        (``Rows.cross``). A coupling is checked once, on the row of the side whose
        window closes second (from this batch or remembered), so a window's evidence
        does not depend on how its rows were batched: on which of its ids it shows does."""
        out = np.zeros(len(rows))
        notes = np.full((len(rows), CROSS_NOTE), np.nan)
        sig_slot = np.flatnonzero(bl.signal_at >= 0)
        index = np.full(len(bl.ids), -1, np.int64)
        index[sig_slot] = np.arange(len(sig_slot))
        slot, known = bl.slots(rows.can_id)
        value = rows.signals()
        si = np.where(known, index[slot], -1)
        on = np.flatnonzero((si >= 0) & np.isfinite(value))
        if len(on) == 0:
            return out, notes
        veh, win, si, value = rows.vehicle[on], rows.window[on], si[on], value[on]
        self._fit(int(veh.max()) + 1, len(sig_slot))
        vw = veh * _WINDOW_SPAN + win % _WINDOW_SPAN
        count, level = np.zeros(len(on)), np.zeros(len(on))
        worst = np.full((len(on), CROSS_NOTE), np.nan)
        for c, (sa, sb) in enumerate(zip(bl.xc_a, bl.xc_b, strict=True)):
            a, b = index[sa], index[sb]
            line = _Line(bl.xc_slope[c], bl.xc_icpt[c], bl.xc_bound[c], bl.ids[sa], bl.ids[sb],
                         bl.signal_at[sa], bl.signal_at[sb], tuple(bl.xc_seen[c]))  # fmt: skip
            rows_a, rows_b = np.flatnonzero(si == a), np.flatnonzero(si == b)
            # each a row against b's mean of its window (this batch's, else remembered)
            partner = _find(vw[rows_b], vw[rows_a])
            paired = partner >= 0
            # indexed where paired only: with no b row at all, rows_b[-1] does not exist
            y = np.array(self._recall(veh[rows_a], b, win[rows_a]), dtype=np.float64)
            y[paired] = value[rows_b[partner[paired]]]
            miss, ex, ey = _miss(value[rows_a], y, line)
            _count(count, level, worst, rows_a, miss, line.note_x(ex))
            _count(count, level, worst, rows_b[partner[paired]], miss[paired], line.note_y(ey[paired]))
            # b rows whose window has no a row here: against a's remembered mean
            alone = rows_b[_find(vw[rows_a], vw[rows_b]) < 0]
            miss, _, ey = _miss(self._recall(veh[alone], a, win[alone]), value[alone], line)
            _count(count, level, worst, alone, miss, line.note_y(ey))
        ring = win % MEMORY_WINDOWS
        newer = win >= self.window[veh, si, ring]
        self.mean[veh[newer], si[newer], ring[newer]] = value[newer]
        self.window[veh[newer], si[newer], ring[newer]] = win[newer]
        broke = count > 0
        out[on[broke]] = np.minimum(level[broke] - 1.0, 1.0)
        notes[on[broke]] = worst[broke]
        return out, notes

    def _recall(self, veh: np.ndarray, si: int, win: np.ndarray) -> np.ndarray:
        """The remembered mean of signal ``si`` of each vehicle in window ``win`` (NaN:
        none)."""
        ring = win % MEMORY_WINDOWS
        return np.where(self.window[veh, si, ring] == win, self.mean[veh, si, ring], np.nan)


def _find(keys: np.ndarray, q: np.ndarray) -> np.ndarray:
    """Position in ``keys`` (unique) of each of ``q``, or -1."""
    if len(keys) == 0:
        return np.full(len(q), -1, np.int64)
    order = np.argsort(keys, kind="stable")
    pos = np.minimum(np.searchsorted(keys[order], q), len(keys) - 1)
    return np.where(keys[order][pos] == q, order[pos], -1)


@dataclass(frozen=True)
class _Line:
    """A learned coupling y = slope * x + icpt (within bound) of the words of ids x_id
    (from byte x_at) and y_id (from y_at)."""

    slope: float
    icpt: float
    bound: float
    x_id: int
    y_id: int
    x_at: int
    y_at: int
    seen: tuple[float, float, float, float]  # Baseline.xc_seen

    def note_x(self, expected: np.ndarray) -> np.ndarray:
        """``Rows.cross`` notes of x rows, whose partner puts them at ``expected``."""
        return _notes(self.y_id, self.x_at, self.y_at, expected, self.bound / abs(self.slope))

    def note_y(self, expected: np.ndarray) -> np.ndarray:
        """``Rows.cross`` notes of y rows, whose partner puts them at ``expected``."""
        return _notes(self.x_id, self.y_at, self.x_at, expected, self.bound)


def _notes(partner: int, at: int, partner_at: int, expected: np.ndarray, bound: float) -> np.ndarray:
    out = np.empty((len(expected), CROSS_NOTE))
    out[:] = (float(partner), float(at), float(partner_at), 0.0, bound)
    out[:, 3] = expected
    return out


def _miss(x: np.ndarray, y: np.ndarray, line: _Line) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """How far each pair of means (x, y) lies off the line, in bounds (0 where either is
    missing), and the x and y the line puts them at given the other.

    Past the range training saw a signal in, the line allows it anywhere from the edge
    of that range to the line: a narrow field saturates there while its partner goes on
    (the simulator's giorgio 0x101 speed stops at 2047 on a drive faster than any
    training drive, beside 0x0EE's wheel speed). A pair breaks the line only if
    neither side explains it.
    """
    x_lo, x_hi, y_lo, y_hi = line.seen
    with np.errstate(invalid="ignore"):
        y_at, x_at = line.slope * x + line.icpt, (y - line.icpt) / line.slope
        off_y = np.abs(y - _nearest(y, y_at, y_lo, y_hi))
        off_x = np.abs(x - _nearest(x, x_at, x_lo, x_hi)) * abs(line.slope)
        miss = np.minimum(off_y, off_x) / line.bound
    return np.where(np.isfinite(miss), miss, 0.0), x_at, y_at


def _nearest(v: np.ndarray, at: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """The point nearest ``v`` between ``at`` and ``at`` clipped to [lo, hi]."""
    edge = np.clip(at, lo, hi)
    return np.clip(v, np.minimum(edge, at), np.maximum(edge, at))


def _count(
    count: np.ndarray, level: np.ndarray, worst: np.ndarray, at: np.ndarray, miss: np.ndarray,
    notes: np.ndarray,
) -> None:  # fmt: skip
    """Rows ``at`` (distinct) broke a coupling where ``miss`` > 1 (a bound); ``worst``
    keeps the notes of each row's farthest miss."""
    bad = miss > 1.0
    at, miss, notes = at[bad], miss[bad], notes[bad]
    count[at] += 1
    farther = miss > level[at]
    level[at[farther]] = miss[farther]
    worst[at[farther]] = notes[farther]


_NO_WINDOW = np.iinfo(np.int64).min
_REWARM = np.iinfo(np.int64).max  # ``StreamReference.since``: at the next scored window
#: Windows a vehicle's signal means are kept for: one id's window closes when its next
#: frame comes, so two ids close the same window at most a few windows apart.
MEMORY_WINDOWS = 4
#: Windows are told apart modulo this in a batch's keys (a batch spans far fewer).
_WINDOW_SPAN = 1 << 20


def _grown(a: np.ndarray, n: int, fill=0) -> np.ndarray:
    """``a`` with at least ``n`` rows (new ones ``fill``): a vehicle index past the end
    grows it by half at least, so a fleet arriving one vehicle at a time costs
    amortised O(1) copies per vehicle."""
    if n <= len(a):
        return a
    extra = max(n - len(a), len(a) // 2)
    return np.concatenate([a, np.full((extra, *a.shape[1:]), fill, a.dtype)])
