"""The walking skeleton's per-user engine: a running count of each user's events.

State per user: the number of events seen. Input: a ClickEvent. Output: a UserActivityCount.
Later issues replace this with the profile / segment / churn / campaign engine.
"""

from __future__ import annotations

from typing import Any


def count_activity(count: int | None, event: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    """Add one event to a user's count; return the new count and the record to emit."""
    new_count = (count or 0) + 1
    return new_count, {
        "user_id": event["user_id"],
        "event_count": new_count,
        "last_event_id": event["event_id"],
        "last_event_time": event["event_time"],
    }
