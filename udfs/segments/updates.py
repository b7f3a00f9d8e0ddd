"""Segments on the control topic: Segment <-> DefinitionUpdate, and the segment registry.

Inputs: compiled ``Segment`` objects and DefinitionUpdate dicts of kind SEGMENT. Outputs: UPSERT
records publishing a segment, the validated segment an UPSERT carries, and ``SegmentRegistry``
(the segments in force, versioned like every kind: see ``udfs.definitions.versioning``).
State: the registry's, kept by the engine in Flink broadcast state.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from udfs.definitions.envelope import SEGMENT_KIND, definition_to_update, update_document
from udfs.definitions.versioning import VersionedRegistry
from udfs.segments.compiler import SegmentCompiler
from udfs.segments.conditions import Segment


def segment_to_update(
    segment: Segment, published_at_ms: int, published_by: str | None = None
) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate record publishing a segment (body = canonical JSON)."""
    return definition_to_update(segment, SEGMENT_KIND, published_at_ms, published_by)


def update_to_segment(update: Mapping[str, Any]) -> Segment:
    """The segment an UPSERT DefinitionUpdate carries, validated.

    Args:
        update: A dict shaped like the DefinitionUpdate record, kind SEGMENT, action UPSERT.

    Returns:
        The compiled segment; its ``source`` is ``definition <id> v<version>``.

    Raises:
        DefinitionError: The envelope or body is bad (wrong kind or action, checksum mismatch,
            not JSON, invalid segment, id or version differing from the envelope's); the file
            of each error names the definition id and version.
    """
    file, document = update_document(update, SEGMENT_KIND)
    compiler = SegmentCompiler(file)
    return compiler.result(compiler.segment_document(document, "", file), update)


class SegmentRegistry(VersionedRegistry[Segment]):
    """The segments in force by id, versioned; what the engine's broadcast state holds."""

    kind = SEGMENT_KIND
    noun = "segment"

    def parse_update(self, update: Mapping[str, Any]) -> Segment:
        """The segment an UPSERT update carries (``update_to_segment``)."""
        return update_to_segment(update)
