"""Backfill (``defs publish --backfill``) in the pure engine step: a per-user re-evaluation
request applies a new definition to a user at once, at the watermark.

Metamorphic: publishing a segment mid-stream and backfilling everyone gives the membership the
segment would have had, had it been in force from the start, and from there on the same
changes; a second backfill, or the same one again, changes nothing. Plus the outcomes one by
one (unknown, erased, stale), the marks on what a backfill causes, ``on_backfill: send|skip``
for campaigns and journeys, and the request's intake rules with their exact messages.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from schemas.codec import Codec
from tests.builders import CART, click, metadata
from tests.differential import compare
from tests.differential.replay import workload
from tests.differential.sim import Simulator
from udfs import engine, intake
from udfs.campaigns import arbitration as arb
from udfs.catalog.files import (
    CAMPAIGN_CATALOG_DIR,
    POLICY_FILE,
    RATES_FILE,
    SEGMENT_CATALOG_DIR,
    catalog_files,
    load_files,
)
from udfs.catalog.registries import Registries
from udfs.engine import Backfill, Rules, UserState

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
T = 1_795_521_600_000  # 2026-11-24T12:00:00Z, a Tuesday: far from quiet hours in UTC
BOUND = 5_000
CONSENT = {"email": True, "sms": True, "push": True, "in_app": True, "paid_social": True}
JOURNEYS = Path(__file__).resolve().parents[2] / "udfs" / "catalog" / "journeys"

WINDOW_SHOPPERS = """\
id: window-shoppers
version: 1
description: Three product views in a week.
condition:
  feature: {name: events_product_view_7d, op: ">=", value: 3}
"""
BIG_CARTS = """\
id: big-carts
version: 1
description: A cart worth $100 or more.
condition:
  feature: {name: cart_value, op: ">=", value: 100}
"""


def campaign(on_backfill: str | None) -> str:
    """A campaign on entering big-carts, with ``on_backfill`` as given (None: the default)."""
    mode = f"on_backfill: {on_backfill}\n" if on_backfill else ""
    return f"""\
kind: campaign
id: big-cart-push-{on_backfill or 'default'}
version: 1
description: A push to users with a big cart.
trigger: {{segment_enter: big-carts}}
channels: [PUSH]
template: big-cart-v1
expires_after: 2h
priority: {{urgency: 0.5, expected_roi: 40, brand_significance: 0.5}}
{mode}"""


def updates_of(tmp_path: Path, *docs: tuple[str, str]) -> list[dict]:
    """The DefinitionUpdates of YAML documents (name, text), as published (version 1)."""
    paths = []
    for name, text in docs:
        path = tmp_path / f"{name}.yaml"
        path.write_text(text)
        paths.append(path)
    return load_files(paths, check_references=False).updates(0, "file")


def catalog_rules(*extra: dict) -> Rules:
    """Fresh registries (a backfill test publishes into them) of the shipped catalog."""
    updates = load_files(catalog_files(), check_references=False).updates(0, "file")
    return Rules(Registries.from_updates([*updates, *extra]), 90 * DAY)


def members(changes: list[dict], segment: str) -> set[str]:
    """The users in ``segment`` after ``changes`` (ENTERs minus EXITs, in order)."""
    inside: set[str] = set()
    for change in sorted(changes, key=lambda c: c["event_time"]):
        if change["segment_id"] == segment:
            (inside.add if change["change"] == "ENTER" else inside.discard)(change["user_id"])
    return inside


def play(sim: Simulator, clicks: list[dict], metadata_records: list[dict]) -> None:
    for record in metadata_records:
        sim.metadata(record)
    for event in clicks:
        sim.click(event)


@pytest.fixture(scope="module")
def history():
    return workload(users=40, events=1200, days=10, seed=11)


def test_a_backfill_gives_the_membership_of_a_definition_in_force_from_the_start(
        history, tmp_path):
    segment = updates_of(tmp_path, ("window-shoppers", WINDOW_SHOPPERS))
    cut = len(history.clicks) // 2
    before, after = history.clicks[:cut], history.clicks[cut:]
    users = sorted({m["user_id"] for m in history.metadata})

    always = Simulator(catalog_rules(*segment), BOUND)
    play(always, before, history.metadata)
    backfilled = Simulator(catalog_rules(), BOUND)
    play(backfilled, before, history.metadata)
    assert backfilled.watermark == always.watermark
    # without a backfill the new segment reaches nobody until their next input
    for update in segment:
        backfilled.rules.registries.apply(update)
    assert members(backfilled.changes, "window-shoppers") == set()

    shuffled_users = users[:]
    random.Random(5).shuffle(shuffled_users)  # the order of the requests does not matter
    for user in shuffled_users:
        backfilled.backfill(user, "bf-1", {"window-shoppers": 1})
    expected = members(always.changes, "window-shoppers")
    assert expected, "the workload must put some users in the segment (else this proves nothing)"
    assert members(backfilled.changes, "window-shoppers") == expected
    assert backfilled.backfills == {engine.BACKFILL_EVALUATED: len(users)}
    entries = [c for c in backfilled.changes if c["segment_id"] == "window-shoppers"]
    assert {c["event_time"] for c in entries} == {backfilled.watermark}
    assert all(c["cause_event_id"] is None and c["change"] == "ENTER" for c in entries)
    assert all(c["reason"].startswith("backfill@bf-1: events_product_view_7d ")
               for c in entries)
    assert {c["change_id"] for c in entries} == {
        engine.change_id(c["user_id"], "window-shoppers", "ENTER", backfilled.watermark,
                         "backfill@bf-1") for c in entries}

    # idempotent: the same backfill again, or another one, changes nothing
    changes = len(backfilled.changes)
    for user in users:
        backfilled.backfill(user, "bf-1", {"window-shoppers": 1})
        backfilled.backfill(user, "bf-2", {"window-shoppers": 1})
    assert len(backfilled.changes) == changes
    assert backfilled.backfills[engine.BACKFILL_CURRENT] == 2 * len(users)

    # from there on both see the same changes (every segment), to the end
    watermark = backfilled.watermark
    for sim in (always, backfilled):
        for event in after:
            sim.click(event)
        sim.finish()
    later = [compare.changes_by_key([c for c in sim.changes if c["event_time"] > watermark])
             for sim in (always, backfilled)]
    assert later[0] == later[1], compare.first_difference(later[0], later[1])


def test_unknown_erased_and_stale_requests_change_nothing(tmp_path):
    rules = catalog_rules()
    fresh = UserState()
    out = engine.step(fresh, Backfill("nobody", "bf", {}, T), rules, 0)
    assert out.backfill == engine.BACKFILL_UNKNOWN
    assert not (out.changes or out.clock_changed or out.features_changed
                or out.metadata_changed or out.campaigns_changed or out.timers)

    erased = UserState(erased=True)
    assert engine.step(erased, Backfill("gone", "bf", {}, T), rules, 0).backfill == \
        engine.BACKFILL_ERASED

    sim = Simulator(rules, BOUND)
    sim.metadata(metadata("ann", at=T - HOUR, **CONSENT))
    sim.click(click("ann-1", "ann", "ADD_TO_CART", T, **CART))
    sim.advance(T + MIN)
    out = engine.step(sim.states["ann"], Backfill("ann", "bf", {"big-carts": 1,
                                                               "high-value-cart": 1}, T + MIN),
                      rules, 0)
    assert out.backfill == engine.BACKFILL_STALE
    assert out.backfill_lacking == ("big-carts v1",)
    assert not out.changes


def _cart_user(rules: Rules) -> Simulator:
    """ann, consenting to everything, with a $150 cart at T; the watermark past it."""
    sim = Simulator(rules, BOUND)
    sim.metadata(metadata("ann", at=T - HOUR, **CONSENT))
    sim.click(click("ann-1", "ann", "ADD_TO_CART", T, **CART))
    sim.click(click("zed-1", "zed", "PAGE_VIEW", T + 2 * MIN))
    return sim


@pytest.mark.parametrize(("mode", "sent"), [(None, False), ("skip", False), ("send", True)])
def test_what_a_backfill_causes_is_marked_and_on_backfill_decides_the_send(tmp_path, mode,
                                                                           sent):
    rules = catalog_rules()
    sim = _cart_user(rules)
    for update in updates_of(tmp_path, ("big-carts", BIG_CARTS),
                             ("big-cart-push", campaign(mode))):
        rules.registries.apply(update)
    sim.backfill("ann", "bf-7", {"big-carts": 1})
    at = sim.watermark
    sim.finish()  # the policy's decision window closes
    enter = next(c for c in sim.changes if c["segment_id"] == "big-carts")
    assert (enter["change"], enter["event_time"]) == ("ENTER", at)
    campaign_id = f"big-cart-push-{mode or 'default'}"
    mine = [t for t in sim.triggers if t["campaign_id"] == campaign_id]
    decided = [d for d in sim.decisions if d["campaign_id"] == campaign_id]
    if sent:
        [trigger] = mine
        assert trigger["cause_event_id"] == "backfill@bf-7"
        assert arb.caused_by_backfill(trigger["cause_event_id"])
        # deferred first, maybe (ann's SMS an instant before: the minimum interval), not skipped
        assert "BACKFILL" not in {d["reason_code"] for d in decided}
    else:
        assert mine == []
        [decision] = decided
        assert (decision["outcome"], decision["reason_code"]) == ("SUPPRESSED", "BACKFILL")
        assert decision["reason"] == (f"caused by a backfill (backfill@bf-7) and {campaign_id} "
                                      "has on_backfill: skip")
        assert decision["cause_event_id"] == "backfill@bf-7"


def test_the_same_campaign_fires_on_a_live_entry_whatever_on_backfill_says(tmp_path):
    """skip concerns backfills only: a user entering through their own click is sent to."""
    rules = catalog_rules()
    for update in updates_of(tmp_path, ("big-carts", BIG_CARTS),
                             ("big-cart-push", campaign("skip"))):
        rules.registries.apply(update)
    sim = _cart_user(rules)
    sim.finish()
    [trigger] = [t for t in sim.triggers if t["campaign_id"] == "big-cart-push-skip"]
    assert trigger["cause_event_id"] == "ann-1"


@pytest.mark.parametrize(("mode", "started"), [(None, False), ("send", True)])
def test_a_journey_starts_on_a_backfill_entry_only_with_on_backfill_send(tmp_path, mode,
                                                                         started):
    # the shipped chain, started by entering big-carts (published with it)
    text = (JOURNEYS / "cart-abandonment-chain.yaml").read_text().replace(
        "segment_enter: cart-abandoners", "segment_enter: big-carts")
    if mode:
        text = text.replace("\nnodes:", f"\non_backfill: {mode}\nnodes:", 1)
    files = [SEGMENT_CATALOG_DIR, POLICY_FILE, RATES_FILE, CAMPAIGN_CATALOG_DIR]
    base = load_files(files, check_references=False).updates(0, "file")
    rules = Rules(Registries.from_updates(base), 90 * DAY)
    sim = _cart_user(rules)
    for update in updates_of(tmp_path, ("big-carts", BIG_CARTS),
                             ("cart-abandonment-chain", text)):
        rules.registries.apply(update)
    sim.backfill("ann", "bf-j", {})
    assert members(sim.changes, "big-carts") == {"ann"}
    state = sim.states["ann"].campaign_state()
    assert bool(state.journeys.instances) == started


def test_on_backfill_must_be_send_or_skip(tmp_path):
    path = tmp_path / "big-cart-push.yaml"
    path.write_text(campaign("always"))
    with pytest.raises(Exception) as info:
        load_files([tmp_path / "big-cart-push.yaml"], check_references=False)
    assert ("on_backfill must be one of skip, send, got the string 'always' (what a trigger "
            "caused by defs publish --backfill does)") in str(info.value)


# --- intake -------------------------------------------------------------------------------------


def _record(request: dict, key: str | None = None) -> intake.SourceRecord:
    raw = Codec.load().encode("BackfillRequest", request)
    return intake.SourceRecord("backfill-requests", 0, 7, T,
                               (key if key is not None else request["user_id"]).encode(), raw)


REQUEST = {"backfill_id": "bf-1", "user_id": "ann", "requested_at": T,
           "definitions": {"big-carts": 1}}


def test_a_valid_request_decodes():
    assert intake.decode_backfill(Codec.load(), _record(REQUEST)) == REQUEST


@pytest.mark.parametrize(("request_", "key", "message"), [
    ({**REQUEST, "backfill_id": " "}, None,
     "backfill request ' ': field backfill_id is empty or blank; every record needs one"),
    ({**REQUEST, "definitions": {"big-carts": 0}}, None,
     "backfill request 'bf-1': definition 'big-carts' has version 0; versions start at 1"),
    (REQUEST, "bob",
     "backfill request 'bf-1': the record key 'bob' is not its user_id 'ann'; key each request "
     "by the user it names"),
])
def test_a_bad_request_is_rejected_with_its_reason(request_, key, message):
    rejected = intake.decode_backfill(Codec.load(), _record(request_, key))
    assert isinstance(rejected, intake.Rejected)
    assert rejected.reason == message
    assert rejected.reason_code == "INVALID_FIELD"
