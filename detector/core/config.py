"""One validated, frozen configuration object.

Precedence: command-line flags > environment (CANWATCH_<SECTION>_<KEY>) >
TOML file > defaults. Validation happens once, in ``load_config``; errors name
the key and the bad value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from detector.core.errors import ConfigError

DEFAULT_CONFIG_FILE = Path(__file__).resolve().parents[2] / "configs" / "canwatch.toml"


@dataclass(frozen=True)
class KafkaConfig:
    bootstrap: str = "127.0.0.1:9092"
    group_id: str = "canwatch-detect"
    telemetry_topic: str = "can.telemetry"
    incident_topic: str = "can.incidents"
    dlq_topic: str = "can.telemetry.dlq"
    campaign_topic: str = "can.campaigns"
    client_id: str = "canwatch"
    session_timeout_ms: int = 6000
    heartbeat_interval_ms: int = 2000
    connect_timeout_s: float = 30.0  # detect at start: wait this long for a broker
    max_poll_records: int = 2000
    commit_interval_s: float = 1.0
    compression: str = "lz4"
    security_protocol: str = "PLAINTEXT"
    ssl_cafile: str = ""
    ssl_certfile: str = ""
    ssl_keyfile: str = ""
    sasl_mechanism: str = ""
    sasl_username: str = ""
    sasl_password_env: str = "CANWATCH_SASL_PASSWORD"
    sasl_password_file: str = ""


@dataclass(frozen=True)
class DetectionConfig:
    window_s: float = 1.0
    target_fpr: float = 0.002
    n_estimators: int = 100
    max_samples: int = 512
    seed: int = 7
    max_future_s: float = 300.0
    min_ts: float = 0.0


@dataclass(frozen=True)
class ModelsConfig:
    dir: str = "models"
    reload_interval_s: float = 5.0
    # `canwatch models promote` refuses a shadow that would have opened more than this
    # many times the serving model's incidents over its shadow period (one added to each)
    promote_max_ratio: float = 2.0
    # Drift (detector.service.drift): each brand's figures cover this rolling period of
    # the detector's clock, and CanwatchModelDrift fires on a drift ratio that stays
    # above drift_alert_ratio (its default measured: docs/service.md, "Drift").
    drift_period_s: float = 600.0
    drift_alert_ratio: float = 0.5


@dataclass(frozen=True)
class IncidentConfig:
    quiet_windows: int = 5
    max_can_ids: int = 10
    max_evidence: int = 5


@dataclass(frozen=True)
class MetricsConfig:
    address: str = "127.0.0.1:9108"


@dataclass(frozen=True)
class PrivacyConfig:
    pseudonymize_key_env: str = ""
    pseudonymize_key_file: str = ""


@dataclass(frozen=True)
class FleetConfig:
    brands_file: str = ""


@dataclass(frozen=True)
class WatchdogConfig:
    stall_s: float = 30.0  # records waiting, no progress this long: not ready, logged
    exit_s: float = 120.0  # no progress this long: exit non-zero (the supervisor restarts)
    shutdown_timeout_s: float = 10.0  # after SIGTERM/SIGINT, exit within this whatever Kafka does


@dataclass(frozen=True)
class LimitsConfig:
    # Per instance, all platforms. Past them: vehicles that never had a window scored
    # are retired first (longest idle first); if none is left, a new vehicle is refused.
    max_vehicles: int = 20_000
    # (vehicle, id) streams; each vehicle reserves its platform's learned ids + 9
    max_streams: int = 2_000_000
    # unseen ids with a stream of their own per vehicle window; further ones are pooled
    max_novel_ids: int = 1024


@dataclass(frozen=True)
class CampaignsConfig:
    # The same suspected attack on the same CAN id (an incident's top id) on at least
    # min_vehicles vehicles of one brand within window_s is one campaign; it closes
    # when none of its incidents has been active for window_s.
    min_vehicles: int = 3
    window_s: float = 1800.0
    # How much later than the incidents around it an incident may reach the incident
    # topic and still be ordered among them (campaign ids stay the same on replay).
    lateness_s: float = 30.0
    max_members: int = 1000  # members listed per campaign record (the counts are exact)
    group_id: str = "canwatch-campaigns"
    metrics_address: str = "127.0.0.1:9110"


@dataclass(frozen=True)
class Config:
    kafka: KafkaConfig = field(default_factory=KafkaConfig)
    detection: DetectionConfig = field(default_factory=DetectionConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    incidents: IncidentConfig = field(default_factory=IncidentConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    fleet: FleetConfig = field(default_factory=FleetConfig)
    watchdog: WatchdogConfig = field(default_factory=WatchdogConfig)
    limits: LimitsConfig = field(default_factory=LimitsConfig)
    campaigns: CampaignsConfig = field(default_factory=CampaignsConfig)


#: Codecs for the records canwatch produces; lz4 is a dependency, gzip is in the
#: standard library (zstd and snappy would need packages of their own).
COMPRESSIONS = ("lz4", "gzip", "none")

_RULES: dict[str, tuple[Any, str]] = {
    "kafka.security_protocol": (
        lambda v: v in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"},
        "one of PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL",
    ),
    "kafka.sasl_mechanism": (
        lambda v: v in {"", "PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"},
        "one of PLAIN, SCRAM-SHA-256, SCRAM-SHA-512 (or empty)",
    ),
    "kafka.bootstrap": (lambda v: all(_host_port(h) for h in v.split(",")),
                        "host:port[,host:port] with ports 1..65535"),  # fmt: skip
    "kafka.group_id": (lambda v: bool(v.strip()), "a non-empty group id"),
    "kafka.session_timeout_ms": (lambda v: v >= 1000, ">= 1000"),
    "kafka.heartbeat_interval_ms": (lambda v: v >= 100, ">= 100"),
    "kafka.connect_timeout_s": (lambda v: 0 < v <= 3600, "in (0, 3600]"),
    "kafka.max_poll_records": (lambda v: v >= 1, ">= 1"),
    "kafka.commit_interval_s": (lambda v: 0 <= v <= 60, "in [0, 60]"),
    "kafka.compression": (lambda v: v in COMPRESSIONS, "one of " + ", ".join(COMPRESSIONS)),
    "detection.window_s": (lambda v: 0.01 <= v <= 3600, "in [0.01, 3600]"),
    "detection.target_fpr": (lambda v: 0 < v < 0.5, "in (0, 0.5)"),
    "detection.n_estimators": (lambda v: 1 <= v <= 5000, "in [1, 5000]"),
    "detection.max_samples": (lambda v: v >= 2, ">= 2"),
    # every frame outside [min_ts, now + max_future_s] is a dead letter: a NaN or
    # negative horizon refused all live traffic while the detector stayed ready
    "detection.max_future_s": (lambda v: 0 < v <= 86400, "in (0, 86400]"),
    "detection.min_ts": (lambda v: 0 <= v < 4e9, "in [0, 4e9) epoch seconds"),
    "models.reload_interval_s": (lambda v: 0 < v <= 86400, "in (0, 86400]"),
    "models.promote_max_ratio": (lambda v: v >= 1, ">= 1"),
    "models.drift_period_s": (lambda v: 10 <= v <= 86400, "in [10, 86400]"),
    "models.drift_alert_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "incidents.quiet_windows": (lambda v: v >= 1, ">= 1"),
    "incidents.max_can_ids": (lambda v: v >= 1, ">= 1"),
    "incidents.max_evidence": (lambda v: v >= 1, ">= 1"),
    "privacy.pseudonymize_key_env": (lambda v: v == "" or _env_name(v), "an environment "
                                     "variable's name (the key is read from it)"),  # fmt: skip
    "kafka.sasl_password_env": (lambda v: v == "" or _env_name(v), "an environment variable's "
                                "name (the password is read from it)"),  # fmt: skip
    "metrics.address": (lambda v: _host_port(v, 0), "host:port with a port in 0..65535"),
    "watchdog.stall_s": (lambda v: 1 <= v <= 3600, "in [1, 3600]"),
    "watchdog.exit_s": (lambda v: 1 <= v <= 86400, "in [1, 86400]"),
    "watchdog.shutdown_timeout_s": (lambda v: 1 <= v <= 600, "in [1, 600]"),
    "limits.max_vehicles": (lambda v: v >= 1, ">= 1"),
    "limits.max_streams": (lambda v: v >= 1000, ">= 1000"),
    "limits.max_novel_ids": (lambda v: 8 <= v <= 1_000_000, "in [8, 1000000]"),
    "campaigns.min_vehicles": (lambda v: 2 <= v <= 1_000_000, "in [2, 1000000]"),
    "campaigns.window_s": (lambda v: 1 <= v <= 7 * 86400, "in [1, 604800]"),
    "campaigns.lateness_s": (lambda v: 0 <= v <= 3600, "in [0, 3600]"),
    "campaigns.max_members": (lambda v: v >= 1, ">= 1"),
    "campaigns.group_id": (lambda v: bool(v.strip()), "a non-empty group id"),
    "campaigns.metrics_address": (lambda v: _host_port(v, 0), "host:port with a port in "
                                  "0..65535"),  # fmt: skip
}


def _host_port(text: str, lowest: int = 1) -> bool:
    host, _, port = text.strip().rpartition(":")
    return bool(host) and port.isdigit() and lowest <= int(port) <= 65535


def _env_name(text: str) -> bool:
    return re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", text) is not None


#: Settings whose value must not be echoed in an error: a secret put where the name of
#: the variable holding it belongs
_SECRET_PRONE = frozenset({"privacy.pseudonymize_key_env", "kafka.sasl_password_env"})


def _coerce(key: str, value: Any, typ: type) -> Any:
    if typ is bool or isinstance(value, bool) and typ is not str:
        raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}")
    try:
        if typ is str:
            if not isinstance(value, str):
                raise TypeError
            return value
        if typ is int and isinstance(value, float) and not value.is_integer():
            raise TypeError
        out = typ(value)
        if typ is float and not math.isfinite(out):  # no setting means nan or inf
            raise ValueError
        return out
    except (TypeError, ValueError):
        raise ConfigError(f"{key} must be {typ.__name__}, got {value!r}") from None


def _section_from(name: str, cls: type, values: Mapping[str, Any]) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise ConfigError(f"unknown config key {name}.{unknown[0]}")
    kwargs = {}
    for key, value in values.items():
        typ = {"str": str, "int": int, "float": float}[str(known[key].type)]
        kwargs[key] = _coerce(f"{name}.{key}", value, typ)
    return cls(**kwargs)


def _env_overrides(env: Mapping[str, str]) -> dict[str, dict[str, str]]:
    out: dict[str, dict[str, str]] = {}
    for section, cls in _SECTIONS.items():
        for f in fields(cls):
            var = f"CANWATCH_{section}_{f.name}".upper()
            if var in env:
                out.setdefault(section, {})[f.name] = env[var]
    return out


#: Section name -> its class, in ``Config``'s order (the order errors are found in).
_SECTIONS: dict[str, type] = {f.name: f.default_factory for f in fields(Config)}


def validate(config: Config) -> Config:
    for dotted, (ok, rule) in _RULES.items():
        section, key = dotted.split(".")
        value = getattr(getattr(config, section), key)
        if not ok(value):
            shown = "a value that is not one" if dotted in _SECRET_PRONE else repr(value)
            raise ConfigError(f"{dotted} must be {rule}, got {shown}")
    w = config.watchdog
    if w.exit_s < w.stall_s:
        raise ConfigError(
            f"watchdog.exit_s must be >= watchdog.stall_s ({w.stall_s:g}), got {w.exit_s:g}"
        )
    k = config.kafka
    topics = {
        "telemetry_topic": k.telemetry_topic, "incident_topic": k.incident_topic,
        "dlq_topic": k.dlq_topic, "campaign_topic": k.campaign_topic,
    }  # fmt: skip
    for name, topic in topics.items():
        if not topic.strip():
            raise ConfigError(f"kafka.{name} must be a topic name, got {topic!r}")
        # a dead letter written into the telemetry topic is read, refused and written
        # again for ever; incidents read as telemetry are dead letters, and so on
        same = [other for other, t in topics.items() if t == topic and other != name]
        if same:
            raise ConfigError(
                f"kafka.{name} must differ from kafka.{same[0]}, both {topic!r}"
            )
    if config.privacy.pseudonymize_key_env and config.privacy.pseudonymize_key_file:
        raise ConfigError(  # the file won unsaid: two instances could pseudonymise apart
            "privacy.pseudonymize_key_env and privacy.pseudonymize_key_file are both set: "
            "set one"
        )
    if k.heartbeat_interval_ms >= k.session_timeout_ms:
        raise ConfigError(
            f"kafka.heartbeat_interval_ms must be below kafka.session_timeout_ms "
            f"({k.session_timeout_ms}), got {k.heartbeat_interval_ms}"
        )
    if k.security_protocol.startswith("SASL") and not k.sasl_mechanism:
        raise ConfigError(
            f"kafka.sasl_mechanism is required with security_protocol {k.security_protocol}"
        )
    return config


def load_config(
    path: Path | str | None = None,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> Config:
    """Load defaults < TOML file < environment < ``overrides`` ("section.key": value)."""
    env = os.environ if env is None else env
    raw: dict[str, dict[str, Any]] = {}
    if path is not None:
        p = Path(path)
        try:
            raw = tomllib.loads(p.read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(f"cannot read config file {p}: {exc.strerror}") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{p}: invalid TOML: {exc}") from None
    unknown = sorted(set(raw) - set(_SECTIONS))
    if unknown:
        raise ConfigError(f"unknown config section [{unknown[0]}]")
    for section, values in _env_overrides(env).items():
        raw.setdefault(section, {}).update(values)
    for dotted, value in (overrides or {}).items():
        if value is None:
            continue
        section, _, key = dotted.partition(".")
        raw.setdefault(section, {})[key] = value
    parts = {}
    for name, cls in _SECTIONS.items():
        values = raw.get(name, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section [{name}] must be a table, got {values!r}")
        parts[name] = _section_from(name, cls, values)
    config = validate(Config(**parts))
    _check_env_names(env, config)
    return config


def _check_env_names(env: Mapping[str, str], config: Config) -> None:
    """A ``CANWATCH_<SECTION>_...`` variable that names no setting is a typo: ignored, the
    service would run on the default (a broker it was not meant to reach). The variables
    that hold the secrets are named by settings, and are not settings themselves."""
    secrets = {config.privacy.pseudonymize_key_env, config.kafka.sasl_password_env}
    for section, cls in _SECTIONS.items():
        prefix = f"CANWATCH_{section}_".upper()
        known = {f"{prefix}{f.name.upper()}" for f in fields(cls)}
        for var in sorted(env):
            if var.startswith(prefix) and var not in known and var not in secrets:
                raise ConfigError(
                    f"environment variable {var} names no setting of [{section}] "
                    f"(settings: {', '.join(f.name for f in fields(cls))})"
                )


def as_dict(config: Config) -> dict[str, Any]:
    return dataclasses.asdict(config)


def with_overrides(config: Config, **sections: Mapping[str, Any]) -> Config:
    """A copy with some keys of some sections replaced, validated again."""
    parts = {name: replace(getattr(config, name), **values) for name, values in sections.items()}
    return validate(replace(config, **parts))
