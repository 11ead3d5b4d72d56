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

import sys
from pathlib import Path

#: The checkout measured: its detector/ and replay/ are the code every benchmark runs.
ROOT = Path(__file__).resolve().parents[2]


def say(msg: str) -> None:
    """Progress goes to stderr, so stdout is only the report."""
    print(msg, file=sys.stderr, flush=True)
