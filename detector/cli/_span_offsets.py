"""Finding a span of a topic by record timestamps, and reading it, with no consumer group.

Used by ``canwatch train --from-kafka`` (``_train_kafka``). The first offset of
the span on each partition comes from ``offsets_for_times``, checked against
the records themselves (Tansu answers every timestamp with offset 0, and its
ListOffsets latest under-reports); when the answer does not hold, a binary
search on record timestamps finds the boundary. The end of a partition is the
fetch high watermark of a probe, never ListOffsets alone.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from detector.core.config import Config
from detector.core.errors import CanwatchError

POLL_MS = 200
#: A probe (one fetch at an offset) gives up after this long without an answer.
PROBE_S = 5.0
#: Reading stops with an error when no partition moves for this long.
STALL_S = 30.0


class SpanError(CanwatchError):
    """The span cannot be read or holds nothing to train on."""


def open_consumer(cfg: Config, connect_timeout_s: float) -> Any:
    """A consumer with no group that commits nothing; a one-line error naming the
    address when no broker answers within ``connect_timeout_s``."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from detector.transport.kafka_io import connect_error, consumer_config

    kwargs = consumer_config(cfg.kafka)
    kwargs.update(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        bootstrap_timeout_ms=int(connect_timeout_s * 1000),
        request_timeout_ms=max(int(connect_timeout_s * 1000) + 1000, 5000),
        max_poll_records=10_000,  # records are small batches: bigger polls, fewer passes
        max_partition_fetch_bytes=8 << 20,
        reconnect_backoff_max_ms=1000,
    )
    try:
        return KafkaConsumer(**kwargs)
    except KafkaError as exc:
        raise connect_error(cfg.kafka, exc, min(connect_timeout_s, 5.0)) from None


def partitions_of(
    consumer: Any,
    topic: str,
    bootstrap: str,
    wait_s: float,
    error: type[CanwatchError] = SpanError,
) -> list:
    """The topic's partitions (metadata of a topic just made may lag a moment); an
    ``error`` naming the topic (and ``bootstrap``, if given) when it has none."""
    from kafka import TopicPartition

    deadline = time.monotonic() + wait_s
    while True:
        parts = consumer.partitions_for_topic(topic)
        if parts:
            return [TopicPartition(topic, p) for p in sorted(parts)]
        if time.monotonic() >= deadline:
            where = f" at {bootstrap}" if bootstrap else ""
            raise error(f"topic {topic!r} does not exist{where}")
        time.sleep(0.2)


def probe(consumer: Any, tp: Any, offset: int) -> Any | None:
    """The first record of ``tp`` at or after ``offset``, or None at the log end. The
    fetch also tells the consumer the partition's true high watermark."""
    if set(consumer.assignment()) != {tp}:
        consumer.assign([tp])
    consumer.seek(tp, offset)
    deadline = time.monotonic() + PROBE_S
    while time.monotonic() < deadline:
        for r in consumer.poll(timeout_ms=POLL_MS, max_records=1).get(tp, []):
            if r.offset >= offset:
                return r
        highwater = consumer.highwater(tp)
        if highwater is not None and consumer.position(tp) >= highwater:
            return None
    raise SpanError(f"{tp.topic} partition {tp.partition}: no answer to a fetch in {PROBE_S:g} s")


def log_bounds(consumer: Any, tp: Any) -> tuple[int, int]:
    """(first offset, end offset) of ``tp``; the end from a fetch's high watermark,
    which is right on Tansu where ListOffsets latest is not."""
    start = int(consumer.beginning_offsets([tp]).get(tp) or 0)
    listed = int(consumer.end_offsets([tp]).get(tp) or 0)
    probe(consumer, tp, max(start, listed - 1))
    return start, max(listed, int(consumer.highwater(tp) or 0), start)


def first_at(consumer: Any, tp: Any, t_ms: int, start: int, end: int) -> int:
    """The first offset in [start, end] whose record has a timestamp >= ``t_ms`` (``end``
    if none), taking timestamps as rising with offsets (producer time, one clock per
    vehicle gateway). The broker's ``offsets_for_times`` answer is used when the records
    around it confirm it; otherwise a binary search on record timestamps finds it."""
    from kafka.errors import KafkaError

    if end <= start:
        return end
    try:
        answer = consumer.offsets_for_times({tp: t_ms}).get(tp)
    except KafkaError:  # a broker too old for timestamp lookups: the search finds it
        answer = None
    guess = end if answer is None else min(max(int(answer.offset), start), end)
    if _boundary_holds(consumer, tp, t_ms, guess, start, end):
        return guess
    lo, hi = start, end  # the boundary lies in [lo, hi]
    while lo < hi:
        mid = (lo + hi) // 2
        r = probe(consumer, tp, mid)
        if r is None or r.timestamp >= t_ms:
            hi = mid
        else:
            lo = min(r.offset + 1, hi)
    return lo


def _boundary_holds(consumer: Any, tp: Any, t_ms: int, at: int, start: int, end: int) -> bool:
    """Is ``at`` the first offset with a timestamp >= ``t_ms``? (The record there is at
    or after it, or the log ends there; the one before it is earlier.)"""
    here = probe(consumer, tp, at) if at < end else None
    if here is not None and here.timestamp < t_ms:
        return False
    if at == start:
        return True
    before = probe(consumer, tp, at - 1)
    return before is None or before.offset >= at or before.timestamp < t_ms


def span_offsets(
    consumer: Any, tps: list, since_ms: int, until_ms: int
) -> dict[Any, tuple[int, int]]:
    """Per partition, the offsets [first, end) of the records of ``[since, until)``."""
    out = {}
    for tp in tps:
        start, end = log_bounds(consumer, tp)
        first = first_at(consumer, tp, since_ms, start, end)
        last = first_at(consumer, tp, until_ms, first, end)
        out[tp] = (first, last)
    return out


def read_offsets(consumer: Any, ranges: dict[Any, tuple[int, int]]) -> Iterator[list]:
    """The records of each partition's [first, end), a poll at a time (partitions that
    are done are paused so nothing past their end is fetched)."""
    todo = {tp: r for tp, r in ranges.items() if r[1] > r[0]}
    if not todo:
        return
    consumer.assign(list(todo))
    for tp, (first, _) in todo.items():
        consumer.seek(tp, first)
    moved = time.monotonic()
    while todo:
        polled = consumer.poll(timeout_ms=POLL_MS)
        records = [r for tp, rs in polled.items() for r in rs if r.offset < ranges[tp][1]]
        if records:
            moved = time.monotonic()
            yield records
        for tp in list(todo):
            position = consumer.position(tp)
            highwater = consumer.highwater(tp)
            ended = highwater is not None and position >= highwater and not polled.get(tp)
            if position >= todo[tp][1] or ended:  # the log may end early: re-created topic
                consumer.pause(tp)
                del todo[tp]
        if todo and time.monotonic() - moved > STALL_S:
            raise SpanError(f"reading {next(iter(todo)).topic} stalled for {STALL_S:g} s")


def decode_polled(records: list, cfg: Config) -> list:
    """Consumer records decoded as the service decodes them (any brand; frames too far
    ahead of the clock or before ``detection.min_ts`` refused the same way)."""
    from detector.transport.wire import decode_records

    det = cfg.detection
    return decode_records(
        [(r.key, r.value, r.headers) for r in records],
        known_brands=None,
        now=time.time(),
        max_future_s=det.max_future_s,
        min_ts=det.min_ts,
    )
