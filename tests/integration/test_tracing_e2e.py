"""Tracing on the real stack (Kafka, Cassandra, Redis, the Flink session cluster): a click sent
with a W3C ``traceparent`` Kafka header yields a trigger and a segment change whose records carry
a ``traceparent`` header in the same trace (written by the job's Java sink), naming the engine's
span as their parent; that span reaches an OTLP/HTTP receiver (a real one, on loopback, with the
OpenTelemetry protocol's own decoding). A click without a header gets a trace made from its event
id, unsampled at ratio 0: its outputs still carry it, and no span is exported for it."""

from __future__ import annotations

import time

import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from jobs.bench.bench import daytime_zone
from jobs.config import ISOLATION_FIELDS, replace
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata
from tests.integration import flink_jobs
from tests.integration.kafka_io import produce_raw, tick_until
from tests.otlp import OtlpReceiver
from udfs import tracing
from udfs.spans import EVALUATE_SPAN, SPAN_NAME, WAIT_SPAN

pytestmark = pytest.mark.integration

SENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def _records_with_headers(cfg, topic, codec, wanted, timeout_s=90):
    """(record, headers) of ``topic`` (read committed) until ``wanted(list)`` holds."""
    consumer = KafkaConsumer(**cfg.python_client_kwargs(), isolation_level="read_committed",
                             enable_auto_commit=False, group_id=None)
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
    consumer.assign(partitions)
    consumer.seek_to_beginning(*partitions)
    seen: list = []
    deadline = time.monotonic() + timeout_s
    try:
        while not wanted(seen):
            assert time.monotonic() < deadline, f"timed out on {topic}; saw {seen}"
            for batch in consumer.poll(timeout_ms=500).values():
                seen += [(codec.decode_named(m.value)[1], dict(m.headers or []))
                         for m in batch]
        return seen
    finally:
        consumer.close()


def test_a_clicks_traceparent_reaches_what_it_caused_and_its_span_is_exported(isolated_cfg):
    codec = Codec.load()
    with OtlpReceiver() as receiver:
        cfg = replace(isolated_cfg, tracing_otlp_endpoint=receiver.endpoint,
                      tracing_sample_ratio=0.0)
        run = cfg.consumer_group
        traced, plain, ticker = f"{run}-ann", f"{run}-ben", f"{run}-tick"
        now = int(time.time() * 1000)
        # a zone where the next minutes are daytime: quiet hours (21:00-08:00 local) would
        # defer the P1 triggers until morning
        zone = daytime_zone(now, now + 15 * 60_000)
        produce_raw(cfg, cfg.user_metadata_topic, [
            (user.encode(), codec.encode("UserMetadata", metadata(user, zone, at=now, sms=True,
                                                                  email=True)))
            for user in (traced, plain)])
        job_id = flink_jobs.submit(cfg, fields=(*ISOLATION_FIELDS, "tracing_otlp_endpoint",
                                                "tracing_sample_ratio", "parallelism"))
        producer = KafkaProducer(**cfg.python_client_kwargs(), acks="all", linger_ms=0)
        try:
            flink_jobs.wait_until_open(cfg, job_id)
            now = int(time.time() * 1000)
            producer.send(cfg.clicks_topic, key=traced.encode(), headers=[("traceparent",
                                                                           SENT.encode())],
                          value=click_bytes(codec, f"{traced}-1", traced, "ADD_TO_CART", now,
                                            **CART))
            producer.send(cfg.clicks_topic, key=plain.encode(), value=click_bytes(
                codec, f"{plain}-1", plain, "ADD_TO_CART", now, **CART))
            producer.flush()

            def caused_for_both(seen):  # a P1 trigger at each of the two clicks
                return {r["cause_event_id"] for r, _ in seen} >= {f"{traced}-1", f"{plain}-1"}

            triggers = tick_until(cfg, producer, codec, ticker, lambda: _records_with_headers(
                cfg, cfg.trigger_topic("P1"), codec, caused_for_both, timeout_s=3),
                "no P1 triggers")
            changes = _records_with_headers(
                cfg, cfg.segment_changes_topic, codec,
                lambda seen: any(r["user_id"] == traced and r["segment_id"] == "high-value-cart"
                                 for r, _ in seen))
            received = receiver.wait_for(3, timeout_s=30)
            time.sleep(3)  # anything else exported would arrive now
            received = receiver.wait_for(len(received) + 1, timeout_s=0.1)
        finally:
            producer.close()
            flink_jobs.cancel(cfg, job_id)

    sent = tracing.parse(SENT)
    engine = tracing.engine_context(sent, f"{traced}-1")

    def header(seen, user, **match):
        [headers] = [h for r, h in seen if r["user_id"] == user
                     and all(r.get(k) == v for k, v in match.items())]
        return headers.get("traceparent", b"").decode()

    def at_click(user):  # the trigger emitted in the click's own step (a deferred rival's later)
        return min((r for r, _ in triggers if r["cause_event_id"] == f"{user}-1"),
                   key=lambda r: r["emit_time"])

    # the trigger and the ENTER name the engine's span in the click's trace (Java sink headers)
    trigger = at_click(traced)
    assert header(triggers, traced, trigger_id=trigger["trigger_id"]) == engine.traceparent()
    assert header(changes, traced, segment_id="high-value-cart", change="ENTER") == \
        engine.traceparent()
    # the click without a header: a trace made from its event id, written all the same
    made = tracing.engine_context(tracing.at_ingestion(None, f"{plain}-1", 0.0), f"{plain}-1")
    assert header(triggers, plain, trigger_id=at_click(plain)["trigger_id"]) == \
        made.traceparent()
    assert not made.sampled

    # exactly one click's spans: the sampled click's, child of the producer's span, the id the
    # headers name, with its two stages; ben's and the ticker's clicks were not sampled
    spans = [s for s in received if s.name == SPAN_NAME]
    assert [(s.trace_id, s.span_id, s.parent_span_id) for s in spans] == [
        (sent.trace_id, engine.span_id, sent.span_id)]
    [span] = spans
    assert sorted((s.name, s.parent_span_id) for s in received if s is not span) == [
        (EVALUATE_SPAN, engine.span_id), (WAIT_SPAN, engine.span_id)]
    assert ("TriggerEvent", {"campaign": trigger["campaign_id"], "tier": "P1",
                             "channel": trigger["channel"]}) in span.events
    # the span runs from the click's Kafka append time to the emission: the ingest-to-emit
    # latency, the watermark wait included
    assert 0 < (span.end_ns - span.start_ns) / 1e6 < 120_000
    assert span.attributes["nudgeflow.wait_ms"] >= 0
