"""canwatch train: fit a platform model from benign recordings."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.cli._channel_flag import add_channel_flag
from detector.cli._common import add_config_flag, config_from, connect_timeout, fleet_from
from detector.cli._progress import bar
from detector.core.brands import Fleet
from detector.core.config import Config, DetectionConfig
from detector.core.errors import CanwatchError
from detector.evaluation.cross_validation import drive_numbers, groups_from_map, read_group_map
from detector.model.store import save_model
from detector.model.training import train_platform
from replay.readers import read_frames


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a brand's platform model on benign recordings",
        description="Train the isolation-forest model of a brand's platform on recordings. "
        "Frames labelled as attacks, and the windows holding them, are left out. Each file "
        "is one vehicle. Files are grouped into drives for calibration (each drive held out "
        "in turn): recordings sharing most benign payloads are one drive, unless --groups "
        "says otherwise. Writes <platform>-v<N>.skops and its manifest into --out. "
        "With --from-kafka, the recordings are the traffic of every brand of that platform "
        "(the brands the model serves) on the telemetry topic between --since and --until "
        "instead (docs/detection.md, Training from the topic).",
    )
    p.add_argument("files", nargs="*", metavar="FILE", help="recordings (any supported format)")
    p.add_argument("--brand", required=True, help="brand slug (see configs/brands.toml)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory")
    p.add_argument("--format", help="force the log format of every FILE")
    add_channel_flag(p)
    p.add_argument(
        "--groups",
        metavar="MAP.csv",
        help="CSV with header 'file,group' naming the drive or vehicle of every FILE "
        "(matched by base name); the same file `evaluate --cross-validate` takes",
    )
    add_config_flag(p)
    add_kafka_flags(p)
    p.set_defaults(func=run)


def add_kafka_flags(p: argparse.ArgumentParser) -> None:
    from detector.cli import _train_kafka as tk

    k = p.add_argument_group("training from the telemetry topic")
    k.add_argument(
        "--from-kafka",
        action="store_true",
        help="train on the records of kafka.telemetry_topic in [--since, --until) of every "
        "brand of --brand's platform: no consumer group, nothing committed",
    )
    k.add_argument("--since", metavar="T", help="span start: ISO 8601 (UTC if no zone) or epoch s")
    k.add_argument("--until", metavar="T", help="span end (exclusive), same forms")
    k.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides config)"
    )
    k.add_argument(
        "--connect-timeout",
        type=connect_timeout,
        default=tk.CONNECT_TIMEOUT_S,
        metavar="S",
        help=f"give up when no broker answers within S s (default {tk.CONNECT_TIMEOUT_S:g})",
    )
    k.add_argument(
        "--exclude-margin",
        type=float,
        default=tk.EXCLUDE_MARGIN_S,
        metavar="S",
        help="leave a vehicle out from S s before to S s after each of its incidents "
        f"on kafka.incident_topic (default {tk.EXCLUDE_MARGIN_S:g})",
    )
    k.add_argument(
        "--lateness",
        type=float,
        default=tk.LATENESS_S,
        metavar="S",
        help="also read records whose Kafka timestamps lie up to S s outside the span "
        "(skewed gateway clocks, backlogs uploaded late); their frames count by event time "
        f"(default {tk.LATENESS_S:g})",
    )
    k.add_argument(
        "--max-frames",
        type=int,
        default=tk.MAX_FRAMES,
        metavar="N",
        help="hold at most N frames (24 B each; FD frames count their 8-byte lanes): "
        "a longer span is sampled in whole 60 s blocks per vehicle "
        f"(default {tk.MAX_FRAMES:,})",
    )


def train_and_save(
    platform: str,
    recordings: Sequence[np.ndarray],
    files: Sequence[str],
    cfg: DetectionConfig,
    out: str | Path,
    brands: list[str],
    groups: Sequence[str] | None = None,
    desc: str = "fitting",
    source: dict | None = None,
) -> Path:
    """Train on ``recordings`` (``groups``: the drive of each; default: drive_groups) and
    save the model with its manifest into ``out``; returns the manifest path. What
    ``canwatch train`` does, and what each fold of ``evaluate --cross-validate`` does.
    On a terminal, a bar ``desc`` counts the windows fitted. ``source``: where the
    recordings came from when not from ``files`` (the telemetry topic), for the manifest."""
    drives = None if groups is None else drive_numbers(groups)
    with contextlib.ExitStack() as stack:
        fitted: list = []  # the bar, once the number of windows is known

        def progress(done: int, total: int) -> None:
            if not fitted:
                fitted.append(stack.enter_context(bar(desc, total, "window")))
            fitted[0].update(done - fitted[0].n)

        try:
            model, summary = train_platform(platform, list(recordings), cfg, drives, progress)
        except ValueError as exc:  # too little or no attack-free data
            raise CanwatchError(str(exc)) from None
    if source is not None:
        summary["source"] = source
    else:
        summary["files"] = [Path(f).name for f in files]
        if groups is not None:
            summary["groups"] = dict(zip(summary["files"], groups, strict=True))
    return save_model(model, out, brands, summary)


def read_all(
    files: Sequence[str], fmt: str | None, channel: str | None = None
) -> list[np.ndarray]:
    """Every file's frames (of ``channel``); on a terminal, a bar of files and frames read."""
    out = []
    with bar("reading", total=len(files), unit="file") as read:
        for f in files:
            out.append(read_frames(f, fmt, channel))
            read.set_postfix_str(f"{sum(len(r) for r in out):,} frames", refresh=False)
            read.update(1)
    return out


def brands_served(fleet: Fleet, platform: str, brand: str) -> list[str]:
    return fleet.brands_of(platform) or [brand]


def check_sources(args: argparse.Namespace) -> None:
    """Files, or the topic with its span: never both, never neither."""
    if args.from_kafka:
        if args.files:
            raise CanwatchError("give FILEs or --from-kafka, not both")
        missing = [f for f in ("since", "until") if getattr(args, f) is None]
        if missing:
            raise CanwatchError(f"--from-kafka needs --{' and --'.join(missing)}")
        if args.groups or args.format or args.channel:
            raise CanwatchError("--groups, --format and --channel are for FILEs, not --from-kafka")
        if not args.max_frames >= 1:
            raise CanwatchError(f"--max-frames must be >= 1, got {args.max_frames}")
        if not (np.isfinite(args.exclude_margin) and args.exclude_margin >= 0):
            raise CanwatchError(f"--exclude-margin must be >= 0 s, got {args.exclude_margin}")
        if not (np.isfinite(args.lateness) and args.lateness >= 0):
            raise CanwatchError(f"--lateness must be >= 0 s, got {args.lateness}")
    elif not args.files:
        raise CanwatchError("give the recordings to train on (FILE...), or --from-kafka")
    elif any(getattr(args, f) is not None for f in ("since", "until", "bootstrap")):
        raise CanwatchError("--since, --until and --bootstrap go with --from-kafka")


def from_kafka(
    args: argparse.Namespace, cfg: Config, brands: list[str]
) -> tuple[list[np.ndarray], list[str], dict]:
    """The stretches of ``brands`` (the platform's) on the topic: (recordings, the
    vehicle of each, source)."""
    from detector.cli import _train_kafka as tk

    since = tk.parse_time(args.since, "--since")
    until = tk.parse_time(args.until, "--until")
    stretches, source = tk.read_span(
        cfg,
        brands,
        since,
        until,
        margin=args.exclude_margin,
        lateness=args.lateness,
        max_frames=args.max_frames,
        connect_timeout_s=args.connect_timeout,
    )
    return [s.frames for s in stretches], [s.vehicle for s in stretches], source


def run(args: argparse.Namespace) -> int:
    check_sources(args)
    overrides = {"kafka.bootstrap": args.bootstrap} if args.bootstrap else {}
    cfg = config_from(args, **overrides)
    fleet = fleet_from(cfg)
    platform = fleet.platform_of(args.brand)
    brands = brands_served(fleet, platform, args.brand)
    if args.from_kafka:
        # a recording per vehicle stretch, and the vehicle is the drive: calibration
        # then holds whole vehicles out, as `--groups` with one group per vehicle does
        recordings, groups, source = from_kafka(args, cfg, brands)
        manifest = train_and_save(
            platform, recordings, groups, cfg.detection, args.out, brands, groups, source=source
        )
    else:
        groups = None
        if args.groups:
            groups = groups_from_map(args.files, read_group_map(args.groups), args.groups)
        recordings = read_all(args.files, args.format, args.channel)
        manifest = train_and_save(
            platform, recordings, args.files, cfg.detection, args.out, brands, groups
        )
    info = json.loads(manifest.read_text())
    summary = info["training"]
    print(
        f"trained {platform} v{info['version']} for {', '.join(brands)}: "
        f"{summary['benign_frames']} benign frames, {summary['ids']} ids, "
        f"{summary['drives']} drives, threshold {info['threshold']:.4f} -> {manifest}"
    )
    if "source" in summary:
        print(source_line(summary["source"]))
    if summary["drives"] == 1:
        print(f"canwatch train: warning: {ONE_DRIVE}", file=sys.stderr)
    return 0


#: A model calibrated on one drive has not seen what changes between drives: on the
#: ROAD captures, one drive's model flagged 66 of 126 benign windows of the others
#: (the timing of ids that vary by drive), two drives' 0 of 63 (docs/detection.md,
#: "Judging quality").
ONE_DRIVE = (
    "trained on one drive: calibration could only hold half of it out in time, which "
    "does not show what changes from drive to drive (settings, modes, slow signals, the "
    "timing of some ids), so payload evidence alone will not alert (a masquerade goes "
    "unseen) and expect false incidents on other drives; train on two drives or "
    "vehicles or more"
)


def source_line(src: dict) -> str:
    """What was read from the topic, what trained and what was left out, in one line."""
    sampled = " (budget: a sample of whole blocks)" if src["sampled"] else ""
    return (
        f"read {src['records']:,} records of {src['topic']} {src['since']} .. {src['until']}: "
        f"{src['frames_read']:,} {'/'.join(src['brands'])} frames of {src['vehicles_seen']} vehicles, "
        f"{src['frames_used']:,} used{sampled}; {len(src['excluded'])} incident interval(s) "
        f"left out ({src['frames_in_incidents']:,} frames), {src['frames_outside_span']:,} "
        f"frames outside the span by event time, {src['records_undecodable']} undecodable "
        "record(s)"
    )
