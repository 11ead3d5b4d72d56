"""The small interface every log-format module implements, and shared helpers."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detector.core.schema import EXTENDED_FLAG, FD_FRAME_DTYPE, FRAME_DTYPE, LABELS, fd_dlc

#: Label words understood in label columns (case-insensitive): the LABELS names
#: plus the CrySyS/boolean spellings, where "attacked" means "unknown" kind.
LABEL_WORDS: dict[str, int] = {name: i for i, name in enumerate(LABELS)}
LABEL_WORDS.update({"1": LABELS.index("unknown"), "true": LABELS.index("unknown")})
LABEL_WORDS.update({"0": 0, "false": 0})


@dataclass(frozen=True)
class Channels:
    """The channel (bus) each frame of a log came from, named as the log names it
    (candump's interface, ASC's and BLF's channel number, TRC's bus)."""

    codes: np.ndarray  # per frame, an index into names
    names: tuple[str, ...]

    @classmethod
    def of(cls, per_frame: np.ndarray, name=str) -> Channels:
        """From each frame's channel (any sortable values), each named by ``name``."""
        values, codes = np.unique(per_frame, return_inverse=True)
        return cls(codes.reshape(-1), tuple(name(v) for v in values.tolist()))

    def counts(self) -> dict[str, int]:
        counts = np.bincount(self.codes, minlength=len(self.names)).tolist()
        return dict(zip(self.names, counts, strict=True))


@dataclass(frozen=True)
class LogFormat:
    """One readable format: how to recognise it and how to read it.

    ``sniff(head)`` gets the first bytes of the file; ``read(path, data)`` gets
    the path and the whole content (``None`` for readers that open the file
    themselves, e.g. binary BLF), and gives the frames, with their ``Channels``
    when the format says which bus each frame was on.
    """

    name: str
    suffixes: tuple[str, ...]
    sniff: Callable[[bytes], bool]
    read: Callable[[str, bytes | None], np.ndarray | tuple[np.ndarray, Channels]]
    text: bool = True


def build_frames(
    ts: np.ndarray,
    arb_id: np.ndarray,
    extended: np.ndarray,
    dlc: np.ndarray,
    data: np.ndarray,
    flags: np.ndarray | int = 0,
    label: np.ndarray | int = 0,
) -> np.ndarray:
    """Assemble a frame array from already-validated columns: FRAME_DTYPE for
    (n, 8) ``data``, FD_FRAME_DTYPE for (n, 64) (``dlc`` then the length code)."""
    out = np.zeros(len(ts), dtype=FD_FRAME_DTYPE if data.shape[1] > 8 else FRAME_DTYPE)
    out["ts"] = ts
    out["can_id"] = np.where(extended, arb_id.astype(np.uint32) | EXTENDED_FLAG, arb_id)
    out["dlc"] = dlc
    out["flags"] = flags
    out["label"] = label
    out["data"] = data
    return out


def fd_dlc_column(length: np.ndarray, fd: np.ndarray, classic_dlc: np.ndarray) -> np.ndarray:
    """``dlc`` of the frames of a log with FD frames in it.

    An FD frame's dlc is the code of its length (a length between two FD sizes,
    13 say, takes the next code up, 16, and its missing bytes stay zero: how a
    CAN FD controller pads it on the bus); a classic frame keeps ``classic_dlc``.
    ``length`` must be <= 64 (checked by the caller, which names the line).
    """
    return np.where(fd, fd_dlc(np.where(fd, length, 0)), classic_dlc).astype(np.uint8)


def head_lines(head: bytes, n: int = 5) -> list[str]:
    """The first ``n`` non-empty lines of ``head`` (a possibly cut line dropped)."""
    text = head.decode("latin-1")
    lines = text.splitlines()
    if len(head) >= 4096 and lines:
        lines = lines[:-1]
    return [ln.strip() for ln in lines if ln.strip()][:n]


def mostly(lines: list[str], pattern) -> bool:
    """At least half of the sniffed lines match: one malformed line should still
    be reported at its line number rather than as an unknown format."""
    hits = sum(1 for ln in lines if pattern.match(ln))
    return hits > 0 and 2 * hits >= len(lines)
