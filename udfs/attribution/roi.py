"""The ROI update rule: when measured revenue per send replaces a campaign's typed-in ROI.

Inputs: the campaign's typed ``expected_roi`` (USD per send), the ROI in use so far, its
measured revenue per send and number of sends, and the policy's ``RoiFeedback`` settings.
Outputs: ``RoiChoice`` - the ROI the priority matrix should use and where it came from, for
the TriggerEvent's explanation. State: none (the engine keeps the ROI in use per campaign and
calls ``update_roi`` when its statistics change).

The rule (also in ``udfs/campaigns/CAMPAIGNS.md``, "Attribution and holdouts"):

1. Feedback off (no ``roi_feedback`` in the policy), or fewer than ``min_sends`` sends: the
   typed value, ``typed: 60``. A few lucky or unlucky sends must not move priorities.
2. Otherwise, starting from the ROI in use (the typed value the first time), move a fraction
   ``smoothing`` of the way to the measured revenue per send (exponential smoothing, so one
   burst of purchases moves it only partly),
3. but by at most ``max_step`` of the ROI in use per update (at least ``max_step`` USD, so a
   campaign typed in at 0 can move): a bad window cannot swing a campaign from the top tier
   to the bottom in one update. The source reads ``measured: 42.10 per send over 512 sends``.

Measured revenue per send is the revenue credited to the campaign's sent triggers divided by
its sends (attribution rules in ``udfs.attribution.attribution``); it is not incremental (a
conversion the user would have made anyway counts), which lift (``udfs.attribution.lift``)
measures separately.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from udfs.definitions.diagnostics import format_number

#: the smallest ROI a step is measured against (USD per send): ``max_step`` of 0 is 0 for ever
MIN_STEP_BASE = 1.0


@dataclass(frozen=True)
class RoiFeedback:
    """The policy's settings of the ROI update rule (absent from the policy: no feedback).

    Attributes:
        min_sends: Sends a campaign needs before its measured revenue per send is used.
        smoothing: The fraction of the way from the ROI in use to the measured value taken at
            each update, in (0, 1].
        max_step: The largest change per update, as a fraction of the ROI in use, in (0, 1].
    """

    min_sends: int = 200
    smoothing: float = 0.2
    max_step: float = 0.25

    def __post_init__(self) -> None:
        if self.min_sends < 1 or not 0 < self.smoothing <= 1 or not 0 < self.max_step <= 1:
            raise ValueError(f"roi_feedback needs min_sends >= 1 and smoothing and max_step in "
                             f"(0, 1], got {self.min_sends}, {self.smoothing}, {self.max_step}")


@dataclass(frozen=True)
class RoiChoice:
    """The ROI a campaign competes with and where it came from.

    Attributes:
        value: USD per send, for the matrix's ROI factor (``value / roi_scale``, capped at 1).
        source: ``typed: 60`` or ``measured: 42.10 per send over 512 sends``.
        measured: Whether it came from measurements (the typed value otherwise).
    """

    value: float
    source: str
    measured: bool = False


def typed_roi(expected_roi: float) -> RoiChoice:
    """The campaign's own ``expected_roi``, named as typed."""
    return RoiChoice(float(expected_roi), f"typed: {format_number(float(expected_roi))}")


def update_roi(expected_roi: float, in_use: float | None, revenue_per_send: float | None,
               sends: int, feedback: RoiFeedback | None) -> RoiChoice:
    """The ROI to use after an update (the rule is in the module docstring).

    Args:
        expected_roi: The campaign's typed ``expected_roi`` (USD per send, >= 0).
        in_use: The ROI the campaign competed with until now (None: not measured before, so
            the typed value is the starting point).
        revenue_per_send: Measured revenue per send so far (None: nothing sent).
        sends: Sends so far.
        feedback: The policy's settings; None turns feedback off.

    Returns:
        The typed value below ``min_sends`` (or without feedback or measurements), else the
        smoothed, step-bounded move from ``in_use`` towards the measured value.
    """
    if feedback is None or revenue_per_send is None or sends < feedback.min_sends \
            or not math.isfinite(revenue_per_send):
        return typed_roi(expected_roi)
    start = float(expected_roi) if in_use is None else in_use
    target = start + feedback.smoothing * (revenue_per_send - start)
    limit = feedback.max_step * max(start, MIN_STEP_BASE)
    value = max(0.0, min(start + limit, max(start - limit, target)))
    return RoiChoice(value, f"measured: {revenue_per_send:.2f} per send over {sends} sends",
                     measured=True)
