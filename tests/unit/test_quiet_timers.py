"""The quiet release's timers (udfs.clock.QuietTimers): one Flink processing-time timer per user
on the way, never an input left without one.

A seeded model of the adapter: inputs of a few users arrive at random processing times, each
is pending until a timer of its user fires (the timer releases everything pending then); timers
fire in due order, as Flink's do. Every input must be released no later than
``quiet_release_ms`` after it arrived, as with one timer per input, with fewer timers.
"""

import heapq
import random

import pytest

from udfs.clock import QuietTimers

QUIET = 3_000


def _play(seed, instance_restarts_at=None):
    """(release delays of every input, timers registered, inputs) of one seeded run."""
    rng = random.Random(seed)
    arrivals = sorted((rng.randrange(0, 60_000), f"u{rng.randrange(5)}") for _ in range(400))
    quiet = QuietTimers(QUIET)
    timers: list[tuple[int, str]] = []  # Flink's processing-time timers: (due, user)
    pending: dict[str, list[int]] = {}  # user -> arrival times of inputs not released yet
    delays: list[int] = []
    registered = 0

    def fire_until(now):
        while timers and timers[0][0] <= now:
            due, user = heapq.heappop(timers)
            quiet.fired(user, due)
            delays.extend(due - at for at in pending.pop(user, []))

    for now, user in arrivals:
        fire_until(now)
        if instance_restarts_at is not None and now >= instance_restarts_at:
            quiet, instance_restarts_at = QuietTimers(QUIET), None  # restored: memory is empty
        pending.setdefault(user, []).append(now)
        due = quiet.register(user, now)
        if due is not None:
            heapq.heappush(timers, (due, user))
            registered += 1
    fire_until(10**9)
    return delays, registered, len(arrivals)


@pytest.mark.parametrize("seed", range(5))
def test_every_input_is_released_within_the_quiet_time_by_fewer_timers(seed):
    delays, registered, inputs = _play(seed)
    assert len(delays) == inputs  # none left pending
    assert all(0 <= d <= QUIET for d in delays)
    assert max(delays) == QUIET  # the first input of a stretch waits the whole quiet time
    assert registered < inputs / 2  # 400 inputs of 5 users in a minute: clustered


def test_a_restored_instance_forgets_and_registers_again_without_losing_an_input():
    delays, registered, inputs = _play(11, instance_restarts_at=30_000)
    assert len(delays) == inputs
    assert all(0 <= d <= QUIET for d in delays)
    assert registered < inputs


def test_an_input_after_the_timer_fired_gets_a_timer_of_its_own():
    quiet = QuietTimers(QUIET)
    assert quiet.register("ann", 1_000) == 4_000
    assert quiet.register("ann", 2_000) is None  # the 4,000 timer releases it
    assert quiet.register("bob", 2_000) == 5_000  # users do not share timers
    assert quiet.register("ann", 4_000) is None  # due now, not fired yet: it still releases
    quiet.fired("ann", 4_000)
    assert len(quiet) == 1  # only bob's is on the way
    assert quiet.register("ann", 4_001) == 7_001
    quiet.fired("ann", 4_000)  # a stale firing (an older registration) forgets nothing newer
    assert quiet.register("ann", 5_000) is None
