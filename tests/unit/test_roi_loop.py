"""ROI into priority (issue 15): the statistics publish a campaign's measured ROI as a
DefinitionUpdate, the engine holds it like any definition and the matrix uses it while the
policy has ``roi_feedback``; triggers and decisions say which ROI they used."""

from __future__ import annotations

import json
import random

import pytest

from schemas.codec import Codec
from tests.unit.test_closed_loop import NOON, POLICY_DOC, campaign, candidate, defs, user
from udfs.attribution.roi import (
    Pricing,
    RoiChoice,
    RoiFeedback,
    RoiRegistry,
    RoiTracker,
    measured_roi,
    roi_to_update,
    update_roi,
)
from udfs.attribution.stats import UnitStats, fact_from_doc, fact_to_doc, from_doc, to_doc
from udfs.attribution.touches import ASSIGNED, CONVERTED, LiftFact
from udfs.campaigns import arbitration as arb
from udfs.campaigns.compiler import parse_policy
from udfs.catalog.registries import Registries
from udfs.definitions.envelope import canonical_body, checksum
from udfs.definitions.versioning import ChangeOutcome

FEEDBACK = RoiFeedback(min_sends=4, smoothing=0.5, max_step=1.0, update_every=3)
LOOP_POLICY = parse_policy({**POLICY_DOC, "roi_feedback": {
    "min_sends": 4, "smoothing": 0.5, "max_step": "100%", "update_every": 3}})


def send(unit: str, i: int, typed: float = 10.0, feedback: RoiFeedback | None = FEEDBACK
         ) -> LiftFact:
    return LiftFact(unit, "treated", ASSIGNED, NOON + i, 0.0, f"t{i}", Pricing(typed, feedback))


def conversion(unit: str, i: int, revenue: float) -> LiftFact:
    return LiftFact(unit, "treated", CONVERTED, NOON + i, revenue, f"t{i}")


# --- the tracker: when an update is published, and what it says -----------------------------


def test_nothing_is_published_below_the_minimum_sample_or_without_feedback():
    stats = UnitStats("a")
    assert [stats.observe(send("a", i)) for i in range(3)] == [None, None, None]
    off = UnitStats("b")
    assert all(off.observe(send("b", i, feedback=None)) is None for i in range(50))
    assert all(off.observe(conversion("b", 100 + i, 99.0)) is None for i in range(50))


def test_the_first_update_comes_at_min_sends_then_one_every_update_every_facts():
    stats = UnitStats("a")
    published = []
    for i in range(4):
        stats.observe(conversion("a", 100 + i, 40.0))  # revenue before the sends: counted
    for i in range(12):
        roi = stats.observe(send("a", i))
        if roi is not None:
            published.append((i + 1, roi))
    assert [sends for sends, _ in published] == [4, 7, 10]
    first = published[0][1]
    # 160 USD over 4 sends = 40 per send; half-way from the typed 10 is 25, but one step
    # moves at most 100% of the ROI in use: 20
    assert (first.id, first.unit, first.value, first.revenue_per_send, first.sends) == \
        ("roi:a", "a", 20.0, 40.0, 4)
    assert first.choice().source == "measured: 40.00 per send over 4 sends"
    # versions go up, and start at the event time in seconds (above an earlier run's)
    versions = [roi.version for _, roi in published]
    assert versions == sorted(set(versions)) and versions[0] == (NOON + 3) // 1000
    # each update starts from the ROI in use: the same sequence as the rule applied in turn
    in_use = None
    for sends, roi in published:
        in_use = update_roi(10.0, in_use, 160.0 / sends, sends, FEEDBACK).value
        assert roi.value == pytest.approx(in_use)


def test_holdouts_and_conversions_count_towards_the_cadence_and_keep_the_pricing():
    stats = UnitStats("a")
    for i in range(4):
        stats.observe(send("a", i))
    assert stats.roi.in_use is not None
    held = LiftFact("a", "holdout", ASSIGNED, NOON + 50, 0.0, "h1")
    assert stats.observe(held) is None and stats.observe(conversion("a", 51, 5.0)) is None
    roi = stats.observe(conversion("a", 52, 5.0))  # the third fact since the update
    assert roi is not None and roi.revenue_per_send == pytest.approx(10 / 4)
    assert stats.roi.typed == 10.0 and stats.roi.feedback == FEEDBACK


def test_the_tracker_survives_the_statistics_state_and_old_state_restores():
    stats = UnitStats("a")
    for i in range(5):
        stats.observe(send("a", i))
    again = from_doc(to_doc(stats))
    assert again.roi == stats.roi
    old = to_doc(stats)
    del old["roi"]  # written before the feedback existed
    assert from_doc(old).roi == RoiTracker()
    fact = send("a", 1)
    assert fact_from_doc(fact_to_doc(fact)) == fact
    plain = conversion("a", 2, 3.0)
    assert "pricing" not in fact_to_doc(plain) and fact_from_doc(fact_to_doc(plain)) == plain


def test_a_random_order_of_the_same_facts_ends_with_the_same_statistics():
    facts = [send("a", i) for i in range(30)] + [conversion("a", 100 + i, 7.0)
                                                 for i in range(12)]
    docs = []
    for seed in range(5):
        shuffled = facts[:]
        random.Random(seed).shuffle(shuffled)
        stats = UnitStats("a")
        for fact in shuffled:
            stats.observe(fact)
        doc = to_doc(stats)
        docs.append((doc["arms"], doc["roi"]["typed"], doc["roi"]["feedback"]))
    assert all(d == docs[0] for d in docs)


# --- the control path: the update, the codec, the registry -----------------------------------


def published(unit: str = "b", value: float = 100.0, version: int = 7) -> dict:
    return roi_to_update(measured_roi(unit, version, RoiChoice(value, "", True), value, 500),
                         NOON)


def test_a_measured_roi_travels_as_a_definition_update_and_is_held_by_version():
    codec = Codec.load()
    update = codec.decode(codec.encode("DefinitionUpdate", published()),
                          expect="DefinitionUpdate")
    assert (update["kind"], update["definition_id"], update["published_by"]) == \
        ("CAMPAIGN_ROI", "roi:b", "nudgeflow campaign-stats")
    registry = RoiRegistry()
    assert registry.apply(update).outcome is ChangeOutcome.ADDED
    assert registry.by_unit()["b"].value == 100.0
    assert registry.apply(published(value=5.0, version=6)).outcome is ChangeOutcome.STALE
    assert registry.apply(published(value=5.0, version=8)).outcome is ChangeOutcome.REPLACED
    assert registry.by_unit()["b"].value == 5.0


@pytest.mark.parametrize("change, message", [
    ({"roi": -1}, "roi must be a number >= 0"),
    ({"sends": 0}, "sends must be a whole number >= 1"),
    ({"unit": "c"}, "id must be 'roi:c'"),
    ({"surprise": 1}, "surprise"),
])
def test_a_bad_measured_roi_is_rejected_with_what_is_wrong(change, message):
    update = published()
    body = canonical_body({**json.loads(update["body"]), **change})
    update = {**update, "body": body, "checksum": checksum(body)}
    result = RoiRegistry().apply(update)
    assert result.outcome is ChangeOutcome.REJECTED
    assert message in result.message + " ".join(e.message for e in result.errors)


def test_measured_roi_does_not_change_the_definitions_fingerprint():
    registries = Registries()
    before = registries.fingerprint()
    assert registries.apply(published()).changed
    assert registries.fingerprint() == before
    assert set(registries.measured_roi()) == {"b"}


# --- the matrix: measured ROI changes who wins, and says so ----------------------------------


def rivals() -> tuple:
    a = campaign("a", urgency=0.5, priority={"urgency": 0.5, "expected_roi": 60,
                                             "brand_significance": 0.5})
    b = campaign("b", urgency=0.5, priority={"urgency": 0.5, "expected_roi": 10,
                                             "brand_significance": 0.5})
    return a, b


def decide_between(a, b, policy, measured) -> arb.Outcome:
    definitions = arb.Definitions({a.id: a, b.id: b}, policy, {"seg-a": 4}, {}, (), measured)
    return arb.decide(arb.CampaignState(), [candidate("a"), candidate("b")], user(),
                      definitions, NOON, NOON)


def test_a_measured_roi_replaces_the_typed_one_and_the_trigger_says_which_it_used():
    a, b = rivals()
    registry = RoiRegistry()
    registry.apply(published("b", 100.0, 9))
    typed = decide_between(a, b, LOOP_POLICY, {})
    assert [t["campaign_id"] for t in typed.triggers] == ["a"]
    assert "ROI typed: 60" in typed.triggers[0]["explanation"]["reason"]
    fed = decide_between(a, b, LOOP_POLICY, registry.by_unit())
    [sent] = fed.triggers
    assert sent["campaign_id"] == "b"
    explanation = sent["explanation"]
    assert "ROI measured: 100.00 per send over 500 sends" in explanation["reason"]
    assert explanation["definition_versions"]["roi:b"] == 9
    assert explanation["features"]["roi_usd_per_send"] == 100.0
    assert sent["priority_score"] > typed.triggers[0]["priority_score"]
    # the loser's decision is the change the feedback caused
    [lost] = [d for d in fed.decisions if d["campaign_id"] == "a"]
    assert lost["outcome"] in ("DEFERRED", "SUPPRESSED")


def test_without_roi_feedback_in_the_policy_the_typed_values_decide():
    a, b = rivals()
    registry = RoiRegistry()
    registry.apply(published("b", 100.0, 9))
    plain = parse_policy(POLICY_DOC)
    out = decide_between(a, b, plain, registry.by_unit())
    assert [t["campaign_id"] for t in out.triggers] == ["a"]
    assert "roi:b" not in out.triggers[0]["explanation"]["definition_versions"]


def test_a_decision_of_a_campaign_with_measured_roi_names_it():
    a, b = rivals()
    registry = RoiRegistry()
    registry.apply(published("a", 0.0, 3))  # a measured at 0: b wins, a's decision says why
    out = decide_between(a, b, LOOP_POLICY, registry.by_unit())
    assert [t["campaign_id"] for t in out.triggers] == ["b"]
    [lost] = [d for d in out.decisions if d["campaign_id"] == "a"]
    assert "ROI measured: 0.00 per send over 500 sends" in lost["reason"]


def test_a_send_s_fact_carries_the_typed_roi_and_the_policy_s_settings():
    a, b = rivals()
    out = decide_between(a, b, LOOP_POLICY, {})
    [fact] = [f for f in out.lift if f.kind == ASSIGNED]
    assert fact.pricing == Pricing(60.0, LOOP_POLICY.roi_feedback)
    plain = decide_between(a, b, parse_policy(POLICY_DOC), {})
    assert plain.lift[0].pricing == Pricing(60.0, None)
    assert defs(a).roi_of(a) is None
