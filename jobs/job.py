"""nudgeflow's Flink job (walking skeleton).

Inputs: the clicks topic (Avro single-object ClickEvents).
Outputs: one UserActivityCount per valid event on the activity-counts topic, keyed by user; a
DeadLetter per rejected record on the dead-letter topic. Both go through one Kafka sink, so with
exactly-once delivery they commit in the same transaction.
State: per user, the number of events seen.

``build`` wires the graph from streams (tests pass collections); ``main`` builds the Kafka
connectors and runs it, either in an embedded MiniCluster (``--local``) or, when started by
``flink run -py jobs/job.py``, on the cluster that runs it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pyflink.common import Configuration, Types
from pyflink.datastream import DataStream, StreamExecutionEnvironment

from jobs import names
from jobs.config import NudgeflowConfig, add_config_arguments, config_from_args
from udfs.clicks import DEFAULT_MAX_FUTURE_SKEW_MS
from udfs.descriptors import CLICK_ROW, DEAD_LETTER_TAG, KAFKA_OUT_ROW
from udfs.functions import CountActivityFunction, DecodeClicksFunction


@dataclass(frozen=True)
class JobOutputs:
    """The job's output streams, each of Row(topic, key, value) ready for the Kafka sink."""

    activity_counts: DataStream
    dead_letters: DataStream

    def all(self) -> DataStream:
        """Every output in one stream (one sink, one transaction)."""
        return self.activity_counts.union(self.dead_letters)


def decode_clicks(records: DataStream, cfg: NudgeflowConfig) -> tuple[DataStream, DataStream]:
    """Kafka record rows -> (valid click rows, encoded DeadLetter rows)."""
    decoded = records.process(
        DecodeClicksFunction(cfg.dead_letter_topic, DEFAULT_MAX_FUTURE_SKEW_MS),
        output_type=CLICK_ROW,
    ).uid(names.DECODE_CLICKS_UID).name(names.DECODE_CLICKS_NAME)
    return decoded, decoded.get_side_output(DEAD_LETTER_TAG)


def run_user_engine(clicks: DataStream, cfg: NudgeflowConfig) -> DataStream:
    """Key by user and keep the per-user state; emit encoded UserActivityCount rows."""
    return (
        clicks.key_by(lambda row: row[1], key_type=Types.STRING())  # row[1] is user_id
        .process(CountActivityFunction(cfg.activity_counts_topic), output_type=KAFKA_OUT_ROW)
        .uid(names.COUNT_ACTIVITY_UID)
        .name(names.COUNT_ACTIVITY_NAME)
    )


def build(clicks: DataStream, cfg: NudgeflowConfig) -> JobOutputs:
    """The job's graph from a stream of Kafka record rows to its output streams."""
    valid, dead_letters = decode_clicks(clicks, cfg)
    activity_counts = run_user_engine(valid, cfg)
    return JobOutputs(activity_counts=activity_counts, dead_letters=dead_letters)


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
    for key, value in settings.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.parallelism)
    return env


def main(argv: Sequence[str] | None = None) -> None:
    """Run the job on Kafka: ``python -m jobs.job [--local] [--bounded] [config flags]``."""
    parser = argparse.ArgumentParser(prog="nudgeflow-job", description=__doc__)
    parser.add_argument("--local", action="store_true",
                        help="run in an embedded MiniCluster in this process")
    parser.add_argument("--bounded", action="store_true",
                        help="stop after the clicks that are in the topic at start")
    parser.add_argument("--detached", action="store_true",
                        help="submit and return (cluster runs); default waits for the end")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from jobs.connectors import kafka_records, routed_kafka_sink

    env = create_env(cfg, local=args.local)
    clicks = kafka_records(env, cfg, cfg.clicks_topic, names.CLICKS_SOURCE_UID,
                           names.CLICKS_SOURCE_NAME, bounded=args.bounded)
    outputs = build(clicks, cfg)
    outputs.all().sink_to(routed_kafka_sink(cfg)).uid(names.KAFKA_SINK_UID).name(
        names.KAFKA_SINK_NAME
    )
    if args.detached:
        client = env.execute_async(cfg.job_name)
        print(f"submitted job {client.get_job_id()}", flush=True)
    else:
        env.execute(cfg.job_name)


if __name__ == "__main__":
    main()
