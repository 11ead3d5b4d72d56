"""Detector state memory: bytes per active (vehicle, CAN id) stream, and RSS under a burst.

Part 1, state per stream (each size in fresh child processes). Every vehicle
sends all the platform's ids (55 for aee2010) with ``--frames`` frames per id
per 1 s window, payloads taken from the simulator (``replay.simulator``); all
vehicles share one synthetic frame array (only the key differs), so building
the traffic costs nothing. ``--rate-vehicles`` sizes use the simulator's own
traffic instead (~1,900 frames/vehicle/s), to show whether state grows with
the frame rate. ``--windows`` windows are pushed, ``--steps`` slices each,
through ``detector.model.pipeline.Scorer`` with the platform's trained model (the
``canwatch demo`` model cache; trained on first use). Measured after the
last push and ``gc.collect()``, i.e. with a window open and full:

- tracemalloc: bytes still allocated that were allocated after the Scorer was
  created (numpy reports its buffers to tracemalloc), and who holds them: every
  numpy array of WindowState / StreamTable (whatever their layout), the
  per-vehicle Python objects, and (``--detector-vehicles``) the service's
  per-record/per-vehicle bookkeeping;
- RSS delta (``/proc/self/statm``) in runs without tracemalloc, before and
  after ``malloc_trim(0)`` (what glibc keeps of freed transients), and
  optionally with ``--malloc-env`` set;
- the time of one ``--probe``-record poll against that state (does a poll's
  cost grow with the state?).

``--detector-vehicles`` sizes go through the service's own per-poll path
without Kafka — ``Detector._decode`` (pending offsets, vehicle -> partition,
last seen) -> ``Scorer.push`` -> ``Detector._safe_offsets`` — with
``--records`` upload records per vehicle per window.

Part 2, burst: ``--burst-vehicles`` simulated vehicles at the simulator's
rate through the Scorer in 0.1 s polls: steady, then 10x for a few seconds,
then steady again. Two kinds of 10x: ``rate`` (every vehicle sends 10x the
frames) and ``fleet`` (9x as many vehicles appear, then go silent). RSS and
state bytes are sampled after every poll.

    .venv/bin/python bench/memory.py [--vehicles 1000,10000,100000] [--platform aee2010]
        [--malloc-env MALLOC_MMAP_THRESHOLD_=131072] [--no-burst] [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/memory.py`)
from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import tracemalloc
from collections import namedtuple
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import say
from bench.common.procs import malloc_trim, rss, run_json
from bench.common.report import fmt_range, machine_line, markdown_table, summary, write_results
from bench.common.rig import demo_models
from detector.core.brands import load_fleet
from detector.core.config import LimitsConfig
from detector.core.fd import frame_ids, is_lane, to_lanes
from detector.features.streams import StreamTable

#: The sizes measured here go past the default limits.* (20,000 vehicles): lifted.
NO_LIMITS = {"max_vehicles": 10**8, "max_streams": 10**10}
START_TS = 1.7e9
WINDOW_S = 1.0
TARGET_B = 256
TEMPLATE_S = 10.0
Rec = namedtuple("Rec", "key value headers offset topic partition")


def settle() -> None:
    gc.collect()
    gc.collect()


def load_platform_model(platform: str):
    """The platform's model from the demo cache (trained there on first use, ~10 s)."""
    from detector.model.store import list_manifests, load_model

    fleet = load_fleet()
    model_dir = demo_models(fleet)
    return load_model(list_manifests(model_dir)[platform][-1].path), fleet, model_dir


# -- traffic ------------------------------------------------------------------------------------


class Template:
    """One vehicle's synthetic windows: every platform id, ``frames`` frames per window,
    payloads of that id from the simulator, evenly spread in the window."""

    def __init__(self, platform: str, frames: int, seed: int = 1) -> None:
        from replay.simulator import simulate_vehicle

        sim = simulate_vehicle(platform, TEMPLATE_S, START_TS, seed)
        # CAN FD: the streams the features keep are its lanes (detector.core.fd)
        lanes = to_lanes(sim)
        self.fd_ids = int(len(np.unique(frame_ids(lanes["can_id"][is_lane(lanes["can_id"])]))))
        self.fd_streams = int(len(np.unique(lanes["can_id"][is_lane(lanes["can_id"])])))
        self.ids = np.unique(sim["can_id"])
        self.sim_frames_per_stream_s = len(sim) / TEMPLATE_S / len(self.ids)
        self.sim_frames_per_vehicle_s = len(sim) / TEMPLATE_S
        self.frames = frames
        self.sim = sim
        self.pool = [sim[sim["can_id"] == cid] for cid in self.ids]

    def window(self, w: int) -> np.ndarray:
        if self.frames <= 0:  # the simulated vehicle's own traffic of that second
            lo, hi = np.searchsorted(self.sim["ts"], START_TS + np.array([w, w + 1]) * WINDOW_S)
            return self.sim[lo:hi].copy()
        parts = []
        k, n = len(self.ids), self.frames
        for j, own in enumerate(self.pool):
            f = own[(np.arange(n) + w * n) % len(own)].copy()
            phase = (j / k) * (WINDOW_S / n) * 0.9
            f["ts"] = START_TS + (w + np.arange(n) / n) * WINDOW_S + phase
            parts.append(f)
        out = np.concatenate(parts)
        return out[np.argsort(out["ts"], kind="stable")]


def vehicle_name(i: int, length: int) -> str:
    """A fresh str per call, like the service's key.decode() per record."""
    return f"V{i:0{length - 1}d}"


def slices(frames: np.ndarray, w: int, steps: int) -> list[np.ndarray]:
    edges = START_TS + (w + np.arange(steps + 1) / steps) * WINDOW_S
    pos = np.searchsorted(frames["ts"], edges)
    return [frames[pos[s] : pos[s + 1]] for s in range(steps)]


# -- part 1: state per stream -------------------------------------------------------------------


class Feed:
    """Pushes one slice of traffic for a range of vehicles: straight into a Scorer, or
    (``detector`` given) as upload records through the service's per-poll path
    without Kafka: ``Detector._decode`` -> ``Scorer.push`` -> ``Detector._safe_offsets``."""

    def __init__(self, scorer, brand: str, id_len: int, detector=None, partitions: int = 4):
        from kafka.structs import TopicPartition

        self.scorer, self.brand, self.id_len, self.detector = scorer, brand, id_len, detector
        self.tps = [TopicPartition("can.telemetry", p) for p in range(partitions)]
        self.offsets = [0] * partitions

    def poll(self, part: np.ndarray, lo: int, hi: int) -> float:
        """Seconds spent in the detector's code for this slice of vehicles lo..hi."""
        if self.detector is None:
            part = to_lanes(part)  # as the service's intake hands them on (CAN FD: lanes)
            batches = [(vehicle_name(i, self.id_len), self.brand, part) for i in range(lo, hi)]
            t0 = time.perf_counter()
            self.scorer.push(batches)
            return time.perf_counter() - t0
        from detector.transport.wire import encode_record

        _, value, headers = encode_record("x", self.brand, part)
        polled: dict = {tp: [] for tp in self.tps}
        for i in range(lo, hi):
            p = i % len(self.tps)
            key = vehicle_name(i, self.id_len).encode()
            polled[self.tps[p]].append(Rec(key, value, headers, self.offsets[p], "t", p))
            self.offsets[p] += 1
        t0 = time.perf_counter()
        batches, _ = self.detector._decode(polled)
        self.scorer.push(batches)
        self.detector._safe_offsets()
        return time.perf_counter() - t0


def drive(feed: Feed, tpl: Template, n: int, windows: int, steps: int, chunk: int) -> list[float]:
    """``windows`` windows of traffic for vehicles 0..n-1, ``steps`` slices per window."""
    push_s = []
    for w in range(windows):
        for part in slices(tpl.window(w), w, steps):
            push_s.append(sum(feed.poll(part, c, min(n, c + chunk)) for c in range(0, n, chunk)))
    return push_s


def probe(feed: Feed, tpl: Template, window: int, vehicles: int, repeat: int = 3) -> float:
    """Median seconds of one poll of ``vehicles`` records (0.1 s each) against the state."""
    parts = slices(tpl.window(window), window, 10)
    return float(np.median([feed.poll(parts[k], 0, vehicles) for k in range(repeat)]))


def deep_size(obj, seen: set) -> int:
    """getsizeof of obj and what it holds (str/int/float/tuple/list/dict), each object once."""
    if id(obj) in seen:
        return 0
    seen.add(id(obj))
    n = sys.getsizeof(obj)
    if isinstance(obj, dict):
        n += sum(deep_size(k, seen) + deep_size(v, seen) for k, v in obj.items())
    elif isinstance(obj, list | tuple):
        n += sum(deep_size(x, seen) for x in obj)
    return n


def _arrays(owner: object, prefix: str, n_streams: int, n_vehicles: int):
    """(what, bytes, scales per) for every numpy array attribute of ``owner``."""
    out = []
    for name, val in sorted(vars(owner).items()):
        if not isinstance(val, np.ndarray):
            continue
        cols = int(np.prod(val.shape[1:])) if val.ndim > 1 else 1
        each = f"{val.dtype}" + (f" x {cols}" if cols > 1 else "")
        # a StreamTable's columns: their spare rows (<= 25 %) count per stream too
        if len(val) == n_streams or (isinstance(owner, StreamTable) and len(val) == owner.capacity):
            per = "stream"
        else:
            per = "vehicle" if len(val) == n_vehicles else "-"
        out.append((f"{prefix}.{name} ({each}, {val.itemsize * cols} B per row)", val.nbytes, per))
    return out


DETECTOR_STATE = (
    ("pending", "numpy chunks per partition: offset, vehicle number, ts", "record"),
    ("_vnum", "vehicle -> number", "vehicle"),
    ("_vnames", "number -> (vehicle, brand)", "vehicle"),
    ("vehicle_tp", "vehicle -> partition", "vehicle"),
    ("last_seen", "vehicle -> (brand, t)", "vehicle"),
    ("next_offset", "partition -> offset", "-"),
)


def breakdown(scorer, detector=None) -> list[tuple[str, int, str]]:
    """(what, bytes, scales per) for the state the Scorer (and Detector) hold; generic over
    the WindowState/StreamTable layout (every numpy attribute is listed)."""
    out: list[tuple[str, int, str]] = []
    seen: set = set()
    for st in scorer.state.values():
        ws = st.window
        out += _arrays(ws, "WindowState", -1, len(st.names))
        out += _arrays(ws.streams, "StreamTable", len(ws.streams), -1)
        index = sys.getsizeof(st.index) + sum(deep_size(v, seen) for v in st.index.values())
        out += [
            ("_PlatformState vehicle id str objects", sum(deep_size(s, seen) for s in st.names), "vehicle"),
            ("_PlatformState.index dict (vehicle -> int)", index, "vehicle"),
            ("_PlatformState.names list", sys.getsizeof(st.names), "vehicle"),
            ("_PlatformState.brands list + brand str objects", deep_size(st.brands, seen), "vehicle"),
        ]  # fmt: skip
    for name, what, per in DETECTOR_STATE if detector is not None else ():
        if hasattr(detector, name):
            out.append((f"Detector.{name} ({what})", deep_size(getattr(detector, name), seen), per))
    return out


def new_scorer(args, model, fleet, model_dir):
    """(Scorer, Detector or None): the service's own when ``--detector``."""
    from prometheus_client import CollectorRegistry

    from detector.core.config import load_config
    from detector.model.pipeline import Scorer
    from detector.service.detector import Detector
    from detector.service.metrics import DetectorMetrics

    if not args.detector:
        return Scorer({model.platform: model}, fleet, WINDOW_S, LimitsConfig(**NO_LIMITS)), None
    over = {"models.dir": str(model_dir)} | {f"limits.{k}": v for k, v in NO_LIMITS.items()}
    det = Detector(load_config(None, env={}, overrides=over), fleet,
                   DetectorMetrics(registry=CollectorRegistry()), "bench")  # fmt: skip
    det.registry.models[model.platform] = model
    det.scorer.set_model(model)
    return det.scorer, det


def traced(scorer, detector) -> dict:
    """What tracemalloc sees allocated since it started, and who holds it."""
    current, peak = tracemalloc.get_traced_memory()
    snap = tracemalloc.take_snapshot().filter_traces([tracemalloc.Filter(False, tracemalloc.__file__)])
    return {
        "traced_bytes": int(current),
        "traced_peak_bytes": int(peak),
        "top_sites": [
            {"site": f"{Path(s.traceback[0].filename).name}:{s.traceback[0].lineno}",
             "bytes": int(s.size), "blocks": int(s.count)}
            for s in snap.statistics("lineno")[:12]
        ],
        "breakdown": [{"what": w, "bytes": int(b), "per": per} for w, b, per in breakdown(scorer, detector)],
    }  # fmt: skip


def child_state(args) -> dict:
    """One measurement (tracemalloc or RSS) in this fresh process."""
    model, fleet, model_dir = load_platform_model(args.platform)
    brand = fleet.brands_of(args.platform)[0]
    tpl = Template(args.platform, args.frames)
    steps = args.records if args.detector else args.steps
    # warm-up: lazy imports, numpy/sklearn caches, metric children
    wscorer, warm = new_scorer(args, model, fleet, model_dir)
    drive(Feed(wscorer, brand, args.id_len, warm), tpl, 8, 3, steps, args.chunk)
    del warm, wscorer
    settle()
    malloc_trim()
    if args.trace:
        tracemalloc.start(1)
    rss0 = rss()
    t0 = time.perf_counter()
    scorer, detector = new_scorer(args, model, fleet, model_dir)
    feed = Feed(scorer, brand, args.id_len, detector)
    push_s = drive(feed, tpl, args.n, args.windows, steps, args.chunk)
    elapsed = time.perf_counter() - t0
    settle()
    st = scorer.state[model.platform]
    out = {
        "vehicles": args.n, "ids": int(len(tpl.ids)), "streams": int(len(st.window.streams)),
        "fd_ids_per_vehicle": tpl.fd_ids, "fd_streams_per_vehicle": tpl.fd_streams,
        "frames_per_stream_window": args.frames, "detector": bool(args.detector),
        "elapsed_s": round(elapsed, 2),
        "push_s_median": round(float(np.median(push_s)), 4),
        "push_s_max": round(float(np.max(push_s)), 4),
        "sim_frames_per_stream_s": tpl.sim_frames_per_stream_s,
        "sim_frames_per_vehicle_s": tpl.sim_frames_per_vehicle_s,
    }  # fmt: skip
    if detector is not None:
        out["pending_records"] = sum(len(c[0]) for cs in detector.pending.values() for c in cs)
    if args.trace:
        out |= traced(scorer, detector)
        tracemalloc.stop()
        return out
    out["rss_delta"] = rss() - rss0
    malloc_trim()
    out["rss_delta_trimmed"] = rss() - rss0
    if args.probe:
        out["probe_vehicles"] = min(args.probe, args.n)
        out["probe_s"] = probe(feed, tpl, args.windows, min(args.probe, args.n))
    return out


# -- part 2: burst ------------------------------------------------------------------------------


def burst_frames(args, total: float, b0: float, b1: float) -> tuple[np.ndarray, int]:
    """One vehicle's frames; ``rate``: 10x as many (9 shifted copies) from b0 to b1."""
    from replay.simulator import simulate_vehicle

    base = simulate_vehicle(args.platform, total, START_TS, seed=5)
    if args.kind != "rate":
        return base, len(base)
    inb = base[(base["ts"] >= b0) & (base["ts"] < b1)]
    extra = []
    for j in range(1, 10):
        c = inb.copy()
        c["ts"] += j * 1e-4
        extra.append(c)
    frames = np.concatenate([base, *extra])
    return frames[np.argsort(frames["ts"], kind="stable")], len(base)


def child_burst(args) -> dict:
    from detector.model.pipeline import Scorer

    model, fleet, _ = load_platform_model(args.platform)
    brand = fleet.brands_of(args.platform)[0]
    total = args.steady_s + args.burst_s + args.after_s
    b0, b1 = START_TS + args.steady_s, START_TS + args.steady_s + args.burst_s
    frames, base_n = burst_frames(args, total, b0, b1)
    n = args.burst_vehicles
    step = 0.1
    edges = START_TS + np.arange(0, total + step / 2, step)
    pos = np.searchsorted(frames["ts"], edges)
    # warm-up (numba compiles on first use, lazy imports), then a fresh Scorer
    warm = Scorer({model.platform: model}, fleet, WINDOW_S, LimitsConfig(**NO_LIMITS))
    for s in range(20):
        warm.push([(vehicle_name(i, args.id_len), brand, frames[pos[s] : pos[s + 1]]) for i in range(4)])
    del warm
    scorer = Scorer({model.platform: model}, fleet, WINDOW_S, LimitsConfig(**NO_LIMITS))
    names = [vehicle_name(i, args.id_len) for i in range(10 * n)]
    settle()
    malloc_trim()
    rss0 = rss()
    series = []
    for s in range(len(edges) - 1):
        part = frames[pos[s] : pos[s + 1]]
        phase = "burst" if b0 <= edges[s] < b1 else ("before" if edges[s] < b0 else "after")
        active = 10 * n if args.kind == "fleet" and phase == "burst" else n
        t0 = time.perf_counter()
        scorer.push([(names[i], brand, part) for i in range(active)])
        dt = time.perf_counter() - t0
        st = scorer.state[model.platform].window
        series.append({
            "t": round(float(edges[s]) - START_TS, 2), "phase": phase, "frames": len(part) * active,
            "rss": rss() - rss0, "state": st.nbytes, "push_s": round(dt, 4),
        })  # fmt: skip
    settle()
    end_rss = rss() - rss0
    malloc_trim()
    end_trim = rss() - rss0

    def med(phase: str, key: str, tail: float = 0.5) -> float:
        vals = [x[key] for x in series if x["phase"] == phase]
        return float(np.median(vals[int(len(vals) * (1 - tail)) :]))

    return {
        "kind": args.kind, "vehicles": n, "frames_per_s_steady": base_n / total * n,
        "steady_rss": med("before", "rss"), "peak_rss": max(x["rss"] for x in series),
        "after_rss": med("after", "rss"), "after_rss_trimmed": end_trim, "end_rss": end_rss,
        "steady_state": med("before", "state"), "peak_state": max(x["state"] for x in series),
        "after_state": med("after", "state"), "push_s_steady": med("before", "push_s"),
        "push_s_burst": med("burst", "push_s", 1.0), "series": series,
    }  # fmt: skip


# -- the runs, each in a fresh child --------------------------------------------------------------


def run_child(argv: list[str], env: dict | None = None) -> dict:
    return run_json([sys.executable, str(Path(__file__).resolve()), *argv], env)


def state_runs(args) -> dict[str, dict]:
    """Per size: one traced run, ``--repeat`` RSS runs (and one with ``--malloc-env``)."""
    common = [f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
              ("platform", "frames", "windows", "steps", "records", "chunk", "id_len", "probe")]  # fmt: skip
    runs = [(int(n), False, False) for n in args.vehicles.split(",") if n]
    runs += [(int(n), False, True) for n in args.rate_vehicles.split(",") if n]
    runs += [(n, True, False) for n in sorted({int(x) for x in args.detector_vehicles.split(",") if x})]
    results: dict[str, dict] = {}
    for n, det, real_rate in runs:
        key = f"{n:,} vehicles" + (" via Detector" if det else " via Scorer")
        key += ", simulator rate" if real_rate else ""
        argv = ["--child=state", *common, f"--n={n}"] + ["--detector"] * det + ["--frames=0"] * real_rate
        t0 = time.perf_counter()
        trace = run_child([*argv, "--trace"])
        rss_runs = [run_child(argv) for _ in range(args.repeat)]
        results[key] = {"trace": trace, "rss": rss_runs}
        if args.malloc_env:
            var, _, val = args.malloc_env.partition("=")
            results[key]["rss_env"] = run_child(argv, {**os.environ, var: val})
        say(f"  {key}: {trace['traced_bytes'] / trace['streams']:,.0f} B/stream traced, "
            f"{rss_runs[0]['rss_delta'] / trace['streams']:,.0f} B/stream RSS "
            f"({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    return results


def burst_runs(args) -> list[dict]:
    out = []
    for kind in () if args.no_burst else ("rate", "fleet"):
        t0 = time.perf_counter()
        out.append(run_child(["--child=burst", f"--kind={kind}"] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}" for k in
            ("platform", "burst_vehicles", "steady_s", "burst_s", "after_s", "id_len")]))  # fmt: skip
        say(f"  burst {kind}: {time.perf_counter() - t0:.0f} s")
    return out


# -- output ---------------------------------------------------------------------------------------


def mib(b: float) -> str:
    return f"{b / 2**20:,.1f} MiB"


def state_table(results: dict, malloc_env: str) -> str:
    rows = []
    for key, r in results.items():
        t, m = r["trace"], r["rss"]
        streams = t["streams"]
        rows.append([
            key, f"{streams:,}", f"{t['traced_bytes'] / streams:,.0f}",
            fmt_range(summary([x["rss_delta"] / streams for x in m])),
            fmt_range(summary([x["rss_delta_trimmed"] / streams for x in m])),
            *([f"{r['rss_env']['rss_delta'] / streams:,.0f}"] if malloc_env else []),
            f"{t['traced_peak_bytes'] / 2**20:,.0f}", f"{t['elapsed_s']:.1f}",
            fmt_range(summary([x["probe_s"] * 1e3 for x in m])) if "probe_s" in m[0] else "-",
        ])  # fmt: skip
    probe_n = next(iter(results.values()))["rss"][0].get("probe_vehicles", 0)
    t = next(iter(results.values()))["trace"]
    fd_note = ""
    if t.get("fd_ids_per_vehicle"):  # a classic id is one stream; an FD id one per 8 bytes + 1
        per = t["fd_streams_per_vehicle"] / t["fd_ids_per_vehicle"]
        fd_note = (f"\n\nCAN FD: {t['fd_ids_per_vehicle']} FD ids a vehicle kept as "
                   f"{t['fd_streams_per_vehicle']} streams (lanes of 8 bytes + a checksum lane), "
                   f"{per:.1f} a FD id: ~{per * t['traced_bytes'] / t['streams']:,.0f} B per FD id traced, "
                   f"against {t['traced_bytes'] / t['streams']:,.0f} B per classic id")  # fmt: skip
    headers = [
        "run", "streams", "traced B/stream", "RSS Δ B/stream", "RSS Δ after malloc_trim",
        *([f"RSS Δ with {malloc_env}"] if malloc_env else []),
        "traced peak MiB (pushes of ≤ --chunk vehicles)", "build s", f"one {probe_n}-record poll, ms",
    ]  # fmt: skip
    return markdown_table(headers, rows) + fd_note


def breakdown_table(t: dict) -> str:
    streams, vehicles = t["streams"], t["vehicles"]
    held = sorted(t["breakdown"], key=lambda b: -b["bytes"])
    rows = [(b["what"], b["per"], f"{b['bytes'] / streams:,.1f}", f"{b['bytes'] / vehicles:,.0f}")
            for b in held if b["bytes"]]  # fmt: skip
    other = t["traced_bytes"] - sum(b["bytes"] for b in held)
    rows.append(("other traced (not attributed)", "-", f"{other / streams:,.1f}", f"{other / vehicles:,.0f}"))
    rows.append(("**total traced**", "", f"{t['traced_bytes'] / streams:,.1f}",
                 f"{t['traced_bytes'] / vehicles:,.0f}"))  # fmt: skip
    return markdown_table(("held by", "scales per", "B/stream", "B/vehicle"), rows)


def burst_table(bursts: list[dict]) -> str:
    rows = [
        (f"{b['kind']} ({b['vehicles']} veh, {b['frames_per_s_steady'] / 1e3:,.0f}k frames/s steady)",
         *(mib(b[k]) for k in ("steady_rss", "peak_rss", "after_rss", "after_rss_trimmed",
                               "steady_state", "peak_state", "after_state")),
         f"{b['push_s_steady'] * 1e3:,.0f} / {b['push_s_burst'] * 1e3:,.0f}")
        for b in bursts
    ]  # fmt: skip
    return markdown_table(("10x burst", "steady RSS Δ", "peak RSS Δ", "after RSS Δ", "after, trimmed",
                           "steady state", "peak state", "after state", "ms/poll steady / burst"), rows)  # fmt: skip


def state_report(args, results: dict) -> list[str]:
    first = next(iter(results.values()))["trace"]
    out = [
        f"Platform {args.platform}: {first['ids']} ids per vehicle; synthetic traffic has "
        f"{args.frames} frames per stream per {WINDOW_S:g} s window, 'simulator rate' rows the "
        f"simulator's own traffic ({first['sim_frames_per_vehicle_s']:,.0f} frames/vehicle/s, "
        f"{first['sim_frames_per_stream_s']:.1f} per stream). Measured after window "
        f"{args.windows - 1} and before the frame that would close it. Target ≤ {TARGET_B} B/stream.",
        state_table(results, args.malloc_env),
    ]
    synthetic = [k for k in results if "via Scorer" in k and "rate" not in k]
    for key, r in results.items():
        if key in synthetic[:-1]:
            continue  # same per-stream picture as the largest synthetic size
        sites = ", ".join(f"{s['site']} {s['bytes'] / 2**20:,.1f} MiB" for s in r["trace"]["top_sites"][:6])
        out += [f"### What holds the memory: {key}", breakdown_table(r["trace"]),
                f"tracemalloc top allocation sites: {sites}"]  # fmt: skip
    return out


def headline(results: dict, bursts: list[dict]) -> list[tuple[str, str]]:
    out = []
    for key, r in results.items():
        streams = r["trace"]["streams"]
        trimmed = summary([x["rss_delta_trimmed"] / streams for x in r["rss"]])["median"]
        out.append((f"{key}: B/stream traced / RSS after malloc_trim",
                    f"{r['trace']['traced_bytes'] / streams:,.0f} / {trimmed:,.0f}"))  # fmt: skip
    for b in bursts:
        out.append((f"10x {b['kind']} burst: RSS Δ steady / peak / after; state peak",
                    " / ".join(mib(b[k]) for k in ("steady_rss", "peak_rss", "after_rss"))
                    + f"; {mib(b['peak_state'])}"))  # fmt: skip
    return out


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--vehicles", default="1000,10000,100000", help="comma-separated counts")
    ap.add_argument("--platform", default="aee2010", help="platform (default aee2010: 55 ids)")
    ap.add_argument("--frames", type=int, default=2, help="frames per stream per window")
    ap.add_argument("--rate-vehicles", default="1000",
                    help="sizes also run at the simulator's real frame rate ('' = none)")  # fmt: skip
    ap.add_argument("--windows", type=int, default=3, help="windows pushed (the first is partial)")
    ap.add_argument("--steps", type=int, default=1, help="pushes per window (Scorer runs)")
    ap.add_argument("--records", type=int, default=10, help="records per vehicle per window (--detector)")
    ap.add_argument("--chunk", type=int, default=10_000, help="vehicles per push at most")
    ap.add_argument("--id-len", type=int, default=17, help="vehicle id length (VIN: 17)")
    ap.add_argument("--repeat", type=int, default=1, help="RSS runs per size (median)")
    ap.add_argument("--detector-vehicles", default="2000",
                    help="sizes run through Detector._decode/_safe_offsets too ('' = none)")  # fmt: skip
    ap.add_argument("--probe", type=int, default=500, help="time one poll of this many records (0 = off)")
    ap.add_argument("--malloc-env", default="",
                    help="extra RSS run per size with this env, e.g. MALLOC_MMAP_THRESHOLD_=131072")  # fmt: skip
    ap.add_argument("--no-burst", action="store_true")
    ap.add_argument("--burst-vehicles", type=int, default=100)
    ap.add_argument("--steady-s", type=float, default=6.0)
    ap.add_argument("--burst-s", type=float, default=4.0)
    ap.add_argument("--after-s", type=float, default=8.0)
    ap.add_argument("--json", type=Path, help="also write the results here")
    ap.add_argument("--child", choices=("state", "burst"), help=argparse.SUPPRESS)
    ap.add_argument("--n", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--trace", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--detector", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--kind", choices=("rate", "fleet"), help=argparse.SUPPRESS)
    return ap


def main(argv: list[str] | None = None) -> int:
    ap = parser()
    args = ap.parse_args(argv)
    for name in ("vehicles", "rate_vehicles", "detector_vehicles"):  # "" runs none
        if not all(n.strip().isdigit() and int(n) > 0 for n in getattr(args, name).split(",") if n):
            ap.error(f"--{name.replace('_', '-')}: positive counts, comma-separated")
    if args.child:
        print(json.dumps(child_state(args) if args.child == "state" else child_burst(args)))
        return 0
    t_all = time.perf_counter()
    results = state_runs(args)
    bursts = burst_runs(args)
    total_s = time.perf_counter() - t_all
    parts = [f"# Detector state memory ({machine_line()}; {total_s:.0f} s)"]
    parts += state_report(args, results) if results else []
    if bursts:
        parts += [
            f"## 10x burst through the Scorer ({args.steady_s:g} s steady, {args.burst_s:g} s at 10x, "
            f"{args.after_s:g} s steady; 0.1 s polls; RSS relative to before the first poll)",
            burst_table(bursts),
        ]  # fmt: skip
    print("\n\n".join(parts) + "\n")
    write_results(args.json, {
        "args": {k: v for k, v in vars(args).items() if k != "json"},
        "state": results, "burst": bursts, "seconds": round(total_s, 1),
    }, headline(results, bursts))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
