import urllib.request

import numpy as np
import pytest
from numpy.testing import assert_array_equal
from prometheus_client import CollectorRegistry

from detector.core.errors import ConfigError
from detector.service.metrics import (
    ALLOWED_LABELS,
    ATTACKS,
    DEAD_LETTER_REASONS,
    INFO_LABELS,
    METRIC_NAMES,
    SCORE_BUCKETS,
    SEVERITIES,
    STAGES,
    DetectorMetrics,
    bucket_counts,
    parse_address,
)


@pytest.fixture
def m():
    return DetectorMetrics(CollectorRegistry(), instance="test-1")


def value(m, name, **labels):
    return m.registry.get_sample_value(name, labels)


def promql_names(registry):
    """Family names as PromQL sees them (counters carry ``_total``)."""
    return {f.name + "_total" if f.type == "counter" else f.name for f in registry.collect()}


def test_registers_exactly_the_documented_families(m):
    m.brand("jeep")  # labelled families only appear once a child exists
    m.set_model("jeep", "cusw", "v1", 0.5)
    m.set_partition_lag(0, 1.0, 3)
    assert promql_names(m.registry) == METRIC_NAMES


def test_labels_are_bounded(m):
    m.brand("jeep")
    m.set_model("jeep", "cusw", "v1", 0.5)
    m.set_partition_lag(0, 1.0, 3)
    for family in m.registry.collect():
        for sample in family.samples:
            labels = set(sample.labels) - {"le"}
            allowed = ALLOWED_LABELS | (INFO_LABELS if family.name.endswith("_info") else set())
            assert labels <= allowed, (family.name, labels)


def test_default_registry_carries_process_collectors():
    names = {f.name for f in DetectorMetrics().registry.collect()}
    assert {"process_cpu_seconds", "process_resident_memory_bytes", "python_info"} <= names


def test_dead_letter_reasons_and_stages_exist_at_zero(m):
    for reason in DEAD_LETTER_REASONS:
        assert value(m, "canwatch_dead_letters_total", reason=reason) == 0
    for stage in STAGES:
        assert value(m, "canwatch_stage_duration_seconds_count", stage=stage) == 0


def test_build_info_and_liveness(m):
    assert (
        sum(
            s.value
            for f in m.registry.collect()
            if f.name == "canwatch_build_info"
            for s in f.samples
        )
        == 1
    )
    m.set_up(True)
    m.set_ready(False)
    assert value(m, "canwatch_up") == 1
    assert value(m, "canwatch_ready") == 0


def test_brand_children_are_cached_and_count(m):
    b = m.brand("jeep")
    assert m.brand("jeep") is b
    b.records.inc()
    b.frames.inc(500)
    b.windows.inc(10)
    b.anomalous.inc(2)
    b.late_frames.inc(3)
    b.telemetry_gaps.inc(2)
    b.vehicles_active.set(7)
    m.bytes_consumed.inc(12_000)
    assert value(m, "canwatch_records_consumed_total", brand="jeep") == 1
    assert value(m, "canwatch_frames_consumed_total", brand="jeep") == 500
    assert value(m, "canwatch_windows_scored_total", brand="jeep") == 10
    assert value(m, "canwatch_anomalous_windows_total", brand="jeep") == 2
    assert value(m, "canwatch_late_frames_total", brand="jeep") == 3
    assert value(m, "canwatch_telemetry_gaps_total", brand="jeep") == 2
    assert value(m, "canwatch_vehicles_active", brand="jeep") == 7
    assert value(m, "canwatch_bytes_consumed_total") == 12_000
    assert value(m, "canwatch_frames_consumed_total", brand="ram") is None


def test_incident_series_exist_for_a_seen_brand_and_track_active(m):
    b = m.brand("ram")
    for s in SEVERITIES:
        for a in ATTACKS:
            assert (
                value(m, "canwatch_incidents_opened_total", brand="ram", severity=s, attack=a) == 0
            )
    b.incident_opened("critical", "masquerade")
    b.incident_opened("critical", "dos")
    b.incident_closed("critical", "dos")
    assert (
        value(m, "canwatch_incidents_opened_total", brand="ram", severity="critical", attack="dos")
        == 1
    )
    assert (
        value(m, "canwatch_incidents_closed_total", brand="ram", severity="critical", attack="dos")
        == 1
    )
    assert value(m, "canwatch_incidents_active", brand="ram", severity="critical") == 1
    with pytest.raises(ValueError, match="severity must be one of"):
        b.incident_opened("urgent", "dos")
    with pytest.raises(ValueError, match="attack must be one of"):
        b.incident_opened("low", "ddos")


def test_an_incident_that_escalates_moves_the_active_gauge_and_counts_as_escalated(m):
    """An attack that begins mid-window opens low; the next windows take it to critical.
    Before, the metrics kept it low until it closed: no critical alert, no active critical."""
    from detector.core.config import IncidentConfig
    from detector.incidents.tracker import IncidentTracker, Observation
    from detector.service.incident_feed import IncidentFeed

    tracker = IncidentTracker(IncidentConfig(), "det-1")
    feed = IncidentFeed(tracker, m, 1.0)
    statuses = []
    for i, score in enumerate([1.2, 3.0, 12.0, 40.0]):
        o = Observation("VIN1", "jeep", 100.0 + i, 1.0, score, "dos", {"0x100": score}, [], 1)
        statuses += [(e["status"], e["severity"]) for e in feed.account(tracker.observe([o], {}))]
    assert statuses[0] == ("open", "low") and statuses[-1] == ("update", "critical")

    def active(severity: str) -> float:
        return value(m, "canwatch_incidents_active", brand="jeep", severity=severity)

    assert [active(s) for s in SEVERITIES] == [0, 0, 0, 1]
    escalated = {
        s: value(m, "canwatch_incidents_escalated_total", brand="jeep", severity=s, attack="dos")
        for s in SEVERITIES[1:]
    }
    assert escalated == {"medium": 1, "high": 0, "critical": 1}  # 3.0 is medium, 12 critical
    assert value(m, "canwatch_incidents_opened_total", brand="jeep", severity="low", attack="dos")
    assert len(feed.account(tracker.close_all())) == 1
    assert [active(s) for s in SEVERITIES] == [0, 0, 0, 0]
    assert value(
        m, "canwatch_incidents_closed_total", brand="jeep", severity="critical", attack="dos"
    ) == 1


def test_bucket_counts_use_le_semantics():
    counts = bucket_counts(np.array([0.25, 0.26, 1.0, 100.0, 101.0]), SCORE_BUCKETS)
    expected = np.zeros(len(SCORE_BUCKETS) + 1, dtype=int)
    expected[[0, 1, 4, 12, 13]] = 1
    assert_array_equal(counts, expected)


def test_observe_scores_matches_observe_one_by_one():
    rng = np.random.default_rng(7)
    scores = np.concatenate([rng.exponential(0.7, 500), SCORE_BUCKETS, [np.inf, np.nan]])
    fast = DetectorMetrics(CollectorRegistry())
    slow = DetectorMetrics(CollectorRegistry())
    fast.brand("jeep").observe_scores(scores)
    for s in scores[~np.isnan(scores)]:
        slow.brand("jeep").score.observe(s)
    for le in [*map(str, SCORE_BUCKETS), "+Inf"]:
        got = value(fast, "canwatch_anomaly_score_bucket", brand="jeep", le=le)
        assert got == value(slow, "canwatch_anomaly_score_bucket", brand="jeep", le=le), le
    assert value(fast, "canwatch_anomaly_score_count", brand="jeep") == scores.size - 1
    fast.brand("jeep").observe_scores(np.array([]))  # no-op
    assert value(fast, "canwatch_anomaly_score_count", brand="jeep") == scores.size - 1


def test_model_reload_replaces_the_info_series(m):
    m.set_model("jeep", "cusw", "2024.06.1", 0.42)
    m.set_model("jeep", "cusw", "2024.07.0", 0.40)
    info = dict(brand="jeep", platform="cusw")
    assert value(m, "canwatch_model_info", **info, version="2024.06.1") is None
    assert value(m, "canwatch_model_info", **info, version="2024.07.0") == 1
    assert value(m, "canwatch_model_threshold", brand="jeep") == 0.40
    assert value(m, "canwatch_model_reloads_total", brand="jeep") == 2
    m.model_reload_failed("checksum")
    assert value(m, "canwatch_model_reload_failures_total", reason="checksum") == 1
    with pytest.raises(ValueError):
        m.model_reload_failed("because")


def test_dead_letters_and_stages(m):
    m.dead_letter("bad_json")
    m.dead_letter("no_model", 4)
    assert value(m, "canwatch_dead_letters_total", reason="bad_json") == 1
    assert value(m, "canwatch_dead_letters_total", reason="no_model") == 4
    with pytest.raises(ValueError, match="dead-letter reason"):
        m.dead_letter("vehicle 42 is odd")  # free text would explode cardinality
    m.observe_stage("score", 0.003)
    assert value(m, "canwatch_stage_duration_seconds_bucket", stage="score", le="0.0025") == 0
    assert value(m, "canwatch_stage_duration_seconds_bucket", stage="score", le="0.005") == 1
    with pytest.raises(ValueError):
        m.observe_stage("think", 1.0)


def test_rebalance_drops_lag_of_revoked_partitions(m):
    m.set_partition_lag(0, 2.5, 10)
    m.set_partition_lag(1, 1.0, None)
    m.set_partition_lag(5, None, 7)
    m.rebalanced([1, 2])
    assert value(m, "canwatch_rebalances_total") == 1
    assert value(m, "canwatch_partitions_assigned") == 2
    assert value(m, "canwatch_event_time_lag_seconds", partition="0") is None
    assert value(m, "canwatch_consumer_lag_records", partition="0") is None
    assert value(m, "canwatch_consumer_lag_records", partition="5") is None
    assert value(m, "canwatch_event_time_lag_seconds", partition="1") == 1.0


@pytest.mark.parametrize("address", ["9108", ":9108", "0.0.0.0", "host:port", "h:70000"])
def test_parse_address_refuses_implicit_or_bad(address):
    with pytest.raises(ConfigError, match="metrics.address"):
        parse_address(address)


def test_parse_address():
    assert parse_address("127.0.0.1:9108") == ("127.0.0.1", 9108)
    assert parse_address("[::1]:0") == ("::1", 0)


def test_serve_binds_only_the_configured_address(m):
    m.brand("jeep").frames.inc(3)
    server = m.serve("127.0.0.1:0")
    try:
        host, port = server.server_address[:2]
        assert host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
            body = r.read().decode()
        assert 'canwatch_frames_consumed_total{brand="jeep"} 3.0' in body
    finally:
        server.shutdown()
        server.server_close()


def test_every_wire_decode_reason_is_a_dead_letter_label():
    wire = pytest.importorskip("detector.transport.wire")
    assert set(wire.REASONS) <= set(DEAD_LETTER_REASONS)


def test_exposition_has_no_created_series(m):
    """Counters' *_created series doubled the scrape (and its CPU in the detector)."""
    from prometheus_client import generate_latest

    bm = m.brand("jeep")
    bm.observe_scores(np.array([0.2, 1.5]))
    bm.incident_opened("high", "dos")
    text = generate_latest(m.registry).decode()
    assert "canwatch_incidents_opened_total{" in text
    assert "_created" not in text
