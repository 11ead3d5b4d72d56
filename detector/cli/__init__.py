"""The ``canwatch`` command line: one module per subcommand in this package.

Each module defines ``add_subparser(subparsers)`` which registers its parser and
``set_defaults(func=...)``; ``func(args) -> int`` is the exit code. Errors that
canwatch can explain are printed as one line, with a non-zero exit and no
traceback. Every subcommand takes ``--log-level`` (see ``_logging``); long work
shows progress on stderr when it is a terminal (``_progress``).
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from detector.cli._logging import add_log_level_flag, add_to_subcommands, chosen_level, configured
from detector.core.errors import CanwatchError

_ORDER = [
    "demo",
    "simulate",
    "inspect",
    "train",
    "evaluate",
    "models",
    "broker",
    "replay",
    "detect",
    "incidents",
    "campaigns",
]


def _subcommand_modules() -> list[str]:
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    return sorted(names, key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))


def build_parser(commands: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser with ``commands`` (default: all). Importing a subcommand pulls in
    what it needs (scikit-learn, cantools, kafka-python...), so ``main`` imports
    only the one being run: a second less per start."""
    parser = argparse.ArgumentParser(
        prog="canwatch",
        description="Streaming anomaly detection for automotive CAN-bus telemetry.",
    )
    parser.add_argument(
        "-v", "--verbose", action="count", default=0, help="-v: --log-level info, -vv: debug"
    )
    add_log_level_flag(parser, top=True)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands or _subcommand_modules():
        importlib.import_module(f"{__name__}.{name}").add_subparser(sub)
    add_to_subcommands(parser)
    return parser


def _command_word(argv: list[str]) -> str | None:
    """The first word that is neither an option nor the value of ``--log-level``."""
    words = iter(argv)
    for word in words:
        if word == "--log-level":
            next(words, None)
        elif not word.startswith("-"):
            return word
    return None


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = _subcommand_modules()
    command = _command_word(argv)
    parser = build_parser([command] if command in names else names)
    args = parser.parse_args(argv)
    args.log_level = chosen_level(args)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    with configured(args.log_level):
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        return int(args.func(args) or 0)
    except CanwatchError as exc:
        print(f"canwatch {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except FileNotFoundError as exc:
        print(f"canwatch {args.command}: error: {exc.filename}: no such file", file=sys.stderr)
        return 2
    except OSError as exc:
        name = f"{exc.filename}: " if exc.filename else ""
        print(f"canwatch {args.command}: error: {name}{exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
