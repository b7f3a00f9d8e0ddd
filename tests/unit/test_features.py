"""Tests for udfs.features (spec, state, vector, view, codec): features, their view, encoding.

Pure Python, fixed timestamps (no wall clock). T0 is midnight UTC, so day, hour and 5-minute
bucket boundaries fall on round offsets from it.
"""

from __future__ import annotations

import copy
import json
import math
import random
import re
from pathlib import Path
from typing import Any

import pytest

from tests.builders import click, metadata
from udfs.features.codec import (
    STATE_SCHEMA,
    STATE_SCHEMA_NAME,
    STATE_SCHEMA_VERSION,
    decode_state,
    encode_state,
    max_state_bytes,
    state_size_bytes,
)
from udfs.features.spec import (
    DAY_MS,
    DEFAULT_BOUNDS,
    EVENT_TYPES,
    FEATURE_NAMES,
    FEATURE_SPEC,
    HOUR_MS,
    MAX_ID_BYTES,
    NEVER_SECONDS,
    SLOT_MS,
    SOURCES,
    TYPE_INDEX,
    FeatureBounds,
    horizon_start_ms,
    window_leave_ms,
)
from udfs.features.state import UserFeatures, expired, update
from udfs.features.vector import FeatureView, vector, vector_list
from udfs.features.view import RecentEvent

ROOT = Path(__file__).resolve().parents[2]
T0 = 1_704_067_200_000  # 2024-01-01T00:00:00Z
MIN = 60_000


def ev(i: int | str, t: int, etype: str = "PAGE_VIEW", **fields: Any) -> dict[str, Any]:
    """A click of user u-1 without a session or currency unless given."""
    return click(f"e-{i}", "u-1", etype, t, **{"session_id": None, "currency": None, **fields})


def run(events: list[dict[str, Any]], state: UserFeatures | None = None,
        bounds: FeatureBounds = DEFAULT_BOUNDS) -> UserFeatures:
    for event in events:
        state = update(state, event, bounds)
    assert state is not None
    return state


# plan and lifetime value differ from the builder's, so that the vector shows they are read
METADATA = {**metadata("u-1", "Europe/Berlin", at=T0, signup_time=T0 - 100 * DAY_MS,
                       email=True, push=True, in_app=True),
            "plan": "PREMIUM", "lifetime_value": 321.5}


# --- the spec -----------------------------------------------------------------------------------


def test_spec_names_are_unique_typed_and_cover_the_issue() -> None:
    assert len(set(FEATURE_NAMES)) == len(FEATURE_NAMES)
    assert FEATURE_NAMES == tuple(spec.name for spec in FEATURE_SPEC)
    for spec in FEATURE_SPEC:
        assert spec.dtype in ("int", "float")
        assert isinstance(spec.default, float)
        assert spec.unit and spec.description
    for label in ["total", *(t.lower() for t in EVENT_TYPES)]:
        for horizon in ("1h", "24h", "7d", "30d"):
            assert f"events_{label}_{horizon}" in FEATURE_NAMES
    for name in ("sessions_7d", "sessions_30d", "seconds_since_last_event",
                 "seconds_since_last_purchase", "cart_items", "cart_value", "orders_30d",
                 "revenue_30d", "orders_total", "revenue_total", "avg_order_value",
                 "mobile_share_30d", "offline_share_30d", "days_since_signup",
                 "lifetime_value"):
        assert name in FEATURE_NAMES


def test_event_types_and_sources_follow_the_click_schema() -> None:
    schema = json.loads((ROOT / "schemas" / "ClickEvent.avsc").read_text())
    by_name = {f["name"]: f["type"] for f in schema["fields"]}
    assert EVENT_TYPES == tuple(by_name["event_type"]["symbols"])
    assert SOURCES == tuple(by_name["source"]["symbols"])


def test_features_md_documents_the_spec_in_order() -> None:
    text = (ROOT / "udfs" / "features" / "FEATURES.md").read_text()
    rows = re.findall(r"^\| `([a-z0-9_]+)` \| (int|float) \| ([^|]+) \|", text, re.MULTILINE)
    assert [name for name, _, _ in rows] == list(FEATURE_NAMES)
    for (name, dtype, default), spec in zip(rows, FEATURE_SPEC, strict=True):
        assert dtype == spec.dtype, name
        assert float(default.strip().strip("`").replace(",", "")) == spec.default, name
    assert f"{max_state_bytes():,}" in text


# --- counts and horizons ------------------------------------------------------------------------

NOW = T0 + 35 * DAY_MS + 10 * HOUR_MS + 7 * MIN + 30_000  # day 35, 10:07:30 UTC
START_1H = T0 + 35 * DAY_MS + 9 * HOUR_MS + 10 * MIN  # slot 10:05 and the 11 before: 09:10
START_24H = T0 + 34 * DAY_MS + 11 * HOUR_MS  # hour 10 and the 23 before: yesterday 11:00
START_7D = T0 + 29 * DAY_MS
START_30D = T0 + 6 * DAY_MS


def test_horizon_starts() -> None:
    assert horizon_start_ms("1h", NOW) == START_1H
    assert horizon_start_ms("24h", NOW) == START_24H
    assert horizon_start_ms("7d", NOW) == START_7D
    assert horizon_start_ms("30d", NOW) == START_30D
    assert window_leave_ms("1h", START_1H) == START_1H + HOUR_MS
    assert window_leave_ms("1h", START_1H + SLOT_MS - 1) == START_1H + HOUR_MS
    assert window_leave_ms("30d", START_30D + 5) == START_30D + 30 * DAY_MS


def test_counts_per_horizon_at_exact_boundaries() -> None:
    times = [NOW, START_1H, START_1H - 1, START_24H, START_24H - 1, START_7D, START_7D - 1,
             START_30D, START_30D - 1]
    # the newest first: every other event is late and still lands in the horizons it fits
    state = run([ev(i, t) for i, t in enumerate(times)])
    v = vector(state, NOW)
    assert (v["events_page_view_1h"], v["events_page_view_24h"], v["events_page_view_7d"],
            v["events_page_view_30d"]) == (2.0, 4.0, 6.0, 8.0)
    assert (v["events_total_1h"], v["events_total_24h"], v["events_total_7d"],
            v["events_total_30d"]) == (2.0, 4.0, 6.0, 8.0)
    assert v["events_search_30d"] == 0.0


def test_counts_are_the_same_in_time_order() -> None:
    times = sorted([NOW, START_1H, START_1H - 1, START_24H, START_24H - 1, START_7D,
                    START_7D - 1, START_30D, START_30D - 1])
    v = vector(run([ev(i, t) for i, t in enumerate(times)]), NOW)
    assert (v["events_total_1h"], v["events_total_24h"], v["events_total_7d"],
            v["events_total_30d"]) == (2.0, 4.0, 6.0, 8.0)


def test_windows_move_with_now() -> None:
    state = run([ev(1, START_1H), ev(2, NOW)])
    leave = window_leave_ms("1h", START_1H)
    assert vector(state, leave - 1)["events_total_1h"] == 2.0
    assert vector(state, leave)["events_total_1h"] == 1.0
    # a timer long after the last event: everything has left every window
    later = vector(state, NOW + 31 * DAY_MS)
    assert later["events_total_30d"] == 0.0
    assert later["seconds_since_last_event"] == 31 * 86_400.0


def test_a_late_event_is_evaluated_as_of_its_own_time() -> None:
    state = run([ev(1, NOW), ev(2, NOW - 20 * MIN)])
    v = vector(state, NOW - 20 * MIN)
    assert (v["events_total_1h"], v["events_total_24h"]) == (1.0, 1.0)  # NOW is after now
    assert v["seconds_since_last_event"] == 0.0
    assert vector(state, NOW)["events_total_1h"] == 2.0
    # as far as the rings allow: 2 h behind the newest event, the 1 h ring no longer has it
    state = run([ev(3, NOW - 2 * HOUR_MS)], state)
    assert vector(state, NOW - 2 * HOUR_MS)["events_total_1h"] == 0.0
    assert vector(state, NOW - 2 * HOUR_MS)["events_total_24h"] == 1.0


def test_an_event_beyond_30_days_counts_nowhere() -> None:
    state = run([ev(1, NOW), ev(2, START_30D - 1, "SEARCH")])
    assert vector(state, NOW)["events_search_30d"] == 0.0
    assert TYPE_INDEX["SEARCH"] not in state.type_counts


def test_unknown_event_type_and_source_count_as_unknown() -> None:
    v = vector(run([ev(1, NOW, "TELEPORT", source="HOLOGRAM")]), NOW)
    assert v["events_unknown_1h"] == 1.0


# --- order insensitivity ------------------------------------------------------------------------


def mixed_events(start: int, span_ms: int, n: int, seed: int) -> list[dict[str, Any]]:
    """A user's events of every kind, spread over ``span_ms``; the cart sees collisions."""
    rng = random.Random(seed)
    kinds = ["PAGE_VIEW", "PRODUCT_VIEW", "SEARCH", "ADD_TO_CART", "REMOVE_FROM_CART",
             "CHECKOUT", "PURCHASE", "APP_OPEN", "STORE_VISIT"]
    events = []
    for i in range(n):
        etype = rng.choice(kinds)
        t = start + rng.randrange(span_ms)
        if i % 7 == 0 and events:
            t = events[-1]["event_time"]  # ties in event time
        fields: dict[str, Any] = {
            "source": rng.choice(SOURCES),
            "session_id": None if rng.random() < 0.2 else f"s-{rng.randrange(6)}",
        }
        if etype in ("PRODUCT_VIEW", "ADD_TO_CART", "REMOVE_FROM_CART", "PURCHASE"):
            fields["product_id"] = None if rng.random() < 0.1 else f"p-{rng.randrange(4)}"
            fields["category"] = "books"
        if etype in ("ADD_TO_CART", "REMOVE_FROM_CART", "PURCHASE"):
            fields["price"] = rng.choice([None, 9.99, 0.1, 19.5])
            fields["quantity"] = rng.choice([None, 1, 2, 3])
            fields["currency"] = "EUR"
        if etype in ("CHECKOUT", "PURCHASE"):
            fields["order_id"] = None if rng.random() < 0.2 else f"o-{rng.randrange(3)}"
        events.append(ev(f"{seed}-{i}", t, etype, **fields))
    return events


@pytest.mark.parametrize(("span_ms", "bounds"), [
    (HOUR_MS, FeatureBounds(lateness_ms=HOUR_MS)),  # cart events within the lateness
    (10 * MIN, DEFAULT_BOUNDS),
])
def test_shuffled_events_give_identical_vectors_and_state(span_ms: int,
                                                          bounds: FeatureBounds) -> None:
    events = mixed_events(NOW - span_ms, span_ms, 80, seed=span_ms)
    cart_events = [e for e in events
                   if e["event_type"] in ("ADD_TO_CART", "REMOVE_FROM_CART", "PURCHASE")]
    assert 15 < len(cart_events) <= bounds.cart_pending  # within the documented bound
    now = max(e["event_time"] for e in events)
    reference = run(sorted(events, key=lambda e: e["event_time"]), bounds=bounds)
    expected_vector = vector(reference, now, METADATA)
    expected_bytes = encode_state(reference)
    assert reference.recent  # the log, the cart and the orders are exercised
    assert reference.order_keys
    rng = random.Random(1)
    for _ in range(25):
        shuffled = events[:]
        rng.shuffle(shuffled)
        state = run(shuffled, bounds=bounds)
        assert vector(state, now, METADATA) == expected_vector
        assert encode_state(state) == expected_bytes
        assert state == reference


def test_non_cart_events_over_30_days_are_order_free() -> None:
    events = [e for e in mixed_events(NOW - 30 * DAY_MS, 30 * DAY_MS, 400, seed=3)
              if e["event_type"] not in ("ADD_TO_CART", "REMOVE_FROM_CART", "PURCHASE")]
    reference = encode_state(run(sorted(events, key=lambda e: e["event_time"])))
    rng = random.Random(2)
    for _ in range(10):
        rng.shuffle(events)
        assert encode_state(run(events)) == reference


def test_a_cart_event_beyond_the_lateness_is_applied_as_it_arrives() -> None:
    # documented order sensitivity: once the PURCHASE is resolved (the newest event is more
    # than the lateness past it), an older ADD arriving late lands after it
    purchase = ev("buy", NOW, "PURCHASE", order_id="o-1")
    view = ev("view", NOW + 20 * MIN)
    add = ev("add", NOW - 30 * MIN, "ADD_TO_CART", product_id="p-1", price=5.0, quantity=1)
    later = NOW + 20 * MIN
    assert vector(run([add, purchase, view]), later)["cart_items"] == 0.0
    assert vector(run([purchase, view, add]), later)["cart_items"] == 1.0
    # while the PURCHASE is still held, the late ADD is resolved before it
    assert vector(run([purchase, add]), NOW)["cart_items"] == 0.0
    # and with a lateness that covers it, arrival order does not matter
    covering = FeatureBounds(lateness_ms=2 * HOUR_MS)
    assert vector(run([purchase, view, add], bounds=covering), later)["cart_items"] == 0.0


# --- duplicates ---------------------------------------------------------------------------------


def test_duplicates_are_ignored() -> None:
    event = ev(1, NOW, "PURCHASE", product_id="p-1", price=10.0, quantity=2, order_id="o-1")
    state = update(None, event)
    before = encode_state(state)
    assert state.is_duplicate("e-1")
    assert not state.is_duplicate("e-2")
    assert update(state, dict(event)) is state
    assert encode_state(state) == before
    v = vector(state, NOW)
    assert v["events_purchase_1h"] == 1.0
    assert v["revenue_total"] == 20.0


def test_dedup_memory_is_bounded_to_the_newest_ids() -> None:
    events = [ev(i, NOW - HOUR_MS // 2 + i * 1000) for i in range(1500)]
    random.Random(4).shuffle(events)
    state = run(events)
    assert len(state.seen_hashes) == DEFAULT_BOUNDS.dedup_ids == len(state.seen_slots)
    assert state.is_duplicate("e-1499")
    assert not state.is_duplicate("e-0")  # forgotten: a re-send now would count again


def test_dedup_memory_forgets_ids_outside_its_window() -> None:
    state = run([ev(1, NOW), ev(2, NOW + 30 * MIN)])
    assert state.is_duplicate("e-1")
    run([ev(3, NOW + DEFAULT_BOUNDS.dedup_window_ms + SLOT_MS)], state)
    assert not state.is_duplicate("e-1")
    assert state.is_duplicate("e-2") and state.is_duplicate("e-3")


# --- cart ---------------------------------------------------------------------------------------


def cart_vector(events: list[dict[str, Any]]) -> tuple[float, float, float]:
    state = run(events)
    v = vector(state, max(e["event_time"] for e in events))
    return v["cart_lines"], v["cart_items"], v["cart_value"]


def atc(i: int, t: int, product: str | None, qty: int | None = 1,
        price: float | None = 10.0) -> dict[str, Any]:
    return ev(f"c{i}", t, "ADD_TO_CART", product_id=product, quantity=qty, price=price)


def rfc(i: int, t: int, product: str | None, qty: int | None = 1) -> dict[str, Any]:
    return ev(f"c{i}", t, "REMOVE_FROM_CART", product_id=product, quantity=qty)


def pur(i: int, t: int, product: str | None, qty: int = 1) -> dict[str, Any]:
    return ev(f"c{i}", t, "PURCHASE", product_id=product, quantity=qty, price=10.0,
              order_id="o-1")


def test_cart_add_remove_purchase() -> None:
    t = NOW
    assert cart_vector([atc(1, t, "p1", 2, 10.0), atc(2, t + 1, "p2", 1, 5.5)]) == (2, 3, 25.5)
    # adding again sums quantities and takes the newest price
    assert cart_vector([atc(1, t, "p1", 2, 10.0), atc(2, t + 1, "p1", 1, 12.0)]) == (1, 3, 36.0)
    # no quantity: add 1; remove without quantity drops the line
    assert cart_vector([atc(1, t, "p1", None), atc(2, t + 1, "p1", None)]) == (1, 2, 20.0)
    assert cart_vector([atc(1, t, "p1", 3), rfc(2, t + 1, "p1", None)]) == (0, 0, 0.0)
    assert cart_vector([atc(1, t, "p1", 3), rfc(2, t + 1, "p1", 1)]) == (1, 2, 20.0)
    assert cart_vector([atc(1, t, "p1", 1), rfc(2, t + 1, "p1", 5)]) == (0, 0, 0.0)
    assert cart_vector([atc(1, t, "p1", 1), rfc(2, t + 1, "p9", 1)]) == (1, 1, 10.0)
    # a purchase empties the cart of the purchased product, or of everything without one
    both = [atc(1, t, "p1"), atc(2, t + 1, "p2")]
    assert cart_vector([*both, pur(3, t + 2, "p1")]) == (1, 1, 10.0)
    assert cart_vector([*both, pur(3, t + 2, None)]) == (0, 0, 0.0)
    # a line without a price counts items but no value
    assert cart_vector([atc(1, t, "p1", 2, None)]) == (1, 2, 0.0)
    # events without a product id change nothing but the count
    assert cart_vector([atc(1, t, None, 2)]) == (0, 0, 0.0)


def test_cart_events_resolve_in_event_time_order() -> None:
    t = NOW
    # the add happened before the purchase: arriving after it, it is still bought
    assert cart_vector([pur(2, t + 2, None), atc(1, t, "p1")]) == (0, 0, 0.0)
    # the add happened after the purchase: it stays
    assert cart_vector([pur(2, t, None), atc(1, t + 2, "p1")]) == (1, 1, 10.0)
    # a remove that arrives before its add
    assert cart_vector([rfc(2, t + 5, "p1", 1), atc(1, t, "p1", 2)]) == (1, 1, 10.0)


def test_cart_at_a_late_event_only_sees_cart_events_up_to_then() -> None:
    state = run([atc(1, NOW, "p1"), atc(2, NOW + MIN, "p2")])
    assert vector(state, NOW)["cart_lines"] == 1.0
    assert vector(state, NOW + MIN)["cart_lines"] == 2.0
    assert set(state.cart_at()) == {"p1", "p2"}


def test_cart_lines_expire_after_30_days_untouched() -> None:
    state = run([atc(1, NOW, "p1")])
    assert vector(state, NOW + 29 * DAY_MS)["cart_items"] == 1.0
    assert vector(state, NOW + 30 * DAY_MS)["cart_items"] == 0.0
    run([ev(9, NOW + 30 * DAY_MS)], state)
    assert state.cart == {} and state.cart_pending == []


def test_cart_is_bounded() -> None:
    bounds = DEFAULT_BOUNDS
    state = run([atc(i, NOW + i * 1000, f"p{i}") for i in range(bounds.cart_lines + 30)])
    assert len(state.cart) + len(state.cart_pending) <= bounds.cart_lines + bounds.cart_pending
    assert len(state.cart_pending) <= bounds.cart_pending
    state = run([ev(99, NOW + HOUR_MS)], state)  # everything resolves
    assert state.cart_pending == []
    assert len(state.cart) == bounds.cart_lines
    assert "p0" not in state.cart  # the line updated longest ago went first
    assert f"p{bounds.cart_lines + 29}" in state.cart


# --- sessions, orders, recency, shares ----------------------------------------------------------


def test_sessions_count_distinct_session_days() -> None:
    day = NOW - NOW % DAY_MS
    events = [
        ev(1, NOW, session_id="s1"), ev(2, NOW + 1, session_id="s1"),
        ev(3, NOW - HOUR_MS, session_id="s2"),
        ev(4, NOW - 3 * DAY_MS, session_id="s3"),
        ev(5, NOW - 10 * DAY_MS, session_id="s4"),
        ev(6, NOW - 40 * DAY_MS, session_id="s5"),  # too old
        ev(7, NOW, "STORE_VISIT", source="OFFLINE"),  # no session
        # s6 crosses midnight UTC: a session-day on each side (one arriving late)
        ev(8, day + 5 * MIN, session_id="s6"), ev(9, day - 5 * MIN, session_id="s6"),
    ]
    state = run(events)
    v = vector(state, NOW)
    assert (v["sessions_7d"], v["sessions_30d"]) == (5.0, 6.0)
    assert len(state.session_keys) == 6
    # the day of s4 leaves the 30 days
    start_s4 = (NOW - 10 * DAY_MS) // DAY_MS * DAY_MS
    assert vector(state, start_s4 + 30 * DAY_MS - 1)["sessions_30d"] == 6.0
    assert vector(state, start_s4 + 30 * DAY_MS)["sessions_30d"] == 5.0


def test_sessions_per_day_are_capped_order_free() -> None:
    cap = DEFAULT_BOUNDS.sessions_per_day
    events = [ev(i, NOW + i, session_id=f"s{i}") for i in range(cap + 10)]
    state = run(events)
    assert vector(state, NOW + cap + 10)["sessions_7d"] == float(cap)
    assert len(state.session_keys) == cap
    assert run(events[::-1]).session_keys == state.session_keys  # the smallest hashes stay


def test_orders_revenue_and_average_order_value() -> None:
    events = [
        ev(1, NOW - 2 * MIN, "PURCHASE", order_id="o1", product_id="a", price=10.0, quantity=2),
        ev(2, NOW - 2 * MIN + 300, "PURCHASE", order_id="o1", product_id="b", price=5.0),
        ev(3, NOW, "PURCHASE", order_id="o2", product_id="c", price=15.0, quantity=1),
        ev(4, NOW - 40 * DAY_MS, "PURCHASE", order_id="o0", product_id="d", price=100.0),
    ]
    state = run(events)
    v = vector(state, NOW)
    assert (v["orders_30d"], v["revenue_30d"]) == (2.0, 40.0)
    assert (v["orders_total"], v["revenue_total"]) == (3.0, 140.0)
    assert v["avg_order_value"] == pytest.approx(140.0 / 3)
    assert v["events_purchase_1h"] == 3.0
    # no order id: each PURCHASE is its own order; no price: an order without revenue
    state = run([ev(5, NOW, "PURCHASE", product_id="x", price=2.5, quantity=2),
                 ev(6, NOW + 1, "PURCHASE", product_id="y")])
    v = vector(state, NOW + 1)
    assert (v["orders_30d"], v["revenue_30d"], v["avg_order_value"]) == (2.0, 5.0, 2.5)


def test_no_orders_means_zero_average() -> None:
    v = vector(run([ev(1, NOW)]), NOW)
    assert (v["orders_total"], v["avg_order_value"], v["revenue_total"]) == (0.0, 0.0, 0.0)


def test_revenue_sums_are_exact_in_any_order() -> None:
    prices = [0.1, 0.2, 0.3, 19.99, 1e-3, 7.77]
    events = [ev(i, NOW + i, "PURCHASE", order_id=f"o{i}", price=p) for i, p in enumerate(prices)]
    a = vector(run(events), NOW + 10)["revenue_total"]
    b = vector(run(events[::-1]), NOW + 10)["revenue_total"]
    assert a == b == pytest.approx(sum(prices))


def test_recency() -> None:
    state = run([ev(1, NOW - DAY_MS), ev(2, NOW, "ADD_TO_CART", product_id="p")])
    v = vector(state, NOW + 90_000)
    assert v["seconds_since_last_event"] == 90.0
    assert v["seconds_since_last_add_to_cart"] == 90.0
    assert v["seconds_since_last_purchase"] == NEVER_SECONDS
    assert v["days_since_first_event"] == pytest.approx(1 + 90_000 / DAY_MS)
    run([ev(3, NOW - HOUR_MS, "PURCHASE", order_id="o")], state)  # late: recency is a max
    v = vector(state, NOW + 90_000)
    assert v["seconds_since_last_purchase"] == 3690.0
    assert v["seconds_since_last_event"] == 90.0
    assert state.last_event_ms == NOW and state.first_event_ms == NOW - DAY_MS


def test_channel_shares() -> None:
    events = [ev(1, NOW, source="MOBILE"), ev(2, NOW, source="MOBILE"),
              ev(3, NOW, source="OFFLINE"), ev(4, NOW - 20 * DAY_MS, source="WEB"),
              ev(5, NOW - 40 * DAY_MS, source="MOBILE")]
    v = vector(run(events), NOW)
    assert (v["mobile_share_30d"], v["offline_share_30d"]) == (0.5, 0.25)


# --- metadata and the view ----------------------------------------------------------------------


def test_metadata_features_with_and_without_metadata() -> None:
    state = run([ev(1, NOW)])
    without = vector(state, NOW, None)
    assert (without["has_metadata"], without["days_since_signup"],
            without["lifetime_value"]) == (0.0, -1.0, 0.0)
    with_md = vector(state, NOW, METADATA)
    assert with_md["has_metadata"] == 1.0
    assert with_md["days_since_signup"] == pytest.approx((NOW - METADATA["signup_time"]) / DAY_MS)
    assert with_md["lifetime_value"] == 321.5
    # metadata alone (no events yet) still gives the metadata features
    assert vector(None, NOW, METADATA)["lifetime_value"] == 321.5
    assert vector(None, NOW, METADATA)["events_total_30d"] == 0.0


def test_vector_without_state_is_the_defaults() -> None:
    assert vector(None, NOW) == {spec.name: spec.default for spec in FEATURE_SPEC}
    assert vector(UserFeatures(), NOW) == vector(None, NOW)


def test_vector_list_is_in_spec_order() -> None:
    state = run(mixed_events(NOW - HOUR_MS, HOUR_MS, 50, seed=9))
    values = vector(state, NOW, METADATA)
    assert vector_list(state, NOW, METADATA) == [values[name] for name in FEATURE_NAMES]
    assert all(math.isfinite(x) for x in values.values())


@pytest.mark.parametrize("with_state", [False, True])
def test_feature_view_gives_a_float_for_every_feature(with_state: bool) -> None:
    state = run(mixed_events(NOW - DAY_MS, DAY_MS, 80, seed=5)) if with_state else None
    view = FeatureView(state, METADATA if with_state else None, NOW, churn_score=0.25)
    for name in FEATURE_NAMES:
        value = view.feature(name)
        assert type(value) is float, name
    assert view.feature("no_such_feature") is None
    assert view.churn_score == 0.25
    assert view.now_ms == NOW


def test_feature_view_matches_the_vector_at_any_time() -> None:
    state = run(mixed_events(NOW - 2 * DAY_MS, 2 * DAY_MS, 200, seed=8))
    for now in (NOW - DAY_MS, NOW - 30 * MIN, NOW, NOW + 3 * HOUR_MS, NOW + 40 * DAY_MS):
        expected = vector(state, now, METADATA)
        for names in (FEATURE_NAMES, FEATURE_NAMES[::-1]):  # counts first, or the rest first
            view = FeatureView(state, METADATA, now)
            assert {name: view.feature(name) for name in names} == expected


def test_feature_view_metadata_and_events() -> None:
    state = run([ev(1, NOW, "ADD_TO_CART", product_id="p1", category="books", price=2.5,
                    quantity=2, currency="EUR", source="MOBILE"),
                 ev(2, NOW - MIN), ev(3, NOW + MIN, "SEARCH")])
    view = FeatureView(state, METADATA, NOW)
    assert view.metadata("country") == "DE"
    assert view.metadata("opt_ins.email") is True
    assert view.metadata("opt_ins.sms") is False
    assert view.metadata("opt_ins.nothing") is None
    assert view.metadata("country.deeper") is None
    assert view.last_event_ms == NOW + MIN
    assert [e.event_id for e in view.recent_events()] == ["e-2", "e-1"]  # up to now only
    added = view.recent_events()[1]
    assert added == RecentEvent("e-1", "ADD_TO_CART", NOW, "MOBILE", "p1", "books", 2.5, 2,
                                "EUR")
    assert added.value == 5.0
    assert [e.event_id for e in state.recent_events()] == ["e-2", "e-1", "e-3"]
    empty = FeatureView(None, None, NOW)
    assert empty.metadata("opt_ins.email") is None
    assert empty.recent_events() == ()
    assert empty.last_event_ms is None
    assert empty.churn_score is None


def test_recent_log_keeps_the_newest_in_time_order() -> None:
    events = [ev(i, NOW - i * MIN) for i in range(80)]
    random.Random(6).shuffle(events)
    state = run(events)
    recent = state.recent_events()
    assert len(recent) == DEFAULT_BOUNDS.recent_events
    assert [e.event_time for e in recent] == sorted(e.event_time for e in recent)
    assert recent[0].event_time == NOW - 49 * MIN and recent[-1].event_time == NOW


def test_recent_events_reuse_the_last_parse_exactly() -> None:
    """Each evaluation's log equals a fresh parse of its rows, whatever came before it.

    ``recent_events`` reuses the events of the rows it parsed last (``_parse_rows``): a
    differential check against a parse from scratch over a seeded mix of what happens between
    two evaluations (events added in and out of order, the oldest dropped, a cut at an earlier
    time, another user's log in between, duplicates of a time).
    """
    from udfs.features.state import _parse_row

    rng = random.Random(11)
    users = [run([ev(i, NOW - rng.randrange(600) * MIN) for i in range(rng.randrange(1, 8))])
             for _ in range(4)]
    n = 100
    for _ in range(1500):
        state = rng.choice(users)
        if rng.random() < 0.7:  # an event: mostly the newest, sometimes late
            at = state.last_event_ms + MIN if rng.random() < 0.8 else NOW - rng.randrange(900) * MIN
            n += 1
            update(state, ev(n, at, rng.choice(["PAGE_VIEW", "ADD_TO_CART", "PURCHASE"]),
                             product_id=f"p{rng.randrange(3)}", price=1.5, quantity=1))
        now_ms = None if rng.random() < 0.3 else state.last_event_ms - rng.choice(
            [0, 0, 0, MIN, 30 * MIN])
        got = state.recent_events(now_ms)
        rows = state.recent if now_ms is None else [
            r for r in state.recent if int(r[:15]) <= now_ms]
        assert got == tuple(_parse_row(r) for r in rows)
    assert max(len(u.recent) for u in users) == DEFAULT_BOUNDS.recent_events  # the cap was hit


def test_update_does_not_mutate_the_event() -> None:
    event = ev(1, NOW, "PURCHASE", product_id="p" * 200, price=3.0, quantity=2,
               session_id="s", order_id="o", properties={"k": "v"})
    before = copy.deepcopy(event)
    update(None, event)
    assert event == before


def test_long_and_odd_identifiers_are_clipped_and_kept_parseable() -> None:
    odd = "p\x00q\x1fr" + "é" * 100
    state = run([ev(1, NOW, "ADD_TO_CART", product_id=odd, category=odd, currency="EURO" * 9)])
    (event,) = state.recent_events()
    assert event.product_id is not None and len(event.product_id.encode()) <= MAX_ID_BYTES
    assert "\x00" not in event.product_id and "\x1f" not in event.product_id
    assert event.currency == "EUROEURO"
    assert decode_state(encode_state(state)) == state


# --- TTL ----------------------------------------------------------------------------------------


def test_expired() -> None:
    ttl = 90 * DAY_MS
    state = run([ev(1, NOW)])
    assert not expired(state, NOW, ttl)
    assert not expired(state, NOW + ttl, ttl)
    assert expired(state, NOW + ttl + 1, ttl)
    assert expired(None, NOW, ttl)
    assert expired(UserFeatures(), NOW, ttl)


# --- encoding and bounds ------------------------------------------------------------------------


def test_round_trip() -> None:
    state = run(mixed_events(NOW - 3 * DAY_MS, 3 * DAY_MS, 300, seed=11))
    state = run(mixed_events(NOW, 5 * MIN, 30, seed=12), state)  # pending cart events too
    assert state.cart_pending and state.cart and state.recent and state.revenue_days
    data = encode_state(state)
    assert data[0] == STATE_SCHEMA_VERSION == 1
    again = decode_state(data)
    assert again == state
    assert encode_state(again) == data
    assert vector(again, NOW + MIN, METADATA) == vector(state, NOW + MIN, METADATA)
    assert again.recent_events() == state.recent_events()
    assert state_size_bytes(state) == len(data)
    empty = UserFeatures()
    assert decode_state(encode_state(empty)) == empty


def test_encoding_is_pinned() -> None:
    # a change of these bytes changes the stored format: bump STATE_SCHEMA_VERSION and migrate
    state = run([
        ev(1, T0 + 90 * MIN, "ADD_TO_CART", source="MOBILE", session_id="s", product_id="p",
           price=2.5, quantity=2, currency="EUR"),
        ev(2, T0 + 91 * MIN, "PURCHASE", source="MOBILE", session_id="s", product_id="p",
           price=2.5, quantity=2, currency="EUR", order_id="o"),
    ])
    assert encode_state(state).hex() == PINNED_HEX


PINNED_HEX = (
    "0180e7a2aa9863c090aaaa9863c090aaaa986380e7a2aa986302904e9001a008000000000000000000000000"
    "0000000000000000000000000100000000000000000000000000000000000000000000000000000001000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000010000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000100000000000000000000000000000000000000000000000000000001000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000010000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000000000000000000000000000000000000000000000000004f001000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000002"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000e00300000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000881300"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0010e64984c30b4d000010a03051b70b4d000020317386494bf10d9f0706c581494c583e1072ac560072ac56"
    "00c8013030313730343037323630303030301f652d311f4144445f544f5f434152541f4d4f42494c451f701f"
    "1f322e351f321f455552003030313730343037323636303030301f652d321f50555243484153451f4d4f4249"
    "4c451f701f1f322e351f321f455552000054c059a4c28c0100002044a5c28c01000002000000020000000000"
    "0000000004400000000000000440000216652d31007000652d320070"
)


def rich_events() -> list[dict[str, Any]]:
    """A fixed history touching every part of the state: every type and source, sessions,
    orders with and without an order id, a resolved and a held cart, a late event, a duplicate,
    a clipped identifier, a separator inside a field and an event beyond 30 days."""
    d0 = T0 + 40 * DAY_MS  # the newest day
    long_id = "p-" + "\u00e9" * 40  # 82 UTF-8 bytes: clipped to 64
    return [
        ev("a1", d0 - 3 * DAY_MS + 9 * HOUR_MS, "PAGE_VIEW", session_id="s-1"),
        ev("a2", d0 - 3 * DAY_MS + 9 * HOUR_MS + MIN, "PRODUCT_VIEW", source="MOBILE",
           session_id="s-1", product_id="p-1", category="shoes"),
        ev("a3", d0 - 3 * DAY_MS + 23 * HOUR_MS + 59 * MIN, "SEARCH", session_id="s-2"),
        ev("a4", d0 - 2 * DAY_MS + 10 * HOUR_MS, "ADD_TO_CART", session_id="s-3",
           product_id="p-1", category="shoes", price=10.5, quantity=2, currency="EUR"),
        ev("a5", d0 - 2 * DAY_MS + 10 * HOUR_MS + MIN, "ADD_TO_CART", session_id="s-3",
           product_id="p-2"),
        ev("a6", d0 - 2 * DAY_MS + 10 * HOUR_MS + 2 * MIN, "REMOVE_FROM_CART",
           session_id="s-3", product_id="p-2"),
        ev("a7", d0 - 2 * DAY_MS + 11 * HOUR_MS, "CHECKOUT", session_id="s-3", order_id="o-1"),
        ev("a8", d0 - 2 * DAY_MS + 11 * HOUR_MS + MIN, "PURCHASE", session_id="s-3",
           order_id="o-1", product_id="p-3", price=99.99, quantity=1, currency="EUR"),
        ev("a9", d0 - DAY_MS + 15 * HOUR_MS, "PURCHASE", source="OFFLINE", product_id="p-4",
           price=5.25, currency="USD"),
        ev("b1", d0 + 8 * HOUR_MS, "APP_OPEN", source="MOBILE", session_id="s-4"),
        ev("b2", d0 + 8 * HOUR_MS + MIN, "STORE_VISIT", source="OFFLINE"),
        ev("b3", d0 + 8 * HOUR_MS + 2 * MIN, "TELEPORT", source="HOLOGRAM", session_id="s-4"),
        ev("b4", d0 + 8 * HOUR_MS + 30 * MIN, "ADD_TO_CART", source="MOBILE", session_id="s-4",
           product_id=long_id, category="odd\x1fcat", price=0.1, quantity=3, currency="EUR"),
        ev("b5", d0 + 8 * HOUR_MS + 28 * MIN, "ADD_TO_CART", source="MOBILE",
           session_id="s-4", product_id="p-1", price=11.0, currency="EUR"),  # late, held
        ev("b6", d0 + 8 * HOUR_MS + 33 * MIN, "REMOVE_FROM_CART", source="MOBILE",
           session_id="s-4", product_id="p-1", quantity=1),
        ev("b4", d0 + 8 * HOUR_MS + 30 * MIN, "ADD_TO_CART", source="MOBILE", session_id="s-4",
           product_id=long_id, price=0.1, quantity=3),  # a duplicate: ignored
        ev("b7", d0 - 35 * DAY_MS, "PURCHASE", order_id="o-0", product_id="p-9",
           price=1.0),  # beyond 30 days: lifetime totals only
    ]


def test_encoding_of_a_rich_state_is_pinned() -> None:
    # keyed state in existing savepoints holds these bytes: they must never change within
    # STATE_SCHEMA_VERSION 1 (a new layout is a new version with a migrating decoder)
    state = run(rich_events())
    assert state.cart and state.cart_pending and state.revenue_days is not None
    assert len(state.type_counts) == len(EVENT_TYPES) and len(state.source_counts) == len(SOURCES)
    data = encode_state(state)
    assert data.hex() == RICH_PINNED_HEX
    decoded = decode_state(bytes.fromhex(RICH_PINNED_HEX))
    assert decoded == state
    assert encode_state(decoded) == data
    now = state.last_event_ms
    assert vector(decoded, now, METADATA) == vector(state, now, METADATA)
    assert decoded.recent_events() == state.recent_events()


RICH_PINNED_HEX = (
    "0180808ec19b63c0f9afa2b26380c68fe6b16380fd99a2b2630680fc0cfe0fa0290000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000001000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000001000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000001000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000100000001000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000002000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000020000"
    "0000000000020000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000001000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000001000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000010000"
    "0000000000010000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000010000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000100000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000010000"
    "0001000000000000000000000000000000000000000000000000000000000000000100000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000001000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000010000000000000000000000000000000000000000000000000000000100000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000001000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000010000000000000000000000000000000000000000000000000000000100000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000001000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000010000000000000000000000000000000000000000000000000000001ec0070000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000002000000050000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000001000000000000000000000004000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000100000001000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000001000000000000000000000000000000000000000000000000000000e00300000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "0000000000000000000000000000000000000000000000000000968601000000000082140000000000000000"
    "0000000000000000000000000000000000000000000000000000000000000000000000000000000000000000"
    "000000000000000000004003231059304d00001e71f49f304d0000bd9d2fce314d0000e15c84ad334d000020"
    "2711814c314d0000ee7583b0324d0000601f4d3a3cf0e72ca9bbdd1d975f0415ee18ecac4c6d527f19524085"
    "94ba92a44ce541cae3beaff64d1133b2538278f76e30c0d95600c5d95600c6d95600c0d95600c6d95600c0d9"
    "5600ac0c3030313730373239363430303030301f652d61311f504147455f564945571f5745421f1f1f1f1f00"
    "3030313730373239363436303030301f652d61321f50524f445543545f564945571f4d4f42494c451f702d31"
    "1f73686f65731f1f1f003030313730373335303334303030301f652d61331f5345415243481f5745421f1f1f"
    "1f1f003030313730373338363430303030301f652d61341f4144445f544f5f434152541f5745421f702d311f"
    "73686f65731f31302e351f321f455552003030313730373338363436303030301f652d61351f4144445f544f"
    "5f434152541f5745421f702d321f1f1f1f003030313730373338363532303030301f652d61361f52454d4f56"
    "455f46524f4d5f434152541f5745421f702d321f1f1f1f003030313730373339303030303030301f652d6137"
    "1f434845434b4f55541f5745421f1f1f1f1f003030313730373339303036303030301f652d61381f50555243"
    "484153451f5745421f702d331f1f39392e39391f311f455552003030313730373439303830303030301f652d"
    "61391f50555243484153451f4f46464c494e451f702d341f1f352e32351f1f55534400303031373037353532"
    "3030303030301f652d62311f4150505f4f50454e1f4d4f42494c451f1f1f1f1f003030313730373535323036"
    "303030301f652d62321f53544f52455f56495349541f4f46464c494e451f1f1f1f1f00303031373037353532"
    "3132303030301f652d62331f554e4b4e4f574e1f554e4b4e4f574e1f1f1f1f1f003030313730373535333638"
    "303030301f652d62351f4144445f544f5f434152541f4d4f42494c451f702d311f1f31312e301f1f45555200"
    "3030313730373535333830303030301f652d62341f4144445f544f5f434152541f4d4f42494c451f702dc3a9"
    "c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9"
    "c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a91f6f6464efbfbd6361741f302e311f331f4555520030303137303735"
    "35333938303030301f652d62361f52454d4f56455f46524f4d5f434152541f4d4f42494c451f702d311f1f1f"
    "311f2802000000000000000000254000ed28888d01000006702d317e806a21928d010000403f23928d010000"
    "60fe25928d01000000000000030000000100000000000000000026409a9999999999b93f000000000000f87f"
    "000001ae01652d623500702d3100652d623400702dc3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3"
    "a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a9c3a900652d6236"
    "00702d31"
)


def test_state_schema_is_its_avsc_file_and_names_its_version() -> None:
    on_disk = json.loads((ROOT / "schemas" / f"{STATE_SCHEMA_NAME}.avsc").read_text())
    assert STATE_SCHEMA == on_disk
    assert f"Version {STATE_SCHEMA_VERSION} (current)" in STATE_SCHEMA["doc"]


def test_decode_rejects_bad_input() -> None:
    data = encode_state(run([ev(1, NOW)]))
    with pytest.raises(ValueError, match="empty"):
        decode_state(b"")
    with pytest.raises(ValueError, match="version 9 is unknown"):
        decode_state(b"\x09" + data[1:])
    with pytest.raises(ValueError, match="malformed"):
        decode_state(data[:-3])
    with pytest.raises(ValueError, match="malformed"):
        decode_state(data + b"\x00")


def test_state_stays_bounded_over_100k_events_in_60_days() -> None:
    rng = random.Random(60)
    span = 60 * DAY_MS
    step = span // 100_000
    state = None
    kinds = list(EVENT_TYPES)
    for i in range(100_000):
        # mostly in order, some up to 30 s late, and every 500th a re-send
        t = T0 + i * step - (rng.randrange(30_000) if rng.random() < 0.05 else 0)
        etype = kinds[rng.randrange(len(kinds))]
        event_id = f"e-{i - 1 if i % 500 == 0 and i else i}"
        event = ev(event_id, t, etype, source=SOURCES[rng.randrange(4)],
                   session_id=f"s-{i // 40}", product_id=f"p-{rng.randrange(300)}",
                   order_id=f"o-{i // 3}", price=rng.choice([None, 4.99, 120.0]),
                   quantity=rng.choice([None, 1, 2]))
        state = update(state, event)
    assert state is not None
    b = DEFAULT_BOUNDS
    assert len(state.recent) <= b.recent_events
    assert len(state.seen_hashes) <= b.dedup_ids
    assert len(state.cart) <= b.cart_lines and len(state.cart_pending) <= b.cart_pending
    assert len(state.session_keys) <= 30 * b.sessions_per_day
    assert len(state.order_keys) <= 30 * b.orders_per_day
    assert len(state.type_counts) <= len(EVENT_TYPES)
    size = state_size_bytes(state)
    assert size <= max_state_bytes() <= 48 * 1024
    v = vector(state, state.last_event_ms)
    assert 0 < v["events_total_30d"] <= 100_000 / 2 + 1


def worst_case_state() -> UserFeatures:
    """Every section of the state at its cap, with identifiers at the clipping length."""
    b = DEFAULT_BOUNDS
    long_ = "x" * 100  # identifiers are cut to 64 bytes: keep what tells them apart in front
    end = NOW
    events = []
    n = 0

    def add(t: int, etype: str, **fields: Any) -> None:
        nonlocal n
        n += 1
        events.append(ev(f"{n:06d}{long_}", t, etype, **fields))

    first_day = end // DAY_MS - 29
    for d in range(30):
        day = (first_day + d) * DAY_MS
        for k in range(b.sessions_per_day + 2):
            add(day + k * MIN, EVENT_TYPES[k % len(EVENT_TYPES)], source=SOURCES[k % 4],
                session_id=f"s-{d}-{k}")
        for k in range(b.orders_per_day + 2):
            add(day + HOUR_MS + k * MIN, "PURCHASE", order_id=f"o-{d}-{k}",
                product_id=f"{d:02d}-{k:03d}{long_}", price=123456.789, quantity=7)
    for k in range(b.cart_lines + 5):  # resolved cart lines, before the lateness
        add(end - 3 * HOUR_MS + k * 1000, "ADD_TO_CART", product_id=f"c{k:03d}{long_}",
            price=1234.5678, quantity=3)
    for k in range(b.dedup_ids):  # ids in the dedup window
        add(end - 40 * MIN + k * 1000, "PAGE_VIEW")
    for k in range(b.cart_pending):  # held cart events, each a new product
        add(end - 3 * MIN + k * 1000, "ADD_TO_CART", product_id=f"h{k:03d}{long_}",
            category=long_, currency="XXXXXXXXXX", price=98765.4321, quantity=123456789)
    for k in range(b.recent_events):  # the recent log at its longest rows
        add(end - MIN + k * 100, "REMOVE_FROM_CART", product_id=f"r{k:03d}{long_}",
            category=long_, currency="XXXXXXXXXX", price=0.1234567890123, quantity=2**31 - 1,
            source="UNKNOWN")
    events.sort(key=lambda e: e["event_time"])
    return run(events)


def test_worst_case_state_is_within_the_stated_bound() -> None:
    state = worst_case_state()
    b = DEFAULT_BOUNDS
    assert len(state.recent) == b.recent_events
    assert len(state.seen_hashes) == b.dedup_ids
    assert len(state.cart) == b.cart_lines and len(state.cart_pending) == b.cart_pending
    assert len(state.session_keys) == 30 * b.sessions_per_day
    assert len(state.order_keys) == 30 * b.orders_per_day
    size = state_size_bytes(state)
    bound = max_state_bytes()
    assert size <= bound
    assert size > 0.8 * bound  # the bound is not slack


def test_a_view_given_the_vector_answers_like_one_that_computes_it():
    state = None
    for i, etype in enumerate(["PAGE_VIEW", "ADD_TO_CART", "PURCHASE", "SEARCH"] * 5):
        cart = {"product_id": "p", "price": 20.0, "quantity": 1}
        state = update(state, ev(i, T0 + i * 60_000, etype,
                                 **(cart if etype in ("ADD_TO_CART", "PURCHASE") else {})))
    now = T0 + 3_600_000
    given = FeatureView(state, None, now, values=vector(state, now, None))
    computed = FeatureView(state, None, now)
    assert [given.feature(n) for n in FEATURE_NAMES] == [computed.feature(n)
                                                         for n in FEATURE_NAMES]


def test_the_hand_written_avro_writer_gives_fastavros_bytes() -> None:
    # encode_state writes the record itself (fastavro's per-call schema walk cost a third of it):
    # the bytes must be what fastavro writes, for real states and for every long's edge cases
    import io

    import fastavro

    from udfs.features import codec

    def by_fastavro(record: dict[str, Any]) -> bytes:
        out = io.BytesIO()
        out.write(codec._VERSION_BYTE)
        fastavro.schemaless_writer(out, codec._PARSED, record)
        return out.getvalue()

    states = [UserFeatures(), worst_case_state()]
    for seed in range(12):
        events = mixed_events(NOW - 3 * DAY_MS, 3 * DAY_MS, 60, seed=seed)
        states.append(run(sorted(events, key=lambda e: e["event_time"])))
    for state in states:
        record = codec._record(state)
        assert codec._write_record(record) == by_fastavro(record)
        assert encode_state(state) == by_fastavro(record)
    record = codec._record(states[-1])
    longs = [name for name, kind in codec._FIELDS if kind == "long"]
    edges = [0, 1, -1, 63, 64, -64, -65, 127, 128, 2**31, -(2**31), 2**62, 2**63 - 1, -(2**63)]
    rng = random.Random(5)
    for value in edges + [rng.randrange(-(2**63), 2**63) for _ in range(200)]:
        record[rng.choice(longs)] = value
        assert codec._write_record(record) == by_fastavro(record), value
    record["recent"] = "caf\u00e9 \u2603 \U0001f600"  # non-ASCII: the length is in bytes
    assert codec._write_record(record) == by_fastavro(record)
    record[longs[0]] = 2**63
    with pytest.raises(ValueError, match="does not fit an Avro long"):
        codec._write_record(record)
