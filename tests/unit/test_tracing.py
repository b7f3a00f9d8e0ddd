"""W3C trace context (udfs.tracing) and the engine's spans (udfs.spans), with the OpenTelemetry
SDK's in-memory exporter and a real OTLP/HTTP receiver on loopback."""

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from tests.otlp import OtlpReceiver
from udfs import tracing
from udfs.spans import EVALUATE_SPAN, SPAN_NAME, WAIT_SPAN, ClickSpans

GIVEN = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"


def test_a_valid_traceparent_is_kept_with_its_sampling_decision():
    click = tracing.at_ingestion(GIVEN, "e1", ratio=0.0)
    assert (click.trace_id, click.span_id, click.sampled) == (
        "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", True)
    assert click.traceparent() == GIVEN
    unsampled = tracing.at_ingestion(GIVEN[:-2] + "00", "e1", ratio=1.0)
    assert not unsampled.sampled  # the producer decided: parent-based
    assert tracing.parse(GIVEN.encode()) == click  # a header's bytes


@pytest.mark.parametrize("bad", [
    None, "", "garbage", GIVEN.upper(), "01" + GIVEN[2:],  # another version
    "00-" + "0" * 32 + "-00f067aa0ba902b7-01",  # all-zero trace id
    "00-4bf92f3577b34da6a3ce929d0e0e4736-" + "0" * 16 + "-01",  # all-zero parent
    GIVEN + "-extra", b"\xff\xfe",
])
def test_a_missing_or_invalid_traceparent_gets_a_trace_made_from_the_event_id(bad):
    assert tracing.parse(bad) is None
    made = tracing.at_ingestion(bad, "evt-42", ratio=1.0)
    assert tracing.parse(made.traceparent()) == made  # valid W3C
    # the same click (a replay, a duplicate delivery) is the same trace
    assert tracing.at_ingestion(None, "evt-42", ratio=1.0) == made
    assert tracing.at_ingestion(None, "evt-43", ratio=1.0).trace_id != made.trace_id


def test_traces_made_here_are_sampled_at_the_ratio_and_every_stage_decides_alike():
    ids = [tracing.at_ingestion(None, f"e{i}", ratio=0.1) for i in range(20_000)]
    share = sum(c.sampled for c in ids) / len(ids)
    assert 0.09 < share < 0.11
    assert all(tracing.sampled_by_ratio(c.trace_id, 0.1) == c.sampled for c in ids)
    assert not any(tracing.at_ingestion(None, f"e{i}", 0.0).sampled for i in range(100))
    assert all(tracing.at_ingestion(None, f"e{i}", 1.0).sampled for i in range(100))


def test_the_engine_span_is_in_the_clicks_trace_with_an_id_of_its_own():
    click = tracing.at_ingestion(GIVEN, "e1", 0.0)
    engine = tracing.engine_context(click, "e1")
    assert engine.trace_id == click.trace_id and engine.sampled
    assert engine.span_id != click.span_id
    assert engine == tracing.engine_context(click, "e1")  # a replay writes the same header
    assert engine.traceparent().startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")


def test_a_click_span_is_the_engine_span_named_in_the_outputs_headers():
    exporter = InMemorySpanExporter()
    spans = ClickSpans("http://unused", "nudgeflow-test", exporter=exporter)
    click = tracing.at_ingestion(GIVEN, "e1", 0.0)
    engine = tracing.engine_context(click, "e1")
    spans.click_applied(click, engine, "e1", ingest_ms=1_000, step_started_ms=2_500,
                        emit_ms=2_520, outputs=[("TriggerEvent", {"campaign": "c", "tier": "P1"})])
    spans.close()
    by_name = {s.name: s for s in exporter.get_finished_spans()}
    assert set(by_name) == {SPAN_NAME, WAIT_SPAN, EVALUATE_SPAN}
    span = by_name[SPAN_NAME]
    # its stages: the watermark wait, then the step, children of the engine's span
    wait, evaluate = by_name[WAIT_SPAN], by_name[EVALUATE_SPAN]
    assert wait.parent.span_id == evaluate.parent.span_id == span.context.span_id
    assert (wait.start_time, wait.end_time) == (1_000 * 10**6, 2_500 * 10**6)
    assert (evaluate.start_time, evaluate.end_time) == (2_500 * 10**6, 2_520 * 10**6)
    assert f"{span.context.trace_id:032x}" == click.trace_id
    assert f"{span.context.span_id:016x}" == engine.span_id  # what the headers name
    assert f"{span.parent.span_id:016x}" == click.span_id
    assert (span.start_time, span.end_time) == (1_000 * 10**6, 2_520 * 10**6)
    assert span.attributes["nudgeflow.wait_ms"] == 1_500
    assert [(e.name, dict(e.attributes)) for e in span.events] == [
        ("TriggerEvent", {"campaign": "c", "tier": "P1"})]
    assert span.resource.attributes["service.name"] == "nudgeflow"


def test_spans_reach_an_otlp_http_receiver():
    with OtlpReceiver() as receiver:
        spans = ClickSpans(receiver.endpoint, "nudgeflow-test")
        click = tracing.at_ingestion(None, "e7", 1.0)
        engine = tracing.engine_context(click, "e7")
        spans.click_applied(click, engine, "e7", 10, 20, 30, [])
        spans.close()  # flushes
        received = receiver.wait_for(3, timeout_s=10)
    [got] = [s for s in received if s.name == SPAN_NAME]
    assert sorted(s.name for s in received) == sorted([SPAN_NAME, WAIT_SPAN, EVALUATE_SPAN])
    assert (got.trace_id, got.span_id, got.parent_span_id) == (
        click.trace_id, engine.span_id, click.span_id)
    assert got.attributes["nudgeflow.event_id"] == "e7"
    assert got.resource["nudgeflow.job"] == "nudgeflow-test"
