"""``canwatch incidents export ID --out F [--margin S]``: an incident's frames as a CAN log.

Writes the incident vehicle's frames from ``first_seen - margin`` to
``last_seen + margin`` (read back from Kafka, or from the evaluated file; see
``_forensics``) as candump ``-L`` ``.log``, Vector ``.asc`` or ``.blf``, by the
suffix of F, with the project's writers (``replay.writers``). The file is
written whole or not at all: it goes to a temporary name beside F and is
renamed when complete, so an error (records retention deleted, a broker
gone) leaves no file behind, never a partial one.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import tempfile
from pathlib import Path

from detector.cli._forensics import ForensicsError, add_source_flags, incident_frames, load_incident
from detector.transport.kafka_span import SpanGone

#: suffix -> writer format
FORMATS = {".log": "candump", ".asc": "asc", ".blf": "blf"}
DEFAULT_MARGIN_S = 5.0


def add_subparser(actions: argparse._SubParsersAction) -> None:
    p = actions.add_parser(
        "export",
        help="write an incident's frames (read back from Kafka) as .log, .asc or .blf",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_flags(p)
    p.add_argument("--out", required=True, metavar="F", help="output file: .log, .asc or .blf")
    p.add_argument(
        "--margin",
        type=float,
        default=DEFAULT_MARGIN_S,
        metavar="S",
        help=f"seconds of traffic before and after the incident (default {DEFAULT_MARGIN_S:g})",
    )
    p.set_defaults(func=run)


def format_for(path: str) -> str:
    fmt = FORMATS.get(Path(path).suffix.lower())
    if fmt is None:
        raise ForensicsError(f"--out {path}: give a .log, .asc or .blf file (chosen by suffix)")
    return fmt


def run(args: argparse.Namespace) -> int:
    from detector.cli.replay import kafka_config, quiet_kafka

    fmt = format_for(args.out)  # before any reading
    out = Path(args.out)
    if not out.parent.is_dir():
        raise ForensicsError(f"--out {args.out}: directory {out.parent} does not exist")
    cfg = kafka_config(args)
    with quiet_kafka():
        inc = load_incident(args)
        try:
            got = incident_frames(args, cfg, inc, args.margin)
        except SpanGone as exc:
            raise ForensicsError(
                f"the frames of incident {inc.get('incident_id')} are gone: {exc}; nothing written"
            ) from None
    if not len(got.frames):
        raise ForensicsError(f"no frames of {inc['vehicle']} in {got.where}: nothing written")
    write_whole(out, got.frames, fmt)
    for note in got.notes:
        print(f"canwatch incidents export: note: {note}", file=sys.stderr)
    print(
        f"wrote {len(got.frames)} frames of {inc['vehicle']} "
        f"({got.end - got.start:.1f} s from {got.where}) to {out}"
    )
    return 0


def write_whole(out: Path, frames, fmt: str) -> None:
    """Write to a temporary file beside ``out``, then rename: all of it or nothing."""
    from replay.writers import write_frames

    fd, tmp = tempfile.mkstemp(prefix=f".{out.name}.", suffix=out.suffix, dir=out.parent)
    os.close(fd)
    try:
        write_frames(tmp, frames, fmt)
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
