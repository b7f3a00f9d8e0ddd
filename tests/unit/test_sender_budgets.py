"""Send budgets and admission, without Redis: the GCRA arithmetic against an independent
reference (a leaky bucket), budget parsing, tier-graded tolerance, admission in deadline order,
expiry while waiting, preemption, out-of-order settling, and the KPIs."""

import random

import pytest

from jobs.sender.budgets import (
    BudgetError,
    Limit,
    MemoryBudgets,
    admit_limits,
    budgets_text,
    gcra,
    parse_budget,
    parse_limits,
    tier_tolerance_ms,
)
from jobs.sender.kpis import Delivery, DeliveryKpis, PrometheusKpis, format_kpis, percentile
from jobs.sender.sender import MemoryDedupe, PartitionLedger, process_batch
from tests.unit.test_sender import CODEC, GROUP, NOW, Recorder, encoded, make_trigger, quiet


class LeakyBucket:
    """The continuous-state leaky bucket (ITU-T I.371), equivalent to GCRA by definition: a
    bucket of ``limit`` ms that drains 1 ms per ms and gains ``increment`` per cell admitted."""

    def __init__(self, increment, limit):
        self.increment, self.limit = increment, limit
        self.level, self.last = 0.0, None

    def offer(self, now):
        level = 0.0 if self.last is None else max(0.0, self.level - (now - self.last))
        if level > self.limit:
            return False
        self.level, self.last = level + self.increment, now
        return True


def test_gcra_agrees_with_a_leaky_bucket_on_random_arrivals():
    rng = random.Random(18)
    for interval, burst in [(20.0, 10), (20.0, 1), (60.0, 100), (250.0, 3)]:
        # intervals exact in binary floating point: the reference sums in another order, and
        # at an exact tie 1e-13 apart would decide differently
        tolerance = (burst - 1) * interval
        bucket = LeakyBucket(interval, tolerance)
        tat, now = None, 0.0
        for _ in range(3000):
            now += rng.choice([0.0, 0.5, 3.0, interval / 2, interval, 5 * interval])
            ok, new_tat, wait = gcra(tat, now, interval, tolerance)
            assert ok == bucket.offer(now), (interval, burst, now)
            if ok:
                tat = new_tat
            else:  # the wait is exact: admitted at now + wait, not a moment before
                assert wait > 0
                assert gcra(tat, now + wait, interval, tolerance)[0]
                assert not gcra(tat, now + wait - 0.01, interval, tolerance)[0]


def test_gcra_admits_a_burst_then_the_sustained_rate():
    limit = Limit(50, "s", 10)  # T = 20 ms, tau = 180 ms
    tat, admitted = None, []
    for now in range(0, 2000):  # someone asks every millisecond for two seconds
        ok, new_tat, _ = gcra(tat, now, limit.interval_ms, limit.tolerance_ms)
        if ok:
            tat = new_tat
            admitted.append(now)
    assert admitted[:10] == [0] * 1 + list(range(1, 10))  # the bucket: 10 at once
    # in any one-second window at most budget + bucket = 60
    assert max(sum(t <= s < t + 1000 for s in admitted) for t in range(0, 1000)) <= 60
    # the burst in the first 10 ms (TAT reaches 200), then one per 20 ms from 20 to 1980 ms
    assert len(admitted) == 10 + 99 and admitted[10:12] == [20, 40]


def test_lower_tiers_get_a_smaller_tolerance_so_the_bucket_is_left_to_higher_tiers():
    limit = Limit(50, "s", 9)  # tau = 160 ms
    assert [tier_tolerance_ms(limit, k) for k in range(4)] == [160, 120, 80, 40]
    budgets = MemoryBudgets({"SMS": [limit]}, clock_ms=lambda: 1000)
    p3 = [budgets.admit("SMS", "P3").admitted for _ in range(9)]
    assert p3 == [True, True, True, False, False, False, False, False, False]
    p0 = [budgets.admit("SMS", "P0").admitted for _ in range(7)]
    assert p0 == [True] * 6 + [False]  # the six cells P3 could not take are P0's


def test_several_limits_all_must_admit_and_only_then_do_they_move():
    limits = parse_limits("2/s@2,3/min@3")
    tats: dict = {}
    answers = []
    for now in (0, 1, 2, 1000, 2000):
        admission, updates = admit_limits(tats, now, limits, 0)
        tats.update(updates)
        answers.append((admission.admitted, round(admission.wait_ms)))
    # two at once (per second), a third waits for the second's cell; the third of the minute
    # at 1 s; then the minute's budget is spent: wait until a minute cell frees (20 s after 0)
    assert answers == [(True, 0), (True, 0), (False, 498), (True, 0), (False, 18000)]


def test_budget_parsing():
    assert parse_budget("SMS=50/s") == ("SMS", (Limit(50, "s", 50),))
    assert parse_budget(" EMAIL = 1000/min@100, 20000/day") == (
        "EMAIL", (Limit(1000, "min", 100), Limit(20000, "day", 20000)))
    assert budgets_text(parse_limits("50/s@10,2000/min")) == "50/s@10,2000/min@2000"
    for bad, message in [("SMS", "CHANNEL=COUNT"), ("FAX=1/s", "unknown channel"),
                         ("SMS=50/week", "COUNT/UNIT"), ("SMS=0/s", ">= 1"),
                         ("SMS=5/s@0", ">= 1")]:
        with pytest.raises(BudgetError, match=message):
            parse_budget(bad)


class Clock:
    def __init__(self, now=NOW):
        self.now = now
        self.slept = 0.0

    def __call__(self):
        return int(self.now)

    def sleep(self, seconds):
        self.now += seconds * 1000
        self.slept += seconds


def run(batch, budgets, clock, **kwargs):
    adapter = Recorder()
    outcome = process_batch(batch, codec=CODEC, dedupe=MemoryDedupe(), adapter=adapter,
                            now_ms=clock(), group=GROUP, say=quiet, clock=clock,
                            sleep=clock.sleep, budget=budgets, **kwargs)
    return adapter, outcome


def test_admission_is_in_deadline_order_and_waits_exactly_for_the_budget():
    clock = Clock()
    budgets = MemoryBudgets({"SMS": parse_limits("10/s@1")}, clock)
    deadlines = [NOW + 60_000, NOW + 5_000, None, NOW + 10_000]
    batch = [encoded(make_trigger(f"t{i}", tier="P2", channel="SMS", expires_at=d), i)
             for i, d in enumerate(deadlines)]
    adapter, outcome = run(batch, budgets, clock)
    assert adapter.sent == ["t1", "t3", "t0", "t2"]
    assert [d.delivered_at - NOW for d in outcome.deliveries] == [0, 100, 200, 300]
    assert sorted(outcome.handled_at) == [0, 1, 2, 3] and clock.slept == pytest.approx(0.3)


def test_other_channels_go_on_while_one_waits_for_its_budget():
    clock = Clock()
    budgets = MemoryBudgets({"SMS": parse_limits("1/s@1")}, clock)
    batch = [encoded(make_trigger("s1", channel="SMS"), 0),
             encoded(make_trigger("s2", channel="SMS"), 1),
             encoded(make_trigger("e1", channel="EMAIL"), 2)]
    adapter, _ = run(batch, budgets, clock)
    assert adapter.sent == ["s1", "e1", "s2"]


def test_a_trigger_whose_deadline_passes_while_it_waits_is_expired_once():
    clock = Clock()
    budgets = MemoryBudgets({"SMS": parse_limits("1/s@1")}, clock)
    expired = []
    batch = [encoded(make_trigger("first", tier="P3", channel="SMS", expires_at=NOW + 100), 0),
             encoded(make_trigger("late", tier="P3", channel="SMS", expires_at=NOW + 500), 1),
             encoded(make_trigger("later", tier="P3", channel="SMS", expires_at=NOW + 5_000), 2)]
    adapter = Recorder()
    adapter.expired = lambda trigger: expired.append((trigger["trigger_id"], clock()))
    dedupe = MemoryDedupe()
    outcome = process_batch(batch, codec=CODEC, dedupe=dedupe, adapter=adapter, now_ms=NOW,
                            group=GROUP, say=quiet, clock=clock, sleep=clock.sleep,
                            budget=budgets)
    assert adapter.sent == ["first", "later"]
    assert [t for t, _ in expired] == ["late"] and NOW + 500 < expired[0][1] <= NOW + 510
    assert outcome.expired == 1 and outcome.expirations == [("P3", "SMS")]
    assert outcome.deliveries[1].delivered_at == NOW + 1000  # waited, not dropped
    assert len(dedupe) == 3  # the expired one is marked: the group drops it once


def test_a_waiting_batch_yields_to_a_higher_tier_and_keeps_the_rest():
    clock = Clock()
    budgets = MemoryBudgets({"SMS": parse_limits("1/s@1")}, clock)
    batch = [encoded(make_trigger(f"p3-{i}", tier="P3", channel="SMS"), i) for i in range(3)]
    asked = []

    def preempt():
        asked.append(clock())
        return len(asked) >= 3  # a P0 batch arrived meanwhile

    adapter, outcome = run(batch, budgets, clock, preempt=preempt)
    assert adapter.sent == ["p3-0"] and outcome.preempted
    assert outcome.handled_at == [0] and outcome.expired == 0  # the rest waits, not dropped
    assert clock.slept <= 0.25  # preempt is asked at least every MAX_BUDGET_WAIT_S


def test_the_ledger_settles_out_of_order_without_committing_past_an_open_record():
    ledger = PartitionLedger({"triggers-p0": "P0"}, batch_size=4)
    ledger.assign({("triggers-p0", 0): 0})
    ledger.add([encoded(make_trigger(f"t{i}"), i) for i in range(4)])
    ledger.take("P0")
    ledger.settle([0, 2, 3])  # offset 1 still waits for budget
    assert ledger.to_commit({("triggers-p0", 0): 4}) == {("triggers-p0", 0): 1}
    assert [r.offset for r in ledger.take("P0")] == [1]
    ledger.settle([0])
    assert ledger.to_commit({("triggers-p0", 0): 4}) == {("triggers-p0", 0): 4}


def test_kpis_on_time_rate_and_queue_wait():
    kpis = DeliveryKpis()
    kpis.record([Delivery("P0", "SMS", NOW, NOW + 100, NOW + 50),
                 Delivery("P0", "SMS", NOW, NOW + 100, NOW + 150),
                 Delivery("P0", "EMAIL", NOW, None, NOW + 10)],
                [("P0", "SMS")], {"P0": 2})
    assert kpis.on_time_rate("P0", "SMS") == 1 / 3
    assert kpis.on_time_rate("P0") == 2 / 4
    assert kpis.on_time_rate("P3") is None
    assert kpis.wait_percentiles("P0") == (50, 150)
    text = format_kpis(kpis)
    assert "P0/SMS" in text and "33.3%" in text and "50.0%" in text
    assert percentile(range(1, 101), 0.99) == 99 and percentile([], 0.5) is None


def test_prometheus_metrics_are_exposed():
    from prometheus_client import generate_latest

    metrics = PrometheusKpis(0, serve=False)
    metrics.record([Delivery("P1", "SMS", NOW, NOW + 100, NOW + 50)], [("P1", "SMS")],
                   {"P1": 3})
    metrics.set_utilisation({"SMS": 0.5})
    text = generate_latest(metrics.registry).decode()
    assert 'nudgeflow_sender_delivered_total{channel="SMS",tier="P1"} 1.0' in text
    assert 'nudgeflow_sender_expired_total{channel="SMS",tier="P1"} 1.0' in text
    assert 'nudgeflow_sender_deduped_total{tier="P1"} 3.0' in text
    assert 'nudgeflow_sender_budget_utilisation{channel="SMS"} 0.5' in text
    assert "nudgeflow_sender_queue_wait_seconds_bucket" in text
