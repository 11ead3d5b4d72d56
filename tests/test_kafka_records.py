"""detector.transport.kafka_records: the compiled record batch parse yields exactly what
kafka-python's own fetcher yields, record by record, bookkeeping included, for
every well-formed batch; and any batch at all is read without raising
(detector.transport.kafka_salvage): what cannot be read becomes an ``UnreadableRecord``
with its offsets and a reason, and the fetch position always moves past it.

``canwatch detect`` installs it, so every Kafka test of the service (and
bench/throughput.py's frame counts) runs through it against the real broker.
"""

from __future__ import annotations

import gzip
import struct

import kafka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import Fetcher
from kafka.record.legacy_records import LegacyRecordBatchBuilder
from kafka.record.util import calc_crc32c

from detector.transport import kafka_records as kr
from detector.transport import kafka_salvage as salvage
from detector.transport.kafka_salvage import UnreadableRecord

CLS = Fetcher.PartitionRecords
STOCK = getattr(CLS._unpack_records, "stock", CLS._unpack_records)  # kafka-python's own
FAST = kr._unpack_records_compiled(STOCK)
TS = 1_700_000_000_000

_header = st.tuples(
    st.text(min_size=0, max_size=12),
    st.one_of(st.none(), st.binary(max_size=40)),
)
_row = st.tuples(
    st.integers(1, 3),  # offset step (compaction leaves gaps; a broker never repeats one)
    st.integers(-(10**9), 10**9),  # timestamp delta from the batch's first
    st.one_of(st.none(), st.binary(max_size=30)),
    st.one_of(st.none(), st.binary(max_size=3000)),
    st.one_of(st.lists(_header, max_size=4), st.lists(_header, min_size=9, max_size=12)),
)
_batch = st.tuples(
    st.lists(_row, min_size=1, max_size=12),
    st.sampled_from([0, 1, 3]),  # none, gzip, lz4
    st.booleans(),  # a transaction marker after it
    st.booleans(),  # log-append time
)


def _fetched(batches: list) -> bytes:
    """The bytes of one partition's fetch: the batches one after another."""
    out, base = b"", 100
    for rows, compression, marker, log_append in batches:
        built, delta = [], -1
        for step, ts, key, value, headers in rows:
            delta += step
            built.append((delta, TS + ts, key, value, headers))
        out += kr.build_batch(built, base, compression, log_append=log_append)
        base += delta + 1
        if marker:
            out += kr.build_marker(base)
            base += 1
    return out


def _rows(n: int, headers: list | None = None) -> list:
    return [(i, TS + i, b"veh-%d" % i, b"v" * 20, headers or [("brand", b"jeep")]) for i in range(n)]


def _fix_crc(data: bytearray, at: int = 0) -> None:
    """The CRC of the batch starting at ``at`` made right again (v2: over attributes..end)."""
    length = int.from_bytes(data[at + 8 : at + 12], "big")
    end = at + 12 + length
    data[at + 17 : at + 21] = calc_crc32c(bytes(data[at + 21 : end])).to_bytes(4, "big")


def _read(data: bytes, take: int | None = None, fetch_offset: int = 0) -> list:
    """FAST's records and the bookkeeping, as ``kr.consumer_records`` gives them, from
    a partition fetched at ``fetch_offset``."""
    from kafka.record import MemoryRecords
    from kafka.structs import TopicPartition

    pr = CLS(fetch_offset, TopicPartition("t", 0), MemoryRecords(b""))
    pr.record_iterator = __import__("itertools").dropwhile(
        pr._maybe_skip_record, FAST(pr, pr.topic_partition, MemoryRecords(data), None, None)
    )
    out = []
    while pr.record_iterator is not None:
        got = pr.take(take)  # raises, if anything does: the test fails with it
        out += got
        if not got:
            break
    return out + [(pr.next_fetch_offset, pr.records_read, pr.bytes_read)]


def _unreadable(out: list) -> list[tuple[int, int, str]]:
    return [(r.offset, r.problem.last_offset, r.problem.reason) for r in out[:-1]
            if isinstance(r, UnreadableRecord)]  # fmt: skip


def _readable(out: list) -> list[int]:
    return [r.offset for r in out[:-1] if not isinstance(r, UnreadableRecord)]


# -- well-formed batches: kafka-python's records exactly ---------------------------------------


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_batch, min_size=1, max_size=4), st.sampled_from([None, 1, 5]))
def test_records_and_bookkeeping_are_kafka_pythons(batches: list, take: int | None) -> None:
    data = _fetched(batches)
    assert kr.consumer_records(FAST, CLS, data, take) == kr.consumer_records(
        STOCK, CLS, data, take
    )


def test_a_legacy_message_set_is_read_as_kafka_python_reads_it() -> None:
    for magic in (0, 1):
        b = LegacyRecordBatchBuilder(magic=magic, compression_type=0, batch_size=1 << 20)
        for i in range(3):
            b.append(i, timestamp=TS + i if magic else None, key=b"k%d" % i, value=b"v")
        data = bytes(b.build())
        assert kr.consumer_records(FAST, CLS, data, 2) == kr.consumer_records(STOCK, CLS, data, 2)


# -- anything else: read without raising, the rest accounted for -------------------------------


def test_a_header_name_that_is_not_utf8_is_that_record_alone() -> None:
    """Issue 21's record: kafka-python raises CorruptRecordError at it (and its fetcher
    then spins in the next poll); here it is one unreadable record, the others are read."""
    data = bytearray(kr.build_batch(_rows(3, [("trace", b"x"), ("brand", b"jeep")]), 40))
    data[data.index(b"trace", data.index(b"trace") + 1)] = 0xFF  # the second record's
    _fix_crc(data)
    data = bytes(data) + kr.build_batch(_rows(2), 43)
    stock = kr.consumer_records(STOCK, CLS, data)
    assert stock[-2][0] == "CorruptRecordError"
    out = _read(data)
    assert _unreadable(out) == [(41, 41, "bad_header_name")]
    assert _readable(out) == [40, 42, 43, 44]
    bad = out[1]
    assert bad.key == b"veh-1" and b"\xffrace" in bad.value
    assert "not UTF-8" in bad.problem.detail
    assert out[0] == stock[0][0]  # the record before it: kafka-python's
    assert out[-1][0] == 45  # the next fetch starts after the last batch


def test_a_batch_whose_crc_does_not_match_is_one_span() -> None:
    data = bytearray(kr.build_batch(_rows(5), 10))
    data[70] ^= 0x01
    out = _read(bytes(data) + kr.build_batch(_rows(2), 15))
    assert _unreadable(out) == [(10, 14, "bad_crc")]
    assert _readable(out) == [15, 16]
    assert out[0].value == bytes(data)  # the batch as stored, for the DLQ


@pytest.mark.parametrize(
    ("codec", "reason"),
    [(5, "bad_codec"), (7, "bad_codec"), (2, "bad_codec"), (4, "bad_codec")],  # snappy, zstd: no library
)
def test_a_codec_that_cannot_be_read_is_one_span(codec: int, reason: str) -> None:
    data = bytearray(kr.build_batch(_rows(3), 0))
    data[21:23] = (int.from_bytes(data[21:23], "big") & ~7 | codec).to_bytes(2, "big")
    _fix_crc(data)
    assert _unreadable(_read(bytes(data))) == [(0, 2, reason)]


def test_a_decompression_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(salvage, "MAX_INFLATED_BYTES", 1 << 20)
    body = bytes(5 << 20)  # a "batch body" that inflates to 5 MiB
    data = bytearray(kr.build_batch(_rows(1), 0))
    data = data[:61] + gzip.compress(body)
    data[8:12] = (len(data) - 12).to_bytes(4, "big")
    data[21:23] = (1).to_bytes(2, "big")  # gzip
    _fix_crc(data)
    out = _read(bytes(data))
    assert _unreadable(out) == [(0, 0, "bad_codec")]
    assert "inflates beyond" in out[0].problem.detail


def test_a_control_batch_is_skipped_only_if_it_is_a_transaction_marker() -> None:
    data = kr.build_marker(5) + kr.build_batch(_rows(3), 6, control=True) + kr.build_batch(_rows(1), 9)
    out = _read(data)
    assert _unreadable(out) == [(6, 8, "bad_control")]  # data under the control bit
    assert _readable(out) == [9]


@pytest.mark.parametrize("count", [0, 2, 4, 2**31 - 1])
def test_a_record_count_that_does_not_match_loses_nothing_silently(count: int) -> None:
    data = bytearray(kr.build_batch(_rows(3), 0))
    data[57:61] = count.to_bytes(4, "big")
    _fix_crc(data)
    out = _read(bytes(data))
    if count < 3:  # records past the announced count: their bytes are dead-lettered
        assert _readable(out) == list(range(count))
        assert _unreadable(out) == [(min(count, 2), 2, "bad_batch")]
    else:  # every record there is read; no offset is missing
        assert _readable(out) == [0, 1, 2] and not _unreadable(out)
    assert out[-1][0] == 3


@pytest.mark.parametrize("change", [-2, 2, 4, 0x7E])
def test_a_record_length_that_does_not_add_up(change: int) -> None:
    data = bytearray(kr.build_batch(_rows(3, [("h", b"x")]), 0))
    data[61] = (data[61] + change) & 0x7F  # the first record's length (zigzag: 2 per byte)
    _fix_crc(data)
    out = _read(bytes(data))
    # the first record's length cannot be trusted, nor where the next one starts: the
    # batch from it on is one span
    assert _unreadable(out) == [(0, 2, "bad_record")] and not _readable(out)
    assert out[-1][0] == 3


def test_offsets_out_of_order_are_not_trusted() -> None:
    rows = [(0, TS, b"a", b"v", []), (5, TS, b"b", b"v", []), (2, TS, b"c", b"v", [])]
    data = bytearray(kr.build_batch(rows, 0))
    data[23:27] = (2).to_bytes(4, "big")  # last offset delta 2: the second record's 5 is past it
    _fix_crc(data)
    out = _read(bytes(data))
    assert _readable(out) == [0, 2] and _unreadable(out) == [(1, 1, "bad_record")]


@pytest.mark.parametrize("magic", [3, 9, -1])
def test_an_unknown_batch_version_is_one_span(magic: int) -> None:
    data = bytearray(kr.build_batch(_rows(4), 20))
    data[16] = magic & 0xFF
    out = _read(bytes(data) + kr.build_batch(_rows(1), 24))
    assert _unreadable(out) == [(20, 23 if magic > 2 else 20, "bad_batch")]
    assert _readable(out) == [24]


def test_a_batch_shorter_than_any_batch_ends_the_fetch_one_offset_further() -> None:
    data = kr.build_batch(_rows(2), 0) + struct.pack(">qi", 2, 5) + b"\0" * 20
    out = _read(data)
    assert _readable(out) == [0, 1] and _unreadable(out) == [(2, 2, "bad_batch")]
    assert out[-1][0] == 3


def test_a_span_starts_at_the_fetch_offset_and_one_before_it_is_not_read_again() -> None:
    data = bytearray(kr.build_batch(_rows(5), 10))
    data[70] ^= 0x01  # bad CRC: offsets 10-14
    assert _unreadable(_read(bytes(data), fetch_offset=12)) == [(12, 14, "bad_crc")]
    assert _unreadable(_read(bytes(data) + kr.build_batch(_rows(1), 15), fetch_offset=15)) == []


def test_take_one_at_a_time_keeps_the_bookkeeping() -> None:
    data = bytearray(kr.build_batch(_rows(3, [("trace", b"x")]), 0))
    data[data.index(b"trace")] = 0x80
    _fix_crc(data)
    out = _read(bytes(data), take=1)
    assert _unreadable(out) == [(0, 0, "bad_header_name")] and _readable(out) == [1, 2]
    assert out[-1] == (3, 3, out[-1][2]) and out[-1][2] > 0


def _mutate(data: bytearray, ops: list, fix_crc: bool) -> bytes:
    for kind, at, value in ops:
        if len(data) <= 12:
            break
        i = 12 + at % (len(data) - 12)  # never the base offset or length: the broker
        if kind == "set":  # frames and numbers every batch itself
            data[i] = value
        elif kind == "cut":
            del data[i:]
            data[8:12] = (len(data) - 12).to_bytes(4, "big")
        else:
            data[i:i] = bytes([value]) * (1 + at % 7)
            data[8:12] = (len(data) - 12).to_bytes(4, "big")
    if fix_crc and len(data) >= 61:
        _fix_crc(data)
    return bytes(data)


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(_row, min_size=1, max_size=6),
    st.lists(
        st.tuples(st.sampled_from(["set", "set", "set", "cut", "insert"]), st.integers(0, 10**6),
                  st.integers(0, 255)),  # fmt: skip
        min_size=1,
        max_size=3,
    ),
    st.booleans(),
    st.sampled_from([None, 1, 3]),
)
def test_any_mutated_batch_is_read_without_raising_and_every_offset_once(
    rows: list, ops: list, fix_crc: bool, take: int | None
) -> None:
    """A mutated batch between two good ones: no exception; offsets increase (an
    unreadable remainder with no offset left is reported at the batch's last); every
    record kafka-python reads from it (offsets in order) is read the same; if
    kafka-python raises on it, something is unreadable or more was read than it did;
    the good batches' records are read and the fetch ends past all three."""
    before = kr.build_batch(_rows(2), 0)
    built, delta = [], -1
    for step, ts, key, value, headers in rows:
        delta += step
        built.append((delta, TS + ts, key, value, headers))
    middle = _mutate(bytearray(kr.build_batch(built, 2)), ops, fix_crc)
    after_base = 2 + delta + 1
    after = kr.build_batch(_rows(2), after_base)
    out = _read(before + middle + after, take)
    covered = []
    for r in out[:-1]:
        last = r.problem.last_offset if isinstance(r, UnreadableRecord) else r.offset
        assert r.offset <= last
        if isinstance(r, UnreadableRecord):
            assert r.problem.reason in salvage.REASONS and r.problem.detail
            if covered and r.offset == last == covered[-1][1]:  # nothing left to number it
                assert "beyond the batch's last offset" in r.problem.detail or (
                    "after the" in r.problem.detail
                )
                continue
        assert not covered or covered[-1][1] < r.offset, (covered, r)
        covered.append((r.offset, last))
    assert _readable(out)[:2] == [0, 1]
    tail = [r for r in out[:-1] if r.offset >= after_base]
    assert [r.offset for r in tail] == [after_base, after_base + 1]
    assert not any(isinstance(r, UnreadableRecord) for r in tail)
    assert out[-1][0] == after_base + 2

    if len(middle) < 17 or middle[16] != 2:
        return  # not a v2 batch: kafka-python reads other versions (wrongly) as v2 or v0/v1
    stock = kr.consumer_records(STOCK, CLS, before + middle, None)
    # offsets the middle batch owns: to its own last offset delta (kafka-python does not
    # hold records to it), not into the next batch
    owned = min(2 + int.from_bytes(middle[23:27], "big", signed=True), after_base - 1)
    mine = [r for r in out[:-1] if 2 <= r.offset < after_base]

    def covering(offset: int):
        for r in mine:
            last = r.problem.last_offset if isinstance(r, UnreadableRecord) else r.offset
            if r.offset <= offset <= last:
                return r
        return None

    prev = 1
    for n, item in enumerate(stock[2:-1]):
        if isinstance(item[0], str):  # kafka-python raised on the middle batch: the
            # salvage reports something unreadable, or read at least as much (a record
            # count beyond the bytes, say, loses nothing)
            readable = [r for r in mine if not isinstance(r, UnreadableRecord)]
            assert _unreadable(out) or len(readable) >= n
            break
        record = item[0]
        if not prev < record.offset <= owned:
            break  # offsets out of order or not the batch's: not trusted here
        found = covering(record.offset)
        if isinstance(found, UnreadableRecord):
            # kafka-python slices a last field that runs past the batch's end short and
            # yields the record anyway; the salvage reports the rest of the batch
            assert "bytes left" in found.problem.detail or "cannot be split" in found.problem.detail
            break
        assert found == record
        prev = record.offset


def test_canwatch_records_take_the_compiled_path() -> None:
    """A batch like canwatch's producers send is read without kafka-python's parse."""
    headers = [("brand", b"jeep"), ("content-type", b"application/vnd.canwatch.frames")]
    rows = [(i, i, b"veh-1", bytes(16 + 24 * 470), headers + [("schema", b"1")]) for i in range(9)]
    data = kr.build_batch(rows, base_offset=40)
    batch = kafka.record.MemoryRecords(data).next_batch()
    assert batch.validate_crc()
    table, record_headers, _ = kr._records(batch)
    assert [r[kr._OFFSET_DELTA] for r in table] == list(range(9))
    assert record_headers == [tuple(headers + [("schema", b"1")])] * 9


def test_installs_once_and_only_where_it_was_checked(monkeypatch: pytest.MonkeyPatch) -> None:
    assert kr.parse_batches_compiled()
    assert kr.installed()
    method = CLS._unpack_records
    assert kr.parse_batches_compiled() and CLS._unpack_records is method
    monkeypatch.setattr(CLS, "_unpack_records", STOCK)
    monkeypatch.setattr(kafka, "__version__", "3.1.0")
    assert not kr.parse_batches_compiled()
    assert CLS._unpack_records is STOCK and not kr.installed()


def test_a_parse_that_differs_from_kafka_python_is_refused(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    real = kr._records

    def off_by_one(batch):
        parsed = real(batch)
        if parsed is None:
            return None
        table, record_headers, view = parsed
        table[-1][kr._OFFSET_DELTA] += 1
        return table, record_headers, view

    monkeypatch.setattr(CLS, "_unpack_records", STOCK)
    monkeypatch.setattr(kr, "_records", off_by_one)
    assert not kr.parse_batches_compiled()
    assert CLS._unpack_records is STOCK
    assert "differ from kafka-python" in caplog.text
