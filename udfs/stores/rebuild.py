"""Rebuild nudgeflow's Redis cache of segment membership from Cassandra.

Cassandra (``membership_by_user``) is the durable copy of membership; Redis serves it and can
lose writes (a crash loses up to a second with ``appendfsync everysec``, a wiped data directory
loses everything). This module puts back, for one Redis key prefix (layout in
``udfs.stores.keys``):

- ``<prefix>:user:<id>``: the user's set of segment ids, exactly as in Cassandra (30-day TTL);
  the set of a user Cassandra does not know is deleted;
- ``<prefix>:segment-sizes``: member count per segment, counted from Cassandra;
- ``<prefix>:user:<id>:churn``: where missing, the churn score and model version of the user's
  latest membership row (an existing hash is newer and is kept).

It is idempotent (run it twice, get the same keys) and reports progress.

**When.** ``nudgeflow stores rebuild-redis`` runs it on demand. The engine runs it by itself:
Redis holds a marker, ``<prefix>:rebuild-marker`` = the ``run_id`` of the Redis process known to
hold everything Cassandra holds. Every write's pipeline reads the marker (and, once a second,
the ``run_id``): a Redis that came back empty, or restarted (its append-only file may lack the
last second), has no valid marker, and the writer rebuilds before its step goes on, then
repeats its own Redis writes. A prefix whose marker was never set (``redis_caches`` has no row
for it in Cassandra) is a new deployment: the marker is set, nothing is rebuilt. One rebuilder
at a time (``<prefix>:rebuild-lock``, expiring); other writers wait for the marker.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from udfs.stores import keys

log = logging.getLogger(__name__)

#: a rebuild lock not refreshed within this long (a rebuilder that died) expires; the
#: rebuilder refreshes it with every batch of users it writes
LOCK_TTL_S = 60
#: writes in flight when the marker is deleted land before Cassandra is read
GRACE_S = 1.0

_FILL_CHURN = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'score', ARGV[1], 'model_version', ARGV[2], 'event_time', ARGV[3])
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  return 1
end
return 0
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass(frozen=True)
class RebuildReport:
    """What a rebuild wrote."""

    prefix: str
    users: int  # user sets written
    memberships: int  # segment ids in them
    segments: int  # segments counted in <prefix>:segment-sizes
    churn_filled: int  # churn hashes that were missing and were written
    stale_deleted: int  # user sets of users Cassandra does not know
    seconds: float

    def summary(self) -> str:
        """One line for the log or the terminal."""
        return (f"rebuilt Redis prefix {self.prefix!r} from Cassandra: {self.users:,} users, "
                f"{self.memberships:,} memberships, {self.segments} segment sizes, "
                f"{self.churn_filled:,} churn hashes filled, {self.stale_deleted:,} stale sets "
                f"deleted, in {self.seconds:.1f} s")


def redis_run_id(client: Any) -> str:
    """The id of the Redis process (changes at every restart)."""
    return str(client.info("server")["run_id"])


def marker_valid(client: Any, prefix: str) -> bool:
    """Whether Redis is marked as holding everything Cassandra holds (this very process)."""
    marker = client.get(keys.rebuild_marker(prefix))
    return marker is not None and _text(marker) == redis_run_id(client)


def ensure_rebuilt(session: Any, keyspace: str, client: Any, prefix: str, force: bool = False,
                   say: Callable[[str], None] = log.info, grace_s: float = GRACE_S,
                   ) -> RebuildReport | None:
    """Rebuild Redis from Cassandra unless its marker is valid (always with ``force``).

    Takes the rebuild lock first; while another process holds it, waits for it to finish.
    A prefix Cassandra has never seen marked is a new deployment: marked, not rebuilt.
    Returns the report, or None when nothing had to be rebuilt.
    """
    lock = keys.rebuild_lock(prefix)
    token = uuid.uuid4().hex
    waited = False
    while True:
        if not force and marker_valid(client, prefix):
            return None
        if client.set(lock, token, nx=True, ex=LOCK_TTL_S):
            break
        if not waited:
            say(f"Redis prefix {prefix!r} is being rebuilt by another process; waiting")
            waited = True
        time.sleep(0.5)
    try:
        if not force and marker_valid(client, prefix):
            return None
        if not force and not _known_prefix(session, keyspace, prefix):
            _mark(session, keyspace, client, prefix, None)
            say(f"Redis prefix {prefix!r} is new: marked, nothing to rebuild")
            return None
        return rebuild_redis(session, keyspace, client, prefix, say=say, grace_s=grace_s)
    finally:
        try:
            client.eval(_RELEASE, 1, lock, token)
        except Exception as exc:  # noqa: BLE001 - best effort: the lock expires anyway
            log.warning("could not release the Redis rebuild lock %s: %s", lock, exc)


def rebuild_redis(session: Any, keyspace: str, client: Any, prefix: str,
                  say: Callable[[str], None] = log.info, grace_s: float = GRACE_S,
                  batch_users: int = 500, progress_every: int = 10_000) -> RebuildReport:
    """Write Redis's membership keys of ``prefix`` from Cassandra's ``membership_by_user``.

    Call it holding the rebuild lock (``ensure_rebuilt`` does). The marker is deleted first (so
    running writers notice and wait, then repeat their step's writes) and set again at the end.
    """
    from cassandra.query import SimpleStatement

    started = time.monotonic()
    client.delete(keys.rebuild_marker(prefix))
    time.sleep(grace_s)
    statement = SimpleStatement(
        f"SELECT user_id, segment_id, entered_at, churn_score, model_version "  # noqa: S608
        f"FROM {keyspace}.membership_by_user", fetch_size=5000)
    fill_churn = client.register_script(_FILL_CHURN)
    users: set[str] = set()
    sizes: Counter[str] = Counter()
    memberships = churn_filled = 0
    pipe = client.pipeline(transaction=False)
    queued: list[bool] = []  # per queued churn fill: counts what was written

    def flush_pipe() -> None:
        nonlocal churn_filled
        pipe.expire(keys.rebuild_lock(prefix), LOCK_TTL_S)  # still rebuilding
        queued.append(False)
        results = pipe.execute()
        churn_filled += sum(1 for r, is_fill in zip(results, queued, strict=True)
                            if is_fill and r == 1)
        queued.clear()

    def flush_user(user: str, segments: list[str], churn: Any) -> None:
        key = keys.user_segments(prefix, user)
        pipe.delete(key)
        pipe.sadd(key, *segments)
        pipe.expire(key, keys.USER_TTL_S)
        queued.extend([False, False, False])
        if churn is not None:
            fill_churn(keys=[keys.user_churn(prefix, user)],
                       args=[churn.churn_score, churn.model_version or "",
                             int(churn.entered_at.timestamp() * 1000) if churn.entered_at
                             else 0, keys.USER_TTL_S], client=pipe)
            queued.append(True)

    current: str | None = None
    segments: list[str] = []
    churn: Any = None
    # a full scan returns each partition (a user) whole, in token order
    for row in session.execute(statement, timeout=60):
        if row.user_id != current:
            if current is not None:
                flush_user(current, segments, churn)
                if len(users) % batch_users == 0:
                    flush_pipe()
                if len(users) % progress_every == 0:
                    say(f"  ... {len(users):,} users rebuilt")
            current, segments, churn = row.user_id, [], None
            users.add(row.user_id)
        segments.append(row.segment_id)
        sizes[row.segment_id] += 1
        memberships += 1
        if row.churn_score is not None and (churn is None or _later(row, churn)):
            churn = row
    if current is not None:
        flush_user(current, segments, churn)
    flush_pipe()
    stale = _delete_stale_sets(client, prefix, users)
    sizes_key, sizes_at_key = keys.segment_sizes(prefix), keys.segment_sizes_at(prefix)
    rebuilt_ms = int(time.time() * 1000)
    tx = client.pipeline(transaction=True)
    tx.delete(sizes_key, sizes_at_key)
    if sizes:
        tx.hset(sizes_key, mapping=dict(sizes))
        tx.hset(sizes_at_key, mapping=dict.fromkeys(sizes, rebuilt_ms))
    tx.execute()
    _mark(session, keyspace, client, prefix, len(users))
    report = RebuildReport(prefix, len(users), memberships, len(sizes), churn_filled, stale,
                           time.monotonic() - started)
    say(report.summary())
    return report


def _later(row: Any, than: Any) -> bool:
    if row.entered_at is None:
        return False
    return than.entered_at is None or row.entered_at > than.entered_at


def _delete_stale_sets(client: Any, prefix: str, users: set[str]) -> int:
    """Delete user sets of ``prefix`` whose user has no membership in Cassandra."""
    pattern = "".join(f"[{c}]" if c in "*?[]\\" else c for c in prefix) + ":user:*"
    stale = 0
    pipe = client.pipeline(transaction=False)
    for raw in client.scan_iter(match=pattern, count=1000):
        parsed = keys.user_id_of(prefix, _text(raw))
        if parsed is not None and parsed[1] == "segments" and parsed[0] not in users:
            pipe.delete(raw)
            stale += 1
            if stale % 500 == 0:
                pipe.execute()
    pipe.execute()
    return stale


def _known_prefix(session: Any, keyspace: str, prefix: str) -> bool:
    rows = session.execute(
        f"SELECT redis_prefix FROM {keyspace}.redis_caches WHERE redis_prefix = %s",  # noqa: S608
        (prefix,), timeout=30)
    return rows.one() is not None


def _mark(session: Any, keyspace: str, client: Any, prefix: str, rebuilt_users: int | None
          ) -> None:
    """Set the marker (this Redis process holds everything) and record the prefix."""
    from datetime import UTC, datetime

    now = datetime.now(tz=UTC)
    if rebuilt_users is None:
        session.execute(f"INSERT INTO {keyspace}.redis_caches (redis_prefix, marked_at) "  # noqa: S608
                        "VALUES (%s, %s)", (prefix, now), timeout=30)
    else:
        session.execute(f"INSERT INTO {keyspace}.redis_caches (redis_prefix, marked_at, "  # noqa: S608
                        "rebuilt_at, rebuilt_users) VALUES (%s, %s, %s, %s)",
                        (prefix, now, now, rebuilt_users), timeout=30)
    client.set(keys.rebuild_marker(prefix), redis_run_id(client))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
