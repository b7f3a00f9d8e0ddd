"""`nudgeflow segments sizes` and `segments members` on the real stack: what the engine's store
writer put in Redis and Cassandra, read back by the commands; a rebuild of Redis keeps both."""

import calendar
import subprocess
import sys
import time
import uuid

import pytest

from jobs.cli import wiring
from jobs.config import as_flags, load_config, replace
from tests.drills import runner
from udfs.stores import rebuild
from udfs.stores.membership import CassandraRedisStore

pytestmark = pytest.mark.integration


@pytest.fixture
def cfg(local_stack):
    run = uuid.uuid4().hex[:8]
    cfg = replace(load_config(env={}), cassandra_keyspace=f"it_{run}",
                  redis_key_prefix=f"it-{run}")
    wiring.provision_cassandra(cfg, say=lambda _: None)
    yield cfg
    runner.drop_keyspace(cfg)


def _change(user, segment, change="ENTER", n=0):
    return {"change_id": f"{user}-{segment}-{change}-{n}", "user_id": user,
            "segment_id": segment, "change": change, "definition_version": 2,
            "event_time": 1_800_000_000_000 + n, "reason": "test", "churn_score": None,
            "model_version": None}


def _nudgeflow(cfg, *args):
    flags = as_flags(cfg, ("cassandra_keyspace", "redis_key_prefix"))
    proc = subprocess.run([sys.executable, "-m", "jobs.cli", "segments", *args, *flags],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout.splitlines()


def test_sizes_and_members_show_what_the_engine_wrote(cfg):
    writer = CassandraRedisStore((cfg.cassandra_hosts,), cfg.cassandra_port,
                                 cfg.cassandra_keyspace, cfg.redis_url, cfg.redis_key_prefix)()
    before_ms = int(time.time() * 1000)
    try:
        users = [f"user-{i:02d}" for i in range(12)]
        assert writer.write_many([_change(u, "vip", n=i) for i, u in enumerate(users)]) == []
        assert writer.write_many([_change("user-00", "vip", "EXIT", 99),
                                  _change("user-00", "lapsed", n=100)]) == []
    finally:
        writer.close()

    lines = _nudgeflow(cfg, "sizes")
    assert lines[0].split() == ["segment", "members", "last", "updated"]
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert (rows["lapsed"][1], rows["vip"][1]) == ("1", "11")
    # the time each size last moved: now-ish, in UTC
    stamp = " ".join(rows["vip"][2:4])
    written = calendar.timegm(time.strptime(stamp, "%Y-%m-%d %H:%M:%S"))
    assert before_ms / 1000 - 5 <= written <= time.time() + 5

    lines = _nudgeflow(cfg, "members", "vip", "--limit", "50")
    assert [line.split()[0] for line in lines[1:-1]] == users[1:]  # user-00 left
    assert lines[-1] == "11 of 11 member(s) of vip"
    assert all(line.split()[1] == "v2" for line in lines[1:-1])
    lines = _nudgeflow(cfg, "members", "vip", "--limit", "5")
    assert len(lines) == 1 + 5 + 1
    assert lines[-1] == "5 of 11 member(s) of vip (the first 5 found; --limit N for more)"

    # Redis rebuilt from Cassandra: the same sizes, stamped with the rebuild's time
    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    client = wiring.redis_client(cfg)
    try:
        rebuild.ensure_rebuilt(session, cfg.cassandra_keyspace, client, cfg.redis_key_prefix,
                               force=True, say=lambda _: None)
    finally:
        session.cluster.shutdown()
    rows = {line.split()[0]: line.split() for line in _nudgeflow(cfg, "sizes")[1:]}
    assert (rows["lapsed"][1], rows["vip"][1]) == ("1", "11")
    assert "unknown" not in rows["vip"]
