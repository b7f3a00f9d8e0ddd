"""Tests for udfs.intake (decode, validate, dead letters).

A real ``schemas.codec.Codec`` encodes and decodes; timestamps are fixed, there is no wall clock.
"""

from __future__ import annotations

import hashlib
import math
import random
from typing import Any

import pytest

from schemas.codec import MAGIC, Codec
from tests import builders
from udfs import intake
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
    assert result.reason == (
        "event 'evt-99': field price is -1.0; a price must lie in [0, 1,000,000,000]")


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
        "raw_size": len(raw),
        "raw_sha256": hashlib.sha256(raw).hexdigest(),
        "raw_omitted": False,
        "problems": [{"field": "(record)", "code": "NOT_SINGLE_OBJECT", "value": None,
                      "value_size": None, "value_sha256": None}],
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


# --- limits, ids, keys, the event-time window (issue 19) ---------------------------------------


def _codes(result: Any) -> list[str]:
    assert isinstance(result, Rejected), result
    return [p.code for p in result.problems]


def test_key_must_be_present_and_short(codec: Codec) -> None:
    data = codec.encode("ClickEvent", click())
    ok = SourceRecord("clicks", 0, 1, RECORD_TS, b"u-1", data)
    assert decode_click(codec, ok) == click()
    assert _codes(decode_click(codec, SourceRecord("clicks", 0, 1, RECORD_TS, None, data))) == [
        "KEY_MISSING"]
    assert _codes(decode_click(codec, SourceRecord("clicks", 0, 1, RECORD_TS, b"k" * 257,
                                                   data))) == ["KEY_TOO_LONG"]


@pytest.mark.parametrize(("user_id", "code"), [
    ("\x00", "ID_CONTROL"), ("u\x00", "ID_CONTROL"), ("u\x85", "ID_CONTROL"),
    ("\u200b", "ID_BLANK"), ("\u00a0\u2003", "ID_BLANK"), ("\u0301", "ID_BLANK"),
    ("u" * 257, "ID_TOO_LONG"), ("ü" * 129, "ID_TOO_LONG"),
])
def test_id_rules(codec: Codec, user_id: str, code: str) -> None:
    assert _codes(decode_event(codec, user_id=user_id)) == [code]


@pytest.mark.parametrize("user_id", ["ü" * 128, "用户-7", "u 1", "u" * 256, "\u200bu"])
def test_visible_ids_under_the_limit_are_fine(codec: Codec, user_id: str) -> None:
    assert isinstance(decode_event(codec, user_id=user_id), dict)


def test_record_size_is_checked_before_decoding(codec: Codec) -> None:
    data = codec.encode("ClickEvent", click(page_url="x" * 70_000))
    result = decode_click(codec, record(data))
    assert _codes(result) == ["RECORD_TOO_LARGE"]
    assert isinstance(result, Rejected) and result.reason_code == "TOO_LARGE"
    assert result.stage == "decode"


def test_event_time_window_edges(codec: Codec) -> None:
    limits = intake.Limits(max_future_skew_ms=1000, max_event_age_ms=5000)
    data = codec.encode("ClickEvent", click())
    assert limits.event_time_window(T0) == (T0 - 5000, T0 + 1000)
    for ts, ok in ((T0 - 1000, True), (T0 - 1001, False), (T0 + 5000, True), (T0 + 5001, False)):
        result = decode_click(codec, record(data, ts), limits=limits)
        assert isinstance(result, dict) is ok, (ts, result)
    no_age = intake.Limits(max_event_age_ms=0)
    assert no_age.event_time_window(T0) == (intake.MIN_EVENT_TIME_MS, T0 + 600_000)
    assert no_age.event_time_window(None) == (intake.MIN_EVENT_TIME_MS, None)
    assert _codes(decode_event(codec, timestamp=None, event_time=intake.MIN_EVENT_TIME_MS - 1)) \
        == ["TIME_TOO_OLD"]


def test_metadata_rules(codec: Codec) -> None:
    def meta(**changes: Any) -> Any:
        value = builders.metadata("u-1", "Europe/Berlin", at=T0)
        value.update(changes)
        return intake.decode_metadata(codec, SourceRecord(
            "user-metadata", 0, 1, T0, b"u-1", codec.encode("UserMetadata", value)))

    assert isinstance(meta(), dict)
    assert isinstance(meta(lifetime_value=-25.0), dict)  # net revenue may be negative
    assert _codes(meta(time_zone="Europe/Nowhere")) == ["TIME_ZONE"]
    assert _codes(meta(time_zone="")) == ["TIME_ZONE"]
    assert _codes(meta(lifetime_value=math.inf)) == ["NOT_FINITE"]
    assert _codes(meta(updated_at=T0 + 3_600_000)) == ["TIME_IN_FUTURE"]
    assert _codes(meta(signup_time=-1)) == ["TIME_TOO_OLD"]
    assert _codes(meta(user_id="\x00", updated_at=0)) == ["ID_CONTROL", "TIME_TOO_OLD"]


def test_outcome_rules(codec: Codec) -> None:
    def outcome(**changes: Any) -> Any:
        value = {"outcome_id": "o-1", "trigger_id": "t-1", "user_id": "u-1",
                 "campaign_id": "cart-abandonment-chain/email", "channel": "EMAIL",
                 "outcome": "OPENED", "event_time": T0, "revenue": None, "currency": None}
        value.update(changes)
        return intake.decode_record(codec, "CampaignOutcome", SourceRecord(
            "outcomes", 0, 1, T0, b"u-1", codec.encode("CampaignOutcome", value)))

    assert isinstance(outcome(), dict)
    assert isinstance(outcome(trigger_id=None, outcome="CONVERTED", revenue=19.5,
                              currency="EUR"), dict)
    assert _codes(outcome(event_time=T0 + 3_600_000)) == ["TIME_IN_FUTURE"]
    assert _codes(outcome(outcome_id="")) == ["ID_BLANK"]
    assert _codes(outcome(trigger_id="\x00", revenue=math.nan)) == ["ID_CONTROL", "NOT_FINITE"]
    wrong = intake.decode_record(codec, "CampaignOutcome", SourceRecord(
        "outcomes", 0, 1, T0, b"u-1", codec.encode("UserMetadata", builders.metadata(
            "u-1", at=T0))))
    assert _codes(wrong) == ["WRONG_SCHEMA"]


def test_definition_rules(codec: Codec) -> None:
    def definition(definition_id: str, body: str = "{}") -> bytes:
        return codec.encode("DefinitionUpdate", {
            "definition_id": definition_id, "kind": "SEGMENT", "action": "UPSERT", "version": 1,
            "body": body, "checksum": "0" * 64, "published_at": T0, "published_by": None})

    def decode(value: bytes, key: bytes | None = b"d") -> Any:
        return intake.decode_definition(codec, SourceRecord("definitions", 0, 1, T0, key, value))

    assert isinstance(decode(definition("seg-1")), dict)
    assert _codes(decode(definition("\x00"))) == ["ID_CONTROL"]
    assert _codes(decode(definition("seg-1", "x" * 300_000))) == ["RECORD_TOO_LARGE"]
    assert _codes(decode(definition("seg-1"), None)) == ["KEY_MISSING"]


def test_dead_letter_is_bounded(codec: Codec) -> None:
    value = b"\xc3\x01" + b"z" * 100_000
    rec = SourceRecord("clicks", 1, 2, T0, b"k" * 5000, value)
    rejected = Rejected("INVALID_FIELD", "x" * 50_000, "validate")
    letter = dead_letter(rec, rejected, T0, raw_max_bytes=65_536)
    assert letter["raw"] == b"" and letter["raw_omitted"] is True
    assert letter["raw_size"] == len(value)
    assert letter["raw_sha256"] == hashlib.sha256(value).hexdigest()
    assert len(letter["key"]) == intake.DEAD_LETTER_KEY_MAX_BYTES
    assert len(letter["reason"]) == intake.REASON_MAX_CHARS
    assert len(codec.encode("DeadLetter", letter)) < intake.dead_letter_bound(65_536)
    kept = dead_letter(rec, rejected, T0, raw_max_bytes=len(value))
    assert kept["raw"] == value and kept["raw_omitted"] is False


# --- tombstones on user-metadata: erasure requests (issue 15) ----------------------------------


def tombstone(key: bytes | None, timestamp: int | None = RECORD_TS) -> SourceRecord:
    return SourceRecord("user-metadata", 2, 77, timestamp, key, None)


def test_a_keyed_tombstone_is_an_erasure_request(codec: Codec) -> None:
    assert intake.decode_metadata(codec, tombstone(b"u-1")) == intake.ErasureRequest(
        "u-1", RECORD_TS)
    assert intake.decode_record(codec, "UserMetadata", tombstone("用户-7".encode())) == \
        intake.ErasureRequest("用户-7", RECORD_TS)
    # a record without a timestamp (or a broken one) still erases; the engine uses its own time
    assert intake.decode_metadata(codec, tombstone(b"u-1", None)).requested_at == \
        intake.MIN_EVENT_TIME_MS
    assert intake.decode_metadata(codec, tombstone(b"u-1", -1)).requested_at == \
        intake.MIN_EVENT_TIME_MS


def test_a_tombstone_without_a_key_is_dead_lettered_saying_why(codec: Codec) -> None:
    for key in (None, b""):
        rejected = intake.decode_metadata(codec, tombstone(key))
        assert _codes(rejected) == ["KEY_MISSING"]
        assert isinstance(rejected, Rejected)
        assert rejected.reason.startswith("tombstone (null value) on user-metadata: ")
        assert "no user to erase" in rejected.reason
        letter = codec.decode(codec.encode("DeadLetter", dead_letter(
            tombstone(key), rejected, T0)), expect="DeadLetter")
        assert (letter["reason_code"], letter["raw"], letter["key"]) == (
            "INVALID_FIELD", b"", key)
        assert (letter["source_topic"], letter["partition"], letter["offset"]) == (
            "user-metadata", 2, 77)


@pytest.mark.parametrize(("key", "code"), [
    (b"k" * 257, "KEY_TOO_LONG"), (b"\xff\xfe", "KEY_NOT_UTF8"), (b"u\x00", "ID_CONTROL"),
    ("\u200b".encode(), "ID_BLANK"), (b"   ", "ID_BLANK"),
])
def test_a_tombstone_whose_key_is_no_user_id_is_dead_lettered(codec: Codec, key: bytes,
                                                               code: str) -> None:
    assert _codes(intake.decode_metadata(codec, tombstone(key))) == [code]


def test_an_empty_value_is_not_a_tombstone(codec: Codec) -> None:
    # Kafka compaction treats only a null value as a tombstone; an empty one is a broken record
    empty = SourceRecord("user-metadata", 0, 1, RECORD_TS, b"u-1", b"")
    assert _codes(intake.decode_metadata(codec, empty)) == ["EMPTY"]
    # and a tombstone on the clicks topic is no erasure either
    assert _codes(decode_click(codec, SourceRecord("clicks", 0, 1, RECORD_TS, b"u-1", None))) \
        == ["EMPTY"]
