"""SASL: the settings reach kafka-python exactly, the login works, the password never shows.

Tansu cannot create SCRAM users in memory mode, so the end-to-end tests put
``tls_proxy.SaslGate`` in front of it: a Kafka SASL front that does the
SaslHandshake/SaslAuthenticate exchange itself (PLAIN, and SCRAM-SHA-256/512
per RFC 5802, checking the client's proof) and forwards every other request
to Tansu. It proves what kafka-python really sends for our config; it is not a
test of a real Kafka broker's SASL implementation.

Where the password may come from: the environment variable named by
``kafka.sasl_password_env`` or the file ``kafka.sasl_password_file`` (trailing
newline stripped) — never the TOML file, a ``CANWATCH_KAFKA_*`` variable or
the command line.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from test_detect_service import CANWATCH
from test_tls_end_to_end import canwatch, replay_argv
from tls_proxy import SecuredBroker, openssl_binary, stunnel_binary

from detector.cli import build_parser, main
from detector.core.config import load_config
from detector.core.errors import ConfigError
from detector.transport.broker import BrokerError, free_port, tansu_binary
from detector.transport.kafka_io import (
    KafkaConnectError,
    Secret,
    admin_config,
    make_consumer,
    make_producer,
    sasl_password,
)
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
PASSWORD = "Zq-7f!pw 'quoted' \\ é-42"  # spaces, quotes, a backslash, non-ASCII
USER = "svc-canwatch"
PW_ENV = "CW_TEST_SASL_PASSWORD"
NO_PROBE = {"api_version": (2, 8)}  # kafka-python skips the bootstrap probe with this


def sasl_toml(path: Path, bootstrap: str, protocol: str, mechanism: str, **extra: str) -> Path:
    lines = [
        "[kafka]",
        f'bootstrap = "{bootstrap}"',
        f'security_protocol = "{protocol}"',
        f'sasl_mechanism = "{mechanism}"',
        f'sasl_username = "{USER}"',
        *(f'{k} = "{v}"' for k, v in extra.items()),
    ]
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def leaked(text: str, password: str = PASSWORD) -> bool:
    """The password, or its form in a repr of its UTF-8 bytes (kafka-python's wire dumps)."""
    return password in text or repr(password.encode())[2:-1] in text


# -- 1. the settings reach the kafka-python clients exactly ----------------------------------


@pytest.fixture
def tls_files(tmp_path: Path) -> dict[str, str]:
    """Paths for ssl_cafile/certfile/keyfile (building a client does not read them)."""
    out = {}
    for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
        (tmp_path / key).write_text("placeholder\n")
        out[key] = str(tmp_path / key)
    return out


@pytest.mark.parametrize("source", ["env", "file"])
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_sasl_settings_reach_producer_and_consumer(
    mechanism, protocol, source, tmp_path, tls_files
):
    extra = {**tls_files, "sasl_password_env": PW_ENV}
    env = {}
    if source == "file":
        pw_file = tmp_path / "sasl.pw"
        pw_file.write_text(PASSWORD + "\n", encoding="utf-8")
        extra["sasl_password_file"] = str(pw_file)
        env[PW_ENV] = "not-this-one: the file wins"
    else:
        env[PW_ENV] = PASSWORD
    toml = sasl_toml(tmp_path / "c.toml", f"127.0.0.1:{free_port()}", protocol, mechanism, **extra)
    cfg = load_config(toml, env={}).kafka

    producer = make_producer(cfg, env=env, **NO_PROBE)  # closed port: nothing is contacted
    consumer = make_consumer(cfg, [], group_id="g", env=env, **NO_PROBE)
    try:
        for client in (producer, consumer):
            conf = client.config
            assert conf["security_protocol"] == protocol
            assert conf["sasl_mechanism"] == mechanism
            assert conf["sasl_plain_username"] == USER
            assert conf["sasl_plain_password"] == PASSWORD  # exactly: newline stripped
            for key, path in tls_files.items():
                assert conf[key] == (path if protocol == "SASL_SSL" else None), key
            assert not leaked(repr(conf)), "kafka-python's config repr shows the password"
        # The connection manager, which builds each broker connection, has them too.
        manager = consumer._manager.config
        assert (manager["sasl_mechanism"], manager["sasl_plain_username"]) == (mechanism, USER)
        assert manager["sasl_plain_password"] == PASSWORD
    finally:
        producer.close(timeout=1)
        consumer.close()
    assert admin_config(cfg, env=env)["sasl_plain_password"] == PASSWORD


@pytest.mark.parametrize(
    "content, expected",
    [
        ("pw\n", "pw"),
        ("pw\r\n", "pw"),
        ("pw\n\n", "pw"),
        (" spaced pw \n", " spaced pw "),  # only the line end goes, spaces are the password's
        ("multi\nline", "multi\nline"),
    ],
)
def test_password_file_loses_only_its_trailing_newline(tmp_path, content, expected):
    pw = tmp_path / "pw"
    pw.write_bytes(content.encode())
    cfg = load_config(
        None,
        env={},
        overrides={
            "kafka.security_protocol": "SASL_PLAINTEXT",
            "kafka.sasl_mechanism": "PLAIN",
            "kafka.sasl_username": USER,
            "kafka.sasl_password_file": str(pw),
        },
    ).kafka
    got = sasl_password(cfg, env={})
    assert got == expected and isinstance(got, Secret) and repr(got) == "'***'"


def test_missing_or_empty_password_is_a_clear_error_without_a_value(tmp_path):
    base = {
        "kafka.security_protocol": "SASL_SSL",
        "kafka.sasl_mechanism": "SCRAM-SHA-512",
        "kafka.sasl_username": USER,
    }
    cfg = load_config(None, env={}, overrides=base).kafka
    with pytest.raises(ConfigError, match="environment variable CANWATCH_SASL_PASSWORD"):
        sasl_password(cfg, env={})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    cfg = load_config(None, env={}, overrides={**base, "kafka.sasl_password_file": str(empty)})
    with pytest.raises(ConfigError, match=f"kafka.sasl_password_file {empty}"):
        sasl_password(cfg.kafka, env={})
    cfg = load_config(None, env={}, overrides={**base, "kafka.sasl_password_file": "/nope/pw"})
    with pytest.raises(ConfigError, match="kafka.sasl_password_file /nope/pw: cannot read"):
        sasl_password(cfg.kafka, env={})
    no_user = load_config(None, env={}, overrides={**base, "kafka.sasl_username": ""}).kafka
    with pytest.raises(ConfigError, match="kafka.sasl_username is required"):
        make_producer(no_user, env={PW_ENV: PASSWORD})


def test_password_is_not_accepted_from_config_env_convention_or_command_line(tmp_path, capsys):
    toml = tmp_path / "c.toml"
    toml.write_text(f"[kafka]\nsasl_password = {json.dumps(PASSWORD)}\n", encoding="utf-8")
    with pytest.raises(ConfigError) as err:
        load_config(toml, env={})
    assert str(err.value) == "unknown config key kafka.sasl_password"  # the value is not echoed
    with pytest.raises(ConfigError, match="unknown config key kafka.sasl_password"):
        load_config(None, env={}, overrides={"kafka.sasl_password": PASSWORD})
    # CANWATCH_<SECTION>_<KEY> only maps known keys: this one is refused, not echoed.
    with pytest.raises(ConfigError, match="CANWATCH_KAFKA_SASL_PASSWORD names no setting") as err:
        load_config(None, env={"CANWATCH_KAFKA_SASL_PASSWORD": PASSWORD})
    assert PASSWORD not in str(err.value)
    # No command has a password (or generic --set) flag; argparse refuses one.
    parser = build_parser()
    commands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert {"replay", "detect", "incidents", "demo"} <= set(commands.choices)
    for name, sub in commands.choices.items():
        flags = {flag for action in sub._actions for flag in action.option_strings}
        assert not {f for f in flags if "pass" in f or "secret" in f or f == "--set"}, name
        assert "password" not in sub.format_help().lower(), name
    for flag in (["--set", "kafka.sasl_password=x"], ["--set=kafka.sasl_password=x"]):
        with pytest.raises(SystemExit) as exit_:
            main(["incidents", *flag, "--connect-timeout", "1"])
        assert exit_.value.code == 2
    # (a separate value is taken by argparse for `incidents`' action, show or export: refused
    # as an invalid choice; given with "=", the flag is named as unrecognized)
    assert "unrecognized arguments: --set" in capsys.readouterr().err


# -- 2. end to end through a SASL front, password never in the output ---------------------------


def _require_tools(tls: bool) -> None:
    try:
        tansu_binary()
    except BrokerError as exc:
        pytest.skip(f"embedded broker unavailable: {exc}")
    if tls and not (stunnel_binary() and openssl_binary()):
        pytest.skip("stunnel4/openssl not installed")


@pytest.fixture(scope="module")
def sasl_brokers(tmp_path_factory: pytest.TempPathFactory):
    """``{tls: SecuredBroker}``, started on first use, one user: USER / PASSWORD."""
    started: dict[bool, SecuredBroker] = {}

    def get(tls: bool) -> SecuredBroker:
        _require_tools(tls)
        if tls not in started:
            secured = SecuredBroker(
                tmp_path_factory.mktemp("sasl"), tls=tls, users={USER: PASSWORD}
            )
            started[tls] = secured.start()
        return started[tls]

    try:
        yield get
    finally:
        for secured in started.values():
            secured.close()


def _extra(secured: SecuredBroker, tmp_path: Path, source: str, password: str) -> tuple:
    extra, env = {}, {}
    if secured.ca is not None:
        extra["ssl_cafile"] = str(secured.ca.cert)
    if source == "file":
        (tmp_path / "pw").write_text(password + "\n", encoding="utf-8")
        extra["sasl_password_file"] = str(tmp_path / "pw")
    else:
        extra["sasl_password_env"] = PW_ENV
        env[PW_ENV] = password
    return extra, env


@pytest.mark.kafka
@pytest.mark.parametrize(
    "mechanism, tls, source, refuse",
    [
        # PLAIN sends the password itself: its refusal is checked with and without TLS
        ("PLAIN", False, "env", True),
        ("SCRAM-SHA-256", False, "file", True),
        ("SCRAM-SHA-512", False, "env", False),
        ("PLAIN", True, "file", True),
        ("SCRAM-SHA-256", True, "env", False),
        ("SCRAM-SHA-512", True, "file", True),
    ],
)
def test_sasl_login_end_to_end_and_password_never_logged(
    sasl_brokers, mechanism, tls, source, refuse, tmp_path, unique_topic
):
    secured = sasl_brokers(tls)
    topic = unique_topic("telemetry")
    extra, env = _extra(secured, tmp_path, source, PASSWORD)
    toml = sasl_toml(
        tmp_path / "c.toml",
        secured.bootstrap,
        secured.security_protocol,
        mechanism,
        telemetry_topic=topic,
        **extra,
    )
    recording = tmp_path / "veh.log"
    write_frames(recording, simulate_vehicle("cusw", 2, 1.7e9, seed=3))
    logins = len(secured.gate.logins)

    # -vv: kafka-python logs every request and the raw bytes sent, SASL tokens included.
    ok = canwatch("-vv", *replay_argv(recording, toml), env=env)
    assert ok.returncode == 0, ok.stderr[-3000:]
    assert f"to {topic}" in ok.stdout
    new = secured.gate.logins[logins:]
    assert new and all(login == (mechanism, USER, True) for login in new), new
    assert "SaslAuthenticateRequest" in ok.stderr, "the DEBUG wire log was on"
    assert not leaked(ok.stdout + ok.stderr)

    # What was published can be read back by a SASL consumer built from the same config.
    cfg = load_config(toml, env={}).kafka
    consumer = make_consumer(cfg, [topic], group_id=unique_topic("group"), env=env)
    try:
        got = 0
        deadline = time.monotonic() + 60
        while got == 0 and time.monotonic() < deadline:
            got += sum(len(r) for r in consumer.poll(timeout_ms=500).values())
        assert got > 0
    finally:
        consumer.close()

    if not refuse:
        return
    # The wrong password: refused by the front, a one-line error, no password anywhere.
    wrong = "wrong-" + PASSWORD
    extra, env = _extra(secured, tmp_path, source, wrong)
    sasl_toml(tmp_path / "c.toml", secured.bootstrap, secured.security_protocol, mechanism, **extra)
    refused = canwatch("-vv", *replay_argv(recording, toml, "--connect-timeout", "3"), env=env)
    assert refused.returncode == 2
    line = refused.stderr.strip().splitlines()[-1]
    assert line.startswith("canwatch replay: error: cannot reach Kafka at "), line
    for word in ("SASL", mechanism, repr(USER), "sasl_password" if source == "file" else PW_ENV):
        assert word in line, (word, line)
    assert (mechanism, USER, False) in secured.gate.logins
    assert not leaked(refused.stdout + refused.stderr, wrong)
    assert not leaked(refused.stdout + refused.stderr)


@pytest.mark.kafka
def test_detect_service_logs_never_show_the_password(sasl_brokers, tmp_path, unique_topic):
    """The long-running service at DEBUG, SASL PLAIN (the password is on the wire)."""
    secured = sasl_brokers(False)
    topic = unique_topic("telemetry")
    extra, env = _extra(secured, tmp_path, "env", PASSWORD)
    toml = sasl_toml(
        tmp_path / "c.toml",
        secured.bootstrap,
        "SASL_PLAINTEXT",
        "PLAIN",
        telemetry_topic=topic,
        group_id=unique_topic("group"),
        **extra,
    )
    logins = len(secured.gate.logins)
    log_path = tmp_path / "detect.log"
    with open(log_path, "w", encoding="utf-8") as log:
        detect = subprocess.Popen(
            [
                str(CANWATCH),
                "-vv",
                "detect",
                "--config",
                str(toml),
                "--models",
                str(tmp_path),
                "--metrics",
                f"127.0.0.1:{free_port()}",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
        )
    try:
        deadline = time.monotonic() + 60
        # producer + consumer (bootstrap, then the group coordinator) have logged in
        while len(secured.gate.logins) - logins < 3 and time.monotonic() < deadline:
            assert detect.poll() is None, log_path.read_text(encoding="utf-8")[-3000:]
            time.sleep(0.1)
        assert len(secured.gate.logins) - logins >= 3, secured.gate.logins[logins:]
        detect.send_signal(signal.SIGTERM)
        detect.wait(timeout=30)
    finally:
        if detect.poll() is None:
            detect.kill()
            detect.wait()
    text = log_path.read_text(encoding="utf-8")
    assert detect.returncode == 0, text[-3000:]
    assert "SaslAuthenticateRequest" in text
    assert all(login == ("PLAIN", USER, True) for login in secured.gate.logins[logins:])
    assert not leaked(text)


# -- 3. failures before any login: nothing listening, a broker without SASL ---------------------


@pytest.mark.kafka
@pytest.mark.parametrize("target", ["nothing listening", "Tansu without SASL"])
def test_sasl_errors_are_clear_and_never_show_the_password(broker, target, tmp_path):
    bootstrap = f"127.0.0.1:{free_port()}" if target == "nothing listening" else broker.bootstrap
    toml = sasl_toml(
        tmp_path / "c.toml",
        bootstrap,
        "SASL_PLAINTEXT",
        "PLAIN",
        sasl_password_env=PW_ENV,
        incident_topic="can.incidents.sasl-test",
    )
    env = {PW_ENV: PASSWORD}
    recording = tmp_path / "veh.log"
    write_frames(recording, simulate_vehicle("cusw", 2, 1.7e9, seed=4))
    runs = {
        "replay": canwatch(
            "-vv",
            *replay_argv(recording, toml, "--connect-timeout", "2"),
            env=env,
        ),
        "incidents": canwatch(
            "-vv", "incidents", "--connect-timeout", "2", "--config", str(toml), env=env
        ),
    }
    for command, proc in runs.items():
        assert proc.returncode == 2, (command, proc.stderr[-2000:])
        assert not leaked(proc.stdout + proc.stderr), command
        line = proc.stderr.strip().splitlines()[-1]
        assert line.startswith(f"canwatch {command}: error: cannot reach Kafka at {bootstrap}")
        if target == "nothing listening":
            assert "no broker accepts connections" in line, line
        else:
            assert "SASL PLAIN login" in line and PW_ENV in line, line


def test_kafka_python_debug_records_are_redacted_in_process(caplog):
    """Any logger, any handler: a registered password never reaches a log record."""
    cfg = load_config(
        None,
        env={},
        overrides={
            "kafka.bootstrap": f"127.0.0.1:{free_port()}",
            "kafka.security_protocol": "SASL_PLAINTEXT",
            "kafka.sasl_mechanism": "PLAIN",
            "kafka.sasl_username": USER,
            "kafka.sasl_password_env": PW_ENV,
        },
    ).kafka
    with caplog.at_level(logging.DEBUG):
        with pytest.raises(KafkaConnectError) as err:
            make_producer(cfg, env={PW_ENV: PASSWORD}, bootstrap_timeout_ms=300)
        logging.getLogger("kafka.protocol.parser").debug(
            "Send: %r", bytearray(b"\x00" + USER.encode() + b"\x00" + PASSWORD.encode())
        )
        logging.getLogger("anything").warning("token %s", PASSWORD)
    assert not leaked(str(err.value))
    assert not leaked(caplog.text) and caplog.text.count("***") >= 2
