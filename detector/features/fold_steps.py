"""The steps of the fold (``detector.features.fold_kernel``), one per family of
checks, compiled into it by numba (``inline="always"``), and the layout of the
sums they fold into.

Per stream, its baseline row is put in the form the frame steps take
(``_counters``, ``_bounds``, ``_couplings``) and its running sums are loaded and
stored (``_load_row``, ``_store_row``). Per frame:

- timing: ``_arrive`` (predecessor, time since), ``_gap`` (inter-arrival sums);
- the payload against its predecessor's: ``_changes`` (Hamming distance, bytes
  changed alone or together, byte deltas), ``_jump`` (which byte stepped out);
- counters and checksums: ``_counter_broken``, ``_checksum_bad``;
- the payload alone: ``_byte_bounds`` (byte ranges, byte pairs), ``_signals``
  (coupled signals, fixed bytes);
- novelty: ``_unseen`` (the payload dictionary).

The frame steps take and return scalars (the fold adds to the sums), and take
an array only where they use it unconditionally and call nothing in between
(``_add_lanes`` is called by the fold, not by ``_store_row``): numba binds each
array argument of an inlined step to a new reference, counted up and down, and
LLVM prunes that pair only in those cases. A step that used an array in one
branch, or took the row of sums, made the fold 1.7 times as slow.

The payload is worked on as one 64-bit word, bytes little-endian, with per-byte
counts and bounds held in 16-bit lanes (SWAR). The numpy definitions are the
reference: ``detector.features.columns``, tests/reference_features.py.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from detector.features.baseline import COUPLED_REL_UNIT as REL_UNIT
from detector.features.baseline import MAX_COUPLINGS, NIBBLE_SUM, PAIRS, crc8_table

# The constants and functions below are compiled into the fold, whose numba cache
# does not see this file change: fold_kernel.py records its digest (see there).
# (_bounds numbers the pair (a, b) as PAIRS does: upper-triangle order; _couplings
# reads four couplings a stream. Both checked here.)
if not all(np.array_equal(PAIRS[:, c], t) for c, t in enumerate(np.triu_indices(8, 1))):
    raise ImportError("detector.features.baseline.PAIRS changed: update the numbering in _bounds")
if MAX_COUPLINGS != 4:
    raise ImportError("detector.features.baseline.MAX_COUPLINGS changed: update _couplings")
# 64-bit masks for counting over the 8 bytes of a payload at once (SWAR); counts
# per byte are kept in 16-bit lanes: bytes 0, 2, 4, 6 in one word, 1, 3, 5, 7 in another
_M55 = np.uint64(0x5555_5555_5555_5555)
_M33 = np.uint64(0x3333_3333_3333_3333)
_M0F = np.uint64(0x0F0F_0F0F_0F0F_0F0F)
_M01 = np.uint64(0x0101_0101_0101_0101)
_LANES = np.uint64(0x00FF_00FF_00FF_00FF)  # a byte's place in a 16-bit lane
_ONE16 = np.uint64(0x0001_0001_0001_0001)
_LOW_NIBBLES = np.uint64(0x0F0F_0F0F_0F0F_0F0F)
_NIBBLE_SUM = NIBBLE_SUM
_BIAS16 = np.uint64(0x0100_0100_0100_0100)  # +256: a byte difference stays positive
_HIGH16 = np.uint64(0x8000_8000_8000_8000)
_LANE_MAX = 65535  # frames a 16-bit lane counts before it is added to the sums
_NO_LANES = (np.uint64(0),) * 6  # byte change counts of no frame (see _changes)

#: Accumulator columns of an open (vehicle, id, window) group.
#: int32: frames, frames with a predecessor, Hamming sum, then per byte: changes,
#: frames where another byte changed, changes together with another byte; then
#: frames failing each check; the most severe label; frames breaking a signal coupling,
#: frames moving a fixed byte; the sum of the id's cross-coupled word (A_SIG: kept in
#: ``acc_f`` between pushes, as the Hamming sum A_HAM is: a 16-bit word summed over a
#: window passes 2^31 at 33,000 frames, a flood of 9,000 frames/s in 5 s windows); how
#: far the byte furthest outside its range lay past it in any frame of the window, and
#: that frame's note
#: (``_far``: which byte, its value, its range), for the evidence to name; and the
#: note of the first frame of the window whose byte stepped outside its learned steps
#: (``_jump``; 0: none. Its first only: the fold looks for the byte once a window);
#: and the notes of the window's first frame to break a coupling (``coupling_note``)
#: and a tight byte pair (``pair_note``).
A_COUNT, A_NDT, A_HAM = 0, 1, 2
A_CHG, A_OTHER, A_COND = 3, 11, 19
A_OUT, A_DELTA, A_PAIR, A_COUNTER, A_CHECKSUM, A_NOVEL, A_DLC, A_LABEL = range(27, 35)
A_COUPLE, A_FIXED, A_SIG, A_FAR_MAX, A_FAR_NOTE, A_JUMP_NOTE, A_COUPLE_NOTE = range(35, 42)
A_PAIR_NOTE = 42
N_ACC_I = 43
#: float64: sum and sum of squares of inter-arrival times, the shortest, the last frame's ts;
#: the sums that may pass an int32 (exact in a float64 up to 2^53): A_SIG's and A_HAM's.
F_SUM, F_SUM2, F_MIN, F_LAST, F_MIN2, F_SIG, F_HAM = 0, 1, 2, 3, 4, 5, 6
N_ACC_F = 7
NO_WINDOW = np.iinfo(np.int64).min


def _crc8_powers(table: np.ndarray) -> np.ndarray:
    """``table`` applied k times, k = 0..8, and a row of zeros: (10, 256).

    A CRC byte step ``crc' = table[crc ^ byte]`` is linear over GF(2) (``table[0]``
    is 0), so the CRC of an n-byte message from ``init`` is ``T^n[init]`` xor
    ``T^(n - j)[m_j]`` over its bytes j: lookups that do not wait for each other,
    where the byte-by-byte loop is one chain of n dependent loads.
    """
    out = np.zeros((10, 256), np.int64)  # row 9: zeros, for no byte
    out[0] = np.arange(256)
    for k in range(1, 9):
        out[k] = table[out[k - 1]]
    return out


# CRC-8 SAE J1850, as the baseline learns it; passed to the fold, not compiled in
_CRC8_POW = _crc8_powers(crc8_table())


@njit(cache=True, nogil=True, inline="always")
def _checksum(kind, p64, dlc, can_id, pos, crc8_pow, masks):  # pragma: no cover - compiled
    """The ``kind`` checksum over the bytes below ``dlc`` but ``pos`` of the payload
    ``p64`` (bytes little-endian), as ``detector.features.baseline.checksum_values``."""
    below = masks[pos]
    n = dlc - 1 if pos < dlc else dlc
    # the message: byte pos taken out (the bytes above it move down one), n bytes
    msg = ((p64 & below) | ((p64 >> np.uint64(8)) & ~below)) & masks[n]
    if kind == 2:
        x = msg ^ (msg >> np.uint64(32))
        x ^= x >> np.uint64(16)
        x ^= x >> np.uint64(8)
        return np.int64(x & np.uint64(0xFF))
    if kind == 5:
        crc = crc8_pow[n, 0xFF]
        for j in range(8):  # a fixed count: unrolled; bytes past the message read row 9, all 0
            e = n - j if j < n else 9
            crc ^= crc8_pow[e, np.int64((msg >> np.uint64(8 * j)) & np.uint64(0xFF))]
        return crc ^ 0xFF
    t = (msg & _LANES) + ((msg >> np.uint64(8)) & _LANES)  # byte pairs summed in 16-bit lanes
    s = np.int64((t * _ONE16) >> np.uint64(48))  # the sum of the 8 bytes (at most 2040)
    if kind == 3:
        s += (can_id & 0xFF) + ((can_id >> 8) & 0xFF)
    s &= 0xFF
    if kind == 4:
        return (~s) & 0xFF
    return s






@njit(cache=True, nogil=True, inline="always")
def _lanes_below(a, b):  # pragma: no cover - compiled
    """High bit of each 16-bit lane where a < b (lanes below 0x8000)."""
    return ~((a | _HIGH16) - b) & _HIGH16


@njit(cache=True, nogil=True, inline="always")
def _lane(even, odd, b):  # pragma: no cover - compiled
    """Byte ``b``'s 16-bit lane of a pair of (even bytes, odd bytes) lane words."""
    return np.int64(((odd if b % 2 else even) >> np.uint64(16 * (b // 2))) & np.uint64(0xFFFF))


@njit(cache=True, nogil=True, inline="always")
def _outside(even, odd, lo_e, lo_o, hi_e, hi_o):  # pragma: no cover - compiled
    """Whether a value in the 16-bit lanes of (even, odd) lies below its lo or above
    its hi (bounds as ``_to_lanes`` makes them)."""
    return (
        _lanes_below(even, lo_e) | _lanes_below(hi_e, even)
        | _lanes_below(odd, lo_o) | _lanes_below(hi_o, odd)
    ) != 0  # fmt: skip


@njit(cache=True, nogil=True, inline="always")
def _word(p64, at, little_endian):  # pragma: no cover - compiled
    """The 16-bit value of bytes ``at`` and ``at + 1`` of the payload ``p64`` (bytes
    little-endian in the word), in either byte order, as words.words16."""
    lo = np.int64((p64 >> np.uint64(8 * at)) & np.uint64(0xFF))
    hi = np.int64((p64 >> np.uint64(8 * (at + 1))) & np.uint64(0xFF))
    return hi * 256 + lo if little_endian else lo * 256 + hi


@njit(cache=True, nogil=True)
def _add_lanes(la, lanes):  # pragma: no cover - compiled
    """Add the per-byte counts held in the 16-bit lanes of ``lanes`` (changed, with
    another byte changed, both: even bytes then odd bytes) to the sums ``la``."""
    for i, col in enumerate((A_CHG, A_CHG, A_OTHER, A_OTHER, A_COND, A_COND)):
        for q in range(4):
            la[col + 2 * q + i % 2] += np.int64((lanes[i] >> np.uint64(16 * q)) & np.uint64(0xFFFF))


@njit(cache=True, nogil=True)
def _to_lanes(bound, bias):  # pragma: no cover - compiled
    """A bound per byte as (even bytes, odd bytes) 16-bit lanes, plus ``bias`` (the
    difference of two bytes carries +256), clipped to 0..1023: the values checked
    against it (0..511) are never below 0 nor above 1023, so no verdict changes."""
    even = np.uint64(0)
    odd = np.uint64(0)
    for q in range(4):
        even |= np.uint64(min(max(bound[2 * q] + bias, 0), 1023)) << np.uint64(16 * q)
        odd |= np.uint64(min(max(bound[2 * q + 1] + bias, 0), 1023)) << np.uint64(16 * q)
    return even, odd


# -- the steps of the fold: per stream, its baseline row as the frame steps use it --


@njit(cache=True, nogil=True, inline="always")
def _counters(s, byte, mask, shift, step, byte2, mask2, shift2, step2):  # pragma: no cover
    """Stream ``s``'s counter fields as ``_counter_broken`` takes them (a second
    counter: a frame must break both), and whether a repeated payload breaks them."""
    cb = byte[s]
    cmask = mask[s]
    cshift = shift[s]
    cmod = (cmask >> cshift) + 1
    cmod_pow2 = (cmod & (cmod - 1)) == 0  # (every learned field) a mask, not a division
    cb2 = byte2[s]
    cmask2 = mask2[s]
    cshift2 = shift2[s]
    cmod2 = (cmask2 >> cshift2) + 1
    repeat_breaks = cb >= 0 and 0 != step[s] and (cb2 < 0 or 0 != step2[s])
    counter = (cb, cmask, cshift, cmod, cmod_pow2, step[s], cb2, cmask2, cshift2, cmod2, step2[s])
    return counter, repeat_breaks


@njit(cache=True, nogil=True, inline="always")
def _bounds(  # pragma: no cover - compiled
    s, byte_min, byte_max, delta_min, delta_max, pair_min, pair_max, pair_tight, pair_lanes
):
    """Stream ``s``'s bounds as 16-bit lanes (see _to_lanes): byte ranges, byte
    deltas (+256), and into ``pair_lanes`` per distance kk + 1 the byte pairs
    (a, a + kk + 1) (+256; a loose pair, or one past byte 7, gets 0..1023: never
    out). Also the number of tight pairs, and whether a delta of 0 is out."""
    blo_e, blo_o = _to_lanes(byte_min[s], 0)
    bhi_e, bhi_o = _to_lanes(byte_max[s], 0)
    dlo_e, dlo_o = _to_lanes(delta_min[s], 256)
    dhi_e, dhi_o = _to_lanes(delta_max[s], 256)
    n_tight = 0
    pair_lanes[:] = 0
    for kk in range(7):
        for a in range(8):
            lo = 0
            hi = 1023
            p = a * (15 - a) // 2 + kk  # the index of pair (a, a + kk + 1) in PAIRS
            if a + kk + 1 < 8 and pair_tight[s, p]:
                lo = min(max(pair_min[s, p] + 256, 0), 1023)
                hi = min(max(pair_max[s, p] + 256, 0), 1023)
                n_tight += 1
            sh = np.uint64(16 * (a // 2))
            pair_lanes[kk, a % 2] |= np.uint64(lo) << sh
            pair_lanes[kk, 2 + a % 2] |= np.uint64(hi) << sh
    zero_out = False
    for b in range(8):
        zero_out |= (0 < delta_min[s, b]) | (0 > delta_max[s, b])
    return (blo_e, blo_o, bhi_e, bhi_o), (dlo_e, dlo_o, dhi_e, dhi_o), n_tight, zero_out


@njit(cache=True, nogil=True, inline="always")
def _couplings(s, couple_a, couple_b, couple_le, couple_lo, couple_hi, couple_rel):  # pragma: no cover
    """Stream ``s``'s signal couplings as ``_signals`` takes them: how many, then
    per coupling the bytes of signals a and b, their byte order, the bounds of a - b
    and its slack relative to the signals' size."""
    n = 0
    while n < MAX_COUPLINGS and couple_a[s, n] >= 0:
        n += 1
    return (
        n,
        (couple_a[s, 0], couple_a[s, 1], couple_a[s, 2], couple_a[s, 3]),
        (couple_b[s, 0], couple_b[s, 1], couple_b[s, 2], couple_b[s, 3]),
        (couple_le[s, 0], couple_le[s, 1], couple_le[s, 2], couple_le[s, 3]),
        (couple_lo[s, 0], couple_lo[s, 1], couple_lo[s, 2], couple_lo[s, 3]),
        (couple_hi[s, 0], couple_hi[s, 1], couple_hi[s, 2], couple_hi[s, 3]),
        (couple_rel[s, 0], couple_rel[s, 1], couple_rel[s, 2], couple_rel[s, 3]),
    )


@njit(cache=True, nogil=True, inline="always")
def _load_row(r, acc_i, acc_f, st_last_data, la):  # pragma: no cover - compiled
    """Row ``r``'s counts into ``la``; its timing sums (dt, dt², shortest dt, the
    group's last ts) and the stream's last payload, bytes little-endian in a word."""
    for c in range(N_ACC_I):
        la[c] = acc_i[r, c]
    la[A_SIG] = np.int64(acc_f[r, F_SIG])
    la[A_HAM] = np.int64(acc_f[r, F_HAM])
    prev = np.uint64(0)
    for b in range(8):
        prev |= np.uint64(st_last_data[r, b]) << np.uint64(8 * b)
    return (
        acc_f[r, F_SUM], acc_f[r, F_SUM2], acc_f[r, F_MIN], acc_f[r, F_MIN2], acc_f[r, F_LAST],
        prev,
    )  # fmt: skip


@njit(cache=True, nogil=True, inline="always")
def _store_row(r, acc_i, acc_f, la, sum_dt, sum_dt2, min_dt, min_dt2, last_g):  # pragma: no cover
    """``la`` (with the counts of the lanes added) and the timing sums into row ``r``."""
    for c in range(N_ACC_I):
        acc_i[r, c] = la[c]
    acc_f[r, F_SIG] = la[A_SIG]  # (their acc_i columns wrap: never read)
    acc_f[r, F_HAM] = la[A_HAM]
    acc_f[r, F_SUM] = sum_dt
    acc_f[r, F_SUM2] = sum_dt2
    acc_f[r, F_MIN] = min_dt
    acc_f[r, F_MIN2] = min_dt2
    acc_f[r, F_LAST] = last_g


# -- per frame: timing --


@njit(cache=True, nogil=True, inline="always")
def _arrive(t, p64, last, last_g, prev):  # pragma: no cover - compiled
    """A frame at ``t`` with payload ``p64``: whether it has a predecessor (the
    stream's last frame, ``last``, not after it), the time since, the predecessor's
    payload; then the stream's last ts and payload and its group's last ts after it."""
    if np.isnan(last_g) or t > last_g:
        last_g = t
    hp = not np.isnan(last) and t >= last
    dt = t - last
    before = prev
    if np.isnan(last) or t >= last:  # an out-of-order frame does not become the predecessor
        last = t
        prev = p64
    return hp, dt, before, last, last_g, prev


@njit(cache=True, nogil=True, inline="always")
def _gap(dt, sum_dt, sum_dt2, min_dt, min_dt2):  # pragma: no cover - compiled
    """The timing sums with one more inter-arrival time ``dt``; the two shortest gaps."""
    sum_dt += dt
    sum_dt2 += dt * dt
    if dt < min_dt:
        min_dt2 = min_dt
        min_dt = dt
    elif dt < min_dt2:
        min_dt2 = dt
    return sum_dt, sum_dt2, min_dt, min_dt2


# -- per frame: the payload against its predecessor's --


@njit(cache=True, nogil=True, inline="always")
def _changes(p64, before, lanes, deltas):  # pragma: no cover - compiled
    """A payload ``p64`` unlike its predecessor's ``before``: their Hamming distance,
    whether a byte's change is outside the ``deltas`` lanes, and the byte change
    counts ``lanes`` (see _add_lanes) with its changed bytes added."""
    x = p64 ^ before
    h = x - ((x >> np.uint64(1)) & _M55)  # popcount of x
    h = (h & _M33) + ((h >> np.uint64(2)) & _M33)
    h = (h + (h >> np.uint64(4))) & _M0F
    c = x | (x >> np.uint64(4))  # 1 in the low bit of each changed byte
    c |= c >> np.uint64(2)
    c |= c >> np.uint64(1)
    chg = c & _M01
    ce = chg & _LANES
    co = (chg >> np.uint64(8)) & _LANES
    c_e, c_o, o_e, o_o, b_e, b_o = lanes
    if (chg * _M01) >> np.uint64(56) >= 2:  # every byte: another one changed too
        lanes = (c_e + ce, c_o + co, o_e + _ONE16, o_o + _ONE16, b_e + ce, b_o + co)
    else:  # the one changed byte has no other; the rest have it
        lanes = (c_e + ce, c_o + co, o_e + (_ONE16 - ce), o_o + (_ONE16 - co), b_e, b_o)
    # byte deltas +256, per 16-bit lane, against the learned bounds
    de = ((p64 & _LANES) + _BIAS16) - (before & _LANES)
    do = (((p64 >> np.uint64(8)) & _LANES) + _BIAS16) - ((before >> np.uint64(8)) & _LANES)
    dlo_e, dlo_o, dhi_e, dhi_o = deltas
    out = _outside(de, do, dlo_e, dlo_o, dhi_e, dhi_o)
    return np.int64((h * _M01) >> np.uint64(56)), out, lanes


# -- per frame: counters and checksums --


@njit(cache=True, nogil=True, inline="always")
def _field(p64, at, mask, shift):  # pragma: no cover - compiled
    """The bits ``mask`` of byte ``at`` of the payload ``p64``, shifted down by ``shift``."""
    return (np.int64((p64 >> np.uint64(8 * at)) & np.uint64(0xFF)) & mask) >> shift


@njit(cache=True, nogil=True, inline="always")
def _counter_broken(p64, before, counter):  # pragma: no cover - compiled
    """Whether the counter (fields as ``_counters`` gives them) did not step from
    ``before`` to ``p64`` as learned."""
    cb, cmask, cshift, cmod, cmod_pow2, step, cb2, cmask2, cshift2, cmod2, step2 = counter
    cc = _field(p64, cb, cmask, cshift)
    cp = _field(before, cb, cmask, cshift)
    broke = ((cc - cp) & (cmod - 1) if cmod_pow2 else (cc - cp) % cmod) != step
    if broke and cb2 >= 0:
        cc = _field(p64, cb2, cmask2, cshift2)
        cp = _field(before, cb2, cmask2, cshift2)
        broke = (cc - cp) % cmod2 != step2
    return broke


@njit(cache=True, nogil=True, inline="always")
def _checksum_bad(kind, at, p64, d, can_id, crc8_pow, dlc_masks):  # pragma: no cover - compiled
    """Whether the payload ``p64`` (dlc ``d``) fails the ``kind`` checksum it
    carries in byte ``at`` (-2: its last; for a nibble sum, the sum learned)."""
    if kind == _NIBBLE_SUM:
        msg = p64 & dlc_masks[min(d, 8)]
        nib = (msg & _LOW_NIBBLES) + ((msg >> np.uint64(4)) & _LOW_NIBBLES)  # <= 30 a byte
        return np.int64(((nib * _M01) >> np.uint64(56)) & np.uint64(0xF)) != np.int64(at)
    pos = np.int64(at)
    if pos == -2:
        pos = d - 1
    pos = min(max(pos, 0), 7)
    return _checksum(
        kind, p64, min(d, 8), np.int64(can_id), pos, crc8_pow, dlc_masks
    ) != np.int64((p64 >> np.uint64(8 * pos)) & np.uint64(0xFF))


# -- per frame: the payload alone --


@njit(cache=True, nogil=True, inline="always")
def _byte_bounds(p64, bytes_, n_tight, pair_lanes):  # pragma: no cover - compiled
    """Whether a byte of ``p64`` is outside its range (``bytes_`` lanes), and whether
    a tight byte pair's difference is outside its ``pair_lanes`` bounds, as the note
    of the first such pair (``pair_note``; 0: none)."""
    ve = p64 & _LANES
    vo = (p64 >> np.uint64(8)) & _LANES
    blo_e, blo_o, bhi_e, bhi_o = bytes_
    out = _outside(ve, vo, blo_e, blo_o, bhi_e, bhi_o)
    bad = False  # every pair is checked, no early exit
    if n_tight:
        ve += _BIAS16
        vo += _BIAS16
        for kk in range(7):  # pairs (a, a + kk + 1): a byte difference per lane
            sh = p64 >> np.uint64(8 * (kk + 1))
            de = ve - (sh & _LANES)
            do = vo - ((sh >> np.uint64(8)) & _LANES)
            pb = pair_lanes[kk]
            bad |= _outside(de, do, pb[0], pb[1], pb[2], pb[3])
        if bad:  # rare: which pair, for the evidence
            return out, _pair_note(ve, vo, p64, pair_lanes)
    return out, np.int64(0)


@njit(cache=True, nogil=True, inline="always")
def _pair_note(ve, vo, p64, pair_lanes):  # pragma: no cover - compiled
    """The note of the first tight pair (a, a + kk + 1), by distance then by a, whose
    difference (lanes ``ve``/``vo``: the even and odd bytes +256) is outside its
    ``pair_lanes`` bounds: its index in ``PAIRS`` + 1 and the difference +256."""
    for kk in range(7):
        sh = p64 >> np.uint64(8 * (kk + 1))
        de = ve - (sh & _LANES)
        do = vo - ((sh >> np.uint64(8)) & _LANES)
        pb = pair_lanes[kk]
        me = _lanes_below(de, pb[0]) | _lanes_below(pb[2], de)
        mo = _lanes_below(do, pb[1]) | _lanes_below(pb[3], do)
        for a in range(8):
            if _lane(me, mo, a) & 0x8000:
                return np.int64(a * (15 - a) // 2 + kk + 1) + (_lane(de, do, a) << 5)
    return np.int64(0)


@njit(cache=True, nogil=True, inline="always")
def _signals(p64, couplings, fmask, fvalue):  # pragma: no cover - compiled
    """Whether two coupled 16-bit signals of ``p64`` (``couplings`` as ``_couplings``
    gives them) differ by more than learned, as the note of the first pair that does
    (``coupling_note``; 0: none), and whether a byte that held one value (``fmask``:
    ``fvalue``) moved."""
    n_couple, couple_a, couple_b, couple_le, couple_lo, couple_hi, couple_rel = couplings
    broken = np.int64(0)
    for c in range(n_couple):
        wa = _word(p64, couple_a[c], couple_le[c])
        wb = _word(p64, couple_b[c], couple_le[c])
        diff = wa - wb
        if (diff < couple_lo[c]) | (diff > couple_hi[c]):  # rare: the relative bound decides
            off = abs(diff - (couple_lo[c] + couple_hi[c]) // 2) * np.int64(REL_UNIT)
            if broken == 0 and off > np.int64(couple_rel[c]) * max(wa, wb):
                broken = coupling_note(c, diff)
    return broken, (p64 & fmask) != fvalue


@njit(cache=True, nogil=True, inline="always")
def coupling_note(c, diff):  # pragma: no cover - compiled
    """One int (8 .. 2^20) saying which of a stream's couplings broke, and its signals'
    difference (a - b, +65536) (``detector.features.columns.read_coupling_note``)."""
    return c + 1 + ((diff + 65536) << 3)


# -- per frame: novelty --


@njit(cache=True, nogil=True, inline="always")
def _unseen(h, payload_hashes):  # pragma: no cover - compiled
    """Whether the hash ``h`` is not in the sorted ``payload_hashes`` (not empty)."""
    return payload_hashes[min(np.searchsorted(payload_hashes, h), payload_hashes.shape[0] - 1)] != h


@njit(cache=True, nogil=True, inline="always")
def _far(p64, bytes_):  # pragma: no cover - compiled
    """How far (raw units) the byte of ``p64`` furthest outside its range (``bytes_``
    lanes, as ``_bounds`` gives them) lies past it (0 when every byte is inside), and
    the note that names it (``far_note``)."""
    blo_e, blo_o, bhi_e, bhi_o = bytes_
    far = np.int64(0)
    note = np.int64(0)
    for b in range(8):  # a fixed count: unrolled
        lo, hi = _lane(blo_e, blo_o, b), _lane(bhi_e, bhi_o, b)
        v = np.int64((p64 >> np.uint64(8 * b)) & np.uint64(0xFF))
        past = max(lo - v, v - hi)
        if past > far:
            far = past
            note = far_note(b, v, lo, hi)
    return far, note


@njit(cache=True, nogil=True, inline="always")
def _jump(p64, before, deltas):  # pragma: no cover - compiled
    """The note (``jump_note``) of the byte whose change from ``before`` to ``p64`` lies
    furthest outside its learned steps (``deltas`` lanes, +256, as ``_bounds`` gives
    them); 0 when none does."""
    dlo_e, dlo_o, dhi_e, dhi_o = deltas
    far = np.int64(0)
    note = np.int64(0)
    for b in range(8):  # a fixed count: unrolled
        lo, hi = _lane(dlo_e, dlo_o, b), _lane(dhi_e, dhi_o, b)
        at = np.uint64(8 * b)
        step = np.int64((p64 >> at) & np.uint64(0xFF)) - np.int64((before >> at) & np.uint64(0xFF))
        step += 256
        past = max(lo - step, step - hi)
        if past > far:
            far = past
            note = jump_note(b, step, lo, hi)
    return note


@njit(cache=True, nogil=True, inline="always")
def jump_note(byte, step, lo, hi):  # pragma: no cover - compiled
    """One int (8 .. 2^30) saying which byte changed by more than it ever did, its step
    and the learned steps, each +256 (a bound past 511 is past any step: 511)
    (``detector.features.columns.read_jump_note`` reads it)."""
    return byte | (step << 3) | (min(lo, 511) << 12) | (min(hi, 511) << 21)


@njit(cache=True, nogil=True, inline="always")
def far_note(byte, value, lo, hi):  # pragma: no cover - compiled
    """One int (< 2^27) saying which byte left its range, its value and the range
    (``detector.features.columns.read_far_note`` reads it)."""
    return byte | (value << 3) | (lo << 11) | (hi << 19)


@njit(cache=True, nogil=True, inline="always")
def _count(la, out, bad, ck_bad, novel, dlc_bad, broken, moved, far):  # pragma: no cover - compiled
    """A frame's verdicts on its payload alone into the sums ``la``; ``far``: how far
    past its range, and the note that says where (``_far``)."""
    la[A_OUT] += out
    past, note = far
    if past > la[A_FAR_MAX]:
        la[A_FAR_MAX] = past
        la[A_FAR_NOTE] = note
    la[A_PAIR] += bad != 0
    if bad != 0 and la[A_PAIR_NOTE] == 0:
        la[A_PAIR_NOTE] = bad
    la[A_CHECKSUM] += ck_bad
    la[A_NOVEL] += novel
    la[A_DLC] += dlc_bad
    la[A_COUPLE] += broken != 0
    if broken != 0 and la[A_COUPLE_NOTE] == 0:
        la[A_COUPLE_NOTE] = broken
    la[A_FIXED] += moved
