"""``canwatch train --from-kafka``: a platform model from a span of the telemetry topic.

What it reads. Every partition of ``kafka.telemetry_topic``, the records whose
Kafka timestamp lies in ``[since, until)``, by assign and seek: no consumer
group, nothing committed, so the detectors reading the topic never notice. The
first offset of the span on each partition comes from ``offsets_for_times``,
checked against the records themselves (Tansu answers every timestamp with
offset 0, and its ListOffsets latest under-reports); when the answer does not
hold, the boundary is found by a binary search on record timestamps. The end
of a partition is the fetch high watermark of a probe, never ListOffsets alone.
Records are decoded by the service's decoder (``wire.decode_records``). The
model serves every brand of its platform (jeep, fiat and fiat-professional share
cusw), so it learns from all of them; records of other platforms' brands are
skipped unread, records that do not decode are counted in
the manifest, and frames outside ``[since, until)`` in event time are dropped.

What it leaves out. Vehicles with an incident in the span (the whole incident
topic is read): the vehicle's frames from the incident's ``first_seen - margin``
to ``last_seen + margin`` (to the end of the span while it is open) are labelled as
attack frames, so training leaves them and the stream windows they touch out
(``detector.model.training.Recording``). Incidents name vehicles by pseudonym
when the config pseudonymises; record keys are mapped with the same key.

Memory. Frames are kept in whole (vehicle, 60 s) blocks under a frame budget
(``detector.model.span_sample``): below it everything is kept and the model is
the one ``canwatch train`` fits from the same frames in files, one recording per
vehicle stretch, drive = vehicle; above it a reproducible uniform sample of
blocks is kept and the manifest says how many frames were read and used.
"""

from __future__ import annotations

import json
import math
import time
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import numpy as np

from detector.cli._progress import bar
from detector.cli._span_offsets import (
    SpanError,
    decode_polled,
    log_bounds,
    open_consumer,
    partitions_of,
    read_offsets,
    span_offsets,
)
from detector.core.config import Config
from detector.core.errors import DecodeError
from detector.core.fd import to_lanes
from detector.model.span_sample import BLOCK_S, BlockSample, Stretch

#: Default frame budget: ~100 MB of frames (24 B each), a few hundred MB while fitting.
MAX_FRAMES = 4_000_000
#: Default margin around an incident, seconds.
EXCLUDE_MARGIN_S = 60.0
#: Default lateness: records are read whose Kafka timestamps lie this far outside the span
#: (gateways with skewed clocks, a backlog uploaded after a connectivity gap, producers
#: stamping send time); their frames still count only inside it, by event time.
LATENESS_S = 900.0
#: Default wait for the broker to answer.
CONNECT_TIMEOUT_S = 5.0
#: How long to wait for the incident topic to show in metadata before taking it as absent.
INCIDENT_TOPIC_WAIT_S = 2.0
#: The latest time a span may name: 9999-12-31T23:59:59Z (Python's dates end there).
LATEST_TIME = 253402300799.0


# -- times (pure) ------------------------------------------------------------------------


def parse_time(text: str, flag: str) -> float:
    """Epoch seconds from ISO 8601 (no zone = UTC) or from a number of epoch seconds."""
    text = text.strip()
    try:
        value = float(text)
    except ValueError:
        try:
            when = datetime.fromisoformat(text.replace("z", "Z"))
        except ValueError:
            raise SpanError(
                f"{flag}: cannot read {text!r} as a time (ISO 8601 such as "
                "2026-12-06T10:00:00Z, or epoch seconds)"
            ) from None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        value = when.timestamp()
    if not math.isfinite(value) or value < 0:
        raise SpanError(f"{flag}: {text!r} is not a time after 1970")
    if value > LATEST_TIME:
        raise SpanError(
            f"{flag}: {text!r} lies after the year 9999 (epoch seconds are wanted, not "
            "milliseconds)"
        )
    return value


def iso(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def check_span(since: float, until: float) -> None:
    if until <= since:
        raise SpanError(f"--until {iso(until)} is not after --since {iso(since)}")


def to_ms(t: float) -> int:
    """The first whole millisecond at or after ``t``: a record of timestamp ``ms`` is at
    or after ``t`` exactly when ``ms >= to_ms(t)``."""
    return math.ceil(t * 1000)


# -- incidents (pure) --------------------------------------------------------------------


@dataclass(frozen=True)
class Exclusion:
    vehicle: str  # as incidents name it (the pseudonym when the config pseudonymises)
    incident_id: str
    first_seen: float
    last_seen: float
    attack: str
    start: float  # first_seen - margin
    end: float  # last_seen + margin


def fold_incident(spans: dict[str, list], inc: Any, brands: frozenset[str]) -> None:
    """Fold one incident record of one of ``brands`` into ``spans`` (incident id -> [vehicle,
    earliest first_seen, latest last_seen, suspected attack, whether its latest record
    closed it]): records of one incident are its updates, each the incident as it stood
    then, in order (one vehicle's are on one partition)."""
    if not isinstance(inc, dict) or (inc.get("brand") is not None and inc["brand"] not in brands):
        return
    try:
        iid, vehicle = str(inc["incident_id"]), str(inc["vehicle"])
        first, last = float(inc["first_seen"]), float(inc["last_seen"])
    except (KeyError, TypeError, ValueError):
        return  # not an incident record: nothing it could exclude
    attack = str(inc.get("suspected_attack", "unknown"))
    closed = inc.get("status") == "closed"
    known = spans.get(iid)
    if known is None:
        spans[iid] = [vehicle, first, last, attack, closed]
    else:  # in any order: its records may sit on two partitions (the topic grew)
        known[1:] = min(known[1], first), max(known[2], last), attack, known[4] or closed


def exclusions_from(
    spans: dict[str, list], since: float, until: float, margin: float
) -> dict[str, list[Exclusion]]:
    """Per vehicle, the intervals to leave out: each folded incident whose interval
    widened by ``margin`` meets ``[since, until)``. One not closed yet runs on: its
    last record says only how far it had got (an update goes out at a power of two of
    its windows, so a long attack's last one may be far behind)."""
    out: dict[str, list[Exclusion]] = defaultdict(list)
    for iid, (vehicle, first, last, attack, closed) in sorted(
        spans.items(), key=lambda kv: kv[1][1]
    ):
        start, end = first - margin, (last + margin if closed else max(until, last + margin))
        if start < until and end >= since:
            out[vehicle].append(Exclusion(vehicle, iid, first, last, attack, start, end))
    return dict(out)


def mark_excluded(frames: np.ndarray, intervals: list[Exclusion], counts: dict[str, int]) -> None:
    """Label (in place) the frames inside any of ``intervals`` as attack frames, and
    count them per incident."""
    ts = frames["ts"]
    for ex in intervals:
        inside = (ts >= ex.start) & (ts <= ex.end)
        n = int(np.count_nonzero(inside))
        if n:
            frames["label"][inside] = 1
            counts[ex.incident_id] = counts.get(ex.incident_id, 0) + n


def brand_header(headers: Any) -> bytes | None:
    """The raw ``brand`` header of a record, or None when it has none readable."""
    try:
        for name, raw in headers or ():
            if name == "brand" and isinstance(raw, bytes | bytearray):
                return bytes(raw).strip()
    except (TypeError, ValueError):
        pass
    return None


# -- reading the span ------------------------------------------------------------------


@dataclass
class Tally:
    records: int = 0  # records in the span, all brands
    other_brands: int = 0  # of other platforms
    undecodable: int = 0
    brand_records: int = 0  # of the platform's brands
    frames_read: int = 0  # of the platform's brands, in the span
    frames_outside: int = 0  # of the platform's brands, in records read, outside the span
    vehicles: set[str] = field(default_factory=set)
    excluded_frames: dict[str, int] = field(default_factory=dict)  # incident id -> frames
    read_s: float = 0.0  # wall time of reading incidents and the span


def read_incidents(
    cfg: Config,
    consumer: Any,
    brands: frozenset[str],
    since: float,
    until: float,
    margin: float,
) -> tuple[dict[str, list[Exclusion]], str | None]:
    """Exclusions from the incident topic, and a note when there is no incident topic.

    The whole topic is read (incidents are few beside telemetry): an incident still
    open is updated only when it changes or its windows reach a power of two, so its
    latest record may be stamped long before the span, however long it has run."""
    topic = cfg.kafka.incident_topic
    try:
        tps = partitions_of(consumer, topic, cfg.kafka.bootstrap, INCIDENT_TOPIC_WAIT_S)
    except SpanError:
        return {}, f"incident topic {topic!r} does not exist: no vehicle left out"
    ranges = {}
    for tp in tps:
        start, end = log_bounds(consumer, tp)
        ranges[tp] = (start, end)
    spans: dict[str, list] = {}  # folded as read: the topic's records are never all held
    for records in read_offsets(consumer, ranges):
        for r in records:
            try:
                fold_incident(spans, json.loads(r.value), brands)
            except (TypeError, ValueError):
                continue  # `canwatch incidents` reports records that are not incidents
    return exclusions_from(spans, since, until, margin), None


class SpanIntake:
    """Records of the span into the sample: decoded as the service decodes them, the
    platform's brands only, named as the service names vehicles, excluded intervals
    labelled."""

    def __init__(
        self,
        cfg: Config,
        brands: frozenset[str],
        since: float,
        until: float,
        exclusions: dict[str, list[Exclusion]],
        sample: BlockSample,
        lateness: float = 0.0,
    ) -> None:
        from detector.incidents.privacy import load_key

        self.cfg, self.brands, self.since, self.until = cfg, brands, since, until
        self.brand_bytes = {b.encode() for b in brands}
        self.since_ms, self.until_ms = to_ms(since - lateness), to_ms(until + lateness)
        self.exclusions, self.sample = exclusions, sample
        self.key = load_key(cfg.privacy)
        self.names: dict[str, str] = {}
        self.tally = Tally()

    def name(self, vehicle: str) -> str:
        from detector.incidents.privacy import pseudonym

        known = self.names.get(vehicle)
        if known is None:
            known = self.names[vehicle] = (
                vehicle if self.key is None else pseudonym(self.key, vehicle)
            )
        return known

    def take(self, records: list) -> None:
        from detector.transport.kafka_salvage import UnreadableRecord

        t = self.tally
        mine = []
        for r in records:
            if type(r) is UnreadableRecord:  # no timestamp (-1): its offsets are in the span
                t.records += 1
                t.undecodable += r.problem.records(r.offset)
                continue
            if not self.since_ms <= r.timestamp < self.until_ms:
                continue  # timestamps out of order around the span's edges
            t.records += 1
            b = brand_header(r.headers)
            if b is not None and b not in self.brand_bytes:
                t.other_brands += 1  # skipped unread
                continue
            mine.append(r)
        decoded = decode_polled(mine, self.cfg)
        for batch in decoded:
            if isinstance(batch, DecodeError):
                t.undecodable += 1
                continue
            if batch.brand not in self.brands:
                t.other_brands += 1
                continue
            t.brand_records += 1
            frames = to_lanes(batch.frames)  # FD frames as lanes, as the service scores them
            ts = frames["ts"]
            if ts[0] < self.since or ts[-1] >= self.until:
                frames = frames[(ts >= self.since) & (ts < self.until)]
                t.frames_outside += len(ts) - len(frames)
            if not len(frames):
                continue
            vehicle = self.name(batch.vehicle)
            t.vehicles.add(vehicle)
            t.frames_read += len(frames)
            intervals = self.exclusions.get(vehicle)
            if intervals:
                frames = frames.copy()  # labels are written: never into the poll's buffer
                mark_excluded(frames, intervals, t.excluded_frames)
            self.sample.add(vehicle, frames)


def read_span(
    cfg: Config,
    brands: list[str],
    since: float,
    until: float,
    *,
    margin: float = EXCLUDE_MARGIN_S,
    lateness: float = LATENESS_S,
    max_frames: int = MAX_FRAMES,
    block_s: float = BLOCK_S,
    connect_timeout_s: float = CONNECT_TIMEOUT_S,
) -> tuple[list[Stretch], dict]:
    """The stretches of traffic of ``brands`` (a platform's) in ``[since, until)`` to
    train on, and the ``source`` part of the model's training summary."""
    from kafka.errors import KafkaError

    from detector.cli.replay import quiet_kafka
    from detector.transport.kafka_records import parse_batches_compiled

    check_span(since, until)
    wanted = frozenset(brands)
    parse_batches_compiled()  # a broken batch becomes an UnreadableRecord, never a loop
    topic = cfg.kafka.telemetry_topic
    began = time.monotonic()
    with quiet_kafka():
        consumer = open_consumer(cfg, connect_timeout_s)
        try:
            exclusions, note = read_incidents(cfg, consumer, wanted, since, until, margin)
            tps = partitions_of(consumer, topic, cfg.kafka.bootstrap, connect_timeout_s)
            ranges = span_offsets(consumer, tps, to_ms(since - lateness), to_ms(until + lateness))
            sample = BlockSample(max_frames, block_s)
            intake = SpanIntake(cfg, wanted, since, until, exclusions, sample, lateness)
            total = sum(hi - lo for lo, hi in ranges.values())
            with bar(f"reading {topic}", total, "record", unit_scale=True) as shown:
                for records in read_offsets(consumer, ranges):
                    intake.take(records)
                    shown.update(len(records))
                    shown.set_postfix_str(
                        f"{intake.tally.frames_read:,} frames, {sample.held:,} held", refresh=False
                    )
        except KafkaError as exc:  # the broker went away or refused a request mid-way
            raise SpanError(
                f"Kafka at {cfg.kafka.bootstrap}: {type(exc).__name__}: {exc}"
            ) from None
        finally:
            consumer.close(autocommit=False)
    tally = intake.tally
    tally.read_s = time.monotonic() - began
    where = f"{topic} between {iso(since)} and {iso(until)}"
    if tally.records == 0:
        raise SpanError(f"no records on {where} (span empty)")
    if tally.frames_read == 0:
        raise SpanError(
            f"no {'/'.join(brands)} traffic on {where} ({tally.records} records: "
            f"{tally.other_brands} of other platforms, {tally.undecodable} undecodable)"
        )
    check_incident_names(exclusions, tally.vehicles, intake.key is not None)
    stretches = sample.stretches()
    if not stretches:
        raise SpanError(
            f"--max-frames {max_frames} holds no whole {block_s:g} s block of a vehicle: raise it"
        )
    return stretches, source_summary(cfg, brands, since, until, ranges, tally, sample, stretches,
                                     exclusions, margin, lateness, note)  # fmt: skip


def check_incident_names(
    exclusions: dict[str, list[Exclusion]], vehicles: set[str], keyed: bool
) -> None:
    """The incidents' vehicles and the telemetry's are named alike. The detectors may
    pseudonymise (``p-`` ids) where this config does not, or the other way round: then no
    incident matches a vehicle, and the attacks would train as benign traffic."""
    from detector.incidents.privacy import PREFIX

    unmatched = [v for v in exclusions if v not in vehicles]
    if not unmatched or any(v in vehicles for v in exclusions):
        return
    pseudonymous = all(v.startswith(PREFIX) for v in unmatched)
    if pseudonymous != keyed:
        how = "pseudonymous" if pseudonymous else "raw"
        raise SpanError(
            f"the incidents in the span name {how} vehicle ids ({unmatched[0]!r}) and the "
            f"telemetry is read {'with' if keyed else 'without'} a pseudonymisation key: "
            "configure privacy.* as the detectors were, or no incident's frames are left out"
        )


def source_summary(
    cfg: Config,
    brands: list[str],
    since: float,
    until: float,
    ranges: dict,
    tally: Tally,
    sample: BlockSample,
    stretches: list[Stretch],
    exclusions: dict[str, list[Exclusion]],
    margin: float,
    lateness: float,
    note: str | None,
) -> dict:
    """What the manifest says about where the training frames came from."""
    used = sum(len(s.frames) for s in stretches)
    # what training leaves out of them: the incidents' intervals (see mark_excluded)
    labelled = sum(int(np.count_nonzero(s.frames["label"])) for s in stretches)
    left_out = [
        {
            "vehicle": ex.vehicle,
            "incident_id": ex.incident_id,
            "suspected_attack": ex.attack,
            "first_seen": ex.first_seen,
            "last_seen": ex.last_seen,
            "from": round(ex.start, 3),
            "to": round(ex.end, 3),
            "frames": tally.excluded_frames.get(ex.incident_id, 0),
            "reason": f"incident in the span, +/- {margin:g} s",
        }
        for intervals in exclusions.values()
        for ex in intervals
        if ex.vehicle in tally.vehicles
    ]
    out = {
        "kind": "kafka",
        "topic": cfg.kafka.telemetry_topic,
        "incident_topic": cfg.kafka.incident_topic,
        "brands": list(brands),
        "since": iso(since),
        "until": iso(until),
        "since_epoch": since,
        "until_epoch": until,
        "partitions": [
            {"partition": tp.partition, "first_offset": lo, "end_offset": hi}
            for tp, (lo, hi) in sorted(ranges.items(), key=lambda kv: kv[0].partition)
        ],
        "records": tally.records,
        "records_of_brands": tally.brand_records,
        "records_other_brands": tally.other_brands,
        "records_undecodable": tally.undecodable,
        "vehicles_seen": len(tally.vehicles),
        "vehicles": sorted({s.vehicle for s in stretches}),
        "frames_read": tally.frames_read,
        "frames_outside_span": tally.frames_outside,
        "frames_used": used,
        "frames_in_incidents": labelled,
        "read_s": round(tally.read_s, 1),
        "sampled": sample.held < sample.seen,  # frames refused or evicted by the budget
        "max_frames": sample.max_frames,
        "block_s": sample.block_s,
        "blocks_used": len(sample.blocks),
        "blocks_evicted_by_budget": sample.evicted_blocks,
        "stretches": [
            {"vehicle": s.vehicle, "from": iso(s.start), "to": iso(s.end), "frames": len(s.frames)}
            for s in stretches
        ],
        "exclude_margin_s": margin,
        "lateness_s": lateness,
        "excluded": left_out,
    }
    if note:
        out["note"] = note
    return out
