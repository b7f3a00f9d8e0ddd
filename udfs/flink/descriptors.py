"""Row types, state descriptors and output tags of the job, in one place.

Every record crossing a Flink boundary has a declared type here (no pickled rows), so the
serializers are fast and a savepoint's state schema is explicit.
"""

from __future__ import annotations

import struct
from typing import Any

from pyflink.common import Types
from pyflink.datastream import OutputTag
from pyflink.datastream.state import MapStateDescriptor, ValueStateDescriptor

#: A Kafka record as nudgeflow-flink's KafkaRecordWithMetadataDeserializer emits it
#: (``traceparent``: its W3C trace context header, or None).
SOURCE_RECORD_FIELDS = ("topic", "partition", "offset", "timestamp", "key", "value",
                        "traceparent")
SOURCE_RECORD_ROW = Types.ROW_NAMED(
    list(SOURCE_RECORD_FIELDS),
    [Types.STRING(), Types.INT(), Types.LONG(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING()],
)

#: What the routed Kafka sink writes: Row(topic, key, value, traceparent or None); see
#: RoutedRecordSerializer.java (the traceparent becomes the record's header).
KAFKA_OUT_ROW = Types.ROW_NAMED(
    ["topic", "key", "value", "traceparent"],
    [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE()),
     Types.STRING()],
)

#: Rejected input, already encoded as DeadLetter records for the dead-letter topic.
DEAD_LETTER_TAG = OutputTag("dead-letters", KAFKA_OUT_ROW)

#: What the per-user engine emits: SegmentChanges, TriggerEvents, TriggerDecisions and the
#: DeadLetters of changes a store refused, as
#: Row(record name, priority tier or None, key, Avro value, traceparent or None: the cause
#: click's trace, udfs/tracing.py), routed to their topics by
#: ``io.nudgeflow.flink.RouteEngineRecords`` (``jobs.job.route_engine_records``). One output, not
#: side outputs: PyFlink 2.2's thread mode drops side outputs yielded from a keyed broadcast
#: function's ``on_timer`` (it does not pass its results through the side-output collector).
ENGINE_OUTPUT_ROW = Types.ROW_NAMED(
    ["record", "tier", "key", "value", "traceparent"],
    [Types.STRING(), Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING()],
)


#: What the per-user engine consumes, keyed by user id: a click as its Kafka record (``payload``
#: = the producer's bytes, decoded and validated by the engine itself; ``partition``, ``offset``
#: and ``key`` for its dead letter; ``event_time`` unset, read when decoded), built in Java
#: (``io.nudgeflow.flink.ClickEngineInput``) so no Python operator runs before the engine; or a
#: user's metadata, validated upstream (``event_time`` = its updated_at); or (kind ``erase``,
#: no payload) a user-metadata tombstone, ``event_time`` = its Kafka timestamp. ``traceparent``: a
#: click's W3C trace context header (None otherwise). Bytes, not a row of
#: the record's fields: a nested row costs a per-field serialization on the shuffle and a
#: per-field conversion into and out of Python.
ENGINE_INPUT_ROW = Types.ROW_NAMED(
    ["kind", "user_id", "event_time", "ingest_time", "payload", "partition", "offset", "key",
     "traceparent"],
    [Types.STRING(), Types.STRING(), Types.LONG(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.INT(), Types.LONG(),
     Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.STRING()],
)

#: The kinds of ENGINE_INPUT_ROW the Java operator that orders inputs
#: (``io.nudgeflow.flink.ReleaseInEventTimeOrder``) gives the inputs an erasure found waiting:
#: they follow the ``erase`` row and the engine drops and counts them.
ERASED_CLICK = "erased-click"
ERASED_KINDS = (ERASED_CLICK, "erased-input")

#: The kind of the ENGINE_INPUT_ROW that hands on a user's inputs at once once the watermark
#: passed them (``io.nudgeflow.flink.ReleaseInEventTimeOrder.batch``): ``event_time`` = the
#: time up to which they are applied, ``payload`` = the inputs (``read_batch``).
BATCH = "batch"
_BATCH_KINDS = ("metadata", "click", "outcome")
_BATCH_ENTRY = struct.Struct(">bqqiq")
_LENGTH = struct.Struct(">i")
_NONE = -(2**63)


def read_batch(user_id: str, payload: bytes) -> list[tuple[Any, ...]]:
    """The engine input rows a ``batch`` row carries, in order, as tuples of ENGINE_INPUT_ROW.

    The encoding is ``ReleaseInEventTimeOrder.batch``'s (big-endian): kind (0 metadata, 1
    click, 2 outcome), event_time and ingest_time (Long.MIN_VALUE: none), partition, offset,
    then key, payload and traceparent as a 4-byte length (-1: none) and the bytes.

    Raises:
        ValueError: bytes that are not such a list (a build mismatch: the jar and the Python
            must come from one checkout).
    """
    rows: list[tuple[Any, ...]] = []
    offset = 0
    try:
        while offset < len(payload):
            kind, event_time, ingest_time, partition, position = _BATCH_ENTRY.unpack_from(
                payload, offset)
            offset += _BATCH_ENTRY.size
            fields: list[bytes | None] = []
            for _ in range(3):
                (length,) = _LENGTH.unpack_from(payload, offset)
                offset += _LENGTH.size
                if length < 0:
                    fields.append(None)
                    continue
                if offset + length > len(payload):
                    raise struct.error("a field runs past the end")
                fields.append(payload[offset:offset + length])
                offset += length
            key, value, trace = fields
            rows.append((_BATCH_KINDS[kind], user_id,
                         None if event_time == _NONE else event_time,
                         None if ingest_time == _NONE else ingest_time, value,
                         None if partition < 0 else partition, None if position < 0 else position,
                         key, None if trace is None else trace.decode()))
    except (struct.error, IndexError, UnicodeDecodeError) as exc:
        raise ValueError(f"a batch of inputs for user {user_id!r} is malformed at byte "
                         f"{offset}: {exc}; the job's jar and its Python must be one build")\
            from exc
    return rows


#: A validated DefinitionUpdate (payload = its Avro single-object bytes), broadcast to every
#: engine instance.
DEFINITION_ROW = Types.ROW_NAMED(
    ["definition_id", "payload"], [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE())]
)


# State holding bytes is declared PICKLED_BYTE_ARRAY: in thread mode PyFlink 2.2 converts a
# PRIMITIVE_ARRAY(BYTE) state value to a tuple of ints and fails on an empty one. The value
# pickled is always a plain ``bytes`` of our own versioned encoding (Avro), never an object.
BYTES_STATE = Types.PICKLED_BYTE_ARRAY()


def definitions_state() -> MapStateDescriptor:
    """Broadcast state: definition id -> the DefinitionUpdate (Avro bytes) in force."""
    return MapStateDescriptor("definitions", Types.STRING(), BYTES_STATE)


def user_features_state() -> ValueStateDescriptor:
    """Per user: behavioural features, encoded by udfs.features.encode_state."""
    return ValueStateDescriptor("features", BYTES_STATE)


def user_metadata_state() -> ValueStateDescriptor:
    """Per user: the latest UserMetadata, Avro single-object bytes (versioned by fingerprint)."""
    return ValueStateDescriptor("metadata", BYTES_STATE)


def membership_state() -> ValueStateDescriptor:
    """Per user: segment id -> definition version the user entered under."""
    return ValueStateDescriptor("membership", Types.MAP(Types.STRING(), Types.INT()))


def expiry_timer_state() -> ValueStateDescriptor:
    """Per user: the event time of the state-expiry timer of builds before the user clock.

    No longer written (the expiry is one of the clock's due times); read never, cleared with
    the user's state. Kept so a savepoint of those builds restores under the same name.
    """
    return ValueStateDescriptor("expiry-timer", Types.LONG())


def user_clock_state() -> ValueStateDescriptor:
    """Per user: the clock, pending inputs and due times (``udfs.clock.encode_clock``).

    Added with event-time-exact application; a savepoint from before has none for any user,
    and the engine starts each user's clock from the rest of their state.
    """
    return ValueStateDescriptor("clock", BYTES_STATE)


def erased_state() -> ValueStateDescriptor:
    """Per user: True from an erasure (a user-metadata tombstone) until the user re-registers.

    The one thing kept of an erased user, and only while they have no other state (see
    ``udfs.engine.Erasure`` for why it is kept). Added with erasure: a savepoint from before has
    it for no user (nobody was erased), so it restores unchanged. A build from before never reads
    it: restored there, an erased user's later clicks would start them afresh.
    """
    return ValueStateDescriptor("erased", Types.BOOLEAN())


def campaign_state() -> ValueStateDescriptor:
    """Per user: sends, decided trigger ids, deferred candidates.

    Encoded by udfs.campaigns.arbitration.encode_state.
    """
    return ValueStateDescriptor("campaigns", BYTES_STATE)


def campaign_stats_state() -> ValueStateDescriptor:
    """Per campaign or journey: its closed-loop statistics (``udfs.attribution.stats``, JSON)."""
    return ValueStateDescriptor("campaign-stats", BYTES_STATE)
