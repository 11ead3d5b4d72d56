"""Fleet campaigns through the real (Tansu) broker: two ``detect`` instances share the
telemetry partitions, ``campaigns`` reads the incidents of both and writes one
campaign; replaying the incident topic, or restarting from the committed offsets,
gives the same campaign id.

The campaign's vehicles are chosen one per telemetry partition, so each detector
instance sees only some of them, and their incidents land on different partitions
of a three-partition incident topic.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time

import pytest
from kafka import KafkaConsumer, TopicPartition
from kafka.partitioner.default import murmur2
from prometheus_client import CollectorRegistry

# Shared helpers of the service tests (the tests directory is on sys.path).
from test_campaigns import incident
from test_detect_service import (
    CANWATCH,
    FLEET,
    TopicReader,
    now_start,
    running,
    sample,
    scrape,
    send_all,
    wait_for,
)

from detector.core.config import Config, KafkaConfig, load_config, with_overrides
from detector.incidents.campaigns import campaign_id, latest
from detector.service.campaign_service import CampaignService
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.service.metrics.campaigns import CampaignMetrics
from detector.transport.broker import create_topics, free_port
from detector.transport.kafka_io import make_producer
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

pytestmark = pytest.mark.kafka

TELEMETRY_PARTITIONS = 4
DURATION_S = 30.0
#: DoS on one vehicle per telemetry partition, staggered by 3 s (a campaign of 4 >= 3).
CAMPAIGN = [f"dos:start={6 + 3 * i},duration=5" for i in range(TELEMETRY_PARTITIONS)]
OTHER_ATTACK = "masquerade:start=8,duration=6,id=0x1E4"  # on a fifth vehicle: no campaign


def one_vehicle_per_partition(prefix: str, partitions: int) -> list[str]:
    """Vehicle ids that the default partitioner sends to partitions 0, 1, ... in turn."""
    chosen: dict[int, str] = {}
    i = 0
    while len(chosen) < partitions:
        name = f"{prefix}-{i:03d}"
        chosen.setdefault((murmur2(name.encode()) & 0x7FFFFFFF) % partitions, name)
        i += 1
    return [chosen[p] for p in range(partitions)]


def campaign_config(broker, unique_topic, models) -> Config:
    cfg = load_config(
        None,
        env={},
        overrides={
            "kafka.bootstrap": broker.bootstrap,
            "kafka.telemetry_topic": unique_topic("telemetry"),
            "kafka.incident_topic": unique_topic("incidents"),
            "kafka.dlq_topic": unique_topic("dlq"),
            "kafka.campaign_topic": unique_topic("campaigns"),
            "kafka.group_id": unique_topic("detect"),
            "models.dir": str(models),
            "campaigns.group_id": unique_topic("campaigns-group"),
            "campaigns.min_vehicles": 3,
            "campaigns.lateness_s": 5.0,
        },
    )
    k = cfg.kafka
    create_topics(
        broker.bootstrap,
        {
            k.telemetry_topic: TELEMETRY_PARTITIONS,
            k.incident_topic: 3,
            k.dlq_topic: 1,
            k.campaign_topic: 1,
        },
    )
    return cfg


def fleet(seed: int = 3100) -> tuple[list, list[str], str]:
    """Streams of the campaign's vehicles, one with another attack, one benign."""
    start = now_start(DURATION_S)
    campaign = one_vehicle_per_partition("veh-jeep-camp", TELEMETRY_PARTITIONS)
    other, benign = "veh-jeep-other-1", "veh-jeep-benign-1"
    specs = dict(zip(campaign, CAMPAIGN, strict=True)) | {other: OTHER_ATTACK, benign: None}
    streams = []
    for i, (vehicle, spec) in enumerate(specs.items()):
        frames = simulate_vehicle("cusw", DURATION_S, start, seed=seed + i)
        if spec:
            frames, _ = inject(frames, AttackSpec.parse(spec), seed=seed + i)
        streams.append((vehicle, "jeep", frames))
    return streams, campaign, other


def campaigns_running(cfg: Config):
    """``CampaignService.run`` in a thread (``running``: stopped, joined, errors raised)."""
    service = CampaignService(cfg, CampaignMetrics(CollectorRegistry(), brands=("jeep",)))
    return running(service, "campaign service")


def campaigns_of(cfg: Config, service: CampaignService, vehicles: int) -> list[dict]:
    """Every record on the campaign topic, once one campaign holds ``vehicles`` vehicles
    and the service has read the incident topic to its end."""
    reader = TopicReader(cfg.kafka.bootstrap, cfg.kafka.campaign_topic)
    try:

        def done() -> bool:
            now = latest(reader.events()).values()
            return service.settled and any(c["vehicle_count"] >= vehicles for c in now)

        wait_for(f"a campaign of {vehicles} vehicles on {cfg.kafka.campaign_topic}", done)
        return reader.events()
    finally:
        reader.close()


def committed(cfg: Config) -> dict[int, int | None]:
    """The offsets committed under ``campaigns.group_id``, per incident partition."""
    consumer = KafkaConsumer(bootstrap_servers=cfg.kafka.bootstrap, group_id=cfg.campaigns.group_id)
    try:
        parts = consumer.partitions_for_topic(cfg.kafka.incident_topic)
        tps = [TopicPartition(cfg.kafka.incident_topic, p) for p in sorted(parts)]
        return {tp.partition: consumer.committed(tp) for tp in tps}
    finally:
        consumer.close()


def test_two_detectors_one_campaign_and_replays_give_its_id(broker, unique_topic, cusw_models):
    cfg = campaign_config(broker, unique_topic, cusw_models)
    streams, campaign, other = fleet()
    incidents = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    det_metrics = {d: DetectorMetrics(CollectorRegistry()) for d in ("det-a", "det-b")}
    try:
        with (
            running(Detector(cfg, FLEET, det_metrics["det-a"], "det-a")),
            running(Detector(cfg, FLEET, det_metrics["det-b"], "det-b")),
            campaigns_running(cfg) as live,
        ):

            def shared() -> bool:
                held = [sample(m, "canwatch_partitions_assigned") for m in det_metrics.values()]
                return min(held) > 0 and sum(held) == TELEMETRY_PARTITIONS

            wait_for("both detectors holding telemetry partitions", shared)
            send_all(cfg, streams)

            def closed() -> bool:
                done = {e["vehicle"] for e in incidents.events() if e["status"] == "closed"}
                return set(campaign) | {other} <= done

            wait_for("every attacked vehicle's incident closed", closed)
            records = campaigns_of(cfg, live, len(campaign))
            live_metrics = live.metrics
        live_committed = {tp.partition: o for tp, o in live.committed.items()}
        events = incidents.events()
    finally:
        incidents.close()

    # the campaign's incidents came from both detectors, over several incident partitions
    mine = [e for e in events if e["vehicle"] in campaign]
    assert {e["detector"] for e in mine} == {"det-a", "det-b"}
    assert len({r.partition for r in incidents.records if r.key.decode() in campaign}) == 3
    assert {e["suspected_attack"] for e in mine} == {"dos"}
    # ... and make exactly one campaign, with every member and nothing else
    now = latest(records)
    assert len(now) == 1, records
    (camp,) = now.values()
    assert set(camp["vehicles"]) == set(campaign)
    assert {m["incident_id"] for m in camp["members"]} == {e["incident_id"] for e in mine}
    assert (camp["brand"], camp["suspected_attack"], camp["can_id"]) == ("jeep", "dos", "0x000")
    assert camp["status"] in ("open", "update")  # window_s (30 min) has not passed
    assert [r["status"] for r in records][0] == "open"
    assert records[0]["vehicle_count"] == 3
    labels = {"brand": "jeep", "attack": "dos"}
    get = live_metrics.registry.get_sample_value
    assert get("canwatch_campaigns_opened_total", labels) == 1
    assert get("canwatch_campaigns_active", labels) == 1
    assert get("canwatch_campaign_vehicles", labels) == len(campaign)
    assert get("canwatch_campaign_records_consumed_total") == len(events)
    # late: the test's event time runs ~15x faster than the wall clock the quiet
    # service's clock runs on; late records are still used (docs/campaigns.md)
    print(f"\nlate records in the live run: {get('canwatch_campaign_records_late_total')}")
    assert committed(cfg) == live_committed  # what the service said it committed

    # replay: a new group reads the incident topic from the start, into a new topic
    replay_cfg = with_overrides(
        cfg,
        kafka={"campaign_topic": unique_topic("campaigns-replay")},
        campaigns={"group_id": unique_topic("campaigns-replay")},
    )
    create_topics(broker.bootstrap, {replay_cfg.kafka.campaign_topic: 1})
    with campaigns_running(replay_cfg) as replay:
        replayed = campaigns_of(replay_cfg, replay, len(campaign))
    assert latest(replayed).keys() == now.keys()
    assert set(latest(replayed)[camp["campaign_id"]]["vehicles"]) == set(campaign)

    # restart: the first group resumes from its committed offsets, held back to the
    # open campaign's first incident, and rebuilds it under the same id
    restart_cfg = with_overrides(cfg, kafka={"campaign_topic": unique_topic("campaigns-restart")})
    create_topics(broker.bootstrap, {restart_cfg.kafka.campaign_topic: 1})
    with campaigns_running(restart_cfg) as restarted:
        again = campaigns_of(restart_cfg, restarted, len(campaign))
    assert latest(again).keys() == now.keys()


# -- the command line ------------------------------------------------------------------


def test_campaigns_command_and_incidents_campaigns(broker, unique_topic, tmp_path):
    """``canwatch campaigns`` as a process on incident records (three vehicles, one
    record that is no incident, an unrelated incident); ``canwatch incidents
    --campaigns`` lists the campaign; metrics count it; SIGTERM ends it with 0."""
    k = KafkaConfig(
        bootstrap=broker.bootstrap,
        incident_topic=unique_topic("incidents"),
        campaign_topic=unique_topic("campaigns"),
    )
    create_topics(broker.bootstrap, {k.incident_topic: 2, k.campaign_topic: 1})
    t0 = time.time() - 120
    records = [incident(f"veh-ram-{i}", t0 + 10 * i, brand="ram", can_id="0x2C2") for i in range(3)]
    records.append(incident("veh-ram-9", t0 + 5, brand="ram", attack="fuzzing"))
    producer = make_producer(k)
    for r in records:
        producer.send(k.incident_topic, key=r["vehicle"].encode(), value=json.dumps(r).encode())
    producer.send(k.incident_topic, key=b"x", value=b"not json")
    producer.flush(timeout=10)
    producer.close()
    config = tmp_path / "canwatch.toml"
    config.write_text(
        f'[kafka]\nincident_topic = "{k.incident_topic}"\ncampaign_topic = "{k.campaign_topic}"\n'
        f'[campaigns]\nlateness_s = 1.0\ngroup_id = "{unique_topic("group")}"\n',
        encoding="utf-8",
    )
    port = free_port()
    common = ["--config", str(config), "--bootstrap", broker.bootstrap]
    err = tmp_path / "campaigns.err"
    with open(err, "wb") as stderr:
        proc = subprocess.Popen(
            [CANWATCH, "campaigns", *common, "--metrics", f"127.0.0.1:{port}"],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
    try:

        def counted() -> bool:
            assert proc.poll() is None, err.read_text()
            try:
                samples = scrape(f"http://127.0.0.1:{port}/metrics")
            except OSError:
                return False
            key = ("canwatch_campaigns_opened_total", (("attack", "dos"), ("brand", "ram")))
            return samples.get(key) == 1

        wait_for("the campaign counted in the metrics", counted)
        listed = subprocess.run(
            [CANWATCH, "incidents", "--campaigns", *common],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        header, *rows = listed.stdout.splitlines()
        assert header.startswith("FIRST SEEN (UTC)") and len(rows) == 1, listed.stdout
        assert all(w in rows[0] for w in ("open", "ram", "dos", "0x2C2", "veh-ram-0,veh-ram-1"))
        as_json = subprocess.run(
            [CANWATCH, "incidents", "--campaigns", "--json", *common],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        (camp,) = [json.loads(line) for line in as_json.stdout.splitlines()]
        assert camp["vehicles"] == ["veh-ram-0", "veh-ram-1", "veh-ram-2"]
        assert camp["campaign_id"] == campaign_id("ram", "dos", "0x2C2", records[0]["incident_id"])
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0, err.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "skipping" in err.read_text() and "not an incident" in err.read_text()


def test_campaigns_command_bad_config_is_one_line(tmp_path):
    done = subprocess.run(
        [CANWATCH, "campaigns", "--min-vehicles", "1"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2
    assert done.stderr == (
        "canwatch campaigns: error: campaigns.min_vehicles must be in [2, 1000000], got 1\n"
    )
