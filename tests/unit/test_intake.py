"""Tests for udfs.intake (decode, validate, dead letters).

A real ``schemas.codec.Codec`` encodes and decodes; timestamps are fixed, there is no wall clock.
"""

from __future__ import annotations

import math
import random
from typing import Any

import pytest

from schemas.codec import MAGIC, Codec
from tests import builders
from udfs.intake import (
    DEFAULT_MAX_FUTURE_SKEW_MS,
    Rejected,
    SourceRecord,
    click_problems,
    dead_letter,
    decode_click,
)

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z, the event time of every test click
RECORD_TS = T0 + 5_000  # the broker stamped the record 5 s after the event


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load()


def click(**changes: Any) -> dict[str, Any]:
    """One valid PURCHASE with its session, page, product, order and price; ``changes`` over it."""
    event = builders.click("e-1", "u-1", "PURCHASE", T0, session_id="s-1",
                           page_url="https://shop.example/p/42", product_id="p-42",
                           category="shoes", order_id="o-7", currency="EUR", price=19.99,
                           quantity=2, properties={"utm_source": "mail"})
    event.update(changes)
    return event


def record(value: bytes | None, timestamp: int | None = RECORD_TS) -> SourceRecord:
    return SourceRecord(topic="clicks", partition=3, offset=1234, timestamp=timestamp,
                        key=b"u-1", value=value)


def decode_event(codec: Codec, timestamp: int | None = RECORD_TS, **changes: Any) -> Any:
    return decode_click(codec, record(codec.encode("ClickEvent", click(**changes)), timestamp))


# --- decode -------------------------------------------------------------------------------------


def test_valid_click_round_trips(codec: Codec) -> None:
    result = decode_event(codec)
    assert result == click()


def test_minimal_click_gets_defaults(codec: Codec) -> None:
    minimal = {"event_id": "e-2", "user_id": "u-2", "event_type": "PAGE_VIEW", "event_time": T0}
    result = decode_click(codec, record(codec.encode("ClickEvent", minimal)))
    assert isinstance(result, dict)
    assert result["source"] == "UNKNOWN"
    assert result["price"] is None
    assert result["properties"] == {}


@pytest.mark.parametrize("value", [b"", None])
def test_empty_value_is_invalid_avro(codec: Codec, value: bytes | None) -> None:
    result = decode_click(codec, record(value))
    assert isinstance(result, Rejected)
    assert result.reason_code == "INVALID_AVRO"
    assert result.stage == "decode"
    assert "empty record value" in result.reason


def test_garbage_is_invalid_avro(codec: Codec) -> None:
    result = decode_click(codec, record(b'{"event_id": "e-1"}'))
    assert isinstance(result, Rejected)
    assert result.reason_code == "INVALID_AVRO"
    assert result.stage == "decode"
    assert "marker C3 01" in result.reason
    assert "looks like JSON" in result.reason


def test_truncated_header_is_invalid_avro(codec: Codec) -> None:
    result = decode_click(codec, record(MAGIC + b"\x01\x02"))
    assert isinstance(result, Rejected)
    assert result.reason_code == "INVALID_AVRO"
    assert "shorter than the 10-byte header" in result.reason


def test_unknown_fingerprint_is_unknown_schema(codec: Codec) -> None:
    body = codec.encode("ClickEvent", click())[10:]
    fingerprint = random.Random(7).randbytes(8)  # noqa: S311 - a test value, not a secret
    known = {codec.fingerprint(name) for name in codec.schema_names()}
    assert fingerprint not in known
    result = decode_click(codec, record(MAGIC + fingerprint + body))
    assert isinstance(result, Rejected)
    assert result.reason_code == "UNKNOWN_SCHEMA"
    assert result.stage == "decode"
    assert fingerprint.hex() in result.reason
    assert "unknown schema fingerprint" in result.reason


def test_corrupt_body_is_invalid_avro(codec: Codec) -> None:
    data = codec.encode("ClickEvent", click())
    result = decode_click(codec, record(data[:15]))
    assert isinstance(result, Rejected)
    assert result.reason_code == "INVALID_AVRO"
    assert "cannot decode a ClickEvent record" in result.reason


def test_other_record_type_is_invalid_avro(codec: Codec) -> None:
    metadata = builders.metadata_bytes(codec, "u-1", "Europe/Berlin", at=T0, email=True,
                                       in_app=True)
    result = decode_click(codec, record(metadata))
    assert isinstance(result, Rejected)
    assert result.reason_code == "INVALID_AVRO"
    assert result.stage == "decode"
    assert "expected a ClickEvent record but the data holds a UserMetadata record" in (
        result.reason)


# --- field rules --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"user_id": ""}, "field user_id is empty"),
        ({"user_id": "   "}, "field user_id is empty"),
        ({"event_id": ""}, "field event_id is empty"),
        ({"price": -0.01}, "field price is -0.01"),
        ({"price": math.nan}, "field price is nan"),
        ({"quantity": 0}, "field quantity is 0"),
        ({"quantity": -3}, "field quantity is -3"),
        ({"event_time": 0}, "field event_time is 0"),
    ],
)
def test_field_rules(codec: Codec, changes: dict[str, Any], needle: str) -> None:
    result = decode_event(codec, **changes)
    assert isinstance(result, Rejected), result
    assert result.reason_code == "INVALID_FIELD"
    assert result.stage == "validate"
    assert needle in result.reason


def test_problem_names_the_event_id(codec: Codec) -> None:
    result = decode_event(codec, event_id="evt-99", price=-1.0)
    assert isinstance(result, Rejected)
    assert result.reason == "event 'evt-99': field price is -1.0; prices must be >= 0"


def test_several_problems_are_all_reported(codec: Codec) -> None:
    result = decode_event(codec, user_id="", price=-1.0, quantity=0)
    assert isinstance(result, Rejected)
    parts = result.reason.split("; ")
    assert any("user_id" in p for p in parts)
    assert any("price" in p for p in parts)
    assert any("quantity" in p for p in parts)


def test_zero_price_and_null_price_quantity_are_fine(codec: Codec) -> None:
    assert isinstance(decode_event(codec, price=0.0), dict)
    assert isinstance(decode_event(codec, price=None, quantity=None), dict)


def test_event_time_too_far_ahead_of_record_timestamp(codec: Codec) -> None:
    ts = T0 - DEFAULT_MAX_FUTURE_SKEW_MS - 60_000  # the event claims to be 11 min ahead
    result = decode_event(codec, timestamp=ts)
    assert isinstance(result, Rejected)
    assert result.reason_code == "INVALID_FIELD"
    assert "field event_time is 660 s ahead" in result.reason
    assert "allowed: 600 s" in result.reason


def test_event_time_within_skew_is_accepted(codec: Codec) -> None:
    ts = T0 - DEFAULT_MAX_FUTURE_SKEW_MS  # exactly at the limit
    assert decode_event(codec, timestamp=ts) == click()


def test_custom_skew(codec: Codec) -> None:
    data = codec.encode("ClickEvent", click())
    rec = record(data, timestamp=T0 - 2_000)
    assert isinstance(decode_click(codec, rec, max_future_skew_ms=1_000), Rejected)
    assert decode_click(codec, rec, max_future_skew_ms=5_000) == click()


def test_future_event_without_record_timestamp_is_accepted(codec: Codec) -> None:
    far_future = T0 + 10 * 365 * 86_400_000
    assert decode_event(codec, timestamp=None, event_time=far_future) == click(
        event_time=far_future)


def test_click_problems_of_a_valid_event_is_empty() -> None:
    assert click_problems(click(), RECORD_TS, DEFAULT_MAX_FUTURE_SKEW_MS) == []


# --- dead letters -------------------------------------------------------------------------------


def test_dead_letter_encodes_and_keeps_the_raw_record(codec: Codec) -> None:
    raw = b"\x00\x01garbage\xff"
    rec = SourceRecord(topic="clicks", partition=2, offset=77, timestamp=RECORD_TS,
                       key=b"u-9", value=raw)
    rejected = decode_click(codec, rec)
    assert isinstance(rejected, Rejected)
    letter = dead_letter(rec, rejected, failed_at=T0 + 60_000)
    assert letter == {
        "reason_code": "INVALID_AVRO",
        "reason": rejected.reason,
        "source_topic": "clicks",
        "partition": 2,
        "offset": 77,
        "raw": raw,
        "key": b"u-9",
        "stage": "decode",
        "failed_at": T0 + 60_000,
    }
    assert codec.decode(codec.encode("DeadLetter", letter), expect="DeadLetter") == letter


def test_dead_letter_of_a_tombstone(codec: Codec) -> None:
    rec = SourceRecord(topic="clicks", partition=None, offset=None, timestamp=None, key=None,
                       value=None)
    rejected = decode_click(codec, rec)
    assert isinstance(rejected, Rejected)
    letter = dead_letter(rec, rejected, failed_at=T0)
    assert letter["raw"] == b""
    assert letter["key"] is None
    decoded = codec.decode(codec.encode("DeadLetter", letter))
    assert (decoded["partition"], decoded["offset"], decoded["raw"]) == (None, None, b"")


def test_dead_letter_of_an_invalid_field(codec: Codec) -> None:
    data = codec.encode("ClickEvent", click(quantity=0))
    rec = record(data)
    rejected = decode_click(codec, rec)
    assert isinstance(rejected, Rejected)
    letter = codec.decode(codec.encode("DeadLetter", dead_letter(rec, rejected, T0)))
    assert letter["reason_code"] == "INVALID_FIELD"
    assert letter["stage"] == "validate"
    assert letter["raw"] == data
    assert codec.decode(letter["raw"]) == click(quantity=0)  # replayable
