"""Every dashboard panel, the critical-incident and the fleet-campaign alerts, end to end.

A real ``canwatch detect`` process consumes simulated jeep traffic (three
vehicles under a DoS attack, a few malformed records) from the embedded broker,
a real ``canwatch campaigns`` process turns its incidents into a campaign, a
real Prometheus scrapes both every second with alerts.yml loaded, and every
panel query of both boards (variables substituted as Grafana would with "All")
must return data through Prometheus's HTTP API. The module shares one such setup.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_server import (
    ALERTS,
    DASHBOARDS,
    PROMETHEUS,
    PrometheusServer,
    find_binary,
    free_port,
    load_dashboard_builder,
)

from detector.core.config import DetectionConfig, KafkaConfig, ModelsConfig
from detector.model.store import save_model
from detector.model.training import train_platform
from detector.transport.broker import create_topics
from detector.transport.kafka_io import make_producer
from detector.transport.wire import CONTENT_TYPE_JSON, headers_for
from replay.attacks import AttackSpec, inject
from replay.publisher import publish
from replay.simulator import simulate_vehicle

if find_binary(PROMETHEUS) is None:
    pytest.skip(
        f"prometheus not installed at {PROMETHEUS} (apt-get install prometheus); CI installs it",
        allow_module_level=True,
    )

pytestmark = [pytest.mark.prometheus, pytest.mark.kafka]

REPO = Path(__file__).resolve().parents[1]
CANWATCH = REPO / ".venv" / "bin" / "canwatch"
if not CANWATCH.exists():
    CANWATCH = Path(sys.executable).parent / "canwatch"
build = load_dashboard_builder()
BOARDS = {
    name: json.loads((DASHBOARDS / name).read_text())
    for name in ("soc-overview.json", "detector-health.json")
}
WAIT_S = 30.0  # upper bound per condition; each wait ends as soon as it holds
VEHICLES = 4
DURATION_S = 30
DOS = "dos:start=10,duration=4"
DOS_VEHICLES = (0, 2, 3)  # a campaign (campaigns.min_vehicles = 3); vehicle 1 sends late frames
BAD_PER_ROUND = 3
ALERT = "CanwatchCriticalIncidentOpened"
CAMPAIGN_ALERT = "CanwatchFleetCampaign"


@dataclass
class Live:
    prom: PrometheusServer
    proc: subprocess.Popen
    logs: Path
    frames: int
    campaigns: subprocess.Popen

    def detector_log(self) -> str:
        out = [(self.logs / f"detect.{s}").read_text(errors="replace") for s in ("out", "err")]
        return "\n".join(text[-3000:] for text in out)


def poll(what: str, check: Callable[[], object], proc: subprocess.Popen, logs: Path) -> object:
    """``check()`` until truthy; fails early (with the detector's log) if it died."""
    deadline = time.monotonic() + WAIT_S
    while True:
        if proc.poll() is not None:
            err = (logs / "detect.err").read_text(errors="replace")[-3000:]
            raise AssertionError(
                f"canwatch detect exited {proc.returncode} while waiting for {what}:\n{err}"
            )
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {WAIT_S:g} s waiting for {what}")
        time.sleep(0.2)


def scalar(prom: PrometheusServer, expr: str) -> float:
    """The single value of ``expr``, or NaN when it has no data yet."""
    result = prom.query(expr)
    return float(result[0]["value"][1]) if result else float("nan")


def train_models(model_dir: Path) -> None:
    recordings = [simulate_vehicle("cusw", 120, 1.7e9, seed=100 + i) for i in range(10)]
    model, summary = train_platform("cusw", recordings, DetectionConfig())
    save_model(model, model_dir, ["jeep", "fiat", "fiat-professional"], summary)


def traffic_rounds() -> tuple[list, list]:
    """Jeep vehicles ending at about the wall clock, cut in two halves by event time;
    ``DOS_VEHICLES`` under the same DoS attack.

    The second round also re-sends one vehicle's first second: its windows are
    closed by then, so those frames are late (for the late-frames panel).
    """
    start = float(int(time.time()) - DURATION_S)
    first, second = [], []
    for i in range(VEHICLES):
        vehicle = f"veh-jeep-live-{i:02d}"
        frames = simulate_vehicle("cusw", DURATION_S, start, seed=900 + i)
        if i in DOS_VEHICLES:
            frames, _ = inject(frames, AttackSpec.parse(DOS), seed=900 + i)
        half = frames["ts"] < start + DURATION_S / 2
        first.append((vehicle, "jeep", frames[half]))
        second.append((vehicle, "jeep", frames[~half]))
    late = first[1][2]
    second.append((first[1][0], "jeep", late[late["ts"] < start + 1]))
    return first, second


def send_round(kafka: KafkaConfig, streams: list) -> int:
    producer = make_producer(kafka)
    try:
        frames = publish(producer, kafka.telemetry_topic, streams, speed=None).frames
        for i in range(BAD_PER_ROUND):  # malformed JSON: dead-lettered as bad_json
            producer.send(
                kafka.telemetry_topic,
                key=f"bad-{uuid.uuid4().hex[:6]}-{i}".encode(),
                value=b'{"vehicle": "v", "frames": [',
                headers=headers_for("jeep", CONTENT_TYPE_JSON),
            )
        producer.flush()
        return frames
    finally:
        producer.close()


@pytest.fixture(scope="module")
def live(broker, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp = tmp_path_factory.mktemp("live")
    suffix = uuid.uuid4().hex[:8]
    kafka = KafkaConfig(
        bootstrap=broker.bootstrap,
        telemetry_topic=f"telemetry.live.{suffix}",
        incident_topic=f"incidents.live.{suffix}",
        dlq_topic=f"dlq.live.{suffix}",
        campaign_topic=f"campaigns.live.{suffix}",
    )
    create_topics(
        broker.bootstrap,
        {
            kafka.telemetry_topic: 2,
            kafka.incident_topic: 1,
            kafka.dlq_topic: 1,
            kafka.campaign_topic: 1,
        },
    )
    config = tmp / "canwatch.toml"
    config.write_text(
        "[kafka]\n"
        f'telemetry_topic = "{kafka.telemetry_topic}"\n'
        f'incident_topic = "{kafka.incident_topic}"\n'
        f'dlq_topic = "{kafka.dlq_topic}"\n'
        f'campaign_topic = "{kafka.campaign_topic}"\n'
        "[models]\n"
        "reload_interval_s = 1\n"
        "[campaigns]\n"
        "lateness_s = 1.0\n"
        f'group_id = "campaigns.live.{suffix}"\n',
        encoding="utf-8",
    )
    port, campaigns_port = free_port(), free_port()
    targets = [f"127.0.0.1:{port}", f"127.0.0.1:{campaigns_port}"]
    with ExitStack() as stack:
        # Started first: its first scrape comes ~6 s later, while the model trains.
        prom = stack.enter_context(
            PrometheusServer(targets, rule_files=[ALERTS], scrape_interval="1s")
        )
        models = tmp / "models"
        train_models(models)
        out = stack.enter_context(open(tmp / "detect.out", "wb"))
        err = stack.enter_context(open(tmp / "detect.err", "wb"))
        proc = subprocess.Popen(
            [
                str(CANWATCH),
                "detect",
                "--bootstrap",
                broker.bootstrap,
                "--models",
                str(models),
                "--group",
                f"group.live.{suffix}",
                "--metrics",
                f"127.0.0.1:{port}",
                "--config",
                str(config),
                "--detector-id",
                "det-live",
            ],
            stdout=out,
            stderr=err,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        stack.callback(stop_detector, proc)
        campaigns_out = stack.enter_context(open(tmp / "campaigns.out", "wb"))
        campaigns = subprocess.Popen(
            [
                str(CANWATCH),
                "campaigns",
                "--bootstrap",
                broker.bootstrap,
                "--metrics",
                f"127.0.0.1:{campaigns_port}",
                "--config",
                str(config),
            ],
            stdout=campaigns_out,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        stack.callback(stop_detector, campaigns)

        def wait(what: str, expr: str) -> None:
            poll(what, lambda: prom.query(expr), proc, tmp)

        # The zero of the critical counter must be stored before the incident
        # opens, or increase() in the alert never sees the step to 1.
        # both processes export canwatch_ready: the detector's is the one to wait for
        wait("the detector ready and scraped", f'canwatch_ready{{instance="{targets[0]}"}} == 1')
        wait(
            "the critical dos counter scraped at zero",
            'canwatch_incidents_opened_total{brand="jeep",severity="critical",attack="dos"} == 0',
        )
        first, second = traffic_rounds()
        sent = send_round(kafka, first)
        wait("round 1 in Prometheus", f"sum(canwatch_frames_consumed_total) == {sent}")
        sent += send_round(kafka, second)
        wait("every frame in Prometheus", f"sum(canwatch_frames_consumed_total) == {sent}")
        wait(
            "every malformed record dead-lettered",
            f'sum(canwatch_dead_letters_total{{reason="bad_json"}}) == {2 * BAD_PER_ROUND}',
        )
        wait("an incident closed", "sum(canwatch_incidents_closed_total) >= 1")
        wait(
            "the campaign of the dos vehicles",
            f'canwatch_campaign_vehicles{{brand="jeep",attack="dos"}} == {len(DOS_VEHICLES)}',
        )
        # Three more scrapes of the settled detector, so rate() windows hold them.
        settled = scalar(prom, "max(timestamp(canwatch_up))")
        wait("three scrapes after the traffic", f"max(timestamp(canwatch_up)) >= {settled + 2}")
        yield Live(prom, proc, tmp, sent, campaigns)


def stop_detector(proc: subprocess.Popen) -> None:
    """Teardown safety net (the last test stops it properly and checks the exit code)."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


def panel_results(prom: PrometheusServer) -> list[tuple[str, str, str, int]]:
    """(board, panel title, expr, number of series returned) for every panel query."""
    return [
        (name, title, expr, len(prom.query(expr)))
        for name, board in BOARDS.items()
        for title, expr in build.panel_queries(board)
    ]


def test_every_panel_query_returns_data_from_a_live_detector(live):
    deadline = time.monotonic() + WAIT_S
    while True:
        results = panel_results(live.prom)
        empty = [r for r in results if r[3] == 0]
        if not empty or time.monotonic() > deadline:
            break
        time.sleep(1.0)
    table = "\n".join(
        f"  {'EMPTY' if n == 0 else f'{n:5d}'}  {board}: {title}: {' '.join(expr.split())}"
        for board, title, expr, n in results
    )
    assert not empty, f"{len(empty)} of {len(results)} panel queries without data:\n{table}"
    assert len(results) == sum(len(build.panel_queries(b)) for b in BOARDS.values())
    # The data is the detector's, not leftovers: jeep, the trained model, our traffic.
    assert scalar(live.prom, 'canwatch_model_info{brand="jeep",platform="cusw",version="1"}') == 1
    assert scalar(live.prom, "sum(canwatch_frames_consumed_total)") == live.frames


def test_critical_incident_alert_fires(live):
    rule = next(r for r in live.prom.rules() if r["name"] == ALERT)
    # No ``for:`` in alerts.yml: the rule fires on its first evaluation (every 1 s here).
    assert rule["duration"] == 0, rule

    def firing() -> list[dict]:
        return [
            a
            for a in live.prom.alerts()
            if a["labels"].get("alertname") == ALERT and a["state"] == "firing"
        ]

    alerts = poll(f"{ALERT} firing", firing, live.proc, live.logs)
    assert {(a["labels"]["brand"], a["labels"]["attack"]) for a in alerts} == {("jeep", "dos")}
    assert all(a["labels"]["severity"] == "critical" for a in alerts)


def test_fleet_campaign_alert_fires(live):
    def firing() -> list[dict]:
        return [
            a
            for a in live.prom.alerts()
            if a["labels"].get("alertname") == CAMPAIGN_ALERT and a["state"] == "firing"
        ]

    alerts = poll(f"{CAMPAIGN_ALERT} firing", firing, live.proc, live.logs)
    assert {(a["labels"]["brand"], a["labels"]["attack"]) for a in alerts} == {("jeep", "dos")}
    assert scalar(live.prom, 'sum(canwatch_campaigns_opened_total{brand="jeep"})') == 1


# Panels whose series could be present but all zero if the service stopped
# feeding them: under traffic each must show a non-zero sample.
FLAT_PANELS = {
    "Vehicles active": 'max_over_time(canwatch_vehicles_active{brand="jeep"}[1m]) > 0',
    "Late frames by brand": 'canwatch_late_frames_total{brand="jeep"} > 0',
    "Stage latency percentiles (features)": (
        'canwatch_stage_duration_seconds_count{stage="features"} > 0'
    ),
}


@pytest.mark.parametrize("panel", list(FLAT_PANELS))
def test_panel_is_not_flat_zero_under_traffic(live, panel):
    expr = FLAT_PANELS[panel]
    assert live.prom.query(expr), f"{panel}: {expr} has no non-zero sample"


def test_drift_gauges_are_scraped(live):
    """The detector's drift part, fed by its polls: jeep's figures and the alert level."""
    ratio = scalar(live.prom, 'canwatch_model_drift_ratio{brand="jeep"}')
    assert 0.0 <= ratio <= 1.0, ratio  # NaN (no series) fails too
    fleet = scalar(
        live.prom,
        'sum(canwatch_model_drift_outside_windows{brand="jeep"}) '
        '/ sum(canwatch_model_drift_windows{brand="jeep"})',
    )
    assert fleet == ratio  # one instance: the alert's fleet ratio is its own
    assert scalar(live.prom, 'canwatch_model_rate_drift{brand="jeep"}') >= 0.0
    limit = scalar(live.prom, "max(canwatch_model_drift_limit)")
    assert limit == ModelsConfig().drift_alert_ratio


def test_campaigns_exits_0_on_sigterm(live):
    assert live.campaigns.poll() is None, (live.logs / "campaigns.out").read_text()
    live.campaigns.send_signal(signal.SIGTERM)
    assert live.campaigns.wait(timeout=20) == 0, (live.logs / "campaigns.out").read_text()


def test_detector_exits_0_on_sigterm(live):
    assert live.proc.poll() is None, live.detector_log()
    live.proc.send_signal(signal.SIGTERM)
    try:
        code = live.proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        raise AssertionError(f"no exit 20 s after SIGTERM:\n{live.detector_log()}") from None
    assert code == 0, live.detector_log()
