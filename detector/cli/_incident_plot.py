"""The picture of one incident (``canwatch incidents show ID --plot F.png``; ``.svg`` and
``.pdf`` too, by suffix).

Top panel: the score of each of its anomalous windows (log axis) against the
threshold at 1.0, the incident's span shaded. One panel per top id (at most
``MAX_IDS``, by score): for timing or novelty evidence, the id's frames per
window against the band the model learned for it (mean ± 3 σ of its frames
per window; an id never seen in training has learned none); for payload
evidence, the values of the id's byte that left its learned range most often,
against that range. Drawn with matplotlib's Agg canvas (no display, no
pyplot state).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

from detector.cli._forensics import ForensicsError, incident_span
from detector.core.config import Config
from detector.core.fd import parse_described_id, to_lanes
from detector.features.baseline import Baseline
from detector.incidents.evidence import PAYLOAD
from detector.model.platform import PlatformModel

MAX_IDS = 3
#: what ``--plot`` writes, by the file's suffix
PLOT_FORMATS = ("png", "svg", "pdf")
BYTE_EVIDENCE = frozenset(PAYLOAD) | {"counter_err"}
BAND_SIGMAS = 3.0


def plot_format(path: str) -> str:
    """The format ``path``'s suffix names; matplotlib would write any it knows, or PNG
    bytes under any name when told png, so the choice is made here."""
    fmt = Path(path).suffix.lower().lstrip(".")
    if fmt not in PLOT_FORMATS:
        raise ForensicsError(f"--plot {path}: give a .png, .svg or .pdf file (chosen by suffix)")
    return fmt


def parse_id(text: str) -> int:
    """An id as incidents write it (``0x1E4``, ``0x18FEF100x`` extended, an FD lane
    ``0x1A0 FD bytes 8-15``) back to the int the features knew it by."""
    return parse_described_id(text)


def top_ids(inc: dict, limit: int = MAX_IDS) -> list[tuple[str, int, str]]:
    """(id text, id, what to draw: "bytes" or "rate") of the incident's top ids: those its
    evidence names, in its order; else its highest-scoring ``can_ids`` (bus-level
    evidence gives every id of a window the same score, so those say less)."""
    features: dict[str, str] = {}
    for e in inc.get("evidence") or []:
        if isinstance(e, dict) and e.get("can_id"):
            features.setdefault(str(e["can_id"]), str(e.get("feature")))
    named = list(features) or [
        c.get("can_id") for c in inc.get("can_ids") or [] if isinstance(c, dict)
    ]
    out = []
    for text in named:
        try:
            cid = parse_id(str(text))
        except ValueError:
            continue
        kind = "bytes" if features.get(str(text)) in BYTE_EVIDENCE else "rate"
        out.append((str(text), cid, kind))
    return out[:limit]


def per_window(ts: np.ndarray, window_s: float, w0: int, w1: int) -> np.ndarray:
    """Frames in each window w0..w1 (inclusive) of ``ts``."""
    w = np.floor(ts / window_s).astype(np.int64)
    return np.bincount(w[(w >= w0) & (w <= w1)] - w0, minlength=w1 - w0 + 1)


def worst_byte(data: np.ndarray, inside: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> int:
    """The byte of ``data`` (n, 8) most often outside [lo, hi] during the incident
    (``inside``); else the one whose values then were distributed most unlike those
    around it (total variation distance); else the one that varies most."""
    if not len(data):
        return 0
    during, other = data[inside], data[~inside]
    out = ((during < lo) | (during > hi)).sum(axis=0)
    if out.max() > 0:
        return int(out.argmax())
    if len(during) and len(other):
        tv = [
            np.abs(
                np.bincount(during[:, b], minlength=256) / len(during)
                - np.bincount(other[:, b], minlength=256) / len(other)
            ).sum()
            for b in range(8)
        ]
        if max(tv) > 0:
            return int(np.argmax(tv))
    return int(data.astype(float).std(axis=0).argmax())


def incident_model(model_dir: str, inc: dict, cfg: Config) -> PlatformModel:
    """The model that scored ``inc`` (its platform, its version if still there)."""
    from detector.cli._common import fleet_from
    from detector.model.store import list_manifests, load_model

    platform = fleet_from(cfg).platform_of(str(inc.get("brand")))
    versions = list_manifests(model_dir).get(platform) if platform else None
    if not versions:
        raise ForensicsError(
            f"--plot needs the {platform} model: none in {model_dir} (--models DIR)"
        )
    same = [m for m in versions if m.version == inc.get("model_version")]
    if not same:
        print(
            f"canwatch incidents show: note: {platform} v{inc.get('model_version')} is not in "
            f"{model_dir}; drawing the learned ranges of v{versions[-1].version}",
            file=sys.stderr,
        )
    return load_model((same or versions)[-1].path)


def plot_incident(inc: dict, frames: np.ndarray, baseline: Baseline, out: str) -> None:
    from matplotlib.figure import Figure

    ids = top_ids(inc)
    W = float(baseline.window_s)
    t0, t1 = incident_span(inc)
    fig = Figure(figsize=(9, 2.4 * (1 + len(ids))), layout="constrained")
    axes = fig.subplots(1 + len(ids), 1, sharex=True, squeeze=False)[:, 0]
    fig.suptitle(
        f"incident {inc.get('incident_id')}: {inc.get('suspected_attack')} on "
        f"{inc.get('vehicle')} ({inc.get('brand')})",
        fontsize=10,
    )
    _scores(axes[0], inc, t0, t1, W)
    frames = to_lanes(frames)  # the frames as the features saw them: FD lanes, error frames
    for ax, (text, cid, kind) in zip(axes[1:], ids, strict=True):
        mine = frames[frames["can_id"] == cid]
        slot, known = baseline.slots(np.array([cid], np.uint32))
        s = int(slot[0]) if bool(known[0]) else None
        if kind == "bytes":
            _bytes(ax, text, mine, baseline, s, t0, t1)
        else:
            _rate(ax, text, mine, frames, baseline, s, t0, W)
        ax.set_title(_said(inc, text), fontsize=8, loc="left")
        ax.axvspan(0.0, t1 - t0, color="tab:red", alpha=0.08)
    axes[-1].set_xlabel(f"seconds after first_seen (UTC epoch {t0:.3f})")
    fig.savefig(out, dpi=100, format=plot_format(out))


def _said(inc: dict, text: str) -> str:
    """The incident's first evidence line on id ``text``."""
    for e in inc.get("evidence") or []:
        if isinstance(e, dict) and e.get("can_id") == text:
            return " ".join(str(e.get("text")).split())
    return text


def _scores(ax, inc: dict, t0: float, t1: float, W: float) -> None:
    pts = np.array(inc.get("window_scores") or [], float).reshape(-1, 2)
    ax.bar(pts[:, 0] - t0 + 0.05 * W, pts[:, 1], width=0.9 * W, align="edge", color="tab:red",
           label="anomalous window's score")  # fmt: skip
    ax.axhline(1.0, color="black", ls="--", lw=1, label="threshold (1.0)")
    ax.axvspan(0.0, t1 - t0, color="tab:red", alpha=0.08)
    ax.set_yscale("log")
    top = float(pts[:, 1].max()) if len(pts) else 2.0
    ax.set_ylim(0.5, max(top * 1.5, 2.0))
    ax.set_ylabel("score")
    ax.legend(loc="upper right", fontsize=8)


def _rate(ax, text, mine, frames, baseline: Baseline, slot, t0: float, W: float) -> None:
    w0 = int(np.floor(frames["ts"].min() / W)) if len(frames) else int(t0 // W)
    w1 = int(np.floor(frames["ts"].max() / W)) if len(frames) else w0
    counts = per_window(mine["ts"], W, w0, w1)
    x = np.arange(w0, w1 + 2) * W - t0
    ax.stairs(counts, x, baseline=None, color="tab:blue", label=f"{text} frames per window")
    if slot is None:
        ax.axhline(0.0, color="tab:green", lw=4, alpha=0.4, label="learned: never seen")
    else:
        mean, std = float(baseline.mean_count[slot]), float(baseline.std_count[slot])
        lo, hi = max(mean - BAND_SIGMAS * std, 0.0), mean + BAND_SIGMAS * std
        ax.axhspan(lo, hi, color="tab:green", alpha=0.25, label="learned mean ± 3σ")
    ax.set_ylabel("frames / window")
    ax.legend(loc="upper right", fontsize=8)


def _bytes(ax, text, mine, baseline: Baseline, slot, t0: float, t1: float) -> None:
    data = mine["data"].astype(int)
    inside = (mine["ts"] >= t0) & (mine["ts"] < t1)
    if slot is None:
        b = worst_byte(data, inside, np.zeros(8, int), np.full(8, 255))
        lo = hi = None
    else:
        lo_all, hi_all = baseline.byte_min[slot].astype(int), baseline.byte_max[slot].astype(int)
        b = worst_byte(data, inside, lo_all, hi_all)
        lo, hi = lo_all[b], hi_all[b]
    ax.plot(mine["ts"] - t0, data[:, b] if len(data) else [], ".", ms=3, color="tab:blue",
            label=f"{text} byte {b}")  # fmt: skip
    if lo is not None:
        ax.axhspan(lo - 0.5, hi + 0.5, color="tab:green", alpha=0.25, label="learned range")
    ax.set_ylim(-8, 263)
    ax.set_ylabel("byte value")
    ax.legend(loc="upper right", fontsize=8)
