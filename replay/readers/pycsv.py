"""python-can's CSV format (``can.CSVWriter``), read without python-can.

Header ``timestamp,arbitration_id,extended,remote,error,dlc,data``; the id is
``hex()`` (``0x1a0``), flags are ``0``/``1``, the timestamp is ``repr(float)``
and the data bytes are base64 (empty for remote frames).

The format has no CAN FD column (python-can's CSVWriter writes an FD frame's
length in bytes as its dlc and its data, and reads it back with ``is_fd`` unset);
a row of more than 8 bytes can only be CAN FD and is read as an FD frame.
"""

from __future__ import annotations

import numpy as np

from detector.core.schema import FLAG_ERROR, FLAG_FD, FLAG_RTR
from replay.readers import _fast
from replay.readers import _text as tx
from replay.readers._base import LogFormat, build_frames, fd_dlc_column, head_lines

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
    tx.fail(t, dlc > 64, lambda i: f"dlc {int(dlc[i])} > 64")
    s, e = f.get(6)
    flags = np.where(rtr, FLAG_RTR, 0) | np.where(err, FLAG_ERROR, 0)
    wide = bool((e - s > 12).any() or (dlc > 8).any())
    if not wide:
        payload, nbytes = _base64_bytes(t, s, e)
        wide = bool((nbytes > 8).any())  # 12 chars hold 9 bytes
        if not wide:
            _check_length(t, dlc, nbytes, rtr | err)
            return build_frames(ts, arb, ext, dlc, payload, flags)
    payload, nbytes = _base64_bytes(t, s, e, 64)
    tx.fail(t, nbytes > 64, lambda i: f"{int(nbytes[i])} data bytes > 64")
    _check_length(t, dlc, nbytes, rtr | err)
    # python-can's CSV has no FD column: a frame of more than 8 bytes can only be FD
    # (BRS/ESI are not stored, and an FD frame of <= 8 bytes reads as classic)
    fd = (dlc > 8) | (nbytes > 8)
    length = np.where(rtr, dlc, nbytes)
    flags = flags | np.where(fd, FLAG_FD, 0)
    return build_frames(ts, arb, ext, fd_dlc_column(length, fd, dlc), payload, flags)


def _check_length(t: tx.Text, dlc: np.ndarray, nbytes: np.ndarray, exempt: np.ndarray) -> None:
    """A data frame carries as many bytes as its dlc says (python-can writes
    ``msg.data``, whose length is the dlc): fewer were read as zeros nobody sent, more
    as bytes beyond the frame. Remote and error frames carry no such promise."""
    tx.fail(
        t,
        ~exempt & (nbytes != dlc),
        lambda i: f"dlc {int(dlc[i])} but {int(nbytes[i])} data bytes",
    )


def _flag(t: tx.Text, f: tx.Fields, k: int, name: str) -> np.ndarray:
    s, e = f.get(k)
    v, bad = tx.parse_digits(t, s, e)
    tx.fail(
        t,
        bad | (e - s != 1) | (v > 1),
        lambda i: f"{name} must be 0 or 1, got {t.text(s[i], e[i])!r}",
    )
    return v == 1


def _base64_bytes(t: tx.Text, s: np.ndarray, e: np.ndarray, width: int = 8):
    """Base64 of at most ``width`` (8 or 64) bytes -> ((n, width) uint8, byte
    counts), vectorized."""
    quads = -(-width // 3)
    nchar = 4 * quads  # 12 chars for 8 bytes, 88 for 64
    n = e - s
    tx.fail(t, (n % 4 != 0) | (n > nchar), lambda i: f"bad base64 data {t.text(s[i], e[i])!r}")
    last = len(t.words) - 1
    words = [t.words[np.minimum(s + 8 * k, last)] for k in range(-(-nchar // 8))]
    b = np.stack(words, axis=1).view(np.uint8).reshape(len(s), -1)[:, :nchar]
    pos = np.arange(nchar)
    valid = pos < n[:, None]
    sx = np.where(valid, _B64[b], 0)
    is_pad = sx == 64
    pad_ok = ~is_pad | (pos >= n[:, None] - 2)
    # '=' only in the last two places, and "x=y" (pad then data) is invalid
    pad_ok &= ~(is_pad[:, :-1] & valid[:, 1:] & ~is_pad[:, 1:]).any(axis=1)[:, None]
    bad = (sx == 255).any(axis=1) | ~pad_ok.all(axis=1)
    tx.fail(t, bad, lambda i: f"bad base64 data {t.text(s[i], e[i])!r}")
    nbytes = 3 * (n // 4) - is_pad.sum(axis=1)
    q = np.where(is_pad, 0, sx).astype(np.uint8).reshape(-1, quads, 4)
    out = np.empty((len(s), quads, 3), np.uint8)
    out[:, :, 0] = (q[:, :, 0] << 2) | (q[:, :, 1] >> 4)
    out[:, :, 1] = ((q[:, :, 1] & 15) << 4) | (q[:, :, 2] >> 2)
    out[:, :, 2] = ((q[:, :, 2] & 3) << 6) | q[:, :, 3]
    out = out.reshape(len(s), -1)[:, :width]
    return np.where(np.arange(width) < nbytes[:, None], out, 0).astype(np.uint8), nbytes


FORMAT = LogFormat("csv", (".csv",), sniff, read)
