"""canwatch train: fit a platform model from benign recordings."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detector.cli._common import add_config_flag, config_from, fleet_from
from detector.errors import CanwatchError
from detector.model_store import save_model
from detector.training import train_platform
from replay.readers import read_frames


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="train a brand's platform model on benign recordings",
        description="Train the isolation-forest model of a brand's platform on recordings. "
        "Frames labelled as attacks, and the windows holding them, are left out. Each file "
        "is one vehicle. Writes <platform>-v<N>.skops and its manifest into --out.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="recordings (any supported format)")
    p.add_argument("--brand", required=True, help="brand slug (see configs/brands.toml)")
    p.add_argument("--out", required=True, metavar="DIR", help="model directory")
    p.add_argument("--format", help="force the log format of every FILE")
    add_config_flag(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    fleet = fleet_from(cfg)
    platform = fleet.platform_of(args.brand)
    recordings = [read_frames(f, args.format) for f in args.files]
    try:
        model, summary = train_platform(platform, recordings, cfg.detection)
    except ValueError as exc:  # too little or no attack-free data
        raise CanwatchError(str(exc)) from None
    summary["files"] = [Path(f).name for f in args.files]
    brands = fleet.brands_of(platform) or [args.brand]
    manifest = save_model(model, args.out, brands, summary)
    info = json.loads(manifest.read_text())
    print(
        f"trained {platform} v{info['version']} for {', '.join(brands)}: "
        f"{summary['benign_frames']} benign frames, {summary['ids']} ids, "
        f"threshold {info['threshold']:.4f} -> {manifest}"
    )
    return 0
