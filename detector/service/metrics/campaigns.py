"""Prometheus metrics of ``canwatch campaigns`` (its own process and registry).

Campaigns active and opened, and the vehicles in active campaigns, by brand and
attack (never a campaign id, vehicle or CAN id: those are in the campaign
records); the incident records read, those that came late, and those skipped by
reason; ``canwatch_up`` and ``canwatch_ready`` as the detector has them. The
(brand, attack) series of every brand of the fleet exist from the start, at
zero, so that ``increase()`` sees a brand's first campaign and the alert fires.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector

from detector.core.errors import ConfigError
from detector.service.metrics.detection import ATTACKS
from detector.service.metrics.families import Families, check_label

#: Why an incident record was not used: not JSON, not an incident, or so old
#: (more than campaigns.window_s behind the newest) that no active incident is left.
SKIP_REASONS = ("bad_json", "bad_shape", "stale")

CAMPAIGN_METRIC_NAMES = frozenset(
    {
        "canwatch_campaigns_active",
        "canwatch_campaigns_opened_total",
        "canwatch_campaign_vehicles",
        "canwatch_campaign_records_consumed_total",
        "canwatch_campaign_records_late_total",
        "canwatch_campaign_records_skipped_total",
    }
)


class CampaignMetrics:
    """Every family of the campaign service, on one registry (``None``: a private one
    with client_python's process, platform and gc collectors)."""

    def __init__(
        self, registry: CollectorRegistry | None = None, brands: tuple[str, ...] = ()
    ) -> None:
        if registry is None:
            registry = CollectorRegistry()
            ProcessCollector(registry=registry)
            PlatformCollector(registry=registry)
            GCCollector(registry=registry)
        self.registry = registry
        f = Families(registry)
        by = ("brand", "attack")
        self.active = f.gauge(
            "canwatch_campaigns_active", "Campaigns open now, by brand and attack.", by
        )
        self.opened = f.counter(
            "canwatch_campaigns_opened_total", "Campaigns opened, by brand and attack.", by
        )
        self.vehicles = f.gauge(
            "canwatch_campaign_vehicles",
            "Distinct vehicles in the campaigns open now, by brand and attack.",
            by,
        )
        self.consumed = f.counter(
            "canwatch_campaign_records_consumed_total", "Incident records read."
        )
        self.late = f.counter(
            "canwatch_campaign_records_late_total",
            "Incident records used although they arrived after the watermark had passed "
            "them (campaigns.lateness_s too small): their order may differ on a replay.",
        )
        self.skipped = f.counter(
            "canwatch_campaign_records_skipped_total",
            "Incident records not used, by reason.",
            ("reason",),
        )
        self.up = f.gauge("canwatch_up", "1 while the main loop runs.")
        self.ready = f.gauge(
            "canwatch_ready", "1 when reading every partition of the incident topic."
        )
        self._skipped = {r: self.skipped.labels(r) for r in SKIP_REASONS}
        self._shown: set[tuple[str, str]] = set()
        for brand in brands:
            self.brand(brand)

    def brand(self, brand: str) -> None:
        """Every (brand, attack) series of ``brand``, at zero if new."""
        for attack in ATTACKS:
            self.opened.labels(brand, attack)
            self.active.labels(brand, attack)
            self.vehicles.labels(brand, attack)

    def campaign_opened(self, brand: str, attack: str) -> None:
        self.brand(brand)
        self.opened.labels(brand, check_label(attack, ATTACKS, "attack")).inc()

    def set_open(self, now: dict[tuple[str, str], tuple[int, int]]) -> None:
        """Active campaigns and their vehicles: exactly ``now`` ((brand, attack) ->
        (campaigns, vehicles)); any other pair shown before goes back to zero."""
        for brand, attack in self._shown - set(now):
            self.active.labels(brand, attack).set(0)
            self.vehicles.labels(brand, attack).set(0)
        for (brand, attack), (campaigns, vehicles) in now.items():
            self.brand(brand)
            self.active.labels(brand, check_label(attack, ATTACKS, "attack")).set(campaigns)
            self.vehicles.labels(brand, attack).set(vehicles)
        self._shown = set(now)

    def skip(self, reason: str) -> None:
        self._skipped[check_label(reason, SKIP_REASONS, "skip reason")].inc()

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)

    def serve(self, address: str) -> Any:
        """Serve /metrics on ``address`` (host:port); returns the server."""
        from detector.service.metrics import parse_address

        try:
            host, port = parse_address(address)
        except ConfigError:
            raise ConfigError(
                f"campaigns.metrics_address must be host:port with an explicit host, "
                f"got {address!r}"
            ) from None
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return server
