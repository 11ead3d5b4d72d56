"""An analyst's toolkit: CAN captures and their window scores as pandas DataFrames.

``read_capture`` reads any log format ``replay.readers`` knows into one row per
frame; ``score_capture`` runs a capture through the path ``canwatch evaluate``
runs (``detector.evaluation.evaluate.score_frames``: the service's Scorer and
incident tracker) and returns one row per (vehicle, window) with its score, its
label, the id and feature that set the score, and the evidence an incident
would carry.

Both are exported lazily from the ``detector`` package (``from detector import
read_capture``), so the service, which never imports this module, never loads
pandas.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from detector.core.brands import Fleet, load_fleet
from detector.core.config import Config, load_config
from detector.core.errors import InputError
from detector.core.schema import (
    EXTENDED_FLAG,
    FLAG_RTR,
    ID_MASK_EXTENDED,
    LABEL_CODE,
    LABELS,
    empty_frames,
)
from detector.evaluation.evaluate import ALERT, Evaluation, Span, score_frames, spans_for
from detector.incidents.evidence import evidence, id_text
from detector.incidents.tracker import OWN_EVIDENCE
from detector.model.pipeline import ScoredRows
from detector.model.platform import EVIDENCE_NAMES, PlatformModel
from detector.model.store import latest_model
from replay.readers import canonical_format, detect_format, one_channel, read_frames, read_log

#: Columns of ``read_capture``; ``label`` only where the capture has labels.
FRAME_COLUMNS = ("timestamp", "can_id", "extended", "dlc", "data", "label")
#: Columns of ``score_capture``.
WINDOW_COLUMNS = (
    "vehicle",
    "window_start",
    "score",
    "alert",
    "label",
    "top_id",
    "top_feature",
    "evidence",
    "incident_id",
)
#: Formats with a label column on every line, so a capture of them is labelled even
#: when every frame is benign; in the others a label shows only when a frame has one.
LABELLED_FORMATS = frozenset({"road", "hcrl"})
#: Evidence sentences per window, and rows looked at for them (as incidents do).
MAX_EVIDENCE = 5
MAX_ROWS = 10
_ROUNDING_S = 0.0005  # incident first_seen/last_seen are rounded to the millisecond


def read_capture(
    path: str | os.PathLike[str], format: str | None = None, channel: str | None = None
) -> pd.DataFrame:
    """One row per frame of the CAN log at ``path``, in file order.

    The format is chosen as every canwatch command chooses it (by suffix, else by
    sniffing the first lines); ``format`` forces one of ``replay.readers.FORMATS``.
    Columns: ``timestamp`` (float seconds, as in the file), ``can_id`` (the bare 11- or
    29-bit id), ``extended`` (bool), ``dlc``, ``data`` (``bytes`` of the frame's ``dlc``
    bytes, at most 8; empty for a remote frame) and, where the capture has labels,
    ``label`` (a categorical of ``benign``, ``dos``, ``fuzzing``, ... ``unknown``).
    A log of several channels (buses) has a ``channel`` column naming each frame's,
    as the log names it; ``channel`` keeps one of them (``score_capture`` scores one
    bus at a time). Malformed input raises ``InputError`` naming the file and line.

    Example::

        >>> from detector import read_capture
        >>> df = read_capture("drive.log")
        >>> df.can_id.value_counts().head()                  # the busiest ids
        >>> df[df.can_id == 0x6E0].timestamp.diff().median()  # 0x6E0's period, s
        >>> df[df.label != "benign"]                          # the attack's frames
    """
    try:
        name = canonical_format(format) if format else detect_format(path)
    except ValueError as exc:  # as read_frames reports it
        raise InputError(str(path), None, str(exc)) from None
    frames, channels = read_log(path, name)
    several = channel is None and channels is not None and len(channels.names) > 1
    if not several:
        frames = one_channel(str(path), frames, channels, channel)
    out = frames_to_dataframe(frames, labelled=name in LABELLED_FORMATS)
    if several:
        out["channel"] = pd.Categorical.from_codes(channels.codes, channels.names)
    return out


def frames_to_dataframe(frames: np.ndarray, labelled: bool = False) -> pd.DataFrame:
    """A FRAME_DTYPE array as ``read_capture``'s DataFrame (``label`` when ``labelled``
    or any frame has an attack label)."""
    remote = (frames["flags"] & FLAG_RTR) != 0  # a remote frame carries no data
    dlc = np.where(remote, 0, np.minimum(frames["dlc"], 8))
    raw = np.ascontiguousarray(frames["data"]).tobytes()
    width = frames["data"].shape[1]  # 64 in an FD array
    starts = range(0, width * len(frames), width)
    data = [raw[s : s + d] for s, d in zip(starts, dlc.tolist(), strict=True)]
    ids = frames["can_id"]
    out = pd.DataFrame(
        {
            "timestamp": frames["ts"].astype(np.float64),
            "can_id": (ids & np.uint32(ID_MASK_EXTENDED)).astype(np.int64),
            "extended": (ids & EXTENDED_FLAG) != 0,
            "dlc": frames["dlc"].astype(np.uint8),
            "data": pd.Series(data, dtype=object),
        }
    )
    if labelled or (frames["label"] != 0).any():
        out["label"] = pd.Categorical.from_codes(frames["label"].astype(np.int64), LABELS)
    return out


def dataframe_to_frames(df: pd.DataFrame) -> np.ndarray:
    """``read_capture``'s DataFrame (or one shaped like it) back to a FRAME_DTYPE array."""
    missing = [c for c in ("timestamp", "can_id", "dlc", "data") if c not in df.columns]
    if missing:
        raise ValueError(f"capture DataFrame lacks column(s) {', '.join(missing)}")
    out = empty_frames(len(df))
    out["ts"] = df["timestamp"].to_numpy(np.float64)
    ids = df["can_id"].to_numpy(np.int64)
    ext = df["extended"].to_numpy(bool) if "extended" in df.columns else ids > 0x7FF
    out["can_id"] = (ids & ID_MASK_EXTENDED).astype(np.uint32) | np.where(ext, EXTENDED_FLAG, 0)
    out["dlc"] = df["dlc"].to_numpy(np.uint8)
    payload = b"".join(bytes(d)[:8].ljust(8, b"\0") for d in df["data"])
    out["data"] = np.frombuffer(payload, np.uint8).reshape(len(df), 8)
    if "label" in df.columns:
        out["label"] = _label_codes(df["label"])
    return out


def _label_codes(label: pd.Series) -> np.ndarray:
    """Label codes from names (or codes); a missing label is benign, as in the readers (a
    capture without labels concatenated with one that has them leaves NaN)."""
    if pd.api.types.is_integer_dtype(label):
        return label.to_numpy(np.int8)
    names = label.astype(object).fillna("benign").astype(str).str.lower()
    unknown = sorted(set(names) - set(LABEL_CODE))
    if unknown:
        raise ValueError(f"label {unknown[0]!r} is none of {', '.join(LABELS)}")
    return names.map(LABEL_CODE).to_numpy(np.int8)


def score_capture(
    path_or_frame: str | os.PathLike[str] | pd.DataFrame,
    models: str | os.PathLike[str] | PlatformModel,
    brand: str,
    *,
    format: str | None = None,
    channel: str | None = None,
    config: str | os.PathLike[str] | None = None,
    vehicle: str = "capture",
) -> pd.DataFrame:
    """One row per (vehicle, window) of a capture, scored as ``canwatch evaluate`` scores it.

    ``path_or_frame`` is a log file (any format; the vehicle is its name without the
    suffix, and a ``fleet.json`` beside it from ``canwatch simulate`` adds attack spans,
    as for ``evaluate``; ``channel`` picks the bus of a log of several) or a DataFrame
    from ``read_capture`` (of one channel); one with a ``vehicle`` column is scored per
    vehicle, one without is the vehicle ``vehicle``. ``models``
    is a model directory (its newest version of ``brand``'s platform) or a loaded
    model; ``config`` a canwatch.toml (incident settings, brand map).

    Columns: ``vehicle``, ``window_start`` (s), ``score`` (1.0 = threshold),
    ``alert`` (score >= 1.0), ``label`` (the window's attack, or ``benign``),
    ``top_id`` (the id whose row set the score; "further unseen ids" for a fuzzer's
    pooled row), ``top_feature`` (the evidence column that set it), ``evidence``
    (the sentences an incident opened on this window would carry, joined by "; ")
    and ``incident_id`` (the incident the window belongs to). The last four are
    missing (NaN) where there is none: a window with no evidence at all, one in no
    incident. ``df.attrs["incidents"]`` holds the
    closed incidents.

    Example::

        >>> from detector import score_capture
        >>> w = score_capture("correlated_signal_attack_2.csv", "models/", "road")
        >>> w[w.alert].groupby("top_id").size()            # which ids raised alerts
        >>> w.plot(x="window_start", y="score", logy=True)   # score over time
    """
    cfg = load_config(config)
    fleet = load_fleet(cfg.fleet.brands_file) if cfg.fleet.brands_file else load_fleet()
    model = _model(models, fleet.platform_of(brand))
    if isinstance(path_or_frame, pd.DataFrame):
        captures = _vehicles(path_or_frame, vehicle)
    else:
        path = Path(path_or_frame)
        spans = spans_for(path.parent / "fleet.json", path.stem)
        captures = [(path.stem, read_frames(path, format, channel), spans)]
    parts, incidents = [], []
    for name, frames, spans in captures:
        part, ev = score_vehicle(frames, brand, name, model, fleet, cfg, spans)
        parts.append(part)
        incidents += ev.incidents
    out = pd.concat(parts, ignore_index=True) if parts else _windows_frame(None, [])
    out.attrs["incidents"] = incidents
    out.attrs["model"] = {"platform": model.platform, "version": model.version}
    return out


def _model(models: str | os.PathLike[str] | PlatformModel, platform: str) -> PlatformModel:
    return models if isinstance(models, PlatformModel) else latest_model(models, platform)


def _vehicles(df: pd.DataFrame, default: str) -> list[tuple[str, np.ndarray, list[Span]]]:
    if "channel" in df.columns and df["channel"].nunique() > 1:
        names = ", ".join(map(str, df["channel"].unique()))
        raise ValueError(f"frames of several channels ({names}): score one bus at a time")
    if "vehicle" not in df.columns:
        return [(default, dataframe_to_frames(df), [])]
    return [
        (str(name), dataframe_to_frames(group), [])
        for name, group in df.groupby("vehicle", sort=False, observed=True)
    ]


def score_vehicle(
    frames: np.ndarray,
    brand: str,
    vehicle: str,
    model: PlatformModel,
    fleet: Fleet,
    cfg: Config,
    spans: list[Span] = (),
) -> tuple[pd.DataFrame, Evaluation]:
    """One vehicle's windows through ``score_frames`` (what ``canwatch evaluate`` runs
    per file), with each window's top id, feature and evidence read off its rows."""
    window_s = model.baseline.window_s
    tops: list[tuple] = []

    def on_scored(sc: ScoredRows) -> None:
        tops.append(window_tops(sc, window_s))

    ev = score_frames(
        frames, brand, vehicle, model, fleet, window_s, cfg.incidents, spans, on_scored
    )
    return _windows_frame(ev, tops), ev


def _windows_frame(ev: Evaluation | None, tops: list[tuple]) -> pd.DataFrame:
    """``ev``'s windows (scores and labels as evaluate has them) beside their summaries."""
    if ev is None or len(ev.score) == 0:
        return pd.DataFrame({c: pd.Series(dtype=object) for c in WINDOW_COLUMNS})
    window = np.concatenate([t[0] for t in tops])
    order = np.argsort(window, kind="stable")
    mine = np.rint(ev.window_start / ev.window_s).astype(np.int64)
    if not np.array_equal(window[order], np.sort(mine)):  # one summary per scored window
        raise RuntimeError("window summaries do not match the evaluation's windows")
    at = order[np.searchsorted(window[order], mine)]
    cols = [np.concatenate([np.asarray(t[k], dtype=object) for t in tops])[at] for k in (1, 2, 3)]
    return pd.DataFrame(
        {
            "vehicle": ev.vehicle,
            "window_start": ev.window_start,
            "score": ev.score,
            "alert": ev.score >= ALERT,
            "label": pd.Categorical.from_codes(ev.attack.astype(np.int64), LABELS),
            "top_id": cols[0],
            "top_feature": cols[1],
            "evidence": cols[2],
            "incident_id": incident_of(ev),
        }
    )


def window_tops(sc: ScoredRows, window_s: float) -> tuple[np.ndarray, list, list, list]:
    """Per (vehicle, window) of ``sc``: the window, the id of the row that set its score,
    that row's strongest evidence column, and the window's evidence sentences.

    Rows are ranked as ``detector.incidents.tracker.observations`` ranks them (best
    score first; among equal scores, rows with evidence of their own first)."""
    rows = sc.rows
    if len(rows) == 0:
        return np.zeros(0, np.int64), [], [], []
    cols = OWN_EVIDENCE[OWN_EVIDENCE < sc.excess.shape[1]]
    own = sc.excess[:, cols].max(axis=1)
    order = np.lexsort((-own, -sc.scores, rows.window, rows.vehicle))
    gv, gw = rows.vehicle[order], rows.window[order]
    starts = np.flatnonzero(np.r_[True, (gv[1:] != gv[:-1]) | (gw[1:] != gw[:-1])])
    ends = np.r_[starts[1:], len(order)]
    top = order[starts]
    column = sc.excess[top].argmax(axis=1)
    strength = sc.excess[top, column]
    ids, features, texts = [], [], []
    for t, j, x, s, e in zip(
        top.tolist(), column.tolist(), strength.tolist(), starts.tolist(), ends.tolist(),
        strict=True,
    ):  # fmt: skip
        if x <= 0:  # nothing beyond the learned envelope: nothing to name
            ids.append(None)
            features.append(None)
            texts.append(None)
            continue
        ids.append(id_text(rows.can_id[t]))
        features.append(EVIDENCE_NAMES[j])
        notes = evidence(sc, order[s:e][:MAX_ROWS], window_s, MAX_EVIDENCE)
        texts.append("; ".join(n["text"] for n in notes))
    return rows.window[top], ids, features, texts


def incident_of(ev: Evaluation) -> np.ndarray:
    """The id of the (closed) incident each window of ``ev`` falls in, else None."""
    out = np.full(len(ev.window_start), None, dtype=object)
    for inc in ev.incidents:
        inside = (ev.window_start >= inc["first_seen"] - _ROUNDING_S) & (
            ev.window_start < inc["last_seen"] - _ROUNDING_S
        )
        out[inside] = inc["incident_id"]
    return out


__all__ = ["FRAME_COLUMNS", "WINDOW_COLUMNS", "read_capture", "score_capture"]
