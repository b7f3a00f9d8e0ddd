"""Intake: decode and validate input records; turn a rejected record into a DeadLetter.

Input: one Kafka record of the clicks, user-metadata or definitions topic (its bytes and where
it came from) and the ``Limits`` of the job's configuration.
Output: the decoded record (a dict), an ``ErasureRequest`` (a user-metadata tombstone: the user
is to be erased), or a ``Rejected`` carrying the reason and one ``Problem`` per thing wrong,
which the adapter turns into a ``DeadLetter`` for the dead-letter topic. Nothing here raises on
bad input.

The checks run cheapest first, and nothing reads a field before the record passed the checks
it depends on: the size of the value (before it is decoded), the key, the single-object header
and schema (``schemas.codec``, which also rejects out-of-range enum indexes), then the field
rules (``click_problems``, ``metadata_problems``). The rules and limits are in README, "Decode
and validate"; the clicks source applies the same time rule, header, schema, enum and id-length
checks in Java (``ClickEventTimeAssigner``) so that a record rejected here never moves a
watermark.
"""

from __future__ import annotations

import hashlib
import math
import re
import unicodedata
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from functools import lru_cache
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from schemas.codec import (
    Codec,
    CodecError,
    InvalidEnumIndexError,
    NotSingleObjectError,
    UnknownSchemaError,
    WrongSchemaError,
)

#: an event more than this far ahead of the Kafka record timestamp is rejected as "in the future"
DEFAULT_MAX_FUTURE_SKEW_MS: Final = 10 * 60 * 1000
#: no event, update or signup time is earlier than this (2000-01-01T00:00:00Z): an earlier one is
#: a missing or broken clock (0, 1970), never a real click
MIN_EVENT_TIME_MS: Final = 946_684_800_000
DAY_MS: Final = 86_400_000
#: a DeadLetter's ``key`` keeps at most this many bytes of the record's key
DEAD_LETTER_KEY_MAX_BYTES: Final = 1024
#: a problem shows at most this many characters of the offending value
PREVIEW_CHARS: Final = 64
#: a DeadLetter's ``reason`` is cut to at most this many characters
REASON_MAX_CHARS: Final = 4096
#: a DeadLetter lists at most this many problems (a click can break at most 15 rules)
MAX_PROBLEMS: Final = 32

# rule codes (DeadLetter.problems[].code) and the DeadLetter reason_code each maps to
_REASON_CODES: Final = {
    "EMPTY": "INVALID_AVRO",
    "NOT_SINGLE_OBJECT": "INVALID_AVRO",
    "MALFORMED": "INVALID_AVRO",
    "ENUM_INDEX": "INVALID_AVRO",
    "WRONG_SCHEMA": "INVALID_AVRO",
    "UNKNOWN_SCHEMA": "UNKNOWN_SCHEMA",
    "RECORD_TOO_LARGE": "TOO_LARGE",
}
#: every rule code a record can be rejected with (the field rules map to INVALID_FIELD)
RULE_CODES: Final = (
    *_REASON_CODES, "KEY_MISSING", "KEY_TOO_LONG", "KEY_NOT_UTF8", "ID_BLANK", "ID_CONTROL",
    "ID_TOO_LONG",
    "STRING_TOO_LONG", "PROPERTIES_TOO_MANY", "NOT_FINITE", "OUT_OF_RANGE", "TIME_IN_FUTURE",
    "TIME_TOO_OLD", "TIME_ZONE", "KEY_MISMATCH", "DEFINITIONS_NOT_IN_FORCE",
)


def reason_code_of(rule_code: str) -> str:
    """The DeadLetter ``reason_code`` of a record whose first problem has ``rule_code``."""
    return _REASON_CODES.get(rule_code, "INVALID_FIELD")


@dataclass(frozen=True)
class Limits:
    """What intake accepts: sizes, ranges and the event-time window.

    The job's configuration fields of the same names set them; these defaults are the
    configuration's.
    """

    max_record_bytes: int = 65_536
    """A clicks or user-metadata value longer than this is rejected before it is decoded."""
    max_definition_bytes: int = 262_144
    """The same for a definitions-topic value."""
    max_id_bytes: int = 256
    """Ids (event_id, user_id, session/product/order id, definition_id), the Kafka key and
    property names: at most this many UTF-8 bytes."""
    max_string_bytes: int = 4096
    """Any other string field and each property value: at most this many UTF-8 bytes."""
    max_properties: int = 64
    """A click's ``properties`` map holds at most this many entries."""
    max_price: int = 1_000_000_000
    """A click's unit price lies in [0, max_price] and is finite."""
    max_quantity: int = 1_000_000
    """A click's quantity lies in [1, max_quantity]."""
    max_lifetime_value: int = 1_000_000_000_000
    """A user's lifetime value lies in [-max, +max] and is finite (it is net revenue)."""
    max_future_skew_ms: int = DEFAULT_MAX_FUTURE_SKEW_MS
    """An event (or metadata update) time at most this far ahead of the record's Kafka
    timestamp."""
    max_event_age_ms: int = 30 * DAY_MS
    """An event time at most this far behind the record's Kafka timestamp (clicks only; 0: no
    limit). Never earlier than MIN_EVENT_TIME_MS either way."""
    dead_letter_raw_max_bytes: int = 65_536
    """A DeadLetter keeps the original value in ``raw`` up to this size, else by reference."""

    def __reduce__(self) -> tuple[type[Limits], tuple[int, ...]]:
        # the job's functions are pickled with their limits; a compiled (mypyc) frozen class
        # cannot be restored field by field, so it is rebuilt by its constructor
        return Limits, tuple(getattr(self, f.name) for f in fields(self))

    def event_time_window(self, record_timestamp: int | None) -> tuple[int, int | None]:
        """The accepted [low, high] event time of a click appended at ``record_timestamp``.

        low = max(2000-01-01, timestamp - max_event_age_ms) (2000-01-01 alone when the age
        limit is 0 or there is no timestamp); high = timestamp + max_future_skew_ms, None (no
        bound) without a timestamp. The Java assigner of the clicks source computes the same.
        """
        if record_timestamp is None or record_timestamp < 0:
            return MIN_EVENT_TIME_MS, None
        low = MIN_EVENT_TIME_MS
        if self.max_event_age_ms > 0:
            low = max(low, record_timestamp - self.max_event_age_ms)
        return low, record_timestamp + self.max_future_skew_ms


DEFAULT_LIMITS: Final = Limits()


@dataclass(frozen=True)
class SourceRecord:
    """A Kafka record as the source hands it over, before its value is interpreted."""

    topic: str
    partition: int | None
    offset: int | None
    timestamp: int | None
    key: bytes | None
    value: bytes | None

    def __init__(self, topic: str, partition: int | None, offset: int | None,
                 timestamp: int | None, key: bytes | None, value: bytes | None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        object.__setattr__(self, "topic", topic)
        object.__setattr__(self, "partition", partition)
        object.__setattr__(self, "offset", offset)
        object.__setattr__(self, "timestamp", timestamp)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "value", value)


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a record.

    The field, the rule it breaks (a code of RULE_CODES), a message for people and the
    offending value (shown cut to PREVIEW_CHARS in the DeadLetter).
    """

    field: str
    code: str
    message: str
    value: Any = None


@dataclass(frozen=True)
class Rejected:
    """Why a record cannot be processed, in the terms of the DeadLetter schema."""

    reason_code: str
    reason: str
    stage: str
    problems: tuple[Problem, ...] = field(default=())


@dataclass(frozen=True)
class ErasureRequest:
    """A tombstone (null value) on the user-metadata topic: erase the user its key names.

    ``requested_at`` is the tombstone's Kafka record timestamp (``MIN_EVENT_TIME_MS`` when the
    record has none, or one before that); the engine erases at once, at the user's own event
    time, and uses it only for a user it has no clock for (``udfs.engine.Erasure``).
    """

    user_id: str
    requested_at: int


def _reject(stage: str, problems: list[Problem], subject: str = "") -> Rejected:
    """A Rejected for ``problems``: the reason code of the first, every message in reason.

    ``subject`` (e.g. which event) comes first; values appear only cut short.
    """
    reason_code = reason_code_of(problems[0].code)
    reason = subject + "; ".join(p.message for p in problems)
    if len(reason) > REASON_MAX_CHARS:
        reason = reason[: REASON_MAX_CHARS - 1] + "…"
    return Rejected(reason_code, reason, stage, tuple(problems))


def click_time_rule_args(limits: Limits, codec: Codec) -> tuple[int, int, int, int, int, str]:
    """The constructor arguments of the clicks source's Java ``ClickEventTimeAssigner``.

    (max_future_skew_ms, max_event_age_ms, MIN_EVENT_TIME_MS, max_id_bytes, max_record_bytes,
    layouts), where layouts lists every ClickEvent version the codec reads as
    ``<fingerprint hex>:<EventType symbols>[:<EventSource symbols>]``: the assigner applies the
    same time rule, size and id limits and enum ranges as this module, from these values only.

    Raises:
        ValueError: a ClickEvent version does not start with event_id, user_id, event_type,
            event_time (the layout the assigner reads).
    """
    layouts = []
    for version, fingerprint, schema in codec.versions("ClickEvent"):
        fields = schema["fields"]
        names = [f["name"] for f in fields[:4]]
        if names != ["event_id", "user_id", "event_type", "event_time"]:
            raise ValueError(f"ClickEvent version {version} starts with {names}; the clicks "
                             "source's Java assigner reads event_id, user_id, event_type, "
                             "event_time: keep that order in schemas/ClickEvent.avsc")
        entry = f"{fingerprint.hex()}:{len(fields[2]['type']['symbols'])}"
        if len(fields) > 4 and fields[4]["name"] == "source":
            entry += f":{len(fields[4]['type']['symbols'])}"
        layouts.append(entry)
    return (limits.max_future_skew_ms, limits.max_event_age_ms, MIN_EVENT_TIME_MS,
            limits.max_id_bytes, limits.max_record_bytes, ",".join(layouts))


# --- decoding --------------------------------------------------------------------------------


def decode_click(
    codec: Codec, record: SourceRecord, max_future_skew_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> dict[str, Any] | Rejected:
    """Decode a clicks-topic record into a valid ClickEvent, or say why it is rejected.

    A record is rejected when it is empty, over ``limits.max_record_bytes``, has no key or a
    key over ``limits.max_id_bytes``, is not single-object Avro, was written with a schema this
    build does not know, is not a ClickEvent, has an enum index out of range, or breaks a field
    rule (see ``click_problems``). ``max_future_skew_ms``, when given, overrides the limit's.
    """
    if max_future_skew_ms is not None and max_future_skew_ms != limits.max_future_skew_ms:
        limits = _with_skew(limits, max_future_skew_ms)
    decoded = _decode(codec, record, "ClickEvent", limits.max_record_bytes, limits)
    if isinstance(decoded, Rejected):
        return decoded
    problems = click_problems(decoded, record.timestamp, limits.max_future_skew_ms, limits)
    if problems:
        return _reject("validate", problems,
                       f"event {_preview(str(decoded.get('event_id')))!r}: ")
    return decoded


def decode_metadata(codec: Codec, record: SourceRecord, limits: Limits = DEFAULT_LIMITS
                    ) -> dict[str, Any] | ErasureRequest | Rejected:
    """Decode a user-metadata record into a valid UserMetadata, or say why it is rejected.

    The same checks as a click's before decoding, then ``metadata_problems``. A null value (a
    tombstone: the user asked to be forgotten) is an ``ErasureRequest`` for the user its key
    names (``erasure_request``); an empty but not null value is still rejected as empty.
    """
    if record.value is None:
        return erasure_request(record, limits)
    decoded = _decode(codec, record, "UserMetadata", limits.max_record_bytes, limits)
    if isinstance(decoded, Rejected):
        return decoded
    problems = metadata_problems(decoded, record.timestamp, limits)
    if problems:
        return _reject("validate", problems,
                       f"metadata of user {_preview(str(decoded.get('user_id')))!r}: ")
    return decoded


def erasure_request(record: SourceRecord, limits: Limits = DEFAULT_LIMITS
                    ) -> ErasureRequest | Rejected:
    """The ``ErasureRequest`` of a user-metadata tombstone, or why it names no user.

    The key is the user id (UTF-8), under the same id rules as a UserMetadata's ``user_id``. A
    tombstone without a key (or with an empty one) cannot say whom to erase: it is rejected
    (``KEY_MISSING``), as are a key over the id limit, one that is not UTF-8 and one that breaks
    an id rule, so the dead letter tells the producer what to fix.
    """
    key = record.key
    subject = "tombstone (null value) on user-metadata: "
    if not key:
        return _reject("validate", [Problem(
            "(key)", "KEY_MISSING",
            "the record has no key, so there is no user to erase; producers must key a user's "
            "tombstone by their user_id (UTF-8), like their UserMetadata records",
            None if key is None else "")], subject)
    key_problem = _key_problem(key, limits.max_id_bytes, "UserMetadata")
    if key_problem is not None:
        return _reject("validate", [key_problem], subject)
    try:
        user_id = key.decode("utf-8")
    except UnicodeDecodeError as exc:
        return _reject("validate", [Problem(
            "(key)", "KEY_NOT_UTF8",
            f"the key is not UTF-8 ({exc.reason} at byte {exc.start}), so it cannot be a user "
            "id; producers must key a user's tombstone by their user_id encoded as UTF-8",
            key.decode("utf-8", "replace"))], subject)
    problems = id_problems("user_id", user_id, limits.max_id_bytes)
    if problems:
        return _reject("validate", problems, subject)
    timestamp = record.timestamp
    if timestamp is None or timestamp < MIN_EVENT_TIME_MS:
        timestamp = MIN_EVENT_TIME_MS
    return ErasureRequest(user_id, timestamp)


def decode_outcome(codec: Codec, record: SourceRecord,
                   limits: Limits = DEFAULT_LIMITS) -> dict[str, Any] | Rejected:
    """Decode an outcomes-topic record into a valid CampaignOutcome, or say why it is rejected.

    The same checks as a click's before decoding, then ``outcome_problems``.
    """
    decoded = _decode(codec, record, "CampaignOutcome", limits.max_record_bytes, limits)
    if isinstance(decoded, Rejected):
        return decoded
    problems = outcome_problems(decoded, record.timestamp, limits)
    if problems:
        return _reject("validate", problems,
                       f"outcome {_preview(str(decoded.get('outcome_id')))!r}: ")
    return decoded


def decode_backfill(codec: Codec, record: SourceRecord,
                    limits: Limits = DEFAULT_LIMITS) -> dict[str, Any] | Rejected:
    """Decode a backfill-requests record into a valid BackfillRequest, or say why it is rejected.

    The same checks as every topic's before decoding; then ``user_id``, ``backfill_id`` and
    every definition id must be printable ids, every version at least 1, and the key (the
    user id the request was routed by) equal to ``user_id``.
    """
    decoded = _decode(codec, record, "BackfillRequest", limits.max_record_bytes, limits)
    if isinstance(decoded, Rejected):
        return decoded
    problems = [*id_problems("user_id", decoded["user_id"], limits.max_id_bytes),
                *id_problems("backfill_id", decoded["backfill_id"], limits.max_id_bytes)]
    for name, version in sorted(decoded["definitions"].items()):
        problems.extend(id_problems(f"definitions[{name!r}]", name, limits.max_id_bytes))
        if version < 1:
            problems.append(Problem(f"definitions[{name!r}]", "OUT_OF_RANGE",
                                    f"definition {name!r} has version {version}; versions start "
                                    "at 1", version))
    key = (record.key or b"").decode("utf-8", "replace")
    if not problems and key != decoded["user_id"]:
        problems.append(Problem("(key)", "KEY_MISMATCH",
                                f"the record key {_preview(key)!r} is not its user_id "
                                f"{_preview(decoded['user_id'])!r}; key each request by the "
                                "user it names", key))
    if problems:
        return _reject("validate", problems[:MAX_PROBLEMS],
                       f"backfill request {_preview(str(decoded['backfill_id']))!r}: ")
    return decoded


def decode_definition(codec: Codec, record: SourceRecord,
                      limits: Limits = DEFAULT_LIMITS) -> dict[str, Any] | Rejected:
    """Decode a definitions-topic record into a DefinitionUpdate, or say why it is rejected.

    Checks the size (``limits.max_definition_bytes``), the key, the header and schema, and that
    ``definition_id`` is a printable id; the definition itself is checked when it is applied
    (``INVALID_DEFINITION``).
    """
    decoded = _decode(codec, record, "DefinitionUpdate", limits.max_definition_bytes, limits)
    if isinstance(decoded, Rejected):
        return decoded
    problems = id_problems("definition_id", decoded["definition_id"], limits.max_id_bytes)
    if problems:
        return _reject("validate", problems)
    return decoded


def decode_record(codec: Codec, schema: str, record: SourceRecord,
                  limits: Limits = DEFAULT_LIMITS
                  ) -> dict[str, Any] | ErasureRequest | Rejected:
    """Decode and validate a record of ``schema``: ``decode_click``, ``decode_outcome``, ...

    ClickEvent, UserMetadata, CampaignOutcome and DefinitionUpdate have rules; only a
    UserMetadata tombstone gives an ``ErasureRequest``.
    """
    if schema == "ClickEvent":
        return decode_click(codec, record, limits=limits)
    if schema == "UserMetadata":
        return decode_metadata(codec, record, limits)
    if schema == "CampaignOutcome":
        return decode_outcome(codec, record, limits)
    if schema == "DefinitionUpdate":
        return decode_definition(codec, record, limits)
    if schema == "BackfillRequest":
        return decode_backfill(codec, record, limits)
    raise ValueError(f"no intake rules for {schema!r}; use ClickEvent, UserMetadata, "
                     "CampaignOutcome, DefinitionUpdate or BackfillRequest")


def _decode(codec: Codec, record: SourceRecord, schema: str, max_bytes: int,
            limits: Limits) -> dict[str, Any] | Rejected:
    """The checks before and of decoding, shared by every topic."""
    value = record.value
    if not value:
        return _reject("decode", [Problem(
            "(record)", "EMPTY",
            "empty record value (a tombstone or an empty message); producers must send an "
            f"encoded {schema}")])
    if len(value) > max_bytes:
        return _reject("decode", [Problem(
            "(record)", "RECORD_TOO_LARGE",
            f"the record value is {len(value)} bytes, over the limit of {max_bytes} bytes; it "
            "was not decoded. Check the producer (a runaway field?) or raise the limit", None)])
    key_problem = _key_problem(record.key, limits.max_id_bytes, schema)
    try:
        decoded = codec.decode(value, expect=schema)
    except CodecError as exc:
        # one clause: compiled (mypyc), a chain of ``except X as exc`` types every ``exc`` by
        # the first clause's class
        problem = Problem("(record)", _decode_code(exc), str(exc))
    else:
        if key_problem is not None:
            return _reject("validate", [key_problem])
        return decoded
    return _reject("decode", [problem] if key_problem is None else [problem, key_problem])


def _decode_code(exc: CodecError) -> str:
    """The reason code of a record the codec could not decode."""
    if isinstance(exc, InvalidEnumIndexError):
        return "ENUM_INDEX"
    if isinstance(exc, NotSingleObjectError):
        return "NOT_SINGLE_OBJECT"
    if isinstance(exc, UnknownSchemaError):
        return "UNKNOWN_SCHEMA"
    if isinstance(exc, WrongSchemaError):
        return "WRONG_SCHEMA"
    return "MALFORMED"


def _key_problem(key: bytes | None, max_bytes: int, schema: str) -> Problem | None:
    if key is None:
        id_field = "definition_id" if schema == "DefinitionUpdate" else "user_id"
        return Problem("(key)", "KEY_MISSING",
                       f"the Kafka record has no key; producers must key {schema} records by "
                       f"their {id_field} (UTF-8)")
    if len(key) > max_bytes:
        return Problem("(key)", "KEY_TOO_LONG",
                       f"the Kafka record key is {len(key)} bytes, over the id limit of "
                       f"{max_bytes} bytes", key.decode("utf-8", "replace"))
    return None


def _with_skew(limits: Limits, max_future_skew_ms: int) -> Limits:
    return replace(limits, max_future_skew_ms=max_future_skew_ms)


# --- field rules -----------------------------------------------------------------------------

_INVISIBLE: Final = frozenset(("Cc", "Cf", "Cs", "Co", "Cn", "Zs", "Zl", "Zp", "Mn", "Me"))


def id_problems(name: str, value: Any, max_bytes: int, required: bool = True) -> list[Problem]:
    """The rules an id field breaks, at most one Problem.

    An id is present and not blank (only spaces or invisible characters such as a zero-width
    space), has no control characters (NUL included) and at most ``max_bytes`` UTF-8 bytes.
    An optional id (``required`` False) may be None or blank.
    """
    if value is None:
        if not required:
            return []
        value = ""
    size = _utf8_size(value)
    if size > max_bytes:
        return [Problem(name, "ID_TOO_LONG",
                        f"field {name} is {size} bytes, over the id limit of {max_bytes}", value)]
    if value.isascii():
        if not value.isprintable():
            return [Problem(name, "ID_CONTROL",
                            f"field {name} holds control characters (NUL, tab, newline...)",
                            value)]
        if required and not value.strip():
            return [Problem(name, "ID_BLANK",
                            f"field {name} is empty or blank; every record needs one", value)]
        return []
    categories = [unicodedata.category(ch) for ch in value]
    if "Cc" in categories:
        return [Problem(name, "ID_CONTROL",
                        f"field {name} holds control characters (NUL, tab, newline...)", value)]
    if required and all(c in _INVISIBLE or ch.isspace() for c, ch in zip(categories, value,
                                                                          strict=True)):
        return [Problem(name, "ID_BLANK",
                        f"field {name} has only spaces or invisible characters (e.g. zero-width "
                        "spaces); every record needs a visible id", value)]
    return []


def _utf8_size(text: str) -> int:
    """The UTF-8 length of ``text``, without encoding it when it is ASCII."""
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def _string_problem(name: str, value: Any, max_bytes: int) -> Problem | None:
    if value is None or len(value) * 4 <= max_bytes:
        return None
    size = _utf8_size(value)
    if size <= max_bytes:
        return None
    return Problem(name, "STRING_TOO_LONG",
                   f"field {name} is {size} bytes, over the limit of {max_bytes}", value)


def _number_problems(name: str, value: Any, low: int | float, high: int | float,
                     what: str) -> list[Problem]:
    if value is None:
        return []
    if isinstance(value, float) and not math.isfinite(value):
        return [Problem(name, "NOT_FINITE", f"field {name} is {value}; {what} must be a finite "
                        "number", value)]
    if not low <= value <= high:
        return [Problem(name, "OUT_OF_RANGE", f"field {name} is {value}; {what} must lie in "
                        f"[{low:,}, {high:,}]", value)]
    return []


def _time_problems(name: str, t: int, low: int, high: int | None,
                   record_timestamp: int | None) -> list[Problem]:
    if t < low:
        if low == MIN_EVENT_TIME_MS:
            why = "before 2000-01-01: the producer's clock is unset or broken"
        elif low == 0:
            why = "before 1970-01-01"
        else:
            why = (f"{(record_timestamp or 0) - t} ms before the Kafka record timestamp, "
                   f"older than allowed ({(record_timestamp or 0) - low} ms)")
        return [Problem(name, "TIME_TOO_OLD", f"field {name} is {t}, {why}", t)]
    if high is not None and t > high:
        ahead_s = (t - (record_timestamp or 0)) / 1000
        allowed_s = (high - (record_timestamp or 0)) / 1000
        return [Problem(name, "TIME_IN_FUTURE",
                        f"field {name} is {ahead_s:.0f} s ahead of the Kafka record timestamp "
                        f"(allowed: {allowed_s:.0f} s); check the device clock", t)]
    return []


def click_problems(
    event: dict[str, Any], record_timestamp: int | None, max_future_skew_ms: int | None = None,
    limits: Limits = DEFAULT_LIMITS,
) -> list[Problem]:
    """The field rules a decoded ClickEvent breaks, one Problem each; empty when it is valid.

    Time checks compare with the Kafka record timestamp (the broker's append time on the clicks
    topic), not with a wall clock, so replays give the same verdicts. ``max_future_skew_ms``,
    when given, overrides the limit's.
    """
    if max_future_skew_ms is not None and max_future_skew_ms != limits.max_future_skew_ms:
        limits = _with_skew(limits, max_future_skew_ms)
    problems = id_problems("event_id", event.get("event_id"), limits.max_id_bytes)
    problems += id_problems("user_id", event.get("user_id"), limits.max_id_bytes)
    for name in ("session_id", "product_id", "order_id"):
        problems += id_problems(name, event.get(name), limits.max_id_bytes, required=False)
    for name in ("page_url", "category", "search_query", "currency"):
        string_problem = _string_problem(name, event.get(name), limits.max_string_bytes)
        if string_problem is not None:
            problems.append(string_problem)
    problems += _number_problems("price", event.get("price"), 0, limits.max_price, "a price")
    problems += _number_problems("quantity", event.get("quantity"), 1, limits.max_quantity,
                                 "a quantity")
    properties = event.get("properties") or {}
    if len(properties) > limits.max_properties:
        problems.append(Problem("properties", "PROPERTIES_TOO_MANY",
                                f"field properties has {len(properties)} entries, over the limit "
                                f"of {limits.max_properties}", len(properties)))
    else:
        for key, value in properties.items():
            if _utf8_size(key) > limits.max_id_bytes:
                problems.append(Problem("properties", "STRING_TOO_LONG",
                                        f"a properties key is {_utf8_size(key)} bytes, over the "
                                        f"limit of {limits.max_id_bytes}", key))
                break
            value_problem = _string_problem("properties", value, limits.max_string_bytes)
            if value_problem is not None:
                problems.append(value_problem)
                break
    low, high = limits.event_time_window(record_timestamp)
    problems += _time_problems("event_time", event.get("event_time", 0), low, high,
                               record_timestamp)
    return problems


@lru_cache(maxsize=1024)
def _known_zone(name: str) -> bool:
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return False
    return True


_ZONE_NAME: Final = re.compile(r"^[A-Za-z][A-Za-z0-9_+\-]*(/[A-Za-z0-9_+\-]+){0,2}$")


def metadata_problems(record: Mapping[str, Any], record_timestamp: int | None,
                      limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    """The field rules a decoded UserMetadata breaks, one Problem each; empty when valid.

    user_id is an id; country a string under the limit; time_zone an IANA name this Python
    knows; lifetime_value finite within +-max_lifetime_value; updated_at and signup_time not
    before 2000-01-01 (signup_time not before the epoch) nor more than max_future_skew_ms ahead
    of the record timestamp. No age limit: a compacted topic keeps old profiles on purpose.
    """
    problems = id_problems("user_id", record.get("user_id"), limits.max_id_bytes)
    country_problem = _string_problem("country", record.get("country"), limits.max_string_bytes)
    if country_problem is not None:
        problems.append(country_problem)
    zone = record.get("time_zone") or ""
    if len(zone) > 64 or not _ZONE_NAME.match(zone) or not _known_zone(zone):
        problems.append(Problem("time_zone", "TIME_ZONE",
                                f"field time_zone is not an IANA time zone name such as "
                                f"Europe/Berlin (got {_preview(zone)!r})", zone))
    problems += _number_problems("lifetime_value", record.get("lifetime_value"),
                                 -limits.max_lifetime_value, limits.max_lifetime_value,
                                 "a lifetime value")
    high = (None if record_timestamp is None or record_timestamp < 0
            else record_timestamp + limits.max_future_skew_ms)
    problems += _time_problems("updated_at", record.get("updated_at", 0), MIN_EVENT_TIME_MS,
                               high, record_timestamp)
    problems += _time_problems("signup_time", record.get("signup_time", 0), 0, high,
                               record_timestamp)
    return problems


def outcome_problems(record: Mapping[str, Any], record_timestamp: int | None,
                     limits: Limits = DEFAULT_LIMITS) -> list[Problem]:
    """The field rules a decoded CampaignOutcome breaks, one Problem each; empty when valid.

    outcome_id, user_id and campaign_id are ids (trigger_id too, when set); event_time not
    before 2000-01-01 nor more than max_future_skew_ms ahead of the record timestamp; revenue,
    when set, finite within +-max_lifetime_value.
    """
    problems = id_problems("outcome_id", record.get("outcome_id"), limits.max_id_bytes)
    problems += id_problems("user_id", record.get("user_id"), limits.max_id_bytes)
    problems += id_problems("campaign_id", record.get("campaign_id"), limits.max_id_bytes)
    problems += id_problems("trigger_id", record.get("trigger_id"), limits.max_id_bytes,
                            required=False)
    high = (None if record_timestamp is None or record_timestamp < 0
            else record_timestamp + limits.max_future_skew_ms)
    problems += _time_problems("event_time", record.get("event_time", 0), MIN_EVENT_TIME_MS,
                               high, record_timestamp)
    problems += _number_problems("revenue", record.get("revenue"), -limits.max_lifetime_value,
                                 limits.max_lifetime_value, "revenue")
    return problems


# --- dead letters ----------------------------------------------------------------------------


def _preview(text: str) -> str:
    return text if len(text) <= PREVIEW_CHARS else text[: PREVIEW_CHARS - 1] + "…"


def problem_entry(problem: Problem) -> dict[str, Any]:
    """A Problem as a DeadLetter ``problems`` entry, bounded in size.

    The value is cut to PREVIEW_CHARS characters, with its size and, when cut, the first 16
    hex digits of its SHA-256.
    """
    value = problem.value
    if value is None:
        return {"field": problem.field, "code": problem.code, "value": None,
                "value_size": None, "value_sha256": None}
    if isinstance(value, Mapping):
        text, size = f"{len(value)} entries", len(value)
    elif isinstance(value, str):
        text, size = value, _utf8_size(value)
    else:
        text = str(value)
        size = len(text)
    shown = _preview(text)
    digest = None
    if shown != text:
        digest = hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()[:16]
    return {"field": problem.field, "code": problem.code, "value": shown, "value_size": size,
            "value_sha256": digest}


def dead_letter(record: SourceRecord, rejected: Rejected, failed_at: int,
                raw_max_bytes: int = DEFAULT_LIMITS.dead_letter_raw_max_bytes) -> dict[str, Any]:
    """The DeadLetter record for a rejected source record.

    Bounded whatever the input: ``raw`` holds the original value only up to ``raw_max_bytes``
    (else it is empty, ``raw_omitted`` is true and the value is found by topic, partition and
    offset; ``raw_size`` and ``raw_sha256`` identify it either way), the key is cut to
    DEAD_LETTER_KEY_MAX_BYTES, ``reason`` to REASON_MAX_CHARS and each problem's value to
    PREVIEW_CHARS characters. Encoded, it stays under ``raw_max_bytes`` + 16 KiB
    (``dead_letter_bound``).
    """
    value = record.value or b""
    omitted = len(value) > raw_max_bytes
    key = record.key
    reason = rejected.reason
    if len(reason) > REASON_MAX_CHARS:
        reason = reason[: REASON_MAX_CHARS - 1] + "…"
    return {
        "reason_code": rejected.reason_code,
        "reason": reason,
        "source_topic": record.topic,
        "partition": record.partition,
        "offset": record.offset,
        "raw": b"" if omitted else value,
        "key": None if key is None else key[:DEAD_LETTER_KEY_MAX_BYTES],
        "stage": rejected.stage,
        "failed_at": failed_at,
        "raw_size": len(value),
        "raw_sha256": hashlib.sha256(value).hexdigest() if record.value is not None else None,
        "raw_omitted": omitted,
        "problems": [problem_entry(p) for p in rejected.problems[:MAX_PROBLEMS]],
    }


def dead_letter_bound(raw_max_bytes: int = DEFAULT_LIMITS.dead_letter_raw_max_bytes) -> int:
    """An upper bound of an encoded DeadLetter's size: ``raw_max_bytes`` + 48 KiB.

    The reason is at most 4,096 characters (<= 16 KiB in UTF-8), the key 1 KiB, and at most
    32 problems of under 700 bytes each (field name, code, a value of <= 64 characters, its
    size and hash); topic name, stage and the numbers are a few hundred bytes.
    """
    return raw_max_bytes + 48 * 1024
