"""The engine's shortcuts change no record (differential, on seeded workloads).

Each shortcut skips work at steps where it cannot change anything; these tests run the pure
engine over the generator's workload (``jobs.bench.domain.play``: decode, the shipped catalog,
the churn model, timers as a drain fires them) with the shortcut and with it turned off, and
compare every record each step emitted.
"""

from collections import Counter

import pytest

from jobs.bench import domain
from udfs.campaigns import arbitration


@pytest.fixture(scope="module")
def workload() -> domain.Inputs:
    return domain.build_inputs(3000, 250, seed=11, metadata_updates=0.05)


@pytest.mark.parametrize("journeys", [False, True])
def test_skipping_on_step_where_no_churn_crossing_or_due_candidate_can_be_changes_nothing(
        workload, monkeypatch, journeys):
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
        assert not asked  # the shortcut is for the job's default: no journeys defined
    else:
        assert asked[False] > 1000 and asked[True] > 10, asked
