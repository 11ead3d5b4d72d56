"""Window features: pure functions over frame arrays, no I/O, no per-frame Python.

One feature row per (vehicle, CAN id, window) for every id seen in a window and
for every *expected* id that is absent from it (suspension attacks are
absences). Every value is relative to the platform's learned ``Baseline`` so one
model serves all ids. The vehicle-level (bus) features are repeated on each of
the vehicle's rows for that window.

The per-id columns (rate .. fixed_out) come from running sums that
``detector.features.kernels`` folds frame by frame as they arrive (``detector.features.windowing``
keeps them per stream); tests/reference_features.py defines the same columns
in plain numpy over a whole window. This module adds the rows of expected ids
that are absent and the vehicle-level columns once a window has closed.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.features.baseline import Baseline

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
    "novel_id",  # frames of an id never seen on this platform (0 for a known id)
    "coupling_out",  # frames whose coupled 16-bit signals disagree (four wheel speeds)
    "fixed_out",  # frames where a byte that held one value in every training drive did not
    "bus_load",  # vehicle's frames in the window / learned, at least 1
    "bus_novel",  # fraction of the vehicle's frames with unseen ids
    "bus_missing",  # fraction of expected ids absent
    "bus_ids",  # distinct ids / learned, at least 1
    # filled as rows are scored (detector.model.reference.StreamReference.cross): how
    # far the id's window mean of a word it shares with other ids left their line
    "cross_out",
)
F = {name: i for i, name in enumerate(FEATURE_NAMES)}
#: Columns of ``Rows.cross``: partner id, the row's word's first byte, the partner's,
#: the mean the partner puts the row's word at, and the bound around it.
CROSS_NOTE = 5
N_FEATURES = len(FEATURE_NAMES)
#: The id of the row that pools a vehicle window's frames of unseen ids past those
#: given rows of their own (``detector.features.windowing``): an unseen id like any other to
#: the features, and never a real one (a valid id has bits 29 and 30 clear).
POOLED_ID = 0xFFFF_FFFF


#: ``Rows``' per-row notes of the fold (i8, -1: none), in field order after ``cross``.
NOTES = ("far", "frozen", "rising", "jump", "coupling", "pair")


@dataclass
class Rows:
    """Feature rows; ``vehicle`` indexes the caller's vehicle table."""

    vehicle: np.ndarray  # (r,) i8
    window: np.ndarray  # (r,) i8 window index (start = window * window_s)
    can_id: np.ndarray  # (r,) u4
    count: np.ndarray  # (r,) i8
    attack: np.ndarray  # (r,) i1 most severe ground-truth label among the row's frames
    X: np.ndarray  # (r, N_FEATURES) f8
    # (r,) f8 the window mean of the id's cross-coupled word (NaN: none, or too few
    # frames; detector.features.cross_signals); None: no row has one
    signal: np.ndarray | None = None
    # (r, CROSS_NOTE) f8, set as rows are scored (StreamReference.cross): for a row that
    # broke a cross-id coupling, the worst one's partner id, the first bytes of the
    # row's word and of the partner's, the mean the partner's puts the row's at, and
    # the bound around it (NaN: none); None: no row broke one
    cross: np.ndarray | None = None
    # (r,) i8 the note of the row's byte that lay furthest outside its learned range
    # (detector.features.fold_steps.far_note: byte, value, range; -1: none); None: no
    # row has one
    far: np.ndarray | None = None
    # (r,) i8 the note of the row's byte that fell furthest below its learned change
    # rate (detector.features.fold_kernel.change_note: byte, changes, pairs, learned
    # rate; -1: none); None: no row has one
    frozen: np.ndarray | None = None
    # (r,) i8 the same note of the row's byte that rose furthest above its learned
    # change rate (byte, changes, frame pairs, learned rate); None: no row has one
    rising: np.ndarray | None = None
    # (r,) i8 the note of the byte that stepped outside its learned steps in the row's
    # first frame to have one, the byte furthest out (detector.features.fold_steps.
    # jump_note: byte, step, learned steps); None: no row has one
    jump: np.ndarray | None = None
    # (r,) i8 the note of the coupling the row's first frame to break one broke
    # (detector.features.fold_steps.coupling_note: which, and a - b); None: no row has one
    coupling: np.ndarray | None = None
    # (r,) i8 the note of the tight byte pair the row's first frame to break one broke
    # (detector.features.fold_steps._pair_note: which, and its difference); None: none
    pair: np.ndarray | None = None
    # (r,) bool: the row's timing covers only part of its window, so it says nothing
    # about the bus: a short telemetry gap touched the window (the vehicle sent nothing
    # for longer than its bus ever went quiet in training, but not long enough to leave
    # the window unscored), or the row's id began sending in it (a vehicle waking ECU
    # by ECU); None: no row's does
    partial: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.vehicle)

    def signals(self) -> np.ndarray:
        """``signal``, NaN where there is none."""
        return np.full(len(self), np.nan) if self.signal is None else self.signal

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
            None if self.signal is None else self.signal[idx],
            None if self.cross is None else self.cross[idx],
            *(None if getattr(self, n) is None else getattr(self, n)[idx] for n in NOTES),
            None if self.partial is None else self.partial[idx],
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
            None
            if all(p.signal is None for p in parts)
            else np.concatenate([p.signals() for p in parts]),
            None
            if all(p.cross is None for p in parts)
            else np.concatenate([p.cross_notes() for p in parts]),
            *(
                None
                if all(getattr(p, n) is None for p in parts)
                else np.concatenate([p.notes(n) for p in parts])
                for n in NOTES
            ),
            None
            if all(p.partial is None for p in parts)
            else np.concatenate([p.partial_mask() for p in parts]),
        )

    def notes(self, name: str) -> np.ndarray:
        """Note column ``name`` (one of NOTES), -1 where there is none."""
        col = getattr(self, name)
        return np.full(len(self), -1, np.int64) if col is None else col

    def partial_mask(self) -> np.ndarray:
        """``partial``, False where there is none."""
        return np.zeros(len(self), bool) if self.partial is None else self.partial

    def cross_notes(self) -> np.ndarray:
        """``cross``, NaN where there is none."""
        return np.full((len(self), CROSS_NOTE), np.nan) if self.cross is None else self.cross


def read_far_note(note: int) -> tuple[int, int, int, int]:
    """(byte, value, lo, hi) of a ``Rows.far`` note (``fold_steps.far_note`` writes it)."""
    return note & 7, (note >> 3) & 0xFF, (note >> 11) & 0xFF, (note >> 19) & 0xFF


def read_jump_note(note: int) -> tuple[int, int, int, int]:
    """(byte, step, lowest and highest learned step: -255..255, a byte's widest) of a
    ``Rows.jump`` note (``fold_steps.jump_note`` writes it)."""
    step, lo, hi = ((note >> shift) & 0x1FF for shift in (3, 12, 21))
    return note & 7, step - 256, max(lo - 256, -255), min(hi - 256, 255)


def read_coupling_note(note: int) -> tuple[int, int]:
    """(which of its id's learned couplings, the difference a - b of its signals) of a
    ``Rows.coupling`` note (``fold_steps.coupling_note`` writes it)."""
    return (note & 7) - 1, (note >> 3) - 65536


def read_pair_note(note: int) -> tuple[int, int]:
    """(the pair's index in ``baseline.PAIRS``, its bytes' difference) of a ``Rows.pair``
    note (``fold_steps._pair_note`` writes it)."""
    return (note & 31) - 1, (note >> 5) - 256


def read_change_note(note: int) -> tuple[int, int, int, float]:
    """(byte, changes, pairs, learned rate) of a ``Rows.frozen`` or ``Rows.rising`` note
    (``fold_kernel.change_note`` writes it): of the pairs of frames (for ``frozen``,
    those where the other bytes changed), the byte changed in ``changes``; in
    training, in that share."""
    rest, byte = divmod(int(note), 8)
    rest, changed = divmod(rest, 65536)
    permille, pairs = divmod(rest, 65536)
    return byte, changed, pairs, permille / 1000.0


def absent_rows(
    present: Rows,
    bl: Baseline,
    last_seen: callable,
    window_s: float,
) -> Rows:
    """Rows (count 0) for expected ids missing from a (vehicle, window) that has frames.

    ``last_seen(vehicle, can_id, window)`` returns, vectorized, the ts of each
    stream's last frame before that window (nan if never). An id the vehicle has not
    sent yet is not missing: a vehicle's ECUs come up one by one as it wakes, and its
    telemetry (a capture) often begins there; a suspension silences an id that was
    sending. Its row is marked partial (it says nothing about the bus, but what the
    model owner sees as drift: a vehicle that never sends it).
    """
    exp_ids = bl.ids[bl.expected]
    if len(present) == 0 or len(exp_ids) == 0:
        return Rows.empty()
    vw_veh, vw_win, inv = vw_groups(present.vehicle, present.window)
    exp_pos = np.minimum(np.searchsorted(exp_ids, present.can_id), len(exp_ids) - 1)
    is_exp = exp_ids[exp_pos] == present.can_id
    missing = np.ones((len(vw_veh), len(exp_ids)), bool)
    missing[inv[is_exp], exp_pos[is_exp]] = False
    r, c = np.nonzero(missing)  # row-major: by (vehicle, window), then id
    if len(r) == 0:
        return Rows.empty()
    veh, win, ids = vw_veh[r], vw_win[r], exp_ids[c]
    slot, _ = bl.slots(ids)
    period = np.where(
        np.isfinite(bl.period[slot]) & (bl.period[slot] > 0), bl.period[slot], window_s
    )
    last = last_seen(veh, ids, win)
    unsent = np.isnan(last)
    silence = np.where(unsent, window_s / period, ((win + 1) * window_s - last) / period)
    X = np.zeros((len(veh), N_FEATURES))
    X[:, F["dt_min"]] = 1.0
    X[:, F["dt_mean"]] = 1.0
    X[:, F["silence"]] = silence
    n = len(veh)
    return Rows(veh, win, ids, np.zeros(n, np.int64), np.zeros(n, np.int8), X,
                partial=unsent if unsent.any() else None)  # fmt: skip


def vw_groups(vehicle: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Distinct (vehicle, window) pairs sorted, and each input's pair index."""
    if len(vehicle) == 0:
        empty = np.zeros(0, np.int64)
        return empty, empty, empty
    w0 = int(window.min())
    span = int(window.max()) - w0 + 1
    uniq, inv = np.unique(vehicle.astype(np.int64) * span + (window - w0), return_inverse=True)
    return uniq // span, uniq % span + w0, inv.reshape(-1)


def add_bus_features(rows: Rows, bl: Baseline) -> None:
    """Fill the vehicle-level columns of ``rows`` in place."""
    if len(rows) == 0:
        return
    vw, _, inv = vw_groups(rows.vehicle, rows.window)
    present = rows.count > 0
    frames_per = np.bincount(inv, weights=rows.count, minlength=len(vw))
    ids_per = np.bincount(inv, weights=present, minlength=len(vw))
    novel_per = np.bincount(inv, weights=rows.X[:, F["novel_id"]], minlength=len(vw))
    # an id not sent yet (a partial row of count 0) is not missing
    missing = np.bincount(inv, weights=~present & ~rows.partial_mask(), minlength=len(vw))
    n_expected = max(int(bl.expected.sum()), 1)
    # fewer frames or ids than learned is seen id by id (silence, rate); on the whole
    # bus it is a vehicle still waking ECU by ECU, or a gateway forwarding less
    rows.X[:, F["bus_load"]] = np.maximum(frames_per[inv] / max(bl.bus_mean_frames, 1.0), 1.0)
    rows.X[:, F["bus_novel"]] = novel_per[inv] / np.maximum(frames_per[inv], 1)
    rows.X[:, F["bus_missing"]] = missing[inv] / n_expected
    rows.X[:, F["bus_ids"]] = np.maximum(ids_per[inv] / max(bl.bus_mean_ids, 1.0), 1.0)
