"""Offline evaluation through the very path the service runs:
frames → Scorer (windows, features, model) → incident tracker.

Window labels come from the per-frame labels (a window is attacked when it
holds at least one attack frame; its attack is the most frequent attack label
in it) and, for attacks that leave no frames to label (suspension), from
attack spans such as those ``canwatch simulate`` writes to fleet.json.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.metrics import roc_auc_score

from detector.brands import Fleet
from detector.config import IncidentConfig
from detector.incidents import IncidentTracker, observations
from detector.model import PlatformModel
from detector.pipeline import Scorer, vehicle_clock, window_scores
from detector.schema import LABEL_CODE, LABELS

WINDOW_COLUMNS = ("file", "vehicle", "window_start", "score", "label", "attack")


@dataclass
class Span:
    kind: str
    start_ts: float
    end_ts: float


@dataclass
class Evaluation:
    vehicle: str
    window_start: np.ndarray  # (w,) f8
    score: np.ndarray  # (w,) f8 highest normalised score of the window
    attack: np.ndarray  # (w,) i1 label code of the window's attack, 0 = benign
    incidents: list[dict]  # final (closed) incident events
    attack_spans: dict[str, tuple[float, float]]  # kind -> (first, last) attack time
    window_s: float


def score_frames(
    frames: np.ndarray,
    brand: str,
    vehicle: str,
    model: PlatformModel,
    fleet: Fleet,
    window_s: float,
    incident_cfg: IncidentConfig,
    spans: list[Span] = (),
) -> Evaluation:
    frames = frames[np.argsort(frames["ts"], kind="stable")]
    scorer = Scorer({model.platform: model}, fleet, window_s)
    scored = scorer.push([(vehicle, brand, frames)])
    scorer.flush()
    tracker = IncidentTracker(incident_cfg, detector="evaluate")
    events: list[dict] = []
    windows, scores = [], []
    for sc in scored:
        v, w, s = window_scores(sc)
        windows.append(w)
        scores.append(s)
        events += tracker.observe(observations(sc, window_s), vehicle_clock(sc, v, w, window_s))
    events += tracker.close_all()
    w = np.concatenate(windows) if windows else np.zeros(0, np.int64)
    s = np.concatenate(scores) if scores else np.zeros(0)
    attack, attack_spans = window_labels(frames, w, window_s, spans)
    closed = [e for e in events if e["status"] == "closed"]
    return Evaluation(vehicle, w * window_s, s, attack, closed, attack_spans, window_s)


def window_labels(
    frames: np.ndarray, windows: np.ndarray, window_s: float, spans: list[Span] = ()
) -> tuple[np.ndarray, dict[str, tuple[float, float]]]:
    """Most frequent attack label per window (0 = benign) and each kind's time span."""
    fw = np.floor(frames["ts"] / window_s).astype(np.int64)
    lab = frames["label"].astype(np.int64)
    attacked = lab > 0
    out = np.zeros(len(windows), np.int8)
    kinds: dict[str, tuple[float, float]] = {}
    if attacked.any():
        pos = np.searchsorted(windows, fw[attacked])
        ok = (pos < len(windows)) & (windows[np.minimum(pos, len(windows) - 1)] == fw[attacked])
        counts = np.zeros((len(windows), len(LABELS)), np.int64)
        np.add.at(counts, (pos[ok], lab[attacked][ok]), 1)
        has = counts.sum(axis=1) > 0
        out[has] = counts[has].argmax(axis=1)
        for code in np.unique(lab[attacked]):
            t = frames["ts"][lab == code]
            kinds[LABELS[code]] = (float(t.min()), float(t.max()))
    for sp in spans:
        hit = (windows * window_s < sp.end_ts) & ((windows + 1) * window_s > sp.start_ts)
        out[hit & (out == 0)] = LABEL_CODE[sp.kind]
        lo, hi = kinds.get(sp.kind, (sp.start_ts, sp.end_ts))
        kinds[sp.kind] = (min(lo, sp.start_ts), max(hi, sp.end_ts))
    return out, kinds


def attack_report(ev: Evaluation, kind: str) -> dict:
    """Quality figures for one attack kind against the file's benign windows."""
    code = LABEL_CODE[kind]
    sel = (ev.attack == code) | (ev.attack == 0)
    y = ev.attack[sel] == code
    s = ev.score[sel]
    flagged = s >= 1.0
    tp = int((flagged & y).sum())
    fp = int((flagged & ~y).sum())
    fn = int((~flagged & y).sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    start, end = ev.attack_spans[kind]
    hits = ev.window_start[(ev.attack == code) & (ev.score >= 1.0)]
    ttd = float(hits.min() + ev.window_s - start) if len(hits) else None
    overlapping = [i for i in ev.incidents if i["first_seen"] <= end and i["last_seen"] >= start]
    return {
        "windows": int(sel.sum()),
        "attacked_windows": int(y.sum()),
        "roc_auc": float(roc_auc_score(y, s)) if y.any() and (~y).any() else None,
        "precision": round(precision, 4),
        "recall": round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if tp else 0.0,
        "time_to_detect_s": None if ttd is None else round(max(ttd, 0.0), 3),
        "incidents_overlapping": len(overlapping),
    }


def file_report(ev: Evaluation) -> dict:
    benign = ev.attack == 0
    y = ~benign
    overall = float(roc_auc_score(y, ev.score)) if y.any() and benign.any() else None
    attack_windows = [ev.attack_spans[k] for k in ev.attack_spans]
    false_incidents = [
        i
        for i in ev.incidents
        if not any(i["first_seen"] <= e and i["last_seen"] >= s for s, e in attack_windows)
    ]
    return {
        "windows": int(len(ev.score)),
        "attacked_windows": int(y.sum()),
        "roc_auc": overall,
        "benign_flagged_fraction": round(float((ev.score[benign] >= 1.0).mean()), 4)
        if benign.any()
        else None,
        "incidents": len(ev.incidents),
        "incidents_overlapping_attacks": len(ev.incidents) - len(false_incidents),
        "false_incidents": len(false_incidents),
        "attacks": {kind: attack_report(ev, kind) for kind in sorted(ev.attack_spans)},
    }


def window_rows(file: str, ev: Evaluation) -> list[tuple]:
    return [
        (file, ev.vehicle, f"{t:.3f}", f"{s:.6f}", int(a > 0), LABELS[a] if a > 0 else "")
        for t, s, a in zip(
            ev.window_start.tolist(), ev.score.tolist(), ev.attack.tolist(), strict=True
        )
    ]
