"""The per-user engine: one user's state, stepped by clicks, metadata and timers.

``step(state, item, rules, now_ms) -> Step`` is the whole of what happens to a user for one
input, with no I/O: behavioural features (``udfs.features``), the churn score (``rules.scorer``),
segment membership (``udfs.segments``: ENTER/EXIT changes and the next time membership could
change without input) and campaigns (``udfs.campaigns.arbitration``: candidates, the priority
matrix, per-user arbitration, caps, quiet hours, dedup -> TriggerEvents and TriggerDecisions).
The Flink adapter (``udfs.flink.user_engine.UserEngineFunction``) loads the state, calls
``step``, stores what the ``Step`` says changed, registers its timers and emits its records.

Inputs: ``Arrival`` (a click or metadata record as it reaches the engine, with the watermark),
``Released`` (a user's inputs handed on at once by the Java operator that held them until the
watermark passed them), ``Timer`` (the watermark reached the user's wake time),
``Click`` / ``MetadataUpdate`` (applied at once, after every check due by their time; what
tests and tools use), or ``Erasure`` (a user-metadata tombstone: the user is forgotten at
once; see its docstring).
State (``UserState``): the user's clock (``udfs.clock.UserClock``: the event time of what was
last applied, the inputs waiting for the watermark, the next due times), features, the latest
metadata, membership (segment id -> definition version at entry), the churn score, and the
campaign state. Everything but the clock is read lazily (``UserState.load`` and
``UserState.load_campaigns``): a buffered arrival or a stale timer never reads it.

Time (udfs/segments/SEGMENTS.md, "Time semantics"): a user's inputs are applied in event-time
order once the watermark has passed them, and every time-driven check (an absence window
ending, inactivity, a window edge, a deferred campaign falling due, expiry) runs at its own due
time, before any input of that user at or after that time. The output is then a function of the
events' event times alone, whatever their arrival order within the lateness bound.

Membership follows the definitions lazily: a changed or deleted definition is applied to a user
at that user's next event, metadata update or timer (Flink cannot cheaply visit every key from a
broadcast update in Python); see udfs/segments/SEGMENTS.md for the policy.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, NamedTuple, Protocol

from schemas.codec import Codec
from udfs.attribution.touches import LiftFact
from udfs.campaigns import arbitration
from udfs.campaigns.arbitration import CampaignState
from udfs.catalog.registries import Registries
from udfs.clock import CLICK_RANK, METADATA_RANK, OUTCOME_RANK, Pending, UserClock
from udfs.currency.rates import to_reference
from udfs.features import state as feature_state
from udfs.features.vector import FeatureView, as_list, vector_list
from udfs.features.vector import vector as feature_values
from udfs.journeys import runner as journey_runner
from udfs.segments.conditions import MEMBERSHIP_RECHECK_MS, evaluate
from udfs.segments.updates import SegmentRegistry


@dataclass
class UserState:
    """Everything the engine keeps for one user.

    ``campaigns`` is None until a step needs it; ``campaign_state()`` then loads it through
    ``load_campaigns`` (the adapter reads keyed state there) or starts a fresh one.
    ``features``, ``metadata`` and ``membership`` are filled by ``load`` (once, by ``ensure``)
    when given: the adapter reads them only when an input is applied or a check runs.
    ``churn_score`` and ``model_version`` are the latest evaluation's within one step: ``step``
    starts them at None (they are not keyed state; the campaign state keeps its own score for
    crossings).
    """

    features: feature_state.UserFeatures | None = None
    metadata: dict[str, Any] | None = None
    membership: dict[str, int] = field(default_factory=dict)
    churn_score: float | None = None
    model_version: str | None = None
    campaigns: CampaignState | None = None
    clock: UserClock = field(default_factory=UserClock)
    load_campaigns: Callable[[], CampaignState] | None = field(
        default=None, repr=False, compare=False)
    load: Callable[[UserState], None] | None = field(default=None, repr=False, compare=False)
    #: erased and not re-registered since: the only state such a user has (see ``Erasure``)
    erased: bool = False

    def __init__(self, features: feature_state.UserFeatures | None = None,
                 metadata: dict[str, Any] | None = None, membership: dict[str, int] | None = None,
                 churn_score: float | None = None, model_version: str | None = None,
                 campaigns: CampaignState | None = None, clock: UserClock | None = None,
                 load_campaigns: Callable[[], CampaignState] | None = None,
                 load: Callable[[UserState], None] | None = None, erased: bool = False) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        self.features = features
        self.metadata = metadata
        self.membership = {} if membership is None else membership
        self.churn_score = churn_score
        self.model_version = model_version
        self.campaigns = campaigns
        self.clock = UserClock() if clock is None else clock
        self.load_campaigns = load_campaigns
        self.load = load
        self.erased = erased

    def ensure(self) -> None:
        """Fill features, metadata and membership through ``load`` on first use."""
        loader = self.load
        if loader is not None:
            self.load = None
            loader(self)
            clock = self.clock
            if clock.clock_ms is None and self.features is not None:
                # state from before the clock existed (a restored savepoint): that build had
                # applied up to the newest event; evaluating again there (nothing changes)
                # gives the user's due times before anything later is applied
                clock.clock_ms = clock.due_ms = self.features.last_event_ms

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

    def __init__(self, event: dict[str, Any]) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        object.__setattr__(self, "event", event)


@dataclass(frozen=True)
class MetadataUpdate:
    """A user's UserMetadata dict, evaluated at event time ``at_ms``."""

    metadata: dict[str, Any]
    at_ms: int


@dataclass(frozen=True)
class Engagement:
    """A CampaignOutcome dict (delivered, opened, clicked, ...) of one of the user's triggers.

    Applied at its ``event_time``, after any click or metadata at that time: journeys waiting
    on it move on.
    """

    outcome: dict[str, Any]


@dataclass(frozen=True)
class Timer:
    """The watermark reached ``time_ms`` for a user (its Flink timer fired).

    Applies, in order, every pending input and every due check at or before ``time_ms``.
    """

    user_id: str
    time_ms: int


@dataclass(frozen=True)
class Arrival:
    """A click or metadata record reaching the engine while the watermark is ``watermark_ms``.

    It is buffered in the user's clock, then everything at or before the watermark is applied
    (``Timer``); an input at or behind the watermark is therefore applied at once.
    """

    user_id: str
    pending: Pending
    watermark_ms: int


@dataclass(frozen=True)
class Released:
    """A user's inputs handed on at once, once the watermark passed them.

    By the operator that held them (``input_order: java``:
    ``io.nudgeflow.flink.ReleaseInEventTimeOrder``). ``pendings``: in event-time order (the step
    applies them in the clock's order, ``Pending.order``), all at or before ``through_ms``: the
    watermark that released them (for a quiet release, the newest input's time). Nothing of the
    user at or before ``through_ms`` is still to come but late inputs, so the step applies every
    input and runs every check up to it, as an arrival of each followed by a ``Timer`` at
    ``through_ms`` did, in one step. ``watermark_ms``: the engine's own watermark (the one before
    ``through_ms``): the user's timer at or before it has fired, a later one has not and is
    deleted if the wake time moves.
    """

    user_id: str
    pendings: tuple[Pending, ...]
    through_ms: int
    watermark_ms: int

    def __init__(self, user_id: str, pendings: tuple[Pending, ...], through_ms: int,
                 watermark_ms: int) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        object.__setattr__(self, "user_id", user_id)
        object.__setattr__(self, "pendings", pendings)
        object.__setattr__(self, "through_ms", through_ms)
        object.__setattr__(self, "watermark_ms", watermark_ms)


@dataclass(frozen=True)
class Erasure:
    """A tombstone on user-metadata: forget the user (the right to be forgotten).

    Applied at once when it reaches the engine, at the user's current event time (their clock;
    ``requested_ms``, the tombstone's Kafka timestamp, only for a user without one), not
    buffered until the watermark passes it: erasure is a legal obligation with a deadline, not an
    event to order among the user's clicks, and holding it back would keep processing the
    user's data meanwhile. So, unlike everything else, what an erasure cuts off depends on when
    it arrives. The step (``erase``) EXITs every segment the user is in with reason
    ``user erased``, drops the inputs still pending, the deferred triggers and the journey
    instances (nothing of the user fires after it), and tells the adapter to clear all keyed
    state, delete the user's timer and delete the user from the stores (``Step.erasure``).

    **After the erasure** the user's state is ``UserState(erased=True)`` and nothing else: a
    marker. Their clicks and outcomes that arrive later are dropped and counted
    (``Step.erased_dropped``), neither applied nor dead-lettered by the engine, until a non-null
    metadata record for the id arrives: that is a re-registration and starts a fresh user. The
    marker is kept because without it a click still in flight on the clicks topic (or from a
    device still sending under the id) would quietly recreate the user (features, segment
    entries, Redis keys, triggers), undoing the erasure. It holds nothing but the id (the
    state's key) and one flag, and lives until a re-registration. A repeated tombstone erases
    again: no changes, the same store deletes (idempotent).
    """

    user_id: str
    requested_ms: int


@dataclass(frozen=True)
class Backfill:
    """A backfill request (``defs publish --backfill``): re-evaluate the user now.

    A definition change otherwise reaches a user lazily, at their next input or daily recheck
    (udfs/segments/SEGMENTS.md, "Change policy"); a backfill sends one of these per known user
    so the change applies at once. It is applied when it reaches the engine, not buffered: what
    is due up to the watermark is applied first (as for any arrival), then the user is evaluated
    at the watermark (their clock, when that is later) against the definitions in force.
    So, like an erasure, what a backfill changes depends on when it arrives; it never moves
    event time past the watermark, so no later input of the user becomes late because of it.

    Outcomes (``Step.backfill``): ``evaluated``; ``current`` (their last evaluation already used
    these definitions: nothing to do, which makes a repeated backfill a no-op); ``unknown``
    (nothing of the user has been applied: there is nothing to evaluate and nothing is
    stored); ``erased``; ``stale`` (a definition the request was made for is not in force here
    yet: ``Step.backfill_lacking``; the adapter dead-letters the request, and re-running the
    backfill is safe).

    The segment changes it causes carry the cause ``backfill@<backfill_id>`` (in their change
    ids and reasons); so do the triggers (``cause_event_id``), and a campaign or journey with
    ``on_backfill: skip`` (the default) is suppressed (``BACKFILL``) or not started.
    """

    user_id: str
    backfill_id: str
    requires: Mapping[str, int]
    watermark_ms: int


#: ``Step.backfill`` outcomes
BACKFILL_EVALUATED: Final = "evaluated"
BACKFILL_CURRENT: Final = "current"
BACKFILL_UNKNOWN: Final = "unknown"
BACKFILL_ERASED: Final = "erased"
BACKFILL_STALE: Final = "stale"
BACKFILL_OUTCOMES: Final = (BACKFILL_EVALUATED, BACKFILL_CURRENT, BACKFILL_UNKNOWN, BACKFILL_ERASED,
                            BACKFILL_STALE)

#: what a step is applied to
Input = Click | MetadataUpdate | Engagement | Timer | Arrival | Released | Erasure | Backfill

#: an idle user is re-evaluated against changed definitions this often (event time)
RECHECK_MS: Final = MEMBERSHIP_RECHECK_MS


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

    def churn_moves(self) -> bool:
        """Whether a user's evaluation can change with time alone through the churn score."""
        return self.scorer is not None and self.registries.reads_churn()


@dataclass
class Step:
    """What one step produced, and which parts of the state it changed.

    Attributes:
        changes: SegmentChange dicts (ENTER/EXIT), in order.
        triggers: TriggerEvent dicts to send.
        decisions: TriggerDecision dicts (suppressed or deferred candidates).
        timers: the user's new wake time, when it moved (one Flink timer per user).
        cancel_timer_ms: the timer registered before, still pending, to delete.
        trigger_duplicates: candidates dropped because their trigger id was decided before.
        journey_moves: (journey id, node id, what) of every journey move (entered, sent,
            waiting, converted, exited), in order: the per-node counters.
        converted: CampaignOutcome CONVERTED records of the attributed conversions (to the
            outcomes topic).
        lift: the assignments and conversions of the step, for the per-campaign statistics
            (``udfs.attribution.touches.LiftFact``).
        duplicate: the input was a duplicate (same event id): nothing else happened.
        duplicates: clicks dropped as duplicates in this step (besides ``duplicate``): found
            when applied, or among the inputs of a ``Released``; ``other_duplicates``: metadata
            records and outcomes of a ``Released`` dropped as duplicates.
        applied: inputs (clicks and metadata) applied in this step.
        clicks_applied: event ids of the clicks applied (trigger latency).
        click_traces: event id -> (W3C traceparent, Kafka append time) of the clicks applied
            that had a trace context (``udfs.tracing``): what they caused joins their trace.
        late: inputs applied behind the user's clock (arrived after it had passed their time).
        unconverted: currencies of clicks whose price could not be converted to USD (not in
            the rate table): those clicks counted, their money did not.
        checks: time-driven checks evaluated; ``rechecks_skipped``: idle rechecks that found the
            definitions unchanged (near no-ops).
        expired: the user was idle beyond the TTL: every segment EXITed and the state was
            dropped; whatever ``state`` holds now (inputs after the expiry) is all that is left.
        features_changed: ``state.features`` must be stored.
        metadata_changed: ``state.metadata`` must be stored.
        campaigns_changed: ``state.campaigns`` must be stored (cleared when empty).
        campaigns_touched: the step may have changed ``state.campaigns`` in place (it decided
            on it: pruned, moved journeys, recorded an opt-out), whether or not it must be
            stored; when False a campaign state the step read is still equal to the bytes it
            was read from (the adapter keeps the object for the next step).
        clock_changed: ``state.clock`` must be stored.
        expiry_timer_ms: when the user's state expires if nothing else arrives (day-rounded).
        erasure: the user was erased (``Erasure``): clear every keyed state, keep only the
            erased marker, delete the user's timer (``cancel_timer_ms``) and delete the user
            from the stores, every row of ``erased_segments`` included.
        erased_segments: the segments whose store rows of the user an erasure deletes: the
            user's memberships and every segment id the registry knows (deleted ones too), so
            a row left by an older run or a refused write goes as well.
        erased_dropped: inputs of an erased user dropped (arrived after the erasure, or pending
            when it came); ``erased_clicks_dropped``: how many of them were clicks.
        reregistered: metadata arrived for an erased user: the marker is cleared, and the user
            starts afresh from this input.
        backfill: what a ``Backfill`` did (``BACKFILL_OUTCOMES``); None for other inputs.
        backfill_lacking: for a stale backfill, the definitions (``id vN``) not in force yet.
    """

    changes: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    timers: list[int] = field(default_factory=list)
    cancel_timer_ms: int | None = None
    trigger_duplicates: int = 0
    journey_moves: list[tuple[str, str, str]] = field(default_factory=list)
    converted: list[dict[str, Any]] = field(default_factory=list)
    lift: list[LiftFact] = field(default_factory=list)
    duplicate: bool = False
    duplicates: int = 0
    other_duplicates: int = 0
    applied: int = 0
    clicks_applied: list[str] = field(default_factory=list)
    click_traces: dict[str, tuple[str, int]] = field(default_factory=dict)
    late: int = 0
    unconverted: list[str] = field(default_factory=list)
    checks: int = 0
    rechecks_skipped: int = 0
    expired: bool = False
    features_changed: bool = False
    metadata_changed: bool = False
    campaigns_changed: bool = False
    campaigns_touched: bool = False
    clock_changed: bool = False
    expiry_timer_ms: int | None = None
    erasure: bool = False
    erased_segments: tuple[str, ...] = ()
    erased_dropped: int = 0
    erased_clicks_dropped: int = 0
    reregistered: bool = False
    backfill: str | None = None
    backfill_lacking: tuple[str, ...] = ()

    def __init__(self, *, changes: list[dict[str, Any]] | None = None,
                 triggers: list[dict[str, Any]] | None = None,
                 decisions: list[dict[str, Any]] | None = None, timers: list[int] | None = None,
                 cancel_timer_ms: int | None = None, trigger_duplicates: int = 0,
                 journey_moves: list[tuple[str, str, str]] | None = None,
                 converted: list[dict[str, Any]] | None = None, lift: list[LiftFact] | None = None,
                 duplicate: bool = False, duplicates: int = 0, other_duplicates: int = 0,
                 applied: int = 0, clicks_applied: list[str] | None = None,
                 click_traces: dict[str, tuple[str, int]] | None = None, late: int = 0,
                 unconverted: list[str] | None = None, checks: int = 0, rechecks_skipped: int = 0,
                 expired: bool = False, features_changed: bool = False,
                 metadata_changed: bool = False, campaigns_changed: bool = False,
                 campaigns_touched: bool = False, clock_changed: bool = False,
                 expiry_timer_ms: int | None = None, erasure: bool = False,
                 erased_segments: tuple[str, ...] = (), erased_dropped: int = 0,
                 erased_clicks_dropped: int = 0, reregistered: bool = False,
                 backfill: str | None = None, backfill_lacking: tuple[str, ...] = ()) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        self.changes = [] if changes is None else changes
        self.triggers = [] if triggers is None else triggers
        self.decisions = [] if decisions is None else decisions
        self.timers = [] if timers is None else timers
        self.cancel_timer_ms = cancel_timer_ms
        self.trigger_duplicates = trigger_duplicates
        self.journey_moves = [] if journey_moves is None else journey_moves
        self.converted = [] if converted is None else converted
        self.lift = [] if lift is None else lift
        self.duplicate = duplicate
        self.duplicates = duplicates
        self.other_duplicates = other_duplicates
        self.applied = applied
        self.clicks_applied = [] if clicks_applied is None else clicks_applied
        self.click_traces = {} if click_traces is None else click_traces
        self.late = late
        self.unconverted = [] if unconverted is None else unconverted
        self.checks = checks
        self.rechecks_skipped = rechecks_skipped
        self.expired = expired
        self.features_changed = features_changed
        self.metadata_changed = metadata_changed
        self.campaigns_changed = campaigns_changed
        self.campaigns_touched = campaigns_touched
        self.clock_changed = clock_changed
        self.expiry_timer_ms = expiry_timer_ms
        self.erasure = erasure
        self.erased_segments = erased_segments
        self.erased_dropped = erased_dropped
        self.erased_clicks_dropped = erased_clicks_dropped
        self.reregistered = reregistered
        self.backfill = backfill
        self.backfill_lacking = backfill_lacking


def step(state: UserState, item: Input, rules: Rules, now_ms: int) -> Step:
    """Apply one input to one user's state in event-time order, with every check due on the way.

    Features, the churn score, segments and campaigns, for each input applied and each
    time-driven check run.

    Args:
        state: the user's state; updated in place.
        item: an arrival (buffered, then applied up to the watermark), a timer (apply up to its
            time), a click or metadata update to apply at once (after every check due by its
            time), or an erasure (applied at once: ``Erasure``).
        rules: the definitions in force, the TTL, the churn model, audience sizes.
        now_ms: wall-clock time of the step (a trigger's ``emit_time``; never read as event
            time).
    """
    # derived by each evaluation in the step, never kept between steps (the adapter has no keyed
    # state for them): a step that scores nothing (an engagement outcome) reads no score, whether
    # or not the caller's state object lived on since the last step
    state.churn_score = state.model_version = None
    if isinstance(item, Erasure):
        return erase(state, item, rules)
    if isinstance(item, Backfill):
        return backfill(state, item, rules, now_ms)
    out = Step()
    if state.erased:
        if isinstance(item, Released):
            # in order: what comes before a metadata record (a re-registration) is dropped
            first = next((n for n, p in enumerate(item.pendings) if p.rank == METADATA_RANK),
                         len(item.pendings))
            dropped, item = item.pendings[:first], dataclasses.replace(
                item, pendings=item.pendings[first:])
            out.erased_dropped = len(dropped)
            out.erased_clicks_dropped = sum(p.rank == CLICK_RANK for p in dropped)
            if not item.pendings:
                return out
        elif not _reregisters(item):
            return _dropped_after_erasure(item)
        state.erased = False  # a new non-null metadata record: a fresh user from here on
        out.reregistered = True
    clock = state.clock
    fired_by = None  # the time up to which the user's timer has fired: ``target`` but here
    if isinstance(item, Arrival):
        if not clock.add(item.pending):
            return Step(duplicate=True)
        out.clock_changed = True
        user_id, target = item.user_id, item.watermark_ms
        if clock.clock_ms is None and clock.timer_ms is None:
            state.ensure()  # a user from before the clock: set it from the state
        _advance(state, user_id, target, rules, now_ms, out)
    elif isinstance(item, Released):
        user_id, target, fired_by = item.user_id, item.through_ms, item.watermark_ms
        for pending in item.pendings:
            if clock.add(pending):
                out.clock_changed = True
            elif pending.rank == CLICK_RANK:
                out.duplicates += 1
            else:
                out.other_duplicates += 1
        if clock.clock_ms is None and clock.timer_ms is None:
            state.ensure()  # a user from before the clock: set it from the state
        _advance(state, user_id, target, rules, now_ms, out)
    elif isinstance(item, Timer):
        user_id, target = item.user_id, item.time_ms
        if clock.timer_ms is not None and clock.timer_ms <= target:
            clock.timer_ms = None  # it fired
            out.clock_changed = True
        if clock.clock_ms is None and clock.next_check_ms() is None:
            # a timer of a user whose state is from before the clock (a restored savepoint):
            # evaluate at its time as that build did, which sets the user's due times
            state.ensure()
            if state.features is not None or state.membership or state.metadata is not None:
                clock.due_ms = target
        _advance(state, user_id, target, rules, now_ms, out)
    else:
        pending = _as_pending(item)
        user_id = item.event["user_id"] if isinstance(item, Click) else \
            item.metadata["user_id"] if isinstance(item, MetadataUpdate) else \
            item.outcome["user_id"]
        state.ensure()
        _advance(state, user_id, pending.time_ms, rules, now_ms, out)
        _apply(state, user_id, pending, rules, now_ms, out)
        if out.duplicates and not (out.applied or out.checks or out.expired):
            return Step(duplicate=True)
        target = pending.time_ms
    _schedule(state, target if fired_by is None else fired_by, out)
    return out


def _as_pending(item: Click | MetadataUpdate | Engagement) -> Pending:
    if isinstance(item, Click):
        event = item.event
        return Pending(event["event_time"], CLICK_RANK, str(event["event_id"]), b"",
                       event.get("ingest_time") or 0, item)
    if isinstance(item, Engagement):
        return Pending(item.outcome["event_time"], OUTCOME_RANK,
                       outcome_key(item.outcome), b"", 0, item)
    return Pending(item.at_ms, METADATA_RANK, f"metadata@{item.metadata.get('updated_at')}", b"",
                   0, item)


def outcome_key(outcome: Mapping[str, Any]) -> str:
    """The dedup key of an engagement outcome in the user's clock (a redelivery has the same)."""
    return f"outcome@{outcome['outcome_id']}"


def decode_pending(pending: Pending) -> Click | MetadataUpdate | Engagement:
    """The input a pending entry holds (its Avro payload decoded, unless it came decoded)."""
    if pending.item is not None:
        item: Click | MetadataUpdate | Engagement = pending.item
        return item
    codec = Codec.load()
    if pending.rank == CLICK_RANK:
        event = codec.decode(pending.payload, expect="ClickEvent")
        event["ingest_time"] = pending.ingest_time
        return Click(event)
    if pending.rank == OUTCOME_RANK:
        return Engagement(codec.decode(pending.payload, expect="CampaignOutcome"))
    return MetadataUpdate(codec.decode(pending.payload, expect="UserMetadata"), pending.time_ms)


def _advance(state: UserState, user_id: str, target: int, rules: Rules, now_ms: int,
             out: Step) -> None:
    """Apply every pending input and run every check at or before ``target``, in time order.

    A check due at T runs before an input at T: what happens by time alone at T (a window
    ending at T, exclusive) cannot depend on whether an input at T exists.
    """
    clock = state.clock
    while True:
        first = clock.first_pending()
        check = clock.next_check_ms()
        if check is not None and check <= target and (first is None or check <= first.time_ms):
            _check(state, user_id, check, rules, now_ms, out)
        elif first is not None and first.time_ms <= target:
            clock.pending.remove(first)
            out.clock_changed = True
            _apply(state, user_id, first, rules, now_ms, out)
        else:
            return


def _apply(state: UserState, user_id: str, pending: Pending, rules: Rules, now_ms: int,
           out: Step) -> None:
    """Apply one input at its time, or at the user's clock when that has passed it (late)."""
    state.ensure()
    item = decode_pending(pending)
    if isinstance(item, Click) and state.features is not None and \
            state.features.is_duplicate(item.event["event_id"]):
        out.duplicates += 1
        return
    clock = state.clock
    if clock.clock_ms is not None and pending.time_ms < clock.clock_ms:
        out.late += 1
    out.applied += 1
    if isinstance(item, Engagement):
        _engage(state, user_id, item, pending.time_ms, rules, now_ms, out)
        return
    if isinstance(item, Click):
        event_id = str(item.event["event_id"])
        out.clicks_applied.append(event_id)
        if pending.trace:
            out.click_traces[event_id] = (pending.trace, pending.ingest_time)
    _evaluate(state, user_id, item, pending.time_ms, rules, now_ms, out)


def _check(state: UserState, user_id: str, at_ms: int, rules: Rules, now_ms: int,
           out: Step) -> None:
    """A time-driven check at its due time: expiry, a due change, or the idle recheck."""
    clock = state.clock
    out.clock_changed = True
    evaluate = False
    if clock.expiry_ms is not None and clock.expiry_ms <= at_ms:
        state.ensure()
        if expired(state, at_ms, rules.state_ttl_ms):
            _expire(state, user_id, at_ms, rules, out)
            return
        clock.expiry_ms = None  # recomputed by the evaluation below
        evaluate = True
    due, campaign_due = clock.due_ms, clock.campaign_due_ms
    if not evaluate and (due is None or due > at_ms) \
            and (campaign_due is None or campaign_due > at_ms) \
            and clock.defs_fp == rules.registries.fingerprint() and not rules.churn_moves():
        # only the idle recheck is due and no definition changed since the user's last
        # evaluation: nothing can have changed (no state is read)
        clock.clock_ms = at_ms if clock.clock_ms is None else max(clock.clock_ms, at_ms)
        clock.recheck_ms = _next_recheck(at_ms)
        out.rechecks_skipped += 1
        return
    state.ensure()
    out.checks += 1
    _evaluate(state, user_id, Timer(user_id, at_ms), at_ms, rules, now_ms, out)


def _expire(state: UserState, user_id: str, at_ms: int, rules: Rules, out: Step) -> None:
    """The user was idle beyond the TTL: EXIT every segment and drop the state."""
    seg = on_expiry(state, user_id, at_ms, rules.state_ttl_ms, rules.scorer)
    out.changes.extend(seg.changes)
    out.expired = True
    pending = state.clock.pending
    state.features = None
    state.metadata = None
    state.membership = {}
    state.churn_score = None
    state.model_version = None
    state.campaigns = CampaignState()
    # in place: the pending inputs after the expiry stay, and apply to a fresh state
    clock = state.clock
    clock.clock_ms, clock.defs_fp, clock.pending = at_ms, 0, pending
    clock.due_ms = clock.campaign_due_ms = clock.recheck_ms = clock.expiry_ms = None
    out.features_changed = out.metadata_changed = out.campaigns_changed = False


def backfill(state: UserState, item: Backfill, rules: Rules, now_ms: int) -> Step:
    """Re-evaluate a user against the definitions in force, at once (``Backfill``)."""
    if state.erased:
        return Step(backfill=BACKFILL_ERASED)
    lacking = rules.registries.lacking(item.requires)
    if lacking:
        return Step(backfill=BACKFILL_STALE, backfill_lacking=tuple(lacking))
    out = Step()
    state.ensure()
    user_id, target = item.user_id, item.watermark_ms
    _advance(state, user_id, target, rules, now_ms, out)  # what is due first, in order
    clock = state.clock
    if (state.features is None and state.metadata is None and not state.membership) or \
            clock.clock_ms is None:
        # nothing applied yet (their first input will be, with these definitions), or no
        # time to evaluate at
        out.backfill = BACKFILL_UNKNOWN
    elif clock.defs_fp == rules.registries.fingerprint():
        out.backfill = BACKFILL_CURRENT
    else:
        out.backfill = BACKFILL_EVALUATED
        at_ms = max(clock.clock_ms, target)
        out.checks += 1
        out.clock_changed = True
        _evaluate(state, user_id, item, at_ms, rules, now_ms, out)
    _schedule(state, target, out)
    return out


def _evaluate(state: UserState, user_id: str, item: Click | MetadataUpdate | Timer | Backfill,
              at_ms: int, rules: Rules, now_ms: int, out: Step) -> None:
    """One evaluation of the user at ``at_ms``: an input applied, or a check; results into out."""
    registry = rules.registries.segments
    scorer = rules.scorer
    clock = state.clock
    event: dict[str, Any] | None = None
    if isinstance(item, Click):
        # money in USD from here on (features, event filters, campaign payloads); the
        # original price and currency stay on the event (original_price, original_currency)
        event, unconverted = to_reference(item.event, rules.registries.rates.rates())
        if unconverted is not None:
            out.unconverted.append(unconverted)
        seg = on_event(state, event, registry, scorer)
        assert state.features is not None  # on_event created them
        out.features_changed = True
        cause = str(event["event_id"])
    elif isinstance(item, MetadataUpdate):
        seg = on_metadata(state, item.metadata, registry, item.at_ms, scorer)
        out.metadata_changed = out.metadata_changed or seg.now_ms is not None
        cause = f"metadata@{item.metadata.get('updated_at')}"
    elif isinstance(item, Backfill):
        cause = arbitration.backfill_cause(item.backfill_id)
        seg = _reevaluate(state, user_id, at_ms, registry, cause=cause, cause_event_id=None,
                          scorer=scorer)
        for change in seg.changes:  # for people: why now, without a click of theirs
            change["reason"] = f"{cause}: {change['reason']}"
    else:
        seg = on_timer(state, user_id, at_ms, registry, scorer)
        cause = f"timer@{at_ms}"
    out.changes.extend(seg.changes)
    evaluated_at = seg.now_ms if seg.now_ms is not None else at_ms
    clock.clock_ms = evaluated_at if clock.clock_ms is None else max(clock.clock_ms,
                                                                     evaluated_at)
    if seg.now_ms is None:
        return  # older metadata, ignored: nothing was evaluated
    clock.due_ms = seg.next_timer_ms
    clock.defs_fp = rules.registries.fingerprint()
    clock.recheck_ms = _next_recheck(seg.now_ms) if (
        state.membership or state.features is not None) else None
    # the first day boundary at which the user is idle for *more* than the TTL (expired)
    clock.expiry_ms = expiry_timer_ms(state.features.last_event_ms + 1, rules.state_ttl_ms) \
        if state.features is not None else None
    # a timer or a backfill: deferred candidates may be due, so the campaign state is read
    time_driven = not isinstance(item, (Click, MetadataUpdate))
    _campaigns(state, user_id, seg, rules, cause, event, time_driven, now_ms, out)
    # a due time is always after the evaluation's time (never loop on the same instant)
    if clock.due_ms is not None and clock.due_ms <= seg.now_ms:
        clock.due_ms = seg.now_ms + 1
    if clock.campaign_due_ms is not None and clock.campaign_due_ms <= seg.now_ms:
        clock.campaign_due_ms = seg.now_ms + 1


def _engage(state: UserState, user_id: str, item: Engagement, at_ms: int, rules: Rules,
            now_ms: int, out: Step) -> None:
    """An engagement outcome at ``at_ms``: no feature or segment changes; journeys move on."""
    clock = state.clock
    now = at_ms if clock.clock_ms is None else max(at_ms, clock.clock_ms)
    clock.clock_ms = now
    view = FeatureView(state.features, state.metadata, now, state.churn_score, None)
    seg = MembershipStep([], None, now_ms=now, view=view)
    out.campaigns_touched = True
    if arbitration.record_opt_out(state.campaign_state(), item.outcome):
        out.campaigns_changed = True  # kept whatever is defined: a later campaign must see it
    _campaigns(state, user_id, seg, rules, outcome_key(item.outcome), None, False, now_ms, out,
               item.outcome)
    if clock.campaign_due_ms is not None and clock.campaign_due_ms <= now:
        clock.campaign_due_ms = now + 1


def _next_recheck(at_ms: int) -> int:
    """The idle recheck after ``at_ms``: the next multiple of RECHECK_MS (aligned)."""
    return (at_ms // RECHECK_MS + 1) * RECHECK_MS


def _schedule(state: UserState, target: int, out: Step) -> None:
    """Move the user's one timer to its wake time, if that changed."""
    clock = state.clock
    wake = clock.wake_ms()
    if wake != clock.timer_ms:
        if clock.timer_ms is not None and clock.timer_ms > target:
            out.cancel_timer_ms = clock.timer_ms  # not fired yet: delete it
        clock.timer_ms = wake
        out.clock_changed = True
        if wake is not None:
            out.timers.append(wake)
    out.expiry_timer_ms = clock.expiry_ms


def _campaigns(state: UserState, user_id: str, seg: MembershipStep, rules: Rules, cause: str,
               event: dict[str, Any] | None, timer: bool, now_ms: int, out: Step,
               engagement: dict[str, Any] | None = None) -> None:
    """The campaigns' and journeys' half of a step: fire, move, arbitrate, decide; into ``out``.

    The campaign state (which holds the journey instances) is read only when it can matter: at
    a timer (deferred candidates and journey waits fall due), at an engagement outcome, when a
    campaign fires or a journey starts, at a click that may be a goal, when a campaign or
    journey watches the churn score (for crossings), or at a click when a journey has a goal or
    an event condition (a running instance may watch it). Of the steps read only for those
    last two, the ones with no journey instance running, nothing due and a score in the kept
    score's band stop there (``arbitration.may_decide``): ~10% of the domain loop's time.
    """
    registries = rules.registries
    journeys = registries.journey_map()
    if seg.now_ms is None:
        return
    due = state.clock.campaign_due_ms
    if not (len(registries.campaigns) or journeys) and (due is None or due > seg.now_ms):
        # nothing defined and nothing due; a due time left by campaigns or journeys deleted
        # since must still be decided (suppressed, ended) or it would fall due for ever
        return
    campaigns = registries.campaign_map()
    watch = registries.derived(_watch)
    facts = arbitration.StepFacts(user_id, seg.now_ms, cause, event, tuple(seg.changes),
                                  state.churn_score, seg.view, state.metadata, engagement)
    # the widest candidates (no kept score): handed on to ``on_step``, not found again
    found = watch.firing.candidates(facts, None)
    if found and registries.uses_churn():
        # with no kept score, a user at or above a churn threshold "crosses" it at every step:
        # read the kept score (the branch below would read it anyway) and drop a crossing
        # seen before, as ``on_step`` drops it, so such a step may still stop below
        previous = state.campaign_state().churn_score
        found = [c for c in found
                 if arbitration.still_fired(c, watch.decision[c.campaign_id], previous)]
    if not (timer or engagement is not None or found
            or (journeys and _journeys_may_start(watch, facts))
            or (event is not None and event["event_type"] in watch.goal_types
                and (arbitration.may_convert(facts, campaigns.values())
                     or any(arbitration.goal_matches(j.attribution_goal, facts)
                            for j in journeys.values())))):
        if not (registries.uses_churn() or (event is not None and watch.watches_clicks)):
            return
        cstate = state.campaign_state()
        if not arbitration.may_decide(cstate, facts, (), watch.thresholds) and (
                not journeys or state.clock.campaign_due_ms == cstate.next_due_ms()):
            # no instance to move, nothing found or due, the score's band unchanged: the
            # journeys' and the campaigns' ``on_step`` would change nothing. (With journeys
            # the full path ran here before, and it also set the clock's campaign due time,
            # which already matches unless the state predates the clock: then it still runs.)
            return
    cstate = state.campaign_state()
    out.campaigns_touched = True  # decided on from here: pruned, journeys moved, in place
    sends: list[arbitration.Candidate] = []
    if journeys or cstate.journeys.instances:  # instances of a deleted journey end here
        moved = journey_runner.on_step(
            cstate.journeys, facts,
            journey_runner.UserNow(state.membership, state.metadata, state.churn_score),
            journeys, cstate.churn_score)
        sends = moved.candidates
        out.journey_moves.extend(moved.moves)
        out.campaigns_changed = out.campaigns_changed or moved.changed
    defs = arbitration.Definitions(
        watch.decision, registries.policies.policy(), registries.segment_versions(),
        rules.audience_sizes, watch.journey_thresholds, registries.measured_roi(),
        firing=watch.firing)
    user = arbitration.UserFacts(user_id, state.metadata, state.membership, state.churn_score,
                                 state.model_version)
    outcome = arbitration.on_step(cstate, facts, user, defs, now_ms, sends, found)
    out.campaigns_changed = out.campaigns_changed or outcome.state_changed
    state.clock.campaign_due_ms = cstate.next_due_ms()
    out.triggers.extend(outcome.triggers)
    out.decisions.extend(outcome.decisions)
    out.trigger_duplicates += outcome.duplicates
    out.converted.extend(outcome.converted)
    out.lift.extend(outcome.lift)


class _Watch(NamedTuple):
    """What the campaigns' half of a step asks of the definitions (derived once per change)."""

    decision: Mapping[str, arbitration.Campaign]  # the campaigns a decision knows (+ nodes')
    firing: arbitration.Firing  # ``decision``'s campaigns by what fires them
    entries: tuple[Any, ...]  # the enabled journeys' entry triggers
    journey_thresholds: tuple[float, ...]  # the journeys' entry crossings
    thresholds: tuple[float, ...]  # every crossing ``on_step`` keeps the score's band for
    goal_types: frozenset[str]  # the click types any goal (campaign, default, journey) has
    watches_clicks: bool  # a running journey instance may watch a click


def _watch(registries: Registries) -> _Watch:
    """The ``_Watch`` of the definitions in force (``Registries.derived``: once per change)."""
    campaigns, journeys = registries.campaign_map(), registries.journey_map()
    decision = journey_runner.decision_campaigns(campaigns, journeys)
    firing = arbitration.Firing(decision.values())
    journey_thresholds = journey_runner.churn_thresholds(journeys)
    goal_types = set(arbitration.DEFAULT_GOAL.types)
    for campaign in campaigns.values():
        goal_types |= campaign.goal.types
    for journey in journeys.values():
        goal_types |= journey.attribution_goal.types
    return _Watch(decision, firing,
                  tuple(j.entry.trigger for j in journeys.values() if j.enabled),
                  journey_thresholds, (*firing.churn_thresholds, *journey_thresholds),
                  frozenset(goal_types), journey_runner.watches_events(journeys.values()))


def _journeys_may_start(watch: _Watch, facts: arbitration.StepFacts) -> bool:
    """Whether a journey's entry may fire at the step (the widest: no kept score)."""
    return any(arbitration.fired(trigger, facts, None) is not None
               for trigger in watch.entries if arbitration.may_fire(trigger, facts))


class MembershipStep:
    """What the segment half of a step produced (one per evaluation).

    A plain class with its own ``__init__`` (built natively when compiled; a named tuple's
    constructor is an interpreted function: see ``conditions.Evaluation``).
    """

    def __init__(self, changes: list[dict[str, Any]], next_timer_ms: int | None,
                 duplicate: bool = False, now_ms: int | None = None, view: Any = None) -> None:
        self.changes = changes
        #: the earliest next_change_ms of the segments (no recheck)
        self.next_timer_ms = next_timer_ms
        self.duplicate = duplicate
        #: the event time the step evaluated at (the user's clock)
        self.now_ms = now_ms
        #: the FeatureView it evaluated (campaign payloads read it)
        self.view = view

    def __repr__(self) -> str:
        return (f"MembershipStep(changes={self.changes!r}, next_timer_ms={self.next_timer_ms!r}, "
                f"duplicate={self.duplicate!r}, now_ms={self.now_ms!r})")


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

    Rounded up to the next day boundary, so it moves at most once a day however active the user
    is.
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
        now_ms = max(now_ms, state.features.last_event_ms)
    if state.clock.clock_ms is not None:
        # a user's clock never goes backwards: an input that arrived after the clock passed its
        # time (late) is evaluated at the clock
        now_ms = max(now_ms, state.clock.clock_ms)
    values = None
    if scorer is not None and state.features is not None:
        # re-scored at every evaluation (each new event, metadata update and timer): the
        # vector changes with time alone (recency), and a score costs ~10 µs; the segments
        # then read the same values
        values = feature_values(state.features, now_ms, state.metadata)
        state.churn_score = scorer.score(as_list(values))
        state.model_version = scorer.version
    view = FeatureView(state.features, state.metadata, now_ms, state.churn_score, values)
    changes: list[dict[str, Any]] = []
    next_timer: int | None = None

    def emit(segment_id: str, change: str, version: int, reason: str) -> None:
        changes.append(_change(state, user_id, segment_id, change, version, now_ms, reason,
                               cause, cause_event_id))

    segments = registry.by_id()
    for segment_id, segment in segments.items():
        # without the reason: it is built (a second, explaining evaluation of the same pure
        # function) only for a change, and building it costs more than deciding
        result = evaluate(segment, view, explain=False)  # disabled: not a member
        if result.next_change_ms is not None and result.next_change_ms > now_ms:
            next_timer = result.next_change_ms if next_timer is None else min(
                next_timer, result.next_change_ms)
        was_member = segment_id in state.membership
        if result.member and not was_member:
            state.membership[segment_id] = segment.version
            emit(segment_id, "ENTER", segment.version, evaluate(segment, view).reason)
        elif not result.member and was_member:
            entered_version = state.membership.pop(segment_id)
            reason = evaluate(segment, view).reason
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
    # the idle recheck (definition changes reaching a user who sends nothing) is the clock's
    # (``UserClock.recheck_ms``), not a due change
    return MembershipStep(changes, next_timer, now_ms=now_ms, view=view)


# --- erasure ------------------------------------------------------------------------------------

#: the reason of the EXITs of an erasure
ERASED_REASON: Final = "user erased"


def erase(state: UserState, item: Erasure, rules: Rules) -> Step:
    """Forget a user at once (``Erasure``): EXIT every segment, drop everything, keep the marker.

    The EXITs are stamped with the user's clock (``item.requested_ms`` if they have none), carry
    the version each segment was entered under and no churn score (nothing new is derived from
    the user while they are erased), and have deterministic change ids (user, segment, time and
    the request). ``state`` is left as ``UserState(erased=True)`` with a fresh clock.
    """
    state.ensure()
    clock = state.clock
    at_ms = clock.clock_ms if clock.clock_ms is not None else item.requested_ms
    state.churn_score = state.model_version = None
    cause = f"erasure@{item.requested_ms}"
    changes = [_change(state, item.user_id, segment_id, "EXIT", version, at_ms, ERASED_REASON,
                       cause, None)
               for segment_id, version in sorted(state.membership.items())]
    # journey instances end here: their exits keep the per-node counters balanced
    moves = [(instance.journey_id, instance.node, journey_runner.EXITED)
             for instance in state.campaign_state().journeys.instances.values()]
    known = {str(u["definition_id"]) for u in rules.registries.segments.updates()}
    out = Step(changes=changes, journey_moves=moves, cancel_timer_ms=clock.timer_ms,
               erasure=True, erased_segments=tuple(sorted(known | set(state.membership))),
               erased_dropped=len(clock.pending),
               erased_clicks_dropped=sum(p.rank == CLICK_RANK for p in clock.pending))
    state.features = state.metadata = None
    state.membership = {}
    state.campaigns = CampaignState()
    state.clock = UserClock()
    state.erased = True
    return out


def _reregisters(item: Input) -> bool:
    """Whether an input of an erased user is a re-registration (a non-null metadata record)."""
    if isinstance(item, Arrival):
        return item.pending.rank == METADATA_RANK
    return isinstance(item, MetadataUpdate)


def _dropped_after_erasure(item: Input) -> Step:
    """An input of an erased user that is not a re-registration: dropped (a timer: ignored)."""
    if isinstance(item, Timer):
        return Step()  # a timer the adapter could not delete (processing time, older builds)
    click = isinstance(item, Click) or (isinstance(item, Arrival)
                                        and item.pending.rank == CLICK_RANK)
    return Step(erased_dropped=1, erased_clicks_dropped=int(click))
