"""Fleet campaigns, the pure part: incident records to campaign records
(detector/incidents/campaigns.py), without a broker."""

from __future__ import annotations

import math
import random
import zlib

import pytest
from prometheus_client import CollectorRegistry

from detector.core.config import CampaignsConfig
from detector.incidents.campaigns import (
    OPEN_GRACE_S,
    BadIncident,
    Correlator,
    EventTimeOrder,
    campaign_id,
    correlate,
    latest,
    sighting,
    sightings,
    watermark,
)
from detector.service.metrics.campaigns import CAMPAIGN_METRIC_NAMES, CampaignMetrics

CFG = CampaignsConfig(min_vehicles=3, window_s=600.0)


def incident(
    vehicle: str,
    start: float,
    status: str = "open",
    *,
    end: float | None = None,
    attack: str = "dos",
    can_id: str | int = "0x000",
    brand: str = "jeep",
) -> dict:
    """An incident record as canwatch detect writes it (the fields campaigns read)."""
    return {
        "incident_id": f"inc-{vehicle}-{start:g}",
        "status": status,
        "vehicle": vehicle,
        "brand": brand,
        "first_seen": start,
        "last_seen": start + 1.0 if end is None else end,
        "windows": 1,
        "peak_score": 12.0,
        "severity": "critical",
        "suspected_attack": attack,
        "can_ids": [{"can_id": can_id, "score": 12.0}, {"can_id": "0x1E4", "score": 1.5}],
        "evidence": [{"text": "..."}],
        "model_version": 1,
        "detector": "det-a",
    }


def members(record: dict) -> set[str]:
    return {m["vehicle"] for m in record["members"]}


# -- reading incident records ----------------------------------------------------------


def test_a_sighting_keys_on_brand_attack_and_the_top_id():
    s = sighting(incident("v1", 100.0, can_id="0x1e4"), partition=2, offset=7)
    assert s.key == ("jeep", "dos", "0x1E4")
    assert (s.first_seen, s.last_seen, s.partition, s.offset) == (100.0, 101.0, 2, 7)
    assert sighting(incident("v1", 1.0, can_id=0x18FEF100 | 0x8000_0000)).can_id == "0x18FEF100x"
    assert sighting(incident("v1", 1.0, can_id="0x18FEF100x")).can_id == "0x18FEF100x"
    for kind in ("error frames", "remote frames"):  # floods of a kind of frame, not an id
        assert sighting(incident("v1", 1.0, can_id=kind)).can_id == kind


@pytest.mark.parametrize(
    "change, message",
    [
        ({"can_ids": []}, "can_ids must be a non-empty list"),
        ({"can_ids": [{"can_id": "zz"}]}, "can_ids[0] is not a CAN id: 'zz'"),
        ({"suspected_attack": "ddos"}, "suspected_attack 'ddos' is not a known attack"),
        ({"status": "gone"}, "status must be open, update or closed, got 'gone'"),
        ({"first_seen": "soon"}, "first_seen must be a finite number, got 'soon'"),
        ({"last_seen": float("nan")}, "last_seen must be a finite number"),
        ({"last_seen": 50.0}, "last_seen 50.0 is before first_seen 100.0"),
        ({"vehicle": ""}, "vehicle must be a non-empty string"),
    ],
)
def test_unusable_records_name_what_is_wrong(change, message):
    with pytest.raises(BadIncident) as err:
        sighting(incident("v1", 100.0) | change)
    assert err.value.reason == "bad_shape"
    assert message in str(err.value)


def test_each_other_attack_of_an_incident_is_a_sighting_of_its_own_id():
    """``attack_ids``: a flood of 0x000 that is also spoofing of 0x1E4 is seen under
    both keys; the same id suspected of two attacks stays one sighting."""
    both = incident("v1", 100.0) | {"attack_ids": {"dos": "0x000", "spoofing": "0x1e4"}}
    assert [s.key for s in sightings(both)] == [
        ("jeep", "dos", "0x000"), ("jeep", "spoofing", "0x1E4")
    ]
    # the incident's top id (one strong spoofing window) is not the flood's: each attack
    # is keyed on its own
    crossed = incident("v1", 100.0, can_id="0x1E4") | {
        "attack_ids": {"dos": "0x000", "spoofing": "0x1E4"}
    }
    assert [s.key for s in sightings(crossed)] == [
        ("jeep", "dos", "0x000"), ("jeep", "spoofing", "0x1E4")
    ]
    one_id = incident("v1", 100.0) | {"attack_ids": {"dos": "0x000", "spoofing": "0x000"}}
    assert [s.key for s in sightings(one_id)] == [("jeep", "dos", "0x000")]
    assert [s.key for s in sightings(incident("v1", 100.0))] == [("jeep", "dos", "0x000")]
    with pytest.raises(BadIncident, match="'ddos' is not a known attack"):
        sightings(incident("v1", 100.0) | {"attack_ids": {"ddos": "0x000"}})
    with pytest.raises(BadIncident, match="is not a CAN id"):
        sightings(incident("v1", 100.0) | {"attack_ids": {"spoofing": "zz"}})


def test_a_second_attack_inside_another_incident_counts_toward_its_campaign():
    """Spoofing of 0x1E4 on three vehicles, one of them in a flood at the time (its
    incident's suspected attack is the flood): still a campaign of three."""
    flooded = incident("v0", 100.0) | {"attack_ids": {"dos": "0x000", "spoofing": "0x1E4"}}
    spoofed = [incident(f"v{i}", 100.0 + 60 * i, attack="spoofing", can_id="0x1E4")
               for i in (1, 2)]  # fmt: skip
    out = correlate([flooded, *spoofed], CFG)
    assert [(r["status"], r["suspected_attack"], r["can_id"]) for r in out] == [
        ("open", "spoofing", "0x1E4")
    ]
    assert members(out[0]) == {"v0", "v1", "v2"}


def test_a_record_that_is_not_an_object_is_bad_shape():
    with pytest.raises(BadIncident, match="must be a JSON object"):
        sighting([1, 2])


# -- correlation -----------------------------------------------------------------------


def test_k_vehicles_within_the_window_are_one_campaign_and_a_fourth_joins_it():
    records = [incident(f"v{i}", 100.0 + 60 * i) for i in range(4)]
    out = correlate(records, CFG)
    assert [r["status"] for r in out] == ["open", "update"]
    opened, joined = out
    assert opened["campaign_id"] == joined["campaign_id"]
    assert opened["campaign_id"] == campaign_id("jeep", "dos", "0x000", "inc-v0-100")
    assert members(opened) == {"v0", "v1", "v2"} and opened["vehicle_count"] == 3
    assert members(joined) == {"v0", "v1", "v2", "v3"}
    assert joined["vehicles"] == ["v0", "v1", "v2", "v3"]
    assert [m["incident_id"] for m in joined["members"]][-1] == "inc-v3-280"
    assert (joined["first_seen"], joined["last_seen"]) == (100.0, 281.0)
    assert (joined["brand"], joined["suspected_attack"], joined["can_id"]) == (
        "jeep",
        "dos",
        "0x000",
    )


def test_fewer_vehicles_or_different_keys_are_no_campaign():
    assert correlate([incident("v0", 0.0), incident("v1", 10.0)], CFG) == []
    mixed = [
        incident("v0", 0.0),
        incident("v1", 10.0, brand="ram"),
        incident("v2", 20.0, attack="spoofing"),
        incident("v3", 30.0, can_id="0x1E4"),
    ]
    assert correlate(mixed, CFG) == []


def test_one_vehicle_counts_once_however_many_incidents_it_has():
    records = [incident("v0", t) for t in (0.0, 50.0, 100.0)] + [incident("v1", 120.0)]
    assert correlate(records, CFG) == []
    out = correlate([*records, incident("v2", 130.0)], CFG)
    assert len(out) == 1 and out[0]["vehicle_count"] == 3 and out[0]["incident_count"] == 5


def test_vehicles_further_apart_than_the_window_are_no_campaign():
    records = [incident("v0", 0.0), incident("v1", 650.0), incident("v2", 1200.0)]
    assert correlate(records, CFG) == []  # v0 inactive for 600 s when v2 appears
    # v0's incident still active at 700 (its last record): then v2 at 1200 is within it
    active = [incident("v0", 0.0, "update", end=700.0), *records[1:]]
    assert len(correlate(active, CFG)) == 1


def test_a_campaign_closes_after_a_quiet_window_and_a_later_wave_is_a_new_campaign():
    wave1 = [incident(f"v{i}", 100.0 + i) for i in range(3)]
    wave2 = [incident(f"w{i}", 2000.0 + i) for i in range(3)]
    out = correlate(wave1 + wave2, CFG, until=5000.0)
    assert [r["status"] for r in out] == ["open", "closed", "open", "closed"]
    first, second = out[0]["campaign_id"], out[2]["campaign_id"]
    assert first != second
    assert out[1]["campaign_id"] == first and members(out[1]) == {"v0", "v1", "v2"}
    corr = Correlator(CFG)
    for r in wave1:
        corr.observe(sighting(r))
    # 600 s after the last record of incidents not closed: still open, for the grace
    # their detectors' heartbeat leaves; a closed record ends an incident at once
    assert corr.advance(103.0 + 600.0 + OPEN_GRACE_S) == []
    assert [r["status"] for r in corr.advance(703.5 + OPEN_GRACE_S)] == ["closed"]
    corr = Correlator(CFG)
    for r in wave1:
        corr.observe(sighting(r))
        corr.observe(sighting(r | {"status": "closed"}))
    assert [r["status"] for r in corr.advance(703.5)] == ["closed"]


def test_updates_of_member_incidents_keep_a_campaign_open_without_new_records():
    records = [incident(f"v{i}", 100.0 + i) for i in range(3)]
    records.append(incident("v0", 100.0, "update", end=600.0))
    out = correlate(records, CFG, until=1150.0 + OPEN_GRACE_S)
    assert [r["status"] for r in out] == ["open"]  # active until 600 + 600 (+ the grace)
    assert correlate(records, CFG, until=1201.0 + OPEN_GRACE_S)[-1]["status"] == "closed"


def test_a_campaign_stays_open_through_a_long_attack_on_its_vehicles():
    """Open incidents were sent only at windows 1, 2, 4, ... 2048: past window_s between
    two records, the campaign of a 2-hour flood closed at 2048 s and opened again at 4096
    (its alert cleared mid-attack). The tracker now sends an open incident at least every
    HEARTBEAT_S, and the correlator holds an incident not closed that much longer."""
    from detector.core.config import IncidentConfig
    from detector.incidents.tracker import HEARTBEAT_S, IncidentTracker, Observation

    assert OPEN_GRACE_S >= 2 * HEARTBEAT_S
    tracker = IncidentTracker(IncidentConfig(), "det-a")
    records = []
    for t in range(0, 7200):  # three vehicles flooded for two hours, 1 s windows
        obs = [Observation(f"v{i}", "jeep", 1000.0 + t, 1.0, 20.0, "dos", {"0x000": 20.0}, [], 1)
               for i in range(3)]  # fmt: skip
        records += tracker.observe(obs, {})
    records += tracker.close_all()
    out = correlate(records, CampaignsConfig(min_vehicles=3, window_s=300.0), until=9000.0)
    assert [r["status"] for r in out if r["status"] != "update"] == ["open", "closed"]
    assert out[-1]["last_seen"] == 1000.0 + 7200


def test_a_vehicle_in_two_campaigns_of_one_attack_counts_once_in_the_gauge():
    from detector.service.campaign_service import open_by_attack

    records = [incident(f"v{i}", 100.0 + i, attack="spoofing", can_id=c)
               for c in ("0x1E4", "0x2C2") for i in range(3)]  # fmt: skip
    corr = Correlator(CFG)
    for r in records:
        corr.observe(sighting(r))
    assert open_by_attack(corr.open) == {("jeep", "spoofing"): (2, 3)}  # was 6 vehicles


def test_a_backlog_after_a_detector_outage_is_judged_by_its_own_event_time():
    """While the topic was quiet the clock ran on at wall-clock speed: a detector down for
    40 minutes then sent incidents the clock had passed, and they were skipped as stale
    (a replay of the same topic opened the campaign)."""
    corr = Correlator(CFG)
    for r in (incident("v0", 100.0), incident("v1", 120.0)):
        corr.observe(sighting(r))
    assert corr.close_quiet(121.0 + 2400.0) == []  # quiet for 40 minutes
    events, fate = corr.observe(sighting(incident("v2", 140.0)))
    assert fate == "in_order" and [e["status"] for e in events] == ["open"]
    assert events == correlate([incident(v, t) for v, t in (("v0", 100.0), ("v1", 120.0),
                                                           ("v2", 140.0))], CFG)  # fmt: skip
    # an open campaign closed while quiet opens again under its id when the backlog
    # shows it was still going on; a later wave is a campaign of its own
    closed = corr.close_quiet(141.0 + 600.0 + OPEN_GRACE_S + 1.0)
    first = events[0]["campaign_id"]
    assert [(e["status"], e["campaign_id"]) for e in closed] == [("closed", first)]
    again, _ = corr.observe(sighting(incident("v3", 150.0)))
    assert [(e["status"], e["campaign_id"], e["vehicle_count"]) for e in again] == [
        ("open", first, 3), ("update", first, 4)]
    assert again[0]["reopened"] and "reopened" not in events[0]
    # closed while quiet, it holds no offset back: a restart would publish it again
    held = Correlator(CFG)
    for n, r in enumerate(incident(f"v{i}", 100.0 + i) for i in range(3)):
        held.observe(sighting(r, 0, 10 + n))
    assert held.held_offsets() == {0: 10}
    assert held.close_quiet(10_000.0) and held.quiet_closed and held.held_offsets() == {}
    # a late record the event clock has passed reopens nothing (a replay had closed it)
    corr.observe(sighting(incident("v9", 2000.0)))
    assert corr.observe(sighting(incident("v4", 1300.0)))[0] == []
    later, _ = corr.observe(sighting(incident("w0", 5000.0)))
    assert later == [] and not corr.quiet_closed  # long past: nothing to reopen


def test_stale_and_late_sightings():
    corr = Correlator(CFG)
    corr.observe(sighting(incident("v0", 1000.0)))
    assert corr.observe(sighting(incident("v1", 300.0)))[1] == "stale"
    assert corr.observe(sighting(incident("v2", 900.0)))[1] == "late"
    assert corr.observe(sighting(incident("v3", 1001.0)))[1] == "in_order"


def test_member_lists_are_capped_but_counts_are_exact():
    cfg = CampaignsConfig(min_vehicles=3, window_s=600.0, max_members=2)
    out = correlate([incident(f"v{i}", 10.0 * i) for i in range(5)], cfg)
    assert out[-1]["vehicle_count"] == 5 and out[-1]["incident_count"] == 5
    assert len(out[-1]["members"]) == 2 and out[-1]["vehicles"] == ["v0", "v1"]


def test_latest_keeps_the_last_record_of_each_campaign():
    out = correlate([incident(f"v{i}", 10.0 * i) for i in range(4)], CFG)
    assert [r["status"] for r in latest(out).values()] == ["update"]


# -- event-time order across partitions ----------------------------------------------


def test_watermark():
    assert watermark({}, [0], 5.0) == -math.inf  # a partition behind, nothing read from it
    assert watermark({0: 100.0, 1: 50.0}, [1], 5.0) == 45.0
    assert watermark({0: 100.0, 1: 50.0}, [], 5.0) == 95.0


def test_event_time_order_releases_sorted_and_holds_offsets():
    order = EventTimeOrder()
    for p, o, t in [(0, 5, 30.0), (1, 9, 10.0), (0, 6, 20.0)]:
        order.add(sighting(incident(f"v{o}", t - 1.0), partition=p, offset=o))
    assert order.held_offsets() == {0: 5, 1: 9}
    assert [s.last_seen for s in order.release(25.0)] == [10.0, 20.0]
    assert order.held_offsets() == {0: 5} and len(order) == 1 and order.newest == 30.0


def read_interleaved(partitions: list[list[dict]], rng: random.Random, lateness: float) -> list:
    """What the service does, with the partitions read in a random interleaving: hold
    each record, release what the watermark passed, fold; all of it at the end."""
    order, corr = EventTimeOrder(), Correlator(CFG)
    pos = [0] * len(partitions)
    out: list[dict] = []
    while any(pos[p] < len(recs) for p, recs in enumerate(partitions)):
        p = rng.choice([p for p, recs in enumerate(partitions) if pos[p] < len(recs)])
        for _ in range(rng.randint(1, 3)):
            if pos[p] < len(partitions[p]):
                order.add(sighting(partitions[p][pos[p]], partition=p, offset=pos[p]))
                pos[p] += 1
        behind = [q for q, recs in enumerate(partitions) if pos[q] < len(recs)]
        for s in order.release(watermark(order.high, behind, lateness)):
            out += corr.observe(s)[0]
    for s in order.release(math.inf):
        out += corr.observe(s)[0]
    return out


def test_any_interleaving_of_the_partitions_gives_the_same_campaigns():
    """Eight vehicles of one campaign and unrelated incidents on three partitions, each
    partition in its own (detectors') order, disordered by up to 20 s: with a lateness of
    20 s every interleaving gives what the whole set gives in event-time order; with
    none, the interleaving decides which vehicles open the campaign."""
    events = [incident(f"v{i}", 100.0 + i) for i in range(8)]
    events += [incident(f"v{i}", 100.0 + i, "closed", end=140.0 + i) for i in range(8)]
    events += [incident("x0", 101.0, attack="fuzzing", can_id="0x3A1")]
    events += [incident(f"y{i}", 103.0 + i, brand="ram") for i in range(2)]
    partitions: list[list[dict]] = [[], [], []]
    for ev in events:
        partitions[zlib.crc32(ev["vehicle"].encode()) % 3].append(ev)
    for recs in partitions:
        recs.sort(key=lambda r: r["last_seen"] + random.Random(r["vehicle"]).uniform(-10, 10))
    expected = correlate(events, CFG)
    assert [r["status"] for r in expected] == ["open"] + ["update"] * 5
    assert members(expected[0]) == {"v0", "v1", "v2"} and expected[-1]["vehicle_count"] == 8
    runs = [read_interleaved(partitions, random.Random(seed), lateness=20.0) for seed in range(30)]
    assert all(run == expected for run in runs)
    unordered = [read_interleaved(partitions, random.Random(seed), 0.0) for seed in range(30)]
    assert any(run != expected for run in unordered)  # the test can tell


# -- metrics ---------------------------------------------------------------------------


def test_campaign_metrics_families_and_labels():
    m = CampaignMetrics(CollectorRegistry(), brands=("jeep",))
    m.campaign_opened("jeep", "dos")
    m.set_open({("jeep", "dos"): (1, 4)})
    m.skip("bad_json")
    get = m.registry.get_sample_value
    assert get("canwatch_campaigns_opened_total", {"brand": "jeep", "attack": "dos"}) == 1
    assert get("canwatch_campaigns_opened_total", {"brand": "jeep", "attack": "replay"}) == 0
    assert get("canwatch_campaigns_active", {"brand": "jeep", "attack": "dos"}) == 1
    assert get("canwatch_campaign_vehicles", {"brand": "jeep", "attack": "dos"}) == 4
    m.set_open({})
    assert get("canwatch_campaigns_active", {"brand": "jeep", "attack": "dos"}) == 0
    assert get("canwatch_campaign_records_skipped_total", {"reason": "bad_json"}) == 1
    names = {f.name + ("_total" if f.type == "counter" else "") for f in m.registry.collect()}
    assert names == CAMPAIGN_METRIC_NAMES | {"canwatch_up", "canwatch_ready"}
    labels = {k for f in m.registry.collect() for s in f.samples for k in s.labels}
    assert labels == {"brand", "attack", "reason"}
    with pytest.raises(ValueError, match="attack must be one of"):
        m.campaign_opened("jeep", "ddos")


def test_the_service_counts_records_not_sightings():
    """A record with two attacks is two sightings, but one record late or stale."""
    import json
    import time
    from types import SimpleNamespace

    from kafka import TopicPartition

    from detector.core.config import load_config
    from detector.service.campaign_service import CampaignService

    cfg = load_config(None, overrides={"campaigns.window_s": 600.0, "campaigns.lateness_s": 0.0})
    registry = CollectorRegistry()
    service = CampaignService(cfg, CampaignMetrics(registry, brands=("jeep",)))
    tp = TopicPartition(cfg.kafka.incident_topic, 0)
    now = time.time()
    two = {"attack_ids": {"dos": "0x000", "spoofing": "0x1E4"}}

    def feed(record: dict, offset: int) -> None:
        service._take({tp: [SimpleNamespace(value=json.dumps(record).encode(), offset=offset)]})
        service.last_record_at = time.monotonic() - 100  # quiet: fold everything
        service._fold(set())

    feed(incident("v9", now - 100), 0)
    feed(incident("v1", now - 5000) | two, 1)  # older than the window: stale
    feed(incident("v2", now - 300) | two, 2)  # behind the clock: late

    def value(name: str, **labels) -> float:
        return registry.get_sample_value(name, labels) or 0.0

    assert value("canwatch_campaign_records_consumed_total") == 3
    assert value("canwatch_campaign_records_skipped_total", reason="stale") == 1
    assert value("canwatch_campaign_records_late_total") == 1
