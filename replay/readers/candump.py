"""candump ``-L`` logs: ``(ts) iface ID#DATA [R|T] [label columns]``, CAN FD
frames as ``ID##F`` + up to 64 data bytes (F: hex flags, 1 = BRS, 2 = ESI).

Extended ids are written with 8 hex digits, remote frames as ``ID#R`` (or
``ID#R<dlc>``), error frames with the CAN_ERR_FLAG bit in the id. Trailing
columns are tolerated: python-can's direction ``R``/``T`` and CrySyS-style
labels where the first label column is ``1``/``True`` for an attacked frame and
``0``/``False`` for a benign one; a following column naming a label kind
(``fuzzing``...) refines it, which is how canwatch's writer keeps kinds.
"""

from __future__ import annotations

import re

import numpy as np

from detector.core.schema import FLAG_BRS, FLAG_ERROR, FLAG_ESI, FLAG_FD, FLAG_RTR, LABELS
from replay.readers import _fast
from replay.readers import _text as tx
from replay.readers._base import (
    LABEL_WORDS,
    Channels,
    LogFormat,
    build_frames,
    fd_dlc_column,
    head_lines,
    mostly,
)

_LINE = re.compile(r"^\(\s*[0-9.]+\)\s+\S+\s+[0-9A-Fa-f]{1,8}#")
_CAN_ERR_FLAG = 0x2000_0000
_KINDS = {name: i for i, name in enumerate(LABELS) if i}


def sniff(head: bytes) -> bool:
    lines = head_lines(head)
    return mostly(lines, _LINE)


def read(path: str, data: bytes | None) -> tuple[np.ndarray, Channels]:
    fast = _fast.candump(data or b"")  # one interface only
    if fast is not None:
        first = (data or b"").lstrip()[:4096].split(None, 2)[1].decode("utf-8", "replace")
        return fast, Channels(np.zeros(len(fast), np.int64), (first,))
    t = tx.load_text(path, data or b"")
    f = tx.WsFields(t)
    tx.check_count(t, f, f.count >= 3, "at least 3")
    ts = _timestamps(t, f)
    arb, ext, err, (ds, de) = _ids(t, f)
    dlc, payload, flags = _payload(t, ds, de)
    flags = flags | np.where(err, FLAG_ERROR, 0)
    frames = build_frames(ts, arb, ext, dlc, payload, flags, _labels(t, f))
    return frames, _interfaces(t, f)


def _interfaces(t: tx.Text, f: tx.Fields) -> Channels:
    """Each line's interface (``can0``), as the bytes of the second column."""
    s, e = f.get(1)
    width = int((e - s).max()) if len(s) else 0
    cols = np.arange(width)
    inside = cols < (e - s)[:, None]
    names = np.zeros((len(s), width), np.uint8)
    names[inside] = t.buf[(s[:, None] + cols)[inside]]
    rows = np.ascontiguousarray(names).view(np.dtype((np.void, max(width, 1))))
    return Channels.of(rows.reshape(-1), lambda v: v.rstrip(b"\0").decode("utf-8", "replace"))


def _timestamps(t: tx.Text, f: tx.Fields) -> np.ndarray:
    s, e = f.get(0)
    paren = (t.buf[s] == 40) & (t.buf[e - 1] == 41) & (e - s > 2)
    tx.fail(t, ~paren, lambda i: f"expected '(timestamp)', got {t.text(s[i], e[i])!r}")
    ts, bad = tx.parse_float(t, s + 1, e - 1)
    tx.fail(t, bad, lambda i: f"bad timestamp {t.text(s[i], e[i])!r}")
    return ts


def _ids(t: tx.Text, f: tx.Fields):
    s, e = f.get(2)
    hashes = np.append(np.flatnonzero(t.buf == 35), len(t.buf))
    h = hashes[np.searchsorted(hashes, s)]
    tx.fail(t, h >= e, lambda i: f"expected ID#DATA, got {t.text(s[i], e[i])!r}")
    arb, ndig, bad = tx.parse_hex(t, s, h)
    tx.fail(t, bad, lambda i: f"bad CAN id {t.text(s[i], h[i])!r}")
    ext = ndig > 3
    err = ext & ((arb & _CAN_ERR_FLAG) != 0)
    arb = np.where(err, arb & 0x1FFF_FFFF, arb)
    # 3-digit ids above 0x7FF are kept as read (ROAD-derived logs carry 0xFFF)
    tx.fail(t, ext & (arb > 0x1FFF_FFFF), lambda i: f"CAN id {t.text(s[i], h[i])!r} out of range")
    return arb, ext, err, (h + 1, e)


def _payload(t: tx.Text, s: np.ndarray, e: np.ndarray):
    """``DATA`` after the id's ``#``: hex bytes, ``R[dlc]`` (remote) or, for a CAN FD
    frame, ``#F`` then up to 64 hex bytes, read as python-can reads them: F a hex
    flags nibble, bit 1 = BRS, 2 = ESI (other bits, such as newer candumps' FDF 4,
    carry nothing more), ``R`` after the flags a remote frame.

    Returns (dlc, (n, 8) or (n, 64) data, flags): 64 wide only when a line is FD.
    """
    n = e - s
    fd = (n > 0) & (t.buf[s] == 35)
    any_fd = fd.any()
    if any_fd:
        nib = np.where(fd & (e - s >= 2), tx.HEX[t.buf[s + 1]], 255)
        tx.fail(
            t, fd & (nib > 15),
            lambda i: f"bad CAN FD flags in {_q(t, s, e, i)} (want ##<hex digit>)",
        )  # fmt: skip
        s = s + 2 * fd
        n = e - s
    rtr = (n > 0) & ((t.buf[s] | 32) == ord("r"))
    rdlc = np.where(n == 2, t.buf[s + 1].astype(np.int64) - 48, 0)
    bad_r = rtr & ((n > 2) | (rdlc < 0) | (rdlc > 8))
    tx.fail(t, bad_r, lambda i: f"bad remote frame {t.text(s[i], e[i])!r}")
    tx.fail(t, ~rtr & (n % 2 == 1), lambda i: f"odd number of hex digits in data {_q(t, s, e, i)}")
    tx.fail(t, ~rtr & ~fd & (n > 16), lambda i: f"dlc {n[i] // 2} > 8")
    nchar = np.where(rtr, 0, n)
    if not any_fd:
        payload, bad = tx.hex_bytes_contig(t, s, nchar)
        tx.fail(t, bad, lambda i: f"bad hex in data {_q(t, s, e, i)}")
        dlc = np.where(rtr, rdlc, n // 2).astype(np.uint8)
        return dlc, payload, np.where(rtr, FLAG_RTR, 0)
    tx.fail(t, ~rtr & (n > 128), lambda i: f"CAN FD data of {n[i] // 2} bytes > 64")
    payload = np.zeros((len(s), 64), np.uint8)
    for rows, width in ((np.flatnonzero(~fd), 8), (np.flatnonzero(fd), 64)):
        part, bad = tx.hex_bytes_contig(t, s[rows], nchar[rows], width)
        tx.fail(t, _scatter(bad, rows, len(s)), lambda i: f"bad hex in data {_q(t, s, e, i)}")
        payload[rows, :width] = part
    length = np.where(rtr, rdlc, n // 2)
    dlc = fd_dlc_column(length, fd, length)
    flags = np.where(rtr, FLAG_RTR, 0) | np.where(fd, FLAG_FD, 0)
    flags |= np.where(fd & (nib & 1 != 0), FLAG_BRS, 0) | np.where(fd & (nib & 2 != 0), FLAG_ESI, 0)
    return dlc, payload, flags


def _scatter(bad: np.ndarray, rows: np.ndarray, n: int) -> np.ndarray:
    out = np.zeros(n, bool)
    out[rows] = bad
    return out


def _labels(t: tx.Text, f: tx.Fields) -> np.ndarray | int:
    if not (f.count > 3).any():
        return 0
    s3, e3 = f.get(3)
    direction = (e3 - s3 == 1) & np.isin(t.buf[s3] | 32, (ord("r"), ord("t")))
    k = np.where(direction, 4, 3)
    has = f.count > k
    s, e = f.get(k)
    code = np.where(has, tx.match_words(t, s, e, LABEL_WORDS), 0)
    tx.fail(t, code < 0, lambda i: f"unknown label {t.text(s[i], e[i])!r}")
    if (f.count > k + 1).any():  # canwatch's own kind column refines "attacked"
        s2, e2 = f.get(k + 1)
        kind = np.where(f.count > k + 1, tx.match_words(t, s2, e2, _KINDS), -1)
        code = np.where((code != 0) & (kind > 0), kind, code)
    return code.astype(np.int8)


def has_label_columns(head: bytes) -> bool:
    """Whether the first lines of a candump log carry label columns (after the frame and
    an optional direction): without them, every frame reads 0, which is not "benign"."""
    for line in head.splitlines()[:50]:
        fields = line.split()
        if len(fields) < 3:
            continue
        rest = fields[3:]
        if rest and rest[0].lower() in (b"r", b"t"):
            rest = rest[1:]
        if rest:
            return True
    return False


def _q(t: tx.Text, s: np.ndarray, e: np.ndarray, i: int) -> str:
    return repr(t.text(s[i], e[i]))


FORMAT = LogFormat("candump", (".log",), sniff, read)
