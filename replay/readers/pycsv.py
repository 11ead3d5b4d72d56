"""python-can's CSV format (``can.CSVWriter``), read without python-can.

Header ``timestamp,arbitration_id,extended,remote,error,dlc,data``; the id is
``hex()`` (``0x1a0``), flags are ``0``/``1``, the timestamp is ``repr(float)``
and the data bytes are base64 (empty for remote frames).
"""

from __future__ import annotations

import numpy as np

from detector.core.schema import FLAG_ERROR, FLAG_RTR
from replay.readers import _fast
from replay.readers import _text as tx
from replay.readers._base import LogFormat, build_frames, head_lines

HEADER = "timestamp,arbitration_id,extended,remote,error,dlc,data"

#: ASCII -> base64 sextet; 64 marks '=' padding, 255 anything invalid.
_B64 = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"):
    _B64[_c] = _i
_B64[ord("=")] = 64


def sniff(head: bytes) -> bool:
    lines = head_lines(head, 1)
    return bool(lines) and lines[0].replace(" ", "").lower() == HEADER


def read(path: str, data: bytes | None) -> np.ndarray:
    fast = _fast.pycsv(data or b"", HEADER.encode())
    if fast is not None:
        return fast
    t = tx.load_text(path, data or b"")
    if len(t) and t.line(0).replace(" ", "").lower() == HEADER:
        t = t.select(slice(1, None))
    f = tx.CommaFields(t)
    tx.check_count(t, f, f.count == 7, "7")
    s, e = f.get(0)
    ts, bad = tx.parse_float(t, s, e)
    tx.fail(t, bad, lambda i: f"bad timestamp {t.text(s[i], e[i])!r}")
    s, e = f.get(1)
    arb, _, bad = tx.parse_hex(t, s, e, skip_0x=True)
    tx.fail(t, bad, lambda i: f"bad arbitration_id {t.text(s[i], e[i])!r}")
    ext, rtr, err = (
        _flag(t, f, k, name) for k, name in ((2, "extended"), (3, "remote"), (4, "error"))
    )
    tx.fail(t, arb > 0x1FFF_FFFF, lambda i: f"arbitration_id {arb[i]:#x} out of range")
    s, e = f.get(5)
    dlc, bad = tx.parse_digits(t, s, e)
    tx.fail(t, bad | (e == s), lambda i: f"bad dlc {t.text(s[i], e[i])!r}")
    tx.fail(t, dlc > 8, lambda i: f"dlc {int(dlc[i])} > 8")
    payload = _base64_bytes(t, *f.get(6))
    flags = np.where(rtr, FLAG_RTR, 0) | np.where(err, FLAG_ERROR, 0)
    return build_frames(ts, arb, ext, dlc, payload, flags)


def _flag(t: tx.Text, f: tx.Fields, k: int, name: str) -> np.ndarray:
    s, e = f.get(k)
    v, bad = tx.parse_digits(t, s, e)
    tx.fail(
        t,
        bad | (e - s != 1) | (v > 1),
        lambda i: f"{name} must be 0 or 1, got {t.text(s[i], e[i])!r}",
    )
    return v == 1


def _base64_bytes(t: tx.Text, s: np.ndarray, e: np.ndarray) -> np.ndarray:
    """Base64 of at most 8 bytes (<= 12 chars) -> (n, 8) uint8, vectorized."""
    n = e - s
    tx.fail(t, (n % 4 != 0) | (n > 12), lambda i: f"bad base64 data {t.text(s[i], e[i])!r}")
    b = np.stack([t.words[s], t.words[s + 8]], axis=1).view(np.uint8).reshape(-1, 16)[:, :12]
    pos = np.arange(12)
    valid = pos < n[:, None]
    sx = np.where(valid, _B64[b], 0)
    is_pad = sx == 64
    pad_ok = ~is_pad | (pos >= n[:, None] - 2)
    # '=' only in the last two places, and "x=y" (pad then data) is invalid
    pad_ok &= ~(is_pad[:, :-1] & valid[:, 1:] & ~is_pad[:, 1:]).any(axis=1)[:, None]
    bad = (sx == 255).any(axis=1) | ~pad_ok.all(axis=1)
    tx.fail(t, bad, lambda i: f"bad base64 data {t.text(s[i], e[i])!r}")
    nbytes = 3 * (n // 4) - is_pad.sum(axis=1)
    tx.fail(t, nbytes > 8, lambda i: f"{int(nbytes[i])} data bytes > 8")
    q = np.where(is_pad, 0, sx).astype(np.uint8).reshape(-1, 3, 4)
    out = np.empty((len(s), 3, 3), np.uint8)
    out[:, :, 0] = (q[:, :, 0] << 2) | (q[:, :, 1] >> 4)
    out[:, :, 1] = ((q[:, :, 1] & 15) << 4) | (q[:, :, 2] >> 2)
    out[:, :, 2] = ((q[:, :, 2] & 3) << 6) | q[:, :, 3]
    out = out.reshape(-1, 9)[:, :8]
    return np.where(np.arange(8) < nbytes[:, None], out, 0).astype(np.uint8)


FORMAT = LogFormat("csv", (".csv",), sniff, read)
