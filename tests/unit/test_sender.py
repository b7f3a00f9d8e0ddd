"""Tests for jobs.sender.sender without Kafka or Redis: the scheduler, one batch's handling (expiry,
dedupe, bad records, retries, limits, DELIVERED outcomes), the dedupe stores, the report, adapters
and options, the partition ledger, and the delivery loop over a fake confluent-kafka group
consumer (rebalances, commits, pausing) and producer (outcomes)."""

from __future__ import annotations

import argparse
import os
import random
import sys
import types

import pytest

from jobs.cli.main import main
from jobs.config import load_config
from jobs.sender import sender
from jobs.sender.sender import (
    AdapterFailedError,
    AdapterLoadError,
    ConsoleAdapter,
    DeliveryRefused,
    DeliveryRetryPolicy,
    MemoryDedupe,
    RedisDedupe,
    SenderError,
    SenderOptions,
    SenderReport,
    SentId,
    TierScheduler,
    TierStats,
    build_delivered_outcome,
    derive_outcome_id,
    format_report,
    is_expired,
    load_adapter,
    process_batch,
    send_with_retry,
)
from schemas.codec import Codec
from udfs.campaigns.grammar import CHANNELS, TIERS
from udfs.intake import SourceRecord, outcome_problems

NOW = 1_750_000_000_000  # a fixed wall clock (ms)
CODEC = Codec.load()
GROUP = "test-sender"


def sent_ids(*trigger_ids, group=GROUP, channel="EMAIL"):
    return [SentId(group, channel, trigger_id) for trigger_id in trigger_ids]


def make_trigger(trigger_id, tier="P0", expires_at=None, user_id="u-1", campaign_id="c-1",
                 channel="EMAIL"):
    """A valid TriggerEvent dict (shared with the integration tests)."""
    return {
        "trigger_id": trigger_id,
        "user_id": user_id,
        "campaign_id": campaign_id,
        "campaign_version": 1,
        "step_id": "main",
        "channel": channel,
        "tier": tier,
        "priority_score": 1.0,
        "template_id": f"tpl-{campaign_id}",
        "payload": {},
        "segments": [],
        "churn_score": None,
        "model_version": None,
        "cause_event_id": f"e-{trigger_id}",
        "cause_event_time": NOW - 5_000,
        "ingest_time": NOW - 4_000,
        "emit_time": NOW - 3_000,
        "expires_at": expires_at,
        "explanation": {"reason": "test", "definition_versions": {}, "features": {},
                        "rivals": []},
    }


def record(value, offset, topic="triggers-p0", partition=0, key=b"u-1"):
    return SourceRecord(topic, partition, offset, NOW, key, value)


def encoded(trigger, offset, **kwargs):
    return record(CODEC.encode("TriggerEvent", trigger), offset, **kwargs)


class Recorder:
    def __init__(self, fail_times=0, fail_on=None):
        self.sent = []
        self.fail_times = fail_times
        self.fail_on = fail_on
        self.calls = 0

    def send(self, trigger):
        self.calls += 1
        if (self.fail_on is None or trigger["trigger_id"] == self.fail_on) and self.fail_times:
            self.fail_times -= 1
            raise ConnectionError("channel down")
        self.sent.append(trigger["trigger_id"])


def quiet(_line):
    pass


# --- scheduler ----------------------------------------------------------------------------------


def test_strict_priority_picks_the_highest_waiting_tier():
    scheduler = TierScheduler(starvation_limit=0)
    assert scheduler.pick({"P3", "P1", "P2"}) == "P1"
    assert scheduler.pick({"P3", "P2"}) == "P2"
    assert scheduler.pick({"P0", "P3"}) == "P0"
    assert scheduler.pick(set()) is None


def test_strict_priority_starves_lower_tiers_for_ever():
    scheduler = TierScheduler(starvation_limit=0)
    picks = [scheduler.pick(set(TIERS)) for _ in range(1000)]
    assert set(picks) == {"P0"}
    assert scheduler.boosted == dict.fromkeys(TIERS, 0)


def test_starvation_guard_serves_a_skipped_tier_after_the_limit():
    scheduler = TierScheduler(starvation_limit=2)
    picks = [scheduler.pick({"P0", "P3"}) for _ in range(9)]
    assert picks == ["P0", "P0", "P3"] * 3
    assert scheduler.boosted["P3"] == 3


def test_starvation_guard_with_every_tier_waiting():
    scheduler = TierScheduler(starvation_limit=2)
    picks = [scheduler.pick(set(TIERS)) for _ in range(5)]
    # two priority picks, then the three starved tiers, longest-waiting (then highest) first
    assert picks == ["P0", "P0", "P1", "P2", "P3"]


def test_a_tier_that_stops_waiting_starts_counting_again():
    scheduler = TierScheduler(starvation_limit=3)
    assert [scheduler.pick({"P0", "P2"}) for _ in range(2)] == ["P0", "P0"]
    assert scheduler.skipped["P2"] == 2
    assert scheduler.pick({"P0"}) == "P0"  # P2's batch went away (e.g. it was revoked)
    assert scheduler.skipped["P2"] == 0
    assert [scheduler.pick({"P0", "P2"}) for _ in range(4)] == ["P0", "P0", "P0", "P2"]


@pytest.mark.parametrize("limit", [1, 2, 5, 20])
def test_no_waiting_tier_is_passed_over_more_than_limit_plus_three_times(limit):
    rng = random.Random(limit)
    scheduler = TierScheduler(starvation_limit=limit)
    waiting = set(TIERS)
    passed_over = dict.fromkeys(TIERS, 0)
    worst = 0
    for _ in range(5000):
        # a tier keeps its batch until picked; an empty tier gets new data at random
        waiting |= {t for t in TIERS if rng.random() < 0.7}
        chosen = scheduler.pick(waiting)
        for tier in TIERS:
            passed_over[tier] = passed_over[tier] + 1 if tier in waiting and tier != chosen else 0
        worst = max(worst, *passed_over.values())
        waiting.discard(chosen)
    assert worst <= limit + len(TIERS) - 1


def test_scheduler_rejects_bad_arguments():
    with pytest.raises(ValueError, match="starvation_limit must be >= 0"):
        TierScheduler(starvation_limit=-1)
    with pytest.raises(ValueError, match="unknown tier"):
        TierScheduler().pick({"P9"})


# --- expiry, one batch --------------------------------------------------------------------------


def test_expiry_is_strictly_before_now():
    assert not is_expired(make_trigger("a"), NOW)
    assert not is_expired(make_trigger("a", expires_at=NOW), NOW)
    assert not is_expired(make_trigger("a", expires_at=NOW + 1), NOW)
    assert is_expired(make_trigger("a", expires_at=NOW - 1), NOW)


def test_a_batch_drops_expired_duplicates_and_bad_records():
    dedupe = MemoryDedupe()
    dedupe.mark(sent_ids("sent-before"))
    adapter = Recorder()
    batch = [
        encoded(make_trigger("t1"), 0),
        encoded(make_trigger("old", expires_at=NOW - 1), 1),
        encoded(make_trigger("t1"), 2),  # a replay inside the same batch
        record(b"not avro at all", 3),
        encoded(make_trigger("sent-before"), 4),
        record(None, 5),  # a tombstone
        encoded(make_trigger("t2", expires_at=NOW + 60_000), 6),
    ]
    outcome = process_batch(batch, codec=CODEC, dedupe=dedupe, adapter=adapter, now_ms=NOW,
                            group=GROUP, say=quiet)
    assert adapter.sent == ["t2", "t1"]  # deadline order: t1 has no deadline, so it goes last
    assert (outcome.delivered, outcome.duplicates, outcome.expired, outcome.bad) == (2, 2, 1, 2)
    assert outcome.handled == len(batch) and outcome.error is None
    assert sorted(outcome.handled_at) == list(range(len(batch)))
    # expired ids are marked too: the group drops a trigger once, delivered or expired
    assert dedupe.seen(sent_ids("t1", "t2", "old")) == set(sent_ids("t1", "t2", "old"))
    letters = outcome.dead_letters
    assert [(d["offset"], d["raw"], d["reason_code"]) for d in letters] == [
        (3, b"not avro at all", "INVALID_AVRO"), (5, b"", "INVALID_AVRO")]
    assert letters[0]["source_topic"] == "triggers-p0" and letters[0]["stage"] == "sender-decode"
    assert letters[0]["failed_at"] == NOW and letters[0]["key"] == b"u-1"
    CODEC.encode("DeadLetter", letters[0])  # a valid DeadLetter record


def test_a_record_of_another_type_is_a_dead_letter():
    other = CODEC.encode("DeadLetter", {
        "reason_code": "OTHER", "reason": "x", "source_topic": "t", "raw": b"", "stage": "s",
        "failed_at": NOW})
    outcome = process_batch([record(other, 0)], codec=CODEC, dedupe=MemoryDedupe(),
                            adapter=Recorder(), now_ms=NOW, group=GROUP, say=quiet)
    assert outcome.bad == 1 and outcome.dead_letters[0]["reason_code"] == "OTHER"


def test_the_limit_stops_a_batch_after_that_many_deliveries():
    adapter = Recorder()
    batch = [encoded(make_trigger(f"t{i}"), i) for i in range(5)]
    outcome = process_batch(batch, codec=CODEC, dedupe=MemoryDedupe(), adapter=adapter,
                            now_ms=NOW, group=GROUP, limit=2, say=quiet)
    assert adapter.sent == ["t0", "t1"] and outcome.handled == 2


def test_adapter_failures_are_retried_with_backoff():
    adapter = Recorder(fail_times=2)
    sleeps = []
    outcome = process_batch([encoded(make_trigger("t1"), 0)], codec=CODEC, dedupe=MemoryDedupe(),
                            adapter=adapter, now_ms=NOW, group=GROUP,
                            retry=DeliveryRetryPolicy(3, 0.5), sleep=sleeps.append, say=quiet)
    assert adapter.sent == ["t1"] and outcome.delivered == 1 and outcome.error is None
    assert sleeps == [0.5, 1.0]


def test_an_adapter_that_keeps_failing_stops_the_batch_before_the_trigger():
    dedupe = MemoryDedupe()
    adapter = Recorder(fail_times=99, fail_on="t2")
    sleeps = []
    batch = [encoded(make_trigger(f"t{i}"), i) for i in range(1, 5)]
    outcome = process_batch(batch, codec=CODEC, dedupe=dedupe, adapter=adapter, now_ms=NOW,
                            group=GROUP, retry=DeliveryRetryPolicy(3, 0.5), sleep=sleeps.append,
                            say=quiet)
    assert adapter.sent == ["t1"]
    assert outcome.handled == 1  # only t1's offset may be committed
    assert isinstance(outcome.error, AdapterFailedError)
    assert "failed 4 time(s) on trigger t2" in str(outcome.error)
    assert "ConnectionError: channel down" in str(outcome.error)
    assert sleeps == [0.5, 1.0, 2.0]
    # what was sent is remembered even so
    assert dedupe.seen(sent_ids("t1", "t2")) == set(sent_ids("t1"))


def test_send_with_retry_without_retries_fails_at_once():
    with pytest.raises(AdapterFailedError, match="failed 1 time"):
        send_with_retry(Recorder(fail_times=1), make_trigger("t"), DeliveryRetryPolicy(0),
                        say=quiet)


# --- DELIVERED outcomes -------------------------------------------------------------------------


def delivered(trigger_id, at=NOW, user_id="u-1", campaign_id="c-1", channel="EMAIL",
              what="DELIVERED"):
    return {"outcome_id": derive_outcome_id(trigger_id, channel, what),
            "trigger_id": trigger_id, "user_id": user_id, "campaign_id": campaign_id,
            "channel": channel, "outcome": what, "event_time": at, "revenue": None,
            "currency": None, "attribution_rule": None}


def test_each_delivered_or_expired_trigger_gets_one_outcome_and_nothing_else_does():
    dedupe = MemoryDedupe()
    dedupe.mark(sent_ids("sent-before"))
    batch = [
        encoded(make_trigger("t1", user_id="ann", campaign_id="welcome"), 0),
        encoded(make_trigger("sms", channel="SMS"), 1),  # skipped: not this sender's channel
        encoded(make_trigger("old", expires_at=NOW - 1), 2),
        encoded(make_trigger("t1", user_id="ann", campaign_id="welcome"), 3),  # a replay
        encoded(make_trigger("sent-before"), 4),
        record(b"not avro at all", 5),
        record(None, 6),
        encoded(make_trigger("t2", user_id="bob", campaign_id="cart"), 7),
    ]
    outcome = process_batch(batch, codec=CODEC, dedupe=dedupe, adapter=Recorder(), now_ms=NOW,
                            group=GROUP, channels=("EMAIL",), say=quiet)
    assert (outcome.delivered, outcome.skipped, outcome.expired, outcome.duplicates,
            outcome.bad) == (2, 1, 1, 2, 2)
    assert outcome.outcomes == [delivered("old", what="EXPIRED"),
                                delivered("t1", user_id="ann", campaign_id="welcome"),
                                delivered("t2", user_id="bob", campaign_id="cart")]
    for value in outcome.outcomes:  # EXPIRED is a CampaignOutcome (version 3)
        assert CODEC.decode(CODEC.encode("CampaignOutcome", value)) == value


class Refusing(Recorder):
    """Refuses one trigger for good (an invalid address), delivers the rest."""

    def send(self, trigger):
        if trigger["trigger_id"] == "bad-address":
            raise DeliveryRefused("no such mailbox")
        super().send(trigger)


def test_a_trigger_the_channel_refuses_for_good_gets_a_failed_outcome_and_the_batch_goes_on():
    dedupe = MemoryDedupe()
    batch = [encoded(make_trigger("t1"), 0), encoded(make_trigger("bad-address"), 1),
             encoded(make_trigger("t2"), 2)]
    adapter = Refusing()
    lines = []
    outcome = process_batch(batch, codec=CODEC, dedupe=dedupe, adapter=adapter, now_ms=NOW,
                            group=GROUP, say=lines.append, retry=DeliveryRetryPolicy(3, 0.0))
    assert adapter.sent == ["t1", "t2"]  # not retried, and the rest delivered
    assert (outcome.delivered, outcome.failed, outcome.error) == (2, 1, None)
    assert outcome.outcomes == [delivered("t1"), delivered("bad-address", what="FAILED"),
                                delivered("t2")]
    assert sorted(outcome.handled_at) == [0, 1, 2]
    assert any("refused for good" in line and "no such mailbox" in line for line in lines)
    # recorded like a delivery: the group does not try it again
    again = process_batch([encoded(make_trigger("bad-address"), 3)], codec=CODEC, dedupe=dedupe,
                          adapter=adapter, now_ms=NOW, group=GROUP, say=quiet)
    assert (again.duplicates, again.failed) == (1, 0)


def test_a_delivered_outcome_is_a_valid_campaign_outcome():
    outcome = build_delivered_outcome(make_trigger("t1", channel="PUSH", user_id="ann"), NOW)
    value = CODEC.encode("CampaignOutcome", outcome)
    assert CODEC.decode(value, expect="CampaignOutcome") == outcome
    assert outcome_problems(outcome, NOW) == []  # what the engine checks before applying it
    assert (outcome["channel"], outcome["outcome"], outcome["trigger_id"]) == \
        ("PUSH", "DELIVERED", "t1")


def test_outcome_ids_are_deterministic_and_tell_triggers_channels_and_outcomes_apart():
    first = process_batch([encoded(make_trigger("t1"), 0)], codec=CODEC, dedupe=MemoryDedupe(),
                          adapter=Recorder(), now_ms=NOW, group=GROUP, say=quiet)
    # a redelivery after a crash: another process, another time, another group
    again = process_batch([encoded(make_trigger("t1"), 9)], codec=CODEC, dedupe=MemoryDedupe(),
                          adapter=Recorder(), now_ms=NOW + 60_000, group="other", say=quiet)
    assert first.outcomes[0]["outcome_id"] == again.outcomes[0]["outcome_id"]
    assert [first.outcomes[0]["event_time"], again.outcomes[0]["event_time"]] == \
        [NOW, NOW + 60_000]
    ids = {derive_outcome_id(*key) for key in [("t1", "EMAIL", "DELIVERED"),
                                                ("t2", "EMAIL", "DELIVERED"),
                                                ("t1", "SMS", "DELIVERED"),
                                                ("t1", "EMAIL", "OPENED")]}
    assert len(ids) == 4
    # sha256("t1|EMAIL|DELIVERED"), first 32 hex digits: fixed, so other senders can match it
    assert first.outcomes[0]["outcome_id"] == "8a71bda7493f789b4812a27ed9591e0d"
    # 32 hex digits whatever the trigger id: within the engine's id limit
    long_id = build_delivered_outcome(make_trigger("x" * 256), NOW)["outcome_id"]
    assert len(long_id) == 32 and int(long_id, 16) >= 0


def test_no_outcomes_when_they_are_off():
    written = []
    outcome = process_batch([encoded(make_trigger("t1"), 0)], codec=CODEC, dedupe=MemoryDedupe(),
                            adapter=Recorder(), now_ms=NOW, group=GROUP, outcomes=False,
                            write_outcomes=written.append, say=quiet)
    assert outcome.delivered == 1 and outcome.outcomes == [] and written == []


def test_the_delivery_time_is_read_from_the_clock_after_each_send():
    times = iter([NOW + 5, NOW + 10, NOW + 20])  # the first read: expiry before the sends
    outcome = process_batch([encoded(make_trigger(f"t{i}"), i) for i in range(2)], codec=CODEC,
                            dedupe=MemoryDedupe(), adapter=Recorder(), now_ms=NOW, group=GROUP,
                            clock=lambda: next(times), say=quiet)
    assert [o["event_time"] for o in outcome.outcomes] == [NOW + 10, NOW + 20]


class LoggingDedupe(MemoryDedupe):
    def __init__(self, log):
        super().__init__()
        self.log = log

    def mark(self, ids):
        self.log.append(("mark", [i.trigger_id for i in ids]))
        super().mark(ids)


def test_outcomes_are_written_before_the_sent_ids_are_recorded():
    log = []
    adapter = Recorder(fail_times=99, fail_on="t3")
    outcome = process_batch(
        [encoded(make_trigger(f"t{i}"), i) for i in range(1, 5)], codec=CODEC,
        dedupe=LoggingDedupe(log), adapter=adapter, now_ms=NOW, group=GROUP,
        retry=DeliveryRetryPolicy(0), write_outcomes=lambda o: log.append(
            ("write", [x["trigger_id"] for x in o])), say=quiet)
    # the adapter failed on t3: the delivered prefix is reported, then recorded
    assert isinstance(outcome.error, AdapterFailedError)
    assert log == [("write", ["t1", "t2"]), ("mark", ["t1", "t2"])]


def test_when_outcomes_cannot_be_written_the_triggers_are_not_recorded_as_sent():
    dedupe = MemoryDedupe()

    def fail(_outcomes):
        raise SenderError("2 of 2 outcome(s) were not written")

    with pytest.raises(SenderError, match="outcome"):
        process_batch([encoded(make_trigger(f"t{i}"), i) for i in range(2)], codec=CODEC,
                      dedupe=dedupe, adapter=Recorder(), now_ms=NOW, group=GROUP,
                      write_outcomes=fail, say=quiet)
    # sent again after a restart, and then reported (rather than dropped as duplicates)
    assert dedupe.seen(sent_ids("t0", "t1")) == set()


# --- dedupe stores ------------------------------------------------------------------------------


def test_memory_dedupe_is_a_bounded_lru():
    a, b, c, d = sent_ids("a", "b", "c", "d")
    dedupe = MemoryDedupe(capacity=3)
    dedupe.mark([a, b, c])
    assert dedupe.seen([a]) == {a}  # a is now the most recently used
    dedupe.mark([d])  # evicts b, the least recently used
    assert len(dedupe) == 3
    assert dedupe.seen([a, b, c, d]) == {a, c, d}
    with pytest.raises(ValueError, match="capacity"):
        MemoryDedupe(0)


class FakeRedis:
    def __init__(self, fail=False):
        self.data = {}
        self.mget_calls = []
        self.fail = fail

    def mget(self, keys):
        if self.fail:
            raise ConnectionError("Connection refused")
        self.mget_calls.append(list(keys))
        return [self.data.get(k, (None,))[0] for k in keys]

    def pipeline(self, transaction=True):
        fake = self

        class Pipe:
            ops = []

            def set(self, key, value, ex=None):
                self.ops.append((key, value, ex))

            def execute(self):
                for key, value, ex in self.ops:
                    fake.data[key] = (value, ex)

        return Pipe()


def test_redis_dedupe_keys_ttl_and_cache():
    cfg = load_config(env={}, overrides={"redis_key_prefix": "nf"})
    client = FakeRedis()
    dedupe = RedisDedupe(client, cfg, ttl_s=691200, cache=MemoryDedupe(10))
    t1, t9, t5 = sent_ids("t1", "t9", "t5", group="mail")
    dedupe.mark([t1])
    assert client.data == {"nf:sent:mail:EMAIL:t1": (b"1", 691200)}
    # sent by another process of the group (or before a restart)
    client.data["nf:sent:mail:EMAIL:t9"] = (b"1", 5)
    assert dedupe.seen([t1, t9, t5]) == {t1, t9}
    # t1 came from the LRU
    assert client.mget_calls == [["nf:sent:mail:EMAIL:t9", "nf:sent:mail:EMAIL:t5"]]
    assert dedupe.seen([t9]) == {t9} and len(client.mget_calls) == 1  # now cached too


def test_redis_dedupe_failure_is_a_clear_sender_error():
    cfg = load_config(env={}, overrides={"redis_url": "redis://:hunter2@cache:6379/0"})
    dedupe = RedisDedupe(FakeRedis(fail=True), cfg, ttl_s=10)
    with pytest.raises(SenderError) as info:
        dedupe.seen(sent_ids("t1"))
    message = str(info.value)
    assert "redis://***@cache:6379/0" in message and "hunter2" not in message
    assert "Connection refused" in message and "--dedupe memory" in message


# --- the dedupe key: group and channel; --channels (issue 18) -----------------------------------
#
# Several senders share one Redis: each test gives every sender its own RedisDedupe (its own
# LRU, as a separate process has) over one FakeRedis.


def deliver(batch, client, group, channels=CHANNELS, adapter=None):
    """One sender process handing ``batch`` over: (outcome, trigger ids its adapter got)."""
    adapter = adapter or Recorder()
    dedupe = RedisDedupe(client, load_config(env={}, overrides={"redis_key_prefix": "nf"}),
                         ttl_s=60)
    outcome = process_batch(batch, codec=CODEC, dedupe=dedupe, adapter=adapter, now_ms=NOW,
                            group=group, channels=channels, say=quiet)
    return outcome, adapter.sent


def counted(outcome):
    return {c: getattr(outcome, c) for c in ("delivered", "duplicates", "expired", "skipped")}


EMAIL_AND_SMS = [encoded(make_trigger("e1", channel="EMAIL"), 0),
                 encoded(make_trigger("s1", channel="SMS"), 1)]


class OneChannel(Recorder):
    """An adapter that accepts a trigger of another channel without sending it (the issue's
    report: one sender per channel, every sender reading every trigger)."""

    def __init__(self, channel):
        super().__init__()
        self.channel = channel

    def send(self, trigger):
        if trigger["channel"] == self.channel:
            super().send(trigger)


def test_an_email_sender_does_not_make_the_sms_sender_drop_its_trigger():
    client = FakeRedis()
    # the email sender as reported: every channel, its adapter passes over the SMS trigger
    deliver(EMAIL_AND_SMS, client, "email-sender", adapter=OneChannel("EMAIL"))
    sms, sms_sent = deliver(EMAIL_AND_SMS, client, "sms-sender", ("SMS",))
    assert sms_sent == ["s1"]
    assert (sms.delivered, sms.duplicates) == (1, 0)


def test_a_redelivered_trigger_is_a_duplicate_for_the_same_group():
    client = FakeRedis()
    batch = [encoded(make_trigger("s1", channel="SMS"), 0)]
    first, first_sent = deliver(batch, client, "sms-sender")
    # a restarted process (a fresh LRU): the duplicate is found in Redis
    again, again_sent = deliver(batch, client, "sms-sender")
    assert first_sent == ["s1"] and again_sent == []
    assert (first.delivered, first.duplicates) == (1, 0)
    assert (again.delivered, again.duplicates) == (0, 1)


def test_two_groups_each_deliver_a_trigger_once():
    client = FakeRedis()
    batch = [encoded(make_trigger("s1", channel="SMS"), 0)]
    outcomes = {group: [deliver(batch, client, group) for _ in range(2)]
                for group in ("sms-a", "sms-b")}
    for group, ((first, first_sent), (again, again_sent)) in outcomes.items():
        assert first_sent == ["s1"] and first.delivered == 1, group
        assert again_sent == [] and again.duplicates == 1, group
    assert set(client.data) == {"nf:sent:sms-a:SMS:s1", "nf:sent:sms-b:SMS:s1"}


def test_an_email_sender_leaves_sms_triggers_to_the_sms_sender():
    client = FakeRedis()
    email, email_sent = deliver(EMAIL_AND_SMS, client, "email-sender", ("EMAIL",))
    sms, sms_sent = deliver(EMAIL_AND_SMS, client, "sms-sender", ("SMS",))
    assert email_sent == ["e1"] and sms_sent == ["s1"]
    assert counted(email) == {"delivered": 1, "duplicates": 0, "expired": 0, "skipped": 1}
    assert counted(sms) == {"delivered": 1, "duplicates": 0, "expired": 0, "skipped": 1}
    assert email.handled == sms.handled == 2  # a skipped trigger's offset may be committed
    # a sender marks only what it delivered, under its group and channel
    assert set(client.data) == {"nf:sent:email-sender:EMAIL:e1", "nf:sent:sms-sender:SMS:s1"}


def test_a_trigger_of_another_channel_is_skipped_even_when_expired():
    client = FakeRedis()
    batch = [encoded(make_trigger("s1", channel="SMS", expires_at=NOW - 1), 0)]
    outcome, sent = deliver(batch, client, "email-sender", ("EMAIL",))
    assert sent == [] and counted(outcome)["skipped"] == 1 and counted(outcome)["expired"] == 0
    assert client.mget_calls == [] and client.data == {}  # not looked up, not marked


def test_the_channels_are_the_schema_channel_enum():
    writer = CODEC.versions("TriggerEvent")[-1][2]
    channel = next(f for f in writer["fields"] if f["name"] == "channel")
    assert CHANNELS == tuple(channel["type"]["symbols"])
    assert SenderOptions().channels == CHANNELS  # the default: every channel


@pytest.mark.parametrize(("channels", "message"), [
    (("EMAIL", "FAX"), "channels: unknown channel(s) 'FAX'; the channels (the TriggerEvent "
                       "schema's Channel enum) are EMAIL, SMS, PUSH, IN_APP, PAID_SOCIAL"),
    (("email",), "unknown channel(s) 'email'"),
    ((), "channels must name at least one channel of EMAIL, SMS, PUSH, IN_APP, PAID_SOCIAL"),
    ("SMS", "channels must be a tuple of channel names, got the string 'SMS'"),
])
def test_unknown_channels_are_refused(channels, message):
    with pytest.raises(ValueError) as info:
        SenderOptions(channels=channels)
    assert message in str(info.value)


# --- report -------------------------------------------------------------------------------------


def test_final_report_has_rates_totals_and_lag():
    report = SenderReport(elapsed_s=10.0, stopped="idle")
    report.tiers["P0"] = TierStats(delivered=100, duplicates=3, expired=2, bad=1, skipped=4,
                                   failed=5, lag=0)
    report.tiers["P3"] = TierStats(delivered=50, lag=7)
    for tier in ("P1", "P2"):
        report.tiers[tier].lag = 0
    lines = format_report(report).splitlines()
    assert lines[0] == "sender after 10.0 s (stopped: idle)"
    assert lines[1].split() == ["tier", "delivered", "/s", "duplicates", "expired", "failed",
                                "bad", "skipped", "lag"]
    assert lines[2].split() == ["P0", "100", "10.0", "3", "2", "5", "1", "4", "0"]
    assert lines[5].split() == ["P3", "50", "5.0", "0", "0", "0", "0", "0", "7"]
    assert lines[6].split() == ["all", "150", "15.0", "3", "2", "5", "1", "4", "7"]


def test_periodic_report_rates_count_since_the_previous_report():
    before = SenderReport(elapsed_s=10.0)
    before.tiers["P1"].delivered = 1000
    now = before.snapshot()
    now.elapsed_s = 12.0
    now.tiers["P1"].delivered = 1300
    assert before.tiers["P1"].delivered == 1000  # the snapshot is independent
    lines = format_report(now, before).splitlines()
    assert lines[0] == "sender after 12.0 s"
    assert lines[3].split() == ["P1", "1,300", "150.0", "0", "0", "0", "0", "0", "-"]
    assert lines[6].split()[:3] == ["all", "1,300", "150.0"] and lines[6].split()[-1] == "-"


# --- adapters -----------------------------------------------------------------------------------


def test_console_adapter_prints_one_readable_line():
    lines = []
    ConsoleAdapter(lines.append).send(make_trigger("abc123", tier="P1", user_id="u-7",
                                                   campaign_id="winback"))
    assert len(lines) == 1
    for part in ("[P1]", "EMAIL", "user=u-7", "campaign=winback", "template=tpl-winback",
                 "trigger=abc123"):
        assert part in lines[0]


@pytest.fixture
def adapters_module(monkeypatch):
    module = types.ModuleType("fake_channels")

    class Good:
        def send(self, trigger):
            pass

    class NeedsArgs:
        def __init__(self, token):
            self.token = token

        def send(self, trigger):
            pass

    module.Good = Good
    module.NeedsArgs = NeedsArgs
    module.instance = Good()
    module.not_an_adapter = 42
    monkeypatch.setitem(sys.modules, "fake_channels", module)
    return module


def test_load_adapter_instantiates_classes_and_takes_objects(adapters_module):
    assert isinstance(load_adapter("fake_channels:Good"), adapters_module.Good)
    assert load_adapter("fake_channels:instance") is adapters_module.instance
    assert isinstance(load_adapter("jobs.sender.sender:ConsoleAdapter"), ConsoleAdapter)


@pytest.mark.parametrize(("spec", "message"), [
    ("fake_channels.Good", "must be module:attribute"),
    ("fake_channels:", "must be module:attribute"),
    ("no_such_module_xyz:Adapter", "cannot import module 'no_such_module_xyz'"),
    ("fake_channels:Missing", "module 'fake_channels' has no attribute 'Missing'"),
    ("fake_channels:NeedsArgs", "NeedsArgs() failed: TypeError"),
    ("fake_channels:not_an_adapter", "int is not a channel adapter: it needs a send(trigger)"),
])
def test_load_adapter_errors_say_what_is_wrong(adapters_module, spec, message):
    with pytest.raises(AdapterLoadError) as info:
        load_adapter(spec)
    assert message in str(info.value)
    assert spec in str(info.value)


# --- options and the command line ---------------------------------------------------------------


def test_options_are_validated():
    with pytest.raises(ValueError) as info:
        SenderOptions(batch_size=0, starvation_limit=-1, dedupe="disk", max_triggers=0)
    message = str(info.value)
    for part in ("batch_size must be >= 1", "starvation_limit must be >= 0",
                 "dedupe must be one of redis, memory", "max_triggers must be >= 1"):
        assert part in message


def _parse(argv):
    parser = argparse.ArgumentParser()
    sender.add_sender_arguments(parser)
    return sender.options_from_args(parser.parse_args(argv))


def test_flags_fall_back_to_environment_variables(monkeypatch):
    for name in list(os.environ):
        if name.startswith("NUDGEFLOW_SENDER_"):
            monkeypatch.delenv(name)
    assert _parse([]) == SenderOptions()
    monkeypatch.setenv("NUDGEFLOW_SENDER_STARVATION_LIMIT", "5")
    monkeypatch.setenv("NUDGEFLOW_SENDER_UNTIL_IDLE", "2.5")
    monkeypatch.setenv("NUDGEFLOW_SENDER_GROUP", "email-sender")
    monkeypatch.setenv("NUDGEFLOW_SENDER_SESSION_TIMEOUT", "10")
    options = _parse(["--group", "sms-sender", "--dedupe", "memory"])
    assert options.starvation_limit == 5 and options.until_idle_s == 2.5
    assert options.group == "sms-sender" and options.dedupe == "memory"
    assert options.session_timeout_s == 10.0


def test_channels_flag_and_environment_variable(monkeypatch):
    monkeypatch.delenv("NUDGEFLOW_SENDER_CHANNELS", raising=False)
    assert _parse([]).channels == CHANNELS
    assert _parse(["--channels", "SMS, EMAIL,SMS"]).channels == ("SMS", "EMAIL")
    monkeypatch.setenv("NUDGEFLOW_SENDER_CHANNELS", "PUSH")
    assert _parse([]).channels == ("PUSH",)
    assert _parse(["--channels", "IN_APP"]).channels == ("IN_APP",)


def test_outcomes_switch_and_environment_variable(monkeypatch):
    monkeypatch.delenv("NUDGEFLOW_SENDER_OUTCOMES", raising=False)
    assert _parse([]).outcomes is True
    assert _parse(["--no-outcomes"]).outcomes is False
    monkeypatch.setenv("NUDGEFLOW_SENDER_OUTCOMES", "off")
    assert _parse([]).outcomes is False
    assert _parse(["--outcomes"]).outcomes is True
    monkeypatch.setenv("NUDGEFLOW_SENDER_OUTCOMES", "True")
    assert _parse([]).outcomes is True
    monkeypatch.setenv("NUDGEFLOW_SENDER_OUTCOMES", "maybe")
    with pytest.raises(ValueError, match="NUDGEFLOW_SENDER_OUTCOMES must be true or false"):
        _parse([])
    assert _parse(["--no-outcomes"]).outcomes is False  # the flag wins over a bad variable


def test_cli_refuses_an_unknown_channel_without_connecting(capsys):
    assert main(["sender", "--channels", "EMAIL,FAX", "--kafka-bootstrap", "127.0.0.1:1"]) == 2
    err = capsys.readouterr().err
    assert "unknown channel(s) 'FAX'" in err
    assert "EMAIL, SMS, PUSH, IN_APP, PAID_SOCIAL" in err


def test_cli_reports_a_bad_adapter_without_connecting(capsys):
    code = main(["sender", "--adapter", "no_such_module_xyz:Adapter",
                 "--kafka-bootstrap", "127.0.0.1:1"])
    assert code == 1
    err = capsys.readouterr().err
    assert err.startswith("nudgeflow: error: --adapter no_such_module_xyz:Adapter: cannot import")


def test_cli_reports_bad_options(capsys):
    assert main(["sender", "--batch-size", "0"]) == 2
    assert "batch_size must be >= 1" in capsys.readouterr().err


def test_cli_help_lists_the_sender_flags(capsys):
    with pytest.raises(SystemExit):
        main(["sender", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for part in ("--starvation-limit N", "--until-idle SECONDS", "--adapter MODULE:ATTR",
                 "[env: NUDGEFLOW_SENDER_GROUP] [default: 'nudgeflow-sender']",
                 "--channels EMAIL,SMS,...", "default: all channels",
                 "[env: NUDGEFLOW_SENDER_CHANNELS] "
                 "[default: 'EMAIL,SMS,PUSH,IN_APP,PAID_SOCIAL']",
                 "--session-timeout SECONDS", "[env: NUDGEFLOW_SENDER_SESSION_TIMEOUT]",
                 "senders of one group share the partitions",
                 "--outcomes, --no-outcomes", "journeys wait on and branch by outcomes",
                 "[env: NUDGEFLOW_SENDER_OUTCOMES] [default: True]",
                 "--trigger-topic-prefix"):
        assert part in text


# --- the partition ledger (pure) ----------------------------------------------------------------

T0, T1 = ("triggers-p0", 0), ("triggers-p0", 1)
TOPIC_TIERS = {f"triggers-{tier.lower()}": tier for tier in TIERS}


def ledger_with(records_by_partition, batch_size=3, pause_at=None):
    ledger = sender.PartitionLedger(TOPIC_TIERS, batch_size, pause_at)
    ledger.assign(dict.fromkeys(records_by_partition, 0))
    ledger.add(record(b"v", offset, topic=t, partition=p)
               for (t, p), offsets in records_by_partition.items() for offset in offsets)
    return ledger


def test_ledger_commits_handled_offsets_while_records_of_a_partition_are_held():
    ledger = ledger_with({T0: range(5), T1: range(2)})
    assert ledger.take("P0") == [record(b"v", o, topic="triggers-p0") for o in range(3)]
    assert ledger.holds(T0) and ledger.holds(T1)
    ledger.settle(3)
    # T0 still holds offsets 3 and 4: its position (7, past a marker) must not be committed
    assert ledger.to_commit({T0: 7, T1: 3}) == {T0: 3}
    batch = ledger.take("P0")
    assert [(r.partition, r.offset) for r in batch] == [(0, 3), (0, 4), (1, 0)]
    ledger.settle(3)
    assert ledger.to_commit({T0: 6, T1: 2}) == {T0: 6, T1: 1}  # T1 offset 1 is still held
    ledger.committed({T0: 6, T1: 1})
    assert ledger.to_commit({T0: 6, T1: 2}) == {}  # nothing moved
    ledger.take("P0")
    ledger.settle(1)
    assert ledger.to_commit({T0: 6, T1: 3}) == {T1: 3}  # the position passes T1's marker


def test_ledger_puts_the_unhandled_rest_of_a_batch_back_in_order():
    ledger = ledger_with({T0: range(5)})
    ledger.take("P0")
    ledger.settle(1)  # e.g. --max-triggers, or the adapter failed on the second record
    assert ledger.to_commit({T0: 5}) == {T0: 1}
    assert [r.offset for r in ledger.take("P0")] == [1, 2, 3]
    with pytest.raises(RuntimeError, match="in flight"):
        ledger.take("P0")


def test_ledger_a_batch_never_settled_holds_its_partitions():
    ledger = ledger_with({T0: range(3)})
    ledger.take("P0")  # the batch failed (Redis down): settle() is never called
    assert ledger.buffered("P0") == 0 and ledger.holds(T0)
    assert ledger.to_commit({T0: 4}) == {}


def test_ledger_revoke_drops_buffered_records_and_forgets_the_partition():
    ledger = ledger_with({T0: range(4), T1: range(4)})
    ledger.take("P0")
    ledger.settle(3)
    assert ledger.revoke([T0]) == 1  # offset 3 is left to the next owner
    assert ledger.to_commit({T1: 4}) == {}  # T1 holds all its records
    assert [(r.partition, r.offset) for r in ledger.take("P0")] == [(1, 0), (1, 1), (1, 2)]
    ledger.settle(3)
    ledger.add([record(b"v", 4, topic="triggers-p0", partition=0)])  # fetched before the revoke
    assert ledger.stale == 1 and ledger.buffered("P0") == 1
    assert ledger.revoke([T0]) == 0


def test_ledger_pauses_a_full_tier_and_resumes_it_at_half():
    ledger = ledger_with({T0: range(4), T1: range(4)}, batch_size=2, pause_at=8)
    assert ledger.flow() == ([T0, T1], [])
    assert ledger.flow() == ([], [])  # already paused
    for expected_resume in ([], [], [T0, T1]):
        ledger.take("P0")
        ledger.settle(2)
        assert ledger.flow() == ([], expected_resume)  # 6, 4 (not below half), then 2 left
    assert ledger.paused == set()
    ledger.add(record(b"v", o, topic="triggers-p0", partition=1) for o in range(4, 10))
    assert ledger.flow() == ([T0, T1], [])  # 8 buffered again
    assert ledger.revoke([T1]) == 8 and ledger.paused == {T0}  # every record left was T1's


def test_ledger_reached_is_the_furthest_known_offset():
    ledger = ledger_with({T0: range(2)})
    ledger.assign({T1: None})
    assert ledger.reached(T0, None) == 0  # the start offset
    assert ledger.reached(T1, None) is None
    assert ledger.reached(T1, -1001) is None  # librdkafka's OFFSET_INVALID
    assert ledger.reached(T1, 5) == 5
    ledger.take("P0")
    ledger.settle(2)
    assert ledger.reached(T0, None) == 2


def test_group_lag_counts_every_partition_from_its_commit():
    tiers = {"triggers-p0": "P0", "triggers-p1": "P1"}
    latest = {("triggers-p0", 0): 10, ("triggers-p0", 1): 7, ("triggers-p1", 0): 5,
              ("triggers-p1", 1): 9}
    earliest = {("triggers-p1", 1): 4}  # records before 4 were deleted (retention)
    committed = {("triggers-p0", 0): 10, ("triggers-p0", 1): -1001, ("triggers-p1", 1): 2}
    assert sender.group_lag(tiers, committed, earliest, latest) == {"P0": 7, "P1": 10}
    # a group without a commit that starts at the end has no lag there
    assert sender.group_lag(tiers, committed, earliest, latest, start="latest") == \
        {"P0": 0, "P1": 5}


# --- run_sender's loop over a fake confluent-kafka consumer ------------------------------------


OFFSET_INVALID = -1001


class FakeMessage:
    def __init__(self, topic, partition, offset, value, error=None):
        self._topic, self._partition, self._offset, self._value = topic, partition, offset, value
        self._error = error

    def topic(self):
        return self._topic

    def partition(self):
        return self._partition

    def offset(self):
        return self._offset

    def timestamp(self):
        return (1, NOW)  # TIMESTAMP_CREATE_TIME

    def key(self):
        return b"u-1"

    def value(self):
        return self._value

    def error(self):
        return self._error


class FakeConsumer:
    """A confluent-kafka Consumer in a group over fake tier topics.

    ``logs``: {(topic, partition): [values]}; each partition with records ends with a
    transaction marker (its end offset is len + 1) that the position passes on the first fetch
    that finds no record left in it. ``delays``: {topic: n}: each fetch of the topic takes n
    calls of poll() or consume() to arrive. Rebalances (``schedule``) are served at the start
    of a poll() or consume() call, as librdkafka serves its callbacks: ("assign" | "revoke" |
    "lost", partitions, after this many calls). A partition's reading starts at the group's
    committed offset, else 0. ``async_commits_fail``: asynchronous commits are reported failed
    through ``on_commit``. ``others``: what another member read of the partitions revoked from
    (or lost by) this one, from the group's committed offset on.
    """

    def __init__(self, logs, delays=None, owned=None, async_commits_fail=False):
        self.logs = logs
        self.end = {p: len(values) + 1 if values else 0 for p, values in logs.items()}
        self.pos = {}
        self.delays = delays or {}
        self.in_flight = {}
        self.assigned = []
        self.paused = set()
        self.pause_events = []
        self.group = {}
        self.commits = []
        self.schedule = [("assign", sorted(logs) if owned is None else owned, 0)]
        self.calls = 0
        self.async_commits_fail = async_commits_fail
        self.on_commit = None
        self.others = {}
        self.extra_messages = []
        self.closed = False

    def subscribe(self, topics, on_assign, on_revoke, on_lost):
        self.topics = topics
        self.callbacks = {"assign": on_assign, "revoke": on_revoke, "lost": on_lost}

    def _serve(self):
        from confluent_kafka import TopicPartition

        due = [item for item in self.schedule if item[2] <= self.calls]
        self.schedule = [item for item in self.schedule if item[2] > self.calls]
        for kind, parts, _ in due:
            self.callbacks[kind](self, [TopicPartition(t, p) for t, p in parts])
            if kind == "assign":
                self.assigned += parts
                for part in parts:
                    self.pos.pop(part, None)
            else:
                self.assigned = [a for a in self.assigned if a not in parts]
                for part in parts:
                    start = self.group.get(part, 0)
                    self.others[part] = self.logs[part][start:]
                    self.group[part] = self.end[part]

    def _fetch(self, n):
        self.calls += 1
        self._serve()
        ready = set()
        for topic in {t for t, _ in self.assigned}:
            if self.in_flight.get(topic, 0) > 0:
                self.in_flight[topic] -= 1
            else:
                ready.add(topic)
        out, self.extra_messages = self.extra_messages, []
        for part in sorted(self.assigned):
            if part[0] not in ready or part in self.paused:
                continue
            values = self.logs[part]
            if not values:  # an empty partition: no record, no marker, no position
                continue
            offset = self.pos.get(part, self.group.get(part, 0))
            if offset >= len(values):
                self.pos[part] = self.end[part]  # only the marker is left: step over it
                continue
            while offset < len(values) and len(out) < n:
                out.append(FakeMessage(part[0], part[1], offset, values[offset]))
                offset += 1
                self.pos[part] = offset
                self.in_flight[part[0]] = self.delays.get(part[0], 0)
        return out

    def poll(self, timeout=None):
        messages = self._fetch(1)
        return messages[0] if messages else None

    def consume(self, num_messages=1, timeout=-1):
        return self._fetch(num_messages)

    def position(self, partitions):
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition,
                               self.pos.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def committed(self, partitions, timeout=None):
        from confluent_kafka import TopicPartition

        return [TopicPartition(tp.topic, tp.partition,
                               self.group.get((tp.topic, tp.partition), OFFSET_INVALID))
                for tp in partitions]

    def commit(self, offsets, asynchronous=True):
        if asynchronous and self.async_commits_fail:
            self.on_commit("REBALANCE_IN_PROGRESS", offsets)
            return None
        for tp in offsets:
            assert (tp.topic, tp.partition) in self.assigned, "committed a partition not owned"
            self.group[(tp.topic, tp.partition)] = tp.offset
        self.commits.append(({(tp.topic, tp.partition): tp.offset for tp in offsets},
                             asynchronous))
        return offsets

    def pause(self, partitions):
        self.paused.update((tp.topic, tp.partition) for tp in partitions)
        self.pause_events.append(("pause", sorted((tp.topic, tp.partition) for tp in partitions)))

    def resume(self, partitions):
        self.paused.difference_update((tp.topic, tp.partition) for tp in partitions)
        self.pause_events.append(("resume", sorted((tp.topic, tp.partition) for tp in partitions)))

    def list_topics(self, topic=None, timeout=None):
        topics = {}
        for t, p in self.logs:
            topics.setdefault(t, types.SimpleNamespace(partitions={}, error=None))
            topics[t].partitions[p] = None
        if topic is not None:  # as librdkafka answers for one topic, existing or not
            topics = {topic: topics.get(topic) or types.SimpleNamespace(
                partitions={}, error="UNKNOWN_TOPIC_OR_PART")}
        return types.SimpleNamespace(topics=topics)

    def close(self):
        from confluent_kafka import TopicPartition

        if self.assigned:  # leaving the group revokes what is assigned
            self.callbacks["revoke"](self, [TopicPartition(t, p) for t, p in self.assigned])
        self.assigned = []
        self.closed = True


class FakeOffsets:
    def __init__(self, consumer):
        self.consumer = consumer

    def latest(self, partitions):
        return {p: self.consumer.end[p] for p in partitions}

    def earliest(self, partitions):
        return dict.fromkeys(partitions, 0)


def fake_group(monkeypatch, sizes, delays=None, values=None, **kwargs):
    """Replace Kafka with a FakeConsumer: ``sizes[tier]`` triggers over two partitions."""
    logs = {}
    for tier in TIERS:
        topic = f"triggers-{tier.lower()}"
        logs[(topic, 0)], logs[(topic, 1)] = [], []
        for i in range(sizes.get(tier, 0)):
            value = (values or {}).get((tier, i)) or CODEC.encode(
                "TriggerEvent", make_trigger(f"{tier.lower()}-{i}", tier=tier))
            logs[(topic, i % 2)].append(value)
    consumer = FakeConsumer(logs, {f"triggers-{t.lower()}": d for t, d in (delays or {}).items()},
                            **kwargs)

    def open_source(cfg, options, say):
        source = sender.GroupSource(consumer, FakeOffsets(consumer), cfg.trigger_topics(),
                                    options, say)
        consumer.on_commit = source._on_commit
        source.start()
        return source

    monkeypatch.setattr(sender, "_open_source", open_source)
    return consumer


def run(options, adapter, **kwargs):
    # no producer unless a test fakes one (fake_producer)
    base = {"dedupe": "memory", "until_idle_s": 0.05, "report_every_s": 0, "batch_size": 10,
            "bad_records": "skip", "outcomes": False}
    return sender.run_sender(load_config(env={}), SenderOptions(**{**base, **options}), adapter,
                             clock=lambda: NOW, say=kwargs.pop("say", quiet), **kwargs)


def test_a_higher_tier_whose_fetch_is_in_flight_still_goes_first(monkeypatch):
    # P0's batches take 3 calls to arrive; P1..P3 have theirs at once
    consumer = fake_group(monkeypatch, dict.fromkeys(TIERS, 30), delays={"P0": 3})
    adapter = Recorder()
    report = run({"starvation_limit": 0}, adapter)
    assert [t[:2] for t in adapter.sent] == ["p0"] * 30 + ["p1"] * 30 + ["p2"] * 30 + ["p3"] * 30
    assert report.stopped == "idle"
    # commits follow the positions, markers included: nothing left to read, lag 0
    assert consumer.group == {(f"triggers-{t.lower()}", p): 16 for t in TIERS for p in (0, 1)}
    assert {tier: stats.lag for tier, stats in report.tiers.items()} == dict.fromkeys(TIERS, 0)
    assert consumer.closed


def test_the_loop_applies_the_starvation_guard(monkeypatch):
    fake_group(monkeypatch, {"P0": 100, "P3": 30})
    adapter = Recorder()
    run({"starvation_limit": 2}, adapter)
    batches = [adapter.sent[i][:2] for i in range(0, len(adapter.sent), 10)]
    assert batches[:6] == ["p0", "p0", "p3", "p0", "p0", "p3"]


def test_max_triggers_commits_only_what_was_handled(monkeypatch):
    consumer = fake_group(monkeypatch, {"P1": 30})
    adapter = Recorder()
    report = run({"max_triggers": 15}, adapter)
    assert len(adapter.sent) == 15 and report.stopped == "max-triggers"
    # batch 1: partition 0, offsets 0-9; batch 2: partition 0, offsets 10-14 (then its marker),
    # and partition 1, offsets 0-4, of which none was handed over: partition 1 is not committed
    assert adapter.sent == [f"p1-{i}" for i in range(0, 30, 2)]
    assert consumer.group == {("triggers-p1", 0): 16}
    assert report.tiers["P1"].lag == 16  # partition 1: 15 records and a marker


def test_an_adapter_failure_stops_the_sender_after_committing_the_delivered_prefix(monkeypatch):
    consumer = fake_group(monkeypatch, {"P2": 20})
    adapter = Recorder(fail_times=99, fail_on="p2-13")  # partition 1 (odd ids), offset 6
    sleeps = []
    with pytest.raises(AdapterFailedError) as info:
        run({"adapter_retries": 2}, adapter, sleep=sleeps.append)
    assert "p2-13" in str(info.value) and sleeps == [0.5, 1.0]
    report = info.value.report
    assert report.stopped == "adapter failed" and report.tiers["P2"].delivered == 16
    # batch 1 (partition 0) whole; batch 2 (partition 1) up to, not including, p2-13
    assert consumer.group == {("triggers-p2", 0): 11, ("triggers-p2", 1): 6}
    assert report.tiers["P2"].lag == 5  # p2-13 and later (and the marker) are read again


def test_the_loop_delivers_only_its_channels_and_counts_the_others_as_skipped(monkeypatch):
    values = {("P1", i): CODEC.encode("TriggerEvent", make_trigger(
        f"p1-{i}", tier="P1", channel="SMS" if i % 3 == 0 else "EMAIL")) for i in range(12)}
    consumer = fake_group(monkeypatch, {"P1": 12}, values=values)
    adapter = Recorder()
    report = run({"channels": ("SMS",)}, adapter)
    assert adapter.sent == ["p1-0", "p1-6", "p1-3", "p1-9"]  # partition 0 first, then 1
    assert (report.tiers["P1"].delivered, report.tiers["P1"].skipped) == (4, 8)
    assert report.tiers["P1"].lag == 0
    assert consumer.group == {("triggers-p1", 0): 7, ("triggers-p1", 1): 7}


def test_a_stop_request_ends_the_run_between_batches(monkeypatch):
    import threading

    fake_group(monkeypatch, {"P0": 50})
    stop = threading.Event()

    class StopAfterFirst(Recorder):
        def send(self, trigger):
            super().send(trigger)
            stop.set()

    adapter = StopAfterFirst()
    report = run({"until_idle_s": None}, adapter, stop=stop)
    assert report.stopped == "stop requested" and len(adapter.sent) == 10


def test_sigterm_finishes_the_batch_commits_and_leaves_the_group(monkeypatch):
    import signal

    consumer = fake_group(monkeypatch, {"P1": 40})

    class TermAfterFirst(Recorder):
        def send(self, trigger):
            super().send(trigger)
            if len(self.sent) == 1:
                os.kill(os.getpid(), signal.SIGTERM)  # handled: the batch goes on

    adapter = TermAfterFirst()
    report = run({"until_idle_s": None}, adapter)
    assert report.stopped == "SIGTERM" and len(adapter.sent) == 10
    assert consumer.group == {("triggers-p1", 0): 10} and consumer.closed


def p3_logs_split(consumer):
    """The P3 trigger ids by partition, as the fake log holds them."""
    return {p: [CODEC.decode(v)["trigger_id"] for v in consumer.logs[("triggers-p3", p)]]
            for p in (0, 1)}


def delivered_once_with_the_other_member(consumer, adapter):
    """Every P3 trigger went once to this sender or the member that took its partitions."""
    others = [CODEC.decode(v)["trigger_id"] for part, values in consumer.others.items()
              for v in values]
    everything = [t for ids in p3_logs_split(consumer).values() for t in ids]
    return sorted(adapter.sent + others) == sorted(everything)


def test_a_revoked_partition_is_committed_as_handled_and_its_buffer_left_to_the_next_owner(
        monkeypatch):
    consumer = fake_group(monkeypatch, {"P3": 40}, async_commits_fail=True)
    revoked = ("triggers-p3", 1)

    class RevokeMidway(Recorder):
        def send(self, trigger):
            super().send(trigger)
            if len(self.sent) == 25:  # in the batch of partition 1's offsets 0-9
                consumer.schedule.append(("revoke", [revoked], 0))

    adapter = RevokeMidway()
    lines = []
    report = run({}, adapter, say=lines.append)
    # batches: partition 0 (0-9, 10-19), partition 1 (0-9); then partition 1 was revoked with
    # offsets 10-19 buffered: the revocation committed 10 (the asynchronous commits had
    # failed) and the next owner read on from there
    assert [t for t in adapter.sent if t in p3_logs_split(consumer)[1]] == \
        p3_logs_split(consumer)[1][:10]
    assert [CODEC.decode(v)["trigger_id"] for v in consumer.others[revoked]] == \
        p3_logs_split(consumer)[1][10:]
    assert delivered_once_with_the_other_member(consumer, adapter)
    assert ({revoked: 10}, False) in consumer.commits  # the synchronous commit on revocation
    assert report.stopped == "idle" and report.tiers["P3"].delivered == 30
    assert any("revoked triggers-p3[1] (10 buffered records left to the next owner" in line
               for line in lines)
    assert any("an offset commit failed" in line for line in lines)


def test_lost_partitions_are_not_committed(monkeypatch):
    consumer = fake_group(monkeypatch, {"P3": 40}, async_commits_fail=True)
    lost = ("triggers-p3", 1)

    class LoseMidway(Recorder):
        def send(self, trigger):
            super().send(trigger)
            if len(self.sent) == 25:
                consumer.schedule.append(("lost", [lost], 0))

    adapter = LoseMidway()
    run({}, adapter)
    # another member owns it already: this one must not commit (it would overwrite that
    # member's offsets); the other reads from the last commit, so 0-9 go twice (Redis drops
    # them in a real group)
    assert not any(lost in offsets for offsets, _ in consumer.commits)
    assert [CODEC.decode(v)["trigger_id"] for v in consumer.others[lost]] == \
        p3_logs_split(consumer)[1]


def test_until_idle_waits_for_partitions_of_the_group_that_nobody_handed_over(monkeypatch):
    # partition 1 belongs to a member that died: the group moves it here once this sender,
    # idle, has seen the group's lag
    consumer = fake_group(monkeypatch, {"P2": 20}, owned=[("triggers-p2", 0)])
    lags = []
    group_lag = sender.GroupSource.lag

    def lag(source):
        lags.append(group_lag(source))
        if len(lags) == 1:
            consumer.schedule.append(("assign", [("triggers-p2", 1)], consumer.calls + 5))
        return lags[-1]

    monkeypatch.setattr(sender.GroupSource, "lag", lag)
    adapter = Recorder()
    report = run({"until_idle_s": 0.01}, adapter)
    assert sorted(adapter.sent) == sorted(f"p2-{i}" for i in range(20))
    assert lags[0]["P2"] == 11  # partition 1: 10 records and a marker, never committed
    assert report.stopped == "idle" and report.tiers["P2"].lag == 0


def test_a_failing_batch_is_not_committed(monkeypatch):
    consumer = fake_group(monkeypatch, {"P0": 30})

    class FailingSecondLookup(MemoryDedupe):
        lookups = 0

        def seen(self, ids):
            self.lookups += 1
            if self.lookups == 2:
                raise SenderError("the dedupe store (Redis at redis://cache) failed: timeout")
            return super().seen(ids)

    monkeypatch.setattr(sender, "open_dedupe", lambda cfg, options: FailingSecondLookup())
    adapter = Recorder()
    with pytest.raises(SenderError, match="dedupe store"):
        run({}, adapter)
    # batch 2 (partition 0's 10-14, partition 1's 0-4) failed before anything was sent: only
    # batch 1 is committed, on the asynchronous commit after it and not past it on close
    assert adapter.sent == [f"p0-{i}" for i in range(0, 20, 2)]
    assert consumer.group == {("triggers-p0", 0): 10} and consumer.closed


class FakeProducer:
    """confluent_kafka.Producer: keeps what was produced; ``fail`` reports an error for each."""

    def __init__(self, conf, consumer, fail=None):
        self.conf = conf
        self.consumer = consumer
        self.fail = fail
        self.pending = []
        self.written = []  # (topic, key, value)
        self.flushes = []  # the group's committed offsets at each flush

    def produce(self, topic, key=None, value=None, on_delivery=None):
        self.pending.append((topic, key, value, on_delivery))

    def flush(self, timeout=None):
        self.flushes.append(dict(self.consumer.group))
        for topic, key, value, on_delivery in self.pending:
            on_delivery(self.fail, None)
            if self.fail is None:
                self.written.append((topic, key, value))
        self.pending = []
        return 0


def fake_producer(monkeypatch, consumer, fail=None):
    import confluent_kafka

    made = []

    def producer(conf):
        made.append(FakeProducer(conf, consumer, fail))
        return made[-1]

    monkeypatch.setattr(confluent_kafka, "Producer", producer)
    return made


def test_the_loop_writes_a_delivered_outcome_per_delivery_before_committing(monkeypatch):
    values = {("P1", i): CODEC.encode("TriggerEvent", make_trigger(
        f"p1-{i}", tier="P1", user_id=f"u-{i}", expires_at=NOW - 1 if i == 4 else None))
        for i in range(20)}
    consumer = fake_group(monkeypatch, {"P1": 20}, values=values)
    producers = fake_producer(monkeypatch, consumer)
    adapter = Recorder()
    lines = []
    report = run({"outcomes": True}, adapter, say=lines.append)
    assert report.tiers["P1"].delivered == 19 and report.tiers["P1"].expired == 1
    [producer] = producers
    assert producer.conf["acks"] == "all" and producer.conf["enable.idempotence"] is True
    written = [(topic, key, CODEC.decode(value, expect="CampaignOutcome"))
               for topic, key, value in producer.written]
    # the expired trigger's EXPIRED outcome first (dropped as its batch was handed over), then
    # one DELIVERED per delivery
    assert [(topic, key, o["trigger_id"], o["outcome"]) for topic, key, o in written] == \
        [("outcomes", b"u-4", "p1-4", "EXPIRED")] + \
        [("outcomes", f"u-{t[3:]}".encode(), t, "DELIVERED") for t in adapter.sent]
    assert [o for _, _, o in written[1:]] == [
        delivered(t, user_id=f"u-{t[3:]}") for t in adapter.sent]
    # one flush per batch, each before that batch's offsets were committed
    assert producer.flushes[0] == {} and producer.flushes[1] == {("triggers-p1", 0): 10}
    assert consumer.group == {("triggers-p1", 0): 11, ("triggers-p1", 1): 11}
    assert "outcomes to outcomes" in lines[0]


def test_outcomes_that_are_not_written_stop_the_sender_before_the_commit(monkeypatch):
    consumer = fake_group(monkeypatch, {"P0": 20})
    fake_producer(monkeypatch, consumer, fail="UNKNOWN_TOPIC_OR_PART")
    adapter = Recorder()
    with pytest.raises(SenderError) as info:
        run({"outcomes": True}, adapter)
    message = str(info.value)
    assert "10 of 10 outcome(s) were not written to 'outcomes'" in message
    assert "UNKNOWN_TOPIC_OR_PART" in message and "nudgeflow stack provision" in message
    assert "sent again after a restart" in message
    assert len(adapter.sent) == 10 and consumer.group == {}  # the batch was not committed


def test_dead_letters_and_outcomes_go_to_their_own_topics(monkeypatch):
    trigger = CODEC.encode("TriggerEvent", make_trigger("p0-0", user_id="ann"))
    consumer = fake_group(monkeypatch, {"P0": 2},
                          values={("P0", 0): trigger, ("P0", 1): b"not avro at all"})
    producers = fake_producer(monkeypatch, consumer)
    run({"outcomes": True, "bad_records": "dead-letter"}, Recorder())
    written = [(topic, key, CODEC.decode_named(value)[0])
               for producer in producers for topic, key, value in producer.written]
    # a dead letter keeps the bad record's key (the fake consumer's u-1); an outcome has the user's
    assert sorted(written) == [("dead-letter", b"u-1", "DeadLetter"),
                               ("outcomes", b"ann", "CampaignOutcome")]


def test_the_loop_writes_no_outcomes_when_they_are_off(monkeypatch):
    consumer = fake_group(monkeypatch, {"P0": 5})
    producers = fake_producer(monkeypatch, consumer)
    lines = []
    run({"outcomes": False}, Recorder(), say=lines.append)
    assert producers == [] and "outcomes off" in lines[0]


def test_a_full_tier_is_paused_and_resumed_without_losing_records(monkeypatch):
    monkeypatch.setattr(sender, "PAUSE_BATCHES", 2)  # pause at 20 buffered records
    consumer = fake_group(monkeypatch, {"P3": 100})
    adapter = Recorder()
    run({}, adapter)
    partitions = [("triggers-p3", 0), ("triggers-p3", 1)]
    assert consumer.pause_events[:2] == [("pause", partitions), ("resume", partitions)]
    assert adapter.sent == [f"p3-{i}" for i in range(0, 100, 2)] + \
        [f"p3-{i}" for i in range(1, 100, 2)]
    assert consumer.group == dict.fromkeys(partitions, 51)


def test_a_consumer_error_kafka_cannot_retry_stops_the_sender_with_what_to_do(monkeypatch):
    from confluent_kafka import KafkaError

    consumer = fake_group(monkeypatch, {"P0": 5})
    consumer.extra_messages = [FakeMessage("triggers-p0", 0, -1, None,
                                           KafkaError(KafkaError.UNKNOWN_TOPIC_OR_PART))]
    with pytest.raises(SenderError, match=r"stack provision"):
        run({}, Recorder())
    assert consumer.closed


def test_open_source_configures_a_cooperative_read_committed_group_member(monkeypatch):
    import confluent_kafka

    made = {}

    class Consumer(FakeConsumer):
        def __init__(self, conf):
            made["conf"], made["consumer"] = conf, self
            super().__init__({("triggers-p0", 0): []})

    class NoOffsets:
        def __init__(self, conf):
            pass

    monkeypatch.setattr(confluent_kafka, "Consumer", Consumer)
    monkeypatch.setattr(sender, "_AdminOffsets", NoOffsets)
    options = SenderOptions(group="mail", session_timeout_s=6, start="latest")
    with pytest.raises(SenderError) as info:
        sender._open_source(load_config(env={}), options, quiet)
    # only triggers-p0 exists in the fake cluster
    assert "triggers-p1, triggers-p2, triggers-p3 do not exist" in str(info.value)
    assert "nudgeflow stack provision" in str(info.value)
    assert made["consumer"].closed
    conf = made["conf"]
    assert (conf["group.id"], conf["partition.assignment.strategy"], conf["isolation.level"],
            conf["enable.auto.commit"], conf["auto.offset.reset"], conf["session.timeout.ms"],
            conf["heartbeat.interval.ms"]) == \
        ("mail", "cooperative-sticky", "read_committed", False, "latest", 6000, 2000)


def test_session_timeout_is_validated():
    with pytest.raises(ValueError, match="session_timeout_s must be between 1 and 3600"):
        SenderOptions(session_timeout_s=0.5)
