"""Flags and helpers shared by several subcommands."""

from __future__ import annotations

import argparse

from detector.core.brands import Fleet, load_fleet
from detector.core.config import Config, load_config
from detector.evaluation.evaluate import spans_for
from detector.model.store import latest_model

__all__ = ["add_config_flag", "config_from", "fleet_from", "latest_model", "spans_for"]


def add_config_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")


def config_from(args: argparse.Namespace, **overrides) -> Config:
    return load_config(getattr(args, "config", None), overrides=overrides)


def fleet_from(cfg: Config) -> Fleet:
    return load_fleet(cfg.fleet.brands_file) if cfg.fleet.brands_file else load_fleet()


MAX_CONNECT_TIMEOUT_S = 3600.0  # as kafka.connect_timeout_s


def connect_timeout(text: str) -> float:
    """``--connect-timeout``: seconds in (0, 3600] (inf, nan or 0 reached kafka-python as
    a traceback, or as a broker that could not be reached)."""
    value = float(text)
    if not 0 < value <= MAX_CONNECT_TIMEOUT_S:
        raise argparse.ArgumentTypeError(f"must be in (0, {MAX_CONNECT_TIMEOUT_S:g}] s, got {text}")
    return value

