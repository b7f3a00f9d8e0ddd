"""A journey on a MiniCluster (parallelism 2): the cart chain through the whole graph, with an
engagement outcome read from the outcomes input, decoded, keyed by user and applied in event
time; a record that is not a CampaignOutcome is dead-lettered."""

import shutil

import pytest

from jobs.config import replace
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.pipeline.fakes import as_bytes, scripted_outputs
from udfs.campaigns.arbitration import trigger_id
from udfs.catalog.files import JOURNEY_CATALOG_DIR, POLICY_FILE

pytestmark = pytest.mark.pipeline

NOON = 1_800_014_400_000  # 2027-01-15 12:00 UTC, a Friday: outside everyone's quiet hours
MIN, HOUR = 60_000, 3_600_000
CHAIN = "cart-abandonment-chain"


def test_the_cart_chain_follows_an_opened_email_read_from_outcomes(env, cfg, tmp_path):
    # the shipped policy and the chain only: no campaign competes with its sends
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(POLICY_FILE, campaigns / "priority-policy.yaml")
    journeys = tmp_path / "journeys"
    journeys.mkdir()
    shutil.copy(JOURNEY_CATALOG_DIR / f"{CHAIN}.yaml", journeys)
    cfg = replace(cfg, churn_model="off", campaigns_dir=str(campaigns),
                  journeys_dir=str(journeys))
    codec = Codec.load()
    consent = {"email": True, "sms": True, "paid_social": True}
    metadata = [metadata_bytes(codec, user, at=NOON, **consent) for user in ("ann", "ben")]
    clicks = [
        click_bytes(codec, "ann-1", "ann", "ADD_TO_CART", NOON, **CART),
        click_bytes(codec, "ben-1", "ben", "ADD_TO_CART", NOON, **CART),
        # dan moves event time past the abandonment window and the email
        click_bytes(codec, "dan-1", "dan", "PAGE_VIEW", NOON + 45 * MIN),
    ]
    # ann opens her email at 13:00 (the sender reports it); ben never does
    ann_email = trigger_id("ann", CHAIN, "email", "journey v1 instance 1")
    opened = {"outcome_id": "o-1", "trigger_id": ann_email, "user_id": "ann",
              "campaign_id": f"{CHAIN}/email", "channel": "EMAIL", "outcome": "OPENED",
              "event_time": NOON + HOUR, "revenue": None, "currency": None}
    outcomes = [codec.encode("CampaignOutcome", opened),
                codec.encode("CampaignOutcome", opened),  # redelivered
                b"not an outcome"]
    outputs = scripted_outputs(env, cfg, tmp_path, clicks, NOON + 46 * MIN,
                               metadata, NOON - MIN, outcomes, NOON + HOUR)
    with outputs.all().execute_and_collect() as results:
        rows = [(topic, codec.decode_named(as_bytes(value))) for topic, _, value, _ in results]

    sends = sorted((r["user_id"], r["node_id"], r["channel"], r["cause_event_time"])
                   for _, (name, r) in rows if name == "TriggerEvent")
    entered = NOON + 30 * MIN
    assert sends == [
        ("ann", "email", "EMAIL", entered),
        ("ann", "retarget", "PAID_SOCIAL", NOON + HOUR + 24 * HOUR),  # opened: no SMS
        ("ben", "email", "EMAIL", entered),
        ("ben", "retarget", "PAID_SOCIAL", entered + 4 * HOUR + 24 * HOUR),
        ("ben", "sms", "SMS", entered + 4 * HOUR),
    ]
    triggers = {(r["user_id"], r["node_id"]): r for _, (name, r) in rows
                if name == "TriggerEvent"}
    assert triggers[("ann", "email")]["trigger_id"] == ann_email
    assert {r["journey_id"] for r in triggers.values()} == {CHAIN}
    letters = [r for topic, (name, r) in rows if name == "DeadLetter"]
    assert [(r["source_topic"], r["reason_code"]) for r in letters] == [
        ("outcomes", "INVALID_AVRO")]
