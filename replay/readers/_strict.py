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
- TRC 2.x: error frames (type ``ER``) are dropped as an "unsupported type", and
  TRC 1.0's (``ERROR`` after the DLC) stop the file as unreadable. So a bus-off
  attack logged by PCAN-View would read as a quiet bus. They are read as
  error frames (id 0, no data): canwatch counts a vehicle's error frames as one
  stream, whatever id or error class they carry.
"""

from __future__ import annotations

import io

import can
from can.io.trc import TRCFileVersion
from can.util import dlc2len


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
        line, self._back = (self._back, None) if self._back is not None else (next(self.fh), None)
        self.lineno += 1
        self.last = line
        return line

    def put_back(self) -> None:
        if self.last is not None:
            self._back, self.lineno = self.last, self.lineno - 1

    def __getattr__(self, name: str):
        return getattr(self.fh, name)


class ASCReader(can.ASCReader):
    def _extract_header(self) -> None:
        super()._extract_header()
        # The line that ended the header may be the first frame. Every header line
        # read again is skipped: none looks like a frame.
        if isinstance(self.file, Lines):
            self.file.put_back()

    def _process_data_string(self, data_str: str, data_length: int, msg_kwargs: dict) -> None:
        super()._process_data_string(data_str, data_length, msg_kwargs)
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
            if length and dlc2len(dlc) != length:
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
