"""The benchmark's ceiling: the clicks moved through the job's own Kafka source and sink, no work.

``python -m jobs.bench.ceiling_job --local --target-topic T [config flags]`` reads the clicks
topic with the job's source (``jobs.connectors.kafka_records``: same deserializer, same consumer
settings), maps each record to Row(T, key, value) in Java
(``io.nudgeflow.flink.PassThroughRecord``) and writes it with the job's sink
(``routed_kafka_sink``). No Python runs per record, so its events/s is the limit of this
machine's Kafka, Flink and client stack that the job is measured against.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pyflink.datastream import DataStream
from pyflink.java_gateway import get_gateway

from jobs import names
from jobs.config import add_config_arguments, config_from_args
from udfs.flink.descriptors import KAFKA_OUT_ROW


def main(argv: Sequence[str] | None = None) -> None:
    """Run the pass-through job on Kafka until cancelled."""
    parser = argparse.ArgumentParser(prog="nudgeflow-ceiling", description=__doc__)
    parser.add_argument("--local", action="store_true",
                        help="run in an embedded MiniCluster in this process")
    parser.add_argument("--target-topic", required=True, help="where the records are copied")
    add_config_arguments(parser)
    args = parser.parse_args(argv)
    cfg = config_from_args(args)

    from jobs.config import ConfigError
    from jobs.connectors import kafka_records, routed_kafka_sink
    from jobs.env import create_env

    try:
        env = create_env(cfg, local=args.local)
    except ConfigError as exc:
        raise SystemExit(f"nudgeflow-ceiling: configuration: {exc}") from None
    records = kafka_records(env, cfg, cfg.clicks_topic, names.CLICKS_SOURCE_UID,
                            names.CLICKS_SOURCE_NAME)
    # a Java map: PyFlink's map() would put a Python function (and its boundary) in the path
    mapper = get_gateway().jvm.io.nudgeflow.flink.PassThroughRecord(args.target_topic)
    copied = DataStream(records._j_data_stream.map(  # noqa: SLF001
        mapper, KAFKA_OUT_ROW.get_java_type_info()))
    copied.sink_to(routed_kafka_sink(cfg)).name("pass-through sink")
    env.execute(f"{cfg.job_name}-ceiling")


if __name__ == "__main__":
    main()
