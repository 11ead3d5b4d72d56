"""Fleet campaigns: the same suspected attack on the same CAN id on many vehicles of
one brand, found in incident records. Pure: no Kafka, no clock of its own.

An incident record becomes a ``Sighting``: its key is (brand, suspected attack,
top CAN id), its event time the record's ``last_seen``. Sightings are folded in
event-time order (``order``) by a ``Correlator``:

- an incident is *active* until ``window_s`` after the last record that showed it
  (while it is not closed, ``OPEN_GRACE_S`` more: an open incident is sent again
  at least every minute of event time);
- when the active incidents of one key come from ``min_vehicles`` distinct
  vehicles, they open a campaign (status ``open``); every later incident of that
  key joins it (``update``) until none of its incidents has been active for
  ``window_s``: then it closes (``closed``) and the key starts afresh;
- the campaign id is a hash of the key and the incident id of its first member
  (earliest ``first_seen``, then smallest id). Incident ids are themselves
  deterministic (vehicle and first window), so the same incidents in the same
  event-time order give the same campaigns and ids, whichever detector instance
  wrote them and in whatever order the incident topic's partitions are read.

``EventTimeOrder`` is what makes the order the same: records from several
partitions are held until every partition has been read ``lateness_s`` past
them (``watermark``), then released sorted by (event time, incident id, status,
partition, offset). A record that arrives later than that is still used
(``late``): only its place in the order may differ on a replay. One older than
the correlator's clock by more than ``window_s`` cannot touch any active
incident and is ``stale``.

Time moves forward only: ``advance(t)`` closes campaigns and forgets sightings
that ``t`` has made inactive; the service calls it with the watermark. While
the topic is quiet, ``close_quiet(t)`` closes the campaigns that event time run
on at wall-clock speed ends, without moving the clock that judges records
stale: quiet may be detectors down, whose backlog is judged by its own event
time, and reopens a campaign it shows was still going on.
"""

from __future__ import annotations

import dataclasses
import hashlib
import heapq
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from detector.core.config import CampaignsConfig
from detector.core.fd import FRAME_KIND_STREAMS
from detector.core.schema import ATTACK_KINDS, EXTENDED_FLAG, ID_MASK_EXTENDED, format_id

CAMPAIGN_STATUSES = ("open", "update", "closed")
_STATUS_RANK = {"open": 0, "update": 1, "closed": 2}
_EXTENDED, _ID_MAX = int(EXTENDED_FLAG), ID_MASK_EXTENDED
#: What became of a sighting in ``Correlator.observe``.
FATES = ("in_order", "late", "stale")


class BadIncident(ValueError):
    """An incident record the correlator cannot use; ``reason`` is a metric label."""

    def __init__(self, reason: str, detail: str) -> None:
        self.reason, self.detail = reason, detail
        super().__init__(f"{reason}: {detail}")


@dataclass(frozen=True)
class Sighting:
    """One incident record as the correlator sees it (and where it was read)."""

    incident_id: str
    status: str
    vehicle: str
    brand: str
    attack: str
    can_id: str
    first_seen: float
    last_seen: float  # the record's event time
    severity: str = ""
    peak_score: float = 0.0
    partition: int = -1
    offset: int = -1

    @property
    def key(self) -> tuple[str, str, str]:
        return (self.brand, self.attack, self.can_id)

    @property
    def order(self) -> tuple:
        """The total order sightings are folded in: the same on every replay."""
        rank = _STATUS_RANK.get(self.status, 3)
        where = (self.partition, self.offset, self.attack, self.can_id)
        return (self.last_seen, self.incident_id, rank, *where)


def _number(record: Mapping, name: str) -> float:
    value = record.get(name)
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadIncident("bad_shape", f"{name} must be a finite number, got {value!r}")
    return float(value)


def _text(record: Mapping, name: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise BadIncident("bad_shape", f"{name} must be a non-empty string, got {value!r}")
    return value


FRAME_KINDS = set(FRAME_KIND_STREAMS.values())  # "error frames", "remote frames"


def _top_id(can_ids: Any) -> str:
    """The incident's first (highest-scored) CAN id, as ``format_id`` writes it."""
    if not isinstance(can_ids, list) or not can_ids:
        raise BadIncident("bad_shape", f"can_ids must be a non-empty list, got {can_ids!r:.80}")
    first = can_ids[0].get("can_id") if isinstance(can_ids[0], dict) else can_ids[0]
    try:
        if isinstance(first, str) and first.strip() in FRAME_KINDS:
            return first.strip()  # a campaign of error-frame (or remote-frame) floods
        if isinstance(first, str):
            text = first.strip().split(" ", 1)[0]  # an FD lane: "0x1A0 FD bytes 8-15"
            extended = len(text) > 2 and text[-1] in "xX"
            value = int(text[:-1] if extended else text, 0)
        elif isinstance(first, int) and not isinstance(first, bool):
            extended, value = False, first
        else:
            raise ValueError
        if value & _EXTENDED:
            extended, value = True, value & ~_EXTENDED
        if not 0 <= value <= _ID_MAX:
            raise ValueError
    except ValueError:
        raise BadIncident("bad_shape", f"can_ids[0] is not a CAN id: {first!r:.40}") from None
    return format_id(value | _EXTENDED if extended or value > 0x7FF else value)


def sighting(record: Any, partition: int = -1, offset: int = -1) -> Sighting:
    """The correlator's view of one incident record (``BadIncident`` if unusable)."""
    if not isinstance(record, dict):
        raise BadIncident("bad_shape", f"an incident must be a JSON object, got {record!r:.80}")
    status = _text(record, "status")
    if status not in ("open", "update", "closed"):
        raise BadIncident("bad_shape", f"status must be open, update or closed, got {status!r}")
    attack = _text(record, "suspected_attack")
    if attack not in ATTACK_KINDS:
        raise BadIncident("bad_shape", f"suspected_attack {attack!r} is not a known attack")
    first, last = _number(record, "first_seen"), _number(record, "last_seen")
    if last < first:
        raise BadIncident("bad_shape", f"last_seen {last} is before first_seen {first}")
    peak = record.get("peak_score", 0.0)
    return Sighting(
        incident_id=_text(record, "incident_id"),
        status=status,
        vehicle=_text(record, "vehicle"),
        brand=_text(record, "brand"),
        attack=attack,
        can_id=_top_id(record.get("can_ids")),
        first_seen=first,
        last_seen=last,
        severity=str(record.get("severity", "")),
        peak_score=float(peak) if isinstance(peak, int | float) else 0.0,
        partition=partition,
        offset=offset,
    )


def sightings(record: Any, partition: int = -1, offset: int = -1) -> list[Sighting]:
    """Every key an incident record is a sighting of: its suspected attack on that
    attack's top id (``attack_ids``; else the incident's top id), then each other attack
    of its windows on an id not keyed yet. A flood that is also spoofing of another id
    is seen in both campaigns; the same id suspected of two attacks is one attack seen
    two ways, and stays one sighting."""
    first = sighting(record, partition, offset)
    others = record.get("attack_ids", {})
    if not isinstance(others, dict):
        raise BadIncident("bad_shape", f"attack_ids must be an object, got {others!r:.80}")
    tops = {}
    for attack, can_id in others.items():
        if attack not in ATTACK_KINDS:
            raise BadIncident("bad_shape", f"attack_ids: {attack!r} is not a known attack")
        tops[attack] = _top_id([can_id])
    # the incident's top id may be another attack's (one strong window of it)
    first = dataclasses.replace(first, can_id=tops.get(first.attack, first.can_id))
    out, ids = [first], {first.can_id}
    for attack, top in tops.items():
        if top not in ids:
            ids.add(top)
            out.append(dataclasses.replace(first, attack=attack, can_id=top))
    return out


def campaign_id(brand: str, attack: str, can_id: str, first_incident_id: str) -> str:
    """Deterministic: the key and the incident that started the campaign."""
    text = f"campaign|{brand}|{attack}|{can_id}|{first_incident_id}"
    return hashlib.sha256(text.encode()).hexdigest()[:20]


def watermark(high: Mapping[int, float], behind: Iterable[int], lateness_s: float) -> float:
    """Event time up to which records may be released: every partition still being
    read (``behind``) has been read ``lateness_s`` past it; with none behind, the
    newest event time read less ``lateness_s``. A partition behind with nothing
    read yet holds everything back."""
    lagging = [high.get(p, -math.inf) for p in behind]
    top = min(lagging) if lagging else max(high.values(), default=-math.inf)
    return top - lateness_s


class EventTimeOrder:
    """Sightings from several partitions, held until the watermark passes them."""

    def __init__(self) -> None:
        self.high: dict[int, float] = {}  # partition -> newest event time read
        self._held: list[tuple[tuple, Sighting]] = []

    def add(self, s: Sighting) -> None:
        heapq.heappush(self._held, (s.order, s))
        self.high[s.partition] = max(self.high.get(s.partition, -math.inf), s.last_seen)

    def release(self, upto: float) -> list[Sighting]:
        """The held sightings with event time <= ``upto``, in ``Sighting.order``."""
        out = []
        while self._held and self._held[0][1].last_seen <= upto:
            out.append(heapq.heappop(self._held)[1])
        return out

    def __len__(self) -> int:
        return len(self._held)

    @property
    def newest(self) -> float:
        return max(self.high.values(), default=-math.inf)

    def held_offsets(self) -> dict[int, int]:
        """Per partition, the oldest offset still held (a restart must read it again)."""
        out: dict[int, int] = {}
        for _, s in self._held:
            out[s.partition] = min(out.get(s.partition, s.offset), s.offset)
        return out


#: How long past its last record an incident not yet closed counts as going on: its
#: detector sends it again at least every ``tracker.HEARTBEAT_S`` (60 s) of event time
#: while it is open. Without it, a campaign of a long attack closed and opened again
#: between two of its incidents' records (sent at windows 1024, 2048, ...).
OPEN_GRACE_S = 150.0


@dataclass
class _Member:
    incident_id: str
    vehicle: str
    first_seen: float
    last_seen: float
    severity: str
    peak_score: float
    partition: int  # where its first record was read
    offset: int
    closed: bool = False  # its closed record was read

    @classmethod
    def of(cls, s: Sighting) -> _Member:
        return cls(
            s.incident_id, s.vehicle, s.first_seen, s.last_seen, s.severity, s.peak_score,
            s.partition, s.offset, s.status == "closed",
        )  # fmt: skip

    def fold(self, s: Sighting) -> None:
        self.last_seen = max(self.last_seen, s.last_seen)
        self.closed = self.closed or s.status == "closed"
        if s.peak_score >= self.peak_score:
            self.peak_score, self.severity = s.peak_score, s.severity or self.severity

    @property
    def going_on_until(self) -> float:
        """The event time up to which the incident is known to go on."""
        return self.last_seen if self.closed else self.last_seen + OPEN_GRACE_S

    def as_dict(self) -> dict:
        return {
            "incident_id": self.incident_id,
            "vehicle": self.vehicle,
            "first_seen": round(self.first_seen, 3),
            "last_seen": round(self.last_seen, 3),
            "severity": self.severity,
            "peak_score": round(self.peak_score, 3),
        }


@dataclass
class Campaign:
    id: str
    key: tuple[str, str, str]
    members: dict[str, _Member] = field(default_factory=dict)  # incident id -> member, join order

    @property
    def active_until(self) -> float:
        return max(m.going_on_until for m in self.members.values())

    @property
    def vehicles(self) -> set[str]:
        return {m.vehicle for m in self.members.values()}


class Correlator:
    """Campaign state of one reader of the whole incident topic."""

    def __init__(self, cfg: CampaignsConfig) -> None:
        self.cfg = cfg
        self.clock = -math.inf  # newest event time folded in (or advanced to)
        self.pending: dict[tuple, dict[str, _Member]] = {}  # key -> incidents, no campaign yet
        self.open: dict[tuple, Campaign] = {}
        # key -> campaign closed by close_quiet, until event time passes it for good
        self.quiet_closed: dict[tuple, Campaign] = {}
        self._pruned_at = -math.inf

    def observe(self, s: Sighting) -> tuple[list[dict], str]:
        """Fold in one sighting (in ``Sighting.order``): campaign records, and its fate."""
        if s.last_seen < self.clock - self.cfg.window_s:
            return [], "stale"
        fate = "late" if s.last_seen < self.clock else "in_order"
        events = self.advance(s.last_seen)
        camp = self.open.get(s.key) or self._reopened(s, events)
        if camp is not None:
            member = camp.members.get(s.incident_id)
            if member is not None:
                member.fold(s)
            else:
                camp.members[s.incident_id] = _Member.of(s)
                events.append(self.record(camp, "update"))
            return events, fate
        group = self.pending.setdefault(s.key, {})
        member = group.get(s.incident_id)
        if member is None:
            group[s.incident_id] = _Member.of(s)
        else:
            member.fold(s)
        horizon = self.clock - self.cfg.window_s
        active = {i: m for i, m in group.items() if m.going_on_until >= horizon}
        if len({m.vehicle for m in active.values()}) >= self.cfg.min_vehicles:
            del self.pending[s.key]
            events.append(self.record(self._open(s.key, active), "open"))
        return events, fate

    def _reopened(self, s: Sighting, events: list[dict]) -> Campaign | None:
        """The campaign of ``s``'s key that ``close_quiet`` closed, open again (same id,
        an ``open`` record) when ``s`` shows it was still going on."""
        camp = self.quiet_closed.pop(s.key, None)
        if camp is None:
            return None
        # still open by event time (the clock is past s, advanced to it): as advance would
        # have left it (a replay, with no quiet between, folds s into it); else closed for good
        if camp.active_until < self.clock - self.cfg.window_s:
            return None
        self.open[s.key] = camp
        events.append(self.record(camp, "open") | {"reopened": True})
        return camp

    def close_quiet(self, t: float) -> list[dict]:
        """While the incident topic is quiet: the records of the campaigns that ``t`` (event
        time run on at wall-clock speed) ends. The clock that judges records stale does not
        move: the quiet may be detectors down or behind, whose backlog still belongs
        where its event time puts it (it was skipped as stale, and a replay of the topic
        gave another answer). A campaign closed here opens again under its id when its
        backlog shows it was still going on."""
        ended = self._end(t - self.cfg.window_s)
        self.quiet_closed.update((camp.key, camp) for camp in ended)
        return [self.record(c, "closed") for c in ended]

    def _end(self, horizon: float) -> list[Campaign]:
        """The open campaigns none of whose incidents goes on past ``horizon``, taken out
        of ``open`` (in id order)."""
        ended = sorted((c for c in self.open.values() if c.active_until < horizon), key=_by_id)
        for camp in ended:
            del self.open[camp.key]
        return ended

    def _open(self, key: tuple, active: dict[str, _Member]) -> Campaign:
        ordered = sorted(active.values(), key=lambda m: (m.first_seen, m.incident_id))
        camp = Campaign(campaign_id(*key, ordered[0].incident_id), key)
        camp.members = {m.incident_id: m for m in ordered}
        self.open[key] = camp
        return camp

    def advance(self, t: float) -> list[dict]:
        """Move the clock to ``t``: the records of campaigns it closes."""
        if t <= self.clock:
            return []
        self.clock = t
        horizon = t - self.cfg.window_s
        ended = self._end(horizon)
        if t - self._pruned_at >= self.cfg.window_s / 8:  # memory only: observe filters
            self._pruned_at = t
            self._prune(horizon)
        return [self.record(c, "closed") for c in ended]

    def _prune(self, horizon: float) -> None:
        for key, camp in list(self.quiet_closed.items()):
            if camp.active_until < horizon:  # no record in order can reopen it now
                del self.quiet_closed[key]
        for key in list(self.pending):
            group = {i: m for i, m in self.pending[key].items() if m.going_on_until >= horizon}
            if group:
                self.pending[key] = group
            else:
                del self.pending[key]

    def held_offsets(self) -> dict[int, int]:
        """Per partition, the oldest first record of an incident still active or in an
        open campaign: where a restart must read again to rebuild this state."""
        self._prune(self.clock - self.cfg.window_s)
        out: dict[int, int] = {}
        # not the campaigns close_quiet closed: a restart re-reading them would publish
        # them open again (their backlog, if any, then opens a campaign of its own)
        groups = [*self.pending.values(), *(c.members for c in self.open.values())]
        for group in groups:
            for m in group.values():
                if m.partition >= 0:
                    out[m.partition] = min(out.get(m.partition, m.offset), m.offset)
        return out

    def record(self, camp: Campaign, status: str) -> dict:
        """The campaign record (what goes on the campaign topic)."""
        brand, attack, can_id = camp.key
        members = list(camp.members.values())
        limit = self.cfg.max_members
        vehicles = sorted(camp.vehicles)
        return {
            "campaign_id": camp.id,
            "status": status,
            "brand": brand,
            "suspected_attack": attack,
            "can_id": can_id,
            "first_seen": round(min(m.first_seen for m in members), 3),
            "last_seen": round(max(m.last_seen for m in members), 3),
            "vehicle_count": len(vehicles),
            "incident_count": len(members),
            "vehicles": vehicles[:limit],
            "members": [m.as_dict() for m in members[:limit]],
            "min_vehicles": self.cfg.min_vehicles,
            "window_s": self.cfg.window_s,
        }


def _by_id(camp: Campaign) -> str:
    return camp.id


def correlate(
    incidents: Iterable[dict], cfg: CampaignsConfig, until: float | None = None
) -> list[dict]:
    """Every campaign record that ``incidents`` (in any order) give, folded in event-time
    order; then the clock is advanced to ``until`` (closing what it ends), if given.
    Records the correlator cannot use are skipped."""
    seen = []
    for n, record in enumerate(incidents):
        try:
            seen += sightings(record, 0, n)
        except BadIncident:
            continue
    corr = Correlator(cfg)
    events: list[dict] = []
    for s in sorted(seen, key=lambda s: s.order[:3]):
        events += corr.observe(s)[0]
    if until is not None:
        events += corr.advance(until)
    return events


def latest(records: Iterable[dict]) -> dict[str, dict]:
    """The last record of each campaign id (the campaigns as they now stand)."""
    out: dict[str, dict] = {}
    for r in records:
        out[r["campaign_id"]] = r
    return out
