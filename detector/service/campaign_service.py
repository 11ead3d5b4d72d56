"""``canwatch campaigns``: incident records in, campaign records out.

Reads every partition of the incident topic (``kafka.incident_topic``), whichever
``canwatch detect`` instance wrote them, folds them into campaigns
(``detector.incidents.campaigns``) and writes campaign records to
``kafka.campaign_topic`` (key = campaign id).

Why every partition in one instance: incidents are keyed by vehicle, so one
campaign's incidents lie on several partitions; a reader of only some would see
part of each campaign. The service therefore assigns itself all of them (and
any added later) instead of joining a group that would split them. Its group
id (``campaigns.group_id``) only keeps its committed offsets. A second instance
is a hot standby: it reads the same records and writes the same campaign
records under the same ids (consumers of the campaign topic keep the last
record per id, as they must anyway: delivery is at least once).

One step: poll; hold each record in ``EventTimeOrder``; release what the
watermark has passed (every partition still behind its end has been read
``campaigns.lateness_s`` past it; or, once every partition is read to its end
and nothing new came for ``lateness_s``, everything); fold the released
records in event-time order; advance the correlator's clock (while the topic
is quiet, event time runs on from the newest record at wall-clock speed and
closes campaigns, without moving the clock that judges records stale:
``Correlator.close_quiet``); send the campaign records, wait for the broker to acknowledge
them, and only then commit offsets, each partition's no further than the
oldest record the held records, the incidents still active and the open
campaigns were built from. A restart, or a rewind after a Kafka error, reads
from there and rebuilds the same campaigns under the same ids (records are sent
again: at least once).
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections import Counter

from kafka import TopicPartition
from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from detector.core.config import Config
from detector.core.errors import CanwatchError
from detector.incidents.campaigns import (
    BadIncident,
    Correlator,
    EventTimeOrder,
    sightings,
    watermark,
)
from detector.service.broker_contact import step_until
from detector.service.metrics.campaigns import CampaignMetrics
from detector.transport.kafka_io import (
    discard_producer,
    end_offsets,
    make_consumer,
    make_producer,
)

log = logging.getLogger("canwatch.campaigns")
ACK_WAIT_S = 10.0  # for the broker to acknowledge a step's campaign records
COMMIT_TIMEOUT_MS = 2000
LIST_OFFSETS_TIMEOUT_MS = 2000
PARTITIONS_CHECK_S = 30.0  # look for partitions added to the incident topic this often
MIN_QUIET_S = 1.0  # quiet at least this long before releasing everything (lateness_s 0)
MAX_BACKOFF_S = 30.0
WAIT_LOG_S = 10.0  # repeat "waiting for topic" this often
CLIENT_OVERRIDES = {"reconnect_backoff_max_ms": 1000}
PRODUCER_OVERRIDES = {**CLIENT_OVERRIDES, "max_block_ms": 5000}
HEADERS = [("content-type", b"application/json"), ("schema", b"1")]


def open_by_attack(open_campaigns: dict) -> dict[tuple[str, str], tuple[int, int]]:
    """(brand, attack) -> (open campaigns, distinct vehicles in them): a vehicle in two
    campaigns of one attack (two CAN ids) is one vehicle."""
    now: Counter = Counter()
    vehicles: dict[tuple[str, str], set[str]] = {}
    for (brand, attack, _), camp in open_campaigns.items():
        now[brand, attack] += 1
        vehicles.setdefault((brand, attack), set()).update(camp.vehicles)
    return {k: (now[k], len(vehicles[k])) for k in now}


class CampaignService:
    def __init__(self, cfg: Config, metrics: CampaignMetrics) -> None:
        self.cfg = cfg
        self.metrics = metrics
        self.topic = cfg.kafka.incident_topic
        self.consumer = None
        self.producer = None
        self.partitions: list[TopicPartition] = []
        self.committed: dict[TopicPartition, int] = {}  # the offsets last committed
        self.resume_at: dict[TopicPartition, int] = {}  # where a rewind seeks back to
        self._checked = -math.inf  # last look for the topic's partitions
        self._waiting_logged = -math.inf
        self._last_commit = 0.0
        self._failures = 0
        self._stop = threading.Event()
        self._reset()

    def _reset(self) -> None:
        """No campaign state: what a restart starts from."""
        self.order = EventTimeOrder()
        self.correlator = Correlator(self.cfg.campaigns)
        self.last_record_at = time.monotonic()
        #: every partition read to its end, nothing held back (for the demo and tests)
        self.settled = False
        self.metrics.set_open({})

    # -- lifecycle ---------------------------------------------------------------------

    def start(self) -> None:
        self.consumer = make_consumer(
            self.cfg.kafka, [], self.cfg.campaigns.group_id, **CLIENT_OVERRIDES
        )
        self.producer = make_producer(self.cfg.kafka, **PRODUCER_OVERRIDES)
        self.metrics.set_up(True)

    def run(self, stop: threading.Event) -> None:
        """Step until ``stop`` is set; Kafka errors rewind, never end the loop."""
        self._stop = stop
        self.start()
        try:
            step_until(stop, self.step, self._rewind)
        finally:
            self.close()

    def close(self) -> None:
        try:
            if self.consumer is not None:
                if self.partitions and self.producer is not None:
                    self._commit(final=True)
                self.consumer.close(autocommit=False)
            if self.producer is not None:
                self.producer.close(timeout=5)
        finally:
            self.metrics.set_up(False)
            self.metrics.set_ready(False)

    # -- one step ----------------------------------------------------------------------

    def step(self, timeout_ms: int = 200) -> int:
        """Poll, fold what the watermark released, publish, commit. Records read."""
        if self.producer is None and not self._reopen():
            self._stop.wait(1.0)
            return 0
        if not self._assign():
            self._stop.wait(timeout_ms / 1000)
            return 0
        polled = self.consumer.poll(
            timeout_ms=timeout_ms, max_records=self.cfg.kafka.max_poll_records
        )
        n = self._take(polled)
        events = self._fold(self._behind())
        self._publish(events)
        self.metrics.set_ready(True)
        self._failures = 0
        self._commit()
        return n

    def _assign(self) -> bool:
        """Every partition of the incident topic assigned (new ones too); False while
        the topic does not exist."""
        now = time.monotonic()
        if self.partitions and now - self._checked < PARTITIONS_CHECK_S:
            return True
        self._checked = now
        found = self.consumer.partitions_for_topic(self.topic)
        if not found:
            if not self.partitions:
                self.metrics.set_ready(False)
                if now - self._waiting_logged >= WAIT_LOG_S:
                    self._waiting_logged = now
                    log.info("waiting for topic %s on %s", self.topic, self.cfg.kafka.bootstrap)
                self._checked = now - PARTITIONS_CHECK_S + 1.0  # look again in a second
            return bool(self.partitions)
        tps = [TopicPartition(self.topic, p) for p in sorted(found)]
        if tps != self.partitions:
            kept = {tp: self.consumer.position(tp) for tp in self.partitions}
            self.consumer.assign(tps)
            for tp, offset in kept.items():
                self.consumer.seek(tp, offset)
            for tp in tps:
                if tp not in kept:  # the committed offset, or the topic's start
                    self.resume_at[tp] = self.consumer.position(tp)
            log.info(
                "reading %d partitions of %s from offsets %s",
                len(tps),
                self.topic,
                {tp.partition: self.resume_at[tp] for tp in tps},
            )
            self.partitions = tps
        return True

    def _take(self, polled: dict) -> int:
        """Hold each record's sighting; skip (log, count) what is not an incident."""
        n = 0
        future = time.time() + self.cfg.detection.max_future_s
        for tp, records in polled.items():
            for r in records:
                n += 1
                try:
                    seen = sightings(json.loads(r.value), tp.partition, r.offset)
                    if seen[0].last_seen > future:
                        last = seen[0].last_seen
                        raise BadIncident("bad_shape", f"last_seen {last} is in the future")
                except (ValueError, TypeError) as exc:  # JSON, UTF-8, BadIncident
                    reason = exc.reason if isinstance(exc, BadIncident) else "bad_json"
                    self.metrics.skip(reason)
                    log.warning(
                        "skipping %s partition %d offset %d: not an incident (%s)",
                        self.topic, tp.partition, r.offset, exc,
                    )  # fmt: skip
                    continue
                for s in seen:
                    self.order.add(s)
        if n:
            self.metrics.consumed.inc(n)
            self.last_record_at = time.monotonic()
        return n

    def _behind(self) -> set[int]:
        """Partitions not yet read to their end."""
        ends = end_offsets(self.consumer, self.partitions, timeout_ms=LIST_OFFSETS_TIMEOUT_MS)
        return {tp.partition for tp in self.partitions if self.consumer.position(tp) < ends[tp]}

    def _fold(self, behind: set[int]) -> list[dict]:
        """Release what the watermark passed, fold it, advance the clock: the records."""
        lateness = self.cfg.campaigns.lateness_s
        quiet_s = time.monotonic() - self.last_record_at
        quiet = not behind and quiet_s >= max(lateness, MIN_QUIET_S)
        upto = math.inf if quiet else watermark(self.order.high, behind, lateness)
        events: list[dict] = []
        record = None
        for s in self.order.release(upto):
            folded, fate = self.correlator.observe(s)
            events += folded
            # a record's sightings (one per attack it shows) come out together: its fate
            # is its first one's, counted once
            if (s.partition, s.offset) == record:
                continue
            record = (s.partition, s.offset)
            if fate == "stale":
                self.metrics.skip("stale")
            elif fate == "late":
                self.metrics.late.inc()
        if quiet:  # event time runs on from the newest record at wall-clock speed
            events += self.correlator.close_quiet(self.order.newest + quiet_s - lateness)
        else:
            events += self.correlator.advance(upto)
        self.settled = quiet and not len(self.order)
        return events

    def _publish(self, events: list[dict]) -> None:
        """Send, wait for every acknowledgement (or raise), then count them."""
        if not events:
            return
        topic = self.cfg.kafka.campaign_topic
        futures = [
            self.producer.send(
                topic,
                key=ev["campaign_id"].encode(),
                value=json.dumps(ev, separators=(",", ":")).encode(),
                headers=HEADERS,
            )
            for ev in events
        ]
        self.producer.flush(timeout=ACK_WAIT_S)
        failed = [f for f in futures if not f.succeeded()]
        if failed:
            raise KafkaError(
                f"{len(failed)} of {len(futures)} campaign records not acknowledged "
                f"({failed[0].exception!r})"
            )
        for ev in events:
            if ev["status"] != "update":
                log.info(
                    "campaign %s %s: %s on %s, %d vehicles of %s",
                    ev["campaign_id"], ev["status"], ev["suspected_attack"], ev["can_id"],
                    ev["vehicle_count"], ev["brand"],
                )  # fmt: skip
            if ev["status"] == "open" and not ev.get("reopened"):  # one campaign, counted once
                self.metrics.campaign_opened(ev["brand"], ev["suspected_attack"])
        self.metrics.set_open(open_by_attack(self.correlator.open))

    # -- offsets -----------------------------------------------------------------------

    def safe_offsets(self) -> dict[TopicPartition, int]:
        """Per partition, where a restart must read from to rebuild the same state."""
        held, kept = self.order.held_offsets(), self.correlator.held_offsets()
        out = {}
        for tp in self.partitions:
            need = [self.consumer.position(tp)]
            need += [d[tp.partition] for d in (held, kept) if tp.partition in d]
            out[tp] = min(need)
        return out

    def _commit(self, final: bool = False) -> None:
        due = time.monotonic() - self._last_commit >= self.cfg.kafka.commit_interval_s
        if not (final or due):
            return
        safe = self.safe_offsets()
        if safe == {tp: self.committed.get(tp) for tp in safe}:
            return
        self._last_commit = time.monotonic()
        try:
            offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in safe.items()}
            self.consumer.commit(offsets, timeout_ms=COMMIT_TIMEOUT_MS)
        except KafkaError as exc:  # retried at the next interval
            log.warning("offset commit to %s failed (%r)", self.cfg.kafka.bootstrap, exc)
            return
        self.committed.update(safe)
        self.resume_at.update(safe)

    # -- faults ------------------------------------------------------------------------

    def _reopen(self) -> bool:
        try:
            self.producer = make_producer(
                self.cfg.kafka, bootstrap_timeout_ms=5000, **PRODUCER_OVERRIDES
            )
        except (KafkaError, CanwatchError) as exc:
            log.warning("cannot create a Kafka producer yet: %s", exc)
            return False
        return True

    def _rewind(self, why: str) -> None:
        """What a restart would do, without exiting: drop the state, seek back to the
        committed offsets, take a fresh producer; back off before the next step."""
        self._failures += 1
        delay = min(2.0 ** (self._failures - 1), MAX_BACKOFF_S)
        log.warning(
            "%s; re-reading %s from the last committed offsets in %.0f s", why, self.topic, delay
        )
        self.metrics.set_ready(False)
        self._reset()
        producer, self.producer = self.producer, None
        if producer is not None:
            discard_producer(producer)
        for tp in self.partitions:
            self.consumer.seek(tp, self.resume_at[tp])
        self._stop.wait(delay)
