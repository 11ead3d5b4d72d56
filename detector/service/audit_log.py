"""The audit file (``canwatch detect --windows-out``): what each poll processed.

JSON Lines: one line per scored window (vehicle, brand, window start, score,
model version) and one per poll (records, frames, dead letters, incidents,
offsets, assigned partitions), appended and fsync'd *before* that poll's
offsets are committed, so after kill -9 the file still shows everything the
offsets claim was processed.

Kept apart from the loop so that the file's format and its durability are in
one place, testable by writing a file and reading it back.
"""

from __future__ import annotations

import json
import os
import stat
import time
from collections.abc import Iterable
from pathlib import Path

from detector.model.pipeline import ScoredRows, window_scores


def window_lines(scored: Iterable[ScoredRows], window_s: float) -> list[str]:
    """One JSON line per scored window."""
    lines = []
    for sc in scored:
        v, w, s = window_scores(sc)
        for vi, wi, si in zip(v.tolist(), w.tolist(), s.tolist(), strict=True):
            row = {
                "type": "window",
                "vehicle": sc.names[vi],
                "brand": sc.brands[vi],
                "window_start": round(wi * window_s, 6),
                "score": round(si, 6),
                "model_version": sc.model_version,
            }
            lines.append(json.dumps(row, separators=(",", ":")))
    return lines


def poll_summary(
    polled: dict, records: int, batches: list, dead: int, incidents: int, windows: int
) -> dict:
    """What a poll processed, for its poll line: counts, and the offsets read per
    partition (first and last)."""
    return {
        "records": records,
        "frames": int(sum(len(frames) for _, _, frames in batches)),
        "dead_letters": dead,
        "incidents": incidents,
        "windows": windows,
        "offsets": {str(tp.partition): [rs[0].offset, rs[-1].offset] for tp, rs in polled.items()},
    }


def _cut_torn_line(path: Path) -> None:
    """Truncate ``path`` after its last newline: a write cut by kill -9 or a full disk left
    part of a line, which no reader can parse (the poll it ended was not committed, and
    is read and written again)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # a pipe to a log shipper: nothing to cut
            return
        with open(path, "rb+") as fh:
            size = fh.seek(0, os.SEEK_END)
            if size == 0:
                return
            fh.seek(size - 1)
            if fh.read(1) == b"\n":
                return
            at = size
            while at > 0:
                step = min(at, 1 << 16)
                fh.seek(at - step)
                end = fh.read(step).rfind(b"\n")
                if end >= 0:
                    fh.truncate(at - step + end + 1)
                    return
                at -= step
            fh.truncate(0)
    except FileNotFoundError:
        return


class AuditLog:
    def __init__(self, path: Path | str | None, detector_id: str, window_s: float) -> None:
        self.path = Path(path) if path else None
        self.detector_id = detector_id
        self.window_s = window_s
        self._file = None
        self._inode, self._regular = 0, True

    @property
    def is_open(self) -> bool:
        return self._file is not None

    def open(self) -> None:
        """Open for appending (if a path was given): before connecting, so that a bad
        path fails at once. A last line a crash cut short is cut off, so the next line
        is not fused to it."""
        if self.path is not None:
            _cut_torn_line(self.path)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            st = os.fstat(self._file.fileno())
            self._inode, self._regular = st.st_ino, stat.S_ISREG(st.st_mode)

    def _follow_rotation(self) -> None:
        """logrotate renamed the file (``create``): write a new one at the path, not on
        into the renamed one for ever."""
        if not self._regular:
            return
        try:
            moved = os.stat(self.path).st_ino != self._inode
        except FileNotFoundError:
            moved = True
        if moved:
            self._file.close()
            self.open()

    def windows(self, scored: list[ScoredRows]) -> list[str]:
        """The window lines of a poll, or none when there is no audit file."""
        return window_lines(scored, self.window_s) if self._file is not None else []

    def write(self, summary: dict, windows: list[str], assigned: Iterable) -> None:
        """A poll's window lines and its poll line (``summary`` and the ``assigned``
        partitions), on disk when this returns."""
        if self._file is None:
            return
        poll = {
            "type": "poll",
            "time": round(time.time(), 3),
            "detector": self.detector_id,
            **summary,
            "assigned": sorted(tp.partition for tp in assigned),
        }
        lines = [*windows, json.dumps(poll, separators=(",", ":"))]
        self._follow_rotation()
        self._file.write("\n".join(lines) + "\n")
        self._file.flush()
        if self._regular:  # a pipe has nothing to sync (fsync refuses it)
            os.fsync(self._file.fileno())

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
