"""Health judged from outside the poll loop: consumer lag, stalls, readiness.

A poll loop cannot report that it is stuck: in issue 21 one poisoned record
left ``canwatch detect`` spinning inside kafka-python's ``poll()`` while
``canwatch_ready`` said 1 and ``canwatch_consumer_lag_records`` said 0 on
every partition, because the loop computed both and the loop never came back.
The ``Watchdog`` thread computes them instead, once a tick, from

- the broker's log end offsets, read by a Kafka client of its own
  (``EndOffsets``): Tansu answers ListOffsets(latest) with the base offset of
  the last batch + 1 (it under-reports by up to a batch), so each probe also
  fetches from the detector's position where ListOffsets shows it caught up,
  and takes the high watermark of the Fetch response, which is exact (where
  ListOffsets is past the position no fetch is spent, and lag is a lower
  bound on Tansu, by less than a batch); an empty response, with ListOffsets not
  past the position either, means nothing waits there, whatever the high
  watermark says (Tansu numbers batches it refuses);
- the detector consumer's fetch positions (kafka-python's subscription
  state, read without calling into the client), and the time the loop last
  went round (``LoopState.beat``).

``StallWatch`` (pure, tested without Kafka) decides: a partition is stalled
when records wait on it (end offset past the position) and its position has
not advanced, nor been caught up, for ``watchdog.stall_s``; the loop is
stalled when it has not gone round for ``stall_s``. While stalled:
``canwatch_ready`` is 0 whatever the loop last claimed,
``canwatch_poll_stalled_seconds`` counts the seconds since the last progress,
one warning names the partitions, and after ``watchdog.exit_s`` without
progress ``on_exit`` is called (``canwatch detect`` exits non-zero so its
supervisor restarts it; at-least-once loses nothing). Lag is exported only
from end offsets fetched within two probe intervals: NaN, not an old number,
while the broker does not answer. The probe never counts a broker that does
not answer as a stall (that is an outage: the loop reports it, and waits).
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from detector.core.config import Config
from detector.service.metrics import DetectorMetrics
from detector.transport.kafka_salvage import BATCH_FRAME, framed_last_offset

log = logging.getLogger("canwatch.watchdog")

PROBE_MAX_S = 5.0  # end offsets at least this often
PROBE_TIMEOUT_MS = 1000
PROBE_BOOTSTRAP_MS = 5000


@dataclass(frozen=True)
class LoopState:
    """What the poll loop publishes for the watchdog (read from another thread)."""

    beat: float  # monotonic time the loop last went round
    positions: dict  # assigned partition -> fetch position (None: not known yet)
    newest: dict = field(default_factory=dict)  # partition -> newest event time processed


@dataclass(frozen=True)
class Verdict:
    stalled: bool
    stalled_s: float  # seconds since the last progress, while stalled; else 0
    partitions: tuple  # partitions with records waiting and no progress
    loop_silent_s: float  # seconds since the loop last went round
    exit_due: bool


class StallWatch:
    """Decides, tick by tick, whether the poll loop is stalled (see the module doc)."""

    def __init__(self, stall_s: float, exit_s: float) -> None:
        self.stall_s, self.exit_s = stall_s, exit_s
        self._mark: dict = {}  # partition -> (highest position seen, time of progress)

    def observe(self, now: float, state: LoopState, ends: dict | None) -> Verdict:
        """``ends``: log end offsets fetched recently enough to trust, or None."""
        for tp in list(self._mark):
            if tp not in state.positions:  # revoked: a new assignment starts afresh
                del self._mark[tp]
        stalled, since = [], []
        for tp, pos in state.positions.items():
            if pos is None:
                continue
            best, at = self._mark.get(tp, (None, now))
            end = None if ends is None else ends.get(tp)
            if best is None or pos > best or end is None or end <= pos:
                # progress, caught up, or no word from the broker: time without evidence
                # of records waiting does not count (an outage is not a stall)
                best, at = max(pos, best if best is not None else pos), now
            self._mark[tp] = (best, at)
            if end is not None and end > pos and now - at >= self.stall_s:
                stalled.append(tp)
                since.append(at)
        silent = max(now - state.beat, 0.0)
        if silent >= self.stall_s:
            since.append(state.beat)
        if not since:
            return Verdict(False, 0.0, (), silent, False)
        stalled_s = now - min(since)
        return Verdict(True, stalled_s, tuple(stalled), silent, stalled_s >= self.exit_s)


class Health:
    """``canwatch_ready`` from the loop's claim and the watchdog's verdict, published
    by whichever changes (both run often; the lock keeps the last word consistent)."""

    def __init__(self, metrics: DetectorMetrics) -> None:
        self.metrics = metrics
        self._lock = threading.Lock()
        self._loop_ready = False
        self._stalled = False

    def loop_ready(self, ready: bool) -> None:
        with self._lock:
            self._loop_ready = ready
            self._publish()

    def stalled(self, stalled: bool) -> None:
        with self._lock:
            self._stalled = stalled
            self._publish()

    def _publish(self) -> None:
        self.metrics.set_ready(self._loop_ready and not self._stalled)


class EndOffsets:
    """Where each partition's readable records end, from a Kafka client of the watchdog's
    own (see the module doc). Created on first use; every call bounded in time.

    For each partition it asks ListOffsets(latest), then fetches from the detector's
    position: the response's high watermark is the true log end even where
    ListOffsets under-reports, and whether the response holds any bytes says whether
    anything is readable past the position at all (Tansu also numbers batches it
    refuses: a high watermark past the last stored batch holds nothing to read).
    The fetch never parses a record: they are dropped unread (``_high_water_only``),
    so a batch that hangs the poll loop's parse cannot hang the watchdog too. That
    replaces a private class on this client's fetcher, so it is done only for the
    kafka-python canwatch pins; with another the ends are ListOffsets' alone (exact
    on Kafka, a lower bound on Tansu)."""

    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self._consumer: Any = None
        self._assigned: frozenset = frozenset()
        self._readable: dict = {}  # partition -> [position, whether the fetch reached it]
        self.verified = False  # whether a fetch checks ListOffsets

    def __call__(self, positions: dict) -> dict:
        """{partition: end}: the log end offset, or the position itself when nothing
        readable lies past it; raises if the broker does not answer."""
        if self._consumer is None:
            self._consumer = self._connect()
        try:
            return self._ends(self._consumer, positions)
        except Exception:
            self.close()  # a fresh client next time, whatever state this one is in
            raise

    def _ends(self, c: Any, positions: dict) -> dict:
        partitions = list(positions)
        if frozenset(partitions) != self._assigned:
            c.assign(partitions)
            self._assigned = frozenset(partitions)
        answer = c.end_offsets(partitions, PROBE_TIMEOUT_MS)
        listed = {tp: int(answer.get(tp) or 0) for tp in partitions}
        if not self.verified:
            return listed
        states = c._subscription.assignment
        # ListOffsets past the position already proves records waiting (a lower bound
        # on Tansu): only partitions it shows caught up cost a fetch
        behind = [tp for tp in partitions if (positions[tp] or 0) < listed[tp]]
        partitions = [tp for tp in partitions if tp not in behind]
        for tp in partitions:
            at = positions[tp]
            known = max(listed[tp], int(states[tp].highwater or 0))  # never seek past the end
            c.seek(tp, known if at is None or at > known else at)
            states[tp].highwater = None
            self._readable[tp] = [at, False]
        deadline = time.monotonic() + PROBE_TIMEOUT_MS / 1000
        while time.monotonic() < deadline and any(c.highwater(tp) is None for tp in partitions):
            c.poll(timeout_ms=50)  # returns no records: the fetcher drops them unread
        ends = {tp: listed[tp] for tp in behind}
        for tp in partitions:
            end = max(listed[tp], int(c.highwater(tp) or 0))
            at, reached = self._readable[tp]
            if at is not None and c.highwater(tp) is not None and not reached:
                # Nothing to give from the position on. Nothing waits there unless the
                # broker stores batches further on (its ListOffsets says so): a broker
                # that will not serve from inside a gap (Tansu, after a refused batch it
                # numbered) leaves a stall, and the watchdog must see it.
                if listed[tp] <= at:
                    end = min(end, at)
            ends[tp] = end
        return ends

    def _connect(self) -> Any:
        import kafka
        from kafka import KafkaConsumer

        from detector.transport.kafka_io import consumer_config
        from detector.transport.kafka_records import KAFKA_PYTHON_VERSION

        kwargs = consumer_config(self.cfg.kafka)
        kwargs.update(
            group_id=None,  # reads end offsets only: never joins the detector's group
            client_id=f"{self.cfg.kafka.client_id}-watchdog",
            max_partition_fetch_bytes=1,  # at least one batch comes anyway (KIP-74)
            bootstrap_timeout_ms=PROBE_BOOTSTRAP_MS,
            reconnect_backoff_max_ms=1000,
        )
        consumer = KafkaConsumer(**kwargs)
        fetcher = getattr(consumer, "_fetcher", None)
        self.verified = kafka.__version__ == KAFKA_PYTHON_VERSION and fetcher is not None
        if self.verified:
            fetcher.PartitionRecords = _high_water_only(self._readable)
        return consumer

    def close(self) -> None:
        consumer, self._consumer = self._consumer, None
        self._assigned = frozenset()
        if consumer is not None:
            try:
                consumer.close(autocommit=False, timeout_ms=PROBE_TIMEOUT_MS)
            except Exception as exc:  # closing a broken client must not break the detector
                log.debug("closing the watchdog's consumer: %r", exc)


def _high_water_only(readable: dict) -> type:
    """kafka-python's PartitionRecords that yields no record (the fetcher has read the
    partition's high watermark from the response before it asks for records) and
    notes in ``readable[tp][1]`` whether the response holds a batch reaching the
    position ``readable[tp][0]``."""
    from kafka.consumer.fetcher import Fetcher

    class HighWaterOnly(Fetcher.PartitionRecords):
        def __init__(self, fetch_offset, tp, records, *args, **kwargs):
            super().__init__(fetch_offset, tp, records, *args, **kwargs)
            wanted = readable.get(tp)
            if wanted is not None and wanted[0] is not None:
                wanted[1] = _reaches(records._buffer, wanted[0])

        def _unpack_records(self, tp, records, key_deserializer, value_deserializer):
            self.drain()  # done: the fetcher moves on (an undrained one it spins on)
            yield from ()

    return HighWaterOnly


def _reaches(data, offset: int) -> bool:
    """Whether fetched bytes hold a batch whose last offset is ``offset`` or later (by
    its framing alone: base offset, and for v2 the last offset delta)."""
    pos, size = 0, len(data)
    while size - pos >= 17:
        base, length = BATCH_FRAME.unpack_from(data, pos)
        if length < 0:
            break
        last = base
        if data[pos + 16] == 2 and size - pos >= 27:
            last = framed_last_offset(data, pos, base)
        if last >= offset:
            return True
        pos += 12 + length
    return False


class Watchdog(threading.Thread):
    """Every tick: end offsets (every probe interval), then the verdict, the metrics,
    the log line, and the exit (see the module doc)."""

    def __init__(
        self,
        cfg: Config,
        metrics: DetectorMetrics,
        health: Health,
        loop_state: Callable[[], LoopState],
        on_exit: Callable[[str], None],
        end_offsets: Callable[[dict], dict] | None = None,
    ) -> None:
        super().__init__(name="canwatch-watchdog", daemon=True)
        w = cfg.watchdog
        self.watch = StallWatch(w.stall_s, w.exit_s)
        self.metrics, self.health = metrics, health
        self.loop_state, self.on_exit = loop_state, on_exit
        self.tick_s = min(1.0, w.stall_s / 4)
        self.probe_s = min(PROBE_MAX_S, w.stall_s / 3)
        self._ends_of = end_offsets if end_offsets is not None else EndOffsets(cfg)
        self._ends: dict = {}
        self._ends_at = -math.inf
        self._last_probe = -math.inf
        self._reported = False  # a stall is under way and was logged
        self._exited = False
        self._halt = threading.Event()

    def stop(self, timeout_s: float = 2.0) -> None:
        self._halt.set()
        if self.is_alive() and threading.current_thread() is not self:
            self.join(timeout_s)

    def run(self) -> None:
        try:
            while not self._halt.wait(self.tick_s):
                try:
                    self.tick(time.monotonic())
                except Exception:  # the watchdog must outlive whatever it watches
                    log.exception("watchdog tick failed")
        finally:
            close = getattr(self._ends_of, "close", None)
            if close is not None:
                close()

    def tick(self, now: float) -> Verdict:
        state = self.loop_state()
        if now - self._last_probe >= self.probe_s and state.positions:
            self._probe(now, state.positions)
        fresh = now - self._ends_at <= 2 * self.probe_s + self.tick_s
        ends = self._ends if fresh else None
        verdict = self.watch.observe(now, state, ends)
        self._export(state, ends, verdict)
        self._report(verdict, state)
        if verdict.exit_due and not self._exited:
            self._exited = True
            why = self._describe(verdict, state)
            log.error(
                "no progress for %.0f s (watchdog.exit_s %g): %s; exiting so that the "
                "supervisor restarts the detector (uncommitted records are read again)",
                verdict.stalled_s,
                self.watch.exit_s,
                why,
            )
            self.on_exit(why)
        return verdict

    def _probe(self, now: float, positions: dict) -> None:
        self._last_probe = now
        try:
            self._ends = self._ends_of(positions)
            self._ends_at = now
        except Exception as exc:  # the broker does not answer: an outage, not a stall
            log.debug("watchdog: no end offsets from Kafka: %r", exc)

    def _export(self, state: LoopState, ends: dict | None, verdict: Verdict) -> None:
        lags = {}
        for tp, pos in state.positions.items():
            end = None if ends is None else ends.get(tp)
            lags[tp.partition] = (
                float(max(end - pos, 0)) if end is not None and pos is not None else math.nan
            )
        self.metrics.set_consumer_lag(lags)
        wall = time.time()
        for tp, newest in state.newest.items():
            if tp in state.positions:
                self.metrics.set_partition_lag(tp.partition, max(wall - newest, 0.0), None)
        self.metrics.poll_stalled.set(verdict.stalled_s)
        self.health.stalled(verdict.stalled)

    def _report(self, verdict: Verdict, state: LoopState) -> None:
        """One line when a stall begins, one when it ends."""
        if verdict.stalled and not self._reported:
            self._reported = True
            log.warning(
                "poll loop stalled for %.0f s: %s; canwatch_ready 0, exit after %g s without "
                "progress (watchdog.exit_s)",
                verdict.stalled_s,
                self._describe(verdict, state),
                self.watch.exit_s,
            )
        elif not verdict.stalled and self._reported:
            self._reported = False
            log.info("poll loop progressing again")

    def _describe(self, verdict: Verdict, state: LoopState) -> str:
        parts = []
        waiting = sorted(
            tp
            for tp, pos in state.positions.items()
            if pos is not None and self._ends.get(tp, -1) > pos
        )
        if waiting:
            names = ", ".join(
                f"{tp.topic}/{tp.partition} at {state.positions[tp]} of {self._ends[tp]}"
                for tp in waiting
            )
            parts.append(f"records wait on {names}")
        if verdict.partitions:
            parts.append("the position does not advance")
        if verdict.loop_silent_s >= self.watch.stall_s:
            parts.append(f"the poll loop has not come round for {verdict.loop_silent_s:.0f} s")
        return "; ".join(parts)
