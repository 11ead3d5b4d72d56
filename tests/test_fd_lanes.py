"""CAN FD frames folded into classic lanes (detector.core.fd)."""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.fd import describe_id, is_lane, to_fd, to_lanes
from detector.core.schema import (
    EXTENDED_FLAG,
    FD_FRAME_DTYPE,
    FD_LENGTHS,
    FLAG_BRS,
    FLAG_FD,
    FRAME_DTYPE,
    fd_dlc,
    make_frames,
)


def _fd(rows: list[tuple[float, int, int, int]]) -> np.ndarray:
    """(ts, can_id, flags, length) rows, data bytes 0, 1, 2, ... of each."""
    out = np.zeros(len(rows), FD_FRAME_DTYPE)
    for i, (ts, can_id, flags, length) in enumerate(rows):
        out[i]["ts"], out[i]["can_id"], out[i]["flags"] = ts, can_id, flags
        out[i]["dlc"] = fd_dlc(length) if flags & FLAG_FD else length
        out[i]["data"][:length] = np.arange(length) + 1
    return out


def test_dlc_codes_map_to_the_fd_lengths():
    assert list(FD_LENGTHS[9:]) == [12, 16, 20, 24, 32, 48, 64]
    assert list(fd_dlc([0, 8, 9, 12, 13, 33, 64])) == [0, 8, 9, 9, 10, 14, 15]
    with pytest.raises(ValueError):
        fd_dlc(65)


def test_a_classic_array_is_its_own_lanes():
    frames = make_frames([1.0, 2.0], [0x100, 0x200], np.ones((2, 8)))
    assert to_lanes(frames) is frames
    assert to_lanes(to_fd(frames)).tobytes() == frames.tobytes()


def test_fd_frames_become_one_lane_per_eight_bytes_in_order():
    ext = 0x18DA10F1 | int(EXTENDED_FLAG)
    frames = _fd([(1.0, 0x123, 0, 8), (1.5, 0x1A0, FLAG_FD | FLAG_BRS, 12), (2.0, ext, FLAG_FD, 64)])
    lanes = to_lanes(frames)
    assert lanes.dtype == FRAME_DTYPE
    assert len(lanes) == 1 + 2 + 8
    assert list(lanes["ts"]) == [1.0, 1.5, 1.5] + [2.0] * 8
    assert list(lanes["dlc"]) == [8, 8, 4] + [8] * 8
    assert lanes[0]["can_id"] == 0x123 and not is_lane(lanes[0]["can_id"])
    assert is_lane(lanes["can_id"][1:]).all()
    assert len(set(lanes["can_id"][3:])) == 8
    assert bytes(lanes[2]["data"]) == bytes([9, 10, 11, 12, 0, 0, 0, 0])
    assert bytes(lanes[10]["data"]) == bytes(range(57, 65))
    assert describe_id(lanes[2]["can_id"]) == "0x1A0 FD bytes 8-15"
    assert describe_id(lanes[10]["can_id"]).endswith("x FD bytes 56-63")
    assert describe_id(0x123) == "0x123"


def test_a_classic_id_sending_fd_gets_ids_it_never_had():
    classic = to_lanes(_fd([(1.0, 0x1A0, 0, 8)]))
    fd = to_lanes(_fd([(1.0, 0x1A0, FLAG_FD, 8)]))
    assert set(classic["can_id"]).isdisjoint(fd["can_id"])
