"""Thin PyFlink adapters: load state, call the pure domain function, store state, emit.

- ``DecodeClicksFunction``: Kafka record rows -> engine input rows; rejected records -> the
  dead-letter side output (encoded DeadLetter rows ready for the Kafka sink). Never raises on
  bad input.
- ``DecodeRecordsFunction``: the same for user-metadata and definitions records.
- ``UserEngineFunction`` (keyed by user, definitions broadcast): features, metadata join and
  segment membership -> SegmentChange rows, written to Cassandra/Redis first; then campaigns
  (``udfs.campaigns.arbitration``) -> TriggerEvent rows to the topic of their tier and
  TriggerDecision rows.
"""

from __future__ import annotations

import importlib
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyflink.common import Row
from pyflink.common.watermark_strategy import TimestampAssigner
from pyflink.datastream import (
    KeyedBroadcastProcessFunction,
    OutputTag,
    ProcessFunction,
    RuntimeContext,
)

from schemas.codec import Codec, CodecError, UnknownSchemaError
from udfs import engine, intake
from udfs.campaigns import arbitration
from udfs.definitions.diagnostics import format_errors
from udfs.definitions.registries import Registries
from udfs.definitions.versioning import ChangeOutcome
from udfs.descriptors import (
    DEAD_LETTER_TAG,
    campaign_state,
    definitions_state,
    expiry_timer_state,
    membership_state,
    user_features_state,
    user_metadata_state,
)
from udfs.features.codec import decode_state, encode_state
from udfs.features.state import UserFeatures
from udfs.metrics import BufferedCounter, SampledDistribution

#: the live segment sizes (audience factor) are re-read from the store at most this often
AUDIENCE_REFRESH_S = 10.0


class DecodeClicksFunction(ProcessFunction):
    """Decode and validate the clicks topic's records; dead-letter what is bad."""

    def __init__(self, dead_letter_topic: str, max_future_skew_ms: int) -> None:
        self.dead_letter_topic = dead_letter_topic
        self.max_future_skew_ms = max_future_skew_ms

    def open(self, runtime_context: RuntimeContext) -> None:
        """Load the schemas once per operator instance; register counters."""
        self.codec = Codec.load()
        metrics = runtime_context.get_metrics_group()
        self.events_in = BufferedCounter(metrics.counter("events_in"))
        self.events_valid = BufferedCounter(metrics.counter("events_valid"))
        self.dead_lettered = LabelledCounters(metrics, "reason", "events_dead_lettered")

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        """Emit a click row, or a DeadLetter row on the side output."""
        self.events_in.inc()
        topic, partition, offset, timestamp, key, raw = value
        record = intake.SourceRecord(
            topic, partition, offset, timestamp, _maybe_bytes(key), _maybe_bytes(raw)
        )
        result = intake.decode_click(self.codec, record, self.max_future_skew_ms)
        if isinstance(result, intake.Rejected):
            self.dead_lettered.inc(result.reason_code)
            yield dead_letter_row(self.codec, self.dead_letter_topic, record, result,
                                  ctx.timer_service().current_processing_time())
            return
        self.events_valid.inc()
        yield Row("click", result["user_id"], result["event_time"], record.timestamp,
                  record.value)


#: decoded user features kept per engine instance (roughly 8 KB each: ~80 MB at most)
FEATURES_CACHE_SIZE = 10_000


def _remember(cache: dict[str, Any], user_id: str, value: Any) -> None:
    """Keep ``value`` for a user in a per-instance cache bounded by FEATURES_CACHE_SIZE."""
    if len(cache) >= FEATURES_CACHE_SIZE and user_id not in cache:
        cache.clear()  # crude but O(1) per event; a miss only costs a decode or a state read
    cache[user_id] = value


def import_in_python_thread(module: str) -> None:
    """Import a module on a thread Python created, and wait for it.

    In thread mode the operators run on JVM threads that the embedded interpreter does not
    register for ``PyGILState_Ensure``; a pybind11 extension (onnxruntime) initialising there
    waits for a GIL its own thread holds, and the job hangs in INITIALIZING. A thread started by
    ``threading`` is registered, and ``join`` releases the GIL while it imports.
    """
    if module in sys.modules:
        return
    errors: list[BaseException] = []

    def run() -> None:
        try:
            importlib.import_module(module)
        except BaseException as exc:  # noqa: BLE001 - re-raised on the caller's thread
            errors.append(exc)

    worker = threading.Thread(target=run, name=f"import-{module}")
    worker.start()
    worker.join()
    if errors:
        raise errors[0]


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


def dead_letter_row(codec: Codec, topic: str, record: intake.SourceRecord,
                    rejected: intake.Rejected, failed_at: int) -> tuple[OutputTag, Row]:
    """The side-output element that puts a rejected record on the dead-letter topic."""
    letter = intake.dead_letter(record, rejected, failed_at)
    return DEAD_LETTER_TAG, Row(topic, record.key, codec.encode("DeadLetter", letter))


def _maybe_bytes(value: Any) -> bytes | None:
    return None if value is None else bytes(value)


class DecodeRecordsFunction(ProcessFunction):
    """Validate a topic's single-object Avro records of one schema; dead-letter the rest.

    Emits ``to_row(record, raw_bytes)`` for each valid record; used for the user-metadata and
    definitions topics (the record bytes travel on, decoded where they are used).
    """

    def __init__(self, schema: str, dead_letter_topic: str, to_row: Any) -> None:
        self.schema = schema
        self.dead_letter_topic = dead_letter_topic
        self.to_row = to_row

    def open(self, runtime_context: RuntimeContext) -> None:
        """Load the schemas; register the dead-letter counter."""
        self.codec = Codec.load()
        self.dead_lettered = LabelledCounters(runtime_context.get_metrics_group(), "reason",
                                              "records_dead_lettered")

    def process_element(self, value: Row, ctx: ProcessFunction.Context) -> Iterator[Any]:
        """Emit the row for a valid record, a DeadLetter row for anything else."""
        topic, partition, offset, timestamp, key, raw = value
        record = intake.SourceRecord(
            topic, partition, offset, timestamp, _maybe_bytes(key), _maybe_bytes(raw)
        )
        problem = None
        decoded = None
        if not record.value:
            problem = intake.Rejected("INVALID_AVRO", "empty record value", "decode")
        else:
            try:
                decoded = self.codec.decode(record.value, expect=self.schema)
            except UnknownSchemaError as exc:
                problem = intake.Rejected("UNKNOWN_SCHEMA", str(exc), "decode")
            except CodecError as exc:
                problem = intake.Rejected("INVALID_AVRO", str(exc), "decode")
        if problem is not None or decoded is None:
            self.dead_lettered.inc(problem.reason_code if problem else "OTHER")
            yield dead_letter_row(
                self.codec, self.dead_letter_topic, record,
                problem or intake.Rejected("OTHER", "undecodable", "decode"),
                ctx.timer_service().current_processing_time())
            return
        yield self.to_row(decoded, record.value)


def metadata_to_engine_input(record: dict[str, Any], raw: bytes) -> Row:
    """A UserMetadata as the engine's input row (event time = its updated_at)."""
    return Row("metadata", record["user_id"], record["updated_at"], None, raw)


def definition_to_row(record: dict[str, Any], raw: bytes) -> Row:
    """A DefinitionUpdate as a broadcast row."""
    return Row(record["definition_id"], raw)


class EventTimeAssigner(TimestampAssigner):
    """Event time of an engine input row (its ``event_time`` field)."""

    def extract_timestamp(self, value: Row, record_timestamp: int) -> int:
        """The row's event time."""
        return int(value[2])


class NeutralTimeAssigner(TimestampAssigner):
    """Timestamp 0 for control records: their watermark never moves the engine's event time."""

    def extract_timestamp(self, value: Row, record_timestamp: int) -> int:
        """Always 0 (the epoch)."""
        return 0


class MeasuredScorer:
    """The churn model with its metrics.

    Records scores computed, their distribution (per mille) and the scoring time (µs).
    """

    def __init__(self, model: Any, metrics: Any) -> None:
        self.model = model
        self.version = model.version
        self.scores = BufferedCounter(metrics.counter("churn_scores"))
        self.score_permille = SampledDistribution(metrics.distribution("churn_score_permille"))
        self.score_us = SampledDistribution(metrics.distribution("churn_scoring_us"))

    def score(self, vector: list[float]) -> float:
        """Score one vector and record it."""
        started = time.perf_counter()
        value = float(self.model.score(vector))
        self.score_us.update(int((time.perf_counter() - started) * 1e6))
        self.score_permille.update(int(value * 1000))
        self.scores.inc()
        return value


class UserEngineFunction(KeyedBroadcastProcessFunction):
    """Keyed by user, with the definitions broadcast: the per-user engine.

    For each click, metadata update or timer: load the user's state, call ``engine.step``,
    store what it changed, register its timers, write its membership changes to the membership
    store (blocking, retried; ``udfs.stores.membership``), then emit its SegmentChanges,
    TriggerEvents and TriggerDecisions as ``ENGINE_OUTPUT_ROW`` rows (routed to their topics
    downstream, in Java). Events later than the watermark minus the allowed lateness go to the
    dead-letter side output (LATE_EVENT).
    """

    def __init__(self, cfg: Any, initial_definitions: list[dict[str, Any]],
                 model_files: tuple[bytes, bytes, str, str] | None,
                 store_factory: Any) -> None:
        self.cfg = cfg
        # the definitions of the segment files, in force from the first event on (a broadcast
        # stream would race with the first events)
        self.initial_definitions = initial_definitions
        # the churn model's files travel with the function (see jobs.job.churn_model_files)
        self.model_files = model_files
        # creates the membership store in open() (a client is never pickled)
        self.store_factory = store_factory

    def open(self, runtime_context: RuntimeContext) -> None:
        """State handles, codec, the store writer and metrics, created once per instance."""
        self.codec = Codec.load()
        self.features_state = runtime_context.get_state(user_features_state())
        self.metadata_state = runtime_context.get_state(user_metadata_state())
        self.membership = runtime_context.get_state(membership_state())
        self.expiry = runtime_context.get_state(expiry_timer_state())
        self.campaign_state = runtime_context.get_state(campaign_state())
        metrics = runtime_context.get_metrics_group()
        self.triggers_by_tier = LabelledCounters(metrics, "tier", "triggers")
        self.triggers_by_campaign = LabelledCounters(metrics, "campaign", "triggers")
        self.suppressed = LabelledCounters(metrics, "reason", "triggers_suppressed")
        self.deferred = LabelledCounters(metrics, "reason", "triggers_deferred")
        self.trigger_duplicates = metrics.counter("triggers_duplicate")
        # ingestion (Kafka append time of the causing click) -> trigger emitted, ms
        self.trigger_latency = metrics.distribution("trigger_latency_ms")
        self.audience_sizes: dict[str, int] = {}
        self.audience_read_at = 0.0
        self.events = BufferedCounter(metrics.counter("engine_events"))
        self.duplicates = metrics.counter("events_duplicate")
        self.late = metrics.counter("events_late")
        self.changes = LabelledCounters(metrics, "segment", "segment_changes")
        self.enters = metrics.counter("segment_enters")
        self.exits = metrics.counter("segment_exits")
        self.state_bytes = SampledDistribution(metrics.distribution("user_state_bytes"))
        self.store_retries = metrics.counter("store_retries")
        self.bad_definitions = metrics.counter("definitions_rejected")
        self.registries: Registries | None = None
        self.scorer = None
        if self.model_files is not None:
            import_in_python_thread("udfs.churn")
            from udfs.churn import ChurnModel

            onnx, meta, onnx_name, meta_name = self.model_files
            # one onnxruntime session per operator instance (single-threaded: Flink runs the
            # instances in parallel)
            model = ChurnModel.from_bytes(onnx, meta, Path(onnx_name), Path(meta_name))
            self.scorer = MeasuredScorer(model, metrics)
        # user id -> (encoded state, the UserFeatures it encodes); see _decode_features
        self.features_cache: dict[str, tuple[bytes, UserFeatures]] = {}
        # user id -> (encoded metadata, its dict); user id -> the expiry timer last set
        self.metadata_cache: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self.expiry_cache: dict[str, int] = {}
        self.writer = self.store_factory(on_retry=self.store_retries.inc)

    def close(self) -> None:
        """Close the store connections."""
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()

    # -- definitions --------------------------------------------------------------------------

    def process_broadcast_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """Apply a DefinitionUpdate to the registry and, if it changed it, the broadcast state."""
        definition_id, payload = value[0], _maybe_bytes(value[1]) or b""
        state = ctx.get_broadcast_state(definitions_state())
        registries = self._load_registries(state)
        update = self.codec.decode(payload, expect="DefinitionUpdate")
        change = registries.apply(update)
        if change.outcome is ChangeOutcome.REJECTED:
            self.bad_definitions.inc()
            yield dead_letter_row(
                self.codec, self.cfg.dead_letter_topic,
                intake.SourceRecord(self.cfg.definitions_topic, None, None, None,
                                    definition_id.encode(), payload),
                intake.Rejected("INVALID_DEFINITION", change.message + "; " + format_errors(
                    change.errors), "definitions"),
                # processing time; the broadcast context's current_processing_time() is broken
                # in PyFlink 2.2's thread mode (no such Java method)
                int(time.time() * 1000),
            )
        elif change.changed:
            # DELETEs are kept too (tombstones), so an older version arriving later stays stale
            state.put(definition_id, payload)
            self.writer.record_definition(definition_id, f"v{change.version} {update['action']}")

    def _load_registries(self, state: Any) -> Registries:
        """Once per start or restore: the file definitions, then those of the control topic.

        The broadcast state holds what the control topic changed; versions decide, so a file
        shipped with a newer version wins over an older published one and vice versa. Segments,
        campaigns and the priority policy each have their registry (``Registries``).
        """
        if self.registries is not None:
            return self.registries
        registries = Registries.from_updates(self.initial_definitions)
        for _, payload in state.items():
            registries.apply(self.codec.decode(bytes(payload), expect="DefinitionUpdate"))
        self.registries = registries
        for update in registries.updates():
            self.writer.record_definition(update["definition_id"],
                                          f"v{update['version']} {update['action']}")
        return registries

    # -- users --------------------------------------------------------------------------------

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """Step the engine with a click or a metadata update."""
        kind, user_id, event_time = value[0], value[1], value[2]
        state = self._load_state(user_id)
        item: engine.Input
        if kind == "click":
            watermark = ctx.timer_service().current_watermark()
            if engine.is_late(event_time, watermark, self.cfg.allowed_lateness_ms):
                self.late.inc()
                yield from self._late(value, watermark, ctx)
                return
            self.events.inc()
            item = engine.Click(self._click(value))
        else:
            metadata = self.codec.decode(_maybe_bytes(value[4]) or b"", expect="UserMetadata")
            item = engine.MetadataUpdate(
                metadata, max(event_time, ctx.timer_service().current_watermark()))
        yield from self._step(user_id, state, item, ctx)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        """Step the engine at a timer (time-driven changes, deferred triggers, state expiry)."""
        user_id = ctx.get_current_key()
        state = self._load_state(user_id)
        yield from self._step(user_id, state, engine.Timer(user_id, timestamp), ctx)

    def _step(self, user_id: str, state: engine.UserState, item: engine.Input, ctx: Any
              ) -> Iterator[Any]:
        """Call the engine, store what it changed, register its timers and emit its records."""
        if self.registries is None:  # once per start: the state handle is a JVM call
            self._load_registries(ctx.get_broadcast_state(definitions_state()))
        emit_time = int(time.time() * 1000)
        step = engine.step(state, item, self._rules(), emit_time)
        if step.duplicate:
            self.duplicates.inc()
            return
        if step.expired:
            yield from self._segment_changes(step)
            self._clear_state(user_id)
            return
        self._store_state(user_id, state, step, ctx)
        timers = ctx.timer_service()
        for due in step.timers:
            timers.register_event_time_timer(due)
        yield from self._segment_changes(step)
        yield from self._triggers(user_id, step, item, emit_time)

    def _rules(self) -> engine.Rules:
        assert self.registries is not None, "_load_registries runs before every step"
        return engine.Rules(self.registries, self.cfg.state_ttl_ms, self.scorer,
                            self._audience_sizes())

    def _load_state(self, user_id: str) -> engine.UserState:
        self.loaded_membership = dict(self.membership.value() or {})
        raw_features = self.features_state.value()
        raw_metadata = self.metadata_state.value()
        self.campaigns_stored = False
        return engine.UserState(
            features=self._decode_features(user_id, raw_features) if raw_features else None,
            metadata=self._decode_metadata(user_id, raw_metadata) if raw_metadata else None,
            membership=dict(self.loaded_membership),
            load_campaigns=self._load_campaigns,
        )

    def _decode_features(self, user_id: str, raw: bytes) -> UserFeatures:
        """Decode a user's features, reusing the object decoded last time if the bytes match.

        Decoding costs ~30 µs an event; the state bytes are the truth (checkpoints hold them),
        the cache only skips decoding what this instance itself encoded last.
        """
        cached = self.features_cache.get(user_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        return decode_state(bytes(raw))

    def _decode_metadata(self, user_id: str, raw: bytes) -> dict[str, Any]:
        """Decode a user's metadata, reusing the dict decoded last time if the bytes match.

        Metadata changes rarely and is read at every event (~15 µs to decode); the engine only
        reads the dict, so the one decoded from the same bytes can serve again.
        """
        cached = self.metadata_cache.get(user_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        metadata = self.codec.decode(bytes(raw), expect="UserMetadata")
        _remember(self.metadata_cache, user_id, (raw, metadata))
        return metadata

    def _load_campaigns(self) -> arbitration.CampaignState:
        """The current user's campaign state (read only when a step needs it)."""
        raw = self.campaign_state.value()
        self.campaigns_stored = bool(raw)
        return arbitration.decode_state(bytes(raw) if raw else None)

    def _store_state(self, user_id: str, state: engine.UserState, step: engine.Step,
                     ctx: Any) -> None:
        # only what changed is written back: each state write is a conversion across the JVM
        if step.features_changed and state.features is not None:
            encoded = encode_state(state.features)
            self.features_state.update(encoded)
            _remember(self.features_cache, user_id, (encoded, state.features))
            self.state_bytes.update(len(encoded))
        expiry = step.expiry_timer_ms
        if expiry is not None:
            # the expiry timer moves at most once a day (not at every event): fewer timer
            # registrations and state writes, and fewer stale timers in the timer state
            known = self.expiry_cache.get(user_id)
            if known is None:
                known = self.expiry.value()
            if known != expiry:
                ctx.timer_service().register_event_time_timer(expiry)
                self.expiry.update(expiry)
            _remember(self.expiry_cache, user_id, expiry)
        if step.metadata_changed and state.metadata is not None:
            self.metadata_state.update(self.codec.encode("UserMetadata", state.metadata))
        if state.membership != self.loaded_membership:
            self.membership.update(state.membership)
        cstate = state.campaigns
        if step.campaigns_changed and cstate is not None:
            # most steps change nothing: no encoding, no state write
            if not cstate.is_empty():
                self.campaign_state.update(arbitration.encode_state(cstate))
            elif self.campaigns_stored:
                self.campaign_state.clear()

    def _clear_state(self, user_id: str) -> None:
        self.features_state.clear()
        self.metadata_state.clear()
        self.membership.clear()
        self.expiry.clear()
        self.expiry_cache.pop(user_id, None)
        self.campaign_state.clear()

    def _segment_changes(self, step: engine.Step) -> Iterator[Row]:
        # durable before they are emitted (and so checkpointed); a step's changes together
        self.writer.write_many(step.changes)
        for change in step.changes:
            (self.enters if change["change"] == "ENTER" else self.exits).inc()
            self.changes.inc(f"{change['segment_id']}.{change['change']}")
            record = {**change, "emitted_at": change["event_time"]}
            yield Row("SegmentChange", None, change["user_id"].encode(),
                      self.codec.encode("SegmentChange", record))

    def _triggers(self, user_id: str, step: engine.Step, item: engine.Input, emit_time: int
                  ) -> Iterator[Any]:
        for _ in range(step.trigger_duplicates):
            self.trigger_duplicates.inc()
        key = user_id.encode()
        event = item.event if isinstance(item, engine.Click) else None
        for trigger in step.triggers:
            self.triggers_by_tier.inc(trigger["tier"])
            self.triggers_by_campaign.inc(trigger["campaign_id"])
            if event is not None and trigger["cause_event_id"] == event["event_id"]:
                self.trigger_latency.update(max(0, emit_time - trigger["ingest_time"]))
            yield Row("TriggerEvent", trigger["tier"], key,
                      self.codec.encode("TriggerEvent", trigger))
        for decision in step.decisions:
            counters = self.suppressed if decision["outcome"] == "SUPPRESSED" else self.deferred
            counters.inc(decision["reason_code"])
            yield Row("TriggerDecision", None, key,
                      self.codec.encode("TriggerDecision", decision))

    def _audience_sizes(self) -> dict[str, int]:
        """Live segment sizes from the store, re-read at most every AUDIENCE_REFRESH_S."""
        now = time.monotonic()
        if now - self.audience_read_at >= AUDIENCE_REFRESH_S:
            reader = getattr(self.writer, "segment_sizes", None)
            self.audience_sizes = reader() if reader is not None else {}
            self.audience_read_at = now
        return self.audience_sizes

    def _click(self, value: Row) -> dict[str, Any]:
        """The click of an engine input row (validated by DecodeClicksFunction upstream)."""
        event = self.codec.decode(bytes(value[4]), expect="ClickEvent")
        event["ingest_time"] = value[3]
        return event

    def _late(self, value: Row, watermark: int, ctx: Any) -> Iterator[Any]:
        raw = bytes(value[4])  # the producer's own bytes go to the dead-letter topic
        event = self.codec.decode(raw, expect="ClickEvent")
        ingest_time = value[3]
        reason = (
            f"event {event['event_id']!r} of user {event['user_id']!r} has event_time "
            f"{event['event_time']}, {watermark - event['event_time']} ms behind the watermark "
            f"{watermark}; the allowed lateness is {self.cfg.allowed_lateness_ms} ms"
        )
        yield dead_letter_row(
            self.codec, self.cfg.dead_letter_topic,
            intake.SourceRecord(self.cfg.clicks_topic, None, None, ingest_time,
                                event["user_id"].encode(), raw),
            intake.Rejected("LATE_EVENT", reason, "watermark"),
            ctx.timer_service().current_processing_time(),
        )
