"""The campaign statistics operator (``udfs.flink.campaign_stats``) called directly: it writes
a unit's totals at its timer or at close, not after every fact, and loses none of them.

The reference is an independent fold of the same facts; the whole graph with real Redis and a
failover runs in tests/integration/test_closed_loop_e2e.py.
"""

import json
import random

from pyflink.common import Row

from udfs.attribution.stats import UnitStats, fact_to_doc, to_doc
from udfs.attribution.touches import ASSIGNED, CONVERTED, LiftFact
from udfs.flink.campaign_stats import WRITE_EVERY_MS, CampaignStatsFunction


class Metrics:
    def counter(self, name):
        class Counter:
            def inc(self, n=1):
                pass

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
        if state:
            self.state.values.update(state)

    def get_state(self, descriptor):
        return self.state

    def get_metrics_group(self):
        return Metrics()

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
