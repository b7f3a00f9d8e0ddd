"""Churn scoring on a Python-created thread, with a watchdog: it cannot hang the job silently.

**Why** (the scoring hang of issue 19). In thread mode Flink runs the Python operators on JVM
task threads whose Python thread state pemja created outside the ``PyGILState`` API: on them
``PyGILState_GetThisThreadState()`` is NULL and ``PyGILState_Check()`` is 0 (measured with
ctypes in a MiniCluster, see docs/pyflink-notes.md). Native code that calls
``PyGILState_Ensure`` there (pybind11's ``gil_scoped_acquire`` falls back to it; onnxruntime's
bindings are pybind11) creates a second thread state and waits for the GIL that its own thread
already holds: a self-deadlock at 0% CPU, with the GIL never released, so every other Python
thread of the TaskManager (the next job's operators) stalls too. The import of onnxruntime hit
this reliably (``import_in_python_thread``); a scoring call hits it only on the rare paths that
acquire the GIL inside onnxruntime, hence one hang after 82 events.

**Fix.** Every onnxruntime call (session creation and ``run``) happens on one thread started
by ``threading``, which ``PyGILState`` knows, so such a path finds its own thread state.
The task thread hands each vector over and waits with a timeout (``SCORING_TIMEOUT_S``): a
score that does not come back fails the task with ``ScoringStalled`` naming the model, instead
of silence. Cost: one thread hand-off per score, ~45 µs alone on the 2-core machine (plus
~15 µs for the model), but in the job the scoring thread must win the GIL from every other
Python thread of the TaskManager, which may keep it for up to the 5 ms switch interval: 37% of
the engine thread's samples with three Python operators, 19% with the engine alone
(``nudgeflow bench`` stage profile, docs/performance.md). Batched scoring pays it once per
batch (issue 13).

**Unless the model is compiled.** A tree-ensemble model is scored by numpy on the task thread
itself (``udfs.tree_ensemble``; ``ChurnModel.scorer == "numpy"``): ``load_scorer`` then loads
it on the Python thread (onnxruntime still checks it at load) and stops that thread, and no
score crosses threads.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

#: a churn score that takes longer than this fails the task (a score takes ~15 µs)
SCORING_TIMEOUT_S = 30.0


class ScoringStalled(RuntimeError):
    """onnxruntime did not return a churn score in time: the task fails loudly."""


class PythonThreadScorer:
    """A churn model created and scored on a dedicated Python thread, waited for with a timeout.

    ``load`` builds the model (e.g. ``ChurnModel.from_bytes``) on that thread; ``score`` has
    the interface of ``ChurnModel.score`` (and ``version``), so the engine cannot tell.
    """

    def __init__(self, load: Callable[[], Any], name: str = "churn-scorer",
                 timeout_s: float = SCORING_TIMEOUT_S) -> None:
        self.timeout_s = timeout_s
        self._requests: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._replies: queue.SimpleQueue[tuple[bool, Any]] = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._serve, args=(load,), name=name,
                                        daemon=True)
        self._thread.start()
        ok, model = self._wait("loading the churn model")
        if not ok:
            raise model
        self.model = model
        self.version = model.version

    def _serve(self, load: Callable[[], Any]) -> None:
        try:
            model = load()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self._replies.put((False, exc))
            return
        self._replies.put((True, model))
        while True:
            vector = self._requests.get()
            if vector is None:
                return
            try:
                self._replies.put((True, model.score(vector)))
            except BaseException as exc:  # noqa: BLE001 - re-raised on the task thread
                self._replies.put((False, exc))

    def _wait(self, what: str) -> tuple[bool, Any]:
        try:
            return self._replies.get(timeout=self.timeout_s)
        except queue.Empty:
            version = getattr(getattr(self, "model", None), "version", "?")
            raise ScoringStalled(
                f"{what} did not return within {self.timeout_s:.0f} s (churn model {version}, "
                f"thread {self._thread.name} alive: {self._thread.is_alive()}): onnxruntime is "
                "stuck. The task fails so that Flink restarts it; if it repeats, run the job "
                "with `--churn-model off` and report the TaskManager's `py-spy dump` "
                "(docs/pyflink-notes.md)") from None

    def score(self, vector: list[float]) -> float:
        """P(churn) of one feature vector, computed on the scoring thread.

        Raises:
            ScoringStalled: no answer within ``timeout_s``.
        """
        self._requests.put(vector)
        ok, value = self._wait("a churn score")
        if not ok:
            raise value
        return float(value)

    def close(self) -> None:
        """Stop the scoring thread (it ends after the request in hand)."""
        self._requests.put(None)


def load_scorer(load: Callable[[], Any], timeout_s: float = SCORING_TIMEOUT_S) -> Any:
    """The churn model to score with on a task thread: itself if it needs no onnxruntime call.

    ``load`` runs on a Python thread (creating an onnxruntime session must); a model whose
    ``scorer`` is ``"numpy"`` is returned as is and the thread ends, any other stays behind a
    ``PythonThreadScorer``.

    Raises:
        ScoringStalled: loading did not finish within ``timeout_s``.
    """
    threaded = PythonThreadScorer(load, timeout_s=timeout_s)
    if getattr(threaded.model, "scorer", None) == "numpy":
        threaded.close()
        return threaded.model
    return threaded
