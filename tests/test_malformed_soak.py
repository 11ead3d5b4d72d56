"""Malformed input soak (issue 5): >= 100 000 bad records among a fleet's valid traffic.

One in-process ``Detector`` consumes a telemetry topic holding, interleaved
with the records of simulated jeeps:

- the fixed corpus ``tests/corpus/malformed/cases.json``: one hand-written
  record per category (docs/wire-format.md sections 2-6), each with the DLQ
  reason it must get, including 100 000-deep JSON, JSON of 3.9 MB and > 4 MiB,
  a 6 MB record and what only non-Python clients send (null header values, a
  record with neither key nor value);
- ~103 000 records from a seeded mutator of real encoded batches:
  truncated and oversized binary batches, record sizes that are not a multiple
  of 24, wrong header fields, dlc > 8, ids beyond 29/11 bits, unknown flag bits,
  NaN/inf/negative/far-future timestamps, broken, non-UTF-8, misshapen, deeply
  nested and large JSON, missing/invalid keys, missing/repeated/non-ASCII/unknown
  headers, content types, schema versions and brands, brands without a model,
  tombstones;
- 500 arbitrary records drawn by hypothesis (derandomized, so repeatable): any
  key, header list, binary value or JSON document, frames of any JSON values;
- a few hundred weird-but-valid records (brand fiat: ts near 0 and now + 299 s,
  unsorted frames, RTR/error flags, junk past dlc, padded headers, JSON with
  unknown members nested 400 deep) that must be processed, not dead-lettered.

Records that are valid by chance (a byte flip that still parses) are not sent.
Proven: the detector never crashes; every bad record is in the DLQ exactly once
(matched by its ``source`` header) with its original key, value and headers
(``wire.dead_letter_copy`` of them) and an ``error`` header whose reason is the
corpus's, or for generated records the one the decoder gives offline, and one
that record's category allows; ``canwatch_dead_letters_total`` per reason equals
the DLQ; frames and records consumed equal the valid ones sent; bytes consumed
equal every record's value.
"""

from __future__ import annotations

import builtins
import json
import math
import random
import struct
import time
from collections import Counter
from collections.abc import Callable
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from kafka import KafkaConsumer, TopicPartition
from kafka.serializer import Serializer
from prometheus_client import CollectorRegistry
from test_detect_service import (
    FLEET,
    now_start,
    running,
    sample,
    service_config,
    wait_for,
)

from detector.core.config import Config, DetectionConfig
from detector.core.errors import DecodeError
from detector.core.schema import EXTENDED_FLAG, FRAME_DTYPE
from detector.model.store import save_model
from detector.model.training import train_platform
from detector.service.detector import Detector
from detector.service.intake import NO_MODEL
from detector.service.metrics import DetectorMetrics
from detector.transport import wire
from detector.transport.kafka_io import end_offsets, make_producer
from replay.publisher import interleave
from replay.simulator import simulate_vehicle

pytestmark = [pytest.mark.kafka, pytest.mark.slow]

CORPUS = Path(__file__).parent / "corpus" / "malformed" / "cases.json"
SEED = 5_0505
MODEL_PLATFORM = "cusw"  # soak_models: jeep, fiat, fiat-professional
KNOWN_BRANDS = frozenset(FLEET.brands)
ALL_REASONS = frozenset(wire.REASONS) | {NO_MODEL}
KEY_HEADER_REASONS = frozenset(
    {
        wire.MISSING_KEY,
        wire.BAD_KEY,
        wire.MISSING_HEADER,
        wire.BAD_HEADER,
        wire.UNKNOWN_CONTENT_TYPE,
        wire.UNKNOWN_BRAND,
        NO_MODEL,
    }
)
VALUE_REASONS = ALL_REASONS - KEY_HEADER_REASONS
FRAME_REASONS = frozenset({wire.BAD_DLC, wire.BAD_ID, wire.BAD_FLAGS, wire.BAD_TIMESTAMP})
EXT = int(EXTENDED_FLAG)  # bit 31: extended id
BIN = wire.CONTENT_TYPE_BINARY
JSON = wire.CONTENT_TYPE_JSON
VALID_VEHICLES = 4
VALID_SECONDS = 20.0
EDGE_RECORDS = 300
HYPOTHESIS_EXAMPLES = 500
WAIT_S = 240.0  # a bound so a broken detector fails instead of hanging, not a timing assertion

Headers = list[tuple[str, bytes | None]]


@dataclass
class Bad:
    """A record the detector must dead-letter, and what it may be dead-lettered for."""

    category: str
    key: bytes | None
    value: bytes | None
    headers: Headers
    allowed: frozenset[str]
    reason: str = ""  # the corpus's, or the offline decoder's for generated records


def limits(cfg: Config, now: float) -> dict:
    det = cfg.detection
    return dict(
        known_brands=KNOWN_BRANDS, now=now, max_future_s=det.max_future_s, min_ts=det.min_ts
    )


def offline_reason(key, value, headers, cfg: Config, now: float) -> str | None:
    """The reason the detector will give (None: valid and scored), from wire alone."""
    try:
        batch = wire.decode_record(key, value, headers, **limits(cfg, now))
    except DecodeError as exc:
        return exc.reason
    return None if FLEET.platform_of(batch.brand) == MODEL_PLATFORM else NO_MODEL


def std_headers(brand: str = "jeep", ctype: str = BIN) -> Headers:
    return list(wire.headers_for(brand, ctype))


# -- the fixed corpus ---------------------------------------------------------------------

WORKED_EXAMPLE = bytes.fromhex(
    "43574631010010000200000018000000"
    "00001040fc54d941c4000000080000000102030405060708"
    "00002040fc54d94100f1fe9803000000aabbcc0000000000"
)


def _bytes(spec) -> bytes:
    raw = spec["text"].encode("utf-8") if "text" in spec else bytes.fromhex(spec["hex"])
    return raw * spec.get("repeat", 1)


def load_corpus() -> list[Bad]:
    out = []
    for case in json.loads(CORPUS.read_text(encoding="utf-8"))["cases"]:
        assert case["reason"] in ALL_REASONS, case
        key = None if case["key"] is None else _bytes(case["key"])
        hs = case["headers"]
        if hs in ("binary", "json"):
            headers = std_headers("jeep", BIN if hs == "binary" else JSON)
        else:
            headers = [(n, None if v is None else _bytes(v)) for n, v in hs]
        value = case["value"]
        if value == "worked-example":
            value = WORKED_EXAMPLE
        elif value is not None:
            value = b"".join(_bytes(part) for part in value)
        reason = case["reason"]
        out.append(Bad(f"corpus: {case['name']}", key, value, headers, frozenset({reason}), reason))
    return out


# -- the seeded mutator ---------------------------------------------------------------------

NAN_BITS = 0x7FF0_0000_0000_0000
BAD_KEY_CHARS = ["\n", "\t", "\x00", "\x1b", "\x7f", "\x85", "\u200b", "\u2028", "\ufeff"]
SPACES = [" ", "\t", "\u3000", "\xa0", "\n"]
OTHER_CTYPES = [
    "text/csv",
    "text/plain",
    "application/xml",
    "application/octet-stream",
    "application/x-protobuf",
    "application/vnd.canwatch.frames+v2",
    "application/json5",
    "application/jsonl",
    "json",
    "",
    ";application/json",
]
# ("2" is schema 2, CAN FD: a JSON body of classic frames is valid under it)
OTHER_SCHEMAS = ["0", "3", "10", "1.0", "01", "+1", "one", "", "1 1", "-1", "١", "v1", "1;"]
OTHER_BRANDS = ["tesla", "skoda", "ferrari", "cupra", "byd", "volvo", "abarth", "jeep2", "fiat-pro"]
NOT_SLUGS = ["Jeep", "JEEP", "alfa_romeo", "-jeep", "je ep", "jeep!", "fiat.pro", "x" * 64, ""]
NO_MODEL_BRANDS = sorted(b for b in FLEET.brands if FLEET.platform_of(b) != MODEL_PLATFORM)
BAD_UTF8 = [b"\xff", b"\xc3(", b"\xed\xa0\x80", b"\xf8\x88\x80\x80\x80", b"\x80", b"\xc0\xaf"]


class Mutator:
    """Malformed records from real encoded batches: the same mutations for a seed
    (timestamps follow the wall clock, as the detector requires)."""

    def __init__(self, seed: int, pool: np.ndarray, vehicles: list[str], now: float) -> None:
        self.r = random.Random(seed)  # scalars: ~10x cheaper per draw than numpy's
        self.rng = np.random.default_rng(seed)  # arrays
        self.pool = pool  # valid frames, ts just before the wall clock
        self.vehicles = vehicles
        self.now = now

    # helpers
    def int(self, lo: int, hi: int) -> int:
        """Uniform in [lo, hi]."""
        return self.r.randint(lo, hi)

    def pick(self, seq):
        return self.r.choice(seq)

    def chance(self, p: float) -> bool:
        return self.r.random() < p

    def frames(self, lo: int = 1, hi: int = 6) -> np.ndarray:
        n = min(self.int(lo, hi), len(self.pool))
        i = self.int(0, len(self.pool) - n)
        return self.pool[i : i + n].copy()

    def vehicle(self) -> str:
        return self.pick(self.vehicles)

    def key(self) -> bytes:
        return self.vehicle().encode()

    def binary(self, frames: np.ndarray | None = None) -> bytes:
        return wire.encode_binary(self.frames() if frames is None else frames)

    def rows(self, lo: int = 1, hi: int = 6) -> list[list]:
        return json.loads(wire.encode_json("v", "jeep", self.frames(lo, hi)))["frames"]

    def jdoc(self, vehicle: str, rows: list | None = None, **extra) -> dict:
        """A JSON document for the record key ``vehicle`` (body vehicle/brand optional)."""
        doc = {"vehicle": vehicle, "brand": "jeep", "frames": self.rows() if rows is None else rows}
        for name in ("vehicle", "brand"):
            if self.chance(0.3):
                del doc[name]
        return doc | extra

    def good_value(self, vehicle: str) -> tuple[bytes, Headers]:
        if self.chance(0.7):
            return self.binary(), std_headers()
        return wire.encode_json(vehicle, "jeep", self.frames()), std_headers(ctype=JSON)

    @staticmethod
    def header(count: int, version=1, hlen=16, rsize=24, reserved=0, magic=wire.MAGIC) -> bytes:
        return wire.HEADER.pack(magic, version, hlen, count, rsize, reserved)

    def with_frame_field(self, offset: int, fmt: str, value) -> bytes:
        """A valid batch with one field of one frame overwritten."""
        value_bytes = bytearray(self.binary())
        i = self.int(0, (len(value_bytes) - 16) // 24 - 1)
        struct.pack_into(fmt, value_bytes, 16 + 24 * i + offset, value)
        return bytes(value_bytes)

    def bad_ts(self) -> float:
        kind = self.int(0, 4)
        if kind == 0:  # NaN with a random payload and sign
            bits = NAN_BITS | self.int(1, (1 << 52) - 1) | (self.int(0, 1) << 63)
            return struct.unpack("<d", struct.pack("<Q", bits))[0]
        if kind == 1:
            return self.pick([math.inf, -math.inf])
        if kind == 2:  # negative, from -5e-324 to -1e300
            return -(10.0 ** self.r.uniform(-323, 300))
        return self.now + 10.0 ** self.r.uniform(5, 300)  # a day or more ahead

    # binary (the fast path)
    def bin_truncated(self):
        v = self.binary()
        return self.key(), v[: self.int(0, len(v) - 1)], std_headers(), {wire.TRUNCATED}

    def bin_oversized(self):
        v = self.binary() + self.r.randbytes(self.int(1, 240))
        return self.key(), v, std_headers(), {wire.BAD_LENGTH}

    def bin_misaligned(self):  # frame bytes not a multiple of the 24-byte record size
        f = self.frames()
        body, r = wire.encode_binary(f)[16:], self.int(1, 23)
        body = body + self.r.randbytes(r) if self.chance(0.5) else body[:-r]
        count = len(f) if self.chance(0.7) else len(body) // 24
        value = self.header(count) + body
        return self.key(), value, std_headers(), {wire.BAD_LENGTH, wire.TRUNCATED}

    def bin_header_fields(self):
        f = self.frames()
        field = self.pick(["hlen", "rsize", "reserved"])
        wrong = self.int(0, 65535)
        while wrong == {"hlen": 16, "rsize": 24, "reserved": 0}[field]:
            wrong = self.int(0, 65535)
        value = self.header(len(f), **{field: wrong}) + wire.encode_binary(f)[16:]
        return self.key(), value, std_headers(), {wire.BAD_LENGTH}

    def bin_too_many_frames(self):
        count = self.int(wire.MAX_FRAMES + 1, 2**32 - 1)
        value = self.header(count) + wire.encode_binary(self.frames())[16:]
        return self.key(), value, std_headers(), {wire.TOO_LARGE}

    def bin_magic(self):
        magic = self.pick([b"CWF2", b"cwf1", b"FWC1", b"\0\0\0\0", b'{"fr', self.r.randbytes(4)])
        value = magic + self.binary()[4:]
        return self.key(), value, std_headers(), {wire.BAD_MAGIC}

    def bin_version(self):
        version = self.pick([0, 2, 3, 256, 0xFFFF, self.int(2, 65535)])
        value = self.header(1, version=version) + self.binary(self.frames(1, 1))[16:]
        return self.key(), value, std_headers(), {wire.UNKNOWN_SCHEMA}

    def bin_zero_frames(self):
        return self.key(), self.header(0), std_headers(), {wire.EMPTY}

    def bin_dlc(self):
        value = self.with_frame_field(12, "<B", self.int(9, 255))
        return self.key(), value, std_headers(), {wire.BAD_DLC}

    def bin_can_id(self):
        if self.chance(0.5):  # standard (bit 31 clear) beyond 11 bits
            can_id = self.int(0x800, 0x7FFF_FFFF)
        else:  # extended beyond 29 bits
            can_id = EXT | (self.int(1, 3) << 29) | self.int(0, (1 << 29) - 1)
        value = self.with_frame_field(8, "<I", can_id)
        return self.key(), value, std_headers(), {wire.BAD_ID}

    def bin_flags(self):
        offset = self.pick([13, 14, 15])  # flags, reserved (label) byte, reserved byte
        byte = self.int(1, 63) << 2 | self.int(0, 3) if offset == 13 else self.int(1, 255)
        value = self.with_frame_field(offset, "<B", byte)
        return self.key(), value, std_headers(), {wire.BAD_FLAGS}

    def bin_timestamp(self):
        value = self.with_frame_field(0, "<d", self.bad_ts())
        return self.key(), value, std_headers(), {wire.BAD_TIMESTAMP}

    def bin_random_bytes(self):
        value = self.r.randbytes(self.int(0, 200))
        if self.chance(0.3):
            value = wire.MAGIC + value
        return self.key(), value, std_headers(), VALUE_REASONS

    def bin_random_frames(self):
        n = self.int(1, 8)
        value = self.header(n) + self.r.randbytes(24 * n)
        return self.key(), value, std_headers(), FRAME_REASONS

    # JSON
    def json_cut(self):
        v = self.vehicle()
        value = wire.encode_json(v, "jeep", self.frames())
        return (
            v.encode(),
            value[: self.int(0, len(value) - 1)],
            std_headers(ctype=JSON),
            {wire.BAD_JSON},
        )

    def json_byte_flip(self):
        v = self.vehicle()
        value = bytearray(wire.encode_json(v, "jeep", self.frames()))
        byte = self.pick(b'{}[],:"\\ -.eE0x') if self.chance(0.6) else self.int(0, 255)
        value[self.int(0, len(value) - 1)] = byte
        return v.encode(), bytes(value), std_headers(ctype=JSON), VALUE_REASONS

    def json_bad_utf8(self):
        v = self.vehicle()
        value = wire.encode_json(v, "jeep", self.frames())
        i = self.int(0, len(value))
        value = value[:i] + self.pick(BAD_UTF8) + value[i:]
        return v.encode(), value, std_headers(ctype=JSON), {wire.BAD_JSON}

    def json_literal(self):
        v = self.vehicle()
        rows = self.rows()
        self.pick(rows)[self.pick([0, 0, 1, 2])] = "@literal@"
        text = json.dumps(self.jdoc(v, rows))
        value = text.replace('"@literal@"', self.pick(["NaN", "Infinity", "-Infinity"])).encode()
        return v.encode(), value, std_headers(ctype=JSON), {wire.BAD_JSON}

    def json_shape(self):
        v = self.vehicle()
        rows = self.rows()
        i = self.int(0, len(rows) - 1)
        row = rows[i]
        kind = self.int(0, 11)
        if kind == 0:  # not an object
            doc = self.pick([rows, "frames", 17, None, True, [{"frames": rows}]])
        elif kind == 1:  # no frames
            doc = {"vehicle": v, "brand": "jeep", "frame": rows}
        elif kind == 2:  # frames not an array
            doc = {"vehicle": v, "frames": self.pick([{"0": row}, "[]", 3, None, True])}
        elif kind == 3:  # a frame not an array
            rows[i] = self.pick([17, "row", {"ts": 1}, None])
            doc = self.jdoc(v, rows)
        elif kind == 4:  # wrong number of elements
            if self.chance(0.5):
                del row[self.int(0, 3) :]
            else:
                row.extend([0] * self.int(2, 5))
            doc = self.jdoc(v, rows)
        elif kind == 5:  # ts not a number
            row[0] = self.pick([str(row[0]), True, None, [row[0]], {"ts": row[0]}])
            doc = self.jdoc(v, rows)
        elif kind == 6:  # can_id not an integer
            row[1] = self.pick([float(row[1]), str(row[1]), hex(row[1]), False, None])
            doc = self.jdoc(v, rows)
        elif kind == 7:  # dlc not an integer
            row[2] = self.pick([float(row[2]), str(row[2]), True, None])
            doc = self.jdoc(v, rows)
        elif kind == 8:  # data not an even number of at most 16 hex digits
            row[3] = self.pick(
                [row[3] + "0", "zz", "0x" + row[3], "ab cd", "00" * 9, 1234, None, ["ab"]]
            )
            doc = self.jdoc(v, rows)
        elif kind == 9:  # bus
            doc = self.jdoc(v, rows, bus=self.pick(["", "c" * 33, 0, None, ["can0"], {"n": 0}]))
        elif kind == 10:  # frames nested one level too deep
            doc = self.jdoc(v, [rows])
        else:  # frames as a string of JSON
            doc = self.jdoc(v, json.dumps(rows))
        return v.encode(), json.dumps(doc).encode(), std_headers(ctype=JSON), {wire.BAD_SHAPE}

    def json_field(self):
        v = self.vehicle()
        rows = self.rows()
        row = self.pick(rows)
        kind = self.int(0, 4)
        if kind == 0:
            row[2], reason = self.pick([self.int(9, 255), -self.int(1, 10**6), 2**63]), wire.BAD_DLC
        elif kind == 1:
            row[1] = self.pick(
                [
                    2**32 + self.int(0, 2**62) * self.int(1, 256),
                    -self.int(1, 2**31),
                    self.int(0x800, 0x7FFF_FFFF),
                    EXT | self.int(1, 3) << 29,
                ]
            )
            reason = wire.BAD_ID
        elif kind == 2:
            row[4:] = [self.pick([self.int(256, 10**9), -self.int(1, 255), self.int(1, 63) << 2])]
            reason = wire.BAD_FLAGS
        elif kind == 3:
            row[0], reason = self.pick([-1, -1.5e9, 10**400, 4_102_444_800.0]), wire.BAD_TIMESTAMP
        else:
            row[0], reason = self.bad_ts(), wire.BAD_TIMESTAMP
        value = json.dumps(self.jdoc(v, rows)).encode()  # NaN/inf come out as literals: bad_json
        reasons = {reason, wire.BAD_JSON} if kind == 4 else {reason}
        return v.encode(), value, std_headers(ctype=JSON), reasons

    def json_mismatch(self):
        v = self.vehicle()
        doc = self.jdoc(v)
        if self.chance(0.5):
            doc["vehicle"] = v + self.pick(["x", "-2", " ", "\u00e9"])
        else:
            doc["brand"] = self.pick(["fiat", "opel", "Jeep", "", 1, None])
        return v.encode(), json.dumps(doc).encode(), std_headers(ctype=JSON), {wire.MISMATCH}

    def json_empty(self):
        v = self.vehicle()
        return (
            v.encode(),
            json.dumps(self.jdoc(v, [])).encode(),
            std_headers(ctype=JSON),
            {wire.EMPTY},
        )

    def json_deep(self):
        n = self.int(3_000, 100_000)
        open_, close = self.pick([(b"[", b"]"), (b'{"a":', b"}"), (b'{"frames":[', b"]}")])
        value = open_ * n + b"1" + close * n
        if self.chance(0.5):
            value = b'{"frames":[[1,2,3,' + value + b"]]}"
        return self.key(), value, std_headers(ctype=JSON), {wire.BAD_JSON}

    def json_large(self):  # 0.2-0.8 MB documents, one frame wrong somewhere
        v = self.vehicle()
        rows = self.rows(4_000, 20_000)
        self.pick(rows)[2] = 9
        value = json.dumps(self.jdoc(v, rows)).encode()
        return v.encode(), value, std_headers(ctype=JSON), {wire.BAD_DLC}

    # key and headers
    def missing_key(self):
        value, headers = self.good_value(self.vehicle())
        return None, value, headers, {wire.MISSING_KEY}

    def bad_key(self):
        v = self.vehicle()
        kind = self.int(0, 4)
        if kind == 0:
            key = b""
        elif kind == 1:
            key = (v * 200).encode()[: self.int(129, 1000)]
        elif kind == 2:
            i = self.int(0, len(v))
            key = v[:i].encode() + self.pick(BAD_UTF8) + v[i:].encode()
        elif kind == 3:
            i = self.int(0, len(v))
            key = (v[:i] + self.pick(BAD_KEY_CHARS) + v[i:]).encode()
        else:
            s = self.pick(SPACES)
            key = self.pick([s + v, v + s, s + v + s]).encode()
        value, headers = self.good_value(v)
        return key, value, headers, {wire.BAD_KEY}

    def missing_header(self):
        v = self.vehicle()
        value, headers = self.good_value(v)
        drop = self.int(1, 7)  # a non-empty subset of the three
        headers = [h for i, h in enumerate(headers) if not drop >> i & 1]
        if self.chance(0.5):
            headers.append((self.pick(["Brand", "content_type", "Schema", "x-trace", ""]), b"1"))
        return v.encode(), value, headers, {wire.MISSING_HEADER}

    def bad_header(self):
        v = self.vehicle()
        value, headers = self.good_value(v)
        i = self.int(0, 2)
        name, good = headers[i]
        kind = self.int(0, 3)
        if kind == 0:  # repeated
            headers.insert(self.int(0, 3), (name, good))
        elif kind == 1:  # not ASCII
            j = self.int(0, len(good))
            headers[i] = (name, good[:j] + bytes([self.int(0x80, 0xFF)]) + good[j:])
        elif kind == 2:  # too long
            headers[i] = (name, (good * 200)[: self.int(129, 2000)])
        else:  # brand not a slug
            headers[0] = ("brand", self.pick(NOT_SLUGS).encode())
        return v.encode(), value, headers, {wire.BAD_HEADER}

    def content_type(self):
        v = self.vehicle()
        value, headers = self.good_value(v)
        headers[1] = ("content-type", self.pick(OTHER_CTYPES).encode())
        return v.encode(), value, headers, {wire.UNKNOWN_CONTENT_TYPE}

    def schema(self):
        v = self.vehicle()
        value, headers = self.good_value(v)
        headers[2] = ("schema", self.pick([*OTHER_SCHEMAS, str(self.int(3, 10**6))]).encode())
        return v.encode(), value, headers, {wire.UNKNOWN_SCHEMA, wire.BAD_HEADER}

    def unknown_brand(self):
        v = self.vehicle()
        value, headers = self.good_value(v)
        headers[0] = ("brand", self.pick(OTHER_BRANDS).encode())
        return v.encode(), value, headers, {wire.UNKNOWN_BRAND}

    def no_model(self):
        brand = self.pick(NO_MODEL_BRANDS)
        ctype = self.pick([BIN, JSON])
        f = self.frames()
        value = (
            wire.encode_binary(f) if ctype == BIN else wire.encode_json(self.vehicles[0], brand, f)
        )
        return self.vehicles[0].encode(), value, std_headers(brand, ctype), {NO_MODEL}

    def tombstone(self):
        return self.key(), None, self.good_value("v")[1], {wire.EMPTY}

    def empty_value(self):
        headers = self.good_value("v")[1]
        return self.key(), b"", headers, {wire.TRUNCATED, wire.BAD_JSON}

    # weird but valid (brand fiat, own vehicles): must be processed, never dead-lettered
    def edge_valid(self) -> tuple[bytes, bytes, Headers]:
        n = self.int(1, 300)
        f = np.zeros(n, FRAME_DTYPE)
        ext = self.rng.random(n) < 0.5
        ids = np.where(ext, self.rng.integers(0, 1 << 29, n) | EXT, self.rng.integers(0, 0x800, n))
        ids[: self.int(0, n)] = self.pick([0, 0x7FF, EXT | 0x1FFF_FFFF, EXT])
        f["can_id"] = ids
        f["dlc"] = self.rng.integers(0, 9, n)
        f["flags"] = self.rng.integers(0, 4, n)
        f["data"] = self.rng.integers(0, 256, (n, 8))  # junk past dlc: the receiver zeroes it
        kind = self.int(0, 3)
        if kind == 0:
            f["ts"] = self.pick([0.0, 5e-324, 1.0, 1e9])
        elif kind == 1:
            f["ts"] = self.now + 299 - self.rng.random(n)  # just inside now + max_future_s
        elif kind == 2:
            f["ts"] = self.rng.random(n) * self.now  # unsorted, 1970 to now
        else:
            f["ts"] = self.now - 30 + 30 * self.rng.random(n)
        vehicle = f"edge-{self.int(0, 9)}-{self.pick(['a', 'ü', 'é-ß', '车'])}"
        brand = "fiat"
        if self.chance(0.5):
            value, ctype = wire.encode_binary(f), BIN
        else:
            doc = json.loads(wire.encode_json(vehicle, brand, f))
            doc["x-ext"] = json.loads("[" * 400 + "]" * 400)  # unknown members are ignored
            doc["frames"] = [[r[0], r[1], r[2], r[3].upper(), *r[4:]] for r in doc["frames"]]
            seps = self.pick([(",", ":"), (", ", ": "), (" ,\n", " :\t")])
            value = json.dumps(doc, separators=seps).encode()
            ctype = self.pick([JSON, "Application/JSON; charset=utf-8"])
        headers = [
            ("traceparent", b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            ("brand", self.pick([b"fiat", b" fiat ", b"fiat\t"])),
            ("content-type", ctype.encode()),
            ("schema", self.pick([b"1", b" 1 "])),
            ("Brand", b"ignored"),
        ]
        return vehicle.encode(), value, headers


CATEGORIES: list[tuple[str, int]] = [
    ("bin_truncated", 6_000),
    ("bin_oversized", 5_000),
    ("bin_misaligned", 5_500),
    ("bin_header_fields", 5_000),
    ("bin_too_many_frames", 2_000),
    ("bin_magic", 4_000),
    ("bin_version", 3_000),
    ("bin_zero_frames", 1_500),
    ("bin_dlc", 5_000),
    ("bin_can_id", 5_000),
    ("bin_flags", 5_000),
    ("bin_timestamp", 7_000),
    ("bin_random_bytes", 3_000),
    ("bin_random_frames", 3_000),
    ("json_cut", 4_000),
    ("json_byte_flip", 2_500),
    ("json_bad_utf8", 2_000),
    ("json_literal", 2_000),
    ("json_shape", 4_500),
    ("json_field", 4_500),
    ("json_mismatch", 2_000),
    ("json_empty", 1_000),
    ("json_deep", 30),
    ("json_large", 4),
    ("missing_key", 1_500),
    ("bad_key", 3_000),
    ("missing_header", 3_000),
    ("bad_header", 3_000),
    ("content_type", 2_000),
    ("schema", 2_000),
    ("unknown_brand", 2_000),
    ("no_model", 2_000),
    ("tombstone", 1_000),
    ("empty_value", 1_000),
]


# -- hypothesis: arbitrary records ---------------------------------------------------------

json_scalars = st.one_of(st.none(), st.booleans(), st.integers(), st.floats(), st.text(max_size=8))
json_values = st.recursive(
    json_scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
header_names = st.sampled_from(["brand", "content-type", "schema", "x-trace", "Brand"])
header_values = st.one_of(
    st.sampled_from([b"jeep", b"fiat", b"peugeot", BIN.encode(), JSON.encode(), b"1", b"2", b""]),
    st.binary(max_size=16),
)


@st.composite
def arbitrary_records(draw, vehicles: list[str]):
    """Any key, headers and value; mostly one part is arbitrary (the decoder decides)."""
    part = draw(st.sampled_from(["key", "headers", "binary", "json", "frames"]))
    key = vehicles[0].encode()
    headers = std_headers(ctype=JSON)
    value: bytes | None = b'{"frames":[[1,2,3,""]]}'
    if part == "key":
        key = draw(st.one_of(st.none(), st.binary(max_size=40)))
    elif part == "headers":
        headers = draw(st.lists(st.tuples(header_names, header_values), max_size=5))
    elif part == "binary":
        headers = std_headers()
        value = draw(st.one_of(st.none(), st.binary(max_size=120)))
    elif part == "json":
        value = json.dumps(draw(json_values)).encode()
    else:
        rows = draw(st.lists(st.lists(json_values, max_size=5), min_size=1, max_size=2))
        extra = draw(st.dictionaries(st.sampled_from(["vehicle", "brand", "bus"]), json_values))
        value = json.dumps({"frames": rows, **extra}).encode()
    return key, value, headers


def hypothesis_records(vehicles: list[str], n: int) -> list[tuple]:
    out: list[tuple] = []

    @settings(
        derandomize=True,
        database=None,
        max_examples=n,
        deadline=None,
        phases=[Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(arbitrary_records(vehicles))
    def collect(record) -> None:
        out.append(record)

    collect()
    return out


# -- producing ------------------------------------------------------------------------------


class _NullableKey(Serializer):
    """Sends the sentinel key as a null key, so a record can have neither key nor value."""

    NULL = b"\0null-key\0"

    def serialize(self, topic, headers, data):
        return None if data == self.NULL else data


def kafka_python_can_send(key, value, headers) -> bool:
    size = len(key or b"") + len(value or b"") + sum(len(n) + len(v or b"") for n, v in headers)
    return (
        (key, value) != (None, None)
        and all(v is not None for _, v in headers)
        and (size <= wire.DLQ_MAX_BYTES)
    )


def produce(cfg: Config, records: list[tuple], raw: bool = False) -> list[tuple[int, int]]:
    """Send in order (linger 5 ms, 1 MiB batches); (partition, offset) of each record.

    ``raw`` sends what kafka-python refuses but Java and librdkafka clients send:
    null header values, no key and no value, records above 5 MiB.
    """
    topic = cfg.kafka.telemetry_topic
    if not raw:
        producer = make_producer(cfg.kafka)
    else:
        producer = make_producer(
            cfg.kafka, max_request_size=64 << 20, key_serializer=_NullableKey()
        )
    try:
        with ExitStack() as patches:
            if raw:  # skip send()'s (str, bytes) header check; the record format allows null
                patches.enter_context(
                    mock.patch("kafka.producer.kafka.all", lambda _: True, create=True)
                )
                patches.enter_context(
                    mock.patch(
                        "kafka.producer.producer_batch.len",
                        lambda x: 0 if x is None else builtins.len(x),
                        create=True,
                    )
                )
            futures = []
            for k, v, h in records:
                if raw and k is None:
                    k = _NullableKey.NULL
                futures.append(producer.send(topic, key=k, value=v, headers=list(h)))
            producer.flush(timeout=120)
        return [(md.partition, md.offset) for md in (f.get(timeout=60) for f in futures)]
    finally:
        producer.close()


# -- the test -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def soak_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cusw (jeep, fiat, fiat-professional) model; smaller than test_detect_service's
    ``cusw_models`` (2 s to train instead of 10): scores are not what this test checks."""
    d = tmp_path_factory.mktemp("models")
    recordings = [simulate_vehicle("cusw", 60, 1.7e9, seed=100 + i) for i in range(4)]
    model, summary = train_platform(MODEL_PLATFORM, recordings, DetectionConfig())
    save_model(model, d, FLEET.brands_of(MODEL_PLATFORM), summary)
    return d


def read_topic(bootstrap: str, topic: str, at_least: int) -> list:
    """Every record of ``topic``: at least ``at_least``, then up to the end offsets."""
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        fetch_max_wait_ms=10,
        max_partition_fetch_bytes=32 << 20,  # the DLQ holds records of up to ~4 MiB
        fetch_max_bytes=64 << 20,
    )
    try:
        wait_for(f"metadata of {topic}", lambda: consumer.partitions_for_topic(topic))
        parts = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(parts)
        records: list = []

        def read(n: int) -> bool:
            for batch in consumer.poll(timeout_ms=200, max_records=100_000).values():
                records.extend(batch)
            return len(records) >= n

        wait_for(f"{at_least} records in {topic}", lambda: read(at_least), WAIT_S)
        wait_for(f"all of {topic}", lambda: read(sum(end_offsets(consumer, parts).values())))
        return records
    finally:
        consumer.close()


def dead_letter_counts(metrics: DetectorMetrics) -> Counter:
    """canwatch_dead_letters_total by reason, from one collect of the registry."""
    out: Counter = Counter()
    for family in metrics.registry.collect():
        for s in family.samples:
            if s.name == "canwatch_dead_letters_total" and s.value:
                out[s.labels["reason"]] = int(s.value)
    return out


def generate(cfg: Config, now: float):
    """(valid records, their frame count, edge-valid records, their frame count, bad records)."""
    start = now_start(VALID_SECONDS)
    streams = [
        (f"veh-soak-{i}", "jeep", simulate_vehicle("cusw", VALID_SECONDS, start, seed=900 + i))
        for i in range(VALID_VEHICLES)
    ]
    valid = [
        wire.encode_record(b.vehicle, b.brand, b.frames, "json" if k % 10 == 0 else "binary")
        for k, b in enumerate(interleave(streams, max_frames=500, max_span_s=0.1))
    ]
    valid_frames = sum(len(f) for *_, f in streams)
    vehicles = [v for v, *_ in streams]
    mut = Mutator(SEED, streams[0][2], vehicles, now)

    edge = [mut.edge_valid() for _ in range(EDGE_RECORDS)]
    edge_frames = 0
    for key, value, headers in edge:
        reason = offline_reason(key, value, headers, cfg, now)
        assert reason is None, f"edge-valid record rejected offline: {reason}"  # generator bug
        edge_frames += len(wire.decode_record(key, value, headers, **limits(cfg, now)).frames)

    bad = load_corpus()
    for name, count in CATEGORIES:
        make: Callable = getattr(mut, name)
        for _ in range(count):
            key, value, headers, allowed = make()
            bad.append(Bad(name, key, value, headers, frozenset(allowed)))
    for key, value, headers in hypothesis_records(vehicles, HYPOTHESIS_EXAMPLES):
        bad.append(Bad("hypothesis", key, value, list(headers), ALL_REASONS))
    return valid, valid_frames, edge, edge_frames, bad


def test_malformed_soak(broker, unique_topic, soak_models):
    t0 = time.perf_counter()
    cfg = service_config(broker, unique_topic, soak_models, partitions=4)
    now = time.time()
    valid, valid_frames, edge, edge_frames, candidates = generate(cfg, now)

    # The decoder, offline, names each record's reason; a generated record that
    # happens to be valid is not sent (it would be scored as a vehicle's traffic).
    bad, skipped, wrong = [], Counter(), []
    for b in candidates:
        reason = offline_reason(b.key, b.value, b.headers, cfg, now)
        if b.category.startswith("corpus"):
            if reason != b.reason:
                wrong.append((b.category, b.reason, reason))
        elif reason is None:
            skipped[b.category] += 1
            continue
        elif reason not in b.allowed:
            wrong.append((b.category, sorted(b.allowed), reason))
        b.reason = reason
        bad.append(b)
    assert not wrong, f"offline decoder disagrees with the generator: {wrong[:20]}"
    assert len(bad) >= 100_000

    # Interleave: valid and edge records keep their order; bad ones fall in between.
    rng = np.random.default_rng(SEED + 1)
    sendable = [b for b in bad if kafka_python_can_send(b.key, b.value, b.headers)]
    quirks = [b for b in bad if not kafka_python_can_send(b.key, b.value, b.headers)]
    good = [(k, v, h) for k, v, h in valid] + [(k, v, h) for k, v, h in edge]
    rng.shuffle(sendable)
    mask = np.zeros(len(good) + len(sendable), bool)
    mask[rng.choice(len(mask), len(sendable), replace=False)] = True
    goods, bads = iter(good), iter(sendable)
    order = [next(bads) if m else next(goods) for m in mask]
    records = [(b.key, b.value, b.headers) if isinstance(b, Bad) else b for b in order]
    t1 = time.perf_counter()

    # First what kafka-python refuses to send (its checks are patched out meanwhile, so
    # not while the detector's own producer runs), then the rest with the detector running.
    positions = produce(cfg, [(b.key, b.value, b.headers) for b in quirks], raw=True)
    metrics = DetectorMetrics(CollectorRegistry())
    with running(Detector(cfg, FLEET, metrics, "det-soak")):  # consumes while we produce
        positions += produce(cfg, records)
        t2 = time.perf_counter()

        def done() -> bool:
            time.sleep(0.5)  # (collecting the registry is not free; the detector needs the GIL)
            return (
                sample(metrics, "canwatch_frames_consumed_total", brand="jeep") >= valid_frames
                and sample(metrics, "canwatch_frames_consumed_total", brand="fiat") >= edge_frames
                and sum(dead_letter_counts(metrics).values()) >= len(bad)
            )

        wait_for("every valid frame consumed and every bad record dead-lettered", done, WAIT_S)
    # Stopped: the last poll's dead letters were acknowledged before its commit.
    t3 = time.perf_counter()
    sent = {
        pos: b for pos, b in zip(positions, [*quirks, *order], strict=True) if isinstance(b, Bad)
    }
    assert len(sent) == len(bad)
    value_bytes = sum(len(r[1] or b"") for r in records) + sum(len(b.value or b"") for b in quirks)
    dead = read_topic(broker.bootstrap, cfg.kafka.dlq_topic, at_least=len(bad))
    t4 = time.perf_counter()

    # Every bad record exactly once, with its reason and original bytes.
    seen: Counter = Counter()
    problems = []
    by_reason: Counter = Counter()
    by_category: dict[str, Counter] = {}
    quirk_dlq: dict[str, object] = {}
    for r in dead:
        headers = r.headers
        h = dict(headers)
        _, partition, offset = h["source"].decode().rsplit("/", 2)
        pos = (int(partition), int(offset))
        b = sent.get(pos)
        if b is None:
            problems.append(f"{pos}: not a bad record (valid traffic dead-lettered?)")
            continue
        seen[pos] += 1
        if not kafka_python_can_send(b.key, b.value, b.headers):
            quirk_dlq[b.category] = r
        reason = h["error"].decode()
        by_reason[reason] += 1
        by_category.setdefault(b.category, Counter())[reason] += 1
        if reason != b.reason:
            problems.append(f"{b.category} {pos}: reason {reason}, expected {b.reason}")
        key, value, orig_headers, altered = wire.dead_letter_copy(b.key, b.value, b.headers)
        n = len(orig_headers)
        if (r.key, r.value, headers[:n]) != (key, value, orig_headers):
            problems.append(f"{b.category} {pos}: DLQ copy differs from the original")
        extra = [name for name, _ in headers[n:]]
        expected_extra = ["error", "error-detail", "source"] + (
            ["error-altered"] if altered else []
        )
        if extra != expected_extra or not h["error-detail"]:
            problems.append(f"{b.category} {pos}: DLQ headers {extra}")
    missing = [b.category for pos, b in sent.items() if pos not in seen]
    duplicated = {pos: n for pos, n in seen.items() if n > 1}
    assert not problems, f"{len(problems)} problems, e.g. {problems[:10]}"
    assert not missing, f"{len(missing)} bad records not dead-lettered: {Counter(missing)}"
    assert not duplicated, f"{len(duplicated)} bad records dead-lettered twice (no restart here)"
    assert len(dead) == len(bad)
    assert set(by_reason) <= ALL_REASONS

    # Metrics agree with the DLQ and with what was sent.
    assert dead_letter_counts(metrics) == by_reason
    assert sample(metrics, "canwatch_frames_consumed_total", brand="jeep") == valid_frames
    assert sample(metrics, "canwatch_records_consumed_total", brand="jeep") == len(valid)
    assert sample(metrics, "canwatch_frames_consumed_total", brand="fiat") == edge_frames
    assert sample(metrics, "canwatch_records_consumed_total", brand="fiat") == len(edge)
    # a brand without a model: its records are consumed (and dead-lettered), and counted,
    # so that CanwatchBrandWithoutModel can name it
    unserved: dict[str, list[int]] = {}
    for b in bad:
        if b.reason == NO_MODEL:
            batch = wire.decode_record(b.key, b.value, b.headers, **limits(cfg, now))
            tally = unserved.setdefault(batch.brand, [0, 0])
            tally[0] += 1
            tally[1] += len(batch.frames)
    assert unserved
    for brand in sorted(KNOWN_BRANDS - {"jeep", "fiat"}):
        records_frames = [
            sample(metrics, f"canwatch_{n}_consumed_total", brand=brand) or 0
            for n in ("records", "frames")
        ]
        assert records_frames == unserved.get(brand, [0, 0]), brand
    assert sample(metrics, "canwatch_bytes_consumed_total") == value_bytes

    # What only non-Python clients send was dead-lettered as close to the original as
    # kafka-python allows, and says so (before the fix each of these crashed the detector).
    assert sorted(quirk_dlq) == sorted(b.category for b in quirks)
    for r in quirk_dlq.values():
        assert dict(r.headers)["error-altered"]
    big = quirk_dlq["corpus: 6 MB value (above the DLQ producer's 5 MiB request limit)"]
    assert len(big.value) == wire.MAX_RECORD_BYTES and dict(big.headers)["error"] == b"too_large"
    neither = quirk_dlq["corpus: neither key nor value"]
    assert (neither.key, neither.value) == (None, b"")
    null_header = quirk_dlq["corpus: null header value on an ignored header"]
    assert null_header.headers[0] == ("trace", b"")

    t5 = time.perf_counter()
    print(
        f"\nmalformed soak: {len(bad)} bad records ({len(quirks)} via a raw producer, "
        f"{sum(skipped.values())} generated-but-valid skipped {dict(skipped)}), "
        f"{len(valid)} valid records / {valid_frames} frames, "
        f"{len(edge)} edge-valid records / {edge_frames} frames, {value_bytes / 1e6:.1f} MB\n"
        f"  generate+classify {t1 - t0:.1f} s, produce (detector running) {t2 - t1:.1f} s, "
        f"detector done {t3 - t2:.1f} s later, DLQ read {t4 - t3:.1f} s, verify {t5 - t4:.1f} s"
    )
    print("  DLQ by reason: " + ", ".join(f"{r} {n}" for r, n in sorted(by_reason.items())))
    for category, reasons in by_category.items():
        if not category.startswith("corpus"):
            total = sum(reasons.values())
            print(
                f"  {category:22s} {total:6d}  " + ", ".join(f"{r} {n}" for r, n in reasons.items())
            )
    print(
        f"  corpus: {sum(1 for b in bad if b.category.startswith('corpus'))} cases, all as expected"
    )


# -- what the Kafka record format itself cannot describe -------------------------------------


class _RawName(str):
    """A header name whose wire bytes are not UTF-8 (librdkafka sends any bytes)."""

    raw: bytes

    def __new__(cls, raw: bytes) -> _RawName:
        self = super().__new__(cls, raw.decode("latin-1"))
        self.raw = raw
        return self

    def encode(self, *args, **kwargs) -> bytes:  # what kafka-python writes on the wire
        return self.raw


def test_non_utf8_header_name_is_dead_lettered(broker, unique_topic, tmp_path):
    """Issue 21: kafka-python raised CorruptRecordError from poll() for this record and
    then spun in the next one (this test was an xfail). Now the record alone is a dead
    letter (reason bad_header_name, its partition and offset), and the one after it is
    decoded as usual."""
    cfg = service_config(broker, unique_topic, tmp_path, partitions=1)
    headers = [(_RawName(b"\xfftrace"), b"x"), *std_headers(ctype=JSON)]
    producer = make_producer(cfg.kafka)
    try:
        producer.send(cfg.kafka.telemetry_topic, key=b"veh-1", value=b"{", headers=headers)
        producer.flush()
        producer.send(
            cfg.kafka.telemetry_topic, key=b"veh-1", value=b"{", headers=std_headers(ctype=JSON)
        )
        producer.flush()
    finally:
        producer.close()
    metrics = DetectorMetrics(CollectorRegistry())
    detector = Detector(cfg, FLEET, metrics, "det-header-name")
    detector.start()
    try:
        deadline = time.monotonic() + 60
        while sample(metrics, "canwatch_dead_letters_total", reason=wire.BAD_JSON) == 0:
            assert time.monotonic() < deadline, "record neither dead-lettered nor refused"
            detector.step()
    finally:
        detector.close()
    assert sample(metrics, "canwatch_dead_letters_total", reason="bad_header_name") == 1
    assert sample(metrics, "canwatch_unreadable_records_total", reason="bad_header_name") == 1
    dead = read_topic(broker.bootstrap, cfg.kafka.dlq_topic, at_least=2)
    by_reason = {dict(r.headers)["error"]: dict(r.headers) for r in dead}
    poison = by_reason[b"bad_header_name"]
    assert poison["source"] == f"{cfg.kafka.telemetry_topic}/0/0".encode()
    assert poison["source-offsets"] == b"0-0"
    assert b"not UTF-8" in poison["error-detail"]
    assert by_reason[b"bad_json"]["source"] == f"{cfg.kafka.telemetry_topic}/0/1".encode()
