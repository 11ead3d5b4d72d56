"""canwatch demo: the whole loop on one machine, no setup."""

from __future__ import annotations

import argparse
import math
import os
import shutil
import signal
import socket
import sys
import threading
from pathlib import Path

from detector.cli._common import add_config_flag, config_from, fleet_from
from detector.cli._table import fit
from detector.core.errors import ConfigError
from detector.demo import (
    DemoOptions,
    default_model_cache,
    render_scorecard,
    run_demo,
    write_report,
)


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
    p.add_argument(
        "--duration", type=float, default=40.0, help="simulated seconds (default 40, at least 32)"
    )
    p.add_argument("--speed", type=float, default=4.0, help="replay speed-up (default 4)")
    p.add_argument("--report", metavar="FILE", help="write the scorecard as JSON")
    p.add_argument(
        "--models",
        metavar="DIR",
        default=str(default_model_cache()),
        help="where demo models are cached (default $XDG_CACHE_HOME/canwatch, else "
        "~/.cache/canwatch)",
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
    opts = DemoOptions(
        vehicles=args.vehicles, duration_s=args.duration, speed=args.speed, seed=args.seed
    )
    check_options(opts)
    cfg = config_from(args, **{"metrics.address": args.metrics})
    # what would fail after minutes of training fails now
    check_free(cfg.metrics.address)
    if args.report:
        check_writable(Path(args.report))
    try:
        Path(args.models).mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--models {args.models}: {exc.strerror or exc}") from None

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None

    def say(msg: str) -> None:  # on a terminal, each line cut to its width (not wrapped)
        print("\n".join(fit(line, width) for line in msg.split("\n")), flush=True)

    def show(card: dict) -> None:
        say("")
        say(render_scorecard(card))
        if args.report:
            write_report(Path(args.report), card)

    # SIGTERM stops the demo as Ctrl-C does: the broker and its directory are cleaned up
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    keep = threading.Event() if args.keep_running else None
    card = run_demo(cfg, fleet_from(cfg), opts, Path(args.models), say, keep, show)
    camp = card["campaign"]
    ok = all(a["detected"] for a in card["attacks"]) and card["false_incidents"] == 0
    ok = ok and camp["found"] and camp["unrelated"] == 0
    sys.stdout.flush()
    return 0 if ok else 1


def check_options(opts: DemoOptions) -> None:
    """One line for what the demo cannot run with, before anything starts."""
    if opts.vehicles < 6:
        raise ConfigError(f"--vehicles must be >= 6 (one per attack family), got {opts.vehicles}")
    least = opts.min_duration_s()
    if not (math.isfinite(opts.duration_s) and least <= opts.duration_s <= 3600):
        raise ConfigError(
            f"--duration must be in [{least:g}, 3600] s (every attack whole, and the windows "
            f"that close its incident), got {opts.duration_s:g}"
        )
    if not (math.isfinite(opts.speed) and 0.1 <= opts.speed <= 1000):
        raise ConfigError(f"--speed must be in [0.1, 1000], got {opts.speed:g}")


def check_free(address: str) -> None:
    """The metrics address can be bound (port 0 always can)."""
    from detector.service.metrics import parse_address

    host, port = parse_address(address)
    if port == 0:
        return
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ConfigError(
                f"--metrics {address}: {exc.strerror or exc} (another port, or "
                "--metrics 127.0.0.1:0 for any free one)"
            ) from None


def check_writable(path: Path) -> None:
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise ConfigError(f"--report {path}: cannot write in {folder}")
