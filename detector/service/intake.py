"""Intake: a poll's Kafka records into (vehicle, brand, frames) batches to score.

Records are decoded as one (``wire.decode_records``); each that fails canwatch's
decoding, that the Kafka record format could not describe, or whose brand has no
model loaded is dead-lettered. Each good record is entered in the offset ledger
(its offset, vehicle, newest and oldest event time: what a restart needs, and
where an incident's frames are), its vehicle marked as seen, and
counted per brand once per poll. With pseudonymisation on, vehicles are named by
their pseudonym from here on.

Kept apart from the loop because it is the one per-record pass of the service:
its bookkeeping is per record, so it is written once, as one loop.
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

from detector.core.config import DetectionConfig
from detector.core.errors import DecodeError
from detector.core.fd import to_lanes
from detector.incidents.privacy import pseudonym
from detector.model.pipeline import Scorer
from detector.service.activity import Activity
from detector.service.dead_letters import DeadLetters
from detector.service.metrics import DetectorMetrics
from detector.service.offset_ledger import OffsetLedger
from detector.transport.kafka_salvage import UnreadableRecord
from detector.transport.wire import decode_records

NO_MODEL = "no_model"


class Intake:
    def __init__(
        self,
        detection: DetectionConfig,
        scorer: Scorer,
        known_brands: Callable[[], set[str]],
        privacy_key: bytes | None,
        dead_letters: DeadLetters,
        ledger: OffsetLedger,
        activity: Activity,
        metrics: DetectorMetrics,
    ) -> None:
        self.detection = detection
        self.scorer = scorer
        self.known_brands = known_brands
        self.privacy_key = privacy_key
        self.dead_letters = dead_letters
        self.ledger = ledger
        self.activity = activity
        self.metrics = metrics
        self.newest: dict = {}  # tp -> newest event time processed (the watchdog's)

    def decode(self, polled: dict) -> tuple[list, list]:
        """A poll's records → (vehicle, brand, frames) batches, and the futures of the
        dead letters sent for the rest."""
        batches, futures = [], []
        now = time.time()
        det = self.detection
        records = [(tp, r) for tp, rs in polled.items() for r in rs]
        unreadable = [r for _, r in records if type(r) is UnreadableRecord]
        if unreadable:  # what the Kafka record format itself could not describe
            records = [(tp, r) for tp, r in records if type(r) is not UnreadableRecord]
            futures += [self.dead_letters.unreadable(r) for r in unreadable]
        results = decode_records(
            [(r.key, r.value, r.headers) for _, r in records],
            known_brands=self.known_brands(),
            now=now,
            max_future_s=det.max_future_s,
            min_ts=det.min_ts,
        )
        # tp -> offsets, vehicle numbers, newest and oldest ts (the ledger's, per record)
        held: dict = defaultdict(lambda: ([], [], [], []))
        per_brand: dict[str, list[int]] = defaultdict(lambda: [0, 0])
        seen_at = self.activity.clock(time.monotonic())
        last_seen = self.activity.last_seen
        modelled: dict[str, bool] = {}  # per brand, per vehicle: a poll repeats a few
        alias: dict[str, str] = {}
        latest: dict[str, tuple] = {}  # vehicle -> (number, tp, brand) of its last record
        self.ledger.read_to(polled)
        for (tp, r), b in zip(records, results, strict=True):
            if not isinstance(b, DecodeError):
                # consumed, modelled or not: CanwatchBrandWithoutModel names the brand
                counts = per_brand[b.brand]
                counts[0] += 1
                counts[1] += len(b.frames)
                ok = modelled.get(b.brand)
                if ok is None:
                    ok = modelled[b.brand] = self.scorer.platform_for(b.brand) is not None
                if not ok:
                    b = DecodeError(NO_MODEL, f"no model loaded for brand {b.brand!r}")
            if isinstance(b, DecodeError):
                futures.append(self.dead_letters.refused(r, b))
                continue
            vehicle = b.vehicle
            if self.privacy_key is not None:
                vehicle = alias.get(b.vehicle) or alias.setdefault(
                    b.vehicle, pseudonym(self.privacy_key, b.vehicle)
                )
            batches.append((vehicle, b.brand, to_lanes(b.frames)))  # FD frames as lanes
            last = latest.get(vehicle)
            if last is None or last[1] is not tp or last[2] != b.brand:  # else all as before
                num = self.ledger.track(vehicle, b.brand, tp)
                last = latest[vehicle] = (num, tp, b.brand)
                last_seen[vehicle] = (b.brand, seen_at)
            offsets, nums, tss, oldest = held[tp]
            offsets.append(r.offset)
            nums.append(last[0])
            tss.append(b.newest)
            oldest.append(b.oldest)
        self._count(records, held, per_brand, now)
        return batches, futures

    def _count(self, records: list, held: dict, per_brand: dict, now: float) -> None:
        """A poll's good records into the ledger, and its volumes and event-time lag
        into the metrics."""
        newest: dict = {}
        for tp, (offsets, nums, tss, oldest) in held.items():
            self.ledger.hold(tp, offsets, nums, tss, oldest)
            newest[tp] = max(tss)
        self.metrics.bytes_consumed.inc(sum(len(r.value or b"") for _, r in records))
        for brand, (n_records, n_frames) in per_brand.items():
            bm = self.metrics.brand(brand)
            bm.records.inc(n_records)
            bm.frames.inc(n_frames)
        for tp, ts in newest.items():
            self.newest[tp] = ts  # the watchdog keeps the event-time lag current from it
            self.metrics.set_partition_lag(tp.partition, max(now - ts, 0.0), None)
