"""Shared bits of the benchmarks: summaries, Markdown tables, JSON output, CPU time.

Benchmarks report medians with min–max over repeats, and CPU-seconds rather
than wall time where the claim is "per core": this machine is shared and
noisy, and wall time counts waiting on the broker as work.
"""

from __future__ import annotations

import json
import os
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python bench/x.py` from a checkout
    sys.path.insert(0, str(ROOT))

_TICK = os.sysconf("SC_CLK_TCK")


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def fmt_range(s: dict[str, float], digits: int = 0, scale: float = 1.0) -> str:
    """``median (min–max)`` with thousands separators."""
    f = f"{{:,.{digits}f}}"
    return (
        f"{f.format(s['median'] * scale)} ({f.format(s['min'] * scale)}–{f.format(s['max'] * scale)})"
    )


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def write_json(path: Path | None, obj: object) -> None:
    if path is not None:
        path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n")


def proc_cpu_seconds(pid: int) -> float:
    """user + system CPU seconds of a live process (Linux /proc), children excluded."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _TICK


def machine() -> str:
    """One line naming the machine the numbers came from."""
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}"
