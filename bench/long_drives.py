"""Benign long drives scored by a model trained the way the dev captures allow.

The dev ROAD captures are three drives of 20-50 s, CrySyS's benign-48 one drive
of 58 s; drives a SOC sees last an hour. States short drives never reach (a
plateau, a mode switched off, a distance counter wrapping) show only on long
ones. Per simulated platform, a model is trained on 3 drives x 40 s of one
vehicle (its calibration holds each drive out), and another on one drive of
60 s (halves in time), and each scores 10-minute drives it never saw: two new
drives of that vehicle and one of another vehicle
(``detector.evaluation.quality_scenario.score_long_drives``, shared with
tests/test_long_drives.py). Reported per platform: benign windows flagged, false
incidents (per hour), their severity (from the peak score: a SOC's queue may
start at medium) and the evidence that opened them.

    .venv/bin/python bench/long_drives.py [--platforms all|cusw,...] [--minutes 10]
        [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/long_drives.py`)
from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import positive_float, say
from bench.common.report import machine_line, markdown_table, write_results
from detector.core.brands import load_fleet
from detector.core.config import DetectionConfig, IncidentConfig
from detector.evaluation import quality_scenario as qs
from detector.incidents.tracker import SEVERITIES

TRAININGS = ((qs.LONG_TRAIN_DRIVES, qs.LONG_TRAIN_S), (1, qs.ONE_DRIVE_S))


def _rank(item: tuple[str, int]) -> int:
    return SEVERITIES.index(item[0])


def table(results: list, window_s: float) -> str:
    """One training's figures per platform, as Markdown."""
    rows = [
        (r.platform, f"{r.flagged}/{r.windows}", r.incidents,
         f"{r.incidents / (r.windows * window_s / 3600):.1f}",
         ", ".join(f"{v} {k}" for k, v in sorted(r.severities.items(), key=_rank)) or "-",
         ", ".join(f"{k} ({v})" for k, v in r.causes.items()) or "-")
        for r in results
    ]  # fmt: skip
    headers = [
        "platform",
        "benign flagged",
        "false incidents",
        "per hour",
        "their severity",
        "evidence that opened them",
    ]
    return markdown_table(headers, rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--platforms", default="all", help="all, or a comma-separated list")
    p.add_argument("--minutes", type=positive_float, default=qs.LONG_MINUTES,
                   help="each judged drive")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    names = list(qs.PLATFORM_BRANDS) if args.platforms == "all" else args.platforms.split(",")
    unknown = [n for n in names if n not in qs.PLATFORM_BRANDS]
    if unknown:
        known = ", ".join(qs.PLATFORM_BRANDS)
        p.error(f"unknown platform(s): {', '.join(unknown)} (known: {known})")
    cfg, fleet = DetectionConfig(), load_fleet()
    print(f"# Benign long drives, trained as the dev captures allow ({machine_line()})")
    doc, headline = {}, []
    for drives, seconds in TRAININGS:
        label = f"{drives} x {seconds:.0f} s"
        t0, results = time.perf_counter(), []
        for name in names:
            say(f"{name}: trained on {label}, 3 drives of {args.minutes:g} min judged")
            results.append(
                qs.score_long_drives(
                    name, cfg, fleet, IncidentConfig(), args.minutes, drives, seconds
                )
            )
        windows = sum(r.windows for r in results)
        flagged = sum(r.flagged for r in results)
        incidents = sum(r.incidents for r in results)
        above_low = sum(n for r in results for s, n in r.severities.items() if s != "low")
        print(
            f"\n## Trained on {label} of one vehicle; 3 drives x {args.minutes:g} min judged "
            f"per platform ({time.perf_counter() - t0:.0f} s)\n"
        )
        print(table(results, cfg.window_s))
        share = 100 * flagged / max(windows, 1)
        print(
            f"\nall: {flagged}/{windows} windows flagged ({share:.2f} %), {incidents} false incidents "
            f"({above_low} of medium severity or above)"
        )
        doc[label] = [dataclasses.asdict(r) for r in results]
        headline.append((f"benign windows flagged, trained on {label}", f"{flagged}/{windows}"))
    write_results(args.json, {"trainings": doc}, headline)
    return 0


if __name__ == "__main__":
    sys.exit(main())
