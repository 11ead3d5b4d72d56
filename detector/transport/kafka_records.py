"""kafka-python's consumer records built from one compiled pass over each record batch,
and every record batch read without ever raising.

kafka-python 3.0 turns a fetched record batch into ``ConsumerRecord`` objects in
Python, field by field: a dozen ``decode_varint`` calls a record, a
``DefaultRecord`` per record, then property reads, a CRC call that is always
true for the v2 format, and a generator over the headers to size them. About
20 µs a record; with records of ~470 frames that was the largest single part
of ``canwatch detect`` at full speed (16-18 % of its CPU,
``bench/profile_detect.py``).

``parse_batches_compiled`` replaces ``Fetcher.PartitionRecords._unpack_records``
by a generator that, for a well-formed v2 data batch, finds every field of
every record in one compiled pass (``_scan``) and then only slices the bytes
out and builds each ``ConsumerRecord``. It yields exactly what kafka-python
yields, with the same bookkeeping between records (next fetch offset, records
and bytes read), so a poll that stops mid-batch resumes where it should.

Every other batch is read by ``detector.transport.kafka_salvage`` (its records handed
to the fetcher by ``kafka_fallback``), never by kafka-python's generator: that one
raises ``CorruptRecordError`` at the first malformed field, and kafka-python 3.0.12
then spins forever inside ``Fetcher.fetched_records`` (the dead generator is never
drained), so a single record with a header name that is not UTF-8 stopped
consumption of every partition (issue 21). The
salvage reads each record it can exactly as kafka-python would and yields an
``UnreadableRecord`` (offsets, reason, raw bytes) for each part it cannot, so
the fetch position always moves past a batch, whatever it holds. Consumers
with deserializers or ``read_committed`` (canwatch has none) keep kafka-python's
own generator.

Like ``detector.transport.kafka_recv`` this replaces a private method, so it is
installed only for the kafka-python version it was checked against, and only
after it parsed a few batches exactly as kafka-python does (``_self_check``).
"""

from __future__ import annotations

import logging
import struct

import numpy as np
from kafka.consumer.fetcher import ConsumerRecord
from numba import njit

from detector.transport import kafka_fallback as fallback
from detector.transport import kafka_salvage as salvage

log = logging.getLogger(__name__)

#: The kafka-python whose ``PartitionRecords._unpack_records`` this replaces.
KAFKA_PYTHON_VERSION = "3.0.12"

_MAX_VARINT_BYTES = 9  # < 2**63 whatever the bytes: int64 arithmetic stays exact
# columns of _scan's per-record table
(_LENGTH, _TS_DELTA, _OFFSET_DELTA, _KEY_AT, _KEY_LEN, _VALUE_AT, _VALUE_LEN,
 _HEADERS_FROM, _HEADERS_TO, _HEADER_SIZE, _HEADERS_AT, _END) = range(12)  # fmt: skip
_COLUMNS = 12
_HEADERS_PER_RECORD = 8  # room reserved per record; a batch with more takes the slow path
_MIN_RECORD_BYTES = 7  # a record's seven varints, each at least a byte


@njit(cache=True, nogil=True, inline="always")
def _varint(buf, pos, end):  # pragma: no cover - compiled
    """(value, next position), zigzag-decoded like kafka-python's decode_varint;
    next position -1 when the varint runs past ``end`` or is too long here."""
    result = np.int64(0)
    shift = 0
    for k in range(_MAX_VARINT_BYTES):
        if pos + k >= end:
            return np.int64(0), -1
        b = np.int64(buf[pos + k])
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return (result >> 1) ^ -(result & 1), pos + k + 1
        shift += 7
    return np.int64(0), -1


@njit(cache=True, nogil=True, inline="always")
def _bytes_field(buf, pos, end):  # pragma: no cover - compiled
    """(start, length, next position) of a length-prefixed field; a negative length
    is a null field with nothing after it; next position -1 past ``end``."""
    length, pos = _varint(buf, pos, end)
    at = pos
    if pos >= 0 and length >= 0:
        pos += length
        if pos > end:
            pos = -1
    return at, length, pos


@njit(cache=True, nogil=True)
def _scan(buf, pos, n_records, last_delta, out, headers):  # pragma: no cover - compiled
    """Every record's fields into ``out`` (one row a record, see the column names)
    and every header's (name at, name length, value at, value length) into
    ``headers``. Returns the number of headers, or -1 unless the records are
    exactly what kafka-python reads without an error and sit where the broker
    put them: each field inside the batch, a record's fields adding up to its
    length, the last record ending the batch, offset deltas increasing and at
    most the batch's last one."""
    end = buf.shape[0]
    n_headers = 0
    prev_delta = -1
    varints = np.empty(3, np.int64)  # attributes (unused, as in kafka-python), ts delta, offset delta
    for i in range(n_records):
        length, pos = _varint(buf, pos, end)
        if pos < 0 or length < 0:
            return -1
        start = pos
        for f in range(3):
            varints[f], pos = _varint(buf, pos, end)
            if pos < 0:
                return -1
        if not prev_delta < varints[2] <= last_delta:
            return -1
        prev_delta = varints[2]
        key_at, key_len, pos = _bytes_field(buf, pos, end)
        if pos < 0:
            return -1
        value_at, value_len, pos = _bytes_field(buf, pos, end)
        if pos < 0:
            return -1
        headers_at = pos
        count, pos = _varint(buf, pos, end)
        if pos < 0 or count < 0 or n_headers + count > headers.shape[0]:
            return -1
        first = n_headers
        size = 0
        for _ in range(count):
            name_at, name_len, pos = _bytes_field(buf, pos, end)
            if pos < 0 or name_len < 0:  # a header name is never null
                return -1
            h_at, h_len, pos = _bytes_field(buf, pos, end)
            if pos < 0:
                return -1
            headers[n_headers, 0] = name_at
            headers[n_headers, 1] = name_len
            headers[n_headers, 2] = h_at
            headers[n_headers, 3] = h_len
            size += name_len + max(h_len, 0)
            n_headers += 1
        if pos - start != length:
            return -1
        out[i, _LENGTH] = length
        out[i, _TS_DELTA] = varints[1]
        out[i, _OFFSET_DELTA] = varints[2]
        out[i, _KEY_AT] = key_at
        out[i, _KEY_LEN] = key_len
        out[i, _VALUE_AT] = value_at
        out[i, _VALUE_LEN] = value_len
        out[i, _HEADERS_FROM] = first
        out[i, _HEADERS_TO] = n_headers
        out[i, _HEADER_SIZE] = size if count else -1
        out[i, _HEADERS_AT] = headers_at
        out[i, _END] = pos
    if pos != end:
        return -1
    return n_headers


def _records(batch) -> tuple | None:
    """(per-record rows of ``_scan``'s table, every header as kafka-python reads
    it, the batch's bytes) for a v2 data batch whose CRC was checked and body
    inflated; None for a batch the salvage must read."""
    buf = batch._buffer
    n = batch._num_records
    if not 0 <= n <= (len(buf) - batch._pos) // _MIN_RECORD_BYTES:  # a count no batch can hold
        return None
    table = np.empty((n, _COLUMNS), np.int64)
    spans = np.empty((n * _HEADERS_PER_RECORD, 4), np.int64)
    last_delta = batch.last_offset_delta
    n_headers = _scan(np.frombuffer(buf, np.uint8), batch._pos, n, last_delta, table, spans)
    if n_headers < 0:
        return None
    view = memoryview(buf)
    rows = table.tolist()
    spans = spans[:n_headers].tolist()
    # a record's headers as a tuple, parsed once per distinct header block (a
    # producer repeats a few): the same (name, value) pairs kafka-python makes
    seen: dict[bytes, tuple] = {}
    record_headers = []
    try:
        for row in rows:
            block = bytes(view[row[_HEADERS_AT] : row[_END]])
            headers = seen.get(block)
            if headers is None:
                headers = seen[block] = tuple(
                    (
                        bytes(view[name_at : name_at + name_len]).decode("utf-8"),
                        bytes(view[at : at + length]) if length >= 0 else None,
                    )
                    for name_at, name_len, at, length in spans[row[_HEADERS_FROM] : row[_HEADERS_TO]]
                )
            record_headers.append(headers)
    except UnicodeDecodeError:  # the salvage dead-letters that record alone
        return None
    return rows, record_headers, view


_LOG_OVERHEAD = 12
_MAGIC = struct.Struct(">b")


def _v2_batch(pr, tp, batch, view, base, limit):
    """The records of v2 ``batch`` (framed in ``view`` at offset ``base``): through the
    compiled pass, else the salvage, else one unreadable span; nothing for a
    transaction marker. Returns the offset after it."""
    pr.leader_epoch = epoch = batch.leader_epoch
    last = salvage.last_offset_of(batch)
    last = last if limit is None else min(last, limit)
    problem = salvage.batch_problem(batch, pr.check_crcs)
    if problem is None and batch.is_control_batch:  # a transaction marker
        pr.next_fetch_offset = max(pr.next_fetch_offset, last + 1)
        return last + 1
    if problem is None:
        try:
            salvage.inflate(batch)
        except Exception as exc:  # unknown codec, no library, corrupt, a bomb
            problem = salvage.BAD_CODEC, f"codec {batch.compression_type}: {exc!r}"[:300]
    if problem is not None:
        item = fallback.span(pr, tp, epoch, base, last, *problem, bytes(view))
        if item is not None:
            yield item
        return last + 1
    parsed = _records(batch)
    if parsed is None:
        yield from fallback.salvaged(pr, tp, batch, last)
        return last + 1
    rows, record_headers, view = parsed
    topic, partition, tstype = tp.topic, tp.partition, batch.timestamp_type
    hd = batch._header_data
    base_offset, first_ts = hd[0], hd[7]
    for row, headers in zip(rows, record_headers, strict=True):
        size_, ts_delta, off, k_at, k_len, v_at, v_len, _, _, h_size, _, _ = row
        offset = base_offset + off
        pr.records_read += 1
        pr.bytes_read += size_
        pr.next_fetch_offset = offset + 1
        yield ConsumerRecord(
            topic, partition, epoch, offset,
            hd[8] if tstype else first_ts + ts_delta,  # log-append time: the batch's
            tstype,
            bytes(view[k_at : k_at + k_len]) if k_len >= 0 else None,
            bytes(view[v_at : v_at + v_len]) if v_len >= 0 else None,
            list(headers), None,
            k_len if k_len >= 0 else -1, v_len if v_len >= 0 else -1, h_size,
        )  # fmt: skip
    return last + 1


def _unpack_records_compiled(stock):
    """``PartitionRecords._unpack_records`` reading each batch of a fetch with the steps
    above; ``stock`` (kafka-python's own) for what canwatch never asks for."""
    # imported here: parse_batches_compiled checks kafka-python's version first
    from kafka.protocol.consumer import IsolationLevel
    from kafka.record import MemoryRecords
    from kafka.record.default_records import DefaultRecordBatch

    def _unpack_records(self, tp, records, key_deserializer, value_deserializer):
        if (
            key_deserializer is not None
            or value_deserializer is not None
            or self.isolation_level != IsolationLevel.READ_UNCOMMITTED
            or type(records) is not MemoryRecords
        ):
            yield from stock(self, tp, records, key_deserializer, value_deserializer)
            return
        data = records._buffer
        size, pos = len(data), 0
        tail = None  # the next offset after the fetch's last batch, if it was a v2 one
        floor = None  # the offset after the previous batch of this fetch
        while size - pos >= _LOG_OVERHEAD:
            base, length = salvage.BATCH_FRAME.unpack_from(data, pos)
            end = pos + _LOG_OVERHEAD + length
            if floor is not None and base < floor:
                break  # not where a batch can be: the next fetch reads from the floor on
            if length < 0:
                # Nothing after it can be found in this fetch: one offset is skipped (and
                # dead-lettered) per fetch until the broker sends something readable.
                at = max(self.next_fetch_offset, tail or 0)
                detail = f"batch length {length} at offset {base}"
                item = fallback.span(self, tp, self.leader_epoch, at, at, salvage.BAD_BATCH,
                                     detail, bytes(data[pos:]))  # fmt: skip
                if item is not None:
                    yield item
                tail = None
                break
            if end > size:
                break  # a partial batch ends the response: the next fetch starts with it
            view = memoryview(data)[pos:end]
            pos = end
            # No offset of this batch reaches the next batch's (its last offset delta
            # may be anything when its CRC does not hold).
            limit = None
            if size - pos >= 8:
                following = salvage.BATCH_FRAME.unpack_from(data, pos)[0]
                limit = following - 1 if following > base else None
            magic = _MAGIC.unpack_from(view, 16)[0] if len(view) > 16 else None
            if magic != 2 or len(view) < salvage.V2_HEADER_BYTES:
                tail = None
                after = yield from fallback.other_batch(self, tp, view, base, limit, magic)
                floor = max(floor or 0, after)
            else:
                batch = DefaultRecordBatch(view)
                floor = tail = yield from _v2_batch(self, tp, batch, view, base, limit)
        # as kafka-python ends a fetch's records (v2 keeps a batch's last offset)
        if tail is not None:
            self.next_fetch_offset = max(self.next_fetch_offset, tail)
        self.drain()

    _unpack_records.__qualname__ = "canwatch._unpack_records"
    _unpack_records.stock = stock
    return _unpack_records


def installed() -> bool:
    """Whether kafka-python's fetcher builds records through ``parse_batches_compiled``."""
    from kafka.consumer.fetcher import Fetcher

    method = Fetcher.PartitionRecords.__dict__.get("_unpack_records")
    return getattr(method, "__qualname__", "") == "canwatch._unpack_records"


def parse_batches_compiled() -> bool:
    """Build consumer records through ``_scan`` (see the module doc); process-wide,
    idempotent. Returns whether it is in place: False, with a log line, for another
    kafka-python version or if the self-check finds any difference."""
    import kafka
    from kafka.consumer.fetcher import Fetcher

    if kafka.__version__ != KAFKA_PYTHON_VERSION:
        log.info(
            "kafka-python %s: consumer records built its own way (the compiled batch "
            "parse is checked against %s)",
            kafka.__version__,
            KAFKA_PYTHON_VERSION,
        )
        return False
    if installed():
        return True
    cls = Fetcher.PartitionRecords
    fast = _unpack_records_compiled(cls._unpack_records)
    problem = _self_check(cls, fast)
    if problem:
        log.warning("compiled record batch parse not used: %s", problem)
        return False
    cls._unpack_records = fast
    return True


def build_batch(
    rows: list[tuple[int, int, bytes | None, bytes | None, list]],
    base_offset: int = 0,
    compression: int = 0,
    control: bool = False,
    log_append: bool = False,
    producer_id: int = -1,
) -> bytes:
    """A v2 record batch as a broker would send it, from (offset delta, timestamp,
    key, value, headers) rows, with kafka-python's own builder; ``control`` and
    ``log_append`` set those attribute bits (and the CRC again); a ``producer_id``
    makes it transactional."""
    from kafka.record.default_records import DefaultRecordBatchBuilder
    from kafka.record.util import calc_crc32c

    b = DefaultRecordBatchBuilder(
        magic=2, compression_type=compression, is_transactional=producer_id >= 0,
        producer_id=producer_id, producer_epoch=0 if producer_id >= 0 else -1,
        base_sequence=-1, batch_size=1 << 30,
    )  # fmt: skip
    for delta, ts, key, value, headers in rows:
        b.append(delta, timestamp=ts, key=key, value=value, headers=headers)
    raw = bytearray(b.build())
    raw[0:8] = base_offset.to_bytes(8, "big", signed=True)  # not under the CRC
    if control or log_append:
        flags = int.from_bytes(raw[21:23], "big") | (0x20 * control) | (0x08 * log_append)
        raw[21:23] = flags.to_bytes(2, "big")
        raw[17:21] = calc_crc32c(bytes(raw[21:])).to_bytes(4, "big")
    return bytes(raw)


def build_marker(base_offset: int, commit: bool = True, producer_id: int = 7) -> bytes:
    """A transaction marker (control batch) as a transaction coordinator writes it."""
    key = struct.pack(">hh", 0, int(commit))  # version 0, type 0 abort / 1 commit
    value = struct.pack(">hi", 0, 0)  # version 0, coordinator epoch
    return build_batch([(0, 1_700_000_000_000, key, value, [])], base_offset, control=True,
                       producer_id=producer_id)  # fmt: skip


def _sample_batches() -> bytes:
    """Batches with every kind of field kafka-python reads: null and empty keys and
    values, headers with null values and non-ASCII names, large and negative
    timestamp deltas, multi-byte varints; a log-append batch, then a transaction
    marker, and a batch after it."""
    rows = [
        (0, 1_700_000_000_000, b"k", b"v" * 300, [("brand", b"jeep"), ("\u00e9-name", None)]),
        (2, 1_699_999_930_000, None, None, []),
        (3, 1_700_000_140_000, b"", b"", [("x", b"")]),
        (900, 1, b"vehicle", bytes(range(256)) * 3, [("content-type", b"a/b"), ("s", b"1")]),
    ]
    return (
        build_batch(rows)
        + build_batch(rows, base_offset=1000, compression=1, log_append=True)
        + build_marker(2000)
        + build_batch(rows, base_offset=2001)
    )


def consumer_records(unpack, cls, data: bytes, take: int | None = None) -> list:
    """What ``unpack`` makes of ``data`` (one partition's fetched bytes): each
    record with the partition's bookkeeping after it, ``take`` records at a time
    as a poll with max_records takes them (None: all at once), then the error it
    raised if any, and the bookkeeping at the end."""
    from kafka.record import MemoryRecords
    from kafka.structs import TopicPartition

    pr = cls(0, TopicPartition("t", 0), MemoryRecords(b""))
    pr.record_iterator = unpack(pr, pr.topic_partition, MemoryRecords(data), None, None)
    out: list = []

    def state() -> tuple:
        return (pr.next_fetch_offset, pr.records_read, pr.bytes_read, pr.leader_epoch)

    try:
        while pr.record_iterator is not None:
            got = pr.take(take)
            out += [(r, state()) for r in got]
            if not got:
                break
    except Exception as exc:  # the comparison includes what was raised, and where
        out.append((type(exc).__name__, str(exc), state()))
    out.append(state())
    return out


def _self_check(cls, fast) -> str | None:
    """Why ``fast`` cannot stand in for ``cls._unpack_records`` here, or None."""
    data = _sample_batches()
    want = consumer_records(cls._unpack_records, cls, data, take=3)
    got = consumer_records(fast, cls, data, take=3)
    if got != want:
        return "its records differ from kafka-python's on the sample batches"
    return None
