"""The closed loop on the real stack: holdouts, attributed conversions and measured lift.

20,000 users on the stack's Flink cluster (exactly-once): half fill a cart (campaign
``lift-positive``), half search (``lift-zero``); each campaign holds out 50%. The simulated
audience (``nudgeflow respond``'s loop, on Kafka) converts a held-out user with p = 8% and a
treated one with p + Δ, Δ = 8 points for ``lift-positive`` and 0 for ``lift-zero``. The
TaskManager is killed (kill -9) while the campaigns decide. Checked: every user is sent or held
out exactly once; every purchase of a treated user in the window is exactly one CONVERTED
outcome (read committed) with the trigger it is credited to; the statistics the job keeps
(Redis, ``nudgeflow report campaigns``) count every assignment and conversion once, and their
lift intervals contain the true Δ and exclude zero for the positive campaign.

And a user who unsubscribes from a channel (an UNSUBSCRIBED outcome on the outcomes topic)
gets no later trigger on it, while a user who did not still does.

The arms and the draws are hashes of the user and trigger ids, which are fixed, so the sample
is the same on every run: the interval checks cannot flake, and they would fail if the counts
or the interval were wrong. A few purchases may reach the job behind its watermark on a loaded
machine (dead-lettered as late, not applied): they are not conversions, and at most 2% may be.
"""

import os
import shutil
import signal
import time

import pytest

from infra import stack
from infra.servers.flink import FlinkTaskManager
from jobs.bench.bench import daytime_zone
from jobs.config import ISOLATION_FIELDS, replace
from jobs.workload.respond import run_responder
from jobs.workload.responses import ResponseSpec, respond_to_holdout, respond_to_trigger
from schemas.codec import Codec
from tests.builders import click_bytes, metadata_bytes
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw
from tests.integration.test_triggers_e2e import TierReaders, _exception_history
from udfs.attribution.attribution import outcome_id
from udfs.attribution.holdout import HOLDOUT, TREATED
from udfs.catalog.files import POLICY_FILE
from udfs.stores.campaign_stats import RedisStatsStore

pytestmark = pytest.mark.integration

MIN, DAY = 60_000, 86_400_000
USERS = 20_000
SPEEDUP = 2 * DAY // 60  # the responder's clock: two days of event time in a minute
READ_S = 30  # ... once it has read every trigger and decision
P_CONVERT, DELTA = 0.08, 0.08
CAMPAIGNS = {"lift-positive": "ADD_TO_CART", "lift-zero": "SEARCH"}


def campaign_yaml(campaign_id: str, event_type: str, holdout: str = "50%") -> str:
    return f"""\
kind: campaign
id: {campaign_id}
version: 1
description: A push on {event_type}; half the users held out, to measure it.
trigger: {{event: {{type: {event_type}}}}}
channels: [PUSH]
template: {campaign_id}
priority: {{urgency: 0.6, expected_roi: 50, brand_significance: 0.5}}
holdout: {holdout}
attribution: {{window: 3d}}
"""


def test_measured_lift_recovers_the_true_effects_through_a_taskmanager_kill(
        isolated_cfg, local_stack, tmp_path):
    # idleness 30 s: while the audience answers, a partition without a purchase for a moment
    # must not drop out of the watermark (the others' purchases, hours of event time a second
    # later, would make its next one late)
    cfg = replace(isolated_cfg, idleness_ms=30_000, max_out_of_orderness_ms=2000,
                  churn_model="off", checkpoint_interval_ms=1000)
    codec = Codec.load()
    run = cfg.consumer_group
    # fixed ids (the topics and Redis keys are this run's own, and no segment is written):
    # every run draws the same arms and the same purchases, so the interval checks see the
    # same sample each time and cannot flake
    users = [f"lift-u{i:05d}" for i in range(USERS)]
    t0 = (int(time.time() * 1000) - 3 * DAY) // MIN * MIN
    early = t0 + 6 * MIN  # a click that moves event time past the first decisions
    restored = early + MIN  # and one after the TaskManager kill
    zone = daytime_zone(t0, t0 + 10 * MIN)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(POLICY_FILE, campaigns / "priority-policy.yaml")
    for campaign_id, event_type in CAMPAIGNS.items():
        (campaigns / f"{campaign_id}.yaml").write_text(campaign_yaml(campaign_id, event_type))
    fields = (*ISOLATION_FIELDS, "churn_model", "idleness_ms", "max_out_of_orderness_ms",
              "checkpoint_interval_ms", "parallelism", "delivery_guarantee")
    readers = TierReaders(cfg, codec)
    outcomes = TopicReader(cfg, cfg.outcomes_topic, codec)
    letters = TopicReader(cfg, cfg.dead_letter_topic, codec)

    def late_purchases() -> set[str]:
        """Event ids of purchases the job dead-lettered as late (it never applied them)."""
        letters.drain(0.5)
        return {codec.decode(r["raw"])["event_id"] for _, _, r in letters.records
                if r["reason_code"] == "LATE_EVENT" and r["raw"]}
    spec = ResponseSpec(seed=11, open_rates={}, click_rates={}, p_convert=P_CONVERT,
                        effects={"lift-positive": DELTA}, conversion_window_ms=2 * DAY)
    # no segments: the campaigns fire on clicks, and 20,000 users' segment writes would load
    # Cassandra for minutes after the test (the next tests' engines wait on their own writes)
    no_segments = tmp_path / "segments"
    no_segments.mkdir()
    job_id = flink_jobs.submit(cfg, "--campaigns-dir", str(campaigns), "--segments-dir",
                               str(no_segments), fields=fields)

    def decided() -> tuple[list[dict], list[dict]]:
        sent = [r for _, _, r in readers.triggers()]
        held = [r for _, name, r in readers.decisions.records
                if name == "TriggerDecision" and r["reason_code"] == "HOLDOUT"]
        return sent, held

    try:
        produce_raw(cfg, cfg.user_metadata_topic, [
            (u.encode(), metadata_bytes(codec, u, zone, at=t0 - MIN, push=True)) for u in users])
        time.sleep(3)
        produce_raw(cfg, cfg.clicks_topic, [
            (u.encode(), click_bytes(codec, f"{u}-c", u, "ADD_TO_CART" if i % 2 == 0 else "SEARCH",
                                     t0 + i * 10, search_query="shoes" if i % 2 else None))
            for i, u in enumerate(users)])
        # decides the users whose profile reached the engine after their click (deferred by
        # 60 s of event time) long before any conversion
        produce_raw(cfg, cfg.clicks_topic, [(f"{run}-early".encode(), click_bytes(
            codec, f"{run}-early-1", f"{run}-early", "PAGE_VIEW", early))])
        readers.wait_until(lambda seen: len(seen) >= USERS // 6, 240, "a sixth of the sends")
        pid = stack.running_pid(FlinkTaskManager(), local_stack)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        time.sleep(1)
        stack.up(local_stack, [FlinkTaskManager()])  # the job restores onto a fresh one
        # a restored job has no watermark until a click comes: this one gives it event time
        produce_raw(cfg, cfg.clicks_topic, [(f"{run}-restored".encode(), click_bytes(
            codec, f"{run}-restored-1", f"{run}-restored", "PAGE_VIEW", restored))])
        deadline = time.monotonic() + 400
        while sum(map(len, decided())) < USERS:
            assert time.monotonic() < deadline, \
                f"only {sum(map(len, decided()))} of {USERS} users were sent or held out"
            readers.drain(1)
        readers.drain(3)
        # the audience answers in event-time order, on a clock that stands still while it
        # reads the 20,000 triggers and decisions, then runs the 2 days of the conversion
        # window in about a minute: the job sees purchases in time order, as it would live
        # (written at once, days apart on each partition, most would be late)
        started = time.monotonic()

        def fast_clock() -> int:
            return restored + int(max(0.0, time.monotonic() - started - READ_S) * SPEEDUP)

        counts = run_responder(cfg, spec, idle_exit_s=READ_S + 10, progress=False,
                               release="event-time", group=f"{run}-respond",
                               say=lambda _: None, clock=fast_clock)
        # event time passes every conversion (at most 2 days after its send)
        produce_raw(cfg, cfg.clicks_topic, [(f"{run}-late".encode(), click_bytes(
            codec, f"{run}-late-1", f"{run}-late", "PAGE_VIEW", t0 + 3 * DAY - MIN))])
        sent, held = decided()
        # a TriggerEvent carries its cause's time, not its send's: a send deferred for a late
        # profile (up to 60 s) went out later, and a purchase in between precedes it
        # and a purchase before the early click (a few in a thousand) may come too late for it
        def sure(purchase_ms: int, decided_ms: int) -> bool:
            return purchase_ms > max(decided_ms + MIN, restored + MIN)

        # (outcome id -> (trigger, purchase event id)), for the purchases of treated users
        expected, maybe = {}, {}
        for trigger in sent:
            for response in respond_to_trigger(trigger, spec):
                if response.kind == "PURCHASE":
                    event_id = response.record["event_id"]
                    (expected if sure(response.event_time, trigger["cause_event_time"])
                     else maybe)[outcome_id(trigger["trigger_id"], event_id)] = (trigger,
                                                                                 event_id)
        held_purchases = [(d["campaign_id"], sure(r.event_time, d["decided_at"]),
                           r.record["event_id"])
                          for d in held for r in respond_to_holdout(d, spec)]
        # a purchase the job received behind its watermark (a partition of the responder's
        # writes that fell behind on a loaded machine) is dead-lettered as late, not applied:
        # it is no conversion; how many there are is bounded below
        deadline = time.monotonic() + 300
        while True:
            outcomes.drain(1)
            late = late_purchases()
            ids = {r["outcome_id"] for _, _, r in outcomes.records if r["outcome"] == "CONVERTED"}
            want = {k for k, (_, event_id) in expected.items() if event_id not in late}
            if want <= ids:
                break
            assert time.monotonic() < deadline, \
                f"{len(want & ids)} of {len(want)} CONVERTED outcomes arrived"
        outcomes.drain(4)
        late = late_purchases()
        failovers = _exception_history(cfg, job_id)
        store = RedisStatsStore.connect(cfg.redis_url, cfg.redis_key_prefix)
        try:
            deadline = time.monotonic() + 60
            while True:
                stats = store.read_all()
                done = sum(s.arm(TREATED).converted + s.arm(HOLDOUT).converted
                           for s in stats.values())
                sure_held = sum(1 for _, ok, e in held_purchases if ok and e not in late)
                if done >= len(want) + sure_held:
                    break
                assert time.monotonic() < deadline, f"the statistics count {done} conversions"
                time.sleep(1)
        finally:
            store.close()
    finally:
        flink_jobs.cancel(cfg, job_id)
        readers.close()
        outcomes.close()
        letters.close()

    assert failovers, "the job never failed over: the kill did not hit it"
    # every user decided once: sent or held out, never both, never twice
    sent_users = [t["user_id"] for t in sent]
    held_users = [d["user_id"] for d in held]
    assert len(sent_users) == len(set(sent_users)) and len(held_users) == len(set(held_users))
    assert sorted(sent_users + held_users) == sorted(users)
    assert counts.triggers == len(sent) and counts.holdouts == len(held)
    # every treated purchase in the window: exactly one CONVERTED outcome, credited to its push
    converted = [r for _, _, r in outcomes.records if r["outcome"] == "CONVERTED"]
    ids = [r["outcome_id"] for r in converted]
    assert len(ids) == len(set(ids)), "a conversion was written twice"
    purchases = len(expected) + len(maybe) + len(held_purchases)
    assert len(late) <= 0.02 * purchases, f"{len(late)} of {purchases} purchases were late"
    assert want <= set(ids) <= set(expected) | set(maybe)
    for record in converted:
        trigger, _ = expected.get(record["outcome_id"]) or maybe[record["outcome_id"]]
        assert (record["trigger_id"], record["campaign_id"], record["user_id"]) == (
            trigger["trigger_id"], trigger["campaign_id"], trigger["user_id"])
        assert record["attribution_rule"] == "last_touch 3d" and record["revenue"] > 0
    # the statistics: every assignment and conversion once, and the truth in the intervals
    for campaign_id in CAMPAIGNS:
        s = stats[campaign_id]
        assert s.arm(TREATED).assigned == sum(1 for t in sent if t["campaign_id"] == campaign_id)
        assert s.arm(HOLDOUT).assigned == sum(1 for d in held if d["campaign_id"] == campaign_id)
        assert s.arm(TREATED).converted == sum(1 for r in converted
                                               if r["campaign_id"] == campaign_id)
        mine = [(ok, e) for c, ok, e in held_purchases if c == campaign_id]
        assert sum(1 for ok, e in mine if ok and e not in late) <= s.arm(HOLDOUT).converted \
            <= len(mine)
    positive, zero = stats["lift-positive"].lift(), stats["lift-zero"].lift()
    assert positive.low is not None and positive.high is not None
    assert 0 < positive.low <= DELTA <= positive.high, positive
    assert zero.low is not None and zero.high is not None
    assert zero.low <= 0 <= zero.high, zero


def test_an_unsubscribed_user_gets_no_later_trigger_on_that_channel(isolated_cfg, tmp_path):
    cfg = replace(isolated_cfg, idleness_ms=500, max_out_of_orderness_ms=2000,
                  churn_model="off", checkpoint_interval_ms=1000)
    codec = Codec.load()
    run = cfg.consumer_group
    quits, stays = f"{run}-quits", f"{run}-stays"
    t0 = (int(time.time() * 1000) - 3 * 3_600_000) // MIN * MIN
    zone = daytime_zone(t0, t0 + 90 * MIN)
    campaigns = tmp_path / "campaigns"
    campaigns.mkdir()
    shutil.copy(POLICY_FILE, campaigns / "priority-policy.yaml")
    (campaigns / "cart-push.yaml").write_text(campaign_yaml("cart-push", "ADD_TO_CART", "0%"))
    fields = (*ISOLATION_FIELDS, "churn_model", "idleness_ms", "max_out_of_orderness_ms",
              "checkpoint_interval_ms", "parallelism", "delivery_guarantee")
    readers = TierReaders(cfg, codec)
    # the profiles first, and the clicks once the job has passed them on to the engine: a click
    # applied before its profile makes the push wait for it, then be refused for lack of consent
    # (the profiles' backlog holds event time back only if read within idleness_ms of the start,
    # which a loaded machine does not always do)
    produce_raw(cfg, cfg.user_metadata_topic, [
        (u.encode(), metadata_bytes(codec, u, zone, at=t0 - MIN, push=True))
        for u in (quits, stays)])
    job_id = flink_jobs.submit(cfg, "--campaigns-dir", str(campaigns), fields=fields)
    try:
        flink_jobs.wait_until_read(cfg, job_id, "user-metadata", 2)
        produce_raw(cfg, cfg.clicks_topic, [
            (u.encode(), click_bytes(codec, f"{u}-cart-1", u, "ADD_TO_CART", t0))
            for u in (quits, stays)])
        produce_raw(cfg, cfg.clicks_topic, [(f"{run}-clock".encode(), click_bytes(
            codec, f"{run}-clock-1", f"{run}-clock", "PAGE_VIEW", t0 + 2 * MIN))])
        readers.wait_until(lambda seen: len(seen) >= 2, 120, "the first pushes")
        [first] = [r for _, _, r in readers.triggers() if r["user_id"] == quits]
        produce_raw(cfg, cfg.outcomes_topic, [(quits.encode(), codec.encode("CampaignOutcome", {
            "outcome_id": f"{run}-stop", "trigger_id": first["trigger_id"], "user_id": quits,
            "campaign_id": first["campaign_id"], "channel": "PUSH", "outcome": "UNSUBSCRIBED",
            "event_time": t0 + 5 * MIN, "revenue": None, "currency": None}))])
        flink_jobs.wait_until_read(cfg, job_id, "outcomes", 1)  # read before the carts after it
        produce_raw(cfg, cfg.clicks_topic, [
            (u.encode(), click_bytes(codec, f"{u}-cart-2", u, "ADD_TO_CART", t0 + 60 * MIN))
            for u in (quits, stays)])
        produce_raw(cfg, cfg.clicks_topic, [(f"{run}-clock".encode(), click_bytes(
            codec, f"{run}-clock-2", f"{run}-clock", "PAGE_VIEW", t0 + 70 * MIN))])
        readers.wait_until(lambda seen: len(seen) >= 3, 120, "the second push of the other user")
        deadline = time.monotonic() + 60
        while not any(r["user_id"] == quits and r["reason_code"] == "NO_CONSENT"
                      for _, name, r in readers.decisions.records if name == "TriggerDecision"):
            assert time.monotonic() < deadline, "no NO_CONSENT decision for the unsubscribed"
            readers.drain(1)
        readers.drain(3)
    finally:
        flink_jobs.cancel(cfg, job_id)
        readers.close()
    sends = sorted((r["user_id"], r["cause_event_id"]) for _, _, r in readers.triggers())
    assert sends == sorted([(quits, f"{quits}-cart-1"), (stays, f"{stays}-cart-1"),
                            (stays, f"{stays}-cart-2")])
    [refused] = [r for _, name, r in readers.decisions.records
                 if name == "TriggerDecision" and r["user_id"] == quits]
    assert (refused["outcome"], refused["cause_event_id"]) == ("SUPPRESSED", f"{quits}-cart-2")
    assert f"PUSH at {t0 + 5 * MIN}" in refused["reason"]
