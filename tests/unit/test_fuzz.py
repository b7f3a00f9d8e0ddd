"""The fuzz generator of bad records (jobs/workload/fuzz.py) against the pure validation
(udfs/intake.py): every class is rejected with its expected reason, every DeadLetter is small
enough to send, and the normal workload is never rejected (no false positives)."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from jobs.workload.fuzz import (
    CLICK_CLASSES,
    METADATA_CLASSES,
    fuzz_metadata_records,
    fuzz_records,
)
from jobs.workload.workload import WorkloadSpec, generate_events, generate_users
from schemas.codec import Codec
from udfs import intake

NOW = 1_790_000_000_000  # 2026-09-21, the Kafka timestamp the fuzzed records get
KAFKA_MAX_RECORD = 1_048_576  # the producer's max.request.size and the broker's default


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load()


def _source(rec: intake.SourceRecord | None = None, **kw) -> intake.SourceRecord:
    return intake.SourceRecord(**{"topic": "clicks", "partition": 1, "offset": 9,
                                  "timestamp": NOW, "key": None, "value": None, **kw})


def test_at_least_twenty_classes_of_the_issue_and_more() -> None:
    assert len(CLICK_CLASSES) >= 20
    for cls in ("negative_enum_index", "price_infinite", "price_1e308", "poison_event_id",
                "user_id_100kb", "nul_user_id", "zero_width_user_id", "string_1mb",
                "timestamp_1970", "far_future", "eleven_minutes_ahead", "null_key",
                "bit_flipped_price", "wrong_schema", "huge_properties_map"):
        assert cls in CLICK_CLASSES


def test_same_arguments_same_records() -> None:
    assert fuzz_records(200, 5, NOW) == fuzz_records(200, 5, NOW)
    assert fuzz_records(200, 5, NOW) != fuzz_records(200, 6, NOW)
    assert Counter(r.cls for r in fuzz_records(len(CLICK_CLASSES) * 2, 1, NOW)) == {
        cls: 2 for cls in CLICK_CLASSES}


def test_every_click_class_is_rejected_with_its_reason_and_a_sendable_letter(
        codec: Codec) -> None:
    seen = set()
    for rec in fuzz_records(len(CLICK_CLASSES) * 4, 11, NOW):
        source = _source(key=rec.key, value=rec.value)
        result = intake.decode_click(codec, source)
        assert isinstance(result, intake.Rejected), rec.cls
        assert result.problems[0].code == rec.expected_reason, (rec.cls, result.reason)
        assert result.reason_code == intake.reason_code_of(rec.expected_reason)
        letter = codec.encode("DeadLetter", intake.dead_letter(source, result, NOW))
        assert len(letter) < intake.dead_letter_bound() < KAFKA_MAX_RECORD, rec.cls
        seen.add(rec.cls)
    assert seen == set(CLICK_CLASSES)


def test_every_metadata_class_is_rejected_with_its_reason(codec: Codec) -> None:
    for rec in fuzz_metadata_records(len(METADATA_CLASSES) * 2, 4, NOW):
        source = _source(topic="user-metadata", key=rec.key, value=rec.value)
        result = intake.decode_metadata(codec, source)
        assert isinstance(result, intake.Rejected), rec.cls
        assert result.problems[0].code == rec.expected_reason, (rec.cls, result.reason)


def test_no_false_positives_on_20000_generated_clicks_and_their_users(codec: Codec) -> None:
    spec = WorkloadSpec(users=500, events=20_000, seed=3)
    newest = 0
    rejected = []
    for event in generate_events(spec):
        newest = max(newest, event["event_time"])
        # appended a second after the newest event so far (LogAppendTime of a live producer)
        source = _source(timestamp=newest + 1000, key=event["user_id"].encode(),
                         value=codec.encode("ClickEvent", event))
        result = intake.decode_click(codec, source)
        if isinstance(result, intake.Rejected):
            rejected.append(result.reason)
    assert rejected == []
    for user in generate_users(spec):
        source = _source(topic="user-metadata", timestamp=user["updated_at"] + 1000,
                         key=user["user_id"].encode(),
                         value=codec.encode("UserMetadata", user))
        result = intake.decode_metadata(codec, source)
        assert not isinstance(result, intake.Rejected), result.reason


def test_the_issue_poison_click_gives_a_small_dead_letter(codec: Codec) -> None:
    """A 300 KB event_id with a NaN price, a negative quantity and a 1970 time."""
    poison = next(r for r in fuzz_records(len(CLICK_CLASSES), 2, NOW)
                  if r.cls == "poison_event_id")
    assert len(poison.value) > 300_000
    source = _source(key=poison.key, value=poison.value)
    result = intake.decode_click(codec, source)
    assert isinstance(result, intake.Rejected)
    assert result.reason_code == "TOO_LARGE"
    letter = intake.dead_letter(source, result, NOW)
    encoded = codec.encode("DeadLetter", letter)
    assert len(encoded) < 2_000  # the value is kept by reference, not in raw
    assert letter["raw_omitted"] is True
    assert letter["raw_size"] == len(poison.value)
    assert (letter["source_topic"], letter["partition"], letter["offset"]) == ("clicks", 1, 9)


def test_with_limits_raised_every_problem_is_listed_once_and_cut_short(codec: Codec) -> None:
    """The record is decoded (limit raised): one problem per field, each value a preview."""
    limits = intake.Limits(max_record_bytes=2_000_000)
    poison = next(r for r in fuzz_records(len(CLICK_CLASSES), 2, NOW)
                  if r.cls == "poison_event_id")
    source = _source(key=poison.key, value=poison.value)
    result = intake.decode_click(codec, source, limits=limits)
    assert isinstance(result, intake.Rejected)
    codes = [(p.field, p.code) for p in result.problems]
    assert codes == [("event_id", "ID_TOO_LONG"), ("price", "NOT_FINITE"),
                     ("quantity", "OUT_OF_RANGE"), ("event_time", "TIME_TOO_OLD")]
    letter = intake.dead_letter(source, result, NOW)
    encoded = codec.encode("DeadLetter", letter)
    assert len(encoded) < 2_000
    assert "E" * 100 not in letter["reason"]  # the value is never repeated in full
    first = letter["problems"][0]
    assert (first["value_size"], len(first["value"])) == (300_000, intake.PREVIEW_CHARS)
    assert first["value_sha256"] is not None and len(first["value_sha256"]) == 16
    # with raw kept (limit raised too) the letter still fits Kafka's 1 MiB
    kept = codec.encode("DeadLetter", intake.dead_letter(source, result, NOW, 900_000))
    assert len(poison.value) < len(kept) < intake.dead_letter_bound(900_000) < KAFKA_MAX_RECORD


def test_the_java_assigner_takes_every_rule_value_from_the_configuration() -> None:
    """No number of the time rule or the limits is duplicated in the Java source."""
    source = Path(__file__).resolve().parents[2] / (
        "infra/jars/flink/src/main/java/io/nudgeflow/flink/ClickEventTimeAssigner.java")
    text = source.read_text()
    code = re.sub(r"/\*.*?\*/|//[^\n]*", "", text, flags=re.S)
    numbers = {int(n) for n in re.findall(r"\b\d+\b", code)}
    limits = intake.DEFAULT_LIMITS
    for value in (limits.max_future_skew_ms, limits.max_event_age_ms, intake.MIN_EVENT_TIME_MS,
                  limits.max_id_bytes, limits.max_record_bytes, 600, 946684800):
        assert value not in numbers
    assert "public ClickEventTimeAssigner(long maxFutureSkewMs, long maxEventAgeMs" in text
    args = intake.click_time_rule_args(limits, Codec.load())
    assert args[:5] == (limits.max_future_skew_ms, limits.max_event_age_ms,
                        intake.MIN_EVENT_TIME_MS, limits.max_id_bytes, limits.max_record_bytes)
    assert args[5] == "d324c6a4f6786683:9,dd7d54cb4ffe2ce0:10:4"
