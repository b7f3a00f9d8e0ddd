"""The membership writer's operator (``udfs.flink.membership_writes``) called directly: what it
writes, in which order, and what it emits (the whole graph runs in the other pipeline tests)."""

import time
from types import SimpleNamespace

from jobs.config import NudgeflowConfig
from schemas.codec import Codec
from udfs.flink.descriptors import DEAD_LETTER_TAG
from udfs.flink.membership_writes import (
    MembershipWriteFunction,
    changes_payload,
    erasure_payload,
)
from udfs.stores.membership import ErasureRejection, StoreRejection


class Metrics:
    """Just enough of a metric group for the function's counters."""

    def __init__(self):
        self.counts = {}

    def counter(self, name):
        counts = self.counts

        class Counter:
            def inc(self, n=1):
                counts[name] = counts.get(name, 0) + n

        return Counter()

    def add_group(self, key, value=None):
        return self


class Writer:
    """Records every call; refuses the changes and erasures it is told to."""

    def __init__(self, refuse=()):
        self.calls = []
        self.refuse = set(refuse)

    def write_many(self, changes):
        self.calls.append(("write_many", [c["change_id"] for c in changes]))
        return [StoreRejection(c, "redis", "EVALSHA membership", "WRONGTYPE")
                for c in changes if c["change_id"] in self.refuse]

    def erase_user(self, user_id, segment_ids):
        self.calls.append(("erase_user", user_id, list(segment_ids)))
        if user_id in self.refuse:
            return [ErasureRejection(user_id, "cassandra", "DELETE ...", "Unauthorized")]
        return []

    def close(self):
        self.calls.append(("close",))


def change(n, kind="ENTER", user="ann"):
    return {"change_id": f"c{n}", "user_id": user, "segment_id": f"s{n}", "change": kind,
            "definition_version": 1, "event_time": 1_000 + n, "reason": f"reason {n}",
            "cause_event_id": f"e{n}", "churn_score": 0.25 if n % 2 else None,
            "model_version": "m1" if n % 2 else None}


def opened(writer):
    function = MembershipWriteFunction(NudgeflowConfig(), lambda **_: writer)
    metrics = Metrics()
    function.open(SimpleNamespace(get_metrics_group=lambda: metrics))
    return function, metrics


def routed(payload):
    """A MembershipWrite row as RouteEngineRecords hands it on: (topic, key, value, tp)."""
    return ("membership-writes", b"ann", payload, None)


def batch(*payloads):
    """Rows' payloads as io.nudgeflow.flink.BatchJsonRows joins them: a JSON array."""
    return ("membership-writes", None, b"[" + b",".join(payloads) + b"]", None)


def test_a_batchs_steps_are_written_together_and_an_erasure_in_its_place():
    writer = Writer(refuse={"c3"})
    function, metrics = opened(writer)
    rows = list(function.process_element(batch(
        changes_payload([change(1)], 5_000, ["00-tp-1"]),
        changes_payload([change(2, "EXIT"), change(3)], 6_000, [None, "00-tp-3"]),
        erasure_payload("bob", ["s9"]),
        changes_payload([change(4, user="cy")], 7_000, [None])), None))
    # the steps before the erasure in one call, the erasure, then the steps after it
    assert writer.calls == [("write_many", ["c1", "c2", "c3"]), ("erase_user", "bob", ["s9"]),
                            ("write_many", ["c4"])]
    assert [row[0] for row in rows] == ["SegmentChange", "SegmentChange", DEAD_LETTER_TAG,
                                        "SegmentChange"]
    codec = Codec.load()
    emitted = [codec.decode(bytes(row[3]), expect="SegmentChange")
               for row in rows if row[0] == "SegmentChange"]
    # each change keeps its own step's emitted_at and traceparent, in the engine's order
    assert [(c["change_id"], c["emitted_at"]) for c in emitted] == [
        ("c1", 5_000), ("c2", 6_000), ("c4", 7_000)]
    assert [row[4] for row in rows if row[0] == "SegmentChange"] == ["00-tp-1", None, None]
    assert [row[2] for row in rows if row[0] == "SegmentChange"] == [b"ann", b"ann", b"cy"]
    letter = codec.decode(bytes(rows[2][1][2]), expect="DeadLetter")
    assert letter["reason_code"] == "STORE_REJECTED"
    assert codec.decode(letter["raw"], expect="SegmentChange")["emitted_at"] == 6_000
    assert metrics.counts["membership_write_batches"] == 1
    assert metrics.counts["segment_enters"] == 2 and metrics.counts["segment_exits"] == 1


def test_a_users_segment_changing_twice_in_a_batch_is_written_in_two_rounds_in_order():
    writer = Writer()
    function, _ = opened(writer)
    enter, other, exit_ = change(1), change(2, user="cy"), {**change(1, "EXIT"), "change_id": "c9"}
    rows = list(function.process_element(batch(
        changes_payload([enter, other], 5_000, [None, None]),
        changes_payload([exit_], 6_000, [None])), None))
    # the EXIT cannot land before the ENTER: it is written only once the ENTER's round landed
    assert writer.calls == [("write_many", ["c1", "c2"]), ("write_many", ["c9"])]
    assert [bytes(row[3]) for row in rows] == [
        Codec.load().encode("SegmentChange", {**c, "emitted_at": at})
        for c, at in ((enter, 5_000), (other, 5_000), (exit_, 6_000))]


def test_a_steps_changes_are_written_together_before_any_is_emitted():
    writer = Writer()
    function, metrics = opened(writer)
    changes = [change(1), change(2, "EXIT")]
    rows = function.process_element(
        routed(changes_payload(changes, 5_000, ["00-tp-1", None])), None)
    first = next(rows)
    assert writer.calls == [("write_many", ["c1", "c2"])]  # written before the first row
    rows = [first, *rows]
    codec = Codec.load()
    assert [row[0] for row in rows] == ["SegmentChange", "SegmentChange"]
    assert [codec.decode(bytes(row[3]), expect="SegmentChange") for row in rows] == [
        {**c, "emitted_at": 5_000} for c in changes]
    assert [row[4] for row in rows] == ["00-tp-1", None]
    assert [row[2] for row in rows] == [b"ann", b"ann"]
    assert metrics.counts["segment_enters"] == 1 and metrics.counts["segment_exits"] == 1


def test_a_refused_change_is_dead_lettered_and_the_others_emitted():
    writer = Writer(refuse={"c2"})
    function, metrics = opened(writer)
    rows = list(function.process_element(
        routed(changes_payload([change(1), change(2), change(3)], 5_000, [None] * 3)), None))
    assert [row[0] for row in rows] == ["SegmentChange", DEAD_LETTER_TAG, "SegmentChange"]
    topic, _, value, _ = rows[1][1]  # (tag, Row(topic, key, value, traceparent))
    assert topic == NudgeflowConfig().dead_letter_topic
    letter = Codec.load().decode(bytes(value), expect="DeadLetter")
    assert letter["reason_code"] == "STORE_REJECTED"
    assert "redis refused ENTER of segment 's2'" in letter["reason"]
    assert metrics.counts["segment_enters"] == 2


def test_an_erasure_deletes_the_user_and_dead_letters_what_a_store_refused():
    writer = Writer(refuse={"bob"})
    function, _ = opened(writer)
    assert list(function.process_element(routed(erasure_payload("ann", ["b", "a"])), None)) == []
    rows = list(function.process_element(routed(erasure_payload("bob", [])), None))
    assert writer.calls == [("erase_user", "ann", ["a", "b"]), ("erase_user", "bob", [])]
    assert [row[0] for row in rows] == [DEAD_LETTER_TAG]
    letter = Codec.load().decode(bytes(rows[0][1][2]), expect="DeadLetter")
    assert letter["reason_code"] == "STORE_REJECTED" and "erasure of user" in letter["reason"]
    function.close()
    assert writer.calls[-1] == ("close",)


def test_the_write_lag_is_each_steps_time_from_the_engine_to_both_stores():
    function, metrics = opened(Writer())
    now = int(time.time() * 1000)
    list(function.process_element(batch(
        changes_payload([change(1)], now - 300, [None]),
        changes_payload([change(2), change(3)], now - 40, [None, None])), None))
    function.close()  # flushes what the histogram holds
    # one value a step (not a change), each at least its age when the batch came in
    assert metrics.counts["membership_write_lag_ms_count"] == 2
    assert 340 <= metrics.counts["membership_write_lag_ms_sum"] < 340 + 2 * 5_000
