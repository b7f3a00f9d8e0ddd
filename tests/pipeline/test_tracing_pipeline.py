"""Trace context through the job's graph on a MiniCluster (parallelism 2): a click's traceparent
(the source row's header field) reaches the segment changes and triggers it caused, as the
engine's span in the same trace; a click without one gets a trace made from its event id; the
engine exports a span per sampled click to a real OTLP/HTTP receiver, whose id is the parent the
outputs name."""

import pytest
from pyflink.common import Row

from jobs.config import replace
from jobs.connectors import click_watermarks
from jobs.job import build, file_definitions
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.otlp import OtlpReceiver
from tests.pipeline.fakes import FileWriterFactory, as_bytes
from udfs import tracing
from udfs.flink.descriptors import SOURCE_RECORD_ROW
from udfs.spans import EVALUATE_SPAN, SPAN_NAME, WAIT_SPAN

pytestmark = pytest.mark.pipeline

NOON = 1_800_014_400_000  # 2027-01-15 12:00 UTC: outside everyone's quiet hours
MIN = 60_000
ANNS = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"  # her producer sampled it


def test_outputs_carry_their_clicks_trace_and_sampled_clicks_export_a_span(env, cfg, tmp_path):
    codec = Codec.load()
    metadata = [metadata_bytes(codec, "ann", "Europe/Berlin", at=NOON, email=True, sms=True),
                metadata_bytes(codec, "ben", "Europe/Berlin", at=NOON, email=True, sms=True)]
    clicks = [
        (click_bytes(codec, "ann-1", "ann", "ADD_TO_CART", NOON, **CART), ANNS),
        (click_bytes(codec, "ben-1", "ben", "ADD_TO_CART", NOON + 1000, **CART), None),
        (click_bytes(codec, "dan-1", "dan", "PAGE_VIEW", NOON + 45 * MIN), "not a traceparent"),
    ]
    with OtlpReceiver() as receiver:
        # ratio 0: of the clicks without a sampled header of their own, none is sampled
        traced_cfg = replace(cfg, churn_model="off", tracing_otlp_endpoint=receiver.endpoint,
                             tracing_sample_ratio=0.0)
        outputs = build(
            env.from_collection([Row("clicks", i % 2, i, NOON + 46 * MIN, b"k", value, header)
                                 for i, (value, header) in enumerate(clicks)],
                                type_info=SOURCE_RECORD_ROW)
            .assign_timestamps_and_watermarks(click_watermarks(traced_cfg)),
            env.from_collection([Row("user-metadata", i, i, NOON - MIN, b"k", m, None)
                                 for i, m in enumerate(metadata)],
                                type_info=SOURCE_RECORD_ROW),
            env.from_collection([], type_info=SOURCE_RECORD_ROW),
            traced_cfg, file_definitions(traced_cfg), None,
            store=FileWriterFactory(str(tmp_path / "written.jsonl")))
        with outputs.all().execute_and_collect() as results:
            rows = [(codec.decode_named(as_bytes(value)), header)
                    for _, _, value, header in results]
        received = receiver.wait_for(3, timeout_s=30)

    def header_of(name, **match):
        [(record, header)] = [(r, h) for (n, r), h in rows if n == name
                              and all(r.get(k) == v for k, v in match.items())]
        return tracing.parse(header) if header is not None else None

    ann_click = tracing.parse(ANNS)
    ann_engine = tracing.engine_context(ann_click, "ann-1")
    # ann's trigger at her click and her ENTER: her trace, the engine's span as their parent
    assert header_of("TriggerEvent", user_id="ann", campaign_id="high-value-cart-sms") == \
        ann_engine
    assert header_of("SegmentChange", user_id="ann", segment_id="high-value-cart",
                     change="ENTER") == ann_engine
    # ben's click had no header: a trace made from its event id, not sampled at ratio 0
    ben_engine = tracing.engine_context(tracing.at_ingestion(None, "ben-1", 0.0), "ben-1")
    assert header_of("TriggerEvent", user_id="ben", campaign_id="high-value-cart-sms") == \
        ben_engine
    assert not ben_engine.sampled
    # a trigger of a timer (the abandonment email, 30 minutes on) has no click in its step
    assert header_of("TriggerEvent", user_id="ann", campaign_id="cart-abandonment-email") is None

    # one click's spans: ann's (sampled by her producer); ben's and dan's were not sampled
    spans = [s for s in received if s.name == SPAN_NAME]
    assert [(s.trace_id, s.span_id, s.parent_span_id) for s in spans] == [
        (ann_click.trace_id, ann_engine.span_id, ann_click.span_id)]
    [span] = spans
    stages = sorted((s.name, s.trace_id, s.parent_span_id) for s in received if s is not span)
    assert stages == [(EVALUATE_SPAN, ann_click.trace_id, ann_engine.span_id),
                      (WAIT_SPAN, ann_click.trace_id, ann_engine.span_id)]
    assert span.attributes["nudgeflow.event_id"] == "ann-1"
    assert ("TriggerEvent", {"campaign": "high-value-cart-sms", "tier": "P1", "channel": "SMS"}) \
        in span.events
    assert span.end_ns >= span.start_ns
