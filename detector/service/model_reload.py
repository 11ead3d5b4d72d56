"""Model reload: new versions picked up while running, unusable ones refused.

Every ``models.reload_interval_s`` the registry follows each platform's
lifecycle (``detector.model.lifecycle``): a promoted or rolled-back version
serves, a shadow is installed or removed. Each version scores synthetic frames
(``warm_up``) before it serves or shadows, so the compiled kernels load now,
not in the first poll, and a model that cannot score is refused like a corrupt
file, with the old one kept serving. A model that serves
is handed to the scorer and shown in ``canwatch_model_info``.

Kept apart from the loop because loading, refusing and announcing a model is
one concern the loop should only trigger.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from detector.core.brands import Fleet
from detector.core.config import ModelsConfig
from detector.core.errors import ModelError
from detector.model.pipeline import Scorer, warm_up
from detector.model.platform import PlatformModel
from detector.model.registry import ModelRegistry, failure_reason
from detector.service.metrics import DetectorMetrics
from detector.service.shadow import ShadowScoring


class ModelReload:
    def __init__(
        self,
        models: ModelsConfig,
        fleet: Fleet,
        scorer: Scorer,
        metrics: DetectorMetrics,
        window_s: float,
        after_load: Callable[[], None],
        shadow: ShadowScoring | None = None,
    ) -> None:
        self.interval_s = models.reload_interval_s
        self.fleet = fleet
        self.scorer = scorer
        self.metrics = metrics
        self.window_s = window_s
        self.after_load = after_load  # once a model serves (the old one may go now)
        self.shadow = shadow  # scores the shadow versions, if any
        self.registry = ModelRegistry(
            models.dir, self._loaded, self._refused, self._prepare, self._shadow
        )
        self.last = 0.0  # monotonic time of the last look for new versions

    def load(self) -> None:
        """At start: every platform's newest usable version."""
        self.registry.refresh()
        self.last = time.monotonic()

    def reload_if_due(self, now: float) -> None:
        if now - self.last >= self.interval_s:
            self.last = now
            self.registry.refresh()
            if self.shadow is not None:
                self.shadow.flush()  # its record, for `canwatch models promote`

    def known_brands(self) -> set[str]:
        return set(self.fleet.brands) | self.registry.brands()

    def _prepare(self, model: PlatformModel) -> None:
        """Score synthetic frames with a model before it serves (loading the compiled
        kernels now, not in the first poll); one that cannot score is refused."""
        try:
            warm_up(model, self.window_s)
        except Exception as exc:  # whatever breaks here would break every poll of its brand
            raise ModelError(f"{model.platform} v{model.version} cannot score: {exc!r}") from exc

    def _loaded(self, model: PlatformModel) -> None:
        self.scorer.set_model(model)
        if self.shadow is not None:
            self.shadow.serving_loaded(model)
        self.after_load()
        brands = self.fleet.brands_of(model.platform) or [model.platform]
        for b in brands:
            self.metrics.set_model(b, model.platform, str(model.version), model.threshold)

    def _shadow(self, platform: str, model: PlatformModel | None) -> None:
        if self.shadow is not None:
            self.shadow.install(platform, model)
            self.after_load()

    def _refused(self, platform: str, exc: ModelError) -> None:
        self.metrics.model_reload_failed(failure_reason(exc))
