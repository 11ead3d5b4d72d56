"""``canwatch broker``: run the embedded Tansu broker in the foreground."""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from types import FrameType

from detector.transport.broker import EmbeddedBroker, create_topics


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "broker",
        help="run the embedded Kafka-compatible broker (Tansu, memory only)",
        description=(
            "Run the embedded Tansu broker in the foreground until Ctrl-C or SIGTERM. "
            "Storage is in memory: topics and records vanish when it stops."
        ),
    )
    p.add_argument("--port", type=int, default=None, help="listen port (default: a free one)")
    p.add_argument("--host", default="127.0.0.1", help="listen address (default: 127.0.0.1)")
    p.add_argument(
        "--advertised-host",
        default=None,
        help="host name clients are told to use (default: --host)",
    )
    p.add_argument(
        "--topic",
        action="append",
        type=_topic_spec,
        default=[],
        metavar="NAME[:PARTITIONS]",
        help="create this topic at start (repeatable; default 6 partitions)",
    )
    p.add_argument("--log", default=None, help="write Tansu's own log to this file")
    p.set_defaults(func=run)


def _topic_spec(spec: str) -> tuple[str, int]:
    name, _, parts = spec.partition(":")
    if not name or (parts and (not parts.isdigit() or int(parts) < 1)):
        raise argparse.ArgumentTypeError(f"expected NAME[:PARTITIONS], got {spec!r}")
    return name, int(parts) if parts else 6


def run(args: argparse.Namespace) -> int:
    topics = dict(args.topic)
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    broker = EmbeddedBroker(
        port=args.port, host=args.host, advertised_host=args.advertised_host, log_path=args.log
    )
    try:
        broker.start()
        create_topics(broker.bootstrap, topics)
        print(broker.bootstrap, flush=True)
        print(
            f"broker pid {broker.pid} ready in {broker.startup_s:.2f} s; Ctrl-C to stop",
            file=sys.stderr,
            flush=True,
        )
        while not stop.wait(0.5):
            if not broker.running:
                print(
                    f"canwatch broker: error: Tansu exited unexpectedly: {broker.log_tail(5)}",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        broker.close()
        for s, handler in previous.items():
            signal.signal(s, handler)
