"""The per-user engine: one user's state, stepped by events, metadata and timers.

Inputs: a ClickEvent, a UserMetadata, or an event-time timer, plus the current segment
definitions. Outputs: the SegmentChanges (ENTER/EXIT) the step caused and the next event time at
which the user's membership could change without input (the adapter sets a timer there).
State: behavioural features (``udfs.features``), the latest metadata, and the user's membership
(segment id -> definition version at entry).

Membership follows the definitions lazily: a changed or deleted definition is applied to a user
at that user's next event, metadata update or timer (Flink cannot cheaply visit every key from a
broadcast update in Python); see udfs/segments/SEGMENTS.md for the policy.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any, Protocol

from udfs import features as feat
from udfs.segments.conditions import MEMBERSHIP_RECHECK_MS, evaluate
from udfs.segments.updates import SegmentRegistry


@dataclass
class UserState:
    """Everything the engine keeps for one user."""

    features: feat.UserFeatures | None = None
    metadata: dict[str, Any] | None = None
    membership: dict[str, int] = field(default_factory=dict)
    churn_score: float | None = None
    model_version: str | None = None


class Scorer(Protocol):
    """The churn model as the engine sees it (``udfs.churn.ChurnModel`` fits)."""

    version: str

    def score(self, vector: list[float]) -> float:
        """Churn probability in [0, 1] of one feature vector (FEATURE_NAMES order)."""
        ...


@dataclass(frozen=True)
class Step:
    """What one step produced."""

    changes: list[dict[str, Any]]
    next_timer_ms: int | None
    duplicate: bool = False
    now_ms: int | None = None  # the event time the step evaluated at (the user's clock)
    view: Any = None  # the FeatureView it evaluated (campaign payloads read it)


def change_id(user_id: str, segment_id: str, change: str, event_time: int, cause: str) -> str:
    """A deterministic id of a membership change: replays produce the same id."""
    digest = hashlib.sha256(f"{user_id}|{segment_id}|{change}|{event_time}|{cause}".encode())
    return digest.hexdigest()[:32]


def on_event(state: UserState, event: dict[str, Any], registry: SegmentRegistry,
             scorer: Scorer | None = None) -> Step:
    """Apply one valid ClickEvent; a duplicate (same event id) changes nothing."""
    features = state.features
    if features is not None and features.is_duplicate(event["event_id"]):
        return Step([], None, duplicate=True)
    state.features = feat.update(features, event)
    return _reevaluate(state, event["user_id"], event["event_time"], registry,
                       cause=event["event_id"], cause_event_id=event["event_id"], scorer=scorer)


def on_metadata(state: UserState, metadata: dict[str, Any], registry: SegmentRegistry,
                now_ms: int, scorer: Scorer | None = None) -> Step:
    """Apply the user's latest metadata (a newer ``updated_at`` wins; older is ignored)."""
    current = state.metadata
    if current is not None and current.get("updated_at", 0) > metadata.get("updated_at", 0):
        return Step([], None)
    state.metadata = metadata
    return _reevaluate(state, metadata["user_id"], now_ms, registry,
                       cause=f"metadata@{metadata.get('updated_at')}", cause_event_id=None,
                       scorer=scorer)


def on_timer(state: UserState, user_id: str, timer_ms: int,
             registry: SegmentRegistry, scorer: Scorer | None = None) -> Step:
    """Re-evaluate at a timer's event time (absence windows, inactivity, expiring windows)."""
    return _reevaluate(state, user_id, timer_ms, registry, cause=f"timer@{timer_ms}",
                       cause_event_id=None, scorer=scorer)


def on_expiry(state: UserState, user_id: str, timer_ms: int, ttl_ms: int,
              scorer: Scorer | None = None) -> Step:
    """The user's state is about to be dropped (idle beyond the TTL): EXIT every segment."""
    if scorer is not None and state.features is not None:
        state.churn_score = scorer.score(
            feat.vector_list(state.features, timer_ms, state.metadata))
        state.model_version = scorer.version
    reason = f"user state expired: no event for {ttl_ms // 86_400_000} days"
    changes = [
        _change(state, user_id, segment_id, "EXIT", version, timer_ms, reason,
                f"expiry@{timer_ms}", None)
        for segment_id, version in sorted(state.membership.items())
    ]
    state.membership.clear()
    return Step(changes, None)


def _change(state: UserState, user_id: str, segment_id: str, change: str, version: int,
            now_ms: int, reason: str, cause: str, cause_event_id: str | None) -> dict[str, Any]:
    return {
        "change_id": change_id(user_id, segment_id, change, now_ms, cause),
        "user_id": user_id,
        "segment_id": segment_id,
        "change": change,
        "definition_version": version,
        "event_time": now_ms,
        "reason": reason,
        "cause_event_id": cause_event_id,
        "churn_score": state.churn_score,
        "model_version": state.model_version,
    }


def is_late(event_time: int, watermark: int, allowed_lateness_ms: int) -> bool:
    """Whether an event is too far behind the watermark to be processed (dead-lettered)."""
    return event_time < watermark - allowed_lateness_ms


def expiry_timer_ms(last_event_ms: int, ttl_ms: int) -> int:
    """When to check a user for expiry: ``ttl_ms`` after their last event, rounded up.

    Rounded up to the next day boundary, so the timer moves at most once a day however active
    the user is.
    """
    due = last_event_ms + ttl_ms
    return -(-due // MEMBERSHIP_RECHECK_MS) * MEMBERSHIP_RECHECK_MS


def expired(state: UserState, now_ms: int, ttl_ms: int) -> bool:
    """True when the user has been idle for longer than the state TTL."""
    return state.features is not None and feat.expired(state.features, now_ms, ttl_ms)


def _reevaluate(state: UserState, user_id: str, now_ms: int, registry: SegmentRegistry,
                cause: str, cause_event_id: str | None, scorer: Scorer | None = None) -> Step:
    if state.features is not None:
        # a user's clock never goes backwards: an out-of-order event, older metadata or a timer
        # behind the user's newest event is evaluated at that newest event time
        now_ms = max(now_ms, state.features.last_event_ms)
    vector = None
    if scorer is not None and state.features is not None:
        # re-scored at every evaluation (each new event, metadata update and timer): the
        # vector changes with time alone (recency), and a score costs ~12 µs; the segments
        # then read the same vector
        vector = feat.vector_list(state.features, now_ms, state.metadata)
        state.churn_score = scorer.score(vector)
        state.model_version = scorer.version
    view = feat.FeatureView(state.features, state.metadata, now_ms, state.churn_score, vector)
    changes: list[dict[str, Any]] = []
    next_timer: int | None = None

    def emit(segment_id: str, change: str, version: int, reason: str) -> None:
        changes.append(_change(state, user_id, segment_id, change, version, now_ms, reason,
                               cause, cause_event_id))

    segments = registry.by_id()
    for segment_id, segment in segments.items():
        result = evaluate(segment, view)  # a disabled segment evaluates to not-a-member
        if result.next_change_ms is not None and result.next_change_ms > now_ms:
            next_timer = result.next_change_ms if next_timer is None else min(
                next_timer, result.next_change_ms)
        was_member = segment_id in state.membership
        if result.member and not was_member:
            state.membership[segment_id] = segment.version
            emit(segment_id, "ENTER", segment.version, result.reason)
        elif not result.member and was_member:
            entered_version = state.membership.pop(segment_id)
            reason = result.reason
            if entered_version != segment.version:
                reason = f"definition changed to v{segment.version}: {reason}"
            emit(segment_id, "EXIT", segment.version, reason)
        elif result.member:
            state.membership[segment_id] = segment.version  # still matches the newer version

    for segment_id in [s for s in state.membership if s not in segments]:
        entered_version = state.membership.pop(segment_id)
        deleted_in = registry.deleted_version(segment_id)
        emit(segment_id, "EXIT", deleted_in or entered_version,
             f"segment deleted in v{deleted_in}" if deleted_in else "segment no longer defined")
    if state.membership or state.features is not None:
        # housekeeping: a user who sends nothing still sees definition changes (new segments,
        # changed and deleted ones) within a day of event time
        recheck = (now_ms // MEMBERSHIP_RECHECK_MS + 1) * MEMBERSHIP_RECHECK_MS
        next_timer = recheck if next_timer is None else min(next_timer, recheck)
    return Step(changes, next_timer, now_ms=now_ms, view=view)
