"""Bounded state (issue 22): what a fuzzer or a flood of vehicle keys can make the
detector hold, and the policy past ``limits.*``, at the level of the scorer.

The service tests (tests/test_state_limits_service.py) drive the same through
the embedded broker.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from detector.core.brands import load_fleet
from detector.core.config import ConfigError, LimitsConfig, load_config
from detector.core.schema import EXTENDED_FLAG, format_id, make_frames
from detector.features.baseline import learn_baseline
from detector.features.columns import POOLED_ID, F, Rows
from detector.features.windowing import GUARANTEED_NOVEL_IDS, WindowState
from detector.incidents.tracker import observations
from detector.model.pipeline import Scorer, reserve_per_vehicle
from detector.model.store import load_latest
from replay.simulator import simulate_vehicle

W = 1.0
T0 = 1.7e9 + 100
FLEET = load_fleet()


@pytest.fixture(scope="module")
def baseline():
    train = np.concatenate([simulate_vehicle("cusw", 40.0, 1.7e9, seed) for seed in (1, 2)])
    owner = np.repeat([0, 1], len(train) // 2 + 1)[: len(train)]
    return learn_baseline(train, owner, W)


@pytest.fixture(scope="module")
def model(cusw_models):
    return load_latest(cusw_models)["cusw"]


def fuzz(start: float, seconds: float, rate: float, seed: int = 0, extended: bool = True):
    """Random ids (29-bit extended, or 11-bit) with random payloads at ``rate`` frames/s."""
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    ts = np.sort(start + rng.uniform(0, seconds, n))
    ids = rng.integers(0, 2**29 if extended else 0x800, n).astype(np.uint32)
    if extended:
        ids |= np.uint32(EXTENDED_FLAG)
    return make_frames(ts, ids, rng.integers(0, 256, (n, 8)).astype(np.uint8))


def merged(*parts: np.ndarray) -> np.ndarray:
    f = np.concatenate(parts)
    return f[np.argsort(f["ts"], kind="stable")]


def batches(frames: np.ndarray, step_s: float) -> list[np.ndarray]:
    edges = np.searchsorted(
        frames["ts"], np.arange(frames["ts"][0], frames["ts"][-1] + step_s, step_s)
    )
    return [
        frames[a:b]
        for a, b in zip(edges[:-1], np.r_[edges[1:-1], len(frames)], strict=True)
        if b > a
    ]


def push_all(
    state: WindowState, frames: np.ndarray, bl, step_s: float, **kw
) -> tuple[Rows, list[int]]:
    rows, sizes = [], []
    for b in batches(frames, step_s):
        rows.append(state.push(b, np.zeros(len(b), np.int64), bl, **kw))
        sizes.append(len(state.streams))
    return Rows.concat(rows), sizes


# -- one vehicle fuzzing: state per vehicle ------------------------------------------------


def test_a_fuzzers_ids_hold_streams_for_one_window_only(baseline) -> None:
    """4,000 random 29-bit ids a second for 30 s: the table never holds more than the
    learned ids + max_novel_ids + the pooled row, and after the attack only the learned
    ones; the columns stop growing after the first window (no copy per batch)."""
    normal = simulate_vehicle("cusw", 40.0, T0, 3)
    frames = merged(normal, fuzz(T0 + 5, 30, 4000))
    state = WindowState(W, max_novel_ids=256)
    walked: list[int] = []  # rows of a vehicle's list looked at, per push
    vehicle_rows = state.streams.vehicle_rows

    def counted(vehicles):
        rows, which = vehicle_rows(vehicles)
        walked[-1] += len(rows)
        return rows, which

    state.streams.vehicle_rows = counted
    capacity, sizes = [], []
    for b in batches(frames, 0.1):
        walked.append(0)
        state.push(b, np.zeros(len(b), np.int64), baseline)
        sizes.append(len(state.streams))
        capacity.append(state.streams.capacity)
    n_ids = len(baseline.ids)
    assert max(sizes) <= n_ids + 256 + 1
    assert state.streams.high_water <= n_ids + 256 + 1  # mid-push too
    assert max(sizes) > n_ids + 200  # the fuzzer did get streams of its own
    assert sizes[-1] <= n_ids  # back to the learned ids once it stopped
    assert len(set(capacity[len(capacity) // 5 :])) == 1  # no growth after the first seconds
    # a vehicle's streams are walked once a window (when it moves on), not once a batch:
    # those of the window it closes, and those the batch opened in the next
    assert len(walked) == 400 and sum(w > 0 for w in walked) <= 41
    assert max(walked) <= n_ids + 2 * (256 + 1)


def test_a_backlog_of_fuzzing_in_one_push_holds_one_windows_unseen_ids_at_a_time(
    baseline,
) -> None:
    """A consumer catching up takes 16 s of fuzzing (4,000 random ids a second) in one
    push, or in pushes that each cross window boundaries. The table never holds, even
    mid-push, more than the learned ids + max_novel_ids + the pooled row (one window's
    unseen ids), and the rows and pooled frames are those of pushes of 0.1 s."""
    frames = merged(simulate_vehicle("cusw", 30.0, T0, 7), fuzz(T0 + 8, 16, 4000, seed=4))
    n_ids = len(baseline.ids)
    results = []
    for step in (100.0, 2.5, 0.1):
        state = WindowState(W, max_novel_ids=256)
        rows, pooled = [], 0
        for b in batches(frames, step):
            rows.append(state.push(b, np.zeros(len(b), np.int64), baseline))
            pooled += len(state.last_pooled.get("novel_id_limit", ()))
        assert n_ids + 200 < state.streams.high_water <= n_ids + 256 + 1, step
        got = Rows.concat(rows)
        o = np.lexsort((got.can_id, got.window))
        results.append((got.window[o], got.can_id[o], got.count[o], got.X[o], pooled))
    assert results[0][4] >= 15 * (4000 - 256 - 500)  # most of the fuzzer's frames pooled
    for got in results[1:]:
        for a, b in zip(results[0], got, strict=True):
            np.testing.assert_array_equal(a, b)


def test_a_window_by_window_push_takes_a_new_vehicle_numbered_past_the_table(baseline) -> None:
    """A push cut into windows (vehicle 0's unseen ids pass max_novel_ids across two
    windows) beside a vehicle never seen, whose number lies past the stream table's
    vehicles: it gets its streams, and vehicle 0's rows are those of a push alone."""

    def unseen(t0: float, n: int, first_id: int) -> np.ndarray:
        ids = (first_id + np.arange(n)).astype(np.uint32) | np.uint32(EXTENDED_FLAG)
        return make_frames(t0 + np.arange(n) * 0.001, ids, np.zeros((n, 8), np.uint8))

    first, later = unseen(T0 + 0.1, 5, 1000), unseen(T0 + 1.1, 5, 2000)
    newcomer = unseen(T0 + 1.2, 1, 3000)
    state = WindowState(W, max_novel_ids=8)
    state.push(first, np.zeros(5, np.int64), baseline)
    rows = state.push(np.concatenate([later, newcomer]), np.r_[np.zeros(5), 100], baseline)
    alone = WindowState(W, max_novel_ids=8)
    alone.push(first, np.zeros(5, np.int64), baseline)
    want = alone.push(later, np.zeros(5, np.int64), baseline)
    assert sorted(rows.can_id[rows.vehicle == 0].tolist()) == sorted(want.can_id.tolist())
    assert state.n_novel[0] == 5 and state.n_novel[100] == 1
    assert len(state.streams) == 5 + 1


def test_pooling_past_max_novel_ids_is_the_same_however_the_stream_is_cut(baseline) -> None:
    """Unseen ids get their own row in the order of their first frame: the rows (own
    and pooled) do not depend on where batches begin and end."""
    frames = merged(simulate_vehicle("cusw", 12.0, T0, 4), fuzz(T0 + 3, 6, 500, seed=1))
    results = []
    for step in (0.05, 0.37, 2.0):
        rows, _ = push_all(WindowState(W, max_novel_ids=16), frames, baseline, step)
        o = np.lexsort((rows.can_id, rows.window))
        results.append((rows.window[o], rows.can_id[o], rows.count[o], rows.X[o]))
    for got in results[1:]:
        for a, b in zip(results[0], got, strict=True):
            np.testing.assert_array_equal(a, b)
    window, can_id, count, X = results[0]
    pooled = can_id == POOLED_ID
    assert pooled.any()
    for w in np.unique(window[pooled]):  # 16 own rows of unseen ids, the rest pooled
        own = (window == w) & (X[:, F["novel_id"]] > 0) & ~pooled
        assert own.sum() == 16
    # the pooled row is an unseen id to the features: its count is its frames'
    np.testing.assert_array_equal(X[pooled, F["novel_id"]], count[pooled])


def test_below_the_limits_the_rows_are_those_of_unlimited_state(baseline) -> None:
    frames = merged(
        simulate_vehicle("cusw", 12.0, T0, 5), fuzz(T0 + 3, 6, 1000, seed=2, extended=False)
    )
    limited, _ = push_all(WindowState(W), frames, baseline, 0.1)
    unlimited, _ = push_all(WindowState(W, max_novel_ids=10**6), frames, baseline, 0.1)
    assert not (limited.can_id == POOLED_ID).any()
    np.testing.assert_array_equal(limited.can_id, unlimited.can_id)
    np.testing.assert_array_equal(limited.X, unlimited.X)


def test_without_budget_only_the_guaranteed_unseen_ids_get_rows(baseline) -> None:
    frames = merged(simulate_vehicle("cusw", 8.0, T0, 6), fuzz(T0 + 2, 4, 300, seed=3))
    rows, _ = push_all(WindowState(W), frames, baseline, 0.1, extra_budget=0)
    novel = (rows.X[:, F["novel_id"]] > 0) & (rows.can_id != POOLED_ID)
    per_window = np.bincount(rows.window[novel] - rows.window.min())
    assert per_window.max() == GUARANTEED_NOVEL_IDS
    assert (rows.can_id == POOLED_ID).any()


# -- the scorer: evidence, and the limits per instance --------------------------------------


def test_a_fuzzer_past_the_limit_is_still_fuzzing_with_ids_named(model) -> None:
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig(max_novel_ids=64))
    frames = merged(simulate_vehicle("cusw", 12.0, T0, 7), fuzz(T0 + 4, 5, 4000, seed=4))
    obs = []
    for b in batches(frames, 0.1):
        for sc in scorer.push([("veh-fuzz", "jeep", b)]):
            obs += observations(sc, W)
    attack = [o for o in obs if T0 + 5 <= o.window_start < T0 + 9]
    assert len(attack) == 4 and {o.kind for o in attack} == {"fuzzing"}
    for o in attack:  # example ids named: extended ones, never the pooled row
        assert o.can_ids and all(c.startswith("0x") for c in o.can_ids)
        assert any(c.endswith("x") for c in o.can_ids)
        pooled = [e for e in o.evidence if e["feature"] == "novel_id" and e["can_id"] is None]
        assert pooled and "further unseen ids" in pooled[0]["text"]
        assert any(c in pooled[0]["text"] for c in o.can_ids if c.endswith("x"))
    shed = scorer.take_shed()
    assert shed.frames["jeep", "novel_id_limit"] > 3 * 4000
    assert not shed.evicted and not shed.refused


def test_a_flood_of_one_unseen_id_keeps_its_own_row_when_the_instance_is_full(model) -> None:
    """No stream left beyond the reservations: a dos with 0x000 is still a row of its own."""
    reserve = reserve_per_vehicle(len(model.baseline.ids))
    others = [(f"veh-{i}", "jeep", simulate_vehicle("cusw", 12.0, T0, 20 + i)) for i in range(3)]
    limit = (len(others) + 1) * reserve + 2  # room for no more than 2 extra rows
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig(max_streams=limit))
    victim = simulate_vehicle("cusw", 12.0, T0, 8)
    ts = np.arange(T0 + 4, T0 + 8, 1 / 3000)
    dos = make_frames(ts, np.zeros(len(ts), np.uint32), np.zeros((len(ts), 8), np.uint8))
    noise = fuzz(T0 + 4, 4, 100, seed=9, extended=False)  # other vehicles' stray unseen ids
    others[0] = (others[0][0], "jeep", merged(others[0][2], noise))
    obs = []
    for b in batches(merged(victim, dos), 0.25):
        lo, hi = b["ts"][0], b["ts"][-1]
        items = [(v, br, f[(f["ts"] >= lo) & (f["ts"] <= hi)]) for v, br, f in others]
        for sc in scorer.push([("victim", "jeep", b), *[i for i in items if len(i[2])]]):
            obs += [o for o in observations(sc, W) if o.vehicle == "victim"]
        assert scorer.n_streams <= limit
    assert obs and {o.kind for o in obs} == {"dos"}
    assert all("0x000" in o.can_ids for o in obs)


def established_fleet(
    scorer: Scorer, n: int, seconds: float = 4.0
) -> list[tuple[str, str, np.ndarray]]:
    """``n`` vehicles that each had windows scored (pushed ``seconds`` of traffic)."""
    fleet = [(f"veh-{i}", "jeep", simulate_vehicle("cusw", 30.0, T0, 40 + i)) for i in range(n)]
    for lo in np.arange(T0, T0 + seconds, 0.5):
        scorer.push([(v, b, f[(f["ts"] >= lo) & (f["ts"] < lo + 0.5)]) for v, b, f in fleet])
    return fleet


def key_flood(start: int, n: int, ts: float) -> list[tuple[str, str, np.ndarray]]:
    """``n`` new vehicle keys, one frame each."""
    one = make_frames(np.array([ts]), np.array([0x1E4], np.uint32), np.zeros((1, 8)))
    return [(f"flood-{start + i}", "jeep", one) for i in range(n)]


def test_a_key_flood_retires_only_vehicles_never_scored(model) -> None:
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig(max_vehicles=50))
    fleet = established_fleet(scorer, 5)
    evicted, refused = set(), set()
    for k, lo in enumerate(np.arange(T0 + 4, T0 + 14, 0.5)):
        live = [(v, b, f[(f["ts"] >= lo) & (f["ts"] < lo + 0.5)]) for v, b, f in fleet]
        scorer.push(live + key_flood(100 * k, 100, lo + 0.25))
        shed = scorer.take_shed()
        evicted |= shed.evicted
        refused |= shed.refused
        assert scorer.n_vehicles <= 50
        assert {v for v, _, _ in fleet} <= set(scorer.state["cusw"].index)  # the fleet stays
    assert evicted and all(v.startswith("flood-") for v in evicted)
    assert all(v.startswith("flood-") for v in refused)


def test_when_every_vehicle_held_was_scored_new_ones_are_refused(model) -> None:
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig(max_vehicles=5))
    fleet = established_fleet(scorer, 5)
    scorer.take_shed()
    scorer.push(key_flood(0, 30, T0 + 4.2))
    shed = scorer.take_shed()
    assert shed.refused == {f"flood-{i}" for i in range(30)} and not shed.evicted
    assert shed.frames["jeep", "vehicle_limit"] == 30
    assert set(scorer.state["cusw"].index) == {v for v, _, _ in fleet}
    # one vehicle retires (idle): a new one takes its place
    scorer.forget({"veh-0"})
    scorer.push(key_flood(100, 3, T0 + 4.4))
    assert scorer.take_shed().refused == {"flood-101", "flood-102"}
    assert "flood-100" in scorer.state["cusw"].index


@pytest.mark.parametrize("shadowed", [False, True], ids=["serving", "with-a-shadow"])
def test_max_streams_bounds_every_vehicle_and_stream_held(model, shadowed) -> None:
    """A shadow's window state holds streams of its own on the same vehicles: they
    count against the same limit (each vehicle reserves the shadow's ids too). New keys
    that need its room take it: the shadow steps aside (live vehicles come first), and
    the limit holds either way."""
    reserve = reserve_per_vehicle(len(model.baseline.ids)) * (2 if shadowed else 1)
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig(max_streams=reserve * 8 + 200))
    if shadowed:
        scorer.set_shadow("cusw", model)
    fleet = established_fleet(scorer, 4)
    st = scorer.state["cusw"]
    assert st.reserve == reserve
    for k, lo in enumerate(np.arange(T0 + 4, T0 + 10, 0.5)):
        live = [(v, b, f[(f["ts"] >= lo) & (f["ts"] < lo + 0.5)]) for v, b, f in fleet]
        attack = ("veh-0", "jeep", fuzz(lo, 0.5, 4000, seed=k))
        scorer.push([*live, attack, *key_flood(10 * k, 10, lo + 0.25)])
        held = len(st.window.streams) + (len(st.shadow.window.streams) if st.shadow else 0)
        assert held == scorer.n_streams <= reserve * 8 + 200
        assert scorer.reserved_streams <= reserve * 8 + 200
        assert scorer.n_vehicles <= (reserve * 8 + 200) // st.reserve
    assert not shadowed or scorer.take_shadow(), "the shadow scored beside the serving model"
    assert list(scorer.take_suspended()) == (["cusw"] if shadowed else [])
    shed = scorer.take_shed()
    assert shed.frames["jeep", "stream_limit"] > 0 and shed.vehicles["jeep", "stream_limit"] > 0


def test_limits_are_validated() -> None:
    assert load_config(None, env={}).limits == LimitsConfig()
    for key, bad in (("max_vehicles", 0), ("max_streams", 10), ("max_novel_ids", 4)):
        with pytest.raises(ConfigError, match=f"limits.{key} must be"):
            load_config(None, env={}, overrides={f"limits.{key}": bad})
    cfg = load_config(None, env={"CANWATCH_LIMITS_MAX_VEHICLES": "123"})
    assert cfg.limits.max_vehicles == 123


def test_pooled_row_is_no_id_in_the_evidence() -> None:
    from detector.incidents.evidence import id_text

    assert id_text(POOLED_ID) == "further unseen ids"
    assert id_text(0x1E4) == format_id(0x1E4) == "0x1E4"


def test_a_shadow_that_would_pass_max_streams_waits_for_room(model, tmp_path) -> None:
    """Installing a shadow while vehicles are held adds its reservation to each of
    them: when that would pass max_streams the shadow waits, and comes in once the
    vehicles held leave room."""
    from prometheus_client import CollectorRegistry

    from detector.core.config import IncidentConfig
    from detector.service.metrics import DetectorMetrics
    from detector.service.shadow import ShadowScoring

    limit = reserve_per_vehicle(len(model.baseline.ids)) * 7
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig(max_streams=limit))
    fleet = established_fleet(scorer, 4)  # 4 reservations; 8 with a shadow
    registry = CollectorRegistry()
    metrics = DetectorMetrics(registry)
    shadows = ShadowScoring(scorer, FLEET, W, IncidentConfig(), "d", metrics, str(tmp_path))
    shadow = dataclasses.replace(model, version=3)

    def versions() -> dict[str, float]:  # role -> canwatch_model_version of jeep
        return {
            s.labels["role"]: s.value
            for m in registry.collect() if m.name == "canwatch_model_version"
            for s in m.samples if s.labels["brand"] == "jeep"
        }  # fmt: skip

    shadows.install("cusw", shadow)
    assert "cusw" not in scorer.shadows and shadows.pending == {"cusw": shadow}
    assert scorer.reserved_streams <= limit
    assert versions() == {"waiting": 3}, "the board shows the shadow waiting"
    shadows.observe([], [])
    assert "cusw" not in scorer.shadows, "still no room"
    scorer.forget({"veh-0", "veh-1"})  # two vehicles leave: 2 x 2 reservations fit
    shadows.observe([], [])
    assert scorer.shadows == {"cusw": shadow} and not shadows.pending
    assert versions() == {"shadow": 3}
    for lo in np.arange(T0 + 4, T0 + 8, 0.5):
        scorer.push([(v, b, f[(f["ts"] >= lo) & (f["ts"] < lo + 0.5)]) for v, b, f in fleet[2:]])
        assert scorer.n_streams <= limit and scorer.reserved_streams <= limit
    assert scorer.take_shadow(), "the shadow scores beside the serving model"


def test_live_vehicles_arriving_beside_a_shadow_are_admitted_and_the_shadow_steps_aside(
    model, tmp_path
) -> None:
    """A shadow installed while the room allowed it made every vehicle admitted after it
    reserve its streams too: near max_streams live vehicles were refused (no scoring, no
    incident) to keep room for a model whose output is never published."""
    from prometheus_client import CollectorRegistry

    from detector.core.config import IncidentConfig
    from detector.service.metrics import DetectorMetrics
    from detector.service.shadow import ShadowScoring

    limit = reserve_per_vehicle(len(model.baseline.ids)) * 7
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig(max_streams=limit))
    fleet = established_fleet(scorer, 2)  # 2 reservations; 4 with a shadow
    shadows = ShadowScoring(
        scorer, FLEET, W, IncidentConfig(), "d", DetectorMetrics(CollectorRegistry()),
        str(tmp_path),
    )  # fmt: skip
    shadow = dataclasses.replace(model, version=3)
    shadows.install("cusw", shadow)
    assert scorer.shadows == {"cusw": shadow}
    more = established_fleet(scorer, 6)[2:]  # 4 more vehicles: 6 held, 12 with the shadow
    assert scorer.n_vehicles == 6 and not scorer.take_shed().refused
    assert scorer.reserved_streams <= limit
    shadows.observe([], [])
    assert "cusw" not in scorer.shadows and shadows.pending == {"cusw": shadow}
    scorer.forget({v for v, _, _ in fleet + more[:1]})  # 3 vehicles left: room again
    shadows.observe([], [])
    assert scorer.shadows == {"cusw": shadow} and not shadows.pending


def test_a_telemetry_gap_is_counted_per_brand(model) -> None:
    """The scorer counts each vehicle's telemetry gap under its brand (the service's
    canwatch_telemetry_gaps_total): windows left unscored are never silent."""
    frames = simulate_vehicle("cusw", 30.0, T0, 11)
    t = frames["ts"] - T0
    frames = frames[(t < 10.0) | (t >= 14.0)]
    scorer = Scorer({"cusw": model}, FLEET, W, LimitsConfig())
    scorer.push([("veh-1", "jeep", frames[:5000]), ("veh-2", "fiat", frames[:5000])])
    scorer.push([("veh-1", "jeep", frames[5000:])])
    assert dict(scorer.gaps_by_brand) == {"jeep": 1}


def test_a_vehicle_whose_clock_is_set_back_is_scored_again_and_its_incident_closes(model):
    """A vehicle's clock set back 2 h mid-attack (an RTC reset, a GNSS time fix): every
    frame was older than its closed windows and dropped, so it was blind, and its
    incident open, until its clock caught up 2 h later."""
    from detector.core.config import IncidentConfig
    from detector.incidents.tracker import IncidentTracker
    from detector.model.pipeline import CLOCK_RESET_S, vehicle_clock, window_scores
    from replay.attacks import AttackSpec, inject

    frames = simulate_vehicle("cusw", 120.0, T0, 7)
    frames, _ = inject(frames, AttackSpec.parse("dos:start=20,duration=10"), seed=7)
    frames["ts"][frames["ts"] >= T0 + 25] -= 7200.0  # arrival order unchanged
    scorer = Scorer({"cusw": model}, FLEET, W)
    tracker = IncidentTracker(IncidentConfig(), "d")
    events, starts = [], []
    for b in np.array_split(frames, 120):  # 1 s records, each sorted as decode sorts it
        for sc in scorer.push([("veh-0", "jeep", np.sort(b, order="ts"))]):
            v, w, _ = window_scores(sc)
            starts += (w * W).tolist()
            events += tracker.observe(observations(sc, W), vehicle_clock(sc, v, w, W))
    assert scorer.clock_resets_by_brand == {"jeep": 1}
    assert [e["status"] for e in events][0] == "open" and events[-1]["status"] == "closed"
    assert not tracker.open
    scored_after = [s for s in starts if s < T0]  # windows of the clock set back
    assert len(scored_after) >= 120 - 25 - CLOCK_RESET_S - 5
    assert scorer.late_frames < len(frames) * (CLOCK_RESET_S + 5) / 120


def test_a_backlog_sent_after_live_data_is_no_clock_reset(model):
    """A gateway back online sends live records, then its 40 s backlog in one burst: late
    frames, dropped as before, not a clock set back (which closed the incident under way
    and opened another for the same attack)."""
    from detector.core.config import IncidentConfig
    from detector.incidents.tracker import IncidentTracker
    from detector.model.pipeline import vehicle_clock, window_scores
    from replay.attacks import AttackSpec, inject

    frames = simulate_vehicle("cusw", 200.0, T0, 7)
    frames, _ = inject(frames, AttackSpec.parse("dos:start=100,duration=80"), seed=7)
    t = frames["ts"] - T0
    second = [frames[(t >= k) & (t < k + 1)] for k in range(200)]
    scorer = Scorer({"cusw": model}, FLEET, W)
    tracker = IncidentTracker(IncidentConfig(), "d")
    events = []
    pushes = [[k] for k in range(80, 160)] + [[160, *range(40, 80)]]
    pushes += [[k] for k in range(161, 180)]
    for ks in pushes:
        for sc in scorer.push([("veh-0", "jeep", second[k]) for k in ks]):
            v, w, _ = window_scores(sc)
            events += tracker.observe(observations(sc, W), vehicle_clock(sc, v, w, W))
    assert not scorer.clock_resets_by_brand
    assert [e["status"] for e in events if e["status"] != "update"] == ["open"]


def test_new_vehicles_of_two_platforms_past_max_vehicles_in_one_push_are_shed_not_a_crash(
    cusw_models,
) -> None:
    """The first platform's new vehicle was admitted, not yet pushed; the second's search
    for vehicles to retire looked it up in window arrays not grown yet (IndexError: a first
    poll holding more new vehicles than max_vehicles over two platforms stopped the
    detector). Found by fuzzing the scorer."""
    import dataclasses as dc

    cusw = load_latest(cusw_models)["cusw"]
    other = dc.replace(cusw, platform="pacifica")  # a second platform's model
    scorer = Scorer({"cusw": cusw, "pacifica": other}, FLEET, W, LimitsConfig(max_vehicles=1))
    a = simulate_vehicle("cusw", 1.0, T0, 1)[:1]
    b = simulate_vehicle("cusw", 1.0, T0, 2)[:1]
    scorer.push([("a", "jeep", a), ("b", "chrysler", b)])
    assert scorer.n_vehicles == 1 and scorer.take_shed().refused == {"b"}
