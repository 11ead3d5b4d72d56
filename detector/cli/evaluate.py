"""canwatch evaluate: labelled recordings through the service's own path, offline.

With ``--cross-validate`` it is leave-one-group-out: each group of recordings
(a drive or a vehicle) is scored by a model trained on every other group, the
way ``canwatch train`` trains one. Those are the figures that say how the
detector does on traffic it has never seen.
"""

from __future__ import annotations

import argparse
import csv
import json
import tempfile
from pathlib import Path

import numpy as np

from detector.cli._channel_flag import add_channel_flag
from detector.cli._common import add_config_flag, config_from, fleet_from, latest_model, spans_for
from detector.cli._progress import track
from detector.cli.train import brands_served, train_and_save
from detector.core.brands import Fleet
from detector.core.config import Config
from detector.core.errors import CanwatchError
from detector.evaluation.cross_validation import (
    GROUP_BY,
    Fold,
    check_no_twin_in_training,
    groups_by_drive,
    groups_by_file,
    groups_from_map,
    leave_one_group_out,
    read_group_map,
)
from detector.evaluation.evaluate import (
    WINDOW_COLUMNS,
    Evaluation,
    Span,
    file_report,
    pooled_report,
    score_frames,
    window_rows,
)
from detector.model.platform import PlatformModel
from detector.model.store import list_manifests, load_model, read_manifest
from replay.readers import read_frames

CROSS_DRIVE_NOTE = "cross-drive figures: every file is scored by a model trained without its group"


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "evaluate",
        help="score labelled recordings offline and report detection quality",
        description="Replays labelled recordings through the same decode -> features -> "
        "model -> incident path as `canwatch detect` and reports per attack type: ROC-AUC, "
        "precision/recall/F1 at the calibrated threshold, benign windows flagged, false "
        "incidents per hour of benign traffic, time to detect and incidents. An incident is "
        "true only when it overlaps an attack and opens no earlier than one window before the "
        "attack's first frame. A fleet.json beside a file (from `canwatch simulate`) supplies "
        "attack spans, so suspensions are labelled too. With --cross-validate, no --models: "
        "each group of files is held out in turn and scored by a model trained on the others.",
    )
    p.add_argument("files", nargs="+", metavar="FILE")
    p.add_argument("--models", metavar="DIR", help="model directory (not with --cross-validate)")
    p.add_argument("--brand", required=True, help="brand slug of the recordings")
    p.add_argument(
        "--cross-validate",
        action="store_true",
        help="leave-one-group-out: train on the other groups' files, score each held-out one",
    )
    p.add_argument(
        "--groups",
        metavar="MAP.csv",
        help="with --cross-validate: CSV with header 'file,group' naming the drive or vehicle "
        "of every FILE (matched by base name)",
    )
    p.add_argument(
        "--group-by",
        metavar="HOW",
        help="with --cross-validate and no --groups: 'auto' (default; files sharing most "
        "benign payloads are one drive, e.g. an attack capture and its masquerade twin) or "
        "'file' (each file its own group)",
    )
    p.add_argument(
        "--models-out",
        metavar="DIR",
        help="with --cross-validate: keep each fold's model in DIR/fold-<n> (default: discarded)",
    )
    p.add_argument("--windows-out", metavar="W.csv", help="one row per (vehicle, window)")
    p.add_argument("--report", metavar="R.json", help="full report as JSON")
    p.add_argument(
        "--plot",
        metavar="F.png",
        help="draw each file's window scores over time (log axis, threshold 1.0, attack spans "
        "shaded, incidents marked) and the ROC curves into F (.png, .svg or .pdf)",
    )
    p.add_argument(
        "--incidents-out",
        metavar="I.jsonl",
        help="every incident as a JSON line, with its file and frame range (provenance); "
        "`canwatch incidents show|export ID --from I.jsonl` reads them",
    )
    p.add_argument("--format", help="force the log format of every FILE")
    add_channel_flag(p)
    add_config_flag(p)
    p.set_defaults(func=run)


def check_mode(args: argparse.Namespace) -> None:
    """Flags that only make sense in one mode, as one-line errors."""
    if args.plot:
        from detector.evaluation.plots import PLOT_SUFFIXES  # matplotlib only when asked

        if Path(args.plot).suffix.lower() not in PLOT_SUFFIXES:
            raise CanwatchError(
                f"--plot must name a {', '.join(PLOT_SUFFIXES)} file, got {args.plot!r}"
            )
    if args.cross_validate:
        if args.models:
            raise CanwatchError(
                "--models does not apply with --cross-validate: each fold trains its own model"
            )
        if args.groups and args.group_by:
            raise CanwatchError("give either --groups or --group-by, not both")
        if args.group_by and args.group_by not in GROUP_BY:
            raise CanwatchError(
                f"--group-by must be one of {', '.join(GROUP_BY)}, got {args.group_by!r}"
            )
    else:
        if not args.models:
            raise CanwatchError("--models DIR is required (or --cross-validate, which trains)")
        extra = [f for f in ("groups", "group_by", "models_out") if getattr(args, f)]
        if extra:
            flag = "--" + extra[0].replace("_", "-")
            raise CanwatchError(f"{flag} applies only with --cross-validate")


def load_recording(
    path: Path, fmt: str | None, channel: str | None = None
) -> tuple[np.ndarray, list[Span]]:
    return read_frames(path, fmt, channel), spans_for(path.parent / "fleet.json", path.stem)


def evaluate_file(
    path: Path,
    frames: np.ndarray,
    spans: list[Span],
    brand: str,
    model: PlatformModel,
    cfg: Config,
    fleet: Fleet,
    channel: str | None = None,
) -> Evaluation:
    """One recording (its ``channel``) as one vehicle through the service's path."""
    W = model.baseline.window_s
    return score_frames(
        frames, brand, path.stem, model, fleet, W, cfg.incidents, spans,
        source=str(path), channel=channel,
    )  # fmt: skip


def run(args: argparse.Namespace) -> int:
    check_mode(args)
    cfg = config_from(args)
    fleet = fleet_from(cfg)
    if args.cross_validate:
        report, rows, evs = cross_validate(args, cfg, fleet)
        text = render_cross_validation(report)
    else:
        report, rows, evs = evaluate_with_model(args, cfg, fleet)
        text = render(report)
    if args.plot:
        plot(args.plot, plot_title(args, report), evs)
    if args.incidents_out:
        lines = [json.dumps(i) + "\n" for ev in evs.values() for i in ev.incidents]
        Path(args.incidents_out).write_text("".join(lines), encoding="utf-8")
    if args.windows_out:
        with open(args.windows_out, "w", newline="", encoding="utf-8") as fh:
            w = csv.writer(fh)
            w.writerow(WINDOW_COLUMNS)
            w.writerows(rows)
    if args.report:
        Path(args.report).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8")
    print(text)
    return 0


def plot(path: str, title: str, evs: dict[str, Evaluation]) -> None:
    """``--plot``: each file's scores over time, and their ROC."""
    from detector.evaluation.plots import save_evaluation_plot

    save_evaluation_plot([(Path(f).name, ev) for f, ev in evs.items()], path, title)


def plot_title(args: argparse.Namespace, report: dict) -> str:
    """Which model scored the files, and what it was trained on."""
    if args.cross_validate:
        return f"{CROSS_DRIVE_NOTE} (leave-one-group-out, {len(report['folds'])} groups)"
    m = report["model"]
    manifest = read_manifest(list_manifests(args.models)[m["platform"]][-1].path)
    trained = ", ".join(manifest.get("training", {}).get("files", [])) or "unknown files"
    title = f"model {m['platform']} v{m['version']} trained on {trained}"
    if any(r.get("in_training") for r in report["files"].values()):
        title += "; some files scored were in its training data: not a quality figure"
    return title


def evaluate_with_model(
    args: argparse.Namespace, cfg: Config, fleet: Fleet
) -> tuple[dict, list[tuple], dict[str, Evaluation]]:
    platform = fleet.platform_of(args.brand)
    model = latest_model(args.models, platform)
    trained_on = set(model.info.get("training", {}).get("files", []))
    report: dict = {"model": {"platform": model.platform, "version": model.version}, "files": {}}
    rows: list[tuple] = []
    evs: dict[str, Evaluation] = {}
    for f in track(args.files, "scoring", unit="file"):
        path = Path(f)
        loaded = load_recording(path, args.format, args.channel)
        ev = evaluate_file(path, *loaded, args.brand, model, cfg, fleet, args.channel)
        r = file_report(ev)
        if path.name in trained_on:
            r["in_training"] = True
        report["files"][str(f)] = r
        rows += window_rows(str(f), ev)
        evs[str(f)] = ev
    report["pooled"] = pooled_report(list(evs.values()))
    return report, rows, evs


def cross_validate(
    args: argparse.Namespace, cfg: Config, fleet: Fleet
) -> tuple[dict, list[tuple], dict[str, Evaluation]]:
    """Leave-one-group-out over ``args.files``: per fold, train as `canwatch train` does on
    the other groups, save and reload the model, score each held-out file."""
    files = [str(f) for f in args.files]
    where = [Path(f).resolve() for f in files]  # data/a.csv and ./data/a.csv are one file
    twice = next((f for f, w in zip(files, where, strict=True) if where.count(w) > 1), None)
    if twice:
        raise CanwatchError(f"{twice} is given twice")
    platform = fleet.platform_of(args.brand)
    labels = None
    if args.groups:  # before reading recordings: a file missing from the map fails fast
        labels = groups_from_map(files, read_group_map(args.groups), args.groups)
    loaded = [
        load_recording(Path(f), args.format, args.channel)
        for f in track(files, "reading", unit="file")
    ]
    recordings = [frames for frames, _ in loaded]
    drives = groups_by_drive(recordings)
    if labels is None:
        by = args.group_by or "auto"
        labels = drives if by == "auto" else groups_by_file(files)
    folds = leave_one_group_out(labels)
    check_no_twin_in_training(folds, files, drives)
    brands = brands_served(fleet, platform, args.brand)
    report: dict = {
        "protocol": "leave-one-group-out",
        "note": CROSS_DRIVE_NOTE,
        "brand": args.brand,
        "platform": platform,
        "grouping": "map" if args.groups else args.group_by or "auto",
        "groups_file": args.groups,
        "groups": {f.group: [files[i] for i in f.held_out] for f in folds},
        "folds": [],
        "files": {},
    }
    rows: list[tuple] = []
    evs: dict[str, Evaluation] = {}
    with tempfile.TemporaryDirectory(prefix="canwatch-cv-") as tmp:
        root = Path(args.models_out) if args.models_out else Path(tmp)
        for n, fold in enumerate(track(folds, "folds", unit="fold"), start=1):
            try:
                manifest = train_and_save(
                    platform,
                    [recordings[i] for i in fold.train],
                    [files[i] for i in fold.train],
                    cfg.detection,
                    root / f"fold-{n}",
                    brands,
                    [labels[i] for i in fold.train],
                    desc=f"fold {n}: fitting",
                )
            except CanwatchError as exc:
                raise CanwatchError(f"fold {n} (group {fold.group!r} held out): {exc}") from None
            model = load_model(manifest)
            kept = manifest if args.models_out else None
            report["folds"].append(fold_record(fold, files, labels, model.info, kept))
            for i in fold.held_out:
                ev = evaluate_file(
                    Path(files[i]), *loaded[i], args.brand, model, cfg, fleet, args.channel
                )
                report["files"][files[i]] = {"group": fold.group, **file_report(ev)}
                rows += window_rows(files[i], ev)
                evs[files[i]] = ev
    report["pooled"] = pooled_report(list(evs.values()))
    return report, rows, evs


def fold_record(
    fold: Fold, files: list[str], labels: list[str], manifest: dict, kept: Path | None
) -> dict:
    """What a fold held out, what its model was trained on, and the model itself."""
    return {
        "group": fold.group,
        "held_out": [files[i] for i in fold.held_out],
        "trained_on": [files[i] for i in fold.train],
        "trained_on_groups": list(dict.fromkeys(labels[i] for i in fold.train)),
        "model": {
            "platform": manifest["platform"],
            "version": manifest["version"],
            "threshold": manifest["threshold"],
            "sha256": manifest["sha256"],
            "manifest": None if kept is None else str(kept),
        },
        "training": manifest["training"],
    }


def _fmt(x, digits: int = 3) -> str:
    return "-" if x is None else f"{x:.{digits}f}" if isinstance(x, float) else str(x)


def _flagged(r: dict) -> str:
    """Benign windows flagged, from the counts (the fraction in the JSON is rounded)."""
    n = r["benign_windows"]
    return f"{100 * r['benign_flagged_windows'] / n:.1f}%" if n else "-"


def _s(x) -> str:
    return "-" if x is None else f"{x:.2f} s"


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _ttd(r: dict, has_attacks: bool) -> str:
    if not has_attacks:
        return "-"
    return "never" if r["time_to_detect_s"] is None else f"{r['time_to_detect_s']:.2f}"


COLUMNS = ("win", "att", "auc", "flagged", "fi/h", "recall", "ttd_s", "inc", "false")
WIDTHS = (5, 4, 6, 7, 7, 6, 6, 4, 5)
LEGEND = (
    "flagged: benign windows scoring >= threshold; fi/h: false incidents per hour of benign "
    "traffic;\nttd_s: attack start to the end of its first window flagged inside a true "
    "incident, the slowest of its episodes (never: none, or only an incident that opened "
    "earlier than a window before it);\ninc/false: incidents and false ones (per attack: "
    "incidents overlapping it, and those of them that opened too early); win: windows "
    "counted (attacked, or benign outside every attack's episode); pooled: a benign "
    "window two files hold (a capture and its edited twin) once"
)

#: A table row: (name, attack, cells, trailing text); a plain str is a line of its own.
Row = tuple[str, str, tuple, str]


def _file_row(name: str, r: dict) -> Row:
    cells = (
        r["windows"],
        r["attacked_windows"],
        _fmt(r["roc_auc"]),
        _flagged(r),
        _fmt(r["false_incidents_per_hour"], 1),
        _fmt(r["recall"]),
        _ttd(r, bool(r["attacks"])),
        r["incidents"],
        r["false_incidents"],
    )
    return (name, "(all)", cells, "")


def _attack_row(kind: str, a: dict, incidents: bool = True, extra: str = "") -> Row:
    cells = (
        a["windows"],
        a["attacked_windows"],
        _fmt(a["roc_auc"]),
        "",
        "",
        _fmt(a["recall"]),
        _ttd(a, True),
        a["incidents_overlapping"] if incidents else "",
        a["early_incidents"] if incidents else "",
    )
    return ("", kind, cells, extra)


def _file_rows(name: str, r: dict) -> list[Row]:
    return [_file_row(name, r)] + [_attack_row(k, a) for k, a in r["attacks"].items()]


def _table(items: list[Row | str], first: str = "file") -> list[str]:
    """Rows under a header, the name column as wide as its longest name."""
    width = max([len(first)] + [len(it[0]) for it in items if not isinstance(it, str)])
    head = f"{first:{width}} {'attack':11} " + " ".join(
        f"{c:>{w}}" for c, w in zip(COLUMNS, WIDTHS, strict=True)
    )
    out = [head, "-" * len(head)]
    for it in items:
        if isinstance(it, str):
            out.append("-" * len(head) if it == "-" else it)
            continue
        name, kind, cells, extra = it
        body = " ".join(f"{c!s:>{w}}" for c, w in zip(cells, WIDTHS, strict=True))
        out.append(f"{name:{width}} {kind:11} {body}{extra}".rstrip())
    return out


def render(report: dict) -> str:
    items: list[Row | str] = []
    for f, r in report["files"].items():
        items += _file_rows(Path(f).name, r)
    lines = _table(items)
    trained = [Path(f).name for f, r in report["files"].items() if r.get("in_training")]
    if trained:
        lines.append(
            f"note: {', '.join(trained)} in this model's training data: not a quality figure "
            "(use --cross-validate)"
        )
    return "\n".join(lines + [LEGEND])


def render_cross_validation(report: dict) -> str:
    folds, pooled = report["folds"], report["pooled"]
    items: list[Row | str] = []
    for fold in folds:
        trained = ", ".join(Path(f).name for f in fold["trained_on"])
        items.append(
            f"[{fold['group']}] held out; model trained on {trained} "
            f"({_plural(fold['training']['drives'], 'drive')}, "
            f"threshold {fold['model']['threshold']:.3f})"
        )
        for f in fold["held_out"]:
            items += _file_rows(Path(f).name, report["files"][f])
    items += ["-", _file_row(f"pooled ({pooled['recordings']} files)", pooled)]
    for kind, a in pooled["attacks"].items():
        extra = (
            f"   ttd median {_s(a['time_to_detect_median_s'])}, "
            f"detected {a['detected']}/{a['attacks']}"
        )
        items.append(_attack_row(kind, a, incidents=False, extra=extra))
    n, found = pooled["attacks_total"], pooled["attacks_detected"]
    worst = "never" if n and pooled["time_to_detect_s"] is None else _s(pooled["time_to_detect_s"])
    lines = [
        f"{CROSS_DRIVE_NOTE} (leave-one-group-out, {len(folds)} groups by {report['grouping']})",
        *_table(items),
        f"time to detect over {_plural(n, 'attack')}: worst {worst}, "
        f"median {_s(pooled['time_to_detect_median_s'])}; detected {found}/{n}",
    ]
    return "\n".join(lines + [LEGEND])
