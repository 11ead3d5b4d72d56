"""What the model found: windows scored and their scores, incidents opened, closed
and open, and which model (and threshold) serves each brand."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from detector.service.metrics.families import Families, check_label

SEVERITIES = ("low", "medium", "high", "critical")
ATTACKS = ("dos", "fuzzing", "spoofing", "masquerade", "suspension", "replay", "unknown")
MODEL_RELOAD_FAILURE_REASONS = (
    "not_found", "bad_manifest", "checksum", "incompatible", "load", "lifecycle",
)  # fmt: skip

# Scores are normalised so the calibrated threshold is exactly 1.0: the buckets
# are dense around 1 (where the alarm decision is made) and sparse in the tail.
SCORE_BUCKETS = (0.25, 0.5, 0.75, 0.9, 1.0, 1.25, 1.5, 2.0, 3.0, 5.0, 10.0, 25.0, 100.0)


class DetectionMetrics:
    """Windows and scores, incidents, and the models that produce them."""

    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry)
        self.vehicles_active = f.gauge(
            "canwatch_vehicles_active",
            "Vehicles with at least one frame in the last few windows.",
            ("brand",),
        )
        self.windows_scored = f.counter(
            "canwatch_windows_scored_total", "Vehicle windows scored by the model.", ("brand",)
        )
        self.anomalous_windows = f.counter(
            "canwatch_anomalous_windows_total",
            "Vehicle windows scoring at or above the threshold.",
            ("brand",),
        )
        self.anomaly_score = f.histogram(
            "canwatch_anomaly_score",
            "Window anomaly scores, normalised so the calibrated threshold is 1.0.",
            ("brand",),
            SCORE_BUCKETS,
        )
        self.incidents_opened = f.counter(
            "canwatch_incidents_opened_total", "Incidents opened.", ("brand", "severity", "attack")
        )
        self.incidents_closed = f.counter(
            "canwatch_incidents_closed_total", "Incidents closed.", ("brand", "severity", "attack")
        )
        self.incidents_escalated = f.counter(
            "canwatch_incidents_escalated_total",
            "Open incidents that reached a higher severity (labelled with the one reached).",
            ("brand", "severity", "attack"),
        )
        self.incidents_active = f.gauge(
            "canwatch_incidents_active", "Incidents currently open.", ("brand", "severity")
        )
        self.model_info = f.gauge(
            "canwatch_model_info",
            "1 for the model loaded for each brand.",
            ("brand", "platform", "version"),
        )
        self.model_threshold = f.gauge(
            "canwatch_model_threshold", "Raw score threshold of the loaded model.", ("brand",)
        )
        self.model_reloads = f.counter(
            "canwatch_model_reloads_total", "Successful model (re)loads.", ("brand",)
        )
        self.model_reload_failures = f.counter(
            "canwatch_model_reload_failures_total", "Failed model (re)loads.", ("reason",)
        )
        # Series that exist from the start, so rate()/increase() see their first
        # increment and alerts on them can fire.
        self._reload_failures = {
            r: self.model_reload_failures.labels(r) for r in MODEL_RELOAD_FAILURE_REASONS
        }
        self._models: dict[str, tuple[str, str]] = {}

    def brand_children(self, brand: str) -> dict[str, Any]:
        """This part's fields of ``BrandMetrics``: every (severity, attack) series
        exists from the brand's first use, so alerts see an incident's first increment."""
        b = brand
        return {
            "windows": self.windows_scored.labels(b),
            "anomalous": self.anomalous_windows.labels(b),
            "vehicles_active": self.vehicles_active.labels(b),
            "score": self.anomaly_score.labels(b),
            "threshold": self.model_threshold.labels(b),
            "model_reloads": self.model_reloads.labels(b),
            "opened": {
                (s, a): self.incidents_opened.labels(b, s, a) for s in SEVERITIES for a in ATTACKS
            },
            "closed": {
                (s, a): self.incidents_closed.labels(b, s, a) for s in SEVERITIES for a in ATTACKS
            },
            "escalated": {
                (s, a): self.incidents_escalated.labels(b, s, a)
                for s in SEVERITIES[1:]  # nothing escalates to the lowest
                for a in ATTACKS
            },
            "active": {s: self.incidents_active.labels(b, s) for s in SEVERITIES},
        }

    def set_model(self, brand: str, platform: str, version: str, threshold: float) -> None:
        """Record the model now serving ``brand``; the previous info series goes away."""
        old = self._models.get(brand)
        if old is not None and old != (platform, version):
            self.model_info.remove(brand, *old)
        self.model_info.labels(brand, platform, version).set(1)
        self._models[brand] = (platform, version)
        self.model_threshold.labels(brand).set(threshold)
        self.model_reloads.labels(brand).inc()

    def model_reload_failed(self, reason: str) -> None:
        self._reload_failures[check_label(reason, MODEL_RELOAD_FAILURE_REASONS, "reason")].inc()
