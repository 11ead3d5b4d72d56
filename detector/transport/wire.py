"""The telemetry wire format (topic ``can.telemetry``); docs/wire-format.md is the spec.

One Kafka record = one batch of frames from one vehicle. Key = pseudonymous
vehicle id (UTF-8). Headers: ``brand``, ``content-type``, ``schema`` ("1" classic
CAN, "2" CAN FD). The key, headers and value size are the record's envelope,
checked in ``envelope``.

Binary (``application/vnd.canwatch.frames``): a 16-byte little-endian header
``magic "CWF1" | u16 version | u16 header_len=16 | u32 frame_count |
u16 record_size | u16 reserved=0`` followed by ``frame_count`` records: version 1,
24-byte records laid out exactly as ``detector.core.schema.FRAME_DTYPE``; version 2,
80-byte records laid out exactly as ``FD_FRAME_DTYPE`` (dlc = data length code
0-15). Bytes 14-15 of a record are zero on the wire. The version equals the
``schema`` header.

JSON (``application/json``): ``{"vehicle", "brand", "bus", "frames": [[ts, can_id,
dlc, "hex"(, flags)], ...]}``; under schema 2 ``dlc`` is the data length code and
``hex`` holds exactly the bytes it stands for.

``decode_record`` turns a record into a ``DecodedBatch`` or raises
``DecodeError(reason, detail)`` with ``reason`` one of ``REASONS`` (a bounded
metric label). Decoded frames are a FRAME_DTYPE array (schema 1) or an
FD_FRAME_DTYPE array (schema 2), sorted by ``ts``, data bytes beyond each frame's
length zeroed. ``encode_record`` writes schema 1 for FRAME_DTYPE arrays and
schema 2 for FD_FRAME_DTYPE arrays.
"""

from __future__ import annotations

import json
import math
import re
import struct
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import numpy as np

from detector.core.brands import validate_slug
from detector.core.errors import DecodeError
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
    ID_MASK_STANDARD,
)

# The envelope's names are the format's too: its users import them from here.
from detector.transport.envelope import (
    BAD_HEADER,
    BAD_KEY,
    CONTENT_TYPE_BINARY,
    CONTENT_TYPE_JSON,
    EMPTY,
    MAX_KEY_BYTES,
    MAX_RECORD_BYTES,
    MISSING_HEADER,
    MISSING_KEY,
    SCHEMA_CLASSIC,
    SCHEMA_FD,
    SCHEMAS,
    TOO_LARGE,
    UNKNOWN_BRAND,
    UNKNOWN_CONTENT_TYPE,
    UNKNOWN_SCHEMA,
    headers_for,
    read_envelope,
)
from detector.transport.frame_checks import (
    fd_frame_faults,
    fd_frame_faults_each,
    frame_faults,
    frame_faults_each,
)

MAGIC = b"CWF1"
HEADER = struct.Struct("<4sHHIHH")
HEADER_LEN = HEADER.size
RECORD_SIZE = FRAME_DTYPE.itemsize  # schema 1
FD_RECORD_SIZE = FD_FRAME_DTYPE.itemsize  # schema 2
_CHECK_RECORDS = 32  # records copied before their checks run: ~360 kB, in L2
assert HEADER_LEN == 16 and RECORD_SIZE == 24 and FD_RECORD_SIZE == 80

#: Limits (with the envelope's MAX_RECORD_BYTES, MAX_KEY_BYTES and
#: MAX_HEADER_VALUE_BYTES). A record above them goes to the DLQ as ``too_large``;
#: producers split longer batches into several records.
MAX_FRAMES = 100_000
MAX_FD_FRAMES = 50_000  # schema 2: 80-byte records, a full binary record stays < 4 MiB
MAX_BUS_CHARS = 32
KNOWN_FLAGS = FLAG_RTR | FLAG_ERROR
KNOWN_FD_FLAGS = FLAG_RTR | FLAG_ERROR | FLAG_FD | FLAG_BRS | FLAG_ESI

#: schema -> (frame dtype, binary record size, frames per record at most)
LAYOUTS: dict[int, tuple[np.dtype, int, int]] = {
    SCHEMA_CLASSIC: (FRAME_DTYPE, RECORD_SIZE, MAX_FRAMES),
    SCHEMA_FD: (FD_FRAME_DTYPE, FD_RECORD_SIZE, MAX_FD_FRAMES),
}
assert set(LAYOUTS) == set(SCHEMAS)

#: Dead letters carry the original key, value and headers unchanged while
#: together they fit in DLQ_MAX_BYTES (kept below the producer's 5 MiB
#: ``kafka_io.MAX_REQUEST_BYTES`` with room for the error headers). A bigger
#: record (the broker may accept tens of MB) is cut to the sizes below, so one
#: huge record can never make the DLQ write, and with it the consumer, fail.
DLQ_MAX_BYTES = MAX_RECORD_BYTES + 512 * 1024
DLQ_MAX_KEY_BYTES = 1024
DLQ_MAX_HEADERS = 64
DLQ_MAX_HEADER_NAME_CHARS = 256
DLQ_MAX_HEADER_VALUE_BYTES = 1024

# Dead-letter reasons: with the envelope's, the complete, bounded set of
# DecodeError.reason values (REASONS).
TRUNCATED = "truncated"  # fewer bytes than the binary header announces
BAD_MAGIC = "bad_magic"  # binary value does not start with b"CWF1"
BAD_LENGTH = "bad_length"  # header_len/record_size wrong, reserved != 0, trailing bytes
BAD_JSON = "bad_json"  # not UTF-8 JSON, too deeply nested, NaN/Infinity literals
BAD_SHAPE = "bad_shape"  # JSON not the documented object/array shape or types
MISMATCH = "mismatch"  # JSON vehicle/brand differ from the record key/brand header
BAD_DLC = "bad_dlc"  # dlc > 8 (schema 2: > 15, > 8 without FD; JSON data not its length)
BAD_ID = "bad_id"  # > 29 bits with the extended flag, > 11 bits without
BAD_FLAGS = "bad_flags"  # unknown flag bits, wire bytes 14-15 not zero; BRS/ESI without FD, RTR with FD
BAD_TIMESTAMP = "bad_timestamp"  # NaN/inf, below min_ts, beyond now + max_future_s

REASONS: tuple[str, ...] = (
    MISSING_KEY,
    BAD_KEY,
    MISSING_HEADER,
    BAD_HEADER,
    UNKNOWN_CONTENT_TYPE,
    UNKNOWN_SCHEMA,
    UNKNOWN_BRAND,
    TOO_LARGE,
    TRUNCATED,
    BAD_MAGIC,
    BAD_LENGTH,
    BAD_JSON,
    BAD_SHAPE,
    MISMATCH,
    EMPTY,
    BAD_DLC,
    BAD_ID,
    BAD_FLAGS,
    BAD_TIMESTAMP,
)

_HEX = re.compile(r"[0-9a-fA-F]{0,16}")
_FD_HEX = re.compile(r"[0-9a-fA-F]{0,128}")


class DecodedBatch(NamedTuple):  # a tuple: made for every record of every poll
    vehicle: str
    brand: str
    frames: np.ndarray  # FRAME_DTYPE (schema 1) or FD_FRAME_DTYPE (2), sorted by ts, label 0, writable copy
    newest: float  # ts of the last frame
    oldest: float  # ts of the first frame

    @classmethod
    def of(cls, vehicle: str, brand: str, frames: np.ndarray) -> DecodedBatch:
        """The batch of time-sorted ``frames``."""
        ts = frames["ts"]
        return cls(vehicle, brand, frames, float(ts[-1]), float(ts[0]))


# -- encoding -------------------------------------------------------------------


def _check_frames(frames: np.ndarray) -> tuple[np.ndarray, int]:
    """``frames`` as an array, and its schema; TypeError/ValueError if no record holds it."""
    frames = np.asarray(frames)
    if frames.dtype == FRAME_DTYPE:  # (one dtype comparison, ~1 us: classic first)
        schema = SCHEMA_CLASSIC
    elif frames.dtype == FD_FRAME_DTYPE:
        schema = SCHEMA_FD
    else:
        schema = 0
    if not schema or frames.ndim != 1:
        raise TypeError(
            "frames must be a 1-d FRAME_DTYPE or FD_FRAME_DTYPE array, "
            f"got {frames.dtype} {frames.shape}"
        )
    limit = LAYOUTS[schema][2]
    if len(frames) > limit:
        raise ValueError(f"at most {limit} frames per record, got {len(frames)}; split it")
    return frames, schema


def _binary(frames: np.ndarray, schema: int) -> bytes:
    body = np.ascontiguousarray(frames).copy()
    body["label"] = 0
    body["reserved"] = 0
    header = HEADER.pack(MAGIC, schema, HEADER_LEN, len(body), LAYOUTS[schema][1], 0)
    return header + body.tobytes()


def encode_binary(frames: np.ndarray) -> bytes:
    """The binary value for ``frames`` (version 1 for FRAME_DTYPE, 2 for FD_FRAME_DTYPE);
    labels (ground truth) never leave the process."""
    return _binary(*_check_frames(frames))


def _json(vehicle: str, brand: str, frames: np.ndarray, schema: int, bus: str) -> bytes:
    validate_slug(brand)
    ts = frames["ts"].tolist()
    ids = frames["can_id"].tolist()
    dlcs = frames["dlc"].tolist()
    flags = frames["flags"].tolist()
    cuts = (2 * fd_lengths(frames).astype(np.int64)).tolist()
    step = 2 * frames.dtype["data"].shape[0]
    raw = np.ascontiguousarray(frames["data"]).tobytes().hex()
    hexes = [raw[k : k + step] for k in range(0, len(raw), step)]
    rows: list[list[Any]] = []
    for t, i, d, f, h, c in zip(ts, ids, dlcs, flags, hexes, cuts, strict=True):
        row: list[Any] = [t, i, d, h[:c]]
        if f:
            row.append(f)
        rows.append(row)
    doc = {"vehicle": vehicle, "brand": brand, "bus": bus, "frames": rows}
    return json.dumps(doc, separators=(",", ":"), allow_nan=False).encode("utf-8")


def encode_json(vehicle: str, brand: str, frames: np.ndarray, bus: str = "can0") -> bytes:
    """The JSON value; data is hex of the frame's bytes (``fd_lengths``), flags added
    when non-zero. For an FD_FRAME_DTYPE array (schema 2) dlc is the data length code."""
    frames, schema = _check_frames(frames)
    return _json(vehicle, brand, frames, schema, bus)


def encode_record(
    vehicle: str, brand: str, frames: np.ndarray, encoding: str = "binary", bus: str = "can0"
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """(key, value, headers) for one batch; ``encoding`` is "binary" or "json".

    A FRAME_DTYPE array is written as schema 1 (as before schema 2 existed), an
    FD_FRAME_DTYPE array as schema 2."""
    frames, schema = _check_frames(frames)
    if encoding == "binary":
        value, ctype = _binary(frames, schema), CONTENT_TYPE_BINARY
    elif encoding == "json":
        value, ctype = _json(vehicle, brand, frames, schema, bus), CONTENT_TYPE_JSON
    else:
        raise ValueError(f"encoding must be 'binary' or 'json', got {encoding!r}")
    key = vehicle.encode("utf-8")
    if not 0 < len(key) <= MAX_KEY_BYTES:
        raise ValueError(f"vehicle id must be 1..{MAX_KEY_BYTES} UTF-8 bytes, got {vehicle!r}")
    return key, value, headers_for(brand, ctype, schema)


# -- dead letters ----------------------------------------------------------------


_VARINTS = 10  # a record header's name and value lengths: two varints of 5 bytes at most


def _nbytes(b: bytes | None) -> int:
    return 0 if b is None else len(b)


def dead_letter_copy(
    key: bytes | None, value: bytes | None, headers: Iterable[tuple[str, bytes | None]] | None
) -> tuple[bytes | None, bytes | None, list[tuple[str, bytes]], str]:
    """The (key, value, headers) to write to the DLQ for a rejected record, and a note.

    Unchanged where Kafka clients allow it; the note ("" if nothing changed) says
    what was altered so that the record can be produced at all: null header
    values become b"" (kafka-python sends only bytes), a record with neither
    key nor value gets value b"", and a record above ``DLQ_MAX_BYTES`` has its
    key, value and headers cut to the ``DLQ_MAX_*`` sizes.
    """
    notes = []
    hs = [(str(name), raw) for name, raw in headers or ()]
    if any(raw is None for _, raw in hs):
        notes.append("null header values sent as empty")
        hs = [(name, b"" if raw is None else raw) for name, raw in hs]
    if key is None and value is None:
        notes.append("null value sent as empty")
        value = b""
    # each header costs two length varints on the wire: counted at their widest, so
    # many empty headers cannot slip a record past the producer's request limit
    header_bytes = sum(len(name.encode("utf-8")) + len(raw) + _VARINTS for name, raw in hs)
    size = _nbytes(key) + _nbytes(value) + header_bytes
    if size > DLQ_MAX_BYTES:
        notes.append(
            f"cut from key {_nbytes(key)} B, value {_nbytes(value)} B, "
            f"{len(hs)} headers {header_bytes} B"
        )
        key = None if key is None else bytes(key[:DLQ_MAX_KEY_BYTES])
        value = None if value is None else bytes(value[:MAX_RECORD_BYTES])
        hs = [
            (name[:DLQ_MAX_HEADER_NAME_CHARS], bytes(raw[:DLQ_MAX_HEADER_VALUE_BYTES]))
            for name, raw in hs[:DLQ_MAX_HEADERS]
        ]
    return key, value, hs, "; ".join(notes)


# -- decoding -------------------------------------------------------------------


def _raise_fault(
    frames: np.ndarray,
    bad_dlc: int,
    n_bad_dlc: int,
    bad_id: int,
    bad_flags: int,
    bad_ts: int,
    *,
    min_ts: float,
    max_future_s: float,
) -> None:
    """The DecodeError for the first failed check (frame indices from ``frame_faults``
    or ``fd_frame_faults``)."""
    fd = bad_dlc >= 0 or bad_flags >= 0  # (a dtype comparison costs ~1 us: only on a fault)
    fd = fd and frames.dtype == FD_FRAME_DTYPE
    if bad_dlc >= 0:
        dlc = int(frames["dlc"][bad_dlc])
        if not fd:
            what = f"dlc {dlc} > 8"
        elif dlc > 15:
            what = f"dlc {dlc} > 15"
        else:
            what = f"dlc {dlc} > 8 on a classic frame (FD flag clear)"
        raise DecodeError(BAD_DLC, f"frame {bad_dlc}: {what} ({n_bad_dlc} of {len(frames)})")
    if bad_id >= 0:
        raise DecodeError(
            BAD_ID, f"frame {bad_id}: can_id 0x{int(frames['can_id'][bad_id]):08X} out of range"
        )
    if bad_flags >= 0:
        what = _fd_flags_fault(frames[bad_flags]) if fd else "unknown flag bits or bytes 14-15 not 0"
        raise DecodeError(BAD_FLAGS, f"frame {bad_flags}: {what}")
    if bad_ts >= 0:
        raise DecodeError(
            BAD_TIMESTAMP,
            f"frame {bad_ts}: ts {float(frames['ts'][bad_ts])!r} outside "
            f"[{min_ts:g}, now+{max_future_s:g}s]",
        )


def _fd_flags_fault(frame: np.void) -> str:
    """What is wrong with the flags of one frame of an FD record."""
    flags = int(frame["flags"])
    if flags & ~KNOWN_FD_FLAGS:
        return f"unknown flag bits 0x{flags & ~KNOWN_FD_FLAGS:02X}"
    if frame["label"] or frame["reserved"]:
        return "bytes 14-15 not 0"
    if flags & FLAG_FD:
        return "RTR on an FD frame (CAN FD has no remote frames)"
    return "BRS or ESI on a classic frame (FD flag clear)"


def _check_data_lengths(frames: np.ndarray, nbytes: np.ndarray) -> None:
    """Schema 2 JSON: each frame's data must be exactly the bytes its dlc stands for
    (a remote frame may give none)."""
    length = fd_lengths(frames)  # dlc is valid by now: 0-8 classic, 0-15 FD
    ok = (nbytes == length) | ((nbytes == 0) & ((frames["flags"] & FLAG_RTR) != 0))
    if ok.all():
        return
    k = int(np.argmin(ok))
    fd = bool(frames["flags"][k] & FLAG_FD)
    detail = (
        f"frame {k}: {int(nbytes[k])} data bytes, but dlc {int(frames['dlc'][k])} of "
        f"{'an FD' if fd else 'a classic'} frame means {int(length[k])}"
    )
    if fd and int(nbytes[k]) not in FD_LENGTHS:
        detail += " (an FD frame holds 0-8, 12, 16, 20, 24, 32, 48 or 64 bytes)"
    raise DecodeError(BAD_DLC, detail)


def validate_frames(
    frames: np.ndarray,
    *,
    now: float,
    max_future_s: float,
    min_ts: float,
    nbytes: np.ndarray | None = None,
) -> np.ndarray:
    """Vectorized checks shared by both encodings; returns frames sorted by ts.

    ``frames``: FRAME_DTYPE (schema 1) or FD_FRAME_DTYPE (schema 2), writable and
    owned by the caller (it is normalized in place). ``nbytes``: the data bytes
    each frame had in JSON, checked against its dlc (schema 2).
    """
    n = len(frames)
    if n == 0:
        raise DecodeError(EMPTY, "record holds no frames")
    if frames.itemsize == FD_RECORD_SIZE:  # (fd_frame_faults checks the dtype itself)
        faults = fd_frame_faults(
            frames, 0, n, float(min_ts), float(now + max_future_s), np.uint32(EXTENDED_FLAG),
            ID_MASK_STANDARD,
        )  # fmt: skip
    else:
        faults = frame_faults(
            frames, 0, n, float(min_ts), float(now + max_future_s), KNOWN_FLAGS,
            np.uint32(EXTENDED_FLAG), ID_MASK_STANDARD,
        )  # fmt: skip
    _raise_fault(frames, *faults[:5], min_ts=min_ts, max_future_s=max_future_s)
    if nbytes is not None:
        _check_data_lengths(frames, nbytes)
    ordered = faults[5]
    if not ordered:
        frames = frames[np.argsort(frames["ts"], kind="stable")]
    return frames


def _binary_count(value: bytes, schema: int = SCHEMA_CLASSIC) -> int:
    """Frames announced by a binary record's header, after checking it and the length
    (its version must be the record's ``schema`` header)."""
    if len(value) < HEADER_LEN:
        raise DecodeError(TRUNCATED, f"{len(value)} bytes, shorter than the 16-byte header")
    magic, version, header_len, count, record_size, reserved = HEADER.unpack_from(value, 0)
    if magic != MAGIC:
        raise DecodeError(BAD_MAGIC, f"magic {magic!r}, expected {MAGIC!r}")
    if version != schema:
        known = "" if version in SCHEMAS else ", not a known version"
        raise DecodeError(
            UNKNOWN_SCHEMA, f"binary version {version}{known}, schema header {schema}"
        )
    _, size, limit = LAYOUTS[schema]
    if header_len != HEADER_LEN or record_size != size or reserved != 0:
        raise DecodeError(
            BAD_LENGTH,
            f"header_len {header_len}, record_size {record_size}, reserved {reserved}; "
            f"expected {HEADER_LEN}, {size}, 0",
        )
    if count > limit:
        raise DecodeError(TOO_LARGE, f"{count} frames > {limit}")
    expected = HEADER_LEN + count * size
    if len(value) < expected:
        raise DecodeError(TRUNCATED, f"{len(value)} bytes, header announces {expected}")
    if len(value) > expected:
        raise DecodeError(BAD_LENGTH, f"{len(value) - expected} bytes after the last frame")
    return count


def _decode_binary(value: bytes, schema: int = SCHEMA_CLASSIC) -> np.ndarray:
    count = _binary_count(value, schema)
    dtype, size, _ = LAYOUTS[schema]
    # One frombuffer, then a copy the pipeline owns (the Kafka buffer is read-only).
    # (copied as bytes: a structured copy goes field by field, 4x slower)
    raw = np.frombuffer(value, dtype=np.uint8, count=count * size, offset=HEADER_LEN)
    return raw.copy().view(dtype)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"non-standard JSON literal {name}")


def _unique_members(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """An object whose member names are unique: with a repeated one, json.loads keeps
    the last value and other readers the first, so the detector and an audit of the
    topic would see different vehicles or frames."""
    doc = dict(pairs)
    if len(doc) != len(pairs):
        seen: set[str] = set()
        repeated = next(k for k, _ in pairs if k in seen or seen.add(k))
        raise ValueError(f"member {repeated!r} repeated")
    return doc


def _json_frames(rows: Any, schema: int = SCHEMA_CLASSIC) -> np.ndarray:
    if not isinstance(rows, list):
        raise DecodeError(BAD_SHAPE, '"frames" must be an array')
    dtype, _, limit = LAYOUTS[schema]
    if len(rows) > limit:
        raise DecodeError(TOO_LARGE, f"{len(rows)} frames > {limit}")
    width = dtype["data"].shape[0]  # 8 or 64 data bytes
    hex_ok = (_HEX if schema == SCHEMA_CLASSIC else _FD_HEX).fullmatch
    max_dlc = 8 if schema == SCHEMA_CLASSIC else 15
    out = np.zeros(len(rows), dtype=dtype)
    ts, ids, dlcs, flags = [], [], [], []
    data = bytearray(width * len(rows))
    for k, row in enumerate(rows):
        if not isinstance(row, list) or len(row) not in (4, 5):
            raise DecodeError(BAD_SHAPE, f"frame {k}: must be [ts, can_id, dlc, hex(, flags)]")
        t, i, d, h = row[0], row[1], row[2], row[3]
        f = row[4] if len(row) == 5 else 0
        if type(t) not in (int, float) or type(i) is not int or type(d) is not int:
            raise DecodeError(BAD_SHAPE, f"frame {k}: ts must be a number, can_id/dlc integers")
        if type(f) is not int or not 0 <= f <= 255:
            raise DecodeError(BAD_FLAGS, f"frame {k}: flags must be an integer 0..255")
        if not 0 <= i <= 0xFFFF_FFFF:
            raise DecodeError(BAD_ID, f"frame {k}: can_id {i} outside 0..2^32-1")
        if not 0 <= d <= 255:
            raise DecodeError(BAD_DLC, f"frame {k}: dlc {d} outside 0..{max_dlc}")
        if not isinstance(h, str) or len(h) % 2 or not hex_ok(h):
            raise DecodeError(
                BAD_SHAPE, f"frame {k}: data must be 0..{2 * width} hex digits, even count"
            )
        try:
            ts.append(float(t))
        except OverflowError:  # an integer beyond float range: absurd, not a crash
            ts.append(math.inf)
        ids.append(i)
        dlcs.append(d)
        flags.append(f)
        data[width * k : width * k + len(h) // 2] = bytes.fromhex(h)
    out["ts"], out["can_id"], out["dlc"], out["flags"] = ts, ids, dlcs, flags
    out["data"] = np.frombuffer(bytes(data), dtype=np.uint8).reshape(-1, width)
    return out


def _decode_json(
    value: bytes, vehicle: str, brand: str, schema: int = SCHEMA_CLASSIC
) -> tuple[np.ndarray, np.ndarray | None]:
    """The frames of a JSON value, and (schema 2) the data bytes each one gave."""
    try:
        doc = json.loads(
            value.decode("utf-8"),
            parse_constant=_reject_constant,
            object_pairs_hook=_unique_members,
        )
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        raise DecodeError(BAD_JSON, f"{type(exc).__name__}: {str(exc)[:80]}") from None
    if not isinstance(doc, dict) or "frames" not in doc:
        raise DecodeError(BAD_SHAPE, 'JSON value must be an object with "frames"')
    for field, expected in (("vehicle", vehicle), ("brand", brand)):
        if field in doc and doc[field] != expected:
            raise DecodeError(MISMATCH, f'"{field}" in the body differs from the record\'s')
    bus = doc.get("bus", "can0")
    if not isinstance(bus, str) or not 0 < len(bus) <= MAX_BUS_CHARS:
        raise DecodeError(BAD_SHAPE, f'"bus" must be a string of 1..{MAX_BUS_CHARS} chars')
    frames = _json_frames(doc["frames"], schema)
    if schema == SCHEMA_CLASSIC:
        return frames, None  # fewer bytes than dlc allowed (missing ones read as 0)
    nbytes = np.array([len(row[3]) // 2 for row in doc["frames"]], np.int64)
    return frames, nbytes


def decode_record(
    key: bytes | None,
    value: bytes | None,
    headers: Iterable[tuple[str, bytes]] | None,
    *,
    known_brands: set[str] | frozenset[str] | None,
    now: float,
    max_future_s: float,
    min_ts: float,
) -> DecodedBatch:
    """Decode and validate one telemetry record, or raise ``DecodeError``.

    ``now`` is the wall clock (seconds since epoch) that bounds future
    timestamps; ``known_brands`` None accepts any well-formed brand slug.
    """
    vehicle, brand, ctype, schema, value = read_envelope(key, value, headers, known_brands)
    nbytes = None
    if ctype == CONTENT_TYPE_BINARY:
        frames = _decode_binary(value, schema)
    else:
        frames, nbytes = _decode_json(value, vehicle, brand, schema)
    frames = validate_frames(
        frames, now=now, max_future_s=max_future_s, min_ts=min_ts, nbytes=nbytes
    )
    return DecodedBatch.of(vehicle, brand, frames)


def warm_up() -> None:
    """Decode one synthetic record of each schema both ways (``decode_record``,
    ``decode_records``) so their compiled checks are loaded at start-up (see
    ``pipeline.warm_up``)."""
    kwargs = {"known_brands": None, "now": 3.0, "max_future_s": 1.0, "min_ts": 0.0}
    for dtype in (FRAME_DTYPE, FD_FRAME_DTYPE):
        frames = np.zeros(2, dtype)
        frames["ts"] = [1.0, 2.0]
        key, value, headers = encode_record("warm-up", "warm-up", frames)
        decode_record(key, value, headers, **kwargs)
        decode_records([(key, value, headers)], **kwargs)


def decode_records(
    records: Sequence[tuple[Any, Any, Any]],
    *,
    known_brands: set[str] | frozenset[str] | None,
    now: float,
    max_future_s: float,
    min_ts: float,
) -> list[DecodedBatch | DecodeError]:
    """``decode_record`` over a poll's (key, value, headers), one result or error each.

    Same results and errors, with the per-record fixed costs shared: header
    verdicts are memoised, and the frames of all binary records of a schema are
    copied into one array and checked by one compiled pass, each record's frames
    then being a slice of it.
    """
    out: list[DecodedBatch | DecodeError | None] = [None] * len(records)
    memo: dict = {}
    binary: list[tuple[int, str, str, bytes, int]] = []
    fd_binary: list[tuple[int, str, str, bytes, int]] = []
    for i, (key, value, headers) in enumerate(records):
        try:
            vehicle, brand, ctype, schema, value = read_envelope(
                key, value, headers, known_brands, memo
            )
            if ctype == CONTENT_TYPE_BINARY:
                count = _binary_count(value, schema)
                if count == 0:
                    raise DecodeError(EMPTY, "record holds no frames")
                (binary if schema == SCHEMA_CLASSIC else fd_binary).append(
                    (i, vehicle, brand, value, count)
                )
            else:
                frames, nbytes = _decode_json(value, vehicle, brand, schema)
                frames = validate_frames(
                    frames, now=now, max_future_s=max_future_s, min_ts=min_ts, nbytes=nbytes
                )
                out[i] = DecodedBatch.of(vehicle, brand, frames)
        except DecodeError as exc:
            out[i] = exc
    lo_ts, hi_ts = float(min_ts), float(now + max_future_s)
    extended = np.uint32(EXTENDED_FLAG)
    if binary:
        _decode_binary_poll(
            binary, out, FRAME_DTYPE, min_ts, max_future_s,
            lambda f, b: frame_faults_each(
                f, b, lo_ts, hi_ts, KNOWN_FLAGS, extended, ID_MASK_STANDARD
            ),
        )  # fmt: skip
    if fd_binary:
        _decode_binary_poll(
            fd_binary, out, FD_FRAME_DTYPE, min_ts, max_future_s,
            lambda f, b: fd_frame_faults_each(f, b, lo_ts, hi_ts, extended, ID_MASK_STANDARD),
        )  # fmt: skip
    return out  # type: ignore[return-value]


def _decode_binary_poll(
    binary: list[tuple[int, str, str, bytes, int]],
    out: list,
    dtype: np.dtype,
    min_ts: float,
    max_future_s: float,
    faults_each: Any,
) -> None:
    """Decode binary records of one schema (header checked: (index, vehicle, brand,
    value, count)) into ``out[index]``, their frames copied into one array of
    ``dtype`` and checked by ``faults_each(frames, bounds)``."""
    bounds = np.cumsum([0] + [c for *_, c in binary])
    frames = np.empty(int(bounds[-1]), dtype)  # the pipeline owns it, may normalise it
    raw = memoryview(frames.view(np.uint8))
    faults = np.empty((len(binary), 6), np.int64)
    # Copied and checked a few hundred kB at a time, so the checks read what the
    # copy just wrote from the cache (a pass over the whole poll after its copy
    # read it back from memory: 9 ns a frame instead of 4).
    at = 0
    for k0 in range(0, len(binary), _CHECK_RECORDS):
        k1 = min(k0 + _CHECK_RECORDS, len(binary))
        for _, _, _, v, _ in binary[k0:k1]:
            end = at + len(v) - HEADER_LEN
            raw[at:end] = memoryview(v)[HEADER_LEN:]
            at = end
        faults[k0:k1] = faults_each(frames, bounds[k0 : k1 + 1])
    # (columns: first bad dlc, count, id, flags, ts: -1 or 0 when none; time-ordered)
    clean = ((faults[:, [0, 2, 3, 4]] < 0).all(axis=1) & (faults[:, 5] == 1)).tolist()
    lo = bounds.tolist()
    last_ts = frames["ts"][bounds[1:] - 1].tolist()
    first_ts = frames["ts"][bounds[:-1]].tolist()
    for k, (i, vehicle, brand, _, _) in enumerate(binary):
        part = frames[lo[k] : lo[k + 1]]
        if clean[k]:  # the common case: its newest ts from the pass over the poll
            out[i] = DecodedBatch(vehicle, brand, part, last_ts[k], first_ts[k])
            continue
        try:
            _raise_fault(part, *faults[k, :5], min_ts=min_ts, max_future_s=max_future_s)
        except DecodeError as exc:
            out[i] = exc
            continue
        if not faults[k, 5]:
            part = part[np.argsort(part["ts"], kind="stable")]
        out[i] = DecodedBatch.of(vehicle, brand, part)
