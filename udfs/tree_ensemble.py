"""A binary tree-ensemble ONNX classifier compiled to numpy arrays, scored on the caller's thread.

**Why.** onnxruntime cannot run on a Flink task thread in thread mode (its pybind11 bindings
may deadlock there, ``udfs/flink/scoring.py``), so every score crossed to a scoring thread and
back. Alone that hand-off costs ~45 µs; in the job, where the scoring thread must win the
interpreter lock from the task thread, it cost a third to a half of the engine thread's time
(issue 13). The shipped churn model is one ``TreeEnsembleClassifier`` (200 trees of depth 3):
compiled here, a score costs ~10 µs on the calling thread, with no thread and no onnxruntime call.

**One row** (``probability``, the engine's call) is scored in the bitset form of QuickScorer
(Lucchese et al., SIGIR 2015) when every tree has at most 8 leaves (depth 3): each tree's
leaves, left (true) to right, are 8 bits of one Python integer; a branch whose test fails
(``x > threshold``) rules out the leaves of its true subtree; per feature, the branches sorted
by threshold give prefix masks, so one ``bisect`` finds the AND of every failed branch of that
feature; the lowest bit left in each tree's byte is the leaf the walk reaches. 38 bisects and
integer ANDs for the shipped model, then one numpy lookup and sum of the 200 leaf weights in
tree order (the walk's sum, the same float64): ~9.5 µs a row against ~15 µs for the walk, and
the same score to the bit (a unit test checks it, NaN and overflowing inputs included). Many
rows at once (``probabilities``) walk the trees level by level.

**The interpreter lock.** numpy lets go of the GIL inside some calls: ``take`` and ``@`` even on
arrays of 200 entries, fancy indexing and comparisons above 500 (measured). On a Flink task
thread every other Python thread of the TaskManager (the membership writer, the campaign
statistics, the Cassandra driver's loop) may take the lock then, and the engine waits up to the
switch interval (``gil_switch_interval_us``, 200 µs in the job) to get it back: every release is
a chance to lose the lock. Both forms use only fancy indexing, additions, comparisons and
``where`` on arrays of one entry per tree, which keep the lock (a unit test checks it for the
shipped model). A one-lookup form (all 1,400 branch comparisons of the 200 trees at once, ~2x
faster than the walk alone) was tried and dropped: its large arrays and ``@`` released the lock
on most calls.

**What is compiled** (``compile_classifier``; anything else returns None with the reason, and
the caller keeps onnxruntime): a graph whose only nodes are one ``ai.onnx.ml``
``TreeEnsembleClassifier`` reading the graph's input and ``Identity`` nodes; two class labels;
every leaf weight on class 0 (scikit-learn's binary export: the weight sum is the log-odds of
class 1); ``BRANCH_LEQ`` and ``LEAF`` nodes only; no missing-value tracking; post-transform
``LOGISTIC``. The arithmetic follows onnxruntime's where it decides a path: inputs and
thresholds are float32, so every row reaches the leaves onnxruntime reaches. The leaves are
summed in float64 and the logistic of the float32 log-odds is taken in float64 (on |z|,
mirrored: no overflow) and rounded to float32, so a score can differ from onnxruntime's by a
few float32 ulps (≤ 3e-7 on the shipped model);
``udfs.churn.ChurnModel`` checks the agreement on every load and falls back to onnxruntime if
it is worse than ``AGREEMENT_TOL``.

Pure: numpy and the ``onnx`` protobuf reader, no onnxruntime, no pyflink.
"""

from __future__ import annotations

import bisect
import math
import operator
import struct
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Final

import numpy as np
import onnx
from onnx import helper

#: the largest |compiled - onnxruntime| accepted on the load-time check (``udfs.churn``)
# not Final: read once a model load, and a test sets it to see a model that does not agree
AGREEMENT_TOL = 1e-5

_CLASSIFIER: Final = "TreeEnsembleClassifier"
_ML_DOMAIN: Final = "ai.onnx.ml"


#: rounds a Python float to float32 and back (as numpy's cast: to nearest, ties to even)
_FLOAT32: Final = struct.Struct("<f")
_SUM: Final = np.add.reduce
#: byte -> the number of its lowest set bit (0 for 0, which a tree's byte never is)
_LOWEST_BIT: Final = bytes((b & -b).bit_length() - 1 if b else 0 for b in range(256))


class NotCompilable(ValueError):
    """The graph is outside what ``compile_classifier`` supports (the message says what)."""


@dataclass(frozen=True)
class TreeEnsemble:
    """The trees as flat arrays over all nodes; a leaf points to itself.

    ``roots`` holds each tree's root node; ``depth`` levels of ``x[feature] <= threshold`` moves
    every tree to a leaf (a leaf reached earlier stays put), and P(class 1) is the logistic of
    ``base`` plus the leaves' weights.
    """

    roots: np.ndarray  # intp[trees]
    feature: np.ndarray  # intp[nodes]; 0 at leaves
    threshold: np.ndarray  # float32[nodes]; +inf at leaves
    true_next: np.ndarray  # intp[nodes]
    false_next: np.ndarray  # intp[nodes]
    weight: np.ndarray  # float64[nodes]; 0 at branches
    base: float
    depth: int
    width: int  # the number of input features
    # the one-row form (module docs), derived from the arrays above; None where it does not
    # apply (``LeafBitsets.build``)
    bitsets: LeafBitsets | None = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "bitsets", LeafBitsets.build(self))  # frozen: set once here

    def log_odds(self, x: np.ndarray) -> np.ndarray:
        """The float32 log-odds of class 1 for rows ``x`` (float32[rows, width] or [width])."""
        node = self.roots if x.ndim == 1 else np.broadcast_to(self.roots, (x.shape[0],
                                                                           len(self.roots)))
        rows = None if x.ndim == 1 else np.arange(x.shape[0])[:, None]
        for _ in range(self.depth):
            values = x[self.feature[node]] if rows is None else x[rows, self.feature[node]]
            node = np.where(values <= self.threshold[node], self.true_next[node],
                            self.false_next[node])
        return (self.weight[node].sum(axis=-1) + self.base).astype(np.float32)

    def probability(self, vector: Sequence[float]) -> float:
        """P(class 1) of one row (see the module docs); ``probabilities`` for many."""
        if self.bitsets is not None:
            z = self.bitsets.log_odds(vector)
        else:
            z = float(self.log_odds(np.asarray(vector, dtype=np.float32)))
        v = 1.0 / (1.0 + math.exp(-abs(z)))  # math, not numpy: ~5 µs less for one value
        return _FLOAT32.unpack(_FLOAT32.pack(v if z >= 0 else 1.0 - v))[0]

    def probabilities(self, vectors: np.ndarray) -> np.ndarray:
        """P(class 1) of each row of float32[rows, width]; row by row as ``probability``."""
        z = self.log_odds(vectors).astype(np.float64)
        v = 1.0 / (1.0 + np.exp(-np.abs(z)))
        return np.where(z < 0, 1.0 - v, v).astype(np.float32).astype(np.float64)


def compile_classifier(model_bytes: bytes, width: int) -> TreeEnsemble:
    """Compile a serialized ONNX binary tree-ensemble classifier (see the module docs).

    Args:
        model_bytes: The ONNX file's bytes.
        width: The number of input features; a node reading a feature beyond it is refused.

    Raises:
        NotCompilable: The graph is not of the supported form; the message names the part.
    """
    try:
        graph = onnx.load_model_from_string(model_bytes).graph
    except Exception as exc:  # the protobuf reader raises several types
        raise NotCompilable(f"the ONNX file cannot be parsed: {exc}") from exc
    ensembles = [n for n in graph.node if n.op_type == _CLASSIFIER and n.domain == _ML_DOMAIN]
    others = sorted({n.op_type for n in graph.node if n.op_type not in (_CLASSIFIER, "Identity")})
    if len(ensembles) != 1 or others:
        raise NotCompilable(f"the graph has {len(ensembles)} {_CLASSIFIER} node(s) and other "
                            f"operators {others}; one classifier and Identity nodes are "
                            "supported")
    node = ensembles[0]
    if list(node.input) != [graph.input[0].name]:
        raise NotCompilable(f"the classifier reads {list(node.input)}, not the graph's input")
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    return _from_attributes(attrs, width)


def _from_attributes(attrs: dict[str, object], width: int) -> TreeEnsemble:
    def ints(name: str) -> list[int]:
        return [int(v) for v in attrs.get(name, [])]  # type: ignore[attr-defined]

    labels = ints("classlabels_int64s")
    if len(labels) != 2 or attrs.get("classlabels_strings"):
        raise NotCompilable(f"class labels {labels}: only two integer classes are supported")
    post = attrs.get("post_transform", b"NONE")
    if post != b"LOGISTIC":
        raise NotCompilable(f"post_transform {post!r}: only LOGISTIC is supported")
    if any(ints("class_ids")):
        raise NotCompilable("leaf weights on class 1: only the binary export (all on class 0)")
    if any(ints("nodes_missing_value_tracks_true")):
        raise NotCompilable("missing-value tracking is not supported")
    modes = [bytes(m) for m in attrs["nodes_modes"]]  # type: ignore[attr-defined]
    unsupported = sorted({m.decode() for m in modes} - {"BRANCH_LEQ", "LEAF"})
    if unsupported:
        raise NotCompilable(f"node modes {unsupported}: only BRANCH_LEQ and LEAF are supported")
    base_values = [float(v) for v in attrs.get("base_values", [])]  # type: ignore[attr-defined]
    if len(base_values) > 1:
        raise NotCompilable(f"{len(base_values)} base values: one is supported")

    trees, ids = ints("nodes_treeids"), ints("nodes_nodeids")
    index = {(t, i): k for k, (t, i) in enumerate(zip(trees, ids, strict=True))}
    count = len(index)
    if count != len(trees):
        raise NotCompilable("a (tree, node) id appears twice")
    leaf = np.array([m == b"LEAF" for m in modes])
    feature = np.array(ints("nodes_featureids"), dtype=np.intp)
    if feature[~leaf].size and (feature[~leaf].min() < 0 or feature[~leaf].max() >= width):
        raise NotCompilable(f"a node reads a feature outside 0..{width - 1}")

    def targets(name: str) -> np.ndarray:
        moved = [index.get((t, n), -1) for t, n in zip(trees, ints(name), strict=True)]
        nodes = np.array(moved, dtype=np.intp)
        nodes[leaf] = np.arange(count)[leaf]  # a leaf stays where it is
        if (nodes < 0).any():
            raise NotCompilable(f"{name} points to a node that does not exist")
        return nodes

    true_next, false_next = targets("nodes_truenodeids"), targets("nodes_falsenodeids")
    threshold = np.array(attrs["nodes_values"], dtype=np.float32)
    threshold[leaf] = np.inf
    feature[leaf] = 0
    weight = np.zeros(count, dtype=np.float64)
    for t, i, w in zip(ints("class_treeids"), ints("class_nodeids"),
                       attrs["class_weights"], strict=True):  # type: ignore[call-overload]
        k = index.get((t, i))
        if k is None or not leaf[k]:
            raise NotCompilable(f"a class weight is on node {i} of tree {t}, not on a leaf")
        weight[k] += float(np.float32(w))
    roots = np.array([index[(t, 0)] for t in sorted(set(trees))], dtype=np.intp)
    return TreeEnsemble(roots, feature, threshold, true_next, false_next, weight,
                        base_values[0] if base_values else 0.0,
                        _depth(roots, leaf, true_next, false_next), width)


def _depth(roots: np.ndarray, leaf: np.ndarray, true_next: np.ndarray,
           false_next: np.ndarray) -> int:
    """The most branch levels on a path from a root to a leaf (a cycle is refused)."""
    deepest, level, node = 0, 0, roots.copy()
    while not leaf[node].all():
        level += 1
        if level > len(leaf):
            raise NotCompilable("a tree has a cycle")
        node = np.concatenate([true_next[node[~leaf[node]]], false_next[node[~leaf[node]]],
                               node[leaf[node]]])
        deepest = level
    return deepest


class LeafBitsets:
    """The bitset form of the trees for one row (QuickScorer; see the module docs).

    Tree ``t``'s leaves, in order from the true side to the false side, are bits ``8t`` to
    ``8t + 7`` of an integer. Per feature read by a branch (``columns``), ``cuts`` holds that
    feature's branch thresholds in ascending order and ``masks[k]`` the AND of the masks of
    the first ``k`` of them, each mask clearing the leaves of its branch's true subtree: a row
    with value ``x`` fails exactly the branches whose threshold is below ``x``, the first
    ``bisect_left(cuts, x)``. ``weights[8 t + i]`` is the weight of tree ``t``'s leaf ``i``
    (12.8 KB for 200 trees; a table by whole byte, 256 entries a tree, is 400 KB: with the
    caches emptied before each row, as the job's other work leaves them, its lookup took
    19 µs against 15 µs for this one; both take 2 µs with warm caches).
    """

    __slots__ = ("_pick", "_row", "base", "everything", "features", "offsets", "trees",
                 "weights")

    def __init__(self, columns: list[int], features: list[tuple[list[float], list[int]]],
                 weights: np.ndarray, base: float) -> None:
        self._pick = operator.itemgetter(*columns) if len(columns) > 1 else (
            lambda vector: (vector[columns[0]],))
        self._row = struct.Struct(f"<{len(columns)}f")
        self.features = features
        self.trees = len(weights) // 8
        self.everything = (1 << (8 * self.trees)) - 1  # every tree's every leaf alive
        self.offsets = np.arange(self.trees, dtype=np.int64) * 8
        self.weights = weights
        self.base = base

    @classmethod
    def build(cls, trees: TreeEnsemble) -> LeafBitsets | None:
        """The bitsets of compiled trees.

        None if a tree has more than 8 leaves, or no tree branches, or a branch's threshold is
        NaN (thresholds are sorted), or on a big-endian machine: the walk scores those.
        """
        if sys.byteorder != "little":  # the bytes of the integer are read as int64s
            return None
        roots, feature, threshold = trees.roots, trees.feature, trees.threshold
        true_next, false_next = trees.true_next, trees.false_next
        if np.isnan(threshold).any():
            return None
        leaf = true_next == np.arange(len(true_next))  # a leaf points to itself

        def leaves_under(node: int) -> list[int]:
            if leaf[node]:
                return [node]
            return leaves_under(int(true_next[node])) + leaves_under(int(false_next[node]))

        position: dict[int, int] = {}  # leaf node -> its bit
        cuts: dict[int, list[tuple[float, int]]] = {}  # feature -> (threshold, mask)
        table = np.zeros(len(roots) * 8, dtype=np.float64)
        everything = (1 << (8 * len(roots))) - 1
        for t, root in enumerate(roots):
            leaves = leaves_under(int(root))
            if len(leaves) > 8:
                return None
            position.update((node, 8 * t + i) for i, node in enumerate(leaves))
            table[8 * t:8 * t + len(leaves)] = trees.weight[leaves]
            branches = [int(root)]
            while branches:
                node = branches.pop()
                if leaf[node]:
                    continue
                mask = everything
                for ruled_out in leaves_under(int(true_next[node])):
                    mask &= ~(1 << position[ruled_out])
                cuts.setdefault(int(feature[node]), []).append((float(threshold[node]), mask))
                branches += [int(true_next[node]), int(false_next[node])]
        if not cuts:
            return None
        columns, features = [], []
        for column, branches_of in sorted(cuts.items()):
            branches_of.sort(key=lambda cut: cut[0])
            masks = [everything]
            for _, mask in branches_of:
                masks.append(masks[-1] & mask)
            columns.append(column)
            features.append(([cut for cut, _ in branches_of], masks))
        return cls(columns, features, table, trees.base)

    def log_odds(self, vector: Sequence[float]) -> float:
        """The float32 log-odds of class 1 for one row (as a Python float)."""
        picked = self._pick(vector)
        try:
            values = self._row.unpack(self._row.pack(*picked))
        except OverflowError:  # beyond float32's range: numpy's cast makes it infinite
            with np.errstate(over="ignore"):
                values = tuple(np.asarray(picked, dtype=np.float32).tolist())
        alive = self.everything
        left = bisect.bisect_left
        for x, (cuts, masks) in zip(values, self.features):  # noqa: B905 (built together)
            # NaN fails every ``x <= threshold``: all of that feature's branches go false
            failed = left(cuts, x) if x == x else len(cuts)
            if failed:  # masks[0] is every leaf: an AND that changes nothing (~0.1 µs) skipped
                alive &= masks[failed]
        # each tree's byte becomes its lowest bit's number (its leaf), widened to an int64 by
        # placing it in an 8-byte slot: a numpy cast (uint8 to intp) would let go of the
        # interpreter lock (module docs)
        slots = bytearray(8 * self.trees)
        slots[::8] = alive.to_bytes(self.trees, "little").translate(_LOWEST_BIT)
        exits = np.frombuffer(slots, dtype=np.int64)
        # ``np.add.reduce`` is what ``ndarray.sum`` calls (the same pairwise sum), without the
        # Python wrapper in between: ~0.3 µs a row
        total = float(_SUM(self.weights[self.offsets + exits])) + self.base
        return _FLOAT32.unpack(_FLOAT32.pack(total))[0]
