"""A telemetry record's envelope: its key (the vehicle id), its ``brand``,
``content-type`` and ``schema`` headers, and whether it has a value of a size
worth reading. ``wire`` checks the envelope before it reads a value.

``read_envelope`` returns (vehicle, brand, content type, schema, value) or raises
``DecodeError`` with one of the reasons below; ``wire.REASONS`` is the whole set.
``headers_for`` writes the headers the envelope reads.

Schemas: 1 = classic CAN frames (8 data bytes), 2 = CAN FD records (64 data bytes,
classic frames among them); docs/wire-format.md. Any other ``schema`` header is an
``unknown_schema`` dead letter.
"""

from __future__ import annotations

from typing import Any

from detector.core.brands import validate_slug
from detector.core.errors import ConfigError, DecodeError

CONTENT_TYPE_BINARY = "application/vnd.canwatch.frames"
CONTENT_TYPE_JSON = "application/json"
CONTENT_TYPES = (CONTENT_TYPE_BINARY, CONTENT_TYPE_JSON)
SCHEMA_CLASSIC = 1  # FRAME_DTYPE records, unchanged since the first version
SCHEMA_FD = 2  # FD_FRAME_DTYPE records
SCHEMA_VERSION = SCHEMA_CLASSIC  # (the name from before schema 2)
SCHEMAS = (SCHEMA_CLASSIC, SCHEMA_FD)
_SCHEMA_OF_HEADER = {str(v): v for v in SCHEMAS}  # exact text: "1", "2" (not "01", "1.0")

#: Limits. A value above MAX_RECORD_BYTES goes to the DLQ as ``too_large``; producers
#: split longer batches into several records. A longer key is a ``bad_key``.
MAX_RECORD_BYTES = 4 * 1024 * 1024
MAX_KEY_BYTES = 128
MAX_HEADER_VALUE_BYTES = 128

# The dead-letter reasons the envelope raises (wire adds those of the value).
MISSING_KEY = "missing_key"  # record key absent
BAD_KEY = "bad_key"  # key empty, > 128 bytes, not UTF-8, or has control characters
MISSING_HEADER = "missing_header"  # brand, content-type or schema header absent
BAD_HEADER = "bad_header"  # header repeated, null, not ASCII, too long, brand not a slug
UNKNOWN_CONTENT_TYPE = "unknown_content_type"
UNKNOWN_SCHEMA = "unknown_schema"  # schema header or binary version not 1 or 2, or they differ
UNKNOWN_BRAND = "unknown_brand"  # brand slug not in the fleet map
TOO_LARGE = "too_large"  # value > MAX_RECORD_BYTES or > MAX_FRAMES frames
EMPTY = "empty"  # no value (a tombstone), or zero frames


def headers_for(
    brand: str, content_type: str, schema: int = SCHEMA_CLASSIC
) -> list[tuple[str, bytes]]:
    """The three record headers, as kafka-python wants them."""
    validate_slug(brand)
    if content_type not in CONTENT_TYPES:
        raise ValueError(f"content_type must be one of {CONTENT_TYPES}, got {content_type!r}")
    if schema not in SCHEMAS:
        raise ValueError(f"schema must be one of {SCHEMAS}, got {schema!r}")
    return [
        ("brand", brand.encode("ascii")),
        ("content-type", content_type.encode("ascii")),
        ("schema", str(schema).encode("ascii")),
    ]


def _vehicle(key: Any) -> str:
    if key is None:
        raise DecodeError(MISSING_KEY, "record has no key (vehicle id)")
    if not isinstance(key, bytes | bytearray | memoryview):
        raise DecodeError(BAD_KEY, f"key is {type(key).__name__}, not bytes")
    key = bytes(key)
    if not 0 < len(key) <= MAX_KEY_BYTES:
        raise DecodeError(BAD_KEY, f"key must be 1..{MAX_KEY_BYTES} bytes, got {len(key)}")
    try:
        text = key.decode("utf-8")
    except UnicodeDecodeError:
        raise DecodeError(BAD_KEY, "key is not valid UTF-8") from None
    if not text.isprintable() or text.strip() != text:
        raise DecodeError(BAD_KEY, "key has control characters or surrounding whitespace")
    return text


def _headers(headers: Any) -> dict[str, str]:
    """The three headers we read, as text. Other headers are ignored."""
    wanted = ("brand", "content-type", "schema")
    found: dict[str, str] = {}
    try:
        for name, raw in headers or ():
            if name not in wanted:
                continue
            if name in found:
                raise DecodeError(BAD_HEADER, f"header {name!r} repeated")
            if not isinstance(raw, bytes | bytearray) or len(raw) > MAX_HEADER_VALUE_BYTES:
                raise DecodeError(BAD_HEADER, f"header {name!r} is null, not bytes or too long")
            found[name] = bytes(raw).decode("ascii").strip()
    except DecodeError:
        raise
    except (TypeError, ValueError) as exc:  # not (name, value) pairs, non-ASCII
        raise DecodeError(BAD_HEADER, f"unreadable headers: {type(exc).__name__}") from None
    for name in wanted:
        if name not in found:
            raise DecodeError(MISSING_HEADER, f"header {name!r} missing")
    return found


def _brand(text: str, known_brands: set[str] | frozenset[str] | None) -> str:
    try:
        validate_slug(text)
    except ConfigError:
        raise DecodeError(BAD_HEADER, f"brand {text[:40]!r} is not a lower-case slug") from None
    if known_brands is not None and text not in known_brands:
        raise DecodeError(UNKNOWN_BRAND, f"brand {text!r} not in the fleet map")
    return text


def read_envelope(
    key: Any, value: Any, headers: Any, known_brands: Any, memo: dict | None = None
) -> tuple[str, str, str, int, bytes]:
    """(vehicle, brand, content type, schema, value) of a record, or raise DecodeError.

    ``memo`` caches the verdicts on keys and on header lists: a poll repeats
    the same few (one key per vehicle, one header list per brand and encoding).
    """
    if memo is not None and type(key) is bytes:
        vehicle = memo.get(key)
        if vehicle is None:
            try:
                vehicle = _vehicle(key)
            except DecodeError as exc:
                vehicle = exc
            memo[key] = vehicle
        if isinstance(vehicle, DecodeError):
            raise DecodeError(vehicle.reason, vehicle.detail)
    else:
        vehicle = _vehicle(key)
    verdict = None
    if memo is not None:
        try:
            hkey = tuple(headers or ())
            verdict = memo.get(hkey)
        except TypeError:  # unhashable: no memo for this one
            hkey = None
    if verdict is None:
        try:
            found = _headers(headers)
            ctype = found["content-type"].split(";", 1)[0].strip().lower()
            if ctype not in CONTENT_TYPES:
                raise DecodeError(
                    UNKNOWN_CONTENT_TYPE, f"content-type {found['content-type'][:60]!r}"
                )
            schema = _SCHEMA_OF_HEADER.get(found["schema"])
            if schema is None:
                raise DecodeError(
                    UNKNOWN_SCHEMA, f"schema {found['schema'][:20]!r}, expected 1 or 2"
                )
            verdict = (ctype, _brand(found["brand"], known_brands), schema)
        except DecodeError as exc:
            verdict = (exc.reason, exc.detail)
        if memo is not None and hkey is not None:
            memo[hkey] = verdict
    if len(verdict) == 2:
        raise DecodeError(verdict[0], verdict[1])
    ctype, brand, schema = verdict
    if type(value) is not bytes:
        if not isinstance(value, bytes | bytearray | memoryview):
            raise DecodeError(EMPTY, "record has no value (tombstone)")
        value = bytes(value)
    if len(value) > MAX_RECORD_BYTES:
        raise DecodeError(TOO_LARGE, f"{len(value)} bytes > {MAX_RECORD_BYTES}")
    return vehicle, brand, ctype, schema, value
