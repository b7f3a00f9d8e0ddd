"""What two runs must agree on: segment changes per (user, segment), triggers and decisions.

``emit_time`` is wall clock and is left out, and so is a trigger's ``ingest_time`` when its
cause is time-driven (the schema says it is then the processing time of the timer); everything
else of a record is compared.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any


def changes_by_key(changes: list[dict[str, Any]]) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
    """(user, segment) -> its changes in event-time order: (change, time, reason, version)."""
    out: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
    for c in sorted(changes, key=lambda c: (c["event_time"], c["change"] == "ENTER")):
        out[(c["user_id"], c["segment_id"])].append(
            (c["change"], c["event_time"], c["reason"], c["definition_version"]))
    return dict(out)


def _wall_clock(record: dict[str, Any], key: str) -> bool:
    if key == "emit_time":
        return True
    cause = str(record.get("cause_event_id") or "")
    return key == "ingest_time" and cause.startswith(("timer@", "metadata@"))


def _without_emit_time(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(sorted((k, repr(v)) for k, v in r.items() if not _wall_clock(r, k)))
                  for r in records)


def triggers(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Every TriggerEvent, sorted, without its wall-clock ``emit_time``."""
    return _without_emit_time(records)


def decisions(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    """Every TriggerDecision, sorted, without its wall-clock ``emit_time``."""
    return _without_emit_time(records)


def first_difference(a: dict[Any, Any], b: dict[Any, Any]) -> str:
    """A readable first difference between two keyed results (for assertion messages)."""
    for key in sorted(set(a) | set(b)):
        if a.get(key) != b.get(key):
            return f"{key}: {a.get(key)} != {b.get(key)}"
    return "no difference"


def record_difference(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> str:
    """The first trigger id whose records differ, with the differing fields."""
    def by_id(records: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(r["trigger_id"], str(r.get("outcome"))): r for r in records}

    left, right = by_id(a), by_id(b)
    for key in sorted(set(left) | set(right)):
        x, y = left.get(key), right.get(key)
        if x is None or y is None:
            return f"{key}: only in {'the second' if x is None else 'the first'} run: {x or y}"
        fields = [f"{k}: {x.get(k)!r} != {y.get(k)!r}" for k in sorted(set(x) | set(y))
                  if not _wall_clock(x, k) and x.get(k) != y.get(k)]
        if fields:
            return f"{key}: " + "; ".join(fields)
    return f"no difference by id ({len(a)} and {len(b)} records)"
