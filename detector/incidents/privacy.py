"""Pseudonymous vehicle ids: HMAC-SHA256 of the incoming id under a secret key.

With ``privacy.pseudonymize_key_env`` (the name of an environment variable) or
``privacy.pseudonymize_key_file`` set, the id in each record key is replaced at
the decode edge, before anything is stored, logged, published or exported.
The same key always gives the same pseudonym, so incidents of one vehicle stay
linked; without the key, nobody can map a pseudonym back to the id.
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections.abc import Mapping
from pathlib import Path

from detector.core.config import PrivacyConfig
from detector.core.errors import ConfigError

PREFIX = "p-"


def load_key(cfg: PrivacyConfig, env: Mapping[str, str] | None = None) -> bytes | None:
    """The HMAC key, or None when pseudonymisation is off. Never logged."""
    env = os.environ if env is None else env
    if cfg.pseudonymize_key_file:
        try:
            key = Path(cfg.pseudonymize_key_file).read_bytes().strip()
        except OSError as exc:
            raise ConfigError(
                f"privacy.pseudonymize_key_file: cannot read {cfg.pseudonymize_key_file}: {exc.strerror}"
            ) from None
    elif cfg.pseudonymize_key_env:
        value = env.get(cfg.pseudonymize_key_env)
        if value is None:
            raise ConfigError(
                f"privacy.pseudonymize_key_env names {cfg.pseudonymize_key_env}, which is not set"
            )
        # stripped as the file's is: a secret mounted from a file ends in a newline, and
        # one instance reading it from the env, another from the file, must agree
        key = value.encode().strip()
    else:
        return None
    if len(key) < 16:
        raise ConfigError("the pseudonymisation key must be at least 16 bytes")
    return key


def pseudonym(key: bytes, vehicle_id: str | bytes) -> str:
    raw = vehicle_id.encode() if isinstance(vehicle_id, str) else vehicle_id
    return PREFIX + hmac.new(key, raw, hashlib.sha256).hexdigest()[:32]


def scrub(
    key: bytes, record_key: bytes | None, value: bytes | None
) -> tuple[bytes | None, bytes | None]:
    """A dead letter's key and value with the raw vehicle id replaced by its pseudonym."""
    if not record_key:
        return record_key, value
    alias = pseudonym(key, record_key).encode()
    return alias, (value.replace(record_key, alias) if value else value)
