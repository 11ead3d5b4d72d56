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
   (``detector.model.pipeline.score_rows``, warm-up and vehicle reference included).
   With a single drive, it is cut into two halves in time, and each half is
   held out in turn.
3. Each evidence column's cross-drive scale is what those held-out windows
   reached, and each id's tolerance what that id showed there
   (``calibrate``); the served model is fitted on every drive and carries them.

Recordings may hold attacks: their frames are left out, and so are the streams
they touched, window by window (``Recording``); the rest trains.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detector.core.config import DetectionConfig
from detector.core.fd import to_lanes
from detector.features.baseline import learn_baseline, payload_u64
from detector.features.columns import Rows, vw_groups
from detector.features.windowing import WindowState
from detector.model.pipeline import referenced_evidence
from detector.model.platform import (
    EVIDENCE_NAMES,
    N_EVIDENCE,
    PlatformModel,
    cross_drive_scale,
    envelope_slot,
    fit_platform_model,
    group_maxima,
)
from detector.model.reference import VOLUME_COLUMNS, WARMUP_WINDOWS, StreamReference

#: Two recordings whose benign (id, payload) sets overlap this much (the
#: smaller one's share) are one drive: different drives of a car share a few
#: per cent (constant messages), an edited copy of a trace nearly all.
SAME_DRIVE_OVERLAP = 0.5
#: A drive with fewer benign windows cannot be halved for calibration.
MIN_DRIVE_WINDOWS = 8
#: Drives are held out in at most this many groups (each fold fits a model).
MAX_CALIBRATION_FOLDS = 4
#: Columns of how a drive's payload values and bytes move. They change from drive to
#: drive (ROAD's three drives take every one of them to its bound), which halves of a
#: single drive cannot show: a model trained on one drive holds them at their bound,
#: so alone they never alert (on 10-minute drives of new vehicles and new drives,
#: simulated models trained on one 60 s drive flagged up to 64 % of benign windows,
#: pair_out, change_rise and delta_out).
DRIVE_VARYING = (
    "change_drop", "change_rise", "out_of_range", "delta_out", "pair_out", "novel_payload",
    "fixed_out",
)  # fmt: skip


def stream_window_keys(can_id: np.ndarray, window: np.ndarray) -> np.ndarray:
    """One uint64 per (CAN id, window): id in the high half."""
    return (np.asarray(can_id).astype(np.uint64) << np.uint64(32)) | (
        np.asarray(window).astype(np.int64).astype(np.uint64) & np.uint64(0xFFFF_FFFF)
    )


@dataclass(frozen=True)
class Recording:
    """A recording's benign frames, the drive it belongs to, and what an attack touched.

    An attack touches streams, not the whole bus: a fabricated id's window is not
    benign traffic for that id (nor is the window after it, whose first
    inter-arrival time and byte steps reach back into it), but every other id of
    that window is. So the attack's frames are left out, and so are the
    (id, window) pairs it touched (``dirty``); the rest of the recording trains.
    A masquerade's forged frames replace genuine ones: leaving them out makes the
    id absent there, which ``dirty`` covers too.
    """

    drive: int
    index: int
    frames: np.ndarray  # benign frames, in time order
    dirty: np.ndarray  # sorted stream_window_keys the attack touched, and each next window
    window_s: float

    @classmethod
    def of(cls, frames: np.ndarray, drive: int, index: int, window_s: float) -> Recording:
        frames = frames[np.argsort(frames["ts"], kind="stable")]
        attack = frames[frames["label"] != 0]
        win = np.floor(attack["ts"] / window_s).astype(np.int64)
        dirty = np.unique(
            np.r_[
                stream_window_keys(attack["can_id"], win),
                stream_window_keys(attack["can_id"], win + 1),
            ]
        )
        return cls(drive, index, frames[frames["label"] == 0], dirty, window_s)

    def clean(self, rows: Rows) -> np.ndarray:
        """Rows (of this recording's frames) that no attack touched."""
        return ~np.isin(stream_window_keys(rows.can_id, rows.window), self.dirty)

    def segment_runs(self) -> np.ndarray:
        """Per frame, how many of its id's dirty windows lie before it: consecutive-frame
        statistics never bridge an attack's gap in a stream."""
        key = stream_window_keys(self.frames["can_id"], np.floor(self.frames["ts"] / self.window_s))
        first = stream_window_keys(self.frames["can_id"], np.zeros(len(self.frames)))
        return np.searchsorted(self.dirty, key) - np.searchsorted(self.dirty, first)

    def windows(self) -> int:
        w = np.floor(self.frames["ts"] / self.window_s)
        return int(np.ptp(w)) + 1 if len(w) else 0


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


def split_in_time(recordings: list[Recording]) -> list[Recording]:
    """A single drive as two pseudo-drives (0, 1), its first and second half in time;
    each half counts as a recording of its own, which a held-out vehicle starts afresh."""
    t0 = min(float(r.frames["ts"][0]) for r in recordings)
    t1 = max(float(r.frames["ts"][-1]) for r in recordings)
    W = recordings[0].window_s
    middle = np.floor((t0 + t1) / 2 / W) * W
    out = []
    for r in recordings:
        cut = int(np.searchsorted(r.frames["ts"], middle))
        for half, part in ((0, r.frames[:cut]), (1, r.frames[cut:])):
            if len(part):
                out.append(Recording(half, 2 * r.index + half, part, r.dirty, W))
    return out


def feature_rows(recordings: list[Recording], baseline) -> Rows:
    """Rows of every closed window of each recording (each one vehicle) no attack touched."""
    parts = []
    for i, r in enumerate(recordings):
        rows = WindowState(r.window_s).push(r.frames, np.zeros(len(r.frames), np.int64), baseline)
        rows.vehicle[:] = i
        # a row's partial timing is not the bus's (see Rows.partial)
        parts.append(rows.take(np.flatnonzero(r.clean(rows) & ~rows.partial_mask())))
    return Rows.concat(parts)


def fit_core(platform: str, recordings: list[Recording], cfg: DetectionConfig) -> PlatformModel:
    """Baseline, forest and envelope from the benign streams of recordings; not yet calibrated."""
    W = cfg.window_s
    frames = np.concatenate([r.frames for r in recordings])
    # a stream segment per recording and stretch between its id's attacked windows
    seg = np.concatenate(
        [(i << 24) + r.segment_runs() for i, r in enumerate(recordings)]
    ).astype(np.int64)
    drive = np.concatenate([np.full(len(r.frames), r.drive, np.int64) for r in recordings])
    recording = np.concatenate(
        [np.full(len(r.frames), i, np.int64) for i, r in enumerate(recordings)]
    )
    baseline = learn_baseline(frames, seg, W, drive, recording)
    rows = feature_rows(recordings, baseline)
    if len(rows) < 10:
        raise ValueError(
            f"recordings for {platform!r} are too short: {len(rows)} benign feature rows of "
            f"{W} s windows"
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

    @property
    def windows(self) -> int:
        return int(self.group.max()) + 1 if len(self.group) else 0


def held_out_evidence(model: PlatformModel, recordings: list[Recording]) -> HeldOut:
    """What the service would see scoring each held-out recording as one vehicle: the
    effective evidence of its rows no attack touched, after the vehicle's warm-up.

    The payload evidence of its warm-up windows counts too, before the vehicle's
    reference takes it in: what differs between drives from their first windows on
    (a mode, a setting, a coupling that holds on one car only) can also change in
    the middle of one, and a column that does so must weigh accordingly.
    """
    ids, groups, parts = [], [], []
    n_groups = 0
    for r in recordings:
        state = WindowState(r.window_s)
        rows = state.push(r.frames, np.zeros(len(r.frames), np.int64), model.baseline)
        reference = StreamReference(len(model.baseline.ids))
        calibrated, effective, _, _ = referenced_evidence(
            model, rows, state.first_window, reference
        )
        warm = rows.window - state.first_window[rows.vehicle] <= WARMUP_WINDOWS
        effective[warm] = calibrated[warm] * ~VOLUME_COLUMNS
        keep = r.clean(rows)
        if keep.any():
            _, _, inv = vw_groups(rows.vehicle[keep], rows.window[keep])
            ids.append(rows.can_id[keep])
            groups.append(inv + n_groups)
            parts.append(effective[keep])
            n_groups += int(inv.max()) + 1
    if not parts:
        return HeldOut(np.zeros(0, np.uint32), np.zeros(0, np.int64), np.zeros((0, N_EVIDENCE)))
    return HeldOut(np.concatenate(ids), np.concatenate(groups), np.concatenate(parts))


def calibrate(
    model: PlatformModel, folds: list[HeldOut], target_fpr: float, single_drive: bool = False
) -> None:
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
        slot = envelope_slot(model.baseline, f.can_id)
        tolerance = np.maximum(tolerance, group_maxima(slot, f.evidence, n_slots))
        maxima.append(group_maxima(f.group, f.evidence, f.windows))
    model.tolerance = tolerance
    unmeasured = DRIVE_VARYING if single_drive else ()
    model.evidence_scale = cross_drive_scale(np.concatenate(maxima), target_fpr, unmeasured)


def calibration_folds(recordings: list[Recording]):
    """(held-out drives, training recordings, held-out recordings): leave one drive out
    (or one group of drives, when there are more than MAX_CALIBRATION_FOLDS), or with a
    single drive, one half of it in time."""
    drives = sorted({r.drive for r in recordings})
    if len(drives) == 1:
        if sum(r.windows() for r in recordings) < MIN_DRIVE_WINDOWS + 2 * WARMUP_WINDOWS:
            raise ValueError(
                "one drive is too short to hold half of it out: record at least "
                f"{MIN_DRIVE_WINDOWS + 2 * WARMUP_WINDOWS} windows of benign traffic"
            )
        recordings = split_in_time(recordings)
        drives = [0, 1]
    fold_of = {d: i % MAX_CALIBRATION_FOLDS for i, d in enumerate(drives)}
    for k in sorted(set(fold_of.values())):
        train = [r for r in recordings if fold_of[r.drive] != k]
        held = [r for r in recordings if fold_of[r.drive] == k]
        yield [d for d in drives if fold_of[d] == k], train, held


def train_platform(
    platform: str,
    recordings: list[np.ndarray],
    cfg: DetectionConfig,
    drives: list[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[PlatformModel, dict]:
    """Train on benign frames of ``recordings`` (attack frames, and the windows of the
    streams they touched, left out).

    ``drives``: the drive (or vehicle) each recording belongs to; by default each
    recording is its own drive, save for recordings sharing their payloads.
    ``progress(done, total)``: windows fitted so far, over every calibration fold's
    model and the final one; called before the first fit and after each.
    """
    W = cfg.window_s
    recordings = [to_lanes(r) for r in recordings]  # CAN FD frames as classic lanes
    if drives is None:
        drives = drive_groups(recordings)
    if len(drives) != len(recordings):
        raise ValueError(f"{len(drives)} drive labels for {len(recordings)} recordings")
    recs = [
        Recording.of(r, d, i, W) for i, (r, d) in enumerate(zip(recordings, drives, strict=True))
    ]
    recs = [r for r in recs if len(r.frames)]
    if not recs:
        raise ValueError(f"no benign frames to train platform {platform!r} on")
    plan = list(calibration_folds(recs))
    sizes = [sum(r.windows() for r in train) for _, train, _ in plan]
    sizes.append(sum(r.windows() for r in recs))
    report = progress or (lambda done, total: None)
    report(0, sum(sizes))
    held, folds = [], []
    for n, (name, train, held_recs) in enumerate(plan):
        h = held_out_evidence(fit_core(platform, train, cfg), held_recs)
        report(sum(sizes[: n + 1]), sum(sizes))
        held.append(h)
        folds.append({"held_out_drives": [int(d) for d in name], "windows": h.windows})
    if sum(f["windows"] for f in folds) == 0:
        raise ValueError(
            f"recordings for {platform!r} are too short: no benign window of a held-out "
            "drive to calibrate on"
        )
    model = fit_core(platform, recs, cfg)
    report(sum(sizes), sum(sizes))
    n_drives = len({r.drive for r in recs})
    calibrate(model, held, cfg.target_fpr, single_drive=n_drives == 1)
    summary = {
        "recordings": len(recordings),
        "drives": n_drives,
        "benign_frames": int(sum(len(r.frames) for r in recs)),
        "attacked_stream_windows": int(sum(len(r.dirty) for r in recs) // 2),
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

