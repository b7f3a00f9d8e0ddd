"""Intake: decode and validate input records; turn a rejected record into a DeadLetter.

Input: one Kafka record of the clicks topic (its bytes and where it came from).
Output: a ClickEvent dict, or a ``Rejected`` carrying the reason, which the adapter turns into a
``DeadLetter`` record for the dead-letter topic. Nothing here raises on bad input.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from schemas.codec import Codec, CodecError, UnknownSchemaError

#: an event more than this far ahead of the Kafka record timestamp is rejected as "in the future"
DEFAULT_MAX_FUTURE_SKEW_MS = 10 * 60 * 1000


@dataclass(frozen=True)
class SourceRecord:
    """A Kafka record as the source hands it over, before its value is interpreted."""

    topic: str
    partition: int | None
    offset: int | None
    timestamp: int | None
    key: bytes | None
    value: bytes | None


@dataclass(frozen=True)
class Rejected:
    """Why a record cannot be processed, in the terms of the DeadLetter schema."""

    reason_code: str
    reason: str
    stage: str


def decode_click(
    codec: Codec, record: SourceRecord, max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS
) -> dict[str, Any] | Rejected:
    """Decode a clicks-topic record into a valid ClickEvent, or say why it is rejected.

    A record is rejected when it is empty, is not single-object Avro, was written with a schema
    this build does not know, is not a ClickEvent, or breaks a field rule (see
    ``click_problems``).
    """
    if not record.value:
        return Rejected("INVALID_AVRO", "empty record value (a tombstone or an empty message)",
                        "decode")
    try:
        event = codec.decode(record.value, expect="ClickEvent")
    except UnknownSchemaError as exc:
        return Rejected("UNKNOWN_SCHEMA", str(exc), "decode")
    except CodecError as exc:
        return Rejected("INVALID_AVRO", str(exc), "decode")
    problems = click_problems(event, record.timestamp, max_future_skew_ms)
    if problems:
        return Rejected("INVALID_FIELD", "; ".join(problems), "validate")
    return event


def click_problems(
    event: dict[str, Any], record_timestamp: int | None, max_future_skew_ms: int
) -> list[str]:
    """The field rules a decoded ClickEvent breaks; empty when it is valid.

    The "future" check compares with the Kafka record timestamp (producer or broker time), not
    with a wall clock, so replays give the same verdicts.
    """
    problems = []
    event_id = event.get("event_id") or ""
    if not event.get("user_id", "").strip():
        problems.append(f"event {event_id!r}: field user_id is empty; every event needs a user")
    if not event_id.strip():
        problems.append("field event_id is empty; producers must assign a unique event id")
    price = event.get("price")
    if price is not None and not price >= 0:  # also catches NaN
        problems.append(f"event {event_id!r}: field price is {price}; prices must be >= 0")
    quantity = event.get("quantity")
    if quantity is not None and quantity <= 0:
        problems.append(f"event {event_id!r}: field quantity is {quantity}; must be > 0")
    event_time = event.get("event_time", 0)
    if event_time <= 0:
        problems.append(f"event {event_id!r}: field event_time is {event_time}; not a real time")
    elif record_timestamp is not None and event_time > record_timestamp + max_future_skew_ms:
        ahead_s = (event_time - record_timestamp) / 1000
        problems.append(
            f"event {event_id!r}: field event_time is {ahead_s:.0f} s ahead of the Kafka record "
            f"timestamp (allowed: {max_future_skew_ms / 1000:.0f} s); check the device clock"
        )
    return problems


def dead_letter(record: SourceRecord, rejected: Rejected, failed_at: int) -> dict[str, Any]:
    """The DeadLetter record for a rejected source record (raw bytes kept for replay)."""
    return {
        "reason_code": rejected.reason_code,
        "reason": rejected.reason,
        "source_topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "raw": record.value or b"",
        "key": record.key,
        "stage": rejected.stage,
        "failed_at": failed_at,
    }
