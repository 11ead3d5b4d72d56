"""One incident and its frames, for ``canwatch incidents show`` and ``incidents export``.

An incident is found on the incident topic (read from the beginning, no
group, nothing committed, as ``canwatch incidents`` does) or in a JSON-lines
file (``canwatch evaluate --incidents-out``), by its id or an unambiguous
prefix of it; its last record is the whole incident (each record carries the
incident as it stood then).

Its frames come from where its ``provenance`` says:

- ``{"topic", "partition", "first_offset", "last_offset"}`` (the service):
  those records are read back, and the vehicle's frames kept. A margin
  before ``first_seen`` or after ``last_seen`` needs records outside that
  range: the partition is read backwards in growing steps until one of the
  vehicle's records starts at or before the margin's start (or the log
  starts), and forwards until one ends at or after the margin's end (or the
  log ends: the present). The vehicle is recognised by its record key, or by
  the key's pseudonym when the config pseudonymises (the incident names the
  pseudonym).
- ``{"file", "first_frame", "last_frame"}`` (``evaluate``): the file, one
  vehicle, is read again. Its path is as evaluate was given it: a relative one
  is tried as is, then relative to the ``--from`` file's directory.

Records the broker no longer has are an error (``SpanGone``), never a
shorter result: the range itself, and a margin running into a log start that
retention moved past it. Records of the vehicle that do not decode were
dead-lettered by the detector too; they are counted in a note, not exported.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from detector.cli._progress import bar
from detector.cli._span_offsets import decode_polled, partitions_of
from detector.core.config import Config
from detector.core.errors import CanwatchError
from detector.core.fd import to_fd
from detector.core.schema import FRAME_DTYPE, is_fd_array

#: Backward/forward reads start with this many records at least; each further step doubles.
MIN_STEP = 64


class ForensicsError(CanwatchError):
    """The incident, or its frames, cannot be had."""


def add_source_flags(p: argparse.ArgumentParser) -> None:
    from detector.cli.replay import add_kafka_flags

    p.add_argument("incident_id", metavar="ID", help="incident id (or an unambiguous prefix)")
    p.add_argument(
        "--from",
        dest="from_file",
        metavar="I.jsonl",
        help="read the incident from this JSON-lines file (e.g. `canwatch evaluate "
        "--incidents-out`) instead of the incident topic",
    )
    add_kafka_flags(p, topic_what="incident")


def source_flags(args: argparse.Namespace) -> list[str]:
    """The flags, as given, that said where the incident and its frames are: a command
    printed for the analyst to run next must read the same incident the same way."""
    out = []
    for flag, value in (
        ("--from", args.from_file),
        ("--config", args.config),
        ("--bootstrap", args.bootstrap),
        ("--topic", args.topic),
    ):
        if value:
            out += [flag, value]
    return out


# -- finding the incident (pure) ------------------------------------------------------


def find_incident(records: Iterable[Any], wanted: str) -> dict:
    """The last record of the incident whose id is ``wanted`` or starts with it."""
    wanted = wanted.strip().lower()
    if not wanted:
        raise ForensicsError("give an incident id")
    found: dict[str, dict] = {}
    for inc in records:
        if isinstance(inc, dict) and str(inc.get("incident_id", "")).lower().startswith(wanted):
            found[str(inc["incident_id"])] = inc  # later records supersede earlier ones
    if wanted in found:
        return found[wanted]
    if not found:
        raise ForensicsError(f"no incident {wanted!r}")
    if len(found) > 1:
        some = ", ".join(sorted(found)[:3])
        raise ForensicsError(f"{wanted!r} matches {len(found)} incidents ({some}...): give more")
    return next(iter(found.values()))


def incidents_in_file(path: str) -> Iterable[dict]:
    # utf-8-sig: a file saved by an editor that writes a BOM reads as the same lines
    with open(path, encoding="utf-8-sig") as fh:
        try:
            yield from _json_lines(path, fh)
        except UnicodeDecodeError:  # UTF-16 from a Windows tool, or not text at all
            raise ForensicsError(
                f"{path}: not UTF-8 text; give the JSON lines `canwatch evaluate "
                "--incidents-out` writes"
            ) from None


def _json_lines(path: str, lines: Iterable[str]) -> Iterable[Any]:
    for n, line in enumerate(lines, start=1):
        if line.strip():
            try:
                yield json.loads(line)
            except json.JSONDecodeError as exc:
                raise ForensicsError(f"{path}:{n}: not a JSON line ({exc.msg})") from None


def incidents_on_topic(args: argparse.Namespace) -> list[dict]:
    from detector.cli.incidents import READ_TIMEOUT_S, IncidentsError, _consumer, read_to_end

    consumer, topic = _consumer(args)
    try:
        tps = partitions_of(
            consumer, topic, "", max(args.connect_timeout, 1.0), error=IncidentsError
        )
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        for r in read_to_end(consumer, tps, READ_TIMEOUT_S):
            try:
                out.append(json.loads(r.value))
            except (TypeError, ValueError):
                continue  # not an incident record: `canwatch incidents` reports those
        return out
    finally:
        consumer.close(autocommit=False)


def load_incident(args: argparse.Namespace) -> dict:
    """The incident ``args`` name, its times checked (``incident_span``) before any use."""
    if args.from_file:
        inc = find_incident(incidents_in_file(args.from_file), args.incident_id)
    else:
        inc = find_incident(incidents_on_topic(args), args.incident_id)
    incident_span(inc)
    return inc


def incident_span(inc: dict) -> tuple[float, float]:
    """(first_seen, last_seen) as epoch seconds; a record that holds anything else (null,
    an ISO date a hand-edited or foreign record put there) is refused in one line."""
    out = []
    for name in ("first_seen", "last_seen"):
        value = inc.get(name)
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not (ok and math.isfinite(value)):
            raise ForensicsError(
                f"incident {inc.get('incident_id')}: {name} is {json.dumps(value)}, "
                "not epoch seconds"
            )
        out.append(float(value))
    if out[1] < out[0]:
        raise ForensicsError(
            f"incident {inc.get('incident_id')}: last_seen {out[1]} is before first_seen {out[0]}"
        )
    return out[0], out[1]


# -- its frames -------------------------------------------------------------------------


@dataclass
class Frames:
    frames: np.ndarray  # FRAME_DTYPE, time-ordered, in [start, end)
    start: float
    end: float
    where: str  # where they came from, for the analyst
    notes: list[str] = field(default_factory=list)


def provenance_of(inc: dict) -> dict:
    prov = inc.get("provenance")
    if not isinstance(prov, dict) or not ({"topic", "file"} & set(prov)):
        raise ForensicsError(
            f"incident {inc.get('incident_id')} has no provenance: it was raised by a detector "
            "that did not record where its frames are"
        )
    return prov


def in_span(frames: np.ndarray, start: float, end: float) -> np.ndarray:
    """The frames in [start, end), time-ordered: their timestamps, and the same to the
    microsecond (what candump and ASC write; BLF keeps more), both inside.

    A frame 0.4 us before ``end`` would be written as ``end`` itself, outside the
    span the export promises.
    """
    ts, us = frames["ts"], np.round(frames["ts"], 6)
    keep = frames[(ts >= start) & (ts < end) & (us >= start) & (us < end)]
    return keep[np.argsort(keep["ts"], kind="stable")]


def incident_frames(args: argparse.Namespace, cfg: Config, inc: dict, margin: float) -> Frames:
    """The incident vehicle's frames from ``first_seen - margin`` to ``last_seen + margin``."""
    if not (math.isfinite(margin) and margin >= 0):
        raise ForensicsError(f"--margin must be >= 0 s, got {margin}")
    prov = provenance_of(inc)
    first, last = incident_span(inc)
    start, end = first - margin, last + margin
    if "file" in prov:
        from replay.readers import read_frames

        path = capture_path(inc, str(prov["file"]), args.from_file)
        frames = read_frames(path, channel=prov.get("channel"))
        return Frames(in_span(frames, start, end), start, end, f"file {path}")
    return kafka_frames(cfg, prov, inc, start, end, args.connect_timeout)


def capture_path(inc: dict, named: str, from_file: str | None) -> str:
    """The capture a file provenance names. ``evaluate`` writes the path as it was given,
    so a relative one is relative to where evaluate ran, and the incidents file was
    written there too (typically): tried as given, then beside ``--from``."""
    if os.path.exists(named):
        return named
    beside = None
    home = os.path.dirname(from_file) if from_file else ""
    if home and not os.path.isabs(named):
        beside = os.path.join(home, named)
        if os.path.exists(beside):
            return beside
    also = f" (nor as {beside}, beside --from {from_file})" if beside else ""
    raise ForensicsError(
        f"incident {inc.get('incident_id')}: the capture its provenance names, {named}, "
        f"is not there{also}"
    )


def vehicle_matcher(cfg: Config, vehicle: str) -> Callable[[str], bool]:
    """Whether a record key names ``vehicle`` (by its pseudonym when the config has a key)."""
    from detector.incidents.privacy import load_key, pseudonym

    key = load_key(cfg.privacy)
    if key is None:
        return lambda name: name == vehicle
    return lambda name: pseudonym(key, name) == vehicle


@dataclass
class _Batch:
    offset: int
    frames: np.ndarray
    oldest: float
    newest: float


class _Reader:
    """The vehicle's batches on one partition, read by offset spans."""

    def __init__(
        self, consumer: Any, tp: Any, matches: Callable[[str], bool], cfg: Config, progress: Any
    ):
        self.consumer, self.tp, self.matches, self.cfg = consumer, tp, matches, cfg
        self.undecodable = 0
        self.progress = progress  # a bar (detector.cli._progress) counting records read

    def read(self, first: int, last: int, upto_end: bool = False) -> tuple[list, list[_Batch]]:
        """(all records, the vehicle's decoded batches) of offsets first..last."""
        from detector.transport.kafka_span import read_span

        records = read_span(self.consumer, self.tp, first, last, upto_end=upto_end)
        self.progress.update(len(records))
        return records, self.batches(records)

    def batches(self, records: list) -> list[_Batch]:
        mine = [r for r in records if self.matches(_key(r.key))]
        decoded = decode_polled(mine, self.cfg)
        out = []
        for r, b in zip(mine, decoded, strict=True):
            if isinstance(b, Exception):
                self.undecodable += 1
            else:
                out.append(_Batch(r.offset, b.frames, b.oldest, b.newest))
        return out

    def first_oldest(self, records: list) -> float | None:
        """Oldest event time of the first decodable record of any vehicle in ``records``."""
        for r in records[:16]:
            (b,) = decode_polled([r], self.cfg)
            if not isinstance(b, Exception):
                return b.oldest
        return None


def _key(key: Any) -> str:
    return key.decode("utf-8", "replace") if isinstance(key, bytes) else str(key)


def kafka_frames(
    cfg: Config, prov: dict, inc: dict, start: float, end: float, connect_timeout: float
) -> Frames:
    from kafka import KafkaConsumer, TopicPartition
    from kafka.errors import KafkaError

    from detector.transport.kafka_io import connect_error, consumer_config

    try:
        topic, part = str(prov["topic"]), int(prov["partition"])
        lo, hi = int(prov["first_offset"]), int(prov["last_offset"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ForensicsError(f"incident {inc.get('incident_id')}: bad provenance ({exc})") from None
    kwargs = consumer_config(cfg.kafka)
    kwargs.update(
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="none",  # an offset retention deleted raises; never jumps elsewhere
        bootstrap_timeout_ms=int(connect_timeout * 1000),
    )
    try:
        consumer = KafkaConsumer(**kwargs)
    except KafkaError as exc:
        raise connect_error(cfg.kafka, exc) from None
    tp = TopicPartition(topic, part)
    progress = bar(f"reading {topic}/{part}", unit="record")
    try:
        if not consumer.partitions_for_topic(topic) or part not in consumer.partitions_for_topic(
            topic
        ):
            raise ForensicsError(f"{topic} partition {part} does not exist (any more)")
        reader = _Reader(consumer, tp, vehicle_matcher(cfg, inc["vehicle"]), cfg, progress)
        _, core = reader.read(lo, hi)
        if not core or core[0].offset != lo:
            from detector.transport.kafka_span import SpanGone

            raise SpanGone(
                f"{topic} partition {part} offset {lo} no longer holds a record of "
                f"{inc['vehicle']} (the topic was re-created)"
            )
        first, last = incident_span(inc)
        span_s = max(last - first, 1.0)
        per_s = (hi - lo + 1) / span_s  # the partition's records a second, all vehicles
        oldest, newest = core[0].oldest, max(b.newest for b in core)
        before = _back(reader, lo, start, _step(per_s, oldest - start)) if start < oldest else []
        after = _forward(reader, hi, end, _step(per_s, end - newest)) if end > newest else []
    finally:
        progress.close()
        consumer.close(autocommit=False)
    batches = before + core + after
    parts = [b.frames for b in batches]
    if any(is_fd_array(p) for p in parts):  # schema-1 and schema-2 records of one vehicle
        parts = [to_fd(p) for p in parts]
    frames = np.concatenate(parts) if parts else np.zeros(0, FRAME_DTYPE)
    frames = in_span(frames, start, end)
    first = batches[0].offset if batches else lo
    last = batches[-1].offset if batches else hi
    out = Frames(frames, start, end, f"{topic} partition {part} offsets {first}-{last}")
    if reader.undecodable:
        out.notes.append(
            f"{reader.undecodable} record(s) of {inc['vehicle']} in that range do not decode "
            "(dead letters to the detector too): not exported"
        )
    return out


def _step(per_s: float, seconds: float) -> int:
    return max(MIN_STEP, int(per_s * max(seconds, 0.0) * 1.5) + 1)


def _back(reader: _Reader, lo: int, start: float, step: int) -> list[_Batch]:
    """The vehicle's batches before offset ``lo``, back to one that starts at or before
    ``start``, or to the log start (an error if retention moved it past ``start``)."""
    from detector.transport.kafka_span import SpanGone, log_start

    earliest = log_start(reader.consumer, reader.tp)
    out: list[_Batch] = []
    cur = lo
    first_ts = None
    while cur > earliest:
        a = max(earliest, cur - step)
        records, mine = reader.read(a, cur - 1)
        out = mine + out
        if any(b.oldest <= start for b in mine):
            return out
        if a == earliest:
            first_ts = reader.first_oldest(records)
        cur, step = a, step * 2
    if earliest > 0 and (first_ts is None or first_ts > start):
        raise SpanGone(
            f"{reader.tp.topic} partition {reader.tp.partition} now starts at offset {earliest}, "
            "after frames the margin asks for (retention deleted them): try a smaller --margin"
        )
    return out


def _forward(reader: _Reader, hi: int, end: float, step: int) -> list[_Batch]:
    """The vehicle's batches after offset ``hi``, up to one that ends at or after ``end``,
    or to the end of the log."""
    out: list[_Batch] = []
    cur = hi + 1
    while True:
        records, mine = reader.read(cur, cur + step - 1, upto_end=True)
        out += mine
        if not records or any(b.newest >= end for b in mine):
            return out
        cur, step = records[-1].offset + 1, step * 2
