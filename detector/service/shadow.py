"""A shadow model scores every window of its brands beside the serving model; nothing
it finds is published.

A shadow is a candidate version installed by ``canwatch models deploy --shadow``
(``detector.model.lifecycle``). The scorer gives it a window state of its own
beside the serving one (``Scorer.set_shadow``): the features are relative to
what a model learned (rates to its learned rates, payloads to its ranges), so
a model trained on other traffic needs its own. What is shared is everything
else: the poll, the decoding and checks, the batch of each platform and its
vehicles (admitted, retired and let go once, for both), and the batch's grouping
by stream when both models know all its ids (``detector.features.windowing.push_pair``).
Only platforms with a
shadow pay for it; with no shadow this part costs one ``if``.

Per brand it counts the shadow's windows, anomalous windows and the incidents
it would have opened (``canwatch_model_*{role="shadow"}``), and the share of
windows on which it agreed with the serving model. Per (shadow, serving)
version pair the tally is written into the model directory
(``detector.model.shadow_record``) for ``canwatch models promote`` to judge.
"""

from __future__ import annotations

import logging
import time
from collections import Counter

import numpy as np

from detector.core.brands import Fleet
from detector.core.config import IncidentConfig
from detector.incidents.tracker import IncidentTracker, observations
from detector.model.pipeline import (
    ScoredRows,
    Scorer,
    vehicle_clock,
    window_scores,
    windows_by_brand,
)
from detector.model.platform import PlatformModel
from detector.model.shadow_record import ShadowTally, write_tally
from detector.service.metrics import DetectorMetrics

log = logging.getLogger("canwatch.shadow")


def window_keys(sc: ScoredRows, vehicle: np.ndarray, window: np.ndarray, index: dict) -> np.ndarray:
    """One int64 per (vehicle name, window), comparable across scorers through ``index``
    (vehicle name -> number, shared by the scorers compared)."""
    uv, inv = np.unique(vehicle, return_inverse=True)
    ids = np.array([index.setdefault(sc.names[i], len(index)) for i in uv.tolist()], np.int64)
    return (ids[inv.reshape(-1)] << 32) | (np.asarray(window, np.int64) & 0xFFFF_FFFF)


def agreement(
    serving: list[tuple[np.ndarray, np.ndarray]], shadow: list[tuple[np.ndarray, np.ndarray]]
) -> tuple[int, int, int, int]:
    """(windows both scored, serving anomalous, shadow anomalous, agreeing) over the
    windows found in both; each side a list of (keys, anomalous) arrays."""
    if not serving or not shadow:
        return 0, 0, 0, 0
    ks, a_s = (np.concatenate(x) for x in zip(*serving, strict=True))
    kh, a_h = (np.concatenate(x) for x in zip(*shadow, strict=True))
    _, i_s, i_h = np.intersect1d(ks, kh, assume_unique=False, return_indices=True)
    s, h = a_s[i_s], a_h[i_h]
    return len(i_s), int(s.sum()), int(h.sum()), int((s == h).sum())


class ShadowScoring:
    def __init__(
        self,
        scorer: Scorer,
        fleet: Fleet,
        window_s: float,
        incidents: IncidentConfig,
        detector_id: str,
        metrics: DetectorMetrics,
        model_dir: str,
    ) -> None:
        self.scorer = scorer
        self.fleet = fleet
        self.window_s = window_s
        self.tracker = IncidentTracker(incidents, detector_id)  # would-be incidents only
        self.metrics = metrics
        self.model_dir = model_dir
        self.detector_id = detector_id
        self.serving: dict[str, int] = {}  # platform -> serving version
        self.tallies: dict[str, ShadowTally] = {}  # platform -> tally of its version pair
        self._scoring_seen = 0.0  # the scorer's shadow seconds at the last observe
        self.pending: dict[str, PlatformModel] = {}  # shadows waiting for room

    @property
    def active(self) -> bool:
        return bool(self.scorer.shadows)

    # -- what serves and what shadows ---------------------------------------------

    def serving_loaded(self, model: PlatformModel) -> None:
        """The serving model of a platform changed: its shadow's record, once what it
        counted against the old one is written, starts anew. A shadow promoted (the
        scorer serves on with its state, and gives it a fresh one) starts its would-be
        incidents anew too."""
        self.flush()
        self.serving[model.platform] = model.version
        shadow = self.scorer.shadows.get(model.platform)
        if shadow is not None:
            self._new_tally(shadow)
            if shadow.version == model.version:
                self._forget_would_be(model.platform)

    def install(self, platform: str, model: PlatformModel | None) -> None:
        """A shadow installed (or replaced) for ``platform``, or removed (None). A shadow
        whose streams would not fit under limits.max_streams beside the vehicles held
        waits (no shadow meanwhile) until they do: checked every poll. A shadow that
        new vehicles need the room of steps aside and waits the same way (the scorer
        admits live vehicles first: see ``Scorer.take_suspended``)."""
        self._set_pending(platform, None)
        if model is not None and not self.scorer.shadow_fits(platform, model):
            log.warning(
                "shadow %s v%d waits: its streams beside the %d vehicles held would pass "
                "limits.max_streams (%d)", platform, model.version,
                self.scorer.n_vehicles, self.scorer.limits.max_streams,
            )  # fmt: skip
            self._set_pending(platform, model)
            model = None  # the version shadowing before goes: the lifecycle names another
        self._install(platform, model)

    def _set_pending(self, platform: str, model: PlatformModel | None) -> None:
        """``model`` waits for room as ``platform``'s shadow (None: nothing waits), and
        ``canwatch_model_version{role="waiting"}`` says so."""
        if model is None:
            self.pending.pop(platform, None)
        else:
            self.pending[platform] = model
        for b in self._brands(platform):
            self.metrics.shadow.set_waiting(b, None if model is None else model.version)

    def _brands(self, platform: str) -> list[str]:
        return self.fleet.brands_of(platform) or [platform]

    def _forget_would_be(self, platform: str) -> None:
        """Drop the shadow's would-be incidents of ``platform``'s vehicles (its window
        state starts afresh)."""
        brands = self._brands(platform)
        self.tracker.forget({v for v, i in self.tracker.open.items() if i.brand in brands})

    def _install(self, platform: str, model: PlatformModel | None) -> None:
        self.flush()
        brands = self._brands(platform)
        self.scorer.set_shadow(platform, model)  # another model's windows start afresh
        self._forget_would_be(platform)
        if model is None:
            self.tallies.pop(platform, None)
            for b in brands:
                self.metrics.shadow.set_version(b, "shadow", None)
            return
        self._new_tally(model)
        for b in brands:
            self.metrics.shadow.set_version(b, "shadow", model.version)
            self.metrics.shadow.shadow_children(b)  # the series exist at zero from now on

    def _new_tally(self, shadow: PlatformModel) -> None:
        serving = self.serving.get(shadow.platform, 0)
        self.tallies[shadow.platform] = ShadowTally(
            shadow.platform, shadow.version, serving, self.window_s, since=time.time()
        )

    # -- each poll --------------------------------------------------------------------

    def observe(self, serving: list[ScoredRows], serving_events: list[dict]) -> float:
        """Count what the shadows scored in this poll, beside the serving model's
        ``serving`` rows and the incidents it opened (``serving_events``); the seconds
        the scorer spent on the shadows since the last call."""
        for platform, model in self.scorer.take_suspended().items():
            log.warning(
                "shadow %s v%d waits: new vehicles needed its streams under "
                "limits.max_streams (%d)", platform, model.version, self.scorer.limits.max_streams,
            )  # fmt: skip
            self._install(platform, None)
            self._set_pending(platform, model)
        for platform, model in list(self.pending.items()):
            if self.scorer.shadow_fits(platform, model):
                self._set_pending(platform, None)
                log.info("shadow %s v%d installed: it fits now", platform, model.version)
                self._install(platform, model)
        shadow = self.scorer.take_shadow()  # a shadow removed mid-poll leaves rows too
        scoring = self.scorer.seconds["shadow"] - self._scoring_seen
        self._scoring_seen += scoring
        if not self.scorer.shadows:
            return scoring
        index: dict[str, int] = {}
        sides: dict[str, tuple[list, list]] = {p: ([], []) for p in self.scorer.shadows}
        for side, results in ((1, shadow), (0, serving)):
            for sc in results:
                if sc.platform not in sides:
                    continue
                v, w, s = window_scores(sc)
                sides[sc.platform][side].append((window_keys(sc, v, w, index), s >= 1.0))
                if side == 1:
                    self._count_shadow(sc, v, w, s)
        opened = Counter(
            self.fleet.platform_of(ev["brand"]) for ev in serving_events if ev["status"] == "open"
        )
        for platform, (serv, shad) in sides.items():
            t = self.tallies.get(platform)
            if t is None:
                continue
            n, a_s, a_h, agree = agreement(serv, shad)
            t.windows += n
            t.serving_anomalous += a_s
            t.shadow_anomalous += a_h
            t.agreeing += agree
            t.serving_incidents += opened.get(platform, 0)
            if n:
                for b in self._brands(platform):
                    self.metrics.shadow.set_agreement(b, t.agreeing / t.windows)
        return scoring

    def _count_shadow(self, sc: ScoredRows, v: np.ndarray, w: np.ndarray, s: np.ndarray) -> None:
        if len(w):
            for brand, sel in windows_by_brand(sc, v):
                windows, anomalous, _ = self.metrics.shadow.shadow_children(brand)
                windows.inc(int(sel.sum()))
                anomalous.inc(int((s[sel] >= 1.0).sum()))
        clock = vehicle_clock(sc, v, w, self.window_s)
        for ev in self.tracker.observe(observations(sc, self.window_s), clock):
            if ev["status"] == "open":
                self.metrics.shadow.shadow_children(ev["brand"])[2].inc()
                t = self.tallies.get(sc.platform)
                if t is not None:
                    t.shadow_incidents += 1

    def forget(self, vehicles: set[str]) -> None:
        """Vehicles let go by the service: their would-be incidents go too (the scorer
        lets their shadow windows go with the serving ones)."""
        self.tracker.forget(vehicles)

    def flush(self) -> None:
        """Write each platform's tally where ``canwatch models promote`` reads it."""
        for t in self.tallies.values():
            if t.windows:
                try:
                    write_tally(self.model_dir, t, self.detector_id)
                except OSError as exc:  # a read-only model directory must not stop detection
                    log.warning("cannot write the shadow record of %s: %s", t.platform, exc)
