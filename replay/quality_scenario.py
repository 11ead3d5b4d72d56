"""The simulator detection-quality scenario, one definition for its test and its bench.

Per platform, a model trained on ``TRAIN_VEHICLES`` x ``TRAIN_S`` s of benign
traffic; then, for each attack family, a fresh vehicle (a seed never used in
training) of ``TEST_S`` s with the attack injected at ``ATTACK_START`` for
``ATTACK_S`` s. tests/test_detection_quality.py holds the thresholds it must
meet; bench/quality.py prints the same figures as a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.evaluate import Span
from replay.attacks import INJECTABLE, AttackSpan, AttackSpec, inject
from replay.simulator import simulate_vehicle

#: one brand of each platform, the brand the attacked vehicle reports
PLATFORM_BRANDS = {
    "cusw": "jeep",
    "aee2010": "peugeot",
    "giorgio": "alfa-romeo",
    "pacifica": "chrysler",
    "omega": "opel",
}
FAMILIES = INJECTABLE
TRAIN_VEHICLES, TRAIN_S = 10, 120.0
TEST_S, ATTACK_START, ATTACK_S = 40.0, 15.0, 8.0
START_TS = 1.7e9


def training_recordings(platform: str) -> list[np.ndarray]:
    """The benign drives a platform's model is trained on."""
    return [
        simulate_vehicle(platform, TRAIN_S, START_TS, seed=100 + i) for i in range(TRAIN_VEHICLES)
    ]


@dataclass
class AttackedVehicle:
    name: str
    brand: str
    frames: np.ndarray
    span: AttackSpan  # what was injected, and where
    truth: list[Span]  # extra ground truth: a suspension removes frames and so labels none


def attacked_vehicle(platform: str, family: str) -> AttackedVehicle:
    seed = 900 + FAMILIES.index(family)
    frames = simulate_vehicle(platform, TEST_S, START_TS, seed=seed)
    spec = AttackSpec.parse(f"{family}:start={ATTACK_START},duration={ATTACK_S}")
    frames, span = inject(frames, spec, seed=seed)
    truth = [Span(family, span.start_ts, span.end_ts)] if family == "suspension" else []
    return AttackedVehicle(f"veh-{platform}-{seed}", PLATFORM_BRANDS[platform], frames, span, truth)
