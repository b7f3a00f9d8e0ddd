"""The campaign statistics operator (``udfs.flink.campaign_stats``) called directly: it writes
a unit's totals at its timer or at close, not after every fact, and loses none of them.

The reference is an independent fold of the same facts; the whole graph with real Redis and a
failover runs in tests/integration/test_closed_loop_e2e.py.
"""

import json
import logging
import random

import redis
from pyflink.common import Row

from udfs.attribution.stats import UnitStats, fact_to_doc, to_doc
from udfs.attribution.touches import ASSIGNED, CONVERTED, LiftFact
from udfs.flink.campaign_stats import RETRY_MAX_MS, WRITE_EVERY_MS, CampaignStatsFunction


class Metrics:
    def __init__(self):
        self.counts = {}

    def counter(self, name):
        counts = self.counts
        counts[name] = 0

        class Counter:
            def inc(self, n=1):
                counts[name] += n

        return Counter()

    def add_group(self, key, value=None):
        return self


class KeyedState:
    """One ValueState over all keys, read and written at the current key."""

    def __init__(self, runtime):
        self.runtime, self.values = runtime, {}

    def value(self):
        return self.values.get(self.runtime.key)

    def update(self, value):
        self.values[self.runtime.key] = value


class Runtime:
    """The runtime context, the per-element context and the timer service in one."""

    def __init__(self, state=None):
        self.key, self.now, self.timers = None, 1_000_000, []
        self.state = KeyedState(self)
        self.metrics = Metrics()
        if state:
            self.state.values.update(state)

    def get_state(self, descriptor):
        return self.state

    def get_metrics_group(self):
        return self.metrics

    def timer_service(self):
        return self

    def current_processing_time(self):
        return self.now

    def register_processing_time_timer(self, at):
        self.timers.append((self.key, at))

    def get_current_key(self):
        return self.key


class Store:
    def __init__(self):
        self.writes, self.closed = [], False

    def write(self, stats):
        self.writes.append((stats.unit, json.dumps(to_doc(stats), sort_keys=True)))

    def close(self):
        self.closed = True


def _function(runtime):
    store = Store()
    function = CampaignStatsFunction(lambda: store, "definitions")
    function.open(runtime)
    return function, store


def _facts(n, seed=5):
    rng = random.Random(seed)
    return [LiftFact(rng.choice(["a", "b", "c"]), rng.choice(["treated", "holdout"]),
                     rng.choice([ASSIGNED, ASSIGNED, CONVERTED]), 1_000 + i,
                     0.0, f"t{i}", None) for i in range(n)]


def _feed(function, runtime, fact):
    runtime.key = fact.unit
    row = Row("lift", fact.unit.encode(), json.dumps(fact_to_doc(fact)).encode(), None)
    return list(function.process_element(row, runtime))


def _reference(facts):
    """Each unit's final document: the facts folded with no operator in between."""
    units = {}
    for fact in facts:
        units.setdefault(fact.unit, UnitStats(fact.unit)).observe(fact)
    return {unit: json.dumps(to_doc(stats), sort_keys=True) for unit, stats in units.items()}


def _fire(function, runtime, key):
    runtime.key = key
    assert list(function.on_timer(runtime.now, runtime)) == []  # it emits nothing


def test_a_unit_is_written_at_its_timer_with_its_latest_totals_not_per_fact():
    runtime = Runtime()
    function, store = _function(runtime)
    facts = _facts(300)
    for fact in facts[:200]:
        _feed(function, runtime, fact)
    assert store.writes == []  # nothing per fact
    # one timer per unit, WRITE_EVERY_MS ahead, set by its first pending fact
    assert sorted(runtime.timers) == [(u, 1_000_000 + WRITE_EVERY_MS) for u in "abc"]
    for unit in "abc":
        _fire(function, runtime, unit)
    assert dict(store.writes) == _reference(facts[:200]) and len(store.writes) == 3
    runtime.now += 5_000
    runtime.timers.clear()
    for fact in facts[200:]:
        _feed(function, runtime, fact)
    assert sorted({u for u, _ in runtime.timers}) == sorted({f.unit for f in facts[200:]})
    assert len(runtime.timers) == len({f.unit for f in facts[200:]})
    function.close()  # the end of the input: what is pending is written
    assert store.closed
    assert dict(store.writes) == _reference(facts)
    assert len(store.writes) == 3 + len({f.unit for f in facts[200:]})


def test_a_timer_restored_without_its_pending_totals_writes_the_states():
    runtime = Runtime()
    function, _ = _function(runtime)
    facts = _facts(120, seed=9)
    for fact in facts:
        _feed(function, runtime, fact)
    # a failover: a new instance on the checkpointed state and timers, nothing in memory
    restored_runtime = Runtime(state=runtime.state.values)
    restored, store = _function(restored_runtime)
    for unit, _ in runtime.timers:
        _fire(restored, restored_runtime, unit)
    assert dict(store.writes) == _reference(facts)
    _fire(restored, restored_runtime, "never-seen")  # no state: nothing to write
    assert len(store.writes) == 3
    restored.close()
    assert len(store.writes) == 3  # nothing was pending


def test_the_written_totals_do_not_depend_on_when_the_timers_fire():
    facts = _facts(400, seed=11)
    finals = []
    for seed in range(4):
        rng = random.Random(seed)
        runtime = Runtime()
        function, store = _function(runtime)
        for fact in facts:
            _feed(function, runtime, fact)
            if rng.random() < 0.1:  # a timer fires between two facts
                runtime.now += WRITE_EVERY_MS
                for unit in {u for u, _ in runtime.timers}:
                    _fire(function, runtime, unit)
                runtime.timers.clear()
        function.close()
        latest = {}
        for unit, doc in store.writes:
            latest[unit] = doc
        finals.append(latest)
        assert len(store.writes) < len(facts)
    assert all(final == _reference(facts) for final in finals)


class FailingStore(Store):
    """A store whose writes raise ``error`` while ``down`` is set."""

    def __init__(self, error):
        super().__init__()
        self.error, self.down, self.attempts = error, True, 0

    def write(self, stats):
        self.attempts += 1
        if self.down:
            raise self.error
        super().write(stats)


def _due(runtime):
    """Fire every timer due at the runtime's time, as Flink would; return how many fired."""
    due = [t for t in runtime.timers if t[1] <= runtime.now]
    runtime.timers[:] = [t for t in runtime.timers if t[1] > runtime.now]
    for key, _ in due:
        _fire(runtime.function, runtime, key)
    return len(due)


def _with(store):
    runtime = Runtime()
    function = CampaignStatsFunction(lambda: store, "definitions")
    function.open(runtime)
    runtime.function = function
    return runtime, function


def test_a_redis_outage_keeps_the_totals_pending_and_retries_with_backoff(caplog):
    store = FailingStore(redis.exceptions.ConnectionError("Connection refused"))
    runtime, function = _with(store)
    facts = _facts(200, seed=3)
    rng = random.Random(3)
    with caplog.at_level(logging.WARNING, logger="udfs.flink.campaign_stats"):
        for fact in facts:
            _feed(function, runtime, fact)  # facts keep being counted while Redis is down
            runtime.now += rng.randrange(0, 400)
            _due(runtime)
        # every unit still has exactly one timer, all at the end of the backoff
        assert sorted(u for u, _ in runtime.timers) == ["a", "b", "c"]
        assert len({at for _, at in runtime.timers}) == 1
        delays, attempts = [], []
        for _ in range(8):  # down for a while: the retries spread out, up to RETRY_MAX_MS
            before_attempts = store.attempts
            runtime.now = runtime.timers[0][1]
            assert _due(runtime) == 3
            # one write tried per backoff, not one per campaign: a hanging Redis costs one
            # client timeout each time
            attempts.append(store.attempts - before_attempts)
            delays.append(runtime.timers[0][1] - runtime.now)
        assert attempts == [1] * 8
        assert delays == sorted(delays) and max(delays) == RETRY_MAX_MS
        assert delays[0] > WRITE_EVERY_MS
        assert store.writes == []
        assert runtime.metrics.counts["campaign_stats_write_failures"] == store.attempts
        # one warning for the whole outage, saying the totals are kept
        warned = [r for r in caplog.records if "not written to Redis" in r.getMessage()]
        assert len(warned) == 1 and warned[0].levelno == logging.WARNING
        assert "kept in the job's state" in warned[0].getMessage()
        store.down = False  # Redis is back: the next timers write the latest totals
        runtime.now = runtime.timers[0][1]
        assert _due(runtime) == 3
    assert dict(store.writes) == _reference(facts) and len(store.writes) == 3
    assert sum("written to Redis again" in r.getMessage() for r in caplog.records) == 1
    assert runtime.timers == []  # nothing pending, nothing set
    function.close()
    assert len(store.writes) == 3
    runtime.now += WRITE_EVERY_MS  # after the outage a fact is written a second later again
    _feed(function, runtime, facts[0])
    assert runtime.timers == [(facts[0].unit, runtime.now + WRITE_EVERY_MS)]


def test_a_refused_write_is_logged_as_an_error_and_retried_the_task_goes_on(caplog):
    store = FailingStore(redis.exceptions.NoPermissionError(
        "NOPERM this user has no permissions to run the 'hset' command"))
    runtime, function = _with(store)
    facts = _facts(30, seed=4)
    with caplog.at_level(logging.WARNING, logger="udfs.flink.campaign_stats"):
        for fact in facts:
            _feed(function, runtime, fact)
        runtime.now += WRITE_EVERY_MS
        assert _due(runtime) == 3
    refused = [r for r in caplog.records if "Redis refuses" in r.getMessage()]
    assert len(refused) == 1 and refused[0].levelno == logging.ERROR
    assert "credentials and permissions" in refused[0].getMessage()
    assert "NOPERM" in refused[0].getMessage()
    store.down = False
    runtime.now += RETRY_MAX_MS
    _due(runtime)
    assert dict(store.writes) == _reference(facts)


def test_close_with_redis_down_logs_what_was_not_written_and_still_closes(caplog):
    store = FailingStore(redis.exceptions.ConnectionError("Connection refused"))
    runtime, function = _with(store)
    facts = _facts(20, seed=6)
    for fact in facts:
        _feed(function, runtime, fact)
    with caplog.at_level(logging.ERROR, logger="udfs.flink.campaign_stats"):
        function.close()
    assert store.closed and store.writes == []
    [record] = [r for r in caplog.records if "at close" in r.getMessage()]
    for unit in {f.unit for f in facts}:
        assert f"{unit} (ConnectionError: Connection refused)" in record.getMessage()
