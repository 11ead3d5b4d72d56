"""Which version of each platform's model serves, which one is in shadow, and what served before.

A model directory holds versions (``detector.model.store``). Which of them do
what is one small JSON file per platform beside them, ``<platform>.lifecycle.json``::

    {"platform": "cusw", "serving": 3, "shadow": 4, "previous": [1, 2],
     "history": [{"at": "...", "action": "promote", "version": 3, "from": 2}, ...]}

Without that file the newest version serves and none is in shadow (what a model
directory always meant): a first ``canwatch train --out DIR`` serves at once.
Once the file exists, ``serving`` pins the version: a new version written into
the directory serves only when it is promoted, so a model nobody has watched in
shadow cannot reach the analysts by accident.

Every change is written to a temporary file and renamed over the old one: a
detector reading the file mid-change sees the old state or the new, never half.
The functions here change the state; ``detector.model.registry`` reads it, and
every running instance follows it within ``models.reload_interval_s``.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from detector.core.errors import ModelError
from detector.model.store import LIFECYCLE_SUFFIX as SUFFIX
from detector.model.store import list_manifests, load_model, write_atomically

#: History entries kept in the file (the newest): a timeline, not an audit archive.
MAX_HISTORY = 200


@dataclass(frozen=True)
class Lifecycle:
    platform: str
    serving: int | None = None  # None: the newest version serves (no file yet)
    shadow: int | None = None
    previous: tuple[int, ...] = ()  # versions that served before, the newest last
    history: tuple[dict, ...] = field(default_factory=tuple)
    pinned: bool = False  # read from a file (serving is fixed) rather than implied


def lifecycle_path(model_dir: Path | str, platform: str) -> Path:
    return Path(model_dir) / f"{platform}{SUFFIX}"


def versions_of(model_dir: Path | str, platform: str) -> list[int]:
    return [m.version for m in list_manifests(model_dir).get(platform, [])]


def read_lifecycle(model_dir: Path | str, platform: str) -> Lifecycle:
    """The platform's state; without a file, the newest version serves."""
    path = lifecycle_path(model_dir, platform)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        versions = versions_of(model_dir, platform)
        return Lifecycle(platform, versions[-1] if versions else None)
    except (OSError, ValueError) as exc:  # ValueError: not JSON, or not UTF-8 at all
        raise ModelError(f"{path}: unreadable lifecycle file: {type(exc).__name__}") from None
    try:
        if not isinstance(data, dict) or not isinstance(data.get("previous", []), list):
            raise TypeError("not an object with a list of previous versions")
        return Lifecycle(
            platform=platform,
            serving=_version(data.get("serving")),
            shadow=_version(data.get("shadow")),
            previous=tuple(int(v) for v in data.get("previous", [])),
            history=tuple(data.get("history", [])),
            pinned=True,
        )
    except (TypeError, ValueError) as exc:
        raise ModelError(f"{path}: malformed lifecycle file: {exc}") from None


def _version(v: object) -> int | None:
    return None if v is None else int(v)  # type: ignore[call-overload]


def write_lifecycle(model_dir: Path | str, state: Lifecycle) -> Path:
    path = lifecycle_path(model_dir, state.platform)
    data = {
        "platform": state.platform,
        "serving": state.serving,
        "shadow": state.shadow,
        "previous": list(state.previous),
        "history": list(state.history[-MAX_HISTORY:]),
    }
    write_atomically(path, json.dumps(data, indent=2) + "\n")
    return path


def _save(model_dir: Path | str, state: Lifecycle, **changes: object) -> Lifecycle:
    """``state`` with ``changes``, written: from now on the file pins what serves."""
    new = replace(state, pinned=True, **changes)  # type: ignore[arg-type]
    write_lifecycle(model_dir, new)
    return new


def _event(action: str, version: int | None, **extra: object) -> dict:
    return {
        "at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "action": action,
        "version": version,
        **extra,
    }


def _require(model_dir: Path | str, platform: str, version: int) -> None:
    """``version`` exists and loads: a lifecycle pinning one no detector can load (corrupt,
    or of a format an upgrade no longer reads) leaves every detector started after it
    without a model for the platform, and its brands' traffic dead-lettered."""
    found = {m.version: m.path for m in list_manifests(model_dir).get(platform, [])}
    if version not in found:
        have = ", ".join(f"v{v}" for v in sorted(found)) or "none"
        raise ModelError(f"{platform} has no version v{version} in {model_dir} (it has {have})")
    try:
        load_model(found[version])
    except ModelError as exc:
        raise ModelError(f"{platform} v{version} cannot serve: {exc}") from None


def set_shadow(model_dir: Path | str, platform: str, version: int) -> Lifecycle:
    """Put ``version`` in shadow beside what serves (replacing any shadow)."""
    _require(model_dir, platform, version)
    state = read_lifecycle(model_dir, platform)
    if state.serving == version:
        raise ModelError(f"{platform} v{version} is serving already")
    return _save(
        model_dir,
        state,
        shadow=version,
        history=(*state.history, _event("shadow", version, replaced=state.shadow)),
    )


def promote(model_dir: Path | str, platform: str, version: int) -> Lifecycle:
    """Serve ``version``; what served becomes the newest previous version."""
    _require(model_dir, platform, version)
    state = read_lifecycle(model_dir, platform)
    if state.serving == version:
        raise ModelError(f"{platform} v{version} is serving already")
    previous = state.previous if state.serving is None else (*state.previous, state.serving)
    return _save(
        model_dir,
        state,
        serving=version,
        shadow=None if state.shadow == version else state.shadow,
        previous=previous,
        history=(*state.history, _event("promote", version, replaced=state.serving)),
    )


def rollback(model_dir: Path | str, platform: str) -> Lifecycle:
    """Serve the version that served before this one again."""
    state = read_lifecycle(model_dir, platform)
    if not state.previous:
        raise ModelError(
            f"{platform}: nothing to roll back to (no version served before v{state.serving})"
        )
    back = state.previous[-1]
    _require(model_dir, platform, back)
    return _save(
        model_dir,
        state,
        serving=back,
        previous=state.previous[:-1],
        history=(*state.history, _event("rollback", back, replaced=state.serving)),
    )


def drop_shadow(model_dir: Path | str, platform: str) -> Lifecycle:
    state = read_lifecycle(model_dir, platform)
    if state.shadow is None:
        raise ModelError(f"{platform} has no shadow")
    return _save(
        model_dir, state, shadow=None, history=(*state.history, _event("unshadow", state.shadow))
    )
