"""Campaigns and the priority policy on the control topic: DefinitionUpdates and registries.

Inputs: compiled ``Campaign`` and ``PriorityPolicy`` objects and DefinitionUpdate dicts of kind
CAMPAIGN or PRIORITY_WEIGHTS. Outputs: UPSERT records publishing them, the validated definition
an UPSERT carries, and ``CampaignRegistry`` / ``PolicyRegistry`` (the definitions in force,
versioned like every kind: see ``udfs.definitions.versioning``). State: the registries', kept by
the engine in Flink broadcast state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udfs.campaigns.compiler import CampaignCompiler
from udfs.campaigns.grammar import POLICY_ID, Campaign, PriorityPolicy
from udfs.definitions.envelope import (
    CAMPAIGN_KIND,
    POLICY_KIND,
    definition_to_update,
    update_document,
)
from udfs.definitions.versioning import VersionedRegistry


def campaign_to_update(campaign: Campaign, published_at_ms: int,
                       published_by: str | None = None) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate publishing a campaign."""
    return definition_to_update(campaign, CAMPAIGN_KIND, published_at_ms, published_by)


def policy_to_update(policy: PriorityPolicy, published_at_ms: int,
                     published_by: str | None = None) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate publishing the priority policy."""
    return definition_to_update(policy, POLICY_KIND, published_at_ms, published_by)


def update_to_campaign(update: Mapping[str, Any]) -> Campaign:
    """The campaign an UPSERT DefinitionUpdate carries, validated.

    Raises:
        DefinitionError: bad envelope or body; the file of each error names the definition.
    """
    file, document = update_document(update, CAMPAIGN_KIND)
    compiler = CampaignCompiler(file)
    return compiler.result(compiler.campaign_document(document, "", file), update)


def update_to_policy(update: Mapping[str, Any]) -> PriorityPolicy:
    """The priority policy an UPSERT DefinitionUpdate carries, validated.

    Raises:
        DefinitionError: bad envelope or body; the file of each error names the definition.
    """
    file, document = update_document(update, POLICY_KIND)
    compiler = CampaignCompiler(file)
    return compiler.result(compiler.policy_document(document, "", file), update)


class CampaignRegistry(VersionedRegistry[Campaign]):
    """The campaigns in force by id, versioned like every kind of definition."""

    kind = CAMPAIGN_KIND
    noun = "campaign"

    def parse_update(self, update: Mapping[str, Any]) -> Campaign:
        """The campaign an UPSERT update carries (``update_to_campaign``)."""
        return update_to_campaign(update)


class PolicyRegistry(VersionedRegistry[PriorityPolicy]):
    """The priority policy in force (one id, ``POLICY_ID``), versioned like every kind."""

    kind = POLICY_KIND
    noun = "priority policy"

    def parse_update(self, update: Mapping[str, Any]) -> PriorityPolicy:
        """The policy an UPSERT update carries (``update_to_policy``)."""
        return update_to_policy(update)

    def policy(self) -> PriorityPolicy | None:
        """The policy in force, or None (no campaign is sent without one)."""
        policy = self.get(POLICY_ID)
        return policy if isinstance(policy, PriorityPolicy) else None
