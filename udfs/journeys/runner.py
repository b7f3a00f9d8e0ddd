"""Journeys for one user: start instances, move them through their nodes, hand sends to arbitration.

Inputs, per engine step of one user: what the step did (``arbitration.StepFacts``: its segment
changes, the click or the engagement outcome if any, the churn score), the user's membership and
metadata, the journeys in force, and the churn score before the step. Outputs: ``Candidate``s
for the send and sync_audience nodes reached (they compete in the same per-user decision as
campaigns: consent, caps, quiet hours, arbitration, dedup), the moves made (for the per-node
counters) and the next event time at which an instance's wait ends. State: ``JourneyState`` per
user - the running instance of each journey and, per journey, how many instances the user has
started and when the last one ended (re-entry).

Pure: no pyflink, no wall clock; the engine calls ``on_step`` in event-time order (after every
check due before the step), so an instance's path depends on the event times of what the user
did alone, not on arrival order. The rules are written down in ``udfs/journeys/JOURNEYS.md``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple

from udfs.campaigns.arbitration import (
    Candidate,
    StepFacts,
    caused_by_backfill,
    fill_payload,
    fired,
    may_fire,
    trigger_id,
)
from udfs.campaigns.grammar import AUDIENCE_CHANNEL, Campaign, CampaignTrigger
from udfs.journeys.grammar import AUDIENCE_TEMPLATE, Condition, Journey, Node
from udfs.journeys.state import Instance, JourneyState

# what a move did (the per-node counters and the records' explanations)
ENTERED: Final = "entered"
SENT: Final = "sent"
WAITING: Final = "waiting"
CONVERTED: Final = "converted"
EXITED: Final = "exited"


@dataclass
class JourneyStep:
    """What one step did to the user's journeys.

    ``candidates``: sends for arbitration; ``moves``: (journey id, node id, what) for the
    per-node counters, in order; ``changed``: the state must be stored.
    """

    candidates: list[Candidate] = field(default_factory=list)
    moves: list[tuple[str, str, str]] = field(default_factory=list)
    changed: bool = False


# --- the campaigns journey sends compete as ---------------------------------------------------

_NEVER: Final = CampaignTrigger()  # a node's campaign never fires by itself: the instance sends it
_send_campaigns_cache: dict[tuple[tuple[str, int, bool], ...], dict[str, Campaign]] = {}


def send_campaigns(journeys: Mapping[str, Journey]) -> dict[str, Campaign]:
    """The campaign each send and sync_audience node competes as, by id (``<journey>/<node>``).

    It carries the journey's priority factors, expiry, quiet-hours and conflict rules,
    attribution rule, goal and holdout share, so arbitration treats a journey's send exactly as
    a campaign's (cached per set of versions).
    """
    key = tuple(sorted((j.id, j.version, j.enabled) for j in journeys.values()))
    cached = _send_campaigns_cache.get(key)
    if cached is None:
        cached = {}
        for journey in journeys.values():
            for node in journey.nodes.values():
                if node.kind in ("send", "sync_audience"):
                    campaign = _node_campaign(journey, node)
                    cached[campaign.id] = campaign
        if len(_send_campaigns_cache) > 64:
            _send_campaigns_cache.clear()
        _send_campaigns_cache[key] = cached
    return cached


def _node_campaign(journey: Journey, node: Node) -> Campaign:
    send = node.send
    if send is not None:
        channels, template, payload = send.channels, send.template, send.payload
        expires = send.expires_after_ms if send.expires_after_ms is not None \
            else journey.expires_after_ms
    else:
        channels, template = (AUDIENCE_CHANNEL,), AUDIENCE_TEMPLATE
        payload, expires = (("audience", node.audience or ""),), journey.expires_after_ms
    return Campaign(
        id=journey.send_campaign_id(node.id), version=journey.version,
        description=f"{journey.description} (node {node.id})", enabled=journey.enabled,
        trigger=_NEVER, channels=channels, template=template, payload=payload,
        valid_from_ms=None, valid_until_ms=None, expires_after_ms=expires,
        urgency=journey.urgency, expected_roi=journey.expected_roi,
        brand_significance=journey.brand_significance,
        audience_segment=journey.entry.trigger.segment_enter,
        bypass_quiet_hours=journey.bypass_quiet_hours,
        defer_on_conflict=journey.defer_on_conflict, send_on_backfill=journey.send_on_backfill,
        source=journey.source,
        journey_id=journey.id, node_id=node.id, attribution=journey.attribution,
        goal=journey.attribution_goal, holdout=journey.holdout)


# --- the step ----------------------------------------------------------------------------------


class UserNow(NamedTuple):
    """What conditions read of the user besides the instance (one per step: a named tuple)."""

    membership: Mapping[str, int]
    metadata: Mapping[str, Any] | None
    churn_score: float | None


def on_step(state: JourneyState, facts: StepFacts, user: UserNow,
            journeys: Mapping[str, Journey], previous_churn: float | None) -> JourneyStep:
    """The journeys' part of one engine step, at ``facts.now_ms``.

    In order: an engagement outcome is recorded on the instance that sent its trigger; a click
    is recorded for the event conditions that watch for it and ends instances whose goal it
    meets; instances of deleted or disabled journeys end, and those of a journey with a new
    version move onto it (or end, when their node is gone); every instance moves on as far as
    it can (a wait that ended, a condition met); then journeys whose entry fires start an
    instance, when the re-entry policy allows.
    """
    out = JourneyStep()
    if facts.outcome is not None:
        _record_outcome(state, facts.outcome, out)
    if facts.event is not None and state.instances:
        _record_event(state, facts, journeys, out)
    for journey_id in list(state.instances):
        instance = state.instances[journey_id]
        journey = journeys.get(journey_id)
        if journey is None or not journey.enabled:
            _end(state, instance, facts.now_ms, out, "journey deleted or disabled")
            continue
        if journey.version != instance.version:
            if instance.node not in journey.nodes:
                _end(state, instance, facts.now_ms, out,
                     f"node {instance.node} is not in version {journey.version}")
                continue
            instance.version = journey.version
            out.changed = True
        _advance(state, instance, journey, facts, user, out, "")
    for journey in journeys.values():
        if journey.enabled and journey.id not in state.instances \
                and may_fire(journey.entry.trigger, facts) and (
                journey.send_on_backfill or not caused_by_backfill(facts.cause)):
            cause = fired(journey.entry.trigger, facts, previous_churn)
            if cause is not None and _may_enter(state, journey, cause.event_time):
                _enter(state, journey, facts, user, out)
    return out


def watches_events(journeys: Iterable[Journey]) -> bool:
    """Whether a click can matter to a running instance (a goal or an event condition)."""
    return any(j.goal is not None or j.watched_events for j in journeys)


def _may_enter(state: JourneyState, journey: Journey, at_ms: int) -> bool:
    if journey.valid_from_ms is not None and at_ms < journey.valid_from_ms:
        return False
    if journey.valid_until_ms is not None and at_ms >= journey.valid_until_ms:
        return False
    if journey.id not in state.started:
        return True
    entry = journey.entry
    if entry.reentry == "never":
        return False
    ended = state.ended.get(journey.id)
    return ended is not None and at_ms >= ended + entry.cooldown_ms


def _enter(state: JourneyState, journey: Journey, facts: StepFacts, user: UserNow,
           out: JourneyStep) -> None:
    number = state.started.get(journey.id, 0) + 1
    state.started[journey.id] = number
    instance = Instance(journey.id, journey.version, number, journey.entry_id, facts.now_ms,
                        facts.now_ms)
    state.instances[journey.id] = instance
    out.changed = True
    out.moves.append((journey.id, journey.entry_id, ENTERED))
    _advance(state, instance, journey, facts, user, out,
             f"entered: {journey.entry.trigger.describe()}")


def _advance(state: JourneyState, instance: Instance, journey: Journey, facts: StepFacts,
             user: UserNow, out: JourneyStep, why: str) -> None:
    """Move the instance through every node it can pass now; stop at a wait or an exit."""
    now = facts.now_ms
    for _ in range(len(journey.nodes) + 1):  # a DAG: each node is passed at most once
        node = journey.nodes[instance.node]
        target: str | None
        if node.kind == "entry":
            target = node.next
        elif node.kind in ("send", "sync_audience"):
            if node.id not in instance.sends:
                out.candidates.append(_candidate(instance, journey, node, facts, why))
                instance.sends[node.id] = out.candidates[-1].trigger_id
                out.moves.append((journey.id, node.id, SENT))
                out.changed = True
            target = node.next
        elif node.kind == "wait":
            wait = node.wait
            assert wait is not None
            if wait.duration_ms is not None:
                ends = instance.node_ms + wait.duration_ms
                if now < ends:
                    _wait(instance, ends, journey, node, out)
                    return
                target, why = node.next, f"waited {_span(wait.duration_ms)} at {node.id}"
            else:
                assert wait.until is not None and wait.timeout_ms is not None
                ends = instance.node_ms + wait.timeout_ms
                if _holds(wait.until, instance, user):
                    target, why = node.next, f"{wait.until.describe()} (at {node.id})"
                elif now >= ends:
                    target = node.on_timeout
                    why = f"not {wait.until.describe()} within {_span(wait.timeout_ms)}"
                else:
                    _wait(instance, ends, journey, node, out)
                    return
        elif node.kind == "condition":
            assert node.condition is not None
            met = _holds(node.condition, instance, user)
            target = node.then if met else node.otherwise
            why = f"{'' if met else 'not '}{node.condition.describe()} (at {node.id})"
        elif node.kind == "split":
            target = _branch(facts.user_id, instance, journey, node)
            why = f"split {node.id} chose {target}"
        else:  # exit
            _end(state, instance, now, out, node.exit_reason, node.id)
            return
        assert target is not None  # the compiler requires every edge of a non-exit node
        instance.node, instance.node_ms, instance.due_ms = target, now, None
        out.changed = True


def _wait(instance: Instance, ends: int, journey: Journey, node: Node, out: JourneyStep
          ) -> None:
    if instance.due_ms != ends:
        instance.due_ms = ends
        out.changed = True
        out.moves.append((journey.id, node.id, WAITING))


def _end(state: JourneyState, instance: Instance, now_ms: int, out: JourneyStep, reason: str,
         node_id: str | None = None) -> None:
    del state.instances[instance.journey_id]
    state.ended[instance.journey_id] = now_ms
    out.changed = True
    what = CONVERTED if reason == CONVERTED else EXITED
    out.moves.append((instance.journey_id, node_id or instance.node, what))


def _candidate(instance: Instance, journey: Journey, node: Node, facts: StepFacts, why: str
               ) -> Candidate:
    campaign = send_campaigns({journey.id: journey})[journey.send_campaign_id(node.id)]
    payload, missing = fill_payload(campaign, facts)
    cause = f"journey v{instance.version} instance {instance.number}"
    event = facts.event
    from_event = event is not None and event.get("event_time") == facts.now_ms
    reason = f"journey {journey.id} at {node.id} (instance {instance.number})"
    return Candidate(
        trigger_id=trigger_id(facts.user_id, journey.id, node.id, cause),
        campaign_id=campaign.id, campaign_version=journey.version, cause=cause,
        cause_event_id=str(event["event_id"]) if from_event and event is not None
        else facts.cause,
        cause_event_time=facts.now_ms,
        ingest_time=event.get("ingest_time") if from_event and event is not None else None,
        payload=payload, features={}, trigger_reason=f"{reason}: {why}" if why else reason,
        due_ms=facts.now_ms, missing=missing, journey_instance=instance.number)


def _branch(user_id: str, instance: Instance, journey: Journey, node: Node) -> str:
    """A split's arm, by a hash of (user, journey, node, instance) in [0, 100).

    The same user takes the same arm in a replay; across users the arms get their percentages.
    """
    digest = hashlib.sha256(f"{user_id}|{journey.id}|{node.id}|{instance.number}".encode())
    point = int.from_bytes(digest.digest()[:8], "big") / 2**64 * 100
    total = 0.0
    for branch in node.branches:
        total += branch.percent
        if point < total:
            return branch.next
    return node.branches[-1].next


def _holds(condition: Condition, instance: Instance, user: UserNow) -> bool:
    if condition.outcome is not None:
        node_id, outcome = condition.outcome
        return outcome in instance.outcomes.get(node_id, ())
    if condition.event is not None:
        return condition.key in instance.seen
    if condition.segment is not None:
        return condition.segment in user.membership
    score = user.churn_score
    if condition.churn_above is not None:
        return score is not None and score >= condition.churn_above
    if condition.churn_below is not None:
        return score is not None and score < condition.churn_below
    if condition.metadata is not None:
        name, value = condition.metadata
        return (user.metadata or {}).get(name) == value
    if condition.all_of:
        return all(_holds(c, instance, user) for c in condition.all_of)
    return any(_holds(c, instance, user) for c in condition.any_of)


def _record_outcome(state: JourneyState, outcome: Mapping[str, Any], out: JourneyStep) -> None:
    trigger = outcome.get("trigger_id")
    for instance in state.instances.values():
        for node_id, sent in instance.sends.items():
            if sent == trigger:
                seen = instance.outcomes.setdefault(node_id, [])
                if outcome["outcome"] not in seen:  # a redelivered outcome changes nothing
                    seen.append(outcome["outcome"])
                    out.changed = True
                return


def _record_event(state: JourneyState, facts: StepFacts, journeys: Mapping[str, Journey],
                  out: JourneyStep) -> None:
    recent = facts.recent
    assert recent is not None and facts.event is not None
    for journey_id in list(state.instances):
        instance = state.instances[journey_id]
        journey = journeys.get(journey_id)
        if journey is None:
            continue
        if journey.goal is not None and journey.goal.matches(recent):
            _end(state, instance, facts.now_ms, out, CONVERTED)
            continue
        for watched in journey.watched_events:
            assert watched.event is not None
            if watched.key not in instance.seen and watched.event.matches(recent):
                instance.seen[watched.key] = facts.now_ms
                out.changed = True


def _span(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms} ms"


# the registries' maps are new objects after every definition change: the last pair seen, by
# identity (the references keep them alive, so an identity is never reused while cached)
_decision_cache: list[tuple[Mapping[str, Campaign], Mapping[str, Journey],
                            Mapping[str, Campaign]]] = []


def decision_campaigns(campaigns: Mapping[str, Campaign], journeys: Mapping[str, Journey]
                       ) -> Mapping[str, Campaign]:
    """The campaigns a decision knows: the campaigns in force and every journey node's."""
    if not journeys:
        return campaigns
    for cached_campaigns, cached_journeys, merged in _decision_cache:
        if cached_campaigns is campaigns and cached_journeys is journeys:
            return merged
    merged = {**campaigns, **send_campaigns(journeys)}
    _decision_cache[:] = [(campaigns, journeys, merged)]
    return merged


def churn_thresholds(journeys: Mapping[str, Journey]) -> tuple[float, ...]:
    """The churn crossings that start journeys."""
    return tuple(j.entry.trigger.churn_crosses for j in journeys.values()
                 if j.entry.trigger.churn_crosses is not None)
