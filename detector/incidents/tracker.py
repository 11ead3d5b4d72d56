"""Group anomalous windows into incidents per vehicle: open → update… → closed.

An attack lasting a minute is one incident, updated, not sixty alerts. An
incident closes when its vehicle has produced ``quiet_windows`` windows of
event time without an anomalous one. ``incident_id`` is a hash of the vehicle
and the start of its first anomalous window, so reprocessing the same records
after a crash re-emits the same ids.

An incident's evidence is its peak window's. A second attack that starts while
an incident is open (another id forged after a flood, a vehicle already in an
incident from a mode the model never saw) joins it rather than opening one of its
own; so each other suspected attack of its windows adds its strongest window's
first line, right after the peak's, and announces itself with an update. The
analyst sees every attack in the incident, not only the loudest, and ``attacks``
says how many windows each one was the suspicion of, ``attack_ids`` the top CAN
id of its strongest window (a campaign is keyed by attack and id).

An event also lists the start and score of each anomalous window
(``window_scores``) and carries ``provenance`` (where its frames are), filled
in by whoever knows: the service (topic, partition, offsets) or ``evaluate``
(file, frame indices). docs/forensics.md describes both.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np

from detector.core.config import IncidentConfig
from detector.core.fd import describe_id
from detector.features.columns import POOLED_ID
from detector.incidents.evidence import IMPLICATED, classify_window, evidence
from detector.model.pipeline import ScoredRows
from detector.model.platform import EVIDENCE_NAMES

SEVERITIES = ("low", "medium", "high", "critical")
#: An incident lists the score of each of its first this many anomalous windows
#: (``window_scores``; ``windows`` counts them all): an hour-long flood stays a small record.
MAX_WINDOW_SCORES = 300
#: An open incident is sent again at least this often (event time), even unchanged:
#: campaigns, and SIEMs that expire what they have not heard of for a while, know it
#: goes on (between powers of two of its windows, a long attack was silent for an hour).
HEARTBEAT_S = 60.0
#: Evidence columns of a row's own id (not the vehicle's bus, repeated on each row).
OWN_EVIDENCE = np.array([i for i, n in enumerate(EVIDENCE_NAMES) if not n.startswith("bus_")])


def severity_of(peak: float) -> str:
    """Severity from the peak normalised score (1.0 = threshold)."""
    if peak >= 10:
        return "critical"
    if peak >= 5:
        return "high"
    if peak >= 2:
        return "medium"
    return "low"


def incident_id(vehicle: str, first_window_start: float) -> str:
    return hashlib.sha256(f"{vehicle}|{first_window_start:.3f}".encode()).hexdigest()[:20]


@dataclass
class Observation:
    """One anomalous (vehicle, window) with what it implicates."""

    vehicle: str
    brand: str
    window_start: float
    window_s: float
    score: float
    kind: str
    can_ids: dict[str, float]
    evidence: list[dict]
    model_version: int


def observations(
    sc: ScoredRows, window_s: float, max_ids: int = 10, max_evidence: int = 5
) -> list[Observation]:
    """Anomalous windows of ``sc`` (score >= 1.0), in event-time order."""
    rows = sc.rows
    if not (sc.scores >= IMPLICATED).any():
        return []
    # one sort groups rows by (window, vehicle), best score first in each group; among
    # equal scores (bus-level evidence is the same on every row of a window: a fuzzer's
    # window) the rows with evidence of their own first, so the ids named are those
    cols = OWN_EVIDENCE[OWN_EVIDENCE < sc.excess.shape[1]]
    own = sc.excess[:, cols].max(axis=1) if len(rows) else np.zeros(0)
    order = np.lexsort((-own, -sc.scores, rows.vehicle, rows.window))
    gv, gw = rows.vehicle[order], rows.window[order]
    starts = np.flatnonzero(np.r_[True, (gv[1:] != gv[:-1]) | (gw[1:] != gw[:-1])])
    ends = np.r_[starts[1:], len(order)]
    hot = sc.scores[order[starts]] >= IMPLICATED
    out = []
    for s, e in zip(starts[hot].tolist(), ends[hot].tolist(), strict=True):
        idx = order[s:e]
        v, w = rows.vehicle[idx[0]], rows.window[idx[0]]
        ids = {}
        for i in idx[: max_ids + 1]:  # the pooled row of further unseen ids is no id
            if rows.can_id[i] != POOLED_ID and len(ids) < max_ids:
                if sc.scores[i] >= IMPLICATED or not ids:
                    ids[describe_id(int(rows.can_id[i]))] = round(float(sc.scores[i]), 3)
        out.append(
            Observation(
                vehicle=sc.names[int(v)],
                brand=sc.brands[int(v)],
                window_start=float(w) * window_s,
                window_s=window_s,
                score=float(sc.scores[idx[0]]),
                kind=classify_window(sc, idx),
                can_ids=ids,
                evidence=evidence(sc, idx[:max_ids], window_s, max_evidence),
                model_version=sc.model_version,
            )
        )
    return out


@dataclass
class _Incident:
    id: str
    vehicle: str
    brand: str
    first_seen: float
    last_seen: float  # end of the last anomalous window
    windows: int = 0
    peak: float = 0.0
    kinds: Counter = field(default_factory=Counter)  # suspected attack -> summed score
    windows_of: Counter = field(default_factory=Counter)  # suspected attack -> windows
    can_ids: dict[str, float] = field(default_factory=dict)
    peak_kind: str = "unknown"
    peak_evidence: list[dict] = field(default_factory=list)
    # each suspected attack's strongest window: (its score, its first evidence line)
    strongest: dict[str, tuple[float, dict]] = field(default_factory=dict)
    # each suspected attack's strongest window: (its score, its top CAN id)
    top_of: dict[str, tuple[float, str]] = field(default_factory=dict)
    model_version: int = 0
    window_s: float = 1.0
    emitted: tuple = ()
    emitted_at: float = -np.inf  # last_seen when it was last sent
    window_scores: list[list[float]] = field(default_factory=list)  # [start, score]


class IncidentTracker:
    """Per-vehicle incident state of one detector (per partition set)."""

    def __init__(self, cfg: IncidentConfig, detector: str) -> None:
        self.cfg = cfg
        self.detector = detector
        self.open: dict[str, _Incident] = {}
        # vehicle -> (first_seen, last_seen) of its last incident closed by quiet windows:
        # a restart that re-reads its windows re-forms it (``VehicleState.horizon``)
        self.closed: dict[str, tuple[float, float]] = {}

    def observe(self, obs: list[Observation], clock: dict[str, float]) -> list[dict]:
        """Fold in anomalous windows, then close incidents that went quiet.

        ``clock`` maps vehicles to the end of their newest scored window.
        """
        events: list[dict] = []
        for o in sorted(obs, key=lambda o: o.window_start):
            inc = self.open.get(o.vehicle)
            if inc and self._over(inc, o.window_start, o.window_start):
                events.append(self._quiet(o.vehicle))
                inc = None
            if inc is None:
                inc = self.open[o.vehicle] = _Incident(
                    incident_id(o.vehicle, o.window_start),
                    o.vehicle,
                    o.brand,
                    o.window_start,
                    o.window_start + o.window_s,
                )
            self._fold(inc, o)
            status = "open" if not inc.emitted else "update"
            state = (
                severity_of(inc.peak), self._kind(inc), tuple(sorted(inc.can_ids)),
                tuple(sorted(inc.windows_of)),
            )  # fmt: skip
            due = inc.last_seen - inc.emitted_at >= HEARTBEAT_S
            if status == "open" or state != inc.emitted or _power_of_two(inc.windows) or due:
                inc.emitted, inc.emitted_at = state, inc.last_seen
                events.append(self._event(inc, status))
        for vehicle, now in clock.items():
            inc = self.open.get(vehicle)
            if inc and self._over(inc, now, now - inc.window_s):
                events.append(self._quiet(vehicle))
        return events

    def _over(self, inc: _Incident, later: float, start: float) -> bool:
        """Whether ``inc`` is over at a window of its vehicle starting at ``start`` (ending
        by ``later``): quiet windows after it, or the vehicle's clock set back before it
        began (its windows start afresh at the new time: see pipeline.CLOCK_RESET_S)."""
        quiet = self.cfg.quiet_windows * inc.window_s
        return later - inc.last_seen >= quiet or inc.first_seen - start >= quiet

    def _quiet(self, vehicle: str) -> dict:
        """Close ``vehicle``'s incident after its quiet windows (the closed event)."""
        inc = self.open.pop(vehicle)
        self.closed[vehicle] = (inc.first_seen, inc.last_seen)
        return self._event(inc, "closed")

    def close_all(self) -> list[dict]:
        return self.close(set(self.open))

    def close(self, vehicles: set[str]) -> list[dict]:
        """Close the open incidents of ``vehicles`` (they went quiet for good)."""
        return [self._event(self.open.pop(v), "closed") for v in sorted(vehicles & set(self.open))]

    def forget(self, vehicles: set[str]) -> None:
        for v in vehicles:
            self.open.pop(v, None)
            self.closed.pop(v, None)

    def _fold(self, inc: _Incident, o: Observation) -> None:
        inc.windows += 1
        inc.last_seen = max(inc.last_seen, o.window_start + o.window_s)
        inc.window_s = o.window_s
        inc.kinds[o.kind] += o.score
        inc.windows_of[o.kind] += 1
        if o.evidence and o.score >= inc.strongest.get(o.kind, (0.0,))[0]:
            inc.strongest[o.kind] = (o.score, o.evidence[0])
        if o.can_ids and o.score >= inc.top_of.get(o.kind, (0.0,))[0]:
            inc.top_of[o.kind] = (o.score, next(iter(o.can_ids)))
        inc.model_version = o.model_version
        if len(inc.window_scores) < MAX_WINDOW_SCORES:
            inc.window_scores.append([round(o.window_start, 3), round(o.score, 3)])
        for cid, s in o.can_ids.items():
            inc.can_ids[cid] = max(inc.can_ids.get(cid, 0.0), s)
        if len(inc.can_ids) > self.cfg.max_can_ids:
            top = sorted(inc.can_ids.items(), key=lambda kv: -kv[1])[: self.cfg.max_can_ids]
            inc.can_ids = dict(top)
        if o.score >= inc.peak:
            inc.peak = o.score
            inc.peak_kind = o.kind
            inc.peak_evidence = o.evidence[: self.cfg.max_evidence]

    def _evidence(self, inc: _Incident) -> list[dict]:
        """The peak window's lines, with the first line of each other suspected attack's
        strongest window after its first (strongest attack first), up to max_evidence."""
        others = sorted(
            (s for kind, s in inc.strongest.items() if kind != inc.peak_kind),
            key=lambda s: -s[0],
        )
        lines = [*inc.peak_evidence[:1], *(line for _, line in others), *inc.peak_evidence[1:]]
        out: list[dict] = []
        for line in lines:
            if line not in out:
                out.append(line)
        return out[: self.cfg.max_evidence]

    @staticmethod
    def _kind(inc: _Incident) -> str:
        return inc.kinds.most_common(1)[0][0] if inc.kinds else "unknown"

    def _event(self, inc: _Incident, status: str) -> dict:
        ranked = inc.windows_of.most_common()
        return {
            "incident_id": inc.id,
            "status": status,
            "vehicle": inc.vehicle,
            "brand": inc.brand,
            "first_seen": round(inc.first_seen, 3),
            "last_seen": round(inc.last_seen, 3),
            "windows": inc.windows,
            "peak_score": round(inc.peak, 3),
            "severity": severity_of(inc.peak),
            "suspected_attack": self._kind(inc),
            "attacks": dict(ranked),
            "attack_ids": {k: inc.top_of[k][1] for k, _ in ranked if k in inc.top_of},
            "can_ids": [
                {"can_id": cid, "score": s}
                for cid, s in sorted(inc.can_ids.items(), key=lambda kv: -kv[1])
            ],
            "evidence": self._evidence(inc),
            "model_version": inc.model_version,
            "detector": self.detector,
            "window_scores": list(inc.window_scores),
            "provenance": None,  # where its frames are: the caller knows (service, evaluate)
        }


def _power_of_two(n: int) -> bool:
    return n > 1 and n & (n - 1) == 0
