"""A simulated audience: how users respond to the triggers nudgeflow sends them (pure).

Inputs: one decoded TriggerEvent (``respond_to_trigger``) or one decoded TriggerDecision whose
outcome is ``HOLDOUT`` (``respond_to_holdout``), and a ``ResponseSpec``. Outputs: the user's
responses, each a ``Response`` holding either a CampaignOutcome dict (OPENED, CLICKED,
UNSUBSCRIBED) for the outcomes topic or a PURCHASE ClickEvent dict (a conversion) for the
clicks topic. State: none. :mod:`jobs.workload.respond` reads the triggers from Kafka and writes
the responses back (``nudgeflow respond``).

The model, per trigger:

- **Open**: with the channel's open probability (PAID_SOCIAL, an ad-audience sync, has none),
  at the send time plus a delay drawn in ``open_delay_ms``.
- **Click**: an opened message is clicked with the channel's click-given-open probability, at
  the open plus a delay drawn in ``click_delay_ms``.
- **Unsubscribe**: an opened message makes the user unsubscribe with ``p_unsubscribe``
  (independently of the click), at the open plus a delay drawn in ``click_delay_ms``.
- **Conversion**: a treated user (one who got the trigger) converts with
  ``p_convert + effects[campaign_id]`` (clamped to [0, 1]), a held-out user with ``p_convert``,
  independently of opens and clicks, so the difference between the two groups' rates is the
  campaign's true effect. The purchase happens at the send time plus a delay drawn in
  ``[0, conversion_window_ms)``, worth a price drawn in ``purchase_value_usd``. It carries
  ``properties["nf_trigger"]`` (the trigger id) only when it follows a click on the message,
  so attribution can credit it directly; any other conversion is left to window attribution.

Determinism: every draw is a hash of (seed, trigger id, what is drawn) mapped to [0, 1), never
a random generator's state, so a trigger gives the same responses however often it is
redelivered and in whatever order triggers arrive; ids are hashes of the trigger id too.
"""

from __future__ import annotations

import hashlib
import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.sender.sender import derive_outcome_id
from udfs.campaigns.grammar import AUDIENCE_CHANNEL, CHANNELS

__all__ = [
    "CLICK_SCHEMA",
    "DEFAULT_CLICK_RATES",
    "DEFAULT_OPEN_RATES",
    "HOLDOUT",
    "NF_TRIGGER",
    "OPENABLE_CHANNELS",
    "OUTCOME_SCHEMA",
    "Response",
    "ResponseSpec",
    "draw",
    "purchase_ids",
    "respond_to_holdout",
    "respond_to_trigger",
    "is_holdout",
]

SECOND_MS, MINUTE_MS, HOUR_MS, DAY_MS = 1_000, 60_000, 3_600_000, 86_400_000

OUTCOME_SCHEMA = "CampaignOutcome"
CLICK_SCHEMA = "ClickEvent"
HOLDOUT = "HOLDOUT"
"""The reason code of a TriggerDecision of a user held out of a campaign (outcome SUPPRESSED)."""
CONTROL_GROUP = "CONTROL_GROUP"
"""The reason code of a user in the global control group (outcome SUPPRESSED)."""


def is_holdout(decision: Mapping[str, Any]) -> bool:
    """Whether a TriggerDecision held the user out (of the campaign, or of every campaign).

    The engine decides a held-out candidate as SUPPRESSED with reason code HOLDOUT or
    CONTROL_GROUP: TriggerDecision's outcome enum is closed, so no new symbol was added.
    """
    return decision.get("outcome") == "SUPPRESSED" and \
        decision.get("reason_code") in (HOLDOUT, CONTROL_GROUP)
NF_TRIGGER = "nf_trigger"
"""The ClickEvent.properties key a post-click purchase carries: the trigger id clicked."""

#: channels whose messages can be opened (and so clicked): all but the ad-audience sync
OPENABLE_CHANNELS = tuple(c for c in CHANNELS if c != AUDIENCE_CHANNEL)

DEFAULT_OPEN_RATES: Mapping[str, float] = {"EMAIL": 0.25, "SMS": 0.5, "PUSH": 0.08,
                                           "IN_APP": 0.3}
"""Probability that a message is opened, by channel (a push's open is the tap on it)."""
DEFAULT_CLICK_RATES: Mapping[str, float] = {"EMAIL": 0.2, "SMS": 0.1, "PUSH": 0.4,
                                            "IN_APP": 0.25}
"""Probability that an opened message is clicked, by channel."""


@dataclass(frozen=True)
class ResponseSpec:
    """How the simulated audience responds; every draw is seeded by ``seed``.

    Probabilities lie in [0, 1]; delays are milliseconds, as (low, high) ranges, both ends
    included. Channels missing from ``open_rates`` / ``click_rates`` never open / click.
    """

    seed: int = 42
    """Changes every draw (not the ids): another seed is another audience."""
    open_rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_OPEN_RATES))
    """Probability that a message is opened, by channel (EMAIL, SMS, PUSH, IN_APP)."""
    click_rates: Mapping[str, float] = field(default_factory=lambda: dict(DEFAULT_CLICK_RATES))
    """Probability that an opened message is clicked, by channel."""
    open_delay_ms: tuple[int, int] = (1 * MINUTE_MS, 4 * HOUR_MS)
    """Delay from the send to the open."""
    click_delay_ms: tuple[int, int] = (5 * SECOND_MS, 30 * MINUTE_MS)
    """Delay from the open to the click (and to the unsubscribe)."""
    p_unsubscribe: float = 0.0
    """Probability that an opened message makes the user unsubscribe from its channel."""
    p_convert: float = 0.02
    """Base probability of a purchase within the window, for treated and held-out users."""
    conversion_window_ms: int = 3 * DAY_MS
    """A conversion happens within this long after the send (or the holdout decision)."""
    effects: Mapping[str, float] = field(default_factory=dict)
    """The true effect of each campaign: campaign_id -> added conversion probability for a
    treated user (may be negative); campaigns not listed have none."""
    purchase_value_usd: tuple[float, float] = (10.0, 200.0)
    """Price range of a conversion's purchase, in USD."""

    def __post_init__(self) -> None:
        # copies: a caller mutating its dict afterwards must not change a frozen spec
        object.__setattr__(self, "open_rates", dict(self.open_rates))
        object.__setattr__(self, "click_rates", dict(self.click_rates))
        object.__setattr__(self, "effects", dict(self.effects))
        problems = []
        for name, rates in (("open rate", self.open_rates), ("click rate", self.click_rates)):
            for channel, rate in rates.items():
                if channel == AUDIENCE_CHANNEL:
                    if rate:
                        problems.append(f"{name} of {channel} must be 0: an ad-audience sync "
                                        f"is not a message and cannot be opened, got {rate}")
                elif channel not in CHANNELS:
                    problems.append(f"{name}: unknown channel {channel!r}; the channels are "
                                    f"{', '.join(OPENABLE_CHANNELS)}")
                else:
                    problems += _probability_problems(f"{name} of {channel}", rate)
        problems += _probability_problems("p_unsubscribe", self.p_unsubscribe)
        problems += _probability_problems("p_convert", self.p_convert)
        for campaign_id, delta in self.effects.items():
            if not isinstance(campaign_id, str) or not campaign_id:
                problems.append(f"effects: a campaign id must be a non-empty string, got "
                                f"{campaign_id!r}")
            if not _is_number(delta) or not -1 <= delta <= 1:
                problems.append(f"effect of {campaign_id!r} must be a number in [-1, 1] (an "
                                f"added conversion probability), got {delta!r}")
        for name in ("open_delay_ms", "click_delay_ms"):
            low, high = getattr(self, name)
            if not (isinstance(low, int) and isinstance(high, int) and 0 <= low <= high):
                problems.append(f"{name} must be whole milliseconds (low, high) with "
                                f"0 <= low <= high, got ({low!r}, {high!r})")
        if not isinstance(self.conversion_window_ms, int) or self.conversion_window_ms < 1:
            problems.append(f"conversion_window_ms must be a whole number of milliseconds "
                            f">= 1, got {self.conversion_window_ms!r}")
        low_usd, high_usd = self.purchase_value_usd
        if not (_is_number(low_usd) and _is_number(high_usd) and 0 <= low_usd <= high_usd):
            problems.append(f"purchase_value_usd must be (low, high) with 0 <= low <= high, "
                            f"got ({low_usd!r}, {high_usd!r})")
        if problems:
            raise ValueError("invalid response spec: " + "; ".join(problems))

    def open_rate(self, channel: str) -> float:
        """Probability that a message on ``channel`` is opened (0 for PAID_SOCIAL)."""
        return 0.0 if channel == AUDIENCE_CHANNEL else self.open_rates.get(channel, 0.0)

    def click_rate(self, channel: str) -> float:
        """Probability that an opened message on ``channel`` is clicked."""
        return self.click_rates.get(channel, 0.0)

    def conversion_rate(self, campaign_id: str, treated: bool) -> float:
        """Probability of a conversion: ``p_convert``, plus the campaign's effect if treated."""
        if not treated:
            return self.p_convert
        return min(1.0, max(0.0, self.p_convert + self.effects.get(campaign_id, 0.0)))


@dataclass(frozen=True)
class Response:
    """One thing a simulated user did: a record ready for its topic.

    ``schema`` is ``CampaignOutcome`` (``record`` is an OPENED, CLICKED or UNSUBSCRIBED outcome
    for the outcomes topic) or ``ClickEvent`` (``record`` is a PURCHASE for the clicks topic).
    """

    schema: str
    record: dict[str, Any]

    @property
    def event_time(self) -> int:
        """When it happened, in event time (epoch milliseconds, UTC)."""
        return int(self.record["event_time"])

    @property
    def user_id(self) -> str:
        """The user who did it: the Kafka key of its record."""
        return str(self.record["user_id"])

    @property
    def kind(self) -> str:
        """OPENED, CLICKED, UNSUBSCRIBED or PURCHASE."""
        if self.schema == OUTCOME_SCHEMA:
            return str(self.record["outcome"])
        return str(self.record["event_type"])


def draw(seed: int, trigger_id: str, what: str) -> float:
    """A uniform number in [0, 1) fixed by (seed, trigger id, what is drawn).

    A hash, not a generator's state: the same trigger draws the same numbers whatever came
    before it. The three parts are JSON-encoded so that no two triples hash the same text.
    """
    text = json.dumps([seed, trigger_id, what])
    digest = hashlib.sha256(text.encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> 11) / 2**53  # 53 bits: exact in a float


def purchase_ids(trigger_id: str) -> tuple[str, str]:
    """(event_id, order_id) of the purchase converting ``trigger_id``: the same every time.

    Seed-free, like the outcome ids: a trigger has at most one simulated purchase, so a
    redelivered one is dropped by the engine as a duplicate event.
    """
    digest = hashlib.sha256(f"{trigger_id}|PURCHASE".encode()).hexdigest()[:32]
    return f"e-resp-{digest}", f"o-resp-{digest}"


def respond_to_trigger(trigger: Mapping[str, Any], spec: ResponseSpec) -> list[Response]:
    """The responses of the user a trigger was sent to, in event-time order.

    The send time is ``cause_event_time``: of the TriggerEvent's three times it is the only
    event time (``ingest_time`` and ``emit_time`` are processing times, which a replay or a
    backlog shifts), and the engine sends at that time unless the trigger was deferred (quiet
    hours, caps): then the real send came later and the responses may be timed before it.

    Args:
        trigger: A decoded TriggerEvent (``schemas.codec.Codec.decode``); reads trigger_id,
            user_id, campaign_id, channel and cause_event_time.
        spec: How the audience responds.

    Returns:
        OPENED / CLICKED / UNSUBSCRIBED CampaignOutcomes and at most one PURCHASE ClickEvent,
        none earlier than the send time.

    Raises:
        ValueError: a field it reads is missing.
    """
    _require(trigger, ("trigger_id", "user_id", "campaign_id", "channel", "cause_event_time"),
             "TriggerEvent")
    trigger_id = str(trigger["trigger_id"])
    channel = str(trigger["channel"])
    sent_at = int(trigger["cause_event_time"])
    seed = spec.seed
    out: list[Response] = []
    clicked_at: int | None = None
    if draw(seed, trigger_id, "open") < spec.open_rate(channel):
        opened_at = sent_at + _delay(seed, trigger_id, "open-delay", spec.open_delay_ms)
        out.append(_outcome(trigger, "OPENED", opened_at))
        if draw(seed, trigger_id, "click") < spec.click_rate(channel):
            clicked_at = opened_at + _delay(seed, trigger_id, "click-delay", spec.click_delay_ms)
            out.append(_outcome(trigger, "CLICKED", clicked_at))
        if draw(seed, trigger_id, "unsubscribe") < spec.p_unsubscribe:
            left_at = opened_at + _delay(seed, trigger_id, "unsubscribe-delay",
                                         spec.click_delay_ms)
            out.append(_outcome(trigger, "UNSUBSCRIBED", left_at))
    purchase = _conversion(trigger, sent_at, spec, treated=True, clicked_at=clicked_at)
    if purchase is not None:
        out.append(purchase)
    out.sort(key=lambda response: response.event_time)
    return out


def respond_to_holdout(decision: Mapping[str, Any], spec: ResponseSpec) -> list[Response]:
    """The responses of a user held out of a campaign: at most a purchase, at the base rate.

    A held-out user got no message, so nothing is opened or clicked and the purchase (if any)
    carries no ``nf_trigger``. Its time counts from ``decided_at``, the decision's event time
    (``emit_time`` is processing time). Any other decision (``is_holdout`` false: suppressed
    for another reason, deferred) has no response.

    Args:
        decision: A decoded TriggerDecision; reads outcome, trigger_id, user_id and
            decided_at.
        spec: How the audience responds.

    Returns:
        An empty list, or one PURCHASE ClickEvent.

    Raises:
        ValueError: a field it reads is missing.
    """
    if not is_holdout(decision):
        return []
    _require(decision, ("trigger_id", "user_id", "decided_at"), "TriggerDecision")
    purchase = _conversion(decision, int(decision["decided_at"]), spec, treated=False,
                           clicked_at=None)
    return [] if purchase is None else [purchase]


def _conversion(cause: Mapping[str, Any], sent_at: int, spec: ResponseSpec, treated: bool,
                clicked_at: int | None) -> Response | None:
    """The purchase of a treated or held-out user, or None when the draw says no."""
    trigger_id = str(cause["trigger_id"])
    rate = spec.conversion_rate(str(cause.get("campaign_id", "")), treated)
    if draw(spec.seed, trigger_id, "convert") >= rate:
        return None
    bought_at = sent_at + math.floor(
        draw(spec.seed, trigger_id, "convert-delay") * spec.conversion_window_ms)
    low, high = spec.purchase_value_usd
    price = round(low + draw(spec.seed, trigger_id, "value") * (high - low), 2)
    event_id, order_id = purchase_ids(trigger_id)
    # only a purchase after the click came through the message's link: the others are
    # for window attribution to find (or not)
    after_click = clicked_at is not None and bought_at >= clicked_at
    return Response(CLICK_SCHEMA, {
        "event_id": event_id,
        "user_id": str(cause["user_id"]),
        "event_type": "PURCHASE",
        "event_time": bought_at,
        "source": "WEB",
        "session_id": None,
        "page_url": None,
        "product_id": None,
        "category": None,
        "search_query": None,
        "order_id": order_id,
        "currency": "USD",
        "price": price,
        "quantity": 1,
        "properties": {NF_TRIGGER: trigger_id} if after_click else {},
    })


def _outcome(trigger: Mapping[str, Any], outcome: str, at: int) -> Response:
    """A CampaignOutcome of the trigger, with the id the sender would give it."""
    trigger_id = str(trigger["trigger_id"])
    channel = str(trigger["channel"])
    return Response(OUTCOME_SCHEMA, {
        "outcome_id": derive_outcome_id(trigger_id, channel, outcome),
        "trigger_id": trigger_id,
        "user_id": str(trigger["user_id"]),
        "campaign_id": str(trigger["campaign_id"]),
        "channel": channel,
        "outcome": outcome,
        "event_time": at,
        "revenue": None,
        "currency": None,
        "attribution_rule": None,  # only attributed conversions (the engine's) name a rule
    })


def _delay(seed: int, trigger_id: str, what: str, bounds: tuple[int, int]) -> int:
    """A whole number of milliseconds in [low, high], both ends included."""
    low, high = bounds
    return low + min(high - low, math.floor(draw(seed, trigger_id, what) * (high - low + 1)))


def _require(record: Mapping[str, Any], names: tuple[str, ...], what: str) -> None:
    missing = [name for name in names if record.get(name) is None]
    if missing:
        raise ValueError(f"cannot respond to a {what} without {', '.join(missing)} (trigger "
                         f"{record.get('trigger_id')!r}); pass the record as "
                         "schemas.codec.Codec.decode returns it")


def _probability_problems(name: str, value: Any) -> list[str]:
    if not _is_number(value) or not 0 <= value <= 1:
        return [f"{name} must be a probability in [0, 1], got {value!r}"]
    return []


def _is_number(value: Any) -> bool:
    return (isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value))
