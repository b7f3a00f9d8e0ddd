"""``nudgeflow sender``: the reference consumer of the trigger topics, P0 first.

Input: the four tier topics ``<trigger_topic_prefix>p0`` .. ``p3`` (TriggerEvents in Avro
single-object encoding, keyed by user_id), read with ``isolation_level=read_committed``, so
records of aborted or still open transactions are never seen.
Output: one ``adapter.send(trigger)`` call per trigger to deliver (a ``ChannelAdapter``); a
DeadLetter on ``cfg.dead_letter_topic`` for every record that does not decode; the consumer
group's committed offsets; a report (per tier: delivered, duplicates, expired, bad, skipped,
lag, rate).
State: at most one buffered batch per tier, the scheduler's starvation counters, and the dedupe
store (Redis keys ``<redis_key_prefix>:sent:<group>:<channel>:<trigger_id>`` with a TTL, behind
an in-memory LRU).

Channels. A sender takes the triggers of ``--channels`` (default: all channels) and skips the
others: not delivered, not marked sent, counted as skipped, so that one sender per channel
(each under its own group) can read the same topics without taking each other's triggers.

Priority. Each tier has its own consumer holding at most one batch (``poll(max_records=
batch_size)``). ``TierScheduler`` picks the batch to hand over: the highest-priority tier with a
batch waiting. Before a lower tier is served, every higher tier without a batch is checked
against its end offset (the last stable offset, read committed); a higher tier with committed
records not yet fetched is fetched first (up to ``fetch_wait_ms``). So with
``starvation_limit=0`` no P1 record is handed over while the P0 topic holds committed records
this sender has not handed over yet, and so on down the tiers. The unit is the batch: a P0
record that arrives while a P1 batch is being delivered waits for that batch to finish. With
``starvation_limit=L > 0`` a tier that had a batch waiting and was passed over L times in a row
gets the next hand-over (see ``TierScheduler`` for the exact bound).

Delivery: at least once to the channel, deduplicated. Per batch: decode, skip other channels,
drop expired (``expires_at < now``), drop triggers this group already sent on that channel (LRU,
then Redis), send the rest (retrying with backoff), record the sent ids in Redis, write dead
letters, then commit the offsets. A crash between a send and the Redis write (at most one
batch) sends those triggers again after the restart; a crash after the Redis write but before
the commit redelivers the batch to the sender, which then drops it as duplicates. An adapter
that keeps failing stops the sender with ``AdapterFailedError``: offsets are committed only up
to the last trigger that was delivered.

Partitions are assigned by the sender itself (every partition of every tier topic), not by the
consumer group protocol; the group id names the committed offsets and the dedupe keys. Run one
sender per group: a second sender with the same group would deliver the same triggers (its
dedupe lookups would catch most, not all, of them). See docs/consuming.md, "Consuming
triggers".
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import signal
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Collection, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol, runtime_checkable

from jobs.config import NudgeflowConfig
from schemas.codec import Codec, CodecError, Record, UnknownSchemaError, WrongSchemaError
from udfs.campaigns.grammar import CHANNELS, TIERS
from udfs.intake import Rejected, SourceRecord, dead_letter
from udfs.stores import keys

DEFAULT_GROUP = "nudgeflow-sender"
DEFAULT_ADAPTER = "jobs.sender.sender:ConsoleAdapter"
DEDUPE_MODES = ("redis", "memory")
BAD_RECORD_MODES = ("dead-letter", "skip")
START_MODES = ("earliest", "latest")
ENV_PREFIX = "NUDGEFLOW_SENDER_"
DEAD_LETTER_STAGE = "sender-decode"


class SenderError(RuntimeError):
    """The sender cannot go on; the message says why and what to do."""

    def __init__(self, message: str, report: SenderReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class AdapterLoadError(SenderError):
    """``--adapter module:attr`` does not name a usable channel adapter."""


class AdapterFailedError(SenderError):
    """The channel adapter kept failing on one trigger; the sender stopped before it."""


# --- the channel adapter --------------------------------------------------------------------------


@runtime_checkable
class ChannelAdapter(Protocol):
    """What the sender hands triggers to: one call per trigger to deliver.

    ``send`` returns once the channel accepted the trigger and raises when it did not; the
    sender then retries with backoff and finally stops (it never skips a trigger that failed).
    An adapter may also have ``close()``, called once when the sender stops.
    """

    def send(self, trigger: Record) -> None:
        """Deliver one decoded TriggerEvent (a dict shaped like schemas/TriggerEvent.avsc)."""


def _print_flushed(line: str) -> None:
    print(line, flush=True)


def describe_trigger(trigger: Record) -> str:
    """One readable line for a trigger: tier, channel, user, campaign, template, trigger id."""
    return (
        f"[{trigger.get('tier')}] {trigger.get('channel', '?'):<11} "
        f"user={trigger.get('user_id')} campaign={trigger.get('campaign_id')} "
        f"template={trigger.get('template_id')} trigger={trigger.get('trigger_id')}"
    )


class ConsoleAdapter:
    """The shipped adapter: prints one line per trigger (a stand-in for a real channel)."""

    def __init__(self, say: Callable[[str], None] | None = None) -> None:
        self.say = say or _print_flushed

    def send(self, trigger: Record) -> None:
        """Print the trigger's line."""
        self.say(describe_trigger(trigger))


def load_adapter(spec: str) -> ChannelAdapter:
    """The channel adapter named by ``module:attr``.

    ``attr`` names a class (instantiated without arguments) or an object with a
    ``send(trigger)`` method; dots reach into the module (``module:Outer.adapter``).

    Raises:
        AdapterLoadError: the spec is malformed, the module or attribute is missing, the class
            cannot be instantiated, or the result has no callable ``send``.
    """
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise AdapterLoadError(
            f"--adapter must be module:attribute (e.g. mychannels.email:EmailAdapter), got {spec!r}"
        )
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise AdapterLoadError(
            f"--adapter {spec}: cannot import module {module_name!r} ({exc}); is it installed "
            "or on PYTHONPATH?"
        ) from exc
    try:
        target = module
        for part in attr.split("."):
            target = getattr(target, part)
    except AttributeError:
        raise AdapterLoadError(
            f"--adapter {spec}: module {module_name!r} has no attribute {attr!r}"
        ) from None
    if isinstance(target, type):
        try:
            target = target()
        except Exception as exc:  # noqa: BLE001 - any constructor failure is reported the same way
            raise AdapterLoadError(
                f"--adapter {spec}: {attr}() failed: {type(exc).__name__}: {exc}; an adapter "
                "class must be constructible without arguments (read settings from the "
                "environment)"
            ) from exc
    if not callable(getattr(target, "send", None)):
        raise AdapterLoadError(
            f"--adapter {spec}: {type(target).__name__} is not a channel adapter: it needs a "
            "send(trigger) method"
        )
    return target  # checked above: it has a callable send


@dataclass(frozen=True)
class DeliveryRetryPolicy:
    """How often a failed delivery (``adapter.send``) is retried, and how long to wait between."""

    retries: int = 3
    backoff_s: float = 0.5

    def delays(self) -> list[float]:
        """Seconds to wait before each retry: ``backoff_s`` doubling (0.5, 1, 2 by default)."""
        return [self.backoff_s * 2**attempt for attempt in range(self.retries)]


def send_with_retry(
    adapter: ChannelAdapter,
    trigger: Record,
    policy: DeliveryRetryPolicy,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
) -> None:
    """Call ``adapter.send``; retry with backoff; raise ``AdapterFailedError`` at the end.

    Raises:
        AdapterFailedError: every attempt failed; the message names the trigger and the last
            error (the chained cause is the adapter's exception).
    """
    delays = policy.delays()
    for attempt in range(len(delays) + 1):
        try:
            adapter.send(trigger)
            return
        except Exception as exc:  # noqa: BLE001 - the adapter's failures are ours to retry
            if attempt == len(delays):
                raise AdapterFailedError(
                    f"the channel adapter failed {attempt + 1} time(s) on trigger "
                    f"{trigger.get('trigger_id')} (tier {trigger.get('tier')}, user "
                    f"{trigger.get('user_id')}): {type(exc).__name__}: {exc}; stopped without "
                    "committing it, so it is delivered again after a restart"
                ) from exc
            say(f"adapter failed on trigger {trigger.get('trigger_id')} "
                f"({type(exc).__name__}: {exc}); retry {attempt + 1}/{len(delays)} in "
                f"{delays[attempt]:g} s")
            sleep(delays[attempt])


# --- priority -------------------------------------------------------------------------------------


class TierScheduler:
    """Chooses which tier's waiting batch is handed over next (pure: no Kafka, no clock).

    ``pick(waiting)`` is called once per hand-over with the tiers that have a batch waiting.

    - Strict priority: the highest-priority waiting tier is picked.
    - Starvation guard (``starvation_limit`` L > 0): a waiting tier that is not picked has its
      skip count raised by one; a tier that is picked, or has nothing waiting, goes back to 0.
      A tier whose count reached L is *starved*; while any waiting tier is starved, the starved
      tier with the highest count is picked (ties: the higher priority).

    Guarantee: with L > 0 a tier that keeps a batch waiting is passed over at most
    L + (number of tiers - 1) times in a row (L + 3 here): L times until it is starved, then at
    most once for each other tier, because a tier just picked restarts from 0 and cannot
    overtake it again. In steady overload of P0 and P3, P3 gets one hand-over in L + 1.
    With L = 0 there is no guard: a lower tier waits as long as a higher tier has a batch.
    """

    def __init__(self, tiers: Sequence[str] = TIERS, starvation_limit: int = 20) -> None:
        if starvation_limit < 0:
            raise ValueError(f"starvation_limit must be >= 0 (0: strict), got {starvation_limit}")
        if len(set(tiers)) != len(tiers) or not tiers:
            raise ValueError(f"tiers must be distinct and not empty, got {list(tiers)}")
        self.tiers = tuple(tiers)
        self.starvation_limit = starvation_limit
        self.skipped = dict.fromkeys(self.tiers, 0)
        self.boosted = dict.fromkeys(self.tiers, 0)
        """How often each tier was picked by the starvation guard, not by priority."""

    def pick(self, waiting: Collection[str]) -> str | None:
        """The tier to hand over next, or None when nothing is waiting."""
        unknown = set(waiting) - set(self.tiers)
        if unknown:
            raise ValueError(f"unknown tier(s) {sorted(unknown)}; known: {list(self.tiers)}")
        candidates = [tier for tier in self.tiers if tier in waiting]
        chosen = candidates[0] if candidates else None
        if self.starvation_limit and candidates:
            starved = [t for t in candidates if self.skipped[t] >= self.starvation_limit]
            if starved:
                # max() keeps the first of equal counts: the higher priority wins ties
                boost = max(starved, key=lambda t: self.skipped[t])
                if boost != chosen:
                    self.boosted[boost] += 1
                chosen = boost
        for tier in self.tiers:
            self.skipped[tier] = self.skipped[tier] + 1 if tier in waiting and tier != chosen else 0
        return chosen


# --- dedupe ---------------------------------------------------------------------------------------


class SentId(NamedTuple):
    """What the dedupe store remembers: a group delivered a trigger on a channel.

    The group and the channel are part of it so that senders of different channels or groups
    that share one store never take each other's deliveries for their own.
    """

    group: str
    channel: str
    trigger_id: str


class Deduper(Protocol):
    """Remembers which triggers were sent, by group, channel and trigger id."""

    def seen(self, ids: Sequence[SentId]) -> set[SentId]:
        """The ids among ``ids`` that were sent before."""

    def mark(self, ids: Sequence[SentId]) -> None:
        """Remember ``ids`` as sent."""


class MemoryDedupe:
    """A bounded LRU set of sent ids (``--dedupe memory``; forgets on restart)."""

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"the dedupe cache needs a capacity >= 1, got {capacity}")
        self.capacity = capacity
        self._ids: OrderedDict[SentId, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._ids)

    def seen(self, ids: Sequence[SentId]) -> set[SentId]:
        """The ids held; each hit becomes the most recently used."""
        hits = set()
        for sent_id in ids:
            if sent_id in self._ids:
                self._ids.move_to_end(sent_id)
                hits.add(sent_id)
        return hits

    def mark(self, ids: Sequence[SentId]) -> None:
        """Add the ids; the least recently used ones beyond the capacity are forgotten."""
        for sent_id in ids:
            self._ids[sent_id] = None
            self._ids.move_to_end(sent_id)
        while len(self._ids) > self.capacity:
            self._ids.popitem(last=False)


class RedisDedupe:
    """Sent ids in Redis (one key per id, with a TTL), behind an in-memory LRU.

    The key is ``udfs.stores.keys.sent``. Redis makes the dedupe survive restarts and span
    every process of a sender group that shares the key prefix; the LRU spares a round trip for
    the ids this process has seen recently. One ``MGET`` per batch looks ids up, one pipeline
    of ``SET ... EX`` per batch records them.
    """

    def __init__(self, client: Any, cfg: NudgeflowConfig, ttl_s: int,
                 cache: MemoryDedupe | None = None) -> None:
        self.client = client
        self.cfg = cfg
        self.ttl_s = ttl_s
        self.cache = cache or MemoryDedupe()

    def _fail(self, exc: Exception) -> SenderError:
        url = self.cfg.describe()["redis_url"].strip("'")
        return SenderError(f"the dedupe store (Redis at {url}) failed: {exc}; use --dedupe memory "
                           "to run without Redis (dedupe then forgets on restart)")

    def _key(self, sent_id: SentId) -> str:
        return keys.sent(self.cfg.redis_key_prefix, *sent_id)

    def seen(self, ids: Sequence[SentId]) -> set[SentId]:
        """The ids sent before: LRU hits plus the ids that have a key in Redis."""
        hits = self.cache.seen(ids)
        missing = [i for i in dict.fromkeys(ids) if i not in hits]
        if missing:
            try:
                values = self.client.mget([self._key(i) for i in missing])
            except Exception as exc:  # noqa: BLE001 - any client error means: cannot dedupe
                raise self._fail(exc) from exc
            found = [i for i, value in zip(missing, values, strict=True) if value is not None]
            self.cache.mark(found)
            hits.update(found)
        return hits

    def mark(self, ids: Sequence[SentId]) -> None:
        """Record the ids in Redis (with the TTL), then in the LRU."""
        if not ids:
            return
        try:
            pipe = self.client.pipeline(transaction=False)
            for sent_id in ids:
                pipe.set(self._key(sent_id), b"1", ex=self.ttl_s)
            pipe.execute()
        except Exception as exc:  # noqa: BLE001 - any client error means: cannot dedupe
            raise self._fail(exc) from exc
        self.cache.mark(ids)


# --- one batch ------------------------------------------------------------------------------------


def is_expired(trigger: Record, now_ms: int) -> bool:
    """Whether a trigger must be dropped: ``expires_at`` is set and lies before ``now_ms``."""
    expires_at = trigger.get("expires_at")
    return expires_at is not None and expires_at < now_ms


def decode_trigger(codec: Codec, record: SourceRecord) -> Record | Rejected:
    """Decode a tier-topic record into a TriggerEvent, or say why it is rejected."""
    if not record.value:
        return Rejected("INVALID_AVRO", "empty record value (a tombstone or an empty message)",
                        DEAD_LETTER_STAGE)
    try:
        return codec.decode(record.value, expect="TriggerEvent")
    except UnknownSchemaError as exc:
        return Rejected("UNKNOWN_SCHEMA", str(exc), DEAD_LETTER_STAGE)
    except WrongSchemaError as exc:
        return Rejected("OTHER", str(exc), DEAD_LETTER_STAGE)
    except CodecError as exc:
        return Rejected("INVALID_AVRO", str(exc), DEAD_LETTER_STAGE)


@dataclass
class BatchOutcome:
    """What happened to one handed-over batch."""

    handled: int = 0
    """How many records, from the batch's start, are done with (their offsets may be committed)."""
    delivered: int = 0
    duplicates: int = 0
    expired: int = 0
    bad: int = 0
    skipped: int = 0
    """Triggers of a channel this sender does not take (``--channels``), left untouched."""
    dead_letters: list[Record] = field(default_factory=list)
    error: SenderError | None = None
    """Set when the batch stopped early because the adapter kept failing."""


def process_batch(
    records: Sequence[SourceRecord],
    *,
    codec: Codec,
    dedupe: Deduper,
    adapter: ChannelAdapter,
    now_ms: int,
    group: str,
    channels: Collection[str] = CHANNELS,
    retry: DeliveryRetryPolicy | None = None,
    limit: int | None = None,
    sleep: Callable[[float], None] = time.sleep,
    say: Callable[[str], None] = print,
) -> BatchOutcome:
    """Deliver one batch: decode, skip, drop expired and duplicates, send, mark sent.

    A trigger whose channel is not in ``channels`` is only counted as skipped: it is not sent,
    not looked up and not marked, so the sender of its channel still delivers it. The others
    are deduplicated by ``SentId(group, channel, trigger_id)``.

    Records are handled in order; the outcome's ``handled`` prefix may be committed. Handling
    stops early (``handled`` < len) when ``limit`` triggers were delivered or the adapter keeps
    failing (then ``error`` is set). Ids sent are marked in ``dedupe`` even then.

    Raises:
        SenderError: the dedupe store failed (nothing of the batch counts as handled).
    """
    retry = retry or DeliveryRetryPolicy()
    outcome = BatchOutcome()
    items = [(record, decode_trigger(codec, record)) for record in records]
    candidates = [_sent_id(group, item) for _, item in items
                  if isinstance(item, dict) and item["channel"] in channels
                  and not is_expired(item, now_ms)]
    seen = dedupe.seen(candidates) if candidates else set()
    sent: list[SentId] = []
    try:
        for record, item in items:
            if limit is not None and outcome.delivered >= limit:
                break
            if isinstance(item, Rejected):
                outcome.bad += 1
                outcome.dead_letters.append(dead_letter(record, item, now_ms))
                say(f"bad record at {record.topic}/{record.partition}@{record.offset} "
                    f"({item.reason_code}): {item.reason}")
            elif item["channel"] not in channels:
                # another channel's sender delivers it: marking it here would make that
                # sender drop it as a duplicate (issue 18)
                outcome.skipped += 1
            elif is_expired(item, now_ms):
                outcome.expired += 1
            elif (sent_id := _sent_id(group, item)) in seen:
                outcome.duplicates += 1
            else:
                try:
                    send_with_retry(adapter, item, retry, sleep=sleep, say=say)
                except AdapterFailedError as exc:
                    outcome.error = exc
                    break
                seen.add(sent_id)
                sent.append(sent_id)
                outcome.delivered += 1
            outcome.handled += 1
    finally:
        # marked even when the batch stops early: what was sent must not be sent again
        if sent:
            dedupe.mark(sent)
    return outcome


def _sent_id(group: str, trigger: Record) -> SentId:
    return SentId(group, trigger["channel"], trigger["trigger_id"])


# --- the report -----------------------------------------------------------------------------------


@dataclass
class TierStats:
    """Counters of one tier."""

    delivered: int = 0
    duplicates: int = 0
    expired: int = 0
    bad: int = 0
    skipped: int = 0
    """Triggers of other channels (not in ``--channels``): neither delivered nor marked."""
    lag: int | None = None
    """Committed records not yet handed over: end offsets minus committed offsets (read
    committed; before the first commit, minus the start position); None: not measured."""


COUNTERS = ("delivered", "duplicates", "expired", "bad", "skipped")


@dataclass
class SenderReport:
    """What a sender run did, per tier; ``run_sender`` returns it."""

    tiers: dict[str, TierStats] = field(default_factory=lambda: {t: TierStats() for t in TIERS})
    elapsed_s: float = 0.0
    stopped: str = ""
    """Why the run ended (idle, max-triggers, SIGTERM, SIGINT, stop requested, adapter failed);
    empty while it runs."""

    def total(self, counter: str) -> int:
        """A counter summed over the tiers."""
        return sum(getattr(stats, counter) for stats in self.tiers.values())

    def add(self, tier: str, outcome: BatchOutcome) -> None:
        """Count a batch's outcome."""
        stats = self.tiers[tier]
        for counter in COUNTERS:
            setattr(stats, counter, getattr(stats, counter) + getattr(outcome, counter))

    def snapshot(self) -> SenderReport:
        """An independent copy (to compute rates against later)."""
        return replace(self, tiers={t: replace(s) for t, s in self.tiers.items()})


def format_report(report: SenderReport, since: SenderReport | None = None) -> str:
    """A small table: per tier delivered, rate, duplicates, expired, bad, skipped and lag.

    ``skipped`` counts the triggers of other channels (``--channels``). The rate is triggers
    delivered per second since ``since`` (a periodic report), or over the whole run when
    ``since`` is None (the final report).
    """
    span = report.elapsed_s - (since.elapsed_s if since else 0.0)
    title = f"sender after {report.elapsed_s:.1f} s"
    if report.stopped:
        title += f" (stopped: {report.stopped})"
    lines = [title, f"{'tier':<6}{'delivered':>10}{'/s':>9}{'duplicates':>12}{'expired':>9}"
                    f"{'bad':>6}{'skipped':>9}{'lag':>9}"]
    rows = [(tier, stats, since.tiers[tier] if since else TierStats())
            for tier, stats in report.tiers.items()]
    total = TierStats(*(report.total(c) for c in COUNTERS))
    total_before = TierStats(*(since.total(c) for c in COUNTERS)) if since else TierStats()
    lags = [s.lag for s in report.tiers.values()]
    total.lag = None if any(lag is None for lag in lags) else sum(lag or 0 for lag in lags)
    for tier, stats, before in [*rows, ("all", total, total_before)]:
        rate = (stats.delivered - before.delivered) / span if span > 0 else 0.0
        lag = "-" if stats.lag is None else f"{stats.lag:,}"
        lines.append(f"{tier:<6}{stats.delivered:>10,}{rate:>9.1f}{stats.duplicates:>12,}"
                     f"{stats.expired:>9,}{stats.bad:>6,}{stats.skipped:>9,}{lag:>9}")
    return "\n".join(lines)


# --- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderOptions:
    """How the sender runs (the Kafka, Redis and topic names come from NudgeflowConfig)."""

    group: str = DEFAULT_GROUP
    """Consumer group id under which offsets are committed (one sender per group); also part
    of the dedupe key."""
    channels: tuple[str, ...] = CHANNELS
    """The channels this sender delivers (default: all); triggers of others are skipped."""
    adapter: str = DEFAULT_ADAPTER
    """The channel adapter, as module:attribute (the CLI loads it; run_sender takes an object)."""
    batch_size: int = 100
    """Most records one poll buffers per tier: the unit of priority and of commits."""
    starvation_limit: int = 20
    """Hand-overs a waiting lower tier may be passed over in a row; 0: strict priority."""
    dedupe: str = "redis"
    """redis: sent ids survive restarts (and an LRU sits in front); memory: an LRU only."""
    dedupe_ttl_s: int = 8 * 24 * 3600
    """How long Redis remembers a sent trigger id."""
    dedupe_cache: int = 100_000
    """Size of the in-memory LRU of sent trigger ids."""
    adapter_retries: int = 3
    """Retries of a failing adapter call before the sender stops."""
    retry_backoff_s: float = 0.5
    """Wait before the first retry; doubles with each retry."""
    report_every_s: float = 10.0
    """Seconds between reports; 0: only the final report."""
    until_idle_s: float | None = None
    """Stop once every tier was caught up for this long; None: run until stopped."""
    max_triggers: int | None = None
    """Stop after delivering this many triggers; None: no limit."""
    start: str = "earliest"
    """Where a group without committed offsets starts: earliest or latest."""
    bad_records: str = "dead-letter"
    """dead-letter: write undecodable records to the dead-letter topic; skip: count and log."""
    fetch_wait_ms: int = 1000
    """How long to wait for a higher tier's known backlog to arrive before serving a lower one."""

    def __post_init__(self) -> None:
        problems = []
        if not self.group:
            problems.append("group must not be empty")
        problems += _channel_problems(self.channels)
        if self.batch_size < 1:
            problems.append(f"batch_size must be >= 1, got {self.batch_size}")
        if self.starvation_limit < 0:
            problems.append(f"starvation_limit must be >= 0, got {self.starvation_limit}")
        if self.dedupe not in DEDUPE_MODES:
            problems.append(f"dedupe must be one of {', '.join(DEDUPE_MODES)}, got {self.dedupe!r}")
        if self.bad_records not in BAD_RECORD_MODES:
            problems.append(f"bad_records must be one of {', '.join(BAD_RECORD_MODES)}, "
                            f"got {self.bad_records!r}")
        if self.start not in START_MODES:
            problems.append(f"start must be one of {', '.join(START_MODES)}, got {self.start!r}")
        for name in ("dedupe_ttl_s", "dedupe_cache"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("adapter_retries", "retry_backoff_s", "report_every_s", "fetch_wait_ms"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.until_idle_s is not None and self.until_idle_s < 0:
            problems.append(f"until_idle_s must be >= 0, got {self.until_idle_s}")
        if self.max_triggers is not None and self.max_triggers < 1:
            problems.append(f"max_triggers must be >= 1, got {self.max_triggers}")
        if problems:
            raise ValueError("invalid sender options: " + "; ".join(problems))


def _channel_problems(channels: Sequence[str]) -> list[str]:
    valid = ", ".join(CHANNELS)
    if isinstance(channels, str):  # a str is a Sequence too: "EMAIL" would be five channels
        return [f"channels must be a tuple of channel names, got the string {channels!r}"]
    if not channels:
        return [f"channels must name at least one channel of {valid}"]
    unknown = [c for c in channels if c not in CHANNELS]
    if unknown:
        return [f"channels: unknown channel(s) {', '.join(map(repr, unknown))}; the channels "
                f"(the TriggerEvent schema's Channel enum) are {valid}"]
    return []


def parse_channels(text: str) -> tuple[str, ...]:
    """The channels of a ``--channels`` value: ``"EMAIL, SMS"`` -> ``("EMAIL", "SMS")``.

    Not validated here: ``SenderOptions`` checks the names against the schema's Channel enum.
    """
    return tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))


#: (flag, metavar, SenderOptions field, type, choices, help) of the flags ``nudgeflow sender`` has
_FLAGS: tuple[tuple[str, str | None, str, type, tuple[str, ...], str], ...] = (
    ("--group", "GROUP", "group", str, (),
     "consumer group id of the committed offsets and of the dedupe keys; run one sender per "
     "group"),
    ("--channels", "EMAIL,SMS,...", "channels", str, (),
     f"comma-separated channels this sender delivers, of {', '.join(CHANNELS)}; triggers of "
     "other channels are skipped (not delivered, not marked sent, counted as skipped); "
     "default: all channels"),
    ("--adapter", "MODULE:ATTR", "adapter", str, (),
     "channel adapter: a class constructible without arguments, or an object with "
     "send(trigger)"),
    ("--batch-size", "N", "batch_size", int, (),
     "records per poll and tier: the unit of priority and of commits"),
    ("--starvation-limit", "N", "starvation_limit", int, (),
     "a lower tier with data waiting is served after being passed over this many times in a "
     "row; 0: strict priority"),
    ("--dedupe", None, "dedupe", str, DEDUPE_MODES,
     "where sent trigger ids are remembered: redis (survives restarts) or memory (an LRU only)"),
    ("--dedupe-ttl", "SECONDS", "dedupe_ttl_s", int, (),
     "how long Redis remembers a sent trigger id"),
    ("--dedupe-cache", "N", "dedupe_cache", int, (), "size of the in-memory LRU of sent ids"),
    ("--adapter-retries", "N", "adapter_retries", int, (),
     "retries of a failing adapter call before the sender stops"),
    ("--retry-backoff", "SECONDS", "retry_backoff_s", float, (),
     "wait before the first retry; doubles each time"),
    ("--report-every", "SECONDS", "report_every_s", float, (),
     "time between reports; 0: only at exit"),
    ("--until-idle", "SECONDS", "until_idle_s", float, (),
     "exit once every tier was caught up for this long (draining a backlog, tests)"),
    ("--max-triggers", "N", "max_triggers", int, (), "exit after delivering this many triggers"),
    ("--start", None, "start", str, START_MODES, "where a group without committed offsets starts"),
    ("--bad-records", None, "bad_records", str, BAD_RECORD_MODES,
     "undecodable records: write them to the dead-letter topic, or only count and log them"),
)


def add_sender_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sender's own flags, each with a ``NUDGEFLOW_SENDER_*`` fallback in the help."""
    group = parser.add_argument_group("sender (flag > env > default)")
    defaults = SenderOptions()
    for flag, metavar, name, typ, choices, help_text in _FLAGS:
        env = ENV_PREFIX + flag[2:].replace("-", "_").upper()
        default = getattr(defaults, name)
        if isinstance(default, tuple):  # --channels: spelled on the command line with commas
            default = ",".join(default)
        kwargs: dict[str, Any] = {
            "dest": f"sender_{name}",
            "type": typ,
            # argparse converts a string default with ``type``, so an env value is checked too
            "default": os.environ.get(env, default),
            "help": f"{help_text} [env: {env}] [default: {default!r}]",
        }
        if choices:
            kwargs["choices"] = list(choices)
        else:
            kwargs["metavar"] = metavar
        group.add_argument(flag, **kwargs)


def options_from_args(args: argparse.Namespace) -> SenderOptions:
    """The options given parsed arguments of a parser set up by ``add_sender_arguments``.

    Raises:
        ValueError: an option is out of range or names an unknown channel.
    """
    values = {name: getattr(args, f"sender_{name}") for _, _, name, *_ in _FLAGS}
    values["channels"] = parse_channels(values["channels"])
    return SenderOptions(**values)


# --- Kafka ----------------------------------------------------------------------------------------


def wall_clock_ms() -> int:
    """Now, in milliseconds since the Unix epoch (what ``expires_at`` is compared with)."""
    return time.time_ns() // 1_000_000


class _TierSource:
    """One tier's consumer and the batch it buffered.

    The consumer is assigned every partition of the tier topic (not group-managed).
    """

    def __init__(self, tier: str, topic: str, consumer: Any, partitions: list[Any]) -> None:
        self.tier = tier
        self.topic = topic
        self.consumer = consumer
        self.partitions = partitions
        self.buffer: list[SourceRecord] = []
        self.committed: dict[Any, int] = {}
        # after a batch was handed over only in part, the consumer's positions lie beyond
        # records that were not handled: from then on only handled offsets are committed
        self.positions_trusted = True

    def fill(self, timeout_ms: int, max_records: int) -> bool:
        """Poll once if nothing is buffered; whether a batch is buffered now."""
        if not self.buffer:
            polled = self.consumer.poll(timeout_ms=timeout_ms, max_records=max_records)
            self.buffer = [
                SourceRecord(m.topic, m.partition, m.offset, m.timestamp, m.key, m.value)
                for messages in polled.values() for m in messages
            ]
        return bool(self.buffer)

    def behind(self) -> bool:
        """Whether the topic holds committed records this consumer has not fetched yet."""
        ends = self.consumer.end_offsets(self.partitions)
        return any(self.consumer.position(tp) < ends[tp] for tp in self.partitions)

    def await_backlog(self, wait_ms: int, max_records: int) -> bool:
        """Fetch a batch the topic is known to hold (up to ``wait_ms``); whether one arrived."""
        deadline = time.monotonic() + wait_ms / 1000
        while not self.buffer and self.behind():
            remaining_ms = int((deadline - time.monotonic()) * 1000)
            if remaining_ms <= 0:
                break
            self.fill(min(remaining_ms, 100), max_records)
        return bool(self.buffer)

    def take(self) -> list[SourceRecord]:
        batch, self.buffer = self.buffer, []
        return batch

    def _commit(self, offsets: dict[Any, int]) -> None:
        from kafka import OffsetAndMetadata

        changed = {tp: o for tp, o in offsets.items() if self.committed.get(tp) != o}
        if changed:
            self.consumer.commit({tp: OffsetAndMetadata(o, "", -1) for tp, o in changed.items()})
            self.committed.update(changed)

    def commit_positions(self) -> None:
        """Commit the consumer's positions: everything polled so far was handed over.

        Positions also move past transaction markers and aborted records, which no handed-over
        record accounts for; committing them is what brings the lag to 0.
        """
        if not self.buffer and self.positions_trusted:
            self._commit({tp: self.consumer.position(tp) for tp in self.partitions})

    def commit_handled(self, handled: Sequence[SourceRecord]) -> None:
        """Commit up to the given records (a prefix of a batch)."""
        from kafka import TopicPartition

        self.positions_trusted = False
        offsets: dict[Any, int] = {}
        for record in handled:
            tp = TopicPartition(record.topic, record.partition)
            offsets[tp] = max(offsets.get(tp, 0), (record.offset or 0) + 1)
        self._commit(offsets)

    def lag(self) -> int:
        """End offsets minus committed offsets (or the start positions before a commit)."""
        ends = self.consumer.end_offsets(self.partitions)
        done = sum(self.committed[tp] if tp in self.committed else self.consumer.position(tp)
                   for tp in self.partitions)
        return max(0, sum(ends.values()) - done)

    def close(self) -> None:
        self.consumer.close(autocommit=False)


def _open_sources(cfg: NudgeflowConfig, options: SenderOptions) -> list[_TierSource]:
    from kafka import KafkaConsumer, TopicPartition

    sources: list[_TierSource] = []
    try:
        for tier in TIERS:
            topic = cfg.trigger_topic(tier)
            consumer = KafkaConsumer(
                **cfg.python_client_kwargs(),
                client_id=f"nudgeflow-sender-{tier.lower()}",
                group_id=options.group,
                enable_auto_commit=False,
                isolation_level="read_committed",
                auto_offset_reset=options.start,
                max_poll_records=options.batch_size,
            )
            partitions = [TopicPartition(topic, p)
                          for p in sorted(consumer.partitions_for_topic(topic) or ())]
            if not partitions:
                consumer.close(autocommit=False)
                raise SenderError(f"the trigger topic {topic!r} does not exist at "
                                  f"{cfg.kafka_bootstrap}; run `nudgeflow stack provision`")
            # assigned, not subscribed: kafka-python 3.0.12's group membership did not settle
            # with one consumer per tier (see docs/consuming.md); the group id only names the
            # offsets
            consumer.assign(partitions)
            source = _TierSource(tier, topic, consumer, partitions)
            for tp in partitions:
                committed = consumer.committed(tp)
                if committed is not None:
                    source.committed[tp] = committed
            sources.append(source)
    except BaseException:
        for source in sources:
            source.close()
        raise
    return sources


class _DeadLetters:
    """Writes DeadLetter records; created on the first bad record."""

    def __init__(self, cfg: NudgeflowConfig, codec: Codec) -> None:
        self.cfg = cfg
        self.codec = codec
        self.producer: Any = None

    def write(self, letters: Sequence[Record]) -> None:
        from kafka import KafkaProducer

        if self.producer is None:
            self.producer = KafkaProducer(**self.cfg.python_client_kwargs(), acks="all")
        futures = [self.producer.send(self.cfg.dead_letter_topic, key=letter["key"],
                                      value=self.codec.encode("DeadLetter", letter))
                   for letter in letters]
        self.producer.flush(timeout=30)
        for future in futures:
            future.get(timeout=30)  # raises if a dead letter was not written: never lose one

    def close(self) -> None:
        if self.producer is not None:
            self.producer.close(timeout=10)


def open_dedupe(cfg: NudgeflowConfig, options: SenderOptions) -> Deduper:
    """The dedupe store the options ask for."""
    cache = MemoryDedupe(options.dedupe_cache)
    if options.dedupe == "memory":
        return cache
    import redis

    client = redis.Redis.from_url(cfg.redis_url, socket_timeout=5)
    return RedisDedupe(client, cfg, options.dedupe_ttl_s, cache)


@contextlib.contextmanager
def _stop_on_signals(stopped: list[str]) -> Iterator[None]:
    """SIGINT and SIGTERM append their name to ``stopped`` (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, _frame: Any) -> None:
        stopped.append(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def run_sender(
    cfg: NudgeflowConfig,
    options: SenderOptions,
    adapter: ChannelAdapter,
    clock: Callable[[], int] = wall_clock_ms,
    say: Callable[[str], None] = print,
    stop: threading.Event | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> SenderReport:
    """Deliver triggers from the four tier topics to ``adapter`` until told to stop.

    Stops on SIGINT/SIGTERM (when called in the main thread), when ``stop`` is set, after
    ``options.max_triggers`` deliveries, or once every tier was caught up for
    ``options.until_idle_s``. Prints a report every ``options.report_every_s`` and at the end.

    Args:
        cfg: Kafka, Redis and topic names.
        options: how to run (see ``SenderOptions``).
        adapter: receives each trigger to deliver.
        clock: wall clock in epoch milliseconds, for ``expires_at`` and dead letters.
        say: where reports and warnings go.
        stop: set it to stop the sender from another thread.
        sleep: waits between adapter retries.

    Returns:
        The final report (lag measured after the last commit).

    Raises:
        AdapterFailedError: the adapter kept failing; offsets are committed up to the trigger
            before the failing one; ``exc.report`` holds the report.
        SenderError: a tier topic is missing, or Kafka, Redis or the dead-letter topic failed.
    """
    from kafka.errors import KafkaError

    codec = Codec.load()
    dedupe = open_dedupe(cfg, options)
    scheduler = TierScheduler(TIERS, options.starvation_limit)
    retry = DeliveryRetryPolicy(options.adapter_retries, options.retry_backoff_s)
    report = SenderReport()
    try:
        sources = _open_sources(cfg, options)
    except SenderError:
        raise
    except Exception as exc:
        raise SenderError(f"cannot read the trigger topics at {cfg.kafka_bootstrap}: "
                          f"{type(exc).__name__}: {exc}") from exc
    by_tier = {source.tier: source for source in sources}
    letters = _DeadLetters(cfg, codec) if options.bad_records == "dead-letter" else None
    started = time.monotonic()
    last_report, previous = started, report.snapshot()
    idle_since: float | None = None
    last_idle_commit = 0.0
    signals: list[str] = []
    failure: SenderError | None = None
    say(f"sender: group {options.group}, channels {','.join(options.channels)}, topics "
        f"{', '.join(s.topic for s in sources)}, starvation limit "
        f"{options.starvation_limit or 'off (strict)'}, dedupe {options.dedupe}")
    with _stop_on_signals(signals):
        try:
            while True:
                if signals or (stop is not None and stop.is_set()):
                    report.stopped = signals[0] if signals else "stop requested"
                    break
                if options.max_triggers is not None and \
                        report.total("delivered") >= options.max_triggers:
                    report.stopped = "max-triggers"
                    break
                tier = _choose_tier(sources, scheduler, options)
                now = time.monotonic()
                if tier is None:
                    idle_since = idle_since or now
                    if now - last_idle_commit >= 1.0:
                        for source in sources:
                            source.commit_positions()
                        last_idle_commit = now
                    if options.until_idle_s is not None and \
                            now - idle_since >= options.until_idle_s:
                        if not any(source.behind() for source in sources):
                            report.stopped = "idle"
                            break
                        idle_since = now
                    for source in sources:  # wait a little for new records, P0 first
                        if source.fill(25, options.batch_size):
                            break
                else:
                    idle_since = None
                    source = by_tier[tier]
                    batch = source.take()
                    remaining = (None if options.max_triggers is None
                                 else options.max_triggers - report.total("delivered"))
                    outcome = process_batch(batch, codec=codec, dedupe=dedupe, adapter=adapter,
                                            now_ms=clock(), group=options.group,
                                            channels=options.channels, retry=retry,
                                            limit=remaining, sleep=sleep, say=say)
                    report.add(tier, outcome)
                    if outcome.dead_letters and letters is not None:
                        letters.write(outcome.dead_letters)
                    if outcome.handled == len(batch):
                        source.commit_positions()
                    else:
                        source.commit_handled(batch[:outcome.handled])
                    if outcome.error is not None:
                        failure = outcome.error
                        report.stopped = "adapter failed"
                        break
                if options.report_every_s and now - last_report >= options.report_every_s:
                    report.elapsed_s = now - started
                    _measure_lag(report, sources)
                    say(format_report(report, previous))
                    last_report, previous = now, report.snapshot()
            for source in sources:
                source.commit_positions()
            report.elapsed_s = time.monotonic() - started
            _measure_lag(report, sources)
        except KafkaError as exc:
            report.stopped = "Kafka failed"
            report.elapsed_s = time.monotonic() - started
            raise SenderError(
                f"Kafka at {cfg.kafka_bootstrap} failed: {type(exc).__name__}: {exc}; offsets "
                "are committed up to the last batch handed over: restart to resume", report
            ) from exc
        finally:
            for source in sources:
                source.close()
            if letters is not None:
                letters.close()
            close = getattr(adapter, "close", None)
            if callable(close):
                close()
    say(format_report(report))
    if failure is not None:
        failure.report = report
        raise failure
    return report


def _choose_tier(sources: Sequence[_TierSource], scheduler: TierScheduler,
                 options: SenderOptions) -> str | None:
    """Buffer a batch per tier where one is ready, then let the scheduler pick a tier."""
    waiting = {source.tier for source in sources if source.fill(0, options.batch_size)}
    # a higher tier whose records are committed but not fetched yet goes before a lower one
    best = min((TIERS.index(tier) for tier in waiting), default=len(TIERS))
    for source in sources[:best]:
        if source.await_backlog(options.fetch_wait_ms, options.batch_size):
            waiting.add(source.tier)
            break
    return scheduler.pick(waiting)


def _measure_lag(report: SenderReport, sources: Iterable[_TierSource]) -> None:
    for source in sources:
        report.tiers[source.tier].lag = source.lag()
