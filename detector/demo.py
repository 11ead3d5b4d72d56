"""The zero-setup demo: embedded broker, platform models, a simulated fleet with
one attack of every family, a campaign (the same attack on several vehicles of one
brand, staggered), the detector and the campaign correlator, /metrics, live
incidents, a scorecard.

Everything runs in one process except the broker. Models are trained on
simulated benign traffic the first time and cached (keyed by the feature list),
so later runs start in seconds.
"""

from __future__ import annotations

import hashlib
import json
import os
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from detector.core.brands import Fleet
from detector.core.config import Config, with_overrides
from detector.core.errors import CanwatchError, ModelError
from detector.features.baseline import CHECKSUMS
from detector.features.columns import FEATURE_NAMES
from detector.incidents.campaigns import latest
from detector.model.platform import MODEL_FORMAT
from detector.model.store import list_manifests, load_model, save_model
from detector.model.training import train_platform
from detector.service.campaign_service import CampaignService
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.service.metrics.campaigns import CampaignMetrics
from detector.transport.broker import EmbeddedBroker, create_topics
from detector.transport.kafka_io import end_offsets, make_consumer, make_producer
from replay.attacks import INJECTABLE, AttackSpan, AttackSpec, inject
from replay.publisher import publish
from replay.simulator import simulate_drives, simulate_fleet, simulate_vehicle

ATTACKS = INJECTABLE
TRAIN_VEHICLES = 6
TRAIN_DRIVES = 2
TRAIN_SECONDS = 90.0
#: The campaign correlator waits for the incident topic to be quiet this long before
#: folding the last incidents in (campaigns.lateness_s; the demo's fleet ends at once).
DEMO_LATENESS_S = 2.0


@dataclass(frozen=True)
class DemoOptions:
    vehicles: int = 56
    duration_s: float = 40.0
    speed: float = 4.0
    attack_start_s: float = 12.0
    attack_duration_s: float = 6.0
    seed: int = 2026
    # the campaign: this attack on this many more vehicles of one brand, one every
    # campaign_stagger_s from campaign_start_s (at least campaigns.min_vehicles)
    campaign_attack: str = "dos"
    campaign_vehicles: int = 4
    campaign_start_s: float = 8.0
    campaign_stagger_s: float = 4.0

    def min_duration_s(self) -> float:
        """The shortest stream that holds every attack whole, and the windows that close
        their incidents: a shorter one cuts them (or starts them past its end)."""
        family_end = self.attack_start_s + self.attack_duration_s
        campaign_end = (
            self.campaign_start_s
            + (self.campaign_vehicles - 1) * self.campaign_stagger_s
            + self.attack_duration_s
        )
        return max(family_end, campaign_end) + 6.0


class DemoError(CanwatchError):
    """A part of the demo (detector, campaign correlator, publisher) stopped on an error."""


class Parts:
    """The demo's threads. Each records the error it stopped on, and the ones that
    run until ``stop`` (detector, campaign correlator) must not end before it: the
    demo says so at once instead of waiting out its deadline for incidents that
    cannot come."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop = stop
        self.threads: list[threading.Thread] = []
        self.lasting: dict[str, threading.Thread] = {}  # run until stop
        self.failed: dict[str, BaseException] = {}

    def start(self, name: str, target, *args, lasting: bool = False) -> threading.Thread:
        def guarded() -> None:
            try:
                target(*args)
            except Exception as exc:  # kept for check(); the thread itself ends quietly
                self.failed[name] = exc

        t = threading.Thread(target=guarded, name=name, daemon=True)
        self.threads.append(t)
        if lasting:
            self.lasting[name] = t
        t.start()
        return t

    def check(self) -> None:
        """Raise DemoError naming the first part that stopped on an error, or that
        should still run and does not (a detector its watchdog stopped, say)."""
        for name, exc in self.failed.items():
            raise DemoError(f"the demo's {name} stopped: {type(exc).__name__}: {exc}")
        for name, t in self.lasting.items():
            if not t.is_alive() and not self.stop.is_set():
                raise DemoError(f"the demo's {name} stopped before the demo ended (see its log)")


def default_model_cache() -> Path:
    """The user's cache (XDG), so a demo run from any directory finds the models an
    earlier run trained, and none is left in the working directory."""
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    root = Path(base) if base and Path(base).is_absolute() else Path.home() / ".cache"
    return root / "canwatch"


def cache_dir(root: Path) -> Path:
    """Model cache keyed by the model format, feature list and the checksums a baseline
    learns: a change retrains (a cached model would still serve, learning less)."""
    what = f"{MODEL_FORMAT}:{','.join(FEATURE_NAMES)}:{','.join(CHECKSUMS.values())}"
    key = hashlib.sha256(what.encode()).hexdigest()[:10]
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
        if platform in have and _loads(have[platform][-1].path):
            continue  # a cached model this canwatch can still serve
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


def _loads(manifest: Path) -> bool:
    try:
        load_model(manifest)
    except ModelError:
        return False
    return True


def build_fleet(
    fleet: Fleet, opts: DemoOptions, start_ts: float, campaign_size: int = 0
) -> tuple[list, list[AttackSpan], list[AttackSpan]]:
    """Simulated fleet; attack k goes to vehicle k * (vehicles // 6), all at the same
    time. Then ``campaign_size`` more vehicles of one brand with the campaign attack,
    staggered: the brand is the first without an attack of that kind already (which
    would join the campaign). Returns streams, the family attacks, the campaign's."""
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
    same_kind = {sp.vehicle for sp in spans if sp.kind == opts.campaign_attack}
    taken = {v.brand for v in vehicles if v.vehicle in same_kind}
    brand = next(b for b in sorted(fleet.brands) if b not in taken)
    campaign = []
    # staggered, but every attack ends 6 s before the recording does (a short --duration)
    room = opts.duration_s - opts.campaign_start_s - opts.attack_duration_s - 6.0
    stagger = min(opts.campaign_stagger_s, max(room, 0.0) / max(campaign_size - 1, 1))
    for j in range(campaign_size):
        n = len(vehicles) + j
        frames = simulate_vehicle(
            fleet.platform_of(brand), opts.duration_s, start_ts, seed=opts.seed * 1000 + n
        )
        start = opts.campaign_start_s + j * stagger
        spec = AttackSpec.parse(
            f"{opts.campaign_attack}:start={start},duration={opts.attack_duration_s}"
        )
        frames, span = inject(frames, spec, seed=opts.seed + n)
        name = f"veh-{brand}-{n:04d}"
        campaign.append(AttackSpan(span.kind, span.start_ts, span.end_ts, span.can_id, name))
        streams.append((name, brand, frames))
    return streams, spans, campaign


def scorecard(
    spans: list[AttackSpan],
    incidents: dict[str, dict],
    window_s: float,
    campaign: list[AttackSpan] = (),
    campaigns: dict[str, dict] | None = None,
) -> dict:
    """Which attacks an incident caught, how fast, and incidents that match no attack;
    whether the ``campaign`` attacks became one campaign with all of them, and how
    many campaigns hold a vehicle of another attack."""
    rows = []
    spans = [*spans, *campaign]
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
                "campaign": sp in campaign,
            }
        )
    false = [i for i in incidents.values() if i["incident_id"] not in used]
    return {
        "attacks": rows,
        "false_incidents": len(false),
        "false_incident_ids": [i["incident_id"] for i in false],
        "campaign": campaign_card(campaign, list((campaigns or {}).values())),
    }


def campaign_card(campaign: list[AttackSpan], found: list[dict]) -> dict:
    """The campaign scenario against the campaign records (the latest of each)."""
    expected = {sp.vehicle for sp in campaign}
    ours = [c for c in found if set(c["vehicles"]) & expected]
    return {
        "expected_vehicles": sorted(expected),
        "campaigns": [
            {k: c[k] for k in ("campaign_id", "status", "brand", "suspected_attack", "can_id")}
            | {"vehicles": c["vehicles"]}
            for c in found
        ],
        "found": len(ours) == 1 and set(ours[0]["vehicles"]) == expected,
        "unrelated": len(found) - len(ours),
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
    families = [a for a in card["attacks"] if not a.get("campaign")]
    caught = sum(a["detected"] for a in families)
    lines.append(
        f"detected {caught}/{len(families)} attack families, "
        f"{card['false_incidents']} false incidents"
    )
    return "\n".join(lines + campaign_lines(card["campaign"]))


def campaign_lines(card: dict) -> list[str]:
    """The campaign part of the scorecard: each campaign, then the verdict."""
    lines = [
        f"campaign {c['campaign_id']} {c['status']:6} {c['suspected_attack']} on {c['can_id']}, "
        f"{c['brand']}: {', '.join(c['vehicles'])}"
        for c in card["campaigns"]
    ]
    expected = len(card["expected_vehicles"])
    verdict = "1 campaign with all" if card["found"] else "NOT one campaign of all"
    lines.append(
        f"{verdict} {expected} vehicles of the staggered attack; "
        f"{card['unrelated']} campaigns from unrelated attacks"
    )
    return lines


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
    show: Callable[[dict], None] = lambda card: None,
) -> dict:
    """The whole loop; ``show`` gets the scorecard as soon as it is made (before
    ``keep_running`` is waited for: set by the caller's SIGINT/SIGTERM)."""
    model_dir = cache_dir(model_root)
    say(f"models: {model_dir}")
    ensure_models(fleet, cfg, model_dir, say)
    with EmbeddedBroker() as broker:
        cfg = with_overrides(
            cfg,
            kafka={"bootstrap": broker.bootstrap},
            models={"dir": str(model_dir)},
            campaigns={"lateness_s": DEMO_LATENESS_S},
        )
        k = cfg.kafka
        create_topics(
            broker.bootstrap,
            {k.telemetry_topic: 4, k.incident_topic: 1, k.dlq_topic: 1, k.campaign_topic: 1},
        )
        metrics = DetectorMetrics(instance="demo")
        server = metrics.serve(cfg.metrics.address)
        host, port = server.server_address[:2]
        campaign_metrics = CampaignMetrics(brands=tuple(sorted(fleet.brands)))
        campaign_server = campaign_metrics.serve(f"{host}:0")
        say(
            f"broker {broker.bootstrap}, metrics http://{host}:{port}/metrics and "
            f"http://{host}:{campaign_server.server_address[1]}/metrics (campaigns)"
        )
        stop = threading.Event()
        detector = Detector(cfg, fleet, metrics, "demo")
        campaigns = CampaignService(cfg, campaign_metrics)
        parts = Parts(stop)
        parts.start("detector", detector.run, stop, lasting=True)
        parts.start("campaign correlator", campaigns.run, stop, lasting=True)
        try:
            card = _stream_and_score(cfg, fleet, opts, metrics, campaigns, parts, say)
            show(card)
            if keep_running is not None:
                say("--keep-running: broker, detector and metrics stay up; Ctrl-C to stop")
                _wait_for_a_signal(keep_running)
        finally:
            stop.set()
            for t in parts.threads:
                t.join(timeout=30)
            server.shutdown()
            campaign_server.shutdown()
    return card


def _wait_for_a_signal(done: threading.Event) -> None:
    """Until SIGINT or SIGTERM (only now: before, Ctrl-C stops the demo at once)."""
    sigs = (signal.SIGINT, signal.SIGTERM)
    before = {sig: signal.signal(sig, lambda *_: done.set()) for sig in sigs}
    try:
        done.wait()
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)


def _stream_and_score(
    cfg: Config,
    fleet: Fleet,
    opts: DemoOptions,
    metrics: DetectorMetrics,
    campaigns: CampaignService,
    parts: Parts,
    say,
) -> dict:
    """Publish the demo fleet, follow its incidents and campaigns, and score them."""
    k = cfg.kafka
    # whole-second start: window phases (and so the run) depend only on the seed
    start_ts = float(int(time.time() - opts.duration_s / 2))
    size = max(opts.campaign_vehicles, cfg.campaigns.min_vehicles)
    streams, spans, campaign = build_fleet(fleet, opts, start_ts, size)
    total = sum(len(f) for _, _, f in streams)
    say(
        f"fleet: {len(streams)} vehicles, {len(fleet.brands)} brands, {total:,} frames over "
        f"{opts.duration_s:g} s at ×{opts.speed:g}; attacks {', '.join(ATTACKS)} "
        f"at +{opts.attack_start_s:g} s; a {opts.campaign_attack} campaign on {size} "
        f"{streams[-1][1]} vehicles from +{opts.campaign_start_s:g} s, staggered"
    )
    producer = make_producer(k)
    try:
        pub = parts.start("publisher", publish, producer, k.telemetry_topic, streams, opts.speed)
        widths = incident_widths(streams)
        # the stream's own time and a margin: a long run is never cut (a shorter one said
        # 0 false incidents of frames never scored)
        wait_s = opts.duration_s / opts.speed + 120.0
        incidents = follow_incidents(cfg, metrics, total, pub, say, widths, parts.check, wait_s)
        found = read_campaigns(cfg, campaigns, say, check=parts.check)
    finally:
        producer.close()
    return scorecard(spans, incidents, cfg.detection.window_s, campaign, found)


def read_campaigns(
    cfg: Config, service: CampaignService, say, timeout_s: float = 60, check=lambda: None
) -> dict:
    """The campaigns on the campaign topic (the latest record of each), once the service
    has folded every incident in (``check`` as in ``follow_incidents``)."""
    from kafka import TopicPartition

    deadline = time.monotonic() + timeout_s
    while not service.settled and time.monotonic() < deadline:
        check()
        time.sleep(0.2)
    consumer = make_consumer(cfg.kafka, [], None)
    tp = TopicPartition(cfg.kafka.campaign_topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    records = []
    while consumer.position(tp) < end_offsets(consumer, [tp])[tp]:
        records += [json.loads(r.value) for r in consumer.poll(timeout_ms=300).get(tp, [])]
        if time.monotonic() > deadline:
            break
    consumer.close()
    for r in records:
        if r["status"] != "update":
            say(
                f"campaign {r['status']:6} {r['suspected_attack']:10} {r['brand']:17} "
                f"{r['can_id']:20} {r['vehicle_count']} vehicles"
            )
    return latest(records)


def follow_incidents(
    cfg: Config,
    metrics: DetectorMetrics,
    total: int,
    pub: threading.Thread,
    say,
    widths: dict[str, int] | None = None,
    check=lambda: None,
    wait_s: float = 300.0,
) -> dict:
    """Print incidents as they arrive until every frame is scored and incidents closed;
    ``check`` (called every poll) raises if a part the incidents depend on stopped.
    Past ``wait_s`` with frames not yet scored, a DemoError (the scorecard would judge
    what was never scored)."""
    from kafka import TopicPartition

    consumer = make_consumer(cfg.kafka, [], None)
    tp = TopicPartition(cfg.kafka.incident_topic, 0)
    consumer.assign([tp])
    consumer.seek_to_beginning(tp)
    incidents: dict[str, dict] = {}
    done_at = None
    deadline = time.monotonic() + wait_s
    consumed = 0.0
    try:
        while True:
            if time.monotonic() > deadline and done_at is None:
                raise DemoError(
                    f"{consumed:,.0f} of {total:,} frames scored after {wait_s:.0f} s: the "
                    "machine is too slow for this --speed (lower it)"
                )
            check()
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
    finally:
        consumer.close()
    return incidents


def write_report(path: Path, card: dict) -> None:
    path.write_text(json.dumps(card, indent=2) + "\n", encoding="utf-8")
