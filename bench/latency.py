"""End-to-end latency: attack frame -> incident on Kafka, and record -> offset commit.

Per repeat: an embedded Tansu broker (free 127.0.0.1 port, stopped by PID), a
``canwatch detect`` process (this checkout's code, the ``canwatch demo`` model
cache), and a real-time replay: ``--vehicles`` simulated vehicles of the 14
brands, each with ``--attacks`` attacks of rotating families (dos, fuzzing,
spoofing, masquerade, suspension, replay) at known times with random
sub-second phases. Event time = wall clock: every upload record (0.1 s of one
vehicle's frames, as ``replay.publisher`` cuts them) is sent the moment its
last frame has happened.

Measured:

- **frame -> incident**: wall time at which the incident's ``open`` event is
  received on ``can.incidents`` (consumer side, fetch_max_wait 10 ms) minus the
  event time of the first attack frame in the window the incident reports
  (``first_seen``); for suspensions (no frames) the attack start. Also the
  incident record's Kafka CreateTime (the detector's send time; the schema has
  no emitted-at field) and a split: waiting for the window to end, the upload
  of the record that closes the window, and broker + detector + consumer after
  that record was sent.
- **record -> commit**: for every telemetry record, the first time the group's
  committed offset (sampled every ``--commit-sample`` s with OffsetFetch) is
  past it, minus the time it was sent. By design (at-least-once) a record is
  committed only when its window *and the next* are closed.

Target (issue): p99 frame -> incident <= window + 0.5 s at 1 s windows.

    .venv/bin/python bench/latency.py [--vehicles 20] [--attacks 2] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import (  # noqa: E402
    ROOT,
    fmt_range,
    machine,
    markdown_table,
    proc_cpu_seconds,
    summary,
    write_json,
)
from replay.attacks import INJECTABLE  # noqa: E402

FAMILIES = INJECTABLE
SIM_START = 1.7e9
FIRST_ATTACK_S = 6.0
ATTACK_S = 3.0
SPACING_S = 14.0  # attack + 5 quiet windows (incident closes) + margin
TAIL_S = 5.0
TELEMETRY, INCIDENTS, DLQ = "can.telemetry", "can.incidents", "can.telemetry.dlq"


def pct(values, q: float) -> float:
    return (
        float(np.percentile(np.asarray(values, dtype=np.float64), q))
        if len(values)
        else float("nan")
    )


def dist(values) -> dict:
    return {
        "n": len(values),
        "p50": pct(values, 50),
        "p99": pct(values, 99),
        "max": float(np.max(values)) if len(values) else float("nan"),
    }


# -- traffic -----------------------------------------------------------------------------


def build_streams(n_vehicles: int, n_attacks: int, seed: int, park: int = 0):
    """Simulated fleet with attacks at known times (simulation time base SIM_START).

    The last ``park`` vehicles stop sending (ignition off) after their first
    attack's incident has had time to close; their later attacks are dropped."""
    from detector.core.brands import load_fleet
    from replay.attacks import AttackSpec, inject
    from replay.simulator import simulate_fleet

    fleet = load_fleet()
    duration = FIRST_ATTACK_S + n_attacks * SPACING_S + TAIL_S
    rng = np.random.default_rng(seed)
    vehicles = simulate_fleet(sorted(fleet.brands), n_vehicles, duration, seed, SIM_START)
    streams, attacks = [], []
    for i, v in enumerate(vehicles):
        frames = v.frames
        for k in range(n_attacks):
            kind = FAMILIES[(i * n_attacks + k) % len(FAMILIES)]
            start = FIRST_ATTACK_S + k * SPACING_S + float(rng.uniform(0, 1))
            spec = AttackSpec.parse(f"{kind}:start={start:.3f},duration={ATTACK_S}")
            frames, span = inject(frames, spec, seed=seed * 1000 + i * 10 + k)
            attacks.append(
                {"vehicle": v.vehicle, "kind": kind, "start": span.start_ts, "end": span.end_ts}
            )
        if i >= n_vehicles - park:
            cut = SIM_START + FIRST_ATTACK_S + 1 + ATTACK_S + 8.0
            frames = frames[frames["ts"] < cut]
            attacks = [a for a in attacks if a["vehicle"] != v.vehicle or a["end"] <= cut]
        streams.append((v.vehicle, v.brand, frames))
    return streams, attacks, duration


def encode_all(streams):
    """Every upload record, in send order: (due, vehicle, key, value, headers, ts_min, ts_max)."""
    from detector.transport.wire import encode_record
    from replay.publisher import interleave

    out = []
    for b in interleave(streams):
        key, value, headers = encode_record(b.vehicle, b.brand, b.frames)
        out.append((b.due, b.vehicle, key, value, headers, float(b.frames["ts"][0])))
    return out


# -- processes ----------------------------------------------------------------------------


def model_dir() -> Path:
    from detector.core.brands import load_fleet
    from detector.core.config import load_config
    from detector.demo import cache_dir, ensure_models

    d = cache_dir(ROOT / ".canwatch-cache")
    ensure_models(load_fleet(), load_config(None, env={}), d, lambda s: print(s, file=sys.stderr))
    return d


def start_detector(bootstrap: str, models: Path, group: str, metrics_port: int, log: Path):
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env = {k: v for k, v in env.items() if not k.startswith("CANWATCH_")}
    cmd = [
        sys.executable,
        "-c",
        "import sys; from detector.cli import main; sys.exit(main())",
        "detect",
        "--bootstrap",
        bootstrap,
        "--models",
        str(models),
        "--group",
        group,
        "--metrics",
        f"127.0.0.1:{metrics_port}",
        "--detector-id",
        "bench",
    ]
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)


def stop_process(proc: subprocess.Popen | None, sig: int = signal.SIGTERM) -> None:
    if proc is None or proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def scrape(port: int) -> dict:
    """{(name, labels tuple): value} of the detector's /metrics."""
    from prometheus_client.parser import text_string_to_metric_families

    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    out = {}
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def metric_sum(m: dict, name: str, **labels) -> float:
    return sum(
        v
        for (n, lab), v in m.items()
        if n == name and all(dict(lab).get(k) == val for k, val in labels.items())
    )


def wait_ready(port: int, proc: subprocess.Popen, log: Path, timeout_s: float = 90.0) -> float:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        if proc.poll() is not None:
            raise RuntimeError(
                f"canwatch detect exited {proc.returncode}:\n{log.read_text()[-2000:]}"
            )
        try:
            if metric_sum(scrape(port), "canwatch_ready") >= 1:
                return time.monotonic() - t0
        except OSError:
            pass
        time.sleep(0.2)
    raise RuntimeError(
        f"canwatch detect not ready after {timeout_s:g} s:\n{log.read_text()[-2000:]}"
    )


# -- observers ----------------------------------------------------------------------------


class IncidentWatcher(threading.Thread):
    """Reads can.incidents from the start; stamps each record with the receive wall time."""

    def __init__(self, bootstrap: str) -> None:
        super().__init__(daemon=True, name="incidents")
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap,
            group_id=None,
            auto_offset_reset="earliest",
            fetch_max_wait_ms=10,
        )
        self.consumer.assign([TopicPartition(INCIDENTS, 0)])
        self.events: list[tuple[float, float, dict]] = []  # (recv wall, CreateTime s, event)
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            polled = self.consumer.poll(timeout_ms=50)
            now = time.time()
            for recs in polled.values():
                for r in recs:
                    self.events.append((now, r.timestamp / 1000.0, json.loads(r.value)))
        self.consumer.close()


class CommitWatcher(threading.Thread):
    """Samples the group's committed offsets (OffsetFetch, via a consumer that never
    joins the group) every ``interval`` s."""

    def __init__(self, bootstrap: str, group: str, partitions: int, interval: float) -> None:
        super().__init__(daemon=True, name="commits")
        from kafka import KafkaConsumer, TopicPartition

        self.consumer = KafkaConsumer(
            bootstrap_servers=bootstrap, group_id=group, enable_auto_commit=False
        )
        self.tps = [TopicPartition(TELEMETRY, p) for p in range(partitions)]
        self.interval = interval
        self.samples: list[tuple[float, dict[int, int]]] = []
        self.errors = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            t0 = time.time()
            try:
                got = {tp.partition: self.consumer.committed(tp) for tp in self.tps}
                self.samples.append((time.time(), {p: o for p, o in got.items() if o is not None}))
            except Exception:  # noqa: BLE001 - best effort sampling; counted
                self.errors += 1
            self.stop.wait(max(0.0, self.interval - (time.time() - t0)))
        self.consumer.close(autocommit=False)


# -- one run ----------------------------------------------------------------------------------


def one_run(args, models: Path, run: int, workdir: Path) -> dict:
    from detector.core.config import load_config
    from detector.transport.broker import EmbeddedBroker, create_topics, free_port
    from detector.transport.kafka_io import make_producer

    seed = args.seed + run
    streams, attacks, duration = build_streams(args.vehicles, args.attacks, seed, args.park)
    broker = EmbeddedBroker(log_path=workdir / f"tansu-{run}.log")
    detector = None
    watchers: list = []
    try:
        broker.start()
        bootstrap = broker.bootstrap
        create_topics(bootstrap, {TELEMETRY: args.partitions, INCIDENTS: 1, DLQ: 1})
        group = f"bench-latency-{run}"
        port = free_port()
        log = workdir / f"detect-{run}.log"
        detector = start_detector(bootstrap, models, group, port, log)
        ready_s = wait_ready(port, detector, log)
        incidents = IncidentWatcher(bootstrap)
        commits = CommitWatcher(bootstrap, group, args.partitions, args.commit_sample)
        watchers = [incidents, commits]
        for w in watchers:
            w.start()
        cfg = load_config(None, env={}, overrides={"kafka.bootstrap": bootstrap})
        producer = make_producer(cfg.kafka)

        # event time = wall clock: the simulated drive starts ``--lead`` s from now
        shift = time.time() + args.lead - SIM_START
        for s in streams:
            s[2]["ts"] += shift
        for a in attacks:
            a["start"] += shift
            a["end"] += shift
        records = encode_all(streams)
        cpu0 = {
            n: proc_cpu_seconds(p) for n, p in (("detector", detector.pid), ("broker", broker.pid))
        }
        wall0 = time.time()
        sent = []  # (vehicle, ts_min, ts_max, send wall, future)
        late = []
        for due, vehicle, key, value, headers, ts_min in records:
            delay = due - time.time()
            if delay > 0:
                time.sleep(delay)
            now = time.time()
            late.append(now - due)
            fut = producer.send(TELEMETRY, key=key, value=value, headers=headers)
            sent.append((vehicle, ts_min, due, now, fut))
        producer.flush()
        replay_s = time.time() - wall0
        cpu1 = {
            n: proc_cpu_seconds(p) for n, p in (("detector", detector.pid), ("broker", broker.pid))
        }
        meta = [(v, t0, t1, sw, f.get(timeout=30)) for v, t0, t1, sw, f in sent]
        producer.close()
        # drain: incidents of the last attack close 5 quiet windows after it; commits settle
        time.sleep(args.drain)
        metrics = scrape(port)
    finally:
        for w in watchers:
            w.stop.set()
        for w in watchers:
            w.join(timeout=10)
        stop_process(detector)
        broker.close()

    return analyse(args, attacks, streams, meta, late, incidents, commits, metrics) | {
        "run": run,
        "duration_s": duration,
        "replay_s": round(replay_s, 2),
        "ready_s": round(ready_s, 2),
        "records": len(meta),
        "frames": int(sum(len(s[2]) for s in streams)),
        "cpu_cores": {n: round((cpu1[n] - cpu0[n]) / replay_s, 3) for n in cpu0},
    }


def analyse(args, attacks, streams, meta, late, incidents, commits, metrics) -> dict:
    W = args.window
    frames_of = {v: f for v, _, f in streams}
    # per vehicle: records (ts_max, send wall) sorted by ts_max, to find the window-closing record
    rec_by_vehicle: dict[str, list[tuple[float, float]]] = {}
    for v, _t0, t1, sw, _md in meta:
        rec_by_vehicle.setdefault(v, []).append((t1, sw))
    for lst in rec_by_vehicle.values():
        lst.sort()

    opens = [(recv, ct, ev) for recv, ct, ev in incidents.events if ev["status"] == "open"]
    latest = {ev["incident_id"]: ev for _, _, ev in incidents.events}  # last update or close
    used: set[str] = set()
    rows = []
    for a in attacks:
        hits = [
            (recv, ct, ev)
            for recv, ct, ev in opens
            if ev["vehicle"] == a["vehicle"]
            and ev["first_seen"] <= a["end"] + W
            and ev["last_seen"] >= a["start"]
        ]
        if not hits:
            rows.append({**a, "detected": False})
            continue
        recv, ct, ev = min(hits, key=lambda h: h[0])
        used.add(ev["incident_id"])
        w0 = float(ev["first_seen"])
        w1 = w0 + W
        f = frames_of[a["vehicle"]]
        in_win = f[(f["ts"] >= w0) & (f["ts"] < w1) & (f["label"] > 0)]
        ref = float(in_win["ts"].min()) if len(in_win) else max(w0, a["start"])
        closing = next((sw for t1, sw in rec_by_vehicle[a["vehicle"]] if t1 >= w1), float("nan"))
        rows.append(
            {
                **a,
                "detected": True,
                "incident_id": ev["incident_id"],
                "suspected": ev["suspected_attack"],
                "suspected_last": latest[ev["incident_id"]]["suspected_attack"],
                "last_status": latest[ev["incident_id"]]["status"],
                "window_start": w0,
                "ref_ts": ref,
                "frame_to_incident_s": recv - ref,
                "frame_to_emit_s": ct - ref,
                "attack_start_to_incident_s": recv - a["start"],
                "wait_window_end_s": w1 - ref,
                "closing_upload_s": closing - w1,
                "after_closing_record_s": recv - closing,
                "emit_to_receive_s": recv - ct,
                "windows_after_attack_start": int(np.floor(w0 / W) - np.floor(a["start"] / W)),
            }
        )
    false_incidents = {ev["incident_id"] for _, _, ev in opens} - used
    by_vehicle: dict[str, list] = {}
    for a in attacks:
        by_vehicle.setdefault(a["vehicle"], []).append(a)
    false_detail = []
    for _, _, ev in opens:
        if ev["incident_id"] in false_incidents:
            last = latest[ev["incident_id"]]
            near = min(
                by_vehicle.get(ev["vehicle"], []),
                key=lambda a, t=ev["first_seen"]: abs(a["start"] - t),
                default=None,
            )
            false_detail.append(
                {
                    "vehicle": ev["vehicle"],
                    "suspected": last["suspected_attack"],
                    "windows": last["windows"],
                    "peak_score": last["peak_score"],
                    "can_ids": [c["can_id"] for c in last["can_ids"][:3]],
                    "nearest_attack": None
                    if near is None
                    else {
                        "kind": near["kind"],
                        "first_seen_minus_attack_start_s": round(
                            ev["first_seen"] - near["start"], 3
                        ),
                        "attack_s": round(near["end"] - near["start"], 3),
                    },
                }
            )
    det = [r for r in rows if r["detected"]]

    # record -> commit
    samples = commits.samples
    commit_lat, never = [], 0
    times = np.array([t for t, _ in samples])
    for _v, _t0, _t1, sw, md in meta:
        offs = np.array([s.get(md.partition, -1) for _, s in samples])
        ok = np.flatnonzero((offs > md.offset) & (times >= sw))
        if len(ok):
            commit_lat.append(float(times[ok[0]] - sw))
        else:
            never += 1
    published = len(meta)
    produced: dict[int, int] = {}
    for *_, md in meta:
        produced[md.partition] = max(produced.get(md.partition, 0), md.offset + 1)
    final = samples[-1][1] if samples else {}
    end_commit = {str(p): [int(final.get(p, 0)), n] for p, n in sorted(produced.items())}

    def stage(name: str) -> dict:
        count = metric_sum(metrics, "canwatch_stage_duration_seconds_count", stage=name)
        total = metric_sum(metrics, "canwatch_stage_duration_seconds_sum", stage=name)
        buckets = sorted(
            (float(dict(lab)["le"]), v)
            for (n, lab), v in metrics.items()
            if n == "canwatch_stage_duration_seconds_bucket" and dict(lab).get("stage") == name
        )
        p99 = next((le for le, v in buckets if count and v >= 0.99 * count), float("nan"))
        return {
            "polls": int(count),
            "mean_s": total / count if count else float("nan"),
            "p99_le_s": p99,
        }

    return {
        "attacks": len(attacks),
        "detected": len(det),
        "incidents_opened": len(opens),
        "false_incidents": len(false_incidents),
        "false_incident_detail": false_detail,
        "detail": rows,
        "frame_to_incident": dist([r["frame_to_incident_s"] for r in det]),
        "frame_to_emit": dist([r["frame_to_emit_s"] for r in det]),
        "attack_start_to_incident": dist([r["attack_start_to_incident_s"] for r in det]),
        "wait_window_end": dist([r["wait_window_end_s"] for r in det]),
        "closing_upload": dist([r["closing_upload_s"] for r in det]),
        "after_closing_record": dist([r["after_closing_record_s"] for r in det]),
        "emit_to_receive": dist([r["emit_to_receive_s"] for r in det]),
        "record_to_commit": dist(commit_lat),
        "records_never_committed": never,
        "records_published": published,
        "committed_vs_produced_at_end": end_commit,
        "commit_samples": len(samples),
        "commit_sample_errors": commits.errors,
        "publisher_late": dist(late),
        "frames_consumed": metric_sum(metrics, "canwatch_frames_consumed_total"),
        "late_frames": metric_sum(metrics, "canwatch_late_frames_total"),
        "dead_letters": metric_sum(metrics, "canwatch_dead_letters_total"),
        "stages": {
            s: stage(s) for s in ("decode", "features", "score", "incidents", "produce", "commit")
        },
    }


# -- output ------------------------------------------------------------------------------


def _ms(s: dict) -> str:
    return fmt_range(s, 0, 1000.0)


def latency_table(runs: list[dict]) -> str:
    rows = []
    for key, what in (
        (
            "frame_to_incident",
            "**frame -> incident received** (first attack frame of the reported window)",
        ),
        ("frame_to_emit", "frame -> incident emitted (Kafka CreateTime of the incident record)"),
        ("wait_window_end", "  = wait for the window to end (first attack frame -> window end)"),
        (
            "closing_upload",
            "  + upload of the record that closes the window (window end -> its send)",
        ),
        (
            "after_closing_record",
            "  + broker, detector poll/score/produce, consumer (closing record sent -> incident received)",
        ),
        ("emit_to_receive", "    of which incident emitted -> received"),
        ("attack_start_to_incident", "attack start -> incident received"),
        ("record_to_commit", "**record sent -> offset committed** (OffsetFetch sampling)"),
        ("publisher_late", "publisher: record sent after its last frame (pacing error)"),
    ):
        per = [r[key] for r in runs]
        rows.append(
            (
                what,
                sum(p["n"] for p in per),
                _ms(summary([p["p50"] for p in per])),
                _ms(summary([p["p99"] for p in per])),
                _ms(summary([p["max"] for p in per])),
            )
        )
    return markdown_table(
        ("ms, median (min–max) over runs", "n (all runs)", "p50", "p99", "max"), rows
    )


def stage_table(runs: list[dict]) -> str:
    rows = []
    for s in runs[0]["stages"]:
        rows.append(
            (
                s,
                sum(r["stages"][s]["polls"] for r in runs),
                fmt_range(summary([r["stages"][s]["mean_s"] for r in runs]), 2, 1000.0),
                fmt_range(summary([r["stages"][s]["p99_le_s"] for r in runs]), 1, 1000.0),
            )
        )
    return markdown_table(
        (
            "detector stage (per poll, from canwatch_stage_duration_seconds)",
            "polls",
            "mean ms",
            "p99 ≤ bucket ms",
        ),
        rows,
    )


def family_table(runs: list[dict]) -> str:
    by: dict[str, list] = {}
    for r in runs:
        for d in r["detail"]:
            by.setdefault(d["kind"], []).append(d)
    rows = []
    for kind in FAMILIES:
        ds = by.get(kind, [])
        det = [d for d in ds if d["detected"]]
        lat = [d["frame_to_incident_s"] * 1000 for d in det]
        late_w = sum(d["windows_after_attack_start"] > 0 for d in det)
        right = sum(d["suspected"] == kind for d in det)
        right_last = sum(d.get("suspected_last") == kind for d in det)
        rows.append(
            (
                kind,
                f"{len(det)}/{len(ds)}",
                f"{pct(lat, 50):,.0f}" if lat else "-",
                f"{max(lat):,.0f}" if lat else "-",
                late_w,
                f"{right} / {right_last}",
            )
        )
    return markdown_table(
        (
            "family",
            "detected",
            "frame->incident p50 ms",
            "max ms",
            "first flagged window after the attack's first",
            "suspected right at open / at last event",
        ),
        rows,
    )


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", type=int, default=20)
    ap.add_argument("--attacks", type=int, default=2, help="attacks per vehicle (14 s apart)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument("--commit-sample", type=float, default=0.1, help="OffsetFetch interval, s")
    ap.add_argument("--drain", type=float, default=8.0, help="seconds to wait after the replay")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument(
        "--park",
        type=int,
        default=0,
        help="vehicles that stop sending mid-run (shows commits stuck behind a parked vehicle)",
    )
    ap.add_argument("--lead", type=float, default=2.0, help="s between set-up and the first frame")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    from detector.core.config import DetectionConfig

    args.window = DetectionConfig().window_s
    t_all = time.perf_counter()
    models = model_dir()
    runs = []
    with tempfile.TemporaryDirectory(prefix="canwatch-latency-") as tmp:
        for run in range(args.repeat):
            t0 = time.perf_counter()
            r = one_run(args, models, run, Path(tmp))
            runs.append(r)
            f = r["frame_to_incident"]
            print(
                f"  run {run}: {r['detected']}/{r['attacks']} attacks, {r['false_incidents']} false; "
                f"frame->incident p50 {f['p50'] * 1000:.0f} p99 {f['p99'] * 1000:.0f} max "
                f"{f['max'] * 1000:.0f} ms; commit p99 {r['record_to_commit']['p99'] * 1000:.0f} ms "
                f"({time.perf_counter() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    total_s = time.perf_counter() - t_all
    target = args.window + 0.5
    p99s = [r["frame_to_incident"]["p99"] for r in runs]
    r0 = runs[0]
    print(f"# End-to-end latency ({machine()}; {total_s:.0f} s)\n")
    print(
        f"{args.repeat} runs × {args.vehicles} vehicles at real time ({r0['frames'] / r0['duration_s']:,.0f} "
        f"frames/s, {r0['records'] / r0['duration_s']:,.0f} records/s, {args.partitions} partitions), "
        f"{args.window:g} s windows, {r0['duration_s']:g} s each; {sum(r['attacks'] for r in runs)} attacks, "
        f"{sum(r['detected'] for r in runs)} detected, {sum(r['false_incidents'] for r in runs)} false incidents. "
        f"CPU during replay (cores): detector {fmt_range(summary([r['cpu_cores']['detector'] for r in runs]), 2)}, "
        f"broker {fmt_range(summary([r['cpu_cores']['broker'] for r in runs]), 2)}.\n"
    )
    print(latency_table(runs) + "\n")
    verdict = "meets" if max(p99s) <= target else "MISSES"
    print(
        f"p99 frame -> incident {fmt_range(summary(p99s), 0, 1000.0)} ms vs target {target * 1000:.0f} ms "
        f"(window + 0.5 s): {verdict} it in {'every run' if verdict == 'meets' else 'at least one run'}.\n"
    )
    print(family_table(runs) + "\n")
    for r in runs:
        for f in r["false_incident_detail"]:
            near = f["nearest_attack"]
            where = (
                f"{near['first_seen_minus_attack_start_s']:+.1f} s from the start of its "
                f"{near['attack_s']:g} s {near['kind']} attack"
                if near
                else "no attack on that vehicle"
            )
            print(
                f"- run {r['run']}: incident not matched to an attack: {f['vehicle']}, "
                f"{f['suspected']}, {f['windows']} window(s), peak {f['peak_score']}, "
                f"ids {', '.join(f['can_ids'])}; {where}"
            )
    if any(r["false_incident_detail"] for r in runs):
        print()
    print(stage_table(runs) + "\n")
    never = [r["records_never_committed"] for r in runs]
    print(
        f"Records never committed by the end (last windows stay open: no later frame closes them): "
        f"{fmt_range(summary(never))} of {r0['records_published']:,} per run. Frames consumed "
        f"{fmt_range(summary([r['frames_consumed'] for r in runs]))}, late "
        f"{fmt_range(summary([r['late_frames'] for r in runs]))}, dead letters "
        f"{fmt_range(summary([r['dead_letters'] for r in runs]))}.\n"
    )
    ends = "; ".join(
        "run {}: {}".format(
            r["run"],
            ", ".join(
                f"p{p} {c:,}/{n:,}" for p, (c, n) in r["committed_vs_produced_at_end"].items()
            ),
        )
        for r in runs
    )
    print(
        f"Committed / produced offsets per partition {args.drain:g} s after the replay: {ends}.\n"
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "args": {k: v for k, v in vars(args).items() if k != "json"},
            "target_p99_s": target,
            "runs": runs,
            "seconds": round(total_s, 1),
        },
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
