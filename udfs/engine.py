"""The per-user engine: one user's state, stepped by clicks, metadata and timers.

``step(state, item, rules, now_ms) -> Step`` is the whole of what happens to a user for one
input, with no I/O: behavioural features (``udfs.features``), the churn score (``rules.scorer``),
segment membership (``udfs.segments``: ENTER/EXIT changes and the next time membership could
change without input) and campaigns (``udfs.campaigns.arbitration``: candidates, the priority
matrix, per-user arbitration, caps, quiet hours, dedup -> TriggerEvents and TriggerDecisions).
The Flink adapter (``udfs.flink.user_engine.UserEngineFunction``) loads the state, calls
``step``, stores what the ``Step`` says changed, registers its timers and emits its records.

Inputs: ``Click`` (a validated ClickEvent), ``MetadataUpdate`` (a UserMetadata) or ``Timer``.
State (``UserState``): features, the latest metadata, membership (segment id -> definition
version at entry), the churn score, and the campaign state, read lazily through
``UserState.load_campaigns`` (most steps never need it).

Membership follows the definitions lazily: a changed or deleted definition is applied to a user
at that user's next event, metadata update or timer (Flink cannot cheaply visit every key from a
broadcast update in Python); see udfs/segments/SEGMENTS.md for the policy.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from udfs.campaigns import arbitration
from udfs.campaigns.arbitration import CampaignState
from udfs.catalog.registries import Registries
from udfs.features import state as feature_state
from udfs.features.vector import FeatureView, vector_list
from udfs.segments.conditions import MEMBERSHIP_RECHECK_MS, evaluate
from udfs.segments.updates import SegmentRegistry


@dataclass
class UserState:
    """Everything the engine keeps for one user.

    ``campaigns`` is None until a step needs it; ``campaign_state()`` then loads it through
    ``load_campaigns`` (the adapter reads keyed state there) or starts a fresh one.
    """

    features: feature_state.UserFeatures | None = None
    metadata: dict[str, Any] | None = None
    membership: dict[str, int] = field(default_factory=dict)
    churn_score: float | None = None
    model_version: str | None = None
    campaigns: CampaignState | None = None
    load_campaigns: Callable[[], CampaignState] | None = field(
        default=None, repr=False, compare=False)

    def campaign_state(self) -> CampaignState:
        """The user's campaign state, loaded on first use."""
        if self.campaigns is None:
            loader = self.load_campaigns
            self.campaigns = loader() if loader is not None else CampaignState()
        return self.campaigns


class Scorer(Protocol):
    """The churn model as the engine sees it (``udfs.churn.ChurnModel`` fits)."""

    version: str

    def score(self, vector: list[float]) -> float:
        """Churn probability in [0, 1] of one feature vector (FEATURE_NAMES order)."""
        ...


@dataclass(frozen=True)
class Click:
    """A validated ClickEvent dict; ``ingest_time`` is the Kafka append time of its record."""

    event: dict[str, Any]


@dataclass(frozen=True)
class MetadataUpdate:
    """A user's UserMetadata dict, evaluated at event time ``at_ms``."""

    metadata: dict[str, Any]
    at_ms: int


@dataclass(frozen=True)
class Timer:
    """An event-time timer of a user fired at ``time_ms``."""

    user_id: str
    time_ms: int


#: what a step is applied to
Input = Click | MetadataUpdate | Timer


@dataclass(frozen=True)
class Rules:
    """What a step applies besides the user's state.

    Attributes:
        registries: the segment, campaign and priority-policy definitions in force.
        state_ttl_ms: a user idle this long (event time) leaves every segment; state dropped.
        scorer: the churn model, or None (scoring off).
        audience_sizes: live segment sizes (the priority matrix's audience factor).
    """

    registries: Registries
    state_ttl_ms: int
    scorer: Scorer | None = None
    audience_sizes: Mapping[str, int] = field(default_factory=dict)


@dataclass
class Step:
    """What one step produced, and which parts of the state it changed.

    Attributes:
        changes: SegmentChange dicts (ENTER/EXIT), in order.
        triggers: TriggerEvent dicts to send.
        decisions: TriggerDecision dicts (suppressed or deferred candidates).
        timers: event times at which the user must be stepped again (Flink timers).
        trigger_duplicates: candidates dropped because their trigger id was decided before.
        duplicate: the click was a duplicate (same event id): nothing else happened.
        expired: the user was idle beyond the TTL: every segment EXITed; drop all state.
        features_changed: ``state.features`` must be stored.
        metadata_changed: ``state.metadata`` must be stored.
        campaigns_changed: ``state.campaigns`` must be stored (cleared when empty).
        expiry_timer_ms: when the user's state expires if nothing else arrives (set with
            ``features_changed``; rounded to a day so it moves at most once a day).
    """

    changes: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    timers: list[int] = field(default_factory=list)
    trigger_duplicates: int = 0
    duplicate: bool = False
    expired: bool = False
    features_changed: bool = False
    metadata_changed: bool = False
    campaigns_changed: bool = False
    expiry_timer_ms: int | None = None


def step(state: UserState, item: Input, rules: Rules, now_ms: int) -> Step:
    """Apply one input to one user's state: features, churn, segments, then campaigns.

    Args:
        state: the user's state; updated in place.
        item: a click, a metadata update or a timer.
        rules: the definitions in force, the TTL, the churn model, audience sizes.
        now_ms: wall-clock time of the step (a trigger's ``emit_time``; never read as event
            time).
    """
    registry = rules.registries.segments
    scorer = rules.scorer
    event: dict[str, Any] | None = None
    out = Step()
    if isinstance(item, Click):
        event = item.event
        seg = on_event(state, event, registry, scorer)
        if seg.duplicate:
            return Step(duplicate=True)
        assert state.features is not None  # on_event created them
        out.features_changed = True
        out.expiry_timer_ms = expiry_timer_ms(state.features.last_event_ms, rules.state_ttl_ms)
        user_id, cause = event["user_id"], str(event["event_id"])
    elif isinstance(item, MetadataUpdate):
        seg = on_metadata(state, item.metadata, registry, item.at_ms, scorer)
        out.metadata_changed = seg.now_ms is not None  # an older record is ignored
        user_id, cause = item.metadata["user_id"], f"metadata@{item.metadata.get('updated_at')}"
    else:
        user_id, cause = item.user_id, f"timer@{item.time_ms}"
        if expired(state, item.time_ms, rules.state_ttl_ms):
            # an idle user leaves every segment, then their state is dropped (bounded state)
            seg = on_expiry(state, user_id, item.time_ms, rules.state_ttl_ms, scorer)
            return Step(changes=seg.changes, expired=True)
        seg = on_timer(state, user_id, item.time_ms, registry, scorer)
    out.changes = seg.changes
    if seg.next_timer_ms is not None:
        out.timers.append(seg.next_timer_ms)
    _campaigns(state, user_id, seg, rules, cause, event, isinstance(item, Timer), now_ms, out)
    return out


def _campaigns(state: UserState, user_id: str, seg: MembershipStep, rules: Rules, cause: str,
               event: dict[str, Any] | None, timer: bool, now_ms: int, out: Step) -> None:
    """The campaigns' half of a step: fire, arbitrate, decide; results into ``out``.

    The campaign state is read only when it can matter: at a timer (deferred candidates fall
    due), when a campaign fires, or when a campaign watches the churn score (for crossings).
    """
    registries = rules.registries
    if seg.now_ms is None or not len(registries.campaigns):
        return
    campaigns = registries.campaign_map()
    facts = arbitration.StepFacts(user_id, seg.now_ms, cause, event, tuple(seg.changes),
                                  state.churn_score, seg.view, state.metadata)
    if not (timer or registries.uses_churn()
            or arbitration.find_candidates(campaigns.values(), facts, None)):
        return
    cstate = state.campaign_state()
    defs = arbitration.Definitions(campaigns, registries.policies.policy(),
                                   registries.segment_versions(), rules.audience_sizes)
    user = arbitration.UserFacts(user_id, state.metadata, state.membership, state.churn_score,
                                 state.model_version)
    outcome = arbitration.on_step(cstate, facts, user, defs, now_ms)
    out.campaigns_changed = outcome.state_changed
    due = cstate.next_due_ms()
    if due is not None:
        out.timers.append(due)
    out.triggers = outcome.triggers
    out.decisions = outcome.decisions
    out.trigger_duplicates = outcome.duplicates


@dataclass(frozen=True)
class MembershipStep:
    """What the segment half of a step produced."""

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
             scorer: Scorer | None = None) -> MembershipStep:
    """Apply one valid ClickEvent; a duplicate (same event id) changes nothing."""
    features = state.features
    if features is not None and features.is_duplicate(event["event_id"]):
        return MembershipStep([], None, duplicate=True)
    state.features = feature_state.update(features, event)
    return _reevaluate(state, event["user_id"], event["event_time"], registry,
                       cause=event["event_id"], cause_event_id=event["event_id"], scorer=scorer)


def on_metadata(state: UserState, metadata: dict[str, Any], registry: SegmentRegistry,
                now_ms: int, scorer: Scorer | None = None) -> MembershipStep:
    """Apply the user's latest metadata (a newer ``updated_at`` wins; older is ignored)."""
    current = state.metadata
    if current is not None and current.get("updated_at", 0) > metadata.get("updated_at", 0):
        return MembershipStep([], None)
    state.metadata = metadata
    return _reevaluate(state, metadata["user_id"], now_ms, registry,
                       cause=f"metadata@{metadata.get('updated_at')}", cause_event_id=None,
                       scorer=scorer)


def on_timer(state: UserState, user_id: str, timer_ms: int,
             registry: SegmentRegistry, scorer: Scorer | None = None) -> MembershipStep:
    """Re-evaluate at a timer's event time (absence windows, inactivity, expiring windows)."""
    return _reevaluate(state, user_id, timer_ms, registry, cause=f"timer@{timer_ms}",
                       cause_event_id=None, scorer=scorer)


def on_expiry(state: UserState, user_id: str, timer_ms: int, ttl_ms: int,
              scorer: Scorer | None = None) -> MembershipStep:
    """The user's state is about to be dropped (idle beyond the TTL): EXIT every segment."""
    if scorer is not None and state.features is not None:
        state.churn_score = scorer.score(
            vector_list(state.features, timer_ms, state.metadata))
        state.model_version = scorer.version
    reason = f"user state expired: no event for {ttl_ms // 86_400_000} days"
    changes = [
        _change(state, user_id, segment_id, "EXIT", version, timer_ms, reason,
                f"expiry@{timer_ms}", None)
        for segment_id, version in sorted(state.membership.items())
    ]
    state.membership.clear()
    return MembershipStep(changes, None)


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
    return state.features is not None and feature_state.expired(state.features, now_ms, ttl_ms)


def _reevaluate(state: UserState, user_id: str, now_ms: int, registry: SegmentRegistry,
                cause: str, cause_event_id: str | None,
                scorer: Scorer | None = None) -> MembershipStep:
    if state.features is not None:
        # a user's clock never goes backwards: an out-of-order event, older metadata or a timer
        # behind the user's newest event is evaluated at that newest event time
        now_ms = max(now_ms, state.features.last_event_ms)
    vector = None
    if scorer is not None and state.features is not None:
        # re-scored at every evaluation (each new event, metadata update and timer): the
        # vector changes with time alone (recency), and a score costs ~12 µs; the segments
        # then read the same vector
        vector = vector_list(state.features, now_ms, state.metadata)
        state.churn_score = scorer.score(vector)
        state.model_version = scorer.version
    view = FeatureView(state.features, state.metadata, now_ms, state.churn_score, vector)
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
    return MembershipStep(changes, next_timer, now_ms=now_ms, view=view)
