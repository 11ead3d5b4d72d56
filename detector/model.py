"""Per-platform anomaly model: an IsolationForest plus a learned feature envelope.

An isolation forest only splits inside the range each feature had in training:
a feature that never moved there (an unseen id, bytes outside their learned
range) cannot isolate anything however extreme it gets. So the raw score adds
to the forest's ``-score_samples`` an *envelope excess*: for every feature, how
far the row lies outside the range it had in training, in units of that
range's width (with a per-feature floor). The range is learned per CAN id
(what is normal for one id is an attack on another), and globally for ids
never seen in training. The threshold is then calibrated on
held-back benign windows, and scores are reported divided by it: a score of 1.0
is the alert threshold, higher = more anomalous, everywhere.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import IsolationForest

from detector.baseline import Baseline
from detector.features import FEATURE_NAMES, N_FEATURES, F, vw_groups
from detector.kernels import CompiledForest

F_RATE = F["rate"]

#: Minimum envelope width per feature, so a feature that was constant in
#: training still has a scale: excess 1.0 = one floor beyond the learned range.
ENVELOPE_FLOOR = {
    "rate": 0.5,
    "dt_min": 0.3,
    "dt_mean": 0.3,
    "dt_cv": 0.3,
    "silence": 1.0,
    "hamming_z": 2.0,
    "change_drop": 0.3,
    "change_rise": 0.3,
    "out_of_range": 0.1,
    "delta_out": 0.1,
    "pair_out": 0.1,
    "counter_err": 0.1,
    "checksum_err": 0.1,
    "novel_payload": 0.1,
    "novel_dlc": 0.1,
    "novel_id": 0.1,
    "bus_load": 0.3,
    "bus_novel": 0.05,
    "bus_missing": 0.1,
    "bus_ids": 0.2,
}
#: Threshold = holdout quantile × this.
CALIBRATION_MARGIN = 1.25
#: Features where only values above the learned range are anomalous.
ONE_SIDED = ("silence", "dt_cv", "hamming_z")
#: Weight of one unit of envelope excess against the forest's score (~0.3–0.8).
ENVELOPE_WEIGHT = 0.25
#: Envelope excess is capped per feature so one runaway value cannot dominate
#: evidence ranking numerically (it is still far above any threshold).
EXCESS_CAP = 50.0


@dataclass
class PlatformModel:
    platform: str
    baseline: Baseline
    forest: IsolationForest
    env_lo: np.ndarray  # (k + 1, F): per id slot, last row = ids never seen
    env_hi: np.ndarray  # (k + 1, F)
    env_scale: np.ndarray  # (k + 1, F)
    threshold: float  # raw score at the calibrated false-positive rate
    version: int = 0
    feature_names: tuple[str, ...] = FEATURE_NAMES
    info: dict = field(default_factory=dict)

    def excess(self, X: np.ndarray, can_id: np.ndarray) -> np.ndarray:
        """(r, F) envelope excess per feature, >= 0."""
        e = envelope_slot(self.baseline, can_id)
        return envelope_excess(X, self.env_lo[e], self.env_hi[e], self.env_scale[e])

    def scores(self, X: np.ndarray, can_id: np.ndarray) -> np.ndarray:
        """Normalised scores: 1.0 = the calibrated threshold."""
        return self.scores_and_excess(X, can_id)[0]

    def scores_and_excess(self, X: np.ndarray, can_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Normalised scores and the envelope excess behind them (for evidence)."""
        excess = self.excess(X, can_id)
        return raw_scores(self.forest, X, excess) / self.threshold, excess


def envelope_slot(baseline: Baseline, can_id: np.ndarray) -> np.ndarray:
    """Row of the envelope tables for each id: its slot, or the last row if unseen."""
    slot, known = baseline.slots(np.asarray(can_id, dtype=np.uint32))
    return np.where(known, slot, len(baseline.ids))


def envelope_excess(X: np.ndarray, lo: np.ndarray, hi: np.ndarray, scale: np.ndarray) -> np.ndarray:
    over = np.maximum(X - hi, 0.0) + np.maximum(lo - X, 0.0)
    return np.minimum(over / scale, EXCESS_CAP)


_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def compiled(forest: IsolationForest) -> CompiledForest:
    """The forest's flat-array form, built once per fitted forest object."""
    cf = _COMPILED.get(forest)
    if cf is None:
        cf = _COMPILED[forest] = CompiledForest(forest)
    return cf


def raw_scores(forest: IsolationForest, X: np.ndarray, excess: np.ndarray) -> np.ndarray:
    if len(X) == 0:
        return np.zeros(0)
    return compiled(forest).raw_scores(X) + ENVELOPE_WEIGHT * excess.sum(axis=1)


def fit_envelope(
    X: np.ndarray, slot: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slot (k rows) and global (last row) feature ranges of the training rows."""
    lo = np.full((k + 1, X.shape[1]), np.inf)
    hi = np.full((k + 1, X.shape[1]), -np.inf)
    np.minimum.at(lo, slot, X)
    np.maximum.at(hi, slot, X)
    lo[k], hi[k] = X.min(axis=0), X.max(axis=0)
    unseen = ~np.isfinite(lo[:, 0])  # ids without training rows fall back to the global range
    lo[unseen], hi[unseen] = lo[k], hi[k]
    floor = np.array([ENVELOPE_FLOOR[n] for n in FEATURE_NAMES])
    scale = np.maximum(hi - lo, floor)
    for (
        name
    ) in ONE_SIDED:  # only the high side is evidence: a frame just before the window end is not
        lo[:, F[name]] = np.minimum(lo[:, F[name]], 0.0)
    return lo, hi, scale


def max_per_window(
    vehicle: np.ndarray, window: np.ndarray, scores: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vehicle, window, highest score) per distinct (vehicle, window), sorted."""
    if len(scores) == 0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0)
    veh, win, inv = vw_groups(vehicle, window)
    best = np.full(len(veh), -np.inf)
    np.maximum.at(best, inv, scores)
    return veh, win, best


def calibrate_threshold(window_scores: np.ndarray, target_fpr: float) -> float:
    """Raw score above which at most ``target_fpr`` of held-back benign windows fall.

    The margin allows for what a few hundred held-back windows cannot show:
    new vehicles, drives and message phases produce benign windows somewhat
    beyond the holdout's extreme.
    """
    if len(window_scores) == 0:
        raise ValueError("no held-back benign windows to calibrate the threshold on")
    q = float(np.quantile(window_scores, 1.0 - target_fpr, method="higher"))
    return q * CALIBRATION_MARGIN


def fit_platform_model(
    platform: str,
    baseline: Baseline,
    X_train: np.ndarray,
    id_train: np.ndarray,
    holdout: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    *,
    target_fpr: float,
    n_estimators: int = 100,
    max_samples: int = 512,
    seed: int = 7,
) -> PlatformModel:
    """Fit on training rows; calibrate on held-back rows ``(X, can_id, vehicle, window)``."""
    if X_train.ndim != 2 or X_train.shape[1] != N_FEATURES:
        raise ValueError(f"X_train must have shape (n, {N_FEATURES}), got {X_train.shape}")
    if len(X_train) < 10:
        raise ValueError(f"need at least 10 training rows, got {len(X_train)}")
    forest = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(max_samples, len(X_train)),
        random_state=seed,
    ).fit(X_train)
    lo, hi, scale = fit_envelope(X_train, envelope_slot(baseline, id_train), len(baseline.ids))
    # One frame more or less per window is where a message's phase meets the
    # window boundary, not an attack: widen each id's rate range by one frame.
    k = len(baseline.ids)
    one_frame = 1.0 / np.maximum(baseline.mean_count, 1.0)
    lo[:k, F_RATE] -= one_frame
    hi[:k, F_RATE] += one_frame
    model = PlatformModel(platform, baseline, forest, lo, hi, scale, threshold=1.0)
    Xh, ih, vh, wh = holdout
    raw_h = raw_scores(forest, Xh, model.excess(Xh, ih))
    model.threshold = calibrate_threshold(max_per_window(vh, wh, raw_h)[2], target_fpr)
    return model
