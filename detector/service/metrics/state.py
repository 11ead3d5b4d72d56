"""How full the detector's bounded state is (vehicles and streams held, and the
limits.* that cap them) and what those limits shed."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from detector.service.metrics.families import Families

#: Why the state limits (limits.*) shed frames: their vehicle was refused (dropped), or
#: they were pooled into their vehicle window's row of further unseen ids because
#: the instance's streams were taken or the window reached limits.max_novel_ids.
SHED_REASONS = ("vehicle_limit", "stream_limit", "novel_id_limit")
#: ... and which limit was full when vehicles were retired early to make room.
EVICTION_REASONS = ("vehicle_limit", "stream_limit")


class StateMetrics:
    """State held against its limits; frames and vehicles shed by those limits."""

    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry)
        self.frames_shed = f.counter(
            "canwatch_frames_shed_total",
            "Frames the state limits kept from a stream of their own: dropped "
            "(vehicle_limit: their vehicle was not admitted) or pooled into their vehicle "
            "window's row of further unseen ids (stream_limit, novel_id_limit).",
            ("brand", "reason"),
        )
        self.vehicles_evicted = f.counter(
            "canwatch_vehicles_evicted_total",
            "Vehicles that never had a window scored, retired to make room for new ones "
            "(their open window scored first), by the limit that was full.",
            ("brand", "reason"),
        )
        self.state_vehicles = f.gauge("canwatch_state_vehicles", "Vehicles whose state is held.")
        self.state_vehicles_max = f.gauge(
            "canwatch_state_vehicles_max", "Vehicles the state may hold (limits.max_vehicles)."
        )
        self.state_streams = f.gauge(
            "canwatch_state_streams", "(vehicle, CAN id) streams whose state is held."
        )
        self.state_streams_max = f.gauge(
            "canwatch_state_streams_max", "Streams the state may hold (limits.max_streams)."
        )

    def brand_children(self, brand: str) -> dict[str, Any]:
        """This part's fields of ``BrandMetrics``."""
        return {
            "shed": {r: self.frames_shed.labels(brand, r) for r in SHED_REASONS},
            "evicted": {r: self.vehicles_evicted.labels(brand, r) for r in EVICTION_REASONS},
        }

    def set_state_limits(self, max_vehicles: int, max_streams: int) -> None:
        self.state_vehicles_max.set(max_vehicles)
        self.state_streams_max.set(max_streams)

    def set_state(self, vehicles: int, streams: int) -> None:
        self.state_vehicles.set(vehicles)
        self.state_streams.set(streams)
