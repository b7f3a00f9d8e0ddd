"""The codec's fast reader against fastavro: the same records from the same bytes, or fastavro's.

``schemas.codec._fast_read`` reads the current version of a record without fastavro; whatever
it cannot read exactly as fastavro does, it hands to fastavro. Here seeded random records of
every record type, with the values fastavro's own arithmetic is hardest on (64-bit extremes,
NaN, non-ASCII strings, empty and many-entry maps), and thousands of corrupted bodies of them
(bytes changed, cut, added) are decoded both ways: the outcome (the record, or the error's type
and message) must be the same, and compared by ``repr`` so an ``int`` read as a ``float``, a
``True`` as a ``1`` or a key order would differ.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from typing import Any

import pytest

from schemas import codec as codec_module
from schemas.codec import HEADER_SIZE, Codec

SEED = 20261206
RECORDS_PER_TYPE = 60
CORRUPTIONS_PER_RECORD = 25
#: the records the engine decodes on its hot path: the fast reader must read them
HOT = ("ClickEvent", "UserMetadata", "CampaignOutcome")

_LONGS = (0, 1, -1, 63, 64, -64, -65, 2**31 - 1, -(2**31), 2**53 + 1, 2**63 - 1, -(2**63))
_INTS = (0, 1, -1, 63, -65, 2**31 - 1, -(2**31))
_DOUBLES = (0.0, -0.0, 1.5, -2.25e300, 5e-324, math.inf, -math.inf, math.nan)
_STRINGS = ("", "a", "é", "日本語", "emoji 🙂", "x" * 200, "\x00nul", "tab\tand\nnewline")


def _value(schema: Any, names: dict[str, Any], rng: random.Random) -> Any:
    """A random value of a raw (JSON) schema that ``Codec.encode`` accepts."""
    if isinstance(schema, list):
        return _value(rng.choice(schema), names, rng)
    if isinstance(schema, str):
        if schema in names:
            return _value(names[schema], names, rng)
        return _primitive(schema, rng)
    kind = schema["type"]
    if kind == "record":
        names[schema["name"]] = schema
        names[f"io.nudgeflow.{schema['name']}"] = schema
        return {field["name"]: _value(field["type"], names, rng) for field in schema["fields"]}
    if kind == "enum":
        names[schema["name"]] = schema
        names[f"io.nudgeflow.{schema['name']}"] = schema
        return rng.choice(schema["symbols"])
    if kind == "map":
        size = rng.choice((0, 1, 2, 40))
        return {f"k{i}-{rng.choice(_STRINGS)}": _value(schema["values"], names, rng)
                for i in range(size)}
    if kind == "array":
        return [_value(schema["items"], names, rng) for _ in range(rng.choice((0, 1, 3, 70)))]
    if kind == "fixed":
        names[schema["name"]] = schema
        return rng.randbytes(schema["size"])
    if isinstance(kind, str):  # {"type": "long", "logicalType": ...} and the like
        return _primitive(kind, rng)
    return _value(kind, names, rng)


def _primitive(kind: str, rng: random.Random) -> Any:
    if kind == "null":
        return None
    if kind == "boolean":
        return rng.random() < 0.5
    if kind == "int":
        return rng.choice(_INTS) if rng.random() < 0.5 else rng.randint(-(2**31), 2**31 - 1)
    if kind == "long":
        return rng.choice(_LONGS) if rng.random() < 0.5 else rng.randint(-(2**63), 2**63 - 1)
    if kind in ("float", "double"):
        return rng.choice(_DOUBLES) if rng.random() < 0.5 else rng.uniform(-1e6, 1e6)
    if kind == "bytes":
        return rng.randbytes(rng.choice((0, 1, 17)))
    if kind == "string":
        return rng.choice(_STRINGS) if rng.random() < 0.7 else f"s{rng.random()}"
    raise AssertionError(f"no value for {kind}")


def _outcome(reader: Any, data: bytes) -> tuple[str, ...]:
    try:
        return ("record", repr(codec_module._read(reader, data)))
    except Exception as exc:  # noqa: BLE001 - the error is the outcome compared
        return ("error", type(exc).__name__, str(exc))


def _corrupt(data: bytes, rng: random.Random) -> bytes:
    """The body changed in one of the ways a broken producer or a bad disk changes it."""
    body = bytearray(data[HEADER_SIZE:])
    how = rng.randrange(5)
    if how == 0 and body:  # a byte changed
        body[rng.randrange(len(body))] = rng.randrange(256)
    elif how == 1:  # cut short
        del body[rng.randrange(len(body) + 1):]
    elif how == 2:  # bytes added at the end
        body += rng.randbytes(rng.randint(1, 3))
    elif how == 3:  # a byte inserted
        body.insert(rng.randrange(len(body) + 1), rng.choice((0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF)))
    elif body:  # a run of continuation bytes: a varint beyond 64 bits
        at = rng.randrange(len(body))
        body[at:at] = b"\xff" * rng.randint(8, 11)
    return data[:HEADER_SIZE] + bytes(body)


@pytest.fixture(scope="module")
def codec() -> Codec:
    return Codec()


def _current_readers(codec: Codec) -> dict[str, Any]:
    readers = {}
    for name in codec.schema_names():
        readers[name] = codec._readers[codec._writer(name).header[2:]]
    return readers


def test_the_hot_records_have_a_fast_plan(codec: Codec) -> None:
    readers = _current_readers(codec)
    for name in HOT:
        assert readers[name].fast is not None, f"{name} is read by fastavro alone"
    # a past version is resolved into the current shape: fastavro's alone
    past = [reader for reader in codec._readers.values() if reader.reader is not None]
    assert past and all(reader.fast is None for reader in past)


def test_valid_records_read_as_fastavro_reads_them(codec: Codec) -> None:
    rng = random.Random(SEED)
    read_fast = 0
    for name, reader in sorted(_current_readers(codec).items()):
        raw = json.loads(codec.schema_text(name))
        slow = dataclasses.replace(reader, fast=None)
        for _ in range(RECORDS_PER_TYPE):
            record = _value(raw, {}, rng)
            data = codec.encode(name, record)
            assert _outcome(reader, data) == _outcome(slow, data), (name, record)
            if reader.fast is not None:
                assert codec_module._fast_read(reader.fast, data) is not None, (name, record)
                read_fast += 1
    assert read_fast >= len(HOT) * RECORDS_PER_TYPE


def test_corrupted_bodies_read_or_fail_as_with_fastavro(codec: Codec) -> None:
    rng = random.Random(SEED + 1)
    given_up = read = 0
    for name, reader in sorted(_current_readers(codec).items()):
        if reader.fast is None:
            continue
        raw = json.loads(codec.schema_text(name))
        slow = dataclasses.replace(reader, fast=None)
        for _ in range(RECORDS_PER_TYPE):
            data = codec.encode(name, _value(raw, {}, rng))
            for _ in range(CORRUPTIONS_PER_RECORD):
                bad = _corrupt(data, rng)
                assert _outcome(reader, bad) == _outcome(slow, bad), (name, bad.hex())
                if codec_module._fast_read(reader.fast, bad) is None:
                    given_up += 1
                else:
                    read += 1
    # both ways were taken: bodies still valid after the change, and bodies handed to fastavro
    assert given_up > 1000 and read > 1000, (given_up, read)


def test_the_generator_s_clicks_read_as_fastavro_reads_them(codec: Codec) -> None:
    from jobs.workload.workload import WorkloadSpec, generate_events

    reader = _current_readers(codec)["ClickEvent"]
    slow = dataclasses.replace(reader, fast=None)
    for event in generate_events(WorkloadSpec(users=50, events=2_000, seed=SEED)):
        data = codec.encode("ClickEvent", event)
        assert _outcome(reader, data) == _outcome(slow, data)
        assert codec_module._fast_read(reader.fast, data) == event
