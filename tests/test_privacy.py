import pytest

from detector.core.config import PrivacyConfig, load_config
from detector.core.errors import ConfigError
from detector.incidents.privacy import load_key, pseudonym, scrub

KEY = b"0123456789abcdef-secret"


def test_pseudonym_is_stable_keyed_and_hides_the_id():
    a = pseudonym(KEY, "VIN-ZFA31200000123456")
    assert a == pseudonym(KEY, b"VIN-ZFA31200000123456")
    assert a != pseudonym(b"another-key-0123456789", "VIN-ZFA31200000123456")
    assert a != pseudonym(KEY, "VIN-ZFA31200000123457")
    assert "ZFA312" not in a and a.startswith("p-") and len(a) == 34


def test_key_from_env_or_file(tmp_path):
    assert load_key(PrivacyConfig(), env={}) is None
    env = {"CW_KEY": KEY.decode()}
    assert load_key(PrivacyConfig(pseudonymize_key_env="CW_KEY"), env=env) == KEY
    f = tmp_path / "key"
    f.write_bytes(KEY + b"\n")
    assert load_key(PrivacyConfig(pseudonymize_key_file=str(f)), env={}) == KEY
    # the same secret from a file-mounted env var (its newline kept) gives the same key:
    # two instances configured each way pseudonymised one vehicle two ways
    env = {"CW_KEY": KEY.decode() + "\n"}
    assert load_key(PrivacyConfig(pseudonymize_key_env="CW_KEY"), env=env) == KEY
    with pytest.raises(ConfigError, match="both set"):
        load_config(None, env={}, overrides={"privacy.pseudonymize_key_env": "CW_KEY",
                                             "privacy.pseudonymize_key_file": str(f)})  # fmt: skip


@pytest.mark.parametrize(
    "cfg, env, message",
    [
        (PrivacyConfig(pseudonymize_key_env="CW_KEY"), {}, "CW_KEY, which is not set"),
        (PrivacyConfig(pseudonymize_key_env="CW_KEY"), {"CW_KEY": "short"}, "at least 16 bytes"),
        (PrivacyConfig(pseudonymize_key_file="/nonexistent/key"), {}, "cannot read"),
    ],
)
def test_bad_key_settings_are_config_errors_without_the_secret(cfg, env, message):
    with pytest.raises(ConfigError, match=message) as err:
        load_key(cfg, env=env)
    assert "short" not in str(err.value)


def test_scrub_replaces_the_id_in_key_and_body():
    key, value = scrub(KEY, b"VIN-1", b'{"vehicle": "VIN-1", "frames": 3}')
    assert b"VIN-1" not in key + value
    assert key == pseudonym(KEY, "VIN-1").encode() and key in value
    assert scrub(KEY, None, b"x") == (None, b"x")
