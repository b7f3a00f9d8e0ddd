"""Campaign triggers for one user: candidates, the priority matrix, arbitration, caps, quiet hours.

Inputs, per engine step of one user: what the step did (its SegmentChanges, the click if any,
the churn score before and after), the user's metadata and membership, the campaigns and the
priority policy in force, and the live audience sizes of segments. Outputs: TriggerEvent dicts
(to the topic of their tier) and TriggerDecision dicts (a suppressed or deferred candidate and
why), plus the next event time at which a deferred candidate falls due (the adapter sets a
timer). State: ``CampaignState`` per user - what was sent (for caps, spacing and
re-eligibility), which trigger ids were decided (dedup), the deferred candidates, and the last
churn score (to detect a crossing).

Pure: no pyflink, no wall clock. ``now_ms`` is the event time of the event or timer being
processed; ``emit_time_ms`` (processing time, only stamped on the output) is handed in. The rules
are written down in ``udfs/campaigns/CAMPAIGNS.md``; the priority matrix is
``udfs.campaigns.priority``, the local-time rules ``udfs.campaigns.local_time``.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Final
from zoneinfo import ZoneInfo

from udfs.attribution.attribution import Touch, attribution_unit
from udfs.attribution.holdout import CONTROL, TREATED, assign_arm
from udfs.attribution.roi import MeasuredRoi, Pricing
from udfs.attribution.touches import LiftFact, TouchLog
from udfs.attribution.touches import from_doc as touch_log
from udfs.attribution.touches import to_doc as touch_doc
from udfs.campaigns.grammar import (
    AUDIENCE_CHANNEL,
    DEFAULT_GOAL,
    PLACEHOLDER_RE,
    Campaign,
    CampaignTrigger,
    Cap,
    PriorityPolicy,
)
from udfs.campaigns.local_time import cap_free_at, quiet_until, zone_of
from udfs.campaigns.priority import Priority, score_priority
from udfs.definitions.event_filter import EventFilter
from udfs.features.view import RecentEvent
from udfs.journeys.state import JourneyState
from udfs.journeys.state import from_doc as journey_state
from udfs.journeys.state import to_doc as journey_doc

#: how long sends and decided trigger ids are remembered (weekly caps need 7 local days)
HISTORY_MS: Final = 8 * 86_400_000
#: per-campaign last-send times are remembered this long (re-eligibility windows)
LAST_SEND_MS: Final = 400 * 86_400_000
STEP_ID: Final = "main"
STATE_VERSION: Final = 1

SUPPRESSED: Final = "SUPPRESSED"
DEFERRED: Final = "DEFERRED"

# reason codes of TriggerDecision (see schemas/TriggerDecision.avsc)
NO_POLICY: Final = "NO_POLICY"
CAMPAIGN_GONE: Final = "CAMPAIGN_GONE"
HOLDOUT: Final = "HOLDOUT"  # held out of the campaign (its holdout share): counted, not sent
CONTROL_GROUP: Final = "CONTROL_GROUP"  # in the policy's global control group: no campaign at all
NOT_ELIGIBLE: Final = "NOT_ELIGIBLE"
NO_CONSENT: Final = "NO_CONSENT"
REELIGIBILITY: Final = "REELIGIBILITY"
MISSING_PAYLOAD: Final = "MISSING_PAYLOAD"
EXPIRED: Final = "EXPIRED"
LOST_ARBITRATION: Final = "LOST_ARBITRATION"
QUIET_HOURS: Final = "QUIET_HOURS"
CHANNEL_CAP: Final = "CHANNEL_CAP"
CAMPAIGN_CAP: Final = "CAMPAIGN_CAP"
MIN_INTERVAL: Final = "MIN_INTERVAL"
AWAITING_METADATA: Final = "AWAITING_METADATA"
BACKFILL: Final = "BACKFILL"  # caused by a backfill, and the campaign says ``on_backfill: skip``

#: a user's first click often arrives before their metadata (two topics): a candidate of a user
#: without metadata waits this long (event time) once before consent is judged
METADATA_GRACE_MS: Final = 60_000


#: how the cause label of what a backfill causes starts: ``backfill@<backfill id>`` is the
#: SegmentChanges' cause and the TriggerEvents' ``cause_event_id`` (senders can tell them by it)
BACKFILL_PREFIX: Final = "backfill@"


def backfill_cause(backfill_id: str) -> str:
    """The cause label of what a backfill (``udfs.engine.Backfill``) causes."""
    return f"{BACKFILL_PREFIX}{backfill_id}"


def caused_by_backfill(cause: str) -> bool:
    """Whether a cause label (or a trigger's ``cause_event_id``) is a backfill's."""
    return cause.startswith(BACKFILL_PREFIX)


# --- state -------------------------------------------------------------------------------------


@dataclass
class Candidate:
    """A campaign that fired for a user and waits for its decision.

    ``cause`` is what ``trigger_id`` hashes (an event id, a change id or a timer cause);
    ``cause_event_id`` and ``cause_event_time`` go on the TriggerEvent; ``ingest_time`` is the
    causing record's Kafka timestamp (None for a time-driven cause); ``due_ms`` is when it
    (re-)competes.
    """

    trigger_id: str
    campaign_id: str
    campaign_version: int
    cause: str
    cause_event_id: str
    cause_event_time: int
    ingest_time: int | None
    payload: dict[str, str]
    features: dict[str, float]
    trigger_reason: str
    due_ms: int
    missing: list[str] = field(default_factory=list)
    deferrals: int = 0
    journey_instance: int | None = None  # set on a journey node's send (its instance number)


@dataclass
class CampaignState:
    """One user's campaign state (JSON-encoded into Flink keyed state by the adapter).

    Attributes:
        sent: (trigger_id, campaign_id, channel, event time) of the last ``HISTORY_MS``.
        last_send: campaign id -> event time of its last send to this user.
        decided: trigger id -> event time of its decision (sent or suppressed): dedup.
        pending: deferred candidates and those waiting out the decision window.
        churn_score: the churn score as of the last step that moved it across a threshold
            (steps that score nothing leave it), to detect a crossing.
        journeys: the user's journey instances (``udfs.journeys.runner``), kept in the same
            keyed state value: a journey's sends and the campaigns' share one decision.
        opt_outs: channel -> event time of the user's latest UNSUBSCRIBED or COMPLAINED
            outcome on it (``record_opt_out``); kept for good, a few bytes per channel.
        touches: the triggers sent and the candidates held out that a conversion can still be
            credited to (``udfs.attribution.touches``).
    """

    sent: list[tuple[str, str, str, int]] = field(default_factory=list)
    last_send: dict[str, int] = field(default_factory=dict)
    decided: dict[str, int] = field(default_factory=dict)
    pending: list[Candidate] = field(default_factory=list)
    churn_score: float | None = None
    journeys: JourneyState = field(default_factory=JourneyState)
    opt_outs: dict[str, int] = field(default_factory=dict)
    touches: TouchLog = field(default_factory=TouchLog)

    def __init__(self, sent: list[tuple[str, str, str, int]] | None = None,
                 last_send: dict[str, int] | None = None, decided: dict[str, int] | None = None,
                 pending: list[Candidate] | None = None, churn_score: float | None = None,
                 journeys: JourneyState | None = None, opt_outs: dict[str, int] | None = None,
                 touches: TouchLog | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        self.sent = [] if sent is None else sent
        self.last_send = {} if last_send is None else last_send
        self.decided = {} if decided is None else decided
        self.pending = [] if pending is None else pending
        self.churn_score = churn_score
        self.journeys = JourneyState() if journeys is None else journeys
        self.opt_outs = {} if opt_outs is None else opt_outs
        self.touches = TouchLog() if touches is None else touches

    def last_sent_ms(self) -> int | None:
        """Event time of the user's latest trigger, or None."""
        return max((s[3] for s in self.sent), default=None)

    def next_due_ms(self) -> int | None:
        """When the earliest pending candidate falls due or a journey's wait ends, or None."""
        due = min((c.due_ms for c in self.pending), default=None)
        waits = self.journeys.next_due_ms()
        return waits if due is None else due if waits is None else min(due, waits)

    def prune(self, now_ms: int) -> None:
        """Forget what no rule can look at any more (bounded state)."""
        horizon = now_ms - HISTORY_MS
        self.sent = [s for s in self.sent if s[3] >= horizon]
        self.decided = {k: t for k, t in self.decided.items() if t >= horizon}
        self.last_send = {k: t for k, t in self.last_send.items() if t >= now_ms - LAST_SEND_MS}
        self.touches.prune(now_ms)

    def is_empty(self) -> bool:
        """Nothing worth keeping (the adapter then clears the state)."""
        return not (self.sent or self.last_send or self.decided or self.pending
                    or self.opt_outs or not self.touches.is_empty()) and \
            self.churn_score is None and self.journeys.is_empty()


#: ``json.dumps(doc, separators=(",", ":"))`` without building an encoder (interpreted Python)
#: at every call: the same bytes
_COMPACT_JSON: Final = json.JSONEncoder(separators=(",", ":"))


def encode_state(state: CampaignState) -> bytes:
    """The state as versioned JSON bytes."""
    doc = {"v": STATE_VERSION, "sent": state.sent, "last_send": state.last_send,
           "decided": state.decided, "pending": [asdict(c) for c in state.pending],
           "churn_score": state.churn_score}
    if not state.journeys.is_empty():
        doc["journeys"] = journey_doc(state.journeys)
    if state.opt_outs:
        doc["opt_outs"] = state.opt_outs
    if not state.touches.is_empty():
        doc["touches"] = touch_doc(state.touches)
    return _COMPACT_JSON.encode(doc).encode()


def decode_state(raw: bytes | None) -> CampaignState:
    """Decode ``encode_state``'s bytes (None or empty: a fresh state).

    Raises:
        ValueError: an unknown state version (a savepoint of a newer nudgeflow).
    """
    if not raw:
        return CampaignState()
    doc = json.loads(raw)
    if doc.get("v") != STATE_VERSION:
        raise ValueError(f"campaign state version {doc.get('v')!r} is not {STATE_VERSION}: "
                         "this savepoint was written by another nudgeflow version")
    return CampaignState(
        sent=[(s[0], s[1], s[2], int(s[3])) for s in doc["sent"]],
        last_send={k: int(v) for k, v in doc["last_send"].items()},
        decided={k: int(v) for k, v in doc["decided"].items()},
        pending=[Candidate(**c) for c in doc["pending"]],
        churn_score=doc.get("churn_score"),
        # absent in state written before journeys (a savepoint restores with none running)
        journeys=journey_state(doc.get("journeys")),
        # absent in state written before opt-outs were honoured: none recorded
        opt_outs={k: int(v) for k, v in (doc.get("opt_outs") or {}).items()},
        touches=touch_log(doc.get("touches")),  # absent before attribution: none
    )


# --- candidates --------------------------------------------------------------------------------


def trigger_id(user_id: str, campaign_id: str, step_id: str, cause: str) -> str:
    """Deterministic trigger id: the same (user, campaign, step, cause) gives the same id."""
    return hashlib.sha256(f"{user_id}|{campaign_id}|{step_id}|{cause}".encode()).hexdigest()[:32]


@dataclass(frozen=True)
class StepFacts:
    """What one engine step did, as the campaigns see it.

    Attributes:
        user_id: The user.
        now_ms: Event time of the step.
        cause: What caused the step (event id, ``timer@<ms>``, ``metadata@<ms>``).
        event: The click (a ClickEvent dict with ``ingest_time``), or None.
        changes: The step's SegmentChange dicts.
        churn_score: The churn score after the step (None without a model).
        view: The user's ``udfs.features.view.UserView`` at ``now_ms`` (payload features).
        metadata: The user's metadata dict, or None.
        outcome: The engagement outcome applied in this step (a CampaignOutcome dict), or None.
    """

    user_id: str
    now_ms: int
    cause: str
    event: Mapping[str, Any] | None
    changes: tuple[Mapping[str, Any], ...]
    churn_score: float | None
    view: Any
    metadata: Mapping[str, Any] | None
    outcome: Mapping[str, Any] | None = None
    # built at the first read, once per step rather than once per campaign (plain fields, not
    # ``functools.cached_property``: Python 3.11's takes a lock at every first read, and a
    # compiled class (``udfs.native``) has no instance dict for it)
    _entered: frozenset[str] | None = field(default=None, init=False, repr=False, compare=False)
    _recent: RecentEvent | None = field(default=None, init=False, repr=False, compare=False)

    def __init__(self, user_id: str, now_ms: int, cause: str, event: Mapping[str, Any] | None,
                 changes: tuple[Mapping[str, Any], ...], churn_score: float | None, view: Any,
                 metadata: Mapping[str, Any] | None,
                 outcome: Mapping[str, Any] | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``);
        # it sets the ``init=False`` fields too (a compiled dataclass leaves them unset)
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "now_ms", now_ms)
        object.__setattr__(self, "cause", cause)
        object.__setattr__(self, "event", event)
        object.__setattr__(self, "changes", changes)
        object.__setattr__(self, "churn_score", churn_score)
        object.__setattr__(self, "view", view)
        object.__setattr__(self, "metadata", metadata)
        object.__setattr__(self, "outcome", outcome)
        object.__setattr__(self, "_entered", None)
        object.__setattr__(self, "_recent", None)

    @property
    def entered(self) -> frozenset[str]:
        """The segments the user ENTERed in this step."""
        entered = self._entered
        if entered is None:
            entered = frozenset(c["segment_id"] for c in self.changes if c["change"] == "ENTER")
            object.__setattr__(self, "_entered", entered)  # frozen: set once, here
        return entered

    @property
    def recent(self) -> RecentEvent | None:
        """The click as event filters read it (None without one)."""
        event = self.event
        if event is None:
            return None
        recent = self._recent
        if recent is None:
            recent = RecentEvent(event["event_id"], event["event_type"], event["event_time"],
                                 event.get("source") or "UNKNOWN", event.get("product_id"),
                                 event.get("category"), event.get("price"),
                                 event.get("quantity"), event.get("currency"))
            object.__setattr__(self, "_recent", recent)
        return recent


@dataclass(frozen=True)
class Cause:
    """Why a trigger fired in a step: what its trigger id hashes and what goes on the record.

    ``cause`` is what the trigger id hashes; ``event_id`` and ``event_time`` go on the
    TriggerEvent; ``ingest_time`` is the causing record's Kafka timestamp (None for a
    time-driven cause); ``features`` are explanation values (the event's value, the score).
    """

    cause: str
    event_id: str
    event_time: int
    ingest_time: int | None
    features: dict[str, float]


def fired(trig: CampaignTrigger, facts: StepFacts, previous_churn: float | None
          ) -> Cause | None:
    """The cause, when this step fires ``trig``; None when it does not.

    A trigger fires on an ENTER into its segment; a click matching its event filter; the churn
    score crossing its threshold upwards (from below, or from no score).
    """
    if trig.segment_enter is not None:
        change = next((c for c in facts.changes
                       if c["change"] == "ENTER" and c["segment_id"] == trig.segment_enter), None)
        if change is None:
            return None
        ingest = None
        if facts.event is not None and change.get("cause_event_id") == facts.event.get(
                "event_id"):
            ingest = facts.event.get("ingest_time")
        return Cause(str(change["change_id"]), str(change.get("cause_event_id") or facts.cause),
                     int(change["event_time"]), ingest, {})
    if trig.event is not None:
        event, recent = facts.event, facts.recent
        if event is None or recent is None or not trig.event.matches(recent):
            return None
        features = {"event.value": float(recent.value)} if recent.value is not None else {}
        return Cause(str(event["event_id"]), str(event["event_id"]), int(event["event_time"]),
                     event.get("ingest_time"), features)
    threshold = trig.churn_crosses
    score = facts.churn_score
    if score is None or threshold is None or score < threshold or (
            previous_churn is not None and previous_churn >= threshold):
        return None
    event = facts.event
    return Cause(f"churn>={threshold}@{facts.cause}",
                 str(event["event_id"]) if event is not None else facts.cause, facts.now_ms,
                 event.get("ingest_time") if event is not None else None,
                 {"churn_score": float(score)})


def may_fire(trig: CampaignTrigger, facts: StepFacts) -> bool:
    """Whether ``fired`` can fire ``trig`` at this step at all (its cheap necessary tests).

    A segment trigger needs an ENTER into its segment in this step, an event trigger a click of
    one of its types, a churn trigger a score at or above its threshold; a trigger with none
    set (a journey node's campaign) never fires. Most steps leave few triggers, and ``fired``
    (which decides, and builds the cause) runs only for them.
    """
    if trig.segment_enter is not None:
        return trig.segment_enter in facts.entered
    if trig.event is not None:
        return facts.event is not None and facts.event["event_type"] in trig.event.types
    score = facts.churn_score
    return score is not None and trig.churn_crosses is not None and score >= trig.churn_crosses


def find_candidates(campaigns: Iterable[Campaign], facts: StepFacts,
                    previous_churn: float | None) -> list[Candidate]:
    """The campaigns this step fires (``fired``), as candidates (before any rule is applied).

    The cause's event time must lie in the campaign's validity window.
    """
    return _candidates((c for c in campaigns if c.enabled and may_fire(c.trigger, facts)),
                       facts, previous_churn)


def _candidates(campaigns: Iterable[Campaign], facts: StepFacts,
                previous_churn: float | None) -> list[Candidate]:
    """``find_candidates`` of campaigns that are enabled and ``may_fire`` at the step."""
    found = []
    for campaign in campaigns:
        cause = fired(campaign.trigger, facts, previous_churn)
        if cause is None:
            continue
        if campaign.valid_from_ms is not None and cause.event_time < campaign.valid_from_ms:
            continue
        if campaign.valid_until_ms is not None and cause.event_time >= campaign.valid_until_ms:
            continue
        payload, missing = fill_payload(campaign, facts)
        found.append(Candidate(
            trigger_id=trigger_id(facts.user_id, campaign.id, STEP_ID, cause.cause),
            campaign_id=campaign.id, campaign_version=campaign.version, cause=cause.cause,
            cause_event_id=cause.event_id, cause_event_time=cause.event_time,
            ingest_time=cause.ingest_time, payload=payload, features=dict(cause.features),
            trigger_reason=campaign.trigger.describe(), due_ms=facts.now_ms, missing=missing,
        ))
    return found


def churn_thresholds(campaigns: Iterable[Campaign]) -> tuple[float, ...]:
    """The churn crossings ``on_step`` keeps the score's band for (disabled campaigns too)."""
    return tuple(c.trigger.churn_crosses for c in campaigns
                 if c.trigger.churn_crosses is not None)


class Firing:
    """A mapping's campaigns indexed by what can fire them: ``find_candidates`` without a scan.

    A step asks only the campaigns its ENTERed segments, its click's type or its score can
    fire (``may_fire``'s tests, looked up), instead of ``may_fire`` on every campaign: most
    steps fire none. Built once per definition change (the engine keeps it with the
    definitions: ``Definitions.firing``); the answers are ``find_candidates``'s, in the
    mapping's order.
    """

    def __init__(self, campaigns: Iterable[Campaign]) -> None:
        self.by_segment: dict[str, list[tuple[int, Campaign]]] = {}
        self.by_type: dict[str, list[tuple[int, Campaign]]] = {}
        self.by_churn: list[tuple[int, Campaign]] = []
        #: every campaign, in order (disabled ones too)
        self.campaigns = listed = tuple(campaigns)
        for position, campaign in enumerate(listed):
            trig = campaign.trigger
            if not campaign.enabled:
                continue
            # the branches of ``may_fire``, in its order: a trigger is asked by its first kind
            if trig.segment_enter is not None:
                self.by_segment.setdefault(trig.segment_enter, []).append((position, campaign))
            elif trig.event is not None:
                for kind in trig.event.types:
                    self.by_type.setdefault(kind, []).append((position, campaign))
            elif trig.churn_crosses is not None:
                self.by_churn.append((position, campaign))
        #: the campaigns' churn crossings (``churn_thresholds``)
        self.churn_thresholds = churn_thresholds(listed)

    def may_fire(self, facts: StepFacts) -> list[Campaign]:
        """The enabled campaigns whose trigger ``may_fire`` at the step, in mapping order."""
        found: list[tuple[int, Campaign]] = []
        if facts.changes:
            for segment_id in facts.entered:
                found.extend(self.by_segment.get(segment_id, ()))
        event = facts.event
        if event is not None:
            found.extend(self.by_type.get(event["event_type"], ()))
        score = facts.churn_score
        if score is not None:
            found.extend(p for p in self.by_churn
                         if score >= p[1].trigger.churn_crosses)  # type: ignore[operator]
        if len(found) > 1:
            found.sort(key=_position)  # each campaign is in one list: positions are distinct
        return [campaign for _, campaign in found]

    def candidates(self, facts: StepFacts, previous_churn: float | None) -> list[Candidate]:
        """``find_candidates`` over the indexed campaigns."""
        return _candidates(self.may_fire(facts), facts, previous_churn)


def _position(entry: tuple[int, Campaign]) -> int:
    return entry[0]


def still_fired(candidate: Candidate, campaign: Campaign, previous_churn: float | None) -> bool:
    """Whether a candidate found with no kept score (the widest) also fires with this one.

    Only a churn crossing depends on the kept score: it does not fire when the kept score
    already reached the threshold (``fired``'s last branch; its cause is the same otherwise).
    """
    trig = campaign.trigger
    threshold = trig.churn_crosses
    return trig.segment_enter is not None or trig.event is not None or threshold is None \
        or previous_churn is None or previous_churn < threshold


def fill_payload(campaign: Campaign, facts: StepFacts) -> tuple[dict[str, str], list[str]]:
    """The campaign's payload with its placeholders filled from the step; and those missing."""
    missing: list[str] = []

    def lookup(source: str, name: str) -> Any:
        if source == "event":
            return (facts.event or {}).get(name)
        if source == "metadata":
            return (facts.metadata or {}).get(name)
        return facts.view.feature(name) if facts.view is not None else None

    def fill(match: Any) -> str:
        value = lookup(match.group(1), match.group(2))
        if value is None:
            missing.append(match.group(0))
            return ""
        if isinstance(value, float):
            return format_number(value)
        return str(value)

    return {name: PLACEHOLDER_RE.sub(fill, text) for name, text in campaign.payload}, missing


def format_number(value: float) -> str:
    """A float as a personalisation value: ``150`` for 150.0, ``19.99``, at most two decimals.

    Never raises: magnitudes of 1e15 and more use six significant digits (``1e+308``), and
    NaN or infinities (which intake rejects before they reach a campaign) read ``nan``,
    ``inf``, ``-inf``.
    """
    if not math.isfinite(value):
        return str(value)
    if abs(value) >= 1e15:
        return f"{value:.6g}"
    if value.is_integer():
        return str(int(value))
    return f"{value:.2f}".rstrip("0").rstrip(".")


# --- decisions ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class UserFacts:
    """What the rules read of the user at decision time."""

    user_id: str
    metadata: Mapping[str, Any] | None
    membership: Mapping[str, int]
    churn_score: float | None
    model_version: str | None

    def __init__(self, user_id: str, metadata: Mapping[str, Any] | None,
                 membership: Mapping[str, int], churn_score: float | None,
                 model_version: str | None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "metadata", metadata)
        object.__setattr__(self, "membership", membership)
        object.__setattr__(self, "churn_score", churn_score)
        object.__setattr__(self, "model_version", model_version)


@dataclass(frozen=True)
class Definitions:
    """The campaign definitions in force for a decision.

    ``campaigns`` includes the campaigns journey nodes send as (they never fire by themselves);
    ``churn_thresholds``: the churn crossings that start journeys (the campaigns' own are read
    from ``campaigns``), so a crossing of either is seen.
    """

    campaigns: Mapping[str, Campaign]
    policy: PriorityPolicy | None
    segment_versions: Mapping[str, int]
    audience_sizes: Mapping[str, int]
    churn_thresholds: tuple[float, ...] = ()
    measured_roi: Mapping[str, MeasuredRoi] = field(default_factory=dict)
    #: ``campaigns`` indexed by what fires them, when the caller keeps one (else built here)
    firing: Firing | None = field(default=None, compare=False)

    def __init__(self, campaigns: Mapping[str, Campaign], policy: PriorityPolicy | None,
                 segment_versions: Mapping[str, int], audience_sizes: Mapping[str, int],
                 churn_thresholds: tuple[float, ...] = (),
                 measured_roi: Mapping[str, MeasuredRoi] | None = None,
                 firing: Firing | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        object.__setattr__(self, "campaigns", campaigns)
        object.__setattr__(self, "policy", policy)
        object.__setattr__(self, "segment_versions", segment_versions)
        object.__setattr__(self, "audience_sizes", audience_sizes)
        object.__setattr__(self, "churn_thresholds", churn_thresholds)
        object.__setattr__(self, "measured_roi", {} if measured_roi is None else measured_roi)
        object.__setattr__(self, "firing", firing)

    def roi_of(self, campaign: Campaign) -> MeasuredRoi | None:
        """The measured ROI the matrix uses for a campaign, or None (the typed one).

        Only while the policy has ``roi_feedback``: taking it out goes back to typed values
        at once. A journey's sends use their journey's (one unit).
        """
        if self.policy is None or self.policy.roi_feedback is None:
            return None
        return self.measured_roi.get(attribution_unit(campaign.id, campaign.journey_id))

    def priority(self, campaign: Campaign) -> Priority:
        """The campaign's priority under the policy (which must be set), measured ROI used."""
        assert self.policy is not None
        measured = self.roi_of(campaign)
        return score_priority(campaign, self.policy, self.audience_sizes,
                              measured.choice() if measured is not None else None)


@dataclass
class Outcome:
    """What a decision produced."""

    triggers: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    duplicates: int = 0
    state_changed: bool = False  # whether the CampaignState must be stored again
    converted: list[dict[str, Any]] = field(default_factory=list)  # CampaignOutcome CONVERTED
    lift: list[LiftFact] = field(default_factory=list)  # for the per-campaign statistics

    def __init__(self, triggers: list[dict[str, Any]] | None = None,
                 decisions: list[dict[str, Any]] | None = None, duplicates: int = 0,
                 state_changed: bool = False, converted: list[dict[str, Any]] | None = None,
                 lift: list[LiftFact] | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        self.triggers = [] if triggers is None else triggers
        self.decisions = [] if decisions is None else decisions
        self.duplicates = duplicates
        self.state_changed = state_changed
        self.converted = [] if converted is None else converted
        self.lift = [] if lift is None else lift


@dataclass
class _Contender:
    candidate: Candidate
    campaign: Campaign
    priority: Priority
    channel: str
    send_at: int
    reasons: list[str]
    expires_at: int | None


def expires_at(candidate: Candidate, campaign: Campaign) -> int | None:
    """When a trigger becomes worthless: cause + expires_after, never after valid_until."""
    limits = []
    if campaign.expires_after_ms is not None:
        limits.append(candidate.cause_event_time + campaign.expires_after_ms)
    if campaign.valid_until_ms is not None:
        limits.append(campaign.valid_until_ms)
    return min(limits) if limits else None


#: a sender's outcomes that withdraw the user's consent to the channel (CampaignOutcome's doc)
OPT_OUT_OUTCOMES: Final = ("UNSUBSCRIBED", "COMPLAINED")


def record_opt_out(state: CampaignState, outcome: Mapping[str, Any]) -> bool:
    """Remember an UNSUBSCRIBED or COMPLAINED outcome as an opt-out of its channel.

    Returns whether the state changed (a redelivered or older opt-out changes nothing).
    """
    if outcome.get("outcome") not in OPT_OUT_OUTCOMES:
        return False
    channel, at_ms = outcome["channel"], int(outcome["event_time"])
    if state.opt_outs.get(channel, -1) >= at_ms:
        return False
    state.opt_outs[channel] = at_ms
    return True


def opted_out(channel: str, metadata: Mapping[str, Any] | None,
              opt_outs: Mapping[str, int]) -> int | None:
    """When the user opted out of ``channel`` through a sender, if that still holds, else None.

    An opt-out holds against every profile written at or before it: the profile's opt-in is
    older news. A profile updated after it (``updated_at`` later: the user opted in again,
    and the profile's owner recorded it) gives consent back.
    """
    at_ms = opt_outs.get(channel)
    if at_ms is None or at_ms < int((metadata or {}).get("updated_at") or 0):
        return None
    return at_ms


def _consented(channel: str, metadata: Mapping[str, Any] | None,
               opt_outs: Mapping[str, int]) -> bool:
    opt_ins = (metadata or {}).get("opt_ins") or {}
    return bool(opt_ins.get(channel.lower())) and opted_out(channel, metadata, opt_outs) is None


def earliest_send(campaign: Campaign, channel: str, tier: str, now_ms: int,
                  state: CampaignState, policy: PriorityPolicy, zone: ZoneInfo
                  ) -> tuple[int, list[str]]:
    """The earliest time >= now at which the rules allow this send, and what moved it.

    Applied until nothing moves: spacing after the user's last trigger (``min_interval``), the
    channel's cap across campaigns, the campaign's own cap, and quiet hours (a P0 trigger of a
    campaign with ``quiet_hours: bypass`` ignores them, and so does an audience sync: the
    PAID_SOCIAL channel adds the user to an ad audience, it interrupts nobody).
    """
    at = now_ms
    reasons: list[str] = []
    last = state.last_sent_ms()
    channel_times = [s[3] for s in state.sent if s[2] == channel]
    campaign_times = [s[3] for s in state.sent if s[1] == campaign.id]
    channel_cap = policy.channel_caps.get(channel, Cap())
    for _ in range(16):  # each rule only moves forward; a few rounds settle it
        start = at
        if last is not None and policy.min_interval_ms and at < last + policy.min_interval_ms:
            at = last + policy.min_interval_ms
            _add(reasons, MIN_INTERVAL)
        moved = cap_free_at(channel_times, at, zone, channel_cap)
        if moved > at:
            at = moved
            _add(reasons, CHANNEL_CAP)
        moved = cap_free_at(campaign_times, at, zone, campaign.cap)
        if moved > at:
            at = moved
            _add(reasons, CAMPAIGN_CAP)
        # an audience sync (PAID_SOCIAL) reaches nobody's phone at night: quiet hours do not apply
        if channel != AUDIENCE_CHANNEL and not (campaign.bypass_quiet_hours and tier == "P0"):
            quiet_end = quiet_until(at, zone, policy.quiet_start, policy.quiet_end)
            if quiet_end is not None:
                at = quiet_end
                _add(reasons, QUIET_HOURS)
        if at == start:
            break
    return at, reasons


def _add(reasons: list[str], code: str) -> None:
    if code not in reasons:
        reasons.append(code)


def decide(state: CampaignState, fresh: list[Candidate], user: UserFacts, defs: Definitions,
           now_ms: int, emit_time_ms: int) -> Outcome:
    """Arbitrate the user's candidates that are due at ``now_ms``; update the state.

    New candidates wait out the policy's decision window (except P0); then everything due
    competes. In score order, the first that may be sent now wins and is emitted; a rival that
    could have been sent now is deferred past the spacing interval (``on_conflict: defer``) or
    suppressed; a candidate the rules push later (quiet hours, caps, spacing) is deferred to that
    time, or suppressed when it would expire first. Hard rules suppress: campaign deleted or
    disabled, no policy, eligibility, no channel consent, re-eligibility, unfilled payload. A
    user without metadata yet is given ``METADATA_GRACE_MS`` once before consent is judged. A
    trigger id already decided is dropped as a duplicate.

    Returns:
        The TriggerEvents and TriggerDecisions to emit (state updated in place).
    """
    out = Outcome()
    state.prune(now_ms)
    pending_ids = {c.trigger_id for c in state.pending}
    # an open decision window (its first candidate's cause + window): later candidates join it
    open_window = min((c.due_ms for c in state.pending if c.deferrals == 0 and c.due_ms > now_ms),
                      default=None)
    ready: list[Candidate] = []
    for candidate in fresh:
        if candidate.trigger_id in state.decided or candidate.trigger_id in pending_ids:
            out.duplicates += 1
            continue
        pending_ids.add(candidate.trigger_id)
        window = defs.policy.decision_window_ms if defs.policy is not None else 0
        campaign = defs.campaigns.get(candidate.campaign_id)
        if window and campaign is not None and defs.policy is not None \
                and defs.priority(campaign).tier != "P0":
            candidate.due_ms = open_window or candidate.cause_event_time + window
            open_window = candidate.due_ms
            if candidate.due_ms > now_ms:
                state.pending.append(candidate)  # competes when the window closes
                continue
        ready.append(candidate)
    due = [c for c in state.pending if c.due_ms <= now_ms]
    state.pending = [c for c in state.pending if c.due_ms > now_ms]
    ready.extend(due)
    if not ready:
        return out

    contenders: list[_Contender] = []
    for candidate in ready:
        contender = _qualify(candidate, state, user, defs, now_ms, emit_time_ms, out)
        if contender is not None:
            contenders.append(contender)
    contenders.sort(key=lambda c: (-c.priority.score, c.campaign.id, c.candidate.trigger_id))
    now_sendable = _hold_out([c for c in contenders if c.send_at == now_ms], state, user,
                             defs, now_ms, emit_time_ms, out)
    later = [c for c in contenders if c.send_at > now_ms]
    winner = now_sendable[0] if now_sendable else None
    rivals: list[tuple[_Contender, str]] = []
    if winner is not None:
        policy = defs.policy
        assert policy is not None  # without a policy _qualify suppresses every candidate
        zone = zone_of(user.metadata, policy)
        _record_send(state, winner, defs, now_ms, out)
        for loser in now_sendable[1:]:
            send_at, reasons = earliest_send(loser.campaign, loser.channel, loser.priority.tier,
                                             now_ms, state, policy, zone)
            loser.send_at = send_at
            loser.reasons = [LOST_ARBITRATION, *reasons]
            outcome = _defer_or_suppress(
                state, loser, user.user_id, now_ms, emit_time_ms, out,
                f"lost to {winner.campaign.id} (score {winner.priority.score:.3f} > "
                f"{loser.priority.score:.3f})", allow_defer=loser.campaign.defer_on_conflict)
            rivals.append((loser, outcome))
        out.triggers.append(_trigger_event(winner, user, defs, rivals, emit_time_ms))
    for contender in later:
        reason = ", ".join(_REASON_TEXT[r] for r in contender.reasons)
        _defer_or_suppress(state, contender, user.user_id, now_ms, emit_time_ms, out, reason)
    return out


def on_step(state: CampaignState, facts: StepFacts, user: UserFacts, defs: Definitions,
            emit_time_ms: int, journey_sends: Iterable[Candidate] = (),
            widest: list[Candidate] | None = None) -> Outcome:
    """The campaigns' part of one engine step: find what fired, then decide what is due.

    Called after every event, metadata update and timer of a user (a timer may make deferred
    candidates due, and its segment changes may fire campaigns). ``journey_sends``: the
    candidates the user's journeys reached in this step (``udfs.journeys.runner``); they
    compete with the campaigns' in the same decision. ``widest``: what ``find_candidates``
    over ``defs.campaigns`` found at this step with no kept score, when the caller has it
    (its candidates are then used, not found again; they are the decision's from here on).
    """
    index = defs.firing or Firing(defs.campaigns.values())
    previous = state.churn_score
    if widest is None:
        fresh = index.candidates(facts, previous)
    else:  # found by the caller's gate with no kept score: drop the crossings seen before
        fresh = [c for c in widest
                 if still_fired(c, defs.campaigns[c.campaign_id], previous)]
    fresh.extend(journey_sends)
    changed = False
    thresholds = [*index.churn_thresholds, *defs.churn_thresholds]
    if facts.churn_score is not None and \
            churn_band(facts.churn_score, thresholds) != churn_band(state.churn_score, thresholds):
        # kept only when it moves across a threshold: the state is not rewritten per event,
        # and a crossing is still seen (the kept score is on the same side of every threshold).
        # A step without a score (an engagement outcome scores nothing; scoring off) leaves it:
        # taken as "no score" it would make the next score a crossing from nothing, and when
        # that next score comes would depend on when the outcome arrived
        state.churn_score = facts.churn_score
        changed = True
    converted: list[dict[str, Any]] = []
    lift: list[LiftFact] = []
    recent = facts.recent
    if recent is not None and not state.touches.is_empty():
        converted, lift = state.touches.convert(
            facts.event or {}, user.user_id,
            lambda touch, _: goal_of(touch, defs.campaigns).matches(recent))
        changed = changed or bool(lift)
    due = state.next_due_ms()
    if not fresh and (due is None or due > facts.now_ms):
        # the common step: nothing to decide
        return Outcome(state_changed=changed, converted=converted, lift=lift)
    out = decide(state, fresh, user, defs, facts.now_ms, emit_time_ms)
    out.state_changed = True
    out.converted[:0], out.lift[:0] = converted, lift
    return out


def may_decide(state: CampaignState, facts: StepFacts, campaigns: Iterable[Campaign],
               thresholds: Iterable[float] | None = None) -> bool:
    """Whether ``on_step`` can change anything at a step that found no candidate.

    For a step at which ``find_candidates`` (with no kept score: the widest) found nothing, no
    click of it is a goal (``may_convert`` false, nor a journey's goal) and no journey may
    start: ``on_step`` (and the journeys' ``on_step`` before it) then changes the state or
    emits only when the score moves the kept one across a churn threshold, a pending candidate
    or a journey's wait is due, or a journey instance is running (a click or a condition may
    move it; one of a journey deleted since is left to end). Otherwise it prunes the touches
    in memory (not written: the state is unchanged) and returns an empty outcome.
    ``thresholds``: every churn crossing ``on_step`` watches (the campaigns' and the
    journeys' entries: ``Definitions.churn_thresholds``); None: the campaigns' own.
    """
    if state.journeys.instances:
        return True
    # no journey instance: the earliest pending candidate is all ``next_due_ms`` would find
    if state.pending and min(c.due_ms for c in state.pending) <= facts.now_ms:
        return True
    if facts.churn_score is None:
        return False
    if thresholds is None:
        thresholds = churn_thresholds(campaigns)
    return churn_band(facts.churn_score, thresholds) != churn_band(state.churn_score,
                                                                   thresholds)


def churn_band(score: float | None, thresholds: Iterable[float]) -> int:
    """How many churn-crossing thresholds the score reaches (only a change is worth storing)."""
    if score is None:
        return -1
    return sum(1 for threshold in thresholds if score >= threshold)


_REASON_TEXT: Final = {
    QUIET_HOURS: "quiet hours",
    CHANNEL_CAP: "channel frequency cap",
    CAMPAIGN_CAP: "campaign frequency cap",
    MIN_INTERVAL: "minimum interval between triggers",
    LOST_ARBITRATION: "lost the arbitration",
}


def _qualify(candidate: Candidate, state: CampaignState, user: UserFacts, defs: Definitions,
             now_ms: int, emit_time_ms: int, out: Outcome) -> _Contender | None:
    """Apply the hard rules; a candidate that passes gets its priority, channel and send time."""
    campaign = defs.campaigns.get(candidate.campaign_id)
    policy = defs.policy

    def suppress(code: str, reason: str) -> None:
        state.decided[candidate.trigger_id] = now_ms
        out.decisions.append(_decision(candidate, user.user_id, SUPPRESSED, code, reason, None,
                                       None, None, now_ms, emit_time_ms))

    if campaign is None or not campaign.enabled:
        suppress(CAMPAIGN_GONE, f"campaign {candidate.campaign_id} was deleted or disabled "
                                "before the trigger could be sent")
        return None
    if not campaign.send_on_backfill and caused_by_backfill(candidate.cause_event_id):
        suppress(BACKFILL, f"caused by a backfill ({candidate.cause_event_id}) and "
                           f"{campaign.journey_id or campaign.id} has on_backfill: skip")
        return None
    if policy is None:
        suppress(NO_POLICY, "no priority policy is defined; publish priority-policy")
        return None
    if candidate.missing:
        suppress(MISSING_PAYLOAD, f"payload placeholders without a value: "
                                  f"{', '.join(candidate.missing)}")
        return None
    lacking = [s for s in campaign.require_segments if s not in user.membership]
    excluded = [s for s in campaign.exclude_segments if s in user.membership]
    if lacking or excluded:
        why = "; ".join([*(f"not in required segment {s}" for s in lacking),
                         *(f"in excluded segment {s}" for s in excluded)])
        suppress(NOT_ELIGIBLE, why)
        return None
    last = state.last_send.get(campaign.id)
    if last is not None and campaign.reeligible_after_ms and \
            now_ms < last + campaign.reeligible_after_ms:
        suppress(REELIGIBILITY, f"{campaign.id} was sent to this user at {last}; re-eligible "
                                f"after {last + campaign.reeligible_after_ms}")
        return None
    if user.metadata is None and candidate.deferrals == 0:
        candidate.due_ms = now_ms + METADATA_GRACE_MS
        candidate.deferrals += 1
        state.pending.append(candidate)
        out.decisions.append(_decision(
            candidate, user.user_id, DEFERRED, AWAITING_METADATA,
            f"no metadata (consent, time zone) for the user yet; waiting "
            f"{METADATA_GRACE_MS // 1000} s of event time for it", None, candidate.due_ms, None,
            now_ms, emit_time_ms))
        return None
    channels = [c for c in campaign.channels if _consented(c, user.metadata, state.opt_outs)]
    if not channels:
        unsubscribed = [f"{c} at {at}" for c in campaign.channels
                        if (at := opted_out(c, user.metadata, state.opt_outs)) is not None]
        suppress(NO_CONSENT, f"the user has not opted in to {', '.join(campaign.channels)}"
                 + ("" if user.metadata else " (no metadata for the user yet)")
                 + (f" (unsubscribed or complained: {', '.join(unsubscribed)})"
                    if unsubscribed else ""))
        return None
    priority = defs.priority(campaign)
    zone = zone_of(user.metadata, policy)
    options = [(earliest_send(campaign, c, priority.tier, now_ms, state, policy, zone), i, c)
               for i, c in enumerate(channels)]
    (send_at, reasons), _, channel = min(options, key=lambda o: (o[0][0], o[1]))
    return _Contender(candidate, campaign, priority, channel, send_at, reasons,
                      expires_at(candidate, campaign))


def _record_send(state: CampaignState, winner: _Contender, defs: Definitions, now_ms: int,
                 out: Outcome) -> None:
    state.sent.append((winner.candidate.trigger_id, winner.campaign.id, winner.channel, now_ms))
    state.last_send[winner.campaign.id] = now_ms
    state.decided[winner.candidate.trigger_id] = now_ms
    fact = state.touches.record(_touch(winner, TREATED, now_ms))
    # the statistics' ROI tracker starts from the typed value, under the policy's settings
    feedback = defs.policy.roi_feedback if defs.policy is not None else None
    out.lift.append(replace(fact, pricing=Pricing(winner.campaign.expected_roi, feedback)))


def _touch(contender: _Contender, arm: str, now_ms: int) -> Touch:
    campaign = contender.campaign
    return Touch(contender.candidate.trigger_id, campaign.id, campaign.journey_id,
                 contender.channel, now_ms, arm, campaign.attribution)


def _hold_out(sendable: list[_Contender], state: CampaignState, user: UserFacts,
              defs: Definitions, now_ms: int, emit_time_ms: int, out: Outcome
              ) -> list[_Contender]:
    """Take the held-out candidates out of those that would be sent now; the rest compete.

    The arm is drawn here, when a candidate would be sent now, so a held-out user is counted
    at the same moment a treated one is sent, and the campaign that would have lost to it
    is sent instead: the held-out user gets the world without that campaign. A held-out
    candidate is decided (SUPPRESSED with reason ``HOLDOUT``, or ``CONTROL_GROUP`` for the
    policy's global control group) and recorded as a touch, so its later conversions are
    counted the same way as a treated one's.
    """
    policy = defs.policy
    control = policy.control_group if policy is not None else None
    kept: list[_Contender] = []
    for contender in sendable:
        campaign = contender.campaign
        unit = attribution_unit(campaign.id, campaign.journey_id)
        arm = assign_arm(user.user_id, unit, campaign.holdout, control)
        if arm == TREATED:
            kept.append(contender)
            continue
        candidate = contender.candidate
        state.decided[candidate.trigger_id] = now_ms
        out.lift.append(state.touches.record(_touch(contender, arm, now_ms)))
        if arm == CONTROL:
            code = CONTROL_GROUP
            reason = (f"the user is in the global control group "
                      f"({_share(control.share if control else 0)} of users get no campaign)")
        else:
            code = HOLDOUT
            reason = f"the user is in the {_share(campaign.holdout)} holdout of {unit}"
        out.decisions.append(_decision(candidate, user.user_id, SUPPRESSED, code, reason,
                                       contender.priority, None, contender.channel, now_ms,
                                       emit_time_ms))
    return kept


def _share(share: float) -> str:
    return f"{share * 100:g}%"


def goal_of(touch: Touch, campaigns: Mapping[str, Campaign]) -> EventFilter:
    """What counts as a conversion of a touch.

    Its campaign's goal (a journey's send: the journey's), or PURCHASE once the campaign is gone.
    """
    campaign = campaigns.get(touch.campaign_id)
    return campaign.goal if campaign is not None else DEFAULT_GOAL


def may_convert(facts: StepFacts, campaigns: Collection[Campaign]) -> bool:
    """Whether the step's click is a goal of any campaign: only then are the touches read.

    A PURCHASE always is: the default goal, kept by campaigns deleted since they touched someone.
    """
    event = facts.event
    if event is None:
        return False
    kind = event["event_type"]
    if kind not in DEFAULT_GOAL.types and not any(kind in c.goal.types for c in campaigns):
        return False  # no goal of this type: the click's filter view is not even built
    return goal_matches(DEFAULT_GOAL, facts) or any(goal_matches(c.goal, facts)
                                                   for c in campaigns)


def goal_matches(goal: EventFilter, facts: StepFacts) -> bool:
    """Whether the step's click (if any) is ``goal``."""
    recent = facts.recent
    return recent is not None and goal.matches(recent)


def _defer_or_suppress(state: CampaignState, contender: _Contender, user_id: str, now_ms: int,
                       emit_time_ms: int, out: Outcome, reason: str,
                       allow_defer: bool = True) -> str:
    candidate = contender.candidate
    code = contender.reasons[0] if contender.reasons else LOST_ARBITRATION
    expiry = contender.expires_at
    if not allow_defer or (expiry is not None and contender.send_at >= expiry):
        if allow_defer:
            code = EXPIRED
            reason = f"{reason}: the earliest allowed time {contender.send_at} is past " \
                     f"expires_at {expiry}"
        state.decided[candidate.trigger_id] = now_ms
        out.decisions.append(_decision(candidate, user_id,
                                       SUPPRESSED, code, reason, contender.priority, None,
                                       contender.channel, now_ms, emit_time_ms))
        return SUPPRESSED
    candidate.due_ms = contender.send_at
    candidate.deferrals += 1
    state.pending.append(candidate)
    out.decisions.append(_decision(candidate, user_id, DEFERRED,
                                   code, reason, contender.priority, contender.send_at,
                                   contender.channel, now_ms, emit_time_ms))
    return DEFERRED


def _decision(candidate: Candidate, user_id: str, outcome: str, code: str, reason: str,
              priority: Priority | None, deferred_until: int | None, channel: str | None,
              now_ms: int, emit_time_ms: int) -> dict[str, Any]:
    if priority is not None and priority.roi.measured:
        # a change of priority the loop caused shows in the decisions it changed
        reason += f" (ROI {priority.roi.source})"
    return {
        "trigger_id": candidate.trigger_id,
        "user_id": user_id,
        "campaign_id": candidate.campaign_id,
        "campaign_version": candidate.campaign_version,
        "outcome": outcome,
        "reason_code": code,
        "reason": reason,
        "tier": priority.tier if priority else None,
        "priority_score": priority.score if priority else None,
        "channel": channel,
        "deferred_until": deferred_until,
        "cause_event_id": candidate.cause_event_id,
        "decided_at": now_ms,
        "emit_time": emit_time_ms,
    }


def _trigger_event(winner: _Contender, user: UserFacts, defs: Definitions,
                   rivals: list[tuple[_Contender, str]], emit_time_ms: int) -> dict[str, Any]:
    candidate, campaign, priority = winner.candidate, winner.campaign, winner.priority
    assert defs.policy is not None
    versions = {campaign.id: campaign.version, defs.policy.id: defs.policy.version}
    for segment_id in sorted(campaign.referenced_segments()):
        if segment_id in defs.segment_versions:
            versions[segment_id] = defs.segment_versions[segment_id]
    measured = defs.roi_of(campaign)
    if measured is not None:
        versions[measured.id] = measured.version
    features = {**priority.factors, **candidate.features}
    if user.churn_score is not None:
        features.setdefault("churn_score", float(user.churn_score))
    reason = (f"{candidate.trigger_reason}; {priority.tier} (score {priority.score:.3f}, ROI "
              f"{priority.roi.source}) on {winner.channel}")
    if candidate.deferrals:
        reason += f"; sent after {candidate.deferrals} deferral(s)"
    if rivals:
        reason += "; beat " + ", ".join(f"{r.campaign.id} ({o.lower()})" for r, o in rivals)
    return {
        "trigger_id": candidate.trigger_id,
        "user_id": user.user_id,
        "campaign_id": campaign.id,
        "campaign_version": campaign.version,
        "step_id": campaign.node_id or STEP_ID,
        "journey_id": campaign.journey_id,
        "node_id": campaign.node_id,
        "journey_instance": candidate.journey_instance,
        "channel": winner.channel,
        "tier": priority.tier,
        "priority_score": priority.score,
        "template_id": campaign.template,
        "payload": dict(candidate.payload),
        "segments": sorted(user.membership),
        "churn_score": user.churn_score,
        "model_version": user.model_version if user.churn_score is not None else None,
        "cause_event_id": candidate.cause_event_id,
        "cause_event_time": candidate.cause_event_time,
        "ingest_time": candidate.ingest_time if candidate.ingest_time is not None
        else emit_time_ms,
        "emit_time": emit_time_ms,
        "expires_at": winner.expires_at,
        "explanation": {
            "reason": reason,
            "definition_versions": versions,
            "features": features,
            "rivals": [{"campaign_id": r.campaign.id, "priority_score": r.priority.score,
                        "outcome": o} for r, o in rivals],
        },
    }
