"""``canwatch incidents``: show the incidents on the incident topic.

Without ``--follow`` it reads every record on the topic now and exits; with
``--follow`` it prints those and then each new one as it arrives, until Ctrl-C.
No consumer group: partitions are assigned directly and nothing is committed,
so it never disturbs the detector or a SIEM connector reading the same topic.

Reading "everything now" cannot trust the end offsets alone: Tansu's
ListOffsets under-reports (see ``detector.transport.kafka_io``). So it reads until every
partition has reached ``kafka_io.end_offsets`` (which also uses the fetch high
watermark) *and* no record has arrived for ``IDLE_S``.

Output: one table row per record (cut to the terminal width when stdout is a
terminal), its ID the first 12 characters of the incident id (a prefix ``show``
and ``export`` take), or with ``--json`` each record's JSON on one line exactly
as on the topic. Records that are not JSON objects are reported on stderr and
skipped.

``canwatch incidents show ID`` prints one incident whole (``--plot F.png`` draws
it); ``canwatch incidents export ID --out F`` writes its frames as a CAN log.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator
from typing import Any

from detector.cli._campaign_table import print_campaigns
from detector.cli._span_offsets import partitions_of
from detector.cli._table import cell as _cell
from detector.cli._table import fit, id_text
from detector.cli._table import utc_time as _time
from detector.cli.replay import add_kafka_flags, kafka_config, quiet_kafka
from detector.core.errors import CanwatchError

IDLE_S = 1.0
READ_TIMEOUT_S = 30.0
POLL_MS = 200

#: Characters of the incident id the table shows: a prefix ``show ID`` and ``export ID``
#: take (they accept any unambiguous one), cut without an ellipsis so it can be pasted.
ID_CHARS = 12

#: (title, width, right-aligned); the last column takes the rest of the line.
COLUMNS = (
    ("TIME (UTC)", 19, False),
    ("ID", ID_CHARS, False),
    ("STATUS", 6, False),
    ("SEVERITY", 8, False),
    ("ATTACK", 10, False),
    ("BRAND", 10, False),
    ("VEHICLE", 26, False),
    ("WINDOWS", 7, True),
    ("PEAK", 6, True),
    ("CAN IDS", 16, False),
    ("EVIDENCE", 0, False),
)


class IncidentsError(CanwatchError):
    """The incident topic could not be read."""


def add_subparser(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "incidents",
        help="show incidents from the incident topic (table or JSON lines)",
        description=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--follow", "-f", action="store_true", help="keep printing new incidents")
    p.add_argument("--json", action="store_true", help="one JSON object per line, as on the topic")
    p.add_argument(
        "--campaigns",
        action="store_true",
        help="fleet campaigns from kafka.campaign_topic instead (docs/campaigns.md): the "
        "latest record of each; with --follow every record",
    )
    p.add_argument(
        "--timeout",
        type=float,
        default=None,
        metavar="S",
        help=f"without --follow: give up reading to the end after S s (default {READ_TIMEOUT_S:g}); "
        "with --follow: stop after S s (default: until Ctrl-C)",
    )
    add_kafka_flags(p, topic_what="incident")
    p.set_defaults(func=run)
    # one incident, whole, and its frames (docs/forensics.md); flags go after the action
    from detector.cli import _incident_export, _incident_show

    actions = p.add_subparsers(dest="action", metavar="{show,export}", title="one incident")
    _incident_show.add_subparser(actions)
    _incident_export.add_subparser(actions)


# -- formatting (pure) ------------------------------------------------------------


def _ids(can_ids: Any, limit: int = 3) -> str:
    if not isinstance(can_ids, list):
        return "-"
    out = [id_text(item.get("can_id") if isinstance(item, dict) else item) for item in can_ids]
    more = f"+{len(out) - limit}" if len(out) > limit else ""
    return ",".join(out[:limit]) + more or "-"


def _evidence(evidence: Any) -> str:
    if isinstance(evidence, list) and evidence:
        first = evidence[0]
        text = first.get("text") if isinstance(first, dict) else first
        return " ".join(str(text).split())  # one line, whatever the detector wrote
    return "-"


def _score(value: Any) -> str:
    try:
        return f"{float(value):.2f}"
    except (TypeError, ValueError):
        return "-"


def table_header(width: int | None = None) -> str:
    line = " ".join(_cell(t, w, r) for t, w, r in COLUMNS).rstrip()
    return line[:width] if width else line


def table_row(inc: dict, width: int | None = None) -> str:
    """One readable line for an incident record, cut to ``width`` if given."""
    cells = (
        _time(inc.get("last_seen")),
        str(inc.get("incident_id", "-"))[:ID_CHARS],
        str(inc.get("status", "-")),
        str(inc.get("severity", "-")),
        str(inc.get("suspected_attack", "-")),
        str(inc.get("brand", "-")),
        str(inc.get("vehicle", "-")),
        str(inc.get("windows", "-")),
        _score(inc.get("peak_score")),
        _ids(inc.get("can_ids")),
        _evidence(inc.get("evidence")),
    )
    return fit(" ".join(_cell(c, w, r) for c, (_, w, r) in zip(cells, COLUMNS, strict=True)), width)


def json_line(value: bytes, inc: dict) -> str:
    """The record as on the topic; re-serialised compactly only if it spans lines."""
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:  # JSON in UTF-16/32: still print UTF-8 lines
        text = "\n"
    return json.dumps(inc, separators=(",", ":")) if "\n" in text or "\r" in text else text


# -- reading ----------------------------------------------------------------------


def _consumer(args: argparse.Namespace):
    from kafka import KafkaConsumer
    from kafka.errors import KafkaError

    from detector.transport.kafka_io import connect_error, consumer_config

    cfg = kafka_config(args)
    kwargs = consumer_config(cfg.kafka)
    kwargs.update(
        group_id=None,  # assign(), no group, no commits
        enable_auto_commit=False,
        bootstrap_timeout_ms=int(args.connect_timeout * 1000),
    )
    try:
        consumer = KafkaConsumer(**kwargs)
    except KafkaError as exc:
        raise connect_error(cfg.kafka, exc) from None  # names a TLS cause, if any
    default = cfg.kafka.campaign_topic if args.campaigns else cfg.kafka.incident_topic
    return consumer, args.topic or default


def _poll(consumer: Any) -> list:
    batch = consumer.poll(timeout_ms=POLL_MS)
    records = [r for recs in batch.values() for r in recs]
    records.sort(key=lambda r: (r.timestamp, r.partition, r.offset))
    return records


def read_to_end(consumer: Any, tps: list, timeout_s: float) -> Iterator[Any]:
    """Every record now on ``tps`` (from the beginning), then stop."""
    from detector.transport.kafka_io import end_offsets

    start = time.monotonic()
    quiet_since = None  # when the end was reached, or the last record after that
    while True:
        records = _poll(consumer)
        yield from records
        now = time.monotonic()
        ends = end_offsets(consumer, tps)
        at_end = all(consumer.position(tp) >= ends[tp] for tp in tps)
        if not at_end:
            quiet_since = None
        elif quiet_since is None or records:
            quiet_since = now
        elif now - quiet_since >= IDLE_S:
            return
        if now - start > timeout_s:
            raise IncidentsError(f"gave up reading the topic after {timeout_s:g} s")


def follow(consumer: Any, timeout_s: float | None) -> Iterator[Any]:
    deadline = None if timeout_s is None else time.monotonic() + timeout_s
    while deadline is None or time.monotonic() < deadline:
        yield from _poll(consumer)


def run(args: argparse.Namespace) -> int:
    with quiet_kafka():
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    consumer, topic = _consumer(args)
    try:
        tps = partitions_of(
            consumer, topic, "", max(args.connect_timeout, 1.0), error=IncidentsError
        )
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        if args.follow:
            records = follow(consumer, args.timeout)
        else:
            records = read_to_end(consumer, tps, args.timeout or READ_TIMEOUT_S)
        if args.campaigns:
            print_campaigns(records, args.json, args.follow)
        else:
            _print(records, args.json)
    except KeyboardInterrupt:
        pass  # Ctrl-C is how --follow ends
    except BrokenPipeError:  # `| head`: the reader is gone, not an error
        with contextlib.suppress(OSError):
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    finally:
        consumer.close(autocommit=False)
    return 0


def _print(records: Iterator[Any], as_json: bool) -> None:
    width = shutil.get_terminal_size().columns if sys.stdout.isatty() else None
    if not as_json:
        print(table_header(width), flush=True)
    for r in records:
        try:
            inc = json.loads(r.value)
            if not isinstance(inc, dict):
                raise ValueError("not a JSON object")
        except (TypeError, ValueError) as exc:
            print(
                f"canwatch incidents: skipping partition {r.partition} offset {r.offset}: "
                f"not an incident record ({exc})",
                file=sys.stderr,
            )
            continue
        print(json_line(r.value, inc) if as_json else table_row(inc, width), flush=True)
