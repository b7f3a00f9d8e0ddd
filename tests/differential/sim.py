"""A pure stand-in for the Flink adapter around ``engine.step``: watermarks, one timer per user.

``Simulator`` plays records in a given arrival order the way ``UserEngineFunction`` sees them:
each record is an ``engine.Arrival`` with the watermark of the moment (the newest event time
minus the out-of-orderness bound, as ``for_bounded_out_of_orderness`` emits it), the watermark
fires due timers in time order before the next record, and the end of input fires the rest
(watermark at the maximum). Clicks, metadata and outcomes go through their Avro bytes, as in
the job. A backfill request is stepped at once, at the watermark. An erasure (a tombstone) is
stepped at once; as the adapter does, the user's clock and
timers are dropped and only the erased marker is kept.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import Codec
from udfs import engine
from udfs.clock import (
    CLICK_RANK,
    METADATA_RANK,
    OUTCOME_RANK,
    Pending,
    decode_clock,
    encode_clock,
)

END_OF_INPUT = 2**63 - 1


@dataclass
class Simulator:
    """Steps users as the Flink adapter does; collects every record the steps produced."""

    rules: engine.Rules
    bound_ms: int
    allowed_lateness_ms: int = 60_000
    encode: bool = True  # store the clock as bytes between steps, as keyed state does
    states: dict[str, engine.UserState] = field(default_factory=dict)
    clocks: dict[str, bytes] = field(default_factory=dict)
    timers: list[tuple[int, str]] = field(default_factory=list)
    registered: dict[str, set[int]] = field(default_factory=dict)
    changes: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    converted: list[dict[str, Any]] = field(default_factory=list)  # CONVERTED outcomes
    lift: list[Any] = field(default_factory=list)  # LiftFacts
    dead: list[str] = field(default_factory=list)
    erased_dropped: int = 0
    backfills: dict[str, int] = field(default_factory=dict)  # outcome -> count
    timers_fired: int = 0
    steps: int = 0
    watermark: int = -(2**63)
    newest: int = -(2**63)

    def __post_init__(self) -> None:
        self.codec = Codec.load()

    def _state(self, user: str) -> engine.UserState:
        state = self.states.setdefault(user, engine.UserState())
        if self.encode:
            state.clock = decode_clock(self.clocks.get(user))
        return state

    def _step(self, user: str, item: engine.Input) -> None:
        state = self._state(user)
        self.steps += 1
        out = engine.step(state, item, self.rules, 0)
        if out.duplicate:
            return
        self.erased_dropped += out.erased_dropped
        if out.backfill is not None:
            self.backfills[out.backfill] = self.backfills.get(out.backfill, 0) + 1
        if out.erasure:
            # the adapter clears every keyed state but the marker and deletes the user's timer
            self.states[user] = engine.UserState(erased=True)
            self.clocks.pop(user, None)
            self.registered.pop(user, None)
        elif out.expired and state.features is None and not state.clock.pending:
            self.states.pop(user, None)
            self.clocks.pop(user, None)
        elif self.encode:
            self.clocks[user] = encode_clock(state.clock)
        if out.cancel_timer_ms is not None:
            self.registered.get(user, set()).discard(out.cancel_timer_ms)
        for t in out.timers:
            if t not in self.registered.setdefault(user, set()):
                self.registered[user].add(t)
                heapq.heappush(self.timers, (t, user))
        self.changes.extend(out.changes)
        self.triggers.extend(out.triggers)
        self.decisions.extend(out.decisions)
        self.converted.extend(out.converted)
        self.lift.extend(out.lift)

    def advance(self, watermark: int) -> None:
        """Move the watermark and fire every registered timer at or before it, in time order."""
        self.watermark = max(self.watermark, watermark)
        while self.timers and self.timers[0][0] <= self.watermark:
            t, user = heapq.heappop(self.timers)
            if t not in self.registered.get(user, set()):
                continue  # deleted
            self.registered[user].discard(t)
            self.timers_fired += 1
            self._step(user, engine.Timer(user, self.watermark))

    def click(self, event: dict[str, Any]) -> None:
        """One click arriving (the watermark moves after it)."""
        t = event["event_time"]
        if engine.is_late(t, self.watermark, self.allowed_lateness_ms):
            self.dead.append(event["event_id"])
            return
        payload = self.codec.encode("ClickEvent", {k: v for k, v in event.items()
                                                   if k != "ingest_time"})
        pending = Pending(t, CLICK_RANK, str(event["event_id"]), payload, t)
        self._step(event["user_id"], engine.Arrival(event["user_id"], pending, self.watermark))
        self.newest = max(self.newest, t)
        self.advance(self.newest - self.bound_ms - 1)

    def metadata(self, record: dict[str, Any]) -> None:
        """One metadata record arriving (takes effect at its ``updated_at``)."""
        t = record["updated_at"]
        pending = Pending(t, METADATA_RANK, f"metadata@{t}",
                          self.codec.encode("UserMetadata", record), 0)
        self._step(record["user_id"], engine.Arrival(record["user_id"], pending,
                                                     self.watermark))

    def outcome(self, record: dict[str, Any]) -> None:
        """One engagement outcome arriving (applied at its ``event_time``, after the clicks and
        metadata of that time; it does not move the watermark: the clicks do)."""
        pending = Pending(record["event_time"], OUTCOME_RANK, engine.outcome_key(record),
                          self.codec.encode("CampaignOutcome", record), 0)
        self._step(record["user_id"], engine.Arrival(record["user_id"], pending,
                                                     self.watermark))

    def erase(self, user: str, requested_ms: int) -> None:
        """A tombstone for ``user`` arriving (applied at once; it does not move the watermark)."""
        self._step(user, engine.Erasure(user, requested_ms))

    def backfill(self, user: str, backfill_id: str,
                 requires: dict[str, int] | None = None) -> None:
        """A backfill request for ``user`` arriving (applied at once, at the watermark)."""
        self._step(user, engine.Backfill(user, backfill_id, requires or {}, self.watermark))

    def finish(self) -> None:
        """End of input: the watermark jumps to the maximum and every timer fires."""
        self.advance(END_OF_INPUT)
