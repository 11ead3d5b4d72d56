"""Scored windows into incident events, and both counted in the metrics.

Per brand: windows scored, anomalous ones, the score histogram; incidents
opened and closed by severity and suspected attack, and the active gauge.
An open incident's severity is followed as it rises (``escalated``: an attack
that began mid-window opens low and turns critical a window later), and is
remembered until it closes (or its vehicle is let go), so the active gauge
goes down under the label it was last counted under. An incident counts as
closed with the severity and suspected attack its closed event carries.

Every event leaves with its ``provenance``: the telemetry topic, partition and
offset range of the records whose frames fell in its windows, from the offset
ledger (which holds exactly those while the incident is open: its horizon).
Looked up per event, not per frame or record: the hot path pays nothing for it
but the oldest event time of each record, kept beside the newest.

Kept apart from the loop because it is the detector's one step from scores to
what an analyst sees, and its counts must match the events one for one.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from detector.incidents.tracker import IncidentTracker, observations
from detector.model.pipeline import ScoredRows, vehicle_clock, window_scores, windows_by_brand
from detector.service.metrics import DetectorMetrics
from detector.service.offset_ledger import OffsetLedger

#: An incident event -> its provenance (or None)
Locate = Callable[[dict], dict | None]


def kafka_locator(ledger: OffsetLedger, topic: str) -> Locate:
    """Where an incident's frames are on ``topic``: the partition and the first and last
    offset of its vehicle's records with frames in [first_seen, last_seen)."""

    def locate(ev: dict) -> dict | None:
        found = ledger.span(ev["vehicle"], ev["first_seen"], ev["last_seen"])
        if found is None:
            return None
        tp, first, last, records = found
        part = getattr(tp, "partition", tp)
        return {
            "topic": topic,
            "partition": part,
            "first_offset": first,
            "last_offset": last,
            "records": records,
        }

    return locate


class IncidentFeed:
    def __init__(
        self,
        tracker: IncidentTracker,
        metrics: DetectorMetrics,
        window_s: float,
        locate: Locate | None = None,
    ) -> None:
        self.tracker = tracker
        self.metrics = metrics
        self.window_s = window_s
        self.locate = locate
        # incident id -> (severity, attack) as last counted
        self.open_severity: dict[str, tuple[str, str]] = {}

    def observe(self, scored: list[ScoredRows]) -> list[dict]:
        """Fold a poll's scored windows into the open incidents: the events that makes."""
        events = []
        for sc in scored:
            v, w, s = window_scores(sc)
            if len(w):
                for brand, sel in windows_by_brand(sc, v):
                    bm = self.metrics.brand(brand)
                    n, anomalous = int(sel.sum()), int((s[sel] >= 1.0).sum())
                    bm.windows.inc(n)
                    bm.anomalous.inc(anomalous)
                    bm.model_windows.inc(n)  # the serving role, beside any shadow's
                    bm.model_anomalous.inc(anomalous)
                    bm.observe_scores(s[sel])
            clock = vehicle_clock(sc, v, w, self.window_s)
            events += self.tracker.observe(observations(sc, self.window_s), clock)
        return self.account(events)

    def close(self, vehicles: set[str]) -> list[dict]:
        """Close the open incidents of ``vehicles`` (retired, or let go by the limits)."""
        return self.account(self.tracker.close(vehicles))

    def account(self, events: list[dict]) -> list[dict]:
        """Count incident events in the metrics (opened, closed, active by severity), and
        say where their frames are."""
        for ev in events:
            if self.locate is not None:
                ev["provenance"] = self.locate(ev)
            bm = self.metrics.brand(ev["brand"])
            if ev["status"] == "open":
                self.open_severity[ev["incident_id"]] = (ev["severity"], ev["suspected_attack"])
                bm.incident_opened(ev["severity"], ev["suspected_attack"])
                bm.model_incidents.inc()
            elif ev["status"] == "update":
                counted = self.open_severity.get(ev["incident_id"])
                if counted is not None:
                    if ev["severity"] != counted[0]:  # severity follows the peak: only up
                        bm.incident_escalated(counted[0], ev["severity"], ev["suspected_attack"])
                    self.open_severity[ev["incident_id"]] = (ev["severity"], ev["suspected_attack"])
            elif ev["status"] == "closed":
                counted = self.open_severity.pop(ev["incident_id"], None)
                bm.incident_closed(
                    ev["severity"], ev["suspected_attack"], counted[0] if counted else None
                )
        return events

    def uncount(self, gone: Iterable[str]) -> None:
        """Vehicles let go: their open incidents are no longer ours to count."""
        for v in gone:
            inc = self.tracker.open.get(v)
            sev = self.open_severity.pop(inc.id, None) if inc is not None else None
            if sev is not None:
                self.metrics.brand(inc.brand).active[sev[0]].dec()
