"""The live summary's arithmetic (offsets in, one line out)."""

from jobs.cli.monitor import Snapshot, format_line


def test_counts_what_changed_since_the_start():
    line = format_line(Snapshot(1000, 1000, 0, 0, 4), Snapshot(1500, 1200, 10, 1, 7), 2.0)
    assert "clicks arrived +500" in line and "consumed (committed) +200" in line
    assert "lag 300" in line and "segment changes +10" in line and "dead letters +1" in line
    assert "triggers +3" in line


def test_a_group_without_commits_has_consumed_nothing_yet():
    line = format_line(Snapshot(1000, 0, 0, 0), Snapshot(1500, 0, 0, 0), 2.0)
    assert "consumed (committed) +0" in line and "lag 1,500" in line
