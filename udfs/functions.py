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
from udfs import clicks, engine, features
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
from udfs.metrics import BufferedCounter, SampledDistribution
from udfs.segments.updates import SegmentRegistry

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
        record = clicks.SourceRecord(
            topic, partition, offset, timestamp, _maybe_bytes(key), _maybe_bytes(raw)
        )
        result = clicks.decode_click(self.codec, record, self.max_future_skew_ms)
        if isinstance(result, clicks.Rejected):
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


def dead_letter_row(codec: Codec, topic: str, record: clicks.SourceRecord,
                    rejected: clicks.Rejected, failed_at: int) -> tuple[OutputTag, Row]:
    """The side-output element that puts a rejected record on the dead-letter topic."""
    letter = clicks.dead_letter(record, rejected, failed_at)
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
        record = clicks.SourceRecord(
            topic, partition, offset, timestamp, _maybe_bytes(key), _maybe_bytes(raw)
        )
        problem = None
        decoded = None
        if not record.value:
            problem = clicks.Rejected("INVALID_AVRO", "empty record value", "decode")
        else:
            try:
                decoded = self.codec.decode(record.value, expect=self.schema)
            except UnknownSchemaError as exc:
                problem = clicks.Rejected("UNKNOWN_SCHEMA", str(exc), "decode")
            except CodecError as exc:
                problem = clicks.Rejected("INVALID_AVRO", str(exc), "decode")
        if problem is not None or decoded is None:
            self.dead_lettered.inc(problem.reason_code if problem else "OTHER")
            yield dead_letter_row(
                self.codec, self.dead_letter_topic, record,
                problem or clicks.Rejected("OTHER", "undecodable", "decode"),
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
    """Keyed by user, with the definitions broadcast: features, metadata, segment membership.

    For each click, metadata update or timer: load the user's state, step ``udfs.engine``,
    write every membership change to Cassandra and Redis (blocking, retried; see
    udfs/membership_store.py), store the state, emit the changes as SegmentChange rows and set a
    timer for the next time-driven change. Events later than the watermark minus the allowed
    lateness go to the dead-letter topic (LATE_EVENT).
    """

    def __init__(self, cfg: Any, initial_definitions: list[dict[str, Any]],
                 model_files: tuple[bytes, bytes, str, str] | None,
                 writer_factory: Any = None) -> None:
        self.cfg = cfg
        # the definitions of the segment files, in force from the first event on (a broadcast
        # stream would race with the first events)
        self.initial_definitions = initial_definitions
        # the churn model's files travel with the function (see jobs.job.churn_model_files)
        self.model_files = model_files
        self.writer_factory = writer_factory

    def open(self, runtime_context: RuntimeContext) -> None:
        """State handles, codec, the store writer and metrics, created once per instance."""
        from udfs.membership_store import CassandraRedisWriter

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
        self.registry: SegmentRegistry | None = None
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
        self.features_cache: dict[str, tuple[bytes, features.UserFeatures]] = {}
        # user id -> (encoded metadata, its dict); user id -> the expiry timer last set
        self.metadata_cache: dict[str, tuple[bytes, dict[str, Any]]] = {}
        self.expiry_cache: dict[str, int] = {}
        if self.writer_factory is not None:
            self.writer = self.writer_factory()
        else:
            cfg = self.cfg
            self.writer = CassandraRedisWriter.connect(
                cfg.cassandra_hosts.split(","), cfg.cassandra_port, cfg.cassandra_keyspace,
                cfg.redis_url, cfg.cassandra_username, cfg.cassandra_password,
                on_retry=self.store_retries.inc, redis_prefix=cfg.redis_key_prefix,
            )

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
        self._load_registry(state)
        update = self.codec.decode(payload, expect="DefinitionUpdate")
        assert self.registries is not None
        change = self.registries.apply(update)
        if change.outcome is ChangeOutcome.REJECTED:
            self.bad_definitions.inc()
            yield dead_letter_row(
                self.codec, self.cfg.dead_letter_topic,
                clicks.SourceRecord(self.cfg.definitions_topic, None, None, None,
                                    definition_id.encode(), payload),
                clicks.Rejected("INVALID_DEFINITION", change.message + "; " + format_errors(
                    change.errors), "definitions"),
                # processing time; the broadcast context's current_processing_time() is broken
                # in PyFlink 2.2's thread mode (no such Java method)
                int(time.time() * 1000),
            )
        elif change.changed:
            # DELETEs are kept too (tombstones), so an older version arriving later stays stale
            state.put(definition_id, payload)
            self.writer.record_definition(definition_id, f"v{change.version} {update['action']}")

    def _load_registry(self, state: Any) -> None:
        """Once per start or restore: the file definitions, then those of the control topic.

        The broadcast state holds what the control topic changed; versions decide, so a file
        shipped with a newer version wins over an older published one and vice versa. Segments,
        campaigns and the priority policy each have their registry (``Registries``).
        """
        if self.registries is not None:
            return
        registries = Registries.from_updates(self.initial_definitions)
        for _, payload in state.items():
            registries.apply(self.codec.decode(bytes(payload), expect="DefinitionUpdate"))
        self.registries = registries
        self.registry = registries.segments
        for update in registries.updates():
            self.writer.record_definition(update["definition_id"],
                                          f"v{update['version']} {update['action']}")

    # -- users --------------------------------------------------------------------------------

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """Step the engine with a click or a metadata update."""
        if self.registry is None:  # once per start: the state handle is a JVM call
            self._load_registry(ctx.get_broadcast_state(definitions_state()))
        kind, user_id, event_time = value[0], value[1], value[2]
        state = self._load_state(user_id)
        if kind == "click":
            watermark = ctx.timer_service().current_watermark()
            if engine.is_late(event_time, watermark, self.cfg.allowed_lateness_ms):
                self.late.inc()
                yield from self._late(value, watermark, ctx)
                return
            self.events.inc()
            event = self._click(value)
            step = engine.on_event(state, event, self._registry(), self.scorer)
            if step.duplicate:
                self.duplicates.inc()
                return
        else:
            metadata = self.codec.decode(_maybe_bytes(value[4]) or b"", expect="UserMetadata")
            step = engine.on_metadata(state, metadata, self._registry(),
                                      max(event_time, ctx.timer_service().current_watermark()),
                                      self.scorer)
            yield from self._finish(user_id, state, step, ctx, metadata_changed=True)
            yield from self._campaigns(user_id, state, step, ctx,
                                       f"metadata@{metadata.get('updated_at')}")
            return
        yield from self._finish(user_id, state, step, ctx, features_changed=True)
        yield from self._campaigns(user_id, state, step, ctx, event["event_id"], event)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        """Re-evaluate at a timer; clear the state of users idle beyond the TTL."""
        if self.registry is None:  # once per start: the state handle is a JVM call
            self._load_registry(ctx.get_broadcast_state(definitions_state()))
        user_id = ctx.get_current_key()
        state = self._load_state(user_id)
        if engine.expired(state, timestamp, self.cfg.state_ttl_ms):
            # an idle user leaves every segment, then their state is dropped (bounded state)
            step = engine.on_expiry(state, user_id, timestamp, self.cfg.state_ttl_ms,
                                    self.scorer)
            yield from self._emit(step)
            self.features_state.clear()
            self.metadata_state.clear()
            self.membership.clear()
            self.expiry.clear()
            self.expiry_cache.pop(user_id, None)
            self.campaign_state.clear()
            return
        step = engine.on_timer(state, user_id, timestamp, self._registry(), self.scorer)
        yield from self._finish(user_id, state, step, ctx)
        yield from self._campaigns(user_id, state, step, ctx, f"timer@{timestamp}", timer=True)

    def _registry(self) -> SegmentRegistry:
        assert self.registry is not None, "_load_registry runs before every element"
        return self.registry

    def _load_state(self, user_id: str) -> engine.UserState:
        self.loaded_membership = dict(self.membership.value() or {})
        raw_features = self.features_state.value()
        raw_metadata = self.metadata_state.value()
        return engine.UserState(
            features=self._decode_features(user_id, raw_features) if raw_features else None,
            metadata=self._decode_metadata(user_id, raw_metadata) if raw_metadata else None,
            membership=dict(self.loaded_membership),
        )

    def _decode_features(self, user_id: str, raw: bytes) -> features.UserFeatures:
        """Decode a user's features, reusing the object decoded last time if the bytes match.

        Decoding costs ~30 µs an event; the state bytes are the truth (checkpoints hold them),
        the cache only skips decoding what this instance itself encoded last.
        """
        cached = self.features_cache.get(user_id)
        if cached is not None and cached[0] == raw:
            return cached[1]
        return features.decode_state(bytes(raw))

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

    def _finish(self, user_id: str, state: engine.UserState, step: engine.Step, ctx: Any,
                features_changed: bool = False, metadata_changed: bool = False
                ) -> Iterator[Any]:
        # only what changed is written back: each state write is a conversion across the JVM
        if features_changed and state.features is not None:
            encoded = features.encode_state(state.features)
            self.features_state.update(encoded)
            _remember(self.features_cache, user_id, (encoded, state.features))
            self.state_bytes.update(len(encoded))
            # the expiry timer moves at most once a day (not at every event): fewer timer
            # registrations and state writes, and fewer stale timers in the timer state
            expiry = engine.expiry_timer_ms(state.features.last_event_ms,
                                            self.cfg.state_ttl_ms)
            known = self.expiry_cache.get(user_id)
            if known is None:
                known = self.expiry.value()
            if known != expiry:
                ctx.timer_service().register_event_time_timer(expiry)
                self.expiry.update(expiry)
            _remember(self.expiry_cache, user_id, expiry)
        if metadata_changed and state.metadata is not None:
            self.metadata_state.update(self.codec.encode("UserMetadata", state.metadata))
        if state.membership != self.loaded_membership:
            self.membership.update(state.membership)
        if step.next_timer_ms is not None:
            ctx.timer_service().register_event_time_timer(step.next_timer_ms)
        yield from self._emit(step)

    def _emit(self, step: engine.Step) -> Iterator[Row]:
        # durable before they are emitted (and so checkpointed); a step's changes together
        self.writer.write_many(step.changes)
        for change in step.changes:
            (self.enters if change["change"] == "ENTER" else self.exits).inc()
            self.changes.inc(f"{change['segment_id']}.{change['change']}")
            record = {**change, "emitted_at": change["event_time"]}
            yield Row(self.cfg.segment_changes_topic, change["user_id"].encode(),
                      self.codec.encode("SegmentChange", record))

    # -- campaigns ----------------------------------------------------------------------------

    def _campaigns(self, user_id: str, state: engine.UserState, step: engine.Step, ctx: Any,
                   cause: str, event: dict[str, Any] | None = None, timer: bool = False
                   ) -> Iterator[Row]:
        """Fire, arbitrate and emit the user's campaign triggers after an engine step.

        The campaign state is read only when it can matter: at a timer (deferred candidates),
        when a campaign fires, or when a campaign watches the churn score (for crossings).
        """
        registries = self.registries
        if registries is None or step.now_ms is None or not len(registries.campaigns):
            return
        campaigns = registries.campaign_map()
        facts = arbitration.StepFacts(user_id, step.now_ms, cause, event, tuple(step.changes),
                                      state.churn_score, step.view, state.metadata)
        if not (timer or registries.uses_churn()
                or arbitration.find_candidates(campaigns.values(), facts, None)):
            return
        raw = self.campaign_state.value()
        cstate = arbitration.decode_state(bytes(raw) if raw else None)
        defs = arbitration.Definitions(campaigns, registries.policies.policy(),
                                       registries.segment_versions(), self._audience_sizes())
        user = arbitration.UserFacts(user_id, state.metadata, state.membership,
                                     state.churn_score, state.model_version)
        emit_time = int(time.time() * 1000)
        outcome = arbitration.on_step(cstate, facts, user, defs, emit_time)
        if outcome.state_changed:  # most steps change nothing: no encoding, no state write
            if not cstate.is_empty():
                self.campaign_state.update(arbitration.encode_state(cstate))
            elif raw:
                self.campaign_state.clear()
        due = cstate.next_due_ms()
        if due is not None:
            ctx.timer_service().register_event_time_timer(due)
        for _ in range(outcome.duplicates):
            self.trigger_duplicates.inc()
        key = user_id.encode()
        for trigger in outcome.triggers:
            self.triggers_by_tier.inc(trigger["tier"])
            self.triggers_by_campaign.inc(trigger["campaign_id"])
            if event is not None and trigger["cause_event_id"] == event["event_id"]:
                self.trigger_latency.update(max(0, emit_time - trigger["ingest_time"]))
            yield Row(self.cfg.trigger_topic(trigger["tier"]), key,
                      self.codec.encode("TriggerEvent", trigger))
        for decision in outcome.decisions:
            counters = self.suppressed if decision["outcome"] == "SUPPRESSED" else self.deferred
            counters.inc(decision["reason_code"])
            yield Row(self.cfg.trigger_decisions_topic, key,
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
            clicks.SourceRecord(self.cfg.clicks_topic, None, None, ingest_time,
                                event["user_id"].encode(), raw),
            clicks.Rejected("LATE_EVENT", reason, "watermark"),
            ctx.timer_service().current_processing_time(),
        )
