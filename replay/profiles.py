"""Per-platform traffic profiles: which ids a vehicle sends, how often, and how.

A profile is built from the platform's opendbc DBC file (configs/brands.toml
names it). The DBC gives ids, DLCs and signal layouts; what it does not give is
filled in with documented, deterministic choices:

* **Period**: ``GenMsgCycleTime`` when the DBC has it. None of the five opendbc
  Stellantis files do, so otherwise :func:`plausible_period` assigns one by
  id band (lower id = higher priority = faster: <0x200 10 ms, <0x300 20 ms,
  <0x400 50 ms, <0x500 100 ms, <0x600 200 ms, <0x700 500 ms, else 1 s;
  29-bit ids 100 ms), capped at 20 ms for chassis/powertrain names (wheel,
  speed, steer, brake, engine, ...).
* **Not periodic**: diagnostics (``Req_Diag_*``/``Rep_Diag_*``, EOBD, 0x7DF,
  0x7E0-0x7EF, fault logs) and zero-length pseudo-messages are dropped.
* **Padding**: opendbc DBCs are reverse-engineered subsets of a real bus, so a
  platform with fewer than ``MIN_MESSAGES`` ids is padded with undocumented
  synthetic ids (``documented=False``) at unused addresses, so every platform
  carries a realistic 40-80 ids and ~1,000-3,000 frames/s. When the DBC has no
  vehicle-speed signal the padding starts with a synthetic powertrain set
  (speed, wheel speeds, engine, steering) so every vehicle has physics.
* **Roles**: each signal gets a role from its name (counter, checksum, speed,
  wheel_speed, rpm, gear, steer_angle, slow (coolant, fuel, battery: a level per
  drive), state (lights, doors, HVAC, drive mode: a setting per drive), ...; see
  ``_ROLE_PATTERNS``) that tells the simulator how to drive it. Like opendbc, only signals named exactly
  ``CHECKSUM`` carry a computed checksum; the checksum kind is per platform
  (``_CHECKSUM_BY_DBC``).

When ``opendbc`` is not importable (or a platform has no DBC), the profile is
fully synthetic: the powertrain set plus padding (``source="synthetic"``).

**CAN FD**: opendbc has no Stellantis CAN FD DBC (its FD files are VW MEB/MQB-evo,
Ford and GWM), so a platform with FD traffic takes its classic messages from a DBC
and its FD messages from code (``FD_MESSAGES``, keyed by platform): ``stla`` (STLA
Medium) is the AEE2010 DBC's classic bus plus the FD body and chassis messages of
:func:`stla_fd_messages`, 12-64 bytes each, every one but two behind an AUTOSAR
E2E-like header (CRC-8 in byte 0, a 4-bit counter in byte 1; checksum kind ``e2e``)
and most sent with bit-rate switching.
"""

from __future__ import annotations

import functools
import logging
import re
import zlib
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from detector.core.dbc import load_dbc, resolve_dbc
from detector.core.schema import EXTENDED_FLAG, FD_LENGTHS

log = logging.getLogger(__name__)

MIN_MESSAGES = 40
MAX_MESSAGES = 80

_ID_BANDS = (
    (0x200, 0.010),
    (0x300, 0.020),
    (0x400, 0.050),
    (0x500, 0.100),
    (0x600, 0.200),
    (0x700, 0.500),
)
_FAST_NAME = re.compile(
    r"WHEEL|SPEED|STEER|EPS|ABS|ESP|BRAKE|ENGINE|GEAR|ACCEL|DYN|TCU|ECU_DATA1|SAS"
)
_NOT_PERIODIC = re.compile(r"DIAG|EOBD|FAULTLOG|VECTOR__INDEPENDENT")
_CHECKSUM_BY_DBC = (("chrysler_", "chrysler"), ("fca_giorgio", "fca_giorgio"), ("psa_", "psa"))

# First match wins; matched against the upper-cased signal name.
_ROLE_PATTERNS: tuple[tuple[str, re.Pattern[str]], ...] = tuple(
    (role, re.compile(rx))
    for role, rx in (
        ("counter", r"(COUNTER|CNTR)$|^CPT_PROCESS"),
        ("wheel_rpm", r"NWHL"),
        ("wheel_speed", r"WHEEL_?SPEED|VWHL|VALWHL"),
        ("speed", r"VEHICLE_SPEED|SPEEDOMETER|VITESSE_VEHICULE|_VECU$|VEH_?SPEED"),
        ("rpm", r"RPM$|TACHOMETER|NENG|INPUTSHAFTSPEED"),
        ("output_shaft", r"OUTPUTSHAFTSPEED"),
        ("prndl", r"PRNDL"),
        ("gear", r"^(ACTUAL|DESIRED)_GEAR$|CURRENTGEAR|STGEAR$|STGEARRAT$"),
        ("steer_angle", r"STEER(ING)?_?ANGLE|^ANGLE$"),
        ("steer_rate", r"STEER(ING)?_?(RATE|SPEED)$"),
        ("distance", r"DISTANCE_ROUES|_SECU$|LTOTDST"),
        ("slow", r"COOLANT|TEMP|FUEL|BATT|VOLT|OIL_|AMBIENT|PRESSURE"),
        (
            "state",
            r"LIGHT|LAMP|DOOR|HVAC|BLOWER|CLIMA|DRIVE_?MODE|IGN|BELT|WIPER|HEAT|BEAM|HAZARD|TRUNK|HOOD",
        ),
    )
)
#: Roles given to a signal of any length (the others need >= 3 bits to be driven).
_ANY_LENGTH = ("counter", "state")


@dataclass(frozen=True)
class SignalSpec:
    """One signal's bit layout (DBC conventions) and the role that drives it."""

    name: str
    start: int  # DBC start bit: LSB for little-endian, MSB (sawtooth numbering) for big-endian
    length: int
    little_endian: bool
    signed: bool
    scale: float
    offset: float
    unit: str
    role: str  # counter | checksum | speed | ... | slow | state | smooth | constant

    @property
    def raw_max(self) -> int:
        return (1 << (self.length - 1)) - 1 if self.signed else (1 << self.length) - 1

    @property
    def raw_min(self) -> int:
        return -(1 << (self.length - 1)) if self.signed else 0


@dataclass(frozen=True)
class MessageSpec:
    name: str
    can_id: int  # bare 11/29-bit id
    extended: bool
    dlc: int  # data bytes: 0-8, or an FD message's length (12, 16, 20, 24, 32, 48, 64)
    period_s: float
    signals: tuple[SignalSpec, ...]
    checksum: str  # chrysler | fca_giorgio | psa | e2e | xor | none
    documented: bool  # True: from the DBC; False: synthetic padding
    fd: bool = False  # a CAN FD frame (FLAG_FD); its dlc field holds fd_dlc(dlc)
    brs: bool = False  # FD with bit-rate switching (FLAG_BRS)

    @property
    def frame_id(self) -> int:
        """The id as stored in FRAME_DTYPE.can_id (bit 31 = extended)."""
        return self.can_id | int(EXTENDED_FLAG) if self.extended else self.can_id

    def by_role(self, role: str) -> list[SignalSpec]:
        return [s for s in self.signals if s.role == role]


@dataclass(frozen=True)
class Profile:
    platform: str
    dbc: str | None
    source: str  # opendbc | synthetic
    messages: tuple[MessageSpec, ...]

    @property
    def frames_per_s(self) -> float:
        return float(sum(1.0 / m.period_s for m in self.messages))

    def message(self, frame_id: int) -> MessageSpec:
        return next(m for m in self.messages if m.frame_id == frame_id)

    @property
    def has_fd(self) -> bool:
        """Whether the platform sends CAN FD frames (its simulations are FD_FRAME_DTYPE)."""
        return any(m.fd for m in self.messages)


# ----------------------------------------------------------------- bit packing


def _field(sig: SignalSpec) -> tuple[int, str]:
    """(shift, byte order) of the signal inside the payload read as one 64-bit int."""
    if sig.little_endian:
        return sig.start, "<u8"
    byte, bit = divmod(sig.start, 8)
    return (7 - byte) * 8 + bit - sig.length + 1, ">u8"


def _window(sig: SignalSpec, width: int) -> tuple[int, SignalSpec]:
    """An 8-byte window of a ``width``-byte (FD) payload holding ``sig``: its first byte
    and ``sig`` renumbered inside it (both DBC byte orders number bits 8 * byte + bit)."""
    base = min(sig.start // 8, width - 8)
    return base, replace(sig, start=sig.start - 8 * base)


def pack_signal(data: np.ndarray, sig: SignalSpec, raw: np.ndarray) -> None:
    """OR raw values (n,) into ``data`` (n, 8) uint8 in place; the field must be zero.
    ``data`` may be wider (n, 12..64) for an FD payload."""
    if data.shape[1] != 8:
        base, sig = _window(sig, data.shape[1])
        data = data[:, base : base + 8]
    shift, order = _field(sig)
    raw = np.asarray(raw, dtype=np.int64).astype(np.uint64) & np.uint64((1 << sig.length) - 1)
    word = (raw << np.uint64(shift)).astype(order)
    data |= word.view(np.uint8).reshape(-1, 8)


def unpack_signal(data: np.ndarray, sig: SignalSpec) -> np.ndarray:
    """Raw values (int64) of ``sig`` in ``data`` (n, 8) uint8, or (n, 12..64) for FD."""
    if data.shape[1] != 8:
        base, sig = _window(sig, data.shape[1])
        data = data[:, base : base + 8]
    shift, order = _field(sig)
    word = np.ascontiguousarray(data, dtype=np.uint8).view(order).ravel()
    raw = ((word >> np.uint64(shift)) & np.uint64((1 << sig.length) - 1)).astype(np.int64)
    if sig.signed:
        raw = np.where(raw > sig.raw_max, raw - (1 << sig.length), raw)
    return raw


def signal_mask(sig: SignalSpec, width: int = 8) -> np.ndarray:
    """The (width,) uint8 byte mask the signal occupies."""
    data = np.zeros((1, width), dtype=np.uint8)
    pack_signal(data, sig, np.array([-1]))
    return data[0]


def _fits(sig: SignalSpec, dlc: int) -> bool:
    shift, _ = _field(sig)
    if shift < 0 or shift + sig.length > 64:
        return False
    return int(np.flatnonzero(signal_mask(sig)).max()) < dlc


# ------------------------------------------------------------- DBC -> profile


def plausible_period(can_id: int, name: str, extended: bool) -> float:
    """A cycle time for a message whose DBC has none (see module docstring)."""
    if extended:
        return 0.100
    period = next((p for upper, p in _ID_BANDS if can_id < upper), 1.000)
    if _FAST_NAME.search(name.upper()):
        period = min(period, 0.020)
    return period


def signal_role(name: str, length: int, scale: float, unit: str) -> str:
    upper = name.upper()
    if upper == "CHECKSUM":
        return "checksum"
    for role, rx in _ROLE_PATTERNS:
        if rx.search(upper) and (length >= 3 or role in _ANY_LENGTH):
            return role
    physical = (unit not in ("", "-", "yes/no")) or scale != 1
    return "smooth" if physical and length >= 6 else "constant"


def _is_periodic(can_id: int, name: str, dlc: int) -> bool:
    if dlc == 0 or _NOT_PERIODIC.search(name.upper()) or name.upper().startswith(("REQ_", "REP_")):
        return False
    return not (can_id == 0x7DF or 0x7E0 <= can_id <= 0x7EF)


def _signal_specs(msg, checksum: str) -> tuple[SignalSpec, ...]:
    specs = [
        SignalSpec(
            s.name,
            s.start,
            s.length,
            s.byte_order == "little_endian",
            bool(s.is_signed),
            float(s.scale),
            float(s.offset),
            str(s.unit or ""),
            signal_role(s.name, s.length, float(s.scale), str(s.unit or "")),
        )
        for s in msg.signals
        if not s.multiplexer_ids and 0 < s.length <= 64
    ]
    if checksum == "none":
        specs = [s if s.role != "checksum" else _as_constant(s) for s in specs]
    # Counters and checksums claim their bits first; later overlapping signals are dropped.
    specs.sort(key=lambda s: (s.role not in ("checksum", "counter"), s.start))
    taken = np.zeros(8, dtype=np.uint8)
    kept = []
    for s in specs:
        if _fits(s, msg.length) and not (signal_mask(s) & taken).any():
            taken |= signal_mask(s)
            kept.append(s)
    return tuple(kept)


def _as_constant(s: SignalSpec) -> SignalSpec:
    return SignalSpec(
        s.name, s.start, s.length, s.little_endian, s.signed, s.scale, s.offset, s.unit, "constant"
    )


def _profile_from_dbc(platform: str, dbc_name: str, path: Path) -> Profile:
    db = load_dbc(path)
    checksum = next((k for prefix, k in _CHECKSUM_BY_DBC if dbc_name.startswith(prefix)), "none")
    messages = []
    for m in db.messages:
        ext = bool(m.is_extended_frame)
        can_id = int(m.frame_id)
        if not _is_periodic(can_id, m.name, m.length):
            continue
        period = m.cycle_time / 1000.0 if m.cycle_time else plausible_period(can_id, m.name, ext)
        period = float(min(max(period, 0.005), 2.0))
        sigs = _signal_specs(m, checksum)
        messages.append(
            MessageSpec(m.name, can_id, ext, int(m.length), period, sigs, checksum, True)
        )
    messages.sort(key=lambda m: (m.period_s, m.can_id))
    messages = _with_fd(platform, messages[:MAX_MESSAGES])
    return Profile(platform, dbc_name, "opendbc", tuple(_pad(platform, messages, checksum)))


# ------------------------------------------------------------------ synthetic


def _sig(
    name: str, start: int, length: int, scale: float = 1.0, unit: str = "", role: str = ""
) -> SignalSpec:
    role = role or signal_role(name, length, scale, unit)
    return SignalSpec(name, start, length, False, False, scale, 0.0, unit, role)


def _core_messages(checksum: str) -> list[tuple[str, int, tuple[SignalSpec, ...]]]:
    """A synthetic powertrain set in Chrysler style (Motorola, counter byte 6, checksum byte 7)."""
    tail = (
        _sig("COUNTER", 51, 4),
        _sig("CHECKSUM", 63, 8, role="checksum" if checksum != "none" else "constant"),
    )
    return [
        ("SYN_VEHICLE_SPEED", 8, (_sig("VEHICLE_SPEED", 7, 16, 0.01, "km/h"),) + tail),
        (
            "SYN_WHEEL_SPEEDS",
            8,
            tuple(
                _sig(f"WHEEL_SPEED_{w}", 7 + 16 * i, 12, 0.05, "km/h")
                for i, w in enumerate(("FL", "FR", "RL"))
            )
            + tail,
        ),
        (
            "SYN_ENGINE",
            8,
            (_sig("ENGINE_RPM", 7, 16, 0.25, "rpm"), _sig("ACTUAL_GEAR", 19, 4)) + tail,
        ),
        (
            "SYN_STEERING",
            8,
            (_sig("STEER_ANGLE", 7, 16, 0.1, "deg"), _sig("STEERING_RATE", 23, 12, 1.0, "deg/s"))
            + tail,
        ),
    ]


def _padding_signals(rng: np.random.Generator, checksum: str) -> tuple[int, tuple[SignalSpec, ...]]:
    dlc = int(rng.choice([8, 8, 8, 6, 5, 4]))
    sigs = [
        _sig(f"SIG_{b}", 8 * b + 7, 8, role="constant" if rng.random() < 0.7 else "smooth")
        for b in range(dlc - 2)
    ]
    if rng.random() < 0.6:
        sigs += [
            _sig("COUNTER", 8 * (dlc - 2) + 3, 4),
            _sig("CHECKSUM", 8 * dlc - 1, 8, role="checksum"),
        ]
        if checksum == "none":
            sigs[-1] = _as_constant(sigs[-1])
    return dlc, tuple(sigs)


def _pad(platform: str, messages: list[MessageSpec], checksum: str) -> list[MessageSpec]:
    """Add undocumented synthetic ids (deterministic per platform) up to MIN_MESSAGES."""
    rng = np.random.default_rng(zlib.crc32(platform.encode()))
    # The PSA checksum is a 4-bit field; padding uses an 8-bit byte, so XOR there.
    pad_checksum = checksum if checksum in ("chrysler", "fca_giorgio") else "xor"
    used = {m.can_id for m in messages if not m.extended}
    free = np.array([i for i in range(0x0A0, 0x600) if i not in used])
    has_speed = any(m.by_role("speed") or m.by_role("wheel_speed") for m in messages)
    out = list(messages)
    core = [] if has_speed else _core_messages(pad_checksum)
    n_new = max(MIN_MESSAGES - len(out), len(core))
    ids = np.sort(rng.choice(free, size=n_new, replace=False))
    for k, can_id in enumerate(ids.tolist()):
        if k < len(core):
            name, dlc, sigs = core[k]
            period = 0.010 if can_id < 0x300 else 0.020
        else:
            name = f"UNDOC_{can_id:03X}"
            dlc, sigs = _padding_signals(rng, pad_checksum)
            period = plausible_period(can_id, name, False)
        out.append(MessageSpec(name, can_id, False, dlc, period, sigs, pad_checksum, False))
    return sorted(out, key=lambda m: m.can_id)


def synthetic_profile(platform: str) -> Profile:
    """The fallback profile: a synthetic powertrain set plus padding (and the platform's
    FD messages, if it has any), no DBC needed."""
    return Profile(
        platform, None, "synthetic", tuple(_pad(platform, _with_fd(platform, []), "xor"))
    )


# ------------------------------------------------------------------------ CAN FD


def _at(
    byte: int,
    name: str,
    length: int,
    role: str,
    scale: float = 1.0,
    unit: str = "",
    signed: bool = False,
    offset: float = 0.0,
) -> SignalSpec:
    """A Motorola (big-endian) signal whose most significant bit is bit 7 of ``byte``
    (or bit ``length - 1`` for a signal shorter than a byte)."""
    start = 8 * byte + min(length, 8) - 1
    return SignalSpec(name, start, length, False, signed, scale, offset, unit, role)


#: The AUTOSAR E2E-like header of an FD message: CRC-8 in byte 0, counter in byte 1's
#: low nibble (byte 1's high nibble is left to the message).
_E2E = (_at(0, "CHECKSUM", 8, "checksum"), _at(1, "COUNTER", 4, "counter"))


def _fd(
    name: str,
    can_id: int,
    length: int,
    period_s: float,
    signals: tuple[SignalSpec, ...],
    brs: bool = True,
    e2e: bool = True,
) -> MessageSpec:
    sigs = (_E2E if e2e else ()) + signals
    taken = np.zeros(length, np.uint8)
    for sig in sigs:  # a layout error here is a bug in the table below: fail loudly
        mask = signal_mask(sig, length)
        if mask.sum() == 0 or (mask & taken).any():
            raise AssertionError(f"{name}: signal {sig.name} overlaps or leaves the payload")
        taken |= mask
    if length not in FD_LENGTHS[9:]:
        raise AssertionError(f"{name}: {length} is not a CAN FD length")
    return MessageSpec(
        name, can_id, False, length, period_s, sigs, "e2e" if e2e else "none", True, True, brs
    )


def stla_fd_messages() -> list[MessageSpec]:
    """STLA Medium's CAN FD body and chassis messages (defined here: no public DBC).

    Seven lengths (12-64 bytes), 10-200 ms. Chassis and powertrain frames carry the
    drive's physics (speed, wheel speeds, rpm, gear, steering) so couplings span the
    classic and FD buses; body frames carry settings and slow levels. All but the
    HVAC frame sit behind the E2E header; body frames go without bit-rate switching
    (a slow body bus), the rest with it.
    """
    # Sizes, scales and offsets give each smooth or slow signal (which the simulator
    # moves within its raw range) a plausible physical range.
    kmh = dict(scale=0.01, unit="km/h")
    degc = dict(scale=0.5, unit="degC", offset=-40.0)
    wheels = tuple(
        _at(4 + 2 * i, f"WHEEL_SPEED_{w}", 16, "wheel_speed", **kmh)
        for i, w in enumerate(("FL", "FR", "RL", "RR"))
    )
    objects = tuple(
        sig
        for i in range(6)
        for sig in (
            _at(2 + 10 * i, f"OBJ{i}_DISTANCE", 12, "smooth", 0.05, "m"),
            _at(4 + 10 * i, f"OBJ{i}_REL_SPEED", 10, "smooth", 0.1, "m/s", True),
            _at(6 + 10 * i, f"OBJ{i}_LATERAL", 10, "smooth", 0.05, "m", True),
            _at(8 + 10 * i, f"OBJ{i}_CLASS", 4, "state"),
            _at(9 + 10 * i, f"OBJ{i}_CONFIDENCE", 7, "smooth", 1.0, "%"),
        )
    )
    cells = tuple(
        _at(b, f"CELL_VOLT_{b - 8:02d}", 8, "slow", 0.007, "V", offset=2.5) for b in range(8, 48)
    )
    return [
        _fd("FD_VEHICLE_DYNAMICS", 0x0C0, 32, 0.010, (
            _at(2, "VEHICLE_SPEED", 16, "speed", **kmh), *wheels,
            _at(12, "YAW_RATE", 10, "smooth", 0.1, "deg/s", True),
            _at(14, "LAT_ACCEL", 10, "smooth", 0.01, "m/s2", True),
            _at(16, "LONG_ACCEL", 10, "smooth", 0.01, "m/s2", True),
            _at(18, "STEER_ANGLE", 16, "steer_angle", 0.1, "deg", True),
            _at(20, "ODOMETER", 24, "distance", 0.1, "km"),
            _at(24, "ESP_STATUS", 2, "state"),
        )),
        _fd("FD_POWERTRAIN", 0x0C4, 24, 0.010, (
            _at(2, "ENGINE_RPM", 16, "rpm", 0.25, "rpm"),
            _at(4, "ACTUAL_GEAR", 4, "gear"),
            _at(5, "ENGINE_TORQUE", 10, "smooth", 0.5, "Nm", True),
            _at(7, "ACCEL_PEDAL", 8, "smooth", 0.4, "%"),
            _at(9, "OUTPUT_SHAFT_SPEED", 16, "output_shaft", 0.25, "rpm"),
            _at(11, "COOLANT_TEMP", 8, "slow", **degc),
            _at(12, "OIL_TEMP", 8, "slow", **degc),
            _at(13, "PRNDL", 4, "prndl"),
        )),
        _fd("FD_EPS", 0x0D6, 16, 0.010, (
            _at(2, "STEER_ANGLE", 16, "steer_angle", 0.1, "deg", True),
            _at(4, "STEER_RATE", 16, "steer_rate", 1.0, "deg/s", True),
            _at(6, "EPS_TORQUE", 10, "smooth", 0.01, "Nm", True),
            _at(8, "EPS_MODE", 3, "state"),
        )),
        _fd("FD_BRAKE", 0x0E2, 12, 0.020, (
            _at(2, "BRAKE_PRESSURE", 10, "smooth", 0.25, "bar"),
            _at(4, "WHEEL_RPM_AVG", 16, "wheel_rpm", 0.1, "rpm"),
            _at(6, "BRAKE_LIGHT", 1, "state"),
        )),
        _fd("FD_CHASSIS_CTRL", 0x11A, 48, 0.020, (
            *(_at(2 + i, f"RIDE_HEIGHT_{w}", 8, "smooth", 1.0, "mm", offset=50.0)
              for i, w in enumerate(("FL", "FR", "RL", "RR"))),
            *(_at(6 + i, f"DAMPER_CURRENT_{w}", 8, "smooth", 0.01, "A")
              for i, w in enumerate(("FL", "FR", "RL", "RR"))),
            _at(10, "VEHICLE_SPEED", 16, "speed", **kmh),
            _at(12, "DRIVE_MODE", 3, "state"),
            *(_at(b, f"CHASSIS_CFG_{b}", 8, "constant") for b in range(24, 32)),
        )),
        _fd("FD_ADAS_OBJECTS", 0x1F4, 64, 0.050, objects),
        _fd("FD_BODY_STATUS", 0x2A4, 20, 0.100, (
            _at(2, "DRIVER_DOOR", 1, "state"), _at(3, "PASSENGER_DOOR", 1, "state"),
            _at(4, "LOW_BEAM", 1, "state"), _at(5, "WIPER_MODE", 3, "state"),
            _at(6, "AMBIENT_TEMP", 8, "slow", **degc),
            *(_at(b, f"CODING_{b}", 8, "constant") for b in range(8, 20)),
        ), brs=False),
        _fd("FD_BATTERY", 0x2C6, 48, 0.100, (
            _at(2, "BATT_VOLTAGE", 8, "slow", 0.5, "V", offset=250.0),
            _at(3, "BATT_CURRENT", 12, "smooth", 0.1, "A", True),
            _at(5, "BATT_TEMP", 8, "slow", **degc),
            _at(6, "BATT_SOC", 8, "slow", 0.4, "%"),
            *cells,
        )),
        _fd("FD_HVAC", 0x3B4, 16, 0.200, (
            _at(0, "HVAC_MODE", 3, "state"), _at(1, "BLOWER_LEVEL", 4, "state"),
            _at(2, "CABIN_TEMP", 8, "slow", **degc),
            _at(3, "HVAC_SETPOINT", 6, "state", 0.5, "degC", offset=15.0),
            _at(4, "COUNTER", 4, "counter"),
        ), brs=False, e2e=False),
        _fd("FD_CLUSTER", 0x3F4, 64, 0.200, (
            _at(2, "ODOMETER", 24, "distance", 0.1, "km"),
            _at(5, "DISPLAY_SPEED", 16, "speed", 1.0, "km/h"),
            _at(7, "FUEL_LEVEL", 8, "slow", 0.4, "%"),
            *(_at(b, f"CLUSTER_CFG_{b}", 8, "constant") for b in range(8, 40)),
        )),
    ]  # fmt: skip


#: Platforms with CAN FD traffic and the code that defines their FD messages.
FD_MESSAGES = {"stla": stla_fd_messages}


def _with_fd(platform: str, messages: list[MessageSpec]) -> list[MessageSpec]:
    """``messages`` plus the platform's FD messages (their ids must be free)."""
    make = FD_MESSAGES.get(platform)
    if make is None:
        return messages
    fd = make()
    clash = {m.can_id for m in fd} & {m.can_id for m in messages if not m.extended}
    if clash:
        raise AssertionError(f"{platform}: FD ids {sorted(map(hex, clash))} clash with the DBC's")
    return messages + fd


@functools.cache
def load_profile(platform: str) -> Profile:
    """The traffic profile of ``platform`` (cached) from its DBC (``resolve_dbc``: a path,
    or an opendbc name); synthetic when there is none."""
    from detector.core.brands import load_fleet

    path = resolve_dbc(load_fleet().platform_dbc.get(platform, ""))
    if path is None:
        log.warning("platform %s: no DBC available, using the synthetic profile", platform)
        return synthetic_profile(platform)
    return _profile_from_dbc(platform, path.name, path)
