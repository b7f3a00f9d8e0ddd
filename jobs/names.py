"""Stable uids and readable names of every source, stateful operator and sink.

A savepoint maps state to operators by uid, so these strings never change once released; rename
the readable name freely, never the uid.
"""

CLICKS_SOURCE_UID = "clicks-source"
CLICKS_SOURCE_NAME = "Kafka source: clicks"
DECODE_CLICKS_UID = "decode-clicks"
DECODE_CLICKS_NAME = "decode and validate clicks"
COUNT_ACTIVITY_UID = "count-activity"
COUNT_ACTIVITY_NAME = "per-user activity count"
KAFKA_SINK_UID = "kafka-sink"
KAFKA_SINK_NAME = "Kafka sink: outputs and dead letters"
