"""Leave-one-group-out: every recording scored by a model that never saw its group.

A figure is a quality figure only when the evaluated drive's frames (or an
edited copy of them, such as a masquerade twin) were not in training. Recordings
are grouped into drives or vehicles, and each group is held out in turn: a model
is trained on every other group, exactly as ``canwatch train`` trains one, and
scores the held-out recordings exactly as ``canwatch evaluate`` scores them.

Groups come from a mapping file (CSV ``file,group``, files matched by base
name), from ``detector.model.training.drive_groups`` (recordings that share most
benign payloads are one drive) or one group per file. The same group labels are
the drive labels training calibrates across (``train_platform(drives=...)``).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from detector.core.errors import CanwatchError, InputError
from detector.core.fd import to_lanes
from detector.model.training import drive_groups

GROUP_BY = ("auto", "file")
MAP_HEADER = ("file", "group")


@dataclass(frozen=True)
class Fold:
    """One held-out group: indices of the recordings trained on and of those held out."""

    group: str
    train: tuple[int, ...]
    held_out: tuple[int, ...]


def read_group_map(path: str | Path) -> dict[str, str]:
    """Base name -> group from a CSV with the header ``file,group``.

    The file column may hold paths; only their base names count.
    """
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except (UnicodeDecodeError, csv.Error) as exc:
        raise InputError(path, None, f"not a CSV group map: {exc}") from None
    header = tuple(c.strip().lower() for c in rows[0]) if rows else ()
    if header != MAP_HEADER:
        got = ",".join(rows[0]) if rows else "an empty file"
        raise InputError(path, 1, f"expected the header 'file,group', got {got!r}")
    out: dict[str, str] = {}
    for line, row in enumerate(rows[1:], start=2):
        cells = [c.strip() for c in row]
        if not any(cells):
            continue
        if len(cells) != 2 or not all(cells):
            raise InputError(path, line, f"expected 'file,group', got {','.join(row)!r}")
        name, group = Path(cells[0]).name, cells[1]
        if out.get(name, group) != group:
            raise InputError(path, line, f"{name} is already in group {out[name]!r}")
        out[name] = group
    return out


def groups_from_map(files: Sequence[str], mapping: dict[str, str], map_path: str) -> list[str]:
    """Group of each file by its base name; every file must be in ``mapping``."""
    names = [Path(f).name for f in files]
    seen: dict[str, str] = {}
    for f, name in zip(files, names, strict=True):
        if name in seen and seen[name] != f:
            raise CanwatchError(
                f"{seen[name]} and {f} share the base name {name}: "
                f"{map_path} cannot tell them apart"
            )
        seen[name] = f
    missing = [f for f, name in zip(files, names, strict=True) if name not in mapping]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(map_path, None, f"no group for {missing[0]}{more}")
    return [mapping[n] for n in names]


def groups_by_file(files: Sequence[str]) -> list[str]:
    """Each file its own group, named by its base name (its path if names repeat)."""
    names = [Path(f).name for f in files]
    return [n if names.count(n) == 1 else str(f) for f, n in zip(files, names, strict=True)]


def groups_by_drive(recordings: Sequence[np.ndarray]) -> list[str]:
    """Recordings sharing most benign payloads are one drive (``training.drive_groups``)."""
    lanes = [to_lanes(r) for r in recordings]  # CAN FD frames as the 8-byte lanes it compares
    return [f"drive-{d + 1}" for d in drive_groups(lanes)]


def check_no_twin_in_training(
    folds: Sequence[Fold], files: Sequence[str], drives: Sequence[str]
) -> None:
    """However the files were grouped (a map, or each file alone), no fold may train on a
    recording of a held-out file's drive (an edited copy of it, a twin): its figures would
    be measured on traffic that was in training."""
    for n, fold in enumerate(folds, start=1):
        held = {drives[i]: i for i in fold.held_out}
        twin = next((j for j in fold.train if drives[j] in held), None)
        if twin is not None:
            raise CanwatchError(
                f"fold {n} would train on {files[twin]}, which shares most benign payloads "
                f"with held-out {files[held[drives[twin]]]} (the same drive): put them in one "
                "group (--groups, or --group-by auto)"
            )


def drive_numbers(labels: Sequence[str]) -> list[int]:
    """Group labels as the drive numbers ``train_platform`` takes, in order of appearance."""
    order = {g: n for n, g in enumerate(dict.fromkeys(labels))}
    return [order[g] for g in labels]


def leave_one_group_out(labels: Sequence[str]) -> list[Fold]:
    """One fold per group, in order of first appearance; at least two groups."""
    groups = list(dict.fromkeys(labels))
    if len(groups) < 2:
        raise CanwatchError(
            f"cross-validation needs at least 2 groups, got 1 ({groups[0]!r} holds all "
            f"{len(labels)} files): add recordings of another drive or vehicle, or group otherwise"
            if groups
            else "cross-validation needs at least 2 groups, got no files"
        )
    return [
        Fold(
            g,
            tuple(i for i, x in enumerate(labels) if x != g),
            tuple(i for i, x in enumerate(labels) if x == g),
        )
        for g in groups
    ]
