"""The PyFlink adapters: the only place under ``udfs/`` that imports pyflink.

Each adapter loads state, calls pure domain code, stores state and emits:

- ``udfs.flink.decode``: decode and validate the input topics' records (dead letters);
- ``udfs.flink.event_time``: timestamp assigners of the Python-side streams;
- ``udfs.flink.user_engine``: the per-user engine (``udfs.engine.step``) as a keyed broadcast
  function;
- ``udfs.flink.campaign_stats``: the per-campaign statistics of the closed loop;
- ``udfs.flink.descriptors``: row types, state descriptors and output tags, in one place;
- ``udfs.flink.metrics``: per-event metrics with fewer JVM crossings.

Importing this package imports every module of ``udfs`` with it (``_import_every_module``).
"""

import importlib
import pkgutil
import sys

import udfs

#: imported on a Python thread of its own by the engine (onnxruntime; ``user_engine``)
_IMPORTED_ELSEWHERE = frozenset({"udfs.churn"})


def _import_every_module() -> None:
    """Import every module of ``udfs`` now, while the job's files are where Python found them.

    In thread mode a TaskManager's one interpreter outlives each job and keeps its modules; the
    ones it has not imported yet it keeps looking for in the directory of the job that imported
    the package first, which Flink deletes when that job ends. A job cancelled while its
    operators were still opening (some modules loaded, others not) left a TaskManager on which
    the next job of the same build failed for ever with ``ModuleNotFoundError: No module named
    'udfs.flink.event_time'`` (seen in CI). The adapters are the first of our modules a
    TaskManager unpickles, so importing everything here leaves nothing to look up later.
    """
    for info in pkgutil.walk_packages(udfs.__path__, "udfs."):
        if info.name not in _IMPORTED_ELSEWHERE and info.name not in sys.modules:
            importlib.import_module(info.name)


_import_every_module()
