"""Vector ASC/BLF and PEAK TRC, read through python-can's reader classes.

These formats need python-can's parsers (BLF is compressed binary, ASC/TRC have
several dialects), so they cost one ``can.Message`` per frame; the messages are
converted to a frame array in one pass.

CAN FD frames come out as python-can reads them: ``is_fd``, ``bitrate_switch``
and ``error_state_indicator`` become FLAG_FD/BRS/ESI, and the data bytes are
kept as read. A message of more than 8 bytes is FD even where python-can leaves
``is_fd`` unset; a length between two FD sizes (13 bytes, say) is padded with
zeros to the next (16), as a CAN FD controller sends it. PEAK TRC note:
python-can 4.6 reads type ``FE`` as BRS + ESI and ``BI`` as ESI alone (PEAK's
spec: FE = ESI, BI = both); canwatch follows python-can, here and in its writer.
"""

from __future__ import annotations

import os
import struct
import zlib

import can
import numpy as np
from can.io.blf import BLFParseError

from detector.core.errors import InputError
from detector.core.schema import FLAG_BRS, FLAG_ERROR, FLAG_ESI, FLAG_FD, FLAG_RTR
from replay.readers._base import Channels, LogFormat, build_frames, fd_dlc_column, head_lines
from replay.readers._strict import ASCReader, BLFReader, Lines, TRCReader


def messages_to_frames(
    path: str, messages, where=lambda i: None, channels: list | None = None
) -> np.ndarray:
    """Convert python-can messages to a frame array: FRAME_DTYPE when none is CAN
    FD, else FD_FRAME_DTYPE holding all of them. ``where(i)`` is the file line
    of message ``i`` (None when unknown: the message number is named instead).
    Each message's channel is appended to ``channels``, if given."""
    ts, ids, ext, dlc, flags, raw, lines = [], [], [], [], [], [], []
    keep = channels.append if channels is not None else None
    for m in messages:
        if keep is not None:
            keep(m.channel)
        ts.append(m.timestamp)
        ids.append(m.arbitration_id)
        ext.append(m.is_extended_id)
        dlc.append(m.dlc)
        bits = (FLAG_RTR if m.is_remote_frame else 0) | (FLAG_ERROR if m.is_error_frame else 0)
        if m.is_fd:
            bits |= FLAG_FD | (FLAG_BRS if m.bitrate_switch else 0)
            bits |= FLAG_ESI if m.error_state_indicator else 0
        flags.append(bits)
        raw.append(m.data)
        lines.append(where(len(lines)))
    flags_a = np.array(flags, np.uint8)
    length = np.fromiter(map(len, raw), np.int64, len(raw))
    dlc_a = np.array(dlc, np.int64)
    flat = np.frombuffer(b"".join(raw), np.uint8)
    fd = ((flags_a & FLAG_FD) != 0) | (length > 8)
    cols = (np.array(ts, np.float64), np.array(ids, np.uint32), np.array(ext, bool))
    if not fd.any():
        data = np.zeros((len(raw), 8), np.uint8)
        data[np.arange(8) < length[:, None]] = flat
        # a classic DLC of 9-15 still carries 8 bytes
        return build_frames(*cols, np.minimum(dlc_a, 8).astype(np.uint8), data, flags_a)
    too_long = np.flatnonzero(length > 64)
    if len(too_long):
        i = int(too_long[0])
        line = lines[i]
        what = f"CAN FD data of {length[i]} bytes > 64"
        raise InputError(path, line, what if line is not None else f"message {i + 1}: {what}")
    data = np.zeros((len(raw), 64), np.uint8)
    data[np.arange(64) < length[:, None]] = flat
    remote = (flags_a & FLAG_RTR) != 0
    fd_length = np.where(remote, np.minimum(dlc_a, 64), length)
    dlc_out = fd_dlc_column(fd_length, fd, np.minimum(dlc_a, 8))
    return build_frames(*cols, dlc_out, data, flags_a | np.where(fd, FLAG_FD, 0).astype(np.uint8))


#: what python-can's readers raise on a file they cannot parse
_UNREADABLE = (ValueError, IndexError, KeyError, TypeError, struct.error, zlib.error, BLFParseError)
_UNREADABLE += (can.CanError,)


def _whole_blf(path: str, reader) -> None:
    """A BLF file shorter than its header says was cut (a copy or transfer that stopped):
    python-can reads the containers that are there and stops without a word, so the
    frames after the cut would be lost unnoticed."""
    claimed, size = int(getattr(reader, "file_size", 0) or 0), os.path.getsize(path)
    if claimed > size:
        raise InputError(
            path, None, f"truncated blf file: its header says {claimed} bytes, the file has {size}"
        )


def _reader(name: str, factory, text: bool = True, check=None, first_channel: int = 0):
    """A reader through python-can's ``factory``; its channels are named as the file
    names them (python-can counts ASC's and BLF's from 0, so ``first_channel`` 1)."""

    def read(path: str, data: bytes | None) -> tuple[np.ndarray, Channels]:
        lines = None
        count = [0]
        chans: list = []

        def counted(reader):
            for m in reader:
                yield m
                count[0] += 1

        try:
            if text:
                with open(path) as fh:  # python-can's own default encoding
                    lines = Lines(fh)
                    with factory(lines) as reader:
                        frames = messages_to_frames(path, reader, lambda i: lines.lineno, chans)
            else:
                with factory(path) as reader:
                    if check is not None:
                        check(path, reader)
                    frames = messages_to_frames(path, counted(reader), channels=chans)
        except InputError:
            raise
        except _UNREADABLE as exc:
            line = lines.lineno if lines is not None and lines.lineno else None
            after = f" after message {count[0]}" if count[0] else ""
            raise InputError(path, line, f"not a readable {name} file{after}: {exc}") from exc
        per_frame = np.array([c if isinstance(c, int) else -1 for c in chans], np.int64)
        return frames, Channels.of(per_frame, lambda c: str(c + first_channel) if c >= 0 else "-")

    return read


def sniff_asc(head: bytes) -> bool:
    lines = [ln.lower() for ln in head_lines(head, 4)]
    return any(ln.startswith(("date ", "base hex", "base dec")) for ln in lines)


def sniff_trc(head: bytes) -> bool:
    return head.lstrip().startswith((b";$FILEVERSION", b";##"))


def sniff_blf(head: bytes) -> bool:
    return head.startswith(b"LOGG")


# ASC timestamps are offsets from a start date; read them as absolute times.
ASC = LogFormat(
    "asc",
    (".asc",),
    sniff_asc,
    _reader("asc", lambda p: ASCReader(p, relative_timestamp=False), first_channel=1),
)
BLF = LogFormat(
    "blf", (".blf",), sniff_blf,
    _reader("blf", BLFReader, text=False, check=_whole_blf, first_channel=1), text=False,
)  # fmt: skip
TRC = LogFormat("trc", (".trc",), sniff_trc, _reader("trc", TRCReader))
