"""Lift: the treated arm's conversion rate against the held-out arm's, with an interval.

Inputs: per arm of a unit (campaign or journey), ``ArmCounts``: assignments (sends in the
treated arm, HOLDOUT decisions in the held-out arm), the assignments that converted, and the
credited revenue. Outputs: ``Lift`` - both rates, the absolute lift (treated minus holdout)
with its confidence interval, the relative lift and the revenue per send - or, while an arm is
empty, the same record saying there is not enough data. State: none (the engine keeps the
counts).

The interval is Newcombe's hybrid score interval for a difference of two independent
proportions (R. G. Newcombe, "Interval estimation for the difference between independent
proportions: comparison of eleven methods", Statistics in Medicine 17:873-890, 1998, method
10): a Wilson score interval per arm, without continuity correction, combined as

    low  = d - sqrt((p1 - l1)**2 + (u2 - p2)**2)
    high = d + sqrt((u1 - p1)**2 + (p2 - l2)**2)

where d = p1 - p2 and (l, u) are the arms' Wilson limits. Unlike the textbook Wald interval it
stays inside [-1, 1] and behaves with few conversions or rates near 0 and 1, which is where a
new campaign's numbers are. Assignments are treated as independent trials: a user assigned
twice in a window counts twice, which narrows the interval somewhat when users repeat.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist

#: named on every ``Lift`` so a report says how its interval was made
METHOD = "Newcombe hybrid score (Wilson per arm, method 10 of Newcombe 1998)"


@dataclass(frozen=True)
class ArmCounts:
    """What one arm of a unit has seen so far.

    Attributes:
        assigned: Triggers assigned to the arm (sent, or decided HOLDOUT).
        converted: Of those, how many were credited with at least one conversion (a trigger
            credited twice counts once here; a rate counts each assignment at most once).
        revenue: All revenue credited to the arm's triggers, USD.
    """

    assigned: int = 0
    converted: int = 0
    revenue: float = 0.0

    def __post_init__(self) -> None:
        if not 0 <= self.converted <= self.assigned:
            raise ValueError(f"arm counts: converted ({self.converted}) must be between 0 and "
                             f"assigned ({self.assigned})")

    def add(self, assigned: int = 0, converted: int = 0, revenue: float = 0.0) -> ArmCounts:
        """These counts plus the given increments."""
        return ArmCounts(self.assigned + assigned, self.converted + converted,
                         self.revenue + revenue)

    @property
    def rate(self) -> float | None:
        """The conversion rate, converted / assigned; None when nothing was assigned."""
        return self.converted / self.assigned if self.assigned else None


@dataclass(frozen=True)
class Lift:
    """The treated arm against the held-out arm of one unit.

    Attributes:
        treated_rate, holdout_rate: Conversion rates (None for an empty arm).
        difference: Absolute lift, treated rate minus holdout rate (None: not enough data).
        low, high: Its confidence interval (None: not enough data).
        relative: difference / holdout rate (None when either is None or the holdout rate is
            0: a lift relative to nothing is not a number).
        revenue_per_send: Treated revenue / sends (None before the first send).
        confidence: Of the interval, e.g. 0.95.
        method: How the interval was made (``METHOD``).
        note: Why a value is missing, for people; empty when nothing is.
    """

    treated_rate: float | None
    holdout_rate: float | None
    difference: float | None
    low: float | None
    high: float | None
    relative: float | None
    revenue_per_send: float | None
    confidence: float
    method: str = METHOD
    note: str = ""

    @property
    def enough_data(self) -> bool:
        """Whether both arms have assignments, so the lift and its interval exist."""
        return self.difference is not None


def _z(confidence: float) -> float:
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be between 0 and 1 (exclusive), got {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def wilson_interval(successes: int, trials: int, confidence: float = 0.95
                    ) -> tuple[float, float]:
    """The Wilson score interval of a proportion, without continuity correction.

    Args:
        successes: Conversions, 0..trials.
        trials: Assignments, at least 1.
        confidence: Two-sided, e.g. 0.95.

    Raises:
        ValueError: No trials, or successes outside 0..trials.
    """
    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"a Wilson interval needs 0 <= successes <= trials and trials >= 1, "
                         f"got {successes} of {trials}")
    z = _z(confidence)
    p = successes / trials
    z2n = z * z / trials
    centre = (p + z2n / 2) / (1 + z2n)
    half = z * math.sqrt(p * (1 - p) / trials + z2n / (4 * trials)) / (1 + z2n)
    # at 0 or all successes the formula's limit is exactly 0 or 1; clamp away rounding dust
    return (max(0.0, centre - half) if successes else 0.0,
            min(1.0, centre + half) if successes < trials else 1.0)


def newcombe_interval(x1: int, n1: int, x2: int, n2: int, confidence: float = 0.95
                      ) -> tuple[float, float]:
    """Newcombe's hybrid score interval of p1 - p2 (1998, method 10).

    Args:
        x1: Successes of the first arm (treated).
        n1: Trials of the first arm.
        x2: Successes of the second arm (holdout).
        n2: Trials of the second arm.
        confidence: Two-sided, e.g. 0.95.

    Returns:
        (low, high) around x1/n1 - x2/n2.

    Raises:
        ValueError: An arm without trials, or successes outside 0..trials.
    """
    p1, p2 = x1 / n1 if n1 else 0.0, x2 / n2 if n2 else 0.0
    l1, u1 = wilson_interval(x1, n1, confidence)
    l2, u2 = wilson_interval(x2, n2, confidence)
    d = p1 - p2
    return (d - math.sqrt((p1 - l1) ** 2 + (u2 - p2) ** 2),
            d + math.sqrt((u1 - p1) ** 2 + (p2 - l2) ** 2))


def measure_lift(treated: ArmCounts, holdout: ArmCounts, confidence: float = 0.95) -> Lift:
    """The lift of a unit: rates, difference with its interval, relative lift, revenue per send.

    Args:
        treated: The sent arm's counts (``assigned`` is the number of sends).
        holdout: The held-out arm's counts.
        confidence: Of the interval (two-sided), default 0.95.

    Returns:
        A ``Lift``; while an arm is empty its difference, interval and relative lift are None
        and ``note`` says which arm is missing.
    """
    _z(confidence)  # reject a bad confidence even when there is not enough data yet
    per_send = treated.revenue / treated.assigned if treated.assigned else None
    empty = [name for name, arm in (("treated", treated), ("holdout", holdout))
             if arm.assigned == 0]
    if empty:
        return Lift(treated.rate, holdout.rate, None, None, None, None, per_send, confidence,
                    note=f"not enough data: no {' and no '.join(empty)} assignments yet")
    p1, p2 = treated.converted / treated.assigned, holdout.converted / holdout.assigned
    low, high = newcombe_interval(treated.converted, treated.assigned, holdout.converted,
                                  holdout.assigned, confidence)
    difference = p1 - p2
    relative = difference / p2 if p2 > 0 else None
    note = "" if relative is not None else \
        "relative lift undefined: no held-out assignment converted yet"
    return Lift(p1, p2, difference, low, high, relative, per_send, confidence, note=note)
