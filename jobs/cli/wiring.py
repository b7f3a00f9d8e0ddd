"""What the command line hands the job and the local stack from ``infra``.

The job's modules (``jobs.job``, ``jobs.env``, ``jobs.connectors``, ``jobs.config``) import
nothing from ``infra``: they never run Maven and never look at ``$NUDGEFLOW_HOME``. The command
line does both, here, and passes the results on as configuration values:

- the job's jars, resolved with Maven by ``infra.jars`` (``jars``);
- for a job run in a process of its own on this machine (``--local``): the checkpoint directory
  under ``$NUDGEFLOW_HOME`` and the Prometheus reporter's settings;
- provisioning (``infra.provision``) with the topic names, Kafka client settings and Cassandra
  address of a configuration;
- the clients of a configuration's stores and topics for the commands (``redis_client``,
  ``cassandra_session``, ``topic_values``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from jobs.config import NudgeflowConfig


def job_jars() -> str:
    """The ``jars`` value of the job: its jars' ``file://`` URLs (resolved with Maven once)."""
    from infra.jars import jar_urls

    return ";".join(jar_urls("flink"))


def cluster_job_flags(cfg: NudgeflowConfig) -> list[str]:
    """Flags that complete ``cfg`` for a job submitted with ``flink run``: the jars if unset."""
    return [] if cfg.jars else ["--jars", job_jars()]


def local_job_flags(cfg: NudgeflowConfig) -> list[str]:
    """Flags that complete ``cfg`` for ``python -m jobs.job --local`` (or the ceiling job).

    Each value unset in ``cfg``: the jars, the checkpoint directory
    (``$NUDGEFLOW_HOME/checkpoints``) and the Prometheus reporter's settings (the process is
    started with ``infra.servers.flink.local_run_env``, which puts the reporter on its classpath).
    """
    from infra.paths import StackPaths
    from infra.servers.flink import prometheus_settings

    flags = cluster_job_flags(cfg)
    if not cfg.checkpoint_dir:
        flags += ["--checkpoint-dir", (StackPaths.from_env().home / "checkpoints").as_uri()]
    if not cfg.prometheus_settings:
        pairs = ";".join(f"{key}={value}" for key, value in prometheus_settings().items())
        flags += ["--prometheus-settings", pairs]
    return flags


def provision_topics(cfg: NudgeflowConfig, say: Callable[[str], None] = print) -> list[str]:
    """``infra.provision.provision_topics`` for ``cfg``'s Kafka and topic names."""
    from infra import provision

    return provision.provision_topics(cfg.python_client_kwargs(), cfg.topic_fields(),
                                      cfg.trigger_topics(), say=say,
                                      replication_factor=cfg.kafka_replication_factor or None)


def delete_run_topics(cfg: NudgeflowConfig, tag: str) -> list[str]:
    """Delete the topics of ``isolated(cfg, tag)`` (every topic named ``<tag>-...``)."""
    from infra import provision

    return provision.delete_topics(cfg.python_client_kwargs(), f"{tag}-")


def provision_cassandra(cfg: NudgeflowConfig, say: Callable[[str], None] = print) -> int:
    """``infra.provision.provision_cassandra`` for ``cfg``'s Cassandra and keyspace."""
    from infra import provision

    return provision.provision_cassandra(
        cfg.cassandra_hosts.split(","), cfg.cassandra_port, cfg.cassandra_keyspace,
        cfg.cassandra_username, cfg.cassandra_password, say=say,
        replication=cfg.cassandra_replication or provision.LOCAL_REPLICATION,
        ssl_ca_file=cfg.cassandra_ssl_ca_file)


def cassandra_session(cfg: NudgeflowConfig, keyspace: str | None = None) -> Any:
    """``infra.provision.cassandra_session`` for ``cfg``'s Cassandra (caller shuts it down)."""
    from infra import provision

    return provision.cassandra_session(cfg.cassandra_hosts.split(","), cfg.cassandra_port,
                                       cfg.cassandra_username, cfg.cassandra_password, keyspace,
                                       cfg.cassandra_ssl_ca_file)


def redis_client(cfg: NudgeflowConfig, **options: Any) -> Any:
    """A redis-py client for ``cfg``'s Redis (TLS with ``rediss://``: udfs.stores.connections)."""
    from udfs.stores.connections import redis_client as connect

    return connect(cfg.redis_url, cfg.redis_ssl_ca_file, **options)


class TopicMissing(RuntimeError):
    """The topic to read does not exist (the message names it)."""


class TopicStalled(RuntimeError):
    """Reading a topic made no progress for too long (the message names it)."""


def topic_values(cfg: NudgeflowConfig, topic: str, stall_s: float = 30.0
                 ) -> Iterator[bytes | None]:
    """Every committed record value of ``topic``, from its beginning to its end at the call.

    ``topic_records`` without the keys.
    """
    for _, value in topic_records(cfg, topic, stall_s):
        yield value


def topic_records(cfg: NudgeflowConfig, topic: str, stall_s: float = 30.0
                  ) -> Iterator[tuple[bytes | None, bytes | None]]:
    """Every committed record (key, value) of ``topic``, from its beginning to its end at the call.

    Read with assigned partitions and no consumer group, so nothing is committed anywhere.

    Raises:
        TopicMissing: the topic does not exist.
        TopicStalled: no record arrived for ``stall_s`` while the end was not reached.
    """
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(**cfg.python_client_kwargs(), enable_auto_commit=False,
                             isolation_level="read_committed", group_id=None)
    try:
        found = consumer.partitions_for_topic(topic)
        if not found:
            raise TopicMissing(f"the topic {topic!r} does not exist at {cfg.kafka_bootstrap}")
        partitions = [TopicPartition(topic, p) for p in sorted(found)]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        ends = consumer.end_offsets(partitions)
        progress_at = time.monotonic()
        while any(consumer.position(p) < ends[p] for p in partitions):
            batches = consumer.poll(timeout_ms=500)
            if batches:
                progress_at = time.monotonic()
            elif time.monotonic() - progress_at > stall_s:
                raise TopicStalled(f"reading {topic} made no progress for {stall_s:.0f} s")
            for batch in batches.values():
                for message in batch:
                    yield message.key, message.value
    finally:
        consumer.close()
