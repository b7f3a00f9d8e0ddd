"""The attribution and holdout grammar (issue 15): campaign, journey and policy keys, their
defaults and every error, with its path, line and what to do."""

import copy

import pytest

from udfs.attribution.attribution import AttributionRule
from udfs.attribution.holdout import ControlGroup
from udfs.attribution.roi import RoiFeedback
from udfs.campaigns.compiler import parse_campaign, parse_policy
from udfs.campaigns.grammar import DEFAULT_GOAL
from udfs.campaigns.updates import campaign_to_update, policy_to_update
from udfs.catalog.files import load_catalog, validate_files
from udfs.catalog.registries import Registries
from udfs.definitions.diagnostics import InvalidDefinitions, format_errors
from udfs.journeys.compiler import parse_journey
from udfs.journeys.runner import send_campaigns

D = 86_400_000
CAMPAIGN = {
    "kind": "campaign", "id": "c1", "version": 1, "description": "a campaign",
    "trigger": {"segment_enter": "cart-abandoners"}, "channels": ["EMAIL"],
    "template": "tpl", "priority": {"urgency": 0.5, "expected_roi": 20, "brand_significance": 0.1},
}
JOURNEY = {
    "kind": "journey", "id": "attr-journey", "version": 1, "description": "a journey",
    "priority": {"urgency": 0.5, "expected_roi": 20, "brand_significance": 0.1},
    "nodes": [
        {"id": "start", "entry": {"trigger": {"segment_enter": "cart-abandoners"}},
         "next": "email"},
        {"id": "email", "send": {"channels": ["EMAIL"], "template": "t"}, "next": "done"},
        {"id": "done", "exit": {}},
    ],
}


def policy(**changes):
    return {**copy.deepcopy(load_catalog().policies[0].document), **changes}


def errors_of(document, parse=parse_campaign):
    with pytest.raises(InvalidDefinitions) as info:
        parse(document)
    return [(e.path, e.message) for e in info.value.errors]


# campaigns


def test_a_campaign_without_the_keys_gets_the_defaults():
    c = parse_campaign(CAMPAIGN)
    assert c.attribution == AttributionRule(7 * D, "last_touch")
    assert c.goal == DEFAULT_GOAL and c.holdout == 0.0


def test_a_campaign_s_attribution_holdout_and_goal():
    c = parse_campaign({**CAMPAIGN, "holdout": "10%", "attribution": {
        "window": "3d", "model": "linear", "goal": {"type": "CHECKOUT"}}})
    assert c.attribution == AttributionRule(3 * D, "linear")
    assert c.goal.types == frozenset({"CHECKOUT"})
    assert c.holdout == pytest.approx(0.10)


@pytest.mark.parametrize(("written", "share"), [
    ("10%", 0.10), ("2.5 %", 0.025), (10, 0.10), (0, 0.0), ("50%", 0.5), (12.5, 0.125)])
def test_a_holdout_is_a_percentage_as_a_string_or_a_number(written, share):
    assert parse_campaign({**CAMPAIGN, "holdout": written}).holdout == pytest.approx(share)


@pytest.mark.parametrize(("change", "expected"), [
    ({"holdout": "60%"}, ("holdout", "holdout must be from 0% to 50%, got 60%")),
    ({"holdout": -5}, ("holdout", "holdout must be from 0% to 50%, got -5%")),
    ({"holdout": "10"}, ("holdout", "holdout must be a percentage from 0% to 50%, e.g. 10% (or "
                                    "the number 10), got the string '10' (add the % sign)")),
    ({"holdout": "ten percent"}, ("holdout", "holdout must be a percentage from 0% to 50%, e.g. "
                                             "10% (or the number 10), got the string "
                                             "'ten percent'")),
    ({"holdout": True}, ("holdout", "holdout must be a percentage from 0% to 50%, e.g. 10% (or "
                                    "the number 10), got the boolean true")),
    ({"attribution": {"model": "last_click"}},
     ("attribution.model", "unknown attribution model 'last_click': allowed: last_touch, linear "
      "(last_touch: the latest trigger in the window takes the conversion; linear: equal "
      "shares); did you mean 'last_touch'?")),
    ({"attribution": {"window": "7 days"}},
     ("attribution.window", "bad duration '7 days': expected a whole number and one unit of "
      "ms, s, m, h, d, e.g. 500ms, 90s, 30m, 24h, 7d")),
    ({"attribution": {"window": "91d"}},
     ("attribution.window", "attribution window '91d' is too long: at most 90d (every user's "
      "touches are kept in state for the window)")),
    ({"attribution": {"goal": {"type": "PURCHASES"}}},
     ("attribution.goal.type", None)),
    ({"attribution": {"windw": "7d"}},
     ("attribution.windw", "unknown key 'windw' in attribution: allowed: window, model, goal; "
      "did you mean 'window'?")),
    ({"attribution": "7d"},
     ("attribution", "attribution must be a mapping with keys window, model, goal; got the "
      "string '7d'")),
])
def test_campaign_errors_name_the_path_and_say_what_to_do(change, expected):
    found = errors_of({**CAMPAIGN, **change})
    path, message = expected
    if message is None:  # an event filter's own error, as everywhere else
        assert any(p == path and "unknown event type 'PURCHASES'" in m for p, m in found), found
    else:
        assert (path, message) in found, found


def test_an_error_carries_its_file_and_line(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "kind: campaign\nid: c\nversion: 1\ndescription: d\ntrigger: {segment_enter: x}\n"
        "channels: [EMAIL]\ntemplate: t\n"
        "priority: {urgency: 0.5, expected_roi: 10, brand_significance: 0.5}\n"
        "attribution:\n  window: 7d\n  model: first_touch\nholdout: 75%\n")
    _, errors = validate_files([tmp_path], known_segments=["x"])
    text = format_errors(errors)
    assert f"{tmp_path / 'c.yaml'}:attribution.model: unknown attribution model " \
           "'first_touch'" in text and "(line 11)" in text
    assert f"{tmp_path / 'c.yaml'}:holdout: holdout must be from 0% to 50%, got 75% (line 12)" \
        in text


def test_the_keys_survive_a_definition_update():
    c = parse_campaign({**CAMPAIGN, "holdout": 5, "attribution": {"window": "1d"}})
    registries = Registries()
    registries.apply(campaign_to_update(c, 0))
    again = registries.campaign_map()["c1"]
    assert (again.holdout, again.attribution) == (0.05, AttributionRule(D, "last_touch"))


# journeys


def test_a_journey_s_attribution_and_holdout_reach_its_sends():
    # send_campaigns caches per (id, version): each test has a version of its own
    j = parse_journey({**JOURNEY, "version": 2, "holdout": "20%",
                       "attribution": {"window": "2d", "model": "linear"},
                       "goal": {"event": "CHECKOUT"}})
    assert (j.holdout, j.attribution) == (0.2, AttributionRule(2 * D, "linear"))
    send = send_campaigns({"attr-journey": j})["attr-journey/email"]
    assert (send.holdout, send.attribution) == (0.2, j.attribution)
    assert send.journey_id == "attr-journey"
    assert send.goal.types == frozenset({"CHECKOUT"})


def test_a_journey_without_the_keys_gets_the_defaults_and_purchase_as_its_goal():
    j = parse_journey(JOURNEY)
    assert (j.holdout, j.attribution, j.attribution_goal) == (0.0, AttributionRule(),
                                                              DEFAULT_GOAL)
    assert send_campaigns({"attr-journey": j})["attr-journey/email"].goal == DEFAULT_GOAL


@pytest.mark.parametrize(("change", "expected"), [
    ({"holdout": "51%"}, ("holdout", "holdout must be from 0% to 50%, got 51%")),
    ({"attribution": {"model": "linaer"}},
     ("attribution.model", "unknown attribution model 'linaer': allowed: last_touch, linear "
      "(last_touch: the latest trigger in the window takes the conversion; linear: equal "
      "shares); did you mean 'linear'?")),
    ({"attribution": {"goal": "PURCHASE"}},
     ("attribution.goal", "a journey's attribution has no goal: its conversions are the "
      "journey's own goal (the top-level goal: {event: ...}, PURCHASE when absent); move it "
      "there")),
])
def test_journey_errors(change, expected):
    assert expected in errors_of({**JOURNEY, **change}, parse_journey)


# the policy


def test_the_policy_without_the_keys_has_no_control_group_and_no_feedback():
    p = parse_policy(policy())
    assert p.control_group is None and p.roi_feedback is None


def test_the_policy_s_control_group_and_roi_feedback():
    p = parse_policy(policy(control_group={"share": "5%", "salt": "2026-h1"},
                            roi_feedback={"min_sends": 500, "smoothing": 0.1, "max_step": "10%",
                                          "update_every": 20}))
    assert p.control_group == ControlGroup(0.05, "2026-h1")
    assert p.roi_feedback == RoiFeedback(500, 0.1, 0.10, 20)
    defaults = parse_policy(policy(control_group={"share": 5}, roi_feedback={}))
    assert defaults.control_group == ControlGroup(0.05)
    assert defaults.roi_feedback == RoiFeedback(200, 0.2, 0.25, 50)


def test_the_policy_keys_survive_a_definition_update():
    p = parse_policy(policy(version=2, control_group={"share": "5%"}, roi_feedback={}))
    registries = Registries.from_updates([policy_to_update(p, 0)])
    assert registries.policies.policy().control_group == ControlGroup(0.05)
    assert registries.policies.policy().roi_feedback == RoiFeedback()


@pytest.mark.parametrize(("change", "expected"), [
    ({"control_group": {"share": "60%"}},
     ("control_group.share", "control_group.share must be from 0% to 50%, got 60%")),
    ({"control_group": {"salt": "x"}},
     ("control_group", "control_group is missing required key 'share' (required: share)")),
    ({"control_group": {"share": "5%", "salt": ""}},
     ("control_group.salt", "salt must be a non-empty string (a new salt draws a new control "
      "group), got the string ''")),
    ({"control_group": "5%"},
     ("control_group", "control_group must be a mapping with keys share, salt; got the string "
      "'5%'")),
    ({"roi_feedback": {"min_sends": 0}},
     ("roi_feedback.min_sends", "min_sends must be a whole number >= 1, got the number 0")),
    ({"roi_feedback": {"smoothing": 1.5}},
     ("roi_feedback.smoothing", "smoothing must be between 0 and 1, got 1.5")),
    ({"roi_feedback": {"smoothing": 0}},
     ("roi_feedback.smoothing", "smoothing must be above 0 (0 would never move the ROI from the "
      "typed value: leave roi_feedback out instead)")),
    ({"roi_feedback": {"max_step": "0%"}},
     ("roi_feedback.max_step", "max_step must be above 0% (0% would never move the ROI from the "
      "typed value: leave roi_feedback out instead)")),
    ({"roi_feedback": {"max_step": "150%"}},
     ("roi_feedback.max_step", "max_step must be from 0% to 100%, got 150%")),
    ({"roi_feedback": None},
     ("roi_feedback", "roi_feedback must be a mapping with keys min_sends, smoothing, max_step, "
      "update_every; got nothing (null)")),
    ({"roi_feedback": {"update_every": 0}},
     ("roi_feedback.update_every", "update_every must be a whole number >= 1, got the number 0")),
    ({"roi_feedbak": {}},
     ("roi_feedbak", None)),
])
def test_policy_errors(change, expected):
    found = errors_of(policy(**change), parse_policy)
    path, message = expected
    if message is None:
        assert any(p == path and "did you mean 'roi_feedback'" in m for p, m in found), found
    else:
        assert (path, message) in found, found
