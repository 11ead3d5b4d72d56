"""``canwatch simulate``: write a simulated multi-brand fleet, optionally attacked, to log files.

One file per vehicle (``DIR/<vehicle>.<ext>``) in any writable log format, plus
``DIR/fleet.json``: the vehicles (vehicle, brand, platform, file, frames) and the
ground truth of every injected attack (kind, vehicle, start_ts, end_ts, can_id).
Each ``--attack`` goes to one vehicle, round-robin: attack i -> vehicle
i mod N (in vehicle order), injected with seed ``--seed + i``.

``--to-kafka`` streams the fleet into the telemetry topic instead of (or, with
``--out``, as well as) writing files, paced like ``canwatch replay``. Unless
``--start-ts`` is given, the traffic is then placed in the present the way
``replay --rebase-time`` does it (no frame ahead of the wall clock when it is
published), and fleet.json's attack spans carry the same timestamps.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path

from detector.cli._progress import bar, track
from detector.cli.replay import (
    add_kafka_flags,
    add_pacing_flags,
    check_timestamps,
    kafka_config,
    rebase_lag,
    speed_of,
    stream_to_kafka,
    summary_line,
)
from detector.core.errors import ConfigError

FORMATS = ("log", "asc", "blf", "trc", "csv", "road", "hcrl", "hcrl-txt", "cantt")
#: A day of traffic per vehicle is ~130 M frames already.
MAX_DURATION_S = 86_400.0
EXTENSIONS = {
    "log": "log",
    "asc": "asc",
    "blf": "blf",
    "trc": "trc",
    "csv": "csv",
    "road": "csv",
    "hcrl": "csv",
    "hcrl-txt": "txt",
    "cantt": "csv",
}


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "simulate",
        help="write simulated multi-brand fleet traffic (with attacks) to log files",
        description=(
            "Simulate a fleet of vehicles from the opendbc Stellantis DBC profiles and write one "
            "log file per vehicle plus fleet.json (vehicles and injected attack spans). "
            "Attacks go to vehicles round-robin: the i-th --attack hits vehicle i mod N."
        ),
    )
    p.add_argument(
        "--brands",
        default=None,
        help="comma-separated brand slugs (default: all brands in configs/brands.toml)",
    )
    p.add_argument(
        "--vehicles",
        type=int,
        default=None,
        help="vehicles in total, brands assigned round-robin (default: one per brand)",
    )
    p.add_argument("--duration", type=float, default=60.0, help="seconds of traffic (default 60)")
    p.add_argument("--out", type=Path, help="output directory (created)")
    p.add_argument("--format", choices=FORMATS, default="log", help="log format (default log)")
    p.add_argument(
        "--attack",
        action="append",
        default=[],
        metavar="SPEC",
        help="e.g. 'dos:start=3,duration=4,rate=3000' or 'masquerade:start=10,duration=5,id=0x1E4'"
        " (repeatable; kinds: dos fuzzing spoofing masquerade suspension replay errorflood)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument(
        "--start-ts",
        type=float,
        default=None,
        help="first timestamp, epoch s (default 1.7e9; with --to-kafka: the present)",
    )
    p.add_argument(
        "--to-kafka", action="store_true", help="stream the fleet to the telemetry topic"
    )
    add_pacing_flags(p)
    add_kafka_flags(p)
    p.set_defaults(func=run)


def _brands(arg: str | None) -> list[str]:
    from detector.core.brands import load_fleet, validate_slug

    fleet = load_fleet()
    if arg is None:
        return sorted(fleet.brands)
    brands = [validate_slug(b.strip()) for b in arg.split(",") if b.strip()]
    if not brands:
        raise ConfigError("--brands: give at least one brand slug")
    unknown = [b for b in brands if b not in fleet.brands]
    if unknown:
        raise ConfigError(
            f"--brands: unknown {', '.join(unknown)} (known: {', '.join(sorted(fleet.brands))})"
        )
    return brands


def build_fleet(args: argparse.Namespace) -> tuple[list, list]:
    """Simulated vehicles with the attacks injected, and the attack spans."""
    from dataclasses import replace

    from replay.attacks import AttackSpec, inject
    from replay.simulator import SimVehicle, simulate_fleet

    specs = [AttackSpec.parse(s) for s in args.attack]  # validate before simulating
    brands = _brands(args.brands)
    n = args.vehicles if args.vehicles is not None else len(brands)
    if n < 1:
        raise ConfigError(f"--vehicles must be >= 1, got {n}")
    if not 0 < args.duration <= MAX_DURATION_S:
        raise ConfigError(f"--duration must be in (0, {MAX_DURATION_S:g}] s, got {args.duration}")
    if args.start_ts is not None and not (math.isfinite(args.start_ts) and args.start_ts >= 0):
        raise ConfigError(f"--start-ts must be a time >= 0 s, got {args.start_ts}")
    with bar("simulating", total=n, unit="vehicle") as done:
        vehicles = simulate_fleet(
            brands, n, args.duration, args.seed, args.start_ts, lambda v: done.update(1)
        )
    spans = []
    for i, spec in enumerate(specs):
        v = vehicles[i % n]
        frames, span = inject(v.frames, spec, seed=args.seed + i)
        vehicles[i % n] = SimVehicle(v.vehicle, v.brand, v.platform, frames)
        spans.append(replace(span, vehicle=v.vehicle))
    return vehicles, spans


def _end_by(vehicles: list, spans: list, end: float) -> tuple[list, list]:
    """The fleet moved earlier so that no frame is later than ``end``."""
    last = max(float(v.frames["ts"].max()) for v in vehicles if len(v.frames))
    if last <= end:
        return vehicles, spans
    shift = last - end
    moved = []
    for v in vehicles:
        frames = v.frames.copy()
        frames["ts"] -= shift
        moved.append(dataclasses.replace(v, frames=frames))
    spans = [
        dataclasses.replace(s, start_ts=s.start_ts - shift, end_ts=s.end_ts - shift)
        for s in spans
    ]
    return moved, spans


def _emit(args: argparse.Namespace, vehicles: list, spans: list) -> dict:
    from replay.writers import refusal, write_frames

    for v in vehicles:  # before any file is written: all of them, or none
        why = refusal(v.frames, args.format)
        if why:
            raise ConfigError(f"--format {args.format} cannot hold {v.vehicle}'s frames: {why}")
    args.out.mkdir(parents=True, exist_ok=True)
    entries = []
    for v in track(vehicles, "writing", unit="file"):
        name = f"{v.vehicle}.{EXTENSIONS[args.format]}"
        write_frames(args.out / name, v.frames, args.format)
        entries.append(
            {
                "vehicle": v.vehicle,
                "brand": v.brand,
                "platform": v.platform,
                "file": name,
                "frames": int(len(v.frames)),
            }
        )
    manifest = {
        "format": args.format,
        "seed": args.seed,
        "duration_s": args.duration,
        "vehicles": entries,
        "attacks": [s.to_dict() for s in spans],
    }
    (args.out / "fleet.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return manifest


def run(args: argparse.Namespace) -> int:
    import time

    if args.out is None and not args.to_kafka:
        raise ConfigError("give --out DIR, --to-kafka, or both")
    cfg = kafka_config(args) if args.to_kafka else None
    speed = speed_of(args) if args.to_kafka else None
    placed = args.start_ts is None and args.to_kafka
    if args.start_ts is None:
        args.start_ts = time.time() - rebase_lag(args.duration, speed) if args.to_kafka else 1.7e9
    vehicles, spans = build_fleet(args)
    if placed:  # an attack running past --duration: the whole fleet earlier, none ahead
        vehicles, spans = _end_by(vehicles, spans, args.start_ts + args.duration)
    if args.out is not None:
        manifest = _emit(args, vehicles, spans)
        total = sum(v["frames"] for v in manifest["vehicles"])
        print(
            f"wrote {len(vehicles)} vehicles, {total} frames, {len(spans)} attacks "
            f"to {args.out} ({args.format})",
            flush=True,
        )
    if cfg is not None:
        topic = args.topic or cfg.kafka.telemetry_topic
        streams = [(v.vehicle, v.brand, v.frames) for v in vehicles]
        fix = "leave out --start-ts (the fleet then ends now)"
        warning = check_timestamps(streams, cfg, time.time(), speed, fix)
        if warning:
            print(f"canwatch simulate: {warning}", file=sys.stderr, flush=True)
        summary = stream_to_kafka(cfg, topic, streams, speed, args.encoding, args.connect_timeout)
        print(summary_line(summary, topic), flush=True)
    return 0
