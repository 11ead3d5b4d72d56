"""A bounded, order-independent sample of a long span of fleet traffic, for training.

``canwatch train --from-kafka`` reads a span that may hold far more frames than
fit in memory (hundreds of vehicle-hours). Training needs whole stretches of a
vehicle's bus, not scattered frames: inter-arrival times, payload steps and
window features are only right inside a contiguous stretch. So the span is cut
into blocks, one per (vehicle, ``floor(ts / block_s)``), and a block is kept or
dropped whole.

Which blocks stay: each has a priority, a hash of (vehicle, block number) that
does not depend on the order records arrive in. The sample holds the blocks of
lowest priority whose frames fit in ``max_frames`` (a bottom-k sample weighted
by size). Frames arrive a record at a time, so a block grows while it is held;
when the held frames exceed the budget, the held block of highest priority is
evicted and every block of that priority or higher is refused from then on (the
``cutoff`` only falls). A block below the final cutoff therefore never lost a
frame, and the final sample is the longest run of blocks in priority order that
fits the budget, whatever the order of arrival: uniform over vehicles and time,
reproducible, and everything when the span fits.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field

import numpy as np

from detector.core.schema import FRAME_DTYPE

#: Default block length: long enough that a block's edges (where consecutive-frame
#: statistics restart) are rare, short enough that a budget of a few million frames
#: spreads over the fleet: 60 s of a ~2,300 frames/s bus is ~140 k frames, so the
#: default budget holds ~30 blocks (300 s blocks held 5, i.e. 4-5 vehicles of 8).
BLOCK_S = 60.0
#: Small arrays of a block are joined into one every this many: a block of 60 s
#: arrives as ~600 records, whose array headers would otherwise cost as much as their frames.
JOIN_PARTS = 64


def block_priority(vehicle: str, block: int) -> int:
    """A deterministic 64-bit priority of a block (lower is kept first)."""
    digest = hashlib.blake2b(f"{vehicle}\x00{block}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little")


@dataclass
class _Block:
    priority: int
    chunks: list[np.ndarray] = field(default_factory=list)  # joined parts
    parts: list[np.ndarray] = field(default_factory=list)  # recent records' frames
    frames: int = 0

    def add(self, frames: np.ndarray) -> None:
        self.parts.append(frames)
        self.frames += len(frames)
        if len(self.parts) >= JOIN_PARTS:
            self.chunks.append(np.concatenate(self.parts))
            self.parts = []

    def array(self) -> np.ndarray:
        arrays = self.chunks + self.parts
        out = np.concatenate(arrays) if arrays else np.zeros(0, FRAME_DTYPE)
        return out[np.argsort(out["ts"], kind="stable")]


@dataclass(frozen=True)
class Stretch:
    """Consecutive kept blocks of one vehicle: one recording to train on."""

    vehicle: str
    first_block: int
    last_block: int
    frames: np.ndarray  # time-ordered

    @property
    def start(self) -> float:
        return float(self.frames["ts"][0])

    @property
    def end(self) -> float:
        return float(self.frames["ts"][-1])


class BlockSample:
    """Whole (vehicle, block) stretches of a stream of frames, at most ``max_frames`` held."""

    def __init__(self, max_frames: int, block_s: float = BLOCK_S) -> None:
        if max_frames < 1:
            raise ValueError(f"max_frames must be >= 1, got {max_frames}")
        if not block_s > 0:
            raise ValueError(f"block_s must be > 0, got {block_s}")
        self.max_frames = int(max_frames)
        self.block_s = float(block_s)
        self.cutoff = 1 << 64  # blocks of this priority or higher are refused
        self.blocks: dict[tuple[str, int], _Block] = {}
        self._by_priority: list[tuple[int, str, int]] = []  # max-heap (negated) of held blocks
        self.held = 0  # frames held now
        self.seen = 0  # frames offered
        self.evicted_blocks = 0

    def add(self, vehicle: str, frames: np.ndarray) -> None:
        """Offer one vehicle's frames (FRAME_DTYPE; any order); they are copied if kept."""
        if not len(frames):
            return
        self.seen += len(frames)
        block = np.floor(frames["ts"] / self.block_s).astype(np.int64)
        if block[0] == block[-1] and (len(block) < 3 or (block == block[0]).all()):
            self._offer(vehicle, int(block[0]), frames)
            return
        order = np.argsort(block, kind="stable")
        block, frames = block[order], frames[order]
        cuts = np.flatnonzero(np.diff(block)) + 1
        for part, b in zip(np.split(frames, cuts), block[np.r_[0, cuts]].tolist(), strict=True):
            self._offer(vehicle, b, part)

    def _offer(self, vehicle: str, block: int, frames: np.ndarray) -> None:
        key = (vehicle, block)
        held = self.blocks.get(key)
        if held is None:
            priority = block_priority(vehicle, block)
            if priority >= self.cutoff:
                return
            held = self.blocks[key] = _Block(priority)
            heapq.heappush(self._by_priority, (-priority, vehicle, block))
        held.add(frames.copy())  # never a view: it would pin the whole poll's buffer
        self.held += len(frames)
        while self.held > self.max_frames and self._by_priority:
            self._evict()

    def _evict(self) -> None:
        neg, vehicle, block = heapq.heappop(self._by_priority)
        gone = self.blocks.pop((vehicle, block))
        self.held -= gone.frames
        self.cutoff = min(self.cutoff, -neg)
        self.evicted_blocks += 1

    def stretches(self) -> list[Stretch]:
        """Held blocks as stretches (consecutive blocks of a vehicle joined), by vehicle
        and time."""
        out: list[Stretch] = []
        for vehicle, numbers in _runs(sorted(self.blocks)):
            arrays = [self.blocks[(vehicle, b)].array() for b in numbers]
            out.append(Stretch(vehicle, numbers[0], numbers[-1], np.concatenate(arrays)))
        return out


def _runs(keys: list[tuple[str, int]]) -> list[tuple[str, list[int]]]:
    """Sorted (vehicle, block) keys as runs of consecutive blocks per vehicle."""
    runs: list[tuple[str, list[int]]] = []
    for vehicle, block in keys:
        if runs and runs[-1][0] == vehicle and runs[-1][1][-1] == block - 1:
            runs[-1][1].append(block)
        else:
            runs.append((vehicle, [block]))
    return runs
