"""Tumbling event-time windows per vehicle, folded as frames arrive.

``WindowState.push`` takes any batch of frames (any vehicles, any order inside
the batch) and returns the feature rows of every window that the batch closes.
A vehicle's window closes when one of its frames lies past the window's end.

Frames are not kept: each (vehicle, id) stream has one row in a
``StreamTable`` (``detector.features.streams``) holding its last frame (for
inter-arrival times, payload changes and counters) and the running sums of
its open window (the features are all counts, sums and extremes), so the
state is a fixed ~320 bytes per stream however busy the bus is. A batch is
grouped by stream (in time order inside the batch), folded into those sums by
one compiled loop (``detector.features.kernels``), and the groups whose window the
batch closed become feature rows. A vehicle's streams are looked at again
only when its newest window moves on (once a window, not once a batch).

Ids the platform never learned carry nothing from one window to the next (their
rows are only their frame count), so their streams are dropped as soon as
their window is closed: a fuzzer's ids cost state for one window, not for as
long as the vehicle keeps talking. Within a window a vehicle's unseen ids get
streams of their own in the order of their first frame, up to
``max_novel_ids``; the frames of any further ones are *pooled* into one
stream per vehicle window under ``POOLED_ID`` (counted, scored like any
unseen id: its row's count is theirs). The first ``GUARANTEED_NOVEL_IDS`` of
a window always get their own stream; the rest only while the caller's
``extra_budget`` (the instance's free streams, ``detector.model.pipeline``) lasts.
So a vehicle holds at most its platform's learned ids + ``max_novel_ids`` + 1
streams, and a pooled row always stands for more than
``GUARANTEED_NOVEL_IDS`` distinct unseen ids. That holds mid-push too: a batch
whose unseen ids would exceed it (a backlog spanning several windows of a
fuzzer, or one crossing into the next window while the open one holds its
allowance) is pushed one window at a time, each vehicle's older window closed
before the next one takes streams (same rows).

The result is identical however a vehicle's stream is cut into batches as
long as each vehicle's frames arrive in time order (and, once the instance
runs short of streams, as long as it does not: see ``extra_budget``) (Kafka keeps a vehicle's
records in order; each record's frames are sorted on decode). A frame older
than its stream's predecessor in a later batch is folded without a
predecessor; one older than its stream's open window, or than a window the
vehicle already closed, is counted as late and dropped.

A vehicle's first window is partial (the recording or upload began inside it)
and is never scored; neither is the still-open last window at ``flush``, nor the
windows a telemetry gap touches: when a vehicle sends nothing at all for longer
than ``GAP_PERIODS`` periods of its platform's fastest expected message and
``GAP_WINDOWS`` windows (a logger or uplink that stopped; a silenced ECU leaves
the others sending, and a bus-off flood is error frames; a vehicle whose uplink
forwards only slow messages is not gapped by their own periods), the windows
from the gap's start to the one after its end are partial too, their silences
and inter-arrival times the gap's, not the bus's. The last window of a vehicle that
went quiet (``close_vehicles`` without ``upto``: parked, retired) is scored with its
rows marked partial (below): it ended where the vehicle stopped.

A shorter gap (a hiccup of the uplink: the vehicle silent for longer than
``SILENCE_MARGIN`` times the longest its bus went quiet in training, and than
``SHORT_GAP_PERIODS`` periods of its fastest expected message) leaves its windows
scored, their rows marked ``Rows.partial``: what they say about each frame holds,
what they say about time and the frame before does not (the model weighs them so).
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np

from detector.core.config import LimitsConfig
from detector.core.schema import take_frames
from detector.features.baseline import Baseline
from detector.features.columns import (
    N_FEATURES,
    NOTES,
    POOLED_ID,
    Rows,
    absent_rows,
    add_bus_features,
)
from detector.features.cross_signals import CROSS_MIN_FRAMES
from detector.features.fold_steps import A_COUNT, NO_WINDOW
from detector.features.kernels import (
    Emitted,
    close,
    fold,
    id_slots,
    segments,
    stream_groups,
    stream_keys,
    window_pass,
)
from detector.features.streams import StreamTable, grown

_NONE = np.iinfo(np.int64).min // 4
_LOW32 = np.uint64(0xFFFF_FFFF)
#: Unseen ids of a vehicle window that always get a stream of their own, whatever
#: the instance's budget: a flood of one unseen id (dos) stays a row of its own.
GUARANTEED_NOVEL_IDS = 8
#: StreamTable.kind of a stream: a learned id, an unseen id's own, the pooled one.
LEARNED, NOVEL, POOLED = 0, 1, 2
#: A vehicle silent for this many periods of its fastest expected message, and this
#: many windows, is a telemetry gap, not its bus (see the module doc).
GAP_PERIODS, GAP_WINDOWS = 10, 2
#: A vehicle silent for longer than this many times the longest its bus went quiet in
#: training, and this many periods of its fastest expected message, had a short gap.
SILENCE_MARGIN, SHORT_GAP_PERIODS = 3.0, 2
#: Why frames were pooled (shedding reasons, as counted in metrics).
NOVEL_ID_LIMIT = "novel_id_limit"
STREAM_LIMIT = "stream_limit"
POOL_REASONS = (NOVEL_ID_LIMIT, STREAM_LIMIT)


def stream_key(vehicle: np.ndarray, can_id: np.ndarray) -> np.ndarray:
    return (vehicle.astype(np.uint64) << np.uint64(32)) | can_id.astype(np.uint64)


def _fastest_period(bl: Baseline) -> float:
    """The period of the platform's fastest expected message (inf: none to tell)."""
    period = bl.period[bl.expected & np.isfinite(bl.period) & (bl.period > 0)]
    return float(period.min()) if len(period) else np.inf


def telemetry_gap_s(bl: Baseline, window_s: float) -> float:
    """Silence of a whole vehicle that is a gap in its telemetry (inf: the platform
    has no expected periodic message to tell)."""
    period = _fastest_period(bl)
    return float(max(GAP_PERIODS * period, GAP_WINDOWS * window_s)) if np.isfinite(period) else np.inf


def short_gap_s(bl: Baseline) -> float:
    """Silence of a whole vehicle that is a short telemetry gap (see the module doc;
    inf: the platform has no expected periodic message to tell)."""
    period = _fastest_period(bl)
    return float(max(SILENCE_MARGIN * bl.bus_silence, SHORT_GAP_PERIODS * period))


def batch_ids(can_id: np.ndarray, bl: Baseline) -> tuple[np.ndarray, np.ndarray]:
    """Sorted ids (the baseline's plus any unseen ones of the batch), and each frame's rank."""
    slot, known = id_slots(can_id, bl.ids)
    if known.all():
        return bl.ids, slot
    ids = np.union1d(bl.ids, can_id[~known]).astype(np.uint32)
    return ids, np.searchsorted(ids, can_id)


class WindowState:
    """Windowing state for the vehicles of one platform (one partition)."""

    def __init__(self, window_s: float, max_novel_ids: int = LimitsConfig.max_novel_ids) -> None:
        if window_s <= 0:
            raise ValueError(f"window_s must be > 0, got {window_s}")
        if max_novel_ids < GUARANTEED_NOVEL_IDS:
            raise ValueError(
                f"max_novel_ids must be >= {GUARANTEED_NOVEL_IDS}, got {max_novel_ids}"
            )
        self.window_s = float(window_s)
        self.max_novel_ids = int(max_novel_ids)
        # per vehicle (grown geometrically; indices past those pushed hold the fill values)
        self.closed_upto = np.zeros(0, np.int64)  # windows below are closed
        self.first_window = np.zeros(0, np.int64)  # its partial first window
        self.newest = np.zeros(0)  # newest event time since the last flush
        self.cut = np.zeros(0, np.int64)  # window of its newest frame at its last push
        self.n_novel = np.zeros(0, np.int64)  # unseen ids with an own stream (its open window)
        # telemetry gaps whose windows may still close: (vehicle, first window, last
        # window, 1 if short: its windows are scored, their rows marked partial)
        self.gaps = np.zeros((0, 4), np.int64)
        # where vehicles resumed after a long gap (a new drive: its ECUs wake again),
        # kept while a window they are the latest resume before may still close
        # (vehicle, end of the gap, its start) of each long gap a window may still need
        self.resumes = np.zeros(0, np.int64), np.zeros(0), np.zeros(0)
        self.telemetry_gaps = 0
        self.last_gaps = np.zeros(0, np.int64)  # vehicles with a telemetry gap in the last push
        self.novel_extra = 0  # sum over vehicles of n_novel beyond GUARANTEED_NOVEL_IDS
        self.streams = StreamTable()
        self.late_frames = 0
        self.last_late = np.zeros(0, np.int64)  # per late frame of the last push: its vehicle
        self.last_pooled: dict[str, np.ndarray] = {}  # reason -> per pooled frame: its vehicle

    def _grow(self, n_vehicles: int) -> None:
        if n_vehicles > len(self.closed_upto):
            n = max(n_vehicles, int(len(self.closed_upto) * 1.5), 64)
            self.closed_upto = grown(self.closed_upto, n, _NONE)
            self.first_window = grown(self.first_window, n, _NONE)
            self.newest = grown(self.newest, n, -np.inf)
            self.cut = grown(self.cut, n, _NONE)
            self.n_novel = grown(self.n_novel, n, 0)

    def push(
        self, frames: np.ndarray, vehicle: np.ndarray, bl: Baseline, extra_budget: int | None = None
    ) -> Rows:
        """Add a batch (``vehicle`` = caller's vehicle index per frame); rows of closed windows."""
        vehicle = np.asarray(vehicle, dtype=np.int64)
        uv, local = np.unique(vehicle, return_inverse=True)
        return self.push_batch(frames, uv, local.reshape(-1).astype(np.int64), bl, extra_budget)

    def push_batch(
        self,
        frames: np.ndarray,
        uv: np.ndarray,
        local: np.ndarray,
        bl: Baseline,
        extra_budget: int | None = None,
    ) -> Rows:
        """``push`` with the batch's vehicles given: ``uv`` their sorted, distinct indices,
        ``local`` each frame's position in ``uv``. Only these vehicles' state is read.

        ``extra_budget``: own streams that unseen ids past each vehicle window's first
        ``GUARANTEED_NOVEL_IDS`` may take in this batch (None: no limit); the frames of
        those refused are pooled."""
        return self._push(frames, uv, local, bl, extra_budget)[0]

    def _push(
        self,
        frames: np.ndarray,
        uv: np.ndarray,
        local: np.ndarray,
        bl: Baseline,
        extra_budget: int | None,
        like: _Plan | None = None,
        split: bool = True,
    ) -> tuple[Rows, _Plan | None]:
        """``push_batch``, and its plan (for another state's ``like``). ``split``: whether
        the batch may be cut into windows (see ``_push_by_window``)."""
        plan = self._prepare(frames, uv, local, bl, extra_budget, like, split)
        if isinstance(plan, _Split):
            return self._push_by_window(frames, uv, local, bl, extra_budget, plan), None
        if plan is None:
            return Rows.empty(), None
        late_open = fold(
            plan.frames, plan.win, plan.order, plan.seg_start, plan.rows, self.streams, bl,
            self.window_s, plan.emitted,
        )  # fmt: skip
        return self._complete(plan, late_open, bl), plan

    def _prepare(
        self,
        frames: np.ndarray,
        uv: np.ndarray,
        local: np.ndarray,
        bl: Baseline,
        extra_budget: int | None,
        like: _Plan | None = None,
        split: bool = True,
    ) -> _Plan | _Split | None:
        """Everything of a push before the fold: windows, late frames, pooling, the
        frames grouped by stream, their rows, the streams to close. ``like``: another
        state's plan for the same batch, whose grouping is taken when both hold the
        same frames and know every id (the grouping then cannot differ). When the
        batch must be pushed a window at a time (``split`` allowing), nothing is
        changed and a ``_Split`` is returned instead. A part of such a batch
        (``split`` False) leaves its telemetry gaps to the whole batch's."""
        self.last_late = np.zeros(0, np.int64)
        self.last_pooled = {}
        self.last_gaps = np.zeros(0, np.int64)
        if len(local) == 0:
            return None
        uv = np.asarray(uv, dtype=np.int64)
        self._grow(int(uv[-1]) + 1)
        first, newest = self.first_window[uv], self.newest[uv]
        can_id = frames["can_id"]
        gap_at, gap_from = np.empty(len(local), np.int64), np.empty(len(local))
        gap_s = min(short_gap_s(bl), telemetry_gap_s(bl, self.window_s))
        win, late, n_late, in_batch, id_rank, all_known, earliest, n_gaps, disorder = window_pass(
            frames["ts"], can_id, local, self.window_s, self.closed_upto[uv], first, newest,
            _NONE, bl.ids, gap_s, gap_at, gap_from,
        )  # fmt: skip
        gaps = _true_gaps(frames["ts"], local, uv, gap_at[:n_gaps], gap_from[:n_gaps])
        if disorder.any():  # a vehicle's records out of order (a backfill sent newest first)
            before = self.newest[uv]  # (window_pass raised its copy, ``newest``, not these)
            gaps = _gaps_out_of_order(frames["ts"], local, uv, late, before, disorder, gap_s, gaps)
        late_vehicles, all_win = uv[local[late]], win
        if n_late:
            frames, local, win = take_frames(frames, ~late), local[~late], win[~late]
            can_id, id_rank = frames["can_id"], id_rank[~late]
        ts = frames["ts"]
        ids, key_id = bl.ids, can_id
        if not all_known and len(local):  # unseen ids get ranks (and maybe streams) of their own
            ids, id_rank = batch_ids(can_id, bl)
            key_id = self._pool(ts, can_id, local, uv, win, ids, id_rank, bl, extra_budget, split)
            if key_id is None:  # nothing changed yet: the caller pushes it a window at a time
                return _Split(all_win, gaps)
            if key_id is not can_id:
                ids, id_rank = batch_ids(key_id, bl)
        self.first_window[uv], self.newest[uv] = first, newest
        if split:
            self._note_gaps(bl, *gaps)
        self.last_late = late_vehicles
        self.late_frames += n_late
        if len(local) == 0:
            return None
        cut = np.floor(newest / self.window_s)
        cut = np.where(np.isfinite(cut), cut, _NONE).astype(np.int64)
        if like is not None and like.plain and all_known and not n_late:
            order, seg_start, groups = like.order, like.seg_start, like.groups
        else:
            order, seg_start, groups = self._group(local, in_batch, id_rank, len(ids), ts, win)
        first_frame = order[seg_start[:-1]]
        rows, new = self.streams.rows_for(stream_key(uv[local[first_frame]], key_id[first_frame]))
        if not all_known and new.any():
            self._classify(rows[new], key_id[first_frame][new], bl)

        # a vehicle's open groups all lie in its newest window once a push is done:
        # only one whose newest window moved on (or that sent an older one) has any to close
        scan_v = np.flatnonzero(in_batch & ((cut > self.cut[uv]) | (earliest < cut)))
        scan, which = self.streams.vehicle_rows(uv[scan_v])
        emitted = Emitted(groups + len(scan), N_FEATURES)
        return _Plan(
            frames, local, win, uv, cut, in_batch, order, seg_start, groups, rows,
            scan_v, scan, which, emitted, plain=all_known and not n_late,
        )  # fmt: skip

    def _push_by_window(
        self,
        frames: np.ndarray,
        uv: np.ndarray,
        local: np.ndarray,
        bl: Baseline,
        extra_budget: int | None,
        split: _Split,
    ) -> Rows:
        """A batch whose unseen ids would have a vehicle hold more than ``max_novel_ids``
        of their streams at once, pushed one window at a time, each vehicle's older
        window closed (its unseen ids' streams freed) before the next one's are taken.
        The rows are those of one push; the state stays within its bound mid-push too.
        Each window may take ``extra_budget`` less what the earlier ones still hold, so
        streams an older window freed count as free again (one push would have pooled
        those frames: a binding budget is not batch-invariant either way)."""
        out, late, pooled = [], [], {}
        extra0 = self.novel_extra
        noted = self._note_gaps(bl, *split.gaps)  # before any window of them closes
        win = split.win
        for w in np.unique(win):
            sel = np.flatnonzero(win == w)
            present, part_local = np.unique(local[sel], return_inverse=True)
            vehicles = uv[present]
            cut = self.cut[vehicles]
            moved_on = vehicles[(cut != _NONE) & (cut < w)]  # a new vehicle has nothing open
            out.append(self.close_vehicles(moved_on, bl, upto=int(w)))
            budget = None
            if extra_budget is not None:
                budget = extra_budget - max(self.novel_extra - extra0, 0)
            part = take_frames(frames, sel)
            rows, _ = self._push(part, vehicles, part_local.reshape(-1), bl, budget, split=False)
            out.append(rows)
            late.append(self.last_late)
            for reason, v in self.last_pooled.items():
                pooled.setdefault(reason, []).append(v)
        self.last_late = np.concatenate(late)
        self.last_gaps = noted
        self.last_pooled = {reason: np.concatenate(v) for reason, v in pooled.items()}
        return Rows.concat(out)

    @staticmethod
    def _group(
        local: np.ndarray,
        in_batch: np.ndarray,
        id_rank: np.ndarray,
        n_ids: int,
        ts: np.ndarray,
        win: np.ndarray,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The frames in stream order (vehicle, id, then time), each stream's bounds, and
        the number of (stream, window) groups."""
        vrank = np.cumsum(in_batch) - 1
        n_keys = int(in_batch.sum()) * n_ids
        key = stream_keys(local, vrank, id_rank, n_ids)  # ordered by (vehicle, id)
        if n_keys <= 4 * len(ts) + 100_000:  # else too sparse to count (a fuzzer's extended ids)
            order, in_order, seg_start, groups = stream_groups(key, n_keys, ts, win)
            if in_order:
                return order, seg_start, groups
        order = np.lexsort((ts, key))
        seg_start, groups = segments(key, win, order)
        return order, seg_start, groups

    def _complete(self, plan: _Plan, late_open: np.ndarray, bl: Baseline) -> Rows:
        """Everything of a push after the fold: close what the batch's cut closes, and
        the feature rows of every group emitted."""
        uv, cut = plan.uv, plan.cut
        close(plan.scan, cut[plan.scan_v][plan.which], self.streams, bl, self.window_s, plan.emitted)
        if late_open.any():
            self.last_late = np.r_[self.last_late, uv[plan.local[late_open]]]
            self.late_frames += int(late_open.sum())
        out = self._rows(plan.emitted, uv, cut, bl)
        self._drop_closed_novel(uv[plan.scan_v], plan.scan, plan.which)
        self.cut[uv[plan.in_batch]] = cut[plan.in_batch]
        return out

    def _pool(
        self,
        ts: np.ndarray,
        can_id: np.ndarray,
        local: np.ndarray,
        uv: np.ndarray,
        win: np.ndarray,
        ids: np.ndarray,
        id_rank: np.ndarray,
        bl: Baseline,
        extra_budget: int | None,
        split: bool,
    ) -> np.ndarray | None:
        """The id of the stream each frame folds into: its own, or POOLED_ID for a frame
        of an unseen id past its vehicle window's allowance (see the module doc). None
        (``split`` allowing) when some vehicle would hold more than ``max_novel_ids``
        unseen ids' streams at once: those of several windows of the batch, or of its
        open window beside the next one's."""
        _, learned = id_slots(ids, bl.ids)
        f = np.flatnonzero(~learned[id_rank])
        v, w, cid = local[f], win[f], can_id[f]
        gv = uv[v]
        # unseen ids that already have their stream in the vehicle's open window keep it
        held = np.zeros(len(f), bool)
        has = self.n_novel[gv] > 0
        if has.any():
            _, found = self.streams.find(stream_key(gv[has], cid[has]))
            held[has] = found & (w[has] == self.cut[gv[has]])
        rest = np.flatnonzero(~held)
        if len(rest) == 0:
            return can_id
        v, w, cid, t = v[rest], w[rest], cid[rest], ts[f[rest]]
        o = np.lexsort((t, cid, w, v))  # each (vehicle, window, id) together, earliest first
        new = np.r_[True, (np.diff(v[o]) != 0) | (np.diff(w[o]) != 0) | (np.diff(cid[o]) != 0)]
        group = np.cumsum(new) - 1  # of each frame in ``o``
        g = o[new]  # each group's earliest frame
        gv_, gw, gc, gt = v[g], w[g], cid[g], t[g]
        # rank of each id in its vehicle window by first frame, after those already held
        o2 = np.lexsort((gc, gt, gw, gv_))
        run = np.r_[True, (np.diff(gv_[o2]) != 0) | (np.diff(gw[o2]) != 0)]
        pos = np.arange(len(o2))
        rank = np.empty(len(o2), np.int64)
        rank[o2] = pos - np.maximum.accumulate(np.where(run, pos, 0))
        veh = uv[gv_]
        rank += np.where(gw == self.cut[veh], self.n_novel[veh], 0)
        reason = np.where(rank >= self.max_novel_ids, 1, 0)
        needs = (rank >= GUARANTEED_NOVEL_IDS) & (reason == 0)
        if extra_budget is not None and needs.sum() > max(extra_budget, 0):
            cand = np.flatnonzero(needs)
            cand = cand[np.lexsort((gc[cand], gt[cand]))]  # by first frame, across vehicles
            reason[cand[max(extra_budget, 0) :]] = 2
        if split and _over_allowance(veh[reason == 0], gc[reason == 0], self.n_novel,
                                     self.max_novel_ids):  # fmt: skip
            return None
        if not reason.any():
            return can_id
        frame_reason = np.zeros(len(f), np.int64)
        frame_reason[rest[o]] = reason[group]
        key_id = can_id.copy()
        key_id[f[frame_reason > 0]] = POOLED_ID
        for code, name in enumerate(POOL_REASONS, start=1):
            sel = frame_reason == code
            if sel.any():
                self.last_pooled[name] = gv[sel]
        return key_id

    def _note_gaps(
        self, bl: Baseline, vehicle: np.ndarray, start: np.ndarray, end: np.ndarray
    ) -> np.ndarray:
        """Keep the windows each telemetry gap touched, from its start's to the one after
        its end's (whose slow ids' first inter-arrival spans it too), and whether it was
        short; the vehicles of the long ones (counted: their windows go unscored; a short
        one leaves its windows scored and may be a sparse bus's pause, a waking
        vehicle's, not the uplink's)."""
        long_ = np.zeros(0, bool)
        if len(vehicle):
            lo = np.floor(start / self.window_s).astype(np.int64)
            hi = np.floor(end / self.window_s).astype(np.int64) + 1
            long_ = end - start > telemetry_gap_s(bl, self.window_s)
            self.gaps = np.concatenate([self.gaps, np.c_[vehicle, lo, hi, ~long_]])
            rv, rt, rs = self.resumes
            self.resumes = np.r_[rv, vehicle[long_]], np.r_[rt, end[long_]], np.r_[rs, start[long_]]
            self.telemetry_gaps += int(long_.sum())
        self.last_gaps = vehicle[long_]
        return self.last_gaps

    def _resumed(self, vehicle: np.ndarray, window: np.ndarray) -> np.ndarray:
        """Per (vehicle, window): when the vehicle last resumed after a long gap before
        that window began (-inf: never)."""
        rv, rt, _ = self.resumes
        out = np.full(len(vehicle), -np.inf)
        if not len(rv) or not len(vehicle):
            return out
        # times as exact ranks, so that each (vehicle, time) orders as one integer: the
        # latest resume at or before a window's start is a search, not a loop over resumes
        # (one kept per vehicle that ever resumed)
        times, rank = np.unique(np.r_[rt, window * self.window_s], return_inverse=True)
        key = rv * len(times) + rank[: len(rt)]
        o = np.argsort(key, kind="stable")
        query = np.asarray(vehicle, np.int64) * len(times) + rank[len(rt) :]
        i = np.maximum(np.searchsorted(key[o], query, side="right") - 1, 0)
        hit = rv[o][i] == vehicle
        hit &= key[o][i] <= query
        out[hit] = rt[o][i[hit]]
        return out

    def _let_go_resumes(self) -> None:
        """Drop resumes no window can need: a newer one of the vehicle lies before
        every window still to close."""
        rv, rt, _ = self.resumes
        if len(rv) < 2:
            return
        newest = np.full(len(self.closed_upto), -np.inf)
        np.maximum.at(newest, rv, rt)
        keep = (rt == newest[rv]) | (self.closed_upto[rv] * self.window_s < newest[rv])
        self.resumes = tuple(a[keep] for a in self.resumes)

    def _gapped(self, rows: Rows) -> tuple[np.ndarray, np.ndarray]:
        """Rows in a window a vehicle's telemetry gap touched: a long one's (unscored),
        a short one's (gapped); the gaps whose windows have all closed are let go."""
        if not len(self.gaps) or not len(rows):
            return np.zeros(len(rows), bool), np.zeros(len(rows), bool)
        v, lo, hi, short = self.gaps.T
        w0 = min(int(rows.window.min()), int(lo.min()))
        span = max(int(rows.window.max()), int(hi.max())) - w0 + 1
        key = rows.vehicle * span + (rows.window - w0)

        def touched(kind: np.ndarray) -> np.ndarray:
            return _covered(key, v[kind] * span + (lo[kind] - w0), v[kind] * span + (hi[kind] - w0))

        unscored, gapped = touched(short == 0), touched(short == 1)
        self.gaps = self.gaps[self.closed_upto[v] <= hi]
        return unscored, gapped & ~unscored

    def _classify(self, rows: np.ndarray, can_id: np.ndarray, bl: Baseline) -> None:
        """Mark new streams of unseen ids (own or pooled) and count the own ones."""
        _, learned = id_slots(can_id, bl.ids)
        kind = np.where(learned, LEARNED, np.where(can_id == POOLED_ID, POOLED, NOVEL))
        self.streams.kind[rows] = kind
        self._count_novel(rows[kind == NOVEL], 1)

    def _count_novel(self, rows: np.ndarray, sign: int) -> None:
        if len(rows) == 0:
            return
        veh, n = np.unique(
            (self.streams.keys[rows] >> np.uint64(32)).astype(np.int64), return_counts=True
        )
        old = self.n_novel[veh]
        self.n_novel[veh] = old + sign * n
        g = GUARANTEED_NOVEL_IDS
        self.novel_extra += int((np.maximum(old + sign * n - g, 0) - np.maximum(old - g, 0)).sum())

    def _drop_closed_novel(self, vehicles: np.ndarray, rows: np.ndarray, which: np.ndarray) -> None:
        """Free the streams of unseen ids whose window is closed (``rows``/``which``: all
        rows of ``vehicles``, as ``StreamTable.vehicle_rows`` gives them)."""
        if len(rows) == 0:
            return
        kind = self.streams.kind[rows]
        drop = (kind != LEARNED) & (self.streams.open_window[rows] == NO_WINDOW)
        if drop.any():
            self._count_novel(rows[drop & (kind == NOVEL)], -1)
            self.streams.prune(vehicles, rows, which, drop)

    def _rows(self, emitted: Emitted, uv: np.ndarray, cut: np.ndarray, bl: Baseline) -> Rows:
        """Feature rows of the emitted groups; ``uv`` (sorted) holds their vehicles, ``cut``
        each one's new closing point."""
        if emitted.n == 0:
            return Rows.empty()
        row, window, X, attack, last_ts, count = emitted.take(np.arange(emitted.n))
        keys = self.streams.keys[row]
        o = np.lexsort((window, keys))  # by (vehicle, id, window): the same however batched
        row, window, X, attack, last_ts, count, keys = (
            a[o] for a in (row, window, X, attack, last_ts, count, keys)
        )
        veh = (keys >> np.uint64(32)).astype(np.int64)
        seen = np.zeros(len(uv), bool)
        seen[np.searchsorted(uv, veh)] = True
        self.closed_upto[uv[seen]] = np.maximum(self.closed_upto[uv[seen]], cut[seen])
        ids = (keys & _LOW32).astype(np.uint32)
        notes = X[:, N_FEATURES + 1 : N_FEATURES + 1 + len(NOTES)].astype(np.int64).T
        noted = {n: c if (c >= 0).any() else None for n, c in zip(NOTES, notes, strict=True)}
        present = Rows(veh, window, ids, count, attack, np.ascontiguousarray(X[:, :N_FEATURES]),
                       _signals(X[:, N_FEATURES], ids, count, bl), **noted)  # fmt: skip
        closed_ts = self.streams.closed_ts  # before this push's windows
        new_key = np.r_[True, keys[1:] != keys[:-1]]
        key_rank = np.cumsum(new_key) - 1
        run_keys = keys[new_key]

        def last_seen(qveh: np.ndarray, qid: np.ndarray, qwin: np.ndarray) -> np.ndarray:
            qkey = stream_key(qveh, qid)
            qrow, found = self.streams.find(qkey)
            pos = np.minimum(np.searchsorted(run_keys, qkey), len(run_keys) - 1)
            w0 = int(window.min()) - 1
            span = int(window.max()) - w0 + 2
            gkey = key_rank * span + (window - w0)
            j = np.searchsorted(gkey, pos * span + (qwin - w0)) - 1
            jc = np.maximum(j, 0)
            hit = (run_keys[pos] == qkey) & (j >= 0) & (key_rank[jc] == pos)
            before = np.where(found, closed_ts[qrow] if len(closed_ts) else np.nan, np.nan)
            return np.where(hit, last_ts[jc], before)

        def since_resumed(qveh: np.ndarray, qid: np.ndarray, qwin: np.ndarray) -> np.ndarray:
            last = last_seen(qveh, qid, qwin)  # a frame before the vehicle resumed: none
            return np.where(last < self._resumed(qveh, qwin), np.nan, last)

        absent = absent_rows(present, bl, since_resumed, self.window_s)
        first_in_push = np.r_[True, row[1:] != row[:-1]]
        before = closed_ts[row] if len(closed_ts) else np.full(len(row), np.nan)
        before = np.where(first_in_push, before, np.r_[np.nan, last_ts[:-1]])
        newest_per_row = np.r_[row[1:] != row[:-1], True]
        self.streams.closed_ts[row[newest_per_row]] = last_ts[newest_per_row]
        rows = Rows.concat([present, absent])
        add_bus_features(rows, bl)
        unscored, gapped = self._gapped(rows)
        # the window a learned id began sending in (no frame before it, since the vehicle
        # began or resumed after a long gap): its count covers only the part after it
        began = ~(before >= self._resumed(veh, window)) & bl.slots(ids)[1]
        self._let_go_resumes()
        _mark_partial(rows, gapped | np.r_[began, absent.partial_mask()])
        scored = (rows.window > self.first_window[rows.vehicle]) & ~unscored
        return rows.take(np.flatnonzero(scored))

    def close_vehicles(self, vehicles: np.ndarray, bl: Baseline, upto: int | None = None) -> Rows:
        """Close the open window of each of ``vehicles`` now, as a later frame would:
        for vehicles that went quiet, whose last window would otherwise never close
        (``upto``: as a frame of that window would, the closed windows then reaching it)."""
        vehicles = np.unique(np.asarray(vehicles, dtype=np.int64))
        # ones with no stream yet (never pushed, or numbered past the table's) hold nothing
        vehicles = vehicles[vehicles < min(len(self.closed_upto), len(self.streams.head))]
        rows, which = self.streams.vehicle_rows(vehicles)
        open_w = self.streams.open_window[rows]
        has = open_w != NO_WINDOW
        if not has.any():
            return Rows.empty()
        cut = self.closed_upto[vehicles].copy()
        np.maximum.at(cut, which[has], open_w[has] + 1)
        if upto is not None:
            cut = np.maximum(cut, upto)
        emitted = Emitted(len(rows), N_FEATURES)
        close(rows, cut[which], self.streams, bl, self.window_s, emitted)
        out = self._rows(emitted, vehicles, cut, bl)
        self._drop_closed_novel(vehicles, rows, which)
        if upto is None:
            # the vehicle stopped inside its last window (parked, its uplink gone): its
            # timing and silences are the stop's, as a gap's start would be, while what
            # each frame showed still counts (an attack up to the end is still seen)
            _mark_partial(out, np.ones(len(out), bool))
        return out

    def flush(self) -> int:
        """End of stream: drop the still-open windows (partial, never scored).

        Returns the number of frames dropped.
        """
        st = self.streams
        open_ = np.flatnonzero(st.open_window[: st.n_alloc] != NO_WINDOW)
        n = int(st.acc_i[open_, A_COUNT].sum())
        if len(open_):
            veh = (st.keys[open_] >> np.uint64(32)).astype(np.int64)
            np.maximum.at(self.closed_upto, veh, st.open_window[open_] + 1)
            st.clear_windows(open_)
            novel = open_[st.kind[open_] != LEARNED]
            if len(novel):
                vehicles = np.unique((st.keys[novel] >> np.uint64(32)).astype(np.int64))
                rows, which = st.vehicle_rows(vehicles)
                self._drop_closed_novel(vehicles, rows, which)
        self.newest[:] = -np.inf
        self.cut[:] = _NONE
        return n

    def forget_vehicles(self, vehicles: np.ndarray) -> None:
        """Drop all state of some vehicles (e.g. partitions revoked)."""
        vehicles = np.unique(np.asarray(vehicles, dtype=np.int64))
        valid = vehicles[vehicles < len(self.closed_upto)]
        g = GUARANTEED_NOVEL_IDS
        self.novel_extra -= int(np.maximum(self.n_novel[valid] - g, 0).sum())
        self.n_novel[valid] = 0
        self.streams.drop_vehicles(valid)
        self.closed_upto[valid] = _NONE
        self.first_window[valid] = _NONE
        self.newest[valid] = -np.inf
        self.cut[valid] = _NONE
        self.gaps = self.gaps[~np.isin(self.gaps[:, 0], valid)]
        kept = ~np.isin(self.resumes[0], valid)
        self.resumes = tuple(a[kept] for a in self.resumes)

    def gap_before(self, vehicle: int, after: float, upto: float) -> float | None:
        """When the latest long telemetry gap of ``vehicle`` that ended after ``after``
        and at or before ``upto`` began (None: none is kept)."""
        rv, rt, rs = self.resumes
        hit = (rv == vehicle) & (rt > after) & (rt <= upto)
        return float(rs[hit][np.argmax(rt[hit])]) if hit.any() else None

    def holds(self, vehicles: np.ndarray) -> np.ndarray:
        """Whether each vehicle has a window here (it sent since this state began)."""
        vehicles = np.asarray(vehicles, dtype=np.int64)
        inside = vehicles < len(self.first_window)
        out = np.zeros(len(vehicles), bool)
        out[inside] = self.first_window[vehicles[inside]] > _NONE
        return out

    def established(self, vehicles: np.ndarray) -> np.ndarray:
        """Whether each vehicle has had a window scored (its first, partial one is not);
        a vehicle indexed but not pushed yet (admitted earlier in the same push) has not."""
        out = self.holds(vehicles)
        held = np.asarray(vehicles, dtype=np.int64)[out]
        out[out] = self.closed_upto[held] >= self.first_window[held] + 2
        return out

    @property
    def nbytes(self) -> int:
        per_vehicle = (
            self.closed_upto, self.first_window, self.newest, self.cut, self.n_novel, self.gaps,
            *self.resumes,
        )  # fmt: skip
        return sum(a.nbytes for a in per_vehicle) + self.streams.nbytes


@dataclass
class _Plan:
    """A push between ``WindowState._prepare`` and ``_complete``: the batch as the fold
    takes it (late frames left out), grouped by stream."""

    frames: np.ndarray
    local: np.ndarray
    win: np.ndarray
    uv: np.ndarray
    cut: np.ndarray
    in_batch: np.ndarray
    order: np.ndarray
    seg_start: np.ndarray
    groups: int
    rows: np.ndarray  # each stream's table row
    scan_v: np.ndarray
    scan: np.ndarray
    which: np.ndarray
    emitted: Emitted
    plain: bool  # every id known to the baseline, no frame late: nothing pooled or dropped


@dataclass
class _Split:
    """A batch to push a window at a time: each frame's window, and the telemetry gaps
    found in it (vehicles, starts, ends), noted before any of their windows closes."""

    win: np.ndarray
    gaps: tuple[np.ndarray, np.ndarray, np.ndarray]


def _covered(key: np.ndarray, first: np.ndarray, last: np.ndarray) -> np.ndarray:
    """Whether each ``key`` lies in one of the intervals [first, last] (overlapping
    ones too: the running largest ``last`` of the intervals sorted by ``first``)."""
    if not len(first):
        return np.zeros(len(key), bool)
    o = np.argsort(first, kind="stable")
    first, reach = first[o], np.maximum.accumulate(last[o])
    i = np.searchsorted(first, key, side="right") - 1
    return (i >= 0) & (reach[np.maximum(i, 0)] >= key)


def _true_gaps(
    ts: np.ndarray, local: np.ndarray, uv: np.ndarray, at: np.ndarray, start: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The candidate gaps ``window_pass`` found (frame ``at`` newer than its vehicle's
    newest ``start`` by more than the gap) that no frame of the batch fills: a batch
    out of order makes candidates its later frames fill. (vehicles, starts, ends)."""
    if not len(at):
        empty = np.zeros(0, np.int64)
        return empty, np.zeros(0), np.zeros(0)
    v, end = local[at], ts[at]
    o = np.lexsort((ts, local))
    by_vehicle, by_ts = local[o], ts[o]
    first = np.searchsorted(by_vehicle, v, side="left")
    last = np.searchsorted(by_vehicle, v, side="right")
    # each candidate's vehicle's first frame of the batch after its start
    after = np.array([f + np.searchsorted(by_ts[f:e], s, side="right")
                      for f, e, s in zip(first.tolist(), last.tolist(), start.tolist(), strict=True)])  # fmt: skip
    keep = (after >= last) | (by_ts[np.minimum(after, len(by_ts) - 1)] >= end)
    return uv[v[keep]], start[keep], end[keep]


def _gaps_out_of_order(
    ts: np.ndarray,
    local: np.ndarray,
    uv: np.ndarray,
    late: np.ndarray,
    before: np.ndarray,
    disorder: np.ndarray,
    gap_s: float,
    gaps: tuple[np.ndarray, np.ndarray, np.ndarray],
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``gaps`` with those of the ``disorder`` vehicles (by local index) found again in
    time order: ``window_pass`` sees a gap only where a frame is newer than every one
    before it in the batch, so a later record read first hides the gap before it. Each
    such vehicle's frames after its newest ``before`` the batch, in time order after
    that newest: the steps longer than ``gap_s``."""
    mine = np.flatnonzero(disorder)
    keep = ~np.isin(gaps[0], uv[mine])
    sel = disorder[local] & ~late & (ts > before[local])
    prior = mine[np.isfinite(before[mine])]
    v = np.r_[local[sel], prior]
    t = np.r_[ts[sel], before[prior]]
    o = np.lexsort((t, v))
    v, t = v[o], t[o]
    step = np.flatnonzero((v[1:] == v[:-1]) & (np.diff(t) > gap_s))
    return (
        np.r_[gaps[0][keep], uv[v[step + 1]]],
        np.r_[gaps[1][keep], t[step]],
        np.r_[gaps[2][keep], t[step + 1]],
    )


def _over_allowance(
    vehicle: np.ndarray, can_id: np.ndarray, n_novel: np.ndarray, allowance: int
) -> bool:
    """Whether any vehicle would hold more than ``allowance`` unseen ids' streams: those
    it holds (``n_novel``, by vehicle) and one per distinct (``vehicle``, ``can_id``)."""
    if len(vehicle) == 0:
        return False
    pairs = np.unique(stream_key(vehicle, can_id))
    veh, n = np.unique((pairs >> np.uint64(32)).astype(np.int64), return_counts=True)
    return bool((n_novel[veh] + n > allowance).any())


def push_pair(
    states: tuple[WindowState, WindowState],
    frames: np.ndarray,
    uv: np.ndarray,
    local: np.ndarray,
    baselines: tuple[Baseline, Baseline],
    budget,
) -> tuple[Rows, Rows, float]:
    """``push_batch`` of the same batch into two window states, each against its own
    baseline (a serving model's and its shadow's), and the seconds the second took.
    When both see the batch the same way (every id known to both, no frame late in
    either) the frames are grouped by stream once, for both. ``budget()`` gives the
    unseen-id stream budget at the time each state asks."""
    (a, b), (bl_a, bl_b) = states, baselines
    rows_a, plan = a._push(frames, uv, local, bl_a, budget())
    t0 = time.perf_counter()
    like = plan if a.window_s == b.window_s else None  # else other windows, other groups
    rows_b, _ = b._push(frames, uv, local, bl_b, budget(), like=like)
    return rows_a, rows_b, time.perf_counter() - t0


def _mark_partial(rows: Rows, partial: np.ndarray) -> None:
    """Mark ``partial`` rows (see ``Rows.partial``), keeping those already marked."""
    if not partial.any():
        return
    rows.partial = partial | rows.partial_mask()
    if rows.signal is not None:  # a mean over part of a window is not the window's
        rows.signal[partial] = np.nan


def _signals(mean: np.ndarray, ids: np.ndarray, count: np.ndarray, bl: Baseline) -> np.ndarray | None:
    """Rows' window means of their id's cross-coupled word (the fold's column after the
    features): NaN for ids without one, or with fewer than CROSS_MIN_FRAMES frames."""
    if len(bl.xc_a) == 0:
        return None
    slot, known = bl.slots(ids)
    on = known & (bl.signal_at[slot] >= 0) & (count >= CROSS_MIN_FRAMES)
    return np.where(on, mean, np.nan)
