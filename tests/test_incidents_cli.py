"""``canwatch incidents``: formatting, reading the topic of a real (Tansu) broker, and
``incidents show``/``export`` of an incident ``canwatch evaluate`` wrote, run as an analyst
runs them (from another directory, on odd records and files)."""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from kafka import KafkaProducer

from detector.cli import main
from detector.cli.incidents import json_line, table_header, table_row
from detector.transport.broker import create_topics

CANWATCH = str(Path(sys.executable).parent / "canwatch")
#: The table's ID column: this many characters of the id, a prefix ``show`` takes.
ID_CHARS = 12


def incident(i: int, attack: str = "dos", vehicle: str | None = None) -> dict:
    return {
        "incident_id": f"{i:020x}",
        "status": ("open", "update", "closed")[i % 3],
        "vehicle": vehicle or f"veh-jeep-{i:04d}",
        "brand": "jeep",
        "first_seen": 1_700_000_000.0 + i,
        "last_seen": 1_700_000_004.5 + i,
        "windows": 4 + i,
        "peak_score": 7.25 + i,
        "severity": "high",
        "suspected_attack": attack,
        "can_ids": [{"can_id": 0x0, "score": 9.5}, {"can_id": 0x1E4, "score": 2.0}],
        "evidence": [
            {"text": "id 0x000 at 2,950 frames/s (never seen for jeep)", "observed": 2950},
            {"text": "bus load 4.1x baseline"},
        ],
        "model_version": "cusw-v3",
        "detector": "det-1",
    }


def produce(bootstrap: str, topic: str, values: list[bytes]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all")
    try:
        for v in values:
            producer.send(topic, key=b"k", value=v)
        producer.flush(timeout=10)
    finally:
        producer.close()


def test_table_row_reads_like_a_table():
    row = table_row(incident(1, "masquerade"))
    for text in ("2023-11-14 22:13:25", "update", "high", "masquerade", "jeep", "veh-jeep-0001",
                 " 000000000000 "):  # fmt: skip
        assert text in row
    assert "8.25" in row and "0x000,0x1E4" in row and "2,950 frames/s" in row
    assert len(table_row(incident(1), width=80)) == 80
    assert table_header().startswith("TIME (UTC)")
    sparse = table_row({"vehicle": "v", "evidence": "odd", "can_ids": None})
    assert "v" in sparse and "-" in sparse
    value = json.dumps(incident(2), indent=2).encode()
    assert "\n" not in json_line(value, json.loads(value))
    assert json_line(b'{"a": 1}', {"a": 1}) == '{"a": 1}', "kept exactly as on the topic"


def test_table_columns_line_up_whatever_script_a_vehicle_is_named_in():
    """Cells were padded by characters: a CJK name (two columns each) pushed the columns
    after it right, combining accents pulled them left, and a cut line wrapped."""
    from detector.cli._table import display_width

    names = ["veh-jeep-0001", "車両-東京-0001", "ve\u0301h\u0301-je\u0301ep", "veh-🚗-0001"]
    rows = [table_row(incident(1) | {"vehicle": name}) for name in names]
    offsets = {display_width(r[: r.index(" 5 ")]) for r in rows}  # the WINDOWS cell, 5
    assert len(offsets) == 1, rows
    for r in rows:
        assert display_width(table_row(incident(1) | {"vehicle": r}, width=80)) == 80


@pytest.mark.kafka
def test_incidents_reads_everything_once(broker, unique_topic, capsys):
    topic = unique_topic("incidents")
    create_topics(broker.bootstrap, {topic: 3})
    sent = [incident(i, attack) for i, attack in enumerate(["dos", "fuzzing", "suspension"] * 2)]
    values = [json.dumps(s).encode() for s in sent]
    produce(broker.bootstrap, topic, [*values, b"not json"])
    argv = ["incidents", "--topic", topic, "--bootstrap", broker.bootstrap]

    assert main([*argv, "--json"]) == 0
    out, err = capsys.readouterr()
    lines = out.splitlines()
    assert sorted(lines) == sorted(v.decode() for v in values), "every record once, verbatim"
    assert "not an incident record" in err

    assert main(argv) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].startswith("TIME (UTC)") and len(table) == 1 + len(sent)
    assert any("veh-jeep-0004" in line and "fuzzing" in line for line in table)

    proc = subprocess.run([CANWATCH, *argv, "--json"], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted(lines)


@pytest.mark.kafka
def test_incidents_follow_until_ctrl_c(broker, unique_topic):
    topic = unique_topic("incidents")
    create_topics(broker.bootstrap, {topic: 1})
    produce(broker.bootstrap, topic, [json.dumps(incident(0, vehicle="veh-before")).encode()])
    argv = ["incidents", "--follow", "--json", "--topic", topic, "--bootstrap", broker.bootstrap]
    proc = subprocess.Popen(
        [CANWATCH, *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        assert json.loads(proc.stdout.readline())["vehicle"] == "veh-before"
        produce(broker.bootstrap, topic, [json.dumps(incident(1, vehicle="veh-after")).encode()])
        assert json.loads(proc.stdout.readline())["vehicle"] == "veh-after"
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=20) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.kafka
def test_the_tables_id_is_one_show_takes(broker, unique_topic, capsys):
    """An analyst reads the table, then shows an incident by the ID it prints; show's
    export line names the same topic and broker, so it reads the same incident."""
    topic = unique_topic("incidents")
    create_topics(broker.bootstrap, {topic: 1})
    sent = [{**incident(i), "incident_id": uuid.uuid4().hex[:20]} for i in range(3)]
    sent[1]["provenance"] = {"topic": "t", "partition": 0, "first_offset": 0, "last_offset": 0}
    produce(broker.bootstrap, topic, [json.dumps(s).encode() for s in sent])
    argv = ["--topic", topic, "--bootstrap", broker.bootstrap]
    assert main(["incidents", *argv]) == 0
    header, *rows = capsys.readouterr().out.splitlines()
    at = header.index("ID")
    shown = [row[at : at + ID_CHARS] for row in rows]
    assert shown == [s["incident_id"][:ID_CHARS] for s in sent]
    for inc, short in zip(sent, shown, strict=True):
        assert main(["incidents", "show", short, *argv]) == 0
        assert f"incident   {inc['incident_id']}  " in capsys.readouterr().out
    assert main(["incidents", "show", shown[1], *argv]) == 0
    (hint,) = [ln for ln in capsys.readouterr().out.splitlines() if "export:" in ln]
    flags = ["--bootstrap", broker.bootstrap, "--topic", topic, "--out", "incident.log"]
    assert shlex.split(hint.split("export:", 1)[1])[3:] == [sent[1]["incident_id"], *flags]


def test_incidents_broker_unreachable_exit_2(capsys):
    from detector.transport.broker import free_port

    argv = ["incidents", "--connect-timeout", "0.5", "--bootstrap", f"127.0.0.1:{free_port()}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot reach Kafka" in err and err.count("\n") == 1, err


# -- show and export of an incident `canwatch evaluate` wrote ------------------------------


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """An analyst's directory: ``atk/`` (a simulated jeep fleet, dos on one vehicle),
    ``models/`` (trained on the others), and ``inc.jsonl`` from ``canwatch evaluate
    --incidents-out`` run there on ``atk/<vehicle>.log``, so its provenance names the
    capture relative to that directory, as evaluate was given it."""
    d = tmp_path_factory.mktemp("analyst")
    simulate = ["simulate", "--brands", "jeep", "--vehicles", "3", "--duration", "30"]
    simulate += ["--seed", "5", "--out", str(d / "atk"), "--attack", "dos:start=10,duration=5"]
    assert main(simulate) == 0
    fleet = json.loads((d / "atk" / "fleet.json").read_text())
    (attack,) = fleet["attacks"]
    benign = [str(d / "atk" / v["file"]) for v in fleet["vehicles"]]
    benign = [f for f in benign if Path(f).stem != attack["vehicle"]]
    assert main(["train", "--brand", "jeep", "--out", str(d / "models"), *benign]) == 0
    evaluate = [CANWATCH, "evaluate", "--models", "models", "--brand", "jeep"]
    evaluate += ["--incidents-out", "inc.jsonl", f"atk/{attack['vehicle']}.log"]
    proc = subprocess.run(evaluate, cwd=d, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    incs = [json.loads(ln) for ln in (d / "inc.jsonl").read_text().splitlines()]
    inc = next(i for i in incs if i["suspected_attack"] == "dos")
    assert inc["provenance"]["file"] == f"atk/{attack['vehicle']}.log"
    return {"dir": d, "incident": inc, "attack": attack}


def _one_line_error(capsys: pytest.CaptureFixture) -> str:
    err = capsys.readouterr().err
    assert err.startswith("canwatch incidents: error: ") and err.count("\n") == 1, err
    return err


def _saved(tmp_path: Path, *incs: dict) -> Path:
    path = tmp_path / "saved.jsonl"
    path.write_text("".join(json.dumps(i) + "\n" for i in incs))
    return path


def test_the_export_line_show_prints_runs(evaluated, monkeypatch, capsys):
    d, inc = evaluated["dir"], evaluated["incident"]
    monkeypatch.chdir(d)
    assert main(["incidents", "show", inc["incident_id"][:ID_CHARS], "--from", "inc.jsonl"]) == 0
    (hint,) = [ln for ln in capsys.readouterr().out.splitlines() if "export:" in ln]
    command = shlex.split(hint.split("export:", 1)[1])
    assert command[:2] == ["canwatch", "incidents"]
    assert main(command[1:]) == 0, capsys.readouterr().err
    assert "to incident.log" in capsys.readouterr().out and (d / "incident.log").stat().st_size


def test_a_relative_capture_is_found_from_another_directory(
    evaluated, tmp_path, monkeypatch, capsys
):
    """evaluate wrote ``atk/...`` relative to its directory; export and show --plot run
    elsewhere find it beside the incidents file, and say what is missing when it is."""
    d, inc = evaluated["dir"], evaluated["incident"]
    monkeypatch.chdir(tmp_path)
    argv = ["incidents", "export", inc["incident_id"], "--from", str(d / "inc.jsonl")]
    assert main([*argv, "--out", "x.log"]) == 0, capsys.readouterr().err
    assert f"from file {d / 'atk'}" in capsys.readouterr().out
    argv = ["incidents", "show", inc["incident_id"], "--from", os.path.relpath(d / "inc.jsonl")]
    assert main([*argv, "--plot", "p.png", "--models", str(d / "models")]) == 0
    assert "plotted to p.png" in capsys.readouterr().out
    gone = {**inc, "provenance": {**inc["provenance"], "file": "atk/gone.log"}}
    argv = ["incidents", "export", inc["incident_id"], "--from", str(_saved(tmp_path, gone))]
    assert main([*argv, "--out", "y.log"]) == 2
    err = _one_line_error(capsys)
    assert "the capture its provenance names, atk/gone.log" in err and inc["incident_id"] in err
    assert not (tmp_path / "y.log").exists()


def test_an_incidents_file_that_is_not_utf8_is_one_line(tmp_path, capsys):
    text = json.dumps(incident(7)) + "\n"
    for name, data in (("u16.jsonl", text.encode("utf-16")), ("bin.jsonl", bytes(range(256)))):
        (tmp_path / name).write_bytes(data)
        assert main(["incidents", "show", "0", "--from", str(tmp_path / name)]) == 2
        err = _one_line_error(capsys)
        assert f"{tmp_path / name}: not UTF-8" in err
    (tmp_path / "bom.jsonl").write_bytes(text.encode("utf-8-sig"))  # as a Windows editor saves
    assert main(["incidents", "show", "0", "--from", str(tmp_path / "bom.jsonl")]) == 0
    assert incident(7)["vehicle"] in capsys.readouterr().out


def test_odd_field_types_are_one_line_or_shown(evaluated, tmp_path, capsys):
    """Times that are not epoch seconds are refused by show and export alike, naming the
    incident; can_ids items that are bare ids are shown as the table shows them."""
    inc = evaluated["incident"]
    capture = str(evaluated["dir"] / inc["provenance"]["file"])
    base = {**inc, "provenance": {**inc["provenance"], "file": capture}}
    odd = [
        {**base, "incident_id": "e03", "first_seen": None},
        {**base, "incident_id": "e04", "last_seen": "2023-11-14T22:13:40Z"},
    ]
    saved = str(_saved(tmp_path, *odd, {**base, "incident_id": "e05", "can_ids": [484, "x"]}))
    for bad, field in zip(odd, ("first_seen", "last_seen"), strict=True):
        ident = bad["incident_id"]
        for action in (["show"], ["export", "--out", str(tmp_path / "e.log")]):
            assert main(["incidents", action[0], ident, "--from", saved, *action[1:]]) == 2
            err = _one_line_error(capsys)
            assert f"incident {ident}: {field} is " in err and "not epoch seconds" in err
    assert not (tmp_path / "e.log").exists()
    backwards = {**base, "incident_id": "e06", "last_seen": base["first_seen"] - 10}
    (tmp_path / "b").mkdir()
    backwards_file = str(_saved(tmp_path / "b", backwards))
    assert main(["incidents", "export", "e06", "--from", backwards_file,
                 "--out", str(tmp_path / "e.log")]) == 2  # fmt: skip
    assert "last_seen" in _one_line_error(capsys) and not (tmp_path / "e.log").exists()
    assert main(["incidents", "show", "e05", "--from", saved]) == 0
    assert "can ids    0x1E4, x" in capsys.readouterr().out


def test_show_plot_writes_the_format_its_suffix_names(evaluated, tmp_path, monkeypatch, capsys):
    d, inc = evaluated["dir"], evaluated["incident"]
    monkeypatch.chdir(d)  # where evaluate ran
    argv = ["incidents", "show", inc["incident_id"], "--from", "inc.jsonl"]
    argv += ["--models", "models", "--plot"]
    assert main([*argv, str(tmp_path / "p.svg")]) == 0
    assert "<svg" in (tmp_path / "p.svg").read_text(encoding="utf-8")[:2000]
    assert main([*argv, str(tmp_path / "p.pdf")]) == 0
    assert (tmp_path / "p.pdf").read_bytes().startswith(b"%PDF")
    capsys.readouterr()
    assert main([*argv, str(tmp_path / "p.bmp")]) == 2
    assert ".png, .svg or .pdf" in _one_line_error(capsys)
    assert not (tmp_path / "p.bmp").exists()


def test_show_plot_of_a_span_without_frames_is_one_line(evaluated, tmp_path, capsys):
    """The capture has no frames in the incident's span (here: moved a day later)."""
    d, inc = evaluated["dir"], evaluated["incident"]
    day = 86_400.0
    later = {**inc, "first_seen": inc["first_seen"] + day, "last_seen": inc["last_seen"] + day}
    later["provenance"] = {**inc["provenance"], "file": str(d / inc["provenance"]["file"])}
    argv = ["incidents", "show", inc["incident_id"], "--from", str(_saved(tmp_path, later))]
    png = tmp_path / "empty.png"
    assert main([*argv, "--models", str(d / "models"), "--plot", str(png)]) == 2
    err = _one_line_error(capsys)
    assert f"no frames of {inc['vehicle']}" in err and "nothing plotted" in err
    assert not png.exists()


def test_rate_evidence_of_an_unseen_id_claims_no_learned_rate(evaluated, capsys):
    """The dos floods an id the model never saw: its rate line says so, no ratio to a rate
    that was never learned."""
    d, inc, attack = evaluated["dir"], evaluated["incident"], evaluated["attack"]
    flood = attack["can_id_hex"]
    rate = [e for e in inc["evidence"] if e["feature"] == "rate" and e["can_id"] == flood]
    assert rate, inc["evidence"]
    assert main(["incidents", "show", inc["incident_id"], "--from", str(d / "inc.jsonl")]) == 0
    out = capsys.readouterr().out
    for e in rate:
        assert e["text"].endswith("window (never seen in training)") and e["text"] in out
        assert "learned rate" not in e["text"]
