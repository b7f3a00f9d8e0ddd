"""The closed loop in the engine (pure): holdouts decided where a send would be, touches,
attributed conversions (CONVERTED outcomes) and lift facts, the per-campaign statistics they
add up to, and the report; checked on examples and metamorphically (arrival order within the
bound, duplicate clicks: the same conversions and the same statistics)."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from jobs.cli import report
from tests.builders import CART, click, metadata
from tests.differential.sim import Simulator
from udfs.attribution.holdout import HOLDOUT, TREATED, assign_arm
from udfs.attribution.stats import UnitStats, fact_from_doc, fact_to_doc, from_doc, to_doc
from udfs.campaigns import arbitration as arb
from udfs.campaigns.compiler import parse_campaign, parse_policy
from udfs.catalog.files import POLICY_FILE, RATES_FILE, SEGMENT_CATALOG_DIR, load_files
from udfs.catalog.registries import Registries
from udfs.engine import Rules

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
BOUND = 5_000
NOON = 1_795_521_600_000  # 2026-11-24T12:00:00Z: daytime in UTC, no quiet hours
POLICY_DOC = {
    "kind": "priority", "id": "priority-policy", "version": 1, "description": "test policy",
    "weights": {"urgency": 0.4, "expected_roi": 0.3, "audience": 0.1, "brand_significance": 0.2},
    "tiers": {"P0": 0.8, "P1": 0.6, "P2": 0.4}, "min_interval": "0s",
    "channel_caps": {"EMAIL": {"per_day": 5}, "PUSH": {"per_day": 5}},
    "quiet_hours": {"start": "21:00", "end": "08:00"},
}
POLICY = parse_policy(POLICY_DOC)


def campaign(cid: str, urgency: float = 0.5, **extra):
    return parse_campaign({
        "kind": "campaign", "id": cid, "version": 1, "description": cid,
        "trigger": {"segment_enter": "seg-a"}, "channels": ["EMAIL"], "template": f"{cid}-tpl",
        "priority": {"urgency": urgency, "expected_roi": 50, "brand_significance": 0.5},
        **extra})


def defs(*campaigns, policy=POLICY) -> arb.Definitions:
    return arb.Definitions({c.id: c for c in campaigns}, policy, {"seg-a": 4}, {})


def user(user_id: str = "u1") -> arb.UserFacts:
    return arb.UserFacts(user_id, metadata(user_id, at=NOON, email=True, push=True), {}, 0.3,
                         "m-1")


def candidate(campaign_id: str, cause: str = "e1", t: int = NOON,
              user_id: str = "u1") -> arb.Candidate:
    return arb.Candidate(
        trigger_id=arb.trigger_id(user_id, campaign_id, "main", cause), campaign_id=campaign_id,
        campaign_version=1, cause=cause, cause_event_id=cause, cause_event_time=t,
        ingest_time=t + 5, payload={}, features={}, trigger_reason="test", due_ms=t)


def held_out_user(campaign_id: str, share: float, want: str) -> str:
    """A user id whose arm for ``campaign_id`` at ``share`` is ``want``."""
    for i in range(10_000):
        if assign_arm(f"u{i}", campaign_id, share, None) == want:
            return f"u{i}"
    raise AssertionError("no such user in 10,000")


def purchase(user_id: str, t: int, event_id: str = "buy-1", **extra) -> dict:
    return click(event_id, user_id, "PURCHASE", t, **{**CART, "price": 40.0, "quantity": 2,
                                                      **extra})


# --- the decision -----------------------------------------------------------------------------


def test_a_held_out_candidate_is_decided_holdout_and_its_rival_is_sent_instead():
    a = campaign("a", urgency=0.9, holdout="50%")
    b = campaign("b", urgency=0.2)
    who = held_out_user("a", 0.5, HOLDOUT)
    state = arb.CampaignState()
    out = arb.decide(state, [candidate("a", user_id=who), candidate("b", user_id=who)],
                     user(who), defs(a, b), NOON, NOON)
    assert [t["campaign_id"] for t in out.triggers] == ["b"]  # the world without a
    [held] = [d for d in out.decisions if d["campaign_id"] == "a"]
    assert (held["outcome"], held["reason_code"]) == ("SUPPRESSED", "HOLDOUT")
    assert "50% holdout of a" in held["reason"]
    assert [(f.unit, f.arm, f.kind) for f in out.lift] == [("a", "holdout", "assigned"),
                                                          ("b", "treated", "assigned")]
    # the held-out trigger is decided: the same cause never comes back
    again = arb.decide(state, [candidate("a", user_id=who)], user(who), defs(a, b), NOON + 1,
                       NOON + 1)
    assert again.triggers == [] and again.duplicates == 1


def test_the_global_control_group_gets_no_campaign_at_all():
    policy = parse_policy({**POLICY_DOC, "control_group": {"share": "50%"}})
    a = campaign("a")
    control = next(f"u{i}" for i in range(1000)
                   if assign_arm(f"u{i}", "a", 0.0, policy.control_group) == "control")
    out = arb.decide(arb.CampaignState(), [candidate("a", user_id=control)], user(control),
                     defs(a, policy=policy), NOON, NOON)
    assert out.triggers == []
    assert out.decisions[0]["reason_code"] == "CONTROL_GROUP"
    assert [(f.arm, f.kind) for f in out.lift] == [("control", "assigned")]


@pytest.mark.parametrize("at, credited", [
    (NOON, False),  # at the send: a trigger cannot cause what came with it
    (NOON + HOUR, True),
    (NOON + 7 * DAY, True),  # the window's last instant
    (NOON + 7 * DAY + 1, False),
])
def test_a_purchase_in_the_window_is_a_converted_outcome_with_its_rule(at, credited):
    a = campaign("a")
    state = arb.CampaignState()
    sent = arb.decide(state, [candidate("a")], user(), defs(a), NOON, NOON).triggers[0]
    facts = arb.StepFacts("u1", at, "buy-1", purchase("u1", at), (), None, None, None)
    out = arb.on_step(state, facts, user(), defs(a), at)
    if not credited:
        assert out.converted == [] and out.lift == []
        return
    [record] = out.converted
    assert record["trigger_id"] == sent["trigger_id"] and record["outcome"] == "CONVERTED"
    assert record["revenue"] == 80.0 and record["currency"] == "USD"
    assert record["attribution_rule"] == "last_touch 7d" and record["event_time"] == at
    assert [(f.arm, f.kind, f.revenue) for f in out.lift] == [("treated", "converted", 80.0)]
    if at + 1 > NOON + 7 * DAY:
        return
    # a second purchase credits the same trigger: revenue, not a second conversion
    later = arb.StepFacts("u1", at + 1, "buy-2", purchase("u1", at + 1, "buy-2"), (), None,
                          None, None)
    out = arb.on_step(state, later, user(), defs(a), at + 1)
    assert [(f.kind, f.revenue) for f in out.lift] == [("revenue", 80.0)]


def test_a_tracked_click_credits_its_trigger_directly():
    a = campaign("a", attribution={"model": "linear"})
    state = arb.CampaignState()
    first = arb.decide(state, [candidate("a")], user(), defs(a), NOON, NOON).triggers[0]
    arb.decide(state, [candidate("a", cause="e2", t=NOON + HOUR)], user(), defs(a),
               NOON + HOUR, NOON + HOUR)
    at = NOON + 2 * HOUR
    event = purchase("u1", at, properties={"nf_trigger": first["trigger_id"]})
    out = arb.on_step(state, arb.StepFacts("u1", at, "buy-1", event, (), None, None, None),
                      user(), defs(a), at)
    assert [(r["trigger_id"], r["attribution_rule"]) for r in out.converted] == [
        (first["trigger_id"], "direct")]


def test_touches_survive_the_state_encoding():
    a = campaign("a", attribution={"window": "2d", "model": "linear"})
    state = arb.CampaignState()
    arb.decide(state, [candidate("a")], user(), defs(a), NOON, NOON)
    restored = arb.decode_state(arb.encode_state(state))
    assert restored.touches == state.touches and not restored.is_empty()
    [touch] = restored.touches.touches
    assert (touch.arm, touch.rule.window_ms, touch.rule.model) == (TREATED, 2 * DAY, "linear")


# --- through the engine: arrival order, duplicates, parallel users ------------------------------


CAMPAIGN = """\
kind: campaign
id: buy-nudge
version: 1
description: A push when a cart is filled; half the users held out to measure it.
trigger: {event: {type: ADD_TO_CART}}
channels: [PUSH]
template: buy-nudge
priority: {urgency: 0.7, expected_roi: 60, brand_significance: 0.5}
holdout: 50%
attribution: {window: 2d}
"""


@pytest.fixture(scope="module")
def loop_rules(tmp_path_factory) -> Rules:
    folder = tmp_path_factory.mktemp("closed-loop")
    (folder / "buy-nudge.yaml").write_text(CAMPAIGN)
    files = [SEGMENT_CATALOG_DIR, POLICY_FILE, RATES_FILE, folder]
    return Rules(Registries.from_updates(load_files(files, check_references=False)
                                         .updates(0, "file")), 90 * DAY)


T0 = 1_795_521_600_000  # 2026-11-24T12:00:00Z: daytime in UTC, no quiet hours


def workload(users: int = 300, seed: int = 5) -> tuple[list[dict], list[dict]]:
    """Profiles, and per user a cart and (for some) a purchase hours later, in time order."""
    rng = random.Random(seed)
    profiles = [metadata(f"u{i}", at=T0 - HOUR, push=True) for i in range(users)]
    clicks = []
    for i in range(users):
        start = T0 + i * 7_000
        clicks.append(click(f"u{i}-cart", f"u{i}", "ADD_TO_CART", start, **CART))
        if rng.random() < 0.4:
            at = start + rng.randint(1, 40) * HOUR
            clicks.append(purchase(f"u{i}", at, f"u{i}-buy", price=float(rng.randint(5, 90))))
    return profiles, sorted(clicks, key=lambda c: c["event_time"])


def play(rules: Rules, profiles: list[dict], clicks: list[dict]) -> Simulator:
    sim = Simulator(rules, BOUND)
    for record in profiles:
        sim.metadata(record)
    for event in clicks:
        sim.click(event)
    sim.finish()
    return sim


def shuffled_within_bound(clicks: list[dict], seed: int) -> list[dict]:
    """The same clicks, each moved by less than the bound, plus 5% duplicates."""
    rng = random.Random(seed)
    keyed = sorted(clicks, key=lambda c: c["event_time"] + rng.uniform(0, BOUND * 0.9))
    for _ in range(len(clicks) // 20):
        i = rng.randrange(len(keyed))
        keyed.insert(min(len(keyed), i + rng.randint(1, 3)), dict(keyed[i]))
    return keyed


def summary(sim: Simulator) -> tuple[list, Counter]:
    outcomes = sorted((r["outcome_id"], r["trigger_id"], r["revenue"]) for r in sim.converted)
    facts = Counter((f.unit, f.arm, f.kind, f.at_ms, round(f.revenue, 6), f.trigger_id)
                    for f in sim.lift)
    return outcomes, facts


def test_every_cart_is_sent_or_held_out_once_and_purchases_convert(loop_rules):
    profiles, clicks = workload()
    sim = play(loop_rules, profiles, clicks)
    sent = {t["user_id"] for t in sim.triggers}
    held = {d["user_id"] for d in sim.decisions if d["reason_code"] == "HOLDOUT"}
    assert sent.isdisjoint(held) and sent | held == {p["user_id"] for p in profiles}
    assert held == {u for u in sent | held if assign_arm(u, "buy-nudge", 0.5, None) == HOLDOUT}
    assert 0.4 < len(held) / len(sent | held) < 0.6
    # every purchase within 2 days of a sent push is one CONVERTED outcome of that push
    pushed = {t["user_id"]: t for t in sim.triggers}
    expected = sorted(c["event_id"] for c in clicks if c["event_type"] == "PURCHASE"
                      and c["user_id"] in pushed
                      and pushed[c["user_id"]]["cause_event_time"] < c["event_time"]
                      <= pushed[c["user_id"]]["cause_event_time"] + 2 * DAY)
    assert expected and len(sim.converted) == len(expected)
    assert {r["trigger_id"] for r in sim.converted} <= {t["trigger_id"] for t in sim.triggers}
    stats = UnitStats("buy-nudge")
    for fact in sim.lift:
        stats.add(fact)
    assert stats.arm(TREATED).assigned == len(sent) and stats.arm(HOLDOUT).assigned == len(held)
    assert stats.arm(TREATED).converted == len(expected)
    held_buyers = {c["user_id"] for c in clicks if c["event_type"] == "PURCHASE"} & held
    assert stats.arm(HOLDOUT).converted == len(held_buyers)  # every purchase is within 2 days


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_arrival_order_and_duplicates_change_no_conversion_and_no_count(loop_rules, seed):
    profiles, clicks = workload()
    ordered = summary(play(loop_rules, profiles, clicks))
    assert ordered[0], "the workload converts nobody: the comparison would prove nothing"
    assert summary(play(loop_rules, profiles, shuffled_within_bound(clicks, seed))) == ordered


def test_statistics_do_not_depend_on_the_order_of_their_facts(loop_rules):
    profiles, clicks = workload()
    facts = play(loop_rules, profiles, clicks).lift
    forward, backward = UnitStats("buy-nudge"), UnitStats("buy-nudge")
    for fact in facts:
        forward.add(fact_from_doc(fact_to_doc(fact)))
    for fact in reversed(facts):
        backward.add(fact)
    assert to_doc(forward) == to_doc(backward)
    assert to_doc(from_doc(to_doc(forward))) == to_doc(forward)


# --- the report -------------------------------------------------------------------------------


def test_the_report_shows_sends_rates_and_lift_with_its_interval(loop_rules, tmp_path: Path):
    profiles, clicks = workload()
    stats = UnitStats("buy-nudge")
    for fact in play(loop_rules, profiles, clicks).lift:
        stats.add(fact)
    table = report.format_table({"buy-nudge": stats})
    row = next(line for line in table.splitlines() if line.startswith("buy-nudge"))
    assert f"{stats.arm(TREATED).assigned:,}" in row and " pp [" in row
    data = report.to_json({"buy-nudge": stats})["buy-nudge"]
    assert data["lift"]["method"] and data["arms"]["holdout"]["assigned"] == \
        stats.arm(HOLDOUT).assigned
    out = tmp_path / "lift.png"
    report.draw({"buy-nudge": stats}, out)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "no campaign statistics yet" in report.format_table({})
