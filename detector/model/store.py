"""Model files on disk: skops (no code runs on load) + a JSON manifest.

Layout of a model directory::

    <platform>-v<N>.skops   forest, envelope and baseline arrays
    <platform>-v<N>.json    manifest: brand(s), platform, version, feature names,
                            threshold, training summary, sha256 of the .skops file

    .canwatch-models.lock   writers take it: one version written at a time
    .canwatch-versions.json the highest version given per platform (never reused)

The newest version per platform is the one in use (unless its lifecycle file
pins another). Loading checks that the manifest names a file beside it, under
its own platform and version, and that its sha256 matches; only the
scikit-learn tree type is trusted beyond skops' defaults.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import skops.io as sio

from detector.core.errors import ModelError
from detector.features.baseline import Baseline
from detector.features.columns import FEATURE_NAMES
from detector.model.platform import MODEL_FORMAT, PlatformModel

TRUSTED_TYPES = ["sklearn.tree._tree.Tree"]
#: skops parses a model file with ``ast``, whose recursion bookkeeping CPython 3.11
#: keeps per interpreter (gh-106905): two threads loading at once (two detectors in
#: one process) can fail with "AST constructor recursion depth mismatch". One load
#: at a time per process.
_SKOPS_LOCK = threading.Lock()
_MANIFEST = re.compile(r"^(?P<platform>[a-z0-9][a-z0-9-]*)-v(?P<version>\d+)\.json$")


@dataclass(frozen=True)
class Manifest:
    path: Path
    platform: str
    version: int
    data: dict


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def write_atomically(path: Path, data: bytes | str) -> None:
    """``data`` into ``path`` through a temporary file renamed over it: a reader sees
    the old content or the new, never half (a dotted name no listing takes)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    if isinstance(data, str):
        tmp.write_text(data, encoding="utf-8")
    else:
        tmp.write_bytes(data)
    tmp.replace(path)


def list_manifests(model_dir: Path | str) -> dict[str, list[Manifest]]:
    """Manifests per platform, oldest version first (unparseable ones skipped)."""
    out: dict[str, list[Manifest]] = {}
    d = Path(model_dir)
    if not d.is_dir():
        return out
    for p in d.iterdir():
        m = _MANIFEST.match(p.name)
        if m:
            out.setdefault(m["platform"], []).append(
                Manifest(p, m["platform"], int(m["version"]), {})
            )
    for lst in out.values():
        lst.sort(key=lambda m: m.version)
    return out


#: A platform's lifecycle file is <platform> + this (``detector.model.lifecycle``)
LIFECYCLE_SUFFIX = ".lifecycle.json"


def _versions_in_lifecycle(d: Path, platform: str) -> list[int]:
    """Every version the platform's lifecycle file names (serving, shadow, previous,
    history), read leniently: the registry judges the file, this only avoids its numbers."""
    try:
        data = json.loads((d / f"{platform}{LIFECYCLE_SUFFIX}").read_text(encoding="utf-8"))
        named = [data.get("serving"), data.get("shadow"), *data.get("previous", [])]
        named += [e.get("version") for e in data.get("history", []) if isinstance(e, dict)]
    except (OSError, ValueError, AttributeError, TypeError):
        return []
    return [v for v in named if type(v) is int]


#: The highest version given per platform, kept by the writers (``_reserved``)
_GIVEN = ".canwatch-versions.json"


def _given(d: Path) -> dict[str, int]:
    try:
        data = json.loads((d / _GIVEN).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return {k: v for k, v in data.items() if type(v) is int} if isinstance(data, dict) else {}


def next_version(model_dir: Path | str, platform: str) -> int:
    """One past every version the platform had: a number is never given twice, even after
    its files were deleted (detectors, shadow records and the lifecycle know models by it)."""
    d = Path(model_dir)
    used = [m.version for m in list_manifests(d).get(platform, [])]
    given = _given(d).get(platform, 0)
    return max([given, *used, *_versions_in_lifecycle(d, platform)]) + 1


def _take_version(d: Path, platform: str) -> int:
    """The next version of ``platform``, recorded as given (under ``_reserved``)."""
    version = next_version(d, platform)
    write_atomically(d / _GIVEN, json.dumps(_given(d) | {platform: version}) + "\n")
    return version


@contextmanager
def _reserved(d: Path) -> Iterator[None]:
    """The model directory to one writer at a time: two trainings of one platform (jeep
    and fiat are both cusw) would take the same version, and one would replace the other."""
    # read-only: flock needs no write access, and the file another writer created (0644)
    # must not stop one of the group from writing a model beside it
    fd = os.open(d / ".canwatch-models.lock", os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def save_model(
    model: PlatformModel, model_dir: Path | str, brands: list[str], training: dict
) -> Path:
    """Write ``model`` as the next version for its platform; returns the manifest path."""
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    with _reserved(d):
        return _save_next(model, d, brands, training)


def _save_next(model: PlatformModel, d: Path, brands: list[str], training: dict) -> Path:
    version = _take_version(d, model.platform)
    stem = f"{model.platform}-v{version}"
    payload = {
        "forest": model.forest,
        "env_lo": model.env_lo,
        "env_hi": model.env_hi,
        "env_scale": model.env_scale,
        "forest_hi": np.float64(model.forest_hi),
        "evidence_scale": model.evidence_scale,
        "tolerance": model.tolerance,
        "baseline": model.baseline.to_dict(),
    }
    model_path = d / f"{stem}.skops"
    tmp = d / f".{stem}.skops.{os.getpid()}.tmp"
    sio.dump(payload, tmp)
    tmp.replace(model_path)
    manifest = {
        "brand": brands[0] if len(brands) == 1 else model.platform,
        "brands": brands,
        "platform": model.platform,
        "version": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "feature_names": list(model.feature_names),
        "format": MODEL_FORMAT,
        "threshold": model.threshold,
        "window_s": model.baseline.window_s,
        "model_file": model_path.name,
        "sha256": sha256_of(model_path),
        "training": training,
    }
    manifest_path = d / f"{stem}.json"
    # the manifest appears last: a reader never sees half a model
    write_atomically(manifest_path, json.dumps(manifest, indent=2) + "\n")
    return manifest_path


#: What a manifest must hold, and as what (bool is not taken for a number)
_FIELDS: dict[str, tuple[type, ...]] = {
    "platform": (str,), "version": (int,), "model_file": (str,), "sha256": (str,),
    "threshold": (int, float), "feature_names": (list,),
}  # fmt: skip


def read_manifest(path: Path | str) -> dict:
    """A manifest's fields, checked for presence and type: anything else is a ModelError
    (a detector refuses the version and keeps serving; the CLI says so in one line)."""
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 at all
        hint = " (give the .json manifest beside it)" if path.suffix != ".json" else ""
        raise ModelError(f"{path}: unreadable manifest{hint}: {type(exc).__name__}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path}: manifest lacks its fields (not a JSON object)")
    for key, types in _FIELDS.items():
        value = data.get(key)
        if not isinstance(value, types) or isinstance(value, bool):
            raise ModelError(f"{path}: manifest lacks {key!r} as a {types[0].__name__}")
    return data


def latest_model(model_dir: Path | str, platform: str) -> PlatformModel:
    """The newest version of ``platform``'s model in ``model_dir`` (the one in use)."""
    versions = list_manifests(model_dir).get(platform)
    if not versions:
        raise ModelError(f"no model for platform {platform!r} in {model_dir} (run canwatch train)")
    return load_model(versions[-1].path)


def load_model(manifest_path: Path | str) -> PlatformModel:
    """Load and verify one model version; raises ModelError on any doubt."""
    manifest_path = Path(manifest_path)
    m = read_manifest(manifest_path)
    name = m["model_file"]
    # a bare file name beside the manifest; it may be a symlink (an artifact store):
    # the sha256 below vouches for what it holds
    if Path(name).name != name or name in ("", ".", "..") or "\\" in name:
        raise ModelError(
            f"{manifest_path}: model_file {name!r} points outside the model directory"
        )
    named = _MANIFEST.match(manifest_path.name)
    if named and (named["platform"], int(named["version"])) != (m["platform"], m["version"]):
        raise ModelError(
            f"{manifest_path}: manifest of {m['platform']} v{m['version']} under another "
            "file name (a copy renamed by hand: install it with canwatch models deploy)"
        )
    model_path = manifest_path.parent / name
    if not model_path.is_file():
        raise ModelError(f"{manifest_path}: model file {model_path.name} is missing")
    digest = sha256_of(model_path)
    if digest != m["sha256"]:
        raise ModelError(
            f"{model_path}: sha256 mismatch (manifest {m['sha256'][:12]}…, file {digest[:12]}…): "
            "refusing a tampered or half-written model"
        )
    if tuple(m["feature_names"]) != FEATURE_NAMES or m.get("format") != MODEL_FORMAT:
        raise ModelError(
            f"{manifest_path}: model of another format (format {m.get('format', 1)}, "
            f"{len(m['feature_names'])} features; this canwatch reads format {MODEL_FORMAT}, "
            f"{len(FEATURE_NAMES)} features): retrain it with canwatch train"
        )
    try:
        with _SKOPS_LOCK:
            untrusted = set(sio.get_untrusted_types(file=model_path)) - set(TRUSTED_TYPES)
            if untrusted:
                raise ModelError(f"{model_path}: refusing untrusted types {sorted(untrusted)}")
            payload = sio.load(model_path, trusted=TRUSTED_TYPES)
    except ModelError:
        raise
    except Exception as exc:  # skops raises many types on corrupt input
        raise ModelError(f"{model_path}: cannot load model: {exc}") from None
    try:
        return _model_of(m, payload)
    except (KeyError, TypeError, ValueError) as exc:  # a field missing or malformed
        raise ModelError(
            f"{model_path}: not a model this canwatch can serve ({type(exc).__name__}: "
            f"{exc}): retrain it with canwatch train"
        ) from None


def _model_of(m: dict, payload: dict) -> PlatformModel:
    return PlatformModel(
        platform=str(m["platform"]),
        baseline=Baseline.from_dict(payload["baseline"]),
        forest=payload["forest"],
        env_lo=np.asarray(payload["env_lo"]),
        env_hi=np.asarray(payload["env_hi"]),
        env_scale=np.asarray(payload["env_scale"]),
        forest_hi=float(payload["forest_hi"]),
        evidence_scale=np.asarray(payload["evidence_scale"], dtype=np.float64),
        tolerance=np.asarray(payload["tolerance"], dtype=np.float64),
        threshold=float(m["threshold"]),
        version=int(m["version"]),
        info=m,
    )


def load_latest(model_dir: Path | str) -> dict[str, PlatformModel]:
    """The newest loadable version per platform (raises on the first bad newest)."""
    return {
        platform: load_model(versions[-1].path)
        for platform, versions in list_manifests(model_dir).items()
    }


def install_copy(src_manifest: Path | str, model_dir: Path | str) -> Path:
    """Copy a verified model version (from a training output directory) into ``model_dir``
    as that platform's next version; returns the new manifest. The copy is verified
    again where it lands and removed if it does not load."""
    src_manifest = Path(src_manifest)
    load_model(src_manifest)  # verified before it is copied anywhere
    m = read_manifest(src_manifest)
    d = Path(model_dir)
    d.mkdir(parents=True, exist_ok=True)
    with _reserved(d):
        return _install_next(src_manifest, m, d)


def _install_next(src_manifest: Path, m: dict, d: Path) -> Path:
    version = _take_version(d, str(m["platform"]))
    stem = f"{m['platform']}-v{version}"
    model_path = d / f"{stem}.skops"
    write_atomically(model_path, (src_manifest.parent / str(m["model_file"])).read_bytes())
    manifest = {
        **m,
        "version": version,
        "model_file": model_path.name,
        "deployed_from": {"manifest": str(src_manifest.resolve()), "version": m["version"]},
    }
    manifest_path = d / f"{stem}.json"
    write_atomically(manifest_path, json.dumps(manifest, indent=2) + "\n")
    try:
        load_model(manifest_path)
    except ModelError:
        manifest_path.unlink(missing_ok=True)
        model_path.unlink(missing_ok=True)
        raise
    return manifest_path
