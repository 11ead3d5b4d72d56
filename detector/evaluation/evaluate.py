"""Offline evaluation through the very path the service runs:
frames → Scorer (windows, features, model) → incident tracker.

Window labels come from the per-frame labels (a window is attacked when it
holds at least one attack frame; its attack is the most frequent attack label
in it) and, for attacks that leave no frames to label (suspension), from
attack spans such as those ``canwatch simulate`` writes to fleet.json.

Incidents are accounted so that they cannot flatter: an incident is true for an
attack only when it overlaps the attack and opens no earlier than one window
before the attack's first frame (window starts compared, not seconds with a
slack). One that opens earlier spans benign traffic before the attack (a false
alarm the attack then hides behind) and is false, like every incident that
overlaps no attack. An episode of an attack is detected by an anomalous window of
its own inside a true incident, and its time to detect runs to that window's end:
an incident that merely spans it detects nothing. Benign figures sit next to every
ROC-AUC: the share of benign windows flagged and false incidents per hour of
benign traffic, where benign windows are those of no attack episode (a slow
attack's windows between its frames are not benign), and pooled over recordings,
a window held by two of them (a capture and its edited twin) counts once.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from detector.core.brands import Fleet
from detector.core.config import IncidentConfig
from detector.core.errors import ConfigError
from detector.core.fd import lanes_and_source
from detector.core.schema import LABEL_CODE, LABELS
from detector.incidents.tracker import IncidentTracker, observations
from detector.model.pipeline import ScoredRows, Scorer, vehicle_clock, window_scores
from detector.model.platform import PlatformModel

WINDOW_COLUMNS = ("file", "vehicle", "window_start", "score", "label", "attack", "counted")


@dataclass
class Span:
    kind: str
    start_ts: float
    end_ts: float


def spans_for(fleet_json: Path | None, vehicle: str) -> list[Span]:
    """Attack spans of ``vehicle`` from a simulator fleet.json, if there is one."""
    if fleet_json is None or not fleet_json.is_file():
        return []
    try:
        data = json.loads(fleet_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{fleet_json}: not valid JSON: {exc}") from None
    return [
        Span(a["kind"], float(a["start_ts"]), float(a["end_ts"]))
        for a in data.get("attacks", [])
        if a.get("vehicle") in (None, vehicle)
    ]


@dataclass
class Evaluation:
    vehicle: str
    window_start: np.ndarray  # (w,) f8
    score: np.ndarray  # (w,) f8 highest normalised score of the window
    attack: np.ndarray  # (w,) i1 label code of the window's attack, 0 = benign
    incidents: list[dict]  # final (closed) incident events
    attack_spans: dict[str, tuple[float, float]]  # kind -> (first, last) attack time
    window_s: float
    # kind -> its episodes' (first, last) attack times (``attack_episodes``); None: each
    # kind's span is one episode
    episodes: dict[str, list[tuple[float, float]]] | None = None
    # (w,) u64 digest of each window's frames (``window_digests``); None: not known
    digest: np.ndarray | None = None

    def episodes_of(self, kind: str) -> list[tuple[float, float]]:
        return self.episodes[kind] if self.episodes else [self.attack_spans[kind]]

    def all_episodes(self) -> list[tuple[float, float]]:
        return [ep for kind in self.attack_spans for ep in self.episodes_of(kind)]


def score_frames(
    frames: np.ndarray,
    brand: str,
    vehicle: str,
    model: PlatformModel,
    fleet: Fleet,
    window_s: float,
    incident_cfg: IncidentConfig,
    spans: list[Span] = (),
    on_scored: Callable[[ScoredRows], None] | None = None,
    source: str | None = None,
    channel: str | None = None,
) -> Evaluation:
    """One vehicle's frames through the service's Scorer and incident tracker, labelled.

    ``on_scored`` sees every batch of scored rows as it comes (``detector.analysis``
    reads each window's top id and evidence there) without the Evaluation keeping them.
    With ``source`` (the file they were read from), each incident's ``provenance`` names
    it and the range of frame indices (as read, 0-based) that fell in its windows."""
    frames, lane_source = lanes_and_source(frames)  # CAN FD frames as classic lanes
    order = np.argsort(frames["ts"], kind="stable")
    frames = frames[order]
    if lane_source is not None:
        order = lane_source[order]  # provenance counts frames as read, not lanes
    scorer = Scorer({model.platform: model}, fleet, window_s)
    scored = scorer.push([(vehicle, brand, frames)])
    scorer.flush()
    tracker = IncidentTracker(incident_cfg, detector="evaluate")
    events: list[dict] = []
    windows, scores = [], []
    for sc in scored:
        if on_scored is not None:
            on_scored(sc)
        v, w, s = window_scores(sc)
        windows.append(w)
        scores.append(s)
        events += tracker.observe(observations(sc, window_s), vehicle_clock(sc, v, w, window_s))
    events += tracker.close_all()
    w = np.concatenate(windows) if windows else np.zeros(0, np.int64)
    s = np.concatenate(scores) if scores else np.zeros(0)
    attack, attack_spans = window_labels(frames, w, window_s, spans)
    episodes = attack_episodes(frames, window_s, spans)
    closed = [e for e in events if e["status"] == "closed"]
    if source is not None:
        for e in closed:
            e["provenance"] = file_provenance(source, frames["ts"], order, e, channel)
    digest = window_digests(frames, w, window_s)
    return Evaluation(
        vehicle, w * window_s, s, attack, closed, attack_spans, window_s, episodes, digest
    )


def window_digests(frames: np.ndarray, windows: np.ndarray, window_s: float) -> np.ndarray:
    """A 64-bit digest of the frames of each window (ids, lengths, payloads, and times
    within the window): two recordings give a window the same digest only when it
    holds the same frames, the same way into the window (a capture and its edited twin,
    outside the edit, even when a reader placed the two at different epochs, as ROAD's
    are). 0 for a window without frames."""
    out = np.zeros(len(windows), np.uint64)
    if not len(frames) or not len(windows):
        return out
    fw = np.floor(frames["ts"] / window_s).astype(np.int64)
    pos = np.searchsorted(windows, fw)
    ok = (pos < len(windows)) & (windows[np.minimum(pos, len(windows) - 1)] == fw)
    payload = np.ascontiguousarray(frames["data"][:, :8]).view("<u8").reshape(-1)
    into = np.round((frames["ts"] - fw * window_s) * 1e6).astype(np.int64).view(np.uint64)
    parts = (into, payload)
    h = frames["can_id"].astype(np.uint64) << np.uint64(8) | frames["dlc"].astype(np.uint64)
    with np.errstate(over="ignore"):
        for part in parts:  # splitmix64's finaliser over each column in turn
            h = (h ^ part) * np.uint64(0xBF58476D1CE4E5B9)
            h ^= h >> np.uint64(31)
        np.add.at(out, pos[ok], h[ok] | np.uint64(1))
    return out


def file_provenance(
    source: str, ts: np.ndarray, order: np.ndarray, incident: dict, channel: str | None = None
) -> dict | None:
    """Where ``incident``'s frames are in ``source``: the first and last index (in the
    file's own order, among the frames of ``channel`` if one was read) of the frames in
    [first_seen, last_seen); ``ts`` is sorted and ``order`` maps it back to file order."""
    lo, hi = np.searchsorted(ts, [incident["first_seen"], incident["last_seen"]])
    if hi <= lo:
        return None
    idx = order[lo:hi]
    return {
        "file": source,
        "first_frame": int(idx.min()),
        "last_frame": int(idx.max()),
        "frames": int(len(np.unique(idx))),  # an FD frame's lanes are one frame
        **({"channel": channel} if channel is not None else {}),
    }


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


#: An attack whose frames pause for longer than this many windows, and this many of
#: its frames' usual spacing (a slow spoof sending a frame every 2.5 s is one
#: attack), is two episodes (a capture of 300 intrusions of a few seconds each, as
#: HCRL's, is 300): each must be detected, and an incident opened in the benign
#: stretch between two is false.
EPISODE_GAP_WINDOWS, EPISODE_GAP_SPACINGS = 2, 4


def attack_episodes(
    frames: np.ndarray, window_s: float, spans: list[Span] = ()
) -> dict[str, list[tuple[float, float]]]:
    """Each attack kind's episodes, (first, last) attack time: its labelled frames (and
    ``spans``) in runs that pause no longer than EPISODE_GAP_WINDOWS windows and
    EPISODE_GAP_SPACINGS times the median spacing of its frames."""
    lab = frames["label"].astype(np.int64)
    times: dict[str, list[np.ndarray]] = {}
    spacing: dict[str, float] = {}
    for code in np.unique(lab[lab > 0]):
        t = np.sort(frames["ts"][lab == code])
        times.setdefault(LABELS[code], []).append(np.c_[t, t])
        spacing[LABELS[code]] = float(np.median(np.diff(t))) if len(t) > 1 else 0.0
    for sp in spans:  # a span's end is past its last moment, as an incident's last_seen
        last = np.nextafter(sp.end_ts, -np.inf)
        times.setdefault(sp.kind, []).append(np.array([[sp.start_ts, last]]))
    out = {}
    for kind, parts in times.items():
        iv = np.concatenate(parts)
        iv = iv[np.argsort(iv[:, 0], kind="stable")]
        reach = np.maximum.accumulate(iv[:, 1])
        pause = max(EPISODE_GAP_WINDOWS * window_s, EPISODE_GAP_SPACINGS * spacing.get(kind, 0.0))
        new = np.r_[True, iv[1:, 0] - reach[:-1] > pause]
        first = np.flatnonzero(new)
        last = np.r_[first[1:], len(iv)] - 1
        out[kind] = [(float(iv[a, 0]), float(reach[b])) for a, b in zip(first, last, strict=True)]
    return out


#: Normalised score at which a window is anomalous (the calibrated threshold).
ALERT = 1.0
#: An incident may open this many windows before an attack's first frame and still be that
#: attack's: one that opens earlier spans benign traffic before it, so it is a false alarm
#: that happened to run into the attack, and the attack is hidden behind it.
EARLY_WINDOWS = 1


def overlaps(incident: dict, start: float, end: float) -> bool:
    """Does ``incident`` ([first_seen, last_seen): last_seen ends its last window) hold
    a moment of the attack from ``start`` to ``end`` (its last frame)?"""
    return incident["first_seen"] <= end and incident["last_seen"] > start


def is_true_incident(incident: dict, start: float, end: float, window_s: float) -> bool:
    """The attack spanning [start, end] explains ``incident``: it overlaps the attack and
    opens no earlier than EARLY_WINDOWS windows before the attack's first frame. Window
    starts are compared (``first_seen`` is one, rounded to the millisecond): a window
    that begins a fraction of a millisecond more than a window before the first frame
    holds benign traffic only, and is early."""
    opened = round(incident["first_seen"] / window_s)
    earliest = math.ceil(start / window_s - 1e-9) - EARLY_WINDOWS
    return opened >= earliest and overlaps(incident, start, end)


def true_incidents(ev: Evaluation, kind: str) -> list[dict]:
    """Incidents true for an episode of attack ``kind``."""
    eps = ev.episodes_of(kind)
    return [i for i in ev.incidents if any(is_true_incident(i, s, e, ev.window_s) for s, e in eps)]


def false_incidents(ev: Evaluation) -> list[dict]:
    """Incidents that are true for none of the recording's attack episodes: one opened in
    the benign stretch between two intrusions is false, whatever it runs into."""
    eps = ev.all_episodes()
    return [
        i for i in ev.incidents if not any(is_true_incident(i, s, e, ev.window_s) for s, e in eps)
    ]


def episode_ttds(ev: Evaluation, kind: str) -> list[float | None]:
    """Per episode of ``kind``: seconds from its first frame to the end of its first
    window that is anomalous inside a true incident, or None when it has none (an
    incident that merely spans the episode, open from an earlier one, detects nothing)."""
    true = true_incidents(ev, kind)
    first = np.array([i["first_seen"] for i in true])
    last = np.array([i["last_seen"] for i in true])
    half = ev.window_s / 2  # window starts against first_seen, rounded to the millisecond
    out = []
    for start, end in ev.episodes_of(kind):
        mine = (ev.window_start <= end) & (ev.window_start + ev.window_s > start)
        w = ev.window_start[mine & (ev.score >= ALERT)]
        inside = ((w[:, None] > first - half) & (w[:, None] < last - half)).any(axis=1)
        hit = w[inside]
        ttd = round(max(float(hit.min()) + ev.window_s - start, 0.0), 3) if len(hit) else None
        out.append(ttd)
    return out


def time_to_detect(ev: Evaluation, kind: str) -> float | None:
    """The slowest episode's time to detect (``episode_ttds``); None when an episode of
    the attack had no true incident."""
    return worst_ttd(episode_ttds(ev, kind))


def window_figures(score: np.ndarray, attacked: np.ndarray) -> dict:
    """Window-level quality at the threshold; counts as well as ratios, so they pool."""
    benign = ~attacked
    flagged = score >= ALERT
    tp = int((flagged & attacked).sum())
    fp = int((flagged & benign).sum())
    n_att, n_ben = int(attacked.sum()), int(benign.sum())
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / n_att if n_att else None
    both = n_att and n_ben
    return {
        "windows": int(len(score)),
        "attacked_windows": n_att,
        "benign_windows": n_ben,
        "roc_auc": float(roc_auc_score(attacked, score)) if both else None,
        "precision": round(precision, 4),
        "recall": None if recall is None else round(recall, 4),
        "f1": round(2 * precision * recall / (precision + recall), 4) if tp else 0.0,
        "benign_flagged_windows": fp,
        "benign_flagged_fraction": round(fp / n_ben, 4) if n_ben else None,
    }


def benign_windows(ev: Evaluation) -> np.ndarray:
    """Which windows are benign: no attack frame, and in no episode of an attack (a slow
    attack's windows between two of its frames are the attack's, not benign traffic)."""
    benign = ev.attack == 0
    for start, end in ev.all_episodes():
        benign &= ~((ev.window_start <= end) & (ev.window_start + ev.window_s > start))
    return benign


def benign_hours(ev: Evaluation) -> float:
    """Hours of benign traffic: benign windows x window length."""
    return int(benign_windows(ev).sum()) * ev.window_s / 3600.0


def incident_figures(n_false: int, hours: float) -> dict:
    return {
        "benign_hours": round(hours, 6),
        "false_incidents": n_false,
        "false_incidents_per_hour": round(n_false / hours, 3) if hours else None,
    }


def attack_report(ev: Evaluation, kind: str) -> dict:
    """Quality figures for one attack kind against the recording's benign windows; the
    benign figures (windows flagged, false incidents) are those of that recording."""
    code = LABEL_CODE[kind]
    sel = (ev.attack == code) | benign_windows(ev)
    start, _ = ev.attack_spans[kind]
    hits = ev.window_start[(ev.attack == code) & (ev.score >= ALERT)]
    first_window = (
        round(max(float(hits.min()) + ev.window_s - start, 0.0), 3) if len(hits) else None
    )
    eps = ev.episodes_of(kind)
    overlapping = [i for i in ev.incidents if any(overlaps(i, s, e) for s, e in eps)]
    true = true_incidents(ev, kind)
    ttds = episode_ttds(ev, kind)
    ttd = worst_ttd(ttds)
    return {
        **window_figures(ev.score[sel], ev.attack[sel] == code),
        **incident_figures(len(false_incidents(ev)), benign_hours(ev)),
        "detected": ttd is not None,
        "episodes": len(eps),
        "episodes_detected": sum(t is not None for t in ttds),
        "time_to_detect_s": ttd,
        "first_flagged_window_s": first_window,
        "incidents_overlapping": len(overlapping),
        "true_incidents": len(true),
        "early_incidents": len(overlapping) - len(true),
    }


def worst_ttd(ttds: list[float | None]) -> float | None:
    """The slowest detection; None when an attack was never detected (or there is none)."""
    return None if not ttds or any(t is None for t in ttds) else max(ttds)


def median_ttd(ttds: list[float | None]) -> float | None:
    found = [t for t in ttds if t is not None]
    return round(float(np.median(found)), 3) if found else None


def file_report(ev: Evaluation) -> dict:
    """Figures of one recording over all its windows, and per attack kind."""
    attacks = {kind: attack_report(ev, kind) for kind in sorted(ev.attack_spans)}
    false = false_incidents(ev)
    ttds = [a["time_to_detect_s"] for a in attacks.values()]
    sel = (ev.attack > 0) | benign_windows(ev)
    return {
        **window_figures(ev.score[sel], ev.attack[sel] > 0),
        **incident_figures(len(false), benign_hours(ev)),
        "incidents": len(ev.incidents),
        "incidents_overlapping_attacks": sum(
            any(overlaps(i, s, e) for s, e in ev.all_episodes()) for i in ev.incidents
        ),
        "true_incidents": len(ev.incidents) - len(false),
        "time_to_detect_s": worst_ttd(ttds),
        "attacks": attacks,
    }


def pooled_report(evs: list[Evaluation]) -> dict:
    """Figures over every window of ``evs`` together: ROC-AUC over the concatenated windows,
    counts summed, time to detect as the worst and median over all attacks. An attack kind's
    figures are its windows against every benign window of ``evs``. A benign window that
    two recordings hold (the same frames the same way into the window: a capture and its
    edited twin, held out together) counts once, at its higher score, and so does a false
    incident opened on it: the twin repeats traffic, it does not add any."""
    if not evs:
        return {}
    score = np.concatenate([ev.score for ev in evs])
    attack = np.concatenate([ev.attack for ev in evs])
    benign = _once(evs, np.concatenate([benign_windows(ev) for ev in evs]), score)
    sizes = np.concatenate([np.full(len(ev.score), ev.window_s) for ev in evs])
    hours = float(sizes[benign].sum()) / 3600.0
    n_false = _false_once(evs)
    attacks = {}
    for kind in sorted({k for ev in evs for k in ev.attack_spans}):
        code = LABEL_CODE[kind]
        sel = (attack == code) | benign
        ttds = [time_to_detect(ev, kind) for ev in evs if kind in ev.attack_spans]
        attacks[kind] = {
            **window_figures(score[sel], attack[sel] == code),
            **incident_figures(n_false, hours),
            "attacks": len(ttds),
            "detected": sum(t is not None for t in ttds),
            "time_to_detect_s": worst_ttd(ttds),
            "time_to_detect_median_s": median_ttd(ttds),
        }
    ttds = [time_to_detect(ev, k) for ev in evs for k in ev.attack_spans]
    sel = (attack > 0) | benign
    return {
        "recordings": len(evs),
        **window_figures(score[sel], attack[sel] > 0),
        **incident_figures(n_false, hours),
        "incidents": sum(len(ev.incidents) for ev in evs),
        "attacks_total": len(ttds),
        "attacks_detected": sum(t is not None for t in ttds),
        "time_to_detect_s": worst_ttd(ttds),
        "time_to_detect_median_s": median_ttd(ttds),
        "attacks": attacks,
    }


def _digests(evs: list[Evaluation]) -> np.ndarray:
    """Every window's frame digest (0: none known), concatenated."""
    digests = [
        ev.digest if ev.digest is not None else np.zeros(len(ev.score), np.uint64) for ev in evs
    ]
    return np.concatenate(digests)


def _once(evs: list[Evaluation], benign: np.ndarray, score: np.ndarray) -> np.ndarray:
    """``benign`` with each window that several recordings hold kept once: the row with
    the highest of its scores."""
    digests = _digests(evs)
    known = np.flatnonzero(benign & (digests != 0))
    if not len(known):
        return benign
    # group by digest; within a group, the highest score first
    order = known[np.lexsort((-score[known], digests[known]))]
    same = digests[order][1:] == digests[order][:-1]
    out = benign.copy()
    out[order[1:][same]] = False
    return out


def _false_once(evs: list[Evaluation]) -> int:
    """False incidents over ``evs``, one opened on a window two recordings hold (the same
    frames) counted once."""
    seen: set[int] = set()
    n = 0
    for ev in evs:
        for inc in false_incidents(ev):
            i = int(np.searchsorted(ev.window_start, inc["first_seen"] - ev.window_s / 2))
            digest = int(ev.digest[i]) if ev.digest is not None and i < len(ev.digest) else 0
            if digest and digest in seen:
                continue
            seen.add(digest)
            n += 1
    return n


def window_rows(file: str, ev: Evaluation) -> list[tuple]:
    """One row per window: label 1 attacked (it holds attack frames), else 0; counted 0
    for a window in an attack's episode without a frame of it, which the figures count
    on neither side (the label column keeps its two values for the tools that read it)."""
    # scores at full precision: rounding makes ties, and an AUC taken from the
    # CSV would then differ from the report's
    counted = ((ev.attack > 0) | benign_windows(ev)).tolist()
    return [
        (file, ev.vehicle, f"{t:.3f}", repr(s), int(a > 0), LABELS[a] if a > 0 else "", int(c))
        for t, s, a, c in zip(
            ev.window_start.tolist(), ev.score.tolist(), ev.attack.tolist(), counted, strict=True
        )
    ]
