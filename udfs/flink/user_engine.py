"""The per-user engine as a Flink function: load state, call ``udfs.engine.step``, store, emit.

``UserEngineFunction`` is keyed by user with the definitions broadcast. For each click,
metadata update or timer it loads the user's keyed state, steps the pure engine, stores what
the step changed, registers its timers, writes its segment changes to the membership store
(``udfs.stores``) and emits SegmentChanges, TriggerEvents and TriggerDecisions as
``ENGINE_OUTPUT_ROW`` rows; late clicks go to the dead-letter side output.
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
from pyflink.datastream import KeyedBroadcastProcessFunction, RuntimeContext

from schemas.codec import Codec
from udfs import engine, intake
from udfs.campaigns import arbitration
from udfs.catalog.registries import Registries
from udfs.definitions.diagnostics import format_errors
from udfs.definitions.versioning import ChangeOutcome
from udfs.features.codec import decode_state, encode_state
from udfs.features.state import UserFeatures
from udfs.flink.decode import dead_letter_row, maybe_bytes
from udfs.flink.descriptors import (
    campaign_state,
    definitions_state,
    expiry_timer_state,
    membership_state,
    user_features_state,
    user_metadata_state,
)
from udfs.flink.metrics import (
    BufferedCounter,
    LabelledCounters,
    MeasuredScorer,
    SampledDistribution,
)

#: the live segment sizes (audience factor) are re-read from the store at most this often
AUDIENCE_REFRESH_S = 10.0


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
        self.rules: engine.Rules | None = None  # see _rules
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
        definition_id, payload = value[0], maybe_bytes(value[1]) or b""
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
            metadata = self.codec.decode(maybe_bytes(value[4]) or b"", expect="UserMetadata")
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
        """The step's rules, rebuilt only when the audience sizes were re-read.

        The registries are applied to in place, so a definition change needs no rebuild.
        """
        assert self.registries is not None, "_load_registries runs before every step"
        sizes = self._audience_sizes()
        rules = self.rules
        if rules is None or rules.audience_sizes is not sizes:
            rules = self.rules = engine.Rules(self.registries, self.cfg.state_ttl_ms,
                                              self.scorer, sizes)
        return rules

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
