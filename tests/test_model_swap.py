"""A model swapped while vehicles drive (a promote, a rollback, a new version picked
up): each vehicle's own state stays its own, and an attack after the swap is still seen.

A vehicle's reference (``detector.model.reference``) holds, in its model's units, what it
showed from its first windows on. A promoted shadow built its own beside the serving
one; any other model has none, and restarts each vehicle's warm-up instead. Before,
every vehicle's reference was simply emptied: a vehicle whose variant sends one id twice
as often as learned had every window after a swap flagged (30 of 30 here).
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detector.core.brands import load_fleet
from detector.model.pipeline import ScoredRows, Scorer
from detector.model.platform import PlatformModel
from detector.model.reference import WARMUP_WINDOWS
from detector.model.store import load_latest
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

FLEET = load_fleet()
T0 = 1.7e9 + 700
SWAP_AT = T0 + 30.3  # inside window 30 of the drive
SWAPS = ["another-version", "promoted-shadow"]


@pytest.fixture(scope="module")
def model(cusw_models) -> PlatformModel:
    return load_latest(cusw_models)["cusw"]


def variant(seed: int) -> np.ndarray:
    """A new jeep's 60 s drive whose variant sends one periodic id (0x2E4, every 20 ms)
    twice as often, from its first frame: its own state, within what warm-up takes in."""
    frames = simulate_vehicle("cusw", 60.0, T0, seed=seed)
    own = frames[frames["can_id"] == 0x2E4].copy()
    own["ts"] += np.median(np.diff(own["ts"])) / 2
    both = np.concatenate([frames, own])
    return both[np.argsort(both["ts"], kind="stable")]


def scored(model: PlatformModel, frames: np.ndarray, swap: str | None) -> list[ScoredRows]:
    """The drive through one Scorer, its model swapped at SWAP_AT: for another version
    (as a rollback or a version without a shadow), or for the shadow it had from the
    start (as a promote); the registry loads the version anew, a model object of its own."""
    scorer = Scorer({"cusw": model}, FLEET, 1.0)
    other = dataclasses.replace(model, version=model.version + 1)
    if swap == "promoted-shadow":
        scorer.set_shadow("cusw", other)
    out = scorer.push([("veh-variant", "jeep", frames[frames["ts"] < SWAP_AT])])
    if swap is not None:
        scorer.set_model(dataclasses.replace(other))
        scorer.set_shadow("cusw", None)  # what the registry does next after a promote
    out += scorer.push([("veh-variant", "jeep", frames[frames["ts"] >= SWAP_AT])])
    assert scorer.take_shadow() == [] or swap == "promoted-shadow"
    return out


def flagged(out: list[ScoredRows]) -> list[int]:
    """Windows (from the drive's start) where a row scored at or over the threshold."""
    return sorted(
        {int(w - T0) for s in out for w in s.rows.window[s.scores >= 1.0].tolist()}
    )


def windows(out: list[ScoredRows]) -> set[int]:
    return {int(w - T0) for s in out for w in s.rows.window.tolist()}


@pytest.mark.parametrize("swap", SWAPS)
def test_a_swap_mid_drive_leaves_a_vehicles_own_state_its_own(model, swap: str) -> None:
    frames = variant(961)
    assert flagged(scored(model, frames, None)) == []  # without a swap: its own state
    out = scored(model, frames, swap)
    assert set(range(31, 58)) <= windows(out)  # every window after the swap was scored
    assert flagged(out) == []


@pytest.mark.parametrize("swap", SWAPS)
def test_an_attack_after_a_swap_is_still_detected(model, swap: str) -> None:
    """A spoofing 10 s after the swap (past any warm-up the swap restarted) is flagged
    from its first window, in the attack's windows only."""
    frames, span = inject(variant(962), AttackSpec.parse("spoofing:start=40,duration=5"), seed=3)
    assert 30 + WARMUP_WINDOWS < 40
    got = flagged(scored(model, frames, swap))
    assert got and got[0] == 40 and set(got) <= set(range(40, 46)), (hex(span.can_id), got)
