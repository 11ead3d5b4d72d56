"""What can be read of a record batch that is not well formed, and what cannot.

kafka-python 3.0.12 reads a fetched record batch with a generator that raises
``CorruptRecordError`` at the first thing it does not like, and the fetcher
never drains the dead generator: the next ``poll()`` loops forever inside
``Fetcher.fetched_records`` (issue 21: one record with a header name that is
not UTF-8 blinded the detector for every partition). ``detector.transport.kafka_records``
therefore reads every batch itself, and this module is its careful half: it
never raises, reads each record it can find exactly as kafka-python would,
and turns everything else into an ``UnreadableRecord`` that names its
offsets and a reason, which ``canwatch detect`` dead-letters.

The unit of trust is the batch. Offsets are the broker's: base offset plus
each record's offset delta.

- The batch as a whole (``batch_problem``, ``inflate``): a CRC that does not
  match (``bad_crc``), a header too short or a version other than 2
  (``bad_batch``), an unknown codec, a missing codec library or a body that
  does not decompress or inflates beyond ``MAX_INFLATED_BYTES``
  (``bad_codec``), a control batch that is not a transaction marker
  (``bad_control``: every Kafka consumer skips control batches, so data in
  one is invisible to all of them). The whole batch is one span,
  ``[base, base + last offset delta]``, its raw bytes the dead letter.
- One record (``read_v2``): a record whose length prefix finds the next
  record but whose fields are wrong (varints past its end, lengths that do
  not add up, a header count beyond the record, a null header name, an offset
  delta out of order or beyond the batch's last) is ``bad_record``, alone; a
  header name that is not UTF-8 is ``bad_header_name``, alone. Where its
  own offset delta cannot be trusted it is placed right after the previous
  record (at most at the batch's last offset).
- The rest of a batch (``read_v2``): once a length prefix is broken, or
  bytes are left after the records the batch announces, or the bytes end
  before them, what remains cannot be split into records: one span
  ``bad_record`` / ``bad_batch`` from the offset after the last record read
  to the batch's last offset.

A well-formed transaction marker (control batch) is skipped, as every Kafka
consumer skips it. Legacy (v0/v1) message sets are read by kafka-python's own
classes; whatever they raise becomes a ``bad_batch`` span.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass

from kafka.consumer.fetcher import ConsumerRecord
from kafka.record.util import decode_varint

BAD_CRC = "bad_crc"  # the batch's CRC-32C does not match its bytes
BAD_BATCH = "bad_batch"  # header too short, unknown version, records and bytes disagree
BAD_CODEC = "bad_codec"  # unknown codec, no library for it, corrupt or inflating too far
BAD_CONTROL = "bad_control"  # control bit on a batch that is not a transaction marker
BAD_RECORD = "bad_record"  # a record's fields do not add up
BAD_HEADER_NAME = "bad_header_name"  # a header name that is not UTF-8
REASONS: tuple[str, ...] = (BAD_CRC, BAD_BATCH, BAD_CODEC, BAD_CONTROL, BAD_RECORD, BAD_HEADER_NAME)

#: A batch body that inflates beyond this is refused (a decompression bomb would
#: otherwise take the process's memory); canwatch's producers build 1 MiB batches.
MAX_INFLATED_BYTES = 64 << 20
V2_HEADER_BYTES = 61  # base offset .. record count (kafka-python's HEADER_STRUCT)
_CODEC_NONE, _CODEC_GZIP, _CODEC_LZ4 = 0, 1, 3
#: Every batch version starts with its base offset and length; a v2 (or later)
#: batch has its last offset delta at byte 23.
BATCH_FRAME = struct.Struct(">qi")
_LAST_DELTA = struct.Struct(">i")
_MARKER_KEY = struct.Struct(">hh")  # control record key: version 0, type 0 (abort) / 1 (commit)


@dataclass(frozen=True)
class Problem:
    """Why a record (or a span of records) could not be read, and how far it reaches."""

    reason: str  # one of REASONS: the metric label and the DLQ error header
    detail: str  # for people: what was wrong, with the numbers
    last_offset: int  # the span's last offset (its first is the record's ``offset``)
    key: bytes | None = None  # the record's key where it could be read (privacy scrubbing)

    def records(self, first: int) -> int:
        """Offsets the span covers."""
        return self.last_offset - first + 1


class UnreadableRecord(ConsumerRecord):
    """A ``ConsumerRecord`` standing for a record, or a span of records, that could
    not be read: ``value`` holds the raw bytes, ``problem`` says why and to which
    offset it reaches. kafka-python's fetcher reads only its ``offset``."""

    problem: Problem

    def __new__(cls, topic: str, partition: int, epoch: int, offset: int, problem: Problem,
                raw: bytes) -> UnreadableRecord:  # fmt: skip
        self = super().__new__(
            cls, topic, partition, epoch, offset, -1, 0, problem.key, raw, [], None,
            -1 if problem.key is None else len(problem.key), len(raw), -1,
        )  # fmt: skip
        self.problem = problem
        return self


# -- a record batch as a whole ---------------------------------------------------------------


def framed_last_offset(data, pos: int, base: int) -> int:
    """The last offset of the v2 batch at ``pos`` of ``data`` by its framing alone
    (base when the delta is absurd): no byte of the batch need be trusted but these."""
    return base + max(_LAST_DELTA.unpack_from(data, pos + 23)[0], 0)


def last_offset_of(batch) -> int:
    """The batch's last offset as the broker assigned it (base when the delta is absurd)."""
    delta = batch.last_offset_delta
    return batch.base_offset + delta if delta >= 0 else batch.base_offset


def batch_problem(batch, check_crc: bool) -> tuple[str, str] | None:
    """(reason, detail) if a v2 batch cannot be read at all, before any record is."""
    if check_crc and not batch.validate_crc():
        return BAD_CRC, f"CRC-32C {batch.crc:#010x} does not match the batch's bytes"
    if batch.is_control_batch and not _is_marker(batch):
        return BAD_CONTROL, (
            f"control batch of {batch.records_count} records that is not a transaction "
            "marker (consumers skip control batches: its records reach nobody)"
        )
    return None


def _is_marker(batch) -> bool:
    """A transaction marker: transactional, one record, key version 0 and type abort/commit."""
    if not batch.is_transactional or batch.records_count != 1 or batch.compression_type:
        return False
    items = read_v2(batch, batch.base_offset)
    if len(items) != 1 or items[0][0] != "ok":
        return False
    key = items[0][3]
    if key is None or len(key) != _MARKER_KEY.size:
        return False
    version, kind = _MARKER_KEY.unpack(key)
    return version == 0 and kind in (0, 1)


def inflate(batch) -> None:
    """Decompress the batch body in place (kafka-python's ``_maybe_uncompress``), at most
    ``MAX_INFLATED_BYTES`` for the codecs canwatch reads (gzip, lz4); raises otherwise."""
    if batch._decompressed:
        return
    codec = batch.compression_type
    if codec == _CODEC_NONE:
        batch._decompressed = True
        return
    if codec not in (_CODEC_GZIP, _CODEC_LZ4):
        batch._maybe_uncompress()  # snappy/zstd: kafka-python's, if their library is there
        if len(batch._buffer) > MAX_INFLATED_BYTES:
            raise ValueError(f"inflates beyond {MAX_INFLATED_BYTES} bytes")
        return
    data = memoryview(batch._buffer)[batch._pos :]
    out = _gunzip(data) if codec == _CODEC_GZIP else _unlz4(data)
    batch._buffer = bytearray(out)
    batch._pos = 0
    batch._decompressed = True


def _gunzip(data) -> bytes:
    """Every gzip member of ``data`` (as gzip.GzipFile reads them), bounded."""
    out, left = [], MAX_INFLATED_BYTES
    while data:
        d = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = d.decompress(data, left + 1)
        if len(chunk) > left or d.unconsumed_tail:
            raise ValueError(f"inflates beyond {MAX_INFLATED_BYTES} bytes")
        if not d.eof:
            raise ValueError("gzip stream ends early")
        out.append(chunk)
        left -= len(chunk)
        data = d.unused_data
    return b"".join(out)


def _unlz4(data) -> bytes:
    import lz4.frame

    d = lz4.frame.LZ4FrameDecompressor()
    out = d.decompress(bytes(data), max_length=MAX_INFLATED_BYTES + 1)
    if len(out) > MAX_INFLATED_BYTES or not d.needs_input:
        raise ValueError(f"inflates beyond {MAX_INFLATED_BYTES} bytes")
    if not d.eof:
        raise ValueError("lz4 frame ends early")
    return out


# -- records of a v2 batch, one by one -------------------------------------------------------


class _Bad(Exception):
    def __init__(self, reason: str, detail: str, key: bytes | None = None) -> None:
        super().__init__(detail)
        self.reason, self.detail, self.key = reason, detail, key


def _varint(buf, pos: int, end: int, what: str) -> tuple[int, int]:
    try:
        value, nxt = decode_varint(buf, pos)
    except (IndexError, ValueError):
        raise _Bad(BAD_RECORD, f"{what}: varint runs past the record") from None
    if nxt > end:
        raise _Bad(BAD_RECORD, f"{what}: varint runs past the record")
    return value, nxt


def _field(buf, pos: int, end: int, what: str) -> tuple[bytes | None, int]:
    """A length-prefixed field: None for a negative length (null), as kafka-python reads it."""
    length, pos = _varint(buf, pos, end, f"{what} length")
    if length < 0:
        return None, pos
    if pos + length > end:
        raise _Bad(BAD_RECORD, f"{what} of {length} bytes runs past the record")
    return bytes(buf[pos : pos + length]), pos + length


def _record(buf, pos: int, end: int) -> tuple:
    """(timestamp delta, offset delta, key, value, headers, problem) of the record body
    ``buf[pos:end]``. ``problem`` is a (reason, detail) of a record whose fields fill
    its length exactly but say something no record may (a header name that is null
    or not UTF-8), else None; raises _Bad when the fields do not fill the length
    (then its length prefix cannot be trusted to find the next record either)."""
    _, pos = _varint(buf, pos, end, "attributes")
    ts_delta, pos = _varint(buf, pos, end, "timestamp delta")
    offset_delta, pos = _varint(buf, pos, end, "offset delta")
    key, pos = _field(buf, pos, end, "key")
    value, pos = _field(buf, pos, end, "value")
    count, pos = _varint(buf, pos, end, "header count")
    if count < 0 or count > (end - pos) // 2:  # a header is at least two bytes
        raise _Bad(BAD_RECORD, f"header count {count} with {end - pos} bytes left", key)
    headers, problem = [], None
    for i in range(count):
        try:
            name, pos = _field(buf, pos, end, f"header {i} name")
            raw_value, pos = _field(buf, pos, end, f"header {i} value")
        except _Bad as exc:
            raise _Bad(exc.reason, exc.detail, key) from None
        if name is None:
            problem = problem or (BAD_RECORD, f"header {i} name is null")
            continue
        try:
            headers.append((name.decode("utf-8"), raw_value))
        except UnicodeDecodeError:
            problem = problem or (BAD_HEADER_NAME, f"header {i} name {name[:40]!r} is not UTF-8")
    if pos != end:
        raise _Bad(BAD_RECORD, f"{end - pos} bytes after its last field", key)
    return ts_delta, offset_delta, key, value, headers, problem


def read_v2(batch, fetch_offset: int, last: int | None = None) -> list[tuple]:
    """What a v2 batch (CRC checked, body inflated) holds, in offset order: for each
    record read ``("ok", offset, timestamp, key, value, headers, size, header size)``
    as kafka-python builds its ConsumerRecord, for each part that cannot be read
    ``("bad", first offset, Problem, raw bytes)``. ``last``: the batch's last offset
    if not its own (the next batch starts earlier). Never raises."""
    buf, pos, end = batch._buffer, batch._pos, len(batch._buffer)
    base = batch.base_offset
    last = last_offset_of(batch) if last is None else last
    announced = batch.records_count
    log_append = batch.timestamp_type == 1
    first_ts, max_ts = batch.first_timestamp, batch.max_timestamp
    out: list[tuple] = []
    prev = base - 1  # offset of the last record placed
    n = 0
    while pos < end and n < announced:
        start = pos
        if prev >= last:  # no offset left for what follows: reported once, at the last
            detail = f"records {n} to {announced - 1} lie beyond the batch's last offset"
            out.append(_rest(buf, start, prev, last, BAD_BATCH, detail))
            return _kept(out, fetch_offset)
        try:
            length, body = _varint(buf, pos, end, "record length")
        except _Bad:
            length, body = -1, end
        if length < 0 or body + length > end:
            detail = f"record {n}: length prefix {length} with {end - body} bytes left"
            out.append(_rest(buf, start, prev, last, BAD_RECORD, detail))
            return _kept(out, fetch_offset)
        pos = body + length
        try:
            ts_delta, delta, key, value, headers, problem = _record(buf, body, pos)
        except _Bad as exc:  # its length cannot be trusted: nor where the next record starts
            detail = f"record {n}: {exc.detail}; the rest of the batch cannot be split into records"
            out.append(_rest(buf, start, prev, last, exc.reason, detail, exc.key))
            return _kept(out, fetch_offset)
        n += 1
        offset = base + delta
        if problem is None and not prev < offset <= last:
            problem = BAD_RECORD, f"offset delta {delta} out of order or beyond the batch's last"
        if problem is not None:  # this record alone; the next one starts where it ends
            at = min(prev + 1, last)
            reason, detail = problem
            out.append(("bad", at, Problem(reason, f"record {n - 1}: {detail}", at, key),
                        bytes(buf[start:pos])))  # fmt: skip
            prev = at
            continue
        prev = offset
        h_size = sum(len(k.encode("utf-8")) + len(v or b"") for k, v in headers) if headers else -1
        ts = max_ts if log_append else first_ts + ts_delta
        out.append(("ok", offset, ts, key, value, headers, length, h_size))
    if pos < end:
        detail = f"{end - pos} bytes after the {announced} records it announces"
        out.append(_rest(buf, pos, prev, last, BAD_BATCH, detail))
    elif n < announced and prev < last:
        detail = f"ends after {n} of the {announced} records it announces"
        out.append(_rest(buf, pos, prev, last, BAD_BATCH, detail))
    return _kept(out, fetch_offset)


def _kept(out: list[tuple], fetch_offset: int) -> list[tuple]:
    """Records before the fetch offset are skipped by kafka-python's fetcher; an
    unreadable span is dropped here only if it ends before the fetch offset (one
    reaching past it is kept, see ``clamp``)."""
    return [i for i in out if i[0] == "ok" or i[2].last_offset >= fetch_offset]


def _rest(
    buf, at: int, prev: int, last: int, reason: str, detail: str, key: bytes | None = None
) -> tuple:
    """The unreadable remainder of a batch, from the offset after ``prev`` to ``last``
    (at ``last`` if no offset is left: the bytes are reported all the same)."""
    first = min(prev + 1, last)
    return "bad", first, Problem(reason, detail, last, key), bytes(buf[at:])


def clamp(first: int, problem: Problem, fetch_offset: int) -> int:
    """A span's first offset, not before the fetch offset (what precedes it was read
    in an earlier fetch)."""
    return max(first, min(fetch_offset, problem.last_offset))


# -- legacy (v0/v1) message sets ---------------------------------------------------------------


def read_legacy(view, magic: int, check_crc: bool, fetch_offset: int) -> list[tuple]:
    """A v0/v1 message set read by kafka-python's classes: ``("legacy", record)`` for
    each record, then a ``bad_batch`` span for whatever raised. Never raises."""
    from kafka.record.legacy_records import LegacyRecordBatch

    out: list[tuple] = []
    base = struct.unpack_from(">q", view, 0)[0]
    try:
        batch = LegacyRecordBatch(view, magic)
        if check_crc and not batch.validate_crc():
            raise ValueError(f"message set at offset {base} fails its CRC-32")
        for record in batch:
            if check_crc and not record.validate_crc():
                raise ValueError(f"message at offset {record.offset} fails its CRC-32")
            out.append(("legacy", record))
    except Exception as exc:  # anything kafka-python's legacy reader can raise
        first = out[-1][1].offset + 1 if out else base
        last = max(first, base)
        problem = Problem(BAD_BATCH, f"v{magic} message set: {exc!r}"[:300], last)
        out.append(("bad", first, problem, bytes(view)))
    return [i for i in out if i[0] == "legacy" or i[2].last_offset >= fetch_offset]
