"""CAN FD in every log format: read as python-can reads it, written back unchanged.

Mixed classic + FD logs are written by python-can's own writers, then read by
canwatch and by python-can's ``LogReader``: same frames, same bytes, same flags.
Two documented differences: a frame of more than 8 bytes is FD even where
python-can leaves ``is_fd`` unset (its CSV has no FD column), and candump error
frames keep their id and data (python-can's reader drops both).
"""

from __future__ import annotations

from pathlib import Path

import can
import numpy as np
import pytest
from can.util import len2dlc

from detector.core.errors import InputError
from detector.core.fd import fd_lengths
from detector.core.schema import (
    EXTENDED_FLAG,
    FD_FRAME_DTYPE,
    FD_LENGTHS,
    FLAG_BRS,
    FLAG_ERROR,
    FLAG_ESI,
    FLAG_FD,
    FLAG_RTR,
    FRAME_DTYPE,
)
from replay.readers import mark_wide_ids_extended, read_frames
from replay.simulator import simulate_vehicle
from replay.writers import write_frames

SUFFIX = {"candump": ".log", "asc": ".asc", "blf": ".blf", "trc": ".trc", "csv": ".csv"}
WRITER = {
    "candump": can.CanutilsLogWriter,
    "asc": can.ASCWriter,
    "blf": can.BLFWriter,
    "trc": can.TRCWriter,
    "csv": can.CSVWriter,
}
#: FD data lengths the tests use: every FD size from 12 up, and a few short FD frames
FD_SIZES = [12, 16, 20, 24, 32, 48, 64, 8, 5]


def mixed_messages(fmt: str, n: int = 240, seed: int = 3) -> list[can.Message]:
    """Classic and FD frames (several lengths, BRS/ESI, extended ids), with a few
    classic remote and error frames where ``fmt`` can store them."""
    rng = np.random.default_rng(seed)
    ts = 1.6e9 + np.cumsum(rng.integers(1, 5000, n)) * 1e-6
    out = []
    for i in range(n):
        ext = bool(rng.random() < 0.3)
        arb = int(rng.integers(0, 2**29 if ext else 0x800))
        kind = i % 8
        common = {"timestamp": float(ts[i]), "arbitration_id": arb, "is_extended_id": ext}
        if kind in (0, 1, 2, 3):  # FD
            size = FD_SIZES[(i // 8) % len(FD_SIZES)]
            out.append(
                can.Message(
                    **common,
                    is_fd=True,
                    bitrate_switch=bool(kind & 1),
                    error_state_indicator=kind == 2 or (kind == 3 and i % 16 == 3),
                    data=rng.integers(0, 256, size).astype(np.uint8).tobytes(),
                )
            )
        elif kind == 4 and i % 24 == 4 and fmt != "trc":  # TRCWriter drops error frames
            out.append(can.Message(timestamp=float(ts[i]), is_error_frame=True, dlc=0))
        elif kind == 5 and i % 24 == 5 and fmt != "trc":  # ... and remote frames
            out.append(can.Message(**common, is_remote_frame=True, dlc=int(rng.integers(0, 9))))
        else:
            size = int(rng.integers(0, 9))
            out.append(
                can.Message(**common, data=rng.integers(0, 256, size).astype(np.uint8).tobytes())
            )
    return out


def write_with_python_can(path: Path, fmt: str, messages: list[can.Message]) -> None:
    """The log as python-can's own writer makes it. Its TRCWriter drops CAN FD frames
    (python-can 4.6: "Logging CAN FD is not implemented"), so the TRC log is
    canwatch's writer: python-can's TRCWriter plus FD lines."""
    if fmt == "trc":
        from replay.writers import _TRCWriter

        writer = _TRCWriter(path)
    else:
        writer = WRITER[fmt](path)
    with writer:
        for m in messages:
            writer.on_message_received(m)


def python_can_reads(path: Path, fmt: str) -> list[can.Message]:
    if fmt == "asc":  # LogReader's ASC times are relative; canwatch reads them absolute
        with can.ASCReader(path, relative_timestamp=False) as reader:
            return list(reader)
    with can.LogReader(path) as reader:
        return list(reader)


def assert_reads_like_python_can(ours: np.ndarray, theirs: list[can.Message], fmt: str) -> None:
    assert len(ours) == len(theirs)
    flags = ours["flags"]
    err = np.array([m.is_error_frame for m in theirs])
    np.testing.assert_array_equal(ours["ts"], [m.timestamp for m in theirs])
    np.testing.assert_array_equal((flags & FLAG_ERROR) != 0, err)
    np.testing.assert_array_equal((flags & FLAG_RTR) != 0, [m.is_remote_frame for m in theirs])
    fd = np.array([m.is_fd or len(m.data) > 8 for m in theirs])
    np.testing.assert_array_equal((flags & FLAG_FD) != 0, fd)
    brs = [m.is_fd and m.bitrate_switch for m in theirs]
    esi = [m.is_fd and m.error_state_indicator for m in theirs]
    np.testing.assert_array_equal((flags & FLAG_BRS) != 0, brs)
    np.testing.assert_array_equal((flags & FLAG_ESI) != 0, esi)
    keep = ~err if fmt == "candump" else np.ones(len(theirs), bool)  # python-can: id 0
    ids = np.array([m.arbitration_id for m in theirs], np.uint32)
    np.testing.assert_array_equal((ours["can_id"] & 0x1FFF_FFFF)[keep], ids[keep])
    ext = np.array([m.is_extended_id for m in theirs])
    np.testing.assert_array_equal(((ours["can_id"] & EXTENDED_FLAG) != 0)[keep], ext[keep])
    lengths = fd_lengths(ours) if ours.dtype == FD_FRAME_DTYPE else ours["dlc"]
    for i, m in enumerate(theirs):
        if m.is_remote_frame or (fmt == "candump" and m.is_error_frame):
            continue
        assert bytes(ours["data"][i, : lengths[i]]) == bytes(m.data), f"frame {i}"
        assert not ours["data"][i, lengths[i] :].any()
        want_dlc = len2dlc(len(m.data)) if fd[i] else min(m.dlc, 8)
        assert ours["dlc"][i] == want_dlc, f"frame {i}"


@pytest.mark.parametrize("fmt", sorted(SUFFIX))
def test_mixed_log_reads_like_python_can(tmp_path, fmt):
    path = tmp_path / f"mixed{SUFFIX[fmt]}"
    messages = mixed_messages(fmt)
    write_with_python_can(path, fmt, messages)
    ours = read_frames(path)
    assert ours.dtype == FD_FRAME_DTYPE
    theirs = python_can_reads(path, fmt)
    assert len(theirs) == len(messages)
    assert_reads_like_python_can(ours, theirs, fmt)
    fd = (ours["flags"] & FLAG_FD) != 0
    lengths = set(fd_lengths(ours)[fd].tolist())
    assert {12, 16, 20, 24, 32, 48, 64} <= lengths
    if fmt != "csv":  # no place for BRS/ESI or short FD frames there
        assert {5, 8} <= lengths
        assert (ours["flags"][fd] & FLAG_BRS).any() and (ours["flags"][fd] & FLAG_ESI).any()
    assert not ours["data"][~fd, 8:].any() and (ours["dlc"][~fd] <= 8).all()


def fd_frames(
    n: int = 400, seed: int = 5, remote: bool = True, error: bool = True, error_id: int = 0
) -> np.ndarray:
    """A canwatch FD array: classic and FD frames of every length code, BRS/ESI."""
    rng = np.random.default_rng(seed)
    f = np.zeros(n, FD_FRAME_DTYPE)
    f["ts"] = 1.6e9 + np.cumsum(rng.integers(1, 5000, n)) * 1e-6
    ext = rng.random(n) < 0.3
    f["can_id"] = np.where(
        ext, rng.integers(0, 2**29, n) | EXTENDED_FLAG, rng.integers(0, 0x800, n)
    )
    fd = np.arange(n) % 3 != 0
    f["dlc"] = np.where(fd, 1 + np.arange(n) % 15, np.arange(n) % 9)
    brs = fd & (rng.random(n) < 0.5)
    esi = fd & (rng.random(n) < 0.2)
    f["flags"] = fd * FLAG_FD + brs * FLAG_BRS + esi * FLAG_ESI
    f["data"] = rng.integers(0, 256, (n, 64))
    f["data"][np.arange(64) >= fd_lengths(f)[:, None]] = 0
    classic = np.flatnonzero(~fd)
    if remote:
        rtr = classic[1::10]
        f["flags"][rtr] = FLAG_RTR
        f["data"][rtr] = 0
    if error:
        err = classic[4::10]
        f["flags"][err] = FLAG_ERROR
        f["can_id"][err] = error_id | EXTENDED_FLAG  # python-can's error frames are extended
        f["dlc"][err] = 0
        f["data"][err] = 0
    return f


# format -> (timestamp precision in s, can store remote and error frames, BRS/ESI/short FD)
ROUND_TRIP = {
    "candump": (1e-6, True, True),
    "asc": (1e-6, True, True),
    "blf": (1e-6, True, True),
    "trc": (1e-6, False, True),
    "csv": (0.0, True, False),
}


@pytest.mark.parametrize("fmt", sorted(ROUND_TRIP))
def test_writers_round_trip_fd(tmp_path, fmt):
    precision, rtr_err, fd_flags = ROUND_TRIP[fmt]
    # ASC keeps no id for an error frame (python-can reads 0); python-can's candump
    # reader takes only bus errors (CAN_ERR_BUSERROR, 0x80) for error frames
    frames = fd_frames(remote=rtr_err, error=rtr_err, error_id=0x80 if fmt == "candump" else 0)
    if not fd_flags:  # python-can's CSV: FD frames of > 8 bytes, no BRS/ESI
        frames["flags"] &= ~np.uint8(FLAG_BRS | FLAG_ESI)
        fd = (frames["flags"] & FLAG_FD) != 0
        frames["dlc"][fd] = np.maximum(frames["dlc"][fd], 9)
    path = tmp_path / f"fd{SUFFIX[fmt]}"
    write_frames(path, frames, fmt)
    back = read_frames(path)
    assert back.dtype == FD_FRAME_DTYPE and len(back) == len(frames)
    for name in ("can_id", "dlc", "flags", "data"):
        np.testing.assert_array_equal(back[name], frames[name], err_msg=name)
    np.testing.assert_allclose(back["ts"], frames["ts"], rtol=0, atol=precision / 2 + 5e-7)
    # and python-can reads canwatch's file the same way
    assert_reads_like_python_can(back, python_can_reads(path, fmt), fmt)


def test_fd_array_without_fd_frames_writes_classic_formats(tmp_path):
    frames = fd_frames(60, remote=False, error=False)
    with pytest.raises(ValueError, match="classic CAN frames only"):
        write_frames(tmp_path / "x.csv", frames, "road")
    classic = frames[(frames["flags"] & FLAG_FD) == 0]
    write_frames(tmp_path / "x.csv", classic, "road")
    back = read_frames(tmp_path / "x.csv")
    assert back.dtype == FRAME_DTYPE
    np.testing.assert_array_equal(back["data"], classic["data"][:, :8])


@pytest.mark.parametrize(
    "fmt, change, why",
    [
        ("csv", lambda f: f, "BRS/ESI"),
        ("csv", lambda f: _only_fd_bits(f, FLAG_FD, dlc=5), "FD frame of <= 8 bytes"),
        ("trc", lambda f: f, "remote frames"),
        ("asc", lambda f: _only_fd_bits(f, FLAG_FD, dlc=0), "0 data bytes"),
        ("blf", lambda f: _only_fd_bits(f, FLAG_FD | FLAG_ERROR, dlc=9), "error frames as classic"),
    ],
)
def test_writers_refuse_what_the_format_would_change(tmp_path, fmt, change, why):
    frames = change(fd_frames(60))
    with pytest.raises(ValueError, match=why):
        write_frames(tmp_path / f"x{SUFFIX[fmt]}", frames, fmt)


def _only_fd_bits(frames: np.ndarray, flags: int, dlc: int) -> np.ndarray:
    frames = frames[:5].copy()
    frames["flags"] = flags
    frames["dlc"] = dlc
    frames["data"] = 0
    return frames


@pytest.mark.parametrize("fmt", sorted(SUFFIX))
def test_classic_only_logs_stay_classic(tmp_path, fmt):
    path = tmp_path / f"classic{SUFFIX[fmt]}"
    messages = [m for m in mixed_messages(fmt) if not m.is_fd]
    write_with_python_can(path, fmt, messages)
    ours = read_frames(path)
    assert ours.dtype == FRAME_DTYPE
    assert_reads_like_python_can(ours, python_can_reads(path, fmt), fmt)


def test_plain_classic_candump_keeps_the_fast_path(tmp_path):
    from replay.readers import _fast

    path = tmp_path / "c.log"
    frames = fd_frames(200, remote=False, error=False)
    write_frames(path, frames[(frames["flags"] & FLAG_FD) == 0], "candump")
    assert _fast.candump(path.read_bytes()) is not None
    write_frames(path, frames, "candump")  # FD lines: the general reader
    assert _fast.candump(path.read_bytes()) is None
    assert read_frames(path).dtype == FD_FRAME_DTYPE


def test_candump_fd_flags_and_odd_lengths_as_python_can(tmp_path):
    """Flags nibble bits beyond BRS/ESI (newer candumps set FDF, 4) carry nothing
    more; a length between two FD sizes (13 bytes: python-can keeps 13) is padded
    with zeros to the next size (16), as a CAN FD controller sends it."""
    path = tmp_path / "odd.log"
    data13 = bytes(range(1, 14))
    path.write_text(
        f"(1.0) can0 123##5{data13.hex()}\n"
        "(1.1) can0 1FFFFFFF##7" + "ab" * 64 + "\n"
        "(1.2) can0 FFF##0\n"
    )
    ours = read_frames(path)
    theirs = python_can_reads(path, "candump")
    assert [len(m.data) for m in theirs] == [13, 64, 0]
    assert fd_lengths(ours).tolist() == [16, 64, 0]
    assert bytes(ours["data"][0, :16]) == data13 + bytes(3)
    assert ours["flags"].tolist() == [FLAG_FD | FLAG_BRS, FLAG_FD | FLAG_BRS | FLAG_ESI, FLAG_FD]
    assert [m.bitrate_switch for m in theirs] == [True, True, False]
    assert [m.error_state_indicator for m in theirs] == [False, True, False]
    # a 3-digit id above 0x7FF is flagged extended in FD arrays as in classic ones
    assert ours["can_id"][2] == 0xFFF | EXTENDED_FLAG


def test_mark_wide_ids_extended_on_both_dtypes():
    for dtype in (FRAME_DTYPE, FD_FRAME_DTYPE):
        f = np.zeros(3, dtype)
        f["can_id"] = [0x7FF, 0xFFF, 0x123 | EXTENDED_FLAG]
        out = mark_wide_ids_extended(f)
        assert out.dtype == dtype
        assert out["can_id"].tolist() == [0x7FF, 0xFFF | EXTENDED_FLAG, 0x123 | EXTENDED_FLAG]


def test_trc_fd_types_as_python_can_reads_them(tmp_path):
    """PEAK TRC 2.1 FD message types, read exactly as python-can's TRCReader reads
    them (it takes FE as BRS + ESI and BI as ESI alone)."""
    path = tmp_path / "peak.trc"
    lines = [
        ";$FILEVERSION=2.1",
        ";$STARTTIME=45000.5",
        ";$COLUMNS=N,O,T,B,I,d,R,L,D",
        "      1         0.100 DT  1     0100 Rx -  2    01 02",
        "      2         0.200 FD  1     0101 Rx -  9    " + " ".join(["11"] * 12),
        "      3         0.300 FB  1  1ABCDEF Rx -  15   " + " ".join(["22"] * 64),
        "      4         0.400 FE  1     0103 Tx -  10   " + " ".join(["33"] * 16),
        "      5         0.500 BI  1     0104 Rx -  8    " + " ".join(["44"] * 8),
        "      6         0.600 RR  1     0105 Rx -  3",
    ]
    path.write_bytes(("\r\n".join(lines) + "\r\n").encode())
    ours = read_frames(path)
    theirs = python_can_reads(path, "trc")
    assert len(theirs) == 6
    assert_reads_like_python_can(ours, theirs, "trc")
    assert fd_lengths(ours).tolist() == [2, 12, 64, 16, 8, 3]


def _asc_with_bad_fd_line(path: Path) -> int:
    msgs = [m for m in mixed_messages("asc", 40)]
    write_with_python_can(path, "asc", msgs)
    text = path.read_text().splitlines()
    k = next(i for i, ln in enumerate(text) if "CANFD" in ln and " 1 0 " in ln)
    parts = text[k].split()
    # the first data byte: after "... <brs> <esi> <dlc> <length>"
    first = parts.index("CANFD") + 8
    parts[first] = "ZZ"
    text[k] = " ".join(parts)
    path.write_text("\n".join(text) + "\n")
    return k + 1


def _trc_with_bad_fd_line(path: Path) -> int:
    write_with_python_can(path, "trc", mixed_messages("trc", 40))
    text = path.read_text().splitlines()
    k = next(i for i, ln in enumerate(text) if " FB " in ln)
    text[k] = text[k][:-2] + "Z"
    path.write_text("\n".join(text) + "\n")
    return k + 1


@pytest.mark.parametrize(
    "name, text, message",
    [
        ("f.log", "(1.0) can0 123#11\n(1.1) can0 123##\n", "f.log:2: bad CAN FD flags"),
        ("f.log", "(1.0) can0 123#11\n(1.1) can0 123##G0011\n", "f.log:2: bad CAN FD flags"),
        ("f.log", "(1.0) can0 123##1" + "ZZ" * 12 + "\n", "f.log:1: bad hex in data"),
        ("f.log", "(1.0) can0 123#11\n(1.1) can0 123##1" + "0" * 25 + "\n", "f.log:2: odd number"),
        ("f.log", "(1.0) can0 123##1" + "00" * 65 + "\n", "f.log:1: CAN FD data of 65 bytes > 64"),
        (
            "f.log",
            "(1.0) can0 123##1" + "00" * 12 + "\n(1.1) can0 1#" + "00" * 9 + "\n",
            "f.log:2: dlc 9 > 8",
        ),
        (
            "f.csv",
            "timestamp,arbitration_id,extended,remote,error,dlc,data\n1.0,0x10,0,0,0,65,AA==\n",
            "f.csv:2: dlc 65 > 64",
        ),
        (
            "f.csv",
            "timestamp,arbitration_id,extended,remote,error,dlc,data\n"
            "1.0,0x10,0,0,0,12," + "A" * 16 + "\n1.1,0x10,0,0,0,64," + "A" * 88 + "\n",
            "f.csv:3: 66 data bytes > 64",
        ),
        (
            "f.csv",
            "timestamp,arbitration_id,extended,remote,error,dlc,data\n1.0,0x10,0,0,0,12,"
            + "A!" * 8
            + "\n",
            "f.csv:2: bad base64 data",
        ),
    ],
)
def test_malformed_fd_lines_name_file_and_line(tmp_path, name, text, message):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(InputError) as exc:
        read_frames(path)
    assert str(exc.value).startswith(f"{path.parent}/{message}")
    assert "\n" not in str(exc.value)


@pytest.mark.parametrize(
    "fmt, spoil", [("asc", _asc_with_bad_fd_line), ("trc", _trc_with_bad_fd_line)]
)
def test_malformed_fd_line_of_python_can_formats(tmp_path, fmt, spoil):
    path = tmp_path / f"bad{SUFFIX[fmt]}"
    line = spoil(path)
    with pytest.raises(InputError) as exc:
        read_frames(path)
    assert str(exc.value).startswith(f"{path}:{line}: not a readable {fmt} file")
    assert "\n" not in str(exc.value)


def test_a_blf_file_cut_short_is_an_error_not_a_shorter_log(tmp_path):
    """Cut after its first containers (a copy that stopped), a BLF file read as a
    clean log of the frames before the cut (2,162 of 300,000 in the case found): its
    header's file size says it was cut."""
    path = tmp_path / "drive.blf"
    write_frames(path, simulate_vehicle("cusw", 30.0, 1.7e9, seed=1), "blf")
    whole = path.read_bytes()
    assert len(read_frames(path)) > 10_000
    path.write_bytes(whole[: len(whole) // 3])
    with pytest.raises(InputError, match=rf"drive.blf: truncated blf file: .* {len(whole)} bytes"):
        read_frames(path)


def test_fd_lengths_table_is_the_one_python_can_uses():
    assert FD_LENGTHS.tolist() == list(can.util.CAN_FD_DLC)


def test_unreadable_blf_and_oversized_messages(tmp_path):
    from replay.readers.pycan import messages_to_frames

    path = tmp_path / "cut.blf"
    write_frames(path, fd_frames(50), "blf")
    whole = path.read_bytes()
    path.write_bytes(whole[:150])
    with pytest.raises(InputError, match=r"cut.blf: truncated blf file: its header says"):
        read_frames(path)
    path.write_bytes(whole[:40])  # not even its header
    with pytest.raises(InputError, match=r"cut.blf: not a readable blf file"):
        read_frames(path)
    msgs = [can.Message(data=b"1"), can.Message(is_fd=True, data=bytes(70), check=False)]
    with pytest.raises(InputError, match=r"x.blf: message 2: CAN FD data of 70 bytes > 64"):
        messages_to_frames("x.blf", msgs)
