"""The zero-setup demo: embedded broker, platform models, a simulated fleet with
one attack of every family, the detector, /metrics, live incidents, a scorecard.

Everything runs in one process except the broker. Models are trained on
simulated benign traffic the first time and cached (keyed by the feature list),
so later runs start in seconds.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from detector.core.brands import Fleet
from detector.core.config import Config, with_overrides
from detector.features.columns import FEATURE_NAMES
from detector.model.platform import MODEL_FORMAT
from detector.model.store import list_manifests, save_model
from detector.model.training import train_platform
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.transport.broker import EmbeddedBroker, create_topics
from detector.transport.kafka_io import make_consumer, make_producer
from replay.attacks import INJECTABLE, AttackSpan, AttackSpec, inject
from replay.publisher import publish
from replay.simulator import simulate_drives, simulate_fleet

ATTACKS = INJECTABLE
TRAIN_VEHICLES = 6
TRAIN_DRIVES = 2
TRAIN_SECONDS = 90.0


@dataclass(frozen=True)
class DemoOptions:
    vehicles: int = 56
    duration_s: float = 40.0
    speed: float = 4.0
    attack_start_s: float = 12.0
    attack_duration_s: float = 6.0
    seed: int = 2026


def cache_dir(root: Path) -> Path:
    """Model cache keyed by the model format and feature list: a change retrains."""
    key = hashlib.sha256(f"{MODEL_FORMAT}:{','.join(FEATURE_NAMES)}".encode()).hexdigest()[:10]
    return root / f"demo-models-{key}"


def ensure_models(
    fleet: Fleet,
    cfg: Config,
    model_dir: Path,
    say,
    vehicles: int = TRAIN_VEHICLES,
    seconds: float = TRAIN_SECONDS,
) -> None:
    """A model per platform in ``model_dir`` (kept if there), trained on simulated
    benign traffic of ``vehicles`` vehicles × TRAIN_DRIVES drives × ``seconds``,
    calibrated on vehicles it held out."""
    have = list_manifests(model_dir)
    for i, platform in enumerate(fleet.platforms):
        if platform in have:
            continue
        t0 = time.perf_counter()
        recordings, owners = simulate_drives(
            platform, vehicles, TRAIN_DRIVES, seconds, 1.7e9, first_seed=1000 * i
        )
        model, summary = train_platform(platform, recordings, cfg.detection, drives=owners)
        save_model(model, model_dir, fleet.brands_of(platform), summary)
        say(
            f"  trained {platform:9} for {', '.join(fleet.brands_of(platform))} "
            f"in {time.perf_counter() - t0:.1f} s"
        )


def build_fleet(fleet: Fleet, opts: DemoOptions, start_ts: float) -> tuple[list, list[AttackSpan]]:
    """Simulated fleet; attack k goes to vehicle k * (vehicles // 6), all at the same time."""
    vehicles = simulate_fleet(
        sorted(fleet.brands), opts.vehicles, opts.duration_s, seed=opts.seed, start_ts=start_ts
    )
    streams, spans = [], []
    step = max(1, len(vehicles) // len(ATTACKS))
    for n, v in enumerate(vehicles):
        frames = v.frames
        if n % step == 0 and n // step < len(ATTACKS):
            kind = ATTACKS[n // step]
            spec = AttackSpec.parse(
                f"{kind}:start={opts.attack_start_s},duration={opts.attack_duration_s}"
            )
            frames, span = inject(frames, spec, seed=opts.seed + n)
            spans.append(AttackSpan(span.kind, span.start_ts, span.end_ts, span.can_id, v.vehicle))
        streams.append((v.vehicle, v.brand, frames))
    return streams, spans


def scorecard(spans: list[AttackSpan], incidents: dict[str, dict], window_s: float) -> dict:
    """Which attacks an incident caught, how fast, and incidents that match no attack."""
    rows = []
    used = set()
    for sp in spans:
        hits = [
            i
            for i in incidents.values()
            if i["vehicle"] == sp.vehicle
            and i["first_seen"] <= sp.end_ts + window_s
            and i["last_seen"] >= sp.start_ts
        ]
        first = min(hits, key=lambda i: i["first_seen"]) if hits else None
        used.update(i["incident_id"] for i in hits)
        rows.append(
            {
                "kind": sp.kind,
                "vehicle": sp.vehicle,
                "brand": next(iter(hits))["brand"] if hits else None,
                "start": round(sp.start_ts, 3),
                "detected": bool(hits),
                "time_to_detect_s": round(max(first["first_seen"] + window_s - sp.start_ts, 0.0), 3)
                if first
                else None,
                "suspected_attack": first["suspected_attack"] if first else None,
                "incident_id": first["incident_id"] if first else None,
            }
        )
    false = [i for i in incidents.values() if i["incident_id"] not in used]
    return {
        "attacks": rows,
        "false_incidents": len(false),
        "false_incident_ids": [i["incident_id"] for i in false],
    }


def render_scorecard(card: dict) -> str:
    attacks = card["attacks"]
    vw = max([len("vehicle")] + [len(a["vehicle"]) for a in attacks])
    bw = max([len("brand")] + [len(a["brand"] or "-") for a in attacks])
    lines = [f"{'attack':11} {'vehicle':{vw}} {'brand':{bw}} {'detected':8} {'ttd_s':>6}  suspected"]
    for a in attacks:
        ttd = "-" if a["time_to_detect_s"] is None else f"{a['time_to_detect_s']:.2f}"
        lines.append(
            f"{a['kind']:11} {a['vehicle']:{vw}} {a['brand'] or '-':{bw}} "
            f"{'yes' if a['detected'] else 'NO':8} {ttd:>6}  {a['suspected_attack'] or '-'}"
        )
    caught = sum(a["detected"] for a in card["attacks"])
    lines.append(
        f"detected {caught}/{len(card['attacks'])} attacks, {card['false_incidents']} false incidents"
    )
    return "\n".join(lines)


def incident_widths(streams: list) -> dict[str, int]:
    """Widths of the live incident table's brand and vehicle columns: the longest
    in the fleet being streamed [(vehicle, brand, frames)], so every row lines up."""
    return {
        "brand": max([len("brand")] + [len(b) for _, b, _ in streams]),
        "vehicle": max([len("vehicle")] + [len(v) for v, _, _ in streams]),
    }


def format_incident(ev: dict, widths: dict[str, int] | None = None) -> str:
    """One row of the live incident table; ``widths`` from ``incident_widths`` (a
    column is never narrower than its value, so a name longer still only shifts
    its own row)."""
    widths = widths or {}
    ids = ",".join(c["can_id"] for c in ev["can_ids"][:3])
    text = ev["evidence"][0]["text"] if ev["evidence"] else ""
    return (
        f"{ev['status']:6} {ev['severity']:8} {ev['suspected_attack']:10} "
        f"{ev['brand']:{widths.get('brand', 17)}} {ev['vehicle']:{widths.get('vehicle', 18)}} "
        f"{ids:20} {text}"
    )


def run_demo(
    cfg: Config,
    fleet: Fleet,
    opts: DemoOptions,
    model_root: Path,
    say,
    keep_running: threading.Event | None = None,
) -> dict:
    model_dir = cache_dir(model_root)
    say(f"models: {model_dir}")
    ensure_models(fleet, cfg, model_dir, say)
    with EmbeddedBroker() as broker:
        cfg = with_overrides(
            cfg, kafka={"bootstrap": broker.bootstrap}, models={"dir": str(model_dir)}
        )
        create_topics(
            broker.bootstrap,
            {cfg.kafka.telemetry_topic: 4, cfg.kafka.incident_topic: 1, cfg.kafka.dlq_topic: 1},
        )
        metrics = DetectorMetrics(instance="demo")
        server = metrics.serve(cfg.metrics.address)
        host, port = server.server_address[:2]
        say(f"broker {broker.bootstrap}, metrics http://{host}:{port}/metrics")
        stop = threading.Event()
        detector = Detector(cfg, fleet, metrics, "demo")
        det_thread = threading.Thread(
            target=detector.run, args=(stop,), name="detector", daemon=True
        )
        det_thread.start()
        # whole-second start: window phases (and so the run) depend only on the seed
        start_ts = float(int(time.time() - opts.duration_s / 2))
        streams, spans = build_fleet(fleet, opts, start_ts)
        total = sum(len(f) for _, _, f in streams)
        say(
            f"fleet: {len(streams)} vehicles, {len(fleet.brands)} brands, {total:,} frames over "
            f"{opts.duration_s:g} s at ×{opts.speed:g}; attacks {', '.join(ATTACKS)} "
            f"at +{opts.attack_start_s:g} s"
        )
        producer = make_producer(cfg.kafka)
        pub = threading.Thread(
            target=publish,
            args=(producer, cfg.kafka.telemetry_topic, streams, opts.speed),
            daemon=True,
        )
        pub.start()
        incidents = follow_incidents(cfg, metrics, total, pub, say, incident_widths(streams))
        card = scorecard(spans, incidents, cfg.detection.window_s)
        if keep_running is not None:
            say("--keep-running: broker, detector and metrics stay up; Ctrl-C to stop")
            keep_running.wait()
        stop.set()
        det_thread.join(timeout=30)
        producer.close()
        server.shutdown()
    return card


def follow_incidents(
    cfg: Config,
    metrics: DetectorMetrics,
    total: int,
    pub: threading.Thread,
    say,
    widths: dict[str, int] | None = None,
) -> dict:
    """Print incidents as they arrive until every frame is scored and incidents closed."""
    from kafka import TopicPartition

    consumer = make_consumer(cfg.kafka, [], None)
    tp = TopicPartition(cfg.kafka.incident_topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    incidents: dict[str, dict] = {}
    done_at = None
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        for records in consumer.poll(timeout_ms=300).values():
            for r in records:
                ev = json.loads(r.value)
                incidents[ev["incident_id"]] = ev
                if ev["status"] in ("open", "closed"):
                    say(format_incident(ev, widths))
        consumed = sum(
            s.value
            for m in metrics.frames_consumed.collect()
            for s in m.samples
            if s.name.endswith("_total")
        )
        if not pub.is_alive() and consumed >= total and done_at is None:
            done_at = time.monotonic()
        if done_at is not None and time.monotonic() - done_at > 2.0:
            break
    consumer.close()
    return incidents


def write_report(path: Path, card: dict) -> None:
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
