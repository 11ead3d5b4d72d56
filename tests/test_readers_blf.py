"""Vector BLF files that python-can 4.6 reads short, bent or for ever, built byte by
byte: each is read whole or refused with the byte or id at fault, never a shorter log
(replay/readers/_strict.py)."""

from __future__ import annotations

import struct
import zlib

import can
import pytest
from can.io import blf

from detector.core.errors import InputError
from detector.core.schema import FLAG_ERROR, FLAG_FD
from replay.readers import read_frames

MS = 1_000_000  # object times in nanoseconds


def obj(kind: int, body: bytes, ns: int, size: int | None = None) -> bytes:
    """One object (header version 1, times in ns), padded as python-can pads."""
    header = blf.OBJ_HEADER_V1_STRUCT.pack(blf.TIME_ONE_NANS, 0, 0, ns)
    whole = blf.OBJ_HEADER_BASE_STRUCT.size + len(header) + len(body)
    base = blf.OBJ_HEADER_BASE_STRUCT.pack(b"LOBJ", whole - len(body), 1, size or whole, kind)
    return base + header + body + b"\0" * (len(body) % 4)


def frame(can_id: int, ns: int, dlc: int = 8) -> bytes:
    return obj(blf.CAN_MESSAGE, blf.CAN_MSG_STRUCT.pack(1, 0, dlc, can_id, bytes(range(8))), ns)


def fd64(can_id: int, ns: int, dlc: int, valid: int) -> bytes:
    fields = (1, dlc, valid, 0, can_id, 0, 0x1000, 0, 0, 0, 0, 0, 0, 0, 0)
    return obj(blf.CAN_FD_MESSAGE_64, blf.CAN_FD_MSG_64_STRUCT.pack(*fields) + bytes(valid), ns)


def container(objects: bytes, cut: int | None = None) -> bytes:
    packed = zlib.compress(objects)[:cut]
    size = blf.OBJ_HEADER_BASE_STRUCT.size + blf.LOG_CONTAINER_STRUCT.size + len(packed)
    head = blf.OBJ_HEADER_BASE_STRUCT.pack(b"LOBJ", 16, 1, size, blf.LOG_CONTAINER)
    return head + blf.LOG_CONTAINER_STRUCT.pack(blf.ZLIB_DEFLATE, len(objects)) + packed + (
        b"\0" * (size % 4)
    )


def write(tmp_path, *containers: bytes, claimed: int | None = None):
    """A BLF file; its header claims ``claimed`` bytes (0: a logger that never wrote it)."""
    body = b"".join(containers)
    size = blf.FILE_HEADER_SIZE + len(body) if claimed is None else claimed
    start = (2026, 12, 1, 7, 10, 0, 0, 0)
    head = blf.FILE_HEADER_STRUCT.pack(
        b"LOGG", blf.FILE_HEADER_SIZE, 2, 6, 8, 1, 2, 6, 8, 1, size, 0, 0, 0, *start, *start
    )
    path = tmp_path / "drive.blf"
    path.write_bytes(head.ljust(blf.FILE_HEADER_SIZE, b"\0") + body)
    return path


def frames_of(n: int, first_ms: int = 0) -> bytes:
    return b"".join(frame(0x100 + i % 7, (first_ms + i) * MS) for i in range(n))


def test_error_frames_python_can_skips_are_read_in_place(tmp_path):
    """CANoe logs an error frame on a CAN FD channel as CAN_FD_ERROR_64 (older tools:
    CAN_ERROR); python-can skips both, so a bus-off attack read as a quiet bus."""
    fd_error = obj(104, bytes([1]) + bytes(59), 2 * MS)  # on channel 1, as the frames
    classic_error = obj(2, struct.pack("<HHL", 1, 0, 0), 3 * MS)
    path = write(tmp_path, container(frames_of(2) + fd_error + classic_error + frames_of(2, 4)))
    assert len(list(can.BLFReader(str(path)))) == 4  # what python-can reads
    got = read_frames(path)
    assert got["flags"].tolist() == [0, 0, FLAG_ERROR, FLAG_ERROR, 0, 0]
    assert (got["ts"][2:4] - got["ts"][0]).round(6).tolist() == [0.002, 0.003]


def test_a_classic_frame_with_dlc_above_8_in_an_fd_object_reads(tmp_path):
    """CANoe logs every frame of an FD channel as an FD object; a classic one (EDL
    clear) may code its 8 bytes as DLC 9-15, which python-can gives as 12-64."""
    fields = (1, 10, 8, 0, 0x64, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0)  # fd_flags 0: classic
    classic = obj(blf.CAN_FD_MESSAGE_64, blf.CAN_FD_MSG_64_STRUCT.pack(*fields) + bytes(8), 0)
    path = write(tmp_path, container(frames_of(2) + classic))
    assert read_frames(path)["can_id"].tolist() == [0x100, 0x101, 0x64]


def test_markers_and_texts_are_no_frames(tmp_path):
    marker = obj(blf.GLOBAL_MARKER, bytes(40), 2 * MS)
    path = write(tmp_path, container(frames_of(2) + marker + frames_of(2, 4)))
    assert len(read_frames(path)) == 4


@pytest.mark.parametrize(
    "objects, message",
    [
        (frames_of(3) + obj(126, struct.pack("<LQL", 0, 0, 500), 3 * MS),
         ": the logger recorded lost data at [0-9]+.003000: frames are missing"),
        (frames_of(3) + obj(91, struct.pack("<LHH", 1, 1, 0), 3 * MS),
         ": the logger recorded a driver overrun at"),
        (fd64(0x64, 0, 15, 8), r": id 0x64: dlc 15 \(64 bytes\) but 8 data bytes"),
        (frame(0x64, 0, dlc=200), ": id 0x64: dlc 200 but 8 data bytes"),
        (frame(0x64, 0)[:8] + struct.pack("<L", 0) + frame(0x64, 0)[12:],
         ": object type 1: header version 1, sizes 32/0"),  # python-can: that frame for ever
    ],
    ids=["data-lost", "overrun", "fd-dlc", "dlc-200", "size-0"],
)
def test_what_python_can_bends_or_skips_is_an_error(tmp_path, objects, message):
    path = write(tmp_path, container(objects))
    with pytest.raises(InputError, match=f"drive.blf: not a readable blf file{message}"):
        read_frames(path)


def test_a_file_cut_inside_its_last_container_is_an_error(tmp_path):
    """A logger that lost power mid-write leaves the header's size at 0 and the last
    container's compressed data cut: python-can reads the frames before the cut."""
    whole = frames_of(100)
    path = write(tmp_path, container(frames_of(100)), container(whole, cut=300), claimed=0)
    with pytest.raises(InputError, match=r"after message 100: container at byte \d+: its .* cut short"):
        read_frames(path)
    cut_object = container(frames_of(100)[:-20])
    path = write(tmp_path, cut_object, claimed=0)
    with pytest.raises(InputError, match="after message 99: the file ends inside an object"):
        read_frames(path)


def test_an_object_larger_than_what_follows_is_an_error_not_a_shorter_log(tmp_path):
    """python-can kept such an object for the next container and threw away the rest."""
    objects = frames_of(50) + frame(0x123, 50 * MS)[:8] + struct.pack("<L", 100_000)
    objects += frame(0x123, 50 * MS)[12:] + frames_of(49, 51)
    path = write(tmp_path, container(objects), container(frames_of(100, 100)))
    with pytest.raises(InputError, match="after message 50: the file ends inside an object"):
        read_frames(path)


def test_whole_files_read_as_python_can_reads_them(tmp_path):
    objects = frames_of(40) + fd64(0x64, 41 * MS, 15, 64) + frames_of(40, 42)
    path = write(tmp_path, container(objects[:3000]), container(objects[3000:]))
    theirs = list(can.BLFReader(str(path)))
    got = read_frames(path)
    assert len(got) == len(theirs) == 81
    assert got["can_id"].tolist() == [m.arbitration_id for m in theirs]
    assert (got["flags"] & FLAG_FD).tolist() == [FLAG_FD if m.is_fd else 0 for m in theirs]
