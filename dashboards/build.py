"""Build the Grafana dashboards of canwatch as JSON (run: python dashboards/build.py).

Each panel is built by a small pure function; the boards are lists of them. The generated JSON sits next to this script and is committed; the test
suite fails when it is stale (``python dashboards/build.py --check``).

The boards are provisionable as they are: fixed uids, the Prometheus data
source as the ``datasource`` variable (never a hard-coded uid), schemaVersion 39.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# Run as a script or loaded by path from the tests: the helpers sit next to it.
HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from detector_health import detector_health  # noqa: E402
from model_owner import model_owner  # noqa: E402
from soc_overview import soc_overview  # noqa: E402

DASHBOARDS: dict[str, Callable[[], dict[str, Any]]] = {
    "soc-overview.json": soc_overview,
    "detector-health.json": detector_health,
    "model-owner.json": model_owner,
}

# What Grafana would put in place of each variable, for running panel queries
# against a plain Prometheus (tests): every brand/instance, a fixed range.
DEFAULT_SUBSTITUTIONS = {
    "brand": ".*",
    "instance": ".*",
    "__rate_interval": "1m",
    "__interval": "1m",
    "__range": "5m",
    "datasource": "prometheus",
}
_VARIABLE = re.compile(r"\$\{(\w+)\}|\$(\w+)")


def substitute(expr: str, values: dict[str, str] = DEFAULT_SUBSTITUTIONS) -> str:
    """Replace ``$name`` / ``${name}``; an unknown variable raises KeyError."""
    return _VARIABLE.sub(lambda m: values[m.group(1) or m.group(2)], expr)


def panel_queries(
    board: dict[str, Any], values: dict[str, str] = DEFAULT_SUBSTITUTIONS
) -> list[tuple[str, str]]:
    """(panel title, PromQL with variables substituted) for every target of ``board``."""
    out = []
    for panel in board["panels"]:
        for p in [panel, *panel.get("panels", [])]:  # collapsed rows nest their panels
            for t in p.get("targets", []):
                out.append((p["title"], substitute(t["expr"], values)))
    return out


def render(board: dict[str, Any]) -> str:
    return json.dumps(board, indent=2, ensure_ascii=False) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if the JSON is stale")
    args = parser.parse_args(argv)
    stale = []
    for name, build in DASHBOARDS.items():
        path, text = HERE / name, render(build())
        if args.check:
            if not path.exists() or path.read_text(encoding="utf-8") != text:
                stale.append(name)
        else:
            path.write_text(text, encoding="utf-8")
    for name in stale:
        print(f"{HERE / name}: stale, run python {Path(__file__).relative_to(HERE.parent)}")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main())
