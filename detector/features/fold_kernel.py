"""The fold (numba): each frame's checks against the learned baseline, summed
into its stream's open (vehicle, id, window) group; a group becomes a feature
row when its stream's next window begins. Called through
``detector.features.kernels.fold`` and ``close``.

The features of a group need a dozen comparisons per frame against the
baseline. As separate numpy passes each one gathers the baseline rows for every
frame again and materialises an (n, 8) temporary; fused into one loop over the
frames of a group, the baseline row is read once per group and nothing is
materialised. ``_fold`` is that loop; each family of checks is a step of its own
(``detector.features.fold_steps``) that numba inlines into it, so it compiles as
if written out in one function. tests/test_kernels.py checks it against the
numpy reference.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import llvmlite.ir as llvm_ir
import numpy as np
from numba import njit, types
from numba.core import cgutils
from numba.extending import intrinsic

from detector.features import fold_steps
from detector.features.fold_steps import (
    _LANE_MAX,
    _NO_LANES,
    A_CHECKSUM,
    A_CHG,
    A_COND,
    A_COUNT,
    A_COUNTER,
    A_COUPLE,
    A_COUPLE_NOTE,
    A_DELTA,
    A_DLC,
    A_FAR_MAX,
    A_FAR_NOTE,
    A_FIXED,
    A_HAM,
    A_JUMP_NOTE,
    A_LABEL,
    A_NDT,
    A_NOVEL,
    A_OTHER,
    A_OUT,
    A_PAIR,
    A_PAIR_NOTE,
    A_SIG,
    F_HAM,
    F_LAST,
    F_MIN,
    F_MIN2,
    F_SIG,
    F_SUM,
    F_SUM2,
    N_ACC_I,
    NO_WINDOW,
    _add_lanes,
    _arrive,
    _bounds,
    _byte_bounds,
    _changes,
    _checksum_bad,
    _count,
    _counter_broken,
    _counters,
    _couplings,
    _far,
    _gap,
    _jump,
    _load_row,
    _signals,
    _store_row,
    _unseen,
    _word,
)

# numba's on-disk cache of a function is invalidated only when the file defining it
# changes, not when a file it imports from does; yet _fold and _close compile in the
# constants and steps of fold_steps.py too. Its digest is kept here, so that changing
# it means changing this file as well, and its cached code is compiled again.
_STEPS_SHA256 = "fe9575aa22a00e289493d978130ffbb5c1aa4530d4786b6aa3c06b53752287f5"
_steps = hashlib.sha256(Path(fold_steps.__file__).read_bytes()).hexdigest()
if _steps != _STEPS_SHA256:
    raise ImportError(
        f"detector/features/fold_steps.py changed: set _STEPS_SHA256 = {_steps!r} in "
        f"{__file__} (numba's cache of the fold does not see that file change)"
    )
#: frames ahead of the one being folded whose bytes are asked for (see _fold)
_PREFETCH_AHEAD = 16


@njit(cache=True, nogil=True, inline="always")
def change_note(byte, changed, pairs, learned):  # pragma: no cover - compiled
    """One float (an int < 2^46) naming the byte whose change rate left its learned one
    furthest: it changed in ``changed`` of ``pairs`` frame pairs (for a freeze, those
    where the other bytes changed), against ``learned`` (a rate) in training
    (``columns.read_change_note`` reads it; the counts stop at 65,535)."""
    c = min(changed, 65535)
    p = min(pairs, 65535)
    permille = min(max(np.int64(np.round(learned * 1000.0)), 0), 1000)
    return float(byte + 8 * (c + 65536 * (p + 65536 * permille)))


@njit(cache=True, nogil=True)
def _emit(
    r, s, k, window_s, st_open, acc_i, acc_f, period, mean_count, ham_mean, ham_std,
    change_rate, cond_change, n, out_row, out_window, out_X, out_attack, out_last, out_count,
):  # pragma: no cover - compiled
    """Close row ``r``'s open group into output ``n``: its feature columns up to
    the bus features, and in its last five columns (after the features: ``Emitted``)
    its cross-coupled word's mean (0 for an id without one), the note of its byte
    furthest outside its range, that of its byte that fell most below its learned
    change rate with the others, that of its byte that rose most above its learned
    change rate (``change_note``), that of the first frame whose byte stepped outside
    its learned steps (``jump_note``), that of the first to break a coupling
    (``coupling_note``) and that of the first to break a tight byte pair (``pair_note``;
    -1: none); then reset the accumulators."""
    a = acc_i[r]
    count = a[A_COUNT]
    out_row[n] = r
    out_window[n] = st_open[r]
    out_attack[n] = a[A_LABEL]
    out_last[n] = acc_f[r, F_LAST]
    out_count[n] = count
    X = out_X[n]
    X[X.shape[0] - 7] = acc_f[r, F_SIG] / count if count > 0 else 0.0
    X[X.shape[0] - 6] = a[A_FAR_NOTE] if a[A_FAR_MAX] > 0 else -1.0
    X[X.shape[0] - 5] = -1.0
    X[X.shape[0] - 4] = -1.0
    X[X.shape[0] - 3] = a[A_JUMP_NOTE] if a[A_JUMP_NOTE] > 0 else -1.0
    X[X.shape[0] - 2] = a[A_COUPLE_NOTE] if a[A_COUPLE_NOTE] > 0 else -1.0
    X[X.shape[0] - 1] = a[A_PAIR_NOTE] if a[A_PAIR_NOTE] > 0 else -1.0
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
        # the second-shortest gap (the shortest if the window had one): one frame out of
        # phase (a send-on-change frame beside a periodic message's) leaves it near the
        # period; frames squeezed in by an attacker shorten both
        min_dt = acc_f[r, F_MIN2] if np.isfinite(acc_f[r, F_MIN2]) else acc_f[r, F_MIN]
        X[1] = min_dt / per if np.isfinite(min_dt) else 1.0
        mean_dt = acc_f[r, F_SUM] / n_dt if n_dt > 0 else 0.0
        X[2] = mean_dt / per if n_dt > 0 else 1.0
        if n_dt > 1:
            X[3] = np.sqrt(max(acc_f[r, F_SUM2] / n_dt - mean_dt**2, 0.0)) / per
        X[4] = ((st_open[r] + 1) * window_s - acc_f[r, F_LAST]) / per
        if n_dt > 0:
            X[5] = (acc_f[r, F_HAM] / pairs_n - ham_mean[s]) / (ham_std[s] + 0.5)
        drop = 0.0
        rise = 0.0
        for b in range(8):
            n_other = a[A_OTHER + b]
            if n_other >= 3:
                d = cond_change[s, b] - a[A_COND + b] / max(n_other, 1.0)
                if d > drop:
                    drop = d
                    X[X.shape[0] - 5] = change_note(b, a[A_COND + b], n_other, cond_change[s, b])
            q = a[A_CHG + b] / pairs_n - change_rate[s, b]
            if q > rise:
                rise = q
                if n_dt > 0:
                    X[X.shape[0] - 4] = change_note(b, a[A_CHG + b], n_dt, change_rate[s, b])
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
    acc_f[r, F_MIN2] = np.inf
    acc_f[r, F_LAST] = np.nan
    acc_f[r, F_SIG] = 0.0
    acc_f[r, F_HAM] = 0.0
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
    couple_a, couple_b, couple_le, couple_lo, couple_hi, couple_rel, fixed_mask, fixed_value,
    signal_at, signal_be, crc8_pow, dlc_masks, hash_mul,
    late, out_row, out_window, out_X, out_attack, out_last, out_count,
):
    """Fold each stream g's frames ``order[seg_start[g]:seg_start[g + 1]]`` (table
    row ``seg_row[g]``; baseline slot ``seg_slot[g]``, an id it knows if
    ``seg_known[g]``) into the row's open group, emitting the group into ``out_*``
    when the stream's next window begins; frames older than the open window are
    marked ``late`` and not folded. Returns the number of groups emitted."""
    n_frames = order.shape[0]
    la = np.zeros(N_ACC_I, np.int64)
    pair_lanes = np.zeros((7, 4), np.uint64)  # per distance: lo even, lo odd, hi even, hi odd
    n_emit = 0
    for g in range(seg_start.shape[0] - 1):
        r = seg_row[g]
        s = seg_slot[g]
        k = seg_known[g]
        counter, zero_counter = _counters(
            s, counter_byte, counter_mask, counter_shift, counter_step,
            counter2_byte, counter2_mask, counter2_shift, counter2_step,
        )  # fmt: skip
        byte_lanes, delta_lanes, n_tight, zero_jump = _bounds(
            s, byte_min, byte_max, delta_min, delta_max, pair_min, pair_max, pair_tight, pair_lanes
        )
        ck = checksum_kind[s]
        dict_on = has_dict[s] and payload_hashes.shape[0] > 0
        slot_hash = np.uint64(s + 1) * hash_mul
        couplings = _couplings(s, couple_a, couple_b, couple_le, couple_lo, couple_hi, couple_rel)
        fmask, fvalue = fixed_mask[s], fixed_value[s]
        sig_at, sig_le = np.int64(signal_at[s]), not signal_be[s]
        # the stream's row is worked on in locals (registers, L1) and written back
        sum_dt, sum_dt2, min_dt, min_dt2, last_g, prev = _load_row(r, acc_i, acc_f, st_last_data, la)
        last = st_last_ts[r]
        lanes = _NO_LANES  # byte change counts of the frames since the last _add_lanes
        n_lanes = 0
        p_dlc = np.int64(-1)  # the payload the verdicts below were last worked out for
        p_payload = np.uint64(0)
        out = ck_bad = novel = dlc_bad = moved = False
        bad = broken = np.int64(0)
        far = (np.int64(0), np.int64(0))
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
                    _store_row(r, acc_i, acc_f, la, sum_dt, sum_dt2, min_dt, min_dt2, last_g)
                    la[:] = 0
                    lanes = _NO_LANES
                    n_lanes = 0
                    _emit(
                        r, s, k, window_s, st_open, acc_i, acc_f, period, mean_count,
                        ham_mean, ham_std, change_rate, cond_change, n_emit, out_row,
                        out_window, out_X, out_attack, out_last, out_count,
                    )  # fmt: skip
                    n_emit += 1
                    sum_dt, sum_dt2, min_dt, min_dt2, last_g = 0.0, 0.0, np.inf, np.inf, np.nan
                st_open[r] = w
            p64 = data64[j]  # the payload, bytes little-endian, worked on as one word
            la[A_COUNT] += 1
            if la[A_COUNT] == 1 or label[j] > la[A_LABEL]:  # the most severe label
                la[A_LABEL] = label[j]
            hp, dt, before, last, last_g, prev = _arrive(ts[j], p64, last, last_g, prev)
            if not k:
                continue
            if sig_at >= 0:
                la[A_SIG] += _word(p64, sig_at, sig_le)
            if hp:
                la[A_NDT] += 1
                sum_dt, sum_dt2, min_dt, min_dt2 = _gap(dt, sum_dt, sum_dt2, min_dt, min_dt2)
                if p64 == before:  # no byte changed: a delta of 0, a counter step of 0
                    la[A_DELTA] += zero_jump
                    la[A_COUNTER] += zero_counter
                else:
                    ham, delta_out, lanes = _changes(p64, before, lanes, delta_lanes)
                    la[A_HAM] += ham
                    la[A_DELTA] += delta_out
                    if delta_out and la[A_JUMP_NOTE] == 0:  # the byte, once a window
                        la[A_JUMP_NOTE] = _jump(p64, before, delta_lanes)
                    n_lanes += 1
                    if n_lanes == _LANE_MAX:  # before a 16-bit lane overflows
                        _add_lanes(la, lanes)
                        lanes = _NO_LANES
                        n_lanes = 0
                    if counter[0] >= 0:  # the stream has a counter
                        la[A_COUNTER] += _counter_broken(p64, before, counter)
            d = np.int64(dlc[j])
            if not (p_dlc == d and p_payload == p64):
                # checks of the payload alone: a repeated payload (a third of all
                # frames) repeats the stream's last verdicts
                p_payload, p_dlc = p64, d
                out, bad = _byte_bounds(p64, byte_lanes, n_tight, pair_lanes)
                far = _far(p64, byte_lanes) if out else (np.int64(0), np.int64(0))
                ck_bad = ck > 0 and _checksum_bad(
                    ck, checksum_byte[s], p64, d, can_id[j], crc8_pow, dlc_masks
                )
                # a payload the stream's dictionary does not hold
                novel = dict_on and _unseen(p64 ^ slot_hash, payload_hashes)
                dlc_bad = ((np.int64(dlc_mask[s]) >> d) & 1) == 0  # a dlc never seen
                broken, moved = _signals(p64, couplings, fmask, fvalue)
            _count(la, out, bad, ck_bad, novel, dlc_bad, broken, moved, far)
        _add_lanes(la, lanes)
        _store_row(r, acc_i, acc_f, la, sum_dt, sum_dt2, min_dt, min_dt2, last_g)
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
    """Emit the open groups of table ``rows`` whose window lies before ``row_cut``."""
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
