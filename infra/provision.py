"""Create nudgeflow's Kafka topics and Cassandra tables from the spec files in ``infra/``.

- ``infra/topics.yaml``: topics, partitions and configs; missing topics are created, partition
  counts raised and configs set to the spec. Nothing is ever deleted or shrunk.
- ``infra/cql/*.cql``: keyspace and tables (``CREATE ... IF NOT EXISTS``), applied in file order.

Both are idempotent: ``nudgeflow stack up`` runs them every time.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.paths import INFRA_DIR
from jobs.config import NudgeflowConfig

TOPICS_FILE = INFRA_DIR / "topics.yaml"
CQL_DIR = INFRA_DIR / "cql"
LOCAL_REPLICATION = "{'class': 'SimpleStrategy', 'replication_factor': 1}"


class ProvisionError(RuntimeError):
    """A spec file is wrong, or Kafka/Cassandra refused a change; the message says which."""


@dataclass(frozen=True)
class TopicSpec:
    """One topic as ``infra/topics.yaml`` describes it, with its configured name."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)


def topic_specs(cfg: NudgeflowConfig, path: Path = TOPICS_FILE) -> list[TopicSpec]:
    """The topics of the spec file, named by the configuration.

    Raises:
        ProvisionError: the file is malformed (the message names the entry and the problem).
    """
    doc = yaml.safe_load(path.read_text()) or {}
    default_rf = int(doc.get("defaults", {}).get("replication_factor", 1))
    specs = []
    for index, entry in enumerate(doc.get("topics", [])):
        where = f"{path}: topics[{index}]"
        if "tier" in entry:
            name = cfg.trigger_topic(str(entry["tier"]))
        elif "field" in entry:
            if not hasattr(cfg, entry["field"]) or not entry["field"].endswith("_topic"):
                raise ProvisionError(f"{where}: field {entry['field']!r} is not a topic field")
            name = getattr(cfg, entry["field"])
        else:
            raise ProvisionError(f"{where}: needs `field: <config field>` or `tier: P0..P3`")
        partitions = entry.get("partitions")
        if not isinstance(partitions, int) or partitions < 1:
            raise ProvisionError(f"{where}: partitions must be a positive integer")
        config = {str(k): str(v) for k, v in (entry.get("config") or {}).items()}
        specs.append(TopicSpec(name, partitions, int(entry.get("replication_factor",
                                                               default_rf)), config))
    return specs


def provision_topics(cfg: NudgeflowConfig, say: Callable[[str], None] = print) -> list[str]:
    """Create missing topics and raise partitions/configs to the spec; return what changed."""
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    specs = topic_specs(cfg)
    admin = KafkaAdminClient(**cfg.python_client_kwargs(), client_id="nudgeflow-provision")
    changes: list[str] = []
    try:
        existing = set(admin.list_topics())
        missing = [s for s in specs if s.name not in existing]
        if missing:
            admin.create_topics(
                [NewTopic(s.name, s.partitions, s.replication_factor, topic_configs=s.config)
                 for s in missing]
            )
            changes += [f"created topic {s.name} ({s.partitions} partitions)" for s in missing]
        present = [s for s in specs if s.name in existing]
        if present:
            described = {d["name"]: len(d["partitions"])
                         for d in admin.describe_topics([s.name for s in present])}
            grow = {s.name: NewPartitions(s.partitions) for s in present
                    if described.get(s.name, s.partitions) < s.partitions}
            if grow:
                admin.create_partitions(grow)
                changes += [f"raised {n} to {p.total_count} partitions" for n, p in grow.items()]
            with_config = [s for s in present if s.config]
            if with_config:
                admin.alter_configs(
                    [ConfigResource(ConfigResourceType.TOPIC, s.name, configs=s.config)
                     for s in with_config]
                )
    except Exception as exc:
        raise ProvisionError(f"provisioning Kafka topics at {cfg.kafka_bootstrap} failed: {exc}"
                             ) from exc
    finally:
        admin.close()
    for change in changes:
        say(f"  kafka: {change}")
    return changes


def cql_statements(cfg: NudgeflowConfig, replication: str = LOCAL_REPLICATION,
                   cql_dir: Path = CQL_DIR) -> list[str]:
    """The CQL statements of ``infra/cql/*.cql`` in file order, placeholders filled in."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,47}", cfg.cassandra_keyspace):
        raise ProvisionError(
            f"cassandra_keyspace {cfg.cassandra_keyspace!r} is not a valid keyspace name "
            "(lower-case letters, digits and _, starting with a letter)"
        )
    statements = []
    for path in sorted(cql_dir.glob("*.cql")):
        text = "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())
        text = text.replace("{keyspace}", cfg.cassandra_keyspace).replace(
            "{replication}", replication
        )
        statements += [s.strip() for s in text.split(";") if s.strip()]
    return statements


def cassandra_session(cfg: NudgeflowConfig, keyspace: str | None = None) -> Any:
    """A cassandra-driver session for the configured cluster (caller shuts down its cluster)."""
    from cassandra.auth import PlainTextAuthProvider
    from cassandra.cluster import Cluster

    auth = (
        PlainTextAuthProvider(cfg.cassandra_username, cfg.cassandra_password)
        if cfg.cassandra_username
        else None
    )
    cluster = Cluster(
        cfg.cassandra_hosts.split(","), port=cfg.cassandra_port, auth_provider=auth,
        connect_timeout=10, protocol_version=5,
    )
    return cluster.connect(keyspace)


def provision_cassandra(cfg: NudgeflowConfig, say: Callable[[str], None] = print) -> int:
    """Apply the CQL files; return the number of statements run."""
    statements = cql_statements(cfg)
    try:
        session = cassandra_session(cfg)
    except Exception as exc:
        raise ProvisionError(
            f"cannot connect to Cassandra at {cfg.cassandra_hosts}:{cfg.cassandra_port} ({exc}); "
            "is it running? (`nudgeflow stack status`)"
        ) from exc
    try:
        for statement in statements:
            session.execute(statement, timeout=60)
    except Exception as exc:
        raise ProvisionError(f"applying infra/cql to Cassandra failed: {exc}\n{statement}"
                             ) from exc
    finally:
        session.cluster.shutdown()
    say(f"  cassandra: keyspace {cfg.cassandra_keyspace} and {len(statements) - 1} tables ok")
    return len(statements)
