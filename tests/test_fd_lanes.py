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


def test_fd_frames_become_one_lane_per_eight_bytes_and_a_checksum_lane_in_order():
    ext = 0x18DA10F1 | int(EXTENDED_FLAG)
    frames = _fd([(1.0, 0x123, 0, 8), (1.5, 0x1A0, FLAG_FD | FLAG_BRS, 12), (2.0, ext, FLAG_FD, 64)])
    lanes = to_lanes(frames)
    assert lanes.dtype == FRAME_DTYPE
    assert len(lanes) == 1 + (2 + 1) + (8 + 1)
    assert list(lanes["ts"]) == [1.0] + [1.5] * 3 + [2.0] * 9
    assert list(lanes["dlc"]) == [8, 8, 4, 8] + [8] * 9
    assert lanes[0]["can_id"] == 0x123 and not is_lane(lanes[0]["can_id"])
    assert is_lane(lanes["can_id"][1:]).all()
    assert len(set(lanes["can_id"][4:])) == 9
    assert bytes(lanes[2]["data"]) == bytes([9, 10, 11, 12, 0, 0, 0, 0])
    assert bytes(lanes[11]["data"]) == bytes(range(57, 65))
    assert describe_id(lanes[2]["can_id"]) == "0x1A0 FD bytes 8-15"
    assert describe_id(lanes[3]["can_id"]) == "0x1A0 FD checksums"
    assert describe_id(lanes[11]["can_id"]).endswith("x FD bytes 56-63")
    assert describe_id(0x123) == "0x123"


def _crc8(data: bytes, poly: int, init: int) -> int:
    c = init
    for b in data:
        c ^= b
        for _ in range(8):
            c = ((c << 1) ^ poly) & 0xFF if c & 0x80 else (c << 1) & 0xFF
    return c


def test_a_valid_e2e_checksum_keeps_its_checksum_byte_constant_and_a_forgery_moves_it():
    """CRC-8 SAE J1850 (init 0xFF, final XOR 0xFF) over a data id nobody told the
    detector and the payload, in byte 0: whatever the payload, the checksum lane's
    CRC-0x1D byte is constant; a byte forged without a new CRC moves it."""
    rng = np.random.default_rng(3)
    n, length, data_id = 200, 32, bytes([0x4B, 0x91])
    frames = np.zeros(n, FD_FRAME_DTYPE)
    frames["can_id"], frames["flags"], frames["dlc"] = 0x1F4, FLAG_FD, fd_dlc(length)
    frames["ts"] = np.arange(n) * 0.01
    payload = rng.integers(0, 256, (n, length - 1), dtype=np.uint8)
    frames["data"][:, 1:length] = payload
    frames["data"][:, 0] = [_crc8(data_id + bytes(p), 0x1D, 0xFF) ^ 0xFF for p in payload]
    check = to_lanes(frames)
    check = check[describe_id_is_check(check["can_id"])]
    assert len(check) == n and len(np.unique(check["data"][:, 0])) == 1
    assert len(np.unique(check["data"][:, 2])) > 50  # the sum does not hold: noise
    frames["data"][100:, 7] ^= 0x20  # forged, checksum left as it was
    forged = to_lanes(frames)
    forged = forged[describe_id_is_check(forged["can_id"])]
    assert (forged["data"][100:, 0] != check["data"][0, 0]).all()


def describe_id_is_check(can_id: np.ndarray) -> np.ndarray:
    return np.array([describe_id(int(c)).endswith("FD checksums") for c in can_id])


def test_a_classic_id_sending_fd_gets_ids_it_never_had():
    classic = to_lanes(_fd([(1.0, 0x1A0, 0, 8)]))
    fd = to_lanes(_fd([(1.0, 0x1A0, FLAG_FD, 8)]))
    assert set(classic["can_id"]).isdisjoint(fd["can_id"])
