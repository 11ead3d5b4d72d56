"""Prometheus metrics of the detector (every family is named ``canwatch_*``).

Labels are bounded: brand, severity, attack, stage, reason, partition (plus
platform/version on the two info gauges). Vehicles and CAN ids are unbounded
and belong in incidents, never in labels.

Hot-path code asks once for ``metrics.brand(slug)`` and keeps the returned
``BrandMetrics``; its label children are resolved once and cached, so counting a
batch costs a few attribute look-ups, not a ``labels()`` call per frame.
``BrandMetrics.observe_scores`` bins a whole numpy array of window scores in one
pass instead of calling ``observe`` per window.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    start_http_server,
)
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from detector.core.errors import ConfigError

# Each counter and histogram child would add a *_created series (when the label
# set first appeared): 40 % of the ~200 kB exposition, read by no dashboard or
# rule, and a scrape costs the detector ~13 ms of CPU at that size. (The switch
# is prometheus_client's, for the whole process.)
disable_created_metrics()

DEFAULT_ADDRESS = "127.0.0.1:9108"

SEVERITIES = ("low", "medium", "high", "critical")
ATTACKS = ("dos", "fuzzing", "spoofing", "masquerade", "suspension", "replay", "unknown")
STAGES = ("decode", "features", "score", "incidents", "produce", "commit")
#: Why a fetched record (or a span of records) could not be read at all (the
#: Kafka record format, not canwatch's wire format): ``detector.transport.kafka_salvage``.
UNREADABLE_REASONS = (
    "bad_crc",
    "bad_batch",
    "bad_codec",
    "bad_control",
    "bad_record",
    "bad_header_name",
)
DEAD_LETTER_REASONS = (
    "missing_key",
    "bad_key",
    "missing_header",
    "unknown_content_type",
    "unknown_schema",
    "unknown_brand",
    "bad_header",
    "bad_magic",
    "truncated",
    "bad_length",
    "bad_json",
    "bad_shape",
    "bad_dlc",
    "bad_flags",
    "bad_id",
    "bad_timestamp",
    "too_large",
    "empty",
    "mismatch",
    "no_model",
    *UNREADABLE_REASONS,
)
#: Why the state limits (limits.*) shed frames: their vehicle was refused (dropped), or
#: they were pooled into their vehicle window's row of further unseen ids because
#: the instance's streams were taken or the window reached limits.max_novel_ids.
SHED_REASONS = ("vehicle_limit", "stream_limit", "novel_id_limit")
#: ... and which limit was full when vehicles were retired early to make room.
EVICTION_REASONS = ("vehicle_limit", "stream_limit")
MODEL_RELOAD_FAILURE_REASONS = ("not_found", "bad_manifest", "checksum", "incompatible", "load")

# Scores are normalised so the calibrated threshold is exactly 1.0: the buckets
# are dense around 1 (where the alarm decision is made) and sparse in the tail.
SCORE_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0, 100.0)
STAGE_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)

ALLOWED_LABELS = frozenset({"brand", "severity", "attack", "stage", "reason", "partition"})
INFO_LABELS = frozenset({"platform", "version"})

# Names as PromQL sees them (counters with their ``_total``; histograms by base name).
METRIC_NAMES = frozenset(
    {
        "canwatch_records_consumed_total",
        "canwatch_frames_consumed_total",
        "canwatch_bytes_consumed_total",
        "canwatch_vehicles_active",
        "canwatch_windows_scored_total",
        "canwatch_anomalous_windows_total",
        "canwatch_anomaly_score",
        "canwatch_incidents_opened_total",
        "canwatch_incidents_closed_total",
        "canwatch_incidents_active",
        "canwatch_stage_duration_seconds",
        "canwatch_event_time_lag_seconds",
        "canwatch_consumer_lag_records",
        "canwatch_dead_letters_total",
        "canwatch_unreadable_records_total",
        "canwatch_poll_stalled_seconds",
        "canwatch_late_frames_total",
        "canwatch_frames_shed_total",
        "canwatch_vehicles_evicted_total",
        "canwatch_state_vehicles",
        "canwatch_state_vehicles_max",
        "canwatch_state_streams",
        "canwatch_state_streams_max",
        "canwatch_model_info",
        "canwatch_model_threshold",
        "canwatch_model_reloads_total",
        "canwatch_model_reload_failures_total",
        "canwatch_rebalances_total",
        "canwatch_partitions_assigned",
        "canwatch_up",
        "canwatch_ready",
        "canwatch_build_info",
    }
)


def _version() -> str:
    try:
        return importlib.metadata.version("canwatch")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _check(value: str, allowed: Iterable[str], what: str) -> str:
    if value not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, got {value!r}")
    return value


def bucket_counts(values: np.ndarray, bounds: tuple[float, ...]) -> np.ndarray:
    """Non-cumulative counts per bucket (``le`` semantics), the last one being +Inf."""
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    return np.bincount(idx, minlength=len(bounds) + 1)


@dataclass(eq=False)
class BrandMetrics:
    """One brand's label children, resolved once (see ``DetectorMetrics.brand``)."""

    brand: str
    records: Any
    frames: Any
    windows: Any
    anomalous: Any
    late_frames: Any
    vehicles_active: Any
    score: Any
    threshold: Any
    model_reloads: Any
    shed: dict[str, Any] = field(default_factory=dict)
    evicted: dict[str, Any] = field(default_factory=dict)
    opened: dict[tuple[str, str], Any] = field(default_factory=dict)
    closed: dict[tuple[str, str], Any] = field(default_factory=dict)
    active: dict[str, Any] = field(default_factory=dict)

    def observe_scores(self, scores: np.ndarray) -> None:
        """Add a batch of window scores to the histogram in one numpy pass."""
        scores = np.asarray(scores, dtype=np.float64).ravel()
        scores = scores[~np.isnan(scores)]  # a NaN fits no bucket and would poison _sum
        if scores.size == 0:
            return
        buckets = getattr(self.score, "_buckets", None)
        total = getattr(self.score, "_sum", None)
        if buckets is None or total is None:  # a client without the internals: slow path
            for s in scores.tolist():
                self.score.observe(s)
            return
        for bucket, n in zip(buckets, bucket_counts(scores, SCORE_BUCKETS).tolist(), strict=True):
            if n:
                bucket.inc(n)
        total.inc(float(scores.sum()))

    def incident_opened(self, severity: str, attack: str) -> None:
        key = (_check(severity, SEVERITIES, "severity"), _check(attack, ATTACKS, "attack"))
        self.opened[key].inc()
        self.active[severity].inc()

    def incident_closed(self, severity: str, attack: str) -> None:
        key = (_check(severity, SEVERITIES, "severity"), _check(attack, ATTACKS, "attack"))
        self.closed[key].inc()
        self.active[severity].dec()


class DetectorMetrics:
    """Every ``canwatch_*`` family, registered on one registry.

    ``registry=None`` builds a private registry that also carries client_python's
    process/platform/gc collectors (CPU, memory, fds for the health board); tests
    pass a fresh ``CollectorRegistry()`` and read it with ``get_sample_value``.
    ``instance`` is the detector's id (the one written into incidents); it is
    not a label: Prometheus adds ``instance`` from the scrape target.
    """

    def __init__(self, registry: CollectorRegistry | None = None, instance: str = "") -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self.instance = instance
        r = registry

        def counter(name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
            return Counter(name, doc, labels, registry=r)

        def gauge(name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
            return Gauge(name, doc, labels, registry=r)

        self.records_consumed = counter(
            "canwatch_records_consumed_total", "Kafka records consumed.", ("brand",)
        )
        self.frames_consumed = counter(
            "canwatch_frames_consumed_total",
            "CAN frames decoded from consumed records.",
            ("brand",),
        )
        self.bytes_consumed = counter(
            "canwatch_bytes_consumed_total", "Bytes of record values consumed (all records)."
        )
        self.vehicles_active = gauge(
            "canwatch_vehicles_active",
            "Vehicles with at least one frame in the last few windows.",
            ("brand",),
        )
        self.windows_scored = counter(
            "canwatch_windows_scored_total", "Vehicle windows scored by the model.", ("brand",)
        )
        self.anomalous_windows = counter(
            "canwatch_anomalous_windows_total",
            "Vehicle windows scoring at or above the threshold.",
            ("brand",),
        )
        self.anomaly_score = Histogram(
            "canwatch_anomaly_score",
            "Window anomaly scores, normalised so the calibrated threshold is 1.0.",
            ("brand",),
            buckets=SCORE_BUCKETS,
            registry=r,
        )
        self.incidents_opened = counter(
            "canwatch_incidents_opened_total", "Incidents opened.", ("brand", "severity", "attack")
        )
        self.incidents_closed = counter(
            "canwatch_incidents_closed_total", "Incidents closed.", ("brand", "severity", "attack")
        )
        self.incidents_active = gauge(
            "canwatch_incidents_active", "Incidents currently open.", ("brand", "severity")
        )
        self.stage_duration = Histogram(
            "canwatch_stage_duration_seconds",
            "Wall-clock time per pipeline stage and batch.",
            ("stage",),
            buckets=STAGE_BUCKETS,
            registry=r,
        )
        self.event_time_lag = gauge(
            "canwatch_event_time_lag_seconds",
            "Wall clock minus the newest event time processed.",
            ("partition",),
        )
        self.consumer_lag = gauge(
            "canwatch_consumer_lag_records",
            "Records between the consumer's fetch position and the partition's log end "
            "offset, both read by the watchdog (NaN while the broker does not answer).",
            ("partition",),
        )
        self.dead_letters = counter(
            "canwatch_dead_letters_total", "Records sent to the dead-letter topic.", ("reason",)
        )
        self.unreadable_records = counter(
            "canwatch_unreadable_records_total",
            "Offsets of fetched records that could not be read as Kafka records (each "
            "record, or span of records, is one dead letter), by reason.",
            ("reason",),
        )
        self.poll_stalled = gauge(
            "canwatch_poll_stalled_seconds",
            "Seconds since the poll loop last made progress while records wait (or since "
            "it last came round), as the watchdog sees it; 0 when not stalled.",
        )
        self.late_frames = counter(
            "canwatch_late_frames_total",
            "Frames older than an already closed window (dropped).",
            ("brand",),
        )
        self.frames_shed = counter(
            "canwatch_frames_shed_total",
            "Frames the state limits kept from a stream of their own: dropped "
            "(vehicle_limit: their vehicle was not admitted) or pooled into their vehicle "
            "window's row of further unseen ids (stream_limit, novel_id_limit).",
            ("brand", "reason"),
        )
        self.vehicles_evicted = counter(
            "canwatch_vehicles_evicted_total",
            "Vehicles that never had a window scored, retired to make room for new ones "
            "(their open window scored first), by the limit that was full.",
            ("brand", "reason"),
        )
        self.state_vehicles = gauge("canwatch_state_vehicles", "Vehicles whose state is held.")
        self.state_vehicles_max = gauge(
            "canwatch_state_vehicles_max", "Vehicles the state may hold (limits.max_vehicles)."
        )
        self.state_streams = gauge(
            "canwatch_state_streams", "(vehicle, CAN id) streams whose state is held."
        )
        self.state_streams_max = gauge(
            "canwatch_state_streams_max", "Streams the state may hold (limits.max_streams)."
        )
        self.model_info = gauge(
            "canwatch_model_info",
            "1 for the model loaded for each brand.",
            ("brand", "platform", "version"),
        )
        self.model_threshold = gauge(
            "canwatch_model_threshold", "Raw score threshold of the loaded model.", ("brand",)
        )
        self.model_reloads = counter(
            "canwatch_model_reloads_total", "Successful model (re)loads.", ("brand",)
        )
        self.model_reload_failures = counter(
            "canwatch_model_reload_failures_total", "Failed model (re)loads.", ("reason",)
        )
        self.rebalances = counter("canwatch_rebalances_total", "Consumer-group rebalances seen.")
        self.partitions_assigned = gauge(
            "canwatch_partitions_assigned", "Partitions currently assigned to this instance."
        )
        self.up = gauge("canwatch_up", "1 while the main loop runs.")
        self.ready = gauge(
            "canwatch_ready", "1 when connected to Kafka with models loaded, 0 while waiting."
        )
        self.build_info = gauge(
            "canwatch_build_info", "Build of the running detector.", ("version",)
        )
        self.build_info.labels(_version()).set(1)

        # Series that exist from the start, so rate()/increase() see their first
        # increment and alerts on them can fire.
        self._dead_letters = {r: self.dead_letters.labels(r) for r in DEAD_LETTER_REASONS}
        self._unreadable = {r: self.unreadable_records.labels(r) for r in UNREADABLE_REASONS}
        self._reload_failures = {
            r: self.model_reload_failures.labels(r) for r in MODEL_RELOAD_FAILURE_REASONS
        }
        self.stages = {s: self.stage_duration.labels(s) for s in STAGES}
        self._brands: dict[str, BrandMetrics] = {}
        self._models: dict[str, tuple[str, str]] = {}
        self._partitions: set[str] = set()  # partitions with lag series
        self._lagged: set[str] = set()  # partitions with a consumer-lag series

    # -- per brand -----------------------------------------------------------------

    def brand(self, brand: str) -> BrandMetrics:
        """The cached children of ``brand`` (created, at zero, on first use)."""
        found = self._brands.get(brand)
        if found is None:
            found = self._brands[brand] = self._make_brand(brand)
        return found

    def _make_brand(self, b: str) -> BrandMetrics:
        return BrandMetrics(
            brand=b,
            records=self.records_consumed.labels(b),
            frames=self.frames_consumed.labels(b),
            windows=self.windows_scored.labels(b),
            anomalous=self.anomalous_windows.labels(b),
            late_frames=self.late_frames.labels(b),
            vehicles_active=self.vehicles_active.labels(b),
            score=self.anomaly_score.labels(b),
            threshold=self.model_threshold.labels(b),
            model_reloads=self.model_reloads.labels(b),
            shed={r: self.frames_shed.labels(b, r) for r in SHED_REASONS},
            evicted={r: self.vehicles_evicted.labels(b, r) for r in EVICTION_REASONS},
            opened={
                (s, a): self.incidents_opened.labels(b, s, a) for s in SEVERITIES for a in ATTACKS
            },
            closed={
                (s, a): self.incidents_closed.labels(b, s, a) for s in SEVERITIES for a in ATTACKS
            },
            active={s: self.incidents_active.labels(b, s) for s in SEVERITIES},
        )

    # -- models --------------------------------------------------------------------

    def set_model(self, brand: str, platform: str, version: str, threshold: float) -> None:
        """Record the model now serving ``brand``; the previous info series goes away."""
        b = self.brand(brand)
        old = self._models.get(brand)
        if old is not None and old != (platform, version):
            self.model_info.remove(brand, *old)
        self.model_info.labels(brand, platform, version).set(1)
        self._models[brand] = (platform, version)
        b.threshold.set(threshold)
        b.model_reloads.inc()

    def model_reload_failed(self, reason: str) -> None:
        self._reload_failures[_check(reason, MODEL_RELOAD_FAILURE_REASONS, "reason")].inc()

    # -- state limits ----------------------------------------------------------------

    def set_state_limits(self, max_vehicles: int, max_streams: int) -> None:
        self.state_vehicles_max.set(max_vehicles)
        self.state_streams_max.set(max_streams)

    def set_state(self, vehicles: int, streams: int) -> None:
        self.state_vehicles.set(vehicles)
        self.state_streams.set(streams)

    def shed(
        self, frames: dict[tuple[str, str], int], vehicles: dict[tuple[str, str], int]
    ) -> None:
        """Count what the limits shed: frames and vehicles by (brand, reason)."""
        for (brand, reason), n in frames.items():
            self.brand(brand).shed[_check(reason, SHED_REASONS, "shed reason")].inc(n)
        for (brand, reason), n in vehicles.items():
            self.brand(brand).evicted[_check(reason, EVICTION_REASONS, "eviction reason")].inc(n)

    # -- consumer ------------------------------------------------------------------

    def dead_letter(self, reason: str, n: int = 1) -> None:
        self._dead_letters[_check(reason, DEAD_LETTER_REASONS, "dead-letter reason")].inc(n)

    def unreadable(self, reason: str, offsets: int) -> None:
        """A record, or a span of ``offsets`` records, that could not be read at all."""
        self._unreadable[_check(reason, UNREADABLE_REASONS, "unreadable reason")].inc(offsets)

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages[_check(stage, STAGES, "stage")].observe(seconds)

    def set_partition_lag(
        self, partition: int | str, event_time_lag_s: float | None, consumer_lag: int | None
    ) -> None:
        p = str(partition)
        self._partitions.add(p)
        if event_time_lag_s is not None:
            self.event_time_lag.labels(p).set(event_time_lag_s)
        if consumer_lag is not None:
            self.consumer_lag.labels(p).set(consumer_lag)

    def set_consumer_lag(self, lags: dict[int, float]) -> None:
        """Consumer lag of exactly the partitions in ``lags`` (NaN: unknown); the
        series of any other partition goes away."""
        keep = {str(p) for p in lags}
        for p in self._lagged - keep:
            with contextlib.suppress(KeyError):
                self.consumer_lag.remove(p)
        for p, lag in lags.items():
            self.consumer_lag.labels(str(p)).set(lag)
        self._lagged = keep

    def rebalanced(self, assigned: Iterable[int | str]) -> None:
        """After a rebalance: count it and drop lag series of partitions we no longer own."""
        keep = {str(p) for p in assigned}
        self.rebalances.inc()
        self.partitions_assigned.set(len(keep))
        for p in self._partitions - keep:
            for gauge in (self.event_time_lag, self.consumer_lag):
                with contextlib.suppress(KeyError):  # only one of the two was set
                    gauge.remove(p)
        self._partitions &= keep

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    # -- HTTP ----------------------------------------------------------------------

    def serve(self, address: str = DEFAULT_ADDRESS) -> Any:
        """Serve /metrics on exactly ``address`` (host:port); returns the server.

        ``server.server_address`` gives the bound port (useful with port 0);
        ``server.shutdown()`` stops it.
        """
        host, port = parse_address(address)
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server


def parse_address(address: str) -> tuple[str, int]:
    """Split ``host:port`` / ``[v6]:port``; an empty host is refused, not read as 0.0.0.0."""
    host, sep, port = address.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"metrics.address must be host:port with an explicit host, got {address!r}"
        )
    return host, int(port)
