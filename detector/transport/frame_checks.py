"""The wire's per-frame checks, one compiled pass over a record's frames.

A frame is three little-endian 64-bit words (see ``detector.core.schema.frame_words``):
reading the middle word once and masking the data word checks dlc, id, flags and
timestamp without a per-byte loop. FD frames (schema 2) are ten words, the data
eight of them; ``fd_frame_faults`` checks them with FD's rules.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from detector.core.schema import DLC_MASKS, FD_LENGTHS, fd_frame_words, frame_words


@njit(cache=True, nogil=True)
def _faults(ts, words, lo, hi, min_ts, max_ts, known_flags, extended, max_standard, masks):  # pragma: no cover
    # A frame is three little-endian 64-bit words: ts; can_id | dlc << 32 |
    # flags << 40 | label << 48 | reserved << 56; the 8 data bytes. Reading the
    # middle word once and masking the data word (no per-byte loop of varying
    # length) halves the pass.
    bad_dlc = -1
    n_bad_dlc = 0
    bad_id = -1
    bad_flags = -1
    bad_ts = -1
    ordered = True
    unknown = np.uint64(np.uint8(~np.uint8(known_flags)))
    prev = -np.inf
    for i in range(lo, hi):
        w = words[i, 1]
        c = np.uint32(w & np.uint64(0xFFFFFFFF))
        d = np.int64((w >> np.uint64(32)) & np.uint64(0xFF))
        if d > 8:
            n_bad_dlc += 1
            if bad_dlc < 0:
                bad_dlc = i - lo
        if c & extended:
            id_ok = (c & 0x60000000) == 0  # 29 bits below the flag
        else:
            id_ok = c <= max_standard
        if not id_ok and bad_id < 0:
            bad_id = i - lo
        if bad_flags < 0 and (((w >> np.uint64(40)) & unknown) != 0 or (w >> np.uint64(48)) != 0):
            bad_flags = i - lo
        t = ts[i]
        if bad_ts < 0 and not (np.isfinite(t) and t >= min_ts and t <= max_ts):
            bad_ts = i - lo
        if t < prev:
            ordered = False
        prev = t
        words[i, 2] &= masks[min(d, 8)]
    return bad_dlc, n_bad_dlc, bad_id, bad_flags, bad_ts, ordered


@njit(cache=True, nogil=True)
def _clean(ts, words, lo, hi, min_ts, max_ts, unknown, extended, max_standard, masks):  # pragma: no cover
    # _faults' checks OR-ed into one word, without the per-check bookkeeping:
    # only a record that fails it (nearly none) takes _faults' pass as well.
    # Masks the data words as _faults does.
    bad = np.uint64(0)
    ordered = True
    prev = -np.inf
    top_extended = np.uint32(np.uint32(extended) | np.uint32(0x1FFFFFFF))  # flag + 29 bits
    for i in range(lo, hi):
        w = words[i, 1]
        c = np.uint32(w & np.uint64(0xFFFFFFFF))
        d = (w >> np.uint64(32)) & np.uint64(0xFF)
        top = top_extended if c & extended else np.uint32(max_standard)
        bad |= np.uint64(c > top) | np.uint64(d > 8)
        bad |= ((w >> np.uint64(40)) & unknown) | (w >> np.uint64(48))
        t = ts[i]
        bad |= np.uint64(not (np.isfinite(t) and t >= min_ts and t <= max_ts))
        ordered &= t >= prev
        prev = t
        words[i, 2] &= masks[min(d, np.uint64(8))]
    return bad == 0, ordered


@njit(cache=True, nogil=True)
def _faults_each(ts, words, bounds, min_ts, max_ts, known_flags, extended, max_standard, masks):  # pragma: no cover
    out = np.zeros((bounds.shape[0] - 1, 6), np.int64)
    unknown = np.uint64(np.uint8(~np.uint8(known_flags)))
    for k in range(bounds.shape[0] - 1):
        clean, ordered = _clean(
            ts, words, bounds[k], bounds[k + 1], min_ts, max_ts, unknown, extended,
            max_standard, masks,
        )  # fmt: skip
        if clean:
            out[k, 0] = out[k, 2] = out[k, 3] = out[k, 4] = -1
            out[k, 5] = ordered
            continue
        faults = _faults(
            ts, words, bounds[k], bounds[k + 1], min_ts, max_ts, known_flags, extended,
            max_standard, masks,
        )  # fmt: skip
        _store(out, k, faults)
    return out


@njit(cache=True, nogil=True, inline="always")
def _store(out, k, faults):  # pragma: no cover - compiled
    """One record's checks (as ``_faults`` returns them) into row ``k`` of ``out``."""
    bad_dlc, n_bad_dlc, bad_id, bad_flags, bad_ts, ordered = faults
    out[k, 0] = bad_dlc
    out[k, 1] = n_bad_dlc
    out[k, 2] = bad_id
    out[k, 3] = bad_flags
    out[k, 4] = bad_ts
    out[k, 5] = ordered


def frame_faults(
    frames: np.ndarray, lo: int, hi: int, min_ts, max_ts, known_flags, extended, max_standard
) -> tuple:
    """One pass of the wire checks over frames ``lo:hi`` (one record).

    Returns the first offending frame per check (-1 if none, relative to
    ``lo``) as (dlc, id, flags, ts), the number of frames with dlc > 8, and
    whether ts never decreases. Bytes past each frame's dlc are zeroed in
    place (they carry no meaning, and payload features must not see producer
    garbage). ``frames``: a contiguous, writable FRAME_DTYPE array.
    """
    return _faults(
        frames["ts"], frame_words(frames), lo, hi, min_ts, max_ts, known_flags, extended,
        max_standard, DLC_MASKS,
    )  # fmt: skip


def frame_faults_each(
    frames: np.ndarray, bounds: np.ndarray, min_ts, max_ts, known_flags, extended, max_standard
) -> np.ndarray:
    """``frame_faults`` for each record ``bounds[k]:bounds[k + 1]``; one row per record."""
    return _faults_each(
        frames["ts"], frame_words(frames), bounds, min_ts, max_ts, known_flags, extended,
        max_standard, DLC_MASKS,
    )  # fmt: skip


# -- CAN FD frames (schema 2) ------------------------------------------------------


@njit(cache=True, nogil=True)
def _fd_faults(ts, words, lo, hi, min_ts, max_ts, extended, max_standard, masks, lengths):  # pragma: no cover
    # As _faults, for FD records: a frame with FLAG_FD has a data length code 0-15
    # (lengths[code] bytes), BRS/ESI only with FD, never RTR with FD; a frame without
    # it is a classic frame (dlc 0-8, no BRS/ESI). Known flags: RTR, error, FD, BRS, ESI.
    bad_dlc = -1
    n_bad_dlc = 0
    bad_id = -1
    bad_flags = -1
    bad_ts = -1
    ordered = True
    prev = -np.inf
    for i in range(lo, hi):
        w = words[i, 1]
        c = np.uint32(w & np.uint64(0xFFFFFFFF))
        d = np.int64((w >> np.uint64(32)) & np.uint64(0xFF))
        f = np.int64((w >> np.uint64(40)) & np.uint64(0xFF))
        fd = (f & 0x04) != 0
        if d > 15 or (d > 8 and not fd):
            n_bad_dlc += 1
            if bad_dlc < 0:
                bad_dlc = i - lo
        if c & extended:
            id_ok = (c & 0x60000000) == 0
        else:
            id_ok = c <= max_standard
        if not id_ok and bad_id < 0:
            bad_id = i - lo
        if bad_flags < 0:
            if (f & ~0x1F) != 0 or (w >> np.uint64(48)) != 0:
                bad_flags = i - lo
            elif fd and (f & 0x01) != 0:  # FD has no remote frames
                bad_flags = i - lo
            elif not fd and (f & 0x18) != 0:  # BRS, ESI: FD only
                bad_flags = i - lo
        t = ts[i]
        if bad_ts < 0 and not (np.isfinite(t) and t >= min_ts and t <= max_ts):
            bad_ts = i - lo
        if t < prev:
            ordered = False
        prev = t
        n = np.int64(lengths[min(d, 15)]) if fd else min(d, 8)
        for j in range(8):  # zero the bytes past the frame's length
            left = n - 8 * j
            if left <= 0:
                words[i, 2 + j] = 0
            elif left < 8:
                words[i, 2 + j] &= masks[left]
    return bad_dlc, n_bad_dlc, bad_id, bad_flags, bad_ts, ordered


@njit(cache=True, nogil=True)
def _fd_faults_each(ts, words, bounds, min_ts, max_ts, extended, max_standard, masks, lengths):  # pragma: no cover
    out = np.zeros((bounds.shape[0] - 1, 6), np.int64)
    for k in range(bounds.shape[0] - 1):
        faults = _fd_faults(
            ts, words, bounds[k], bounds[k + 1], min_ts, max_ts, extended, max_standard,
            masks, lengths,
        )  # fmt: skip
        _store(out, k, faults)
    return out


def fd_frame_faults(
    frames: np.ndarray, lo: int, hi: int, min_ts, max_ts, extended, max_standard
) -> tuple:
    """``frame_faults`` for an FD_FRAME_DTYPE array (schema 2 records): the same six
    results, with FD's rules for dlc (0-15 with FLAG_FD, else 0-8) and flags (RTR,
    error, FD, BRS, ESI known; BRS/ESI need FD; FD excludes RTR). Bytes past each
    frame's length (``FD_LENGTHS[dlc]`` for FD, ``dlc`` for classic) are zeroed."""
    return _fd_faults(
        frames["ts"], fd_frame_words(frames), lo, hi, min_ts, max_ts, extended, max_standard,
        DLC_MASKS, FD_LENGTHS,
    )  # fmt: skip


def fd_frame_faults_each(
    frames: np.ndarray, bounds: np.ndarray, min_ts, max_ts, extended, max_standard
) -> np.ndarray:
    """``fd_frame_faults`` for each record ``bounds[k]:bounds[k + 1]``; one row per record."""
    return _fd_faults_each(
        frames["ts"], fd_frame_words(frames), bounds, min_ts, max_ts, extended, max_standard,
        DLC_MASKS, FD_LENGTHS,
    )  # fmt: skip
