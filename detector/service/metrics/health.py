"""Whether the detector is alive and well: up and ready, stalled polls, the build
running, and every record it could not use (dead letters, unreadable records)."""

from __future__ import annotations

import importlib.metadata

from prometheus_client import CollectorRegistry

from detector.service.metrics.families import Families, check_label

#: Why a fetched record (or a span of records) could not be read at all (the
#: Kafka record format, not canwatch's wire format): ``detector.transport.kafka_salvage``.
UNREADABLE_REASONS = (
    "bad_crc",
    "bad_batch",
    "bad_codec",
    "bad_control",
    "bad_record",
    "bad_header_name",
)
DEAD_LETTER_REASONS = (
    "missing_key",
    "bad_key",
    "missing_header",
    "unknown_content_type",
    "unknown_schema",
    "unknown_brand",
    "bad_header",
    "bad_magic",
    "truncated",
    "bad_length",
    "bad_json",
    "bad_shape",
    "bad_dlc",
    "bad_flags",
    "bad_id",
    "bad_timestamp",
    "too_large",
    "empty",
    "mismatch",
    "no_model",
    *UNREADABLE_REASONS,
)


def _version() -> str:
    try:
        return importlib.metadata.version("canwatch")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


class HealthMetrics:
    """Liveness, readiness, stalls and the build; dead letters and unreadable records."""

    def __init__(self, registry: CollectorRegistry) -> None:
        f = Families(registry)
        self.dead_letters = f.counter(
            "canwatch_dead_letters_total", "Records sent to the dead-letter topic.", ("reason",)
        )
        self.unreadable_records = f.counter(
            "canwatch_unreadable_records_total",
            "Offsets of fetched records that could not be read as Kafka records (each "
            "record, or span of records, is one dead letter), by reason.",
            ("reason",),
        )
        self.poll_stalled = f.gauge(
            "canwatch_poll_stalled_seconds",
            "Seconds since the poll loop last made progress while records wait (or since "
            "it last came round), as the watchdog sees it; 0 when not stalled.",
        )
        self.up = f.gauge("canwatch_up", "1 while the main loop runs.")
        self.ready = f.gauge(
            "canwatch_ready", "1 when connected to Kafka with models loaded, 0 while waiting."
        )
        self.build_info = f.gauge(
            "canwatch_build_info", "Build of the running detector.", ("version",)
        )
        self.build_info.labels(_version()).set(1)
        # Series that exist from the start, so rate()/increase() see their first
        # increment and alerts on them can fire.
        self._dead_letters = {r: self.dead_letters.labels(r) for r in DEAD_LETTER_REASONS}
        self._unreadable = {r: self.unreadable_records.labels(r) for r in UNREADABLE_REASONS}

    def dead_letter(self, reason: str, n: int = 1) -> None:
        self._dead_letters[check_label(reason, DEAD_LETTER_REASONS, "dead-letter reason")].inc(n)

    def unreadable(self, reason: str, offsets: int) -> None:
        """A record, or a span of ``offsets`` records, that could not be read at all."""
        self._unreadable[check_label(reason, UNREADABLE_REASONS, "unreadable reason")].inc(offsets)

    def set_up(self, up: bool) -> None:
        self.up.set(1 if up else 0)

    def set_ready(self, ready: bool) -> None:
        self.ready.set(1 if ready else 0)
