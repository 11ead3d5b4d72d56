"""Write frame arrays as CAN log files, the inverse of ``replay.readers``.

candump, ROAD and HCRL text is produced vectorized: each line is laid out as a
fixed-width row of a ``uint8`` matrix where unused cells hold NUL, and the NULs
are squeezed out at the end. ASC, BLF, TRC and python-can CSV go through
python-can's writer classes (one ``can.Message`` per frame).

CAN FD arrays (FD_FRAME_DTYPE) are written by candump (``ID##F`` + data), ASC
(``CANFD`` lines), BLF (CAN_FD_MESSAGE) and TRC 2.1 (types FD/FB/FE/BI, which
python-can 4.6's TRCWriter would drop) so that the readers give them back.
python-can's CSV has no FD column: it keeps FD frames of more than 8 bytes
(read back as FD) but refuses the ones it would change (BRS/ESI set, or an FD
frame of <= 8 bytes); ROAD, HCRL and CrySyS hold classic frames only. A format
that cannot store a frame refuses the array with a ValueError, never drops it.

Labels survive where the format has a place for them: candump (CrySyS-style
columns ``1``/``False`` plus the kind), ROAD (label names), HCRL's csv (``T``/``R``)
and can-train-and-test (``1``/``0``), the last two only attacked-or-not; HCRL's
text format has none.
"""

from __future__ import annotations

import math
import os
from datetime import UTC, datetime
from pathlib import Path

import can
import numpy as np

from detector.core.fd import fd_lengths
from detector.core.schema import (
    EXTENDED_FLAG,
    FLAG_BRS,
    FLAG_ERROR,
    FLAG_ESI,
    FLAG_FD,
    FLAG_RTR,
    ID_MASK_EXTENDED,
    LABELS,
    as_classic,
    fd_dlc,
    is_fd_array,
)
from replay.readers import ALIASES, canonical_format

_BY_SUFFIX = {".log": "candump", ".asc": "asc", ".blf": "blf", ".trc": "trc", ".csv": "csv"}
_HEXCHARS = np.frombuffer(b"0123456789ABCDEF", np.uint8)
_CAN_ERR_FLAG = 0x2000_0000
#: ROAD's own label spellings; other kinds are written capitalized ("Dos").
ROAD_NAMES = {"benign": "Benign", "fuzzing": "Fuzzing", "spoofing": "Fabrication"}
ROAD_NAMES["masquerade"] = "Masquerade"


def writable_formats() -> tuple[str, ...]:
    return tuple(_WRITERS)


def write_frames(path: str | os.PathLike[str], frames: np.ndarray, fmt: str | None = None) -> None:
    """Write ``frames`` to ``path`` in ``fmt`` (by suffix when None)."""
    if fmt is None:
        fmt = _BY_SUFFIX.get(Path(path).suffix.lower())
        if fmt is None:
            raise ValueError(f"{path}: cannot tell the format from the suffix; pass fmt")
    name = canonical_format(ALIASES.get(fmt, fmt))
    if name not in _WRITERS:
        raise ValueError(
            f"format {name!r} is read-only (writable: {', '.join(writable_formats())})"
        )
    why = refusal(frames, name)
    if why:
        raise ValueError(f"{path}: {why}")
    if is_fd_array(frames) and name in _CLASSIC_ONLY:
        frames = as_classic(frames)
    _WRITERS[name](str(path), frames)


def refusal(frames: np.ndarray, fmt: str) -> str | None:
    """Why format ``fmt`` (a writable one) cannot store ``frames`` as they are, or None.
    A writer never changes what it writes: ask before writing a set of files."""
    name = canonical_format(ALIASES.get(fmt, fmt))
    if name in _CLASSIC_ONLY:
        if (frames["flags"] & FLAG_FD).any():
            return f"format {name!r} holds classic CAN frames only, not CAN FD"
        if (frames["flags"] & FLAG_ERROR).any():  # an error frame would read as a bad id
            return f"format {name!r} has no error frames"
        if name != "hcrl-txt" and (frames["flags"] & FLAG_RTR).any():  # read back as data
            return f"format {name!r} has no remote frames"
        return None
    return _refusal(name, frames) if name in _PYTHON_CAN else None


# ----------------------------------------------------------- text building


def _const(n: int, text: bytes) -> np.ndarray:
    return np.broadcast_to(np.frombuffer(text, np.uint8), (n, len(text)))


def _dec(x: np.ndarray, width: int, pad_zero: bool) -> np.ndarray:
    """(n, width) ASCII decimal digits; leading zeros become NUL unless pad_zero."""
    x = np.asarray(x, np.uint64)
    p = np.array([10**k for k in range(width - 1, -1, -1)], np.uint64)
    digits = (x[:, None] // p) % np.uint64(10)
    out = (digits + 48).astype(np.uint8)
    if not pad_zero:
        lead = (np.cumsum(digits, axis=1) == 0) & (np.arange(width) < width - 1)
        out[lead] = 0
    return out


def _hex(x: np.ndarray, width: int) -> np.ndarray:
    shifts = np.arange(width - 1, -1, -1, dtype=np.uint32) * 4
    return _HEXCHARS[(np.asarray(x, np.uint32)[:, None] >> shifts) & 15]


def _fixed_time(ts: np.ndarray) -> np.ndarray:
    """``ts`` as ``123.456789`` (microseconds), (n, w) with NUL padding."""
    ts = np.asarray(ts, np.float64)
    if len(ts) and (ts.min() < 0 or not np.isfinite(ts).all()):
        raise ValueError("timestamps must be finite and >= 0")
    us = np.rint(ts * 1e6) if len(ts) and ts.max() < 9e9 else None
    if us is not None:
        ip, frac = np.divmod(us.astype(np.uint64), np.uint64(1_000_000))
    else:  # large values: split first so the fraction keeps its digits
        ip = np.floor(ts)
        frac = np.rint((ts - ip) * 1e6)
        ip = ip.astype(np.uint64) + (frac >= 1e6)
        frac = np.where(frac >= 1e6, 0, frac).astype(np.uint64)
    width = max(len(str(int(ip.max()))) if len(ip) else 1, 1)
    return np.hstack([_dec(ip, width, False), _const(len(ts), b"."), _dec(frac, 6, True)])


def _id_cells(frames: np.ndarray, std_width: int) -> np.ndarray:
    """Hex id: ``std_width`` digits for standard ids, 8 for extended (NUL-padded)."""
    cid = frames["can_id"]
    ext = (cid & EXTENDED_FLAG) != 0
    err = (frames["flags"] & FLAG_ERROR) != 0
    arb = (cid & ID_MASK_EXTENDED) | np.where(err, _CAN_ERR_FLAG, 0).astype(np.uint32)
    ext = ext | err
    full = _hex(arb, 8)
    std = np.zeros_like(full)
    std[:, :std_width] = full[:, 8 - std_width :]
    return np.where(ext[:, None], full, std)


def _byte_cells(frames: np.ndarray, sep: bytes) -> np.ndarray:
    """Data bytes as hex pairs, each followed by ``sep``; cells past the data length
    left empty (the dlc of a classic frame, the length of an FD frame's code)."""
    data = frames["data"]
    n = len(frames)
    length = fd_lengths(frames)
    pairs = np.stack([_HEXCHARS[data >> 4], _HEXCHARS[data & 15]], axis=2)
    pairs[np.arange(data.shape[1]) >= length[:, None]] = 0
    if not sep:
        return pairs.reshape(n, -1)
    seps = np.broadcast_to(np.frombuffer(sep, np.uint8), (n, data.shape[1], len(sep)))
    return np.concatenate([pairs, seps], axis=2).reshape(n, -1)


def _squeeze_to_file(path: str, header: bytes, rows: list[np.ndarray]) -> None:
    mat = np.hstack(rows)
    flat = mat.ravel()
    with open(path, "wb") as fh:
        fh.write(header)
        fh.write(flat[flat != 0].tobytes())


# --------------------------------------------------------------- formats


def _write_candump(path: str, frames: np.ndarray) -> None:
    n = len(frames)
    rtr = (frames["flags"] & FLAG_RTR) != 0
    data = _byte_cells(frames, b"")
    data[rtr] = 0
    data[rtr, 0] = ord("R")
    rdlc = np.where(rtr & (frames["dlc"] > 0), frames["dlc"] + 48, 0).astype(np.uint8)
    data[:, 1] = np.where(rtr, rdlc, data[:, 1])
    rows = [_const(n, b"("), _fixed_time(frames["ts"]), _const(n, b") can0 ")]
    rows += [_id_cells(frames, 3), _const(n, b"#")]
    if is_fd_array(frames):
        rows.append(_fd_marks(frames["flags"]))
    rows.append(data)
    if (frames["label"] != 0).any():
        rows.append(_label_columns(frames["label"]))
    rows.append(_const(n, b"\n"))
    _squeeze_to_file(path, b"", rows)


def _fd_marks(flags: np.ndarray) -> np.ndarray:
    """``#F`` after the id's ``#`` of an FD frame (F: 1 = BRS, 2 = ESI), empty else."""
    fd = (flags & FLAG_FD) != 0
    nib = ((flags & FLAG_BRS) != 0) * 1 + ((flags & FLAG_ESI) != 0) * 2
    return np.where(fd[:, None], np.stack([np.full(len(flags), 35), _HEXCHARS[nib]], 1), 0).astype(
        np.uint8
    )


def _label_columns(label: np.ndarray) -> np.ndarray:
    """CrySyS style ``1``/``False``, then a tab and the kind (``False`` if benign)."""
    words = [b" False\tFalse"] + [b" 1\t" + name.encode() for name in LABELS[1:]]
    width = max(len(w) for w in words)
    table = np.array([np.frombuffer(w.ljust(width, b"\0"), np.uint8) for w in words])
    return table[np.clip(label, 0, len(LABELS) - 1)]


def _word_table(words: list[str]) -> np.ndarray:
    width = max(len(w) for w in words)
    return np.array([np.frombuffer(w.encode().ljust(width, b"\0"), np.uint8) for w in words])


def _write_road(path: str, frames: np.ndarray) -> None:
    n = len(frames)
    names = [ROAD_NAMES.get(name, name.capitalize()) for name in LABELS]
    labels = _word_table(names)[np.clip(frames["label"], 0, len(LABELS) - 1)]
    rows = [_fixed_time(frames["ts"]), _const(n, b","), _id_cells(frames, 3), _const(n, b",")]
    rows += [_byte_cells(frames, b","), labels, _const(n, b"\n")]
    header = b"Time,Id," + b",".join(b"Byte%d" % k for k in range(1, 9)) + b",Label\n"
    _squeeze_to_file(path, header, rows)


def _write_hcrl(path: str, frames: np.ndarray) -> None:
    n = len(frames)
    flag = np.where(frames["label"] != 0, ord("T"), ord("R")).astype(np.uint8)[:, None]
    rows = [_fixed_time(frames["ts"]), _const(n, b","), _id_cells(frames, 4), _const(n, b",")]
    rows += [(frames["dlc"] + 48).astype(np.uint8)[:, None], _const(n, b",")]
    rows += [_byte_cells(frames, b","), flag, _const(n, b"\n")]
    header = b"Timestamp,CAN ID,DLC," + b",".join(b"DATA[%d]" % k for k in range(8)) + b",Flag\n"
    _squeeze_to_file(path, header, rows)


def _write_cantt(path: str, frames: np.ndarray) -> None:
    n = len(frames)
    attack = np.where(frames["label"] != 0, ord("1"), ord("0")).astype(np.uint8)[:, None]
    rows = [_fixed_time(frames["ts"]), _const(n, b","), _id_cells(frames, 3), _const(n, b",")]
    rows += [_byte_cells(frames, b""), _const(n, b","), attack, _const(n, b"\n")]
    _squeeze_to_file(path, b"timestamp,arbitration_id,data_field,attack\n", rows)


def _write_hcrl_txt(path: str, frames: np.ndarray) -> None:
    """HCRL's text lines (no labels; ``100`` and no data bytes for a remote frame)."""
    n = len(frames)
    rtr = (frames["flags"] & FLAG_RTR) != 0
    data = _byte_cells(frames, b" ")
    data[rtr] = 0
    flag = np.where(rtr[:, None], _const(n, b"100"), _const(n, b"000"))
    rows = [_const(n, b"Timestamp: "), _fixed_time(frames["ts"]), _const(n, b"        ID: ")]
    rows += [_id_cells(frames, 4), _const(n, b"    "), flag, _const(n, b"    DLC: ")]
    rows += [(frames["dlc"] + 48).astype(np.uint8)[:, None], _const(n, b"    "), data]
    rows.append(_const(n, b"\n"))
    _squeeze_to_file(path, b"", rows)


def _write_crysys(path: str, frames: np.ndarray) -> None:
    """CrySyS columns ``ts id flags dlc b0 .. b{dlc-1}`` (no labels)."""
    n = len(frames)
    rows = [_fixed_time(frames["ts"]), _const(n, b"    "), _id_cells(frames, 4)]
    rows += [_const(n, b"    000    "), (frames["dlc"] + 48).astype(np.uint8)[:, None]]
    rows += [_const(n, b"    "), _byte_cells(frames, b" "), _const(n, b"\n")]
    _squeeze_to_file(path, b"", rows)


def to_messages(frames: np.ndarray):
    """Yield ``can.Message`` objects for the python-can writers."""
    ts = frames["ts"].tolist()
    cid = frames["can_id"]
    arb = (cid & ID_MASK_EXTENDED).tolist()
    ext = ((cid & EXTENDED_FLAG) != 0).tolist()
    rtr = ((frames["flags"] & FLAG_RTR) != 0).tolist()
    err = ((frames["flags"] & FLAG_ERROR) != 0).tolist()
    raw = frames["data"].tobytes()
    width = frames["data"].shape[1]  # 8, or 64 for an FD array
    flags = frames["flags"]
    fd = ((flags & FLAG_FD) != 0).tolist()
    brs = ((flags & FLAG_BRS) != 0).tolist()
    esi = ((flags & FLAG_ESI) != 0).tolist()
    # python-can's dlc is the length in bytes (an FD array's dlc is the length code)
    length = fd_lengths(frames).tolist()
    for i in range(len(ts)):
        yield can.Message(
            timestamp=ts[i],
            arbitration_id=arb[i],
            is_extended_id=ext[i],
            is_remote_frame=rtr[i],
            is_error_frame=err[i],
            is_fd=fd[i],
            bitrate_switch=brs[i],
            error_state_indicator=esi[i],
            dlc=length[i],
            data=None if rtr[i] else raw[width * i : width * i + length[i]],
            channel=0,
            check=False,
        )


class _ASCWriter(can.ASCWriter):
    """python-can 4.6's ASCWriter writes the header's milliseconds unpadded
    ("40.5" for 40.005 s, read back as 40.500) and offsets relative to an
    instant the header cannot express; start on a whole millisecond instead."""

    def log_event(self, message: str, timestamp: float | None = None) -> None:
        if not self.header_written:
            start_ms = math.floor((timestamp or 0.0) * 1000)
            secs, msec = divmod(start_ms, 1000)
            # in UTC, as canwatch reads it: the header has no zone (see replay.readers._strict)
            when = datetime.fromtimestamp(secs, UTC).strftime(f"%a %b %d %H:%M:%S.{msec:03d} %Y")
            self.file.write(f"Begin Triggerblock {when}\n")
            self.started = self.last_timestamp = start_ms / 1000
            self.header_written = True
            super().log_event("Start of measurement")
        super().log_event(message, timestamp)


class _TRCWriter(can.TRCWriter):
    """python-can's TRC 2.1 writer, plus CAN FD frames (which it drops with a
    warning): type FD, FB (BRS), FE and BI, the L column their length code. FE and
    BI are written as python-can's TRCReader reads them (FE = BRS + ESI, BI = ESI),
    which swaps the two against PEAK's spec, so that canwatch's TRC files read back
    the same through python-can."""

    _FD_TYPES = {(False, False): "FD", (True, False): "FB", (True, True): "FE", (False, True): "BI"}

    def on_message_received(self, msg: can.Message) -> None:
        if not msg.is_fd:
            super().on_message_received(msg)
            return
        if self.first_timestamp is None:
            self.first_timestamp = msg.timestamp
        kind = self._FD_TYPES[(msg.bitrate_switch, msg.error_state_indicator)]
        arb_id = f"{msg.arbitration_id:07X}" if msg.is_extended_id else f"{msg.arbitration_id:04X}"
        code = int(fd_dlc(len(msg.data)))
        line = (
            f"{self.msgnr:>7} {(msg.timestamp - self.first_timestamp) * 1000:13.3f} {kind} "
            f"{self.channel:>2} {arb_id:>8} {'Rx' if msg.is_rx else 'Tx':>2} -  {code:<4} "
            + " ".join(f"{byte:02X}" for byte in msg.data)
        )
        self.msgnr += 1
        self.log_event(line, msg.timestamp)


_BLF_EPOCH_MIN = 631152000  # 1990-01-01: below it python-can's BLFWriter writes no start


def _refusal(fmt: str, frames: np.ndarray) -> str | None:
    """Why python-can's ``fmt`` writer cannot store ``frames`` as they are (None: it can)."""
    flags = frames["flags"]
    rtr, err = (flags & FLAG_RTR) != 0, (flags & FLAG_ERROR) != 0
    if fmt == "trc" and rtr.any():
        return "python-can's TRCWriter cannot store remote frames"
    if fmt == "trc" and err.any():  # its writer drops them with a log warning
        return "python-can's TRCWriter cannot store error frames"
    if fmt == "blf" and len(frames) and frames["ts"].min() < _BLF_EPOCH_MIN:
        # a zero start time in its header, times from the first frame: read back shifted
        return "python-can's BLF writer stores times before 1990 relative to the first frame"
    if not is_fd_array(frames):
        return None
    fd = (flags & FLAG_FD) != 0
    if fmt in ("asc", "blf", "csv") and (fd & err).any():
        return f"python-can's {fmt.upper()} writer stores error frames as classic CAN, not CAN FD"
    if fmt == "asc" and (fd & ~rtr & (frames["dlc"] == 0)).any():
        return "python-can reads a CANFD line of 0 data bytes back as a remote frame"
    if fmt == "csv" and (fd & ((flags & (FLAG_BRS | FLAG_ESI)) != 0)).any():
        return "python-can's CSV has no column for CAN FD's BRS/ESI flags"
    if fmt == "csv" and (fd & (frames["dlc"] <= 8)).any():
        return "python-can's CSV cannot mark an FD frame of <= 8 bytes as FD"
    return None


def _python_can(fmt: str, writer_cls):
    def write(path: str, frames: np.ndarray) -> None:
        with writer_cls(path) as writer:
            for msg in to_messages(frames):
                writer.on_message_received(msg)

    return write


_WRITERS = {
    "candump": _write_candump,
    "road": _write_road,
    "hcrl": _write_hcrl,
    "crysys": _write_crysys,
    "cantt": _write_cantt,
    "hcrl-txt": _write_hcrl_txt,
    "asc": _python_can("asc", _ASCWriter),
    "blf": _python_can("blf", can.BLFWriter),
    "trc": _python_can("trc", _TRCWriter),
    "csv": _python_can("csv", can.CSVWriter),
}
_CLASSIC_ONLY = ("road", "hcrl", "crysys", "cantt", "hcrl-txt")
_PYTHON_CAN = ("asc", "blf", "trc", "csv")
