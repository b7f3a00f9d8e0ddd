"""Lift and its interval (issue 15): Newcombe's hybrid score method, checked on the paper."""

import math

import pytest

from udfs.attribution.lift import (
    METHOD,
    ArmCounts,
    measure_lift,
    newcombe_interval,
    wilson_interval,
)


def test_newcombe_s_worked_example():
    # Newcombe (1998), example (a): 56/70 against 48/80, method 10 gives 0.0524 to 0.3339
    low, high = newcombe_interval(56, 70, 48, 80)
    assert (round(low, 4), round(high, 4)) == (0.0524, 0.3339)


def test_the_wilson_interval_of_a_proportion():
    # Newcombe (1998, single proportion), 81/263: 0.2553 to 0.3662
    low, high = wilson_interval(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    assert wilson_interval(0, 10)[0] == 0.0 and wilson_interval(10, 10)[1] == 1.0
    # a 99% interval is wider than a 95% one
    assert wilson_interval(81, 263, 0.99)[0] < low


def test_swapping_the_arms_mirrors_the_interval():
    low, high = newcombe_interval(56, 70, 48, 80)
    assert newcombe_interval(48, 80, 56, 70) == pytest.approx((-high, -low))


@pytest.mark.parametrize(("x1", "n1", "x2", "n2"), [
    (0, 10, 0, 10), (10, 10, 0, 10), (0, 5, 5, 5), (1, 1000, 0, 3), (500, 1000, 499, 1000)])
def test_the_interval_holds_the_difference_and_stays_within_minus_one_and_one(x1, n1, x2, n2):
    low, high = newcombe_interval(x1, n1, x2, n2)
    assert -1 <= low <= x1 / n1 - x2 / n2 <= high <= 1


def test_the_interval_narrows_with_more_data():
    small = newcombe_interval(56, 70, 48, 80)
    large = newcombe_interval(560, 700, 480, 800)
    assert large[1] - large[0] < (small[1] - small[0]) / 2


def test_measure_lift_of_the_example():
    lift = measure_lift(ArmCounts(70, 56, 1400.0), ArmCounts(80, 48, 900.0))
    assert lift.enough_data and lift.method == METHOD and lift.confidence == 0.95
    assert (lift.treated_rate, lift.holdout_rate) == (0.8, 0.6)
    assert lift.difference == pytest.approx(0.2)
    assert (round(lift.low, 4), round(lift.high, 4)) == (0.0524, 0.3339)
    assert lift.relative == pytest.approx(1 / 3)
    assert lift.revenue_per_send == 20.0
    assert lift.note == ""


@pytest.mark.parametrize(("treated", "holdout", "missing"), [
    (ArmCounts(70, 56, 10.0), ArmCounts(), "no holdout assignments yet"),
    (ArmCounts(), ArmCounts(80, 48), "no treated assignments yet"),
    (ArmCounts(), ArmCounts(), "no treated and no holdout assignments yet"),
])
def test_an_empty_arm_is_not_enough_data(treated, holdout, missing):
    lift = measure_lift(treated, holdout)
    assert not lift.enough_data
    assert (lift.difference, lift.low, lift.high, lift.relative) == (None, None, None, None)
    assert lift.note == f"not enough data: {missing}"
    assert lift.treated_rate == treated.rate and lift.holdout_rate == holdout.rate


def test_a_holdout_without_conversions_has_no_relative_lift():
    lift = measure_lift(ArmCounts(100, 5), ArmCounts(20, 0))
    assert lift.enough_data and lift.difference == 0.05 and lift.relative is None
    assert "relative lift undefined" in lift.note
    assert lift.revenue_per_send == 0.0


def test_counts_add_up_and_refuse_more_conversions_than_assignments():
    counts = ArmCounts().add(assigned=3).add(converted=1, revenue=9.5)
    assert counts == ArmCounts(3, 1, 9.5) and math.isclose(counts.rate, 1 / 3)
    with pytest.raises(ValueError, match=r"converted \(2\) must be between 0 and assigned \(1\)"):
        ArmCounts(1, 2)
    with pytest.raises(ValueError, match="confidence"):
        measure_lift(ArmCounts(1, 1), ArmCounts(1, 0), confidence=95)
