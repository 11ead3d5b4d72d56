"""CAN FD in the simulator and the attacks: the ``stla`` platform (STLA Medium) sends
12-64 byte FD frames with counters and E2E checksums beside classic frames; every
attack family works on FD ids; classic platforms and attacks are bit for bit what
they were before FD; an error-frame flood (bus-off attack) is injectable anywhere."""

from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest

from detector.core.brands import load_fleet
from detector.core.fd import fd_lengths, to_lanes
from detector.core.schema import (
    EXTENDED_FLAG,
    FD_FRAME_DTYPE,
    FLAG_BRS,
    FLAG_ERROR,
    FLAG_FD,
    FRAME_DTYPE,
    LABEL_CODE,
    fd_dlc,
)
from replay.attacks import ERROR_CLASS, INJECTABLE, AttackSpec, inject
from replay.profiles import load_profile, unpack_signal
from replay.simulator import simulate_fleet, simulate_vehicle

FD_SIZES = {12, 16, 20, 24, 32, 48, 64}
DYNAMICS, ADAS = 0x0C0, 0x1F4  # FD_VEHICLE_DYNAMICS (32 B, 10 ms), FD_ADAS_OBJECTS (64 B, 50 ms)


@pytest.fixture(scope="module")
def stla() -> np.ndarray:
    return simulate_vehicle("stla", 12.0, seed=4)


def _fd(frames: np.ndarray) -> np.ndarray:
    return (frames["flags"] & FLAG_FD) != 0


# ------------------------------------------------------------------ the stla platform


def test_ds_runs_on_stla_and_its_vehicles_send_fd():
    fleet = load_fleet()
    assert fleet.platform_of("ds") == "stla"
    assert fleet.brands_of("aee2010") == ["citroen", "lancia", "peugeot"]
    (car,) = simulate_fleet(["ds"], 1, 2.0, seed=1)
    assert car.platform == "stla" and car.frames.dtype == FD_FRAME_DTYPE
    assert _fd(car.frames).any() and (~_fd(car.frames)).any()


def test_stla_profile_holds_fd_messages_of_every_fd_length():
    prof = load_profile("stla")
    fd = [m for m in prof.messages if m.fd]
    assert {m.dlc for m in fd} == FD_SIZES
    assert sum(m.brs for m in fd) > len(fd) / 2  # most with bit-rate switching
    assert all(m.by_role("counter") for m in fd)
    assert sum(m.checksum == "e2e" and len(m.by_role("checksum")) == 1 for m in fd) >= len(fd) - 1
    classic = [m for m in prof.messages if not m.fd]
    assert len(classic) >= 40 and all(m.dlc <= 8 for m in classic)
    assert len({m.frame_id for m in prof.messages}) == len(prof.messages)
    assert not any(
        load_profile(p).has_fd for p in ("cusw", "pacifica", "giorgio", "aee2010", "omega")
    )


def test_stla_frames_fd_and_classic_in_one_ts_ordered_array(stla):
    prof = load_profile("stla")
    assert stla.dtype == FD_FRAME_DTYPE
    assert np.all(np.diff(stla["ts"]) >= 0)
    fd = _fd(stla)
    lengths = fd_lengths(stla)
    assert set(np.unique(lengths[fd]).tolist()) == FD_SIZES
    for m in prof.messages:
        rows = stla[stla["can_id"] == m.frame_id]
        assert len(rows) == pytest.approx(12.0 / m.period_s, abs=2), m.name
        assert np.all(_fd(rows) == m.fd)
        if m.fd:  # dlc is the length's code; BRS as the message says
            assert np.all(rows["dlc"] == fd_dlc(m.dlc)) and np.all(fd_lengths(rows) == m.dlc)
            assert np.all(((rows["flags"] & FLAG_BRS) != 0) == m.brs)
        else:
            assert np.all(rows["dlc"] == m.dlc) and np.all(rows["flags"] == 0)
        assert not rows["data"][:, m.dlc :].any(), f"{m.name}: bytes past its length"
    assert 0.5 < np.mean((stla["flags"][fd] & FLAG_BRS) != 0) < 1.0
    lanes = to_lanes(stla)  # what the feature pipeline sees
    assert lanes.dtype == FRAME_DTYPE
    # an FD frame: a lane per 8 bytes and its checksum lane
    assert len(lanes) == (~fd).sum() + ((lengths[fd].astype(int) + 7) // 8).sum() + fd.sum()


def _crc8_j1850(data: bytes) -> int:
    """CRC-8/SAE-J1850 bit by bit (poly 0x1D, init 0xFF, xorout 0xFF)."""
    crc = 0xFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = ((crc << 1) ^ 0x1D) & 0xFF if crc & 0x80 else (crc << 1) & 0xFF
    return crc ^ 0xFF


def test_stla_fd_counters_roll_and_e2e_checksums_hold(stla):
    assert _crc8_j1850(b"123456789") == 0x4B  # the catalogued check value
    for m in (m for m in load_profile("stla").messages if m.fd):
        rows = stla[stla["can_id"] == m.frame_id]
        data = rows["data"][:, : m.dlc]
        (counter,) = m.by_role("counter")
        c = unpack_signal(data, counter)
        assert np.all(np.diff(c) % (1 << counter.length) == 1), m.name
        if m.checksum != "e2e":
            continue
        (crc,) = m.by_role("checksum")
        assert crc.start == 7 and crc.length == 8  # byte 0
        head = bytes([m.can_id & 0xFF, m.can_id >> 8])
        sample = data[:: max(1, len(data) // 40)]
        for row in sample:
            assert row[0] == _crc8_j1850(head + row[1:].tobytes()), m.name
        # the same bytes under the neighbouring id fail: the Data ID is in the CRC
        # (the table is a permutation, so one differing byte always shows)
        head = bytes([(m.can_id ^ 1) & 0xFF, m.can_id >> 8])
        assert all(row[0] != _crc8_j1850(head + row[1:].tobytes()) for row in sample), m.name


def test_stla_fd_physics_agree_with_the_classic_bus(stla):
    prof = load_profile("stla")
    dyn = prof.message(DYNAMICS)
    rows = stla[stla["can_id"] == DYNAMICS]
    data = rows["data"][:, : dyn.dlc]
    sig = {s.name: s for s in dyn.signals}

    def phys(name):
        s = sig[name]
        return unpack_signal(data, s) * s.scale + s.offset

    speed = phys("VEHICLE_SPEED")
    assert np.all((speed >= 0) & (speed < 200))
    assert np.abs(np.diff(speed)).max() < 0.5  # km/h in 10 ms
    for w in ("FL", "FR", "RL", "RR"):
        assert np.abs(phys(f"WHEEL_SPEED_{w}") - speed).max() < 0.02 * speed.max() + 0.5
    # the classic bus's speed (AEE2010 Dyn_Veh) is the same drive
    classic = prof.message(0x388)
    (vsig,) = classic.by_role("speed")
    crow = stla[stla["can_id"] == 0x388]
    v = unpack_signal(crow["data"][:, :8], vsig) * vsig.scale + vsig.offset
    assert np.abs(np.interp(rows["ts"], crow["ts"], v) - speed).max() < 1.0
    odo = phys("ODOMETER")
    assert np.all(np.diff(odo) >= 0) and odo[-1] - odo[0] < 0.5  # km in 12 s


# ------------------------------------------------- classic platforms: bit-identical

# sha256[:16] of simulate_vehicle(p, 6.0, 1.7e9, seed=11) and of each attack
# ``kind:start=3,duration=2`` injected into it with seed=5, written by the code of
# main at 6983f82 (before CAN FD). A change here is a change to every classic model.
BEFORE_FD = json.loads("""{
 "cusw": "19b0c60f51f38d34", "cusw/dos": "2a90e3b4d369e0aa", "cusw/fuzzing": "105af717f82035ed",
 "cusw/spoofing": "eeb5cc1b93d62525", "cusw/masquerade": "93f6c2bcff35ffd9",
 "cusw/suspension": "8ed8338065966e19", "cusw/replay": "ba9345c657faef75",
 "pacifica": "007e2a3944423286", "giorgio": "193ece888ead38a2", "aee2010": "8847348056c5bfc2", "omega": "1d57ad9498a4dc05"
}""")


def _digest(frames: np.ndarray) -> str:
    return hashlib.sha256(frames.tobytes()).hexdigest()[:16]


@pytest.mark.parametrize("platform", ["cusw", "pacifica", "giorgio", "aee2010", "omega"])
def test_classic_platforms_simulate_what_they_did_before_fd(platform):
    if load_profile(platform).source != "opendbc":
        pytest.skip("opendbc not installed: the digests are of the opendbc profiles")
    frames = simulate_vehicle(platform, 6.0, 1.7e9, seed=11)
    assert frames.dtype == FRAME_DTYPE
    assert _digest(frames) == BEFORE_FD[platform]
    if platform == "cusw":
        for kind in INJECTABLE:
            out, _ = inject(frames, AttackSpec.parse(f"{kind}:start=3,duration=2"), seed=5)
            assert out.dtype == FRAME_DTYPE
            assert _digest(out) == BEFORE_FD[f"cusw/{kind}"], kind


# ------------------------------------------------------------ attacks on FD ids


def _attack(frames, text, seed=1):
    out, span = inject(frames, AttackSpec.parse(text), seed=seed)
    assert out.dtype == FD_FRAME_DTYPE and np.all(np.diff(out["ts"]) >= 0)
    return out, span


def _benign_untouched(orig, out):
    assert out[out["label"] == 0].tobytes() == orig.tobytes()


def _in(frames, span):
    return (frames["ts"] >= span.start_ts) & (frames["ts"] < span.end_ts)


def _forged_bytes(a: np.ndarray, b: np.ndarray, length: int) -> set[int]:
    """The byte positions, within ``length``, where rows of a differ from rows of b."""
    return set(np.flatnonzero((a[..., :length] != b[..., :length]).reshape(-1, length).any(axis=0)).tolist())


@pytest.mark.parametrize("target", [DYNAMICS, ADAS])
def test_dos_floods_fd_frames(stla, target):
    out, span = _attack(stla, f"dos:start=4,duration=2,rate=2000,id={target:#x}")
    _benign_untouched(stla, out)
    added = out[out["label"] != 0]
    length = int(fd_lengths(stla[stla["can_id"] == target][:1])[0])
    assert np.all(added["label"] == LABEL_CODE["dos"]) and len(added) == 4000
    assert np.all(added["can_id"] == target) and np.all(_in(added, span))
    assert np.all(_fd(added)) and np.all(fd_lengths(added) == length) and not added["data"].any()
    # at an id the bus does not use (the default 0x000): 64-byte FD frames with BRS
    out, _ = _attack(stla, "dos:start=4,duration=1")
    added = out[out["label"] != 0]
    assert np.all(added["can_id"] == 0) and np.all(fd_lengths(added) == 64)
    assert np.all(added["flags"] == FLAG_FD | FLAG_BRS)


def test_fuzzing_sends_random_fd_ids_lengths_and_bytes(stla):
    out, span = _attack(stla, "fuzzing:start=4,duration=2,rate=1500")
    _benign_untouched(stla, out)
    added = out[out["label"] != 0]
    assert len(added) == 3000 and np.all(added["label"] == LABEL_CODE["fuzzing"])
    assert np.all(_fd(added)) and np.all(_in(added, span))
    lengths = fd_lengths(added)
    assert set(np.unique(lengths).tolist()) == FD_SIZES
    assert len(np.unique(added["can_id"])) > 1000 and added["can_id"].max() <= 0x7FF
    past = np.arange(64) >= lengths[:, None]
    assert not added["data"][past].any()  # nothing past a frame's length
    assert added["data"][~past].std() > 60  # random bytes across the whole length


@pytest.mark.parametrize("target", [DYNAMICS, ADAS])
def test_spoofing_forges_an_fd_id_across_its_length(stla, target):
    out, span = _attack(stla, f"spoofing:start=4,duration=2,id={target:#x}")
    _benign_untouched(stla, out)
    added = out[out["label"] != 0]
    own = stla[stla["can_id"] == target]
    period = float(np.median(np.diff(own["ts"])))
    assert np.all(added["label"] == LABEL_CODE["spoofing"]) and np.all(_in(added, span))
    assert len(added) == pytest.approx(4 * 2.0 / period, rel=0.05)
    assert np.all(added["can_id"] == target) and np.all(added["flags"] == own["flags"][0])
    assert np.all(added["dlc"] == own["dlc"][0])
    length = int(fd_lengths(own[:1])[0])
    genuine = own[own["ts"] < span.start_ts]["data"][-1]
    assert (added["data"][:, :length] != genuine[None, :length]).any(axis=1).all()
    assert not added["data"][:, length:].any()


@pytest.mark.parametrize("target", [DYNAMICS, ADAS])
def test_masquerade_forges_one_signal_of_the_fd_id_in_the_window(stla, target):
    out, span = _attack(stla, f"masquerade:start=4,duration=2,id={target:#x}")
    assert len(out) == len(stla) and np.all(out["ts"] == stla["ts"])
    hit = (stla["can_id"] == target) & _in(stla, span)
    assert np.all((out["label"] != 0) == hit)
    assert np.all(out["label"][hit] == LABEL_CODE["masquerade"])
    assert np.all(out["flags"] == stla["flags"]) and np.all(out["dlc"] == stla["dlc"])
    length = int(fd_lengths(stla[hit][:1])[0])
    forged = _forged_bytes(out["data"][hit], stla["data"][hit], length)
    assert len(forged) == 1  # one signal, wherever it lies in the frame
    assert (out["data"][hit] != stla["data"][hit]).any(axis=1).all()
    assert out[~hit].tobytes() == stla[~hit].tobytes()


def test_suspension_silences_an_fd_id(stla):
    out, span = _attack(stla, f"suspension:start=4,duration=2,id={ADAS:#x}")
    gone = (stla["can_id"] == ADAS) & _in(stla, span)
    assert gone.sum() == pytest.approx(40, abs=1)
    assert out.tobytes() == stla[~gone].tobytes()
    assert span.kind == "suspension" and span.can_id == ADAS


def test_replay_resends_earlier_fd_frames_verbatim(stla):
    out, span = _attack(stla, f"replay:start=4,duration=2,id={DYNAMICS:#x}")
    _benign_untouched(stla, out)
    added = out[out["label"] != 0]
    assert np.all(added["label"] == LABEL_CODE["replay"]) and np.all(_in(added, span))
    earlier = stla[(stla["can_id"] == DYNAMICS) & (stla["ts"] < span.start_ts)]
    assert len(added) == pytest.approx(200, abs=2)
    assert np.all(_fd(added)) and np.all(added["flags"] == earlier["flags"][0])
    seen = {row.tobytes() for row in earlier["data"]}
    assert all(row.tobytes() in seen for row in added["data"])


def test_attacks_on_a_classic_id_of_an_fd_bus_stay_classic(stla):
    out, _ = _attack(stla, "spoofing:start=4,duration=2,id=0x2F5")  # AEE2010 STEERING, 7 B
    added = out[out["label"] != 0]
    assert len(added) > 0 and not _fd(added).any() and np.all(added["dlc"] == 7)
    assert not added["data"][:, 7:].any()


# ------------------------------------------------------------ error-frame flood


@pytest.mark.parametrize("platform", ["stla", "cusw"])
def test_errorflood_floods_error_frames_labelled_dos(platform, stla):
    frames = stla if platform == "stla" else simulate_vehicle("cusw", 8.0, seed=3)
    out, span = inject(frames, AttackSpec.parse("errorflood:start=3,duration=2,rate=1000"), seed=2)
    assert out.dtype == frames.dtype and np.all(np.diff(out["ts"]) >= 0)
    _benign_untouched(frames, out)
    added = out[out["label"] != 0]
    assert len(added) == 2000 and np.all(_in(added, span))
    assert np.all(added["label"] == LABEL_CODE["dos"])
    assert np.all(added["flags"] == FLAG_ERROR)  # an error frame, never FD
    assert np.all(added["can_id"] == int(EXTENDED_FLAG) | ERROR_CLASS) and np.all(added["dlc"] == 8)
    assert np.all(added["data"][:, 2] == 0x04)  # a stuff error
    assert np.all(added["data"][:, 3] == 0x0A)  # in the data field
    assert added["data"][-1, 7] == 127  # receive error counter: error passive
    assert span.kind == "dos" and span.attack == "errorflood" and span.can_id is None
    assert span.to_dict()["attack"] == "errorflood" and span.to_dict()["kind"] == "dos"


def test_errorflood_on_a_victim_takes_it_off_the_bus(stla):
    out, span = inject(stla, AttackSpec.parse(f"errorflood:start=3,duration=2,id={DYNAMICS:#x}"))
    victim = (stla["can_id"] == DYNAMICS) & _in(stla, span)
    assert victim.sum() == pytest.approx(200, abs=2)
    assert out[out["label"] == 0].tobytes() == stla[~victim].tobytes()
    assert np.count_nonzero(out["flags"] == FLAG_ERROR) == 4000 and span.can_id == DYNAMICS
    with pytest.raises(Exception, match="0x7AB"):
        inject(stla, AttackSpec.parse("errorflood:start=3,duration=2,id=0x7AB"))


def test_errorflood_through_the_cli_and_candump(tmp_path):
    pytest.importorskip("replay.writers")
    from detector.cli import main
    from replay.readers import read_frames

    out = tmp_path / "fleet"
    argv = ["simulate", "--brands", "jeep", "--vehicles", "1", "--duration", "4", "--seed", "3"]
    argv += ["--out", str(out), "--format", "log"]
    argv += ["--attack", "errorflood:start=1,duration=1,rate=800"]
    assert main(argv) == 0
    manifest = json.loads((out / "fleet.json").read_text())
    assert [(a["kind"], a["attack"]) for a in manifest["attacks"]] == [("dos", "errorflood")]
    frames = read_frames(out / manifest["vehicles"][0]["file"], "log")
    err = frames[(frames["flags"] & FLAG_ERROR) != 0]
    assert len(err) == 800 and np.all(err["label"] == LABEL_CODE["dos"])
    assert np.all(err["can_id"] == int(EXTENDED_FLAG) | ERROR_CLASS)


def test_errorflood_parses_and_bad_kinds_name_it():
    spec = AttackSpec.parse("errorflood:start=1,duration=2,rate=500")
    assert (spec.kind, spec.rate_hz, spec.can_id) == ("errorflood", 500.0, None)
    with pytest.raises(Exception, match="errorflood"):
        AttackSpec.parse("busoff:start=1,duration=2")
