"""Which vehicles are sending: the active-vehicle gauge, and the ones gone quiet.

A vehicle counts as active for ``ACTIVE_S`` after its last record
(``canwatch_vehicles_active`` per brand, counted every ``LAG_INTERVAL_S``). One
silent for ``IDLE_S`` is *retired* by the loop: its open window is closed and
scored, its open incident closed, its state freed. Until then its last window
stays open, and so do the offsets of its records; a parked vehicle would
otherwise hold its partition's committed offset back forever.

Silence is timed on a clock that stops while the detector cannot read (``pause``:
its output awaits the broker's acks, the group has not confirmed it, or the broker
is unreachable): a vehicle whose records wait in the topic is not quiet. On the wall
clock, an outage or a hold of a minute retired every vehicle; their backlog then made
each a new vehicle, whose warm-up took an attack under way for its own state.

Kept apart from the loop because it is a clock over a table, not Kafka work.
"""

from __future__ import annotations

from collections.abc import Iterable

from detector.service.metrics import DetectorMetrics

LAG_INTERVAL_S = 5.0
ACTIVE_S = 60.0  # a vehicle counts as active this long after its last record
IDLE_S = ACTIVE_S


class Activity:
    def __init__(self, metrics: DetectorMetrics) -> None:
        self.metrics = metrics
        self.last_seen: dict[str, tuple[str, float]] = {}  # vehicle -> (brand, wall clock)
        self.idle: set[str] = set()  # gone quiet: retired with the next poll
        self._brands: set[str] = set()
        self._last_count = 0.0
        self._paused_s = 0.0  # monotonic seconds the detector could not read, in all
        self._paused_at: float | None = None  # since when it cannot, if it cannot now

    def pause(self, now: float) -> None:
        """The detector cannot read from ``now`` (monotonic) on: silence stops counting."""
        if self._paused_at is None:
            self._paused_at = now

    def resume(self, now: float) -> None:
        """The detector reads again."""
        if self._paused_at is not None:
            self._paused_s += max(now - self._paused_at, 0.0)
            self._paused_at = None

    def clock(self, now: float) -> float:
        """Monotonic ``now`` less the time the detector could not read: what
        ``last_seen`` holds, and what silence is timed on."""
        held = self._paused_s + (now - self._paused_at if self._paused_at is not None else 0.0)
        return now - held

    def count_if_due(self, now: float) -> None:
        if now - self._last_count >= LAG_INTERVAL_S:
            self._last_count = now
            self._count(now)

    def take_retired(self) -> set[str]:
        """Vehicles gone quiet and not back since: the loop retires them now."""
        retired = {v for v in self.idle if v not in self.last_seen}
        self.idle = set()
        return retired

    def forget(self, vehicles: Iterable[str]) -> None:
        for v in vehicles:
            self.last_seen.pop(v, None)

    def _count(self, now: float) -> None:
        """Vehicles per brand that sent telemetry within ACTIVE_S; forget older ones."""
        counts: dict[str, int] = dict.fromkeys(self._brands, 0)
        now = self.clock(now)
        for vehicle, (brand, seen) in list(self.last_seen.items()):
            if now - seen > IDLE_S:
                del self.last_seen[vehicle]
                self.idle.add(vehicle)
            else:
                counts[brand] = counts.get(brand, 0) + 1
        for brand, n in counts.items():
            self.metrics.brand(brand).vehicles_active.set(n)
        self._brands = set(counts)
