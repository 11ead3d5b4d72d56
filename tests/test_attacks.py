"""Attack injection: labels on exactly the injected/modified frames, per kind."""

from __future__ import annotations

import numpy as np
import pytest

from detector.core.errors import ConfigError
from detector.core.schema import EXTENDED_FLAG, LABEL_CODE, make_frames
from replay.attacks import AttackSpec, inject
from replay.simulator import simulate_vehicle

TARGET = 0x1E4  # cusw BRAKE_1, 10 ms


@pytest.fixture(scope="module")
def sim() -> np.ndarray:
    return simulate_vehicle("cusw", 12.0, seed=3)


def real_like() -> np.ndarray:
    """A hand-made recording: ts from 0, 3 periodic ids (one 29-bit), a counter byte,
    a slowly changing byte and constant bytes, plus a sporadic id."""
    rng = np.random.default_rng(42)
    parts = []
    for can_id, period, ext in (
        (0x0C4, 0.010, False),
        (0x3A0, 0.050, False),
        (0x18F00400, 0.020, True),
    ):
        n = int(10.0 / period)
        ts = np.arange(n) * period + rng.uniform(-1e-4, 1e-4, n) + 0.003
        data = np.zeros((n, 8), np.uint8)
        data[:, 0] = np.arange(n) % 256  # counter
        data[:, 2] = (np.arange(n) // 37) % 256  # slow signal
        data[:, 5] = 0xA5
        parts.append(make_frames(ts, np.full(n, can_id), data, extended=ext))
    parts.append(make_frames(np.array([1.5, 6.2]), np.array([0x7DF, 0x7DF]), np.zeros((2, 3))))
    frames = np.concatenate(parts)
    return frames[np.argsort(frames["ts"], kind="stable")]


def _window(frames, span):
    return (frames["ts"] >= span.start_ts) & (frames["ts"] < span.end_ts)


def _assert_additive(orig, out, span, kind, expected):
    """The benign part is the original untouched; the rest is labelled, in the span."""
    assert np.all(np.diff(out["ts"]) >= 0)
    assert out[out["label"] == 0].tobytes() == orig.tobytes()
    added = out[out["label"] != 0]
    assert np.all(added["label"] == LABEL_CODE[kind])
    assert len(added) == pytest.approx(expected, rel=0.02, abs=2)
    assert np.all(_window(added, span))
    return added


def test_parse_specs():
    s = AttackSpec.parse("masquerade:start=10,duration=5,id=0x6E0")
    assert (s.kind, s.start_s, s.duration_s, s.can_id, s.rate_hz) == (
        "masquerade",
        10,
        5,
        0x6E0,
        None,
    )
    s = AttackSpec.parse("dos:start=3,duration=4,rate=3000")
    assert (s.kind, s.rate_hz, s.can_id) == ("dos", 3000.0, None)
    assert AttackSpec.parse("dos:start=0,duration=1,id=0x18FEF100x").can_id == 0x18FEF100 | int(
        EXTENDED_FLAG
    )


@pytest.mark.parametrize(
    ("text", "names"),
    [
        ("flood:start=1,duration=2", "flood"),
        ("dos:start=1", "duration"),
        ("dos:start=abc,duration=1", "start=abc"),
        ("dos:start=1,duration=1,speed=9", "speed=9"),
        ("dos:start=1,duration=0", "duration"),
        ("dos:start=1,duration=1,rate=-5", "rate"),
        ("spoofing:start=1,duration=1,id=0xZZ", "id=0xZZ"),
    ],
)
def test_parse_errors_name_the_bad_part(text, names):
    with pytest.raises(ConfigError, match=names):
        AttackSpec.parse(text)


@pytest.mark.parametrize(("kind", "rate"), [("dos", 3000.0), ("fuzzing", 1500.0)])
def test_flooding_kinds_add_frames_at_rate(sim, kind, rate):
    spec = AttackSpec(kind, start_s=2.0, duration_s=3.0, rate_hz=rate)
    out, span = inject(sim, spec, seed=1)
    assert span.start_ts == pytest.approx(sim["ts"][0] + 2.0) and span.end_ts - span.start_ts == 3.0
    added = _assert_additive(sim, out, span, kind, rate * 3.0)
    if kind == "dos":
        assert span.can_id == 0 and np.all(added["can_id"] == 0) and not added["data"].any()
    else:
        assert span.can_id is None and len(np.unique(added["can_id"])) > 500
        assert np.all(added["can_id"] <= 0x7FF)


def test_spoofing_adds_forged_frames_at_existing_id(sim):
    spec = AttackSpec("spoofing", start_s=4.0, duration_s=2.0, can_id=TARGET, rate_hz=250.0)
    out, span = inject(sim, spec)
    added = _assert_additive(sim, out, span, "spoofing", 500)
    assert np.all(added["can_id"] == TARGET)
    genuine = {bytes(d) for d in sim["data"][sim["can_id"] == TARGET]}
    assert all(bytes(d) not in genuine for d in added["data"])
    # default rate: 4x the id's own
    out, span = inject(sim, AttackSpec("spoofing", start_s=4.0, duration_s=2.0, can_id=TARGET))
    assert np.count_nonzero(out["label"]) == pytest.approx(4 * 2.0 / 0.010, rel=0.02)


def test_masquerade_keeps_timing_and_changes_payloads(sim):
    spec = AttackSpec.parse(f"masquerade:start=5,duration=3,id={TARGET:#x}")
    out, span = inject(sim, spec)
    assert len(out) == len(sim)
    np.testing.assert_array_equal(out["ts"], sim["ts"])
    np.testing.assert_array_equal(out["can_id"], sim["can_id"])
    hit = _window(sim, span) & (sim["can_id"] == TARGET)
    assert hit.sum() == pytest.approx(300, abs=2)
    np.testing.assert_array_equal(out["label"] != 0, hit)
    assert np.all(out["label"][hit] == LABEL_CODE["masquerade"])
    assert np.all((out["data"][hit] != sim["data"][hit]).any(axis=1))
    assert out[~hit].tobytes() == sim[~hit].tobytes()
    # plausible: one byte differs, constant across the attack
    changed = (out["data"][hit] != sim["data"][hit]).any(axis=0)
    assert changed.sum() == 1


def test_suspension_removes_id_within_span_only(sim):
    out, span = inject(sim, AttackSpec("suspension", start_s=3.0, duration_s=4.0, can_id=TARGET))
    assert span.can_id == TARGET and np.all(out["label"] == 0)
    gone = _window(sim, span) & (sim["can_id"] == TARGET)
    assert gone.sum() == pytest.approx(400, abs=2)
    assert out.tobytes() == sim[~gone].tobytes()
    tgt = out[out["can_id"] == TARGET]["ts"]
    assert not np.any((tgt >= span.start_ts) & (tgt < span.end_ts))


def test_replay_resends_earlier_genuine_bytes(sim):
    out, span = inject(sim, AttackSpec("replay", start_s=6.0, duration_s=3.0, can_id=TARGET))
    added = _assert_additive(sim, out, span, "replay", 300)
    assert np.all(added["can_id"] == TARGET)
    earlier = sim[(sim["can_id"] == TARGET) & (sim["ts"] < span.start_ts)]
    earlier_bytes = {bytes(d) for d in earlier["data"]}
    assert all(bytes(d) in earlier_bytes for d in added["data"])


def test_default_target_is_a_fast_periodic_id(sim):
    out, span = inject(sim, AttackSpec("masquerade", start_s=1.0, duration_s=2.0), seed=4)
    ts = sim["ts"][sim["can_id"] == span.can_id]
    assert np.median(np.diff(ts)) <= 0.100
    out2, span2 = inject(sim, AttackSpec("masquerade", start_s=1.0, duration_s=2.0), seed=4)
    assert span2 == span and out2.tobytes() == out.tobytes()


@pytest.mark.parametrize(
    "kind", ["dos", "fuzzing", "spoofing", "masquerade", "suspension", "replay"]
)
def test_every_kind_on_a_real_like_recording(kind):
    frames = real_like()
    spec = AttackSpec(
        kind, start_s=4.0, duration_s=2.0, rate_hz=500.0 if kind != "replay" else None
    )
    out, span = inject(frames, spec, seed=9)
    assert span.start_ts == pytest.approx(frames["ts"][0] + 4.0)
    assert np.all(np.diff(out["ts"]) >= 0)
    labelled = out[out["label"] != 0]
    assert np.all(labelled["label"] == LABEL_CODE[kind])
    assert np.all(_window(labelled, span))
    if kind == "suspension":
        assert len(out) < len(frames) and not len(labelled)
    else:
        assert len(labelled) > 0
    if kind in ("spoofing", "masquerade", "suspension", "replay"):
        assert span.can_id in {0x0C4, 0x3A0, 0x18F00400 | int(EXTENDED_FLAG)}
        assert np.all(labelled["can_id"] == span.can_id)


def test_extended_target_on_real_like():
    frames = real_like()
    out, span = inject(frames, AttackSpec.parse("masquerade:start=2,duration=1,id=0x18F00400x"))
    assert span.can_id == 0x18F00400 | int(EXTENDED_FLAG)
    assert np.count_nonzero(out["label"]) == pytest.approx(50, abs=1)


def test_inject_errors():
    frames = real_like()
    with pytest.raises(ConfigError, match="0x555"):
        inject(frames, AttackSpec("masquerade", 1.0, 1.0, can_id=0x555))
    with pytest.raises(ConfigError, match="replay"):
        inject(frames, AttackSpec("replay", 0.0, 1.0, can_id=0x0C4))
    with pytest.raises(ConfigError, match="empty"):
        inject(frames[:0], AttackSpec("dos", 0.0, 1.0))


def test_attacks_that_would_do_nothing_or_too_much_are_refused(sim):
    """Ground truth of an attack that changed nothing, or one that would exhaust memory
    (a typo'd duration), is an error, not a scenario."""
    recorded = float(sim["ts"][-1] - sim["ts"][0])
    with pytest.raises(ConfigError, match="after the recording's last frame"):
        inject(sim, AttackSpec("dos", recorded + 5, 1.0))
    with pytest.raises(ConfigError, match="sends no frame in the attack window"):
        inject(sim, AttackSpec("suspension", 1.0, 0.0005, can_id=int(sim["can_id"][0])))
    with pytest.raises(ConfigError, match="frames to inject, more than 10,000,000"):
        inject(sim, AttackSpec("dos", 1.0, 1e6))


def test_masquerade_forges_a_byte_every_frame_of_its_id_has():
    """An FD id whose frames alternate between 64 and 8 bytes: the forged byte lies
    within every one of them, so every frame labelled masquerade was changed."""
    from detector.core.fd import fd_lengths
    from detector.core.schema import FD_FRAME_DTYPE, FLAG_FD, fd_dlc

    n = 400
    f = np.zeros(n, FD_FRAME_DTYPE)
    f["ts"] = 100 + np.arange(n) * 0.01
    f["can_id"] = 0x100
    f["flags"] = FLAG_FD
    f["dlc"] = np.where(np.arange(n) % 2, fd_dlc(8), fd_dlc(64))
    f["data"][:, :8] = 7
    f["data"][:, 8:] = np.where(np.arange(n) % 2 == 0, 9, 0)[:, None]
    out, _ = inject(f, AttackSpec("masquerade", 1.0, 1.0, can_id=0x100))
    hit = np.flatnonzero(out["label"] != 0)
    assert len(hit) == 100
    for i in hit:
        length = int(fd_lengths(f[i : i + 1])[0])
        assert (out["data"][i, :length] != f["data"][i, :length]).any(), i
