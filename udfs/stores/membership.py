"""Write segment membership changes to Cassandra (durable) and Redis (serving), idempotently.

Inputs: SegmentChange dicts (ENTER/EXIT). Writes per change:

- Cassandra ``membership_by_user`` and ``members_by_segment`` (bucketed by a stable hash of the
  user id): an upsert on ENTER, a delete on EXIT; ``membership_changes``: one row per change,
  keyed by the deterministic ``change_id`` (history, 90-day TTL).
- Redis (keys in ``udfs.stores.keys``) ``<prefix>:user:<user_id>``: a set of the user's
  segment ids (SADD/SREM) with a TTL,
  and ``<prefix>:segment-sizes``: member count per segment, moved only when the set changed
  (one Lua script, so a replayed change counts once; the campaigns' audience factor);
  and, when the change carries a churn score, ``<prefix>:user:<user_id>:churn``: a hash of the
  latest score, model version and event time.

Every write is keyed by the change's identity, so replaying a change after a restart writes the
same rows again. Durability: ``write_many`` returns only after Cassandra and Redis acknowledged
all of a step's changes; the Flink operator calls it before emitting them downstream, so a
checkpoint barrier that passes the operator follows every write of the changes before it — a
completed checkpoint never covers a change that is not durable. Transient failures are retried
with exponential backoff without limit, which blocks the operator and so backpressures the job
during an outage instead of losing updates.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from udfs.stores import keys

log = logging.getLogger(__name__)

#: members_by_segment spreads one segment over this many partitions
SEGMENT_BUCKETS = 16
#: Redis membership sets expire if a user is not touched for this long (Cassandra stays)
REDIS_TTL_S = 30 * 24 * 3600

CQL_UPSERT_MEMBER = (
    "INSERT INTO {ks}.membership_by_user "
    "(user_id, segment_id, definition_version, entered_at, churn_score, model_version) "
    "VALUES (?, ?, ?, ?, ?, ?)"
)
CQL_DELETE_MEMBER = "DELETE FROM {ks}.membership_by_user WHERE user_id = ? AND segment_id = ?"
CQL_UPSERT_SEGMENT_MEMBER = (
    "INSERT INTO {ks}.members_by_segment "
    "(segment_id, bucket, user_id, definition_version, entered_at) VALUES (?, ?, ?, ?, ?)"
)
CQL_DELETE_SEGMENT_MEMBER = (
    "DELETE FROM {ks}.members_by_segment WHERE segment_id = ? AND bucket = ? AND user_id = ?"
)
CQL_INSERT_HISTORY = (
    "INSERT INTO {ks}.membership_changes "
    "(user_id, event_time, change_id, segment_id, change, definition_version, reason) "
    "VALUES (?, ?, ?, ?, ?, ?, ?)"
)


def segment_bucket(user_id: str, buckets: int = SEGMENT_BUCKETS) -> int:
    """The members_by_segment bucket of a user (stable across processes: crc32, not hash())."""
    return zlib.crc32(user_id.encode()) % buckets


# SADD/SREM the user's set and move the segment's count only if the set changed: a replayed
# change (after a restart) finds the set already changed and counts nothing twice.
# KEYS: user set, sizes hash; ARGV: ENTER|EXIT, segment id, TTL seconds.
_MEMBERSHIP_SCRIPT = """
local changed
if ARGV[1] == 'ENTER' then
  changed = redis.call('SADD', KEYS[1], ARGV[2])
  if changed == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], 1) end
else
  changed = redis.call('SREM', KEYS[1], ARGV[2])
  if changed == 1 then redis.call('HINCRBY', KEYS[2], ARGV[2], -1) end
end
redis.call('EXPIRE', KEYS[1], ARGV[3])
return changed
"""


class MembershipWriter(Protocol):
    """Where membership changes go; the Flink adapter depends only on this."""

    def write_many(self, changes: list[dict[str, Any]]) -> None:
        """Make an engine step's changes durable (blocking until all are acknowledged)."""
        ...

    def record_definition(self, definition_id: str, description: str) -> None:
        """Record which version of a definition the job now applies (``nudgeflow defs list``)."""
        ...

    def segment_sizes(self) -> dict[str, int]:
        """Live member count per segment (the priority matrix's audience factor)."""
        ...

    def close(self) -> None:
        """Release connections."""
        ...


class StoreFactory(Protocol):
    """Creates an engine instance's writer in ``open()`` (picklable: it travels in the job)."""

    def __call__(self, on_retry: Callable[[], None] = ...) -> MembershipWriter:
        """A connected writer; ``on_retry`` counts each retried store call."""
        ...


@dataclass
class RetryPolicy:
    """Exponential backoff for transient store errors; ``max_attempts=None`` retries forever."""

    first_delay_s: float = 0.05
    max_delay_s: float = 10.0
    max_attempts: int | None = None

    def run(self, what: str, action: Callable[[], None], transient: tuple[type[BaseException], ...],
            on_retry: Callable[[], None] = lambda: None,
            sleep: Callable[[float], None] = time.sleep) -> None:
        """Call ``action`` until it succeeds, sleeping between transient failures."""
        delay = self.first_delay_s
        attempt = 1
        while True:
            try:
                action()
                return
            except transient as exc:
                if self.max_attempts is not None and attempt >= self.max_attempts:
                    raise
                on_retry()
                log.warning("%s failed (attempt %d: %s); retrying in %.2f s", what, attempt,
                            exc, delay)
                sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
                attempt += 1


class CassandraRedisWriter:
    """The production writer: prepared CQL statements and one Redis pipeline per step."""

    def __init__(self, session: Any, keyspace: str, redis_client: Any, redis_prefix: str =
                 "nudgeflow", retry: RetryPolicy | None = None,
                 on_retry: Callable[[], None] = lambda: None) -> None:
        from cassandra import OperationTimedOut, Unavailable, WriteTimeout
        from cassandra.cluster import NoHostAvailable
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        self.session = session
        self.redis = redis_client
        self.prefix = redis_prefix
        self.membership_sha = redis_client.script_load(_MEMBERSHIP_SCRIPT)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.transient: tuple[type[BaseException], ...] = (
            NoHostAvailable, OperationTimedOut, Unavailable, WriteTimeout,
            RedisConnectionError, RedisTimeoutError, ConnectionError, TimeoutError,
        )
        ks = keyspace
        self.upsert_member = session.prepare(CQL_UPSERT_MEMBER.format(ks=ks))
        self.delete_member = session.prepare(CQL_DELETE_MEMBER.format(ks=ks))
        self.upsert_segment_member = session.prepare(CQL_UPSERT_SEGMENT_MEMBER.format(ks=ks))
        self.delete_segment_member = session.prepare(CQL_DELETE_SEGMENT_MEMBER.format(ks=ks))
        self.insert_history = session.prepare(CQL_INSERT_HISTORY.format(ks=ks))

    @classmethod
    def connect(cls, cassandra_hosts: list[str], cassandra_port: int, keyspace: str,
                redis_url: str, username: str = "", password: str = "",
                on_retry: Callable[[], None] = lambda: None,
                redis_prefix: str = "nudgeflow") -> CassandraRedisWriter:
        """Open a Cassandra session and a Redis client (call from the operator's open())."""
        import redis
        from cassandra.auth import PlainTextAuthProvider
        from cassandra.cluster import Cluster
        from cassandra.policies import DCAwareRoundRobinPolicy

        auth = PlainTextAuthProvider(username, password) if username else None
        cluster = Cluster(cassandra_hosts, port=cassandra_port, auth_provider=auth,
                          load_balancing_policy=DCAwareRoundRobinPolicy(), protocol_version=5,
                          connect_timeout=10)
        from cassandra.cluster import NoHostAvailable

        sessions: list[Any] = []
        RetryPolicy().run("connecting to Cassandra", lambda: sessions.append(cluster.connect()),
                          (NoHostAvailable,), on_retry)
        return cls(sessions[0], keyspace, redis.Redis.from_url(redis_url, socket_timeout=5,
                                                           socket_connect_timeout=5),
                   redis_prefix=redis_prefix, on_retry=on_retry)

    def write_many(self, changes: list[dict[str, Any]]) -> None:
        """Write an engine step's changes; returns once Cassandra and Redis acknowledged all.

        Every change's Cassandra batch is sent first, then all Redis writes go in one pipeline
        (one round trip), then the batches are awaited: the round trips of the two stores and
        of the changes overlap. A failure is retried on its own (every write is idempotent).
        """
        if not changes:
            return
        pending: list[tuple[dict[str, Any], Any]] = []
        for change in changes:
            try:
                pending.append((change, self.session.execute_async(
                    self._cassandra_batch(change), timeout=10)))
            except self.transient:
                pending.append((change, None))  # retried synchronously below
        ids = ", ".join(change["change_id"] for change in changes)
        self.retry.run(f"redis write of {ids}", lambda: self._write_redis(changes),
                       self.transient, self.on_retry)
        for change, future in pending:
            if future is not None:
                try:
                    future.result()
                    continue
                except self.transient as exc:
                    log.warning("cassandra write of %s failed (%s); retrying",
                                change["change_id"], exc)
                    self.on_retry()
            self.retry.run(f"cassandra write of {change['change_id']}",
                           functools.partial(self._write_cassandra, change), self.transient,
                           self.on_retry)

    def _write_cassandra(self, change: dict[str, Any]) -> None:
        self.session.execute(self._cassandra_batch(change), timeout=10)

    def _cassandra_batch(self, change: dict[str, Any]) -> Any:
        from cassandra.query import BatchStatement, BatchType

        user, segment = change["user_id"], change["segment_id"]
        bucket = segment_bucket(user)
        event_time = _ts(change["event_time"])
        # one unlogged batch per change (one round trip): a logged batch would buy
        # all-or-nothing with a batchlog write and delete on every change, ~2x Cassandra's CPU;
        # here every statement is idempotent and the batch is retried until it lands, and a
        # job that dies first replays the change from its checkpoint, so the three tables
        # converge all the same
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        if change["change"] == "ENTER":
            batch.add(self.upsert_member, (user, segment, change["definition_version"],
                                           event_time, change.get("churn_score"),
                                           change.get("model_version")))
            batch.add(self.upsert_segment_member, (segment, bucket, user,
                                                   change["definition_version"], event_time))
        else:
            batch.add(self.delete_member, (user, segment))
            batch.add(self.delete_segment_member, (segment, bucket, user))
        batch.add(self.insert_history, (user, event_time, change["change_id"], segment,
                                        change["change"], change["definition_version"],
                                        change["reason"]))
        return batch

    def _write_redis(self, changes: list[dict[str, Any]]) -> None:
        from redis.exceptions import NoScriptError

        pipe = self.redis.pipeline(transaction=True)
        sizes = keys.segment_sizes(self.prefix)
        for change in changes:
            key = keys.user_segments(self.prefix, change["user_id"])
            # EVALSHA, not a registered Script: redis-py checks SCRIPT EXISTS before every
            # pipeline that holds a Script object, one more round trip per write
            pipe.evalsha(self.membership_sha, 2, key, sizes, change["change"],
                         change["segment_id"], REDIS_TTL_S)
            if change.get("churn_score") is not None:
                churn_key = keys.user_churn(self.prefix, change["user_id"])
                pipe.hset(churn_key, mapping={"score": change["churn_score"],
                                              "model_version": change.get("model_version") or "",
                                              "event_time": change["event_time"]})
                pipe.expire(churn_key, REDIS_TTL_S)
        try:
            pipe.execute()
        except NoScriptError:
            # Redis restarted (or flushed its scripts): load the script again and repeat the
            # pipeline, which is idempotent (a set change counts once)
            self.membership_sha = self.redis.script_load(_MEMBERSHIP_SCRIPT)
            self._write_redis(changes)

    def record_definition(self, definition_id: str, description: str) -> None:
        """HSET <prefix>:definitions <id> <description> (best effort: only informational)."""
        try:
            self.redis.hset(keys.definitions(self.prefix), definition_id, description)
        except self.transient as exc:
            log.warning("could not record definition %s in Redis: %s", definition_id, exc)

    def segment_sizes(self) -> dict[str, int]:
        """HGETALL <prefix>:segment-sizes (empty when Redis does not answer: factor 0)."""
        try:
            raw = self.redis.hgetall(keys.segment_sizes(self.prefix))
        except self.transient as exc:
            log.warning("could not read segment sizes from Redis: %s", exc)
            return {}
        return {_text(k): max(0, int(v)) for k, v in raw.items()}

    def close(self) -> None:
        """Shut the Cassandra cluster object and the Redis pool down."""
        self.session.cluster.shutdown()
        self.redis.close()


@dataclass(frozen=True)
class CassandraRedisStore:
    """Where the membership store lives; called in the engine's ``open()`` to connect.

    Picklable (plain values, no client): the job graph carries it to every operator instance,
    which calls it with the retry counter of its own metrics.
    """

    cassandra_hosts: tuple[str, ...]
    cassandra_port: int
    keyspace: str
    redis_url: str
    redis_prefix: str = "nudgeflow"
    username: str = ""
    password: str = field(default="", repr=False)

    def __call__(self, on_retry: Callable[[], None] = lambda: None) -> CassandraRedisWriter:
        """Connect a writer (blocks, retrying, until Cassandra answers)."""
        return CassandraRedisWriter.connect(
            list(self.cassandra_hosts), self.cassandra_port, self.keyspace, self.redis_url,
            self.username, self.password, on_retry=on_retry, redis_prefix=self.redis_prefix)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ts(epoch_ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)
