"""Compiled one-pass parsers for the two commonest logs, candump and python-can CSV.

They accept only the plain, well-formed shape of each format (what candump,
python-can and canwatch's writers produce) and return ``None`` on anything
else: label columns, remote or error frames, odd spacing, a malformed line.
The caller then runs the general vectorized reader, which handles every
variant and names the offending ``file:line``. Numbers come out exactly as
the general reader computes them (same decimal-to-float rule), which
tests/test_readers.py checks.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from detector.core.schema import EXTENDED_FLAG, FRAME_DTYPE

_B64 = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    _B64[_c] = _i
_B64[ord("=")] = 64
_POW10 = np.array([10**k for k in range(20)], dtype=np.uint64)
_POW10F = np.array([10.0**k for k in range(20)])
_TWO53 = float(2**53)


@njit(cache=True, nogil=True)
def _hexval(c):  # pragma: no cover - compiled
    if 48 <= c <= 57:
        return c - 48
    c |= 32
    if 97 <= c <= 102:
        return c - 87
    return -1


@njit(cache=True, nogil=True)
def _float(buf, i, n, pow10, pow10f, two53):  # pragma: no cover - compiled
    """``digits[.digits]`` at ``i`` -> (value, next index); next = -1 if malformed.

    Same arithmetic as ``_text.parse_float`` (exact division when the digits
    fit in 53 bits), so both readers give bit-identical timestamps.
    """
    ip = np.uint64(0)
    ni = 0
    while i < n and 48 <= buf[i] <= 57:
        ip = ip * np.uint64(10) + np.uint64(buf[i] - 48)
        ni += 1
        i += 1
    if ni == 0 or ni > 16:
        return 0.0, -1
    fi = np.uint64(0)
    nf = 0
    if i < n and buf[i] == 46:
        i += 1
        while i < n and 48 <= buf[i] <= 57:
            fi = fi * np.uint64(10) + np.uint64(buf[i] - 48)
            nf += 1
            i += 1
        if nf == 0 or nf > 17:
            return 0.0, -1
    p = pow10f[nf]
    ipf = np.float64(ip)
    if ipf * p + np.float64(fi) < two53:
        return np.float64(ip * pow10[nf] + fi) / p, i
    return ipf + np.float64(fi) / p, i


@njit(cache=True, nogil=True)
def _candump(buf, ts, can_id, dlc, data, pow10, pow10f, two53, extended):  # pragma: no cover
    """Lines ``(ts) iface ID#HEX`` of one interface; returns the frame count, or -1 to
    fall back (a second interface too: the general reader names each line's)."""
    n = buf.shape[0]
    k = 0
    i = 0
    s0 = w0 = 0
    while i < n:
        c = buf[i]
        if c == 10 or c == 13:  # empty line
            i += 1
            continue
        if c != 40:  # '('
            return -1
        t, i = _float(buf, i + 1, n, pow10, pow10f, two53)
        if i < 0 or i >= n or buf[i] != 41:  # ')'
            return -1
        i += 1
        if i >= n or buf[i] != 32:
            return -1
        while i < n and buf[i] == 32:
            i += 1
        s = i
        while i < n and buf[i] > 32:  # interface
            i += 1
        if i == s or i >= n or buf[i] != 32:
            return -1
        if k == 0:
            s0, w0 = s, i - s
        elif i - s != w0:
            return -1
        else:
            for j in range(w0):
                if buf[s + j] != buf[s0 + j]:
                    return -1
        while i < n and buf[i] == 32:
            i += 1
        arb = 0
        nd = 0
        while i < n and buf[i] != 35:  # '#'
            h = _hexval(buf[i])
            if h < 0:
                return -1
            arb = arb * 16 + h
            nd += 1
            i += 1
        if i >= n or nd == 0 or nd > 8:
            return -1
        i += 1
        ext = nd > 3
        if ext and arb > 0x1FFFFFFF:  # error frames (CAN_ERR_FLAG) and bad ids: general path
            return -1
        nb = 0
        while i < n and buf[i] > 32:
            if nb == 8 or i + 1 >= n:
                return -1
            hi = _hexval(buf[i])
            lo = _hexval(buf[i + 1])
            if hi < 0 or lo < 0:
                return -1
            data[k, nb] = hi * 16 + lo
            nb += 1
            i += 2
        if i < n and buf[i] == 13:
            i += 1
        if i < n and buf[i] != 10:  # more columns (labels, direction): general path
            return -1
        i += 1
        ts[k] = t
        can_id[k] = (arb | extended) if ext else arb
        dlc[k] = nb
        k += 1
    return k


@njit(cache=True, nogil=True)
def _flag01(buf, i, n):  # pragma: no cover - compiled
    if i + 1 < n and (buf[i] == 48 or buf[i] == 49) and buf[i + 1] == 44:
        return buf[i] - 48, i + 2
    return 0, -1


@njit(cache=True, nogil=True)
def _pycsv(buf, start, ts, can_id, dlc, flags, data, b64, pow10, pow10f, two53, extended):  # pragma: no cover
    """Rows ``ts,0xID,ext,rtr,err,dlc,BASE64`` after the header; count or -1."""
    n = buf.shape[0]
    k = 0
    i = start
    quad = np.zeros(4, np.int64)
    while i < n:
        c = buf[i]
        if c == 10 or c == 13:
            i += 1
            continue
        t, i = _float(buf, i, n, pow10, pow10f, two53)
        if i < 0 or i + 2 >= n or buf[i] != 44 or buf[i + 1] != 48 or (buf[i + 2] | 32) != 120:
            return -1
        i += 3
        arb = 0
        nd = 0
        while i < n and buf[i] != 44:
            h = _hexval(buf[i])
            if h < 0:
                return -1
            arb = arb * 16 + h
            nd += 1
            i += 1
        if nd == 0 or nd > 8 or arb > 0x1FFFFFFF or i >= n:
            return -1
        i += 1
        ext, i = _flag01(buf, i, n)
        if i < 0:
            return -1
        rtr, i = _flag01(buf, i, n)
        if i < 0 or rtr:  # remote and error frames: general path
            return -1
        err, i = _flag01(buf, i, n)
        if i < 0 or err:
            return -1
        if i + 1 >= n or not (48 <= buf[i] <= 56) or buf[i + 1] != 44:
            return -1
        d = buf[i] - 48
        i += 2
        nb = 0
        m = 0
        while i < n and buf[i] != 10 and buf[i] != 13:
            v = b64[buf[i]]
            if v == 255:
                return -1
            quad[m] = v
            m += 1
            i += 1
            if m == 4:
                if quad[0] == 64 or quad[1] == 64 or (quad[2] == 64 and quad[3] != 64):
                    return -1
                out = 3 - (quad[2] == 64) - (quad[3] == 64)
                if nb + out > 8:
                    return -1
                q2 = 0 if quad[2] == 64 else quad[2]
                q3 = 0 if quad[3] == 64 else quad[3]
                vals = ((quad[0] << 2) | (quad[1] >> 4), ((quad[1] & 15) << 4) | (q2 >> 2), ((q2 & 3) << 6) | q3)
                for o in range(out):
                    data[k, nb + o] = vals[o]
                nb += out
                m = 0
                if out < 3 and i < n and buf[i] != 10 and buf[i] != 13:  # data after padding
                    return -1
        if m != 0 or nb != d:  # a dlc the data does not fill: the general path says so
            return -1
        ts[k] = t
        can_id[k] = (arb | extended) if ext else arb
        dlc[k] = d
        flags[k] = 0
        k += 1
    return k


def _frames(n_lines: int) -> tuple:
    return (
        np.zeros(n_lines),
        np.zeros(n_lines, np.uint32),
        np.zeros(n_lines, np.uint8),
        np.zeros(n_lines, np.uint8),
        np.zeros((n_lines, 8), np.uint8),
    )


def _assemble(k: int, ts, can_id, dlc, flags, data) -> np.ndarray:
    out = np.zeros(k, FRAME_DTYPE)
    out["ts"], out["can_id"], out["dlc"], out["flags"], out["data"] = (
        ts[:k],
        can_id[:k],
        dlc[:k],
        flags[:k],
        data[:k],
    )
    return out


def candump(data: bytes) -> np.ndarray | None:
    """Frames of a plain candump -L log, or None (use the general reader)."""
    buf = np.frombuffer(data, np.uint8)
    ts, can_id, dlc, flags, payload = _frames(data.count(b"\n") + 1)
    k = _candump(buf, ts, can_id, dlc, payload, _POW10, _POW10F, _TWO53, np.uint32(EXTENDED_FLAG))
    return None if k < 0 else _assemble(k, ts, can_id, dlc, flags, payload)


def pycsv(data: bytes, header: bytes) -> np.ndarray | None:
    """Frames of a plain python-can CSV log (``header`` first), or None."""
    if not data.startswith(header + b"\n") and not data.startswith(header + b"\r\n"):
        return None
    buf = np.frombuffer(data, np.uint8)
    ts, can_id, dlc, flags, payload = _frames(data.count(b"\n") + 1)
    k = _pycsv(
        buf, len(header), ts, can_id, dlc, flags, payload, _B64, _POW10, _POW10F, _TWO53,
        np.uint32(EXTENDED_FLAG),
    )  # fmt: skip
    return None if k < 0 else _assemble(k, ts, can_id, dlc, flags, payload)
