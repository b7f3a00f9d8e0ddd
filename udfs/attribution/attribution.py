"""Attribution: which triggers a conversion is credited to, and the CONVERTED outcomes.

Inputs: a user's ``Touch`` list (the triggers sent to them, and the candidates held out, each
with the attribution rule of its campaign when it was decided) and one ``Conversion`` (a goal
event with its revenue in US dollars). Outputs: ``Credit`` items, and per credit of a sent
trigger the fields of its ``CampaignOutcome`` CONVERTED record. State: none here - the engine
keeps the touches per user and bounds them with ``prune``.

The rules (also in ``udfs/campaigns/CAMPAIGNS.md``, "Attribution and holdouts"):

- A touch can be credited with a conversion at ``t`` when ``sent_at < t <= sent_at + window``:
  a conversion at or before the send gets nothing (a trigger cannot cause what came first,
  and a campaign fired by a purchase must not claim that purchase), one exactly at the end of
  the window still counts, one after it gets nothing.
- Each *unit* - a campaign, or a journey with all its sends - attributes on its own, with its
  own window and model: ``last_touch`` gives weight 1 to its latest touch in window (ties: the
  greatest trigger id), ``linear`` splits weight and revenue equally among its touches in
  window. So a conversion after an email of campaign A and a push of campaign B is a
  conversion of A and of B. This is what the holdout comparison needs: a campaign's held-out
  users must be measured with the same question as its treated users ("did they convert within
  the window?"), and letting campaigns take conversions from each other would not be fair to
  the two arms (a sent trigger blocks other campaigns through spacing and caps, a held-out one
  does not). The price: summing credited revenue across campaigns counts a purchase once per
  campaign that touched it; the business total is the sum of conversions, not of credits.
- A conversion that carries a trigger id (a click on a tracked link: ``nf_trigger``) credits
  that trigger alone in its unit, with weight 1 and rule ``direct``, when it is a sent touch
  of this user in its window. Otherwise (unknown id: another user's, forged, already pruned,
  held out, or out of window) the id is ignored and the window rules apply as if it were
  absent. Other units attribute by their own rules either way.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Final

from udfs.attribution.holdout import ARMS, TREATED
from udfs.currency.rates import REFERENCE_CURRENCY
from udfs.definitions.durations import format_duration

LAST_TOUCH: Final = "last_touch"
LINEAR: Final = "linear"
MODELS: Final = (LAST_TOUCH, LINEAR)
#: the rule named on a credit given by a trigger id carried in the conversion
DIRECT: Final = "direct"
#: the default attribution window: 7 days
DEFAULT_WINDOW_MS: Final = 7 * 86_400_000
#: at most this many live touches are kept per user (the oldest go first): a user sent more
#: than this within a window is a bot or a bug, and state must stay bounded either way
MAX_TOUCHES: Final = 64
#: CampaignOutcome.outcome of an attributed conversion
CONVERTED: Final = "CONVERTED"


@dataclass(frozen=True)
class AttributionRule:
    """How a unit (campaign or journey) credits conversions.

    Attributes:
        window_ms: A conversion up to this long after a send is credited to it.
        model: ``last_touch`` (the latest touch in window takes it all) or ``linear`` (equal
            shares among the touches in window).
    """

    window_ms: int = DEFAULT_WINDOW_MS
    model: str = LAST_TOUCH

    def __post_init__(self) -> None:
        if self.model not in MODELS:
            raise ValueError(f"unknown attribution model {self.model!r}: use one of "
                             f"{', '.join(MODELS)}")
        if self.window_ms <= 0:
            raise ValueError(f"attribution window must be positive, got {self.window_ms} ms")

    @property
    def name(self) -> str:
        """The rule as named on a credit: ``last_touch 7d``, ``linear 1d 12h``."""
        return f"{self.model} {format_duration(self.window_ms)}"


def attribution_unit(campaign_id: str, journey_id: str | None) -> str:
    """What attributes and is held out as one: the journey of a journey's send, else the campaign.

    A journey's sends compete as campaigns ``<journey>/<node>``; they share the journey's
    window, model and holdout, so a user is in one arm for the whole journey and a linear
    journey splits a conversion across its sends.
    """
    return journey_id if journey_id is not None else campaign_id


@dataclass(frozen=True)
class Touch:
    """A trigger decided for a user: sent (treated) or not sent (holdout, control).

    Attributes:
        trigger_id: The TriggerEvent's (or the HOLDOUT decision's) trigger id.
        campaign_id: The campaign it competed as (``<journey>/<node>`` for a journey's send).
        journey_id: The journey of a journey's send, else None.
        channel: The channel it went on (a held-out touch: the one it would have used, or
            None when none was chosen).
        sent_at_ms: Event time of the decision (the same clock for both arms: a held-out
            candidate has no delivery time).
        arm: ``treated``, ``holdout`` or ``control`` (``udfs.attribution.holdout``).
        rule: Its unit's attribution rule when it was decided: a campaign's new version does
            not change the window of touches already made.
    """

    trigger_id: str
    campaign_id: str
    journey_id: str | None
    channel: str | None
    sent_at_ms: int
    arm: str = TREATED
    rule: AttributionRule = AttributionRule()

    def __post_init__(self) -> None:
        if self.arm not in ARMS:
            raise ValueError(f"touch {self.trigger_id}: unknown arm {self.arm!r}: use one of "
                             f"{', '.join(ARMS)}")

    @property
    def unit(self) -> str:
        """The journey id of a journey's send, else the campaign id."""
        return attribution_unit(self.campaign_id, self.journey_id)

    @property
    def expires_at_ms(self) -> int:
        """The last event time at which a conversion can still be credited to it."""
        return self.sent_at_ms + self.rule.window_ms

    def covers(self, at_ms: int) -> bool:
        """Whether a conversion at ``at_ms`` is in its window: after the send, not after the end."""
        return self.sent_at_ms < at_ms <= self.expires_at_ms


@dataclass(frozen=True)
class Conversion:
    """A goal event of the user (a PURCHASE, or a goal a campaign or journey names).

    Attributes:
        event_id: The click's event id (the outcome id is derived from it).
        at_ms: Its event time.
        revenue: In US dollars (clicks are converted before anything reads them); 0 when the
            goal has no value.
        direct_trigger_id: The trigger id the click carries (``nf_trigger`` of a tracked
            link), or None.
    """

    event_id: str
    at_ms: int
    revenue: float = 0.0
    direct_trigger_id: str | None = None


@dataclass(frozen=True)
class Credit:
    """A share of a conversion credited to one touch.

    Attributes:
        trigger_id, campaign_id, journey_id, channel, arm, sent_at_ms: The touch's.
        weight: Its share of the conversion in its unit, in (0, 1]; a unit's weights add to 1.
        revenue: Its share of the revenue (``weight`` times the conversion's revenue), USD.
        rule: ``direct``, or the unit's rule name, e.g. ``last_touch 7d``.
    """

    trigger_id: str
    campaign_id: str
    journey_id: str | None
    channel: str | None
    arm: str
    sent_at_ms: int
    weight: float
    revenue: float
    rule: str

    @property
    def unit(self) -> str:
        """The journey id of a journey's send, else the campaign id."""
        return attribution_unit(self.campaign_id, self.journey_id)


def _credit(touch: Touch, weight: float, revenue: float, rule: str) -> Credit:
    return Credit(touch.trigger_id, touch.campaign_id, touch.journey_id, touch.channel,
                  touch.arm, touch.sent_at_ms, weight, revenue, rule)


def _order(touch: Touch) -> tuple[int, str]:
    """Latest last: by send time, ties by trigger id (any fixed order would do; this one is it)."""
    return (touch.sent_at_ms, touch.trigger_id)


def attribute(touches: Iterable[Touch], conversion: Conversion) -> list[Credit]:
    """The credits of a conversion: per unit, by its rule (see the module docstring).

    Args:
        touches: The user's touches whose unit counts this conversion as a goal (the caller
            leaves out the others: a campaign whose goal is a CHECKOUT gets no PURCHASE).
            A trigger id given twice counts once.
        conversion: The goal event.

    Returns:
        Credits ordered by unit, then send time and trigger id; empty when no touch covers the
        conversion. In each credited unit the weights add up to 1.
    """
    unique: dict[str, Touch] = {}
    for touch in touches:
        unique.setdefault(touch.trigger_id, touch)
    by_unit: dict[str, list[Touch]] = {}
    for touch in sorted(unique.values(), key=_order):
        if touch.covers(conversion.at_ms):
            by_unit.setdefault(touch.unit, []).append(touch)
    direct = unique.get(conversion.direct_trigger_id or "")
    if direct is not None and (direct.arm != TREATED or not direct.covers(conversion.at_ms)):
        direct = None  # a held-out trigger was never sent, so no click can carry its id
    credits: list[Credit] = []
    for unit in sorted(by_unit):
        eligible = by_unit[unit]
        if direct is not None and direct.unit == unit:
            credits.append(_credit(direct, 1.0, conversion.revenue, DIRECT))
            continue
        # touches of one unit made under different versions can carry different rules: the
        # latest touch's rule (the newest version that touched the user) decides the model
        rule = eligible[-1].rule
        if rule.model == LAST_TOUCH:
            credits.append(_credit(eligible[-1], 1.0, conversion.revenue, rule.name))
        else:
            share = 1.0 / len(eligible)
            credits.extend(_credit(t, share, conversion.revenue * share, rule.name)
                           for t in eligible)
    return credits


def prune(touches: Iterable[Touch], now_ms: int, limit: int = MAX_TOUCHES) -> tuple[Touch, ...]:
    """The touches that a conversion at ``now_ms`` or later can still be credited to.

    The engine applies a user's inputs in event-time order, so no conversion before ``now_ms``
    is still to come: a touch whose window ended before ``now_ms`` is dead. Of the live ones
    the latest ``limit`` are kept, so a user's state stays bounded whatever the send rate.

    Args:
        touches: The user's touches.
        now_ms: The event time of the step.
        limit: At most this many are kept (the latest by send time, then trigger id).

    Returns:
        The kept touches, oldest first.
    """
    live = sorted((t for t in touches if t.expires_at_ms >= now_ms), key=_order)
    return tuple(live[-limit:]) if limit > 0 else ()


def outcome_id(trigger_id: str, conversion_event_id: str) -> str:
    """The ``outcome_id`` of a CONVERTED outcome: the same for the same trigger and conversion.

    A replay of the conversion (after a restart) derives the same id, so consumers that
    deduplicate on it count it once. 32 hex digits of a SHA-256, like trigger ids and the
    sender's outcome ids; ``CONVERTED`` is hashed in so the id cannot equal the id of another
    outcome of the same trigger.
    """
    text = f"{trigger_id}|{conversion_event_id}|{CONVERTED}"
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def converted_outcome(credit: Credit, conversion: Conversion,
                      user_id: str) -> dict[str, Any] | None:
    """The ``CampaignOutcome`` CONVERTED record of a credit, or None for a held-out touch.

    A held-out (or control) touch was never sent: ``CampaignOutcome`` is feedback about a sent
    message, has no field to tell the arms apart and needs a channel, so its conversions are
    counted in the lift statistics from the credits, not published as outcomes.

    Args:
        credit: One credit from ``attribute``.
        conversion: The conversion it came from.
        user_id: The user (the record's key).

    Returns:
        The record's fields: ``outcome_id`` from (trigger id, conversion event id), the
        trigger's ids and channel, ``event_time`` the conversion's, the credited revenue in
        ``REFERENCE_CURRENCY``. The rule (``credit.rule``) has no field in the record's
        schema yet.
    """
    if credit.arm != TREATED or credit.channel is None:
        return None
    return {
        "outcome_id": outcome_id(credit.trigger_id, conversion.event_id),
        "trigger_id": credit.trigger_id,
        "user_id": user_id,
        "campaign_id": credit.campaign_id,
        "channel": credit.channel,
        "outcome": CONVERTED,
        "event_time": conversion.at_ms,
        "revenue": credit.revenue,
        "currency": REFERENCE_CURRENCY,
    }
