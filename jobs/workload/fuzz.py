"""Bad input records by class, for validation tests and fault drills.

``fuzz_records(n, seed, now_ms)`` returns ``n`` clicks-topic records, each a ``FuzzRecord``
``(cls, key, value, expected_reason)``: the class of defect (one of ``CLICK_CLASSES``), the Kafka
key and value to produce, and the rule code (``udfs.intake.RULE_CODES``) the job must reject it
with (its DeadLetter's ``problems[0].code``; ``reason_code_of`` gives the DeadLetter
``reason_code``). ``fuzz_metadata_records`` does the same for the user-metadata topic. The same
arguments always give the same records.

Time classes are relative to ``now_ms``, the Kafka timestamp the records are expected to get:
on the clicks topic (LogAppendTime) produce them within a minute of ``now_ms``; in tests pass
``now_ms`` as the record timestamp. Every record has a single defect, except ``poison_event_id``,
the issue's 300 KB event_id with a NaN price, a negative quantity and a 1970 time, rejected for
its size before anything reads it.
"""

from __future__ import annotations

import json
import random
import struct
from collections.abc import Callable
from typing import Any, NamedTuple

from schemas.codec import Codec

MIN_MS = 60_000
DAY_MS = 86_400_000


class FuzzRecord(NamedTuple):
    """One bad record: its class, Kafka key and value, and the rule code it must get."""

    cls: str
    key: bytes | None
    value: bytes
    expected_reason: str


def _zz(n: int) -> bytes:
    """An Avro long (zig-zag varint)."""
    raw = (n << 1) ^ (n >> 63)
    out = bytearray()
    while True:
        byte = raw & 0x7F
        raw >>= 7
        if raw:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


class _Base:
    """A valid click of record ``i`` (and the means to break it)."""

    def __init__(self, codec: Codec, rng: random.Random, i: int, seed: int, now_ms: int):
        self.codec = codec
        self.rng = rng
        self.user = f"fz-u-{rng.randrange(10_000):05d}"
        self.event: dict[str, Any] = {
            "event_id": f"fz-{seed}-{i}", "user_id": self.user, "event_type": "ADD_TO_CART",
            "event_time": now_ms - rng.randrange(60_000), "source": "WEB",
            "session_id": f"fz-s-{i}", "page_url": "https://shop.example/p/1",
            "product_id": f"P{rng.randrange(2000):05d}", "category": "shoes",
            "search_query": None, "order_id": None, "currency": "USD",
            "price": round(rng.uniform(1, 300), 2), "quantity": rng.randint(1, 3),
            "properties": {"utm_source": "fuzz"},
        }
        self.now_ms = now_ms

    def key(self) -> bytes:
        return self.user.encode()

    def encode(self, **changes: Any) -> bytes:
        return self.codec.encode("ClickEvent", {**self.event, **changes})

    def enum_patch(self, which: str, index: int) -> bytes:
        """The click with its event_type (or source) enum index forged to ``index``."""
        data = self.encode(event_type="PAGE_VIEW", source="WEB")  # both index 0 -> byte 00
        eid, uid = self.event["event_id"].encode(), self.user.encode()
        at = 10 + len(_zz(len(eid))) + len(eid) + len(_zz(len(uid))) + len(uid)
        if which == "source":
            at += 1 + len(_zz(self.event["event_time"]))
        return data[:at] + _zz(index) + data[at + 1:]


def _price_sign_flip(b: _Base) -> bytes:
    """A single bit flipped in the price's sign: still decodes, now negative."""
    price = b.event["price"]
    data = bytearray(b.encode())
    packed = struct.pack("<d", price)
    at = bytes(data).rindex(packed)
    data[at + 7] ^= 0x80
    return bytes(data)


_Maker = Callable[[_Base], tuple[bytes | None, bytes]]

#: class -> (rule code, maker of (key, value))
_CLICK_MAKERS: dict[str, tuple[str, _Maker]] = {
    "empty": ("EMPTY", lambda b: (b.key(), b"")),
    "json_not_avro": ("NOT_SINGLE_OBJECT", lambda b: (b.key(), json.dumps(
        {"event_id": b.event["event_id"], "user_id": b.user}).encode())),
    "truncated_header": ("NOT_SINGLE_OBJECT", lambda b: (b.key(), b"\xc3\x01"
                                                        + b.rng.randbytes(b.rng.randint(0, 7)))),
    "unknown_fingerprint": ("UNKNOWN_SCHEMA", lambda b: (
        b.key(), b"\xc3\x01" + b"\xee" + b.rng.randbytes(7) + b.encode()[10:])),
    "truncated_body": ("MALFORMED", lambda b: (b.key(), b.encode()[:-7])),
    "trailing_bytes": ("MALFORMED", lambda b: (b.key(), b.encode() + b"\x00\x01\x02")),
    "invalid_utf8_user_id": ("MALFORMED", lambda b: (
        b.key(), b.encode().replace(b.user.encode(), b"\xff\xfe" + b.user.encode()[2:], 1))),
    "wrong_schema": ("WRONG_SCHEMA", lambda b: (b.key(), b.codec.encode("UserMetadata", {
        "user_id": b.user, "country": "DE", "time_zone": "UTC", "plan": "FREE",
        "signup_time": b.now_ms - 30 * DAY_MS, "lifetime_value": 1.0,
        "opt_ins": {"email": True, "sms": False, "push": False, "in_app": False,
                    "paid_social": False}, "updated_at": b.now_ms - DAY_MS}))),
    "negative_enum_index": ("ENUM_INDEX", lambda b: (
        b.key(), b.enum_patch("event_type", b.rng.choice((-1, -10))))),
    "enum_index_too_large": ("ENUM_INDEX", lambda b: (b.key(), b.enum_patch("event_type", 63))),
    "negative_source_index": ("ENUM_INDEX", lambda b: (b.key(), b.enum_patch("source", -1))),
    "bit_flipped_price": ("OUT_OF_RANGE", lambda b: (b.key(), _price_sign_flip(b))),
    "price_nan": ("NOT_FINITE", lambda b: (b.key(), b.encode(price=float("nan")))),
    "price_infinite": ("NOT_FINITE", lambda b: (b.key(), b.encode(
        price=b.rng.choice((float("inf"), float("-inf")))))),
    "price_1e308": ("OUT_OF_RANGE", lambda b: (b.key(), b.encode(price=1e308))),
    "negative_price": ("OUT_OF_RANGE", lambda b: (b.key(), b.encode(price=-0.01))),
    "negative_quantity": ("OUT_OF_RANGE", lambda b: (b.key(), b.encode(
        quantity=b.rng.choice((-1, 0, -2**31))))),
    "huge_quantity": ("OUT_OF_RANGE", lambda b: (b.key(), b.encode(quantity=2**31 - 1))),
    "poison_event_id": ("RECORD_TOO_LARGE", lambda b: (b.key(), b.encode(
        event_id="E" * 300_000, price=float("nan"), quantity=-5, event_time=1000))),
    "long_event_id": ("ID_TOO_LONG", lambda b: (b.key(), b.encode(event_id="e" * 300))),
    "user_id_100kb": ("RECORD_TOO_LARGE", lambda b: (b.key(), b.encode(user_id="u" * 100_000))),
    "long_user_id": ("ID_TOO_LONG", lambda b: (b.key(), b.encode(user_id="u" * 1000))),
    "nul_user_id": ("ID_CONTROL", lambda b: (b.key(), b.encode(user_id="\x00" * 4))),
    "zero_width_user_id": ("ID_BLANK", lambda b: (b.key(), b.encode(
        user_id="\u200b\u200c\ufeff"))),
    "blank_user_id": ("ID_BLANK", lambda b: (b.key(), b.encode(user_id="   "))),
    "empty_event_id": ("ID_BLANK", lambda b: (b.key(), b.encode(event_id=""))),
    "control_chars_event_id": ("ID_CONTROL", lambda b: (b.key(), b.encode(
        event_id=b.event["event_id"] + "\x1b[31m\n"))),
    "string_1mb": ("RECORD_TOO_LARGE", lambda b: (b.key(), b.encode(
        page_url="https://x.example/" + "a" * 1_048_576))),
    "long_string": ("STRING_TOO_LONG", lambda b: (b.key(), b.encode(search_query="q" * 10_000))),
    "huge_properties_map": ("PROPERTIES_TOO_MANY", lambda b: (b.key(), b.encode(
        properties={f"k{j}": "v" for j in range(1000)}))),
    "timestamp_1970": ("TIME_TOO_OLD", lambda b: (b.key(), b.encode(
        event_time=b.rng.choice((0, 1000, 86_400_000))))),
    "too_old": ("TIME_TOO_OLD", lambda b: (b.key(), b.encode(
        event_time=b.now_ms - 60 * DAY_MS))),
    "far_future": ("TIME_IN_FUTURE", lambda b: (b.key(), b.encode(
        event_time=b.rng.choice((4_102_444_800_000, 2**62))))),  # 2100-01-01, ~year 146 million
    "eleven_minutes_ahead": ("TIME_IN_FUTURE", lambda b: (b.key(), b.encode(
        event_time=b.now_ms + 11 * MIN_MS + b.rng.randrange(60_000)))),
    "null_key": ("KEY_MISSING", lambda b: (None, b.encode())),
    "huge_key": ("KEY_TOO_LONG", lambda b: (b"k" * 1024, b.encode())),
}

#: every class of bad clicks-topic record ``fuzz_records`` makes
CLICK_CLASSES = tuple(_CLICK_MAKERS)


def fuzz_records(n: int, seed: int, now_ms: int,
                 classes: tuple[str, ...] = CLICK_CLASSES) -> list[FuzzRecord]:
    """``n`` bad clicks-topic records, the classes taken in turn (each class ``n/len`` times).

    Args:
        n: Number of records; at least 0.
        seed: Seed of every random choice.
        now_ms: The Kafka timestamp the records will get (see the module doc).
        classes: The classes to make (a subset of ``CLICK_CLASSES``), in turn.

    Returns:
        The records, in a seeded shuffled order.

    Raises:
        ValueError: ``n`` is negative or a class is unknown.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    unknown = [c for c in classes if c not in _CLICK_MAKERS]
    if unknown or not classes:
        raise ValueError(f"unknown fuzz classes {unknown}; choose from {', '.join(CLICK_CLASSES)}")
    codec = Codec.load()
    rng = random.Random(f"fuzz-{seed}")  # noqa: S311 - test data, not crypto
    out = []
    for i in range(n):
        cls = classes[i % len(classes)]
        reason, make = _CLICK_MAKERS[cls]
        key, value = make(_Base(codec, rng, i, seed, now_ms))
        out.append(FuzzRecord(cls, key, value, reason))
    rng.shuffle(out)
    return out


def _metadata(user: str, now_ms: int, **changes: Any) -> dict[str, Any]:
    return {"user_id": user, "country": "DE", "time_zone": "Europe/Berlin", "plan": "FREE",
            "signup_time": now_ms - 90 * DAY_MS, "lifetime_value": 120.5,
            "opt_ins": {"email": True, "sms": False, "push": True, "in_app": False,
                        "paid_social": False},
            "updated_at": now_ms - MIN_MS, **changes}


_METADATA_CHANGES: dict[str, tuple[str, dict[str, Any]]] = {
    "metadata_bad_time_zone": ("TIME_ZONE", {"time_zone": "Mars/Olympus_Mons"}),
    "metadata_path_time_zone": ("TIME_ZONE", {"time_zone": "../../etc/passwd"}),
    "metadata_nan_lifetime_value": ("NOT_FINITE", {"lifetime_value": float("nan")}),
    "metadata_huge_lifetime_value": ("OUT_OF_RANGE", {"lifetime_value": 1e300}),
    "metadata_future_updated_at": ("TIME_IN_FUTURE", {"updated_at": 4_102_444_800_000}),
    "metadata_1970_updated_at": ("TIME_TOO_OLD", {"updated_at": 0}),
    "metadata_nul_user_id": ("ID_CONTROL", {"user_id": "\x00"}),
    "metadata_blank_user_id": ("ID_BLANK", {"user_id": "\u200b"}),
}

#: every class of bad user-metadata record ``fuzz_metadata_records`` makes
METADATA_CLASSES = (*_METADATA_CHANGES, "metadata_null_key", "metadata_too_large")


def fuzz_metadata_records(n: int, seed: int, now_ms: int) -> list[FuzzRecord]:
    """``n`` bad user-metadata records, the classes of ``METADATA_CLASSES`` in turn.

    Same contract as ``fuzz_records``; ``now_ms`` is the records' Kafka timestamp.
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    codec = Codec.load()
    rng = random.Random(f"fuzz-metadata-{seed}")  # noqa: S311 - test data, not crypto
    out = []
    for i in range(n):
        cls = METADATA_CLASSES[i % len(METADATA_CLASSES)]
        user = f"fz-m-{rng.randrange(10_000):05d}"
        if cls == "metadata_null_key":
            out.append(FuzzRecord(cls, None, codec.encode("UserMetadata", _metadata(user, now_ms)),
                                  "KEY_MISSING"))
        elif cls == "metadata_too_large":
            out.append(FuzzRecord(cls, user.encode(), codec.encode(
                "UserMetadata", _metadata(user, now_ms, country="X" * 70_000)),
                "RECORD_TOO_LARGE"))
        else:
            reason, changes = _METADATA_CHANGES[cls]
            out.append(FuzzRecord(cls, user.encode(), codec.encode(
                "UserMetadata", _metadata(user, now_ms, **changes)), reason))
    rng.shuffle(out)
    return out

