"""Tests for schemas.codec: single-object encoding, byte-exact, checked against the spec and avro.

Three implementations meet here: fastavro (inside the codec), the Apache ``avro`` package
(DatumWriter for the body), and the reference CRC-64-AVRO and Parsing Canonical Form below,
written from the Avro specification.
"""

from __future__ import annotations

import copy
import datetime as dt
import io
import json
from pathlib import Path
from typing import Any

import avro.io
import avro.schema
import fastavro
import pytest

import schemas
from schemas import codec as codec_module
from schemas.codec import (
    Codec,
    CodecError,
    MalformedRecordError,
    NotSingleObjectError,
    UnknownSchemaError,
    WrongSchemaError,
    confluent_framed,
)

# the package's directory (schemas.codec may be a compiled module elsewhere: udfs.native)
SCHEMA_DIR = Path(schemas.__file__).resolve().parent

# --- reference implementations from the Avro specification -------------------------------------

EMPTY64 = 0xC15D213AA4D7A795  # the spec's CRC-64-AVRO initial value / polynomial


def _fp_table() -> list[int]:
    table = []
    for i in range(256):
        fp = i
        for _ in range(8):
            fp = (fp >> 1) ^ (EMPTY64 & -(fp & 1))
        table.append(fp)
    return table


FP_TABLE = _fp_table()


def crc64_avro(data: bytes) -> bytes:
    """CRC-64-AVRO as in the spec, returned little-endian as single-object encoding writes it."""
    fp = EMPTY64
    for byte in data:
        fp = (fp >> 8) ^ FP_TABLE[(fp ^ byte) & 0xFF]
    return fp.to_bytes(8, "little")


PRIMITIVES = {"null", "boolean", "int", "long", "float", "double", "bytes", "string"}


def canonical_form(schema: Any, namespace: str = "", seen: set[str] | None = None) -> str:
    """Parsing Canonical Form per the spec: PRIMITIVES, FULLNAMES, STRIP, ORDER, STRINGS."""
    seen = set() if seen is None else seen
    if isinstance(schema, list):
        return "[" + ",".join(canonical_form(s, namespace, seen) for s in schema) + "]"
    if isinstance(schema, str):
        if schema in PRIMITIVES:
            return json.dumps(schema)
        return json.dumps(_full_name(schema, namespace))
    kind = schema["type"]
    if kind in PRIMITIVES:  # e.g. {"type": "long", "logicalType": "timestamp-millis"} -> "long"
        return json.dumps(kind)
    if kind == "array":
        return '{"type":"array","items":' + canonical_form(schema["items"], namespace, seen) + "}"
    if kind == "map":
        return '{"type":"map","values":' + canonical_form(schema["values"], namespace, seen) + "}"
    full = _full_name(schema["name"], schema.get("namespace", namespace))
    if full in seen:
        return json.dumps(full)
    seen.add(full)
    inner = full.rpartition(".")[0]
    out = f'{{"name":{json.dumps(full)},"type":"{kind}"'
    if kind == "record":
        fields = ",".join(
            f'{{"name":{json.dumps(f["name"])},"type":{canonical_form(f["type"], inner, seen)}}}'
            for f in schema["fields"]
        )
        out += f',"fields":[{fields}]'
    elif kind == "enum":
        out += ',"symbols":' + json.dumps(schema["symbols"], separators=(",", ":"))
    elif kind == "fixed":
        out += f',"size":{schema["size"]}'
    return out + "}"


def _full_name(name: str, namespace: str) -> str:
    return name if "." in name or not namespace else f"{namespace}.{name}"


def schema_json(name: str) -> dict[str, Any]:
    return json.loads((SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8"))


EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)


def with_datetimes(schema: Any, datum: Any) -> Any:
    """The datum with every timestamp-millis int as an aware datetime, as ``avro`` requires."""
    if isinstance(schema, list):  # nudgeflow's unions are all ["null", X]
        return None if datum is None else with_datetimes(schema[1], datum)
    if not isinstance(schema, dict):
        return datum
    if schema.get("logicalType") == "timestamp-millis":
        return EPOCH + dt.timedelta(milliseconds=datum)
    if schema["type"] == "record":
        return {f["name"]: with_datetimes(f["type"], datum[f["name"]]) for f in schema["fields"]}
    if schema["type"] == "array":
        return [with_datetimes(schema["items"], item) for item in datum]
    if schema["type"] == "map":
        return {key: with_datetimes(schema["values"], value) for key, value in datum.items()}
    return datum


def avro_body(name: str, record: dict[str, Any]) -> bytes:
    """The Avro binary body as the Apache ``avro`` package's DatumWriter writes it."""
    text = (SCHEMA_DIR / f"{name}.avsc").read_text(encoding="utf-8")
    out = io.BytesIO()
    datum = with_datetimes(json.loads(text), record)
    avro.io.DatumWriter(avro.schema.parse(text)).write(datum, avro.io.BinaryEncoder(out))
    return out.getvalue()


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec.load()


T = 1_700_000_000_000  # 2023-11-14T22:13:20Z; zigzag 3400000000000 -> varint 80 a0 ab fe f9 62

# --- one full record per type, for round trips ---------------------------------------------------

RECORDS: dict[str, dict[str, Any]] = {
    "ClickEvent": {
        "event_id": "0b6f3c1e-6a53-4d6f-9d0f-4f1c2a9b7e21",
        "user_id": "user-000123",
        "event_type": "PURCHASE",
        "event_time": T,
        "source": "OFFLINE",
        "session_id": None,
        "page_url": None,
        "product_id": "sku-991",
        "category": "shoes",
        "search_query": None,
        "order_id": "ord-77",
        "currency": "EUR",
        "price": 59.9,
        "quantity": 2,
        "properties": {"store_id": "berlin-3", "pos": "7"},
    },
    "UserMetadata": {
        "user_id": "user-000123",
        "country": "DE",
        "time_zone": "Europe/Berlin",
        "plan": "PREMIUM",
        "signup_time": T - 86_400_000 * 400,
        "lifetime_value": 1234.56,
        "opt_ins": {
            "email": True,
            "sms": False,
            "push": True,
            "in_app": True,
            "paid_social": False,
        },
        "updated_at": T,
    },
    "UserActivityCount": {
        "user_id": "user-000123",
        "event_count": 2**40,
        "last_event_id": "e-1",
        "last_event_time": T,
    },
    "SegmentChange": {
        "change_id": "9f2c",
        "user_id": "user-000123",
        "segment_id": "cart-abandoners",
        "change": "ENTER",
        "definition_version": 4,
        "event_time": T,
        "reason": "ADD_TO_CART without CHECKOUT for 30 min",
        "cause_event_id": None,
        "churn_score": 0.73,
        "model_version": "churn-2024-05",
        "emitted_at": T + 1800_000,
    },
    "TriggerEvent": {
        "trigger_id": "a1b2",
        "user_id": "user-000123",
        "campaign_id": "winback",
        "campaign_version": 3,
        "step_id": "main",
        "journey_id": None,
        "node_id": None,
        "journey_instance": None,
        "channel": "EMAIL",
        "tier": "P0",
        "priority_score": 0.91,
        "template_id": "winback-v3",
        "payload": {"discount_code": "COMEBACK10"},
        "segments": ["at-risk", "high-value"],
        "churn_score": 0.8,
        "model_version": "churn-2024-05",
        "cause_event_id": "e-1",
        "cause_event_time": T,
        "ingest_time": T + 120,
        "emit_time": T + 450,
        "expires_at": T + 86_400_000,
        "explanation": {
            "reason": "churn score 0.8 >= 0.7 and high-value",
            "definition_versions": {"winback": 3, "at-risk": 7},
            "features": {"churn_score": 0.8, "ltv_rank": 0.95},
            "rivals": [
                {"campaign_id": "newsletter", "priority_score": 0.2, "outcome": "SUPPRESSED"},
                {"campaign_id": "cross-sell", "priority_score": 0.5, "outcome": "DEFERRED"},
            ],
        },
    },
    "TriggerDecision": {
        "trigger_id": "a1b2",
        "user_id": "user-000123",
        "campaign_id": "cart-reminder-push",
        "campaign_version": 2,
        "outcome": "SUPPRESSED",
        "reason_code": "LOST_ARBITRATION",
        "reason": "lost to cart-abandonment-email (score 0.654 > 0.512)",
        "tier": "P2",
        "priority_score": 0.512,
        "channel": "PUSH",
        "deferred_until": None,
        "cause_event_id": "e-1",
        "decided_at": T,
        "emit_time": T + 40,
    },
    "BackfillRequest": {
        "backfill_id": "new-segment.v3-1a2b",
        "user_id": "user-000123",
        "requested_at": T,
        "definitions": {"new-segment": 3, "new-segment-push": 1},
    },
    "DeadLetter": {
        "reason_code": "INVALID_AVRO",
        "reason": "not Avro single-object encoding",
        "source_topic": "clickstream",
        "partition": 5,
        "offset": 2**33,
        "raw": b"\x00\x01\xff",
        "key": b"user-000123",
        "stage": "decode",
        "failed_at": T,
        "raw_size": 3,
        "raw_sha256": "ab" * 32,
        "raw_omitted": False,
        "problems": [{"field": "(record)", "code": "NOT_SINGLE_OBJECT", "value": None,
                      "value_size": None, "value_sha256": None}],
    },
    "DefinitionUpdate": {
        "definition_id": "cart-abandoners",
        "kind": "SEGMENT",
        "action": "UPSERT",
        "version": 4,
        "body": '{"window": "30m"}',
        "checksum": "0" * 64,
        "published_at": T,
        "published_by": "alice",
    },
    "CampaignOutcome": {
        "outcome_id": "out-1",
        "trigger_id": "a1b2",
        "user_id": "user-000123",
        "campaign_id": "winback",
        "channel": "EMAIL",
        "outcome": "CONVERTED",
        "event_time": T + 3_600_000,
        "revenue": 42.0,
        "currency": "EUR",
        "attribution_rule": "last_touch 7d",
    },
    "UserFeaturesState": {  # the body of per-user keyed state (udfs.features.codec), not Kafka
        "first_event_ms": T - 86_400_000,
        "last_event_ms": T,
        "last_purchase_ms": T - 60_000,
        "last_add_to_cart_ms": T - 120_000,
        "orders_total": 3,
        "revenue_total_milli": 125_990,
        "type_mask": 0b1001,
        "type_counts": bytes(2 * 66 * 4),
        "source_mask": 0b10,
        "source_counts": bytes(30 * 4),
        "revenue_days": bytes(30 * 8),
        "session_keys": (19675 << 32 | 7).to_bytes(8, "little"),
        "order_keys": b"",
        "seen_hashes": (-5).to_bytes(8, "little", signed=True),
        "seen_slots": (5_666_666).to_bytes(4, "little"),
        "recent": "001700000000000\x1fe-1\x1fPAGE_VIEW\x1fWEB\x1f\x1f\x1f\x1f\x1f",
        "cart_numbers": b"",
        "cart_products": "",
        "pending_numbers": b"",
        "pending_strings": "",
    },
}

# --- byte-exact cases, derived by hand from the spec ---------------------------------------------
# Strings/bytes: zigzag varint length, then the bytes. int/long: zigzag varint (n -> 2n for n >= 0).
# Enum: zigzag index. Union: zigzag branch index, then the value. double: 8 bytes IEEE 754, little
# endian. Map/array: one block (zigzag count, items), then 00. Record: fields in schema order.

BYTE_EXACT = [
    pytest.param(
        "BackfillRequest",
        {"backfill_id": "b1", "user_id": "u1", "requested_at": T, "definitions": {"s": 2}},
        "c301"  # marker
        "e4aff368d5ba9650"  # CRC-64-AVRO of the canonical form, little endian
        "046231"  # backfill_id "b1"
        "047531"  # user_id "u1"
        "80a0abfef962"  # requested_at 1700000000000
        "02" "0273" "04" "00",  # definitions: one entry, "s" -> 2, end of map
        id="BackfillRequest",
    ),
    pytest.param(
        "UserActivityCount",
        {"user_id": "u1", "event_count": 3, "last_event_id": "e9", "last_event_time": T},
        "c301"  # marker
        "7e7ad4ee12e93a6c"  # CRC-64-AVRO of the canonical form, little endian
        "047531"  # user_id "u1": length 2 -> zigzag 04, then 'u' '1'
        "06"  # event_count 3 -> 06
        "046539"  # last_event_id "e9"
        "80a0abfef962",  # last_event_time 1700000000000
        id="UserActivityCount",
    ),
    pytest.param(
        "ClickEvent",
        {
            "event_id": "e1",
            "user_id": "u1",
            "event_type": "ADD_TO_CART",
            "event_time": T,
            "source": "MOBILE",
            "session_id": None,
            "page_url": None,
            "product_id": "p7",
            "category": None,
            "search_query": None,
            "order_id": None,
            "currency": "EUR",
            "price": 2.5,
            "quantity": 2,
            "properties": {"k": "v"},
        },
        "c301dd7d54cb4ffe2ce0"  # marker, fingerprint
        "046531"  # event_id "e1"
        "047531"  # user_id "u1"
        "06"  # event_type ADD_TO_CART = index 3
        "80a0abfef962"  # event_time
        "02"  # source MOBILE = index 1
        "00"  # session_id null: branch 0
        "00"  # page_url null
        "02047037"  # product_id: branch 1, "p7"
        "00"  # category null
        "00"  # search_query null
        "00"  # order_id null
        "0206455552"  # currency: branch 1, "EUR"
        "020000000000000440"  # price: branch 1, 2.5 = 0x4004000000000000
        "0204"  # quantity: branch 1, 2
        "02026b027600",  # properties: 1 entry, "k" -> "v", end of map
        id="ClickEvent",
    ),
    pytest.param(
        "UserMetadata",
        {
            "user_id": "u1",
            "country": "DE",
            "time_zone": "Europe/Berlin",
            "plan": "PREMIUM",
            "signup_time": 0,
            "lifetime_value": 100.0,
            "opt_ins": {
                "email": True,
                "sms": False,
                "push": True,
                "in_app": False,
                "paid_social": False,
            },
            "updated_at": T,
        },
        "c3013ab89aa70b264561"  # marker, fingerprint
        "047531"  # user_id
        "044445"  # country "DE"
        "1a4575726f70652f4265726c696e"  # time_zone "Europe/Berlin" (13 bytes -> 1a)
        "04"  # plan PREMIUM = index 2
        "00"  # signup_time 0
        "0000000000005940"  # lifetime_value 100.0 = 0x4059000000000000
        "0100010000"  # opt_ins: email, sms, push, in_app, paid_social as 01/00
        "80a0abfef962",  # updated_at
        id="UserMetadata",
    ),
    pytest.param(
        "SegmentChange",
        {
            "change_id": "x1",
            "user_id": "u1",
            "segment_id": "s1",
            "change": "EXIT",
            "definition_version": 2,
            "event_time": T,
            "reason": "idle",
            "cause_event_id": None,
            "churn_score": 0.5,
            "model_version": "m1",
            "emitted_at": T,
        },
        "c301b6b97e7c3e0a6275"  # marker, fingerprint
        "047831047531047331"  # change_id "x1", user_id "u1", segment_id "s1"
        "02"  # change EXIT = index 1
        "04"  # definition_version 2
        "80a0abfef962"  # event_time
        "0869646c65"  # reason "idle"
        "00"  # cause_event_id null
        "02000000000000e03f"  # churn_score: branch 1, 0.5 = 0x3fe0000000000000
        "02046d31"  # model_version: branch 1, "m1"
        "80a0abfef962",  # emitted_at
        id="SegmentChange",
    ),
    pytest.param(
        "TriggerEvent",
        {
            "trigger_id": "t1",
            "user_id": "u1",
            "campaign_id": "j1/n1",
            "campaign_version": 1,
            "step_id": "n1",
            "journey_id": "j1",
            "node_id": "n1",
            "journey_instance": 2,
            "channel": "PUSH",
            "tier": "P1",
            "priority_score": 0.5,
            "template_id": "tp",
            "payload": {},
            "segments": ["s1"],
            "churn_score": None,
            "model_version": None,
            "cause_event_id": "e1",
            "cause_event_time": 1000,
            "ingest_time": 1000,
            "emit_time": 1000,
            "expires_at": 2000,
            "explanation": {
                "reason": "r",
                "definition_versions": {"c1": 1},
                "features": {},
                "rivals": [{"campaign_id": "c2", "priority_score": 0.25, "outcome": "DEFERRED"}],
            },
        },
        "c3019c758597fb115bea"  # marker, fingerprint
        "047431047531"  # trigger_id "t1", user_id "u1"
        "0a6a312f6e31"  # campaign_id "j1/n1" (5 bytes)
        "02"  # campaign_version 1
        "046e31"  # step_id "n1"
        "02046a31"  # journey_id: branch 1, "j1"
        "02046e31"  # node_id: branch 1, "n1"
        "0204"  # journey_instance: branch 1, 2 -> zigzag 4
        "04"  # channel PUSH = index 2
        "02"  # tier P1 = index 1
        "000000000000e03f"  # priority_score 0.5
        "047470"  # template_id "tp"
        "00"  # payload: empty map
        "0204733100"  # segments: 1 item, "s1", end
        "0000"  # churn_score null, model_version null
        "046531"  # cause_event_id "e1"
        "d00fd00fd00f"  # cause_event_time, ingest_time, emit_time 1000 -> zigzag 2000 -> d0 0f
        "02a01f"  # expires_at: branch 1, 2000 -> zigzag 4000 -> a0 1f
        "0272"  # explanation.reason "r"
        "0204633102"
        "00"  # definition_versions: 1 entry, "c1" -> 1, end
        "00"  # features: empty map
        "02"
        "046332"
        "000000000000d03f"
        "02"
        "00",  # rivals: 1 item {"c2", 0.25, DEFERRED}, end
        id="TriggerEvent",
    ),
    pytest.param(
        "TriggerDecision",
        {
            "trigger_id": "t1",
            "user_id": "u1",
            "campaign_id": "c1",
            "campaign_version": 1,
            "outcome": "DEFERRED",
            "reason_code": "QH",
            "reason": "r",
            "tier": "P2",
            "priority_score": None,
            "channel": None,
            "deferred_until": 2000,
            "cause_event_id": "e1",
            "decided_at": 1000,
            "emit_time": 1000,
        },
        "c3019d4245351afc914a"  # marker, fingerprint
        "047431047531046331"  # trigger_id "t1", user_id "u1", campaign_id "c1"
        "02"  # campaign_version 1
        "02"  # outcome DEFERRED = index 1
        "045148"  # reason_code "QH"
        "0272"  # reason "r"
        "0204"  # tier: branch 1, P2 = index 2
        "0000"  # priority_score null, channel null
        "02a01f"  # deferred_until: branch 1, 2000
        "046531"  # cause_event_id "e1"
        "d00fd00f",  # decided_at, emit_time 1000
        id="TriggerDecision",
    ),
    pytest.param(
        "DeadLetter",
        {
            "reason_code": "LATE_EVENT",
            "reason": "late",
            "source_topic": "t",
            "partition": 3,
            "offset": 42,
            "raw": b"\xc3\x01",
            "key": None,
            "stage": "watermark",
            "failed_at": T,
            "raw_size": 2,
            "raw_sha256": None,
            "raw_omitted": False,
            "problems": [],
        },
        "c301b10e46f70854f354"  # marker, fingerprint
        "06"  # reason_code LATE_EVENT = index 3
        "086c617465"  # reason "late"
        "0274"  # source_topic "t"
        "0206"  # partition: branch 1, 3
        "0254"  # offset: branch 1, 42
        "04c301"  # raw: 2 bytes
        "00"  # key null
        "1277617465726d61726b"  # stage "watermark"
        "80a0abfef962"  # failed_at
        "0204"  # raw_size: branch 1, 2
        "00"  # raw_sha256 null
        "00"  # raw_omitted false
        "00",  # problems: empty array
        id="DeadLetter",
    ),
    pytest.param(
        "DefinitionUpdate",
        {
            "definition_id": "seg-1",
            "kind": "SEGMENT",
            "action": "DELETE",
            "version": 7,
            "body": "",
            "checksum": "e3b0",
            "published_at": T,
            "published_by": None,
        },
        "c30148451a8b419aa2ca"  # marker, fingerprint
        "0a7365672d31"  # definition_id "seg-1"
        "00"  # kind SEGMENT = index 0
        "02"  # action DELETE = index 1
        "0e"  # version 7
        "00"  # body ""
        "0865336230"  # checksum "e3b0"
        "80a0abfef962"  # published_at
        "00",  # published_by null
        id="DefinitionUpdate",
    ),
    pytest.param(
        "CampaignOutcome",
        {
            "outcome_id": "o1",
            "trigger_id": "t1",
            "user_id": "u1",
            "campaign_id": "c1",
            "channel": "SMS",
            "outcome": "CONVERTED",
            "event_time": T,
            "revenue": 2.5,
            "currency": "EUR",
            "attribution_rule": None,
        },
        "c301c26b3d2d924dab39"  # marker, fingerprint
        "046f31"  # outcome_id "o1"
        "02047431"  # trigger_id: branch 1, "t1"
        "047531046331"  # user_id "u1", campaign_id "c1"
        "02"  # channel SMS = index 1
        "06"  # outcome CONVERTED = index 3
        "80a0abfef962"  # event_time
        "020000000000000440"  # revenue: branch 1, 2.5
        "0206455552"  # currency: branch 1, "EUR"
        "00",  # attribution_rule: null
        id="CampaignOutcome",
    ),
    pytest.param(
        "UserFeaturesState",
        {
            "first_event_ms": T,
            "last_event_ms": T,
            "last_purchase_ms": 0,
            "last_add_to_cart_ms": 0,
            "orders_total": 0,
            "revenue_total_milli": 0,
            "type_mask": 1,
            "type_counts": b"\x01\x00\x00\x00",
            "source_mask": 0,
            "source_counts": b"",
            "revenue_days": b"",
            "session_keys": b"",
            "order_keys": b"",
            "seen_hashes": b"",
            "seen_slots": b"",
            "recent": "",
            "cart_numbers": b"",
            "cart_products": "",
            "pending_numbers": b"",
            "pending_strings": "e",
        },
        "c3018c2f29887dbf0c53"  # marker, fingerprint (keyed state stores the body only)
        "80a0abfef962"  # first_event_ms
        "80a0abfef962"  # last_event_ms
        "00000000"  # last_purchase_ms, last_add_to_cart_ms, orders_total, revenue_total_milli
        "02"  # type_mask 1
        "0801000000"  # type_counts: length 4 -> 08, then int32 1 little endian
        "00"  # source_mask 0
        "000000000000"  # source_counts .. seen_slots: six empty bytes
        "00000000"  # recent, cart_numbers, cart_products, pending_numbers: empty
        "0265",  # pending_strings "e"
        id="UserFeaturesState",
    ),
]


def test_every_record_type_has_cases() -> None:
    names = set(Codec.load().schema_names())
    assert set(RECORDS) == names
    assert {case.values[0] for case in BYTE_EXACT} == names


@pytest.mark.parametrize(("name", "record", "expected_hex"), BYTE_EXACT)
def test_encoding_is_byte_exact(
    codec: Codec, name: str, record: dict[str, Any], expected_hex: str
) -> None:
    encoded = codec.encode(name, record)
    assert encoded.hex() == expected_hex
    # The same bytes from independent implementations: reference CRC over a reference canonical
    # form for the header, the Apache avro package's DatumWriter for the body.
    header = b"\xc3\x01" + crc64_avro(canonical_form(schema_json(name)).encode())
    assert encoded == header + avro_body(name, record)
    assert codec.decode(encoded, expect=name) == record


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_round_trip(codec: Codec, name: str) -> None:
    record = RECORDS[name]
    original = copy.deepcopy(record)
    encoded = codec.encode(name, record)
    assert codec.decode(encoded) == record
    assert codec.decode(encoded, expect=name) == record
    assert codec.decode(encoded, expect=f"io.nudgeflow.{name}") == record
    assert codec.decode_named(encoded) == (name, record)
    assert record == original, "encode must not modify its input"


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_fingerprint_matches_reference_crc64(codec: Codec, name: str) -> None:
    raw = schema_json(name)
    reference_form = canonical_form(raw)
    assert fastavro.schema.to_parsing_canonical_form(fastavro.parse_schema(raw)) == reference_form
    assert codec.fingerprint(name) == crc64_avro(reference_form.encode())
    assert codec.fingerprint(f"io.nudgeflow.{name}") == codec.fingerprint(name)
    # avro (Python) 1.12 keeps {"type":"long"} for logical types where the spec's [PRIMITIVES]
    # rule (and Java's SchemaNormalization) gives "long"; otherwise its canonical form agrees.
    avro_form = avro.schema.parse(json.dumps(raw)).canonical_form
    assert avro_form.replace('{"type":"long"}', '"long"') == reference_form


# Vectors from Apache Avro's share/test/data/schema-tests.txt (cross-checked there by Java's
# slow-but-direct fingerprint): input schema, canonical form, fingerprint as a signed Java long.
AVRO_VECTORS = [
    ('"null"', '"null"', 7195948357588979594),
    ('{"type":"int"}', '"int"', 8247732601305521295),
    ('[ "int" , {"type":"boolean"} ]', '["int","boolean"]', 5392556393470105090),
    (
        '{"fields":[], "type":"record", "name":"foo", "namespace":"x.y"}',
        '{"name":"x.y.foo","type":"record","fields":[]}',
        5916914534497305771,
    ),
    (
        '{ "fields":[{"type":"boolean", "aliases":[], "name":"f1", "default":"true"},'
        ' {"order":"descending","name":"f2","doc":"Hello","type":"int"}],'
        ' "type":"record", "name":"foo"}',
        '{"name":"foo","type":"record","fields":[{"name":"f1","type":"boolean"},'
        '{"name":"f2","type":"int"}]}',
        -4860222112080293046,
    ),
    (
        '{"namespace":"x.y.z", "type":"enum", "name":"foo", "doc":"foo bar",'
        ' "symbols":["A1", "A2"]}',
        '{"name":"x.y.z.foo","type":"enum","symbols":["A1","A2"]}',
        -4448647247586288245,
    ),
    (
        '{"name":"PigValue","type":"record",'
        ' "fields":[{"name":"value", "type":["null", "int", "long", "PigValue"]}]}',
        '{"name":"PigValue","type":"record","fields":[{"name":"value",'
        '"type":["null","int","long","PigValue"]}]}',
        -1759257747318642341,
    ),
]


@pytest.mark.parametrize(("schema", "canonical", "fingerprint"), AVRO_VECTORS)
def test_reference_implementations_match_avro_test_vectors(
    schema: str, canonical: str, fingerprint: int
) -> None:
    assert canonical_form(json.loads(schema)) == canonical
    assert crc64_avro(canonical.encode()) == fingerprint.to_bytes(8, "little", signed=True)


def test_timestamps_accept_aware_datetimes(codec: Codec) -> None:
    as_int = RECORDS["UserActivityCount"]
    as_datetime = dict(as_int, last_event_time=dt.datetime.fromtimestamp(T / 1000, dt.UTC))
    assert codec.encode("UserActivityCount", as_datetime) == codec.encode(
        "UserActivityCount", as_int
    )
    assert codec.decode(codec.encode("UserActivityCount", as_datetime)) == as_int


def test_fields_with_defaults_may_be_omitted(codec: Codec) -> None:
    minimal = {"event_id": "e1", "user_id": "u1", "event_type": "APP_OPEN", "event_time": T}
    decoded = codec.decode(codec.encode("ClickEvent", minimal))
    assert decoded["source"] == "UNKNOWN"
    assert decoded["properties"] == {}
    assert decoded["price"] is None


def test_decode_accepts_bytearray_and_memoryview(codec: Codec) -> None:
    encoded = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    assert codec.decode(bytearray(encoded)) == RECORDS["ClickEvent"]
    assert codec.decode(memoryview(encoded)) == RECORDS["ClickEvent"]


# --- schema evolution ---------------------------------------------------------------------------

CLICK_V1 = {
    "event_id": "e-old",
    "user_id": "u1",
    "event_type": "SEARCH",
    "event_time": T,
    "session_id": "s1",
    "page_url": "https://shop.example.com/search",
    "product_id": None,
    "category": None,
    "search_query": "red shoes",
    "order_id": None,
    "currency": None,
    "price": None,
    "quantity": None,
}


def click_v1_bytes() -> bytes:
    """A ClickEvent as a nudgeflow release with schema version 1 wrote it."""
    raw = json.loads((SCHEMA_DIR / "history" / "ClickEvent.v1.avsc").read_text(encoding="utf-8"))
    out = io.BytesIO()
    out.write(b"\xc3\x01" + crc64_avro(canonical_form(raw).encode()))
    fastavro.schemaless_writer(out, fastavro.parse_schema(raw), CLICK_V1)
    return out.getvalue()


def test_v1_click_event_is_read_into_the_current_shape(codec: Codec) -> None:
    data = click_v1_bytes()
    assert data[2:10] != codec.fingerprint("ClickEvent")
    expected = dict(CLICK_V1, source="UNKNOWN", properties={})
    assert codec.decode(data, expect="ClickEvent") == expected
    assert codec.decode_named(data) == ("ClickEvent", expected)
    assert set(codec.decode(data)) == {f["name"] for f in schema_json("ClickEvent")["fields"]}


def test_defaults_filled_in_by_resolution_are_not_shared(codec: Codec) -> None:
    first = codec.decode(click_v1_bytes())
    first["properties"]["mutated"] = "yes"
    assert codec.decode(click_v1_bytes())["properties"] == {}


def test_nested_records_have_no_mutable_defaults() -> None:
    # The codec gives every decoded record its own copy of a dict/list default, but only for
    # top-level fields; a nested field with such a default would need the codec extended.
    def walk(schema: Any, top: bool) -> None:
        if isinstance(schema, list):
            for branch in schema:
                walk(branch, top=False)
        elif isinstance(schema, dict):
            for field in schema.get("fields", []):
                if not top:
                    assert not isinstance(field.get("default"), dict | list), field["name"]
                walk(field["type"], top=False)
            for key in ("items", "values"):
                if key in schema:
                    walk(schema[key], top=False)

    for path in [*SCHEMA_DIR.glob("*.avsc"), *(SCHEMA_DIR / "history").glob("*.avsc")]:
        walk(json.loads(path.read_text(encoding="utf-8")), top=True)


def test_newer_writer_than_reader_is_an_unknown_schema(tmp_path: Path, codec: Codec) -> None:
    # An old nudgeflow (only ClickEvent v1) receiving v2 data must say so clearly.
    (tmp_path / "history").mkdir()
    old = (SCHEMA_DIR / "history" / "ClickEvent.v1.avsc").read_text(encoding="utf-8")
    (tmp_path / "ClickEvent.avsc").write_text(old, encoding="utf-8")
    old_codec = Codec(tmp_path)
    with pytest.raises(UnknownSchemaError) as raised:
        old_codec.decode(codec.encode("ClickEvent", RECORDS["ClickEvent"]))
    message = str(raised.value)
    assert codec.fingerprint("ClickEvent").hex() in message
    assert "ClickEvent (v1)" in message
    assert "upgrade nudgeflow" in message


# --- errors ------------------------------------------------------------------------------------


def test_unknown_fingerprint(codec: Codec) -> None:
    data = b"\xc3\x01" + bytes.fromhex("0123456789abcdef") + b"\x02"
    with pytest.raises(UnknownSchemaError) as raised:
        codec.decode(data)
    message = str(raised.value)
    assert "0123456789abcdef" in message
    for name in codec.schema_names():
        assert name in message
    assert "ClickEvent (v1, v2)" in message
    assert "upgrade nudgeflow" in message
    assert "check the producer" in message


@pytest.mark.parametrize(
    ("data", "says"),
    [
        pytest.param(b"\x00\x00\x00\x00\x07\x02ab", "Confluent", id="confluent-framing"),
        pytest.param(b'{"user_id": "u1"}', "JSON", id="json"),
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\xc3\x01\x7e\x7a", "shorter than the 10-byte header", id="short-header"),
    ],
)
def test_not_single_object(codec: Codec, data: bytes, says: str) -> None:
    with pytest.raises(NotSingleObjectError) as raised:
        codec.decode(data)
    message = str(raised.value)
    assert says in message
    assert "C3 01" in message


def test_missing_marker_names_what_was_found(codec: Codec) -> None:
    body = codec.encode("ClickEvent", RECORDS["ClickEvent"])[2:]
    with pytest.raises(NotSingleObjectError, match="does not start with the marker C3 01"):
        codec.decode(body)
    with pytest.raises(NotSingleObjectError, match="Codec.encode"):
        codec.decode_named(body)


def test_none_is_a_tombstone(codec: Codec) -> None:
    with pytest.raises(NotSingleObjectError, match="tombstone"):
        codec.decode(None)  # type: ignore[arg-type]


def test_truncated_body(codec: Codec) -> None:
    data = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    with pytest.raises(MalformedRecordError) as raised:
        codec.decode(data[:-5])
    message = str(raised.value)
    assert "ClickEvent" in message
    assert "ends too early" in message
    assert "dead-letter" in message


def test_trailing_bytes(codec: Codec) -> None:
    data = codec.encode("UserActivityCount", RECORDS["UserActivityCount"])
    with pytest.raises(MalformedRecordError, match="1 byte.* left over after the body"):
        codec.decode(data + b"\x00")


def test_corrupt_body(codec: Codec) -> None:
    # Right header, but an enum index (zigzag 0x7e = 63) beyond the EventType symbols.
    data = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    event_type_at = 10 + 1 + len(RECORDS["ClickEvent"]["event_id"]) + 1 + len("user-000123")
    corrupt = data[:event_type_at] + b"\x7e" + data[event_type_at + 1 :]
    with pytest.raises(MalformedRecordError, match="cannot decode a ClickEvent record"):
        codec.decode(corrupt)


def test_wrong_expected_schema(codec: Codec) -> None:
    data = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    with pytest.raises(WrongSchemaError) as raised:
        codec.decode(data, expect="UserMetadata")
    message = str(raised.value)
    assert "expected a UserMetadata record" in message
    assert "holds a ClickEvent record" in message
    assert "decode_named" in message


def test_expecting_an_unknown_record_type(codec: Codec) -> None:
    data = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    with pytest.raises(UnknownSchemaError, match="no record type named 'Click'"):
        codec.decode(data, expect="Click")


def test_encode_missing_required_field(codec: Codec) -> None:
    record = {k: v for k, v in RECORDS["ClickEvent"].items() if k != "user_id"}
    with pytest.raises(MalformedRecordError) as raised:
        codec.encode("ClickEvent", record)
    message = str(raised.value)
    assert "cannot encode a ClickEvent record" in message
    assert "field user_id is missing" in message
    assert "schemas/ClickEvent.avsc" in message


def test_encode_wrong_type(codec: Codec) -> None:
    record = dict(RECORDS["ClickEvent"], quantity="two")
    with pytest.raises(
        MalformedRecordError, match="field quantity is 'two' .* expected null or int"
    ):
        codec.encode("ClickEvent", record)


def test_encode_unknown_enum_symbol(codec: Codec) -> None:
    record = dict(RECORDS["ClickEvent"], event_type="CLICK")
    with pytest.raises(MalformedRecordError) as raised:
        codec.encode("ClickEvent", record)
    assert "field event_type is 'CLICK'" in str(raised.value)
    assert "PAGE_VIEW" in str(raised.value)


def test_encode_nested_field_problem(codec: Codec) -> None:
    record = copy.deepcopy(RECORDS["TriggerEvent"])
    del record["explanation"]["rivals"][0]["outcome"]
    with pytest.raises(MalformedRecordError, match="Rival.outcome"):
        codec.encode("TriggerEvent", record)


def test_encode_rejects_unknown_fields(codec: Codec) -> None:
    record = dict(RECORDS["ClickEvent"], sesion_id="typo")
    with pytest.raises(MalformedRecordError, match="sesion_id"):
        codec.encode("ClickEvent", record)


def test_encode_rejects_non_dict(codec: Codec) -> None:
    with pytest.raises(MalformedRecordError, match="must be a dict"):
        codec.encode("ClickEvent", ["not", "a", "record"])  # type: ignore[arg-type]


def test_encode_unknown_record_type(codec: Codec) -> None:
    with pytest.raises(UnknownSchemaError) as raised:
        codec.encode("Clickevent", RECORDS["ClickEvent"])
    assert "no record type named 'Clickevent'" in str(raised.value)
    assert "ClickEvent" in str(raised.value)


def test_every_error_is_a_codec_error_and_a_value_error() -> None:
    for error in (NotSingleObjectError, UnknownSchemaError, WrongSchemaError, MalformedRecordError):
        assert issubclass(error, CodecError)
        assert issubclass(error, ValueError)


# --- loading ------------------------------------------------------------------------------------


def test_load_is_cached() -> None:
    assert Codec.load() is Codec.load()


def test_schema_names(codec: Codec) -> None:
    assert codec.schema_names() == sorted(
        [
            "BackfillRequest",
            "CampaignOutcome",
            "ClickEvent",
            "DeadLetter",
            "DefinitionUpdate",
            "SegmentChange",
            "TriggerDecision",
            "TriggerEvent",
            "UserActivityCount",
            "UserFeaturesState",
            "UserMetadata",
        ]
    )


def test_decode_does_not_parse_schemas(codec: Codec, monkeypatch: pytest.MonkeyPatch) -> None:
    data = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    old = click_v1_bytes()

    def forbidden(*args: object, **kwargs: object) -> None:
        raise AssertionError("schema parsed on the hot path")

    monkeypatch.setattr(codec_module, "parse_schema", forbidden)
    monkeypatch.setattr(codec_module, "to_parsing_canonical_form", forbidden)
    monkeypatch.setattr(json, "loads", forbidden)
    assert codec.decode(data) == RECORDS["ClickEvent"]
    assert codec.decode(old)["source"] == "UNKNOWN"
    assert codec.decode(codec.encode("ClickEvent", RECORDS["ClickEvent"])) == RECORDS["ClickEvent"]


def test_misnamed_schema_file_is_rejected(tmp_path: Path) -> None:
    text = (SCHEMA_DIR / "ClickEvent.avsc").read_text(encoding="utf-8")
    (tmp_path / "Click.avsc").write_text(text, encoding="utf-8")
    with pytest.raises(CodecError, match="file name must be the record name"):
        Codec(tmp_path)


def test_misnamed_history_file_is_rejected(tmp_path: Path) -> None:
    text = (SCHEMA_DIR / "ClickEvent.avsc").read_text(encoding="utf-8")
    (tmp_path / "ClickEvent.avsc").write_text(text, encoding="utf-8")
    (tmp_path / "history").mkdir()
    (tmp_path / "history" / "ClickEvent-1.avsc").write_text(text, encoding="utf-8")
    with pytest.raises(CodecError, match=r"<Name>\.v<N>\.avsc"):
        Codec(tmp_path)


# --- enum and union indexes (fastavro would read -1 as the last symbol) -------------------------


def _click_with_event_type_byte(index_byte: int) -> bytes:
    from schemas.codec import Codec as _Codec
    from tests.builders import click_bytes

    data = bytearray(click_bytes(_Codec.load(), "e1", "u1", "PAGE_VIEW", 1_700_000_000_000))
    data[16] = index_byte  # header 10, "e1" 3, "u1" 3: the EventType index (zig-zag)
    return bytes(data)


@pytest.mark.parametrize("index_byte, index", [(0x01, -1), (0x13, -10), (0x14, 10), (0x7E, 63)])
def test_enum_index_out_of_range_is_rejected(index_byte: int, index: int) -> None:
    from schemas.codec import InvalidEnumIndexError

    with pytest.raises(InvalidEnumIndexError, match=f"EventType index is {index}, "):
        Codec.load().decode(_click_with_event_type_byte(index_byte), expect="ClickEvent")


def test_enum_index_in_range_decodes() -> None:
    assert Codec.load().decode(_click_with_event_type_byte(0x00))["event_type"] == "PAGE_VIEW"


# --- Confluent's wire format (00, 4-byte schema id, body) ---------------------------------------


def _registry(codec: Codec, extra: dict[int, str] | None = None) -> dict[int, str]:
    """A fake registry: ids 1.. hold the current schemas, 99 the ClickEvent of version 1."""
    texts = {n: codec.schema_text(name) for n, name in enumerate(codec.schema_names(), 1)}
    texts[99] = (SCHEMA_DIR / "history" / "ClickEvent.v1.avsc").read_text(encoding="utf-8")
    return {**texts, **(extra or {})}


def _looked_up(registry: dict[int, str], calls: list[int]) -> Any:
    def lookup(schema_id: int) -> str:
        calls.append(schema_id)
        if schema_id not in registry:
            raise LookupError(f"no schema {schema_id}")
        return registry[schema_id]
    return lookup


@pytest.mark.parametrize("name", sorted(RECORDS))
def test_confluent_framed_records_decode_like_single_object(codec: Codec, name: str) -> None:
    registry = _registry(codec)
    schema_id = next(i for i, text in registry.items() if text == codec.schema_text(name))
    calls: list[int] = []
    reader = codec.with_schema_registry(_looked_up(registry, calls))
    single = codec.encode(name, RECORDS[name])
    framed = confluent_framed(single, schema_id)
    assert framed == b"\x00" + schema_id.to_bytes(4, "big") + single[10:]
    assert reader.decode(framed, expect=name) == codec.decode(single)
    assert reader.decode_named(framed) == (name, codec.decode(single))
    assert reader.decode(single) == codec.decode(single)  # both encodings, one reader
    assert calls == [schema_id]  # each id is looked up once


def test_a_past_version_under_its_id_resolves_to_the_current_shape(codec: Codec) -> None:
    reader = codec.with_schema_registry(_looked_up(_registry(codec), []))
    framed = confluent_framed(click_v1_bytes(), 99)
    assert reader.decode(framed, expect="ClickEvent") == codec.decode(click_v1_bytes())


def test_confluent_framing_problems_are_named(codec: Codec) -> None:
    foreign = json.dumps({"type": "record", "name": "Other", "namespace": "x",
                          "fields": [{"name": "a", "type": "int"}]})
    reader = codec.with_schema_registry(_looked_up(_registry(codec, {7: foreign, 8: "{not"}),
                                                   []))
    body = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    with pytest.raises(UnknownSchemaError, match="schema id 5000, which the schema registry "
                       "does not have"):
        reader.decode(confluent_framed(body, 5000))
    with pytest.raises(UnknownSchemaError, match="schema id 7: unknown schema fingerprint"):
        reader.decode(confluent_framed(body, 7))
    with pytest.raises(UnknownSchemaError, match="schema id 8: the registry's schema"):
        reader.decode(confluent_framed(body, 8))
    with pytest.raises(NotSingleObjectError, match="too short for 00 and a 4-byte schema id"):
        reader.decode(b"\x00\x00\x01")
    # without a registry the codec says what the data is and how to read it
    with pytest.raises(NotSingleObjectError, match="Confluent's wire format, schema id 3: a "
                       "reader with a schema registry decodes it"):
        codec.decode(confluent_framed(body, 3))


def test_a_registry_that_cannot_be_asked_is_not_a_bad_record(codec: Codec) -> None:
    def down(schema_id: int) -> str:
        raise ConnectionError("registry down")

    reader = codec.with_schema_registry(down)
    body = codec.encode("ClickEvent", RECORDS["ClickEvent"])
    with pytest.raises(ConnectionError):  # not a CodecError: readers retry, not dead-letter
        reader.decode(confluent_framed(body, 1))


def test_confluent_framed_refuses_what_it_cannot_frame(codec: Codec) -> None:
    with pytest.raises(NotSingleObjectError):
        confluent_framed(b"\x00\x00\x00\x00\x01body", 1)
    with pytest.raises(ValueError, match="4-byte id"):
        confluent_framed(codec.encode("ClickEvent", RECORDS["ClickEvent"]), 1 << 32)


def test_schema_text_is_the_current_schema(codec: Codec) -> None:
    for name in codec.schema_names():
        text = codec.schema_text(name)
        assert json.loads(text) == schema_json(name)
        assert crc64_avro(canonical_form(json.loads(text)).encode()) == codec.fingerprint(name)
