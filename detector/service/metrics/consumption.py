"""What the detector consumed, how long each stage of a batch took, and how far
behind the partitions it owns it is (event time and records)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from typing import Any

from prometheus_client import CollectorRegistry

from detector.service.metrics.families import Families, check_label

STAGES = ("decode", "features", "score", "incidents", "shadow", "produce", "commit")
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


class ConsumptionMetrics:
    """Records, frames and bytes in; stage durations; lag and partition ownership."""

    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry)
        self.records_consumed = f.counter(
            "canwatch_records_consumed_total", "Kafka records consumed.", ("brand",)
        )
        self.frames_consumed = f.counter(
            "canwatch_frames_consumed_total",
            "CAN frames decoded from consumed records.",
            ("brand",),
        )
        self.bytes_consumed = f.counter(
            "canwatch_bytes_consumed_total", "Bytes of record values consumed (all records)."
        )
        self.late_frames = f.counter(
            "canwatch_late_frames_total",
            "Frames older than an already closed window (dropped).",
            ("brand",),
        )
        self.telemetry_gaps = f.counter(
            "canwatch_telemetry_gaps_total",
            "Times a vehicle sent nothing at all for more than 2 windows (an uplink or logger "
            "that stopped): the windows the gap touched were not scored.",
            ("brand",),
        )
        self.clock_resets = f.counter(
            "canwatch_clock_resets_total",
            "Vehicles whose frames were all older than their closed windows for 30 s and 10 "
            "polls (their clock set back): their windows started afresh at the new time.",
            ("brand",),
        )
        self.stage_duration = f.histogram(
            "canwatch_stage_duration_seconds",
            "Wall-clock time per pipeline stage and batch.",
            ("stage",),
            STAGE_BUCKETS,
        )
        self.event_time_lag = f.gauge(
            "canwatch_event_time_lag_seconds",
            "Wall clock minus the newest event time processed.",
            ("partition",),
        )
        self.consumer_lag = f.gauge(
            "canwatch_consumer_lag_records",
            "Records between the consumer's fetch position and the partition's log end "
            "offset, both read by the watchdog (NaN while the broker does not answer).",
            ("partition",),
        )
        self.rebalances = f.counter("canwatch_rebalances_total", "Consumer-group rebalances seen.")
        self.partitions_assigned = f.gauge(
            "canwatch_partitions_assigned", "Partitions currently assigned to this instance."
        )
        # Series that exist from the start, so rate()/increase() see their first
        # increment and alerts on them can fire.
        self.stages = {s: self.stage_duration.labels(s) for s in STAGES}
        self._partitions: set[str] = set()  # partitions with lag series
        self._lagged: set[str] = set()  # partitions with a consumer-lag series

    def brand_children(self, brand: str) -> dict[str, Any]:
        """This part's fields of ``BrandMetrics``."""
        return {
            "records": self.records_consumed.labels(brand),
            "frames": self.frames_consumed.labels(brand),
            "late_frames": self.late_frames.labels(brand),
            "telemetry_gaps": self.telemetry_gaps.labels(brand),
            "clock_resets": self.clock_resets.labels(brand),
        }

    def observe_stage(self, stage: str, seconds: float) -> None:
        self.stages[check_label(stage, STAGES, "stage")].observe(seconds)

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
