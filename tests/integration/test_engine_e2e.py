"""The per-user engine on the real stack, submitted to the Flink session cluster: a scripted
scenario through Kafka, checked to the record on the segment-changes topic, in Cassandra and in
Redis; a definition changed through the control topic changes membership without a restart;
a late event and a malformed record reach the dead-letter topic."""

import re
import subprocess
import sys
import time

import pytest
import redis

from infra import deploy
from jobs.cli import defs, wiring
from jobs.config import as_flags
from models import CHURN_ONNX
from schemas.codec import Codec
from tests.builders import CART, DAY_MS, click_bytes, metadata_bytes
from tests.integration.kafka_io import TopicReader, produce_raw
from udfs.churn import ChurnModel
from udfs.stores import keys
from udfs.stores.membership import segment_bucket

pytestmark = pytest.mark.integration

MIN = 60_000


@pytest.fixture
def engine_cfg(isolated_cfg):
    from jobs.config import replace

    return replace(isolated_cfg, idleness_ms=500, max_out_of_orderness_ms=2000)


@pytest.fixture
def running_job(engine_cfg):
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--no-watch", *as_flags(engine_cfg),
           "--checkpoint-interval-ms", "1000", "--parallelism", "2",
           "--idleness-ms", str(engine_cfg.idleness_ms),
           "--max-out-of-orderness-ms", str(engine_cfg.max_out_of_orderness_ms),
           "--starting-offsets", "earliest"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"job ([0-9a-f]{32}) submitted", proc.stdout).group(1)
    deploy.wait_for_state(engine_cfg.flink_rest_url, job_id, {"RUNNING"}, 120)
    yield job_id
    if deploy.job_state(engine_cfg.flink_rest_url, job_id) not in {"FAILED", "FINISHED",
                                                                    "CANCELED"}:
        deploy.cancel(engine_cfg.flink_rest_url, job_id)


# the churn model scores every evaluation; whether these short scripted histories cross its
# high-risk band is the model's business, so churn-risk-high is left out of the exact checks
# (every change must still carry the model's score and version)
CHURN = "churn-risk-high"


def _changes(records):
    return [(r["user_id"], r["segment_id"], r["change"], r["event_time"])
            for _, name, r in records if name == "SegmentChange" and r["segment_id"] != CHURN]


def test_scripted_scenario_to_the_record(engine_cfg, running_job, tmp_path):
    cfg = engine_cfg
    codec = Codec.load()
    run = cfg.consumer_group
    alice, bob, carol, dave = (f"{run}-{n}" for n in ("alice", "bob", "carol", "dave"))
    t0 = (int(time.time() * 1000) // MIN - 120) * MIN  # two hours ago, on a minute
    changes = TopicReader(cfg, cfg.segment_changes_topic, codec)
    letters = TopicReader(cfg, cfg.dead_letter_topic, codec)
    try:
        # 1. metadata joins: bob signed up two days before t0 -> a new sign-up
        produce_raw(cfg, cfg.user_metadata_topic, [(bob.encode(), metadata_bytes(
            codec, bob, "Europe/Berlin", at=t0, signup_time=t0 - 2 * DAY_MS, email=True,
            push=True, in_app=True))])
        changes.wait_for(lambda r: len(_changes(r)) >= 1, what="bob's sign-up ENTER")

        # 2. carts: alice abandons hers; bob buys
        produce_raw(cfg, cfg.clicks_topic, [
            (alice.encode(), click_bytes(codec, f"{run}-a1", alice, "ADD_TO_CART", t0, **CART)),
            (bob.encode(), click_bytes(codec, f"{run}-b1", bob, "ADD_TO_CART", t0 + 1000, **CART)),
            (bob.encode(), click_bytes(codec, f"{run}-b2", bob, "PURCHASE", t0 + MIN,
                                       order_id="o1", **CART)),
            (alice.encode(), click_bytes(codec, f"{run}-a1", alice, "ADD_TO_CART", t0, **CART)),
            (b"junk", b"\x00 not a click"),
        ])
        changes.wait_for(lambda r: len(_changes(r)) >= 4, what="cart ENTER/EXITs")

        # 3. event time moves past alice's 30 minutes; then an event 31 minutes behind is late
        produce_raw(cfg, cfg.clicks_topic, [
            (carol.encode(), click_bytes(codec, f"{run}-c1", carol, "PAGE_VIEW", t0 + 31 * MIN))])
        changes.wait_for(lambda r: len(_changes(r)) >= 5, what="alice's cart-abandoners ENTER")
        produce_raw(cfg, cfg.clicks_topic, [
            (dave.encode(), click_bytes(codec, f"{run}-d1", dave, "PAGE_VIEW", t0))])
        letters.wait_for(lambda r: {rec["reason_code"] for _, _, rec in r} >=
                         {"INVALID_AVRO", "LATE_EVENT"}, what="dead letters")

        # 4. a stricter high-value-cart (v2: over $200) is published while the job runs
        definition = tmp_path / "high-value-cart.yaml"
        definition.write_text(
            "id: high-value-cart\nversion: 2\ndescription: Cart worth more than $200.\n"
            "condition:\n  feature: {name: cart_value, op: '>', value: 200}\n")
        defs.publish(cfg, [str(definition)], "integration-test", int(time.time() * 1000),
                     say=lambda _: None)
        applied = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
        deadline = time.monotonic() + 60
        while applied.hget(defs.applied_definitions_key(cfg), "high-value-cart") != \
                "v2 UPSERT":
            assert time.monotonic() < deadline, "the job did not apply high-value-cart v2"
            time.sleep(0.5)
        produce_raw(cfg, cfg.clicks_topic, [
            (alice.encode(), click_bytes(codec, f"{run}-a2", alice, "PAGE_VIEW", t0 + 32 * MIN))])
        changes.wait_for(lambda r: len(_changes(r)) >= 6, what="alice's EXIT under v2")
        records = changes.drain()
    finally:
        changes.close()
        letters.close()

    assert sorted(_changes(records)) == sorted([
        (bob, "new-signups-7d", "ENTER", t0 - 86_400_000),
        (alice, "high-value-cart", "ENTER", t0),
        (bob, "high-value-cart", "ENTER", t0 + 1000),
        (bob, "high-value-cart", "EXIT", t0 + MIN),
        (alice, "cart-abandoners", "ENTER", t0 + 30 * MIN),
        # v2 applies at alice's first evaluation after it is in force: the cart campaigns wait a
        # minute for her metadata (METADATA_GRACE_MS) and that check, at t0 + 31 min, is due
        # once a2 moves the watermark past it
        (alice, "high-value-cart", "EXIT", t0 + 31 * MIN),
    ])
    by_key = {(r["user_id"], r["segment_id"], r["change"]): (key, r)
              for key, _, r in records}
    key, exit_v2 = by_key[(alice, "high-value-cart", "EXIT")]
    assert key == alice.encode()
    assert exit_v2["definition_version"] == 2
    assert exit_v2["reason"].startswith("definition changed to v2")
    assert exit_v2["cause_event_id"] is None  # a time-driven check, not an event
    assert len({r["change_id"] for _, _, r in records}) == len(records)  # no change twice
    model = ChurnModel.load(CHURN_ONNX)
    for _, _, r in records:
        if r["cause_event_id"] is not None or r["user_id"] == alice:  # users with events
            assert r["model_version"] == model.version and 0 <= r["churn_score"] <= 1, r
        else:  # bob's sign-up came from metadata alone, before any event: nothing scored
            assert (r["churn_score"], r["model_version"]) == (None, None), r

    # Cassandra holds the same membership, by user, by segment bucket, and the history
    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    try:
        def members(user):
            return {row.segment_id: row.definition_version for row in session.execute(
                "SELECT segment_id, definition_version FROM membership_by_user "
                "WHERE user_id = %s", [user]) if row.segment_id != CHURN}

        assert members(alice) == {"cart-abandoners": 1}
        assert members(bob) == {"new-signups-7d": 1}
        assert members(carol) == {} and members(dave) == {}
        in_segment = session.execute(
            "SELECT user_id FROM members_by_segment WHERE segment_id = %s AND bucket = %s",
            ["cart-abandoners", segment_bucket(alice)])
        assert alice in {row.user_id for row in in_segment}
        history = sorted((row.segment_id, row.change) for row in session.execute(
            "SELECT segment_id, change FROM membership_changes WHERE user_id = %s", [alice])
            if row.segment_id != CHURN)
        assert history == [("cart-abandoners", "ENTER"), ("high-value-cart", "ENTER"),
                           ("high-value-cart", "EXIT")]
    finally:
        session.cluster.shutdown()

    # Redis serves the same sets
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    def served(user):
        return client.smembers(keys.user_segments(cfg.redis_key_prefix, user)) - {CHURN}

    assert served(alice) == {"cart-abandoners"}
    assert served(bob) == {"new-signups-7d"}
    churn = client.hgetall(keys.user_churn(cfg.redis_key_prefix, alice))
    assert churn["model_version"] == model.version and 0 <= float(churn["score"]) <= 1
    assert client.ttl(keys.user_segments(cfg.redis_key_prefix, alice)) > 0
