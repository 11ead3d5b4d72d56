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


def silent(frames: np.ndarray, start: float, end: float) -> np.ndarray:
    """``frames`` without those from ``start`` to ``end`` s into the drive: its uplink
    stopped (a telemetry gap: the windows it touches go unscored)."""
    t = frames["ts"] - T0
    return frames[(t < start) | (t >= end)]


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


@pytest.mark.parametrize("back_at", [32.9, 38.0])
def test_a_vehicle_silent_at_the_swap_warms_up_when_it_sends_again(model, back_at) -> None:
    """Its uplink is down from 30.3 s (just before the swap) to ``back_at``: the windows
    of the gap go unscored, and its warm-up waits for the first window scored after it
    (counted from the swap, it was over before any: 25 windows flagged)."""
    frames = silent(variant(963), 30.3, back_at)
    assert flagged(scored(model, frames, None)) == []
    out = scored(model, frames, "another-version")
    assert set(range(int(back_at) + 3, 58)) <= windows(out)
    assert flagged(out) == []


def test_a_vehicle_a_young_shadow_never_saw_keeps_its_open_window(model) -> None:
    """A shadow installed while a vehicle was quiet holds no window of it: promoted, it
    cannot serve that vehicle on, so every vehicle warms up again instead: the quiet
    vehicle's open window is still there to score when it is retired (handed over, it
    was lost, and the vehicle's records were held back for ever: ``closed_until`` -inf)."""
    frames = variant(964)
    scorer = Scorer({"cusw": model}, FLEET, 1.0)
    scorer.push([(v, "jeep", frames[frames["ts"] < SWAP_AT]) for v in ("veh-a", "veh-b")])
    shadow = dataclasses.replace(model, version=model.version + 1)
    scorer.set_shadow("cusw", shadow)
    later = frames[(frames["ts"] >= SWAP_AT) & (frames["ts"] < SWAP_AT + 5)]
    scorer.push([("veh-b", "jeep", later)])  # veh-a has gone quiet
    scorer.take_shadow()
    scorer.set_model(dataclasses.replace(shadow))
    scorer.set_shadow("cusw", None)
    assert scorer.closed_until("veh-a", "jeep") == np.floor(SWAP_AT)
    (rows,) = scorer.retire({"veh-a"})
    assert set(rows.rows.window.tolist()) == {np.floor(SWAP_AT)}


def test_a_rollback_to_the_shadowed_version_keeps_its_shadow_scoring(model) -> None:
    """Serving v2 with v1 in shadow, a rollback serves v1 and leaves the lifecycle's shadow
    as it was (the registry installs no shadow anew): v1 serves on with the shadow's state,
    and also shadows on, from a window state of its own."""
    v1 = model
    v2 = dataclasses.replace(model, version=model.version + 1)
    frames = variant(965)
    scorer = Scorer({"cusw": v2}, FLEET, 1.0)
    scorer.set_shadow("cusw", v1)
    scorer.push([("veh-a", "jeep", frames[frames["ts"] < SWAP_AT])])
    scorer.take_shadow()
    scorer.set_model(dataclasses.replace(v1))
    assert scorer.shadows == {"cusw": v1} and scorer.state["cusw"].shadow is not None
    served = scorer.push([("veh-a", "jeep", frames[frames["ts"] >= SWAP_AT])])
    shadowed = scorer.take_shadow()
    assert flagged(served) == [] and windows(served) and windows(shadowed)


@pytest.mark.parametrize("swap", SWAPS)
def test_an_attack_after_a_swap_is_still_detected(model, swap: str) -> None:
    """A spoofing 10 s after the swap (past any warm-up the swap restarted) is flagged
    from its first window, in the attack's windows only."""
    frames, span = inject(variant(962), AttackSpec.parse("spoofing:start=40,duration=5"), seed=3)
    assert 30 + WARMUP_WINDOWS < 40
    got = flagged(scored(model, frames, swap))
    assert got and got[0] == 40 and set(got) <= set(range(40, 46)), (hex(span.can_id), got)


def test_a_promoted_shadows_record_is_written_whole(model, tmp_path) -> None:
    """Promoted (the registry's order: the new serving model, then no shadow), the
    shadow's record against the model it replaced keeps every window it counted, and
    no would-be incident of the old shadow state carries over."""
    from prometheus_client import CollectorRegistry

    from detector.core.config import IncidentConfig
    from detector.model.shadow_record import read_tallies
    from detector.service.metrics import DetectorMetrics
    from detector.service.shadow import ShadowScoring

    scorer = Scorer({"cusw": model}, FLEET, 1.0)
    metrics = DetectorMetrics(CollectorRegistry())
    shadows = ShadowScoring(scorer, FLEET, 1.0, IncidentConfig(), "d", metrics, str(tmp_path))
    shadows.serving_loaded(model)
    shadow = dataclasses.replace(model, version=model.version + 1)
    shadows.install("cusw", shadow)
    frames, _ = inject(variant(966), AttackSpec.parse("dos:start=26,duration=8"), seed=1)
    for lo in np.arange(T0, SWAP_AT, 2.0):
        part = frames[(frames["ts"] >= lo) & (frames["ts"] < min(lo + 2.0, SWAP_AT))]
        shadows.observe(scorer.push([("veh-a", "jeep", part)]), [])
    counted = shadows.tallies["cusw"].windows
    assert counted >= 25 and shadows.tracker.open  # the shadow's would-be flood incident
    promoted = dataclasses.replace(shadow)
    scorer.set_model(promoted)
    shadows.serving_loaded(promoted)
    assert not shadows.tracker.open
    shadows.install("cusw", None)
    record = read_tallies(tmp_path, "cusw", shadow.version, model.version)
    assert record is not None and record.windows == counted
