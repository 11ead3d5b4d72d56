"""Summaries, Markdown tables and the JSON results file, with the machine described."""

from __future__ import annotations

import functools
import json
import os
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from bench.common import ROOT


def summary(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of repeated measurements."""
    vals = [float(v) for v in values]
    return {"median": statistics.median(vals), "min": min(vals), "max": max(vals)}


def fmt_range(s: dict[str, float], digits: int = 0, scale: float = 1.0) -> str:
    """``median (min–max)`` with thousands separators."""
    f = f"{{:,.{digits}f}}".format
    return f"{f(s['median'] * scale)} ({f(s['min'] * scale)}–{f(s['max'] * scale)})"


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A GitHub Markdown table; the first column left-aligned, the others right."""
    lines = [
        "| " + " | ".join(headers) + " |",
        "|" + "|".join(["---"] + ["---:"] * (len(headers) - 1)) + "|",
    ]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _first_field(path: str, key: str) -> str | None:
    try:
        for line in Path(path).read_text().splitlines():
            if line.startswith(key):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def _git(*args: str) -> str | None:
    try:
        res = subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True)
    except OSError:
        return None
    return res.stdout.strip() if res.returncode == 0 else None


@functools.cache
def machine() -> dict:
    """The machine and the code the figures came from (a figure means little without them)."""
    import numpy as np

    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        cpu = next(ln.split(":", 1)[1].strip() for ln in lscpu.splitlines() if "Model name" in ln)
    except (OSError, StopIteration):
        cpu = _first_field("/proc/cpuinfo", "model name") or "unknown CPU"
    mem_kb = _first_field("/proc/meminfo", "MemTotal")
    status = _git("status", "--porcelain", "--untracked-files=no")
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "ram_gib": round(int(mem_kb.split()[0]) / 2**20, 1) if mem_kb else None,
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "commit": _git("rev-parse", "HEAD"),
        "uncommitted_changes": None if status is None else bool(status),
        "code": str(ROOT),
    }


def machine_line(m: dict | None = None) -> str:
    """One line naming the machine and commit the numbers came from."""
    m = m or machine()
    commit = (m.get("commit") or "unknown")[:10] + (" + changes" if m.get("uncommitted_changes") else "")
    return (
        f"{m['cpu']}, {m['cores']} cores, {m['ram_gib']} GiB, Python {m['python']}, "
        f"numpy {m['numpy']}, commit {commit}"
    )


def write_results(path: Path | None, results: dict, headline: Sequence[tuple[str, str]]) -> None:
    """``results`` as JSON at ``path``, with the machine, the command and the time.

    ``headline``: (figure, value) pairs, the few numbers ``bench/report.py``
    (``make bench``) lists for this benchmark."""
    if path is None:
        return
    doc = {
        **results,
        "headline": [list(h) for h in headline],
        "machine": machine(),
        "command": shlex.join([sys.executable, *sys.argv]),
        "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
