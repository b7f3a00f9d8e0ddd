"""Journeys as validated DAGs (issue 14): the grammar, every validation error with its path and
line, the shipped journeys, DefinitionUpdates, the registry and `defs validate`."""

import copy
from pathlib import Path

import pytest

from udfs.catalog.files import (
    JOURNEY_CATALOG_DIR,
    SEGMENT_CATALOG_DIR,
    catalog_files,
    load_catalog,
    validate_command,
    validate_files,
)
from udfs.catalog.registries import Registries
from udfs.definitions.diagnostics import InvalidDefinitions
from udfs.definitions.envelope import JOURNEY_KIND, checksum, delete_update
from udfs.definitions.versioning import ChangeOutcome
from udfs.definitions.vocabulary import event_types
from udfs.journeys.compiler import parse_journey
from udfs.journeys.grammar import Condition, Entry, Node, Send, Wait
from udfs.journeys.updates import JourneyRegistry, journey_to_update, update_to_journey

H = 3_600_000

START = {"id": "start", "entry": {"trigger": {"segment_enter": "cart-abandoners"}},
         "next": "email"}
EMAIL = {"id": "email", "send": {"channels": ["EMAIL"], "template": "t"}, "next": "wait"}
WAIT = {"id": "wait", "wait": {"until": {"outcome": {"node": "email", "is": "OPENED"}},
                               "timeout": "4h"},
        "next": "bought", "on_timeout": "sms"}
SMS = {"id": "sms", "send": {"channels": ["SMS"], "template": "t2"}, "next": "bought"}
BOUGHT = {"id": "bought", "condition": {"event": {"type": "PURCHASE"}}, "then": "done",
          "else": "retarget"}
RETARGET = {"id": "retarget", "sync_audience": {"audience": "cart-retargeting"}, "next": "done"}
DONE = {"id": "done", "exit": {"reason": "converted"}}
BASE = {
    "kind": "journey", "id": "j1", "version": 1, "description": "a journey",
    "priority": {"urgency": 0.5, "expected_roi": 20, "brand_significance": 0.1},
    "nodes": [START, EMAIL, WAIT, SMS, BOUGHT, RETARGET, DONE],
}
# node indexes in BASE
I_START, I_EMAIL, I_WAIT, I_SMS, I_BOUGHT, I_RETARGET, I_DONE = range(7)


def edit(index, drop=(), **fields):
    """BASE with node ``index`` changed: ``fields`` set (``else_``: ``else``), ``drop`` gone."""
    doc = copy.deepcopy(BASE)
    node = doc["nodes"][index]
    for key, value in fields.items():
        node[key.rstrip("_")] = value
    for key in drop:
        node.pop(key)
    return doc


def with_nodes(*nodes):
    return {**copy.deepcopy(BASE), "nodes": list(nodes)}


def errors_of(document):
    with pytest.raises(InvalidDefinitions) as info:
        parse_journey(document)
    return [(e.path, e.message) for e in info.value.errors]


def catalog_segments():
    return [s.id for s in load_catalog().segments]


# what compiles


def test_a_journey_compiles_into_nodes_in_written_order():
    j = parse_journey(BASE)
    assert list(j.nodes) == ["start", "email", "wait", "sms", "bought", "retarget", "done"]
    assert j.entry_id == "start" and j.entry.reentry == "never" and j.entry.cooldown_ms == 0
    assert j.enabled and j.defer_on_conflict and not j.bypass_quiet_hours and j.goal is None
    assert j.nodes["email"] == Node("email", "send", next="wait",
                                    send=Send(("EMAIL",), "t"))
    wait = j.nodes["wait"]
    assert wait.wait == Wait(until=Condition(outcome=("email", "OPENED"),
                                             key="nodes[2].wait.until"), timeout_ms=4 * H)
    assert (wait.next, wait.on_timeout) == ("bought", "sms")
    bought = j.nodes["bought"]
    assert (bought.then, bought.otherwise) == ("done", "retarget")
    assert bought.condition is not None and bought.condition.key == "nodes[4].condition"
    assert j.nodes["retarget"].audience == "cart-retargeting"
    assert j.nodes["done"].exit_reason == "converted"
    assert j.referenced_segments() == {"cart-abandoners"}


def test_the_document_level_keys_compile_as_a_campaigns():
    j = parse_journey({**BASE, "enabled": False, "expires_after": "6h",
                       "quiet_hours": "bypass", "on_conflict": "suppress",
                       "valid_from": "2026-11-20T00:00:00Z", "valid_until": "2026-12-01T00:00:00Z",
                       "goal": {"event": {"type": "PURCHASE"}}})
    assert not j.enabled and j.expires_after_ms == 6 * H
    assert j.bypass_quiet_hours and not j.defer_on_conflict
    assert j.valid_from_ms == 1_795_132_800_000 and j.valid_until_ms == 1_796_083_200_000
    assert j.goal is not None and j.goal.types == {"PURCHASE"}
    assert (j.urgency, j.expected_roi, j.brand_significance) == (0.5, 20.0, 0.1)


def test_reentry_split_exit_and_nested_conditions():
    doc = edit(I_START, entry={"trigger": {"churn_score": {"crosses_above": 0.6}},
                               "reentry": {"after": "7d"}}, next="ab")
    doc["nodes"].insert(1, {"id": "ab", "split": [{"percent": 50, "next": "email"},
                                                  {"percent": 50, "next": "sms"}]})
    doc["nodes"][5]["condition"] = {"all": [
        {"segment": "high-value-cart"}, {"churn_score": {"below": 0.3}},
        {"any": [{"metadata": {"plan": "PREMIUM"}}, {"metadata": {"lifetime_value": 500}},
                 {"event": "PURCHASE"}]}]}
    doc["nodes"][7]["exit"] = {}
    j = parse_journey(doc)
    assert j.entry == Entry(j.entry.trigger, "after", 7 * 24 * H)
    assert j.entry.trigger.churn_crosses == 0.6
    assert [(b.percent, b.next) for b in j.nodes["ab"].branches] == [(50, "email"), (50, "sms")]
    condition = j.nodes["bought"].condition
    assert condition is not None
    segment, churn, either = condition.all_of
    assert (segment.segment, segment.key) == ("high-value-cart", "nodes[5].condition.all[0]")
    assert (churn.churn_below, churn.key) == (0.3, "nodes[5].condition.all[1]")
    assert [c.key for c in either.any_of] == [f"nodes[5].condition.all[2].any[{i}]"
                                              for i in range(3)]
    assert either.any_of[0].metadata == ("plan", "PREMIUM")
    assert either.any_of[1].metadata == ("lifetime_value", 500)
    assert [c.key for c in condition.event_conditions()] == ["nodes[5].condition.all[2].any[2]"]
    assert j.nodes["done"].exit_reason == "completed"
    assert j.referenced_segments() == {"high-value-cart"}


# every validation error: path and message


@pytest.mark.parametrize(("document", "expected"), [
    # unknown keys, with a did-you-mean
    ({**BASE, "goals": {}}, ("goals", "unknown key 'goals' in a journey: allowed: kind, id, "
     "version, description, enabled, nodes, goal, priority, expires_after, quiet_hours, "
     "on_conflict, on_backfill, valid_from, valid_until, attribution, holdout; did you mean "
     "'goal'?")),
    (edit(I_EMAIL, nxt="wait", drop=("next",)), ("nodes[1].nxt", "unknown key 'nxt' in a node: "
     "allowed: id, entry, send, sync_audience, wait, condition, split, exit, next, on_timeout, "
     "then, else; did you mean 'next'?")),
    # node kinds
    (edit(I_SMS, drop=("send",)), ("nodes[3]", "node 'sms' needs exactly one of entry, send, "
     "sync_audience, wait, condition, split, exit (what the node does); got none")),
    (edit(I_SMS, wait={"for": "1h"}), ("nodes[3]", "node 'sms' needs exactly one of entry, send, "
     "sync_audience, wait, condition, split, exit (what the node does); got 2: send, wait")),
    # ids
    (edit(I_DONE, id="Done"), ("nodes[6].id", "bad node id 'Done': use kebab-case or snake_case "
     "(lower-case letters, digits, '-' or '_', starting with a letter), e.g. wait-open")),
    (edit(I_RETARGET, id="sms"), ("nodes[5].id", "duplicate node id 'sms': nodes[3] has it too; "
     "node ids must be unique within a journey")),
    # entry
    (with_nodes(EMAIL, WAIT, SMS, BOUGHT, RETARGET, DONE), ("nodes", "journey j1 has no entry "
     "node: add a node with entry: {trigger: ...} (what starts an instance)")),
    (with_nodes(START, {**START, "id": "start2"}, EMAIL, WAIT, SMS, BOUGHT, RETARGET, DONE),
     ("nodes[1]", "journey j1 has 2 entry nodes ('start', 'start2'); a journey has exactly one")),
    (edit(I_START, entry={**START["entry"], "reentry": {"after": "0s"}}),
     ("nodes[0].entry.reentry.after", "bad duration '0s': expected a whole number and one unit "
      "of ms, s, m, h, d, e.g. 500ms, 90s, 30m, 24h, 7d (must be longer than zero)")),
    (edit(I_START, entry={**START["entry"], "reentry": {}}), ("nodes[0].entry.reentry",
     "reentry is missing required key 'after' (required: after)")),
    (edit(I_START, entry={**START["entry"], "reentry": "after"}), ("nodes[0].entry.reentry",
     "reentry must be never, always or {after: <duration>} (when a user may start the journey "
     "again), got the string 'after' (after needs a cool-down: write {after: 7d})")),
    (edit(I_START, entry={**START["entry"], "reentry": "nevr"}), ("nodes[0].entry.reentry",
     "reentry must be never, always or {after: <duration>} (when a user may start the journey "
     "again), got the string 'nevr'; did you mean 'never'?")),
    # edges
    (edit(I_SMS, next="bougth"), ("nodes[3].next", "no node 'bougth' in journey j1; did you "
     "mean 'bought'?")),
    (edit(I_RETARGET, next="start"), ("nodes[5].next", "node 'retarget' goes to the entry node "
     "'start': an instance starts only once; to let a user start again, set reentry on the "
     "entry node")),
    (edit(I_SMS, then="done"), ("nodes[3].then", "send node 'sms' has no then edge: its edges "
     "are next")),
    (edit(I_DONE, next="start"), ("nodes[6].next", "exit node 'done' has next, but an exit ends "
     "the instance: remove next")),
    # missing edges
    (edit(I_SMS, drop=("next",)), ("nodes[3]", "send node 'sms' has no next: say which node "
     "comes after it")),
    (edit(I_START, drop=("next",)), ("nodes[0]", "entry node 'start' has no next: say which "
     "node comes after it")),
    (edit(I_BOUGHT, drop=("else",)), ("nodes[4]", "condition node 'bought' needs then (where to "
     "go when it holds) and else (where to go when it does not); missing: else")),
    (edit(I_WAIT, wait={"until": WAIT["wait"]["until"]}), ("nodes[2].wait", "a wait without a "
     "timeout branch: node 'wait' waits until a condition, so it needs timeout (how long at "
     "most, in the wait) and on_timeout (the node to go to then); missing: timeout")),
    (edit(I_WAIT, drop=("on_timeout",)), ("nodes[2].wait", "a wait without a timeout branch: "
     "node 'wait' waits until a condition, so it needs timeout (how long at most, in the wait) "
     "and on_timeout (the node to go to then); missing: on_timeout")),
    # waits
    (edit(I_WAIT, wait={"for": "1h"}), ("nodes[2].wait", "node 'wait' waits a fixed time (for) "
     "and also has on_timeout: write either for: <duration>, or until: <condition> with timeout "
     "and on_timeout")),
    (edit(I_WAIT, wait={"for": "1h", "timeout": "2h"}, drop=("on_timeout",)),
     ("nodes[2].wait", "node 'wait' waits a fixed time (for) and also has timeout: write either "
      "for: <duration>, or until: <condition> with timeout and on_timeout")),
    (edit(I_WAIT, wait={"timeout": "2h"}), ("nodes[2].wait", "a wait needs for: <duration> (a "
     "fixed time), or until: <condition> with timeout: <duration> and on_timeout on the node")),
    # cycles and reachability
    (edit(I_RETARGET, next="bought"), ("nodes[5].next", "cycle: bought -> retarget -> bought; a "
     "journey must not loop: every path must end at an exit (to run it again, set reentry on "
     "the entry node)")),
    (edit(I_SMS, next="sms"), ("nodes[3].next", "cycle: sms -> sms; a journey must not loop: "
     "every path must end at an exit (to run it again, set reentry on the entry node)")),
    (edit(I_BOUGHT, else_="done"), ("nodes[5]", "node 'retarget' cannot be reached from the "
     "entry node 'start': lead an edge to it or remove it")),
    (edit(I_EMAIL, next="bought"), ("nodes[2]", "nodes 'wait', 'sms' cannot be reached from the "
     "entry node 'start': lead an edge to them or remove them")),
    # splits
    (with_nodes({**START, "next": "ab"}, {"id": "ab", "split": [
        {"percent": 0, "next": "email"}, {"percent": 100, "next": "sms"}]},
        EMAIL, WAIT, SMS, BOUGHT, RETARGET, DONE),
     ("nodes[1].split[0].percent", "percent must be above 0, got 0: remove a branch no user "
      "takes")),
    (with_nodes({**START, "next": "ab"}, {"id": "ab", "split": [
        {"percent": 60, "next": "email"}, {"percent": 30, "next": "sms"}]},
        EMAIL, WAIT, SMS, BOUGHT, RETARGET, DONE),
     ("nodes[1].split", "the branches of node 'ab' add up to 90 percent, not 100: every user "
      "takes exactly one branch")),
    (with_nodes({**START, "next": "ab"}, {"id": "ab", "split": [{"percent": 100,
                                                                  "next": "email"}]},
                EMAIL, WAIT, SMS, BOUGHT, RETARGET, DONE),
     ("nodes[1].split", "node 'ab' splits users, so it needs a list of at least 2 branches like "
      "{percent: 50, next: a}; got 1 branch(es)")),
    # outcomes
    (edit(I_WAIT, wait={**WAIT["wait"], "until": {"outcome": {"node": "bought", "is": "OPENED"}}}),
     ("nodes[2].wait.until.outcome.node", "outcome of node 'bought': it is a condition node; "
      "only send and sync_audience nodes have outcomes")),
    (edit(I_WAIT, wait={**WAIT["wait"], "until": {"outcome": {"node": "sms", "is": "OPENED"}}}),
     ("nodes[2].wait.until.outcome.node", "outcome of node 'sms': 'sms' does not come before "
      "'wait' (no path leads from it to 'wait'), so 'wait' could never see its outcome")),
    (edit(I_BOUGHT, condition={"outcome": {"node": "retarget", "is": "CLICKED"}}),
     ("nodes[4].condition.outcome.node", "outcome of node 'retarget': 'retarget' does not come "
      "before 'bought' (no path leads from it to 'bought'), so 'bought' could never see its "
      "outcome")),
    (edit(I_BOUGHT, condition={"outcome": {"node": "emial", "is": "CLICKED"}}),
     ("nodes[4].condition.outcome.node", "outcome of node 'emial': no node 'emial' in journey "
      "j1; did you mean 'email'?")),
    (edit(I_BOUGHT, condition={"outcome": {"node": "email", "is": "opened"}}),
     ("nodes[4].condition.outcome.is", "unknown outcome 'opened': allowed: DELIVERED, OPENED, "
      "CLICKED, CONVERTED, BOUNCED, UNSUBSCRIBED, COMPLAINED, EXPIRED, FAILED; did you mean "
      "'OPENED'?")),
    # sends
    (with_nodes({**START, "next": "w"}, {"id": "w", "wait": {"for": "1h"}, "next": "done"}, DONE),
     ("nodes", "journey j1 sends nothing: add a send or sync_audience node")),
    (edit(I_EMAIL, send={"channels": ["EMALE"], "template": "t"}), ("nodes[1].send.channels[0]",
     "unknown channel 'EMALE': allowed: EMAIL, SMS, PUSH, IN_APP, PAID_SOCIAL; did you mean "
     "'EMAIL'?")),
    (edit(I_EMAIL, send={"channels": ["EMAIL"], "template": " "}), ("nodes[1].send.template",
     "template must be a non-empty string, got the string ' '")),
    (edit(I_EMAIL, send={"channels": ["EMAIL"], "template": "t",
                         "payload": {"x": "{event.prodcut_id}"}}),
     ("nodes[1].send.payload.x", "unknown event field 'prodcut_id' in '{event.prodcut_id}'; did "
      "you mean 'product_id'?")),
    (edit(I_EMAIL, send={"channels": ["EMAIL"]}), ("nodes[1].send", "a send is missing required "
     "key 'template' (required: channels, template)")),
    (edit(I_RETARGET, sync_audience={"audience": "Cart Retargeting"}),
     ("nodes[5].sync_audience.audience", "bad audience 'Cart Retargeting': the ad platform's "
      "custom audience, in kebab-case or snake_case, e.g. cart-retargeting")),
    # conditions
    (edit(I_BOUGHT, condition={"segment": "a", "event": "PURCHASE"}), ("nodes[4].condition",
     "a condition must be a mapping with exactly one of outcome, event, segment, churn_score, "
     "metadata, all, any, got 2 keys")),
    (edit(I_BOUGHT, condition={"segmnet": "a"}), ("nodes[4].condition.segmnet", "unknown "
     "condition 'segmnet': allowed: outcome, event, segment, churn_score, metadata, all, any; "
     "did you mean 'segment'?")),
    (edit(I_BOUGHT, condition={"any": []}), ("nodes[4].condition.any", "any needs a non-empty "
     "list of conditions, got a list")),
    (edit(I_BOUGHT, condition={"churn_score": {"above": 2}}),
     ("nodes[4].condition.churn_score.above", "churn_score above must be between 0 and 1, got 2")),
    (edit(I_BOUGHT, condition={"churn_score": {"above": 0.2, "below": 0.5}}),
     ("nodes[4].condition.churn_score", "churn_score needs exactly one of above, below, got 2")),
    (edit(I_BOUGHT, condition={"metadata": {"plann": "PREMIUM"}}),
     ("nodes[4].condition.metadata.plann", "unknown key 'plann' in metadata: allowed: country, "
      "time_zone, plan, lifetime_value; did you mean 'plan'?")),
    (edit(I_BOUGHT, condition={"metadata": {"plan": "premium"}}),
     ("nodes[4].condition.metadata.plan", "unknown plan 'premium': allowed: FREE, BASIC, "
      "PREMIUM, ENTERPRISE, UNKNOWN; did you mean 'PREMIUM'?")),
    (edit(I_BOUGHT, condition={"metadata": {"plan": "FREE", "country": "DE"}}),
     ("nodes[4].condition.metadata", "metadata needs exactly one field (one of country, "
      "time_zone, plan, lifetime_value) and its value, got 2")),
    (edit(I_BOUGHT, condition={"event": {"type": "PURCHASED"}}),
     ("nodes[4].condition.event.type", "unknown event type 'PURCHASED': allowed: PAGE_VIEW, "
      "PRODUCT_VIEW, SEARCH, ADD_TO_CART, REMOVE_FROM_CART, CHECKOUT, PURCHASE, APP_OPEN, "
      "STORE_VISIT, UNKNOWN; did you mean 'PURCHASE'?")),
    # the document
    ({**BASE, "priority": {**BASE["priority"], "audience": "cart-abandoners"}},
     ("priority.audience", "unknown key 'audience' in priority: allowed: urgency, expected_roi, "
      "brand_significance")),
    ({**BASE, "goal": {"event": {"type": "BUY"}}}, ("goal.event.type", "unknown event type "
     "'BUY': allowed: PAGE_VIEW, PRODUCT_VIEW, SEARCH, ADD_TO_CART, REMOVE_FROM_CART, CHECKOUT, "
     "PURCHASE, APP_OPEN, STORE_VISIT, UNKNOWN")),
    ({**BASE, "nodes": []}, ("nodes", "nodes must be a non-empty list of nodes (each an id, one "
     "of entry, send, sync_audience, wait, condition, split, exit, and its edges), got a list")),
])
def test_each_error_names_its_path_and_says_what_to_do(document, expected):
    assert expected in errors_of(document)


def test_every_error_is_reported_not_only_the_first():
    doc = edit(I_SMS, next="bougth")
    doc["nodes"][I_RETARGET]["next"] = "bought"  # a cycle
    doc["nodes"][I_EMAIL]["send"]["channels"] = ["FAX"]
    doc["expires_after"] = 30
    paths = [path for path, _ in errors_of(doc)]
    assert sorted(paths) == sorted(["expires_after", "nodes[1].send.channels[0]",
                                    "nodes[3].next", "nodes[5].next"])


def test_a_dangling_edge_in_a_file_has_its_line(tmp_path: Path):
    text = (JOURNEY_CATALOG_DIR / "cart-abandonment-chain.yaml").read_text()
    path = tmp_path / "chain.yaml"
    path.write_text(text.replace("    next: wait-day\n  - id: wait-day",
                                 "    next: wait-dya\n  - id: wait-day"))
    _, errors = validate_files([path], ["cart-abandoners"])
    assert [(e.path, e.message, e.line) for e in errors] == [(
        "nodes[3].next", "no node 'wait-dya' in journey cart-abandonment-chain; did you mean "
        "'wait-day'?", 31)]
    assert path.read_text().splitlines()[30] == "    next: wait-dya"


# the shipped journeys


def test_the_shipped_journeys_compile_and_name_only_catalog_segments():
    found, errors = validate_files([JOURNEY_CATALOG_DIR], catalog_segments())
    assert errors == []
    journeys = {j.id: j for j in found.journeys}
    assert set(journeys) == {"welcome-drip", "re-engagement-30d", "cart-abandonment-chain"}
    for journey in journeys.values():
        assert journey.referenced_segments() <= set(catalog_segments())
        assert journey.source.endswith(f"{journey.id}.yaml")


def test_the_cart_abandonment_chain_is_the_worked_example():
    [chain] = [j for j in validate_files([JOURNEY_CATALOG_DIR])[0].journeys
               if j.id == "cart-abandonment-chain"]
    assert list(chain.nodes) == ["start", "email", "wait-open", "sms", "wait-day", "converted",
                                 "retarget", "done", "retargeted"]
    assert chain.entry.trigger.segment_enter == "cart-abandoners"
    assert (chain.entry.reentry, chain.entry.cooldown_ms) == ("after", 24 * H)
    assert chain.goal is not None and chain.goal.types == {"PURCHASE"}
    email = chain.nodes["email"].send
    assert email == Send(("EMAIL",), "cart-chain-email-v1",
                         (("cart_value", "{feature.cart_value}"),), 6 * H)
    wait_open = chain.nodes["wait-open"]
    assert wait_open.wait == Wait(until=Condition(outcome=("email", "OPENED"),
                                                  key="nodes[2].wait.until"), timeout_ms=4 * H)
    assert (wait_open.next, wait_open.on_timeout) == ("wait-day", "sms")
    assert chain.nodes["sms"].send == Send(("SMS",), "cart-chain-sms-v1")
    assert chain.nodes["wait-day"].wait == Wait(duration_ms=24 * H)
    converted = chain.nodes["converted"]
    assert (converted.then, converted.otherwise) == ("done", "retarget")
    assert chain.nodes["retarget"].audience == "cart-retargeting"
    assert chain.nodes["done"].exit_reason == "converted"


def test_the_welcome_drip_offers_by_whether_the_tip_was_clicked():
    [drip] = [j for j in validate_files([JOURNEY_CATALOG_DIR])[0].journeys
              if j.id == "welcome-drip"]
    assert drip.entry.trigger.segment_enter == "new-signups-7d"
    assert drip.entry.reentry == "never"
    assert [n.send.template for n in drip.nodes.values() if n.send is not None] == [
        "welcome-drip-1", "welcome-drip-tip", "welcome-offer-a", "welcome-offer-b"]
    # the tip 24h after the welcome, the offer 48h after it
    assert [n.wait.duration_ms for n in drip.nodes.values() if n.wait is not None] == [
        24 * H, 24 * H]
    [test] = [n for n in drip.nodes.values() if n.kind == "condition"]
    assert test.condition is not None and test.condition.outcome == ("tip", "CLICKED")
    assert (drip.nodes[test.then].send.template, drip.nodes[test.otherwise].send.template) == (
        "welcome-offer-a", "welcome-offer-b")
    assert drip.goal is not None and drip.goal.types == {"PURCHASE"}


def test_re_engagement_checks_for_any_activity_twice_then_retargets():
    [again] = [j for j in validate_files([JOURNEY_CATALOG_DIR])[0].journeys
               if j.id == "re-engagement-30d"]
    assert again.entry.trigger.segment_enter == "inactive-30d"
    assert (again.entry.reentry, again.entry.cooldown_ms) == ("after", 30 * 24 * H)
    checks = [n for n in again.nodes.values() if n.kind == "condition"]
    assert len(checks) == 2
    for check in checks:
        assert check.condition is not None and check.condition.event is not None
        assert check.condition.event.types == set(event_types())  # any click at all
        assert again.nodes[check.then].exit_reason == "reactivated"
    assert [n.send.channels for n in again.nodes.values() if n.send is not None] == [
        ("EMAIL",), ("IN_APP",)]
    assert [n.audience for n in again.nodes.values() if n.audience] == [
        "lapsed-users-retargeting"]


def test_the_default_catalog_leaves_the_shipped_journeys_out():
    assert load_catalog().journeys == []
    assert JOURNEY_CATALOG_DIR not in catalog_files()


def test_defs_validate_on_the_catalog_directory_checks_the_journeys():
    code, text = validate_command([JOURNEY_CATALOG_DIR.parent])
    assert code == 0, text
    assert "3 journey(s)" in text
    assert "cart-abandonment-chain v1, re-engagement-30d v1, welcome-drip v1" in text


# DefinitionUpdates and the registry


def test_a_journey_round_trips_through_a_definition_update():
    found, _ = validate_files([JOURNEY_CATALOG_DIR])
    for journey in [*found.journeys, parse_journey(BASE)]:
        update = journey_to_update(journey, 5, "test")
        assert (update["kind"], update["definition_id"], update["version"]) == (
            JOURNEY_KIND, journey.id, journey.version)
        back = update_to_journey(update)
        assert back == journey
        assert back.document == journey.document


def test_an_update_whose_body_disagrees_with_its_envelope_is_refused():
    update = journey_to_update(parse_journey(BASE), 0)
    with pytest.raises(InvalidDefinitions) as info:
        update_to_journey({**update, "version": 2})
    assert [(e.path, e.message) for e in info.value.errors] == [
        ("version", "version 1 differs from the update's version 2")]


def test_journey_versions_follow_the_rules_of_every_kind():
    registry = JourneyRegistry()
    v1 = journey_to_update(parse_journey(BASE), 0)
    v2 = journey_to_update(parse_journey({**BASE, "version": 2, "description": "v2"}), 0)
    assert registry.apply(v2).outcome is ChangeOutcome.ADDED
    older = registry.apply(v1)
    assert older.outcome is ChangeOutcome.STALE and "older than the held v2" in older.message
    assert registry.apply(v2).outcome is ChangeOutcome.STALE  # a duplicate delivery
    assert registry.get("j1").description == "v2"
    bad = {**v2, "version": 3, "body": v2["body"].replace('"sms"', '"sms2"', 1)}
    bad["checksum"] = checksum(bad["body"])
    rejected = registry.apply(bad)
    assert rejected.outcome is ChangeOutcome.REJECTED
    assert "no node 'sms2' in journey j1" in rejected.message
    assert registry.apply(delete_update("j1", 4, 0, kind=JOURNEY_KIND)).outcome \
        is ChangeOutcome.DELETED
    assert registry.get("j1") is None and registry.deleted_version("j1") == 4
    campaign_kind = {**v1, "kind": "CAMPAIGN"}
    assert registry.apply(campaign_kind).outcome is ChangeOutcome.IGNORED


def test_registries_route_journeys_and_expose_them():
    registries = Registries()
    before = registries.fingerprint()
    update = journey_to_update(parse_journey(BASE), 0)
    assert registries.apply(update).outcome is ChangeOutcome.ADDED
    assert list(registries.journey_map()) == ["j1"]
    assert update in registries.updates()
    assert len(registries.campaigns) == 0 and len(registries.segments) == 0
    assert registries.fingerprint() != before
    assert not registries.uses_churn() and not registries.reads_churn()
    rebuilt = Registries.from_updates(registries.updates())
    assert rebuilt.journey_map() == registries.journey_map()


def test_a_journey_starting_on_a_churn_crossing_uses_churn():
    doc = edit(I_START, entry={"trigger": {"churn_score": {"crosses_above": 0.7}}})
    registries = Registries.from_updates([journey_to_update(parse_journey(doc), 0)])
    assert registries.uses_churn() and registries.reads_churn()


def test_a_journey_testing_the_churn_score_reads_churn():
    doc = edit(I_BOUGHT, condition={"any": [{"event": "PURCHASE"},
                                            {"churn_score": {"below": 0.2}}]})
    registries = Registries.from_updates([journey_to_update(parse_journey(doc), 0)])
    assert registries.reads_churn() and not registries.uses_churn()


# files of every kind


CHAIN = (JOURNEY_CATALOG_DIR / "cart-abandonment-chain.yaml").read_text()


def test_defs_validate_a_directory_with_a_journey(tmp_path: Path):
    (tmp_path / "segments").mkdir()
    (tmp_path / "segments" / "cart-abandoners.yaml").write_text(
        (SEGMENT_CATALOG_DIR / "cart-abandoners.yaml").read_text())
    (tmp_path / "journeys").mkdir()
    (tmp_path / "journeys" / "chain.yaml").write_text(CHAIN)
    code, text = validate_command([tmp_path])
    assert code == 0, text
    assert text == ("ok: 1 segment(s), 1 journey(s) in 2 file(s): cart-abandoners v1, "
                    "cart-abandonment-chain v1")


def test_a_journey_naming_an_unknown_segment_is_an_error(tmp_path: Path):
    path = tmp_path / "chain.yaml"
    path.write_text(CHAIN.replace("segment_enter: cart-abandoners",
                                  "segment_enter: cart-abandonerz"))
    _, errors = validate_files([path], ["cart-abandoners"])
    assert [(e.path, e.message) for e in errors] == [(
        "", "journey cart-abandonment-chain names segment 'cart-abandonerz', which is not "
        "defined; did you mean 'cart-abandoners'?")]
    code, text = validate_command([path])  # the shipped segments are known
    assert code == 1 and "cart-abandonerz" in text


def test_a_journey_id_used_by_a_campaign_is_an_error(tmp_path: Path):
    (tmp_path / "a.yaml").write_text(
        "kind: campaign\nid: cart-abandonment-chain\nversion: 1\ndescription: d\n"
        "trigger: {segment_enter: cart-abandoners}\nchannels: [EMAIL]\ntemplate: t\n"
        "priority: {urgency: 0.5, expected_roi: 10, brand_significance: 0.5}\n")
    (tmp_path / "b.yaml").write_text(CHAIN)
    _, errors = validate_files([tmp_path], ["cart-abandoners"])
    assert [(Path(e.file).name, e.path, e.message) for e in errors] == [(
        "b.yaml", "id", "id 'cart-abandonment-chain' is a journey here and a campaign in "
        f"{tmp_path / 'a.yaml'}: every kind shares the control topic's keys (compacted: one "
        "definition per id), so one would replace the other; rename one")]


def test_an_unknown_kind_is_named_not_read_as_a_segment(tmp_path: Path):
    path = tmp_path / "typo.yaml"
    path.write_text(CHAIN.replace("kind: journey", "kind: jorney"))
    _, errors = validate_files([path], ["cart-abandoners"])
    assert [(e.path, e.message, e.line) for e in errors] == [(
        "kind", "unknown kind 'jorney': allowed: campaign, journey, priority, currency_rates, or "
        "no kind for a segment; did you mean 'journey'?", 5)]
