"""Tests for udfs.flink.metrics: batched counters and sampled distributions keep the figures."""

from __future__ import annotations

import pytest

from udfs.flink.metrics import (
    LATENCY_BUCKETS_MS,
    SIZE_BUCKETS_BYTES,
    BufferedCounter,
    Histogram,
    LabelledHistograms,
    LabelledLastValues,
    SampledDistribution,
    le_label,
)


class RecordingCounter:
    def __init__(self) -> None:
        self.calls: list[int] = []

    def inc(self, n: int = 1) -> None:
        self.calls.append(n)


class RecordingDistribution:
    def __init__(self) -> None:
        self.values: list[int] = []

    def update(self, value: int) -> None:
        self.values.append(value)


def test_counts_reach_the_flink_counter_in_batches_and_none_is_lost() -> None:
    counter = RecordingCounter()
    buffered = BufferedCounter(counter)
    for _ in range(250):
        buffered.inc()
    assert counter.calls == [100, 100]  # two JVM calls, not 200
    buffered.flush()
    assert sum(counter.calls) == 250


def test_a_quiet_counter_is_flushed_after_a_second(monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("udfs.flink.metrics.time.monotonic", lambda: clock[0])
    counter = RecordingCounter()
    buffered = BufferedCounter(counter)
    buffered.inc()
    assert counter.calls == []
    clock[0] += 1.5
    buffered.inc(2)
    assert counter.calls == [3]


def test_a_distribution_records_one_value_in_every() -> None:
    distribution = RecordingDistribution()
    sampled = SampledDistribution(distribution, every=4)
    for value in range(1, 13):
        sampled.update(value)
    assert distribution.values == [4, 8, 12]


class RecordingGroup:
    """A metric group as PyFlink's: key-value groups nest, counters are created by name."""

    def __init__(self, path: tuple[str, ...] = ()) -> None:
        self.path = path
        self.counters: dict[tuple[str, ...], RecordingCounter] = {}

    def add_group(self, key: str, value: str) -> RecordingGroup:
        child = RecordingGroup((*self.path, f"{key}={value}"))
        child.counters = self.counters  # one registry, as the reporter sees it
        return child

    def counter(self, name: str) -> RecordingCounter:
        return self.counters.setdefault((*self.path, name), RecordingCounter())

    def total(self, *path: str) -> int:
        return sum(self.counters[path].calls)


def test_a_histogram_exports_cumulative_buckets_sum_and_count_as_prometheus_reads_them() -> None:
    group = RecordingGroup()
    histogram = Histogram(group.add_group("tier", "P1"), "latency_ms", (10, 100, 1000))
    for value in (3, 10, 11, 99, 500, 5000, 7):
        histogram.observe(value)
    # registered at once (the reporter lists them), moved only by a flush: one JVM call each
    assert len(group.counters) == 4 + 2
    assert all(c.calls == [] for c in group.counters.values())
    histogram.flush()
    bucket = lambda le: group.total("tier=P1", f"le={le}", "latency_ms_bucket")  # noqa: E731
    # le is inclusive (a value equal to a bound is in its bucket); +Inf holds everything
    assert [bucket("10"), bucket("100"), bucket("1000"), bucket("+Inf")] == [3, 5, 6, 7]
    assert group.total("tier=P1", "latency_ms_sum") == 3 + 10 + 11 + 99 + 500 + 5000 + 7
    assert group.total("tier=P1", "latency_ms_count") == 7
    histogram.observe(2000)
    histogram.flush()
    assert [bucket("10"), bucket("1000"), bucket("+Inf")] == [3, 6, 8]  # still cumulative


def test_histogram_counters_move_in_batches_and_a_quiet_one_is_flushed_by_tick(
        monkeypatch) -> None:
    clock = [1000.0]
    monkeypatch.setattr("udfs.flink.metrics.time.monotonic", lambda: clock[0])
    group = RecordingGroup()
    histograms = LabelledHistograms(group, "tier", "latency_ms", (10, 100))
    for _ in range(Histogram.FLUSH_EVERY - 1):
        histograms.observe("P0", 50)
    assert group.total("tier=P0", "latency_ms_count") == 0
    histograms.observe("P0", 50)
    assert group.total("tier=P0", "latency_ms_count") == Histogram.FLUSH_EVERY  # one batch
    histograms.observe("P0", 5)
    histograms.tick()  # not due yet
    assert group.total("tier=P0", "latency_ms_count") == Histogram.FLUSH_EVERY
    clock[0] += 1.5
    histograms.tick()
    assert group.total("tier=P0", "latency_ms_count") == Histogram.FLUSH_EVERY + 1
    assert group.total("tier=P0", "le=10", "latency_ms_bucket") == 1


def test_bucket_bounds_are_close_enough_for_a_20_percent_quantile() -> None:
    above_50 = [b for b in LATENCY_BUCKETS_MS if b >= 50]
    ratios = [b / a for a, b in zip(above_50, above_50[1:], strict=False)]
    assert max(ratios) < 1.16 and LATENCY_BUCKETS_MS[0] == 5 and LATENCY_BUCKETS_MS[-1] >= 300_000
    # whole numbers: the reporter rewrites a '.' in a label value
    assert all(isinstance(b, int) for b in LATENCY_BUCKETS_MS + SIZE_BUCKETS_BYTES)
    assert [le_label(b) for b in (5, 250.0, float("inf"))] == ["5", "250", "+Inf"]
    with pytest.raises(ValueError, match="not a whole number"):
        le_label(5.75)
    with pytest.raises(ValueError, match="bounds must be increasing"):
        Histogram(RecordingGroup(), "x", (10, 5))


class RecordingDistributions(RecordingGroup):
    def distribution(self, name: str) -> RecordingDistribution:
        return self.counters.setdefault((*self.path, name), RecordingDistribution())

    def add_group(self, key: str, value: str) -> RecordingDistributions:
        child = RecordingDistributions((*self.path, f"{key}={value}"))
        child.counters = self.counters
        return child


def test_last_values_are_one_figure_per_label_created_on_first_use() -> None:
    group = RecordingDistributions()
    sizes = LabelledLastValues(group, "segment", "segment_size")
    sizes.set("vip", 10)
    sizes.set("vip", 12)
    sizes.set("new", 3)
    assert {k: v.values for k, v in group.counters.items()} == {
        ("segment=vip", "segment_size"): [10, 12], ("segment=new", "segment_size"): [3]}
