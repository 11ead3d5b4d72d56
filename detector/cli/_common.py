"""Flags and helpers shared by several subcommands."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detector.core.brands import Fleet, load_fleet
from detector.core.config import Config, load_config
from detector.core.errors import ConfigError, ModelError
from detector.evaluation.evaluate import Span
from detector.model.platform import PlatformModel
from detector.model.store import list_manifests, load_model


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")


def config_from(args: argparse.Namespace, **overrides) -> Config:
    return load_config(getattr(args, "config", None), overrides=overrides)


def fleet_from(cfg: Config) -> Fleet:
    return load_fleet(cfg.fleet.brands_file) if cfg.fleet.brands_file else load_fleet()


def latest_model(model_dir: str, platform: str) -> PlatformModel:
    versions = list_manifests(model_dir).get(platform)
    if not versions:
        raise ModelError(f"no model for platform {platform!r} in {model_dir} (run canwatch train)")
    return load_model(versions[-1].path)


def spans_for(fleet_json: Path | None, vehicle: str) -> list[Span]:
    """Attack spans of ``vehicle`` from a simulator fleet.json, if there is one."""
    if fleet_json is None or not fleet_json.is_file():
        return []
    try:
        data = json.loads(fleet_json.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{fleet_json}: not valid JSON: {exc}") from None
    return [
        Span(a["kind"], float(a["start_ts"]), float(a["end_ts"]))
        for a in data.get("attacks", [])
        if a.get("vehicle") in (None, vehicle)
    ]
