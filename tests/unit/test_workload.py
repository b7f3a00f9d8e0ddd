"""Tests for jobs.workload.workload (the pure synthetic workload) and the Kafka-free parts of
jobs.workload.generate.

No Kafka and no JVM: ``produce`` is exercised against a fake ``KafkaProducer`` and a fake codec.
"""

from __future__ import annotations

import dataclasses
import io
import itertools
import sys
import time
import types
from collections import Counter, defaultdict
from typing import Any
from zoneinfo import ZoneInfo

import pytest

from jobs.workload import generate as generate_module
from jobs.workload.generate import _Progress, format_summary, produce, recent_start_ms
from jobs.workload.workload import (
    AVRO_SINGLE_OBJECT_MAGIC,
    COUNTRIES,
    DEFAULT_START_MS,
    EVENT_TYPES,
    PLANS,
    SOURCES,
    WorkloadSpec,
    WorkloadSummary,
    generate_events,
    generate_users,
    inactive_user_ids,
    invalid_events,
    malformed_records,
)

CLICK_FIELDS = {
    "event_id": str,
    "user_id": str,
    "event_type": str,
    "event_time": int,
    "source": str,
    "session_id": (str, type(None)),
    "page_url": (str, type(None)),
    "product_id": (str, type(None)),
    "category": (str, type(None)),
    "search_query": (str, type(None)),
    "order_id": (str, type(None)),
    "currency": (str, type(None)),
    "price": (float, type(None)),
    "quantity": (int, type(None)),
    "properties": dict,
}
USER_FIELDS = {
    "user_id",
    "country",
    "time_zone",
    "plan",
    "signup_time",
    "lifetime_value",
    "opt_ins",
    "updated_at",
}
OPT_INS = {"email", "sms", "push", "in_app", "paid_social"}


def run(spec: WorkloadSpec) -> tuple[list[dict], WorkloadSummary]:
    summary = WorkloadSummary()
    return list(generate_events(spec, summary)), summary


@pytest.fixture(scope="module")
def big() -> tuple[WorkloadSpec, list[dict], WorkloadSummary]:
    """20k events with pronounced disorder and duplication, shared by the statistical tests."""
    spec = WorkloadSpec(
        users=500,
        events=20_000,
        seed=11,
        out_of_order_fraction=0.05,
        duplicate_fraction=0.05,
        inactive_fraction=0.2,
    )
    events, summary = run(spec)
    return spec, events, summary


def distinct_in_order(events: list[dict]) -> list[dict]:
    seen: set[str] = set()
    out = []
    for e in events:
        if e["event_id"] not in seen:
            seen.add(e["event_id"])
            out.append(e)
    return out


# ---------------------------------------------------------------------------------------------
# determinism and counts


def test_same_seed_gives_identical_users_and_events() -> None:
    spec = WorkloadSpec(users=200, events=5_000, seed=3)
    again = WorkloadSpec(users=200, events=5_000, seed=3)
    assert generate_users(spec) == generate_users(again)
    assert list(generate_events(spec)) == list(generate_events(again))


def test_different_seed_gives_different_users_and_events() -> None:
    a = WorkloadSpec(users=200, events=5_000, seed=3)
    b = dataclasses.replace(a, seed=4)
    assert generate_users(a) != generate_users(b)
    ev_a, ev_b = list(generate_events(a)), list(generate_events(b))
    assert [e["event_type"] for e in ev_a] != [e["event_type"] for e in ev_b]
    assert not {e["event_id"] for e in ev_a} & {e["event_id"] for e in ev_b}


def test_generation_does_not_touch_global_random() -> None:
    import random

    random.seed(1234)
    expected = random.random()
    random.seed(1234)
    list(generate_events(WorkloadSpec(users=50, events=2_000)))
    generate_users(WorkloadSpec(users=50))
    malformed_records(1, 5)
    assert random.random() == expected


@pytest.mark.parametrize(
    ("users", "events", "dup"),
    [(1, 0, 0.0), (1, 1, 0.0), (1, 7, 0.5), (3, 1_234, 0.5), (100, 3_001, 0.013), (40, 999, 0.0)],
)
def test_requested_counts_are_exact(users: int, events: int, dup: float) -> None:
    spec = WorkloadSpec(users=users, events=events, duplicate_fraction=dup, seed=users + events)
    assert len(generate_users(spec)) == users
    assert len({u["user_id"] for u in generate_users(spec)}) == users
    out, summary = run(spec)
    # `events` counts every yielded record, duplicates included.
    assert len(out) == events == summary.events
    assert spec.duplicates == min(round(events * dup), events // 2) == summary.duplicates
    assert len({e["event_id"] for e in out}) == spec.distinct_events == events - spec.duplicates
    assert sum(summary.by_type.values()) == events == sum(summary.by_source.values())


def test_generate_events_is_lazy() -> None:
    spec = WorkloadSpec(users=1_000, events=50_000_000)
    t0 = time.perf_counter()
    first = list(itertools.islice(generate_events(spec), 1_000))
    assert len(first) == 1_000
    assert time.perf_counter() - t0 < 5  # nothing was materialised up front


def test_summary_matches_the_events(big: tuple[WorkloadSpec, list[dict], WorkloadSummary]) -> None:
    spec, events, summary = big
    assert summary.users == spec.users
    assert summary.inactive_users == spec.inactive_users == int(spec.users * 0.2)
    assert set(summary.by_type) == set(EVENT_TYPES) and set(summary.by_source) == set(SOURCES)
    assert +Counter(summary.by_type) == Counter(e["event_type"] for e in events)
    assert +Counter(summary.by_source) == Counter(e["source"] for e in events)
    times = [e["event_time"] for e in events]
    assert summary.first_event_ms == min(times) == spec.start_ms
    assert summary.last_event_ms == max(times)
    assert summary.span_ms == max(times) - min(times)
    assert summary.sessions > 0 and summary.orders > 0 and summary.abandoned_carts > 0
    # the expected span used for inactivity cut-offs is a fair estimate
    assert 0.7 < summary.span_ms / spec.expected_span_ms < 1.4


# ---------------------------------------------------------------------------------------------
# disorder and duplicates


def test_duplicates_resend_an_equal_record_later(
    big: tuple[WorkloadSpec, list[dict], WorkloadSummary],
) -> None:
    spec, events, summary = big
    first: dict[str, tuple[int, dict]] = {}
    duplicates = 0
    for i, e in enumerate(events):
        if e["event_id"] in first:
            j, original = first[e["event_id"]]
            assert e == original and e is not original
            assert 0 < i - j <= spec.duplicate_max_lag + 1 + 2 * spec.duplicate_max_lag
            duplicates += 1
        else:
            first[e["event_id"]] = (i, e)
    assert duplicates == summary.duplicates == round(20_000 * 0.05)
    assert abs(duplicates / len(events) - spec.duplicate_fraction) < 0.005


def test_out_of_order_fraction_and_bound(
    big: tuple[WorkloadSpec, list[dict], WorkloadSummary],
) -> None:
    spec, events, summary = big
    distinct = distinct_in_order(events)
    late = [
        (prev["event_time"] - cur["event_time"])
        for prev, cur in itertools.pairwise(distinct)
        if cur["event_time"] < prev["event_time"]
    ]
    assert len(late) == summary.out_of_order
    assert abs(len(late) / len(distinct) - spec.out_of_order_fraction) < 0.01
    assert max(late) <= spec.max_disorder_ms
    assert summary.late_injected == round(len(distinct) * spec.out_of_order_fraction)


def test_no_disorder_and_no_duplicates_when_disabled() -> None:
    spec = WorkloadSpec(
        users=100, events=5_000, out_of_order_fraction=0.0, duplicate_fraction=0.0, seed=5
    )
    events, summary = run(spec)
    times = [e["event_time"] for e in events]
    assert times == sorted(times)
    assert len({e["event_id"] for e in events}) == len(events)
    assert summary.out_of_order == summary.duplicates == 0


def test_mostly_increasing_event_time(
    big: tuple[WorkloadSpec, list[dict], WorkloadSummary],
) -> None:
    _, events, _ = big
    backwards = sum(b["event_time"] < a["event_time"] for a, b in itertools.pairwise(events))
    assert backwards / len(events) < 0.15


# ---------------------------------------------------------------------------------------------
# well-formed records


def test_every_event_is_well_formed(
    big: tuple[WorkloadSpec, list[dict], WorkloadSummary],
) -> None:
    spec, events, _ = big
    user_ids = {u["user_id"] for u in generate_users(spec)}
    for e in events:
        assert set(e) == set(CLICK_FIELDS), e
        for name, kind in CLICK_FIELDS.items():
            assert isinstance(e[name], kind), (name, e)
        assert e["event_id"] and e["user_id"] in user_ids
        assert e["event_type"] in EVENT_TYPES
        assert e["source"] in SOURCES
        assert e["event_time"] >= spec.start_ms
        assert all(isinstance(k, str) and isinstance(v, str) for k, v in e["properties"].items())
        assert (e["session_id"] is None) == (e["source"] == "OFFLINE")
        if e["price"] is not None:
            assert e["price"] > 0 and e["currency"] is not None
        else:
            assert e["currency"] is None
        if e["quantity"] is not None:
            assert e["quantity"] >= 1
        kind = e["event_type"]
        if kind == "PURCHASE":
            assert e["order_id"] and e["product_id"] and e["price"] and e["quantity"]
            assert e["currency"] in {"USD", "EUR", "GBP", "JPY", "INR", "BRL", "MXN", "CAD", "AUD"}
        if kind in ("ADD_TO_CART", "REMOVE_FROM_CART"):
            assert e["product_id"] and e["price"] and e["quantity"]
        if kind == "PRODUCT_VIEW":
            assert e["product_id"] and e["category"]
        if kind == "SEARCH":
            assert e["search_query"]
        if kind == "CHECKOUT":
            assert e["order_id"]
        if kind == "APP_OPEN":
            assert e["source"] == "MOBILE"
        if kind == "STORE_VISIT":
            assert e["source"] == "OFFLINE" and e["properties"]["store_id"]
        if e["source"] == "OFFLINE":
            assert kind in ("STORE_VISIT", "PURCHASE")


def test_every_user_is_well_formed() -> None:
    spec = WorkloadSpec(users=2_000, seed=9)
    users = generate_users(spec)
    for u in users:
        assert set(u) == USER_FIELDS
        assert u["country"] in COUNTRIES and len(u["country"]) == 2 and u["country"].isupper()
        assert ZoneInfo(u["time_zone"])  # a valid IANA name ...
        assert u["time_zone"] in dict(COUNTRIES[u["country"]][2])  # ... of that country
        assert u["plan"] in PLANS
        assert isinstance(u["signup_time"], int) and isinstance(u["updated_at"], int)
        assert u["signup_time"] <= u["updated_at"] < spec.start_ms
        assert isinstance(u["lifetime_value"], float) and u["lifetime_value"] >= 0
        assert set(u["opt_ins"]) == OPT_INS
        assert all(isinstance(v, bool) for v in u["opt_ins"].values())
    assert {u["country"] for u in users} == set(COUNTRIES)
    assert {u["plan"] for u in users} == set(PLANS)
    tz = {u["country"]: u["time_zone"] for u in users if u["country"] in ("DE", "JP", "IN")}
    assert tz == {"DE": "Europe/Berlin", "JP": "Asia/Tokyo", "IN": "Asia/Kolkata"}


def test_every_event_type_and_source_occurs(
    big: tuple[WorkloadSpec, list[dict], WorkloadSummary],
) -> None:
    _, _, summary = big
    assert all(summary.by_type[t] > 0 for t in EVENT_TYPES), summary.by_type
    assert all(summary.by_source[s] > 0 for s in SOURCES), summary.by_source


def sessions_of(events: list[dict]) -> dict[str, list[dict]]:
    sessions: dict[str, list[dict]] = defaultdict(list)
    for e in distinct_in_order(events):
        if e["session_id"] is not None:
            sessions[e["session_id"]].append(e)
    for evs in sessions.values():
        evs.sort(key=lambda e: e["event_time"])
    return sessions


def test_sessions_are_realistic(big: tuple[WorkloadSpec, list[dict], WorkloadSummary]) -> None:
    _, events, _ = big
    sessions = sessions_of(events)
    for evs in sessions.values():
        assert len({e["user_id"] for e in evs}) == 1
        assert len({e["source"] for e in evs}) == 1
        if evs[0]["source"] == "MOBILE":
            assert evs[0]["event_type"] == "APP_OPEN"
        else:
            assert evs[0]["event_type"] == "PAGE_VIEW"
        types = [e["event_type"] for e in evs]
        if "PURCHASE" in types:
            checkout = types.index("CHECKOUT")
            assert checkout < types.index("PURCHASE")
            assert "ADD_TO_CART" in types[:checkout]
            orders = {e["order_id"] for e in evs if e["event_type"] in ("CHECKOUT", "PURCHASE")}
            assert len(orders) == 1
    users_with_interleaving = 0
    for a, b in itertools.pairwise(distinct_in_order(events)):
        users_with_interleaving += a["user_id"] != b["user_id"]
    assert users_with_interleaving > len(events) / 2  # users interleave


def test_abandoned_carts_exist(big: tuple[WorkloadSpec, list[dict], WorkloadSummary]) -> None:
    spec, events, summary = big
    carts = abandoned = 0
    for evs in sessions_of(events).values():
        types = [e["event_type"] for e in evs]
        if "ADD_TO_CART" in types:
            carts += 1
            first_add = types.index("ADD_TO_CART")
            abandoned += "PURCHASE" not in types[first_add:]
    assert abandoned > 0 and abandoned < carts  # some carts are abandoned, some bought
    assert abs(abandoned / carts - spec.abandon_fraction) < 0.06
    assert abs(summary.abandoned_carts - abandoned) <= 0.02 * carts  # sessions cut at the end


def test_offline_store_visits_and_purchases(
    big: tuple[WorkloadSpec, list[dict], WorkloadSummary],
) -> None:
    _, events, _ = big
    offline = [e for e in events if e["source"] == "OFFLINE"]
    assert {e["event_type"] for e in offline} == {"STORE_VISIT", "PURCHASE"}
    for e in offline:
        assert e["session_id"] is None and e["page_url"] is None
        if e["event_type"] == "PURCHASE":
            assert e["order_id"] and e["properties"]["store_id"]


def test_inactive_users_stop_well_before_the_end(
    big: tuple[WorkloadSpec, list[dict], WorkloadSummary],
) -> None:
    spec, events, summary = big
    cutoffs = inactive_user_ids(spec)
    assert len(cutoffs) == spec.inactive_users
    last: dict[str, int] = {}
    for e in events:
        last[e["user_id"]] = max(last.get(e["user_id"], 0), e["event_time"])
    end = summary.last_event_ms
    assert end is not None
    threshold = spec.start_ms + 0.8 * (end - spec.start_ms)
    inactive_seen = [u for u in cutoffs if u in last]
    assert len(inactive_seen) > 0.5 * len(cutoffs)
    for user in inactive_seen:
        assert last[user] < threshold, user
        assert last[user] < cutoffs[user] + 3_600_000  # sessions running at the cut-off end
    # active users keep going: most of them have an event in the last 20%
    active_late = [u for u in last if u not in cutoffs and last[u] >= threshold]
    assert len(active_late) > 0.5 * (spec.users - len(cutoffs))


# ---------------------------------------------------------------------------------------------
# validation


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("users", 0),
        ("users", -5),
        ("users", 1.5),
        ("users", True),
        ("events", -1),
        ("seed", "abc"),
        ("start_ms", -1),
        ("out_of_order_fraction", 1.5),
        ("out_of_order_fraction", -0.1),
        ("out_of_order_fraction", float("nan")),
        ("duplicate_fraction", 0.6),
        ("duplicate_fraction", -0.01),
        ("inactive_fraction", 1.0),
        ("abandon_fraction", 2),
        ("cart_fraction", -1),
        ("mobile_fraction", 1.01),
        ("offline_fraction", 7),
        ("max_disorder_ms", 0),
        ("duplicate_max_lag", -1),
        ("inactive_window", (0.7, 0.2)),
        ("inactive_window", (0.1, 1.5)),
        ("inactive_window", [0.1, 0.2]),
        ("sessions_per_user_per_day", 0),
        ("products", 0),
        ("diurnal", "yes"),
    ],
)
def test_invalid_spec_raises_naming_the_field(field: str, value: Any) -> None:
    with pytest.raises(ValueError, match=rf"WorkloadSpec\.{field}\b"):
        WorkloadSpec(**{field: value})


def test_spec_defaults_are_valid_and_fixed() -> None:
    spec = WorkloadSpec()
    assert spec.start_ms == DEFAULT_START_MS == 1_793_610_000_000  # 2026-11-02T09:00:00Z
    assert spec.distinct_events + spec.duplicates == spec.events


# ---------------------------------------------------------------------------------------------
# broken payloads


def test_malformed_records() -> None:
    sample = AVRO_SINGLE_OBJECT_MAGIC + bytes(range(8)) + b"\x02x" * 30
    records = malformed_records(5, 20, samples=[sample])
    assert records == malformed_records(5, 20, samples=[sample])
    assert records != malformed_records(6, 20, samples=[sample])
    assert len(records) == 20 and all(isinstance(r, bytes) for r in records)
    assert b"" in records
    random_bytes, truncated, unknown = records[0], records[1], records[2]
    assert random_bytes and not random_bytes.startswith(b"\xc3")
    assert len(truncated) < len(sample) and sample.startswith(truncated) and len(truncated) > 10
    assert unknown.startswith(AVRO_SINGLE_OBJECT_MAGIC) and len(unknown) > 10
    assert unknown[2:10] != sample[2:10]
    assert records[4].startswith(b"{")
    assert all(r.startswith(AVRO_SINGLE_OBJECT_MAGIC) for r in malformed_records(1, 5)[1:3])
    assert malformed_records(1, 0) == []
    with pytest.raises(ValueError, match="n must be"):
        malformed_records(1, -1)


def test_invalid_events_have_exactly_one_defect() -> None:
    events = invalid_events(2, 12)
    assert len(events) == 12
    for e in events:
        assert set(e) == set(CLICK_FIELDS)
        defect = e["properties"]["defect"]
        assert defect in ("price", "quantity", "user_id", "order_id", "currency", "event_time")
    assert {e["properties"]["defect"] for e in events[:6]} == {
        "price",
        "quantity",
        "user_id",
        "order_id",
        "currency",
        "event_time",
    }


# ---------------------------------------------------------------------------------------------
# jobs.workload.generate without Kafka


class FakeFuture:
    def add_errback(self, fn: Any) -> FakeFuture:
        return self


class FakeProducer:
    instances: list[FakeProducer] = []

    def __init__(self, **config: Any) -> None:
        self.config = config
        self.log: list[tuple] = []
        FakeProducer.instances.append(self)

    def send(self, topic: str, key: bytes, value: bytes, timestamp_ms: int) -> FakeFuture:
        self.log.append(("send", topic, key, value, timestamp_ms))
        return FakeFuture()

    def flush(self) -> None:
        self.log.append(("flush",))

    def close(self, timeout: float | None = None) -> None:
        self.log.append(("close",))


class FakeCodec:
    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        return f"{name}:{record['user_id']}:{record.get('event_id', '')}".encode()


@pytest.fixture
def fake_kafka(monkeypatch: pytest.MonkeyPatch) -> type[FakeProducer]:
    """Replace the kafka module itself, so these tests do not even need kafka-python."""
    FakeProducer.instances = []
    monkeypatch.setitem(sys.modules, "kafka", types.SimpleNamespace(KafkaProducer=FakeProducer))
    return FakeProducer


def test_produce_writes_metadata_first_then_clicks(fake_kafka: type[FakeProducer]) -> None:
    spec = WorkloadSpec(users=30, events=500, seed=2)
    spec = dataclasses.replace(spec, start_ms=recent_start_ms(spec))
    summary = produce(spec, "localhost:1", "c", "m", progress=False, codec=FakeCodec())
    (producer,) = fake_kafka.instances
    assert (
        producer.config["acks"] == "all" and producer.config["bootstrap_servers"] == "localhost:1"
    )
    log = producer.log
    meta = [x for x in log if x[0] == "send" and x[1] == "m"]
    clicks = [x for x in log if x[0] == "send" and x[1] == "c"]
    assert len(meta) == 30 and len(clicks) == 500
    first_flush = log.index(("flush",))
    assert all(log.index(m) < first_flush for m in meta[-1:])
    assert log.index(clicks[0]) > first_flush
    assert log[-2:] == [("flush",), ("close",)]
    events = list(generate_events(spec))
    users = generate_users(spec)
    assert [(k, ts) for _, _, k, _, ts in clicks] == [
        (e["user_id"].encode(), e["event_time"]) for e in events
    ]
    assert [(k, ts) for _, _, k, _, ts in meta] == [
        (u["user_id"].encode(), u["updated_at"]) for u in users
    ]
    assert clicks[0][3] == f"ClickEvent:{events[0]['user_id']}:{events[0]['event_id']}".encode()
    assert summary.users == 30 and summary.events == 500 and summary.elapsed_s > 0
    assert summary.duplicates == spec.duplicates


def test_produce_paces_and_stops_after_duration(fake_kafka: type[FakeProducer]) -> None:
    spec = WorkloadSpec(users=2_000, events=100_000, seed=2)
    spec = dataclasses.replace(spec, start_ms=recent_start_ms(spec))
    t0 = time.monotonic()
    summary = produce(spec, "x:1", rate=2_000, duration_s=0.5, progress=False, codec=FakeCodec())
    elapsed = time.monotonic() - t0
    assert 0.45 < elapsed < 2.0
    assert 700 <= summary.events <= 1_100  # ~2000/s for 0.5 s
    clicks = [x for x in fake_kafka.instances[0].log if x[0] == "send" and x[1] == "clicks"]
    assert len(clicks) == summary.events


def test_produce_rejects_bad_options(fake_kafka: type[FakeProducer]) -> None:
    with pytest.raises(ValueError, match="rate"):
        produce(WorkloadSpec(), "x:1", rate=0, codec=FakeCodec())
    with pytest.raises(ValueError, match="duration_s"):
        produce(WorkloadSpec(), "x:1", duration_s=-1, codec=FakeCodec())


def test_produce_warns_about_timestamps_kafka_would_drop(fake_kafka: type[FakeProducer]) -> None:
    spec = WorkloadSpec(users=5, events=10, start_ms=int(time.time() * 1000) - 30 * 86_400_000)
    with pytest.warns(UserWarning, match="retention"):
        produce(spec, "x:1", progress=False, codec=FakeCodec())
    future = WorkloadSpec(users=5, events=10, start_ms=int(time.time() * 1000) + 86_400_000)
    with pytest.warns(UserWarning, match="in the future"):
        produce(future, "x:1", progress=False, codec=FakeCodec())


def test_recent_start_ms_ends_before_now() -> None:
    spec = WorkloadSpec(users=100, events=10_000)
    now = 1_800_000_000_000
    start = recent_start_ms(spec, now_ms=now)
    assert start % 1000 == 0
    _, summary = run(dataclasses.replace(spec, start_ms=start))
    assert summary.last_event_ms is not None and summary.last_event_ms < now + 3_600_000


def test_progress_lines_when_not_a_tty() -> None:
    out = io.StringIO()
    bar = _Progress("clicks", 100, enabled=True, stream=out)
    assert not bar.tty
    bar.update(10, bar.start + 0.1)  # too soon: nothing
    bar.update(50, bar.start + 6.0)
    bar.finish(100)
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("clicks 50/100 ( 50.0%)") and "ETA" in lines[0]
    assert lines[1].startswith("clicks 100/100 (100.0%)")
    silent = io.StringIO()
    off = _Progress("clicks", 100, enabled=False, stream=silent)
    off.update(50, off.start + 60)
    off.finish(100)
    assert silent.getvalue() == ""


def test_format_summary(big: tuple[WorkloadSpec, list[dict], WorkloadSummary]) -> None:
    _, _, summary = big
    timed = dataclasses.replace(summary, elapsed_s=2.0)
    text = format_summary(timed)
    for needle in ("users", "PURCHASE", "STORE_VISIT", "duplicates", "out of order", "2026-11-02"):
        assert needle in text
    assert "events/s" in text and f"{20_000 / 2:,.0f}" in text
    assert "events/s" not in format_summary(summary)
    assert format_summary(WorkloadSummary())  # empty summary renders too
    assert generate_module.__doc__
