"""The campaign grammar: what a campaign and the priority policy are, once validated.

Inputs: none (built by ``udfs.campaigns.compiler``). Outputs: the definition types
(``Campaign``, ``CampaignTrigger``, ``Cap``, ``PriorityPolicy``) and the words of the grammar
(channels, tiers, priority factors, payload placeholders, the keys of each document). The
settings of the closed loop a campaign or the policy carries (``AttributionRule``,
``ControlGroup``, ``RoiFeedback``) are defined next to their rules in ``udfs.attribution``.
State: none. The grammar is documented in ``udfs/campaigns/CAMPAIGNS.md``; keep the two in step.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from udfs.attribution.attribution import AttributionRule
from udfs.attribution.holdout import ControlGroup
from udfs.attribution.roi import RoiFeedback
from udfs.definitions.event_filter import EventFilter

#: the id of the priority policy in force (one policy; a new version replaces it)
POLICY_ID = "priority-policy"

CHANNELS = ("EMAIL", "SMS", "PUSH", "IN_APP", "PAID_SOCIAL")
#: the channel of ad-audience syncs (journeys' ``sync_audience`` nodes): no quiet hours
AUDIENCE_CHANNEL = "PAID_SOCIAL"
TIERS = ("P0", "P1", "P2", "P3")
#: ClickEvent fields a payload template may read as {event.<field>}
PAYLOAD_EVENT_FIELDS = ("event_id", "event_type", "product_id", "category", "price", "quantity",
                        "currency", "order_id", "page_url", "search_query", "source")
PAYLOAD_METADATA_FIELDS = ("country", "time_zone", "plan", "lifetime_value")
ON_CONFLICT = ("defer", "suppress")
#: ``on_backfill``: what a trigger caused by ``defs publish --backfill`` does (default skip)
ON_BACKFILL = ("skip", "send")
QUIET_HOURS_MODES = ("respect", "bypass")
FACTORS = ("urgency", "expected_roi", "audience", "brand_significance")

CAMPAIGN_KEYS = ("kind", "id", "version", "description", "enabled", "trigger", "channels",
                 "template", "payload", "valid_from", "valid_until", "expires_after",
                 "priority", "eligibility", "frequency", "quiet_hours", "on_conflict",
                 "on_backfill", "attribution", "holdout")
REQUIRED_CAMPAIGN_KEYS = ("kind", "id", "version", "description", "trigger", "channels",
                          "template", "priority")
POLICY_KEYS = ("kind", "id", "version", "description", "weights", "roi_scale",
               "audience_scale", "tiers", "decision_window", "min_interval", "channel_caps",
               "quiet_hours", "default_time_zone", "control_group", "roi_feedback")
REQUIRED_POLICY_KEYS = ("kind", "id", "version", "description", "weights", "tiers",
                        "channel_caps", "quiet_hours")
#: the keys of a campaign's ``attribution`` (a journey's has no ``goal``: it has its own)
ATTRIBUTION_KEYS = ("window", "model", "goal")
CONTROL_GROUP_KEYS = ("share", "salt")
ROI_FEEDBACK_KEYS = ("min_sends", "smoothing", "max_step", "update_every")
#: what a conversion is when a campaign (or journey) names no goal
DEFAULT_GOAL = EventFilter(frozenset({"PURCHASE"}), label="PURCHASE")
#: a payload placeholder: ``{event.product_id}``, ``{metadata.country}``, ``{feature.cart_value}``
PLACEHOLDER_RE = re.compile(r"\{([a-z_]+)\.([a-z_]+)\}")


@dataclass(frozen=True)
class Cap:
    """At most ``per_day`` and ``per_week`` sends (None: unlimited), in the user's time zone."""

    per_day: int | None = None
    per_week: int | None = None


@dataclass(frozen=True)
class CampaignTrigger:
    """What makes a campaign fire: exactly one of the three is set.

    Attributes:
        segment_enter: The user ENTERs this segment.
        event: A click matching this filter (type and ``where`` tests, as in segments).
        churn_crosses: The churn score moves from below this value to at least it.
    """

    segment_enter: str | None = None
    event: EventFilter | None = None
    churn_crosses: float | None = None

    def describe(self) -> str:
        """One line for explanations."""
        if self.segment_enter is not None:
            return f"entered segment {self.segment_enter}"
        if self.event is not None:
            return f"event {self.event.label}"
        return f"churn score crossed {self.churn_crosses}"


@dataclass(frozen=True)
class Campaign:
    """A validated campaign definition.

    Attributes:
        id: Unique id across all definitions; the DefinitionUpdate ``definition_id``.
        version: Strictly increasing per id.
        description: For people.
        enabled: A disabled campaign fires nothing; its deferred triggers are suppressed.
        trigger: What makes it fire.
        channels: Channels in order of preference; the first the user opted in to (and whose
            cap allows) is used.
        template: The message template id the sender renders.
        payload: Template variables: literal text with ``{event.x}``, ``{metadata.x}`` and
            ``{feature.x}`` placeholders, filled in from the causing event and the user.
        valid_from_ms, valid_until_ms: The cause's event time must fall in [from, until).
        expires_after_ms: A trigger is worthless this long after its cause (``expires_at``).
        urgency, expected_roi, brand_significance: Matrix inputs (0..1, USD per send, 0..1).
        audience_segment: The segment whose live size is the audience factor (default: the
            trigger's segment), or None (factor 0).
        require_segments, exclude_segments: Membership the user must have / must not have.
        cap: This campaign's own frequency cap per user.
        reeligible_after_ms: After a trigger, the same campaign is suppressed this long.
        bypass_quiet_hours: Sent during quiet hours when its tier is P0.
        defer_on_conflict: Losing an arbitration defers it (True) or suppresses it.
        send_on_backfill: A trigger caused by a backfill is sent (``on_backfill: send``) or
            suppressed with reason BACKFILL (``skip``, the default: publishing with
            ``--backfill`` fills segments without messaging everyone already in them).
        document: The document as written (published as the DefinitionUpdate body).
        source: Where it came from.
        journey_id, node_id: Set on the campaign a journey's send or sync_audience node
            competes as (``udfs.journeys.runner.send_campaigns``; its id is
            ``<journey>/<node>``, its trigger never fires by itself).
        attribution: Window and model crediting conversions to its triggers (a journey's
            send: the journey's).
        goal: The clicks that are conversions of it (default ``DEFAULT_GOAL``, PURCHASE).
        holdout: The share of users (0..0.5) held out of it, by a stable hash of the user and
            its id (a journey's send: of the journey's id), ``udfs.attribution.holdout``.
    """

    id: str
    version: int
    description: str
    enabled: bool
    trigger: CampaignTrigger
    channels: tuple[str, ...]
    template: str
    payload: tuple[tuple[str, str], ...]
    valid_from_ms: int | None
    valid_until_ms: int | None
    expires_after_ms: int | None
    urgency: float
    expected_roi: float
    brand_significance: float
    audience_segment: str | None
    require_segments: tuple[str, ...] = ()
    exclude_segments: tuple[str, ...] = ()
    cap: Cap = Cap()
    reeligible_after_ms: int = 0
    bypass_quiet_hours: bool = False
    defer_on_conflict: bool = True
    send_on_backfill: bool = False
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)
    source: str = field(default="", compare=False)
    journey_id: str | None = None
    node_id: str | None = None
    attribution: AttributionRule = AttributionRule()
    goal: EventFilter = DEFAULT_GOAL
    holdout: float = 0.0

    def referenced_segments(self) -> set[str]:
        """Every segment id this campaign names."""
        names = {*self.require_segments, *self.exclude_segments}
        for name in (self.trigger.segment_enter, self.audience_segment):
            if name is not None:
                names.add(name)
        return names


@dataclass(frozen=True)
class PriorityPolicy:
    """Weights of the prioritisation matrix, tier thresholds and the per-user contact rules.

    Attributes:
        weights: Factor name (``FACTORS``) -> weight; the score is the weighted sum of factors
            in [0, 1] divided by the sum of the weights, so it is in [0, 1] too.
        roi_scale: Expected ROI (USD per send) at which the ROI factor reaches 1.
        audience_scale: Segment size at which the audience factor reaches 1 (log scale).
        tiers: Minimum score of P0, P1 and P2 (descending); anything lower is P3.
        decision_window_ms: Candidates of one user compete for this long in event time before
            the best is sent (0: decide at once, lowest latency). P0 never waits.
        min_interval_ms: At least this long between two triggers to one user.
        channel_caps: Per channel, the user's cap across all campaigns.
        quiet_start, quiet_end: Quiet hours as minutes after local midnight; the window wraps
            midnight when start > end. Equal values mean no quiet hours.
        default_time_zone: Used for users without metadata or with an unknown zone.
        control_group: The global control group (users who get no campaign), or None.
        roi_feedback: How measured revenue per send replaces typed ``expected_roi``
            (``udfs.attribution.roi``), or None: the typed values are used.
    """

    id: str
    version: int
    description: str
    weights: Mapping[str, float]
    roi_scale: float
    audience_scale: int
    tiers: tuple[float, float, float]
    decision_window_ms: int
    min_interval_ms: int
    channel_caps: Mapping[str, Cap]
    quiet_start: int
    quiet_end: int
    default_time_zone: str
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)
    source: str = field(default="", compare=False)
    control_group: ControlGroup | None = None
    roi_feedback: RoiFeedback | None = None
