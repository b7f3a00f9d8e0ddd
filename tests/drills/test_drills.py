"""The drill suite on the real stack: faults mid-run, nothing lost, nothing duplicated.

Reduced form by default (what CI runs with the rest of `tests`); ``nudgeflow drills`` (or
NUDGEFLOW_DRILLS=full) runs the full form: 3,000 users, 5 TaskManager kills, minute-long
outages, 100,000 fuzzed records (reduced: 5,000), two 1,000-record invalid bursts (both forms).
Each drill's checks are ``tests.drills.runner.verify``.
"""

import pytest

from tests.drills import runner
from tests.drills.conftest import full_form

pytestmark = [pytest.mark.drills, pytest.mark.integration]

FULL = full_form()
USERS = 3000 if FULL else 600


def _assert_clean(result):
    assert not result.problems, "\n".join(result.problems)


def test_taskmanager_kill_loses_and_duplicates_nothing(drill_stack, record):
    result = record(runner.drill_taskmanager_kills(
        drill_stack, runner.OwedCartTriggers(USERS), kills=5 if FULL else 1))
    _assert_clean(result)


@pytest.mark.parametrize(("server", "seconds", "wipe"), [
    ("cassandra", 60 if FULL else 15, False),
    ("kafka", 30 if FULL else 10, False),
    # Redis killed with its data directory deleted: it comes back empty and is rebuilt
    ("redis", 60 if FULL else 10, True),
])
def test_a_server_outage_loses_no_membership(drill_stack, record, server, seconds, wipe):
    result = record(runner.drill_server_outage(
        drill_stack, runner.OwedCartTriggers(USERS), server, seconds, wipe_redis=wipe))
    _assert_clean(result)


def test_fuzzed_records_all_dead_lettered_without_restart(drill_stack, record):
    """Bad records of every class among the valid workload: each in the dead-letter topic
    with its rule code, none late, the valid workload's output exactly once, 0 restarts."""
    result = record(runner.drill_fuzz(
        drill_stack, runner.OwedCartTriggers(USERS), fuzzed=100_000 if FULL else 5_000,
        heavy_cap=50 if FULL else 10))
    _assert_clean(result)


def test_invalid_bursts_change_no_output(drill_stack, record):
    """A far-future and an 11-minutes-ahead burst of invalid clicks: the valid workload's
    output record for record as in a run without them."""
    result = record(runner.drill_burst(drill_stack, USERS, burst=1000))
    _assert_clean(result)
