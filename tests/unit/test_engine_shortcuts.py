"""The engine's shortcuts change no record (differential, on seeded workloads).

Each shortcut skips work at steps where it cannot change anything; these tests run the pure
engine over the generator's workload (``jobs.bench.domain.play``: decode, the shipped catalog,
the churn model, timers as a drain fires them) with the shortcut and with it turned off, and
compare every record each step emitted.
"""

from collections import Counter

import pytest

from jobs.bench import domain
from tests.as_python import rerun_as_python
from udfs.campaigns import arbitration


@pytest.fixture(scope="module")
def workload() -> domain.Inputs:
    return domain.build_inputs(3000, 250, seed=11, metadata_updates=0.05)


@pytest.mark.parametrize("journeys", [False, True])
def test_skipping_on_step_where_no_churn_crossing_or_due_candidate_can_be_changes_nothing(
        workload, monkeypatch, journeys, request):
    """Journeys on, this also skips the clicks of users with no journey instance running.

    Turned off (``may_decide`` always true), every step that watches the churn score or a
    journey's click runs both ``on_step``s, as before the shortcut.
    """
    if rerun_as_python(request):  # it patches arbitration
        return
    rules = domain.shipped_rules(journeys=journeys)
    asked: Counter[bool] = Counter()
    may_decide = arbitration.may_decide

    def counted(*args):
        asked[answer := may_decide(*args)] += 1
        return answer

    monkeypatch.setattr(arbitration, "may_decide", counted)
    fast = domain.play(workload, rules, keep=True, watermark_every=200)
    monkeypatch.setattr(arbitration, "may_decide", lambda *args: True)
    full = domain.play(workload, rules, keep=True, watermark_every=200)
    assert fast.emitted == full.emitted
    triggers = Counter(t["campaign_id"] for _, step in full.emitted for t in step["triggers"])
    assert triggers["churn-retention-offer"] > 0  # crossings happen in this workload
    if journeys:
        moves = Counter(what for _, step in full.emitted for *_, what in step["journey_moves"])
        assert moves["entered"] > 10 and moves["converted"] > 0, moves  # instances run
    assert asked[False] > 1000 and asked[True] > 10, asked


@pytest.mark.parametrize("journeys", [False, True])
def test_handing_the_gates_candidates_on_to_on_step_changes_nothing(
        workload, monkeypatch, journeys, request):
    """The engine's gate finds the candidates once (no kept score: the widest), narrows them
    with the kept score (``still_fired``) and hands them to ``on_step``.

    Turned off: the gate does not narrow them, and ``on_step`` finds its own again.
    """
    if rerun_as_python(request):  # it patches arbitration
        return
    rules = domain.shipped_rules(journeys=journeys)
    seen: Counter[str] = Counter()
    on_step, still_fired = arbitration.on_step, arbitration.still_fired

    def counted_on_step(*args):
        seen["handed"] += bool(args[6])
        return on_step(*args)

    def counted_still_fired(*args):
        seen[f"still_fired={(answer := still_fired(*args))}"] += 1
        return answer

    monkeypatch.setattr(arbitration, "on_step", counted_on_step)
    monkeypatch.setattr(arbitration, "still_fired", counted_still_fired)
    fast = domain.play(workload, rules, keep=True, watermark_every=200)
    monkeypatch.setattr(arbitration, "on_step", lambda *args: on_step(*args[:6]))
    monkeypatch.setattr(arbitration, "still_fired", lambda *args: True)
    full = domain.play(workload, rules, keep=True, watermark_every=200)
    assert fast.emitted == full.emitted
    # candidates were handed on, and crossings seen before were dropped at the gate
    assert seen["handed"] > 100 and seen["still_fired=False"] > 10, seen


@pytest.mark.parametrize("journeys", [False, True])
def test_the_campaign_index_by_trigger_changes_nothing(workload, monkeypatch, journeys, request):
    """``Firing`` asks only the campaigns a step's ENTERs, click type or score can fire.

    Turned off: every campaign is asked through ``may_fire``, as ``find_candidates`` does.
    """
    if rerun_as_python(request):  # it patches arbitration
        return
    rules = domain.shipped_rules(journeys=journeys)
    asked: Counter[str] = Counter()
    may_fire = arbitration.Firing.may_fire

    def counted(self, facts):
        found = may_fire(self, facts)
        asked["steps"] += 1
        asked["campaigns"] += len(found)
        return found

    def scan(self, facts):
        return [c for c in self.campaigns if c.enabled and arbitration.may_fire(c.trigger, facts)]

    monkeypatch.setattr(arbitration.Firing, "may_fire", counted)
    fast = domain.play(workload, rules, keep=True, watermark_every=200)
    monkeypatch.setattr(arbitration.Firing, "may_fire", scan)
    full = domain.play(workload, rules, keep=True, watermark_every=200)
    assert fast.emitted == full.emitted
    assert sum(bool(step["triggers"]) for _, step in full.emitted) > 50
    # most steps ask no campaign at all
    assert asked["steps"] > 3000 and asked["campaigns"] < asked["steps"] / 2, asked
