"""Tests for infra.provision's pure parts: the topic specs and the CQL statements.

No Kafka and no Cassandra: only ``topic_specs`` and ``cql_statements`` are exercised, against the
real ``infra/topics.yaml`` and ``infra/cql/*.cql`` and against malformed copies in tmp_path, with
the plain values a configuration gives them.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from infra.provision import (
    LOCAL_REPLICATION,
    TOPICS_FILE,
    ProvisionError,
    TopicSpec,
    cql_statements,
    topic_specs,
)
from jobs.config import ConfigError, NudgeflowConfig, load_config, replace


def specs_of(cfg: NudgeflowConfig, path: Path = TOPICS_FILE) -> list[TopicSpec]:
    """The spec file's topics named by ``cfg`` (what ``jobs.cli.wiring`` passes)."""
    return topic_specs(cfg.topic_fields(), cfg.trigger_topics(), path)


@pytest.fixture(scope="module")
def specs() -> dict[str, TopicSpec]:
    listed = specs_of(load_config(env={}))
    by_name = {s.name: s for s in listed}
    assert len(by_name) == len(listed), "a topic is listed twice"
    return by_name


# --- topics -------------------------------------------------------------------------------------


def test_every_configured_topic_is_specified(specs: dict[str, TopicSpec]) -> None:
    cfg = load_config(env={})
    expected = {
        cfg.clicks_topic, cfg.user_metadata_topic, cfg.definitions_topic,
        cfg.segment_changes_topic, cfg.dead_letter_topic, cfg.trigger_decisions_topic,
        cfg.outcomes_topic, cfg.backfill_topic,
        *(cfg.trigger_topic(t) for t in ("P0", "P1", "P2", "P3")),
    }
    assert set(specs) == expected
    assert set(specs) == {
        "clicks", "user-metadata", "definitions", "segment-changes",
        "triggers-p0", "triggers-p1", "triggers-p2", "triggers-p3", "trigger-decisions",
        "dead-letter", "outcomes", "backfill-requests",
    }


def test_topic_field_names_cover_every_topic_field(specs: dict[str, TopicSpec]) -> None:
    cfg = load_config(env={})
    topic_fields = [n for n in vars(cfg) if n.endswith("_topic")]
    assert {getattr(cfg, n) for n in topic_fields} <= set(specs)


def test_clicks_spec(specs: dict[str, TopicSpec]) -> None:
    assert specs["clicks"] == TopicSpec(
        "clicks", 4, 1, {"retention.ms": "604800000", "message.timestamp.type": "LogAppendTime"}
    )


def test_compacted_topics(specs: dict[str, TopicSpec]) -> None:
    assert specs["user-metadata"].config["cleanup.policy"] == "compact"
    assert specs["user-metadata"].config["min.compaction.lag.ms"] == "60000"
    assert specs["user-metadata"].partitions == 4
    assert specs["definitions"] == TopicSpec("definitions", 1, 1, {"cleanup.policy": "compact"})


def test_other_topics(specs: dict[str, TopicSpec]) -> None:
    assert specs["segment-changes"].partitions == 4
    assert specs["dead-letter"].partitions == 1
    assert specs["dead-letter"].config == {"retention.ms": "1209600000"}
    assert specs["outcomes"].config == {"retention.ms": "2592000000"}
    assert specs["triggers-p0"] == TopicSpec("triggers-p0", 4, 1, {"retention.ms": "86400000"})
    assert specs["triggers-p3"].config == {"retention.ms": "259200000"}
    # config values are strings, whatever YAML made of them
    for spec in specs.values():
        assert all(isinstance(v, str) for v in spec.config.values())
        assert spec.replication_factor == 1


def test_topic_names_follow_the_config() -> None:
    cfg = load_config(env={}, overrides={"clicks_topic": "x-clicks",
                                         "trigger_topic_prefix": "prod.triggers."})
    names = {s.name: s for s in specs_of(cfg)}
    assert "clicks" not in names
    assert names["x-clicks"].partitions == 4
    assert names["x-clicks"].config["message.timestamp.type"] == "LogAppendTime"
    assert {"prod.triggers.p0", "prod.triggers.p3"} <= set(names)


def _spec_file(tmp_path: Path, topics: str, defaults: str = "") -> Path:
    path = tmp_path / "topics.yaml"
    path.write_text(f"{defaults}topics:\n{topics}")
    return path


def test_entry_without_field_or_tier(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "  - field: clicks_topic\n    partitions: 1\n"
                                "  - partitions: 2\n")
    with pytest.raises(ProvisionError) as info:
        specs_of(load_config(env={}), path)
    message = str(info.value)
    assert f"{path}: topics[1]" in message
    assert "needs `field: <config field>` or `tier: P0..P3`" in message


@pytest.mark.parametrize("partitions", ["0", "-1", "'4'", "2.5", "null"])
def test_bad_partitions(tmp_path: Path, partitions: str) -> None:
    path = _spec_file(tmp_path, "  - field: clicks_topic\n    partitions: 1\n"
                                "  - tier: P0\n    partitions: 1\n"
                                f"  - field: outcomes_topic\n    partitions: {partitions}\n")
    with pytest.raises(ProvisionError) as info:
        specs_of(load_config(env={}), path)
    assert str(info.value) == f"{path}: topics[2]: partitions must be a positive integer"


def test_missing_partitions(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "  - tier: P1\n")
    with pytest.raises(ProvisionError, match=r"topics\[0\]: partitions must be"):
        specs_of(load_config(env={}), path)


@pytest.mark.parametrize("field_name", ["kafka_bootstrap", "no_such_topic"])
def test_field_that_is_not_a_topic_field(tmp_path: Path, field_name: str) -> None:
    path = _spec_file(tmp_path, f"  - field: {field_name}\n    partitions: 1\n")
    with pytest.raises(ProvisionError) as info:
        specs_of(load_config(env={}), path)
    assert f"topics[0]: field {field_name!r} is not a topic field" in str(info.value)


def test_tier_that_is_not_a_tier(tmp_path: Path) -> None:
    path = _spec_file(tmp_path, "  - tier: P9\n    partitions: 1\n")
    with pytest.raises(ProvisionError) as info:
        specs_of(load_config(env={}), path)
    assert "topics[0]: tier 'P9' is not one of P0, P1, P2, P3" in str(info.value)


def test_replication_factor_default_and_override(tmp_path: Path) -> None:
    path = _spec_file(
        tmp_path,
        "  - field: clicks_topic\n    partitions: 2\n"
        "  - field: outcomes_topic\n    partitions: 3\n    replication_factor: 1\n",
        defaults="defaults:\n  replication_factor: 3\n",
    )
    specs = specs_of(load_config(env={}), path)
    assert specs == [TopicSpec("clicks", 2, 3, {}), TopicSpec("outcomes", 3, 1, {})]


# --- CQL ----------------------------------------------------------------------------------------


def test_cql_statements_fill_keyspace_and_replication() -> None:
    statements = cql_statements(load_config(env={}).cassandra_keyspace)
    assert len(statements) == 5
    first = statements[0]
    assert first.startswith("CREATE KEYSPACE IF NOT EXISTS nudgeflow")
    assert f"WITH replication = {LOCAL_REPLICATION}" in first
    assert first.endswith("AND durable_writes = true")
    tables = [s.split()[5] for s in statements[1:]]
    assert all(s.startswith("CREATE TABLE IF NOT EXISTS ") for s in statements[1:])
    assert tables == ["nudgeflow.membership_by_user", "nudgeflow.members_by_segment",
                      "nudgeflow.membership_changes", "nudgeflow.redis_caches"]
    for statement in statements:
        assert "--" not in statement  # comments stripped
        assert "{" + "keyspace}" not in statement
        assert "{replication}" not in statement
        assert not statement.endswith(";")
    assert "PRIMARY KEY ((segment_id, bucket), user_id)" in statements[2]
    assert "default_time_to_live = 7776000" in statements[3]


def test_cql_custom_keyspace_and_replication() -> None:
    cfg = replace(load_config(env={}), cassandra_keyspace="nf_prod")
    replication = "{'class': 'NetworkTopologyStrategy', 'dc1': 3}"
    statements = cql_statements(cfg.cassandra_keyspace, replication=replication)
    assert statements[0].startswith("CREATE KEYSPACE IF NOT EXISTS nf_prod\n")
    assert f"WITH replication = {replication}" in statements[0]
    assert all(" nf_prod." in s for s in statements[1:])
    assert not any("nudgeflow" in s for s in statements)


def test_cql_files_in_order_from_a_directory(tmp_path: Path) -> None:
    (tmp_path / "002_b.cql").write_text("CREATE TABLE {keyspace}.b (x int PRIMARY KEY); -- b\n")
    (tmp_path / "001_a.cql").write_text(
        "-- header\nCREATE KEYSPACE {keyspace} WITH replication = {replication};\n\n;"
    )
    (tmp_path / "notes.txt").write_text("CREATE TABLE ignored;")
    keyspace = load_config(env={}).cassandra_keyspace
    statements = cql_statements(keyspace, replication="R", cql_dir=tmp_path)
    assert statements == [
        "CREATE KEYSPACE nudgeflow WITH replication = R",
        "CREATE TABLE nudgeflow.b (x int PRIMARY KEY)",
    ]


@pytest.mark.parametrize(
    "keyspace", ["Nudgeflow", "1nf", "nf-prod", "nf; DROP KEYSPACE x", "", "a" * 49]
)
def test_invalid_keyspace_is_rejected(keyspace: str) -> None:
    cfg = replace(load_config(env={}), cassandra_keyspace=keyspace)
    with pytest.raises(ProvisionError) as info:
        cql_statements(cfg.cassandra_keyspace)
    assert f"cassandra_keyspace {keyspace!r} is not a valid keyspace name" in str(info.value)


def test_longest_valid_keyspace() -> None:
    cfg = replace(load_config(env={}), cassandra_keyspace="a" * 48)
    statements = cql_statements(cfg.cassandra_keyspace)
    assert statements[0].startswith("CREATE KEYSPACE IF NOT EXISTS " + "a" * 48)


def test_a_cluster_sets_the_replication_of_what_it_creates() -> None:
    cfg = load_config(env={"NUDGEFLOW_KAFKA_REPLICATION_FACTOR": "3",
                           "NUDGEFLOW_CASSANDRA_REPLICATION":
                           "{'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': '2'}"})
    specs = topic_specs(cfg.topic_fields(), cfg.trigger_topics(),
                        replication_factor=cfg.kafka_replication_factor)
    assert {s.replication_factor for s in specs} == {3}
    local = topic_specs(cfg.topic_fields(), cfg.trigger_topics())
    assert {s.replication_factor for s in local} == {1}
    statements = cql_statements(cfg.cassandra_keyspace, cfg.cassandra_replication)
    assert "WITH replication = {'class': 'NetworkTopologyStrategy', 'dc1': 3, 'dc2': '2'}" \
        in statements[0]


@pytest.mark.parametrize("bad", ["SimpleStrategy", "{'class': 'X'}; DROP KEYSPACE k",
                                 "{'replication_factor': 3}"])
def test_a_replication_that_is_not_a_cql_map_is_refused(bad: str) -> None:
    with pytest.raises(ConfigError, match="is not a CQL replication map"):
        load_config(env={"NUDGEFLOW_CASSANDRA_REPLICATION": bad})
    with pytest.raises(ConfigError, match="kafka_replication_factor must be >= 0"):
        load_config(env={"NUDGEFLOW_KAFKA_REPLICATION_FACTOR": "-1"})
