"""Adversarial load (issue 22): what a fuzzer or a flood of vehicle keys costs ``canwatch detect``.

A normal simulated fleet (``--vehicles`` jeeps, real time, binary records of
<= 0.1 s) runs through the embedded broker into a ``canwatch detect`` process,
and, per scenario, an attacker:

* **a** (``fuzz``): one more vehicle whose bus carries, on top of its own
  traffic, random 29-bit extended ids at ``--fuzz-rate`` frames/s (4,000: about
  what a 500 kbit/s bus carries) for ``--fuzz-minutes`` minutes (10), after
  ``WARMUP_S`` of normal traffic;
* **b** (``flood``): ``--flood-rate`` new random vehicle keys a second, each
  one JSON record of one frame, for ``--flood-minutes`` minutes, while a fleet
  vehicle suffers a dos (``FLOOD_ATTACK``) in the middle of it.

Per minute it prints detect's frames consumed, CPU-seconds (user+sys of the
process, /proc; and *net*: less what the same process used idle, measured for
``IDLE_S`` before any traffic: it polls Kafka, its watchdog probes), frames
per CPU-second (of both), RSS, the state held (vehicles,
streams), what was shed, the event-time lag (wall clock minus the newest event
time processed, the detector's own gauge) and the incidents of the fleet so
far. After the traffic it waits for detect to drain and reads the incident
topic: the fuzzing vehicle's incident (kind, windows, ids and evidence), and
the fleet's (the attacked vehicle's, and any false ones).

This is a benchmark, not a test: nothing here fails on a figure. The figures
issue 22 asks for: (a) the last fuzz minute's CPU per frame within 1.25x of
the first's, RSS flat after the first minute; (b) RSS bounded by the limits,
the shedding in the metrics, the fleet's attack detected.

    .venv/bin/python bench/adversarial.py [--scenario a,b] [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/adversarial.py`)
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import key_value, listed, say
from bench.common.detect import DetectProc, total
from bench.common.procs import cpu_seconds, rss
from bench.common.report import machine_line, markdown_table, write_results
from bench.common.rig import bench_models, broker, incident_consumer, producer
from detector.core.brands import load_fleet
from detector.core.schema import EXTENDED_FLAG, make_frames
from detector.transport.wire import encode_record
from replay.attacks import AttackSpec, inject
from replay.publisher import publish
from replay.simulator import simulate_vehicle

TOPIC = "adv.telemetry"
PARTITIONS = 4
WARMUP_S = 30.0  # normal traffic before the attack starts
TAIL_S = 20.0  # normal traffic after it ends (incidents close)
FUZZER = "veh-fuzzer"
FLOOD_ATTACK = "dos:start={start},duration=20"  # on the first fleet vehicle, mid-flood
DRAIN_TIMEOUT_S = 900.0
IDLE_S = 20.0  # detect's idle CPU rate is measured over this, before any traffic


def fleet(n: int, seconds: float, start: float, attacks: dict[int, str]) -> list:
    out = []
    for i in range(n):
        frames = simulate_vehicle("cusw", seconds, start, seed=900 + i)
        if i in attacks:
            frames, _ = inject(frames, AttackSpec.parse(attacks[i]), seed=i)
        out.append((f"veh-fleet-{i:02d}", "jeep", frames))
    return out


def fuzz_frames(start: float, seconds: float, rate: float, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(rate * seconds)
    ts = np.sort(start + rng.uniform(0, seconds, n))
    ids = rng.integers(0, 2**29, n).astype(np.uint32) | np.uint32(EXTENDED_FLAG)
    return make_frames(ts, ids, rng.integers(0, 256, (n, 8)).astype(np.uint8))


def publish_live(bootstrap: str, streams: list, errors: list) -> None:
    """The streams in real time (binary records of <= 500 frames or 0.1 s)."""
    prod = producer(bootstrap)
    try:
        publish(prod, TOPIC, streams, speed=1.0, max_span_s=0.1)
    except Exception as exc:  # reported by the main thread
        errors.append(exc)
    finally:
        prod.close()


def flood_live(bootstrap: str, start: float, seconds: float, rate: float, errors: list, sent: list) -> None:
    """``rate`` new vehicle keys a second from wall time ``start``: one JSON record of one
    frame each (as the issue measured), sent in 0.1 s slices."""
    prod = producer(bootstrap)
    rng = np.random.default_rng(5)
    n = 0
    try:
        time.sleep(max(start - time.time(), 0))
        t0 = time.monotonic()
        while (elapsed := time.monotonic() - t0) < seconds:
            due = int(rate * (elapsed + 0.1)) - n
            now = time.time()
            for _ in range(max(due, 0)):
                key = f"flood-{rng.integers(0, 2**62):x}"
                frame = make_frames(np.array([now]), np.array([0x1E4], np.uint32), np.zeros((1, 8)))
                k, v, h = encode_record(key, "jeep", frame, "json")
                prod.send(TOPIC, key=k, value=v, headers=h)
            n += max(due, 0)
            time.sleep(max(t0 + elapsed + 0.1 - time.monotonic(), 0))
        prod.flush()
        sent.append(n)
    except Exception as exc:
        errors.append(exc)
    finally:
        prod.close()


def read_incidents(bootstrap: str) -> list[dict]:
    """The whole incident topic (one partition), without a group."""
    consumer = incident_consumer(bootstrap)
    out, idle = [], time.monotonic()
    try:
        while time.monotonic() - idle < 5.0:
            for records in consumer.poll(timeout_ms=500).values():
                out += [json.loads(r.value) for r in records]
                idle = time.monotonic()
    finally:
        consumer.close()
    return out


class Minutes:
    """Samples of detect every second; one row per minute of the attack clock."""

    def __init__(self, d: DetectProc, t0: float, idle_rate: float) -> None:
        self.d, self.t0, self.idle_rate = d, t0, idle_rate
        self.rows: list[dict] = []
        self._last = self._read()

    def _read(self) -> dict:
        s = self.d.poll_metrics()
        shed: dict[str, float] = {}
        for labels, v in s.get("canwatch_frames_shed_total", {}).items():
            reason = dict(labels)["reason"]
            shed[reason] = shed.get(reason, 0.0) + v
        return {
            "t": time.monotonic(), "cpu": cpu_seconds(self.d.proc.pid), "rss": rss(self.d.proc.pid),
            "frames": total(s, "canwatch_frames_consumed_total"),
            "records": total(s, "canwatch_records_consumed_total"),
            "vehicles": total(s, "canwatch_state_vehicles"),
            "streams": total(s, "canwatch_state_streams"), "shed": shed,
            "evicted": total(s, "canwatch_vehicles_evicted_total"),
            "lag_s": max(s.get("canwatch_event_time_lag_seconds", {}).values(), default=float("nan")),
            "incidents": total(s, "canwatch_incidents_opened_total"),
        }  # fmt: skip

    def tick(self, label: str) -> dict:
        now, a = self._read(), self._last
        frames, cpu = now["frames"] - a["frames"], now["cpu"] - a["cpu"]
        net = cpu - self.idle_rate * (now["t"] - a["t"])
        shed = {r: now["shed"].get(r, 0.0) - a["shed"].get(r, 0.0) for r in now["shed"] | a["shed"]}
        row = {
            "minute": label, "frames": int(frames), "records": int(now["records"] - a["records"]),
            "cpu_s": round(cpu, 2), "frames_per_cpu_s": round(frames / cpu) if cpu > 0 else None,
            "cpu_net_s": round(net, 2), "frames_per_net_cpu_s": round(frames / net) if net > 0 else None,
            "rss_mib": round(now["rss"] / 2**20), "vehicles": int(now["vehicles"]),
            "streams": int(now["streams"]), "shed": {k: int(v) for k, v in shed.items() if v},
            "evicted": int(now["evicted"] - a["evicted"]), "lag_s": round(now["lag_s"], 1),
            "incidents_opened": int(now["incidents"]),
        }  # fmt: skip
        self.rows.append(row)
        self._last = now
        say(f"  {label:>8}: {row['frames']:>9,} frames {row['cpu_s']:6.2f} CPU-s "
            f"{row['frames_per_cpu_s'] or 0:>10,} frames/CPU-s ({row['frames_per_net_cpu_s'] or 0:,} "
            f"net)  RSS {row['rss_mib']:4d} MiB  {row['vehicles']:,} vehicles {row['streams']:,} "
            f"streams  shed {row['shed']}  lag {row['lag_s']} s  incidents {row['incidents_opened']}")  # fmt: skip
        return row


def scenario_streams(args, scenario: str, length: float, start: float, attack_s: float):
    """The fleet (b: with a dos mid-flood) and (a) the fuzzing vehicle; and the attacks."""
    attacks = {0: FLOOD_ATTACK.format(start=WARMUP_S + attack_s / 2)} if scenario == "b" else {}
    streams = fleet(args.vehicles, length, start, attacks)
    if scenario == "a":
        own = simulate_vehicle("cusw", length, start, seed=999)
        both = np.concatenate([own, fuzz_frames(start + WARMUP_S, attack_s, args.fuzz_rate)])
        streams.append((FUZZER, "jeep", both[np.argsort(both["ts"], kind="stable")]))
    say(f"scenario {scenario}: {len(streams)} vehicles for {length:.0f} s"
        + (f", fuzzing {args.fuzz_rate:,.0f} frames/s" if scenario == "a" else "")
        + (f", {args.flood_rate:,.0f} new keys/s" if scenario == "b" else "")
        + f"; limits {args.limits or 'default'}")  # fmt: skip
    return streams, attacks


def run(args: argparse.Namespace, scenario: str, model_dir: Path, work: Path) -> dict:
    with broker(work, {TOPIC: PARTITIONS}, f"tansu-{scenario}") as b:
        extra = "[limits]\n" + "".join(f"{k} = {v}\n" for k, v in args.limits.items())
        d = DetectProc(work, b.bootstrap, TOPIC, model_dir, extra_toml=extra)
        try:
            d.wait(lambda s: bool(s) and d.assigned_cpu is not None, 180.0)
            c0, t0 = cpu_seconds(d.proc.pid), time.monotonic()
            time.sleep(IDLE_S)
            idle_rate = (cpu_seconds(d.proc.pid) - c0) / (time.monotonic() - t0)
            say(f"  detect idle: {idle_rate:.3f} CPU-s a second")
            minutes = args.fuzz_minutes if scenario == "a" else args.flood_minutes
            attack_s = 60.0 * minutes
            length = WARMUP_S + attack_s + TAIL_S
            start = time.time() + 3.0
            streams, attacks = scenario_streams(args, scenario, length, start, attack_s)
            errors: list = []
            flooded: list[int] = []
            threads = [threading.Thread(target=publish_live, args=(b.bootstrap, streams, errors))]
            if scenario == "b":
                flood = (b.bootstrap, start + WARMUP_S, attack_s, args.flood_rate, errors, flooded)
                threads.append(threading.Thread(target=flood_live, args=flood))
            for t in threads:
                t.start()
            time.sleep(max(start - time.time(), 0))
            clock = Minutes(d, time.monotonic(), idle_rate)
            time.sleep(WARMUP_S)
            clock.tick("normal")
            for m in range(1, minutes + 1):
                time.sleep(max(clock.t0 + WARMUP_S + 60 * m - time.monotonic(), 0))
                clock.tick(f"attack {m}")
            for t in threads:
                t.join()
            if errors:
                raise RuntimeError(f"producer failed: {errors[0]!r}")
            sent = sum(len(f) for _, _, f in streams) + sum(flooded)
            say(f"  all sent ({sent:,} frames); waiting for detect to drain")
            d.wait(lambda s: total(s, "canwatch_frames_consumed_total") >= sent, DRAIN_TIMEOUT_S)
            time.sleep(TAIL_S / 2)
            clock.tick("tail")
            incidents = read_incidents(b.bootstrap)
        finally:
            d.stop()
    res = summarize(scenario, clock.rows, incidents, streams, attacks)
    res["idle_cpu_per_s"] = round(idle_rate, 3)
    return res


def summarize(scenario: str, rows: list, incidents: list, streams: list, attacks: dict) -> dict:
    by_vehicle: dict[str, list[dict]] = {}
    for ev in incidents:
        by_vehicle.setdefault(ev["vehicle"], []).append(ev)
    attacked = {streams[i][0] for i in attacks} | ({FUZZER} if scenario == "a" else set())
    fleet_names = {v for v, _, _ in streams}
    out = {
        "scenario": scenario, "minutes": rows,
        "attacked_vehicles": {v: _incident_summary(by_vehicle.get(v, [])) for v in sorted(attacked)},
        "false_incidents": sorted(v for v in by_vehicle if v in fleet_names - attacked),
        "flood_key_incidents": sum(1 for v in by_vehicle if v not in fleet_names),
    }  # fmt: skip
    fuzz = [r for r in rows if r["minute"].startswith("attack")]

    def last_over_first(key: str) -> float | None:  # frames/CPU-s, first over last minute
        ok = len(fuzz) >= 2 and fuzz[0][key] and fuzz[-1][key]
        return round(fuzz[0][key] / fuzz[-1][key], 3) if ok else None

    if (raw := last_over_first("frames_per_cpu_s")) is not None:
        out["cpu_per_frame_last_over_first"] = raw
        if (net := last_over_first("frames_per_net_cpu_s")) is not None:
            out["net_cpu_per_frame_last_over_first"] = net
    return out


def _incident_summary(events: list[dict]) -> dict:
    if not events:
        return {"incidents": 0}
    last = events[-1]
    return {
        "incidents": len({e["incident_id"] for e in events}), "events": len(events),
        "status": last["status"], "suspected_attack": last["suspected_attack"],
        "windows": last["windows"], "can_ids": [c["can_id"] for c in last["can_ids"]][:5],
        "evidence": [e["text"] for e in last["evidence"]][:3],
    }  # fmt: skip


def table(res: dict) -> str:
    rows = [
        [r["minute"], f"{r['frames']:,}", f"{r['cpu_s']:.2f}", f"{r['frames_per_cpu_s'] or 0:,}",
         f"{r['frames_per_net_cpu_s'] or 0:,}", r["rss_mib"], f"{r['vehicles']:,}", f"{r['streams']:,}",
         ", ".join(f"{k} {v:,}" for k, v in r["shed"].items()) or "-", f"{r['evicted']:,}",
         r["lag_s"], r["incidents_opened"]]
        for r in res["minutes"]
    ]  # fmt: skip
    head = ["minute", "frames", "CPU-s", "frames/CPU-s", "net of idle", "RSS MiB", "vehicles",
            "streams", "frames shed", "evicted", "lag s", "incidents"]  # fmt: skip
    lines = [markdown_table(head, rows), ""]
    lines += [f"- {v}: {json.dumps(s)}" for v, s in res["attacked_vehicles"].items()]
    lines.append(f"- false incidents on the fleet: {res['false_incidents'] or 'none'}; "
                 f"incidents on flood keys: {res['flood_key_incidents']}")  # fmt: skip
    if "cpu_per_frame_last_over_first" in res:
        lines.append(
            f"- CPU per frame, last attack minute / first: {res['cpu_per_frame_last_over_first']} "
            f"(net of idle: {res.get('net_cpu_per_frame_last_over_first')}); detect idle: "
            f"{res['idle_cpu_per_s']} CPU-s a second"
        )
    return "\n".join(lines)


def headline(results: dict) -> list[tuple[str, str]]:
    out = []
    for name, res in results.items():
        rss_mib = [r["rss_mib"] for r in res["minutes"]]
        out.append((f"scenario {name}: RSS MiB before the attack / at the end / max",
                    f"{rss_mib[0]} / {rss_mib[-1]} / {max(rss_mib)}"))  # fmt: skip
        if "cpu_per_frame_last_over_first" in res:
            out.append((f"scenario {name}: CPU per frame, last attack minute / first",
                        str(res["cpu_per_frame_last_over_first"])))  # fmt: skip
        out.append((f"scenario {name}: attacked vehicles with an incident, false incidents",
                    f"{sum(1 for s in res['attacked_vehicles'].values() if s['incidents'])}"
                    f"/{len(res['attacked_vehicles'])}, {len(res['false_incidents'])}"))  # fmt: skip
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenario", type=listed(str, ("a", "b")), default="a,b",
                    help="a (fuzz), b (key flood), or both")  # fmt: skip
    ap.add_argument("--vehicles", type=int, default=4, help="normal fleet vehicles")
    ap.add_argument("--fuzz-rate", type=float, default=4000.0)
    ap.add_argument("--fuzz-minutes", type=int, default=10)
    ap.add_argument("--flood-rate", type=float, default=5000.0)
    ap.add_argument("--flood-minutes", type=int, default=3)
    ap.add_argument("--limit", action="append", type=key_value, default=[], metavar="KEY=VALUE",
                    help="limits.KEY for detect")  # fmt: skip
    ap.add_argument("--models", type=Path, help="directory for the cached bench models")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--work", type=Path, help="keep detect's logs here (default: a temp dir)")
    args = ap.parse_args(argv)
    args.limits = dict(args.limit)
    results: dict = {}
    with tempfile.TemporaryDirectory(prefix="canwatch-adv-") as tmp:
        work = args.work or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        model_dir = bench_models(load_fleet(), args.models or work)
        for scenario in args.scenario:
            res = results[scenario] = run(args, scenario, model_dir, work)
            print(f"\n### scenario {scenario}\n\n{table(res)}\n", flush=True)
    print(machine_line())
    write_results(args.json, {"scenarios": results}, headline(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
