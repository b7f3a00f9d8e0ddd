"""The Confluent wire format option on the real stack (Kafka, Cassandra, Redis, Flink and the
stack's schema registry, Apicurio Registry with Confluent's API): a job submitted with
``--output-wire-format confluent`` registers its output schemas under ``<topic>-value`` and
writes its segment changes, triggers and decisions as ``00``, the registry's schema id, the Avro
body. Confluent's own deserializer (confluent-kafka's ``AvroDeserializer``, which knows nothing of
nudgeflow) reads them through the registry, and every record equals what nudgeflow's codec
decodes from the same bytes; ``nudgeflow sender``, given the registry, delivers the triggers.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
import time

import pytest
from confluent_kafka import DeserializingConsumer, KafkaException, TopicPartition
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroDeserializer
from confluent_kafka.serialization import StringDeserializer
from kafka import KafkaProducer

from jobs.bench.bench import daytime_zone
from jobs.config import ISOLATION_FIELDS, as_flags, replace
from jobs.schema_registry import framed_topics, schema_lookup, subject
from schemas.codec import CONFLUENT_MAGIC, Codec
from tests.builders import CART, click_bytes, metadata
from tests.integration import flink_jobs
from tests.integration.kafka_io import produce_raw, tick_until
from tests.integration.test_sender_channels import DELIVERY, final_report

pytestmark = pytest.mark.integration



def _plain(value):
    """A record as Confluent's deserializer gives it, in the codec's terms (timestamps in ms)."""
    if isinstance(value, dt.datetime):
        return round(value.timestamp() * 1000)
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _read_with_confluent(cfg, topic, wanted, timeout_s=90):
    """(raw value, record by Confluent's AvroDeserializer) of ``topic`` until ``wanted`` holds."""
    registry = SchemaRegistryClient({"url": cfg.schema_registry_url})
    consumer = DeserializingConsumer({
        **cfg.librdkafka_config(), "group.id": f"{cfg.consumer_group}-confluent-reader",
        "isolation.level": "read_committed", "enable.auto.commit": False,
        "key.deserializer": StringDeserializer("utf_8"),
        "value.deserializer": AvroDeserializer(registry)})
    raw = DeserializingConsumer({
        **cfg.librdkafka_config(), "group.id": f"{cfg.consumer_group}-raw-reader",
        "isolation.level": "read_committed", "enable.auto.commit": False})
    partitions = [TopicPartition(topic, p, 0)
                  for p in consumer.list_topics(topic, timeout=10).topics[topic].partitions]
    consumer.assign(partitions)
    raw.assign(partitions)
    seen: list = []
    raw_values: dict = {}  # (partition, offset): the value as bytes
    deadline = time.monotonic() + timeout_s
    try:
        while not wanted([record for _, record in seen]):
            assert time.monotonic() < deadline, f"timed out on {topic}; saw {seen}"
            message = consumer.poll(0.5)
            if message is None:
                continue
            if message.error():
                raise KafkaException(message.error())
            where = (message.partition(), message.offset())
            while where not in raw_values:  # the same record, as bytes
                twin = raw.poll(10)
                assert twin is not None and not twin.error(), f"no raw twin of {where}"
                raw_values[(twin.partition(), twin.offset())] = twin.value()
            seen.append((raw_values[where], _plain(message.value())))
        return seen
    finally:
        consumer.close()
        raw.close()


def test_confluent_tooling_reads_the_jobs_outputs_and_the_sender_delivers_them(isolated_cfg,
                                                                                tmp_path):
    cfg = replace(isolated_cfg, output_wire_format="confluent")
    codec = Codec.load()
    reader = codec.with_schema_registry(schema_lookup(cfg))
    run = cfg.consumer_group
    user, ticker = f"{run}-ann", f"{run}-tick"
    now = int(time.time() * 1000)
    # a zone where the next minutes are daytime: quiet hours (21:00-08:00 local) would defer the
    # P1 trigger until morning
    zone = daytime_zone(now, now + 15 * 60_000)
    produce_raw(cfg, cfg.user_metadata_topic, [(user.encode(), codec.encode(
        "UserMetadata", metadata(user, zone, at=now, sms=True, email=True)))])
    job_id = flink_jobs.submit(cfg, fields=(*ISOLATION_FIELDS, "output_wire_format",
                                            "schema_registry_url", "parallelism"))
    producer = KafkaProducer(**cfg.python_client_kwargs(), acks="all", linger_ms=0)
    try:
        flink_jobs.wait_until_open(cfg, job_id)
        producer.send(cfg.clicks_topic, key=user.encode(), value=click_bytes(
            codec, f"{user}-1", user, "ADD_TO_CART", int(time.time() * 1000), **CART))
        producer.flush()
        triggers = tick_until(cfg, producer, codec, ticker, lambda: _read_with_confluent(
            cfg, cfg.trigger_topic("P1"),
            lambda seen: any(r["cause_event_id"] == f"{user}-1" for r in seen), timeout_s=3),
            "no P1 trigger")
        changes = _read_with_confluent(
            cfg, cfg.segment_changes_topic,
            lambda seen: any(r["user_id"] == user and r["segment_id"] == "high-value-cart"
                             for r in seen))
        decisions = _read_with_confluent(
            cfg, cfg.trigger_decisions_topic,
            lambda seen: any(r["user_id"] == user for r in seen))
    finally:
        producer.close()
        flink_jobs.cancel(cfg, job_id)

    # the registry holds each framed topic's current schema under <topic>-value ...
    registry = SchemaRegistryClient({"url": cfg.schema_registry_url})
    ids = {}
    for topic, record in framed_topics(cfg).items():
        latest = registry.get_latest_version(subject(topic))
        assert json.loads(latest.schema.schema_str) == json.loads(codec.schema_text(record))
        ids[topic] = latest.schema_id
    # ... every value carries its topic's id, and both readers agree on every record
    for topic, seen in ((cfg.trigger_topic("P1"), triggers),
                        (cfg.segment_changes_topic, changes),
                        (cfg.trigger_decisions_topic, decisions)):
        for value, record in seen:
            assert value[:1] == CONFLUENT_MAGIC
            assert int.from_bytes(value[1:5], "big") == ids[topic]
            assert record == reader.decode(value, expect=framed_topics(cfg)[topic])
    caused = [r for _, r in triggers if r["cause_event_id"] == f"{user}-1"]
    assert caused and all(r["user_id"] == user and r["tier"] == "P1" for r in caused)

    # the reference sender reads the same topics through the registry and delivers them
    out, err = tmp_path / "sender.out", tmp_path / "sender.err"
    with open(out, "w") as stdout, open(err, "w") as stderr:
        proc = subprocess.run(  # noqa: S603 - the project's own command line
            [sys.executable, "-m", "jobs.cli", "sender", *as_flags(cfg), "--group",
             f"{run}-sender", "--until-idle", "3", "--report-every", "0", "--dedupe-ttl", "600"],
            stdout=stdout, stderr=stderr, text=True, timeout=180, check=False)
    assert proc.returncode == 0, out.read_text() + err.read_text()
    lines = out.read_text().splitlines()
    delivered = {m[3] for m in map(DELIVERY.match, lines) if m}
    assert {r["trigger_id"] for _, r in triggers} <= delivered, out.read_text()
    _, _, _, _, bad, _, _ = final_report(lines)["all"]
    assert bad == 0, out.read_text()  # no trigger went to the dead-letter topic
