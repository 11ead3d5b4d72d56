"""kafka-python's socket reads in large chunks, for a process that is only a detector.

kafka-python 3.0 drains a readable broker socket with ``sock.recv(4096)`` in a
loop (``kafka.net.transport``), and no setting changes the size: a 1 MiB fetch
response is 256 system calls and 256 bytes objects, then a join. In
``canwatch detect`` at full speed its IO thread was the largest part of the
process after the fold kernel (13-15 % of the CPU, ``bench/profile_detect.py``).

``read_large_chunks`` replaces that method on kafka-python's two transports by
one that reads into a 256 KiB buffer of the connection's own (``recv_into``)
and copies out what arrived. Everything else is as kafka-python does it: the
same return value, the same errors for a closed or broken socket, the same
log lines. For plain TCP a read that did not fill the buffer has drained the
socket (the selector is level-triggered: more data wakes it again), which
saves the final read that only raised ``BlockingIOError``. A TLS socket
returns at most one TLS record per read while more may be decrypted and
waiting, so it is read until it would block, as before.

The method is private to kafka-python, so the replacement is installed only
for the exact version pyproject.toml pins and whose code it was checked
against; for any other version it leaves kafka-python as it is and says so.
"""

from __future__ import annotations

import logging
import ssl

log = logging.getLogger(__name__)

#: The kafka-python whose ``KafkaTCPTransport._sock_recv`` this replaces, checked line by line.
KAFKA_PYTHON_VERSION = "3.0.12"
#: Bytes per read: a fetch response of four 1 MiB partitions in ~16 reads, not 1,024.
CHUNK_BYTES = 256 << 10

_TCP_WOULD_BLOCK = (BlockingIOError, InterruptedError)
_TLS_WOULD_BLOCK = (BlockingIOError, InterruptedError, ssl.SSLWantReadError, ssl.SSLWantWriteError)


def _reader(would_block: tuple[type[BaseException], ...], drained_when_short: bool):
    from kafka import errors
    from kafka.net import transport

    kafka_log = transport.log  # kafka-python's own messages, under its logger

    def _sock_recv(self) -> tuple[bytes, BaseException | None]:
        recvd = []
        err = None
        while True:
            try:
                buf = getattr(self, "_canwatch_buf", None)
                if buf is None:
                    buf = self._canwatch_buf = memoryview(bytearray(CHUNK_BYTES))
                n = self._sock.recv_into(buf)
                if not n:  # no exception but no data: the peer closed the connection
                    kafka_log.error("%s: socket disconnected", self)
                    err = errors.KafkaConnectionError("socket disconnected")
                    break
                recvd.append(buf[:n].tobytes())
                if drained_when_short and n < CHUNK_BYTES:
                    break
            except would_block:
                break
            except BaseException as e:
                kafka_log.exception("%s: Error receiving network data closing socket", self)
                err = errors.KafkaConnectionError(e)
                break
        return (recvd[0] if len(recvd) == 1 else b"".join(recvd)), err

    _sock_recv.__qualname__ = "canwatch._sock_recv"
    return _sock_recv


def read_large_chunks() -> bool:
    """Make kafka-python read sockets ``CHUNK_BYTES`` at a time (see the module doc).

    Process-wide and idempotent. Returns whether it is in place: False, with a
    log line, for a kafka-python other than ``KAFKA_PYTHON_VERSION``.
    """
    import kafka
    from kafka.net import transport

    if kafka.__version__ != KAFKA_PYTHON_VERSION:
        log.info(
            "kafka-python %s: reading sockets its own way (large reads are checked against %s)",
            kafka.__version__,
            KAFKA_PYTHON_VERSION,
        )
        return False
    tcp, tls = transport.KafkaTCPTransport, transport.KafkaSSLTransport
    if not installed():
        tcp._sock_recv = _reader(_TCP_WOULD_BLOCK, drained_when_short=True)
        tls._sock_recv = _reader(_TLS_WOULD_BLOCK, drained_when_short=False)
    return True


def installed() -> bool:
    """Whether both of kafka-python's transports read through ``read_large_chunks``."""
    from kafka.net import transport

    return all(
        getattr(cls.__dict__.get("_sock_recv"), "__qualname__", "") == "canwatch._sock_recv"
        for cls in (transport.KafkaTCPTransport, transport.KafkaSSLTransport)
    )
