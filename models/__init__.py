"""The churn model: labelled histories, training, the exported ONNX file and its metadata.

- :mod:`models.churn_labels`: how churn is simulated on top of the workload generator and
  labelled; turns histories into feature vectors through the serving code (``udfs.features``).
- :mod:`models.train_churn`: trains, evaluates and exports the model
  (``python -m models.train_churn``); writes ``churn.onnx``, ``churn.json``, ``MODEL_CARD.md``.
- :mod:`models.bench_churn`: microseconds per scored event.

Serving lives in :mod:`udfs.churn`, which loads ``churn.onnx`` + ``churn.json`` and checks them
against ``udfs.features.spec.FEATURE_SPEC``.
"""

from pathlib import Path

#: The folder holding the committed model files.
MODEL_DIR = Path(__file__).resolve().parent
#: The committed model and its metadata.
CHURN_ONNX = MODEL_DIR / "churn.onnx"
CHURN_META = MODEL_DIR / "churn.json"

__all__ = ["CHURN_META", "CHURN_ONNX", "MODEL_DIR"]
