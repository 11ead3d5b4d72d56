"""Progress of long work, for a person at a terminal; nothing at all otherwise.

A bar is drawn by tqdm on stderr, and only when stderr is a terminal: a pipe, a
file or a CI log gets exactly the output it got before. Bars are cleared when
done (``leave=False``), so what stays on the screen is the command's own
result. Use it from any subcommand::

    from detector.cli._progress import bar, track

    for path in track(files, "reading", unit="file"):
        ...
    with bar("publishing", total=n_frames, unit="frame") as b:
        b.update(len(batch))
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Iterator
from typing import IO, Any, TypeVar

T = TypeVar("T")


def on_terminal(stream: IO[str] | None = None) -> bool:
    """Is ``stream`` (default stderr) a terminal a person is watching?"""
    stream = sys.stderr if stream is None else stream
    try:
        return stream.isatty()
    except (AttributeError, ValueError):  # no isatty, or closed
        return False


def bar(
    desc: str,
    total: float | None = None,
    unit: str = "it",
    *,
    unit_scale: bool = False,
    enabled: bool | None = None,
) -> Any:
    """A tqdm bar on stderr (a no-op one unless stderr is a terminal, or ``enabled``).

    ``update(n)``, ``set_postfix_str(s)``, ``total = n`` and ``close()`` are what
    callers use; it is also a context manager.
    """
    from tqdm import tqdm

    return tqdm(
        desc=desc,
        total=total,
        unit=unit,
        unit_scale=unit_scale,
        file=sys.stderr,
        disable=not (on_terminal() if enabled is None else enabled),
        leave=False,
        dynamic_ncols=True,
        mininterval=0.2,
    )


def track(
    items: Iterable[T], desc: str, total: int | None = None, unit: str = "it"
) -> Iterator[T]:
    """``items``, with a bar while they are worked through (see ``bar``)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with bar(desc, total, unit) as b:
        for item in items:
            yield item
            b.update(1)
