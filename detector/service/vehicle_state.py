"""A vehicle's state across the service's parts: where it begins, and letting it go.

Each vehicle the detector watches has state in five places: the scorer (its
open window, and its shadow window when its platform has a shadow model), the
incident tracker (its open incident), the incident counts (the active gauge),
the offset ledger (its records a restart needs) and the activity table (when it
last sent); a sixth when its platform has a shadow (its would-be incident). A
vehicle is let go when its partition moves away or is re-read after a rewind,
when it goes quiet (retired: its last window scored, its incident closed), or
when the state limits evict or refuse it; each time all of them must forget it,
or one part would keep counting, or holding offsets back for, a vehicle the
others no longer know. ``horizon`` is the other side: the event time from which
a restart must re-read a vehicle to rebuild what the scorer and tracker hold,
its reference included.

Kept apart from the loop so that there is one way to let a vehicle go.
"""

from __future__ import annotations

from detector.incidents.tracker import IncidentTracker
from detector.model.pipeline import Scorer, Shed
from detector.model.reference import WARMUP_WINDOWS
from detector.service.activity import Activity
from detector.service.incident_feed import IncidentFeed
from detector.service.metrics import DetectorMetrics
from detector.service.offset_ledger import OffsetLedger
from detector.service.shadow import ShadowScoring


class VehicleState:
    def __init__(
        self,
        scorer: Scorer,
        tracker: IncidentTracker,
        incident_feed: IncidentFeed,
        ledger: OffsetLedger,
        activity: Activity,
        metrics: DetectorMetrics,
        window_s: float,
        shadow: ShadowScoring | None = None,
    ) -> None:
        self.scorer = scorer
        self.tracker = tracker
        self.incident_feed = incident_feed
        self.ledger = ledger
        self.activity = activity
        self.metrics = metrics
        self.window_s = window_s
        self.shadow = shadow

    def horizon(self, vehicle: str, brand: str) -> float:
        """Event time from which a restart must re-read ``vehicle``: WARMUP_WINDOWS + 1
        windows before its open one, or before the first anomalous window of its open
        incident (so the incident is re-formed whole and keeps its id).

        A re-read vehicle starts afresh: its first window is partial and its next
        WARMUP_WINDOWS teach its reference, taking in its payload evidence as the
        vehicle's own state. Re-read from the window before, a masquerade or replay under
        way would be that state, and go unseen for the rest of the attack; these windows
        were scored already, so warming up on them costs the restart a few seconds of
        records and no sight. An incident that closed within what the restart re-reads
        (``incidents.quiet_windows`` of 3 or fewer) is re-read whole too, so that it is re-formed
        under its id rather than opened anew from the windows left of it; and one
        whose last windows before it fall in a telemetry gap reaches back past the gap."""
        lead = (WARMUP_WINDOWS + 1) * self.window_s
        start = self.scorer.closed_until(vehicle, brand)
        inc = self.tracker.open.get(vehicle)
        if inc is not None:
            start = min(start, inc.first_seen)
        closed = self.tracker.closed.get(vehicle)
        if closed is not None and closed[1] > start - lead:
            start = min(start, closed[0])
        # the warm-up needs windows with frames: a telemetry gap inside the lead leaves
        # the re-read vehicle none before ``start``, so it reaches back past the gap
        gap = self.scorer.gap_before(vehicle, brand, start - lead, start)
        if gap is not None:
            start = min(start, gap)
        return start - lead

    def drop_partitions(self, partitions: set) -> None:
        """Forget the vehicles of ``partitions`` (revoked, or re-read after a rewind)."""
        self.drop(self.ledger.vehicles_of(partitions))
        self.ledger.forget_partitions(partitions)

    def drop(self, gone: set[str]) -> None:
        """Forget vehicles: revoked, re-read after a rewind, retired after going quiet, or
        let go by the state limits."""
        self.incident_feed.uncount(gone)
        self.scorer.forget(gone)
        self.tracker.forget(gone)
        self.ledger.forget_vehicles(gone)
        self.activity.forget(gone)
        if self.shadow is not None:
            self.shadow.forget(gone)

    def let_go(self, retired: set[str], shed: Shed) -> list[dict]:
        """Vehicles retired, or let go by the state limits: their incidents closed (the
        events returned), their state dropped."""
        events = []
        if retired:
            events += self.incident_feed.close(retired)
            self.drop(retired)
        if shed.evicted or shed.refused:  # the limits let them go: so does everything else
            events += self.incident_feed.close(shed.evicted)
            self.drop(shed.evicted | shed.refused)
        self.metrics.shed(shed.frames, shed.vehicles)
        self.metrics.set_state(self.scorer.n_vehicles, self.scorer.n_streams)
        return events
