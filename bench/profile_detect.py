"""Where ``canwatch detect``'s CPU goes at full speed: a breakdown by part.

Runs the detector in-process (``Detector.step``, as ``canwatch detect`` does,
with its malloc settings, large socket reads, compiled record batch parse and
frozen start-up heap) over a backlog on the embedded broker: the fleet, record
cut and models of ``bench/throughput.py``.
Each run gets a fresh consumer group; its first batch is left out (it pays
for the group join), the rest to the end of the backlog is measured. CPU
comes from per-thread counters (kafka-python's IO thread is a thread of its
own) and from thread-CPU timers wrapped around the pipeline's functions, so
the parts add up to the process's CPU; the median run is reported.

cProfile (``bench/throughput.py --profile``) sees only the main thread and
inflates every Python call; these timers cost ~1 µs a call, a few hundred
calls a batch.

    .venv/bin/python bench/profile_detect.py [--frames 5000000] [--repeat 3] [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/profile_detect.py`)
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import positive_int, say
from bench.common.procs import thread_cpu
from bench.common.report import machine_line, markdown_table, write_results
from bench.common.rig import DLQ, INCIDENTS, bench_models, broker, produce, simulate
from detector.core.brands import load_fleet
from detector.core.config import COMPRESSIONS, load_config
from detector.features import windowing
from detector.model import forest_kernel, pipeline
from detector.service.detector import Detector
from detector.service.metrics import DetectorMetrics
from detector.transport import wire
from detector.transport.heap import keep_large_buffers
from detector.transport.kafka_records import parse_batches_compiled
from detector.transport.kafka_recv import read_large_chunks

TOPIC, PARTITIONS = "tel", 4
#: (owner, attribute, timer name): a timer holds the thread CPU spent inside. A function
#: is timed where its caller looks it up (the module that imported it).
TIMED = [
    ("kafka.KafkaConsumer", "poll", "poll"),
    (Detector, "_decode", "decode"),
    (wire, "frame_faults_each", "checks"),
    (pipeline.Scorer, "push", "push"),
    (pipeline, "concat_frames", "concat"),
    (windowing.WindowState, "push_batch", "window"),
    (windowing, "fold", "fold"),
    (windowing, "window_pass", "window_pass"),
    (windowing, "stream_groups", "stream_groups"),
    (windowing.WindowState, "_rows", "rows"),
    (pipeline.Scorer, "_scored", "scored"),
    (forest_kernel.CompiledForest, "raw_scores", "forest"),
    (Detector, "_incidents", "incidents"),
    (Detector, "_settle", "settle"),
]


def install_timers(timers: dict[str, float]) -> None:
    import kafka

    for owner, attr, name in TIMED:
        obj = kafka.KafkaConsumer if owner == "kafka.KafkaConsumer" else owner
        inner = getattr(obj, attr)

        def timed(*a, _inner=inner, _name=name, **k):
            t0 = time.thread_time()
            try:
                return _inner(*a, **k)
            finally:
                timers[_name] += time.thread_time() - t0

        setattr(obj, attr, timed)


def parts(cpu: float, other_threads: float, t: dict[str, float]) -> dict[str, float]:
    """The process's CPU cut into parts that do not overlap."""
    out = {
        "kafka-python: its IO thread (fetch responses)": other_threads,
        "kafka-python: poll() (records built by detector.transport.kafka_records)": t["poll"],
        "fold kernel (frames into window sums)": t["fold"],
        "forest walk": t["forest"],
        "decode: copies, envelopes, per-record bookkeeping": t["decode"] - t["checks"],
        "wire checks (compiled)": t["checks"],
        "window pass + counting sort by stream": t["window_pass"] + t["stream_groups"],
        "feature rows": t["rows"],
        "other windowing glue": t["window"] - t["fold"] - t["window_pass"] - t["stream_groups"] - t["rows"],
        "per-platform concatenation": t["concat"],
        "scoring glue (envelope, slots)": t["scored"] - t["forest"],
        "scorer routing": t["push"] - t["window"] - t["scored"] - t["concat"],
        "incidents, produce, commit": t["incidents"] + t["settle"],
    }
    out["rest of the main thread (gathering, metrics)"] = cpu - sum(out.values())
    return out


def run_once(cfg, fleet, frames: int, timers: dict[str, float]) -> dict:
    metrics = DetectorMetrics()
    det = Detector(cfg, fleet, metrics, "profile", freeze_heap=True)
    det.start()

    def consumed() -> float:
        return sum(c._value.get() for c in metrics.frames_consumed._metrics.values())

    try:
        while consumed() == 0:  # the group join and the first batch: not measured
            det.step()
        timers.clear()
        _, other0 = thread_cpu(os.getpid())  # the detector runs in the main thread
        cpu0, done0 = time.process_time(), consumed()
        while consumed() < frames:
            det.step()
        cpu = time.process_time() - cpu0
        other = thread_cpu(os.getpid())[1] - other0
        n = consumed() - done0
    finally:
        det.close()
    if n < frames / 2:  # the unmeasured first poll took most of the backlog
        raise SystemExit(f"profile_detect: measured {n:,.0f} of {frames:,} frames (the first "
                         f"poll, not measured, took the rest): give --frames more")  # fmt: skip
    return {"frames": n, "cpu_s": cpu, "frames_per_cpu_s": n / cpu, "parts": parts(cpu, other, timers)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=positive_int, default=5_000_000)
    ap.add_argument("--repeat", type=positive_int, default=3)
    ap.add_argument("--vehicles", type=positive_int, default=56)
    ap.add_argument("--compression", choices=COMPRESSIONS, default="none")
    ap.add_argument("--models", type=Path, metavar="DIR", help="cache models here (default: a temp dir)")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--json", type=Path, metavar="OUT")
    args = ap.parse_args(argv)
    if not keep_large_buffers():
        say("note: no glibc mallopt here; measuring with the C library's defaults")
    if not (read_large_chunks() and parse_batches_compiled()):
        say("note: kafka-python's own socket reads or record parse (see detector.transport.kafka_*)")
    timers: dict[str, float] = defaultdict(float)
    install_timers(timers)
    fleet = load_fleet()
    runs = []
    with tempfile.TemporaryDirectory(prefix="canwatch-profile-") as tmp:
        model_dir = bench_models(fleet, args.models or Path(tmp))
        streams, _ = simulate(fleet, args.frames, args.vehicles, args.seed)
        with broker(Path(tmp), {TOPIC: PARTITIONS}) as b:
            produce(b.bootstrap, TOPIC, streams, "binary", args.compression)
            del streams
            for r in range(args.repeat):
                over = {"kafka.bootstrap": b.bootstrap, "kafka.group_id": f"profile-{r}-{time.time_ns()}",
                        "kafka.telemetry_topic": TOPIC, "kafka.incident_topic": INCIDENTS,
                        "kafka.dlq_topic": DLQ, "models.dir": str(model_dir)}  # fmt: skip
                run = run_once(load_config(None, env={}, overrides=over), fleet, args.frames, timers)
                say(f"  run {r + 1}: {run['frames']:,.0f} frames, {run['cpu_s']:.3f} CPU-s, "
                    f"{run['frames_per_cpu_s']:,.0f} frames/CPU-s")  # fmt: skip
                runs.append(run)
    median = sorted(runs, key=lambda x: x["cpu_s"])[len(runs) // 2]
    rows = [[name, f"{v:.3f}", f"{100 * v / median['cpu_s']:.0f} %"]
            for name, v in sorted(median["parts"].items(), key=lambda kv: -kv[1])]  # fmt: skip
    print(markdown_table(["part", "CPU-s", "share"], rows))
    codec = "plain" if args.compression == "none" else args.compression
    print(
        f"\nmedian of {len(runs)} runs: {median['frames']:,.0f} frames in "
        f"{median['cpu_s']:.3f} CPU-s, {median['frames_per_cpu_s']:,.0f} frames/CPU-s; "
        f"{codec} records; {machine_line()}"
    )
    top = sorted(median["parts"].items(), key=lambda kv: -kv[1])[:3]
    write_results(args.json, {"compression": args.compression, "median": median, "runs": runs}, [
        (f"in-process detect frames/CPU-s, {codec} records (median run)", f"{median['frames_per_cpu_s']:,.0f}"),
        *((f"CPU share: {name}", f"{100 * v / median['cpu_s']:.0f} %") for name, v in top),
    ])  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
