"""The per-user engine (pure): scripted users through the shipped catalog."""

import random

import pytest

from tests.builders import CART, click
from udfs import engine
from udfs.catalog.files import load_catalog
from udfs.definitions.envelope import delete_update
from udfs.engine import UserState
from udfs.segments.compiler import parse_segment
from udfs.segments.updates import SegmentRegistry

T0 = 1_800_000_000_000  # fixed event time origin
MIN = 60_000


@pytest.fixture(scope="module")
def registry():
    return SegmentRegistry(load_catalog().segments)


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
    events = [click("e1", "u1", "ADD_TO_CART", T0, **CART)]
    changes, timers = run(registry, state, events)
    assert [(c["segment_id"], c["change"]) for c in changes] == [("high-value-cart", "ENTER")]
    assert T0 + 30 * MIN in timers
    step = engine.on_timer(state, "u1", T0 + 30 * MIN, registry)
    assert [(c["segment_id"], c["change"], c["event_time"]) for c in step.changes] == [
        ("cart-abandoners", "ENTER", T0 + 30 * MIN)]


def test_purchase_within_window_keeps_user_out_and_exits_high_value_cart(registry):
    state = UserState()
    events = [
        click("e1", "u2", "ADD_TO_CART", T0, **CART),
        click("e2", "u2", "PURCHASE", T0 + 10 * MIN, order_id="o1", **CART),
    ]
    changes, timers = run(registry, state, events)
    assert [(c["segment_id"], c["change"]) for c in changes] == [
        ("high-value-cart", "ENTER"), ("high-value-cart", "EXIT")]
    for t in sorted(t for t in timers if t <= T0 + 2 * 3_600_000):
        assert engine.on_timer(state, "u2", t, registry).changes == []


def test_duplicate_changes_nothing_and_ids_are_deterministic(registry):
    event = click("e1", "u3", "ADD_TO_CART", T0, **CART)
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
    reg = SegmentRegistry(load_catalog().segments)
    state = UserState()
    engine.on_event(state, click("e1", "u5", "ADD_TO_CART", T0, product_id="p", price=150.0,
                                 quantity=1), reg)
    assert "high-value-cart" in state.membership
    reg.apply(delete_update("high-value-cart", 2, T0))
    step = engine.on_event(state, click("e2", "u5", "PAGE_VIEW", T0 + MIN), reg)
    assert [(c["segment_id"], c["change"], c["definition_version"], c["reason"])
            for c in step.changes] == [("high-value-cart", "EXIT", 2,
                                        "segment deleted in v2")]


def test_inactivity_timer_enters_inactive_30d(registry):
    state = UserState()
    step = engine.on_event(state, click("e1", "u6", "PAGE_VIEW", T0), registry)
    thirty_days = T0 + 30 * 86_400_000
    assert step.next_timer_ms is not None and step.next_timer_ms <= thirty_days
    # fire the timers in order, as the watermark would, until 30 days passed
    timer, changes = step.next_timer_ms, []
    while timer is not None and timer <= thirty_days:
        result = engine.on_timer(state, "u6", timer, registry)
        changes += result.changes
        timer = result.next_timer_ms
    assert ("inactive-30d", "ENTER", thirty_days) in [
        (c["segment_id"], c["change"], c["event_time"]) for c in changes]


def test_changed_definition_exits_members_who_no_longer_match(registry):
    reg = SegmentRegistry(load_catalog().segments)
    state = UserState()
    engine.on_event(state, click("e1", "u7", "ADD_TO_CART", T0, product_id="p", price=150.0,
                                 quantity=1), reg)
    stricter = parse_segment({
        "id": "high-value-cart", "version": 2, "description": "over 200",
        "condition": {"feature": {"name": "cart_value", "op": ">", "value": 200}}})
    assert reg.upsert(stricter).changed
    step = engine.on_event(state, click("e2", "u7", "PAGE_VIEW", T0 + MIN), reg)
    [change] = step.changes
    assert (change["segment_id"], change["change"], change["definition_version"]) == (
        "high-value-cart", "EXIT", 2)
    assert change["reason"].startswith("definition changed to v2")


@pytest.mark.parametrize("watermark, expected", [
    (T0 + 59_999, False), (T0 + 60_000, False), (T0 + 60_001, True)])
def test_late_means_behind_the_watermark_by_more_than_the_allowed_lateness(watermark, expected):
    assert engine.is_late(T0, watermark, allowed_lateness_ms=60_000) is expected


def _simulate(registry, events, bound_ms):
    """Feed events in the given order with a watermark trailing the newest event time by
    ``bound_ms``, firing due timers first, as Flink does; then fire timers up to the end."""
    states, timers = {}, {}
    newest = 0

    def fire(until):
        for user in sorted(timers):
            while timers[user] and min(timers[user]) <= until:
                t = min(timers[user])
                timers[user].discard(t)
                step = engine.on_timer(states[user], user, t, registry)
                if step.next_timer_ms:
                    timers[user].add(step.next_timer_ms)

    for event in events:
        newest = max(newest, event["event_time"])
        fire(newest - bound_ms)
        user = event["user_id"]
        state = states.setdefault(user, UserState())
        step = engine.on_event(state, event, registry)
        if step.next_timer_ms:
            timers.setdefault(user, set()).add(step.next_timer_ms)
    fire(newest)
    return {user: dict(state.membership) for user, state in states.items()}


def test_same_events_shuffled_within_the_lateness_bound_give_the_same_membership(registry):
    from jobs.workload.workload import WorkloadSpec, generate_events

    spec = WorkloadSpec(users=25, events=3000, seed=9, start_ms=T0, duplicate_fraction=0.02,
                        out_of_order_fraction=0.0)
    events = list(generate_events(spec))
    ordered = sorted(events, key=lambda e: e["event_time"])
    bound = 30_000
    rng = random.Random(2)
    # every event may move up to the bound earlier or later: a disorder the watermark allows
    shuffled = sorted(events, key=lambda e: e["event_time"] + rng.uniform(0, bound))
    assert [e["event_id"] for e in shuffled] != [e["event_id"] for e in ordered]
    expected = _simulate(registry, ordered, bound)
    assert any(expected.values())  # the scenario puts users in segments
    assert _simulate(registry, shuffled, bound) == expected


class FixedScorer:
    version = "test-model-1"

    def __init__(self, score):
        self.value = score
        self.vectors = []

    def score(self, vector):
        self.vectors.append(vector)
        return self.value


def test_churn_score_feeds_segments_and_every_change_carries_the_model_version(registry):
    from udfs.features.spec import FEATURE_NAMES

    scorer = FixedScorer(0.65)
    state = UserState()
    step = engine.on_event(state, click("e1", "u8", "ADD_TO_CART", T0, product_id="p",
                                       price=150.0, quantity=1), registry, scorer)
    assert len(scorer.vectors) == 1 and len(scorer.vectors[0]) == len(FEATURE_NAMES)
    assert {c["segment_id"] for c in step.changes} == {"high-value-cart", "churn-risk-high"}
    assert {(c["churn_score"], c["model_version"]) for c in step.changes} == {
        (0.65, "test-model-1")}
    scorer.value = 0.2
    step = engine.on_event(state, click("e2", "u8", "PAGE_VIEW", T0 + MIN), registry, scorer)
    assert [(c["segment_id"], c["change"]) for c in step.changes] == [
        ("churn-risk-high", "EXIT")]


def test_a_drifting_user_crosses_into_churn_risk_high_with_the_real_model(registry):
    from models import CHURN_ONNX
    from udfs.churn import ChurnModel

    model = ChurnModel.load(CHURN_ONNX)
    state = UserState()
    day, n = 86_400_000, 0
    for d in [*range(10), 12, 15, 19]:  # daily buyer, then sparser visits, then gone
        for k in range(6 if d < 10 else 2):
            n += 1
            extra = ({"product_id": "p", "price": 30.0, "quantity": 1, "order_id": f"o{d}"}
                     if d < 10 and k == 3 else {})
            event = click(f"e{n}", "u9", "PURCHASE" if extra else "PAGE_VIEW",
                          T0 + d * day + k * 600_000, **extra)
            engine.on_event(state, event, registry, model)
    assert "churn-risk-high" not in state.membership
    entered = None
    for i in range(1, 21):
        step = engine.on_timer(state, "u9", T0 + (19 + i) * day, registry, model)
        for change in step.changes:
            if change["segment_id"] == "churn-risk-high" and change["change"] == "ENTER":
                entered = (i, change)
    assert entered is not None
    days_silent, change = entered
    assert 3 <= days_silent <= 14
    assert change["churn_score"] >= 0.6 and change["model_version"] == model.version


def test_expiry_exits_every_segment_with_the_reason(registry):
    state = UserState()
    engine.on_event(state, click("e1", "u10", "ADD_TO_CART", T0, product_id="p", price=150.0,
                                 quantity=1), registry)
    assert state.membership
    ttl = 90 * 86_400_000
    step = engine.on_expiry(state, "u10", T0 + ttl, ttl, FixedScorer(0.9))
    assert {(c["change"], c["reason"], c["model_version"]) for c in step.changes} == {
        ("EXIT", "user state expired: no event for 90 days", "test-model-1")}
    assert state.membership == {}


def test_the_expiry_timer_moves_at_most_once_a_day():
    day = 86_400_000
    ttl = 90 * day
    morning, evening = 3 * day + 3_600_000, 3 * day + 20 * 3_600_000
    assert engine.expiry_timer_ms(morning, ttl) == engine.expiry_timer_ms(evening, ttl)
    assert engine.expiry_timer_ms(morning, ttl) == 94 * day  # never before last event + TTL
    assert engine.expiry_timer_ms(94 * day - ttl, ttl) == 94 * day  # on a boundary: as is
    assert engine.expiry_timer_ms(4 * day + 1, ttl) == 95 * day
