"""The churn model: committed files, the scoring wrapper, rejections, feature parity.

Nothing here retrains: the tests load the committed models/churn.onnx + churn.json, and build
deliberately bad model files in tmp_path (with the onnx package, a dev dependency).
"""

from __future__ import annotations

import hashlib
import json
import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from jobs.workload.workload import DEFAULT_START_MS, generate_users
from models import CHURN_META, CHURN_ONNX
from models.churn_labels import (
    ChurnSpec,
    apply_event,
    churn_label,
    kept_events,
    labelled_snapshots,
    shipped_rates,
    snapshot_vector,
    user_plans,
    workload_spec,
)
from tests.builders import click
from udfs.catalog.files import catalog_files, load_catalog, load_files
from udfs.catalog.registries import Registries
from udfs.churn import (
    INPUT_NAME,
    META_FEATURES_KEY,
    META_VERSION_KEY,
    OUTPUT_NAME,
    ChurnModel,
    ModelRejected,
    feature_spec_records,
    load_or_keep,
)
from udfs.engine import Click, Rules, UserState, step
from udfs.features.codec import decode_state, encode_state
from udfs.features.spec import DAY_MS, FEATURE_NAMES, FEATURE_SPEC
from udfs.features.state import UserFeatures, update
from udfs.features.vector import vector, vector_list

WIDTH = len(FEATURE_NAMES)
DAY = DAY_MS
SMALL = ChurnSpec(users=40, seed=11)


@pytest.fixture(scope="module")
def model() -> ChurnModel:
    return ChurnModel.load(CHURN_ONNX, CHURN_META)


@pytest.fixture(scope="module")
def meta() -> dict[str, Any]:
    return json.loads(CHURN_META.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def serving_rules() -> Rules:
    """The definitions a job loads at start (the shipped catalog, rate table included)."""
    updates = load_files(catalog_files(), check_references=False).updates(0, "file")
    return Rules(Registries.from_updates(updates), 10_000 * DAY_MS)


def serve_click(stored: bytes | None, event: dict[str, Any], rules: Rules
                ) -> tuple[bytes | None, bool]:
    """One click through the operator's path: features decoded from their ValueState bytes,
    ``udfs.engine.step`` (money converted to USD with the rate table in force, then the
    features updated), encoded again. Returns the bytes and whether the click was applied."""
    state = UserState(features=decode_state(stored) if stored is not None else None)
    out = step(state, Click(dict(event)), rules, 0)
    if out.duplicate:
        return stored, False
    assert state.features is not None and out.applied == 1 and out.unconverted == []
    return encode_state(state.features), True


@pytest.fixture(scope="module")
def small_data():
    return labelled_snapshots(SMALL)


@pytest.fixture(scope="module")
def small_histories() -> tuple[dict[str, list[dict]], dict[str, dict | None]]:
    """The kept events of the small simulation per user (emission order), and metadata."""
    users = generate_users(workload_spec(SMALL))
    plans = user_plans(SMALL, users)
    by_user: dict[str, list[dict]] = {}
    for ev in kept_events(SMALL, plans):
        by_user.setdefault(ev["user_id"], []).append(ev)
    metadata = {u["user_id"]: (u if plans[u["user_id"]].has_metadata else None) for u in users}
    return by_user, metadata


# --- the committed model ------------------------------------------------------------------------


def test_committed_model_loads_with_its_version(model, meta):
    assert model.version == meta["version"]
    assert model.version.startswith("churn-gbt-")
    assert model.sha256 == hashlib.sha256(CHURN_ONNX.read_bytes()).hexdigest()
    assert 0.0 < model.threshold < 1.0
    assert CHURN_ONNX.stat().st_size < 1_000_000


def test_committed_metadata_matches_the_feature_spec(meta):
    assert meta["features"] == list(FEATURE_NAMES)
    assert meta["feature_spec"] == feature_spec_records()
    assert meta["input_name"] == INPUT_NAME and meta["output_name"] == OUTPUT_NAME


def test_committed_model_beats_the_recency_baseline(meta):
    by_kind = meta["metrics"]["by_kind"]
    for kind in ("cutoff", "all"):
        assert by_kind[kind]["roc_auc"] > by_kind[kind]["baseline_recency_roc_auc"] + 0.01
    assert 0.75 < by_kind["cutoff"]["roc_auc"] < 0.97  # realistic, not trivial


def test_committed_model_was_trained_on_usd_at_the_shipped_rates(meta):
    """Serving converts money with the shipped table; a model trained otherwise is skewed."""
    table = load_catalog().rates[0]
    assert meta["training"]["currency_rates"] == {
        "id": table.id, "version": table.version, "per_usd": dict(table.per_usd)}


def test_model_card_carries_the_metrics(meta):
    card = (CHURN_ONNX.parent / "MODEL_CARD.md").read_text(encoding="utf-8")
    assert meta["version"] in card and meta["onnx_sha256"] in card
    assert f"**{meta['metrics']['by_kind']['cutoff']['roc_auc']:.3f}**" in card


def test_session_is_single_threaded(model):
    options = model._session.get_session_options()
    assert options.intra_op_num_threads == 1 and options.inter_op_num_threads == 1


# --- scoring ------------------------------------------------------------------------------------


def test_scores_are_probabilities_and_batch_equals_rows(model, small_data):
    vectors = [list(s.vector) for s in small_data.snapshots]
    assert len(vectors) > 20
    single = [model.score(v) for v in vectors]
    assert all(isinstance(s, float) and 0.0 <= s <= 1.0 for s in single)
    batch = model.score_batch(vectors)
    assert batch == pytest.approx(single, abs=1e-6)
    assert model.score_batch(np.asarray(vectors[:3])) == pytest.approx(single[:3], abs=1e-6)
    assert len(set(np.round(single, 4))) > 5  # the model does separate users


def test_score_of_a_user_without_data_is_a_probability(model):
    assert 0.0 <= model.score(vector_list(None, DEFAULT_START_MS, None)) <= 1.0


def test_wrong_vector_width_is_a_value_error(model):
    with pytest.raises(ValueError, match=f"{WIDTH} values"):
        model.score([0.0] * (WIDTH - 1))
    with pytest.raises(ValueError, match=f"{WIDTH} values"):
        model.score_batch([[0.0] * (WIDTH + 1)])
    assert model.score_batch([]) == []


def test_model_is_not_picklable(model):
    with pytest.raises(TypeError, match="open()"):
        pickle.dumps(model)


def _session_events(user: str, t: int, n: int, buy: bool) -> list[dict]:
    steps = ["PAGE_VIEW", "PRODUCT_VIEW", "SEARCH", "PRODUCT_VIEW"][:n]
    if buy:
        steps += ["ADD_TO_CART", "CHECKOUT", "PURCHASE"]
    out = []
    for i, kind in enumerate(steps):
        cart = kind in ("ADD_TO_CART", "PURCHASE")
        out.append(click(
            f"{user}-{t}-{i}", user, kind, t + i * 20_000, session_id=f"{user}-{t}",
            product_id="P00001" if kind != "PAGE_VIEW" else None,
            order_id=f"o-{user}-{t}" if kind in ("CHECKOUT", "PURCHASE") else None,
            price=20.0 if cart else None, quantity=1 if cart else None))  # USD with a price
    return out


def test_fading_user_scores_higher_than_an_active_one(model):
    now = DEFAULT_START_MS + 45 * DAY
    active: UserFeatures | None = None
    fading: UserFeatures | None = None
    for day in range(45, 0, -1):  # a session a day, a purchase every third day, until today
        for ev in _session_events("active", now - day * DAY + 3_600_000, 4, day % 3 == 0):
            active = update(active, ev)
    for day in range(45, 12, -1):  # busy, stops buying, thins out, silent for 12 days
        if day > 30 or day % (1 + (30 - day) // 4) == 0:
            for ev in _session_events("fading", now - day * DAY, 3, day > 35 and day % 3 == 0):
                fading = update(fading, ev)
    p_active = model.score(vector_list(active, now, None))
    p_fading = model.score(vector_list(fading, now, None))
    assert p_fading > p_active + 0.3
    assert model.at_risk(p_fading) and not model.at_risk(p_active)


# --- the feature spec and parity ----------------------------------------------------------------


def test_vector_list_is_vector_in_feature_names_order(small_histories):
    by_user, metadata = small_histories
    now = SMALL.cutoff_ms
    for uid, events in list(by_user.items())[:10]:
        state = None
        for ev in events:
            if ev["event_time"] <= now:
                state, _ = apply_event(state, ev, shipped_rates().per_usd)
        named = vector(state, now, metadata[uid])
        assert set(named) == set(FEATURE_NAMES)
        assert vector_list(state, now, metadata[uid]) == [
            named[n] for n in FEATURE_NAMES]
    assert [s.name for s in FEATURE_SPEC] == list(FEATURE_NAMES)
    assert len(set(FEATURE_NAMES)) == WIDTH
    assert all(s.dtype in ("int", "float") for s in FEATURE_SPEC)


def test_training_vectors_equal_the_operator_state_path(small_data, small_histories,
                                                       serving_rules):
    """Replaying as training does == the engine's step with decode/encode per event (operator).

    The histories price most clicks in the users' local currencies (EUR, GBP, JPY, INR, ...):
    the engine converts them to USD with the catalog's rate table before the features see them,
    and training must have done the same (money features of the same history, equal vectors).
    """
    by_user, metadata = small_histories
    per_usd = shipped_rates().per_usd
    cutoff = SMALL.cutoff_ms
    expected = {s.user_id: s for s in small_data.snapshots if s.kind == "cutoff"}
    events_at = {s.user_id: s for s in small_data.snapshots if s.kind == "event"}
    checked = foreign = 0
    foreign_money: set[str] = set()
    for uid, events in by_user.items():
        memory: UserFeatures | None = None  # the training path
        stored: bytes | None = None  # the operator's ValueState bytes
        for ev in events:
            if ev["event_time"] > cutoff:
                continue
            memory, applied = apply_event(memory, ev, per_usd)
            stored, applied_too = serve_click(stored, ev, serving_rules)
            assert applied == applied_too
            assert stored is not None
            if not applied:
                continue  # a duplicate: the engine does not score it
            if ev["price"] is not None and ev["currency"] not in (None, "USD"):
                foreign += 1
                foreign_money.add(uid)
            state = decode_state(stored)
            operator = snapshot_vector(state, ev["event_time"], metadata[uid])
            assert snapshot_vector(memory, ev["event_time"], metadata[uid]) == operator
            snap = events_at.get(uid)
            if snap is not None and snap.now_ms == max(ev["event_time"], state.last_event_ms) \
                    and list(snap.vector) == operator:
                checked += 1
        if memory is None:
            assert uid not in expected  # no event before the cutoff: no snapshot
            continue
        assert stored is not None
        operator = snapshot_vector(decode_state(stored), cutoff, metadata[uid])
        assert list(expected[uid].vector) == operator
        assert snapshot_vector(memory, cutoff, metadata[uid]) == operator
    assert len(expected) > 20 and checked >= len(events_at) > 5
    # the parity covers money in other currencies, not only dollars
    assert foreign > 50 and len(foreign_money & set(expected)) > 10


def test_training_converts_a_foreign_price_as_serving_does(serving_rules):
    """A euro and a yen cart: the training replay's money features are the engine's, in USD."""
    t = DEFAULT_START_MS + DAY
    events = [
        click("f1", "fx", "ADD_TO_CART", t, product_id="P1", price=46.0, currency="EUR",
              quantity=2),
        click("f2", "fx", "ADD_TO_CART", t + 60_000, product_id="P2", price=1500.0,
              currency="JPY", quantity=1),
        click("f3", "fx", "PURCHASE", t + 120_000, product_id="P1", order_id="o1",
              price=46.0, currency="EUR", quantity=2),
    ]
    memory: UserFeatures | None = None
    stored: bytes | None = None
    for ev in events:
        memory, _ = apply_event(memory, ev, shipped_rates().per_usd)
        stored, _ = serve_click(stored, ev, serving_rules)
    now = t + DAY
    served = vector(decode_state(stored), now, None)
    assert vector(memory, now, None) == served
    assert served["revenue_total"] == pytest.approx(100.0)  # 2 x 46 EUR at 0.92 per USD
    assert served["cart_value"] == pytest.approx(10.0)  # left: 1,500 JPY at 150 per USD


def test_labels_follow_the_definition():
    times = [10, 20, 100]
    assert churn_label(times, 20, 50) == 1  # nothing in (20, 70]
    assert churn_label(times, 20, 80) == 0  # 100 in (20, 100]
    assert churn_label(times, 100, 1_000) == 1
    assert churn_label(times, 0, 5, gap_ms=5) == 0  # 10 in (5, 10]
    assert churn_label(times, 0, 5, gap_ms=10) == 1  # (10, 15] is empty: 10 is in the gap
    assert churn_label(times, 0, 10, gap_ms=10) == 0  # 20 in (10, 20]


def test_simulation_is_reproducible_and_labelled(small_data):
    again = labelled_snapshots(SMALL)
    assert again.snapshots == small_data.snapshots
    labels = [s.label for s in small_data.snapshots if s.kind == "cutoff"]
    assert 0 < sum(labels) < len(labels)
    churners = [p for p in small_data.plans.values() if p.churner]
    assert 0 < len(churners) < len(small_data.plans)
    for plan in churners:
        assert plan.stop_ms is not None
        assert plan.keep_probability(plan.stop_ms + 1) == 0.0 or plan.blips or plan.return_ms


# --- rejected model files -----------------------------------------------------------------------


def _toy_onnx(width: int = WIDTH, *, version: str = "toy-1", softmax: bool = True,
              batch: Any = "N", input_name: str = INPUT_NAME, output_name: str = OUTPUT_NAME,
              features: str | None = None) -> bytes:
    """A valid ONNX model: probabilities = softmax(x @ W), with our metadata_props."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    w = np.random.default_rng(0).normal(0, 1e-9, size=(width, 2)).astype(np.float32)
    nodes = [helper.make_node("MatMul", [input_name, "W"], ["logits" if softmax else output_name])]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["logits"], [output_name], axis=1))
    graph = helper.make_graph(
        nodes, "toy",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [batch, width])],
        [helper.make_tensor_value_info(output_name, TensorProto.FLOAT, [batch, 2])],
        initializer=[helper.make_tensor("W", TensorProto.FLOAT, [width, 2], w.ravel())],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 9
    props = {META_VERSION_KEY: version}
    if features is not None:
        props[META_FEATURES_KEY] = features
    helper.set_model_props(model, props)
    if not softmax:  # push the outputs out of [0, 1]
        model.graph.initializer[0].CopyFrom(
            helper.make_tensor("W", TensorProto.FLOAT, [width, 2], np.full(width * 2, 5.0)))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _write(tmp_path: Path, data: bytes, **meta: Any) -> tuple[Path, Path]:
    onnx_path, meta_path = tmp_path / "model.onnx", tmp_path / "model.json"
    onnx_path.write_bytes(data)
    content = {
        "version": "toy-1",
        "features": list(FEATURE_NAMES),
        "feature_spec": feature_spec_records(),
        "onnx_sha256": hashlib.sha256(data).hexdigest(),
        "threshold": 0.5,
        "input_name": INPUT_NAME,
        "output_name": OUTPUT_NAME,
    }
    content.update(meta)
    meta_path.write_text(json.dumps(content), encoding="utf-8")
    return onnx_path, meta_path


def _rejected(onnx_path: Path, meta_path: Path, blame: Path, *fragments: str) -> ModelRejected:
    with pytest.raises(ModelRejected) as info:
        ChurnModel.load(onnx_path, meta_path)
    exc = info.value
    assert exc.path == str(blame)
    assert str(blame) in str(exc)
    for fragment in fragments:
        assert fragment in str(exc), str(exc)
    return exc


def test_a_well_formed_toy_model_loads(tmp_path):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx())
    toy = ChurnModel.load(onnx_path)  # metadata next to the file by default
    assert toy.version == "toy-1" and toy.meta_path == meta_path
    assert toy.score([0.0] * WIDTH) == pytest.approx(0.5, abs=1e-3)


def test_wrong_input_width_is_rejected(tmp_path):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(width=10))
    _rejected(onnx_path, meta_path, onnx_path, "input width is 10", f"expected {WIDTH}")


def test_fixed_batch_or_other_input_name_is_rejected(tmp_path):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(batch=1))
    _rejected(onnx_path, meta_path, onnx_path, "batch dimension is fixed")
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(input_name="x"))
    _rejected(onnx_path, meta_path, onnx_path, "input is ('x'", f"'{INPUT_NAME}'")


def test_missing_probabilities_output_is_rejected(tmp_path):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(output_name="label"))
    _rejected(onnx_path, meta_path, onnx_path, "outputs are [('label'", f"'{OUTPUT_NAME}'")


def test_scores_outside_unit_interval_fail_the_smoke_prediction(tmp_path):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(softmax=False))
    _rejected(onnx_path, meta_path, onnx_path, "smoke prediction", "[0, 1]")


def test_wrong_feature_order_is_rejected(tmp_path):
    names = list(FEATURE_NAMES)
    names[3], names[4] = names[4], names[3]
    onnx_path, meta_path = _write(tmp_path, CHURN_ONNX.read_bytes(), features=names)
    _rejected(onnx_path, meta_path, meta_path, "another order", f"position 3 is {names[3]!r}",
              f"expected {FEATURE_NAMES[3]!r}")


def test_missing_or_unknown_features_are_rejected(tmp_path):
    names = [*FEATURE_NAMES[:-1], "days_since_churn"]
    onnx_path, meta_path = _write(tmp_path, CHURN_ONNX.read_bytes(), features=names)
    _rejected(onnx_path, meta_path, meta_path, f"missing [{FEATURE_NAMES[-1]!r}]",
              "unknown ['days_since_churn']")


def test_changed_feature_default_is_rejected(tmp_path):
    spec = feature_spec_records()
    spec[0]["default"] = -1.0
    onnx_path, meta_path = _write(tmp_path, CHURN_ONNX.read_bytes(), feature_spec=spec)
    _rejected(onnx_path, meta_path, meta_path, "feature 0", "other feature definitions")


def test_features_inside_the_onnx_file_must_match(tmp_path):
    inside = ",".join(reversed(FEATURE_NAMES))
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(features=inside))
    _rejected(onnx_path, meta_path, onnx_path, META_FEATURES_KEY, "another order")


def test_corrupt_bytes_are_rejected(tmp_path):
    junk = random.Random(3).randbytes(4096)
    onnx_path, meta_path = _write(tmp_path, junk)
    _rejected(onnx_path, meta_path, onnx_path, "onnxruntime cannot load it")
    truncated = CHURN_ONNX.read_bytes()[:5000]
    onnx_path, meta_path = _write(tmp_path, truncated)
    _rejected(onnx_path, meta_path, onnx_path, "onnxruntime cannot load it")


def test_wrong_sha256_is_rejected(tmp_path):
    data = CHURN_ONNX.read_bytes()
    onnx_path, meta_path = _write(tmp_path, data, onnx_sha256="0" * 64)
    _rejected(onnx_path, meta_path, onnx_path, "sha256 is " + hashlib.sha256(data).hexdigest(),
              "expects " + "0" * 64)


def test_version_inside_the_file_must_match_the_metadata(tmp_path):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(version="toy-2"))
    _rejected(onnx_path, meta_path, onnx_path, "'toy-2'", "'toy-1'")


def test_unreadable_or_incomplete_metadata_is_rejected(tmp_path):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx())
    meta_path.write_text("{not json", encoding="utf-8")
    _rejected(onnx_path, meta_path, meta_path, "not JSON")
    meta_path.write_text(json.dumps({"version": "toy-1"}), encoding="utf-8")
    _rejected(onnx_path, meta_path, meta_path, "lacks ['features', 'onnx_sha256', 'threshold']")
    _, meta_path = _write(tmp_path, _toy_onnx(), threshold=1.5)
    _rejected(onnx_path, meta_path, meta_path, "threshold")
    missing = tmp_path / "absent.onnx"
    _rejected(missing, meta_path, meta_path, "threshold")  # metadata is checked first
    _, meta_path = _write(tmp_path, _toy_onnx())
    _rejected(missing, meta_path, missing, "cannot read the file")


def test_a_rejected_model_leaves_the_running_one(tmp_path, model):
    onnx_path, meta_path = _write(tmp_path, _toy_onnx(width=10))
    kept, error = load_or_keep(model, onnx_path, meta_path)
    assert kept is model
    assert error is not None and str(onnx_path) in error and "input width" in error
    onnx_path, meta_path = _write(tmp_path, _toy_onnx())
    swapped, error = load_or_keep(model, onnx_path, meta_path)
    assert error is None and swapped is not None and swapped.version == "toy-1"
