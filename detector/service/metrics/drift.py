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
        # The ratio's terms, so the fleet's ratio over instances is sum / sum: an average
        # of instances' ratios weighs one with a few vehicles as one with thousands.
        self.windows = f.gauge(
            "canwatch_model_drift_windows",
            "The brand's vehicle windows scored over the last models.drift_period_s "
            "(canwatch_model_drift_ratio's denominator).",
            ("brand",),
        )
        self.outside = f.gauge(
            "canwatch_model_drift_outside_windows",
            "Of canwatch_model_drift_windows, those with a feature outside what the serving "
            "model learned (the ratio's numerator).",
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

    def set(self, brand: str, windows: int, outside: int, rate: float) -> None:
        self.ratio.labels(brand).set(outside / windows)
        self.windows.labels(brand).set(windows)
        self.outside.labels(brand).set(outside)
        # No learned id seen (a brand sending only unseen ids): its rate drift is
        # unknown, and NaN would show as a value; leave the series out instead.
        if math.isnan(rate):
            self._remove(self.rate, brand)
        else:
            self.rate.labels(brand).set(rate)

    def clear(self, brand: str) -> None:
        """The brand had nothing scored for a whole period: no figure rather than a stale one."""
        for gauge in (self.ratio, self.windows, self.outside, self.rate):
            self._remove(gauge, brand)

    @staticmethod
    def _remove(gauge: Gauge, brand: str) -> None:
        try:
            gauge.remove(brand)
        except KeyError:  # never set
            pass
