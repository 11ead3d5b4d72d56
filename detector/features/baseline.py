"""What normal looks like, learned per CAN id of one platform from benign frames.

A ``Baseline`` is a dict-like bundle of plain numpy arrays (so it serialises
with skops without executing code) indexed by the id's slot in ``ids``. The
features are expressed relative to it: rates relative to the learned rate,
payloads against learned ranges, counters and checksums against the learned
behaviour. Learning runs at training time only; per-frame work is vectorized,
per-id work is a small loop over ids.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import NamedTuple

import numpy as np

from detector.core.schema import FRAME_DTYPE
from detector.features.counters import learn_counters
from detector.features.cross_signals import learn_cross_signals
from detector.features.words import words16

#: Byte pairs (i, j), i < j, for learned inter-byte relations.
PAIRS = np.array([(i, j) for i in range(8) for j in range(i + 1, 8)], dtype=np.int8)
#: A byte-pair difference range narrower than this is a learned coupling ...
TIGHT_PAIR_WIDTH = 48
#: ... between two bytes that each take at least this many values and change in
#: at least this share of consecutive frames: two bytes that hold still (state,
#: padding) keep a constant difference in every drive, but not the same one.
COUPLED_MIN_VALUES = 4
COUPLED_MIN_CHANGE = 0.01
#: 16-bit signals (a byte pair at any offset, either byte order) that move together
#: (four wheel speeds, a value and its copy): a difference whose robust range is at
#: most COUPLED_WORD_SHARE of each signal's own robust range, both signals spanning
#: COUPLED_WORD_MIN_RANGE and changing in COUPLED_WORD_MIN_CHANGE of frames. At most
#: MAX_COUPLINGS per id, the tightest; learned on at most COUPLING_SAMPLE frames.
MAX_COUPLINGS = 4
COUPLED_WORD_SHARE = 0.25
COUPLED_WORD_MIN_RANGE = 64
COUPLED_WORD_MIN_CHANGE = 0.05
COUPLING_SAMPLE = 20_000
#: Two signals that move together disagree in proportion to their size (four wheel
#: speeds in a bend): besides its absolute bounds, a coupling keeps how far a - b
#: strayed from the bounds' middle per unit of the larger signal, over the frames
#: where that signal was in the top half of its training values, times
#: COUPLED_REL_MARGIN; a drive faster than any in training keeps its couplings.
#: In units of 1 / COUPLED_REL_UNIT.
COUPLED_REL_MARGIN = 2.0
COUPLED_REL_UNIT = 65536
#: The robust range: the central share of values (rare spikes, a wheel slipping).
ROBUST_QUANTILES = (0.005, 0.995)
#: Ids with at most this many distinct payloads get a payload dictionary ...
MAX_DICT_PAYLOADS = 64
#: ... if each distinct payload was seen this many times on average.
DICT_MIN_REPEATS = 50
#: Payload ranges are only learned for ids with at least this many training
#: frames; rarer ids would flag every unseen value.
MIN_PAYLOAD_FRAMES = 30
#: Learned byte ranges are widened by 1/RANGE_MARGIN_DIV of their width each
#: side: a slowly drifting signal should not look like a forged one.
RANGE_MARGIN_DIV = 2
#: Checksum candidates (code -> name); the learned one must hold on >= 99.5 % of frames.
#: All but the last sit in a byte of their own (first or last, ``checksum_byte``) and
#: are computed by ``checksum_values``; the last is checked whole (``checksum_bad``).
CHECKSUMS = {1: "sum8", 2: "xor8", 3: "sum8+id", 4: "~sum8", 5: "crc8-j1850", 6: "nibble-sum"}
#: ``nibble-sum``: a 4-bit checksum c = (k - the sum of the frame's other nibbles) mod 16
#: (PSA's and Honda's, k a per-message constant nobody publishes) makes the sum of all
#: the frame's nibbles equal k, wherever c sits; ``checksum_byte`` holds k. Learned
#: only over this many distinct payloads, where a sum that held by chance would not.
NIBBLE_SUM = 6
#: ``checksum_byte`` of a checksum in a frame's last byte (byte dlc - 1), whatever its dlc
LAST_BYTE = -2
NIBBLE_SUM_MIN_PAYLOADS = 32
_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
_POPCOUNT = np.array([bin(i).count("1") for i in range(256)], np.uint8)


@dataclass(frozen=True)
class Baseline:
    ids: np.ndarray  # (k,) u4 sorted
    period: np.ndarray  # (k,) f8 median inter-arrival, s (nan if too few frames)
    dt_p01: np.ndarray  # (k,) f8 1st percentile of inter-arrival / period
    mean_count: np.ndarray  # (k,) f8 frames per window when the vehicle is active
    std_count: np.ndarray  # (k,) f8
    presence: np.ndarray  # (k,) f8 fraction of active windows holding the id
    expected: np.ndarray  # (k,) bool: absence of this id is anomalous
    dlc_mask: np.ndarray  # (k,) u2 bit d set = dlc d seen
    byte_min: np.ndarray  # (k, 8) u1
    byte_max: np.ndarray  # (k, 8) u1
    change_rate: np.ndarray  # (k, 8) f8 fraction of consecutive frames where the byte changed
    cond_change: np.ndarray  # (k, 8) f8 P(byte changed | another byte of the frame changed)
    ham_mean: np.ndarray  # (k,) f8 Hamming distance between consecutive payloads
    ham_std: np.ndarray  # (k,) f8
    delta_min: np.ndarray  # (k, 8) i2 smallest byte change between consecutive frames
    delta_max: np.ndarray  # (k, 8) i2
    pair_min: np.ndarray  # (k, 28) i2 byte_i - byte_j range
    pair_max: np.ndarray  # (k, 28) i2
    pair_tight: np.ndarray  # (k, 28) bool
    counter_byte: np.ndarray  # (k,) i1 byte of the counter field, -1 = none
    counter_mask: np.ndarray  # (k,) u1
    counter_shift: np.ndarray  # (k,) u1
    counter_step: np.ndarray  # (k,) u1
    counter2_byte: np.ndarray  # (k,) i1 a second counter's byte, -1 = none (see learn_counters)
    counter2_mask: np.ndarray  # (k,) u1
    counter2_shift: np.ndarray  # (k,) u1
    counter2_step: np.ndarray  # (k,) u1
    checksum_kind: np.ndarray  # (k,) u1 0 = none, else a CHECKSUMS code
    checksum_byte: np.ndarray  # (k,) i1
    payload_hashes: np.ndarray  # (m,) u8 sorted hashes of (id slot, payload) for dictionary ids
    has_dict: np.ndarray  # (k,) bool
    fixed_mask: np.ndarray  # (k,) u8 payload bits of the bytes that held one value throughout
    fixed_value: np.ndarray  # (k,) u8 that value (payload bytes little-endian)
    couple_a: np.ndarray  # (k, MAX_COUPLINGS) i1 first byte of signal a (-1: no coupling)
    couple_b: np.ndarray  # (k, MAX_COUPLINGS) i1 first byte of signal b
    couple_le: np.ndarray  # (k, MAX_COUPLINGS) bool: little-endian signals (else big-endian)
    couple_lo: np.ndarray  # (k, MAX_COUPLINGS) i4 least a - b
    couple_hi: np.ndarray  # (k, MAX_COUPLINGS) i4 largest a - b
    couple_rel: np.ndarray  # (k, MAX_COUPLINGS) i4 |a - b - middle| per unit of max(a, b), / COUPLED_REL_UNIT
    # cross-id couplings (detector.features.cross_signals)
    signal_at: np.ndarray  # (k,) i1 first byte of the id's word coupled with another id's, -1 = none
    signal_be: np.ndarray  # (k,) bool: that word is big-endian
    xc_a: np.ndarray  # (m,) i4 slot of a coupling's first id (x) ...
    xc_b: np.ndarray  # (m,) i4 ... and of its second (y)
    xc_slope: np.ndarray  # (m,) f8 y = slope * x + icpt, between window means
    xc_icpt: np.ndarray  # (m,) f8
    xc_bound: np.ndarray  # (m,) f8 the most |y - line(x)| a window may show
    xc_seen: np.ndarray  # (m, 4) f8 least and largest training window means of x, then of y
    bus_mean_frames: float
    bus_std_frames: float
    bus_mean_ids: float
    window_s: float
    # the longest time the whole bus went without a frame in a training recording
    # (median over recordings), s: how long a healthy bus of this platform stays quiet
    bus_silence: float

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> Baseline:
        out = {}
        for f in fields(cls):
            v = d[f.name]
            out[f.name] = float(v) if f.type == "float" else np.asarray(v)
        return cls(**out)

    def slots(self, can_id: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Slot of each id in ``ids`` and whether the id is known."""
        pos = np.searchsorted(self.ids, can_id)
        pos = np.minimum(pos, max(len(self.ids) - 1, 0))
        known = (self.ids[pos] == can_id) if len(self.ids) else np.zeros(len(can_id), bool)
        return pos, known


def payload_u64(data: np.ndarray) -> np.ndarray:
    """The 8 data bytes of each frame as one little-endian uint64."""
    return np.ascontiguousarray(data, dtype=np.uint8).view("<u8").reshape(-1)


def payload_hash(slot: np.ndarray, payload: np.ndarray) -> np.ndarray:
    with np.errstate(over="ignore"):
        return payload ^ ((slot.astype(np.uint64) + np.uint64(1)) * _HASH_MUL)


_CRC8_TABLE = None


def crc8_table() -> np.ndarray:
    global _CRC8_TABLE
    if _CRC8_TABLE is None:
        table = np.zeros(256, np.uint8)
        for i in range(256):
            c = i
            for _ in range(8):
                c = ((c << 1) ^ 0x1D) & 0xFF if c & 0x80 else (c << 1) & 0xFF
            table[i] = c
        _CRC8_TABLE = table
    return _CRC8_TABLE


def checksum_values(
    kind: int, data: np.ndarray, dlc: np.ndarray, can_id: np.ndarray, pos: np.ndarray
) -> np.ndarray:
    """Checksum ``kind`` over every byte but ``pos`` of each frame (bytes < dlc)."""
    n = len(data)
    cols = np.arange(8)
    use = (cols[None, :] < dlc[:, None]) & (cols[None, :] != pos[:, None])
    d = np.where(use, data, 0).astype(np.uint32)
    if kind in (1, 3, 4):
        s = d.sum(axis=1)
        if kind == 3:
            s = s + (can_id & 0xFF) + ((can_id >> 8) & 0xFF)
        s = s & 0xFF
        return (~s & 0xFF) if kind == 4 else s
    if kind == 2:
        return np.bitwise_xor.reduce(d, axis=1) & 0xFF
    if kind == 5:
        table = crc8_table()
        crc = np.full(n, 0xFF, np.uint32)
        for b in range(8):
            nxt = table[(crc ^ d[:, b]) & 0xFF].astype(np.uint32)
            crc = np.where(use[:, b], nxt, crc)
        return crc ^ 0xFF
    raise ValueError(f"unknown checksum kind {kind}")


def nibble_sums(data: np.ndarray, dlc: np.ndarray) -> np.ndarray:
    """The sum of every nibble of each frame's bytes below its dlc, mod 16."""
    use = np.arange(8)[None, :] < dlc[:, None]
    d = np.where(use, data, 0).astype(np.int64)
    return ((d >> 4) + (d & 0xF)).sum(axis=1) & 0xF


def checksum_bad(
    kind: int, at: np.ndarray, data: np.ndarray, dlc: np.ndarray, can_id: np.ndarray
) -> np.ndarray:
    """Frames failing the ``kind`` checksum learned as ``at`` (``checksum_byte``)."""
    at = at.astype(np.int64)
    if kind == NIBBLE_SUM:
        return nibble_sums(data, dlc) != at
    pos = np.clip(np.where(at == LAST_BYTE, dlc.astype(np.int64) - 1, at), 0, 7)
    return checksum_values(kind, data, dlc, can_id, pos) != data[np.arange(len(data)), pos]


def _learn_checksum(data: np.ndarray, dlc: np.ndarray, can_id: int) -> tuple[int, int]:
    if len(data) < 20 or dlc.min() < 2:
        return 0, -1
    ids = np.full(len(data), can_id, np.uint32)
    for pos_kind in ("last", "first"):
        pos = dlc.astype(np.int64) - 1 if pos_kind == "last" else np.zeros(len(data), np.int64)
        actual = data[np.arange(len(data)), pos]
        if len(np.unique(actual)) < 8:
            continue
        for kind in CHECKSUMS:
            if kind == NIBBLE_SUM:
                continue
            ok = checksum_values(kind, data, dlc, ids, pos) == actual
            if ok.mean() >= 0.995:
                return kind, (LAST_BYTE if pos_kind == "last" else 0)
    return 0, -1


def _learn_nibble_sum(data: np.ndarray, dlc: np.ndarray) -> tuple[int, int]:
    """(NIBBLE_SUM, k) if the nibbles of ``data`` (every training vehicle's frames of
    one id: k must hold on all) sum to one k on >= 99.5 % of frames, else (0, -1)."""
    if len(data) < 20 or dlc.min() < 2 or len(np.unique(payload_u64(data))) < NIBBLE_SUM_MIN_PAYLOADS:
        return 0, -1
    counts = np.bincount(nibble_sums(data, dlc), minlength=16)
    k = int(counts.argmax())
    return (NIBBLE_SUM, k) if counts[k] >= 0.995 * len(data) else (0, -1)


def _owner_ranges(d: np.ndarray, owner: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(owners, 8) int16 each: every byte's least and largest value per owner (drive
    or vehicle) of the payloads ``d``."""
    if len(owner) == 0:
        return np.zeros((0, 8), np.int16), np.zeros((0, 8), np.int16)
    order = np.argsort(owner, kind="stable")  # already sorted when learn_baseline calls
    d, owner = d[order], owner[order]
    starts = np.flatnonzero(np.r_[True, owner[1:] != owner[:-1]])
    lo = np.minimum.reduceat(d, starts, axis=0).astype(np.int16)
    hi = np.maximum.reduceat(d, starts, axis=0).astype(np.int16)
    return lo, hi


def drive_excess(d: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """(8,) int16: per byte, the furthest one drive's values went outside the range of
    all the other drives' (0 with fewer than two drives).

    How far past the training range the next drive may go, measured the way the next
    drive will be met: a coolant byte at 103, 120 and 125 on three warm drives may
    sit 15 from the others' on a fourth, and a forged 0xFF lies far beyond that."""
    lo, hi = _owner_ranges(d, owner)
    out = np.zeros(8, np.int16)
    if len(lo) < 2:
        return out
    for g in range(len(lo)):
        others = np.arange(len(lo)) != g
        below = lo[others].min(axis=0) - lo[g]
        above = hi[g] - hi[others].max(axis=0)
        out = np.maximum(out, np.maximum(below, above))
    return out


def vehicle_specific_bytes(d: np.ndarray, owner: np.ndarray) -> np.ndarray:
    """(8,) bool: bytes nearly constant within each vehicle but different between them.

    An odometer's high byte or a VIN-derived value: no pair or payload dictionary
    learned from a few vehicles covers the next one (their range reaches as far
    past the training vehicles' as one went past the others: ``drive_excess``).
    """
    lo, hi = _owner_ranges(d, owner)
    if len(lo) < 2:
        return np.zeros(8, bool)
    within = (hi - lo).mean(axis=0)
    across = hi.max(axis=0) - lo.min(axis=0)
    return (across > 0) & (within < 0.25 * across)


def learn_couplings(d: np.ndarray) -> list[tuple[int, int, bool, int, int, int]]:
    """Up to MAX_COUPLINGS (a, b, little_endian, lo, hi, rel): 16-bit signals at byte
    offsets a < b (not overlapping) whose difference a - b stays in [lo, hi], or
    within ``rel`` (see COUPLED_REL_MARGIN) of their middle."""
    if len(d) < 4 * MIN_PAYLOAD_FRAMES:
        return []
    if len(d) > COUPLING_SAMPLE:  # evenly spaced: every part of every drive
        d = d[np.linspace(0, len(d) - 1, COUPLING_SAMPLE).astype(np.int64)]
    w = words16(d)
    lo_q, hi_q = np.quantile(w, ROBUST_QUANTILES, axis=0)  # (2, 7) each
    spread = hi_q - lo_q
    moving = (spread >= COUPLED_WORD_MIN_RANGE) & (
        (np.diff(w, axis=0) != 0).mean(axis=0) >= COUPLED_WORD_MIN_CHANGE
    )
    found = []
    for le in (0, 1):
        for a in range(7):
            for b in range(a + 2, 7):
                if not (moving[le, a] and moving[le, b]):
                    continue
                diff = w[:, le, a] - w[:, le, b]
                dlo, dhi = np.quantile(diff, ROBUST_QUANTILES)
                width = dhi - dlo
                own = min(spread[le, a], spread[le, b])
                if width <= COUPLED_WORD_SHARE * own:
                    margin = width + 1  # as far out again as the robust range is wide
                    lo, hi = int(dlo - margin), int(dhi + margin)
                    rel = relative_slack(diff, np.maximum(w[:, le, a], w[:, le, b]), (lo + hi) // 2)
                    found.append((width / own, a, b, bool(le), lo, hi, rel))
    found.sort()
    return [f[1:] for f in found[:MAX_COUPLINGS]]


def relative_slack(diff: np.ndarray, size: np.ndarray, middle: int) -> int:
    """How far ``diff`` strays from ``middle`` per unit of ``size`` where size is in its
    top half (robust, times COUPLED_REL_MARGIN), in 1 / COUPLED_REL_UNIT."""
    top = size >= max(np.median(size), 1)
    if not top.any():
        return 0
    ratio = np.abs(diff[top] - middle) / size[top]
    return int(min(np.quantile(ratio, ROBUST_QUANTILES[1]) * COUPLED_REL_MARGIN, 1.0) * COUPLED_REL_UNIT)


def signal_bytes(d: np.ndarray, change_rate: np.ndarray) -> np.ndarray:
    """(8,) bool: bytes that move like a signal (several values, changing now and then)."""
    n_values = np.array([np.count_nonzero(np.bincount(d[:, b], minlength=256)) for b in range(8)])
    return (n_values >= COUPLED_MIN_VALUES) & (change_rate >= COUPLED_MIN_CHANGE)


class _Streams(NamedTuple):
    """Benign frames by id, then owner, then segment, then time (each id's frames one
    slice, each stream's together and in order), with how each frame differs from the
    one before it (meaningful where ``same``: it continues that frame's stream)."""

    ids: np.ndarray  # (k,) the distinct CAN ids
    frames: np.ndarray
    seg: np.ndarray  # segment of each frame
    own: np.ndarray  # owner of each frame
    slot: np.ndarray  # id slot of each frame
    stream: np.ndarray  # (segment, id) stream of each frame
    same: np.ndarray
    dt: np.ndarray  # inter-arrival (NaN where not ``same``)
    delta: np.ndarray  # (n, 8) i2 byte change
    changed: np.ndarray  # (n, 8) bool
    ham: np.ndarray  # Hamming distance between the payloads


def _streams(frames: np.ndarray, vehicle: np.ndarray, owner: np.ndarray) -> _Streams:
    ids, id_slot = np.unique(frames["can_id"], return_inverse=True)
    k = len(ids)
    order = np.lexsort((frames["ts"], vehicle, owner, id_slot))
    f = frames[order]
    seg = vehicle[order]
    slot = id_slot[order]
    s = seg * k + slot
    same = np.r_[False, s[1:] == s[:-1]]
    data = f["data"]
    dt = np.diff(f["ts"], prepend=np.nan)
    dt[~same] = np.nan
    prev = np.roll(data, 1, axis=0)
    delta = data.astype(np.int16) - prev.astype(np.int16)
    ham = _POPCOUNT[data ^ prev].sum(axis=1, dtype=np.int64).astype(np.float64)
    return _Streams(ids, f, seg, owner[order], slot, s, same, dt, delta, data != prev, ham)


def _by_group(ts: np.ndarray, group: np.ndarray) -> list[np.ndarray]:
    order = np.argsort(group, kind="stable")
    cuts = np.flatnonzero(np.diff(group[order])) + 1
    return np.split(ts[order], cuts)


def _full_window_counts(
    ts: np.ndarray, slot: np.ndarray, recording: np.ndarray, k: int, window_s: float
) -> np.ndarray:
    """(windows, k) frames per (recording, window) and id (``slot``), without each
    recording's first and last window (partial) unless that would leave fewer than three."""
    win = np.floor(ts / window_s).astype(np.int64)
    w0 = int(win.min())
    span = int(win.max()) - w0 + 1
    vw_unique, vw_inv = np.unique(recording * span + (win - w0), return_inverse=True)
    n_vw = len(vw_unique)
    counts = np.bincount(vw_inv.reshape(-1) * k + slot, minlength=n_vw * k).reshape(n_vw, k)
    rec_of_vw = vw_unique // span
    edge = (
        np.r_[True, rec_of_vw[1:] != rec_of_vw[:-1]] | np.r_[rec_of_vw[1:] != rec_of_vw[:-1], True]
    )
    return counts[~edge] if (~edge).sum() >= 3 else counts


def _unlearned(k: int) -> dict[str, np.ndarray]:
    """``Baseline``'s per-id arrays (and ``counter``: (k, 2, 4) byte, mask, shift, step of
    two counters) as an id keeps them when there is nothing to learn."""
    n_pairs = len(PAIRS)
    counter = np.full((k, 2, 4), 0, np.int64)
    counter[:, :, 0] = -1
    return {
        "period": np.full(k, np.nan),
        "dt_p01": np.ones(k),
        "ham_mean": np.zeros(k),
        "ham_std": np.zeros(k),
        "change_rate": np.zeros((k, 8)),
        "cond_change": np.zeros((k, 8)),
        "byte_min": np.zeros((k, 8), np.uint8),
        "byte_max": np.zeros((k, 8), np.uint8),
        "delta_min": np.zeros((k, 8), np.int16),
        "delta_max": np.zeros((k, 8), np.int16),
        "pair_min": np.zeros((k, n_pairs), np.int16),
        "pair_max": np.zeros((k, n_pairs), np.int16),
        "pair_tight": np.zeros((k, n_pairs), bool),
        "dlc_mask": np.zeros(k, np.uint16),
        "counter": counter,
        "checksum_kind": np.zeros(k, np.uint8),
        "checksum_byte": np.full(k, -1, np.int8),
        "has_dict": np.zeros(k, bool),
        "fixed_mask": np.zeros(k, np.uint64),
        "fixed_value": np.zeros(k, np.uint64),
        "couple_a": np.full((k, MAX_COUPLINGS), -1, np.int8),
        "couple_b": np.full((k, MAX_COUPLINGS), -1, np.int8),
        "couple_le": np.zeros((k, MAX_COUPLINGS), bool),
        "couple_lo": np.zeros((k, MAX_COUPLINGS), np.int32),
        "couple_hi": np.zeros((k, MAX_COUPLINGS), np.int32),
        "couple_rel": np.zeros((k, MAX_COUPLINGS), np.int32),
    }


def _learn_timing(out: dict, j: int, dt: np.ndarray) -> None:
    """Period and the short-gap quantile from id ``j``'s in-stream inter-arrivals."""
    if len(dt) >= 3:
        out["period"][j] = float(np.median(dt))
        if out["period"][j] > 0:
            out["dt_p01"][j] = float(np.percentile(dt, 1) / out["period"][j])


def _learn_ranges(out: dict, j: int, d: np.ndarray, dlc: np.ndarray, own: np.ndarray) -> np.ndarray:
    """Byte ranges, the dlcs seen and the bytes that never moved; returns the bytes
    that are the vehicle's own (``vehicle_specific_bytes``)."""
    lo, hi = d.min(axis=0).astype(np.int16), d.max(axis=0).astype(np.int16)
    margin = np.maximum((hi - lo) // RANGE_MARGIN_DIV, drive_excess(d, own))
    per_vehicle = vehicle_specific_bytes(d, own)
    out["byte_min"][j] = np.clip(lo - margin, 0, 255)
    out["byte_max"][j] = np.clip(hi + margin, 0, 255)
    out["dlc_mask"][j] = np.bitwise_or.reduce(np.left_shift(1, dlc.astype(np.uint16)))
    if len(d) >= MIN_PAYLOAD_FRAMES:  # bytes below every frame's dlc that never moved
        fixed = (lo == hi) & (np.arange(8) < dlc.min())
        out["fixed_mask"][j] = payload_u64(np.where(fixed, 0xFF, 0).astype(np.uint8)[None])[0]
        out["fixed_value"][j] = payload_u64(lo.astype(np.uint8)[None])[0] & out["fixed_mask"][j]
    else:
        out["byte_min"][j], out["byte_max"][j] = 0, 255
    return per_vehicle


def _learn_changes(out: dict, j: int, st: _Streams, rows: slice) -> None:
    """How id ``j``'s bytes change between consecutive frames of a stream."""
    cons = st.same[rows]
    if cons.any():
        cj = st.changed[rows][cons]
        out["change_rate"][j] = cj.mean(axis=0)
        other = (cj.sum(axis=1)[:, None] - cj) > 0
        out["cond_change"][j] = (cj & other).sum(axis=0) / np.maximum(other.sum(axis=0), 1)
        hj = st.ham[rows][cons]
        out["ham_mean"][j], out["ham_std"][j] = hj.mean(), hj.std()
        dj = st.delta[rows][cons]
        dlo, dhi = dj.min(axis=0), dj.max(axis=0)
        margin = (dhi - dlo) // RANGE_MARGIN_DIV + 1
        out["delta_min"][j], out["delta_max"][j] = dlo - margin, dhi + margin
    if rows.stop - rows.start < MIN_PAYLOAD_FRAMES:
        out["delta_min"][j], out["delta_max"][j] = -255, 255


def _learn_pairs(out: dict, j: int, d: np.ndarray, per_vehicle: np.ndarray) -> None:
    """Byte-pair difference ranges, and which of them couple two moving bytes."""
    pairs = d[:, PAIRS[:, 0]].astype(np.int16) - d[:, PAIRS[:, 1]].astype(np.int16)
    pmin, pmax = pairs.min(axis=0), pairs.max(axis=0)
    moving = signal_bytes(d, out["change_rate"][j]) & ~per_vehicle
    out["pair_tight"][j] = (
        ((pmax - pmin) <= TIGHT_PAIR_WIDTH)
        & (len(d) >= MIN_PAYLOAD_FRAMES)
        & moving[PAIRS[:, 0]]
        & moving[PAIRS[:, 1]]
    )
    margin = (pmax - pmin) // RANGE_MARGIN_DIV + 2
    out["pair_min"][j], out["pair_max"][j] = pmin - margin, pmax + margin
    for c, (a, b, le, clo, chi, rel) in enumerate(learn_couplings(d)):
        out["couple_a"][j, c], out["couple_b"][j, c], out["couple_le"][j, c] = a, b, le
        out["couple_lo"][j, c], out["couple_hi"][j, c], out["couple_rel"][j, c] = clo, chi, rel


def _learn_framing(
    out: dict, j: int, d: np.ndarray, dlc: np.ndarray, can_id: int, every: tuple
) -> None:
    """Counters and checksum, from one vehicle's consecutive frames (``d``, ``dlc``);
    a nibble sum, whose constant is learned too, from ``every`` vehicle's (data, dlc)."""
    for c, field in enumerate(learn_counters(d)):
        out["counter"][j, c] = field
    kind, at = _learn_checksum(d, dlc, can_id)
    if kind == 0:
        kind, at = _learn_nibble_sum(*every)
    out["checksum_kind"][j], out["checksum_byte"][j] = kind, at


def _payload_dictionary(j: int, d: np.ndarray, per_vehicle: np.ndarray) -> np.ndarray | None:
    """Hashes of id ``j``'s payloads if they are a stable enumeration (every payload
    seen many times over), else None."""
    distinct = np.unique(payload_u64(d))
    if (
        len(distinct) <= MAX_DICT_PAYLOADS
        and len(d) >= DICT_MIN_REPEATS * len(distinct)
        and not per_vehicle.any()
    ):
        return payload_hash(np.full(len(distinct), j), distinct)
    return None


def _bookkeeping_bytes(
    counter: np.ndarray, checksum_kind: np.ndarray, checksum_byte: np.ndarray
) -> np.ndarray:
    """(k, 8) bool: the bytes that hold an id's learned counters or checksum. A counter
    or checksum is no physical quantity: two counters at one rate keep a line on every
    drive that happens to start them in step, and miss it on the next."""
    out = np.zeros((len(checksum_kind), 8), bool)
    for c in range(counter.shape[1]):
        at = counter[:, c, 0].astype(np.int64)
        out[np.flatnonzero(at >= 0), at[at >= 0]] = True
    byte_sum = (checksum_kind > 0) & (checksum_kind != NIBBLE_SUM)
    at = checksum_byte.astype(np.int64)
    out[np.flatnonzero(byte_sum), at[byte_sum]] = True
    return out


def longest_silence(recordings: list[np.ndarray]) -> float:
    """The longest time the bus went without any frame, per recording (each one
    vehicle's timestamps), median over the recordings: one recording with a logger
    hiccup does not set it. 0 when no recording has two frames."""
    longest = [float(np.diff(np.sort(ts)).max()) for ts in recordings if len(ts) > 1]
    return float(np.median(longest)) if longest else 0.0


def learn_baseline(
    frames: np.ndarray,
    vehicle: np.ndarray,
    window_s: float,
    owner: np.ndarray | None = None,
    recording: np.ndarray | None = None,
) -> Baseline:
    """Learn a platform's baseline from benign ``frames`` of one or more vehicles.

    ``vehicle`` is an int array (same length) of stream segments: consecutive-
    frame statistics never cross them. ``owner`` tells physical vehicles apart
    (default: the segments) for values that legitimately differ per vehicle.
    ``recording`` tells recordings apart (default: the segments): a recording's
    windows are where its vehicle was active, whatever segments an attack cut its
    streams into, and its bus's quiet moments are its own.
    """
    if frames.dtype != FRAME_DTYPE:
        raise TypeError("frames must be a FRAME_DTYPE array")
    if len(frames) < 2:
        raise ValueError(f"need at least 2 benign frames to learn a baseline, got {len(frames)}")
    vehicle = np.asarray(vehicle, dtype=np.int64)
    owner = vehicle if owner is None else np.asarray(owner, dtype=np.int64)
    recording = vehicle if recording is None else np.asarray(recording, dtype=np.int64)
    st = _streams(frames, vehicle, owner)
    k = len(st.ids)
    slot = np.searchsorted(st.ids, frames["can_id"])
    full = _full_window_counts(frames["ts"], slot, recording, k, window_s)
    per_bus = full.sum(axis=1)
    out = _unlearned(k)
    hashes: list[np.ndarray] = []
    data, dlcs = st.frames["data"], st.frames["dlc"]
    starts = np.searchsorted(st.slot, np.arange(k))
    ends = np.searchsorted(st.slot, np.arange(k), side="right")
    for j in range(k):
        rows = slice(starts[j], ends[j])
        d, dl = data[rows], dlcs[rows]
        _learn_timing(out, j, st.dt[rows][st.same[rows]])
        per_vehicle = _learn_ranges(out, j, d, dl, st.own[rows])
        _learn_changes(out, j, st, rows)
        _learn_pairs(out, j, d, per_vehicle)
        first_stream = st.stream[rows] == st.stream[rows][0]
        _learn_framing(out, j, d[first_stream], dl[first_stream], int(st.ids[j]), (d, dl))
        found = _payload_dictionary(j, d, per_vehicle)
        if found is not None:
            out["has_dict"][j] = True
            hashes.append(found)
    counter = out.pop("counter")
    presence = (full > 0).mean(axis=0)
    mean_count = full.mean(axis=0)
    cross = learn_cross_signals(
        st.frames["ts"], st.frames["data"], st.slot, st.own, mean_count, window_s,
        _bookkeeping_bytes(counter, out["checksum_kind"], out["checksum_byte"]),
    )
    return Baseline(
        ids=st.ids.astype(np.uint32),
        mean_count=mean_count,
        std_count=full.std(axis=0),
        presence=presence,
        expected=(presence >= 0.99) & (mean_count >= 2),
        counter_byte=counter[:, 0, 0].astype(np.int8),
        counter_mask=counter[:, 0, 1].astype(np.uint8),
        counter_shift=counter[:, 0, 2].astype(np.uint8),
        counter_step=counter[:, 0, 3].astype(np.uint8),
        counter2_byte=counter[:, 1, 0].astype(np.int8),
        counter2_mask=counter[:, 1, 1].astype(np.uint8),
        counter2_shift=counter[:, 1, 2].astype(np.uint8),
        counter2_step=counter[:, 1, 3].astype(np.uint8),
        payload_hashes=np.sort(np.concatenate(hashes)) if hashes else np.zeros(0, np.uint64),
        bus_mean_frames=float(per_bus.mean()),
        bus_std_frames=float(per_bus.std()),
        bus_mean_ids=float((full > 0).sum(axis=1).mean()),
        window_s=float(window_s),
        bus_silence=longest_silence(_by_group(frames["ts"], recording)),
        **cross,
        **out,
    )
