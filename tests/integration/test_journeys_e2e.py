"""The three shipped journeys on the real stack: scripted users' clicks, metadata and outcomes
go through Kafka into a bounded local run of the job (`nudgeflow run --local --bounded
--journeys-dir udfs/catalog/journeys`); the sends read back from the tier topics (read
committed) are exactly the documented sequences, and exactly what the pure engine (the
stand-in for the Flink adapter, tests/differential/sim.py) gives for the same records.

Event times lie a few days back, so the welcome drip's 48 hours and the cart chain's 28 run
out inside the history; at the end of a bounded input Flink moves event time to the end of
time, so users then fall inactive for 30 days and the re-engagement journey runs to its end
(email, in-app after 7 days, the audience sync after 14).

And the job on the stack's Flink cluster, exactly-once, survives a TaskManager killed while
every instance waits: no send lost or duplicated."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from infra import stack
from infra.servers.flink import FlinkTaskManager
from jobs.bench.bench import daytime_zone
from jobs.config import ISOLATION_FIELDS, as_flags, replace
from schemas.codec import Codec
from tests.builders import CART, click, click_bytes, metadata, metadata_bytes
from tests.differential.sim import Simulator
from tests.integration import flink_jobs
from tests.integration.kafka_io import produce_raw, read_topic
from tests.integration.test_triggers_e2e import TierReaders, _exception_history
from udfs.campaigns.arbitration import trigger_id
from udfs.campaigns.grammar import TIERS
from udfs.catalog.files import (
    JOURNEY_CATALOG_DIR,
    POLICY_FILE,
    RATES_FILE,
    SEGMENT_CATALOG_DIR,
    load_files,
)
from udfs.catalog.registries import Registries
from udfs.engine import Rules

pytestmark = pytest.mark.integration

MIN, HOUR, DAY = 60_000, 3_600_000, 86_400_000
CONSENT = {"email": True, "sms": True, "push": True, "in_app": True, "paid_social": True}


def script(prefix: str, d0: int) -> tuple[list[dict], list[dict], list[dict]]:
    """(metadata, clicks, outcomes) of the scripted users; ``d0`` is 10:00 UTC four days ago.

    wendy and walt sign up at d0 (welcome drip; wendy clicks the tip), carl, cora and cole
    abandon a cart at d0 + 1 day (cora opens the email, cole buys two hours later), rita
    browses at d0 and is never seen again (re-engagement after 30 days).
    """
    def user(name: str) -> str:
        return f"{prefix}{name}"

    metas = [metadata(user(n), at=d0 + DAY, signup_time=d0, **CONSENT)
             for n in ("wendy", "walt")]
    metas += [metadata(user(n), at=d0, **CONSENT) for n in ("carl", "cora", "cole", "rita")]
    cart_at = d0 + DAY
    clicks = [click(f"{user('rita')}-1", user("rita"), "PAGE_VIEW", d0)]
    clicks += [click(f"{user(n)}-add", user(n), "ADD_TO_CART", cart_at, **CART)
               for n in ("carl", "cora", "cole")]
    clicks.append(click(f"{user('cole')}-buy", user("cole"), "PURCHASE", cart_at + 2 * HOUR,
                        order_id="o-1", price=150.0, quantity=1, currency="USD"))
    clicks.sort(key=lambda c: c["event_time"])

    def outcome(name: str, journey: str, node: str, kind: str, at: int) -> dict:
        return {"outcome_id": f"{user(name)}-{node}-{kind}",
                "trigger_id": trigger_id(user(name), journey, node, "journey v1 instance 1"),
                "user_id": user(name), "campaign_id": f"{journey}/{node}", "channel": "EMAIL",
                "outcome": kind, "event_time": at, "revenue": None, "currency": None}

    outcomes = [outcome("wendy", "welcome-drip", "tip", "CLICKED", d0 + 25 * HOUR),
                outcome("cora", "cart-abandonment-chain", "email", "OPENED", cart_at + 2 * HOUR)]
    return metas, clicks, outcomes


def oracle(metas: list[dict], clicks: list[dict], outcomes: list[dict]) -> list[dict]:
    """The same records through the pure engine, in event-time order."""
    files = [SEGMENT_CATALOG_DIR, POLICY_FILE, RATES_FILE, JOURNEY_CATALOG_DIR]
    updates = load_files(files, check_references=False).updates(0, "file")
    sim = Simulator(Rules(Registries.from_updates(updates), 90 * DAY), 5_000)
    for record in metas:
        sim.metadata(record)
    inputs = sorted([(c["event_time"], 1, c) for c in clicks]
                    + [(o["event_time"], 2, o) for o in outcomes], key=lambda x: x[:2])
    for _, rank, record in inputs:
        if rank == 1:
            sim.click(record)
        else:
            sim.advance(record["event_time"] - 1)  # as the job: outcome after earlier clicks
            sim.outcome(record)
    sim.finish()
    return sim.triggers


def sends(triggers: list[dict], prefix: str) -> dict[str, list[tuple]]:
    out: dict[str, list[tuple]] = {}
    for t in sorted(triggers, key=lambda t: (t["cause_event_time"], t["campaign_id"])):
        out.setdefault(t["user_id"].removeprefix(prefix), []).append(
            (t["journey_id"], t["node_id"], t["channel"]))
    return out


def test_the_three_journeys_send_their_documented_sequences(isolated_cfg, tmp_path):
    cfg = isolated_cfg
    codec = Codec.load()
    today = time.time_ns() // 1_000_000 // DAY * DAY
    d0 = today - 4 * DAY + 10 * HOUR  # daytime in UTC: no quiet hours move the sends
    prefix = f"{cfg.consumer_group}-"
    metas, clicks, outcomes = script(prefix, d0)
    produce_raw(cfg, cfg.user_metadata_topic,
                [(m["user_id"].encode(), codec.encode("UserMetadata", m)) for m in metas])
    produce_raw(cfg, cfg.clicks_topic,
                [(c["user_id"].encode(), codec.encode("ClickEvent", c)) for c in clicks])
    produce_raw(cfg, cfg.outcomes_topic,
                [(o["user_id"].encode(), codec.encode("CampaignOutcome", o)) for o in outcomes])
    # the policy without the shipped campaigns: the journeys' sends compete with nothing
    # (their arbitration with campaigns is tests/unit/test_journeys_engine.py's)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(POLICY_FILE, campaigns / "priority-policy.yaml")
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--local", "--bounded",
           "--log", str(tmp_path / "job.log"), "--starting-offsets", "earliest",
           "--parallelism", "2", "--checkpoint-interval-ms", "2000", "--churn-model", "off",
           "--campaigns-dir", str(campaigns), "--journeys-dir", str(JOURNEY_CATALOG_DIR),
           *as_flags(cfg)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr + (tmp_path / "job.log").read_text()

    expected = oracle(metas, clicks, outcomes)
    got = []
    for tier in TIERS:
        want = sum(1 for t in expected if t["tier"] == tier)
        records = read_topic(cfg, cfg.trigger_topic(tier), expected=want, timeout_s=60)
        got += [r for _, name, r in records if name == "TriggerEvent"]

    letters = read_topic(cfg, cfg.dead_letter_topic, expected=0, timeout_s=1)
    assert letters == []
    welcome, cart, lapsed = "welcome-drip", "cart-abandonment-chain", "re-engagement-30d"
    back = [(lapsed, "email", "EMAIL"), (lapsed, "in-app", "IN_APP"),
            (lapsed, "retarget", "PAID_SOCIAL")]
    assert sends(got, prefix) == {
        "wendy": [(welcome, "welcome", "EMAIL"), (welcome, "tip", "EMAIL"),
                  (welcome, "offer-a", "EMAIL")],  # clicked the tip
        "walt": [(welcome, "welcome", "EMAIL"), (welcome, "tip", "EMAIL"),
                 (welcome, "offer-b", "EMAIL")],
        "carl": [(cart, "email", "EMAIL"), (cart, "sms", "SMS"),
                 (cart, "retarget", "PAID_SOCIAL"), *back],
        "cora": [(cart, "email", "EMAIL"), (cart, "retarget", "PAID_SOCIAL"), *back],  # opened
        "cole": [(cart, "email", "EMAIL"), *back],  # bought: converted, the chain ended
        "rita": back,
    }
    key = ("trigger_id", "user_id", "campaign_id", "node_id", "journey_instance", "channel",
           "tier", "cause_event_time", "payload")
    assert sorted(tuple(t[k] for k in key) for t in got) == \
        sorted(tuple(t[k] for k in key) for t in expected)
    assert len({t["trigger_id"] for t in got}) == len(got)  # nothing twice

    cart_at = d0 + DAY
    times = {(t["user_id"].removeprefix(prefix), t["node_id"], t["journey_id"]):
             t["cause_event_time"] for t in got}
    assert times[("carl", "email", cart)] == cart_at + 30 * MIN
    assert times[("carl", "sms", cart)] == cart_at + 30 * MIN + 4 * HOUR
    assert times[("cora", "retarget", cart)] == cart_at + 2 * HOUR + 24 * HOUR
    assert times[("wendy", "offer-a", welcome)] == d0 + 48 * HOUR
    assert times[("rita", "email", lapsed)] == d0 + 30 * DAY
    assert times[("rita", "retarget", lapsed)] == d0 + 44 * DAY


KILL_JOURNEY = """\
kind: journey
id: kill-drill
version: 1
description: An email on the add to cart, a push 30 minutes later.
priority: {urgency: 0.7, expected_roi: 60, brand_significance: 0.5}
nodes:
  - id: start
    entry: {trigger: {event: {type: ADD_TO_CART}}}
    next: first
  - id: first
    send: {channels: [EMAIL], template: kill-drill-first}
    next: pause
  - id: pause
    wait: {for: 30m}
    next: second
  - id: second
    send: {channels: [PUSH], template: kill-drill-second}
    next: done
  - id: done
    exit: {}
"""


def test_a_taskmanager_killed_during_a_wait_loses_and_duplicates_no_send(isolated_cfg,
                                                                          local_stack,
                                                                          tmp_path):
    """The job on the stack's Flink cluster, exactly-once: 600 users enter a journey, their
    first sends arrive, the TaskManager is killed (kill -9) while every instance waits, a
    fresh one takes over from the checkpoint, then event time passes the waits: every user
    gets exactly [first, second], no trigger twice."""
    cfg = replace(isolated_cfg, idleness_ms=500, max_out_of_orderness_ms=2000,
                  churn_model="off", checkpoint_interval_ms=1000)
    codec = Codec.load()
    run = cfg.consumer_group
    users = [f"{run}-u{i:04d}" for i in range(600)]
    t0 = (int(time.time() * 1000) // MIN - 40) * MIN
    zone = daytime_zone(t0, t0 + 40 * MIN)
    campaigns, journeys = tmp_path / "campaigns", tmp_path / "journeys"
    campaigns.mkdir()
    journeys.mkdir()
    shutil.copy(POLICY_FILE, campaigns / "priority-policy.yaml")
    (journeys / "kill-drill.yaml").write_text(KILL_JOURNEY)
    fields = (*ISOLATION_FIELDS, "churn_model", "idleness_ms", "max_out_of_orderness_ms",
              "checkpoint_interval_ms", "parallelism", "delivery_guarantee")
    readers = TierReaders(cfg, codec)
    job_id = flink_jobs.submit(cfg, "--campaigns-dir", str(campaigns), "--journeys-dir",
                               str(journeys), fields=fields)
    try:
        # profiles first, then the carts; a profile that still reaches the engine after its
        # user's cart defers the first send (AWAITING_METADATA, 60 s of event time), and the
        # click at t0 + 3 min below decides it, long before any wait ends
        produce_raw(cfg, cfg.user_metadata_topic, [
            (u.encode(), metadata_bytes(codec, u, zone, at=t0, email=True, push=True))
            for u in users])
        time.sleep(3)
        produce_raw(cfg, cfg.clicks_topic, [
            (u.encode(), click_bytes(codec, f"{u}-cart", u, "ADD_TO_CART", t0 + i * 100,
                                     **CART)) for i, u in enumerate(users)])
        # the clock moves only once every cart is read (flink_jobs.wait_until_read says why)
        flink_jobs.wait_until_read(cfg, job_id, "clicks", len(users))
        produce_raw(cfg, cfg.clicks_topic, [(f"{run}-early".encode(), click_bytes(
            codec, f"{run}-early-1", f"{run}-early", "PAGE_VIEW", t0 + 3 * MIN))])
        readers.wait_until(lambda seen: len(seen) >= len(users), 180, "every first send")
        readers.drain(3)  # a checkpoint covers the instances' waits
        pid = stack.running_pid(FlinkTaskManager(), local_stack)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        stack.up(local_stack, [FlinkTaskManager()])  # the job restores onto a fresh one
        # a later click moves event time past every wait (30 minutes after each entry)
        clock = f"{run}-clock"
        produce_raw(cfg, cfg.clicks_topic, [(clock.encode(), click_bytes(
            codec, f"{clock}-1", clock, "PAGE_VIEW", t0 + 35 * MIN))])
        readers.wait_until(lambda seen: len(seen) >= 2 * len(users), 300, "every second send")
        readers.drain(6)
        failovers = _exception_history(cfg, job_id)
    finally:
        flink_jobs.cancel(cfg, job_id)
        readers.close()

    triggers = [r for _, _, r in readers.triggers()]
    ids = [r["trigger_id"] for r in triggers]
    assert len(ids) == len(set(ids)), "a send was delivered twice"
    by_user: dict[str, list[str]] = {}
    for r in sorted(triggers, key=lambda r: r["cause_event_time"]):
        by_user.setdefault(r["user_id"], []).append(r["node_id"])
    assert by_user == {u: ["first", "second"] for u in users}
    assert failovers, "the job never failed over: the kill did not hit it"
