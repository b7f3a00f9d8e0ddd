"""The words definitions may use, read from the Avro contracts and the feature spec.

Inputs: ``schemas/ClickEvent.avsc`` and ``schemas/UserMetadata.avsc`` (read once) and
``udfs.features.FEATURE_NAMES`` (imported lazily). Outputs: the event types and sources, the
metadata fields a condition may read (with the operators each allows), and the feature names.
State: none (the schema reads are cached).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

from udfs.definitions.comparisons import BOOLEAN_OPS, EQUALITY_OPS, NUMERIC_OPS, TIME_OPS
from udfs.features.spec import FEATURE_NAMES

FEATURE_WINDOWS = ("1h", "24h", "7d", "30d")


def _read_schema(name: str) -> dict[str, Any]:
    text = files("schemas").joinpath(f"{name}.avsc").read_text(encoding="utf-8")
    return dict(json.loads(text))


#: the schemas the vocabulary is derived from, read when this module is imported, not when
#: first asked: in thread mode a TaskManager keeps a job's imported modules for later jobs of
#: the same build, and a module reads its package files from the directory the first job was
#: extracted to, which Flink deletes when that job ends (a later job that first asked then
#: failed in its engine's open() with FileNotFoundError, seen after a TaskManager kill)
_SCHEMAS: dict[str, dict[str, Any]] = {name: _read_schema(name)
                                       for name in ("ClickEvent", "UserMetadata")}


def _enum_symbols(schema: dict[str, Any], field_name: str) -> tuple[str, ...]:
    for entry in schema["fields"]:
        if entry["name"] == field_name:
            return tuple(entry["type"]["symbols"])
    raise KeyError(field_name)


@lru_cache(maxsize=None)
def event_types() -> tuple[str, ...]:
    """The ClickEvent ``EventType`` symbols (read once from ``schemas/ClickEvent.avsc``)."""
    return _enum_symbols(_SCHEMAS["ClickEvent"], "event_type")


@lru_cache(maxsize=None)
def event_sources() -> tuple[str, ...]:
    """The ClickEvent ``EventSource`` symbols (WEB, MOBILE, OFFLINE, UNKNOWN)."""
    return _enum_symbols(_SCHEMAS["ClickEvent"], "source")


@dataclass(frozen=True, slots=True)
class MetadataField:
    """A UserMetadata field a ``metadata`` condition may read, and how it may be compared."""

    name: str
    kind: str  # string | enum | time | number | boolean
    symbols: tuple[str, ...] = ()

    @property
    def ops(self) -> tuple[str, ...]:
        """The operators allowed on this field."""
        return {
            "string": EQUALITY_OPS,
            "enum": EQUALITY_OPS,
            "time": TIME_OPS,
            "number": NUMERIC_OPS,
            "boolean": BOOLEAN_OPS,
        }[self.kind]


@lru_cache(maxsize=None)
def metadata_fields() -> dict[str, MetadataField]:
    """The UserMetadata fields by dotted name (``opt_ins.email``), derived from its schema."""
    out: dict[str, MetadataField] = {}

    def add(prefix: str, fields_: list[dict[str, Any]]) -> None:
        for entry in fields_:
            name, kind = prefix + entry["name"], entry["type"]
            if isinstance(kind, dict) and kind.get("type") == "record":
                add(name + ".", kind["fields"])
            elif isinstance(kind, dict) and kind.get("type") == "enum":
                out[name] = MetadataField(name, "enum", tuple(kind["symbols"]))
            elif isinstance(kind, dict) and kind.get("logicalType") == "timestamp-millis":
                out[name] = MetadataField(name, "time")
            elif kind in ("double", "float", "int", "long"):
                out[name] = MetadataField(name, "number")
            elif kind == "boolean":
                out[name] = MetadataField(name, "boolean")
            elif kind == "string":
                out[name] = MetadataField(name, "string")

    add("", _SCHEMAS["UserMetadata"]["fields"])
    return out


def known_feature_names() -> tuple[frozenset[str], str]:
    """The feature names conditions may use (``udfs.features.spec.FEATURE_NAMES``), and that name.

    Imported with this module, not looked up when first asked: in thread mode a TaskManager
    keeps a job's modules for later jobs, and a lookup that could fail (it once fell back to a
    fixed list) would validate definitions against another list than the engine computes.
    """
    return _FEATURE_NAMES, "udfs.features.FEATURE_NAMES"


_FEATURE_NAMES = frozenset(FEATURE_NAMES)
