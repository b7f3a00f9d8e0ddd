"""Erasure on the real stack (Kafka, Cassandra, Redis, Flink session cluster): a user enters
segments, a tombstone on user-metadata erases them, and then

- the segment-changes topic has an EXIT with reason ``user erased`` for every segment they were
  in, and nothing of theirs after it; no trigger of theirs after it;
- Cassandra has no row of theirs in membership_by_user, members_by_segment (any shipped
  segment) or membership_changes; Redis has neither their set nor their churn hash, and every
  segment's count matches the sets;
- their later clicks, a valid one and an invalid one, are dropped (not applied, not
  dead-lettered: nothing of theirs on any topic) and counted; other users go on as before.

(A keyless tombstone cannot be tested here: the broker itself refuses a record without a key on
the compacted user-metadata topic; intake's rule is covered in tests/unit/test_intake.py and
tests/pipeline/test_erasure_pipeline.py.)
"""

import time

import pytest
import redis

from jobs.bench.bench import daytime_zone
from jobs.cli import wiring
from jobs.config import ISOLATION_FIELDS, replace
from schemas.codec import Codec
from tests.builders import CART, DAY_MS, click_bytes, metadata_bytes
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw
from tests.integration.test_triggers_e2e import TierReaders, prometheus_lines
from udfs.catalog.files import load_catalog
from udfs.stores import keys
from udfs.stores.membership import segment_bucket

pytestmark = pytest.mark.integration

MIN = 60_000
CART_SEGMENTS = {"new-signups-7d", "high-value-cart", "cart-abandoners"}


@pytest.fixture
def erasure_cfg(isolated_cfg):
    return replace(isolated_cfg, idleness_ms=500, max_out_of_orderness_ms=2000,
                   checkpoint_interval_ms=1000)


def submit(cfg):
    fields = (*ISOLATION_FIELDS, "idleness_ms", "max_out_of_orderness_ms",
              "checkpoint_interval_ms", "parallelism", "delivery_guarantee")
    return flink_jobs.submit(cfg, fields=fields)


def membership(records, user):
    """The segments ``user`` is in by the SegmentChanges read so far (ENTERs minus EXITs)."""
    inside = set()
    for _, name, r in records:
        if name == "SegmentChange" and r["user_id"] == user:
            (inside.add if r["change"] == "ENTER" else inside.discard)(r["segment_id"])
    return inside


def metric_total(lines, name):
    """The sum over subtasks of a counter in Prometheus lines (0 when not exported yet)."""
    return sum(float(line.rsplit(" ", 1)[1]) for line in lines
               if f"_{name}{{" in line or line.startswith(f"{name}{{"))


def test_an_erased_user_is_gone_from_state_cassandra_and_redis(erasure_cfg):
    cfg = erasure_cfg
    codec = Codec.load()
    run = cfg.consumer_group
    ann, bob, cy, zed = (f"{run}-{n}" for n in ("ann", "bob", "cy", "zed"))
    users = (ann, bob, cy, zed)
    t0 = (int(time.time() * 1000) // MIN - 120) * MIN  # two hours ago, on a minute
    zone = daytime_zone(t0, t0 + 70 * MIN)
    # ann and bob signed up two days before t0 (new sign-ups) and consent to email and SMS
    produce_raw(cfg, cfg.user_metadata_topic, [
        (user.encode(), metadata_bytes(codec, user, zone, at=t0, signup_time=t0 - 2 * DAY_MS,
                                       email=True, sms=True))
        for user in (ann, bob)])
    changes = TopicReader(cfg, cfg.segment_changes_topic, codec)
    letters = TopicReader(cfg, cfg.dead_letter_topic, codec)
    triggers = TierReaders(cfg, codec)
    job_id = submit(cfg)
    try:
        # 1. ann and bob fill carts and abandon them (zed moves event time past 30 minutes
        # once the source has passed theirs on: flink_jobs.wait_until_read says why)
        flink_jobs.wait_until_read(cfg, job_id, "user-metadata", 2)
        produce_raw(cfg, cfg.clicks_topic, [
            (ann.encode(), click_bytes(codec, f"{ann}-1", ann, "ADD_TO_CART", t0, **CART)),
            (bob.encode(), click_bytes(codec, f"{bob}-1", bob, "ADD_TO_CART", t0 + 1000,
                                       **CART))])
        flink_jobs.wait_until_read(cfg, job_id, "clicks", 2)
        produce_raw(cfg, cfg.clicks_topic, [
            (zed.encode(), click_bytes(codec, f"{zed}-1", zed, "PAGE_VIEW", t0 + 31 * MIN))])
        changes.wait_for(lambda r: CART_SEGMENTS <= membership(r, ann)
                         and CART_SEGMENTS <= membership(r, bob),
                         timeout_s=120, what="ann's and bob's cart segments")
        triggers.drain(6)  # exactly-once: her triggers so far are committed within a second
        ann_triggers = {r["trigger_id"] for _, _, r in triggers.triggers()
                        if r["user_id"] == ann}
        client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
        assert CART_SEGMENTS <= client.smembers(keys.user_segments(cfg.redis_key_prefix, ann))
        assert client.exists(keys.user_churn(cfg.redis_key_prefix, ann)) == 1  # scored

        # 2. the tombstone
        produce_raw(cfg, cfg.user_metadata_topic, [(ann.encode(), None)])
        changes.wait_for(lambda r: membership(r, ann) == set(), timeout_s=90,
                         what="ann's erasure EXITs")

        # 3. later clicks: ann's (a valid cart and an invalid one) are dropped; bob's invalid
        # one is dead-lettered as always; cy fills a cart and zed moves time past its window
        produce_raw(cfg, cfg.clicks_topic, [
            (ann.encode(), click_bytes(codec, f"{ann}-2", ann, "ADD_TO_CART", t0 + 32 * MIN,
                                       **CART)),
            (ann.encode(), click_bytes(codec, f"{ann}-3", ann, "PAGE_VIEW", t0 + 32 * MIN,
                                       quantity=0)),
            (bob.encode(), click_bytes(codec, f"{bob}-3", bob, "PAGE_VIEW", t0 + 32 * MIN,
                                       quantity=0)),
            (cy.encode(), click_bytes(codec, f"{cy}-1", cy, "ADD_TO_CART", t0 + 32 * MIN,
                                      **CART))])
        flink_jobs.wait_until_read(cfg, job_id, "clicks", 7)  # 3 before, these 4
        produce_raw(cfg, cfg.clicks_topic, [
            (zed.encode(), click_bytes(codec, f"{zed}-2", zed, "PAGE_VIEW", t0 + 65 * MIN))])
        changes.wait_for(lambda r: "cart-abandoners" in membership(r, cy), timeout_s=120,
                         what="cy's abandoned cart (time moved past ann's second cart)")
        letters.wait_for(lambda r: any(key == bob.encode() for key, _, _ in r), timeout_s=60,
                         what="bob's invalid click dead-lettered")
        for reader in (changes, letters):
            reader.drain(3)
        triggers.drain(6)
        exported = prometheus_lines(job_id)
    finally:
        flink_jobs.cancel(cfg, job_id)
        changes.close()
        letters.close()
        triggers.close()

    # the outputs: every segment she was in EXITed, at her own event time, and nothing after
    ann_records = [r for _, name, r in changes.records
                   if name == "SegmentChange" and r["user_id"] == ann]
    erased = [r for r in ann_records if r["reason"] == "user erased"]
    # what she was in when erased: every change of hers before the erasure's EXITs
    inside = membership([(None, "SegmentChange", r) for r in ann_records
                         if r["reason"] != "user erased"], ann)
    assert CART_SEGMENTS <= inside
    assert sorted(r["segment_id"] for r in erased) == sorted(inside)
    assert ann_records[-len(erased):] == erased, "a change of ann's after her erasure"
    for r in erased:
        assert r["change"] == "EXIT" and r["churn_score"] is None
        assert t0 <= r["event_time"] <= t0 + 31 * MIN  # her clock, not the tombstone's time
    assert len({r["change_id"] for _, _, r in changes.records}) == len(changes.records)
    assert {r["trigger_id"] for _, _, r in triggers.triggers() if r["user_id"] == ann} \
        == ann_triggers
    assert [r for key, _, r in letters.records if key == ann.encode()] == []
    assert [r["reason_code"] for key, _, r in letters.records if key == bob.encode()] == [
        "INVALID_FIELD"]
    assert CART_SEGMENTS <= membership(changes.records, bob)  # bob untouched

    # Cassandra: nothing of ann's in any table; bob's rows are there
    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    try:
        def rows(cql, *params):
            return list(session.execute(cql, list(params)))

        assert rows("SELECT segment_id FROM membership_by_user WHERE user_id = %s", ann) == []
        assert rows("SELECT change_id FROM membership_changes WHERE user_id = %s", ann) == []
        shipped = {s.id for s in load_catalog().segments} | inside
        for segment in sorted(shipped):
            assert rows("SELECT user_id FROM members_by_segment WHERE segment_id = %s AND "
                        "bucket = %s AND user_id = %s", segment, segment_bucket(ann), ann) \
                == [], segment
        bob_segments = {row.segment_id for row in rows(
            "SELECT segment_id FROM membership_by_user WHERE user_id = %s", bob)}
        assert CART_SEGMENTS <= bob_segments
        assert rows("SELECT change_id FROM membership_changes WHERE user_id = %s", bob)
    finally:
        session.cluster.shutdown()

    # Redis: ann's keys are gone, bob's are there, and every count matches the sets
    assert client.exists(keys.user_segments(cfg.redis_key_prefix, ann)) == 0
    assert client.exists(keys.user_churn(cfg.redis_key_prefix, ann)) == 0
    assert CART_SEGMENTS <= client.smembers(keys.user_segments(cfg.redis_key_prefix, bob))
    sets = {user: client.smembers(keys.user_segments(cfg.redis_key_prefix, user))
            for user in users}
    sizes = {segment: int(count) for segment, count in
             client.hgetall(keys.segment_sizes(cfg.redis_key_prefix)).items()}
    for segment in set(sizes) | set().union(*sets.values()):
        assert sizes.get(segment, 0) == sum(segment in s for s in sets.values()), segment

    # the counters: one erasure; ann's two later clicks dropped
    assert metric_total(exported, "users_erased") == 1.0
    assert metric_total(exported, "inputs_dropped_erased") == 2.0
