"""Bad input on a MiniCluster (parallelism 2): fuzzed records of every class, with bursts of
far-future and 11-minutes-ahead clicks, mixed into a valid scripted workload. The job finishes,
every bad record is one DeadLetter with its reason and small enough to send, and the valid
records' outputs are those of a run without the bad ones: no rejected record moved event time.
Also: the clicks source's Java assigner agrees with the Python validation (issue 19)."""

from collections import Counter

import pytest
from pyflink.common import Row, Types
from pyflink.java_gateway import get_gateway

from jobs.config import replace
from jobs.connectors import click_watermarks
from jobs.job import build, file_definitions
from jobs.workload.fuzz import CLICK_CLASSES, fuzz_metadata_records, fuzz_records
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.pipeline.fakes import FileWriterFactory
from udfs import intake
from udfs.flink.descriptors import SOURCE_RECORD_ROW

pytestmark = pytest.mark.pipeline

T0 = 1_800_000_000_000
MIN = 60_000
NOW = T0 + 10 * MIN  # the Kafka timestamp of the fuzzed records
LONG_MIN = -(2**63)
#: emit watermarks as often as Flink can, so one that a bad record moved would show
WATERMARK_INTERVAL_MS = 1
#: classes the Java assigner rejects itself (the rest it cannot see, or only inside the window)
JAVA_CHECKED = {
    "empty", "json_not_avro", "truncated_header", "unknown_fingerprint", "wrong_schema",
    "invalid_utf8_user_id", "negative_enum_index", "enum_index_too_large",
    "negative_source_index", "poison_event_id", "long_event_id", "user_id_100kb",
    "long_user_id", "nul_user_id", "zero_width_user_id", "blank_user_id", "empty_event_id",
    "control_chars_event_id", "string_1mb", "timestamp_1970", "too_old", "far_future",
    "eleven_minutes_ahead", "null_key", "huge_key",
}
#: the big classes (100 KB to 1 MB values) are few: the collection travels in the job graph
BIG = {"poison_event_id", "user_id_100kb", "string_1mb"}


def _valid_clicks(codec):
    """60 users, one $150 add-to-cart each, 20 s apart: each enters high-value-cart, and
    cart-abandoners 30 minutes later (a timer). One event per user, so the two decoders'
    interleaving cannot change the outcome."""
    rows = []
    for i in range(60):
        t = T0 + i * 20_000
        user = f"user-{i:02d}"
        rows.append((user.encode(), click_bytes(codec, f"ok-{i}", user, "ADD_TO_CART", t, **CART),
                     t + 1000))
    return rows


def _mixed(valid):
    """The valid clicks with ~2,000 fuzzed clicks of every class among them (the big classes
    limited), each chunk appended at the time of the valid click before it, so append times
    grow as on a Kafka partition; first, bursts of 300 far-future and 300 11-minutes-ahead
    clicks. Returns (rows, bad records)."""
    first_ts = valid[0][2]
    bursts = fuzz_records(600, 20, first_ts, classes=("far_future", "eleven_minutes_ahead"))
    rows = [(r.key, r.value, first_ts) for r in bursts]
    bad, big_seen = list(bursts), Counter()
    per_chunk = 34
    for i, (key, value, ts) in enumerate(valid):
        rows.append((key, value, ts))
        start = i * per_chunk % len(CLICK_CLASSES)
        classes = CLICK_CLASSES[start:] + CLICK_CLASSES[:start]
        for rec in fuzz_records(per_chunk, 100 + i, ts, classes=classes):
            if rec.cls in BIG:
                big_seen[rec.cls] += 1
                if big_seen[rec.cls] > 2:
                    continue
            rows.append((rec.key, rec.value, ts))
            bad.append(rec)
    return rows, bad


def _run(env, cfg, tmp_path, name, clicks, metadata):
    env.get_config().set_auto_watermark_interval(WATERMARK_INTERVAL_MS)
    rows = [Row("clicks", i % 2, i, ts, key, value, None)
            for i, (key, value, ts) in enumerate(clicks)]
    codec = Codec.load()
    # one valid profile of a user without clicks in both runs (a source needs a record)
    metadata = [(b"nobody", metadata_bytes(codec, "nobody", at=T0), T0), *metadata]
    meta_rows = [Row("user-metadata", i % 2, i, ts, key, value, None)
                 for i, (key, value, ts) in enumerate(metadata)]
    outputs = build(
        env.from_collection(rows, type_info=SOURCE_RECORD_ROW)
        .assign_timestamps_and_watermarks(click_watermarks(cfg)),
        env.from_collection(meta_rows, type_info=SOURCE_RECORD_ROW),
        # an empty definitions record: dead-lettered (source_topic definitions) in both runs
        env.from_collection([Row("definitions", 0, 0, T0, b"d", b"", None)],
                            type_info=SOURCE_RECORD_ROW),
        cfg, file_definitions(cfg), None, store=FileWriterFactory(str(tmp_path / name)))
    # each output summed up in the job (collecting thousands of DeadLetter byte arrays through
    # execute_and_collect takes ~50 ms each; a short string does not)
    summaries = outputs.all().map(_summary, output_type=Types.STRING())
    with summaries.execute_and_collect() as results:
        return [tuple(summary.split("|")) for summary in results]


def _summary(row):
    """A short text of an output row: its record type, the fields compared, its size."""
    codec = Codec.load()
    name, record = codec.decode_named(bytes(row[2]))
    if name == "SegmentChange":
        fields = [record[f] for f in ("change_id", "user_id", "segment_id", "change",
                                      "event_time")]
    elif name == "TriggerDecision":
        fields = [record[f] for f in ("trigger_id", "outcome", "reason_code")]
    elif name == "DeadLetter":
        problems = record["problems"]
        fields = [record["source_topic"], record["reason_code"],
                  problems[0]["code"] if problems else ""]
    else:
        fields = [record.get("trigger_id", "")]
    return "|".join(str(f) for f in [name, len(row[2]), *fields])


def _of(outputs, name):
    return sorted(o[2:] for o in outputs if o[0] == name)


def test_fuzzed_input_is_dead_lettered_and_moves_no_output(env, cfg, tmp_path):
    cfg = replace(cfg, churn_model="off")
    codec = Codec.load()
    valid = _valid_clicks(codec)
    mixed, bad = _mixed(valid)
    bad_metadata = fuzz_metadata_records(100, 19, NOW)

    baseline = _run(env, cfg, tmp_path, "baseline.jsonl", valid, [])
    fuzzed = _run(env, cfg, tmp_path, "fuzzed.jsonl", mixed,
                  [(r.key, r.value, NOW) for r in bad_metadata])

    # the valid records' outputs are exactly those of the run without bad records
    assert _of(baseline, "SegmentChange")
    assert _of(fuzzed, "SegmentChange") == _of(baseline, "SegmentChange")
    assert _of(fuzzed, "TriggerDecision") == _of(baseline, "TriggerDecision")
    assert _of(fuzzed, "TriggerEvent") == _of(baseline, "TriggerEvent")
    # every bad record is one DeadLetter with its reason; the bound holds for each
    def input_letters(outputs):
        return [o for o in outputs if o[0] == "DeadLetter" and o[2] in ("clicks", "user-metadata")]

    letters = input_letters(fuzzed)
    assert input_letters(baseline) == []
    expected = Counter(r.expected_reason for r in [*bad, *bad_metadata])
    assert Counter(letter[4] for letter in letters) == expected
    assert len(letters) == len(bad) + len(bad_metadata) > 2000
    assert {r.cls for r in bad} == set(CLICK_CLASSES)
    assert not [letter for letter in letters if letter[3] == "LATE_EVENT"]
    bound = intake.dead_letter_bound(cfg.dead_letter_raw_max_bytes)
    assert max(int(letter[1]) for letter in letters) < bound


def test_java_assigner_rejects_what_python_rejects(env, cfg):
    """The source's assigner, built from the configuration, against the pure validation."""
    assigner = get_gateway().jvm.io.nudgeflow.flink.ClickEventTimeAssigner(
        *intake.click_time_rule_args(cfg.intake_limits(), Codec.load()))
    low, high = cfg.intake_limits().event_time_window(NOW)
    for rec in fuzz_records(len(CLICK_CLASSES) * 3, 23, NOW):
        got = assigner.eventTime(rec.value, rec.key, NOW)
        if rec.cls in JAVA_CHECKED:
            assert got == LONG_MIN, rec.cls
        else:  # seen by Python only: the time it reads lies inside the window
            assert got == LONG_MIN or low <= got <= high, rec.cls
    codec = Codec.load()
    for key, value, ts in _valid_clicks(codec):
        assert assigner.eventTime(value, key, ts) == codec.decode(value)["event_time"]
    # the window's edges are the Python ones
    edge = click_bytes(codec, "e", "u", "PAGE_VIEW", high)
    assert assigner.eventTime(edge, b"u", NOW) == high
    assert assigner.eventTime(click_bytes(codec, "e", "u", "PAGE_VIEW", high + 1), b"u",
                              NOW) == LONG_MIN
    assert assigner.eventTime(click_bytes(codec, "e", "u", "PAGE_VIEW", low), b"u", NOW) == low
    assert assigner.eventTime(click_bytes(codec, "e", "u", "PAGE_VIEW", low - 1), b"u",
                              NOW) == LONG_MIN
