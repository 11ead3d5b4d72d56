"""kafka-python clients built from ``KafkaConfig``, and a correct ``end_offsets``.

Option names are kafka-python 3.0.x's (pinned in pyproject.toml). Secrets: the
SASL password is read here from the environment variable named by
``sasl_password_env`` or from ``sasl_password_file`` — never from the config
file or the command line — and both the password and the kwargs dicts have a
redacting repr, because kafka-python's admin client logs its whole
configuration at DEBUG.

Delivery: producers use ``acks="all"`` and ``enable_idempotence=True``. The
embedded Tansu broker accepts idempotent producers (InitProducerId and
sequenced batches, measured with 20 000 records over 6 partitions, no sequence
errors), and real Kafka >= 0.11 does, so there is no reason to turn it off.

ListOffsets and lag: Tansu answers ListOffsets(latest) with the *base offset of
the last record batch + 1*, not the log end offset, so ``consumer.end_offsets``
under-reports by up to (records in the last batch - 1) — e.g. 5 for 9 records
produced as 1+1+1+1+5. The high watermark in Fetch responses is correct.
``end_offsets`` below takes the larger of the two, so consumer lag computed as
``end_offsets(...)[tp] - position(tp)`` is exact for partitions the consumer has
fetched (always true for a partition it is consuming) and a lower bound before
the first fetch. Against real Kafka both numbers agree.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from detector.config import KafkaConfig
from detector.errors import ConfigError

#: Producer limit above the wire format's 4 MiB record cap (headers, batch overhead).
MAX_REQUEST_BYTES = 5 * 1024 * 1024
_SECRET_KEYS = frozenset({"sasl_plain_password", "ssl_password", "sasl_oauth_token_provider"})


class Secret(str):
    """A str whose repr never shows its value (kafka-python uses it as a plain str)."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "'***'"


class KafkaKwargs(dict[str, Any]):
    """kafka-python keyword arguments whose repr/str redacts secrets."""

    def __repr__(self) -> str:
        shown = {k: ("***" if k in _SECRET_KEYS and v else v) for k, v in self.items()}
        return f"KafkaKwargs({shown!r})"

    __str__ = __repr__


def sasl_password(cfg: KafkaConfig, env: Mapping[str, str] | None = None) -> Secret:
    """The SASL password from ``sasl_password_file`` if set, else from the env var."""
    if cfg.sasl_password_file:
        path = Path(cfg.sasl_password_file)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"kafka.sasl_password_file {path}: cannot read: {exc.strerror}"
            ) from None
        password = text.rstrip("\r\n")
        source = f"kafka.sasl_password_file {path}"
    else:
        env = os.environ if env is None else env
        password = env.get(cfg.sasl_password_env, "")
        source = f"environment variable {cfg.sasl_password_env} (kafka.sasl_password_env)"
    if not password:
        raise ConfigError(f"SASL password is empty or missing: set {source}")
    return Secret(password)


def security_config(cfg: KafkaConfig, env: Mapping[str, str] | None = None) -> KafkaKwargs:
    """The security part shared by producers, consumers and admin clients."""
    out = KafkaKwargs(security_protocol=cfg.security_protocol)
    if "SSL" in cfg.security_protocol:
        for key in ("ssl_cafile", "ssl_certfile", "ssl_keyfile"):
            value = getattr(cfg, key)
            if value:
                if not Path(value).is_file():
                    raise ConfigError(f"kafka.{key}: no such file {value}")
                out[key] = value
    if cfg.security_protocol.startswith("SASL"):
        if not cfg.sasl_mechanism:
            raise ConfigError("kafka.sasl_mechanism is required with a SASL security_protocol")
        if not cfg.sasl_username:
            raise ConfigError("kafka.sasl_username is required with a SASL security_protocol")
        out["sasl_mechanism"] = cfg.sasl_mechanism
        out["sasl_plain_username"] = cfg.sasl_username
        out["sasl_plain_password"] = sasl_password(cfg, env)
    return out


def _common(cfg: KafkaConfig, env: Mapping[str, str] | None) -> KafkaKwargs:
    out = KafkaKwargs(bootstrap_servers=cfg.bootstrap.split(","), client_id=cfg.client_id)
    out.update(security_config(cfg, env))
    return out


def producer_config(cfg: KafkaConfig, env: Mapping[str, str] | None = None) -> KafkaKwargs:
    out = _common(cfg, env)
    out.update(
        acks="all",
        enable_idempotence=True,  # Tansu and Kafka >= 0.11 both support it; see module doc
        linger_ms=5,
        batch_size=1 << 20,
        compression_type=None,  # telemetry batches are small and CPU matters more
        max_request_size=MAX_REQUEST_BYTES,
    )
    return out


def consumer_config(
    cfg: KafkaConfig, group_id: str | None = None, env: Mapping[str, str] | None = None
) -> KafkaKwargs:
    out = _common(cfg, env)
    out.update(
        group_id=cfg.group_id if group_id is None else group_id,
        enable_auto_commit=False,  # the service commits after processing (at-least-once)
        auto_offset_reset="earliest",
        session_timeout_ms=cfg.session_timeout_ms,
        heartbeat_interval_ms=cfg.heartbeat_interval_ms,
        fetch_max_wait_ms=10,
        max_poll_records=cfg.max_poll_records,
    )
    return out


def admin_config(cfg: KafkaConfig, env: Mapping[str, str] | None = None) -> KafkaKwargs:
    return _common(cfg, env)


def make_producer(cfg: KafkaConfig, env: Mapping[str, str] | None = None, **overrides: Any):
    from kafka import KafkaProducer

    kwargs = producer_config(cfg, env)
    kwargs.update(overrides)
    return KafkaProducer(**kwargs)


def make_consumer(
    cfg: KafkaConfig,
    topics: Iterable[str],
    group_id: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
):
    """A consumer subscribed to ``topics`` (group ``group_id`` or the configured one)."""
    from kafka import KafkaConsumer

    kwargs = consumer_config(cfg, group_id, env)
    kwargs.update(overrides)
    consumer = KafkaConsumer(**kwargs)
    topics = list(topics)
    if topics:
        consumer.subscribe(topics)
    return consumer


def end_offsets(consumer: Any, partitions: Iterable[Any]) -> dict[Any, int]:
    """Log end offsets that do not under-report on Tansu (see the module doc).

    max(ListOffsets latest, the high watermark of the last Fetch response); the
    latter is known only for partitions this consumer has fetched.
    """
    partitions = list(partitions)
    listed = consumer.end_offsets(partitions) if partitions else {}
    out = {}
    for tp in partitions:
        highwater = consumer.highwater(tp) if tp in consumer.assignment() else None
        out[tp] = max(int(listed.get(tp) or 0), int(highwater or 0))
    return out


def crc32c_accelerated() -> bool:
    """True when kafka-python checksums record batches with the C ``crc32c`` module."""
    from kafka.record import util

    return getattr(util, "crc32c_c", None) is not None and util._crc32c is util.crc32c_c
