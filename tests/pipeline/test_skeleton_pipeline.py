"""The skeleton graph on a MiniCluster with collection sources and collected outputs."""

from collections import Counter, defaultdict

import pytest
from pyflink.common import Row, Types

from jobs.job import build
from jobs.workload import WorkloadSpec, generate_events, malformed_records
from schemas.codec import Codec

pytestmark = pytest.mark.pipeline

SOURCE_ROW = Types.ROW_NAMED(
    ["topic", "partition", "offset", "timestamp", "key", "value"],
    [Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)


def _bytes(value):
    """execute_and_collect hands Java byte[] over as signed ints; UDFs receive bytes."""
    if value is None or isinstance(value, bytes | bytearray):
        return None if value is None else bytes(value)
    return bytes(b & 0xFF for b in value)


def _source_rows(payloads):
    return [
        Row("clicks", index % 3, index, 1_800_000_000_000, b"k", payload)
        for index, payload in enumerate(payloads)
    ]


def test_counts_every_users_events_and_dead_letters_bad_records(env, cfg):
    codec = Codec.load()
    events = list(generate_events(WorkloadSpec(users=12, events=400, seed=7,
                                               start_ms=1_799_000_000_000)))
    bad = malformed_records(seed=3, n=5, samples=[codec.encode("ClickEvent", events[0])])
    payloads = [codec.encode("ClickEvent", e) for e in events]
    payloads[100:100] = bad  # bad records in the middle of the stream must not stop it
    clicks = env.from_collection(_source_rows(payloads), type_info=SOURCE_ROW)

    outputs = build(clicks, cfg)
    with outputs.all().execute_and_collect() as results:
        rows = list(results)

    by_topic = defaultdict(list)
    for topic, key, value in rows:
        by_topic[topic].append((_bytes(key), codec.decode_named(_bytes(value))))

    counts = by_topic[cfg.activity_counts_topic]
    assert len(counts) == len(events)
    seen = defaultdict(list)
    for key, (name, record) in counts:
        assert name == "UserActivityCount"
        assert key == record["user_id"].encode()
        seen[record["user_id"]].append(record["event_count"])
    expected = Counter(e["user_id"] for e in events)
    assert {u: sorted(c) for u, c in seen.items()} == {
        u: list(range(1, n + 1)) for u, n in expected.items()
    }

    letters = [record for _, (name, record) in by_topic[cfg.dead_letter_topic]]
    assert len(letters) == len(bad)
    assert sorted(bytes(letter["raw"]) for letter in letters) == sorted(bad)
    assert {letter["reason_code"] for letter in letters} <= {"INVALID_AVRO", "UNKNOWN_SCHEMA",
                                                               "INVALID_FIELD"}
    assert all(letter["reason"] and letter["source_topic"] == "clicks" for letter in letters)
    assert all(letter["offset"] is not None for letter in letters)
