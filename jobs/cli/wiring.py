"""What the command line hands the job and the local stack from ``infra``.

The job's modules (``jobs.job``, ``jobs.env``, ``jobs.connectors``, ``jobs.config``) import
nothing from ``infra``: they never run Maven and never look at ``$NUDGEFLOW_HOME``. The command
line does both, here, and passes the results on as configuration values:

- the job's jars, resolved with Maven by ``infra.jars`` (``jars``);
- for a job run in a process of its own on this machine (``--local``): the checkpoint directory
  under ``$NUDGEFLOW_HOME`` and the Prometheus reporter's settings;
- provisioning (``infra.provision``) with the topic names, Kafka client settings and Cassandra
  address of a configuration.
"""

from __future__ import annotations

from collections.abc import Callable
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
