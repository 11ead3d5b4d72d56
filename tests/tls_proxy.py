"""TLS and SASL in front of the embedded broker, for tests.

The bundled Tansu's own TLS does not work and its SCRAM users cannot be
created in memory mode, so tests put fronts before Tansu's plain listener:
Debian's ``stunnel4`` terminates TLS, ``SaslGate`` (below) does the Kafka SASL
exchange (PLAIN, SCRAM-SHA-256/512) and forwards the rest. Tansu advertises the
front-most port, so clients that got metadata come back through the fronts::

    with SecuredBroker(tmp_path) as tls:        # TLS only
        tls.bootstrap   # "127.0.0.1:<TLS port>"; security_protocol SSL, ssl_cafile=tls.ca.cert
    with SecuredBroker(tmp_path, users={"svc": "pw"}) as b:   # SASL_SSL

Certificates come from the ``openssl`` command line (no extra Python
dependency): ``make_ca`` writes a self-signed CA, ``make_cert`` a server (or
client) certificate signed by it. Everything is EC P-256 and valid for two days.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import hmac
import os
import shutil
import signal
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from detector.transport.broker import EmbeddedBroker, _death_signal_hook, free_port, stop_process

SERVER_NAMES = ("IP:127.0.0.1", "DNS:localhost")


def stunnel_binary() -> str | None:
    return shutil.which("stunnel4") or shutil.which("stunnel")


def openssl_binary() -> str | None:
    return shutil.which("openssl")


def _openssl(*args: str, cwd: Path) -> None:
    openssl = openssl_binary()
    assert openssl, "openssl command line not found"
    proc = subprocess.run(
        [openssl, *args], cwd=cwd, capture_output=True, text=True, timeout=60, check=False
    )
    if proc.returncode != 0:
        raise RuntimeError(f"openssl {args[0]} failed: {proc.stderr.strip()}")


_EC = ("-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes")


@dataclass(frozen=True)
class CA:
    cert: Path
    key: Path
    name: str


@dataclass(frozen=True)
class KeyPair:
    cert: Path
    key: Path


def make_ca(directory: Path, name: str = "canwatch-test-ca") -> CA:
    """A self-signed CA in ``directory`` (``<name>.pem``, ``<name>.key``)."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    _openssl(
        "req", "-x509", *_EC, "-keyout", key.name, "-out", cert.name, "-days", "2",
        "-subj", f"/CN={name}",
        "-addext", "basicConstraints=critical,CA:TRUE",
        "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        cwd=directory,
    )  # fmt: skip
    return CA(cert, key, name)


def make_cert(
    ca: CA,
    directory: Path,
    name: str = "server",
    alt_names: tuple[str, ...] = SERVER_NAMES,
    usage: str = "serverAuth",
) -> KeyPair:
    """A leaf certificate signed by ``ca``: ``<name>.pem`` and its key ``<name>.key``."""
    directory.mkdir(parents=True, exist_ok=True)
    cert, key, csr = (directory / f"{name}{ext}" for ext in (".pem", ".key", ".csr"))
    ext = directory / f"{name}.ext"
    ext.write_text(
        f"subjectAltName={','.join(alt_names)}\n"
        "basicConstraints=critical,CA:FALSE\n"
        "keyUsage=critical,digitalSignature\n"
        f"extendedKeyUsage={usage}\n"
        "subjectKeyIdentifier=hash\n"
        "authorityKeyIdentifier=keyid,issuer\n",
        encoding="utf-8",
    )
    _openssl("req", *_EC, "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={name}",
             cwd=directory)  # fmt: skip
    _openssl(
        "x509", "-req", "-in", csr.name, "-CA", str(ca.cert), "-CAkey", str(ca.key),
        "-CAcreateserial", "-out", cert.name, "-days", "2", "-extfile", ext.name,
        cwd=directory,
    )  # fmt: skip
    return KeyPair(cert, key)


def _port_open(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class Stunnel:
    """One stunnel server process: TLS on 127.0.0.1:``accept_port`` -> plain ``connect``.

    Runs in the foreground (``foreground = yes``) as a child of the test,
    tracked and stopped by PID (SIGTERM, then SIGKILL); Linux also kills it if
    the test process dies. ``client_ca``: require client certificates signed by it.
    """

    def __init__(
        self,
        accept_port: int,
        connect: str,
        server: KeyPair,
        directory: Path,
        client_ca: CA | None = None,
    ) -> None:
        self.accept_port, self.connect = accept_port, connect
        self.server, self.client_ca = server, client_ca
        self.directory = directory
        self.conf = directory / "stunnel.conf"
        self.log_path = directory / "stunnel.log"
        self._proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    def config_text(self) -> str:
        lines = [
            "foreground = yes",
            "pid =",  # no pid file: the process is ours, tracked by Popen
            "syslog = no",
            f"output = {self.log_path}",
            "debug = notice",
            "",
            "[kafka-tls]",
            f"accept = 127.0.0.1:{self.accept_port}",
            f"connect = {self.connect}",
            f"cert = {self.server.cert}",
            f"key = {self.server.key}",
        ]
        if self.client_ca is not None:
            lines += [f"CAfile = {self.client_ca.cert}", "verifyChain = yes", "requireCert = yes"]
        return "\n".join(lines) + "\n"

    def start(self, timeout_s: float = 20.0) -> Stunnel:
        binary = stunnel_binary()
        assert binary, "stunnel4 not installed (apt-get install -y stunnel4)"
        self.directory.mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.config_text(), encoding="utf-8")
        with open(self.directory / "stunnel.stderr", "ab") as err:
            self._proc = subprocess.Popen(
                [binary, str(self.conf)],
                stdin=subprocess.DEVNULL,
                stdout=err,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_death_signal_hook(),
            )
        deadline = time.monotonic() + timeout_s
        while not _port_open(self.accept_port):
            if self._proc.poll() is not None or time.monotonic() > deadline:
                status = self._proc.poll()
                self.stop()
                raise RuntimeError(
                    f"stunnel did not listen on 127.0.0.1:{self.accept_port} "
                    f"(exit status {status}): {self.log_tail()}"
                )
            time.sleep(0.02)
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            stop_process(proc, signal.SIGTERM, timeout_s)

    def log_tail(self, lines: int = 10) -> str:
        text = ""
        for path in (self.log_path, self.directory / "stunnel.stderr"):
            if path.exists():
                text += path.read_text(encoding="utf-8", errors="replace")
        return "\n".join(text.splitlines()[-lines:]) or "no output"


# -- SASL -------------------------------------------------------------------------------

SASL_HANDSHAKE, SASL_AUTHENTICATE, API_VERSIONS = 17, 36, 18
SASL_AUTHENTICATION_FAILED = 58
_SCRAM_HASHES = {"SCRAM-SHA-256": hashlib.sha256, "SCRAM-SHA-512": hashlib.sha512}


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = b""
    while len(buf) < n:
        chunk = sock.recv(n - len(buf))
        if not chunk:
            raise ConnectionError("peer closed")
        buf += chunk
    return buf


def _recv_frame(sock: socket.socket) -> bytes:
    (size,) = struct.unpack(">i", _recv_exact(sock, 4))
    return _recv_exact(sock, size)


class _ScramServer:
    """The server side of RFC 5802 SCRAM for one user (what Kafka does)."""

    def __init__(self, mechanism: str, user: str, password: str, iterations: int = 4096) -> None:
        self.user = user
        self.hash = _SCRAM_HASHES[mechanism]
        self.salt, self.iterations = os.urandom(16), iterations
        self.salted = hashlib.pbkdf2_hmac(
            self.hash().name, password.encode(), self.salt, iterations
        )
        self.first_bare = self.server_first = self.nonce = b""

    def _hmac(self, key: bytes, msg: bytes) -> bytes:
        return hmac.new(key, msg, self.hash).digest()

    def first(self, client_first: bytes) -> bytes:
        self.first_bare = client_first.split(b",", 2)[2]  # drop the GS2 header "n,,"
        nonce = dict(kv.split(b"=", 1) for kv in self.first_bare.split(b","))[b"r"]
        self.nonce = nonce + base64.b64encode(os.urandom(12)).rstrip(b"=")
        salt = base64.b64encode(self.salt)
        self.server_first = b"r=%s,s=%s,i=%d" % (self.nonce, salt, self.iterations)
        return self.server_first

    def final(self, client_final: bytes) -> bytes | None:
        """server-final-message, or None when the proof is wrong."""
        without_proof, _, proof = client_final.rpartition(b",p=")
        auth = b",".join((self.first_bare, self.server_first, without_proof))
        client_key = self._hmac(self.salted, b"Client Key")
        stored = self.hash(client_key).digest()
        signature = self._hmac(stored, auth)
        given = bytes(a ^ b for a, b in zip(base64.b64decode(proof), signature, strict=True))
        if self.hash(given).digest() != stored or not without_proof.endswith(self.nonce):
            return None
        return b"v=" + base64.b64encode(self._hmac(self._hmac(self.salted, b"Server Key"), auth))


class SaslGate:
    """A Kafka SASL front for Tansu (whose SCRAM users cannot be created in memory mode).

    Listens on 127.0.0.1:``port``; on each connection it answers SaslHandshake
    and SaslAuthenticate itself — PLAIN, SCRAM-SHA-256 and SCRAM-SHA-512 for the
    accounts in ``users`` — and forwards every other request, once the client
    is authenticated (ApiVersions also before), to ``upstream`` and the
    response back, as a Kafka SASL listener would. Wrong credentials get
    SASL_AUTHENTICATION_FAILED; any other request before authentication closes
    the connection. ``logins`` records (mechanism, user, accepted) per attempt.
    """

    def __init__(self, port: int, upstream: str, users: dict[str, str]) -> None:
        self.port, self.users = port, users
        host, _, up_port = upstream.rpartition(":")
        self.upstream = (host, int(up_port))
        self.logins: list[tuple[str, str, bool]] = []
        self._server: socket.socket | None = None
        self._conns: list[socket.socket] = []
        self._lock = threading.Lock()

    def start(self) -> SaslGate:
        server = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        server.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        server.bind(("127.0.0.1", self.port))
        server.listen(16)
        self._server = server
        threading.Thread(target=self._accept, name="sasl-gate", daemon=True).start()
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            with contextlib.suppress(OSError):
                server.shutdown(socket.SHUT_RDWR)
            server.close()
        with self._lock:
            conns, self._conns = self._conns, []
        for c in conns:
            with contextlib.suppress(OSError):
                c.shutdown(socket.SHUT_RDWR)
            c.close()

    def _accept(self) -> None:
        while self._server is not None:
            try:
                client, _ = self._server.accept()
            except OSError:
                return
            with self._lock:
                self._conns.append(client)
            threading.Thread(target=self._serve, args=(client,), daemon=True).start()

    def _serve(self, client: socket.socket) -> None:
        from kafka.protocol.sasl import SaslAuthenticateRequest, SaslAuthenticateResponse

        upstream: socket.socket | None = None
        mechanism, authenticated, scram, user = "", False, None, ""
        try:
            upstream = socket.create_connection(self.upstream, timeout=10)
            upstream.settimeout(None)  # JoinGroup and Fetch may take a while to answer
            with self._lock:
                self._conns.append(upstream)
            while True:
                frame = _recv_frame(client)
                api_key, version, correlation = struct.unpack(">hhi", frame[:8])
                if api_key == SASL_HANDSHAKE:
                    (n,) = struct.unpack(">h", frame[8:10])  # client id, then the mechanism
                    (m,) = struct.unpack(">h", frame[10 + n : 12 + n])
                    mechanism = frame[12 + n : 12 + n + m].decode()
                    known = mechanism in ("PLAIN", *_SCRAM_HASHES)
                    mechs = ["PLAIN", *_SCRAM_HASHES]
                    body = struct.pack(">ihi", correlation, 0 if known else 33, len(mechs))
                    body += b"".join(struct.pack(">h", len(x)) + x.encode() for x in mechs)
                    client.sendall(struct.pack(">i", len(body)) + body)
                    continue
                if api_key == SASL_AUTHENTICATE:
                    token = SaslAuthenticateRequest.decode(frame, version=version, header=True)
                    reply, ok = self._authenticate(mechanism, token.auth_bytes, scram)
                    if isinstance(reply, _ScramServer):
                        scram, reply, user = reply, reply.server_first, reply.user
                    elif mechanism == "PLAIN":
                        user = token.auth_bytes.split(b"\0")[1].decode(errors="replace")
                    if ok is not None:
                        self.logins.append((mechanism, user, ok))
                        authenticated = ok
                    resp = SaslAuthenticateResponse(
                        version=version,
                        error_code=0 if ok is not False else SASL_AUTHENTICATION_FAILED,
                        error_message=None if ok is not False else "Authentication failed",
                        auth_bytes=reply if ok is not False else b"",
                        session_lifetime_ms=0,
                    )
                    resp.with_header(correlation_id=correlation)
                    client.sendall(resp.encode(header=True, framed=True))
                    continue
                if not authenticated and api_key != API_VERSIONS:
                    return  # what a SASL listener does with an unauthenticated request
                upstream.sendall(struct.pack(">i", len(frame)) + frame)
                answer = _recv_frame(upstream)
                client.sendall(struct.pack(">i", len(answer)) + answer)
        except (OSError, ConnectionError, ValueError, KeyError, struct.error):
            return
        finally:
            for s in (client, upstream):
                if s is not None:
                    s.close()

    def _authenticate(
        self, mechanism: str, token: bytes, scram: _ScramServer | None
    ) -> tuple[bytes | _ScramServer, bool | None]:
        """(reply, verdict): verdict None while a SCRAM exchange is under way."""
        if mechanism == "PLAIN":
            _authzid, user, password = token.decode().split("\0")
            return b"", self.users.get(user) == password
        if scram is None:  # SCRAM client-first: n,,n=<user>,r=<nonce>
            bare = token.split(b",", 2)[2]
            user = dict(kv.split(b"=", 1) for kv in bare.split(b","))[b"n"].decode()
            if user not in self.users:
                return b"", False
            server = _ScramServer(mechanism, user, self.users[user])
            server.first(token)
            return server, None
        final = scram.final(token)
        return (final or b""), final is not None


# -- the stack ----------------------------------------------------------------------------


class SecuredBroker:
    """Tansu behind TLS (stunnel) and/or SASL (``SaslGate``), on loopback.

    client -> [stunnel, TLS] -> [SaslGate, SASL] -> Tansu's plain listener; Tansu
    advertises the front-most port, so clients that got metadata come back the
    same way. ``tls``: a throwaway CA and a server certificate for
    127.0.0.1/localhost are made in ``directory`` (``ca``); ``client_ca``: stunnel
    also requires client certificates signed by it. ``users``: SASL accounts.
    """

    def __init__(
        self,
        directory: Path,
        *,
        tls: bool = True,
        users: dict[str, str] | None = None,
        client_ca: CA | None = None,
        attempts: int = 3,
    ) -> None:
        self.directory = directory
        self.tls, self.users, self.client_ca = tls, users, client_ca
        self.ca = make_ca(directory / "ca") if tls else None
        self.server = make_cert(self.ca, directory / "server") if self.ca else None
        self.attempts = attempts
        self.broker: EmbeddedBroker | None = None
        self.gate: SaslGate | None = None
        self.stunnel: Stunnel | None = None

    @property
    def bootstrap(self) -> str:
        assert self.broker is not None
        return self.broker.bootstrap

    @property
    def plain(self) -> str:
        """Tansu's own listener: no TLS, no SASL."""
        assert self.broker is not None
        return self.broker.listener

    @property
    def security_protocol(self) -> str:
        return ("SASL_" if self.users else "") + ("SSL" if self.tls else "PLAINTEXT")

    def start(self) -> SecuredBroker:
        for attempt in range(self.attempts):
            # Kernel-chosen ports; another process could take one before it is
            # bound, so a failure to listen is retried with new ones.
            plain = free_port()
            gate_port = free_port() if self.users else None
            tls_port = free_port() if self.tls else None
            front = tls_port or gate_port or plain
            broker = EmbeddedBroker(
                port=plain, advertised_port=front, log_path=self.directory / "tansu.log"
            )
            gate = SaslGate(gate_port, f"127.0.0.1:{plain}", self.users) if gate_port else None
            tunnel = None
            if tls_port:
                assert self.server is not None
                tunnel = Stunnel(
                    tls_port, f"127.0.0.1:{gate_port or plain}", self.server,
                    self.directory / "stunnel", client_ca=self.client_ca,
                )  # fmt: skip
            try:
                broker.start()
                if gate:
                    gate.start()
                if tunnel:
                    tunnel.start()
            except Exception:
                if tunnel:
                    tunnel.stop()
                if gate:
                    gate.stop()
                broker.close()
                if attempt + 1 == self.attempts:
                    raise
                continue
            self.broker, self.gate, self.stunnel = broker, gate, tunnel
            return self
        return self  # unreachable

    def close(self) -> None:
        if self.stunnel is not None:
            self.stunnel.stop()
            self.stunnel = None
        if self.gate is not None:
            self.gate.stop()
            self.gate = None
        if self.broker is not None:
            self.broker.close()
            self.broker = None

    def __enter__(self) -> SecuredBroker:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
