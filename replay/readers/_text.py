"""Vectorized text-log primitives: lines, fields, hex/decimal parsing, validation.

A log file is loaded once into a zero-padded ``uint8`` buffer. Lines, fields and
numbers are found with whole-array numpy operations, never one Python object per
frame: 8-byte little-endian words are read at arbitrary byte offsets through a
stride-1 ``uint64`` view, and digits are combined with SWAR multiply-shift steps.
Validation builds a boolean "bad" mask per row; only when it is non-empty does
:func:`fail` look at the first offending line in Python to name what is wrong.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from detector.core.errors import InputError

PAD = 8  # zero bytes before and after the text so every 8-byte window is in range
_U64 = np.uint64

#: ASCII -> nibble value, 255 for anything that is not a hex digit.
HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    HEX[_c] = _i
    HEX[bytes([_c]).upper()[0]] = _i

#: MASK_HI[L] keeps the top L bytes of a little-endian word (a right-aligned field).
MASK_HI = np.array([0] + [((1 << (8 * L)) - 1) << (8 * (8 - L)) for L in range(1, 9)], dtype=_U64)
_POW10 = np.array([10**k for k in range(20)], dtype=_U64)
_POW10F = np.array([10.0**k for k in range(20)])
_TWO53 = float(2**53)
_ZEROS = _U64(0x3030303030303030)
_SIXES = _U64(0x0606060606060606)
_HI_NIBBLES = _U64(0xF0F0F0F0F0F0F0F0)


@dataclass(frozen=True)
class Text:
    """A text file split into non-empty lines (positions index ``buf``)."""

    path: str
    buf: np.ndarray  # uint8, PAD zero bytes on both sides
    words: np.ndarray  # uint64 view with stride 1: words[p] = bytes p..p+7
    start: np.ndarray  # int64 line start per kept line
    end: np.ndarray  # int64 line end (exclusive, without \r)
    lineno: np.ndarray  # 1-based file line numbers of kept lines

    def __len__(self) -> int:
        return len(self.start)

    def line(self, i: int) -> str:
        return bytes(self.buf[self.start[i] : self.end[i]]).decode("latin-1")

    def text(self, s: int, e: int) -> str:
        return bytes(self.buf[s:e]).decode("latin-1")

    def select(self, keep: np.ndarray) -> Text:
        return Text(
            self.path, self.buf, self.words, self.start[keep], self.end[keep], self.lineno[keep]
        )


def load_text(path: str, data: bytes) -> Text:
    """Split ``data`` into lines; empty lines are dropped (their numbers are kept)."""
    n = len(data)
    buf = np.zeros(n + PAD + 40, np.uint8)
    buf[PAD : PAD + n] = np.frombuffer(data, np.uint8)
    words = np.ndarray((len(buf) - 7,), dtype="<u8", buffer=buf, offset=0, strides=(1,))
    nl = np.flatnonzero(buf == 10)
    start = np.concatenate(([PAD], nl + 1)).astype(np.int64)
    end = np.concatenate((nl, [PAD + n])).astype(np.int64)
    end -= (end > start) & (buf[np.maximum(end - 1, 0)] == 13)
    keep = end > start
    lineno = np.flatnonzero(keep) + 1
    return Text(str(path), buf, words, start[keep], end[keep], lineno)


def fail(t: Text, bad: np.ndarray, what: Callable[[int], str]) -> None:
    """Raise InputError for the first row flagged in ``bad`` (no-op when none)."""
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(t.path, int(t.lineno[i]), what(i))


# --------------------------------------------------------------------- fields


class Fields:
    """Field k of every line as (start, end) arrays; ``count`` fields per line."""

    count: np.ndarray

    def get(self, k: int | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


def _counts(t: Text, sorted_pos: np.ndarray, first: np.ndarray) -> np.ndarray:
    """Items per line from the first item of each line. Lines are consecutive
    apart from a dropped header and empty lines, which hold no items, so the next
    line's first item ends this line's run (one searchsorted instead of two)."""
    if not len(first):
        return first
    nxt = np.append(first[1:], np.searchsorted(sorted_pos, t.end[-1]))
    return nxt - first


class WsFields(Fields):
    """Tokens separated by runs of spaces/tabs (anything <= 0x20)."""

    def __init__(self, t: Text) -> None:
        ws = t.buf <= 32
        edge = ws[:-1] != ws[1:]
        pos = np.flatnonzero(edge) + 1  # alternating token starts and ends
        self.tstart, self.tend = pos[0::2], pos[1::2]
        self.first = np.searchsorted(self.tstart, t.start)
        self.count = _counts(t, self.tstart, self.first)
        self.uniform = _uniform(self.first, self.count)

    def get(self, k):
        if self.uniform and isinstance(k, int):  # fixed layout: a strided column
            k = min(k, self.uniform - 1)
            b = int(self.first[0]) + k
            return self.tstart[b :: self.uniform][: len(self.first)], self.tend[b :: self.uniform][
                : len(self.first)
            ]
        i = self.first + np.minimum(k, np.maximum(self.count - 1, 0))
        i = np.minimum(i, len(self.tstart) - 1)
        return self.tstart[i], self.tend[i]


def _uniform(first: np.ndarray, count: np.ndarray) -> int:
    """K when every line has K items stored back to back, else 0."""
    if not len(first) or count[0] < 1 or (count != count[0]).any():
        return 0
    k = int(count[0])
    return k if first[-1] - first[0] == k * (len(first) - 1) else 0


class CommaFields(Fields):
    """Fields separated by single commas (empty fields allowed)."""

    def __init__(self, t: Text) -> None:
        self.t = t
        # a sentinel past every line keeps indexing valid when a file has no comma
        self.comma = np.append(np.flatnonzero(t.buf == 44), len(t.buf))
        self.first = np.searchsorted(self.comma, t.start)
        ncomma = _counts(t, self.comma, self.first)
        self.count = ncomma + 1
        self.cols = None
        k = _uniform(self.first, ncomma)
        if k:  # commas of line j are comma[first[0] + k*j : ... + k]
            f0 = int(self.first[0])
            self.cols = self.comma[f0 : f0 + k * len(self.first)].reshape(-1, k)

    def get(self, k):
        if self.cols is not None and isinstance(k, int):
            k = min(k, self.cols.shape[1])
            s = self.t.start if k == 0 else self.cols[:, k - 1] + 1
            e = self.t.end if k == self.cols.shape[1] else self.cols[:, k]
            return s, e
        k = np.minimum(k, self.count - 1)
        c, last = self.comma, len(self.comma) - 1
        s = np.where(k == 0, self.t.start, c[np.clip(self.first + k - 1, 0, last)] + 1)
        e = np.where(k == self.count - 1, self.t.end, c[np.minimum(self.first + k, last)])
        return s, e


def check_count(t: Text, f: Fields, ok: np.ndarray, expected: str) -> None:
    fail(t, ~ok, lambda i: f"expected {expected} columns, got {int(f.count[i])}")


# -------------------------------------------------------------------- numbers


def _right_word(t: Text, e: np.ndarray, n: np.ndarray) -> np.ndarray:
    """The ``n`` (<= 8) bytes ending at ``e`` in the high bytes of a word, rest zero."""
    return t.words[e - 8] & MASK_HI[np.clip(n, 0, 8)]


def nibbles(b: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Hex ASCII bytes -> nibble values by arithmetic (a 256-entry LUT indexed by
    a uint8 matrix converts it to intp first, 8x the memory); bad rows flagged."""
    b = np.where(valid, b, np.uint8(48))
    digit = (b - np.uint8(48)) < 10
    alpha = ((b | np.uint8(32)) - np.uint8(97)) < 6
    bad = ~(digit | alpha).all(axis=1)
    return (b & np.uint8(15)) + np.uint8(9) * (b >> np.uint8(6)), bad


def _valid_bytes(w: np.ndarray, n: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    b = w.view(np.uint8).reshape(-1, 8)
    return b, np.arange(8) >= (8 - np.clip(n, 0, 8))[:, None]


def _swar_dec8(w: np.ndarray) -> np.ndarray:
    """Up to 8 ASCII digits (most significant in the lowest byte, NUL = 0) -> int."""
    w = ((w & _U64(0x0F0F0F0F0F0F0F0F)) * _U64(2561)) >> _U64(8)
    w = ((w & _U64(0x00FF00FF00FF00FF)) * _U64(6553601)) >> _U64(16)
    return ((w & _U64(0x0000FFFF0000FFFF)) * _U64(42949672960001)) >> _U64(32)


def _swar_hex8(nib: np.ndarray) -> np.ndarray:
    """Eight nibbles (most significant in the lowest byte) -> int."""
    w = ((nib & _U64(0x0F0F0F0F0F0F0F0F)) * _U64(4097)) >> _U64(8)
    w = ((w & _U64(0x00FF00FF00FF00FF)) * _U64(16777217)) >> _U64(16)
    return ((w & _U64(0x0000FFFF0000FFFF)) * _U64(281474976710657)) >> _U64(32)


def parse_digits(t: Text, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal digit runs of up to 19 digits -> (uint64 value, bad mask)."""
    n = e - s
    bad = (n < 0) | (n > 19)
    val = np.zeros(len(s), _U64)
    for chunk in range(3):
        m = np.clip(n - 8 * chunk, 0, 8)
        if chunk and not m.any():
            break
        mask = MASK_HI[m]
        # fill the bytes outside the field with '0' so all 8 must be digits
        w = (t.words[e - 8 * chunk - 8] & mask) | (~mask & _ZEROS)
        hi_ok = (w & _HI_NIBBLES) == _ZEROS
        lo_ok = ((w + _SIXES) & _HI_NIBBLES) == _ZEROS  # 0x3A..0x3F carry to 0x4_
        bad |= ~(hi_ok & lo_ok)
        val += _swar_dec8(w) * _POW10[8 * chunk]
    return val, bad


def parse_hex(t: Text, s: np.ndarray, e: np.ndarray, skip_0x: bool = False):
    """Hex numbers of 1..8 digits -> (uint32 value, digit count, bad mask)."""
    if skip_0x:
        pre = (e - s >= 2) & (t.buf[s] == 48) & ((t.buf[s + 1] | 32) == 120)
        s = s + 2 * pre
    n = e - s
    w = _right_word(t, e, n)
    b, valid = _valid_bytes(w, n)
    nib, bad_nib = nibbles(b, valid)
    bad = (n < 1) | (n > 8) | bad_nib
    val = _swar_hex8(np.ascontiguousarray(nib).view(_U64).ravel())
    return val.astype(np.uint32), n, bad


def parse_float(t: Text, s: np.ndarray, e: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Decimal ``123.456`` fields -> (float64, bad); other forms via Python float()."""
    dots = np.flatnonzero(t.buf == 46)
    d = np.minimum(np.searchsorted(dots, s), max(len(dots) - 1, 0))
    d = dots[d] if len(dots) else e
    d = np.where(d < e, d, e)
    ip, bad_i = parse_digits(t, s, d)
    fs = np.minimum(d + 1, e)
    fi, bad_f = parse_digits(t, fs, e)
    nf = np.clip(e - fs, 0, 19)
    p = _POW10F[nf]
    ipf = ip.astype(np.float64)
    exact = ipf * p + fi.astype(np.float64) < _TWO53
    num = (ip * _POW10[nf] + fi).astype(np.float64)
    ts = np.where(exact, num / p, ipf + fi / p)
    bad = bad_i | bad_f | (d == s) & (e - s <= 1) | (e - fs > 17) | (d - s > 16)
    for i in np.flatnonzero(bad):  # rare: exponents, signs, too many digits
        try:
            ts[i] = float(t.text(s[i], e[i]))
            bad[i] = not np.isfinite(ts[i])
        except ValueError:
            pass
    return ts, bad


def hex_bytes_contig(t: Text, s: np.ndarray, nchar: np.ndarray, nbytes: int = 8):
    """Contiguous hex pairs (``0a1b2c``), up to ``2 * nbytes`` chars -> ((n, nbytes)
    uint8, bad); ``nbytes`` 64 for CAN FD data. Words past the buffer's end are
    clamped to it: they lie beyond ``nchar`` of the file's last line, so they are
    masked out anyway."""
    last = len(t.words) - 1
    cols = [t.words[np.minimum(s + 8 * k, last)] for k in range(nbytes // 4)]
    b = np.stack(cols, axis=1).view(np.uint8).reshape(-1, 2 * nbytes)
    nib, bad = nibbles(b, np.arange(2 * nbytes) < nchar[:, None])
    return (nib[:, 0::2] << 4) | nib[:, 1::2], bad


def hex_bytes_fields(t: Text, f: Fields, col0: int, dlc: np.ndarray):
    """``dlc`` hex-byte fields starting at column ``col0`` -> ((n, 8) uint8, bad).

    Fast path: all bytes two digits with one separator (``4E,20,03``), read as
    three words per line; other rows are parsed field by field.
    """
    n = len(dlc)
    s, _ = f.get(col0)
    _, e_last = f.get(col0 + np.maximum(dlc.astype(np.int64), 1) - 1)
    span = np.where(dlc > 0, e_last - s, 0)
    b = np.stack([t.words[s + 8 * k] for k in range(3)], axis=1).view(np.uint8).reshape(n, 24)
    hi, lo, sep = b[:, 0:24:3], b[:, 1:24:3], b[:, 2:24:3]
    m = np.arange(8) < dlc[:, None]
    sep_ok = ((sep <= 32) | (sep == 44) | ~(np.arange(8) < dlc[:, None] - 1)).all(axis=1)
    fast = (span == 3 * dlc.astype(np.int64) - 1) & sep_ok
    hn, bad_h = nibbles(hi, m)
    ln, bad_l = nibbles(lo, m)
    data = ((hn << 4) | ln).astype(np.uint8)
    bad = fast & (bad_h | bad_l)
    slow = np.flatnonzero(~fast)
    if len(slow):
        ss = _Subset(f, slow)
        for k in range(8):
            fs, fe = ss.get(col0 + k)
            v, nd, bk = parse_hex(t, fs, fe)
            use = k < dlc[slow]
            bad[slow] |= use & (bk | (nd > 2))
            data[slow, k] = np.where(use, v, 0)
    return np.where(m, data, 0).astype(np.uint8), bad


class _Subset(Fields):
    def __init__(self, f: Fields, rows: np.ndarray) -> None:
        self.f, self.rows, self.count = f, rows, f.count[rows]

    def get(self, k):
        s, e = self.f.get(k)
        return s[self.rows], e[self.rows]


def match_words(t: Text, s: np.ndarray, e: np.ndarray, vocab: dict[str, int], default: int = -1):
    """Case-insensitive whole-field lookup of short words (<= 16 chars) -> codes."""
    n = e - s
    w0 = t.words[s] & _mask_lo(np.clip(n, 0, 8))
    w1 = t.words[s + 8] & _mask_lo(np.clip(n - 8, 0, 8))
    lower = _U64(0x2020202020202020)
    out = np.full(len(s), default, np.int16)
    for word, code in vocab.items():
        raw = word.lower().encode().ljust(16, b"\0")
        k0, k1 = np.frombuffer(raw, "<u8")
        m0 = _mask_lo(min(len(word), 8)) & lower
        m1 = _mask_lo(max(min(len(word) - 8, 8), 0)) & lower
        hit = (n == len(word)) & ((w0 | m0) == (k0 | m0)) & ((w1 | m1) == (k1 | m1))
        out[hit] = code
    return out


def _mask_lo(n) -> np.ndarray:
    """Keep the low ``n`` bytes of a word (a left-aligned field)."""
    table = np.array([(1 << (8 * L)) - 1 for L in range(9)], dtype=_U64)
    return table[n]
