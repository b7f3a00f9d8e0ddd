"""A JSON Schema of the definition YAML grammar, for editors (``nudgeflow defs schema``).

Inputs: the grammar constants of every kind (the key lists the compilers check, the channels,
tiers, modes, operators) and the vocabulary (event types from ``ClickEvent.avsc``, metadata
fields, feature names). Outputs: one JSON Schema (draft 2020-12) that accepts a segment (or a
``segments:`` list), a campaign, a journey, the priority policy or the currency rate table.
State: none.

The schema is for autocompletion and early red squiggles: it knows every key, which are
required, and the words each place allows, but not the rules between values (thresholds that
descend, a journey's graph, references): ``nudgeflow defs validate`` remains the judge. It is
built from the same constants the compilers use, so a key added there appears here.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from udfs.attribution.attribution import MODELS
from udfs.campaigns.compiler import TRIGGER_KINDS
from udfs.campaigns.grammar import (
    ATTRIBUTION_KEYS,
    CAMPAIGN_KEYS,
    CHANNELS,
    CONTROL_GROUP_KEYS,
    FACTORS,
    ON_BACKFILL,
    ON_CONFLICT,
    POLICY_ID,
    POLICY_KEYS,
    QUIET_HOURS_MODES,
    REQUIRED_CAMPAIGN_KEYS,
    REQUIRED_POLICY_KEYS,
    ROI_FEEDBACK_KEYS,
    TIERS,
)
from udfs.currency.rates import RATES_ID, RATES_KEYS, REQUIRED_RATES_KEYS
from udfs.definitions.comparisons import EQUALITY_OPS, NUMERIC_OPS, TIME_OPS
from udfs.definitions.compiler import ID_MAX_LEN, ID_RE, MAX_VERSION
from udfs.definitions.event_filter import NUMERIC_WHERE_FIELDS, WHERE_FIELDS
from udfs.definitions.vocabulary import event_types, known_feature_names, metadata_fields
from udfs.journeys.compiler import (
    CONDITION_KINDS as JOURNEY_CONDITION_KINDS,
)
from udfs.journeys.compiler import (
    EDGE_KEYS,
    NODE_KEYS,
    SEND_KEYS,
    WAIT_KEYS,
)
from udfs.journeys.grammar import JOURNEY_KEYS, REENTRY, REQUIRED_JOURNEY_KEYS
from udfs.segments.compiler import CONDITION_KINDS, SEGMENT_KEYS

SCHEMA_ID = "https://nudgeflow.dev/schemas/definition.schema.json"
_REQUIRED_SEGMENT_KEYS = ("id", "version", "description", "condition")
_DURATION = {"type": "string", "pattern": r"^\s*[0-9]+(ms|s|m|h|d)\s*$",
             "description": "a whole number and one unit: 500ms, 90s, 30m, 24h, 7d (at most "
                            "36500d)"}
_FRACTION = {"type": "number", "minimum": 0, "maximum": 1}
_PERCENT = {"anyOf": [{"type": "string", "pattern": r"^\s*[0-9]+(\.[0-9]+)?\s*%\s*$"},
                      {"type": "number", "minimum": 0, "maximum": 100}]}
_TEXT = {"type": "string", "minLength": 1}
_SCALAR = {"type": ["string", "number", "boolean"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/$defs/{name}"}


def _object(properties: dict[str, Any], keys: Sequence[str], required: Sequence[str] = (),
            description: str = "") -> dict[str, Any]:
    """A mapping with exactly ``keys`` (any not described in ``properties`` takes anything)."""
    out: dict[str, Any] = {
        "type": "object",
        "properties": {k: properties.get(k, {}) for k in keys},
        "additionalProperties": False,
    }
    if required:
        out["required"] = list(required)
    if description:
        out["description"] = description
    return out


def _one_of_keys(properties: dict[str, Any], keys: Sequence[str], what: str) -> dict[str, Any]:
    """A mapping with exactly one of ``keys`` (a condition, a trigger)."""
    return {**_object(properties, keys, description=f"{what}: exactly one of "
                                                    f"{', '.join(keys)}"),
            "minProperties": 1, "maxProperties": 1}


def _identity(kind: str | None, id_const: str | None = None) -> dict[str, Any]:
    props: dict[str, Any] = {
        "id": {"type": "string", "pattern": ID_RE.pattern, "maxLength": ID_MAX_LEN},
        "version": {"type": "integer", "minimum": 1, "maximum": MAX_VERSION},
        "description": _TEXT,
        "enabled": {"type": "boolean"},
    }
    if kind is not None:
        props["kind"] = {"const": kind}
    if id_const is not None:
        props["id"] = {"const": id_const}
    return props


def _comparison(ops: Sequence[str], value: dict[str, Any]) -> dict[str, Any]:
    return {"op": {"enum": list(ops)}, "value": value}


def _defs() -> dict[str, Any]:
    events = list(event_types())
    features, _ = known_feature_names()
    event_type = {"enum": events}
    where = _object({f: {} for f in WHERE_FIELDS}, WHERE_FIELDS,
                    description="tests on event fields; numeric fields: "
                                f"{', '.join(NUMERIC_WHERE_FIELDS)}")
    cap = _object({"per_day": {"type": "integer", "minimum": 1},
                   "per_week": {"type": "integer", "minimum": 1}}, ("per_day", "per_week"))
    priority_props = {"urgency": _FRACTION, "expected_roi": {"type": "number", "minimum": 0},
                      "brand_significance": _FRACTION, "audience": {"type": "string"}}
    priority_keys = ("urgency", "expected_roi", "brand_significance", "audience")
    attribution = {"window": _DURATION, "model": {"enum": list(MODELS)},
                   "goal": _ref("event_filter")}
    delivery = {
        "trigger": _ref("trigger"), "channels": _ref("channels"), "template": _TEXT,
        "payload": {"type": "object", "additionalProperties": _SCALAR},
        "valid_from": {"type": "string", "description": "ISO-8601 with a UTC offset"},
        "valid_until": {"type": "string", "description": "ISO-8601 with a UTC offset"},
        "expires_after": _DURATION, "quiet_hours": {"enum": list(QUIET_HOURS_MODES)},
        "on_conflict": {"enum": list(ON_CONFLICT)}, "on_backfill": {"enum": list(ON_BACKFILL)},
        "holdout": _PERCENT,
    }
    segment_props = _identity(None)
    segment_props["condition"] = _ref("condition")
    campaign_props = {
        **_identity("campaign"), **delivery,
        "priority": _object(priority_props, priority_keys, priority_keys[:3]),
        "eligibility": _object({k: {"type": "array", "items": {"type": "string"}}
                                for k in ("require_segments", "exclude_segments")},
                               ("require_segments", "exclude_segments")),
        "frequency": _object({"cap": cap, "reeligible_after": _DURATION},
                             ("cap", "reeligible_after")),
        "attribution": _object(attribution, ATTRIBUTION_KEYS),
    }
    journey_props = {
        **_identity("journey"), **delivery,
        "nodes": {"type": "array", "minItems": 1, "items": _ref("journey_node")},
        "goal": _object({"event": _ref("event_filter")}, ("event",), ("event",)),
        "priority": _object(priority_props, priority_keys[:3], priority_keys[:3]),
        "attribution": _object(attribution, [k for k in ATTRIBUTION_KEYS if k != "goal"]),
    }
    clock = {"type": "string", "pattern": "^([01][0-9]|2[0-3]):[0-5][0-9]$"}
    policy_props = {
        **_identity("priority", POLICY_ID),
        "weights": _object({f: {"type": "number", "minimum": 0} for f in FACTORS}, FACTORS,
                           FACTORS),
        "roi_scale": {"type": "number", "exclusiveMinimum": 0},
        "audience_scale": {"type": "integer", "minimum": 2},
        "tiers": _object({t: _FRACTION for t in TIERS[:3]}, TIERS[:3], TIERS[:3]),
        "decision_window": {"anyOf": [_DURATION, {"enum": [0, "0"]}]},
        "min_interval": {"anyOf": [_DURATION, {"enum": [0, "0"]}]},
        "channel_caps": _object({c: cap for c in CHANNELS}, CHANNELS),
        "quiet_hours": _object({"start": clock, "end": clock}, ("start", "end"),
                               ("start", "end")),
        "default_time_zone": {"type": "string", "description": "an IANA time zone"},
        "control_group": _object({"share": _PERCENT, "salt": _TEXT}, CONTROL_GROUP_KEYS,
                                 ("share",)),
        "roi_feedback": _object({"min_sends": {"type": "integer", "minimum": 1},
                                 "smoothing": _FRACTION, "max_step": _PERCENT,
                                 "update_every": {"type": "integer", "minimum": 1}},
                                ROI_FEEDBACK_KEYS),
    }
    rates_props = {
        **_identity("currency_rates", RATES_ID),
        "per_usd": {"type": "object", "propertyNames": {"pattern": "^[A-Z]{3}$"},
                    "additionalProperties": {"type": "number", "exclusiveMinimum": 0}},
    }
    conditions = {
        "all": {"type": "array", "minItems": 1, "items": _ref("condition")},
        "any": {"type": "array", "minItems": 1, "items": _ref("condition")},
        "not": _ref("condition"),
        "feature": _object({"name": {"enum": sorted(features)},
                            **_comparison(NUMERIC_OPS, {})}, ("name", "op", "value"),
                           ("name", "op", "value")),
        "metadata": _object({"field": {"enum": sorted(metadata_fields())},
                             **_comparison(sorted({*EQUALITY_OPS, *TIME_OPS}), {})},
                            ("field", "op", "value"), ("field", "op", "value")),
        "event": _object({"type": {"anyOf": [event_type, {"type": "array",
                                                          "items": event_type}]},
                          "within": _DURATION, "where": where,
                          "min_count": {"type": "integer", "minimum": 1}},
                         ("type", "within", "where", "min_count"), ("type",)),
        "absence": _object({"after": _ref("event_filter"), "missing": _ref("event_filter"),
                            "within": _DURATION, "expires_after": _DURATION},
                           ("after", "missing", "within", "expires_after"),
                           ("after", "missing", "within")),
        "inactive": _object({"for": _DURATION}, ("for",), ("for",)),
        "churn_score": _object(_comparison(NUMERIC_OPS, {}), ("op", "value"), ("op", "value")),
    }
    node_bodies = {
        "entry": _object({"trigger": _ref("trigger"),
                          "reentry": {"anyOf": [{"enum": [r for r in REENTRY if r != "after"]},
                                                _object({"after": _DURATION}, ("after",),
                                                        ("after",))]}},
                         ("trigger", "reentry"), ("trigger",)),
        "send": _object({"channels": _ref("channels"), "template": _TEXT,
                         "payload": {"type": "object", "additionalProperties": _SCALAR},
                         "expires_after": _DURATION}, SEND_KEYS, ("channels", "template")),
        "sync_audience": _object({}, ("audience",), ("audience",)),
        "wait": _object({"for": _DURATION, "until": _ref("journey_condition"),
                         "timeout": _DURATION}, WAIT_KEYS),
        "condition": _ref("journey_condition"),
        "split": {"type": "array", "minItems": 1,
                  "items": _object({"percent": _PERCENT, "next": {"type": "string"}},
                                   ("percent", "next"), ("percent", "next"))},
        "exit": {"anyOf": [{"type": "null"}, _object({"reason": {"type": "string"}},
                                                     ("reason",))]},
    }
    return {
        "channels": {"type": "array", "minItems": 1, "uniqueItems": True,
                     "items": {"enum": list(CHANNELS)}},
        "event_filter": {"anyOf": [
            event_type, {"type": "array", "items": event_type},
            _object({"type": {"anyOf": [event_type, {"type": "array", "items": event_type}]},
                     "where": where}, ("type", "where"), ("type",))]},
        "trigger": _one_of_keys({
            "segment_enter": _TEXT, "event": _ref("event_filter"),
            "churn_score": _object({"crosses_above": _FRACTION}, ("crosses_above",),
                                   ("crosses_above",))}, TRIGGER_KINDS, "a trigger"),
        "condition": _one_of_keys(conditions, CONDITION_KINDS, "a segment condition"),
        "journey_condition": _one_of_keys({}, JOURNEY_CONDITION_KINDS, "a journey condition"),
        "journey_node": _object({"id": {"type": "string"}, **node_bodies,
                                 **{e: {"type": "string"} for e in EDGE_KEYS}}, NODE_KEYS,
                                ("id",)),
        "segment": _object(segment_props, SEGMENT_KEYS, _REQUIRED_SEGMENT_KEYS,
                           "a segment (a document without kind)"),
        "segment_list": _object({"segments": {"type": "array", "minItems": 1,
                                              "items": _ref("segment")}},
                                ("segments",), ("segments",), "several segments in one file"),
        "campaign": _object(campaign_props, CAMPAIGN_KEYS, REQUIRED_CAMPAIGN_KEYS,
                            "a campaign (kind: campaign)"),
        "journey": _object(journey_props, JOURNEY_KEYS, REQUIRED_JOURNEY_KEYS,
                           "a journey (kind: journey)"),
        "priority": _object(policy_props, POLICY_KEYS, REQUIRED_POLICY_KEYS,
                            "the priority policy (kind: priority)"),
        "currency_rates": _object(rates_props, RATES_KEYS, REQUIRED_RATES_KEYS,
                                  "the currency rate table (kind: currency_rates)"),
    }


def definition_schema() -> dict[str, Any]:
    """The JSON Schema of a definition file of any kind (``nudgeflow defs schema``).

    Returns:
        A draft 2020-12 schema: a document with ``kind`` is checked as that kind, one without
        as a segment or a ``segments:`` list.
    """
    kinds = ("campaign", "journey", "priority", "currency_rates")
    branches: list[dict[str, Any]] = [
        {"if": {"required": ["kind"], "properties": {"kind": {"const": kind}}},
         "then": _ref(kind)} for kind in kinds]
    branches.append({"if": {"not": {"required": ["kind"]}},
                     "then": {"anyOf": [_ref("segment"), _ref("segment_list")]}})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": SCHEMA_ID,
        "title": "nudgeflow definition",
        "description": "A nudgeflow definition file: a segment (no kind), a campaign, a "
                       "journey, the priority policy or the currency rate table. Generated by "
                       "`nudgeflow defs schema`; `nudgeflow defs validate` checks the rest.",
        "type": "object",
        "properties": {"kind": {"enum": list(kinds)}},
        "allOf": branches,
        "$defs": _defs(),
    }
