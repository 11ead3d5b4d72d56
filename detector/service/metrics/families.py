"""How a ``canwatch_*`` family is declared: on the registry it is given, without
``*_created`` series, and with label values checked against a closed list.

Every part of the detector's metrics (``consumption``,
``detection``, ``state``, ``health``) builds its families
through ``Families``, so none can end up on the global default registry or take a
free-text label value.
"""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
)

# Each counter and histogram child would add a *_created series (when the label
# set first appeared): 40 % of the ~200 kB exposition, read by no dashboard or
# rule, and a scrape costs the detector ~13 ms of CPU at that size. (The switch
# is prometheus_client's, for the whole process.)
disable_created_metrics()


class Families:
    """Builds counters, gauges and histograms on one registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.registry = registry

    def counter(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Counter:
        return Counter(name, doc, labels, registry=self.registry)

    def gauge(self, name: str, doc: str, labels: tuple[str, ...] = ()) -> Gauge:
        return Gauge(name, doc, labels, registry=self.registry)

    def histogram(
        self, name: str, doc: str, labels: tuple[str, ...], buckets: tuple[float, ...]
    ) -> Histogram:
        return Histogram(name, doc, labels, buckets=buckets, registry=self.registry)


def check_label(value: str, allowed: Iterable[str], what: str) -> str:
    """``value`` if it is one of ``allowed``: free text would explode cardinality."""
    if value not in allowed:
        raise ValueError(f"{what} must be one of {sorted(allowed)}, got {value!r}")
    return value
