"""Detection quality on real captures (ROAD, CrySyS) in ../shared/data.

Never copied into the repo: skipped with a reason when the directory is absent.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from detector.brands import load_fleet
from detector.config import DetectionConfig, IncidentConfig
from detector.evaluate import file_report, score_frames
from detector.model import PlatformModel
from detector.training import train_platform
from replay.readers import read_frames

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
CFG = DetectionConfig()

pytestmark = [
    pytest.mark.realdata,
    pytest.mark.skipif(
        not DATA.is_dir(), reason=f"real captures not available: {DATA} does not exist"
    ),
]

ROAD_FILES = (
    "fuzzing_attack_1.csv",
    "correlated_signal_attack_2.csv",
    "correlated_signal_attack_2_masquerade.csv",
)
ROAD_MIN_AUC = {
    "fuzzing_attack_1.csv": 0.97,
    "correlated_signal_attack_2.csv": 0.97,
    "correlated_signal_attack_2_masquerade.csv": 0.90,
}
CRYSYS_TRAIN = ("benign-48.csv", "S-1-1-benign.log")
CRYSYS_ATTACK = "S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log"


def _read(path: Path) -> np.ndarray:
    if not path.is_file():
        pytest.skip(f"real capture missing: {path}")
    return read_frames(path)


@pytest.fixture(scope="module")
def road() -> tuple[PlatformModel, dict[str, np.ndarray]]:
    frames = {name: _read(DATA / "road" / name) for name in ROAD_FILES}
    # training keeps only the attack-free windows of each capture
    model, summary = train_platform("road", list(frames.values()), CFG)
    assert summary["recordings"] >= 3
    return model, frames


def _evaluate(frames: np.ndarray, brand: str, name: str, model: PlatformModel) -> dict:
    ev = score_frames(frames, brand, name, model, load_fleet(), CFG.window_s, IncidentConfig())
    return file_report(ev)


@pytest.mark.parametrize("name", ROAD_FILES)
def test_road_capture(road, name: str) -> None:
    model, frames = road
    assert (frames[name]["label"] > 0).any(), f"{name}: no labelled attack frames"
    report = _evaluate(frames[name], "road", Path(name).stem, model)
    assert report["attacked_windows"] > 0, report
    assert report["roc_auc"] >= ROAD_MIN_AUC[name], f"{name}: {report}"


def test_crysys_payload_modification() -> None:
    train = [_read(DATA / "crysys" / name) for name in CRYSYS_TRAIN]
    model, _ = train_platform("crysys", train, CFG)
    frames = _read(DATA / "crysys" / CRYSYS_ATTACK)
    attacked_ids = np.unique(frames["can_id"][frames["label"] > 0])
    assert attacked_ids.tolist() == [0x410]
    report = _evaluate(frames, "crysys", Path(CRYSYS_ATTACK).stem, model)
    assert report["attacked_windows"] >= 5, report
    assert report["roc_auc"] >= 0.90, report
