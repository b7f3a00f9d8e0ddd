"""A bounded local run (`nudgeflow run --local --bounded`) over 1,000 generated clicks plus
malformed records: it finishes, nothing is lost or doubled, and Kafka, Cassandra and Redis agree.

At the end of a bounded input Flink advances event time to the end of time, so every timer
fires: users go inactive, then their state expires and they leave every segment. The run
therefore ends with every ENTER matched by an EXIT, and timers that fire far ahead of the wall
clock must still be written (Kafka refuses record timestamps more than an hour ahead)."""

import subprocess
import sys
from collections import Counter

import pytest
import redis

from jobs.cli import wiring
from jobs.config import as_flags
from jobs.workload.workload import WorkloadSpec, malformed_records
from schemas.codec import Codec
from tests.integration.kafka_io import produce_raw, read_topic
from tests.integration.workloads import produce_workload, recent_workload
from udfs.stores import keys

pytestmark = pytest.mark.integration

SPEC = WorkloadSpec(users=40, events=1000, seed=11)


def test_bounded_local_run_balances_and_stores_agree(isolated_cfg, tmp_path):
    cfg = isolated_cfg
    codec = Codec.load()
    # this run's own user ids: Cassandra and Redis are shared with other tests and runs
    users, events = recent_workload(SPEC, f"{cfg.consumer_group}-")
    produce_workload(cfg, users, events, codec)
    bad = malformed_records(seed=5, n=5, samples=[codec.encode("ClickEvent", events[0])])
    produce_raw(cfg, cfg.clicks_topic, [(b"broken", value) for value in bad])

    cmd = [sys.executable, "-m", "jobs.cli", "run", "--local", "--bounded",
           "--log", str(tmp_path / "job.log"), "--starting-offsets", "earliest",
           "--parallelism", "2", "--checkpoint-interval-ms", "2000",
           # the generator sends a few events minutes late on purpose; here every one counts
           # (lateness has its own test in test_engine_e2e)
           "--allowed-lateness-ms", str(24 * 3_600_000), *as_flags(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "job.log").read_text()
    assert "segment changes" in proc.stdout  # the live summary was shown

    letters = read_topic(cfg, cfg.dead_letter_topic, expected=len(bad), timeout_s=30)
    assert sorted(record["raw"] for _, _, record in letters) == sorted(bad), \
        [(r["reason_code"], r["reason"][:200]) for _, _, r in letters if r["raw"] not in bad][:5]

    changes = [r for _, name, r in read_topic(cfg, cfg.segment_changes_topic, expected=1,
                                              timeout_s=30) if name == "SegmentChange"]
    assert changes, "the generated traffic puts users in segments"
    assert len({c["change_id"] for c in changes}) == len(changes)  # nothing twice
    balance = Counter()
    for c in changes:
        balance[(c["user_id"], c["segment_id"])] += 1 if c["change"] == "ENTER" else -1
    assert set(balance.values()) == {0}  # every ENTER has its EXIT, none without one
    members = {c["user_id"] for c in changes}
    # this run's users only; a user with metadata and no click can still enter a segment on
    # profile attributes alone (which users get no click depends on the start's time of day)
    assert members <= {u["user_id"] for u in users}
    assert members & {e["user_id"] for e in events}

    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        for user in members:
            rows = list(session.execute(
                "SELECT segment_id FROM membership_by_user WHERE user_id = %s", [user]))
            assert rows == []
            history = list(session.execute(
                "SELECT change_id FROM membership_changes WHERE user_id = %s", [user]))
            assert sorted(r.change_id for r in history) == sorted(
                c["change_id"] for c in changes if c["user_id"] == user)
            assert client.smembers(keys.user_segments(cfg.redis_key_prefix, user)) == set()
    finally:
        session.cluster.shutdown()
