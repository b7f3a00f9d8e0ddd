"""Campaign and priority-policy definitions: grammar, errors, versions, files of every kind."""

import pytest

from udfs.campaigns.compiler import parse_campaign, parse_policy
from udfs.campaigns.updates import campaign_to_update, policy_to_update
from udfs.catalog.files import load_catalog, validate_command, validate_files
from udfs.catalog.registries import Registries
from udfs.definitions.diagnostics import InvalidDefinitions
from udfs.definitions.envelope import CAMPAIGN_KIND, checksum, delete_update
from udfs.definitions.versioning import ChangeOutcome
from udfs.segments.compiler import parse_segment
from udfs.segments.updates import segment_to_update

BASE = {
    "kind": "campaign", "id": "c1", "version": 1, "description": "a campaign",
    "trigger": {"segment_enter": "cart-abandoners"}, "channels": ["EMAIL", "PUSH"],
    "template": "tpl", "priority": {"urgency": 0.5, "expected_roi": 20, "brand_significance": 0.1},
}


def errors_of(document, parse=parse_campaign):
    with pytest.raises(InvalidDefinitions) as info:
        parse(document)
    return [(e.path, e.message) for e in info.value.errors]


def test_the_shipped_catalog_validates_and_names_only_known_segments():
    catalog = load_catalog()
    assert {c.id for c in catalog.campaigns} == {
        "cart-abandonment-email", "cart-reminder-push", "flash-sale-push",
        "churn-retention-offer", "welcome-series-1", "high-value-cart-sms"}
    assert [p.id for p in catalog.policies] == ["priority-policy"]
    segment_ids = {s.id for s in catalog.segments}
    for c in catalog.campaigns:
        assert c.referenced_segments() <= segment_ids


def test_a_campaign_compiles_with_defaults():
    c = parse_campaign(BASE)
    assert c.trigger.segment_enter == "cart-abandoners"
    assert c.audience_segment == "cart-abandoners"  # defaults to the trigger's segment
    assert c.defer_on_conflict and not c.bypass_quiet_hours and c.enabled
    assert c.channels == ("EMAIL", "PUSH")


@pytest.mark.parametrize(("change", "path", "fragment"), [
    ({"channels": ["EMALE"]}, "channels[0]", "did you mean 'EMAIL'"),
    ({"channels": []}, "channels", "non-empty list"),
    ({"trigger": {}}, "trigger", "exactly one"),
    ({"trigger": {"event": {"type": "ADD_TO_KART"}}}, "trigger.event.type", "unknown event type"),
    ({"trigger": {"churn_score": {"crosses_above": 1.5}}}, "trigger.churn_score.crosses_above",
     "between 0 and 1"),
    ({"priority": {"urgency": 2, "expected_roi": 1, "brand_significance": 0}},
     "priority.urgency", "between 0 and 1"),
    ({"valid_from": "2026-11-27"}, "valid_from", "UTC offset"),
    ({"valid_from": "2026-11-28T00:00:00Z", "valid_until": "2026-11-27T00:00:00Z"},
     "valid_until", "after valid_from"),
    ({"expires_after": 30}, "expires_after", "no unit"),
    ({"payload": {"x": "{event.prodcut_id}"}}, "payload.x", "product_id"),
    ({"payload": {"x": "{user.name}"}}, "payload.x", "placeholder source"),
    ({"quiet_hours": "ignore"}, "quiet_hours", "bypass"),
    ({"on_conflict": "drop"}, "on_conflict", "defer"),
    ({"frequency": {"cap": {"per_day": 3, "per_week": 2}}}, "frequency.cap", "less than"),
    ({"colour": "red"}, "colour", "unknown key"),
])
def test_errors_name_the_path_and_say_what_to_do(change, path, fragment):
    found = errors_of({**BASE, **change})
    assert any(p == path and fragment in m for p, m in found), found


def test_policy_errors():
    policy = load_catalog().policies[0].document
    found = errors_of({**policy, "tiers": {"P0": 0.5, "P1": 0.6, "P2": 0.4}}, parse_policy)
    assert any("descend" in m for _, m in found)
    found = errors_of({**policy, "quiet_hours": {"start": "9pm", "end": "08:00"}},
                      parse_policy)
    assert ("quiet_hours.start", "bad time of day '9pm': expected HH:MM, e.g. \"21:00\"") in found
    found = errors_of({**policy, "id": "weights"}, parse_policy)
    assert any(p == "id" and "priority-policy" in m for p, m in found)
    found = errors_of({**policy, "default_time_zone": "Mars/Olympus"}, parse_policy)
    assert any("time zone" in m for _, m in found)


def test_campaign_versions_follow_the_segment_rules_and_dispatch_by_kind():
    registries = Registries()
    v1 = campaign_to_update(parse_campaign(BASE), 0)
    v2 = campaign_to_update(parse_campaign({**BASE, "version": 2, "template": "t2"}), 0)
    assert registries.apply(v2).outcome is ChangeOutcome.ADDED
    assert registries.apply(v1).outcome is ChangeOutcome.STALE
    assert registries.campaign_map()["c1"].template == "t2"
    assert len(registries.segments) == 0
    gone = delete_update("c1", 3, 0, kind=CAMPAIGN_KIND)
    assert registries.apply(gone).outcome is ChangeOutcome.DELETED
    assert "c1" not in registries.campaign_map()
    bad = {**v2, "version": 4, "body": v2["body"].replace("EMAIL", "FAX")}
    bad["checksum"] = checksum(bad["body"])
    change = registries.apply(bad)
    assert change.outcome is ChangeOutcome.REJECTED
    assert "FAX" in change.errors[0].message
    journey = {**v2, "kind": "JOURNEY", "definition_id": "j1"}  # a campaign's body
    assert registries.apply(journey).outcome is ChangeOutcome.REJECTED
    assert "j1" not in registries.journey_map()
    unknown = {**v2, "kind": "WORKFLOW", "definition_id": "w1"}
    assert registries.apply(unknown).outcome is ChangeOutcome.IGNORED


def test_the_policy_is_replaced_at_runtime_by_a_newer_version():
    policy = load_catalog().policies[0]
    registries = Registries.from_updates([policy_to_update(policy, 0)])
    newer = parse_policy({**policy.document, "version": policy.version + 1,
                               "min_interval": "2h"})
    registries.apply(policy_to_update(newer, 1))
    assert registries.policies.policy().min_interval_ms == 2 * 3_600_000


def test_files_of_every_kind_validate_together(tmp_path):
    (tmp_path / "seg.yaml").write_text(
        "id: vip\nversion: 1\ndescription: v\ncondition: {feature: {name: cart_value, op: '>',"
        " value: 500}}\n")
    (tmp_path / "c.yaml").write_text(
        "kind: campaign\nid: vip-email\nversion: 1\ndescription: d\n"
        "trigger: {segment_enter: vip}\nchannels: [EMAIL]\ntemplate: t\n"
        "priority: {urgency: 0.5, expected_roi: 10, brand_significance: 0.5}\n")
    (tmp_path / "orphan.yaml").write_text(
        "kind: campaign\nid: orphan\nversion: 1\ndescription: d\n"
        "trigger: {segment_enter: cart-abandonerz}\nchannels: [EMAIL]\ntemplate: t\n"
        "priority: {urgency: 0.5, expected_roi: 10, brand_significance: 0.5}\n")
    code, text = validate_command([tmp_path])
    assert code == 1
    assert "orphan.yaml" in text and "cart-abandonerz" in text and "cart-abandoners" in text
    (tmp_path / "orphan.yaml").unlink()
    code, text = validate_command([tmp_path])
    assert code == 0 and "1 segment(s), 1 campaign(s)" in text


def test_an_id_used_by_two_kinds_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text(
        "id: dup\nversion: 1\ndescription: v\ncondition: {inactive: {for: 7d}}\n")
    (tmp_path / "b.yaml").write_text(
        "kind: campaign\nid: dup\nversion: 1\ndescription: d\n"
        "trigger: {segment_enter: dup}\nchannels: [EMAIL]\ntemplate: t\n"
        "priority: {urgency: 0.5, expected_roi: 10, brand_significance: 0.5}\n")
    _, errors = validate_files([tmp_path])
    assert any("id 'dup' is a campaign here and a segment in" in e.message for e in errors)


def test_errors_carry_line_numbers(tmp_path):
    (tmp_path / "c.yaml").write_text(
        "kind: campaign\nid: c\nversion: 1\ndescription: d\ntrigger: {segment_enter: x}\n"
        "channels: [EMAIL]\ntemplate: t\n"
        "priority: {urgency: 5, expected_roi: 10, brand_significance: 0.5}\n")
    _, errors = validate_files([tmp_path], known_segments=["x"])
    [error] = errors
    assert error.line == 8 and "urgency" in str(error)


def test_what_the_engine_reads_per_step_follows_every_definition_change():
    catalog = load_catalog()
    registries = Registries.from_updates(catalog.updates())
    assert registries.uses_churn()
    assert registries.segment_versions()["cart-abandoners"] == 1
    churn = next(c for c in catalog.campaigns if c.trigger.churn_crosses is not None)
    registries.apply(delete_update(churn.id, churn.version + 1, 0, kind=CAMPAIGN_KIND))
    assert not registries.uses_churn()
    cart = next(s for s in catalog.segments if s.id == "cart-abandoners")
    registries.apply(segment_to_update(
        parse_segment({**cart.document, "version": 2}), 0))
    assert registries.segment_versions()["cart-abandoners"] == 2
