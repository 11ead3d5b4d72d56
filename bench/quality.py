"""Detection quality, measured only on drives and vehicles the model never saw.

A figure from a capture whose benign frames (or an edited copy of them) were in
training is not a quality figure, so this bench reports none:

- ROAD (``../shared/data/road``; skipped with a message when absent):
  leave-one-drive-out through ``canwatch evaluate --cross-validate`` (the 5
  captures are 3 drives; a masquerade twin stays with its capture). Per capture
  and pooled: window ROC-AUC, benign windows flagged, false incidents per hour,
  recall, time to detect.
- ROAD, forged signals: the same fold models against the real held-out drives
  (a fabrication capture without its injected frames is the drive as it was),
  each with one periodic id masqueraded in turn (``replay.attacks`` masquerade:
  a byte forged to a constant, the real frames replaced, timing kept). ROAD's
  own masquerade captures are two; the other ROAD attacks (coolant, speedometer,
  reverse light on) are masquerades of other ids, and this says how such an
  attack on an id nobody chose fares.
- CrySyS: ``canwatch train`` on ``benign-48.csv`` alone (another drive), then
  ``canwatch evaluate`` of the S-1-1 payload-modification capture (0x410).
  ``S-1-1-benign.log`` is never used: the attack was injected into that trace.
- Simulator (``detector.evaluation.quality_scenario``, shared with the quality test): per
  platform, a model trained on 5 vehicles x 2 drives; each attack family in a
  vehicle it never saw, and benign traffic of 4 new vehicles and a new drive of
  a trained one.

``--check`` exits 1 when a real-capture figure falls more than ``--tolerance``
below (AUC) or above (benign flagged) the figures recorded below, so a change
that costs detection quality on unseen drives shows up.

    .venv/bin/python bench/quality.py [--data ../shared/data] [--platforms all|none|cusw,...]
        [--check] [--json out.json]
"""

# ruff: noqa: E402 - the checkout goes first on sys.path (run as `python bench/quality.py`)
from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, say
from bench.common.report import machine_line, markdown_table, write_results
from detector.evaluation import quality_scenario as qs

#: Cross-drive figures recorded on 2026-12-07 (README "Detection quality"):
#: capture -> (window ROC-AUC, share of benign windows flagged).
EXPECTED = {
    "road/fuzzing_attack_1.csv": (1.000, 0.0),
    "road/correlated_signal_attack_2.csv": (1.000, 0.0),
    "road/correlated_signal_attack_2_masquerade.csv": (1.000, 0.0),
    "road/reverse_light_off_attack_1.csv": (1.000, 0.0),
    "road/reverse_light_off_attack_1_masquerade.csv": (0.599, 0.0),
    "crysys/S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log": (0.826, 0.0),
}
ROAD_FILES = tuple(Path(c).name for c in EXPECTED if c.startswith("road/"))  # in this order
#: Forged signals: ids per held-out drive (periodic, >= FORGED_MIN_HZ), each forged
#: from FORGED_AT of the drive for FORGED_FOR of it (at most FORGED_MAX_S).
FORGED_IDS, FORGED_MIN_HZ, FORGED_AT, FORGED_FOR, FORGED_MAX_S = 12, 10.0, 0.4, 0.3, 10.0
CRYSYS_TRAIN = "benign-48.csv"
CRYSYS_ATTACK = "S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log"


def default_data_dir() -> Path:
    env = os.environ.get("CANWATCH_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


def canwatch(*argv: str) -> None:
    """Run a canwatch command in this process (the CLI's own code), quietly."""
    from detector.cli import main

    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = main(list(argv))
    if code != 0:
        raise RuntimeError(f"canwatch {' '.join(argv)} exited {code}: {out.getvalue()[-500:]}")


# -- real captures ---------------------------------------------------------------------


def _row(capture: str, trained_on: str, r: dict, seconds: float) -> dict:
    attacks = r.get("attacks", {})
    return {
        "capture": capture, "trained_on": trained_on, "attack": ",".join(attacks) or "-",
        "windows": r["windows"], "attacked_windows": r["attacked_windows"],
        "roc_auc": r["roc_auc"], "benign_flagged": r["benign_flagged_fraction"],
        "false_incidents_per_hour": r["false_incidents_per_hour"], "recall": r["recall"],
        "time_to_detect_s": r["time_to_detect_s"], "expected": EXPECTED.get(capture),
        "seconds": round(seconds, 1),
    }  # fmt: skip


def road(data: Path) -> tuple[list[dict], dict | None, list[dict], list[str]]:
    """Leave-one-drive-out rows per capture, the pooled figures, the forged-signal rows
    (``forged``, on the same fold models) and what was skipped."""
    files = [data / "road" / n for n in ROAD_FILES]
    missing = [str(p) for p in files if not p.is_file()]
    if missing:
        return [], None, [], [f"ROAD skipped: missing {', '.join(missing)}"]
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "cv.json"
        t0 = time.perf_counter()
        canwatch("evaluate", "--cross-validate", "--brand", "road", *map(str, files),
                 "--report", str(report), "--models-out", f"{tmp}/folds")  # fmt: skip
        seconds = time.perf_counter() - t0
        cv = json.loads(report.read_text())
        forged_rows = forged(cv)
    trained = {
        f: " + ".join(Path(t).stem for t in fold["trained_on"])
        for fold in cv["folds"]
        for f in fold["held_out"]
    }
    rows = [
        _row(f"road/{Path(f).name}", trained[f], r, seconds / len(files))
        for f, r in cv["files"].items()
    ]
    return rows, cv["pooled"], forged_rows, []


def forged(cv: dict) -> list[dict]:
    """Per held-out ROAD drive and id: a masquerade of that id scored by the fold's model."""
    import numpy as np

    from detector.core.brands import load_fleet
    from detector.core.config import DetectionConfig, IncidentConfig
    from detector.core.schema import format_id
    from detector.evaluation.evaluate import attack_report, score_frames
    from detector.model.store import load_model
    from replay.attacks import AttackSpec, inject
    from replay.readers import read_frames

    cfg, inc, fleet = DetectionConfig(), IncidentConfig(), load_fleet()
    out = []
    for fold in cv["folds"]:
        model = load_model(fold["model"]["manifest"])
        for f in fold["held_out"]:
            if "masquerade" in Path(f).name:  # its twin is the same drive
                continue
            frames = read_frames(f)
            drive = frames[frames["label"] == 0]  # the injected frames out
            seconds = float(drive["ts"][-1] - drive["ts"][0])
            ids, counts = np.unique(drive["can_id"], return_counts=True)
            periodic = ids[counts / seconds >= FORGED_MIN_HZ]
            rng = np.random.default_rng(len(out))
            for can_id in sorted(rng.choice(periodic, min(FORGED_IDS, len(periodic)), replace=False)):
                spec = AttackSpec.parse(
                    f"masquerade:start={FORGED_AT * seconds:.1f},"
                    f"duration={min(FORGED_FOR * seconds, FORGED_MAX_S):.1f},id={format_id(int(can_id))}"
                )
                frames_x, _ = inject(drive.copy(), spec, seed=1)
                ev = score_frames(frames_x, "road", Path(f).stem, model, fleet, cfg.window_s, inc)
                r = attack_report(ev, "masquerade")
                out.append({"drive": Path(f).stem, "can_id": format_id(int(can_id)),
                            "roc_auc": r["roc_auc"], "time_to_detect_s": r["time_to_detect_s"]})  # fmt: skip
    return out


def forged_table(rows: list[dict]) -> str:
    drives = list(dict.fromkeys(r["drive"] for r in rows))
    body = []
    for d in drives:
        rs = [r for r in rows if r["drive"] == d]
        aucs = sorted(r["roc_auc"] for r in rs if r["roc_auc"] is not None)
        hit = [r["can_id"] for r in rs if r["time_to_detect_s"] is not None]
        body.append((d, len(rs), _fmt(aucs[len(aucs) // 2] if aucs else None),
                     f"{len(hit)}/{len(rs)}", ", ".join(hit) or "-"))  # fmt: skip
    return markdown_table(
        ("held-out drive", "ids forged", "median ROC-AUC", "detected", "detected ids"), body
    )


def crysys(data: Path) -> tuple[list[dict], list[str]]:
    train, attack = data / "crysys" / CRYSYS_TRAIN, data / "crysys" / CRYSYS_ATTACK
    missing = [str(p) for p in (train, attack) if not p.is_file()]
    if missing:
        return [], [f"CrySyS skipped: missing {', '.join(missing)}"]
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        canwatch("train", "--brand", "crysys", "--out", tmp, str(train))
        canwatch("evaluate", "--models", tmp, "--brand", "crysys", str(attack),
                 "--report", f"{tmp}/r.json")  # fmt: skip
        r = json.loads(Path(f"{tmp}/r.json").read_text())["files"][str(attack)]
    return [_row(f"crysys/{CRYSYS_ATTACK}", CRYSYS_TRAIN, r, time.perf_counter() - t0)], []


# -- simulator ----------------------------------------------------------------------------


def simulated(platforms: list[str]) -> tuple[list[dict], list[dict]]:
    """Per (platform, family) attack rows, and per platform the benign figures."""
    from detector.core.brands import load_fleet
    from detector.core.config import DetectionConfig, IncidentConfig
    from detector.evaluation.evaluate import attack_report, score_frames
    from detector.model.training import train_platform

    cfg, inc, fleet = DetectionConfig(), IncidentConfig(), load_fleet()
    out, benign = [], []
    for platform in platforms:
        t0 = time.perf_counter()
        recordings, vehicles = qs.training_recordings(platform)
        model, _ = train_platform(platform, recordings, cfg, drives=vehicles)
        train_s = time.perf_counter() - t0
        for family in qs.FAMILIES:
            v = qs.attacked_vehicle(platform, family)
            ev = score_frames(v.frames, v.brand, v.name, model, fleet, cfg.window_s, inc, v.truth)
            r = attack_report(ev, family)
            out.append({
                "platform": platform, "family": family,
                "target": None if v.span.can_id is None else f"0x{v.span.can_id:X}",
                "roc_auc": r["roc_auc"], "recall": r["recall"],
                "time_to_detect_s": r["time_to_detect_s"], "train_s": round(train_s, 1),
            })  # fmt: skip
        b = qs.score_benign(platform, model, fleet, cfg.window_s, inc)
        benign.append({"platform": platform, "windows": b.windows, "flagged": b.flagged,
                       "incidents": b.incidents})  # fmt: skip
        aucs = " ".join(f"{r['family']}={_fmt(r['roc_auc'], 2)}" for r in out[-len(qs.FAMILIES) :])
        say(f"  sim {platform}: {aucs}; benign flagged {b.flagged}/{b.windows}")
    return out, benign


# -- output ---------------------------------------------------------------------------------


def real_table(rows: list[dict]) -> str:
    headers = (
        "capture (held out)", "trained on", "attack", "windows (attacked)", "ROC-AUC",
        "benign flagged", "false inc./h", "recall", "TTD s",
    )  # fmt: skip
    body = [
        (r["capture"], r["trained_on"], r["attack"], f"{r['windows']} ({r['attacked_windows']})",
         _fmt(r["roc_auc"]),
         f"{100 * r['benign_flagged']:.1f} %" if r["benign_flagged"] is not None else "-",
         _fmt(r["false_incidents_per_hour"], 0), _fmt(r["recall"], 2),
         "never" if r["time_to_detect_s"] is None else f"{r['time_to_detect_s']:.2f}")
        for r in rows
    ]  # fmt: skip
    return markdown_table(headers, body)


def pooled_line(p: dict) -> str:
    return (
        f"pooled over the 5 held-out captures: window ROC-AUC {_fmt(p['roc_auc'])}, benign "
        f"windows flagged {p['benign_flagged_windows']}/{p['benign_windows']} "
        f"({100 * p['benign_flagged_fraction']:.1f} %), false incidents "
        f"{p['false_incidents']} ({p['false_incidents_per_hour']:.0f}/h), attacks detected "
        f"{p['attacks_detected']}/{p['attacks_total']}, time to detect median "
        f"{_fmt(p['time_to_detect_median_s'], 2)} s"
    )


def sim_table(rows: list[dict], benign: list[dict]) -> str:
    platforms = list(dict.fromkeys(r["platform"] for r in rows))
    cell = {(r["platform"], r["family"]): r for r in rows}
    flagged = {b["platform"]: b for b in benign}

    def fmt(r: dict) -> str:
        ttd = "never" if r["time_to_detect_s"] is None else f"{r['time_to_detect_s']:.1f} s"
        return f"{_fmt(r['roc_auc'])} / {ttd}"

    body = [
        (p, *(fmt(cell[(p, f)]) for f in qs.FAMILIES),
         f"{flagged[p]['flagged']}/{flagged[p]['windows']} ({flagged[p]['incidents']})")
        for p in platforms
    ]  # fmt: skip
    return markdown_table(("platform (ROC-AUC / TTD)", *qs.FAMILIES, "benign flagged (incidents)"), body)


def regressions(rows: list[dict], tolerance: float) -> list[str]:
    out = []
    for r in rows:
        if r["expected"] is None:
            continue
        auc, flagged = r["expected"]
        if r["roc_auc"] is None or r["roc_auc"] < auc - tolerance:
            out.append(f"{r['capture']}: ROC-AUC {_fmt(r['roc_auc'])} < {auc:.3f} - {tolerance}")
        if r["benign_flagged"] is not None and r["benign_flagged"] > flagged + tolerance:
            out.append(
                f"{r['capture']}: benign flagged {r['benign_flagged']:.3f} > {flagged:.3f} + {tolerance}"
            )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="real captures dir")
    ap.add_argument("--platforms", default="all",
                    help="simulated platforms: all, none or a comma-separated list (default all)")  # fmt: skip
    ap.add_argument("--check", action="store_true", help="exit 1 if a real-capture figure regressed")
    ap.add_argument("--tolerance", type=float, default=0.01, help="for --check (default 0.01)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.platforms == "all":
        platforms = list(qs.PLATFORM_BRANDS)
    elif args.platforms == "none":
        platforms = []
    else:
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        unknown = sorted(set(platforms) - set(qs.PLATFORM_BRANDS))
        if unknown:
            ap.error(f"unknown platform(s) {unknown}; choose from {sorted(qs.PLATFORM_BRANDS)}")

    t0 = time.perf_counter()
    skipped: list[str] = []
    real, pooled, forged_rows, s = road(args.data) if args.data.is_dir() else ([], None, [], [])
    skipped += s
    rows, s = crysys(args.data) if args.data.is_dir() else ([], [])
    real += rows
    skipped += s if args.data.is_dir() else [f"real captures not available: {args.data} (skipped)"]
    real_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sim, benign = simulated(platforms)
    sim_s = time.perf_counter() - t1

    parts = [f"# Detection quality on drives and vehicles the model never saw ({machine_line()})",
             f"## Real captures ({args.data}; {real_s:.0f} s)", *(f"> {msg}" for msg in skipped)]  # fmt: skip
    parts += [real_table(real)] if real else []
    parts += [pooled_line(pooled)] if pooled else []
    if forged_rows:
        parts += [
            f"## ROAD, forged signals: one periodic id (>= {FORGED_MIN_HZ:g} Hz) of the held-out "
            f"drive masqueraded at a time, from {FORGED_AT:.0%} of the drive for "
            f"{FORGED_FOR:.0%} of it (at most {FORGED_MAX_S:g} s), fold models as above",
            forged_table(forged_rows),
        ]
    if sim:
        parts += [
            f"## Simulator: trained on {qs.TRAIN_VEHICLES} vehicles x {qs.TRAIN_DRIVES} drives x "
            f"{qs.TRAIN_S:g} s per platform; each attack at +{qs.ATTACK_START:g} s for {qs.ATTACK_S:g} s "
            f"in a new {qs.TEST_S:g} s vehicle; benign: {qs.BENIGN_VEHICLES} new vehicles and a new "
            f"drive of a trained one, {qs.BENIGN_S:g} s each ({sim_s:.0f} s)",
            sim_table(sim, benign),
        ]
    print("\n\n".join(parts) + "\n")
    bad = regressions(real, args.tolerance)
    if args.check:  # a gate that read no capture (a mistyped --data) must not pass
        seen = {r["capture"] for r in real}
        bad += [f"{c}: not evaluated (no such capture under {args.data})"
                for c in EXPECTED if c not in seen]  # fmt: skip
    for msg in bad:
        print(f"REGRESSION {msg}")
    results = {
        "protocol": "leave-one-drive-out (ROAD), another drive (CrySyS), new vehicles (sim)",
        "data": str(args.data), "skipped": skipped, "real": real, "road_pooled": pooled,
        "road_forged": forged_rows,
        "simulated": sim, "simulated_benign": benign, "regressions": bad,
        "seconds": {"real": round(real_s, 1), "simulated": round(sim_s, 1)},
    }  # fmt: skip
    write_results(args.json, results, headline(pooled, real, sim, benign, bad, forged_rows))
    return 1 if args.check and bad else 0


def headline(pooled, real, sim, benign, bad, forged_rows) -> list[tuple[str, str]]:
    out = [("real-capture regressions", str(len(bad)) if real else "not run (no captures)")]
    if pooled:
        out.append(("ROAD pooled: window ROC-AUC, benign windows flagged",
                    f"{_fmt(pooled['roc_auc'])}, {pooled['benign_flagged_windows']}/{pooled['benign_windows']}"))  # fmt: skip
    if forged_rows:
        hit = sum(r["time_to_detect_s"] is not None for r in forged_rows)
        out.append(("ROAD forged signals detected", f"{hit}/{len(forged_rows)}"))
    if sim:
        aucs = [r["roc_auc"] for r in sim if r["roc_auc"] is not None]
        out.append(("simulator: lowest ROC-AUC, benign windows flagged",
                    f"{_fmt(min(aucs, default=None))}, {sum(b['flagged'] for b in benign)}/"
                    f"{sum(b['windows'] for b in benign)}"))  # fmt: skip
    return out


if __name__ == "__main__":
    sys.exit(main())
