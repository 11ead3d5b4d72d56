"""Attack injection with per-frame ground-truth labels, on any frame array.

``inject(frames, spec)`` works on simulated traffic and on real recordings
alike: it only needs FRAME_DTYPE (or FD_FRAME_DTYPE) frames. The attack window is
``[t0, t0 + duration)`` with ``t0 = frames.ts[0] + spec.start_s``. Injected or
modified frames get ``LABEL_CODE[kind]``; suspension removes frames and so
labels nothing: the returned :class:`AttackSpan` is its ground truth.

Kinds (defaults in brackets):

* ``dos``: a flood of one high-priority id [0x000] at ``rate`` [3,000/s],
  dlc 8, all-zero payload (the HCRL Car-Hacking DoS pattern).
* ``fuzzing``: random 11-bit ids and random 8-byte payloads at ``rate`` [1,000/s].
* ``spoofing`` (fabrication): extra frames at an existing id at ``rate``
  [4x the id's own rate], each a genuine payload of that id with one byte
  forged to a constant (see :func:`_forge`).
* ``masquerade``: the id's real frames inside the window keep their timestamps
  and dlc; their payloads are forged the same way (every one differs).
* ``suspension``: the id's frames inside the window are removed.
* ``replay``: the id's genuine frames from the ``duration`` seconds before t0
  (fewer if the recording starts later; then repeated) are re-sent verbatim,
  shifted into the window, in addition to the live traffic.

* ``errorflood``: error frames at ``rate`` [2,000/s], the signature of a bus-off
  attack (an attacker overwriting a victim's bits until its error counter takes it
  off the bus): SocketCAN error frames (FLAG_ERROR, the error class in ``can_id``
  with the extended bit, as the readers store them; see :func:`error_frames`).
  With ``id``, that id is the victim: its frames inside the window are gone (bus-off).
  There is no label of its own: the error frames are labelled ``dos`` and the
  span's ``kind`` is ``dos`` (``attack`` says ``errorflood``).

Default target id (``id`` omitted, all kinds but dos/fuzzing/errorflood): one of the
periodic ids with a median period <= 100 ms, chosen with ``seed`` (an FD id in a
recording with CAN FD frames).

**CAN FD** (an FD_FRAME_DTYPE array, see ``detector.core.schema``): every kind works
on FD ids and returns an FD array. Frames forged at an existing id copy its form
(FD flags, BRS, length); spoofing and masquerade forge one signal-like byte of the
id's whole length, as on a classic id;
dos floods 64-byte FD frames (BRS) of zeros at an id the recording does not use,
else in the target's form; fuzzing sends FD frames (BRS) of random ids, lengths
12-64 and bytes. Classic arrays get exactly what they always got.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from detector.core.errors import ConfigError
from detector.core.fd import fd_lengths
from detector.core.schema import (
    ATTACK_KINDS,
    EXTENDED_FLAG,
    FD_LENGTHS,
    FLAG_BRS,
    FLAG_ERROR,
    FLAG_FD,
    ID_MASK_EXTENDED,
    LABEL_CODE,
    format_id,
    is_fd_array,
)

#: The attack families with a label of their own (LABELS).
INJECTABLE = tuple(k for k in ATTACK_KINDS if k != "unknown")
#: Attacks labelled as one of INJECTABLE: name -> label.
LABELLED_AS = {"errorflood": "dos"}
#: Every attack ``inject`` knows.
ATTACKS = INJECTABLE + tuple(LABELLED_AS)
DEFAULT_RATE_HZ = {"dos": 3000.0, "fuzzing": 1000.0, "errorflood": 2000.0}
SPOOF_RATE_FACTOR = 4.0
MAX_TARGET_PERIOD_S = 0.100
_KEYS = {"start": "start_s", "duration": "duration_s", "id": "can_id", "rate": "rate_hz"}


def _parse_id(text: str) -> int:
    """``0x6E0`` / ``1760``; a trailing ``x`` (``0x18FEF100x``) or a value > 0x7FF is 29-bit."""
    ext = len(text) > 2 and text[-1] in "xX"
    value = int(text[:-1] if ext else text, 0)
    if not 0 <= value <= ID_MASK_EXTENDED:
        raise ValueError(f"id out of range: {text}")
    return value | int(EXTENDED_FLAG) if ext or value > 0x7FF else value


@dataclass(frozen=True)
class AttackSpec:
    kind: str
    start_s: float  # relative to the first frame's ts
    duration_s: float
    can_id: int | None = None  # FRAME_DTYPE form (bit 31 = extended)
    rate_hz: float | None = None

    def __post_init__(self) -> None:
        if self.kind not in ATTACKS:
            raise ConfigError(f"attack kind must be one of {', '.join(ATTACKS)}, got {self.kind!r}")
        if not (np.isfinite(self.start_s) and self.start_s >= 0):
            raise ConfigError(f"attack start must be >= 0 s, got {self.start_s}")
        if not (np.isfinite(self.duration_s) and self.duration_s > 0):
            raise ConfigError(f"attack duration must be > 0 s, got {self.duration_s}")
        if self.rate_hz is not None and not (
            np.isfinite(self.rate_hz) and 0 < self.rate_hz <= 100_000
        ):
            raise ConfigError(f"attack rate must be in (0, 100000] frames/s, got {self.rate_hz}")

    @classmethod
    def parse(cls, text: str) -> AttackSpec:
        """``kind:start=S,duration=S[,id=0x6E0|0x18FEF100x][,rate=HZ]``."""
        kind, _, rest = text.strip().partition(":")
        kind = kind.strip().lower()
        if kind not in ATTACKS:
            raise ConfigError(
                f"attack {text!r}: kind must be one of {', '.join(ATTACKS)}, got {kind!r}"
            )
        values: dict[str, float | int] = {}
        for part in filter(None, (p.strip() for p in rest.split(","))):
            key, eq, value = part.partition("=")
            key = key.strip().lower()
            if not eq or key not in _KEYS:
                raise ConfigError(
                    f"attack {text!r}: bad part {part!r} (expected key=value with key in {', '.join(_KEYS)})"
                )
            try:
                values[_KEYS[key]] = _parse_id(value.strip()) if key == "id" else float(value)
            except ValueError:
                raise ConfigError(f"attack {text!r}: bad value in {part!r}") from None
        for key in ("start", "duration"):
            if _KEYS[key] not in values:
                raise ConfigError(f"attack {text!r}: missing {key}=SECONDS")
        try:
            return cls(kind, **values)  # type: ignore[arg-type]
        except ConfigError as exc:
            raise ConfigError(f"attack {text!r}: {exc}") from None


@dataclass(frozen=True)
class AttackSpan:
    kind: str  # the label family (LABELS), what evaluation scores
    start_ts: float
    end_ts: float
    can_id: int | None
    vehicle: str | None = None
    attack: str | None = None  # the attack injected, when it is not ``kind`` (errorflood)

    def to_dict(self) -> dict:
        return {
            "kind": self.kind,
            "attack": self.attack or self.kind,
            "vehicle": self.vehicle,
            # to the microsecond, as the logs write frame times: the attack's first frame,
            # read back, is not a fraction of a microsecond before its span
            "start_ts": round(self.start_ts, 6),
            "end_ts": round(self.end_ts, 6),
            "can_id": self.can_id,
            "can_id_hex": None if self.can_id is None else format_id(self.can_id),
        }


def id_periods(frames: np.ndarray) -> dict[int, float]:
    """Median inter-arrival time per id (ids with >= 3 frames)."""
    out = {}
    for cid in np.unique(frames["can_id"]).tolist():
        ts = frames["ts"][frames["can_id"] == cid]
        if len(ts) >= 3:
            out[int(cid)] = float(np.median(np.diff(np.sort(ts))))
    return out


def default_target(frames: np.ndarray, rng: np.random.Generator) -> int:
    """A periodic id (median period <= MAX_TARGET_PERIOD_S) chosen with ``rng``; in a
    recording with CAN FD frames, an FD id (what such a bus adds to attack)."""
    pool = frames["label"] == 0
    if is_fd_array(frames):
        pool &= (frames["flags"] & FLAG_FD) != 0
    periods = id_periods(frames[pool])
    fast = sorted(cid for cid, p in periods.items() if 0 < p <= MAX_TARGET_PERIOD_S)
    if not fast:
        raise ConfigError(
            f"no periodic id with period <= {MAX_TARGET_PERIOD_S * 1000:.0f} ms to attack"
        )
    return int(rng.choice(fast))


def _forge(payloads: np.ndarray, length: int) -> np.ndarray:
    """Forged copies of ``payloads`` (n, 8 or 64) of ``length`` bytes: one signal-like
    byte set to a wrong constant, an FD frame's as a classic frame's (an attacker forges
    the signal it wants, wherever it lies in the frame).

    The byte forged is the one that changes most often while still looking like a
    physical signal (changes in < 90 % of consecutive frames: counters and checksums
    change every frame); failing that the first byte. The constant is the byte's
    median + 0x60; frames that already hold it get bit 6 flipped, so every forged
    payload differs from the original.
    """
    forged = payloads.copy()
    width = min(max(int(length), 1), payloads.shape[1])
    if len(payloads) > 1:
        change = (np.diff(payloads[:, :width].astype(np.int16), axis=0) != 0).mean(axis=0)
        candidates = np.where(change < 0.9, change, -1.0)
        byte = int(np.argmax(candidates)) if candidates.max() > 0 else 0
    else:
        byte = 0
    value = (int(np.median(payloads[:, byte])) + 0x60) & 0xFF
    forged[:, byte] = np.where(payloads[:, byte] == value, value ^ 0x40, value)
    return forged


#: The most frames one attack may add (10 minutes of a 10 kHz flood is 6 M):
#: past it, an attack is a typo, not a scenario, and would exhaust memory.
MAX_INJECTED = 10_000_000


def _uniform_times(t0: float, t1: float, rate: float) -> np.ndarray:
    count = (t1 - t0) * rate
    if not count <= MAX_INJECTED:  # inf and nan too
        raise ConfigError(
            f"{count:,.0f} frames to inject, more than {MAX_INJECTED:,}: shorten the "
            "duration or lower the rate"
        )
    n = max(int(round(count)), 1)
    return t0 + np.arange(n) / rate


def _new_frames(
    like: np.ndarray, ts: np.ndarray, can_id, data: np.ndarray, dlc, kind: str, flags=0
) -> np.ndarray:
    """Frames of ``like``'s dtype; ``data`` (n, <= width) fills the first bytes."""
    out = np.zeros(len(ts), dtype=like.dtype)
    out["ts"], out["can_id"], out["dlc"], out["flags"] = ts, can_id, dlc, flags
    out["data"][:, : data.shape[1]] = data
    out["label"] = LABEL_CODE[LABELLED_AS.get(kind, kind)]
    return out


#: SocketCAN's error classes (linux/can/error.h) and the protocol error a receiver
#: logs when an attacker overwrites a victim's recessive data bits: a stuff error in
#: the data field, with the error counters in data[6] (tx) and data[7] (rx).
CAN_ERR_PROT, CAN_ERR_BUSERROR, CAN_ERR_CNT = 0x008, 0x080, 0x200
CAN_ERR_PROT_STUFF, CAN_ERR_PROT_LOC_DATA = 0x04, 0x0A
ERROR_CLASS = CAN_ERR_PROT | CAN_ERR_BUSERROR | CAN_ERR_CNT


def error_frames(like: np.ndarray, ts: np.ndarray) -> np.ndarray:
    """The error frames a bus-off attack makes a monitoring node log at ``ts``: the
    error class in ``can_id`` (extended bit set, as candump's 8-digit error ids read),
    FLAG_ERROR, dlc 8, the receive error counter climbing by one per error to 127
    (error passive), never a FD frame."""
    data = np.zeros((len(ts), 8), np.uint8)
    data[:, 2] = CAN_ERR_PROT_STUFF
    data[:, 3] = CAN_ERR_PROT_LOC_DATA
    data[:, 7] = np.minimum(np.arange(1, len(ts) + 1), 127)
    can_id = int(EXTENDED_FLAG) | ERROR_CLASS
    return _new_frames(like, ts, can_id, data, 8, "errorflood", FLAG_ERROR)


def _form(frames: np.ndarray, can_id: int) -> tuple[int, int, int]:
    """(flags, dlc, length) of frames forged at ``can_id`` in an FD array: the form of
    its last genuine frame, or an FD frame of 64 bytes with BRS if it sends none."""
    own = np.flatnonzero(_genuine(frames, can_id))
    if len(own) == 0:
        return FLAG_FD | FLAG_BRS, 15, 64
    last = frames[own[-1]]
    return int(last["flags"]) & (FLAG_FD | FLAG_BRS), int(last["dlc"]), int(fd_lengths(last[None])[0])


def _genuine(frames: np.ndarray, can_id: int) -> np.ndarray:
    return (frames["can_id"] == can_id) & (frames["label"] == 0)


def _fabricate(frames, spec, target, t0, t1, rng) -> np.ndarray:
    """New frames for dos / fuzzing / spoofing / replay (returned, not yet merged)."""
    kind = spec.kind
    fd = is_fd_array(frames)
    if kind in ("dos", "fuzzing", "errorflood"):
        ts = _uniform_times(t0, t1, spec.rate_hz or DEFAULT_RATE_HZ[kind])
        if kind == "errorflood":
            return error_frames(frames, ts)
        if kind == "dos":
            flags, dlc, length = _form(frames, target) if fd else (0, 8, 8)
            return _new_frames(
                frames, ts, target, np.zeros((len(ts), length), np.uint8), dlc, kind, flags
            )
        ids = rng.integers(0, 0x800, len(ts))
        if not fd:
            data = rng.integers(0, 256, (len(ts), 8), dtype=np.uint8)
            return _new_frames(frames, ts, ids, data, 8, kind)
        dlc = rng.integers(9, 16, len(ts)).astype(np.uint8)  # 12..64 bytes
        data = rng.integers(0, 256, (len(ts), 64), dtype=np.uint8)
        data[np.arange(64) >= FD_LENGTHS[dlc][:, None]] = 0
        return _new_frames(frames, ts, ids, data, dlc, kind, FLAG_FD | FLAG_BRS)
    own = frames[_genuine(frames, target)]
    if kind == "spoofing":
        period = id_periods(own).get(target, 0.1)
        ts = _uniform_times(t0, t1, spec.rate_hz or SPOOF_RATE_FACTOR / period)
        before = own[own["ts"] < t0]
        template = before[-32:] if len(before) else own[:32]
        dlc = int(template["dlc"][-1])
        flags = int(template["flags"][-1]) & (FLAG_FD | FLAG_BRS) if fd else 0
        forged = _forge(template["data"], int(fd_lengths(template)[-1]))[-1]
        return _new_frames(frames, ts, target, np.tile(forged, (len(ts), 1)), dlc, kind, flags)
    # replay: the window's length of genuine frames just before t0, repeated if short
    shift = min(t1 - t0, t0 - float(frames["ts"][0]))
    source = own[(own["ts"] >= t0 - shift) & (own["ts"] < t0)]
    if shift <= 0 or len(source) == 0:
        raise ConfigError(
            f"replay: no genuine frames of {format_id(target)} before the attack start"
        )
    copies = []
    for k in range(1, int(np.ceil((t1 - t0) / shift)) + 1):
        c = source.copy()
        c["ts"] += k * shift
        copies.append(c[c["ts"] < t1])
    out = np.concatenate(copies)
    out["label"] = LABEL_CODE["replay"]
    return out


def inject(frames: np.ndarray, spec: AttackSpec, seed: int = 0) -> tuple[np.ndarray, AttackSpan]:
    """A new ts-sorted frame array with ``spec`` injected, and the attack's span."""
    if len(frames) == 0:
        raise ConfigError("cannot inject an attack into an empty frame array")
    rng = np.random.default_rng(seed)
    frames = frames[np.argsort(frames["ts"], kind="stable")]
    t0 = float(frames["ts"][0]) + spec.start_s
    t1 = t0 + spec.duration_s
    recorded = float(frames["ts"][-1] - frames["ts"][0])
    if spec.start_s > recorded:
        raise ConfigError(
            f"{spec.kind}: starts {spec.start_s:g} s in, after the recording's last frame "
            f"({recorded:.3f} s in)"
        )
    if spec.kind == "fuzzing" or (spec.kind == "errorflood" and spec.can_id is None):
        target = None
    elif spec.can_id is not None:
        target = int(spec.can_id)
    else:
        target = 0 if spec.kind == "dos" else default_target(frames, rng)
    label = LABELLED_AS.get(spec.kind, spec.kind)
    span = AttackSpan(label, t0, t1, target, attack=None if label == spec.kind else spec.kind)
    in_window = (frames["ts"] >= t0) & (frames["ts"] < t1)
    needs_target = ("suspension", "masquerade", "spoofing", "replay", "errorflood")
    if target is not None and spec.kind in needs_target and not np.any(_genuine(frames, target)):
        raise ConfigError(f"{spec.kind}: id {format_id(target)} does not occur in the frames")
    if spec.kind == "suspension":
        silenced = in_window & (frames["can_id"] == target)
        if not silenced.any():  # ground truth of an attack that did nothing
            raise ConfigError(
                f"suspension: id {format_id(target)} sends no frame in the attack window"
            )
        return frames[~silenced], span
    if spec.kind == "errorflood" and target is not None:  # the victim is bus-off
        frames = frames[~(in_window & (frames["can_id"] == target))]
    if spec.kind == "masquerade":
        out = frames.copy()
        hit = np.flatnonzero(in_window & _genuine(frames, target))
        if len(hit) == 0:
            raise ConfigError(
                f"masquerade: id {format_id(target)} has no frames in the attack window"
            )
        # within the shortest of its frames: a byte past a frame's end would change nothing
        out["data"][hit] = _forge(frames["data"][hit], int(fd_lengths(frames[hit]).min()))
        out["label"][hit] = LABEL_CODE["masquerade"]
        return out, span
    added = _fabricate(frames, spec, target, t0, t1, rng)
    out = np.concatenate([frames, added])
    return out[np.argsort(out["ts"], kind="stable")], span
