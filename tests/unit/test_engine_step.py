"""The closed engine step (pure): features, churn, segments and campaigns for one input.

A small harness plays the Flink adapter's part (state between steps, campaign state stored as
its encoded bytes, timers fired in event-time order), so what the MiniCluster tests check of
campaigns can be checked here, record by record, in milliseconds.
"""

from collections import Counter

import pytest

from tests import builders
from tests.builders import CART, metadata
from udfs import engine
from udfs.campaigns import arbitration as arb
from udfs.campaigns.priority import score_priority
from udfs.catalog.files import catalog_files, load_catalog, load_files
from udfs.catalog.registries import Registries
from udfs.engine import Click, MetadataUpdate, Rules, Timer, UserState

NOON = 1_800_014_400_000  # 2027-01-15 12:00 UTC, a Friday: outside everyone's quiet hours
MIN = 60_000
DAY = 86_400_000
TTL = 90 * DAY


def click(event_id, user, event_type, t, ingest=None, **fields):
    """A click as the adapter hands it to the step: stamped with its Kafka append time."""
    return builders.click(event_id, user, event_type, t,
                          ingest_time=t if ingest is None else ingest, **fields)


@pytest.fixture(scope="module")
def catalog_rules():
    updates = load_files(catalog_files(), check_references=False).updates(0, "file")
    return Rules(Registries.from_updates(updates), TTL)


class Harness:
    """Steps users as the adapter does: state kept between steps, timers fired when due."""

    def __init__(self, rules):
        self.rules = rules
        self.states = {}
        self.stored_campaigns = {}  # user -> encoded campaign state, as in keyed state
        self.timers = {}  # user -> set of due times
        self.loads = Counter()
        self.steps = []

    def state(self, user):
        state = self.states.get(user)
        if state is None:
            state = self.states[user] = UserState()

        def load():
            self.loads[user] += 1
            return arb.decode_state(self.stored_campaigns.get(user))

        # a fresh load per step, as the adapter reads keyed state anew for every record
        state.campaigns = None
        state.load_campaigns = load
        return state

    def apply(self, user, item, now_ms=NOON + DAY):
        state = self.state(user)
        step = engine.step(state, item, self.rules, now_ms)
        self.steps.append((user, step))
        if step.expired:
            self.states.pop(user)
            self.stored_campaigns.pop(user, None)
            self.timers.pop(user, None)
            return step
        if step.campaigns_changed:
            if state.campaigns.is_empty():
                self.stored_campaigns.pop(user, None)
            else:
                self.stored_campaigns[user] = arb.encode_state(state.campaigns)
        self.timers.setdefault(user, set()).update(step.timers)
        if step.expiry_timer_ms is not None:
            self.timers[user].add(step.expiry_timer_ms)
        return step

    def fire_until(self, t):
        """Fire every timer due at or before ``t`` in event-time order (a watermark at t)."""
        while True:
            due = [(when, user) for user, ts in self.timers.items() for when in ts if when <= t]
            if not due:
                return
            when, user = min(due)
            self.timers[user].discard(when)
            if user in self.states:
                self.apply(user, Timer(user, when))

    def play(self, items):
        """(event time, user, input) in event-time order, due timers first."""
        for t, user, item in items:
            self.fire_until(t)
            self.apply(user, item)

    def triggers(self):
        return [t for _, s in self.steps for t in s.triggers]

    def decisions(self):
        return [d for _, s in self.steps for d in s.decisions]


def scenario():
    return [
        (NOON - DAY, "ann", MetadataUpdate(
            metadata("ann", "Europe/Berlin", at=NOON, email=True, sms=True, push=True),
            NOON - DAY)),
        (NOON - DAY, "ben", MetadataUpdate(
            metadata("ben", "America/Sao_Paulo", at=NOON, push=True), NOON - DAY)),
        (NOON, "ann", Click(click("ann-1", "ann", "ADD_TO_CART", NOON, **CART))),
        (NOON, "ann", Click(click("ann-1", "ann", "ADD_TO_CART", NOON, **CART))),  # duplicate
        (NOON + 1000, "ben", Click(click("ben-1", "ben", "ADD_TO_CART", NOON + 1000, **CART))),
        (NOON + 2000, "cid", Click(click("cid-1", "cid", "ADD_TO_CART", NOON + 2000, **CART))),
        (NOON + 45 * MIN, "dan", Click(click("dan-1", "dan", "PAGE_VIEW", NOON + 45 * MIN))),
    ]


def test_triggers_rivals_and_reasons_of_the_scripted_scenario(catalog_rules):
    """The MiniCluster trigger scenario, checked on the pure step to the record."""
    h = Harness(catalog_rules)
    h.play(scenario())
    h.fire_until(NOON + 60 * MIN)

    triggers = h.triggers()
    got = sorted((t["user_id"], t["campaign_id"], t["channel"], t["tier"]) for t in triggers)
    assert got == [
        ("ann", "cart-abandonment-email", "EMAIL", "P1"),
        ("ann", "high-value-cart-sms", "SMS", "P1"),
        ("ben", "cart-reminder-push", "PUSH", "P2"),
    ]
    assert len({t["trigger_id"] for t in triggers}) == len(triggers)
    by_campaign = {(t["user_id"], t["campaign_id"]): t for t in triggers}
    sms = by_campaign[("ann", "high-value-cart-sms")]
    assert sms["cause_event_id"] == "ann-1" and sms["cause_event_time"] == NOON
    assert sms["payload"] == {"product_id": "p1", "value": "150"}
    assert sms["expires_at"] == NOON + 60 * MIN
    assert sms["explanation"]["definition_versions"]["high-value-cart-sms"] == 1
    assert sms["explanation"]["features"]["event.value"] == 150.0
    email = by_campaign[("ann", "cart-abandonment-email")]
    catalog = load_catalog()
    push = next(c for c in catalog.campaigns if c.id == "cart-reminder-push")
    push_score = score_priority(push, catalog.policies[0], {}).score  # no audience sizes
    assert email["explanation"]["rivals"] == [
        {"campaign_id": "cart-reminder-push", "priority_score": pytest.approx(push_score),
         "outcome": "SUPPRESSED"}]
    assert email["cause_event_id"] == f"timer@{NOON + 30 * MIN}"  # the absence window closed
    assert email["cause_event_time"] == NOON + 30 * MIN
    assert "cart-abandoners" in email["segments"]

    decisions = h.decisions()
    deferred = {(d["user_id"], d["reason_code"]) for d in decisions if d["outcome"] == "DEFERRED"}
    assert deferred == {("cid", "AWAITING_METADATA")}  # cid never has metadata
    why = Counter((d["user_id"], d["campaign_id"], d["reason_code"])
                  for d in decisions if d["outcome"] == "SUPPRESSED")
    assert why == Counter({
        ("ann", "cart-reminder-push", "LOST_ARBITRATION"): 1,
        ("ben", "high-value-cart-sms", "NO_CONSENT"): 1,
        ("ben", "cart-abandonment-email", "NO_CONSENT"): 1,
        ("cid", "high-value-cart-sms", "NO_CONSENT"): 1,
        ("cid", "cart-abandonment-email", "NO_CONSENT"): 1,
        ("cid", "cart-reminder-push", "NO_CONSENT"): 1,
    })


def test_the_same_inputs_give_the_same_records(catalog_rules):
    """Trigger ids are deterministic: a replay of the scenario gives identical records."""
    runs = []
    for _ in range(2):
        h = Harness(catalog_rules)
        h.play(scenario())
        h.fire_until(NOON + 60 * MIN)
        runs.append(([(t["trigger_id"], t["tier"]) for t in h.triggers()],
                     [(d["trigger_id"], d["outcome"], d["reason_code"]) for d in h.decisions()]))
    assert runs[0] == runs[1]
    assert runs[0][0]


def test_a_duplicate_click_changes_nothing(catalog_rules):
    h = Harness(catalog_rules)
    h.apply("ann", MetadataUpdate(metadata("ann", "UTC", at=NOON, email=True, sms=True),
                                  NOON - DAY))
    first = h.apply("ann", Click(click("a1", "ann", "ADD_TO_CART", NOON, **CART)))
    assert first.triggers and first.features_changed
    again = h.apply("ann", Click(click("a1", "ann", "ADD_TO_CART", NOON, **CART)))
    assert again.duplicate
    assert again == engine.Step(duplicate=True)


def test_the_campaign_state_is_read_only_when_a_campaign_can_fire():
    """No churn campaign: a page view with nothing to fire never loads the campaign state."""
    updates = load_files(catalog_files(), check_references=False).updates(0, "file")
    registries = Registries.from_updates(
        [u for u in updates if u["definition_id"] != "churn-retention-offer"])
    h = Harness(Rules(registries, TTL))
    step = h.apply("eve", Click(click("e1", "eve", "PAGE_VIEW", NOON)))
    assert h.loads["eve"] == 0 and not step.campaigns_changed
    h.apply("eve", Click(click("e2", "eve", "ADD_TO_CART", NOON + MIN, **CART)))
    assert h.loads["eve"] == 1


def test_a_timer_always_reads_the_campaign_state_for_deferred_candidates(catalog_rules):
    h = Harness(catalog_rules)
    h.apply("cid", Click(click("c1", "cid", "ADD_TO_CART", NOON, **CART)))
    deferred = [d for _, s in h.steps for d in s.decisions if d["outcome"] == "DEFERRED"]
    assert deferred and "cid" in h.stored_campaigns
    due = arb.decode_state(h.stored_campaigns["cid"]).next_due_ms()
    assert due in h.timers["cid"]
    before = h.loads["cid"]
    h.apply("cid", Timer("cid", due))
    assert h.loads["cid"] == before + 1


def test_metadata_older_than_what_is_kept_is_ignored(catalog_rules):
    h = Harness(catalog_rules)
    # metadata(at=...) is updated a day before at: the first at NOON, the second 1 ms before
    applied = h.apply("ann", MetadataUpdate(metadata("ann", "UTC", at=NOON + DAY), NOON))
    assert applied.metadata_changed
    older = h.apply("ann", MetadataUpdate(metadata("ann", "Asia/Tokyo", at=NOON + DAY - 1),
                                          NOON))
    assert not older.metadata_changed and older.changes == [] and older.triggers == []
    assert h.states["ann"].metadata["time_zone"] == "UTC"


def test_an_idle_user_expires_out_of_every_segment(catalog_rules):
    h = Harness(catalog_rules)
    step = h.apply("fay", Click(click("f1", "fay", "ADD_TO_CART", NOON, **CART)))
    assert step.expiry_timer_ms is not None and step.expiry_timer_ms >= NOON + TTL
    assert {c["segment_id"] for c in step.changes} == {"high-value-cart"}
    expiry = h.apply("fay", Timer("fay", step.expiry_timer_ms))
    assert expiry.expired
    # a timer applies every check due up to its time, each at its own time (the cart is
    # abandoned 30 minutes after the add, the abandonment expires 7 days later, the cart line
    # at the start of the 30th UTC day after), then the expiry; no check is skipped because the
    # watermark jumped
    assert [(c["segment_id"], c["change"], c["event_time"]) for c in expiry.changes] == [
        ("cart-abandoners", "ENTER", NOON + 30 * MIN),
        ("cart-abandoners", "EXIT", NOON + 7 * DAY + 30 * MIN),
        ("high-value-cart", "EXIT", (NOON // DAY + 30) * DAY),
        ("inactive-30d", "ENTER", NOON + 30 * DAY),
        ("inactive-30d", "EXIT", step.expiry_timer_ms)]
    assert expiry.changes[-1]["reason"] == "user state expired: no event for 90 days"
    assert expiry.triggers == []


class StepScorer:
    """A churn model whose score is set by the test."""

    version = "fixed"

    def __init__(self):
        self.value = 0.1

    def score(self, vector):
        return self.value


def test_a_churn_crossing_fires_the_retention_offer_once(catalog_rules):
    scorer = StepScorer()
    rules = Rules(catalog_rules.registries, TTL, scorer)
    h = Harness(rules)
    h.apply("gus", MetadataUpdate(metadata("gus", "UTC", at=NOON, email=True), NOON - DAY))
    h.apply("gus", Click(click("g1", "gus", "PAGE_VIEW", NOON)))
    assert h.triggers() == []
    scorer.value = 0.7
    crossed = h.apply("gus", Click(click("g2", "gus", "PAGE_VIEW", NOON + MIN)))
    assert [(t["campaign_id"], t["channel"]) for t in crossed.triggers] == [
        ("churn-retention-offer", "EMAIL")]
    assert crossed.triggers[0]["explanation"]["features"]["churn_score"] == pytest.approx(0.7)
    still_high = h.apply("gus", Click(click("g3", "gus", "PAGE_VIEW", NOON + 2 * MIN)))
    assert still_high.triggers == []  # no new crossing while the score stays above


def test_emit_time_is_the_step_s_wall_clock_and_ingest_time_is_kept(catalog_rules):
    h = Harness(catalog_rules)
    h.apply("ann", MetadataUpdate(metadata("ann", "UTC", at=NOON, sms=True), NOON - DAY))
    step = h.apply("ann", Click(click("a1", "ann", "ADD_TO_CART", NOON, ingest=NOON + 5, **CART)),
                   now_ms=NOON + 7)
    sms = next(t for t in step.triggers if t["campaign_id"] == "high-value-cart-sms")
    assert sms["ingest_time"] == NOON + 5 and sms["emit_time"] == NOON + 7
