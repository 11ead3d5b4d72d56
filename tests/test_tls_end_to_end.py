"""canwatch over TLS: replay -> detect -> incidents through stunnel in front of Tansu.

The bundled Tansu's own TLS does not work, so ``tls_proxy.SecuredBroker``
terminates TLS with Debian's stunnel4 in front of Tansu's plain listener, and
Tansu advertises the stunnel port: after the bootstrap every client connection
(metadata, produce, fetch, group coordination) goes through TLS. The CA and the
server certificate (127.0.0.1 / localhost) are throwaway, made with openssl.

The CLIs are configured the way a user would: a TOML file with
``security_protocol = "SSL"`` and ``ssl_cafile`` (there is no command-line
flag for security settings). Clients that do not trust that CA must be
refused with a one-line error naming TLS and the certificate.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from kafka import KafkaConsumer, TopicPartition
from test_detect_service import CANWATCH, WAIT_S, now_start
from tls_proxy import SecuredBroker, make_ca, make_cert, openssl_binary, stunnel_binary

from detector.core.config import KafkaConfig
from detector.transport.broker import BrokerError, create_topics, free_port, tansu_binary
from detector.transport.kafka_io import connect_diagnosis
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

pytestmark = pytest.mark.kafka

VEHICLE = "veh-jeep-tls-01"


def _require_tools() -> None:
    try:
        tansu_binary()
    except BrokerError as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    if not stunnel_binary():
        pytest.skip("stunnel4 not installed (apt-get install -y stunnel4)")
    if not openssl_binary():
        pytest.skip("openssl not installed")


@pytest.fixture(scope="module")
def tls(tmp_path_factory: pytest.TempPathFactory):
    _require_tools()
    with SecuredBroker(tmp_path_factory.mktemp("tls")) as secured:
        yield secured


def write_config(path: Path, bootstrap: str, protocol: str = "SSL", **kafka: str) -> Path:
    lines = ["[kafka]", f'bootstrap = "{bootstrap}"', f'security_protocol = "{protocol}"']
    lines += [f'{key} = "{value}"' for key, value in kafka.items()]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def canwatch(
    *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess:
    """The CLI as a user runs it; ``env`` is added to this process's environment."""
    return subprocess.run(
        [str(CANWATCH), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **env} if env else None,
    )


def replay_argv(recording: Path, config: Path, *options: str) -> list[str]:
    """``canwatch replay`` of a jeep recording, as fast as it goes, with ``config``."""
    return ["replay", str(recording), "--brand", "jeep", "--max-speed", *options, "--config", str(config)]


def stunnel_connections(secured: SecuredBroker) -> int:
    """TLS connections stunnel has accepted so far (from its log)."""
    assert secured.stunnel is not None
    log = secured.stunnel.log_path.read_text(encoding="utf-8", errors="replace")
    return log.count("accepted connection")


def assert_one_line_error(proc: subprocess.CompletedProcess, command: str, *words: str) -> str:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert "Traceback" not in proc.stderr, proc.stderr
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith(f"canwatch {command}: error: cannot reach Kafka at "), line
    for word in words:
        assert word in line, (word, line)
    return line


# -- 1. the whole loop over TLS ----------------------------------------------------------


def test_replay_detect_incidents_over_tls(tls, unique_topic, cusw_models, tmp_path):
    ca = str(tls.ca.cert)
    topics = {
        "telemetry_topic": unique_topic("telemetry"),
        "incident_topic": unique_topic("incidents"),
        "dlq_topic": unique_topic("dlq"),
    }
    create_topics(
        tls.bootstrap,
        {topics["telemetry_topic"]: 2, topics["incident_topic"]: 1, topics["dlq_topic"]: 1},
        security_protocol="SSL",
        ssl_cafile=ca,
    )
    config = write_config(
        tmp_path / "tls.toml",
        tls.bootstrap,
        ssl_cafile=ca,
        group_id=unique_topic("group"),
        **topics,
    )
    recording = tmp_path / f"{VEHICLE}.log"
    # Whole-second start, published as recorded: windows line up as in test_detect_service.
    write_frames(recording, simulate_vehicle("cusw", 30, now_start(30), seed=4242))
    before = stunnel_connections(tls)

    stderr_path = tmp_path / "detect.stderr"
    with open(stderr_path, "w", encoding="utf-8") as stderr:
        detect = subprocess.Popen(
            [
                str(CANWATCH),
                "detect",
                "--config",
                str(config),
                "--models",
                str(cusw_models),
                "--metrics",
                f"127.0.0.1:{free_port()}",
                "--detector-id",
                "det-tls",
            ],
            stdout=subprocess.PIPE,
            stderr=stderr,
            text=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    reader = None
    try:
        replay = canwatch(
            *replay_argv(
                recording, config, "--attack", "dos:start=8,duration=6", "--no-rebase-time"
            )
        )
        assert replay.returncode == 0, replay.stderr
        assert "published" in replay.stdout and topics["telemetry_topic"] in replay.stdout

        # A TLS consumer of our own waits for the detector's closed incident.
        reader = KafkaConsumer(
            bootstrap_servers=tls.bootstrap,
            security_protocol="SSL",
            ssl_cafile=ca,
            group_id=None,
            auto_offset_reset="earliest",
        )
        reader.assign([TopicPartition(topics["incident_topic"], 0)])
        events: list[dict] = []

        def closed_dos() -> dict | None:
            return next(
                (e for e in events if e["status"] == "closed" and e["suspected_attack"] == "dos"),
                None,
            )

        deadline = time.monotonic() + WAIT_S
        while closed_dos() is None and time.monotonic() < deadline:
            assert detect.poll() is None, stderr_path.read_text(encoding="utf-8")
            for records in reader.poll(timeout_ms=200).values():
                events.extend(json.loads(r.value) for r in records)
        incident = closed_dos()
        assert incident is not None, f"no closed dos incident within {WAIT_S:g} s: {events}"
        assert {(e["vehicle"], e["detector"]) for e in events} == {(VEHICLE, "det-tls")}

        # `canwatch incidents` reads it over TLS too, with the same config file.
        shown = canwatch("incidents", "--json", "--config", str(config), "--timeout", "30")
        assert shown.returncode == 0, shown.stderr
        lines = [json.loads(line) for line in shown.stdout.splitlines()]
        assert incident in lines

        detect.send_signal(signal.SIGTERM)
        out, _ = detect.communicate(timeout=30)
    finally:
        if reader is not None:
            reader.close()
        if detect.poll() is None:
            detect.kill()
            detect.communicate()
    err = stderr_path.read_text(encoding="utf-8")
    assert detect.returncode == 0, err
    assert f"from {tls.bootstrap}" in out
    # Every client above went through stunnel (none could reach Tansu otherwise:
    # it advertises only the TLS port).
    assert stunnel_connections(tls) > before


# -- 2. clients that do not trust the CA are refused --------------------------------------


def test_clients_without_the_ca_are_refused_with_one_line(tls, tmp_path):
    other = make_ca(tmp_path / "other", "some-other-ca")
    recording = tmp_path / "veh.log"
    write_frames(recording, simulate_vehicle("cusw", 2, 1.7e9, seed=1))
    configs = {
        "system CAs": write_config(tmp_path / "system.toml", tls.bootstrap),
        "another CA": write_config(
            tmp_path / "other.toml", tls.bootstrap, ssl_cafile=str(other.cert)
        ),
    }
    # The service waits kafka-python's default 30 s for a broker; start it first.
    detect = subprocess.Popen(
        [
            str(CANWATCH),
            "detect",
            "--config",
            str(configs["system CAs"]),
            "--models",
            str(tmp_path),
            "--metrics",
            f"127.0.0.1:{free_port()}",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        for what, config in configs.items():
            replay = canwatch(*replay_argv(recording, config, "--connect-timeout", "3"))
            line = assert_one_line_error(
                replay, "replay", "TLS certificate verification failed", "certificate"
            )
            assert (str(other.cert) in line) == (what == "another CA"), line
            assert ("system CAs" in line) == (what == "system CAs"), line
            assert replay.stderr.count("\n") == 1, replay.stderr
            incidents = canwatch("incidents", "--connect-timeout", "3", "--config", str(config))
            assert_one_line_error(incidents, "incidents", "TLS certificate verification failed")
            assert incidents.stderr.count("\n") == 1, incidents.stderr

        # A TLS client at Tansu's own (plain) port: the handshake never completes.
        at_plain = KafkaConfig(
            bootstrap=tls.plain, security_protocol="SSL", ssl_cafile=str(tls.ca.cert)
        )
        assert "is it a TLS listener?" in connect_diagnosis(at_plain, timeout_s=1.0)
        # A plain client at the TLS port gets no Kafka answer either: still one line.
        plain = write_config(tmp_path / "plain.toml", tls.bootstrap, protocol="PLAINTEXT")
        assert_one_line_error(
            canwatch("incidents", "--connect-timeout", "3", "--config", str(plain)), "incidents"
        )

        out, err = detect.communicate(timeout=120)
    finally:
        if detect.poll() is None:
            detect.kill()
            detect.communicate()
    # The service logs kafka-python's retries while it waits (those log lines are
    # the library's), then stops with one line of its own, not an uncaught exception.
    assert detect.returncode == 2, err
    last = err.strip().splitlines()[-1]
    assert last.startswith("canwatch detect: error: cannot reach Kafka at "), last
    assert "TLS certificate verification failed" in last and "system CAs" in last


# -- 3. mutual TLS: kafka.ssl_certfile / ssl_keyfile ----------------------------------------


def test_client_certificate_is_sent_and_required(tmp_path, unique_topic):
    _require_tools()
    clients = make_ca(tmp_path / "client-ca", "canwatch-client-ca")
    good = make_cert(
        clients, tmp_path / "client", "canwatch-client", ("DNS:canwatch",), "clientAuth"
    )
    with SecuredBroker(tmp_path / "mtls", client_ca=clients) as mtls:
        topic = unique_topic("telemetry")
        recording = tmp_path / "veh.log"
        write_frames(recording, simulate_vehicle("cusw", 2, 1.7e9, seed=2))
        ca = str(mtls.ca.cert)
        with_cert = write_config(
            tmp_path / "mtls.toml",
            mtls.bootstrap,
            ssl_cafile=ca,
            ssl_certfile=str(good.cert),
            ssl_keyfile=str(good.key),
            telemetry_topic=topic,
        )
        replay = canwatch(
            "replay", str(recording), "--brand", "jeep", "--max-speed", "--config", str(with_cert)
        )
        assert replay.returncode == 0, replay.stderr
        assert f"to {topic}" in replay.stdout

        without = write_config(tmp_path / "nocert.toml", mtls.bootstrap, ssl_cafile=ca)
        refused = canwatch(*replay_argv(recording, without, "--connect-timeout", "3"))
        line = assert_one_line_error(refused, "replay", "TLS")
        assert "certificate" in line.lower(), line
