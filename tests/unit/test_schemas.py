"""Tests for the .avsc contracts: they parse, are documented, versioned and compatible."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from typing import Any

import avro.schema
import fastavro
import pytest

import schemas
from schemas.codec import MAGIC, NAMESPACE, Codec

# the package's directory (schemas.codec may be a compiled module elsewhere: udfs.native)
SCHEMA_DIR = Path(schemas.__file__).resolve().parent
HISTORY_DIR = SCHEMA_DIR / "history"
CURRENT = sorted(SCHEMA_DIR.glob("*.avsc"))
HISTORY = sorted(HISTORY_DIR.glob("*.avsc"))
ALL = CURRENT + HISTORY
HISTORY_NAME = re.compile(r"^(?P<name>\w+)\.v(?P<version>\d+)\.avsc$")

# Fingerprint (CRC-64-AVRO, little-endian hex) of every published version. Consumers in other
# teams resolve writer schemas by these bytes, so a published version must never change.
PUBLISHED: dict[str, dict[int, str]] = {
    "BackfillRequest": {1: "e4aff368d5ba9650"},
    "CampaignOutcome": {1: "f7aa6f45ef4f824a", 2: "18c5e979daf3f150", 3: "c26b3d2d924dab39"},
    "ClickEvent": {1: "d324c6a4f6786683", 2: "dd7d54cb4ffe2ce0"},
    "DeadLetter": {1: "9c64a23c2463eb5d", 2: "b10e46f70854f354"},
    "DefinitionUpdate": {1: "f9a64839cb5fbfb2", 2: "78aefd9a7c597044", 3: "48451a8b419aa2ca"},
    "SegmentChange": {1: "b6b97e7c3e0a6275"},
    "TriggerDecision": {1: "9d4245351afc914a"},
    "TriggerEvent": {1: "941b9616363796e3", 2: "9c758597fb115bea"},
    "UserActivityCount": {1: "7e7ad4ee12e93a6c"},
    "UserMetadata": {1: "3ab89aa70b264561"},
    "UserFeaturesState": {1: "8c2f29887dbf0c53"},
}

# The field names of each current record, in order: the contract other teams code against.
FIELDS: dict[str, list[str]] = {
    "BackfillRequest": ["backfill_id", "user_id", "requested_at", "definitions"],
    "ClickEvent": [
        "event_id", "user_id", "event_type", "event_time", "source", "session_id", "page_url",
        "product_id", "category", "search_query", "order_id", "currency", "price", "quantity",
        "properties",
    ],
    "UserMetadata": [
        "user_id", "country", "time_zone", "plan", "signup_time", "lifetime_value", "opt_ins",
        "updated_at",
    ],
    "UserActivityCount": ["user_id", "event_count", "last_event_id", "last_event_time"],
    "SegmentChange": [
        "change_id", "user_id", "segment_id", "change", "definition_version", "event_time",
        "reason", "cause_event_id", "churn_score", "model_version", "emitted_at",
    ],
    "TriggerEvent": [
        "trigger_id", "user_id", "campaign_id", "campaign_version", "step_id", "journey_id",
        "node_id", "journey_instance", "channel", "tier", "priority_score", "template_id",
        "payload", "segments", "churn_score", "model_version",
        "cause_event_id", "cause_event_time", "ingest_time", "emit_time", "expires_at",
        "explanation",
    ],
    "TriggerDecision": [
        "trigger_id", "user_id", "campaign_id", "campaign_version", "outcome", "reason_code",
        "reason", "tier", "priority_score", "channel", "deferred_until", "cause_event_id",
        "decided_at", "emit_time",
    ],
    "DeadLetter": [
        "reason_code", "reason", "source_topic", "partition", "offset", "raw", "key", "stage",
        "failed_at", "raw_size", "raw_sha256", "raw_omitted", "problems",
    ],
    "DefinitionUpdate": [
        "definition_id", "kind", "action", "version", "body", "checksum", "published_at",
        "published_by",
    ],
    "CampaignOutcome": [
        "outcome_id", "trigger_id", "user_id", "campaign_id", "channel", "outcome", "event_time",
        "revenue", "currency", "attribution_rule",
    ],
    "UserFeaturesState": [
        "first_event_ms", "last_event_ms", "last_purchase_ms", "last_add_to_cart_ms",
        "orders_total", "revenue_total_milli", "type_mask", "type_counts", "source_mask",
        "source_counts", "revenue_days", "session_keys", "order_keys", "seen_hashes",
        "seen_slots", "recent", "cart_numbers", "cart_products", "pending_numbers",
        "pending_strings",
    ],
}  # fmt: skip

# Enums that must fall back to a default symbol so that adding symbols does not break readers.
ENUM_DEFAULTS = {
    "EventType": "UNKNOWN",
    "EventSource": "UNKNOWN",
    "Plan": "UNKNOWN",
    "DeadLetterReason": "OTHER",
}


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def ids(paths: list[Path]) -> list[str]:
    return [p.relative_to(SCHEMA_DIR).as_posix() for p in paths]


def named_types(schema: Any) -> list[dict[str, Any]]:
    """Every record, enum and fixed defined inline in a schema, outermost first."""
    found: list[dict[str, Any]] = []
    if isinstance(schema, list):
        for branch in schema:
            found += named_types(branch)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed"):
            found.append(schema)
        for field in schema.get("fields", []):
            found += named_types(field["type"])
        for key in ("items", "values"):
            if key in schema:
                found += named_types(schema[key])
    return found


def full_name(named: dict[str, Any]) -> str:
    name = str(named["name"])
    return name if "." in name else f"{NAMESPACE}.{name}"


def versions_of(name: str) -> list[int]:
    past = [
        int(m["version"])
        for p in HISTORY
        if (m := HISTORY_NAME.match(p.name)) and m["name"] == name
    ]
    return sorted(past)


def test_there_is_one_file_per_record() -> None:
    assert sorted(p.stem for p in CURRENT) == sorted(FIELDS)


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_parses_with_fastavro(path: Path) -> None:
    fastavro.parse_schema(load(path))


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_parses_with_apache_avro(path: Path) -> None:
    schema = avro.schema.parse(path.read_text(encoding="utf-8"))
    assert isinstance(schema, avro.schema.RecordSchema)


@pytest.mark.parametrize("path", CURRENT, ids=ids(CURRENT))
def test_file_name_is_record_name(path: Path) -> None:
    schema = load(path)
    assert schema["type"] == "record"
    assert schema["name"] == path.stem
    assert schema["namespace"] == NAMESPACE


@pytest.mark.parametrize("path", HISTORY, ids=ids(HISTORY))
def test_history_file_name(path: Path) -> None:
    match = HISTORY_NAME.match(path.name)
    assert match, f"{path.name}: past versions are named <Name>.v<N>.avsc"
    schema = load(path)
    assert schema["name"] == match["name"]
    assert schema["namespace"] == NAMESPACE
    assert (SCHEMA_DIR / f"{match['name']}.avsc").exists()


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_every_type_and_field_has_a_doc(path: Path) -> None:
    for named in named_types(load(path)):
        where = f"{path.name}: {named['name']}"
        assert str(named.get("doc", "")).strip(), f"{where} has no doc"
        for field in named.get("fields", []):
            assert str(field.get("doc", "")).strip(), f"{where}.{field['name']} has no doc"


@pytest.mark.parametrize("path", CURRENT, ids=ids(CURRENT))
def test_fields_are_the_published_contract(path: Path) -> None:
    assert [f["name"] for f in load(path)["fields"]] == FIELDS[path.stem]


@pytest.mark.parametrize("path", CURRENT, ids=ids(CURRENT))
def test_current_version_note_and_history(path: Path) -> None:
    past = versions_of(path.stem)
    assert past == list(range(1, len(past) + 1)), f"gap in schemas/history for {path.stem}"
    current = len(past) + 1
    assert f"Version {current} (current)" in load(path)["doc"], (
        f"{path.name}: its doc must say 'Version {current} (current)', as there are "
        f"{len(past)} past versions in schemas/history/"
    )
    for version in past:
        old = load(HISTORY_DIR / f"{path.stem}.v{version}.avsc")
        assert f"Version {version} (superseded" in old["doc"]


def test_published_versions_never_change() -> None:
    codec = Codec.load()
    for name, published in PUBLISHED.items():
        current = max(published)
        assert versions_of(name) == sorted(v for v in published if v != current)
        assert codec.fingerprint(name).hex() == published[current], (
            f"schemas/{name}.avsc no longer encodes like published version {current}. Never "
            f"edit a published version: copy it to schemas/history/{name}.v{current}.avsc, "
            f"make the change as version {current + 1}, and add its fingerprint to PUBLISHED"
        )
        for version in versions_of(name):
            old = fastavro.parse_schema(load(HISTORY_DIR / f"{name}.v{version}.avsc"))
            fingerprint = fastavro.schema.fingerprint(
                fastavro.schema.to_parsing_canonical_form(old), "CRC-64-AVRO"
            )
            assert fingerprint == published[version], f"{name}.v{version}.avsc was changed"


def test_shared_named_types_are_identical() -> None:
    definitions: dict[str, dict[str, Any]] = {}
    where: dict[str, str] = {}
    for path in CURRENT:
        for named in named_types(load(path)):
            name = full_name(named)
            if name in definitions:
                assert named == definitions[name], (
                    f"{name} differs between {where[name]} and {path.name}: a named type "
                    "shared by several files must be copied verbatim"
                )
            definitions.setdefault(name, named)
            where.setdefault(name, path.name)
    channel = definitions["io.nudgeflow.Channel"]
    assert channel["symbols"] == ["EMAIL", "SMS", "PUSH", "IN_APP", "PAID_SOCIAL"]


def test_channel_is_shared_by_triggers_and_outcomes() -> None:
    for name in ("TriggerEvent", "CampaignOutcome"):
        names = {full_name(n) for n in named_types(load(SCHEMA_DIR / f"{name}.avsc"))}
        assert "io.nudgeflow.Channel" in names


@pytest.mark.parametrize(("enum", "default"), sorted(ENUM_DEFAULTS.items()))
def test_open_enums_have_a_default(enum: str, default: str) -> None:
    found = [
        n for p in CURRENT for n in named_types(load(p)) if n["name"] == enum
    ]  # fmt: skip
    assert found, enum
    for named in found:
        assert named["type"] == "enum"
        assert named.get("default") == default
        assert default in named["symbols"]


@pytest.mark.parametrize("path", ALL, ids=ids(ALL))
def test_optional_fields_are_null_first_with_null_default(path: Path) -> None:
    for named in named_types(load(path)):
        for field in named.get("fields", []):
            if isinstance(field["type"], list) and "null" in field["type"]:
                assert field["type"][0] == "null", f"{field['name']}: put null first"
                assert "default" in field and field["default"] is None, field["name"]


@pytest.mark.parametrize("path", CURRENT, ids=ids(CURRENT))
def test_timestamps_are_timestamp_millis(path: Path) -> None:
    for named in named_types(load(path)):
        for field in named.get("fields", []):
            if field["name"].endswith(("_time", "_at")):
                kind = field["type"]
                kind = kind[1] if isinstance(kind, list) else kind
                assert kind == {"type": "long", "logicalType": "timestamp-millis"}, field["name"]


# --- compatibility: every past version is readable by the current one --------------------------

PRIMITIVE_SAMPLES = {
    "null": None,
    "boolean": True,
    "int": 7,
    "long": 2**40,
    "float": 1.5,
    "double": 2.25,
    "bytes": b"\x00\xff",
    "string": "s",
}


def sample(schema: Any) -> Any:
    """A valid datum for a schema, with a value (not null) in every optional field."""
    if isinstance(schema, str):
        return PRIMITIVE_SAMPLES[schema]
    if isinstance(schema, list):
        return sample([b for b in schema if b != "null"][0])
    kind = schema["type"]
    if kind == "record":
        return {f["name"]: sample(f["type"]) for f in schema["fields"]}
    if kind == "enum":
        return schema["symbols"][0]
    if kind == "array":
        return [sample(schema["items"])]
    if kind == "map":
        return {"k": sample(schema["values"])}
    if kind == "fixed":
        return b"\x00" * schema["size"]
    return PRIMITIVE_SAMPLES[kind]


@pytest.mark.parametrize("path", HISTORY, ids=ids(HISTORY))
def test_past_version_is_readable_by_current(path: Path) -> None:
    codec = Codec.load()
    old = load(path)
    parsed = fastavro.parse_schema(old)
    fingerprint = fastavro.schema.fingerprint(
        fastavro.schema.to_parsing_canonical_form(parsed), "CRC-64-AVRO"
    )
    record = sample(old)
    out = io.BytesIO()
    out.write(MAGIC + bytes.fromhex(fingerprint))
    fastavro.schemaless_writer(out, parsed, record)

    name, decoded = codec.decode_named(out.getvalue())

    assert name == old["name"]
    current_fields = [f["name"] for f in load(SCHEMA_DIR / f"{name}.avsc")["fields"]]
    assert set(decoded) == set(current_fields)
    for field in set(record) & set(decoded):
        assert decoded[field] == record[field], field


def test_click_event_v1_reader_reads_v2_store_visit_as_unknown() -> None:
    # The enum default rule, forward direction: an old reader meets a symbol added later.
    v1 = fastavro.parse_schema(load(HISTORY_DIR / "ClickEvent.v1.avsc"))
    v2 = fastavro.parse_schema(load(SCHEMA_DIR / "ClickEvent.avsc"))
    event = {"event_id": "e", "user_id": "u", "event_type": "STORE_VISIT", "event_time": 0}
    out = io.BytesIO()
    fastavro.schemaless_writer(out, v2, event)
    out.seek(0)
    read = fastavro.schemaless_reader(out, v2, v1)
    assert isinstance(read, dict)
    assert read["event_type"] == "UNKNOWN"


def test_readme_covers_every_record() -> None:
    readme = (SCHEMA_DIR / "README.md").read_text(encoding="utf-8")
    for name in FIELDS:
        assert f"`{name}`" in readme, f"schemas/README.md does not describe {name}"


def test_click_event_leading_fields_never_move():
    """infra/jars/flink/.../ClickEventTimeAssigner.java reads event_time from the raw bytes by
    skipping event_id, user_id and event_type: every ClickEvent version must start that way."""
    import glob
    import json
    from pathlib import Path

    root = Path(__file__).resolve().parents[2] / "schemas"
    for path in [root / "ClickEvent.avsc", *map(Path, glob.glob(str(root / "history" /
                                                                     "ClickEvent.v*.avsc")))]:
        fields = json.loads(path.read_text())["fields"][:4]
        assert [f["name"] for f in fields] == ["event_id", "user_id", "event_type",
                                               "event_time"], path
        assert fields[0]["type"] == fields[1]["type"] == "string", path
        assert fields[2]["type"]["type"] == "enum", path
        assert fields[3]["type"]["type"] == "long", path
