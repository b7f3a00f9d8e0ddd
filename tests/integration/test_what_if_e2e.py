"""`nudgeflow defs what-if` on the stack: 20,000 clicks of history, a candidate segment and two
candidate campaigns. The report's live + candidate side must equal what a live bounded run of the
same definitions over the same events emits (segment changes, triggers by campaign, channel and
tier, suppressions and deferrals by reason, arbitration losses), and the what-if must have
written nothing: no record on the job's output topics, no key in Redis, no row in Cassandra, no
offset committed for the job's consumer group."""

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import redis
from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

from jobs.cli import wiring
from jobs.cli.whatif_report import Window, summarize
from jobs.config import as_flags
from jobs.workload.workload import WorkloadSpec
from schemas.codec import Codec
from tests.integration.kafka_io import read_to_end
from tests.integration.workloads import produce_workload, recent_workload
from udfs.catalog.files import CAMPAIGN_CATALOG_DIR, SEGMENT_CATALOG_DIR

pytestmark = pytest.mark.integration

SPEC = WorkloadSpec(users=800, events=20_000, seed=23)

CANDIDATE_SEGMENT = """\
id: window-shoppers
version: 1
description: Eight product views in a week.
condition:
  feature: {name: events_product_view_7d, op: ">=", value: 8}
"""
CANDIDATE_ON_SEGMENT = """\
kind: campaign
id: window-shopper-push
version: 1
description: A push to users who look a lot.
trigger: {segment_enter: window-shoppers}
channels: [PUSH, IN_APP]
template: window-shopper-v1
expires_after: 2h
priority: {urgency: 0.5, expected_roi: 40, brand_significance: 0.5}
frequency:
  reeligible_after: 3d
"""
# competes with cart-abandonment-email and cart-reminder-push (same cause), and wins
CANDIDATE_RIVAL = """\
kind: campaign
id: cart-rescue-push
version: 1
description: A louder cart reminder.
trigger: {segment_enter: cart-abandoners}
channels: [PUSH]
template: cart-rescue-v1
expires_after: 2h
priority: {urgency: 0.9, expected_roi: 90, brand_significance: 0.6}
frequency:
  reeligible_after: 1d
"""


def _policy_without_audience() -> str:
    """The shipped policy with the audience weight 0.

    The audience factor reads the live segment sizes from Redis: a live run changes them as it
    goes (wall-clock timed re-reads), the what-if is given them once. Without it, both sides are
    functions of the events alone and must agree exactly.
    """
    text = (CAMPAIGN_CATALOG_DIR.parent / "priority-policy.yaml").read_text()
    assert "audience: 0.1," in text
    return text.replace("audience: 0.1,", "audience: 0.0,")


def _catalog(target: Path, extra_segments: dict[str, str], extra_campaigns: dict[str, str]
             ) -> tuple[Path, Path]:
    segments, campaigns = target / "segments", target / "campaigns"
    shutil.copytree(SEGMENT_CATALOG_DIR, segments)
    shutil.copytree(CAMPAIGN_CATALOG_DIR, campaigns)
    (campaigns / "priority-policy.yaml").write_text(_policy_without_audience())
    for folder, extra in ((segments, extra_segments), (campaigns, extra_campaigns)):
        for name, text in extra.items():
            (folder / name).write_text(text)
    return segments, campaigns


def _end_offsets(cfg, topics):
    consumer = KafkaConsumer(**cfg.python_client_kwargs(), group_id=None)
    try:
        ends = {}
        for topic in topics:
            partitions = [TopicPartition(topic, p)
                          for p in consumer.partitions_for_topic(topic) or []]
            assert partitions, f"no topic {topic}"  # an absent topic would prove nothing
            ends[topic] = sum(consumer.end_offsets(partitions).values())
        return ends
    finally:
        consumer.close()


def test_what_if_matches_a_live_run_and_writes_nothing(isolated_cfg, tmp_path):
    cfg = isolated_cfg
    codec = Codec.load()
    users, events = recent_workload(SPEC, f"{cfg.consumer_group}-")
    produce_workload(cfg, users, events, codec)
    first = min(e["event_time"] for e in events)
    last = max(e["event_time"] for e in events)
    # the report starts two hours into the history: the hours before only build state
    start = first + 2 * 3_600_000

    base_segments, base_campaigns = _catalog(tmp_path / "base", {}, {})
    candidates = tmp_path / "candidates"
    candidates.mkdir()
    (candidates / "window-shoppers.yaml").write_text(CANDIDATE_SEGMENT)
    (candidates / "window-shopper-push.yaml").write_text(CANDIDATE_ON_SEGMENT)
    (candidates / "cart-rescue-push.yaml").write_text(CANDIDATE_RIVAL)
    flags = [*as_flags(cfg), "--parallelism", "2",
             # the generator sends a few events minutes late on purpose; here every one counts
             "--allowed-lateness-ms", str(24 * 3_600_000)]

    plot = tmp_path / "what-if.png"
    what_if = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "defs", "what-if", str(candidates),
         "--from", str(start), "--json", "--plot", str(plot), "--keep", str(tmp_path / "runs"),
         "--segments-dir", str(base_segments), "--campaigns-dir", str(base_campaigns), *flags],
        capture_output=True, text=True, timeout=1200)
    assert what_if.returncode == 0, what_if.stderr[-5000:]
    assert "100%" in what_if.stderr  # the progress bar reached the end
    report = json.loads(what_if.stdout)
    assert (report["window"]["from_ms"], report["window"]["to_ms"]) == (start, last)
    assert report["candidates"] == ["cart-rescue-push", "window-shopper-push", "window-shoppers"]
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # nothing written anywhere the live job writes
    outputs = [cfg.segment_changes_topic, cfg.trigger_decisions_topic, cfg.dead_letter_topic,
               cfg.outcomes_topic, cfg.definitions_topic, *cfg.trigger_topics().values()]
    assert _end_offsets(cfg, outputs) == dict.fromkeys(outputs, 0)
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    assert list(client.scan_iter(f"{cfg.redis_key_prefix}:*", count=1000)) == []
    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    try:
        for user in [u["user_id"] for u in users[:50]]:
            assert list(session.execute(
                "SELECT change_id FROM membership_changes WHERE user_id = %s", [user])) == []
    finally:
        session.cluster.shutdown()
    admin = KafkaAdminClient(**cfg.python_client_kwargs())
    try:  # neither the job's group nor the what-if's own ones (<group>-what-if-...) committed
        groups = [g["group_id"] for g in admin.list_groups()
                  if g["group_id"].startswith(cfg.consumer_group)]
        committed = {g: admin.list_group_offsets({g: None}).get(g, {}) for g in groups}
        assert committed == dict.fromkeys(groups, {})
    finally:
        admin.close()

    # the candidates made a difference, and the live side knows nothing of them
    live, cand = report["live"], report["candidate"]
    assert cand["segments"]["window-shoppers"]["enter"] > 0
    assert "window-shoppers" not in live["segments"]
    assert cand["triggers"]["by_campaign"]["window-shopper-push"] > 0
    assert cand["triggers"]["by_campaign"]["cart-rescue-push"] > 0
    assert not {"window-shopper-push", "cart-rescue-push"} & set(live["triggers"]["by_campaign"])
    assert ["cart-abandonment-email", "cart-rescue-push"] in [
        row[:2] for row in report["lost_to_candidates"]]
    assert cand["samples"] and all(s["campaign_id"] in report["candidates"]
                                   for s in cand["samples"])

    # a live bounded run of the same definitions over the same events
    live_segments, live_campaigns = _catalog(
        tmp_path / "live", {"window-shoppers.yaml": CANDIDATE_SEGMENT},
        {"window-shopper-push.yaml": CANDIDATE_ON_SEGMENT,
         "cart-rescue-push.yaml": CANDIDATE_RIVAL})
    run = subprocess.run(
        [sys.executable, "-m", "jobs.cli", "run", "--local", "--bounded",
         "--log", str(tmp_path / "job.log"), "--starting-offsets", "earliest",
         "--checkpoint-interval-ms", "2000", "--segments-dir", str(live_segments),
         "--campaigns-dir", str(live_campaigns), *flags],
        capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout[-3000:] + (tmp_path / "job.log").read_text()[-3000:]
    records = []
    for topic in [cfg.segment_changes_topic, cfg.trigger_decisions_topic,
                  *cfg.trigger_topics().values()]:
        # the bounded run has exited: each topic's end is final
        records += [(name, record) for _, name, record in read_to_end(cfg, topic)]
    live_run = summarize(records, Window(start, last))
    counts = {
        "enter": {s: f["enter"] for s, f in cand["segments"].items() if f["enter"]},
        "exit": {s: f["exit"] for s, f in cand["segments"].items() if f["exit"]},
        "size": {s: f["size_at_end"] for s, f in cand["segments"].items()},
        "triggers": {tuple(r[:3]): r[3] for r in cand["triggers"]["by_campaign_channel_tier"]},
        "decisions": {tuple(r[:3]): r[3] for r in cand["decisions"]},
        "losses": {tuple(r[:2]): r[2] for r in cand["arbitration_losses"]},
    }
    assert counts == {
        "enter": dict(live_run.enters), "exit": dict(live_run.exits),
        "size": {s: sizes[-1] for s, sizes in live_run.sizes.items()},
        "triggers": dict(live_run.triggers), "decisions": dict(live_run.decisions),
        "losses": dict(live_run.losses),
    }
