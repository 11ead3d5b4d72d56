"""canwatch train: fit a platform model from benign recordings."""

from __future__ import annotations

import argparse
import contextlib
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.cli._common import add_config_flag, config_from, fleet_from
from detector.cli._progress import bar
from detector.core.brands import Fleet
from detector.core.config import DetectionConfig
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
        "says otherwise. Writes <platform>-v<N>.skops and its manifest into --out.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="recordings (any supported format)")
    p.add_argument("--brand", required=True, help="brand slug (see configs/brands.toml)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory")
    p.add_argument("--format", help="force the log format of every FILE")
    p.add_argument(
        "--groups",
        metavar="MAP.csv",
        help="CSV with header 'file,group' naming the drive or vehicle of every FILE "
        "(matched by base name); the same file `evaluate --cross-validate` takes",
    )
    add_config_flag(p)
    p.set_defaults(func=run)


def train_and_save(
    platform: str,
    recordings: Sequence[np.ndarray],
    files: Sequence[str],
    cfg: DetectionConfig,
    out: str | Path,
    brands: list[str],
    groups: Sequence[str] | None = None,
    desc: str = "fitting",
) -> Path:
    """Train on ``recordings`` (``groups``: the drive of each; default: drive_groups) and
    save the model with its manifest into ``out``; returns the manifest path. What
    ``canwatch train`` does, and what each fold of ``evaluate --cross-validate`` does.
    On a terminal, a bar ``desc`` counts the windows fitted."""
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
    summary["files"] = [Path(f).name for f in files]
    if groups is not None:
        summary["groups"] = dict(zip(summary["files"], groups, strict=True))
    return save_model(model, out, brands, summary)


def read_all(files: Sequence[str], fmt: str | None) -> list[np.ndarray]:
    """Every file's frames; on a terminal, a bar of files and frames read."""
    out = []
    with bar("reading", total=len(files), unit="file") as read:
        for f in files:
            out.append(read_frames(f, fmt))
            read.set_postfix_str(f"{sum(len(r) for r in out):,} frames", refresh=False)
            read.update(1)
    return out


def brands_served(fleet: Fleet, platform: str, brand: str) -> list[str]:
    return fleet.brands_of(platform) or [brand]


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    fleet = fleet_from(cfg)
    platform = fleet.platform_of(args.brand)
    groups = None
    if args.groups:
        groups = groups_from_map(args.files, read_group_map(args.groups), args.groups)
    recordings = read_all(args.files, args.format)
    brands = brands_served(fleet, platform, args.brand)
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
    return 0
