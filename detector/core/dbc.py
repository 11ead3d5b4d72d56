"""A platform's DBC: loading it, and the names it gives a CAN id's messages and bytes.

``configs/brands.toml`` names each platform's DBC: an opendbc file (the simulator's
traffic profile comes from it) or a path to the carmaker's own. Incident evidence
names the message and the signals behind an id and its bytes from it
(``SignalBook``): "0x4E7 (ENGINE_2): byte 5 [COOLANT_TEMP] read 255". A DBC is read
only when evidence first needs it, once per file: scoring never waits on it, and a
DBC that cannot be read leaves the evidence as it would be without one.
"""

from __future__ import annotations

import functools
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.core.fd import lane_place
from detector.core.schema import EXTENDED_FLAG

log = logging.getLogger(__name__)


def opendbc_dir() -> Path | None:
    """Where the opendbc package keeps its DBC files, if it is installed."""
    try:
        import opendbc
    except ImportError:
        return None
    return Path(opendbc.__file__).resolve().parent / "dbc"


def resolve_dbc(name: str) -> Path | None:
    """The DBC file ``name`` stands for: a path to one, else an opendbc file of that
    name; None for "" or a file found nowhere."""
    if not name:
        return None
    path = Path(name).expanduser()
    if path.is_file():
        return path
    bundled = opendbc_dir()
    return bundled / name if bundled is not None and (bundled / name).is_file() else None


def _sanitize_dbc(text: str) -> str:
    """Fix two opendbc quirks cantools rejects even with strict=False: 29-bit ids
    written without the extended marker (bit 31) and signal names starting with a digit."""
    for raw in {int(m) for m in re.findall(r"^BO_ (\d+) ", text, re.M)}:
        if 0x7FF < raw < 0x8000_0000:
            text = re.sub(rf"\b{raw}\b", str(raw | 0x8000_0000), text)
    for name in set(re.findall(r"^\s*SG_ (\d\w*)", text, re.M)):
        text = re.sub(rf"\b{name}\b", "S" + name, text)
    return text


def load_dbc(path: Path):  # -> cantools Database
    import cantools

    try:
        return cantools.database.load_file(str(path), strict=False)
    except (cantools.database.UnsupportedDatabaseFormatError, cantools.database.Error):
        text = path.read_text(encoding="latin-1")
        return cantools.database.load_string(
            _sanitize_dbc(text), database_format="dbc", strict=False
        )


def signal_bits(start: int, length: int, little_endian: bool) -> list[tuple[int, int]]:
    """(byte, bit) of each bit of a DBC signal, least significant first for Intel
    order, most significant first (the sawtooth from ``start``) for Motorola."""
    if little_endian:
        return [divmod(start + k, 8) for k in range(length)]
    out, pos = [], start
    for _ in range(length):
        out.append(divmod(pos, 8))
        pos = pos + 15 if pos % 8 == 0 else pos - 1
    return out


@dataclass(frozen=True)
class SignalBook:
    """Per frame id (as ``FRAME_DTYPE.can_id`` holds it): the message's name and length,
    and each signal's name with the (64,) byte mask it occupies."""

    messages: dict[int, tuple[str, int, tuple[tuple[str, np.ndarray], ...]]]

    @classmethod
    def of(cls, db) -> SignalBook:
        messages = {}
        for m in db.messages:
            key = int(m.frame_id) | (int(EXTENDED_FLAG) if m.is_extended_frame else 0)
            signals = []
            for s in m.signals:
                mask = np.zeros(64, np.uint8)
                intel = s.byte_order == "little_endian"
                for byte, bit in signal_bits(int(s.start), int(s.length), intel):
                    if 0 <= byte < 64:
                        mask[byte] |= 1 << bit
                signals.append((str(s.name), mask))
            messages[key] = (str(m.name), int(m.length), tuple(signals))
        return cls(messages)

    def message(self, can_id: int) -> str | None:
        """The name of the message an id (or an FD lane of it) is."""
        entry = self.messages.get(lane_place(can_id)[0])
        return entry[0] if entry else None

    def signals(self, can_id: int, byte: int, n_bytes: int = 1, mask: int = 0xFF) -> list[str]:
        """Names of the signals in bytes ``byte`` .. ``byte + n_bytes - 1`` of an id (a
        lane's bytes counted in the lane), within ``mask`` of the first; none for an FD
        checksum lane, whose bytes are no frame's."""
        key, offset = lane_place(can_id)
        entry = self.messages.get(key)
        if entry is None or offset < 0:
            return []
        first = offset + byte
        want = np.zeros(64, np.uint8)
        want[first : first + n_bytes] = 0xFF
        if 0 <= first < 64:
            want[first] = mask
        return [name for name, m in entry[2] if (m & want).any()]

    def last_byte(self, can_id: int) -> int | None:
        """The last byte of an id's frames (of a lane, counted in the lane), if known."""
        key, offset = lane_place(can_id)
        entry = self.messages.get(key)
        if entry is None or offset < 0 or entry[1] <= offset:
            return None
        return min(entry[1] - offset, 8) - 1


@functools.cache
def signal_book(path: str) -> SignalBook | None:
    """The ``SignalBook`` of the DBC at ``path`` (read once); None, and one warning,
    when it cannot be read."""
    try:
        return SignalBook.of(load_dbc(Path(path)))
    except Exception as exc:  # noqa: BLE001 - a broken DBC must not break the evidence
        log.warning("DBC %s cannot be read, evidence names no signals: %s", path, exc)
        return None
