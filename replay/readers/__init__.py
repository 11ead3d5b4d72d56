"""CAN log readers: every supported file format -> one FRAME_DTYPE array.

``read_frames(path)`` picks the format by suffix, sniffing the first lines where
the suffix is ambiguous (``.log``, ``.csv``, ``.txt``, anything else), and
returns the frames in file order with per-frame ``label`` from the file's labels
(0 when it has none). Text formats are parsed with whole-array numpy operations
(see ``_text``); ASC/BLF/TRC go through python-can. Malformed input raises
``InputError`` as ``file:line: what``.

    format    module     content
    candump   candump    ``(ts) iface ID#DATA`` [+ CrySyS label columns]
    asc       pycan      Vector ASCII
    blf       pycan      Vector binary logging format
    trc       pycan      PEAK trace
    csv       pycsv      python-can CSV (alias ``pcan-csv``)
    hcrl      tabular    HCRL Car-Hacking CSV
    road      tabular    ROAD ``Time,Id,Byte1..Byte8,Label``
    crysys    tabular    CrySyS whitespace columns
    cantt     tabular    can-train-and-test ``timestamp,arbitration_id,data_field,attack``
    hcrl-txt  tabular    HCRL text ``Timestamp: ts ID: id 000 DLC: n bytes`` (OTIDS too)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from detector.core.errors import InputError
from detector.core.schema import (
    EXTENDED_FLAG,
    FLAG_FD,
    ID_MASK_STANDARD,
    as_classic,
    is_fd_array,
)
from replay.readers import candump, pycan, pycsv, tabular
from replay.readers._base import Channels, LogFormat

_ALL: tuple[LogFormat, ...] = (
    candump.FORMAT,
    pycan.ASC,
    pycan.BLF,
    pycan.TRC,
    pycsv.FORMAT,
    tabular.HCRL,
    tabular.ROAD,
    tabular.CRYSYS,
    tabular.CANTT,
    tabular.HCRL_TXT,
)
REGISTRY: dict[str, LogFormat] = {f.name: f for f in _ALL}
FORMATS: tuple[str, ...] = tuple(REGISTRY)
#: Formats with no place for labels: their frames all read 0, which says nothing of
#: whether they are benign (a DoS logged by CANoe is still a DoS).
UNLABELLED: frozenset[str] = frozenset({"asc", "blf", "trc", "csv", "hcrl-txt", "crysys"})
ALIASES: dict[str, str] = {
    "pcan-csv": "csv",
    "python-can-csv": "csv",
    "log": "candump",
    "can-train-and-test": "cantt",
}

#: Suffixes that name exactly one format; all others are sniffed.
_BY_SUFFIX = {".asc": "asc", ".blf": "blf", ".trc": "trc"}
#: Sniffing order: most specific signatures first.
_SNIFF_ORDER = (
    "blf", "trc", "asc", "csv", "candump", "road", "hcrl", "cantt", "hcrl-txt", "crysys",
)  # fmt: skip
_HEAD = 4096


def canonical_format(name: str) -> str:
    """Resolve an alias (``pcan-csv``) to its format name; ValueError if unknown."""
    key = ALIASES.get(name.lower(), name.lower())
    if key not in REGISTRY:
        known = ", ".join(FORMATS + tuple(ALIASES))
        raise ValueError(f"unknown format {name!r} (known: {known})")
    return key


def detect_format(path: str | os.PathLike[str]) -> str:
    """The format name of ``path``: by suffix when unambiguous, else by content."""
    path = Path(path)
    with open(path, "rb") as fh:
        head = fh.read(_HEAD)
    if not head.strip():
        raise InputError(str(path), None, "empty file")
    by_suffix = _BY_SUFFIX.get(path.suffix.lower())
    if by_suffix:
        return by_suffix
    for name in _SNIFF_ORDER:
        if REGISTRY[name].sniff(head):
            return name
    tried = ", ".join(_SNIFF_ORDER)
    raise InputError(str(path), None, f"unrecognised CAN log format (tried: {tried})")


def read_log(
    path: str | os.PathLike[str], fmt: str | None = None
) -> tuple[np.ndarray, Channels | None]:
    """All frames of ``path`` in file order, with the channel (bus) of each where the
    format says (None where it does not: ROAD, HCRL, CrySyS, python-can CSV...)."""
    spath = str(path)
    try:
        name = canonical_format(fmt) if fmt else detect_format(path)
    except ValueError as exc:
        raise InputError(spath, None, str(exc)) from None
    spec = REGISTRY[name]
    if not spec.text:
        if os.path.getsize(spath) == 0:
            raise InputError(spath, None, "empty file")
        out = spec.read(spath, None)
    else:
        data = Path(path).read_bytes()
        if not data or data.isspace():  # isspace stops at the first other byte; strip copies
            raise InputError(spath, None, "empty file")
        out = spec.read(spath, data)
    frames, channels = out if isinstance(out, tuple) else (out, None)
    return mark_wide_ids_extended(frames), channels


def read_frames(
    path: str | os.PathLike[str], fmt: str | None = None, channel: str | None = None
) -> np.ndarray:
    """The frames of one bus of ``path`` as a FRAME_DTYPE array, in file order.

    canwatch models one bus at a time (as one vehicle's records carry one bus), so a
    log of several channels needs ``channel``: merged, the buses' timings and ids
    would mix into a bus that never was."""
    frames, channels = read_log(path, fmt)
    return one_channel(str(path), frames, channels, channel)


def one_channel(
    path: str, frames: np.ndarray, channels: Channels | None, channel: str | None
) -> np.ndarray:
    """The frames of ``channel`` (None: of the only one); InputError otherwise."""
    if channels is None:
        if channel is not None:
            raise InputError(path, None, f"no channel {channel!r}: this format names none")
        return frames
    if channel is None and len(channels.names) <= 1:
        return frames
    listed = ", ".join(f"{n} ({c:,} frames)" for n, c in channels.counts().items())
    if channel is None:
        raise InputError(
            path, None,
            f"frames of {len(channels.names)} CAN channels: {listed}; canwatch models one bus "
            "at a time: pick one with --channel",
        )  # fmt: skip
    if channel not in channels.names:
        raise InputError(path, None, f"no channel {channel!r}; its channels: {listed}")
    if len(channels.names) == 1:
        return frames
    picked = frames[channels.codes == channels.names.index(channel)]
    # a classic bus beside an FD one is read as it would be alone: classic frames
    if is_fd_array(picked) and not (picked["flags"] & FLAG_FD).any():
        return as_classic(picked)
    return picked


def mark_wide_ids_extended(frames: np.ndarray) -> np.ndarray:
    """Ids above 0x7FF cannot be 11-bit: flag them extended, as the wire format requires.

    Logs written with three hex digits (ROAD's benign 0xFFF) would otherwise
    read fine offline but be dead-lettered as ``bad_id`` once replayed into Kafka.
    """
    ids = frames["can_id"]
    wide = ((ids & EXTENDED_FLAG) == 0) & (ids > ID_MASK_STANDARD)
    if wide.any():
        frames["can_id"][wide] = ids[wide] | EXTENDED_FLAG
    return frames


__all__ = [
    "ALIASES", "FORMATS", "REGISTRY", "UNLABELLED", "Channels", "canonical_format", "detect_format",
    "one_channel", "read_frames", "read_log",
]  # fmt: skip
