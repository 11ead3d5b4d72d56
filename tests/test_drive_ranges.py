"""A byte whose level is the drive's own (a warm engine's coolant: 103 on one drive,
120 on the next, 125 on a third) gets a range as wide as one drive went past the
others, not none: a new drive's level stays inside it, a coolant forged to 0xFF
does not (ROAD's max-coolant attack sets 0x4E7 byte 5 to 0xFF).
"""

from __future__ import annotations

import numpy as np

from detector.core.schema import make_frames
from detector.features.baseline import drive_excess, learn_baseline
from detector.features.columns import F
from detector.features.windowing import WindowState

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


def out_of_range(bl, frames: np.ndarray) -> np.ndarray:
    rows = WindowState(W).push(frames, np.zeros(len(frames), np.int64), bl)
    return rows.X[rows.can_id == COOLANT_ID, F["out_of_range"]]


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
