"""Which vehicles are quiet: silence is timed only while the detector can read.

A vehicle silent for IDLE_S is retired (its open window scored, its incident closed,
its state freed). Its records may simply wait in the topic: while the detector holds
(its output unacknowledged) or cannot reach the broker, nothing is read, and timed on
the wall clock a minute of that retired every vehicle; their backlog then made each a
new vehicle, whose warm-up took an attack under way for its own state.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from detector.service.activity import IDLE_S, LAG_INTERVAL_S, Activity
from detector.service.metrics import DetectorMetrics


def seen(activity: Activity, vehicle: str, now: float) -> None:
    """A record of ``vehicle`` read at monotonic ``now`` (as intake notes it)."""
    activity.last_seen[vehicle] = ("jeep", activity.clock(now))


def test_silence_is_not_timed_while_the_detector_cannot_read() -> None:
    activity = Activity(DetectorMetrics(CollectorRegistry()))
    seen(activity, "moving", 100.0)
    seen(activity, "parked", 100.0)
    activity.pause(110.0)  # the broker stops acknowledging (or answering) for 3 minutes
    activity.count_if_due(200.0)
    activity.count_if_due(290.0)
    assert activity.take_retired() == set()
    activity.resume(290.0)
    activity.count_if_due(290.0 + LAG_INTERVAL_S)  # 15 s of reading since: nobody quiet
    assert activity.take_retired() == set()
    seen(activity, "moving", 300.0)  # its backlog comes; the parked vehicle's does not
    activity.count_if_due(290.0 + IDLE_S - 10 + LAG_INTERVAL_S)
    assert activity.take_retired() == {"parked"}
    activity.count_if_due(300.0 + IDLE_S + 2 * LAG_INTERVAL_S)
    assert activity.take_retired() == {"moving"}


def test_silence_is_timed_on_the_wall_clock_while_the_detector_reads() -> None:
    activity = Activity(DetectorMetrics(CollectorRegistry()))
    seen(activity, "parked", 100.0)
    activity.pause(105.0)
    activity.resume(105.0)  # a hold of no time changes nothing
    activity.count_if_due(100.0 + IDLE_S + 1.0)
    assert activity.take_retired() == {"parked"}
