"""``canwatch inspect FILE...``: what is in a CAN log, before replaying it.

Per file: detected format, frame count, duration, distinct CAN ids, the channels
(buses) it holds and label counts, as a table or (``--json``) one JSON object per
line. A log of several channels is summarised whole (the other commands then need
``--channel``); with ``--channel``, only that one. A file that cannot
be read is reported as one ``file:line: what`` line on stderr; the others are
still inspected and the exit code is 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

import numpy as np

from detector.cli._channel_flag import add_channel_flag
from detector.core.errors import CanwatchError
from detector.core.schema import LABELS, is_extended
from replay.readers import (
    ALIASES,
    FORMATS,
    UNLABELLED,
    canonical_format,
    detect_format,
    one_channel,
    read_log,
)
from replay.readers.candump import has_label_columns


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "inspect",
        help="summarise CAN log files (format, frames, duration, ids, labels)",
        description="Summarise CAN log files: detected format, frames, duration, ids, labels.",
    )
    p.add_argument("files", nargs="+", metavar="FILE", help="log files to inspect")
    p.add_argument("--json", action="store_true", help="one JSON object per line per file")
    p.add_argument(
        "--format",
        dest="fmt",
        choices=sorted(FORMATS + tuple(ALIASES)),
        metavar="F",
        help=f"read every file as this format ({', '.join(FORMATS)}); default: detect",
    )
    add_channel_flag(p)
    p.set_defaults(func=run)


def summarise(
    path: str, fmt: str | None = None, channel: str | None = None
) -> dict[str, Any]:
    """The inspect record for one file (raises InputError when unreadable)."""
    name = canonical_format(fmt) if fmt else detect_format(path)
    frames, channels = read_log(path, name)
    per_channel = channels.counts() if channels is not None else {}
    if channel is not None:
        frames = one_channel(str(path), frames, channels, channel)
        per_channel = {channel: len(frames)}
    ts = frames["ts"]
    counts = np.bincount(frames["label"].astype(np.int64).clip(0, len(LABELS) - 1))
    return {
        "file": str(path),
        "format": name,
        "frames": int(len(frames)),
        "duration_s": float(ts.max() - ts.min()) if len(ts) else 0.0,
        "ids": int(len(np.unique(frames["can_id"]))),
        "extended_ids": int(len(np.unique(frames["can_id"][is_extended(frames["can_id"])]))),
        "first_ts": float(ts[0]) if len(ts) else None,
        "channels": per_channel,
        # null for a file that cannot say (its frames read 0: not "benign")
        "labels": {LABELS[i]: int(c) for i, c in enumerate(counts) if c}
        if labelled(path, name)
        else None,
    }


def labelled(path: str, fmt: str) -> bool:
    """Whether ``path`` can say which frames are benign: its format has labels, or (candump,
    where they are optional columns) the file has them."""
    if fmt in UNLABELLED:
        return False
    if fmt == "candump":
        with open(path, "rb") as fh:
            return has_label_columns(fh.read(4096))
    return True


def _table(rows: list[dict[str, Any]]) -> str:
    head = ("FILE", "FORMAT", "FRAMES", "DURATION", "IDS", "CHANNELS", "LABELS")
    body = [
        (
            r["file"],
            r["format"],
            f"{r['frames']:,}",
            f"{r['duration_s']:.3f} s",
            str(r["ids"]),
            ",".join(r["channels"]) or "-",
            "unlabelled"
            if r["labels"] is None
            else " ".join(f"{k}={v:,}" for k, v in r["labels"].items()) or "-",
        )
        for r in rows
    ]
    widths = [max(len(row[i]) for row in (head, *body)) for i in range(len(head))]
    right = {2, 3, 4}

    def fmt(row: tuple[str, ...]) -> str:
        cells = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        return "  ".join(cells).rstrip()

    return "\n".join(fmt(r) for r in (head, *body))


def run(args: argparse.Namespace) -> int:
    rows, failed = [], 0
    for path in args.files:
        try:
            rows.append(summarise(path, args.fmt, args.channel))
        except (CanwatchError, OSError) as exc:
            if len(args.files) == 1:
                raise  # the CLI turns it into one line, exit 2
            where = f"{exc.filename}: {exc.strerror}" if isinstance(exc, OSError) else exc
            print(f"canwatch inspect: error: {where}", file=sys.stderr)
            failed += 1
            continue
        if args.json:
            print(json.dumps(rows[-1]), flush=True)
    if rows and not args.json:
        print(_table(rows))
    return 2 if failed else 0
