"""Avro single-object encoding of nudgeflow's records: the one module that reads the .avsc files.

By default every Kafka value nudgeflow writes or reads is one record in Avro single-object encoding
(https://avro.apache.org/docs/current/specification/#single-object-encoding)::

    C3 01 | 8-byte little-endian CRC-64-AVRO fingerprint of the schema's Parsing Canonical Form
          | Avro binary body

The fingerprint identifies the writer's schema. A codec made with ``with_schema_registry`` also
decodes Confluent's wire format (``00``, a 4-byte big-endian schema id, the Avro body), which
the job writes with ``output_wire_format: confluent``: it asks the registry for the id's schema
once and then reads the record exactly as if it carried that schema's fingerprint.

The codec knows the current version of every record (``schemas/<Name>.avsc``) and every
published past version (``schemas/history/<Name>.v<N>.avsc``); data written with a past version
is resolved into the current version's shape, with defaults for the fields the writer did not
have.

Python representation: records are plain dicts; enums are their symbol strings; ``bytes`` are
``bytes``; timestamps (``timestamp-millis``) are ``int`` milliseconds since the Unix epoch, UTC,
in both directions (``encode`` also accepts a timezone-aware ``datetime``).

Typical use::

    codec = Codec.load()
    data = codec.encode("ClickEvent", event)
    event = codec.decode(data, expect="ClickEvent")
"""

from __future__ import annotations

import copy
import json
import re
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cache
from importlib.resources import files
from importlib.resources.abc import Traversable
from io import BytesIO
from pathlib import Path
from typing import Any, Final, cast

from fastavro import parse_schema, schemaless_reader, schemaless_writer
from fastavro.schema import fingerprint as _fingerprint_hex
from fastavro.schema import to_parsing_canonical_form
from fastavro.validation import ValidationError, validate

__all__ = [
    "MAGIC",
    "NAMESPACE",
    "Codec",
    "CodecError",
    "InvalidEnumIndexError",
    "MalformedRecordError",
    "Buffer",
    "CONFLUENT_MAGIC",
    "SchemaLookup",
    "confluent_framed",
    "NotSingleObjectError",
    "Record",
    "UnknownSchemaError",
    "WrongSchemaError",
]

MAGIC: Final = b"\xc3\x01"
"""The two marker bytes that start every single-object encoded record."""

NAMESPACE: Final = "io.nudgeflow"
"""Namespace of every nudgeflow record."""

HEADER_SIZE: Final = len(MAGIC) + 8
"""Marker plus fingerprint: the body starts at this offset."""

CONFLUENT_MAGIC: Final = b"\x00"
"""The byte that starts a value in Confluent's wire format (then a 4-byte schema id, the body)."""

CONFLUENT_HEADER_SIZE: Final = len(CONFLUENT_MAGIC) + 4
"""Marker plus big-endian schema id: the Confluent-framed body starts at this offset."""

SchemaLookup = Callable[[int], str]
"""The text of the schema a registry holds under an id; raises ``LookupError`` for an id it
does not have (any other exception means the registry could not be asked, and propagates)."""

Record = dict[str, Any]
"""A decoded record, or one to encode."""

Buffer = bytes | bytearray | memoryview
"""What ``decode`` accepts: the raw Kafka value."""

_HISTORY_NAME: Final = re.compile(
    r"^(?P<name>[A-Za-z_][A-Za-z0-9_]*)\.v(?P<version>[1-9][0-9]*)\.avsc$")


class CodecError(ValueError):
    """Base class of every error raised by the codec; a ``ValueError``."""


class NotSingleObjectError(CodecError):
    """The data is not Avro single-object encoded: no C3 01 marker, or too short."""


class UnknownSchemaError(CodecError):
    """The writer's schema fingerprint, or a requested record name, is not known."""


class WrongSchemaError(CodecError):
    """``decode(expect=...)`` got a record of a different type than expected."""


class MalformedRecordError(CodecError):
    """A body does not decode with its schema, or a record to encode does not match it."""


class InvalidEnumIndexError(MalformedRecordError):
    """An enum (or union branch) index in the body is negative or past the last symbol.

    fastavro would read a negative index as a symbol counted from the end (-1 as the last
    symbol) instead of failing, so the codec checks every index before fastavro reads the body.
    """


@dataclass(frozen=True, slots=True)
class _Writer:
    """What ``encode`` needs for one record type, computed once."""

    name: str
    header: bytes
    schema: Any
    source: str


#: a record's fields as ``_fast_read`` reads them: (name, op, the op's argument) each
_Plan = tuple[tuple[str, int, Any], ...]


@dataclass(frozen=True, slots=True)
class _Reader:
    """What ``decode`` needs for one writer schema version, computed once."""

    name: str
    version: int
    fingerprint: bytes
    writer: Any
    reader: Any
    fresh_defaults: tuple[tuple[str, Any], ...]
    source: str
    enum_scan: tuple[Any, ...] = ()
    """The writer's leading fields up to the last one holding an enum: checked before reading."""
    fast: _Plan | None = None
    """The record's plan for ``_fast_read`` (a current version whose types it reads), or None."""


class Codec:
    """Encodes and decodes nudgeflow records in Avro single-object encoding.

    Construct it once (``Codec.load()``) and share it: all schemas are parsed and all
    fingerprints computed in the constructor, so ``encode`` and ``decode`` only look up a dict
    and call fastavro. An instance is immutable and safe to share between threads.
    """

    def __init__(self, root: Traversable | Path | None = None) -> None:
        """Reads and parses every schema under ``root``.

        Args:
            root: Directory holding ``<Name>.avsc`` and ``history/<Name>.v<N>.avsc``. Defaults
                to this package's directory (works from a source tree and from an installed
                package that ships the .avsc files as package data).

        Raises:
            CodecError: A schema file is invalid, misnamed, or outside the ``io.nudgeflow``
                namespace.
        """
        root = root if root is not None else files(__package__ or "schemas")
        self._writers: dict[str, _Writer] = {}
        self._readers: dict[bytes, _Reader] = {}
        self._names: list[str] = []
        self._versions: dict[str, list[int]] = {}
        self._texts: dict[str, str] = {}
        self._lookup: SchemaLookup | None = None
        self._fingerprints_by_id: dict[int, bytes] = {}

        current: dict[str, tuple[dict[str, Any], str]] = {}
        for entry in sorted(root.iterdir(), key=lambda e: e.name):
            if entry.is_file() and entry.name.endswith(".avsc"):
                raw = _read_schema(entry, f"schemas/{entry.name}")
                name = _check_name(raw, entry.name[: -len(".avsc")], f"schemas/{entry.name}")
                current[name] = (raw, f"schemas/{entry.name}")

        history: dict[str, dict[int, tuple[dict[str, Any], str]]] = {}
        history_dir = root / "history"
        if history_dir.is_dir():
            for entry in sorted(history_dir.iterdir(), key=lambda e: e.name):
                if not entry.name.endswith(".avsc"):
                    continue
                source = f"schemas/history/{entry.name}"
                match = _HISTORY_NAME.match(entry.name)
                if match is None:
                    raise CodecError(
                        f"{source}: a past schema version must be named <Name>.v<N>.avsc, "
                        "e.g. ClickEvent.v1.avsc; rename the file"
                    )
                raw = _read_schema(entry, source)
                name = _check_name(raw, match["name"], source)
                if name not in current:
                    raise CodecError(
                        f"{source}: there is no current schemas/{name}.avsc for this past "
                        "version; restore the current schema or remove the history file"
                    )
                history.setdefault(name, {})[int(match["version"])] = (raw, source)

        for name, (raw, source) in sorted(current.items()):
            past = history.get(name, {})
            version = max(past, default=0) + 1
            self._texts[name] = json.dumps(raw)
            write_schema = parse_schema(raw)
            fingerprint = _fingerprint(write_schema)
            read_schema = cast(dict[str, Any], parse_schema(_without_logical_types(raw)))
            writer = _Writer(name, MAGIC + fingerprint, write_schema, source)
            self._writers[name] = writer
            self._writers[f"{NAMESPACE}.{name}"] = writer
            self._names.append(name)
            self._versions[name] = [*sorted(past), version]
            self._readers[fingerprint] = _Reader(
                name, version, fingerprint, read_schema, None, (), source,
                _enum_scan_plan(read_schema), _fast_plan(read_schema),
            )
            for past_version, (past_raw, past_source) in sorted(past.items()):
                past_fingerprint = _fingerprint(parse_schema(past_raw))
                if past_fingerprint in self._readers:
                    # Same Parsing Canonical Form (only docs, defaults or aliases changed):
                    # the bytes are identical, so the newer reader entry already covers it.
                    continue
                past_read = parse_schema(_without_logical_types(past_raw))
                self._readers[past_fingerprint] = _Reader(
                    name,
                    past_version,
                    past_fingerprint,
                    past_read,
                    read_schema,
                    _added_mutable_defaults(past_raw, read_schema),
                    past_source,
                    _enum_scan_plan(past_read),
                )

    @classmethod
    def load(cls) -> Codec:
        """The codec for the schemas shipped with nudgeflow, created once and cached.

        Returns:
            The shared instance: every current schema plus every past version under
            ``schemas/history/``.
        """
        return _default_codec()

    def schema_names(self) -> list[str]:
        """The short names of all current record types, sorted (``CampaignOutcome``, ...)."""
        return list(self._names)

    def versions(self, name: str) -> list[tuple[int, bytes, dict[str, Any]]]:
        """Every version of a record type this codec reads, oldest first.

        Args:
            name: Short or full record name.

        Returns:
            ``(version, fingerprint, writer schema)`` per version; the schema is the parsed
            (fastavro) form without logical types, as the bytes of that version are laid out.

        Raises:
            UnknownSchemaError: No record type has that name.
        """
        short = self._writer(name).name
        found = [(r.version, r.fingerprint, cast(dict[str, Any], r.writer))
                 for r in self._readers.values() if r.name == short]
        return sorted(found, key=lambda item: item[0])

    def fingerprint(self, name: str) -> bytes:
        """The 8-byte CRC-64-AVRO fingerprint of a record type's current schema.

        Args:
            name: Short (``ClickEvent``) or full (``io.nudgeflow.ClickEvent``) record name.

        Returns:
            The fingerprint in little-endian byte order, as it appears after the marker.

        Raises:
            UnknownSchemaError: No record type has that name.
        """
        return self._writer(name).header[len(MAGIC) :]

    def schema_text(self, name: str) -> str:
        """The current schema of a record type as JSON text, docs included (what a registry gets).

        Raises:
            UnknownSchemaError: No record type has that name.
        """
        return self._texts[self._writer(name).name]

    def with_schema_registry(self, lookup: SchemaLookup) -> Codec:
        """This codec, also decoding Confluent's wire format with the schemas ``lookup`` gives.

        A Confluent-framed value (``00``, schema id, body) is read as the schema version whose
        fingerprint equals that of the registry's schema for the id, so it resolves into the
        current version like single-object data does; a schema that is not one of this
        codec's versions is unknown. Each id is looked up once.

        Args:
            lookup: The registry's schema text for an id (``jobs.schema_registry.schema_lookup``).

        Returns:
            A new codec sharing this one's schemas; this one is unchanged.
        """
        other = copy.copy(self)
        other._lookup = lookup
        other._fingerprints_by_id = {}
        return other

    def encode(self, name: str, record: Mapping[str, Any]) -> bytes:
        """Encodes a record with the current version of its schema.

        Fields that have a default in the schema may be left out of ``record``; fields that
        the schema does not have are an error (they would otherwise be dropped silently).

        Args:
            name: Short or full record name, e.g. ``ClickEvent``.
            record: The record as a dict. Timestamps as int epoch milliseconds (UTC) or
                timezone-aware datetimes.

        Returns:
            Marker, fingerprint and Avro binary body.

        Raises:
            UnknownSchemaError: No record type has that name.
            MalformedRecordError: The record does not match the schema; the message names
                the field.
        """
        writer = self._writer(name)
        out = BytesIO()
        out.write(writer.header)
        try:
            schemaless_writer(out, writer.schema, record, strict_allow_default=True)
        except Exception as exc:
            raise MalformedRecordError(_explain_encode(writer, record, exc)) from exc
        return out.getvalue()

    def decode(self, data: Buffer, expect: str | None = None) -> Record:
        """Decodes one single-object encoded record into the current version of its schema.

        Data written with a past schema version is resolved into the current shape: fields
        the writer did not have get their defaults.

        Args:
            data: The encoded bytes (``bytes``, ``bytearray`` or ``memoryview``).
            expect: Short or full record name the caller requires; ``None`` accepts any
                known record type.

        Returns:
            The record as a dict.

        Raises:
            NotSingleObjectError: No C3 01 marker, or shorter than marker plus fingerprint.
            UnknownSchemaError: The fingerprint is not one of the known schema versions.
            WrongSchemaError: ``expect`` was given and the data holds another record type.
            MalformedRecordError: The body does not decode with the writer's schema.
        """
        reader, raw = self._reader_for(data)
        if expect is not None and expect != reader.name:
            self._check_expected(reader, expect)
        return _read(reader, raw)

    def decode_named(self, data: Buffer) -> tuple[str, Record]:
        """Decodes one record of any known type and says which type it is.

        Args:
            data: The encoded bytes.

        Returns:
            The short record name (e.g. ``ClickEvent``) and the record in its current shape.

        Raises:
            NotSingleObjectError: No C3 01 marker, or shorter than marker plus fingerprint.
            UnknownSchemaError: The fingerprint is not one of the known schema versions.
            MalformedRecordError: The body does not decode with the writer's schema.
        """
        reader, raw = self._reader_for(data)
        return reader.name, _read(reader, raw)

    def _as_single_object(self, raw: bytes) -> bytes:
        """A Confluent-framed value with its header replaced by the single-object one."""
        if len(raw) < CONFLUENT_HEADER_SIZE or self._lookup is None:
            raise NotSingleObjectError(_explain_not_single_object(raw, self._lookup is not None))
        schema_id = int.from_bytes(raw[1:CONFLUENT_HEADER_SIZE], "big")
        fingerprint = self._fingerprints_by_id.get(schema_id)
        if fingerprint is None:
            fingerprint = self._fingerprint_of_id(schema_id, self._lookup)
            self._fingerprints_by_id[schema_id] = fingerprint
        return MAGIC + fingerprint + raw[CONFLUENT_HEADER_SIZE:]

    def _fingerprint_of_id(self, schema_id: int, lookup: SchemaLookup) -> bytes:
        """The fingerprint of the registry's schema for an id, if it is one of ours."""
        try:
            text = lookup(schema_id)
        except LookupError as exc:
            raise UnknownSchemaError(
                f"Confluent-framed record with schema id {schema_id}, which the schema registry "
                f"does not have ({exc}). Check that schema_registry_url names the registry its "
                "producer registered with") from None
        try:
            fingerprint = _fingerprint(parse_schema(json.loads(text)))
        except Exception as exc:  # noqa: BLE001 - any parse failure: the schema is not Avro
            raise UnknownSchemaError(
                f"Confluent-framed record with schema id {schema_id}: the registry's schema for "
                f"it is not an Avro schema this reader can parse ({exc})") from None
        if fingerprint not in self._readers:
            raise UnknownSchemaError(f"Confluent-framed record with schema id {schema_id}: "
                                     + self._explain_unknown_fingerprint(fingerprint))
        return fingerprint

    def _reader_for(self, data: Buffer) -> tuple[_Reader, bytes]:
        """The reader of the data's schema version, and the data with a single-object header."""
        raw = data if type(data) is bytes else _as_bytes(data)
        if raw[:1] == CONFLUENT_MAGIC:
            raw = self._as_single_object(raw)
        if raw[:2] != MAGIC or len(raw) < HEADER_SIZE:
            raise NotSingleObjectError(_explain_not_single_object(raw))
        reader = self._readers.get(raw[2:HEADER_SIZE])
        if reader is None:
            raise UnknownSchemaError(self._explain_unknown_fingerprint(raw[2:HEADER_SIZE]))
        return reader, raw

    def _writer(self, name: str) -> _Writer:
        writer = self._writers.get(name)
        if writer is None:
            raise UnknownSchemaError(
                f"no record type named {name!r}; known: {', '.join(self._names)}. "
                f"Use one of these names, or add schemas/{name}.avsc if it is a new record type"
            )
        return writer

    def _check_expected(self, reader: _Reader, expect: str) -> None:
        if self._writer(expect).name == reader.name:
            return
        raise WrongSchemaError(
            f"expected a {self._writer(expect).name} record but the data holds a {reader.name} "
            f"record (schema version {reader.version}, fingerprint {reader.fingerprint.hex()}). "
            f"Check that the producer writes only {self._writer(expect).name} records to this "
            "topic, or use decode_named() where several record types are expected"
        )

    def _explain_unknown_fingerprint(self, fingerprint: bytes) -> str:
        known = ", ".join(
            f"{name} (v{', v'.join(map(str, self._versions[name]))})" for name in self._names
        )
        return (
            f"unknown schema fingerprint {fingerprint.hex()}: it is not any version of the "
            f"schemas this nudgeflow knows: {known}. The producer wrote the record with a "
            "schema that is newer than this reader or was never published: upgrade nudgeflow "
            "(schemas/) if the producer is newer, otherwise check the producer uses a schema "
            "from schemas/"
        )


@cache
def _default_codec() -> Codec:
    return Codec()


def _read(reader: _Reader, data: bytes) -> Record:
    """Decodes the body after the header; the hot path."""
    if reader.fast is not None:
        record = _fast_read(reader.fast, data)
        if record is not None:
            return record
    if reader.enum_scan:
        _check_enum_indexes(reader, data)
    stream = BytesIO(data)
    stream.seek(HEADER_SIZE)
    try:
        record = cast(Record, schemaless_reader(stream, reader.writer, reader.reader))
    except Exception as exc:
        raise MalformedRecordError(
            f"cannot decode a {reader.name} record (schema version {reader.version}): the body "
            f"of {len(data) - HEADER_SIZE} bytes does not match {reader.source} "
            f"({_describe_read_error(exc)}). The record is truncated or corrupt, or its "
            "producer wrote it with a different schema than its fingerprint claims; send it to "
            "the dead-letter topic and check the producer"
        ) from exc
    if stream.tell() != len(data):
        raise MalformedRecordError(
            f"cannot decode a {reader.name} record (schema version {reader.version}): "
            f"{len(data) - stream.tell()} byte(s) left over after the body. The record is "
            "corrupt, or its producer wrote it with a different schema than its fingerprint "
            "claims; send it to the dead-letter topic and check the producer"
        )
    for field, default in reader.fresh_defaults:
        if record.get(field) is default:
            # fastavro returns the schema's default object itself; give every record its own.
            record[field] = copy.deepcopy(default)
    return record


def _as_bytes(data: object) -> bytes:
    if isinstance(data, bytearray | memoryview):
        return bytes(data)
    if data is None:
        raise NotSingleObjectError(
            "cannot decode None: expected Avro single-object encoded bytes. A null Kafka value "
            "is a tombstone (e.g. a deleted user on the UserMetadata topic): handle it before "
            "decoding"
        )
    raise NotSingleObjectError(
        f"cannot decode a {type(data).__name__}: expected Avro single-object encoded bytes "
        "(bytes, bytearray or memoryview); pass the raw Kafka value"
    )


def _explain_not_single_object(data: bytes, has_registry: bool = False) -> str:
    if data[:1] == CONFLUENT_MAGIC and len(data) < CONFLUENT_HEADER_SIZE and has_registry:
        return (
            f"neither Avro single-object encoding nor Confluent's wire format: {len(data)} "
            f"bytes ({data.hex(' ')}), too short for 00 and a 4-byte schema id. The record was "
            "truncated; check the producer"
        )
    if data[:2] != MAGIC:
        start = data[:8].hex(" ") or "nothing, it is empty"
        hint = ""
        if data[:1] == CONFLUENT_MAGIC and len(data) >= CONFLUENT_HEADER_SIZE:
            schema_id = int.from_bytes(data[1:CONFLUENT_HEADER_SIZE], "big")
            hint = (f" (a leading 00 suggests Confluent's wire format, schema id {schema_id}: "
                    "a reader with a schema registry decodes it, e.g. `nudgeflow sender` with "
                    "schema_registry_url set, or Codec.with_schema_registry)")
        elif data[:1] == CONFLUENT_MAGIC:
            hint = " (a leading 00 suggests Confluent's wire format, but it is too short)"
        elif data[:1] in (b"{", b"["):
            hint = " (it looks like JSON)"
        return (
            f"not Avro single-object encoding: the data does not start with the marker C3 01, "
            f"it starts with {start}{hint}. The producer must write records with "
            "schemas.codec.Codec.encode (marker C3 01, 8-byte schema fingerprint, Avro body)"
        )
    return (
        f"not Avro single-object encoding: {len(data)} bytes is shorter than the "
        f"{HEADER_SIZE}-byte header (marker C3 01 and 8-byte schema fingerprint). The record "
        "was truncated; check the producer and the topic's messages"
    )


def _explain_encode(writer: _Writer, record: object, exc: Exception) -> str:
    problem = str(exc) or type(exc).__name__
    if not isinstance(record, dict):
        problem = f"the record must be a dict, got {type(record).__name__}"
    else:
        problem = _validation_problem(writer, record) or problem
    return (
        f"cannot encode a {writer.name} record: {problem}. Make the record match "
        f"{writer.source}: every field without a default must be present with its type, and "
        "no other fields are allowed"
    )


def _validation_problem(writer: _Writer, record: Record) -> str | None:
    """What fastavro's validator says is wrong with the record, if it can tell."""
    try:
        validate(record, writer.schema, raise_errors=True)
    except ValidationError as invalid:
        return _describe_validation(invalid, writer.name, record)
    except Exception:  # the explanation is best effort; the caller has fastavro's message
        return None
    return None


def _describe_validation(error: ValidationError, name: str, record: Record) -> str:
    """One clause per offending field, e.g. ``field quantity is 'two' (str), expected int``.

    fastavro names a field by its record's full name: ``io.nudgeflow.ClickEvent.user_id``, or
    ``io.nudgeflow.Rival.outcome`` inside a nested record. Top-level fields are shown bare,
    nested ones as ``Rival.outcome``.
    """
    by_field: dict[str, tuple[Any, list[str]]] = {}
    for item in error.errors:
        field = str(item.field).removeprefix(f"{NAMESPACE}.").removeprefix(f"{name}.")
        datum, expected = by_field.setdefault(field, (item.datum, []))
        expected.append(_describe_type(item.schema))
    clauses = []
    for field, (datum, expected) in by_field.items():
        wanted = " or ".join(expected)
        if datum is None and "." not in field and field not in record:
            clauses.append(f"field {field} is missing (expected {wanted}; it has no default)")
        elif datum is None and "." in field:
            clauses.append(f"field {field} is missing or None, expected {wanted}")
        else:
            clauses.append(
                f"field {field} is {datum!r} ({type(datum).__name__}), expected {wanted}"
            )
    return "; ".join(clauses)


def _describe_read_error(exc: Exception) -> str:
    if isinstance(exc, EOFError | StopIteration):
        return "the body ends too early"
    return f"{type(exc).__name__}: {exc}"


def _describe_type(schema: Any) -> str:
    if isinstance(schema, str):
        return schema.removeprefix(f"{NAMESPACE}.")
    if isinstance(schema, list):
        return " or ".join(_describe_type(branch) for branch in schema)
    if isinstance(schema, dict):
        kind = schema.get("type")
        name = str(schema.get("name", "")).removeprefix(f"{NAMESPACE}.")
        if kind == "enum":
            return f"one of the {name} symbols {', '.join(schema['symbols'])}"
        if kind == "record":
            return f"a {name} record (dict)"
        if kind == "array":
            return f"an array of {_describe_type(schema['items'])}"
        if kind == "map":
            return f"a map (dict) of {_describe_type(schema['values'])}"
        if "logicalType" in schema:
            return f"{kind} ({schema['logicalType']})"
        return _describe_type(kind)
    return repr(schema)


def _read_schema(entry: Traversable, source: str) -> dict[str, Any]:
    try:
        raw = json.loads(entry.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CodecError(f"{source}: cannot read the schema ({exc}); fix the file") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise CodecError(f"{source}: the top-level schema must be a record; fix the file")
    return raw


def _check_name(raw: dict[str, Any], expected: str, source: str) -> str:
    if raw.get("name") != expected or raw.get("namespace") != NAMESPACE:
        raise CodecError(
            f"{source}: the record must be named {expected!r} in namespace {NAMESPACE!r} "
            f"(found name {raw.get('name')!r}, namespace {raw.get('namespace')!r}); the file "
            "name must be the record name"
        )
    return expected


def _fingerprint(parsed: Any) -> bytes:
    """CRC-64-AVRO of the Parsing Canonical Form, little-endian, as written after the marker."""
    return bytes.fromhex(_fingerprint_hex(to_parsing_canonical_form(parsed), "CRC-64-AVRO"))


def _without_logical_types(schema: Any) -> Any:
    """The schema minus logicalType annotations, so timestamps decode as plain int millis.

    The Parsing Canonical Form ignores logicalType, so this changes no fingerprint; it only
    spares the reader building a datetime per timestamp.
    """
    if isinstance(schema, dict):
        return {k: _without_logical_types(v) for k, v in schema.items() if k != "logicalType"}
    if isinstance(schema, list):
        return [_without_logical_types(item) for item in schema]
    return schema


def _added_mutable_defaults(
    writer_raw: dict[str, Any], reader_parsed: dict[str, Any]
) -> tuple[tuple[str, Any], ...]:
    """Top-level reader fields missing from the writer whose default is a dict or list.

    Schema resolution fills them with the default object from the parsed reader schema; the
    decoder replaces that shared object with a copy so callers may mutate their record.
    """
    written = {field["name"] for field in writer_raw["fields"]}
    return tuple(
        (field["name"], field["default"])
        for field in reader_parsed["fields"]
        if field["name"] not in written and isinstance(field.get("default"), dict | list)
    )


# --- enum index check ---------------------------------------------------------------------------
#
# fastavro indexes an enum's symbol list (and a union's branches) with the index it reads, so a
# negative index silently becomes a symbol counted from the end. The codec walks the body's
# leading fields, up to the last top-level field that holds an enum, and checks every enum and
# union index on the way before fastavro reads the record (union indexes after that field are
# left to fastavro). For a ClickEvent that is five fields (two strings, an enum,
# a long, an enum): about a microsecond.


class _Stop(Exception):
    """The body ended inside the scanned fields: fastavro's read reports it."""


def _enum_scan_plan(parsed: Any) -> tuple[Any, ...]:
    """The checks of a parsed writer schema's leading fields, up to the last holding an enum.

    Returns a flat tuple of ``(op, arg)`` steps (``_compile``); empty when no field holds an
    enum.
    """
    names: dict[str, Any] = {}
    _collect_names(parsed, names)
    fields = parsed.get("fields", []) if isinstance(parsed, dict) else []
    last = -1
    for i, field in enumerate(fields):
        if _holds_enum(field["type"], names, set()):
            last = i
    steps: list[tuple[int, Any]] = []
    for field in fields[: last + 1]:
        _compile(field["type"], names, steps)
    return tuple(steps)


_BYTES: Final = 0
_VARINT: Final = 1
_ENUM: Final = 2
_FIXED: Final = 3
_UNION: Final = 4
_GENERIC: Final = 5


def _compile(schema: Any, names: dict[str, Any], steps: list[tuple[int, Any]]) -> None:
    """Append the steps that skip ``schema`` and check its enum and union indexes."""
    if isinstance(schema, str):
        if schema in _FIXED_SIZES:
            if _FIXED_SIZES[schema]:
                steps.append((_FIXED, _FIXED_SIZES[schema]))
        elif schema in ("int", "long"):
            steps.append((_VARINT, None))
        elif schema in ("string", "bytes"):
            steps.append((_BYTES, None))
        else:
            _compile(names[schema], names, steps)
    elif isinstance(schema, list):
        branches = []
        for branch in schema:
            branch_steps: list[tuple[int, Any]] = []
            _compile(branch, names, branch_steps)
            branches.append(tuple(branch_steps))
        steps.append((_UNION, tuple(branches)))
    elif schema["type"] == "enum":
        steps.append((_ENUM, (len(schema["symbols"]),
                              str(schema["name"]).removeprefix(NAMESPACE + "."))))
    elif schema["type"] == "record":
        for field in schema["fields"]:
            _compile(field["type"], names, steps)
    elif schema["type"] == "fixed":
        steps.append((_FIXED, int(schema["size"])))
    elif schema["type"] in ("array", "map"):
        steps.append((_GENERIC, (schema, names)))
    else:
        _compile(schema["type"], names, steps)


def _collect_names(schema: Any, names: dict[str, Any]) -> None:
    if isinstance(schema, list):
        for branch in schema:
            _collect_names(branch, names)
    elif isinstance(schema, dict):
        if schema.get("type") in ("record", "enum", "fixed") and "name" in schema:
            names[schema["name"]] = schema
        for field in schema.get("fields", []):
            _collect_names(field["type"], names)
        for key in ("items", "values"):
            if key in schema:
                _collect_names(schema[key], names)


def _holds_enum(schema: Any, names: dict[str, Any], seen: set[str]) -> bool:
    if isinstance(schema, str):
        if schema in names and schema not in seen:
            return _holds_enum(names[schema], names, seen | {schema})
        return False
    if isinstance(schema, list):
        return any(_holds_enum(branch, names, seen) for branch in schema)
    if not isinstance(schema, dict):
        return False
    kind = schema.get("type")
    if kind == "enum":
        return True
    if kind == "record":
        return any(_holds_enum(f["type"], names, seen) for f in schema["fields"])
    if kind in ("array", "map"):
        return _holds_enum(schema.get("items", schema.get("values")), names, seen)
    return isinstance(kind, dict | list) and _holds_enum(kind, names, seen)


def _check_enum_indexes(reader: _Reader, data: bytes) -> None:
    """Raise InvalidEnumIndexError if an enum or union index in the scanned fields is bad.

    A body that ends early is left to fastavro's read to report.
    """
    try:
        _run_steps(reader.enum_scan, data, HEADER_SIZE, reader)
    except (_Stop, IndexError):
        return


def _run_steps(steps: tuple[Any, ...], data: bytes, pos: int, reader: _Reader) -> int:
    for op, arg in steps:
        if op == _FIXED:
            pos += arg
            continue
        if op == _GENERIC:
            pos = _skip(arg[0], data, pos, arg[1], reader)
            continue
        byte = data[pos]
        if byte < 0x80:  # a one-byte varint: the common case
            value = (byte >> 1) ^ -(byte & 1)
            pos += 1
        else:
            value, pos = _varint(data, pos)
        if op == _BYTES:
            if value < 0 or pos + value > len(data):
                raise _Stop
            pos += value
        elif op == _ENUM:
            if not 0 <= value < arg[0]:
                raise InvalidEnumIndexError(_explain_index(reader, f"enum {arg[1]}", value,
                                                           arg[0]))
        elif op == _UNION:
            if not 0 <= value < len(arg):
                raise InvalidEnumIndexError(_explain_index(reader, "union branch", value,
                                                           len(arg)))
            pos = _run_steps(arg[value], data, pos, reader)
    return pos


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    raw = shift = 0
    while True:
        byte = data[pos]
        pos += 1
        raw |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return (raw >> 1) ^ -(raw & 1), pos
        shift += 7
        if shift > 63:
            raise _Stop


_FIXED_SIZES: Final = {"null": 0, "boolean": 1, "float": 4, "double": 8}


def _skip(schema: Any, data: bytes, pos: int, names: dict[str, Any], reader: _Reader) -> int:
    if isinstance(schema, str):
        if schema in _FIXED_SIZES:
            return pos + _FIXED_SIZES[schema]
        if schema in ("int", "long"):
            return _varint(data, pos)[1]
        if schema in ("string", "bytes"):
            length, pos = _varint(data, pos)
            if length < 0 or pos + length > len(data):
                raise _Stop
            return pos + length
        return _skip(names[schema], data, pos, names, reader)
    if isinstance(schema, list):
        index, pos = _varint(data, pos)
        if not 0 <= index < len(schema):
            raise InvalidEnumIndexError(_explain_index(reader, "union branch", index, len(schema)))
        return _skip(schema[index], data, pos, names, reader)
    kind = schema["type"]
    if kind == "enum":
        index, pos = _varint(data, pos)
        if not 0 <= index < len(schema["symbols"]):
            raise InvalidEnumIndexError(_explain_index(
                reader, f"enum {str(schema['name']).removeprefix(NAMESPACE + '.')}", index,
                len(schema["symbols"])))
        return pos
    if kind == "record":
        for field in schema["fields"]:
            pos = _skip(field["type"], data, pos, names, reader)
        return pos
    if kind == "fixed":
        return pos + int(schema["size"])
    if kind in ("array", "map"):
        while True:
            count, pos = _varint(data, pos)
            if count == 0:
                return pos
            if count < 0:
                count = -count
                pos = _varint(data, pos)[1]  # the block's size in bytes
            for _ in range(count):
                if kind == "map":
                    pos = _skip("string", data, pos, names, reader)
                    pos = _skip(schema["values"], data, pos, names, reader)
                else:
                    pos = _skip(schema["items"], data, pos, names, reader)
    return _skip(kind, data, pos, names, reader)


def _explain_index(reader: _Reader, what: str, index: int, size: int) -> str:
    return (
        f"cannot decode a {reader.name} record (schema version {reader.version}): the {what} "
        f"index is {index}, but it has {size} value(s) (valid indexes 0..{size - 1}). The "
        "record is corrupt or was forged; send it to the dead-letter topic and check the "
        "producer"
    )


def confluent_framed(single_object: Buffer, schema_id: int) -> bytes:
    """A single-object encoded record in Confluent's wire format, under a registry's schema id.

    The body is the same Avro binary; only the header changes (``C3 01`` + fingerprint becomes
    ``00`` + the id, big-endian). The job's ``io.nudgeflow.flink.RouteEngineRecords`` does the
    same in Java; this one is for Python producers and tests.

    Raises:
        NotSingleObjectError: ``single_object`` has no single-object header.
        ValueError: ``schema_id`` does not fit in 4 bytes.
    """
    raw = bytes(single_object)
    if raw[:2] != MAGIC or len(raw) < HEADER_SIZE:
        raise NotSingleObjectError(_explain_not_single_object(raw))
    if not 0 <= schema_id < 1 << 32:
        raise ValueError(f"schema id {schema_id} does not fit Confluent's 4-byte id")
    return CONFLUENT_MAGIC + schema_id.to_bytes(4, "big") + raw[HEADER_SIZE:]


# --- the fast reader ----------------------------------------------------------------------------
#
# fastavro reads a record by walking its parsed schema, a tree of dicts and type-name strings,
# at every record: for a ClickEvent that is most of a decode (~5 µs warm, ~12 µs an event in the
# domain loop, where its large code and schema dicts are out of the caches: the largest single
# item of the loop, docs/performance.md). ``_fast_plan`` compiles a current schema (no reader
# schema to resolve into) once into nested tuples of small ints, and ``_fast_read`` reads a body
# with them. It reads only what it can read exactly as fastavro does: anything else (an index
# out of range, a boolean byte that is neither 0 nor 1, a varint beyond 64 bits, a negative
# block count, bad UTF-8, a body too short or too long) makes it give up, and fastavro reads
# the record (and reports what is wrong with it, as before). A differential unit test holds it
# to fastavro's result on valid and corrupted bodies.

_F_NULL: Final = 0
_F_BOOLEAN: Final = 1
_F_LONG: Final = 2
_F_FLOAT: Final = 3
_F_DOUBLE: Final = 4
_F_BYTES: Final = 5
_F_STRING: Final = 6
_F_ENUM: Final = 7
_F_UNION: Final = 8
_F_MAP: Final = 9
_F_ARRAY: Final = 10
_F_RECORD: Final = 11
_F_PRIMITIVES: Final = {
    "null": _F_NULL, "boolean": _F_BOOLEAN, "int": _F_LONG, "long": _F_LONG, "float": _F_FLOAT,
    "double": _F_DOUBLE, "bytes": _F_BYTES, "string": _F_STRING}
_INT64_MIN: Final = -(1 << 63)
_INT64_MAX: Final = (1 << 63) - 1
_FLOAT: Final = struct.Struct("<f")
_DOUBLE: Final = struct.Struct("<d")


class _GiveUp(Exception):
    """The fast reader met something it does not read as fastavro does: fastavro reads it."""


def _fast_plan(parsed: Any) -> _Plan | None:
    """A record schema's plan for ``_fast_read``: ``((field name, op, arg), ...)``.

    None when the schema has a type the fast reader does not read (a logical type, a fixed, a
    recursive record).
    """
    names: dict[str, Any] = {}
    _collect_names(parsed, names)
    try:
        op, arg = _fast_op(parsed, names, ())
    except _GiveUp:
        return None
    return cast(_Plan, arg) if op == _F_RECORD else None


def _fast_op(schema: Any, names: dict[str, Any], inside: tuple[str, ...]) -> tuple[int, Any]:
    """The ``(op, arg)`` that reads one value of ``schema``."""
    if isinstance(schema, str):
        if schema in _F_PRIMITIVES:
            return _F_PRIMITIVES[schema], None
        if schema in names and schema not in inside:
            return _fast_op(names[schema], names, (*inside, schema))
        raise _GiveUp
    if isinstance(schema, list):
        return _F_UNION, tuple(_fast_op(branch, names, inside) for branch in schema)
    if not isinstance(schema, dict) or "logicalType" in schema:
        raise _GiveUp
    kind = schema.get("type")
    if kind == "enum":
        return _F_ENUM, tuple(str(symbol) for symbol in schema["symbols"])
    if kind == "record":
        inside = (*inside, str(schema.get("name")))
        return _F_RECORD, tuple((str(field["name"]), *_fast_op(field["type"], names, inside))
                                for field in schema["fields"])
    if kind == "map":
        return _F_MAP, _fast_op(schema["values"], names, inside)
    if kind == "array":
        return _F_ARRAY, _fast_op(schema["items"], names, inside)
    if isinstance(kind, str) and kind in _F_PRIMITIVES and len(schema) == 1:
        return _F_PRIMITIVES[kind], None
    raise _GiveUp


class _Cursor:
    """A body and the position of the next byte to read."""

    def __init__(self, data: bytes, pos: int) -> None:
        self.data = data
        self.pos = pos


def _fast_read(plan: _Plan, data: bytes) -> Record | None:
    """The record of a body after the header, as fastavro reads it; None: fastavro must read it."""
    cursor = _Cursor(data, HEADER_SIZE)
    try:
        record = _fast_record(plan, cursor)
    except Exception:  # noqa: BLE001 - whatever went wrong, fastavro reads it and says what
        return None
    return record if cursor.pos == len(data) else None


def _fast_record(plan: _Plan, cursor: _Cursor) -> dict[str, Any]:
    record: dict[str, Any] = {}
    for name, op, arg in plan:
        record[name] = _fast_value(op, arg, cursor)
    return record


def _fast_long(cursor: _Cursor) -> int:
    """A zigzag varint, as fastavro's 64-bit arithmetic reads it (give up beyond 64 bits)."""
    data, pos = cursor.data, cursor.pos
    byte = data[pos]
    if byte < 0x80:  # one byte: the common case
        cursor.pos = pos + 1
        return (byte >> 1) ^ -(byte & 1)
    value, pos = _varint(data, pos)  # the enum scan's reader: _Stop beyond ten bytes
    if not _INT64_MIN <= value <= _INT64_MAX:  # bits beyond 64: fastavro's C arithmetic drops them
        raise _GiveUp
    cursor.pos = pos
    return value


def _fast_bytes(cursor: _Cursor) -> bytes:
    size = _fast_long(cursor)
    start = cursor.pos
    end = start + size
    if size < 0 or end > len(cursor.data):
        raise _GiveUp
    cursor.pos = end
    return cursor.data[start:end]


def _fast_value(op: int, arg: Any, cursor: _Cursor) -> Any:
    if op == _F_STRING:
        return _fast_bytes(cursor).decode("utf-8")
    if op == _F_UNION:
        index = _fast_long(cursor)
        if not 0 <= index < len(arg):
            raise _GiveUp
        branch_op, branch_arg = arg[index]
        return _fast_value(branch_op, branch_arg, cursor)
    if op == _F_LONG:
        return _fast_long(cursor)
    if op == _F_ENUM:
        index = _fast_long(cursor)
        if not 0 <= index < len(arg):
            raise _GiveUp
        return arg[index]
    if op == _F_NULL:
        return None
    if op == _F_DOUBLE:
        value = _DOUBLE.unpack_from(cursor.data, cursor.pos)[0]
        cursor.pos += 8
        return value
    if op == _F_BOOLEAN:
        byte = cursor.data[cursor.pos]
        if byte > 1:
            raise _GiveUp
        cursor.pos += 1
        return byte == 1
    if op == _F_MAP or op == _F_ARRAY:
        # blocks of items up to an empty one; a negative count (then the block's size in
        # bytes) is valid Avro that fastavro's writer never writes: given up
        item_op, item_arg = arg
        items: Any = {} if op == _F_MAP else []
        count = _fast_long(cursor)
        while count > 0:
            for _ in range(count):
                if op == _F_MAP:
                    key = _fast_bytes(cursor).decode("utf-8")
                    items[key] = _fast_value(item_op, item_arg, cursor)
                else:
                    items.append(_fast_value(item_op, item_arg, cursor))
            count = _fast_long(cursor)
        if count < 0:
            raise _GiveUp
        return items
    if op == _F_RECORD:
        return _fast_record(arg, cursor)
    if op == _F_FLOAT:
        value = _FLOAT.unpack_from(cursor.data, cursor.pos)[0]
        cursor.pos += 4
        return value
    if op == _F_BYTES:
        return _fast_bytes(cursor)
    raise _GiveUp
