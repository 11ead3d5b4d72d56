"""Incident forensics end to end: provenance, ``incidents show`` and ``incidents export``.

One scenario for the module, as a user runs it: ``canwatch simulate --out DIR
--to-kafka`` writes a small jeep fleet with a DoS on one vehicle (files and
fleet.json) and streams the same frames into a 2-partition telemetry topic of
the embedded broker, so vehicles share partitions; a ``Detector`` scores them
and publishes the incident. The tests then read the incident back with the
CLI, export its frames from Kafka and compare them with the simulated files.
"""

from __future__ import annotations

import json
import shlex
import sys
import threading
import uuid

import numpy as np
import pytest
from prometheus_client import CollectorRegistry
from test_detect_service import FLEET, TopicReader, sample, wait_for

from detector.cli import main
from detector.cli._forensics import ForensicsError, find_incident, in_span
from detector.cli._incident_show import render
from detector.core.config import load_config
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.transport.broker import create_topics
from detector.transport.kafka_io import make_producer
from detector.transport.wire import encode_record
from replay.readers import read_frames
from replay.writers import write_frames

pytestmark = pytest.mark.kafka
MARGIN_S = 2.0
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _key(frames: np.ndarray) -> set[tuple]:
    """Frames as comparable tuples (timestamps as the candump files round them)."""
    return {
        (round(float(t), 6), int(c), bytes(d[:n]))
        for t, c, d, n in zip(
            frames["ts"], frames["can_id"], frames["data"], frames["dlc"], strict=True
        )
    }


@pytest.fixture(scope="module")
def scenario(broker, cusw_models, tmp_path_factory):
    """The simulated fleet, the detector's incident for the attacked vehicle, and the
    CLI arguments that reach the broker and the incident topic."""
    tag = uuid.uuid4().hex[:8]
    topics = {
        "kafka.telemetry_topic": f"forensics.telemetry.{tag}",
        "kafka.incident_topic": f"forensics.incidents.{tag}",
        "kafka.dlq_topic": f"forensics.dlq.{tag}",
        "kafka.group_id": f"forensics.group.{tag}",
    }
    overrides = {**topics, "kafka.bootstrap": broker.bootstrap, "models.dir": str(cusw_models)}
    cfg = load_config(None, env={}, overrides=overrides)
    k = cfg.kafka
    create_topics(broker.bootstrap, {k.telemetry_topic: 2, k.incident_topic: 1, k.dlq_topic: 1})
    out = tmp_path_factory.mktemp("fleet")
    simulate = ["simulate", "--out", str(out), "--to-kafka", "--max-speed", "--brands", "jeep"]
    simulate += ["--vehicles", "4", "--duration", "30", "--seed", "31"]
    simulate += ["--attack", "dos:start=10,duration=5", "--bootstrap", broker.bootstrap]
    reader = TopicReader(broker.bootstrap, k.incident_topic)
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-forensics")
    stop = threading.Event()
    thread = threading.Thread(target=detector.run, args=(stop,), daemon=True)
    try:
        assert main([*simulate, "--topic", k.telemetry_topic]) == 0
        fleet = json.loads((out / "fleet.json").read_text())
        total = sum(v["frames"] for v in fleet["vehicles"])
        attacked = fleet["attacks"][0]["vehicle"]
        thread.start()

        def done() -> bool:
            closed = [e for e in reader.events() if e["status"] == "closed"]
            consumed = sample(metrics, "canwatch_frames_consumed_total", brand="jeep")
            return consumed == total and any(e["vehicle"] == attacked for e in closed)

        wait_for("every frame consumed and the attack's incident closed", done)
        events = reader.events()
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(timeout=30)
        reader.close()
    closed = [e for e in events if e["status"] == "closed" and e["vehicle"] == attacked]
    argv = ["--bootstrap", broker.bootstrap, "--topic", k.incident_topic]
    return {"cfg": cfg, "dir": out, "fleet": fleet, "incident": closed[-1], "argv": argv,
            "events": events, "models": cusw_models}  # fmt: skip


def test_every_incident_event_says_where_its_frames_are(scenario):
    k = scenario["cfg"].kafka
    for ev in scenario["events"]:
        prov = ev["provenance"]
        assert prov["topic"] == k.telemetry_topic and prov["partition"] in (0, 1)
        assert 0 <= prov["first_offset"] <= prov["last_offset"] and prov["records"] >= 1
        assert [round(s, 3) for s, _ in ev["window_scores"]] == sorted(
            s for s, _ in ev["window_scores"]
        )
        assert len(ev["window_scores"]) == ev["windows"]
        assert max(sc for _, sc in ev["window_scores"]) == pytest.approx(ev["peak_score"])


def test_export_holds_every_attack_frame_of_the_vehicle_and_no_other(scenario, tmp_path, capsys):
    inc, fleet, d = scenario["incident"], scenario["fleet"], scenario["dir"]
    out = tmp_path / "incident.log"
    argv = ["incidents", "export", inc["incident_id"][:10], "--out", str(out)]
    assert main([*argv, "--margin", str(MARGIN_S), *scenario["argv"]]) == 0, capsys.readouterr()
    assert f"to {out}" in capsys.readouterr().out
    got = read_frames(out)
    start, end = inc["first_seen"] - MARGIN_S, inc["last_seen"] + MARGIN_S
    assert got["ts"].min() >= start - 1e-6 and got["ts"].max() < end
    files = {v["vehicle"]: read_frames(d / v["file"]) for v in fleet["vehicles"]}
    own = files.pop(inc["vehicle"])
    inner = (own["ts"] >= start + 1e-3) & (own["ts"] < end - 1e-3)
    assert _key(own[inner]) <= _key(got), "every frame of the vehicle in the span"
    assert _key(got) <= _key(own), "nothing that is not the vehicle's"
    for frames in files.values():
        assert not _key(got) & _key(frames), "another vehicle's frame"
    (attack,) = fleet["attacks"]
    hit = (own["label"] > 0) & (own["ts"] >= max(attack["start_ts"], start + 1e-3))
    hit &= own["ts"] <= min(attack["end_ts"], end - 1e-3)
    assert hit.sum() > 100 and _key(own[hit]) <= _key(got), "every attack frame in the span"
    # the usual tools open it: canwatch inspect, and the other formats by suffix
    assert main(["inspect", "--json", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["frames"] == len(got)
    for suffix in (".asc", ".blf"):
        other = tmp_path / f"incident{suffix}"
        argv = ["incidents", "export", inc["incident_id"], "--out", str(other), "--margin", "0"]
        assert main([*argv, *scenario["argv"]]) == 0
        again = read_frames(other)
        assert len(again) and again["ts"].min() >= inc["first_seen"] - 1e-6
        assert again["ts"].max() < inc["last_seen"]


def test_span_is_judged_at_the_microsecond_the_log_writes(tmp_path):
    """A frame under half a microsecond before the end would be written as the end itself."""
    from detector.core.schema import FRAME_DTYPE

    start, end = 1796582364.0, 1796582374.0
    frames = np.zeros(4, FRAME_DTYPE)
    frames["ts"] = [end - 0.4e-6, start + 1.0, end - 2e-6, start - 0.4e-6]
    frames["dlc"] = 8
    kept = in_span(frames, start, end)
    assert list(kept["ts"]) == [start + 1.0, end - 2e-6]
    for suffix in (".log", ".asc", ".blf"):  # microseconds, and BLF's nanoseconds
        out = tmp_path / f"span{suffix}"
        write_frames(out, kept)
        back = read_frames(out)["ts"]
        assert back.min() >= start and back.max() < end, suffix


def test_export_shows_its_reading_on_a_terminal_only(scenario, tmp_path, capsys):
    """A bar counts the records read back (on a terminal); a pipe gets only the result."""
    from test_operator_cli import on_pty

    inc = scenario["incident"]
    out = tmp_path / "bar.log"
    argv = ["incidents", "export", inc["incident_id"], "--out", str(out), *scenario["argv"]]
    shown = on_pty([sys.executable, "-c", f"from detector.cli import main; raise SystemExit(main({argv}))"])
    assert f"reading {scenario['cfg'].kafka.telemetry_topic}/" in shown, shown
    assert "record" in shown and f"to {out}" in shown
    assert main([*argv[:4], str(tmp_path / "quiet.log"), *argv[5:]]) == 0
    assert capsys.readouterr().err == ""


def test_show_prints_the_whole_incident(scenario, capsys):
    inc = scenario["incident"]
    assert main(["incidents", "show", inc["incident_id"], *scenario["argv"]]) == 0
    out = capsys.readouterr().out
    prov = inc["provenance"]
    assert f"topic {prov['topic']} partition {prov['partition']}" in out
    assert f"offsets {prov['first_offset']}-{prov['last_offset']}" in out
    assert inc["vehicle"] in out and inc["suspected_attack"] in out
    for e in inc["evidence"]:
        assert " ".join(e["text"].split()) in out
    assert out.count(" s  ") >= inc["windows"], "a line per window with its score"
    assert main(["incidents", "show", inc["incident_id"], "--json", *scenario["argv"]]) == 0
    assert json.loads(capsys.readouterr().out) == inc


def test_the_export_line_show_prints_reads_the_same_broker(
    scenario, tmp_path, monkeypatch, capsys
):
    """The command show prints under its provenance, run as printed, exports the frames."""
    inc = scenario["incident"]
    assert main(["incidents", "show", inc["incident_id"], *scenario["argv"]]) == 0
    (hint,) = [ln for ln in capsys.readouterr().out.splitlines() if "export:" in ln]
    command = shlex.split(hint.split("export:", 1)[1])
    assert command[:4] == ["canwatch", "incidents", "export", inc["incident_id"]]
    monkeypatch.chdir(tmp_path)
    assert main(command[1:]) == 0, capsys.readouterr().err
    assert len(read_frames(tmp_path / "incident.log")) > 100


def test_show_plot_writes_a_png(scenario, tmp_path, capsys):
    inc = scenario["incident"]
    png = tmp_path / "incident.png"
    argv = ["incidents", "show", inc["incident_id"], "--plot", str(png)]
    assert main([*argv, "--models", str(scenario["models"]), *scenario["argv"]]) == 0
    assert f"plotted to {png}" in capsys.readouterr().out
    data = png.read_bytes()
    assert data.startswith(PNG_MAGIC) and len(data) > 20_000
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 800 and height >= 400


def test_records_no_longer_on_the_topic_give_one_line_and_no_file(
    scenario, broker, tmp_path, capsys
):
    """The telemetry topic as it is after being re-created (retention or a reset emptied
    it): the incident's offsets are past its end. Tansu cannot delete records, so the
    log start moving past them is this same check's other branch (``kafka_span``)."""
    inc = dict(scenario["incident"])
    gone = f"{inc['provenance']['topic']}.recreated"
    create_topics(broker.bootstrap, {gone: 2})
    producer = make_producer(scenario["cfg"].kafka)
    frames = read_frames(scenario["dir"] / scenario["fleet"]["vehicles"][0]["file"])[:10]
    for _ in range(2):
        key, value, headers = encode_record(inc["vehicle"], "jeep", frames)
        producer.send(gone, key=key, value=value, headers=headers, partition=inc["provenance"]["partition"])  # fmt: skip
    producer.flush()
    producer.close()
    inc["provenance"] = {**inc["provenance"], "topic": gone}
    saved = tmp_path / "incidents.jsonl"
    saved.write_text(json.dumps(inc) + "\n")
    out = tmp_path / "incident.blf"
    argv = ["incidents", "export", inc["incident_id"], "--from", str(saved), "--out", str(out)]
    assert main([*argv, "--bootstrap", broker.bootstrap]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and gone in err and "nothing written" in err, err
    assert not out.exists() and not list(tmp_path.glob(".incident*")), "no file, not even partial"


def test_evaluate_incidents_name_their_file_and_frames(scenario, tmp_path, capsys):
    fleet, d = scenario["fleet"], scenario["dir"]
    attacked = scenario["incident"]["vehicle"]
    path = d / next(v["file"] for v in fleet["vehicles"] if v["vehicle"] == attacked)
    saved = tmp_path / "incidents.jsonl"
    argv = ["evaluate", "--models", str(scenario["models"]), "--brand", "jeep"]
    assert main([*argv, "--incidents-out", str(saved), str(path)]) == 0
    capsys.readouterr()
    # the attack's incident: this test is about where an incident's frames are (one
    # fresh-clone CI run evaluated a second incident in this file; not reproduced with
    # the fleet started at ten phases of a second, nor alone)
    attack = fleet["attacks"][0]
    incs = [json.loads(line) for line in saved.read_text().splitlines()]
    (inc,) = [i for i in incs if i["first_seen"] <= attack["end_ts"] and i["last_seen"] >= attack["start_ts"]]
    prov = inc["provenance"]
    assert prov["file"] == str(path)
    frames = read_frames(path)
    inside = frames[prov["first_frame"] : prov["last_frame"] + 1]
    assert inside["ts"].min() >= inc["first_seen"] - 1e-6 and inside["ts"].max() < inc["last_seen"]
    assert main(["incidents", "show", inc["incident_id"], "--from", str(saved)]) == 0
    assert (
        f"file {path} frames {prov['first_frame']}-{prov['last_frame']}" in capsys.readouterr().out
    )
    out = tmp_path / "from-file.asc"
    argv = ["incidents", "export", inc["incident_id"], "--from", str(saved), "--out", str(out)]
    assert main([*argv, "--margin", "0"]) == 0
    assert len(read_frames(out)) == prov["frames"]


def test_an_incident_of_one_bus_of_a_two_bus_log_keeps_its_channel(scenario, tmp_path, capsys):
    """``evaluate --channel``: frame indices count the frames of that channel, and the
    provenance names it, so ``incidents export`` reads the same bus back."""
    fleet, d = scenario["fleet"], scenario["dir"]
    attacked = scenario["incident"]["vehicle"]
    files = {v["vehicle"]: d / v["file"] for v in fleet["vehicles"]}
    other = next(v for v in files if v != attacked)
    lines = files[attacked].read_text().splitlines()
    lines += [ln.replace(" can0 ", " body ") for ln in files[other].read_text().splitlines()]
    two = tmp_path / "two-buses.log"
    two.write_text("\n".join(sorted(lines, key=lambda ln: float(ln[1 : ln.index(")")]))) + "\n")
    saved = tmp_path / "incidents.jsonl"
    argv = ["evaluate", "--models", str(scenario["models"]), "--brand", "jeep", str(two)]
    assert main([*argv, "--channel", "can0", "--incidents-out", str(saved)]) == 0
    capsys.readouterr()
    attack = fleet["attacks"][0]
    incs = [json.loads(line) for line in saved.read_text().splitlines()]
    during = [i for i in incs if i["first_seen"] <= attack["end_ts"]]
    (inc,) = [i for i in during if i["last_seen"] >= attack["start_ts"]]
    prov = inc["provenance"]
    assert prov["channel"] == "can0"
    inside = read_frames(two, channel="can0")[prov["first_frame"] : prov["last_frame"] + 1]
    assert inside["ts"].min() >= inc["first_seen"] - 1e-6 and inside["ts"].max() < inc["last_seen"]
    out = tmp_path / "from-file.log"
    argv = ["incidents", "export", inc["incident_id"], "--from", str(saved), "--out", str(out)]
    assert main([*argv, "--margin", "0"]) == 0
    assert len(read_frames(out)) == prov["frames"]


def test_find_incident_by_prefix_and_its_errors():
    recs = [
        {"incident_id": "abc123", "status": "open"},
        {"incident_id": "abd999", "status": "open"},
        {"incident_id": "abc123", "status": "closed"},
    ]
    assert find_incident(recs, "abc")["status"] == "closed", "the last record is the incident"
    with pytest.raises(ForensicsError, match="matches 2 incidents"):
        find_incident(recs, "ab")
    with pytest.raises(ForensicsError, match="no incident"):
        find_incident(recs, "fff")
    text = render({**recs[2], "provenance": None, "window_scores": [[1.0, 2.5]], "windows": 3})
    assert "provenance not recorded" in text.replace("  ", " ")
    assert "(first 1 of 3)" in text
    one, two = (
        render({**recs[2], "suspected_attack": "dos", "attacks": attacks})
        for attacks in ({"dos": 3}, {"dos": 3, "spoofing": 2})
    )
    assert "attack     dos," in one
    assert "attack     dos (windows: dos 3, spoofing 2)," in two


def test_export_refuses_an_unknown_suffix_before_reading(tmp_path, capsys):
    out = tmp_path / "x.csv"
    assert main(["incidents", "export", "abc", "--out", str(out), "--from", "/nonexistent"]) == 2
    err = capsys.readouterr().err
    assert ".log, .asc or .blf" in err and err.count("\n") == 1
    assert not out.exists()


def test_export_finds_a_pseudonymised_vehicle_by_its_keys_pseudonym(
    broker, unique_topic, cusw_models, tmp_path, monkeypatch, capsys
):
    """With ``[privacy]`` the incident names a pseudonym; export, given the same config,
    recognises the vehicle's records by the pseudonym of their key."""
    from test_detect_service import fleet_streams, send_all, service_config

    monkeypatch.setenv("CW_FORENSICS_KEY", "forensics-test-hmac-key-0123456789")
    cfg = service_config(
        broker, unique_topic, cusw_models, partitions=1,
        **{"privacy.pseudonymize_key_env": "CW_FORENSICS_KEY"},
    )  # fmt: skip
    streams, attacked = fleet_streams(3, 20.0, {1: "dos:start=6,duration=3"}, seed=910)
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-forensics-privacy")
    reader = TopicReader(broker.bootstrap, cfg.kafka.incident_topic)
    stop = threading.Event()
    thread = threading.Thread(target=detector.run, args=(stop,), daemon=True)
    thread.start()
    try:
        frames = send_all(cfg, streams)

        def done() -> bool:
            consumed = sample(metrics, "canwatch_frames_consumed_total", brand="jeep")
            return consumed == frames and any(e["status"] == "closed" for e in reader.events())

        wait_for("frames consumed and the incident closed", done)
        inc = [e for e in reader.events() if e["status"] == "closed"][-1]
    finally:
        stop.set()
        thread.join(timeout=30)
        reader.close()
    assert inc["vehicle"].startswith("p-") and inc["vehicle"] not in attacked
    config = tmp_path / "canwatch.toml"
    config.write_text('[privacy]\npseudonymize_key_env = "CW_FORENSICS_KEY"\n')
    out = tmp_path / "incident.log"
    argv = ["incidents", "export", inc["incident_id"], "--out", str(out), "--margin", "1"]
    argv += ["--config", str(config), "--bootstrap", broker.bootstrap]
    assert main([*argv, "--topic", cfg.kafka.incident_topic]) == 0, capsys.readouterr().err
    (raw,) = attacked
    write_frames(tmp_path / "own.log", next(f for v, _, f in streams if v == raw))
    own = read_frames(tmp_path / "own.log")  # timestamps as a candump file holds them
    start, end = inc["first_seen"] - 1.0, inc["last_seen"] + 1.0
    inner = own[(own["ts"] >= start + 1e-3) & (own["ts"] < end - 1e-3)]
    got = read_frames(out)
    assert _key(inner) <= _key(got) <= _key(own)
