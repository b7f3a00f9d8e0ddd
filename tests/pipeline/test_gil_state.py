"""Why churn scoring runs on a Python-created thread (udfs/flink/scoring.py), pinned.

A thread-mode task thread holds the GIL with a thread state PyGILState does not know, so
native code calling ``PyGILState_Ensure`` there would deadlock (measured: it never returns);
the scoring thread is known to PyGILState.
"""

import ctypes

import pytest
from pyflink.common import Types
from pyflink.datastream.functions import MapFunction

pytestmark = pytest.mark.pipeline


class GilStateProbe(MapFunction):
    def map(self, value):
        from udfs.flink.scoring import PythonThreadScorer

        class Probe:
            version = "probe"

            def score(self, vector):
                return float(ctypes.pythonapi.PyGILState_Check())

        scorer = PythonThreadScorer(Probe)
        on_scoring_thread = int(scorer.score([]))
        scorer.close()
        return f"{ctypes.pythonapi.PyGILState_Check()} {on_scoring_thread}"


def test_the_task_thread_is_unknown_to_pygilstate_but_the_scoring_thread_is_known(env):
    env.set_parallelism(1)
    stream = env.from_collection([1], type_info=Types.INT())
    with stream.map(GilStateProbe(), output_type=Types.STRING()).execute_and_collect() as rows:
        [row] = list(rows)
    task_thread, scoring_thread = row.split()
    assert task_thread == "0"  # PyGILState_Ensure here would wait for its own GIL forever
    assert scoring_thread == "1"
