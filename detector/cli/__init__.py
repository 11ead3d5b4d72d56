"""The ``canwatch`` command line: one module per subcommand in this package.

Each module defines ``add_subparser(subparsers)`` which registers its parser and
``set_defaults(func=...)``; ``func(args) -> int`` is the exit code. Errors that
canwatch can explain are printed as one line, with a non-zero exit and no
traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from detector.core.errors import CanwatchError

_ORDER = [
    "demo",
    "simulate",
    "inspect",
    "train",
    "evaluate",
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
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more log output")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in commands or _subcommand_modules():
        importlib.import_module(f"{__name__}.{name}").add_subparser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    names = _subcommand_modules()
    words = [a for a in argv if not a.startswith("-")]
    parser = build_parser([words[0]] if words and words[0] in names else names)
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG
        if args.verbose > 1
        else logging.INFO
        if args.verbose
        else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
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
