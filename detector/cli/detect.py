"""canwatch detect: the streaming service."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from detector.cli._common import add_config_flag, fleet_from
from detector.config import load_config
from detector.heap import keep_large_buffers
from detector.kafka_records import parse_batches_compiled
from detector.kafka_recv import read_large_chunks
from detector.metrics import DetectorMetrics
from detector.service import Detector

log = logging.getLogger("canwatch.detect")


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "detect",
        help="run the detector service on Kafka",
        description="Consume fleet telemetry from Kafka in a consumer group, score it with the "
        "per-platform models, publish incidents and dead letters, serve Prometheus metrics. "
        "Flags override the config file, which overrides the defaults. SIGTERM/SIGINT: "
        "finish the batch, flush, commit, exit 0. Kafka outages never stop it: it pauses, "
        "commits nothing, reports canwatch_ready 0, logs what it waits for, and resumes "
        "when the broker is back (at-least-once throughout).",
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


def run(args: argparse.Namespace) -> int:
    cfg = load_config(
        args.config,
        overrides={
            "kafka.bootstrap": args.bootstrap,
            "models.dir": args.models,
            "kafka.group_id": args.group,
            "metrics.address": args.metrics,
        },
    )
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("canwatch").setLevel(logging.INFO)
    metrics = DetectorMetrics(instance=args.detector_id or "")
    server = metrics.serve(cfg.metrics.address)
    host, port = server.server_address[:2]
    print(
        f"canwatch detect: metrics on http://{host}:{port}/metrics, consuming "
        f"{cfg.kafka.telemetry_topic} from {cfg.kafka.bootstrap}",
        flush=True,
    )
    stop = threading.Event()

    def _stop(signum, _frame):
        log.info("signal %d: finishing the current batch", signum)
        stop.set()

    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    # a process that is only a detector: its heap and its kafka-python are set for
    # that (see detector.heap, detector.kafka_recv, detector.kafka_records)
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
    )
    try:
        detector.run(stop)
    finally:
        server.shutdown()
    return 0
