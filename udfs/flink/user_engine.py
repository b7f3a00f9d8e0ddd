"""The per-user engine as a Flink function: load state, call ``udfs.engine.step``, store, emit.

``UserEngineFunction`` is keyed by user with the definitions broadcast. For each click or
metadata record (an ``engine.Arrival`` with the current watermark) and each timer (an
``engine.Timer`` at the watermark) it loads the user's keyed state (the clock first, the rest
only if the step needs it), steps the pure engine, stores what the step changed, moves the
user's one timer, and emits a step's segment changes as one ``MembershipWrite`` row and its
TriggerEvents and TriggerDecisions as ``ENGINE_OUTPUT_ROW`` rows (a timer's records can only
leave on the main output); late clicks go to the dead-letter side output. The membership
writes run in an operator of their own, on another thread (``udfs.flink.membership_writes``):
it writes the changes to the membership store (``udfs.stores``) and only then emits them as
SegmentChanges, or as dead letters when a store refuses them for good.

An erasure (an ``erase`` row: a user-metadata tombstone; ``udfs.engine.Erasure``) is stepped at
once: its EXITs are emitted as usual, then every keyed state of the user is cleared but the
``erased`` marker, the user's timer is deleted and a ``MembershipWrite`` row asks the writer to
delete the user from the stores after those EXITs (``MembershipWriter.erase_user``). An erased
user's later clicks and outcomes are dropped and counted, even clicks that would have been
dead-lettered (invalid or late): the engine emits nothing of theirs (the metadata and outcome
decoders, which run before any user's state, still dead-letter an invalid record of theirs).
"""

from __future__ import annotations

import gc
import importlib
import json
import logging
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pyflink.common import Row
from pyflink.datastream import KeyedBroadcastProcessFunction, RuntimeContext, TimeDomain

from schemas.codec import Codec
from udfs import engine, intake, tracing
from udfs.attribution.stats import fact_to_doc
from udfs.campaigns import arbitration
from udfs.catalog.registries import Registries
from udfs.clock import (
    CLICK_RANK,
    METADATA_RANK,
    OUTCOME_RANK,
    Pending,
    PendingItems,
    QuietTimers,
    encode_clock,
)
from udfs.definitions.diagnostics import format_errors
from udfs.definitions.versioning import ChangeOutcome
from udfs.features.codec import decode_state, encode_state
from udfs.features.state import UserFeatures
from udfs.flink.decode import dead_letter_row, maybe_bytes
from udfs.flink.descriptors import (
    BATCH,
    ERASED_CLICK,
    ERASED_KINDS,
    campaign_state,
    definitions_state,
    erased_state,
    expiry_timer_state,
    membership_state,
    read_batch,
    user_clock_state,
    user_features_state,
    user_metadata_state,
)
from udfs.flink.membership_writes import MEMBERSHIP_WRITE, changes_payload, erasure_payload
from udfs.flink.metrics import (
    LATENCY_BUCKETS_MS,
    SIZE_BUCKETS_BYTES,
    BufferedCounter,
    Histogram,
    JourneyCounters,
    LabelledCounters,
    LabelledHistograms,
    LabelledLastValues,
    MeasuredScorer,
)
from udfs.flink.scoring import load_scorer
from udfs.lru import LruCache

# imported with the module, not when a job first asks for spans: in thread mode the interpreter
# outlives a job and keeps its modules, so a later job of the same build would import a
# submodule not yet loaded from the first job's deleted directory (ModuleNotFoundError:
# udfs.spans); ~80 ms once per TaskManager for the OpenTelemetry SDK
from udfs.spans import ClickSpans

#: the live segment sizes (audience factor) are re-read from the store at most this often
AUDIENCE_REFRESH_S = 10.0

#: a traced click of a step: its context, the engine's span for it, its Kafka append time, and
#: the traceparent header of what it caused (formatted once per click, not per output)
_Traced = tuple[tracing.TraceContext, tracing.TraceContext, int, str]


def _engine_traces(step: engine.Step) -> dict[str, _Traced]:
    """The step's applied clicks with a trace context, by event id (``udfs.tracing``)."""
    traced: dict[str, _Traced] = {}
    for event_id, (traceparent, ingest) in step.click_traces.items():
        click = tracing.parse(traceparent)
        if click is not None:
            engine_span = tracing.engine_context(click, event_id)
            traced[event_id] = (click, engine_span, ingest, engine_span.traceparent())
    return traced


def _traceparent(traces: dict[str, _Traced], cause_event_id: str | None) -> str | None:
    """The ``traceparent`` header of a record caused by ``cause_event_id``, if it is traced."""
    traced = traces.get(cause_event_id) if cause_event_id else None
    return traced[3] if traced is not None else None


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
    store what it changed, register its timers, then emit its membership changes (one
    ``MembershipWrite`` row for ``udfs.flink.membership_writes``), TriggerEvents and
    TriggerDecisions as ``ENGINE_OUTPUT_ROW`` rows (routed downstream, in Java). Events later
    than the watermark minus the allowed lateness go to the dead-letter side output
    (LATE_EVENT).
    """

    def __init__(self, cfg: Any, initial_definitions: list[dict[str, Any]],
                 model_files: tuple[bytes, bytes, str, str] | None,
                 store_factory: Any, build_id: str | None = None) -> None:
        self.cfg = cfg
        # the build the client submitted (udfs.build): open() checks the TaskManager runs it
        self.build_id = build_id
        # the definitions of the segment files, in force from the first event on (a broadcast
        # stream would race with the first events)
        self.initial_definitions = initial_definitions
        # the churn model's files travel with the function (see jobs.job.churn_model_files)
        self.model_files = model_files
        # creates the membership store in open() (a client is never pickled)
        self.store_factory = store_factory

    def open(self, runtime_context: RuntimeContext) -> None:
        """State handles, codec, the store writer and metrics, created once per instance.

        Raises:
            udfs.build.BuildMismatch: the TaskManager holds another build's modules.
        """
        from udfs import build, native

        build.check_build(self.build_id)
        logging.getLogger(__name__).info("engine modules: %s", native.status())
        # each churn score crosses to the scoring thread and back: with Python's 5 ms switch
        # interval each crossing could wait that long for the GIL behind another thread
        sys.setswitchinterval(self.cfg.gil_switch_interval_us / 1_000_000)
        # the decoded state of many users stays alive, and each full collection walks it all
        gc.set_threshold(*self.cfg.gc_threshold_counts())
        self.codec = Codec.load()
        self.features_state = runtime_context.get_state(user_features_state())
        self.metadata_state = runtime_context.get_state(user_metadata_state())
        self.membership = runtime_context.get_state(membership_state())
        self.expiry = runtime_context.get_state(expiry_timer_state())
        self.campaign_state = runtime_context.get_state(campaign_state())
        self.clock_state = runtime_context.get_state(user_clock_state())
        self.erased_marker = runtime_context.get_state(erased_state())
        metrics = runtime_context.get_metrics_group()
        self.triggers_by_tier = LabelledCounters(metrics, "tier", "triggers")
        self.triggers_by_campaign = LabelledCounters(metrics, "campaign", "triggers")
        self.conversions = LabelledCounters(metrics, "campaign", "conversions_attributed")
        self.suppressed = LabelledCounters(metrics, "reason", "triggers_suppressed")
        self.deferred = LabelledCounters(metrics, "reason", "triggers_deferred")
        self.trigger_duplicates = metrics.counter("triggers_duplicate")
        # ingestion (Kafka append time of the causing click) -> trigger emitted, ms, per tier:
        # a real histogram (Prometheus takes percentiles of it), not a last-value gauge
        self.trigger_latency = LabelledHistograms(metrics, "tier", "trigger_latency_ms",
                                                  LATENCY_BUCKETS_MS)
        self.audience_sizes: dict[str, int] = {}
        self.audience_read_at = 0.0
        self.limits = self.cfg.intake_limits()
        # intake: clicks in, valid, dead-lettered by reason (decoded here, not upstream)
        self.events_in = BufferedCounter(metrics.counter("events_in"))
        self.events_valid = BufferedCounter(metrics.counter("events_valid"))
        self.dead_lettered = LabelledCounters(metrics, "reason", "events_dead_lettered")
        self.events = BufferedCounter(metrics.counter("engine_events"))
        # clicks finished: applied, dropped as duplicates, or dead-lettered (invalid, late); a
        # click in between waits in its user's clock. Not buffered: the bench times drains on
        # it, and a count held back until the next click would move a drain's end
        self.clicks_done = metrics.counter("clicks_done")
        self.duplicates = metrics.counter("events_duplicate")
        self.late = metrics.counter("events_late")
        # inputs applied behind the user's clock (arrived after it passed their time)
        self.applied_late = metrics.counter("inputs_applied_late")
        # clicks whose price had a currency missing from the rate table (money not counted)
        self.unconverted = LabelledCounters(metrics, "currency", "money_unconverted")
        self.timers_fired = BufferedCounter(metrics.counter("timers_fired"))
        self.rechecks_skipped = BufferedCounter(metrics.counter("rechecks_skipped"))
        self.state_bytes = Histogram(metrics, "user_state_bytes", SIZE_BUCKETS_BYTES)
        self.store_retries = metrics.counter("store_retries")
        self.redis_rebuilds = metrics.counter("redis_rebuilds")
        # inputs applied by processing time because the stream went quiet (quiet_release_ms)
        self.quiet_releases = metrics.counter("quiet_releases")
        self.quiet_timers = QuietTimers(self.cfg.quiet_release_ms)
        # the users' decoded state between their steps (udfs.lru: the least recently stepped
        # users evicted first)
        self.pending_items = PendingItems(self.cfg.decoded_state_users)
        self.bad_definitions = metrics.counter("definitions_rejected")
        self.outcomes_in = metrics.counter("outcomes_in")
        # erasures applied (user-metadata tombstones; a repeated one counts again), and inputs
        # of erased users dropped (arrived after the erasure, or pending when it came)
        self.users_erased = metrics.counter("users_erased")
        self.erased_dropped = metrics.counter("inputs_dropped_erased")
        # backfill requests by what they did (udfs.engine.BACKFILL_OUTCOMES): progress of a
        # `defs publish --backfill`
        self.backfills = LabelledCounters(metrics, "outcome", "backfill_requests")
        self.journey_moves = JourneyCounters(metrics)
        # live segment sizes (the store's, read for the audience factor): the dashboard's sizes
        self.segment_sizes = LabelledLastValues(metrics, "segment", "segment_size")
        # a span per sampled click applied, when an OTLP endpoint is set (udfs/spans.py)
        self.spans: Any = None
        if self.cfg.tracing_otlp_endpoint:
            self.spans = ClickSpans(self.cfg.tracing_otlp_endpoint, self.cfg.job_name)
        self.registries: Registries | None = None
        self.last_backfill: str | None = None  # what the last step's backfill did
        self.last_backfill_lacking: tuple[str, ...] = ()
        # the file definitions compiled here, at open, and completed with the broadcast state
        # at the first step (_load_registries): compiling reads data files lazily (the event
        # vocabulary, from the schemas package), and must do so while this job's files exist.
        # In thread mode the interpreter outlives the job and keeps its modules; a job
        # cancelled before its first record left the next job of the build reading them from
        # its deleted directory (FileNotFoundError in udfs.definitions.vocabulary)
        self.file_registries: Registries | None = Registries.from_updates(
            self.initial_definitions)
        self.rules: engine.Rules | None = None  # see _rules
        self.scorer = None
        # imported even with scoring off: a TaskManager keeps its interpreter, and the first
        # job's files, for its life; a later job of the same build with scoring on would import
        # udfs.churn from that first job's directory, deleted when it ended, and restart for
        # ever with ModuleNotFoundError (seen after a churn-off job on a fresh TaskManager)
        import_in_python_thread("udfs.churn")
        if self.model_files is not None:
            from udfs.churn import ChurnModel

            onnx, meta, onnx_name, meta_name = self.model_files
            # one model per operator instance, loaded on a Python thread (a JVM task thread can
            # deadlock onnxruntime); a tree ensemble then scores here, in numpy, anything else
            # on that thread with a watchdog (udfs/flink/scoring.py)
            self.scoring = load_scorer(lambda: ChurnModel.from_bytes(
                onnx, meta, Path(onnx_name), Path(meta_name)))
            self.scorer = MeasuredScorer(self.scoring, metrics)
        # user id -> (encoded state, the UserFeatures it encodes); see _decode_features
        self.features_cache: LruCache[UserFeatures] = LruCache(self.cfg.decoded_state_users)
        # user id -> (encoded metadata, its dict)
        self.metadata_cache: LruCache[dict[str, Any]] = LruCache(self.cfg.decoded_state_users)
        # the store's client for the definitions' history and the live segment sizes (the
        # membership writes are udfs.flink.membership_writes's)
        self.writer = self.store_factory(on_retry=self.store_retries.inc,
                                         on_rebuild=lambda _report: self.redis_rebuilds.inc())
        # user id -> (encoded campaign state, the CampaignState it encodes); see _load_campaigns
        self.campaigns_cache: LruCache[arbitration.CampaignState] = LruCache(
            self.cfg.decoded_state_users)
        # per step: the membership as read (when the step read it), whether the campaign
        # state was stored, and its bytes when the step read it (see _load_state)
        self.rest_loaded = False
        self.loaded_membership: dict[str, int] = {}
        self.campaigns_stored = False
        self.campaigns_read: bytes | None = None

    def close(self) -> None:
        """Close the store connections, the scoring thread and the span exporter."""
        spans = getattr(self, "spans", None)
        if spans is not None:
            spans.close()
        scoring = getattr(self, "scoring", None)
        if scoring is not None and hasattr(scoring, "close"):  # a thread, not the model
            scoring.close()
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
                int(time.time() * 1000), self.cfg.dead_letter_raw_max_bytes,
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
        # compiled at open; used once (applied to in place from here on)
        registries, self.file_registries = self.file_registries, None
        assert registries is not None, "open() compiles the file definitions"
        for _, payload in state.items():
            registries.apply(self.codec.decode(bytes(payload), expect="DefinitionUpdate"))
        self.registries = registries
        for update in registries.updates():
            self.writer.record_definition(update["definition_id"],
                                          f"v{update['version']} {update['action']}")
        return registries

    # -- users --------------------------------------------------------------------------------

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """Buffer an input (click, metadata, outcome) in the user's clock; apply what is due.

        A click is decoded and validated here first (a bad one is dead-lettered with its
        reasons: ``udfs.intake``); one later than the watermark minus the allowed lateness is
        dead-lettered too. A ``batch`` row (``input_order: java``) hands on a user's inputs
        that waited for the watermark: they are validated the same way and applied in one
        step (``engine.Released``).
        """
        kind, user_id = value[0], value[1]
        watermark = ctx.timer_service().current_watermark()
        if kind == BATCH:
            yield from self._released(user_id, value, watermark, ctx)
            return
        if kind == "backfill":
            # applied at once, at the watermark (udfs.engine.Backfill)
            yield from self._backfill(user_id, value, watermark, ctx)
            return
        if kind == "erase":
            # a tombstone: applied at once, whatever the watermark (udfs.engine.Erasure)
            state = self._load_state(user_id)
            yield from self._step(user_id, state, engine.Erasure(user_id, value[2]), ctx)
            return
        if kind in ERASED_KINDS:
            # an input that waited in the Java operator when the user's erasure passed it: it
            # follows the erasure and is dropped, as the inputs waiting in the clock are
            self.erased_dropped.inc()
            if kind == ERASED_CLICK:
                self.events_in.inc()
                self.clicks_done.inc()
            return
        letters: list[Row] = []
        pending = self._pending(value, watermark, ctx, letters)
        yield from letters
        if pending is None:
            return
        state = self._load_state(user_id)
        yield from self._step(user_id, state, engine.Arrival(user_id, pending, watermark), ctx)
        if self.cfg.quiet_release_ms > 0 and state.clock.pending:
            # a quiet stream moves no watermark: release the input after a while regardless
            # (by the user's quiet timer already on the way, if one is)
            timers = ctx.timer_service()
            due = self.quiet_timers.register(user_id, timers.current_processing_time())
            if due is not None:
                timers.register_processing_time_timer(due)

    def _released(self, user_id: str, value: Row, watermark: int, ctx: Any) -> Iterator[Any]:
        """A user's inputs that waited for the watermark in the Java operator: one step.

        Each is validated as ``process_element`` validates a single input (a bad click is
        dead-lettered; none is late: the watermark has only now passed it). For an erased user
        the step drops what comes before a metadata record among them, which re-registers the
        user (``engine.step``).
        """
        rows = read_batch(user_id, bytes(value[4]))
        letters: list[Row] = []
        pendings = [p for row in rows
                    if (p := self._pending(row, watermark, ctx, letters)) is not None]
        yield from letters
        if not pendings:
            return
        state = self._load_state(user_id)
        yield from self._step(user_id, state, engine.Released(
            user_id, tuple(pendings), max(value[2], pendings[-1].time_ms), watermark), ctx)

    def _pending(self, value: Row, watermark: int, ctx: Any, letters: list[Row]
                 ) -> Pending | None:
        """A click, metadata or outcome row as the input the engine buffers; None if rejected.

        A click is decoded and validated (a bad or too late one is dead-lettered into
        ``letters``, or dropped and counted when the user is erased).
        """
        kind, user_id, ingest_time = value[0], value[1], value[3]
        raw = bytes(value[4] or b"")
        if kind == "click":
            self.events_in.inc()
            record = intake.SourceRecord(self.cfg.clicks_topic, value[5], value[6], ingest_time,
                                         maybe_bytes(value[7]), raw)
            event = intake.decode_click(self.codec, record, limits=self.limits)
            if not isinstance(event, intake.Rejected) and event["user_id"] != user_id:
                # keyed in Java from the same bytes: never differs for a valid record
                event = intake.Rejected("INVALID_FIELD", f"user id {event['user_id']!r} is "
                                        f"not the key {user_id!r} it was routed by", "decode")
            if isinstance(event, intake.Rejected):
                self.clicks_done.inc()
                if self._erased_now():
                    self.erased_dropped.inc()  # not even dead-lettered: nothing of theirs out
                    return None
                self.dead_lettered.inc(event.reason_code)
                letters.append(dead_letter_row(
                    self.codec, self.cfg.dead_letter_topic, record, event,
                    ctx.timer_service().current_processing_time(),
                    self.limits.dead_letter_raw_max_bytes))
                return None
            self.events_valid.inc()
            event_time = event["event_time"]
            if engine.is_late(event_time, watermark, self.cfg.allowed_lateness_ms):
                self.clicks_done.inc()
                if self._erased_now():
                    self.erased_dropped.inc()
                    return None
                self.late.inc()
                letters.append(self._late(record, event, watermark, ctx))
                return None
            self.events.inc()
            event["ingest_time"] = ingest_time
            event_id = str(event["event_id"])
            # its producer's trace, or one made here; it waits with the click in the clock
            context = tracing.at_ingestion(value[8] if len(value) > 8 else None, event_id,
                                           self.cfg.tracing_sample_ratio)
            return Pending(event_time, CLICK_RANK, event_id, raw, ingest_time or 0,
                           engine.Click(event), trace=context.traceparent())
        if kind == "outcome":
            # validated upstream; decoded here for its id (the clock's dedup key): outcomes are
            # few next to clicks
            outcome = self.codec.decode(raw, expect="CampaignOutcome")
            self.outcomes_in.inc()
            return Pending(value[2], OUTCOME_RANK, engine.outcome_key(outcome), raw, 0,
                           engine.Engagement(outcome))
        # metadata takes effect at its updated_at (the row's event time)
        event_time = value[2]
        return Pending(event_time, METADATA_RANK, f"metadata@{event_time}", raw, 0)

    def _backfill(self, user_id: str, value: Row, watermark: int, ctx: Any) -> Iterator[Any]:
        """Step a backfill request and count what it did.

        A request made for definitions this instance does not apply yet is dead-lettered (safe
        to re-run: it is evaluated then).
        """
        raw = bytes(value[4] or b"")
        request = self.codec.decode(raw, expect="BackfillRequest")  # validated upstream
        item = engine.Backfill(user_id, request["backfill_id"], request["definitions"],
                               watermark)
        state = self._load_state(user_id)
        step_out: list[Any] = list(self._step(user_id, state, item, ctx))
        outcome = self.last_backfill or engine.BACKFILL_UNKNOWN
        self.backfills.inc(outcome)
        if outcome == engine.BACKFILL_STALE:
            record = intake.SourceRecord(self.cfg.backfill_topic, value[5], value[6], value[2],
                                         user_id.encode(), raw)
            rejected = intake.Rejected(
                "OTHER", f"backfill request {request['backfill_id']!r} for user {user_id!r} "
                f"reached the engine before these definitions were in force: "
                f"{', '.join(self.last_backfill_lacking)}; run the backfill again once the job "
                "applies them (`nudgeflow defs list`): users already evaluated are skipped",
                "engine", (intake.Problem("definitions", "DEFINITIONS_NOT_IN_FORCE",
                                          "definitions not in force yet",
                                          ", ".join(self.last_backfill_lacking)),))
            step_out.append(dead_letter_row(
                self.codec, self.cfg.dead_letter_topic, record, rejected,
                ctx.timer_service().current_processing_time(),
                self.limits.dead_letter_raw_max_bytes))
        yield from step_out

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        """The watermark passed the user's wake time: apply and check everything up to it.

        A processing-time timer (``quiet_release_ms`` after an input arrived) applies what is
        still pending although the watermark did not pass it: the stream went quiet.
        """
        user_id = ctx.get_current_key()
        if ctx.time_domain() == TimeDomain.PROCESSING_TIME:
            self.quiet_timers.fired(user_id, timestamp)
            state = self._load_state(user_id)
            if not state.clock.pending:
                return
            self.quiet_releases.inc()
            release = max(p.time_ms for p in state.clock.pending)
            yield from self._step(user_id, state, engine.Timer(user_id, release), ctx)
            return
        self.timers_fired.inc()
        watermark = max(timestamp, ctx.timer_service().current_watermark())
        state = self._load_state(user_id)
        yield from self._step(user_id, state, engine.Timer(user_id, watermark), ctx)

    def _step(self, user_id: str, state: engine.UserState, item: engine.Input, ctx: Any
              ) -> Iterator[Any]:
        """Call the engine, store what it changed, move the user's timer and emit its records."""
        if self.registries is None:  # once per start: the state handle is a JVM call
            self._load_registries(ctx.get_broadcast_state(definitions_state()))
        emit_time = int(time.time() * 1000)
        step = engine.step(state, item, self._rules(), emit_time)
        self.last_backfill, self.last_backfill_lacking = step.backfill, step.backfill_lacking
        if step.duplicate:
            self.duplicates.inc()
            if isinstance(item, engine.Arrival) and item.pending.rank == CLICK_RANK:
                self.clicks_done.inc()
            return
        if step.erased_dropped:
            self.erased_dropped.inc(step.erased_dropped)
            self.clicks_done.inc(step.erased_clicks_dropped)  # they are done with: dropped
        if step.duplicates or step.other_duplicates:
            self.duplicates.inc(step.duplicates + step.other_duplicates)
        if step.clicks_applied or step.duplicates:  # a duplicate found on applying is a click
            self.clicks_done.inc(len(step.clicks_applied) + step.duplicates)
        if step.late:
            self.applied_late.inc(step.late)
        for currency in step.unconverted:
            self.unconverted.inc(currency)
        if step.rechecks_skipped:
            self.rechecks_skipped.inc(step.rechecks_skipped)
        stored_clock = None
        if step.erasure:
            self._forget(user_id, ctx)
        else:
            if step.reregistered:
                self.erased_marker.clear()
            if step.expired:
                # idle beyond the TTL: everything goes; what the step kept (inputs after the
                # expiry) is stored again below
                self._clear_state()
                self.loaded_membership = {}
                self.campaigns_stored = False
                self.campaigns_read = None
            stored_clock = self._store_state(user_id, state, step)
        # the clock as stored, and the decoded inputs still waiting: not decoded again at the
        # user's next step (when the state still holds these bytes)
        self.pending_items.remember(user_id, state.clock, stored_clock)
        timers = ctx.timer_service()
        if step.cancel_timer_ms is not None:
            timers.delete_event_time_timer(step.cancel_timer_ms)
        for due in step.timers:
            timers.register_event_time_timer(due)
        # read only for records a click caused, and for its span: most steps emit nothing
        traces = _engine_traces(step) if step.click_traces and (
            step.changes or step.triggers or step.decisions or self.spans is not None) else {}
        yield from self._segment_changes(step, emit_time, traces)
        if step.erasure:
            # after the EXITs (they write history rows too): whatever is left of the user goes
            yield from self._erasure_write(user_id, step)
        yield from self._triggers(user_id, step, emit_time, traces)
        if self.spans is not None and traces:
            self._export_spans(step, traces, emit_time)

    def _export_spans(self, step: engine.Step, traces: dict[str, _Traced], started: int
                      ) -> None:
        """A span per sampled click of the step, with what it caused as its events."""
        done = int(time.time() * 1000)
        for event_id, (click, engine_span, ingest, _) in traces.items():
            if not click.sampled:
                continue
            outputs = [("SegmentChange", {"segment": c["segment_id"], "change": c["change"]})
                       for c in step.changes if c.get("cause_event_id") == event_id]
            outputs += [("TriggerEvent", {"campaign": t["campaign_id"], "tier": t["tier"],
                                          "channel": t["channel"]})
                        for t in step.triggers if t.get("cause_event_id") == event_id]
            self.spans.click_applied(click, engine_span, event_id, ingest, started, done,
                                     outputs)

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
        """The user's clock now; features, metadata and membership when the step needs them."""
        self.rest_loaded = False
        self.loaded_membership = {}
        self.campaigns_stored = False
        self.campaigns_read = None

        def load(state: engine.UserState) -> None:
            self.rest_loaded = True
            self.loaded_membership = dict(self.membership.value() or {})
            raw_features = self.features_state.value()
            raw_metadata = self.metadata_state.value()
            state.features = self._decode_features(user_id, raw_features) \
                if raw_features else None
            state.metadata = self._decode_metadata(user_id, raw_metadata) \
                if raw_metadata else None
            state.membership = dict(self.loaded_membership)

        raw_clock = self.clock_state.value()
        # an erased user never has a clock: the marker is read only for users without one
        # (new, expired or erased), not at every input
        erased = not raw_clock and bool(self.erased_marker.value())
        clock = self.pending_items.take(user_id, raw_clock)
        return engine.UserState(clock=clock, load=load,
                                load_campaigns=lambda: self._load_campaigns(user_id),
                                erased=erased)

    def _erased_now(self) -> bool:
        """Whether the current user is erased (for inputs dropped before a step)."""
        return not self.clock_state.value() and bool(self.erased_marker.value())

    def _decode_features(self, user_id: str, raw: bytes) -> UserFeatures:
        """Decode a user's features, reusing the object decoded last time if the bytes match.

        Decoding costs ~20-26 µs (a 2.6 KB state); the state bytes are the truth (checkpoints
        hold them), the cache only skips decoding what this instance itself encoded last.
        """
        cached = self.features_cache.get(user_id, raw)
        return cached if cached is not None else decode_state(bytes(raw))

    def _decode_metadata(self, user_id: str, raw: bytes) -> dict[str, Any]:
        """Decode a user's metadata, reusing the dict decoded last time if the bytes match.

        Metadata changes rarely and is read at every applied event (~5 µs to decode); the engine
        only reads the dict, so the one decoded from the same bytes can serve again.
        """
        cached = self.metadata_cache.get(user_id, raw)
        if cached is not None:
            return cached
        metadata = self.codec.decode(bytes(raw), expect="UserMetadata")
        self.metadata_cache.put(user_id, raw, metadata)
        return metadata

    def _load_campaigns(self, user_id: str) -> arbitration.CampaignState:
        """The current user's campaign state (read only when a step needs it).

        Most steps that score read it (a churn crossing is judged against its kept score)
        and change nothing; decoding its JSON cost ~12 µs. The object kept with the bytes it
        was read or written as is taken back when the state still holds those bytes; taken,
        not shared, as the step may change it (``_store_state`` keeps it again).
        """
        raw = self.campaign_state.value()
        self.campaigns_stored = bool(raw)
        if not raw:
            self.campaigns_cache.pop(user_id)
            return arbitration.CampaignState()
        self.campaigns_read = raw
        kept = self.campaigns_cache.take(user_id, raw)
        return kept if kept is not None else arbitration.decode_state(bytes(raw))

    def _store_state(self, user_id: str, state: engine.UserState, step: engine.Step
                     ) -> bytes | None:
        """Write back what the step changed; the clock's bytes if it stored the clock."""
        # only what changed is written back: each state write is a conversion across the JVM
        if step.features_changed and state.features is not None:
            encoded = encode_state(state.features)
            self.features_state.update(encoded)
            self.features_cache.put(user_id, encoded, state.features)
            self.state_bytes.observe(len(encoded))
        if step.metadata_changed and state.metadata is not None:
            self.metadata_state.update(self.codec.encode("UserMetadata", state.metadata))
        if (self.rest_loaded or step.expired) and state.membership != self.loaded_membership:
            self.membership.update(state.membership)
        cstate = state.campaigns
        if step.campaigns_changed and cstate is not None:
            # most steps change nothing: no encoding, no state write
            if not cstate.is_empty():
                encoded = arbitration.encode_state(cstate)
                self.campaign_state.update(encoded)
                self.campaigns_cache.put(user_id, encoded, cstate)
            elif self.campaigns_stored:
                self.campaign_state.clear()
        elif cstate is not None and self.campaigns_read is not None \
                and not step.campaigns_touched:
            # only read (a churn crossing judged against its kept score): the object is still
            # what the state's bytes say. Decided on but not stored (a prune, say), it may
            # not be: the next step decodes the bytes
            self.campaigns_cache.put(user_id, self.campaigns_read, cstate)
        if step.clock_changed:
            if step.expired and state.features is None and state.metadata is None \
                    and not state.clock.pending:
                self.clock_state.clear()  # nothing left of the user
            else:
                encoded = encode_clock(state.clock)
                self.clock_state.update(encoded)
                return encoded
        return None

    def _clear_state(self) -> None:
        self.features_state.clear()
        self.metadata_state.clear()
        self.membership.clear()
        self.expiry.clear()
        self.campaign_state.clear()
        self.clock_state.clear()

    def _forget(self, user_id: str, ctx: Any) -> None:
        """An erasure's keyed state: everything cleared but the erased marker.

        The step's ``cancel_timer_ms`` deletes the user's one timer; the expiry timer of a build
        before the user clock, if the user still has one, is deleted here. A processing-time
        timer (``quiet_release_ms``) cannot be found to delete: it finds nothing pending.
        """
        legacy_expiry = self.expiry.value()
        if legacy_expiry is not None:
            ctx.timer_service().delete_event_time_timer(legacy_expiry)
        self._clear_state()
        self.erased_marker.update(True)
        # the decoded copies of the user's state in memory go too
        self.features_cache.pop(user_id)
        self.metadata_cache.pop(user_id)
        self.campaigns_cache.pop(user_id)
        self.loaded_membership = {}
        self.campaigns_stored = False
        self.campaigns_read = None

    def _erasure_write(self, user_id: str, step: engine.Step) -> Iterator[Row]:
        """Ask the membership writer to delete the user from Cassandra and Redis.

        ``udfs.flink.membership_writes`` deletes them after the step's EXITs (the same channel,
        in order) and dead-letters what a store refused for good: the erasure is a legal
        obligation, and a refusal must reach someone.
        """
        self.users_erased.inc()
        yield Row(MEMBERSHIP_WRITE, None, user_id.encode(),
                  erasure_payload(user_id, list(step.erased_segments)), None)

    def _segment_changes(self, step: engine.Step, emit_time: int,
                         traces: dict[str, _Traced]) -> Iterator[Row]:
        """The step's changes, together, to the membership writer (``membership_writes``).

        It writes them to the stores and then emits them as SegmentChanges; emitted_at is the
        processing time of this step (the contract: emitted_at - event_time is the segment
        latency).
        """
        if not step.changes:
            return
        traceparents = [_traceparent(traces, change["cause_event_id"]) for change in step.changes]
        yield Row(MEMBERSHIP_WRITE, None, step.changes[0]["user_id"].encode(),
                  changes_payload(step.changes, emit_time, traceparents), None)

    def _triggers(self, user_id: str, step: engine.Step, emit_time: int,
                  traces: dict[str, _Traced]) -> Iterator[Any]:
        self.trigger_latency.tick()
        for _ in range(step.trigger_duplicates):
            self.trigger_duplicates.inc()
        for journey_id, node_id, what in step.journey_moves:
            self.journey_moves.inc(journey_id, node_id, what)
        key = user_id.encode()
        for trigger in step.triggers:
            self.triggers_by_tier.inc(trigger["tier"])
            self.triggers_by_campaign.inc(trigger["campaign_id"])
            if trigger["cause_event_id"] in step.clicks_applied:
                self.trigger_latency.observe(trigger["tier"],
                                             max(0, emit_time - trigger["ingest_time"]))
            yield Row("TriggerEvent", trigger["tier"], key,
                      self.codec.encode("TriggerEvent", trigger),
                      _traceparent(traces, trigger["cause_event_id"]))
        for decision in step.decisions:
            counters = self.suppressed if decision["outcome"] == "SUPPRESSED" else self.deferred
            counters.inc(decision["reason_code"])
            yield Row("TriggerDecision", None, key,
                      self.codec.encode("TriggerDecision", decision),
                      _traceparent(traces, decision.get("cause_event_id")))
        for conversion in step.converted:
            self.conversions.inc(conversion["campaign_id"])
            yield Row("CampaignOutcome", None, key,
                      self.codec.encode("CampaignOutcome", conversion), None)
        for fact in step.lift:  # to the per-campaign statistics, keyed by unit
            yield Row("LiftFact", None, fact.unit.encode(),
                      json.dumps(fact_to_doc(fact), separators=(",", ":")).encode(), None)

    def _audience_sizes(self) -> dict[str, int]:
        """Live segment sizes from the store, re-read at most every AUDIENCE_REFRESH_S."""
        now = time.monotonic()
        if now - self.audience_read_at >= AUDIENCE_REFRESH_S:
            reader = getattr(self.writer, "segment_sizes", None)
            self.audience_sizes = reader() if reader is not None else {}
            self.audience_read_at = now
            for segment_id, size in self.audience_sizes.items():
                self.segment_sizes.set(segment_id, size)
        return self.audience_sizes

    def _late(self, record: intake.SourceRecord, event: dict[str, Any], watermark: int,
              ctx: Any) -> tuple[Any, Row]:
        """The dead letter of a click later than the allowed lateness (the producer's bytes)."""
        reason = (
            f"event {event['event_id']!r} of user {event['user_id']!r} has event_time "
            f"{event['event_time']}, {watermark - event['event_time']} ms behind the watermark "
            f"{watermark}; the allowed lateness is {self.cfg.allowed_lateness_ms} ms"
        )
        return dead_letter_row(
            self.codec, self.cfg.dead_letter_topic, record,
            intake.Rejected("LATE_EVENT", reason, "watermark"),
            ctx.timer_service().current_processing_time(), self.cfg.dead_letter_raw_max_bytes,
        )
