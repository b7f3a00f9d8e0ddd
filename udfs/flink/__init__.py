"""The PyFlink adapters: the only place under ``udfs/`` that imports pyflink.

Each adapter loads state, calls pure domain code, stores state and emits:

- ``udfs.flink.decode``: decode and validate the input topics' records (dead letters);
- ``udfs.flink.event_time``: timestamp assigners of the Python-side streams;
- ``udfs.flink.user_engine``: the per-user engine (``udfs.engine.step``) as a keyed broadcast
  function;
- ``udfs.flink.descriptors``: row types, state descriptors and output tags, in one place;
- ``udfs.flink.metrics``: per-event metrics with fewer JVM crossings.
"""
