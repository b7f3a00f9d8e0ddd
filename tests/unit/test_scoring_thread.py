"""Churn scoring on its own Python thread, with a watchdog (udfs/flink/scoring.py)."""

import threading

import pytest

pytest.importorskip("pyflink")

from udfs.flink.scoring import PythonThreadScorer, ScoringStalled, load_scorer  # noqa: E402


class Model:
    version = "m1"

    def __init__(self):
        self.threads = set()
        self.block = threading.Event()

    def score(self, vector):
        self.threads.add(threading.current_thread().name)
        if vector == ["hang"]:
            self.block.wait()
        if vector == ["bad"]:
            raise ValueError("a churn feature vector has 63 values")
        return 0.25


def test_scores_are_computed_on_the_scoring_thread():
    model = Model()
    scorer = PythonThreadScorer(lambda: model, name="scorer-under-test")
    assert scorer.version == "m1"
    assert scorer.score([1.0]) == 0.25
    assert model.threads == {"scorer-under-test"}
    scorer.close()


def test_a_model_error_is_raised_on_the_callers_thread():
    scorer = PythonThreadScorer(Model)
    with pytest.raises(ValueError, match="63 values"):
        scorer.score(["bad"])
    assert scorer.score([1.0]) == 0.25
    scorer.close()


def test_a_score_that_never_returns_fails_loudly():
    model = Model()
    scorer = PythonThreadScorer(lambda: model, timeout_s=0.2)
    with pytest.raises(ScoringStalled, match="onnxruntime is stuck"):
        scorer.score(["hang"])
    model.block.set()


def test_a_model_that_does_not_load_raises_its_error():
    def load():
        raise RuntimeError("the model file is corrupt")

    with pytest.raises(RuntimeError, match="corrupt"):
        PythonThreadScorer(load)


def test_a_compiled_model_is_loaded_on_a_python_thread_and_then_scores_on_the_callers():
    loaded_on = []
    model = Model()
    model.scorer = "numpy"

    def load():
        loaded_on.append(threading.current_thread())
        return model

    scorer = load_scorer(load)
    assert scorer is model  # no thread in between
    assert [t.name for t in loaded_on] == ["churn-scorer"]
    assert scorer.score([1.0]) == 0.25
    assert model.threads == {threading.current_thread().name}
    loaded_on[0].join(timeout=5)
    assert not loaded_on[0].is_alive()  # the loading thread ended


def test_a_model_that_needs_onnxruntime_stays_behind_the_scoring_thread():
    model = Model()
    model.scorer = "onnxruntime"
    scorer = load_scorer(lambda: model)
    assert isinstance(scorer, PythonThreadScorer)
    assert scorer.score([1.0]) == 0.25 and model.threads == {"churn-scorer"}
    scorer.close()
