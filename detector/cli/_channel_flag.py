"""``--channel``: which bus of a multi-channel log the file commands read (a module of
its own: replay's light imports take it too)."""

from __future__ import annotations

import argparse


def add_channel_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--channel",
        metavar="NAME",
        help="read only this channel (bus) of logs that hold several: candump's interface "
        "(can0), ASC's or BLF's channel number, TRC's bus; canwatch models one bus at a time",
    )
