"""Churn scoring inside the engine on a MiniCluster (parallelism 2), with the shipped model: a
user who buys daily and then goes silent drifts into churn-risk-high, and every change carries
the model's score and version."""

import pytest
from pyflink.common import Row

from jobs.connectors import click_watermarks
from jobs.job import build, file_definitions
from models import CHURN_META, CHURN_ONNX
from schemas.codec import Codec
from tests.builders import click_bytes
from tests.pipeline.fakes import FileWriterFactory, as_bytes
from udfs.churn import ChurnModel
from udfs.flink.descriptors import SOURCE_RECORD_ROW

pytestmark = pytest.mark.pipeline

T0 = 1_800_000_000_000
DAY = 86_400_000




def test_a_silent_buyer_drifts_into_churn_risk_high(env, cfg, tmp_path):
    codec = Codec.load()
    model = ChurnModel.load(CHURN_ONNX)
    payloads, n = [], 0
    for day in range(14):  # a daily buyer for two weeks, then nothing
        for k, event_type in enumerate(["PAGE_VIEW", "PRODUCT_VIEW", "ADD_TO_CART", "PURCHASE"]):
            n += 1
            extra = ({"product_id": "p1", "price": 30.0, "quantity": 1, "currency": "USD"}
                     if event_type in ("ADD_TO_CART", "PURCHASE") else {})
            if event_type == "PURCHASE":
                extra["order_id"] = f"o{day}"
            payloads.append(click_bytes(codec, f"e{n}", "drifter", event_type,
                                        T0 + day * DAY + k * 300_000, session_id=f"s{day}",
                                        **extra))
    last_event = T0 + 13 * DAY + 3 * 300_000
    rows = [Row("clicks", 0, i, T0 + 14 * DAY, b"drifter", p, None) for i, p in enumerate(payloads)]

    outputs = build(env.from_collection(rows, type_info=SOURCE_RECORD_ROW)
                    .assign_timestamps_and_watermarks(click_watermarks(cfg)),
                    env.from_collection([], type_info=SOURCE_RECORD_ROW),
                    env.from_collection([], type_info=SOURCE_RECORD_ROW),
                    cfg, file_definitions(cfg),
                    # the model as bytes: build reads no file
                    (CHURN_ONNX.read_bytes(), CHURN_META.read_bytes(), "churn.onnx", "churn.json"),
                    store=FileWriterFactory(str(tmp_path / "w.jsonl")))
    with outputs.all().execute_and_collect() as results:
        records = [codec.decode_named(as_bytes(value)) for _, _, value, _ in results]

    changes = [r for name, r in records if name == "SegmentChange"]
    assert changes and all(c["model_version"] == model.version for c in changes)
    assert all(c["churn_score"] is not None and 0 <= c["churn_score"] <= 1 for c in changes)
    # the end of the input lets event time run on: daily re-scoring of a silent user
    drift = [c for c in changes if c["segment_id"] == "churn-risk-high" and
             c["change"] == "ENTER" and c["event_time"] > last_event]
    assert drift, [(c["segment_id"], c["change"], c["event_time"], c["churn_score"])
                   for c in changes]
    first = min(drift, key=lambda c: c["event_time"])
    assert first["churn_score"] >= 0.6
    assert DAY <= first["event_time"] - last_event <= 60 * DAY


def test_a_bad_model_file_is_refused_before_the_job_is_submitted(tmp_path):
    import subprocess
    import sys

    bad = tmp_path / "churn.onnx"
    bad.write_bytes(b"not a model")
    (tmp_path / "churn.json").write_text((CHURN_ONNX.with_suffix(".json")).read_text())
    proc = subprocess.run(
        [sys.executable, "-m", "jobs.job", "--local", "--bounded", "--churn-model", str(bad)],
        capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    message = proc.stdout + proc.stderr
    assert "churn model rejected" in message and str(bad) in message
    assert "Traceback" not in message  # one clear line, not a stack trace
