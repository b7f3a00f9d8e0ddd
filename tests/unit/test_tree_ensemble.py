"""The compiled tree ensemble against onnxruntime: same leaves, same scores, same engine output.

onnxruntime is the reference: every comparison runs the same ONNX bytes through it. The
hand-made ensemble has trees of unequal depth (a leaf at the root, at level 1 and at level 3)
and is probed at its thresholds exactly (ties go to the true branch), one ulp either side, and
with NaN (no missing-value tracking: NaN goes to the false branch).
"""

from __future__ import annotations

import dataclasses
import sys
import threading
import time
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from jobs.bench import domain
from models import CHURN_META, CHURN_ONNX
from udfs import tree_ensemble
from udfs.churn import ChurnModel, _agreement_rows
from udfs.features.spec import FEATURE_NAMES
from udfs.tree_ensemble import NotCompilable, compile_classifier

WIDTH = 3
# (tree, node, mode, feature, threshold, true node, false node, leaf weight)
NODES = [
    (0, 0, "BRANCH_LEQ", 0, 0.5, 1, 2, 0.0),
    (0, 1, "LEAF", 0, 0.0, 0, 0, 1.25),
    (0, 2, "BRANCH_LEQ", 1, -1.0, 3, 4, 0.0),
    (0, 3, "LEAF", 0, 0.0, 0, 0, -2.0),
    (0, 4, "BRANCH_LEQ", 2, 3.0, 5, 6, 0.0),
    (0, 5, "LEAF", 0, 0.0, 0, 0, 0.5),
    (0, 6, "LEAF", 0, 0.0, 0, 0, 0.75),
    (1, 0, "LEAF", 0, 0.0, 0, 0, -0.125),
    (2, 0, "BRANCH_LEQ", 2, -7.5, 1, 2, 0.0),
    (2, 1, "LEAF", 0, 0.0, 0, 0, 0.3),
    (2, 2, "LEAF", 0, 0.0, 0, 0, -0.6),
]


def _ensemble(nodes: list[tuple[Any, ...]] = NODES, *, post: str = "LOGISTIC",
              labels: tuple[int, ...] = (0, 1), class_id: int = 0, tracks_missing: int = 0,
              base: float = -0.25, extra_op: bool = False) -> bytes:
    """A TreeEnsembleClassifier as scikit-learn's binary export writes one (variants refused)."""
    leaves = [n for n in nodes if n[2] == "LEAF"]
    node = helper.make_node(
        "TreeEnsembleClassifier", ["features"], ["label", "proba"], domain="ai.onnx.ml",
        nodes_treeids=[n[0] for n in nodes], nodes_nodeids=[n[1] for n in nodes],
        nodes_modes=[n[2] for n in nodes], nodes_featureids=[n[3] for n in nodes],
        nodes_values=[n[4] for n in nodes], nodes_truenodeids=[n[5] for n in nodes],
        nodes_falsenodeids=[n[6] for n in nodes],
        nodes_missing_value_tracks_true=[tracks_missing] * len(nodes),
        class_treeids=[n[0] for n in leaves], class_nodeids=[n[1] for n in leaves],
        class_ids=[class_id] * len(leaves), class_weights=[n[7] for n in leaves],
        classlabels_int64s=list(labels), base_values=[base], post_transform=post)
    last = helper.make_node("Add" if extra_op else "Identity",
                            ["proba", "proba"] if extra_op else ["proba"], ["probabilities"])
    graph = helper.make_graph(
        [node, last], "trees",
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["N", WIDTH])],
        [helper.make_tensor_value_info("label", TensorProto.INT64, ["N"]),
         helper.make_tensor_value_info("probabilities", TensorProto.FLOAT, ["N", 2])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("ai.onnx.ml", 1)])
    model.ir_version = 9
    return model.SerializeToString()


def _onnxruntime(data: bytes, rows: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return session.run(["probabilities"], {"features": rows})[0][:, 1].astype(np.float64)


def _probe_rows() -> np.ndarray:
    """Every feature at each threshold, one float32 ulp either side, far away, and NaN."""
    per_feature: list[list[float]] = [[-100.0, 100.0, float("nan")] for _ in range(WIDTH)]
    for _, _, mode, feature, threshold, *_ in NODES:
        if mode != "LEAF":
            t = np.float32(threshold)
            per_feature[feature] += [float(t), float(np.nextafter(t, np.float32(-np.inf))),
                                     float(np.nextafter(t, np.float32(np.inf)))]
    grid = np.meshgrid(*per_feature, indexing="ij")
    return np.stack([g.ravel() for g in grid], axis=1).astype(np.float32)


def test_the_hand_made_ensemble_scores_as_onnxruntime_row_by_row_and_in_batches():
    data = _ensemble()
    trees = compile_classifier(data, WIDTH)
    assert trees.depth == 3 and len(trees.roots) == 3
    rows = _probe_rows()
    expected = _onnxruntime(data, rows)
    assert len(rows) == 6 * 6 * 9  # 3 far/NaN values + 3 per threshold: 1, 1 and 2 of them
    np.testing.assert_allclose(trees.probabilities(rows), expected, rtol=0, atol=1e-6)
    assert trees.bitsets is not None  # one row at a time: the bitset form
    single = [trees.probability(row.tolist()) for row in rows]
    np.testing.assert_array_equal(single, trees.probabilities(rows))


def test_a_nan_threshold_is_scored_by_the_walk_row_by_row_too():
    """Thresholds are sorted for the bitset form: a NaN one (x <= NaN is never true) leaves it."""
    nodes = [(*n[:4], float("nan"), *n[5:]) if n[:2] == (2, 0) else n for n in NODES]
    trees = compile_classifier(_ensemble(nodes), WIDTH)
    assert trees.bitsets is None
    rows = _probe_rows()
    assert [trees.probability(row.tolist()) for row in rows] == list(trees.probabilities(rows))


def test_a_tree_with_more_than_eight_leaves_is_scored_by_the_walk_row_by_row_too():
    """Depth 4 (16 leaves) has no bitset form: one row walks the trees as a batch does."""
    # one full tree in heap order: branch i (0..14) goes to 2i + 1 and 2i + 2; leaves 15..30
    branches = [(0, i, "BRANCH_LEQ", i % WIDTH, 1.5 - i / 5, 2 * i + 1, 2 * i + 2, 0.0)
                for i in range(15)]
    leaves = [(0, i, "LEAF", 0, 0.0, 0, 0, (i - 20) / 8) for i in range(15, 31)]
    data = _ensemble(branches + leaves)
    trees = compile_classifier(data, WIDTH)
    assert trees.depth == 4 and trees.bitsets is None
    rows = np.random.default_rng(4).uniform(-3, 3, size=(300, WIDTH)).astype(np.float32)
    np.testing.assert_allclose(trees.probabilities(rows), _onnxruntime(data, rows), rtol=0,
                               atol=1e-6)
    assert [trees.probability(row.tolist()) for row in rows] == list(trees.probabilities(rows))


def test_a_leaf_weight_moved_changes_the_score_where_onnxruntime_would():
    """Sensitivity: a wrong leaf would show. Changing one leaf's weight moves exactly the rows
    that reach it, in both implementations alike."""
    moved = [(*n[:7], n[7] + 1.0) if n[:2] == (0, 5) else n for n in NODES]
    rows = _probe_rows()
    before = compile_classifier(_ensemble(), WIDTH).probabilities(rows)
    after = compile_classifier(_ensemble(moved), WIDTH).probabilities(rows)
    np.testing.assert_allclose(after, _onnxruntime(_ensemble(moved), rows), rtol=0, atol=1e-6)
    assert 0 < int((np.abs(after - before) > 1e-3).sum()) < len(rows)


@pytest.mark.parametrize(("variant", "fragment"), [
    ({"post": "NONE"}, "post_transform"),
    ({"labels": (0, 1, 2)}, "class labels"),
    ({"class_id": 1}, "class 1"),
    ({"tracks_missing": 1}, "missing-value"),
    ({"extra_op": True}, "Add"),
    ({"nodes": [(*NODES[0][:2], "BRANCH_LT", *NODES[0][3:]), *NODES[1:]]}, "BRANCH_LT"),
    ({"nodes": [(*NODES[0][:3], 5, *NODES[0][4:]), *NODES[1:]]}, "outside 0..2"),
])
def test_graphs_outside_the_supported_form_are_refused_with_the_reason(variant, fragment):
    with pytest.raises(NotCompilable, match=fragment):
        compile_classifier(_ensemble(**variant), WIDTH)


def test_unparseable_bytes_are_refused():
    with pytest.raises(NotCompilable, match="cannot be parsed"):
        compile_classifier(b"\x00not onnx", WIDTH)


@pytest.fixture(scope="module")
def compiled() -> ChurnModel:
    return ChurnModel.load(CHURN_ONNX, CHURN_META)


@pytest.fixture(scope="module")
def reference() -> ChurnModel:
    return ChurnModel.load(CHURN_ONNX, CHURN_META, compiled=False)


def test_the_shipped_model_is_served_by_the_compiled_trees(compiled, reference):
    assert compiled.scorer == "numpy" and "200 trees, depth 3" in compiled.scorer_note
    assert reference.scorer == "onnxruntime"
    rng = np.random.default_rng(5)
    rows = (rng.standard_normal((3000, len(FEATURE_NAMES)))
            * rng.choice([1.0, 10.0, 1000.0], size=(3000, len(FEATURE_NAMES)))
            ).astype(np.float32)
    np.testing.assert_allclose(compiled.score_batch(rows), reference.score_batch(rows),
                               rtol=0, atol=1e-6)
    assert [compiled.score(r) for r in rows[:200]] == compiled.score_batch(rows[:200])


def test_one_row_scores_as_the_walk_to_the_bit_on_the_shipped_model(compiled):
    """Differential: the bitset form (one row) against the level-by-level walk (a batch) on
    rows at every threshold of the model and one float32 ulp either side (ties go to the true
    branch), random rows, and values numpy and struct treat specially (NaN, infinities, beyond
    float32's range, integers)."""
    trees = compiled._trees
    assert trees is not None and trees.bitsets is not None
    rows = _agreement_rows(trees).astype(np.float64).tolist()  # thresholds, ulps either side
    rng = np.random.default_rng(8)
    rows += (rng.standard_normal((500, len(FEATURE_NAMES)))
             * rng.choice([0.01, 1.0, 100.0, 1e5], size=(500, len(FEATURE_NAMES)))).tolist()
    special = [float("nan"), float("inf"), -float("inf"), 1e39, -1e39, 3.5e38, 0, 7, True]
    for i in range(200):
        row = list(rows[i])
        for column in rng.choice(len(FEATURE_NAMES), size=8, replace=False):
            row[column] = special[int(rng.integers(len(special)))]
        rows.append(row)
    # every feature at or below every threshold: no branch fails, no mask is applied at all
    rows += [[-1e30] * len(FEATURE_NAMES), [-float("inf")] * len(FEATURE_NAMES)]
    with np.errstate(over="ignore"):  # numpy's cast of 1e39 to float32 warns
        batch = trees.probabilities(np.asarray(rows, dtype=np.float32)).tolist()
    single = [trees.probability(row) for row in rows]
    assert single == batch
    assert len(set(single)) > 100  # the rows reach many different leaves


def test_a_model_that_does_not_agree_with_onnxruntime_is_served_by_onnxruntime(monkeypatch):
    monkeypatch.setattr(tree_ensemble, "AGREEMENT_TOL", -1.0)  # nothing agrees that well
    model = ChurnModel.load(CHURN_ONNX, CHURN_META)
    assert model.scorer == "onnxruntime"
    assert "differ from it" in model.scorer_note


def _close(a: Any, b: Any, path: str = "") -> None:
    """Equal, but floats (churn scores) within 1e-6."""
    if isinstance(a, float) and isinstance(b, float):
        assert abs(a - b) <= 1e-6, f"{path}: {a} != {b}"
    elif isinstance(a, dict) and isinstance(b, dict):
        assert a.keys() == b.keys(), path
        for key in a:
            _close(a[key], b[key], f"{path}.{key}")
    elif isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        assert len(a) == len(b), f"{path}: {len(a)} != {len(b)} items"
        for i, (x, y) in enumerate(zip(a, b, strict=True)):
            _close(x, y, f"{path}[{i}]")
    else:
        assert a == b, f"{path}: {a!r} != {b!r}"


def test_the_engine_emits_the_same_records_with_either_scorer(compiled, reference):
    """Differential: the shipped catalog over a seeded workload (duplicates, disorder) with the
    compiled trees and with onnxruntime gives the same steps, records and final states."""
    inputs = domain.build_inputs(clicks=1500, users=120, seed=21)
    rules = domain.shipped_rules(churn=False)
    fast, slow = (domain.play(inputs, dataclasses.replace(rules, scorer=scorer), keep=True)
                  for scorer in (compiled, reference))
    changes = sum(len(e["changes"]) for _, e in fast.emitted)
    scored = sum(1 for _, e in fast.emitted for c in e["changes"] if c["churn_score"] is not None)
    assert changes > 50 and scored > 50, (changes, scored)  # the scores reach the records
    assert (fast.steps, fast.timers) == (slow.steps, slow.timers)
    _close(fast.emitted, slow.emitted)


def _other_thread_ran_during(work: Any, calls: int) -> int:
    """How often another Python thread got the interpreter lock while ``work`` ran ``calls``
    times. With a switch interval of 100 s the running thread is never asked to let go, so the
    other thread (which releases the lock at every step) can only run when ``work`` releases
    it itself, as numpy does inside some calls."""
    steps = [0]
    stop = threading.Event()

    def other() -> None:
        while not stop.is_set():
            steps[0] += 1
            time.sleep(0)

    interval = sys.getswitchinterval()
    sys.setswitchinterval(100.0)
    thread = threading.Thread(target=other, daemon=True)
    try:
        thread.start()
        time.sleep(0.01)  # it runs; then this thread takes the lock back and keeps it
        before = steps[0]
        for _ in range(calls):
            work()
        ran = steps[0] - before
    finally:
        stop.set()
        sys.setswitchinterval(interval)
        thread.join()
    return ran


def test_scoring_a_row_never_lets_another_python_thread_run(compiled):
    """On a Flink task thread a released lock may go to the writer's or the statistics'
    thread, and the engine waits up to the switch interval to get it back (module docs)."""
    rows = [[float(v) for v in row] for row in np.random.default_rng(2).standard_normal(
        (50, len(FEATURE_NAMES)))]
    assert _other_thread_ran_during(lambda: [compiled.score(row) for row in rows], 60) == 0
    # the check can see a release: ``take`` of the same size always lets go
    x = np.asarray(rows[0], dtype=np.float32)
    indices = np.arange(1400) % len(FEATURE_NAMES)
    assert _other_thread_ran_during(lambda: [x.take(indices) for _ in range(100)], 60) > 0
