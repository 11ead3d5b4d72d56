"""decode → window features → per-platform model: the path shared by the service,
``canwatch evaluate`` and the demo.

``Scorer.push`` takes decoded per-vehicle batches, routes each vehicle to its
brand's platform, and returns scored feature rows for every window the batch
closed. ``window_scores`` reduces rows to one score per (vehicle, window).
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass

import numpy as np

from detector.brands import Fleet
from detector.features import FEATURE_NAMES, Rows
from detector.model import PlatformModel, compiled, max_per_window, row_scores
from detector.reference import StreamReference
from detector.schema import concat_frames, make_frames
from detector.windowing import WindowState

_NONE_CLOSED = np.iinfo(np.int64).min // 8  # closed_upto below this: no window closed yet


@dataclass
class ScoredRows:
    """Scored rows of one platform; ``vehicle`` indexes ``names``/``brands``."""

    platform: str
    model_version: int
    rows: Rows
    scores: np.ndarray  # (r,) normalised, 1.0 = threshold
    excess: np.ndarray  # (r, N_EVIDENCE) effective calibrated evidence (model.EVIDENCE_NAMES)
    names: list[str]
    brands: list[str]
    baseline_period: np.ndarray  # (r,) learned period of the row's id (nan if unknown)


class _PlatformState:
    def __init__(self, window_s: float, n_ids: int) -> None:
        self.window = WindowState(window_s)
        self.reference = StreamReference(n_ids)
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.brands: list[str] = []
        self.free: list[int] = []  # indices of forgotten vehicles, reused first

    def vehicle_index(self, vehicle: str, brand: str) -> int:
        i = self.index.get(vehicle)
        if i is None:
            if self.free:
                i = self.free.pop()
                self.names[i], self.brands[i] = vehicle, brand
            else:
                i = len(self.names)
                self.names.append(vehicle)
                self.brands.append(brand)
            self.index[vehicle] = i
        return i

    def forget(self, vehicles: set[str]) -> None:
        idx = [self.index.pop(v) for v in vehicles if v in self.index]
        if idx:
            self.window.forget_vehicles(np.array(idx))
            self.reference.forget(np.array(idx))
            self.free.extend(idx)


class Scorer:
    """Streaming scorer over any number of platforms; one instance per consumer."""

    def __init__(
        self,
        models: dict[str, PlatformModel],
        fleet: Fleet,
        window_s: float,
    ) -> None:
        self.models = dict(models)
        self.fleet = fleet
        self.window_s = window_s
        self.state: dict[str, _PlatformState] = {}
        self.seconds = {"features": 0.0, "score": 0.0}  # CPU spent per stage, cumulative
        self.late_by_brand: Counter[str] = Counter()  # frames dropped as late, cumulative

    def platform_for(self, brand: str) -> str | None:
        platform = self.fleet.platform_of(brand)
        return platform if platform in self.models else None

    def set_model(self, model: PlatformModel) -> None:
        """Swap a platform's model; windows keep their state, vehicle references start
        afresh (they are in the old model's units)."""
        self.models[model.platform] = model
        st = self.state.get(model.platform)
        if st is not None:
            st.reference = StreamReference(len(model.baseline.ids))

    def push(self, batches: list[tuple[str, str, np.ndarray]]) -> list[ScoredRows]:
        """Score ``(vehicle, brand, frames)`` batches; brands without a model raise KeyError."""
        by_platform: dict[str, list[tuple[int, np.ndarray]]] = {}
        platforms: dict[str, str | None] = {}
        for vehicle, brand, frames in batches:
            platform = platforms.get(brand) or platforms.setdefault(brand, self.platform_for(brand))
            if platform is None:
                raise KeyError(f"no model for brand {brand!r}")
            st = self._state(platform)
            by_platform.setdefault(platform, []).append((st.vehicle_index(vehicle, brand), frames))
        out = []
        for platform, items in by_platform.items():
            frames = concat_frames([f for _, f in items])
            vehicle = np.repeat([i for i, _ in items], [len(f) for _, f in items])
            out.append(self._score(platform, frames, vehicle))
        return out

    def flush(self) -> int:
        """End of stream: drop open (partial) windows; returns frames dropped."""
        return sum(st.window.flush() for st in self.state.values())

    def retire(self, vehicles: set[str]) -> list[ScoredRows]:
        """Score the open windows of vehicles that went quiet (closing them now)."""
        out = []
        for platform, st in self.state.items():
            idx = [st.index[v] for v in vehicles if v in st.index]
            if idx and platform in self.models:
                model = self.models[platform]
                rows = st.window.close_vehicles(np.array(idx), model.baseline)
                if len(rows):
                    out.append(self._scored(platform, rows))
        return out

    def forget(self, vehicles: set[str]) -> None:
        """Drop the state of vehicles (partition revoked, or retired); if one comes
        back it starts afresh, under a new index."""
        for st in self.state.values():
            st.forget(vehicles)

    def closed_until(self, vehicle: str, brand: str) -> float:
        """Event time before which the vehicle's windows are closed (-inf: none yet)."""
        platform = self.platform_for(brand)
        st = self.state.get(platform) if platform else None
        i = st.index.get(vehicle) if st else None
        if i is None or i >= len(st.window.closed_upto):
            return float("inf")  # no state kept for it: nothing to re-form
        upto = int(st.window.closed_upto[i])
        return upto * self.window_s if upto > _NONE_CLOSED else float("-inf")

    @property
    def late_frames(self) -> int:
        return sum(st.window.late_frames for st in self.state.values())

    def _state(self, platform: str) -> _PlatformState:
        st = self.state.get(platform)
        if st is None:
            n_ids = len(self.models[platform].baseline.ids)
            st = self.state[platform] = _PlatformState(self.window_s, n_ids)
        return st

    def _score(self, platform: str, frames: np.ndarray, vehicle: np.ndarray) -> ScoredRows:
        model = self.models[platform]
        st = self.state[platform]
        t0 = time.perf_counter()
        rows = st.window.push(frames, vehicle, model.baseline)
        t1 = time.perf_counter()
        for v, n in zip(*np.unique(st.window.last_late, return_counts=True), strict=True):
            self.late_by_brand[st.brands[int(v)]] += int(n)
        self.seconds["features"] += t1 - t0
        return self._scored(platform, rows)

    def _scored(self, platform: str, rows: Rows) -> ScoredRows:
        model = self.models[platform]
        st = self.state[platform]
        t1 = time.perf_counter()
        scores, excess = score_rows(model, rows, st.window.first_window, st.reference)
        self.seconds["score"] += time.perf_counter() - t1
        slot, known = model.baseline.slots(rows.can_id)
        period = np.where(known, model.baseline.period[slot], np.nan) if len(rows) else np.zeros(0)
        return ScoredRows(
            platform, model.version, rows, scores, excess, st.names, st.brands, period
        )


def score_rows(
    model: PlatformModel, rows: Rows, first_window: np.ndarray, reference: StreamReference
) -> tuple[np.ndarray, np.ndarray]:
    """Scores (1.0 = alert) and effective calibrated evidence of rows of vehicles whose
    first windows are ``first_window`` (by row vehicle), against their ``reference``."""
    calibrated = model.calibrated(rows.X, rows.can_id)
    slot, known = model.baseline.slots(rows.can_id)
    age = rows.window - first_window[rows.vehicle] if len(rows) else np.zeros(0, np.int64)
    effective, factor = reference.apply(
        rows.vehicle, slot, known, age, calibrated, model.threshold
    )
    return row_scores(effective, model.threshold) / factor, effective


def warm_up(model: PlatformModel, window_s: float) -> None:
    """Run the scoring path once on a few synthetic frames, and discard the result.

    Each compiled kernel loads from numba's on-disk cache on its first call
    (~0.2 s of CPU in all; seconds when it has to compile). A detector calls
    this as a model loads, so that cost is paid before it reports ready, not
    by the first poll it scores. The frames take every path of the window
    kernels: known and unseen ids, in time order and (a second batch) not.
    """
    ids = model.baseline.ids
    unseen = np.setdiff1d(np.arange(0x800, dtype=np.uint32), ids)[:1]  # the unseen-id path
    can_id = np.r_[ids, unseen].astype(np.uint32)
    # windows 0, 0, 1, 2 for every id: folds, then closes by the next window and by the cut
    ts = np.repeat(np.array([0.1, 0.6, 1.1, 2.1]) * window_s, len(can_id))
    frames = make_frames(ts, np.tile(can_id, 4), np.zeros((len(ts), 8), np.uint8))
    state = WindowState(window_s)
    rows = state.push(frames, np.zeros(len(ts), np.int64), model.baseline)
    score_rows(model, rows, state.first_window, StreamReference(len(ids)))
    swapped = make_frames(np.array([3.6, 3.2]) * window_s, can_id[:1].repeat(2), np.zeros((2, 8)))
    state.push(swapped, np.zeros(2, np.int64), model.baseline)  # out of time order: the sort path
    with_nan = np.zeros((1, len(model.feature_names)))
    with_nan[0, 0] = np.nan  # the NaN-aware walk is a kernel of its own
    compiled(model.forest).raw_scores(with_nan)


def window_scores(scored: ScoredRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vehicle, window, max score) per window, for metrics and reports."""
    return max_per_window(scored.rows.vehicle, scored.rows.window, scored.scores)


def vehicle_clock(
    scored: ScoredRows, vehicle: np.ndarray, window: np.ndarray, window_s: float
) -> dict[str, float]:
    """End of each vehicle's newest scored window (the incident tracker's clock)."""
    if len(window) == 0:
        return {}
    newest = np.full(len(scored.names), np.iinfo(np.int64).min)
    np.maximum.at(newest, vehicle, window)
    return {scored.names[i]: float((newest[i] + 1) * window_s) for i in np.unique(vehicle).tolist()}


__all__ = [
    "FEATURE_NAMES",
    "Scorer",
    "ScoredRows",
    "score_rows",
    "vehicle_clock",
    "warm_up",
    "window_scores",
]
