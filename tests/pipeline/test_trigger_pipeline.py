"""Campaign triggers on a MiniCluster (parallelism 2): a scripted scenario through the whole
graph, checked to the record on the tier topics and the trigger-decisions topic."""

from collections import Counter

import pytest

from jobs.config import replace
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.pipeline.fakes import as_bytes, scripted_outputs
from udfs.campaigns.priority import score_priority
from udfs.catalog.files import load_catalog

pytestmark = pytest.mark.pipeline

NOON = 1_800_014_400_000  # 2027-01-15 12:00 UTC, a Friday: outside everyone's quiet hours
MIN = 60_000


def test_triggers_go_to_their_tier_topic_with_rivals_and_reasons(env, cfg, tmp_path):
    cfg = replace(cfg, churn_model="off")  # the churn campaign is covered by unit tests
    codec = Codec.load()
    metadata = [
        metadata_bytes(codec, "ann", "Europe/Berlin", at=NOON, email=True, sms=True, push=True),
        metadata_bytes(codec, "ben", "America/Sao_Paulo", at=NOON, push=True),
    ]
    clicks = [
        click_bytes(codec, "ann-1", "ann", "ADD_TO_CART", NOON, **CART),
        click_bytes(codec, "ann-1", "ann", "ADD_TO_CART", NOON, **CART),  # duplicate delivery
        click_bytes(codec, "ben-1", "ben", "ADD_TO_CART", NOON + 1000, **CART),
        click_bytes(codec, "cid-1", "cid", "ADD_TO_CART", NOON + 2000, **CART),  # no metadata
        # dan moves event time past the 30-minute abandonment window of ann and ben
        click_bytes(codec, "dan-1", "dan", "PAGE_VIEW", NOON + 45 * MIN),
    ]
    outputs = scripted_outputs(env, cfg, tmp_path, clicks, NOON + 46 * MIN,
                               metadata, NOON - MIN)
    with outputs.all().execute_and_collect() as results:
        rows = [(topic, as_bytes(key), codec.decode_named(as_bytes(value)))
                for topic, key, value, _ in results]

    # the end of the bounded input fires every timer; the script covers its first hour
    hour = NOON + 60 * MIN
    triggers = [(topic, key, r) for topic, key, (name, r) in rows
                if name == "TriggerEvent" and r["cause_event_time"] <= hour]
    decisions = [r for topic, _, (name, r) in rows
                 if name == "TriggerDecision" and r["decided_at"] <= hour]

    got = sorted((topic, r["user_id"], r["campaign_id"], r["channel"], r["tier"])
                 for topic, _, r in triggers)
    assert got == [
        ("triggers-p1", "ann", "cart-abandonment-email", "EMAIL", "P1"),
        ("triggers-p1", "ann", "high-value-cart-sms", "SMS", "P1"),
        ("triggers-p2", "ben", "cart-reminder-push", "PUSH", "P2"),
    ]
    for topic, key, r in triggers:
        assert key == r["user_id"].encode()  # keyed by user
        assert topic == f"triggers-{r['tier'].lower()}"
    ids = [r["trigger_id"] for _, _, r in triggers]
    assert len(ids) == len(set(ids))

    by_campaign = {(r["user_id"], r["campaign_id"]): r for _, _, r in triggers}
    sms = by_campaign[("ann", "high-value-cart-sms")]
    assert sms["cause_event_id"] == "ann-1" and sms["cause_event_time"] == NOON
    assert sms["payload"] == {"product_id": "p1", "value": "150"}
    assert sms["expires_at"] == NOON + 60 * MIN
    assert sms["explanation"]["definition_versions"]["high-value-cart-sms"] == 1
    assert sms["explanation"]["features"]["event.value"] == 150.0
    email = by_campaign[("ann", "cart-abandonment-email")]
    catalog = load_catalog()
    push = next(c for c in catalog.campaigns if c.id == "cart-reminder-push")
    # the fake store reports no segment sizes: audience factor 0
    push_score = score_priority(push, catalog.policies[0], {}).score
    assert email["explanation"]["rivals"] == [
        {"campaign_id": "cart-reminder-push", "priority_score": pytest.approx(push_score),
         "outcome": "SUPPRESSED"}]
    assert email["cause_event_id"].startswith("timer@")  # the absence window closed
    assert "cart-abandoners" in email["segments"]

    # metadata and clicks come from two sources, in either order: a click processed before its
    # user's metadata waits (AWAITING_METADATA), and a wait can shift the next send by the
    # minimum interval; neither changes what is finally sent or suppressed
    deferred = {(d["user_id"], d["reason_code"]) for d in decisions if d["outcome"] == "DEFERRED"}
    assert {code for _, code in deferred} <= {"AWAITING_METADATA", "MIN_INTERVAL"}
    assert ("cid", "AWAITING_METADATA") in deferred  # cid never has metadata
    why = Counter((d["user_id"], d["campaign_id"], d["outcome"], d["reason_code"])
                  for d in decisions if d["outcome"] == "SUPPRESSED")
    assert why == Counter({
        ("ann", "cart-reminder-push", "SUPPRESSED", "LOST_ARBITRATION"): 1,
        ("ben", "high-value-cart-sms", "SUPPRESSED", "NO_CONSENT"): 1,
        ("ben", "cart-abandonment-email", "SUPPRESSED", "NO_CONSENT"): 1,
        ("cid", "high-value-cart-sms", "SUPPRESSED", "NO_CONSENT"): 1,
        ("cid", "cart-abandonment-email", "SUPPRESSED", "NO_CONSENT"): 1,
        ("cid", "cart-reminder-push", "SUPPRESSED", "NO_CONSENT"): 1,
    })
