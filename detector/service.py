"""The long-running detector: Kafka in, incidents and metrics out.

One poll is one unit of work: decode (bad records → DLQ), score, fold into
incidents, publish incidents and dead letters, wait for the broker to
acknowledge them, and only then commit offsets. Offsets are committed up to
the oldest record whose frames still sit in an open window (or in the last
closed one, which a restart re-forms as its partial first window), so after a
crash every window is re-formed from re-read records and scored, and the
incidents it re-emits carry the same deterministic ids (at-least-once).

On a rebalance the revoked partitions' vehicles are *dropped*: their offsets
were committed only as far as their open windows, so the new owner re-reads
and rebuilds exactly that state.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from collections import defaultdict

import numpy as np

from detector.brands import Fleet
from detector.config import Config
from detector.errors import DecodeError, ModelError
from detector.incidents import IncidentTracker, observations
from detector.kafka_io import end_offsets, make_consumer, make_producer
from detector.metrics import DetectorMetrics
from detector.model import PlatformModel
from detector.model_registry import ModelRegistry, failure_reason
from detector.pipeline import Scorer, vehicle_clock, window_scores
from detector.privacy import load_key, pseudonym, scrub
from detector.wire import decode_record

log = logging.getLogger("canwatch.detect")
NO_MODEL = "no_model"
LAG_INTERVAL_S = 5.0
ACTIVE_S = 60.0  # a vehicle counts as active this long after its last record


def default_detector_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}"


class Detector:
    def __init__(
        self, cfg: Config, fleet: Fleet, metrics: DetectorMetrics, detector_id: str | None = None
    ) -> None:
        self.cfg = cfg
        self.fleet = fleet
        self.metrics = metrics
        self.detector_id = detector_id or default_detector_id()
        self.window_s = cfg.detection.window_s
        self.registry = ModelRegistry(cfg.models.dir, self._model_loaded, self._model_refused)
        self.scorer = Scorer({}, fleet, self.window_s)
        self.tracker = IncidentTracker(cfg.incidents, self.detector_id)
        self.privacy_key = load_key(cfg.privacy)  # validated before anything connects
        self.pending: dict = defaultdict(list)  # tp -> [(offset, vehicle, brand, newest ts)]
        self.next_offset: dict = {}  # tp -> offset after the last record seen
        self.vehicle_tp: dict[str, object] = {}
        self.last_seen: dict[str, tuple[str, float]] = {}  # vehicle -> (brand, wall clock)
        self.open_severity: dict[str, tuple[str, str]] = {}
        self.consumer = None
        self.producer = None
        self._last_reload = 0.0
        self._last_lag = 0.0
        self._last_active = 0.0
        self._active_brands: set[str] = set()

    # -- models ----------------------------------------------------------------

    def _model_loaded(self, model: PlatformModel) -> None:
        self.scorer.set_model(model)
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
                detector._revoked(set(revoked))

            def on_partitions_assigned(self, assigned):
                detector.metrics.rebalanced([tp.partition for tp in assigned])
                log.info("assigned partitions %s", sorted(tp.partition for tp in assigned))

        self.registry.refresh()
        self._last_reload = time.monotonic()
        self.producer = make_producer(self.cfg.kafka)
        self.consumer = make_consumer(self.cfg.kafka, [], self.cfg.kafka.group_id)
        self.consumer.subscribe([self.cfg.kafka.telemetry_topic], listener=Listener())
        self.metrics.set_up(True)

    def run(self, stop: threading.Event) -> None:
        """Poll until ``stop`` is set; then finish the batch, flush, commit, close."""
        self.start()
        try:
            while not stop.is_set():
                self.step()
        finally:
            self.close()

    def close(self) -> None:
        try:
            if self.producer is not None:
                self.producer.flush()
            if self.consumer is not None:
                self._commit()
                self.consumer.close(autocommit=False)
            if self.producer is not None:
                self.producer.close()
        finally:
            self.metrics.set_up(False)
            self.metrics.set_ready(False)

    # -- one poll -----------------------------------------------------------------

    def step(self, timeout_ms: int = 200) -> int:
        """One poll → decode → score → incidents → ack → commit. Returns records handled."""
        self._housekeeping()
        polled = self.consumer.poll(
            timeout_ms=timeout_ms, max_records=self.cfg.kafka.max_poll_records
        )
        self.metrics.set_ready(bool(self.scorer.models) and bool(self.consumer.assignment()))
        n = sum(len(v) for v in polled.values())
        if n == 0:
            return 0
        t0 = time.perf_counter()
        batches, futures = self._decode(polled)
        t1 = time.perf_counter()
        self.metrics.observe_stage("decode", t1 - t0)
        before = dict(self.scorer.seconds)
        scored = self.scorer.push(batches) if batches else []
        t2 = time.perf_counter()
        for stage in ("features", "score"):
            self.metrics.observe_stage(stage, self.scorer.seconds[stage] - before[stage])
        for brand, n in self.scorer.late_by_brand.items():
            self.metrics.brand(brand).late_frames.inc(n)
        self.scorer.late_by_brand.clear()
        events = self._incidents(scored)
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
        self.producer.flush()
        for f in futures:
            f.get(timeout=30)  # raises if the broker did not acknowledge: nothing is committed
        t4 = time.perf_counter()
        self.metrics.observe_stage("produce", t4 - t3)
        self._commit()
        self.metrics.observe_stage("commit", time.perf_counter() - t4)
        return n

    def _decode(self, polled: dict) -> tuple[list, list]:
        batches, futures = [], []
        known = self._known_brands()
        now = time.time()
        det = self.cfg.detection
        newest: dict = {}
        for tp, records in polled.items():
            for r in records:
                self.next_offset[tp] = r.offset + 1
                self.metrics.bytes_consumed.inc(len(r.value or b""))
                try:
                    b = decode_record(
                        r.key,
                        r.value,
                        r.headers,
                        known_brands=known,
                        now=now,
                        max_future_s=det.max_future_s,
                        min_ts=det.min_ts,
                    )
                    if self.privacy_key is not None:
                        b = type(b)(pseudonym(self.privacy_key, b.vehicle), b.brand, b.frames)
                    if self.scorer.platform_for(b.brand) is None:
                        raise DecodeError(NO_MODEL, f"no model loaded for brand {b.brand!r}")
                except DecodeError as exc:
                    futures.append(self._dead_letter(r, exc))
                    continue
                bm = self.metrics.brand(b.brand)
                bm.records.inc()
                bm.frames.inc(len(b.frames))
                batches.append((b.vehicle, b.brand, b.frames))
                ts_max = float(b.frames["ts"].max())
                self.pending[tp].append((r.offset, b.vehicle, b.brand, ts_max))
                self.vehicle_tp[b.vehicle] = tp
                self.last_seen[b.vehicle] = (b.brand, time.monotonic())
                newest[tp] = max(newest.get(tp, 0.0), ts_max)
        for tp, ts in newest.items():
            self.metrics.set_partition_lag(tp.partition, max(now - ts, 0.0), None)
        return batches, futures

    def _dead_letter(self, record, exc: DecodeError):
        self.metrics.dead_letter(exc.reason)
        key, value = record.key, record.value
        detail = exc.detail[:500].encode("utf-8", "replace")
        if self.privacy_key is not None:  # the raw id may sit in the key, the body or the detail
            key, value = scrub(self.privacy_key, record.key, record.value)
            detail = scrub(self.privacy_key, record.key, detail)[1]
        headers = list(record.headers or []) + [
            ("error", exc.reason.encode()),
            ("error-detail", detail),
            ("source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
        ]
        return self.producer.send(self.cfg.kafka.dlq_topic, key=key, value=value, headers=headers)

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

    def _safe_offsets(self) -> dict:
        """Per partition: the oldest record that may still be needed to re-form a window."""
        from kafka.structs import OffsetAndMetadata

        out = {}
        for tp, nxt in self.next_offset.items():
            keep = []
            for item in self.pending.get(tp, []):
                _, vehicle, brand, ts_max = item
                if ts_max >= self.scorer.closed_until(vehicle, brand) - self.window_s:
                    keep.append(item)
            self.pending[tp] = keep
            offset = min((o for o, *_ in keep), default=nxt)
            out[tp] = OffsetAndMetadata(offset, "", -1)
        return out

    def _commit(self) -> None:
        offsets = self._safe_offsets()
        if offsets:
            assigned = self.consumer.assignment()
            offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
            if offsets:
                self.consumer.commit(offsets)

    def _revoked(self, revoked: set) -> None:
        # No commit here: kafka-python runs this on its IO thread, where blocking
        # calls are refused. Offsets were committed after the last poll, and only
        # as far as is safe, so the new owner re-reads what the dropped state held.
        gone = {v for v, tp in self.vehicle_tp.items() if tp in revoked}
        self.scorer.forget(gone)
        self.tracker.forget(gone)
        for v in gone:
            self.vehicle_tp.pop(v, None)
        for tp in revoked:
            self.pending.pop(tp, None)
            self.next_offset.pop(tp, None)

    # -- periodic -----------------------------------------------------------------

    def _count_active(self, now: float) -> None:
        """Vehicles per brand that sent telemetry within ACTIVE_S; forget older ones."""
        counts: dict[str, int] = dict.fromkeys(self._active_brands, 0)
        for vehicle, (brand, seen) in list(self.last_seen.items()):
            if now - seen > ACTIVE_S:
                del self.last_seen[vehicle]
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
        if now - self._last_lag >= LAG_INTERVAL_S and self.consumer.assignment():
            self._last_lag = now
            assigned = list(self.consumer.assignment())
            try:
                ends = end_offsets(self.consumer, assigned)
                for tp in assigned:
                    pos = self.consumer.position(tp, timeout_ms=1000)
                    if pos is not None and tp in ends:
                        self.metrics.set_partition_lag(tp.partition, None, max(ends[tp] - pos, 0))
            except Exception as exc:  # lag is best effort; never stop consuming for it
                log.debug("consumer lag unavailable: %s", exc)
