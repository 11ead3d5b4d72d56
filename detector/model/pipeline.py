"""decode → window features → per-platform model: the path shared by the service,
``canwatch evaluate`` and the demo.

``Scorer.push`` takes decoded per-vehicle batches, routes each vehicle to its
brand's platform, and returns scored feature rows for every window the batch
closed. ``window_scores`` reduces rows to one score per (vehicle, window).

The state a scorer holds is bounded (``limits``; docs/guarantees.md, "Bounded state"): at most
``max_vehicles`` vehicles and ``max_streams`` (vehicle, id) streams over all
platforms. Each vehicle held *reserves* streams for its platform's learned ids,
one pooled row and the ``GUARANTEED_NOVEL_IDS`` first unseen ids of a window;
unseen ids past those take streams only from what no vehicle reserved, else
their frames are pooled (``detector.features.windowing``). A vehicle not held yet is
admitted only if its reservation fits. If it does not, the vehicles that never
had a window scored (a key that sent one record) are retired to make room,
longest idle first, their open window scored before they go; if none is left,
the new vehicle is refused and its frames are dropped. A vehicle with a scored
window is never pushed out by a new one. What is shed is counted in ``shed``
(by brand and reason) for the caller to report.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from detector.core.brands import Fleet
from detector.core.config import LimitsConfig
from detector.core.dbc import resolve_dbc
from detector.core.schema import concat_frames, make_frames
from detector.features.baseline import Baseline
from detector.features.columns import FEATURE_NAMES, N_FEATURES, Rows
from detector.features.streams import grown
from detector.features.windowing import (
    GUARANTEED_NOVEL_IDS,
    NOVEL_ID_LIMIT,
    STREAM_LIMIT,
    WindowState,
    push_pair,
)
from detector.model.platform import (
    FOREST_FEATURES,
    PARTIAL_KEPT,
    PlatformModel,
    compiled,
    max_per_window,
    row_scores,
)
from detector.model.reference import StreamReference

_NONE_CLOSED = np.iinfo(np.int64).min // 8  # closed_upto below this: no window closed yet
#: Why state was shed (metrics label ``reason``): the instance held limits.max_vehicles
#: vehicles, or its streams were all reserved or taken, or a vehicle window reached
#: limits.max_novel_ids unseen ids.
VEHICLE_LIMIT = "vehicle_limit"
SHED_REASONS = (VEHICLE_LIMIT, STREAM_LIMIT, NOVEL_ID_LIMIT)
#: Calibrated evidence from which a row's feature counts as outside what the model
#: learned (``ScoredRows.outside``, what drift counts): 1.0 = as far again beyond the
#: id's envelope as benign drives held out of training went. Any excess at all (> 0)
#: flagged 62-100 % of the windows of benign simulated vehicles the model never saw,
#: on every platform (a periodic id's phase against the window edge, its 'silence',
#: lands a few hundredths past what the training vehicles showed); from 1.0 on,
#: 0-2.4 % (16 new vehicles per platform; docs/service.md, "Drift").
OUTSIDE_MARGIN = 1.0


@dataclass
class Shed:
    """What the limits made a scorer let go (since the caller last took it)."""

    evicted: set[str] = field(default_factory=set)  # retired early to make room (scored first)
    refused: set[str] = field(default_factory=set)  # not admitted: their frames dropped
    frames: Counter = field(default_factory=Counter)  # (brand, reason) -> frames dropped or pooled
    vehicles: Counter = field(default_factory=Counter)  # (brand, reason) -> vehicles evicted


@dataclass
class ScoredRows:
    """Scored rows of one platform; ``vehicle`` indexes ``names``/``brands``."""

    platform: str
    model_version: int
    rows: Rows
    scores: np.ndarray  # (r,) normalised, 1.0 = threshold
    excess: np.ndarray  # (r, N_EVIDENCE) effective calibrated evidence (model.EVIDENCE_NAMES)
    names: list[str]
    brands: list[str]
    baseline_period: np.ndarray  # (r,) learned period of the row's id (nan if unknown)
    # (r,) a feature beyond what the model learned for the row's id, held-out drives'
    # tolerance included and OUTSIDE_MARGIN past it, before the vehicle's own
    # reference (what drift counts)
    outside: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    # what the scoring model learned (the evidence names a counter's or checksum's
    # place from it); None: not known to the maker of these rows
    baseline: Baseline | None = None
    # the platform's DBC file, whose names the evidence gives ids and bytes
    # (detector.core.dbc); None: the platform has none
    dbc: str | None = None
    windows: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None  # window_scores, once


@dataclass
class _Shadow:
    """A shadow model's own window state beside the serving one, on the same vehicles
    (same indices): its features are relative to what it learned."""

    model: PlatformModel
    window: WindowState
    reference: StreamReference


class _PlatformState:
    def __init__(self, window_s: float, n_ids: int, max_novel_ids: int) -> None:
        self.window = WindowState(window_s, max_novel_ids)
        self.reference = StreamReference(n_ids)
        self.shadow: _Shadow | None = None
        self.n_ids = n_ids  # the serving model's learned ids
        self.index: dict[str, int] = {}
        self.names: list[str] = []
        self.brands: list[str] = []
        self.free: list[int] = []  # indices of forgotten vehicles, reused first
        self.last_push = np.zeros(0, np.int64)  # per index: the scorer's push that last had it

    @property
    def reserve(self) -> int:
        """Streams each vehicle reserves: the serving model's, and its shadow's (whose
        window state holds streams of its own on the same vehicles)."""
        return reserve_per_vehicle(self.n_ids) + self.shadow_reserve

    @property
    def shadow_reserve(self) -> int:
        """The shadow's part of ``reserve`` (0 without one)."""
        return reserve_per_vehicle(len(self.shadow.model.baseline.ids)) if self.shadow else 0

    def parts(self) -> tuple:
        """The serving window state and vehicle reference, and the shadow's if any."""
        return (self, self.shadow) if self.shadow is not None else (self,)

    def vehicle_index(self, vehicle: str, brand: str) -> int:
        i = self.index.get(vehicle)
        if i is None:
            if self.free:
                i = self.free.pop()
                self.names[i], self.brands[i] = vehicle, brand
            else:
                i = len(self.names)
                self.names.append(vehicle)
                self.brands.append(brand)
                if i >= len(self.last_push):  # grown geometrically
                    self.last_push = grown(self.last_push, max(2 * len(self.last_push), 64), 0)
            self.index[vehicle] = i
        return i

    def forget(self, vehicles: set[str]) -> None:
        idx = [self.index.pop(v) for v in vehicles if v in self.index]
        if idx:
            for part in self.parts():
                part.window.forget_vehicles(np.array(idx))
                part.reference.forget(np.array(idx))
            self.free.extend(idx)


#: A vehicle whose frames have all been late (older than windows it already closed) for
#: this long of their own event time had its clock set back (an RTC reset, a GNSS time
#: fix), not a late upload: its windows start afresh at the new time. Before, it was
#: blind (every frame dropped) until its clock caught up, hours later, its incident open.
CLOCK_RESET_S = 30.0
#: ... and over this many pushes (polls): a clock set back makes late records poll after
#: poll, where a store-and-forward backlog sent after live data comes in a burst of one
#: or two (it is dropped as late, and the vehicle's windows and incident go on).
CLOCK_RESET_PUSHES = 10


def reserve_per_vehicle(n_ids: int) -> int:
    """Streams a vehicle of a platform with ``n_ids`` learned ids may always hold: one
    per learned id, the pooled row, and the first unseen ids of a window."""
    return n_ids + 1 + GUARANTEED_NOVEL_IDS


class Scorer:
    """Streaming scorer over any number of platforms; one instance per consumer."""

    def __init__(
        self,
        models: dict[str, PlatformModel],
        fleet: Fleet,
        window_s: float,
        limits: LimitsConfig | None = None,
    ) -> None:
        self.models = dict(models)
        self.fleet = fleet
        self.window_s = window_s
        self.limits = limits or LimitsConfig()
        self.state: dict[str, _PlatformState] = {}
        self.seconds = {"features": 0.0, "score": 0.0, "shadow": 0.0}  # per stage, cumulative
        self.shadows: dict[str, PlatformModel] = {}  # platform -> its shadow model
        self.shadow_out: list[ScoredRows] = []  # the shadows' rows, until taken
        self.suspended: dict[str, PlatformModel] = {}  # shadows set aside for room, until taken
        self.late_by_brand: Counter[str] = Counter()  # frames dropped as late, cumulative
        self.gaps_by_brand: Counter[str] = Counter()  # telemetry gaps (windows not scored)
        self.clock_resets_by_brand: Counter[str] = Counter()  # vehicles restarted (see below)
        # vehicle -> (first ts of its run of late records, pushes the run spans)
        self._late_runs: dict[str, tuple[float, int]] = {}
        self.shed = Shed()  # cumulative until ``take_shed``
        self._pushes = 0
        self._futile = False  # the last search for vehicles to retire found none to find
        self._dbc: dict[str, str | None] = {}  # platform -> its DBC file, once looked up

    def platform_for(self, brand: str) -> str | None:
        platform = self.fleet.platform_of(brand)
        return platform if platform in self.models else None

    def set_model(self, model: PlatformModel) -> None:
        """Swap a platform's model.

        The references of the vehicles held are in the old model's units. A promoted
        shadow (the same version) has its own, learned beside them on the same vehicles:
        its window state and references serve from now on. Any other model restarts each
        vehicle's warm-up, so that its next windows teach the new reference; with an
        empty one and no warm-up, every vehicle's own state (a setting, a byte out of the
        new model's range from its first window on) would be evidence again: a burst of
        false incidents across the fleet after each swap."""
        self.models[model.platform] = model
        st = self.state.get(model.platform)
        if st is None:
            return
        shadow = st.shadow
        held = np.fromiter(st.index.values(), np.int64, len(st.index))
        if (
            shadow is not None
            and shadow.model.version == model.version
            and shadow.window.holds(held).all()  # a shadow installed under a minute ago
        ):  # may not have seen a vehicle that is quiet now, whose open window it lacks
            st.window, st.reference = shadow.window, shadow.reference
            # it shadows on afresh if the lifecycle keeps it (a rollback to its version)
            st.shadow = self._new_shadow(shadow.model)
        else:
            st.reference = StreamReference(len(model.baseline.ids))
            st.reference.rewarm(held)
        st.n_ids = len(model.baseline.ids)

    def set_shadow(self, platform: str, model: PlatformModel | None) -> None:
        """Score ``platform``'s windows with ``model`` too (None: no more), in a window
        state of its own on the same vehicles; its rows go to ``take_shadow``."""
        if model is None:
            self.shadows.pop(platform, None)
        else:
            self.shadows[platform] = model
        st = self.state.get(platform)
        if st is not None:
            st.shadow = self._new_shadow(model)

    def _suspend_shadow(self, platform: str, st: _PlatformState) -> None:
        model = self.shadows.pop(platform)
        st.shadow = None
        self.suspended[platform] = model

    def take_suspended(self) -> dict[str, PlatformModel]:
        """Shadows set aside since the last call to make room for live vehicles."""
        out, self.suspended = self.suspended, {}
        return out

    def shadow_fits(self, platform: str, model: PlatformModel) -> bool:
        """Whether the vehicles held leave room under limits.max_streams for ``model``'s
        reservation as ``platform``'s shadow (each of its vehicles would reserve the
        shadow's learned ids too; see ``_PlatformState.reserve``)."""
        st = self.state.get(platform)
        if st is None or not st.index:
            return True
        more = len(st.index) * (reserve_per_vehicle(len(model.baseline.ids)) - st.shadow_reserve)
        return more <= self.free_streams

    def _new_shadow(self, model: PlatformModel | None) -> _Shadow | None:
        if model is None:
            return None
        window = WindowState(self.window_s, self.limits.max_novel_ids)
        return _Shadow(model, window, StreamReference(len(model.baseline.ids)))

    def take_shadow(self) -> list[ScoredRows]:
        """The shadows' scored rows since the last call (the same windows as the
        serving rows, scored by each shadowed platform's shadow model)."""
        out, self.shadow_out = self.shadow_out, []
        return out

    def push(self, batches: list[tuple[str, str, np.ndarray]]) -> list[ScoredRows]:
        """Score ``(vehicle, brand, frames)`` batches; brands without a model raise KeyError.

        Vehicles the limits do not admit are left out (see ``shed``); the scored
        rows of vehicles retired to make room come first in the result."""
        self._pushes += 1
        by_platform: dict[str, list[tuple[str, str, np.ndarray]]] = {}
        platforms: dict[str, str | None] = {}
        for item in batches:
            brand = item[1]
            platform = platforms.get(brand) or platforms.setdefault(brand, self.platform_for(brand))
            if platform is None:
                raise KeyError(f"no model for brand {brand!r}")
            by_platform.setdefault(platform, []).append(item)
        out: list[ScoredRows] = []
        admitted = {}
        for platform, items in by_platform.items():
            st = self._state(platform)
            self._restart_set_back_clocks(st, items)
            for vehicle, _, _ in items:  # the vehicles of this push are not retired for room
                i = st.index.get(vehicle)
                if i is not None:
                    st.last_push[i] = self._pushes
        for platform, items in by_platform.items():
            admitted[platform] = self._admit(platform, items, out)
        for platform, items in admitted.items():
            if items:
                out.append(self._score(platform, items))
        return out

    def _admit(
        self, platform: str, items: list[tuple[str, str, np.ndarray]], out: list[ScoredRows]
    ) -> list[tuple[int, np.ndarray]]:
        """Each item's vehicle index, admitting new vehicles as the limits allow; the
        items of vehicles refused are counted in ``shed`` and left out."""
        st = self.state[platform]
        new = list(dict.fromkeys(v for v, _, _ in items if v not in st.index))
        refused: set[str] = set()
        if new:
            room, reason = self._room(st)
            if room < len(new) and st.shadow is not None:
                # live vehicles before a shadow, whose output is never published: it
                # steps aside (ShadowService puts it back once it fits again)
                self._suspend_shadow(platform, st)
                room, reason = self._room(st)
            if room < len(new):
                self._make_room(len(new) - room, reason, out)
                room, reason = self._room(st)
            refused = set(new[max(room, 0) :])
        taken = []
        for vehicle, brand, frames in items:
            if vehicle in refused:
                self.shed.refused.add(vehicle)
                self.shed.frames[brand, reason] += len(frames)
                continue
            i = st.vehicle_index(vehicle, brand)
            st.last_push[i] = self._pushes
            taken.append((i, frames))
        if len(new) > len(refused):
            self._futile = False  # vehicles that may yet be retired for room
        return taken

    def _room(self, st: _PlatformState) -> tuple[int, str]:
        """New vehicles of ``st``'s platform that fit, and the limit that binds."""
        by_vehicles = self.limits.max_vehicles - self.n_vehicles
        by_streams = self.free_streams // st.reserve
        if by_vehicles <= by_streams:
            return by_vehicles, VEHICLE_LIMIT
        return by_streams, STREAM_LIMIT

    def _make_room(self, need: int, reason: str, out: list[ScoredRows]) -> None:
        """Retire up to ``max(need, max_vehicles / 8)`` vehicles (the margin keeps the
        search amortised) that never had a window scored and are not in this push,
        longest idle first: their open window is scored (into ``out``), then dropped."""
        if self._futile:
            return
        found = []
        for platform, st in self.state.items():
            idx = np.fromiter(st.index.values(), np.int64, len(st.index))
            idx = idx[~st.window.established(idx)]
            idle = idx[st.last_push[idx] < self._pushes]
            found += [(st.last_push[i], platform, i) for i in idle.tolist()]
        if not found:
            self._futile = True  # none appears before a vehicle is admitted again
            return
        found.sort()
        for platform, group in _by_platform(found[: max(need, self.limits.max_vehicles // 8)]):
            st = self.state[platform]
            idx = np.array(group)
            names = {st.names[i]: st.brands[i] for i in group}
            model = self.models.get(platform)
            if model is not None:
                rows = st.window.close_vehicles(idx, model.baseline)
                if len(rows):  # named as they are now: the indices are reused next
                    out.append(self._scored(platform, rows, copy_names=True))
                self._close_shadow(platform, idx, copy_names=True)
            st.forget(set(names))
            for name, brand in names.items():
                self.shed.evicted.add(name)
                self.shed.vehicles[brand, reason] += 1

    def take_shed(self) -> Shed:
        """What was shed since the last call."""
        shed, self.shed = self.shed, Shed()
        return shed

    @property
    def n_vehicles(self) -> int:
        return sum(len(st.index) for st in self.state.values())

    @property
    def n_streams(self) -> int:
        """Streams held, the shadows' included."""
        return sum(len(p.window.streams) for st in self.state.values() for p in st.parts())

    @property
    def peak_streams(self) -> int:
        """The most streams each table has held at once (mid-push included), summed."""
        return sum(p.window.streams.high_water for st in self.state.values() for p in st.parts())

    @property
    def reserved_streams(self) -> int:
        """Streams reserved by the vehicles held, plus unseen ids' streams beyond them
        (the shadows' included)."""
        return sum(
            len(st.index) * st.reserve + sum(p.window.novel_extra for p in st.parts())
            for st in self.state.values()
        )

    @property
    def free_streams(self) -> int:
        """Streams under limits.max_streams that nothing reserves (negative: over it)."""
        return self.limits.max_streams - self.reserved_streams

    def flush(self) -> int:
        """End of stream: drop open (partial) windows; returns frames dropped."""
        return sum(st.window.flush() for st in self.state.values())

    def retire(self, vehicles: set[str]) -> list[ScoredRows]:
        """Score the open windows of vehicles that went quiet (closing them now)."""
        out = []
        for platform, st in self.state.items():
            idx = [st.index[v] for v in vehicles if v in st.index]
            if idx and platform in self.models:
                model = self.models[platform]
                rows = st.window.close_vehicles(np.array(idx), model.baseline)
                if len(rows):
                    out.append(self._scored(platform, rows))
                self._close_shadow(platform, np.array(idx))
        return out

    def _close_shadow(self, platform: str, idx: np.ndarray, copy_names: bool = False) -> None:
        sh = self.state[platform].shadow
        if sh is not None:
            rows = sh.window.close_vehicles(idx, sh.model.baseline)
            if len(rows):
                self.shadow_out.append(self._scored(platform, rows, copy_names, sh))

    def forget(self, vehicles: set[str]) -> None:
        """Drop the state of vehicles (partition revoked, or retired); if one comes
        back it starts afresh, under a new index."""
        for st in self.state.values():
            st.forget(vehicles)
        for v in vehicles:
            self._late_runs.pop(v, None)

    def _restart_set_back_clocks(
        self, st: _PlatformState, items: list[tuple[str, str, np.ndarray]]
    ) -> None:
        """Forget the vehicles whose records have all been late for ``CLOCK_RESET_S`` of
        their own time and ``CLOCK_RESET_PUSHES`` pushes, no record in time among them
        (their clock went back): this push's frames start their windows afresh. One
        record per item: its frames are in time order (sorted on decode)."""
        n = len(items)
        idx = np.fromiter((st.index.get(v, -1) for v, _, _ in items), np.int64, n)
        ts = [f["ts"] for _, _, f in items]
        newest = np.fromiter((t[-1] if len(t) else np.nan for t in ts), np.float64, n)
        late = idx >= 0
        late[late] = np.floor(newest[late] / self.window_s) < st.window.closed_upto[idx[late]]
        if not late.any() and not self._late_runs:
            return
        restart: dict[str, str] = {}  # vehicle -> brand
        counted: set[str] = set()  # vehicles whose run this push already lengthened
        for k in range(n):  # in record order: a record in time after late ones ends the run
            vehicle, brand, _ = items[k]
            if not late[k]:
                self._late_runs.pop(vehicle, None)
                restart.pop(vehicle, None)
                counted.discard(vehicle)
                continue
            since, pushes = self._late_runs.get(vehicle, (float(ts[k][0]), 0))
            if vehicle not in counted:
                pushes += 1
                counted.add(vehicle)
            self._late_runs[vehicle] = (since, pushes)
            if newest[k] - since >= CLOCK_RESET_S and pushes >= CLOCK_RESET_PUSHES:
                restart[vehicle] = brand
        if restart:
            st.forget(set(restart))
            for vehicle, brand in restart.items():
                self._late_runs.pop(vehicle)
                self.clock_resets_by_brand[brand] += 1

    def _held(self, vehicle: str, brand: str) -> tuple[_PlatformState, int] | None:
        """The platform state holding ``vehicle`` and its index there (None: none does)."""
        platform = self.platform_for(brand)
        st = self.state.get(platform) if platform else None
        i = st.index.get(vehicle) if st else None
        return None if i is None else (st, i)

    def closed_until(self, vehicle: str, brand: str) -> float:
        """Event time before which the vehicle's windows are closed (-inf: none yet)."""
        held = self._held(vehicle, brand)
        if held is None or held[1] >= len(held[0].window.closed_upto):
            return float("inf")  # no state kept for it: nothing to re-form
        upto = int(held[0].window.closed_upto[held[1]])
        return upto * self.window_s if upto > _NONE_CLOSED else float("-inf")

    def gap_before(self, vehicle: str, brand: str, after: float, upto: float) -> float | None:
        """When the vehicle's latest long telemetry gap that ended after ``after`` and at
        or before ``upto`` began (None: none, or no state kept for it)."""
        held = self._held(vehicle, brand)
        return None if held is None else held[0].window.gap_before(held[1], after, upto)

    @property
    def late_frames(self) -> int:
        return sum(st.window.late_frames for st in self.state.values())

    def _state(self, platform: str) -> _PlatformState:
        st = self.state.get(platform)
        if st is None:
            n_ids = len(self.models[platform].baseline.ids)
            st = self.state[platform] = _PlatformState(
                self.window_s, n_ids, self.limits.max_novel_ids
            )
            st.shadow = self._new_shadow(self.shadows.get(platform))
        return st

    def _score(self, platform: str, items: list[tuple[int, np.ndarray]]) -> ScoredRows:
        model = self.models[platform]
        st = self.state[platform]
        t0 = time.perf_counter()
        frames = concat_frames([f for _, f in items])
        uv, inv = np.unique([i for i, _ in items], return_inverse=True)
        local = np.repeat(inv.reshape(-1), [len(f) for _, f in items])
        if st.shadow is None:
            budget = self.free_streams
            rows = st.window.push_batch(frames, uv, local, model.baseline, extra_budget=budget)
            shadow_s = 0.0
        else:  # the same frames into its own state, grouped once for both
            rows, shadow_rows, shadow_s = push_pair(
                (st.window, st.shadow.window), frames, uv, local,
                (model.baseline, st.shadow.model.baseline),
                lambda: self.free_streams,
            )  # fmt: skip
        t1 = time.perf_counter()
        for v, n in zip(*np.unique(st.window.last_late, return_counts=True), strict=True):
            self.late_by_brand[st.brands[int(v)]] += int(n)
        for v in st.window.last_gaps.tolist():
            self.gaps_by_brand[st.brands[int(v)]] += 1
        for reason, vehicle in st.window.last_pooled.items():
            for v, n in zip(*np.unique(vehicle, return_counts=True), strict=True):
                self.shed.frames[st.brands[int(v)], reason] += int(n)
        self.seconds["features"] += t1 - t0 - shadow_s
        scored = self._scored(platform, rows)
        if st.shadow is not None:
            t2 = time.perf_counter()
            self.shadow_out.append(self._scored(platform, shadow_rows, shadow=st.shadow))
            self.seconds["shadow"] += shadow_s + time.perf_counter() - t2
        return scored

    def _scored(
        self, platform: str, rows: Rows, copy_names: bool = False, shadow: _Shadow | None = None
    ) -> ScoredRows:
        st = self.state[platform]
        model, part = (self.models[platform], st) if shadow is None else (shadow.model, shadow)
        t1 = time.perf_counter()
        scores, excess, outside = score_rows(model, rows, part.window.first_window, part.reference)
        if shadow is None:  # the shadow's CPU is counted as a whole, in _score
            self.seconds["score"] += time.perf_counter() - t1
        slot, known = model.baseline.slots(rows.can_id)
        period = np.where(known, model.baseline.period[slot], np.nan) if len(rows) else np.zeros(0)
        names, brands = (list(st.names), list(st.brands)) if copy_names else (st.names, st.brands)
        if platform not in self._dbc:
            path = resolve_dbc(self.fleet.platform_dbc.get(platform, ""))
            self._dbc[platform] = None if path is None else str(path)
        return ScoredRows(
            platform, model.version, rows, scores, excess, names, brands, period, outside,
            model.baseline, self._dbc[platform],
        )


def _by_platform(found: list[tuple[int, str, int]]) -> list[tuple[str, list[int]]]:
    groups: dict[str, list[int]] = {}
    for _, platform, i in found:
        groups.setdefault(platform, []).append(i)
    return list(groups.items())


def referenced_evidence(
    model: PlatformModel, rows: Rows, first_window: np.ndarray, reference: StreamReference
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Calibrated evidence of rows of vehicles whose first windows are ``first_window``
    (by row vehicle), what remains of it against their ``reference`` (effective), each
    row's threshold factor, and whether it lay outside what the model learned
    (``ScoredRows.outside``). The rows' ``cross_out`` is filled first
    (``StreamReference.cross``); a partial row's evidence is judged without what its
    part of a window cannot say (``PARTIAL_BLIND``), but it still counts as outside:
    a fleet whose vehicles lack an expected id, or whose uplinks hiccup, is not the
    traffic the model learned."""
    reference.cross(rows, model.baseline)
    calibrated = model.calibrated(rows.X, rows.can_id)
    outside = (calibrated[:, :N_FEATURES] >= OUTSIDE_MARGIN).any(axis=1)
    if rows.partial is not None:
        calibrated[rows.partial] *= PARTIAL_KEPT
    slot, known = model.baseline.slots(rows.can_id)
    age = reference.ages(rows.vehicle, rows.window, first_window)
    effective, factor = reference.apply(rows.vehicle, slot, known, age, calibrated, model.threshold)
    return calibrated, effective, factor, outside


def score_rows(
    model: PlatformModel, rows: Rows, first_window: np.ndarray, reference: StreamReference
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Scores (1.0 = alert), effective calibrated evidence of rows (see
    ``referenced_evidence``), and whether each row has a feature outside what the model
    learned (``ScoredRows.outside``)."""
    _, effective, factor, outside = referenced_evidence(model, rows, first_window, reference)
    return row_scores(effective, model.threshold) / factor, effective, outside


def warm_up(model: PlatformModel, window_s: float) -> None:
    """Run the scoring path once on a few synthetic frames, and discard the result.

    Each compiled kernel loads from numba's on-disk cache on its first call
    (~0.2 s of CPU in all; seconds when it has to compile). A detector calls
    this as a model loads, so that cost is paid before it reports ready, not
    by the first poll it scores. The frames take every path of the window
    kernels: known and unseen ids, in time order and (a second batch) not.
    """
    ids = model.baseline.ids
    unseen = np.setdiff1d(np.arange(0x800, dtype=np.uint32), ids)[:1]  # the unseen-id path
    can_id = np.r_[ids, unseen].astype(np.uint32)
    # windows 0, 0, 1, 2 for every id: folds, then closes by the next window and by the cut
    ts = np.repeat(np.array([0.1, 0.6, 1.1, 2.1]) * window_s, len(can_id))
    frames = make_frames(ts, np.tile(can_id, 4), np.zeros((len(ts), 8), np.uint8))
    state = WindowState(window_s)
    rows = state.push(frames, np.zeros(len(ts), np.int64), model.baseline)
    score_rows(model, rows, state.first_window, StreamReference(len(ids)))
    swapped = make_frames(np.array([3.6, 3.2]) * window_s, can_id[:1].repeat(2), np.zeros((2, 8)))
    state.push(swapped, np.zeros(2, np.int64), model.baseline)  # out of time order: the sort path
    with_nan = np.zeros((1, FOREST_FEATURES))
    with_nan[0, 0] = np.nan  # the NaN-aware walk is a kernel of its own
    compiled(model.forest).raw_scores(with_nan)


def window_scores(scored: ScoredRows) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(vehicle, window, max score) per window, for metrics and reports; worked out once
    per scored rows (the incident feed, the audit log and a shadow all ask)."""
    if scored.windows is None:
        scored.windows = max_per_window(scored.rows.vehicle, scored.rows.window, scored.scores)
    return scored.windows


def windows_by_brand(scored: ScoredRows, vehicle: np.ndarray) -> Iterator[tuple[str, np.ndarray]]:
    """Each brand of windows whose vehicles are ``vehicle`` (indices into
    ``scored.brands``, as ``window_scores`` gives them), with the mask of its windows."""
    brands = np.asarray(scored.brands, dtype=object)[vehicle]
    for brand in np.unique(brands).tolist():
        yield str(brand), brands == brand


def vehicle_clock(
    scored: ScoredRows, vehicle: np.ndarray, window: np.ndarray, window_s: float
) -> dict[str, float]:
    """End of each vehicle's newest scored window (the incident tracker's clock)."""
    if len(window) == 0:
        return {}
    newest = np.full(len(scored.names), np.iinfo(np.int64).min)
    np.maximum.at(newest, vehicle, window)
    return {scored.names[i]: float((newest[i] + 1) * window_s) for i in np.unique(vehicle).tolist()}


__all__ = [
    "FEATURE_NAMES",
    "SHED_REASONS",
    "Scorer",
    "ScoredRows",
    "Shed",
    "score_rows",
    "vehicle_clock",
    "warm_up",
    "window_scores",
    "windows_by_brand",
]
