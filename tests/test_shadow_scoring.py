"""A shadow scores exactly what its model alone would, and the serving model exactly
what it would without a shadow: grouping the batch once for both (when both see it
the same way) changes no row of either, whatever the batch holds."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

import detector.features.windowing as windowing
from detector.core.brands import load_fleet
from detector.core.config import DetectionConfig
from detector.model.pipeline import Scorer
from detector.model.store import load_latest
from detector.model.training import train_platform
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

FLEET = load_fleet()
T0 = 1.7e9 + 500
RECORD_S = 0.25


@pytest.fixture(scope="module")
def models(cusw_models):
    """The serving model, and a shadow trained on other vehicles (other baselines,
    envelopes and forest)."""
    recordings = [simulate_vehicle("cusw", 60.0, 1.7e9, seed=300 + i) for i in range(4)]
    shadow, _ = train_platform("cusw", recordings, DetectionConfig())
    return load_latest(cusw_models)["cusw"], shadow


def polls() -> list[list[tuple[str, str, np.ndarray]]]:
    """Four jeeps, one fuzzing (ids neither model knows), one flooding 0x000, in
    records of 0.25 s, a poll per 0.5 s of the fleet; one record is sent again 1.5 s
    late (frames of windows already closed) and one twice in a poll (frames older
    than their stream's open window)."""
    attacks = {1: AttackSpec("fuzzing", 6.0, 1.5), 2: AttackSpec("dos", 9.0, 1.0)}
    records = []
    for v in range(4):
        frames = simulate_vehicle("cusw", 16.0, T0, seed=70 + v)
        if v in attacks:
            frames, _ = inject(frames, attacks[v], seed=v)
        part = np.floor((frames["ts"] - T0) / RECORD_S).astype(np.int64)
        for k, rec in zip(*np.unique(part, return_index=True), strict=True):
            end = np.searchsorted(part, k, side="right")
            records.append((k, f"veh-{v}", "jeep", frames[rec:end]))
    records.sort(key=lambda r: r[0])
    out: dict[int, list] = {}
    for k, vehicle, brand, frames in records:
        out.setdefault(k // 2, []).append((vehicle, brand, frames))
        if vehicle == "veh-3" and k == 30:
            out.setdefault(k // 2 + 3, []).append((vehicle, brand, frames))  # 1.5 s late
        if vehicle == "veh-0" and k == 41:
            out[k // 2].insert(0, (vehicle, brand, frames[len(frames) // 2 :]))  # older half again
    return [out[k] for k in sorted(out)]


def rows_of(scored) -> list[tuple]:
    return [
        (s.platform, s.model_version, s.rows.vehicle, s.rows.window, s.rows.can_id,
         s.rows.X, s.rows.count, s.scores, s.excess)
        for s in scored
    ]  # fmt: skip


def assert_same(got: list[tuple], want: list[tuple]) -> None:
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g[:2] == w[:2]
        for a, b in zip(g[2:], w[2:], strict=True):
            np.testing.assert_array_equal(a, b)


def test_shadow_rows_are_those_of_its_model_alone(models, monkeypatch) -> None:
    serving, shadow = models
    grouped = []  # each state's grouping of a batch, as it is worked out
    group = windowing.WindowState._group

    def spy(*args, **kwargs):
        grouped.append(1)
        return group(*args, **kwargs)

    monkeypatch.setattr(windowing.WindowState, "_group", staticmethod(spy))
    batches = polls()
    install = 4  # the shadow comes mid-stream: its first windows are out of step
    alone = Scorer({"cusw": serving}, FLEET, 1.0)
    alone_shadow = Scorer({"cusw": shadow}, FLEET, 1.0)
    both = Scorer({"cusw": serving}, FLEET, 1.0)
    for k, batch in enumerate(batches):
        if k == install:
            both.set_shadow("cusw", shadow)
        want = rows_of(alone.push(batch))
        assert_same(rows_of(both.push(batch)), want)
        if k >= install:
            assert_same(rows_of(both.take_shadow()), rows_of(alone_shadow.push(batch)))
        late = both.state["cusw"].window.late_frames
        assert late == alone.state["cusw"].window.late_frames
    assert late > 0, "frames came late"
    assert both.take_shadow() == []
    # grouped once for both in most polls; each on its own where the fuzzer's ids or
    # late frames are (the shadow's own grouping then)
    shadowed = len(batches) - install
    # one a batch each: the serving model alone, beside its shadow, the shadow alone
    shadow_groupings = len(grouped) - 2 * len(batches) - shadowed
    assert 0 < shadow_groupings < shadowed // 2


def test_a_shadow_of_the_same_model_agrees_row_for_row(models) -> None:
    serving, _ = models
    scorer = Scorer({"cusw": serving}, FLEET, 1.0)
    scorer.set_shadow("cusw", serving)
    for batch in polls():
        assert_same(rows_of(scorer.push(batch)), rows_of(scorer.take_shadow()))


def test_a_promoted_shadow_serves_on_with_the_state_it_built(models) -> None:
    """Promoted mid-stream, the shadow's window state and vehicle references serve from
    then on: each row is the one its model alone would give, had it watched the fleet
    since the shadow came, with nothing of the model it replaced left."""
    serving, shadow = models
    batches = polls()
    install, promote = 4, 12
    both = Scorer({"cusw": serving}, FLEET, 1.0)
    alone_shadow = Scorer({"cusw": shadow}, FLEET, 1.0)
    for k, batch in enumerate(batches):
        if k == install:
            both.set_shadow("cusw", shadow)
        if k == promote:
            both.set_model(dataclasses.replace(shadow))  # the registry loads it anew
            both.set_shadow("cusw", None)
            assert both.state["cusw"].shadow is None and both.shadows == {}
        got = both.push(batch)
        if k >= install:
            want = rows_of(alone_shadow.push(batch))
            assert_same(rows_of(got if k >= promote else both.take_shadow()), want)
    assert both.take_shadow() == []
