"""What runs inside the job's operators: pure domain packages around one engine step.

- ``udfs.intake``: decode and validate input records; dead letters.
- ``udfs.definitions``: what every kind of definition shares (envelope, versions, diagnostics,
  YAML loader, base compiler); ``udfs.segments`` and ``udfs.campaigns``: the two kinds
  (grammar, evaluation; priority matrix, arbitration); ``udfs.catalog``: the shipped
  definitions and the set in force (``Registries``).
- ``udfs.features``: behavioural features (spec, state, vector, state codec); ``udfs.churn``:
  the ONNX churn model.
- ``udfs.engine``: the one pure per-user step.
- ``udfs.stores``: the Cassandra + Redis membership store and the Redis key layout.
- ``udfs.flink``: the PyFlink adapters, the only package that imports pyflink.
- ``udfs.native``: the hot modules above compiled with mypyc, loaded when built from these
  sources (installed below, before any of them is imported).
"""

from udfs import native as _native

# before any engine module is imported: they load compiled when the build matches the sources
_native.install()
