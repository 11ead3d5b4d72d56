"""Benign long drives scored by a model trained the way the dev ROAD set allows.

The dev captures are three drives of 20-50 s; drives a SOC sees last an hour.
States short drives never reach (a plateau, a mode switched off, a distance
counter wrapping) show only on long ones. Per simulated platform, a model is
trained on 3 drives x 40 s of one vehicle (its calibration holds each drive out)
and scores 10-minute drives it never saw: two new drives of that vehicle and
one of another vehicle (``detector.evaluation.quality_scenario.score_long_drives``,
shared with tests/test_long_drives.py). Reported per platform: benign windows
flagged, false incidents (per hour), and the evidence that opened them.

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

from bench.common import say
from bench.common.report import machine_line, markdown_table, write_results
from detector.core.brands import load_fleet
from detector.core.config import DetectionConfig, IncidentConfig
from detector.evaluation import quality_scenario as qs


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--platforms", default="all", help="all, or a comma-separated list")
    p.add_argument("--minutes", type=float, default=qs.LONG_MINUTES, help="each judged drive")
    p.add_argument("--json", type=Path, help="also write the results here")
    args = p.parse_args(argv)
    names = list(qs.PLATFORM_BRANDS) if args.platforms == "all" else args.platforms.split(",")
    unknown = [n for n in names if n not in qs.PLATFORM_BRANDS]
    if unknown:
        known = ", ".join(qs.PLATFORM_BRANDS)
        p.error(f"unknown platform(s): {', '.join(unknown)} (known: {known})")
    t0, results = time.perf_counter(), []
    cfg, fleet = DetectionConfig(), load_fleet()
    for name in names:
        say(f"{name}: trained on {qs.LONG_TRAIN_DRIVES} x {qs.LONG_TRAIN_S:.0f} s, 3 drives judged")
        results.append(qs.score_long_drives(name, cfg, fleet, IncidentConfig(), args.minutes))
    rows = [
        (r.platform, f"{r.flagged}/{r.windows}", r.incidents,
         f"{r.incidents / (r.windows * cfg.window_s / 3600):.1f}",
         ", ".join(f"{k} ({v})" for k, v in r.causes.items()) or "-")
        for r in results
    ]  # fmt: skip
    windows = sum(r.windows for r in results)
    flagged = sum(r.flagged for r in results)
    incidents = sum(r.incidents for r in results)
    print(f"# Benign long drives, ROAD-shaped training ({machine_line()})\n")
    print(
        f"Trained on {qs.LONG_TRAIN_DRIVES} drives x {qs.LONG_TRAIN_S:.0f} s of one vehicle; "
        f"judged on 3 drives x {args.minutes:g} min per platform "
        f"({time.perf_counter() - t0:.0f} s)\n"
    )
    headers = [
        "platform",
        "benign flagged",
        "false incidents",
        "per hour",
        "evidence that opened them",
    ]
    print(markdown_table(headers, rows))
    share = 100 * flagged / max(windows, 1)
    print(
        f"\nall: {flagged}/{windows} windows flagged ({share:.2f} %), {incidents} false incidents"
    )
    write_results(
        args.json,
        {"platforms": [dataclasses.asdict(r) for r in results]},
        [("benign windows flagged", f"{flagged}/{windows}"), ("false incidents", str(incidents))],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
