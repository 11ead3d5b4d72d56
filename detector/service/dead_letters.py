"""Dead letters: a record the detector cannot use goes to the DLQ with why and where.

Two kinds: a record canwatch's own decoding refused (``DecodeError``: its
reason and detail), and a record, or span of records, the Kafka record format
itself could not describe (``detector.transport.kafka_salvage``: its raw bytes
and offsets). Each is counted in the metrics once the broker has it (a poll
re-read after a rewind would count it again otherwise, with nothing in the DLQ),
and sent with headers ``error``,
``error-detail``, ``source`` (topic/partition/offset), and ``error-altered``
when the copy had to be changed to be producible. With pseudonymisation on, the
raw vehicle id is scrubbed from key, body and detail, or the bytes withheld where
no key says which id to scrub (none, a malformed one, or the body names another
vehicle); headers other than the wire format's own (a producer's ``vin``) are
withheld too.

Kept apart so that what a dead letter carries is decided in one place for both
kinds; nothing bad is ever dropped silently, and it never stops the consumer.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from collections.abc import Callable

from detector.core.errors import DecodeError
from detector.incidents.privacy import scrub
from detector.service.metrics import DetectorMetrics
from detector.transport.kafka_salvage import UnreadableRecord
from detector.transport.wire import BAD_KEY, MISMATCH, dead_letter_copy

log = logging.getLogger("canwatch.detect")
#: The headers the wire format defines (docs/wire-format.md): kept in a scrubbed copy
PROTOCOL_HEADERS = frozenset({"brand", "content-type", "schema"})
UNREADABLE_LOG_S = 10.0  # at most one summary line of unreadable records this often

#: (topic, key, value, headers) -> the producer's future
Send = Callable[[str, bytes | None, bytes | None, list], object]


def _unscrubbable(key: bytes | None, reason: str) -> str:
    """Why a refused record's body cannot be scrubbed of its vehicle id ('' when it can):
    scrubbing replaces the key's bytes, so a body naming the vehicle otherwise keeps it."""
    if not key:
        return "no key to scrub"
    if reason == MISMATCH:
        return "the body names another vehicle"
    if reason == BAD_KEY:  # "VIN\n", a BOM before it: the body holds the id without them
        return "the key is malformed"
    return ""


def _protocol_headers(headers) -> tuple[list, int]:
    """The wire format's own headers of a record, and how many others it had."""
    try:
        kept = [(n, v) for n, v in headers or () if n in PROTOCOL_HEADERS]
        return kept, len(list(headers or ())) - len(kept)
    except (TypeError, ValueError):  # not (name, value) pairs: keep none of them
        return [], 1


class DeadLetters:
    def __init__(
        self, topic: str, privacy_key: bytes | None, metrics: DetectorMetrics, send: Send
    ) -> None:
        self.topic = topic
        self.privacy_key = privacy_key
        self.metrics = metrics
        self.send = send
        self._unreadable_seen: dict[str, int] = defaultdict(int)  # since the last summary line
        self._unreadable_logged = 0.0
        # (reason, unreadable offsets or 0) of the poll in flight, counted on its acks
        self._unacknowledged: list[tuple[str, int]] = []

    def count_acknowledged(self) -> None:
        """The poll in flight is acknowledged: its dead letters count."""
        for reason, offsets in self._unacknowledged:
            self.metrics.dead_letter(reason)
            if offsets:
                self.metrics.unreadable(reason, offsets)
        self._unacknowledged.clear()

    def forget_unacknowledged(self) -> None:
        """The poll in flight is dropped (a rewind re-reads it)."""
        self._unacknowledged.clear()

    def refused(self, record, exc: DecodeError):
        """A record canwatch's decoding refused: to the DLQ with ``exc``'s reason."""
        key, value = record.key, record.value
        detail = exc.detail[:500].encode("utf-8", "replace")
        withheld = ""
        headers_in = record.headers
        if self.privacy_key is not None:  # the raw id may sit in the key, the body or the detail
            key, value = scrub(self.privacy_key, record.key, record.value)
            detail = scrub(self.privacy_key, record.key, detail)[1]
            why = _unscrubbable(record.key, exc.reason)
            if why:
                value, withheld = b"", f"raw bytes withheld (pseudonymisation on, {why})"
            headers_in, dropped = _protocol_headers(record.headers)
            if dropped:  # a producer's own header (a "vin") is not ours to scrub
                note = f"{dropped} other header(s) withheld"
                withheld = f"{withheld}; {note}" if withheld else note
        # Null key and value, null header values or > 4.5 MB would make send() raise
        # and the consumer crash-loop on this record; the copy is always producible.
        key, value, headers, altered = dead_letter_copy(key, value, headers_in)
        future = self._send(
            record, record.offset, exc.reason, detail, (key, value, headers),
            notes=(withheld, altered),
        )  # fmt: skip
        self._unacknowledged.append((exc.reason, 0))
        return future

    def unreadable(self, record: UnreadableRecord):
        """A record, or span of records, the Kafka record format could not describe:
        its raw bytes to the DLQ, with where it was and why."""
        p = record.problem
        first, last = record.offset, p.last_offset
        self._log_unreadable(record)
        key, value, detail = record.key, record.value, p.detail.encode("utf-8", "replace")
        withheld = ""
        if self.privacy_key is not None:
            # the raw bytes of a span the record format could not describe run to the end
            # of its batch: other vehicles' keys and headers too, which no key says how to
            # scrub. None leave; the source offsets say where they are.
            if key:
                key = scrub(self.privacy_key, record.key, None)[0]
                detail = scrub(self.privacy_key, record.key, detail)[1]
            value, withheld = b"", "raw bytes withheld (pseudonymisation on, unreadable bytes)"
        key, value, headers, altered = dead_letter_copy(key, value, [])
        future = self._send(
            record, first, p.reason, detail[:500], (key, value, headers),
            extra=[("source-offsets", f"{first}-{last}".encode())], notes=(withheld, altered),
        )  # fmt: skip
        self._unacknowledged.append((p.reason, p.records(first)))
        return future

    def _send(
        self, record, offset: int, reason: str, detail: bytes, copy: tuple, extra=(), notes=()
    ):
        """Send ``copy`` (key, value, headers from ``dead_letter_copy``) to the DLQ with
        why (``reason``, ``detail``), where (``offset`` of ``record``'s partition) and
        what was changed in it (``notes``)."""
        key, value, headers = copy
        headers = [
            *headers,
            ("error", reason.encode()),
            ("error-detail", detail),
            ("source", f"{record.topic}/{record.partition}/{offset}".encode()),
            *extra,
        ]
        altered = "; ".join(n for n in notes if n)
        if altered:
            headers.append(("error-altered", altered.encode()))
        return self.send(self.topic, key, value, headers)

    def _log_unreadable(self, record: UnreadableRecord) -> None:
        """One line now and then (a flood of them would flood the log too)."""
        p = record.problem
        self._unreadable_seen[p.reason] += p.records(record.offset)
        now = time.monotonic()
        if now - self._unreadable_logged < UNREADABLE_LOG_S:
            return
        self._unreadable_logged = now
        counts = ", ".join(f"{n} {r}" for r, n in sorted(self._unreadable_seen.items()))
        self._unreadable_seen.clear()
        log.warning(
            "unreadable Kafka records (%s), dead-lettered to %s; latest: partition %d offsets "
            "%d-%d: %s",
            counts,
            self.topic,
            record.partition,
            record.offset,
            p.last_offset,
            p.detail,
        )
