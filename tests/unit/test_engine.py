"""The per-user engine (pure): scripted users through the shipped catalog."""

import random

import pytest

from udfs import engine, segments
from udfs.engine import UserState

T0 = 1_800_000_000_000  # fixed event time origin
MIN = 60_000


@pytest.fixture(scope="module")
def registry():
    return segments.SegmentRegistry(segments.load_catalog())


def click(event_id, user, event_type, t, **fields):
    return {"event_id": event_id, "user_id": user, "event_type": event_type, "event_time": t,
            "source": "WEB", "session_id": "s1", "page_url": None, "product_id": fields.get(
                "product_id"), "category": None, "search_query": None, "order_id": fields.get(
                "order_id"), "currency": "USD" if "price" in fields else None,
            "price": fields.get("price"), "quantity": fields.get("quantity"), "properties": {}}


def run(registry, state, events, timers=()):
    """Feed events and fire due timers in event-time order, as Flink would; return changes."""
    changes = []
    pending = set(timers)
    for event in events:
        for t in sorted(x for x in pending if x <= event["event_time"]):
            pending.discard(t)
            step = engine.on_timer(state, event["user_id"], t, registry)
            changes += step.changes
            if step.next_timer_ms:
                pending.add(step.next_timer_ms)
        step = engine.on_event(state, event, registry)
        changes += step.changes
        if step.next_timer_ms:
            pending.add(step.next_timer_ms)
    return changes, pending


def test_cart_abandoner_enters_after_30_minutes_without_purchase(registry):
    state = UserState()
    events = [click("e1", "u1", "ADD_TO_CART", T0, product_id="p1", price=150.0, quantity=1)]
    changes, timers = run(registry, state, events)
    assert [(c["segment_id"], c["change"]) for c in changes] == [("high-value-cart", "ENTER")]
    assert T0 + 30 * MIN in timers
    step = engine.on_timer(state, "u1", T0 + 30 * MIN, registry)
    assert [(c["segment_id"], c["change"], c["event_time"]) for c in step.changes] == [
        ("cart-abandoners", "ENTER", T0 + 30 * MIN)]


def test_purchase_within_window_keeps_user_out_and_exits_high_value_cart(registry):
    state = UserState()
    events = [
        click("e1", "u2", "ADD_TO_CART", T0, product_id="p1", price=150.0, quantity=1),
        click("e2", "u2", "PURCHASE", T0 + 10 * MIN, product_id="p1", price=150.0, quantity=1,
              order_id="o1"),
    ]
    changes, timers = run(registry, state, events)
    assert [(c["segment_id"], c["change"]) for c in changes] == [
        ("high-value-cart", "ENTER"), ("high-value-cart", "EXIT")]
    for t in sorted(t for t in timers if t <= T0 + 2 * 3_600_000):
        assert engine.on_timer(state, "u2", t, registry).changes == []


def test_duplicate_changes_nothing_and_ids_are_deterministic(registry):
    event = click("e1", "u3", "ADD_TO_CART", T0, product_id="p1", price=150.0, quantity=1)
    first = engine.on_event(UserState(), event, registry)
    state = UserState()
    again = engine.on_event(state, event, registry)
    assert [c["change_id"] for c in first.changes] == [c["change_id"] for c in again.changes]
    assert engine.on_event(state, dict(event), registry).duplicate


def test_shuffled_order_gives_the_same_final_membership(registry):
    rng = random.Random(4)
    events = [click(f"e{i}", "u4", rng.choice(["PAGE_VIEW", "PRODUCT_VIEW", "ADD_TO_CART"]),
                    T0 + i * 7_000, product_id=f"p{i % 3}", price=40.0, quantity=1)
              for i in range(40)]
    ordered = UserState()
    run(registry, ordered, events)
    shuffled_events = events[:]
    # disorder within a 30 s lateness bound: swap neighbours
    for i in range(0, len(shuffled_events) - 1, 2):
        shuffled_events[i], shuffled_events[i + 1] = shuffled_events[i + 1], shuffled_events[i]
    shuffled = UserState()
    run(registry, shuffled, shuffled_events)
    assert ordered.membership == shuffled.membership


def test_deleted_definition_exits_members_at_next_touch(registry):
    reg = segments.SegmentRegistry(segments.load_catalog())
    state = UserState()
    engine.on_event(state, click("e1", "u5", "ADD_TO_CART", T0, product_id="p", price=150.0,
                                 quantity=1), reg)
    assert "high-value-cart" in state.membership
    reg.apply(segments.delete_update("high-value-cart", 2, T0))
    step = engine.on_event(state, click("e2", "u5", "PAGE_VIEW", T0 + MIN), reg)
    assert [(c["segment_id"], c["change"], c["definition_version"], c["reason"])
            for c in step.changes] == [("high-value-cart", "EXIT", 2,
                                        "segment deleted in v2")]
