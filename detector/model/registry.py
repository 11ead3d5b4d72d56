"""The models in service, reloaded from the model directory without a restart.

``refresh()`` loads the version each platform's lifecycle says serves (without
a lifecycle file: the newest), and its shadow, where they changed. A version
is verified (sha256, path, feature list) before it replaces the old one; a
broken one is refused, logged loudly and counted, and the old model keeps
serving. A refused version is not retried until its
manifest changes. Whatever a file in the directory holds, it is refused, never
raised into the detector's loop. A detector that starts while the pinned
version cannot be loaded serves the newest version that served before it that
can, and says so, rather than no model at all.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from detector.core.errors import ModelError
from detector.model.lifecycle import Lifecycle, lifecycle_path, read_lifecycle
from detector.model.platform import PlatformModel
from detector.model.store import list_manifests, load_model

log = logging.getLogger("canwatch.models")


def failure_reason(exc: ModelError) -> str:
    """The bounded metric label for a refused model."""
    text = str(exc)
    if "lifecycle file" in text:
        return "lifecycle"
    bad_manifest = ("outside the model directory", "manifest lacks", "unreadable manifest",
                    "under another file name")  # fmt: skip
    if any(b in text for b in bad_manifest):
        return "bad_manifest"
    if "sha256" in text:
        return "checksum"
    if "missing" in text:
        return "not_found"
    if "features" in text:
        return "incompatible"
    return "load"


def _refusal(exc: Exception) -> ModelError:
    """``exc`` as a refusal: what a check did not foresee still refuses, never crashes."""
    if isinstance(exc, ModelError):
        return exc
    return ModelError(f"cannot load: {type(exc).__name__}: {exc}")


class ModelRegistry:
    """The serving model, and the shadow if any, of every platform in ``model_dir``.

    What serves and what is in shadow is the platform's lifecycle
    (``detector.model.lifecycle``): the pinned versions, or without a lifecycle
    file the newest usable version. A rollback is a version older than the one
    loaded, and is loaded like any other."""

    def __init__(
        self,
        model_dir: Path | str,
        on_loaded: Callable[[PlatformModel], None] = lambda m: None,
        on_refused: Callable[[str, ModelError], None] = lambda p, e: None,
        prepare: Callable[[PlatformModel], None] = lambda m: None,
        on_shadow: Callable[[str, PlatformModel | None], None] = lambda p, m: None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.models: dict[str, PlatformModel] = {}
        self.shadows: dict[str, PlatformModel] = {}
        self._refused: dict[str, float] = {}  # manifest path -> its mtime when refused
        self.on_loaded = on_loaded
        self.on_refused = on_refused
        self.prepare = prepare  # run on a loaded model before it serves; ModelError refuses it
        self.on_shadow = on_shadow  # a shadow installed (model) or removed (None)

    def refresh(self) -> list[PlatformModel]:
        """Load what each platform's lifecycle says serves, and its shadow, where they
        changed; returns the serving models loaded."""
        loaded = []
        for platform, versions in list_manifests(self.model_dir).items():
            try:
                state = read_lifecycle(self.model_dir, platform)
            except Exception as exc:  # noqa: BLE001 - whatever the file holds, keep serving
                self._refuse_once(lifecycle_path(self.model_dir, platform), platform,
                                  _refusal(exc))  # fmt: skip
                continue
            by_version = {m.version: m for m in versions}
            current = self.models.get(platform)
            if state.pinned and state.serving not in by_version:
                missing = ModelError(
                    f"{platform} v{state.serving} is missing from {self.model_dir} (its "
                    "lifecycle pins it)"
                )
                self._refuse_once(lifecycle_path(self.model_dir, platform), platform, missing)
            for m in self._serving_candidates(state, versions, by_version, current):
                model = self._load(m, platform, f"v{current.version}" if current else "no model")
                if model is not None:
                    self.models[platform] = model
                    log.info(
                        "serving %s v%d (threshold %.4f)", platform, model.version, model.threshold
                    )
                    self.on_loaded(model)
                    loaded.append(model)
                    break
            self._follow_shadow(platform, state.shadow, by_version)
        return loaded

    @staticmethod
    def _serving_candidates(
        state: Lifecycle, versions: list, by_version: dict, current: PlatformModel | None
    ) -> list:
        if state.pinned:
            m = by_version.get(state.serving)
            if current is not None:
                return [m] if m is not None and current.version != m.version else []
            # nothing serves yet (a detector starting): the pinned version, else the
            # versions that served before it, newest first, rather than no model at all
            fallback = [by_version[v] for v in reversed(state.previous) if v in by_version]
            return [m] + fallback if m is not None else fallback
        # no lifecycle file: the newest usable version, falling back past refused ones
        return [m for m in reversed(versions) if current is None or m.version > current.version]

    def _follow_shadow(self, platform: str, version: int | None, by_version: dict) -> None:
        current = self.shadows.get(platform)
        if version is None or version not in by_version:
            if current is not None:
                del self.shadows[platform]
                log.info("shadow %s v%d removed", platform, current.version)
                self.on_shadow(platform, None)
            return
        if current is not None and current.version == version:
            return
        model = self._load(by_version[version], platform, "no shadow")
        if model is not None:
            self.shadows[platform] = model
            log.info("shadow %s v%d (threshold %.4f)", platform, model.version, model.threshold)
            self.on_shadow(platform, model)

    def _load(self, m, platform: str, keeping: str) -> PlatformModel | None:
        """Load and prepare one version; a refused one is not retried until it changes."""
        try:
            mtime = m.path.stat().st_mtime
        except OSError:  # removed since the listing
            return None
        if self._refused.get(str(m.path)) == mtime:
            return None
        try:
            model = load_model(m.path)
            self.prepare(model)
        except Exception as exc:  # noqa: BLE001 - a bad file must never stop the detector
            exc = _refusal(exc)
            self._refused[str(m.path)] = mtime
            log.error("refusing model %s: %s (keeping %s)", m.path.name, exc, keeping)
            self.on_refused(platform, exc)
            return None
        return model

    def _refuse_once(self, path: Path, platform: str, exc: ModelError) -> None:
        mtime = path.stat().st_mtime if path.exists() else 0.0
        if self._refused.get(str(path)) != mtime:
            self._refused[str(path)] = mtime
            log.error("%s (keeping what serves)", exc)
            self.on_refused(platform, exc)

    def brands(self) -> set[str]:
        """Brand slugs the loaded models declare (external platforms name themselves)."""
        out = set()
        for m in self.models.values():
            out.add(m.platform)
            out.update(m.info.get("brands", []))
        return out
