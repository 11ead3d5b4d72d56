"""Read a span of offsets of one partition back: assign and seek, no group, no commits.

For forensics (``canwatch incidents export``): an incident names the partition
and offsets of the records that carried its windows, and this reads them
again. Nothing here joins a consumer group or commits, so it never disturbs
the detectors reading the same topic.

What it refuses to do is return a silently partial span. A span whose first
offset the broker no longer has (retention deleted it: the log now starts
after it, or a fetch answers "offset out of range"), or that the partition no
longer reaches (the topic was emptied or re-created), raises ``SpanGone``
naming the offsets asked for and those the partition holds. Reading *past* the
end of the log is allowed where the caller says so (``upto_end``): a margin
after an incident may run into the present.

The end of the log is judged from the fetch high watermark as well as
ListOffsets, which under-reports on Tansu (``kafka_io.end_offsets``).
"""

from __future__ import annotations

import time
from typing import Any

from detector.core.errors import CanwatchError

POLL_MS = 200
#: At the high watermark with nothing arriving for this long: the log ends here.
IDLE_S = 1.0


class SpanGone(CanwatchError):
    """The broker no longer has the records of a span (retention, a re-created topic)."""


def log_start(consumer: Any, tp: Any) -> int:
    """The earliest offset the broker still has for ``tp``."""
    return int(consumer.beginning_offsets([tp]).get(tp) or 0)


def read_span(
    consumer: Any,
    tp: Any,
    first: int,
    last: int,
    *,
    upto_end: bool = False,
    timeout_s: float = 60.0,
) -> list:
    """Records ``first``..``last`` (inclusive) of ``tp``, in offset order.

    ``consumer`` must have no group and ``auto_offset_reset='none'`` (an offset
    the log no longer has then raises instead of jumping elsewhere); ``tp`` is
    assigned here. Raises ``SpanGone`` when ``first`` is before the log start or,
    unless ``upto_end``, when the log ends before ``last``.
    """
    from kafka.errors import OffsetOutOfRangeError

    if last < first:
        return []
    start = log_start(consumer, tp)
    if start > first:
        raise SpanGone(
            f"{_where(tp, first, last)}: the partition now starts at offset {start} "
            "(retention deleted the records before it)"
        )
    if set(consumer.assignment()) != {tp}:
        consumer.assign([tp])
    consumer.seek(tp, first)
    out: list = []
    deadline = time.monotonic() + timeout_s
    idle_since: float | None = None
    while True:
        try:
            records = consumer.poll(timeout_ms=POLL_MS).get(tp, [])
        except OffsetOutOfRangeError:
            raise SpanGone(
                f"{_where(tp, first, last)}: the broker answers that offset {first} is out of "
                f"range (retention deleted it)"
            ) from None
        out += [r for r in records if first <= r.offset <= last]
        position = consumer.position(tp)
        if position > last:
            break
        now = time.monotonic()
        highwater = consumer.highwater(tp)
        if records or highwater is None or position < highwater:
            idle_since = None
        elif idle_since is None:
            idle_since = now
        elif now - idle_since >= IDLE_S:
            if upto_end:
                break
            raise SpanGone(
                f"{_where(tp, first, last)}: the partition ends at offset {highwater} "
                "(the topic was emptied or re-created)"
            )
        if now > deadline:
            raise CanwatchError(f"{_where(tp, first, last)}: gave up reading after {timeout_s:g} s")
    if not upto_end and (not out or out[0].offset != first):
        got = out[0].offset if out else "none"
        raise SpanGone(f"{_where(tp, first, last)}: offset {first} is missing (first found: {got})")
    return out


def _where(tp: Any, first: int, last: int) -> str:
    return f"{tp.topic} partition {tp.partition} offsets {first}-{last}"
