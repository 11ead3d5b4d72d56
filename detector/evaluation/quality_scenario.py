"""The simulator detection-quality scenario, one definition for its test and its bench.

Per platform, a model is trained on ``TRAIN_VEHICLES`` vehicles, ``TRAIN_DRIVES``
drives each of ``TRAIN_S`` s, grouped by vehicle (so its calibration holds whole
vehicles out). Everything it is then judged on is new to it: for each attack
family, a vehicle never seen in training (``TEST_S`` s, the attack injected at
``ATTACK_START`` for ``ATTACK_S`` s), and for benign traffic, ``BENIGN_VEHICLES``
new vehicles plus a new drive of a trained vehicle. The simulator varies drives
like real ones (replay/simulator.py: styles, stops, settings per drive, slow
signals starting where the drive starts them), so a model that memorises its
training drives fails here. tests/test_detection_quality.py holds the thresholds;
bench/quality.py prints the same figures as a table.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.evaluation.evaluate import ALERT, Evaluation, Span, score_frames
from detector.model.training import train_platform
from replay.attacks import INJECTABLE, AttackSpan, AttackSpec, inject
from replay.simulator import simulate_drives, simulate_vehicle

#: one brand of each platform, the brand the attacked vehicle reports
PLATFORM_BRANDS = {
    "cusw": "jeep",
    "aee2010": "peugeot",
    "giorgio": "alfa-romeo",
    "pacifica": "chrysler",
    "omega": "opel",
    "stla": "ds",  # CAN FD
}
FAMILIES = INJECTABLE
TRAIN_VEHICLES, TRAIN_DRIVES, TRAIN_S = 5, 2, 90.0
TEST_S, ATTACK_START, ATTACK_S = 40.0, 15.0, 8.0
BENIGN_VEHICLES, BENIGN_S = 4, 60.0
START_TS = 1.7e9
TRAIN_SEED, ATTACK_SEED, BENIGN_SEED = 100, 900, 950


def training_recordings(platform: str) -> tuple[list[np.ndarray], list[int]]:
    """The benign drives a platform's model is trained on, and each one's vehicle."""
    return simulate_drives(platform, TRAIN_VEHICLES, TRAIN_DRIVES, TRAIN_S, START_TS, TRAIN_SEED)


def benign_drives(platform: str) -> list[tuple[str, np.ndarray]]:
    """Benign traffic the model never saw: new vehicles, and a new drive of a trained one."""
    out = [
        (f"veh-{BENIGN_SEED + i}", simulate_vehicle(platform, BENIGN_S, START_TS, BENIGN_SEED + i))
        for i in range(BENIGN_VEHICLES)
    ]
    new_drive = simulate_vehicle(platform, BENIGN_S, START_TS, TRAIN_SEED, drive=TRAIN_DRIVES)
    return [*out, (f"veh-{TRAIN_SEED}-drive-{TRAIN_DRIVES}", new_drive)]


@dataclass
class BenignFigures:
    """The benign drives of a platform scored by its model."""

    evaluations: list[Evaluation]
    windows: int
    flagged: int  # windows at or over the alert threshold
    incidents: int


def score_benign(platform: str, model, fleet, window_s: float, incidents) -> BenignFigures:
    """Score ``benign_drives(platform)`` with ``model`` (``incidents``: an IncidentConfig)."""
    evs = [
        score_frames(frames, PLATFORM_BRANDS[platform], name, model, fleet, window_s, incidents)
        for name, frames in benign_drives(platform)
    ]
    return BenignFigures(
        evs,
        sum(len(ev.score) for ev in evs),
        sum(int((ev.score >= ALERT).sum()) for ev in evs),
        sum(len(ev.incidents) for ev in evs),
    )


#: Long benign drives: a model trained as the dev ROAD captures allow (one vehicle,
#: LONG_TRAIN_DRIVES drives of LONG_TRAIN_S s), or as a single capture does (one drive
#: of ONE_DRIVE_S s, CrySyS's benign-48), judged on drives of LONG_MINUTES.
LONG_TRAIN_DRIVES, LONG_TRAIN_S, LONG_MINUTES = 3, 40.0, 10.0
ONE_DRIVE_S = 60.0
LONG_VEHICLE, LONG_OTHER_VEHICLE, LONG_START_TS = 100, 555, 1.8e9


@dataclass
class LongDriveFigures:
    platform: str
    windows: int
    flagged: int  # windows at or over the alert threshold
    incidents: int
    causes: dict[str, int]  # "feature id" of each incident's first evidence -> incidents
    severities: dict[str, int]  # severity -> incidents


def score_long_drives(
    platform: str,
    cfg,
    fleet,
    incidents,
    minutes: float = LONG_MINUTES,
    train_drives: int = LONG_TRAIN_DRIVES,
    train_s: float = LONG_TRAIN_S,
) -> LongDriveFigures:
    """Train ``platform`` on ``train_drives`` x ``train_s`` s of one vehicle and score
    drives of ``minutes`` it never saw: two new drives of that vehicle, one of another.
    States short drives never reach (a plateau, a mode switched off, a counter that
    wraps) show only on long ones. ``cfg``: a DetectionConfig, ``incidents`` an
    IncidentConfig."""
    training = [
        simulate_vehicle(platform, train_s, START_TS, seed=LONG_VEHICLE, drive=d)
        for d in range(train_drives)
    ]
    model, _ = train_platform(platform, training, cfg, drives=list(range(train_drives)))
    judged = ((LONG_VEHICLE, 7), (LONG_VEHICLE, 8), (LONG_OTHER_VEHICLE, 0))
    windows = flagged = n_incidents = 0
    causes: dict[str, int] = {}
    severities: dict[str, int] = {}
    for seed, drive in judged:
        frames = simulate_vehicle(platform, 60.0 * minutes, LONG_START_TS, seed=seed, drive=drive)
        name = f"veh-{seed}-drive-{drive}"
        ev = score_frames(
            frames, PLATFORM_BRANDS[platform], name, model, fleet, cfg.window_s, incidents
        )
        windows += len(ev.score)
        flagged += int((ev.score >= ALERT).sum())
        n_incidents += len(ev.incidents)
        for inc in ev.incidents:
            top = inc["evidence"][0] if inc["evidence"] else {}
            key = f"{top.get('feature')} {top.get('can_id')}"
            causes[key] = causes.get(key, 0) + 1
            severities[inc["severity"]] = severities.get(inc["severity"], 0) + 1
    return LongDriveFigures(platform, windows, flagged, n_incidents, causes, severities)


@dataclass
class AttackedVehicle:
    name: str
    brand: str
    frames: np.ndarray
    span: AttackSpan  # what was injected, and where
    truth: list[Span]  # extra ground truth: a suspension removes frames and so labels none


def attacked_vehicle(platform: str, family: str) -> AttackedVehicle:
    seed = ATTACK_SEED + FAMILIES.index(family)
    frames = simulate_vehicle(platform, TEST_S, START_TS, seed=seed)
    spec = AttackSpec.parse(f"{family}:start={ATTACK_START},duration={ATTACK_S}")
    frames, span = inject(frames, spec, seed=seed)
    truth = [Span(family, span.start_ts, span.end_ts)] if family == "suspension" else []
    return AttackedVehicle(f"veh-{platform}-{seed}", PLATFORM_BRANDS[platform], frames, span, truth)
