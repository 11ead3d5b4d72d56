"""Is the broker there, and are we still a member of its group?

The detector is ready only while the broker has been heard from within
``UNREACHABLE_S``: acknowledgements, commits, group heartbeats, or, when none
came for ``PROBE_S``, a bounded ListOffsets probe. Records are no proof:
kafka-python may serve them from its fetch buffer. While it is away, one line
says what the detector waits for every ``WAIT_LOG_S``; it never exits because
Kafka is away.

When the broker is back, consumption waits until the group coordinator confirms
the membership (a heartbeat answered, or a new assignment): after a long outage
the group may have evicted this instance and handed its partitions to another.

Kept apart from the loop because it only reads clocks and kafka-python's state
and decides; what to do about it (close the producer, pause) is the loop's.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from kafka.errors import KafkaError

from detector.core.config import KafkaConfig
from detector.transport.kafka_io import end_offsets

if TYPE_CHECKING:
    from detector.service.outbox import Delivery

log = logging.getLogger("canwatch.detect")
UNREACHABLE_S = 5.0  # no word from the broker for this long: not ready
PROBE_S = 2.0  # no word from the broker for this long: ask it (ListOffsets)
PROBE_TIMEOUT_MS = 1000
WAIT_LOG_S = 10.0  # repeat the "waiting for Kafka" line this often


def heartbeat_received(consumer) -> float | None:
    """Monotonic time of the group coordinator's last heartbeat answer (kafka-python
    internals, read defensively: None when unavailable)."""
    hb = getattr(getattr(consumer, "_coordinator", None), "heartbeat", None)
    t = getattr(hb, "last_receive", None)
    return t if isinstance(t, float) and math.isfinite(t) else None


class BrokerContact:
    def __init__(self, kafka: KafkaConfig) -> None:
        self.kafka = kafka
        self.last_contact = time.monotonic()  # the broker's last sign of life
        self.last_probe = 0.0
        self.unreachable_since: float | None = None
        self.last_wait_log = 0.0
        self.probe_partitions: list = []  # the last assigned partitions
        self.confirm_since: float | None = None  # back from an outage: membership unconfirmed

    def heard(self) -> None:
        self.last_contact = time.monotonic()

    def member(self) -> None:
        """A fresh assignment: the group coordinator knows us."""
        self.confirm_since = None

    def check(self, consumer, delivery: Delivery | None) -> tuple[bool, bool]:
        """(healthy, back): heard from within UNREACHABLE_S with no poll unacknowledged
        for longer; ``back`` when it is so again after an outage. Logs the waiting
        line while not healthy, and the return."""
        now = time.monotonic()
        hb = heartbeat_received(consumer)
        if hb is not None and hb > self.last_contact:
            self.last_contact = hb
        silent = now - self.last_contact
        d = delivery
        stuck = d is not None and now - d.since > UNREACHABLE_S
        healthy = silent <= UNREACHABLE_S and not stuck
        back = False
        if not healthy:
            if self.unreachable_since is None:  # since its last sign of life
                self.unreachable_since = min(self.last_contact, d.since if stuck else now)
            if now - self.last_wait_log >= WAIT_LOG_S:
                self.last_wait_log = now
                log.warning("%s", self._waiting_for(delivery, silent, now))
        elif self.unreachable_since is not None:
            log.info(
                "Kafka broker %s is back after %.1f s; consuming again once the group confirms "
                "our membership",
                self.kafka.bootstrap,
                now - self.unreachable_since,
            )
            self.unreachable_since = None
            self.last_wait_log = 0.0
            self.confirm_since = now
            back = True
        return healthy, back

    def membership_confirmed(self, consumer) -> bool:
        """After an outage: has the group coordinator confirmed we are still a member
        (a heartbeat answered since, or a new assignment)? Until then the partitions
        stay paused: if the group evicted us meanwhile, another member may own them,
        and a broker that lost its log would hand us a new log at our old positions.
        Bounded by the session timeout, past which an eviction would have shown."""
        since = self.confirm_since
        if since is None:
            return True
        hb = heartbeat_received(consumer)
        waited = time.monotonic() - since
        limit = (self.kafka.session_timeout_ms + self.kafka.heartbeat_interval_ms) / 1000
        if (hb is not None and hb > since) or waited > limit:
            self.confirm_since = None
            return True
        return False

    def probe_if_due(self, consumer, now: float) -> None:
        if now - self.last_contact >= PROBE_S and now - self.last_probe >= PROBE_S:
            self._probe(consumer, now)

    def _probe(self, consumer, now: float) -> None:
        """ListOffsets of the assigned partitions (or, while rejoining, of the last
        assigned ones), bounded by PROBE_TIMEOUT_MS: a sign of life from the broker
        when nothing else gave one. (Consumer lag is the watchdog's: it must show
        even when this loop does not come round.)"""
        assigned = list(consumer.assignment())
        if assigned:
            self.probe_partitions = assigned
        if not self.probe_partitions:
            return
        self.last_probe = now
        try:
            end_offsets(consumer, self.probe_partitions, PROBE_TIMEOUT_MS)
        except KafkaError as exc:
            log.debug("Kafka %s did not answer ListOffsets: %r", self.kafka.bootstrap, exc)
            return
        self.heard()

    def _waiting_for(self, d: Delivery | None, silent: float, now: float) -> str:
        what = f"waiting for Kafka broker {self.kafka.bootstrap}"
        if silent > UNREACHABLE_S:
            what += f" (unreachable for {silent:.0f} s)"
        if d is not None:
            missing = sum(not f.is_done for f in d.futures)
            what += (
                f"; {missing} of {len(d.futures)} incidents/dead letters unacknowledged "
                f"for {now - d.since:.0f} s, consumption paused"
            )
        return what + "; not committing"


def step_until(stop: threading.Event, step: Callable[[], object], rewind: Callable[[str], None]) -> None:
    """Call ``step`` until ``stop`` is set. A Kafka error never ends a service's loop:
    it is handed to ``rewind`` (which re-reads from the last safe point) and the loop
    goes on. Shared by ``canwatch detect`` and ``canwatch campaigns``."""
    while not stop.is_set():
        try:
            step()
        except KafkaError as exc:
            rewind(f"Kafka error: {exc!r}")
