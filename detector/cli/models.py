"""canwatch models: what serves, what is in shadow, and changing it (docs/lifecycle.md)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from detector.cli._common import add_config_flag, config_from
from detector.core.errors import CanwatchError, ModelError
from detector.model import lifecycle
from detector.model.shadow_record import incident_ratio, promotion_verdict, read_tallies
from detector.model.store import install_copy, list_manifests, read_manifest


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "models",
        help="list model versions; deploy one in shadow; promote or roll back",
        description="The model lifecycle of a model directory (models.dir, or --models): "
        "which version of each platform serves, which one scores in shadow beside it "
        "(its incidents never published), and which served before. Running detectors "
        "follow a change within models.reload_interval_s, without a restart.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(name: str, help_: str) -> argparse.ArgumentParser:
        a = sub.add_parser(name, help=help_, description=help_)
        a.add_argument("--models", metavar="DIR", help="model directory (default: models.dir)")
        add_config_flag(a)
        return a

    a = action("list", "each platform's versions: serving, shadow, previous, with training")
    a.add_argument("--json", action="store_true", help="one JSON object per platform")
    a.set_defaults(func=run_list)
    a = action("deploy", "copy a trained model into the model directory, in shadow or serving")
    a.add_argument(
        "source", metavar="SRC", help="a training output directory (its newest version of "
        "each platform) or one manifest (<platform>-v<N>.json)",
    )  # fmt: skip
    how = a.add_mutually_exclusive_group(required=True)
    how.add_argument("--shadow", action="store_true", help="score it beside what serves")
    how.add_argument("--serve", action="store_true", help="serve it at once (no shadow period)")
    a.set_defaults(func=run_deploy)
    a = action("promote", "serve a version (the shadow, once its record allows it)")
    a.add_argument("platform")
    a.add_argument("version", help="version number (4 or v4)")
    a.add_argument(
        "--force", action="store_true", help="promote even without, or against, its record"
    )
    a.set_defaults(func=run_promote)
    a = action("rollback", "serve again the version that served before")
    a.add_argument("platform")
    a.set_defaults(func=run_rollback)
    a = action("unshadow", "stop scoring the platform's shadow (its files stay)")
    a.add_argument("platform")
    a.set_defaults(func=run_unshadow)


def _dir(args: argparse.Namespace) -> Path:
    return Path(args.models or config_from(args).models.dir)


def _version(text: str) -> int:
    try:
        return int(text.lower().removeprefix("v"))
    except ValueError:
        raise CanwatchError(f"version must be a number like 4 or v4, got {text!r}") from None


def _changed(state: lifecycle.Lifecycle, what: str) -> int:
    shadow = f", v{state.shadow} in shadow" if state.shadow is not None else ""
    print(f"{state.platform}: {what}; v{state.serving} serves{shadow}")
    return 0


def run_promote(args: argparse.Namespace) -> int:
    cfg = config_from(args)
    d = Path(args.models or cfg.models.dir)
    version = _version(args.version)
    state = _state(d, args.platform)
    if state.shadow != version:
        why = f"v{version} is not in shadow (so it has no record beside the serving model)"
    else:
        record = read_tallies(d, args.platform, version, state.serving or 0)
        why = promotion_verdict(record, cfg.models.promote_max_ratio, version)
    if why and not args.force:
        raise CanwatchError(f"refusing to promote {args.platform} v{version}: {why}; --force "
                            "promotes it anyway")  # fmt: skip
    try:
        new = lifecycle.promote(d, args.platform, version)
    except ModelError as exc:
        raise CanwatchError(str(exc)) from None
    return _changed(new, f"promoted v{version}" + (" (forced)" if why else ""))


def run_rollback(args: argparse.Namespace) -> int:
    return _step(args, lifecycle.rollback, lambda old: f"rolled back from v{old.serving}")


def run_unshadow(args: argparse.Namespace) -> int:
    return _step(args, lifecycle.drop_shadow, lambda old: f"v{old.shadow} out of shadow")


def _step(args: argparse.Namespace, change, what) -> int:
    """One lifecycle change of ``args.platform`` (a ModelError is the CLI's one line), and
    what it did, from the state before it (``what(old)``)."""
    d = _dir(args)
    old = _state(d, args.platform)
    try:
        new = change(d, args.platform)
    except ModelError as exc:
        raise CanwatchError(str(exc)) from None
    return _changed(new, what(old))


def _state(d: Path, platform: str) -> lifecycle.Lifecycle:
    if platform not in list_manifests(d):
        have = ", ".join(sorted(list_manifests(d))) or "none"
        raise CanwatchError(f"no model of platform {platform!r} in {d} (platforms: {have})")
    try:
        return lifecycle.read_lifecycle(d, platform)
    except ModelError as exc:
        raise CanwatchError(str(exc)) from None


def _sources(source: Path) -> list[Path]:
    if source.is_file():
        return [source]
    if not source.is_dir():
        raise CanwatchError(f"{source}: no such model directory or manifest")
    newest = [versions[-1].path for versions in list_manifests(source).values()]
    if not newest:
        raise CanwatchError(f"{source}: no model manifest (<platform>-v<N>.json) in it")
    return newest


def run_deploy(args: argparse.Namespace) -> int:
    d = _dir(args)
    for src in _sources(Path(args.source)):
        try:
            platform = str(read_manifest(src)["platform"])
            before = lifecycle.read_lifecycle(d, platform)
            if before.serving is not None and not before.pinned:
                lifecycle.write_lifecycle(d, before)  # pin what serves before a newer one lands
            installed = install_copy(src, d)
            version = int(read_manifest(installed)["version"])
            if args.shadow and before.serving is not None:
                new = lifecycle.set_shadow(d, platform, version)
                _changed(new, f"deployed {src.name} as v{version} in shadow")
            else:  # --serve, or the platform's first model: nothing to shadow beside
                new = lifecycle.promote(d, platform, version)
                _changed(new, f"deployed {src.name} as v{version}, serving")
        except ModelError as exc:
            raise CanwatchError(str(exc)) from None
    return 0


def platform_listing(d: Path, platform: str, versions: list) -> dict:
    """Every version of ``platform`` with its role and training summary, and the shadow's
    record beside the serving model."""
    state = lifecycle.read_lifecycle(d, platform)
    rows = []
    for m in versions:
        try:
            info = read_manifest(m.path)
        except ModelError as exc:
            rows.append({"version": m.version, "role": "unreadable", "error": str(exc)})
            continue
        training = info.get("training", {})
        role = (
            "serving" if m.version == state.serving
            else "shadow" if m.version == state.shadow
            else "previous" if m.version in state.previous
            else "-"
        )  # fmt: skip
        rows.append({
            "version": m.version,
            "role": role,
            "created": info.get("created"),
            "threshold": info.get("threshold"),
            "benign_frames": training.get("benign_frames"),
            "drives": training.get("drives"),
            "ids": training.get("ids"),
            "source": _source(training),
        })  # fmt: skip
    out = {
        "platform": platform,
        "serving": state.serving,
        "shadow": state.shadow,
        "previous": list(state.previous),
        "versions": rows,
    }
    if state.shadow is not None:
        t = read_tallies(d, platform, state.shadow, state.serving or 0)
        out["shadow_record"] = None if t is None else {
            "windows": t.windows,
            "vehicle_hours": round(t.vehicle_hours, 2),
            "serving_incidents": t.serving_incidents,
            "shadow_incidents": t.shadow_incidents,
            "incident_ratio": round(incident_ratio(t), 2),
            "agreement": round(t.agreeing / t.windows, 4) if t.windows else None,
        }  # fmt: skip
    return out


def _source(training: dict) -> str:
    span = training.get("source")  # train --from-kafka: the span of the topic it read
    if isinstance(span, dict) and span.get("kind") == "kafka":
        return f"kafka {span.get('topic', '')} {span.get('since', '')}..{span.get('until', '')}"
    files = training.get("files") or []
    return f"{len(files)} files" if files else "-"


def run_list(args: argparse.Namespace) -> int:
    d = _dir(args)
    manifests = list_manifests(d)
    if not manifests:
        raise CanwatchError(f"no model in {d} (run canwatch train --out {d})")
    for platform in sorted(manifests):
        try:
            listing = platform_listing(d, platform, manifests[platform])
        except ModelError as exc:
            raise CanwatchError(str(exc)) from None
        if args.json:
            print(json.dumps(listing))
            continue
        print(_render(listing))
    return 0


def _render(listing: dict) -> str:
    lines = [f"{listing['platform']}:"]
    for r in listing["versions"]:
        if "error" in r:
            lines.append(f"  v{r['version']:<4} unreadable: {r['error']}")
            continue
        thr = f"{r['threshold']:.3f}" if isinstance(r["threshold"], float) else "-"
        lines.append(
            f"  v{r['version']:<4} {r['role']:<9} {r['created'] or '-':<21} threshold {thr:<7} "
            f"{r['benign_frames'] or 0:>11,} frames {r['drives'] or 0:>3} drives  {r['source']}"
        )
    rec = listing.get("shadow_record")
    if listing["shadow"] is not None:
        if rec is None:
            lines.append(f"  shadow v{listing['shadow']}: no record yet (no detector scored it)")
        else:
            lines.append(
                f"  shadow v{listing['shadow']} beside v{listing['serving']}: "
                f"{rec['windows']:,} windows ({rec['vehicle_hours']} vehicle-hours), incidents "
                f"{rec['shadow_incidents']} vs {rec['serving_incidents']} serving, "
                f"agreement {rec['agreement']:.2%}"
            )
    return "\n".join(lines)
