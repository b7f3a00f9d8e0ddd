"""The versioned registry: the definitions of one kind in force, by id.

Inputs: validated definitions (from files) and DefinitionUpdate dicts (from the control topic).
Outputs: ``RegistryChange`` (what an update did: ADDED, REPLACED, DELETED, STALE, REJECTED,
IGNORED). State: per id the accepted update (a DELETE is kept as a tombstone) and the compiled
definition; this is what the engine keeps in (and rebuilds from) Flink broadcast state.

Each kind is a thin subclass of ``VersionedRegistry`` that names its kind and how an update
becomes a definition (``udfs.segments.updates.SegmentRegistry``,
``udfs.campaigns.updates.CampaignRegistry`` and ``PolicyRegistry``,
``udfs.journeys.updates.JourneyRegistry``, ``udfs.currency.rates.RatesRegistry``).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import Enum
from types import MappingProxyType
from typing import Any, ClassVar, Generic, Protocol, Self, TypeVar

from mypy_extensions import mypyc_attr

from udfs.definitions.diagnostics import DefinitionError
from udfs.definitions.envelope import DELETE, definition_to_update, envelope_errors


class Definition(Protocol):
    """What every kind of definition has (``Segment``, ``Campaign``, ``PriorityPolicy``)."""

    @property
    def id(self) -> str:
        """Unique id: the DefinitionUpdate ``definition_id``."""
        ...

    @property
    def version(self) -> int:
        """Strictly increasing per id."""
        ...

    @property
    def document(self) -> dict[str, Any]:
        """The document as written, published as the DefinitionUpdate body."""
        ...

    @property
    def source(self) -> str:
        """Where it came from: a file path or ``definition <id> v<version>``."""
        ...


D = TypeVar("D", bound=Definition)


class ChangeOutcome(str, Enum):
    """What ``VersionedRegistry.apply`` did with an update."""

    ADDED = "ADDED"  # a new id (or one deleted before) now has a definition
    REPLACED = "REPLACED"  # a newer version replaced the held one
    DELETED = "DELETED"  # the definition is gone (a tombstone version is kept)
    STALE = "STALE"  # version not greater than the held one: ignored
    REJECTED = "REJECTED"  # bad update (checksum, body, envelope): ignored, see errors
    IGNORED = "IGNORED"  # another kind of definition: not this registry's business


@dataclass(frozen=True)
class RegistryChange:
    """The outcome of one update.

    Attributes:
        definition_id: The update's definition id.
        outcome: What happened.
        version: The update's version.
        previous_version: The version held before (a tombstone's too), or None.
        definition: The new definition for ADDED and REPLACED, else None.
        message: One human-readable line for logs.
        errors: Why it was REJECTED.
    """

    definition_id: str
    outcome: ChangeOutcome
    version: int | None
    previous_version: int | None
    definition: Any
    message: str
    errors: tuple[DefinitionError, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the registry's content changed."""
        return self.outcome in (ChangeOutcome.ADDED, ChangeOutcome.REPLACED,
                                ChangeOutcome.DELETED)


# compiled (``udfs.native``), its accessors are native calls from the engine's step (~5 per
# input); a registry defined outside the compiled modules (a test's, say) may still subclass it
@mypyc_attr(allow_interpreted_subclasses=True)
class VersionedRegistry(Generic[D]):
    """The current definitions of one kind by id, versioned; what the broadcast state holds.

    Versions are per id and only go up: an update whose version is not greater than the one
    held (including the version of a DELETE, kept as a tombstone) is STALE and ignored, so
    updates may be replayed or arrive in any order and the result is the same. ``updates()`` is
    what to store in broadcast state; ``from_updates`` rebuilds from it.

    Subclasses set ``kind`` (the DefinitionKind symbol), ``noun`` (for messages) and
    ``parse_update`` (the UPSERT update -> the validated definition, raising
    ``DefinitionError``).
    """

    kind: ClassVar[str]
    noun: ClassVar[str]

    def parse_update(self, update: Mapping[str, Any]) -> D:
        """The definition an UPSERT update of this kind carries (raises ``DefinitionError``)."""
        raise NotImplementedError

    def __init__(self, definitions: Iterable[D] = ()) -> None:
        self._definitions: dict[str, D] = {}
        self._updates: dict[str, dict[str, Any]] = {}
        self._sorted: tuple[D, ...] = ()
        self._by_id: Mapping[str, D] = MappingProxyType({})
        for definition in definitions:
            change = self.upsert(definition, 0,
                                 f"file:{definition.source}" if definition.source else None)
            if change.outcome is ChangeOutcome.STALE:
                raise ValueError(f"{self.noun} {definition.id!r} given twice: {change.message}")

    @classmethod
    def from_updates(cls, updates: Iterable[Mapping[str, Any]]) -> Self:
        """A registry with the updates applied in order (bad ones are skipped)."""
        registry = cls()
        for update in updates:
            registry.apply(update)
        return registry

    def __len__(self) -> int:
        return len(self._definitions)

    def __contains__(self, definition_id: object) -> bool:
        return definition_id in self._definitions

    def get(self, definition_id: str) -> D | None:
        """The current definition, or None (unknown or deleted)."""
        return self._definitions.get(definition_id)

    def definitions(self) -> tuple[D, ...]:
        """All current definitions sorted by id (the same tuple until something changes)."""
        return self._sorted

    def by_id(self) -> Mapping[str, D]:
        """All current definitions as a read-only mapping id -> definition, in id order."""
        return self._by_id

    def version_of(self, definition_id: str) -> int | None:
        """The version held for an id, including a DELETE's; None if never seen."""
        update = self._updates.get(definition_id)
        return None if update is None else int(update["version"])

    def deleted_version(self, definition_id: str) -> int | None:
        """The DELETE version if the id is deleted (the version members EXIT with), else None."""
        update = self._updates.get(definition_id)
        return int(update["version"]) if update and update["action"] == DELETE else None

    def updates(self) -> tuple[dict[str, Any], ...]:
        """The accepted update per id (DELETEs included), sorted by id: the broadcast state."""
        return tuple(dict(self._updates[k]) for k in sorted(self._updates))

    def upsert(
        self, definition: D, published_at_ms: int = 0, published_by: str | None = None
    ) -> RegistryChange:
        """Add or replace a validated definition (e.g. from a file) under the version rule."""
        update = definition_to_update(definition, self.kind, published_at_ms, published_by)
        return self._accept(update) or self._store(update, definition)

    def apply(self, update: Mapping[str, Any]) -> RegistryChange:
        """Apply one DefinitionUpdate (a dict shaped like the Avro record).

        Order of checks: kind (another kind is IGNORED), envelope and checksum (REJECTED),
        version (STALE unless greater than the held one), then for UPSERT the body (REJECTED if
        invalid). A rejected or stale update leaves the registry unchanged.

        Returns:
            What happened; never raises for a bad update.
        """
        def_id = str(update.get("definition_id"))
        version = update.get("version")
        version_int = version if isinstance(version, int) and not isinstance(version, bool) \
            else None
        if update.get("kind") != self.kind:
            return RegistryChange(def_id, ChangeOutcome.IGNORED, version_int,
                                  self.version_of(def_id), None,
                                  f"{def_id}: kind {update.get('kind')!r} is not a {self.noun}")
        errors = envelope_errors(update)
        if errors:
            return self._rejected(def_id, version_int, errors)
        stale = self._accept(update)
        if stale is not None:
            return stale
        if update["action"] == DELETE:
            return self._store(dict(update), None)
        try:
            definition = self.parse_update(update)
        except DefinitionError as exc:
            return self._rejected(def_id, version_int, list(exc.errors))
        return self._store(dict(update), definition)

    def _rejected(self, def_id: str, version: int | None,
                  errors: list[DefinitionError]) -> RegistryChange:
        return RegistryChange(def_id, ChangeOutcome.REJECTED, version, self.version_of(def_id),
                              None, f"{def_id} v{version}: rejected: {errors[0].message}",
                              tuple(errors))

    def _accept(self, update: Mapping[str, Any]) -> RegistryChange | None:
        """None when the update's version is newer than the held one, else the STALE change."""
        def_id = str(update["definition_id"])
        version = int(update["version"])
        held = self._updates.get(def_id)
        if held is None or version > int(held["version"]):
            return None
        if version == int(held["version"]):
            detail = ("duplicate delivery" if held["checksum"] == update["checksum"] else
                      "conflict: a different definition with this version is already held; "
                      "publish a new version")
        else:
            detail = f"older than the held v{held['version']}"
        return RegistryChange(def_id, ChangeOutcome.STALE, version, int(held["version"]),
                              None, f"{def_id} v{version} ignored: {detail}")

    def _store(self, update: dict[str, Any], definition: D | None) -> RegistryChange:
        def_id = str(update["definition_id"])
        version = int(update["version"])
        previous = self.version_of(def_id)
        existed = def_id in self._definitions
        self._updates[def_id] = update
        if definition is None:
            self._definitions.pop(def_id, None)
            outcome = ChangeOutcome.DELETED
            message = (f"{def_id} deleted in v{version}" if existed else
                       f"{def_id} v{version}: DELETE of an unknown {self.noun}; tombstone kept")
        else:
            self._definitions[def_id] = definition
            outcome = ChangeOutcome.REPLACED if existed else ChangeOutcome.ADDED
            message = (f"{def_id} v{previous} replaced by v{version}" if existed else
                       f"{def_id} v{version} added")
        self._sorted = tuple(self._definitions[k] for k in sorted(self._definitions))
        self._by_id = MappingProxyType({d.id: d for d in self._sorted})
        return RegistryChange(def_id, outcome, version, previous, definition, message)
