"""Attribution of conversions (issue 15): windows, models, direct clicks, arms, pruning and
the CONVERTED outcome record."""

import pytest

from udfs.attribution.attribution import (
    DIRECT,
    AttributionRule,
    Conversion,
    Touch,
    attribute,
    attribution_unit,
    converted_outcome,
    outcome_id,
    prune,
)
from udfs.attribution.holdout import CONTROL, HOLDOUT, TREATED

H = 3_600_000
D = 24 * H
T0 = 1_780_000_000_000  # a fixed event time
LAST_7D = AttributionRule(7 * D, "last_touch")
LINEAR_7D = AttributionRule(7 * D, "linear")


def touch(trigger_id, at, campaign="c1", rule=LAST_7D, arm=TREATED, journey=None,
          channel="EMAIL"):
    return Touch(trigger_id, campaign, journey, channel, at, arm, rule)


def bought(at, revenue=100.0, direct=None, event_id="e1"):
    return Conversion(event_id, at, revenue, direct)


def shares(credits):
    return [(c.trigger_id, c.weight, c.revenue, c.rule) for c in credits]


def test_a_conversion_inside_the_window_is_credited_to_the_touch():
    credits = attribute([touch("t1", T0)], bought(T0 + 2 * D))
    assert shares(credits) == [("t1", 1.0, 100.0, "last_touch 7d")]
    assert credits[0].campaign_id == "c1" and credits[0].arm == TREATED


def test_a_conversion_after_the_window_gets_nothing():
    assert attribute([touch("t1", T0)], bought(T0 + 7 * D + 1)) == []


def test_the_edge_of_the_window_is_inside_and_one_ms_later_is_outside():
    assert shares(attribute([touch("t1", T0)], bought(T0 + 7 * D))) == \
        [("t1", 1.0, 100.0, "last_touch 7d")]
    assert attribute([touch("t1", T0)], bought(T0 + 7 * D + 1)) == []


def test_a_conversion_before_or_at_the_send_gets_nothing():
    assert attribute([touch("t1", T0)], bought(T0 - 1)) == []
    # a campaign fired by this very purchase must not claim it
    assert attribute([touch("t1", T0)], bought(T0)) == []
    assert shares(attribute([touch("t1", T0)], bought(T0 + 1)))[0][0] == "t1"


def test_two_touches_last_touch_credits_the_latest():
    touches = [touch("t-late", T0 + 2 * H), touch("t-early", T0)]
    assert shares(attribute(touches, bought(T0 + 3 * H))) == \
        [("t-late", 1.0, 100.0, "last_touch 7d")]


def test_two_touches_linear_splits_weight_and_revenue():
    touches = [touch("t1", T0, rule=LINEAR_7D), touch("t2", T0 + 2 * H, rule=LINEAR_7D)]
    assert shares(attribute(touches, bought(T0 + 3 * H, revenue=90.0))) == [
        ("t1", 0.5, 45.0, "linear 7d"), ("t2", 0.5, 45.0, "linear 7d")]


def test_linear_counts_only_the_touches_in_window():
    touches = [touch("old", T0, rule=LINEAR_7D), touch("t2", T0 + 6 * D, rule=LINEAR_7D),
               touch("t3", T0 + 7 * D, rule=LINEAR_7D), touch("after", T0 + 9 * D)]
    credits = attribute(touches, bought(T0 + 8 * D, revenue=10.0))
    assert shares(credits) == [("t2", 0.5, 5.0, "linear 7d"), ("t3", 0.5, 5.0, "linear 7d")]


def test_a_tie_in_send_time_is_broken_by_trigger_id_whatever_the_order():
    a, b = touch("aaa", T0), touch("bbb", T0)
    assert attribute([a, b], bought(T0 + H)) == attribute([b, a], bought(T0 + H))
    assert attribute([a, b], bought(T0 + H))[0].trigger_id == "bbb"


def test_each_campaign_attributes_on_its_own():
    touches = [touch("a1", T0, campaign="a"), touch("b1", T0 + H, campaign="b"),
               touch("b2", T0 + 2 * H, campaign="b", rule=AttributionRule(H, "last_touch"))]
    credits = attribute(touches, bought(T0 + 4 * H))
    # b2's 1h window is over: b's credit goes to b1, not to nobody; a keeps its own
    assert [(c.campaign_id, c.trigger_id, c.weight) for c in credits] == [
        ("a", "a1", 1.0), ("b", "b1", 1.0)]


def test_a_journey_is_one_unit_across_its_sends():
    touches = [touch("j-email", T0, campaign="j/email", journey="j", rule=LINEAR_7D),
               touch("j-sms", T0 + 4 * H, campaign="j/sms", journey="j", rule=LINEAR_7D)]
    credits = attribute(touches, bought(T0 + D, revenue=50.0))
    assert shares(credits) == [("j-email", 0.5, 25.0, "linear 7d"),
                               ("j-sms", 0.5, 25.0, "linear 7d")]
    assert {c.unit for c in credits} == {"j"}
    assert attribution_unit("j/sms", "j") == "j" and attribution_unit("c1", None) == "c1"


def test_a_direct_trigger_id_takes_its_campaign_s_credit():
    touches = [touch("t1", T0), touch("t2", T0 + H)]
    credits = attribute(touches, bought(T0 + 2 * H, direct="t1"))
    assert shares(credits) == [("t1", 1.0, 100.0, DIRECT)]


def test_a_direct_trigger_id_overrides_a_linear_split_only_in_its_unit():
    touches = [touch("a1", T0, campaign="a", rule=LINEAR_7D),
               touch("a2", T0 + H, campaign="a", rule=LINEAR_7D),
               touch("b1", T0 + H, campaign="b")]
    credits = attribute(touches, bought(T0 + 2 * H, direct="a2"))
    assert shares(credits) == [("a2", 1.0, 100.0, DIRECT), ("b1", 1.0, 100.0, "last_touch 7d")]


@pytest.mark.parametrize("direct", [
    "unknown",          # another user's, forged or already pruned
    "t-held",           # held out: never sent, so no click can carry it
    "t-old",            # out of its window
])
def test_an_unusable_direct_trigger_id_falls_back_to_the_window_rule(direct):
    touches = [touch("t-old", T0 - 8 * D), touch("t1", T0),
               touch("t-held", T0 + H, campaign="c2", arm=HOLDOUT)]
    credits = attribute(touches, bought(T0 + 2 * H, direct=direct))
    assert [(c.trigger_id, c.rule) for c in credits] == [
        ("t1", "last_touch 7d"), ("t-held", "last_touch 7d")]


def test_held_out_touches_are_credited_the_same_way_with_their_arm():
    touches = [touch("h1", T0, arm=HOLDOUT, channel=None), touch("k1", T0, campaign="c2",
                                                                 arm=CONTROL)]
    credits = attribute(touches, bought(T0 + D))
    assert [(c.trigger_id, c.arm, c.weight, c.rule) for c in credits] == [
        ("h1", HOLDOUT, 1.0, "last_touch 7d"), ("k1", CONTROL, 1.0, "last_touch 7d")]


def test_the_latest_touch_s_rule_decides_a_unit_s_model():
    touches = [touch("v1", T0, rule=LINEAR_7D), touch("v2", T0 + H, rule=LAST_7D)]
    assert shares(attribute(touches, bought(T0 + 2 * H))) == [
        ("v2", 1.0, 100.0, "last_touch 7d")]


def test_a_trigger_given_twice_counts_once():
    touches = [touch("t1", T0, rule=LINEAR_7D), touch("t1", T0, rule=LINEAR_7D)]
    assert shares(attribute(touches, bought(T0 + H))) == [("t1", 1.0, 100.0, "linear 7d")]


def test_rule_names_state_model_and_window():
    assert AttributionRule().name == "last_touch 7d"
    assert AttributionRule(36 * H, "linear").name == "linear 1d 12h"
    with pytest.raises(ValueError, match="unknown attribution model 'first_touch'"):
        AttributionRule(D, "first_touch")
    with pytest.raises(ValueError, match="unknown arm 'sent'"):
        Touch("t", "c", None, "EMAIL", T0, "sent")


def test_prune_keeps_what_can_still_be_credited():
    touches = [touch("dead", T0 - 8 * D), touch("edge", T0 - 7 * D),
               touch("short", T0 - 2 * H, rule=AttributionRule(H, "last_touch")),
               touch("live", T0 - D)]
    kept = prune(touches, T0)
    assert [t.trigger_id for t in kept] == ["edge", "live"]
    # pruning never changes an answer: what it drops no conversion from now on could use
    for at in (T0, T0 + 1, T0 + D):
        assert attribute(touches, bought(at)) == attribute(kept, bought(at))


def test_prune_bounds_the_touches_keeping_the_latest():
    touches = [touch(f"t{i:03}", T0 + i) for i in range(100)]
    kept = prune(touches, T0, limit=10)
    assert [t.trigger_id for t in kept] == [f"t{i:03}" for i in range(90, 100)]
    assert len(prune(touches, T0)) == 64
    assert prune(touches, T0, limit=0) == ()


def test_the_converted_outcome_of_a_credit():
    conversion = bought(T0 + H, revenue=120.0, event_id="click-9")
    (credit,) = attribute([touch("t1", T0, channel="SMS")], conversion)
    record = converted_outcome(credit, conversion, "u1")
    assert record == {
        "outcome_id": outcome_id("t1", "click-9"), "trigger_id": "t1", "user_id": "u1",
        "campaign_id": "c1", "channel": "SMS", "outcome": "CONVERTED",
        "event_time": T0 + H, "revenue": 120.0, "currency": "USD",
    }


def test_the_outcome_id_is_the_same_on_replay_and_differs_per_trigger_and_conversion():
    assert outcome_id("t1", "e1") == outcome_id("t1", "e1")
    assert len({outcome_id("t1", "e1"), outcome_id("t2", "e1"), outcome_id("t1", "e2")}) == 3
    assert len(outcome_id("t1", "e1")) == 32
    # pinned: a changed derivation would make replays after an upgrade emit duplicates
    assert outcome_id("t1", "e1") == "4e654c173563b58a64e641cfbc4da7b6"


def test_a_held_out_credit_has_no_outcome_record():
    conversion = bought(T0 + H)
    (credit,) = attribute([touch("h1", T0, arm=HOLDOUT)], conversion)
    assert converted_outcome(credit, conversion, "u1") is None
