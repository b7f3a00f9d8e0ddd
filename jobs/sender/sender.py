"""``nudgeflow sender``: the reference consumer of the trigger topics, P0 first.

Input: the four tier topics ``<trigger_topic_prefix>p0`` .. ``p3`` (TriggerEvents in Avro
single-object encoding, or in Confluent's wire format, whose schema ids it looks up once each
in ``cfg.schema_registry_url``; keyed by user_id), read by one confluent-kafka (librdkafka) consumer
that is a member of the consumer group ``--group`` (cooperative-sticky assignment,
``isolation.level=read_committed``, so records of aborted or still open transactions are never
seen).
Output: one ``adapter.send(trigger)`` call per trigger to deliver (a ``ChannelAdapter``); a
CampaignOutcome on ``cfg.outcomes_topic`` (keyed by user_id) for every trigger the adapter
delivered (DELIVERED), the sender dropped unsent (EXPIRED) or the channel refused for good
(FAILED), which the engine's journeys wait on (``--no-outcomes`` turns it off); a
DeadLetter on ``cfg.dead_letter_topic`` for every record that does not decode; the consumer
group's committed offsets; a report (per tier: delivered, duplicates, expired, failed, bad,
skipped, the group's lag, rate).
State: per tier a buffer of consumed records (a few batches; the tier's partitions are paused
while it is full), at most one batch in flight, the offsets handled per assigned partition
(``PartitionLedger``), the scheduler's starvation counters, and the dedupe store (Redis keys
``<redis_key_prefix>:sent:<group>:<channel>:<trigger_id>`` with a TTL, behind an in-memory LRU).

Scaling out. Senders started with the same ``--group`` share the tier topics' partitions: the
group assigns each partition to one of them (cooperative-sticky: a rebalance moves only the
partitions that change owner, the others keep flowing). A sender that stops cleanly commits
and leaves at once; one that dies (SIGKILL, a lost host) keeps its partitions until
``--session-timeout`` passes, then they move to the others, which resume from its last commit.
On revocation a sender commits what it handled of the partitions leaving and drops the rest
of their buffered records, so the next owner reads exactly what was not committed.

Channels. A sender takes the triggers of ``--channels`` (default: all channels) and skips the
others: not delivered, not marked sent, counted as skipped, so that one sender group per
channel can read the same topics without taking each other's triggers.

Priority, per sender, over the partitions assigned to it. ``TierScheduler`` picks the batch to
hand over: the highest-priority tier with a batch (up to ``batch_size`` buffered records)
waiting. Before a lower tier is served, every higher tier without a batch is checked against
its end offsets (the last stable offsets, read committed); a higher tier with committed records
not consumed yet is fetched first (up to ``fetch_wait_ms``). So with ``starvation_limit=0`` no
P1 record is handed over while this sender's P0 partitions hold committed records it has not
handed over yet, and so on down the tiers. The unit is the batch: a P0 record that arrives
while a P1 batch is being delivered waits for that batch to finish. With
``starvation_limit=L > 0`` a tier that had a batch waiting and was passed over L times in a row
gets the next hand-over (see ``TierScheduler`` for the exact bound). Senders of one group order
their own partitions; across senders there is no order (each serves its P0 first).

Budgets and admission (``jobs.sender.budgets``): a channel may have a send budget for the whole
group (``--budget SMS=50/s``, kept in Redis and changeable at runtime), enforced by GCRA in one
Lua script per admission. Within a batch triggers are admitted in deadline order; one refused
waits as long as the script says while other channels go on; one whose ``expires_at`` passes
while it waits is dropped as expired (``adapter.expired``, and an EXPIRED outcome); a batch
whose every remaining trigger waits gives way to a higher tier that
has records (the rest goes back to the buffer). KPIs (``jobs.sender.kpis``): on-time rate,
queue wait, expired, deduped, budget utilisation, in the report and on ``--metrics-port``.

Delivery: at least once to the channel, deduplicated. Per batch: decode, skip other channels,
drop expired (``expires_at < now``), drop triggers this group already sent on that channel (LRU,
then Redis), send the rest (retrying with backoff), write their DELIVERED outcomes, EXPIRED for
those dropped and FAILED for those the channel refused for good (``DeliveryRefused``; waiting for
the acknowledgements), record the sent ids in Redis, write dead letters, then commit the
offsets. A crash between a send and the Redis write (at most one batch) sends those triggers
again after the restart (or from the sender that takes the partitions over) and writes their
outcomes again, with the same ``outcome_id`` (a hash of trigger id, channel and outcome; the
engine drops the repeat); a crash after the Redis write but before the commit redelivers the
batch, which is then dropped as duplicates (their outcomes were written before the Redis
write). An adapter that keeps failing stops the sender with ``AdapterFailedError``: offsets are
committed only up to the last trigger that was delivered.
See docs/consuming.md, "Consuming triggers".
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import math
import os
import signal
import threading
import time
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, NamedTuple, Protocol, runtime_checkable

from jobs.config import NudgeflowConfig
from jobs.schema_registry import RegistryError, schema_lookup
from jobs.sender.budgets import (
    Admitter,
    BudgetError,
    MemoryBudgets,
    RedisBudgets,
    parse_budget,
)
from jobs.sender.kpis import Delivery, DeliveryKpis, PrometheusKpis, format_kpis
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
DELIVERED = "DELIVERED"
"""The CampaignOutcome.outcome the sender reports for every trigger its adapter delivered."""
EXPIRED = "EXPIRED"
"""... for every trigger dropped because its ``expires_at`` passed before it could be sent."""
FAILED = "FAILED"
"""... for every trigger the adapter refused for good (``DeliveryRefused``)."""


class SenderError(RuntimeError):
    """The sender cannot go on; the message says why and what to do."""

    def __init__(self, message: str, report: SenderReport | None = None) -> None:
        super().__init__(message)
        self.report = report


class AdapterLoadError(SenderError):
    """``--adapter module:attr`` does not name a usable channel adapter."""


class AdapterFailedError(SenderError):
    """The channel adapter kept failing on one trigger; the sender stopped before it."""


class DeliveryRefused(Exception):
    """Raised by an adapter for a trigger its channel refuses for good.

    E.g. an invalid address or a blocked number: not retried, reported as a FAILED outcome,
    and the sender goes on. Any other exception means the channel may accept it later:
    retried, then the sender stops.
    """


# --- the channel adapter --------------------------------------------------------------------------


@runtime_checkable
class ChannelAdapter(Protocol):
    """What the sender hands triggers to: one call per trigger to deliver.

    ``send`` returns once the channel accepted the trigger and raises when it did not; the
    sender then retries with backoff and finally stops (it never skips a trigger that failed),
    unless the exception is ``DeliveryRefused``: the channel will never take it, so it gets a
    FAILED outcome and is not tried again. An adapter may also have ``close()``, called once
    when the sender stops, and ``expired(trigger)``, called once for each trigger dropped
    because its ``expires_at`` passed (before or while it waited for budget; it gets an EXPIRED
    outcome too).
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

    def expired(self, trigger: Record) -> None:
        """Print the line of a trigger dropped because its ``expires_at`` passed."""
        self.say("expired " + describe_trigger(trigger))


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
        except DeliveryRefused:
            raise  # the channel will never take it: no retry (a FAILED outcome)
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


def derive_outcome_id(trigger_id: str, channel: str, outcome: str) -> str:
    """The ``outcome_id`` of an outcome of a trigger on a channel: the same at every delivery.

    A redelivered trigger (a crash before its batch was recorded as sent) gets an outcome with
    the same id, which the engine drops as a repeat. 32 hex digits of a SHA-256, like trigger
    ids, so it stays within the id limit whatever the trigger id's length; channel and outcome
    are enum symbols (no ``|``), so the hashed text is unambiguous.
    """
    return hashlib.sha256(f"{trigger_id}|{channel}|{outcome}".encode()).hexdigest()[:32]


def build_delivered_outcome(trigger: Record, delivered_at: int) -> Record:
    """The DELIVERED CampaignOutcome of a trigger the adapter delivered at ``delivered_at`` (ms)."""
    return build_outcome(trigger, DELIVERED, delivered_at)


def build_outcome(trigger: Record, what: str, at_ms: int) -> Record:
    """The CampaignOutcome ``what`` (DELIVERED, EXPIRED, FAILED) of a trigger at ``at_ms``."""
    return {
        "outcome_id": derive_outcome_id(trigger["trigger_id"], trigger["channel"], what),
        "trigger_id": trigger["trigger_id"],
        "user_id": trigger["user_id"],
        "campaign_id": trigger["campaign_id"],
        "channel": trigger["channel"],
        "outcome": what,
        "event_time": at_ms,
        "revenue": None,
        "currency": None,
        "attribution_rule": None,  # only attributed conversions (the engine's) name a rule
    }


@dataclass
class BatchOutcome:
    """What happened to one handed-over batch."""

    handled: int = 0
    """How many records of the batch are done with (delivered, dropped, skipped or lettered)."""
    handled_at: list[int] = field(default_factory=list)
    """The indices in the batch of the records done with (what ``PartitionLedger.settle``
    takes): triggers are delivered in deadline order, so these need not be a prefix."""
    delivered: int = 0
    duplicates: int = 0
    expired: int = 0
    bad: int = 0
    skipped: int = 0
    """Triggers of a channel this sender does not take (``--channels``), left untouched."""
    failed: int = 0
    """Triggers the adapter refused for good (``DeliveryRefused``): FAILED, not retried."""
    dead_letters: list[Record] = field(default_factory=list)
    outcomes: list[Record] = field(default_factory=list)
    """One CampaignOutcome per trigger delivered (DELIVERED), expired (EXPIRED) or refused
    (FAILED), in the order it happened (none when off)."""
    deliveries: list[Delivery] = field(default_factory=list)
    """Tier, channel, emit time, deadline and delivery time of each delivery (for the KPIs)."""
    expirations: list[tuple[str, str]] = field(default_factory=list)
    """(tier, channel) of each trigger dropped as expired."""
    preempted: bool = False
    """The batch stopped waiting for budget because ``preempt`` said so (a higher tier)."""
    error: SenderError | None = None
    """Set when the batch stopped early because the adapter kept failing."""

    def done(self, index: int) -> None:
        """Record that the batch's record at ``index`` is done with."""
        self.handled_at.append(index)
        self.handled += 1


MAX_BUDGET_WAIT_S = 0.1
"""Longest single sleep while every remaining trigger of a batch waits for budget: ``preempt``
is asked (and Kafka polled) at least this often."""


def deadline_of(trigger: Record) -> float:
    """A trigger's ``expires_at`` for ordering (no deadline: last)."""
    expires_at = trigger.get("expires_at")
    return math.inf if expires_at is None else expires_at


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
    outcomes: bool = True,
    write_outcomes: Callable[[Sequence[Record]], None] | None = None,
    clock: Callable[[], int] | None = None,
    budget: Admitter | None = None,
    preempt: Callable[[], bool] | None = None,
) -> BatchOutcome:
    """Deliver one batch: decode, skip, drop expired and duplicates, admit by budget, send, mark.

    A trigger whose channel is not in ``channels`` is only counted as skipped: it is not sent,
    not looked up and not marked, so the sender of its channel still delivers it. The others
    are deduplicated by ``SentId(group, channel, trigger_id)``.

    Admission: the triggers to deliver are taken in deadline order (``expires_at``, none last;
    a batch is of one tier, and the scheduler hands higher tiers over first). Each asks
    ``budget`` for a cell of its channel; a refused one waits exactly as long as the budget
    says while triggers of other channels go on. A trigger whose ``expires_at`` passes while
    it waits is dropped as expired (``adapter.expired(trigger)`` is called if the adapter has
    it). One the adapter refuses with ``DeliveryRefused`` is not retried. When every remaining
    trigger waits,
    ``preempt()`` is asked (at least every ``MAX_BUDGET_WAIT_S``): True stops the batch there
    (``preempted``), and the rest goes back to the buffer, so a higher tier that arrived is
    served first and this tier waits rather than drops.

    The outcome's ``handled_at`` lists the records done with (their offsets may be committed
    with ``PartitionLedger.settle``). Handling stops early when ``limit`` triggers were
    delivered, the adapter keeps failing (then ``error`` is set) or ``preempt`` says so. Ids
    sent, expired or refused are marked in ``dedupe`` even then.

    With ``outcomes`` every trigger delivered gets a DELIVERED CampaignOutcome in the result's
    ``outcomes``, at ``clock()`` after its send (``now_ms`` without a clock), every expired one
    an EXPIRED and every refused one a FAILED outcome. They are passed to
    ``write_outcomes`` before the ids are marked: if writing fails, or the sender dies
    before, the triggers are not marked either, so they are sent again after a restart and their
    outcomes written then (same ids), instead of being dropped as duplicates with no outcome.

    Raises:
        ValueError: a ``budget`` without a ``clock`` (waiting needs time to pass).
        SenderError: the dedupe store or ``write_outcomes`` failed (nothing of the batch counts
            as handled; a failed write leaves the sent ids unmarked).
    """
    if budget is not None and clock is None:
        raise ValueError("process_batch: a budget needs a clock to wait on")
    retry = retry or DeliveryRetryPolicy()
    now_of = clock or (lambda: now_ms)
    outcome = BatchOutcome()
    items = [(record, decode_trigger(codec, record)) for record in records]
    candidates = [_sent_id(group, item) for _, item in items
                  if isinstance(item, dict) and item["channel"] in channels
                  and not is_expired(item, now_ms)]
    seen = dedupe.seen(candidates) if candidates else set()
    sent: list[SentId] = []
    gone: list[SentId] = []  # expired: marked too, so the group drops them once
    on_expired = getattr(adapter, "expired", None)

    def expire(index: int, trigger: Record) -> None:
        outcome.expired += 1
        outcome.expirations.append((trigger["tier"], trigger["channel"]))
        gone.append(_sent_id(group, trigger))
        if callable(on_expired):
            on_expired(trigger)
        if outcomes:
            outcome.outcomes.append(build_outcome(trigger, EXPIRED, now_of()))
        outcome.done(index)

    pending: dict[int, Record] = {}  # index -> trigger to deliver
    try:
        for index, (record, item) in enumerate(items):
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
                expire(index, item)
                continue
            elif (sent_id := _sent_id(group, item)) in seen:
                outcome.duplicates += 1
            else:
                seen.add(sent_id)  # a replay later in the same batch is a duplicate of it
                pending[index] = item
                continue
            outcome.done(index)
        order = sorted(pending, key=lambda i: (deadline_of(pending[i]), i))
        _deliver_pending({i: pending[i] for i in order}, outcome, sent, gone, expire,
                         adapter=adapter, retry=retry, limit=limit, sleep=sleep, say=say,
                         outcomes=outcomes, now_of=now_of, budget=budget, preempt=preempt,
                         group=group)
    finally:
        # marked even when the batch stops early: what was sent must not be sent again; but
        # only once its outcomes are written, or a restart would drop them as duplicates and
        # never report them
        if outcome.outcomes and write_outcomes is not None:
            write_outcomes(outcome.outcomes)
        if sent or gone:
            dedupe.mark([*sent, *gone])
    return outcome


def _deliver_pending(pending: dict[int, Record], outcome: BatchOutcome,
                     sent: list[SentId], gone: list[SentId],
                     expire: Callable[[int, Record], None], *,
                     adapter: ChannelAdapter, retry: DeliveryRetryPolicy, limit: int | None,
                     sleep: Callable[[float], None], say: Callable[[str], None], outcomes: bool,
                     now_of: Callable[[], int], budget: Admitter | None,
                     preempt: Callable[[], bool] | None, group: str) -> None:
    """The admission loop of ``process_batch``: deliver or expire ``pending`` (deadline order).

    ``pending`` maps batch index -> trigger; delivered, expired and refused ones are removed
    from it. A refused one (``DeliveryRefused``) goes to ``gone``: marked, never tried again.
    """
    blocked: dict[str, float] = {}  # channel -> epoch ms its budget may admit again
    while pending:
        progressed = False
        now = now_of()  # then the time of each delivery: the clock is read once per send
        for index, trigger in list(pending.items()):
            if limit is not None and outcome.delivered >= limit:
                return
            channel = trigger["channel"]
            if is_expired(trigger, now):
                del pending[index]
                expire(index, trigger)
                progressed = True
                continue
            if blocked.get(channel, -math.inf) > now:
                continue
            if budget is not None:
                admission = budget.admit(channel, trigger["tier"])
                if not admission.admitted:
                    blocked[channel] = now + admission.wait_ms
                    continue
            try:
                send_with_retry(adapter, trigger, retry, sleep=sleep, say=say)
            except AdapterFailedError as exc:
                outcome.error = exc
                return
            except DeliveryRefused as exc:
                del pending[index]
                progressed = True
                gone.append(_sent_id(group, trigger))
                outcome.failed += 1
                say(f"refused for good: {describe_trigger(trigger)}: {exc}")
                if outcomes:
                    outcome.outcomes.append(build_outcome(trigger, FAILED, now_of()))
                outcome.done(index)
                continue
            del pending[index]
            progressed = True
            sent.append(_sent_id(group, trigger))
            outcome.delivered += 1
            delivered_at = now = now_of()
            outcome.deliveries.append(Delivery(trigger["tier"], channel, trigger["emit_time"],
                                               trigger.get("expires_at"), delivered_at))
            if outcomes:
                outcome.outcomes.append(build_delivered_outcome(trigger, delivered_at))
            outcome.done(index)
        if pending and not progressed:
            if preempt is not None and preempt():
                outcome.preempted = True
                return
            # every remaining trigger waits: sleep until a budget frees a cell or a deadline
            # passes (then it is dropped), but ask preempt again within MAX_BUDGET_WAIT_S
            wake = min(min(blocked.get(t["channel"], math.inf), deadline_of(t) + 1)
                       for t in pending.values())
            sleep(min(max((wake - now_of()) / 1000, 0.001), MAX_BUDGET_WAIT_S))


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
    failed: int = 0
    """Triggers the channel refused for good (``DeliveryRefused``): a FAILED outcome each."""
    lag: int | None = None
    """Committed records not yet handed over: end offsets minus committed offsets (read
    committed; before the first commit, minus the start position); None: not measured."""


COUNTERS = ("delivered", "duplicates", "expired", "bad", "skipped", "failed")


@dataclass
class SenderReport:
    """What a sender run did, per tier; ``run_sender`` returns it."""

    tiers: dict[str, TierStats] = field(default_factory=lambda: {t: TierStats() for t in TIERS})
    elapsed_s: float = 0.0
    stopped: str = ""
    """Why the run ended (idle, max-triggers, SIGTERM, SIGINT, stop requested, adapter failed);
    empty while it runs."""
    kpis: DeliveryKpis = field(default_factory=DeliveryKpis)
    """On-time rate, queue wait, expired and deduped counts, budget utilisation (a snapshot
    shares it: it is not a rate)."""

    def total(self, counter: str) -> int:
        """A counter summed over the tiers."""
        return sum(getattr(stats, counter) for stats in self.tiers.values())

    def add(self, tier: str, outcome: BatchOutcome) -> None:
        """Count a batch's outcome."""
        stats = self.tiers[tier]
        for counter in COUNTERS:
            setattr(stats, counter, getattr(stats, counter) + getattr(outcome, counter))
        self.kpis.record(outcome.deliveries, outcome.expirations, {tier: outcome.duplicates})

    def snapshot(self) -> SenderReport:
        """An independent copy (to compute rates against later)."""
        return replace(self, tiers={t: replace(s) for t, s in self.tiers.items()})


def format_report(report: SenderReport, since: SenderReport | None = None) -> str:
    """A small table: per tier delivered, rate, duplicates, expired, failed, bad, skipped, lag.

    Then, once something was delivered, expired or deduped, the delivery KPIs (``format_kpis``).
    ``skipped`` counts the triggers of other channels (``--channels``). The rate is triggers
    delivered per second since ``since`` (a periodic report), or over the whole run when
    ``since`` is None (the final report).
    """
    span = report.elapsed_s - (since.elapsed_s if since else 0.0)
    title = f"sender after {report.elapsed_s:.1f} s"
    if report.stopped:
        title += f" (stopped: {report.stopped})"
    lines = [title, f"{'tier':<6}{'delivered':>10}{'/s':>9}{'duplicates':>12}{'expired':>9}"
                    f"{'failed':>8}{'bad':>6}{'skipped':>9}{'lag':>9}"]
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
                     f"{stats.expired:>9,}{stats.failed:>8,}{stats.bad:>6,}{stats.skipped:>9,}"
                     f"{lag:>9}")
    if total.delivered or total.expired or total.duplicates or report.kpis.utilisation:
        lines.append(format_kpis(report.kpis))
    return "\n".join(lines)


# --- options --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SenderOptions:
    """How the sender runs (the Kafka, Redis and topic names come from NudgeflowConfig)."""

    group: str = DEFAULT_GROUP
    """Consumer group the sender joins: its members share the partitions and commit offsets
    under it; also part of the dedupe key."""
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
    """Stop once nothing was handed over for this long and the group has no lag left on the
    tier topics (a dead member's partitions are waited for); None: run until stopped."""
    max_triggers: int | None = None
    """Stop after delivering this many triggers; None: no limit."""
    start: str = "earliest"
    """Where a group without committed offsets starts: earliest or latest."""
    bad_records: str = "dead-letter"
    """dead-letter: write undecodable records to the dead-letter topic; skip: count and log."""
    outcomes: bool = True
    """Write a CampaignOutcome to the outcomes topic for every trigger delivered (DELIVERED),
    expired (EXPIRED) or refused for good (FAILED)."""
    fetch_wait_ms: int = 1000
    """How long to wait for a higher tier's known backlog to arrive before serving a lower one."""
    session_timeout_s: float = 45.0
    """How long the group waits for a silent member before moving its partitions to the others
    (a killed sender's triggers wait this long)."""
    budgets: tuple[str, ...] = ()
    """Send budgets to set at start, ``CHANNEL=COUNT/UNIT[@BURST][,...]`` each (e.g.
    ``SMS=50/s``); stored in Redis for the whole group (``jobs.sender.budgets``)."""
    metrics_port: int | None = None
    """Serve the delivery KPIs as Prometheus metrics on this port; None: off."""

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
        if not 1 <= self.session_timeout_s <= 3600:
            problems.append(f"session_timeout_s must be between 1 and 3600 seconds (and within "
                            "the broker's group.min/max.session.timeout.ms, 6 to 1800 by "
                            f"default), got {self.session_timeout_s}")
        if self.until_idle_s is not None and self.until_idle_s < 0:
            problems.append(f"until_idle_s must be >= 0, got {self.until_idle_s}")
        if self.max_triggers is not None and self.max_triggers < 1:
            problems.append(f"max_triggers must be >= 1, got {self.max_triggers}")
        if self.metrics_port is not None and not 0 <= self.metrics_port <= 65535:
            problems.append(f"metrics_port must be a TCP port (0-65535), got {self.metrics_port}")
        for text in self.budgets:
            try:
                parse_budget(text)
            except BudgetError as exc:
                problems.append(str(exc))
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
     "consumer group to join: senders of one group share the partitions (scale out by starting "
     "more); it names the committed offsets and is part of the dedupe keys"),
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
     "exit once this sender had nothing to hand over for this long and its group has no lag "
     "left on the tier topics (draining a backlog, tests)"),
    ("--max-triggers", "N", "max_triggers", int, (), "exit after delivering this many triggers"),
    ("--start", None, "start", str, START_MODES, "where a group without committed offsets starts"),
    ("--bad-records", None, "bad_records", str, BAD_RECORD_MODES,
     "undecodable records: write them to the dead-letter topic, or only count and log them"),
    ("--outcomes", None, "outcomes", bool, (),
     "write a CampaignOutcome to the outcomes topic for every trigger delivered (DELIVERED), "
     "dropped unsent (EXPIRED) or refused by the channel (FAILED), keyed by user id: "
     "journeys wait on and branch by outcomes (DELIVERED, OPENED, "
     "CLICKED, ...); a real channel sender would also report OPENED, CLICKED, ... from its "
     "provider's webhooks. --no-outcomes: when something else reports deliveries"),
    ("--session-timeout", "SECONDS", "session_timeout_s", float, (),
     "how long the group waits for a silent sender before moving its partitions to the others"),
    ("--metrics-port", "PORT", "metrics_port", int, (),
     "serve the delivery KPIs (on-time rate, queue wait, expired, deduped, budget "
     "utilisation) as Prometheus metrics on this port; default: off"),
)

BUDGET_HELP = (
    "a send budget for the whole sender group, CHANNEL=COUNT/UNIT[@BURST][,...] with UNIT s, "
    "min, h or day (e.g. SMS=50/s, EMAIL=1000/min,20000/day, SMS=50/s@10); repeat for more "
    "channels. Stored in Redis at start (other channels' budgets are kept); change it while "
    "senders run with `nudgeflow sender-budgets set`. BURST: the bucket (default COUNT)")



_SWITCH_VALUES = {"true": True, "1": True, "yes": True, "on": True,
                  "false": False, "0": False, "no": False, "off": False}


def _env_name(flag: str) -> str:
    return ENV_PREFIX + flag[2:].replace("-", "_").upper()


def add_sender_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the sender's own flags, each with a ``NUDGEFLOW_SENDER_*`` fallback in the help."""
    group = parser.add_argument_group("sender (flag > env > default)")
    defaults = SenderOptions()
    for flag, metavar, name, typ, choices, help_text in _FLAGS:
        env = _env_name(flag)
        default = getattr(defaults, name)
        if isinstance(default, tuple):  # --channels: spelled on the command line with commas
            default = ",".join(default)
        kwargs: dict[str, Any] = {
            "dest": f"sender_{name}",
            # argparse converts a string default with ``type``, so an env value is checked too
            # (a switch's env value is checked by options_from_args)
            "default": os.environ.get(env, default),
            "help": f"{help_text} [env: {env}] [default: {default!r}]",
        }
        if typ is bool:  # --x / --no-x
            kwargs["action"] = argparse.BooleanOptionalAction
        else:
            kwargs["type"] = typ
            if choices:
                kwargs["choices"] = list(choices)
            else:
                kwargs["metavar"] = metavar
        group.add_argument(flag, **kwargs)
    env = _env_name("--budget")
    group.add_argument("--budget", dest="sender_budgets", action="append", metavar="CH=N/UNIT",
                       help=f"{BUDGET_HELP} [env: {env}, ';'-separated] [default: none]")


def options_from_args(args: argparse.Namespace) -> SenderOptions:
    """The options given parsed arguments of a parser set up by ``add_sender_arguments``.

    Raises:
        ValueError: an option is out of range, names an unknown channel, or a switch's
            environment variable is not true/false (1/0, yes/no, on/off).
    """
    values = {name: getattr(args, f"sender_{name}") for _, _, name, *_ in _FLAGS}
    values["channels"] = parse_channels(values["channels"])
    budgets = getattr(args, "sender_budgets", None)
    if budgets is None:
        budgets = [b for b in os.environ.get(_env_name("--budget"), "").split(";") if b.strip()]
    values["budgets"] = tuple(budgets)
    for flag, _, name, typ, *_ in _FLAGS:
        if typ is bool and isinstance(values[name], str):  # from the environment
            switch = _SWITCH_VALUES.get(values[name].strip().lower())
            if switch is None:
                raise ValueError(f"{_env_name(flag)} must be true or false (1/0, yes/no, "
                                 f"on/off), got {values[name]!r}")
            values[name] = switch
    return SenderOptions(**values)


# --- Kafka: the partitions this sender holds (pure) ---------------------------------------------


Partition = tuple[str, int]
"""A partition of a tier topic: (topic, partition number)."""

PAUSE_BATCHES = 50
"""A tier's partitions are paused once this many batches of it are buffered (bounds memory) and
resumed at half of it. Pausing is kept rare on purpose: librdkafka drops a paused partition's
prefetched records and fetches them again on resume, and the resumed fetch may wait behind a
fetch in flight (up to ``fetch.wait.max.ms``); half a pause's worth of batches covers that."""


def wall_clock_ms() -> int:
    """Now, in milliseconds since the Unix epoch (what ``expires_at`` is compared with)."""
    return time.time_ns() // 1_000_000


@dataclass
class PartitionState:
    """What the sender knows of one assigned partition (offsets are next-to-read offsets)."""

    start: int | None = None
    """Where this sender began reading it: the group's committed offset at assignment, or where
    a group without one starts (``--start``); None: not known."""
    done: int | None = None
    """The offset after the last record handled (delivered, skipped, dropped or dead-lettered)."""
    committed: int | None = None
    """The offset this group last committed for it, as far as this sender knows."""


class PartitionLedger:
    """The records a sender holds and the offsets it may commit, per assigned partition.

    Pure bookkeeping (no Kafka), driven by the consumer (``assign``, ``revoke``, ``add``) and the
    delivery loop (``take``, ``settle``):

    - a buffer per tier of records consumed but not handed over yet, in consumption order;
    - at most one batch *in flight*: taken from a buffer and not settled yet;
    - per partition ``done``: every record before it was handled.

    Commit rule (``to_commit``): a partition with records buffered or in flight commits ``done``;
    one without commits the consumer's position if that is further, because everything below the
    position was consumed and handled, and the position also passes transaction markers and
    aborted records, which no handled record accounts for (so the lag reaches 0). A batch that
    fails or stops early is never committed past its last handled record: ``settle`` puts the
    rest back at the front of its buffer, and a batch never settled holds its partitions.

    Flow control (``flow``): a tier's partitions are paused once ``pause_at`` records of it are
    buffered and resumed once less than half of that is left, so memory stays bounded while the
    consumer keeps fetching the other tiers.
    """

    def __init__(self, tier_of_topic: Mapping[str, str], batch_size: int,
                 pause_at: int | None = None) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        self.tier_of_topic = dict(tier_of_topic)
        self.batch_size = batch_size
        self.pause_at = max(pause_at or PAUSE_BATCHES * batch_size, batch_size)
        self.partitions: dict[Partition, PartitionState] = {}
        self.buffers: dict[str, deque[SourceRecord]] = {
            tier: deque() for tier in dict.fromkeys(self.tier_of_topic.values())}
        self.in_flight: tuple[str, list[SourceRecord]] | None = None
        self.paused: set[Partition] = set()
        self.stale = 0
        """Records dropped because their partition was not (or no longer) assigned."""
        self._held: Counter[Partition] = Counter()  # records buffered or in flight, by partition

    def tier(self, partition: Partition) -> str:
        """The tier whose topic the partition belongs to."""
        return self.tier_of_topic[partition[0]]

    def of_tier(self, tier: str) -> list[Partition]:
        """The assigned partitions of a tier's topic, in order."""
        return sorted(p for p in self.partitions if self.tier(p) == tier)

    def assign(self, starts: Mapping[Partition, int | None],
               committed: Mapping[Partition, int | None] | None = None) -> None:
        """Partitions added to this sender, with where it starts reading them.

        Args:
            starts: each new partition's start offset (None: unknown).
            committed: the group's committed offset of each, where it has one.
        """
        for partition, start in starts.items():
            self.partitions[partition] = PartitionState(
                start=start, committed=(committed or {}).get(partition))

    def revoke(self, partitions: Iterable[Partition]) -> int:
        """Partitions taken away: forget them and drop their buffered records.

        Their records are handed over by the next owner (from the offset committed before the
        revocation). Returns how many buffered records were dropped.
        """
        gone = {p for p in partitions if p in self.partitions}
        if not gone:
            return 0
        dropped = 0
        for tier, buffer in self.buffers.items():
            kept = deque(r for r in buffer if (r.topic, r.partition) not in gone)
            dropped += len(buffer) - len(kept)
            self.buffers[tier] = kept
        for partition in gone:
            del self.partitions[partition]
            self._held.pop(partition, None)
            self.paused.discard(partition)
        return dropped

    def add(self, records: Iterable[SourceRecord]) -> None:
        """Buffer consumed records under their tier (those of unassigned partitions are dropped)."""
        for record in records:
            partition = (record.topic, record.partition or 0)
            if partition not in self.partitions:
                self.stale += 1
                continue
            self.buffers[self.tier_of_topic[record.topic]].append(record)
            self._held[partition] += 1

    def waiting(self) -> set[str]:
        """The tiers with records buffered (a batch to hand over)."""
        return {tier for tier, buffer in self.buffers.items() if buffer}

    def buffered(self, tier: str) -> int:
        """How many records of a tier are buffered."""
        return len(self.buffers[tier])

    def take(self, tier: str) -> list[SourceRecord]:
        """Hand over the next batch of a tier (up to ``batch_size`` records).

        The batch is in flight until ``settle``: its partitions are not committed past it.
        """
        if self.in_flight is not None:
            raise RuntimeError("a batch is still in flight: settle it before taking another")
        buffer = self.buffers[tier]
        batch = [buffer.popleft() for _ in range(min(self.batch_size, len(buffer)))]
        self.in_flight = (tier, batch)
        return batch

    def settle(self, handled: int | Collection[int]) -> None:
        """Mark records of the in-flight batch done: its first ``handled``, or those at indices.

        Indices, because a batch delivered in deadline order finishes out of offset order.
        A partition's ``done`` never passes a record of it that is not done, so a commit never
        skips one. The rest go back to the front of their buffer in offset order (handed over
        again next time), except those of partitions revoked meanwhile (their next owner reads
        them).
        """
        if self.in_flight is None:
            raise RuntimeError("no batch is in flight")
        tier, batch = self.in_flight
        self.in_flight = None
        done = set(range(handled)) if isinstance(handled, int) else set(handled)
        first_open: dict[Partition, int] = {}  # per partition, the lowest offset not done
        for index, record in enumerate(batch):
            partition = (record.topic, record.partition or 0)
            if index not in done:
                offset = record.offset or 0
                first_open[partition] = min(first_open.get(partition, offset), offset)
        for index, record in enumerate(batch):
            if index not in done:
                continue
            partition = (record.topic, record.partition or 0)
            state = self.partitions.get(partition)
            if state is None:  # revoked meanwhile: the next owner commits it
                continue
            offset = min((record.offset or 0) + 1, first_open.get(partition, 1 << 62))
            state.done = offset if state.done is None else max(state.done, offset)
            self._held[partition] -= 1
        rest = [r for i, r in enumerate(batch) if i not in done
                and (r.topic, r.partition or 0) in self.partitions]
        self.buffers[tier].extendleft(reversed(rest))

    def holds(self, partition: Partition) -> bool:
        """Whether records of the partition are buffered or in flight."""
        return self._held[partition] > 0  # take() keeps them counted until settle()

    def reached(self, partition: Partition, position: int | None) -> int | None:
        """The offset up to which this sender read the partition (None: nothing known).

        The furthest of the consumer's position, what it handled and where it started.
        """
        state = self.partitions.get(partition) or PartitionState()
        known = [o for o in (position, state.done, state.start) if o is not None and o >= 0]
        return max(known) if known else None

    def to_commit(self, positions: Mapping[Partition, int | None],
                  partitions: Iterable[Partition] | None = None) -> dict[Partition, int]:
        """Offsets to commit now (only those beyond what was committed), by the commit rule.

        Args:
            positions: the consumer's position of each partition (None or < 0: none yet).
            partitions: which partitions (default: every assigned one).
        """
        offsets: dict[Partition, int] = {}
        for partition in self.partitions if partitions is None else partitions:
            state = self.partitions.get(partition)
            if state is None:
                continue
            offset = state.done
            position = positions.get(partition)
            if position is not None and position >= 0 and not self.holds(partition):
                offset = position if offset is None else max(offset, position)
            if offset is not None and (state.committed is None or offset > state.committed):
                offsets[partition] = offset
        return offsets

    def committed(self, offsets: Mapping[Partition, int | None]) -> None:
        """Record commits (an offset of None: the commit failed, so commit it again later)."""
        for partition, offset in offsets.items():
            state = self.partitions.get(partition)
            if state is not None:
                state.committed = offset

    def flow(self) -> tuple[list[Partition], list[Partition]]:
        """The partitions to pause and to resume now; ``paused`` is updated to match."""
        pause: list[Partition] = []
        resume: list[Partition] = []
        for tier, buffer in self.buffers.items():
            if len(buffer) >= self.pause_at:
                pause += [p for p in self.of_tier(tier) if p not in self.paused]
            elif len(buffer) < self.pause_at // 2:
                resume += [p for p in self.of_tier(tier) if p in self.paused]
        self.paused.update(pause)
        self.paused.difference_update(resume)
        return pause, resume


def group_lag(tier_of_topic: Mapping[str, str], committed: Mapping[Partition, int | None],
              earliest: Mapping[Partition, int], latest: Mapping[Partition, int],
              start: str = "earliest") -> dict[str, int]:
    """The group's lag per tier: committed records not yet handled, over every partition.

    A partition's lag is its end offset (the last stable offset) minus the group's committed
    offset (never below the earliest offset still in the log). A partition the group never
    committed counts from where such a group starts (``start``): the earliest offset, or the end
    (lag 0).
    """
    lag = dict.fromkeys(dict.fromkeys(tier_of_topic.values()), 0)
    for partition, end in latest.items():
        first = earliest.get(partition, 0)
        done = committed.get(partition)
        if done is None or done < 0:
            done = first if start == "earliest" else end
        lag[tier_of_topic[partition[0]]] += max(0, end - max(done, first))
    return lag


# --- Kafka: the consumer --------------------------------------------------------------------------


class OffsetLookup(Protocol):
    """Looks up partition offsets at the broker (read committed)."""

    def latest(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Each partition's end offset: the last stable offset (open transactions excluded)."""

    def earliest(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """Each partition's first offset still in the log."""


class _AdminOffsets:
    """``OffsetLookup`` over confluent-kafka's AdminClient: one ListOffsets request per lookup."""

    def __init__(self, conf: Mapping[str, Any], timeout_s: float = 10.0) -> None:
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient(dict(conf))
        self.timeout_s = timeout_s

    def _list(self, partitions: Sequence[Partition], latest: bool) -> dict[Partition, int]:
        from confluent_kafka import IsolationLevel, TopicPartition
        from confluent_kafka.admin import OffsetSpec

        if not partitions:
            return {}
        spec = OffsetSpec.latest() if latest else OffsetSpec.earliest()
        futures = self.admin.list_offsets({TopicPartition(t, p): spec for t, p in partitions},
                                          isolation_level=IsolationLevel.READ_COMMITTED,
                                          request_timeout=self.timeout_s)
        return {(tp.topic, tp.partition): future.result().offset
                for tp, future in futures.items()}

    def latest(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """See ``OffsetLookup.latest``."""
        return self._list(partitions, latest=True)

    def earliest(self, partitions: Sequence[Partition]) -> dict[Partition, int]:
        """See ``OffsetLookup.earliest``."""
        return self._list(partitions, latest=False)


def source_record(message: Any) -> SourceRecord:
    """A confluent-kafka message as a ``SourceRecord`` (no timestamp when it has none)."""
    kind, timestamp = message.timestamp()
    return SourceRecord(message.topic(), message.partition(), message.offset(),
                        timestamp if kind else None, message.key(), message.value())


#: consumer errors that no retry fixes: the sender stops with the error instead of looping
_FATAL_CONSUMER_ERRORS = ("UNKNOWN_TOPIC_OR_PART", "TOPIC_AUTHORIZATION_FAILED",
                          "GROUP_AUTHORIZATION_FAILED", "INVALID_SESSION_TIMEOUT",
                          "SASL_AUTHENTICATION_FAILED", "_AUTHENTICATION")


class GroupSource:
    """The sender's consumer: one member of the consumer group ``--group``.

    It subscribes to the four tier topics (cooperative-sticky assignment, read committed), so
    senders of one group share the partitions and a partition of a sender that leaves or dies
    moves to the others. Consumed records go into a ``PartitionLedger``; a tier whose buffer
    is full has its partitions paused. On revocation it commits what was handled of the
    partitions leaving, then drops their buffered records (the next owner reads them from
    there); lost partitions (this member was evicted) are dropped without a commit.
    """

    def __init__(self, consumer: Any, offsets: OffsetLookup, topics: Mapping[str, str],
                 options: SenderOptions, say: Callable[[str], None] = print) -> None:
        self.consumer = consumer
        self.offsets = offsets
        self.topics = dict(topics)
        self.tier_of_topic = {topic: tier for tier, topic in self.topics.items()}
        self.options = options
        self.say = say
        self.ledger = PartitionLedger(self.tier_of_topic, options.batch_size)
        self.per_consume = max(options.batch_size, 500)
        self.rebalances = 0
        self.failure: SenderError | None = None  # set by a callback, raised by the loop
        self._warned: dict[str, float] = {}

    # -- the group protocol's callbacks (called from within poll, consume and close) --

    def start(self) -> None:
        """Join the group: subscribe to the tier topics."""
        self.consumer.subscribe(list(self.topics.values()), on_assign=self._on_assign,
                                on_revoke=self._on_revoke, on_lost=self._on_lost)

    def _on_assign(self, _consumer: Any, partitions: list[Any]) -> None:
        new = [(tp.topic, tp.partition) for tp in partitions]
        if not new:
            return
        committed: dict[Partition, int | None] = {}
        starts: dict[Partition, int | None] = {}
        try:
            for tp in self.consumer.committed(self._tps(new), timeout=10):
                if tp.offset >= 0:
                    committed[(tp.topic, tp.partition)] = tp.offset
            fresh = [p for p in new if p not in committed]
            reset = (self.offsets.earliest(fresh) if self.options.start == "earliest"
                     else self.offsets.latest(fresh))
            starts = {p: committed.get(p, reset.get(p)) for p in new}
        except Exception as exc:  # noqa: BLE001 - start offsets only sharpen the priority check
            self._warn("assign", f"could not look up where the new partitions start "
                       f"({type(exc).__name__}: {exc}); priority checks treat them as unread")
            starts = dict.fromkeys(new)
        self.ledger.assign(starts, committed)
        self.rebalances += 1
        self.say(f"sender: assigned {_describe(new)} (now {len(self.ledger.partitions)} "
                 "partitions)")

    def _on_revoke(self, _consumer: Any, partitions: list[Any]) -> None:
        gone = [(tp.topic, tp.partition) for tp in partitions]
        if not gone:
            return
        try:
            self.commit(gone, sync=True)
        except Exception as exc:  # noqa: BLE001 - the next owner re-reads; Redis drops repeats
            self._warn("revoke", f"could not commit the revoked partitions {_describe(gone)} "
                       f"({type(exc).__name__}: {exc}); their next owner reads them from the "
                       "last commit and drops what was delivered as duplicates")
        self._forget(gone, "revoked")

    def _on_lost(self, _consumer: Any, partitions: list[Any]) -> None:
        lost = [(tp.topic, tp.partition) for tp in partitions]
        if lost:  # another member owns them already: committing would overwrite its offsets
            self._forget(lost, "lost (this sender was out of the group too long)")

    def _forget(self, partitions: list[Partition], why: str) -> None:
        paused = [p for p in partitions if p in self.ledger.paused]
        if paused:  # a paused partition stays paused in librdkafka even after it comes back
            self.consumer.resume(self._tps(paused))
        dropped = self.ledger.revoke(partitions)
        self.rebalances += 1
        self.say(f"sender: {why} {_describe(partitions)} ({dropped} buffered records left to "
                 f"the next owner; now {len(self.ledger.partitions)} partitions)")

    def _on_commit(self, error: Any, partitions: list[Any]) -> None:
        failed = {(tp.topic, tp.partition): None for tp in partitions or ()
                  if error is not None or tp.error is not None}
        if failed:
            self.ledger.committed(failed)  # committed again on the next commit
            self._warn("commit", f"an offset commit failed for {_describe(list(failed))}: "
                       f"{error or partitions[0].error}; it is retried")

    def _on_error(self, error: Any) -> None:
        if error.fatal():
            self.failure = SenderError(f"the Kafka consumer failed fatally: {error}; restart the "
                                       "sender (it resumes from the committed offsets)")
        else:  # librdkafka retries by itself (e.g. a broker restarting): only say so
            self._warn(f"error-{error.code()}", f"Kafka: {error} (retrying)")

    def _warn(self, kind: str, message: str, every_s: float = 30.0) -> None:
        """Say a warning, at most once per ``every_s`` seconds per kind (no log flood)."""
        now = time.monotonic()
        if now - self._warned.get(kind, -every_s) >= every_s:
            self._warned[kind] = now
            self.say(f"sender: warning: {message}")

    # -- reading --

    @staticmethod
    def _tps(partitions: Iterable[Partition], offsets: Mapping[Partition, int] | None = None
             ) -> list[Any]:
        from confluent_kafka import TopicPartition

        if offsets is None:
            return [TopicPartition(t, p) for t, p in partitions]
        return [TopicPartition(t, p, offsets[(t, p)]) for t, p in partitions]

    def poll(self, timeout_s: float) -> int:
        """Consume what is ready into the ledger; how many records came.

        Waits up to ``timeout_s`` for a first record, takes what else is ready, then pauses or
        resumes tiers by their buffers.
        """
        messages = []
        if timeout_s > 0:
            first = self.consumer.poll(timeout_s)
            if first is not None:
                messages.append(first)
        messages += self.consumer.consume(num_messages=self.per_consume, timeout=0)
        if self.failure is not None:
            raise self.failure
        records = []
        for message in messages:
            error = message.error()
            if error is None:
                records.append(source_record(message))
            elif error.fatal() or error.name() in _FATAL_CONSUMER_ERRORS:
                raise SenderError(f"Kafka refused to serve the trigger topics: {error}; check "
                                  "that the topics exist (`nudgeflow stack provision`) and the "
                                  "sender's credentials and --session-timeout")
            else:
                self._warn(f"error-{error.code()}", f"Kafka: {error} (retrying)")
        self.ledger.add(records)
        pause, resume = self.ledger.flow()
        if pause:
            self.consumer.pause(self._tps(pause))
        if resume:
            self.consumer.resume(self._tps(resume))
        return len(records)

    def positions(self, partitions: Sequence[Partition]) -> dict[Partition, int | None]:
        """The consumer's position (next offset to consume) of each partition (None: none)."""
        if not partitions:
            return {}
        return {(tp.topic, tp.partition): tp.offset if tp.offset >= 0 else None
                for tp in self.consumer.position(self._tps(partitions))}

    def behind(self, tiers: Sequence[str]) -> dict[str, dict[Partition, int]]:
        """The tiers with committed records this sender has not consumed yet.

        Of ``tiers``, those whose assigned partitions end beyond what this sender read, each
        with its partitions' end offsets (one broker request for all).
        """
        partitions = [p for tier in tiers for p in self.ledger.of_tier(tier)]
        if not partitions:
            return {}
        ends = self.offsets.latest(partitions)
        positions = self.positions(partitions)
        behind: dict[str, dict[Partition, int]] = {}
        for partition in partitions:
            reached = self.ledger.reached(partition, positions.get(partition))
            if ends.get(partition, 0) > (reached or 0):
                behind.setdefault(self.ledger.tier(partition), {})[partition] = ends[partition]
        return behind

    def await_backlog(self, tier: str, ends: Mapping[Partition, int], wait_ms: int) -> bool:
        """Consume until a record of ``tier`` is buffered; whether one is.

        Gives up after ``wait_ms`` or once the tier's partitions were read up to ``ends``.
        """
        deadline = time.monotonic() + wait_ms / 1000
        while not self.ledger.buffered(tier):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            assigned = [p for p in ends if p in self.ledger.partitions]
            positions = self.positions(assigned)
            if all((self.ledger.reached(p, positions.get(p)) or 0) >= ends[p] for p in assigned):
                break
            self.poll(min(remaining, 0.1))
        return bool(self.ledger.buffered(tier))

    # -- committing --

    def commit(self, partitions: Sequence[Partition] | None = None, sync: bool = False) -> None:
        """Commit the offsets that moved, by the ledger's rule.

        Default: every assigned partition. Asynchronous commits report failures through
        ``_on_commit`` (the offset is then committed again next time).

        Raises:
            KafkaException: a synchronous commit failed.
        """
        parts = list(self.ledger.partitions) if partitions is None else list(partitions)
        offsets = self.ledger.to_commit(self.positions(parts), parts)
        if not offsets:
            return
        tps = self._tps(offsets, offsets)
        if sync:
            result = self.consumer.commit(offsets=tps, asynchronous=False)
            failed = [tp for tp in result or () if tp.error is not None]
            if failed:
                from confluent_kafka import KafkaException

                raise KafkaException(failed[0].error)
            self.ledger.committed(offsets)
        else:
            # recorded first: a failure reported by _on_commit must undo it, whenever it comes
            self.ledger.committed(offsets)
            self.consumer.commit(offsets=tps, asynchronous=True)

    def all_partitions(self) -> dict[str, list[Partition]]:
        """Every partition of each tier topic, by topic (empty: the topic does not exist)."""
        found: dict[str, list[Partition]] = {}
        for topic in self.topics.values():
            # one topic at a time: a cluster's full metadata can be large
            described = self.consumer.list_topics(topic, timeout=10).topics.get(topic)
            ok = described is not None and described.error is None
            found[topic] = [(topic, p) for p in sorted(described.partitions)] if ok else []
        return found

    def lag(self) -> dict[str, int]:
        """The group's lag per tier over every partition of the tier topics (all members)."""
        partitions = [p for parts in self.all_partitions().values() for p in parts]
        committed = {(tp.topic, tp.partition): tp.offset
                     for tp in self.consumer.committed(self._tps(partitions), timeout=10)}
        return group_lag(self.tier_of_topic, committed, self.offsets.earliest(partitions),
                         self.offsets.latest(partitions), self.options.start)

    def close(self) -> None:
        """Leave the group (the revocation commits what is left) and release the clients."""
        self.consumer.close()


def _describe(partitions: Sequence[Partition]) -> str:
    by_topic: dict[str, list[int]] = {}
    for topic, partition in sorted(partitions):
        by_topic.setdefault(topic, []).append(partition)
    return ", ".join(f"{topic}[{','.join(map(str, ps))}]" for topic, ps in by_topic.items())


def _open_source(cfg: NudgeflowConfig, options: SenderOptions,
                 say: Callable[[str], None]) -> GroupSource:
    from confluent_kafka import Consumer

    topics = cfg.trigger_topics()
    conf = cfg.librdkafka_config()
    session_ms = int(options.session_timeout_s * 1000)
    offsets = _AdminOffsets(conf)
    holder: list[GroupSource] = []
    consumer = Consumer({
        **conf,
        "group.id": options.group,
        "client.id": "nudgeflow-sender",
        "partition.assignment.strategy": "cooperative-sticky",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": options.start,
        "session.timeout.ms": session_ms,
        # three heartbeats per session timeout, as the Java client's defaults have it
        "heartbeat.interval.ms": max(100, min(3000, session_ms // 3)),
        # one fetch per broker is in flight at a time, and it waits up to this long for data
        # when its partitions have none: a resumed tier's records wait behind it (default 500)
        "fetch.wait.max.ms": 100,
        "on_commit": lambda err, parts: holder[0]._on_commit(err, parts),
        "error_cb": lambda err: holder[0]._on_error(err),
    })
    source = GroupSource(consumer, offsets, topics, options, say)
    holder.append(source)
    try:
        missing = [topic for topic, parts in source.all_partitions().items() if not parts]
        if missing:
            raise SenderError(f"the trigger topic(s) {', '.join(missing)} do not exist at "
                              f"{cfg.kafka_bootstrap}; run `nudgeflow stack provision`")
        source.start()
    except BaseException:
        consumer.close()
        raise
    return source


class TopicWriter:
    """Writes records of one schema to one topic and waits for every acknowledgement.

    One confluent-kafka producer (acks=all, idempotent), created on first use. The sender has
    two: the dead letters and the DELIVERED outcomes; ``nudgeflow respond`` writes its simulated
    outcomes and purchases with two more.
    """

    def __init__(self, cfg: NudgeflowConfig, codec: Codec, topic: str, schema: str,
                 key: Callable[[Record], bytes | None], what: str, unwritten: str) -> None:
        self.cfg = cfg
        self.codec = codec
        self.topic = topic
        self.schema = schema
        self.key = key
        """A record's Kafka key."""
        self.what = what
        """The records' name in errors ("dead letter(s)")."""
        self.unwritten = unwritten
        """What becomes of the batch when a write fails, for the error."""
        self.producer: Any = None

    def write(self, records: Sequence[Record]) -> None:
        """Write the records and wait for every acknowledgement.

        Raises:
            SenderError: a record was not acknowledged within 30 s (never lose one: the batch
                is then not committed and is read again after a restart).
        """
        from confluent_kafka import Producer

        if self.producer is None:
            self.producer = Producer({**self.cfg.librdkafka_config(), "acks": "all",
                                      "enable.idempotence": True})
        failures: list[str] = []

        def acknowledged(error: Any, _message: Any) -> None:
            if error is not None:
                failures.append(str(error))

        for record in records:
            self.producer.produce(self.topic, key=self.key(record),
                                  value=self.codec.encode(self.schema, record),
                                  on_delivery=acknowledged)
        unsent = self.producer.flush(30)
        if failures or unsent:
            raise SenderError(
                f"{len(failures) + unsent} of {len(records)} {self.what} were not written to "
                f"{self.topic!r} at {self.cfg.kafka_bootstrap} "
                f"({failures[0] if failures else 'no acknowledgement within 30 s'}); does the "
                f"topic exist (`nudgeflow stack provision`)? {self.unwritten}")

    def close(self) -> None:
        """Flush and drop the producer."""
        if self.producer is not None:
            self.producer.flush(10)
            self.producer = None


def _dead_letter_writer(cfg: NudgeflowConfig, codec: Codec) -> TopicWriter:
    """The writer of the sender's dead letters (keyed by the bad record's key)."""
    return TopicWriter(cfg, codec, cfg.dead_letter_topic, "DeadLetter", lambda r: r["key"],
                        "dead letter(s)",
                        "The batch is not committed: it is read again after a restart")


def _outcome_writer(cfg: NudgeflowConfig, codec: Codec) -> TopicWriter:
    """The writer of the DELIVERED outcomes (keyed by user id, as the engine reads them)."""
    return TopicWriter(cfg, codec, cfg.outcomes_topic, "CampaignOutcome",
                        lambda r: r["user_id"].encode(), "outcome(s)",
                        "The batch is not committed and its triggers are not recorded as sent: "
                        "they are sent again after a restart, and their outcomes written then "
                        "(with the same outcome ids)")


def open_budgets(cfg: NudgeflowConfig, options: SenderOptions,
                 clock: Callable[[], int]) -> MemoryBudgets | RedisBudgets:
    """The group's budgets: in Redis (shared, changeable at runtime) unless ``--dedupe memory``.

    The ``--budget`` flags are stored first (other channels' budgets in Redis are kept).
    With ``--dedupe memory`` there is no Redis: the flags' budgets hold for this process only.
    """
    parsed = dict(parse_budget(text) for text in options.budgets)
    if options.dedupe == "memory":
        return MemoryBudgets(parsed, clock)
    from jobs.cli import wiring

    budgets = RedisBudgets(wiring.redis_client(cfg, socket_timeout=5), cfg.redis_key_prefix,
                           options.group)
    try:
        budgets.set(parsed)
    except Exception as exc:  # noqa: BLE001 - any client error: the budgets cannot be shared
        url = cfg.describe()["redis_url"].strip("'")
        raise SenderError(f"cannot store the send budgets in Redis at {url}: {exc}; is Redis "
                          "up? (--dedupe memory runs without Redis, budgets per process)") from exc
    return budgets


def measure_utilisation(budgets: MemoryBudgets | RedisBudgets) -> dict[str, float]:
    """The group's budget utilisation per budgeted channel (Redis only; {} on failure)."""
    if not isinstance(budgets, RedisBudgets):
        return {}
    try:
        shares = {channel: budgets.utilisation(channel, limits)
                  for channel, limits in budgets.get().items()}
    except Exception:  # noqa: BLE001 - a report must not stop the sender; the admission would
        return {}
    return {channel: share for channel, share in shares.items() if share is not None}


def open_dedupe(cfg: NudgeflowConfig, options: SenderOptions) -> Deduper:
    """The dedupe store the options ask for."""
    cache = MemoryDedupe(options.dedupe_cache)
    if options.dedupe == "memory":
        return cache
    from jobs.cli import wiring

    client = wiring.redis_client(cfg, socket_timeout=5)
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

    The sender is one member of the consumer group ``options.group``: it delivers the triggers
    of the partitions the group assigns it, and writes a CampaignOutcome for each to
    ``cfg.outcomes_topic`` (DELIVERED, EXPIRED or FAILED; unless ``options.outcomes`` is off).
    Stops on SIGINT/SIGTERM (when called in the main thread), when ``stop`` is set, after
    ``options.max_triggers`` deliveries, or once it had nothing to hand over for
    ``options.until_idle_s`` and the group has no lag left on the tier topics. Prints a report
    every ``options.report_every_s`` and at the end.

    Args:
        cfg: Kafka, Redis and topic names.
        options: how to run (see ``SenderOptions``).
        adapter: receives each trigger to deliver.
        clock: wall clock in epoch milliseconds, for ``expires_at``, dead letters and the
            outcomes' ``event_time`` (read after each delivery).
        say: where reports and warnings go.
        stop: set it to stop the sender from another thread.
        sleep: waits between adapter retries.

    Returns:
        The final report (the group's lag measured after the last commit).

    Raises:
        AdapterFailedError: the adapter kept failing; offsets are committed up to the trigger
            before the failing one; ``exc.report`` holds the report.
        SenderError: a tier topic is missing, or Kafka, Redis, the dead-letter or the outcomes
            topic failed.
    """
    from confluent_kafka import KafkaException

    # triggers in Confluent's wire format (the job's output_wire_format: confluent) are read
    # with the registry's schema for their id; single-object ones need no registry
    codec = Codec.load().with_schema_registry(schema_lookup(cfg))
    dedupe = open_dedupe(cfg, options)
    budgets = open_budgets(cfg, options, clock)
    metrics = PrometheusKpis(options.metrics_port) if options.metrics_port is not None else None
    scheduler = TierScheduler(TIERS, options.starvation_limit)
    retry = DeliveryRetryPolicy(options.adapter_retries, options.retry_backoff_s)
    report = SenderReport()
    try:
        source = _open_source(cfg, options, say)
    except SenderError:
        raise
    except Exception as exc:
        raise SenderError(f"cannot read the trigger topics at {cfg.kafka_bootstrap}: "
                          f"{type(exc).__name__}: {exc}") from exc
    ledger = source.ledger
    letters = _dead_letter_writer(cfg, codec) if options.bad_records == "dead-letter" else None
    outcomes = _outcome_writer(cfg, codec) if options.outcomes else None
    started = time.monotonic()
    last_report, previous = started, report.snapshot()
    idle_since: float | None = None
    last_idle_commit = 0.0
    signals: list[str] = []
    failure: SenderError | None = None
    say(f"sender: group {options.group}, channels {','.join(options.channels)}, topics "
        f"{', '.join(source.topics.values())}, starvation limit "
        f"{options.starvation_limit or 'off (strict)'}, dedupe {options.dedupe}, outcomes "
        f"{'to ' + cfg.outcomes_topic if outcomes else 'off'}")
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
                tier = _choose_tier(source, scheduler, options)
                now = time.monotonic()
                if tier is None:
                    idle_since = idle_since or now
                    if now - last_idle_commit >= 1.0:
                        source.commit()
                        last_idle_commit = now
                    if options.until_idle_s is not None and \
                            now - idle_since >= options.until_idle_s:
                        source.commit(sync=True)
                        if not any(source.lag().values()):
                            report.stopped = "idle"
                            break
                        # records wait in partitions of this group that nobody has handed
                        # over yet (e.g. those of a sender that died, until they move here)
                        idle_since = now
                    source.poll(0.1)  # wait a little for new records
                else:
                    idle_since = None
                    batch = ledger.take(tier)
                    remaining = (None if options.max_triggers is None
                                 else options.max_triggers - report.total("delivered"))
                    outcome = process_batch(batch, codec=codec, dedupe=dedupe, adapter=adapter,
                                            now_ms=clock(), group=options.group,
                                            channels=options.channels, retry=retry,
                                            limit=remaining, sleep=sleep, say=say,
                                            outcomes=options.outcomes,
                                            write_outcomes=outcomes.write if outcomes else None,
                                            clock=clock, budget=budgets,
                                            preempt=_preempter(source, tier))
                    report.add(tier, outcome)
                    if metrics is not None:
                        metrics.record(outcome.deliveries, outcome.expirations,
                                       {tier: outcome.duplicates})
                    if outcome.dead_letters and letters is not None:
                        letters.write(outcome.dead_letters)
                    # only now are the records done with: delivered, reported (the outcomes
                    # were written before the sent ids were recorded), recorded and lettered
                    ledger.settle(outcome.handled_at)
                    source.commit()
                    if outcome.error is not None:
                        failure = outcome.error
                        report.stopped = "adapter failed"
                        break
                if options.report_every_s and now - last_report >= options.report_every_s:
                    report.elapsed_s = now - started
                    _measure_lag(report, source)
                    report.kpis.utilisation = measure_utilisation(budgets)
                    if metrics is not None:
                        metrics.set_utilisation(report.kpis.utilisation)
                    say(format_report(report, previous))
                    last_report, previous = now, report.snapshot()
            source.commit(sync=True)
            report.elapsed_s = time.monotonic() - started
            _measure_lag(report, source)
            report.kpis.utilisation = measure_utilisation(budgets)
        except KafkaException as exc:
            report.stopped = "Kafka failed"
            report.elapsed_s = time.monotonic() - started
            raise SenderError(
                f"Kafka at {cfg.kafka_bootstrap} failed: {exc}; offsets are committed up to the "
                "last batch handed over: restart to resume", report
            ) from exc
        except RegistryError as exc:
            # a trigger whose schema id cannot be looked up now is not a bad record: stop
            # before handing its batch over, so a restart reads it again
            report.stopped = "schema registry failed"
            report.elapsed_s = time.monotonic() - started
            raise SenderError(f"{exc}; offsets are committed up to the last batch handed over: "
                              "restart to resume", report) from exc
        finally:
            source.close()
            for writer in (letters, outcomes):
                if writer is not None:
                    writer.close()
            close = getattr(adapter, "close", None)
            if callable(close):
                close()
            if metrics is not None:
                metrics.close()
    say(format_report(report))
    if failure is not None:
        failure.report = report
        raise failure
    return report


def _choose_tier(source: GroupSource, scheduler: TierScheduler,
                 options: SenderOptions) -> str | None:
    """Buffer what is ready, then let the scheduler pick a tier among those with a batch."""
    source.poll(0)
    waiting = source.ledger.waiting()
    # a higher tier whose records are committed but not consumed yet goes before a lower one
    best = min((TIERS.index(tier) for tier in waiting), default=0)
    if best:
        for tier, ends in sorted(source.behind(TIERS[:best]).items(),
                                 key=lambda item: TIERS.index(item[0])):
            if source.await_backlog(tier, ends, options.fetch_wait_ms):
                break
        waiting = source.ledger.waiting()  # a rebalance during the wait may have changed it
    return scheduler.pick(waiting)


def _preempter(source: GroupSource, tier: str) -> Callable[[], bool]:
    """``process_batch``'s ``preempt`` for a batch of ``tier``.

    It says stop waiting for budget when a higher tier has records buffered (polled now: this
    also keeps the consumer in the group while a batch waits) or a partition of the batch was
    revoked (its next owner has it).
    """
    higher = TIERS[:TIERS.index(tier)]

    def preempt() -> bool:
        source.poll(0)
        in_flight = source.ledger.in_flight[1] if source.ledger.in_flight else []
        if any((r.topic, r.partition or 0) not in source.ledger.partitions for r in in_flight):
            return True
        return bool(source.ledger.waiting() & set(higher))

    return preempt


def _measure_lag(report: SenderReport, source: GroupSource) -> None:
    for tier, lag in source.lag().items():
        report.tiers[tier].lag = lag
