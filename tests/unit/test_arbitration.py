"""Campaign triggers: matrix, arbitration, caps, quiet hours (time zones, DST), dedup."""

import dataclasses
import random
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from tests.builders import click, metadata
from udfs.campaigns import arbitration as arb
from udfs.campaigns.compiler import parse_campaign, parse_policy
from udfs.campaigns.grammar import Cap
from udfs.campaigns.local_time import cap_free_at, next_local_midnight, quiet_until
from udfs.campaigns.priority import audience_factor, score_priority, tier_of
from udfs.catalog.files import load_catalog

POLICY_DOC = {
    "kind": "priority", "id": "priority-policy", "version": 3, "description": "test policy",
    "weights": {"urgency": 0.4, "expected_roi": 0.3, "audience": 0.1, "brand_significance": 0.2},
    "roi_scale": 100, "audience_scale": 100000, "tiers": {"P0": 0.8, "P1": 0.6, "P2": 0.4},
    "min_interval": "30m",
    "channel_caps": {"EMAIL": {"per_day": 2, "per_week": 3}, "SMS": {"per_day": 1},
                     "PUSH": {"per_day": 5}},
    "quiet_hours": {"start": "21:00", "end": "08:00"},
}
POLICY = parse_policy(POLICY_DOC)
OPT_ALL = {"email": True, "sms": True, "push": True, "in_app": True, "paid_social": False}


def at(text: str) -> int:
    """Epoch ms of an ISO instant with offset."""
    return int(datetime.fromisoformat(text).timestamp() * 1000)


NOON_UTC = at("2026-11-24T12:00:00+00:00")


def campaign(cid: str, urgency: float = 0.5, roi: float = 50, brand: float = 0.5, **extra):
    doc = {"kind": "campaign", "id": cid, "version": 2, "description": cid,
           "trigger": extra.pop("trigger", {"segment_enter": "seg-a"}),
           "channels": extra.pop("channels", ["EMAIL"]), "template": f"{cid}-tpl",
           "priority": {"urgency": urgency, "expected_roi": roi, "brand_significance": brand},
           **extra}
    return parse_campaign(doc)


def user(tz: str = "UTC", opt_ins=None, membership=None) -> arb.UserFacts:
    return arb.UserFacts("u1", metadata("u1", tz, at=NOON_UTC, **(opt_ins or OPT_ALL)),
                         membership or {}, 0.3, "m-1")


def defs(*campaigns, policy=POLICY, sizes=None) -> arb.Definitions:
    return arb.Definitions({c.id: c for c in campaigns}, policy, {"seg-a": 4},
                           sizes or {})


def candidate(campaign_id: str, cause: str = "e1", t: int = NOON_UTC) -> arb.Candidate:
    return arb.Candidate(
        trigger_id=arb.trigger_id("u1", campaign_id, "main", cause), campaign_id=campaign_id,
        campaign_version=2, cause=cause, cause_event_id=cause, cause_event_time=t,
        ingest_time=t + 5, payload={}, features={}, trigger_reason="test", due_ms=t)


# --- the matrix --------------------------------------------------------------------------------


def test_score_is_the_weighted_mean_of_the_factors():
    c = campaign("c", urgency=1.0, roi=50, brand=0.5)
    p = score_priority(c, POLICY, {})
    assert p.score == pytest.approx((0.4 * 1.0 + 0.3 * 0.5 + 0.1 * 0 + 0.2 * 0.5) / 1.0)
    assert p.factors["priority.expected_roi"] == 0.5
    assert p.tier == "P1"


def test_roi_factor_is_capped_and_audience_grows_with_the_live_size():
    c = parse_campaign({**campaign("c").document, "priority": {
        "urgency": 0, "expected_roi": 500, "brand_significance": 0, "audience": "big"}})
    small = score_priority(c, POLICY, {"big": 10})
    large = score_priority(c, POLICY, {"big": 50_000})
    full = score_priority(c, POLICY, {"big": 10_000_000})
    assert small.factors["priority.expected_roi"] == 1.0
    assert small.score < large.score < full.score
    assert full.factors["priority.audience"] == 1.0
    assert audience_factor(0, 100) == 0.0


@pytest.mark.parametrize(("score", "tier"), [(0.8, "P0"), (0.79, "P1"), (0.6, "P1"),
                                             (0.4, "P2"), (0.39, "P3"), (0.0, "P3")])
def test_thresholds_map_scores_to_tiers(score, tier):
    assert tier_of(score, POLICY) == tier


def test_new_weights_change_the_tier_at_runtime():
    c = campaign("c", urgency=0.9, roi=0, brand=0)
    assert score_priority(c, POLICY, {}).tier == "P3"
    urgent = parse_policy({**POLICY_DOC, "version": 4, "weights": {
        "urgency": 1, "expected_roi": 0, "audience": 0, "brand_significance": 0}})
    assert score_priority(c, urgent, {}).tier == "P0"


def test_the_shipped_catalog_lands_in_the_documented_tiers_whatever_the_audience():
    catalog = load_catalog()
    policy = catalog.policies[0]
    expected = {"flash-sale-push": "P0", "cart-abandonment-email": "P1",
                "churn-retention-offer": "P1", "high-value-cart-sms": "P1",
                "welcome-series-1": "P2", "cart-reminder-push": "P2"}
    for c in catalog.campaigns:
        for size in (0, 1_000, 10_000_000):
            sizes = {c.audience_segment: size} if c.audience_segment else {}
            assert score_priority(c, policy, sizes).tier == expected[c.id], (c.id, size)


# --- arbitration -------------------------------------------------------------------------------


def test_the_highest_score_wins_and_rivals_are_deferred_or_suppressed_with_reasons():
    high = campaign("high", urgency=0.9, roi=90)
    low_defer = campaign("low-defer", urgency=0.2, roi=10, channels=["PUSH"])
    low_drop = campaign("low-drop", urgency=0.3, roi=10, on_conflict="suppress")
    state = arb.CampaignState()
    out = arb.decide(state, [candidate("low-defer"), candidate("high"), candidate("low-drop")],
                     user(), defs(high, low_defer, low_drop), NOON_UTC, NOON_UTC + 7)
    [trigger] = out.triggers
    assert trigger["campaign_id"] == "high"
    assert trigger["emit_time"] == NOON_UTC + 7 and trigger["ingest_time"] == NOON_UTC + 5
    rivals = {r["campaign_id"]: r["outcome"] for r in trigger["explanation"]["rivals"]}
    assert rivals == {"low-defer": "DEFERRED", "low-drop": "SUPPRESSED"}
    decisions = {d["campaign_id"]: d for d in out.decisions}
    assert decisions["low-defer"]["reason_code"] == "LOST_ARBITRATION"
    assert decisions["low-defer"]["deferred_until"] == NOON_UTC + 30 * 60_000
    assert "lost to high" in decisions["low-defer"]["reason"]
    assert decisions["low-drop"]["outcome"] == "SUPPRESSED"
    assert [c.campaign_id for c in state.pending] == ["low-defer"]
    assert state.next_due_ms() == NOON_UTC + 30 * 60_000


def test_a_deferred_rival_is_sent_when_it_falls_due():
    high = campaign("high", urgency=0.9, roi=90)
    low = campaign("low", urgency=0.2, roi=10, channels=["PUSH"], expires_after="2h")
    state = arb.CampaignState()
    d = defs(high, low)
    arb.decide(state, [candidate("high"), candidate("low")], user(), d, NOON_UTC, NOON_UTC)
    due = state.next_due_ms()
    assert arb.decide(state, [], user(), d, due - 1, due).triggers == []
    out = arb.decide(state, [], user(), d, due, due + 3)
    [trigger] = out.triggers
    assert trigger["campaign_id"] == "low"
    assert "after 1 deferral" in trigger["explanation"]["reason"]
    assert state.pending == []


def test_a_rival_that_would_expire_before_its_turn_is_suppressed_as_expired():
    high = campaign("high", urgency=0.9, roi=90)
    low = campaign("low", urgency=0.2, roi=10, expires_after="10m")
    out = arb.decide(arb.CampaignState(), [candidate("high"), candidate("low")], user(),
                     defs(high, low), NOON_UTC, NOON_UTC)
    [decision] = out.decisions
    assert (decision["outcome"], decision["reason_code"]) == ("SUPPRESSED", "EXPIRED")


def test_the_same_cause_never_emits_twice():
    c = campaign("c")
    state = arb.CampaignState()
    first = arb.decide(state, [candidate("c")], user(), defs(c), NOON_UTC, NOON_UTC)
    again = arb.decide(state, [candidate("c")], user(), defs(c), NOON_UTC + 1, NOON_UTC + 1)
    assert len(first.triggers) == 1 and again.triggers == [] and again.duplicates == 1
    # the id is deterministic: a replay elsewhere computes the same one
    assert first.triggers[0]["trigger_id"] == arb.trigger_id("u1", "c", "main", "e1")
    assert arb.trigger_id("u1", "c", "main", "e2") != first.triggers[0]["trigger_id"]


def test_the_state_survives_encoding_and_still_dedupes():
    c = campaign("c")
    state = arb.CampaignState()
    arb.decide(state, [candidate("c")], user(), defs(c), NOON_UTC, NOON_UTC)
    restored = arb.decode_state(arb.encode_state(state))
    assert restored == state
    assert arb.decide(restored, [candidate("c")], user(), defs(c), NOON_UTC,
                      NOON_UTC).duplicates == 1
    with pytest.raises(ValueError, match="version"):
        arb.decode_state(b'{"v": 99}')


@pytest.mark.parametrize(("setup", "code"), [
    ({"eligibility": {"exclude_segments": ["seg-x"]}}, "NOT_ELIGIBLE"),
    ({"eligibility": {"require_segments": ["seg-y"]}}, "NOT_ELIGIBLE"),
    ({"channels": ["PAID_SOCIAL"]}, "NO_CONSENT"),
])
def test_hard_rules_suppress_with_their_reason(setup, code):
    c = campaign("c", **setup)
    out = arb.decide(arb.CampaignState(), [candidate("c")], user(membership={"seg-x": 1}),
                     defs(c), NOON_UTC, NOON_UTC)
    assert out.triggers == []
    assert [d["reason_code"] for d in out.decisions] == [code]


def test_without_metadata_a_candidate_waits_once_then_there_is_no_consent():
    c = campaign("c")
    facts = arb.UserFacts("u1", None, {}, None, None)
    state = arb.CampaignState()
    out = arb.decide(state, [candidate("c")], facts, defs(c), NOON_UTC, NOON_UTC)
    assert [(d["outcome"], d["reason_code"]) for d in out.decisions] == [
        ("DEFERRED", "AWAITING_METADATA")]
    due = NOON_UTC + arb.METADATA_GRACE_MS
    assert state.next_due_ms() == due
    out = arb.decide(state, [], facts, defs(c), due, due)
    assert out.decisions[0]["reason_code"] == "NO_CONSENT"
    assert "no metadata" in out.decisions[0]["reason"]


def test_metadata_arriving_within_the_grace_lets_the_trigger_through():
    c = campaign("c")
    state = arb.CampaignState()
    arb.decide(state, [candidate("c")], arb.UserFacts("u1", None, {}, None, None), defs(c),
               NOON_UTC, NOON_UTC)
    due = NOON_UTC + arb.METADATA_GRACE_MS
    out = arb.decide(state, [], user(), defs(c), due, due)
    assert [t["campaign_id"] for t in out.triggers] == ["c"]


def test_without_a_policy_nothing_is_sent():
    c = campaign("c")
    out = arb.decide(arb.CampaignState(), [candidate("c")], user(), defs(c, policy=None),
                     NOON_UTC, NOON_UTC)
    assert [d["reason_code"] for d in out.decisions] == ["NO_POLICY"]


def test_the_first_consented_channel_in_order_is_used():
    c = campaign("c", channels=["SMS", "EMAIL"])
    out = arb.decide(arb.CampaignState(), [candidate("c")],
                     user(opt_ins={**OPT_ALL, "sms": False}), defs(c), NOON_UTC, NOON_UTC)
    assert out.triggers[0]["channel"] == "EMAIL"


def test_reeligibility_suppresses_the_same_campaign_for_a_while():
    c = campaign("c", frequency={"reeligible_after": "1d"})
    state = arb.CampaignState()
    arb.decide(state, [candidate("c", "e1")], user(), defs(c), NOON_UTC, NOON_UTC)
    later = NOON_UTC + 3_600_000
    out = arb.decide(state, [candidate("c", "e2", later)], user(), defs(c), later, later)
    assert [d["reason_code"] for d in out.decisions] == ["REELIGIBILITY"]
    next_day = NOON_UTC + 86_400_000
    out = arb.decide(state, [candidate("c", "e3", next_day)], user(), defs(c), next_day,
                     next_day)
    assert len(out.triggers) == 1


def test_a_deleted_campaign_s_deferred_trigger_is_suppressed():
    high = campaign("high", urgency=0.9, roi=90)
    low = campaign("low", urgency=0.2, roi=10)
    state = arb.CampaignState()
    arb.decide(state, [candidate("high"), candidate("low")], user(), defs(high, low), NOON_UTC,
               NOON_UTC)
    due = state.next_due_ms()
    out = arb.decide(state, [], user(), defs(high), due, due)
    assert [d["reason_code"] for d in out.decisions] == ["CAMPAIGN_GONE"]


def test_a_decision_window_holds_candidates_so_a_later_better_one_wins():
    windowed = parse_policy({**POLICY_DOC, "decision_window": "10s"})
    early = campaign("early", urgency=0.3, roi=10, channels=["PUSH"])
    better = campaign("better", urgency=0.9, roi=90)
    d = defs(early, better, policy=windowed)
    state = arb.CampaignState()
    assert arb.decide(state, [candidate("early", "e1", NOON_UTC)], user(), d, NOON_UTC,
                      NOON_UTC).triggers == []
    t2 = NOON_UTC + 4_000
    assert arb.decide(state, [candidate("better", "e2", t2)], user(), d, t2, t2).triggers == []
    out = arb.decide(state, [], user(), d, NOON_UTC + 10_000, NOON_UTC + 10_000)
    assert [t["campaign_id"] for t in out.triggers] == ["better"]
    assert out.decisions[0]["campaign_id"] == "early"


def test_p0_does_not_wait_for_the_decision_window():
    windowed = parse_policy({**POLICY_DOC, "decision_window": "10s"})
    flash = campaign("flash", urgency=1.0, roi=100, brand=1.0)
    out = arb.decide(arb.CampaignState(), [candidate("flash")], user(),
                     defs(flash, policy=windowed), NOON_UTC, NOON_UTC)
    assert out.triggers[0]["tier"] == "P0"


# --- caps --------------------------------------------------------------------------------------


def send_series(c, times, tz="UTC"):
    state = arb.CampaignState()
    outs = [arb.decide(state, [candidate(c.id, f"e{i}", t)], user(tz), defs(c), t, t)
            for i, t in enumerate(times)]
    return state, outs


def test_the_channel_cap_per_local_day_defers_to_the_next_local_morning():
    c = campaign("c", channels=["SMS"])  # SMS: 1 a day; quiet hours end at 08:00
    t1 = at("2026-11-24T10:00:00-05:00")
    t2 = at("2026-11-24T15:00:00-05:00")
    state, outs = send_series(c, [t1, t2], tz="America/New_York")
    assert len(outs[0].triggers) == 1
    [decision] = outs[1].decisions
    assert decision["outcome"] == "DEFERRED"
    assert decision["reason_code"] == "CHANNEL_CAP"
    # next local day starts at midnight, which is quiet: 08:00 New York time
    assert decision["deferred_until"] == at("2026-11-25T08:00:00-05:00")


def test_the_day_boundary_is_the_user_s_not_utc():
    c = campaign("c", channels=["SMS"])
    # two UTC days, one Los Angeles day (15:00 and 18:00 on the 24th there)
    t1, t2 = at("2026-11-24T23:00:00+00:00"), at("2026-11-25T02:00:00+00:00")
    _, outs = send_series(c, [t1, t2], tz="America/Los_Angeles")
    assert len(outs[0].triggers) == 1
    assert outs[1].decisions[0]["reason_code"] == "CHANNEL_CAP"
    assert outs[1].decisions[0]["deferred_until"] == at("2026-11-25T08:00:00-08:00")
    zone = ZoneInfo("Asia/Tokyo")
    assert next_local_midnight(t1, zone) == at("2026-11-26T00:00:00+09:00")


def test_the_weekly_cap_defers_to_next_monday_local():
    c = campaign("c")  # EMAIL: 2 a day, 3 a week; min interval 30 m
    mon = at("2026-11-23T09:00:00+01:00")  # a Monday in Berlin
    times = [mon, mon + 3_600_000, mon + 86_400_000, mon + 2 * 86_400_000]
    _, outs = send_series(c, times, tz="Europe/Berlin")
    assert [len(o.triggers) for o in outs] == [1, 1, 1, 0]
    decision = outs[3].decisions[0]
    assert decision["reason_code"] == "CHANNEL_CAP"
    assert decision["deferred_until"] == at("2026-11-30T08:00:00+01:00")  # Monday, after quiet


def test_a_campaign_cap_applies_to_that_campaign_only():
    capped = campaign("capped", frequency={"cap": {"per_day": 1}}, channels=["PUSH"])
    state = arb.CampaignState()
    t1, t2 = NOON_UTC, NOON_UTC + 3_600_000
    arb.decide(state, [candidate("capped", "e1", t1)], user(), defs(capped), t1, t1)
    out = arb.decide(state, [candidate("capped", "e2", t2)], user(), defs(capped), t2, t2)
    assert out.decisions[0]["reason_code"] == "CAMPAIGN_CAP"


def test_min_interval_spaces_two_triggers():
    a, b = campaign("a", channels=["PUSH"]), campaign("b", channels=["PUSH"])
    state = arb.CampaignState()
    arb.decide(state, [candidate("a", "e1")], user(), defs(a, b), NOON_UTC, NOON_UTC)
    t2 = NOON_UTC + 60_000
    out = arb.decide(state, [candidate("b", "e2", t2)], user(), defs(a, b), t2, t2)
    assert out.decisions[0]["reason_code"] == "MIN_INTERVAL"
    assert out.decisions[0]["deferred_until"] == NOON_UTC + 30 * 60_000


# --- quiet hours and DST -----------------------------------------------------------------------


def test_quiet_hours_defer_to_the_local_end_in_each_time_zone():
    c = campaign("c", channels=["PUSH"])
    instant = at("2026-11-24T23:00:00+00:00")
    ends = {}
    for tz in ("UTC", "America/Los_Angeles", "Asia/Kolkata"):
        out = arb.decide(arb.CampaignState(), [candidate("c", "e1", instant)], user(tz),
                         defs(c), instant, instant)
        ends[tz] = (out.decisions[0]["deferred_until"] if out.decisions else None,
                    len(out.triggers))
    assert ends["UTC"] == (at("2026-11-25T08:00:00+00:00"), 0)
    assert ends["America/Los_Angeles"] == (None, 1)  # 15:00 there: sent at once
    assert ends["Asia/Kolkata"] == (at("2026-11-25T08:00:00+05:30"), 0)  # 04:30 there


def test_quiet_hours_end_moves_with_spring_forward():
    zone = ZoneInfo("America/New_York")
    # DST starts 2026-03-08 02:00 local: the night is an hour shorter
    late = at("2026-03-07T23:00:00-05:00")
    end = quiet_until(late, zone, 21 * 60, 8 * 60)
    assert end == at("2026-03-08T08:00:00-04:00")  # 12:00 UTC, not 13:00
    assert datetime.fromtimestamp(end / 1000, tz=zone).hour == 8
    assert end - late == 8 * 3_600_000  # 9 wall-clock hours, 8 real ones


def test_quiet_hours_end_moves_with_fall_back():
    zone = ZoneInfo("Europe/Berlin")
    late = at("2026-10-24T22:00:00+02:00")  # DST ends 2026-10-25 03:00 -> 02:00
    end = quiet_until(late, zone, 21 * 60, 8 * 60)
    assert end == at("2026-10-25T08:00:00+01:00")
    assert end - late == 11 * 3_600_000  # 10 wall-clock hours, 11 real ones


def test_quiet_hours_that_end_inside_a_dst_gap_end_just_after_it():
    zone = ZoneInfo("America/New_York")
    start = at("2026-03-08T01:30:00-05:00")
    end = quiet_until(start, zone, 60, 2 * 60 + 30)  # quiet 01:00-02:30; 02:30 is skipped
    assert end is not None and end > start
    assert datetime.fromtimestamp(end / 1000, tz=zone).hour == 3


def test_a_daily_cap_across_the_dst_day_counts_local_days():
    zone = ZoneInfo("Europe/Berlin")
    times = [at("2026-10-25T09:00:00+01:00")]
    # the 25th has 25 hours in Berlin: 23:30 local is still the same day
    same_day = at("2026-10-25T23:30:00+01:00")
    assert cap_free_at(times, same_day, zone, Cap(per_day=1)) == \
        at("2026-10-26T00:00:00+01:00")


def test_p0_may_bypass_quiet_hours_only_when_its_definition_says_so():
    flash = campaign("flash", urgency=1.0, roi=100, brand=1.0, channels=["PUSH"],
                     quiet_hours="bypass")
    polite = campaign("polite", urgency=1.0, roi=100, brand=1.0, channels=["PUSH"])
    night = at("2026-11-24T23:30:00+00:00")
    out = arb.decide(arb.CampaignState(), [candidate("flash", "e1", night)], user(),
                     defs(flash), night, night)
    assert out.triggers and out.triggers[0]["tier"] == "P0"
    out = arb.decide(arb.CampaignState(), [candidate("polite", "e1", night)], user(),
                     defs(polite), night, night)
    assert out.decisions[0]["reason_code"] == "QUIET_HOURS"


def test_bypass_does_not_apply_below_p0():
    lowly = campaign("lowly", urgency=0.1, roi=1, brand=0.1, channels=["PUSH"],
                     quiet_hours="bypass")
    night = at("2026-11-24T23:30:00+00:00")
    out = arb.decide(arb.CampaignState(), [candidate("lowly", "e1", night)], user(),
                     defs(lowly), night, night)
    assert out.decisions[0]["reason_code"] == "QUIET_HOURS"


# --- candidates --------------------------------------------------------------------------------


class View:
    def __init__(self, values):
        self.values = values

    def feature(self, name):
        return self.values.get(name)


def facts(event=None, changes=(), churn=None, now=NOON_UTC):
    return arb.StepFacts("u1", now, event["event_id"] if event else "timer@1", event,
                         tuple(changes), churn, View({"cart_value": 120.5}),
                         {"country": "DE", "time_zone": "Europe/Berlin"})


EVENT = click("e9", "u1", "ADD_TO_CART", NOON_UTC, product_id="p1", category="shoes",
              price=60.0, quantity=2, ingest_time=NOON_UTC + 20)


def test_an_event_trigger_with_conditions_fires_on_a_matching_click_only():
    c = campaign("big-cart", trigger={"event": {"type": "ADD_TO_CART",
                                                "where": {"value": {">": 100}}}},
                 payload={"product": "{event.product_id}", "value": "{feature.cart_value}"})
    [found] = arb.find_candidates([c], facts(EVENT), None)
    assert found.cause == "e9" and found.ingest_time == NOON_UTC + 20
    assert found.payload == {"product": "p1", "value": "120.5"}
    assert found.features["event.value"] == 120.0
    cheap = {**EVENT, "price": 40.0}
    assert arb.find_candidates([c], facts(cheap), None) == []


def test_a_segment_enter_trigger_fires_on_the_enter_change():
    c = campaign("c")
    change = {"change_id": "ch1", "segment_id": "seg-a", "change": "ENTER",
              "event_time": NOON_UTC, "cause_event_id": None}
    [found] = arb.find_candidates([c], facts(changes=[change]), None)
    assert found.cause == "ch1" and found.cause_event_id == "timer@1"
    assert found.ingest_time is None
    exit_ = {**change, "change": "EXIT"}
    assert arb.find_candidates([c], facts(changes=[exit_]), None) == []


def test_a_churn_trigger_fires_when_the_score_crosses_upwards_only():
    c = campaign("c", trigger={"churn_score": {"crosses_above": 0.6}})
    assert arb.find_candidates([c], facts(EVENT, churn=0.7), 0.5)
    assert arb.find_candidates([c], facts(EVENT, churn=0.7), None)
    assert not arb.find_candidates([c], facts(EVENT, churn=0.7), 0.65)  # already above
    assert not arb.find_candidates([c], facts(EVENT, churn=0.5), 0.3)


def test_the_may_fire_prefilter_keeps_exactly_what_fired_fires():
    """The pre-filter by trigger (``may_fire``) drops nothing ``fired`` fires (differential).

    Seeded steps (a click of any type or none, ENTERs and EXITs of a few segments, scores
    around the thresholds, a previous score or none) against campaigns of every trigger kind,
    disabled ones and a journey node's (no trigger): ``find_candidates`` through the filter
    equals the plain loop of ``fired`` over every enabled campaign, in the same order; every
    trigger ``fired`` fires passes ``may_fire`` (journeys' entries are asked through it too).
    The index by trigger (``Firing``) answers the same, and so do its widest candidates (no
    kept score) narrowed by ``still_fired`` (what the engine hands on to ``on_step``).
    """
    rng = random.Random(13)
    types = ["PAGE_VIEW", "ADD_TO_CART", "PURCHASE", "SEARCH"]
    segments = ["seg-a", "seg-b", "seg-c"]
    triggers = [*({"segment_enter": s} for s in segments),
                {"event": "ADD_TO_CART"}, {"event": {"type": ["PURCHASE", "SEARCH"]}},
                {"event": {"type": "ADD_TO_CART", "where": {"value": {">": 100}}}},
                {"churn_score": {"crosses_above": 0.6}}, {"churn_score": {"crosses_above": 0.3}}]
    campaigns = [campaign(f"c{i}", trigger=t, enabled=i % 4 != 3)
                 for i, t in enumerate(triggers * 2)]
    campaigns.append(dataclasses.replace(campaigns[0], id="journey/node",
                                         trigger=arb.CampaignTrigger()))
    index = arb.Firing(campaigns)
    fired_some = several = 0
    for n in range(400):
        event = None
        if rng.random() < 0.7:
            event = {**EVENT, "event_id": f"e{n}", "event_type": rng.choice(types),
                     "price": rng.choice([None, 20.0, 80.0])}
        changes = [{"change_id": f"ch{n}-{s}", "segment_id": s,
                    "change": rng.choice(["ENTER", "EXIT"]), "event_time": NOON_UTC,
                    "cause_event_id": None} for s in segments if rng.random() < 0.3]
        score = rng.choice([None, 0.1, 0.3, 0.45, 0.6, 0.9])
        previous = rng.choice([None, 0.0, 0.35, 0.7])
        step = facts(event, changes, score)
        plain = []
        for c in campaigns:
            cause = arb.fired(c.trigger, step, previous) if c.enabled else None
            if cause is not None:
                plain.append((c.id, cause.cause))
        found = [(f.campaign_id, f.cause) for f in arb.find_candidates(campaigns, step, previous)]
        assert found == plain, (n, event and event["event_type"], changes, score, previous)
        # the index by what fires a campaign answers the same, in the same order
        assert [(f.campaign_id, f.cause) for f in index.candidates(step, previous)] == plain, n
        # and so do the widest candidates (no kept score) narrowed by ``still_fired``
        by_id = {c.id: c for c in campaigns}
        narrowed = [(f.campaign_id, f.cause) for f in index.candidates(step, None)
                    if arb.still_fired(f, by_id[f.campaign_id], previous)]
        assert narrowed == plain, n
        fired_some += bool(found)
        several += len(found) > 1
        for c in campaigns:  # the predicate itself, as journeys' entries use it
            if arb.fired(c.trigger, step, previous) is not None:
                assert arb.may_fire(c.trigger, step), (n, c.trigger)
    assert 100 < fired_some < 400  # the seeded steps fire some campaigns and not others
    assert several > 20  # steps that fire campaigns of several kinds (the index's merge)


def test_the_validity_window_bounds_the_cause_time():
    c = campaign("sale", trigger={"event": "ADD_TO_CART"},
                 valid_from="2026-11-24T00:00:00Z", valid_until="2026-11-25T00:00:00Z")
    assert arb.find_candidates([c], facts(EVENT), None)
    after = {**EVENT, "event_time": at("2026-11-25T00:00:00+00:00")}
    assert not arb.find_candidates([c], facts(after), None)
    cand = arb.find_candidates([c], facts(EVENT), None)[0]
    assert arb.expires_at(cand, c) == at("2026-11-25T00:00:00+00:00")


def test_a_missing_payload_value_suppresses_instead_of_sending_a_broken_message():
    c = campaign("c", trigger={"event": "ADD_TO_CART"}, payload={"q": "{event.search_query}"})
    [found] = arb.find_candidates([c], facts(EVENT), None)
    out = arb.decide(arb.CampaignState(), [found], user(), defs(c), NOON_UTC, NOON_UTC)
    assert [d["reason_code"] for d in out.decisions] == ["MISSING_PAYLOAD"]


def test_on_step_keeps_the_churn_score_only_when_it_crosses_a_threshold():
    c = campaign("c", trigger={"churn_score": {"crosses_above": 0.6}})
    state = arb.CampaignState()
    d = defs(c)
    arb.on_step(state, facts(EVENT, churn=0.3), user(), d, 1)
    assert state.churn_score == 0.3
    arb.on_step(state, facts(EVENT, churn=0.35), user(), d, 1)
    assert state.churn_score == 0.3  # same side of 0.6: not rewritten
    out = arb.on_step(state, facts({**EVENT, "event_id": "e10"}, churn=0.7), user(), d, 1)
    assert [t["campaign_id"] for t in out.triggers] == ["c"]
    assert state.churn_score == 0.7


def test_the_trigger_event_explains_itself_and_encodes():
    from schemas.codec import Codec

    c = campaign("c")
    out = arb.decide(arb.CampaignState(), [candidate("c")], user(membership={"seg-a": 4}),
                     defs(c), NOON_UTC, NOON_UTC + 9)
    [t] = out.triggers
    assert t["explanation"]["definition_versions"] == {"c": 2, "priority-policy": 3,
                                                       "seg-a": 4}
    assert t["segments"] == ["seg-a"] and t["churn_score"] == 0.3
    assert set(t["explanation"]["features"]) >= {"priority.urgency", "priority.audience",
                                                 "churn_score"}
    codec = Codec.load()
    assert codec.decode(codec.encode("TriggerEvent", t))["trigger_id"] == t["trigger_id"]
    assert t["emit_time"] == NOON_UTC + 9 and t["cause_event_time"] == NOON_UTC


def test_a_step_with_nothing_to_decide_leaves_the_state_untouched():
    c = campaign("c", trigger={"churn_score": {"crosses_above": 0.6}})
    state = arb.CampaignState(churn_score=0.3)
    before = arb.encode_state(state)
    quiet = arb.on_step(state, facts(EVENT, churn=0.35), user(), defs(c), 1)
    assert not quiet.state_changed and arb.encode_state(state) == before
    crossed = arb.on_step(state, facts({**EVENT, "event_id": "e11"}, churn=0.7), user(),
                          defs(c), 1)
    assert crossed.state_changed


@pytest.mark.parametrize(("value", "text"), [
    (150.0, "150"), (19.99, "19.99"), (19.5, "19.5"), (0.001, "0"), (-3.0, "-3"),
    (1e308, "1e+308"), (-1e300, "-1e+300"), (1e15, "1e+15"), (float("inf"), "inf"),
    (float("-inf"), "-inf"), (float("nan"), "nan"), (5e-324, "0"),
])
def test_payload_numbers_never_raise(value: float, text: str) -> None:
    from udfs.campaigns.arbitration import format_number

    assert format_number(value) == text


# --- opt-outs from senders' outcomes ----------------------------------------------------------


def opt_out(channel: str, t: int, outcome: str = "UNSUBSCRIBED") -> dict:
    return {"outcome_id": f"o-{channel}-{t}", "trigger_id": "t0", "user_id": "u1",
            "campaign_id": "c", "channel": channel, "outcome": outcome, "event_time": t}


@pytest.mark.parametrize("outcome", ["UNSUBSCRIBED", "COMPLAINED"])
def test_an_unsubscribe_or_complaint_withdraws_consent_for_that_channel_only(outcome):
    c = campaign("c", channels=["SMS", "EMAIL"])
    state = arb.CampaignState()
    assert arb.record_opt_out(state, opt_out("SMS", NOON_UTC - 1000, outcome))
    out = arb.decide(state, [candidate("c")], user(), defs(c), NOON_UTC, NOON_UTC)
    assert [t["channel"] for t in out.triggers] == ["EMAIL"]
    assert arb.record_opt_out(state, opt_out("EMAIL", NOON_UTC - 500, outcome))
    out = arb.decide(state, [candidate("c", cause="e2")], user(), defs(c), NOON_UTC + 1,
                     NOON_UTC + 1)
    assert out.triggers == []
    [decision] = out.decisions
    assert decision["reason_code"] == "NO_CONSENT"
    assert f"SMS at {NOON_UTC - 1000}" in decision["reason"]
    assert f"EMAIL at {NOON_UTC - 500}" in decision["reason"]


def test_other_outcomes_and_redelivered_or_older_opt_outs_change_nothing():
    state = arb.CampaignState()
    assert not arb.record_opt_out(state, {**opt_out("SMS", 10), "outcome": "OPENED"})
    assert state.opt_outs == {}
    assert arb.record_opt_out(state, opt_out("SMS", 10))
    assert not arb.record_opt_out(state, opt_out("SMS", 10))  # redelivered
    assert not arb.record_opt_out(state, opt_out("SMS", 5))  # older
    assert state.opt_outs == {"SMS": 10}


def test_a_profile_updated_after_the_opt_out_gives_consent_back():
    c = campaign("c", channels=["SMS"])
    written = user().metadata["updated_at"]
    state = arb.CampaignState()
    arb.record_opt_out(state, opt_out("SMS", written))  # at or after the profile: it holds
    assert arb.decide(state, [candidate("c")], user(), defs(c), NOON_UTC,
                      NOON_UTC).triggers == []
    # an opt-out older than the profile: the profile's owner recorded a new opt-in since
    state = arb.CampaignState()
    arb.record_opt_out(state, opt_out("SMS", written - 1))
    out = arb.decide(state, [candidate("c")], user(), defs(c), NOON_UTC, NOON_UTC)
    assert [t["channel"] for t in out.triggers] == ["SMS"]


def test_opt_outs_survive_the_state_encoding_and_old_state_restores_without_them():
    state = arb.CampaignState()
    arb.record_opt_out(state, opt_out("PUSH", 42))
    assert not state.is_empty()
    assert arb.decode_state(arb.encode_state(state)).opt_outs == {"PUSH": 42}
    old = arb.encode_state(arb.CampaignState(churn_score=0.5))
    assert b"opt_outs" not in old and arb.decode_state(old).opt_outs == {}


def test_a_steps_facts_are_built_once_and_belong_to_that_step():
    """``entered`` and ``recent`` are computed at the first read and kept on that step's facts
    (a frozen dataclass); another step's facts, or a replaced copy, compute their own."""
    enter = {"segment_id": "cart-abandoners", "change": "ENTER"}
    exit_ = {"segment_id": "vip", "change": "EXIT"}
    one = facts(EVENT, changes=[enter, exit_])
    assert one.entered == frozenset({"cart-abandoners"}) and one.entered is one.entered
    assert one.recent is not None and one.recent is one.recent
    assert (one.recent.event_type, one.recent.price) == ("ADD_TO_CART", 60.0)
    other = dataclasses.replace(one, changes=(exit_,), event=None)
    assert other.entered == frozenset() and other.recent is None
    assert one.entered == frozenset({"cart-abandoners"})  # unchanged by the other's reads
    assert other == dataclasses.replace(one, changes=(exit_,), event=None)  # fields only


@pytest.mark.parametrize("journey_thresholds", [(), (0.2,)])
def test_may_decide_is_false_only_where_on_step_changes_nothing(journey_thresholds):
    """``may_decide`` lets a step skip ``on_step`` only where it changes nothing (differential).

    Seeded steps that found no candidate and convert nothing (the engine asks only then):
    kept scores and step scores on both sides of two churn thresholds (and a journey entry's,
    handed in as ``thresholds``), pending candidates due before, at and after the step, a
    running journey instance or none. Where ``may_decide`` is false, ``on_step`` on a copy
    returns an empty outcome and leaves the state as it was.
    """
    rng = random.Random(29)
    campaigns = [campaign("churn-high", trigger={"churn_score": {"crosses_above": 0.6}}),
                 campaign("churn-mid", trigger={"churn_score": {"crosses_above": 0.3}}),
                 campaign("carts", trigger={"event": "ADD_TO_CART"}),
                 campaign("seg", trigger={"segment_enter": "seg-a"})]
    d = dataclasses.replace(defs(*campaigns), churn_thresholds=journey_thresholds)
    thresholds = (*arb.churn_thresholds(campaigns), *journey_thresholds) \
        if journey_thresholds else None
    skipped = decided = 0
    for n in range(600):
        event = {**EVENT, "event_id": f"e{n}", "event_type": rng.choice(["PAGE_VIEW", "SEARCH"])} \
            if rng.random() < 0.7 else None
        step = facts(event, churn=rng.choice([None, 0.05, 0.1, 0.2, 0.29, 0.3, 0.45, 0.6]))
        state = arb.CampaignState(churn_score=rng.choice([None, 0.1, 0.2, 0.35, 0.7]))
        if rng.random() < 0.4:
            due = rng.choice([NOON_UTC - 1, NOON_UTC, NOON_UTC + 1000])
            state.pending.append(dataclasses.replace(candidate("seg", f"p{due}"), due_ms=due))
        if rng.random() < 0.1:
            state.journeys.instances["j"] = None  # type: ignore[assignment]  # only its presence
        if arb.find_candidates(campaigns, step, None) or arb.may_convert(step, campaigns):
            continue  # the engine runs on_step then, whatever may_decide says
        if arb.may_decide(state, step, campaigns, thresholds):
            decided += 1
            continue
        skipped += 1
        before = arb.encode_state(state)
        out = arb.on_step(state, step, user(), d, NOON_UTC)
        assert out == arb.Outcome(), (n, step.churn_score, before)
        assert arb.encode_state(state) == before, n
    assert skipped > 100 and decided > 50, (skipped, decided)


def test_may_convert_answers_as_every_goal_tested_in_turn_does():
    """The goal-type pre-check drops no conversion (differential, every event type)."""
    goals = [campaign("checkout", attribution={"goal": {"type": "CHECKOUT"}}),
             campaign("big-cart", attribution={"goal": {"type": "ADD_TO_CART",
                                                        "where": {"value": {">": 100}}}}),
             campaign("default")]
    converting = 0
    for kind in ["PAGE_VIEW", "ADD_TO_CART", "CHECKOUT", "PURCHASE", "SEARCH"]:
        for price in (None, 20.0, 80.0):
            step = facts({**EVENT, "event_type": kind, "price": price})
            plain = arb.goal_matches(arb.DEFAULT_GOAL, step) or any(
                arb.goal_matches(c.goal, step) for c in goals)
            assert arb.may_convert(step, goals) == plain, (kind, price)
            converting += plain
    assert not arb.may_convert(facts(None), goals)
    assert 3 < converting < 15  # some clicks are goals, others not
