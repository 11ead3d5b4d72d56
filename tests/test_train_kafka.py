"""``canwatch train --from-kafka`` through the embedded broker.

A small simulated fleet is published to a telemetry topic with each record
stamped at its upload time (its last frame), the way a gateway's producer
stamps it, so ``--since``/``--until`` select a span. Then:

- the model trained from the topic is the model ``canwatch train`` fits from
  the same frames written to files, one file per vehicle, grouped by vehicle;
- a DoS on one vehicle, with its incident on the incident topic as the
  detector's tracker makes it, is left out: the manifest names it, and the
  flooded id is not learned (it is, with no incident topic);
- bad input gives one line on stderr, exit 2 and no model.
"""

from __future__ import annotations

import json
from datetime import datetime
from pathlib import Path

import numpy as np
import pytest

from detector.cli import main
from detector.core.config import IncidentConfig, KafkaConfig
from detector.incidents.privacy import pseudonym
from detector.incidents.tracker import IncidentTracker, Observation
from detector.model.store import list_manifests, load_model
from detector.transport.broker import create_topics, free_port
from detector.transport.kafka_io import make_producer
from detector.transport.wire import encode_record
from replay.attacks import AttackSpec, inject
from replay.publisher import interleave
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

T0 = 1_700_000_030.0  # simulated traffic starts here; a 60 s block boundary at T0 + 30
DURATION_S = 60.0
SINCE, UNTIL = T0 + 5.0, T0 + 55.0  # the span: crosses the block boundary
UNTIL_ISO = "2023-11-14T22:14:45Z"
VEHICLES = ["veh-jeep-a", "veh-jeep-b", "veh-jeep-c"]
#: the model serves jeep, fiat and fiat-professional (cusw): a fiat trains too, a dodge
#: (pacifica) does not
BRAND = {"veh-fiat-x": ("fiat", "cusw"), "veh-dodge-x": ("dodge", "pacifica")}
TRAINED = sorted([*VEHICLES, "veh-fiat-x"])
DOS_START_S, DOS_S = 25.0, 6.0


def fleet(attack_on: str | None = None) -> list[tuple[str, str, np.ndarray]]:
    """Three jeeps, a fiat (another brand of their platform) and a dodge (another
    platform), timestamps on whole microseconds so candump files hold them exactly."""
    out = []
    for i, vehicle in enumerate([*VEHICLES, *BRAND]):
        brand, platform = BRAND.get(vehicle, ("jeep", "cusw"))
        frames = simulate_vehicle(platform, DURATION_S, T0, seed=40 + i)
        if vehicle == attack_on:
            frames, _ = inject(frames, AttackSpec("dos", DOS_START_S, DOS_S), seed=1)
            frames["label"] = 0  # the wire carries no labels: only the incident tells
        frames["ts"] = np.round(frames["ts"] * 1e6) / 1e6
        out.append((vehicle, brand, frames))
    return out


def publish(
    bootstrap: str, topic: str, streams: list, skew: dict[str, float] | None = None
) -> dict[str, np.ndarray]:
    """Publish as upload batches stamped at their last frame (plus a vehicle's gateway
    clock ``skew``); returns each cusw vehicle's frames of the span by event time. Every
    record is stamped within the default lateness (900 s) of the span, so all are read."""
    producer = make_producer(KafkaConfig(bootstrap=bootstrap))
    span: dict[str, list] = {}
    garbage = True
    for batch in interleave(streams):
        stamp = int((batch.due + (skew or {}).get(batch.vehicle, 0.0)) * 1000)
        if garbage and stamp >= SINCE * 1000:  # a record of the span that does not decode
            producer.send(topic, key=b"veh-jeep-a", value=b"garbage", timestamp_ms=stamp)
            garbage = False
        key, value, headers = encode_record(batch.vehicle, batch.brand, batch.frames)
        producer.send(topic, key=key, value=value, headers=headers, timestamp_ms=stamp)
        if batch.brand in ("jeep", "fiat"):
            f = batch.frames
            inside = f[(f["ts"] >= SINCE) & (f["ts"] < UNTIL)]
            if len(inside):
                span.setdefault(batch.vehicle, []).append(inside)
    producer.flush()
    producer.close()
    return {v: np.concatenate(parts) for v, parts in sorted(span.items())}


def config(
    tmp: Path, bootstrap: str, telemetry: str, incidents: str, key: Path | None = None
) -> Path:
    path = tmp / f"{incidents}.toml"
    text = (
        f'[kafka]\nbootstrap = "{bootstrap}"\ntelemetry_topic = "{telemetry}"\n'
        f'incident_topic = "{incidents}"\n'
    )
    if key is not None:
        text += f'[privacy]\npseudonymize_key_file = "{key}"\n'
    path.write_text(text)
    return path


def train_topic(cfg: Path, out: Path, *extra: str) -> dict:
    rc = main(
        ["train", "--from-kafka", "--brand", "jeep", "--config", str(cfg), "--out", str(out),
         "--since", str(SINCE), "--until", UNTIL_ISO, *extra]
    )  # fmt: skip
    assert rc == 0
    (manifest,) = list_manifests(out)["cusw"]
    return json.loads(manifest.path.read_text())


@pytest.fixture(scope="module")
def clean_topic(broker, tmp_path_factory) -> tuple[Path, dict]:
    tmp = tmp_path_factory.mktemp("clean")
    create_topics(broker.bootstrap, {"trk.clean": 3, "trk.clean.inc": 1})
    span = publish(broker.bootstrap, "trk.clean", fleet())
    return config(tmp, broker.bootstrap, "trk.clean", "trk.clean.inc"), span


def test_topic_model_equals_file_model(clean_topic, tmp_path, capsys) -> None:
    cfg, span = clean_topic
    assert UNTIL == datetime.fromisoformat(UNTIL_ISO).timestamp()  # train_topic gives both forms
    info = train_topic(cfg, tmp_path / "topic")
    out = capsys.readouterr().out
    assert "trained cusw v1" in out and "1 undecodable record" in out
    src = info["training"]["source"]
    assert src["vehicles"] == TRAINED and src["records_undecodable"] == 1
    assert src["brands"] == ["fiat", "fiat-professional", "jeep"]
    assert src["records_other_brands"] > 0 and not src["sampled"] and not src["excluded"]
    assert src["frames_read"] == src["frames_used"] == sum(map(len, span.values()))
    published = sum(len(f) for _, brand, f in fleet() if brand in ("jeep", "fiat"))
    assert src["frames_outside_span"] == published - src["frames_read"] > 0
    assert len(src["stretches"]) == 4  # one per vehicle: the two blocks of each joined
    assert info["training"]["drives"] == 4
    assert main(["models", "list", "--models", str(tmp_path / "topic")]) == 0
    listed = capsys.readouterr().out
    assert f"kafka trk.clean {src['since']}..{src['until']}" in listed, listed

    files, rows = [], ["file,group"]
    for vehicle, frames in span.items():
        files.append(tmp_path / f"{vehicle}.log")
        write_frames(files[-1], frames)
        rows.append(f"{vehicle}.log,{vehicle}")
    (tmp_path / "groups.csv").write_text("\n".join(rows) + "\n")
    rc = main(
        ["train", "--brand", "jeep", "--out", str(tmp_path / "files"),
         "--groups", str(tmp_path / "groups.csv"), *map(str, files)]
    )  # fmt: skip
    assert rc == 0
    a = load_model(tmp_path / "topic" / "cusw-v1.json")
    b = load_model(tmp_path / "files" / "cusw-v1.json")
    assert a.feature_names == b.feature_names
    assert a.threshold == b.threshold
    np.testing.assert_array_equal(a.evidence_scale, b.evidence_scale)
    np.testing.assert_array_equal(a.tolerance, b.tolerance)
    np.testing.assert_array_equal(a.env_lo, b.env_lo)
    np.testing.assert_array_equal(a.env_hi, b.env_hi)
    for name, value in a.baseline.to_dict().items():
        np.testing.assert_array_equal(value, b.baseline.to_dict()[name], err_msg=name)


def dos_incidents(vehicle: str) -> list[dict]:
    """The incident records the detector's tracker makes of the DoS windows."""
    tracker = IncidentTracker(IncidentConfig(), "test-detector")
    start = T0 + DOS_START_S
    obs = [
        Observation(vehicle, "jeep", w, 1.0, 20.0, "dos", {"0x000": 20.0}, [], 1)
        for w in np.arange(np.floor(start), start + DOS_S, 1.0)
    ]
    events = tracker.observe(obs, {})
    return events + tracker.close_all()


def test_records_stamped_out_of_order_are_read(broker, tmp_path, capsys) -> None:
    """One gateway's clock runs 5 minutes ahead: its records are stamped past the span
    while their frames lie in it, among the others' (a partition's timestamps do not rise
    with offsets). Read by --lateness, counted by event time; before, its frames of the
    span were missed (and the search for the span's edges could skip others')."""
    create_topics(broker.bootstrap, {"trk.skew": 1, "trk.skew.inc": 1})
    span = publish(broker.bootstrap, "trk.skew", fleet(), skew={"veh-jeep-b": 300.0})
    info = train_topic(config(tmp_path, broker.bootstrap, "trk.skew", "trk.skew.inc"),
                       tmp_path / "m")  # fmt: skip
    src = info["training"]["source"]
    assert src["frames_read"] == sum(map(len, span.values()))
    assert "veh-jeep-b" in src["vehicles"] and src["lateness_s"] == 900.0
    assert src["frames_in_incidents"] == 0


def test_incident_records_in_any_order_and_names_that_cannot_match() -> None:
    from detector.cli._train_kafka import SpanError, check_incident_names, fold_incident

    spans: dict = {}
    record = {"incident_id": "i1", "vehicle": "veh-jeep-a", "brand": "jeep",
              "first_seen": 10.0, "last_seen": 20.0, "suspected_attack": "dos"}  # fmt: skip
    fold_incident(spans, record | {"status": "closed"}, frozenset({"jeep"}))
    fold_incident(spans, record | {"status": "update", "last_seen": 15.0}, frozenset({"jeep"}))
    assert spans["i1"][2:] == [20.0, "dos", True]  # the closed record read first still closes it
    exclusions = {"p-0123": ["an incident"]}
    check_incident_names(exclusions, {"p-0123", "p-9"}, keyed=True)
    with pytest.raises(SpanError, match="pseudonymous vehicle ids .* without a pseudonymisation"):
        check_incident_names(exclusions, {"veh-jeep-a"}, keyed=False)
    with pytest.raises(SpanError, match="raw vehicle ids .* with a pseudonymisation key"):
        check_incident_names({"veh-jeep-a": ["x"]}, {"p-0123"}, keyed=True)


def test_an_unreadable_batch_in_the_span_is_counted() -> None:
    from detector.cli._train_kafka import SpanIntake
    from detector.core.config import load_config
    from detector.model.span_sample import BlockSample
    from detector.transport.kafka_salvage import Problem, UnreadableRecord

    intake = SpanIntake(load_config(None), frozenset({"jeep"}), SINCE, UNTIL, {},
                        BlockSample(1000, 60.0))  # fmt: skip
    intake.take([UnreadableRecord("t", 0, -1, 42, Problem("bad_crc", "CRC mismatch", 141), b"")])
    assert (intake.tally.records, intake.tally.undecodable) == (1, 100)


def test_attacked_vehicle_left_out(broker, tmp_path, capsys) -> None:
    """The detector pseudonymises here: its incident names the victim by pseudonym,
    the telemetry by its id; the key maps one to the other."""
    key = tmp_path / "key"
    key.write_bytes(b"a pseudonymisation key of the fleet")
    victim = pseudonym(key.read_bytes(), "veh-jeep-b")
    create_topics(broker.bootstrap, {"trk.dos": 2, "trk.dos.inc": 2})
    publish(broker.bootstrap, "trk.dos", fleet(attack_on="veh-jeep-b"))
    producer = make_producer(KafkaConfig(bootstrap=broker.bootstrap))
    events = dos_incidents(victim)
    for inc in events:  # published as the windows close: after last_seen
        stamp = int((inc["last_seen"] + 1) * 1000)
        producer.send("trk.dos.inc", key=victim.encode(), value=json.dumps(inc).encode(),
                      timestamp_ms=stamp)  # fmt: skip
    producer.flush()
    producer.close()

    cfg = config(tmp_path, broker.bootstrap, "trk.dos", "trk.dos.inc", key)
    info = train_topic(cfg, tmp_path / "left-out", "--exclude-margin", "5")
    src = info["training"]["source"]
    assert victim in src["vehicles"] and "veh-jeep-b" not in json.dumps(src)
    (ex,) = src["excluded"]
    assert ex["vehicle"] == victim and ex["incident_id"] == events[0]["incident_id"]
    assert ex["from"] == pytest.approx(events[0]["first_seen"] - 5)
    assert ex["to"] == pytest.approx(events[-1]["last_seen"] + 5)
    assert ex["frames"] > DOS_S * 3000  # the flood and the vehicle's own traffic around it
    assert src["frames_in_incidents"] == ex["frames"]  # the budget sampled nothing away
    assert "1 incident interval(s) left out" in capsys.readouterr().out
    model = load_model(tmp_path / "left-out" / "cusw-v1.json")
    assert 0 not in model.baseline.ids  # the flooded id was not learned

    # the same span with no incident topic: the flood is learned as benign traffic
    blind = config(tmp_path, broker.bootstrap, "trk.dos", "trk.dos.none")
    info = train_topic(blind, tmp_path / "blind")
    assert "does not exist" in info["training"]["source"]["note"]
    assert "veh-jeep-b" in info["training"]["source"]["vehicles"]  # no key here: raw ids
    assert 0 in load_model(tmp_path / "blind" / "cusw-v1.json").baseline.ids


def bad_inputs(bootstrap: str, cfg: Path) -> list[tuple[list[str], str]]:
    """(arguments, what the one-line error must say)."""
    dead = f"127.0.0.1:{free_port()}"
    return [
        (["--since", "2020-01-01T00:00:00Z", "--until", "2020-01-02"], "span empty"),
        (["--brand", "peugeot", "--since", str(SINCE), "--until", str(UNTIL)], "no citroen/lancia/peugeot traffic"),
        (["--since", str(UNTIL), "--until", str(SINCE)], "is not after --since"),
        (["--since", "yesterday", "--until", str(UNTIL)], "--since: cannot read 'yesterday'"),
        # epoch milliseconds, as Kafka stamps records: was a traceback (no such year)
        (["--since", "1764547200000", "--until", str(UNTIL)], "epoch seconds are wanted"),
        (["--since", str(SINCE), "--until", str(UNTIL), "--bootstrap", dead,
          "--connect-timeout", "1"], f"cannot reach Kafka at {dead}"),
    ]  # fmt: skip


def test_bad_input_one_line_no_model(clean_topic, broker, tmp_path, capsys) -> None:
    cfg, _ = clean_topic
    for n, (args, message) in enumerate(bad_inputs(broker.bootstrap, cfg)):
        out = tmp_path / f"m{n}"
        if "--brand" not in args:
            args = ["--brand", "jeep", *args]
        rc = main(["train", "--from-kafka", "--config", str(cfg), "--out", str(out), *args])
        err = capsys.readouterr().err.strip()
        assert rc == 2, args
        assert err.startswith("canwatch train: error: ") and "\n" not in err, err
        assert message in err, err
        assert not out.exists() or not any(out.iterdir())


def test_an_incident_still_open_is_left_out_to_the_end_of_the_span() -> None:
    """A flood's incident updated at 1024 and 2048 windows and not closed yet: its
    latest record says it had got to T0 + 2048, but it runs on, so a span after that
    leaves the vehicle out to its end (it trained as benign traffic before); a closed
    one ends at its last window, plus the margin."""
    from detector.cli._train_kafka import exclusions_from, fold_incident

    def record(status: str, last: float, iid: str = "i1") -> dict:
        return {"incident_id": iid, "status": status, "vehicle": "v", "brand": "jeep",
                "first_seen": T0, "last_seen": last, "suspected_attack": "dos"}  # fmt: skip

    spans: dict = {}
    for status, last in (("open", T0 + 1), ("update", T0 + 1024), ("update", T0 + 2048)):
        fold_incident(spans, record(status, last), frozenset({"jeep"}))
    (ex,) = exclusions_from(spans, T0 + 2500, T0 + 3000, 60.0)["v"]
    assert (ex.start, ex.end) == (T0 - 60.0, T0 + 3000)
    fold_incident(spans, record("closed", T0 + 2600), frozenset({"jeep"}))
    (ex,) = exclusions_from(spans, T0 + 2500, T0 + 3000, 60.0)["v"]
    assert ex.end == T0 + 2660
    fold_incident(spans, record("closed", T0 + 100, iid="i2"), frozenset({"jeep"}))
    kept = exclusions_from(spans, T0 + 2500, T0 + 3000, 60.0)["v"]
    assert [e.incident_id for e in kept] == ["i1"]


def test_block_sample_bounded_and_order_independent() -> None:
    """Over the budget, the sample is whole blocks, the same whatever the arrival order,
    within the budget; under it, everything."""
    from detector.core.schema import FRAME_DTYPE
    from detector.model.span_sample import BlockSample

    rng = np.random.default_rng(5)
    records = []
    for v in range(6):
        ts = np.sort(rng.uniform(0, 2000, 4000)) + T0
        for part in np.array_split(np.arange(len(ts)), 80):  # upload batches
            f = np.zeros(len(part), FRAME_DTYPE)
            f["ts"], f["can_id"] = ts[part], v
            records.append((f"veh-{v}", f))

    def sampled(order, budget) -> dict:
        s = BlockSample(budget, block_s=300.0)
        for i in order:
            s.add(*records[i])
        assert s.held <= budget and s.seen == 24000
        out = {}
        for x in s.stretches():  # whole blocks: every frame of the vehicle in them
            ts = np.concatenate([f["ts"] for v, f in records if v == x.vehicle])
            block = np.floor(ts / 300.0)
            assert np.array_equal(
                np.sort(ts[(block >= x.first_block) & (block <= x.last_block)]), x.frames["ts"]
            )
            out[(x.vehicle, x.first_block)] = x.frames["ts"].tolist()
        return out

    forward = sampled(range(len(records)), 9000)
    assert forward == sampled(rng.permutation(len(records)), 9000)
    assert 0 < sum(map(len, forward.values())) <= 9000
    everything = sampled(range(len(records)), 24000)
    assert len(everything) == 6 and sum(map(len, everything.values())) == 24000
