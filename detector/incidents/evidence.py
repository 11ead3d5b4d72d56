"""From scored rows to what an analyst reads: the suspected attack and evidence lines.

Pure functions over one window's rows (``ScoredRows`` + row indices). The
attack kind follows the evidence: unseen ids from many identifiers → fuzzing,
a flood of one id (or of error frames) → dos, a known id above its learned rate → spoofing, an
expected id silent → suspension, counters out of step with valid-looking
payloads → replay, payload-only deviation at normal timing → masquerade.

A row under ``POOLED_ID`` holds the frames of a vehicle window's unseen ids
past those given rows of their own (``detector.features.windowing``): more than
``GUARANTEED_NOVEL_IDS`` distinct ids by construction, so fuzzing; it is named
"further unseen ids" in the evidence and never listed as an id.
"""

from __future__ import annotations

import numpy as np

from detector.core.dbc import SignalBook, signal_book
from detector.core.fd import ERROR_FRAMES_ID, describe_id, frame_ids
from detector.features.baseline import CHECKSUMS, COUPLED_REL_UNIT, LAST_BYTE, NIBBLE_SUM, PAIRS
from detector.features.columns import (
    POOLED_ID,
    F,
    read_change_note,
    read_coupling_note,
    read_far_note,
    read_jump_note,
    read_pair_note,
)
from detector.model.pipeline import ScoredRows
from detector.model.platform import E_FOREST, EVIDENCE_NAMES

#: Rows at or above this normalised score count as implicated.
IMPLICATED = 1.0
#: Frames per window of one id, relative to learned, that make a flood (dos).
FLOOD_RATIO = 20.0
PAYLOAD = (
    "out_of_range",
    "delta_out",
    "pair_out",
    "coupling_out",
    "fixed_out",
    "cross_out",
    "checksum_err",
    "novel_payload",
    "novel_dlc",
    "change_drop",
    "change_rise",
    "hamming_z",
)
TIMING = ("rate", "dt_min", "dt_mean", "dt_cv")


def classify_window(sc: ScoredRows, idx: np.ndarray) -> str:
    """Suspected attack kind of one window from its rows ``idx`` (best first)."""
    idx = np.asarray(idx)
    if len(idx) == 0:
        return "unknown"
    rows, X, ex = sc.rows, sc.rows.X, sc.excess
    hot = idx[sc.scores[idx] >= IMPLICATED]
    if len(hot) == 0:
        hot = idx[:1]
    if rows.can_id[hot[0]] == ERROR_FRAMES_ID:  # a flood of error frames: a bus-off attack
        return "dos"
    novel = hot[X[hot, F["novel_id"]] > 0]
    if (rows.can_id[novel] == POOLED_ID).any():  # more unseen ids than rows were given
        return "fuzzing"
    if len(novel):
        flood = rows.count[novel].max() >= FLOOD_RATIO * max(1.0, _typical_count(sc, hot))
        if len(np.unique(rows.can_id[novel])) >= 3 and not flood:
            return "fuzzing"
        return "dos" if flood else "fuzzing"
    top = hot[0]
    if (
        rows.count[top] == 0
        or ex[top, F["silence"]] > 0
        and ex[top, F["rate"]] > 0
        and X[top, F["rate"]] < 0.5
    ):
        return "suspension"
    payload = max(ex[top, F[n]] for n in PAYLOAD)
    # an FD frame's evidence is spread over its lanes: a forged byte in one, its
    # counter in another, its checksum in the checksum lane
    same = hot[frame_ids(rows.can_id[hot]) == frame_ids(rows.can_id[top])]
    seq = ex[same, F["counter_err"]].max()
    # values no genuine frame held: new ones, or a frame that fails its own checks (a
    # checksum, two signals of one frame that always agree)
    fresh_values = sum(
        ex[same, F[n]].sum()
        for n in ("out_of_range", "novel_payload", "pair_out", "checksum_err", "coupling_out")
    )
    # re-sent genuine frames: counters out of step, yet every value one seen before
    resent = seq > 0 and fresh_values == 0
    timing_up = X[top, F["rate"]] > 1.0 and (ex[top, F["rate"]] > 0 or ex[top, F["dt_min"]] > 0)
    if timing_up:
        if X[top, F["rate"]] >= FLOOD_RATIO:
            return "dos"
        # extra frames either carry forged values (spoofing) or old genuine ones (replay)
        return "replay" if resent else "spoofing"
    if resent:
        return "replay"
    if payload > 0 or seq > 0:
        return "masquerade"
    return "unknown"


def _typical_count(sc: ScoredRows, idx: np.ndarray) -> float:
    counts = sc.rows.count[idx]
    return float(np.median(counts[counts > 0])) if (counts > 0).any() else 1.0


def id_text(can_id: int) -> str:
    """An id as the evidence names it (the pooled row is no id)."""
    return "further unseen ids" if int(can_id) == POOLED_ID else describe_id(int(can_id))


def _pooled_text(sc: ScoredRows, i: int) -> str:
    """The pooled row's sentence, with examples of the unseen ids that had rows."""
    rows = sc.rows
    own = (
        (rows.vehicle == rows.vehicle[i])
        & (rows.window == rows.window[i])
        & (rows.X[:, F["novel_id"]] > 0)
        & (rows.can_id != POOLED_ID)
    )
    named = np.sort(rows.can_id[own])
    examples = ", ".join(describe_id(int(c)) for c in named[:3])
    return (
        f"{int(rows.count[i])} frames of further unseen ids, past the {len(named)} with a row "
        f"of their own ({examples}{', ...' if len(named) > 3 else ''}); limits.max_novel_ids"
    )


def _far_text(sc: ScoredRows, i: int, one_value: bool = False) -> str:
    """ "; " and which byte lay furthest outside its learned range, at what value, and
    the range (``Rows.far``); "" when the row has no note, or with ``one_value`` when
    the byte's range is not one value (it is not the byte that never moved)."""
    note = int(sc.rows.notes("far")[i])
    if note < 0:
        return ""
    byte, value, lo, hi = read_far_note(note)
    if one_value and lo != hi:
        return ""
    return f"; {_byte_text(sc, i, byte)} read {value} (0x{value:02X}), learned range {lo}-{hi}"


def _jump_text(sc: ScoredRows, i: int) -> str:
    """ "; " and which byte changed from one frame to the next by more than it ever did,
    by how much, and the steps it took in training (``Rows.jump``); "" without a note."""
    note = int(sc.rows.notes("jump")[i])
    if note < 0:
        return ""
    byte, step, lo, hi = read_jump_note(note)
    return f"; {_byte_text(sc, i, byte)} stepped by {step:+d} (learned {lo:+d} to {hi:+d})"


def _coupling_text(sc: ScoredRows, i: int) -> str:
    """ "; " and which two 16-bit signals of the frame disagreed first in the window,
    by how much, and how far apart they stayed in training (``Rows.coupling`` and the
    model's coupling); "" without a note or a model."""
    note = int(sc.rows.notes("coupling")[i])
    slot = _learned_slot(sc, i)
    if note < 0 or slot is None:
        return ""
    c, diff = read_coupling_note(note)
    bl, cid = sc.baseline, sc.rows.can_id[i]
    a, b = int(bl.couple_a[slot, c]), int(bl.couple_b[slot, c])
    share = 100 * float(bl.couple_rel[slot, c]) / COUPLED_REL_UNIT
    return (
        f"; bytes {a}-{a + 1}{_signals_text(sc, cid, a, 2)} minus bytes {b}-{b + 1}"
        f"{_signals_text(sc, cid, b, 2)} was {diff:+d} (learned {int(bl.couple_lo[slot, c]):+d} "
        f"to {int(bl.couple_hi[slot, c]):+d}, or within {share:.1f}% of the larger)"
    )


def _pair_text(sc: ScoredRows, i: int) -> str:
    """ "; " and which two bytes that kept a tight difference in training left it first
    in the window, by how much, and their learned difference (``Rows.pair`` and the
    model's pair bounds); "" without a note or a model."""
    note = int(sc.rows.notes("pair")[i])
    slot = _learned_slot(sc, i)
    if note < 0 or slot is None:
        return ""
    p, diff = read_pair_note(note)
    a, b = (int(v) for v in PAIRS[p])
    cid, bl = sc.rows.can_id[i], sc.baseline
    return (
        f"; byte {a}{_signals_text(sc, cid, a)} minus byte {b}{_signals_text(sc, cid, b)} "
        f"was {diff:+d} (learned {int(bl.pair_min[slot, p]):+d} to {int(bl.pair_max[slot, p]):+d})"
    )


def _cross_text(sc: ScoredRows, i: int, x: float) -> str:
    """A broken cross-id coupling: the row's word, its window mean, and where the
    partner's mean puts it (``Rows.cross``)."""
    rows = sc.rows
    cid = id_text(rows.can_id[i])
    note = rows.cross_notes()[i]
    if not np.isfinite(note[0]):
        how_far = "2× or more" if x >= 1 else f"{1 + x:.1f}×"
        return f"{cid}: a signal it shares with other ids left their common line by {how_far} its bound"
    partner, at, partner_at, expected, bound = note
    mean = rows.signals()[i]
    other = describe_id(int(partner))
    named = _signals_text(sc, rows.can_id[i], int(at), 2)
    partner_named = _signals_text(sc, int(partner), int(partner_at), 2)
    return (
        f"{cid} bytes {at:.0f}-{at + 1:.0f}{named} and {other} bytes {partner_at:.0f}-"
        f"{partner_at + 1:.0f}{partner_named} disagree: window mean {mean:.0f}, "
        f"where {other}'s puts it at "
        f"{expected:.0f} ± {bound:.0f}, {abs(mean - expected) / bound:.1f}× that bound off "
        "(one quantity: they kept one line on every training drive)"
    )


def _change_text(sc: ScoredRows, i: int, cid: str, note_name: str, pairs_of: str = "") -> str:
    """A change rate's sentence: the byte whose rate moved furthest (``Rows`` note
    ``note_name``), how often it changed in the window's frame pairs (``pairs_of``:
    which pairs count) and how often it did in training; "" without a note."""
    note = int(sc.rows.notes(note_name)[i])
    if note < 0:
        return ""
    byte, changed, pairs, learned = read_change_note(note)
    return (
        f"{cid}: {_byte_text(sc, i, byte)} changed in {changed} of the {pairs} frame "
        f"pairs{pairs_of} (learned {100 * learned:.0f}%)"
    )


def _book(sc: ScoredRows) -> SignalBook | None:
    """The names the platform's DBC gives, if it has one that can be read."""
    return signal_book(sc.dbc) if sc.dbc else None


def _id_named(sc: ScoredRows, i: int) -> str:
    """Row ``i``'s id, and the DBC's name of its message: "0x1E4 (BRAKE_1)"."""
    cid = id_text(sc.rows.can_id[i])
    book = _book(sc)
    name = None if book is None else book.message(int(sc.rows.can_id[i]))
    return f"{cid} ({name})" if name else cid


def _signals_text(
    sc: ScoredRows, can_id: int, byte: int, n_bytes: int = 1, mask: int = 0xFF
) -> str:
    """" [VEHICLE_SPEED]": the DBC's signals in those bytes of an id
    (``SignalBook.signals``), "" when it names none."""
    book = _book(sc)
    names = [] if book is None else book.signals(int(can_id), int(byte), n_bytes, mask)
    return f" [{', '.join(names)}]" if names else ""


def _byte_text(sc: ScoredRows, i: int, byte: int) -> str:
    """A byte of row ``i``'s id, and the DBC's signals in it: "byte 5 [COOLANT_TEMP]"."""
    return f"byte {byte}{_signals_text(sc, sc.rows.can_id[i], byte)}"


def _learned_slot(sc: ScoredRows, i: int) -> int | None:
    """Row ``i``'s id's slot in the scoring model's baseline, if it knows both."""
    if sc.baseline is None:
        return None
    slot, known = sc.baseline.slots(sc.rows.can_id[i : i + 1])
    return int(slot[0]) if known[0] else None


def _field_text(byte: int, mask: int, shift: int) -> str:
    """A field of one byte: "byte 6", or "byte 6 bits 0-3"."""
    if mask == 0xFF:
        return f"byte {byte}"
    return f"byte {byte} bits {shift}-{shift + bin(mask).count('1') - 1}"


def _counter_text(sc: ScoredRows, i: int) -> str:
    """The row's id's learned counters, where they sit and how they step (a frame is out
    of sequence when it breaks every one): "message counter (byte 6 bits 0-3, +1 a
    frame)"; without a model to say, "message counter"."""
    slot = _learned_slot(sc, i)
    if slot is None:
        return "message counter"
    bl = sc.baseline
    cid = sc.rows.can_id[i]
    fields = [
        f"{_field_text(int(b[slot]), int(m[slot]), int(sh[slot]))}"
        f"{_signals_text(sc, cid, int(b[slot]), mask=int(m[slot]))}, +{int(st[slot])} a frame"
        for b, m, sh, st in (
            (bl.counter_byte, bl.counter_mask, bl.counter_shift, bl.counter_step),
            (bl.counter2_byte, bl.counter2_mask, bl.counter2_shift, bl.counter2_step),
        )
        if b[slot] >= 0
    ]
    if not fields:
        return "message counter"
    return f"message counter{'s' if len(fields) > 1 else ''} ({'; '.join(fields)})"


def _checksum_text(sc: ScoredRows, i: int) -> str:
    """" (crc8-j1850 in the last byte)": the kind and place of the row's id's learned
    checksum ("" when no model says); a nibble sum spans the whole frame."""
    slot = _learned_slot(sc, i)
    kind = 0 if slot is None else int(sc.baseline.checksum_kind[slot])
    if kind not in CHECKSUMS:
        return ""
    at = int(sc.baseline.checksum_byte[slot])
    if kind == NIBBLE_SUM:  # ``checksum_byte`` holds the sum
        return f" ({CHECKSUMS[kind]}: the frame's nibbles add up to {at} mod 16)"
    cid = sc.rows.can_id[i]
    if at == LAST_BYTE:  # the frame's, whatever its dlc: the DBC says which byte that is
        book = _book(sc)
        last = None if book is None else book.last_byte(cid)
        named = "" if last is None else _signals_text(sc, cid, last)
        return f" ({CHECKSUMS[kind]} in the last byte{named})"
    return f" ({CHECKSUMS[kind]} in {_byte_text(sc, i, at)})"


def _rate_text(sc: ScoredRows, i: int, x: float) -> str:
    """How row ``i``'s frame count compares with what was learned: "3.0× its learned
    rate"; an id never seen in training learned none (its rate feature is then its bare
    count, which read as a ratio claims a rate that was never learned)."""
    if sc.rows.X[i, F["novel_id"]] > 0:
        return "never seen in training"
    return f"{x:.1f}× its learned rate"


def _ms(seconds: float) -> str:
    return f"{seconds * 1e3:.1f} ms" if seconds < 1 else f"{seconds:.2f} s"


def observed(sc: ScoredRows, i: int, column: int) -> float:
    """The row's value behind evidence ``column``: the feature, or for the forest its evidence."""
    return float(sc.excess[i, column] if column == E_FOREST else sc.rows.X[i, column])


def describe(sc: ScoredRows, i: int, feature: str, window_s: float) -> str:
    """One evidence sentence for evidence column ``feature`` of row ``i``."""
    x = observed(sc, i, EVIDENCE_NAMES.index(feature))
    cid = _id_named(sc, i)
    n = int(sc.rows.count[i])
    period = float(sc.baseline_period[i]) if np.isfinite(sc.baseline_period[i]) else float("nan")
    pct = f"{100 * x:.0f}%"
    texts = {
        "rate": f"{cid}: {n} frames in the {window_s:g} s window ({_rate_text(sc, i, x)})",
        "dt_min": f"{cid}: frames as close as {_ms(x * period)} apart (learned period {_ms(period)})",
        "dt_mean": f"{cid} arrived every {_ms(x * period)} (learned {_ms(period)})",
        "dt_cv": f"{cid}: irregular timing, jitter {_ms(x * period)} (learned period {_ms(period)})",
        "silence": f"{cid} silent for {_ms(x * period)} (learned period {_ms(period)})",
        "hamming_z": f"{cid}: payload bit flips {abs(x):.1f} σ {'above' if x >= 0 else 'below'} "
        "learned",
        "change_drop": _change_text(sc, i, cid, "frozen", " where the others did")
        or f"{cid}: a payload byte that normally changes with the others is frozen",
        "change_rise": _change_text(sc, i, cid, "rising")
        or f"{cid}: a payload byte changes {x:.0%} more often than learned",
        "out_of_range": f"{cid}: payload byte outside its learned range in {pct} of frames"
        + _far_text(sc, i),
        "delta_out": f"{cid}: payload jumps larger than ever learned in {pct} of frames"
        + _jump_text(sc, i),
        "pair_out": f"{cid}: bytes that normally move together disagree in {pct} of frames"
        + _pair_text(sc, i),
        "coupling_out": f"{cid}: signals that normally move together disagree in {pct} of frames"
        + _coupling_text(sc, i),
        "cross_out": _cross_text(sc, i, x),
        "fixed_out": f"{cid}: a byte that never changed in training changed in {pct} of frames"
        + _far_text(sc, i, one_value=True),
        "counter_err": f"{cid}: {_counter_text(sc, i)} out of sequence in {pct} of frames",
        "checksum_err": f"{cid}: checksum{_checksum_text(sc, i)} invalid in {pct} of frames",
        "novel_payload": f"{cid}: {pct} of payloads never seen in training",
        "novel_dlc": f"{cid}: DLC never seen for this id in {pct} of frames",
        "novel_id": (
            _pooled_text(sc, i)
            if int(sc.rows.can_id[i]) == POOLED_ID
            else f"{cid}: id never seen on this platform ({n} frames)"
        ),
        "forest": f"{cid}: an unusual combination of timing and payload features (isolation forest)",
        "bus_load": f"bus load {x:.2f}× learned",
        "bus_novel": f"{pct} of the bus's frames carry unseen ids",
        "bus_missing": f"{pct} of the expected ids are missing",
        "bus_ids": f"{x:.2f}× the learned number of distinct ids on the bus",
    }
    return texts[feature]


def evidence(sc: ScoredRows, idx: np.ndarray, window_s: float, limit: int = 5) -> list[dict]:
    """Top features (by envelope excess) over the window's rows, as analyst notes.

    A broken cross-id coupling shows on the rows of both its ids, and a forged id breaks
    its line with each id it shares a quantity with: the couplings that share an id with
    an earlier one are folded into its note (``_fold_crossings``), so they do not crowd
    out the rest."""
    idx = np.asarray(idx)
    if len(idx) == 0:
        return []
    ex = sc.excess[idx]
    flat = np.argsort(-ex, axis=None)[: limit * 8]
    out, seen = [], set()
    crossings: dict[int, list[tuple[int, int]]] = {}  # cross_out note -> its pair, folded ones
    for f in flat:
        r, j = divmod(int(f), ex.shape[1])
        if ex[r, j] <= 0:
            break
        i = int(idx[r])
        name = EVIDENCE_NAMES[j]
        if int(sc.rows.can_id[i]) == POOLED_ID and name != "novel_id":
            continue  # the pooled row is many ids: only its count says something
        key = (name, int(sc.rows.can_id[i])) if not name.startswith("bus_") else (name, -1)
        if key in seen:
            continue
        seen.add(key)
        if name == "cross_out" and (pair := _cross_pair(sc, i)) is not None:
            host = next((k for k, p in crossings.items() if set(pair) & set(p[0])), None)
            if host is not None:
                crossings[host].append(pair)
                continue
            crossings[len(out)] = [pair]
        no_id = name.startswith("bus_") or int(sc.rows.can_id[i]) == POOLED_ID
        out.append(
            {
                "can_id": None if no_id else describe_id(int(sc.rows.can_id[i])),
                "feature": name,
                "observed": round(observed(sc, i, j), 4),
                "excess": round(float(ex[r, j]), 2),
                "text": describe(sc, i, name, window_s),
            }
        )
        if len(out) >= limit:
            break
    for k, pairs in crossings.items():
        out[k]["text"] += _fold_crossings(pairs)
    return out


def _cross_pair(sc: ScoredRows, i: int) -> tuple[int, int] | None:
    """(row's id, partner's id) of row ``i``'s broken coupling, if its note names one."""
    partner = sc.rows.cross_notes()[i, 0]
    return (int(sc.rows.can_id[i]), int(partner)) if np.isfinite(partner) else None


def _fold_crossings(pairs: list[tuple[int, int]]) -> str:
    """What a broken coupling's note (``pairs[0]``) adds for the others folded into it,
    each sharing an id with it (the same coupling seen from its other side adds
    nothing): "; 0x1E4 also left its line with 0x2E4, 0x2E6"."""
    first = set(pairs[0])
    partners: dict[int, set[int]] = {}
    for pair in pairs[1:]:
        if set(pair) == first:
            continue
        shared = next(c for c in pair if c in first)
        partners.setdefault(shared, set()).update(c for c in pair if c != shared)
    return "".join(
        f"; {describe_id(shared)} also left its line with "
        + ", ".join(describe_id(c) for c in sorted(others))
        for shared, others in sorted(partners.items())
    )
