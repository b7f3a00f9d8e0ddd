"""The local stack itself: every server answers a real request, `up` again changes nothing,
provisioning is idempotent and produced the topics and tables the job needs."""

import uuid

import pytest
import redis

from infra import stack
from infra.provision import topic_specs
from jobs.cli import wiring
from jobs.config import load_config

pytestmark = pytest.mark.integration


def test_every_server_is_ready(local_stack):
    rows = stack.status(local_stack)
    assert {r.name: r.state for r in rows} == {
        "kafka": "ready", "cassandra": "ready", "redis": "ready", "prometheus": "ready",
        "registry": "ready",
        "flink-jobmanager": "ready", "flink-taskmanager": "ready",
    }


def test_second_up_changes_nothing(local_stack):
    servers = stack.default_servers()
    before = {s.name: stack.running_pid(s, local_stack) for s in servers}
    messages = []
    stack.up(local_stack, servers, say=messages.append)
    after = {s.name: stack.running_pid(s, local_stack) for s in servers}
    assert before == after
    assert all("already running" in m for m in messages)


def test_provisioning_is_idempotent_and_complete(local_stack):
    from kafka import KafkaAdminClient

    cfg = load_config(env={})
    assert wiring.provision_topics(cfg, say=lambda _: None) == []  # nothing left to change
    admin = KafkaAdminClient(**cfg.python_client_kwargs())
    try:
        existing = set(admin.list_topics())
        described = {d["name"]: len(d["partitions"]) for d in admin.describe_topics(
            [spec.name for spec in topic_specs(cfg.topic_fields(), cfg.trigger_topics())])}
    finally:
        admin.close()
    for spec in topic_specs(cfg.topic_fields(), cfg.trigger_topics()):
        assert spec.name in existing
        assert described[spec.name] == spec.partitions

    wiring.provision_cassandra(cfg, say=lambda _: None)
    session = wiring.cassandra_session(cfg)
    try:
        tables = {row.table_name for row in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s",
            [cfg.cassandra_keyspace])}
        assert {"membership_by_user", "members_by_segment", "membership_changes"} <= tables
        user = f"it-{uuid.uuid4().hex[:8]}"
        session.execute(
            f"INSERT INTO {cfg.cassandra_keyspace}.membership_by_user "
            "(user_id, segment_id, definition_version) VALUES (%s, %s, %s)", [user, "s", 1])
        row = session.execute(
            f"SELECT definition_version FROM {cfg.cassandra_keyspace}.membership_by_user "
            "WHERE user_id = %s", [user]).one()
        assert row.definition_version == 1
    finally:
        session.cluster.shutdown()


def test_redis_round_trip(local_stack):
    client = redis.Redis.from_url(load_config(env={}).redis_url)
    key = f"it:{uuid.uuid4().hex}"
    client.sadd(key, "segment-a", "segment-b")
    client.expire(key, 60)
    assert client.smembers(key) == {b"segment-a", b"segment-b"}
    assert 0 < client.ttl(key) <= 60
