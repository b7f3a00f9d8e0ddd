"""Train, evaluate and export the churn model: ``python -m models.train_churn``.

Inputs: the simulation of :mod:`models.churn_labels` (``--users``, ``--seed``). Outputs, in
``--out`` (default: this folder): ``churn.onnx`` (a scikit-learn GradientBoostingClassifier
exported with skl2onnx: input ``features`` float32 [N, len(FEATURE_NAMES)], output
``probabilities`` float32 [N, 2], column 1 = churn), ``churn.json`` (version, feature spec,
threshold, metrics, the ONNX file's sha256; what :func:`udfs.churn.ChurnModel.load` checks) and
``MODEL_CARD.md``. Reproducible: the same arguments and library versions give the same bytes
(fixed seeds, no timestamps). About 40 s on one core with the defaults (the simulation
and the feature replay take most of it).

Train, validation and test are split by user (a hash of seed and user id, 60/20/20): both
snapshots of a user land in the same split. The threshold maximises F1 on validation; every
reported metric is on the test users, next to a recency baseline (score = seconds since the
last event).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import skl2onnx
import sklearn
from skl2onnx import to_onnx
from skl2onnx.common.data_types import FloatTensorType
from sklearn.ensemble import GradientBoostingClassifier
from sklearn.metrics import brier_score_loss, precision_recall_fscore_support, roc_auc_score

from models import MODEL_DIR
from models.churn_labels import SNAPSHOT_KINDS, ChurnSpec, LabelledData, labelled_snapshots
from udfs.churn import (
    INPUT_NAME,
    META_FEATURES_KEY,
    META_VERSION_KEY,
    OUTPUT_NAME,
    feature_spec_records,
)
from udfs.features.spec import FEATURE_NAMES, NEVER_SECONDS

#: Version of the model this script produces; bump it whenever the output changes.
VERSION = "churn-gbt-2026.11.2"
#: GradientBoostingClassifier parameters.
PARAMS: dict[str, Any] = {
    "n_estimators": 200,
    "max_depth": 3,
    "learning_rate": 0.05,
    "subsample": 0.8,
    "min_samples_leaf": 20,
}
SPLITS = ("train", "validation", "test")
_RECENCY = FEATURE_NAMES.index("seconds_since_last_event")
_CALIBRATION_BINS = 5


def split_of(user_id: str, seed: int) -> str:
    """The split of a user: 60 % train, 20 % validation, 20 % test, by a hash of seed and id."""
    bucket = hashlib.sha256(f"split/{seed}/{user_id}".encode()).digest()[0] % 10
    return "train" if bucket < 6 else "validation" if bucket < 8 else "test"


def _best_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """The threshold (a grid of 0.01 steps) with the best F1; the lower one on ties."""
    best, best_f1 = 0.5, -1.0
    for t in np.round(np.arange(0.05, 0.951, 0.01), 2):
        _, _, f1, _ = precision_recall_fscore_support(
            y, p >= t, average="binary", zero_division=0)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = float(t), float(f1)
    return best


def _at_threshold(y: np.ndarray, p: np.ndarray, threshold: float) -> dict[str, float]:
    precision, recall, f1, _ = precision_recall_fscore_support(
        y, p >= threshold, average="binary", zero_division=0)
    return {"precision": round(float(precision), 4), "recall": round(float(recall), 4),
            "f1": round(float(f1), 4), "flagged_share": round(float(np.mean(p >= threshold)), 4)}


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return round(float(roc_auc_score(y, p)), 4) if 0 < y.sum() < len(y) else None


def calibration_table(y: np.ndarray, p: np.ndarray, bins: int = _CALIBRATION_BINS
                      ) -> list[dict[str, float]]:
    """Equal-count bins of the predicted probability: mean predicted vs observed churn rate."""
    order = np.argsort(p, kind="stable")
    rows = []
    for chunk in np.array_split(order, bins):
        if len(chunk) == 0:
            continue
        rows.append({
            "lo": round(float(p[chunk].min()), 4),
            "hi": round(float(p[chunk].max()), 4),
            "n": int(len(chunk)),
            "mean_predicted": round(float(p[chunk].mean()), 4),
            "observed_rate": round(float(y[chunk].mean()), 4),
        })
    return rows


def export_onnx(model: GradientBoostingClassifier, version: str) -> bytes:
    """The model as ONNX bytes, probabilities as a plain tensor, version and features inside."""
    onx = to_onnx(
        model,
        initial_types=[(INPUT_NAME, FloatTensorType([None, len(FEATURE_NAMES)]))],
        options={id(model): {"zipmap": False}},
        target_opset={"": 17, "ai.onnx.ml": 3},
    )
    outputs = [o.name for o in onx.graph.output]
    if OUTPUT_NAME not in outputs:
        raise RuntimeError(f"skl2onnx produced outputs {outputs}, expected {OUTPUT_NAME!r}")
    # skl2onnx lists the opset imports in set order, which follows the string hash seed of the
    # process: sorted by domain, the bytes are the same in every run
    opsets = sorted((o.domain, o.version) for o in onx.opset_import)
    del onx.opset_import[:]
    onx.opset_import.extend(onnx.helper.make_opsetid(d, v) for d, v in opsets)
    onx.graph.name = "nudgeflow_churn"
    onx.doc_string = f"nudgeflow churn model {version}: P(no event in the next 14 days)"
    for key, value in ((META_VERSION_KEY, version), (META_FEATURES_KEY, ",".join(FEATURE_NAMES))):
        prop = onx.metadata_props.add()
        prop.key, prop.value = key, value
    onnx.checker.check_model(onx)
    return onx.SerializeToString()


def train(spec: ChurnSpec, version: str = VERSION) -> tuple[bytes, dict[str, Any], LabelledData]:
    """Simulate, train, pick the threshold, export and evaluate.

    Returns:
        The ONNX bytes, the metadata (``churn.json`` content) and the labelled data.
    """
    data = labelled_snapshots(spec)
    rows = data.snapshots
    x = np.asarray([r.vector for r in rows], dtype=np.float32)
    y = np.asarray([r.label for r in rows], dtype=np.int64)
    kind = np.asarray([r.kind for r in rows])
    split = np.asarray([split_of(r.user_id, spec.seed) for r in rows])
    masks = {s: split == s for s in SPLITS}

    model = GradientBoostingClassifier(random_state=spec.seed, **PARAMS)
    model.fit(x[masks["train"]], y[masks["train"]])
    onnx_bytes = export_onnx(model, version)

    # Score every row through the exported model: the numbers describe what is served.
    options = ort.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    session = ort.InferenceSession(onnx_bytes, options, providers=["CPUExecutionProvider"])
    p = session.run([OUTPUT_NAME], {INPUT_NAME: x})[0][:, 1].astype(np.float64)
    skl_diff = float(np.max(np.abs(p - model.predict_proba(x)[:, 1])))
    if skl_diff > 1e-4:
        raise RuntimeError(f"ONNX and scikit-learn disagree by {skl_diff}")
    recency = x[:, _RECENCY].astype(np.float64)

    val = masks["validation"]
    threshold = _best_threshold(y[val], p[val])
    val_cut = val & (kind == "cutoff")
    base_threshold_s = _baseline_threshold(y[val_cut], recency[val_cut])

    test = masks["test"]
    metrics: dict[str, Any] = {"threshold": threshold, "by_kind": {}}
    for name, mask in [("all", test), *((k, test & (kind == k)) for k in SNAPSHOT_KINDS)]:
        yt, pt, rt = y[mask], p[mask], recency[mask]
        metrics["by_kind"][name] = {
            "rows": int(mask.sum()),
            "churn_rate": round(float(yt.mean()), 4),
            "roc_auc": _auc(yt, pt),
            "baseline_recency_roc_auc": _auc(yt, rt),
            "at_threshold": _at_threshold(yt, pt, threshold),
            "baseline_at_threshold": _at_threshold(yt, rt, base_threshold_s),
            "brier": round(float(brier_score_loss(yt, pt)), 4),
            "mean_predicted": round(float(pt.mean()), 4),
        }
    metrics["baseline_threshold_days"] = round(base_threshold_s / 86_400, 2)
    metrics["calibration"] = {
        name: calibration_table(y[mask], p[mask])
        for name, mask in [("all", test), *((k, test & (kind == k)) for k in SNAPSHOT_KINDS)]
    }
    metrics["validation_roc_auc"] = _auc(y[val], p[val])
    metrics["train_roc_auc"] = _auc(y[masks["train"]], p[masks["train"]])
    metrics["onnx_vs_sklearn_max_abs_diff"] = float(f"{skl_diff:.2g}")
    top = sorted(zip(model.feature_importances_, FEATURE_NAMES, strict=True), reverse=True)[:12]

    sizes = {
        s: {"users": len({r.user_id for r, m in zip(rows, masks[s], strict=True) if m}),
            "rows": int(masks[s].sum()),
            "churn_rate": round(float(y[masks[s]].mean()), 4)}
        for s in SPLITS
    }
    meta: dict[str, Any] = {
        "version": version,
        "model": f"sklearn GradientBoostingClassifier {PARAMS}",
        "onnx_file": "churn.onnx",
        "onnx_sha256": hashlib.sha256(onnx_bytes).hexdigest(),
        "onnx_opsets": {o.domain or "ai.onnx": o.version
                        for o in onnx.load_from_string(onnx_bytes).opset_import},
        "input_name": INPUT_NAME,
        "input_dtype": "float32",
        "output_name": OUTPUT_NAME,
        "positive_column": 1,
        "threshold": threshold,
        "features": list(FEATURE_NAMES),
        "feature_spec": feature_spec_records(),
        "label": {
            "definition": "1 = no event in (t + gap, t + gap + horizon] after the snapshot t",
            "horizon_days": spec.horizon_days,
            "gap_minutes": spec.label_gap_minutes,
        },
        "training": {
            "script": "python -m models.train_churn "
                      f"--users {spec.users} --seed {spec.seed}",
            "users": spec.users,
            "seed": spec.seed,
            "observation_days": spec.observation_days,
            "events_kept": data.events_kept,
            "events_fed": data.events_fed,
            "currency_rates": {
                "id": data.rates.id,
                "version": data.rates.version,
                "per_usd": dict(data.rates.per_usd),
            },
            "label_disagrees_with_hidden_plan": {
                k: round(float(np.mean([r.label != r.churner for r in rows if r.kind == k])), 4)
                for k in SNAPSHOT_KINDS
            },
            "splits": sizes,
            "params": PARAMS,
            "libraries": {
                "scikit-learn": sklearn.__version__,
                "skl2onnx": skl2onnx.__version__,
                "onnx": onnx.__version__,
                "onnxruntime": ort.__version__,
                "numpy": np.__version__,
            },
        },
        "metrics": metrics,
        "top_features": [{"name": n, "importance": round(float(v), 4)} for v, n in top],
    }
    return onnx_bytes, meta, data


def _baseline_threshold(y: np.ndarray, recency_s: np.ndarray) -> float:
    """The recency (seconds) with the best F1 on validation: whole days 1..60 and never."""
    best, best_f1 = 14 * 86_400.0, -1.0
    for days in [*range(1, 61), NEVER_SECONDS / 86_400]:
        _, _, f1, _ = precision_recall_fscore_support(
            y, recency_s >= days * 86_400, average="binary", zero_division=0)
        if f1 > best_f1 + 1e-12:
            best, best_f1 = days * 86_400.0, float(f1)
    return best


# --- the model card -----------------------------------------------------------------------------


def _fmt(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def render_card(meta: dict[str, Any], spec: ChurnSpec, size_bytes: int) -> str:
    """MODEL_CARD.md from the metadata: the numbers in it always match churn.json."""
    m = meta["metrics"]
    t = meta["training"]
    k = m["by_kind"]
    lines = [
        f"# Churn model card: `{meta['version']}`",
        "",
        "Generated by `python -m models.train_churn` (do not edit by hand: rerun the script).",
        f"Files: `models/churn.onnx` ({size_bytes:,} bytes, sha256 `{meta['onnx_sha256']}`) "
        "and `models/churn.json` (this card's numbers, machine-readable).",
        "",
        "## What it predicts and intended use",
        "",
        f"P(churn): the probability that a user has **no event in the next "
        f"{spec.horizon_days} days** (counted from {spec.label_gap_minutes} minutes after the "
        "moment of scoring, so the session being scored does not count as staying), from "
        "the user's behavioural feature vector at that moment. It is meant to be scored in the "
        "per-user operator through `udfs.churn.ChurnModel` on events and timers, carried on every "
        "output as `churn_score` with `model_version`, and read by segment conditions. Use it to "
        "rank and target retention nudges, and as one input of trigger priority.",
        "",
        f"`threshold` = {m['threshold']:.2f}: chosen to maximise F1 on the validation users; "
        "a score at or above it is \"at risk\". Campaigns with a different cost of a wasted "
        "nudge vs a missed churner should pick their own cut on the score.",
        "",
        "Not for: decisions about individuals beyond marketing nudges (credit, pricing, "
        "access); real customers until it has been retrained and re-evaluated on real, "
        "labelled histories (see Limits).",
        "",
        "## Features",
        "",
        f"The {len(meta['features'])} features of `udfs.features.spec.FEATURE_SPEC`, in that "
        "order (names, types, defaults and definitions: `udfs/features/FEATURES.md`): event "
        "counts per type over 1 h / 24 h / 7 d / 30 d, sessions, recency of the last event, "
        "purchase and add-to-cart, days since the first event, cart, orders and revenue, "
        "channel shares, and the metadata features (has_metadata, days_since_signup, "
        "lifetime_value). Raw values, no scaling (trees). Training computes them with the "
        "serving code itself "
        "(`udfs.features.state.update` + `vector_list`, replayed event by event as the operator "
        "does), and `churn.json` stores the names, types and defaults, which the loader "
        "compares with the running code. Money is in US dollars as in serving: each click's "
        "price goes through the engine's conversion (`udfs.currency.rates.to_reference`) with "
        f"the shipped rate table (`{t['currency_rates']['id']}` version "
        f"{t['currency_rates']['version']}, `udfs/catalog/currency-rates.yaml`; "
        "`churn.json` `training.currency_rates`) before the features see it. A parity test "
        "replays the same history (clicks in EUR, GBP, JPY and more among them) through "
        "`udfs.engine.step` with the catalog's rates and `encode_state`/`decode_state` "
        "between events (the operator's path) and checks the vectors are equal.",
        "",
        "Most important features (impurity importance):",
        "",
        "| feature | importance |",
        "|---|---|",
        *(f"| `{f['name']}` | {f['importance']:.3f} |" for f in meta["top_features"]),
        "",
        "## Training data",
        "",
        "Synthetic: `models/churn_labels.py` on top of the workload generator "
        f"(`jobs/workload/workload.py`, not modified): {spec.users:,} users, seed {spec.seed}, "
        f"{spec.observation_days} days of observation then a {spec.horizon_days}-day label "
        f"window; {t['events_kept']:,} events kept, {t['events_fed']:,} applied to the "
        "features up to the cutoff. The generator's sessions are thinned per user by a hidden "
        "plan:",
        "",
        "- churners (probability "
        + ", ".join(f"{plan} {p:g}" for plan, p in spec.churn_by_plan.items())
        + " by plan, "
        f"+{spec.new_user_churn_bonus} for the {spec.new_user_fraction:.0%} who join "
        f"partway) stop buying {spec.lull_lead_days[0]:g}-{spec.lull_lead_days[1]:g} days "
        f"before they fade, fade linearly over {spec.decay_days[0]:g}-{spec.decay_days[1]:g} "
        f"days, and stop (up to {spec.stop_after_cutoff_days:g} days after the cutoff);",
        f"- noise: {spec.blip_fraction:.0%} of churners have late blips, "
        f"{spec.return_fraction:.0%} come back; {spec.quiet_fraction:.0%} of stayers have a "
        f"quiet spell of {spec.quiet_days[0]:g}-{spec.quiet_days[1]:g} days, "
        f"{spec.lull_fraction:.0%} a commerce lull; activity drifts day by day; "
        "low-activity stayers go quiet for two weeks by chance; "
        f"{spec.missing_metadata_fraction:.0%} of users have no metadata.",
        "",
        "The label is what the data shows (no event in the window), not the hidden plan: "
        f"{t['label_disagrees_with_hidden_plan']['cutoff']:.0%} of cutoff and "
        f"{t['label_disagrees_with_hidden_plan']['event']:.0%} of event labels disagree with "
        "it, which is what keeps the task from being trivial. "
        "Two snapshots per user: at the observation cutoff (as a timer scores) and right after "
        f"an event in the {spec.event_snapshot_days} days before it (as the operator scores on "
        "an event, where recency is about 0 and the model has to read the trend). Users are "
        "split 60/20/20 into train / validation / test by a hash of the user id:",
        "",
        "| split | users | rows | churn rate |",
        "|---|---|---|---|",
        *(f"| {s} | {v['users']:,} | {v['rows']:,} | {v['churn_rate']:.3f} |"
          for s, v in t["splits"].items()),
        "",
        "## Model",
        "",
        f"scikit-learn `GradientBoostingClassifier` ({', '.join(f'{a}={b}' for a, b in t['params'].items())}), "  # noqa: E501
        "exported with skl2onnx (opsets: "
        + ", ".join(f"{d} {v}" for d, v in meta["onnx_opsets"].items())
        + "; zipmap off): input "
        f"`{meta['input_name']}` float32 [N, {len(meta['features'])}], output "
        f"`{meta['output_name']}` float32 [N, 2], column 1 = churn. Libraries: "
        + ", ".join(f"{a} {b}" for a, b in t["libraries"].items())
        + f". ONNX vs scikit-learn: max |diff| {m['onnx_vs_sklearn_max_abs_diff']:g}.",
        "",
        "## Metrics (test users, scored through the exported ONNX model)",
        "",
        "Baseline: the recency of the last event (seconds since it; higher = more at risk), "
        "with its own F1-best cut on validation cutoff snapshots "
        f"({m['baseline_threshold_days']:g} days).",
        "",
        "| snapshots | rows | churn rate | ROC AUC model | ROC AUC recency | precision | "
        "recall | F1 | recency precision / recall | Brier |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ("cutoff", "event", "all"):
        v = k[name]
        a, b = v["at_threshold"], v["baseline_at_threshold"]
        lines.append(
            f"| {name} | {v['rows']:,} | {v['churn_rate']:.3f} | **{_fmt(v['roc_auc'])}** | "
            f"{_fmt(v['baseline_recency_roc_auc'])} | {a['precision']:.3f} | "
            f"{a['recall']:.3f} | {a['f1']:.3f} | {b['precision']:.3f} / {b['recall']:.3f} | "
            f"{v['brier']:.3f} |")
    lines += [
        "",
        f"Validation ROC AUC {_fmt(m['validation_roc_auc'])}, train "
        f"{_fmt(m['train_roc_auc'])}. On event snapshots recency is about 0 for everyone, so "
        "the baseline is at chance there: the trend features are all there is.",
        "",
        "### Calibration (test, all snapshots; equal-count bins of the score)",
        "",
        "| score range | rows | mean predicted | observed churn rate |",
        "|---|---|---|---|",
        *(f"| {b['lo']:.3f} - {b['hi']:.3f} | {b['n']:,} | {b['mean_predicted']:.3f} | "
          f"{b['observed_rate']:.3f} |" for b in m["calibration"]["all"]),
        "",
        "By snapshot kind (mean predicted vs observed): "
        + "; ".join(f"{n} {k[n]['mean_predicted']:.3f} vs {k[n]['churn_rate']:.3f}"
                    for n in ("cutoff", "event"))
        + ". Per-kind tables are in `churn.json` (`metrics.calibration`).",
        "",
        "## Limits",
        "",
        "- Trained on simulated behaviour: the churn mechanism (fade, buying stops first, "
        "blips, quiet spells) is an assumption, and the metrics say how well the model "
        "recovers *that* mechanism, not how it will do on real users. Retrain on real "
        "labelled histories before trusting the numbers.",
        "- The label is \"no event for 14 days\", not a cancelled account; seasonal or "
        "naturally infrequent users look like churners.",
        "- Scores on event snapshots are lower than at timers for the same user (the event "
        "itself is evidence of staying); compare scores of the same kind of moment.",
        "- Money features are in USD at the shipped rates (version "
        f"{t['currency_rates']['version']}); publishing a rate table with very different rates "
        "moves the money features away from what the model was trained on: retrain then.",
        "- The feature vector is fixed by name, order, type and default: a change to "
        "`FEATURE_SPEC` makes the loader reject this model until it is retrained.",
        "",
        "## Versioning and reproducing",
        "",
        f"`{t['script']} --out models/` rewrites `churn.onnx`, `churn.json` and this card "
        "byte for byte with the library versions above. Bump `VERSION` in "
        "`models/train_churn.py` (`churn-gbt-YYYY.MM.N`) for any change of data, parameters "
        "or features. The version is stored in `churn.json` and inside the ONNX file "
        "(`metadata_props`); the loader checks both agree, checks the sha256, the input "
        "width and the feature spec, and runs a smoke prediction, rejecting the file with "
        "`udfs.churn.ModelRejected` otherwise (the running model stays).",
        "",
    ]
    return "\n".join(lines)


# --- command line -------------------------------------------------------------------------------


def _parse(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m models.train_churn", description=__doc__.split("\n\n")[0])
    defaults = ChurnSpec()
    parser.add_argument("--users", type=int, default=defaults.users,
                        help=f"users of the simulated workload (default: {defaults.users})")
    parser.add_argument("--seed", type=int, default=defaults.seed,
                        help=f"seed of the simulation and the model (default: {defaults.seed})")
    parser.add_argument("--out", type=Path, default=MODEL_DIR,
                        help="folder for churn.onnx, churn.json, MODEL_CARD.md "
                             "(default: models/)")
    parser.add_argument("--version", default=VERSION,
                        help=f"model version string (default: {VERSION})")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Train and write the model files; print the headline metrics."""
    args = _parse(argv)
    spec = ChurnSpec(users=args.users, seed=args.seed)
    onnx_bytes, meta, _ = train(spec, args.version)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    (out / "churn.onnx").write_bytes(onnx_bytes)
    (out / "churn.json").write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    (out / "MODEL_CARD.md").write_text(render_card(meta, spec, len(onnx_bytes)),
                                       encoding="utf-8")
    k = meta["metrics"]["by_kind"]
    print(f"{meta['version']}: {len(onnx_bytes):,} bytes, threshold {meta['threshold']:.2f}")
    for name in ("cutoff", "event", "all"):
        v = k[name]
        a = v["at_threshold"]
        print(f"  test {name:6s} AUC {_fmt(v['roc_auc'])} (recency "
              f"{_fmt(v['baseline_recency_roc_auc'])})  precision {a['precision']:.3f} "
              f"recall {a['recall']:.3f}  brier {v['brier']:.3f}")
    print(f"wrote {out / 'churn.onnx'}, {out / 'churn.json'}, {out / 'MODEL_CARD.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
