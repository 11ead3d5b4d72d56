"""Model drift (detector.service.drift): the figures exactly as defined on hand-built
scored rows, the period rolling, a model swap starting afresh, the gauges; and a real
model showing low drift on benign vehicles it never saw, full drift on traffic that
moved (another platform's, a firmware that doubles rates or drops an id)."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from sklearn.ensemble import IsolationForest

from detector.core.brands import load_fleet
from detector.core.config import ModelsConfig
from detector.core.schema import make_frames
from detector.features.baseline import learn_baseline
from detector.features.columns import N_FEATURES, F, Rows
from detector.model.pipeline import ScoredRows, Scorer
from detector.model.platform import N_EVIDENCE, PlatformModel
from detector.model.store import latest_model
from detector.service.drift import MAX_LOG2_RATE, DriftMeter
from detector.service.metrics import DetectorMetrics
from replay.simulator import simulate_vehicle

W = 1.0
FAST, SLOW, UNSEEN = 0x100, 0x200, 0x7FF  # learned at 100 and 10 frames per window


@pytest.fixture(scope="module")
def tiny() -> PlatformModel:
    """A platform "p" model whose baseline learned FAST and SLOW; what the drift meter
    reads of a model is its version and its learned ids (the rest never scores here)."""
    ts = np.r_[np.arange(0, 20, 0.01), np.arange(0.005, 20, 0.1)]
    ids = np.r_[np.full(2000, FAST), np.full(200, SLOW)]
    order = np.argsort(ts)
    frames = make_frames(ts[order], ids[order], np.zeros((len(ts), 8), np.uint8))
    bl = learn_baseline(frames, np.zeros(len(frames), np.int64), W)
    assert list(bl.ids) == [FAST, SLOW]
    k = len(bl.ids) + 1
    return PlatformModel(
        "p", bl, IsolationForest(), np.zeros((k, N_FEATURES)), np.ones((k, N_FEATURES)),
        np.ones((k, N_FEATURES)), 0.0, np.ones(N_EVIDENCE), np.zeros((k, N_EVIDENCE)), version=1,
    )  # fmt: skip


def scored(
    model: PlatformModel,
    rows: list[tuple[int, int, int, float, bool]],
    brands: tuple[str, ...] = ("jeep", "fiat"),
) -> ScoredRows:
    """Scored rows of ``model`` from (vehicle, window, can_id, rate, outside) tuples."""
    vehicle, window, can_id, rate, outside = (np.array(c) for c in zip(*rows, strict=True))
    X = np.zeros((len(rows), N_FEATURES))
    X[:, F["rate"]] = rate
    r = Rows(
        vehicle.astype(np.int64), window.astype(np.int64), can_id.astype(np.uint32),
        np.ones(len(rows), np.int64), np.zeros(len(rows), np.int8), X,
    )  # fmt: skip
    n = len(rows)
    return ScoredRows(
        model.platform, model.version, r, np.zeros(n), np.zeros((n, N_EVIDENCE)),
        [f"veh-{i}" for i in range(len(brands))], list(brands), np.zeros(n), outside.astype(bool),
    )  # fmt: skip


def meter(model: PlatformModel, period_s: float = 600.0) -> tuple[DriftMeter, DetectorMetrics]:
    metrics = DetectorMetrics(CollectorRegistry())
    cfg = ModelsConfig(drift_period_s=period_s, drift_alert_ratio=0.4)
    return DriftMeter(cfg, {model.platform: model}, metrics.drift), metrics


def gauge(metrics: DetectorMetrics, name: str, **labels: str) -> float | None:
    return metrics.registry.get_sample_value(name, labels)


def test_ratio_and_rate_drift_as_defined_per_brand(tiny: PlatformModel) -> None:
    m, metrics = meter(tiny)
    batch = scored(
        tiny,
        [
            # jeep (vehicle 0): window 10 has an outside row, window 11 none
            (0, 10, FAST, 1.0, False),
            (0, 10, SLOW, 2.0, True),
            (0, 11, FAST, 1.0, False),
            (0, 11, SLOW, 2.0, False),
            (0, 11, UNSEEN, 5.0, False),  # not a learned id: no rate of its own
            # fiat (vehicle 1): FAST silent (an absent row, rate 0), SLOW at half rate
            (1, 10, FAST, 0.0, False),
            (1, 10, SLOW, 0.5, False),
        ],
    )
    m.observe([batch], now=0.0)
    # jeep: 1 of 2 windows outside; FAST at 2/2 = 1x (0), SLOW at 4/2 = 2x (1): median 0.5
    assert m.figures("jeep") == (2, 0.5, 0.5)
    # fiat: FAST at 0 counts as 2^-6 (capped), SLOW at 0.5x (1): median (6 + 1) / 2
    assert m.figures("fiat") == (1, 0.0, (MAX_LOG2_RATE + 1) / 2)
    assert gauge(metrics, "canwatch_model_drift_ratio", brand="jeep") == 0.5
    # the ratio's terms, which the alert sums over the instances
    assert gauge(metrics, "canwatch_model_drift_windows", brand="jeep") == 2
    assert gauge(metrics, "canwatch_model_drift_outside_windows", brand="jeep") == 1
    assert gauge(metrics, "canwatch_model_rate_drift", brand="jeep") == 0.5
    assert gauge(metrics, "canwatch_model_drift_ratio", brand="fiat") == 0.0
    assert gauge(metrics, "canwatch_model_rate_drift", brand="fiat") == 3.5
    assert gauge(metrics, "canwatch_model_drift_limit") == 0.4


def test_a_learned_id_is_averaged_over_all_the_brands_windows(tiny: PlatformModel) -> None:
    """A rare id (in one window of four) at its learned frames per window: no drift."""
    m, _ = meter(tiny)
    rows = [(0, w, FAST, 1.0, False) for w in range(4)] + [(0, 2, SLOW, 4.0, False)]
    m.observe([scored(tiny, rows)], now=0.0)
    assert m.figures("jeep") == (4, 0.0, 0.0)


def test_period_rolls_and_an_idle_brand_loses_its_series(tiny: PlatformModel) -> None:
    m, metrics = meter(tiny, period_s=100.0)  # slices of 10 s
    m.observe([scored(tiny, [(0, 1, FAST, 1.0, True)])], now=0.0)
    m.observe([scored(tiny, [(0, 2, FAST, 1.0, True)])], now=5.0)  # same slice as t=0
    m.observe([scored(tiny, [(0, 3, FAST, 1.0, False), (0, 4, FAST, 1.0, False)])], now=50.0)
    assert m.figures("jeep") == (4, 0.5, 0.0)
    m.observe([], now=99.0)
    assert m.figures("jeep") == (4, 0.5, 0.0)
    m.observe([], now=100.0)  # the first slice (t=0 and t=5) is a period old: dropped whole
    assert m.figures("jeep") == (2, 0.0, 0.0)
    assert gauge(metrics, "canwatch_model_drift_ratio", brand="jeep") == 0.0
    m.observe([], now=150.0)  # nothing scored for a period: no figure, no series
    assert m.figures("jeep") is None
    for name in ("ratio", "windows", "outside_windows"):
        assert gauge(metrics, f"canwatch_model_drift_{name}", brand="jeep") is None
    assert gauge(metrics, "canwatch_model_rate_drift", brand="jeep") is None


def test_a_model_swap_starts_its_brands_afresh(tiny: PlatformModel) -> None:
    models = {"p": tiny}
    metrics = DetectorMetrics(CollectorRegistry())
    m = DriftMeter(ModelsConfig(), models, metrics.drift)
    m.observe([scored(tiny, [(0, 1, FAST, 3.0, True), (1, 1, FAST, 3.0, True)])], now=0.0)
    assert m.figures("jeep") == (1, 1.0, pytest.approx(np.log2(3)))
    v2 = models["p"] = dataclasses.replace(tiny, version=2)  # what Scorer.set_model does
    m.observe([scored(v2, [(0, 2, FAST, 1.0, False)])], now=1.0)
    assert m.figures("jeep") == (1, 0.0, 0.0)  # v1's outside window is gone
    assert gauge(metrics, "canwatch_model_drift_ratio", brand="jeep") == 0.0
    # fiat, of the same platform, had nothing scored by v2 yet: no figure of v1's left
    assert m.figures("fiat") is None
    assert gauge(metrics, "canwatch_model_drift_ratio", brand="fiat") is None
    m.observe([scored(v2, [(1, 2, FAST, 1.0, False)])], now=2.0)
    assert m.figures("fiat") == (1, 0.0, 0.0)
    m.observe([scored(tiny, [(0, 3, FAST, 1.0, True)])], now=3.0)  # not the serving model's
    assert m.figures("jeep") == (1, 0.0, 0.0)


def test_rows_of_unseen_ids_only_give_a_ratio_and_no_rate_drift(tiny: PlatformModel) -> None:
    m, metrics = meter(tiny)
    m.observe([scored(tiny, [(0, 1, UNSEEN, 9.0, True)])], now=0.0)
    assert m.figures("jeep")[:2] == (1, 1.0)
    assert gauge(metrics, "canwatch_model_drift_ratio", brand="jeep") == 1.0
    assert gauge(metrics, "canwatch_model_rate_drift", brand="jeep") is None


# -- a real model on new benign vehicles and on traffic that drifted ---------------


def doubled(frames: np.ndarray, can_id: int) -> np.ndarray:
    """A firmware sending ``can_id`` twice: each frame again 3 ms later."""
    again = frames[frames["can_id"] == can_id].copy()
    again["ts"] += 0.003
    out = np.concatenate([frames, again])
    return out[np.argsort(out["ts"], kind="stable")]


def drift_of(model: PlatformModel, streams: list[tuple[str, np.ndarray]]) -> tuple[float, float]:
    """(drift ratio, rate drift) of jeep vehicles ``streams`` scored by ``model``."""
    scorer = Scorer({model.platform: model}, load_fleet(), W)
    m = DriftMeter(ModelsConfig(), scorer.models)
    m.observe(scorer.push([(name, "jeep", frames) for name, frames in streams]), now=0.0)
    _, ratio, rate = m.figures("jeep")
    return ratio, rate


def test_benign_new_vehicles_stay_low_and_drifted_traffic_is_high(cusw_models: Path) -> None:
    model = latest_model(cusw_models, "cusw")  # trained on seeds 100..109
    limit = ModelsConfig().drift_alert_ratio
    benign = [(f"new-{s}", simulate_vehicle("cusw", 40, 1.7e9, seed=s)) for s in (3000, 3001, 3002)]
    ratio, rate = drift_of(model, benign)
    assert ratio < 0.05 < limit and rate == 0.0
    expected = model.baseline.ids[model.baseline.expected]
    every_id_doubled = [(n, functools.reduce(doubled, expected, f)) for n, f in benign]
    one_id_doubled = [(n, doubled(f, expected[0])) for n, f in benign]
    one_id_gone = [(n, f[f["can_id"] != expected[0]]) for n, f in benign]
    other_platform = [(f"psa-{s}", simulate_vehicle("aee2010", 20, 1.7e9, seed=s)) for s in (1, 2)]
    drifted = {
        "every id doubled": (every_id_doubled, 1.0),
        "one id doubled": (one_id_doubled, 0.0),
        "one id gone": (one_id_gone, 0.0),
        "another platform's traffic": (other_platform, MAX_LOG2_RATE),
    }
    for what, (streams, rate_drift) in drifted.items():
        ratio, rate = drift_of(model, streams)
        assert ratio > 0.95 > limit, what
        assert rate == pytest.approx(rate_drift, abs=0.05), what


def test_a_running_detector_drops_an_idle_brands_figure(broker, unique_topic, cusw_models) -> None:
    """Drift is aged out on idle polls too: a brand that stops sending loses its series
    within a period, though no poll brings rows again."""
    import time

    from test_detect_service import running, service_config, wait_for

    from detector.cli import main
    from detector.service.detector import Detector

    cfg = service_config(broker, unique_topic, cusw_models, 1, **{"models.drift_period_s": 10.0})
    metrics = DetectorMetrics(CollectorRegistry())
    simulate = ["simulate", "--to-kafka", "--max-speed", "--brands", "jeep", "--vehicles", "2"]
    simulate += ["--duration", "8", "--seed", "5", "--bootstrap", broker.bootstrap]

    def ratio() -> float | None:
        return metrics.registry.get_sample_value("canwatch_model_drift_ratio", {"brand": "jeep"})

    with running(Detector(cfg, load_fleet(), metrics, "det-drift")):
        assert main([*simulate, "--topic", cfg.kafka.telemetry_topic]) == 0
        wait_for("jeep's drift figure", lambda: ratio() is not None)
        t0 = time.monotonic()  # the fleet has stopped: only idle polls from here
        wait_for("jeep's drift figure gone after a quiet period", lambda: ratio() is None)
        assert time.monotonic() - t0 < 10.0 + 10.0
