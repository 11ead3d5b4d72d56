"""The long-running detector: Kafka in, incidents and metrics out.

One poll is one unit of work: decode (bad records → DLQ), score, fold into
incidents, publish incidents and dead letters, wait for the broker to
acknowledge them, and only then commit offsets. Offsets are committed up to
the oldest record whose frames still sit in an open window (or in the last
closed one, which a restart re-forms as its partial first window), so after a
crash every window is re-formed from re-read records and scored, and the
incidents it re-emits carry the same deterministic ids (at-least-once).

While a vehicle has an incident open, its offsets are held back further, to the
window before the incident's first anomalous one: a restart then re-forms the
whole incident and re-emits it under the same id, instead of opening a new one
half-way through the attack.

On a rebalance the vehicles of partitions that move elsewhere are *dropped*:
their offsets were committed only as far as their open windows, so the new
owner re-reads and rebuilds exactly that state. Partitions that stay with this
instance keep their state and their fetch position (kafka-python 3 keeps the
position of a partition re-assigned by an eager rebalance; dropping the state
would lose its open windows). Partitions *lost* by eviction resume from the
committed offsets, so their state is dropped too.

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
- ``canwatch_ready`` is 1 only with models loaded, partitions assigned, no
  poll unacknowledged for more than ``UNREACHABLE_S``, the broker heard from
  within ``UNREACHABLE_S`` (acknowledgements, commits, group heartbeats, or a
  bounded ListOffsets probe when idle; records are no proof, kafka-python may
  serve them from its fetch buffer), and the watchdog (``detector.service.watchdog``,
  a thread of its own) sees no stall. While it is 0 the detector logs what
  it waits for every ``WAIT_LOG_S`` s; it never exits because Kafka is away.
  Clients reconnect within a second of the broker's return, and the producer
  is replaced then (a broker that lost its state refuses the old producer id).
  Consumption resumes only once the group coordinator confirms the membership
  (a heartbeat answered, or a new assignment): after a long outage the group
  may have evicted this instance and handed its partitions to another.
- Consumer lag and event-time lag are the watchdog's, computed outside the loop
  they judge (a stalled loop shows as growing lag, not as the last figures).
- A record the Kafka record format cannot describe (``detector.transport.kafka_salvage``:
  bad CRC, codec, varints, lengths, a header name that is not UTF-8, ...) is
  dead-lettered with its partition, offset(s) and reason, like a record that
  fails canwatch's own decoding; it never stops the consumer.
- Poll loop stalled (records waiting and the position not advancing, or the loop
  not coming round, for ``watchdog.stall_s``): not ready, one log line naming
  the partitions; after ``watchdog.exit_s`` without progress, ``on_stall``
  (``canwatch detect`` exits 3 so that its supervisor restarts it). A broker
  that does not answer is an outage, not a stall.
- Stop: ``close`` spends at most ``watchdog.shutdown_timeout_s`` minus
  ``STOP_MARGIN_S`` on acknowledgements, the final commit (of acknowledged polls
  only) and closing the clients; ``canwatch detect`` exits at the deadline
  whatever the clients are doing.
- ``windows_out`` (``canwatch detect --windows-out``): JSON Lines, one line per
  scored window and one per poll (records, frames, offsets), appended and
  fsync'd *before* that poll's offsets are committed, so after kill -9 the file
  still shows everything the offsets claim was processed.

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
import json
import logging
import math
import os
import socket
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from kafka.errors import KafkaError

from detector.core.brands import Fleet
from detector.core.config import Config
from detector.core.errors import CanwatchError, DecodeError, ModelError
from detector.incidents.privacy import load_key, pseudonym, scrub
from detector.incidents.tracker import IncidentTracker, observations
from detector.model.pipeline import Scorer, vehicle_clock, warm_up, window_scores
from detector.model.platform import PlatformModel
from detector.model.registry import ModelRegistry, failure_reason
from detector.service.metrics import DetectorMetrics
from detector.service.watchdog import Health, LoopState, Watchdog
from detector.transport import wire
from detector.transport.kafka_io import end_offsets, make_consumer, make_producer
from detector.transport.kafka_records import parse_batches_compiled
from detector.transport.kafka_salvage import UnreadableRecord
from detector.transport.wire import dead_letter_copy, decode_records

log = logging.getLogger("canwatch.detect")
NO_MODEL = "no_model"
LAG_INTERVAL_S = 5.0
ACTIVE_S = 60.0  # a vehicle counts as active this long after its last record
#: A vehicle silent this long (wall clock) is retired: its open window is closed
#: and scored, its open incident closed, its state freed. Until then its last
#: window stays open, and so do the offsets of its records (a parked vehicle
#: would otherwise hold its partition's committed offset back forever).
IDLE_S = ACTIVE_S
ACK_WAIT_S = 2.0  # wait this long for a poll's acks before pausing consumption
HOLD_POLL_MS = 100  # poll of the paused partitions while acks are outstanding
# After a poll with records, keep taking what arrives this much longer (kafka-python
# fetches the next response while a poll is processed), up to max_poll_records:
# every batch has a fixed cost, so a backlog goes 10-15 % faster in fewer, larger
# batches; a live stream waits at most this much more.
GATHER_S = 0.02
COMMIT_TIMEOUT_MS = 2000
UNREACHABLE_S = 5.0  # no word from the broker for this long: not ready
PROBE_S = 2.0  # no word from the broker for this long: ask it (ListOffsets)
PROBE_TIMEOUT_MS = 1000
WAIT_LOG_S = 10.0  # repeat the "waiting for Kafka" line this often
CLOSE_WAIT_S = 5.0  # on stop: wait this long for outstanding acks
#: On stop, ``close`` gets watchdog.shutdown_timeout_s minus this: the batch under
#: way when the signal came, and the process exit, need time too.
STOP_MARGIN_S = 3.0
UNREADABLE_LOG_S = 10.0  # at most one summary line of unreadable records this often
MAX_BACKOFF_S = 30.0  # between rewinds when deliveries keep failing
#: Reconnect within a second of the broker coming back (kafka-python backs off
#: exponentially up to 30 s by default); never block a send for a minute on
#: missing metadata (max_block_ms): fail it and rewind instead.
CONSUMER_OVERRIDES = {"reconnect_backoff_max_ms": 1000}
PRODUCER_OVERRIDES = {"reconnect_backoff_max_ms": 1000, "max_block_ms": 5000}
PRODUCER_BOOTSTRAP_MS = 5000  # a replacement producer: give up (and retry) after this


def default_detector_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


@dataclass
class _Delivery:
    """One poll's incidents and dead letters, sent, until the broker acknowledges them."""

    futures: list
    since: float  # monotonic time they were sent
    t_sent: float  # perf_counter, for the produce stage histogram
    summary: dict  # the poll line of the audit file
    windows: list[str] = field(default_factory=list)  # window lines of the audit file


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
        self.registry = ModelRegistry(
            cfg.models.dir, self._model_loaded, self._model_refused, self._prepare_model
        )
        self.scorer = Scorer({}, fleet, self.window_s, cfg.limits)
        metrics.set_state_limits(cfg.limits.max_vehicles, cfg.limits.max_streams)
        self.tracker = IncidentTracker(cfg.incidents, self.detector_id)
        self.privacy_key = load_key(cfg.privacy)  # validated before anything connects
        # tp -> [(offsets, vehicle numbers, newest ts)] of records whose frames may
        # still be needed; numpy chunks (20 B a record), merged when pruned
        self.pending: dict = defaultdict(list)
        self._vnum: dict[str, int] = {}  # vehicle -> number used in ``pending``
        self._vnames: list[tuple[str, str] | None] = []  # number -> (vehicle, brand), None: gone
        self._vdead: list[int] = []  # numbers of vehicles dropped, free once ``pending`` is pruned
        self._vfree: list[int] = []  # numbers free for reuse
        self.next_offset: dict = {}  # tp -> offset after the last record seen
        self.vehicle_tp: dict[str, object] = {}
        self.last_seen: dict[str, tuple[str, float]] = {}  # vehicle -> (brand, wall clock)
        self.open_severity: dict[str, tuple[str, str]] = {}
        self.consumer = None
        self.producer = None
        self._last_reload = 0.0
        self._last_active = 0.0
        self._active_brands: set[str] = set()
        self._idle: set[str] = set()  # gone quiet: retired with the next poll
        self.windows_out = Path(windows_out) if windows_out else None
        self._audit = None  # the open windows_out file
        self._delivery: _Delivery | None = None  # a poll's output awaiting the broker's acks
        self._resume_at: dict = {}  # tp -> where a restart would resume (last acked poll)
        self._last_contact = time.monotonic()  # the broker's last sign of life
        self._last_probe = 0.0
        self._unreachable_since: float | None = None
        self._last_wait_log = 0.0
        self._failures = 0  # consecutive rewinds (back-off)
        self._revoking: set = set()  # revoked, state kept until the assignment says
        self._rebalances = 0  # rebalance callbacks run so far (see _gather)
        self._commit_after = 0.0  # no commit attempt before (after a failed one)
        self._last_commit = 0.0  # monotonic time of the last commit attempt
        self._uncommitted = False  # acknowledged polls whose offsets wait for the next commit
        self._last_producer_try = 0.0
        self._probe_partitions: list = []  # the last assigned partitions
        self._confirm_since: float | None = None  # back from an outage: membership unconfirmed
        self._stop = threading.Event()  # run()'s; interrupts back-off sleeps
        # Health judged outside the loop (detector.service.watchdog): the loop publishes its
        # last round (beat), its claim of readiness and the newest event time read.
        self.health = Health(metrics)
        self.beat = time.monotonic()
        self._newest: dict = {}  # tp -> newest event time processed
        self._watchdog: Watchdog | None = None
        # After watchdog.exit_s without progress; in-process the detector stops itself
        # (which a loop stuck inside kafka-python cannot do: the CLI exits instead).
        self.on_stall = on_stall
        self._unreadable_seen: dict[str, int] = defaultdict(int)  # since the last summary line
        self._unreadable_logged = 0.0

    # -- models ----------------------------------------------------------------

    def _prepare_model(self, model: PlatformModel) -> None:
        """Score synthetic frames with a model before it serves (loading the compiled
        kernels now, not in the first poll); one that cannot score is refused."""
        try:
            warm_up(model, self.window_s)
        except Exception as exc:  # whatever breaks here would break every poll of its brand
            raise ModelError(f"{model.platform} v{model.version} cannot score: {exc!r}") from exc

    def _model_loaded(self, model: PlatformModel) -> None:
        self.scorer.set_model(model)
        if self.freeze_heap and self.consumer is not None:
            self._freeze()  # a reload after start-up: the old model is collected first
        brands = self.fleet.brands_of(model.platform) or [model.platform]
        for b in brands:
            self.metrics.set_model(b, model.platform, str(model.version), model.threshold)

    def _model_refused(self, platform: str, exc: ModelError) -> None:
        self.metrics.model_reload_failed(failure_reason(exc))

    def _known_brands(self) -> set[str]:
        return set(self.fleet.brands) | self.registry.brands()

    # -- lifecycle ---------------------------------------------------------------

    def start(self) -> None:
        from kafka import ConsumerRebalanceListener

        detector = self

        class Listener(ConsumerRebalanceListener):
            def on_partitions_revoked(self, revoked):
                detector._rebalances += 1
                detector._revoked(set(revoked))

            def on_partitions_lost(self, lost):
                detector._rebalances += 1
                detector._lost(set(lost))

            def on_partitions_assigned(self, assigned):
                detector._rebalances += 1
                detector._assigned(set(assigned))
                detector.metrics.rebalanced([tp.partition for tp in assigned])
                log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))

        wire.warm_up()
        # Records built by canwatch's own pass, which reads any batch without raising
        # (kafka-python's raises, then loops forever in the next poll); process-wide.
        parse_batches_compiled()
        self.registry.refresh()
        self._last_reload = time.monotonic()
        if self.windows_out is not None:  # before connecting: a bad path fails at once
            self._audit = open(self.windows_out, "a", encoding="utf-8")  # noqa: SIM115
        self.producer = make_producer(self.cfg.kafka, **PRODUCER_OVERRIDES)
        self.consumer = make_consumer(
            self.cfg.kafka, [], self.cfg.kafka.group_id, **CONSUMER_OVERRIDES
        )
        self.consumer.subscribe([self.cfg.kafka.telemetry_topic], listener=Listener())
        self._last_contact = time.monotonic()
        self.metrics.set_up(True)
        self.beat = time.monotonic()
        self._watchdog = Watchdog(
            self.cfg, self.metrics, self.health, self.loop_state, self._stalled_too_long
        )
        self._watchdog.start()
        if self.freeze_heap:
            self._freeze()

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
            while not stop.is_set():
                try:
                    self.step()
                except KafkaError as exc:
                    self._rewind(f"Kafka error: {exc!r}")
        finally:
            self.close(self.cfg.watchdog.shutdown_timeout_s - STOP_MARGIN_S)

    def loop_state(self) -> LoopState:
        """What the watchdog judges (called on its thread): the loop's last round, its
        own readiness, and the consumer's fetch positions from kafka-python's
        subscription state (read, never asked of the client, which the loop may hold)."""
        subscription = getattr(self.consumer, "_subscription", None)  # kafka-python 3.0
        states = getattr(subscription, "assignment", None)
        if states is None:  # another kafka-python: what the loop itself took last
            positions = dict(self.next_offset)
        else:
            try:
                states = dict(states)
            except RuntimeError:  # changed by a rebalance on the IO thread meanwhile
                states = {}
            positions = {
                tp: getattr(getattr(st, "_position", None), "offset", None)
                for tp, st in states.items()
            }
        return LoopState(self.beat, positions, dict(self._newest))

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

        self._commit_after = 0.0  # last chance: no back-off
        if self._watchdog is not None:
            self._watchdog.stop(left(1.0))
            self._watchdog = None
        try:
            if self.consumer is not None:
                if self._delivery is not None:
                    d = self._delivery
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
            if self.producer is not None:
                self.producer.close(timeout=left(CLOSE_WAIT_S))
        finally:
            if self._audit is not None:
                self._audit.close()
                self._audit = None
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
        self._update_ready()
        if self._delivery is not None:
            self._hold(min(timeout_ms, HOLD_POLL_MS))
            self._settle(HOLD_POLL_MS / 1000)
            return 0
        if not self._membership_confirmed() or (self.producer is None and not self._new_producer()):
            self._hold(min(timeout_ms, HOLD_POLL_MS))
            return 0
        self._resume_paused()
        polled = self.consumer.poll(
            timeout_ms=timeout_ms, max_records=self.cfg.kafka.max_poll_records
        )
        n = sum(len(v) for v in polled.values())
        if n:
            polled, n = self._gather(polled, n)
        if n == 0 and not self._idle:
            self._commit_if_due()  # idle: what the last polls left uncommitted
            return 0
        for tp, records in polled.items():
            self._resume_at.setdefault(tp, records[0].offset)
        try:
            self._process(polled, n)
        except KafkaError as exc:  # a send refused outright (no metadata within max_block_ms)
            self._rewind(f"cannot send to Kafka {self.cfg.kafka.bootstrap}: {exc!r}")
            return n
        self._settle(ACK_WAIT_S)
        return n

    def _gather(self, polled: dict, n: int) -> tuple[dict, int]:
        """``polled`` and what the next polls bring within GATHER_S, up to
        max_poll_records. A rebalance inside one of them may move partitions and
        their positions (see ``_assigned``): then nothing gathered is kept, and the
        partitions still ours are sought back to the first record gathered."""
        limit = self.cfg.kafka.max_poll_records
        deadline = time.monotonic() + GATHER_S
        while n < limit:
            left_ms = int((deadline - time.monotonic()) * 1000)
            if left_ms <= 0:
                break
            generation = self._rebalances
            more = self.consumer.poll(timeout_ms=left_ms, max_records=limit - n)
            for tp, records in more.items():
                polled.setdefault(tp, []).extend(records)
            n += sum(len(v) for v in more.values())
            if self._rebalances != generation:
                assigned = self.consumer.assignment()
                for tp, records in polled.items():
                    if tp in assigned:
                        self.consumer.seek(tp, records[0].offset)
                return {}, 0
            if not more:
                break
        return polled, n

    def _membership_confirmed(self) -> bool:
        """After an outage: has the group coordinator confirmed we are still a member
        (a heartbeat answered since, or a new assignment)? Until then the partitions
        stay paused: if the group evicted us meanwhile, another member may own them,
        and a broker that lost its log would hand us a new log at our old positions.
        Bounded by the session timeout, past which an eviction would have shown."""
        since = self._confirm_since
        if since is None:
            return True
        hb = self._heartbeat_received()
        waited = time.monotonic() - since
        limit = (self.cfg.kafka.session_timeout_ms + self.cfg.kafka.heartbeat_interval_ms) / 1000
        if (hb is not None and hb > since) or waited > limit:
            self._confirm_since = None
            return True
        return False

    def _new_producer(self) -> bool:
        """A fresh producer (after a rewind or an outage); False while Kafka refuses one."""
        now = time.monotonic()
        if now - self._last_producer_try < PROBE_S:
            return False
        self._last_producer_try = now
        try:
            self.producer = make_producer(
                self.cfg.kafka, bootstrap_timeout_ms=PRODUCER_BOOTSTRAP_MS, **PRODUCER_OVERRIDES
            )
        except (KafkaError, CanwatchError) as exc:
            log.warning("cannot create a Kafka producer yet: %s", exc)
            return False
        return True

    def _process(self, polled: dict, n: int) -> None:
        """Decode, score, fold into incidents and send; the acks are awaited by ``_settle``."""
        t0 = time.perf_counter()
        batches, futures = self._decode(polled)
        dead = len(futures)
        t1 = time.perf_counter()
        self.metrics.observe_stage("decode", t1 - t0)
        before = dict(self.scorer.seconds)
        scored = self.scorer.push(batches) if batches else []
        shed = self.scorer.take_shed()
        retired = {v for v in self._idle if v not in self.last_seen}  # not back in this poll
        self._idle = set()
        if retired:
            scored += self.scorer.retire(retired)
        t2 = time.perf_counter()
        for stage in ("features", "score"):
            self.metrics.observe_stage(stage, self.scorer.seconds[stage] - before[stage])
        for brand, late in self.scorer.late_by_brand.items():
            self.metrics.brand(brand).late_frames.inc(late)
        self.scorer.late_by_brand.clear()
        events = self._incidents(scored)
        if retired:
            events += self._account(self.tracker.close(retired))
            self._drop_vehicles(retired)
        if shed.evicted or shed.refused:  # the limits let them go: so does everything else
            events += self._account(self.tracker.close(shed.evicted))
            self._drop_vehicles(shed.evicted | shed.refused)
            for v in shed.evicted | shed.refused:
                self.last_seen.pop(v, None)
        self.metrics.shed(shed.frames, shed.vehicles)
        self.metrics.set_state(self.scorer.n_vehicles, self.scorer.n_streams)
        t3 = time.perf_counter()
        self.metrics.observe_stage("incidents", t3 - t2)
        for ev in events:
            futures.append(
                self.producer.send(
                    self.cfg.kafka.incident_topic,
                    key=ev["vehicle"].encode(),
                    value=json.dumps(ev, separators=(",", ":")).encode(),
                    headers=[("content-type", b"application/json"), ("schema", b"1")],
                )
            )
        windows = self._audit_windows(scored) if self._audit is not None else []
        summary = {
            "records": n,
            "frames": int(sum(len(frames) for _, _, frames in batches)),
            "dead_letters": dead,
            "incidents": len(events),
            "windows": len(windows),
            "offsets": {
                str(tp.partition): [records[0].offset, records[-1].offset]
                for tp, records in polled.items()
            },
        }
        self._delivery = _Delivery(futures, time.monotonic(), t3, summary, windows)

    def _settle(self, wait_s: float, *, final: bool = False) -> bool:
        """Wait up to ``wait_s`` for the outstanding poll's acks. Once all are in: write
        the audit, commit, resume consuming; True. False while some are missing, or
        (after rewinding, unless ``final``) when the producer gave up on some."""
        d = self._delivery
        if d is None:
            return True
        if not all(f.is_done for f in d.futures):
            try:
                self.producer.flush(timeout=wait_s)
            except KafkaError:  # KafkaTimeoutError: not yet
                pass
        failed = [f for f in d.futures if f.failed()]
        if failed:
            if not final:
                self._rewind(
                    f"Kafka {self.cfg.kafka.bootstrap} did not take {len(failed)} of "
                    f"{len(d.futures)} incidents/dead letters ({failed[0].exception!r})"
                )
            return False
        if not all(f.is_done for f in d.futures):
            return False
        if d.futures:
            self._heard_from_broker()
        t4 = time.perf_counter()
        self.metrics.observe_stage("produce", t4 - d.t_sent)
        self._write_audit(d)  # durable before the commit that makes it the truth
        self._delivery = None
        self._failures = 0
        self._resume_paused()
        self._resume_at.update({tp: om.offset for tp, om in self._safe_offsets().items()})
        self._uncommitted = True
        self._commit_if_due(final)
        self.metrics.observe_stage("commit", time.perf_counter() - t4)
        return True

    def _hold(self, timeout_ms: int) -> None:
        """Poll with every partition paused: keeps the group membership (and runs the
        rebalance listener) without taking in new records."""
        assigned = self.consumer.assignment()
        if assigned:
            self.consumer.pause(*assigned)
        polled = self.consumer.poll(timeout_ms=timeout_ms)
        for tp, records in polled.items():  # assigned during this very poll: not paused yet
            self.consumer.seek(tp, records[0].offset)

    def _resume_paused(self) -> None:
        paused = self.consumer.paused()
        if paused:
            self.consumer.resume(*paused)

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
        self._delivery = None
        self._close_producer()
        assigned = set(self.consumer.assignment())
        self._drop(set(self.next_offset) | set(self.pending) | assigned)
        for tp in assigned:
            offset = self._resume_at.get(tp)
            if offset is not None:
                self.consumer.seek(tp, offset)
        self._resume_paused()
        end = time.monotonic() + delay
        while not self._stop.wait(min(1.0, max(end - time.monotonic(), 0.0))):
            self.beat = time.monotonic()  # backing off is going round, slowly
            if time.monotonic() >= end:
                break

    def _close_producer(self) -> None:
        producer, self.producer = self.producer, None
        if producer is not None:
            try:
                producer.close(timeout=0)  # anything it still holds is re-sent after a rewind
            except Exception as exc:  # closing a broken client must not break the detector
                log.debug("closing the producer: %r", exc)

    # -- audit (windows_out) -----------------------------------------------------------

    def _audit_windows(self, scored: list) -> list[str]:
        lines = []
        for sc in scored:
            v, w, s = window_scores(sc)
            for vi, wi, si in zip(v.tolist(), w.tolist(), s.tolist(), strict=True):
                row = {
                    "type": "window",
                    "vehicle": sc.names[vi],
                    "brand": sc.brands[vi],
                    "window_start": round(wi * self.window_s, 6),
                    "score": round(si, 6),
                    "model_version": sc.model_version,
                }
                lines.append(json.dumps(row, separators=(",", ":")))
        return lines

    def _write_audit(self, d: _Delivery) -> None:
        if self._audit is None:
            return
        poll = {
            "type": "poll",
            "time": round(time.time(), 3),
            "detector": self.detector_id,
            **d.summary,
            "assigned": sorted(tp.partition for tp in self.consumer.assignment()),
        }
        lines = [*d.windows, json.dumps(poll, separators=(",", ":"))]
        self._audit.write("\n".join(lines) + "\n")
        self._audit.flush()
        os.fsync(self._audit.fileno())

    # -- broker health ---------------------------------------------------------------

    def _heard_from_broker(self) -> None:
        self._last_contact = time.monotonic()

    def _heartbeat_received(self) -> float | None:
        """Monotonic time of the group coordinator's last heartbeat answer (kafka-python
        internals, read defensively: None when unavailable)."""
        hb = getattr(getattr(self.consumer, "_coordinator", None), "heartbeat", None)
        t = getattr(hb, "last_receive", None)
        return t if isinstance(t, float) and math.isfinite(t) else None

    def _update_ready(self) -> None:
        now = time.monotonic()
        hb = self._heartbeat_received()
        if hb is not None and hb > self._last_contact:
            self._last_contact = hb
        silent = now - self._last_contact
        d = self._delivery
        stuck = d is not None and now - d.since > UNREACHABLE_S
        healthy = silent <= UNREACHABLE_S and not stuck
        if not healthy:
            if self._unreachable_since is None:  # since its last sign of life
                self._unreachable_since = min(self._last_contact, d.since if stuck else now)
            if now - self._last_wait_log >= WAIT_LOG_S:
                self._last_wait_log = now
                log.warning("%s", self._waiting_for(silent, now))
        elif self._unreachable_since is not None:
            log.warning(
                "Kafka broker %s is back after %.1f s; consuming again once the group confirms "
                "our membership",
                self.cfg.kafka.bootstrap,
                now - self._unreachable_since,
            )
            self._unreachable_since = None
            self._last_wait_log = 0.0
            self._confirm_since = now
            if self._delivery is None:
                # A broker that lost its state (memory storage, rebuilt cluster) no
                # longer knows our producer id and would refuse its sequence numbers.
                self._close_producer()
        self.health.loop_ready(
            healthy
            and self._membership_confirmed()
            and bool(self.scorer.models)
            and bool(self.consumer.assignment())
        )

    def _waiting_for(self, silent: float, now: float) -> str:
        d = self._delivery
        what = f"waiting for Kafka broker {self.cfg.kafka.bootstrap}"
        if silent > UNREACHABLE_S:
            what += f" (unreachable for {silent:.0f} s)"
        if d is not None:
            missing = sum(not f.is_done for f in d.futures)
            what += (
                f"; {missing} of {len(d.futures)} incidents/dead letters unacknowledged "
                f"for {now - d.since:.0f} s, consumption paused"
            )
        return what + "; not committing"

    def _decode(self, polled: dict) -> tuple[list, list]:
        """A poll's records → (vehicle, brand, frames) batches; the rest dead-lettered.

        Decoded as one (``wire.decode_records``), counted per brand once per poll.
        """
        batches, futures = [], []
        now = time.time()
        det = self.cfg.detection
        records = [(tp, r) for tp, rs in polled.items() for r in rs]
        unreadable = [r for _, r in records if type(r) is UnreadableRecord]
        if unreadable:  # what the Kafka record format itself could not describe
            records = [(tp, r) for tp, r in records if type(r) is not UnreadableRecord]
            futures += [self._dead_letter_unreadable(r) for r in unreadable]
        results = decode_records(
            [(r.key, r.value, r.headers) for _, r in records],
            known_brands=self._known_brands(),
            now=now,
            max_future_s=det.max_future_s,
            min_ts=det.min_ts,
        )
        held: dict = defaultdict(lambda: ([], [], []))  # tp -> offsets, vehicle numbers, ts
        per_brand: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        seen_at = time.monotonic()
        modelled: dict[str, bool] = {}  # per brand, per vehicle: a poll repeats a few
        alias: dict[str, str] = {}
        latest: dict[str, tuple] = {}  # vehicle -> (number, tp, brand) of its last record
        for tp, rs in polled.items():
            last = rs[-1]
            if type(last) is UnreadableRecord:  # a span: up to its last offset
                self.next_offset[tp] = last.problem.last_offset + 1
            else:
                self.next_offset[tp] = last.offset + 1
        for (tp, r), b in zip(records, results, strict=True):
            if not isinstance(b, DecodeError):
                ok = modelled.get(b.brand)
                if ok is None:
                    ok = modelled[b.brand] = self.scorer.platform_for(b.brand) is not None
                if not ok:
                    b = DecodeError(NO_MODEL, f"no model loaded for brand {b.brand!r}")
            if isinstance(b, DecodeError):
                futures.append(self._dead_letter(r, b))
                continue
            vehicle = b.vehicle
            if self.privacy_key is not None:
                vehicle = alias.get(b.vehicle) or alias.setdefault(
                    b.vehicle, pseudonym(self.privacy_key, b.vehicle)
                )
            counts = per_brand[b.brand]
            counts[0] += 1
            counts[1] += len(b.frames)
            batches.append((vehicle, b.brand, b.frames))
            last = latest.get(vehicle)
            if last is None or last[1] is not tp or last[2] != b.brand:  # else all as before
                num = self._vnum.get(vehicle)
                if num is None:
                    num = self._vnum[vehicle] = self._number(vehicle, b.brand)
                last = latest[vehicle] = (num, tp, b.brand)
                self.vehicle_tp[vehicle] = tp
                self.last_seen[vehicle] = (b.brand, seen_at)
            offsets, nums, tss = held[tp]
            offsets.append(r.offset)
            nums.append(last[0])
            tss.append(b.newest)
        newest: dict = {}
        for tp, (offsets, nums, tss) in held.items():
            self.pending[tp].append(
                (np.array(offsets, np.int64), np.array(nums, np.int32), np.array(tss))
            )
            newest[tp] = max(tss)
        self.metrics.bytes_consumed.inc(sum(len(r.value or b"") for _, r in records))
        for brand, (n_records, n_frames) in per_brand.items():
            bm = self.metrics.brand(brand)
            bm.records.inc(n_records)
            bm.frames.inc(n_frames)
        for tp, ts in newest.items():
            self._newest[tp] = ts  # the watchdog keeps the event-time lag current from it
            self.metrics.set_partition_lag(tp.partition, max(now - ts, 0.0), None)
        return batches, futures

    def _dead_letter(self, record, exc: DecodeError):
        self.metrics.dead_letter(exc.reason)
        key, value = record.key, record.value
        detail = exc.detail[:500].encode("utf-8", "replace")
        if self.privacy_key is not None:  # the raw id may sit in the key, the body or the detail
            key, value = scrub(self.privacy_key, record.key, record.value)
            detail = scrub(self.privacy_key, record.key, detail)[1]
        # Null key and value, null header values or > 4.5 MB would make send() raise
        # and the consumer crash-loop on this record; the copy is always producible.
        key, value, headers, altered = dead_letter_copy(key, value, record.headers)
        return self._send_dead_letter(
            record, record.offset, exc.reason, detail, (key, value, headers), notes=(altered,)
        )

    def _send_dead_letter(
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
        return self.producer.send(self.cfg.kafka.dlq_topic, key=key, value=value, headers=headers)

    def _dead_letter_unreadable(self, record: UnreadableRecord):
        """A record, or span of records, the Kafka record format could not describe:
        its raw bytes to the DLQ, with where it was and why (``detector.transport.kafka_salvage``)."""
        p = record.problem
        first, last = record.offset, p.last_offset
        self.metrics.dead_letter(p.reason)
        self.metrics.unreadable(p.reason, p.records(first))
        self._log_unreadable(record)
        key, value, detail = record.key, record.value, p.detail.encode("utf-8", "replace")
        withheld = ""
        if self.privacy_key is not None:
            if key:
                key, value = scrub(self.privacy_key, record.key, value)
                detail = scrub(self.privacy_key, record.key, detail)[1]
            else:  # no vehicle id to find in the bytes: none of them leave
                value, withheld = b"", "raw bytes withheld (pseudonymisation on, no key to scrub)"
        key, value, headers, altered = dead_letter_copy(key, value, [])
        return self._send_dead_letter(
            record, first, p.reason, detail[:500], (key, value, headers),
            extra=[("source-offsets", f"{first}-{last}".encode())], notes=(withheld, altered),
        )  # fmt: skip

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
            self.cfg.kafka.dlq_topic,
            record.partition,
            record.offset,
            p.last_offset,
            p.detail,
        )

    def _incidents(self, scored: list) -> list[dict]:
        events = []
        for sc in scored:
            v, w, s = window_scores(sc)
            if len(w):
                brands = np.asarray(sc.brands, dtype=object)[v]
                for brand in np.unique(brands):
                    sel = brands == brand
                    bm = self.metrics.brand(str(brand))
                    bm.windows.inc(int(sel.sum()))
                    bm.anomalous.inc(int((s[sel] >= 1.0).sum()))
                    bm.observe_scores(s[sel])
            clock = vehicle_clock(sc, v, w, self.window_s)
            events += self.tracker.observe(observations(sc, self.window_s), clock)
        return self._account(events)

    def _account(self, events: list[dict]) -> list[dict]:
        """Count incident events in the metrics (opened, closed, active by severity)."""
        for ev in events:
            bm = self.metrics.brand(ev["brand"])
            if ev["status"] == "open":
                self.open_severity[ev["incident_id"]] = (ev["severity"], ev["suspected_attack"])
                bm.incident_opened(ev["severity"], ev["suspected_attack"])
            elif ev["status"] == "closed":
                sev, att = self.open_severity.pop(
                    ev["incident_id"], (ev["severity"], ev["suspected_attack"])
                )
                bm.incident_closed(sev, att)
        return events

    # -- offsets ------------------------------------------------------------------

    def _horizon(self, vehicle: str, brand: str) -> float:
        """Event time from which a restart must re-read ``vehicle``: the window before
        its open one, or before the first anomalous window of its open incident (so
        the incident is re-formed whole and keeps its id)."""
        start = self.scorer.closed_until(vehicle, brand)
        inc = self.tracker.open.get(vehicle)
        if inc is not None:
            start = min(start, inc.first_seen)
        return start - self.window_s

    def _safe_offsets(self) -> dict:
        """Per partition: the oldest record that may still be needed to re-form a
        window or an open incident."""
        from kafka.structs import OffsetAndMetadata

        out = {}
        horizon: dict[int, float] = {}
        dead, self._vdead = self._vdead, []  # pruned below: free for reuse after
        for tp, nxt in self.next_offset.items():
            chunks = self.pending.get(tp) or []
            if chunks:
                offsets = np.concatenate([c[0] for c in chunks])
                nums = np.concatenate([c[1] for c in chunks])
                tss = np.concatenate([c[2] for c in chunks])
                uniq, inv = np.unique(nums, return_inverse=True)
                for num in uniq.tolist():
                    if num not in horizon:
                        named = self._vnames[num]  # None: dropped, nothing left to re-form
                        horizon[num] = self._horizon(*named) if named else math.inf
                keep = tss >= np.array([horizon[n] for n in uniq.tolist()])[inv]
                offsets, nums, tss = offsets[keep], nums[keep], tss[keep]
                self.pending[tp] = [(offsets, nums, tss)] if len(offsets) else []
                offset = int(offsets.min()) if len(offsets) else nxt
            else:
                offset = nxt
            out[tp] = OffsetAndMetadata(offset, "", -1)
        if set(self.pending) <= set(self.next_offset):  # every chunk was pruned
            self._vfree += dead
        else:
            self._vdead += dead
        return out

    def _number(self, vehicle: str, brand: str) -> int:
        """A number for ``vehicle`` in ``pending`` (those of dropped vehicles are reused:
        a flood of vehicle keys must not grow this table)."""
        if self._vfree:
            num = self._vfree.pop()
            self._vnames[num] = (vehicle, brand)
            return num
        self._vnames.append((vehicle, brand))
        return len(self._vnames) - 1

    def _commit_if_due(self, now: bool = False) -> None:
        # kafka.commit_interval_s: a sync commit per poll costs a broker round trip
        # per few hundred records; a crash re-reads at most that much more.
        due = time.monotonic() - self._last_commit >= self.cfg.kafka.commit_interval_s
        if self._uncommitted and (now or due):
            self._commit()

    def _commit(self, timeout_ms: int = COMMIT_TIMEOUT_MS) -> None:
        """Commit the safe offsets; a failure (broker away, rebalance) is logged and
        the next batch commits them (or later ones) instead."""
        offsets = self._safe_offsets()
        self._last_commit = time.monotonic()
        if offsets and time.monotonic() >= self._commit_after:
            assigned = self.consumer.assignment()
            offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
            if offsets:
                try:
                    self.consumer.commit(offsets, timeout_ms=timeout_ms)
                except KafkaError as exc:
                    # not again for a while: each try blocks up to COMMIT_TIMEOUT_MS
                    self._commit_after = time.monotonic() + PROBE_S
                    log.warning(
                        "offset commit to %s failed (%r); retried with a later batch",
                        self.cfg.kafka.bootstrap,
                        exc,
                    )
                    return
                self._heard_from_broker()
            self._uncommitted = False

    def _revoked(self, revoked: set) -> None:
        # No commit here: kafka-python runs this on its IO thread, where blocking
        # calls are refused. Offsets were committed after the last poll, and only
        # as far as is safe, so the new owner re-reads what the dropped state held.
        # Eager rebalancing (kafka-python's default) revokes every partition, then
        # assigns: partitions that come straight back keep their fetch position
        # (kafka-python 3 preserves it), so they keep their state too, until
        # _assigned. Partitions already gone (cooperative protocol) are dropped now.
        current = set(self.consumer.assignment())
        self._revoking |= revoked & current
        self._forget(revoked - current)

    def _lost(self, lost: set) -> None:
        # Evicted from the group: kafka-python forgets these partitions' positions
        # and resumes them from the committed offsets; the state goes with them.
        self._revoking -= lost
        self._forget(lost)

    def _assigned(self, assigned: set) -> None:
        self._confirm_since = None  # a fresh assignment: we are a member
        for tp in self._revoking & assigned:  # kept: continue right after our state
            if tp in self.next_offset:
                self.consumer.seek(tp, self.next_offset[tp])
        self._forget(self._revoking - assigned)
        self._revoking = set()

    def _forget(self, partitions: set) -> None:
        if partitions:
            self._drop(partitions)
            for tp in partitions:
                self._resume_at.pop(tp, None)

    def _drop(self, partitions: set) -> None:
        """Forget the vehicles of ``partitions`` (revoked, or re-read after a rewind)."""
        gone = {v for v, tp in self.vehicle_tp.items() if tp in partitions}
        self._drop_vehicles(gone)
        for tp in partitions:
            self.pending.pop(tp, None)
            self.next_offset.pop(tp, None)

    def _drop_vehicles(self, gone: set[str]) -> None:
        """Forget vehicles: revoked, re-read after a rewind, retired after going quiet, or
        let go by the state limits."""
        for v in gone:  # their open incidents are no longer ours to count
            inc = self.tracker.open.get(v)
            sev = self.open_severity.pop(inc.id, None) if inc is not None else None
            if sev is not None:
                self.metrics.brand(inc.brand).active[sev[0]].dec()
        self.scorer.forget(gone)
        self.tracker.forget(gone)
        for v in gone:
            self.vehicle_tp.pop(v, None)
            num = self._vnum.pop(v, None)
            if num is not None:  # its records in ``pending`` go with the next prune
                self._vnames[num] = None
                self._vdead.append(num)

    # -- periodic -----------------------------------------------------------------

    def _count_active(self, now: float) -> None:
        """Vehicles per brand that sent telemetry within ACTIVE_S; forget older ones."""
        counts: dict[str, int] = dict.fromkeys(self._active_brands, 0)
        for vehicle, (brand, seen) in list(self.last_seen.items()):
            if now - seen > IDLE_S:
                del self.last_seen[vehicle]
                self._idle.add(vehicle)
            else:
                counts[brand] = counts.get(brand, 0) + 1
        for brand, n in counts.items():
            self.metrics.brand(brand).vehicles_active.set(n)
        self._active_brands = set(counts)

    def _housekeeping(self) -> None:
        now = time.monotonic()
        if now - self._last_reload >= self.cfg.models.reload_interval_s:
            self._last_reload = now
            self.registry.refresh()
        if now - self._last_active >= LAG_INTERVAL_S:
            self._last_active = now
            self._count_active(now)
        if now - self._last_contact >= PROBE_S and now - self._last_probe >= PROBE_S:
            self._probe(now)

    def _probe(self, now: float) -> None:
        """ListOffsets of the assigned partitions (or, while rejoining, of the last
        assigned ones), bounded by PROBE_TIMEOUT_MS: a sign of life from the broker
        when nothing else gave one. (Consumer lag is the watchdog's: it must show
        even when this loop does not come round.)"""
        assigned = list(self.consumer.assignment())
        if assigned:
            self._probe_partitions = assigned
        if not self._probe_partitions:
            return
        self._last_probe = now
        try:
            end_offsets(self.consumer, self._probe_partitions, PROBE_TIMEOUT_MS)
        except KafkaError as exc:
            log.debug("Kafka %s did not answer ListOffsets: %r", self.cfg.kafka.bootstrap, exc)
            return
        self._heard_from_broker()
