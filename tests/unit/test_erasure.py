"""Erasure (the right to be forgotten) in the pure engine step: a user-metadata tombstone EXITs
every segment with reason ``user erased``, nothing of the user fires after it, later clicks and
outcomes are dropped until a re-registration, which starts a fresh user; played through the
stand-in for the Flink adapter (tests/differential/sim.py) and on single steps."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.builders import CART, click, metadata
from tests.differential.sim import Simulator
from udfs import engine
from udfs.catalog.files import (
    CAMPAIGN_CATALOG_DIR,
    POLICY_FILE,
    RATES_FILE,
    SEGMENT_CATALOG_DIR,
    load_files,
)
from udfs.catalog.registries import Registries
from udfs.clock import CLICK_RANK, METADATA_RANK, Pending, decode_clock
from udfs.engine import Erasure, Rules, Timer, UserState

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T = 1_795_521_600_000  # 2026-11-24T12:00:00Z, a Tuesday: far from quiet hours in UTC
BOUND = 1_000
JOURNEYS = Path(__file__).resolve().parents[2] / "udfs" / "catalog" / "journeys"
CONSENT = {"email": True, "sms": True, "push": True, "in_app": True, "paid_social": True}


@pytest.fixture(scope="module")
def rules() -> Rules:
    """The shipped segments, campaigns and the cart-abandonment journey."""
    files = [SEGMENT_CATALOG_DIR, POLICY_FILE, RATES_FILE, CAMPAIGN_CATALOG_DIR,
             JOURNEYS / "cart-abandonment-chain.yaml"]
    updates = load_files(files, check_references=False).updates(0, "file")
    return Rules(Registries.from_updates(updates), 90 * DAY)


def heartbeat(sim: Simulator, until: int, user: str = "zed") -> None:
    """Another user's page views, an hour apart: they move the watermark on to ``until``."""
    t = max(sim.newest, T)
    while t < until:
        t = min(t + HOUR, until)
        sim.click(click(f"hb-{t}", user, "PAGE_VIEW", t))


def abandoning_ann(rules: Rules, erase_at: int | None) -> tuple[Simulator, int, int]:
    """ann fills a $150 cart at T and leaves; erased at ``erase_at`` (event time) when given.

    Returns the simulator, its watermark three days on, and how many changes and triggers
    there were before the erasure.
    """
    sim = Simulator(rules, BOUND)
    sim.metadata(metadata("ann", at=T - HOUR, **CONSENT))
    sim.click(click("ann-1", "ann", "ADD_TO_CART", T, **CART))
    heartbeat(sim, T + 40 * MIN)  # she abandoned her cart at T + 30 min: the journey started
    changes, triggers = len(sim.changes), len(sim.triggers)
    if erase_at is not None:
        sim.erase("ann", erase_at)
    heartbeat(sim, T + 3 * DAY)
    return sim, changes, triggers


def of(records: list[dict], user: str = "ann") -> list[dict]:
    return [r for r in records if r["user_id"] == user]


def test_erasure_exits_every_segment_and_nothing_of_the_user_fires_after(rules):
    kept, changes_before, triggers_before = abandoning_ann(rules, None)
    kept.finish()
    # without the erasure the journey and the segments go on (the test would prove nothing)
    assert of(kept.triggers[triggers_before:])
    erased, changes_before, triggers_before = abandoning_ann(rules, T + 41 * MIN)
    erased.finish()
    before = of(erased.changes[:changes_before])
    members = {c["segment_id"] for c in before if c["change"] == "ENTER"} - {
        c["segment_id"] for c in before if c["change"] == "EXIT"}
    assert members >= {"high-value-cart", "cart-abandoners"}

    after = of(erased.changes[changes_before:])
    assert sorted(c["segment_id"] for c in after) == sorted(members)
    clock = T + 30 * MIN  # her last evaluation: the abandonment window closing
    for change in after:
        assert change["change"] == "EXIT" and change["reason"] == "user erased"
        assert change["event_time"] == clock  # at her own event time, not the request's
        assert change["cause_event_id"] is None
        assert (change["churn_score"], change["model_version"]) == (None, None)
        assert change["change_id"] == engine.change_id(
            "ann", change["segment_id"], "EXIT", clock, f"erasure@{T + 41 * MIN}")
    # nothing of hers after the erasure: no trigger, no decision, no journey move
    assert of(erased.triggers[triggers_before:]) == []
    assert "ann" not in erased.registered or not erased.registered["ann"]
    assert erased.states["ann"] == UserState(erased=True)


def test_erasure_ends_journey_instances_and_drops_deferred_triggers(rules):
    sim = Simulator(rules, BOUND)
    sim.metadata(metadata("ann", at=T - HOUR, **CONSENT))
    sim.click(click("ann-1", "ann", "ADD_TO_CART", T, **CART))
    heartbeat(sim, T + 40 * MIN)
    state = sim._state("ann")  # noqa: SLF001 - the stand-in's keyed state
    instances = dict(state.campaign_state().journeys.instances)
    assert instances, "the cart journey should be waiting"
    clock = decode_clock(sim.clocks["ann"])
    step = engine.step(state, Erasure("ann", T + 41 * MIN), rules, 0)
    assert step.erasure
    assert step.journey_moves == [(i.journey_id, i.node, "exited") for i in instances.values()]
    assert step.cancel_timer_ms == clock.timer_ms  # the adapter deletes her one timer
    assert step.triggers == [] and step.decisions == [] and step.timers == []
    assert state.campaigns is not None and state.campaigns.is_empty()
    assert (state.features, state.metadata, state.membership) == (None, None, {})
    assert state.clock.is_empty() and state.clock.wake_ms() is None


def test_inputs_pending_at_the_erasure_are_dropped(rules):
    state = UserState()
    event = click("ann-9", "ann", "ADD_TO_CART", T + 10 * MIN, **CART)
    pending = Pending(T + 10 * MIN, CLICK_RANK, "ann-9", b"", T, engine.Click(event))
    waiting = engine.step(state, engine.Arrival("ann", pending, T), rules, 0)
    assert waiting.timers == [T + 10 * MIN] and waiting.changes == []
    step = engine.step(state, Erasure("ann", T + MIN), rules, 0)
    assert (step.erased_dropped, step.erased_clicks_dropped) == (1, 1)
    assert step.cancel_timer_ms == T + 10 * MIN
    assert step.changes == []  # she was in nothing yet
    # the timer the adapter could not delete (or a late one) finds nothing to do
    assert engine.step(state, Timer("ann", T + 10 * MIN), rules, 0) == engine.Step()


def test_a_later_click_or_outcome_is_dropped_and_counted(rules):
    sim, changes_before, triggers_before = abandoning_ann(rules, T + 41 * MIN)
    changes, triggers = len(sim.changes), len(sim.triggers)
    late_click = click("ann-2", "ann", "ADD_TO_CART", sim.newest + MIN, **CART)
    sim.click(late_click)
    sim.outcome({"outcome_id": "o-1", "trigger_id": "t-1", "user_id": "ann",
                 "campaign_id": "high-value-cart-sms", "channel": "SMS", "outcome": "OPENED",
                 "event_time": sim.newest, "revenue": None, "currency": None})
    heartbeat(sim, sim.newest + DAY)
    sim.finish()
    assert sim.erased_dropped == 2
    assert of(sim.changes[changes:]) == [] and of(sim.triggers[triggers:]) == []
    assert sim.states["ann"] == UserState(erased=True)
    # the step says what it dropped: the adapter counts it (and a click as done)
    step = engine.step(UserState(erased=True), engine.Click(late_click), rules, 0)
    assert (step.erased_dropped, step.erased_clicks_dropped, step.changes) == (1, 1, [])


def test_a_re_registration_starts_a_fresh_user(rules):
    sim, _, _ = abandoning_ann(rules, T + 41 * MIN)
    changes, triggers = len(sim.changes), len(sim.triggers)
    again = sim.newest + HOUR
    sim.metadata(metadata("ann", at=again + DAY, **CONSENT))  # updated_at = again
    second_cart = {**CART, "product_id": "p2"}
    sim.click(click("ann-new-1", "ann", "ADD_TO_CART", again + MIN, **second_cart))
    heartbeat(sim, again + 10 * MIN)
    enters = [(c["segment_id"], c["reason"]) for c in of(sim.changes[changes:])
              if c["change"] == "ENTER"]
    # her old cart is forgotten: $150, not $300
    assert ("high-value-cart", "cart_value 150 > 100") in enters
    # and so are her sends: the SMS goes out again, no cap or dedup remembers the first
    assert [t["campaign_id"] for t in of(sim.triggers[triggers:])] == ["high-value-cart-sms"]
    assert sim.states["ann"].erased is False
    assert sim.erased_dropped == 0


def test_a_re_registration_step_clears_the_marker(rules):
    state = UserState(erased=True)
    record = metadata("ann", at=T, **CONSENT)
    pending = Pending(T - DAY, METADATA_RANK, f"metadata@{T - DAY}", b"", 0,
                      engine.MetadataUpdate(record, T - DAY))
    step = engine.step(state, engine.Arrival("ann", pending, T), rules, 0)
    assert step.reregistered and not state.erased
    assert step.applied == 1 and state.metadata == record


def test_released_inputs_of_an_erased_user_before_a_re_registration_are_dropped(rules):
    """A batch the Java operator hands on (``engine.Released``) for an erased user: what comes
    before a metadata record is dropped and counted, the metadata re-registers the user, and
    what follows it is applied, as one input at a time would be; a batch with no metadata is
    dropped whole."""
    record = metadata("ann", at=T + DAY, **CONSENT)  # updated_at = T
    dropped = click("ann-1", "ann", "ADD_TO_CART", T - MIN, **CART)
    kept = click("ann-2", "ann", "ADD_TO_CART", T + MIN, **CART)

    def pending(event):
        return Pending(event["event_time"], CLICK_RANK, event["event_id"], b"", 0,
                       engine.Click(event))

    batch = (pending(dropped),
             Pending(T, METADATA_RANK, f"metadata@{T}", b"", 0, engine.MetadataUpdate(record, T)),
             pending(kept))
    state = UserState(erased=True)
    step = engine.step(state, engine.Released("ann", batch, T + MIN, T - 2 * MIN), rules, 0)
    assert (step.erased_dropped, step.erased_clicks_dropped) == (1, 1)
    assert step.reregistered and not state.erased and state.metadata == record
    assert step.clicks_applied == ["ann-2"] and step.applied == 2
    assert ("high-value-cart", "ENTER") in [(c["segment_id"], c["change"])
                                            for c in step.changes]
    state = UserState(erased=True)
    step = engine.step(state, engine.Released("ann", (pending(dropped), pending(kept)),
                                              T + MIN, T - 2 * MIN), rules, 0)
    assert (step.erased_dropped, step.erased_clicks_dropped, step.changes) == (2, 2, [])
    assert state == UserState(erased=True)


def test_a_repeated_tombstone_is_harmless(rules):
    sim, _, _ = abandoning_ann(rules, T + 41 * MIN)
    changes = len(sim.changes)
    sim.erase("ann", T + 42 * MIN)
    sim.erase("ann", T + 41 * MIN)  # the same one delivered twice
    assert sim.changes[changes:] == []
    assert sim.states["ann"] == UserState(erased=True)
    step = engine.step(UserState(erased=True), Erasure("ann", T), rules, 0)
    # the store deletes run again (idempotent): whatever a failed run left goes now
    assert step.erasure and step.changes == [] and step.erased_segments


def test_erasure_of_an_unknown_user_deletes_every_known_segment_row(rules):
    step = engine.step(UserState(), Erasure("nobody", T), rules, 0)
    assert step.erasure and step.changes == [] and step.cancel_timer_ms is None
    known = {str(u["definition_id"]) for u in rules.registries.segments.updates()}
    assert set(step.erased_segments) == known


def test_segments_no_longer_defined_are_exited_and_their_rows_deleted(rules):
    state = UserState(membership={"gone-segment": 3, "high-value-cart": 1})
    state.clock.clock_ms = T
    step = engine.step(state, Erasure("ann", T + DAY), rules, 0)
    assert [(c["segment_id"], c["definition_version"], c["event_time"]) for c in step.changes] \
        == [("gone-segment", 3, T), ("high-value-cart", 1, T)]
    assert "gone-segment" in step.erased_segments


def test_a_user_without_a_clock_is_erased_at_the_request_time(rules):
    state = UserState(membership={"high-value-cart": 1})
    [change] = engine.step(state, Erasure("ann", T + DAY), rules, 0).changes
    assert change["event_time"] == T + DAY
