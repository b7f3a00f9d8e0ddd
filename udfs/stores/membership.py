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

An erasure (a user-metadata tombstone; ``erase_user``, after the erasure's EXITs were written)
deletes the rest of the user: in Cassandra their ``members_by_segment`` row in every segment
the engine knows or ``membership_by_user`` lists, their ``membership_by_user`` partition and
their ``membership_changes`` partition (the history is partitioned by user, so it is deleted
whole, the erasure's own EXIT rows included); in Redis their set and churn hash, the count of
every segment still in the set taken down (one Lua script: atomic, and a repeat finds nothing).

Every write is keyed by the change's identity, so replaying a change after a restart writes the
same rows again. Durability: ``write_many`` returns only after Cassandra and Redis acknowledged
all of its changes; the Flink operator calls it before emitting them downstream, so a
checkpoint barrier that passes the operator follows every write of the changes before it — a
completed checkpoint never covers a change that is not durable. Transient failures are retried
with exponential backoff without limit, which blocks the operator and so backpressures the job
during an outage instead of losing updates.

Every store error is classified (``classify``, the table is ``ERROR_CLASSES``):

- transient (timeouts, unavailable replicas, connection errors, Redis loading/OOM/read-only):
  retried with backoff, as above;
- permanent (the store refuses *this* change: Cassandra ``InvalidRequest`` for a partition key
  over 65,535 bytes, a Redis error reply such as WRONGTYPE): not retried, not raised:
  ``write_many`` returns a ``StoreRejection`` naming the store, the statement and the change,
  and the engine dead-letters the change and goes on;
- fatal (the store refuses *every* change: credentials, permissions, a missing keyspace or
  table): ``StoreConfigurationError`` fails the task with what to fix.

Redis is a cache rebuilt from Cassandra (``udfs.stores.rebuild``): every write's pipeline also
reads the rebuild marker, so a Redis that came back empty (or, checked once a second, a Redis
process other than the one the marker was written on) is rebuilt before the step goes on.
"""

from __future__ import annotations

import functools
import logging
import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal, Protocol

from udfs.stores import connections, keys, rebuild

log = logging.getLogger(__name__)

#: members_by_segment spreads one segment over this many partitions
SEGMENT_BUCKETS = 16
#: Redis membership sets expire if a user is not touched for this long (Cassandra stays)
REDIS_TTL_S = keys.USER_TTL_S

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
# an erasure: the user's segments as Cassandra lists them, then the user's partitions
CQL_SELECT_USER_SEGMENTS = "SELECT segment_id FROM {ks}.membership_by_user WHERE user_id = ?"
CQL_DELETE_USER = "DELETE FROM {ks}.membership_by_user WHERE user_id = ?"
CQL_DELETE_USER_HISTORY = "DELETE FROM {ks}.membership_changes WHERE user_id = ?"
#: a round's changes go to Cassandra in unlogged batches of at most this many by default
#: (``cassandra_batch_changes``; 3 statements, up to 3 partitions a change): one request per
#: batch, and most of the cost of a write, the driver's and the server's, is per request
#: (docs/performance.md). Above 3, a batch passes Cassandra's default warning threshold (10
#: partitions in one unlogged batch): the server attaches a warning to each reply, which the
#: driver logs (``connections.ServerWarnings`` keeps one a minute)
CASSANDRA_BATCH_CHANGES = 3
#: an erasure's members_by_segment deletes go in unlogged batches of at most this many (a
#: catalog of hundreds of segments stays under Cassandra's batch size limit)
ERASE_BATCH_SIZE = 32


def write_rounds(changes: Sequence[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    """``changes`` cut, in order, into runs in which each (user, segment) appears at most once.

    ``write_many`` sends a round's writes together (Cassandra batches in flight at once, one
    retried on its own while the others landed), so two changes of one user's segment in one
    round could land in either order. Rounds written one after the other keep them in order: the
    later change always lands last. A round ends only where a pair repeats.
    """
    rounds: list[list[dict[str, Any]]] = []
    current: list[dict[str, Any]] = []
    seen: set[tuple[str, str]] = set()
    for change in changes:
        key = (change["user_id"], change["segment_id"])
        if key in seen:
            rounds.append(current)
            current, seen = [], set()
        current.append(change)
        seen.add(key)
    if current:
        rounds.append(current)
    return rounds


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


# Erase a user's Redis keys: take every segment still in their set off its count, delete the set
# and the churn hash. Atomic, and a repeat finds the set gone and counts nothing twice.
# KEYS: user set, churn hash, sizes hash, sizes-at hash; ARGV: wall-clock ms (sizes-at).
_ERASE_SCRIPT = """
local segments = redis.call('SMEMBERS', KEYS[1])
for _, segment in ipairs(segments) do
  redis.call('HINCRBY', KEYS[3], segment, -1)
  redis.call('HSET', KEYS[4], segment, ARGV[1])
end
redis.call('DEL', KEYS[1], KEYS[2])
return #segments
"""


ErrorClass = Literal["transient", "permanent", "fatal"]

#: How each store error is handled: the one table (``classify`` applies it; docs/operations.md
#: prints it). Exception class names (the drivers' own) or Redis error-reply prefixes.
ERROR_CLASSES: dict[str, dict[str, ErrorClass]] = {
    "cassandra": {
        "NoHostAvailable": "transient", "OperationTimedOut": "transient",
        "Unavailable": "transient", "ReadTimeout": "transient", "WriteTimeout": "transient",
        "WriteFailure": "transient", "ReadFailure": "transient",
        "CoordinationFailure": "transient", "ConnectionException": "transient",
        "ConnectionShutdown": "transient", "OverloadedErrorMessage": "transient",
        "IsBootstrappingErrorMessage": "transient",
        "InvalidRequest": "permanent",  # e.g. a partition key over 65,535 bytes
        "InvalidRequest: unconfigured table": "fatal",
        "InvalidRequest: keyspace does not exist": "fatal",
        "Unauthorized": "fatal", "AuthenticationFailed": "fatal",
        "ConfigurationException": "fatal", "SyntaxException": "fatal",
        # the driver refuses to serialize a value of the change (wrong type, out of range)
        "TypeError": "permanent", "ValueError": "permanent", "struct.error": "permanent",
    },
    "redis": {
        "ConnectionError": "transient", "TimeoutError": "transient",
        "BusyLoadingError": "transient", "TryAgainError": "transient",
        "ClusterDownError": "transient", "MasterDownError": "transient",
        "ReadOnlyError": "transient", "OutOfMemoryError": "transient",
        "reply LOADING": "transient", "reply BUSY": "transient", "reply OOM": "transient",
        "reply READONLY": "transient", "reply MASTERDOWN": "transient",
        "reply TRYAGAIN": "transient",
        "AuthenticationError": "fatal", "NoPermissionError": "fatal",
        "reply NOAUTH": "fatal", "reply NOPERM": "fatal", "reply WRONGPASS": "fatal",
        # any other error reply refuses this change: WRONGTYPE, a value Redis will not take
        "ResponseError": "permanent", "DataError": "permanent",
    },
}

#: DeadLetter reason text prefix of a change a store refused (the reason_code is OTHER until
#: the DeadLetter schema gains a STORE_REJECTED symbol)
STORE_REJECTED = "STORE_REJECTED"


def classify(store: str, exc: BaseException) -> ErrorClass:
    """Whether a store error is transient (retry), permanent (dead-letter) or fatal (fail).

    ``store`` is ``cassandra`` or ``redis``; the rules are ``ERROR_CLASSES``. An error the table
    does not name is transient when it is an ``OSError``/``TimeoutError`` (the network) and
    fatal otherwise: an unknown failure must be seen, not silently dead-letter every change.
    """
    table = ERROR_CLASSES[store]
    message = str(exc)
    if store == "redis" and type(exc).__name__ in {"ResponseError", "ReadOnlyError",
                                                    "OutOfMemoryError", "NoPermissionError"}:
        # an error reply: its first word says what it is ("WRONGTYPE ...", "OOM ..."); a
        # script's error wraps the reply ("Error running script ... WRONGTYPE ...")
        for word in message.replace(":", " ").split():
            rule = table.get(f"reply {word}")
            if rule is not None:
                return rule
    if store == "cassandra" and type(exc).__name__ == "InvalidRequest":
        lowered = message.lower()
        if "unconfigured table" in lowered:
            return table["InvalidRequest: unconfigured table"]
        if "keyspace" in lowered and "does not exist" in lowered:
            return table["InvalidRequest: keyspace does not exist"]
    for klass in type(exc).__mro__:
        name = "struct.error" if klass.__module__ == "struct" else klass.__name__
        if name in table:
            return table[name]
    if isinstance(exc, OSError | TimeoutError):
        return "transient"
    return "fatal"


class StoreConfigurationError(RuntimeError):
    """A store refuses every write (credentials, permissions, schema): fix it, then restart."""


@dataclass(frozen=True)
class StoreRejection:
    """A change a store refused for good: it goes to the dead-letter topic, the job goes on."""

    change: dict[str, Any]
    store: str  # cassandra | redis
    statement: str  # what was refused (CQL or Redis command)
    error: str  # the store's answer

    def reason(self) -> str:
        """The DeadLetter reason: STORE_REJECTED, the store, the statement, the change."""
        change = self.change
        return (f"{STORE_REJECTED}: {self.store} refused {change['change']} of segment "
                f"{change['segment_id']!r} for user {_preview(change['user_id'])} (change "
                f"{_preview(change['change_id'])}): {self.statement}: {_preview(self.error, 400)}")


@dataclass(frozen=True)
class ErasureRejection:
    """Part of an erasure a store refused for good: what is left of the user there, by hand."""

    user_id: str
    store: str  # cassandra | redis
    statement: str  # what was refused, i.e. what still has to run
    error: str  # the store's answer

    def reason(self) -> str:
        """The DeadLetter reason: STORE_REJECTED, the store, the user, what is left to delete."""
        return (f"{STORE_REJECTED}: {self.store} refused the erasure of user "
                f"{_preview(self.user_id)}: {_preview(self.error, 400)}. The user is gone from "
                f"the job's state, not from {self.store}: run {self.statement} for them by hand")


def _preview(value: str, limit: int = 80) -> str:
    """A value short enough for a message: its head, its length and a hash when cut."""
    if len(value) <= limit:
        return repr(value)
    digest = zlib.crc32(value.encode("utf-8", "replace"))
    size = len(value.encode("utf-8", "replace"))
    return f"{value[:limit]!r}... ({size} bytes, crc32 {digest:08x})"


class MembershipWriter(Protocol):
    """Where membership changes go; the Flink adapter depends only on this."""

    def write_many(self, changes: list[dict[str, Any]]) -> list[StoreRejection] | None:
        """Make a round of changes durable (blocking until all are acknowledged).

        A round holds each (user, segment) at most once (``write_rounds``); one engine step's
        changes are a round.

        Returns the changes a store refused for good (dead-lettered by the caller); None or
        empty when every change landed.
        """
        ...

    def erase_user(self, user_id: str, segment_ids: Iterable[str]
                   ) -> list[ErasureRejection] | None:
        """Delete what the stores still hold of an erased user (blocking, retried).

        Called after the erasure's EXITs were written; ``segment_ids`` are the segments to
        delete the user's per-segment rows of besides those the store lists for them. Returns
        what a store refused for good (dead-lettered by the caller); None or empty when done.
        """
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

    def __call__(self, on_retry: Callable[[], None] = ...,
                 on_rebuild: Callable[[rebuild.RebuildReport], None] = ...) -> MembershipWriter:
        """A connected writer; ``on_retry`` counts retried store calls, ``on_rebuild`` rebuilds."""
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

        def kind(exc: Exception) -> str:
            if isinstance(exc, transient):
                return "transient"
            raise exc

        self._retrying(what, action, kind, on_retry, sleep)

    def attempt(self, what: str, action: Callable[[], None], store: str,
                on_retry: Callable[[], None] = lambda: None,
                sleep: Callable[[float], None] = time.sleep) -> BaseException | None:
        """Call ``action``, retrying transient errors; return a permanent error, raise a fatal.

        Raises:
            StoreConfigurationError: the store refuses every write (see ``classify``).
        """

        def kind(exc: Exception) -> str:
            found = classify(store, exc)
            if found == "fatal":
                raise _fatal(store, what, exc) from exc
            return found

        return self._retrying(what, action, kind, on_retry, sleep)

    def _retrying(self, what: str, action: Callable[[], None],
                  kind: Callable[[Exception], str], on_retry: Callable[[], None],
                  sleep: Callable[[float], None]) -> BaseException | None:
        """The backoff loop; ``kind`` says "transient" (retry), "permanent" (returned) or raises."""
        delay = self.first_delay_s
        attempt = 1
        while True:
            try:
                action()
                return None
            except Exception as exc:  # noqa: BLE001 - ``kind`` decides
                if kind(exc) == "permanent":
                    return exc
                if self.max_attempts is not None and attempt >= self.max_attempts:
                    raise
                on_retry()
                log.warning("%s failed (attempt %d: %s); retrying in %.2f s", what, attempt,
                            exc, delay)
                sleep(delay)
                delay = min(delay * 2, self.max_delay_s)
                attempt += 1


def _fatal(store: str, what: str, exc: BaseException) -> StoreConfigurationError:
    return StoreConfigurationError(
        f"{store} refuses every write ({what}: {type(exc).__name__}: {_preview(str(exc), 300)}); "
        f"this is not about one record: check the {store} address, credentials, permissions "
        f"and that `nudgeflow stack provision` (or infra/cql/) created the schema, then restart "
        f"the job")


class CassandraRedisWriter:
    """The production writer: prepared CQL statements and one Redis pipeline per round."""

    #: how often a write's pipeline also asks Redis for its process id (``run_id``), so a
    #: restarted Redis is noticed within this long even if its append-only file kept the marker
    RUN_ID_CHECK_S = 1.0

    def __init__(self, session: Any, keyspace: str, redis_client: Any, redis_prefix: str =
                 "nudgeflow", retry: RetryPolicy | None = None,
                 on_retry: Callable[[], None] = lambda: None,
                 on_rebuild: Callable[[rebuild.RebuildReport], None] = lambda _: None,
                 batch_changes: int = CASSANDRA_BATCH_CHANGES) -> None:
        from cassandra import OperationTimedOut, Unavailable, WriteTimeout
        from cassandra.cluster import NoHostAvailable
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        if batch_changes < 1:
            raise ValueError(f"batch_changes must be >= 1, got {batch_changes}")
        self.session = session
        self.keyspace = keyspace
        self.batch_changes = batch_changes
        self.redis = redis_client
        self.prefix = redis_prefix
        self.membership_sha = redis_client.script_load(_MEMBERSHIP_SCRIPT)
        self.retry = retry or RetryPolicy()
        self.on_retry = on_retry
        self.on_rebuild = on_rebuild
        # errors of best-effort reads (definitions, segment sizes): logged, never raised
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
        self.select_user_segments = session.prepare(CQL_SELECT_USER_SEGMENTS.format(ks=ks))
        self.delete_user = session.prepare(CQL_DELETE_USER.format(ks=ks))
        self.delete_user_history = session.prepare(CQL_DELETE_USER_HISTORY.format(ks=ks))
        self.run_id_checked_at = 0.0
        self.rebuild_needed = False

    @classmethod
    def connect(cls, cassandra_hosts: list[str], cassandra_port: int, keyspace: str,
                redis_url: str, username: str = "", password: str = "",
                on_retry: Callable[[], None] = lambda: None,
                redis_prefix: str = "nudgeflow",
                on_rebuild: Callable[[rebuild.RebuildReport], None] = lambda _: None,
                cassandra_ssl_ca_file: str = "", redis_ssl_ca_file: str = "",
                batch_changes: int = CASSANDRA_BATCH_CHANGES) -> CassandraRedisWriter:
        """Open a Cassandra session and a Redis client (call from the operator's open()).

        Rebuilds Redis from Cassandra first if it lost what the job wrote (see
        ``udfs.stores.rebuild``). The CA files turn on TLS (``udfs.stores.connections``).
        """
        from cassandra.cluster import NoHostAvailable
        from cassandra.policies import DCAwareRoundRobinPolicy

        cluster = connections.cassandra_cluster(
            cassandra_hosts, cassandra_port, username, password, cassandra_ssl_ca_file,
            load_balancing_policy=DCAwareRoundRobinPolicy())
        sessions: list[Any] = []
        RetryPolicy().run("connecting to Cassandra", lambda: sessions.append(cluster.connect()),
                          (NoHostAvailable,), on_retry)
        client = connections.redis_client(redis_url, redis_ssl_ca_file, socket_timeout=5,
                                          socket_connect_timeout=5)
        writer = cls(sessions[0], keyspace, client, redis_prefix=redis_prefix,
                     on_retry=on_retry, on_rebuild=on_rebuild, batch_changes=batch_changes)
        writer.rebuild_redis_if_needed()
        return writer

    def rebuild_redis_if_needed(self) -> None:
        """Rebuild Redis from Cassandra if its marker is missing or from another Redis process."""
        needed: list[bool] = []
        self.retry.run("checking the Redis rebuild marker", lambda: needed.append(
            not rebuild.marker_valid(self.redis, self.prefix)), self.transient, self.on_retry)
        if needed[0]:
            self._rebuild()

    def _rebuild(self) -> None:
        def run() -> None:
            report = rebuild.ensure_rebuilt(self.session, self.keyspace, self.redis,
                                            self.prefix, say=log.warning)
            if report is not None:
                self.on_rebuild(report)

        self.retry.run("rebuilding Redis from Cassandra", run, self.transient, self.on_retry)
        self.rebuild_needed = False

    def write_many(self, changes: list[dict[str, Any]]) -> list[StoreRejection]:
        """Write one round of changes; returns once Cassandra and Redis acknowledged all.

        A round holds each (user, segment) at most once (one engine step's changes do; cut
        several steps' with ``write_rounds``): its writes are not ordered among themselves.

        The Cassandra batches (up to ``batch_changes`` changes each; one refused
        for good is written again change by change, so only the refused change is returned)
        are sent first, then all Redis writes go in one pipeline
        (one round trip), then the batches are awaited: the round trips of the two stores and
        of the changes overlap. A transient failure is retried on its own (every write is
        idempotent); a change a store refuses for good is returned, not raised (the caller
        dead-letters it). If the pipeline found Redis without its rebuild marker, Redis is
        rebuilt from Cassandra once this round's batches landed, and the round's Redis writes
        are repeated (idempotent: a set change counts once).
        """
        if not changes:
            return []
        rejected: dict[str, StoreRejection] = {}
        pending: list[tuple[list[dict[str, Any]], Any]] = []
        size = self.batch_changes
        for start in range(0, len(changes), size):
            group = changes[start:start + size]
            try:
                pending.append((group, self.session.execute_async(
                    self._cassandra_batch(group), timeout=10)))
            except Exception as exc:  # noqa: BLE001 - classified below (retried or refused)
                if classify("cassandra", exc) == "fatal":
                    raise _fatal("cassandra", "preparing a batch", exc) from exc
                pending.append((group, None))  # retried synchronously below
        self._redis_step(changes, rejected)
        for group, future in pending:
            if future is not None:
                try:
                    future.result()
                    continue
                except Exception as exc:  # noqa: BLE001 - classified
                    kind = classify("cassandra", exc)
                    if kind == "fatal":
                        raise _fatal("cassandra", f"write of {group[0]['change_id']}", exc) \
                            from exc
                    if kind == "permanent" and len(group) == 1:
                        self._reject(rejected, group[0], "cassandra", exc)
                        continue
                    # transient, or one of several changes refused: each on its own (retried,
                    # or the one refused found and returned; every write is idempotent)
                    log.warning("cassandra write of %d change(s) from %s failed (%s); writing "
                                "them one by one", len(group), group[0]["change_id"], exc)
                    if kind == "transient":
                        self.on_retry()
            for change in group:
                error = self.retry.attempt(f"cassandra write of {change['change_id']}",
                                           functools.partial(self._write_cassandra, change),
                                           "cassandra", self.on_retry)
                if error is not None:
                    self._reject(rejected, change, "cassandra", error)
        if self.rebuild_needed:
            self._rebuild()
            self._redis_step(changes, rejected)
        return list(rejected.values())

    def _reject(self, rejected: dict[str, StoreRejection], change: dict[str, Any], store: str,
                error: BaseException) -> None:
        if store == "cassandra":
            statement = ("UNLOGGED BATCH of " + (
                CQL_UPSERT_MEMBER if change["change"] == "ENTER" else CQL_DELETE_MEMBER
            ).format(ks=self.keyspace).split(" (")[0].split(" WHERE")[0] + ", ...")
        else:
            statement = (f"EVALSHA membership {keys.user_segments(self.prefix, '<user>')} "
                         f"{change['change']} {change['segment_id']}")
        log.error("%s refused change %s: %s", store, _preview(change["change_id"]), error)
        key = change["change_id"]
        if key not in rejected:
            rejected[key] = StoreRejection(change, store, statement,
                                           f"{type(error).__name__}: {error}")

    def _redis_step(self, changes: list[dict[str, Any]],
                    rejected: dict[str, StoreRejection]) -> None:
        errors: dict[int, BaseException] = {}

        def run() -> None:
            errors.clear()
            errors.update(self._write_redis(changes))

        error = self.retry.attempt(f"redis write of {len(changes)} change(s)", run, "redis",
                                   self.on_retry)
        if error is not None:  # the whole pipeline was refused: every change of the step
            for change in changes:
                self._reject(rejected, change, "redis", error)
        for index, exc in errors.items():
            self._reject(rejected, changes[index], "redis", exc)

    def _write_cassandra(self, change: dict[str, Any]) -> None:
        self.session.execute(self._cassandra_batch([change]), timeout=10)

    def _cassandra_batch(self, changes: list[dict[str, Any]]) -> Any:
        from cassandra.query import BatchStatement, BatchType

        # one unlogged batch per few changes (one round trip): a logged batch would buy
        # all-or-nothing with a batchlog write and delete on every change, ~2x Cassandra's CPU;
        # here every statement is idempotent and the batch is retried until it lands, and a
        # job that dies first replays the change from its checkpoint, so the three tables
        # converge all the same
        batch = BatchStatement(batch_type=BatchType.UNLOGGED)
        for change in changes:
            self._add_change(batch, change)
        return batch

    def _add_change(self, batch: Any, change: dict[str, Any]) -> None:
        """The three tables' statements of one change."""
        user, segment = change["user_id"], change["segment_id"]
        bucket = segment_bucket(user)
        event_time = _ts(change["event_time"])
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

    def _write_redis(self, changes: list[dict[str, Any]]) -> dict[int, BaseException]:
        """One MULTI/EXEC pipeline of the step; returns the changes Redis refused, by index.

        The pipeline starts by reading the rebuild marker (and, once a second, Redis's
        ``run_id``): if Redis lost it, ``rebuild_needed`` is set. Then one membership script
        per change, one ``HSET`` of the round's segments' sizes-at times, and one churn hash
        (and its ``EXPIRE``) per user: the last of the user's changes in the round, which is
        what one hash per change wrote last before (the transaction is applied at once, so no
        reader sees the difference; redis-py's per-command cost was most of the pipeline's).
        Transient errors raise (the caller retries the whole pipeline, which is idempotent);
        an error reply refuses the changes of its command only.
        """
        from redis.exceptions import NoScriptError

        pipe = self.redis.pipeline(transaction=True)
        sizes = keys.segment_sizes(self.prefix)
        pipe.get(keys.rebuild_marker(self.prefix))
        now = time.monotonic()
        check_run_id = now - self.run_id_checked_at >= self.RUN_ID_CHECK_S
        if check_run_id:
            pipe.info("server")
        # the changes each command's reply belongs to (none: the marker's reads)
        owners: list[tuple[int, ...]] = [()] * (2 if check_run_id else 1)
        refused: dict[int, BaseException] = {}
        by_segment: dict[str, list[int]] = {}
        churn_by_user: dict[str, list[int]] = {}
        for index, change in enumerate(changes):
            key = keys.user_segments(self.prefix, change["user_id"])
            try:
                # EVALSHA, not a registered Script: redis-py checks SCRIPT EXISTS before every
                # pipeline that holds a Script object, one more round trip per write
                pipe.evalsha(self.membership_sha, 2, key, sizes, change["change"],
                             change["segment_id"], REDIS_TTL_S)
            except Exception as exc:  # noqa: BLE001 - redis-py refused a value (DataError)
                if classify("redis", exc) != "permanent":
                    raise
                refused[index] = exc
                continue
            owners.append((index,))
            by_segment.setdefault(change["segment_id"], []).append(index)
            if change.get("churn_score") is not None:
                churn_by_user.setdefault(change["user_id"], []).append(index)
        if by_segment:
            # when each segment's size last moved (or was confirmed by a replay), wall clock:
            # `nudgeflow segments sizes` shows it
            written_ms = int(time.time() * 1000)
            pipe.hset(keys.segment_sizes_at(self.prefix),
                      mapping=dict.fromkeys(by_segment, written_ms))
            owners.append(tuple(index for group in by_segment.values() for index in group))
        for user, indices in churn_by_user.items():
            last = changes[indices[-1]]
            churn_key = keys.user_churn(self.prefix, user)
            try:
                pipe.hset(churn_key, mapping={
                    "score": last["churn_score"],
                    "model_version": last.get("model_version") or "",
                    "event_time": last["event_time"]})
            except Exception as exc:  # noqa: BLE001 - redis-py refused a value (DataError)
                if classify("redis", exc) != "permanent":
                    raise
                for index in indices:
                    refused.setdefault(index, exc)
                continue
            pipe.expire(churn_key, REDIS_TTL_S)
            owners += [tuple(indices), tuple(indices)]
        results = pipe.execute(raise_on_error=False)
        if any(isinstance(result, NoScriptError) for result in results):
            # Redis restarted (or flushed its scripts): load the script again and repeat the
            # pipeline, which is idempotent (a set change counts once)
            self.membership_sha = self.redis.script_load(_MEMBERSHIP_SCRIPT)
            return self._write_redis(changes)
        for owner, result in zip(owners, results, strict=False):
            if isinstance(result, Exception):
                if classify("redis", result) != "permanent" or not owner:
                    raise result
                for index in owner:
                    refused.setdefault(index, result)
        marker = results[0]
        if check_run_id:
            self.run_id_checked_at = now
            run_id = results[1].get("run_id") if isinstance(results[1], dict) else None
            if marker is not None and run_id is not None and _text(marker) != run_id:
                marker = None
        if marker is None:
            self.rebuild_needed = True
        return refused

    def erase_user(self, user_id: str, segment_ids: Iterable[str]) -> list[ErasureRejection]:
        """Delete what Cassandra and Redis still hold of an erased user; see the module doc.

        Cassandra first: the segments ``membership_by_user`` lists for the user join
        ``segment_ids``; the user's ``members_by_segment`` rows go, then (last, so a retry after
        a crash still finds what to delete) their ``membership_by_user`` and
        ``membership_changes`` partitions. Then Redis, in one script. Each part is retried like
        a write (transient errors without limit; a fatal one raises); a part a store refuses
        for good is returned and the other parts still run.

        Raises:
            StoreConfigurationError: a store refuses every write (see ``classify``).
        """
        rejected: list[ErasureRejection] = []
        segments = set(segment_ids)
        ks = self.keyspace

        def read() -> None:
            rows = self.session.execute(self.select_user_segments, (user_id,), timeout=10)
            segments.update(row.segment_id for row in rows)

        def delete() -> None:
            for batch in self._erase_batches(user_id, sorted(segments)):
                self.session.execute(batch, timeout=10)

        # (store, what, action, the statement left to run by hand if the store refuses it)
        parts: list[tuple[str, str, Callable[[], None], str]] = [
            ("cassandra", "reading the segments of", read,
             CQL_SELECT_USER_SEGMENTS.format(ks=ks)),
            ("cassandra", "deleting", delete,
             f"{CQL_DELETE_SEGMENT_MEMBER.format(ks=ks)} (every segment, bucket "
             f"{segment_bucket(user_id)}), {CQL_DELETE_USER.format(ks=ks)} and "
             f"{CQL_DELETE_USER_HISTORY.format(ks=ks)}"),
            ("redis", "deleting", functools.partial(self._erase_redis, user_id),
             f"DEL {keys.user_segments(self.prefix, '<user>')} "
             f"{keys.user_churn(self.prefix, '<user>')} (and HINCRBY "
             f"{keys.segment_sizes(self.prefix)} <segment> -1 for each segment in the set)"),
        ]
        for store, what, action, statement in parts:
            error = self.retry.attempt(f"{store} erasure: {what} user {_preview(user_id)}",
                                       action, store, self.on_retry)
            if error is not None:
                log.error("%s refused the erasure of user %s: %s", store, _preview(user_id),
                          error)
                rejected.append(ErasureRejection(user_id, store, statement,
                                                 f"{type(error).__name__}: {error}"))
        return rejected

    def _erase_batches(self, user_id: str, segments: list[str]) -> list[Any]:
        """Unlogged batches deleting the user's per-segment rows, then their partitions."""
        from cassandra.query import BatchStatement, BatchType

        bucket = segment_bucket(user_id)
        batches = []
        for start in range(0, len(segments), ERASE_BATCH_SIZE):
            batch = BatchStatement(batch_type=BatchType.UNLOGGED)
            for segment in segments[start:start + ERASE_BATCH_SIZE]:
                batch.add(self.delete_segment_member, (segment, bucket, user_id))
            batches.append(batch)
        last = BatchStatement(batch_type=BatchType.UNLOGGED)
        last.add(self.delete_user, (user_id,))
        last.add(self.delete_user_history, (user_id,))
        batches.append(last)
        return batches

    def _erase_redis(self, user_id: str) -> None:
        self.redis.eval(_ERASE_SCRIPT, 4, keys.user_segments(self.prefix, user_id),
                        keys.user_churn(self.prefix, user_id), keys.segment_sizes(self.prefix),
                        keys.segment_sizes_at(self.prefix), int(time.time() * 1000))

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
    cassandra_ssl_ca_file: str = ""
    redis_ssl_ca_file: str = ""
    #: run the clients in a child process (``udfs.stores.client_process``), off the caller's
    #: interpreter lock
    client_process: bool = False
    #: segment changes per unlogged Cassandra batch (``cassandra_batch_changes``)
    batch_changes: int = CASSANDRA_BATCH_CHANGES
    #: with ``client_process``: the child's niceness above the caller's (``store_clients_nice``)
    process_nice: int = 0

    def __call__(self, on_retry: Callable[[], None] = lambda: None,
                 on_rebuild: Callable[[rebuild.RebuildReport], None] = lambda _: None,
                 ) -> MembershipWriter:
        """Connect a writer (blocks, retrying, until Cassandra answers)."""
        if self.client_process:
            from udfs.stores.client_process import ProcessWriter

            return ProcessWriter(replace(self, client_process=False), on_retry, on_rebuild,
                                 nice=self.process_nice)
        return CassandraRedisWriter.connect(
            list(self.cassandra_hosts), self.cassandra_port, self.keyspace, self.redis_url,
            self.username, self.password, on_retry=on_retry, redis_prefix=self.redis_prefix,
            on_rebuild=on_rebuild, cassandra_ssl_ca_file=self.cassandra_ssl_ca_file,
            redis_ssl_ca_file=self.redis_ssl_ca_file, batch_changes=self.batch_changes)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _ts(epoch_ms: int) -> Any:
    from datetime import UTC, datetime

    return datetime.fromtimestamp(epoch_ms / 1000, tz=UTC)


class DiscardingWriter:
    """A MembershipWriter that writes nothing: the engine's changes are only emitted.

    What-if runs (``nudgeflow defs what-if``) use it, so trying a definition on history never
    touches the production stores. The priority matrix's audience factor reads
    ``segment_sizes``: the live sizes the run was given, fixed for its whole length, so the run
    is a function of its inputs.
    """

    def __init__(self, sizes: dict[str, int]) -> None:
        self.sizes = dict(sizes)

    def write_many(self, changes: list[dict[str, Any]]) -> list[StoreRejection]:
        """Nothing is written; nothing is refused."""
        return []

    def erase_user(self, user_id: str, segment_ids: Iterable[str]) -> list[ErasureRejection]:
        """Nothing is held, so nothing is erased."""
        return []

    def record_definition(self, definition_id: str, description: str) -> None:
        """Not recorded: the running job's record in Redis stays its own."""

    def segment_sizes(self) -> dict[str, int]:
        """The sizes given at start."""
        return dict(self.sizes)

    def close(self) -> None:
        """No connection to release."""


@dataclass(frozen=True)
class DiscardingStore:
    """The StoreFactory of ``DiscardingWriter`` (picklable: the sizes are plain values)."""

    audience_sizes: tuple[tuple[str, int], ...] = ()

    def __call__(self, on_retry: Callable[[], None] = lambda: None,
                 on_rebuild: Callable[[rebuild.RebuildReport], None] = lambda _: None,
                 ) -> DiscardingWriter:
        """A writer that writes nothing and reports ``audience_sizes``."""
        return DiscardingWriter(dict(self.audience_sizes))
