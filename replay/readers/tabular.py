"""Dataset CSV/column formats: ROAD, HCRL Car-Hacking (csv and text), CrySyS
columns and can-train-and-test.

- ``road``: ``Time,Id,Byte1..Byte8,Label`` (hex id and bytes, empty byte cells
  for short frames); labels Benign, Fuzzing, Fabrication (spoofing), Masquerade,
  or any LABELS name; anything else counts as ``unknown``.
- ``hcrl``: ``Timestamp,CAN ID,DLC,DATA[0]..DATA[7],Flag`` with ``R`` normal and
  ``T`` injected (label ``unknown``). Headerless original files put the flag
  right after the last data byte, so the flag is always the last column.
- ``hcrl-txt``: ``Timestamp: ts  ID: id  000  DLC: n  b0 .. b{n-1}`` (hex), as HCRL
  writes its benign captures (Car-Hacking's ``normal_run_data.txt``, OTIDS, CAN-VTC):
  no labels; ``100`` instead of ``000`` marks a remote frame (no data bytes).
- ``crysys``: whitespace columns ``ts id flags dlc b0 .. b{dlc-1}`` (hex).
- ``cantt``: ``timestamp,arbitration_id,data_field,attack`` as can-train-and-test
  (Lampe & Meng: four vehicles, one csv per drive) writes it: hex id (``0x``
  optional), the payload as one hex string of its length (0-8 bytes), attack
  ``0``/``1`` (label ``unknown``). CANini and CAN-MIRGU's csv add a
  ``dlc_value`` column before ``attack``; it must match the payload.
"""

from __future__ import annotations

import re

import numpy as np

from detector.core.schema import FLAG_RTR, LABELS
from replay.readers import _text as tx
from replay.readers._base import LABEL_WORDS, LogFormat, build_frames, head_lines, mostly

_UNKNOWN = LABELS.index("unknown")
ROAD_LABELS = {name: i for i, name in enumerate(LABELS)}
ROAD_LABELS.update({"fabrication": LABELS.index("spoofing"), "attack": _UNKNOWN})
HCRL_FLAGS = {"r": 0, "t": _UNKNOWN}

_ROAD_ROW = re.compile(r"^[0-9.]+,[0-9A-Fa-f]+,([0-9A-Fa-f]{0,2},){8}[A-Za-z]\w*$")
_HCRL_ROW = re.compile(r"^[0-9.]+,[0-9A-Fa-f]+,\d,([0-9A-Fa-f]{0,2},){0,8}[RT]$")
_HCRL_TXT_ROW = re.compile(
    r"^Timestamp:\s+[0-9.]+\s+ID:\s+[0-9A-Fa-f]+\s+[01]{3}\s+DLC:\s+\d((\s+[0-9A-Fa-f]{2})*)$"
)
_CANTT_ROW = re.compile(r"^[0-9.]+,(0x)?[0-9A-Fa-f]+,([0-9A-Fa-f]{2}){0,8},(\d,)?[01]$")
_CRYSYS_ROW = re.compile(r"^[0-9.]+\s+[0-9A-Fa-f]+\s+[0-9A-Fa-f]+\s+\d((\s+[0-9A-Fa-f]{2})*)$")


def _sniff_rows(head: bytes, header: str, row: re.Pattern[str]) -> bool:
    lines = head_lines(head)
    if lines and lines[0].lower().replace(" ", "").startswith(header):
        return True  # the header alone is distinctive
    return mostly(lines, row)


def sniff_road(head: bytes) -> bool:
    return _sniff_rows(head, "time,id,byte1", _ROAD_ROW)


def sniff_hcrl(head: bytes) -> bool:
    return _sniff_rows(head, "timestamp,canid,dlc", _HCRL_ROW)


def sniff_hcrl_txt(head: bytes) -> bool:
    return _sniff_rows(head, "\0", _HCRL_TXT_ROW)


def sniff_cantt(head: bytes) -> bool:
    return _sniff_rows(head, "timestamp,arbitration_id,data_field", _CANTT_ROW)


def sniff_crysys(head: bytes) -> bool:
    return _sniff_rows(head, "\0", _CRYSYS_ROW)


def _drop_header(t: tx.Text) -> tx.Text:
    """Skip a first line that does not start with a digit (a column header)."""
    if len(t) and not (48 <= t.buf[t.start[0]] <= 57):
        return t.select(slice(1, None))
    return t


def _id(t: tx.Text, f: tx.Fields, k: int):
    s, e = f.get(k)
    arb, ndig, bad = tx.parse_hex(t, s, e, skip_0x=True)
    tx.fail(t, bad, lambda i: f"bad CAN id {t.text(s[i], e[i])!r}")
    # by digit count only: ROAD's benign traffic has a 3-digit 0xFFF "standard" id
    ext = ndig > 4
    tx.fail(t, arb > 0x1FFF_FFFF, lambda i: f"CAN id {t.text(s[i], e[i])!r} out of range")
    return arb, ext


def _ts(t: tx.Text, f: tx.Fields, k: int = 0) -> np.ndarray:
    s, e = f.get(k)
    ts, bad = tx.parse_float(t, s, e)
    tx.fail(t, bad, lambda i: f"bad timestamp {t.text(s[i], e[i])!r}")
    return ts


def _dlc(t: tx.Text, f: tx.Fields, k: int) -> np.ndarray:
    s, e = f.get(k)
    dlc, bad = tx.parse_digits(t, s, e)
    tx.fail(t, bad | (e == s), lambda i: f"bad dlc {t.text(s[i], e[i])!r}")
    tx.fail(t, dlc > 8, lambda i: f"dlc {int(dlc[i])} > 8")
    return dlc.astype(np.int64)


def _data(t: tx.Text, f: tx.Fields, col0: int, dlc: np.ndarray) -> np.ndarray:
    data, bad = tx.hex_bytes_fields(t, f, col0, dlc)
    tx.fail(t, bad, lambda i: f"bad hex in data bytes {_span(t, f, col0, dlc, i)!r}")
    return data


def _span(t: tx.Text, f: tx.Fields, col0: int, dlc: np.ndarray, i: int) -> str:
    s, _ = f.get(col0)
    _, e = f.get(col0 + max(int(dlc[i]), 1) - 1)
    return t.text(s[i], e[i])


def read_road(path: str, data: bytes | None) -> np.ndarray:
    t = _drop_header(tx.load_text(path, data or b""))
    f = tx.CommaFields(t)
    tx.check_count(t, f, f.count == 11, "11")
    ts = _ts(t, f)
    arb, ext = _id(t, f, 1)
    present = np.stack([np.subtract(*f.get(k)[::-1]) > 0 for k in range(2, 10)], axis=1)
    dlc = present.sum(axis=1)
    gap = (present[:, 1:] & ~present[:, :-1]).any(axis=1)
    tx.fail(t, gap, lambda i: "empty byte cell before a non-empty one")
    payload = _data(t, f, 2, dlc)
    s, e = f.get(10)
    label = tx.match_words(t, s, e, ROAD_LABELS, default=_UNKNOWN)
    return build_frames(ts, arb, ext, dlc, payload, 0, label)


def read_hcrl(path: str, data: bytes | None) -> np.ndarray:
    t = _drop_header(tx.load_text(path, data or b""))
    f = tx.CommaFields(t)
    tx.check_count(t, f, f.count >= 4, "at least 4")
    ts = _ts(t, f)
    arb, ext = _id(t, f, 1)
    dlc = _dlc(t, f, 2)
    ok = (f.count == dlc + 4) | (f.count == 12)
    tx.fail(t, ~ok, lambda i: f"expected {dlc[i] + 4} or 12 columns, got {f.count[i]}")
    payload = _data(t, f, 3, dlc)
    s, e = f.get(f.count - 1)
    flag = tx.match_words(t, s, e, HCRL_FLAGS)
    tx.fail(t, flag < 0, lambda i: f"bad flag {t.text(s[i], e[i])!r} (expected R or T)")
    return build_frames(ts, arb, ext, dlc, payload, 0, flag)


def read_cantt(path: str, data: bytes | None) -> np.ndarray:
    t = _drop_header(tx.load_text(path, data or b""))
    f = tx.CommaFields(t)
    tx.check_count(t, f, (f.count == 4) | (f.count == 5), "4 or 5")
    ts = _ts(t, f)
    arb, ext = _id(t, f, 1)
    s, e = f.get(2)
    n = e - s
    tx.fail(
        t, n % 2 == 1, lambda i: f"odd number of hex digits in data_field {t.text(s[i], e[i])!r}"
    )
    tx.fail(t, n > 16, lambda i: f"data_field of {n[i] // 2} bytes > 8")
    payload, bad = tx.hex_bytes_contig(t, s, n)
    tx.fail(t, bad, lambda i: f"bad hex in data_field {t.text(s[i], e[i])!r}")
    dlc = n // 2
    five = f.count == 5
    if five.any():
        ds, de = f.get(np.where(five, 3, 0))
        given, bad_d = tx.parse_digits(t, ds, de)
        tx.fail(
            t, five & (bad_d | (de == ds) | (given != dlc)),
            lambda i: f"dlc_value {t.text(ds[i], de[i])!r} is not the {dlc[i]} bytes of data_field",
        )  # fmt: skip
    ls, le = f.get(f.count - 1)
    label = tx.match_words(t, ls, le, {"0": 0, "1": LABEL_WORDS["1"]})
    tx.fail(t, label < 0, lambda i: f"bad attack label {t.text(ls[i], le[i])!r} (expected 0 or 1)")
    return build_frames(ts, arb, ext, dlc, payload, 0, label)


_HCRL_TXT_KEYS = {0: "timestamp:", 2: "id:", 5: "dlc:"}
_HCRL_TXT_FLAGS = {"000": 0, "100": FLAG_RTR}


def read_hcrl_txt(path: str, data: bytes | None) -> np.ndarray:
    t = tx.load_text(path, data or b"")
    f = tx.WsFields(t)
    tx.check_count(t, f, f.count >= 7, "at least 7")
    for k, key in _HCRL_TXT_KEYS.items():
        s, e = f.get(k)
        bad = tx.match_words(t, s, e, {key: 1}) != 1
        tx.fail(t, bad, lambda i, s=s, e=e, key=key: f"expected {key!r}, got {t.text(s[i], e[i])!r}")
    ts = _ts(t, f, 1)
    arb, ext = _id(t, f, 3)
    fs, fe = f.get(4)
    flags = tx.match_words(t, fs, fe, _HCRL_TXT_FLAGS)
    tx.fail(t, flags < 0, lambda i: f"bad flags {t.text(fs[i], fe[i])!r} (expected 000, or 100: remote)")
    dlc = _dlc(t, f, 6)
    remote = flags == FLAG_RTR
    n_data = np.where(remote, 0, dlc)
    tx.fail(
        t, f.count != n_data + 7,
        lambda i: f"expected {n_data[i] + 7} columns (dlc {dlc[i]}), got {f.count[i]}",
    )  # fmt: skip
    payload = _data(t, f, 7, n_data)
    return build_frames(ts, arb, ext, dlc, payload, flags.astype(np.uint8))


def read_crysys(path: str, data: bytes | None) -> np.ndarray:
    t = tx.load_text(path, data or b"")
    f = tx.WsFields(t)
    tx.check_count(t, f, f.count >= 4, "at least 4")
    ts = _ts(t, f)
    arb, ext = _id(t, f, 1)
    fs, fe = f.get(2)
    _, _, bad = tx.parse_hex(t, fs, fe)
    tx.fail(t, bad, lambda i: f"bad flags column {t.text(fs[i], fe[i])!r}")
    dlc = _dlc(t, f, 3)
    bad_n = f.count != dlc + 4
    tx.fail(t, bad_n, lambda i: f"expected {dlc[i] + 4} columns (dlc {dlc[i]}), got {f.count[i]}")
    payload = _data(t, f, 4, dlc)
    return build_frames(ts, arb, ext, dlc, payload)


ROAD = LogFormat("road", (".csv",), sniff_road, read_road)
HCRL = LogFormat("hcrl", (".csv",), sniff_hcrl, read_hcrl)
CANTT = LogFormat("cantt", (".csv",), sniff_cantt, read_cantt)
HCRL_TXT = LogFormat("hcrl-txt", (".txt",), sniff_hcrl_txt, read_hcrl_txt)
CRYSYS = LogFormat("crysys", (".csv", ".txt", ".log"), sniff_crysys, read_crysys)
