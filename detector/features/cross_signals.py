"""Signals that two messages carry of one physical quantity, and how they agree.

A vehicle's speed is sent by the ABS, the engine and the cluster, each in its own
message and units: their window means lie on one line (y = slope * x + icpt), on
every drive, whatever the drive. A forged speed in one of them (a masquerade, or
spoofed frames mixed in) moves its mean off that line, even where every value it
takes is one the id had on some drive, so that no range, dictionary or fixed byte
can tell.

Learning: each id with a few frames a window gets its window means of every
16-bit word (7 positions, either byte order), per (drive, window); two words of
different ids couple when their means correlate at |r| >= CROSS_MIN_R on every
training drive where both move and over all drives together (both ids sent on
CROSS_MIN_DRIVES drives at least), and when the line fitted without each drive holds on it: an engine
speed follows the vehicle speed within a gear, but each drive shifts otherwise
(on ROAD, 0x354 against the speed kept a line within each of two drives and
missed the third's by 20 times its bound), and only drives held out show it. Each id keeps one word (the fold sums one per stream), the couplings
of highest correlation first, at most MAX_CROSS a platform. Their bound is the
largest residual of any training window, in the fit of all drives or on a drive
held out of it, widened (CROSS_MARGIN, CROSS_FLOOR of the partner's range).
A word whose window mean never fell within any training drive is an accumulator
(a distance, a time) and couples with nothing: it wraps, and two ids' copies of it
wrap a frame apart, so the window that holds the wrap mixes values 65,000 apart
in other shares (the simulator's stla 0x388 and 0x38D distance: 11 times the
bound off on a 10-minute drive, which the 40 s training drives never wrapped).

Scoring (``detector.model.reference``): the fold gives each row of a coupled id
its word's window mean (``Rows.signal``); a window whose pair of means lies
farther off the line than the bound breaks the coupling, unless both means lie
beyond the range training saw them in (a vehicle faster than any training drive,
where a narrow field saturates while its partner goes on: the simulator's
giorgio 0x101 speed at 2047 beside 0x0EE's wheel speed), and the row's
``cross_out`` column says how far (a column of its own: a coupling that fails on
vehicles held out in calibration weighs only itself down).
"""

from __future__ import annotations

import numpy as np

from detector.features.words import word, words16

#: Couplings a platform learns at most, and how strong they must be.
MAX_CROSS = 8
CROSS_MIN_R = 0.99
#: A window mean counts when its id sent at least this many frames in the window.
CROSS_MIN_FRAMES = 3
#: A drive shows a word moving when its window means take this many values; a
#: coupling needs both ids sent on this many drives.
CROSS_MIN_VALUES = 10
CROSS_MIN_DRIVES = 3
#: bound = CROSS_MARGIN x the largest training residual + CROSS_FLOOR x the range of y,
#: and at most CROSS_MAX_BOUND x that range: one quantity sent twice stays within a few
#: per cent of its line (ROAD's speeds 1.5-4.7 %, the simulator's 1-3.4 %); a looser
#: line relates two quantities through a third that moves on its own (engine and
#: speed through the gear, two temperatures), and on another vehicle it shifts
#: (the simulator's held-out vehicles broke each of those, 9.5-18 %, in every window)
CROSS_MARGIN = 1.5
CROSS_FLOOR = 0.01
CROSS_MAX_BOUND = 0.06
#: Candidate words: (first byte, big-endian); a little-endian word at ``at`` is
#: bytes at (low) and at + 1 (high).
WORDS = tuple((at, be) for at in range(7) for be in (True, False))


def no_cross_signals(k: int) -> dict[str, np.ndarray]:
    """``Baseline``'s cross-signal arrays with nothing learned (``k`` ids)."""
    return {
        "signal_at": np.full(k, -1, np.int8),
        "signal_be": np.zeros(k, bool),
        "xc_a": np.zeros(0, np.int32),
        "xc_b": np.zeros(0, np.int32),
        "xc_slope": np.zeros(0),
        "xc_icpt": np.zeros(0),
        "xc_bound": np.zeros(0),
        "xc_seen": np.zeros((0, 4)),
    }


def _window_means(
    ts: np.ndarray, data: np.ndarray, slot: np.ndarray, seg: np.ndarray, ids: np.ndarray,
    window_s: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # fmt: skip
    """For the (drive, window) cells of the frames (``seg``: each frame's drive): each
    cell's drive, and per id in ``ids`` and word, the cell's mean (NaN where the id
    sent < CROSS_MIN_FRAMES) and whether the word is an accumulator (``_accumulating``).
    Recordings of one drive share its cells: the means of a line's points lie on it."""
    win = np.floor(ts / window_s).astype(np.int64)
    cell_key = seg.astype(np.int64) * (int(win.max()) - int(win.min()) + 1) + (win - win.min())
    cells, cell = np.unique(cell_key, return_inverse=True)
    cell_seg = np.zeros(len(cells), np.int64)
    cell_seg[cell] = seg
    means = np.full((len(ids), len(WORDS), len(cells)), np.nan)
    accumulating = np.zeros((len(ids), len(WORDS)), bool)
    order = np.lexsort((ts, seg, slot))  # each id's frames one slice, by drive and time
    bounds = np.searchsorted(slot[order], np.r_[ids, ids + 1])
    for i in range(len(ids)):
        on = order[bounds[i] : bounds[len(ids) + i]]
        c, words = cell[on], words16(data[on])
        n = np.bincount(c, minlength=len(cells))
        ok = n >= CROSS_MIN_FRAMES
        for w, (at, be) in enumerate(WORDS):
            values = word(words, at, be)
            s = np.bincount(c, values, minlength=len(cells))
            means[i, w, ok] = s[ok] / n[ok]
            accumulating[i, w] = _accumulating(values, seg[on])
    return cell_seg, means, accumulating


def _corr(m: np.ndarray) -> np.ndarray:
    """|r| between the rows of ``m`` (signals x cells, NaN: no mean), each two over the
    cells both have (NaN where those are too few, or one does not move in them)."""
    have = np.isfinite(m).astype(np.float64)
    x = np.where(have > 0, m, 0.0)
    n = have @ have.T
    sx, sxx = x @ have.T, (x * x) @ have.T  # row i's sums over the cells row j has
    sxy = x @ x.T
    with np.errstate(invalid="ignore", divide="ignore"):
        cov = sxy - sx * sx.T / n
        var = sxx - sx * sx / n
        r = cov / np.sqrt(var * var.T)
    return np.where(n >= CROSS_MIN_VALUES, np.abs(r), np.nan)


def _accumulating(values: np.ndarray, seg: np.ndarray) -> bool:
    """Whether a word's values (one id's frames in time order, ``seg``: each one's drive)
    rose and never fell from one frame to the next, save by a wrap (by more than half
    the range they span: a distance's low byte falls 255 at each of its wraps)."""
    step = np.diff(values)[seg[1:] == seg[:-1]]
    span = float(values.max() - values.min()) if len(values) else 0.0
    return bool((step > 0).any() and not ((step < 0) & (step > -span / 2)).any())


def _moving(m: np.ndarray) -> np.ndarray:
    """Rows of ``m`` whose finite values take at least CROSS_MIN_VALUES values."""
    return np.array([len(np.unique(r[np.isfinite(r)])) >= CROSS_MIN_VALUES for r in m], bool)


def _pair_strength(sig: np.ndarray, cell_seg: np.ndarray) -> np.ndarray:
    """(n, n) how strongly each two signals (rows of ``sig``: signals x cells) agree:
    the smallest |r| over the drives (``cell_seg``) where both move and over all drives
    together, if both were sent on CROSS_MIN_DRIVES drives or more (in a few windows
    at least: a drive whose windows of one id were left out as attacked still tests
    the line), else 0."""
    n = len(sig)
    worst = np.ones((n, n))
    drives = np.zeros((n, n), np.int64)
    for s in np.unique(cell_seg):
        m = sig[:, cell_seg == s]
        sent = (np.isfinite(m).sum(axis=1) >= CROSS_MIN_FRAMES).astype(np.int64)
        drives += np.outer(sent, sent)
        on = _moving(m)
        if on.sum() >= 2:
            both = np.ix_(on, on)
            worst[both] = np.minimum(worst[both], np.nan_to_num(_corr(m[on])))
    pooled = np.nan_to_num(_corr(sig))
    return np.where(drives >= CROSS_MIN_DRIVES, np.minimum(worst, pooled), 0.0)


def _line(x: np.ndarray, y: np.ndarray, cell_seg: np.ndarray) -> tuple[float, float, float] | None:
    """(slope, icpt, bound) of y against x over every drive, or None if the line fitted
    without a drive misses that drive's windows by more than the bound of the others."""
    both = np.isfinite(x) & np.isfinite(y)
    x, y, drive = x[both], y[both], cell_seg[both]
    span = float(y.max() - y.min())
    slope, icpt = np.polyfit(x, y, 1)
    worst = float(np.abs(y - (slope * x + icpt)).max())
    for d in np.unique(drive):
        rest = drive != d
        if len(np.unique(x[rest])) < CROSS_MIN_VALUES:
            continue
        s, c = np.polyfit(x[rest], y[rest], 1)
        inside = CROSS_MARGIN * np.abs(y[rest] - (s * x[rest] + c)).max() + CROSS_FLOOR * span
        held = float(np.abs(y[~rest] - (s * x[~rest] + c)).max())
        if held > inside:
            return None
        worst = max(worst, held)
    bound = CROSS_MARGIN * worst + CROSS_FLOOR * span
    return (float(slope), float(icpt), bound) if bound <= CROSS_MAX_BOUND * span else None


def learn_cross_signals(
    ts: np.ndarray, data: np.ndarray, slot: np.ndarray, drive: np.ndarray,
    mean_count: np.ndarray, window_s: float, skip_bytes: np.ndarray | None = None,
) -> dict[str, np.ndarray]:  # fmt: skip
    """Cross-id couplings of a platform's benign frames (``slot``: each frame's id slot,
    ``drive``: its drive or vehicle) as ``Baseline`` fields (see the module's docstring).
    ``skip_bytes`` ((k, 8) bool): bytes no coupled word may use (counters, checksums)."""
    k = len(mean_count)
    out = no_cross_signals(k)
    ids = np.flatnonzero(mean_count >= CROSS_MIN_FRAMES)
    if len(ids) < 2 or len(ts) == 0:
        return out
    cell_seg, means, accumulating = _window_means(ts, data, slot, drive, ids, window_s)
    flat = means.reshape(len(ids) * len(WORDS), -1)
    usable = np.ones((len(ids), len(WORDS)), bool)
    if skip_bytes is not None:
        for w, (at, _) in enumerate(WORDS):
            usable[:, w] = ~(skip_bytes[ids, at] | skip_bytes[ids, at + 1])
    cand = np.flatnonzero(_moving(flat) & usable.ravel() & ~accumulating.ravel())
    strength = _pair_strength(flat[cand], cell_seg)
    owner = cand // len(WORDS)
    a, b = np.nonzero(np.triu(strength >= CROSS_MIN_R, 1) & (owner[:, None] != owner[None, :]))
    found = sorted(
        ((strength[p, q], owner[p], cand[p] % len(WORDS), owner[q], cand[q] % len(WORDS))
         for p, q in zip(a, b, strict=True)), reverse=True,
    )  # fmt: skip
    word_of: dict[int, int] = {}
    xc = {n: [] for n in ("xc_a", "xc_b", "xc_slope", "xc_icpt", "xc_bound", "xc_seen")}
    for _, ia, wa, ib, wb in found:
        if len(xc["xc_a"]) == MAX_CROSS:
            break
        if word_of.get(ia, wa) != wa or word_of.get(ib, wb) != wb:
            continue  # the fold sums one word a stream
        line = _line(means[ia, wa], means[ib, wb], cell_seg)
        if line is None:
            continue
        word_of[ia], word_of[ib] = wa, wb
        for n, v in zip(xc, (ids[ia], ids[ib], *line, _seen(means[ia, wa], means[ib, wb])), strict=True):
            xc[n].append(v)
    if not xc["xc_a"]:
        return out
    for i, w in word_of.items():
        out["signal_at"][ids[i]], out["signal_be"][ids[i]] = WORDS[w]
    out["xc_a"], out["xc_b"] = np.array(xc["xc_a"], np.int32), np.array(xc["xc_b"], np.int32)
    for n in ("xc_slope", "xc_icpt", "xc_bound", "xc_seen"):
        out[n] = np.array(xc[n], np.float64)
    return out


def _seen(x: np.ndarray, y: np.ndarray) -> tuple[float, float, float, float]:
    """The least and largest window means of x, then of y, where both have one: the
    range the line was seen to hold in."""
    both = np.isfinite(x) & np.isfinite(y)
    return float(x[both].min()), float(x[both].max()), float(y[both].min()), float(y[both].max())
