"""A pure stand-in for the Flink adapter around ``engine.step``: watermarks, one timer per user.

``Simulator`` plays records in a given arrival order the way ``UserEngineFunction`` sees them:
each record is an ``engine.Arrival`` with the watermark of the moment (the newest event time
minus the out-of-orderness bound, as ``for_bounded_out_of_orderness`` emits it), the watermark
fires due timers in time order before the next record, and the end of input fires the rest
(watermark at the maximum). Clicks, metadata and outcomes go through their Avro bytes, as in
the job. A backfill request is stepped at once, at the watermark. An erasure (a tombstone) is
stepped at once; as the adapter does, the user's clock and
timers are dropped and only the erased marker is kept.

By default a user's ``UserState`` object lives on between steps (only the clock round-trips
through bytes). ``persist=True`` models the adapter's state handling instead
(``UserEngineFunction._load_state``, ``_store_state``, ``_clear_state``, ``_forget``): every
keyed state (features, metadata, membership, campaign state, clock, erased marker) is kept as
what Flink keeps (bytes through the adapter's encoders, a copy of the membership map), only
what a ``Step`` says changed is written back, and each step gets a fresh ``engine.UserState``
that reads the rest lazily. Nothing else survives a step (``churn_score``, ``model_version``).
``cache=True`` keeps the adapter's per-instance caches of decoded features, metadata and
campaign state (reused when the stored bytes are the ones last seen; ``cache_users`` of them,
the least recently used evicted, as ``udfs.lru.LruCache`` bounds them in the job);
``restart()`` drops them, as a restore from a savepoint (or a failover) starts a fresh
instance.
"""

from __future__ import annotations

import hashlib
import heapq
from dataclasses import dataclass, field
from typing import Any

from schemas.codec import Codec
from udfs import engine
from udfs.campaigns import arbitration
from udfs.clock import (
    CLICK_RANK,
    METADATA_RANK,
    OUTCOME_RANK,
    Pending,
    decode_clock,
    encode_clock,
)
from udfs.features.codec import decode_state, encode_state
from udfs.features.state import UserFeatures
from udfs.lru import LruCache

END_OF_INPUT = 2**63 - 1


@dataclass
class Simulator:
    """Steps users as the Flink adapter does; collects every record the steps produced."""

    rules: engine.Rules
    bound_ms: int
    allowed_lateness_ms: int = 60_000
    encode: bool = True  # store the clock as bytes between steps, as keyed state does
    persist: bool = False  # keep every keyed state as the adapter does (module docstring)
    cache: bool = True  # with persist: the adapter's caches of decoded features and metadata
    cache_users: int = 1_000_000  # their bound (the job's decoded_state_users)
    #: with persist: user id -> keyed state name -> value (bytes, or the membership dict)
    keyed: dict[str, dict[str, Any]] = field(default_factory=dict)
    states: dict[str, engine.UserState] = field(default_factory=dict)
    clocks: dict[str, bytes] = field(default_factory=dict)
    timers: list[tuple[int, str, str]] = field(default_factory=list)
    #: users' timers due at the same time fire in user id order, or, given a salt, in an order
    #: that salt shuffles (Flink's order across keys depends on the parallelism)
    tie_salt: str = ""
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
    late: int = 0  # inputs applied behind their user's clock (arrived after it passed them)
    watermark: int = -(2**63)
    newest: int = -(2**63)

    def __post_init__(self) -> None:
        self.codec = Codec.load()
        self.features_cache: LruCache[UserFeatures] = LruCache(self.cache_users)
        self.metadata_cache: LruCache[dict[str, Any]] = LruCache(self.cache_users)
        self.campaigns_cache: LruCache[arbitration.CampaignState] = LruCache(self.cache_users)
        self.campaigns_read: bytes | None = None
        # per step, with persist: what the adapter notes while loading (see _load_state)
        self.rest_loaded = False
        self.loaded_membership: dict[str, int] = {}
        self.campaigns_stored = False

    def _state(self, user: str) -> engine.UserState:
        if self.persist:
            return self._load_state(user)
        state = self.states.setdefault(user, engine.UserState())
        if self.encode:
            state.clock = decode_clock(self.clocks.get(user))
        return state

    def _tie(self, user: str) -> str:
        if not self.tie_salt:
            return user
        return hashlib.sha256(f"{self.tie_salt}|{user}".encode()).hexdigest()

    def restart(self) -> None:
        """A restore from a savepoint: fresh adapter instances (no cache) and a watermark that
        starts again from the new sources; keyed state and timers stay."""
        self.features_cache = LruCache(self.cache_users)
        self.metadata_cache = LruCache(self.cache_users)
        self.campaigns_cache = LruCache(self.cache_users)
        self.watermark = self.newest = -(2**63)

    # -- the adapter's keyed state (persist=True); mirrors UserEngineFunction --------------------

    def _load_state(self, user: str) -> engine.UserState:
        """``_load_state``: the clock now, the rest through ``load`` when the step needs it."""
        keyed = self.keyed.setdefault(user, {})
        self.rest_loaded, self.loaded_membership, self.campaigns_stored = False, {}, False
        self.campaigns_read = None

        def load(state: engine.UserState) -> None:
            self.rest_loaded = True
            self.loaded_membership = dict(keyed.get("membership") or {})
            raw_features, raw_metadata = keyed.get("features"), keyed.get("metadata")
            state.features = self._decode_features(user, raw_features) if raw_features else None
            state.metadata = self._decode_metadata(user, raw_metadata) if raw_metadata else None
            state.membership = dict(self.loaded_membership)

        def load_campaigns() -> arbitration.CampaignState:
            raw = keyed.get("campaigns")
            self.campaigns_stored = bool(raw)
            if not raw:
                self.campaigns_cache.pop(user)
                return arbitration.CampaignState()
            self.campaigns_read = raw
            kept = self.campaigns_cache.take(user, raw) if self.cache else None
            return kept if kept is not None else arbitration.decode_state(raw)

        raw_clock = keyed.get("clock")
        erased = not raw_clock and bool(keyed.get("erased"))
        return engine.UserState(clock=decode_clock(raw_clock), load=load,
                                load_campaigns=load_campaigns, erased=erased)

    def _decode_features(self, user: str, raw: bytes) -> UserFeatures:
        cached = self.features_cache.get(user, raw) if self.cache else None
        return cached if cached is not None else decode_state(raw)

    def _decode_metadata(self, user: str, raw: bytes) -> dict[str, Any]:
        cached = self.metadata_cache.get(user, raw) if self.cache else None
        if cached is not None:
            return cached
        metadata: dict[str, Any] = self.codec.decode(raw, expect="UserMetadata")
        if self.cache:
            self.metadata_cache.put(user, raw, metadata)
        return metadata

    def _store(self, user: str, state: engine.UserState, out: engine.Step) -> None:
        """``_step``'s writes: ``_forget`` on an erasure, else ``_clear_state`` on an expiry and
        ``_store_state``."""
        keyed = self.keyed.setdefault(user, {})
        if out.erasure:
            keyed.clear()
            keyed["erased"] = True
            self.features_cache.pop(user)
            self.metadata_cache.pop(user)
            self.campaigns_cache.pop(user)
            return
        if out.reregistered:
            keyed.pop("erased", None)
        if out.expired:
            for name in ("features", "metadata", "membership", "campaigns", "clock"):
                keyed.pop(name, None)
            self.loaded_membership, self.campaigns_stored = {}, False
            self.campaigns_read = None
        if out.features_changed and state.features is not None:
            encoded = encode_state(state.features)
            keyed["features"] = encoded
            if self.cache:
                self.features_cache.put(user, encoded, state.features)
        if out.metadata_changed and state.metadata is not None:
            keyed["metadata"] = self.codec.encode("UserMetadata", state.metadata)
        if (self.rest_loaded or out.expired) and state.membership != self.loaded_membership:
            keyed["membership"] = dict(state.membership)  # Flink keeps a serialized copy
        cstate = state.campaigns
        if out.campaigns_changed and cstate is not None:
            if not cstate.is_empty():
                keyed["campaigns"] = arbitration.encode_state(cstate)
                if self.cache:
                    self.campaigns_cache.put(user, keyed["campaigns"], cstate)
            elif self.campaigns_stored:
                keyed.pop("campaigns", None)
        elif self.cache and cstate is not None and self.campaigns_read is not None \
                and not out.campaigns_touched:
            self.campaigns_cache.put(user, self.campaigns_read, cstate)
        if out.clock_changed:
            if out.expired and state.features is None and state.metadata is None \
                    and not state.clock.pending:
                keyed.pop("clock", None)
            else:
                keyed["clock"] = encode_clock(state.clock)

    def _step(self, user: str, item: engine.Input) -> None:
        state = self._state(user)
        self.steps += 1
        out = engine.step(state, item, self.rules, 0)
        if out.duplicate:
            return
        self.erased_dropped += out.erased_dropped
        self.late += out.late
        if out.backfill is not None:
            self.backfills[out.backfill] = self.backfills.get(out.backfill, 0) + 1
        if self.persist:
            self._store(user, state, out)
            if out.erasure:
                self.registered.pop(user, None)
        elif out.erasure:
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
                heapq.heappush(self.timers, (t, self._tie(user), user))
        self.changes.extend(out.changes)
        self.triggers.extend(out.triggers)
        self.decisions.extend(out.decisions)
        self.converted.extend(out.converted)
        self.lift.extend(out.lift)

    def advance(self, watermark: int) -> None:
        """Move the watermark and fire every registered timer at or before it, in time order."""
        self.watermark = max(self.watermark, watermark)
        while self.timers and self.timers[0][0] <= self.watermark:
            t, _, user = heapq.heappop(self.timers)
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
