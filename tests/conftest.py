"""Shared fixtures.

``broker``: one embedded Tansu broker for the whole session (memory storage),
stopped by PID at the end. Use ``unique_topic`` so tests never share topics.
Do not stop or restart the shared broker: a test that needs an outage starts
its own ``detector.transport.broker.EmbeddedBroker``.
``cusw_models``: one trained cusw model directory for the session.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from detector.transport.broker import BrokerError, EmbeddedBroker, tansu_binary


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedBroker]:
    try:
        tansu_binary()
    except BrokerError as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    log = tmp_path_factory.mktemp("tansu") / "tansu.log"
    embedded = EmbeddedBroker(log_path=log)
    embedded.start()
    try:
        yield embedded
    finally:
        embedded.close()


@pytest.fixture(scope="session")
def cusw_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cusw (jeep, fiat, fiat-professional) v1 model on 10 vehicles × 120 s, trained
    once for the whole run and shared by the service, fault and TLS tests."""
    from detector.core.brands import load_fleet
    from detector.core.config import DetectionConfig
    from detector.model.store import save_model
    from detector.model.training import train_platform
    from replay.simulator import simulate_vehicle

    d = tmp_path_factory.mktemp("models")
    recordings = [simulate_vehicle("cusw", 120, 1.7e9, seed=100 + i) for i in range(10)]
    model, summary = train_platform("cusw", recordings, DetectionConfig())
    save_model(model, d, load_fleet().brands_of("cusw"), summary)
    return d


@pytest.fixture
def unique_topic(request: pytest.FixtureRequest) -> Callable[[str], str]:
    """``unique_topic("telemetry")`` -> "telemetry.<test name>.<8 hex>" (a legal topic name)."""
    test = re.sub(r"[^A-Za-z0-9_-]+", "_", request.node.name)[:80]

    def make(prefix: str = "t") -> str:
        return f"{prefix}.{test}.{uuid.uuid4().hex[:8]}"

    return make
