"""A user's touches and what a conversion makes of them: CONVERTED outcomes and lift facts.

Inputs: the touches arbitration records (a trigger sent: arm ``treated``; a candidate held out
when it would have been sent: ``holdout`` or ``control``) and the user's clicks. Outputs, per
conversion (a click that is a goal of a touched unit): the ``CampaignOutcome`` CONVERTED
records of the credited sent triggers (``udfs.attribution.attribution``) and ``LiftFact``s,
which the per-campaign statistics (``udfs.attribution.stats``) add up. State: ``TouchLog``,
kept in the user's campaign state (JSON), bounded by the windows and ``MAX_TOUCHES``.

The unit of the lift is an assignment: one touch. It counts once as ``assigned`` when it is
made, and once as ``converted`` the first time a conversion is credited to it, with the revenue
credited to it then; a later conversion credited to the same touch adds revenue only. Both arms
are counted the same way, at the same moment of the decision (when the candidate would have
been sent now), so their conversion rates compare.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from udfs.attribution.attribution import (
    AttributionRule,
    Conversion,
    Touch,
    attribute,
    converted_outcome,
    prune,
)
from udfs.attribution.roi import Pricing

#: LiftFact kinds
ASSIGNED: Final = "assigned"
CONVERTED: Final = "converted"
REVENUE: Final = "revenue"
#: the click property a tracked link carries: the trigger id the click came through
TRIGGER_PROPERTY: Final = "nf_trigger"


@dataclass(frozen=True)
class LiftFact:
    """One count for a unit's (campaign's or journey's) statistics.

    Attributes:
        unit: The campaign id, or the journey id of a journey's send.
        arm: ``treated``, ``holdout`` or ``control``.
        kind: ``assigned`` (a touch was made), ``converted`` (a touch got its first credit) or
            ``revenue`` (a later credit of an already converted touch: revenue only).
        at_ms: Event time of the touch or of the conversion.
        revenue: The revenue credited (USD), 0 for ``assigned``.
        trigger_id: The touch's trigger id (for audit; the statistics do not keep it).
        pricing: A send's (``treated`` ``assigned``): its campaign's typed ROI and the
            policy's ``roi_feedback``, for the statistics' ROI tracker; None otherwise.
    """

    unit: str
    arm: str
    kind: str
    at_ms: int
    revenue: float
    trigger_id: str
    pricing: Pricing | None = None


@dataclass
class TouchLog:
    """The user's live touches and which of them have converted (by trigger id)."""

    touches: tuple[Touch, ...] = ()
    converted: frozenset[str] = field(default_factory=frozenset)

    def __init__(self, touches: tuple[Touch, ...] = (),
                 converted: frozenset[str] | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        self.touches = touches
        self.converted = frozenset() if converted is None else converted

    def is_empty(self) -> bool:
        """No touch can still be credited."""
        return not self.touches

    def record(self, touch: Touch) -> LiftFact:
        """Add a touch (a send or a hold-out); its ``assigned`` fact."""
        self.touches = prune((*self.touches, touch), touch.sent_at_ms)
        return LiftFact(touch.unit, touch.arm, ASSIGNED, touch.sent_at_ms, 0.0, touch.trigger_id)

    def convert(self, event: Mapping[str, Any], user_id: str,
                is_goal: Callable[[Touch, Mapping[str, Any]], bool]
                ) -> tuple[list[dict[str, Any]], list[LiftFact]]:
        """Credit a click to the touches whose unit counts it as a goal.

        Args:
            event: The click (prices already in USD).
            user_id: The user.
            is_goal: Whether the click is a conversion of the touch's unit (its campaign's or
                journey's goal).

        Returns:
            The CONVERTED outcome records of the credited sent triggers, and the lift facts.
        """
        at_ms = int(event["event_time"])
        self.prune(at_ms)
        touches = [t for t in self.touches if t.covers(at_ms) and is_goal(t, event)]
        if not touches:
            return [], []
        conversion = Conversion(event["event_id"], at_ms, revenue_of(event),
                                (event.get("properties") or {}).get(TRIGGER_PROPERTY))
        outcomes, facts = [], []
        converted = set(self.converted)
        for credit in attribute(touches, conversion):
            record = converted_outcome(credit, conversion, user_id)
            if record is not None:
                record["attribution_rule"] = credit.rule
                outcomes.append(record)
            kind = REVENUE if credit.trigger_id in converted else CONVERTED
            converted.add(credit.trigger_id)
            facts.append(LiftFact(credit.unit, credit.arm, kind, at_ms, credit.revenue,
                                  credit.trigger_id))
        self.converted = frozenset(converted)
        return outcomes, facts

    def prune(self, now_ms: int) -> None:
        """Forget touches no conversion at ``now_ms`` or later can be credited to."""
        self.touches = prune(self.touches, now_ms)
        live = {t.trigger_id for t in self.touches}
        self.converted = frozenset(c for c in self.converted if c in live)


def revenue_of(event: Mapping[str, Any]) -> float:
    """A goal click's value in USD: price times quantity (1 when absent); 0 without a price."""
    price = event.get("price")
    if price is None:
        return 0.0
    return float(price) * int(event.get("quantity") or 1)


def to_doc(log: TouchLog) -> dict[str, Any]:
    """The log as JSON-able data (the campaign state's ``touches`` key)."""
    return {"t": [[t.trigger_id, t.campaign_id, t.journey_id, t.channel, t.sent_at_ms, t.arm,
                   t.rule.window_ms, t.rule.model] for t in log.touches],
            "c": sorted(log.converted)}


def from_doc(doc: dict[str, Any] | None) -> TouchLog:
    """``to_doc``'s data back; None (state from before attribution): an empty log."""
    if not doc:
        return TouchLog()
    touches = tuple(Touch(t[0], t[1], t[2], t[3], int(t[4]), t[5],
                          AttributionRule(int(t[6]), t[7])) for t in doc.get("t", []))
    return TouchLog(touches, frozenset(doc.get("c", [])))
