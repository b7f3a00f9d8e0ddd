"""The clock's due-time answers (read several times a step) against their plain definitions."""

import random

from udfs.clock import Pending, UserClock, decode_clock, encode_clock


def _plain_first(clock: UserClock) -> Pending | None:
    return min(clock.pending, key=Pending.order) if clock.pending else None


def _plain_check(clock: UserClock) -> int | None:
    times = [t for t in (clock.due_ms, clock.campaign_due_ms, clock.recheck_ms, clock.expiry_ms)
             if t is not None]
    return min(times) if times else None


def _plain_wake(clock: UserClock) -> int | None:
    times = [p.time_ms for p in clock.pending]
    check = _plain_check(clock)
    if check is not None:
        times.append(check)
    return min(times) if times else None


def test_first_pending_next_check_and_wake_answer_as_their_plain_definitions():
    """Seeded clocks: any of the four due times unset, ties, zero to four pending inputs."""
    rng = random.Random(3)
    times = [None, 5, 10, 10, 20, 30]
    for n in range(2000):
        clock = UserClock(clock_ms=rng.choice([None, 1]), due_ms=rng.choice(times),
                          campaign_due_ms=rng.choice(times), recheck_ms=rng.choice(times),
                          expiry_ms=rng.choice(times))
        for i in range(rng.randrange(5)):
            clock.add(Pending(rng.choice([1, 10, 15, 40]), rng.randrange(3), f"k{i}", b"x"))
        raw = encode_clock(clock)
        assert clock.first_pending() is _plain_first(clock), n
        assert clock.next_check_ms() == _plain_check(clock), n
        assert clock.wake_ms() == _plain_wake(clock), n
        assert encode_clock(clock) == raw  # asking changes nothing
        assert encode_clock(decode_clock(raw)) == raw
