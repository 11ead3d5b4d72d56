"""detector.kafka_records: the compiled record batch parse yields exactly what
kafka-python's own fetcher yields, record by record, bookkeeping included,
and hands every batch it does not fully understand back to kafka-python.

``canwatch detect`` installs it, so every Kafka test of the service (and
bench/throughput.py's frame counts) runs through it against the real broker.
"""

from __future__ import annotations

import kafka
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kafka.consumer.fetcher import Fetcher
from kafka.record.util import calc_crc32c

from detector import kafka_records as kr

CLS = Fetcher.PartitionRecords
STOCK = getattr(CLS._unpack_records, "stock", CLS._unpack_records)  # kafka-python's own
FAST = kr._unpack_records_compiled(STOCK)

_header = st.tuples(
    st.text(min_size=0, max_size=12),
    st.one_of(st.none(), st.binary(max_size=40)),
)
_row = st.tuples(
    st.integers(0, 3),  # offset step (compaction leaves gaps)
    st.integers(-(10**9), 10**9),  # timestamp delta from the batch's first
    st.one_of(st.none(), st.binary(max_size=30)),
    st.one_of(st.none(), st.binary(max_size=3000)),
    st.lists(_header, max_size=4),
)
_batch = st.tuples(
    st.lists(_row, min_size=1, max_size=12),
    st.sampled_from([0, 1, 3]),  # none, gzip, lz4
    st.booleans(),  # control
    st.booleans(),  # log-append time
)


def _fetched(batches: list) -> bytes:
    """The bytes of one partition's fetch: the batches one after another."""
    out, base = b"", 100
    for rows, compression, control, log_append in batches:
        built, delta = [], 0
        for step, ts, key, value, headers in rows:
            delta += step
            built.append((delta, 1_700_000_000_000 + ts, key, value, headers))
        out += kr.build_batch(built, base, compression, control, log_append)
        base += delta + 1 + len(rows)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_batch, min_size=1, max_size=4), st.sampled_from([None, 1, 5]))
def test_records_and_bookkeeping_are_kafka_pythons(batches: list, take: int | None) -> None:
    data = _fetched(batches)
    assert kr.consumer_records(FAST, CLS, data, take) == kr.consumer_records(
        STOCK, CLS, data, take
    )


def _fix_crc(data: bytearray, at: int = 0) -> None:
    """The CRC of the batch starting at ``at`` made right again (v2: over attributes..end)."""
    length = int.from_bytes(data[at + 8 : at + 12], "big")
    end = at + 12 + length
    data[at + 17 : at + 21] = calc_crc32c(bytes(data[at + 21 : end])).to_bytes(4, "big")


@settings(max_examples=300, deadline=None)
@given(
    st.lists(_row, min_size=1, max_size=6),
    st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=3),
    st.booleans(),
)
def test_a_malformed_batch_gets_kafka_pythons_records_and_errors(
    rows: list, flips: list, crc_right: bool
) -> None:
    """Bytes changed from the batch's attributes on: with the CRC made right again
    the batch itself is malformed (a record count that does not match, bad
    varints, lengths past the end, sizes that do not add up, names that are not
    UTF-8, a codec that is not one), else the CRC fails."""
    clean = _fetched([(rows, 0, False, False)])
    data = bytearray(clean + clean)  # and a good batch after it
    first_len = len(clean)
    for at, byte in flips:
        data[21 + at % (first_len - 21)] = byte
    if crc_right:
        _fix_crc(data)
    data = bytes(data)
    assert kr.consumer_records(FAST, CLS, data, 2) == kr.consumer_records(STOCK, CLS, data, 2)


@pytest.mark.parametrize("count", [0, 2, 3, 4, 2**31 - 1])
def test_a_record_count_that_does_not_match_gets_kafka_pythons_error(count: int) -> None:
    rows = [(i, i, b"k", b"v", []) for i in range(3)]
    data = bytearray(kr.build_batch(rows))
    data[57:61] = count.to_bytes(4, "big")
    _fix_crc(data)
    want = kr.consumer_records(STOCK, CLS, bytes(data))
    assert kr.consumer_records(FAST, CLS, bytes(data)) == want
    if count != 3:
        assert want[-2][0] == "CorruptRecordError"


@pytest.mark.parametrize("change", [-2, 2, 4])
def test_a_record_length_that_does_not_add_up_gets_kafka_pythons_error(change: int) -> None:
    rows = [(i, i, b"k", b"v", [("h", b"x")]) for i in range(3)]
    data = bytearray(kr.build_batch(rows))
    data[61] += change  # the first record's length (zigzag: 2 per byte)
    _fix_crc(data)
    want = kr.consumer_records(STOCK, CLS, bytes(data))
    assert kr.consumer_records(FAST, CLS, bytes(data)) == want
    assert want[-2][0] == "CorruptRecordError"


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
