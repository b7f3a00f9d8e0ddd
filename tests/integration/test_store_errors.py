"""Store errors and the Redis rebuild on the real stack.

- the writer against the real Cassandra and Redis: a 100 KB user id (Cassandra refuses keys
  over 65,535 bytes) and a WRONGTYPE key (Redis refuses the change) come back as rejections,
  the other changes land;
- poison records through the running job: their changes go to the dead-letter topic as
  STORE_REJECTED (from an event and from a timer), the job keeps RUNNING with no restart;
- Redis killed (kill -9) after writes and restarted empty: `nudgeflow stores rebuild-redis`
  and the writer's automatic rebuild put back exactly what Cassandra holds, idempotently;
- the campaign statistics' writes to a real Redis (a private redis-server) killed and restarted:
  the operator goes on counting, retries, and Redis ends with the totals of every fact.

The writers here run their clients in a child process (``udfs.stores.client_process``, the
job's default) unless a test says in-task.
"""

import json
import shutil
import subprocess
import sys
import time
import uuid

import pytest
import redis

from infra import deploy
from jobs.cli import wiring
from jobs.config import load_config, replace
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.drills import runner
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw
from tests.pipeline import test_campaign_stats_writes as stats_operator
from tests.ports import free_port
from udfs.attribution.stats import to_doc
from udfs.stores import keys
from udfs.stores.campaign_stats import StatsStoreFactory
from udfs.stores.membership import CassandraRedisStore

pytestmark = pytest.mark.integration

MIN = 60_000
BIG = "x" * 100_000


def _change(user, segment, n=1, change="ENTER"):
    return {"change_id": f"{user[:20]}-{segment}-{n}", "user_id": user, "segment_id": segment,
            "change": change, "definition_version": 1, "event_time": 1_800_000_000_000 + n,
            "reason": "test", "churn_score": 0.5, "model_version": "m1"}


@pytest.fixture
def own_keyspace(local_stack):
    """A configuration with a Cassandra keyspace and Redis prefix of this test's own."""
    run = uuid.uuid4().hex[:8]
    cfg = replace(load_config(env={}), cassandra_keyspace=f"it_{run}", redis_key_prefix=f"it-{run}")
    wiring.provision_cassandra(cfg, say=lambda _: None)
    yield cfg
    runner.drop_keyspace(cfg)


def _store(cfg, client_process=True, batch_changes=3):
    return CassandraRedisStore((cfg.cassandra_hosts,), cfg.cassandra_port,
                               cfg.cassandra_keyspace, cfg.redis_url, cfg.redis_key_prefix,
                               client_process=client_process, batch_changes=batch_changes)


def test_batches_of_ten_changes_land_and_a_refused_one_is_found_among_them(own_keyspace):
    # 23 changes of 23 users in 3 Cassandra requests (up to 30 partitions each: the local
    # stack warns above 64); the poison change's batch is written again change by change
    cfg = own_keyspace
    users = [f"user-{n}" for n in range(23)]
    changes = [_change(user, f"s{n % 7}", n) for n, user in enumerate(users)]
    changes[14] = _change(BIG, "s0", 14)
    writer = _store(cfg, batch_changes=10)()
    try:
        rejections = writer.write_many(changes)
    finally:
        writer.close()
    assert [(r.store, r.change["user_id"]) for r in rejections] == [("cassandra", BIG)]
    landed = {user: {f"s{n % 7}"} for n, user in enumerate(users) if n != 14}
    assert runner.cassandra_memberships(cfg, set(users)) == landed


@pytest.mark.parametrize("client_process", [False, True], ids=["in-task", "process"])
def test_each_store_refuses_its_poison_change_and_the_others_land(own_keyspace, client_process):
    cfg = own_keyspace
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    client.set(keys.user_segments(cfg.redis_key_prefix, "wrongtype"), "not a set")
    writer = _store(cfg, client_process)()
    try:
        rejections = writer.write_many([_change("ok", "s1"), _change(BIG, "s1"),
                                        _change("wrongtype", "s1")])
    finally:
        writer.close()
    by_store = {r.store: r for r in rejections}
    assert set(by_store) == {"cassandra", "redis"}
    assert by_store["cassandra"].change["user_id"] == BIG
    assert "Key length of 100000 is longer than maximum of 65535" in by_store["cassandra"].error
    assert by_store["redis"].change["user_id"] == "wrongtype"
    assert "WRONGTYPE" in by_store["redis"].error
    assert len(by_store["cassandra"].reason()) < 1000  # the 100 KB id is cut
    assert client.smembers(keys.user_segments(cfg.redis_key_prefix, "ok")) == {"s1"}
    assert runner.cassandra_memberships(cfg, {"ok", "wrongtype"}) == {
        "ok": {"s1"}, "wrongtype": {"s1"}}


def test_poison_records_are_dead_lettered_and_the_job_goes_on(isolated_cfg):
    # intake refuses a 100 KB user id by default (ID_TOO_LONG): raise the limits so the poison
    # reaches Cassandra, whose own refusal must not stop the job either; and keep the refused
    # change's bytes in its dead letter (over dead_letter_raw_max_bytes, 64 KiB by default, a
    # letter keeps only the reason, with the user id cut and hashed)
    cfg = replace(isolated_cfg, idleness_ms=500, max_out_of_orderness_ms=2000,
                  churn_model="off", checkpoint_interval_ms=1000, max_id_bytes=200_000,
                  max_record_bytes=400_000, dead_letter_raw_max_bytes=400_000)
    codec = Codec.load()
    run = cfg.consumer_group
    ok, wrong = f"{run}-ok", f"{run}-wrongtype"
    big = f"{run}-" + BIG
    redis.Redis.from_url(cfg.redis_url).set(keys.user_segments(cfg.redis_key_prefix, wrong), "!")
    t0 = (int(time.time() * 1000) // MIN - 120) * MIN
    produce_raw(cfg, cfg.user_metadata_topic, [
        (u.encode(), metadata_bytes(codec, u, "UTC", at=t0)) for u in (ok, wrong, big)])
    job_id = flink_jobs.submit(cfg, fields=(*runner.DRILL_FIELDS, "max_id_bytes",
                                            "max_record_bytes", "dead_letter_raw_max_bytes"))
    try:
        produce_raw(cfg, cfg.clicks_topic, [
            (u.encode(), click_bytes(codec, f"{u[:40]}-cart", u, "ADD_TO_CART", t0, **CART))
            for u in (ok, big, wrong)])
        # the clock moves only once the carts are read (flink_jobs.wait_until_read says why)
        flink_jobs.wait_until_read(cfg, job_id, "clicks", 3)
        # event time moves 45 minutes on: the cart-abandoners timers of all three fire
        clock = f"{run}-clock"
        produce_raw(cfg, cfg.clicks_topic, [(clock.encode(), click_bytes(
            codec, f"{clock}-1", clock, "PAGE_VIEW", t0 + 45 * MIN))])
        changes = TopicReader(cfg, cfg.segment_changes_topic, codec)
        letters = TopicReader(cfg, cfg.dead_letter_topic, codec)
        try:
            changes.wait_for(lambda rs: {r["segment_id"] for _, _, r in rs
                                         if r["user_id"] == ok} >= {"cart-abandoners",
                                                                     "high-value-cart"},
                             120, "the valid user's changes")
            letters.wait_for(lambda rs: len(rs) >= 4, 60, "four dead letters")
            changes.drain(4)
            letters.drain(4)
        finally:
            changes.close()
            letters.close()
        state = deploy.job_state(cfg.flink_rest_url, job_id)
        history = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}/exceptions")
    finally:
        flink_jobs.cancel(cfg, job_id)

    assert state == "RUNNING"
    assert history.get("exceptionHistory", {}).get("entries", []) == []
    changed_users = {r["user_id"] for _, name, r in changes.records if name == "SegmentChange"}
    assert ok in changed_users and big not in changed_users and wrong not in changed_users
    dead = [r for _, name, r in letters.records if name == "DeadLetter"]
    by_stage = {}
    for letter in dead:
        by_stage.setdefault(letter["stage"], []).append(letter)
    assert {"store:cassandra", "store:redis"} <= set(by_stage), [d["reason"] for d in dead]
    for letter in by_stage["store:cassandra"] + by_stage["store:redis"]:
        assert letter["reason_code"] == "STORE_REJECTED"
        assert letter["reason"].startswith("STORE_REJECTED: ")
        assert letter["source_topic"] == cfg.segment_changes_topic
        assert len(letter["reason"]) < 1000
        refused = codec.decode(letter["raw"], expect="SegmentChange")
        assert refused["change"] == "ENTER"
    segments = {codec.decode(letter["raw"], expect="SegmentChange")["segment_id"]
                for letter in by_stage["store:cassandra"]}
    # high-value-cart enters at the click, cart-abandoners at a timer: both paths dead-letter
    assert segments == {"high-value-cart", "cart-abandoners"}


def _kill_redis_and_wipe(local_stack):
    st = runner.Stack(local_stack, load_config(env={}))
    st.kill("redis")
    st.wipe_redis_data()
    st.start("redis")


def _redis_sets(cfg, users):
    return runner.redis_memberships(cfg, set(users))


def test_redis_killed_and_restarted_empty_is_rebuilt_from_cassandra(own_keyspace, local_stack):
    cfg = own_keyspace
    users = [f"u{i:03d}" for i in range(300)]
    writer = _store(cfg)()
    try:
        changes = [_change(u, f"s{i % 3}", i) for i, u in enumerate(users)]
        changes += [_change(u, "s9", 1000 + i) for i, u in enumerate(users[:50])]
        changes += [_change(u, "s9", 2000 + i, "EXIT") for i, u in enumerate(users[:10])]
        for i in range(0, len(changes), 50):
            assert writer.write_many(changes[i:i + 50]) == []
    finally:
        writer.close()
    in_cassandra = runner.cassandra_memberships(cfg, set(users))
    assert _redis_sets(cfg, users) == in_cassandra
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    sizes = client.hgetall(keys.segment_sizes(cfg.redis_key_prefix))

    _kill_redis_and_wipe(local_stack)
    assert _redis_sets(cfg, users) == {}
    # the command, twice (idempotent)
    for _ in range(2):
        proc = subprocess.run([sys.executable, "-m", "jobs.cli", "stores", "rebuild-redis",
                               "--cassandra-keyspace", cfg.cassandra_keyspace,
                               "--redis-key-prefix", cfg.redis_key_prefix],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "300 users" in proc.stdout and "memberships" in proc.stdout
        assert _redis_sets(cfg, users) == in_cassandra
        assert client.hgetall(keys.segment_sizes(cfg.redis_key_prefix)) == sizes
    assert client.hget(keys.user_churn(cfg.redis_key_prefix, "u001"), "model_version") == "m1"

    # automatically: Redis comes back empty again; the next write rebuilds it first
    _kill_redis_and_wipe(local_stack)
    writer = _store(cfg)()  # the marker is missing at open: rebuilt here
    try:
        assert _redis_sets(cfg, users) == in_cassandra
        _kill_redis_and_wipe(local_stack)
        assert writer.write_many([_change("u000", "s7", 5000)]) == []  # ... or at a write
    finally:
        writer.close()
    in_cassandra["u000"].add("s7")
    assert _redis_sets(cfg, users) == in_cassandra
    sizes["s7"] = "1"
    assert client.hgetall(keys.segment_sizes(cfg.redis_key_prefix)) == sizes


def _private_redis(port, data_dir):
    """A plain redis-server on loopback at ``port``, no persistence; waits until it answers."""
    binary = shutil.which("redis-server")
    assert binary, "redis-server is missing (the local stack installs it)"
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(data_dir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 20
    while True:
        try:
            if redis.Redis(port=port, socket_timeout=1).ping():
                return proc
        except redis.exceptions.ConnectionError:
            assert proc.poll() is None, "the private redis-server exited at start"
            assert time.monotonic() < deadline, "the private redis-server did not answer"
            time.sleep(0.1)


def test_campaign_statistics_outlive_a_redis_outage_without_failing_the_operator(tmp_path):
    port = free_port()
    server = _private_redis(port, tmp_path)
    store = StatsStoreFactory(f"redis://127.0.0.1:{port}/0", "it-stats")()
    runtime, function = stats_operator._with(store)
    facts = stats_operator._facts(300, seed=21)
    try:
        for fact in facts[:100]:
            stats_operator._feed(function, runtime, fact)
        runtime.now += stats_operator.WRITE_EVERY_MS
        assert stats_operator._due(runtime) == 3
        assert store.read_all().keys() == {"a", "b", "c"}

        server.kill()  # kill -9: Redis is gone mid-run
        server.wait(10)
        for fact in facts[100:]:
            stats_operator._feed(function, runtime, fact)
        for _ in range(3):  # its timers fail and are set again; the operator raises nothing
            runtime.now = max(at for _, at in runtime.timers)
            assert stats_operator._due(runtime) == 3
        # one write tried per backoff (the other units wait for it), three backoffs
        assert runtime.metrics.counts["campaign_stats_write_failures"] == 3
        assert sorted(u for u, _ in runtime.timers) == ["a", "b", "c"]

        server = _private_redis(port, tmp_path)  # back, empty (no persistence)
        runtime.now = max(at for _, at in runtime.timers)
        assert stats_operator._due(runtime) == 3
        written = {unit: json.dumps(to_doc(stats), sort_keys=True)
                   for unit, stats in store.read_all().items()}
        assert written == stats_operator._reference(facts)
    finally:
        function.close()
        server.kill()
        server.wait(10)
