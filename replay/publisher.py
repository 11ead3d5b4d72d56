"""Paced publishing of recorded or simulated CAN traffic into the telemetry topic.

Each vehicle's frames are cut into records the way a telematics unit uploads
them (``max_span_s`` of traffic or ``max_frames`` frames, whichever comes
first), the records of all vehicles are merged by event time, and ``paced``
releases them in real time, ``speed`` times faster, or as fast as possible
(like python-can's ``MessageSync``). A record is due when its *last* frame
has happened: a gateway cannot upload a frame before it exists.
"""

from __future__ import annotations

import contextlib
import hashlib
import heapq
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from detector.core.errors import CanwatchError
from detector.transport.wire import MAX_FRAMES, encode_record

#: (vehicle id, brand slug, frames in FRAME_DTYPE)
Stream = tuple[str, str, np.ndarray]


class PublishError(CanwatchError):
    """The producer failed to deliver a record; nothing is silently dropped."""


@dataclass(frozen=True)
class Batch:
    due: float  # event time of the last frame
    vehicle: str
    brand: str
    frames: np.ndarray


@dataclass(frozen=True)
class PublishSummary:
    records: int
    frames: int
    bytes: int
    elapsed_s: float
    vehicles: int

    @property
    def frames_per_s(self) -> float:
        return self.frames / self.elapsed_s if self.elapsed_s > 0 else float("inf")


def chunk_bounds(ts: np.ndarray, max_frames: int = 500, max_span_s: float = 0.1) -> np.ndarray:
    """Start indices of consecutive chunks: each spans < ``max_span_s`` of time
    (aligned to ``max_span_s`` buckets from the first frame) and holds at most
    ``max_frames`` frames. ``ts`` must be sorted."""
    if len(ts) == 0:
        return np.zeros(0, dtype=np.int64)
    bucket = np.floor((ts - ts[0]) / max_span_s).astype(np.int64)
    starts = np.flatnonzero(np.r_[True, bucket[1:] != bucket[:-1]])
    # Split buckets holding more than max_frames frames into max_frames pieces.
    ends = np.r_[starts[1:], len(ts)]
    pieces = [np.arange(s, e, max_frames) for s, e in zip(starts, ends, strict=True)]
    return np.concatenate(pieces)


def batches(
    vehicle: str, brand: str, frames: np.ndarray, max_frames: int = 500, max_span_s: float = 0.1
) -> Iterator[Batch]:
    """One vehicle's frames (sorted by ts first) as upload-sized batches."""
    if not 1 <= max_frames <= MAX_FRAMES:
        raise ValueError(f"max_frames must be in [1, {MAX_FRAMES}], got {max_frames}")
    if not max_span_s > 0:
        raise ValueError(f"max_span_s must be > 0, got {max_span_s}")
    if len(frames) and (np.diff(frames["ts"]) < 0).any():
        frames = frames[np.argsort(frames["ts"], kind="stable")]
    starts = chunk_bounds(frames["ts"], max_frames, max_span_s)
    ends = np.r_[starts[1:], len(frames)].astype(np.int64)
    for s, e in zip(starts.tolist(), ends.tolist(), strict=True):
        chunk = frames[s:e]
        yield Batch(float(chunk["ts"][-1]), vehicle, brand, chunk)


def interleave(
    streams: Iterable[Stream], max_frames: int = 500, max_span_s: float = 0.1
) -> Iterator[Batch]:
    """All vehicles' batches merged in event-time order (by each batch's last frame)."""
    iters = [batches(v, b, f, max_frames, max_span_s) for v, b, f in streams]
    return heapq.merge(*iters, key=lambda batch: batch.due)


def paced(
    items: Iterable[Batch],
    speed: float | None,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[Batch]:
    """Yield each batch when it is due: event-time gaps divided by ``speed``;
    ``speed=None`` does not wait at all."""
    if speed is not None and not speed > 0:
        raise ValueError(f"speed must be > 0 or None, got {speed}")
    t0_event: float | None = None
    t0_wall = 0.0
    for item in items:
        if speed is not None:
            if t0_event is None:
                t0_event, t0_wall = item.due, clock()
            delay = t0_wall + (item.due - t0_event) / speed - clock()
            if delay > 0:
                sleep(delay)
        yield item


def fan_out(
    frames: np.ndarray, n: int, base_vehicle: str, time_shift_s: float
) -> list[tuple[str, np.ndarray]]:
    """``n`` copies of one recording as distinct vehicles, copy ``i`` shifted by
    ``i * time_shift_s`` seconds. Ids are ``<base>-<12 hex>``, deterministic and
    not guessable from each other; ``n == 1`` keeps ``base_vehicle`` unchanged."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    if n == 1:
        return [(base_vehicle, frames)]
    out = []
    for i in range(n):
        digest = hashlib.blake2s(f"{base_vehicle}/{i}".encode(), digest_size=6).hexdigest()
        copy = frames.copy()
        copy["ts"] += i * time_shift_s
        out.append((f"{base_vehicle}-{digest}", copy))
    if len({v for v, _ in out}) != n:  # 48-bit digests: practically never
        raise ValueError("vehicle id collision; choose another base_vehicle")
    return out


def _raise_failed(pending: deque[Any], topic: str, block: bool) -> None:
    """Pop completed futures from the left; raise on the first failed one.
    With ``block`` every future must be complete (call after flush)."""
    while pending and (block or pending[0].is_done):
        future = pending.popleft()
        if not future.is_done:
            raise PublishError(f"delivery to topic {topic!r} did not complete")
        if future.failed():
            raise PublishError(f"delivery to topic {topic!r} failed: {future.exception}")


def _flush(producer: Any, topic: str, timeout_s: float) -> None:
    try:
        producer.flush(timeout=timeout_s)
    except Exception as exc:  # KafkaTimeoutError: the broker never acknowledged
        raise PublishError(f"flushing records to topic {topic!r} failed: {exc}") from exc


def publish(
    producer: Any,
    topic: str,
    streams: Iterable[Stream],
    speed: float | None,
    encoding: str = "binary",
    *,
    max_frames: int = 500,
    max_span_s: float = 0.1,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    flush_timeout_s: float = 60.0,
) -> PublishSummary:
    """Publish every stream's frames to ``topic``, paced, and wait for delivery.

    Raises ``PublishError`` on the first failed send or delivery (after trying
    to flush what was already handed to the producer).
    """
    if encoding not in ("binary", "json"):
        raise ValueError(f"encoding must be 'binary' or 'json', got {encoding!r}")
    streams = list(streams)
    pending: deque[Any] = deque()
    records = frames = nbytes = 0
    start = clock()
    try:
        for batch in paced(interleave(streams, max_frames, max_span_s), speed, clock, sleep):
            key, value, headers = encode_record(batch.vehicle, batch.brand, batch.frames, encoding)
            try:
                pending.append(producer.send(topic, key=key, value=value, headers=headers))
            except Exception as exc:  # KafkaTimeoutError, buffer full, record too large
                raise PublishError(f"cannot send to topic {topic!r}: {exc}") from exc
            records += 1
            frames += len(batch.frames)
            nbytes += len(value)
            _raise_failed(pending, topic, block=False)
    except BaseException:
        # Hand over what was already sent (Ctrl-C should not lose it), then re-raise.
        with contextlib.suppress(Exception):
            producer.flush(timeout=flush_timeout_s)
        raise
    _flush(producer, topic, flush_timeout_s)
    _raise_failed(pending, topic, block=True)
    return PublishSummary(records, frames, nbytes, clock() - start, len({s[0] for s in streams}))
