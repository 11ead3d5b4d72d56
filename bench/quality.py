"""Detection quality: window ROC-AUC on the real captures and on simulated attacks.

Real captures (``../shared/data``, never copied into the repo; skipped with a
message when absent), exactly as ``tests/test_real_captures.py`` and the
README's table do it (``detector.training.train_platform`` +
``detector.evaluate.score_frames``/``file_report``, the functions behind
``canwatch train`` / ``canwatch evaluate``):

- ROAD: one model trained on the attack-free windows of the 3 ROAD captures,
  each capture evaluated with it;
- CrySyS: trained on ``benign-48.csv`` + ``S-1-1-benign.log``, evaluated on the
  S-1-1 payload-modification capture (0x410).

Simulator (``replay.quality_scenario``, shared with the quality test): per platform, a model
trained on 10 vehicles x 120 s of benign traffic, then each attack family
injected at +15 s for 8 s into a fresh 40 s vehicle; window ROC-AUC of the
attack against that vehicle's benign windows and time to detect.

The expected real-capture figures (README) are printed beside the measured
ones; ``--check`` exits 1 when one falls more than ``--tolerance`` below them,
so a speed change that costs detection quality shows up.

    .venv/bin/python bench/quality.py [--data ../shared/data] [--platforms all|none|cusw,...]
        [--check] [--json out.json]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench.common import ROOT, machine, markdown_table, write_json  # noqa: E402
from replay.quality_scenario import (  # noqa: E402
    ATTACK_S,
    ATTACK_START,
    FAMILIES,
    TEST_S,
    TRAIN_S,
    TRAIN_VEHICLES,
    attacked_vehicle,
    training_recordings,
)
from replay.quality_scenario import PLATFORM_BRANDS as SIM_PLATFORMS  # noqa: E402

#: README "Detection quality": window ROC-AUC on the real captures.
EXPECTED = {
    "road/fuzzing_attack_1.csv": 0.983,
    "road/correlated_signal_attack_2.csv": 1.000,
    "road/correlated_signal_attack_2_masquerade.csv": 1.000,
    "crysys/S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log": 0.935,
}
ROAD_FILES = (
    "fuzzing_attack_1.csv",
    "correlated_signal_attack_2.csv",
    "correlated_signal_attack_2_masquerade.csv",
)
CRYSYS_TRAIN = ("benign-48.csv", "S-1-1-benign.log")
CRYSYS_ATTACK = "S-1-1-malicious-CONST-msg-mod-0x410-0.4-0.6.log"



def default_data_dir() -> Path:
    env = os.environ.get("CANWATCH_SHARED_DATA")
    return Path(env) if env else ROOT.parent / "shared" / "data"


def _fmt(x: float | None, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}"


# -- real captures ---------------------------------------------------------------------


def _real_row(capture: str, trained_on: str, report: dict, train_s: float, eval_s: float) -> dict:
    attacks = report["attacks"]
    kind = next(iter(attacks)) if len(attacks) == 1 else ",".join(attacks)
    a = attacks[kind] if len(attacks) == 1 else {}
    return {
        "capture": capture,
        "trained_on": trained_on,
        "attack": kind,
        "windows": report["windows"],
        "attacked_windows": report["attacked_windows"],
        "roc_auc": report["roc_auc"],
        "expected_roc_auc": EXPECTED.get(capture),
        "precision": a.get("precision"),
        "recall": a.get("recall"),
        "time_to_detect_s": a.get("time_to_detect_s"),
        "benign_flagged": report["benign_flagged_fraction"],
        "incidents": report["incidents"],
        "false_incidents": report["false_incidents"],
        "train_s": round(train_s, 2),
        "eval_s": round(eval_s, 2),
    }


def real_captures(data: Path) -> tuple[list[dict], list[str]]:
    """Rows for every capture found; and messages for what was skipped."""
    from detector.brands import load_fleet
    from detector.config import DetectionConfig, IncidentConfig
    from detector.evaluate import file_report, score_frames
    from detector.training import train_platform
    from replay.readers import read_frames

    cfg, inc, fleet = DetectionConfig(), IncidentConfig(), load_fleet()
    rows, skipped = [], []
    if not data.is_dir():
        return rows, [f"real captures not available: {data} does not exist (skipped)"]

    def evaluate(frames, brand, name, model) -> tuple[dict, float]:
        t0 = time.perf_counter()
        ev = score_frames(frames, brand, name, model, fleet, cfg.window_s, inc)
        return file_report(ev), time.perf_counter() - t0

    road = [data / "road" / n for n in ROAD_FILES]
    missing = [p for p in road if not p.is_file()]
    if missing:
        skipped.append(f"ROAD skipped: missing {', '.join(str(p) for p in missing)}")
    else:
        frames = {p.name: read_frames(p) for p in road}
        t0 = time.perf_counter()
        model, _ = train_platform("road", list(frames.values()), cfg)
        train_s = time.perf_counter() - t0
        for name, f in frames.items():
            report, eval_s = evaluate(f, "road", Path(name).stem, model)
            rows.append(
                _real_row(
                    f"road/{name}", "3 ROAD captures (benign windows)", report, train_s, eval_s
                )
            )
            print(f"  road/{name}: ROC-AUC {_fmt(report['roc_auc'])}", file=sys.stderr, flush=True)

    crysys = [data / "crysys" / n for n in (*CRYSYS_TRAIN, CRYSYS_ATTACK)]
    missing = [p for p in crysys if not p.is_file()]
    if missing:
        skipped.append(f"CrySyS skipped: missing {', '.join(str(p) for p in missing)}")
    else:
        train = [read_frames(data / "crysys" / n) for n in CRYSYS_TRAIN]
        t0 = time.perf_counter()
        model, _ = train_platform("crysys", train, cfg)
        train_s = time.perf_counter() - t0
        frames = read_frames(data / "crysys" / CRYSYS_ATTACK)
        report, eval_s = evaluate(frames, "crysys", Path(CRYSYS_ATTACK).stem, model)
        rows.append(
            _real_row(f"crysys/{CRYSYS_ATTACK}", " + ".join(CRYSYS_TRAIN), report, train_s, eval_s)
        )
        print(f"  crysys: ROC-AUC {_fmt(report['roc_auc'])}", file=sys.stderr, flush=True)
    return rows, skipped


# -- simulator ----------------------------------------------------------------------------


def simulated(platforms: list[str]) -> list[dict]:
    from detector.brands import load_fleet
    from detector.config import DetectionConfig, IncidentConfig
    from detector.evaluate import attack_report, score_frames
    from detector.training import train_platform

    cfg, inc, fleet = DetectionConfig(), IncidentConfig(), load_fleet()
    out = []
    for platform in platforms:
        t0 = time.perf_counter()
        model, _ = train_platform(platform, training_recordings(platform), cfg)
        train_s = time.perf_counter() - t0
        for family in FAMILIES:
            v = attacked_vehicle(platform, family)
            span = v.span
            t1 = time.perf_counter()
            ev = score_frames(
                v.frames, v.brand, v.name, model, fleet, cfg.window_s, inc, v.truth
            )
            r = attack_report(ev, family)
            out.append(
                {
                    "platform": platform,
                    "family": family,
                    "target": None if span.can_id is None else f"0x{span.can_id:X}",
                    "attacked_windows": r["attacked_windows"],
                    "roc_auc": r["roc_auc"],
                    "recall": r["recall"],
                    "time_to_detect_s": r["time_to_detect_s"],
                    "incidents_overlapping": r["incidents_overlapping"],
                    "train_s": round(train_s, 2),
                    "eval_s": round(time.perf_counter() - t1, 3),
                }
            )
        aucs = " ".join(f"{r['family']}={_fmt(r['roc_auc'], 2)}" for r in out[-len(FAMILIES) :])
        print(f"  sim {platform}: {aucs} (trained in {train_s:.1f} s)", file=sys.stderr, flush=True)
    return out


# -- output ---------------------------------------------------------------------------------


def real_table(rows: list[dict]) -> str:
    headers = (
        "capture",
        "attack",
        "windows (attacked)",
        "ROC-AUC",
        "expected",
        "precision",
        "recall",
        "TTD s",
        "benign flagged",
        "incidents (false)",
        "train s",
        "eval s",
    )
    body = [
        (
            r["capture"],
            r["attack"],
            f"{r['windows']} ({r['attacked_windows']})",
            _fmt(r["roc_auc"]),
            _fmt(r["expected_roc_auc"]),
            _fmt(r["precision"]),
            _fmt(r["recall"]),
            _fmt(r["time_to_detect_s"], 2),
            _fmt(r["benign_flagged"], 4),
            f"{r['incidents']} ({r['false_incidents']})",
            f"{r['train_s']:.1f}",
            f"{r['eval_s']:.2f}",
        )
        for r in rows
    ]
    return markdown_table(headers, body)


def sim_table(rows: list[dict]) -> str:
    platforms = list(dict.fromkeys(r["platform"] for r in rows))
    cell = {(r["platform"], r["family"]): r for r in rows}

    def fmt(r: dict) -> str:
        ttd = "never" if r["time_to_detect_s"] is None else f"{r['time_to_detect_s']:.1f} s"
        return f"{_fmt(r['roc_auc'])} / {ttd}"

    body = [(p, *(fmt(cell[(p, f)]) for f in FAMILIES)) for p in platforms]
    return markdown_table(("platform (ROC-AUC / TTD)", *FAMILIES), body)


def regressions(rows: list[dict], tolerance: float) -> list[str]:
    out = []
    for r in rows:
        exp, got = r["expected_roc_auc"], r["roc_auc"]
        if exp is not None and (got is None or got < exp - tolerance):
            out.append(f"{r['capture']}: ROC-AUC {_fmt(got)} < expected {exp:.3f} - {tolerance}")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=default_data_dir(), help="real captures dir")
    ap.add_argument(
        "--platforms",
        default="all",
        help="simulated platforms: all, none or a comma-separated list (default all)",
    )
    ap.add_argument("--check", action="store_true", help="exit 1 if a real-capture AUC regressed")
    ap.add_argument("--tolerance", type=float, default=0.005, help="for --check (default 0.005)")
    ap.add_argument("--json", type=Path, help="also write the results here")
    args = ap.parse_args(argv)
    if args.platforms == "all":
        platforms = list(SIM_PLATFORMS)
    elif args.platforms == "none":
        platforms = []
    else:
        platforms = [p.strip() for p in args.platforms.split(",") if p.strip()]
        unknown = sorted(set(platforms) - set(SIM_PLATFORMS))
        if unknown:
            ap.error(f"unknown platform(s) {unknown}; choose from {sorted(SIM_PLATFORMS)}")

    t0 = time.perf_counter()
    real, skipped = real_captures(args.data)
    real_s = time.perf_counter() - t0
    t1 = time.perf_counter()
    sim = simulated(platforms)
    sim_s = time.perf_counter() - t1

    print(f"# Detection quality ({machine()})\n")
    print(f"## Real captures ({args.data}; {real_s:.0f} s)\n")
    for msg in skipped:
        print(f"> {msg}\n")
    if real:
        print(real_table(real) + "\n")
    if sim:
        print(
            f"## Simulator: {TRAIN_VEHICLES} x {TRAIN_S:g} s benign per platform, attack at "
            f"+{ATTACK_START:g} s for {ATTACK_S:g} s in a new {TEST_S:g} s vehicle ({sim_s:.0f} s)\n"
        )
        print(sim_table(sim) + "\n")
    bad = regressions(real, args.tolerance)
    for msg in bad:
        print(f"REGRESSION {msg}")
    write_json(
        args.json,
        {
            "machine": machine(),
            "data": str(args.data),
            "skipped": skipped,
            "real": real,
            "simulated": sim,
            "seconds": {"real": round(real_s, 1), "simulated": round(sim_s, 1)},
            "regressions": bad,
        },
    )
    return 1 if args.check and bad else 0


if __name__ == "__main__":
    sys.exit(main())
