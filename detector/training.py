"""Fit one platform model from benign recordings.

The benign windows are split into a training part and a held-back part in
interleaved blocks of ``BLOCK_WINDOWS`` windows, so both see every driving
phase. The baseline (what each id normally does) and the forest learn from the
training part only; the threshold is calibrated on the held-back part, which
therefore shows the model honest, unseen benign traffic.
"""

from __future__ import annotations

import numpy as np

from detector.baseline import learn_baseline
from detector.config import DetectionConfig
from detector.features import Rows
from detector.model import PlatformModel, fit_platform_model
from detector.windowing import WindowState

BLOCK_WINDOWS = 10


def holdout_mask(window: np.ndarray, fraction: float, block: int = BLOCK_WINDOWS) -> np.ndarray:
    """True for windows in the held-back blocks (about ``fraction`` of them)."""
    every = max(2, int(round(1.0 / fraction)))
    return (window // block) % every == every - 1


def block_size(recordings: list[np.ndarray], window_s: float, fraction: float) -> int:
    """Blocks short enough that even the shortest recording has two held-back blocks."""
    every = max(2, int(round(1.0 / fraction)))
    shortest = min(float(r["ts"][-1] - r["ts"][0]) for r in recordings) / window_s
    return int(np.clip(shortest // (2 * every), 1, BLOCK_WINDOWS))


def clean_segments(frames: np.ndarray, window_s: float, min_windows: int = 4) -> list[np.ndarray]:
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


def feature_rows(recordings: list[np.ndarray], model_baseline, window_s: float) -> Rows:
    """Rows of every closed window of each recording (each one vehicle)."""
    parts = []
    for i, frames in enumerate(recordings):
        state = WindowState(window_s)
        rows = state.push(frames, np.zeros(len(frames), np.int64), model_baseline)
        rows.vehicle[:] = i
        parts.append(rows)
    return Rows.concat(parts)


def train_platform(
    platform: str, recordings: list[np.ndarray], cfg: DetectionConfig
) -> tuple[PlatformModel, dict]:
    """Train on benign frames of ``recordings`` (one vehicle each, attack frames removed)."""
    W = cfg.window_s
    sorted_recs = [r[np.argsort(r["ts"], kind="stable")] for r in recordings if len(r)]
    segments = [(i, seg) for i, r in enumerate(sorted_recs) for seg in clean_segments(r, W)]
    owners = [i for i, _ in segments]  # the recording (vehicle) each clean segment came from
    recordings = [seg for _, seg in segments]
    if not recordings:
        raise ValueError(
            f"no attack-free stretch of >= 4 windows to train platform {platform!r} on"
        )
    block = block_size(recordings, W, cfg.holdout_fraction)
    train_frames, train_seg, train_owner = [], [], []
    for i, r in enumerate(recordings):
        win = np.floor(r["ts"] / W).astype(np.int64)
        keep = ~holdout_mask(win, cfg.holdout_fraction, block)
        train_frames.append(r[keep])
        # one segment per block: consecutive-frame statistics never bridge a held-back gap
        train_seg.append(i * (1 << 32) + win[keep] // block)
        train_owner.append(np.full(int(keep.sum()), owners[i], np.int64))
    baseline = learn_baseline(
        np.concatenate(train_frames), np.concatenate(train_seg), W, np.concatenate(train_owner)
    )
    rows = feature_rows(recordings, baseline, W)
    held = holdout_mask(rows.window, cfg.holdout_fraction, block)
    if held.sum() == 0 or (~held).sum() < 10:
        raise ValueError(
            f"recordings for {platform!r} are too short: {len(np.unique(rows.window))} windows "
            f"of {W} s; need at least 8 windows per recording"
        )
    model = fit_platform_model(
        platform,
        baseline,
        rows.X[~held],
        rows.can_id[~held],
        (rows.X[held], rows.can_id[held], rows.vehicle[held], rows.window[held]),
        target_fpr=cfg.target_fpr,
        n_estimators=cfg.n_estimators,
        max_samples=cfg.max_samples,
        seed=cfg.seed,
    )
    n_windows_held = len(np.unique(np.stack([rows.vehicle[held], rows.window[held]], 1), axis=0))
    summary = {
        "recordings": len(recordings),
        "benign_frames": int(sum(len(r) for r in recordings)),
        "ids": int(len(baseline.ids)),
        "expected_ids": int(baseline.expected.sum()),
        "rows_train": int((~held).sum()),
        "windows_holdout": int(n_windows_held),
        "target_fpr": cfg.target_fpr,
        "window_s": W,
    }
    return model, summary
