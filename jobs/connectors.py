"""Kafka sources and sinks of the job, built from the configuration.

Only ``jobs.job.main`` calls these; ``jobs.job.build`` takes streams, so tests can feed
collections instead. Both use nudgeflow-flink's Java (de)serializers (infra/jars/flink), which
must be on the job's classpath: ``jobs.env.create_env`` puts the configured jars there
(``NudgeflowConfig.jars``; this module never resolves jars).
"""

from __future__ import annotations

from pyflink.common import WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment
from pyflink.datastream.connectors.base import DeliveryGuarantee
from pyflink.datastream.connectors.kafka import (
    KafkaOffsetResetStrategy,
    KafkaOffsetsInitializer,
    KafkaSink,
    KafkaSource,
)
from pyflink.java_gateway import get_gateway

from jobs.config import NudgeflowConfig
from schemas.codec import Codec
from udfs.intake import click_time_rule_args

#: Kafka transactions must outlive the longest checkpoint; the broker allows up to 2 h
#: (transaction.max.timeout.ms in infra/servers/kafka.py), Flink's default is 1 h.
TRANSACTION_TIMEOUT_MS = 15 * 60 * 1000


def _starting_offsets(cfg: NudgeflowConfig) -> KafkaOffsetsInitializer:
    if cfg.starting_offsets == "earliest":
        return KafkaOffsetsInitializer.earliest()
    if cfg.starting_offsets == "latest":
        return KafkaOffsetsInitializer.latest()
    return KafkaOffsetsInitializer.committed_offsets(KafkaOffsetResetStrategy.EARLIEST)


def kafka_records(
    env: StreamExecutionEnvironment,
    cfg: NudgeflowConfig,
    topic: str,
    uid: str,
    name: str,
    bounded: bool = False,
    from_earliest: bool = False,
    watermarks: WatermarkStrategy | None = None,
) -> DataStream:
    """A stream of Row(topic, partition, offset, timestamp, key, value, traceparent) of a topic.

    Args:
        env: the job's environment.
        cfg: the configuration (bootstrap servers, security, group, starting offsets).
        topic: the topic to read.
        uid: the source's stable uid.
        name: the source's readable name.
        bounded: stop at the offsets that are the latest at start (tests and benchmarks).
        from_earliest: always read the whole topic (the compacted control topic), under a
            group of its own.
        watermarks: event-time strategy applied in the source, per partition (see
            ``click_watermarks``); None: no watermarks from the source.
    """
    builder = (
        KafkaSource.builder()
        .set_bootstrap_servers(cfg.kafka_bootstrap)
        .set_topics(topic)
        .set_group_id(f"{cfg.consumer_group}-{topic}" if from_earliest else cfg.consumer_group)
        .set_starting_offsets(
            KafkaOffsetsInitializer.earliest() if from_earliest else _starting_offsets(cfg)
        )
        .set_properties({**cfg.kafka_client_properties(), "commit.offsets.on.checkpoint": "true"})
    )
    if bounded:
        builder = builder.set_bounded(KafkaOffsetsInitializer.latest())
    # PyFlink offers only value-only deserializers in Python; ours keeps the record's place
    builder._j_builder.setDeserializer(  # noqa: SLF001
        get_gateway().jvm.io.nudgeflow.flink.KafkaRecordWithMetadataDeserializer()
    )
    # a Python TimestampAssigner given to from_source is ignored by PyFlink: per-partition
    # watermarks need a Java assigner (click_watermarks); other topics get theirs after decoding
    strategy = watermarks or WatermarkStrategy.no_watermarks()
    return env.from_source(builder.build(), strategy, name).uid(uid)


def click_watermarks(cfg: NudgeflowConfig) -> WatermarkStrategy:
    """Bounded out-of-orderness on each click's own event time, read in Java from its bytes.

    Given to the clicks source, it keeps one watermark per Kafka partition, so reading a backlog
    partition by partition does not make the slower partitions' events late; idle partitions
    stop holding the watermark back after ``cfg.idleness_ms``.
    """
    jvm = get_gateway().jvm
    # paced while the source catches up: the same watermarks, fewer of them (see the class)
    base = jvm.io.nudgeflow.flink.ClickWatermarks(
        cfg.max_out_of_orderness_ms, cfg.catch_up_lag_ms, cfg.catch_up_watermark_interval_ms
    ).withIdleness(jvm.java.time.Duration.ofMillis(cfg.idleness_ms))
    # the time rule, limits and enum ranges of udfs/intake.py: a record it will reject never
    # moves a watermark (see the class's doc)
    assigner = jvm.io.nudgeflow.flink.ClickEventTimeAssigner(
        *click_time_rule_args(cfg.intake_limits(), Codec.load()))
    return WatermarkStrategy(base.withTimestampAssigner(assigner))


def routed_kafka_sink(cfg: NudgeflowConfig) -> KafkaSink:
    """A sink for Row(topic, key, value): each row to its own topic, keyed, in one transaction.

    Exactly-once uses Kafka transactions committed on checkpoint (consumers must read with
    ``isolation.level=read_committed``); at-least-once flushes on checkpoint.
    """
    guarantee = (
        DeliveryGuarantee.EXACTLY_ONCE
        if cfg.delivery_guarantee == "exactly-once"
        else DeliveryGuarantee.AT_LEAST_ONCE
    )
    props = {
        **cfg.kafka_client_properties(),
        "transaction.timeout.ms": str(TRANSACTION_TIMEOUT_MS),
        "linger.ms": "5",
    }
    builder = (
        KafkaSink.builder()
        .set_bootstrap_servers(cfg.kafka_bootstrap)
        .set_delivery_guarantee(guarantee)
        .set_transactional_id_prefix(cfg.transactional_id_prefix)
    )
    for key, value in props.items():
        builder = builder.set_property(key, value)
    builder._j_builder.setRecordSerializer(  # noqa: SLF001
        get_gateway().jvm.io.nudgeflow.flink.RoutedRecordSerializer()
    )
    return builder.build()
