"""Tests for the simulated audience: jobs.workload.responses (pure: determinism, rates, times,
ids, attribution marks)."""

from __future__ import annotations

import math
import random

import pytest

from jobs.sender.sender import derive_outcome_id
from jobs.workload.responses import (
    CLICK_SCHEMA,
    NF_TRIGGER,
    OUTCOME_SCHEMA,
    ResponseSpec,
    draw,
    purchase_ids,
    respond_to_holdout,
    respond_to_trigger,
)
from schemas.codec import Codec
from udfs.intake import click_problems, outcome_problems

T0 = 1_750_000_000_000
HOUR, DAY = 3_600_000, 86_400_000
CODEC = Codec.load()


def trigger(n, channel="EMAIL", campaign="c-1", at=T0, user=None):
    """A TriggerEvent dict the codec encodes."""
    return {
        "trigger_id": f"t-{campaign}-{n}", "user_id": user or f"u-{n}", "campaign_id": campaign,
        "campaign_version": 1, "step_id": "main", "journey_id": None, "node_id": None,
        "journey_instance": None, "channel": channel, "tier": "P1", "priority_score": 1.0,
        "template_id": "tpl", "payload": {}, "segments": [], "churn_score": None,
        "model_version": None, "cause_event_id": f"e-{n}", "cause_event_time": at,
        "ingest_time": at + 1_000, "emit_time": at + 2_000, "expires_at": None,
        "explanation": {"reason": "test", "definition_versions": {}, "features": {},
                        "rivals": []},
    }


def decision(n, outcome="HOLDOUT", campaign="c-1", at=T0):
    """A TriggerDecision dict (HOLDOUT is not in this branch's schema yet: not encodable)."""
    return {
        "trigger_id": f"h-{campaign}-{n}", "user_id": f"hu-{n}", "campaign_id": campaign,
        "campaign_version": 1, "outcome": outcome, "reason_code": "HOLDOUT",
        "reason": "control group", "tier": "P1", "priority_score": 1.0, "channel": "EMAIL",
        "deferred_until": None, "cause_event_id": f"e-{n}", "decided_at": at,
        "emit_time": at + 2_000,
    }


def by_kind(responses):
    return {r.kind: r for r in responses}


def within(successes, n, p, sigmas=4.0):
    """The observed rate lies within ``sigmas`` standard errors of ``p``."""
    se = math.sqrt(p * (1 - p) / n)
    return abs(successes / n - p) <= sigmas * se


# --- determinism ----------------------------------------------------------------------------


def test_a_trigger_gets_the_same_responses_in_any_order_and_on_redelivery():
    spec = ResponseSpec(seed=7, p_unsubscribe=0.2, p_convert=0.3)
    triggers = [trigger(i, channel=("EMAIL", "SMS", "PUSH", "IN_APP")[i % 4]) for i in range(400)]
    first = {t["trigger_id"]: respond_to_trigger(t, spec) for t in triggers}
    shuffled = triggers[:]
    random.Random(1).shuffle(shuffled)
    again = {}
    for t in shuffled + shuffled[:50]:  # redelivered ones too
        again.setdefault(t["trigger_id"], []).append(respond_to_trigger(dict(t), spec))
    for trigger_id, answers in again.items():
        assert all(answer == first[trigger_id] for answer in answers)
    assert sum(len(r) for r in first.values()) > 200  # not vacuous: they do respond


def test_another_seed_is_another_audience_with_the_same_ids():
    triggers = [trigger(i) for i in range(300)]
    a = [respond_to_trigger(t, ResponseSpec(seed=1, p_convert=0.5)) for t in triggers]
    b = [respond_to_trigger(t, ResponseSpec(seed=2, p_convert=0.5)) for t in triggers]
    assert a != b
    ids = lambda runs: {r.record.get("outcome_id") or r.record["event_id"]  # noqa: E731
                        for rs in runs for r in rs}
    shared = ids(a) & ids(b)
    assert shared  # a trigger's open (or purchase) has one id whatever the seed
    assert all(i.startswith("e-resp-") or len(i) == 32 for i in shared)


def test_draws_are_uniform_and_fixed_by_their_three_parts():
    values = [draw(3, f"t-{i}", "open") for i in range(20_000)]
    assert all(0 <= v < 1 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    assert sum(v < 0.1 for v in values) == pytest.approx(2_000, abs=200)
    assert draw(3, "t-1", "open") == draw(3, "t-1", "open")
    assert len({draw(3, "t-1", "open"), draw(4, "t-1", "open"), draw(3, "t-2", "open"),
                draw(3, "t-1", "click")}) == 4


# --- rates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["EMAIL", "PUSH"])
def test_open_click_and_unsubscribe_rates_over_50k_triggers(channel):
    spec = ResponseSpec(seed=11, p_unsubscribe=0.05)
    n = 50_000
    opened = clicked = unsubscribed = 0
    for i in range(n):
        kinds = by_kind(respond_to_trigger(trigger(i, channel=channel), spec))
        opened += "OPENED" in kinds
        clicked += "CLICKED" in kinds
        unsubscribed += "UNSUBSCRIBED" in kinds
        assert "OPENED" in kinds or not ({"CLICKED", "UNSUBSCRIBED"} & set(kinds))
    assert within(opened, n, spec.open_rate(channel))
    assert within(clicked, opened, spec.click_rate(channel))  # click given open
    assert within(unsubscribed, opened, 0.05)
    assert not within(opened, n, spec.open_rate(channel) * 1.1)  # the check can fail


def test_conversions_of_treated_and_held_out_users_recover_the_true_effect():
    delta = 0.03
    spec = ResponseSpec(seed=5, p_convert=0.05, effects={"c-lift": delta})
    n = 50_000

    def converted(responses):
        return any(r.kind == "PURCHASE" for r in responses)

    treated = sum(converted(respond_to_trigger(trigger(i, campaign="c-lift"), spec))
                  for i in range(n))
    held = sum(converted(respond_to_holdout(decision(i, campaign="c-lift"), spec))
               for i in range(n))
    untouched = sum(converted(respond_to_trigger(trigger(i, campaign="c-none"), spec))
                    for i in range(n))
    p_t, p_h, p_u = treated / n, held / n, untouched / n
    se = math.sqrt(p_t * (1 - p_t) / n + p_h * (1 - p_h) / n)
    assert abs((p_t - p_h) - delta) <= 4 * se
    assert abs(p_u - p_h) <= 4 * se  # a campaign without an effect lifts nothing
    assert within(held, n, 0.05)
    assert (p_t - p_h) > 4 * se  # the effect is visible, not noise


def test_an_effect_is_clamped_to_a_probability():
    sure = ResponseSpec(p_convert=0.5, effects={"c-1": 0.9})
    never = ResponseSpec(p_convert=0.5, effects={"c-1": -1.0})
    assert sure.conversion_rate("c-1", treated=True) == 1.0
    assert never.conversion_rate("c-1", treated=True) == 0.0
    assert never.conversion_rate("c-1", treated=False) == 0.5
    assert all(any(r.kind == "PURCHASE" for r in respond_to_trigger(trigger(i), sure))
               for i in range(500))
    assert not any(r.kind == "PURCHASE" for i in range(500)
                   for r in respond_to_trigger(trigger(i), never))


# --- times, channels, attribution -------------------------------------------------------------


def test_no_response_is_earlier_than_its_cause_and_each_lies_in_its_range():
    spec = ResponseSpec(seed=3, p_unsubscribe=0.3, p_convert=0.4)
    seen = set()
    for i in range(5_000):
        at = T0 + i * 7_919
        kinds = by_kind(respond_to_trigger(trigger(i, at=at), spec))
        seen |= set(kinds)
        if "OPENED" in kinds:
            opened = kinds["OPENED"].event_time
            assert at + spec.open_delay_ms[0] <= opened <= at + spec.open_delay_ms[1]
            for later in ("CLICKED", "UNSUBSCRIBED"):
                if later in kinds:
                    t = kinds[later].event_time
                    assert opened + spec.click_delay_ms[0] <= t <= opened + spec.click_delay_ms[1]
        if "PURCHASE" in kinds:
            assert at <= kinds["PURCHASE"].event_time < at + spec.conversion_window_ms
        for held in respond_to_holdout(decision(i, at=at), spec):
            assert at <= held.event_time < at + spec.conversion_window_ms
    assert seen == {"OPENED", "CLICKED", "UNSUBSCRIBED", "PURCHASE"}


def test_responses_come_in_event_time_order():
    spec = ResponseSpec(seed=9, p_unsubscribe=0.5, p_convert=1.0, conversion_window_ms=HOUR)
    for i in range(2_000):
        times = [r.event_time for r in respond_to_trigger(trigger(i), spec)]
        assert times == sorted(times)


def test_nf_trigger_marks_exactly_the_purchases_after_a_click():
    # a short window, so that many purchases come before the click and many after it
    spec = ResponseSpec(seed=4, open_rates={"EMAIL": 1.0}, click_rates={"EMAIL": 0.5},
                        p_convert=1.0, conversion_window_ms=2 * HOUR,
                        open_delay_ms=(0, HOUR), click_delay_ms=(0, 10 * 60_000))
    after_click = before_click = no_click = 0
    for i in range(3_000):
        t = trigger(i)
        kinds = by_kind(respond_to_trigger(t, spec))
        properties = kinds["PURCHASE"].record["properties"]
        clicked = kinds.get("CLICKED")
        if clicked is not None and clicked.event_time <= kinds["PURCHASE"].event_time:
            assert properties == {NF_TRIGGER: t["trigger_id"]}
            after_click += 1
        else:
            assert properties == {}
            if clicked is None:
                no_click += 1
            else:
                before_click += 1
    assert min(after_click, before_click, no_click) > 200


def test_held_out_users_open_and_click_nothing_and_carry_no_trigger_mark():
    spec = ResponseSpec(seed=2, open_rates={"EMAIL": 1.0}, click_rates={"EMAIL": 1.0},
                        p_convert=0.5)
    answers = [respond_to_holdout(decision(i), spec) for i in range(2_000)]
    purchases = [r for rs in answers for r in rs]
    assert 800 < len(purchases) < 1_200
    assert {r.schema for r in purchases} == {CLICK_SCHEMA}
    assert all(r.record["properties"] == {} for r in purchases)
    assert all(r.user_id.startswith("hu-") for r in purchases)
    for outcome in ("SUPPRESSED", "DEFERRED"):
        assert all(respond_to_holdout(decision(i, outcome), spec) == [] for i in range(200))


def test_paid_social_is_never_opened_but_its_users_still_convert():
    spec = ResponseSpec(open_rates={"EMAIL": 1.0, "PAID_SOCIAL": 0.0},
                        click_rates={"EMAIL": 1.0}, p_unsubscribe=1.0, p_convert=0.5)
    answers = [respond_to_trigger(trigger(i, channel="PAID_SOCIAL"), spec) for i in range(2_000)]
    kinds = {r.kind for rs in answers for r in rs}
    assert kinds == {"PURCHASE"}
    # the same spec does open every email: the channel is what stops it
    assert {r.kind for r in respond_to_trigger(trigger(1, channel="EMAIL"), spec)} >= {
        "OPENED", "CLICKED", "UNSUBSCRIBED"}
    with pytest.raises(ValueError, match="PAID_SOCIAL must be 0"):
        ResponseSpec(open_rates={"PAID_SOCIAL": 0.1})


# --- ids and records ------------------------------------------------------------------------


def test_outcome_ids_are_the_senders_and_stable():
    spec = ResponseSpec(open_rates={"SMS": 1.0}, click_rates={"SMS": 1.0}, p_unsubscribe=1.0,
                        p_convert=1.0)
    t = trigger(42, channel="SMS")
    first, second = respond_to_trigger(t, spec), respond_to_trigger(t, spec)
    for response in first:
        if response.schema == OUTCOME_SCHEMA:
            assert response.record["outcome_id"] == derive_outcome_id(
                t["trigger_id"], "SMS", response.kind)
    outcome_ids = [r.record["outcome_id"] for r in first if r.schema == OUTCOME_SCHEMA]
    assert len(set(outcome_ids)) == 3
    assert outcome_ids == [r.record["outcome_id"] for r in second if r.schema == OUTCOME_SCHEMA]
    purchase = by_kind(first)["PURCHASE"].record
    assert (purchase["event_id"], purchase["order_id"]) == purchase_ids(t["trigger_id"])
    assert purchase_ids("t-a") != purchase_ids("t-b")


def test_every_response_encodes_and_passes_the_jobs_input_checks():
    spec = ResponseSpec(seed=8, p_unsubscribe=0.3, p_convert=0.5)
    responses = [r for i in range(600) for r in respond_to_trigger(
        trigger(i, channel=("EMAIL", "SMS", "PUSH", "IN_APP", "PAID_SOCIAL")[i % 5]), spec)]
    responses += [r for i in range(200) for r in respond_to_holdout(decision(i), spec)]
    assert {r.kind for r in responses} == {"OPENED", "CLICKED", "UNSUBSCRIBED", "PURCHASE"}
    for response in responses:
        decoded = CODEC.decode(CODEC.encode(response.schema, response.record),
                               expect=response.schema)
        assert decoded == response.record
        check = outcome_problems if response.schema == OUTCOME_SCHEMA else click_problems
        assert check(response.record, response.event_time) == []
        if response.schema == CLICK_SCHEMA:
            record = response.record
            assert (record["event_type"], record["currency"], record["quantity"],
                    record["source"]) == ("PURCHASE", "USD", 1, "WEB")
            assert 10.0 <= record["price"] <= 200.0
        else:
            assert response.record["revenue"] is None and response.record["currency"] is None


@pytest.mark.parametrize("changes, message", [
    ({"open_rates": {"EMAIL": 1.5}}, "open rate of EMAIL must be a probability"),
    ({"click_rates": {"FAX": 0.1}}, "unknown channel 'FAX'"),
    ({"p_convert": -0.1}, "p_convert must be a probability"),
    ({"effects": {"c-1": 2}}, "effect of 'c-1' must be a number in \\[-1, 1\\]"),
    ({"open_delay_ms": (10, 5)}, "open_delay_ms must be whole milliseconds"),
    ({"conversion_window_ms": 0}, "conversion_window_ms must be"),
    ({"purchase_value_usd": (5.0, 1.0)}, "purchase_value_usd must be"),
])
def test_a_bad_spec_says_what_is_wrong(changes, message):
    with pytest.raises(ValueError, match=message):
        ResponseSpec(**changes)


def test_a_record_without_its_send_time_is_refused_with_the_field_named():
    t = trigger(1)
    del t["cause_event_time"]
    with pytest.raises(ValueError, match="without cause_event_time"):
        respond_to_trigger(t, ResponseSpec())


def test_the_spec_copies_its_mappings():
    effects = {"c-1": 0.1}
    spec = ResponseSpec(effects=effects)
    effects["c-1"] = 0.9
    assert spec.effects == {"c-1": 0.1}
