"""Detection quality on simulated fleets, judged only on vehicles and drives the model
never saw: every attack family on every platform.

Each platform's model is trained once (module scope) on two drives each of a few
simulated vehicles (``detector.evaluation.quality_scenario``), laid out the way ``canwatch
simulate`` writes a fleet (every vehicle starts at the same time). Drives differ
like real ones: style, stops, settings, where slow signals start. Each attack is
injected into a vehicle never seen in training, and benign traffic comes from new
vehicles and a new drive of a trained one, all scored through
``detector.evaluation.evaluate``, the path ``canwatch evaluate`` runs.
"""

from __future__ import annotations

import re

import numpy as np
import pytest

from detector.core.brands import load_fleet
from detector.core.config import DetectionConfig, IncidentConfig
from detector.core.fd import describe_id
from detector.evaluation.evaluate import Evaluation, Span, attack_report, file_report, score_frames
from detector.evaluation.quality_scenario import (
    ATTACK_S,
    ATTACK_SEED,
    ATTACK_START,
    BENIGN_S,
    FAMILIES,
    PLATFORM_BRANDS,
    START_TS,
    TEST_S,
    attacked_vehicle,
    score_benign,
    training_recordings,
)
from detector.model.platform import PlatformModel
from detector.model.training import train_platform
from replay.attacks import AttackSpec, inject
from replay.profiles import load_profile, signal_mask
from replay.simulator import simulate_vehicle

#: the CAN FD platform's cases are tests/test_detection_quality_fd.py's (a file of their
#: own, so that pytest-xdist runs them beside these)
FD_PLATFORMS = ("stla",)
PLATFORMS = [p for p in PLATFORM_BRANDS if p not in FD_PLATFORMS]
CFG = DetectionConfig()
W = CFG.window_s
MIN_AUC = 0.95
MAX_TTD_WINDOWS = 2
MAX_BENIGN_FLAGGED = 0.01

# Known gaps (see the report of this test module). Each is an xfail, not a skip,
# so it turns into XPASS as soon as the detector improves.
_XFAIL_QUALITY: dict[tuple[str, str], str] = {
    ("cusw", "masquerade"): "the forged byte 4 of 0x32C is an undocumented smooth signal whose "
    "band moves from drive to drive (0..255 over the training drives): the forged constant is "
    "inside it, and no coupling, counter or checksum covers it; only its onset jump shows "
    "(window ROC-AUC 0.46)",
    ("giorgio", "masquerade"): "the forged byte 0 of 0x259 never moved in training (fixed_out), "
    "but on vehicles held out of training such bytes move too (per-vehicle flags), so that "
    "column alone stays under the threshold: ranked first (window ROC-AUC 0.97), never alerted",
}
_XFAIL_BENIGN: dict[tuple[str], str] = {}
_XFAIL_KIND: dict[tuple[str, str], str] = {
    ("cusw", "masquerade"): "not detected (see test_attack_detected)",
    ("giorgio", "masquerade"): "never alerted (see test_attack_detected)",
    ("aee2010", "replay"): "classified spoofing: the replayed 0x348 frames raise its rate and "
    "their counter breaks are not the dominant evidence",
    ("pacifica", "replay"): "classified spoofing: counter breaks of the replayed frames are "
    "not the dominant evidence",
}


def _params(table: dict, keys) -> list:
    return [
        pytest.param(*k, marks=pytest.mark.xfail(strict=False, reason=table[k]))
        if k in table
        else pytest.param(*k)
        for k in keys
    ]


_CASES = [(p, f) for p in PLATFORMS for f in FAMILIES]
_cache: dict[str, PlatformModel] = {}
_evals: dict[tuple[str, str], tuple[Evaluation, object]] = {}


@pytest.fixture(scope="module")
def models() -> dict[str, PlatformModel]:
    """One model per platform, trained lazily and at most once for the module."""
    return _cache


def model_for(models: dict[str, PlatformModel], platform: str) -> PlatformModel:
    if platform not in models:
        recordings, vehicles = training_recordings(platform)
        models[platform], _ = train_platform(platform, recordings, CFG, drives=vehicles)
    return models[platform]


def attacked(models, platform: str, family: str) -> tuple[Evaluation, object]:
    """A fresh vehicle (seed never used in training) with ``family`` injected, evaluated."""
    key = (platform, family)
    if key not in _evals:
        v = attacked_vehicle(platform, family)
        model = model_for(models, platform)
        ev = score_frames(v.frames, v.brand, v.name, model, load_fleet(), W, IncidentConfig(), v.truth)
        _evals[key] = (ev, v.span)
    return _evals[key]


@pytest.mark.parametrize(("platform", "family"), _params(_XFAIL_QUALITY, _CASES))
def test_attack_detected(models, platform: str, family: str) -> None:
    check_attack_detected(models, platform, family)


@pytest.mark.parametrize("platform", _params(_XFAIL_BENIGN, [(p,) for p in PLATFORMS]))
def test_benign_vehicles_rarely_flagged(models, platform: str) -> None:
    check_benign(models, platform)


@pytest.mark.parametrize(("platform", "family"), _params(_XFAIL_KIND, _CASES))
def test_suspected_attack(models, platform: str, family: str) -> None:
    check_suspected(models, platform, family)


def check_attack_detected(models, platform: str, family: str) -> None:
    ev, span = attacked(models, platform, family)
    r = attack_report(ev, family)
    assert r["attacked_windows"] >= ATTACK_S - 1, r
    assert r["roc_auc"] is not None and r["roc_auc"] >= MIN_AUC, (
        f"{platform}/{family} (target {span.can_id}): {r}"
    )
    assert r["time_to_detect_s"] is not None, f"{platform}/{family} never detected: {r}"
    assert r["time_to_detect_s"] <= MAX_TTD_WINDOWS * W, r
    assert r["incidents_overlapping"] >= 1, r


def check_benign(models, platform: str) -> None:
    model = model_for(models, platform)
    b = score_benign(platform, model, load_fleet(), W, IncidentConfig())
    flagged, total, incidents = b.flagged, b.windows, b.incidents
    assert not any(ev.attack.any() for ev in b.evaluations)
    assert total >= len(b.evaluations) * (BENIGN_S - 3)
    assert flagged / total <= MAX_BENIGN_FLAGGED, f"{platform}: {flagged}/{total} windows flagged"
    assert incidents <= 1, f"{platform}: {incidents} false incidents in {total} benign windows"


def suspected(ev: Evaluation, span) -> str | None:
    """The suspected attack of the strongest incident overlapping the attack."""
    hits = [
        i
        for i in ev.incidents
        if i["first_seen"] <= span.end_ts and i["last_seen"] >= span.start_ts
    ]
    return max(hits, key=lambda i: i["peak_score"])["suspected_attack"] if hits else None


def check_suspected(models, platform: str, family: str) -> None:
    ev, span = attacked(models, platform, family)
    assert suspected(ev, span) == family


def test_training_rates_do_not_depend_on_vehicles_overlapping_in_time() -> None:
    """Vehicles of a simulated fleet share their time axis; each must count as its own.

    A benign id of a new vehicle must sit near rate 1.0 (its learned frames per
    window), whether or not the training vehicles' recordings overlap in time.
    """
    platform = "giorgio"
    overlapping = [simulate_vehicle(platform, 30.0, START_TS, seed=100 + i) for i in range(3)]
    staggered = [
        simulate_vehicle(platform, 30.0, START_TS + 1000.0 * i, seed=100 + i) for i in range(3)
    ]
    a, _ = train_platform(platform, overlapping, CFG)
    b, _ = train_platform(platform, staggered, CFG)
    np.testing.assert_allclose(a.baseline.bus_mean_frames, b.baseline.bus_mean_frames, rtol=0.05)
    np.testing.assert_allclose(a.baseline.mean_count, b.baseline.mean_count, rtol=0.05, atol=0.5)


@pytest.mark.parametrize("family", ["dos", "spoofing"])
def test_each_of_repeated_intrusions_is_detected_without_false_incidents(models, family) -> None:
    """Five intrusions of 4 s, 20 s apart, in a new vehicle's 2-minute drive (HCRL's
    captures are 300 of them): five episodes, each raised within two windows, and no
    incident in the benign stretches between them."""
    frames = simulate_vehicle("cusw", 120.0, START_TS, seed=ATTACK_SEED + 60)
    for k, start in enumerate((15, 35, 55, 75, 95)):
        frames, _ = inject(frames, AttackSpec.parse(f"{family}:start={start},duration=4"), seed=k)
    model = model_for(models, "cusw")
    ev = score_frames(frames, "jeep", "veh-repeat", model, load_fleet(), W, IncidentConfig())
    r = file_report(ev)
    a = r["attacks"][family]
    assert (a["episodes"], a["episodes_detected"]) == (5, 5), a
    assert a["time_to_detect_s"] <= MAX_TTD_WINDOWS * W, a
    assert r["false_incidents"] == 0 and r["benign_flagged_fraction"] <= MAX_BENIGN_FLAGGED, r


def test_an_attack_that_starts_while_an_incident_is_open_is_in_its_evidence(models) -> None:
    """A new vehicle is flooded for 4 s, and 2 s later one of its ids is spoofed: one
    incident (the gap is shorter than incidents.quiet_windows), whose evidence, led by the
    flood's, names the spoofed id too, and whose ``attacks`` counts both."""
    frames = simulate_vehicle("cusw", 40.0, START_TS, seed=ATTACK_SEED + 90)
    frames, _ = inject(frames, AttackSpec.parse("dos:start=10,duration=4"), seed=1)
    frames, spoof = inject(frames, AttackSpec.parse("spoofing:start=16,duration=6"), seed=2)
    model = model_for(models, "cusw")
    ev = score_frames(frames, "jeep", "veh-two-attacks", model, load_fleet(), W, IncidentConfig())
    (incident,) = ev.incidents
    assert incident["suspected_attack"] == "dos", incident
    assert set(incident["attacks"]) == {"dos", "spoofing"}, incident["attacks"]
    first = incident["evidence"][0]
    assert (first["feature"], first["can_id"]) == ("rate", "0x000")
    spoofed = [e for e in incident["evidence"] if e["can_id"] == describe_id(spoof.can_id)]
    assert spoofed and spoofed[0]["feature"] == "rate", incident["evidence"]


def no_incident(model: PlatformModel, frames: np.ndarray, name: str) -> Evaluation:
    """A new cusw (jeep) vehicle's benign ``frames`` scored: no incident, no window flagged."""
    ev = score_frames(frames, "jeep", name, model, load_fleet(), W, IncidentConfig())
    assert not ev.incidents and (ev.score < 1.0).all(), ev.incidents[:1]
    return ev


def suspension_detected(model: PlatformModel, frames: np.ndarray, name: str, start: float) -> None:
    """An ECU silenced ``start`` s into ``frames`` for 8 s: detected, no false incident."""
    silenced, span = inject(frames, AttackSpec.parse(f"suspension:start={start},duration=8"), seed=3)
    truth = [Span("suspension", span.start_ts, span.end_ts)]
    ev = score_frames(silenced, "jeep", name, model, load_fleet(), W, IncidentConfig(), truth)
    r = attack_report(ev, "suspension")
    assert r["detected"] and r["false_incidents"] == 0, r


def waking(frames: np.ndarray, rng: np.random.Generator, over_s: float = 10.0) -> np.ndarray:
    """``frames`` as telemetry that starts at ignition: each id from its own moment in
    the first ``over_s`` s (a vehicle's ECUs come up one by one)."""
    ids, slot = np.unique(frames["can_id"], return_inverse=True)
    return frames[frames["ts"] - frames["ts"][0] >= rng.uniform(0.0, over_s, len(ids))[slot]]


def test_a_telemetry_gap_is_no_incident_and_a_silenced_ecu_still_is(models) -> None:
    """A new vehicle's uplink stops for 10 s: every id silent together is the telemetry,
    not its bus (no window scored there, no incident). An ECU silenced in the same
    drive (one id's frames gone, the others sending) is still a suspension."""
    frames = simulate_vehicle("cusw", 60.0, START_TS, seed=ATTACK_SEED + 70)
    t = frames["ts"] - START_TS
    gapped = frames[(t < 20.0) | (t >= 30.0)]
    model = model_for(models, "cusw")
    ev = no_incident(model, gapped, "veh-gap")
    assert not ((ev.window_start >= START_TS + 20) & (ev.window_start <= START_TS + 30)).any()
    suspension_detected(model, gapped, "veh-gap", start=40)


def test_short_telemetry_gaps_are_no_incident_and_fuzzing_beside_one_still_is(models) -> None:
    """A new vehicle's uplink hiccups (nothing at all for 30 ms to 1.5 s, five times): its
    windows are scored on what each frame shows, not on the gap's timing, so no incident
    (each hiccup opened one before). Fuzzing that starts right after a hiccup, in the
    windows it touched, is still detected in the first of them."""
    frames = simulate_vehicle("cusw", 60.0, START_TS, seed=ATTACK_SEED + 80)
    t = frames["ts"] - START_TS
    hiccups = ((8.3, 0.03), (17.6, 0.1), (26.2, 0.4), (35.5, 0.8), (44.1, 1.5))
    quiet = np.zeros(len(frames), bool)
    for at, length in hiccups:
        quiet |= (t >= at) & (t < at + length)
    gapped = frames[~quiet]
    model = model_for(models, "cusw")
    ev = no_incident(model, gapped, "veh-hiccups")
    assert len(ev.score) >= 55  # the hiccups' windows were scored
    fuzzed, span = inject(gapped, AttackSpec.parse("fuzzing:start=26.7,duration=3"), seed=4)
    ev = score_frames(fuzzed, "jeep", "veh-hiccups", model, load_fleet(), W, IncidentConfig())
    r = attack_report(ev, "fuzzing")
    assert r["detected"] and r["time_to_detect_s"] <= W and r["false_incidents"] == 0, r


def test_a_vehicle_waking_ecu_by_ecu_is_no_incident_and_a_suspension_after_still_is(models):
    """A new vehicle's telemetry starts at ignition: its ECUs come up one by one over
    10 s. An id it has not sent yet is not missing, the window an id begins in covers
    only part of it, and a bus with fewer ids than learned is waking, not attacked: no
    incident (each start opened one before, on an absent id's silence or a partial
    rate). An ECU silenced later in the same drive is still a suspension."""
    frames = simulate_vehicle("cusw", 40.0, START_TS + 0.3, seed=ATTACK_SEED + 90)
    woken = waking(frames, np.random.default_rng(5))
    model = model_for(models, "cusw")
    no_incident(model, woken, "veh-wakes")
    suspension_detected(model, woken, "veh-wakes", start=25)


def test_a_vehicle_resuming_after_an_hour_parked_is_no_incident(models) -> None:
    """The same vehicle's next drive, an hour later on the same stream: its telemetry
    stopped (the windows around the gap unscored) and its ECUs wake one by one again.
    An id not sent since it resumed is not missing (it had opened an incident on every
    drive's start, on the silence counted from the last drive's frame)."""
    rng = np.random.default_rng(6)
    drives = [simulate_vehicle("cusw", 40.0, START_TS + 3600.0 * d, seed=ATTACK_SEED + 95, drive=d)
              for d in range(2)]  # fmt: skip
    frames = np.concatenate([waking(d, rng) for d in drives])
    ev = no_incident(model_for(models, "cusw"), frames, "veh-parked")
    assert (ev.window_start > START_TS + 3600.0).sum() >= 35  # the second drive was scored


def test_evidence_says_where_the_counter_and_checksum_sit(models) -> None:
    """A replay and a masquerade of cusw's 0x1E4 (a speed, a counter, a checksum) on a
    vehicle never seen: the evidence says where the id's counter sits and how it steps,
    which checksum fails where (both learned from traffic alone), and what the
    platform's DBC calls the message and those signals. 0x1E4 breaks its line with each
    id that shares its speed: one note names them all, so they do not crowd the counter
    out."""
    msg = load_profile("cusw").message(0x1E4)
    role = {s.role: s for s in msg.signals}
    mask = signal_mask(role["counter"])
    byte = int(np.flatnonzero(mask)[0])
    bits = np.flatnonzero(np.unpackbits(mask[byte : byte + 1], bitorder="little"))
    model = model_for(models, "cusw")
    notes = {}
    for kind in ("replay", "masquerade"):
        frames = simulate_vehicle("cusw", TEST_S, START_TS, seed=ATTACK_SEED + 61)
        spec = AttackSpec.parse(f"{kind}:start={ATTACK_START},duration={ATTACK_S},id=0x1E4")
        frames, _ = inject(frames, spec, seed=5)
        ev = score_frames(frames, "jeep", "veh-notes", model, load_fleet(), W, IncidentConfig())
        assert [i["suspected_attack"] for i in ev.incidents] == [kind], ev.incidents
        notes[kind] = ev.incidents[0]["evidence"]
    texts = {k: {e["feature"]: e["text"] for e in n} for k, n in notes.items()}
    where = (
        f"0x1E4 ({msg.name}): message counter (byte {byte} bits {bits[0]}-{bits[-1]} "
        f"[{role['counter'].name}], +1 a frame) out of sequence"
    )
    assert texts["replay"]["counter_err"].startswith(where), texts["replay"]
    checksum = f"checksum (crc8-j1850 in the last byte [{role['checksum'].name}]) invalid"
    assert checksum in texts["masquerade"]["checksum_err"]
    for n in notes.values():
        crossing = [e["text"] for e in n if e["feature"] == "cross_out"]
        assert len(crossing) == 1 and "0x1E4 also left its line with 0x" in crossing[0], crossing
        assert crossing[0].startswith(f"0x1E4 bytes 4-5 [{role['speed'].name}] and ")


def test_a_jump_is_named_with_its_byte_signal_and_learned_steps(models) -> None:
    """aee2010's replay re-sends 0x348's frames of a few seconds before among the live
    ones: its signals jump back and forth, and the evidence says which byte (and the
    DBC's signal in it) stepped how far past the steps it took in training."""
    ev, _ = attacked(models, "aee2010", "replay")
    texts = [e["text"] for i in ev.incidents for e in i["evidence"] if e["feature"] == "delta_out"]
    assert texts, ev.incidents
    named = re.search(r"; byte \d \[\w+\] stepped by ([+-]\d+) \(learned ([+-]\d+) to ([+-]\d+)\)",
                      texts[0])  # fmt: skip
    assert named, texts[0]
    step, lo, hi = (int(g) for g in named.groups())
    assert not lo <= step <= hi


def test_an_error_frame_flood_is_detected_and_named(models) -> None:
    check_error_flood(models, "cusw")


def check_error_flood(models, platform: str) -> None:
    """A bus-off attack's flood of error frames (``errorflood``, labelled dos) on a vehicle
    never seen in training: detected, classified dos, its evidence naming error frames."""
    seed = ATTACK_SEED + 50
    frames = simulate_vehicle(platform, TEST_S, START_TS, seed=seed)
    spec = AttackSpec.parse(f"errorflood:start={ATTACK_START},duration={ATTACK_S}")
    frames, span = inject(frames, spec, seed=seed)
    model = model_for(models, platform)
    ev = score_frames(frames, PLATFORM_BRANDS[platform], "veh-errors", model, load_fleet(), W,
                      IncidentConfig())  # fmt: skip
    r = attack_report(ev, "dos")
    assert r["roc_auc"] >= MIN_AUC and r["time_to_detect_s"] is not None, r
    assert r["time_to_detect_s"] <= MAX_TTD_WINDOWS * W, r
    inc = suspected(ev, span)
    assert inc == "dos", inc
    named = [e["can_id"] for i in ev.incidents for e in i["evidence"]]
    assert "error frames" in named, named

