"""The DefinitionUpdate envelope: how a definition of any kind travels on the control topic.

Inputs: validated definitions (anything with ``id``, ``version`` and ``document``) and
DefinitionUpdate dicts (shaped like ``schemas/DefinitionUpdate.avsc``). Outputs: UPSERT and
DELETE records (body = canonical JSON, checksum = its SHA-256), the checked body of an UPSERT,
and ``DefinitionError`` items for a bad envelope or a body whose id or version differs from its
envelope's. State: none.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping
from typing import Any

from udfs.definitions.diagnostics import DefinitionError, InvalidDefinitions, describe

#: DefinitionKind symbols of the kinds nudgeflow runs (every symbol of the Avro enum)
SEGMENT_KIND = "SEGMENT"
CAMPAIGN_KIND = "CAMPAIGN"
JOURNEY_KIND = "JOURNEY"
POLICY_KIND = "PRIORITY_WEIGHTS"
RATES_KIND = "CURRENCY_RATES"
#: a campaign's measured ROI, published by the job itself (``udfs.attribution.roi``)
ROI_KIND = "CAMPAIGN_ROI"

UPSERT = "UPSERT"
DELETE = "DELETE"


def checksum(body: str) -> str:
    """Lower-case hex SHA-256 of the UTF-8 bytes of a DefinitionUpdate body."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def canonical_body(document: Mapping[str, Any]) -> str:
    """The DefinitionUpdate body of a document: JSON with sorted keys, no spaces, UTF-8."""
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def definition_to_update(
    definition: Any, kind: str, published_at_ms: int, published_by: str | None = None
) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate record publishing a definition (body = canonical JSON).

    Args:
        definition: A validated definition with ``id``, ``version`` and ``document``
            (a ``Segment``, ``Campaign``, ``Journey``, ``PriorityPolicy``, ``CurrencyRates``
            or ``MeasuredRoi``).
        kind: Its DefinitionKind symbol (SEGMENT, CAMPAIGN, JOURNEY, PRIORITY_WEIGHTS,
            CURRENCY_RATES, CAMPAIGN_ROI).
        published_at_ms: Publication time, epoch ms.
        published_by: Who or what publishes it, or None.

    Returns:
        A dict shaped like the DefinitionUpdate Avro record.
    """
    body = canonical_body(definition.document)
    return {
        "definition_id": definition.id,
        "kind": kind,
        "action": UPSERT,
        "version": definition.version,
        "body": body,
        "checksum": checksum(body),
        "published_at": published_at_ms,
        "published_by": published_by,
    }


def delete_update(
    definition_id: str, version: int, published_at_ms: int, published_by: str | None = None,
    kind: str = SEGMENT_KIND,
) -> dict[str, Any]:
    """The DELETE DefinitionUpdate record for a definition (a DELETE takes a new version too)."""
    return {
        "definition_id": definition_id,
        "kind": kind,
        "action": DELETE,
        "version": version,
        "body": "",
        "checksum": checksum(""),
        "published_at": published_at_ms,
        "published_by": published_by,
    }


def update_label(update: Mapping[str, Any]) -> str:
    """``definition <id> v<version>``: what errors about an update name as their file."""
    return f"definition {update.get('definition_id')!s} v{update.get('version')!s}"


def envelope_errors(update: Mapping[str, Any]) -> list[DefinitionError]:
    """Problems with a DefinitionUpdate's fields other than the body's content."""
    file = update_label(update)
    errors = []
    def_id = update.get("definition_id")
    if not isinstance(def_id, str) or not def_id:
        errors.append(DefinitionError(file, "definition_id", "definition_id must be a non-empty "
                                      f"string, got {describe(def_id)}"))
    version = update.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        errors.append(DefinitionError(file, "version", "version must be a whole number >= 1, "
                                      f"got {describe(version)}"))
    if update.get("action") not in (UPSERT, DELETE):
        errors.append(DefinitionError(file, "action", f"unknown action "
                                      f"{update.get('action')!r}: allowed: {UPSERT}, {DELETE}"))
    body = update.get("body")
    if not isinstance(body, str):
        errors.append(DefinitionError(file, "body", f"body must be a string, got "
                                      f"{describe(body)}"))
    elif checksum(body) != update.get("checksum"):
        errors.append(DefinitionError(file, "checksum", f"checksum {update.get('checksum')!r} "
                                      "does not match the SHA-256 of body "
                                      f"({checksum(body)}); the update is corrupt or was "
                                      "edited after publishing"))
    return errors


def update_document(update: Mapping[str, Any], kind: str) -> tuple[str, Any]:
    """The JSON document an UPSERT DefinitionUpdate of ``kind`` carries, envelope checked.

    Returns:
        (a label naming the definition id and version, for errors; the parsed body).

    Raises:
        DefinitionError: wrong kind or action, checksum mismatch, body not JSON.
    """
    file = update_label(update)
    errors = envelope_errors(update)
    if update.get("kind") != kind:
        errors.append(DefinitionError(file, "kind", f"kind is {update.get('kind')!r}, not "
                                      f"{kind}"))
    if update.get("action") == DELETE:
        errors.append(DefinitionError(file, "action", "a DELETE carries no definition"))
    if errors:
        raise InvalidDefinitions(errors)
    try:
        return file, json.loads(update["body"])
    except ValueError as exc:
        raise DefinitionError(file, "body", f"body is not JSON: {exc}") from None


def check_identity(definition: Any, update: Mapping[str, Any],
                   error: Callable[[str, str], None]) -> None:
    """Report a body whose id or version differs from its update's envelope.

    Args:
        definition: The definition compiled from the update's body.
        update: The DefinitionUpdate it came from.
        error: Records an error at a document path (``Compiler.error``).
    """
    if definition.id != update["definition_id"]:
        error("id", f"id {definition.id!r} differs from the update's definition_id "
                    f"{update['definition_id']!r}")
    if definition.version != update["version"]:
        error("version", f"version {definition.version} differs from the update's "
                         f"version {update['version']}")
