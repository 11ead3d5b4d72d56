"""The long-running detector: Kafka in, incidents and metrics out.

One poll is one unit of work: decode (bad records → DLQ), score, fold into
incidents, publish incidents and dead letters, wait for the broker to
acknowledge them, and only then commit offsets, up to the oldest record a
restart needs to re-form every open window and open incident under the same
deterministic ids (at-least-once; see ``offset_ledger``).

``Detector.step`` is the loop; it only calls its parts, each a module here:

- ``polling``: a poll and the batch gathered after it; holding the group while waiting;
- ``intake``: records into batches to score, dead letters for the rest;
- ``dead_letters``: what a dead letter carries, and its metric;
- ``incident_feed``: scored windows into incident events, both counted;
- ``outbox``: the producer, and a poll's sends until the broker acknowledges them;
- ``audit_log``: the ``windows_out`` file, fsync'd before each commit;
- ``offset_ledger``: how far a commit may go; ``commits``: when it goes;
- ``rebalance``: partitions moving, whose state is kept or dropped;
- ``model_reload``: new model versions, warmed up or refused, promoted or rolled back;
- ``shadow``: a candidate version scoring beside the serving one, never published;
- ``drift``: how far each brand's traffic moved from what its serving model learned;
- ``activity``: vehicles active, and those gone quiet to retire;
- ``vehicle_state``: a vehicle's state across the parts, let go as one;
- ``broker_contact``: the broker's signs of life and the group membership.

Faults (each proved by tests/test_faults.py):

- Process killed (kill -9, OOM, node loss): the restart, or the group member
  that takes the partitions over, resumes from the committed offsets above.
- Broker slow or unreachable: a poll's incidents and dead letters not
  acknowledged within ``ACK_WAIT_S`` pause consumption (the paused partitions
  are still polled, so the instance stays in its group) and nothing is
  committed until they are. If the producer gives up on them (delivery
  timeout, or a broker that no longer knows our producer id), the detector
  *rewinds*: it drops its partitions' state and seeks back to the offsets of
  the last acknowledged poll — what a restart would do, without exiting — with
  a fresh producer, backing off exponentially. Offset commits are bounded
  (``COMMIT_TIMEOUT_MS``); a failed commit is retried with the next batch.
- ``canwatch_ready`` is 1 only with models loaded, partitions assigned, the
  broker heard from and no poll unacknowledged for ``UNREACHABLE_S``, and the
  watchdog (``detector.service.watchdog``, a thread of its own) seeing no
  stall. While it is 0 the detector says every ``WAIT_LOG_S`` s what it waits
  for; it never exits because Kafka is away. On the broker's return the
  producer is replaced, and consumption resumes once the group confirms the
  membership (``broker_contact``).
- Consumer lag and event-time lag are the watchdog's, computed outside the loop
  they judge (a stalled loop shows as growing lag, not as the last figures).
- A record the Kafka record format cannot describe is dead-lettered with its
  offsets and reason, like one canwatch cannot decode (``dead_letters``).
- Poll loop stalled (records waiting and the position not advancing, or the loop
  not coming round, for ``watchdog.stall_s``): not ready, one log line naming
  the partitions; after ``watchdog.exit_s`` without progress, ``on_stall``
  (``canwatch detect`` exits 3 so that its supervisor restarts it). A broker
  that does not answer is an outage, not a stall.
- Stop: ``close`` spends at most ``watchdog.shutdown_timeout_s`` minus
  ``STOP_MARGIN_S`` on acknowledgements, the final commit (of acknowledged polls
  only) and closing the clients; ``canwatch detect`` exits at the deadline
  whatever the clients are doing.
- ``windows_out``: every window and poll, fsync'd *before* that poll's offsets
  are committed (``audit_log``).

A broker that keeps its log (any real Kafka) loses nothing in an outage: what
was not acknowledged is held or re-read, what was not committed is re-read. A
memory-only broker (the embedded Tansu) that restarts comes back empty. Lost
with it: records produced before the outage and not yet processed, incidents
and dead letters not yet read from its topics, incidents of a poll it had not
acknowledged when it went down (their records are gone too), the topics
themselves (create them again, or producers auto-create them with the broker's
default partition count) and the group's committed offsets. The detector
notices that its group membership is gone, rejoins, and reads the new log from
its start (``auto_offset_reset=earliest``); records it fetched from the new log
before noticing are read again. Its per-vehicle state goes with the lost
partitions, so each vehicle's first window after the outage is partial and
unscored, and an attack still under way re-opens as a new incident (new id).
"""

from __future__ import annotations

import gc
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

from kafka.errors import KafkaError

from detector.core.brands import Fleet
from detector.core.config import Config
from detector.incidents.privacy import load_key
from detector.incidents.tracker import IncidentTracker
from detector.model.pipeline import CLOCK_RESET_S, ScoredRows, Scorer, Shed
from detector.service import polling
from detector.service.activity import Activity
from detector.service.audit_log import AuditLog, poll_summary
from detector.service.broker_contact import BrokerContact, step_until
from detector.service.commits import COMMIT_TIMEOUT_MS, Commits
from detector.service.dead_letters import DeadLetters
from detector.service.drift import DriftMeter
from detector.service.incident_feed import IncidentFeed, kafka_locator
from detector.service.intake import Intake
from detector.service.metrics import DetectorMetrics
from detector.service.model_reload import ModelReload
from detector.service.offset_ledger import OffsetLedger
from detector.service.outbox import Outbox
from detector.service.rebalance import Rebalance
from detector.service.shadow import ShadowScoring
from detector.service.vehicle_state import VehicleState
from detector.service.watchdog import Health, LoopState, Watchdog
from detector.transport import wire
from detector.transport.kafka_io import make_consumer
from detector.transport.kafka_records import parse_batches_compiled

log = logging.getLogger("canwatch.detect")
ACK_WAIT_S = 2.0  # wait this long for a poll's acks before pausing consumption
HOLD_POLL_MS = 100  # poll of the paused partitions while acks are outstanding
CLOSE_WAIT_S = 5.0  # on stop: wait this long for outstanding acks
#: On stop, ``close`` gets watchdog.shutdown_timeout_s minus this: the batch under
#: way when the signal came, and the process exit, need time too.
STOP_MARGIN_S = 3.0
MAX_BACKOFF_S = 30.0  # between rewinds when deliveries keep failing
#: Reconnect within a second of the broker coming back (kafka-python backs off
#: exponentially up to 30 s by default).
CONSUMER_OVERRIDES = {"reconnect_backoff_max_ms": 1000}


def default_detector_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


def _part(part: str, name: str) -> property:
    """A read-only view of ``name`` in the detector's ``part``."""
    return property(lambda self: getattr(getattr(self, part), name))


class Detector:
    def __init__(
        self,
        cfg: Config,
        fleet: Fleet,
        metrics: DetectorMetrics,
        detector_id: str | None = None,
        *,
        windows_out: Path | str | None = None,
        freeze_heap: bool = False,
        on_stall: Callable[[str], None] | None = None,
    ) -> None:
        self.cfg = cfg
        # After start-up, move what it allocated (modules, models, clients) out of
        # the cyclic GC's reach: a full collection otherwise walks all of it (~80 ms
        # in the middle of a poll). For a process that is only a detector (the CLI).
        self.freeze_heap = freeze_heap
        self.fleet = fleet
        self.metrics = metrics
        self.detector_id = detector_id or default_detector_id()
        self.window_s = cfg.detection.window_s
        self.scorer = Scorer({}, fleet, self.window_s, cfg.limits)
        self.shadow = ShadowScoring(
            self.scorer, fleet, self.window_s, cfg.incidents, self.detector_id, metrics,
            cfg.models.dir,
        )  # fmt: skip
        self.models = ModelReload(
            cfg.models, fleet, self.scorer, metrics, self.window_s, self._refreeze, self.shadow
        )
        self.registry = self.models.registry
        self.drift = DriftMeter(cfg.models, self.scorer.models, metrics.drift)  # serving rows
        metrics.set_state_limits(cfg.limits.max_vehicles, cfg.limits.max_streams)
        self.tracker = IncidentTracker(cfg.incidents, self.detector_id)
        self.ledger = OffsetLedger()  # also where incidents' frames are (provenance)
        locate = kafka_locator(self.ledger, cfg.kafka.telemetry_topic)
        self.incident_feed = IncidentFeed(self.tracker, metrics, self.window_s, locate)
        self.privacy_key = load_key(cfg.privacy)  # validated before anything connects
        self.commits = Commits(cfg.kafka)
        self.contact = BrokerContact(cfg.kafka)
        self.outbox = Outbox(cfg.kafka)
        self.dead_letters = DeadLetters(
            cfg.kafka.dlq_topic, self.privacy_key, metrics, self.outbox.send
        )
        self.activity = Activity(metrics)
        self.vehicles = VehicleState(
            self.scorer, self.tracker, self.incident_feed, self.ledger, self.activity,
            metrics, self.window_s, self.shadow,
        )  # fmt: skip
        self.intake = Intake(
            cfg.detection, self.scorer, self.models.known_brands, self.privacy_key,
            self.dead_letters, self.ledger, self.activity, metrics,
        )  # fmt: skip
        self.audit = AuditLog(windows_out, self.detector_id, self.window_s)
        self.rebalance = Rebalance(self.ledger, self._forget, self.contact, metrics)
        self.consumer = None
        self._failures = 0  # consecutive rewinds (back-off)
        self._stop = threading.Event()  # run()'s; interrupts back-off sleeps
        # Health judged outside the loop (detector.service.watchdog): the loop publishes its
        # last round (beat), its claim of readiness and the newest event time read.
        self.health = Health(metrics)
        self.beat = time.monotonic()
        self._watchdog: Watchdog | None = None
        # After watchdog.exit_s without progress; in-process the detector stops itself
        # (which a loop stuck inside kafka-python cannot do: the CLI exits instead).
        self.on_stall = on_stall

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        wire.warm_up()
        # Records built by canwatch's own pass, which reads any batch without raising
        # (kafka-python's raises, then loops forever in the next poll); process-wide.
        parse_batches_compiled()
        self.models.load()
        self.audit.open()  # before connecting: a bad path fails at once
        self.outbox.open()
        self.consumer = make_consumer(
            self.cfg.kafka, [], self.cfg.kafka.group_id, **CONSUMER_OVERRIDES
        )
        self.rebalance.subscribe(self.consumer, self.cfg.kafka.telemetry_topic)
        self.contact.heard()
        self.metrics.set_up(True)
        self.beat = time.monotonic()
        self._watchdog = Watchdog(
            self.cfg, self.metrics, self.health, self.loop_state, self._stalled_too_long
        )
        self._watchdog.start()
        if self.freeze_heap:
            self._freeze()

    def _refreeze(self) -> None:
        if self.freeze_heap and self.consumer is not None:
            self._freeze()  # a reload after start-up: the old model is collected first

    def _freeze(self) -> None:
        """Collect what is garbage now, then freeze the rest (see ``freeze_heap``)."""
        gc.unfreeze()
        gc.collect()
        gc.freeze()

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; then finish the batch, flush, commit, close.

        Kafka errors never end the loop: the detector rewinds (see ``_rewind``)
        and tries again.
        """
        self._stop = stop
        self.start()
        try:
            step_until(stop, self.step, self._rewind)
        finally:
            self.close(self.cfg.watchdog.shutdown_timeout_s - STOP_MARGIN_S)

    def loop_state(self) -> LoopState:
        """What the watchdog judges (called on its thread): the loop's last round, its
        own readiness, and the consumer's fetch positions from kafka-python's
        subscription state (read, never asked of the client, which the loop may hold)."""
        positions = polling.positions(self.consumer, self.ledger.next_offset)
        return LoopState(self.beat, positions, dict(self.intake.newest))

    def _stalled_too_long(self, why: str) -> None:
        if self.on_stall is not None:
            self.on_stall(why)
        else:
            self._stop.set()

    def close(self, budget_s: float = CLOSE_WAIT_S + 2 * COMMIT_TIMEOUT_MS / 1000) -> None:
        """Acknowledgements, the final commit (of acknowledged polls only), clients
        closed: within ``budget_s`` as far as kafka-python's timeouts allow."""
        deadline = time.monotonic() + max(budget_s, 1.0)

        def left(cap: float) -> float:
            return max(min(cap, deadline - time.monotonic()), 0.1)

        self.commits.retry_after = 0.0  # last chance: no back-off
        if self._watchdog is not None:
            self._watchdog.stop(left(1.0))
            self._watchdog = None
        try:
            if self.consumer is not None:
                d = self.outbox.in_flight
                if d is not None:
                    if not self._settle(left(CLOSE_WAIT_S), final=True):
                        log.warning(
                            "stopping with %d of %d records not acknowledged by Kafka %s; not "
                            "committing their offsets (they will be re-read)",
                            sum(not f.succeeded() for f in d.futures),
                            len(d.futures),
                            self.cfg.kafka.bootstrap,
                        )
                else:
                    self._commit(int(left(COMMIT_TIMEOUT_MS / 1000) * 1000))
                self.consumer.close(autocommit=False, timeout_ms=int(left(2.0) * 1000))
            if self.outbox.producer is not None:
                self.outbox.close(left(CLOSE_WAIT_S))
        finally:
            self.audit.close()
            self.metrics.set_up(False)
            self.health.loop_ready(False)

    # -- one poll -----------------------------------------------------------------

    def step(self, timeout_ms: int = 200) -> int:
        """One poll → decode → score → incidents → ack → commit. Returns records handled.

        While an earlier poll's output is not acknowledged, only polls the
        paused partitions (to stay in the group) and waits for the broker.
        """
        self.beat = time.monotonic()
        self._housekeeping()
        healthy = self._update_ready()
        if self._holding(timeout_ms):
            self.activity.pause(self.beat)  # records wait in the topic: no vehicle is quiet
            return 0
        if healthy:
            self.activity.resume(self.beat)
        else:
            self.activity.pause(self.beat)
        polled, n = self._poll(timeout_ms)
        if n == 0 and not self.activity.idle:
            self._commit_if_due()  # idle: what the last polls left uncommitted
            self.drift.observe([], time.monotonic())  # an idle brand's figure ages out too
            return 0
        try:
            self._process(polled, n)
        except KafkaError as exc:  # a send refused outright (no metadata within max_block_ms)
            self._rewind(f"cannot send to Kafka {self.cfg.kafka.bootstrap}: {exc!r}")
            return n
        self._settle(ACK_WAIT_S)
        return n

    def _holding(self, timeout_ms: int) -> bool:
        """Poll the paused partitions only (staying in the group) while the last poll's
        output awaits its acks, the group has not confirmed our membership, or Kafka
        refuses a producer. True when so."""
        hold_ms = min(timeout_ms, HOLD_POLL_MS)
        if self.outbox.in_flight is not None:
            polling.hold(self.consumer, hold_ms)
            self._settle(HOLD_POLL_MS / 1000)
            return True
        if not self.contact.membership_confirmed(self.consumer) or (
            self.outbox.producer is None and not self.outbox.reopen()
        ):
            polling.hold(self.consumer, hold_ms)
            return True
        return False

    def _poll(self, timeout_ms: int) -> tuple[dict, int]:
        limit = self.cfg.kafka.max_poll_records
        polled = polling.take(self.consumer, timeout_ms, limit)
        n = sum(len(v) for v in polled.values())
        if n:
            polled, n = self._gather(polled, n)
        return polled, n

    def _gather(self, polled: dict, n: int) -> tuple[dict, int]:
        limit = self.cfg.kafka.max_poll_records
        return polling.gather(self.consumer, self.rebalance, polled, n, limit)

    def _process(self, polled: dict, n: int) -> None:
        """Decode, score, fold into incidents and send; the acks are awaited by ``_settle``."""
        for tp, records in polled.items():  # where a rewind resumes if this poll fails
            self.commits.resume_at.setdefault(tp, records[0].offset)
        t0 = time.perf_counter()
        batches, futures = self._decode(polled)
        dead = len(futures)
        self.metrics.observe_stage("decode", time.perf_counter() - t0)
        scored, retired, shed = self._score(batches)
        self.drift.observe(scored, time.monotonic())  # the serving model's rows only
        t2 = time.perf_counter()
        events = self._incidents(scored)
        shadow_s = self.shadow_step(scored, events)
        events += self.vehicles.let_go(retired, shed)
        t3 = time.perf_counter()
        self.metrics.observe_stage("incidents", t3 - t2 - shadow_s)
        futures += [self.outbox.send_incident(ev) for ev in events]
        windows = self.audit.windows(scored)
        summary = poll_summary(polled, n, batches, dead, len(events), len(windows))
        self.outbox.dispatched(futures, t3, summary, windows)

    def shadow_step(self, scored: list, events: list) -> float:
        """Count what the shadows scored beside ``scored`` (only platforms with one pay
        for it; the stage's time includes their scoring in the scorer); the seconds the
        counting took."""
        t0 = time.perf_counter()
        scoring = self.shadow.observe(scored, events)
        spent = time.perf_counter() - t0
        if self.shadow.active:
            self.metrics.observe_stage("shadow", spent + scoring)
        return spent

    def _decode(self, polled: dict) -> tuple[list, list]:
        return self.intake.decode(polled)

    def _score(self, batches: list) -> tuple[list[ScoredRows], set[str], Shed]:
        """Score a poll's batches, and the last windows of vehicles gone quiet (retired)."""
        before = dict(self.scorer.seconds)
        scored = self.scorer.push(batches) if batches else []
        shed = self.scorer.take_shed()
        retired = self.activity.take_retired()  # not back in this poll
        if retired:
            scored += self.scorer.retire(retired)
        for stage in ("features", "score"):
            self.metrics.observe_stage(stage, self.scorer.seconds[stage] - before[stage])
        for brand, late in self.scorer.late_by_brand.items():
            self.metrics.brand(brand).late_frames.inc(late)
        self.scorer.late_by_brand.clear()
        for brand, gaps in self.scorer.gaps_by_brand.items():
            self.metrics.brand(brand).telemetry_gaps.inc(gaps)
        self.scorer.gaps_by_brand.clear()
        for brand, n in self.scorer.clock_resets_by_brand.items():
            log.warning(
                "%d %s vehicle(s) sent only frames older than their closed windows for %g s "
                "(a clock set back): their windows start afresh", n, brand, CLOCK_RESET_S,
            )  # fmt: skip
            self.metrics.brand(brand).clock_resets.inc(n)
        self.scorer.clock_resets_by_brand.clear()
        return scored, retired, shed

    def _incidents(self, scored: list) -> list[dict]:
        return self.incident_feed.observe(scored)

    def _settle(self, wait_s: float, *, final: bool = False) -> bool:
        """Wait up to ``wait_s`` for the outstanding poll's acks. Once all are in: write
        the audit, commit, resume consuming; True. False while some are missing, or
        (after rewinding, unless ``final``) when the producer gave up on some."""
        d = self.outbox.in_flight
        if d is None:
            return True
        failed = self.outbox.wait(wait_s)
        if failed:
            if not final:
                self._rewind(
                    f"Kafka {self.cfg.kafka.bootstrap} did not take {len(failed)} of "
                    f"{len(d.futures)} incidents/dead letters ({failed[0].exception!r})"
                )
            return False
        if not d.acknowledged():
            return False
        if d.futures:
            self.contact.heard()
        t4 = time.perf_counter()
        self.metrics.observe_stage("produce", t4 - d.t_sent)
        if self.audit.is_open:  # durable before the commit that makes it the truth
            self.audit.write(d.summary, d.windows, self.consumer.assignment())
        self.outbox.in_flight = None
        self._failures = 0
        polling.resume_paused(self.consumer)
        self.dead_letters.count_acknowledged()
        self.commits.acknowledged(self._safe_offsets())
        self._commit_if_due(final)
        self.metrics.observe_stage("commit", time.perf_counter() - t4)
        return True

    def _rewind(self, why: str) -> None:
        """What a restart would do, without exiting: drop every partition's state, seek
        back to where the last acknowledged poll left them, take a fresh producer
        (new producer id), and back off before polling again."""
        self._failures += 1
        delay = min(2.0 ** (self._failures - 1), MAX_BACKOFF_S)
        log.warning(
            "%s; nothing committed: re-reading from the last acknowledged offsets in %.0f s",
            why,
            delay,
        )
        self.health.loop_ready(False)
        self.outbox.in_flight = None
        self.dead_letters.forget_unacknowledged()  # re-read, they are counted then
        self.outbox.drop_producer()
        assigned = set(self.consumer.assignment())
        self.vehicles.drop_partitions(
            set(self.ledger.next_offset) | set(self.ledger.pending) | assigned
        )
        for tp in assigned:
            offset = self.commits.resume_at.get(tp)
            if offset is not None:
                self.consumer.seek(tp, offset)
        polling.resume_paused(self.consumer)
        end = time.monotonic() + delay
        while not self._stop.wait(min(1.0, max(end - time.monotonic(), 0.0))):
            self.beat = time.monotonic()  # backing off is going round, slowly
            if time.monotonic() >= end:
                break

    # -- offsets ------------------------------------------------------------------

    def _safe_offsets(self) -> dict:
        return self.ledger.safe_offsets(self.vehicles.horizon)

    def _commit_if_due(self, now: bool = False) -> None:
        if self.commits.due(now):
            self._commit()

    def _commit(self, timeout_ms: int = COMMIT_TIMEOUT_MS) -> None:
        # where the last acknowledged poll left each partition, never the ledger as it
        # stands: a poll that failed part-way (an error after its decode) has moved it on
        if self.commits.commit(self.consumer, dict(self.commits.resume_at), timeout_ms):
            self.contact.heard()

    def _forget(self, partitions: set) -> None:
        """Partitions no longer ours: their state, and where a rewind would seek them."""
        if partitions:
            self.vehicles.drop_partitions(partitions)
            self.commits.forget(partitions)

    # -- periodic -----------------------------------------------------------------

    def _housekeeping(self) -> None:
        now = time.monotonic()
        self.models.reload_if_due(now)
        self.activity.count_if_due(now)
        self.contact.probe_if_due(self.consumer, now)

    def _update_ready(self) -> bool:
        """Whether Kafka is healthy (heard from, nothing unacknowledged for long); the
        readiness it reports also needs the group, a model and partitions."""
        healthy, back = self.contact.check(self.consumer, self.outbox.in_flight)
        if back and self.outbox.in_flight is None:
            # A broker that lost its state (memory storage, rebuilt cluster) no
            # longer knows our producer id and would refuse its sequence numbers.
            self.outbox.drop_producer()
        self.health.loop_ready(
            healthy
            and self.contact.membership_confirmed(self.consumer)
            and bool(self.scorer.models)
            and bool(self.consumer.assignment())
        )
        return healthy

    # -- what tests and benches look at (the state lives in the parts) --------------

    producer = _part("outbox", "producer")
    pending = _part("ledger", "pending")
    next_offset = _part("ledger", "next_offset")
    vehicle_tp = _part("ledger", "vehicle_tp")
    _vnum = _part("ledger", "vnum")
    _vnames = _part("ledger", "vnames")
    last_seen = _part("activity", "last_seen")
    _rebalances = _part("rebalance", "count")
    _last_reload = _part("models", "last")
