"""The membership writer's logic with fake Cassandra/Redis clients (the real ones are exercised
by tests/integration)."""

import time

import pytest

from udfs.stores import membership as ms

CHANGE = {"change_id": "c1", "user_id": "u1", "segment_id": "s1", "change": "ENTER",
          "definition_version": 3, "event_time": 1_800_000_000_000, "reason": "r",
          "churn_score": 0.2, "model_version": "m1"}


class Flaky(TimeoutError):
    """A transient store error (classify: an OSError/TimeoutError the table does not name)."""


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


def test_write_rounds_keep_a_users_segment_changes_in_separate_rounds_in_order():
    import random

    rng = random.Random(7)
    for _ in range(300):
        changes = [{"change_id": f"c{n}", "user_id": rng.choice("abc"),
                    "segment_id": rng.choice("xyz")} for n in range(rng.randint(0, 12))]
        rounds = ms.write_rounds(changes)
        assert [c for r in rounds for c in r] == changes  # nothing lost, reordered or repeated
        for index, round_ in enumerate(rounds):
            keys = [(c["user_id"], c["segment_id"]) for c in round_]
            assert round_ and len(set(keys)) == len(keys)  # a pair at most once per round
            if index + 1 < len(rounds):  # a round ends only where a pair repeats
                first = rounds[index + 1][0]
                assert (first["user_id"], first["segment_id"]) in keys


def test_write_rounds_of_distinct_pairs_are_one_round():
    changes = [{"user_id": u, "segment_id": s} for u in "ab" for s in "xy"]
    assert ms.write_rounds(changes) == [changes]
    assert ms.write_rounds([]) == []


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
        self.results = []

    def get(self, key):
        assert key == "nf:rebuild-marker"
        self.results.append(b"rid")

    def info(self, section):
        self.results.append({"run_id": "rid"})

    def expire(self, key, ttl):
        self.log.append(("expire", key, ttl))
        self.results.append(True)

    def hset(self, key, mapping):
        self.log.append(("hset", key, mapping))
        self.results.append(3)

    def evalsha(self, sha, numkeys, *keys_and_args):
        assert sha == "sha-of-membership" and numkeys == 2
        self.log.append(("membership", *keys_and_args))
        self.results.append(1)

    def execute(self, raise_on_error=True):
        assert raise_on_error is False  # errors come back per command, classified per change
        self.log.append(("exec",))
        return self.results


class FakeRedis:
    def __init__(self):
        self.log = []

    def pipeline(self, transaction):
        return FakePipeline(self.log)


def _writer(session, redis_client):
    writer = ms.CassandraRedisWriter.__new__(ms.CassandraRedisWriter)
    writer.session, writer.redis, writer.prefix = session, redis_client, "nf"
    writer.keyspace = "ks"
    writer.retry = ms.RetryPolicy(first_delay_s=0)
    writer.on_retry = lambda: None
    writer.on_rebuild = lambda _: None
    writer.run_id_checked_at = 0.0
    writer.rebuild_needed = False
    writer.batch_changes = ms.CASSANDRA_BATCH_CHANGES
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
    [(_, _, written)] = [entry for entry in client.log if entry[1:2] == ("nf:segment-sizes-at",)]
    assert abs(written["s1"] - time.time() * 1000) < 60_000  # when the size last moved
    assert client.log == [
        ("membership", "nf:user:u1", "nf:segment-sizes", "ENTER", "s1", ms.REDIS_TTL_S),
        ("hset", "nf:segment-sizes-at", written),
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
    # one Cassandra batch (one request) of both changes' statements
    assert [[item[0] for item in batch.items] for batch in session.executed] == [
        ["upsert_member", "upsert_segment_member", "insert_history",
         "delete_member", "delete_segment_member", "insert_history"]]
    assert [entry[0] for entry in client.log].count("exec") == 1
    assert [entry[3:5] for entry in client.log if entry[0] == "membership"] == [
        ("ENTER", "s1"), ("EXIT", "s2")]


def _apply(log):
    """The Redis state a FakePipeline log leaves: sets, sizes, sizes-at keys, churn hashes."""
    state = {"sets": {}, "sizes": {}, "sizes_at": set(), "churn": {}, "expiring": set()}
    for entry in log:
        if entry[0] == "membership":
            key, _, change, segment, _ = entry[1:]
            members = state["sets"].setdefault(key, set())
            moved = (segment not in members) if change == "ENTER" else (segment in members)
            (members.add if change == "ENTER" else members.discard)(segment)
            if moved:
                delta = 1 if change == "ENTER" else -1
                state["sizes"][segment] = state["sizes"].get(segment, 0) + delta
        elif entry[0] == "hset" and entry[1] == "nf:segment-sizes-at":
            state["sizes_at"] |= set(entry[2])
        elif entry[0] == "hset":
            state["churn"][entry[1]] = dict(entry[2])
        elif entry[0] == "expire":
            state["expiring"].add(entry[1])
    return state


def _one_change_at_a_time(changes):
    """The reference: each change's writes on their own, in order (what Redis must end with)."""
    log = []
    for change in changes:
        log.append(("membership", f"nf:user:{change['user_id']}", "nf:segment-sizes",
                    change["change"], change["segment_id"], ms.REDIS_TTL_S))
        log.append(("hset", "nf:segment-sizes-at", {change["segment_id"]: 0}))
        if change.get("churn_score") is not None:
            churn_key = f"nf:user:{change['user_id']}:churn"
            log.append(("hset", churn_key, {"score": change["churn_score"],
                                            "model_version": change["model_version"],
                                            "event_time": change["event_time"]}))
            log.append(("expire", churn_key, ms.REDIS_TTL_S))
    return _apply(log)


def test_a_rounds_redis_writes_end_as_if_each_change_was_written_alone():
    import random

    rnd = random.Random(13)
    for _ in range(50):
        changes, taken = [], set()
        size = rnd.randrange(1, 31)  # of the 30 (user, segment) pairs
        while len(changes) < size:
            user, segment = f"u{rnd.randrange(6)}", f"s{rnd.randrange(5)}"
            if (user, segment) in taken:  # a round holds each (user, segment) once
                continue
            taken.add((user, segment))
            enter = rnd.random() < 0.6
            changes.append({**CHANGE, "change_id": f"c{len(changes)}", "user_id": user,
                            "segment_id": segment, "change": "ENTER" if enter else "EXIT",
                            "churn_score": round(rnd.random(), 3) if enter else None,
                            "event_time": CHANGE["event_time"] + len(changes)})
        client = FakeRedis()
        assert _writer(FakeSession(), client).write_many(changes) == []
        assert _apply(client.log) == _one_change_at_a_time(changes)
        # and cheaper: one sizes-at write per round, one churn hash per user
        hsets = [entry[1] for entry in client.log if entry[0] == "hset"]
        assert hsets.count("nf:segment-sizes-at") == 1
        assert len(hsets) - 1 == len({c["user_id"] for c in changes
                                      if c["churn_score"] is not None})


def test_a_refused_churn_hash_refuses_that_users_changes_only():
    from redis.exceptions import ResponseError

    class WrongTypeChurnPipeline(FakePipeline):
        def execute(self, raise_on_error=True):
            results = super().execute(raise_on_error)
            for position, entry in enumerate(self.log[:-1]):
                if entry[:2] == ("hset", "nf:user:u2:churn"):
                    # the marker's read comes first in the results, not in the log
                    results[position + 2] = ResponseError("WRONGTYPE Operation against a key")
            return results

    class WrongTypeRedis(FakeRedis):
        def pipeline(self, transaction):
            return WrongTypeChurnPipeline(self.log)

    changes = [{**CHANGE, "change_id": f"c{n}", "user_id": user, "segment_id": segment}
               for n, (user, segment) in enumerate([("u1", "s1"), ("u2", "s1"), ("u2", "s2"),
                                                    ("u3", "s2")])]
    rejections = _writer(FakeSession(), WrongTypeRedis()).write_many(changes)
    assert sorted(r.change["change_id"] for r in rejections) == ["c1", "c2"]
    assert all(r.store == "redis" and "WRONGTYPE" in r.reason() for r in rejections)


def test_a_failed_cassandra_batch_among_several_is_retried_alone():
    session, client = FakeSession(failures=1), FakeRedis()
    changes = [{**CHANGE, "segment_id": f"s{n}", "change_id": f"c{n}"} for n in range(1, 5)]
    _writer(session, client).write_many(changes)
    # batches of CASSANDRA_BATCH_CHANGES: the first failed in flight and its changes were
    # written again one by one; the second landed at once
    assert ms.CASSANDRA_BATCH_CHANGES == 3
    assert [[item[1][1] for item in batch.items if item[0] == "upsert_member"]
            for batch in session.executed] == [["s4"], ["s1"], ["s2"], ["s3"]]


def test_the_batch_size_is_the_writers_setting_and_every_change_is_written_once():
    session, client = FakeSession(), FakeRedis()
    writer = _writer(session, client)
    writer.batch_changes = 10
    changes = [{**CHANGE, "segment_id": f"s{n}", "change_id": f"c{n}"} for n in range(23)]
    writer.write_many(changes)
    assert [len(batch.items) // 3 for batch in session.executed] == [10, 10, 3]
    assert [item[1][1] for batch in session.executed for item in batch.items
            if item[0] == "upsert_member"] == [f"s{n}" for n in range(23)]


def test_the_job_hands_its_batch_size_to_the_writer():
    from jobs.config import ConfigError, load_config, replace
    from jobs.job import membership_store

    assert load_config(env={}).cassandra_batch_changes == ms.CASSANDRA_BATCH_CHANGES
    cfg = replace(load_config(env={}), cassandra_batch_changes=12)
    assert membership_store(cfg).batch_changes == 12
    with pytest.raises(ConfigError, match="cassandra_batch_changes must be >= 1"):
        replace(load_config(env={}), cassandra_batch_changes=0)


def test_a_redis_that_lost_its_scripts_gets_the_script_again():
    from redis.exceptions import NoScriptError

    class ForgetfulPipeline(FakePipeline):
        def execute(self, raise_on_error=True):
            if client.loaded is None:
                self.log.append(("noscript",))
                return [b"rid", {"run_id": "rid"}, NoScriptError("NOSCRIPT No matching script"),
                        3, True]
            return super().execute(raise_on_error)

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
    assert keys.sent("nf", "email-sender", "EMAIL", "t1") == "nf:sent:email-sender:EMAIL:t1"


# --- error classification -----------------------------------------------------------------------


@pytest.mark.parametrize(("store", "error", "expected"), [
    ("cassandra", "cassandra.OperationTimedOut", "transient"),
    ("cassandra", "cassandra.Unavailable", "transient"),
    ("cassandra", "cassandra.WriteTimeout", "transient"),
    ("cassandra", "cassandra.cluster.NoHostAvailable", "transient"),
    ("cassandra", "cassandra.InvalidRequest", "permanent"),
    ("cassandra", "cassandra.Unauthorized", "fatal"),
    ("cassandra", "cassandra.AuthenticationFailed", "fatal"),
    ("redis", "redis.exceptions.ConnectionError", "transient"),
    ("redis", "redis.exceptions.TimeoutError", "transient"),
    ("redis", "redis.exceptions.BusyLoadingError", "transient"),
    ("redis", "redis.exceptions.ResponseError", "permanent"),
    ("redis", "redis.exceptions.DataError", "permanent"),
    ("redis", "redis.exceptions.AuthenticationError", "fatal"),
])
def test_every_store_error_class_is_classified(store, error, expected):
    import importlib

    module, name = error.rsplit(".", 1)
    klass = getattr(importlib.import_module(module), name)
    assert ms.classify(store, klass.__new__(klass)) == expected


@pytest.mark.parametrize(("message", "expected"), [
    ("WRONGTYPE Operation against a key holding the wrong kind of value", "permanent"),
    ("Error running script (call to f_1): @user_script:4: WRONGTYPE Operation", "permanent"),
    ("OOM command not allowed when used memory > 'maxmemory'.", "transient"),
    ("LOADING Redis is loading the dataset in memory", "transient"),
    ("NOPERM this user has no permissions", "fatal"),
])
def test_redis_error_replies_are_classified_by_their_code(message, expected):
    from redis.exceptions import ResponseError

    assert ms.classify("redis", ResponseError(message)) == expected


def test_cassandra_refusing_a_key_is_permanent_but_a_missing_table_is_fatal():
    from cassandra import InvalidRequest

    assert ms.classify("cassandra", InvalidRequest(
        "Key length of 100000 is longer than maximum of 65535")) == "permanent"
    assert ms.classify("cassandra", InvalidRequest(
        "unconfigured table membership_by_user")) == "fatal"
    assert ms.classify("cassandra", InvalidRequest("Keyspace 'nope' does not exist")) == "fatal"


def test_an_unknown_error_is_fatal_not_silently_dead_lettered():
    assert ms.classify("cassandra", KeyError("?")) == "fatal"
    assert ms.classify("redis", OSError("broken pipe")) == "transient"


class RefusingSession(FakeSession):
    """Cassandra that refuses the change of one user for good."""

    def __init__(self, refused_user):
        super().__init__()
        self.refused_user = refused_user

    def _refusal(self, batch):
        from cassandra import InvalidRequest

        if any(item[0] == "upsert_member" and item[1][0] == self.refused_user
               for item in batch.items):  # the whole batch is refused, as Cassandra does
            return InvalidRequest("Key length of 100000 is longer than 65535")
        return None

    def execute_async(self, batch, timeout):
        error = self._refusal(batch)
        return FakeFuture(error) if error else super().execute_async(batch, timeout)

    def execute(self, batch, timeout):
        error = self._refusal(batch)
        if error:
            raise error
        super().execute(batch, timeout)


def test_a_change_cassandra_refuses_is_returned_not_raised_and_not_retried():
    retries = []
    session, client = RefusingSession("big"), FakeRedis()
    writer = _writer(session, client)
    writer.on_retry = lambda: retries.append(1)
    big = {**CHANGE, "user_id": "big", "change_id": "c2"}
    [rejection] = writer.write_many([CHANGE, big])
    assert rejection.store == "cassandra" and rejection.change is big
    assert rejection.reason().startswith("STORE_REJECTED: cassandra refused ENTER of segment")
    assert "InvalidRequest" in rejection.reason() and "upsert_member" not in rejection.reason()
    assert not retries  # refused for good: not retried
    # the two went in one batch, which Cassandra refused whole; written one by one, the other
    # change landed and the refused one was found
    assert [[item[1][0] for item in batch.items] for batch in session.executed] == [
        ["u1", "s1", "u1"]]


def test_a_change_redis_refuses_is_returned_with_the_error_reply():
    from redis.exceptions import ResponseError

    class WrongTypePipeline(FakePipeline):
        def execute(self, raise_on_error=True):
            results = super().execute(raise_on_error)
            results[2] = ResponseError("WRONGTYPE Operation against a key holding the wrong "
                                       "kind of value")
            return results

    class WrongTypeRedis(FakeRedis):
        def pipeline(self, transaction):
            return WrongTypePipeline(self.log)

    [rejection] = _writer(FakeSession(), WrongTypeRedis()).write_many([CHANGE])
    assert rejection.store == "redis" and "WRONGTYPE" in rejection.reason()


def test_a_long_value_is_cut_in_a_rejection_reason():
    rejection = ms.StoreRejection({**CHANGE, "user_id": "x" * 100_000}, "cassandra", "INSERT",
                                  "too long")
    assert len(rejection.reason()) < 1000
    assert "(100000 bytes, crc32 " in rejection.reason()


def test_a_fatal_store_error_fails_with_what_to_do():
    from cassandra import Unauthorized

    class Denied(FakeSession):
        def execute_async(self, batch, timeout):
            return FakeFuture(Unauthorized("User nf has no MODIFY permission"))

    with pytest.raises(ms.StoreConfigurationError, match="credentials, permissions"):
        _writer(Denied(), FakeRedis()).write_many([CHANGE])


def test_a_redis_without_its_rebuild_marker_is_rebuilt_and_the_step_written_again(monkeypatch):
    class EmptyRedisPipeline(FakePipeline):
        def get(self, key):
            self.results.append(None if not rebuilt else b"rid")

    class EmptyRedis(FakeRedis):
        def pipeline(self, transaction):
            return EmptyRedisPipeline(self.log)

    rebuilt = []
    monkeypatch.setattr(ms.rebuild, "ensure_rebuilt",
                        lambda *args, **kwargs: rebuilt.append(args[3]))
    client = EmptyRedis()
    _writer(FakeSession(), client).write_many([CHANGE])
    assert rebuilt == ["nf"]
    # the step's Redis writes ran before and again after the rebuild (idempotent)
    assert client.log.count(("exec",)) == 2


def test_user_keys_parse_back_to_their_user():
    from udfs.stores import keys

    assert keys.user_id_of("nf", keys.user_segments("nf", "a:b")) == ("a:b", "segments")
    assert keys.user_id_of("nf", keys.user_churn("nf", "u1")) == ("u1", "churn")
    assert keys.user_id_of("nf", keys.segment_sizes("nf")) is None
    assert keys.rebuild_marker("nf") == "nf:rebuild-marker"


# --- erasure (issue 15) ----------------------------------------------------------------------


class Row:
    def __init__(self, segment_id):
        self.segment_id = segment_id


class ErasingSession(FakeSession):
    """Cassandra whose membership_by_user lists ``listed`` for the user."""

    def __init__(self, listed, refuse_deletes=False):
        super().__init__()
        self.listed = listed
        self.refuse_deletes = refuse_deletes

    def execute(self, statement, parameters=None, timeout=None):
        if statement == "select_user_segments":
            self.executed.append((statement, parameters))
            return [Row(s) for s in self.listed]
        if self.refuse_deletes:
            from cassandra import InvalidRequest

            raise InvalidRequest("refused for the test")
        self.executed.append(statement)
        return []


class ErasingRedis(FakeRedis):
    def eval(self, script, numkeys, *keys_and_args):
        assert "SMEMBERS" in script and "DEL" in script and numkeys == 4
        self.log.append(("erase", *keys_and_args[:4]))
        return 0


def _erasing_writer(session, client):
    writer = _writer(session, client)
    for name in ("select_user_segments", "delete_user", "delete_user_history"):
        setattr(writer, name, name)
    return writer


def test_erasure_deletes_every_segment_row_then_the_users_partitions_and_redis_keys():
    session, client = ErasingSession(["old-segment", "s1"]), ErasingRedis()
    assert _erasing_writer(session, client).erase_user("u1", ["s1", "s2"]) == []
    assert session.executed[0] == ("select_user_segments", ("u1",))
    *segment_batches, last = session.executed[1:]
    bucket = ms.segment_bucket("u1")
    deleted = [params for batch in segment_batches for statement, params in batch.items
               if statement == "delete_segment_member"]
    # what Cassandra lists (a segment no longer defined) and what the engine knows, once each
    assert sorted(deleted) == [("old-segment", bucket, "u1"), ("s1", bucket, "u1"),
                               ("s2", bucket, "u1")]
    # the user's partitions go last: a retry after a crash still finds what to delete
    assert last.items == [("delete_user", ("u1",)), ("delete_user_history", ("u1",))]
    assert client.log == [("erase", "nf:user:u1", "nf:user:u1:churn", "nf:segment-sizes",
                           "nf:segment-sizes-at")]


def test_erasure_batches_stay_small_whatever_the_catalog():
    session = ErasingSession([])
    segments = [f"s{i:03d}" for i in range(2 * ms.ERASE_BATCH_SIZE + 1)]
    _erasing_writer(session, ErasingRedis()).erase_user("u1", segments)
    sizes = [len(batch.items) for batch in session.executed[1:]]
    assert sizes == [ms.ERASE_BATCH_SIZE, ms.ERASE_BATCH_SIZE, 1, 2]


def test_an_erasure_cassandra_refuses_is_returned_with_what_is_left_to_delete():
    session, client = ErasingSession(["s1"], refuse_deletes=True), ErasingRedis()
    [rejection] = _erasing_writer(session, client).erase_user("u1", ["s1"])
    assert rejection.store == "cassandra" and rejection.user_id == "u1"
    reason = rejection.reason()
    assert reason.startswith("STORE_REJECTED: cassandra refused the erasure of user 'u1'")
    assert "DELETE FROM ks.membership_by_user WHERE user_id = ?" in reason
    assert "membership_changes" in reason and "by hand" in reason
    assert client.log and client.log[0][0] == "erase"  # Redis was still erased

