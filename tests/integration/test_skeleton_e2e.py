"""The walking skeleton end to end on the real stack: generated clicks through Kafka, the job
(embedded MiniCluster, and submitted to the stack's Flink cluster), exact per-user counts and
dead letters back from Kafka, read committed."""

import dataclasses
import re
import subprocess
import sys
from collections import Counter, defaultdict

import pytest

from infra import deploy
from jobs import generate
from jobs.workload import WorkloadSpec, generate_events, malformed_records
from schemas.codec import Codec
from tests.integration.kafka_io import produce_raw, read_topic

pytestmark = pytest.mark.integration

BASE_SPEC = WorkloadSpec(users=40, events=1000, seed=11)
# event times just before now, as live traffic would have
SPEC = dataclasses.replace(BASE_SPEC, start_ms=generate.recent_start_ms(BASE_SPEC))


def _load_workload(cfg):
    """1,000 generated clicks, then malformed records; returns (events, malformed)."""
    summary = generate.produce(SPEC, cfg.kafka_bootstrap, clicks_topic=cfg.clicks_topic,
                               metadata_topic=cfg.user_metadata_topic, progress=False)
    assert summary.events == SPEC.events
    codec = Codec.load()
    events = list(generate_events(SPEC))
    bad = malformed_records(seed=5, n=5, samples=[codec.encode("ClickEvent", events[0])])
    produce_raw(cfg, cfg.clicks_topic, [(b"broken", value) for value in bad])
    return events, bad


def _run_args(cfg):
    return ["run", "--bounded", "--clicks-topic", cfg.clicks_topic,
            "--activity-counts-topic", cfg.activity_counts_topic,
            "--dead-letter-topic", cfg.dead_letter_topic,
            "--consumer-group", cfg.consumer_group,
            "--transactional-id-prefix", cfg.transactional_id_prefix,
            "--checkpoint-interval-ms", str(cfg.checkpoint_interval_ms),
            "--parallelism", str(cfg.parallelism), "--starting-offsets", "earliest"]


def _check_outputs(cfg, events, bad):
    counts = read_topic(cfg, cfg.activity_counts_topic, expected=len(events))
    per_user = defaultdict(list)
    for key, name, record in counts:
        assert name == "UserActivityCount"
        assert key == record["user_id"].encode()
        per_user[record["user_id"]].append(record["event_count"])
    sent = Counter(e["user_id"] for e in events)
    # exactly one record per event, counts 1..n per user: nothing lost, nothing doubled
    assert {u: sorted(c) for u, c in per_user.items()} == {
        u: list(range(1, n + 1)) for u, n in sent.items()
    }

    letters = read_topic(cfg, cfg.dead_letter_topic, expected=len(bad))
    assert sorted(record["raw"] for _, _, record in letters) == sorted(bad)
    for key, name, record in letters:
        assert name == "DeadLetter" and key == b"broken"
        assert record["source_topic"] == cfg.clicks_topic
        assert record["offset"] is not None and record["partition"] is not None
        assert record["reason_code"] in {"INVALID_AVRO", "UNKNOWN_SCHEMA"}
        assert record["reason"]


def test_local_run_counts_exactly_and_dead_letters_bad_records(isolated_cfg, tmp_path):
    events, bad = _load_workload(isolated_cfg)
    cmd = [sys.executable, "-m", "jobs.cli", *_run_args(isolated_cfg), "--local",
           "--log", str(tmp_path / "job.log")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "job.log").read_text()
    assert "records out" in proc.stdout  # the live summary was shown
    _check_outputs(isolated_cfg, events, bad)


def test_cluster_run_counts_exactly_and_dead_letters_bad_records(isolated_cfg):
    events, bad = _load_workload(isolated_cfg)
    cmd = [sys.executable, "-m", "jobs.cli", *_run_args(isolated_cfg), "--no-watch"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"job ([0-9a-f]{32}) submitted", proc.stdout).group(1)
    assert deploy.wait_for_state(isolated_cfg.flink_rest_url, job_id, {"FINISHED"}, 300) == \
        "FINISHED"
    _check_outputs(isolated_cfg, events, bad)

