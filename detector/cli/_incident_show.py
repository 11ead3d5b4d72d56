"""``canwatch incidents show ID [--plot F.png]``: one incident, whole.

Prints what the detector knows of it: status, severity, suspected attack,
vehicle and brand, when it started and ended, the CAN ids implicated with
their scores, every line of evidence with observed and learned values, the
score of each of its anomalous windows, and its provenance: where its frames
are (topic, partition and offsets; or file and frame indices), with the
command that exports them. ``--json`` prints its last record as is.

``--plot F.png`` (or ``.svg``, ``.pdf``: by suffix) also draws it (matplotlib, no
display needed): its windows' scores against the threshold, and for its top ids
their frames per window, or for payload evidence the byte that left its range,
against what the model learned. That needs the incident's frames (read as
``export`` reads them; none in its span is an error) and its model
(``--models``, default the config's ``models.dir``).
"""

from __future__ import annotations

import argparse
import json
import shlex
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from detector.cli._forensics import (
    ForensicsError,
    add_source_flags,
    incident_frames,
    load_incident,
    source_flags,
)
from detector.cli._table import id_text

PLOT_MARGIN_S = 5.0


def add_subparser(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "show",
        help="print one incident whole: evidence, window scores, ids, provenance",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_flags(p)
    p.add_argument("--json", action="store_true", help="the incident's last record, as JSON")
    p.add_argument(
        "--plot", metavar="F.png", help="also draw it to this file: .png, .svg or .pdf (by suffix)"
    )
    p.add_argument("--models", metavar="DIR", help="with --plot: model directory (default: config)")
    p.set_defaults(func=run)


# -- text (pure) ------------------------------------------------------------------------


def _utc(ts: Any) -> str:
    try:
        return datetime.fromtimestamp(float(ts), UTC).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3]
    except (TypeError, ValueError, OverflowError, OSError):
        return str(ts)


def _num(x: Any, digits: int = 2) -> str:
    try:
        return f"{float(x):.{digits}f}"
    except (TypeError, ValueError):
        return "-" if x is None else str(x)


def _rel(start: Any, first: Any) -> str:
    """Seconds from ``first`` to ``start``; "-" when either is not a number."""
    try:
        return _num(float(start) - float(first), 1)
    except (TypeError, ValueError):
        return "-"


def can_id_text(item: Any) -> str:
    """One of ``can_ids``: "0x1E4 (8.00)"; an item that is no ``{can_id, score}`` object
    (a foreign record's bare id) as its id alone, as the incidents table shows it."""
    if isinstance(item, dict):
        return f"{item.get('can_id')} ({_num(item.get('score'))})"
    return id_text(item)


def provenance_text(prov: Any) -> str:
    if not isinstance(prov, dict):
        return "not recorded"
    if "topic" in prov:
        n = prov.get("records")
        records = f" ({n} records of this vehicle)" if n is not None else ""
        return (
            f"topic {prov.get('topic')} partition {prov.get('partition')} "
            f"offsets {prov.get('first_offset')}-{prov.get('last_offset')}{records}"
        )
    if "file" in prov:
        return (
            f"file {prov.get('file')} frames {prov.get('first_frame')}-{prov.get('last_frame')} "
            f"({prov.get('frames')} frames in its windows)"
        )
    return json.dumps(prov)


def render(inc: dict, source: Sequence[str] = ()) -> str:
    """The whole incident as an analyst reads it; ``source``: the flags it was read with
    (``_forensics.source_flags``), which the export command it prints needs too."""
    first, last = inc.get("first_seen"), inc.get("last_seen")
    try:
        span = f"{float(last) - float(first):.1f} s"
    except (TypeError, ValueError):
        span = "?"
    attacks = inc.get("attacks")
    others = (
        " (windows: " + ", ".join(f"{k} {v}" for k, v in attacks.items()) + ")"
        if isinstance(attacks, dict) and len(attacks) > 1
        else ""
    )
    lines = [
        f"incident   {inc.get('incident_id')}  ({inc.get('status')})",
        f"attack     {inc.get('suspected_attack')}{others}, severity {inc.get('severity')}, "
        f"peak score {_num(inc.get('peak_score'))}",
        f"vehicle    {inc.get('vehicle')}  brand {inc.get('brand')}",
        f"seen       {_utc(first)} to {_utc(last)} UTC ({span}, "
        f"{inc.get('windows')} anomalous windows)",
        f"model      v{inc.get('model_version')}  detector {inc.get('detector')}",
        "can ids    "
        + (
            ", ".join(can_id_text(c) for c in inc["can_ids"])
            if isinstance(inc.get("can_ids"), list) and inc["can_ids"]
            else "-"
        ),
        "evidence",
    ]
    for e in inc.get("evidence") or []:
        if isinstance(e, dict):
            extra = (
                f"   [{e.get('feature')}: observed {e.get('observed')}, excess {e.get('excess')}]"
            )
            lines.append(f"  - {' '.join(str(e.get('text')).split())}{extra}")
        else:
            lines.append(f"  - {e}")
    scores = inc.get("window_scores") or []
    total = inc.get("windows")
    shown = (
        f" (first {len(scores)} of {total})"
        if isinstance(total, int) and total > len(scores)
        else ""
    )
    lines.append(f"windows    start (UTC), seconds after first_seen, score{shown}")
    for start, score in scores:
        lines.append(f"  {_utc(start)}  +{_rel(start, first):>6} s  {_num(score):>8}")
    if not scores:
        lines.append("  (not recorded)")
    lines.append(f"provenance {provenance_text(inc.get('provenance'))}")
    if isinstance(inc.get("provenance"), dict):
        export = ["canwatch", "incidents", "export", str(inc.get("incident_id")), *source]
        lines.append(f"           export: {shlex.join([*export, '--out', 'incident.log'])}")
    return "\n".join(lines)


# -- the command --------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from detector.cli.replay import kafka_config, quiet_kafka

    if args.plot:
        from detector.cli._incident_plot import plot_format

        plot_format(args.plot)  # before any reading
    cfg = kafka_config(args)
    with quiet_kafka():
        inc = load_incident(args)
        got = incident_frames(args, cfg, inc, PLOT_MARGIN_S) if args.plot else None
    if got is not None:
        from detector.cli._incident_plot import incident_model, plot_incident

        if not len(got.frames):  # empty panels would pass for a quiet bus
            raise ForensicsError(
                f"no frames of {inc.get('vehicle')} in {got.where} from {_utc(got.start)} to "
                f"{_utc(got.end)} UTC (its span ± {PLOT_MARGIN_S:g} s): nothing plotted"
            )
        model = incident_model(args.models or cfg.models.dir, inc, cfg)
        plot_incident(inc, got.frames, model.baseline, args.plot)
    print(json.dumps(inc) if args.json else render(inc, source_flags(args)))
    if got is not None:
        print(f"plotted to {args.plot} ({len(got.frames)} frames from {got.where})")
    return 0
