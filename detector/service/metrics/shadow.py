"""Serving and shadow models side by side: windows, anomalous windows and incidents
by role, their agreement, and which version plays which role.

The serving role's series are counted where the service counts its windows and
incidents (``incident_feed``); the shadow's by ``detector.service.shadow``, which
never publishes what its model finds. A brand without a shadow has no shadow
series, so the model-owner board shows shadows only where they exist.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry

from detector.service.metrics.families import Families, check_label

ROLES = ("serving", "shadow")
#: ``canwatch_model_version`` only: a shadow deployed but waiting for room under
#: ``limits.max_streams`` (``detector.service.shadow``); it scores nothing yet.
WAITING = "waiting"


class ShadowMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry)
        self.windows = f.counter(
            "canwatch_model_windows_total",
            "Vehicle windows scored, by the serving model and by the shadow.",
            ("brand", "role"),
        )
        self.anomalous = f.counter(
            "canwatch_model_anomalous_windows_total",
            "Windows at or above the threshold of the serving model, or of the shadow.",
            ("brand", "role"),
        )
        self.incidents = f.counter(
            "canwatch_model_incidents_total",
            "Incidents opened: published (serving), or that the shadow would have opened.",
            ("brand", "role"),
        )
        self.agreement = f.gauge(
            "canwatch_shadow_agreement_ratio",
            "Share of windows since the shadow was installed on which serving model and "
            "shadow agree (both anomalous, or neither).",
            ("brand",),
        )
        self.version = f.gauge(
            "canwatch_model_version",
            "Version of the serving model, of the shadow, and of a shadow waiting for room "
            "under limits.max_streams (role waiting).",
            ("brand", "role"),
        )  # fmt: skip

    def brand_children(self, brand: str) -> dict[str, Any]:
        """The serving role's series, part of ``BrandMetrics``."""
        return {
            "model_windows": self.windows.labels(brand, "serving"),
            "model_anomalous": self.anomalous.labels(brand, "serving"),
            "model_incidents": self.incidents.labels(brand, "serving"),
        }

    def shadow_children(self, brand: str) -> tuple[Any, Any, Any]:
        """(windows, anomalous, incidents) of the shadow of ``brand``."""
        return (
            self.windows.labels(brand, "shadow"),
            self.anomalous.labels(brand, "shadow"),
            self.incidents.labels(brand, "shadow"),
        )

    def set_version(self, brand: str, role: str, version: int | None) -> None:
        """The version playing ``role`` for ``brand``; None removes the series (no shadow)."""
        check_label(role, ROLES, "role")
        if version is not None:
            self.version.labels(brand, role).set(version)
            return
        for family in (self.version, self.windows, self.anomalous, self.incidents):
            try:
                family.remove(brand, role)
            except KeyError:
                pass
        try:
            self.agreement.remove(brand)
        except KeyError:
            pass

    def set_waiting(self, brand: str, version: int | None) -> None:
        """The version of a shadow of ``brand`` waiting for room; None: none waits."""
        if version is not None:
            self.version.labels(brand, WAITING).set(version)
            return
        try:
            self.version.remove(brand, WAITING)
        except KeyError:
            pass

    def set_agreement(self, brand: str, ratio: float) -> None:
        self.agreement.labels(brand).set(ratio)
