"""Prometheus metrics of the detector (every family is named ``canwatch_*``).

Labels are bounded: brand, severity, attack, stage, reason, partition (plus
platform/version on the two info gauges). Vehicles and CAN ids are unbounded
and belong in incidents, never in labels.

The families are split by what they measure, each part on the same registry:
``consumption`` (records in, stage durations, lag), ``detection``
(scores, incidents, models), ``drift`` (how far traffic moved from what each
serving model learned), ``state`` (state held against limits.*, what they
shed) and ``health`` (up, ready, stalls, dead letters).
``DetectorMetrics`` composes them and is what the service is handed.

Hot-path code asks once for ``metrics.brand(slug)`` and keeps the returned
``BrandMetrics``; its label children are resolved once and cached, so counting a
batch costs a few attribute look-ups, not a ``labels()`` call per frame.
``BrandMetrics.observe_scores`` bins a whole numpy array of window scores in one
pass instead of calling ``observe`` per window.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from detector.core.errors import ConfigError
from detector.service.metrics.consumption import STAGE_BUCKETS, STAGES, ConsumptionMetrics
from detector.service.metrics.detection import (
    ATTACKS,
    MODEL_RELOAD_FAILURE_REASONS,
    SCORE_BUCKETS,
    SEVERITIES,
    DetectionMetrics,
)
from detector.service.metrics.drift import DriftMetrics
from detector.service.metrics.families import check_label
from detector.service.metrics.health import (
    DEAD_LETTER_REASONS,
    UNREADABLE_REASONS,
    HealthMetrics,
)
from detector.service.metrics.shadow import ROLES, ShadowMetrics
from detector.service.metrics.state import EVICTION_REASONS, SHED_REASONS, StateMetrics

__all__ = [
    "ALLOWED_LABELS",
    "ATTACKS",
    "DEAD_LETTER_REASONS",
    "DEFAULT_ADDRESS",
    "EVICTION_REASONS",
    "INFO_LABELS",
    "METRIC_NAMES",
    "MODEL_RELOAD_FAILURE_REASONS",
    "ROLES",
    "SCORE_BUCKETS",
    "SEVERITIES",
    "SHADOW_METRIC_NAMES",
    "SHED_REASONS",
    "STAGES",
    "STAGE_BUCKETS",
    "UNREADABLE_REASONS",
    "BrandMetrics",
    "DetectorMetrics",
    "bucket_counts",
    "parse_address",
]

DEFAULT_ADDRESS = "127.0.0.1:9108"

ALLOWED_LABELS = frozenset(
    {"brand", "severity", "attack", "stage", "reason", "partition", "role"}
)
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
        "canwatch_incidents_escalated_total",
        "canwatch_incidents_active",
        "canwatch_stage_duration_seconds",
        "canwatch_event_time_lag_seconds",
        "canwatch_consumer_lag_records",
        "canwatch_dead_letters_total",
        "canwatch_unreadable_records_total",
        "canwatch_poll_stalled_seconds",
        "canwatch_late_frames_total",
        "canwatch_telemetry_gaps_total",
        "canwatch_clock_resets_total",
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
        "canwatch_model_windows_total",
        "canwatch_model_anomalous_windows_total",
        "canwatch_model_incidents_total",
        "canwatch_shadow_agreement_ratio",
        "canwatch_model_version",
        "canwatch_model_drift_ratio",
        "canwatch_model_drift_windows",
        "canwatch_model_drift_outside_windows",
        "canwatch_model_rate_drift",
        "canwatch_model_drift_limit",
        "canwatch_rebalances_total",
        "canwatch_partitions_assigned",
        "canwatch_up",
        "canwatch_ready",
        "canwatch_build_info",
    }
)

#: Serving vs shadow model families (``role``: serving | shadow, or the shadow's
#: agreement): what the model-owner board compares.
SHADOW_METRIC_NAMES = frozenset(
    {
        "canwatch_model_windows_total",
        "canwatch_model_anomalous_windows_total",
        "canwatch_model_incidents_total",
        "canwatch_shadow_agreement_ratio",
        "canwatch_model_version",
    }
)


def bucket_counts(values: np.ndarray, bounds: tuple[float, ...]) -> np.ndarray:
    """Non-cumulative counts per bucket (``le`` semantics), the last one being +Inf."""
    idx = np.searchsorted(np.asarray(bounds, dtype=np.float64), values, side="left")
    return np.bincount(idx, minlength=len(bounds) + 1)


def _incident_key(severity: str, attack: str) -> tuple[str, str]:
    return check_label(severity, SEVERITIES, "severity"), check_label(attack, ATTACKS, "attack")


@dataclass(eq=False)
class BrandMetrics:
    """One brand's label children, resolved once (see ``DetectorMetrics.brand``)."""

    brand: str
    records: Any
    frames: Any
    windows: Any
    anomalous: Any
    late_frames: Any
    telemetry_gaps: Any
    clock_resets: Any
    vehicles_active: Any
    score: Any
    threshold: Any
    model_reloads: Any
    model_windows: Any
    model_anomalous: Any
    model_incidents: Any
    shed: dict[str, Any] = field(default_factory=dict)
    evicted: dict[str, Any] = field(default_factory=dict)
    opened: dict[tuple[str, str], Any] = field(default_factory=dict)
    closed: dict[tuple[str, str], Any] = field(default_factory=dict)
    escalated: dict[tuple[str, str], Any] = field(default_factory=dict)
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
        key = _incident_key(severity, attack)
        self.opened[key].inc()
        self.active[severity].inc()

    def incident_escalated(self, was: str, severity: str, attack: str) -> None:
        """An open incident went from severity ``was`` to ``severity``."""
        self.escalated[_incident_key(severity, attack)].inc()
        self.active[was].dec()
        self.active[severity].inc()

    def incident_closed(self, severity: str, attack: str, active: str | None = None) -> None:
        """An incident closed with ``severity`` and ``attack``; ``active``: the severity
        it was counted under among the active ones, if another."""
        key = _incident_key(severity, attack)
        self.closed[key].inc()
        self.active[active or severity].dec()


class DetectorMetrics:
    """Every ``canwatch_*`` family, registered on one registry.

    ``registry=None`` builds a private registry that also carries client_python's
    process/platform/gc collectors (CPU, memory, fds for the health board); tests
    pass a fresh ``CollectorRegistry()`` and read it with ``get_sample_value``.
    ``instance`` is the detector's id (the one written into incidents); it is
    not a label: Prometheus adds ``instance`` from the scrape target.

    The parts are ``consumption``, ``detection``, ``drift``, ``state`` and ``health``; the
    methods below hand on to them, so callers need not know which part counts what.
    """

    def __init__(self, registry: CollectorRegistry | None = None, instance: str = "") -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        self.instance = instance
        self.consumption = ConsumptionMetrics(registry)
        self.detection = DetectionMetrics(registry)
        self.drift = DriftMetrics(registry)
        self.state = StateMetrics(registry)
        self.health = HealthMetrics(registry)
        self.shadow = ShadowMetrics(registry)
        # The families callers outside this module use directly.
        self.bytes_consumed = self.consumption.bytes_consumed
        self.frames_consumed = self.consumption.frames_consumed
        self.poll_stalled = self.health.poll_stalled
        self._brands: dict[str, BrandMetrics] = {}

    # -- per brand -----------------------------------------------------------------

    def brand(self, brand: str) -> BrandMetrics:
        """The cached children of ``brand`` (created, at zero, on first use)."""
        found = self._brands.get(brand)
        if found is None:
            found = self._brands[brand] = BrandMetrics(
                brand=brand,
                **self.consumption.brand_children(brand),
                **self.detection.brand_children(brand),
                **self.state.brand_children(brand),
                **self.shadow.brand_children(brand),
            )
        return found

    # -- models --------------------------------------------------------------------

    def set_model(self, brand: str, platform: str, version: str, threshold: float) -> None:
        """Record the model now serving ``brand``; the previous info series goes away."""
        self.brand(brand)  # a brand with a model shows all its series, at zero
        self.detection.set_model(brand, platform, version, threshold)
        number = version.lower().removeprefix("v")
        if number.isdigit():  # the version timeline plots numbers
            self.shadow.set_version(brand, "serving", int(number))

    def model_reload_failed(self, reason: str) -> None:
        self.detection.model_reload_failed(reason)

    # -- state limits ----------------------------------------------------------------

    def set_state_limits(self, max_vehicles: int, max_streams: int) -> None:
        self.state.set_state_limits(max_vehicles, max_streams)

    def set_state(self, vehicles: int, streams: int) -> None:
        self.state.set_state(vehicles, streams)

    def shed(
        self, frames: dict[tuple[str, str], int], vehicles: dict[tuple[str, str], int]
    ) -> None:
        """Count what the limits shed: frames and vehicles by (brand, reason)."""
        for (brand, reason), n in frames.items():
            self.brand(brand).shed[check_label(reason, SHED_REASONS, "shed reason")].inc(n)
        for (brand, reason), n in vehicles.items():
            evicted = self.brand(brand).evicted
            evicted[check_label(reason, EVICTION_REASONS, "eviction reason")].inc(n)

    # -- consumer ------------------------------------------------------------------

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.consumption.observe_stage(stage, seconds)

    def set_partition_lag(
        self, partition: int | str, event_time_lag_s: float | None, consumer_lag: int | None
    ) -> None:
        self.consumption.set_partition_lag(partition, event_time_lag_s, consumer_lag)

    def set_consumer_lag(self, lags: dict[int, float]) -> None:
        """Consumer lag of exactly the partitions in ``lags`` (NaN: unknown); the
        series of any other partition goes away."""
        self.consumption.set_consumer_lag(lags)

    def rebalanced(self, assigned: Iterable[int | str]) -> None:
        """After a rebalance: count it and drop lag series of partitions we no longer own."""
        self.consumption.rebalanced(assigned)

    # -- health --------------------------------------------------------------------

    def dead_letter(self, reason: str, n: int = 1) -> None:
        self.health.dead_letter(reason, n)

    def unreadable(self, reason: str, offsets: int) -> None:
        """A record, or a span of ``offsets`` records, that could not be read at all."""
        self.health.unreadable(reason, offsets)

    def set_up(self, up: bool) -> None:
        self.health.set_up(up)

    def set_ready(self, ready: bool) -> None:
        self.health.set_ready(ready)

    # -- HTTP ----------------------------------------------------------------------

    def serve(self, address: str = DEFAULT_ADDRESS) -> Any:
        """Serve /metrics on exactly ``address`` (host:port); returns the server.

        ``server.server_address`` gives the bound port (useful with port 0);
        ``server.shutdown()`` stops it.
        """
        host, port = parse_address(address)
        try:
            server, _thread = start_http_server(port, addr=host, registry=self.registry)
        except OSError as exc:  # in use, or not this machine's: say which address
            raise ConfigError(
                f"metrics address {address}: {exc.strerror or exc} (another port, or port 0 "
                "for any free one)"
            ) from None
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
