"""canwatch demo: the whole loop on one machine, no setup."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from detector.cli._common import add_config_flag, config_from, fleet_from
from detector.core.errors import ConfigError
from detector.demo import DemoOptions, render_scorecard, run_demo, write_report


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "demo",
        help="run broker, fleet simulator, attacks and detector end to end",
        description="Starts the embedded Kafka broker, trains (or loads cached) platform models "
        "for all 14 brands on simulated benign traffic, streams a simulated fleet with one "
        "attack of every family injected at a known time and a campaign (the same attack on "
        "several vehicles of one brand, staggered), runs the detector and the campaign "
        "correlator with /metrics, prints incidents live and ends with a scorecard. Exit 0 "
        "when every attack was detected, no false incident was raised, the campaign is one "
        "campaign of all its vehicles and no other campaign was raised; 1 otherwise.",
    )
    p.add_argument("--vehicles", type=int, default=56, help="fleet size (default 56)")
    p.add_argument("--duration", type=float, default=40.0, help="simulated seconds (default 40)")
    p.add_argument("--speed", type=float, default=4.0, help="replay speed-up (default 4)")
    p.add_argument("--report", metavar="FILE", help="write the scorecard as JSON")
    p.add_argument(
        "--models",
        metavar="DIR",
        default=".canwatch-cache",
        help="where demo models are cached (default .canwatch-cache)",
    )
    p.add_argument(
        "--metrics",
        metavar="HOST:PORT",
        default="127.0.0.1:9108",
        help="metrics address (default 127.0.0.1:9108; port 0 = any free port)",
    )
    p.add_argument(
        "--keep-running",
        action="store_true",
        help="leave broker, detector and metrics up after the scorecard (for Grafana)",
    )
    p.add_argument("--seed", type=int, default=2026)
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.vehicles < 6:
        raise ConfigError(f"--vehicles must be >= 6 (one per attack family), got {args.vehicles}")
    cfg = config_from(args, **{"metrics.address": args.metrics})
    opts = DemoOptions(
        vehicles=args.vehicles, duration_s=args.duration, speed=args.speed, seed=args.seed
    )

    def say(msg: str) -> None:
        print(msg, flush=True)

    keep = threading.Event() if args.keep_running else None
    if keep is not None:
        signal.signal(signal.SIGINT, lambda *_: keep.set())
        signal.signal(signal.SIGTERM, lambda *_: keep.set())
    card = run_demo(cfg, fleet_from(cfg), opts, Path(args.models), say, keep)
    print()
    print(render_scorecard(card))
    if args.report:
        write_report(Path(args.report), card)
    camp = card["campaign"]
    ok = all(a["detected"] for a in card["attacks"]) and card["false_incidents"] == 0
    ok = ok and camp["found"] and camp["unrelated"] == 0
    sys.stdout.flush()
    return 0 if ok else 1
