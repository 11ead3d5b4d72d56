"""``canwatch incidents --campaigns``: campaign records as a table or JSON lines.

Without ``--follow``: the latest record of each campaign (the campaigns as they
stand), oldest first. With ``--follow``: every record as it arrives.
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterable
from typing import Any

from detector.cli._table import cell as _cell
from detector.cli._table import fit
from detector.cli._table import utc_time as _time

#: (title, width, right-aligned); the last column takes the rest of the line.
COLUMNS = (
    ("FIRST SEEN (UTC)", 19, False),
    ("STATUS", 6, False),
    ("BRAND", 12, False),
    ("ATTACK", 10, False),
    ("CAN ID", 11, False),
    ("VEHICLES", 8, True),
    ("INCIDENTS", 9, True),
    ("CAMPAIGN", 20, False),
    ("MEMBERS", 0, False),
)


def _seconds(camp: dict) -> float:
    try:
        return float(camp.get("first_seen"))
    except (TypeError, ValueError):
        return float("inf")


def header(width: int | None = None) -> str:
    return fit(" ".join(_cell(t, w, r) for t, w, r in COLUMNS).rstrip(), width)


def row(camp: dict, width: int | None = None) -> str:
    """One readable line for a campaign record, cut to ``width`` if given."""
    vehicles = camp.get("vehicles")
    members = ",".join(map(str, vehicles)) if isinstance(vehicles, list) else "-"
    cells = (
        _time(camp.get("first_seen")),
        str(camp.get("status", "-")),
        str(camp.get("brand", "-")),
        str(camp.get("suspected_attack", "-")),
        str(camp.get("can_id", "-")),
        str(camp.get("vehicle_count", "-")),
        str(camp.get("incident_count", "-")),
        str(camp.get("campaign_id", "-")),
        members or "-",
    )
    return fit(
        " ".join(_cell(c, w, r) for c, (_, w, r) in zip(cells, COLUMNS, strict=True)), width
    )


def _parse(records: Iterable[Any]) -> Iterable[tuple[Any, dict]]:
    """(record, campaign) for each record that is a campaign record; others on stderr."""
    for r in records:
        try:
            camp = json.loads(r.value)
            if not isinstance(camp, dict) or not isinstance(camp.get("campaign_id"), str):
                raise ValueError("not a JSON object with a campaign_id")
        except (TypeError, ValueError) as exc:
            print(
                f"canwatch incidents: skipping partition {r.partition} offset {r.offset}: "
                f"not a campaign record ({exc})",
                file=sys.stderr,
            )
            continue
        yield r, camp


def print_campaigns(records: Iterable[Any], as_json: bool, follow: bool) -> None:
    """Print campaign records (Kafka records) as a table or JSON lines."""
    from detector.cli.incidents import json_line

    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    if not as_json:
        print(header(width), flush=True)
    parsed = _parse(records)
    if not follow:  # the campaigns as they stand: the last record of each, oldest first
        last = {camp["campaign_id"]: (r, camp) for r, camp in parsed}
        parsed = sorted(last.values(), key=lambda rc: (_seconds(rc[1]), rc[1]["campaign_id"]))
    for r, camp in parsed:
        print(json_line(r.value, camp) if as_json else row(camp, width), flush=True)
