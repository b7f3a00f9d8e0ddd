"""Thin PyFlink adapters: load state, call the pure domain function, store state, emit.

- ``DecodeClicksFunction``: Kafka record rows -> click rows; rejected records -> the dead-letter
  side output (encoded DeadLetter rows ready for the Kafka sink). Never raises on bad input.
- ``CountActivityFunction`` (keyed by user): the walking skeleton's running count per user ->
  encoded UserActivityCount rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import KeyedProcessFunction, ProcessFunction, RuntimeContext

from schemas.codec import Codec
from udfs import activity, clicks
from udfs.descriptors import CLICK_FIELD_NAMES, DEAD_LETTER_TAG, activity_count_state


class DecodeClicksFunction(ProcessFunction):
    """Decode and validate the clicks topic's records; dead-letter what is bad."""

    def __init__(self, dead_letter_topic: str, max_future_skew_ms: int) -> None:
        self.dead_letter_topic = dead_letter_topic
        self.max_future_skew_ms = max_future_skew_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        """Load the schemas once per operator instance; register counters."""
        self.codec = Codec.load()
        metrics = runtime_context.get_metrics_group()
        self.events_in = metrics.counter("events_in")
        self.events_valid = metrics.counter("events_valid")
        self.dead_lettered = metrics.counter("events_dead_lettered")

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        """Emit a click row, or a DeadLetter row on the side output."""
        self.events_in.inc()
        topic, partition, offset, timestamp, key, raw = value
        record = clicks.SourceRecord(
            topic, partition, offset, timestamp, _maybe_bytes(key), _maybe_bytes(raw)
        )
        result = clicks.decode_click(self.codec, record, self.max_future_skew_ms)
        if isinstance(result, clicks.Rejected):
            self.dead_lettered.inc()
            failed_at = ctx.timer_service().current_processing_time()
            letter = clicks.dead_letter(record, result, failed_at)
            yield DEAD_LETTER_TAG, Row(
                self.dead_letter_topic, record.key, self.codec.encode("DeadLetter", letter)
            )
            return
        self.events_valid.inc()
        result["ingest_time"] = record.timestamp
        yield Row(*[result.get(name) for name in CLICK_FIELD_NAMES])


def _maybe_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


class CountActivityFunction(KeyedProcessFunction):
    """Keyed by user id: count the user's events and emit a UserActivityCount per event."""

    def __init__(self, output_topic: str) -> None:
        self.output_topic = output_topic

    def open(self, runtime_context: RuntimeContext) -> None:
        """Create the state handle and the codec."""
        self.count = runtime_context.get_state(activity_count_state())
        self.codec = Codec.load()

    def process_element(self, value: Row, ctx: KeyedProcessFunction.Context) -> Iterator[Row]:
        """Update the count; emit Row(topic, key=user id, value=Avro UserActivityCount)."""
        event = dict(zip(CLICK_FIELD_NAMES, value, strict=True))
        new_count, record = activity.count_activity(self.count.value(), event)
        self.count.update(new_count)
        yield Row(
            self.output_topic,
            event["user_id"].encode(),
            self.codec.encode("UserActivityCount", record),
        )
