"""The membership store's writes as an operator of their own, off the engine's thread.

``MembershipWriteFunction`` runs after the per-user engine, in a task (a thread) of its own on
a forward edge. The engine emits one ``MembershipWrite`` row per step that changed membership
(the step's SegmentChanges together) and one per erasure; this operator writes them to the
membership store (``udfs.stores.membership``: Cassandra, then Redis; blocking, retried) and
only then emits the SegmentChanges, as ``ENGINE_OUTPUT_ROW`` rows for the Kafka routing. A
change a store refuses for good goes to the dead-letter side output (STORE_REJECTED) instead,
as does what an erasure could not delete.

Why a separate task: a step's writes wait for two stores (a millisecond or more on a loaded
machine, most of it waiting), and on the engine's thread that wait stopped the engine. Here
the engine goes on with the next users while the writes of the last ones are in flight.

Why batches: the rows reach this operator gathered by ``io.nudgeflow.flink.BatchJsonRows`` (a
Java operator on the engine's thread: up to ``membership_batch_rows`` rows or
``membership_batch_ms``), one call per batch. Every call, and every wake-up of the store
clients, takes the one interpreter lock from the engine's thread; one per batch instead of
one per step drained a backlog ~17% faster, ~24% with Cassandra batches of three changes
(docs/performance.md, "2026-12-03, night"). The store's clients themselves run in a child
process by default (``udfs.stores.client_process``): this thread only hands each batch over a
pipe and waits for the answer.

What still holds:

- **durable before checkpointed**: the batcher emits what it holds before every checkpoint
  barrier, so a barrier reaches this operator after every row the engine emitted before it,
  and this operator handles each batch to the end (written, acknowledged) before the next; so
  a completed checkpoint covers no change that is not in both stores, as before. After a
  failure the engine's rows since the last checkpoint are produced again and written again
  (every write is idempotent);
- **per-user order**: a user's rows come from one engine subtask over one forward channel, in
  the order the engine emitted them, and a batch keeps that order: the changes of a batch are
  written in rounds (``udfs.stores.membership.write_rounds``) so that a user's EXIT is never
  written before the ENTER before it, and an erasure runs after the steps before it;
- **an outage stalls, it loses nothing**: while a store is down this operator retries, and
  once the channel's buffers are full the engine behind it waits too (backpressure), as it
  did when it wrote itself.

The rows' value is JSON (internal to the job, never on a topic): ``{"at": emit_time,
"changes": [SegmentChange dicts without emitted_at], "traceparents": [..]}`` or ``{"erase":
user_id, "segments": [...]}``; a batch's value is the JSON array of its rows' values.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

from pyflink.common import Row
from pyflink.datastream import ProcessFunction, RuntimeContext

from schemas.codec import Codec
from udfs import intake
from udfs.flink.decode import dead_letter_row
from udfs.flink.metrics import LATENCY_BUCKETS_MS, Histogram, LabelledCounters
from udfs.stores.membership import write_rounds

#: the engine's row kind of a step's membership writes (routed here, never to a topic)
MEMBERSHIP_WRITE = "MembershipWrite"


def changes_payload(changes: list[dict[str, Any]], emit_time: int,
                    traceparents: list[str | None]) -> bytes:
    """The value of a ``MembershipWrite`` row of a step's changes (see the module)."""
    return json.dumps({"at": emit_time, "changes": changes, "traceparents": traceparents},
                      separators=(",", ":")).encode()


def erasure_payload(user_id: str, segment_ids: list[str]) -> bytes:
    """The value of a ``MembershipWrite`` row that deletes what is left of a user."""
    return json.dumps({"erase": user_id, "segments": sorted(segment_ids)},
                      separators=(",", ":")).encode()


class MembershipWriteFunction(ProcessFunction):
    """Write each ``MembershipWrite`` row to the membership store, then emit its SegmentChanges.

    Input: the engine's ``MembershipWrite`` rows as routed (Row(topic, key, value,
    traceparent)); output: ``ENGINE_OUTPUT_ROW`` SegmentChange rows, and DeadLetters on the
    ``DEAD_LETTER_TAG`` side output.
    """

    def __init__(self, cfg: Any, store_factory: Any) -> None:
        self.cfg = cfg
        # creates the membership store in open() (a client is never pickled)
        self.store_factory = store_factory

    def open(self, runtime_context: RuntimeContext) -> None:
        """The codec, the metrics and the store's writer (blocks until Cassandra answers)."""
        self.codec = Codec.load()
        metrics = runtime_context.get_metrics_group()
        self.changes = LabelledCounters(metrics, "segment", "segment_changes")
        self.enters = metrics.counter("segment_enters")
        self.exits = metrics.counter("segment_exits")
        self.store_retries = metrics.counter("store_retries")
        self.store_rejected = LabelledCounters(metrics, "store", "store_rejected")
        self.redis_rebuilds = metrics.counter("redis_rebuilds")
        self.batches = metrics.counter("membership_write_batches")
        # how far the stores are behind the engine: a step's processing time to both stores
        # having its changes (the batcher's wait, the queue before this task, the writes)
        self.write_lag = Histogram(metrics, "membership_write_lag_ms", LATENCY_BUCKETS_MS)
        self.writer = self.store_factory(on_retry=self.store_retries.inc,
                                         on_rebuild=lambda _report: self.redis_rebuilds.inc())

    def close(self) -> None:
        """Close the store connections."""
        lag = getattr(self, "write_lag", None)
        if lag is not None:
            lag.flush()
        writer = getattr(self, "writer", None)
        if writer is not None:
            writer.close()

    def process_element(self, value: Row, ctx: Any) -> Iterator[Any]:
        """Write one batch of the engine's write rows, in order; emit what the stores accepted.

        The value is the JSON array of the rows' documents (``io.nudgeflow.flink.BatchJsonRows``
        gathers them); one document alone, a row of a build before the batching that an
        unaligned checkpoint may hold in flight, is read as a batch of one. Consecutive steps'
        changes go to the stores together (one ``write_many`` call: one Redis pipeline, their
        Cassandra batches in flight at once), cut into rounds written one after the other only
        where a user's segment changes twice (``write_rounds``: its later change lands last); an
        erasure is written between the steps before it and the steps after it.
        """
        docs = json.loads(bytes(value[2]))
        self.batches.inc()
        steps: list[dict[str, Any]] = []
        for doc in docs if isinstance(docs, list) else [docs]:
            if "erase" in doc:
                yield from self._write_steps(steps)
                steps = []
                yield from self._erase(doc["erase"], doc["segments"])
            else:
                steps.append(doc)
        yield from self._write_steps(steps)

    def _erase(self, user_id: str, segment_ids: list[str]) -> Iterator[Any]:
        """Delete what the stores hold of an erased user; dead-letter what they refused."""
        for rejection in self.writer.erase_user(user_id, segment_ids) or []:
            yield self._rejected_letter(rejection, self.cfg.user_metadata_topic, user_id, None)

    def _write_steps(self, steps: list[dict[str, Any]]) -> Iterator[Any]:
        """Write the changes of consecutive steps together, then emit them (or dead letters)."""
        if not steps:
            return
        # durable before they are emitted (and so checkpointed). emitted_at is the processing
        # time of the engine's step (the contract: emitted_at - event_time is the segment
        # latency)
        emitted = [(change, step["at"], traceparent) for step in steps
                   for change, traceparent in zip(step["changes"], step["traceparents"],
                                                  strict=True)]
        changes = [change for change, _, _ in emitted]
        refused: dict[str, Any] = {}  # change id -> its StoreRejection
        # a user's segment changed twice in the batch: its changes go in separate rounds
        for changes_of_round in write_rounds(changes):
            for rejection in self.writer.write_many(changes_of_round) or []:
                refused[rejection.change["change_id"]] = rejection
        written_at = int(time.time() * 1000)
        for step in steps:
            self.write_lag.observe(max(0, written_at - step["at"]))
        for change, emit_time, traceparent in emitted:
            raw = self.codec.encode("SegmentChange", {**change, "emitted_at": emit_time})
            rejection = refused.get(change["change_id"])
            if rejection is not None:
                yield self._rejected_letter(rejection, self.cfg.segment_changes_topic,
                                            change["user_id"], raw)
                continue
            (self.enters if change["change"] == "ENTER" else self.exits).inc()
            self.changes.inc(f"{change['segment_id']}.{change['change']}")
            yield Row("SegmentChange", None, change["user_id"].encode(), raw, traceparent)

    def _rejected_letter(self, rejection: Any, topic: str, user_id: str,
                         raw: bytes | None) -> tuple[Any, Row]:
        """The dead letter of a write a store refused for good (counted by store).

        Bounded like every dead letter (``udfs.intake.dead_letter``): the SegmentChange bytes
        are kept up to ``dead_letter_raw_max_bytes``, the key (the user id) is cut.
        """
        self.store_rejected.inc(rejection.store)
        record = intake.SourceRecord(topic, None, None, None,
                                     user_id.encode("utf-8", "replace"), raw)
        return dead_letter_row(
            self.codec, self.cfg.dead_letter_topic, record,
            intake.Rejected("STORE_REJECTED", rejection.reason(), f"store:{rejection.store}"),
            int(time.time() * 1000), self.cfg.dead_letter_raw_max_bytes)
