"""Committing offsets to Kafka: when, with what back-off, and where a rewind resumes.

The ledger (``detector.service.offset_ledger``) says how far a commit may go;
this says when one is sent. Only acknowledged polls are committed, at most once
per ``kafka.commit_interval_s`` (a sync commit per poll costs a broker round
trip per few hundred records; a crash re-reads at most that much more), each
bounded by ``COMMIT_TIMEOUT_MS``. A failed commit (broker away, rebalance) is
logged and retried with a later batch, not retried at once: each try blocks.

It also remembers, per partition, where the last acknowledged poll left off:
the offsets a rewind seeks back to, as a restart would.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable

from kafka.errors import KafkaError
from kafka.structs import OffsetAndMetadata

from detector.core.config import KafkaConfig

log = logging.getLogger("canwatch.detect")
COMMIT_TIMEOUT_MS = 2000
RETRY_AFTER_S = 2.0  # after a failed commit: each try blocks up to COMMIT_TIMEOUT_MS


class Commits:
    def __init__(self, kafka: KafkaConfig) -> None:
        self.kafka = kafka
        self.retry_after = 0.0  # no commit attempt before (after a failed one)
        self.last = 0.0  # monotonic time of the last commit attempt
        self.uncommitted = False  # acknowledged polls whose offsets wait for the next commit
        self.resume_at: dict = {}  # tp -> where a restart would resume (last acked poll)

    def acknowledged(self, safe: dict) -> None:
        """A poll's output is acknowledged: its ``safe`` offsets (tp -> offset) may be
        committed, and are where a rewind resumes."""
        self.resume_at.update(safe)
        self.uncommitted = True

    def due(self, now: bool = False) -> bool:
        """Anything acknowledged to commit, and (unless ``now``) the interval passed."""
        due = time.monotonic() - self.last >= self.kafka.commit_interval_s
        return self.uncommitted and (now or due)

    def commit(self, consumer, safe: dict, timeout_ms: int = COMMIT_TIMEOUT_MS) -> bool:
        """Commit the ``safe`` offsets of the partitions ``consumer`` still owns; True
        when the broker took some (a sign of life). A failure is logged, and the
        next batch commits them (or later ones) instead."""
        self.last = time.monotonic()
        heard = False
        if safe and time.monotonic() >= self.retry_after:
            assigned = consumer.assignment()
            offsets = {tp: OffsetAndMetadata(o, "", -1) for tp, o in safe.items() if tp in assigned}
            if offsets:
                try:
                    consumer.commit(offsets, timeout_ms=timeout_ms)
                except KafkaError as exc:
                    # not again for a while: each try blocks up to COMMIT_TIMEOUT_MS
                    self.retry_after = time.monotonic() + RETRY_AFTER_S
                    log.warning(
                        "offset commit to %s failed (%r); retried with a later batch",
                        self.kafka.bootstrap,
                        exc,
                    )
                    return False
                heard = True
            self.uncommitted = False
        return heard

    def forget(self, partitions: Iterable) -> None:
        """Partitions no longer ours: a rewind does not seek them."""
        for tp in partitions:
            self.resume_at.pop(tp, None)
