"""The membership writer's logic with fake Cassandra/Redis clients (the real ones are exercised
by tests/integration)."""

import pytest

from udfs.stores import membership as ms

CHANGE = {"change_id": "c1", "user_id": "u1", "segment_id": "s1", "change": "ENTER",
          "definition_version": 3, "event_time": 1_800_000_000_000, "reason": "r",
          "churn_score": 0.2, "model_version": "m1"}


class Flaky(Exception):
    pass


def test_retry_policy_backs_off_exponentially_until_success():
    sleeps, calls = [], []

    def action():
        calls.append(1)
        if len(calls) < 5:
            raise Flaky("down")

    ms.RetryPolicy(first_delay_s=0.1, max_delay_s=0.5).run("w", action, (Flaky,),
                                                          sleep=sleeps.append)
    assert len(calls) == 5
    assert sleeps == [0.1, 0.2, 0.4, 0.5]  # capped: an outage is waited out, not given up on


def test_retry_policy_raises_non_transient_errors_at_once():
    def action():
        raise ValueError("bad statement")

    with pytest.raises(ValueError):
        ms.RetryPolicy().run("w", action, (Flaky,), sleep=lambda _: None)


def test_retry_policy_can_be_bounded():
    retries = []
    with pytest.raises(Flaky):
        ms.RetryPolicy(max_attempts=3).run("w", lambda: (_ for _ in ()).throw(Flaky("x")),
                                           (Flaky,), on_retry=lambda: retries.append(1),
                                           sleep=lambda _: None)
    assert len(retries) == 2


def test_segment_bucket_is_stable_and_in_range():
    assert ms.segment_bucket("u1") == ms.segment_bucket("u1")
    assert {ms.segment_bucket(f"u{i}") for i in range(1000)} == set(range(ms.SEGMENT_BUCKETS))


class FakeFuture:
    def __init__(self, error=None):
        self.error = error

    def result(self):
        if self.error:
            raise self.error


class FakeSession:
    def __init__(self, failures=0):
        self.failures = failures
        self.executed = []

    def prepare(self, cql):
        return cql

    def execute_async(self, batch, timeout):
        if self.failures:
            self.failures -= 1
            return FakeFuture(Flaky("cassandra timeout"))
        self.executed.append(batch)
        return FakeFuture()

    def execute(self, batch, timeout):
        self.executed.append(batch)


class FakePipeline:
    def __init__(self, log):
        self.log = log

    def sadd(self, key, member):
        self.log.append(("sadd", key, member))

    def srem(self, key, member):
        self.log.append(("srem", key, member))

    def expire(self, key, ttl):
        self.log.append(("expire", key, ttl))

    def hset(self, key, mapping):
        self.log.append(("hset", key, mapping))

    def evalsha(self, sha, numkeys, *keys_and_args):
        assert sha == "sha-of-membership" and numkeys == 2
        self.log.append(("membership", *keys_and_args))

    def execute(self):
        self.log.append(("exec",))


class FakeRedis:
    def __init__(self):
        self.log = []

    def pipeline(self, transaction):
        return FakePipeline(self.log)


def _writer(session, redis_client):
    writer = ms.CassandraRedisWriter.__new__(ms.CassandraRedisWriter)
    writer.session, writer.redis, writer.prefix = session, redis_client, "nf"
    writer.retry = ms.RetryPolicy(first_delay_s=0)
    writer.on_retry = lambda: None
    writer.transient = (Flaky,)
    writer.membership_sha = "sha-of-membership"
    for name in ("upsert_member", "delete_member", "upsert_segment_member",
                 "delete_segment_member", "insert_history"):
        setattr(writer, name, name)
    return writer


class FakeBatch:
    def __init__(self, batch_type=None):
        self.batch_type = batch_type
        self.items = []

    def add(self, statement, parameters):
        self.items.append((statement, parameters))


@pytest.fixture(autouse=True)
def fake_batches(monkeypatch):
    import cassandra.query

    monkeypatch.setattr(cassandra.query, "BatchStatement", FakeBatch)


def test_enter_upserts_three_tables_and_adds_to_the_redis_set():
    session, client = FakeSession(), FakeRedis()
    _writer(session, client).write_many([CHANGE])
    [batch] = session.executed
    assert [statement for statement, _ in batch.items] == [
        "upsert_member", "upsert_segment_member", "insert_history"]
    assert batch.items[1][1] == ("s1", ms.segment_bucket("u1"), "u1", 3, batch.items[1][1][4])
    assert client.log == [
        ("membership", "nf:user:u1", "nf:segment-sizes", "ENTER", "s1", ms.REDIS_TTL_S),
        ("hset", "nf:user:u1:churn", {"score": 0.2, "model_version": "m1",
                                      "event_time": CHANGE["event_time"]}),
        ("expire", "nf:user:u1:churn", ms.REDIS_TTL_S), ("exec",)]


def test_exit_deletes_and_removes_from_the_redis_set():
    session, client = FakeSession(), FakeRedis()
    _writer(session, client).write_many([{**CHANGE, "change": "EXIT"}])
    assert client.log[0] == ("membership", "nf:user:u1", "nf:segment-sizes", "EXIT", "s1",
                             ms.REDIS_TTL_S)
    assert [statement for statement, _ in session.executed[0].items] == [
        "delete_member", "delete_segment_member", "insert_history"]


def test_a_failed_cassandra_write_is_retried_until_it_lands():
    session, client = FakeSession(failures=1), FakeRedis()
    _writer(session, client).write_many([CHANGE])
    assert len(session.executed) == 1  # the retry wrote it once


def test_a_steps_changes_go_to_redis_in_one_round_trip_and_cassandra_together():
    session, client = FakeSession(), FakeRedis()
    second = {**CHANGE, "segment_id": "s2", "change_id": "c2", "change": "EXIT"}
    _writer(session, client).write_many([CHANGE, second])
    assert [batch.items[0][0] for batch in session.executed] == ["upsert_member",
                                                                  "delete_member"]
    assert [entry[0] for entry in client.log].count("exec") == 1
    assert [entry[3:5] for entry in client.log if entry[0] == "membership"] == [
        ("ENTER", "s1"), ("EXIT", "s2")]


def test_a_failed_cassandra_batch_among_several_is_retried_alone():
    session, client = FakeSession(failures=1), FakeRedis()
    second = {**CHANGE, "segment_id": "s2", "change_id": "c2"}
    _writer(session, client).write_many([CHANGE, second])
    # the first batch failed in flight and was written again; the second landed at once
    assert [batch.items[0][1][1] for batch in session.executed] == ["s2", "s1"]


def test_a_redis_that_lost_its_scripts_gets_the_script_again():
    from redis.exceptions import NoScriptError

    class ForgetfulPipeline(FakePipeline):
        def execute(self):
            if client.loaded is None:
                raise NoScriptError("NOSCRIPT No matching script")
            super().execute()

    class ForgetfulRedis(FakeRedis):
        loaded = None

        def pipeline(self, transaction):
            return ForgetfulPipeline(self.log)

        def script_load(self, script):
            assert "SADD" in script
            self.loaded = "sha-of-membership"
            return self.loaded

    session, client = FakeSession(), ForgetfulRedis()
    _writer(session, client).write_many([CHANGE])
    assert client.log.count(("exec",)) == 1


def test_every_redis_key_has_one_spelling():
    from udfs.stores import keys

    assert keys.user_segments("nf", "u1") == "nf:user:u1"
    assert keys.user_churn("nf", "u1") == "nf:user:u1:churn"
    assert keys.segment_sizes("nf") == "nf:segment-sizes"
    assert keys.definitions("nf") == "nf:definitions"
    assert keys.sent("nf", "t1") == "nf:sent:t1"
