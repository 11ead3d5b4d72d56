"""The models in service, reloaded from the model directory without a restart.

``refresh()`` looks for manifests newer than the loaded version of each
platform. A new version is verified (sha256, path, feature list) before it
replaces the old one; a broken one is refused, logged loudly and counted, and
the old model keeps serving. A refused version is not retried until its
manifest changes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from detector.core.errors import ModelError
from detector.model.platform import PlatformModel
from detector.model.store import list_manifests, load_model

log = logging.getLogger("canwatch.models")


def failure_reason(exc: ModelError) -> str:
    """The bounded metric label for a refused model."""
    text = str(exc)
    if "sha256" in text:
        return "checksum"
    if "outside the model directory" in text or "manifest" in text and "lacks" in text:
        return "bad_manifest"
    if "missing" in text:
        return "not_found"
    if "features" in text:
        return "incompatible"
    return "load"


class ModelRegistry:
    def __init__(
        self,
        model_dir: Path | str,
        on_loaded: Callable[[PlatformModel], None] = lambda m: None,
        on_refused: Callable[[str, ModelError], None] = lambda p, e: None,
        prepare: Callable[[PlatformModel], None] = lambda m: None,
    ) -> None:
        self.model_dir = Path(model_dir)
        self.models: dict[str, PlatformModel] = {}
        self._refused: dict[str, float] = {}  # manifest path -> its mtime when refused
        self.on_loaded = on_loaded
        self.on_refused = on_refused
        self.prepare = prepare  # run on a loaded model before it serves; ModelError refuses it

    def refresh(self) -> list[PlatformModel]:
        """Load every platform's newest version if it is newer; returns the models loaded."""
        loaded = []
        for platform, versions in list_manifests(self.model_dir).items():
            current = self.models.get(platform)
            for m in reversed(versions):  # newest first; fall back past refused ones
                if current is not None and m.version <= current.version:
                    break
                mtime = m.path.stat().st_mtime
                if self._refused.get(str(m.path)) == mtime:
                    continue
                try:
                    model = load_model(m.path)
                    self.prepare(model)
                except ModelError as exc:
                    self._refused[str(m.path)] = mtime
                    log.error(
                        "refusing model %s: %s (keeping %s)",
                        m.path.name,
                        exc,
                        f"v{current.version}" if current else "no model",
                    )
                    self.on_refused(platform, exc)
                    continue
                self.models[platform] = model
                log.info(
                    "loaded model %s v%d (threshold %.4f)", platform, model.version, model.threshold
                )
                self.on_loaded(model)
                loaded.append(model)
                break
        return loaded

    def brands(self) -> set[str]:
        """Brand slugs the loaded models declare (external platforms name themselves)."""
        out = set()
        for m in self.models.values():
            out.add(m.platform)
            out.update(m.info.get("brands", []))
        return out
