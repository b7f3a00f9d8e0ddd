"""The hub of all kinds: one versioned registry per kind, and where an update goes.

Inputs: DefinitionUpdate dicts of any kind (files at job start, the control topic at runtime).
Outputs: the ``RegistryChange`` of each update, and what the engine reads per step: the
campaigns and journeys in force, whether any fires on churn, the version of every segment, the
currency rates, the measured ROI of campaigns. State: the registries (segments, campaigns,
journeys, the priority policy, the rate table, measured ROI); the engine rebuilds them from
broadcast state with ``from_updates``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping
from types import MappingProxyType
from typing import Any, TypeVar

from udfs.attribution.roi import MeasuredRoi, RoiRegistry
from udfs.campaigns.grammar import Campaign
from udfs.campaigns.updates import CampaignRegistry, PolicyRegistry
from udfs.currency.rates import RatesRegistry
from udfs.definitions.envelope import (
    CAMPAIGN_KIND,
    JOURNEY_KIND,
    POLICY_KIND,
    RATES_KIND,
    ROI_KIND,
    SEGMENT_KIND,
)
from udfs.definitions.versioning import RegistryChange, VersionedRegistry
from udfs.journeys.grammar import Condition, Journey
from udfs.journeys.updates import JourneyRegistry
from udfs.segments.updates import SegmentRegistry

T = TypeVar("T")


class Registries:
    """The definitions in force, one registry per kind; what the engine keeps and applies.

    ``apply`` routes a DefinitionUpdate to the registry of its kind (SEGMENT, CAMPAIGN,
    JOURNEY, PRIORITY_WEIGHTS, CURRENCY_RATES, CAMPAIGN_ROI); an update of any other kind is
    IGNORED.
    """

    def __init__(self) -> None:
        self.segments = SegmentRegistry()
        self.campaigns = CampaignRegistry()
        self.journeys = JourneyRegistry()
        self.policies = PolicyRegistry()
        self.rates = RatesRegistry()
        self.roi = RoiRegistry()
        self._derived: tuple[bool, Mapping[str, int], bool, int] | None = None
        self._built: dict[Callable[[Registries], Any], Any] = {}

    @classmethod
    def from_updates(cls, updates: Iterable[Mapping[str, Any]]) -> Registries:
        """Registries with the updates applied in order (bad ones are skipped)."""
        registries = cls()
        for update in updates:
            registries.apply(update)
        return registries

    def apply(self, update: Mapping[str, Any]) -> RegistryChange:
        """Apply one update to the registry of its kind (see ``VersionedRegistry.apply``)."""
        by_kind: dict[str, VersionedRegistry[Any]] = {
            SEGMENT_KIND: self.segments, CAMPAIGN_KIND: self.campaigns,
            JOURNEY_KIND: self.journeys, POLICY_KIND: self.policies, RATES_KIND: self.rates,
            ROI_KIND: self.roi,
        }
        registry = by_kind.get(str(update.get("kind")), self.segments)
        change = registry.apply(update)
        if change.changed and registry is not self.roi:  # measured ROI changes no evaluation
            self._derived = None
            self._built.clear()
        return change

    def updates(self) -> list[dict[str, Any]]:
        """Every accepted update (tombstones included), by kind then id."""
        return [*self.segments.updates(), *self.campaigns.updates(), *self.journeys.updates(),
                *self.policies.updates(), *self.rates.updates(), *self.roi.updates()]

    def campaign_map(self) -> Mapping[str, Campaign]:
        """The campaigns in force by id."""
        return self.campaigns.by_id()

    def measured_roi(self) -> Mapping[str, MeasuredRoi]:
        """Campaign or journey id -> the ROI the closed loop measured for it."""
        return self.roi.by_unit()

    def journey_map(self) -> Mapping[str, Journey]:
        """The journeys in force by id."""
        return self.journeys.by_id()

    def uses_churn(self) -> bool:
        """Whether a campaign fires, or a journey starts, on a churn-score crossing.

        The campaign state is then read per step (it holds the score of the last crossing).
        """
        return self._derive()[0]

    def segment_versions(self) -> Mapping[str, int]:
        """The version of every segment in force, by id."""
        return self._derive()[1]

    def reads_churn(self) -> bool:
        """Whether any segment, campaign or journey reads the churn score.

        A user's evaluation then changes with time alone; a journey reads it when it starts on a
        churn crossing or tests ``churn_score`` in a condition (a wait's ``until`` included).
        """
        return self._derive()[2]

    def fingerprint(self) -> int:
        """A 63-bit fingerprint of every definition's id, version and action.

        Every kind but measured ROI, which moves often and changes no segment or trigger
        condition, only priorities when a candidate competes.

        Equal fingerprints: the same definitions. The engine keeps, per user, the fingerprint
        it last evaluated the user against, so an idle user's recheck can tell cheaply whether
        anything changed since.
        """
        return self._derive()[3]

    def derived(self, build: Callable[[Registries], T]) -> T:
        """``build(self)``, computed once per definition change (measured ROI aside) and kept.

        For what a module derives from the definitions and reads at every step (the engine's
        view of what can fire); ``build`` must read nothing but the definitions.
        """
        built = self._built.get(build)
        if built is None:
            built = self._built[build] = build(self)
        return built

    def lacking(self, requires: Mapping[str, int]) -> list[str]:
        """Which of ``requires`` (definition id -> version) are not in force yet, as ``id vN``.

        A definition is in force at a version when its latest update (a deletion included)
        has that version or a later one.
        """
        latest: dict[str, int] = {}
        for update in self.updates():
            name, version = str(update["definition_id"]), int(update["version"])
            latest[name] = max(version, latest.get(name, version))
        return [f"{name} v{version}" for name, version in sorted(requires.items())
                if latest.get(name, -1) < version]

    def _derive(self) -> tuple[bool, Mapping[str, int], bool, int]:
        # read per engine step, changed only by a definition update: computed once per change
        if self._derived is None:
            journeys = self.journey_map().values()
            churn_trigger = any(c.trigger.churn_crosses is not None
                                for c in self.campaign_map().values()) \
                or any(j.entry.trigger.churn_crosses is not None for j in journeys)
            churn_condition = any(_tests_churn(c) for j in journeys for c in j.conditions())
            identity = "\n".join(sorted(
                f"{u['kind']}|{u['definition_id']}|{u['version']}|{u['action']}"
                for u in self.updates() if u["kind"] != ROI_KIND))
            digest = hashlib.blake2b(identity.encode(), digest_size=8).digest()
            self._derived = (
                churn_trigger,
                MappingProxyType({s.id: s.version for s in self.segments.definitions()}),
                churn_trigger or churn_condition
                or any(s.uses_churn_score for s in self.segments.definitions()),
                int.from_bytes(digest, "little") >> 1,
            )
        return self._derived


def _tests_churn(condition: Condition) -> bool:
    """Whether a journey condition, or one inside it, tests the churn score."""
    return condition.churn_above is not None or condition.churn_below is not None \
        or any(_tests_churn(c) for c in (*condition.all_of, *condition.any_of))
