"""The telemetry wire format: round trips, every dead-letter reason, fuzzing."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from detector.core.errors import DecodeError
from detector.core.schema import FLAG_RTR, FRAME_DTYPE, make_frames
from detector.transport import wire

NOW = 1_700_000_100.0
LIMITS = dict(known_brands={"jeep", "opel"}, now=NOW, max_future_s=300.0, min_ts=1e9)

# The worked example in docs/wire-format.md; keep the two in sync.
DOC_HEX = (
    "43574631010010000200000018000000"
    "00001040fc54d941c4000000080000000102030405060708"
    "00002040fc54d94100f1fe9803000000aabbcc0000000000"
)
DOC_JSON = (
    b'{"vehicle":"veh-7f3a9c","brand":"jeep","bus":"can0","frames":'
    b'[[1700000000.25,196,8,"0102030405060708"],[1700000000.5,2566844672,3,"aabbcc"]]}'
)


def doc_frames() -> np.ndarray:
    data = np.array([[1, 2, 3, 4, 5, 6, 7, 8], [0xAA, 0xBB, 0xCC, 0, 0, 0, 0, 0]])
    return make_frames(
        ts=[1700000000.25, 1700000000.5],
        can_id=[0x0C4, 0x18FEF100],
        data=data,
        dlc=[8, 3],
        extended=[False, True],
    )


def sample_frames(n: int = 50, seed: int = 1) -> np.ndarray:
    rng = np.random.default_rng(seed)
    dlc = rng.integers(0, 9, n)
    data = rng.integers(0, 256, (n, 8)).astype(np.uint8)
    data[np.arange(8) >= dlc[:, None]] = 0  # canonical: nothing past dlc
    ext = rng.random(n) < 0.3
    ids = np.where(ext, rng.integers(0, 1 << 29, n), rng.integers(0, 1 << 11, n))
    frames = make_frames(
        ts=1_700_000_000 + np.sort(rng.random(n)) * 10,
        can_id=ids,
        data=data,
        dlc=dlc,
        extended=ext,
        label=rng.integers(0, 3, n),
    )
    frames["flags"][::7] = FLAG_RTR
    return frames


def decode(key=b"veh-1", value=b"", headers=None, **kw):
    limits = {**LIMITS, **kw}
    return wire.decode_record(key, value, headers, **limits)


def binary_headers(brand: str = "jeep") -> list[tuple[str, bytes]]:
    return wire.headers_for(brand, wire.CONTENT_TYPE_BINARY)


def json_headers(brand: str = "jeep") -> list[tuple[str, bytes]]:
    return wire.headers_for(brand, wire.CONTENT_TYPE_JSON)


def expected(frames: np.ndarray) -> np.ndarray:
    out = frames.copy()
    out["label"] = 0
    return out


# -- encoding and round trips ---------------------------------------------------


def test_worked_example_bytes_match_the_doc():
    assert wire.encode_binary(doc_frames()).hex() == DOC_HEX
    assert wire.encode_json("veh-7f3a9c", "jeep", doc_frames()) == DOC_JSON
    magic, version, hlen, count, rsize, reserved = struct.unpack_from(
        "<4sHHIHH", bytes.fromhex(DOC_HEX)
    )
    assert (magic, version, hlen, count, rsize, reserved) == (b"CWF1", 1, 16, 2, 24, 0)


def test_headers_for():
    assert wire.headers_for("jeep", wire.CONTENT_TYPE_JSON) == [
        ("brand", b"jeep"),
        ("content-type", b"application/json"),
        ("schema", b"1"),
    ]


@pytest.mark.parametrize("encoding", ["binary", "json"])
def test_round_trip(encoding):
    frames = sample_frames()
    key, value, headers = wire.encode_record("veh-1", "jeep", frames, encoding)
    batch = decode(key, value, headers)
    assert (batch.vehicle, batch.brand) == ("veh-1", "jeep")
    assert batch.frames.dtype == FRAME_DTYPE
    np.testing.assert_array_equal(batch.frames, expected(frames))
    assert batch.frames.flags.writeable


def test_labels_never_leave_the_process():
    frames = sample_frames()
    assert frames["label"].any()
    body = np.frombuffer(wire.encode_binary(frames), FRAME_DTYPE, offset=16)
    assert not body["label"].any() and not body["reserved"].any()
    assert frames["label"].any(), "encoding must not modify the caller's array"


def test_decode_sorts_by_time_and_zeroes_bytes_past_dlc():
    frames = sample_frames(5)[::-1].copy()
    frames["data"][:, 7] = 0xEE
    frames["dlc"] = 2
    batch = decode(value=wire.encode_binary(frames), headers=binary_headers())
    assert np.all(np.diff(batch.frames["ts"]) >= 0)
    assert not batch.frames["data"][:, 2:].any()


def test_content_type_parameters_and_json_without_optional_fields():
    value = json.dumps({"frames": [[1_700_000_000.5, 0x123, 2, "ABcd"]]}).encode()
    headers = [("content-type", b"application/json; charset=utf-8"), ("brand", b"opel")]
    batch = decode(value=value, headers=[*headers, ("schema", b"1"), ("trace", b"x")])
    assert batch.frames["data"][0, :2].tolist() == [0xAB, 0xCD]


def test_unknown_brand_accepted_without_a_fleet_map():
    value = wire.encode_binary(sample_frames(3))
    assert decode(value=value, headers=binary_headers("skoda"), known_brands=None).brand == "skoda"


# -- every dead-letter reason ---------------------------------------------------


def binary_with(count=1, **fields) -> bytes:
    frames = sample_frames(count)
    frames["flags"] = 0
    for name, val in fields.items():
        frames[name][0] = val
    return wire.encode_binary(frames)


def raw_binary(frames: np.ndarray) -> bytes:
    """Bytes as a careless producer would send them (labels included)."""
    return struct.pack("<4sHHIHH", b"CWF1", 1, 16, len(frames), 24, 0) + frames.tobytes()


def header_bytes(**fields) -> bytes:
    values = dict(magic=b"CWF1", version=1, hlen=16, count=1, rsize=24, reserved=0) | fields
    return struct.pack("<4sHHIHH", *values.values())


GOOD = binary_with()
BODY = GOOD[16:]
JH = json_headers()
FRAME = [1_700_000_000.5, 0x123, 2, "abcd"]


def jdoc(frames=None, **extra) -> bytes:
    return json.dumps(
        {"vehicle": "veh-1", "brand": "jeep", "frames": frames or [FRAME]} | extra
    ).encode()


CASES = [
    ("missing_key", dict(key=None, value=GOOD, headers=binary_headers())),
    ("bad_key", dict(key=b"", value=GOOD, headers=binary_headers())),
    ("bad_key", dict(key=b"\xff\xfe", value=GOOD, headers=binary_headers())),
    ("bad_key", dict(key=b"x" * 129, value=GOOD, headers=binary_headers())),
    ("bad_key", dict(key=b"veh\n1", value=GOOD, headers=binary_headers())),
    ("missing_header", dict(value=GOOD, headers=binary_headers()[1:])),
    ("missing_header", dict(value=GOOD, headers=None)),
    ("bad_header", dict(value=GOOD, headers=[*binary_headers(), ("brand", b"jeep")])),
    ("bad_header", dict(value=GOOD, headers=[("brand", None), *binary_headers()[1:]])),
    ("bad_header", dict(value=GOOD, headers=[("brand", b"\xc3\xa9"), *binary_headers()[1:]])),
    ("bad_header", dict(value=GOOD, headers=[("brand", b"Jeep"), *binary_headers()[1:]])),
    ("bad_header", dict(value=GOOD, headers=[b"not-a-pair"])),
    (
        "unknown_content_type",
        dict(
            value=GOOD,
            headers=[("brand", b"jeep"), ("content-type", b"text/csv"), ("schema", b"1")],
        ),
    ),
    ("unknown_schema", dict(value=GOOD, headers=[*binary_headers()[:2], ("schema", b"2")])),
    ("unknown_schema", dict(value=header_bytes(version=2) + BODY, headers=binary_headers())),
    ("unknown_brand", dict(value=GOOD, headers=binary_headers("ferrari"))),
    ("too_large", dict(value=b"\0" * (wire.MAX_RECORD_BYTES + 1), headers=binary_headers())),
    ("too_large", dict(value=header_bytes(count=wire.MAX_FRAMES + 1), headers=binary_headers())),
    ("too_large", dict(value=jdoc([FRAME] * (wire.MAX_FRAMES + 1)), headers=JH)),
    ("too_large", dict(value=jdoc() + b" " * wire.MAX_RECORD_BYTES, headers=JH)),
    ("truncated", dict(value=GOOD[:10], headers=binary_headers())),
    ("truncated", dict(value=GOOD[:-1], headers=binary_headers())),
    ("truncated", dict(value=header_bytes(count=2) + BODY, headers=binary_headers())),
    ("bad_magic", dict(value=b"CWF2" + GOOD[4:], headers=binary_headers())),
    ("bad_length", dict(value=GOOD + b"\0", headers=binary_headers())),
    ("bad_length", dict(value=header_bytes(hlen=20) + BODY, headers=binary_headers())),
    ("bad_length", dict(value=header_bytes(rsize=16) + BODY, headers=binary_headers())),
    ("bad_length", dict(value=header_bytes(reserved=1) + BODY, headers=binary_headers())),
    ("bad_json", dict(value=b"{not json", headers=JH)),
    ("bad_json", dict(value=b"\xff" + jdoc(), headers=JH)),
    ("bad_json", dict(value=b'{"frames": [[NaN, 1, 1, "00"]]}', headers=JH)),
    ("bad_json", dict(value=b"[" * 200_000 + b"]" * 200_000, headers=JH)),
    ("bad_json", dict(value=b'{"a":' * 100_000 + b"1" + b"}" * 100_000, headers=JH)),
    ("bad_json", dict(value=b'{"frames": [' + b"[" * 100_000, headers=JH)),
    ("bad_json", dict(value=b'{"frames": [[1' + b"0" * 5000 + b', 1, 1, "00"]]}', headers=JH)),
    # a member named twice: json.loads keeps the last, other readers the first (another
    # vehicle past the mismatch check, or frames dropped without a word)
    ("bad_json", dict(value=b'{"vehicle": "veh-9", ' + jdoc()[1:], headers=JH)),
    ("bad_json", dict(value=jdoc()[:-1] + b', "frames": ' + json.dumps([FRAME]).encode() + b"}",
                      headers=JH)),  # fmt: skip
    ("bad_shape", dict(value=b"[1, 2]", headers=JH)),
    ("bad_shape", dict(value=b'{"vehicle": "veh-1"}', headers=JH)),
    ("bad_shape", dict(value=b'{"frames": {}}', headers=JH)),
    ("bad_shape", dict(value=jdoc([[1_700_000_000.5, 0x123, 2]]), headers=JH)),
    ("bad_shape", dict(value=jdoc([["1700000000", 0x123, 2, "abcd"]]), headers=JH)),
    ("bad_shape", dict(value=jdoc([[1_700_000_000.5, True, 2, "abcd"]]), headers=JH)),
    ("bad_shape", dict(value=jdoc([[1_700_000_000.5, 0x123, 2, "abc"]]), headers=JH)),
    ("bad_shape", dict(value=jdoc([[1_700_000_000.5, 0x123, 2, "ab cd"]]), headers=JH)),
    ("bad_shape", dict(value=jdoc([[1_700_000_000.5, 0x123, 8, "00" * 9]]), headers=JH)),
    ("bad_shape", dict(value=jdoc(bus=["can0"]), headers=JH)),
    ("mismatch", dict(value=jdoc(vehicle="veh-2"), headers=JH)),
    ("mismatch", dict(value=jdoc(brand="opel"), headers=JH)),
    ("empty", dict(value=header_bytes(count=0), headers=binary_headers())),
    ("empty", dict(value=b'{"frames": []}', headers=JH)),
    ("empty", dict(value=None, headers=binary_headers())),
    ("bad_dlc", dict(value=binary_with(dlc=9), headers=binary_headers())),
    ("bad_dlc", dict(value=jdoc([[1_700_000_000.5, 0x123, 9, ""]]), headers=JH)),
    ("bad_dlc", dict(value=jdoc([[1_700_000_000.5, 0x123, -1, ""]]), headers=JH)),
    ("bad_id", dict(value=binary_with(can_id=0x800), headers=binary_headers())),
    ("bad_id", dict(value=binary_with(can_id=0x8000_0000 | (1 << 29)), headers=binary_headers())),
    ("bad_id", dict(value=binary_with(can_id=0x4000_0000), headers=binary_headers())),
    ("bad_id", dict(value=jdoc([[1_700_000_000.5, 1 << 32, 2, "abcd"]]), headers=JH)),
    ("bad_flags", dict(value=binary_with(flags=0x80), headers=binary_headers())),
    ("bad_flags", dict(value=raw_binary(sample_frames(3)), headers=binary_headers())),
    ("bad_flags", dict(value=jdoc([[*FRAME, 256]]), headers=JH)),
    ("bad_timestamp", dict(value=binary_with(ts=np.nan), headers=binary_headers())),
    ("bad_timestamp", dict(value=binary_with(ts=np.inf), headers=binary_headers())),
    ("bad_timestamp", dict(value=binary_with(ts=-1.0), headers=binary_headers())),
    ("bad_timestamp", dict(value=binary_with(ts=5.0), headers=binary_headers())),
    ("bad_timestamp", dict(value=binary_with(ts=NOW + 301), headers=binary_headers())),
    ("bad_timestamp", dict(value=b'{"frames": [[1e999, 291, 2, "abcd"]]}', headers=JH)),
    ("bad_timestamp", dict(value=jdoc([[10**400, 0x123, 2, "abcd"]]), headers=JH)),
]


@pytest.mark.parametrize("reason,record", CASES, ids=[f"{r}-{i}" for i, (r, _) in enumerate(CASES)])
def test_every_reason(reason, record):
    assert reason in wire.REASONS
    with pytest.raises(DecodeError) as info:
        decode(**record)
    assert info.value.reason == reason, info.value.detail


def test_every_reason_is_exercised():
    assert {r for r, _ in CASES} == set(wire.REASONS)


# -- nothing but DecodeError, whatever arrives --------------------------------------

header_values = st.one_of(
    st.none(),
    st.binary(max_size=40),
    st.sampled_from([b"jeep", b"application/json", b"application/vnd.canwatch.frames", b"1"]),
)
header_lists = st.one_of(
    st.none(),
    st.lists(
        st.tuples(st.sampled_from(["brand", "content-type", "schema", "x"]), header_values),
        max_size=5,
    ),
    st.lists(st.binary(max_size=4), max_size=2),
)


@settings(max_examples=300, deadline=None)
@given(
    key=st.one_of(st.none(), st.binary(max_size=40)),
    value=st.binary(max_size=400),
    headers=header_lists,
)
def test_arbitrary_records_only_raise_decode_error(key, value, headers):
    try:
        decode(key=key, value=value, headers=headers)
    except DecodeError as exc:
        assert exc.reason in wire.REASONS


@settings(max_examples=300, deadline=None)
@given(body=st.binary(min_size=0, max_size=24 * 6), ctype=st.sampled_from(["binary", "json"]))
def test_valid_headers_with_garbage_bodies(body, ctype):
    if ctype == "binary":
        value, headers = header_bytes(count=len(body) // 24) + body, binary_headers()
    else:
        value, headers = body, json_headers()
    try:
        batch = decode(value=value, headers=headers, known_brands=None, min_ts=-1e300)
    except DecodeError as exc:
        assert exc.reason in wire.REASONS
    else:
        assert batch.frames.dtype == FRAME_DTYPE and len(batch.frames) > 0


json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=20))
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=8), inner, max_size=5)
    ),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(
    frames=st.lists(st.lists(json_values, max_size=6), max_size=5),
    extra=st.dictionaries(st.sampled_from(["vehicle", "brand", "bus"]), json_values),
)
def test_arbitrary_json_documents_only_raise_decode_error(frames, extra):
    value = json.dumps({"frames": frames, **extra}).encode()
    try:
        decode(value=value, headers=json_headers(), min_ts=-1e300)
    except DecodeError as exc:
        assert exc.reason in wire.REASONS


def test_huge_json_within_the_size_limit_is_parsed_and_rejected_by_its_content():
    # ~3.9 MB, 100 000 frames, the last one bad: the whole document is decoded once.
    rows = [FRAME] * (wire.MAX_FRAMES - 1) + [[1_700_000_000.5, 0x123, 9, "abcd"]]
    value = jdoc(rows)
    assert 3_000_000 < len(value) <= wire.MAX_RECORD_BYTES
    with pytest.raises(DecodeError) as info:
        decode(value=value, headers=JH)
    assert info.value.reason == "bad_dlc" and "frame 99999" in info.value.detail


# -- dead letters are always producible ------------------------------------------------


def test_dead_letter_copy_keeps_the_original_when_it_can():
    hs = [("brand", b"jeep"), ("trace", b"abc")]
    assert wire.dead_letter_copy(b"veh-1", b"v", hs) == (b"veh-1", b"v", hs, "")
    assert wire.dead_letter_copy(None, b"", None) == (None, b"", [], "")
    assert wire.dead_letter_copy(b"k", None, []) == (b"k", None, [], "")
    at_limit = b"x" * (wire.DLQ_MAX_BYTES - 1)
    assert wire.dead_letter_copy(b"k", at_limit, [])[1] is at_limit


def test_dead_letter_copy_replaces_the_nulls_kafka_python_cannot_send():
    # Java/librdkafka producers may send null header values and records with
    # neither key nor value; kafka-python's send() raises on both.
    key, value, hs, note = wire.dead_letter_copy(None, None, [("trace", None), ("brand", b"x")])
    assert (key, value, hs) == (None, b"", [("trace", b""), ("brand", b"x")])
    assert "null header values" in note and "null value" in note


def test_dead_letter_copy_cuts_what_the_producer_would_refuse():
    from detector.transport.kafka_io import MAX_REQUEST_BYTES

    value = bytes(range(256)) * (wire.DLQ_MAX_BYTES // 256 + 1)
    hs = [("h" * 1000 + str(i), b"v" * 5000) for i in range(100)]
    key, out_value, out_hs, note = wire.dead_letter_copy(b"k" * 5000, value, hs)
    assert key == b"k" * wire.DLQ_MAX_KEY_BYTES
    assert out_value == value[: wire.MAX_RECORD_BYTES]
    assert len(out_hs) == wire.DLQ_MAX_HEADERS
    assert out_hs[0] == (hs[0][0][: wire.DLQ_MAX_HEADER_NAME_CHARS], b"v" * 1024)
    assert note.startswith("cut from key 5000 B, value ")
    # Worst case after the cut, plus the service's error headers (< 1 KB), fits one request.
    worst = (
        wire.DLQ_MAX_KEY_BYTES
        + wire.MAX_RECORD_BYTES
        + wire.DLQ_MAX_HEADERS
        * (4 * wire.DLQ_MAX_HEADER_NAME_CHARS + wire.DLQ_MAX_HEADER_VALUE_BYTES)
    )
    assert max(worst, wire.DLQ_MAX_BYTES) + 64 * 1024 < MAX_REQUEST_BYTES


def test_many_empty_headers_cannot_make_a_dead_letter_too_large_to_produce():
    from kafka.record.default_records import DefaultRecordBatchBuilder

    from detector.transport.kafka_io import MAX_REQUEST_BYTES

    # 400,000 one-byte header names: 0.4 MB of names, 1.2 MB on the wire with their
    # length varints, beside a record of the largest value decoding accepts
    hs = [("a", b"")] * 400_000
    key, value, out_hs, note = wire.dead_letter_copy(b"k", b"x" * wire.MAX_RECORD_BYTES, hs)
    assert note.startswith("cut from") and len(out_hs) == wire.DLQ_MAX_HEADERS
    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, out_hs)
    assert size + 64 * 1024 < MAX_REQUEST_BYTES


# -- a whole poll at once ------------------------------------------------------------


def one_by_one(records: list, decode=decode) -> list:
    """Each record through ``decode`` (a module's ``decode_record`` with its limits)."""
    out = []
    for key, value, headers in records:
        try:
            out.append(decode(key=key, value=value, headers=headers))
        except DecodeError as exc:
            out.append(exc)
    return out


def assert_same_results(batch: list, single: list) -> None:
    assert len(batch) == len(single)
    for b, s in zip(batch, single, strict=True):
        assert type(b) is type(s)
        if isinstance(s, DecodeError):
            assert (b.reason, b.detail) == (s.reason, s.detail)
        else:
            assert (b.vehicle, b.brand, b.newest, b.oldest) == (s.vehicle, s.brand, s.newest, s.oldest)
            assert b.frames.dtype == s.frames.dtype
            assert b.frames.tobytes() == s.frames.tobytes()


def test_a_poll_decodes_like_its_records_one_by_one():
    """Every reason, valid binary and JSON records, and records whose frames need sorting."""
    unsorted = sample_frames(30, seed=4)[::-1].copy()
    records = [(r.get("key", b"veh-1"), r.get("value", b""), r.get("headers")) for _, r in CASES]
    for i, frames in enumerate([sample_frames(40, seed=i) for i in range(5)] + [unsorted]):
        records.append((f"veh-{i}".encode(), wire.encode_binary(frames), binary_headers()))
        body = wire.encode_json(f"veh-{i}", "jeep", frames)
        records.append((f"veh-{i}".encode(), body, json_headers()))
    records = records * 2  # each key and header list twice: the second from the memo
    order = np.random.default_rng(3).permutation(len(records))
    records = [records[i] for i in order]
    batch = wire.decode_records(records, **LIMITS)
    assert_same_results(batch, one_by_one(records))
    assert sum(isinstance(b, wire.DecodedBatch) for b in batch) == 24


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.one_of(st.none(), st.binary(max_size=12)),
            st.one_of(
                st.binary(max_size=24 * 4),
                st.tuples(st.integers(0, 4), st.binary(max_size=24 * 4)).map(
                    lambda nb: header_bytes(count=nb[0]) + nb[1]
                ),
            ),
            header_lists,
        ),
        max_size=8,
    )
)
def test_arbitrary_polls_decode_like_their_records(records):
    batch = wire.decode_records(records, **LIMITS)
    assert_same_results(batch, one_by_one(records))


def test_the_clean_record_pass_gives_the_verdicts_of_the_full_checks():
    """``frame_faults_each`` first runs a cheaper pass that only says whether a record
    is clean; at every edge of every check it must agree with ``frame_faults``."""
    from detector.transport.frame_checks import frame_faults, frame_faults_each

    lo_ts, hi_ts = LIMITS["min_ts"], NOW + LIMITS["max_future_s"]
    edits = {
        "dlc": [(8, True), (9, False), (15, False)],
        "std id": [(0x7FF, True), (0x800, False)],
        "ext id": [(0x9FFF_FFFF, True), (0xA000_0000, False), (0xC000_0000, False)],
        "flags": [(FLAG_RTR, True), (0x80, False)],
        "label": [(1, False)],
        "reserved": [(7, False)],
        "ts": [(lo_ts, True), (hi_ts, True), (lo_ts - 1e-3, False), (hi_ts + 1e-3, False),
               (np.nan, False), (np.inf, False), (-np.inf, False)],  # fmt: skip
        "order": [(0, True)],
        "none": [(0, True)],
    }
    rng = np.random.default_rng(11)
    parts, want_clean = [], []
    for kind, cases in edits.items():
        for value, clean in cases:
            for at in (0, 5, 19):  # first, middle and last frame of a record
                f = sample_frames(20, seed=len(parts))
                f["label"] = 0
                f["ts"] = 1_600_000_000 + np.arange(20)
                f["data"][:, :] = rng.integers(0, 256, (20, 8))  # bytes past dlc to mask
                field = {"dlc": "dlc", "flags": "flags", "label": "label", "reserved": "reserved"}
                if kind in field:
                    f[field[kind]][at] = value
                elif kind in ("std id", "ext id"):
                    f["can_id"][at] = value
                elif kind == "ts":
                    f["ts"][at] = value
                elif kind == "order":
                    f["ts"][[at, (at + 1) % 20]] = f["ts"][[(at + 1) % 20, at]]
                parts.append(f)
                want_clean.append(clean)
    frames = np.concatenate(parts)
    one_by_one = frames.copy()
    bounds = np.arange(0, len(frames) + 1, 20)
    limits = (lo_ts, hi_ts, wire.KNOWN_FLAGS, np.uint32(wire.EXTENDED_FLAG), wire.ID_MASK_STANDARD)
    each = frame_faults_each(frames, bounds, *limits)
    for k in range(len(parts)):
        bad_dlc, n_bad_dlc, bad_id, bad_flags, bad_ts, ordered = frame_faults(
            one_by_one, int(bounds[k]), int(bounds[k + 1]), *limits
        )
        assert tuple(each[k]) == (bad_dlc, n_bad_dlc, bad_id, bad_flags, bad_ts, ordered), k
        clean = max(bad_dlc, bad_id, bad_flags, bad_ts) < 0
        assert clean == want_clean[k], k
    # the same bytes masked past dlc (compared as bytes: NaN ts are not equal to themselves)
    assert frames.tobytes() == one_by_one.tobytes()
    assert not (frames["data"][frames["dlc"] == 3][:, 3:]).any()


def test_a_poll_longer_than_a_check_chunk_decodes_like_its_records():
    """Records are copied and checked in chunks: bad and unsorted records on both
    sides of chunk edges still get their own verdicts."""
    chunk = wire._CHECK_RECORDS
    records = []
    for i in range(2 * chunk + 5):
        frames = sample_frames(10 + i % 7, seed=100 + i)
        if i in (chunk - 1, chunk, 2 * chunk):
            frames["dlc"][i % 5] = 12  # bad dlc
        elif i in (chunk + 1, 2 * chunk + 1):
            frames = frames[::-1].copy()  # needs sorting
        records.append((f"veh-{i % 3}".encode(), wire.encode_binary(frames), binary_headers()))
    batch = wire.decode_records(records, **LIMITS)
    assert_same_results(batch, one_by_one(records))
    assert sum(isinstance(b, DecodeError) for b in batch) == 3
