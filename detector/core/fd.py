"""CAN FD frames folded into classic 8-byte lanes, so every feature and model built for
classic frames covers them.

An FD frame of id X and length L becomes ceil(L / 8) classic frames ("lanes"),
lane k carrying bytes 8k..8k+7 with dlc min(8, L - 8k), under a lane id of its
own: bit 30 set (no CAN id uses it), k in bits 26-28, X below. Each lane is then
a stream like any other: range, flips, jumps, couplings, counters and checksums
are learned per lane, and a stream's state grows with the FD id's length (one
classic stream's state per 8 bytes), never for classic ids.

Each FD frame of 2 bytes or more adds one more lane, its *checksum lane*
(``CHECK_FLAG`` set, ``describe_id``: "0x1A0 FD checksums"), whose bytes test the
frame whole: byte 0 against a CRC-8 (polynomials 0x1D and 0x2F), the sum and the
XOR of the bytes after it, and the last byte against the same over the bytes
before it (the two places an E2E-style checksum sits), each as ``claimed XOR
computed`` (``claimed - computed`` for the sum). A CRC is affine in its start
value, so whatever the init value, final XOR or data id hashed in front (AUTOSAR
E2E hashes a data id no detector knows), a valid checksum of a given length makes
its byte constant: a forged byte whose checksum was not recomputed moves it, and
the lane's learned range says so. Checksums of no such kind just give noise bytes
that teach a full range.

What this makes evidence without a line of its own: an FD id sending a length it
never used (a lane that never existed appears, lanes fall silent, or a lane's dlc
changes), and a classic id suddenly sending FD (lane ids never seen). What it
cannot see: a coupling between signals in two lanes, or a checksum of another kind
spanning lanes.

Error frames, whatever id or error class they carry, become one stream of their own,
``ERROR_FRAMES_ID`` (bit 29, Linux's CAN_ERR_FLAG): a vehicle's error-frame rate is
then a feature like any id's rate, an error-frame flood (the signature of a bus-off
attack) is evidence named "error frames", and error frames never pose as an id.
Remote (RTR) frames likewise become ``REMOTE_FRAMES_ID``, "remote frames": a remote
frame carries no data, and folded into its id's stream it read as a frame of zeros
(out of range, counter and checksum broken, for the frame after it too).

A 29-bit id keeps its low 26 bits in its lane ids: its top three (J1939's
priority) give way to k, so two FD ids that differ only there share lanes.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from detector.core.schema import (
    EXTENDED_FLAG,
    FD_FRAME_DTYPE,
    FD_LENGTHS,
    FLAG_ERROR,
    FLAG_FD,
    FLAG_RTR,
    FRAME_DTYPE,
    ID_MASK_EXTENDED,
    format_id,
)

LANE_FLAG = 0x4000_0000
ERROR_FRAMES_ID = 0x2000_0000
REMOTE_FRAMES_ID = 0x2000_0001  # bit 29 as error frames; no CAN id or lane id is either
#: the streams that stand for a kind of frame, not an id, and the name evidence gives them
FRAME_KIND_STREAMS = {ERROR_FRAMES_ID: "error frames", REMOTE_FRAMES_ID: "remote frames"}
CHECK_FLAG = 0x2000_0000  # with LANE_FLAG: an FD id's checksum lane
LANE_SHIFT = 26
_LANE_BITS = 0x7 << LANE_SHIFT
_KEEP = ID_MASK_EXTENDED & ~_LANE_BITS


def lane_ids(can_id: np.ndarray, lane: np.ndarray) -> np.ndarray:
    """The lane id of bytes ``8 * lane`` on of FD frames of ``can_id``."""
    can_id = np.asarray(can_id, np.uint32)
    base = (can_id & np.uint32(EXTENDED_FLAG | _KEEP)) | np.uint32(LANE_FLAG)
    return base | (np.asarray(lane, np.uint32) << np.uint32(LANE_SHIFT))


def frame_ids(can_id: np.ndarray) -> np.ndarray:
    """The id a lane belongs to, as one value per FD frame id (its lane 0's id); any
    other id as it is: rows with equal values are one id's evidence."""
    can_id = np.asarray(can_id, np.uint32)
    lane = (can_id & np.uint32(LANE_FLAG)) != 0
    return np.where(lane, can_id & ~np.uint32(CHECK_FLAG | _LANE_BITS), can_id)


def lane_place(can_id: int) -> tuple[int, int]:
    """(the id as its frames carry it, the first of its frames' bytes a lane holds): 0
    for any id that is no lane, -1 for an FD id's checksum lane (no bytes of its own)."""
    can_id = int(can_id)
    if not can_id & LANE_FLAG:
        return can_id, 0
    bare = can_id & ~(LANE_FLAG | CHECK_FLAG | _LANE_BITS)
    return bare, -1 if can_id & CHECK_FLAG else 8 * ((can_id & _LANE_BITS) >> LANE_SHIFT)


def is_lane(can_id: np.ndarray | int) -> np.ndarray:
    return (np.asarray(can_id, np.uint32) & np.uint32(LANE_FLAG)) != 0


def describe_id(can_id: int) -> str:
    """``format_id`` that also names an FD lane: ``0x1A0 FD bytes 8-15``."""
    can_id = int(can_id)
    if can_id in FRAME_KIND_STREAMS:
        return FRAME_KIND_STREAMS[can_id]
    if not can_id & LANE_FLAG:
        return format_id(can_id)
    bare, first = lane_place(can_id)
    if first < 0:
        return f"{format_id(bare)} FD checksums"
    return f"{format_id(bare)} FD bytes {first}-{first + 7}"


def parse_described_id(text: str) -> int:
    """The id ``describe_id`` wrote as ``text`` (``0x1E4``, ``0x18FEF100x``, ``0x1A0 FD
    bytes 8-15``, ``0x1A0 FD checksums``, ``error frames``, ``remote frames``);
    ValueError otherwise."""
    text = str(text).strip()
    for kind, name in FRAME_KIND_STREAMS.items():
        if text == name:
            return kind
    head, _, tail = text.partition(" ")
    cid = int(head[:-1], 16) | int(EXTENDED_FLAG) if head.endswith("x") and len(head) > 2 else int(head, 16)
    if not tail:
        return cid
    if tail == "FD checksums":
        return int(lane_ids(cid, 0)) | CHECK_FLAG
    first = tail.removeprefix("FD bytes ").split("-")[0]
    if first == tail or not first.isdigit() or int(first) % 8 or int(first) > 56:
        raise ValueError(f"not a CAN id: {text!r}")
    return int(lane_ids(cid, int(first) // 8))


def to_fd(frames: np.ndarray) -> np.ndarray:
    """A classic frame array as FD frames (no FD flag: classic frames in an FD log)."""
    if frames.dtype == FD_FRAME_DTYPE:
        return frames
    out = np.zeros(len(frames), FD_FRAME_DTYPE)
    for name in ("ts", "can_id", "dlc", "flags", "label"):
        out[name] = frames[name]
    out["data"][:, :8] = frames["data"]
    return out


def fd_lengths(frames: np.ndarray) -> np.ndarray:
    """Data bytes of each frame, of a classic or an FD array: ``FD_LENGTHS[dlc]`` for a
    frame with FLAG_FD, else its dlc, at most 8."""
    fd = (frames["flags"] & FLAG_FD) != 0
    return np.where(fd, FD_LENGTHS[frames["dlc"] & 15], np.minimum(frames["dlc"], 8))


def to_lanes(frames: np.ndarray) -> np.ndarray:
    """Classic frames for the feature pipeline: a classic array as it is; in an FD
    array, classic frames as they are and each FD frame as its lanes, in order (the
    lanes of a frame one after another, at its timestamp)."""
    return lanes_and_source(frames)[0]


def lanes_and_source(frames: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """``to_lanes(frames)`` and, for an FD array, the index in ``frames`` each lane
    came from (None for a classic array: each frame is its own)."""
    if frames.dtype == FRAME_DTYPE:
        return _frame_kinds_as_streams(frames), None
    frames = _frame_kinds_as_streams(frames)
    fd = (frames["flags"] & FLAG_FD) != 0
    length = fd_lengths(frames).astype(np.int64)
    # a lane per 8 bytes, and the checksum lane of a frame of 2 bytes or more
    n_lanes = np.where(fd, np.maximum(1, (length + 7) // 8) + (length >= 2), 1)
    first = np.zeros(len(frames) + 1, np.int64)
    np.cumsum(n_lanes, out=first[1:])
    out = np.zeros(int(first[-1]), FRAME_DTYPE)
    src = np.empty(len(out), np.int64)
    _fill_lanes(
        frames["ts"], frames["can_id"], frames["dlc"], frames["flags"], frames["label"],
        frames["data"], fd, length, first, out["ts"], out["can_id"], out["dlc"],
        out["flags"], out["label"], out["data"], src, np.uint32(LANE_FLAG), np.uint32(CHECK_FLAG),
        np.uint32(EXTENDED_FLAG | _KEEP), LANE_SHIFT,
    )  # fmt: skip
    return out, src


@njit(cache=True, nogil=True)
def _fill_lanes(
    ts, can_id, dlc, flags, label, data, fd, length, first,
    o_ts, o_id, o_dlc, o_flags, o_label, o_data, src, lane_flag, check_flag, keep, shift,
):  # pragma: no cover - compiled
    """One pass of ``lanes_and_source``: frame i's lanes at rows first[i]..first[i+1]."""
    for i in range(ts.shape[0]):
        at = first[i]
        end = first[i + 1]
        for r in range(at, end):
            o_ts[r] = ts[i]
            o_flags[r] = flags[i]
            o_label[r] = label[i]
            src[r] = i
        if not fd[i]:
            o_id[at] = can_id[i]
            o_dlc[at] = dlc[i]
            for b in range(min(length[i], 8)):
                o_data[at, b] = data[i, b]
            continue
        n = length[i]
        base = (can_id[i] & keep) | lane_flag
        lanes = max(1, (n + 7) // 8)
        for k in range(lanes):
            r = at + k
            o_id[r] = base | (np.uint32(k) << shift)
            o_dlc[r] = min(max(n - 8 * k, 0), 8)
            for b in range(8 * k, min(n, 8 * k + 8)):
                o_data[r, b - 8 * k] = data[i, b]
        if n >= 2:
            r = at + lanes
            o_id[r] = base | check_flag
            o_dlc[r] = 8
            _checksum_lane(data[i], n, o_data[r])


_CRC_TABLES = np.zeros((2, 256), np.uint8)
for _t, _poly in enumerate((0x1D, 0x2F)):
    for _b in range(256):
        _c = _b
        for _ in range(8):
            _c = ((_c << 1) ^ _poly) & 0xFF if _c & 0x80 else (_c << 1) & 0xFF
        _CRC_TABLES[_t, _b] = _c


@njit(cache=True, nogil=True, inline="always")
def _checksum_lane(data, n, out):  # pragma: no cover - compiled
    """The checksum lane of one frame of ``n`` bytes (see the module's docstring)."""
    for part in range(2):  # checksum first (over 1..n-1), or last (over 0..n-2)
        lo = 1 if part == 0 else 0
        claimed = data[0] if part == 0 else data[n - 1]
        c1 = np.uint8(0)
        c2 = np.uint8(0)
        total = 0
        x = 0
        for j in range(lo, lo + n - 1):
            b = data[j]
            c1 = _CRC_TABLES[0, c1 ^ b]
            c2 = _CRC_TABLES[1, c2 ^ b]
            total += b
            x ^= b
        k = 4 * part
        out[k] = claimed ^ c1
        out[k + 1] = claimed ^ c2
        out[k + 2] = (claimed - total) & 0xFF
        out[k + 3] = claimed ^ x


def _frame_kinds_as_streams(frames: np.ndarray) -> np.ndarray:
    """``frames`` with every error frame's id set to ERROR_FRAMES_ID and every other
    remote frame's to REMOTE_FRAMES_ID (a copy only when there is one: classic traffic
    pays a scan of its flags)."""
    flags = frames["flags"]
    if not (flags & (FLAG_ERROR | FLAG_RTR)).any():
        return frames
    err = (flags & FLAG_ERROR) != 0
    frames = frames.copy()
    frames["can_id"][err] = ERROR_FRAMES_ID
    frames["can_id"][~err & ((flags & FLAG_RTR) != 0)] = REMOTE_FRAMES_ID
    return frames
