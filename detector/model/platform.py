"""Per-platform anomaly model: evidence per feature, calibrated on drives it never saw.

A feature row (one CAN id in one window of one vehicle) becomes *evidence*, one
column per feature plus one for the isolation forest:

- for each feature, how far the row lies outside the range that feature had
  for that id in training (the *envelope*), in units of the envelope's width
  (with a per-feature floor). Ranges are learned per CAN id (what is normal
  for one id is an attack on another), and globally for ids never seen. An
  isolation forest only splits inside the range each feature had in
  training: a feature that never moved there (an unseen id, bytes outside
  their learned range) cannot isolate anything however extreme it gets, so
  the envelope carries that evidence;
- for the forest, how far the row's path-length score lies above what the
  training rows reached.

Each column is then divided by its *cross-drive scale*: how far that column
went on benign windows of drives held out of training (leave-one-drive-out
inside the training set, see ``detector.model.training``). One unit of calibrated
evidence is "as far out as benign traffic of a drive the model never saw
went". A feature that varies from drive to drive (a state byte, a payload
dictionary) so gets a large scale and little weight; one that does not (a
message's rate, its counter) keeps its weight. A row's score is its strongest
calibrated column over the threshold (a margin above 1.0): no sum lets several
weak, correlated columns add up to an alert, and no single column can hide
another's. Score 1.0 = alert, higher = more anomalous, everywhere.

What a vehicle shows from its first windows on is its own state, not an
attack: ``StreamReference`` keeps it per (vehicle, id) and discounts it.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field

import numpy as np
from sklearn.ensemble import IsolationForest

from detector.features.baseline import Baseline
from detector.features.columns import FEATURE_NAMES, N_FEATURES, F, vw_groups
from detector.model.forest_kernel import CompiledForest

F_RATE = F["rate"]
#: Version of what a model file holds and how it scores: a model of another format
#: is refused on load (retrain), and the demo's model cache is keyed by it.
MODEL_FORMAT = 9
#: Evidence columns: one per feature, then the forest's.
EVIDENCE_NAMES: tuple[str, ...] = (*FEATURE_NAMES, "forest")
N_EVIDENCE = len(EVIDENCE_NAMES)
E_FOREST = N_FEATURES
#: The forest's columns: all but ``cross_out``, which scoring fills after the rows are
#: formed (0 on every training row: nothing a forest could split on).
FOREST_FEATURES = F["cross_out"]

#: Minimum envelope width per feature, so a feature that was constant in
#: training still has a scale: evidence 1.0 = one floor beyond the learned range.
ENVELOPE_FLOOR = {
    "rate": 0.5,  # per id: at most this, less for busy ids (see rate_floor)
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
    "novel_id": 1.0,  # frames of an unseen id in the window: one frame, one unit
    "coupling_out": 0.1,
    "fixed_out": 0.1,
    "bus_load": 0.3,
    "bus_novel": 0.01,
    "bus_missing": 0.1,
    "bus_ids": 0.2,
    "cross_out": 0.1,
}
#: Features where only values above the learned range are anomalous ...
ONE_SIDED = ("silence", "dt_cv", "hamming_z")
#: ... and where only values below it are: frames closer together than ever learned
#: were squeezed in; a rare id's frames farther apart are not an attack (rate and
#: silence see an id that slows down).
LOW_SIDED = ("dt_min",)
#: Evidence is capped per column so one runaway value cannot dominate evidence
#: ranking numerically (it is still far above any threshold).
EXCESS_CAP = 50.0
#: Forest evidence: path-length score above the training rows' top quantile,
#: in these units.
FOREST_QUANTILE = 0.999
FOREST_WIDTH = 0.05
#: Alert threshold in calibrated units: a quarter beyond the furthest a benign
#: held-out drive went, for what a few held-out drives cannot show.
CALIBRATION_MARGIN = 1.25
#: The smallest cross-drive scale of a column: one envelope width.
MIN_SCALE = 1.0
#: Columns that are shares of a window's frames (or of its bytes, ids): their
#: evidence cannot exceed 1 / floor. One that reached SATURATION of that bound on
#: benign held-out drives varies from drive to drive as much as any attack could
#: make it: its scale becomes the bound, so alone it never alerts.
FRACTIONS = (
    "change_drop", "change_rise", "out_of_range", "delta_out", "pair_out", "counter_err",
    "checksum_err", "novel_payload", "novel_dlc", "coupling_out", "fixed_out", "cross_out", "bus_novel",
    "bus_missing",
)  # fmt: skip
SATURATION = 0.5
#: Evidence a row whose timing covers only part of its window (``Rows.partial``: a
#: short telemetry gap touched the window, or the id began sending in it) cannot give:
#: its timing and its bus counts are the gap's or the start's, a frame's change from
#: the one before may span the gap, and the forest sees all of them. What each frame
#: shows on its own (a byte out of range, a broken checksum or coupling, an unseen id)
#: still counts.
PARTIAL_BLIND = (
    "rate", "dt_min", "dt_mean", "dt_cv", "silence", "hamming_z", "change_drop", "change_rise",
    "delta_out", "counter_err", "bus_load", "bus_missing", "bus_ids", "forest",
)  # fmt: skip
PARTIAL_KEPT = ~np.isin(np.array(EVIDENCE_NAMES), PARTIAL_BLIND)


def frames_per_unit(mean_count: np.ndarray) -> np.ndarray:
    """Frames that one unit of ``rate`` stands for, per id: its learned frames per
    window (``rate`` is the window's count divided by it), or 1 for an id that was
    never in a full window."""
    return np.where(mean_count > 0, mean_count, 1.0)


def rate_floor(mean_count: np.ndarray) -> np.ndarray:
    """Envelope floor of ``rate`` per id (learned frames per window ``mean_count``).

    A count of n frames varies by about sqrt(n) between windows when a message
    is not strictly periodic: the floor is two of those, in rate units. A busy
    periodic id (100 frames a window) so flags 20 % more frames, one that sends
    a frame a window three more, a rare one (a frame every 20 windows) 40.
    """
    return 2.0 * np.sqrt(np.maximum(mean_count, 0.0) + 1.0) / frames_per_unit(mean_count)


@dataclass
class PlatformModel:
    platform: str
    baseline: Baseline
    forest: IsolationForest
    env_lo: np.ndarray  # (k + 1, F): per id slot, last row = ids never seen
    env_hi: np.ndarray  # (k + 1, F)
    env_scale: np.ndarray  # (k + 1, F)
    forest_hi: float  # raw forest score the training rows reached (FOREST_QUANTILE)
    evidence_scale: np.ndarray  # (N_EVIDENCE,) cross-drive scale of each column
    tolerance: np.ndarray  # (k + 1, N_EVIDENCE) evidence each id showed on held-out drives
    threshold: float = CALIBRATION_MARGIN  # in calibrated units
    version: int = 0
    feature_names: tuple[str, ...] = FEATURE_NAMES
    info: dict = field(default_factory=dict)

    def _evidence(self, X: np.ndarray, e: np.ndarray) -> np.ndarray:
        """(r, N_EVIDENCE) evidence in envelope units (``e``: the rows' envelope slots),
        >= 0, before calibration."""
        out = np.empty((len(X), N_EVIDENCE))
        out[:, :N_FEATURES] = envelope_excess(X, self.env_lo[e], self.env_hi[e], self.env_scale[e])
        out[:, E_FOREST] = forest_evidence(self.forest, X, self.forest_hi)
        return out

    def calibrated(self, X: np.ndarray, can_id: np.ndarray) -> np.ndarray:
        """Evidence beyond what the row's id showed on held-out drives, in cross-drive
        units: 1.0 = as far again as benign unseen drives went."""
        e = envelope_slot(self.baseline, can_id)
        return np.maximum(self._evidence(X, e) - self.tolerance[e], 0.0) / self.evidence_scale

    def scores(self, X: np.ndarray, can_id: np.ndarray) -> np.ndarray:
        """Normalised scores of rows taken alone (no vehicle state): 1.0 = threshold."""
        return row_scores(self.calibrated(X, can_id), self.threshold)


#: The other columns' calibrated evidence counts this much, up to TIE_CAP in all:
#: rows tied on their strongest column rank by how much else agrees, but what the
#: other columns add stays below any alert on its own.
TIE_WEIGHT = 0.05
TIE_CAP = 0.1


def row_scores(calibrated: np.ndarray, threshold: float) -> np.ndarray:
    """A row's score: its strongest calibrated column over the threshold (plus at most
    TIE_CAP of the rest's, to rank rows tied on their strongest column)."""
    if len(calibrated) == 0:
        return np.zeros(0)
    top = calibrated.max(axis=1)
    rest = np.minimum(TIE_WEIGHT * (calibrated.sum(axis=1) - top), TIE_CAP)
    return (top + rest) / threshold


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


def forest_evidence(forest: IsolationForest, X: np.ndarray, forest_hi: float) -> np.ndarray:
    if len(X) == 0:
        return np.zeros(0)
    X = np.ascontiguousarray(X[:, :FOREST_FEATURES])
    raw = compiled(forest).raw_scores(X, floor=forest_hi)  # only scores above it count
    return np.minimum(np.maximum(raw - forest_hi, 0.0) / FOREST_WIDTH, EXCESS_CAP)


#: Shares of a window's frames (or of its consecutive pairs: a byte's change rates):
#: one frame of a slow id is a large share, and a single frame's glitch or transition
#: (a setting switched, a smooth signal holding still for two frames) is no attack.
#: Their floor per id is at least MIN_BAD_FRAMES frames of a window's worth.
FRAME_SHARES = (
    "change_drop", "change_rise", "out_of_range", "delta_out", "pair_out", "counter_err",
    "checksum_err", "novel_payload", "novel_dlc", "coupling_out", "fixed_out",
)  # fmt: skip
MIN_BAD_FRAMES = 2.0


def envelope_floor(mean_count: np.ndarray) -> np.ndarray:
    """(k + 1, F) envelope floors: ENVELOPE_FLOOR, with rate's Poisson floor and the
    frame shares' MIN_BAD_FRAMES per id (learned frames per window ``mean_count``);
    the last row (ids never seen) keeps the common floors."""
    floor = np.tile(np.array([ENVELOPE_FLOOR[n] for n in FEATURE_NAMES]), (len(mean_count) + 1, 1))
    floor[:-1, F_RATE] = rate_floor(mean_count)
    per_frame = MIN_BAD_FRAMES / frames_per_unit(mean_count)
    for name in FRAME_SHARES:
        floor[:-1, F[name]] = np.maximum(floor[:-1, F[name]], per_frame)
    return floor


def fit_envelope(
    X: np.ndarray, slot: np.ndarray, k: int, floor: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-slot (k rows) and global (last row) feature ranges of the training rows.

    ``floor`` (k + 1, F): each slot's least envelope width (``envelope_floor``).
    """
    lo = np.full((k + 1, X.shape[1]), np.inf)
    hi = np.full((k + 1, X.shape[1]), -np.inf)
    np.minimum.at(lo, slot, X)
    np.maximum.at(hi, slot, X)
    lo[k], hi[k] = X.min(axis=0), X.max(axis=0)
    unseen = ~np.isfinite(lo[:, 0])  # ids without training rows fall back to the global range
    lo[unseen], hi[unseen] = lo[k], hi[k]
    scale = np.maximum(hi - lo, floor)
    for name in ONE_SIDED:  # only the high side is evidence: a frame just before the window
        # end is not, nor a payload flipping fewer bits than learned (what stands still is
        # change_drop's, per byte)
        lo[:, F[name]] = -np.inf
    for name in LOW_SIDED:
        hi[:, F[name]] = np.inf
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


def group_maxima(group: np.ndarray, evidence: np.ndarray, n_groups: int) -> np.ndarray:
    """(n_groups, columns): each column's largest value per group (0 where none)."""
    out = np.zeros((n_groups, evidence.shape[1]))
    np.maximum.at(out, group, evidence)
    return out


def cross_drive_scale(
    held_out_maxima: np.ndarray, target_fpr: float, unmeasured: tuple[str, ...] = ()
) -> np.ndarray:
    """Each column's scale: the value at most ``target_fpr`` / N_EVIDENCE of held-out
    benign windows exceeded (their per-window maxima), at least MIN_SCALE, or the
    column's bound once it came near (FRACTIONS), or at once for the ``unmeasured``
    columns (FRACTIONS the held-out windows cannot speak for). A window alerts on its
    strongest column, so the columns share the false-positive budget."""
    if len(held_out_maxima) == 0:
        raise ValueError("no held-out benign windows to calibrate the evidence on")
    level = 1.0 - target_fpr / held_out_maxima.shape[1]
    q = np.quantile(held_out_maxima, level, axis=0, method="higher")
    bound = np.full(N_EVIDENCE, np.inf)
    for name in FRACTIONS:
        bound[EVIDENCE_NAMES.index(name)] = min(1.0 / ENVELOPE_FLOOR[name], EXCESS_CAP)
    near = (q >= SATURATION * bound) | np.isin(np.array(EVIDENCE_NAMES), unmeasured)
    return np.maximum(np.where(near & np.isfinite(bound), bound, q), MIN_SCALE)


def fit_platform_model(
    platform: str,
    baseline: Baseline,
    X_train: np.ndarray,
    id_train: np.ndarray,
    *,
    n_estimators: int = 100,
    max_samples: int = 512,
    seed: int = 7,
) -> PlatformModel:
    """Fit forest and envelope on training rows; evidence uncalibrated (scale 1)."""
    if X_train.ndim != 2 or X_train.shape[1] != N_FEATURES:
        raise ValueError(f"X_train must have shape (n, {N_FEATURES}), got {X_train.shape}")
    if len(X_train) < 10:
        raise ValueError(f"need at least 10 training rows, got {len(X_train)}")
    forest = IsolationForest(
        n_estimators=n_estimators,
        max_samples=min(max_samples, len(X_train)),
        random_state=seed,
    ).fit(X_train[:, :FOREST_FEATURES])
    k = len(baseline.ids)
    lo, hi, scale = fit_envelope(
        X_train, envelope_slot(baseline, id_train), k, envelope_floor(baseline.mean_count)
    )
    # One frame more or less per window is where a message's phase meets the
    # window boundary, not an attack: widen each id's rate range by one frame.
    one_frame = 1.0 / frames_per_unit(baseline.mean_count)
    lo[:k, F_RATE] -= one_frame
    hi[:k, F_RATE] += one_frame
    forest_hi = float(
        np.quantile(compiled(forest).raw_scores(X_train[:, :FOREST_FEATURES]), FOREST_QUANTILE)
    )
    return PlatformModel(
        platform, baseline, forest, lo, hi, scale, forest_hi, np.ones(N_EVIDENCE),
        np.zeros((k + 1, N_EVIDENCE)),
    )
