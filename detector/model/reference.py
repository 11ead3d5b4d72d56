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

import numpy as np

from detector.model.platform import EVIDENCE_NAMES, N_EVIDENCE

#: Scored windows per vehicle that teach its reference.
WARMUP_WINDOWS = 3
#: During warm-up only evidence this many times the threshold alerts, and at most
#: this much is absorbed.
WARMUP_FACTOR = 4.0
#: Reference resolution: 1/REF_STEPS of a calibrated unit; the table saturates at
#: 255 steps, above any column's evidence (model.EXCESS_CAP, scales >= 1).
REF_STEPS = 4
#: The traffic's volume and timing: warm-up scores them (when gross) and absorbs them
#: only up to that level, so a flood running from the start is not taken for state.
VOLUME = ("rate", "dt_min", "dt_mean", "dt_cv", "silence", "novel_id", "bus_load",
          "bus_novel", "bus_missing", "bus_ids")  # fmt: skip
VOLUME_COLUMNS = np.isin(np.array(EVIDENCE_NAMES), VOLUME)


class StreamReference:
    """Per-stream reference evidence of one platform's vehicles (see module doc)."""

    def __init__(self, n_ids: int) -> None:
        self.n_ids = int(n_ids)
        self.table = np.zeros((0, self.n_ids, N_EVIDENCE), np.uint8)

    def _grow(self, n_vehicles: int) -> None:
        if n_vehicles > len(self.table):
            extra = max(n_vehicles - len(self.table), len(self.table) // 2)  # amortised
            self.table = np.concatenate(
                [self.table, np.zeros((extra, self.n_ids, N_EVIDENCE), np.uint8)]
            )

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
        self._grow(int(vehicle.max()) + 1)
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

    @property
    def nbytes(self) -> int:
        return self.table.nbytes
