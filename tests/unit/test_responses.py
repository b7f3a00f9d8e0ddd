"""Tests for the simulated audience: jobs.workload.responses (pure: determinism, rates, times,
ids, attribution marks) and jobs.workload.respond (the loop over a fake source and writer, the
Kafka glue over fake confluent-kafka clients, the flags of `nudgeflow respond`)."""

from __future__ import annotations

import json
import math
import random
import types

import pytest

from jobs.cli.main import build_parser, main
from jobs.config import load_config
from jobs.sender.sender import derive_outcome_id
from jobs.workload import respond
from jobs.workload.respond import Responder, ResponderCounts, format_counts, respond_loop
from jobs.workload.responses import (
    CLICK_SCHEMA,
    NF_TRIGGER,
    OUTCOME_SCHEMA,
    ResponseSpec,
    draw,
    purchase_ids,
    respond_to_holdout,
    respond_to_trigger,
)
from schemas.codec import Codec, CodecError
from udfs.intake import SourceRecord, click_problems, outcome_problems

T0 = 1_750_000_000_000
HOUR, DAY = 3_600_000, 86_400_000
CODEC = Codec.load()
CFG = load_config(env={})
TIER_TOPICS = tuple(CFG.trigger_topics().values())


def trigger(n, channel="EMAIL", campaign="c-1", at=T0, user=None):
    """A TriggerEvent dict the codec encodes."""
    return {
        "trigger_id": f"t-{campaign}-{n}", "user_id": user or f"u-{n}", "campaign_id": campaign,
        "campaign_version": 1, "step_id": "main", "journey_id": None, "node_id": None,
        "journey_instance": None, "channel": channel, "tier": "P1", "priority_score": 1.0,
        "template_id": "tpl", "payload": {}, "segments": [], "churn_score": None,
        "model_version": None, "cause_event_id": f"e-{n}", "cause_event_time": at,
        "ingest_time": at + 1_000, "emit_time": at + 2_000, "expires_at": None,
        "explanation": {"reason": "test", "definition_versions": {}, "features": {},
                        "rivals": []},
    }


def decision(n, reason="HOLDOUT", campaign="c-1", at=T0, outcome="SUPPRESSED"):
    """A TriggerDecision dict: a holdout (SUPPRESSED, reason HOLDOUT) unless told otherwise."""
    return {
        "trigger_id": f"h-{campaign}-{n}", "user_id": f"hu-{n}", "campaign_id": campaign,
        "campaign_version": 1, "outcome": outcome, "reason_code": reason,
        "reason": "control group", "tier": "P1", "priority_score": 1.0, "channel": "EMAIL",
        "deferred_until": None, "cause_event_id": f"e-{n}", "decided_at": at,
        "emit_time": at + 2_000,
    }


def by_kind(responses):
    return {r.kind: r for r in responses}


def within(successes, n, p, sigmas=4.0):
    """The observed rate lies within ``sigmas`` standard errors of ``p``."""
    se = math.sqrt(p * (1 - p) / n)
    return abs(successes / n - p) <= sigmas * se


# --- determinism ----------------------------------------------------------------------------


def test_a_trigger_gets_the_same_responses_in_any_order_and_on_redelivery():
    spec = ResponseSpec(seed=7, p_unsubscribe=0.2, p_convert=0.3)
    triggers = [trigger(i, channel=("EMAIL", "SMS", "PUSH", "IN_APP")[i % 4]) for i in range(400)]
    first = {t["trigger_id"]: respond_to_trigger(t, spec) for t in triggers}
    shuffled = triggers[:]
    random.Random(1).shuffle(shuffled)
    again = {}
    for t in shuffled + shuffled[:50]:  # redelivered ones too
        again.setdefault(t["trigger_id"], []).append(respond_to_trigger(dict(t), spec))
    for trigger_id, answers in again.items():
        assert all(answer == first[trigger_id] for answer in answers)
    assert sum(len(r) for r in first.values()) > 200  # not vacuous: they do respond


def test_another_seed_is_another_audience_with_the_same_ids():
    triggers = [trigger(i) for i in range(300)]
    a = [respond_to_trigger(t, ResponseSpec(seed=1, p_convert=0.5)) for t in triggers]
    b = [respond_to_trigger(t, ResponseSpec(seed=2, p_convert=0.5)) for t in triggers]
    assert a != b
    ids = lambda runs: {r.record.get("outcome_id") or r.record["event_id"]  # noqa: E731
                        for rs in runs for r in rs}
    shared = ids(a) & ids(b)
    assert shared  # a trigger's open (or purchase) has one id whatever the seed
    assert all(i.startswith("e-resp-") or len(i) == 32 for i in shared)


def test_draws_are_uniform_and_fixed_by_their_three_parts():
    values = [draw(3, f"t-{i}", "open") for i in range(20_000)]
    assert all(0 <= v < 1 for v in values)
    assert abs(sum(values) / len(values) - 0.5) < 0.01
    assert sum(v < 0.1 for v in values) == pytest.approx(2_000, abs=200)
    assert draw(3, "t-1", "open") == draw(3, "t-1", "open")
    assert len({draw(3, "t-1", "open"), draw(4, "t-1", "open"), draw(3, "t-2", "open"),
                draw(3, "t-1", "click")}) == 4


# --- rates ----------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", ["EMAIL", "PUSH"])
def test_open_click_and_unsubscribe_rates_over_50k_triggers(channel):
    spec = ResponseSpec(seed=11, p_unsubscribe=0.05)
    n = 50_000
    opened = clicked = unsubscribed = 0
    for i in range(n):
        kinds = by_kind(respond_to_trigger(trigger(i, channel=channel), spec))
        opened += "OPENED" in kinds
        clicked += "CLICKED" in kinds
        unsubscribed += "UNSUBSCRIBED" in kinds
        assert "OPENED" in kinds or not ({"CLICKED", "UNSUBSCRIBED"} & set(kinds))
    assert within(opened, n, spec.open_rate(channel))
    assert within(clicked, opened, spec.click_rate(channel))  # click given open
    assert within(unsubscribed, opened, 0.05)
    assert not within(opened, n, spec.open_rate(channel) * 1.1)  # the check can fail


def test_conversions_of_treated_and_held_out_users_recover_the_true_effect():
    delta = 0.03
    spec = ResponseSpec(seed=5, p_convert=0.05, effects={"c-lift": delta})
    n = 50_000

    def converted(responses):
        return any(r.kind == "PURCHASE" for r in responses)

    treated = sum(converted(respond_to_trigger(trigger(i, campaign="c-lift"), spec))
                  for i in range(n))
    held = sum(converted(respond_to_holdout(decision(i, campaign="c-lift"), spec))
               for i in range(n))
    untouched = sum(converted(respond_to_trigger(trigger(i, campaign="c-none"), spec))
                    for i in range(n))
    p_t, p_h, p_u = treated / n, held / n, untouched / n
    se = math.sqrt(p_t * (1 - p_t) / n + p_h * (1 - p_h) / n)
    assert abs((p_t - p_h) - delta) <= 4 * se
    assert abs(p_u - p_h) <= 4 * se  # a campaign without an effect lifts nothing
    assert within(held, n, 0.05)
    assert (p_t - p_h) > 4 * se  # the effect is visible, not noise


def test_an_effect_is_clamped_to_a_probability():
    sure = ResponseSpec(p_convert=0.5, effects={"c-1": 0.9})
    never = ResponseSpec(p_convert=0.5, effects={"c-1": -1.0})
    assert sure.conversion_rate("c-1", treated=True) == 1.0
    assert never.conversion_rate("c-1", treated=True) == 0.0
    assert never.conversion_rate("c-1", treated=False) == 0.5
    assert all(any(r.kind == "PURCHASE" for r in respond_to_trigger(trigger(i), sure))
               for i in range(500))
    assert not any(r.kind == "PURCHASE" for i in range(500)
                   for r in respond_to_trigger(trigger(i), never))


# --- times, channels, attribution -------------------------------------------------------------


def test_no_response_is_earlier_than_its_cause_and_each_lies_in_its_range():
    spec = ResponseSpec(seed=3, p_unsubscribe=0.3, p_convert=0.4)
    seen = set()
    for i in range(5_000):
        at = T0 + i * 7_919
        kinds = by_kind(respond_to_trigger(trigger(i, at=at), spec))
        seen |= set(kinds)
        if "OPENED" in kinds:
            opened = kinds["OPENED"].event_time
            assert at + spec.open_delay_ms[0] <= opened <= at + spec.open_delay_ms[1]
            for later in ("CLICKED", "UNSUBSCRIBED"):
                if later in kinds:
                    t = kinds[later].event_time
                    assert opened + spec.click_delay_ms[0] <= t <= opened + spec.click_delay_ms[1]
        if "PURCHASE" in kinds:
            assert at <= kinds["PURCHASE"].event_time < at + spec.conversion_window_ms
        for held in respond_to_holdout(decision(i, at=at), spec):
            assert at <= held.event_time < at + spec.conversion_window_ms
    assert seen == {"OPENED", "CLICKED", "UNSUBSCRIBED", "PURCHASE"}


def test_responses_come_in_event_time_order():
    spec = ResponseSpec(seed=9, p_unsubscribe=0.5, p_convert=1.0, conversion_window_ms=HOUR)
    for i in range(2_000):
        times = [r.event_time for r in respond_to_trigger(trigger(i), spec)]
        assert times == sorted(times)


def test_nf_trigger_marks_exactly_the_purchases_after_a_click():
    # a short window, so that many purchases come before the click and many after it
    spec = ResponseSpec(seed=4, open_rates={"EMAIL": 1.0}, click_rates={"EMAIL": 0.5},
                        p_convert=1.0, conversion_window_ms=2 * HOUR,
                        open_delay_ms=(0, HOUR), click_delay_ms=(0, 10 * 60_000))
    after_click = before_click = no_click = 0
    for i in range(3_000):
        t = trigger(i)
        kinds = by_kind(respond_to_trigger(t, spec))
        properties = kinds["PURCHASE"].record["properties"]
        clicked = kinds.get("CLICKED")
        if clicked is not None and clicked.event_time <= kinds["PURCHASE"].event_time:
            assert properties == {NF_TRIGGER: t["trigger_id"]}
            after_click += 1
        else:
            assert properties == {}
            if clicked is None:
                no_click += 1
            else:
                before_click += 1
    assert min(after_click, before_click, no_click) > 200


def test_held_out_users_open_and_click_nothing_and_carry_no_trigger_mark():
    spec = ResponseSpec(seed=2, open_rates={"EMAIL": 1.0}, click_rates={"EMAIL": 1.0},
                        p_convert=0.5)
    answers = [respond_to_holdout(decision(i), spec) for i in range(2_000)]
    purchases = [r for rs in answers for r in rs]
    assert 800 < len(purchases) < 1_200
    assert {r.schema for r in purchases} == {CLICK_SCHEMA}
    assert all(r.record["properties"] == {} for r in purchases)
    assert all(r.user_id.startswith("hu-") for r in purchases)
    for other in ({"reason": "NO_CONSENT"}, {"outcome": "DEFERRED", "reason": "QUIET_HOURS"}):
        assert all(respond_to_holdout(decision(i, **other), spec) == [] for i in range(200))
    control = [respond_to_holdout(decision(i, "CONTROL_GROUP"), spec) for i in range(2_000)]
    assert control == answers  # the global control group is held out too


def test_paid_social_is_never_opened_but_its_users_still_convert():
    spec = ResponseSpec(open_rates={"EMAIL": 1.0, "PAID_SOCIAL": 0.0},
                        click_rates={"EMAIL": 1.0}, p_unsubscribe=1.0, p_convert=0.5)
    answers = [respond_to_trigger(trigger(i, channel="PAID_SOCIAL"), spec) for i in range(2_000)]
    kinds = {r.kind for rs in answers for r in rs}
    assert kinds == {"PURCHASE"}
    # the same spec does open every email: the channel is what stops it
    assert {r.kind for r in respond_to_trigger(trigger(1, channel="EMAIL"), spec)} >= {
        "OPENED", "CLICKED", "UNSUBSCRIBED"}
    with pytest.raises(ValueError, match="PAID_SOCIAL must be 0"):
        ResponseSpec(open_rates={"PAID_SOCIAL": 0.1})


# --- ids and records ------------------------------------------------------------------------


def test_outcome_ids_are_the_senders_and_stable():
    spec = ResponseSpec(open_rates={"SMS": 1.0}, click_rates={"SMS": 1.0}, p_unsubscribe=1.0,
                        p_convert=1.0)
    t = trigger(42, channel="SMS")
    first, second = respond_to_trigger(t, spec), respond_to_trigger(t, spec)
    for response in first:
        if response.schema == OUTCOME_SCHEMA:
            assert response.record["outcome_id"] == derive_outcome_id(
                t["trigger_id"], "SMS", response.kind)
    outcome_ids = [r.record["outcome_id"] for r in first if r.schema == OUTCOME_SCHEMA]
    assert len(set(outcome_ids)) == 3
    assert outcome_ids == [r.record["outcome_id"] for r in second if r.schema == OUTCOME_SCHEMA]
    purchase = by_kind(first)["PURCHASE"].record
    assert (purchase["event_id"], purchase["order_id"]) == purchase_ids(t["trigger_id"])
    assert purchase_ids("t-a") != purchase_ids("t-b")


def test_every_response_encodes_and_passes_the_jobs_input_checks():
    spec = ResponseSpec(seed=8, p_unsubscribe=0.3, p_convert=0.5)
    responses = [r for i in range(600) for r in respond_to_trigger(
        trigger(i, channel=("EMAIL", "SMS", "PUSH", "IN_APP", "PAID_SOCIAL")[i % 5]), spec)]
    responses += [r for i in range(200) for r in respond_to_holdout(decision(i), spec)]
    assert {r.kind for r in responses} == {"OPENED", "CLICKED", "UNSUBSCRIBED", "PURCHASE"}
    for response in responses:
        decoded = CODEC.decode(CODEC.encode(response.schema, response.record),
                               expect=response.schema)
        assert {k: decoded[k] for k in response.record} == response.record
        # fields newer than the responder's records (e.g. attribution_rule) take their default
        assert all(decoded[k] is None for k in decoded.keys() - response.record.keys())
        check = outcome_problems if response.schema == OUTCOME_SCHEMA else click_problems
        assert check(response.record, response.event_time) == []
        if response.schema == CLICK_SCHEMA:
            record = response.record
            assert (record["event_type"], record["currency"], record["quantity"],
                    record["source"]) == ("PURCHASE", "USD", 1, "WEB")
            assert 10.0 <= record["price"] <= 200.0
        else:
            assert response.record["revenue"] is None and response.record["currency"] is None


@pytest.mark.parametrize("changes, message", [
    ({"open_rates": {"EMAIL": 1.5}}, "open rate of EMAIL must be a probability"),
    ({"click_rates": {"FAX": 0.1}}, "unknown channel 'FAX'"),
    ({"p_convert": -0.1}, "p_convert must be a probability"),
    ({"effects": {"c-1": 2}}, "effect of 'c-1' must be a number in \\[-1, 1\\]"),
    ({"open_delay_ms": (10, 5)}, "open_delay_ms must be whole milliseconds"),
    ({"conversion_window_ms": 0}, "conversion_window_ms must be"),
    ({"purchase_value_usd": (5.0, 1.0)}, "purchase_value_usd must be"),
])
def test_a_bad_spec_says_what_is_wrong(changes, message):
    with pytest.raises(ValueError, match=message):
        ResponseSpec(**changes)


def test_a_record_without_its_send_time_is_refused_with_the_field_named():
    t = trigger(1)
    del t["cause_event_time"]
    with pytest.raises(ValueError, match="without cause_event_time"):
        respond_to_trigger(t, ResponseSpec())


def test_the_spec_copies_its_mappings():
    effects = {"c-1": 0.1}
    spec = ResponseSpec(effects=effects)
    effects["c-1"] = 0.9
    assert spec.effects == {"c-1": 0.1}


# --- the loop -------------------------------------------------------------------------------


class JsonCodec:
    """Decodes JSON values: lets the loop be fed HOLDOUT decisions before the schema has them."""

    def decode(self, data, expect=None):
        try:
            return json.loads(data)
        except ValueError as exc:
            raise CodecError(f"not JSON: {exc}") from exc


class FakeSource:
    """A RecordSource: hands out its records in batches, then nothing; records commits."""

    def __init__(self, batches, clock):
        self.batches = list(batches)
        self.clock = clock
        self.commits = []
        self.closed = False

    def poll(self, timeout_s):
        self.clock.now += timeout_s
        return self.batches.pop(0) if self.batches else []

    def commit(self, positions):
        self.commits.append(dict(positions))

    def close(self):
        self.closed = True


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class Written:
    def __init__(self):
        self.responses = []

    def __call__(self, responses):
        self.responses.extend(responses)


def rec(topic, offset, value, partition=0):
    return SourceRecord(topic, partition, offset, T0, b"k", value)


def json_rec(topic, offset, record, partition=0):
    return rec(topic, offset, json.dumps(record).encode(), partition)


def run(batches, spec, release="immediate", now_ms=T0 + 10 * DAY, codec=None):
    clock = FakeClock()
    source = FakeSource(batches, clock)
    responder = Responder(spec, TIER_TOPICS, CFG.trigger_decisions_topic, codec or JsonCodec(),
                          release, say=lambda _line: None)
    written = Written()
    counts = respond_loop(source, responder, written, idle_exit_s=1.0, clock=lambda: now_ms,
                          monotonic=clock, commit_every_s=0.0)
    return counts, written.responses, source, responder


def test_the_loop_answers_a_redelivered_trigger_once():
    spec = ResponseSpec(open_rates={"EMAIL": 1.0}, click_rates={"EMAIL": 1.0}, p_convert=1.0)
    p1 = CFG.trigger_topic("P1")
    first = [json_rec(p1, 0, trigger(1)), json_rec(p1, 1, trigger(2))]
    redelivered = [json_rec(p1, 2, trigger(1))]
    counts, written, source, _ = run([first, redelivered], spec)
    assert (counts.triggers, counts.duplicates) == (2, 1)
    expected = respond_to_trigger(trigger(1), spec) + respond_to_trigger(trigger(2), spec)
    assert written == sorted(expected, key=lambda r: r.event_time)  # in event-time order
    assert (counts.opens, counts.clicks, counts.conversions, counts.attributed) == (2, 2, 2, 2)
    assert counts.stopped == "idle" and counts.held == 0
    assert source.commits[-1] == {(p1, 0): 3}


def test_the_loop_answers_holdouts_and_ignores_other_decisions_and_bad_records():
    spec = ResponseSpec(p_convert=1.0)
    topic = CFG.trigger_decisions_topic
    avro = [rec(topic, 0, CODEC.encode("TriggerDecision", decision(1))),
            rec(topic, 1, CODEC.encode("TriggerDecision", decision(2, "NO_CONSENT"))),
            rec(topic, 2, CODEC.encode("TriggerDecision", decision(1))), rec(topic, 3, b""),
            rec(CFG.trigger_topic("P0"), 0, b"\xc3\x01garbage")]
    counts, written, _, _ = run([avro], spec, codec=CODEC)
    assert (counts.holdouts, counts.duplicates, counts.bad) == (1, 1, 2)
    records = [json_rec(topic, 0, decision(1)), json_rec(topic, 1, decision(2, "NO_CONSENT")),
               json_rec(topic, 2, decision(1)), rec(topic, 3, b""),
               rec(CFG.trigger_topic("P0"), 0, b"\xc3\x01garbage")]
    counts, written, _, _ = run([records[:3] + records[4:]], spec)  # JSON: decodes
    assert (counts.holdouts, counts.duplicates, counts.bad) == (1, 1, 1)
    assert [r.kind for r in written] == ["PURCHASE"] and written[0].user_id == "hu-1"
    assert written[0].record["properties"] == {}


def test_held_responses_wait_for_their_time_and_hold_back_the_commit():
    spec = ResponseSpec(open_rates={"EMAIL": 1.0}, click_rates={"EMAIL": 0.0}, p_convert=0.0,
                        open_delay_ms=(HOUR, HOUR))
    p2 = CFG.trigger_topic("P2")
    records = [json_rec(p2, 5, trigger(1, at=T0)), json_rec(p2, 6, trigger(2, at=T0 + DAY))]
    # the wall clock is between the two opens: the first is written, the second held
    counts, written, source, responder = run([records], spec, release="event-time",
                                             now_ms=T0 + HOUR + 1)
    assert [r.record["trigger_id"] for r in written] == [trigger(1)["trigger_id"]]
    assert (counts.opens, counts.held) == (1, 1)
    assert source.commits[-1] == {(p2, 0): 6}  # not past the trigger still waiting
    assert responder.next_due_ms() == T0 + DAY + HOUR
    later = responder.due(T0 + DAY + HOUR)
    assert [r.record["trigger_id"] for r in later] == [trigger(2)["trigger_id"]]
    assert responder.positions() == {(p2, 0): 7}


def test_format_counts_names_every_counter():
    line = format_counts(ResponderCounts(triggers=1_234, holdouts=5, opens=7, conversions=3,
                                         attributed=2, held=9, elapsed_s=1.5, stopped="idle"))
    assert "stopped: idle" in line and "1,234 trigger(s)" in line
    assert "3 conversion(s) (2 after a click)" in line and "held 9" in line


# --- the Kafka glue over fake confluent-kafka clients -------------------------------------------


class FakeMessage:
    def __init__(self, topic, partition, offset, value):
        self._args = (topic, partition, offset, value)

    def topic(self):
        return self._args[0]

    def partition(self):
        return self._args[1]

    def offset(self):
        return self._args[2]

    def value(self):
        return self._args[3]

    def key(self):
        return b"u"

    def timestamp(self):
        return (1, T0)

    def error(self):
        return None


class FakeConsumer:
    def __init__(self, conf, logs, partitions):
        self.conf, self.logs, self.partitions = conf, logs, partitions
        self.assigned, self.commits, self.closed, self.delivered = [], [], False, False

    def list_topics(self, topic=None, timeout=None):
        return types.SimpleNamespace(topics={
            t: types.SimpleNamespace(partitions=dict.fromkeys(range(n)))
            for t, n in self.partitions.items()})

    def assign(self, partitions):
        self.assigned = [(tp.topic, tp.partition, tp.offset) for tp in partitions]

    def consume(self, num_messages=1, timeout=-1):
        if self.delivered:
            return []
        self.delivered = True
        return [FakeMessage(t, p, o, v) for (t, p), values in self.logs.items()
                for o, v in enumerate(values)]

    def commit(self, offsets=None, asynchronous=True):
        assert not asynchronous
        self.commits.append({(tp.topic, tp.partition): tp.offset for tp in offsets})

    def close(self):
        self.closed = True


class FakeProducer:
    def __init__(self, conf):
        self.conf = conf
        self.written = []

    def produce(self, topic, key=None, value=None, on_delivery=None):
        self.written.append((topic, key, value))
        on_delivery(None, None)

    def flush(self, timeout=None):
        return 0


def fake_kafka(monkeypatch, logs, partitions=None):
    import confluent_kafka

    partitions = partitions or {t: 1 for t in (*TIER_TOPICS, CFG.trigger_decisions_topic)}
    made = {"consumers": [], "producers": []}

    def consumer(conf):
        made["consumers"].append(FakeConsumer(conf, logs, partitions))
        return made["consumers"][-1]

    def producer(conf):
        made["producers"].append(FakeProducer(conf))
        return made["producers"][-1]

    monkeypatch.setattr(confluent_kafka, "Consumer", consumer)
    monkeypatch.setattr(confluent_kafka, "Producer", producer)
    return made


def test_run_responder_writes_outcomes_and_purchases_to_their_topics_keyed_by_user(monkeypatch):
    spec = ResponseSpec(open_rates={"PUSH": 1.0}, click_rates={"PUSH": 1.0}, p_convert=1.0)
    p0, p3 = CFG.trigger_topic("P0"), CFG.trigger_topic("P3")
    triggers = [trigger(1, channel="PUSH", user="ann"), trigger(2, channel="PUSH", user="bob")]
    logs = {(p0, 0): [CODEC.encode("TriggerEvent", triggers[0])],
            (p3, 0): [CODEC.encode("TriggerEvent", triggers[1]),
                      CODEC.encode("TriggerEvent", triggers[0])]}  # a replay on another tier
    made = fake_kafka(monkeypatch, logs)
    clock = FakeClock()

    def monotonic():
        clock.now += 0.3
        return clock.now

    counts = respond.run_responder(CFG, spec, idle_exit_s=2.0, progress=False, group="g-test",
                                   say=lambda _line: None, clock=lambda: T0 + 10 * DAY,
                                   monotonic=monotonic)
    assert (counts.triggers, counts.duplicates, counts.opens, counts.clicks,
            counts.conversions) == (2, 1, 2, 2, 2)
    (consumer,) = made["consumers"]
    assert consumer.conf["isolation.level"] == "read_committed"
    assert consumer.conf["group.id"] == "g-test" and consumer.conf["enable.auto.commit"] is False
    assert {(t, p) for t, p, _ in consumer.assigned} == {
        (t, 0) for t in (*TIER_TOPICS, CFG.trigger_decisions_topic)}
    assert consumer.commits[-1] == {(p0, 0): 1, (p3, 0): 2} and consumer.closed
    written = [w for producer in made["producers"] for w in producer.written]
    outcomes = [(k, CODEC.decode(v, expect="CampaignOutcome")) for t, k, v in written
                if t == CFG.outcomes_topic]
    clicks = [(k, CODEC.decode(v, expect="ClickEvent")) for t, k, v in written
              if t == CFG.clicks_topic]
    assert len(outcomes) == 4 and len(clicks) == 2 and len(written) == 6
    assert all(k == record["user_id"].encode() for k, record in outcomes + clicks)
    assert {record["user_id"] for _, record in clicks} == {"ann", "bob"}
    expected = [r.record for t in triggers for r in respond_to_trigger(t, spec)]
    assert sorted(json.dumps(r, sort_keys=True) for _, r in outcomes + clicks) == sorted(
        json.dumps(r, sort_keys=True) for r in expected)
    assert all(p.conf["enable.idempotence"] and p.conf["acks"] == "all"
               for p in made["producers"])


def test_run_responder_refuses_missing_topics_and_says_what_to_do(monkeypatch):
    partitions = {t: 1 for t in TIER_TOPICS}  # no trigger-decisions topic
    made = fake_kafka(monkeypatch, {}, partitions)
    with pytest.raises(respond.ResponderError, match="stack provision"):
        respond.run_responder(CFG, ResponseSpec(), progress=False)
    assert made["consumers"][0].closed


# --- the command line -----------------------------------------------------------------------


def parse(*argv):
    return respond.options_from_args(build_parser().parse_args(["respond", *argv]))


def test_the_flags_make_the_spec(monkeypatch):
    monkeypatch.delenv("NUDGEFLOW_RESPOND_OPEN", raising=False)
    spec, options = parse("--seed", "9", "--open", "EMAIL=0.3", "--open", "sms=0.6",
                          "--click", "PUSH=0.5", "--convert", "0.04", "--unsubscribe", "0.01",
                          "--effect", "c-a=0.02", "--effect", "c-b=-0.01", "--window", "36h",
                          "--idle-exit", "5", "--release", "immediate", "--group", "g")
    assert spec.seed == 9
    assert spec.open_rates == {"EMAIL": 0.3, "SMS": 0.6, "PUSH": 0.08, "IN_APP": 0.3}
    assert spec.click_rates["PUSH"] == 0.5 and spec.click_rates["EMAIL"] == 0.2
    assert (spec.p_convert, spec.p_unsubscribe) == (0.04, 0.01)
    assert spec.effects == {"c-a": 0.02, "c-b": -0.01}
    assert spec.conversion_window_ms == 36 * HOUR
    assert options == respond.RespondOptions(5.0, "g", "immediate")
    defaults, default_options = parse()
    assert defaults == ResponseSpec() and default_options == respond.RespondOptions()


def test_the_environment_fills_in_missing_flags(monkeypatch):
    monkeypatch.setenv("NUDGEFLOW_RESPOND_EFFECT", "c-a=0.05, c-b=0.01")
    monkeypatch.setenv("NUDGEFLOW_RESPOND_CONVERT", "0.1")
    spec, _ = parse()
    assert spec.effects == {"c-a": 0.05, "c-b": 0.01} and spec.p_convert == 0.1
    spec, _ = parse("--effect", "c-c=0.2")  # a flag wins over the variable
    assert spec.effects == {"c-c": 0.2}


@pytest.mark.parametrize("argv, message", [
    (["--open", "EMIAL=0.3"], "--open EMIAL=0.3: unknown channel 'EMIAL'"),
    (["--open", "PAID_SOCIAL=0.1"], "PAID_SOCIAL (ad-audience syncs) is never opened"),
    (["--click", "EMAIL"], "--click 'EMAIL': expected CHANNEL=PROBABILITY"),
    (["--open", "EMAIL=1.5"], "--open EMAIL=1.5: must be a probability in [0, 1]"),
    (["--effect", "c-1=lots"], "--effect c-1=lots: 'lots' is not a number"),
    (["--effect", "c-1=-2"], "must be an added probability in [-1, 1]"),
    (["--convert", "1.2"], "--convert must be a probability in [0, 1], got 1.2"),
    (["--window", "3 days"], "--window 3 days: not a duration"),
    (["--idle-exit", "-1"], "--idle-exit must be >= 0 seconds"),
])
def test_bad_flags_are_one_clear_line_and_exit_2(argv, message, capsys):
    assert main(["respond", *argv]) == 2
    err = capsys.readouterr().err
    assert err.startswith("nudgeflow: error: ") and message in err
