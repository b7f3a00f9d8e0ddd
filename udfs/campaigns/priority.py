"""The priority matrix: a campaign's weighted score and its tier under the priority policy.

Inputs: a ``Campaign`` (urgency, expected ROI, brand significance, audience segment), the
``PriorityPolicy`` (weights, scales, tier thresholds), the live sizes of segments and the ROI in
use when the closed loop measured one (``udfs.attribution.roi``). Outputs:
``Priority`` (score in [0, 1], tier P0..P3, the factors that made it). State: none. The rules
are written down in ``udfs/campaigns/CAMPAIGNS.md``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from udfs.attribution.roi import RoiChoice, typed_roi
from udfs.campaigns.grammar import Campaign, PriorityPolicy


@dataclass(frozen=True)
class Priority:
    """A campaign's priority score in [0, 1], its tier, the factors that made it and its ROI."""

    score: float
    tier: str
    factors: dict[str, float]
    roi: RoiChoice


def audience_factor(size: int, scale: int) -> float:
    """log10(1 + size) / log10(1 + scale), capped at 1: reach matters, with diminishing returns."""
    if size <= 0:
        return 0.0
    return min(1.0, math.log10(1 + size) / math.log10(1 + scale))


def tier_of(score: float, policy: PriorityPolicy) -> str:
    """P0 .. P3 by the policy's thresholds."""
    p0, p1, p2 = policy.tiers
    if score >= p0:
        return "P0"
    if score >= p1:
        return "P1"
    if score >= p2:
        return "P2"
    return "P3"


def score_priority(campaign: Campaign, policy: PriorityPolicy,
                   audience_sizes: Mapping[str, int], roi: RoiChoice | None = None) -> Priority:
    """The weighted score of a campaign: urgency, expected ROI, audience size, brand.

    Every factor is in [0, 1]: urgency and brand significance as declared; ROI as
    ``roi / roi_scale`` capped at 1, where ``roi`` is the measured ROI in use (given by the
    caller when the policy has ``roi_feedback`` and one was measured) or else the typed
    ``expected_roi``; audience from the live size of the campaign's audience segment
    (``audience_factor``). The score is the weighted mean.
    """
    roi = roi if roi is not None else typed_roi(campaign.expected_roi)
    size = audience_sizes.get(campaign.audience_segment, 0) if campaign.audience_segment else 0
    factors = {
        "urgency": campaign.urgency,
        "expected_roi": min(1.0, roi.value / policy.roi_scale),
        "audience": audience_factor(size, policy.audience_scale),
        "brand_significance": campaign.brand_significance,
    }
    total = sum(policy.weights.values())
    score = sum(policy.weights[name] * value for name, value in factors.items()) / total
    score = round(score, 6)  # stable across platforms' float sums
    explained = {f"priority.{name}": round(value, 6) for name, value in factors.items()}
    explained["audience_size"] = float(size)
    explained["roi_usd_per_send"] = round(roi.value, 6)
    return Priority(score, tier_of(score, policy), explained, roi)
