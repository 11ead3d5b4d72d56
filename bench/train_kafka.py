"""``canwatch train --from-kafka``: throughput and peak RSS against the span's length.

For each span (default 1, 4 and 16 vehicle-hours: ``--vehicles`` vehicles for
vehicle-hours / vehicles hours each), a fresh embedded broker gets the fleet's
traffic on a telemetry topic of ``--partitions`` partitions, produced by the
replay publisher (``replay.publisher.publish``, canwatch's producer settings)
a ``CHUNK_S`` slice of every vehicle at a time, so the benchmark itself never
holds the span. Traffic is the cusw simulator's (~2,270 frames/s a vehicle);
to keep simulation out of the cost, each vehicle repeats one of a few
simulated ``CHUNK_S`` templates, shifted in time. Event times end in the past
and records are stamped when produced, so ``--since`` (before the first
frame) and ``--until`` (after the last record) take in the whole span.

Then ``canwatch train --from-kafka`` of this checkout runs as a child process,
with its default ``--max-frames`` and with 250,000 (the reading side alone,
nearly): wall time, CPU seconds and peak RSS (``wait4``'s ``ru_maxrss`` of
that child alone), and from its manifest the frames read and
used and its own reading time. Throughput = frames read / wall time of the
whole command (reading, sampling and fitting), and / its reading time.

RSS is meant to stay flat as the span grows: the frame budget bounds what is
held, and the fit is over the budget's frames whatever the span.

    .venv/bin/python bench/train_kafka.py [--vehicle-hours 1,4,16] [--vehicles 8]
        [--max-frames default,250000] [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/train_kafka.py`)
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, listed, positive_float, positive_int, say
from bench.common.report import machine_line, markdown_table, write_results
from bench.common.rig import RECORD_FRAMES, RECORD_SPAN_S, broker, producer
from replay.publisher import publish
from replay.simulator import simulate_vehicle

TOPIC, INCIDENT_TOPIC = "bench.telemetry", "bench.incidents"
CHUNK_S = 150.0  # traffic is produced this much of every vehicle at a time
TEMPLATES = 4  # distinct simulated vehicles the fleet's traffic repeats
PLATFORM, BRAND = "cusw", "jeep"


def templates(n: int) -> list[np.ndarray]:
    """``n`` simulated CHUNK_S slices of a cusw bus, starting at ts 0."""
    return [simulate_vehicle(PLATFORM, CHUNK_S, 0.0, seed=500 + i) for i in range(n)]


def produce_span(bootstrap: str, vehicles: int, hours: float, tpl: list[np.ndarray]) -> dict:
    """``vehicles`` vehicles x ``hours`` of traffic, ending ~now, a chunk at a time."""
    chunks = max(1, round(hours * 3600 / CHUNK_S))
    start = float(int(time.time() - chunks * CHUNK_S - 60))
    prod = producer(bootstrap)
    frames = records = 0
    t0 = time.perf_counter()
    try:
        for k in range(chunks):
            streams = []
            for v in range(vehicles):
                f = tpl[v % len(tpl)].copy()
                f["ts"] += start + k * CHUNK_S + v * 0.003  # vehicles' clocks a little apart
                streams.append((f"veh-{BRAND}-{v:04d}", BRAND, f))
            s = publish(prod, TOPIC, streams, speed=None, encoding="binary",
                        max_frames=RECORD_FRAMES, max_span_s=RECORD_SPAN_S)  # fmt: skip
            frames += s.frames
            records += s.records
    finally:
        prod.close()
    wall = time.perf_counter() - t0
    say(f"  produced {frames:,} frames in {records:,} records in {wall:.1f} s")
    return {"frames": frames, "records": records, "produce_s": round(wall, 1), "start": start,
            "vehicle_hours": vehicles * chunks * CHUNK_S / 3600}  # fmt: skip


def train(bootstrap: str, work: Path, since: float, until: float, max_frames: int | None) -> dict:
    """``canwatch train --from-kafka`` of this checkout: wall, CPU, peak RSS, its manifest."""
    out = work / "models"
    toml = work / "bench.toml"
    toml.write_text(f'[kafka]\ntelemetry_topic = "{TOPIC}"\nincident_topic = "{INCIDENT_TOPIC}"\n')
    cmd = [sys.executable, "-c", "import sys; from detector.cli import main; sys.exit(main())",
           "train", "--from-kafka", "--brand", BRAND, "--config", str(toml),
           "--bootstrap", bootstrap, "--since", str(since), "--until", str(until),
           "--out", str(out)]  # fmt: skip
    if max_frames:
        cmd += ["--max-frames", str(max_frames)]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CANWATCH_")}
    env["PYTHONPATH"] = str(ROOT)
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - t0
    proc.returncode = os.waitstatus_to_exitcode(status)
    stdout, stderr = proc.stdout.read().decode(), proc.stderr.read().decode()
    if proc.returncode:
        raise RuntimeError(f"canwatch train --from-kafka failed: {stderr.strip()[-2000:]}")
    say("  " + stdout.strip().replace("\n", "\n  "))
    (manifest,) = [p for p in out.glob("*.json") if not p.name.startswith(".")]  # a version
    src = json.loads(manifest.read_text())["training"]["source"]
    return {
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
        "read_s": src["read_s"],
        "frames_read": src["frames_read"],
        "frames_used": src["frames_used"],
        "sampled": src["sampled"],
        "max_frames": src["max_frames"],
        "vehicles": len(src["vehicles"]),
    }


def one_span(
    vh: float, vehicles: int, tpl: list, partitions: int, budgets: list[int | None]
) -> list[dict]:
    """Produce the span once, then train from it with each of ``budgets``."""
    out = []
    with tempfile.TemporaryDirectory(prefix="bench-train-kafka-") as tmp:
        work = Path(tmp)
        with broker(work, {TOPIC: partitions, INCIDENT_TOPIC: 1}) as b:
            say(f"{vh:g} vehicle-hours: {vehicles} vehicles x {vh / vehicles * 60:.1f} min")
            made = produce_span(b.bootstrap, vehicles, vh / vehicles, tpl)
            for budget in budgets:
                run = work / f"budget-{budget}"
                run.mkdir()
                got = train(b.bootstrap, run, made["start"] - 1, time.time() + 1, budget)
                got.update(made)
                got["frames_per_s"] = round(got["frames_read"] / got["wall_s"])
                got["read_frames_per_s"] = round(got["frames_read"] / max(got["read_s"], 1e-9))
                got["frames_per_cpu_s"] = round(got["frames_read"] / got["cpu_s"])
                say(f"  train --max-frames {got['max_frames']:,}: {got['wall_s']} s wall "
                    f"({got['read_s']} s reading), {got['cpu_s']} CPU-s, "
                    f"peak RSS {got['peak_rss_mib']} MiB")  # fmt: skip
                out.append(got)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--vehicle-hours", type=listed(positive_float), default="1,4,16",
                    help="spans, comma-separated")  # fmt: skip
    ap.add_argument("--vehicles", type=positive_int, default=8)
    ap.add_argument("--partitions", type=int, default=4)
    ap.add_argument(
        "--max-frames",
        default="default,250000",
        help="train's --max-frames, comma-separated, each a run on the same span "
        "('default': its own); the small one shows the reading side's memory alone",
    )
    ap.add_argument("--json", type=Path, help="write the results here")
    args = ap.parse_args()
    tpl = templates(TEMPLATES)
    budgets = [None if b == "default" else int(b) for b in args.max_frames.split(",")]
    runs = [
        run
        for vh in args.vehicle_hours
        for run in one_span(vh, args.vehicles, tpl, args.partitions, budgets)
    ]
    rows = [
        (f"{r['vehicle_hours']:g}", f"{r['max_frames']:,}", f"{r['frames_read']:,}",
         f"{r['frames_used']:,}",
         f"{r['produce_s']:g}", f"{r['wall_s']:g}", f"{r['read_s']:g}",
         f"{r['frames_per_s']:,}", f"{r['read_frames_per_s']:,}", f"{r['peak_rss_mib']:,.0f}")
        for r in runs
    ]  # fmt: skip
    print(machine_line())
    print(markdown_table(
        ["vehicle-hours", "--max-frames", "frames read", "frames used", "produce s", "train s", "of it reading s",
         "frames/s (whole)", "frames/s (reading)", "peak RSS MiB"], rows))  # fmt: skip
    headline = [
        (f"train --from-kafka {r['vehicle_hours']:g} vh, --max-frames {r['max_frames']:,}",
         f"{r['frames_per_s']:,} frames/s, "
         f"{r['peak_rss_mib']:,.0f} MiB peak") for r in runs
    ]  # fmt: skip
    write_results(args.json, {"runs": runs, "vehicles": args.vehicles}, headline)


if __name__ == "__main__":
    main()
