"""``nudgeflow respond``: a simulated audience that answers the triggers the job sends.

Input: the four tier topics (TriggerEvents) and the trigger-decisions topic (TriggerDecisions;
only the held-out ones are answered: SUPPRESSED with reason HOLDOUT or CONTROL_GROUP), read
committed by one confluent-kafka consumer that is assigned every partition of the five topics
and commits its offsets under ``--group``.
Output: the responses of :mod:`jobs.workload.responses`: OPENED, CLICKED and UNSUBSCRIBED
CampaignOutcomes on ``cfg.outcomes_topic`` and PURCHASE ClickEvents on ``cfg.clicks_topic``,
keyed by user_id, Avro single-object encoded; counts of what it read and wrote.
State: the trigger ids answered (in memory, so a redelivered trigger is answered once per run),
the responses held until their time, and per partition the offset that may be committed.

Timing. By default (``release="event-time"``) a response is written once the wall clock has
reached its event time: the job rejects a click or an outcome more than ``max_future_skew_ms``
(10 min) ahead of its Kafka timestamp as TIME_IN_FUTURE, so a purchase three days after a live
send must wait three days (give a short ``--window`` for a demo). Responses to triggers from a
replayed past are due at once. ``release="immediate"`` writes every response at once, whatever
its event time: for histories far enough in the past. Either way a response can be ahead of the
event time of a replay that is still streaming (the job's watermark then jumps forward and that
replay's later clicks arrive late): answer a replay once the job has drained it, or live
traffic.

Restarts. A partition's offsets are committed up to its first record with a response still
held, so after a restart the responses not written yet are computed again; those of the records
read again that were written already are written a second time, with the same ids (consumers
deduplicate on outcome_id and event_id). One responder per group: it reads every partition.
"""

from __future__ import annotations

import argparse
import heapq
import os
import time
from collections import Counter
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from jobs.config import NudgeflowConfig
from jobs.sender.sender import SenderError, TopicWriter, source_record, wall_clock_ms
from jobs.workload.responses import (
    CLICK_SCHEMA,
    NF_TRIGGER,
    OPENABLE_CHANNELS,
    OUTCOME_SCHEMA,
    Response,
    ResponseSpec,
    is_holdout,
    respond_to_holdout,
    respond_to_trigger,
)
from schemas.codec import Codec, CodecError, Record
from udfs.campaigns.grammar import AUDIENCE_CHANNEL
from udfs.definitions.durations import format_duration, parse_duration
from udfs.intake import SourceRecord

__all__ = [
    "DEFAULT_GROUP",
    "RELEASE_MODES",
    "RecordSource",
    "RespondOptions",
    "Responder",
    "ResponderCounts",
    "ResponderError",
    "ResponseWriter",
    "add_respond_arguments",
    "format_counts",
    "open_source",
    "options_from_args",
    "respond_loop",
    "run_responder",
]

DEFAULT_GROUP = "nudgeflow-responder"
RELEASE_MODES = ("event-time", "immediate")
ENV_PREFIX = "NUDGEFLOW_RESPOND_"
#: bad records reported one by one before the rest are only counted
BAD_RECORDS_SHOWN = 10

Partition = tuple[str, int]
"""A partition of a topic read: (topic, partition number)."""

#: the counter of ResponderCounts each kind of response adds to when written
_COUNTER_OF = {"OPENED": "opens", "CLICKED": "clicks", "UNSUBSCRIBED": "unsubscribes",
               "PURCHASE": "conversions"}


class ResponderError(RuntimeError):
    """The responder cannot go on; the message says why and what to do."""


@dataclass
class ResponderCounts:
    """What a responder read and wrote."""

    triggers: int = 0
    """Distinct TriggerEvents answered."""
    holdouts: int = 0
    """Distinct HOLDOUT TriggerDecisions answered."""
    duplicates: int = 0
    """Triggers and holdouts read again (same trigger id): not answered twice."""
    bad: int = 0
    """Records that did not decode (skipped)."""
    opens: int = 0
    clicks: int = 0
    unsubscribes: int = 0
    conversions: int = 0
    """PURCHASE clicks written (treated and held-out users)."""
    attributed: int = 0
    """Conversions among them that followed a click and carry ``nf_trigger``."""
    held: int = 0
    """Responses computed but not written: their event time has not come yet."""
    elapsed_s: float = 0.0
    stopped: str = ""


def format_counts(counts: ResponderCounts) -> str:
    """One line: what was read, what was written, what is still held."""
    head = f"responder after {counts.elapsed_s:.1f} s"
    if counts.stopped:
        head += f" (stopped: {counts.stopped})"
    return (f"{head}: read {counts.triggers:,} trigger(s), {counts.holdouts:,} holdout(s), "
            f"{counts.duplicates:,} duplicate(s), {counts.bad:,} bad | wrote {counts.opens:,} "
            f"open(s), {counts.clicks:,} click(s), {counts.unsubscribes:,} unsubscribe(s), "
            f"{counts.conversions:,} conversion(s) ({counts.attributed:,} after a click) | "
            f"held {counts.held:,} (not due yet)")


@dataclass(order=True)
class _Held:
    """A response waiting for its time, and the record it answers (for the commits)."""

    event_time: int
    seq: int
    response: Response = field(compare=False)
    partition: Partition | None = field(compare=False)
    offset: int | None = field(compare=False)


class Responder:
    """Turns consumed records into responses to write, and says which offsets may be committed.

    No Kafka: ``take`` is given each record read, ``due(now_ms)`` hands over the responses
    whose time has come (all of them with ``release="immediate"``), in event-time order, and
    ``positions`` gives per partition the offset to commit: the first record whose responses
    are not all handed over yet, else the one after the last record taken.
    """

    def __init__(self, spec: ResponseSpec, trigger_topics: Collection[str], decisions_topic: str,
                 codec: Codec | None = None, release: str = "event-time",
                 say: Callable[[str], None] = print) -> None:
        if release not in RELEASE_MODES:
            raise ValueError(f"release must be one of {', '.join(RELEASE_MODES)}, got "
                             f"{release!r}")
        self.spec = spec
        self.trigger_topics = frozenset(trigger_topics)
        self.decisions_topic = decisions_topic
        self.codec = codec or Codec.load()
        self.release = release
        self.say = say
        self.counts = ResponderCounts()
        self._answered: set[str] = set()
        self._held: list[_Held] = []
        self._seq = 0
        self._next: dict[Partition, int] = {}
        self._pending: dict[Partition, Counter[int]] = {}

    def take(self, record: SourceRecord) -> None:
        """Answer one record read: decode it, drop a repeat, hold its responses until due."""
        where: Partition | None = None
        if record.partition is not None and record.offset is not None:
            where = (record.topic, record.partition)
            self._next[where] = max(self._next.get(where, 0), record.offset + 1)
        responses = self._responses(record)
        if responses is None:
            return
        for response in responses:
            self._seq += 1
            heapq.heappush(self._held, _Held(response.event_time, self._seq, response, where,
                                             record.offset))
            if where is not None and record.offset is not None:
                self._pending.setdefault(where, Counter())[record.offset] += 1
        self.counts.held += len(responses)

    def due(self, now_ms: int) -> list[Response]:
        """The held responses whose event time is at or before ``now_ms``, oldest first.

        They count as written from here on: write them before the next ``positions``.
        """
        out = []
        while self._held and (self.release == "immediate" or self._held[0].event_time <= now_ms):
            held = heapq.heappop(self._held)
            out.append(held.response)
            self.counts.held -= 1
            counter = _COUNTER_OF[held.response.kind]
            setattr(self.counts, counter, getattr(self.counts, counter) + 1)
            if held.response.record.get("properties", {}).get(NF_TRIGGER):
                self.counts.attributed += 1
            if held.partition is not None and held.offset is not None:
                pending = self._pending[held.partition]
                pending[held.offset] -= 1
                if not pending[held.offset]:
                    del pending[held.offset]
        return out

    def next_due_ms(self) -> int | None:
        """The event time of the earliest held response, or None when none is held."""
        return self._held[0].event_time if self._held else None

    def positions(self) -> dict[Partition, int]:
        """Per partition read, the offset that may be committed (see the class docstring)."""
        return {where: min(self._pending[where]) if self._pending.get(where) else after
                for where, after in self._next.items()}

    def _responses(self, record: SourceRecord) -> list[Response] | None:
        """The record's responses; None for a repeat, a bad record or a decision not answered."""
        if record.topic in self.trigger_topics:
            trigger = self._decode(record, "TriggerEvent")
            if trigger is None or self._repeat(trigger["trigger_id"]):
                return None
            self.counts.triggers += 1
            return respond_to_trigger(trigger, self.spec)
        if record.topic == self.decisions_topic:
            decision = self._decode(record, "TriggerDecision")
            # only a held-out user responds; a suppressed or deferred trigger reached nobody
            # (a deferred one that is sent later comes as a TriggerEvent)
            if decision is None or not is_holdout(decision) or \
                    self._repeat(decision["trigger_id"]):
                return None
            self.counts.holdouts += 1
            return respond_to_holdout(decision, self.spec)
        self._bad(record, f"a record of topic {record.topic!r}, which the responder does not read")
        return None

    def _repeat(self, trigger_id: str) -> bool:
        if trigger_id in self._answered:
            self.counts.duplicates += 1
            return True
        self._answered.add(trigger_id)
        return False

    def _decode(self, record: SourceRecord, schema: str) -> Record | None:
        if not record.value:
            self._bad(record, "an empty value (a tombstone or an empty message)")
            return None
        try:
            return self.codec.decode(record.value, expect=schema)
        except CodecError as exc:
            self._bad(record, str(exc))
            return None

    def _bad(self, record: SourceRecord, why: str) -> None:
        self.counts.bad += 1
        if self.counts.bad <= BAD_RECORDS_SHOWN:
            more = "; further bad records are only counted" \
                if self.counts.bad == BAD_RECORDS_SHOWN else ""
            self.say(f"skipped the record at {record.topic}/{record.partition}@{record.offset}: "
                     f"{why}{more}")


# --- the loop, over small interfaces -----------------------------------------------------------


class RecordSource(Protocol):
    """Where the responder reads records and commits offsets (Kafka, or a fake in tests)."""

    def poll(self, timeout_s: float) -> list[SourceRecord]:
        """The records that arrived, waiting up to ``timeout_s`` for the first."""

    def commit(self, positions: Mapping[Partition, int]) -> None:
        """Commit these offsets (the next record to read, per partition) and wait for it."""

    def close(self) -> None:
        """Release the consumer."""


def respond_loop(source: RecordSource, responder: Responder,
                 write: Callable[[Sequence[Response]], None], *, idle_exit_s: float = 0.0,
                 clock: Callable[[], int] = wall_clock_ms,
                 monotonic: Callable[[], float] = time.monotonic,
                 say: Callable[[str], None] = print, progress_every_s: float = 0.0,
                 poll_s: float = 0.2, commit_every_s: float = 1.0) -> ResponderCounts:
    """Read, answer, write and commit until idle for ``idle_exit_s`` (0: until interrupted).

    Each round polls the source, hands the records to ``responder``, writes what is due by
    ``clock()`` (``write`` returns once the records are acknowledged) and then commits the
    positions that changed (at most every ``commit_every_s``; always at the end). "Idle" is a
    round that read nothing and wrote nothing; responses still held when it stops are counted
    in ``held``, not written.

    Returns:
        The responder's counts, with ``elapsed_s`` and why it stopped (idle or interrupted).
    """
    started = last_activity = last_commit = last_progress = monotonic()
    committed: dict[Partition, int] = {}
    counts = responder.counts

    def commit() -> None:
        changed = {where: offset for where, offset in responder.positions().items()
                   if committed.get(where) != offset}
        if changed:
            source.commit(changed)
            committed.update(changed)

    try:
        while True:
            records = source.poll(poll_s)
            for record in records:
                responder.take(record)
            ready = responder.due(clock())
            if ready:
                write(ready)
            now = monotonic()
            if records or ready:
                last_activity = now
            if now - last_commit >= commit_every_s:
                commit()
                last_commit = now
            if progress_every_s and now - last_progress >= progress_every_s:
                counts.elapsed_s = now - started
                say(format_counts(counts))
                last_progress = now
            if idle_exit_s and now - last_activity >= idle_exit_s:
                counts.stopped = "idle"
                break
    except KeyboardInterrupt:
        counts.stopped = "interrupted"
    commit()
    counts.elapsed_s = monotonic() - started
    return counts


# --- Kafka --------------------------------------------------------------------------------------


class KafkaRecordSource:
    """``RecordSource`` over a confluent-kafka consumer assigned every partition it reads."""

    def __init__(self, consumer: Any, bootstrap: str) -> None:
        self.consumer = consumer
        self.bootstrap = bootstrap

    def poll(self, timeout_s: float) -> list[SourceRecord]:
        """See ``RecordSource.poll``.

        Raises:
            ResponderError: Kafka reported an error for a partition (the topic went away,
                access was denied, ...).
        """
        records = []
        for message in self.consumer.consume(500, timeout_s):
            error = message.error()
            if error is not None:
                raise ResponderError(f"Kafka at {self.bootstrap} failed reading "
                                     f"{message.topic()}[{message.partition()}]: {error}; "
                                     "offsets are committed up to the responses written: "
                                     "restart to resume")
            records.append(source_record(message))
        return records

    def commit(self, positions: Mapping[Partition, int]) -> None:
        """See ``RecordSource.commit``."""
        from confluent_kafka import TopicPartition

        self.consumer.commit(offsets=[TopicPartition(topic, partition, offset)
                                      for (topic, partition), offset in positions.items()],
                             asynchronous=False)

    def close(self) -> None:
        """See ``RecordSource.close``."""
        self.consumer.close()


def open_source(cfg: NudgeflowConfig, group: str) -> KafkaRecordSource:
    """A consumer of the tier and trigger-decisions topics, read committed, under ``group``.

    Every partition is assigned to it, starting at the group's committed offset, else at the
    earliest: the job's triggers are transactional, so records of aborted or open transactions
    are never answered.

    Raises:
        ResponderError: a topic does not exist.
    """
    from confluent_kafka import OFFSET_STORED, Consumer, TopicPartition

    topics = [*cfg.trigger_topics().values(), cfg.trigger_decisions_topic]
    consumer = Consumer({
        **cfg.librdkafka_config(),
        "group.id": group,
        "client.id": "nudgeflow-responder",
        "isolation.level": "read_committed",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
    })
    try:
        metadata = consumer.list_topics(timeout=10)
        missing = [topic for topic in topics
                   if topic not in metadata.topics or not metadata.topics[topic].partitions]
        if missing:
            raise ResponderError(f"the topic(s) {', '.join(missing)} do not exist at "
                                 f"{cfg.kafka_bootstrap}; run `nudgeflow stack provision`")
        # assigned, not subscribed: no rebalance can take a partition whose responses are held
        consumer.assign([TopicPartition(topic, partition, OFFSET_STORED) for topic in topics
                         for partition in sorted(metadata.topics[topic].partitions)])
    except BaseException:
        consumer.close()
        raise
    return KafkaRecordSource(consumer, cfg.kafka_bootstrap)


class ResponseWriter:
    """Writes responses to their topics, keyed by user id, and waits for the acknowledgements.

    Outcomes go to ``cfg.outcomes_topic``, purchases to ``cfg.clicks_topic``; each through the
    sender's ``TopicWriter`` (one idempotent producer, acks=all).
    """

    def __init__(self, cfg: NudgeflowConfig, codec: Codec) -> None:
        unwritten = ("Offsets are committed only up to the responses written: restart to write "
                     "the rest")
        self.writers = {
            OUTCOME_SCHEMA: TopicWriter(cfg, codec, cfg.outcomes_topic, OUTCOME_SCHEMA,
                                        _user_key, "outcome(s)", unwritten),
            CLICK_SCHEMA: TopicWriter(cfg, codec, cfg.clicks_topic, CLICK_SCHEMA, _user_key,
                                      "purchase click(s)", unwritten),
        }

    def write(self, responses: Sequence[Response]) -> None:
        """Write the responses; return once every one is acknowledged.

        Raises:
            ResponderError: a record was not acknowledged (the message says which topic).
        """
        for schema, writer in self.writers.items():
            records = [r.record for r in responses if r.schema == schema]
            if records:
                try:
                    writer.write(records)
                except SenderError as exc:
                    raise ResponderError(str(exc)) from exc

    def close(self) -> None:
        """Flush and drop the producers."""
        for writer in self.writers.values():
            writer.close()


def _user_key(record: Record) -> bytes:
    return str(record["user_id"]).encode()


def run_responder(cfg: NudgeflowConfig, spec: ResponseSpec, idle_exit_s: float = 0.0,
                  progress: bool = True, *, group: str = DEFAULT_GROUP,
                  release: str = "event-time", say: Callable[[str], None] = print,
                  clock: Callable[[], int] = wall_clock_ms,
                  monotonic: Callable[[], float] = time.monotonic) -> ResponderCounts:
    """Answer the job's triggers and holdouts with the simulated audience of ``spec``.

    Args:
        cfg: Kafka and the topic names (tier topics, trigger-decisions, outcomes, clicks).
        spec: How the audience responds (seeded).
        idle_exit_s: Stop once nothing was read or written for this long; 0: run until
            interrupted (Ctrl-C).
        progress: Report the counts through ``say`` every 5 seconds.
        group: Consumer group whose committed offsets the responder resumes from.
        release: ``event-time`` (write a response once the wall clock reaches its event time)
            or ``immediate`` (write every response at once); see the module docstring.
        say: Where progress and skipped records are reported.
        clock: Wall clock in epoch milliseconds (for ``release="event-time"``).
        monotonic: Seconds for the idle and progress timers.

    Returns:
        The counts: triggers and holdouts answered, duplicates, bad records, opens, clicks,
        unsubscribes, conversions written, and the responses still held at the end.

    Raises:
        ResponderError: a topic is missing or Kafka failed.
        ValueError: ``release`` is not one of RELEASE_MODES.
    """
    from confluent_kafka import KafkaException

    from jobs.schema_registry import RegistryError, schema_lookup

    # reads the job's outputs in either wire format (output_wire_format)
    codec = Codec.load().with_schema_registry(schema_lookup(cfg))
    responder = Responder(spec, cfg.trigger_topics().values(), cfg.trigger_decisions_topic,
                          codec, release, say)
    try:
        source = open_source(cfg, group)
    except ResponderError:
        raise
    except KafkaException as exc:
        raise ResponderError(f"cannot read the trigger topics at {cfg.kafka_bootstrap}: "
                             f"{exc}") from exc
    writer = ResponseWriter(cfg, codec)
    try:
        return respond_loop(source, responder, writer.write, idle_exit_s=idle_exit_s,
                            clock=clock, monotonic=monotonic, say=say,
                            progress_every_s=5.0 if progress else 0.0)
    except KafkaException as exc:
        raise ResponderError(f"Kafka at {cfg.kafka_bootstrap} failed: {exc}; offsets are "
                             "committed up to the responses written: restart to resume") from exc
    except RegistryError as exc:
        raise ResponderError(f"{exc}; offsets are committed up to the responses written: "
                             "restart to resume") from exc
    finally:
        writer.close()
        source.close()


# --- the command line ---------------------------------------------------------------------------


@dataclass(frozen=True)
class RespondOptions:
    """How ``nudgeflow respond`` runs, beside the audience (``ResponseSpec``)."""

    idle_exit_s: float = 0.0
    """Stop once nothing was read or written for this long; 0: run until Ctrl-C."""
    group: str = DEFAULT_GROUP
    """Consumer group of the committed offsets."""
    release: str = "event-time"
    """event-time or immediate (see the module docstring)."""


def _env(flag: str) -> str:
    return ENV_PREFIX + flag[2:].replace("-", "_").upper()


def add_respond_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the responder's flags, each with a ``NUDGEFLOW_RESPOND_*`` fallback in the help."""
    group = parser.add_argument_group("responder (flag > env > default)")
    spec, options = ResponseSpec(), RespondOptions()
    channels = ", ".join(OPENABLE_CHANNELS)
    opens = ",".join(f"{c}={r:g}" for c, r in spec.open_rates.items())
    clicks = ",".join(f"{c}={r:g}" for c, r in spec.click_rates.items())

    def scalar(flag: str, metavar: str, typ: type, default: Any, help_text: str) -> None:
        group.add_argument(flag, metavar=metavar, type=typ,
                           default=os.environ.get(_env(flag), default),
                           help=f"{help_text} [env: {_env(flag)}] [default: {default!r}]")

    def repeated(flag: str, metavar: str, default: str, help_text: str) -> None:
        # default None: argparse would append the flags to a list default instead of replacing
        group.add_argument(flag, metavar=metavar, action="append", default=None,
                           help=f"{help_text}; repeatable [env: {_env(flag)}, comma-separated] "
                           f"[default: {default}]")

    scalar("--seed", "N", int, spec.seed, "seed of every draw: another seed is another audience")
    repeated("--open", "CHANNEL=P", opens,
             f"probability that a message on CHANNEL ({channels}) is opened; PAID_SOCIAL "
             "(ad-audience syncs) is never opened")
    repeated("--click", "CHANNEL=P", clicks,
             "probability that an opened message on CHANNEL is clicked")
    scalar("--unsubscribe", "P", float, spec.p_unsubscribe,
           "probability that an opened message makes the user unsubscribe (an UNSUBSCRIBED "
           "outcome: the job stops using that channel for them)")
    scalar("--convert", "P", float, spec.p_convert,
           "base probability of a purchase within --window, for treated and held-out users")
    repeated("--effect", "CAMPAIGN=DELTA", "none",
             "the campaign's true effect: a treated user converts with P + DELTA (clamped to "
             "[0, 1]), a held-out one with P")
    scalar("--window", "DURATION", str, format_duration(spec.conversion_window_ms),
           "conversion window after the send or holdout (500ms, 90s, 30m, 24h, 3d)")
    scalar("--idle-exit", "SECONDS", float, options.idle_exit_s,
           "exit once nothing was read or written for this long; 0: run until Ctrl-C")
    scalar("--group", "GROUP", str, options.group,
           "consumer group whose committed offsets the responder resumes from (one responder "
           "per group: it reads every partition)")
    group.add_argument("--release", choices=list(RELEASE_MODES),
                       default=os.environ.get(_env("--release"), options.release),
                       help="event-time: write each response once the wall clock reaches its "
                       "event time (the job rejects records more than --max-future-skew-ms "
                       "ahead of their Kafka timestamp); "
                       f"immediate: all at once [env: {_env('--release')}] "
                       f"[default: {options.release!r}]")


def options_from_args(args: argparse.Namespace) -> tuple[ResponseSpec, RespondOptions]:
    """The audience and the run options of parsed ``add_respond_arguments`` flags.

    Raises:
        ValueError: a flag (or its environment variable) is malformed or out of range; the
            message names the flag and says what it takes.
    """
    try:
        window_ms = parse_duration(args.window)
    except ValueError:
        raise ValueError(f"--window {args.window}: not a duration; write a whole number and a "
                         "unit: 500ms, 90s, 30m, 24h or 3d") from None
    defaults = ResponseSpec()
    opens = {**defaults.open_rates, **_channel_rates("--open", _pairs(args.open, "--open"))}
    clicks = {**defaults.click_rates,
              **_channel_rates("--click", _pairs(args.click, "--click"))}
    effects = {}
    for campaign, text in _pairs(args.effect, "--effect"):
        effects[campaign] = _number("--effect", campaign, text, -1.0)
    for flag, value in (("--unsubscribe", args.unsubscribe), ("--convert", args.convert)):
        if not 0 <= value <= 1:
            raise ValueError(f"{flag} must be a probability in [0, 1], got {value:g}")
    if args.idle_exit < 0:
        raise ValueError(f"--idle-exit must be >= 0 seconds (0: run until Ctrl-C), got "
                         f"{args.idle_exit:g}")
    if args.release not in RELEASE_MODES:  # from the environment: argparse checked the flag
        raise ValueError(f"{_env('--release')} must be one of {', '.join(RELEASE_MODES)}, got "
                         f"{args.release!r}")
    if not args.group:
        raise ValueError("--group must not be empty")
    spec = ResponseSpec(seed=args.seed, open_rates=opens, click_rates=clicks,
                        p_unsubscribe=args.unsubscribe, p_convert=args.convert,
                        conversion_window_ms=window_ms, effects=effects)
    return spec, RespondOptions(args.idle_exit, args.group, args.release)


def _pairs(values: list[str] | None, flag: str) -> list[tuple[str, str]]:
    """``KEY=VALUE`` items of a repeatable flag, or of its comma-separated variable."""
    if values is None:
        values = [part for part in os.environ.get(_env(flag), "").split(",") if part.strip()]
    pairs = []
    for item in values:
        key, sep, value = item.partition("=")
        if not sep or not key.strip() or not value.strip():
            form, example = (("CAMPAIGN=DELTA", "cart-abandonment-email=0.02") if flag == "--effect"
                             else ("CHANNEL=PROBABILITY", "EMAIL=0.3"))
            raise ValueError(f"{flag} {item!r}: expected {form}, e.g. {flag} {example}")
        pairs.append((key.strip(), value.strip()))
    return pairs


def _channel_rates(flag: str, pairs: list[tuple[str, str]]) -> dict[str, float]:
    rates = {}
    for channel, text in pairs:
        if channel.upper() == AUDIENCE_CHANNEL:
            raise ValueError(f"{flag} {channel}={text}: {AUDIENCE_CHANNEL} (ad-audience syncs) "
                             "is never opened or clicked; leave it out")
        if channel.upper() not in OPENABLE_CHANNELS:
            raise ValueError(f"{flag} {channel}={text}: unknown channel {channel!r}; use one of "
                             f"{', '.join(OPENABLE_CHANNELS)} (PAID_SOCIAL is never opened)")
        rates[channel.upper()] = _number(flag, channel, text, 0.0)
    return rates


def _number(flag: str, key: str, text: str, low: float) -> float:
    """A number in [low, 1] given as ``key=text`` to ``flag``."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{flag} {key}={text}: {text!r} is not a number") from None
    if not low <= value <= 1:  # also false for nan
        what = "a probability" if low == 0 else "an added probability"
        raise ValueError(f"{flag} {key}={text}: must be {what} in [{low:g}, 1]")
    return value
