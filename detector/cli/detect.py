"""canwatch detect: the streaming service."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import socket
import sys
import threading
import time
from typing import NoReturn

from detector.cli._common import add_config_flag, fleet_from
from detector.core.config import load_config
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.transport.heap import keep_large_buffers
from detector.transport.kafka_records import parse_batches_compiled
from detector.transport.kafka_recv import read_large_chunks

log = logging.getLogger("canwatch.detect")

#: Exit codes besides 0 (stopped on request) and 2 (a one-line error at start).
EXIT_STALLED = 3  # no progress for watchdog.exit_s: restart me (at-least-once)
EXIT_STOP_TIMEOUT = 4  # not stopped within watchdog.shutdown_timeout_s of SIGTERM/SIGINT
SIGNALS = {signal.SIGTERM, signal.SIGINT}


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect",
        help="run the detector service on Kafka",
        description="Consume fleet telemetry from Kafka in a consumer group, score it with the "
        "per-platform models, publish incidents and dead letters, serve Prometheus metrics. "
        "Flags override the config file, which overrides the defaults. SIGTERM/SIGINT: "
        "finish the batch, flush, commit what Kafka acknowledged, exit 0; exit 4 if that "
        "takes longer than watchdog.shutdown_timeout_s (10 s), or at a second signal. "
        "Kafka outages never stop it: it pauses, commits nothing, reports canwatch_ready 0, "
        "logs what it waits for, and resumes when the broker is back. A poll loop that "
        "makes no progress while records wait (watchdog.stall_s) reports canwatch_ready 0; "
        "after watchdog.exit_s it exits 3 for its supervisor to restart it "
        "(at-least-once throughout).",
    )
    add_config_flag(p)
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers")
    p.add_argument("--models", metavar="DIR", help="model directory")
    p.add_argument("--group", metavar="ID", help="consumer group id")
    p.add_argument(
        "--metrics", metavar="HOST:PORT", help="metrics address (default 127.0.0.1:9108)"
    )
    p.add_argument("--detector-id", help="instance id written into incidents")
    p.add_argument(
        "--connect-timeout",
        type=float,
        metavar="S",
        help="at start, wait up to S s for a broker, trying again every few seconds "
        "(kafka.connect_timeout_s, default 30)",
    )
    p.add_argument(
        "--windows-out",
        metavar="PATH.jsonl",
        help="append an audit trail as JSON Lines: one line per scored window "
        '{"type": "window", "vehicle", "brand", "window_start", "score", "model_version"} '
        "(score normalised, 1.0 = the model's threshold) and one per poll "
        '{"type": "poll", "time", "detector", "records", "frames", "dead_letters", '
        '"incidents", "windows", "offsets": {partition: [first, last]}, "assigned"}. '
        "Each poll's lines are flushed and fsync'd before its offsets are committed, so "
        "the file survives kill -9 and lists everything processed (at least once: after a "
        "crash or rebalance some windows appear twice)",
    )
    p.set_defaults(func=run)


def hard_exit(code: int) -> NoReturn:
    """End the process now, whatever its threads are doing: no final commit (what was
    not committed is read again after the restart)."""
    for handler in logging.getLogger().handlers:
        try:
            handler.flush()
        except Exception:  # a handler that cannot flush must not keep the process alive
            pass
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except Exception:
            pass
    os._exit(code)


class StopOnSignal:
    """SIGTERM and SIGINT acted on by a thread of their own, so that a main thread
    stuck anywhere (spinning inside kafka-python, blocked in C) cannot keep them
    from acting: CPython's C-level handler writes each signal's number to a
    socket (``signal.set_wakeup_fd``) whichever thread the kernel delivered it to,
    and that thread reads it. The first sets ``stop``: the detector finishes its
    batch, flushes, commits what Kafka acknowledged and closes. If the process has
    not ended ``timeout_s`` later, or at a second signal, it exits with
    EXIT_STOP_TIMEOUT (0 if the detector had closed and only the interpreter's own
    exit was slow). Create it on the main thread."""

    def __init__(self, timeout_s: float) -> None:
        self.timeout_s = timeout_s
        self.stop = threading.Event()
        self.done = threading.Event()  # the detector has closed
        self._read, write = socket.socketpair()
        write.setblocking(False)
        self._write = write  # kept open for the process's life
        for signum in SIGNALS:
            signal.signal(signum, lambda *_: None)  # the C handler runs; the thread acts
        signal.set_wakeup_fd(write.fileno(), warn_on_full_buffer=False)
        threading.Thread(target=self._listen, name="canwatch-signals", daemon=True).start()

    def _listen(self) -> None:
        while True:
            for signum in self._read.recv(64):
                if signum in SIGNALS:
                    self._signal(signum)

    def _signal(self, signum: int) -> None:
        if self.stop.is_set():
            log.warning("signal %d again: exiting now, nothing more committed", signum)
            hard_exit(EXIT_STOP_TIMEOUT)
        log.info("signal %d: finishing the current batch (exit within %g s)", signum, self.timeout_s)
        self.stop.set()
        threading.Thread(target=self._deadline, name="canwatch-stop", daemon=True).start()

    def _deadline(self) -> None:
        time.sleep(self.timeout_s)  # the process normally ends long before
        if self.done.is_set():
            hard_exit(0)
        log.error(
            "not stopped %g s after the signal (watchdog.shutdown_timeout_s): exiting "
            "without a final commit; what was not committed is read again",
            self.timeout_s,
        )
        hard_exit(EXIT_STOP_TIMEOUT)


def run(args: argparse.Namespace) -> int:
    cfg = load_config(
        args.config,
        overrides={
            "kafka.bootstrap": args.bootstrap,
            "models.dir": args.models,
            "kafka.group_id": args.group,
            "metrics.address": args.metrics,
            "kafka.connect_timeout_s": args.connect_timeout,
        },
    )
    if getattr(args, "log_level", None) is None:  # a service: its own lines at INFO
        logging.getLogger("canwatch").setLevel(logging.INFO)
    signals = StopOnSignal(cfg.watchdog.shutdown_timeout_s)
    metrics = DetectorMetrics(instance=args.detector_id or "")
    server = metrics.serve(cfg.metrics.address)
    host, port = server.server_address[:2]
    print(
        f"canwatch detect: metrics on http://{host}:{port}/metrics, consuming "
        f"{cfg.kafka.telemetry_topic} from {cfg.kafka.bootstrap}",
        flush=True,
    )
    # a process that is only a detector: its heap and its kafka-python are set for
    # that (see detector.transport.heap, detector.transport.kafka_recv, detector.transport.kafka_records)
    keep_large_buffers()
    read_large_chunks()
    parse_batches_compiled()
    detector = Detector(
        cfg,
        fleet_from(cfg),
        metrics,
        args.detector_id,
        windows_out=args.windows_out,
        freeze_heap=True,
        on_stall=lambda why: hard_exit(EXIT_STALLED),  # the watchdog has logged why
    )
    try:
        detector.run(signals.stop)
    finally:
        server.shutdown()
        signals.done.set()
    return 0
