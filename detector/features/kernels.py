"""Compiled inner loops of the hot path (numba), one pass over a batch each.

The features of a (vehicle, id, window) group need a dozen comparisons per
frame against the learned baseline. As separate numpy passes each one gathers
the baseline rows for every frame again and materialises an (n, 8) temporary;
fused into one loop over the frames of a group, the baseline row is read once
per group and nothing is materialised. Likewise scikit-learn scores an
isolation forest tree by tree with ~3 ms of Python per call; the traversal
below walks all trees for all rows in one call with the same float32
comparison, so scores are identical.

The numpy definitions these loops implement are the reference: see
``detector.features.columns`` for what each feature means, and tests/test_kernels.py
for the equivalence checks.
"""

from __future__ import annotations

import llvmlite.ir as llvm_ir
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from detector.core.schema import DLC_MASKS, frame_words
from detector.features.baseline import PAIRS, Baseline, crc8_table

_HASH_MUL = np.uint64(0x9E3779B97F4A7C15)
# 64-bit masks for counting over the 8 bytes of a payload at once (SWAR); counts
# per byte are kept in 16-bit lanes: bytes 0, 2, 4, 6 in one word, 1, 3, 5, 7 in another
_M55 = np.uint64(0x5555_5555_5555_5555)
_M33 = np.uint64(0x3333_3333_3333_3333)
_M0F = np.uint64(0x0F0F_0F0F_0F0F_0F0F)
_M01 = np.uint64(0x0101_0101_0101_0101)
_LANES = np.uint64(0x00FF_00FF_00FF_00FF)  # a byte's place in a 16-bit lane
_ONE16 = np.uint64(0x0001_0001_0001_0001)
_BIAS16 = np.uint64(0x0100_0100_0100_0100)  # +256: a byte difference stays positive
_HIGH16 = np.uint64(0x8000_8000_8000_8000)
_LANE_MAX = 65535  # frames a 16-bit lane counts before it is added to the sums
#: frames ahead of the one being folded whose bytes are asked for (see _fold)
_PREFETCH_AHEAD = 16


# Constants the kernels compile in, defined here: numba's on-disk cache is only
# invalidated when this file changes. (_fold numbers the pair (a, b) as PAIRS does:
# upper-triangle order, checked here.)
_PAIR_A, _PAIR_B = (a.astype(np.int64) for a in np.triu_indices(8, 1))
if not (np.array_equal(PAIRS[:, 0], _PAIR_A) and np.array_equal(PAIRS[:, 1], _PAIR_B)):
    raise ImportError("detector.features.baseline.PAIRS changed: update the pair constants of the kernels")
_CRC8 = crc8_table()  # CRC-8 SAE J1850, as the baseline learns it


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


_CRC8_POW = _crc8_powers(_CRC8)
# bytes below n, n = 0..8, of a little-endian 64-bit payload


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


@njit(cache=True, nogil=True)
def _id_table(ids):  # pragma: no cover - compiled
    """Position of each standard id (0..0x7FF) in the sorted ``ids``, -1 if not there."""
    lut = np.full(2048, -1, np.int64)
    for k in range(ids.shape[0]):
        if ids[k] < 2048:
            lut[ids[k]] = k
    return lut


@njit(cache=True, nogil=True)
def id_slots(can_id, ids):  # pragma: no cover - compiled
    """``Baseline.slots``: each id's position in the sorted ``ids`` (clipped) and
    whether it is there; the table answers standard ids without a search."""
    n_ids = ids.shape[0]
    lut = _id_table(ids)
    slot = np.zeros(can_id.shape[0], np.int64)
    known = np.zeros(can_id.shape[0], np.bool_)
    for i in range(can_id.shape[0]):
        c = can_id[i]
        k = lut[c] if c < 2048 else -1
        if k < 0 and n_ids > 0:
            k = min(np.searchsorted(ids, c), n_ids - 1)
        elif k >= 0:
            known[i] = True
        if k >= 0:
            slot[i] = k
            if not known[i]:
                known[i] = ids[k] == c
    return slot, known


@njit(cache=True, nogil=True)
def window_pass(ts, can_id, vehicle, window_s, closed_upto, first_window, newest, none, ids):  # pragma: no cover
    """Each frame's window, whether it is late (in a window its vehicle has
    closed), and its id's slot in the sorted baseline ``ids`` (0 for an id not
    there, and then ``all_known`` is False). Over the frames that are not
    late: per vehicle, set ``first_window`` if still ``none``, raise ``newest``
    to the newest ts, and mark it in the batch."""
    n = ts.shape[0]
    n_ids = ids.shape[0]
    lut = _id_table(ids)
    win = np.empty(n, np.int64)
    late = np.zeros(n, np.bool_)
    slot = np.zeros(n, np.int64)
    in_batch = np.zeros(closed_upto.shape[0], np.bool_)
    earliest = np.full(closed_upto.shape[0], np.iinfo(np.int64).max)
    n_late = 0
    all_known = True
    for i in range(n):
        w = np.int64(np.floor(ts[i] / window_s))
        win[i] = w
        v = vehicle[i]
        if w < closed_upto[v]:
            late[i] = True
            n_late += 1
            continue
        in_batch[v] = True
        if w < earliest[v]:
            earliest[v] = w
        if ts[i] > newest[v]:
            newest[v] = ts[i]
        c = can_id[i]
        k = lut[c] if c < 2048 else -1
        if k < 0 and c >= 2048 and n_ids > 0:  # extended: a binary search
            k = min(np.searchsorted(ids, c), n_ids - 1)
            if ids[k] != c:
                k = -1
        if k < 0:
            all_known = False
        else:
            slot[i] = k
    for v in range(closed_upto.shape[0]):
        if in_batch[v] and first_window[v] == none:
            first_window[v] = earliest[v]
    return win, late, n_late, in_batch, slot, all_known, earliest


@njit(cache=True, nogil=True)
def stream_groups(key, n_keys, ts, win):  # pragma: no cover - compiled
    """Counting sort of frames by stream ``key`` (0..n_keys-1, see ``stream_keys``),
    stable, with the bounds of each stream's run (plus a final end) and the
    number of (stream, window) groups. ``in_order`` False when some stream's
    frames were not in time order: then the rest is not valid and the caller
    sorts by (key, ts) and calls ``segments``."""
    n = key.shape[0]
    pos = np.zeros(n_keys + 1, np.int64)
    for i in range(n):
        pos[key[i] + 1] += 1
    n_seg = 0
    for k in range(n_keys):
        if pos[k + 1] > 0:
            n_seg += 1
        pos[k + 1] += pos[k]
    starts = np.empty(n_seg + 1, np.int64)
    q = 0
    for k in range(n_keys):
        if pos[k + 1] > pos[k]:
            starts[q] = pos[k]
            q += 1
    starts[n_seg] = n
    order = np.empty(n, np.int64)
    last_ts = np.full(n_keys, -np.inf)
    last_w = np.zeros(n_keys, np.int64)
    seen = np.zeros(n_keys, np.bool_)
    in_order = True
    changes = 0
    for i in range(n):
        k = key[i]
        if ts[i] < last_ts[k]:
            in_order = False
        last_ts[k] = ts[i]
        if seen[k] and win[i] != last_w[k]:
            changes += 1  # in arrival order, which is time order when in_order
        seen[k] = True
        last_w[k] = win[i]
        order[pos[k]] = i
        pos[k] += 1
    return order, in_order, starts, n_seg + changes


@njit(cache=True, nogil=True)
def stream_keys(vehicle, vrank, id_rank, n_ids):  # pragma: no cover - compiled
    """Stream number of each frame, ordered by (vehicle, id)."""
    key = np.empty(vehicle.shape[0], np.int64)
    for i in range(vehicle.shape[0]):
        key[i] = vrank[vehicle[i]] * n_ids + id_rank[i]
    return key


@njit(cache=True, nogil=True)
def segments(key, win, order):  # pragma: no cover - compiled
    """Bounds of each stream's run in ``order`` (with a final end), and the number
    of (stream, window) groups: each can close the one before it."""
    n = order.shape[0]
    starts = np.empty(n + 1, np.int64)
    n_seg = 0
    groups = 0
    for i in range(n):
        j = order[i]
        if i == 0 or key[j] != key[order[i - 1]]:
            starts[n_seg] = i
            n_seg += 1
            groups += 1
        elif win[j] != win[order[i - 1]]:
            groups += 1
    starts[n_seg] = n
    return starts[: n_seg + 1], groups


#: Accumulator columns of an open (vehicle, id, window) group.
#: int32: frames, frames with a predecessor, Hamming sum, then per byte: changes,
#: frames where another byte changed, changes together with another byte; then
#: frames failing each check; the most severe label; frames breaking a signal coupling,
#: frames moving a fixed byte.
A_COUNT, A_NDT, A_HAM = 0, 1, 2
A_CHG, A_OTHER, A_COND = 3, 11, 19
A_OUT, A_DELTA, A_PAIR, A_COUNTER, A_CHECKSUM, A_NOVEL, A_DLC, A_LABEL = range(27, 35)
A_COUPLE, A_FIXED = 35, 36
N_ACC_I = 37
#: float64: sum and sum of squares of inter-arrival times, the shortest, the last frame's ts.
F_SUM, F_SUM2, F_MIN, F_LAST = 0, 1, 2, 3
N_ACC_F = 4
NO_WINDOW = np.iinfo(np.int64).min


@njit(cache=True, nogil=True)
def _emit(
    r, s, k, window_s, st_open, acc_i, acc_f, period, mean_count, ham_mean, ham_std,
    change_rate, cond_change, n, out_row, out_window, out_X, out_attack, out_last, out_count,
):  # pragma: no cover - compiled
    """Close row ``r``'s open group into output ``n``: its feature columns up to
    the bus features, then reset the accumulators."""
    a = acc_i[r]
    count = a[A_COUNT]
    out_row[n] = r
    out_window[n] = st_open[r]
    out_attack[n] = a[A_LABEL]
    out_last[n] = acc_f[r, F_LAST]
    out_count[n] = count
    X = out_X[n]
    if not k:  # an id the baseline never saw: only its count, which is also its novelty
        X[0] = count
        X[1] = 1.0
        X[2] = 1.0
        X[15] = count
    else:
        per = period[s]
        if not (np.isfinite(per) and per > 0):
            per = window_s
        n_dt = a[A_NDT]
        pairs_n = max(n_dt, 1)
        mc = mean_count[s]
        X[0] = count / max(mc, 1e-9) if mc > 0 else count
        min_dt = acc_f[r, F_MIN]
        X[1] = min_dt / per if np.isfinite(min_dt) else 1.0
        mean_dt = acc_f[r, F_SUM] / n_dt if n_dt > 0 else 0.0
        X[2] = mean_dt / per if n_dt > 0 else 1.0
        if n_dt > 1:
            X[3] = np.sqrt(max(acc_f[r, F_SUM2] / n_dt - mean_dt**2, 0.0)) / per
        X[4] = ((st_open[r] + 1) * window_s - acc_f[r, F_LAST]) / per
        if n_dt > 0:
            X[5] = (a[A_HAM] / pairs_n - ham_mean[s]) / (ham_std[s] + 0.5)
        drop = 0.0
        rise = 0.0
        for b in range(8):
            n_other = a[A_OTHER + b]
            if n_other >= 3:
                d = cond_change[s, b] - a[A_COND + b] / max(n_other, 1.0)
                if d > drop:
                    drop = d
            q = a[A_CHG + b] / pairs_n - change_rate[s, b]
            if q > rise:
                rise = q
        X[6] = drop
        X[7] = rise if n_dt > 0 else 0.0
        X[8] = a[A_OUT] / count
        X[9] = a[A_DELTA] / pairs_n
        X[10] = a[A_PAIR] / count
        X[11] = a[A_COUNTER] / pairs_n
        X[12] = a[A_CHECKSUM] / count
        X[13] = a[A_NOVEL] / count
        X[14] = a[A_DLC] / count
        X[16] = a[A_COUPLE] / count
        X[17] = a[A_FIXED] / count
    for c in range(acc_i.shape[1]):
        acc_i[r, c] = 0
    acc_f[r, F_SUM] = 0.0
    acc_f[r, F_SUM2] = 0.0
    acc_f[r, F_MIN] = np.inf
    acc_f[r, F_LAST] = np.nan
    st_open[r] = NO_WINDOW


@intrinsic
def _prefetch(typingctx, arr, idx):
    """Ask the CPU to bring ``arr[idx]``'s cache line in (LLVM's prefetch: read,
    keep in all levels), without waiting for it or faulting on it."""
    if not isinstance(arr, types.Array) or not isinstance(idx, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        aryty = signature.args[0]
        ary = context.make_array(aryty)(context, builder, args[0])
        ptr = cgutils.get_item_pointer(context, builder, aryty, ary, [args[1]], wraparound=False)
        i8p, i32 = llvm_ir.IntType(8).as_pointer(), llvm_ir.IntType(32)
        fnty = llvm_ir.FunctionType(llvm_ir.VoidType(), [i8p, i32, i32, i32])
        # unmangled: LLVM names it for the pointer type (p0, or p0i8 before opaque pointers)
        fn = cgutils.get_or_insert_function(builder.module, fnty, "llvm.prefetch")
        builder.call(fn, [builder.bitcast(ptr, i8p), i32(0), i32(3), i32(1)])
        return context.get_dummy_value()

    return types.void(arr, idx), codegen


@njit(cache=True, nogil=True, inline="always")
def _lanes_below(a, b):  # pragma: no cover - compiled
    """High bit of each 16-bit lane where a < b (lanes below 0x8000)."""
    return ~((a | _HIGH16) - b) & _HIGH16


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
    little-endian in the word), in either byte order, as baseline.words16."""
    lo = np.int64((p64 >> np.uint64(8 * at)) & np.uint64(0xFF))
    hi = np.int64((p64 >> np.uint64(8 * (at + 1))) & np.uint64(0xFF))
    return hi * 256 + lo if little_endian else lo * 256 + hi


@njit(cache=True, nogil=True)
def _add_lanes(la, lanes):  # pragma: no cover - compiled
    """Add the per-byte counts held in 16-bit ``lanes`` (changed, with another byte
    changed, both: even bytes then odd bytes) to the sums ``la``, and zero them."""
    for i, col in enumerate((A_CHG, A_CHG, A_OTHER, A_OTHER, A_COND, A_COND)):
        for q in range(4):
            la[col + 2 * q + i % 2] += np.int64((lanes[i] >> np.uint64(16 * q)) & np.uint64(0xFFFF))
        lanes[i] = 0


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


@njit(cache=True, nogil=True)
def _fold(  # pragma: no cover - compiled
    order, seg_start, seg_row, seg_slot, seg_known,
    ts, can_id, dlc, data64, label, win,
    st_last_ts, st_last_data, st_open, acc_i, acc_f,
    window_s, period, mean_count, ham_mean, ham_std, change_rate, cond_change,
    byte_min, byte_max, delta_min, delta_max, pair_min, pair_max, pair_tight,
    counter_byte, counter_mask, counter_shift, counter_step,
    counter2_byte, counter2_mask, counter2_shift, counter2_step,
    checksum_kind, checksum_byte, has_dict, payload_hashes, dlc_mask,
    couple_a, couple_b, couple_le, couple_lo, couple_hi, fixed_mask, fixed_value,
    crc8_pow, dlc_masks, hash_mul,
    late, out_row, out_window, out_X, out_attack, out_last, out_count,
):
    n_hash = payload_hashes.shape[0]
    n_couple_max = couple_a.shape[1]
    n_frames = order.shape[0]
    la = np.zeros(N_ACC_I, np.int64)
    pair_lanes = np.zeros((7, 4), np.uint64)  # per distance: lo even, lo odd, hi even, hi odd
    lanes = np.zeros(6, np.uint64)  # byte change counts since the last _add_lanes
    n_emit = 0
    for g in range(seg_start.shape[0] - 1):
        r = seg_row[g]
        s = seg_slot[g]
        k = seg_known[g]
        cb = counter_byte[s]
        cmask = counter_mask[s]
        cshift = counter_shift[s]
        cmod = (cmask >> cshift) + 1
        cmod_pow2 = (cmod & (cmod - 1)) == 0  # (every learned field) a mask, not a division
        cb2 = counter2_byte[s]  # a second counter: a frame must break both
        cmask2 = counter2_mask[s]
        cshift2 = counter2_shift[s]
        cmod2 = (cmask2 >> cshift2) + 1
        ck = checksum_kind[s]
        dict_on = has_dict[s] and n_hash > 0
        slot_hash = np.uint64(s + 1) * hash_mul
        n_couple = 0
        while n_couple < n_couple_max and couple_a[s, n_couple] >= 0:
            n_couple += 1
        fmask = fixed_mask[s]
        fvalue = fixed_value[s]
        # the stream's row is worked on in locals (registers, L1) and written back
        for c in range(N_ACC_I):
            la[c] = acc_i[r, c]
        sum_dt = acc_f[r, F_SUM]
        sum_dt2 = acc_f[r, F_SUM2]
        min_dt = acc_f[r, F_MIN]
        last_g = acc_f[r, F_LAST]
        last = st_last_ts[r]
        prev = np.uint64(0)  # the stream's last payload so far, bytes little-endian
        for b in range(8):
            prev |= np.uint64(st_last_data[r, b]) << np.uint64(8 * b)
        # a payload equal to its predecessor's changes no byte: a delta of 0 and a
        # counter step of 0 are then all there is to check
        zero_jump = False
        for b in range(8):
            zero_jump |= (0 < delta_min[s, b]) | (0 > delta_max[s, b])
        zero_counter = cb >= 0 and 0 != counter_step[s] and (cb2 < 0 or 0 != counter2_step[s])
        # the segment's baseline bounds as 16-bit lanes (see _to_lanes): byte deltas
        # (+256), byte ranges, and per distance kk + 1 the byte pairs (a, a + kk + 1)
        # (+256; a loose pair, or one past byte 7, gets 0..1023: never out)
        dlo_e, dlo_o = _to_lanes(delta_min[s], 256)
        dhi_e, dhi_o = _to_lanes(delta_max[s], 256)
        blo_e, blo_o = _to_lanes(byte_min[s], 0)
        bhi_e, bhi_o = _to_lanes(byte_max[s], 0)
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
        n_lanes = 0
        p_dlc = np.int64(-1)  # the payload the verdicts below were last worked out for
        p_payload = np.uint64(0)
        out = bad = ck_bad = novel = dlc_bad = broken = moved = False
        for i in range(seg_start[g], seg_start[g + 1]):
            # A stream's frames lie ~its vehicle's id count apart in the batch, each
            # in another cache line, and a frame's work is too long for the CPU to
            # reach the next ones' loads by itself: ask for them ahead (on a 2-core
            # EPYC the fold took 2.2x as long as over the same frames laid out in order)
            if i + _PREFETCH_AHEAD < n_frames:
                ahead = order[i + _PREFETCH_AHEAD]
                _prefetch(ts, ahead)  # a frame's 24 bytes span at most two lines:
                _prefetch(data64, ahead)  # ts starts it, data ends it
                _prefetch(win, ahead)
            j = order[i]
            w = win[j]
            if w != st_open[r]:
                if st_open[r] != NO_WINDOW and w < st_open[r]:
                    late[j] = True  # older than its stream's open window
                    continue
                if st_open[r] != NO_WINDOW:  # a newer window: the open one is closed
                    _add_lanes(la, lanes)
                    n_lanes = 0
                    for c in range(N_ACC_I):
                        acc_i[r, c] = la[c]
                        la[c] = 0
                    acc_f[r, F_SUM] = sum_dt
                    acc_f[r, F_SUM2] = sum_dt2
                    acc_f[r, F_MIN] = min_dt
                    acc_f[r, F_LAST] = last_g
                    _emit(
                        r, s, k, window_s, st_open, acc_i, acc_f, period, mean_count,
                        ham_mean, ham_std, change_rate, cond_change, n_emit, out_row,
                        out_window, out_X, out_attack, out_last, out_count,
                    )  # fmt: skip
                    n_emit += 1
                    sum_dt = 0.0
                    sum_dt2 = 0.0
                    min_dt = np.inf
                    last_g = np.nan
                st_open[r] = w
            t = ts[j]
            la[A_COUNT] += 1
            if la[A_COUNT] == 1 or label[j] > la[A_LABEL]:
                la[A_LABEL] = label[j]
            hp = not np.isnan(last) and t >= last
            p64 = data64[j]  # the payload, bytes little-endian, worked on as one word
            if np.isnan(last_g) or t > last_g:
                last_g = t
            dt = t - last
            before = prev  # the current frame's predecessor
            if np.isnan(last) or t >= last:  # an out-of-order frame does not become the predecessor
                last = t
                prev = p64
            if not k:
                continue
            if hp:
                la[A_NDT] += 1
                sum_dt += dt
                sum_dt2 += dt * dt
                if dt < min_dt:
                    min_dt = dt
                if p64 == before:
                    la[A_DELTA] += zero_jump
                    la[A_COUNTER] += zero_counter
                else:
                    x = p64 ^ before
                    h = x - ((x >> np.uint64(1)) & _M55)  # popcount of x
                    h = (h & _M33) + ((h >> np.uint64(2)) & _M33)
                    h = (h + (h >> np.uint64(4))) & _M0F
                    la[A_HAM] += np.int64((h * _M01) >> np.uint64(56))
                    t = x | (x >> np.uint64(4))  # 1 in the low bit of each changed byte
                    t |= t >> np.uint64(2)
                    t |= t >> np.uint64(1)
                    chg = t & _M01
                    cnt = (chg * _M01) >> np.uint64(56)
                    ce = chg & _LANES
                    co = (chg >> np.uint64(8)) & _LANES
                    lanes[0] += ce
                    lanes[1] += co
                    if cnt >= 2:  # every byte: another one changed too
                        lanes[2] += _ONE16
                        lanes[3] += _ONE16
                        lanes[4] += ce
                        lanes[5] += co
                    else:  # the one changed byte has no other; the rest have it
                        lanes[2] += _ONE16 - ce
                        lanes[3] += _ONE16 - co
                    n_lanes += 1
                    if n_lanes == _LANE_MAX:
                        _add_lanes(la, lanes)
                        n_lanes = 0
                    # byte deltas +256, per 16-bit lane, against the learned bounds
                    de = ((p64 & _LANES) + _BIAS16) - (before & _LANES)
                    do = (((p64 >> np.uint64(8)) & _LANES) + _BIAS16) - ((before >> np.uint64(8)) & _LANES)
                    la[A_DELTA] += _outside(de, do, dlo_e, dlo_o, dhi_e, dhi_o)
                    if cb >= 0:
                        cc = (np.int64((p64 >> np.uint64(8 * cb)) & np.uint64(0xFF)) & cmask) >> cshift
                        cp = (np.int64((before >> np.uint64(8 * cb)) & np.uint64(0xFF)) & cmask) >> cshift
                        step = (cc - cp) & (cmod - 1) if cmod_pow2 else (cc - cp) % cmod
                        broke = step != counter_step[s]
                        if broke and cb2 >= 0:
                            cc = (np.int64((p64 >> np.uint64(8 * cb2)) & np.uint64(0xFF)) & cmask2) >> cshift2
                            cp = (np.int64((before >> np.uint64(8 * cb2)) & np.uint64(0xFF)) & cmask2) >> cshift2
                            broke = (cc - cp) % cmod2 != counter2_step[s]
                        la[A_COUNTER] += broke
            d = np.int64(dlc[j])
            if not (p_dlc == d and p_payload == p64):
                # checks of the payload alone: a repeated payload (a third of all
                # frames) repeats the stream's last verdicts
                p_payload = p64
                p_dlc = d
                ve = p64 & _LANES
                vo = (p64 >> np.uint64(8)) & _LANES
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
                ck_bad = False
                if ck > 0:
                    pos = np.int64(checksum_byte[s])
                    if pos == -2:
                        pos = d - 1
                    pos = min(max(pos, 0), 7)
                    ck_bad = _checksum(
                        ck, p64, min(d, 8), np.int64(can_id[j]), pos, crc8_pow, dlc_masks
                    ) != np.int64((p64 >> np.uint64(8 * pos)) & np.uint64(0xFF))
                novel = False
                if dict_on:
                    h = p64 ^ slot_hash
                    m = np.searchsorted(payload_hashes, h)
                    if m >= n_hash:
                        m = n_hash - 1
                    novel = payload_hashes[m] != h
                dlc_bad = ((np.int64(dlc_mask[s]) >> d) & 1) == 0
                moved = (p64 & fmask) != fvalue
                broken = False
                for c in range(n_couple):
                    diff = _word(p64, couple_a[s, c], couple_le[s, c]) - _word(
                        p64, couple_b[s, c], couple_le[s, c]
                    )
                    broken |= (diff < couple_lo[s, c]) | (diff > couple_hi[s, c])
            la[A_COUPLE] += broken
            la[A_FIXED] += moved
            la[A_OUT] += out
            la[A_PAIR] += bad
            la[A_CHECKSUM] += ck_bad
            la[A_NOVEL] += novel
            la[A_DLC] += dlc_bad
        _add_lanes(la, lanes)
        for c in range(N_ACC_I):
            acc_i[r, c] = la[c]
        acc_f[r, F_SUM] = sum_dt
        acc_f[r, F_SUM2] = sum_dt2
        acc_f[r, F_MIN] = min_dt
        acc_f[r, F_LAST] = last_g
        st_last_ts[r] = last
        for b in range(8):
            st_last_data[r, b] = np.uint8((prev >> np.uint64(8 * b)) & np.uint64(0xFF))
    return n_emit


@njit(cache=True, nogil=True)
def _close(  # pragma: no cover - compiled
    rows, row_slot, row_known, row_cut, st_open, acc_i, acc_f, window_s,
    period, mean_count, ham_mean, ham_std, change_rate, cond_change,
    n_emit, out_row, out_window, out_X, out_attack, out_last, out_count,
):
    for q in range(rows.shape[0]):
        r = rows[q]
        if st_open[r] != NO_WINDOW and st_open[r] < row_cut[q]:
            _emit(
                r, row_slot[q], row_known[q], window_s, st_open, acc_i, acc_f, period,
                mean_count, ham_mean, ham_std, change_rate, cond_change, n_emit, out_row,
                out_window, out_X, out_attack, out_last, out_count,
            )  # fmt: skip
            n_emit += 1
    return n_emit


class Emitted:
    """Groups closed by one push: table row, window, features (bus columns 0)."""

    def __init__(self, capacity: int, n_features: int) -> None:
        self.row = np.zeros(capacity, np.int64)
        self.window = np.zeros(capacity, np.int64)
        self.X = np.zeros((capacity, n_features))
        self.attack = np.zeros(capacity, np.int8)
        self.last_ts = np.zeros(capacity)
        self.count = np.zeros(capacity, np.int64)
        self.n = 0

    def buffers(self) -> tuple:
        return self.row, self.window, self.X, self.attack, self.last_ts, self.count

    def take(self, idx: np.ndarray) -> tuple:
        return tuple(a[idx] for a in self.buffers())


def fold(
    frames: np.ndarray,
    win: np.ndarray,
    order: np.ndarray,
    seg_start: np.ndarray,
    seg_row: np.ndarray,
    table,
    bl: Baseline,
    window_s: float,
    emitted: Emitted,
) -> np.ndarray:
    """Fold ``frames[order]`` (grouped by stream: ``seg_start`` bounds, table row
    ``seg_row``) into the table's open groups, closing a stream's open group when
    its next window begins. Returns the per-frame "late" mask: frames older than
    their stream's open window, which are not folded."""
    ids = (table.keys[seg_row] & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    slot, known = id_slots(ids, bl.ids)
    late = np.zeros(len(frames), np.bool_)
    emitted.n = _fold(
        order, seg_start, seg_row, slot, known,
        frames["ts"], frames["can_id"], frames["dlc"], frame_words(np.ascontiguousarray(frames))[:, 2], frames["label"], win,
        table.last_ts, table.last_data, table.open_window, table.acc_i, table.acc_f,
        float(window_s), bl.period, bl.mean_count, bl.ham_mean, bl.ham_std, bl.change_rate,
        bl.cond_change, bl.byte_min, bl.byte_max, bl.delta_min, bl.delta_max,
        bl.pair_min, bl.pair_max, bl.pair_tight, bl.counter_byte, bl.counter_mask,
        bl.counter_shift, bl.counter_step, bl.counter2_byte, bl.counter2_mask,
        bl.counter2_shift, bl.counter2_step, bl.checksum_kind, bl.checksum_byte, bl.has_dict,
        bl.payload_hashes.astype(np.uint64), bl.dlc_mask,
        bl.couple_a, bl.couple_b, bl.couple_le, bl.couple_lo, bl.couple_hi,
        bl.fixed_mask.astype(np.uint64), bl.fixed_value.astype(np.uint64),
        _CRC8_POW, DLC_MASKS, _HASH_MUL,
        late, *emitted.buffers(),
    )  # fmt: skip
    return late


def close(
    rows: np.ndarray, cut: np.ndarray, table, bl: Baseline, window_s: float, emitted: Emitted
) -> None:
    """Close the open groups of table ``rows`` whose window lies before ``cut`` (per row)."""
    ids = (table.keys[rows] & np.uint64(0xFFFF_FFFF)).astype(np.uint32)
    slot, known = id_slots(ids, bl.ids)
    emitted.n = _close(
        rows, slot, known, cut, table.open_window, table.acc_i, table.acc_f, float(window_s),
        bl.period, bl.mean_count, bl.ham_mean, bl.ham_std, bl.change_rate, bl.cond_change,
        emitted.n, *emitted.buffers(),
    )  # fmt: skip
