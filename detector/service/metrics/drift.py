"""How far each brand's live traffic has moved from what its serving model learned
(``detector.service.drift`` computes it), and the level the drift alert fires at."""

from __future__ import annotations

import math

from prometheus_client import CollectorRegistry, Gauge

from detector.service.metrics.families import Families


class DriftMetrics:
    """Drift ratio and rate drift per brand; the configured alert level."""

    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry)
        self.ratio = f.gauge(
            "canwatch_model_drift_ratio",
            "Share of the brand's vehicle windows over the last models.drift_period_s with a "
            "feature outside what the serving model learned (before each vehicle's own "
            "reference).",
            ("brand",),
        )
        self.rate = f.gauge(
            "canwatch_model_rate_drift",
            "Median over the serving model's learned ids seen in the last "
            "models.drift_period_s of |log2(observed / learned frames per window)| "
            "(0 = rates as learned, 1 = halved or doubled).",
            ("brand",),
        )
        self.limit = f.gauge(
            "canwatch_model_drift_limit",
            "models.drift_alert_ratio: CanwatchModelDrift fires when a brand's drift "
            "ratio stays above it.",
        )

    def set_limit(self, ratio: float) -> None:
        self.limit.set(ratio)

    def set(self, brand: str, ratio: float, rate: float) -> None:
        self.ratio.labels(brand).set(ratio)
        # No learned id seen (a brand sending only unseen ids): its rate drift is
        # unknown, and NaN would show as a value; leave the series out instead.
        if math.isnan(rate):
            self._remove(self.rate, brand)
        else:
            self.rate.labels(brand).set(rate)

    def clear(self, brand: str) -> None:
        """The brand had nothing scored for a whole period: no figure rather than a stale one."""
        self._remove(self.ratio, brand)
        self._remove(self.rate, brand)

    @staticmethod
    def _remove(gauge: Gauge, brand: str) -> None:
        try:
            gauge.remove(brand)
        except KeyError:  # never set
            pass
