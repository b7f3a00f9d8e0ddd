"""Churn scoring: the exported ONNX churn model behind a small, checked wrapper.

Inputs: a model file and its metadata (``models/churn.onnx`` and ``models/churn.json``, written
by ``python -m models.train_churn``), then feature vectors in
``udfs.features.spec.FEATURE_NAMES`` order (:func:`udfs.features.vector.vector_list`). Outputs:
P(churn) in [0, 1] per vector; the model's :attr:`ChurnModel.version` goes on every output that
carries a score. State: one onnxruntime
session per :class:`ChurnModel`, single-threaded (intra- and inter-op threads 1: Flink runs
one Python operator per slot, so parallelism comes from slots, not from ORT threads).

Create the model in the operator's ``open()``, once per operator instance; it is not
picklable on purpose. Pure: no pyflink.

Scores are computed by onnxruntime, or, when the graph is a binary tree ensemble (the shipped
model), by the same trees compiled (``udfs.tree_ensemble``): ~10 µs a row on the calling
thread, which may then be a Flink task thread (onnxruntime may not run there). Every load
checks the compiled trees against onnxruntime on the smoke rows and on a seeded sample of rows
that straddle every threshold, and keeps onnxruntime if they differ by more than
``udfs.tree_ensemble.AGREEMENT_TOL``; :attr:`ChurnModel.scorer` says which one serves.

:meth:`ChurnModel.load` rejects, with :class:`ModelRejected` naming the file, what mismatched and
what was expected, a model that:

- has unreadable or incomplete metadata, or no version;
- was trained on other features than the running code's ``FEATURE_SPEC`` (names and order,
  and types and defaults when the metadata lists them);
- is not the file the metadata describes (sha256), or does not load in onnxruntime;
- does not carry the same version inside the ONNX file (``metadata_props``);
- has another input (name, float32, [batch, len(FEATURE_NAMES)]) or output than expected;
- fails a smoke prediction (errors, values outside [0, 1], rows not summing to 1, batch and
  per-row disagreeing).

:func:`load_or_keep` is the hot-swap rule: a rejected model leaves the running one in place.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Final

import numpy as np
import onnxruntime as ort

from udfs import tree_ensemble
from udfs.features.spec import FEATURE_NAMES, FEATURE_SPEC

log = logging.getLogger(__name__)

__all__ = [
    "INPUT_NAME",
    "META_FEATURES_KEY",
    "META_VERSION_KEY",
    "OUTPUT_NAME",
    "ChurnModel",
    "ModelRejected",
    "feature_spec_records",
    "load_or_keep",
    "session_options",
]

#: Name of the model's single input: float32 [batch, len(FEATURE_NAMES)].
INPUT_NAME: Final = "features"
#: Name of the output read: float32 [batch, 2], column 1 = P(churn).
OUTPUT_NAME: Final = "probabilities"
#: ``metadata_props`` keys inside the ONNX file: the model version, the comma-joined features.
META_VERSION_KEY: Final = "nudgeflow.model_version"
META_FEATURES_KEY: Final = "nudgeflow.features"
_REQUIRED_META: Final = ("version", "features", "onnx_sha256", "threshold")


class ModelRejected(Exception):
    """A model file that cannot serve; the running model (if any) stays.

    Attributes:
        path: The file at fault (the ONNX file or its metadata).
        problem: What mismatched and what was expected.
    """

    def __init__(self, path: str | os.PathLike[str], problem: str) -> None:
        self.path = str(path)
        self.problem = problem
        super().__init__(f"churn model rejected: {self.path}: {problem}")


def feature_spec_records() -> list[dict[str, Any]]:
    """The feature spec as stored in the metadata: name, dtype and default, in vector order."""
    return [{"name": s.name, "dtype": s.dtype, "default": float(s.default)} for s in FEATURE_SPEC]


def session_options() -> ort.SessionOptions:
    """Single-threaded, fully optimised, sequential: one session per operator instance."""
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: a rejected file is reported by ModelRejected
    return options


class ChurnModel:
    """A loaded, checked churn model. Build it with :meth:`load`.

    Attributes:
        version: The model version (e.g. ``churn-gbt-2026.11.2``); put it on every output
            that carries a score.
        threshold: Scores at or above it count as "at risk" (chosen at training).
        sha256: Hex digest of the ONNX file.
        onnx_path: Where the model was loaded from.
        meta_path: Where its metadata was loaded from.
        metadata: The parsed metadata (metrics, training details).
        scorer: ``"numpy"`` when the compiled trees score (any thread may call :meth:`score`),
            ``"onnxruntime"`` otherwise (call it from a thread Python created).
        scorer_note: Why onnxruntime serves, when it does (what the compiler refused).
    """

    __slots__ = ("_input", "_outputs", "_session", "_trees", "_width", "meta_path", "metadata",
                 "onnx_path", "scorer_note", "sha256", "threshold", "version")

    def __init__(self, session: ort.InferenceSession, metadata: dict[str, Any],
                 onnx_path: Path, meta_path: Path, sha256: str) -> None:
        self._session = session
        self._input = str(metadata.get("input_name", INPUT_NAME))
        self._outputs = [str(metadata.get("output_name", OUTPUT_NAME))]
        self._width = len(FEATURE_NAMES)
        self.metadata = metadata
        self.version: str = metadata["version"]
        self.threshold = float(metadata["threshold"])
        self.sha256 = sha256
        self.onnx_path = onnx_path
        self.meta_path = meta_path
        self._trees: tree_ensemble.TreeEnsemble | None = None
        self.scorer_note = "not compiled"

    @property
    def scorer(self) -> str:
        """What computes the scores: ``"numpy"`` (compiled trees) or ``"onnxruntime"``."""
        return "numpy" if self._trees is not None else "onnxruntime"

    @classmethod
    def load(cls, onnx_path: str | os.PathLike[str],
             meta_path: str | os.PathLike[str] | None = None, compiled: bool = True
             ) -> ChurnModel:
        """Load and check a model; see the module docs for what is checked.

        Args:
            onnx_path: The ONNX file.
            meta_path: Its metadata JSON; default: ``onnx_path`` with the suffix ``.json``.
            compiled: Serve from the compiled trees when the graph allows (False: always
                onnxruntime, e.g. as the reference in a comparison).

        Returns:
            The model, ready to score.

        Raises:
            ModelRejected: The files cannot serve; the message says which file and why.
        """
        onnx_file = Path(onnx_path)
        meta_file = Path(meta_path) if meta_path is not None else onnx_file.with_suffix(".json")
        meta_bytes = _read_bytes(meta_file)  # the metadata first: its problems explain more
        meta = _parse_metadata(meta_bytes, meta_file)
        _check_features(meta_file, meta)
        return cls.from_bytes(_read_bytes(onnx_file), meta_bytes, onnx_file, meta_file,
                              compiled)

    @classmethod
    def from_bytes(cls, data: bytes, meta_bytes: bytes, onnx_file: Path,
                   meta_file: Path, compiled: bool = True) -> ChurnModel:
        """Load and check a model from the contents of its two files (shipped with a job).

        The paths only name the files in messages; ``compiled`` as in :meth:`load`.

        Raises:
            ModelRejected: The files cannot serve; the message says which file and why.
        """
        meta = _parse_metadata(meta_bytes, meta_file)
        _check_features(meta_file, meta)
        digest = hashlib.sha256(data).hexdigest()
        if digest != meta["onnx_sha256"]:
            raise ModelRejected(onnx_file, f"sha256 is {digest}, but {meta_file} expects "
                                           f"{meta['onnx_sha256']} (files from different "
                                           "trainings, or a damaged copy)")
        try:
            session = ort.InferenceSession(data, session_options(),
                                           providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises several unrelated types
            raise ModelRejected(onnx_file, f"onnxruntime cannot load it: {exc}") from exc
        _check_embedded(onnx_file, session, meta)
        _check_io(onnx_file, session, meta)
        model = cls(session, meta, onnx_file, meta_file, digest)
        _smoke(model)
        if compiled:
            model._compile(data)
        else:
            model.scorer_note = "onnxruntime serves: compilation turned off"
        return model

    def _compile(self, data: bytes) -> None:
        """Serve from the compiled trees if the graph compiles and agrees with onnxruntime."""
        try:
            trees = tree_ensemble.compile_classifier(data, self._width)
        except tree_ensemble.NotCompilable as exc:
            self.scorer_note = f"onnxruntime serves: {exc}"
            log.info("churn model %s: %s", self.version, self.scorer_note)
            return
        rows = _agreement_rows(trees)
        expected = self._session.run(self._outputs, {self._input: rows})[0][:, 1]
        worst = float(np.max(np.abs(trees.probabilities(rows) - expected)))
        if worst > tree_ensemble.AGREEMENT_TOL:
            self.scorer_note = (f"onnxruntime serves: the compiled trees differ from it by "
                                f"{worst:.2g} on {len(rows)} check rows (more than "
                                f"{tree_ensemble.AGREEMENT_TOL:g})")
            log.warning("churn model %s (%s): %s", self.version, self.onnx_path,
                        self.scorer_note)
            return
        self._trees = trees
        self.scorer_note = (f"compiled trees serve ({len(trees.roots)} trees, depth "
                            f"{trees.depth}; within {worst:.2g} of onnxruntime on {len(rows)} "
                            "check rows)")

    def score(self, vector: Sequence[float]) -> float:
        """P(churn) of one feature vector (``FEATURE_NAMES`` order).

        Raises:
            ValueError: The vector does not have ``len(FEATURE_NAMES)`` values.
        """
        if len(vector) != self._width:
            raise ValueError(f"a churn feature vector has {self._width} values "
                             f"(FEATURE_NAMES), got {len(vector)}")
        if self._trees is not None:
            return self._trees.probability(vector)
        x = np.asarray(vector, dtype=np.float32).reshape(1, self._width)
        return float(self._session.run(self._outputs, {self._input: x})[0][0, 1])

    def score_batch(self, vectors: Sequence[Sequence[float]]) -> list[float]:
        """P(churn) of each vector, in one onnxruntime call; equal to :meth:`score` per row.

        Raises:
            ValueError: A vector does not have ``len(FEATURE_NAMES)`` values.
        """
        if len(vectors) == 0:
            return []
        x = np.asarray(vectors, dtype=np.float32)
        if x.ndim != 2 or x.shape[1] != self._width:
            raise ValueError(f"churn feature vectors have {self._width} values "
                             f"(FEATURE_NAMES), got an array of shape {x.shape}")
        if self._trees is not None:
            return [float(p) for p in self._trees.probabilities(x)]
        probabilities = self._session.run(self._outputs, {self._input: x})[0]
        return [float(p) for p in probabilities[:, 1]]

    def at_risk(self, score: float) -> bool:
        """Whether a score is at or above the model's threshold."""
        return score >= self.threshold

    def __getstate__(self) -> Any:
        raise TypeError("ChurnModel holds an onnxruntime session and is not picklable: "
                        "load it in the operator's open()")

    def __repr__(self) -> str:
        return f"ChurnModel(version={self.version!r}, onnx_path='{self.onnx_path}')"


def load_or_keep(current: ChurnModel | None, onnx_path: str | os.PathLike[str],
                 meta_path: str | os.PathLike[str] | None = None
                 ) -> tuple[ChurnModel | None, str | None]:
    """Swap to a new model file unless it is rejected.

    Returns:
        ``(new model, None)`` when the file loads, else ``(current, the rejection message)``:
        the running model stays.
    """
    try:
        return ChurnModel.load(onnx_path, meta_path), None
    except ModelRejected as exc:
        return current, str(exc)


# --- checks -------------------------------------------------------------------------------------


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ModelRejected(path, f"cannot read the file: {exc.strerror or exc}") from exc


def _parse_metadata(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        meta = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelRejected(path, f"metadata is not JSON: {exc}") from exc
    if not isinstance(meta, dict):
        raise ModelRejected(path, "metadata must be a JSON object")
    missing = [key for key in _REQUIRED_META if key not in meta]
    if missing:
        raise ModelRejected(path, f"metadata lacks {missing}; expected keys {_REQUIRED_META}")
    if not isinstance(meta["version"], str) or not meta["version"]:
        raise ModelRejected(path, f"version must be a non-empty string, got {meta['version']!r}")
    if not isinstance(meta["onnx_sha256"], str):
        raise ModelRejected(path, "onnx_sha256 must be a hex string")
    threshold = meta["threshold"]
    if (isinstance(threshold, bool) or not isinstance(threshold, (int, float))
            or not 0.0 <= threshold <= 1.0):
        raise ModelRejected(path, f"threshold must be a number in [0, 1], got {threshold!r}")
    return meta


def _check_features(path: Path, meta: dict[str, Any]) -> None:
    names = meta["features"]
    expected = list(FEATURE_NAMES)
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise ModelRejected(path, "features must be a list of feature names")
    if names != expected:
        raise ModelRejected(path, _feature_difference(names, expected))
    spec = meta.get("feature_spec")
    if spec is None:
        return
    if spec != feature_spec_records():
        for i, (got, want) in enumerate(zip(spec, feature_spec_records(), strict=False)):
            if got != want:
                raise ModelRejected(path, f"feature {i} is {got} in the model, but the running "
                                          f"udfs.features.spec.FEATURE_SPEC has {want}: the model "
                                          "was trained on other feature definitions")
        raise ModelRejected(path, f"feature_spec has {len(spec)} entries, expected "
                                  f"{len(expected)} (udfs.features.spec.FEATURE_SPEC)")


def _feature_difference(names: list[str], expected: list[str]) -> str:
    head = (f"the model's {len(names)} features do not match the {len(expected)} of "
            "udfs.features.spec.FEATURE_NAMES: ")
    missing = [n for n in expected if n not in names]
    unknown = [n for n in names if n not in expected]
    if missing or unknown:
        parts = []
        if missing:
            parts.append(f"missing {missing}")
        if unknown:
            parts.append(f"unknown {unknown}")
        return head + "; ".join(parts)
    i = next(i for i, (a, b) in enumerate(zip(names, expected, strict=False)) if a != b)
    return head + f"same names in another order: position {i} is {names[i]!r}, expected " \
                  f"{expected[i]!r}"


def _check_embedded(path: Path, session: ort.InferenceSession, meta: dict[str, Any]) -> None:
    props = session.get_modelmeta().custom_metadata_map
    inside = props.get(META_VERSION_KEY)
    if inside != meta["version"]:
        raise ModelRejected(path, f"the ONNX file's {META_VERSION_KEY} is {inside!r}, its "
                                  f"metadata says {meta['version']!r}")
    features = props.get(META_FEATURES_KEY)
    if features is not None and features.split(",") != list(FEATURE_NAMES):
        raise ModelRejected(path, f"the ONNX file's {META_FEATURES_KEY}: "
                                  + _feature_difference(features.split(","), list(FEATURE_NAMES)))


def _check_io(path: Path, session: ort.InferenceSession, meta: dict[str, Any]) -> None:
    width = len(FEATURE_NAMES)
    want_in = str(meta.get("input_name", INPUT_NAME))
    want_out = str(meta.get("output_name", OUTPUT_NAME))
    inputs = session.get_inputs()
    described = [(i.name, i.type, i.shape) for i in inputs]
    expected = f"one input {want_in!r} tensor(float) [batch, {width}]"
    if len(inputs) != 1:
        raise ModelRejected(path, f"inputs are {described}, expected {expected}")
    (only,) = inputs
    shape = only.shape
    if only.name != want_in or only.type != "tensor(float)" or len(shape) != 2:
        raise ModelRejected(path, f"input is {described[0]}, expected {expected}")
    if shape[1] != width:
        raise ModelRejected(path, f"input width is {shape[1]}, expected {width} "
                                  "(len(udfs.features.spec.FEATURE_NAMES))")
    if isinstance(shape[0], int):
        raise ModelRejected(path, f"input batch dimension is fixed at {shape[0]}, expected a "
                                  "dynamic one")
    outputs = {o.name: o for o in session.get_outputs()}
    out = outputs.get(want_out)
    if out is None or out.type != "tensor(float)" or len(out.shape) != 2 or (
            isinstance(out.shape[1], int) and out.shape[1] != 2):
        found = [(o.name, o.type, o.shape) for o in outputs.values()]
        raise ModelRejected(path, f"outputs are {found}, expected {want_out!r} tensor(float) "
                                  "[batch, 2] (zipmap off)")


#: rows of the load-time agreement check: the smoke rows, then a seeded sample (AGREEMENT_SEED)
AGREEMENT_ROWS: Final = 512
AGREEMENT_SEED: Final = 13


def _agreement_rows(trees: tree_ensemble.TreeEnsemble) -> np.ndarray:
    """Rows that reach many leaves: each feature at, just below or just above a threshold.

    Per feature, values are drawn from that feature's thresholds (nudged by one float32 ulp
    either way, or not at all), so the rows fall on both sides of every split, ties included.
    """
    rng = np.random.default_rng(AGREEMENT_SEED)
    rows = np.zeros((AGREEMENT_ROWS, trees.width), dtype=np.float32)
    branches = np.isfinite(trees.threshold)
    for column in range(trees.width):
        cuts = trees.threshold[branches & (trees.feature == column)]
        if cuts.size == 0:
            rows[:, column] = rng.normal(size=AGREEMENT_ROWS).astype(np.float32)
            continue
        picked = rng.choice(cuts, size=AGREEMENT_ROWS)
        nudge = rng.integers(-1, 2, size=AGREEMENT_ROWS)
        toward = np.where(nudge < 0, -np.inf, np.inf).astype(np.float32)
        rows[:, column] = np.where(nudge == 0, picked, np.nextafter(picked, toward))
    return np.vstack([np.asarray(_smoke_rows(), np.float32), rows])


def _smoke_rows() -> list[list[float]]:
    """The smoke prediction's rows: every feature at its default, all zeros, all ones."""
    defaults = [float(s.default) for s in FEATURE_SPEC]
    return [defaults, [0.0] * len(defaults), [1.0] * len(defaults)]


def _smoke(model: ChurnModel) -> None:
    rows = _smoke_rows()
    x = np.asarray(rows, dtype=np.float32)
    try:
        probabilities = model._session.run(model._outputs, {model._input: x})[0]
        single = [model.score(row) for row in rows]
    except Exception as exc:  # any failure of a prediction rejects the model
        raise ModelRejected(model.onnx_path, f"smoke prediction failed: {exc}") from exc
    p = np.asarray(probabilities, dtype=np.float64)
    if p.shape != (len(rows), 2):
        raise ModelRejected(model.onnx_path, f"smoke prediction has shape {p.shape}, expected "
                                             f"({len(rows)}, 2)")
    if not np.all(np.isfinite(p)) or np.any(p < 0.0) or np.any(p > 1.0):
        raise ModelRejected(model.onnx_path, f"smoke prediction {p.tolist()} is not a "
                                             "probability in [0, 1]")
    if np.any(np.abs(p.sum(axis=1) - 1.0) > 1e-3):
        raise ModelRejected(model.onnx_path, f"smoke prediction rows {p.tolist()} do not sum "
                                             "to 1: not class probabilities")
    if any(not math.isclose(a, b, abs_tol=1e-6) for a, b in zip(single, p[:, 1], strict=True)):
        raise ModelRejected(model.onnx_path, f"per-row scores {single} differ from the batch "
                                             f"{p[:, 1].tolist()}")
