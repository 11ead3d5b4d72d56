"""Detection quality on the simulated CAN FD platform (stla, brand ds), judged only on
vehicles and drives its model never saw: the checks of tests/test_detection_quality.py,
in a file of their own so that pytest-xdist runs them beside the classic platforms'.
"""

from __future__ import annotations

import numpy as np
import pytest
from test_detection_quality import (
    ATTACK_S,
    ATTACK_SEED,
    ATTACK_START,
    FAMILIES,
    MIN_AUC,
    START_TS,
    TEST_S,
    W,
    check_attack_detected,
    check_benign,
    check_error_flood,
    check_suspected,
    model_for,
)

from detector.core.brands import load_fleet
from detector.core.config import IncidentConfig
from detector.evaluation.evaluate import attack_report, score_frames
from replay.simulator import simulate_vehicle

_cache: dict = {}


@pytest.fixture(scope="module")
def models() -> dict:
    return _cache


@pytest.mark.parametrize("family", FAMILIES)
def test_attack_on_an_fd_id_detected(models, family: str) -> None:
    check_attack_detected(models, "stla", family)


def test_benign_fd_vehicles_rarely_flagged(models) -> None:
    check_benign(models, "stla")


@pytest.mark.parametrize("family", FAMILIES)
def test_suspected_attack_on_an_fd_id(models, family: str) -> None:
    check_suspected(models, "stla", family)


def test_an_error_frame_flood_on_an_fd_bus_is_detected_and_named(models) -> None:
    check_error_flood(models, "stla")


def test_an_fd_id_changing_its_length_and_a_classic_id_going_fd_are_evidence(models) -> None:
    """On an unseen stla vehicle: FD_EPS (0x0D6, 16 bytes) starts sending 32-byte frames,
    and a classic id starts sending its frames as FD; each is an incident naming the id."""
    from detector.core.fd import fd_lengths
    from detector.core.schema import FLAG_FD, LABEL_CODE, fd_dlc

    model = model_for(models, "stla")
    frames = simulate_vehicle("stla", TEST_S, START_TS, seed=ATTACK_SEED + 60)
    t0 = START_TS + ATTACK_START
    during = (frames["ts"] >= t0) & (frames["ts"] < t0 + ATTACK_S)
    longer = during & (frames["can_id"] == 0x0D6)
    assert (fd_lengths(frames[longer]) == 16).all()
    frames["dlc"][longer] = fd_dlc(32)
    classic = frames[(frames["flags"] & FLAG_FD) == 0]
    victim = int(np.bincount(classic["can_id"]).argmax())  # the busiest classic id
    gone_fd = during & (frames["can_id"] == victim)
    frames["flags"][gone_fd] |= FLAG_FD
    frames["label"][longer | gone_fd] = LABEL_CODE["spoofing"]
    ev = score_frames(frames, "ds", "veh-fd-forms", model, load_fleet(), W, IncidentConfig())
    r = attack_report(ev, "spoofing")
    assert r["roc_auc"] >= MIN_AUC and r["time_to_detect_s"] is not None, r
    named = {str(c["can_id"]).split(" ")[0] for i in ev.incidents for c in i["can_ids"]}
    assert {"0x0D6", f"0x{victim:03X}"} <= named, named
