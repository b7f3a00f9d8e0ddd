"""Flink metrics for per-event figures, cheaper (pure: wraps any object with inc/update).

In PyFlink's thread mode every metric call crosses into the JVM; a few per event add up to
several percent of an event's time. These wrappers cut the crossings and keep the metric.
"""

from __future__ import annotations

import time
from bisect import bisect_left
from typing import Any


class BufferedCounter:
    """A Flink counter incremented in Python and handed to the JVM in batches.

    In thread mode every ``Counter.inc`` is a call into the JVM (~1.5 µs, ~5% of an event's
    time when several counters move per event); this one passes the sum on every
    ``FLUSH_EVERY`` increments or after ``FLUSH_AFTER_S``, whichever comes first, so a metric
    lags by at most that much.
    """

    FLUSH_EVERY = 100
    FLUSH_AFTER_S = 1.0

    def __init__(self, counter: Any) -> None:
        self.counter = counter
        self.pending = 0
        self.flushed_at = time.monotonic()

    def inc(self, n: int = 1) -> None:
        """Count ``n`` more."""
        self.pending += n
        if self.pending >= self.FLUSH_EVERY:
            self.flush()
        elif time.monotonic() - self.flushed_at >= self.FLUSH_AFTER_S:
            self.flush()

    def flush(self) -> None:
        """Pass what was counted since the last flush to the Flink counter."""
        if self.pending:
            self.counter.inc(self.pending)
            self.pending = 0
        self.flushed_at = time.monotonic()


class SampledDistribution:
    """A Flink distribution fed one value in ``every`` (each update is a call into the JVM).

    For per-event figures (state size, scoring time, scores) a 1-in-8 sample describes the
    distribution as well as every value does, at an eighth of the cost.
    """

    def __init__(self, distribution: Any, every: int = 8) -> None:
        self.distribution = distribution
        self.every = every
        self.seen = 0

    def update(self, value: int) -> None:
        """Offer one value; every ``every``-th is recorded."""
        self.seen += 1
        if self.seen % self.every == 0:
            self.distribution.update(value)


def _bounds(start: float, stop: float, factor: float) -> tuple[int, ...]:
    """Whole-number bucket bounds from ``start`` to at least ``stop``, ~``factor`` apart.

    Whole numbers because Flink's Prometheus reporter rewrites every character of a label value
    outside ``[A-Za-z0-9_:]`` (``5.75`` would reach Prometheus as ``5_75``, which is no number);
    rounded to 3 significant digits, so the labels stay readable.
    """
    out: list[int] = []
    value = start
    while not out or out[-1] < stop:
        rounded = round(value) if value < 100 else int(float(f"{value:.3g}"))
        if not out or rounded > out[-1]:
            out.append(rounded)
        value *= factor
    return tuple(out)


#: upper bounds (ms) of the latency histograms: 5 ms to 5 min, ~1.15x apart, so above 50 ms a
#: quantile that Prometheus interpolates inside a bucket is off by less than 16% of its value
#: (far less when values spread evenly inside it)
LATENCY_BUCKETS_MS = _bounds(5, 300_000, 1.15)
#: upper bounds (bytes) of the state-size histogram: 256 B to 1 MiB, ~1.5x apart
SIZE_BUCKETS_BYTES = _bounds(256, 1 << 20, 1.5)


def le_label(bound: float) -> str:
    """A bucket's ``le`` label (``250``, ``+Inf``).

    The reporter turns ``+Inf`` into ``_Inf``: the scrape config renames it back
    (``metric_relabel_configs``, see ``infra/servers/prometheus.py``), or ``histogram_quantile``
    finds no ``+Inf`` bucket and answers NaN.
    """
    if bound == float("inf"):
        return "+Inf"
    if bound != int(bound):
        raise ValueError(f"bucket bound {bound} is not a whole number: the reporter would "
                         "rewrite its '.'")
    return str(int(bound))


class Histogram:
    """A Prometheus histogram made of Flink counters, cheap per observation.

    PyFlink's thread-mode distributions are last-value gauges, so no percentile can be taken from
    them. This keeps one counter per bucket (``<name>_bucket`` under the group ``le=<bound>``,
    cumulative as Prometheus expects, ``+Inf`` last), ``<name>_sum`` and ``<name>_count`` on
    ``group``: ``histogram_quantile`` then works on what the Prometheus reporter exports. An
    observation is a ``bisect`` in Python; the counters are moved (a JVM call each) only for
    buckets that changed, every ``FLUSH_EVERY`` observations or ``FLUSH_AFTER_S``, so a
    histogram lags by at most that much.
    """

    FLUSH_EVERY = 200
    FLUSH_AFTER_S = 1.0

    def __init__(self, group: Any, name: str, bounds: tuple[int, ...]) -> None:
        if list(bounds) != sorted(set(bounds)) or not bounds:
            raise ValueError(f"histogram {name}: bounds must be increasing, got {bounds}")
        self.bounds = bounds
        self.buckets = [group.add_group("le", le_label(b)).counter(f"{name}_bucket")
                        for b in (*bounds, float("inf"))]
        self.sum = group.counter(f"{name}_sum")
        self.count = group.counter(f"{name}_count")
        self.pending = [0] * (len(bounds) + 1)  # per bucket, not cumulative
        self.pending_sum = 0
        self.pending_count = 0
        self.flushed_at = time.monotonic()

    def observe(self, value: int) -> None:
        """Record one value (whole units: counters hold integers)."""
        self.pending[bisect_left(self.bounds, value)] += 1
        self.pending_sum += value
        self.pending_count += 1
        if self.pending_count >= self.FLUSH_EVERY or \
                time.monotonic() - self.flushed_at >= self.FLUSH_AFTER_S:
            self.flush()

    def flush(self) -> None:
        """Move the Flink counters by what was observed since the last flush."""
        if self.pending_count:
            cumulative = 0
            for counter, n in zip(self.buckets, self.pending, strict=True):
                cumulative += n
                if cumulative:
                    counter.inc(cumulative)
            self.sum.inc(self.pending_sum)
            self.count.inc(self.pending_count)
            self.pending = [0] * len(self.pending)
            self.pending_sum = self.pending_count = 0
        self.flushed_at = time.monotonic()


class LabelledHistograms:
    """Histograms created on first use under ``<group>=<label>`` (e.g. tier=P0)."""

    def __init__(self, metrics: Any, group: str, name: str, bounds: tuple[int, ...]) -> None:
        self.metrics = metrics
        self.group = group
        self.name = name
        self.bounds = bounds
        self.histograms: dict[str, Histogram] = {}
        self.checked_at = time.monotonic()

    def observe(self, label: str, value: int) -> None:
        """Record one value under ``label``."""
        histogram = self.histograms.get(label)
        if histogram is None:
            histogram = Histogram(self.metrics.add_group(self.group, label), self.name,
                                  self.bounds)
            self.histograms[label] = histogram
        histogram.observe(value)

    def tick(self) -> None:
        """Flush what waits longer than ``Histogram.FLUSH_AFTER_S``.

        Call it often: a quiet histogram is flushed by its next observation only, which may
        not come.
        """
        now = time.monotonic()
        if now - self.checked_at < Histogram.FLUSH_AFTER_S:
            return
        self.checked_at = now
        for histogram in self.histograms.values():
            if histogram.pending_count:
                histogram.flush()


class LabelledCounters:
    """Counters created on first use under ``<group>_<label>`` (e.g. reason=LATE_EVENT)."""

    def __init__(self, metrics: Any, group: str, name: str) -> None:
        self.metrics = metrics
        self.group = group
        self.name = name
        self.counters: dict[str, Any] = {}

    def inc(self, label: str) -> None:
        """Count one under ``label``."""
        counter = self.counters.get(label)
        if counter is None:
            counter = self.metrics.add_group(self.group, label).counter(self.name)
            self.counters[label] = counter
        counter.inc()


class LabelledLastValues:
    """Last-value figures under ``<group>=<label>`` (e.g. segment=cart-abandoners).

    Created on first use. A PyFlink distribution in thread mode is a last-value gauge, which is
    what a size read from a store every few seconds needs.
    """

    def __init__(self, metrics: Any, group: str, name: str) -> None:
        self.metrics = metrics
        self.group = group
        self.name = name
        self.gauges: dict[str, Any] = {}

    def set(self, label: str, value: int) -> None:
        """The figure under ``label`` is now ``value``."""
        gauge = self.gauges.get(label)
        if gauge is None:
            gauge = self.metrics.add_group(self.group, label).distribution(self.name)
            self.gauges[label] = gauge
        gauge.update(int(value))


class JourneyCounters:
    """Per journey node: ``journey_<what>`` counters under groups ``journey=<id>, node=<id>``.

    ``what`` is a move of ``udfs.journeys.runner`` (entered, sent, waiting: a wait begun,
    converted, exited); counters are created on first use.
    """

    def __init__(self, metrics: Any) -> None:
        self.metrics = metrics
        self.counters: dict[tuple[str, str, str], Any] = {}

    def inc(self, journey_id: str, node_id: str, what: str) -> None:
        """Count one move of ``what`` at a journey's node."""
        key = (journey_id, node_id, what)
        counter = self.counters.get(key)
        if counter is None:
            counter = self.metrics.add_group("journey", journey_id).add_group(
                "node", node_id).counter(f"journey_{what}")
            self.counters[key] = counter
        counter.inc()


#: the churn score distributions record one score in this many (``MeasuredScorer``)
SCORE_SAMPLE_EVERY = 64


class MeasuredScorer:
    """The churn model with its metrics.

    Records scores computed, their distribution (per mille) and the scoring time (µs).
    """

    def __init__(self, model: Any, metrics: Any) -> None:
        self.model = model
        self.version = model.version
        self.scores = BufferedCounter(metrics.counter("churn_scores"))
        # one score in 64: a distribution update is a JVM call, and at 1 in 8 the two took ~5% of
        # the engine thread's samples (the bench's stage profile); hundreds of scores a second
        # describe the distribution as well at 1 in 64
        self.score_permille = SampledDistribution(
            metrics.distribution("churn_score_permille"), every=SCORE_SAMPLE_EVERY)
        self.score_us = SampledDistribution(metrics.distribution("churn_scoring_us"),
                                            every=SCORE_SAMPLE_EVERY)

    def score(self, vector: list[float]) -> float:
        """Score one vector and record it."""
        started = time.perf_counter()
        value = float(self.model.score(vector))
        self.score_us.update(int((time.perf_counter() - started) * 1e6))
        self.score_permille.update(int(value * 1000))
        self.scores.inc()
        return value
