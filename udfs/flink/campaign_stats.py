"""The per-campaign statistics operator: lift facts keyed by campaign (or journey) -> Redis.

A thin adapter around ``udfs.attribution.stats``: each fact the user engine emits (an
assignment, a conversion, revenue) is added to its unit's statistics in keyed state, and the
unit's whole document is written to Redis (``udfs.stores.campaign_stats``), where
``nudgeflow report campaigns`` reads it. The state is checkpointed with the job: after a
restore the facts since the checkpoint come again and are added to the checkpoint's state,
so every fact counts once; the Redis write is an overwrite with the state's totals.

When an ROI update is due (the policy has ``roi_feedback``; ``udfs.attribution.roi``), it
emits the measured ROI as a DefinitionUpdate row for the control topic, which the engine reads
like any definition: the loop closes through Kafka, in the job's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import KeyedProcessFunction, RuntimeContext

from schemas.codec import Codec
from udfs.attribution.roi import roi_to_update
from udfs.attribution.stats import UnitStats, fact_from_doc, from_doc, to_doc
from udfs.flink.descriptors import campaign_stats_state

StatsStoreFactory = Callable[[], Any]


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
        self.codec = Codec.load()
        group = runtime_context.get_metrics_group().add_group("nudgeflow")
        self.facts = group.counter("campaign_stats_facts")
        self.roi_updates = group.counter("roi_updates_published")

    def close(self) -> None:
        """Release the writer's connections."""
        store = getattr(self, "store", None)
        if store is not None:
            store.close()

    def process_element(self, value: Any, ctx: Any) -> Iterator[Any]:
        """Add one fact to its unit's statistics and publish them (and the ROI, when due)."""
        fact = fact_from_doc(json.loads(bytes(value[2])))
        raw = self.stats.value()
        stats = from_doc(json.loads(raw)) if raw else UnitStats(fact.unit)
        measured = stats.observe(fact)
        self.stats.update(json.dumps(to_doc(stats), separators=(",", ":")).encode())
        self.store.write(stats)
        self.facts.inc()
        if measured is None:
            return
        # published at the event time of the unit's newest fact: a replay writes the same bytes
        update = roi_to_update(measured, stats.last_at_ms or fact.at_ms)
        self.roi_updates.inc()
        yield Row(self.definitions_topic, measured.id.encode(),
                  self.codec.encode("DefinitionUpdate", update), None)
