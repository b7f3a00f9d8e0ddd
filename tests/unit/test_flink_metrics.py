"""Tests for udfs.flink.metrics: batched counters and sampled distributions keep the figures."""

from __future__ import annotations

from udfs.flink.metrics import BufferedCounter, SampledDistribution


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
