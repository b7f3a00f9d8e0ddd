"""Per-unit (campaign or journey) statistics of the closed loop, added up from lift facts.

Inputs: ``LiftFact``s of one unit (``udfs.attribution.touches``), in any order. Outputs:
``UnitStats``: the counts per arm (assigned, converted, revenue), per event-time day, and the
lift (``udfs.attribution.lift.measure_lift``: treated against held out). State: a
``UnitStats`` per unit, kept by the per-campaign operator in keyed state (JSON) and written to
Redis (``udfs.stores.campaign_stats``) for ``nudgeflow report campaigns``.

Every count is a sum, so the order of the facts does not matter; the operator's keyed state is
checkpointed with the job, so after a restore the facts since the checkpoint are added again
to the state of the checkpoint, exactly once. The unit's ``RoiTracker`` (``udfs.attribution.roi``)
rides along: ``observe`` returns the measured ROI to publish when an update is due (that one
depends on the order of the facts, as a running estimate does).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from udfs.attribution.holdout import ARMS, HOLDOUT, TREATED
from udfs.attribution.lift import ArmCounts, Lift, measure_lift
from udfs.attribution.roi import MeasuredRoi, Pricing, RoiFeedback, RoiTracker
from udfs.attribution.touches import ASSIGNED, CONVERTED, REVENUE, LiftFact

DAY_MS = 86_400_000
#: days of the daily series kept (older days are dropped; the totals keep everything)
DAYS_KEPT = 120


@dataclass
class UnitStats:
    """What one campaign or journey has seen so far.

    Attributes:
        unit: The campaign id, or the journey id.
        arms: Arm (``treated``, ``holdout``, ``control``) -> [assigned, converted, revenue].
        daily: Event-time day (ms since the epoch / ``DAY_MS``) -> arm -> [assigned,
            converted, revenue] of the facts of that day.
        last_at_ms: Event time of the newest fact.
        roi: What the unit's ROI feedback has published (``RoiTracker``).
    """

    unit: str
    arms: dict[str, list[float]] = field(default_factory=dict)
    daily: dict[int, dict[str, list[float]]] = field(default_factory=dict)
    last_at_ms: int | None = None
    roi: RoiTracker = field(default_factory=RoiTracker)

    def add(self, fact: LiftFact) -> None:
        """Count one fact.

        ``assigned``: +1 assigned; ``converted``: +1 converted and its revenue; ``revenue``:
        the revenue only. Plain sums, so any order of facts gives the same totals.
        """
        assigned = 1 if fact.kind == ASSIGNED else 0
        converted = 1 if fact.kind == CONVERTED else 0
        revenue = fact.revenue if fact.kind in (CONVERTED, REVENUE) else 0.0
        for cell in (self.arms.setdefault(fact.arm, [0, 0, 0.0]),
                     self.daily.setdefault(fact.at_ms // DAY_MS, {}).setdefault(
                         fact.arm, [0, 0, 0.0])):
            cell[0] += assigned
            cell[1] += converted
            cell[2] += revenue
        while len(self.daily) > DAYS_KEPT:
            del self.daily[min(self.daily)]
        self.last_at_ms = fact.at_ms if self.last_at_ms is None else max(self.last_at_ms,
                                                                          fact.at_ms)

    def observe(self, fact: LiftFact) -> MeasuredRoi | None:
        """Count one fact (``add``); the measured ROI to publish if an update is now due."""
        self.add(fact)
        sends, _, revenue = self.arms.get(TREATED, [0, 0, 0.0])
        return self.roi.observe(self.unit, fact.pricing, int(sends), float(revenue),
                                self.last_at_ms or fact.at_ms)

    def arm(self, name: str) -> ArmCounts:
        """One arm's counts (empty when none yet).

        Each user's conversion follows its assignment, so converted <= assigned holds for the
        totals; a count read while another subtask's facts are still in flight could briefly
        break it, so it is capped rather than refused.
        """
        assigned, converted, revenue = self.arms.get(name, [0, 0, 0.0])
        return ArmCounts(int(assigned), min(int(converted), int(assigned)), float(revenue))

    def lift(self, confidence: float = 0.95) -> Lift:
        """Treated against held out (the global control group is reported, not compared)."""
        return measure_lift(self.arm(TREATED), self.arm(HOLDOUT), confidence)


def to_doc(stats: UnitStats) -> dict[str, Any]:
    """The statistics as JSON-able data (keyed state and the Redis hash hold this)."""
    return {"unit": stats.unit,
            "arms": {a: [int(c[0]), int(c[1]), round(c[2], 6)]
                     for a, c in sorted(stats.arms.items())},
            "daily": {str(d): cells for d, cells in sorted(stats.daily.items())},
            "last_at_ms": stats.last_at_ms,
            "roi": stats.roi.to_doc()}


def from_doc(doc: dict[str, Any]) -> UnitStats:
    """``to_doc``'s data back.

    State written before the ROI feedback has no ``roi``: a new tracker, so a savepoint of
    that version restores.

    Raises:
        ValueError: an arm that is not one of ``ARMS`` (data of another version).
    """
    arms: dict[str, list[float]] = {}
    for name, (assigned, converted, revenue) in doc.get("arms", {}).items():
        if name not in ARMS:
            raise ValueError(f"campaign statistics of {doc.get('unit')!r}: unknown arm "
                             f"{name!r}; written by another nudgeflow version?")
        arms[name] = [int(assigned), int(converted), float(revenue)]
    daily = {int(d): {a: [int(c[0]), int(c[1]), float(c[2])] for a, c in cells.items()}
             for d, cells in doc.get("daily", {}).items()}
    return UnitStats(doc["unit"], arms, daily, doc.get("last_at_ms"),
                     RoiTracker.from_doc(doc.get("roi")))


def fact_to_doc(fact: LiftFact) -> dict[str, Any]:
    """A lift fact as JSON-able data (what crosses from the user engine to the statistics)."""
    doc: dict[str, Any] = {"unit": fact.unit, "arm": fact.arm, "kind": fact.kind,
                           "at": fact.at_ms, "revenue": fact.revenue,
                           "trigger_id": fact.trigger_id}
    if fact.pricing is not None:
        feedback = fact.pricing.feedback
        doc["pricing"] = [fact.pricing.typed, feedback.to_list() if feedback else None]
    return doc


def fact_from_doc(doc: dict[str, Any]) -> LiftFact:
    """``fact_to_doc``'s data back."""
    pricing = None
    if doc.get("pricing"):
        typed, feedback = doc["pricing"]
        pricing = Pricing(float(typed), RoiFeedback.from_list(feedback) if feedback else None)
    return LiftFact(doc["unit"], doc["arm"], doc["kind"], int(doc["at"]), float(doc["revenue"]),
                    doc["trigger_id"], pricing)
