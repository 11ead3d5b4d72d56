"""Model drift: how far a brand's live traffic has moved from what its serving model learned.

Two figures per brand, over a rolling ``models.drift_period_s``:

- **drift ratio**: the share of the brand's (vehicle, window)s with a feature outside
  the model's learned envelope (``ScoredRows.outside``: beyond what training and the
  held-out drives showed for that id, *before* the vehicle's own reference absorbs
  it). Benign vehicles the model never saw sit at a low, steady level; a firmware
  update, a new variant or another platform's traffic under this brand raises it
  for every vehicle at once, which is what the alert (``CanwatchModelDrift``) is for.
  An attack raises it too, but on a few vehicles for minutes, which a fleet-wide
  share over ``drift_period_s`` and the alert's ``for:`` do not reach.
- **rate drift**: per learned id seen in the period, observed frames per window over
  learned frames per window (the ``rate`` feature summed over the id's rows, divided
  by the brand's windows, so a window without the id counts 0, as in training); the
  figure is the median over those ids of |log2| of it: 0 = rates as learned, 1 = the
  typical id at half or double its learned rate.

The period is counted on the detector's monotonic clock (the time of the poll that
scored a window), not in event time: telematics units upload backlogs hours late and
vehicle clocks are skewed, and one vehicle's clock must not be able to age out the
rest of the brand's windows. What the gauges describe is then "what this instance
scored in the last ``drift_period_s``", the way Prometheus and the alert's ``for:``
read them. The period rolls in ``SLICES`` steps: a slice older than the period is
dropped whole, so the figures cover between (1 - 1/SLICES) and 1 period.

A brand's figures start afresh when its platform's model version changes (a swap,
promote or rollback): the new model learned something else, and the old envelope's
counts would say nothing about it. Only the serving model's rows are fed here.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np

from detector.core.config import ModelsConfig
from detector.features.columns import F, vw_groups
from detector.model.pipeline import ScoredRows
from detector.model.platform import PlatformModel
from detector.service.metrics.drift import DriftMetrics

__all__ = ["SLICES", "BrandCounts", "DriftMeter", "poll_counts", "rate_drift"]

SLICES = 10  # steps the period rolls in
#: |log2| of a mean rate is capped here (a factor of 64): an id gone silent has a mean
#: rate of 0, whose log is -inf, and one id must not dominate a median anyway.
MAX_LOG2_RATE = 6.0
_RATE = F["rate"]


@dataclass
class BrandCounts:
    """One brand's counts, for one poll or summed over a slice."""

    windows: int  # distinct (vehicle, window)s scored
    outside: int  # ... of which at least one row was outside the learned envelope
    rate_sum: np.ndarray  # (k,) sum of the rate feature per learned id (slot)
    rows: np.ndarray  # (k,) rows per learned id: the ids seen

    def add(self, other: BrandCounts) -> None:
        self.windows += other.windows
        self.outside += other.outside
        self.rate_sum += other.rate_sum
        self.rows += other.rows


def poll_counts(scored: ScoredRows, model: PlatformModel) -> dict[str, BrandCounts]:
    """Per brand, the counts of one batch of ``model``'s scored rows (numpy over rows;
    Python only per brand, and per vehicle of the batch to name its brand)."""
    rows = scored.rows
    if len(rows) == 0:
        return {}
    veh, _, group = vw_groups(rows.vehicle, rows.window)  # sorted (vehicle, window)s
    n = len(veh)
    outside = np.bincount(group, weights=scored.outside, minlength=n) > 0
    vehicles, vehicle_of_group = np.unique(veh, return_inverse=True)
    names = [scored.brands[v] for v in vehicles.tolist()]
    brands, brand_of_vehicle = np.unique(names, return_inverse=True)
    nb = len(brands)
    brand_of_group = brand_of_vehicle[vehicle_of_group]
    windows = np.bincount(brand_of_group, minlength=nb)
    outside_windows = np.bincount(brand_of_group[outside], minlength=nb)
    slot, known = model.baseline.slots(rows.can_id)
    k = len(model.baseline.ids)
    key = brand_of_group[group[known]] * k + slot[known]
    rate_sum = np.bincount(key, weights=rows.X[known, _RATE], minlength=nb * k).reshape(nb, k)
    per_id = np.bincount(key, minlength=nb * k).reshape(nb, k)
    return {
        str(b): BrandCounts(int(windows[i]), int(outside_windows[i]), rate_sum[i], per_id[i])
        for i, b in enumerate(brands.tolist())
    }


def rate_drift(counts: BrandCounts) -> float:
    """Median over the ids seen of |log2(observed / learned frames per window)|; NaN
    when no learned id was seen."""
    seen = counts.rows > 0
    if counts.windows == 0 or not seen.any():
        return float("nan")
    mean = counts.rate_sum[seen] / counts.windows
    with np.errstate(divide="ignore"):
        log2 = np.abs(np.log2(mean))
    return float(np.median(np.minimum(log2, MAX_LOG2_RATE)))


@dataclass
class _Slice:
    start: float  # monotonic time its first poll was added
    counts: BrandCounts


@dataclass
class _Brand:
    platform: str
    version: int  # the serving model's version the counts are of
    slices: deque[_Slice] = field(default_factory=deque)

    def total(self) -> BrandCounts | None:
        if not self.slices:
            return None
        first = self.slices[0].counts
        total = BrandCounts(0, 0, np.zeros_like(first.rate_sum), np.zeros_like(first.rows))
        for s in self.slices:
            total.add(s.counts)
        return total


class DriftMeter:
    """Accumulates the serving model's scored rows per brand over the drift period and
    keeps the drift gauges current.

    ``models`` is the scorer's live platform -> model map (its slots name the learned
    ids of each row); ``observe`` is called once per poll with what was scored and
    the monotonic time. ``metrics`` (optional) gets the gauges and the alert level.
    """

    def __init__(
        self,
        cfg: ModelsConfig,
        models: Mapping[str, PlatformModel],
        metrics: DriftMetrics | None = None,
    ) -> None:
        if not cfg.drift_period_s > 0:
            raise ValueError(f"models.drift_period_s must be > 0, got {cfg.drift_period_s!r}")
        self.period_s = cfg.drift_period_s
        self.slice_s = self.period_s / SLICES
        self.models = models
        self.metrics = metrics
        if metrics is not None:
            metrics.set_limit(cfg.drift_alert_ratio)
        self._brands: dict[str, _Brand] = {}

    def observe(self, scored: Iterable[ScoredRows], now: float) -> None:
        """Add a poll's scored rows (taken at monotonic ``now``), drop what is older
        than the period, and update the gauges of every brand held."""
        for sc in scored:
            model = self.models.get(sc.platform)
            if model is None or model.version != sc.model_version:
                continue  # not the serving model's rows (cannot happen within a poll)
            for brand, counts in poll_counts(sc, model).items():
                self._add(brand, sc.platform, sc.model_version, counts, now)
        self._expire(now)
        if self.metrics is not None:
            for brand in list(self._brands):
                self._publish(brand)

    def figures(self, brand: str) -> tuple[int, float, float] | None:
        """(windows, drift ratio, rate drift) of ``brand`` over the period, or None."""
        total = self._total(brand)
        if total is None:
            return None
        return total.windows, total.outside / total.windows, rate_drift(total)

    def _total(self, brand: str) -> BrandCounts | None:
        """``brand``'s counts over the period, None when it has no window there."""
        held = self._brands.get(brand)
        total = held.total() if held is not None else None
        return total if total is not None and total.windows > 0 else None

    def _add(
        self, brand: str, platform: str, version: int, counts: BrandCounts, now: float
    ) -> None:
        held = self._brands.get(brand)
        if held is None or held.version != version:  # new brand, or its model was swapped
            held = self._brands[brand] = _Brand(platform, version)
        last = held.slices[-1] if held.slices else None
        if last is not None and now - last.start < self.slice_s:
            last.counts.add(counts)
        else:
            held.slices.append(_Slice(now, counts))

    def _expire(self, now: float) -> None:
        for brand, held in list(self._brands.items()):
            while held.slices and now - held.slices[0].start >= self.period_s:
                held.slices.popleft()
            serving = self.models.get(held.platform)
            if not held.slices or serving is None or serving.version != held.version:
                # Nothing scored for a whole period, or counts of a model that no longer
                # serves (its other brands than the ones scored since the swap): no
                # figure, rather than a stale one an alert could keep firing on.
                del self._brands[brand]
                if self.metrics is not None:
                    self.metrics.clear(brand)

    def _publish(self, brand: str) -> None:
        total = self._total(brand)
        if total is not None and self.metrics is not None:
            self.metrics.set(brand, total.windows, total.outside, rate_drift(total))
