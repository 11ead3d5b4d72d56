"""canwatch train: fit a platform model from benign recordings."""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from detector.cli._common import add_config_flag, config_from, fleet_from
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
) -> Path:
    """Train on ``recordings`` (``groups``: the drive of each; default: drive_groups) and
    save the model with its manifest into ``out``; returns the manifest path. What
    ``canwatch train`` does, and what each fold of ``evaluate --cross-validate`` does."""
    drives = None if groups is None else drive_numbers(groups)
    try:
        model, summary = train_platform(platform, list(recordings), cfg, drives)
    except ValueError as exc:  # too little or no attack-free data
        raise CanwatchError(str(exc)) from None
    summary["files"] = [Path(f).name for f in files]
    if groups is not None:
        summary["groups"] = dict(zip(summary["files"], groups, strict=True))
    return save_model(model, out, brands, summary)


def brands_served(fleet: Fleet, platform: str, brand: str) -> list[str]:
    return fleet.brands_of(platform) or [brand]


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    fleet = fleet_from(cfg)
    platform = fleet.platform_of(args.brand)
    groups = None
    if args.groups:
        groups = groups_from_map(args.files, read_group_map(args.groups), args.groups)
    recordings = [read_frames(f, args.format) for f in args.files]
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
