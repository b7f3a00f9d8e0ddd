"""ROI into priority on the real stack: the loop closes through Kafka.

A campaign typed at 20 USD per send sends to 60 users; each buys for 100 USD (attributed
conversions). 40 more users bring it to 100 sends, the policy's ``min_sends``: the job's
campaign statistics publish the measured ROI (6,000 USD over 100 sends = 60 per send; with
``smoothing: 1`` the ROI in use moves from 20 to 40, the step bound: 100% of the ROI in use)
as a CAMPAIGN_ROI DefinitionUpdate on the control topic, which the engine reads back. The next
20 users' triggers compete with it: a higher priority score, and the explanation names the
measurement and the definition version it came from. The first wave's triggers named the
typed value. Exactly-once, read committed.
"""

import shutil
import time

import pytest

from jobs.bench.bench import daytime_zone
from jobs.config import ISOLATION_FIELDS, replace
from schemas.codec import Codec
from tests.builders import click_bytes, metadata_bytes
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw
from tests.integration.test_triggers_e2e import TierReaders
from udfs.catalog.files import POLICY_FILE

pytestmark = pytest.mark.integration

MIN, HOUR = 60_000, 3_600_000
CAMPAIGN = """\
kind: campaign
id: roi-fed
version: 1
description: A push on a cart, typed at 20 USD per send until the loop measures it.
trigger: {event: {type: ADD_TO_CART}}
channels: [PUSH]
template: roi-fed
priority: {urgency: 0.7, expected_roi: 20, brand_significance: 0.5}
attribution: {window: 3d}
"""
FEEDBACK = "roi_feedback: {min_sends: 100, smoothing: 1.0, max_step: 100%, update_every: 20}\n"


def test_measured_roi_comes_back_through_the_control_topic_and_raises_the_priority(
        isolated_cfg, tmp_path):
    cfg = replace(isolated_cfg, idleness_ms=500, max_out_of_orderness_ms=2000,
                  churn_model="off", checkpoint_interval_ms=1000)
    codec = Codec.load()
    run = cfg.consumer_group
    t0 = (int(time.time() * 1000) - 2 * 86_400_000) // MIN * MIN
    zone = daytime_zone(t0, t0 + 4 * HOUR)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(POLICY_FILE, campaigns / "priority-policy.yaml")
    with (campaigns / "priority-policy.yaml").open("a") as policy:
        policy.write(FEEDBACK)
    (campaigns / "roi-fed.yaml").write_text(CAMPAIGN)
    no_segments = tmp_path / "segments"
    no_segments.mkdir()
    waves = {1: [f"{run}-w1-{i}" for i in range(60)], 2: [f"{run}-w2-{i}" for i in range(40)],
             3: [f"{run}-w3-{i}" for i in range(20)]}
    readers = TierReaders(cfg, codec)
    outcomes = TopicReader(cfg, cfg.outcomes_topic, codec)
    control = TopicReader(cfg, cfg.definitions_topic, codec)
    fields = (*ISOLATION_FIELDS, "churn_model", "idleness_ms", "max_out_of_orderness_ms",
              "checkpoint_interval_ms", "parallelism", "delivery_guarantee")
    # the profiles before the job: their backlog holds event time back until it is read
    produce_raw(cfg, cfg.user_metadata_topic, [
        (u.encode(), metadata_bytes(codec, u, zone, at=t0 - MIN, push=True))
        for wave in waves.values() for u in wave])
    job_id = flink_jobs.submit(cfg, "--campaigns-dir", str(campaigns), "--segments-dir",
                               str(no_segments), fields=fields)

    produced = [0]  # clicks sent so far

    def clicks(records: list[tuple[str, str, int, dict]], bump_at: int) -> None:
        """The clicks, then, once they are read (``flink_jobs.wait_until_read`` says why), one
        that moves event time past them (and past a late profile)."""
        produce_raw(cfg, cfg.clicks_topic, [
            (user.encode(), click_bytes(codec, f"{user}-{kind}", user, kind, t, **fields))
            for user, kind, t, fields in records])
        produced[0] += len(records)
        flink_jobs.wait_until_read(cfg, job_id, "clicks", produced[0])
        produce_raw(cfg, cfg.clicks_topic, [(f"{run}-bump".encode(), click_bytes(
            codec, f"{run}-bump-{bump_at}", f"{run}-bump", "PAGE_VIEW", bump_at))])
        produced[0] += 1

    def sent(wave: int) -> list[dict]:
        users = set(waves[wave])
        return [r for _, _, r in readers.triggers() if r["user_id"] in users]

    def roi_updates() -> list[dict]:
        return [r for _, name, r in control.records
                if name == "DefinitionUpdate" and r["kind"] == "CAMPAIGN_ROI"]

    try:
        # the profiles first (flink_jobs.wait_until_read says why)
        flink_jobs.wait_until_read(cfg, job_id, "user-metadata", sum(map(len, waves.values())))
        cart = {"product_id": "p1", "price": 30.0, "quantity": 1, "currency": "USD"}
        clicks([(u, "ADD_TO_CART", t0 + i * 10, cart) for i, u in enumerate(waves[1])],
               t0 + 6 * MIN)
        readers.wait_until(lambda _: len(sent(1)) == 60, 180, "the first wave's sends")
        clicks([(u, "PURCHASE", t0 + HOUR + i * 10,
                 {**cart, "price": 100.0, "order_id": f"{u}-o"})
                for i, u in enumerate(waves[1])], t0 + HOUR + 6 * MIN)
        outcomes.wait_for(lambda records: sum(1 for _, _, r in records
                                              if r["outcome"] == "CONVERTED") >= 60, 180,
                          "the first wave's conversions")
        control.drain(2)
        assert roi_updates() == [], "an update before min_sends"
        clicks([(u, "ADD_TO_CART", t0 + 2 * HOUR + i * 10, cart)
                for i, u in enumerate(waves[2])], t0 + 2 * HOUR + 6 * MIN)
        control.wait_for(lambda _: roi_updates(), 180, "the measured ROI on the control topic")
        readers.wait_until(lambda _: len(sent(2)) == 40, 180, "the second wave's sends")
        time.sleep(5)  # the engine reads the control topic as the test did
        clicks([(u, "ADD_TO_CART", t0 + 3 * HOUR + i * 10, cart)
                for i, u in enumerate(waves[3])], t0 + 3 * HOUR + 6 * MIN)
        readers.wait_until(lambda _: len(sent(3)) == 20, 180, "the third wave's sends")
        # the 20 sends since the first update make the next one
        control.wait_for(lambda _: len(roi_updates()) >= 2, 120, "the second ROI update")
        control.drain(2)
    finally:
        flink_jobs.cancel(cfg, job_id)
        readers.close()
        outcomes.close()
        control.close()

    first, second = roi_updates()[:2]
    assert (first["definition_id"], first["published_by"]) == \
        ("roi:roi-fed", "nudgeflow campaign-stats")
    assert '"roi":40.0' in first["body"] and '"sends":100' in first["body"]
    assert '"revenue_per_send":60.0' in first["body"]
    # 6,000 over 120 sends: 50, within the step
    assert '"roi":50.0' in second["body"] and second["version"] > first["version"]
    assert len(roi_updates()) == 2
    typed, measured = sent(1), sent(3)
    assert all("ROI typed: 20" in t["explanation"]["reason"] for t in typed)
    assert {t["priority_score"] for t in typed} == {0.44}  # 0.4*0.7 + 0.3*0.2 + 0.2*0.5
    for trigger in measured:
        explanation = trigger["explanation"]
        assert "ROI measured: 60.00 per send over 100 sends" in explanation["reason"], trigger
        assert explanation["definition_versions"]["roi:roi-fed"] == first["version"]
        assert explanation["features"]["roi_usd_per_send"] == 40.0
        assert trigger["priority_score"] == 0.5  # 0.4*0.7 + 0.3*0.4 + 0.2*0.5
