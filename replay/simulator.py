"""Realistic multi-vehicle CAN traffic from the platform profiles (replay/profiles.py).

Each drive of a vehicle gets one driving trace (:class:`DriveTrace`) in a style
(city, suburban, highway): a smooth random speed made of a few slow sinusoids
(|acceleration| <= ~2.5 m/s^2; a city drive stops now and then and may start
standing),
a gear chosen from speed, engine RPM from speed x gear ratio (idle 800 rpm),
wheel speeds = vehicle speed x a per-wheel tyre factor (+-0.3 %) and a smooth
steering angle that narrows with speed. Every message of the profile is then
generated in one vectorized pass: timestamps ``start + phase + k * period``
with non-cumulative jitter of +-``JITTER`` of the period (ECUs schedule on a
tick, so jitter does not accumulate), signals evaluated at those timestamps and
packed, counters incrementing modulo their size, and checksums computed last
over the other bytes (:func:`compute_checksum`).

Drives differ the way real ones do: slow signals (coolant, fuel, battery) start
at a level of the drive's own, a quarter of the signals the DBC leaves
undescribed are settings of the drive (lights, modes, doors; now and then one
changes mid-drive), a tenth are the vehicle's own (variant coding), and the
odometer is the vehicle's.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from detector.core.fd import to_fd
from detector.core.schema import FD_FRAME_DTYPE, FLAG_BRS, FLAG_FD, FRAME_DTYPE, fd_dlc
from replay.profiles import MessageSpec, SignalSpec, load_profile, pack_signal, signal_mask

JITTER = 0.02
WHEEL_RADIUS_M = 0.33
FINAL_DRIVE = 3.6
GEAR_RATIOS = np.array([3.5, 2.1, 1.4, 1.0, 0.8, 0.65])
GEAR_UP_MS = np.array([3.0, 7.0, 12.0, 17.0, 23.0])  # speed at which gear n -> n+1
IDLE_RPM = 800.0


def _crc8_table(poly: int) -> np.ndarray:
    table = np.zeros(256, dtype=np.uint8)
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = ((crc << 1) ^ poly) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
        table[i] = crc
    return table


#: CRC-8/SAE-J1850 (poly 0x1D, MSB first), as opendbc's CRC8J1850.
CRC8_J1850 = _crc8_table(0x1D)
_GIORGIO_XOR = {0xDE: 0x10, 0x106: 0xF6, 0x122: 0xF1}
_PSA_INIT = {0x452: 0x4, 0x38D: 0x7, 0x42D: 0xC}


def compute_checksum(
    kind: str, can_id: int, data: np.ndarray, sig: SignalSpec, dlc: int
) -> np.ndarray:
    """Checksum values (n,) for payloads ``data`` (n, 8) whose checksum field is ignored.

    * ``chrysler``: CRC-8/SAE-J1850 (init 0xFF, xorout 0xFF) over the payload bytes
      except the checksum byte; identical to opendbc's ``chrysler_checksum`` when
      the checksum is the last byte (always the case in the Chrysler DBCs).
    * ``fca_giorgio``: the same CRC with init 0, xored with a per-address constant
      (opendbc ``fca_giorgio_checksum``).
    * ``psa``: 4-bit: (init(address) - sum of all nibbles) & 0xF with the checksum
      field zeroed (opendbc ``psa_checksum``).
    * ``xor``: XOR of the payload bytes except the checksum byte (synthetic ids).
    * ``e2e`` (CAN FD, ``data`` (n, 12..64) and ``dlc`` the length in bytes): AUTOSAR
      E2E profile 1-like, CRC-8/SAE-J1850 (init 0xFF, xorout 0xFF) over the Data ID
      (the 11-bit id, low byte then high byte) and then every payload byte but the
      checksum's, so a frame copied to another id fails it too.
    """
    return _checksum(kind, can_id, data, sig, dlc) & ((1 << sig.length) - 1)


def _e2e_crc(can_id: int, data: np.ndarray, sig: SignalSpec, length: int) -> np.ndarray:
    mask = signal_mask(sig, data.shape[1])
    crc = np.full(len(data), 0xFF, dtype=np.uint8)
    for byte in (can_id & 0xFF, (can_id >> 8) & 0xFF):
        crc = CRC8_J1850[crc ^ np.uint8(byte)]
    for b in range(length):
        if not mask[b]:
            crc = CRC8_J1850[crc ^ data[:, b]]
    return (crc ^ 0xFF).astype(np.int64)


def _checksum(kind: str, can_id: int, data: np.ndarray, sig: SignalSpec, dlc: int) -> np.ndarray:
    if kind == "e2e":
        return _e2e_crc(can_id, np.asarray(data, dtype=np.uint8), sig, dlc)
    mask = signal_mask(sig)
    data = np.asarray(data, dtype=np.uint8)[:, :dlc] & ~mask[:dlc]
    others = [b for b in range(dlc) if not mask[b]] if sig.length >= 8 else list(range(dlc))
    n = len(data)
    if kind in ("chrysler", "fca_giorgio"):
        crc = np.full(n, 0xFF if kind == "chrysler" else 0x00, dtype=np.uint8)
        for b in others:
            crc = CRC8_J1850[crc ^ data[:, b]]
        if kind == "chrysler":
            return (crc ^ 0xFF).astype(np.int64)
        return (crc ^ _GIORGIO_XOR.get(can_id, 0x0A)).astype(np.int64)
    if kind == "psa":
        nibbles = (data >> 4).astype(np.int64).sum(axis=1) + (data & 0xF).astype(np.int64).sum(
            axis=1
        )
        return (_PSA_INIT.get(can_id, 0xB) - nibbles) & 0xF
    if kind == "xor":
        return np.bitwise_xor.reduce(data[:, others], axis=1).astype(np.int64)
    raise ValueError(f"unknown checksum kind {kind!r}")


#: Driving styles: (mean speed range m/s, share of it the speed swings by, stops).
STYLES = {
    "city": ((6.0, 12.0), (0.3, 0.9), True),
    "suburban": ((12.0, 20.0), (0.3, 0.7), False),
    "highway": ((22.0, 32.0), (0.1, 0.3), False),
}
#: A stop-and-go drive stops every STOP_EVERY_S (range) for STOP_S (range); pulling
#: away and braking take RAMP_S (a smoothstep: peak acceleration <= 2.3 m/s^2).
STOP_EVERY_S = (60.0, 150.0)  # > STOP_S + 2 RAMP_S: ramps never overlap
STOP_S = (5.0, 25.0)
RAMP_S = 12.0


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3.0 - 2.0 * x)


@dataclass(frozen=True)
class DriveTrace:
    """A vehicle's smooth driving state as vectorized functions of time (s since start).

    The speed is a few slow sinusoids around a mean set by the drive's style; a
    city drive also stops now and then (and may start standing), each stop
    reached and left smoothly.
    """

    v_mean: float
    amp: np.ndarray
    freq: np.ndarray
    phase: np.ndarray
    steer_amp: np.ndarray
    steer_freq: np.ndarray
    steer_phase: np.ndarray
    stops: np.ndarray = field(default_factory=lambda: np.zeros((0, 2)))  # (start, end) s
    style: str = "suburban"

    @classmethod
    def random(cls, rng: np.random.Generator, style: str | None = None) -> DriveTrace:
        style = style or str(rng.choice(list(STYLES)))
        (v_lo, v_hi), (a_lo, a_hi), stopping = STYLES[style]
        v_mean = rng.uniform(v_lo, v_hi)
        freq = rng.uniform(0.004, 0.03, 4)
        amp = rng.dirichlet(np.ones(4)) * (v_mean - 1.0) * rng.uniform(a_lo, a_hi)
        # keep |dv/dt| <= sum(2 pi f A) <= 2.5 m/s^2
        amp *= min(1.0, 2.5 / float(np.sum(2 * np.pi * freq * amp)))
        stops = np.zeros((0, 2))
        if stopping:  # half the city drives start standing
            first = 0.0 if rng.random() < 0.5 else rng.uniform(*STOP_EVERY_S)
            starts = first + np.r_[0.0, np.cumsum(rng.uniform(*STOP_EVERY_S, 63))]
            stops = np.stack([starts, starts + rng.uniform(*STOP_S, len(starts))], axis=1)
        return cls(
            v_mean,
            amp,
            freq,
            rng.uniform(0, 2 * np.pi, 4),
            rng.uniform(5.0, 60.0, 3),
            rng.uniform(0.02, 0.15, 3),
            rng.uniform(0, 2 * np.pi, 3),
            stops,
            style,
        )

    def moving(self, t: np.ndarray) -> np.ndarray:
        """1 while driving, 0 while stopped: braking over RAMP_S before a stop, pulling
        away over RAMP_S after it."""
        t = np.asarray(t, dtype=np.float64)
        gate = np.ones_like(t)
        for a, b in self.stops:
            down = _smoothstep((a - t) / RAMP_S)
            up = _smoothstep((t - b) / RAMP_S)
            gate = np.minimum(gate, np.where(t < (a + b) / 2, down, up))
        return gate

    def speed(self, t: np.ndarray) -> np.ndarray:
        """m/s."""
        w = 2 * np.pi * self.freq
        cruise = self.v_mean + np.sin(np.outer(t, w) + self.phase) @ self.amp
        return cruise * self.moving(t) if len(self.stops) else cruise

    def distance(self, t: np.ndarray) -> np.ndarray:
        """m driven since t = 0 (speed integrated on a 50 ms grid)."""
        t = np.asarray(t, dtype=np.float64)
        if len(t) == 0:
            return np.zeros(0)
        grid = np.arange(0.0, float(t.max()) + 0.1, 0.05)
        v = self.speed(grid)
        d = np.r_[0.0, np.cumsum((v[1:] + v[:-1]) / 2 * 0.05)]
        return np.interp(t, grid, d)

    def gear(self, t: np.ndarray) -> np.ndarray:
        return 1 + np.searchsorted(GEAR_UP_MS, self.speed(t))

    def rpm(self, t: np.ndarray) -> np.ndarray:
        wheel_rpm = self.speed(t) / (2 * np.pi * WHEEL_RADIUS_M) * 60.0
        return np.maximum(IDLE_RPM, wheel_rpm * GEAR_RATIOS[self.gear(t) - 1] * FINAL_DRIVE)

    def steer_angle(self, t: np.ndarray) -> np.ndarray:
        """deg; smaller lock at higher speed."""
        w = 2 * np.pi * self.steer_freq
        return (np.sin(np.outer(t, w) + self.steer_phase) @ self.steer_amp) / (
            1.0 + self.speed(t) / 10.0
        )

    def steer_rate(self, t: np.ndarray) -> np.ndarray:
        h = 0.01
        return (self.steer_angle(t + h) - self.steer_angle(t - h)) / (2 * h)


def _speed_unit(v_ms: np.ndarray, unit: str) -> np.ndarray:
    unit = unit.lower()
    if "km" in unit or "kph" in unit:
        return v_ms * 3.6
    return v_ms * 2.23694 if "mph" in unit else v_ms


def _physical(
    sig: SignalSpec, t: np.ndarray, trace: DriveTrace, rng: np.random.Generator, odometer_km: float
) -> np.ndarray | None:
    """Physical values of a driven signal at times ``t``; None for raw-domain roles."""
    role = sig.role
    if role == "speed":
        return _speed_unit(trace.speed(t), sig.unit)
    if role == "wheel_speed":
        v = trace.speed(t) * (1.0 + rng.uniform(-0.003, 0.003)) + rng.normal(0.0, 0.01, len(t))
        return _speed_unit(np.maximum(v, 0.0), sig.unit)
    if role == "wheel_rpm":
        return trace.speed(t) / (2 * np.pi * WHEEL_RADIUS_M) * 60.0
    if role == "rpm":
        return trace.rpm(t)
    if role == "output_shaft":
        return trace.rpm(t) / GEAR_RATIOS[trace.gear(t) - 1]
    if role == "gear":
        return trace.gear(t).astype(np.float64)
    if role == "prndl":
        return np.full(len(t), 4.0)  # D
    if role == "steer_angle":
        return trace.steer_angle(t)
    if role == "steer_rate":
        return trace.steer_rate(t)
    if role == "distance":
        d = trace.distance(t)
        return d / 1000.0 + odometer_km if "km" in sig.unit.lower() else d
    return None


#: Of the signals a DBC leaves undescribed (constant in the profile), about one in
#: STATE_SHARE is a setting of the drive (a mode, a switch, a door) and one in
#: VEHICLE_SHARE a property of the vehicle (variant coding); the rest are the same
#: fleet-wide.
STATE_SHARE = 4
VEHICLE_SHARE = 10
#: A drive's setting changes once during the drive with this probability.
STATE_CHANGE_P = 0.15


def _key(*parts) -> int:
    return zlib.crc32("/".join(map(str, parts)).encode())


def constant_kind(platform: str, msg: MessageSpec, sig: SignalSpec) -> str:
    """How an undescribed (constant-role) signal varies: state | vehicle | constant."""
    k = _key(platform, msg.can_id, sig.name, "kind")
    if k % STATE_SHARE == 0:
        return "state"
    return "vehicle" if k % VEHICLE_SHARE == 1 else "constant"


def _state(
    platform: str, msg: MessageSpec, sig: SignalSpec, t: np.ndarray, rng: np.random.Generator
) -> np.ndarray:
    """A setting of the drive: one of 2-4 values the signal takes on this platform, set
    at the start and, now and then, changed once mid-drive."""
    span = sig.raw_max - sig.raw_min + 1
    choices = np.unique(
        [sig.raw_min]
        + [sig.raw_min + _key(platform, msg.can_id, sig.name, i) % span for i in range(3)]
    )
    first, second = rng.choice(choices, 2, replace=len(choices) < 2)
    out = np.full(len(t), first)
    if len(t) and rng.random() < STATE_CHANGE_P:
        out[t >= rng.uniform(t[0], t[-1])] = second
    return out


def _raw_values(
    msg: MessageSpec,
    sig: SignalSpec,
    t: np.ndarray,
    trace: DriveTrace,
    rng: np.random.Generator,
    platform: str,
    vehicle: int = 0,
) -> np.ndarray:
    n = len(t)
    span = sig.raw_max - sig.raw_min
    if sig.role == "counter":
        return (rng.integers(0, 1 << sig.length) + np.arange(n)) % (1 << sig.length)
    odometer_km = 5_000 + _key(platform, vehicle, "odometer") % 145_000  # per vehicle
    phys = _physical(sig, t, trace, rng, odometer_km)
    kind = constant_kind(platform, msg, sig) if sig.role == "constant" else sig.role
    if phys is not None:
        raw = np.round((phys - sig.offset) / sig.scale)
        if sig.role == "distance":  # odometers wrap around
            raw = raw % (sig.raw_max + 1)
    elif sig.role == "smooth":
        # piecewise-linear between random knots every ~3 s, in a band of the range the
        # drive sets (a cabin temperature, a pedal: where they sit differs per drive)
        centre, half = rng.uniform(0.2, 0.8), rng.uniform(0.05, 0.2)
        knots_t = np.arange(0.0, t[-1] + 6.0, 3.0) if n else np.zeros(1)
        knots = sig.raw_min + span * rng.uniform(centre - half, centre + half, len(knots_t))
        raw = np.round(np.interp(t, knots_t, knots))
    elif sig.role == "slow":
        # a level the drive starts at (a cold or a warm engine, a full or an empty tank)
        # that creeps towards another over minutes
        start, end = rng.uniform(0.1, 0.9, 2)
        tau = rng.uniform(200.0, 1000.0)
        raw = np.round(sig.raw_min + span * (end + (start - end) * np.exp(-t / tau)))
    elif kind == "state":
        raw = _state(platform, msg, sig, t, rng)
    elif kind == "vehicle":
        raw = np.full(n, sig.raw_min + _key(platform, msg.can_id, sig.name, vehicle) % (span + 1))
    else:
        # constant per platform (same software fleet-wide); flags stay off
        seed = _key(platform, msg.can_id, sig.name)
        value = 0 if sig.length <= 2 else seed % (span + 1) + sig.raw_min
        raw = np.full(n, value)
    return np.clip(raw, sig.raw_min, sig.raw_max).astype(np.int64)


def simulate_message(
    msg: MessageSpec,
    duration_s: float,
    start_ts: float,
    trace: DriveTrace,
    rng: np.random.Generator,
    platform: str = "",
    vehicle: int = 0,
) -> np.ndarray:
    """All frames of one message over ``[start_ts, start_ts + duration_s)``: FRAME_DTYPE,
    or FD_FRAME_DTYPE (FLAG_FD, BRS as the message says, dlc the length's code) for an
    FD message."""
    phase = rng.uniform(0.0, msg.period_s)
    k = np.arange(int(np.ceil((duration_s - phase) / msg.period_s)) + 1)
    t = phase + k * msg.period_s + rng.uniform(-JITTER, JITTER, len(k)) * msg.period_s
    t = t[(t >= 0.0) & (t < duration_s)]
    data = np.zeros((len(t), msg.dlc if msg.fd else 8), dtype=np.uint8)
    checksum = None
    for sig in msg.signals:
        if sig.role == "checksum":
            checksum = sig
            continue
        pack_signal(data, sig, _raw_values(msg, sig, t, trace, rng, platform, vehicle))
    if checksum is not None and msg.checksum != "none":
        pack_signal(
            data, checksum, compute_checksum(msg.checksum, msg.can_id, data, checksum, msg.dlc)
        )
    if msg.fd:
        out = np.zeros(len(t), dtype=FD_FRAME_DTYPE)
        out["dlc"] = fd_dlc(msg.dlc)
        out["flags"] = FLAG_FD | (FLAG_BRS if msg.brs else 0)
        out["data"][:, : msg.dlc] = data
    else:
        out = np.zeros(len(t), dtype=FRAME_DTYPE)
        out["dlc"] = msg.dlc
        out["data"] = data
    out["ts"] = start_ts + t
    out["can_id"] = msg.frame_id
    return out


def simulate_vehicle(
    platform: str,
    duration_s: float,
    start_ts: float = 1.7e9,
    seed: int = 0,
    drive: int = 0,
    style: str | None = None,
) -> np.ndarray:
    """One drive's benign bus traffic (sorted by ts), deterministic per (vehicle
    ``seed``, ``drive``). The vehicle fixes what is its own (odometer, variant coding);
    the drive its style (``style``: city, suburban or highway; random by default), its
    settings (lights, modes, doors) and where its slow signals start.

    FRAME_DTYPE; for a platform with CAN FD messages (``stla``) FD_FRAME_DTYPE, all its
    frames in one array (classic ones with FLAG_FD clear)."""
    if not duration_s > 0:
        raise ValueError(f"duration_s must be > 0, got {duration_s}")
    if style is not None and style not in STYLES:
        raise ValueError(f"style must be one of {', '.join(STYLES)}, got {style!r}")
    profile = load_profile(platform)
    root = np.random.SeedSequence([int(seed), zlib.crc32(platform.encode()), int(drive)])
    trace_seed, *msg_seeds = root.spawn(len(profile.messages) + 1)
    trace = DriveTrace.random(np.random.default_rng(trace_seed), style)
    parts = [
        simulate_message(
            msg, duration_s, start_ts, trace, np.random.default_rng(s), platform, int(seed)
        )
        for msg, s in zip(profile.messages, msg_seeds, strict=True)
    ]
    if profile.has_fd:
        parts = [to_fd(p) for p in parts]
    frames = np.concatenate(parts)
    return frames[np.argsort(frames["ts"], kind="stable")]


@dataclass(frozen=True)
class SimVehicle:
    vehicle: str  # pseudonymous id, e.g. veh-jeep-0003
    brand: str
    platform: str
    frames: np.ndarray


def simulate_drives(
    platform: str, vehicles: int, drives: int, duration_s: float, start_ts: float, first_seed: int
) -> tuple[list[np.ndarray], list[int]]:
    """``drives`` drives of each of ``vehicles`` vehicles (seeds ``first_seed`` + v), and
    the vehicle of each: training data whose calibration can hold whole vehicles out."""
    recordings, vehicle = [], []
    for v in range(vehicles):
        for d in range(drives):
            recordings.append(simulate_vehicle(platform, duration_s, start_ts, first_seed + v, d))
            vehicle.append(v)
    return recordings, vehicle


def simulate_fleet(
    brands: list[str],
    vehicles: int,
    duration_s: float,
    seed: int = 0,
    start_ts: float = 1.7e9,
    on_vehicle: Callable[[SimVehicle], None] | None = None,
) -> list[SimVehicle]:
    """``vehicles`` vehicles in total, brands assigned round-robin (vehicle i -> brands[i % len]).
    ``on_vehicle`` is called with each as it is done (progress)."""
    from detector.core.brands import load_fleet

    if not brands:
        raise ValueError("brands must not be empty")
    if vehicles < 1:
        raise ValueError(f"vehicles must be >= 1, got {vehicles}")
    fleet = load_fleet()
    out = []
    for i in range(vehicles):
        brand = brands[i % len(brands)]
        platform = fleet.platform_of(brand)
        vseed = int(np.random.SeedSequence([int(seed), i]).generate_state(1)[0])
        frames = simulate_vehicle(platform, duration_s, start_ts, vseed)
        out.append(SimVehicle(f"veh-{brand}-{i:04d}", brand, platform, frames))
        if on_vehicle is not None:
            on_vehicle(out[-1])
    return out
