"""canwatch evaluate: labelled recordings through the service's own path, offline."""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

from detector.cli._common import add_config_flag, config_from, fleet_from, latest_model, spans_for
from detector.evaluate import WINDOW_COLUMNS, file_report, score_frames, window_rows
from replay.readers import read_frames


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score labelled recordings offline and report detection quality",
        description="Replays labelled recordings through the same decode -> features -> "
        "model -> incident path as `canwatch detect` and reports per attack type: ROC-AUC, "
        "precision/recall/F1 at the calibrated threshold, benign windows flagged, time to "
        "detect and incidents. A fleet.json beside a file (from `canwatch simulate`) "
        "supplies attack spans, so suspensions are labelled too.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--models", required=True, metavar="DIR", help="model directory")
    p.add_argument("--brand", required=True, help="brand slug of the recordings")
    p.add_argument("--windows-out", metavar="W.csv", help="one row per (vehicle, window)")
    p.add_argument("--report", metavar="R.json", help="full report as JSON")
    p.add_argument("--format", help="force the log format of every FILE")
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    fleet = fleet_from(cfg)
    model = latest_model(args.models, fleet.platform_of(args.brand))
    W = model.baseline.window_s
    report = {"model": {"platform": model.platform, "version": model.version}, "files": {}}
    table = []
    for f in args.files:
        path = Path(f)
        frames = read_frames(path, args.format)
        spans = spans_for(path.parent / "fleet.json", path.stem)
        ev = score_frames(frames, args.brand, path.stem, model, fleet, W, cfg.incidents, spans)
        report["files"][str(f)] = file_report(ev)
        table += window_rows(str(f), ev)
    if args.windows_out:
        with open(args.windows_out, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(WINDOW_COLUMNS)
            w.writerows(table)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(render(report))
    return 0


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.3f}" if isinstance(x, float) else str(x)


def render(report: dict) -> str:
    head = f"{'file':40} {'attack':11} {'win':>5} {'att':>4} {'auc':>6} {'prec':>6} {'rec':>6} {'f1':>6} {'ttd_s':>6} {'inc':>4}"
    lines = [head, "-" * len(head)]
    for f, r in report["files"].items():
        name = Path(f).name[:40]
        lines.append(
            f"{name:40} {'(all)':11} {r['windows']:>5} {r['attacked_windows']:>4} {_fmt(r['roc_auc']):>6} "
            f"{'':>6} {'':>6} {'':>6} {'':>6} {r['incidents']:>4}"
            f"   benign flagged {_fmt(r['benign_flagged_fraction'])}, false incidents {r['false_incidents']}"
        )
        for kind, a in r["attacks"].items():
            lines.append(
                f"{'':40} {kind:11} {a['windows']:>5} {a['attacked_windows']:>4} {_fmt(a['roc_auc']):>6} "
                f"{_fmt(a['precision']):>6} {_fmt(a['recall']):>6} {_fmt(a['f1']):>6} "
                f"{_fmt(a['time_to_detect_s']):>6} {a['incidents_overlapping']:>4}"
            )
    return "\n".join(lines)
