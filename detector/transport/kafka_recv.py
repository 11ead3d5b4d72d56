"""kafka-python's receive path without its small reads and needless copies, for a
process that is only a detector.

kafka-python 3.0 drains a readable broker socket with ``sock.recv(4096)`` in a
loop (``kafka.net.transport``), and no setting changes the size: a 1 MiB fetch
response is 256 system calls and 256 bytes objects, then a join, which its
parser slices (a copy) into the response buffer (a copy); decoding a response
then reads that buffer out with ``bytes(buffer[a:b])`` (two copies). In
``canwatch detect`` at full speed its IO thread was the largest part of the
process after the fold kernel (13-15 % of the CPU, ``bench/profile_detect.py``).

``read_large_chunks`` replaces two of kafka-python's methods:

* the transports' ``_sock_recv``: a plain TCP socket is read until it would
  block into a 1 MiB buffer of the connection's own, and what arrived is
  handed on as a view of that buffer, which the parser copies into the
  response before the next read (the selector is level-triggered: what did
  not fit wakes it again). With kafka-python's DEBUG logging on, a copy, so
  its wire dump shows the bytes. A TLS socket returns at most one TLS record
  per read while more may be decrypted and waiting; it too is read until it
  would block, into the same buffer, and handed on as bytes;
* ``KafkaBytes.read``: one copy of the requested range instead of two.

Everything else is as kafka-python does it: the same errors for a closed or
broken socket, the same log lines. The methods are private to kafka-python,
so they are replaced only for the exact version pyproject.toml pins and whose
code they were checked against; for any other version kafka-python is left
as it is, and says so.
"""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger(__name__)

#: The kafka-python whose ``_sock_recv`` and ``KafkaBytes.read`` these replace.
KAFKA_PYTHON_VERSION = "3.0.12"
#: A connection's read buffer: a fetch response of four 1 MiB partitions in a few
#: reads, not 1,024 (and what a socket holds at once, mostly: see _tcp_reader)
CHUNK_BYTES = 1 << 20

_TLS_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)
_MARK = "canwatch."


def _buffer(transport) -> memoryview:
    buf = getattr(transport, "_canwatch_buf", None)
    if buf is None:
        buf = transport._canwatch_buf = memoryview(bytearray(CHUNK_BYTES))
    return buf


def _tcp_reader():
    from kafka import errors
    from kafka.net import transport
    from kafka.protocol import parser

    kafka_log, wire_log = transport.log, parser.log  # kafka-python's own loggers

    def _sock_recv(self):
        filled = 0
        err = None
        while True:
            try:
                buf = _buffer(self)
                if filled == len(buf):  # full: the selector wakes us for the rest
                    break
                n = self._sock.recv_into(buf[filled:])
                if not n:  # no exception but no data: the peer closed the connection
                    kafka_log.error("%s: socket disconnected", self)
                    err = errors.KafkaConnectionError("socket disconnected")
                    break
                filled += n
            except (BlockingIOError, InterruptedError):
                break
            except BaseException as e:
                kafka_log.exception("%s: Error receiving network data closing socket", self)
                err = errors.KafkaConnectionError(e)
                break
        if not filled:
            return b"", err
        if wire_log.isEnabledFor(logging.DEBUG):  # its wire dump shows the bytes
            return buf[:filled].tobytes(), err
        return buf[:filled], err  # valid until the next read: the parser copies it first

    _sock_recv.__qualname__ = _MARK + "_sock_recv"
    return _sock_recv


def _tls_reader():
    from kafka import errors
    from kafka.net import transport

    kafka_log = transport.log

    def _sock_recv(self):
        recvd = []
        err = None
        while True:
            try:
                buf = _buffer(self)
                n = self._sock.recv_into(buf)
                if not n:
                    kafka_log.error("%s: socket disconnected", self)
                    err = errors.KafkaConnectionError("socket disconnected")
                    break
                recvd.append(buf[:n].tobytes())
            except _TLS_WOULD_BLOCK:
                break
            except BaseException as e:
                kafka_log.exception("%s: Error receiving network data closing socket", self)
                err = errors.KafkaConnectionError(e)
                break
        return (recvd[0] if len(recvd) == 1 else b"".join(recvd)), err

    _sock_recv.__qualname__ = _MARK + "_sock_recv"
    return _sock_recv


def _read(self, nbytes=None):
    """``KafkaBytes.read``: the same bytes, copied once (through a view)."""
    if nbytes is None:
        nbytes = len(self) - self._idx
    start = self._idx
    self._idx += nbytes
    if self._idx > len(self):
        self._idx = len(self)
    with memoryview(self) as view:  # released at once: the bytearray may resize again
        return bytes(view[start : self._idx])


_read.__qualname__ = _MARK + "read"


def _targets():
    from kafka.net import transport
    from kafka.protocol.frame import KafkaBytes

    return (
        (transport.KafkaTCPTransport, "_sock_recv", _tcp_reader),
        (transport.KafkaSSLTransport, "_sock_recv", _tls_reader),
        (KafkaBytes, "read", lambda: _read),
    )


def read_large_chunks() -> bool:
    """Install the readers (see the module doc); process-wide, idempotent. Returns
    whether they are in place: False, with a log line, for a kafka-python other
    than ``KAFKA_PYTHON_VERSION``."""
    import kafka

    if kafka.__version__ != KAFKA_PYTHON_VERSION:
        log.info(
            "kafka-python %s: reading sockets its own way (large reads are checked against %s)",
            kafka.__version__,
            KAFKA_PYTHON_VERSION,
        )
        return False
    if not installed():
        for cls, name, make in _targets():
            replacement = make()
            replacement.stock = cls.__dict__[name]  # kafka-python's own, for the tests
            setattr(cls, name, replacement)
    return True


def installed() -> bool:
    """Whether kafka-python reads through ``read_large_chunks``."""
    return all(
        getattr(cls.__dict__.get(name), "__qualname__", "").startswith(_MARK)
        for cls, name, _ in _targets()
    )
