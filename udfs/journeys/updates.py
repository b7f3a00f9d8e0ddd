"""Journeys on the control topic: DefinitionUpdates and the registry.

Inputs: compiled ``Journey`` objects and DefinitionUpdate dicts of kind JOURNEY. Outputs: UPSERT
records publishing them, the validated journey an UPSERT carries, and ``JourneyRegistry`` (the
journeys in force, versioned like every kind: see ``udfs.definitions.versioning``). State: the
registry's, kept by the engine in Flink broadcast state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udfs.definitions.envelope import JOURNEY_KIND, definition_to_update, update_document
from udfs.definitions.versioning import VersionedRegistry
from udfs.journeys.compiler import JourneyCompiler
from udfs.journeys.grammar import Journey


def journey_to_update(journey: Journey, published_at_ms: int,
                      published_by: str | None = None) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate publishing a journey."""
    return definition_to_update(journey, JOURNEY_KIND, published_at_ms, published_by)


def update_to_journey(update: Mapping[str, Any]) -> Journey:
    """The journey an UPSERT DefinitionUpdate carries, validated.

    Raises:
        DefinitionError: bad envelope or body; the file of each error names the definition.
    """
    file, document = update_document(update, JOURNEY_KIND)
    compiler = JourneyCompiler(file)
    return compiler.result(compiler.journey_document(document, "", file), update)


class JourneyRegistry(VersionedRegistry[Journey]):
    """The journeys in force by id, versioned like every kind of definition."""

    kind = JOURNEY_KIND
    noun = "journey"

    def parse_update(self, update: Mapping[str, Any]) -> Journey:
        """The journey an UPSERT update carries (``update_to_journey``)."""
        return update_to_journey(update)
