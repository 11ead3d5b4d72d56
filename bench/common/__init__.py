"""The harness every benchmark shares, so that a benchmark is only what it measures.

- ``bench.common.rig``: the embedded broker, the simulated fleet, trained
  models, and a backlog produced the way canwatch's clients produce it;
- ``bench.common.detect``: ``canwatch detect`` of this checkout as a measured
  subprocess (its CPU traced from /proc, its /metrics scraped);
- ``bench.common.procs``: CPU and RSS of processes and threads, and child
  processes that answer with one JSON line;
- ``bench.common.report``: medians with min–max, Markdown tables, and the JSON
  results file (``--json PATH`` of every benchmark) with the machine, the
  commit and the command described.

Benchmarks report medians with min–max over repeats, and CPU-seconds rather
than wall time where the claim is "per core": this machine is shared and
noisy, and wall time counts waiting on the broker as work. Ratios are taken
between runs of the same repeat, then the median.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

#: The checkout measured: its detector/ and replay/ are the code every benchmark runs.
ROOT = Path(__file__).resolve().parents[2]


def say(msg: str) -> None:
    """Progress goes to stderr, so stdout is only the report."""
    print(msg, file=sys.stderr, flush=True)


# -- option types: a bad value is argparse's one-line error, not a traceback mid-run --


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {text}")
    return value


def positive_float(text: str) -> float:
    value = float(text)
    if not 0 < value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0, got {text}")
    return value


def listed(kind: Callable[[str], Any], choices: Iterable[str] | None = None) -> Callable:
    """A comma-separated list of ``kind`` values (from ``choices``, if given)."""
    allowed = None if choices is None else list(choices)

    def parse(text: str) -> list:
        items = [t.strip() for t in text.split(",") if t.strip()]
        if not items:
            raise argparse.ArgumentTypeError("give at least one value")
        if allowed is not None and (unknown := sorted(set(items) - set(allowed))):
            raise argparse.ArgumentTypeError(f"unknown {unknown}; choose from {allowed}")
        try:
            return [kind(t) for t in items]
        except ValueError as exc:  # named, where argparse would name only this function
            raise argparse.ArgumentTypeError(str(exc) or f"bad value in {text!r}") from None

    return parse


def key_value(text: str) -> tuple[str, str]:
    """``KEY=VALUE``."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key.strip(), value.strip()
