"""Decode and validate the job's input records; dead-letter what is bad.

- ``DecodeRecordsFunction``: Kafka record rows of the user-metadata, outcomes and definitions
  topics ->
  rows of valid records; rejected records -> the dead-letter side output (encoded DeadLetter
  rows ready for the Kafka sink). Never raises on bad input. Clicks are decoded and validated
  by the engine itself (``udfs.flink.user_engine``): no Python operator runs before it.
  A user-metadata tombstone with a user id for its key becomes an engine input row of kind
  ``erase`` on the metadata path (``metadata_to_engine_input``): the same operators and uids,
  so savepoints restore.

The decoding and validation themselves are ``udfs.intake`` (pure).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import OutputTag, ProcessFunction, RuntimeContext

from schemas.codec import Codec
from udfs import intake
from udfs.flink.descriptors import DEAD_LETTER_TAG
from udfs.flink.metrics import LabelledCounters


def dead_letter_row(codec: Codec, topic: str, record: intake.SourceRecord,
                    rejected: intake.Rejected, failed_at: int,
                    raw_max_bytes: int = intake.DEFAULT_LIMITS.dead_letter_raw_max_bytes,
                    ) -> tuple[OutputTag, Row]:
    """The side-output element that puts a rejected record on the dead-letter topic.

    Bounded in size: see ``intake.dead_letter``.
    """
    letter = intake.dead_letter(record, rejected, failed_at, raw_max_bytes)
    return DEAD_LETTER_TAG, Row(topic, letter["key"], codec.encode("DeadLetter", letter),
                                None)


def maybe_bytes(value: Any) -> bytes | None:
    """A Java byte[] handed over by the runtime (or None) as Python bytes."""
    return None if value is None else bytes(value)


class DecodeRecordsFunction(ProcessFunction):
    """Validate a topic's single-object Avro records of one schema; dead-letter the rest.

    Emits ``to_row(record, raw_bytes)`` for each valid record; used for the user-metadata
    (``UserMetadata``) and definitions (``DefinitionUpdate``) topics, checked by
    ``intake.decode_record`` (the record bytes travel on, decoded where they are used).
    """

    def __init__(self, schema: str, dead_letter_topic: str, to_row: Any,
                 limits: intake.Limits = intake.DEFAULT_LIMITS) -> None:
        self.schema = schema
        self.dead_letter_topic = dead_letter_topic
        self.to_row = to_row
        self.limits = limits

    def open(self, runtime_context: RuntimeContext) -> None:
        """Load the schemas; register the dead-letter counter."""
        self.codec = Codec.load()
        self.dead_lettered = LabelledCounters(runtime_context.get_metrics_group(), "reason",
                                              "records_dead_lettered")

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        """Emit the row for a valid record, a DeadLetter row for anything else."""
        topic, partition, offset, timestamp, key, raw = value[:6]
        record = intake.SourceRecord(
            topic, partition, offset, timestamp, maybe_bytes(key), maybe_bytes(raw)
        )
        result = intake.decode_record(self.codec, self.schema, record, self.limits)
        if isinstance(result, intake.Rejected):
            self.dead_lettered.inc(result.reason_code)
            yield dead_letter_row(self.codec, self.dead_letter_topic, record, result,
                                  ctx.timer_service().current_processing_time(),
                                  self.limits.dead_letter_raw_max_bytes)
            return
        yield self.to_row(result, record.value)


def metadata_to_engine_input(record: dict[str, Any] | intake.ErasureRequest,
                             raw: bytes | None) -> Row:
    """A UserMetadata as the engine's input row (event time = its updated_at).

    An ``ErasureRequest`` (a tombstone) becomes a row of kind ``erase`` with no payload whose
    event time is the tombstone's Kafka timestamp: the engine applies it at once, whatever the
    watermark (``udfs.engine.Erasure``), so the time only keeps the metadata input's watermark
    moving as the record's neighbours do.
    """
    if isinstance(record, intake.ErasureRequest):
        return Row("erase", record.user_id, record.requested_at, None, b"", None, None, None,
                   None)
    return Row("metadata", record["user_id"], record["updated_at"], None, raw, None, None, None,
               None)


def outcome_to_engine_input(record: dict[str, Any], raw: bytes) -> Row:
    """A CampaignOutcome as the engine's input row (event time = its event_time)."""
    return Row("outcome", record["user_id"], record["event_time"], None, raw, None, None, None,
               None)


def backfill_to_engine_input(record: dict[str, Any], raw: bytes) -> Row:
    """A BackfillRequest as the engine's input row (applied at once: ``udfs.engine.Backfill``).

    Its event time is its ``requested_at``; the stream carries neutral watermarks
    (``jobs.job.definition_watermarks``), so it neither holds nor pushes event time.
    """
    return Row("backfill", record["user_id"], record["requested_at"], None, raw, None, None,
               None, None)


def definition_to_row(record: dict[str, Any], raw: bytes) -> Row:
    """A DefinitionUpdate as a broadcast row."""
    return Row(record["definition_id"], raw)
