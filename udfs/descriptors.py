"""Row types, state descriptors and output tags of the job, in one place.

Every record crossing a Flink boundary has a declared type here (no pickled rows), so the
serializers are fast and a savepoint's state schema is explicit.
"""

from __future__ import annotations

from pyflink.common import Types
from pyflink.common.typeinfo import TypeInformation
from pyflink.datastream import OutputTag
from pyflink.datastream.state import ValueStateDescriptor

#: A Kafka record as nudgeflow-flink's KafkaRecordWithMetadataDeserializer emits it.
SOURCE_RECORD_FIELDS = ("topic", "partition", "offset", "timestamp", "key", "value")

#: A decoded, valid click: the ClickEvent fields plus the Kafka record timestamp (ingest time).
CLICK_FIELDS: tuple[tuple[str, TypeInformation], ...] = (
    ("event_id", Types.STRING()),
    ("user_id", Types.STRING()),
    ("event_type", Types.STRING()),
    ("event_time", Types.LONG()),
    ("source", Types.STRING()),
    ("session_id", Types.STRING()),
    ("page_url", Types.STRING()),
    ("product_id", Types.STRING()),
    ("category", Types.STRING()),
    ("search_query", Types.STRING()),
    ("order_id", Types.STRING()),
    ("currency", Types.STRING()),
    ("price", Types.DOUBLE()),
    ("quantity", Types.INT()),
    ("properties", Types.MAP(Types.STRING(), Types.STRING())),
    ("ingest_time", Types.LONG()),
)
CLICK_FIELD_NAMES = tuple(name for name, _ in CLICK_FIELDS)
CLICK_ROW = Types.ROW_NAMED(list(CLICK_FIELD_NAMES), [t for _, t in CLICK_FIELDS])

#: What the routed Kafka sink writes: Row(topic, key, value); see RoutedRecordSerializer.java.
KAFKA_OUT_ROW = Types.ROW_NAMED(
    ["topic", "key", "value"],
    [Types.STRING(), Types.PRIMITIVE_ARRAY(Types.BYTE()), Types.PRIMITIVE_ARRAY(Types.BYTE())],
)

#: Rejected input, already encoded as DeadLetter records for the dead-letter topic.
DEAD_LETTER_TAG = OutputTag("dead-letters", KAFKA_OUT_ROW)


def activity_count_state() -> ValueStateDescriptor:
    """The skeleton's per-user event count."""
    return ValueStateDescriptor("activity-count", Types.LONG())
