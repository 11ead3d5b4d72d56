"""Cells of the CLI's fixed-width tables (incidents, campaigns)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any


def cell(text: str, width: int, right: bool) -> str:
    """``text`` padded to ``width`` (cut with an ellipsis when longer); width <= 0: as is."""
    if width <= 0:
        return text
    if len(text) > width:
        text = text[: width - 1] + "…"
    return text.rjust(width) if right else text.ljust(width)


def utc_time(value: Any) -> str:
    """Epoch seconds as UTC ``YYYY-MM-DD HH:MM:SS``; ``-`` when not a time."""
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
