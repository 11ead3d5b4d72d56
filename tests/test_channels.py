"""Logs of several channels (buses): canwatch models one bus at a time, so a log that
holds two is refused until one is picked (``--channel``), never read as one bus that
never was. Every format that names channels: candump's interface, ASC's and BLF's
channel number, TRC's bus."""

from __future__ import annotations

import json
from pathlib import Path

import can
import numpy as np
import pytest

from detector.cli import main
from detector.core.errors import InputError
from detector.core.schema import FRAME_DTYPE
from replay.readers import _fast, read_frames, read_log
from replay.writers import write_frames


def frames_at(ids: list[int], start: float = 100.0) -> np.ndarray:
    f = np.zeros(len(ids), FRAME_DTYPE)
    f["ts"] = start + np.arange(len(ids)) * 0.01
    f["can_id"] = ids
    f["dlc"] = 2
    f["data"][:, :2] = [0x11, 0x22]
    return f


def two_buses(tmp_path: Path, fmt: str) -> tuple[Path, tuple[str, str]]:
    """A log of 6 frames of 0x100 on one bus and 4 of 0x200 on another, interleaved."""
    ids = [0x100, 0x200, 0x100, 0x200, 0x100, 0x100, 0x200, 0x100, 0x200, 0x100]
    if fmt == "candump":
        path = tmp_path / "two.log"
        write_frames(path, frames_at(ids))
        lines = path.read_text().splitlines()
        lines = [ln.replace(" can0 ", " can1 ") if "200#" in ln else ln for ln in lines]
        path.write_text("\n".join(lines) + "\n")
        return path, ("can0", "can1")
    if fmt == "trc":
        path = tmp_path / "two.trc"
        head = ";$FILEVERSION=2.1\n;$STARTTIME=45000.5\n;$COLUMNS=N,O,T,B,I,d,R,L,D\n"
        rows = [
            f"{n + 1:>7} {n * 10:13.3f} DT {1 if i == 0x100 else 2:>2} {i:>8X} Rx -  2    11 22"
            for n, i in enumerate(ids)
        ]
        path.write_text(head + "\n".join(rows) + "\n")
        return path, ("1", "2")
    path = tmp_path / f"two.{fmt}"
    writer = can.ASCWriter(str(path)) if fmt == "asc" else can.BLFWriter(str(path))
    with writer:
        for n, i in enumerate(ids):  # python-can counts channels from 0; the file from 1
            writer.on_message_received(
                can.Message(timestamp=100 + n / 100, arbitration_id=i, is_extended_id=False,
                            data=b"\x11\x22", channel=0 if i == 0x100 else 1)
            )  # fmt: skip
    return path, ("1", "2")


@pytest.mark.parametrize("fmt", ["candump", "asc", "blf", "trc"])
def test_a_log_of_two_buses_is_refused_until_one_is_picked(tmp_path, fmt):
    path, (first, second) = two_buses(tmp_path, fmt)
    with pytest.raises(InputError) as err:
        read_frames(path)
    assert str(err.value) == (
        f"{path}: frames of 2 CAN channels: {first} (6 frames), {second} (4 frames); "
        "canwatch models one bus at a time: pick one with --channel"
    )
    assert read_frames(path, channel=first)["can_id"].tolist() == [0x100] * 6
    assert read_frames(path, channel=second)["can_id"].tolist() == [0x200] * 4
    with pytest.raises(InputError, match=f"no channel 'can9'; its channels: {first} "):
        read_frames(path, channel="can9")
    frames, channels = read_log(path)
    assert len(frames) == 10 and channels.counts() == {first: 6, second: 4}


def test_one_bus_and_formats_without_channels(tmp_path):
    one = tmp_path / "one.log"
    write_frames(one, frames_at([0x100] * 5))
    assert len(read_frames(one)) == len(read_frames(one, channel="can0")) == 5
    road = tmp_path / "drive.csv"
    write_frames(road, frames_at([0x100] * 5), "road")
    assert len(read_frames(road)) == 5
    with pytest.raises(InputError, match="no channel 'can0': this format names none"):
        read_frames(road, channel="can0")


def test_a_classic_bus_beside_an_fd_one_reads_as_it_would_alone(tmp_path):
    classic = [f"({100 + i / 100:.6f}) can0 1A0#0011223344556677" for i in range(8)]
    fd = [f"({100.001 + i / 100:.6f}) can1 2B0##1" + "AB" * 12 for i in range(0, 8, 2)]
    path = tmp_path / "mixed.log"
    path.write_text("\n".join(sorted(classic + fd)) + "\n")
    alone = tmp_path / "alone.log"
    alone.write_text("\n".join(classic) + "\n")
    np.testing.assert_array_equal(read_frames(path, channel="can0"), read_frames(alone))
    assert len(read_frames(path, channel="can1")) == 4


def test_candump_fast_path_leaves_a_second_interface_to_the_general_reader(tmp_path):
    path, _ = two_buses(tmp_path, "candump")
    assert _fast.candump(path.read_bytes()) is None
    one = tmp_path / "one.log"
    write_frames(one, frames_at([0x100] * 5))
    assert _fast.candump(one.read_bytes()) is not None


def test_inspect_lists_the_channels_and_train_needs_one(tmp_path, capsys):
    path, _ = two_buses(tmp_path, "candump")
    assert main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split()[5] == "CHANNELS" and out[1].split()[6] == "can0,can1"
    assert main(["inspect", "--json", "--channel", "can1", str(path)]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["frames"] == 4 and record["channels"] == {"can1": 4}
    assert main(["train", "--brand", "jeep", "--out", str(tmp_path / "m"), str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "frames of 2 CAN channels" in err and "--channel" in err


def test_read_capture_names_each_frames_channel(tmp_path):
    from detector import read_capture

    path, _ = two_buses(tmp_path, "candump")
    df = read_capture(path)
    assert df["channel"].tolist() == ["can1" if i == 0x200 else "can0" for i in df["can_id"]]
    one = read_capture(path, channel="can1")
    assert len(one) == 4 and "channel" not in one.columns
