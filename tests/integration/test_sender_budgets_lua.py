"""The GCRA admission script (jobs.sender.budgets.GCRA_LUA) on the real Redis.

Keys under a unique prefix; the script is driven with explicit times (its test-only ARGV) and
checked against the pure ``admit_limits`` on the same sequence, then once on the Redis clock.
"""

import random
import uuid

import pytest
import redis

from jobs.config import load_config
from jobs.sender.budgets import RedisBudgets, admit_limits, parse_limits
from udfs.campaigns.grammar import TIERS
from udfs.stores import keys

pytestmark = pytest.mark.integration


@pytest.fixture
def budgets(local_stack):
    cfg = load_config(env={})
    prefix = f"it-budget-{uuid.uuid4().hex[:8]}"
    client = redis.Redis.from_url(cfg.redis_url)
    yield RedisBudgets(client, prefix, "g", refresh_s=0)
    for key in client.scan_iter(match=f"{prefix}:*"):
        client.delete(key)
    client.close()


def test_the_script_agrees_with_the_pure_gcra(budgets):
    limits = parse_limits("50/s@10,600/min@30")
    budgets.set({"SMS": limits})
    assert budgets.get() == {"SMS": limits}
    rng = random.Random(18)
    tats, now = {}, 1_750_000_000_000.0
    for _ in range(500):
        now += rng.choice([0.0, 1.0, 7.5, 20.0, 150.0])
        tier = rng.randrange(len(TIERS))
        expected, updates = admit_limits(tats, now, limits, tier)
        tats.update(updates)
        got = budgets.admit("SMS", TIERS[tier], now_ms=now)
        assert got.admitted == expected.admitted
        assert got.wait_ms == pytest.approx(expected.wait_ms, abs=0.002)
        assert got.budget == "50/s@10,600/min@30"


def test_unbudgeted_channels_pass_and_a_runtime_change_applies_at_once(budgets):
    assert budgets.admit("EMAIL", "P3").admitted
    budgets.set({"EMAIL": parse_limits("1/min@1")})
    assert budgets.admit("EMAIL", "P0", now_ms=1000).admitted
    refused = budgets.admit("EMAIL", "P0", now_ms=1001)
    assert not refused.admitted and refused.wait_ms == pytest.approx(59_999)
    budgets.set({"EMAIL": parse_limits("100/s@1")})  # raised while senders run
    assert budgets.admit("EMAIL", "P0", now_ms=1001).admitted
    budgets.remove(["EMAIL"])
    assert all(budgets.admit("EMAIL", "P0", now_ms=1002).admitted for _ in range(5))


def test_the_redis_clock_and_the_admission_counter(budgets):
    budgets.set({"SMS": parse_limits("5/s@5")})
    answers = [budgets.admit("SMS", "P0") for _ in range(7)]
    assert [a.admitted for a in answers] == [True] * 5 + [False] * 2
    assert 0 < answers[-1].wait_ms <= 200
    used = budgets.client.hgetall(keys.budget_used(budgets.prefix, "g", "SMS"))
    assert sum(int(v) for v in used.values()) == 5
    assert budgets.client.pttl(keys.budget_state(budgets.prefix, "g", "SMS")) > 0
