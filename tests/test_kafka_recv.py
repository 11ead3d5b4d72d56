"""detector.transport.kafka_recv: kafka-python's transports read in large chunks and its
response buffer is read out in one copy, with the same results and errors as
kafka-python's own code.

The TLS transport's reader is driven end to end by tests/test_tls_end_to_end.py
(``canwatch detect`` installs it); every Kafka test of ``canwatch detect`` runs
through the plain one.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading

import kafka
import pytest
from kafka.errors import KafkaConnectionError
from kafka.net.transport import KafkaSSLTransport, KafkaTCPTransport
from kafka.protocol.frame import KafkaBytes

from detector.transport import kafka_recv


class _CountingSocket:
    """A socket that notes the size asked of each read."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.asked = sock, []

    def __getattr__(self, name: str):
        return getattr(self.sock, name)

    def recv(self, n: int) -> bytes:
        self.asked.append(n)
        return self.sock.recv(n)

    def recv_into(self, buf) -> int:
        self.asked.append(len(buf))
        return self.sock.recv_into(buf)


def _drain(transport: KafkaTCPTransport, sock: socket.socket) -> tuple[list[bytes], object]:
    """What the IO thread would do: read whenever the socket is readable, until an error."""
    chunks: list[bytes] = []
    with selectors.DefaultSelector() as sel:
        sel.register(sock, selectors.EVENT_READ)
        for _ in range(100_000):  # a reader that never reports the close would spin here
            assert sel.select(timeout=10), "no data and no close within 10 s"
            data, err = transport._sock_recv()
            if data:
                chunks.append(bytes(data))  # a view is valid until the next read
            if err is not None:
                return chunks, err
    raise AssertionError("the reader never reported the closed peer")


def test_large_reads_deliver_every_byte_then_report_the_closed_peer() -> None:
    assert kafka_recv.read_large_chunks()
    assert kafka_recv.installed()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    payload = os.urandom(3 << 20)

    def send() -> None:
        with peer:
            for at in range(0, len(payload), 700_001):  # writes that do not line up with reads
                peer.sendall(payload[at : at + 700_001])

    sender = threading.Thread(target=send)
    sender.start()
    counting = _CountingSocket(ours)
    try:
        chunks, err = _drain(KafkaTCPTransport(None, counting), ours)
    finally:
        sender.join()
        ours.close()
    assert b"".join(chunks) == payload
    assert isinstance(err, KafkaConnectionError) and "socket disconnected" in str(err)
    # kafka-python's own reader asks 4 KiB a read: 768 reads and more for 3 MiB
    assert counting.asked[0] == kafka_recv.CHUNK_BYTES
    assert len(counting.asked) < len(payload) // 4096 // 4


def test_with_kafka_pythons_wire_dump_on_the_reader_hands_on_bytes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    assert kafka_recv.read_large_chunks()
    ours, peer = socket.socketpair()
    ours.setblocking(False)  # as kafka-python's sockets are
    with ours, peer:
        transport = KafkaTCPTransport(None, ours)
        peer.sendall(b"abc")
        assert isinstance(transport._sock_recv()[0], memoryview)
        peer.sendall(b"def")
        with caplog.at_level(logging.DEBUG, logger="kafka.protocol.parser"):
            data, err = transport._sock_recv()
        assert (data, err) == (b"def", None) and type(data) is bytes


def test_response_buffer_reads_give_kafka_pythons_bytes_and_positions() -> None:
    assert kafka_recv.read_large_chunks()
    stock_read = KafkaBytes.read.stock  # kafka-python's own
    payload = os.urandom(5000)
    ours, theirs = KafkaBytes(len(payload)), KafkaBytes(len(payload))
    ours.write(payload)
    theirs.write(payload)
    for at in (0, 17, 4999, 5000):
        ours.seek(at)
        theirs.seek(at)
        for n in (0, 1, 100, None, 3, 10_000, None):
            assert ours.read(n) == stock_read(theirs, n)
            assert ours.tell() == theirs.tell()
    ours.seek(0)
    ours.write(b"x")  # no view of it is left behind: it can still be written and resized
    ours.extend(b"more")


def test_a_transport_without_a_socket_gets_an_error_not_an_exception() -> None:
    assert kafka_recv.read_large_chunks()
    for cls in (KafkaTCPTransport, KafkaSSLTransport):
        transport = KafkaTCPTransport(None, None)
        data, err = cls._sock_recv(transport)
        assert data == b"" and isinstance(err, KafkaConnectionError)


def test_installing_twice_keeps_one_reader_and_another_kafka_python_is_left_alone(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert kafka_recv.read_large_chunks()
    tcp, tls = KafkaTCPTransport._sock_recv, KafkaSSLTransport._sock_recv
    assert kafka_recv.read_large_chunks()
    assert (KafkaTCPTransport._sock_recv, KafkaSSLTransport._sock_recv) == (tcp, tls)

    def stock(self):  # stands for the reader another kafka-python version ships
        return b"", None

    monkeypatch.setattr(KafkaTCPTransport, "_sock_recv", stock)
    monkeypatch.setattr(KafkaSSLTransport, "_sock_recv", stock)
    monkeypatch.setattr(kafka, "__version__", "3.1.0")
    assert not kafka_recv.read_large_chunks()
    assert KafkaTCPTransport._sock_recv is stock and KafkaSSLTransport._sock_recv is stock
    assert not kafka_recv.installed()
