"""nudgeflow's Flink job: the per-user engine.

Inputs: the clicks topic (ClickEvents), the compacted user-metadata topic (UserMetadata) and the
definitions control topic (DefinitionUpdates), all Avro single-object records; plus the segment
files loaded at start.
Outputs: SegmentChanges (ENTER/EXIT) on the segment-changes topic, keyed by user, also written to
Cassandra and Redis by the engine; TriggerEvents on the topic of their priority tier
(triggers-p0 .. triggers-p3) and TriggerDecisions (suppressed or deferred campaigns), keyed by
user; a DeadLetter per rejected or late record. The Kafka outputs go through one sink, so with
exactly-once delivery they commit in the same transaction.
State: per user, behavioural features, the latest metadata, segment membership and campaign
state (keyed state + event-time timers); the segment, campaign and priority-policy definitions
(broadcast state).

``build`` wires the graph from streams (tests pass collections); ``main`` builds the Kafka
connectors and runs it, either in an embedded MiniCluster (``--local``) or, when started by
``flink run -py jobs/job.py``, on the cluster that runs it.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyflink.common import Configuration, Duration, Types, WatermarkStrategy
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from jobs import names
from jobs.config import NudgeflowConfig, add_config_arguments, config_from_args
from udfs.descriptors import (
    DEAD_LETTER_TAG,
    DEFINITION_ROW,
    ENGINE_INPUT_ROW,
    KAFKA_OUT_ROW,
    definitions_state,
)
from udfs.functions import (
    DecodeClicksFunction,
    DecodeRecordsFunction,
    EventTimeAssigner,
    NeutralTimeAssigner,
    UserEngineFunction,
    definition_to_row,
    metadata_to_engine_input,
)


@dataclass(frozen=True)
class JobOutputs:
    """The job's output streams, each of Row(topic, key, value) ready for the Kafka sink."""

    segment_changes: DataStream
    dead_letters: DataStream

    def all(self) -> DataStream:
        """Every output in one stream (one sink, one transaction)."""
        return self.segment_changes.union(self.dead_letters)


def decode_clicks(records: DataStream, cfg: NudgeflowConfig) -> tuple[DataStream, DataStream]:
    """Kafka record rows -> (valid clicks as engine input rows, encoded DeadLetter rows)."""
    decoded = records.process(
        DecodeClicksFunction(cfg.dead_letter_topic, cfg.max_future_skew_ms),
        output_type=ENGINE_INPUT_ROW,
    ).uid(names.DECODE_CLICKS_UID).name(names.DECODE_CLICKS_NAME)
    return decoded, decoded.get_side_output(DEAD_LETTER_TAG)


def decode_metadata(records: DataStream, cfg: NudgeflowConfig) -> tuple[DataStream, DataStream]:
    """Kafka record rows of user-metadata -> (engine input rows, DeadLetter rows)."""
    decoded = records.process(
        DecodeRecordsFunction("UserMetadata", cfg.dead_letter_topic, metadata_to_engine_input),
        output_type=ENGINE_INPUT_ROW,
    ).uid(names.DECODE_METADATA_UID).name(names.DECODE_METADATA_NAME)
    return decoded, decoded.get_side_output(DEAD_LETTER_TAG)


def decode_definitions(records: DataStream, cfg: NudgeflowConfig
                       ) -> tuple[DataStream, DataStream]:
    """Kafka record rows of the definitions topic -> (definition rows, DeadLetter rows)."""
    decoded = records.process(
        DecodeRecordsFunction("DefinitionUpdate", cfg.dead_letter_topic, definition_to_row),
        output_type=DEFINITION_ROW,
    ).uid(names.DECODE_DEFINITIONS_UID).name(names.DECODE_DEFINITIONS_NAME)
    return decoded, decoded.get_side_output(DEAD_LETTER_TAG)


def event_time_strategy(cfg: NudgeflowConfig, out_of_orderness_ms: int) -> WatermarkStrategy:
    """Bounded out-of-orderness on the rows' ``event_time`` field, with idleness.

    ``with_idleness`` must come first: PyFlink 2.2's returns a new strategy that silently drops
    a Python timestamp assigner set before it (the Kafka record time would be used instead).
    """
    return (
        WatermarkStrategy.for_bounded_out_of_orderness(Duration.of_millis(out_of_orderness_ms))
        .with_idleness(Duration.of_millis(cfg.idleness_ms))
        .with_timestamp_assigner(EventTimeAssigner())
    )


def with_event_time(rows: DataStream, cfg: NudgeflowConfig, out_of_orderness_ms: int,
                    uid: str) -> DataStream:
    """Event-time timestamps and bounded-out-of-orderness watermarks with idleness."""
    strategy = event_time_strategy(cfg, out_of_orderness_ms)
    return rows.assign_timestamps_and_watermarks(strategy).uid(uid).name(uid)


def run_user_engine(inputs: DataStream, definitions: DataStream, cfg: NudgeflowConfig,
                    initial_definitions: list[dict[str, Any]],
                    model_files: ModelFiles | None, writer_factory: Any = None) -> DataStream:
    """Key by user, connect the broadcast definitions, run the engine; SegmentChange rows."""
    broadcast = definitions.broadcast(definitions_state())
    return (
        inputs.key_by(lambda row: row[1], key_type=Types.STRING())  # row[1] is user_id
        .connect(broadcast)
        .process(UserEngineFunction(cfg, initial_definitions, model_files, writer_factory),
                 output_type=KAFKA_OUT_ROW)
        .uid(names.USER_ENGINE_UID)
        .name(names.USER_ENGINE_NAME)
    )


def build(clicks: DataStream, metadata: DataStream, definitions: DataStream,
          cfg: NudgeflowConfig, initial_definitions: list[dict[str, Any]] | None = None,
          writer_factory: Any = None) -> JobOutputs:
    """The job's graph: Kafka record rows of the three input topics -> output streams.

    ``clicks`` must carry event-time timestamps and watermarks already (the Kafka source gets
    ``jobs.connectors.click_watermarks``, per partition; tests assign the same strategy).

    ``initial_definitions`` are the DefinitionUpdates of the segment files (default: those of
    ``file_definitions(cfg)``); ``writer_factory`` replaces the Cassandra/Redis writer
    (pipeline tests).
    """
    if initial_definitions is None:
        initial_definitions = file_definitions(cfg)
    model_files = churn_model_files(cfg)
    valid_clicks, click_letters = decode_clicks(clicks, cfg)
    metadata_rows, metadata_letters = decode_metadata(metadata, cfg)
    # metadata never holds event time back for long: no disorder bound, and idle when quiet
    metadata_rows = with_event_time(metadata_rows, cfg, 0, names.METADATA_WATERMARKS_UID)
    definition_rows, definition_letters = decode_definitions(definitions, cfg)
    # Definitions must neither hold event time back (the control topic is quiet: it goes idle)
    # nor push it forward (their Kafka timestamps are wall-clock: an idle click stream would
    # let them drag the watermark to "now" and make every event late). Timestamp 0 does both:
    # Flink ignores an input whose watermark is behind the operator's until it catches up.
    definition_rows = definition_rows.assign_timestamps_and_watermarks(
        WatermarkStrategy.for_monotonous_timestamps()
        .with_idleness(Duration.of_millis(cfg.idleness_ms))
        .with_timestamp_assigner(NeutralTimeAssigner())
    ).uid(names.DEFINITION_WATERMARKS_UID).name(names.DEFINITION_WATERMARKS_UID)
    changes = run_user_engine(valid_clicks.union(metadata_rows), definition_rows, cfg,
                              initial_definitions, model_files, writer_factory)
    dead_letters = click_letters.union(metadata_letters, definition_letters,
                                       changes.get_side_output(DEAD_LETTER_TAG))
    return JobOutputs(segment_changes=changes, dead_letters=dead_letters)


def python_worker_settings() -> dict[str, str]:
    """Settings that make an embedded MiniCluster run Python UDFs with this interpreter.

    Thread mode embeds CPython in the JVM, which ignores a virtualenv's .pth files, so this
    environment's site-packages and the folder holding the job's packages go on its path.
    """
    import site

    package_root = str(Path(__file__).resolve().parent.parent)
    paths = [package_root, *(p for p in site.getsitepackages() if Path(p).is_dir())]
    return {
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.pythonpath": ":".join(dict.fromkeys(paths)),
    }


def create_env(cfg: NudgeflowConfig, local: bool) -> StreamExecutionEnvironment:
    """An execution environment configured from ``cfg``.

    Args:
        cfg: the configuration.
        local: True for an embedded MiniCluster in this process; False when a cluster runs the
            job (``flink run``), whose own configuration names the Python interpreter.
    """
    from infra.servers.flink import prometheus_settings
    from jobs.connectors import flink_jar_urls

    conf = Configuration()
    settings = {
        "python.execution-mode": cfg.execution_mode,
        "python.fn-execution.bundle.size": str(cfg.bundle_size),
        "python.fn-execution.bundle.time": str(cfg.bundle_time_ms),
        "execution.buffer-timeout.interval": f"{cfg.buffer_timeout_ms} ms",
        "state.backend.type": cfg.state_backend,
        "pipeline.name": cfg.job_name,
        "pipeline.jars": ";".join(flink_jar_urls()),
    }
    if cfg.checkpoint_interval_ms:
        settings["execution.checkpointing.interval"] = f"{cfg.checkpoint_interval_ms} ms"
        settings["execution.checkpointing.externalized-checkpoint-retention"] = (
            "RETAIN_ON_CANCELLATION"
        )
        if cfg.checkpoint_dir:
            settings["execution.checkpointing.dir"] = cfg.checkpoint_dir
        elif local:
            from infra.paths import StackPaths

            settings["execution.checkpointing.dir"] = (
                StackPaths.from_env().home / "checkpoints"
            ).as_uri()
    if local:
        settings.update(python_worker_settings())
        if _has_prometheus_reporter():
            settings.update(prometheus_settings())
    for key, value in settings.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.parallelism)
    return env


def _has_prometheus_reporter() -> bool:
    """Whether this JVM's classpath holds the reporter (``infra.servers.flink.local_run_env``)."""
    lib = os.environ.get("FLINK_LIB_DIR")
    return lib is not None and any(Path(lib).glob("flink-metrics-prometheus*.jar"))


#: the churn model's two files as (onnx bytes, metadata bytes, onnx name, metadata name)
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
    """The definition files as DefinitionUpdates: segments, campaigns and the priority policy.

    Segments come from ``cfg.segments_dir`` (or the shipped catalog), campaigns and the policy
    from ``cfg.campaigns_dir`` (or the shipped catalog; ``none``: no campaigns). A campaign may
    name a segment that is not among the files: it may be published at runtime.

    Raises:
        udfs.definitions.diagnostics.InvalidDefinitions: a file does not validate (the job does
            not start).
    """
    from udfs.definitions.files import SEGMENT_CATALOG_DIR, catalog_files, load_files

    if cfg.campaigns_dir == "none":
        files = [Path(cfg.segments_dir) if cfg.segments_dir else SEGMENT_CATALOG_DIR]
    else:
        files = catalog_files(cfg.segments_dir, cfg.campaigns_dir)
    return load_files(files, check_references=False).updates(0, "file")


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

    from jobs.connectors import click_watermarks, kafka_records, routed_kafka_sink

    env = create_env(cfg, local=args.local)
    clicks = kafka_records(env, cfg, cfg.clicks_topic, names.CLICKS_SOURCE_UID,
                           names.CLICKS_SOURCE_NAME, bounded=args.bounded,
                           watermarks=click_watermarks(cfg))
    metadata = kafka_records(env, cfg, cfg.user_metadata_topic, names.METADATA_SOURCE_UID,
                             names.METADATA_SOURCE_NAME, bounded=args.bounded)
    # the control topic is read whole at every start (compacted; versions decide)
    definitions = kafka_records(
        env, cfg, cfg.definitions_topic, names.DEFINITIONS_SOURCE_UID,
        names.DEFINITIONS_SOURCE_NAME, bounded=args.bounded, from_earliest=True)
    from udfs.churn import ModelRejected

    try:  # the model is checked before anything is submitted: a bad file replaces nothing
        outputs = build(clicks, metadata, definitions, cfg)
    except ModelRejected as exc:
        raise SystemExit(f"nudgeflow-job: {exc}") from None
    outputs.all().sink_to(routed_kafka_sink(cfg)).uid(names.KAFKA_SINK_UID).name(
        names.KAFKA_SINK_NAME
    )
    env.execute(cfg.job_name)  # under `flink run -d` this returns once the job is submitted


if __name__ == "__main__":
    main()
