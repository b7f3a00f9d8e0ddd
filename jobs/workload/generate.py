"""Write a synthetic nudgeflow workload to Kafka: the engine behind ``nudgeflow generate``.

:func:`produce` writes every user's UserMetadata to the metadata topic, waits until it is
acknowledged, then streams the ClickEvents of :func:`jobs.workload.workload.generate_events` to
the clicks topic, optionally paced and time-boxed, with a progress line on stderr. Records are
Avro single-object encoded by ``schemas.codec`` (imported lazily, so
:mod:`jobs.workload.workload` and its tests need neither Kafka nor the codec).
:func:`format_summary` renders what was produced.
"""

from __future__ import annotations

import importlib.util
import sys
import time
import warnings
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any, Protocol, TextIO

from jobs.workload.workload import (
    EVENT_TYPES,
    SOURCES,
    WorkloadSpec,
    WorkloadSummary,
    generate_events,
    generate_users,
)

__all__ = ["ProduceError", "format_summary", "produce", "recent_start_ms"]

#: Kafka deletes records by their timestamp; warn when event times are older than this.
_OLD_EVENT_TIME_MS = 6 * 24 * 3600 * 1000  # clicks keep 7 days on the local stack
#: Kafka 4 rejects timestamps more than 1 h ahead of its clock (message.timestamp.after.max.ms).
_FUTURE_EVENT_TIME_MS = 3600 * 1000


class Encoder(Protocol):
    """What :func:`produce` needs from a codec."""

    def encode(self, name: str, record: dict[str, Any]) -> bytes:
        """Encode ``record`` with the schema called ``name``."""
        ...


class ProduceError(RuntimeError):
    """Some records could not be written; ``summary`` says what was produced before that."""

    def __init__(self, message: str, summary: WorkloadSummary) -> None:
        super().__init__(message)
        self.summary = summary


def _default_compression() -> str | None:
    """lz4 when the lz4 package is importable (kafka-python needs it), else no compression."""
    return "lz4" if importlib.util.find_spec("lz4") is not None else None


class _Progress:
    """A small progress line on a stream: a bar in a terminal, periodic lines otherwise."""

    def __init__(
        self,
        label: str,
        total: int,
        enabled: bool,
        stream: TextIO | None = None,
        deadline: float | None = None,
    ) -> None:
        self.label = label
        self.total = max(total, 0)
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = enabled
        self.tty = enabled and bool(getattr(self.stream, "isatty", lambda: False)())
        self.interval = 0.2 if self.tty else 5.0
        self.deadline = deadline
        self.start = time.monotonic()
        self.next_draw = self.start + self.interval
        self.drawn = False

    def update(self, done: int, now: float) -> None:
        """Redraw if the last draw is older than the interval (cheap to call per record)."""
        if self.enabled and now >= self.next_draw:
            self.next_draw = now + self.interval
            self._draw(done, now, final=False)

    def finish(self, done: int) -> None:
        """Draw the final state and end the line."""
        if self.enabled:
            self._draw(done, time.monotonic(), final=True)

    def _draw(self, done: int, now: float, final: bool) -> None:
        elapsed = max(now - self.start, 1e-9)
        rate = done / elapsed
        total = self.total
        frac = done / total if total else 1.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        if self.deadline is not None:
            eta = min(eta, max(self.deadline - now, 0.0))
        eta_text = "--:--" if final or eta == float("inf") else _clock(eta)
        text = (
            f"{self.label} {done:,}/{total:,} ({100 * frac:5.1f}%) "
            f"{rate:,.0f}/s elapsed {_clock(elapsed)} ETA {eta_text}"
        )
        if self.tty:
            width = 24
            filled = min(width, int(width * frac))
            bar = "#" * filled + "-" * (width - filled)
            self.stream.write(f"\r[{bar}] {text}\x1b[K" + ("\n" if final else ""))
        else:
            self.stream.write(text + "\n")
        self.stream.flush()


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}:{m:02d}:{s:02d}" if h else f"{m:02d}:{s:02d}"


class _Pacer:
    """Token-bucket pacing to ``rate`` records/s: sleeps in short chunks every few records.

    After a stall (the producer blocked, the machine was busy) it does not burst to catch up
    by more than ``burst_s`` worth of records.
    """

    def __init__(self, rate: float, burst_s: float = 0.5) -> None:
        self.rate = rate
        self.burst_s = burst_s
        self.every = max(1, min(1000, int(rate / 200)))  # at most ~200 checks a second
        self.t0 = time.monotonic()
        self.base = 0

    def pace(self, sent: int) -> None:
        """Call with the number of records sent so far; sleeps while ahead of schedule."""
        target = self.t0 + (sent - self.base) / self.rate
        now = time.monotonic()
        ahead = target - now
        if ahead > 0:
            time.sleep(ahead)
        elif -ahead > self.burst_s:
            self.t0, self.base = now - self.burst_s, sent


def recent_start_ms(spec: WorkloadSpec, now_ms: int | None = None) -> int:
    """A ``start_ms`` that puts the workload's event times in the recent past.

    Kafka rejects records whose timestamp is more than ``message.timestamp.after.max.ms`` (1 h
    by default since Kafka 4.0) ahead of the broker's clock, and deletes records older than the
    topic's ``retention.ms`` (7 days for clicks on the local stack). The returned start makes
    the expected event-time span end a safety margin (15% of the span, at least 1 minute)
    before ``now_ms``, so use it with ``dataclasses.replace(spec, start_ms=...)``. The span is
    an estimate (``WorkloadSpec.expected_span_ms``); keep it under the retention.

    Args:
        spec: The workload.
        now_ms: Current time in epoch milliseconds; the wall clock when None.

    Returns:
        A start time in epoch milliseconds, rounded down to the second.
    """
    now = int(time.time() * 1000) if now_ms is None else now_ms
    span = spec.expected_span_ms
    start = now - span - max(span * 15 // 100, 60_000)
    return max(0, start - start % 1000)


def _check_event_times(spec: WorkloadSpec, now_ms: float) -> None:
    """Warn when Kafka is likely to reject (future) or soon delete (past) the event times."""
    end = spec.start_ms + spec.expected_span_ms
    if end > now_ms + _FUTURE_EVENT_TIME_MS:
        hours = (end - now_ms) / 3_600_000
        warnings.warn(
            f"event times run until about {hours:.1f} h from now; Kafka rejects records more "
            "than message.timestamp.after.max.ms (1 h by default) in the future. Use "
            "start_ms=recent_start_ms(spec).",
            stacklevel=3,
        )
    if spec.start_ms < now_ms - _OLD_EVENT_TIME_MS:
        days = (now_ms - spec.start_ms) / 86_400_000
        warnings.warn(
            f"event times start {days:.1f} days ago; Kafka deletes records older than the "
            "topic's retention.ms by their timestamp. Use start_ms=recent_start_ms(spec).",
            stacklevel=3,
        )


def produce(
    spec: WorkloadSpec,
    bootstrap_servers: str | list[str],
    clicks_topic: str = "clicks",
    metadata_topic: str = "user-metadata",
    rate: float | None = None,
    duration_s: float | None = None,
    progress: bool = True,
    codec: Encoder | None = None,
    *,
    producer_config: Mapping[str, Any] | None = None,
) -> WorkloadSummary:
    """Write a synthetic workload to Kafka: all users' metadata first, then the click events.

    Every UserMetadata record goes to ``metadata_topic`` (key: user_id as UTF-8, timestamp:
    ``updated_at``) and is flushed before the first click, so joins see every profile. The
    ClickEvents of ``generate_events(spec)`` then go to ``clicks_topic`` in emission order
    (key: user_id as UTF-8, record timestamp: ``event_time``), duplicates and late events
    included. Values are Avro single-object encoded (``ClickEvent`` / ``UserMetadata``).

    Kafka judges records by their timestamp: it rejects event times more than 1 h in the future
    (``message.timestamp.after.max.ms``) and deletes those older than the topic's retention
    (7 days for clicks on the local stack) soon after writing them. The fixed default
    ``start_ms`` of a spec (2026-11-02) is therefore only for pure tests: pass
    ``start_ms=recent_start_ms(spec)``. A warning (``warnings.warn``) is issued when the event
    times look too old or too far ahead; sending stops at the first rejected record.

    Args:
        spec: The workload (users, events, seed, fractions, start time ...).
        bootstrap_servers: Kafka bootstrap servers, ``"host:port[,host:port]"`` or a list.
        clicks_topic: Topic for ClickEvent records; must exist.
        metadata_topic: Topic for UserMetadata records; must exist (compacted).
        rate: Target click events per second (wall clock), paced token-bucket style; None
            sends as fast as the producer can. Metadata is never paced.
        duration_s: Stop sending click events after this many seconds (wall clock, counted
            from the first click); None sends all ``spec.events``.
        progress: Show progress on stderr: a bar redrawn up to 5 times a second in a terminal,
            a line every 5 seconds otherwise.
        codec: Object with ``encode(name, record) -> bytes``; defaults to
            ``schemas.codec.Codec.load()``.
        producer_config: Extra or overriding ``KafkaProducer`` settings. Defaults:
            ``acks="all"``, idempotence on, ``linger_ms=10``, ``batch_size=256 KiB``, lz4
            compression if the lz4 package is installed (else none).

    Returns:
        The summary of what was sent: users, click records by type and source, duplicates,
        out-of-order events, event-time span and ``elapsed_s`` (wall-clock time of the click
        phase, flush included).

    Raises:
        ValueError: ``rate`` or ``duration_s`` is not positive.
        ProduceError: Kafka rejected records (its ``summary`` says what was sent).
        kafka.errors.KafkaError: The brokers cannot be reached, or a topic does not exist.
    """
    if rate is not None and not rate > 0:
        raise ValueError(f"rate must be > 0 events/s, got {rate!r}")
    if duration_s is not None and not duration_s > 0:
        raise ValueError(f"duration_s must be > 0 seconds, got {duration_s!r}")
    if codec is None:
        from schemas.codec import Codec

        encoder: Encoder = Codec.load()
    else:
        encoder = codec
    from kafka import KafkaProducer

    _check_event_times(spec, time.time() * 1000)
    config: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers,
        "acks": "all",
        "enable_idempotence": True,
        "linger_ms": 10,
        "batch_size": 256 * 1024,
        "compression_type": _default_compression(),
        "client_id": "nudgeflow-generate",
    }
    config.update(producer_config or {})

    summary = WorkloadSummary()
    failures: list[BaseException] = []

    def failed(exc: BaseException) -> None:
        failures.append(exc)

    producer = KafkaProducer(**config)
    try:
        encode = encoder.encode
        send = producer.send
        users = generate_users(spec)
        bar = _Progress("users ", len(users), progress)
        for i, user in enumerate(users, 1):
            send(
                metadata_topic,
                key=user["user_id"].encode(),
                value=encode("UserMetadata", user),
                timestamp_ms=user["updated_at"],
            ).add_errback(failed)
            bar.update(i, time.monotonic())
        producer.flush()
        bar.finish(len(users))
        if failures:
            raise ProduceError(
                f"{len(failures)} UserMetadata records failed, first: {failures[0]!r}", summary
            ) from failures[0]
        summary.users = len(users)

        start = time.monotonic()
        deadline = start + duration_s if duration_s is not None else None
        bar = _Progress("clicks", spec.events, progress, deadline=deadline)
        pacer = _Pacer(rate) if rate is not None else None
        every = pacer.every if pacer is not None else 0
        sent = 0
        for event in generate_events(spec, summary):
            send(
                clicks_topic,
                key=event["user_id"].encode(),
                value=encode("ClickEvent", event),
                timestamp_ms=event["event_time"],
            ).add_errback(failed)
            sent += 1
            now = time.monotonic()
            bar.update(sent, now)
            if failures or (deadline is not None and now >= deadline):
                break
            if pacer is not None and sent % every == 0:
                pacer.pace(sent)
        producer.flush()
        summary.elapsed_s = time.monotonic() - start
        bar.finish(sent)
        if failures:
            raise ProduceError(
                f"{len(failures)} of {sent} ClickEvent records failed, first: {failures[0]!r}",
                summary,
            ) from failures[0]
    finally:
        producer.close(timeout=10)
    return summary


def format_summary(summary: WorkloadSummary) -> str:
    """Render a workload summary as a few aligned lines of text.

    Args:
        summary: From :func:`produce` or filled by :func:`jobs.workload.generate_events`.

    Returns:
        Users, click records by event type and source, duplicates, out-of-order events,
        sessions, orders, abandoned carts, inactive users, the event-time span and, when the
        run was timed, the throughput achieved. No trailing newline.
    """
    events = summary.events

    def share(n: int) -> str:
        return f"{n:>12,}  {100 * n / events:5.1f}%" if events else f"{n:>12,}"

    lines = [
        f"users              {summary.users:>12,}  ({summary.inactive_users:,} go inactive)",
        f"click events       {events:>12,}  ({summary.distinct_events:,} distinct)",
    ]
    for name in EVENT_TYPES:
        lines.append(f"  {name:<17}{share(summary.by_type.get(name, 0))}")
    for name in SOURCES:
        lines.append(f"  source {name:<10}{share(summary.by_source.get(name, 0))}")
    lines += [
        f"duplicates         {share(summary.duplicates)}",
        f"out of order       {share(summary.out_of_order)}  ({summary.late_injected:,} delayed)",
        f"sessions           {summary.sessions:>12,}",
        f"orders             {summary.orders:>12,}",
        f"abandoned carts    {summary.abandoned_carts:>12,}",
    ]
    if summary.first_event_ms is not None and summary.last_event_ms is not None:
        lines.append(
            f"event time         {_iso(summary.first_event_ms)} .. {_iso(summary.last_event_ms)}"
            f"  ({_duration(summary.span_ms)})"
        )
    if summary.elapsed_s > 0:
        lines.append(
            f"throughput         {summary.events_per_s:>12,.0f} events/s"
            f"  ({summary.elapsed_s:.1f} s)"
        )
    return "\n".join(lines)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _duration(ms: int) -> str:
    seconds = ms / 1000
    if seconds < 120:
        return f"{seconds:.1f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.1f} days"
