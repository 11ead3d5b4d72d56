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
* **shadow** (``--shadow``): detect again, with every platform's model
  deployed a second time as its shadow (``canwatch models deploy --shadow``):
  each window scored by both, the shadow's in its own window state;
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
``--profile OUT.prof`` adds one extra (unmeasured) detect run under cProfile (with
``--shadow``, one with the shadows too, into OUT.shadow.prof)
(main thread only: kafka-python's IO thread is not in it; the per-thread CPU
split of every detect run is in the JSON).

    .venv/bin/python bench/throughput.py [--frames 10000000] [--repeat 3] [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/throughput.py`)
from __future__ import annotations

import argparse
import io
import json
import pstats
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, say
from bench.common.detect import ASSIGNED, DetectProc, total
from bench.common.procs import cpu_seconds, run_json, thread_cpu
from bench.common.report import fmt_range, machine_line, markdown_table, summary, write_results
from bench.common.rig import bench_models, broker, fd_brands, first_n, produce, simulate
from detector.cli import main as cli_main
from detector.core.brands import load_fleet
from detector.core.config import COMPRESSIONS, load_config
from detector.core.schema import FD_FRAME_DTYPE, FRAME_DTYPE
from detector.model.store import list_manifests
from detector.transport.heap import keep_large_buffers
from detector.transport.kafka_io import crc32c_accelerated, make_consumer
from detector.transport.kafka_records import parse_batches_compiled
from detector.transport.kafka_recv import read_large_chunks

PARTITIONS = 4
WARMUP_FRAMES = 50_000
MIN_NET_CPU_S = 0.2  # CPU a measured detect run must take past its start-up
HEADER = 16  # binary value header (docs/wire-format.md)
DTYPES = {1: FRAME_DTYPE, 2: FD_FRAME_DTYPE}  # by the header's version (schema 2: CAN FD)


# -- child processes: bare and river consumers -------------------------------------------


def child(argv: list[str]) -> int:
    """``throughput.py child {bare,river} ...``: consume, print one JSON line."""
    ap = argparse.ArgumentParser(prog="throughput.py child")
    ap.add_argument("mode", choices=("bare", "river"))
    for flag in ("--bootstrap", "--topic", "--group"):
        ap.add_argument(flag, required=True)
    ap.add_argument("--frames", type=int, required=True, help="stop after this many frames")
    ap.add_argument("--max-poll-records", type=int)
    ap.add_argument("--detect-settings", action="store_true", help="detect's malloc settings, "
                    "socket reads and record parse (detector.transport.heap, kafka_recv, kafka_records)")  # fmt: skip
    args = ap.parse_args(argv)
    if args.detect_settings and not keep_large_buffers():
        raise SystemExit("this C library has no mallopt")
    if args.detect_settings and not (read_large_chunks() and parse_batches_compiled()):
        raise SystemExit("this kafka-python is not the one detector.transport.kafka_* were checked on")
    over = {"kafka.bootstrap": args.bootstrap, "kafka.max_poll_records": args.max_poll_records}
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
            first = first or time.perf_counter()
            for r in recs:
                arr = np.frombuffer(r.value, DTYPES[r.value[4]], offset=HEADER)
                records += 1
                frames += len(arr) if score is None else score(r.key, arr[: args.frames - frames])
    cpu_end, end = time.process_time(), time.perf_counter()
    consumer.close(autocommit=False)
    assigned = assigned_cpu[0] if assigned_cpu else cpu_end  # none: nothing was read
    print(json.dumps({
        "frames": frames,
        "records": records,
        # net of creating the consumer and joining the group, as detect's
        # figure is net of its start-up (which ends with the same join)
        "cpu_s": cpu_end - assigned,
        "cpu_raw_s": cpu_end - cpu0,
        "startup_cpu_s": assigned - cpu0,
        "wall_s": end - wall0,
        "busy_wall_s": end - (first or end),
    }))  # fmt: skip
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
        cols = (arr["ts"].tolist(), arr["can_id"].tolist(), arr["dlc"].tolist(), arr["data"].tolist())
        for ts, can_id, dlc, data in zip(*cols, strict=True):
            prev = last.get((key, can_id), ts)
            last[(key, can_id)] = ts
            x = {"id": can_id & 0x1FFF_FFFF, "dlc": dlc, "dt": ts - prev}
            for i, b in enumerate(data):
                x[f"b{i}"] = b
            scores.append(model.score_one(x))
            model.learn_one(x)
        return len(arr)

    return score


def run_child(mode: str, bootstrap: str, topic: str, frames: int, mpr: int | None, *extra: str) -> dict:
    cmd = [sys.executable, str(Path(__file__).resolve()), "child", mode, "--bootstrap", bootstrap,
           "--topic", topic, "--group", f"bench-{mode}-{time.time_ns()}", "--frames", str(frames),
           *(["--max-poll-records", str(mpr)] if mpr else []), *extra]  # fmt: skip
    out = run_json(cmd, timeout=3600)
    if out["frames"] != frames:
        raise RuntimeError(f"{mode} consumer read {out['frames']} frames, expected {frames}")
    out["frames_per_cpu_s"] = frames / out["cpu_s"]
    return out


# -- canwatch detect as a subprocess --------------------------------------------------------


def detect_run(work: Path, bootstrap: str, topic: str, frames: int, model_dir: Path,
               mpr: int | None, broker_pid: int, profile: Path | None = None,
               root: Path = ROOT) -> dict:  # fmt: skip
    b0 = cpu_seconds(broker_pid)
    d = DetectProc(work, bootstrap, topic, model_dir, mpr, profile, root=root)
    started: list[float] = []

    def drained(s: dict) -> bool:
        n = total(s, "canwatch_frames_consumed_total")
        if n > 0 and not started:
            started.append(time.perf_counter())
        return n >= frames

    try:
        s = d.wait(drained, max(300.0, frames / 2_000))
        seen_cpu = cpu_seconds(d.proc.pid)
        main, other = thread_cpu(d.proc.pid)
        end = time.perf_counter()
    finally:
        d.stop()
    consumed = total(s, "canwatch_frames_consumed_total")
    if consumed != frames:
        raise RuntimeError(f"detect consumed {consumed:g} frames, expected {frames}")
    stage_sums = s.get("canwatch_stage_duration_seconds_sum", {}).items()
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
        # wall time per stage, from the detector's histograms
        "stage_seconds": {dict(k)["stage"]: round(v, 3) for k, v in stage_sums},
        "polls_with_records": max(polls.values(), default=0),
        "broker_cpu_s": cpu_seconds(broker_pid) - b0,
        "exit_code": d.proc.returncode,
        "command": shlex.join(d.cmd),
    }


def net_detect_run(name: str, work: Path, bootstrap: str, topic: str, frames: int,
                   model_dir: Path, mpr: int | None, broker_pid: int,
                   root: Path = ROOT) -> dict:  # fmt: skip
    """detect_run with the per-CPU-second figures, raw and net of start-up."""
    d = detect_run(work, bootstrap, topic, frames, model_dir, mpr, broker_pid, root=root)
    if d["startup_cpu_s"] is None:
        raise RuntimeError(f"canwatch detect never logged {ASSIGNED!r}")
    d["cpu_net_s"] = d["cpu_raw_s"] - d["startup_cpu_s"]
    if d["cpu_net_s"] < MIN_NET_CPU_S:  # clock ticks are 10 ms: no figure from a few of them
        raise RuntimeError(
            f"canwatch detect worked {d['cpu_net_s']:.2f} CPU-s past start-up on {frames:,} "
            f"frames: too little to measure (give --frames more)"
        )
    d["frames_per_cpu_s_raw"] = frames / d["cpu_raw_s"]
    d["frames_per_cpu_s_net"] = frames / d["cpu_net_s"]
    say(
        f"  {name:6} {d['frames_per_cpu_s_net']:>12,.0f} frames/CPU-s net "
        f"({d['cpu_net_s']:.2f} s net, {d['cpu_raw_s']:.2f} s raw, "
        f"main thread {d['main_thread_cpu_s']:.2f} s, wall {d['busy_wall_s'] or 0:.1f} s)"
    )
    return d


def shadowed_models(model_dir: Path, work: Path) -> Path:
    """A copy of ``model_dir`` where every platform's serving model is deployed again as its
    shadow. The shadow's cost does not depend on what it learned: its own window state
    and scoring, on every window of its brands."""
    out = work / "models-shadowed"
    shutil.copytree(model_dir, out)
    for versions in list_manifests(out).values():
        argv = ["models", "deploy", str(versions[-1].path), "--shadow", "--models", str(out)]
        if cli_main(argv) != 0:
            raise RuntimeError(f"canwatch {shlex.join(argv)} failed")
    return out


def profile_summary(path: Path, top: int = 25) -> dict[str, str]:
    out = {}
    for key in ("tottime", "cumulative"):
        buf = io.StringIO()
        pstats.Stats(str(path), stream=buf).strip_dirs().sort_stats(key).print_stats(top)
        out[key] = buf.getvalue()
    return out


# -- the benchmark ----------------------------------------------------------------------------


def bench(args: argparse.Namespace, work: Path) -> dict:
    t_start = time.perf_counter()
    n, mpr = args.frames, args.max_poll_records
    json_n = n if args.json_frames is None else min(n, args.json_frames)
    river_n = min(n, args.river_frames)
    fleet = load_fleet()
    say(f"models under {args.models or work}")
    t0 = time.perf_counter()
    model_dir = bench_models(fleet, args.models or work)
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    fd = fd_brands(fleet)
    classic = sorted(set(fleet.brands) - fd)
    # classic CAN alone in the main figure; the CAN FD brands in a fleet of their own
    streams, duration = simulate(fleet, n, args.vehicles, args.seed, classic)
    say(
        f"fleet: {len(streams)} vehicles, {len(classic)} classic CAN brands, {n:,} frames "
        f"(~{duration:.0f} s of traffic) simulated in {time.perf_counter() - t0:.1f} s"
    )
    fd_n = args.fd_frames if fd else 0
    fd_streams = simulate(fleet, fd_n, max(len(fd), args.vehicles // 7), args.seed, sorted(fd))[0] if fd_n else []
    if fd_n:
        say(f"CAN FD fleet: {len(fd_streams)} vehicles of {', '.join(sorted(fd))}, {fd_n:,} frames")
    result: dict = {
        "frames": n, "json_frames": json_n, "river_frames": river_n, "repeat": args.repeat,
        "vehicles": len(streams), "brands": len(classic), "platforms": len(fleet.platforms),
        "fd_frames": fd_n, "fd_brands": sorted(fd),
        "partitions": args.partitions, "compression": args.compression,
        "max_poll_records": mpr or load_config(None, env={}).kafka.max_poll_records,
        "crc32c_accelerated": crc32c_accelerated(), "train_s": round(train_s, 1),
    }  # fmt: skip
    runs: dict[str, list] = {
        k: []
        for k in ("bare", "bare_heap", "startup", "detect", "against", "shadow", "json", "river", "fd_bare",
                  "fd_detect")
    }
    if args.against:
        result["against"] = {"root": str(args.against), "commit": commit_of(args.against)}
    topics = dict.fromkeys(("bench.bin", "bench.json", "bench.warm", "bench.fd"), args.partitions)
    with broker(work, topics) as b:
        bs, codec, warm_n = b.bootstrap, args.compression, min(n, WARMUP_FRAMES)
        result["produce"] = {"binary": produce(bs, "bench.bin", streams, "binary", codec)}
        produce(bs, "bench.warm", first_n(streams, warm_n), "binary", codec)
        if fd_n:
            result["produce"]["fd"] = produce(bs, "bench.fd", fd_streams, "binary", codec)
            del fd_streams
        if json_n:
            json_streams = streams if json_n == n else first_n(streams, json_n)
            result["produce"]["json"] = produce(bs, "bench.json", json_streams, "json", codec)
            del json_streams
        del streams
        # First calls compile the numba kernels into their on-disk cache; do that
        # here, unmeasured, so no measured run pays for compilation.
        warm = detect_run(work, bs, "bench.warm", warm_n, model_dir, mpr, b.pid)
        result["warmup"] = {"frames": warm_n, "cpu_raw_s": warm["cpu_raw_s"]}
        shadowed = shadowed_models(model_dir, work) if args.shadow else None
        say(f"  warm-up detect run: {warm_n:,} frames, {warm['cpu_raw_s']:.2f} s CPU")
        for r in range(args.repeat):
            say(f"repeat {r + 1}/{args.repeat}")
            for name, extra in (("bare", ()), ("bare_heap", ("--detect-settings",))):
                runs[name].append(run_child("bare", bs, "bench.bin", n, mpr, *extra))
                x = runs[name][-1]
                say(f"  {name:9} {x['frames_per_cpu_s']:>12,.0f} frames/CPU-s ({x['cpu_s']:.2f} s)")
            # With --against, the other checkout's detect reads the same backlog in the
            # same repeat, first on odd repeats and second on even ones (ABBA).
            order = ("detect", "against") if r % 2 == 0 else ("against", "detect")
            for name in order if args.against else ("detect",):
                root = args.against if name == "against" else ROOT
                d = net_detect_run(name, work, bs, "bench.bin", n, model_dir, mpr, b.pid, root)
                runs[name].append(d)
            runs["startup"].append(runs["detect"][-1]["startup_cpu_s"])
            if shadowed:
                runs["shadow"].append(
                    net_detect_run("shadow", work, bs, "bench.bin", n, shadowed, mpr, b.pid)
                )
            if json_n:
                runs["json"].append(
                    net_detect_run("json", work, bs, "bench.json", json_n, model_dir, mpr, b.pid)
                )
            if fd_n:
                runs["fd_bare"].append(run_child("bare", bs, "bench.fd", fd_n, mpr))
                runs["fd_detect"].append(
                    net_detect_run("fd", work, bs, "bench.fd", fd_n, model_dir, mpr, b.pid)
                )
            river = run_child("river", bs, "bench.bin", river_n, mpr)
            runs["river"].append(river)
            say(f"  river  {river['frames_per_cpu_s']:>12,.0f} frames/CPU-s ({river['cpu_s']:.2f} s)")
        if args.profile:
            say(f"profiling one detect run under cProfile -> {args.profile}")
            p = detect_run(work, bs, "bench.bin", n, model_dir, mpr, b.pid, args.profile)
            result["profile"] = {"path": str(args.profile), "run": p, "top": profile_summary(args.profile)}
            if shadowed:  # and one with the shadows, beside it
                path = args.profile.with_suffix(".shadow" + args.profile.suffix)
                say(f"profiling one detect run with shadows under cProfile -> {path}")
                p = detect_run(work, bs, "bench.bin", n, shadowed, mpr, b.pid, path)
                result["profile_shadow"] = {"path": str(path), "run": p, "top": profile_summary(path)}
    result.update(summarize(runs, n, json_n))
    result.update(bytes_per_cpu_s(result, runs))
    result["runs"] = runs
    result["wall_s"] = round(time.perf_counter() - t_start, 1)
    return result


def summarize(runs: dict, n: int, json_n: int) -> dict:
    """Medians (min–max) of each consumer's frames/CPU-s, and ratios taken per repeat."""
    key = dict.fromkeys(("detect", "against", "shadow", "json"), "frames_per_cpu_s_net")  # net of start-up

    def fps(name: str, k: str | None = None) -> list[float]:
        return [x[k or key.get(name, "frames_per_cpu_s")] for x in runs[name]]

    def per_repeat(num: str, den: str) -> list[float]:
        return [a / b for a, b in zip(fps(num), fps(den), strict=True)]

    out: dict = {
        "bare": summary(fps("bare")),
        "bare_heap": summary(fps("bare_heap")),
        "detect_raw": summary(fps("detect", "frames_per_cpu_s_raw")),
        "detect_net": summary(fps("detect")),
        "detect_startup_cpu_s": summary(runs["startup"]),
        "river": summary(fps("river")),
    }
    out["detect"] = out["detect_net"]
    pairs = {"detect_bare": ("detect", "bare"), "detect_river": ("detect", "river"),
             "bare_heap_bare": ("bare_heap", "bare"), "detect_bare_heap": ("detect", "bare_heap")}  # fmt: skip
    if runs["json"]:
        out["json_raw"] = summary(fps("json", "frames_per_cpu_s_raw"))
        out["json_net"] = out["json"] = summary(fps("json"))
        pairs["detect_json"] = ("detect", "json")
    if runs["against"]:
        out["against_net"] = summary(fps("against"))
        pairs["detect_against"] = ("detect", "against")
        pairs["against_bare"] = ("against", "bare")
    if runs["shadow"]:
        out["shadow_net"] = summary(fps("shadow"))
        pairs["shadow_detect"] = ("shadow", "detect")
        pairs["shadow_bare"] = ("shadow", "bare")
    out["ratios"] = {k: summary(per_repeat(*p)) for k, p in pairs.items()}
    for name in ("bare", "river", "bare_heap"):
        out[f"{name}_frames_per_cpu_s"] = out[name]["median"]
    out["detect_frames_per_cpu_s"] = out["detect_net"]["median"]  # net of startup
    out["detect_frames_per_cpu_s_raw"] = out["detect_raw"]["median"]
    out["json_frames_per_cpu_s"] = out["json_net"]["median"] if runs["json"] else None
    for k in ("detect_bare_heap", "detect_bare", "detect_river"):
        out[f"ratio_{k}"] = out["ratios"][k]["median"]
    out["notes"] = (
        "frames per CPU-second (user+sys, all threads); detect/json = canwatch detect to the "
        "end of its work, net of its start-up CPU (imports, model load, group join: until it "
        "logs 'assigned partitions'), raw also given; "
        f"json on {json_n:,} of {n:,} frames; river on {runs['river'][0]['frames']:,} frames; "
        "ratios are per repeat, then the median"
    )
    return out


def bytes_per_cpu_s(res: dict, runs: dict) -> dict:
    """CAN FD frames/CPU-s, and record bytes (the wire's) per CPU-s of classic and FD
    detect: an FD frame carries up to 8x a classic frame's data."""
    out: dict = {}
    classic = res["produce"]["binary"]["bytes"] / res["frames"]
    out["detect_bytes_per_cpu_s"] = res["detect_frames_per_cpu_s"] * classic
    if runs["fd_detect"]:
        fd_fps = [x["frames_per_cpu_s_net"] for x in runs["fd_detect"]]
        out["fd_detect"] = summary(fd_fps)
        out["fd_bare"] = summary([x["frames_per_cpu_s"] for x in runs["fd_bare"]])
        per_repeat = [a / b["frames_per_cpu_s"] for a, b in zip(fd_fps, runs["fd_bare"], strict=True)]
        out["ratios_fd"] = {"fd_detect_bare": summary(per_repeat)}
        out["fd_detect_frames_per_cpu_s"] = out["fd_detect"]["median"]
        fd_bytes = res["produce"]["fd"]["bytes"] / res["fd_frames"]
        out["fd_detect_bytes_per_cpu_s"] = out["fd_detect_frames_per_cpu_s"] * fd_bytes
    return out


def table(res: dict) -> str:
    n, bare = f"{res['frames']:,}", res["bare"]["median"]
    rows = [
        ["bare kafka-python + np.frombuffer", n, fmt_range(res["bare"]), "1.00"],
        ["... with detect's kafka-python and malloc settings", n, fmt_range(res["bare_heap"]),
         fmt_range(res["ratios"]["bare_heap_bare"], 2)],
        ["canwatch detect, binary (net)", n, fmt_range(res["detect_net"]),
         fmt_range(res["ratios"]["detect_bare"], 2)],
        ["canwatch detect, binary (raw)", n, fmt_range(res["detect_raw"]),
         f"{res['detect_raw']['median'] / bare:.2f}"],
    ]  # fmt: skip
    if res.get("against"):
        rows.append([f"... the same, --against {res['against']['commit'] or res['against']['root']}",
                     n, fmt_range(res["against_net"]), fmt_range(res["ratios"]["against_bare"], 2)])  # fmt: skip
    if res.get("shadow_net"):
        rows.append(["canwatch detect, a shadow model on every brand (net)", n, fmt_range(res["shadow_net"]),
                     fmt_range(res["ratios"]["shadow_bare"], 2)])  # fmt: skip
    for kind in ("net", "raw") if res.get("json") else ():
        s = res[f"json_{kind}"]
        rows.append([f"canwatch detect, JSON ({kind})", f"{res['json_frames']:,}", fmt_range(s),
                     f"{s['median'] / bare:.2f}"])  # fmt: skip
    if res.get("fd_detect"):
        rows.append(["bare, CAN FD topic (schema 2)", f"{res['fd_frames']:,}", fmt_range(res["fd_bare"]), "-"])
        rows.append([f"canwatch detect, CAN FD ({', '.join(res['fd_brands'])}; net)", f"{res['fd_frames']:,}",
                     fmt_range(res["fd_detect"]), f"{fmt_range(res['ratios_fd']['fd_detect_bare'], 2)} of FD bare"])  # fmt: skip
    rows.append(["river HalfSpaceTrees, one frame at a time", f"{res['river_frames']:,}",
                 fmt_range(res["river"]), f"{res['river']['median'] / bare:.4f}"])  # fmt: skip
    text = markdown_table(["consumer", "frames", "frames / CPU-s: median (min–max)", "vs bare"], rows)
    if res.get("against"):
        text += f"\n\nthis checkout / --against, per repeat: {fmt_range(res['ratios']['detect_against'], 3)}"
    if res.get("shadow_net"):
        text += f"\n\nwith a shadow on every brand / serving only, per repeat: {fmt_range(res['ratios']['shadow_detect'], 3)}"
    text += f"\n\nrecord bytes per CPU-s, detect: classic {res['detect_bytes_per_cpu_s'] / 1e6:,.0f} MB/s"
    if res.get("fd_detect"):
        text += f", CAN FD {res['fd_detect_bytes_per_cpu_s'] / 1e6:,.0f} MB/s"
    return text + (
        f"\n\ndetect / river: {fmt_range(res['ratios']['detect_river'], 1)}x; "
        f"detect / bare with detect's kafka-python and malloc settings: "
        f"{fmt_range(res['ratios']['detect_bare_heap'], 2)}; "
        f"detect start-up CPU {fmt_range(res['detect_startup_cpu_s'], 2)} s; "
        f"{res['repeat']} repeats, {res['vehicles']} vehicles, {res['partitions']} partitions, "
        f"max_poll_records {res['max_poll_records']}, "
        f"{'plain' if res['compression'] == 'none' else res['compression']} records; "
        f"{machine_line()}"
    )


def commit_of(tree: Path) -> str | None:
    out = subprocess.run(["git", "-C", str(tree), "rev-parse", "--short", "HEAD"],
                         capture_output=True, text=True)  # fmt: skip
    return out.stdout.strip() or None


def headline(res: dict) -> list[tuple[str, str]]:
    codec = "plain" if res["compression"] == "none" else res["compression"]
    return [
        (f"detect frames/CPU-s, {codec} records (net)", fmt_range(res["detect_net"])),
        ("detect / bare", fmt_range(res["ratios"]["detect_bare"], 2)),
        ("detect / river", fmt_range(res["ratios"]["detect_river"], 1)),
    ] + ([("detect / --against", fmt_range(res["ratios"]["detect_against"], 3))] if res.get("against") else []) + (
        [("detect with shadows / serving only", fmt_range(res["ratios"]["shadow_detect"], 3))]
        if res.get("shadow_net") else []
    ) + (
        [("CAN FD detect frames/CPU-s (net)", fmt_range(res["fd_detect"]))] if res.get("fd_detect") else []
    )


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["child"]:
        return child(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--frames", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json-frames", type=int,
                    help="frames in the JSON topic: the first M of the fleet (default all; 0 = no JSON run)")  # fmt: skip
    ap.add_argument("--river-frames", type=int, default=200_000, help="frames the river baseline scores")
    ap.add_argument("--fd-frames", type=int, default=2_000_000,
                    help="frames of the CAN FD fleet (its own topic and runs; 0: none)")  # fmt: skip
    ap.add_argument("--vehicles", type=int, default=56, help="fleet size (default 56)")
    ap.add_argument("--partitions", type=int, default=PARTITIONS)
    ap.add_argument("--max-poll-records", type=int, help="override kafka.max_poll_records (default: config)")
    ap.add_argument("--models", type=Path, metavar="DIR", help="cache models here (default: a temp dir)")
    ap.add_argument("--profile", type=Path, metavar="OUT.prof", help="cProfile one detect run")
    ap.add_argument("--seed", type=int, default=6)
    ap.add_argument("--compression", choices=COMPRESSIONS, default="none",
                    help="codec the topics are produced with (default none: plain records, on which the "
                    "targets are set; canwatch's own producers use kafka.compression, lz4)")  # fmt: skip
    ap.add_argument("--against", type=Path, metavar="TREE",
                    help="A/B: also run detect from this checkout of another commit (e.g. a git "
                    "worktree) on the same backlog in every repeat, ABBA; reports the ratio")  # fmt: skip
    ap.add_argument("--shadow", action="store_true",
                    help="also run detect with every platform's model deployed again as its shadow "
                    "(canwatch models deploy --shadow), in every repeat; reports the ratio")  # fmt: skip
    ap.add_argument("--json", type=Path, metavar="OUT", help="also write the results here")
    args = ap.parse_args(argv)
    if args.against and not (args.against / "detector" / "__init__.py").is_file():
        ap.error(f"--against {args.against}: not a canwatch checkout (no detector/__init__.py)")
    if args.frames < 1 or args.repeat < 1:
        ap.error("--frames and --repeat must be >= 1")
    with tempfile.TemporaryDirectory(prefix="canwatch-bench-") as tmp:
        res = bench(args, Path(tmp))
    write_results(args.json, res, headline(res))
    print(table(res))
    say(f"total wall time {res['wall_s']:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
