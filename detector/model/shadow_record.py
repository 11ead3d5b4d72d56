"""What a shadow did beside the serving model, kept where ``canwatch models promote`` reads it.

Each detector instance scoring a shadow writes its tally, per (shadow version,
serving version) pair, into ``<model dir>/.shadow/`` every
``models.reload_interval_s``: windows both models scored, how many each found
anomalous, how often they agreed, and the incidents each opened (the shadow's
never published). ``promotion_verdict`` sums every instance's file for the pair
now in place and refuses a shadow whose would-be incident rate is worse than
the serving model's by more than a configured factor.

Both models score the same windows, so their incident counts compare directly:
the rate per vehicle-hour is the count over the same hours. Which incidents are
false no detector knows; the serving model's count is the yardstick an analyst
already lives with, and one more incident on each side keeps a quiet shadow
period (0 against 0, 1 against 0) from deciding on noise.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

from detector.model.store import write_atomically

SHADOW_DIR = ".shadow"
_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


@dataclass
class ShadowTally:
    platform: str
    shadow_version: int
    serving_version: int
    window_s: float
    windows: int = 0  # windows both models scored
    serving_anomalous: int = 0
    shadow_anomalous: int = 0
    agreeing: int = 0  # windows both called anomalous, or neither
    serving_incidents: int = 0
    shadow_incidents: int = 0
    since: float = 0.0  # epoch seconds of the tally's start

    @property
    def vehicle_hours(self) -> float:
        return self.windows * self.window_s / 3600.0

    def add(self, other: ShadowTally) -> None:
        for name in ("windows", "serving_anomalous", "shadow_anomalous", "agreeing",
                     "serving_incidents", "shadow_incidents"):  # fmt: skip
            setattr(self, name, getattr(self, name) + getattr(other, name))
        self.since = min(self.since, other.since) if self.since else other.since


def tally_path(model_dir: Path | str, tally: ShadowTally, instance: str) -> Path:
    name = (
        f"{tally.platform}-v{tally.shadow_version}-vs-v{tally.serving_version}."
        f"{_SAFE.sub('_', instance)}.json"
    )
    return Path(model_dir) / SHADOW_DIR / name


def write_tally(model_dir: Path | str, tally: ShadowTally, instance: str) -> Path:
    """Write (replace) this instance's tally for its version pair."""
    path = tally_path(model_dir, tally, instance)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(path, json.dumps({**asdict(tally), "updated": time.time()}) + "\n")
    return path


def read_tallies(
    model_dir: Path | str, platform: str, shadow: int, serving: int
) -> ShadowTally | None:
    """Every instance's tally of ``shadow`` beside ``serving``, summed (None: none)."""
    folder = Path(model_dir) / SHADOW_DIR
    prefix = f"{platform}-v{shadow}-vs-v{serving}."
    keys = {f.name for f in fields(ShadowTally)}
    total = None
    for path in sorted(folder.glob(f"{prefix}*.json")) if folder.is_dir() else []:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
            t = ShadowTally(**{k: v for k, v in data.items() if k in keys})
        except (OSError, ValueError, TypeError):
            continue  # a file being replaced, or not ours: the others still count
        if total is None:
            total = t
        else:
            total.add(t)
    return total


def incident_ratio(t: ShadowTally) -> float:
    """Shadow incidents per serving incident over the same windows, one added to each."""
    return (t.shadow_incidents + 1) / (t.serving_incidents + 1)


def promotion_verdict(t: ShadowTally | None, max_ratio: float, shadow: int) -> str | None:
    """Why promoting the shadow must be refused, or None when its record allows it."""
    if t is None or t.windows == 0:
        return (
            f"v{shadow} has no shadow period beside the serving model (no detector has "
            "scored it in shadow yet)"
        )
    ratio = incident_ratio(t)
    if ratio > max_ratio:
        return (
            f"v{shadow} would have opened {t.shadow_incidents} incidents where the serving "
            f"model opened {t.serving_incidents} over {t.vehicle_hours:.1f} vehicle-hours "
            f"({ratio:.1f}x, more than models.promote_max_ratio = {max_ratio:g})"
        )
    return None
