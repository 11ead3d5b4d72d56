"""Cells of the CLI's fixed-width tables (incidents, campaigns)."""

from __future__ import annotations

import unicodedata
from datetime import UTC, datetime
from typing import Any


def _columns(ch: str) -> int:
    """Terminal columns of one character: 0 combining or invisible, 2 wide (CJK, most
    emoji), else 1. Vehicle names and brands are the fleet's: any script may appear."""
    if unicodedata.combining(ch) or unicodedata.category(ch) in ("Mn", "Me", "Cf"):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def display_width(text: str) -> int:
    return sum(_columns(ch) for ch in text)


def fit(text: str, width: int | None) -> str:
    """``text`` cut to ``width`` terminal columns, an ellipsis ending a cut one."""
    if not width or display_width(text) <= width:
        return text
    out, used = [], 0
    for ch in text:
        w = _columns(ch)
        if used + w > width - 1:
            break
        out.append(ch)
        used += w
    return "".join(out) + "…"


def cell(text: str, width: int, right: bool) -> str:
    """``text`` padded to ``width`` columns (cut with an ellipsis when wider); width <= 0:
    as is. Columns, not characters: a CJK name is twice as wide as its length."""
    if width <= 0:
        return text
    text = fit(text, width)
    pad = " " * (width - display_width(text))
    return pad + text if right else text + pad


def id_text(value: Any) -> str:
    """A CAN id as canwatch writes it (``0x1E4``), or as it stands when it is none."""
    from detector.core.schema import format_id

    try:
        return format_id(int(value))
    except (TypeError, ValueError):
        return str(value)


def utc_time(value: Any) -> str:
    """Epoch seconds as UTC ``YYYY-MM-DD HH:MM:SS``; ``-`` when not a time."""
    try:
        return datetime.fromtimestamp(float(value), UTC).strftime("%Y-%m-%d %H:%M:%S")
    except (TypeError, ValueError, OverflowError, OSError):
        return "-"
