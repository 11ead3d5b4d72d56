"""Fit one platform model from benign recordings, calibrated on drives it never saw.

A model is only as good as it is on a drive it was not trained on: a new drive
of a trained car differs in state bytes, slow signals, driving style and the
odd message that is bursty today. So calibration holds whole drives out:

1. Recordings are grouped into drives. A recording is one drive, except that
   two recordings sharing most of their benign payloads are the same drive
   (an attack capture and its masquerade twin edit the same trace), and the
   caller may say which recordings belong together (``drives``).
2. For each drive, a model is fitted on the other drives and scores the held-
   out drive's benign windows through the same path as the service
   (``detector.pipeline.score_rows``, warm-up and vehicle reference included).
   With a single drive, its attack-free stretches are cut into two halves in
   time, and each half is held out in turn.
3. Each evidence column's cross-drive scale is what those held-out windows
   reached (``detector.model.cross_drive_scale``); the served model is fitted
   on every drive and carries those scales.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.baseline import learn_baseline, payload_u64
from detector.config import DetectionConfig
from detector.features import Rows, vw_groups
from detector.model import (
    EVIDENCE_NAMES,
    N_EVIDENCE,
    PlatformModel,
    cross_drive_scale,
    envelope_slot,
    fit_platform_model,
    slot_maxima,
)
from detector.pipeline import score_rows
from detector.reference import WARMUP_WINDOWS, StreamReference
from detector.windowing import WindowState

#: Two recordings whose benign (id, payload) sets overlap this much (the
#: smaller one's share) are one drive: different drives of a car share a few
#: per cent (constant messages), an edited copy of a trace nearly all.
SAME_DRIVE_OVERLAP = 0.5
#: Attack-free stretches shorter than this many windows are not trained on.
MIN_SEGMENT_WINDOWS = 4
#: Drives are held out in at most this many groups (each fold fits a model).
MAX_CALIBRATION_FOLDS = 4


def clean_segments(
    frames: np.ndarray, window_s: float, min_windows: int = MIN_SEGMENT_WINDOWS
) -> list[np.ndarray]:
    """Runs of consecutive windows without any attack frame, benign frames only.

    A window that held attack frames is not benign traffic once they are cut
    out (a masquerade's real frames are missing from it), so such windows are
    left out and the recording splits into independent clean segments.
    """
    win = np.floor(frames["ts"] / window_s).astype(np.int64)
    dirty = np.unique(win[frames["label"] != 0])
    ok = ~np.isin(win, dirty)
    # a segment boundary wherever a dirty window (or a gap) lies between two frames
    seg = np.cumsum(np.r_[True, (win[1:] - win[:-1] > 1) | (ok[1:] != ok[:-1])])
    out = []
    for s in np.unique(seg[ok]):
        part = frames[ok & (seg == s)]
        if len(part) and np.ptp(win[ok & (seg == s)]) + 1 >= min_windows:
            out.append(part)
    return out


def payload_fingerprint(frames: np.ndarray) -> np.ndarray:
    """Sorted distinct (id, payload) hashes of a recording's benign frames."""
    benign = frames[frames["label"] == 0]
    with np.errstate(over="ignore"):
        keys = payload_u64(benign["data"]) ^ (
            benign["can_id"].astype(np.uint64) * np.uint64(0x9E3779B97F4A7C15)
        )
    return np.unique(keys)


def drive_groups(recordings: list[np.ndarray]) -> list[int]:
    """Drive number of each recording: recordings sharing most benign payloads are one."""
    prints = [payload_fingerprint(r) for r in recordings]
    parent = list(range(len(recordings)))

    def root(i: int) -> int:
        while parent[i] != i:
            i = parent[i]
        return i

    for i in range(len(prints)):
        for j in range(i + 1, len(prints)):
            smaller = min(len(prints[i]), len(prints[j]))
            if smaller and len(np.intersect1d(prints[i], prints[j])) >= SAME_DRIVE_OVERLAP * smaller:
                parent[root(j)] = root(i)
    roots = [root(i) for i in range(len(recordings))]
    order = {r: n for n, r in enumerate(dict.fromkeys(roots))}
    return [order[r] for r in roots]


@dataclass(frozen=True)
class Segment:
    """An attack-free stretch of one recording, and the drive it belongs to."""

    drive: int
    recording: int
    frames: np.ndarray


def split_in_time(segments: list[Segment], window_s: float) -> list[Segment]:
    """A single drive's segments as two pseudo-drives (0, 1), its first and second half in
    time; a segment spanning the middle is cut at the window boundary there. Each half
    counts as a recording of its own, which a held-out vehicle starts afresh."""
    t0 = min(float(s.frames["ts"][0]) for s in segments)
    t1 = max(float(s.frames["ts"][-1]) for s in segments)
    middle = np.floor((t0 + t1) / 2 / window_s) * window_s
    out = []
    for s in segments:
        cut = int(np.searchsorted(s.frames["ts"], middle))
        for half, part in ((0, s.frames[:cut]), (1, s.frames[cut:])):
            if len(part) and np.ptp(np.floor(part["ts"] / window_s)) + 1 >= MIN_SEGMENT_WINDOWS:
                out.append(Segment(half, 2 * s.recording + half, part))
    return out


def feature_rows(recordings: list[np.ndarray], model_baseline, window_s: float) -> Rows:
    """Rows of every closed window of each recording (each one vehicle)."""
    parts = []
    for i, frames in enumerate(recordings):
        state = WindowState(window_s)
        rows = state.push(frames, np.zeros(len(frames), np.int64), model_baseline)
        rows.vehicle[:] = i
        parts.append(rows)
    return Rows.concat(parts)


def fit_core(platform: str, segments: list[Segment], cfg: DetectionConfig) -> PlatformModel:
    """Baseline, forest and envelope from benign segments; not yet calibrated."""
    W = cfg.window_s
    frames = np.concatenate([s.frames for s in segments])
    seg = np.concatenate([np.full(len(s.frames), i, np.int64) for i, s in enumerate(segments)])
    drive = np.concatenate([np.full(len(s.frames), s.drive, np.int64) for s in segments])
    baseline = learn_baseline(frames, seg, W, drive)
    rows = feature_rows([s.frames for s in segments], baseline, W)
    if len(rows) < 10:
        raise ValueError(
            f"recordings for {platform!r} are too short: {len(rows)} feature rows; "
            f"need at least {MIN_SEGMENT_WINDOWS + 1} windows of {W} s"
        )
    return fit_platform_model(
        platform,
        baseline,
        rows.X,
        rows.can_id,
        n_estimators=cfg.n_estimators,
        max_samples=cfg.max_samples,
        seed=cfg.seed,
    )


@dataclass
class HeldOut:
    """Effective evidence of a fold's held-out benign rows after warm-up: each row's id
    and its (vehicle, window) group, numbered across the fold."""

    can_id: np.ndarray
    group: np.ndarray
    evidence: np.ndarray


def held_out_evidence(model: PlatformModel, segments: list[Segment], window_s: float) -> HeldOut:
    """What the service would see scoring each held-out recording as one vehicle. A
    recording's segments (its attack windows cut out) share the vehicle's reference and
    its warm-up; each is windowed on its own, so no inter-arrival time spans a cut."""
    ids, groups, parts = [], [], []
    n_groups = 0
    for rec in dict.fromkeys(s.recording for s in segments):
        reference = StreamReference(len(model.baseline.ids))
        first = None
        for s in (s for s in segments if s.recording == rec):
            state = WindowState(window_s)
            rows = state.push(s.frames, np.zeros(len(s.frames), np.int64), model.baseline)
            first = state.first_window if first is None else first
            _, effective = score_rows(model, rows, first, reference)
            after = rows.window - first[rows.vehicle] > WARMUP_WINDOWS
            if after.any():
                _, _, inv = vw_groups(rows.vehicle[after], rows.window[after])
                ids.append(rows.can_id[after])
                groups.append(inv + n_groups)
                parts.append(effective[after])
                n_groups += int(inv.max()) + 1
    if not parts:
        return HeldOut(np.zeros(0, np.uint32), np.zeros(0, np.int64), np.zeros((0, N_EVIDENCE)))
    return HeldOut(np.concatenate(ids), np.concatenate(groups), np.concatenate(parts))


def calibrate(model: PlatformModel, folds: list[HeldOut], target_fpr: float) -> None:
    """Set ``model``'s per-id tolerance and cross-drive scale from its folds' held-out rows.

    Each column's scale is how far benign windows of held-out drives went (see
    ``cross_drive_scale``). An id's tolerance is the most evidence it showed on any
    held-out drive: a message that is bursty on some drives, a field whose meaning
    changes with a mode stay that id's own and need not be seen anew.
    """
    n_slots = len(model.baseline.ids) + 1
    tolerance = np.zeros((n_slots, N_EVIDENCE))
    maxima = []
    for f in folds:
        tolerance = np.maximum(
            tolerance, slot_maxima(envelope_slot(model.baseline, f.can_id), f.evidence, n_slots)
        )
        out = np.zeros((int(f.group.max()) + 1 if len(f.group) else 0, N_EVIDENCE))
        np.maximum.at(out, f.group, f.evidence)
        maxima.append(out)
    model.tolerance = tolerance
    model.evidence_scale = cross_drive_scale(np.concatenate(maxima), target_fpr)


def calibration_folds(segments: list[Segment], window_s: float):
    """(held-out drives, training segments, held-out segments): leave one drive out (or
    one group of drives, when there are more than MAX_CALIBRATION_FOLDS), or with a
    single drive, one half of it in time."""
    drives = sorted({s.drive for s in segments})
    if len(drives) == 1:
        segments = split_in_time(segments, window_s)
        drives = sorted({s.drive for s in segments})
        if len(drives) < 2:
            raise ValueError(
                "one drive too short to hold half of it out: record at least "
                f"{2 * (WARMUP_WINDOWS + MIN_SEGMENT_WINDOWS)} windows of benign traffic"
            )
    fold_of = {d: i % MAX_CALIBRATION_FOLDS for i, d in enumerate(drives)}
    for k in sorted(set(fold_of.values())):
        train = [s for s in segments if fold_of[s.drive] != k]
        held = [s for s in segments if fold_of[s.drive] == k]
        yield [d for d in drives if fold_of[d] == k], train, held


def train_platform(
    platform: str,
    recordings: list[np.ndarray],
    cfg: DetectionConfig,
    drives: list[int] | None = None,
) -> tuple[PlatformModel, dict]:
    """Train on benign frames of ``recordings`` (attack frames and their windows left out).

    ``drives``: the drive (or vehicle) each recording belongs to; by default each
    recording is its own drive, save for recordings sharing their payloads.
    """
    W = cfg.window_s
    recordings = [r[np.argsort(r["ts"], kind="stable")] for r in recordings]
    if drives is None:
        drives = drive_groups(recordings)
    if len(drives) != len(recordings):
        raise ValueError(f"{len(drives)} drive labels for {len(recordings)} recordings")
    segments = [
        Segment(d, i, seg)
        for i, (r, d) in enumerate(zip(recordings, drives, strict=True))
        for seg in clean_segments(r, W)
    ]
    if not segments:
        raise ValueError(
            f"no attack-free stretch of >= {MIN_SEGMENT_WINDOWS} windows to train platform {platform!r} on"
        )
    held, folds = [], []
    for name, train, held_segments in calibration_folds(segments, W):
        h = held_out_evidence(fit_core(platform, train, cfg), held_segments, W)
        held.append(h)
        n_windows = int(h.group.max()) + 1 if len(h.group) else 0
        folds.append({"held_out_drives": [int(d) for d in name], "windows": n_windows})
    if sum(f["windows"] for f in folds) == 0:
        raise ValueError(
            f"recordings for {platform!r} are too short: no benign window after the "
            f"{WARMUP_WINDOWS}-window warm-up of a held-out drive to calibrate on"
        )
    model = fit_core(platform, segments, cfg)
    calibrate(model, held, cfg.target_fpr)
    n_drives = len({s.drive for s in segments})
    summary = {
        "recordings": len(recordings),
        "drives": n_drives,
        "segments": len(segments),
        "benign_frames": int(sum(len(s.frames) for s in segments)),
        "ids": int(len(model.baseline.ids)),
        "expected_ids": int(model.baseline.expected.sum()),
        "calibration": "leave-one-drive-out" if n_drives > 1 else "single drive, halves in time",
        "calibration_folds": folds,
        "windows_held_out": sum(f["windows"] for f in folds),
        "evidence_scale": {
            n: round(float(s), 3) for n, s in zip(EVIDENCE_NAMES, model.evidence_scale, strict=True)
        },
        "target_fpr": cfg.target_fpr,
        "window_s": W,
    }
    return model, summary

