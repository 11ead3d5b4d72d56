"""Cross-drive evaluation: incident accounting, grouping, and
``canwatch evaluate --cross-validate`` end to end through the command line."""

from __future__ import annotations

import numpy as np
import pytest

from detector.evaluate import (
    Evaluation,
    attack_report,
    false_incidents,
    file_report,
    is_true_incident,
    pooled_report,
)
from detector.schema import LABEL_CODE

# ------------------------------------------------------------ incident accounting

W = 1.0
ATTACK_START, ATTACK_END = 10.0, 14.5  # first and last attack frame


def _incident(first_seen: float, last_seen: float) -> dict:
    return {"incident_id": f"i{first_seen:g}", "first_seen": first_seen, "last_seen": last_seen}


def _evaluation(incidents: list[dict], start: float = ATTACK_START) -> Evaluation:
    """20 one-second windows; windows 10..14 hold a fuzzing attack and score 2, the rest 0.5
    save those that ``incidents`` cover, which score 1.5 (flagged)."""
    t = np.arange(20, dtype=float)
    attack = np.where((t >= 10) & (t < 15), LABEL_CODE["fuzzing"], 0).astype(np.int8)
    score = np.where(attack > 0, 2.0, 0.5)
    for i in incidents:
        score[(t >= i["first_seen"]) & (t < i["last_seen"]) & (attack == 0)] = 1.5
    return Evaluation("v", t, score, attack, incidents, {"fuzzing": (start, ATTACK_END)}, W)


def test_incident_opening_three_windows_before_the_attack_is_false() -> None:
    early = _incident(7.0, 15.0)  # opens in window 7, runs into the attack
    assert not is_true_incident(early, ATTACK_START, ATTACK_END, W)
    ev = _evaluation([early])
    r = file_report(ev)
    assert r["incidents"] == 1 and r["incidents_overlapping_attacks"] == 1
    assert r["false_incidents"] == 1 and r["true_incidents"] == 0
    a = r["attacks"]["fuzzing"]
    assert a["incidents_overlapping"] == 1 and a["early_incidents"] == 1
    assert a["true_incidents"] == 0
    # the attack hides behind the false alarm: never detected by an incident, although
    # its windows are flagged
    assert a["detected"] is False and a["time_to_detect_s"] is None
    assert a["first_flagged_window_s"] == pytest.approx(1.0)
    assert a["recall"] == 1.0
    assert r["time_to_detect_s"] is None


def test_incident_opening_exactly_one_window_before_the_attack_is_true() -> None:
    on_time = _incident(9.0, 15.0)
    assert is_true_incident(on_time, ATTACK_START, ATTACK_END, W)
    # first_seen is rounded to the millisecond in incident events
    assert is_true_incident(_incident(9.0004, 15.0), ATTACK_START + 0.0008, ATTACK_END, W)
    r = file_report(_evaluation([on_time]))
    assert r["false_incidents"] == 0 and r["true_incidents"] == 1
    a = r["attacks"]["fuzzing"]
    assert a["detected"] is True and a["early_incidents"] == 0
    assert a["time_to_detect_s"] == 0.0  # raised when window 9 closed, at the attack's start
    assert a["benign_flagged_windows"] == 1  # window 9 is benign and flagged


def test_the_early_limit_is_one_window_of_time_before_the_first_frame() -> None:
    """An attack starting mid-window: window 9 starts 1.3 windows before its first frame."""
    assert not is_true_incident(_incident(9.0, 15.0), 10.3, ATTACK_END, W)
    assert is_true_incident(_incident(10.0, 15.0), 10.3, ATTACK_END, W)
    assert is_true_incident(_incident(12.0, 13.0), 10.3, ATTACK_END, W)


def test_incidents_away_from_the_attack_are_false_and_counted_per_benign_hour() -> None:
    ev = _evaluation([_incident(2.0, 4.0), _incident(10.0, 15.0), _incident(16.0, 17.0)])
    assert [i["first_seen"] for i in false_incidents(ev)] == [2.0, 16.0]
    r = file_report(ev)
    assert r["benign_windows"] == 15
    assert r["benign_hours"] == pytest.approx(15 / 3600, abs=1e-6)
    assert r["false_incidents"] == 2
    assert r["false_incidents_per_hour"] == pytest.approx(2 / (15 / 3600), rel=1e-4)
    assert r["benign_flagged_windows"] == 3  # windows 2, 3 and 16
    assert r["benign_flagged_fraction"] == pytest.approx(3 / 15, abs=1e-4)
    a = attack_report(ev, "fuzzing")
    # next to the attack's AUC: the benign figures of the windows it is scored against
    assert a["roc_auc"] == 1.0
    for key in ("benign_flagged_fraction", "false_incidents", "false_incidents_per_hour"):
        assert a[key] == r[key], key
    assert a["time_to_detect_s"] == 1.0


def test_pooled_figures_sum_counts_and_pool_windows() -> None:
    a = _evaluation([_incident(7.0, 15.0)])  # early: false, attack undetected
    b = _evaluation([_incident(10.0, 15.0), _incident(2.0, 3.0)])
    p = pooled_report([a, b])
    ra, rb = file_report(a), file_report(b)
    for key in ("windows", "attacked_windows", "benign_windows", "benign_flagged_windows"):
        assert p[key] == ra[key] + rb[key], key
    assert p["false_incidents"] == ra["false_incidents"] + rb["false_incidents"] == 2
    assert p["false_incidents_per_hour"] == pytest.approx(2 / (30 / 3600), rel=1e-4)
    assert p["attacks_total"] == 2 and p["attacks_detected"] == 1
    assert p["time_to_detect_s"] is None  # worst of a detected and a missed attack: never
    assert p["time_to_detect_median_s"] == 1.0
    assert p["attacks"]["fuzzing"]["detected"] == 1
