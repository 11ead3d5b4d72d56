"""Dashboards and alert rules: generated JSON current, names real, promtool green,
and every panel query returning data from a real Prometheus scraping DetectorMetrics."""

import json
import re
import subprocess
import threading

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from prometheus_server import (
    ALERTS,
    DASHBOARDS,
    PROMETHEUS,
    PROMTOOL,
    PrometheusServer,
    find_binary,
    load_dashboard_builder,
)

from detector.service.metrics import METRIC_NAMES as DETECTOR_METRIC_NAMES
from detector.service.metrics import SHADOW_METRIC_NAMES, STAGES, DetectorMetrics
from detector.service.metrics.campaigns import CAMPAIGN_METRIC_NAMES, CampaignMetrics

build = load_dashboard_builder()
#: Every canwatch_* family: the detector's (shadow scoring's included) and canwatch campaigns'.
METRIC_NAMES = DETECTOR_METRIC_NAMES | CAMPAIGN_METRIC_NAMES
PROM_DIR = DASHBOARDS / "prometheus"
UIDS = {
    "soc-overview.json": "canwatch-soc-overview",
    "detector-health.json": "canwatch-detector-health",
    "model-owner.json": "canwatch-model-owner",
}
BOARDS = {name: json.loads((DASHBOARDS / name).read_text()) for name in UIDS}
# Metrics Prometheus or client_python's default collectors provide, not DetectorMetrics.
EXTERNAL = {"up", "time"}


# -- tiny readers for our own YAML (no YAML library in the environment) -------------


def parse_rules(text: str) -> list[dict]:
    """Alert rules of alerts.yml: name, expr, labels and annotation keys."""
    rules: list[dict] = []
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s*- alert: (\w+)", line):
            rules.append({"name": m[1], "expr": "", "labels": {}, "annotations": set()})
        elif rules and (m := re.match(r"(\s*)expr: ?(.*)", line)):
            indent, rest = len(m[1]), m[2].strip()
            if rest in ("|", ">", "|-", ">-"):
                block = []
                for nxt in lines[i + 1 :]:
                    if nxt.strip() and len(nxt) - len(nxt.lstrip()) <= indent:
                        break
                    block.append(nxt.strip())
                rest = "\n".join(block)
            rules[-1]["expr"] = rest
        elif rules and (m := re.match(r"\s+severity: (\w+)", line)):
            rules[-1]["labels"]["severity"] = m[1]
        elif rules and (m := re.match(r"\s+(summary|description):", line)):
            rules[-1]["annotations"].add(m[1])
    return rules


def alert_test_cases(text: str) -> dict[str, set[str]]:
    """alertname -> {"fires", "silent"} as covered by alerts.test.yml."""
    cases: dict[str, set[str]] = {}
    lines = text.splitlines()
    for i, line in enumerate(lines):
        if m := re.match(r"\s*alertname: (\w+)", line):
            nxt = lines[i + 1].strip()
            kind = "silent" if nxt == "exp_alerts: []" else "fires"
            assert nxt.startswith("exp_alerts:"), f"alerts.test.yml:{i + 2}: expected exp_alerts"
            cases.setdefault(m[1], set()).add(kind)
    return cases


RULES = parse_rules(ALERTS.read_text())


def metric_names(expr: str) -> set[str]:
    """canwatch_* families referenced by a PromQL expression (sample suffixes stripped)."""
    names = set()
    for name in re.findall(r"\bcanwatch_[a-z0-9_]+", expr):
        base = re.sub(r"_(bucket|sum|count|created)$", "", name)
        names.add(base if base in METRIC_NAMES else name)
    return names


def all_exprs() -> list[tuple[str, str]]:
    out = [(f"{name}: {t}", e) for name, b in BOARDS.items() for t, e in build.panel_queries(b)]
    for name, board in BOARDS.items():
        for var in board["templating"]["list"]:
            if var["type"] == "query":
                out.append((f"{name}: ${var['name']}", var["query"]))
    return out + [(f"alert {r['name']}", r["expr"]) for r in RULES]


# -- static checks -----------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(UIDS))
def test_generated_json_is_current(name):
    assert (DASHBOARDS / name).read_text() == build.render(build.DASHBOARDS[name]()), (
        f"dashboards/{name} is stale: run python dashboards/build.py"
    )


@pytest.mark.parametrize("name", sorted(UIDS))
def test_boards_are_provisionable(name):
    board = BOARDS[name]
    assert board["uid"] == UIDS[name]
    assert board["schemaVersion"] >= 39
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for var in variables.values():
        if var["type"] == "query":
            assert var["multi"] and var["includeAll"] and var["allValue"] == ".*"

    def walk(node, path="$"):
        if isinstance(node, dict):
            for key, val in node.items():
                if key == "uid" and path != "$":
                    assert val == "${datasource}", f"{name} {path}: hard-coded uid {val!r}"
                walk(val, f"{path}.{key}")
        elif isinstance(node, list):
            for i, val in enumerate(node):
                walk(val, f"{path}[{i}]")

    walk(board)
    ids = [p["id"] for p in board["panels"]]
    assert len(ids) == len(set(ids))


def test_soc_board_has_brand_filter_and_histogram_heatmap():
    board = BOARDS["soc-overview.json"]
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "brand"}
    heatmaps = [p for p in board["panels"] if p["type"] == "heatmap"]
    assert heatmaps and heatmaps[0]["options"]["calculate"] is False
    assert all(t["format"] == "heatmap" and "_bucket" in t["expr"] for t in heatmaps[0]["targets"])
    assert {p["type"] for p in board["panels"]} >= {"table", "piechart", "stat", "timeseries"}
    for title, expr in build.panel_queries(board, {**build.DEFAULT_SUBSTITUTIONS, "brand": "@"}):
        if "canwatch_" in expr:
            assert 'brand=~"@"' in expr, f"{title}: ignores the brand variable"


def test_health_board_filters_by_instance():
    board = BOARDS["detector-health.json"]
    values = {**build.DEFAULT_SUBSTITUTIONS, "instance": "@"}
    for title, expr in build.panel_queries(board, values):
        assert 'instance=~"@"' in expr, f"{title}: ignores the instance variable"


def test_model_owner_board_filters_by_brand_and_compares_roles():
    board = BOARDS["model-owner.json"]
    assert {v["name"] for v in board["templating"]["list"]} >= {"datasource", "brand"}
    values = {**build.DEFAULT_SUBSTITUTIONS, "brand": "@"}
    queries = build.panel_queries(board, values)
    # families without a brand label: reload failures (by reason), the drift alert level
    unbranded = {"canwatch_model_reload_failures_total", "canwatch_model_drift_limit"}
    for title, expr in queries:
        if metric_names(expr) - unbranded:
            assert 'brand=~"@"' in expr, f"{title}: ignores the brand variable"
    by_role = {n for _, e in queries if "by (brand, role)" in e for n in metric_names(e)}
    assert by_role >= {
        "canwatch_model_windows_total",
        "canwatch_model_anomalous_windows_total",
        "canwatch_model_incidents_total",
        "canwatch_model_version",
    }
    used = set().union(*(metric_names(e) for _, e in queries))
    assert used >= SHADOW_METRIC_NAMES | {
        "canwatch_model_drift_windows",
        "canwatch_model_drift_outside_windows",
        "canwatch_model_rate_drift",
        "canwatch_model_drift_limit",
        "canwatch_model_reloads_total",
        "canwatch_model_reload_failures_total",
    }


def test_substitute_rejects_unknown_variables():
    assert build.substitute('x{a=~"$brand"}[$__rate_interval]') == 'x{a=~".*"}[1m]'
    with pytest.raises(KeyError):
        build.substitute("rate(x[$nope])")


def test_every_name_in_queries_and_rules_is_exported():
    default_names = {
        s.name for f in DetectorMetrics().registry.collect() for s in f.samples
    }  # process_* and python_* from client_python's default collectors
    for where, expr in all_exprs():
        unknown = metric_names(expr) - METRIC_NAMES
        assert not unknown, f"{where}: {sorted(unknown)} not exported by DetectorMetrics"
        for other in re.findall(r"\b(?:process|python)_[a-z0-9_]+", expr):
            assert other in default_names, f"{where}: {other} not from the default collectors"
        assert not re.search(r"\b(vehicle|can_?id|vin)\b", expr), f"{where}: unbounded label"


def test_no_family_has_a_vehicle_or_can_id_label():
    m = DetectorMetrics(CollectorRegistry())
    m.brand("jeep").incident_opened("high", "dos")
    m.set_model("jeep", "cusw", "v1", 0.5)
    m.set_partition_lag(0, 1.0, 1)
    labels = {label for f in m.registry.collect() for s in f.samples for label in s.labels}
    assert labels and not {x for x in labels if re.search(r"vehicle|can_?id|vin|arb", x)}


def test_every_family_is_on_a_board():
    on_boards = [e for where, e in all_exprs() if not where.startswith("alert")]
    used = set().union(*map(metric_names, on_boards))
    assert METRIC_NAMES - used == set()


def test_every_rule_has_severity_runbook_text_and_both_test_cases():
    cases = alert_test_cases((PROM_DIR / "alerts.test.yml").read_text())
    names = [r["name"] for r in RULES]
    assert len(names) == len(set(names)) >= 8
    for rule in RULES:
        assert rule["expr"], rule["name"]
        assert rule["labels"].get("severity") in {"critical", "warning", "info"}, rule["name"]
        assert rule["annotations"] == {"summary", "description"}, rule["name"]
        assert cases.get(rule["name"]) == {"fires", "silent"}, rule["name"]


def test_provisioning_files():
    provider = (DASHBOARDS / "provisioning" / "dashboards" / "canwatch.yml").read_text()
    assert "type: file" in provider and "path: /var/lib/grafana/dashboards/canwatch" in provider
    # the provider loads every *.json of dashboards/, as build.py writes them
    assert {p.name for p in DASHBOARDS.glob("*.json")} == set(UIDS) == set(build.DASHBOARDS)
    datasource = (DASHBOARDS / "provisioning" / "datasources" / "prometheus.yml").read_text()
    assert "type: prometheus" in datasource


# -- promtool ----------------------------------------------------------------------


def promtool(*args):
    binary = find_binary(PROMTOOL)
    if binary is None:
        pytest.skip("promtool not installed (apt-get install prometheus); CI installs it")
    done = subprocess.run([binary, *args], cwd=PROM_DIR, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@pytest.mark.prometheus
def test_promtool_check_rules():
    assert f"SUCCESS: {len(RULES)} rules found" in promtool("check", "rules", "alerts.yml")


@pytest.mark.prometheus
def test_promtool_test_rules():
    promtool("test", "rules", "alerts.test.yml")


@pytest.mark.prometheus
def test_promtool_check_example_config():
    promtool("check", "config", "prometheus.yml")


# -- a real Prometheus scraping a real DetectorMetrics ------------------------------


def populate(m: DetectorMetrics) -> None:
    m.set_up(True)
    m.set_ready(True)
    m.rebalanced([0, 1])
    m.bytes_consumed.inc(4096)
    for brand, platform in (("jeep", "cusw"), ("peugeot", "aee2010")):
        m.set_model(brand, platform, "2024.06.1", 0.31)
        b = m.brand(brand)
        b.vehicles_active.set(3)
        b.incident_opened("critical", "masquerade")
        b.incident_opened("medium", "dos")
        b.incident_closed("medium", "dos")
    m.model_reload_failed("checksum")
    for p in (0, 1):
        m.set_partition_lag(p, 0.8, 12)
    for brand in ("jeep", "peugeot"):
        m.shadow.set_version(brand, "serving", 2)
    m.shadow.set_version("jeep", "shadow", 3)  # a shadow on one brand
    m.shadow.set_agreement("jeep", 0.97)
    m.drift.set_limit(0.5)
    m.drift.set("jeep", 1000, 40, 0.1)
    m.drift.set("peugeot", 1000, 800, 1.2)


def keep_traffic_flowing(
    m: DetectorMetrics, stop: threading.Event, campaigns: CampaignMetrics
) -> None:
    """Counters that move between scrapes, so rate() has something to show."""
    rng = np.random.default_rng(0)
    while not stop.wait(0.1):
        campaigns.consumed.inc(3)
        campaigns.late.inc()
        campaigns.skip("bad_json")
        for brand in ("jeep", "peugeot"):
            b = m.brand(brand)
            b.records.inc(2)
            b.frames.inc(200)
            b.windows.inc(10)
            b.anomalous.inc(1)
            b.model_windows.inc(10)
            b.model_anomalous.inc(1)
            b.model_incidents.inc()
            b.late_frames.inc()
            b.observe_scores(rng.exponential(0.6, 10))
        windows, anomalous, incidents = m.shadow.shadow_children("jeep")
        windows.inc(10)
        anomalous.inc(2)
        incidents.inc()
        m.bytes_consumed.inc(4800)
        m.dead_letter("bad_json")
        for stage in STAGES:
            m.observe_stage(stage, float(rng.exponential(0.002)))


@pytest.mark.prometheus
def test_every_panel_query_returns_data_from_a_real_prometheus():
    if find_binary(PROMETHEUS) is None:
        pytest.skip("prometheus not installed (apt-get install prometheus); CI installs it")
    metrics = DetectorMetrics(instance="test-1")  # with process_* collectors
    populate(metrics)
    campaigns = CampaignMetrics(CollectorRegistry(), brands=("jeep", "peugeot"))
    campaigns.campaign_opened("jeep", "dos")
    campaigns.set_open({("jeep", "dos"): (1, 3)})
    servers = [metrics.serve("127.0.0.1:0"), campaigns.serve("127.0.0.1:0")]
    stop = threading.Event()
    feeder = threading.Thread(
        target=keep_traffic_flowing, args=(metrics, stop, campaigns), daemon=True
    )
    feeder.start()
    targets = [f"127.0.0.1:{server.server_address[1]}" for server in servers]
    try:
        with PrometheusServer(targets, rule_files=[ALERTS], scrape_interval="1s") as prom:
            # rate() needs two scrapes of each target (both export canwatch_up)
            prom.wait_for("count_over_time(canwatch_build_info[1m]) >= 2")  # the detector
            prom.wait_for("count_over_time(canwatch_campaign_records_consumed_total[1m]) >= 2")
            empty = [
                (title, expr)
                for board in BOARDS.values()
                for title, expr in build.panel_queries(board)
                if not prom.query(expr)
            ]
            assert not empty, f"panel queries without data: {empty}"
            assert {r["metric"]["brand"] for r in prom.query("canwatch_model_info")} == {
                "jeep",
                "peugeot",
            }
            rules = prom.rules()
            assert len(rules) == len(RULES)
            assert all(r["health"] in ("ok", "unknown") for r in rules), rules
    finally:
        stop.set()
        feeder.join(timeout=5)
        for server in servers:
            server.shutdown()
            server.server_close()
