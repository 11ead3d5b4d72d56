"""``canwatch campaigns``: the campaign correlator service (docs/campaigns.md)."""

from __future__ import annotations

import argparse
import logging
import signal
import threading

from detector.core.brands import load_fleet
from detector.core.config import load_config


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "campaigns",
        help="correlate incidents across the fleet into campaigns (a service)",
        description="Read every partition of the incident topic (whichever detect instances "
        "wrote it), and when the same suspected attack on the same CAN id shows on at least "
        "campaigns.min_vehicles vehicles of one brand within campaigns.window_s, write one "
        "campaign record (open, update..., closed) to kafka.campaign_topic under a "
        "deterministic id: replaying the incident topic gives the same ids. Offsets are "
        "committed under campaigns.group_id after the broker acknowledged the records. "
        "Serves Prometheus metrics on campaigns.metrics_address. SIGTERM/SIGINT: commit "
        "and exit 0. Flags override the config file, which overrides the defaults.",
    )
    p.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    p.add_argument("--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers")
    p.add_argument("--group", metavar="ID", help="group id for its committed offsets")
    p.add_argument(
        "--metrics", metavar="HOST:PORT", help="metrics address (default 127.0.0.1:9110)"
    )
    p.add_argument("--min-vehicles", type=int, metavar="K", help="vehicles that make a campaign")
    p.add_argument("--window", type=float, metavar="S", help="within this many seconds")
    p.add_argument(
        "--lateness",
        type=float,
        metavar="S",
        help="how late an incident may arrive and keep its place",
    )
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from detector.service.campaign_service import CampaignService
    from detector.service.metrics.campaigns import CampaignMetrics

    cfg = load_config(
        args.config,
        overrides={
            "kafka.bootstrap": args.bootstrap,
            "campaigns.group_id": args.group,
            "campaigns.metrics_address": args.metrics,
            "campaigns.min_vehicles": args.min_vehicles,
            "campaigns.window_s": args.window,
            "campaigns.lateness_s": args.lateness,
        },
    )
    if not logging.getLogger().isEnabledFor(logging.INFO):
        logging.getLogger("canwatch").setLevel(logging.INFO)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    fleet = load_fleet(cfg.fleet.brands_file) if cfg.fleet.brands_file else load_fleet()
    metrics = CampaignMetrics(brands=tuple(sorted(fleet.brands)))
    server = metrics.serve(cfg.campaigns.metrics_address)
    host, port = server.server_address[:2]
    c = cfg.campaigns
    print(
        f"canwatch campaigns: metrics on http://{host}:{port}/metrics, reading "
        f"{cfg.kafka.incident_topic} from {cfg.kafka.bootstrap}, writing "
        f"{cfg.kafka.campaign_topic}: >= {c.min_vehicles} vehicles within {c.window_s:g} s",
        flush=True,
    )
    try:
        CampaignService(cfg, metrics).run(stop)
    finally:
        server.shutdown()
    return 0
