"""canwatch's detector, laid out as its pipeline (docs/architecture.md):

``transport`` (Kafka records <-> frames) -> ``features`` (frames -> rows) ->
``model`` (rows -> calibrated evidence) -> ``incidents`` (evidence -> incidents),
run by the ``service``; ``evaluation`` runs the same scoring offline; ``demo`` and
``cli`` sit on top. ``core`` holds what all of them share. The import directions
are import-linter contracts in pyproject.toml.

The analyst's toolkit, ``read_capture`` and ``score_capture`` (``detector.analysis``),
is exported from here lazily: importing ``detector`` or any of its stages never loads
pandas, so the service's path stays free of it.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from detector.analysis import read_capture, score_capture

#: Names exported from the submodule that defines them, imported on first use (PEP 562).
_LAZY = {"read_capture": "detector.analysis", "score_capture": "detector.analysis"}

__all__ = ["read_capture", "score_capture"]


def __getattr__(name: str):
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
