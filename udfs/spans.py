"""The engine's spans, exported with OpenTelemetry over OTLP/HTTP (no pyflink import).

Inputs: a sampled click's trace context (``udfs.tracing``), its Kafka append time and what its
step emitted. Outputs, per sampled click applied: the span ``nudgeflow.engine``, child of the
click's context (its producer's span, or the one created at ingestion), with the span id
``udfs.tracing.engine_context`` gives, so the ``traceparent`` headers of the segment changes and
triggers it caused name it as their parent. It starts at the click's Kafka append time and ends
when the engine emitted what the click caused, so its length is the click's ingest-to-emit
latency; each segment change and trigger is an event on it. Its two stages are child spans:
``nudgeflow.watermark_wait`` (Kafka append to the step that applied it: the in-order wait,
also ``nudgeflow.wait_ms``) and ``nudgeflow.evaluate`` (the step: features, churn score,
segments, campaigns, store writes). State: the SDK's batch of spans not yet sent (a
background thread sends it; ``close`` flushes it).

Only sampled clicks get spans (``tracing_sample_ratio``, or the producer's decision), so the cost
at full load is the header handling of every click plus three spans per sampled one.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Sequence
from typing import Any

from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor
from opentelemetry.sdk.trace.id_generator import IdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_ON
from opentelemetry.trace import NonRecordingSpan, SpanContext, SpanKind, TraceFlags

from udfs.tracing import TraceContext

SERVICE = "nudgeflow"
SPAN_NAME = "nudgeflow.engine"
WAIT_SPAN = "nudgeflow.watermark_wait"
EVALUATE_SPAN = "nudgeflow.evaluate"
_NS_PER_MS = 1_000_000


class _GivenSpanIds(IdGenerator):
    """Span ids as the caller decides them (``udfs.tracing.engine_context``), per thread."""

    def __init__(self) -> None:
        self.next = threading.local()

    def generate_span_id(self) -> int:
        given = getattr(self.next, "span_id", None)
        self.next.span_id = None
        return given if given is not None else random.getrandbits(64)

    def generate_trace_id(self) -> int:
        return random.getrandbits(128)  # never used: every span has the click as its parent


class ClickSpans:
    """Exports the engine's span of each sampled click (see the module docstring)."""

    def __init__(self, endpoint: str, job_name: str, exporter: Any = None) -> None:
        """``endpoint``: the OTLP/HTTP traces URL; ``exporter``: another SpanExporter (tests)."""
        self.ids = _GivenSpanIds()
        self.provider = TracerProvider(
            resource=Resource.create({"service.name": SERVICE, "nudgeflow.job": job_name}),
            id_generator=self.ids, sampler=ALWAYS_ON)
        self.provider.add_span_processor(BatchSpanProcessor(
            exporter if exporter is not None else OTLPSpanExporter(endpoint=endpoint, timeout=5)))
        self.tracer = self.provider.get_tracer("nudgeflow.engine")
        self.exported = 0

    def click_applied(self, click: TraceContext, engine: TraceContext, event_id: str,
                      ingest_ms: int, step_started_ms: int, emit_ms: int,
                      outputs: Sequence[tuple[str, dict[str, Any]]]) -> None:
        """The span of one applied click: ``outputs`` are (record name, attributes) events."""
        parent = trace.set_span_in_context(NonRecordingSpan(SpanContext(
            int(click.trace_id, 16), int(click.span_id, 16), is_remote=True,
            trace_flags=TraceFlags(TraceFlags.SAMPLED))))
        self.ids.next.span_id = int(engine.span_id, 16)
        start_ms = min(ingest_ms or step_started_ms, step_started_ms)
        span = self.tracer.start_span(
            SPAN_NAME, context=parent, kind=SpanKind.CONSUMER, start_time=start_ms * _NS_PER_MS,
            attributes={"nudgeflow.event_id": event_id,
                        "nudgeflow.wait_ms": max(0, step_started_ms - start_ms),
                        "nudgeflow.outputs": len(outputs)})
        for name, attributes in outputs:
            span.add_event(name, attributes=attributes, timestamp=emit_ms * _NS_PER_MS)
        end_ms = max(emit_ms, step_started_ms)
        inside = trace.set_span_in_context(span)
        for name, begin, end in ((WAIT_SPAN, start_ms, step_started_ms),
                                 (EVALUATE_SPAN, step_started_ms, end_ms)):
            self.tracer.start_span(name, context=inside, start_time=begin * _NS_PER_MS).end(
                end_time=end * _NS_PER_MS)
        span.end(end_time=end_ms * _NS_PER_MS)
        self.exported += 1

    def close(self) -> None:
        """Send what is batched and stop the exporter thread."""
        self.provider.shutdown()
