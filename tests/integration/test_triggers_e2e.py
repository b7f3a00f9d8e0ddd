"""Campaign triggers on the real stack (Kafka, Cassandra, Redis, Flink session cluster):

- a scripted scenario checked to the record on the tier topics and trigger-decisions, read
  committed, with a campaign published through the control topic while the job runs;
- the job's TaskManager killed (kill -9) mid-run: Flink recovers from its checkpoint and no
  trigger is lost or duplicated (exactly-once).
"""

import os
import signal
import time
from collections import Counter
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest
import redis
import yaml

from infra import deploy, stack
from infra.servers.flink import FlinkTaskManager
from jobs.bench.bench import daytime_zone
from jobs.cli import defs
from jobs.config import ISOLATION_FIELDS, replace
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw
from udfs.campaigns.grammar import TIERS

pytestmark = pytest.mark.integration

MIN = 60_000


def _metadata(codec, user, tz, t, **opt_ins):
    """(key, UserMetadata bytes) for produce_raw."""
    return user.encode(), metadata_bytes(codec, user, tz, at=t, **opt_ins)


def submit(cfg):
    fields = (*ISOLATION_FIELDS, "churn_model", "idleness_ms", "max_out_of_orderness_ms",
              "checkpoint_interval_ms", "parallelism", "delivery_guarantee")
    return flink_jobs.submit(cfg, fields=fields)


class TierReaders:
    """Read-committed readers of the four tier topics and trigger-decisions."""

    def __init__(self, cfg, codec):
        self.tiers = {tier: TopicReader(cfg, cfg.trigger_topic(tier), codec) for tier in TIERS}
        self.decisions = TopicReader(cfg, cfg.trigger_decisions_topic, codec)

    def triggers(self):
        """(topic tier, key, TriggerEvent) seen so far."""
        return [(tier, key, record) for tier, reader in self.tiers.items()
                for key, name, record in reader.records if name == "TriggerEvent"]

    def drain(self, seconds):
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for reader in (*self.tiers.values(), self.decisions):
                reader.drain(0.2)

    def wait_until(self, predicate, timeout_s, what):
        deadline = time.monotonic() + timeout_s
        while not predicate(self.triggers()):
            if time.monotonic() > deadline:
                seen = [(t, r["campaign_id"], r["user_id"]) for t, _, r in self.triggers()]
                decided = Counter((r["outcome"], r["reason_code"])
                                  for _, name, r in self.decisions.records
                                  if name == "TriggerDecision")
                raise AssertionError(f"timed out waiting for {what}; saw {len(seen)}: "
                                     f"{seen[:20]}; decisions so far: {dict(decided)}")
            self.drain(0.5)

    def close(self):
        for reader in (*self.tiers.values(), self.decisions):
            reader.close()


@pytest.fixture
def trigger_cfg(isolated_cfg):
    # scoring off: whether a short scripted history crosses the churn model's band is the
    # model's business, and a churn trigger would compete with the scripted ones
    return replace(isolated_cfg, idleness_ms=500, max_out_of_orderness_ms=2000,
                   churn_model="off", checkpoint_interval_ms=1000)


def wait_for_applied(cfg, definition_id, version, timeout_s=60):
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    key = defs.applied_definitions_key(cfg)
    deadline = time.monotonic() + timeout_s
    while not (client.hget(key, definition_id) or "").startswith(f"v{version} "):
        assert time.monotonic() < deadline, f"the job never applied {definition_id} v{version}"
        time.sleep(0.5)


def test_scripted_scenario_lands_on_the_right_tier_topics(trigger_cfg, tmp_path):
    cfg = trigger_cfg
    codec = Codec.load()
    run = cfg.consumer_group
    ann, ben, cal, zed = (f"{run}-{n}" for n in ("ann", "ben", "cal", "zed"))
    t0 = (int(time.time() * 1000) // MIN - 120) * MIN
    zone = daytime_zone(t0, t0 + 45 * MIN)
    produce_raw(cfg, cfg.user_metadata_topic, [
        _metadata(codec, ann, zone, t0, email=True, sms=True, push=True),
        _metadata(codec, ben, zone, t0, push=True),
        _metadata(codec, cal, zone, t0, push=True),
    ])
    readers = TierReaders(cfg, codec)
    job_id = submit(cfg)
    try:
        # a P0 campaign published while the job runs: a flash sale on toys, valid today
        flash = f"flash-{run}"
        now = datetime.fromtimestamp(time.time(), tz=ZoneInfo("UTC"))
        start = datetime.fromtimestamp(t0 / 1000, tz=ZoneInfo("UTC"))
        (tmp_path / "flash.yaml").write_text(yaml.safe_dump({
            "kind": "campaign", "id": flash, "version": 1, "description": "flash sale",
            "trigger": {"event": {"type": "PRODUCT_VIEW", "where": {"category": "toys"}}},
            "channels": ["PUSH"], "template": "flash-toys",
            "payload": {"product_id": "{event.product_id}"},
            # from the day of t0 (two hours back: the day before, just after midnight UTC)
            "valid_from": f"{start.date().isoformat()}T00:00:00Z",
            "valid_until": f"{now.date().isoformat()}T23:59:59Z",
            "expires_after": "3h",
            "priority": {"urgency": 1.0, "expected_roi": 100, "brand_significance": 1.0},
            "quiet_hours": "bypass"}))
        published, _ = defs.publish(cfg, [str(tmp_path / "flash.yaml")], "test",
                                    int(time.time() * 1000), say=lambda _: None)
        assert published == 1
        wait_for_applied(cfg, flash, 1)
        produce_raw(cfg, cfg.clicks_topic, [
            (ann.encode(), click_bytes(codec, f"{ann}-1", ann, "ADD_TO_CART", t0, **CART)),
            (ann.encode(), click_bytes(codec, f"{ann}-1", ann, "ADD_TO_CART", t0, **CART)),  # again
            (ben.encode(), click_bytes(codec, f"{ben}-1", ben, "ADD_TO_CART", t0, **CART)),
            (cal.encode(), click_bytes(codec, f"{cal}-1", cal, "PRODUCT_VIEW", t0 + MIN,
                                       product_id="toy-7", category="toys")),
        ])
        time.sleep(2)
        # zed moves event time past the 30-minute abandonment window of ann and ben
        produce_raw(cfg, cfg.clicks_topic, [
            (zed.encode(), click_bytes(codec, f"{zed}-1", zed, "PAGE_VIEW", t0 + 45 * MIN))])
        readers.wait_until(lambda seen: len(seen) >= 4, 120, "four triggers")
        readers.drain(6)  # exactly-once: anything extra would show within a checkpoint or two
        exported = prometheus_lines(job_id)
    finally:
        flink_jobs.cancel(cfg, job_id)
        readers.close()

    got = sorted((tier, r["user_id"], r["campaign_id"], r["channel"])
                 for tier, _, r in readers.triggers())
    assert got == sorted([
        ("P0", cal, flash, "PUSH"),
        ("P1", ann, "high-value-cart-sms", "SMS"),
        ("P1", ann, "cart-abandonment-email", "EMAIL"),
        ("P2", ben, "cart-reminder-push", "PUSH"),
    ])
    for tier, key, r in readers.triggers():
        assert r["tier"] == tier and key == r["user_id"].encode()
        assert r["ingest_time"] <= r["emit_time"]
    flash_trigger = next(r for _, _, r in readers.triggers() if r["campaign_id"] == flash)
    assert flash_trigger["payload"] == {"product_id": "toy-7"}
    assert flash_trigger["explanation"]["definition_versions"][flash] == 1
    assert flash_trigger["cause_event_id"] == f"{cal}-1"

    # the Prometheus reporter of the session cluster exports the engine's trigger metrics
    by_tier = {line.split('tier="')[1].split('"')[0]: float(line.rsplit(" ", 1)[1])
               for line in exported if "_tier_triggers{" in line}
    assert by_tier.get("P0") == 1.0 and by_tier.get("P1") == 2.0 and by_tier.get("P2") == 1.0
    assert any("_reason_triggers_suppressed{" in line and 'reason="NO_CONSENT"' in line
               for line in exported)
    # ... and leaves out what its filter names (REPORTER_EXCLUDES), keeping Flink's own
    assert any(line.startswith("flink_taskmanager_job_task_operator_numRecordsIn{")
               for line in exported)
    left_out = ("_KafkaConsumer_", "_KafkaProducer_", "_Shuffle_", "_split_watermark_")
    assert not [line for line in exported if any(word in line.split("{")[0] for word in left_out)]

    decisions = sorted((r["user_id"], r["campaign_id"], r["outcome"], r["reason_code"])
                       for _, name, r in readers.decisions.records if name == "TriggerDecision")
    assert decisions == sorted([
        (ann, "cart-reminder-push", "SUPPRESSED", "LOST_ARBITRATION"),
        (ben, "high-value-cart-sms", "SUPPRESSED", "NO_CONSENT"),
        (ben, "cart-abandonment-email", "SUPPRESSED", "NO_CONSENT"),
    ])


def test_killing_the_taskmanager_loses_and_duplicates_no_trigger(trigger_cfg, local_stack):
    cfg = trigger_cfg
    codec = Codec.load()
    run = cfg.consumer_group
    users = [f"{run}-u{i:04d}" for i in range(1500)]
    t0 = (int(time.time() * 1000) // MIN - 30) * MIN
    zone = daytime_zone(t0)
    produce_raw(cfg, cfg.user_metadata_topic,
                [_metadata(codec, u, zone, t0, sms=True) for u in users])
    readers = TierReaders(cfg, codec)
    job_id = submit(cfg)
    tm = FlinkTaskManager()
    try:
        # every user's add-to-cart over $100 must give exactly one high-value-cart-sms trigger
        batches = [users[i:i + 150] for i in range(0, len(users), 150)]
        killed = False
        for n, batch in enumerate(batches):
            produce_raw(cfg, cfg.clicks_topic, [
                (u.encode(),
                 click_bytes(codec, f"{u}-cart", u, "ADD_TO_CART", t0 + n * 1000, **CART))
                for u in batch])
            if n == 3:
                readers.wait_until(lambda seen: len(seen) > 0, 90, "the first triggers")
                pid = stack.running_pid(tm, local_stack)
                assert pid is not None
                os.kill(pid, signal.SIGKILL)
                killed = True
                time.sleep(1)
                stack.up(local_stack, [tm])  # a fresh TaskManager; the job restores onto it
            time.sleep(0.5)
        assert killed
        # a later click moves event time on: users whose click was processed before their
        # metadata (two sources race at start) waited AWAITING_METADATA; now they are decided
        clock = f"{run}-clock"
        produce_raw(cfg, cfg.clicks_topic, [(clock.encode(), click_bytes(
            codec, f"{clock}-1", clock, "PAGE_VIEW", t0 + 5 * MIN))])
        readers.wait_until(lambda seen: len(seen) >= len(users), 240, "a trigger per user")
        readers.drain(6)
        failovers = _exception_history(cfg, job_id)
    finally:
        flink_jobs.cancel(cfg, job_id)
        readers.close()

    triggers = readers.triggers()
    ids = [r["trigger_id"] for _, _, r in triggers]
    assert len(ids) == len(set(ids)), "a trigger was delivered twice"
    assert sorted(r["user_id"] for _, _, r in triggers) == sorted(users)
    assert {(tier, r["campaign_id"]) for tier, _, r in triggers} == {("P1", "high-value-cart-sms")}
    assert failovers, "the job never failed over: the kill did not hit it"


def prometheus_lines(job_id):
    """The metric lines of one job, scraped from every Flink process's Prometheus endpoint."""
    import urllib.error
    import urllib.request

    from infra.servers.flink import PROMETHEUS_PORTS

    first, last = (int(p) for p in PROMETHEUS_PORTS.split("-"))
    lines = []
    for port in range(first, last + 1):
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:  # noqa: S310
                text = resp.read().decode()
        except (urllib.error.URLError, OSError):
            continue
        lines += [line for line in text.splitlines() if f'job_id="{job_id}"' in line]
    return lines


def _exception_history(cfg, job_id):
    history = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}/exceptions")
    return history.get("exceptionHistory", {}).get("entries", [])
