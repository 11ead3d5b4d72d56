"""Vector ASC/BLF and PEAK TRC, read through python-can's reader classes.

These formats need python-can's parsers (BLF is compressed binary, ASC/TRC have
several dialects), so they cost one ``can.Message`` per frame; the messages are
converted to a frame array in one pass.
"""

from __future__ import annotations

import can
import numpy as np

from detector.core.errors import InputError
from detector.core.schema import FLAG_ERROR, FLAG_RTR
from replay.readers._base import LogFormat, build_frames, head_lines


def messages_to_frames(path: str, messages) -> np.ndarray:
    """Convert python-can messages to a frame array (CAN FD > 8 bytes rejected)."""
    ts, ids, ext, dlc, flags, raw = [], [], [], [], [], []
    for i, m in enumerate(messages):
        if len(m.data) > 8 or m.dlc > 8:
            raise InputError(path, None, f"message {i + 1}: CAN FD frames are not supported")
        ts.append(m.timestamp)
        ids.append(m.arbitration_id)
        ext.append(m.is_extended_id)
        dlc.append(m.dlc)
        flags.append(
            (FLAG_RTR if m.is_remote_frame else 0) | (FLAG_ERROR if m.is_error_frame else 0)
        )
        raw.append(bytes(m.data).ljust(8, b"\0"))
    data = np.frombuffer(b"".join(raw), np.uint8).reshape(-1, 8)
    return build_frames(
        np.array(ts, np.float64),
        np.array(ids, np.uint32),
        np.array(ext, bool),
        np.array(dlc, np.uint8),
        data,
        np.array(flags, np.uint8),
    )


def _reader(name: str, factory):
    def read(path: str, data: bytes | None) -> np.ndarray:
        try:
            with factory(path) as reader:
                return messages_to_frames(path, reader)
        except InputError:
            raise
        except (ValueError, IndexError, KeyError, TypeError, can.CanError) as exc:
            raise InputError(path, None, f"not a readable {name} file: {exc}") from exc

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
    _reader("asc", lambda p: can.ASCReader(p, relative_timestamp=False)),
)
BLF = LogFormat("blf", (".blf",), sniff_blf, _reader("blf", can.BLFReader), text=False)
TRC = LogFormat("trc", (".trc",), sniff_trc, _reader("trc", can.TRCReader))
