"""``--log-level`` for every subcommand, and kafka-python kept out of the way.

kafka-python logs each failed connection attempt at ERROR and WARNING, several
times a second, while canwatch waits for a broker and then says in one line
what is wrong. Those lines are the library's view of what canwatch already
reports, so its loggers ("kafka" and children) are raised above ERROR unless
the level is ``debug``, when an operator wants to see everything.

``-v``/``-vv`` are kept as shorthands for ``info``/``debug``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
from collections.abc import Iterator

LEVELS = ("debug", "info", "warning", "error")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
#: kafka-python's loggers below ``debug``: nothing of theirs is shown
KAFKA_QUIET = logging.CRITICAL
HELP = (
    "log threshold: debug, info, warning or error (default warning; detect: info for "
    "its own lines). debug also shows kafka-python's own log lines, which are hidden "
    "otherwise"
)


def add_log_level_flag(p: argparse.ArgumentParser, top: bool = False) -> None:
    """``--log-level`` on ``p``. On a subcommand it sets the value only when given
    (SUPPRESS), so ``canwatch --log-level debug detect`` is not undone by the
    subcommand's default."""
    p.add_argument(
        "--log-level",
        choices=LEVELS,
        type=str.lower,
        default=None if top else argparse.SUPPRESS,
        metavar="LEVEL",
        help=HELP,
    )


def add_to_subcommands(parser: argparse.ArgumentParser) -> None:
    """``--log-level`` on every subcommand of ``parser``, nested ones too."""
    for action in parser._actions:  # argparse keeps subparsers only here
        if isinstance(action, argparse._SubParsersAction):
            for sub in dict.fromkeys(action.choices.values()):  # aliases share a parser
                if not any("--log-level" in a.option_strings for a in sub._actions):
                    add_log_level_flag(sub)
                add_to_subcommands(sub)


def chosen_level(args: argparse.Namespace) -> str | None:
    """The level asked for: ``--log-level``, else ``-v`` (info) / ``-vv`` (debug), else None."""
    if getattr(args, "log_level", None):
        return args.log_level
    verbose = getattr(args, "verbose", 0)
    return "debug" if verbose > 1 else "info" if verbose else None


@contextlib.contextmanager
def configured(level: str | None) -> Iterator[None]:
    """Root logging at ``level`` (None: warning) for the command's run; kafka-python
    quiet unless ``debug``. Both levels are restored afterwards, for callers that
    run several commands in one process (tests)."""
    root, kafka = logging.getLogger(), logging.getLogger("kafka")
    before = root.level, kafka.level
    logging.basicConfig(level=(level or "warning").upper(), format=FORMAT)
    if level is not None:
        root.setLevel(level.upper())  # also when basicConfig had run before (a no-op then)
    kafka.setLevel(logging.NOTSET if level == "debug" else KAFKA_QUIET)
    try:
        yield
    finally:
        root.setLevel(before[0])
        kafka.setLevel(before[1])
