"""What two runs must agree on: segment changes per (user, segment), triggers and decisions.

``emit_time`` is wall clock and is left out; everything else of a record is compared.
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


def _without_emit_time(records: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return sorted(tuple(sorted((k, repr(v)) for k, v in r.items() if k != "emit_time"))
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
