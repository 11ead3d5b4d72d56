"""End-to-end throughput: frames per CPU-second through Kafka, for canwatch and its peers.

One run starts the embedded (Tansu) broker, trains small platform models (or
reuses ``--models``), simulates a multi-brand fleet of exactly ``--frames``
frames, publishes it as binary records of ~470 frames (≤ 500 frames or 1 s of
a bus; plus a JSON copy of ``--json-frames`` of them), plain (``--compression
lz4``: compressed as canwatch's own producers do by default,
``kafka.compression``), and then, ``--repeat`` times, interleaved so that each
repeat sees the same machine load:

* **bare**: a kafka-python consumer with ``kafka_io.make_consumer``'s settings
  reading the whole binary topic and doing one ``np.frombuffer`` per record --
  the floor any Python consumer pays (child process, ``time.process_time``
  from the group's assignment of the partitions to the last record: net of
  imports, consumer creation and the group join, as detect's figure is);
* **bare + heap**: the same with the process settings ``canwatch detect``
  makes at start: glibc malloc (``detector.transport.heap``), kafka-python's socket
  reads in 1 MiB chunks (``detector.transport.kafka_recv``) and its records built
  from a compiled pass over each batch (``detector.transport.kafka_records``). Not a
  baseline of the issue: shown so that what those save in kafka-python is
  not mistaken for detect's own speed;
* **detect**: ``canwatch detect`` as a subprocess with a fresh consumer group
  over the same backlog, until its ``canwatch_frames_consumed_total`` equals the
  frames produced; CPU (user+sys, all threads) from ``/proc/<pid>/stat``,
  sampled every 20 ms, taken where the process last worked (the scrape that
  sees the backlog done comes up to a second later, and an idle detector still
  polls Kafka at ~0.1 CPU-s a second). *raw* is the whole process to there;
  *net* subtracts what the same process had used when it logged "assigned
  partitions" (imports, model load, kernels run once, group join: the end of
  its start-up; the sample before the line, so no work is subtracted).
  ``detect_frames_per_cpu_s`` is the **net** figure;
* **json**: the same through ``canwatch detect`` from the JSON-encoded topic
  (net, like detect; all the frames unless ``--json-frames`` says fewer);
* **river**: a plain consumer (measured like bare) that decodes each record
  and scores frames one at a time with ``river.anomaly.HalfSpaceTrees``
  (``score_one`` then ``learn_one`` on {id, dlc, b0..b7, dt since the id's
  previous frame}), the way a naive streaming peer would, on
  ``--river-frames`` frames.

Before the repeats, one unmeasured detect run over 50,000 frames fills the
numba kernels' on-disk cache, so no measured run pays for JIT compilation.
(Loading the cached kernels is part of start-up: detect runs them once on
synthetic frames as its models load, before it reports ready.)

CPU-seconds, not wall time: the machine is shared and the broker competes for
the same cores. Ratios are taken within each repeat, then the median.
``--profile OUT.prof`` adds one extra (unmeasured) detect run under cProfile
(main thread only: kafka-python's IO thread is not in it; the per-thread CPU
split of every detect run is in the JSON).

    .venv/bin/python bench/throughput.py [--frames 10000000] [--repeat 3] [--json out.json]
"""

from __future__ import annotations

import argparse
import bisect
import contextlib
import hashlib
import io
import json
import os
import pstats
import shlex
import signal
import subprocess
import sys
import tempfile
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
from detector.core.brands import Fleet, load_fleet  # noqa: E402
from detector.core.config import COMPRESSIONS, load_config  # noqa: E402
from detector.core.schema import FRAME_DTYPE  # noqa: E402
from detector.features.columns import FEATURE_NAMES  # noqa: E402
from detector.transport.broker import EmbeddedBroker, create_topics, free_port  # noqa: E402
from detector.transport.heap import keep_large_buffers  # noqa: E402
from detector.transport.kafka_io import crc32c_accelerated, make_consumer, make_producer  # noqa: E402
from detector.transport.kafka_records import parse_batches_compiled  # noqa: E402
from detector.transport.kafka_recv import read_large_chunks  # noqa: E402
from replay.publisher import publish  # noqa: E402
from replay.simulator import simulate_fleet, simulate_vehicle  # noqa: E402

CANWATCH = Path(sys.executable).parent / "canwatch"
if not CANWATCH.exists():
    CANWATCH = ROOT / ".venv" / "bin" / "canwatch"
TRAIN_VEHICLES = 6  # small, fast training set: models only need to be valid, not great
TRAIN_SECONDS = 60.0
RECORD_FRAMES = 500  # frames per Kafka record (cap)
RECORD_SPAN_S = 1.0  # ...or this much traffic: the fleet's ~2 kHz buses give ~470 a record
PARTITIONS = 4
#: How often the bench reads detect's /metrics to see the backlog drained. Each read
#: costs detect ~14 ms of CPU (~200 kB of exposition), counted in its figure:
#: 1 s keeps that near what a 1 s Prometheus scrape would cost.
SCRAPE_S = 1.0
TRACE_S = 0.02  # CPU samples of canwatch detect (from /proc: costs it nothing)
ASSIGNED = b"assigned partitions"  # the log line that ends detect's start-up
BUSY_CORES = 0.5  # CPU rate above which detect counts as busy (idle polling: ~0.1)
WARMUP_FRAMES = 50_000
HEADER = 16  # binary value header (docs/wire-format.md)


def say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# -- models and fleet ------------------------------------------------------------------


def ensure_models(fleet: Fleet, root: Path) -> Path:
    """One small model per platform under ``root``, keyed by the feature list (cached)."""
    from detector.core.config import load_config
    from detector.demo import ensure_models as train_missing

    key = hashlib.sha256(",".join(FEATURE_NAMES).encode()).hexdigest()[:10]
    model_dir = root / f"bench-models-{key}"
    train_missing(
        fleet, load_config(None, env={}), model_dir, say, TRAIN_VEHICLES, TRAIN_SECONDS
    )
    return model_dir


def first_n(streams: list, n: int) -> list:
    """The ``n`` earliest frames of the fleet (by event time), per vehicle."""
    ts = np.concatenate([f["ts"] for _, _, f in streams])
    keep = np.zeros(len(ts), dtype=bool)
    keep[np.argsort(ts, kind="stable")[:n]] = True
    out, at = [], 0
    for v, b, f in streams:
        sel = keep[at : at + len(f)]
        at += len(f)
        if sel.any():
            out.append((v, b, f[sel]))
    return out


def simulate(fleet: Fleet, n: int, vehicles: int, seed: int) -> tuple[list, float]:
    """Exactly ``n`` frames from ``vehicles`` vehicles (brands round-robin), ending in the past."""
    brands = sorted(fleet.brands)
    rate = {p: len(simulate_vehicle(p, 5.0, 1.7e9, 1)) / 5.0 for p in fleet.platforms}
    per_s = sum(rate[fleet.platform_of(brands[i % len(brands)])] for i in range(vehicles))
    duration = n / per_s * 1.03 + 1.0
    while True:
        start = float(int(time.time() - duration - 120))
        sims = simulate_fleet(brands, vehicles, duration, seed=seed, start_ts=start)
        streams = [(s.vehicle, s.brand, s.frames) for s in sims]
        if sum(len(f) for _, _, f in streams) >= n:
            return first_n(streams, n), duration
        duration *= 1.2


def produce(bootstrap: str, topic: str, streams: list, encoding: str, compression: str) -> dict:
    cfg = load_config(
        None, env={}, overrides={"kafka.bootstrap": bootstrap, "kafka.compression": compression}
    )
    producer = make_producer(cfg.kafka)
    t0 = time.perf_counter()
    try:
        s = publish(
            producer,
            topic,
            streams,
            speed=None,
            encoding=encoding,
            max_frames=RECORD_FRAMES,
            max_span_s=RECORD_SPAN_S,
        )
        # bytes on the wire / bytes before compression, over the producer's batches
        rate = producer.metrics()["producer-metrics"]["compression-rate-avg"]
    finally:
        producer.close()
    wall = time.perf_counter() - t0
    say(
        f"  produced {s.frames:,} frames in {s.records:,} {encoding} records "
        f"({s.bytes / 1e6:,.0f} MB, {compression}: {rate:.2f} of it on the wire) in {wall:.1f} s"
    )
    return {
        "records": s.records,
        "frames": s.frames,
        "bytes": s.bytes,
        "wall_s": round(wall, 2),
        "frames_per_record": round(s.frames / s.records, 1),
        "compression_rate": round(rate, 3),
    }


# -- child processes: bare and river consumers -------------------------------------------


def child(argv: list[str]) -> int:
    """``throughput.py child {bare,river} ...``: consume, print one JSON line."""
    ap = argparse.ArgumentParser(prog="throughput.py child")
    ap.add_argument("mode", choices=("bare", "river"))
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--frames", type=int, required=True, help="stop after this many frames")
    ap.add_argument("--max-poll-records", type=int)
    ap.add_argument(
        "--keep-large-buffers", action="store_true", help="detect's malloc settings (detector.transport.heap)"
    )
    ap.add_argument(
        "--large-reads",
        action="store_true",
        help="detect's socket reads and record parse (detector.transport.kafka_recv, kafka_records)",
    )
    args = ap.parse_args(argv)
    if args.keep_large_buffers and not keep_large_buffers():
        raise SystemExit("this C library has no mallopt")
    if args.large_reads and not (read_large_chunks() and parse_batches_compiled()):
        raise SystemExit("this kafka-python is not the one detector.kafka_* were checked on")
    over = {"kafka.bootstrap": args.bootstrap}
    if args.max_poll_records:
        over["kafka.max_poll_records"] = args.max_poll_records
    cfg = load_config(None, env={}, overrides=over)
    from kafka import ConsumerRebalanceListener

    score = river_scorer() if args.mode == "river" else None
    cpu0, wall0 = time.process_time(), time.perf_counter()
    consumer = make_consumer(cfg.kafka, [], args.group)
    assigned_cpu: list[float] = []  # CPU when the group assigned the partitions

    class OnAssign(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked) -> None:
            pass

        def on_partitions_assigned(self, assigned) -> None:
            if assigned and not assigned_cpu:
                assigned_cpu.append(time.process_time())

    consumer.subscribe([args.topic], listener=OnAssign())
    frames = records = 0
    first = None
    while frames < args.frames:
        polled = consumer.poll(timeout_ms=200, max_records=cfg.kafka.max_poll_records)
        for recs in polled.values():
            if first is None:
                first = time.perf_counter()
            for r in recs:
                arr = np.frombuffer(r.value, FRAME_DTYPE, offset=HEADER)
                records += 1
                if score is None:
                    frames += len(arr)
                else:
                    frames += score(r.key, arr[: args.frames - frames])
    cpu_end = time.process_time()
    end = time.perf_counter()
    consumer.close(autocommit=False)
    assigned = assigned_cpu[0] if assigned_cpu else cpu_end  # none: nothing was read
    startup = assigned - cpu0
    print(
        json.dumps(
            {
                "frames": frames,
                "records": records,
                # net of creating the consumer and joining the group, as detect's
                # figure is net of its start-up (which ends with the same join)
                "cpu_s": cpu_end - assigned,
                "cpu_raw_s": cpu_end - cpu0,
                "startup_cpu_s": startup,
                "wall_s": end - wall0,
                "busy_wall_s": end - (first or end),
            }
        )
    )
    return 0


def river_scorer():
    """score_one + learn_one per frame, like a peer built on river would do it."""
    from river import anomaly

    limits = {"id": (0.0, 2047.0), "dlc": (0.0, 8.0), "dt": (0.0, 1.0)}
    limits |= {f"b{i}": (0.0, 255.0) for i in range(8)}
    model = anomaly.HalfSpaceTrees(seed=7, limits=limits)
    last: dict[tuple[bytes, int], float] = {}
    scores = []

    def score(key: bytes, arr: np.ndarray) -> int:
        for ts, can_id, dlc, data in zip(
            arr["ts"].tolist(),
            arr["can_id"].tolist(),
            arr["dlc"].tolist(),
            arr["data"].tolist(),
            strict=True,
        ):
            prev = last.get((key, can_id), ts)
            last[(key, can_id)] = ts
            x = {"id": can_id & 0x1FFF_FFFF, "dlc": dlc, "dt": ts - prev}
            for i, b in enumerate(data):
                x[f"b{i}"] = b
            scores.append(model.score_one(x))
            model.learn_one(x)
        return len(arr)

    return score


def run_child(
    mode: str, bootstrap: str, topic: str, frames: int, mpr: int | None, *extra: str
) -> dict:
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "child",
        mode,
        "--bootstrap",
        bootstrap,
        "--topic",
        topic,
        "--group",
        f"bench-{mode}-{time.time_ns()}",
        "--frames",
        str(frames),
    ]
    if mpr:
        cmd += ["--max-poll-records", str(mpr)]
    cmd += extra
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if proc.returncode != 0:
        raise RuntimeError(f"{mode} consumer failed: {proc.stderr[-2000:]}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    if out["frames"] != frames:
        raise RuntimeError(f"{mode} consumer read {out['frames']} frames, expected {frames}")
    out["frames_per_cpu_s"] = frames / out["cpu_s"]
    return out


# -- canwatch detect as a subprocess --------------------------------------------------------


def scrape(url: str) -> dict[str, dict[tuple, float]]:
    from prometheus_client.parser import text_string_to_metric_families

    with urllib.request.urlopen(url, timeout=5) as resp:
        text = resp.read().decode()
    out: dict[str, dict[tuple, float]] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[tuple(sorted(s.labels.items()))] = s.value
    return out


def total(samples: dict, name: str) -> float:
    return sum(samples.get(name, {}).values())


def thread_cpu(pid: int) -> tuple[float, float]:
    """(main thread, all other threads) CPU seconds of a live process."""
    tick = os.sysconf("SC_CLK_TCK")
    main = other = 0.0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            f = (task / "stat").read_text().rsplit(")", 1)[1].split()
            cpu = (int(f[11]) + int(f[12])) / tick
            if int(task.name) == pid:
                main += cpu
            else:
                other += cpu
    return main, other


class DetectProc:
    """``canwatch detect`` on one topic with a fresh group; stopped with SIGTERM by PID."""

    def __init__(
        self,
        work: Path,
        bootstrap: str,
        topic: str,
        model_dir: Path,
        mpr: int | None,
        profile: Path | None = None,
        extra_toml: str = "",
    ) -> None:
        tag = f"{topic}-{time.time_ns()}"
        toml = work / f"detect-{tag}.toml"
        lines = [
            "[kafka]",
            f'telemetry_topic = "{topic}"',
            'incident_topic = "bench.incidents"',
            'dlq_topic = "bench.dlq"',
        ]
        if mpr:
            lines.append(f"max_poll_records = {mpr}")
        toml.write_text("\n".join(lines) + "\n" + extra_toml, encoding="utf-8")
        port = free_port()
        self.url = f"http://127.0.0.1:{port}/metrics"
        args = [
            "detect",
            "--config",
            str(toml),
            "--bootstrap",
            bootstrap,
            "--models",
            str(model_dir),
            "--group",
            f"bench-detect-{tag}",
            "--metrics",
            f"127.0.0.1:{port}",
            "--detector-id",
            "bench",
        ]
        cmd = [str(CANWATCH), *args]
        if profile is not None:
            cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), *cmd]
        self.cmd = cmd
        self.log = work / f"detect-{tag}.log"
        env = {k: v for k, v in os.environ.items() if not k.startswith("CANWATCH_")}
        self.t0 = time.perf_counter()
        with open(self.log, "wb") as logf:
            self.proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=logf, stderr=subprocess.STDOUT, env=env
            )
        self.samples: dict = {}
        self.trace: list[tuple[float, float]] = []  # (monotonic s, process CPU s)
        self.assigned_cpu: float | None = None  # CPU when the log said "assigned partitions"
        self._log_seen = 0

    def poll_metrics(self) -> dict:
        if self.proc.poll() is not None:
            tail = self.log.read_text(errors="replace")[-2000:]
            raise RuntimeError(f"canwatch detect exited with {self.proc.returncode}: {tail}")
        try:
            self.samples = scrape(self.url)
        except OSError:
            self.samples = {}  # not listening yet
        return self.samples

    def wait(self, done, timeout_s: float) -> dict:
        """Scrape /metrics every SCRAPE_S until ``done(samples)``; meanwhile sample the
        process CPU every TRACE_S and note it when the start-up log line appears.

        A scrape sees the moment it waits for up to SCRAPE_S late, and an idle
        detector still polls Kafka (~0.1 CPU-s a second): the trace lets start-up
        and work be cut where they end, not where a scrape noticed."""
        deadline = time.monotonic() + timeout_s
        next_scrape = 0.0
        while time.monotonic() < deadline:
            now = time.monotonic()
            before = self.trace[-1][1] if self.trace else 0.0
            with contextlib.suppress(OSError):  # exited: poll_metrics says so
                self.trace.append((now, proc_cpu_seconds(self.proc.pid)))
            if self.assigned_cpu is None and self._assigned():
                self.assigned_cpu = before  # the last sample before the line was written
            if now >= next_scrape:
                next_scrape = now + SCRAPE_S
                s = self.poll_metrics()
                if s and done(s):
                    return s
            time.sleep(TRACE_S)
        raise RuntimeError(f"canwatch detect: timed out after {timeout_s:g} s ({self.log})")

    def _assigned(self) -> bool:
        with open(self.log, "rb") as f:
            f.seek(self._log_seen)
            new = f.read()
        found = ASSIGNED in new
        self._log_seen += max(len(new) - len(ASSIGNED), 0)  # a line may be half written
        return found

    def busy_cpu(self) -> float:
        """Process CPU when it last worked at BUSY_CORES or more (over ~0.1 s): the end
        of the backlog, without the idle polling until a scrape noticed it."""
        t = [x for x, _ in self.trace]
        cpu = [c for _, c in self.trace]
        for i in range(len(t) - 1, 0, -1):
            j = max(bisect.bisect_right(t, t[i] - 0.1) - 1, 0)
            if t[i] > t[j] and (cpu[i] - cpu[j]) / (t[i] - t[j]) >= BUSY_CORES:
                return cpu[i]
        return cpu[-1] if cpu else 0.0

    def stop(self) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)


def detect_run(
    work: Path,
    bootstrap: str,
    topic: str,
    frames: int,
    model_dir: Path,
    mpr: int | None,
    broker_pid: int,
    profile: Path | None = None,
) -> dict:
    b0 = proc_cpu_seconds(broker_pid)
    d = DetectProc(work, bootstrap, topic, model_dir, mpr, profile)
    started: list[float] = []

    def drained(s: dict) -> bool:
        n = total(s, "canwatch_frames_consumed_total")
        if n > 0 and not started:
            started.append(time.perf_counter())
        return n >= frames

    try:
        s = d.wait(drained, max(300.0, frames / 2_000))
        seen_cpu = proc_cpu_seconds(d.proc.pid)
        main, other = thread_cpu(d.proc.pid)
        end = time.perf_counter()
    finally:
        d.stop()
    consumed = total(s, "canwatch_frames_consumed_total")
    if consumed != frames:
        raise RuntimeError(f"detect consumed {consumed:g} frames, expected {frames}")
    stages = {
        dict(k)["stage"]: round(v, 3)
        for k, v in s.get("canwatch_stage_duration_seconds_sum", {}).items()
    }
    polls = s.get("canwatch_stage_duration_seconds_count", {})
    return {
        "cpu_raw_s": d.busy_cpu(),  # to the end of the work (see DetectProc.busy_cpu)
        "startup_cpu_s": d.assigned_cpu,  # to its "assigned partitions"
        "cpu_when_seen_s": seen_cpu,  # ... and when a scrape saw it done
        "main_thread_cpu_s": main,
        "other_threads_cpu_s": other,
        "wall_s": end - d.t0,
        "busy_wall_s": end - started[0] if started else None,  # first frames seen -> drained
        "records": total(s, "canwatch_records_consumed_total"),
        "windows": total(s, "canwatch_windows_scored_total"),
        "incidents_opened": total(s, "canwatch_incidents_opened_total"),
        "dead_letters": total(s, "canwatch_dead_letters_total"),
        "stage_seconds": stages,  # wall time per stage, from the detector's histograms
        "polls_with_records": max(polls.values(), default=0),
        "broker_cpu_s": proc_cpu_seconds(broker_pid) - b0,
        "exit_code": d.proc.returncode,
        "command": shlex.join(d.cmd),
    }


def profile_summary(path: Path, top: int = 25) -> dict[str, str]:
    out = {}
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        stats = pstats.Stats(str(path), stream=buf)
        stats.strip_dirs().sort_stats(key).print_stats(top)
        out[key] = buf.getvalue()
    return out


# -- the benchmark ----------------------------------------------------------------------------


def bench(args: argparse.Namespace, work: Path) -> dict:
    t_start = time.perf_counter()
    n = args.frames
    json_n = n if args.json_frames is None else min(n, args.json_frames)
    river_n = min(n, args.river_frames)
    fleet = load_fleet()
    models_root = Path(args.models) if args.models else work
    say(f"models under {models_root}")
    t0 = time.perf_counter()
    model_dir = ensure_models(fleet, models_root)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    streams, duration = simulate(fleet, n, args.vehicles, args.seed)
    say(
        f"fleet: {len(streams)} vehicles, {len(fleet.brands)} brands, {n:,} frames "
        f"(~{duration:.0f} s of traffic) simulated in {time.perf_counter() - t0:.1f} s"
    )
    result: dict = {
        "frames": n,
        "json_frames": json_n,
        "river_frames": river_n,
        "repeat": args.repeat,
        "vehicles": len(streams),
        "brands": len(fleet.brands),
        "platforms": len(fleet.platforms),
        "partitions": args.partitions,
        "max_poll_records": args.max_poll_records
        or load_config(None, env={}).kafka.max_poll_records,
        "compression": args.compression,
        "crc32c_accelerated": crc32c_accelerated(),
        "machine": machine(),
        "code": str(ROOT),  # the checkout measured (detector/ is imported from here)
        "command": shlex.join([sys.executable, *sys.argv]),
        "train_s": round(train_s, 1),
    }
    broker = EmbeddedBroker(log_path=work / "tansu.log")
    broker.start()
    try:
        bs = broker.bootstrap
        say(f"broker {bs} pid {broker.pid}")
        topics = {"bench.bin": "binary", "bench.json": "json"}
        create_topics(
            bs,
            dict.fromkeys([*topics, "bench.warm"], args.partitions)
            | {"bench.incidents": 1, "bench.dlq": 1},
        )
        codec = args.compression
        result["produce"] = {"binary": produce(bs, "bench.bin", streams, "binary", codec)}
        warm_n = min(n, WARMUP_FRAMES)
        produce(bs, "bench.warm", first_n(streams, warm_n), "binary", codec)
        if json_n:
            json_streams = streams if json_n == n else first_n(streams, json_n)
            result["produce"]["json"] = produce(bs, "bench.json", json_streams, "json", codec)
        del streams
        # First calls compile the numba kernels into their on-disk cache; do that
        # here, unmeasured, so no measured run pays for compilation.
        warm = detect_run(
            work, bs, "bench.warm", warm_n, model_dir, args.max_poll_records, broker.pid
        )
        result["warmup"] = {"frames": warm_n, "cpu_raw_s": warm["cpu_raw_s"]}
        say(f"  warm-up detect run: {warm_n:,} frames, {warm['cpu_raw_s']:.2f} s CPU")
        runs: dict[str, list] = {
            "bare": [], "bare_heap": [], "startup": [], "detect": [], "json": [], "river": []
        }  # fmt: skip
        mpr = args.max_poll_records
        for r in range(args.repeat):
            say(f"repeat {r + 1}/{args.repeat}")
            bare = run_child("bare", bs, "bench.bin", n, mpr)
            runs["bare"].append(bare)
            say(f"  bare   {bare['frames_per_cpu_s']:>12,.0f} frames/CPU-s ({bare['cpu_s']:.2f} s)")
            heap = run_child(
                "bare", bs, "bench.bin", n, mpr, "--keep-large-buffers", "--large-reads"
            )
            runs["bare_heap"].append(heap)
            say(f"  bare+h {heap['frames_per_cpu_s']:>12,.0f} frames/CPU-s ({heap['cpu_s']:.2f} s)")
            for name, topic, frames in (("detect", "bench.bin", n), ("json", "bench.json", json_n)):
                if not frames:
                    continue
                d = detect_run(work, bs, topic, frames, model_dir, mpr, broker.pid)
                if d["startup_cpu_s"] is None:
                    raise RuntimeError(f"canwatch detect never logged {ASSIGNED!r}")
                if name == "detect":
                    runs["startup"].append(d["startup_cpu_s"])
                d["cpu_net_s"] = d["cpu_raw_s"] - d["startup_cpu_s"]
                d["frames_per_cpu_s_raw"] = frames / d["cpu_raw_s"]
                d["frames_per_cpu_s_net"] = frames / d["cpu_net_s"]
                runs[name].append(d)
                say(
                    f"  {name:6} {d['frames_per_cpu_s_net']:>12,.0f} frames/CPU-s net "
                    f"({d['cpu_net_s']:.2f} s net, {d['cpu_raw_s']:.2f} s raw, "
                    f"main thread {d['main_thread_cpu_s']:.2f} s, wall {d['busy_wall_s'] or 0:.1f} s)"
                )
            river = run_child("river", bs, "bench.bin", river_n, mpr)
            runs["river"].append(river)
            say(
                f"  river  {river['frames_per_cpu_s']:>12,.0f} frames/CPU-s ({river['cpu_s']:.2f} s)"
            )
        if args.profile:
            say(f"profiling one detect run under cProfile -> {args.profile}")
            p = detect_run(work, bs, "bench.bin", n, model_dir, mpr, broker.pid, args.profile)
            result["profile"] = {
                "path": str(args.profile),
                "run": p,
                "top": profile_summary(args.profile),
            }
    finally:
        broker.stop()
    result.update(summarize(runs, n, json_n))
    result["runs"] = runs
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


def summarize(runs: dict, n: int, json_n: int) -> dict:
    def fps(name: str, key: str) -> list[float]:
        return [x[key] for x in runs[name]]

    out: dict = {
        "bare": summary(fps("bare", "frames_per_cpu_s")),
        "bare_heap": summary(fps("bare_heap", "frames_per_cpu_s")),
        "detect_raw": summary(fps("detect", "frames_per_cpu_s_raw")),
        "detect_net": summary(fps("detect", "frames_per_cpu_s_net")),
        "detect_startup_cpu_s": summary(runs["startup"]),
        "river": summary(fps("river", "frames_per_cpu_s")),
    }
    out["detect"] = out["detect_net"]

    def per_repeat(num: str, den: str) -> list[float]:
        """num's frames/CPU-s over den's, repeat by repeat (detect's net of start-up)."""
        key = {"detect": "frames_per_cpu_s_net", "json": "frames_per_cpu_s_net"}
        return [
            a[key.get(num, "frames_per_cpu_s")] / b[key.get(den, "frames_per_cpu_s")]
            for a, b in zip(runs[num], runs[den], strict=True)
        ]

    ratios = {
        "detect_bare": per_repeat("detect", "bare"),
        "detect_river": per_repeat("detect", "river"),
        "bare_heap_bare": per_repeat("bare_heap", "bare"),
        "detect_bare_heap": per_repeat("detect", "bare_heap"),
    }
    if runs["json"]:
        out["json_raw"] = summary(fps("json", "frames_per_cpu_s_raw"))
        out["json_net"] = summary(fps("json", "frames_per_cpu_s_net"))
        out["json"] = out["json_net"]
        ratios["detect_json"] = per_repeat("detect", "json")
    out["ratios"] = {k: summary(v) for k, v in ratios.items()}
    out["bare_frames_per_cpu_s"] = out["bare"]["median"]
    out["detect_frames_per_cpu_s"] = out["detect_net"]["median"]  # net of startup
    out["detect_frames_per_cpu_s_raw"] = out["detect_raw"]["median"]
    out["json_frames_per_cpu_s"] = out["json_net"]["median"] if runs["json"] else None
    out["river_frames_per_cpu_s"] = out["river"]["median"]
    out["bare_heap_frames_per_cpu_s"] = out["bare_heap"]["median"]
    out["ratio_detect_bare_heap"] = out["ratios"]["detect_bare_heap"]["median"]
    out["ratio_detect_bare"] = out["ratios"]["detect_bare"]["median"]
    out["ratio_detect_river"] = out["ratios"]["detect_river"]["median"]
    out["notes"] = (
        "frames per CPU-second (user+sys, all threads); detect/json = canwatch detect to the "
        "end of its work, net of its start-up CPU (imports, model load, group join: until it "
        "logs 'assigned partitions'), raw also given; "
        f"json on {json_n:,} of {n:,} frames; river on {runs['river'][0]['frames']:,} frames; "
        "ratios are per repeat, then the median"
    )
    return out


def table(res: dict) -> str:
    n = res["frames"]
    rows = [
        ["bare kafka-python + np.frombuffer", f"{n:,}", fmt_range(res["bare"]), "1.00"],
        [
            "... with detect's kafka-python and malloc settings",
            f"{n:,}",
            fmt_range(res["bare_heap"]),
            fmt_range(res["ratios"]["bare_heap_bare"], 2),
        ],
        [
            "canwatch detect, binary (net)",
            f"{n:,}",
            fmt_range(res["detect_net"]),
            fmt_range(res["ratios"]["detect_bare"], 2),
        ],
        [
            "canwatch detect, binary (raw)",
            f"{n:,}",
            fmt_range(res["detect_raw"]),
            f"{res['detect_raw']['median'] / res['bare']['median']:.2f}",
        ],
    ]
    if res.get("json"):
        rows += [
            [
                "canwatch detect, JSON (net)",
                f"{res['json_frames']:,}",
                fmt_range(res["json_net"]),
                f"{res['json_net']['median'] / res['bare']['median']:.2f}",
            ],
            [
                "canwatch detect, JSON (raw)",
                f"{res['json_frames']:,}",
                fmt_range(res["json_raw"]),
                f"{res['json_raw']['median'] / res['bare']['median']:.2f}",
            ],
        ]
    rows.append(
        [
            "river HalfSpaceTrees, one frame at a time",
            f"{res['river_frames']:,}",
            fmt_range(res["river"]),
            f"{res['river']['median'] / res['bare']['median']:.4f}",
        ]
    )
    text = markdown_table(
        ["consumer", "frames", "frames / CPU-s: median (min–max)", "vs bare"], rows
    )
    text += (
        f"\n\ndetect / river: {fmt_range(res['ratios']['detect_river'], 1)}x; "
        f"detect / bare with detect's kafka-python and malloc settings: "
        f"{fmt_range(res['ratios']['detect_bare_heap'], 2)}; "
        f"detect start-up CPU {fmt_range(res['detect_startup_cpu_s'], 2)} s; "
        f"{res['repeat']} repeats, {res['vehicles']} vehicles, {res['partitions']} partitions, "
        f"max_poll_records {res['max_poll_records']}, "
        f"{'plain' if res['compression'] == 'none' else res['compression']} records; "
        f"{res['machine']}"
    )
    return text


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument(
        "--json-frames",
        type=int,
        help="frames in the JSON topic: the first M of the fleet (default all; 0 = no JSON run)",
    )
    ap.add_argument(
        "--river-frames", type=int, default=200_000, help="frames the river baseline scores"
    )
    ap.add_argument("--vehicles", type=int, default=56, help="fleet size (default 56)")
    ap.add_argument("--partitions", type=int, default=PARTITIONS)
    ap.add_argument(
        "--max-poll-records", type=int, help="override kafka.max_poll_records (default: config)"
    )
    ap.add_argument("--models", metavar="DIR", help="cache models here (default: a temp dir)")
    ap.add_argument("--profile", type=Path, metavar="OUT.prof", help="cProfile one detect run")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument(
        "--compression",
        choices=COMPRESSIONS,
        default="none",
        help="codec the topics are produced with (default none: plain records, on which the "
        "targets are set; canwatch's own producers use kafka.compression, lz4)",
    )
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = ap.parse_args(argv)
    if args.frames < 1 or args.repeat < 1:
        ap.error("--frames and --repeat must be >= 1")
    with tempfile.TemporaryDirectory(prefix="canwatch-bench-") as tmp:
        res = bench(args, Path(tmp))
    write_json(args.json, res)
    print(table(res))
    say(f"total wall time {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
