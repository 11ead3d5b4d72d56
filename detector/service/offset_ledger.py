"""The offset ledger: how far a commit may claim the records of each partition.

A committed offset tells a restart "everything before this is done". A record
is done only once no window and no open incident can need its frames again, so
the ledger keeps, per partition, the offset, vehicle and newest event time of
each record read, and ``safe_offsets`` names the oldest one a vehicle's
*horizon* (given by the caller: its open window, or its open incident) still
needs. After a crash every window is then re-formed from re-read records and
scored, and the incidents it re-emits carry the same deterministic ids
(at-least-once). A vehicle's horizon lies a warm-up before its open window
(``VehicleState.horizon``), or while it has an incident open, before the
incident's first anomalous window: a restart re-forms the whole incident under
its id instead of opening a new one half-way through the attack, and a re-read
vehicle learns its own state from windows before the attack, not from the attack.

The same records say where an incident's frames are (``span``): the offsets of
its vehicle's records whose frames fall in its windows, for its ``provenance``.

Kept apart from the loop because it is the one piece whose arithmetic decides
what is lost or read twice: it makes no Kafka calls, so it is tested with
hand-built offsets. Vehicles are numbers here (numpy chunks of 28 B a record,
not Python objects); numbers of vehicles let go are reused once their records
are pruned, so a flood of vehicle keys does not grow the table.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Hashable, Iterable

import numpy as np

from detector.transport.kafka_salvage import UnreadableRecord

#: (vehicle, brand) -> event time from which a restart must re-read that vehicle
Horizon = Callable[[str, str], float]


class OffsetLedger:
    def __init__(self) -> None:
        # tp -> [(offsets, vehicle numbers, newest ts, oldest ts)] of records whose
        # frames may still be needed; numpy chunks (28 B a record), merged when pruned
        self.pending: dict = defaultdict(list)
        self.vnum: dict[str, int] = {}  # vehicle -> number used in ``pending``
        self.vnames: list[tuple[str, str] | None] = []  # number -> (vehicle, brand), None: gone
        self.vdead: list[int] = []  # numbers of vehicles dropped, free once ``pending`` is pruned
        self.vfree: list[int] = []  # numbers free for reuse
        self.next_offset: dict = {}  # tp -> offset after the last record seen
        self.vehicle_tp: dict[str, Hashable] = {}

    def read_to(self, polled: dict) -> None:
        """Note where each partition of a poll goes on: after its last record, or after
        the last offset of an unreadable span that ends it."""
        for tp, rs in polled.items():
            last = rs[-1]
            if type(last) is UnreadableRecord:  # a span: up to its last offset
                self.next_offset[tp] = last.problem.last_offset + 1
            else:
                self.next_offset[tp] = last.offset + 1

    def track(self, vehicle: str, brand: str, tp: Hashable) -> int:
        """``vehicle``'s number (a new one if it has none), now read from ``tp``."""
        num = self.vnum.get(vehicle)
        if num is None:
            num = self.vnum[vehicle] = self._number(vehicle, brand)
        self.vehicle_tp[vehicle] = tp
        return num

    def hold(
        self,
        tp: Hashable,
        offsets: list[int],
        nums: list[int],
        tss: list[float],
        oldest: list[float] | None = None,
    ) -> None:
        """Records of ``tp`` a restart may need again: their offsets, vehicle numbers
        (``track``), newest and oldest event times (default: the newest)."""
        newest = np.array(tss)
        first = newest if oldest is None else np.array(oldest)
        self.pending[tp].append(
            (np.array(offsets, np.int64), np.array(nums, np.int32), newest, first)
        )

    def span(self, vehicle: str, start: float, end: float) -> tuple[Hashable, int, int, int] | None:
        """(partition, first offset, last offset, records) of ``vehicle``'s records held
        with frames in [start, end): what carried an incident's windows. None when
        none is held (the vehicle is not, or no longer, ours)."""
        num, tp = self.vnum.get(vehicle), self.vehicle_tp.get(vehicle)
        held = self._merged(tp) if num is not None else None
        if held is None:
            return None
        offsets, nums, tss, first = held
        sel = (nums == num) & (tss >= start) & (first < end)
        if not sel.any():
            return None
        hit = offsets[sel]
        return tp, int(hit.min()), int(hit.max()), int(len(hit))

    def _merged(self, tp: Hashable) -> tuple | None:
        """``tp``'s held records as one chunk (offsets, vehicle numbers, newest and
        oldest event times), merged in place so that the incidents of one poll, each
        asking ``span``, do not concatenate the same chunks again; None if none held."""
        chunks = self.pending.get(tp)
        if not chunks:
            return None
        if len(chunks) > 1:
            chunks[:] = [tuple(np.concatenate(col) for col in zip(*chunks, strict=True))]
        return chunks[0]

    def safe_offsets(self, horizon: Horizon) -> dict:
        """Per partition: the oldest record that may still be needed to re-form a
        window or an open incident (``horizon``); records older than their vehicle's
        horizon are pruned."""
        out = {}
        horizons: dict[int, float] = {}
        dead, self.vdead = self.vdead, []  # pruned below: free for reuse after
        for tp, nxt in self.next_offset.items():
            held = self._merged(tp)
            if held is not None:
                offsets, nums, tss, first = held
                uniq, inv = np.unique(nums, return_inverse=True)
                for num in uniq.tolist():
                    if num not in horizons:
                        named = self.vnames[num]  # None: dropped, nothing left to re-form
                        horizons[num] = horizon(*named) if named else math.inf
                keep = tss >= np.array([horizons[n] for n in uniq.tolist()])[inv]
                offsets, nums, tss, first = offsets[keep], nums[keep], tss[keep], first[keep]
                self.pending[tp] = [(offsets, nums, tss, first)] if len(offsets) else []
                offset = int(offsets.min()) if len(offsets) else nxt
            else:
                offset = nxt
            out[tp] = offset
        if set(self.pending) <= set(self.next_offset):  # every chunk was pruned
            self.vfree += dead
        else:
            self.vdead += dead
        return out

    def vehicles_of(self, partitions: set) -> set[str]:
        return {v for v, tp in self.vehicle_tp.items() if tp in partitions}

    def forget_partitions(self, partitions: Iterable) -> None:
        for tp in partitions:
            self.pending.pop(tp, None)
            self.next_offset.pop(tp, None)

    def forget_vehicles(self, gone: Iterable[str]) -> None:
        for v in gone:
            self.vehicle_tp.pop(v, None)
            num = self.vnum.pop(v, None)
            if num is not None:  # its records in ``pending`` go with the next prune
                self.vnames[num] = None
                self.vdead.append(num)

    def _number(self, vehicle: str, brand: str) -> int:
        """A number for ``vehicle`` in ``pending`` (those of dropped vehicles are reused:
        a flood of vehicle keys must not grow this table)."""
        if self.vfree:
            num = self.vfree.pop()
            self.vnames[num] = (vehicle, brand)
            return num
        self.vnames.append((vehicle, brand))
        return len(self.vnames) - 1
