"""Create nudgeflow's Kafka topics and Cassandra tables from the spec files in ``infra/``.

- ``infra/topics.yaml``: topics, partitions and configs; missing topics are created, partition
  counts raised and configs set to the spec. Nothing is ever deleted or shrunk.
- ``infra/cql/*.cql``: keyspace and tables (``CREATE ... IF NOT EXISTS``), applied in file order.

Both are idempotent: ``nudgeflow stack up`` runs them every time. The functions take plain
values (topic names, client settings, keyspace, hosts); the caller reads them from its
configuration (``jobs.cli.wiring`` for the command line).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from infra.paths import INFRA_DIR

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


def topic_specs(field_topics: Mapping[str, str], tier_topics: Mapping[str, str],
                path: Path = TOPICS_FILE, replication_factor: int | None = None
                ) -> list[TopicSpec]:
    """The topics of the spec file, with their configured names.

    Args:
        field_topics: each topic field's name to its topic (``clicks_topic``: ``clicks``); an
            entry ``field: F`` of the file is the topic ``field_topics[F]``.
        tier_topics: each priority tier to its trigger topic (``P0``: ``triggers-p0``); an
            entry ``tier: T`` is the topic ``tier_topics[T]``.
        path: the spec file.
        replication_factor: every topic's replication factor instead of the file's (a
            cluster's setting: the file describes the local stack's single broker).

    Raises:
        ProvisionError: the file is malformed (the message names the entry and the problem).
    """
    doc = yaml.safe_load(path.read_text()) or {}
    default_rf = int(doc.get("defaults", {}).get("replication_factor", 1))
    specs = []
    for index, entry in enumerate(doc.get("topics", [])):
        where = f"{path}: topics[{index}]"
        if "tier" in entry:
            tier = str(entry["tier"])
            if tier not in tier_topics:
                raise ProvisionError(f"{where}: tier {tier!r} is not one of "
                                     f"{', '.join(tier_topics)}")
            name = tier_topics[tier]
        elif "field" in entry:
            if entry["field"] not in field_topics or not entry["field"].endswith("_topic"):
                raise ProvisionError(f"{where}: field {entry['field']!r} is not a topic field")
            name = field_topics[entry["field"]]
        else:
            raise ProvisionError(f"{where}: needs `field: <config field>` or `tier: P0..P3`")
        partitions = entry.get("partitions")
        if not isinstance(partitions, int) or partitions < 1:
            raise ProvisionError(f"{where}: partitions must be a positive integer")
        config = {str(k): str(v) for k, v in (entry.get("config") or {}).items()}
        factor = replication_factor or int(entry.get("replication_factor", default_rf))
        specs.append(TopicSpec(name, partitions, factor, config))
    return specs


def provision_topics(client_kwargs: Mapping[str, Any], field_topics: Mapping[str, str],
                     tier_topics: Mapping[str, str], say: Callable[[str], None] = print,
                     replication_factor: int | None = None) -> list[str]:
    """Create missing topics and raise partitions/configs to the spec; return what changed.

    Args:
        client_kwargs: kafka-python client arguments (``bootstrap_servers``, security).
        field_topics: the topic names by field, as for ``topic_specs``.
        tier_topics: the trigger topic names by tier, as for ``topic_specs``.
        say: where progress lines go.
        replication_factor: of the topics it creates, instead of the spec file's.
    """
    from kafka import KafkaAdminClient
    from kafka.admin import ConfigResource, ConfigResourceType, NewPartitions, NewTopic

    specs = topic_specs(field_topics, tier_topics, replication_factor=replication_factor)
    bootstrap = client_kwargs.get("bootstrap_servers", "")
    if not isinstance(bootstrap, str):
        bootstrap = ",".join(bootstrap)
    admin = KafkaAdminClient(**client_kwargs, client_id="nudgeflow-provision")
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
        raise ProvisionError(f"provisioning Kafka topics at {bootstrap} failed: {exc}"
                             ) from exc
    finally:
        admin.close()
    for change in changes:
        say(f"  kafka: {change}")
    return changes


def delete_topics(client_kwargs: Mapping[str, Any], prefix: str) -> list[str]:
    """Delete every topic whose name starts with ``prefix``; return the names deleted.

    Tests, drills and benchmarks give each run topics of its own (``it-1a2b-clicks``); they
    delete them when they finish, or a broker that has served many runs holds thousands of
    partitions, starts slowly and runs out of heap.
    """
    from kafka import KafkaAdminClient

    if not prefix:
        raise ValueError("delete_topics needs a non-empty prefix (it would delete every topic)")
    admin = KafkaAdminClient(**client_kwargs, client_id="nudgeflow-provision")
    try:
        names = sorted(t for t in admin.list_topics() if t.startswith(prefix))
        if names:
            admin.delete_topics(names, timeout_ms=60_000)
        return names
    finally:
        admin.close()


def cql_statements(keyspace: str, replication: str = LOCAL_REPLICATION,
                   cql_dir: Path = CQL_DIR) -> list[str]:
    """The CQL statements of ``infra/cql/*.cql`` in file order, placeholders filled in."""
    if not re.fullmatch(r"[a-z][a-z0-9_]{0,47}", keyspace):
        raise ProvisionError(
            f"cassandra_keyspace {keyspace!r} is not a valid keyspace name "
            "(lower-case letters, digits and _, starting with a letter)"
        )
    statements = []
    for path in sorted(cql_dir.glob("*.cql")):
        text = "\n".join(line.split("--", 1)[0] for line in path.read_text().splitlines())
        text = text.replace("{keyspace}", keyspace).replace(
            "{replication}", replication
        )
        statements += [s.strip() for s in text.split(";") if s.strip()]
    return statements


def cassandra_session(hosts: Sequence[str], port: int, username: str = "", password: str = "",
                      keyspace: str | None = None, ssl_ca_file: str = "") -> Any:
    """A cassandra-driver session (the caller shuts down its cluster).

    Args:
        hosts: contact points.
        port: native protocol port.
        username: empty: no authentication.
        password: the user's password.
        keyspace: the session's keyspace; None: none.
        ssl_ca_file: PEM CAs of the nodes' certificates: TLS (``udfs.stores.connections``).
    """
    from udfs.stores.connections import cassandra_cluster

    return cassandra_cluster(hosts, port, username, password, ssl_ca_file).connect(keyspace)


def provision_cassandra(hosts: Sequence[str], port: int, keyspace: str, username: str = "",
                        password: str = "", say: Callable[[str], None] = print,
                        replication: str = LOCAL_REPLICATION, ssl_ca_file: str = "") -> int:
    """Apply the CQL files to ``keyspace``; return the number of statements run.

    ``hosts``, ``port``, ``username``, ``password`` and ``ssl_ca_file`` are those of
    ``cassandra_session``; ``replication`` is the CQL replication map of a keyspace it creates.
    """
    statements = cql_statements(keyspace, replication)
    try:
        session = cassandra_session(hosts, port, username, password, ssl_ca_file=ssl_ca_file)
    except Exception as exc:
        raise ProvisionError(
            f"cannot connect to Cassandra at {','.join(hosts)}:{port} ({exc}); "
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
    say(f"  cassandra: keyspace {keyspace} and {len(statements) - 1} tables ok")
    return len(statements)
