"""The quiet release's one processing-time timer per stretch of waiting (``udfs.clock``).

A model of Flink's timer service (timers by time, per user) drives ``arm_quiet_release`` and
``quiet_release_action`` the way ``UserEngineFunction`` does, and checks what the old rule (a
timer per input, never deleted) guaranteed: an input that waits while the watermark stands
still is released ``quiet_release_ms`` after waiting began; and what it did not: no timer
outlives the wait, and a moving watermark releases nothing by processing time.
"""

from __future__ import annotations

from udfs.clock import (
    CLICK_RANK,
    IGNORE,
    REARM,
    RELEASE,
    Pending,
    UserClock,
    arm_quiet_release,
    quiet_release_action,
)

QUIET = 3_000


def _input(t: int) -> Pending:
    return Pending(t, CLICK_RANK, f"e{t}", b"x")


class Timers:
    """Registered processing-time timers of one user, as Flink keeps them (a set of times)."""

    def __init__(self) -> None:
        self.times: set[int] = set()
        self.registered = self.deleted = 0

    def apply(self, register: int | None, delete: int | None) -> None:
        if register is not None:
            self.times.add(register)
            self.registered += 1
        if delete is not None:
            self.times.discard(delete)
            self.deleted += 1


def test_one_timer_per_stretch_of_waiting_deleted_when_nothing_waits():
    clock, timers = UserClock(), Timers()
    for n in range(5):  # five inputs arrive 100 ms apart while the first still waits
        clock.add(_input(1_000 + n))
        timers.apply(*arm_quiet_release(clock, 10_000 + 100 * n, lambda: 500, QUIET))
    assert timers.times == {13_000} and timers.registered == 1
    clock.pending.clear()  # the watermark passed them all: applied
    timers.apply(*arm_quiet_release(clock, 11_000, lambda: 1_200, QUIET))
    assert timers.times == set() and timers.deleted == 1
    assert (clock.quiet_ms, clock.quiet_watermark_ms) == (None, None)


def test_a_quiet_stream_releases_what_waits_when_the_timer_fires():
    clock = UserClock(pending=[_input(1_000)])
    register, _ = arm_quiet_release(clock, 10_000, lambda: 500, QUIET)
    assert register == 13_000
    assert quiet_release_action(clock, 13_000, 500) == RELEASE  # the watermark stood still
    assert clock.quiet_ms is None  # the timer is spent


def test_a_moving_watermark_rearms_instead_of_releasing():
    clock = UserClock(pending=[_input(5_000)])
    arm_quiet_release(clock, 10_000, lambda: 500, QUIET)
    assert quiet_release_action(clock, 13_000, 900) == REARM
    register, _ = arm_quiet_release(clock, 13_000, lambda: 900, QUIET)
    assert register == 16_000 and clock.quiet_watermark_ms == 900
    assert quiet_release_action(clock, 16_000, 900) == RELEASE


def test_timers_of_an_older_build_release_once_and_are_otherwise_ignored():
    """A savepoint of the build with one timer per input: its clock has no quiet timer."""
    clock = UserClock(pending=[_input(1_000)])
    assert quiet_release_action(clock, 12_345, 500) == RELEASE  # adopts the old rule
    assert quiet_release_action(UserClock(), 12_346, 500) == IGNORE  # nothing waits
    armed = UserClock(pending=[_input(1_000)])
    arm_quiet_release(armed, 20_000, lambda: 500, QUIET)
    assert quiet_release_action(armed, 12_347, 500) == IGNORE  # not this stretch's timer
    assert armed.quiet_ms == 23_000


def test_nothing_is_armed_with_the_release_off_and_the_watermark_is_read_only_to_arm():
    reads: list[int] = []

    def watermark() -> int:
        reads.append(1)
        return 0

    clock = UserClock(pending=[_input(1_000)])
    assert arm_quiet_release(clock, 10_000, watermark, 0) == (None, None)
    assert arm_quiet_release(UserClock(), 10_000, watermark, QUIET) == (None, None)
    assert reads == []
