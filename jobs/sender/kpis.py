"""The sender's delivery KPIs: on-time rate, queue wait, budget utilisation, expired, deduped.

Input: one ``Delivery`` per trigger delivered and one ``(tier, channel)`` per trigger dropped
as expired, from ``process_batch``; duplicates per tier; the group's budget utilisation per
channel (read from Redis at each report).
Output: ``format_kpis`` (the sender's periodic and final report) and, with ``--metrics-port``,
Prometheus metrics (``PrometheusKpis``; prometheus-client's own HTTP server).
State: counters per tier and channel, and per tier the last ``WAIT_SAMPLES`` queue waits (the
p50/p99 of the report are over those; Prometheus gets a histogram of all of them).

Definitions. A delivery is *on time* when it happened at or before the trigger's
``expires_at`` (a trigger without one is always on time). The on-time rate of a tier and
channel is on-time deliveries / (deliveries + expirations): an expired trigger is a late one.
The *queue wait* is delivery time minus the trigger's ``emit_time`` (when the engine emitted
it), so it includes the time in Kafka, in the sender's buffers and waiting for budget.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from udfs.campaigns.grammar import TIERS

WAIT_SAMPLES = 10_000
"""Queue waits kept per tier for the report's percentiles."""

WAIT_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
"""The Prometheus histogram's buckets of queue wait, in seconds."""


class Delivery(NamedTuple):
    """One trigger the adapter delivered."""

    tier: str
    channel: str
    emit_time: int
    expires_at: int | None
    delivered_at: int

    @property
    def on_time(self) -> bool:
        """Delivered at or before its deadline (no deadline: always)."""
        return self.expires_at is None or self.delivered_at <= self.expires_at

    @property
    def wait_ms(self) -> int:
        """Queue wait: from the engine's emit time to the delivery."""
        return max(0, self.delivered_at - self.emit_time)


def percentile(values: Iterable[float], q: float) -> float | None:
    """The ``q`` quantile (0..1) by the nearest-rank method; None for no values."""
    ordered = sorted(values)
    if not ordered:
        return None
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass
class DeliveryKpis:
    """The KPIs of one sender process (pure: fed by the delivery loop)."""

    delivered: Counter[tuple[str, str]] = field(default_factory=Counter)
    on_time: Counter[tuple[str, str]] = field(default_factory=Counter)
    expired: Counter[tuple[str, str]] = field(default_factory=Counter)
    deduped: Counter[str] = field(default_factory=Counter)
    waits: dict[str, deque[int]] = field(
        default_factory=lambda: {tier: deque(maxlen=WAIT_SAMPLES) for tier in TIERS})
    utilisation: dict[str, float] = field(default_factory=dict)
    """The group's budget utilisation per budgeted channel (last measurement)."""

    def record(self, deliveries: Iterable[Delivery], expired: Iterable[tuple[str, str]],
               duplicates: Mapping[str, int] | None = None) -> None:
        """Count a batch's deliveries, expirations and duplicates (by tier)."""
        for d in deliveries:
            self.delivered[d.tier, d.channel] += 1
            self.on_time[d.tier, d.channel] += d.on_time
            self.waits[d.tier].append(d.wait_ms)
        for tier, channel in expired:
            self.expired[tier, channel] += 1
        for tier, count in (duplicates or {}).items():
            self.deduped[tier] += count

    def on_time_rate(self, tier: str, channel: str | None = None) -> float | None:
        """On-time deliveries / (deliveries + expirations) of a tier (and channel); None: none."""
        keys = [k for k in self.delivered.keys() | self.expired.keys()
                if k[0] == tier and (channel is None or k[1] == channel)]
        total = sum(self.delivered[k] + self.expired[k] for k in keys)
        return sum(self.on_time[k] for k in keys) / total if total else None

    def wait_percentiles(self, tier: str) -> tuple[float | None, float | None]:
        """(p50, p99) of the tier's recent queue waits in ms."""
        waits = self.waits[tier]
        return percentile(waits, 0.5), percentile(waits, 0.99)


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


def format_kpis(kpis: DeliveryKpis) -> str:
    """The KPI part of the sender's report.

    Rows per tier (``P0/*``) and per tier and channel (``P0/SMS``), then the group's budget
    utilisation per channel.
    """
    lines = ["delivery KPIs (on time: delivered by expires_at, of delivered + expired; wait: "
             "emit_time to delivery)",
             f"{'tier/channel':<16}{'delivered':>10}{'on time':>9}{'expired':>9}"
             f"{'deduped':>9}{'wait p50':>10}{'p99 ms':>9}"]
    for tier in TIERS:
        p50, p99 = kpis.wait_percentiles(tier)
        channels = sorted({c for t, c in kpis.delivered.keys() | kpis.expired.keys() if t == tier})
        delivered = sum(kpis.delivered[tier, c] for c in channels)
        expired = sum(kpis.expired[tier, c] for c in channels)
        lines.append(f"{tier + '/*':<16}{delivered:>10,}{_pct(kpis.on_time_rate(tier)):>9}"
                     f"{expired:>9,}{kpis.deduped[tier]:>9,}{_ms(p50):>10}{_ms(p99):>9}")
        for channel in channels:
            lines.append(f"{tier + '/' + channel:<16}{kpis.delivered[tier, channel]:>10,}"
                         f"{_pct(kpis.on_time_rate(tier, channel)):>9}"
                         f"{kpis.expired[tier, channel]:>9,}")
    if kpis.utilisation:
        lines.append("budget utilisation (group, last 10 s): " + ", ".join(
            f"{channel} {share:.0%}" for channel, share in sorted(kpis.utilisation.items())))
    return "\n".join(lines)


class PrometheusKpis:
    """The KPIs as Prometheus metrics, served on ``port`` (``--metrics-port``).

    Metrics (labels): ``nudgeflow_sender_delivered_total`` and
    ``nudgeflow_sender_delivered_on_time_total`` (tier, channel),
    ``nudgeflow_sender_expired_total`` (tier, channel), ``nudgeflow_sender_deduped_total``
    (tier), ``nudgeflow_sender_queue_wait_seconds`` (histogram; tier),
    ``nudgeflow_sender_budget_utilisation`` (gauge, the group's share of the channel's budget
    over the last 10 s; channel). The on-time rate is
    ``delivered_on_time_total / (delivered_total + expired_total)``.
    """

    def __init__(self, port: int, registry: Any = None, serve: bool = True) -> None:
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

        self.registry = registry or CollectorRegistry()
        labels = ("tier", "channel")
        self.delivered = Counter("nudgeflow_sender_delivered", "Triggers delivered", labels,
                                 registry=self.registry)
        self.on_time = Counter("nudgeflow_sender_delivered_on_time",
                               "Triggers delivered at or before expires_at", labels,
                               registry=self.registry)
        self.expired = Counter("nudgeflow_sender_expired",
                               "Triggers dropped because expires_at passed", labels,
                               registry=self.registry)
        self.deduped = Counter("nudgeflow_sender_deduped",
                               "Triggers dropped as already delivered by the group", ("tier",),
                               registry=self.registry)
        self.wait = Histogram("nudgeflow_sender_queue_wait_seconds",
                              "From the trigger's emit_time to its delivery", ("tier",),
                              buckets=WAIT_BUCKETS_S, registry=self.registry)
        self.utilisation = Gauge("nudgeflow_sender_budget_utilisation",
                                 "The group's admissions over the last 10 s / the budget",
                                 ("channel",), registry=self.registry)
        self.server: Any = None
        if serve:
            from prometheus_client import start_http_server

            self.server, _thread = start_http_server(port, registry=self.registry)

    def record(self, deliveries: Iterable[Delivery], expired: Iterable[tuple[str, str]],
               duplicates: Mapping[str, int] | None = None) -> None:
        """See ``DeliveryKpis.record``."""
        for d in deliveries:
            self.delivered.labels(d.tier, d.channel).inc()
            if d.on_time:
                self.on_time.labels(d.tier, d.channel).inc()
            self.wait.labels(d.tier).observe(d.wait_ms / 1000)
        for tier, channel in expired:
            self.expired.labels(tier, channel).inc()
        for tier, count in (duplicates or {}).items():
            if count:
                self.deduped.labels(tier).inc(count)

    def set_utilisation(self, shares: Mapping[str, float]) -> None:
        """The group's budget utilisation per channel."""
        for channel, share in shares.items():
            self.utilisation.labels(channel).set(share)

    def close(self) -> None:
        """Stop serving."""
        if self.server is not None:
            self.server.shutdown()
            self.server = None
