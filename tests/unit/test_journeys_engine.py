"""Journeys run per user in the engine step (pure): the cart chain, played through the stand-in
for the Flink adapter (tests/differential/sim.py: watermarks, one timer per user, Avro bytes),
sends exactly the documented sequence; outcomes and goals steer it; arrival order within the
bound, duplicates, redelivered outcomes, versions, deletion and re-entry are covered."""

from __future__ import annotations

import copy
import dataclasses
import random
from pathlib import Path

import pytest

from tests.builders import CART, click, metadata
from tests.differential.sim import Simulator
from udfs.campaigns import arbitration
from udfs.catalog.files import POLICY_FILE, RATES_FILE, SEGMENT_CATALOG_DIR, load_files
from udfs.catalog.registries import Registries
from udfs.engine import Rules
from udfs.journeys import runner
from udfs.journeys.state import Instance, JourneyState

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T = 1_795_521_600_000  # 2026-11-24T12:00:00Z, a Tuesday: far from quiet hours in UTC
BOUND = 5_000
CATALOG = Path(__file__).resolve().parents[2] / "udfs" / "catalog" / "journeys"

CHAIN = "cart-abandonment-chain"


def rules_for(*journey_files: Path, campaigns: bool = False) -> Rules:
    files = [SEGMENT_CATALOG_DIR, POLICY_FILE, RATES_FILE, *journey_files]
    if campaigns:
        from udfs.catalog.files import CAMPAIGN_CATALOG_DIR

        files.append(CAMPAIGN_CATALOG_DIR)
    updates = load_files(files, check_references=False).updates(0, "file")
    return Rules(Registries.from_updates(updates), 90 * DAY)


@pytest.fixture(scope="module")
def chain_rules() -> Rules:
    return rules_for(CATALOG / f"{CHAIN}.yaml")


def consenting(user: str, **opt_ins: bool) -> dict:
    consent = {"email": True, "sms": True, "push": True, "in_app": True, "paid_social": True}
    consent.update(opt_ins)
    return metadata(user, at=T - HOUR, **consent)


def outcome(trigger: dict, kind: str, at: int, outcome_id: str | None = None) -> dict:
    return {"outcome_id": outcome_id or f"{trigger['trigger_id']}-{kind}",
            "trigger_id": trigger["trigger_id"], "user_id": trigger["user_id"],
            "campaign_id": trigger["campaign_id"], "channel": trigger["channel"],
            "outcome": kind, "event_time": at, "revenue": None, "currency": None}


def sends(sim: Simulator, user: str = "ann") -> list[tuple[str, str, int]]:
    return [(t["node_id"], t["channel"], t["cause_event_time"]) for t in sim.triggers
            if t["user_id"] == user]


def abandon(sim: Simulator, user: str = "ann", at: int = T, **opt_ins: bool) -> None:
    sim.metadata(consenting(user, **opt_ins))
    sim.click(click(f"{user}-add", user, "ADD_TO_CART", at, **CART))


def heartbeat(sim: Simulator, until: int, step: int = HOUR, user: str = "zed") -> None:
    """Another user's page views: they move the watermark (event time) on to ``until``."""
    t = sim.newest if sim.newest > 0 else T
    while t < until:
        t = min(t + step, until)
        sim.click(click(f"hb-{t}", user, "PAGE_VIEW", t))


# --- the documented path ---------------------------------------------------------------------


def test_nobody_opens_email_then_sms_then_the_retargeting_sync(chain_rules):
    sim = Simulator(chain_rules, BOUND)
    abandon(sim)
    sim.finish()
    entered = T + 30 * MINUTE  # cart-abandoners: no purchase within 30 minutes
    assert sends(sim) == [
        ("email", "EMAIL", entered),
        ("sms", "SMS", entered + 4 * HOUR),  # not opened within the 4h timeout
        ("retarget", "PAID_SOCIAL", entered + 4 * HOUR + 24 * HOUR),  # not converted in 24h
    ]
    email, sms, sync = sim.triggers
    assert {t["journey_id"] for t in sim.triggers} == {CHAIN}
    assert email["campaign_id"] == f"{CHAIN}/email" and email["step_id"] == "email"
    assert {t["journey_instance"] for t in sim.triggers} == {1}
    assert sync["template_id"] == "audience-sync"
    assert sync["payload"]["audience"] == "cart-retargeting"
    assert "not" in sms["explanation"]["reason"] and "opened" in sms["explanation"]["reason"]
    assert len({t["trigger_id"] for t in sim.triggers}) == 3


def test_an_opened_email_skips_the_sms(chain_rules):
    sim = Simulator(chain_rules, BOUND)
    abandon(sim)
    heartbeat(sim, T + 45 * MINUTE + BOUND + 1)  # the email is out
    email = sim.triggers[0]
    opened_at = T + 2 * HOUR
    sim.outcome(outcome(email, "DELIVERED", T + 31 * MINUTE))
    sim.outcome(outcome(email, "OPENED", opened_at))
    sim.finish()
    assert sends(sim) == [("email", "EMAIL", T + 30 * MINUTE),
                          ("retarget", "PAID_SOCIAL", opened_at + 24 * HOUR)]


def test_a_purchase_mid_journey_ends_it_as_converted(chain_rules):
    sim = Simulator(chain_rules, BOUND)
    abandon(sim)
    sim.click(click("ann-buy", "ann", "PURCHASE", T + 3 * HOUR, order_id="o1", price=150.0,
                    quantity=1))
    sim.finish()
    assert sends(sim) == [("email", "EMAIL", T + 30 * MINUTE)]


def test_a_user_without_sms_consent_gets_the_email_and_the_sync(chain_rules):
    """The SMS node's send is suppressed (NO_CONSENT) and the journey goes on."""
    sim = Simulator(chain_rules, BOUND)
    abandon(sim, sms=False)
    sim.finish()
    assert [s[0] for s in sends(sim)] == ["email", "retarget"]
    assert [(d["campaign_id"], d["reason_code"]) for d in sim.decisions] == [
        (f"{CHAIN}/sms", "NO_CONSENT")]


# --- order, duplicates, redelivery ---------------------------------------------------------


def scripted(sim: Simulator, users: list[str], shuffle_seed: int | None, duplicate: bool,
             opened: set[str]) -> None:
    """Each user abandons a cart at a staggered time; some buy later; outcomes arrive for the
    opened ones. With ``shuffle_seed`` the clicks arrive shuffled within the bound."""
    for user in users:
        sim.metadata(consenting(user))
    clicks = []
    for i, user in enumerate(users):
        at = T + i * 7 * MINUTE
        clicks.append(click(f"{user}-add", user, "ADD_TO_CART", at, **CART))
        if i % 3 == 0:
            clicks.append(click(f"{user}-buy", user, "PURCHASE", at + 5 * HOUR + i * MINUTE,
                                order_id=f"o-{user}", price=150.0, quantity=1))
        for k in range(1, 40):  # browsing keeps event time moving
            clicks.append(click(f"{user}-v{k}", user, "PAGE_VIEW", at + k * 45 * MINUTE + i))
    clicks.sort(key=lambda c: c["event_time"])
    if shuffle_seed is not None:
        rng = random.Random(shuffle_seed)
        keyed = [(c["event_time"] + rng.uniform(0, BOUND - 1), n, c) for n, c in enumerate(clicks)]
        clicks = [c for _, _, c in sorted(keyed)]
    if duplicate:
        clicks = [c for c in clicks for _ in (0, 1) if _ == 0 or c["event_id"].endswith("7")]
    emails: dict[str, dict] = {}
    for c in clicks:
        sim.click(c)
        for t in sim.triggers:
            if t["node_id"] == "email" and t["user_id"] not in emails:
                emails[t["user_id"]] = t
                if t["user_id"] in opened:
                    sim.outcome(outcome(t, "OPENED", t["cause_event_time"] + HOUR))
                    if duplicate:  # redelivered by the sender
                        sim.outcome(outcome(t, "OPENED", t["cause_event_time"] + HOUR))
    sim.finish()


def summary(sim: Simulator) -> list[tuple]:
    return sorted((t["user_id"], t["node_id"], t["channel"], t["cause_event_time"],
                   t["trigger_id"]) for t in sim.triggers)


def test_arrival_order_and_duplicates_do_not_change_the_sends(chain_rules):
    users = [f"u{i:02d}" for i in range(12)]
    opened = {"u01", "u04", "u05"}
    ordered = Simulator(chain_rules, BOUND)
    scripted(ordered, users, None, False, opened)
    expected = summary(ordered)
    nodes = {(u, n) for u, n, *_ in expected}
    # the run exercises every branch: SMS after no open, none after an open, goal exits
    assert ("u02", "sms") in nodes and ("u01", "sms") not in nodes
    assert ("u00", "retarget") not in nodes and ("u02", "retarget") in nodes
    for seed in (1, 2, 3):
        shuffled = Simulator(chain_rules, BOUND)
        scripted(shuffled, users, seed, True, opened)
        assert summary(shuffled) == expected


# --- definitions changing under running instances ---------------------------------------------


def chain_document() -> dict:
    import yaml

    return yaml.safe_load((CATALOG / f"{CHAIN}.yaml").read_text())


def publish(sim: Simulator, document: dict, version: int) -> None:
    from udfs.journeys.compiler import parse_journey
    from udfs.journeys.updates import journey_to_update

    doc = copy.deepcopy(document)
    doc["version"] = version
    change = sim.rules.registries.apply(journey_to_update(parse_journey(doc, "test.yaml"), 0))
    assert change.changed


def delete(sim: Simulator, version: int) -> None:
    from udfs.definitions.envelope import delete_update

    change = sim.rules.registries.apply(delete_update(CHAIN, version, 0, kind="JOURNEY"))
    assert change.changed


def test_a_deleted_journey_sends_nothing_more():
    sim = Simulator(rules_for(CATALOG / f"{CHAIN}.yaml"), BOUND)
    abandon(sim)
    heartbeat(sim, T + HOUR)
    delete(sim, 2)
    sim.finish()
    assert [s[0] for s in sends(sim)] == ["email"]


def test_a_new_version_moves_waiting_instances_at_their_node():
    """v2 keeps the wait-open node and drops the SMS: the waiting instance times out into v2's
    on_timeout branch (straight to the day's wait)."""
    sim = Simulator(rules_for(CATALOG / f"{CHAIN}.yaml"), BOUND)
    abandon(sim)
    heartbeat(sim, T + HOUR)
    doc = chain_document()
    doc["nodes"] = [n for n in doc["nodes"] if n["id"] != "sms"]
    for node in doc["nodes"]:
        if node.get("on_timeout") == "sms":
            node["on_timeout"] = node["next"]
    publish(sim, doc, 2)
    sim.finish()
    assert [s[0] for s in sends(sim)] == ["email", "retarget"]
    assert sim.triggers[-1]["campaign_version"] == 2


def test_an_instance_whose_node_is_gone_ends():
    sim = Simulator(rules_for(CATALOG / f"{CHAIN}.yaml"), BOUND)
    abandon(sim)
    heartbeat(sim, T + HOUR)  # waiting at wait-open
    doc = chain_document()
    for node in doc["nodes"]:
        if node["id"] == "wait-open":
            node["id"] = "wait-for-open"
        for edge in ("next", "on_timeout", "then", "else"):
            if node.get(edge) == "wait-open":
                node[edge] = "wait-for-open"
    publish(sim, doc, 2)
    sim.finish()
    assert [s[0] for s in sends(sim)] == ["email"]


def test_reentry_after_the_cooldown_starts_instance_two(chain_rules):
    sim = Simulator(chain_rules, BOUND)
    abandon(sim)
    sim.click(click("ann-buy", "ann", "PURCHASE", T + HOUR, order_id="o1", price=150.0,
                    quantity=1))
    # a second abandonment within the 1-day cool-down: no new instance
    sim.click(click("ann-add2", "ann", "ADD_TO_CART", T + 3 * HOUR, **CART))
    sim.click(click("ann-buy2", "ann", "PURCHASE", T + 4 * HOUR, order_id="o2", price=150.0,
                    quantity=1))
    # a third after it: instance 2
    sim.click(click("ann-add3", "ann", "ADD_TO_CART", T + 2 * DAY, **CART))
    sim.click(click("ann-buy3", "ann", "PURCHASE", T + 2 * DAY + 2 * HOUR, order_id="o3",
                    price=150.0, quantity=1))
    sim.finish()
    assert [(t["node_id"], t["journey_instance"], t["cause_event_time"])
            for t in sim.triggers] == [("email", 1, T + 30 * MINUTE),
                                        ("email", 2, T + 2 * DAY + 30 * MINUTE)]
    assert sim.triggers[0]["trigger_id"] != sim.triggers[1]["trigger_id"]


# --- the state and the arbitration they share ---------------------------------------------------


def test_journeys_and_campaigns_share_one_decision():
    """cart-abandonment-email (a campaign) and the chain's email fire on the same ENTER: one
    wins, the other is deferred past the minimum interval, as between two campaigns."""
    sim = Simulator(rules_for(CATALOG / f"{CHAIN}.yaml", campaigns=True), BOUND)
    abandon(sim)
    sim.finish()
    entered = T + 30 * MINUTE
    rivals = {t["campaign_id"]: t for t in sim.triggers if t["cause_event_time"] == entered
              and t["channel"] == "EMAIL"}
    assert set(rivals) == {"cart-abandonment-email", f"{CHAIN}/email"}
    winner = next(t for t in rivals.values() if t["explanation"]["rivals"])
    loser = next(t for t in rivals.values() if not t["explanation"]["rivals"])
    assert winner["explanation"]["rivals"][0]["campaign_id"] == loser["campaign_id"]
    assert "deferral" in loser["explanation"]["reason"]
    # (cart-reminder-push, on the same ENTER, loses too: on_conflict suppress)
    deferred = [d for d in sim.decisions if d["reason_code"] == "LOST_ARBITRATION"
                and d["outcome"] == "DEFERRED"]
    assert [(d["campaign_id"], d["outcome"], d["deferred_until"]) for d in deferred] == [
        (loser["campaign_id"], "DEFERRED", entered + 30 * MINUTE)]  # the minimum interval


def test_state_round_trips_and_old_state_has_no_journeys():
    state = arbitration.CampaignState()
    state.journeys = JourneyState(
        {CHAIN: Instance(CHAIN, 1, 2, "wait-open", T, T + 1, {"email": "t1"},
                         {"email": ["DELIVERED"]}, {"nodes[6].condition": T + 5}, T + 99)},
        {CHAIN: 2}, {CHAIN: T - DAY})
    again = arbitration.decode_state(arbitration.encode_state(state))
    assert again == state
    # a savepoint written before journeys: no "journeys" key
    before = b'{"v":1,"sent":[],"last_send":{},"decided":{},"pending":[],"churn_score":null}'
    assert arbitration.decode_state(before).journeys == JourneyState()
    assert b"journeys" not in arbitration.encode_state(arbitration.CampaignState())


def test_split_is_deterministic_and_near_its_percentages():
    from udfs.journeys.compiler import parse_journey
    from udfs.journeys.grammar import Branch, Node

    node = Node("ab", "split", branches=(Branch(30, "a"), Branch(70, "b")))
    # a real journey (compiled, the runner checks its argument's class), with the id "j"
    journey = dataclasses.replace(parse_journey(chain_document(), "test.yaml"), id="j")
    arms = [runner._branch(f"user-{i}", Instance("j", 1, 1, "ab", 0, 0), journey, node)
            for i in range(4000)]
    share = arms.count("a") / len(arms)
    assert 0.27 < share < 0.33
    assert arms == [runner._branch(f"user-{i}", Instance("j", 1, 1, "ab", 0, 0), journey,
                                   node) for i in range(4000)]


# --- consent withdrawn through a sender's outcome ----------------------------------------------


@pytest.mark.parametrize("kind", ["UNSUBSCRIBED", "COMPLAINED"])
def test_an_sms_unsubscribe_after_the_email_suppresses_the_sms(chain_rules, kind):
    sim = Simulator(chain_rules, BOUND)
    abandon(sim)
    heartbeat(sim, T + 45 * MINUTE + BOUND + 1)  # the email is out
    email = sim.triggers[0]
    # a reply STOP to an earlier SMS of another campaign: the sender reports it on SMS
    sim.outcome({**outcome(email, kind, T + HOUR), "channel": "SMS",
                 "outcome_id": f"stop-{kind}"})
    sim.finish()
    assert sends(sim) == [("email", "EMAIL", T + 30 * MINUTE),
                          ("retarget", "PAID_SOCIAL", T + 30 * MINUTE + 28 * HOUR)]
    [no_sms] = [d for d in sim.decisions if d["campaign_id"] == f"{CHAIN}/sms"]
    assert (no_sms["outcome"], no_sms["reason_code"]) == ("SUPPRESSED", "NO_CONSENT")
    assert f"SMS at {T + HOUR}" in no_sms["reason"]


def test_a_click_during_a_wait_reaches_the_running_instance():
    """A click that starts nothing, fires nothing and converts nothing still reaches an instance.

    The engine skips the journeys' half of such a click only for a user with no instance
    running (``arbitration.may_decide``): ann's page view during the first week's wait makes
    her reactivated (no in-app message); bob, who stays quiet, gets it and the sync.
    """
    rules = rules_for(CATALOG / "re-engagement-30d.yaml")
    sim = Simulator(rules, BOUND)
    for user in ("ann", "bob"):
        sim.metadata(consenting(user))
        sim.click(click(f"{user}-1", user, "PAGE_VIEW", T))
    heartbeat(sim, T + 32 * DAY, step=6 * HOUR)
    assert [s[0] for s in sends(sim, "ann")] == ["email"]  # inactive for 30 days: started
    sim.click(click("ann-2", "ann", "PAGE_VIEW", T + 33 * DAY))
    heartbeat(sim, T + 40 * DAY, step=6 * HOUR)
    sim.finish()
    assert [s[0] for s in sends(sim, "ann")] == ["email"]
    assert [s[0] for s in sends(sim, "bob")] == ["email", "in-app", "retarget"]
