"""Pictures of an evaluation: what ``canwatch evaluate --plot F.png`` draws.

Per recording, the window score over time on a log axis, with the threshold at
1.0, the attack spans shaded and the incidents as bars over the windows they
cover (green when true for an attack, red when false, by the rule ``evaluate``
counts them with); beside them, the ROC curve of each recording and of all of
them pooled, with the operating point at the threshold marked.

Drawn on a bare ``matplotlib.figure.Figure`` (rendered by Agg, no pyplot state),
so it works without a display and from threads. Imported only when a plot is
asked for: matplotlib stays out of every other command.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.transforms import blended_transform_factory
from sklearn.metrics import roc_auc_score, roc_curve

from detector.core.schema import LABELS
from detector.evaluation.evaluate import ALERT, Evaluation, is_true_incident

#: File types ``--plot`` writes (matplotlib's Agg, SVG and PDF backends).
PLOT_SUFFIXES = (".png", ".svg", ".pdf")
#: Scores below this are drawn on it: a log axis has no zero.
SCORE_FLOOR = 1e-3
#: Attack kinds' colours (tab10), the same in every panel.
KIND_COLOURS = dict(zip(LABELS[1:], ("C3", "C1", "C4", "C6", "C5", "C8", "C7"), strict=True))
TRUE_COLOUR, FALSE_COLOUR, SCORE_COLOUR = "C2", "C3", "C0"


def evaluation_figure(files: list[tuple[str, Evaluation]], title: str = "") -> Figure:
    """One score-over-time panel per ``(name, evaluation)`` and a ROC panel beside them."""
    n = max(len(files), 1)
    fig = Figure(figsize=(13, 1.2 + 2.4 * n), layout="constrained")
    grid = fig.add_gridspec(n, 2, width_ratios=(3.2, 1.2))
    for row, (name, ev) in enumerate(files):
        score_panel(fig.add_subplot(grid[row, 0]), name, ev)
    roc_panel(fig.add_subplot(grid[: min(n, 2), 1]), files)
    handles = {}
    for ax in fig.axes[: len(files)]:
        for h, label in zip(*ax.get_legend_handles_labels(), strict=True):
            handles.setdefault(label, h)
    if handles:
        fig.legend(handles.values(), handles.keys(), loc="outside lower center", ncols=8)
    if title:
        fig.suptitle(title, fontsize=11)
    return fig


def save_evaluation_plot(
    files: list[tuple[str, Evaluation]], path: str | Path, title: str = ""
) -> None:
    """``evaluation_figure`` written to ``path`` (.png, .svg or .pdf by its suffix)."""
    fig = evaluation_figure(files, title)
    # no creation date or version in the file: the same evaluation draws the same bytes
    meta = {"Software": None} if Path(path).suffix.lower() == ".png" else {}
    fig.savefig(path, dpi=110, metadata=meta)


def score_panel(ax: Axes, name: str, ev: Evaluation) -> None:
    """Window scores of one recording over time (s from its first window), log axis."""
    t0 = float(ev.window_start[0]) if len(ev.window_start) else 0.0
    t = ev.window_start - t0
    s = np.maximum(ev.score, SCORE_FLOOR)
    for kind, (start, end) in sorted(ev.attack_spans.items()):
        ax.axvspan(start - t0, end - t0, color=KIND_COLOURS[kind], alpha=0.15, lw=0, label=kind)
    if len(t):  # each window's score held across it, the last one too
        edges = np.r_[t, t[-1] + ev.window_s]
        ax.step(
            edges, np.r_[s, s[-1]], where="post", color=SCORE_COLOUR, lw=1, label="window score"
        )
    for code in np.unique(ev.attack[ev.attack > 0]).tolist():
        hit = ev.attack == code
        middle = t[hit] + ev.window_s / 2
        ax.plot(middle, s[hit], ".", ms=5, color=KIND_COLOURS[LABELS[code]])
    ax.axhline(ALERT, color="k", ls="--", lw=1, label=f"threshold {ALERT:.1f}")
    _incident_bars(ax, ev, t0)
    ax.set_yscale("log")
    top = max(float(s.max()) if len(s) else ALERT, ALERT) * 30  # room for the incident bars
    ax.set_ylim(SCORE_FLOOR, top)
    if len(t):
        ax.set_xlim(0, float(t[-1]) + ev.window_s)
    ax.set_ylabel("score")
    ax.set_xlabel("seconds from the first scored window")
    ax.set_title(f"{name}: {_summary(ev)}", loc="left", fontsize=9)


def _incident_bars(ax: Axes, ev: Evaluation, t0: float) -> None:
    """A bar per incident across the top of the panel (x in data, y in axes units)."""
    across = blended_transform_factory(ax.transData, ax.transAxes)
    labelled = set()
    for inc in ev.incidents:
        true = is_true(inc, ev)
        label = "incident" if true else "false incident"
        colour = TRUE_COLOUR if true else FALSE_COLOUR
        x0, x1 = inc["first_seen"] - t0, inc["last_seen"] - t0
        ax.plot(
            [x0, x1], [0.93, 0.93], color=colour, lw=4, solid_capstyle="butt",
            transform=across, label=None if label in labelled else label,
        )  # fmt: skip
        ax.plot([x0], [0.93], "v", color=colour, ms=7, transform=across)
        labelled.add(label)


def _summary(ev: Evaluation) -> str:
    attacked = ev.attack > 0
    parts = [f"{len(ev.score)} windows"]
    if attacked.any() and not attacked.all():
        fpr, tpr, _ = _operating_point(ev.score, attacked)
        parts.append(f"AUC {_auc(ev.score, attacked):.3f}")
        parts.append(f"recall {tpr:.2f}, benign flagged {100 * fpr:.1f}%")
    false = sum(not is_true(i, ev) for i in ev.incidents)
    parts.append(f"incidents {len(ev.incidents)} ({false} false)")
    return ", ".join(parts)


def is_true(incident: dict, ev: Evaluation) -> bool:
    """True for one of ``ev``'s attacks, as ``evaluate`` counts incidents."""
    return any(is_true_incident(incident, s, e, ev.window_s) for s, e in ev.all_episodes())


def roc_panel(ax: Axes, files: list[tuple[str, Evaluation]]) -> None:
    """ROC of each recording with both kinds of windows, and pooled when several."""
    curves = [(name, ev.score, ev.attack > 0) for name, ev in files]
    curves = [c for c in curves if c[2].any() and not c[2].all()]
    if len(curves) > 1:
        score = np.concatenate([c[1] for c in curves])
        attacked = np.concatenate([c[2] for c in curves])
        curves.append(("pooled", score, attacked))
    ax.plot([0, 1], [0, 1], ":", color="0.6", lw=1)
    for i, (name, score, attacked) in enumerate(curves):
        pooled = name == "pooled"
        fpr, tpr, _ = roc_curve(attacked, score)
        colour = "k" if pooled else f"C{i % 10}"
        label = f"{_short(name)} (AUC {_auc(score, attacked):.3f})"
        ax.plot(fpr, tpr, color=colour, lw=2 if pooled else 1.2, label=label)
        ax.plot(*_operating_point(score, attacked)[:2], "o", color=colour, ms=5)
    if not curves:
        ax.text(0.5, 0.5, "no ROC: no recording has\nboth attacked and benign windows",
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
    ax.set_xlim(-0.02, 1.02)
    ax.set_ylim(-0.02, 1.02)
    ax.set_aspect("equal")
    ax.set_xlabel("benign windows flagged (FPR)")
    ax.set_ylabel("attacked windows flagged (TPR)")
    ax.set_title(f"ROC of the windows (dot: at threshold {ALERT:.1f})", loc="left", fontsize=10)
    if curves:
        ax.legend(loc="lower right", fontsize=7)


def _operating_point(score: np.ndarray, attacked: np.ndarray) -> tuple[float, float, float]:
    """(FPR, TPR, threshold) at the calibrated threshold."""
    flagged = score >= ALERT
    return float(flagged[~attacked].mean()), float(flagged[attacked].mean()), ALERT


def _auc(score: np.ndarray, attacked: np.ndarray) -> float:
    return float(roc_auc_score(attacked, score))


def _short(name: str, width: int = 30) -> str:
    """``name`` in at most ``width`` characters, cut in the middle (files differ at the end)."""
    if len(name) <= width:
        return name
    half = (width - 1) // 2
    return name[:half] + "…" + name[len(name) - (width - 1 - half) :]


__all__ = ["PLOT_SUFFIXES", "evaluation_figure", "save_evaluation_plot"]
