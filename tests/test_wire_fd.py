"""The wire format's schema 2 (CAN FD), and schema 1 records as written before it existed."""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from test_wire import assert_same_results
from test_wire import one_by_one as decode_each

from detector.core.errors import DecodeError
from detector.core.fd import fd_lengths
from detector.core.schema import (
    FD_FRAME_DTYPE,
    FD_LENGTHS,
    FLAG_BRS,
    FLAG_ERROR,
    FLAG_ESI,
    FLAG_FD,
    FLAG_RTR,
    FRAME_DTYPE,
    make_frames,
)
from detector.transport import wire

NOW = 1_700_000_100.0
LIMITS = dict(known_brands={"jeep", "ram"}, now=NOW, max_future_s=300.0, min_ts=1e9)
DOC = Path(__file__).resolve().parent.parent / "docs" / "wire-format.md"


def decode(key=b"veh-1", value=b"", headers=None, **kw):
    return wire.decode_record(key, value, headers, **{**LIMITS, **kw})


def headers(ctype=wire.CONTENT_TYPE_BINARY, schema=b"2", brand=b"jeep"):
    return [("brand", brand), ("content-type", ctype.encode()), ("schema", schema)]


BH, JH = headers(), headers(wire.CONTENT_TYPE_JSON)


def one_by_one(records):
    return decode_each(records, decode)


# -- schema 1 records as written by the encoder before schema 2 (commit 6983f82) ---------
# Four frames of vehicle veh-legacy-01, brand ram, out of time order: 0x7FF dlc 4,
# 0x1A0 dlc 8, extended 0x18DAF110 RTR, 0x000 error frame (labels 3 and 1 in memory).

LEGACY_BINARY = bytes.fromhex(
    "43574631010010000400000018000000"
    "00004840fc54d941ff07000004000000deadbeef00000000"
    "00004040fc54d941a0010000080000000102030405060708"
    "00006040fc54d94110f1da98080100000000000000000000"
    "04008040fc54d94100000000080200002000000000009900"
)
LEGACY_JSON = (
    b'{"vehicle":"veh-legacy-01","brand":"ram","bus":"can0","frames":[[1700000001.125,2047,4,'
    b'"deadbeef"],[1700000001.0,416,8,"0102030405060708"],[1700000001.5,2564485392,8,'
    b'"0000000000000000",1],[1700000002.000001,0,8,"2000000000009900",2]]}'
)
LEGACY_HEADERS = {
    "binary": [("brand", b"ram"), ("content-type", b"application/vnd.canwatch.frames"), ("schema", b"1")],
    "json": [("brand", b"ram"), ("content-type", b"application/json"), ("schema", b"1")],
}


def legacy_frames() -> np.ndarray:
    """The frames of the records above, as the caller encoded them."""
    frames = make_frames(
        ts=[1700000001.125, 1700000001.0, 1700000001.5, 1700000002.000001],
        can_id=[0x7FF, 0x1A0, 0x18DAF110, 0x000],
        data=np.array([[0xDE, 0xAD, 0xBE, 0xEF, 0, 0, 0, 0], [1, 2, 3, 4, 5, 6, 7, 8],
                       [0] * 8, [0x20, 0, 0, 0, 0, 0, 0x99, 0]]),  # fmt: skip
        dlc=[4, 8, 8, 8],
        extended=[False, False, True, False],
        label=[0, 3, 0, 1],
    )
    frames["flags"] = [0, 0, FLAG_RTR, FLAG_ERROR]
    return frames


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_schema_1_records_written_before_schema_2_still_decode(encoding):
    value = LEGACY_BINARY if encoding == "binary" else LEGACY_JSON
    hs = LEGACY_HEADERS[encoding]
    want = legacy_frames()[[1, 0, 2, 3]]  # sorted by ts
    want["label"] = 0
    for batch in (
        decode(b"veh-legacy-01", value, hs),
        wire.decode_records([(b"veh-legacy-01", value, hs)], **LIMITS)[0],
    ):
        assert (batch.vehicle, batch.brand) == ("veh-legacy-01", "ram")
        assert batch.frames.dtype == FRAME_DTYPE
        assert batch.frames.tobytes() == want.tobytes()
        assert (batch.oldest, batch.newest) == (1700000001.0, 1700000002.000001)


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_classic_frames_are_still_written_as_schema_1_byte_for_byte(encoding):
    key, value, hs = wire.encode_record("veh-legacy-01", "ram", legacy_frames(), encoding)
    assert value == (LEGACY_BINARY if encoding == "binary" else LEGACY_JSON)
    assert hs == LEGACY_HEADERS[encoding]


# -- schema 2: the documented example ---------------------------------------------------


def doc_section_8() -> str:
    text = DOC.read_text()
    return text[text.index("## 8. Schema 2: CAN FD") :]


def doc_blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", doc_section_8(), flags=re.S)


def doc_fd_frame() -> np.ndarray:
    f = np.zeros(1, FD_FRAME_DTYPE)
    f["ts"], f["can_id"], f["dlc"], f["flags"] = 1700000000.75, 0x1A0, 9, FLAG_FD | FLAG_BRS
    f["data"][0, :12] = list(bytes.fromhex("00112233445566778899aabb"))
    return f


def doc_hex() -> str:
    (found,) = re.findall(r"`(43574631[0-9a-f]+)`", doc_section_8())
    return found


def test_the_documented_fd_example_is_what_the_encoder_writes():
    value = bytes.fromhex(doc_hex())
    key, encoded, hs = wire.encode_record("veh-7f3a9c", "jeep", doc_fd_frame())
    assert encoded == value and len(value) == 96
    assert hs == headers()
    assert struct.unpack_from("<4sHHIHH", value) == (b"CWF1", 2, 16, 1, 80, 0)
    # one np.frombuffer, as the page says
    body = np.frombuffer(value, FD_FRAME_DTYPE, count=1, offset=16)
    assert body.tobytes() == doc_fd_frame().tobytes()
    batch = decode(key, value, hs)
    assert batch.frames.dtype == FD_FRAME_DTYPE
    assert batch.frames.tobytes() == doc_fd_frame().tobytes()


def test_the_annotated_dump_spells_out_the_documented_bytes():
    (dump,) = [b for b in doc_blocks("") if b.startswith("offset")]
    got = bytearray()
    for line in dump.splitlines()[1:]:
        if line.startswith("--"):
            continue
        offset, *tokens = line.split()
        assert int(offset, 16) == len(got), line
        for t in tokens:
            if not re.fullmatch(r"[0-9a-f]{2}", t):
                break
            got.append(int(t, 16))
    assert got.hex() == doc_hex()


def test_the_documented_producer_writes_the_documented_bytes():
    (code,) = doc_blocks("python")
    space: dict = {}
    exec(code, space)  # the page's own encoder, as a gateway developer would copy it
    frame = (1700000000.75, 0x1A0, False, FLAG_FD | FLAG_BRS, bytes.fromhex("00112233445566778899aabb"))
    assert space["encode_fd"]([frame]).hex() == doc_hex()
    with pytest.raises(ValueError):  # 13 bytes: no FD length code
        space["encode_fd"]([(*frame[:4], bytes(13))])


def test_the_documented_json_example_decodes_and_is_what_the_encoder_writes():
    (doc,) = doc_blocks("json")
    frames = np.zeros(2, FD_FRAME_DTYPE)
    frames[0] = doc_fd_frame()[0]
    frames[1]["ts"], frames[1]["can_id"], frames[1]["dlc"] = 1700000001.0, 0x98FEF100, 3
    frames["data"][1, :3] = [0xAA, 0xBB, 0xCC]
    _, encoded, hs = wire.encode_record("veh-7f3a9c", "jeep", frames, "json")
    assert hs == JH
    assert json.loads(encoded) == json.loads(doc)
    batch = decode(b"veh-7f3a9c", doc.encode(), JH)
    assert batch.frames.tobytes() == frames.tobytes()


# -- schema 2 round trips ----------------------------------------------------------------


def fd_frames(n: int = 60, seed: int = 1) -> np.ndarray:
    """Mixed classic and FD frames: every length code, BRS/ESI, RTR and error frames,
    extended ids, labels; nothing past each frame's length."""
    rng = np.random.default_rng(seed)
    out = np.zeros(n, FD_FRAME_DTYPE)
    out["ts"] = 1_700_000_000 + np.sort(rng.random(n)) * 10
    fd = rng.random(n) < 0.6
    every = rng.choice(n, 16, replace=False) if n >= 32 else []  # every length code once
    fd[every] = True
    out["dlc"] = np.where(fd, rng.integers(0, 16, n), rng.integers(0, 9, n))
    out["dlc"][every] = np.arange(16)[: len(every)]
    ext = rng.random(n) < 0.3
    ids = np.where(ext, rng.integers(0, 1 << 29, n) | 0x8000_0000, rng.integers(0, 1 << 11, n))
    out["can_id"] = ids
    flags = np.where(fd, FLAG_FD | rng.choice([0, FLAG_BRS, FLAG_ESI, FLAG_BRS | FLAG_ESI], n), 0)
    flags[~fd & (rng.random(n) < 0.2)] |= FLAG_RTR
    flags[rng.random(n) < 0.05] |= FLAG_ERROR
    out["flags"] = flags
    out["label"] = rng.integers(0, 3, n)
    out["data"] = rng.integers(0, 256, (n, 64))
    out["data"][np.arange(64) >= fd_lengths(out)[:, None]] = 0
    return out


def expected(frames: np.ndarray) -> np.ndarray:
    out = frames.copy()
    out["label"] = 0
    return out


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_fd_round_trip(encoding):
    frames = fd_frames()
    assert {int(x) for x in frames["dlc"][frames["flags"] & FLAG_FD != 0]} == set(range(16))
    key, value, hs = wire.encode_record("veh-1", "jeep", frames, encoding)
    assert dict(hs)["schema"] == b"2"
    batch = decode(key, value, hs)
    assert batch.frames.dtype == FD_FRAME_DTYPE and batch.frames.flags.writeable
    assert batch.frames.tobytes() == expected(frames).tobytes()
    assert_same_results(wire.decode_records([(key, value, hs)], **LIMITS), [batch])


def test_fd_json_gives_each_frame_exactly_its_bytes():
    frames = fd_frames()
    rows = json.loads(wire.encode_json("veh-1", "jeep", frames))["frames"]
    for row, f in zip(rows, frames, strict=True):
        n = FD_LENGTHS[f["dlc"]] if f["flags"] & FLAG_FD else f["dlc"]
        assert row[2] == f["dlc"] and len(row[3]) == 2 * n


def test_fd_decode_sorts_and_zeroes_bytes_past_each_length():
    frames = fd_frames(40, seed=2)[::-1].copy()
    frames["data"][:] = 0xEE  # junk past every length
    batch = decode(value=wire.encode_binary(frames), headers=BH)
    assert np.all(np.diff(batch.frames["ts"]) >= 0)
    lengths = fd_lengths(batch.frames)
    cols = np.arange(64)
    assert (batch.frames["data"][cols >= lengths[:, None]] == 0).all()
    assert (batch.frames["data"][cols < lengths[:, None]] == 0xEE).all()


def test_a_classic_remote_frame_may_give_no_data_under_schema_2():
    value = json.dumps({"frames": [[1_700_000_000.5, 0x123, 8, "", FLAG_RTR]]}).encode()
    batch = decode(value=value, headers=JH)
    assert batch.frames.dtype == FD_FRAME_DTYPE and batch.frames["dlc"][0] == 8


def test_the_encoder_refuses_what_schema_2_cannot_carry():
    with pytest.raises(ValueError, match="split it"):
        wire.encode_binary(np.zeros(wire.MAX_FD_FRAMES + 1, FD_FRAME_DTYPE))
    with pytest.raises(TypeError):
        wire.encode_binary(np.zeros(3, [("ts", "<f8")]))
    assert len(wire.encode_binary(np.zeros(wire.MAX_FD_FRAMES, FD_FRAME_DTYPE))) <= wire.MAX_RECORD_BYTES


def test_headers_for_writes_a_known_schema_only():
    assert wire.headers_for("jeep", wire.CONTENT_TYPE_JSON, 2)[2] == ("schema", b"2")
    with pytest.raises(ValueError):
        wire.headers_for("jeep", wire.CONTENT_TYPE_JSON, 3)


# -- schema 2 dead letters ---------------------------------------------------------------


def fd_binary(version=2, rsize=80, count=None, **fields) -> bytes:
    """A valid FD record (3 frames) with fields of frame 0 overwritten, raw."""
    f = fd_frames(3, seed=5)
    f["label"] = 0
    f["flags"], f["dlc"] = FLAG_FD, 9
    for name, val in fields.items():
        f[name][0] = val
    n = len(f) if count is None else count
    return struct.pack("<4sHHIHH", b"CWF1", version, 16, n, rsize, 0) + f.tobytes()


def jrow(dlc, data, flags=FLAG_FD, ts=1_700_000_000.5, can_id=0x123) -> bytes:
    return json.dumps({"frames": [[ts, can_id, dlc, data, flags]]}).encode()


V1 = wire.encode_binary(make_frames(ts=[1_700_000_000.5], can_id=[0x10], data=[[1, 2]]))
CASES = [
    # (reason, value, headers, words the detail must hold)
    ("bad_dlc", fd_binary(dlc=16), BH, "dlc 16 > 15"),
    ("bad_dlc", fd_binary(dlc=9, flags=0), BH, "classic frame"),
    ("bad_dlc", fd_binary(dlc=9, flags=FLAG_BRS), BH, "classic frame"),  # dlc before flags
    ("bad_dlc", jrow(10, "00" * 13), JH, "13 data bytes"),
    ("bad_dlc", jrow(9, "00" * 13), JH, "an FD frame holds"),
    ("bad_dlc", jrow(9, "00" * 8), JH, "means 12"),
    ("bad_dlc", jrow(15, "00" * 48), JH, "means 64"),
    ("bad_dlc", jrow(8, "00" * 7, flags=0), JH, "classic frame means 8"),
    ("bad_dlc", jrow(9, "00" * 9, flags=0), JH, "classic frame"),
    ("bad_dlc", jrow(16, "00" * 64), JH, "dlc 16 > 15"),
    ("bad_flags", fd_binary(flags=FLAG_BRS, dlc=3), BH, "BRS or ESI"),
    ("bad_flags", fd_binary(flags=FLAG_ESI, dlc=8), BH, "BRS or ESI"),
    ("bad_flags", fd_binary(flags=FLAG_FD | FLAG_RTR), BH, "RTR on an FD frame"),
    ("bad_flags", fd_binary(flags=0x20 | FLAG_FD), BH, "unknown flag bits 0x20"),
    ("bad_flags", fd_binary(label=1), BH, "bytes 14-15"),
    ("bad_flags", fd_binary(reserved=1), BH, "bytes 14-15"),
    ("bad_flags", jrow(8, "00" * 8, flags=FLAG_BRS), JH, "BRS or ESI"),
    ("bad_flags", jrow(0, "", flags=FLAG_FD | FLAG_RTR), JH, "RTR on an FD frame"),
    ("bad_shape", jrow(15, "00" * 65), JH, "0..128 hex digits"),
    ("bad_shape", jrow(9, "0" * 23), JH, "even count"),
    ("bad_id", fd_binary(can_id=0x800), BH, "out of range"),
    ("bad_timestamp", fd_binary(ts=np.nan), BH, "outside"),
    ("unknown_schema", V1, BH, "binary version 1, schema header 2"),
    ("unknown_schema", fd_binary(), headers(schema=b"1"), "binary version 2, schema header 1"),
    ("unknown_schema", fd_binary(version=3), BH, "version 3, not a known version"),
    ("unknown_schema", fd_binary(version=3), headers(schema=b"3"), "expected 1 or 2"),
    ("unknown_schema", jrow(9, "00" * 12), headers(wire.CONTENT_TYPE_JSON, b"3"), "'3'"),
    ("unknown_schema", jrow(9, "00" * 12), headers(wire.CONTENT_TYPE_JSON, b"02"), "'02'"),
    ("bad_length", fd_binary(rsize=24), BH, "expected 16, 80, 0"),
    ("bad_length", fd_binary() + b"\0", BH, "after the last frame"),
    ("truncated", fd_binary(count=4), BH, "header announces 336"),
    ("too_large", fd_binary(count=wire.MAX_FD_FRAMES + 1), BH, "> 50000"),
    ("too_large", json.dumps({"frames": [[1.7e9, 1, 0, ""]] * (wire.MAX_FD_FRAMES + 1)}).encode(), JH, "> 50000"),
    ("empty", fd_binary(count=0)[:16], BH, "no frames"),
]


@pytest.mark.parametrize("reason,value,hs,words", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_schema_2_dead_letters(reason, value, hs, words):
    assert reason in wire.REASONS
    with pytest.raises(DecodeError) as info:
        decode(value=value, headers=hs)
    assert info.value.reason == reason, info.value.detail
    assert words in info.value.detail, info.value.detail


def test_schema_2_dead_letters_are_the_same_in_a_poll():
    records = [(b"veh-1", value, hs) for _, value, hs, _ in CASES]
    assert_same_results(wire.decode_records(records, **LIMITS), one_by_one(records))


def test_the_reasons_stay_the_bounded_set_they_were():
    assert len(wire.REASONS) == len(set(wire.REASONS)) == 19


# -- polls mixing schemas ----------------------------------------------------------------


def test_a_poll_mixing_schemas_and_encodings_decodes_like_its_records():
    """FD and classic records, binary and JSON, bad and unsorted ones, on both sides of
    the copy-and-check chunk edges."""
    chunk = wire._CHECK_RECORDS
    records = []
    for i in range(2 * chunk + 7):
        fd = i % 3 != 0
        frames = fd_frames(5 + i % 9, seed=200 + i) if fd else make_frames(
            ts=1_700_000_000 + np.arange(4.0), can_id=[1, 2, 3, 4], data=np.full((4, 8), i)
        )  # fmt: skip
        if i in (chunk - 1, chunk, 2 * chunk + 2):
            frames["flags"][1] = FLAG_BRS  # BRS without FD (classic: an unknown bit)
        elif i in (chunk + 1, 2 * chunk + 1):
            frames = frames[::-1].copy()  # needs sorting
        encoding = "json" if i % 5 == 0 else "binary"
        records.append(wire.encode_record(f"veh-{i % 4}", "jeep", frames, encoding))
    batch = wire.decode_records(records, **LIMITS)
    assert_same_results(batch, one_by_one(records))
    assert sum(isinstance(b, DecodeError) for b in batch) == 3
    kinds = {b.frames.dtype for b in batch if not isinstance(b, DecodeError)}
    assert kinds == {FRAME_DTYPE, FD_FRAME_DTYPE}


def test_the_fd_kernel_masks_every_length_and_agrees_per_record():
    from detector.transport.frame_checks import fd_frame_faults, fd_frame_faults_each

    frames = np.zeros(2 * 16 + 9, FD_FRAME_DTYPE)
    frames["ts"] = 1_700_000_000 + np.arange(len(frames))
    frames["dlc"][:16] = np.arange(16)
    frames["flags"][:16] = FLAG_FD
    frames["dlc"][16:25] = np.arange(9)  # classic
    frames["dlc"][25:] = np.arange(16)
    frames["flags"][25:] = FLAG_FD | FLAG_ESI
    frames["data"][:] = 0xA5
    lengths = fd_lengths(frames)
    other = frames.copy()
    limits = (1e9, NOW, np.uint32(wire.EXTENDED_FLAG), wire.ID_MASK_STANDARD)
    assert fd_frame_faults(frames, 0, len(frames), *limits) == (-1, 0, -1, -1, -1, True)
    each = fd_frame_faults_each(other, np.array([0, 10, 30, len(frames)]), *limits)
    assert (each[:, [0, 2, 3, 4]] == -1).all() and (each[:, 5] == 1).all()
    for f in (frames, other):
        cols = np.arange(64)
        assert (f["data"][cols >= lengths[:, None]] == 0).all()
        assert (f["data"][cols < lengths[:, None]] == 0xA5).all()


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from([b"1", b"2", b"3"]),
            st.sampled_from([wire.CONTENT_TYPE_BINARY, wire.CONTENT_TYPE_JSON]),
            st.integers(0, 3),
            st.binary(min_size=0, max_size=80 * 3),
            st.lists(
                st.tuples(st.integers(0, 20), st.integers(0, 255), st.integers(0, 66)),
                max_size=4,
            ),
        ),
        max_size=6,
    )
)
def test_arbitrary_schema_2_records_only_give_verdicts_a_poll_agrees_with(specs):
    records = []
    for schema, ctype, version, body, rows in specs:
        if ctype == wire.CONTENT_TYPE_BINARY:
            value = struct.pack("<4sHHIHH", b"CWF1", version, 16, len(body) // 80, 80, 0) + body
        else:
            value = json.dumps(
                {"frames": [[1_700_000_000.5, 0x55, d, "ab" * n, f] for d, f, n in rows]}
            ).encode()
        records.append((b"veh-1", value, headers(ctype, schema)))
    assert_same_results(wire.decode_records(records, **LIMITS), one_by_one(records))
