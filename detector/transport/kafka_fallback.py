"""Fetched records the compiled pass of ``kafka_records`` does not read: legacy (v0/v1)
message sets, v2 batches it refused (read by ``kafka_salvage``) and spans nothing
can be read from, each yielded to kafka-python's fetcher with the fetcher's
bookkeeping (next fetch offset, records and bytes read) moved past it as
kafka-python moves it.

``pr`` is the fetcher's ``PartitionRecords`` and ``tp`` its topic partition, as
in the ``_unpack_records`` these serve.
"""

from __future__ import annotations

from collections.abc import Generator, Iterator
from typing import Any

from kafka.consumer.fetcher import ConsumerRecord

from detector.transport import kafka_salvage as salvage

MIN_SLICE = 26  # kafka-python's MemoryRecords.MIN_SLICE: no (v0) message set is shorter


def _unreadable(pr, tp, epoch, first, problem, raw) -> salvage.UnreadableRecord:
    """The span ``[first, problem.last_offset]`` as one record for the fetcher ``pr``
    (kafka-python's ``PartitionRecords``, whose bookkeeping moves past it)."""
    pr.records_read += 1
    pr.bytes_read += len(raw)
    pr.next_fetch_offset = max(pr.next_fetch_offset, problem.last_offset + 1)
    return salvage.UnreadableRecord(tp.topic, tp.partition, epoch, first, problem, raw)


def span(
    pr: Any, tp: Any, epoch: int, first: int, last: int, reason: str, detail: str, raw: bytes
) -> salvage.UnreadableRecord | None:
    """A whole batch (or what is left of a fetch) that cannot be read; None if it lies
    before the fetch offset (read in an earlier fetch)."""
    if last < pr.fetch_offset:
        return None
    first = max(first, pr.fetch_offset)
    return _unreadable(pr, tp, epoch, first, salvage.Problem(reason, detail, last), raw)


def salvaged(pr: Any, tp: Any, batch: Any, last: int) -> Iterator[ConsumerRecord]:
    """Records and unreadable parts of a v2 batch the compiled pass refused."""
    epoch, tstype = batch.leader_epoch, batch.timestamp_type
    for item in salvage.read_v2(batch, pr.fetch_offset, last):
        if item[0] == "bad":
            _, first, problem, raw = item
            yield _unreadable(pr, tp, epoch, salvage.clamp(first, problem, pr.fetch_offset),
                              problem, raw)  # fmt: skip
            continue
        _, offset, ts, key, value, headers, size, h_size = item
        pr.records_read += 1
        pr.bytes_read += size
        pr.next_fetch_offset = offset + 1
        yield ConsumerRecord(
            tp.topic, tp.partition, epoch, offset, ts, tstype, key, value, headers, None,
            len(key) if key is not None else -1, len(value) if value is not None else -1,
            h_size,
        )  # fmt: skip


def legacy(pr: Any, tp: Any, view: memoryview, magic: int) -> Iterator[ConsumerRecord]:
    """A v0/v1 message set, read by kafka-python's classes as its generator does."""
    for item in salvage.read_legacy(view, magic, pr.check_crcs, pr.fetch_offset):
        if item[0] == "bad":
            _, first, problem, raw = item
            yield _unreadable(pr, tp, pr.leader_epoch,
                              salvage.clamp(first, problem, pr.fetch_offset), problem, raw)  # fmt: skip
            continue
        record = item[1]
        key, value = record.key, record.value
        pr.records_read += 1
        pr.bytes_read += record.size_in_bytes
        pr.next_fetch_offset = record.offset + 1
        yield ConsumerRecord(
            tp.topic, tp.partition, pr.leader_epoch, record.offset, record.timestamp,
            record.timestamp_type, key, value, record.headers, record.checksum,
            len(key) if key is not None else -1, len(value) if value is not None else -1, -1,
        )  # fmt: skip


def other_batch(
    pr: Any, tp: Any, view: memoryview, base: int, limit: int | None, magic: int | None
) -> Generator[ConsumerRecord, None, int]:
    """A batch that is not a v2 one: a v0/v1 message set read record by record, or one
    unreadable span. Returns the offset after it."""
    if magic in (0, 1) and len(view) >= MIN_SLICE:
        yield from legacy(pr, tp, view, magic)
        return base + 1  # a message set's offset is its last
    last = base
    if magic is not None and magic > 2 and len(view) >= 27:
        last = salvage.framed_last_offset(view, 0, base)
    last = last if limit is None else min(last, limit)
    detail = f"record batch version {magic}, {len(view)} bytes: not readable"
    item = span(pr, tp, pr.leader_epoch, base, last, salvage.BAD_BATCH, detail, bytes(view))
    if item is not None:
        yield item
    return last + 1
