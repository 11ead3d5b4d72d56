"""A byte whose level is the drive's own (a warm engine's coolant: 103 on one drive,
120 on the next, 125 on a third) gets a range as wide as one drive went past the
others, not none: a new drive's level stays inside it, a coolant forged to 0xFF
does not (ROAD's max-coolant attack sets 0x4E7 byte 5 to 0xFF). The evidence names
the byte furthest outside its range, its value and the range.
"""

from __future__ import annotations

import numpy as np

from detector.core.schema import make_frames
from detector.features.baseline import drive_excess, learn_baseline
from detector.features.columns import F, Rows, read_far_note
from detector.features.windowing import WindowState
from detector.incidents.evidence import describe
from detector.model.pipeline import ScoredRows
from detector.model.platform import N_EVIDENCE

W = 1.0
COOLANT_ID, BYTE = 0x4E7, 5
LEVELS = (103, 120, 125)  # one per training drive, as on ROAD's three drives


def drive(level: int, seed: int, t0: float, seconds: float = 30.0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    t = np.arange(0, seconds, 0.1)
    data = np.zeros((len(t), 8), np.uint8)
    data[:, BYTE] = level + rng.integers(0, 3, len(t))  # creeps by a degree or two
    data[:, 0] = np.arange(len(t)) % 16  # something that moves
    return make_frames(t0 + t, np.full(len(t), COOLANT_ID), data)


def rows_of(bl, frames: np.ndarray) -> Rows:
    rows = WindowState(W).push(frames, np.zeros(len(frames), np.int64), bl)
    return rows.take(np.flatnonzero(rows.can_id == COOLANT_ID))


def out_of_range(bl, frames: np.ndarray) -> np.ndarray:
    return rows_of(bl, frames).X[:, F["out_of_range"]]


def scored(rows: Rows) -> ScoredRows:
    """``rows`` as the evidence reads them (scores and evidence do not matter to it)."""
    zeros = np.zeros(len(rows))
    return ScoredRows("p", 1, rows, zeros, np.zeros((len(rows), N_EVIDENCE)), ["v"], ["b"], zeros)


def trained():
    drives = [drive(v, d, 1.7e9 + 1000 * d) for d, v in enumerate(LEVELS)]
    for d, f in enumerate(drives):
        f["data"][:, 6] = d  # a setting: one value a drive, 0..2
    owner = np.concatenate([np.full(len(f), d) for d, f in enumerate(drives)])
    return learn_baseline(np.concatenate(drives), owner, W)


def test_a_level_per_drive_gets_the_range_one_drive_went_past_the_others() -> None:
    drives = [drive(v, d, 1.7e9 + 1000 * d) for d, v in enumerate(LEVELS)]
    owner = np.concatenate([np.full(len(f), d) for d, f in enumerate(drives)])
    frames = np.concatenate(drives)
    bl = learn_baseline(frames, owner, W)
    s = int(np.searchsorted(bl.ids, COOLANT_ID))
    # 103..105 starts 17 below the others' 120..127: the range reaches 17 past each
    # end (more than the half width, 12, that a byte's range gets at least)
    assert drive_excess(frames["data"], owner)[BYTE] == 120 - 103
    assert (bl.byte_min[s, BYTE], bl.byte_max[s, BYTE]) == (103 - 17, 127 + 17)

    new = drive(110, 9, 1.8e9)  # a fourth drive's own level, between the others
    assert (out_of_range(bl, new) == 0).all()
    forged = new.copy()
    late = forged["ts"] >= forged["ts"][0] + 15
    forged["data"][late, BYTE] = 0xFF
    seen = out_of_range(bl, forged)
    assert (seen[:14] == 0).all() and (seen[15:] == 1.0).all(), seen


def test_one_drive_has_no_excess_to_learn() -> None:
    frames = drive(120, 0, 1.7e9)
    assert (drive_excess(frames["data"], np.zeros(len(frames), np.int64)) == 0).all()


def test_the_evidence_names_the_byte_furthest_out_its_value_and_its_range() -> None:
    """A new drive whose setting byte lies outside its range from the first frame has
    every frame out of range; a coolant forged to 0xFF adds no frame to that share, but
    the evidence then names the coolant byte, the furthest out: which byte, its value
    and its learned range."""
    bl = trained()
    new = drive(110, 9, 1.8e9)
    new["data"][:, 6] = 20  # past the training drives' 0..2 (and their margin)
    late = new["ts"] >= new["ts"][0] + 15
    new["data"][late, BYTE] = 0xFF
    rows = rows_of(bl, new)
    assert (rows.X[:, F["out_of_range"]] == 1.0).all()
    s = int(np.searchsorted(bl.ids, COOLANT_ID))
    lo, hi = int(bl.byte_min[s, BYTE]), int(bl.byte_max[s, BYTE])
    assert {read_far_note(int(n)) for n in rows.far[:14]} == {(6, 20, 0, int(bl.byte_max[s, 6]))}
    assert {read_far_note(int(n)) for n in rows.far[15:]} == {(BYTE, 0xFF, lo, hi)}

    sc = scored(rows)
    text = describe(sc, 20, "out_of_range", W)
    assert text == ("0x4E7: payload byte outside its learned range in 100% of frames; "
                    f"byte 5 read 255 (0xFF), learned range {lo}-{hi}"), text  # fmt: skip
    assert describe(sc, 3, "out_of_range", W).endswith(f"byte 6 read 20 (0x14), learned range 0-{bl.byte_max[s, 6]}")
    # a byte that never moved in training (byte 7, 0 on every drive) moving: named too
    moved = drive(110, 9, 1.8e9)
    moved["data"][:, 7] = 0x60
    text = describe(scored(rows_of(bl, moved)), 3, "fixed_out", W)
    assert text == ("0x4E7: a byte that never changed in training changed in 100% of frames; "
                    "byte 7 read 96 (0x60), learned range 0-0"), text  # fmt: skip
    moved["data"][:, BYTE] = 0xFF  # a byte further out, that did move: not the one named
    text = describe(scored(rows_of(bl, moved)), 3, "fixed_out", W)
    assert text == "0x4E7: a byte that never changed in training changed in 100% of frames", text
    inside = rows_of(bl, drive(110, 9, 1.8e9))
    assert inside.far is None  # no byte out: no note, and the sentence says no more
