"""What the detector sends, until the broker has it: the producer, incidents, and
the one poll's output awaiting acknowledgement.

A poll's incidents and dead letters are one ``Delivery``; its offsets are
committed only once every one of them is acknowledged. If the producer gives up
on some (delivery timeout, a broker that no longer knows our producer id), the
loop rewinds and this outbox takes a fresh producer (a new producer id),
retried every ``PRODUCER_RETRY_S`` while Kafka refuses one. The first producer,
at start, is waited for up to ``kafka.connect_timeout_s``: one attempt every few
seconds, one log line each, then the one-line error.

Kept apart from the loop so that the producer's life (created, replaced, closed
without blocking) and the bookkeeping of acknowledgements sit in one place.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field

from kafka.errors import KafkaError

from detector.core.config import KafkaConfig
from detector.core.errors import CanwatchError
from detector.transport.kafka_io import KafkaConnectError, discard_producer, make_producer

log = logging.getLogger("canwatch.detect")
#: Reconnect within a second of the broker coming back (kafka-python backs off
#: exponentially up to 30 s by default); never block a send for a minute on
#: missing metadata (max_block_ms): fail it and rewind instead.
PRODUCER_OVERRIDES = {"reconnect_backoff_max_ms": 1000, "max_block_ms": 5000}
PRODUCER_BOOTSTRAP_MS = 5000  # a replacement producer: give up (and retry) after this
PRODUCER_RETRY_S = 2.0  # between attempts at a replacement producer
CONNECT_ATTEMPT_S = 5.0  # at start: how long one attempt waits for the broker, at most


@dataclass
class Delivery:
    """One poll's incidents and dead letters, sent, until the broker acknowledges them."""

    futures: list
    since: float  # monotonic time they were sent
    t_sent: float  # perf_counter, for the produce stage histogram
    summary: dict  # the poll line of the audit file
    windows: list[str] = field(default_factory=list)  # window lines of the audit file

    def acknowledged(self) -> bool:
        # succeeded, not done: a send the producer gives up on between two checks (its
        # IO thread) is done too, and must not pass for an acknowledgement
        return all(f.succeeded() for f in self.futures)


class Outbox:
    def __init__(self, kafka: KafkaConfig) -> None:
        self.kafka = kafka
        self.producer = None
        self.in_flight: Delivery | None = None  # a poll's output awaiting the broker's acks
        self._last_try = 0.0

    def open(self) -> None:
        """The first producer. While no broker answers, try again until
        kafka.connect_timeout_s has passed, logging each retry; then raise
        KafkaConnectError, which says why (refused, TLS, SASL...)."""
        wait_s = self.kafka.connect_timeout_s
        deadline = time.monotonic() + wait_s
        # a few attempts however short the wait: each failed one is a line of the log
        attempt_s = min(CONNECT_ATTEMPT_S, max(wait_s / 5, 0.5))
        while True:
            ms = int(1000 * min(attempt_s, max(deadline - time.monotonic(), 0.5)))
            try:
                self.producer = make_producer(
                    self.kafka, bootstrap_timeout_ms=ms, **PRODUCER_OVERRIDES
                )
                return
            except KafkaConnectError as exc:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise
                log.warning(
                    "%s; trying again (giving up in %.1f s, kafka.connect_timeout_s)", exc, left
                )
                time.sleep(min(PRODUCER_RETRY_S / 4, left))  # a refusal can come at once

    def reopen(self) -> bool:
        """A fresh producer (after a rewind or an outage); False while Kafka refuses one."""
        now = time.monotonic()
        if now - self._last_try < PRODUCER_RETRY_S:
            return False
        self._last_try = now
        try:
            self.producer = make_producer(
                self.kafka, bootstrap_timeout_ms=PRODUCER_BOOTSTRAP_MS, **PRODUCER_OVERRIDES
            )
        except (KafkaError, CanwatchError) as exc:
            log.warning("cannot create a Kafka producer yet: %s", exc)
            return False
        return True

    def drop_producer(self) -> None:
        """Close the producer without waiting: anything it still holds is re-sent after
        a rewind."""
        producer, self.producer = self.producer, None
        if producer is not None:
            discard_producer(producer)

    def send(self, topic: str, key: bytes | None, value: bytes | None, headers: list):
        return self.producer.send(topic, key=key, value=value, headers=headers)

    def send_incident(self, event: dict):
        return self.send(
            self.kafka.incident_topic,
            event["vehicle"].encode(),
            json.dumps(event, separators=(",", ":")).encode(),
            [("content-type", b"application/json"), ("schema", b"1")],
        )

    def dispatched(self, futures: list, t_sent: float, summary: dict, windows: list[str]) -> None:
        """A poll's sends: held until ``wait`` finds them all acknowledged."""
        self.in_flight = Delivery(futures, time.monotonic(), t_sent, summary, windows)

    def wait(self, wait_s: float) -> list:
        """Wait up to ``wait_s`` for the poll in flight; its sends the producer gave up on."""
        d = self.in_flight
        if not d.acknowledged():
            try:
                self.producer.flush(timeout=wait_s)
            except KafkaError:  # KafkaTimeoutError: not yet
                pass
        return [f for f in d.futures if f.failed()]

    def close(self, timeout_s: float) -> None:
        if self.producer is not None:
            self.producer.close(timeout=timeout_s)
