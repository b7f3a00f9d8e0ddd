"""The per-campaign statistics operator: lift facts keyed by campaign (or journey) -> Redis.

A thin adapter around ``udfs.attribution.stats``: each fact the user engine emits (an
assignment, a conversion, revenue) is added to its unit's statistics in keyed state, and the
unit's whole document is written to Redis (``udfs.stores.campaign_stats``), where
``nudgeflow report campaigns`` reads it. The state is checkpointed with the job: after a
restore the facts since the checkpoint come again and are added to the checkpoint's state,
so every fact counts once; the Redis write is an overwrite with the state's totals.

**A unit's document is written at most once per ``WRITE_EVERY_MS``** of processing time, not
after every fact: a fact marks its unit pending and, if it was not, sets a processing-time
timer (per unit); the timer writes the unit's latest totals. Every write took the TaskManager's
interpreter lock from the engine's thread for a Redis round trip; a busy campaign now costs one
write a second. Nothing is lost in a failure: the timer is keyed state, checkpointed with the
totals it is to write, so a restored timer fires and writes them from the state (the pending
map in memory is only a cache of it), and the facts after the checkpoint come again. At the
end of the input (a bounded run) ``close()`` writes what is pending.

**Redis being down or refusing the write never stops the operator**: Redis only serves the
totals, the keyed state holds them. A failed write is logged once per outage (a warning while
Redis is unreachable, an error when it refuses the write, with what to check) and counted
(``campaign_stats_write_failures``); then no unit tries Redis again before a backoff has passed
(doubling from ``WRITE_EVERY_MS`` up to ``RETRY_MAX_MS``, for the operator as a whole: a Redis
that hangs costs one client timeout per backoff, not one per campaign), and every unit due
meanwhile stays pending with its timer moved to the end of the backoff. The first write that
succeeds is logged, and the units' timers bring Redis up to date. Facts keep being counted
meanwhile, and the ROI updates, which do not pass Redis, keep being emitted.

When an ROI update is due (the policy has ``roi_feedback``; ``udfs.attribution.roi``), it
emits the measured ROI as a DefinitionUpdate row for the control topic, which the engine reads
like any definition: the loop closes through Kafka, in the job's transaction.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from schemas.codec import Codec
from udfs.attribution.roi import roi_to_update
from udfs.attribution.stats import UnitStats, fact_from_doc, from_doc, to_doc
from udfs.flink.descriptors import campaign_stats_state
from udfs.stores.membership import classify

log = logging.getLogger(__name__)

StatsStoreFactory = Callable[[], Any]

#: a unit's statistics reach Redis at most this long (processing time) after a fact
WRITE_EVERY_MS = 1000
#: the longest wait before a failed write of a unit's statistics is tried again
RETRY_MAX_MS = 30_000


class CampaignStatsFunction(KeyedProcessFunction):
    """Keyed by campaign or journey id; input Row(topic, key = unit id, value = fact JSON).

    Emits Row(topic, key, value, traceparent None) DefinitionUpdates (kind CAMPAIGN_ROI) for
    ``definitions_topic``.
    """

    def __init__(self, store_factory: StatsStoreFactory, definitions_topic: str) -> None:
        # creates the Redis writer in open() (a client is never pickled)
        self.store_factory = store_factory
        self.definitions_topic = definitions_topic

    def open(self, runtime_context: RuntimeContext) -> None:
        """The state handle, the writer, the codec and the metrics."""
        self.stats = runtime_context.get_state(campaign_stats_state())
        self.store = self.store_factory()
        # unit id -> its totals not yet written (each has a timer set; see the module)
        self.pending: dict[str, UnitStats] = {}
        # failed writes in a row, and the processing time before which none is tried again
        self.failures = 0
        self.retry_at_ms = 0
        self.codec = Codec.load()
        group = runtime_context.get_metrics_group().add_group("nudgeflow")
        self.facts = group.counter("campaign_stats_facts")
        self.roi_updates = group.counter("roi_updates_published")
        self.write_failures = group.counter("campaign_stats_write_failures")

    def close(self) -> None:
        """Write the statistics still pending (the end of a bounded input), then disconnect."""
        store = getattr(self, "store", None)
        if store is None:
            return
        try:
            unwritten = []
            for unit, stats in self.pending.items():
                try:
                    store.write(stats)
                except Exception as exc:  # noqa: BLE001 - reported below, the state keeps them
                    unwritten.append(f"{unit} ({type(exc).__name__}: {exc})")
            self.pending.clear()
            if unwritten:
                # a failover or a stop with a savepoint restores their timers, which write them;
                # at the end of a bounded run nothing will
                log.error("campaign statistics not written to Redis at close: %s; the job's "
                          "state holds them (a restored job writes them at its timers), but "
                          "`nudgeflow report campaigns` shows older totals until then",
                          "; ".join(unwritten))
        finally:
            store.close()

    def process_element(self, value: Any, ctx: Any) -> Iterator[Any]:
        """Add one fact to its unit's statistics; publish them within ``WRITE_EVERY_MS``.

        Emits the unit's measured ROI when an update is due.
        """
        fact = fact_from_doc(json.loads(bytes(value[2])))
        raw = self.stats.value()
        stats = from_doc(json.loads(raw)) if raw else UnitStats(fact.unit)
        measured = stats.observe(fact)
        self.stats.update(json.dumps(to_doc(stats), separators=(",", ":")).encode())
        unit = ctx.get_current_key()
        if unit not in self.pending:
            timers = ctx.timer_service()
            timers.register_processing_time_timer(
                timers.current_processing_time() + WRITE_EVERY_MS)
        self.pending[unit] = stats
        self.facts.inc()
        if measured is None:
            return
        # published at the event time of the unit's newest fact: a replay writes the same bytes
        update = roi_to_update(measured, stats.last_at_ms or fact.at_ms)
        self.roi_updates.inc()
        yield Row(self.definitions_topic, measured.id.encode(),
                  self.codec.encode("DefinitionUpdate", update), None)

    def on_timer(self, timestamp: int, ctx: Any) -> Iterator[Any]:
        """Write the unit's totals to Redis (pending, or the state's after a restore).

        A generator that emits nothing, as the version CI ran (a plain None return was not
        checked end to end).
        """
        unit = ctx.get_current_key()
        stats = self.pending.pop(unit, None)
        if stats is None:
            raw = self.stats.value()
            if not raw:
                return
            stats = from_doc(json.loads(raw))
        timers = ctx.timer_service()
        now = timers.current_processing_time()
        if now < self.retry_at_ms:  # a write failed lately: wait for the backoff to pass
            self._keep(unit, stats, timers, self.retry_at_ms)
            return
        try:
            self.store.write(stats)
        except Exception as exc:  # noqa: BLE001 - never fails the task: see the module
            self._failed(unit, exc, now)
            self._keep(unit, stats, timers, self.retry_at_ms)
            return
        if self.failures:
            log.warning("campaign statistics written to Redis again after %d failed writes; "
                        "the other campaigns' totals follow at their timers", self.failures)
            self.failures = 0
        yield from ()

    def _keep(self, unit: str, stats: UnitStats, timers: Any, at_ms: int) -> None:
        """Keep a unit's totals pending, its timer at ``at_ms`` (no fact came since it fired)."""
        self.pending[unit] = stats
        timers.register_processing_time_timer(at_ms)

    def _failed(self, unit: str, exc: Exception, now_ms: int) -> None:
        """Count a failed write, set the backoff, and say so at the first of an outage."""
        self.failures += 1
        self.write_failures.inc()
        self.retry_at_ms = now_ms + min(WRITE_EVERY_MS << min(self.failures, 16), RETRY_MAX_MS)
        if self.failures > 1:
            return  # said at the first failure; the recovery is logged too
        error = f"{type(exc).__name__}: {exc}"
        if classify("redis", exc) == "transient":
            log.warning("campaign statistics not written to Redis (%s, campaign %s): kept in "
                        "the job's state and tried again every %d s at most; `nudgeflow report "
                        "campaigns` shows older totals until Redis is back", error, unit,
                        RETRY_MAX_MS // 1000)
        else:
            log.error("Redis refuses the campaign statistics (%s, campaign %s): check the Redis "
                      "address, credentials and permissions, and that nothing else uses the "
                      "statistics' hash; the totals are kept in the job's state and written "
                      "once Redis accepts them (tried again every %d s at most)", error, unit,
                      RETRY_MAX_MS // 1000)
