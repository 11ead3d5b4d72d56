"""``canwatch replay``: publish recorded CAN logs into the telemetry topic, paced.

Each FILE (any reader format) is one vehicle, or ``--vehicles N`` time-shifted
copies of it with distinct pseudonymous ids. ``--attack`` specs are injected
into every recording (attack i with seed ``--seed + i``) before fan-out, so all
copies carry them. Records are per-vehicle upload batches, released when their
last frame is due: real time (``--speed 1``, the default), ``--speed X`` times
faster, or ``--max-speed``.

Timestamps (``--rebase-time``, the default): recordings often carry relative
times (candump ``-L`` logs starting at 0.0, ROAD's shifted times) or times from
years ago. Each recording is shifted to start at 0, then the whole replay is
shifted so that no frame is ever ahead of the wall clock when it is published:
at ``--speed 1`` the first frame lands on the wall-clock time at start and
event time tracks the clock; at ``--speed X`` or ``--max-speed`` the replay
*ends* at the wall-clock time its last record goes out, so the earliest frames
lie in the past (by at most the recording's length). The detector rejects
frames more than ``detection.max_future_s`` ahead of its clock (or below
``detection.min_ts``); rebasing this way never trips that check.
``--no-rebase-time`` publishes the recorded timestamps unchanged (fan-out copies
are still shifted) and warns when the detector would reject some of them.

The helpers below (Kafka flags, pacing flags, ``stream_to_kafka``,
``summary_line``) are shared with ``canwatch simulate --to-kafka``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from detector.cli._channel_flag import add_channel_flag
from detector.cli._common import connect_timeout
from detector.cli._progress import bar
from detector.core.config import Config, load_config
from detector.core.errors import ConfigError, InputError

#: Default for --connect-timeout: kafka-python waits 30 s before giving up.
CONNECT_TIMEOUT_S = 10.0
MAX_KEY_BYTES = 128  # detector.transport.wire.MAX_KEY_BYTES


# -- flags shared with `simulate --to-kafka` ----------------------------------------


def add_kafka_flags(p: argparse.ArgumentParser, topic_what: str = "telemetry") -> None:
    p.add_argument("--config", metavar="FILE", help="TOML config (default: built-in defaults)")
    p.add_argument(
        "--bootstrap", metavar="HOST:PORT", help="Kafka bootstrap servers (overrides config)"
    )
    p.add_argument(
        "--topic",
        metavar="T",
        help=f"{topic_what} topic (default: config kafka.{topic_what}_topic)",
    )
    p.add_argument(
        "--connect-timeout",
        type=connect_timeout,
        default=CONNECT_TIMEOUT_S,
        metavar="S",
        help=f"give up when the broker does not answer within S s (default {CONNECT_TIMEOUT_S:g})",
    )


def add_pacing_flags(p: argparse.ArgumentParser) -> None:
    pace = p.add_mutually_exclusive_group()
    pace.add_argument(
        "--speed",
        type=float,
        default=1.0,
        metavar="X",
        help="replay X times faster than recorded (default 1 = real time)",
    )
    pace.add_argument("--max-speed", action="store_true", help="publish as fast as possible")
    p.add_argument(
        "--encoding",
        choices=("binary", "json"),
        default="binary",
        help="wire encoding of the records (default binary)",
    )


#: The slowest replay (a frame a thousand times later than recorded) and the longest
#: span of traffic or shift: past them, sleeps and timestamps overflow.
MIN_SPEED = 1e-3
MAX_SPAN_S = 86_400.0 * 366


def speed_of(args: argparse.Namespace) -> float | None:
    """The publisher's speed: None = as fast as possible."""
    if args.max_speed:
        return None
    if not (np.isfinite(args.speed) and MIN_SPEED <= args.speed):
        raise ConfigError(f"--speed must be >= {MIN_SPEED:g}, got {args.speed}")
    return float(args.speed)


def kafka_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, overrides={"kafka.bootstrap": args.bootstrap})


@contextlib.contextmanager
def quiet_kafka() -> Iterator[None]:
    """Mute kafka-python's connection-retry log lines unless -v was given: the
    command reports a failure itself, as one line."""
    log = logging.getLogger("kafka")
    if logging.getLogger().isEnabledFor(logging.INFO):
        yield
        return
    before = log.level
    log.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        log.setLevel(before)


def rebase_lag(span_s: float, speed: float | None) -> float:
    """How far before "now" a replay of ``span_s`` seconds must start so that no
    frame is ahead of the wall clock when published at ``speed`` (None = max)."""
    if speed is None:
        return span_s
    return span_s * max(0.0, 1.0 - 1.0 / speed)


def stream_to_kafka(
    cfg: Config,
    topic: str,
    streams: list,
    speed: float | None,
    encoding: str,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
    progress: bool | None = None,
):
    """Publish ``streams`` [(vehicle, brand, frames)] to ``topic``; PublishSummary.
    ``progress``: a bar of frames sent (default: when stderr is a terminal)."""
    from kafka.errors import KafkaError

    from detector.transport.broker import BrokerError
    from detector.transport.kafka_io import discard_producer, make_producer
    from replay.publisher import publish

    with quiet_kafka():
        try:
            producer = make_producer(cfg.kafka, bootstrap_timeout_ms=int(connect_timeout_s * 1000))
        except KafkaError as exc:
            raise BrokerError(f"cannot reach Kafka at {cfg.kafka.bootstrap}: {exc}") from None
        total = sum(len(frames) for _, _, frames in streams)
        with bar("publishing", total, "frame", unit_scale=True, enabled=progress) as shown:
            sink = producer if shown.disable else _Counted(producer, encoding, shown.update)
            published = None
            try:
                published = publish(sink, topic, streams, speed, encoding)
                return published
            finally:
                if published is None:  # after a failure, closing must not hide it
                    discard_producer(producer)
                else:
                    try:
                        producer.close(timeout=10)
                    except KafkaError as exc:
                        discard_producer(producer)
                        where = cfg.kafka.bootstrap
                        raise BrokerError(f"closing the producer to {where}: {exc}") from None


class _Counted:
    """The producer, telling ``frames_sent`` how many frames each record carries."""

    def __init__(self, producer: Any, encoding: str, frames_sent: Callable[[int], Any]) -> None:
        from detector.transport.wire import HEADER

        self._producer, self._binary, self._sent = producer, encoding == "binary", frames_sent
        self._header = HEADER

    def _frames_in(self, value: bytes) -> int:
        if self._binary:
            return self._header.unpack_from(value)[3]  # header field "count"
        return value.count(b"],[") + 1  # rows of the JSON "frames" array

    def send(self, topic: str, **kwargs: Any) -> Any:
        future = self._producer.send(topic, **kwargs)
        self._sent(self._frames_in(kwargs["value"]))
        return future

    def flush(self, timeout: float | None = None) -> None:
        self._producer.flush(timeout=timeout)


def summary_line(summary: Any, topic: str) -> str:
    return (
        f"published {summary.records} records, {summary.frames} frames, "
        f"{summary.vehicles} vehicles to {topic} in {summary.elapsed_s:.2f} s "
        f"({summary.frames_per_s:,.0f} frames/s)"
    )


def check_timestamps(
    streams: list,
    cfg: Config,
    now: float,
    speed: float | None = None,
    fix: str = "use --rebase-time",
) -> str | None:
    """A warning when the detector would reject some frames' timestamps: below
    ``detection.min_ts``, or beyond ``max_future_s`` past the time they are sent (paced
    at ``speed`` from ``now``; None: all at once)."""
    first = min((float(f["ts"].min()) for _, _, f in streams if len(f)), default=now)
    pace = 0.0 if speed is None else 1.0 / speed
    bad = sum(
        int(np.count_nonzero(
            (f["ts"] > now + (f["ts"] - first) * pace + cfg.detection.max_future_s)
            | (f["ts"] < cfg.detection.min_ts)
        ))
        for _, _, f in streams
    )  # fmt: skip
    if not bad:
        return None
    return (
        f"warning: {bad} frames have timestamps the detector will reject "
        f"(beyond the time they are sent + detection.max_future_s="
        f"{cfg.detection.max_future_s:g} s, or below detection.min_ts); {fix}"
    )


# -- replay ---------------------------------------------------------------------------


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    from replay.readers import ALIASES, FORMATS

    p = subparsers.add_parser(
        "replay",
        help="publish recorded CAN logs into the telemetry topic (real time, faster, max)",
        description=__doc__.split("\n\n", 1)[1].rsplit("\n\n", 1)[0],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("files", nargs="+", type=Path, metavar="FILE", help="CAN log file(s)")
    p.add_argument("--brand", required=True, help="brand slug of the recorded vehicle(s)")
    who = p.add_mutually_exclusive_group()
    who.add_argument("--vehicle", metavar="ID", help="vehicle id (default: the file's stem)")
    who.add_argument(
        "--vehicles",
        type=int,
        default=1,
        metavar="N",
        help="publish N time-shifted copies of each recording as distinct vehicles",
    )
    p.add_argument(
        "--shift",
        type=float,
        default=None,
        metavar="S",
        help="seconds between copies with --vehicles (default: min(1, length / N))",
    )
    add_pacing_flags(p)
    p.add_argument(
        "--attack",
        action="append",
        default=[],
        metavar="SPEC",
        help="inject an attack into every recording, e.g. 'dos:start=3,duration=4' "
        "(repeatable; same syntax as simulate)",
    )
    p.add_argument(
        "--format",
        choices=sorted(FORMATS + tuple(ALIASES)),
        default=None,
        help="log format (default: by suffix, else sniffed)",
    )
    add_channel_flag(p)
    p.add_argument("--seed", type=int, default=0, help="attack injection seed (default 0)")
    p.add_argument(
        "--rebase-time",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="shift timestamps to the present (default on; see above)",
    )
    add_kafka_flags(p)
    p.set_defaults(func=run)


def check_vehicle_id(vehicle: str) -> str:
    if not (
        0 < len(vehicle.encode("utf-8")) <= MAX_KEY_BYTES
        and vehicle.isprintable()
        and vehicle.strip() == vehicle
    ):
        raise ConfigError(
            f"vehicle id {vehicle!r} must be 1..{MAX_KEY_BYTES} bytes of printable text "
            "without surrounding spaces"
        )
    return vehicle


def check_brand(brand: str, cfg: Config) -> str:
    from detector.core.brands import load_fleet, validate_slug

    # like train/evaluate/detect: a valid slug outside the brand map is its own platform
    fleet = load_fleet(cfg.fleet.brands_file) if cfg.fleet.brands_file else load_fleet()
    fleet.platform_of(validate_slug(brand))
    return brand


def load_recording(
    path: Path, fmt: str | None, specs: list, seed: int, channel: str | None = None
) -> np.ndarray:
    """One recording's frames (of ``channel``), ts-sorted, with every attack injected."""
    from replay.attacks import inject
    from replay.readers import read_frames

    frames = read_frames(path, fmt, channel)
    if len(frames) == 0:
        raise InputError(str(path), None, "no frames")
    frames = frames[np.argsort(frames["ts"], kind="stable")]
    for i, spec in enumerate(specs):
        frames, _ = inject(frames, spec, seed=seed + i)
    return frames


def build_streams(args: argparse.Namespace, brand: str) -> list:
    """[(vehicle, brand, frames)] for every file and copy, timestamps not yet rebased
    (but each recording starts at 0 when rebasing)."""
    from replay.attacks import AttackSpec
    from replay.publisher import fan_out

    specs = [AttackSpec.parse(s) for s in args.attack]  # validate before reading
    if args.vehicles < 1:
        raise ConfigError(f"--vehicles must be >= 1, got {args.vehicles}")
    if args.vehicle is not None and len(args.files) > 1:
        raise ConfigError("--vehicle names one vehicle: give exactly one FILE")
    if args.shift is not None and not (np.isfinite(args.shift) and 0 <= args.shift <= MAX_SPAN_S):
        raise ConfigError(f"--shift must be in [0, {MAX_SPAN_S:g}] s, got {args.shift}")
    if args.shift is not None and args.vehicles < 2:
        raise ConfigError("--shift spaces the copies of --vehicles N (N >= 2): give both")
    bases = [args.vehicle] if args.vehicle is not None else [f.stem for f in args.files]
    dupes = sorted({b for b in bases if bases.count(b) > 1})
    if dupes:
        raise ConfigError(f"two files would be the same vehicle {dupes[0]!r}: rename one")
    streams = []
    for path, base in zip(args.files, bases, strict=True):
        check_vehicle_id(base)
        frames = load_recording(path, args.format, specs, args.seed, args.channel)
        if args.rebase_time:
            frames["ts"] -= frames["ts"][0]
        span = float(frames["ts"][-1] - frames["ts"][0])
        shift = min(1.0, span / args.vehicles) if args.shift is None else args.shift
        for vehicle, copy in fan_out(frames, args.vehicles, base, shift):
            streams.append((check_vehicle_id(vehicle), brand, copy))
    return streams


def rebase(streams: list, speed: float | None, now: float) -> None:
    """Shift all streams (each starting at 0) in place; see the module doc."""
    end = max(float(f["ts"][-1]) for _, _, f in streams)
    offset = now - rebase_lag(end, speed)
    for _, _, frames in streams:
        frames["ts"] += offset


def run(args: argparse.Namespace) -> int:
    cfg = kafka_config(args)
    speed = speed_of(args)
    brand = check_brand(args.brand, cfg)
    streams = build_streams(args, brand)
    topic = args.topic or cfg.kafka.telemetry_topic
    if args.rebase_time:
        rebase(streams, speed, time.time())
    else:
        warning = check_timestamps(streams, cfg, time.time(), speed)
        if warning:
            print(f"canwatch replay: {warning}", file=sys.stderr)
    summary = stream_to_kafka(cfg, topic, streams, speed, args.encoding, args.connect_timeout)
    print(summary_line(summary, topic), flush=True)
    return 0
