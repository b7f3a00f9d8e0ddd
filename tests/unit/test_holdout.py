"""Holdout assignment (issue 15): stable, the requested share, independent across scopes."""

import pytest

from udfs.attribution.holdout import (
    CONTROL,
    HOLDOUT,
    TREATED,
    ControlGroup,
    assign_arm,
    assignment_point,
    held_out,
    in_control_group,
)

USERS = [f"user-{i}" for i in range(100_000)]


def test_a_known_point_never_changes():
    # pinned, so the point is the same in every process and release: Python's hash() (salted
    # per process), a new hash, encoding or scope format would move every user's arm
    assert assignment_point("nudgeflow-holdout-v1", "campaign:c1", "user-42") == \
        0.11811372630360503


def test_assignment_is_stable_across_calls():
    first = [held_out(u, "c1", 0.1) for u in USERS[:2000]]
    assert first == [held_out(u, "c1", 0.1) for u in USERS[:2000]]


@pytest.mark.parametrize("share", [0.05, 0.10, 0.50])
def test_the_campaign_holdout_takes_the_requested_share_within_one_percent(share):
    taken = sum(held_out(u, "cart-abandonment-email", share) for u in USERS) / len(USERS)
    assert abs(taken - share) < 0.01, taken


@pytest.mark.parametrize("share", [0.05, 0.10, 0.50])
def test_the_control_group_takes_the_requested_share_within_one_percent(share):
    taken = sum(in_control_group(u, ControlGroup(share, "s1")) for u in USERS) / len(USERS)
    assert abs(taken - share) < 0.01, taken


def test_campaigns_are_held_out_independently():
    a = [held_out(u, "campaign-a", 0.1) for u in USERS]
    b = [held_out(u, "campaign-b", 0.1) for u in USERS]
    both = sum(x and y for x, y in zip(a, b, strict=True)) / len(USERS)
    assert abs(both - 0.01) < 0.002, both  # independent: 10% of 10%
    control = [in_control_group(u, 0.1, "s") for u in USERS]
    with_control = sum(x and y for x, y in zip(a, control, strict=True)) / len(USERS)
    assert abs(with_control - 0.01) < 0.002, with_control


def test_raising_the_share_only_adds_users():
    at_5 = {u for u in USERS[:20_000] if held_out(u, "c1", 0.05)}
    at_10 = {u for u in USERS[:20_000] if held_out(u, "c1", 0.10)}
    assert at_5 < at_10


def test_a_new_salt_draws_a_new_group():
    a = {u for u in USERS[:20_000] if in_control_group(u, ControlGroup(0.1, "one"))}
    b = {u for u in USERS[:20_000] if in_control_group(u, ControlGroup(0.1, "two"))}
    assert 0.05 < len(a & b) / len(a) < 0.15  # about 10% overlap, as for any two draws


def test_zero_share_and_no_group_hold_out_nobody():
    assert not any(held_out(u, "c1", 0.0) for u in USERS[:5000])
    assert not any(in_control_group(u, None) for u in USERS[:5000])
    assert not any(in_control_group(u, ControlGroup(0.0)) for u in USERS[:5000])


def test_the_group_salt_wins_over_the_argument():
    user = next(u for u in USERS if in_control_group(u, ControlGroup(0.1, "mine")))
    assert in_control_group(user, ControlGroup(0.1, "mine"), salt="other")
    assert in_control_group(user, 0.1, salt="mine")


def test_the_control_group_comes_before_the_campaign_holdout():
    group = ControlGroup(0.2, "s")
    arms = {u: assign_arm(u, "c1", 0.3, group) for u in USERS[:20_000]}
    for user, arm in arms.items():
        if in_control_group(user, group):
            assert arm == CONTROL
        else:
            assert arm == (HOLDOUT if held_out(user, "c1", 0.3) else TREATED)
    counts = {arm: list(arms.values()).count(arm) / len(arms) for arm in (CONTROL, HOLDOUT)}
    assert abs(counts[CONTROL] - 0.2) < 0.01
    assert abs(counts[HOLDOUT] - 0.8 * 0.3) < 0.01  # the campaign's share of the rest
