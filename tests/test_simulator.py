"""Fleet simulator: profiles from the opendbc DBCs, traffic realism, determinism, CLI."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest

from detector.core.schema import FRAME_DTYPE, LABEL_CODE
from replay.profiles import load_profile, pack_signal, synthetic_profile, unpack_signal
from replay.simulator import JITTER, compute_checksum, simulate_fleet, simulate_vehicle

PLATFORMS = ["cusw", "pacifica", "giorgio", "aee2010", "omega"]


@pytest.fixture(scope="module")
def traffic() -> dict[str, np.ndarray]:
    return {p: simulate_vehicle(p, 12.0, seed=7) for p in PLATFORMS}


def _frames_of(frames: np.ndarray, frame_id: int) -> np.ndarray:
    return frames[frames["can_id"] == frame_id]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_profiles_load_with_plausible_layouts(platform):
    pytest.importorskip("opendbc")
    prof = load_profile(platform)
    assert prof.source == "opendbc" and prof.dbc.endswith(".dbc")
    assert 40 <= len(prof.messages) <= 80
    ids = [m.frame_id for m in prof.messages]
    assert len(set(ids)) == len(ids)
    assert any(m.documented for m in prof.messages)
    for m in prof.messages:
        assert 1 <= m.dlc <= 8
        assert 0.010 <= m.period_s <= 1.0
    assert 1000 <= prof.frames_per_s <= 3000
    assert load_profile(platform) is prof  # cached


def test_synthetic_fallback_profile_simulates():
    prof = synthetic_profile("nodbc")
    assert prof.source == "synthetic" and len(prof.messages) >= 40
    assert any(m.by_role("speed") for m in prof.messages)
    frames = simulate_vehicle("some-unknown-platform", 2.0)
    assert len(frames) > 1000


def test_load_profile_falls_back_without_opendbc(monkeypatch):
    import replay.profiles as profiles

    monkeypatch.setattr("detector.core.dbc.opendbc_dir", lambda: None)
    profiles.load_profile.cache_clear()
    try:
        prof = profiles.load_profile("cusw")
        assert prof.source == "synthetic" and prof.dbc is None
    finally:
        profiles.load_profile.cache_clear()


def test_pack_unpack_round_trip_both_byte_orders():
    rng = np.random.default_rng(0)
    for sig in (
        SimpleNamespace(start=5, length=13, little_endian=False, signed=False, raw_max=8191),
        SimpleNamespace(start=12, length=11, little_endian=True, signed=True, raw_max=1023),
    ):
        lo = -(1 << (sig.length - 1)) if sig.signed else 0
        raw = rng.integers(lo, sig.raw_max + 1, 50)
        data = np.zeros((50, 8), np.uint8)
        pack_signal(data, sig, raw)
        np.testing.assert_array_equal(unpack_signal(data, sig), raw)
    # Motorola 5|13: MSB is bit 5 of byte 0 -> spans byte 0 bits 5..0 and byte 1
    data = np.zeros((1, 8), np.uint8)
    pack_signal(data, SimpleNamespace(start=5, length=13, little_endian=False), np.array([0x1FFF]))
    assert data[0, :2].tolist() == [0x3F, 0xFE]


@pytest.mark.parametrize("platform", PLATFORMS)
def test_periods_match_profile_within_jitter(platform, traffic):
    frames = traffic[platform]
    assert frames.dtype == FRAME_DTYPE and np.all(np.diff(frames["ts"]) >= 0)
    assert np.all(frames["label"] == 0)
    prof = load_profile(platform)
    assert set(np.unique(frames["can_id"]).tolist()) == {m.frame_id for m in prof.messages}
    for m in prof.messages:
        ts = _frames_of(frames, m.frame_id)["ts"]
        d = np.diff(ts)
        assert abs(np.median(d) - m.period_s) <= JITTER * m.period_s, m.name
        assert np.all(np.abs(d - m.period_s) <= 2 * JITTER * m.period_s + 1e-9), m.name
        assert np.all(_frames_of(frames, m.frame_id)["dlc"] == m.dlc)


@pytest.mark.parametrize("platform", PLATFORMS)
def test_counters_increment_and_checksums_validate(platform, traffic):
    frames = traffic[platform]
    n_counters = n_checksums = 0
    for m in load_profile(platform).messages:
        data = _frames_of(frames, m.frame_id)["data"]
        for sig in m.by_role("counter"):
            c = unpack_signal(data, sig)
            assert np.all(np.diff(c) % (1 << sig.length) == 1), (m.name, sig.name)
            n_counters += 1
        for sig in m.by_role("checksum"):
            expect = compute_checksum(m.checksum, m.can_id, data, sig, m.dlc)
            np.testing.assert_array_equal(unpack_signal(data, sig), expect)
            n_checksums += 1
    assert n_counters > 5 and n_checksums > 3


def test_checksums_agree_with_opendbc_car_code(traffic):
    chrysler = pytest.importorskip("opendbc.car.chrysler.chryslercan")
    psa = pytest.importorskip("opendbc.car.psa.psacan")
    funcs = {
        "chrysler": chrysler.chrysler_checksum,
        "fca_giorgio": chrysler.fca_giorgio_checksum,
        "psa": psa.psa_checksum,
    }
    checked = 0
    for platform in ("cusw", "pacifica", "giorgio", "aee2010"):
        for m in load_profile(platform).messages:
            sigs = m.by_role("checksum")
            # opendbc's 8-bit CRCs assume the checksum is the last byte
            if not sigs or (m.checksum != "psa" and sigs[0].start // 8 != m.dlc - 1):
                continue
            for fr in _frames_of(traffic[platform], m.frame_id)[:5]:
                d = bytearray(bytes(fr["data"][: m.dlc]))
                want = funcs[m.checksum](m.can_id, SimpleNamespace(start_bit=sigs[0].start), d)
                assert unpack_signal(fr["data"][None, :], sigs[0])[0] == want, m.name
                checked += 1
    assert checked > 50


def _physical(frames, msg, sig):
    data = _frames_of(frames, msg.frame_id)["data"]
    return unpack_signal(data, sig) * sig.scale + sig.offset


@pytest.mark.parametrize("platform", PLATFORMS)
def test_physics_smooth_and_consistent(platform, traffic):
    frames = traffic[platform]
    prof = load_profile(platform)
    to_ms = {"km/h": 1 / 3.6}
    speeds, wheels = [], []
    for m in prof.messages:
        for sig in m.by_role("speed") + m.by_role("wheel_speed"):
            v = _physical(frames, m, sig) * to_ms.get(sig.unit.lower(), 1.0)
            # |dv| per frame <= 2.5 m/s^2 * period + quantisation + sensor noise
            assert np.all(np.abs(np.diff(v)) <= 2.5 * m.period_s + 2 * sig.scale + 0.1), sig.name
            assert np.all((v >= 0.0) & (v <= 45)), sig.name
            (speeds if sig.role == "speed" else wheels).append(np.median(v))
        for sig in m.by_role("rpm"):
            rpm = _physical(frames, m, sig)
            assert np.all(rpm >= 700) and np.all(rpm <= 6000), sig.name
    assert wheels, "every platform has wheel speeds"
    ref = speeds or wheels
    for w in wheels:
        assert w == pytest.approx(ref[0], rel=0.05)


def test_rpm_follows_speed_and_gear():
    frames = simulate_vehicle("giorgio", 20.0, seed=11)
    prof = load_profile("giorgio")
    eng = next(m for m in prof.messages if m.by_role("rpm"))
    rpm = _physical(frames, eng, eng.by_role("rpm")[0])
    abs1 = next(m for m in prof.messages if m.name == "ABS_1")
    v = _physical(frames, abs1, abs1.by_role("wheel_speed")[0])
    # engine speed / wheel speed = gear ratio x final drive: a handful of discrete values
    n = min(len(rpm), len(v))
    ratio = rpm[:n] / (v[:n] / (2 * np.pi * 0.33) * 60)
    assert np.all((ratio > 1.5) | (rpm[:n] <= 801)) and np.all(ratio < 14)


def test_drives_differ_like_real_ones():
    """Settings and slow signals differ between drives of one vehicle, its own coding
    does not; a city drive stops."""
    from replay.simulator import DriveTrace, constant_kind

    platform = "cusw"
    prof = load_profile(platform)
    drives = [simulate_vehicle(platform, 20.0, seed=3, drive=d) for d in range(6)]
    other = simulate_vehicle(platform, 20.0, seed=4, drive=0)

    def first_values(frames, msg, sig):
        return int(unpack_signal(_frames_of(frames, msg.frame_id)["data"][:1], sig)[0])

    kinds = {"state": [], "vehicle": [], "slow": []}
    for m in prof.messages:
        for sig in m.signals:
            kind = constant_kind(platform, m, sig) if sig.role == "constant" else sig.role
            if kind in kinds and sig.length >= 4:
                kinds[kind].append((m, sig))
    assert all(kinds.values()), {k: len(v) for k, v in kinds.items()}
    for kind, expect_same_vehicle in (("state", False), ("slow", False), ("vehicle", True)):
        per_drive = [[first_values(f, m, sig) for f in drives] for m, sig in kinds[kind]]
        varies = [len(set(v)) > 1 for v in per_drive]
        if expect_same_vehicle:
            assert not any(varies), kind
            assert any(
                first_values(other, m, sig) != v[0]
                for (m, sig), v in zip(kinds[kind], per_drive, strict=True)
            )
        else:
            assert sum(varies) >= len(varies) // 2, kind
    city = DriveTrace.random(np.random.default_rng(0), "city")
    t = np.arange(0.0, 600.0, 0.5)
    assert (city.speed(t) == 0).any() and city.speed(t).max() > 5
    assert np.all(np.abs(np.diff(city.speed(t))) <= 2.5 * 0.5)


def test_deterministic_by_seed():
    a = simulate_vehicle("aee2010", 3.0, seed=5)
    b = simulate_vehicle("aee2010", 3.0, seed=5)
    c = simulate_vehicle("aee2010", 3.0, seed=6)
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_fleet_round_robin_and_names():
    fleet = simulate_fleet(["jeep", "peugeot", "opel"], 4, 1.0, seed=1)
    assert [v.vehicle for v in fleet] == [
        "veh-jeep-0000",
        "veh-peugeot-0001",
        "veh-opel-0002",
        "veh-jeep-0003",
    ]
    assert [v.platform for v in fleet] == ["cusw", "aee2010", "omega", "cusw"]
    assert fleet[0].frames.tobytes() != fleet[3].frames.tobytes()
    again = simulate_fleet(["jeep", "peugeot", "opel"], 4, 1.0, seed=1)
    assert all(x.frames.tobytes() == y.frames.tobytes() for x, y in zip(fleet, again, strict=True))


# ----------------------------------------------------------------------- CLI


@pytest.mark.parametrize("fmt", ["log", "asc", "cantt"])
def test_cli_simulate_writes_files_and_manifest(tmp_path, fmt):
    pytest.importorskip("replay.writers", reason="replay/writers.py not written yet")
    from detector.cli import main

    out = tmp_path / "fleet"
    argv = ["simulate", "--brands", "jeep,peugeot,alfa-romeo", "--vehicles", "3"]
    argv += ["--duration", "3", "--out", str(out), "--format", fmt, "--seed", "2"]
    argv += ["--attack", "dos:start=0.5,duration=1,rate=2000"]
    argv += ["--attack", "suspension:start=1,duration=1,id=0x1CD"]
    assert main(argv) == 0
    manifest = json.loads((out / "fleet.json").read_text())
    assert [v["vehicle"] for v in manifest["vehicles"]] == [
        "veh-jeep-0000",
        "veh-peugeot-0001",
        "veh-alfa-romeo-0002",
    ]
    for v in manifest["vehicles"]:
        path = out / v["file"]
        suffix = "csv" if fmt == "cantt" else fmt
        assert path.name == f"{v['vehicle']}.{suffix}" and path.stat().st_size > 0
        assert v["frames"] > 3000
    from replay.readers import read_frames

    first = read_frames(out / manifest["vehicles"][0]["file"], fmt)
    assert len(first) == manifest["vehicles"][0]["frames"]
    assert np.all(np.diff(first["ts"]) >= 0)
    if fmt == "log":  # candump keeps the labels: the 2,000 dos frames of vehicle 0
        dos = first["ts"][first["label"] == LABEL_CODE["dos"]]
        assert len(dos) == 2000
        # the span as the log writes times (to the microsecond): its frames all inside
        span = json.loads((out / "fleet.json").read_text())["attacks"][0]
        assert span["start_ts"] == dos.min() and dos.max() < span["end_ts"]
    if fmt == "cantt":  # attacked or not: the same 2,000 frames, read back by content
        assert np.count_nonzero(read_frames(out / manifest["vehicles"][0]["file"])["label"]) == 2000
    attacks = manifest["attacks"]
    assert [(a["kind"], a["vehicle"]) for a in attacks] == [
        ("dos", "veh-jeep-0000"),
        ("suspension", "veh-peugeot-0001"),
    ]
    assert attacks[0]["can_id"] == 0 and attacks[1]["can_id"] == 0x1CD
    assert attacks[0]["end_ts"] - attacks[0]["start_ts"] == pytest.approx(1.0)


def test_cli_simulate_rejects_bad_attack(tmp_path, capsys):
    from detector.cli import main

    argv = ["simulate", "--out", str(tmp_path), "--attack", "dos:start=1,durration=2"]
    assert main(argv) == 2
    assert "durration" in capsys.readouterr().err
    assert not (tmp_path / "fleet.json").exists()


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--brands", "ds", "--format", "road"], "cannot hold veh-ds-0000's frames: format 'road' "
         "holds classic CAN frames only, not CAN FD"),
        (["--brands", "jeep", "--format", "road", "--attack", "errorflood:start=0.5,duration=0.2"],
         "format 'road' has no error frames"),
        (["--brands", "jeep", "--format", "trc", "--attack", "errorflood:start=0.5,duration=0.2"],
         "TRCWriter cannot store error frames"),
        (["--brands", "jeep", "--duration", "inf"], "--duration must be in (0, 86400] s"),
        (["--brands", "jeep", "--start-ts", "nan"], "--start-ts must be a time >= 0 s"),
        # read back shifted by 1000 s: fleet.json's attack spans would no longer match
        (["--brands", "jeep", "--format", "blf", "--start-ts", "1000"],
         "BLF writer stores times before 1990 relative to the first frame"),
    ],
    ids=["fd-in-road", "error-frames-in-road", "error-frames-in-trc", "duration", "start-ts",
         "blf-before-1990"],
)
def test_cli_simulate_refuses_before_writing_a_file(tmp_path, capsys, argv, needle):
    from detector.cli import main

    out = tmp_path / "fleet"
    assert main(["simulate", "--out", str(out), "--duration", "1", *argv]) == 2
    err = capsys.readouterr().err
    assert needle in err and err.count("\n") == 1, err
    assert not out.exists() or not any(out.iterdir())


def test_formats_without_remote_frames_refuse_them_instead_of_writing_data_frames():
    from detector.core.schema import FLAG_RTR, make_frames
    from replay.writers import refusal

    frames = make_frames([1.7e9, 1.7e9 + 0.1], [0x100, 0x200], np.zeros((2, 0), np.uint8),
                         dlc=[4, 0])  # fmt: skip
    frames["flags"] = FLAG_RTR
    for fmt in ("road", "hcrl", "crysys", "cantt"):
        assert refusal(frames, fmt) == f"format {fmt!r} has no remote frames"
    assert refusal(frames, "hcrl-txt") is None and refusal(frames, "candump") is None


def test_cli_simulate_rejects_unknown_brand(tmp_path, capsys):
    from detector.cli import main

    assert main(["simulate", "--out", str(tmp_path), "--brands", "jeep,peugot"]) == 2
    assert "peugot" in capsys.readouterr().err
