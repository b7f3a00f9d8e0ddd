"""``nudgeflow segments sizes`` and ``nudgeflow segments members ID``: live audiences.

Inputs: Redis (``<prefix>:segment-sizes`` and ``<prefix>:segment-sizes-at``, kept by the
engine's store writer) and Cassandra's ``members_by_segment`` (bucketed by user). Outputs: text
tables. State: none. The formatting functions are pure; ``sizes`` and ``members`` read the
stores.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from jobs.config import NudgeflowConfig
from udfs.stores import keys
from udfs.stores.membership import SEGMENT_BUCKETS


def _when(ms: int | None, now_ms: int) -> str:
    if ms is None:
        return "unknown"
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    ago_s = max(0, (now_ms - ms) // 1000)
    if ago_s < 120:
        ago = f"{ago_s} s ago"
    elif ago_s < 7200:
        ago = f"{ago_s // 60} min ago"
    elif ago_s < 172_800:
        ago = f"{ago_s // 3600} h ago"
    else:
        ago = f"{ago_s // 86_400} d ago"
    return f"{stamp} ({ago})"


def sizes_table(sizes: Mapping[str, int], updated_ms: Mapping[str, int], now_ms: int) -> str:
    """A table of segment, members and when the size last changed, by segment id."""
    if not sizes:
        return ("no segment sizes in Redis yet: the job writes them as users enter and leave "
                "segments (is it running, with this --redis-key-prefix?)")
    width = max(len("segment"), *(len(s) for s in sizes))
    lines = [f"{'segment':<{width}}  {'members':>9}  last updated"]
    for segment in sorted(sizes):
        lines.append(f"{segment:<{width}}  {max(0, sizes[segment]):>9,}  "
                     f"{_when(updated_ms.get(segment), now_ms)}")
    return "\n".join(lines)


def members_table(segment_id: str, rows: Sequence[tuple[str, int, int | None]], limit: int,
                  size: int | None) -> str:
    """A table of (user id, definition version, entered at ms) rows, by user id."""
    if not rows:
        return (f"segment {segment_id!r} has no members in Cassandra (check the id: "
                "`nudgeflow segments sizes` lists the segments with members)")
    width = max(len("user"), *(len(r[0]) for r in rows))
    lines = [f"{'user':<{width}}  version  entered (event time)"]
    for user, version, entered in sorted(rows):
        stamp = "unknown" if entered is None else datetime.fromtimestamp(
            entered / 1000, tz=UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        lines.append(f"{user:<{width}}  v{version:<6}  {stamp}")
    total = f" of {size:,}" if size is not None else ""
    more = f" (the first {limit} found; --limit N for more)" if len(rows) >= limit else ""
    lines.append(f"{len(rows):,}{total} member(s) of {segment_id}{more}")
    return "\n".join(lines)


def _ints(raw: Mapping[Any, Any]) -> dict[str, int]:
    return {(k.decode() if isinstance(k, bytes) else str(k)): int(v) for k, v in raw.items()}


def live_sizes(cfg: NudgeflowConfig) -> dict[str, int]:
    """Segment id -> live member count, as the engine keeps it in Redis (never below 0)."""
    from jobs.cli import wiring

    client = wiring.redis_client(cfg, socket_connect_timeout=3, socket_timeout=10)
    try:
        raw = _ints(client.hgetall(keys.segment_sizes(cfg.redis_key_prefix)))
    finally:
        client.close()
    return {segment: max(0, n) for segment, n in raw.items()}


def sizes(cfg: NudgeflowConfig, now_ms: int) -> str:
    """The live sizes table, read from Redis."""
    from jobs.cli import wiring

    counts = live_sizes(cfg)
    client = wiring.redis_client(cfg, socket_timeout=10)
    try:
        updated = _ints(client.hgetall(keys.segment_sizes_at(cfg.redis_key_prefix)))
    finally:
        client.close()
    return sizes_table(counts, updated, now_ms)


def members(cfg: NudgeflowConfig, segment_id: str, limit: int) -> str:
    """Up to ``limit`` members of a segment, read bucket by bucket from Cassandra."""
    from jobs.cli import wiring

    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    try:
        # the keyspace is an identifier (checked when provisioned), the values are bound
        query = session.prepare(
            f"SELECT user_id, definition_version, entered_at FROM {cfg.cassandra_keyspace}."  # noqa: S608
            "members_by_segment WHERE segment_id = ? AND bucket = ? LIMIT ?")
        rows: list[tuple[str, int, int | None]] = []
        for bucket in range(SEGMENT_BUCKETS):
            for row in session.execute(query, (segment_id, bucket, limit - len(rows))):
                entered = None if row.entered_at is None else int(
                    row.entered_at.replace(tzinfo=UTC).timestamp() * 1000)
                rows.append((row.user_id, row.definition_version, entered))
            if len(rows) >= limit:
                break
    finally:
        session.cluster.shutdown()
    client = wiring.redis_client(cfg, socket_timeout=10)
    try:
        raw = client.hget(keys.segment_sizes(cfg.redis_key_prefix), segment_id)
    finally:
        client.close()
    return members_table(segment_id, rows, limit, None if raw is None else int(raw))
