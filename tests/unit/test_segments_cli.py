"""`nudgeflow segments sizes` / `members`: the tables (pure) and the command's refusals."""

import pytest

from jobs.cli import segments
from jobs.cli.main import main

NOW = 1_800_000_000_000


def test_sizes_table_gives_each_segment_its_size_and_when_it_changed() -> None:
    table = segments.sizes_table({"high-value-cart": 1234, "churn-risk-high": 7, "gone": -1},
                                 {"high-value-cart": NOW - 42_000, "churn-risk-high":
                                  NOW - 3 * 86_400_000}, NOW)
    assert table.splitlines() == [
        "segment            members  last updated",
        "churn-risk-high          7  2027-01-12 08:00:00 UTC (3 d ago)",
        "gone                     0  unknown",
        "high-value-cart      1,234  2027-01-15 07:59:18 UTC (42 s ago)",
    ]
    assert "no segment sizes in Redis yet" in segments.sizes_table({}, {}, NOW)


def test_members_table_lists_users_and_says_when_it_stopped_at_the_limit() -> None:
    rows = [("u2", 3, NOW), ("u1", 1, None)]
    assert segments.members_table("vip", rows, 2, 40).splitlines() == [
        "user  version  entered (event time)",
        "u1    v1       unknown",
        "u2    v3       2027-01-15 08:00:00 UTC",
        "2 of 40 member(s) of vip (the first 2 found; --limit N for more)",
    ]
    assert segments.members_table("vip", rows, 5, None).splitlines()[-1] == \
        "2 member(s) of vip"
    assert "has no members in Cassandra" in segments.members_table("nope", [], 5, None)


@pytest.mark.parametrize("argv, message", [
    (["segments", "members"], "name the segment"),
    (["segments", "sizes", "vip"], "`segments members vip`"),
    (["segments", "members", "vip", "--limit", "0"], "--limit must be at least 1"),
])
def test_segments_refuses_what_it_cannot_answer(argv, message, capsys) -> None:
    assert main(argv) == 2
    assert message in capsys.readouterr().err
