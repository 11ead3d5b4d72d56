"""What the benchmarks set up: the broker, the fleet, the models, a produced backlog."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from bench.common import say
from detector.core.brands import Fleet, load_fleet
from detector.core.config import load_config
from detector.transport.broker import EmbeddedBroker, create_topics
from detector.transport.kafka_io import make_producer
from replay.publisher import publish
from replay.simulator import simulate_fleet, simulate_vehicle

#: Where ``canwatch detect`` (``bench.common.detect``) sends incidents and dead letters.
INCIDENTS, DLQ = "bench.incidents", "bench.dlq"
RECORD_FRAMES = 500  # frames per Kafka record (cap)
RECORD_SPAN_S = 1.0  # ...or this much traffic: the fleet's ~2 kHz buses give ~470 a record


@contextlib.contextmanager
def broker(work: Path, topics: dict[str, int], name: str = "tansu") -> Iterator[EmbeddedBroker]:
    """An embedded Tansu broker (127.0.0.1, free port; stopped by PID) with ``{topic:
    partitions}`` and the incident and dead-letter topics created."""
    with EmbeddedBroker(log_path=work / f"{name}.log") as b:
        create_topics(b.bootstrap, {**topics, INCIDENTS: 1, DLQ: 1})
        say(f"broker {b.bootstrap} pid {b.pid}")
        yield b


def producer(bootstrap: str, **kafka: object):
    """A producer with canwatch's own settings (``kafka_io.make_producer``); ``kafka``
    overrides keys of the [kafka] config section."""
    over = {"kafka.bootstrap": bootstrap} | {f"kafka.{k}": v for k, v in kafka.items()}
    return make_producer(load_config(None, env={}, overrides=over).kafka)


def incident_consumer(bootstrap: str, **kafka_args: object):
    """A consumer of the whole incident topic (one partition) from its start, with no group."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, group_id=None, auto_offset_reset="earliest",
                             **kafka_args)  # fmt: skip
    consumer.assign([TopicPartition(INCIDENTS, 0)])
    return consumer


def demo_models(fleet: Fleet | None = None) -> Path:
    """The ``canwatch demo`` models of this checkout (its cache; trained there on first use)."""
    from detector.demo import cache_dir, default_model_cache, ensure_models

    model_dir = cache_dir(default_model_cache())
    ensure_models(fleet or load_fleet(), load_config(None, env={}), model_dir, say)
    return model_dir


def bench_models(fleet: Fleet, root: Path) -> Path:
    """Small models (6 vehicles x 60 s a platform) under ``root``, cached like the demo's:
    enough for a valid model to score with, quick to train; speed does not need better."""
    from detector.demo import cache_dir, ensure_models

    model_dir = root / f"bench-{cache_dir(root).name}"
    ensure_models(fleet, load_config(None, env={}), model_dir, say, 6, 60.0)
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


def fd_brands(fleet: Fleet) -> set[str]:
    """The brands whose platform's simulated buses carry CAN FD frames."""
    from detector.core.schema import is_fd_array

    fd = {p for p in fleet.platforms if is_fd_array(simulate_vehicle(p, 1.0, 1.7e9, 1))}
    return {b for b in fleet.brands if fleet.platform_of(b) in fd}


def simulate(
    fleet: Fleet, n: int, vehicles: int, seed: int, brands: list[str] | None = None
) -> tuple[list, float]:
    """Exactly ``n`` frames from ``vehicles`` vehicles (``brands`` round-robin, by default
    all), ending in the past."""
    brands = sorted(brands or fleet.brands)
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
    """The whole of ``streams`` as fast as the producer goes, in records of <= RECORD_FRAMES
    frames or RECORD_SPAN_S of a bus (``replay.publisher``)."""
    prod = producer(bootstrap, compression=compression)
    t0 = time.perf_counter()
    try:
        s = publish(prod, topic, streams, speed=None, encoding=encoding,
                    max_frames=RECORD_FRAMES, max_span_s=RECORD_SPAN_S)  # fmt: skip
        # bytes on the wire / bytes before compression, over the producer's batches
        rate = prod.metrics()["producer-metrics"]["compression-rate-avg"]
    finally:
        prod.close()
    wall = time.perf_counter() - t0
    say(
        f"  produced {s.frames:,} frames in {s.records:,} {encoding} records "
        f"({s.bytes / 1e6:,.0f} MB, {compression}: {rate:.2f} of it on the wire) in {wall:.1f} s"
    )
    return {
        "records": s.records, "frames": s.frames, "bytes": s.bytes, "wall_s": round(wall, 2),
        "frames_per_record": round(s.frames / s.records, 1), "compression_rate": round(rate, 3),
    }  # fmt: skip
