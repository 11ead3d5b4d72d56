"""The short table ``make bench`` ends with: each benchmark's headline figures, from its JSON.

Every benchmark's ``--json PATH`` file holds a ``headline`` (its few key
figures, median (min–max) where it repeats), the machine and the commit
measured. The full tables are in each benchmark's own output and JSON.

    .venv/bin/python bench/report.py out/bench/*.json
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/report.py`)
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common.report import machine_line, markdown_table


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("results", nargs="+", type=Path, help="JSON files written by --json")
    args = ap.parse_args(argv)
    rows, machines = [], {}
    for path in args.results:
        try:
            doc = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            rows.append((path.stem, "unreadable", str(exc)))
            continue
        rows += [(path.stem, what, value) for what, value in doc.get("headline", [])]
        if "machine" in doc:
            line = machine_line(doc["machine"])
            machines.setdefault(line, []).append(f"{path.stem} ({doc.get('finished', '?')})")
    print(markdown_table(("results", "figure", "value"), rows))
    for line, runs in machines.items():
        print(f"\n{line}: {', '.join(runs)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
