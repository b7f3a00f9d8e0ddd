"""The hub of all kinds: one versioned registry per kind, and where an update goes.

Inputs: DefinitionUpdate dicts of any kind (files at job start, the control topic at runtime).
Outputs: the ``RegistryChange`` of each update, and what the engine reads per step: the
campaigns in force, whether any fires on churn, the version of every segment. State: the
registries (segments, campaigns, the priority policy); the engine rebuilds them from broadcast
state with ``from_updates``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import MappingProxyType
from typing import Any

from udfs.campaigns.grammar import Campaign
from udfs.campaigns.updates import CampaignRegistry, PolicyRegistry
from udfs.definitions.envelope import CAMPAIGN_KIND, POLICY_KIND, SEGMENT_KIND
from udfs.definitions.versioning import RegistryChange, VersionedRegistry
from udfs.segments.updates import SegmentRegistry


class Registries:
    """The definitions in force, one registry per kind; what the engine keeps and applies.

    ``apply`` routes a DefinitionUpdate to the registry of its kind; a kind nudgeflow does not
    run yet (JOURNEY) is IGNORED.
    """

    def __init__(self) -> None:
        self.segments = SegmentRegistry()
        self.campaigns = CampaignRegistry()
        self.policies = PolicyRegistry()
        self._derived: tuple[bool, Mapping[str, int]] | None = None

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
            POLICY_KIND: self.policies,
        }
        registry = by_kind.get(str(update.get("kind")), self.segments)
        change = registry.apply(update)
        if change.changed:
            self._derived = None
        return change

    def updates(self) -> list[dict[str, Any]]:
        """Every accepted update (tombstones included), by kind then id."""
        return [*self.segments.updates(), *self.campaigns.updates(), *self.policies.updates()]

    def campaign_map(self) -> Mapping[str, Campaign]:
        """The campaigns in force by id."""
        return self.campaigns.by_id()

    def uses_churn(self) -> bool:
        """Whether a campaign fires on a churn-score crossing (its state is then read per step)."""
        return self._derive()[0]

    def segment_versions(self) -> Mapping[str, int]:
        """The version of every segment in force, by id."""
        return self._derive()[1]

    def _derive(self) -> tuple[bool, Mapping[str, int]]:
        # read per engine step, changed only by a definition update: computed once per change
        if self._derived is None:
            self._derived = (
                any(c.trigger.churn_crosses is not None for c in self.campaign_map().values()),
                MappingProxyType({s.id: s.version for s in self.segments.definitions()}),
            )
        return self._derived
