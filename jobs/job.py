"""nudgeflow's Flink job: the per-user engine.

Inputs: the clicks topic (ClickEvents), the compacted user-metadata topic (UserMetadata), the
outcomes topic (CampaignOutcomes: engagement feedback for journeys) and the definitions control
topic (DefinitionUpdates), all Avro single-object records; plus the
definition files (segments, campaigns, priority policy) and the churn model, read by ``main`` at
start and handed to ``build`` as values.
Outputs: SegmentChanges (ENTER/EXIT) on the segment-changes topic, keyed by user, also written to
Cassandra and Redis by the engine; TriggerEvents on the topic of their priority tier
(triggers-p0 .. triggers-p3) and TriggerDecisions (suppressed or deferred campaigns), keyed by
user; a DeadLetter per rejected or late record. The Kafka outputs go through one sink, so with
exactly-once delivery they commit in the same transaction.
State: per user, behavioural features, the latest metadata, segment membership and campaign
state (keyed state + event-time timers); the segment, campaign and priority-policy definitions
(broadcast state).

``build`` wires the graph from streams and values (tests pass collections and bytes); ``main``
reads the files, builds the Kafka connectors and runs it, either in an embedded MiniCluster
(``--local``) or, when started by ``flink run -pym jobs.job``, on the cluster that runs it. The
environment comes from ``jobs.env``; the jars from the configuration (``jars``).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflink.common import Duration, Types, WatermarkStrategy
from pyflink.datastream import DataStream, KeyedStream
from pyflink.java_gateway import get_gateway

from jobs import names
from jobs.config import (
    ConfigError,
    NudgeflowConfig,
    add_config_arguments,
    config_from_args,
    replace,
)
from jobs.env import create_env
from schemas.codec import MAGIC, Codec
from udfs.build import BUILD_ID_ENV, IMPORTED_BUILD
from udfs.flink.campaign_stats import CampaignStatsFunction
from udfs.flink.decode import (
    DecodeRecordsFunction,
    backfill_to_engine_input,
    definition_to_row,
    metadata_to_engine_input,
    outcome_to_engine_input,
)
from udfs.flink.descriptors import (
    DEAD_LETTER_TAG,
    DEFINITION_ROW,
    ENGINE_INPUT_ROW,
    ENGINE_OUTPUT_ROW,
    KAFKA_OUT_ROW,
    definitions_state,
)
from udfs.flink.event_time import EventTimeAssigner, NeutralTimeAssigner
from udfs.flink.membership_writes import MEMBERSHIP_WRITE, MembershipWriteFunction
from udfs.flink.user_engine import UserEngineFunction
from udfs.stores.campaign_stats import StatsStoreFactory
from udfs.stores.membership import CassandraRedisStore, StoreFactory


@dataclass(frozen=True)
class JobOutputs:
    """The job's output streams, each of Row(topic, key, value, traceparent) for the Kafka sink."""

    segment_changes: DataStream  # SegmentChanges, written to the membership store first
    triggers: DataStream  # TriggerEvents, each on the topic of its priority tier
    trigger_decisions: DataStream  # TriggerDecisions: suppressed or deferred candidates
    dead_letters: DataStream  # DeadLetters: rejected, late and invalid records
    conversions: DataStream  # CampaignOutcomes CONVERTED: attributed conversions, to outcomes
    # DefinitionUpdates CAMPAIGN_ROI: measured ROI, to the control topic (None: no statistics)
    roi_updates: DataStream | None = None

    def all(self) -> DataStream:
        """Every output in one stream (one sink, one transaction)."""
        extra = [self.roi_updates] if self.roi_updates is not None else []
        return self.segment_changes.union(self.triggers, self.trigger_decisions,
                                          self.dead_letters, self.conversions, *extra)


def clicks_for_engine(records: DataStream, buffer_timeout_ms: int = -1) -> DataStream:
    """Kafka record rows of the clicks topic -> engine input rows, in Java.

    ``io.nudgeflow.flink.ClickEngineInput`` reads the user id from the record's bytes for the
    keying; the engine decodes, validates and dead-letters the clicks itself, so no Python
    operator (a thread contending for the one interpreter) runs before it. Its output flushes
    at least every ``buffer_timeout_ms`` (-1: the job's ``buffer_timeout_ms``).
    """
    rows = records._j_data_stream.map(  # noqa: SLF001 - a Java function
        get_gateway().jvm.io.nudgeflow.flink.ClickEngineInput(),
        ENGINE_INPUT_ROW.get_java_type_info())
    rows.uid(names.CLICK_INPUT_UID).name(names.CLICK_INPUT_NAME)
    rows.setBufferTimeout(buffer_timeout_ms)
    return DataStream(rows)


def _decode_engine_input(records: DataStream, cfg: NudgeflowConfig, schema: str, to_row: Any,
                         uid: str, name: str) -> tuple[DataStream, DataStream]:
    """Kafka record rows of one topic -> (engine input rows, DeadLetter rows)."""
    decoded = records.process(
        DecodeRecordsFunction(schema, cfg.dead_letter_topic, to_row, cfg.intake_limits()),
        output_type=ENGINE_INPUT_ROW,
    ).uid(uid).name(name)
    return decoded, decoded.get_side_output(DEAD_LETTER_TAG)


def decode_metadata(records: DataStream, cfg: NudgeflowConfig) -> tuple[DataStream, DataStream]:
    """Kafka record rows of user-metadata -> (engine input rows, DeadLetter rows)."""
    return _decode_engine_input(records, cfg, "UserMetadata", metadata_to_engine_input,
                                names.DECODE_METADATA_UID, names.DECODE_METADATA_NAME)


def decode_outcomes(records: DataStream, cfg: NudgeflowConfig) -> tuple[DataStream, DataStream]:
    """Kafka record rows of outcomes -> (engine input rows, DeadLetter rows)."""
    return _decode_engine_input(records, cfg, "CampaignOutcome", outcome_to_engine_input,
                                names.DECODE_OUTCOMES_UID, names.DECODE_OUTCOMES_NAME)


def decode_backfills(records: DataStream, cfg: NudgeflowConfig) -> tuple[DataStream, DataStream]:
    """Kafka record rows of backfill-requests -> (engine input rows, DeadLetter rows)."""
    return _decode_engine_input(records, cfg, "BackfillRequest", backfill_to_engine_input,
                                names.DECODE_BACKFILL_UID, names.DECODE_BACKFILL_NAME)


def decode_definitions(records: DataStream, cfg: NudgeflowConfig
                       ) -> tuple[DataStream, DataStream]:
    """Kafka record rows of the definitions topic -> (definition rows, DeadLetter rows)."""
    decoded = records.process(
        DecodeRecordsFunction("DefinitionUpdate", cfg.dead_letter_topic, definition_to_row,
                              cfg.intake_limits()),
        output_type=DEFINITION_ROW,
    ).uid(names.DECODE_DEFINITIONS_UID).name(names.DECODE_DEFINITIONS_NAME)
    return decoded, decoded.get_side_output(DEAD_LETTER_TAG)


def metadata_watermarks(rows: DataStream, cfg: NudgeflowConfig,
                        uid: str = names.METADATA_WATERMARKS_UID) -> DataStream:
    """Metadata event time (``updated_at``): held back while the backlog is read, never after.

    The topic's backlog holds event time back while the job starts; once the topic has been
    quiet for ``idleness_ms``, it never does again.

    With plain idleness a fresh profile update would turn the input active again and hold every
    user's clicks at its ``updated_at`` until the topic had been quiet for ``idleness_ms`` once
    more (``io.nudgeflow.flink.ChangelogWatermarks`` says why and what it does instead). A
    bounded replay never goes idle (``bounded_replay``), so there metadata and clicks are
    ordered by event time alone. The outcomes topic (engagement feedback: sparse, bursty) is
    given the same strategy under its own ``uid``.
    """
    strategy = WatermarkStrategy(
        get_gateway().jvm.io.nudgeflow.flink.ChangelogWatermarks(cfg.idleness_ms)
    ).with_timestamp_assigner(EventTimeAssigner())
    return rows.assign_timestamps_and_watermarks(strategy).uid(uid).name(uid)


def definition_watermarks(rows: DataStream, cfg: NudgeflowConfig,
                          uid: str = names.DEFINITION_WATERMARKS_UID) -> DataStream:
    """Timestamp 0 and idleness for definitions: they neither hold nor push event time.

    The control topic is quiet, so it goes idle; its Kafka timestamps are wall-clock, so an idle
    click stream would let them drag the watermark to "now" and make every event late.
    Timestamp 0 does both: Flink ignores an input whose watermark is behind the operator's
    until it catches up. The backfill requests (applied at once, at the watermark, not by their
    time) get the same under their own ``uid``.
    """
    return rows.assign_timestamps_and_watermarks(
        WatermarkStrategy.for_monotonous_timestamps()
        .with_idleness(Duration.of_millis(cfg.idleness_ms))
        .with_timestamp_assigner(NeutralTimeAssigner())
    ).uid(uid).name(uid)


def run_user_engine(inputs: DataStream, definitions: DataStream, cfg: NudgeflowConfig,
                    initial_definitions: list[dict[str, Any]], model_files: ModelFiles | None,
                    store: StoreFactory, build_id: str | None = None) -> DataStream:
    """Key by user, connect the broadcast definitions, run the engine.

    Emits ``ENGINE_OUTPUT_ROW`` rows (a step's segment changes as one ``MembershipWrite`` row
    for ``write_membership``; TriggerEvents; TriggerDecisions; CampaignOutcomes; LiftFacts);
    invalid and late clicks and rejected definitions leave on the dead-letter side output.
    The engine carries this client's build id (``build_id``, default: this client's modules;
    ``udfs.build``) and fails at open on a TaskManager that holds another build's modules.
    """
    broadcast = definitions.broadcast(definitions_state())
    return (
        key_by_user(inputs, cfg)
        .connect(broadcast)
        .process(UserEngineFunction(cfg, initial_definitions, model_files, store,
                                    build_id=build_id or IMPORTED_BUILD),
                 output_type=ENGINE_OUTPUT_ROW)
        .uid(names.USER_ENGINE_UID)
        .name(names.USER_ENGINE_NAME)
    )


def write_membership(engine: DataStream, cfg: NudgeflowConfig, store: StoreFactory
                     ) -> DataStream:
    """The engine's membership writes, written to ``store`` by a task of their own.

    ``udfs.flink.membership_writes.MembershipWriteFunction`` starts a new chain, so its waits
    for Cassandra and Redis run on a thread of their own while the engine goes on; it follows
    the engine on a forward edge (same parallelism), which keeps each user's writes in the
    engine's order. In front of it, on the engine's thread, ``io.nudgeflow.flink.BatchJsonRows``
    gathers the write rows into batches (``membership_batch_rows``, ``membership_batch_ms``,
    and before every checkpoint barrier and watermark), so the writer's Python thread wakes
    once per batch, not once per engine step. Emits ``ENGINE_OUTPUT_ROW`` rows: the
    SegmentChanges once written; the DeadLetters of what a store refused for good leave on its
    ``DEAD_LETTER_TAG`` side output. No keyed state in either: a savepoint taken before they
    existed restores (they start empty).
    """
    writes = route_engine_records(engine, MEMBERSHIP_WRITE, "membership-writes",
                                  names.ROUTE_MEMBERSHIP_WRITES_UID)
    batches = DataStream(writes._j_data_stream.transform(  # noqa: SLF001 - a Java operator
        names.BATCH_MEMBERSHIP_WRITES_UID, KAFKA_OUT_ROW.get_java_type_info(),
        get_gateway().jvm.io.nudgeflow.flink.BatchJsonRows(
            "membership-writes", cfg.membership_batch_rows, cfg.membership_batch_ms)))
    batches = batches.uid(names.BATCH_MEMBERSHIP_WRITES_UID)
    return (batches.process(MembershipWriteFunction(cfg, store), output_type=ENGINE_OUTPUT_ROW)
            .uid(names.MEMBERSHIP_WRITES_UID).name(names.MEMBERSHIP_WRITES_NAME)
            .start_new_chain())


def key_by_user(inputs: DataStream, cfg: NudgeflowConfig) -> KeyedStream:
    """Engine input rows keyed by their user id (field 1), with no Python call per row.

    What ``inputs.key_by(lambda row: row[1], key_type=Types.STRING())`` builds, with its
    Python ``AddKey`` map replaced by a Java one (``io.nudgeflow.flink.KeyByUser``): the same
    Row(key, row) stream keyed by PyFlink's ``KeyByKeySelector`` with the same key type, so keys
    and keyed state are unchanged (a savepoint of the previous layout restores), and the engine
    no longer shares the interpreter with a keying thread.

    With ``input_order: java`` (the default) the keyed rows then pass a Java keyed operator that
    holds each user's inputs until the watermark passes them and hands them on in event-time
    order (``io.nudgeflow.flink.ReleaseInEventTimeOrder``), keyed again by the same selector
    without a shuffle (``reinterpretAsKeyedStream``: the same key, the same parallelism).
    """
    jvm = get_gateway().jvm
    keyed_type = Types.ROW([Types.STRING(), ENGINE_INPUT_ROW]).get_java_type_info()
    key_type = Types.ROW([Types.STRING()]).get_java_type_info()
    with_key = inputs._j_data_stream.map(  # noqa: SLF001 - a Java function
        jvm.io.nudgeflow.flink.KeyByUser(1), keyed_type)
    with_key.name(names.KEY_BY_USER_NAME).uid(names.KEY_BY_USER_UID)
    with_key.setBufferTimeout(cfg.trigger_path_buffer_timeout_ms)
    keyed = with_key.keyBy(jvm.KeyByKeySelector(), key_type)
    if cfg.input_order == "java":
        ordered = keyed.process(
            jvm.io.nudgeflow.flink.ReleaseInEventTimeOrder(keyed_type, cfg.quiet_release_ms),
            keyed_type)
        ordered.name(names.INPUT_ORDER_NAME).uid(names.INPUT_ORDER_UID)
        # not chained to the engine (a two-input operator: the definitions are its other
        # input), so this is one more exchange on a click's way to its trigger
        ordered.setBufferTimeout(cfg.trigger_path_buffer_timeout_ms)
        keyed = jvm.org.apache.flink.streaming.api.datastream.DataStreamUtils \
            .reinterpretAsKeyedStream(ordered, jvm.KeyByKeySelector(), key_type)
    return KeyedStream(keyed, ENGINE_INPUT_ROW, inputs)


def route_engine_records(engine: DataStream, record: str, topic: str, uid: str,
                         by_tier: bool = False,
                         schema_ids: Mapping[str, int] | None = None) -> DataStream:
    """The engine's records of one kind, as Row(topic, key, value, traceparent) for the Kafka sink.

    A Java flat map (``io.nudgeflow.flink.RouteEngineRecords``): no Python per record. With
    ``by_tier``, ``topic`` is a prefix completed by the record's priority tier. With
    ``schema_ids`` (a schema registry's id per target topic), values leave in Confluent's wire
    format instead of single-object encoding (jobs/schema_registry.py).
    """
    jvm = get_gateway().jvm
    if schema_ids is None:
        route = jvm.io.nudgeflow.flink.RouteEngineRecords(record, topic, by_tier)
    else:
        ids = jvm.java.util.HashMap()
        for target, schema_id in schema_ids.items():
            ids.put(target, jvm.java.lang.Integer(schema_id))
        route = jvm.io.nudgeflow.flink.RouteEngineRecords(
            record, topic, by_tier, ids, MAGIC + Codec.load().fingerprint(record))
    routed = DataStream(engine._j_data_stream.flatMap(  # noqa: SLF001 - a Java function
        route, KAFKA_OUT_ROW.get_java_type_info()))
    return routed.uid(uid).name(uid)


def campaign_statistics(engine: DataStream, stats_store: Callable[[], Any],
                        cfg: NudgeflowConfig) -> DataStream:
    """The engine's lift facts, keyed by campaign (or journey) id, added up and published.

    ``udfs.flink.campaign_stats.CampaignStatsFunction`` keeps each unit's statistics in keyed
    state and writes them to Redis; it emits the measured ROI updates (DefinitionUpdate rows for
    the control topic, only when the policy has ``roi_feedback``), which close the loop.
    """
    facts = route_engine_records(engine, "LiftFact", "campaign-stats", names.ROUTE_LIFT_UID)
    return (facts.key_by(lambda row: bytes(row[1]).decode(), key_type=Types.STRING())
            .process(CampaignStatsFunction(stats_store, cfg.definitions_topic),
                     output_type=KAFKA_OUT_ROW)
            .uid(names.CAMPAIGN_STATS_UID).name(names.CAMPAIGN_STATS_UID))


def campaign_stats_store(cfg: NudgeflowConfig) -> StatsStoreFactory:
    """Where the per-campaign statistics go: the Redis of ``cfg``."""
    return StatsStoreFactory(cfg.redis_url, cfg.redis_key_prefix, cfg.redis_ssl_ca_file)


def membership_store(cfg: NudgeflowConfig) -> CassandraRedisStore:
    """Where the engine writes segment membership: Cassandra and Redis of ``cfg``."""
    return CassandraRedisStore(
        tuple(cfg.cassandra_hosts.split(",")), cfg.cassandra_port, cfg.cassandra_keyspace,
        cfg.redis_url, cfg.redis_key_prefix, cfg.cassandra_username, cfg.cassandra_password,
        cfg.cassandra_ssl_ca_file, cfg.redis_ssl_ca_file,
        client_process=cfg.store_clients == "process",
        batch_changes=cfg.cassandra_batch_changes, process_nice=cfg.store_clients_nice)


def build(clicks: DataStream, metadata: DataStream, definitions: DataStream,
          cfg: NudgeflowConfig, initial_definitions: list[dict[str, Any]],
          model_files: ModelFiles | None, store: StoreFactory,
          build_id: str | None = None, outcomes: DataStream | None = None,
          stats_store: Callable[[], Any] | None = None,
          backfills: DataStream | None = None,
          schema_ids: Mapping[str, int] | None = None) -> JobOutputs:
    """The job's graph: Kafka record rows of the input topics -> output streams.

    ``schema_ids``: a schema registry's id per framed topic (``main`` registers them with
    ``output_wire_format: confluent``): segment changes, triggers and decisions then leave in
    Confluent's wire format. None: every value in single-object encoding.

    ``outcomes`` (the outcomes topic's records: engagement feedback journeys wait on) is
    optional: a graph without it runs campaigns and journeys, and no outcome reaches them.
    ``backfills`` (the backfill-requests topic's records, ``defs publish --backfill``) is
    optional too: bounded replays and what-if runs have none.

    ``clicks`` must carry event-time timestamps and watermarks already: they are read per Kafka
    partition in the source (``jobs.connectors.click_watermarks``; tests assign the same
    strategy).

    ``initial_definitions`` are the DefinitionUpdates the engine starts from (``main`` passes
    ``file_definitions(cfg)``: segments, campaigns and the priority policy); ``model_files`` is
    the churn model as bytes (``main`` passes ``churn_model_files(cfg)``; None: no scoring);
    ``store`` creates the membership store's writer in each engine instance (``main`` passes
    ``membership_store(cfg)``: Cassandra and Redis; pipeline tests pass a fake).
    ``stats_store`` creates the per-campaign statistics' writer (``main`` passes
    ``campaign_stats_store(cfg)``: Redis); None: the lift facts are not added up. Nothing here
    reads a file.
    """
    metadata_rows, metadata_letters = decode_metadata(metadata, cfg)
    metadata_rows = metadata_watermarks(metadata_rows, cfg)
    definition_rows, definition_letters = decode_definitions(definitions, cfg)
    definition_rows = definition_watermarks(definition_rows, cfg)
    inputs = clicks_for_engine(clicks, cfg.trigger_path_buffer_timeout_ms).union(metadata_rows)
    letters = [definition_letters]
    if outcomes is not None:
        outcome_rows, outcome_letters = decode_outcomes(outcomes, cfg)
        inputs = inputs.union(metadata_watermarks(outcome_rows, cfg,
                                                  names.OUTCOME_WATERMARKS_UID))
        letters.append(outcome_letters)
    if backfills is not None:
        backfill_rows, backfill_letters = decode_backfills(backfills, cfg)
        inputs = inputs.union(definition_watermarks(backfill_rows, cfg,
                                                    names.BACKFILL_WATERMARKS_UID))
        letters.append(backfill_letters)
    engine = run_user_engine(inputs, definition_rows, cfg, initial_definitions, model_files,
                             store, build_id)
    written = write_membership(engine, cfg, store)
    roi_updates = campaign_statistics(engine, stats_store, cfg) \
        if stats_store is not None else None
    return JobOutputs(
        segment_changes=route_engine_records(written, "SegmentChange", cfg.segment_changes_topic,
                                             names.ROUTE_SEGMENT_CHANGES_UID,
                                             schema_ids=schema_ids),
        # the trigger topics by priority tier: triggers-p0 .. triggers-p3
        triggers=route_engine_records(engine, "TriggerEvent", cfg.trigger_topic_prefix,
                                      names.ROUTE_TRIGGERS_UID, by_tier=True,
                                      schema_ids=schema_ids
                                      ).set_buffer_timeout(cfg.trigger_path_buffer_timeout_ms),
        trigger_decisions=route_engine_records(engine, "TriggerDecision",
                                               cfg.trigger_decisions_topic,
                                               names.ROUTE_DECISIONS_UID,
                                               schema_ids=schema_ids),
        # attributed conversions go to the outcomes topic the job reads: journeys waiting on
        # a conversion see them like any sender's outcome
        conversions=route_engine_records(engine, "CampaignOutcome", cfg.outcomes_topic,
                                         names.ROUTE_CONVERSIONS_UID),
        # invalid and late clicks leave on the engine's side output, changes a store refused
        # for good on the membership writer's
        dead_letters=metadata_letters.union(
            *letters, engine.get_side_output(DEAD_LETTER_TAG),
            written.get_side_output(DEAD_LETTER_TAG)),
        roi_updates=roi_updates,
    )


#: the churn model's two files as (onnx bytes, metadata bytes, onnx name, metadata name); the
#: names only label the model in messages, so a test may pass bytes that were never a file
ModelFiles = tuple[bytes, bytes, str, str]


def churn_model_files(cfg: NudgeflowConfig) -> ModelFiles | None:
    """The churn model's files, read and checked here, shipped inside the job graph.

    Shipping the bytes (120 KB) rather than a path keeps a TaskManager from reading a file of
    another job's (cleaned-up) directory, and checks the model before the job is submitted.

    Raises:
        udfs.churn.ModelRejected: the model cannot serve (the message names file and problem).
    """
    from udfs.churn import ChurnModel

    path = cfg.churn_model_path()
    if path is None:
        return None  # scoring off
    onnx_file = Path(path)
    meta_file = onnx_file.with_suffix(".json")
    ChurnModel.load(onnx_file, meta_file)
    return (onnx_file.read_bytes(), meta_file.read_bytes(), str(onnx_file), str(meta_file))


def file_definitions(cfg: NudgeflowConfig) -> list[dict[str, Any]]:
    """The definition files as DefinitionUpdates: segments, campaigns, the policy, the rates.

    Segments come from ``cfg.segments_dir`` (or the shipped catalog), campaigns, the policy and
    the currency rates from ``cfg.campaigns_dir`` (or the shipped catalog; ``none``: no
    campaigns, the shipped rates), journeys from ``cfg.journeys_dir`` (none when empty). A
    campaign or journey may name a segment that is not among the files: it may be published at
    runtime.

    Raises:
        udfs.definitions.diagnostics.InvalidDefinitions: a file does not validate (the job does
            not start).
    """
    from udfs.catalog.files import RATES_FILE, SEGMENT_CATALOG_DIR, catalog_files, load_files

    if cfg.campaigns_dir == "none":
        # no campaigns, but money is still in USD
        files = [Path(cfg.segments_dir) if cfg.segments_dir else SEGMENT_CATALOG_DIR, RATES_FILE]
    else:
        files = catalog_files(cfg.segments_dir, cfg.campaigns_dir)
    if cfg.journeys_dir:
        files.append(Path(cfg.journeys_dir))
    return load_files(files, check_references=False).updates(0, "file")


#: "never idle": a bounded input ends, and its end moves the watermark on
NEVER_IDLE_MS = 365 * 86_400_000


def bounded_replay(cfg: NudgeflowConfig) -> NudgeflowConfig:
    """``cfg`` for a bounded run (a replay): event time alone decides, not wall-clock time.

    No partition counts as idle (``idleness_ms`` is wall-clock time: on a busy machine a
    partition that is merely slow would be left out, and the end-of-input watermark of one
    that finished would make the slow one's records late) and nothing is released by
    processing time (``quiet_release_ms``): every input ends, which releases everything.
    """
    return replace(cfg, idleness_ms=NEVER_IDLE_MS, quiet_release_ms=0)


def main(argv: Sequence[str] | None = None) -> None:
    """Run the job on Kafka: ``python -m jobs.job [--local] [--bounded] [config flags]``."""
    parser = argparse.ArgumentParser(prog="nudgeflow-job", description=__doc__)
    parser.add_argument("--local", action="store_true",
                        help="run in an embedded MiniCluster in this process")
    parser.add_argument("--bounded", action="store_true",
                        help="stop after the clicks that are in the topic at start")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)
    from udfs import native

    # the local MiniCluster's Python imports what this process did (a cluster's engines log
    # their own at open)
    print(f"nudgeflow-job: engine modules: {native.status()}", file=sys.stderr, flush=True)
    if args.bounded:
        cfg = bounded_replay(cfg)
    from udfs.churn import ModelRejected

    # the files are read and checked before anything starts: a bad file replaces nothing
    initial_definitions = file_definitions(cfg)
    try:
        model_files = churn_model_files(cfg)
    except ModelRejected as exc:
        raise SystemExit(f"nudgeflow-job: {exc}") from None

    schema_ids = None
    if cfg.output_wire_format == "confluent":
        from jobs.schema_registry import RegistryError, register_output_schemas

        try:
            schema_ids = register_output_schemas(cfg)
        except RegistryError as exc:
            raise SystemExit(f"nudgeflow-job: output-wire-format confluent: {exc}") from None
    from jobs.connectors import click_watermarks, kafka_records, routed_kafka_sink

    try:
        env = create_env(cfg, local=args.local)
    except ConfigError as exc:
        raise SystemExit(f"nudgeflow-job: configuration: {exc}") from None
    clicks = kafka_records(env, cfg, cfg.clicks_topic, names.CLICKS_SOURCE_UID,
                           names.CLICKS_SOURCE_NAME, bounded=args.bounded,
                           watermarks=click_watermarks(cfg))
    metadata = kafka_records(env, cfg, cfg.user_metadata_topic, names.METADATA_SOURCE_UID,
                             names.METADATA_SOURCE_NAME, bounded=args.bounded)
    outcomes = kafka_records(env, cfg, cfg.outcomes_topic, names.OUTCOMES_SOURCE_UID,
                             names.OUTCOMES_SOURCE_NAME, bounded=args.bounded)
    # per-user re-evaluations of `defs publish --backfill` (none in a bounded replay)
    backfills = None if args.bounded else kafka_records(
        env, cfg, cfg.backfill_topic, names.BACKFILL_SOURCE_UID, names.BACKFILL_SOURCE_NAME)
    # the control topic is read whole at every start (compacted; versions decide)
    definitions = kafka_records(
        env, cfg, cfg.definitions_topic, names.DEFINITIONS_SOURCE_UID,
        names.DEFINITIONS_SOURCE_NAME, bounded=args.bounded, from_earliest=True)
    # the build id of the code shipped (`nudgeflow run` computes it from its archive)
    outputs = build(clicks, metadata, definitions, cfg, initial_definitions, model_files,
                    membership_store(cfg), build_id=os.environ.get(BUILD_ID_ENV),
                    outcomes=outcomes, stats_store=campaign_stats_store(cfg),
                    backfills=backfills, schema_ids=schema_ids)
    outputs.all().sink_to(routed_kafka_sink(cfg)).uid(names.KAFKA_SINK_UID).name(
        names.KAFKA_SINK_NAME
    )
    env.execute(cfg.job_name)  # under `flink run -d` this returns once the job is submitted


if __name__ == "__main__":
    main()
