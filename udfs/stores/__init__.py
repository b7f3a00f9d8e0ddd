"""The stores the engine writes besides Kafka, and the one layout of nudgeflow's Redis keys.

Segment membership goes to Cassandra (durable) and Redis (serving).

- ``udfs.stores.keys``: every Redis key nudgeflow reads or writes, spelled once.
- ``udfs.stores.membership``: the idempotent Cassandra + Redis writer of SegmentChanges and the
  picklable ``CassandraRedisStore`` the job hands to the engine.
"""
