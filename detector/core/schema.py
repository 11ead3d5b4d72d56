"""The one in-memory representation of CAN frames, shared by every stage.

A frame array is a numpy structured array of ``FRAME_DTYPE``. Its layout is the
binary wire record (see README, "Wire format") so a Kafka payload decodes with a
single ``np.frombuffer``; byte 14, reserved on the wire, carries the per-frame
ground-truth label in memory (0 = benign) and is zeroed when encoding.
"""

from __future__ import annotations

import sys

import numpy as np

#: Bit 31 of ``can_id`` marks a 29-bit (extended) identifier.
EXTENDED_FLAG = np.uint32(0x8000_0000)
ID_MASK_EXTENDED = 0x1FFF_FFFF
ID_MASK_STANDARD = 0x7FF

#: ``flags`` bits. FD, BRS (bit-rate switch) and ESI (error state indicator) are CAN FD's.
FLAG_RTR = 0x01
FLAG_ERROR = 0x02
FLAG_FD = 0x04
FLAG_BRS = 0x08
FLAG_ESI = 0x10

FRAME_DTYPE = np.dtype(
    [
        ("ts", "<f8"),  # seconds since epoch (or since capture start)
        ("can_id", "<u4"),  # bit 31 = extended
        ("dlc", "u1"),
        ("flags", "u1"),
        ("label", "i1"),  # ground truth, index into LABELS; reserved (0) on the wire
        ("reserved", "u1"),
        ("data", "u1", (8,)),
    ]
)
assert FRAME_DTYPE.itemsize == 24

#: A CAN FD frame: the classic layout with 64 data bytes, ``dlc`` the data length
#: *code* 0-15 (``FD_LENGTHS`` maps it to bytes). Classic and FD frames live in
#: separate arrays side by side, so classic traffic keeps its 24-byte frames and
#: every kernel written for them; ``detector.core.fd`` folds FD frames into them.
FD_FRAME_DTYPE = np.dtype(
    [
        ("ts", "<f8"),
        ("can_id", "<u4"),
        ("dlc", "u1"),  # data length code 0-15
        ("flags", "u1"),  # FLAG_FD set for an FD frame, else a classic frame in an FD log
        ("label", "i1"),
        ("reserved", "u1"),
        ("data", "u1", (64,)),
    ]
)
assert FD_FRAME_DTYPE.itemsize == 80

#: Bytes carried by each data length code (ISO 11898-1: 9-15 are FD's 12..64).
FD_LENGTHS = np.array([0, 1, 2, 3, 4, 5, 6, 7, 8, 12, 16, 20, 24, 32, 48, 64], np.uint8)


def fd_dlc(length: np.ndarray | int) -> np.ndarray:
    """The smallest data length code whose length holds ``length`` bytes (<= 64)."""
    length = np.asarray(length)
    if length.size and (length.min() < 0 or length.max() > 64):
        raise ValueError("a CAN FD frame holds 0 to 64 data bytes")
    return np.searchsorted(FD_LENGTHS, length).astype(np.uint8)


def is_fd_array(frames: np.ndarray) -> bool:
    """Whether ``frames`` is an FD_FRAME_DTYPE array (a log with FD frames in it)."""
    return frames.dtype == FD_FRAME_DTYPE


def as_classic(frames: np.ndarray) -> np.ndarray:
    """An FD array that holds no FD frame as the classic frames it is (FRAME_DTYPE);
    ValueError if it holds any."""
    if (frames["flags"] & FLAG_FD).any():
        raise ValueError("CAN FD frames are no classic frames")
    out = np.zeros(len(frames), FRAME_DTYPE)
    for name in ("ts", "can_id", "dlc", "flags", "label"):
        out[name] = frames[name]
    out["data"] = frames["data"][:, :8]
    return out


#: Label codes. Index = value stored in ``label``. ``unknown`` is an attack of
#: unstated kind (CrySyS "1", HCRL "T").
LABELS: tuple[str, ...] = (
    "benign",
    "dos",
    "fuzzing",
    "spoofing",
    "masquerade",
    "suspension",
    "replay",
    "unknown",
)
ATTACK_KINDS: tuple[str, ...] = LABELS[1:]
LABEL_CODE: dict[str, int] = {name: i for i, name in enumerate(LABELS)}


def empty_frames(n: int = 0) -> np.ndarray:
    """A zeroed frame array of length ``n``."""
    return np.zeros(n, dtype=FRAME_DTYPE)


_RAW = np.dtype((np.void, FRAME_DTYPE.itemsize))


def concat_frames(parts: list[np.ndarray]) -> np.ndarray:
    """``np.concatenate`` of frame arrays, without numpy's per-field promotion of
    structured dtypes (3x faster for the hundreds of records of one poll)."""
    if not parts:
        return empty_frames()
    return np.concatenate([p.view(_RAW) for p in parts]).view(FRAME_DTYPE)


def take_frames(frames: np.ndarray, index: np.ndarray) -> np.ndarray:
    """``frames[index]`` (positions or a mask) as one opaque 24-byte copy per frame."""
    return frames.view(_RAW)[index].view(FRAME_DTYPE)


def make_frames(
    ts: np.ndarray,
    can_id: np.ndarray,
    data: np.ndarray,
    dlc: np.ndarray | None = None,
    label: np.ndarray | None = None,
    extended: np.ndarray | bool = False,
) -> np.ndarray:
    """Build a frame array from columns; ``data`` is (n, <=8) uint8."""
    ts = np.asarray(ts, dtype=np.float64)
    out = empty_frames(len(ts))
    out["ts"] = ts
    ids = np.asarray(can_id, dtype=np.uint32)
    ext = np.broadcast_to(np.asarray(extended, dtype=bool), ids.shape)
    out["can_id"] = np.where(ext, ids | EXTENDED_FLAG, ids)
    data = np.asarray(data, dtype=np.uint8).reshape(len(ts), -1)
    out["data"][:, : data.shape[1]] = data
    out["dlc"] = data.shape[1] if dlc is None else np.asarray(dlc, dtype=np.uint8)
    if label is not None:
        out["label"] = label
    return out


def is_extended(can_id: np.ndarray) -> np.ndarray:
    return (np.asarray(can_id, dtype=np.uint32) & EXTENDED_FLAG) != 0


def arbitration_id(can_id: np.ndarray) -> np.ndarray:
    """The bare 11/29-bit identifier without the extended flag."""
    return np.asarray(can_id, dtype=np.uint32) & np.uint32(ID_MASK_EXTENDED)


def format_id(can_id: int) -> str:
    """Human form: 0x6E0 for standard ids, 0x18FEF100x for extended."""
    can_id = int(can_id)
    if can_id & int(EXTENDED_FLAG):
        return f"0x{can_id & ID_MASK_EXTENDED:08X}x"
    return f"0x{can_id:03X}"


def label_name(code: int) -> str:
    return LABELS[int(code)] if 0 <= int(code) < len(LABELS) else "unknown"


#: the bytes a dlc of 0..8 keeps of a payload read as one little-endian word
DLC_MASKS = np.array([(1 << (8 * d)) - 1 for d in range(8)] + [2**64 - 1], np.uint64)


def frame_words(frames: np.ndarray) -> np.ndarray:
    """``frames`` as (n, 3) uint64 words, a view: the layout above is the little-endian
    one FRAME_DTYPE spells out."""
    return _words(frames, FRAME_DTYPE, "FRAME_DTYPE")


def fd_frame_words(frames: np.ndarray) -> np.ndarray:
    """An FD_FRAME_DTYPE array as (n, 10) uint64 words, a view: ts; the middle word as
    in ``frame_words``; the 64 data bytes as eight little-endian words."""
    return _words(frames, FD_FRAME_DTYPE, "FD_FRAME_DTYPE")


def _words(frames: np.ndarray, dtype: np.dtype, name: str) -> np.ndarray:
    if sys.byteorder != "little":
        raise RuntimeError("the frame kernels assume a little-endian host")
    if frames.dtype != dtype or frames.ndim != 1 or not frames.flags.c_contiguous:
        raise ValueError(f"need a contiguous 1-d {name} array, got {frames.dtype} {frames.shape}")
    return frames.view(np.uint64).reshape(-1, dtype.itemsize // 8)
