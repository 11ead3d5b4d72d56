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
    ],
)
def test_bad_values_name_key_and_value(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(None, env={}, overrides=overrides)


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
