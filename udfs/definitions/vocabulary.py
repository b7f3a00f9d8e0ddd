"""The words definitions may use, read from the Avro contracts and the feature spec.

Inputs: ``schemas/ClickEvent.avsc`` and ``schemas/UserMetadata.avsc`` (read once) and
``udfs.features.FEATURE_NAMES`` (imported lazily). Outputs: the event types and sources, the
metadata fields a condition may read (with the operators each allows), and the feature names.
State: none (the schema reads are cached).
"""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass
from functools import lru_cache
from importlib.resources import files
from typing import Any

from udfs.definitions.comparisons import BOOLEAN_OPS, EQUALITY_OPS, NUMERIC_OPS, TIME_OPS

#: Feature names documented by the features issue; used only when ``udfs.features`` cannot be
#: imported (then ``events_<event type lower|total>_<window>`` is accepted as well).
FALLBACK_FEATURE_NAMES = (
    "events_total_24h", "sessions_7d", "seconds_since_last_event", "seconds_since_last_purchase",
    "cart_items", "cart_value", "orders_30d", "revenue_30d", "orders_total", "revenue_total",
    "avg_order_value", "mobile_share_30d", "days_since_signup", "lifetime_value",
)
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
    """The feature names conditions may use, and where they came from.

    Imports ``udfs.features`` lazily (it may not exist yet, or may import what a validator
    does not need) and uses its ``FEATURE_NAMES``; falls back to ``FALLBACK_FEATURE_NAMES`` plus
    the ``events_<event type lower|total>_<1h|24h|7d|30d>`` pattern when that import fails.

    Returns:
        (names, source) where source is ``udfs.features.FEATURE_NAMES`` or ``fallback``.
    """
    try:
        features = importlib.import_module("udfs.features.spec")  # lazy on purpose, see above
        names = frozenset(str(name) for name in features.FEATURE_NAMES)
    except (ImportError, AttributeError):
        return _fallback_feature_names(), "fallback"
    return names, "udfs.features.FEATURE_NAMES"


@lru_cache(maxsize=1)
def _fallback_feature_names() -> frozenset[str]:
    per_type = [t.lower() for t in event_types()] + ["total"]
    patterned = {f"events_{t}_{w}" for t in per_type for w in FEATURE_WINDOWS}
    return frozenset(FALLBACK_FEATURE_NAMES) | patterned
