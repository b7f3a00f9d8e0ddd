"""Stable uids and readable names of every source, stateful operator and sink.

A savepoint maps state to operators by uid, so these strings never change once released; rename
the readable name freely, never the uid.
"""

CLICKS_SOURCE_UID = "clicks-source"
CLICKS_SOURCE_NAME = "Kafka source: clicks"
# stateless Java map: a click record as the engine's input row, keyed by the user id in its
# bytes (the engine decodes and validates it; "decode-clicks", the Python operator that did,
# is gone: a savepoint holds no state of it)
CLICK_INPUT_UID = "click-input"
CLICK_INPUT_NAME = "clicks for the engine"
METADATA_SOURCE_UID = "user-metadata-source"
METADATA_SOURCE_NAME = "Kafka source: user-metadata"
DECODE_METADATA_UID = "decode-user-metadata"
DECODE_METADATA_NAME = "decode user metadata"
METADATA_WATERMARKS_UID = "metadata-watermarks"
# engagement outcomes (delivered, opened, clicked, ...) for journeys: added with journeys; a
# savepoint from before has no state for these operators, and restores
OUTCOMES_SOURCE_UID = "outcomes-source"
OUTCOMES_SOURCE_NAME = "Kafka source: outcomes"
DECODE_OUTCOMES_UID = "decode-outcomes"
DECODE_OUTCOMES_NAME = "decode outcomes"
BACKFILL_SOURCE_UID = "backfill-source"
BACKFILL_SOURCE_NAME = "Kafka source: backfill requests"
DECODE_BACKFILL_UID = "decode-backfill"
DECODE_BACKFILL_NAME = "decode backfill requests"
BACKFILL_WATERMARKS_UID = "backfill-watermarks"
OUTCOME_WATERMARKS_UID = "outcome-watermarks"
DEFINITIONS_SOURCE_UID = "definitions-source"
DEFINITIONS_SOURCE_NAME = "Kafka source: definitions"
DECODE_DEFINITIONS_UID = "decode-definitions"
DECODE_DEFINITIONS_NAME = "decode definitions"
DEFINITION_WATERMARKS_UID = "definition-watermarks"
# stateless Java map: Row(user_id, input) for the keyed engine (no Python per record)
KEY_BY_USER_UID = "key-by-user"
KEY_BY_USER_NAME = "key by user"
# keyed Java state: each user's inputs until the watermark passes them (input_order: java)
INPUT_ORDER_UID = "input-order"
INPUT_ORDER_NAME = "inputs in event-time order"
USER_ENGINE_UID = "user-engine"
USER_ENGINE_NAME = "per-user engine: features, churn, segments, campaigns"
# stateless Java routing of the engine's records to their topics (uid = name)
ROUTE_MEMBERSHIP_WRITES_UID = "route-membership-writes"
# stateless Java batching of those rows (io.nudgeflow.flink.BatchJsonRows; uid = name)
BATCH_MEMBERSHIP_WRITES_UID = "batch-membership-writes"
# the membership store's writes, a Python task of its own after the engine (forward edge)
MEMBERSHIP_WRITES_UID = "membership-writes"
MEMBERSHIP_WRITES_NAME = "membership writes: Cassandra and Redis"
ROUTE_SEGMENT_CHANGES_UID = "route-segment-changes"
ROUTE_TRIGGERS_UID = "route-triggers-by-tier"
ROUTE_DECISIONS_UID = "route-trigger-decisions"
ROUTE_CONVERSIONS_UID = "route-conversions"
ROUTE_LIFT_UID = "route-lift-facts"
CAMPAIGN_STATS_UID = "campaign-stats"
KAFKA_SINK_UID = "kafka-sink"
KAFKA_SINK_NAME = "Kafka sink: outputs and dead letters"
