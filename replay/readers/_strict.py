"""python-can's ASC and TRC readers, made to refuse what they would otherwise skip
or bend without a word.

Each case below was measured on python-can 4.6.1, and each one loses or invents
frames. A log that reads short, or with zeros nobody sent, gives detection and
forensics a wrong picture of the bus:

- ASC: the header is read until the first line that is not a header line, and
  that line is dropped. A file with no ``internal events logged`` line (it is
  optional) loses its first frame.
- ASC: a line with fewer data bytes than its DLC (or, on a CANFD line, its data
  length) is read with the bytes that are there. A CANFD line whose DLC does not
  give its data length is only logged as a warning.
- TRC: a line too short for its DLC is dropped with a log warning. In TRC 2.x,
  the data bytes are taken as they are, whatever the DLC says.
- TRC: error frames (2.x's type ``ER``, 1.1's and 1.3's ``Error``) are dropped as
  an "unsupported type", and TRC 1.0's (``ERROR`` after the DLC) stop the file as
  unreadable. So a bus-off
  attack logged by PCAN-View would read as a quiet bus. They are read as
  error frames (id 0, no data): canwatch counts a vehicle's error frames as one
  stream, whatever id or error class they carry.
- BLF: error frames of CAN FD channels (CAN_FD_ERROR_64, what CANoe writes on an
  FD bus) and CAN_ERROR objects are skipped. So are the logger's own records that
  it lost frames (OVERRUN_ERROR, DATA_LOST_BEGIN/END), which are an error here: a
  capture with a hole in it gives wrong timing evidence there.
- BLF: a last container whose compressed data is cut, an object cut at the end of
  the file, an object larger than what follows it (everything after it was thrown
  away), an unknown compression method, or an object of size 0 (read for ever) are
  all read as a clean shorter log, or hang. A data frame whose DLC does not give
  its data length is read as it is. Each is an error naming the byte or the id.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from datetime import UTC, datetime
from decimal import Decimal

import can
from can.io import blf
from can.io.trc import TRCFileVersion
from can.util import dlc2len, len2dlc


class Lines:
    """A text file that keeps the number of the line read last, so an error can
    name the line python-can was reading. One line can be put back (ASC's header)."""

    def __init__(self, fh: io.TextIOBase) -> None:
        self.fh, self.lineno = fh, 0
        self.last: str | None = None
        self._back: str | None = None

    def __iter__(self) -> Lines:
        return self

    def __next__(self) -> str:
        if self._back is None:
            line = next(self.fh)
        else:
            line, self._back = self._back, None
        self.lineno += 1
        self.last = line
        return line

    def put_back(self) -> None:
        if self.last is not None:
            self._back, self.lineno = self.last, self.lineno - 1

    def __getattr__(self, name: str):
        return getattr(self.fh, name)


#: ASC's month names as python-can reads them (English, and German where they differ)
_ASC_MONTHS = {
    m: i + 1
    for i, m in enumerate("Jan Feb Mar Apr May Jun Jul Aug Sep Oct Nov Dec".split())
} | {"Mär": 3, "Mai": 5, "Okt": 10, "Dez": 12}
_ASC_DATE_FORMATS = (
    "%m %d %I:%M:%S.%f %p %Y", "%m %d %I:%M:%S %p %Y", "%m %d %H:%M:%S.%f %Y", "%m %d %H:%M:%S %Y",
)  # fmt: skip


class ASCReader(can.ASCReader):
    @staticmethod
    def _datetime_to_timestamp(datetime_string: str) -> float:
        """The triggerblock's start time, as UTC. python-can reads it in the reading
        machine's zone, so one file's frame times moved with where it was read (5 h
        between New York and UTC: a simulated file's attack spans in fleet.json then
        missed its frames). The header names no zone; canwatch writes UTC."""
        for name, number in _ASC_MONTHS.items():
            datetime_string = datetime_string.replace(name, f"{number:02d}")
        for fmt in _ASC_DATE_FORMATS:
            try:
                return datetime.strptime(datetime_string, fmt).replace(tzinfo=UTC).timestamp()
            except ValueError:
                continue
        raise ValueError(f"Incompatible datetime string {datetime_string}")

    def _extract_header(self) -> None:
        super()._extract_header()
        # The line that ended the header may be the first frame. Every header line
        # read again is skipped: none looks like a frame.
        if isinstance(self.file, Lines):
            self.file.put_back()

    def _process_data_string(self, data_str: str, data_length: int, msg_kwargs: dict) -> None:
        can.ASCReader._process_data_string(self, data_str, data_length, msg_kwargs)
        got = len(msg_kwargs["data"])
        if got < data_length:
            raise ValueError(f"dlc {msg_kwargs.get('dlc', data_length)} but {got} data bytes")

    def _process_fd_can_frame(self, line: str, msg_kwargs: dict) -> can.Message:
        # "<ch> <dir> <id> [name] <brs> <esi> <dlc> <length> ...": python-can only warns
        # when the two disagree, and keeps the length. A length of 0 is its remote frame.
        parts = line.split()
        at = 5 if len(parts) > 3 and parts[3].isdigit() else 6
        if len(parts) > at + 1 and parts[2].lower() != "errorframe":
            dlc, length = int(parts[at], self._converted_base), int(parts[at + 1])
            classic = dlc > 8 and length == 8  # a classic frame on an FD channel: DLC 9-15
            if length and dlc2len(dlc) != length and not classic:
                raise ValueError(f"CANFD dlc {dlc} ({dlc2len(dlc)} bytes) but data length {length}")
        return super()._process_fd_can_frame(line, msg_kwargs)


#: where each TRC 1.x version's data bytes begin (after "N) O [B] [dir] I [R] L")
_V1_DATA = {
    TRCFileVersion.UNKNOWN: 4,
    TRCFileVersion.V1_0: 4,
    TRCFileVersion.V1_1: 5,
    TRCFileVersion.V1_3: 7,
}


class TRCReader(can.TRCReader):
    def _parse_line(self, line: str) -> can.Message | None:
        cols = tuple(line.split(maxsplit=self._num_columns))
        try:
            msg = self._parse_cols(cols)
        except IndexError:
            raise ValueError(f"too few columns for its dlc: {line!r}") from None
        if msg is None or msg.is_remote_frame or msg.is_error_frame:
            return msg
        start = _V1_DATA.get(self.file_version)
        if start is not None and len(cols) != start + msg.dlc:
            raise ValueError(f"dlc {msg.dlc} but {len(cols) - start} data bytes")
        if start is None and len(msg.data) != self._length(cols, msg):
            said = "length" if "l" in self.columns else "dlc"
            raise ValueError(f"{said} {self._length(cols, msg)} but {len(msg.data)} data bytes")
        return msg

    def _length(self, cols: tuple[str, ...], msg: can.Message) -> int:
        """The data bytes a TRC 2.x line says it has: its length column where there is
        one, else what its DLC gives (a classic DLC of 9-15 still carries 8 bytes)."""
        if "l" in self.columns:
            return int(cols[self.columns["l"]])
        return dlc2len(msg.dlc) if msg.is_fd else min(msg.dlc, 8)

    def _parse_cols_v1_1(self, cols: tuple[str, ...]) -> can.Message | None:
        if cols[2] == "Error":  # "6) 1349.2 Error 0008 4 00 19 08 08"
            return _error_frame(float(cols[1]) / 1000 + self._start_time, 1)
        return super()._parse_cols_v1_1(cols)

    def _parse_cols_v1_3(self, cols: tuple[str, ...]) -> can.Message | None:
        if cols[3] == "Error":  # as 1.1's, after the bus
            return _error_frame(float(cols[1]) / 1000 + self._start_time, int(cols[2]))
        return super()._parse_cols_v1_3(cols)

    def _parse_msg_v1_0(self, cols: tuple[str, ...]) -> can.Message | None:
        if len(cols) > 4 and cols[4] == "ERROR":  # "2) 1842 0008 4 ERROR 00 19 08 08"
            return _error_frame(float(cols[1]) / 1000, 1)
        return super()._parse_msg_v1_0(cols)

    def _parse_cols_v2_x(self, cols: tuple[str, ...]) -> can.Message | None:
        if cols[self.columns["T"]] != "ER":
            return super()._parse_cols_v2_x(cols)
        # only the columns before the id are read: PEAK leaves an error frame's id blank
        bus = self.columns.get("B")
        at = float(cols[self.columns["O"]]) / 1000 + self._start_time
        return _error_frame(at, int(cols[bus]) if bus is not None else 1)


def _error_frame(timestamp: float, channel: int) -> can.Message:
    """An error frame as canwatch keeps one: when, and that it was one (its error code
    and counters are PEAK's own, not a frame's data)."""
    return can.Message(
        timestamp=timestamp, is_error_frame=True, is_extended_id=False, channel=channel, dlc=0
    )


_BASE, _CONTAINER = blf.OBJ_HEADER_BASE_STRUCT, blf.LOG_CONTAINER_STRUCT
#: header version -> the whole object header's size (python-can reads versions 1 and 2)
_HEADER = {
    1: _BASE.size + blf.OBJ_HEADER_V1_STRUCT.size,
    2: _BASE.size + blf.OBJ_HEADER_V2_STRUCT.size,
}
#: object types python-can parses -> the least body an object of the type has
_FRAMES = {
    blf.CAN_MESSAGE: blf.CAN_MSG_STRUCT.size,
    blf.CAN_MESSAGE2: blf.CAN_MSG_STRUCT.size,
    blf.CAN_ERROR_EXT: blf.CAN_ERROR_EXT_STRUCT.size,
    blf.CAN_FD_MESSAGE: blf.CAN_FD_MSG_STRUCT.size,
    blf.CAN_FD_MESSAGE_64: blf.CAN_FD_MSG_64_STRUCT.size,
}
#: the flags and time of every object header (versions 1 and 2 alike)
_STAMP = struct.Struct("<L4xQ")
CAN_ERROR, CAN_FD_ERROR_64 = 2, 104  # error frames python-can skips
_LOST = {91: "a driver overrun", 125: "the start of lost data", 126: "lost data"}


class BLFReader(can.BLFReader):
    """python-can's BLF parsing, fed only whole containers and whole objects it knows."""

    def __iter__(self) -> Iterator[can.Message]:
        for data in self._containers():
            yield from self._parse_container(data)
        if self._tail.strip(b"\0"):
            raise ValueError(f"the file ends inside an object ({len(self._tail)} bytes of it)")
        self.stop()

    def _containers(self) -> Iterator[bytes]:
        """Each log container's objects, decompressed and checked whole."""
        while head := self.file.read(_BASE.size):
            at = self.file.tell() - len(head)
            if len(head) < _BASE.size:
                raise ValueError(f"the file ends inside an object header at byte {at}")
            signature, _, _, size, kind = _BASE.unpack(head)
            if signature != b"LOBJ":
                raise ValueError(f"no object at byte {at} (found {signature!r})")
            if kind != blf.LOG_CONTAINER or size < _BASE.size + _CONTAINER.size:
                what = f"object at byte {at} (type {kind}, size {size})"
                raise ValueError(f"{what} is no log container")
            body = self.file.read(size - _BASE.size)
            self.file.read(size % 4)
            if len(body) < size - _BASE.size:
                cut = f"{len(body)} of {size - _BASE.size} bytes"
                raise ValueError(f"container at byte {at} cut: {cut}")
            method, expected = _CONTAINER.unpack_from(body)
            data = body[_CONTAINER.size :]
            if method == blf.ZLIB_DEFLATE:
                inflate = zlib.decompressobj()
                data = inflate.decompress(data)
                if not inflate.eof:
                    raise ValueError(f"container at byte {at}: its compressed data is cut short")
            elif method != blf.NO_COMPRESSION:
                raise ValueError(f"container at byte {at}: unknown compression method {method}")
            if len(data) != expected:
                raise ValueError(f"container at byte {at} holds {len(data)} bytes, says {expected}")
            yield data

    def _parse_container(self, data: bytes) -> list[can.Message]:
        """Walk the objects; runs of frames python-can knows go to its parser in one call,
        error frames it skips are made here, an object cut by the container's end waits
        for the next (``_tail``). A list, not a generator: one layer fewer to resume per
        frame. (The walk costs a fifth more than python-can's parse alone; a compiled
        walk saved most of that but cost as much again to load, once per process.)"""
        data = self._tail + data
        out: list[can.Message] = []
        pos = run = 0
        end, find, unpack = len(data), data.find, _BASE.unpack_from
        header_of, body_of = _HEADER.get, _FRAMES.get
        while True:
            at = find(b"LOBJ", pos, pos + 8)  # objects are padded to 4 bytes
            if at < 0 and pos + 8 <= end:
                raise ValueError(f"no object where one was due ({data[pos : pos + 8]!r})")
            if at < 0 or at + _BASE.size > end:
                break
            _, header, version, size, kind = unpack(data, at)
            if header_of(version) != header or size < header + body_of(kind, 0):
                what = f"header version {version}, sizes {header}/{size}"
                raise ValueError(f"object type {kind}: {what}")
            if at + size > end:
                pos = at
                break
            if kind not in _FRAMES:  # error frames python-can skips; markers, texts: none
                out += self._frames(data[run:at])
                run = at + size
                if kind in (CAN_ERROR, CAN_FD_ERROR_64) or kind in _LOST:
                    out.append(self._error(data, at, kind))
            pos = at + size
        out += self._frames(data[run:pos])
        self._tail = data[pos:]
        return out

    def _frames(self, objects: bytes) -> list[can.Message]:
        if len(objects) < _BASE.size:  # nothing, or an object's padding
            return []
        frames = list(can.BLFReader._parse_data(self, objects))
        for m in frames:
            if not (m.is_error_frame or m.is_remote_frame) and (
                len(m.data) != (m.dlc if m.is_fd else min(m.dlc, 8)) or m.dlc > 64
            ):  # a classic frame's DLC 9-15 comes as 12-64 from an FD object, 9-15 from others
                # python-can gives an FD frame's dlc as the length it codes
                what = f"dlc {len2dlc(m.dlc)} ({m.dlc} bytes)" if m.is_fd else f"dlc {m.dlc}"
                raise ValueError(f"id {m.arbitration_id:#x}: {what} but {len(m.data)} data bytes")
        return frames

    def _error(self, data: bytes, at: int, kind: int) -> can.Message:
        """The error frame of the object at ``at``; ValueError for a record of lost data."""
        flags, ticks = _STAMP.unpack_from(data, at + _BASE.size)
        ten_us = flags == blf.TIME_TEN_MICS
        factor = blf.TIME_TEN_MICS_FACTOR if ten_us else blf.TIME_ONE_NANS_FACTOR
        when = float(Decimal(ticks) * factor) + self.start_timestamp
        if kind in _LOST:
            raise ValueError(f"the logger recorded {_LOST[kind]} at {when:.6f}: frames are missing")
        # the channel opens both bodies (CAN_ERROR's as 2 bytes); python-can counts from 0
        channel = data[at + int.from_bytes(data[at + 4 : at + 6], "little")]
        return _error_frame(when, channel - 1)
