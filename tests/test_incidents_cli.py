"""``canwatch incidents``: formatting, and reading the topic of a real (Tansu) broker."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from kafka import KafkaProducer

from detector.cli import main
from detector.cli.incidents import json_line, table_header, table_row
from detector.transport.broker import create_topics

CANWATCH = str(Path(sys.executable).parent / "canwatch")


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
    for text in ("2023-11-14 22:13:25", "update", "high", "masquerade", "jeep", "veh-jeep-0001"):
        assert text in row
    assert "8.25" in row and "0x000,0x1E4" in row and "2,950 frames/s" in row
    assert len(table_row(incident(1), width=80)) == 80
    assert table_header().startswith("TIME (UTC)")
    sparse = table_row({"vehicle": "v", "evidence": "odd", "can_ids": None})
    assert "v" in sparse and "-" in sparse
    value = json.dumps(incident(2), indent=2).encode()
    assert "\n" not in json_line(value, json.loads(value))
    assert json_line(b'{"a": 1}', {"a": 1}) == '{"a": 1}', "kept exactly as on the topic"


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


def test_incidents_broker_unreachable_exit_2(capsys):
    from detector.transport.broker import free_port

    argv = ["incidents", "--connect-timeout", "0.5", "--bootstrap", f"127.0.0.1:{free_port()}"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "cannot reach Kafka" in err and err.count("\n") == 1, err
