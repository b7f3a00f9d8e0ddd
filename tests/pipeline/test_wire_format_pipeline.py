"""The Confluent wire format option on a MiniCluster: the scenario of test_trigger_pipeline, built
with schema ids (as ``output_wire_format: confluent`` registers them), gives every value of the
segment-changes, trigger and decision topics as ``00``, that topic's id and the same Avro body;
read back through a registry lookup they are the records the single-object build gives.
Everything else (dead letters) keeps the single-object header."""

import pytest

from jobs.config import replace
from jobs.schema_registry import framed_topics
from schemas.codec import CONFLUENT_MAGIC, MAGIC, Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.pipeline.fakes import as_bytes, scripted_outputs
from tests.pipeline.test_trigger_pipeline import MIN, NOON

pytestmark = pytest.mark.pipeline


def _outputs(env, cfg, tmp_path, schema_ids):
    codec = Codec.load()
    metadata = [metadata_bytes(codec, "ann", "Europe/Berlin", at=NOON, email=True, sms=True)]
    clicks = [
        click_bytes(codec, "ann-1", "ann", "ADD_TO_CART", NOON, **CART),
        click_bytes(codec, "bad-1", "", "ADD_TO_CART", NOON),  # no user id: a dead letter
        click_bytes(codec, "dan-1", "dan", "PAGE_VIEW", NOON + 45 * MIN),
    ]
    outputs = scripted_outputs(env, cfg, tmp_path, clicks, NOON + 46 * MIN,
                               metadata, NOON - MIN, schema_ids=schema_ids)
    with outputs.all().execute_and_collect() as results:
        return [(topic, as_bytes(value)) for topic, _, value, _ in results]


def test_framed_topics_carry_the_registry_id_and_the_same_body(env, cfg, tmp_path):
    cfg = replace(cfg, churn_model="off")
    codec = Codec.load()
    topics = framed_topics(cfg)
    schema_ids = {topic: 40 + n for n, topic in enumerate(topics)}
    texts = {schema_ids[topic]: codec.schema_text(record) for topic, record in topics.items()}
    reader = codec.with_schema_registry(texts.__getitem__)

    rows = _outputs(env, cfg, tmp_path, schema_ids)

    framed = [(topic, value) for topic, value in rows if topic in topics]
    others = [(topic, value) for topic, value in rows if topic not in topics]
    assert {topic for topic, _ in framed} >= {cfg.segment_changes_topic, "triggers-p1",
                                              cfg.trigger_decisions_topic}
    assert cfg.dead_letter_topic in {topic for topic, _ in others}
    for topic, value in framed:
        assert value[:1] == CONFLUENT_MAGIC
        assert int.from_bytes(value[1:5], "big") == schema_ids[topic]
        name, record = reader.decode_named(value)
        assert name == topics[topic]
        # the body is the single-object body: re-framing it gives the engine's bytes back
        assert codec.encode(name, record)[len(MAGIC) + 8:] == value[5:]
    for _, value in others:
        assert value[:2] == MAGIC
    triggers = sorted((r["user_id"], r["campaign_id"], r["channel"])
                      for r in (reader.decode(v) for t, v in framed if t.startswith("triggers-"))
                      if r["cause_event_time"] <= NOON + 60 * MIN)
    assert triggers == [("ann", "cart-abandonment-email", "EMAIL"),
                        ("ann", "high-value-cart-sms", "SMS")]
