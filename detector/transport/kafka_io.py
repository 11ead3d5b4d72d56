"""kafka-python clients built from ``KafkaConfig``, and a correct ``end_offsets``.

Option names are kafka-python 3.0.x's (pinned in pyproject.toml). Secrets: the
SASL password is read here from the environment variable named by
``sasl_password_env`` or from ``sasl_password_file`` — never from the config
file or the command line — and both the password and the kwargs dicts have a
redacting repr, because kafka-python's admin client logs its whole
configuration at DEBUG. kafka-python also logs, at DEBUG, every request and
the raw bytes it sends, which for SASL PLAIN contain the password in clear:
``sasl_password`` therefore registers the password with ``redact_in_logs``,
and every log record of the process (any logger, any handler) shows ``***``
in its place.

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

Connection failures: kafka-python reports a failed bootstrap as a bare
``KafkaTimeoutError`` and leaves the reason (refused TLS certificate, a TLS
client talking to a plain port, ...) to its log. ``make_producer`` and
``make_consumer`` turn it into ``KafkaConnectError`` (one line for the CLIs)
and connect again (TCP, the TLS handshake with the same settings) to name
the cause (``connect_diagnosis``).
"""

from __future__ import annotations

import logging
import os
import socket
import ssl
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from detector.core.config import KafkaConfig
from detector.core.errors import CanwatchError, ConfigError

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
    redact_in_logs(password)
    return Secret(password)


def password_source(cfg: KafkaConfig) -> str:
    """Where the SASL password is read from, for messages (never the value)."""
    if cfg.sasl_password_file:
        return f"kafka.sasl_password_file {cfg.sasl_password_file}"
    return f"environment variable {cfg.sasl_password_env}"


_REDACTED: set[str] = set()


def redact_in_logs(secret: str) -> None:
    """Replace ``secret`` by ``***`` in every log record made from now on.

    Also its forms inside a ``repr`` of str or of its UTF-8 bytes (kafka-python's
    wire dumps are ``bytearray(b'...')``). Done in the log record factory, so it
    covers every logger and handler, including ones configured later; records
    are only built for enabled levels, so the cost is nil unless logging is on.
    """
    forms = {secret, repr(secret)[1:-1], repr(secret.encode("utf-8"))[2:-1]}
    if not _REDACTED:
        base = logging.getLogRecordFactory()

        def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
            record = base(*args, **kwargs)
            try:
                message = record.getMessage()
            except Exception:  # a bad format string: logging reports it later
                return record
            redacted = message
            for form in sorted(_REDACTED, key=len, reverse=True):
                redacted = redacted.replace(form, "***")
            if redacted != message:
                record.msg, record.args = redacted, None
            return record

        logging.setLogRecordFactory(factory)
    _REDACTED.update(f for f in forms if f)


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
        compression_type=None if cfg.compression == "none" else cfg.compression,
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


class KafkaConnectError(CanwatchError):
    """A client could not bootstrap from ``kafka.bootstrap``; names the cause when it can."""


def _tls_context(cfg: KafkaConfig) -> ssl.SSLContext:
    """The client context kafka-python 3.0 builds from these settings."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, checks the host name
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    if cfg.ssl_cafile:
        ctx.load_verify_locations(cfg.ssl_cafile)
    else:
        ctx.load_default_certs()
    if cfg.ssl_certfile:
        # a callable, so an encrypted key fails here instead of prompting
        ctx.load_cert_chain(cfg.ssl_certfile, cfg.ssl_keyfile or None, password=lambda: b"")
    return ctx


def _tls_problem(
    ctx: ssl.SSLContext, sock: socket.socket, server: str, host: str, cafile: str
) -> str | None:
    """Why a TLS session with ``server`` fails, or None. Consumes ``sock``."""
    try:
        with ctx.wrap_socket(sock, server_hostname=host) as tls:
            # TLS 1.3: a refused client certificate shows on the first read.
            tls.settimeout(0.5)
            try:
                if tls.recv(1) == b"":
                    return (
                        f"{server} closed the TLS connection after the handshake "
                        "(does it require a client certificate? kafka.ssl_certfile)"
                    )
            except TimeoutError:
                pass  # quiet, as a Kafka broker is until asked: TLS is fine
        return None
    except ssl.SSLCertVerificationError as exc:
        return (
            f"TLS certificate verification failed for {server}: {exc.verify_message} "
            f"(the broker's certificate must be signed by a CA in {cafile} and name {host})"
        )
    except ssl.SSLError as exc:
        return f"TLS handshake with {server} failed: {exc.reason or exc}"
    except OSError as exc:
        return f"TLS handshake with {server} failed: {exc} (is it a TLS listener?)"
    finally:
        sock.close()


def connect_diagnosis(cfg: KafkaConfig, timeout_s: float = 5.0) -> str | None:
    """Why clients with these settings cannot bootstrap, as far as can be told; or None.

    kafka-python reports only a timeout. This connects to each bootstrap
    server again: nothing listening, then (with an SSL security_protocol) a
    TLS handshake with kafka-python's own settings, naming a certificate or
    handshake failure. When TCP and TLS are fine and SASL is configured, what
    is left is the SASL login, so the message says so (with the mechanism,
    user and password *source*, never the password). None: no idea.
    """
    ctx, cafile = None, ""
    if "SSL" in cfg.security_protocol:
        try:
            ctx = _tls_context(cfg)
        except (ssl.SSLError, OSError) as exc:
            return f"cannot load the TLS files (kafka.ssl_cafile/ssl_certfile/ssl_keyfile): {exc}"
        cafile = f"kafka.ssl_cafile {cfg.ssl_cafile}" if cfg.ssl_cafile else "the system CAs"
    unreachable = []
    for server in (s.strip() for s in cfg.bootstrap.split(",")):
        host, _, port = server.rpartition(":")
        try:
            sock = socket.create_connection((host, int(port)), timeout=timeout_s)
        except (OSError, ValueError) as exc:
            unreachable.append(f"{server}: {getattr(exc, 'strerror', None) or exc}")
            continue
        if ctx is None:
            sock.close()
        else:
            problem = _tls_problem(ctx, sock, server, host, cafile)
            if problem:
                return problem
        if cfg.security_protocol.startswith("SASL"):
            over = "TLS" if ctx is not None else "TCP"
            return (
                f"{server} answers over {over}, so the SASL {cfg.sasl_mechanism} login as "
                f"{cfg.sasl_username!r} was probably refused: check kafka.sasl_username, the "
                f"password in {password_source(cfg)}, and that the broker enables "
                f"{cfg.sasl_mechanism}"
            )
        return None
    return "no broker accepts connections (" + "; ".join(unreachable) + ")"


def connect_error(
    cfg: KafkaConfig, exc: BaseException, timeout_s: float = 5.0
) -> KafkaConnectError:
    """The one-line error for a client that could not bootstrap (never shows secrets)."""
    reason = connect_diagnosis(cfg, timeout_s) or exc
    return KafkaConnectError(f"cannot reach Kafka at {cfg.bootstrap}: {reason}")


def _diagnosis_timeout(kwargs: Mapping[str, Any]) -> float:
    """No longer per step than the caller was prepared to wait for the bootstrap."""
    return min(5.0, max(0.5, kwargs.get("bootstrap_timeout_ms", 30_000) / 1000))


def make_producer(cfg: KafkaConfig, env: Mapping[str, str] | None = None, **overrides: Any):
    from kafka import KafkaProducer
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    kwargs = producer_config(cfg, env)
    kwargs.update(overrides)
    try:
        return KafkaProducer(**kwargs)
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise connect_error(cfg, exc, _diagnosis_timeout(kwargs)) from None


def discard_producer(producer: Any) -> None:
    """Close a producer at once, dropping what it still holds (the caller sends it again,
    or has failed). kafka-python's ``close`` flushes first: with records pending it
    raises and leaves the producer open, so that its ``__del__`` flushed again for 1 s
    wherever the collector ran, and printed a traceback at exit."""
    try:
        producer.close(timeout=0)
        return
    except Exception as exc:  # a broken client's close must not break its caller
        logging.getLogger("canwatch.kafka").debug("closing the producer: %r", exc)
    sender = getattr(producer, "_sender", None)
    if sender is not None:
        sender.force_close()  # its thread ends without sending what is pending
    producer._closed = True  # what close() sets when done: __del__ then does nothing


def make_consumer(
    cfg: KafkaConfig,
    topics: Iterable[str],
    group_id: str | None = None,
    env: Mapping[str, str] | None = None,
    **overrides: Any,
):
    """A consumer subscribed to ``topics`` (group ``group_id`` or the configured one)."""
    from kafka import KafkaConsumer
    from kafka.errors import KafkaConnectionError, KafkaTimeoutError

    kwargs = consumer_config(cfg, group_id, env)
    kwargs.update(overrides)
    try:
        consumer = KafkaConsumer(**kwargs)
    except (KafkaTimeoutError, KafkaConnectionError) as exc:
        raise connect_error(cfg, exc, _diagnosis_timeout(kwargs)) from None
    topics = list(topics)
    if topics:
        consumer.subscribe(topics)
    return consumer


def end_offsets(
    consumer: Any, partitions: Iterable[Any], timeout_ms: int | None = None
) -> dict[Any, int]:
    """Log end offsets that do not under-report on Tansu (see the module doc).

    max(ListOffsets latest, the high watermark of the last Fetch response); the
    latter is known only for partitions this consumer has fetched. ``timeout_ms``
    bounds the ListOffsets request (kafka-python's default otherwise).
    """
    partitions = list(partitions)
    bound = {} if timeout_ms is None else {"timeout_ms": timeout_ms}
    listed = consumer.end_offsets(partitions, **bound) if partitions else {}
    out = {}
    for tp in partitions:
        highwater = consumer.highwater(tp) if tp in consumer.assignment() else None
        out[tp] = max(int(listed.get(tp) or 0), int(highwater or 0))
    return out


def crc32c_accelerated() -> bool:
    """True when kafka-python checksums record batches with the C ``crc32c`` module."""
    from kafka.record import util

    return getattr(util, "crc32c_c", None) is not None and util._crc32c is util.crc32c_c
