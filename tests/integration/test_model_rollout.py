"""A new churn model version is rolled out by savepoint: stop the job with a savepoint, start it
from the savepoint with the new model. Keyed state (here, a segment membership) survives, and
the changes after the restart carry the new model version."""

import hashlib
import json
import time

import pytest

from infra import deploy
from models import CHURN_ONNX
from schemas.codec import Codec
from tests.builders import CART, click_bytes
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw
from udfs.churn import META_VERSION_KEY, ChurnModel

pytestmark = pytest.mark.integration

MIN = 60_000


def _new_model_version(directory, version):
    """The shipped model under another version (same trees): what a retraining would ship."""
    import onnx

    model = onnx.load(str(CHURN_ONNX))
    for prop in model.metadata_props:
        if prop.key == META_VERSION_KEY:
            prop.value = version
    onnx_file = directory / "churn.onnx"
    onnx.save(model, str(onnx_file))
    meta = json.loads(CHURN_ONNX.with_suffix(".json").read_text())
    meta["version"] = version
    meta["onnx_sha256"] = hashlib.sha256(onnx_file.read_bytes()).hexdigest()
    (directory / "churn.json").write_text(json.dumps(meta))
    return onnx_file


def _submit(cfg, *extra):
    return flink_jobs.submit(cfg, "--checkpoint-interval-ms", "1000", "--idleness-ms", "500",
                             *extra)


def test_new_model_by_savepoint_keeps_state(isolated_cfg, tmp_path):
    cfg = isolated_cfg
    codec = Codec.load()
    user = f"{cfg.consumer_group}-erin"
    t0 = (int(time.time() * 1000) // MIN - 60) * MIN

    def click(event_id, event_type, t, **fields):
        """(key, ClickEvent bytes) of erin for produce_raw."""
        return user.encode(), click_bytes(codec, f"{user}-{event_id}", user, event_type, t,
                                          **fields)

    def high_value_cart(records):
        return [r for _, name, r in records
                if name == "SegmentChange" and r["segment_id"] == "high-value-cart"]

    changes = TopicReader(cfg, cfg.segment_changes_topic, codec)
    job_id = _submit(cfg)
    try:
        produce_raw(cfg, cfg.clicks_topic, [click("1", "ADD_TO_CART", t0, **CART)])
        changes.wait_for(lambda r: len(high_value_cart(r)) >= 1, what="the ENTER")
        savepoint = deploy.stop_with_savepoint(cfg.flink_rest_url, job_id,
                                               (tmp_path / "savepoints").as_uri())
        job_id = None

        new_model = _new_model_version(tmp_path, "churn-gbt-test.2")
        assert ChurnModel.load(new_model).version == "churn-gbt-test.2"
        job_id = _submit(cfg, "--from-savepoint", savepoint, "--churn-model", str(new_model))
        # only the restored state knows erin is in high-value-cart: a fresh job would not EXIT
        produce_raw(cfg, cfg.clicks_topic, [click("2", "PURCHASE", t0 + MIN, order_id="o1",
                                                  **CART)])
        records = changes.wait_for(lambda r: len(high_value_cart(r)) >= 2, what="the EXIT")
    finally:
        changes.close()
        if job_id is not None:
            deploy.cancel(cfg.flink_rest_url, job_id)

    enter, leave = high_value_cart(records)[:2]
    assert (enter["change"], leave["change"]) == ("ENTER", "EXIT")
    assert enter["model_version"] == ChurnModel.load(CHURN_ONNX).version
    assert leave["model_version"] == "churn-gbt-test.2"
