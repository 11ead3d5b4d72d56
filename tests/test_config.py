import re

import pytest

from detector.core.brands import load_fleet
from detector.core.config import DEFAULT_CONFIG_FILE, load_config
from detector.core.errors import ConfigError


def test_default_file_matches_dataclass_defaults():
    assert load_config(DEFAULT_CONFIG_FILE, env={}) == load_config(None, env={})


def test_precedence_overrides_beat_env_beat_file(tmp_path):
    f = tmp_path / "c.toml"
    f.write_text('[kafka]\nbootstrap = "file:1"\ngroup_id = "g-file"\n')
    env = {"CANWATCH_KAFKA_BOOTSTRAP": "env:2", "CANWATCH_DETECTION_WINDOW_S": "2.5"}
    c = load_config(f, env=env, overrides={"kafka.bootstrap": "flag:3"})
    assert c.kafka.bootstrap == "flag:3"
    assert c.kafka.group_id == "g-file"
    assert c.detection.window_s == 2.5


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"detection.window_s": 0}, "detection.window_s must be in [0.01, 3600], got 0"),
        ({"kafka.security_protocol": "TLS"}, "kafka.security_protocol must be one of"),
        ({"kafka.max_poll_records": "many"}, "kafka.max_poll_records must be int, got 'many'"),
        ({"kafka.nope": 1}, "unknown config key kafka.nope"),
        ({"kafka.compression": "zstd"}, "kafka.compression must be one of lz4, gzip, none, got"),
        ({"kafka.security_protocol": "SASL_SSL"}, "kafka.sasl_mechanism is required"),
        # a dead letter written into the telemetry topic is read and refused for ever
        ({"kafka.dlq_topic": "can.telemetry"}, "kafka.telemetry_topic must differ from kafka.dlq"),
        ({"kafka.incident_topic": "can.telemetry.dlq"}, "must differ from kafka.dlq_topic"),
        ({"kafka.telemetry_topic": " "}, "kafka.telemetry_topic must be a topic name"),
        ({"kafka.group_id": ""}, "kafka.group_id must be a non-empty group id"),
        ({"kafka.bootstrap": "127.0.0.1:abc"}, "kafka.bootstrap must be host:port"),
        ({"kafka.heartbeat_interval_ms": 6000}, "heartbeat_interval_ms must be below"),
        # every live frame would be a dead letter, the detector staying ready
        ({"detection.max_future_s": "nan"}, "detection.max_future_s must be float, got 'nan'"),
        ({"detection.max_future_s": -5}, "detection.max_future_s must be in (0, 86400]"),
        ({"detection.min_ts": "inf"}, "detection.min_ts must be float"),
        ({"incidents.max_evidence": -1}, "incidents.max_evidence must be >= 1"),
        ({"incidents.max_can_ids": 0}, "incidents.max_can_ids must be >= 1"),
        ({"models.reload_interval_s": "inf"}, "models.reload_interval_s must be float"),
    ],
)
def test_bad_values_name_key_and_value(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(None, env={}, overrides=overrides)


def test_a_secret_written_where_its_variable_name_belongs_is_not_echoed():
    for key in ("privacy.pseudonymize_key_env", "kafka.sasl_password_env"):
        with pytest.raises(ConfigError, match="variable's name") as err:
            load_config(None, env={}, overrides={key: "Zq8#real-hmac-secret-value"})
        assert "Zq8#" not in str(err.value)


def test_a_misspelt_environment_variable_is_refused_not_ignored():
    with pytest.raises(ConfigError, match="CANWATCH_KAFKA_BOOTSTRAPS names no setting of"):
        load_config(None, env={"CANWATCH_KAFKA_BOOTSTRAPS": "broker:9093"})
    # the variables holding secrets are named by settings, not settings themselves
    env = {"CANWATCH_PRIVACY_KEY": "x" * 32, "CANWATCH_PRIVACY_PSEUDONYMIZE_KEY_ENV":
           "CANWATCH_PRIVACY_KEY", "CANWATCH_SASL_PASSWORD": "p"}  # fmt: skip
    assert load_config(None, env=env).privacy.pseudonymize_key_env == "CANWATCH_PRIVACY_KEY"


def test_bad_toml_names_the_file(tmp_path):
    f = tmp_path / "bad.toml"
    f.write_text("[kafka\n")
    with pytest.raises(ConfigError, match="bad.toml: invalid TOML"):
        load_config(f, env={})


def test_fleet_has_fourteen_brands_on_known_platforms():
    fleet = load_fleet()
    assert len(fleet.brands) == 14
    assert fleet.platform_of("maserati") == fleet.platform_of("alfa-romeo") == "giorgio"
    assert fleet.platform_of("road") == "road"  # external data: its own platform
    with pytest.raises(ConfigError, match="lower-case slug"):
        fleet.platform_of("Jeep!")
    with pytest.raises(ConfigError, match="lower-case slug"):  # `$` matches before a newline
        fleet.platform_of("jeep\n")
