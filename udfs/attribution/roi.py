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

The loop (``udfs/campaigns/CAMPAIGNS.md``, "ROI into priority"): each sent trigger's
``assigned`` fact carries its campaign's typed ROI and the policy's settings (``Pricing``);
the per-campaign statistics operator keeps a ``RoiTracker`` per unit and, once the unit has
``min_sends`` sends and then every ``update_every`` facts, applies the rule and publishes the
result as a DefinitionUpdate of kind ``CAMPAIGN_ROI`` (``MeasuredRoi``, id ``roi:<unit>``) on
the control topic. The engine holds them like every definition (``RoiRegistry``, in broadcast
state) and the priority matrix uses one while the policy has ``roi_feedback``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Final

from udfs.definitions.compiler import MAX_VERSION, Compiler
from udfs.definitions.diagnostics import describe, format_number
from udfs.definitions.envelope import ROI_KIND, definition_to_update, update_document
from udfs.definitions.versioning import VersionedRegistry

#: the smallest ROI a step is measured against (USD per send): ``max_step`` of 0 is 0 for ever
MIN_STEP_BASE: Final = 1.0


@dataclass(frozen=True)
class RoiFeedback:
    """The policy's settings of the ROI update rule (absent from the policy: no feedback).

    Attributes:
        min_sends: Sends a campaign needs before its measured revenue per send is used.
        smoothing: The fraction of the way from the ROI in use to the measured value taken at
            each update, in (0, 1].
        max_step: The largest change per update, as a fraction of the ROI in use, in (0, 1].
        update_every: Statistics facts (sends, hold-outs, conversions) between two updates
            once ``min_sends`` is reached: the measurement moves with every fact, the ROI in
            use only this often, so one burst cannot take several steps.
    """

    min_sends: int = 200
    smoothing: float = 0.2
    max_step: float = 0.25
    update_every: int = 50

    def __post_init__(self) -> None:
        if self.min_sends < 1 or not 0 < self.smoothing <= 1 or not 0 < self.max_step <= 1 \
                or self.update_every < 1:
            raise ValueError(f"roi_feedback needs min_sends >= 1, update_every >= 1 and "
                             f"smoothing and max_step in (0, 1], got {self.min_sends}, "
                             f"{self.update_every}, {self.smoothing}, {self.max_step}")

    def to_list(self) -> list[float]:
        """[min_sends, smoothing, max_step, update_every]: how facts and state carry it."""
        return [self.min_sends, self.smoothing, self.max_step, self.update_every]

    @classmethod
    def from_list(cls, values: list[float]) -> RoiFeedback:
        """``to_list``'s values back."""
        min_sends, smoothing, max_step, update_every = values
        return cls(int(min_sends), float(smoothing), float(max_step), int(update_every))


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


# -- the loop: what the statistics publish and the engine holds ---------------------------------

#: the DefinitionUpdate ``published_by`` of measured ROI
PUBLISHER: Final = "nudgeflow campaign-stats"
#: ``roi:<unit>``: the ``:`` keeps these ids apart from every other kind's (no ``:`` allowed)
ROI_ID_PREFIX: Final = "roi:"
ROI_KEYS: Final = ("kind", "id", "version", "description", "unit", "roi", "revenue_per_send",
                   "sends")


def roi_definition_id(unit: str) -> str:
    """The definition id of a unit's measured ROI: ``roi:<campaign or journey id>``."""
    return ROI_ID_PREFIX + unit


@dataclass(frozen=True)
class Pricing:
    """What a send's ``assigned`` fact tells the statistics about its campaign's ROI.

    Attributes:
        typed: The campaign's typed ``expected_roi`` (USD per send): the rule's first start.
        feedback: The policy's ``roi_feedback`` when the send was decided (None: off).
    """

    typed: float
    feedback: RoiFeedback | None


@dataclass(frozen=True)
class MeasuredRoi:
    """A unit's ROI in use, as the statistics published it (DefinitionUpdate ``CAMPAIGN_ROI``).

    Attributes:
        id: ``roi:<unit>``; version: strictly increasing per id (see ``RoiTracker``).
        unit: The campaign id, or the journey id.
        value: The ROI in use (USD per send) the matrix takes instead of the typed one.
        revenue_per_send, sends: The measurement of the last update.
        description: One line for people (``nudgeflow defs list``).
        document: The body as published; ``source``: where it came from (``definition ...``).
    """

    id: str
    version: int
    unit: str
    value: float
    revenue_per_send: float
    sends: int
    description: str = ""
    document: Any = field(repr=False, compare=False, default=None)
    source: str = field(repr=False, compare=False, default="")
    enabled: bool = True

    def choice(self) -> RoiChoice:
        """The ROI the matrix uses, named ``measured: 42.10 per send over 512 sends``."""
        return RoiChoice(self.value, f"measured: {self.revenue_per_send:.2f} per send over "
                         f"{self.sends} sends", measured=True)


def measured_roi(unit: str, version: int, choice: RoiChoice, revenue_per_send: float,
                 sends: int) -> MeasuredRoi:
    """The definition publishing ``choice`` for ``unit`` (its document is the body)."""
    def_id = roi_definition_id(unit)
    description = f"ROI of {unit} measured by the closed loop ({choice.source})"
    document = {"kind": "campaign_roi", "id": def_id, "version": version,
                "description": description, "unit": unit, "roi": round(choice.value, 6),
                "revenue_per_send": round(revenue_per_send, 6), "sends": sends}
    return MeasuredRoi(def_id, version, unit, round(choice.value, 6),
                       round(revenue_per_send, 6), sends, description, document)


def compile_roi(compiler: Compiler, data: Any, update: Mapping[str, Any]) -> MeasuredRoi | None:
    """Validate a measured-ROI document; None after an error (recorded on ``compiler``)."""
    doc = compiler.mapping(data, "", "a measured ROI", ROI_KEYS, ROI_KEYS)
    if doc is None:
        return None
    before = len(compiler.errors)
    unit = doc.get("unit")
    if not (isinstance(unit, str) and unit):
        compiler.error("unit", f"unit must be a campaign or journey id, got {describe(unit)}")
    elif doc.get("id") != roi_definition_id(unit) or update.get("definition_id") != doc["id"]:
        compiler.error("id", f"id must be {roi_definition_id(unit)!r} (the unit's) and equal "
                       f"the update's definition_id, got {doc.get('id')!r} in "
                       f"{update.get('definition_id')!r}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) \
            or not 1 <= version <= MAX_VERSION or version != update.get("version"):
        compiler.error("version", f"version must be the update's, from 1 to {MAX_VERSION}, "
                       f"got {describe(version)}")
    for key in ("roi", "revenue_per_send"):
        number = doc.get(key)
        if isinstance(number, bool) or not isinstance(number, (int, float)) \
                or not math.isfinite(number) or number < 0:
            compiler.error(key, f"{key} must be a number >= 0 (USD per send), got "
                           f"{describe(number)}")
    sends = doc.get("sends")
    if isinstance(sends, bool) or not isinstance(sends, int) or sends < 1:
        compiler.error("sends", f"sends must be a whole number >= 1, got {describe(sends)}")
    if len(compiler.errors) > before:
        return None
    return MeasuredRoi(str(doc["id"]), int(doc["version"]), str(unit), float(doc["roi"]),
                       float(doc["revenue_per_send"]), int(doc["sends"]),
                       str(doc.get("description", "")), json.loads(json.dumps(doc)),
                       f"definition {doc['id']} v{doc['version']}")


def roi_to_update(roi: MeasuredRoi, published_at_ms: int) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate publishing a measured ROI (by ``PUBLISHER``)."""
    return definition_to_update(roi, ROI_KIND, published_at_ms, PUBLISHER)


def update_to_roi(update: Mapping[str, Any]) -> MeasuredRoi:
    """The measured ROI an UPSERT DefinitionUpdate carries, validated.

    Raises:
        InvalidDefinitions: bad envelope or body; errors name the definition.
    """
    file, document = update_document(update, ROI_KIND)
    compiler = Compiler(file)
    roi = compile_roi(compiler, document, update)
    return compiler.result(roi, update)


class RoiRegistry(VersionedRegistry[MeasuredRoi]):
    """The measured ROI of every unit that has one, versioned like every kind."""

    kind = ROI_KIND
    noun = "measured ROI"
    # by_unit's mapping and the definitions tuple it was built from (the registry replaces the
    # tuple on every change, so identity tells whether it is current)
    _units: Mapping[str, MeasuredRoi] = MappingProxyType({})
    _units_of: tuple[MeasuredRoi, ...] = ()

    def parse_update(self, update: Mapping[str, Any]) -> MeasuredRoi:
        """The measured ROI an UPSERT update carries (``update_to_roi``)."""
        return update_to_roi(update)

    def by_unit(self) -> Mapping[str, MeasuredRoi]:
        """Unit (campaign or journey id) -> its measured ROI."""
        definitions = self.definitions()
        if self._units_of is not definitions:
            self._units = MappingProxyType({d.unit: d for d in definitions})
            self._units_of = definitions
        return self._units


@dataclass
class RoiTracker:
    """The publishing side of the loop, one per unit, kept with its statistics.

    Attributes:
        typed, feedback: From the newest send's ``Pricing`` (None: no send seen yet).
        in_use: The ROI published last (None: nothing published yet).
        version: The version published last (0: none).
        since: Facts seen since the last publication.
    """

    typed: float | None = None
    feedback: RoiFeedback | None = None
    in_use: float | None = None
    version: int = 0
    since: int = 0

    def observe(self, unit: str, pricing: Pricing | None, sends: int, revenue: float,
                at_ms: int) -> MeasuredRoi | None:
        """Count one fact of the unit; the ROI to publish now, if an update is due.

        Args:
            unit: The campaign or journey id.
            pricing: The fact's (a send's), or None (hold-outs and conversions carry none).
            sends: The unit's treated sends, this fact included.
            revenue: The revenue credited to them (USD), this fact included.
            at_ms: The newest event time of the unit's facts.

        An update is due once ``sends`` reaches ``min_sends``, then every ``update_every``
        facts. Its version is one above the last and at least the event time in seconds, so
        a job that starts from empty state later in event time publishes above the versions an
        earlier run left on the (compacted) control topic.
        """
        if pricing is not None:
            self.typed, self.feedback = pricing.typed, pricing.feedback
        self.since += 1
        feedback = self.feedback
        if feedback is None or self.typed is None or sends < feedback.min_sends \
                or (self.in_use is not None and self.since < feedback.update_every):
            return None
        revenue_per_send = revenue / sends
        choice = update_roi(self.typed, self.in_use, revenue_per_send, sends, feedback)
        self.version = min(MAX_VERSION, max(self.version + 1, at_ms // 1000))
        self.in_use, self.since = choice.value, 0
        return measured_roi(unit, self.version, choice, revenue_per_send, sends)

    def to_doc(self) -> dict[str, Any]:
        """The tracker as JSON-able data (kept in the statistics' keyed state)."""
        return {"typed": self.typed,
                "feedback": self.feedback.to_list() if self.feedback else None,
                "in_use": self.in_use, "version": self.version, "since": self.since}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any] | None) -> RoiTracker:
        """``to_doc``'s data back (None, from state written before the loop: a new tracker)."""
        if not doc:
            return cls()
        feedback = doc.get("feedback")
        return cls(doc.get("typed"), RoiFeedback.from_list(feedback) if feedback else None,
                   doc.get("in_use"), int(doc.get("version", 0)), int(doc.get("since", 0)))
