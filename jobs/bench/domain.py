"""The domain floor: the pure per-user engine over a seeded workload, in a plain Python loop.

``python -m jobs.bench.domain [--clicks N --users U --seed S --repeat R --json OUT]``

Inputs: a workload from the project's generator (``jobs.workload``: clicks with its share of
duplicates and out-of-order events, every user's metadata, optionally metadata updates in the
stream), encoded to Avro as they sit on the topics, and the shipped catalog (segments,
campaigns, the priority policy, currency rates and the opt-in journeys) with the committed churn
model (``--no-churn`` for none). Outputs: µs per input overall, and per stage from one cProfile
pass (decode, features, segments, scoring vector and model, campaigns, journeys, state
encoding), printed as a table and with ``--json`` written to a file. State: none kept.

The loop does what ``udfs.flink.user_engine.UserEngineFunction`` does around ``engine.step``
and nothing of Flink's: a click is decoded and validated (``intake.decode_click``) and handed
over with its bytes, metadata as bytes (the engine decodes it), each as an ``engine.Arrival``
with the watermark of the moment (newest event time minus the out-of-orderness bound); one
timer per user fires when the watermark passes it; what a step changed is encoded as the
adapter writes it to keyed state (features, metadata, campaign state, clock), and the clock is
read back from those bytes at the next step as the adapter does (``udfs.clock.PendingItems``:
the clock object it stored those bytes from, and a waiting click is not decoded twice). Every
pass starts from empty state, so the passes do the same work. The input ends at the newest
event time: the timers after it (idle rechecks, expiry far in the future) are not drained.

To compare two builds of the engine, run it in each checkout on the same machine, alternating
(A B B A), and compare the medians: a single pass on a shared machine moves by up to 2x.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import dataclasses
import gc
import heapq
import json
import pstats
import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

from jobs.config import NudgeflowConfig
from jobs.workload.workload import PLANS, WorkloadSpec, generate_events, generate_users
from schemas.codec import Codec
from udfs import engine, intake, native
from udfs.campaigns import arbitration
from udfs.catalog.files import JOURNEY_CATALOG_DIR, catalog_files, load_files
from udfs.catalog.registries import Registries
from udfs.clock import (
    CLICK_RANK,
    METADATA_RANK,
    Pending,
    PendingItems,
    decode_clock,
    encode_clock,
)
from udfs.features.codec import decode_state, encode_state
from udfs.features.state import UserFeatures
from udfs.lru import LruCache

DAY_MS = 86_400_000
#: the out-of-orderness bound of the watermark (the job's default until 2026-12-07, now 20 ms:
#: in a drain either is small beside the event time one paced watermark, 200 ms of reading,
#: passes, so the batching comes from ``watermark_every``), allowed lateness, state TTL
BOUND_MS = 1_000
ALLOWED_LATENESS_MS = 60_000
STATE_TTL_MS = 90 * DAY_MS

#: stage -> the functions whose cumulative profile time it is (module file suffix, name);
#: the model is the scorer's ``score``, whatever class implements it
STAGES: dict[str, tuple[tuple[str, str], ...]] = {
    "decode": (("udfs/intake.py", "decode_click"), ("udfs/engine.py", "decode_pending")),
    "features": (("udfs/features/state.py", "update"),),
    "scoring: vector": (("udfs/features/vector.py", "vector"),),
    "scoring: model": (("udfs/churn.py", "score"),),
    "segments": (("udfs/engine.py", "_reevaluate"),),
    "journeys": (("udfs/journeys/runner.py", "on_step"),),
    "campaigns": (("udfs/engine.py", "_campaigns"),),
    "state encoding": (("jobs/bench/domain.py", "_encode"), ("jobs/bench/domain.py", "store")),
}
#: stages measured inside another one, subtracted from it (segments scores; campaigns runs
#: the journeys)
NESTED = {"segments": ("scoring: vector", "scoring: model"), "campaigns": ("journeys",)}


@dataclass(frozen=True)
class Inputs:
    """One workload as the engine's operator receives it, in arrival order.

    ``records``: (kind, user id, event time, Avro bytes) with kind ``click`` or ``metadata``.
    """

    records: tuple[tuple[str, str, int, bytes], ...]
    clicks: int
    metadata: int
    users: int


def build_inputs(clicks: int, users: int, seed: int, metadata_updates: float = 0.0,
                 days: float | None = None, start_ms: int | None = None) -> Inputs:
    """A seeded workload: every user's metadata first, then the clicks in emission order.

    ``metadata_updates``: after this share of the clicks (chosen by the seed) comes a new
    metadata record of a random user, stamped with that click's time (a changed lifetime
    value, plan or opt-in), so metadata changes mid-stream as well. ``days``: the event-time
    span (about); None: the generator's default rate (60,000 clicks of 3,000 users in a day).
    ``start_ms``: the first session's event time (the generator's default when None), as
    ``nudgeflow bench`` starts its backlog.
    """
    # the generator's span is about events / (users * sessions per user per day * 5.6) days
    spec = WorkloadSpec(users=users, events=clicks, seed=seed)
    if start_ms is not None:
        spec = dataclasses.replace(spec, start_ms=start_ms)
    if days is not None:
        spec = dataclasses.replace(spec, sessions_per_user_per_day=clicks / (users * 5.6 * days))
    codec = Codec.load()
    rng = random.Random(seed)  # noqa: S311 - a reproducible workload, not a secret
    metas = generate_users(spec)
    latest = {m["user_id"]: m for m in metas}
    records = [("metadata", m["user_id"], m["updated_at"], codec.encode("UserMetadata", m))
               for m in sorted(metas, key=lambda m: (m["updated_at"], m["user_id"]))]
    n_meta = len(records)
    for event in generate_events(spec):
        records.append(("click", event["user_id"], event["event_time"],
                        codec.encode("ClickEvent", event)))
        if metadata_updates and rng.random() < metadata_updates:
            user = rng.choice(metas)["user_id"]
            changed = _changed_metadata(latest[user], event["event_time"], rng)
            latest[user] = changed
            records.append(("metadata", user, changed["updated_at"],
                            codec.encode("UserMetadata", changed)))
            n_meta += 1
    return Inputs(tuple(records), clicks, n_meta, users)


def _changed_metadata(current: dict[str, Any], at_ms: int, rng: random.Random) -> dict[str, Any]:
    """A user's metadata with one field changed, as of ``at_ms`` (never older than before)."""
    changed = dict(current, updated_at=max(at_ms, current["updated_at"] + 1))
    what = rng.randrange(3)
    if what == 0:
        changed["lifetime_value"] = round(rng.uniform(0, 2_000), 2)
    elif what == 1:
        changed["plan"] = rng.choice(PLANS)
    else:
        opt_ins = dict(current["opt_ins"])
        channel = rng.choice(sorted(opt_ins))
        opt_ins[channel] = not opt_ins[channel]
        changed["opt_ins"] = opt_ins
    return changed


def shipped_rules(churn: bool = True, journeys: bool = True) -> engine.Rules:
    """The shipped catalog with its opt-in journeys, the job's TTL and the committed model.

    ``journeys=False``: without the journeys, as the job runs unless ``--journeys-dir`` is set.
    """
    files = [*catalog_files(), *([JOURNEY_CATALOG_DIR] if journeys else [])]
    registries = Registries.from_updates(load_files(files, check_references=False).updates(0))
    scorer = None
    if churn:
        from models import CHURN_ONNX
        from udfs.churn import ChurnModel

        scorer = ChurnModel.load(CHURN_ONNX)
    return engine.Rules(registries, STATE_TTL_MS, scorer)


@dataclass
class Outcome:
    """What one pass produced: counts, every record emitted, the final states (by user)."""

    inputs: int = 0
    steps: int = 0
    timers: int = 0
    late: int = 0
    rejected: int = 0
    emitted: list[tuple[str, Any]] = field(default_factory=list)
    stored_bytes: int = 0
    states: dict[str, engine.UserState] = field(default_factory=dict)
    clocks: dict[str, bytes] = field(default_factory=dict)
    clicks: int = 0  # click records reached
    #: clicks done with: applied, dropped as duplicates, late or invalid (the job's clicks_done)
    clicks_done: int = 0
    #: ``thread_time_ns`` (the thread's CPU) when ``clicks_done`` reached ``mark_done`` (of
    #: ``play``), and its value
    mark_ns: int | None = None
    done_at_mark: int = 0


def play(inputs: Inputs, rules: engine.Rules, keep: bool = False,
         reuse_decoded: bool = True, mark_done: int | None = None,
         watermark_every: int = 1, decoded_users: int | None = None,
         ordered: bool = False, schedule: list[ScheduleEntry] | None = None) -> Outcome:
    """One pass from empty state over every input; ``keep``: collect what the steps emitted.

    ``mark_done``: the thread's CPU time when the pass has done with that many clicks is kept
    in the outcome's ``mark_ns``, to time the rest of the pass as a drain is timed.
    ``watermark_every``: the watermark moves (and the timers it passes fire) after every that
    many clicks: 1 is a live stream's worst case, one timer step per click; a drain of a
    backlog moves it once per watermark interval (Flink's 200 ms), so one timer step applies
    several clicks of a user.

    ``reuse_decoded=False``: every clock and waiting input is decoded again from its bytes
    (the adapter without its ``PendingItems``, or after a restore).

    ``decoded_users``: None keeps each user's state object between steps (only the clock
    round-trips through bytes): no step decodes features, metadata or campaign state, as if
    every user stayed in the adapter's caches. A number keeps every keyed state as bytes, as
    Flink does, and reads it back at each step as the adapter does, through caches of decoded
    state bounded at that many users (``udfs.lru``, the job's ``decoded_state_users``): a
    user evicted since its last step decodes its features, metadata and campaign state again
    (``final_states`` then decodes the last bytes).

    ``ordered``: the inputs reach the engine as the job's Java operator hands them on
    (``input_order: java``): one later than the watermark when it arrives is held until the
    watermark passes it, then handed on in event-time order (``Pending.order``) and applied in
    the step it arrives in; the engine's timers then fire only for its checks. Which input
    reaches the engine when is ``arrivals``; ``schedule``: that list, worked out before (a
    timed pass then times the engine's work alone: the holding is the JVM's), else worked out
    here. False: every input reaches the engine when it is read, and waits in its clock
    (``input_order: engine``).
    """
    codec = Codec.load()
    out = Outcome()
    timers: list[tuple[int, str]] = []
    registered: dict[str, set[int]] = {}
    waiting = PendingItems(decoded_users or max(1, inputs.users))
    keyed = None if decoded_users is None else KeyedBytes(codec, decoded_users)

    def done(clicks: int) -> None:
        out.clicks_done += clicks
        if out.mark_ns is None and mark_done is not None and out.clicks_done >= mark_done:
            out.mark_ns, out.done_at_mark = time.thread_time_ns(), out.clicks_done

    def run(user: str, item: engine.Input) -> None:
        state = out.states.setdefault(user, engine.UserState()) if keyed is None \
            else keyed.load(user)
        # read per step, as keyed state is, with the decoded clock and inputs the adapter keeps
        raw = out.clocks.get(user)
        state.clock = waiting.take(user, raw) if reuse_decoded else decode_clock(raw)
        step = engine.step(state, item, rules, 0)
        out.steps += 1
        done(len(step.clicks_applied) + step.duplicates + (
            step.duplicate and isinstance(item, engine.Arrival)
            and item.pending.rank == CLICK_RANK))
        if step.duplicate:
            return
        written, stored_clock = _encode(codec, state, step, out.clocks, user) if keyed is None \
            else keyed.store(user, state, step, out.clocks)
        out.stored_bytes += written
        waiting.remember(user, state.clock, stored_clock)
        mine = registered.setdefault(user, set())
        if step.cancel_timer_ms is not None:
            mine.discard(step.cancel_timer_ms)
        for due in step.timers:
            if due not in mine:
                mine.add(due)
                heapq.heappush(timers, (due, user))
        if keep:
            out.emitted.append((user, _emitted(step)))

    def advance(to: int) -> None:
        while timers and timers[0][0] <= to:
            due, user = heapq.heappop(timers)
            if due in registered[user]:
                registered[user].discard(due)
                out.timers += 1
                run(user, engine.Timer(user, to))

    def pending(position: int, watermark: int) -> Pending | None:
        """The record as the input the engine buffers (None: rejected or late, done with)."""
        kind, user, event_time, raw = inputs.records[position]
        out.inputs += 1
        if kind == "metadata":
            return Pending(event_time, METADATA_RANK, f"metadata@{event_time}", raw, 0)
        out.clicks += 1
        record = intake.SourceRecord("clicks", 0, position + 1, event_time, user.encode(), raw)
        event = intake.decode_click(codec, record)
        if isinstance(event, intake.Rejected):
            out.rejected += 1
            done(1)
            return None
        if engine.is_late(event_time, watermark, ALLOWED_LATENESS_MS):
            out.late += 1
            done(1)
            return None
        event["ingest_time"] = event_time
        return Pending(event_time, CLICK_RANK, str(event["event_id"]), raw, event_time,
                       engine.Click(event))

    if schedule is None:
        schedule = arrivals(inputs, watermark_every, ordered)
    for entry in schedule:
        if entry[0] == ADVANCE:  # the watermark moved: the timers it passed fire
            advance(entry[1])
        elif entry[0] == ARRIVE:
            _, position, watermark = entry
            one = pending(position, watermark)
            if one is not None:
                user = inputs.records[position][1]
                run(user, engine.Arrival(user, one, watermark))
        else:  # RELEASE: a user's held inputs, handed on at once
            _, positions, through, watermark = entry
            released = [p for p in (pending(n, watermark) for n in positions) if p is not None]
            if released:
                user = inputs.records[positions[0]][1]
                run(user, engine.Released(user, tuple(released), through, watermark))
    if keyed is not None:
        out.states = keyed.final_states(out.clocks)
    return out


#: ``arrivals`` entries: (ARRIVE, record position, the engine's watermark then); (RELEASE, the
#: positions of one user's held records in order, the watermark that released them, the
#: engine's watermark before it); (ADVANCE, the watermark the engine's timers fire up to)
ARRIVE, RELEASE, ADVANCE = "arrive", "release", "advance"
ScheduleEntry = tuple[Any, ...]


def arrivals(inputs: Inputs, watermark_every: int = 1, ordered: bool = False
             ) -> list[ScheduleEntry]:
    """When each record reaches the engine, and when the watermark moves (see ``ARRIVE``).

    The watermark trails the newest valid click by the bound and moves after every
    ``watermark_every`` clicks, and once more at the end, to the newest event time.
    ``ordered`` (``play``): a record later than the watermark is held; at the move that
    passes it, each user's held records reach the engine together, in event-time order
    (``Pending.order``), before the engine's timers fire, as the Java operator hands them on
    (one ``batch`` row per user) before the watermark itself. Worked out by decoding every
    click: pass it to ``play`` (``schedule``) to keep that out of a timed pass.
    """
    codec = Codec.load()
    out: list[ScheduleEntry] = []
    held: list[tuple[int, int, str, int]] = []  # (time, rank, key, position)
    watermark = newest = -(2**63)
    clicks = 0

    def move(to: int) -> None:
        users: dict[str, list[int]] = {}
        while held and held[0][0] <= to:
            position = heapq.heappop(held)[3]
            users.setdefault(inputs.records[position][1], []).append(position)
        out.extend((RELEASE, tuple(positions), to, watermark) for positions in users.values())
        out.append((ADVANCE, to))

    for position, (kind, user, event_time, raw) in enumerate(inputs.records):
        if kind == "metadata":
            if ordered and event_time > watermark:
                heapq.heappush(held, (event_time, METADATA_RANK, "", position))
            else:
                out.append((ARRIVE, position, watermark))
            continue
        clicks += 1
        record = intake.SourceRecord("clicks", 0, position + 1, event_time, user.encode(), raw)
        event = intake.decode_click(codec, record)
        valid = not isinstance(event, intake.Rejected)
        if ordered and not isinstance(event, intake.Rejected) and event_time > watermark:
            heapq.heappush(held, (event_time, CLICK_RANK, str(event["event_id"]), position))
        else:
            out.append((ARRIVE, position, watermark))
        if valid and not engine.is_late(event_time, watermark, ALLOWED_LATENESS_MS):
            newest = max(newest, event_time)
        if clicks % watermark_every == 0:
            to = max(watermark, newest - BOUND_MS - 1)
            move(to)
            watermark = to
    # the input ends where its newest event is (an input later than that stays unapplied, as
    # it waits in the engine's clock without ``ordered``)
    move(max(watermark, newest))
    return out


class KeyedBytes:
    """Every user's keyed state as bytes, read and written as ``UserEngineFunction`` does.

    ``load`` gives a step's ``engine.UserState`` whose features, metadata and membership are
    read when the step needs them (``load``) and whose campaign state is read when it reads
    it; features, metadata and campaign state come from caches of decoded state bounded at
    ``max_users`` (``udfs.lru.LruCache``) when the bytes are the ones kept there. ``store``
    writes back what the step changed. Mirrors ``udfs.flink.user_engine`` (``_load_state``,
    ``_store_state``, ``_clear_state``); an erasure is not modelled (the workload has none).
    """

    def __init__(self, codec: Codec, max_users: int) -> None:
        self.codec = codec
        self.values: dict[str, dict[str, Any]] = {}
        self.features: LruCache[UserFeatures] = LruCache(max_users)
        self.metadata: LruCache[dict[str, Any]] = LruCache(max_users)
        self.campaigns: LruCache[arbitration.CampaignState] = LruCache(max_users)
        self.loaded_membership: dict[str, int] = {}
        self.rest_loaded = self.campaigns_stored = False
        self.campaigns_read: bytes | None = None

    def load(self, user: str) -> engine.UserState:
        """The user's state for one step, its parts read on first use."""
        stored = self.values.setdefault(user, {})
        self.rest_loaded, self.loaded_membership, self.campaigns_stored = False, {}, False
        self.campaigns_read = None

        def load(state: engine.UserState) -> None:
            self.rest_loaded = True
            self.loaded_membership = dict(stored.get("membership") or {})
            raw_features, raw_metadata = stored.get("features"), stored.get("metadata")
            if raw_features:
                kept = self.features.get(user, raw_features)
                state.features = kept if kept is not None else decode_state(raw_features)
            if raw_metadata:
                metadata = self.metadata.get(user, raw_metadata)
                if metadata is None:
                    metadata = self.codec.decode(raw_metadata, expect="UserMetadata")
                    self.metadata.put(user, raw_metadata, metadata)
                state.metadata = metadata
            state.membership = dict(self.loaded_membership)

        def load_campaigns() -> arbitration.CampaignState:
            raw = stored.get("campaigns")
            self.campaigns_stored = bool(raw)
            if not raw:
                self.campaigns.pop(user)
                return arbitration.CampaignState()
            self.campaigns_read = raw
            kept = self.campaigns.take(user, raw)
            return kept if kept is not None else arbitration.decode_state(raw)

        return engine.UserState(load=load, load_campaigns=load_campaigns)

    def store(self, user: str, state: engine.UserState, step: engine.Step,
              clocks: dict[str, bytes]) -> tuple[int, bytes | None]:
        """Write back what the step changed; (bytes written, the clock's bytes if stored)."""
        stored = self.values[user]
        written = 0
        if step.expired:
            for name in ("features", "metadata", "membership", "campaigns"):
                stored.pop(name, None)
            self.loaded_membership, self.campaigns_stored = {}, False
            self.campaigns_read = None
        if step.features_changed and state.features is not None:
            encoded = stored["features"] = encode_state(state.features)
            self.features.put(user, encoded, state.features)
            written += len(encoded)
        if step.metadata_changed and state.metadata is not None:
            stored["metadata"] = self.codec.encode("UserMetadata", state.metadata)
            written += len(stored["metadata"])
        if (self.rest_loaded or step.expired) and state.membership != self.loaded_membership:
            stored["membership"] = dict(state.membership)
        cstate = state.campaigns
        if step.campaigns_changed and cstate is not None:
            if not cstate.is_empty():
                stored["campaigns"] = arbitration.encode_state(cstate)
                self.campaigns.put(user, stored["campaigns"], cstate)
                written += len(stored["campaigns"])
            elif self.campaigns_stored:
                stored.pop("campaigns", None)
        elif cstate is not None and self.campaigns_read is not None \
                and not step.campaigns_touched:
            self.campaigns.put(user, self.campaigns_read, cstate)
        if step.clock_changed or step.expired:
            clocks[user] = encode_clock(state.clock)
            return written + len(clocks[user]), clocks[user]
        return written, None

    def final_states(self, clocks: dict[str, bytes]) -> dict[str, engine.UserState]:
        """Every user's state decoded from its last bytes (to compare passes)."""
        states = {}
        for user, stored in self.values.items():
            state = engine.UserState(
                features=decode_state(stored["features"]) if stored.get("features") else None,
                metadata=self.codec.decode(stored["metadata"], expect="UserMetadata")
                if stored.get("metadata") else None,
                membership=dict(stored.get("membership") or {}),
                campaigns=arbitration.decode_state(stored.get("campaigns")),
                clock=decode_clock(clocks.get(user)))
            states[user] = state
        return states


def _encode(codec: Codec, state: engine.UserState, step: engine.Step, clocks: dict[str, bytes],
            user: str) -> tuple[int, bytes | None]:
    """Encode what the step changed as the adapter writes it to keyed state.

    Returns the bytes written, and the clock's bytes if the step stored the clock.
    """
    written = 0
    if step.features_changed and state.features is not None:
        written += len(encode_state(state.features))
    if step.metadata_changed and state.metadata is not None:
        written += len(codec.encode("UserMetadata", state.metadata))
    if step.campaigns_changed and state.campaigns is not None:
        written += len(arbitration.encode_state(state.campaigns))
    if step.clock_changed or step.expired:
        clocks[user] = encode_clock(state.clock)
        return written + len(clocks[user]), clocks[user]
    return written, None


def _emitted(step: engine.Step) -> dict[str, Any]:
    """Everything a step says (the flags of what to store too), but ``campaigns_touched``.

    That flag says which way the step went (decided on the campaign state, or stopped
    before), not what it did: a shortcut that skips a decision that changes nothing differs
    in it alone.
    """
    said = dataclasses.asdict(step)
    del said["campaigns_touched"]
    return said


def floor(clicks: int, users: int, seed: int = 7, start_ms: int | None = None,
          passes: int = 3, journeys: bool = False, watermark_every: int = 1,
          decoded_users: int | None = None,
          gc_thresholds: tuple[int, int, int] | None = None,
          warmup_records: int | None = None,
          around_passes: Callable[[], AbstractContextManager[Any]] | None = None,
          ordered: bool = True) -> dict[str, Any]:
    """The domain floor of one workload, for ``nudgeflow bench``: µs per click and per input.

    The loop of ``main`` (the shipped catalog, the churn model, a warm-up pass, then ``passes``
    timed ones; their medians) without the stage table, timed in the thread's CPU time (the
    engine's figure it stands next to is CPU time too: a wait for a core is in neither), and
    by default without the journeys, as the job runs by default; the watermark moves after
    every ``watermark_every`` clicks (``play``). ``us_per_input``: the whole pass over every
    record;
    ``us_per_click``: the pass from the moment 5% of its clicks are done with (applied,
    dropped or rejected) to its end, over the clicks done in between, as a drain of the bench
    is timed (the engine's ``clicks_done``); the users' metadata records, older than every
    click, are applied before that. ``decoded_users``: as ``play`` (None: no state decoded,
    as if every user stayed in the adapter's caches). ``gc_thresholds``: the collector's
    thresholds during the passes, as the engine operator sets them (None: the job's default,
    ``NudgeflowConfig.gc_thresholds``). ``warmup_records``: the warm-up pass plays only the
    first that many records (None: all of them), so a large workload is not played twice.
    ``around_passes``: a context the timed passes run in, and nothing else (``nudgeflow
    bench`` samples them with perf there). ``ordered``: the inputs reach the engine as the
    Java operator hands them on (``play``; the job's default, ``input_order: java``).
    """
    inputs = build_inputs(clicks, users, seed, start_ms=start_ms)
    rules = shipped_rules(churn=True, journeys=journeys)
    warmup = inputs if warmup_records is None else dataclasses.replace(
        inputs, records=inputs.records[:warmup_records])
    play(warmup, rules, watermark_every=watermark_every, ordered=ordered)  # warm up
    schedule = arrivals(inputs, watermark_every, ordered)  # not timed: the JVM's part
    per_input, per_click = [], []
    mark = inputs.clicks // 20  # the drain's clock starts at 5% of the clicks
    python_defaults = gc.get_threshold()
    gc.set_threshold(*(gc_thresholds or NudgeflowConfig().gc_threshold_counts()))
    try:
        with around_passes() if around_passes else contextlib.nullcontext():
            for _ in range(max(1, passes)):
                started = time.thread_time_ns()
                outcome = play(inputs, rules, mark_done=mark, watermark_every=watermark_every,
                               decoded_users=decoded_users, schedule=schedule)
                ended = time.thread_time_ns()
                per_input.append((ended - started) / 1_000 / len(inputs.records))
                per_click.append((ended - (outcome.mark_ns or started)) / 1_000
                                 / max(1, outcome.clicks_done - outcome.done_at_mark))
    finally:
        gc.set_threshold(*python_defaults)
    return {"clicks": inputs.clicks, "users": inputs.users, "inputs": len(inputs.records),
            "passes": len(per_input), "journeys": journeys, "watermark_every": watermark_every,
            "ordered": ordered,
            "decoded_users": decoded_users,
            "steps_per_click": round(outcome.steps / inputs.clicks, 2),
            "us_per_input": round(statistics.median(per_input), 1),
            "us_per_click": round(statistics.median(per_click), 1)}


def timed(inputs: Inputs, rules: engine.Rules, watermark_every: int = 1,
          decoded_users: int | None = None, ordered: bool = False
          ) -> tuple[float, Outcome]:
    """(µs per input, the outcome) of one pass (``play``; its schedule worked out untimed)."""
    schedule = arrivals(inputs, watermark_every, ordered)
    t0 = time.perf_counter_ns()
    outcome = play(inputs, rules, watermark_every=watermark_every, decoded_users=decoded_users,
                   schedule=schedule)
    return (time.perf_counter_ns() - t0) / 1_000 / len(inputs.records), outcome


def stage_table(inputs: Inputs, rules: engine.Rules, us_per_input: float,
                watermark_every: int = 1, decoded_users: int | None = None,
                ordered: bool = False) -> dict[str, float]:
    """µs per input of each stage: one profiled pass, its shares applied to ``us_per_input``.

    cProfile inflates functions of many small calls more than others, so the split is an
    estimate; the total is the unprofiled one.
    """
    schedule = arrivals(inputs, watermark_every, ordered)
    profile = cProfile.Profile()
    profile.runcall(play, inputs, rules, watermark_every=watermark_every,
                    decoded_users=decoded_users, schedule=schedule)
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())  # own times add up to the whole
    cumulative: dict[str, float] = {}
    for stage, functions in STAGES.items():
        cumulative[stage] = sum(
            entry[3] for (file, _, name), entry in stats.items()
            if any(file.endswith(suffix) and name == fn for suffix, fn in functions))
    for stage, inner in NESTED.items():
        cumulative[stage] -= sum(cumulative[s] for s in inner)
    table = {stage: us_per_input * seconds / total for stage, seconds in cumulative.items()}
    table["other (loop, clock, currency, step bookkeeping)"] = us_per_input - sum(table.values())
    return table


def main(argv: Sequence[str] | None = None,
         printer: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the domain floor benchmark; returns what it printed as a dict (also ``--json``)."""
    parser = argparse.ArgumentParser(prog="python -m jobs.bench.domain", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clicks", type=int, default=60_000, help="clicks (default 60,000)")
    parser.add_argument("--users", type=int, default=3_000, help="users (default 3,000)")
    parser.add_argument("--seed", type=int, default=7, help="workload seed (default 7)")
    parser.add_argument("--repeat", type=int, default=3, help="timed passes (default 3)")
    parser.add_argument("--metadata-updates", type=float, default=0.0,
                        help="share of clicks followed by a metadata update (default 0)")
    parser.add_argument("--watermark-every", type=int, default=1, metavar="N",
                        help="move the watermark after every N clicks (default 1: a live "
                             "stream's worst case; a drain moves it every 200 ms)")
    parser.add_argument("--decoded-users", type=int, default=0, metavar="N",
                        help="keep state as bytes and decode it as the job does, with N "
                             "users' decoded state kept (the job's --decoded-state-users); "
                             "default 0: every user's state kept as objects, nothing decoded")
    parser.add_argument("--engine-order", action="store_true",
                        help="inputs wait in the engine's clock (input_order: engine); default: "
                             "they reach it in event-time order, as the Java operator hands "
                             "them on (input_order: java)")
    parser.add_argument("--no-churn", action="store_true", help="no churn model")
    parser.add_argument("--no-profile", action="store_true", help="skip the per-stage table")
    parser.add_argument("--json", metavar="OUT", help="write the figures to this file")
    args = parser.parse_args(argv)
    inputs = build_inputs(args.clicks, args.users, args.seed, args.metadata_updates)
    rules = shipped_rules(churn=not args.no_churn)
    gc.set_threshold(*NudgeflowConfig().gc_threshold_counts())  # as the engine operator does
    every = max(1, args.watermark_every)
    ordered = not args.engine_order
    play(inputs, rules, watermark_every=every, ordered=ordered)  # warm up: imports, caches
    kept = args.decoded_users or None
    passes = [timed(inputs, rules, every, kept, ordered) for _ in range(max(1, args.repeat))]
    us = statistics.median(p[0] for p in passes)
    outcome = passes[0][1]
    result: dict[str, Any] = {
        "clicks": inputs.clicks, "users": inputs.users, "metadata": inputs.metadata,
        "inputs": outcome.inputs, "steps": outcome.steps, "timers": outcome.timers,
        "late": outcome.late, "rejected": outcome.rejected, "churn": not args.no_churn,
        "ordered": ordered,
        "us_per_input": us,
        "us_per_input_runs": [p[0] for p in passes],
        "state_bytes_per_input": outcome.stored_bytes / outcome.inputs,
    }
    printer(f"domain floor: {inputs.clicks:,} clicks + {inputs.metadata:,} metadata records of "
            f"{inputs.users:,} users ({outcome.steps:,} steps, {outcome.timers:,} timers fired, "
            f"{outcome.late} late), churn scoring {'on' if result['churn'] else 'off'}")
    printer(f"  {us:8.1f} µs per input (median of {len(passes)}: "
            + ", ".join(f"{p[0]:.1f}" for p in passes) + ")")
    result["native"] = native.status()
    printer(f"  engine modules: {native.status()}")
    if not args.no_profile and native.active():
        # cProfile sees a compiled function's calls to Python, not its own time
        result["stages_us"] = None
        printer(f"  per stage: not with compiled modules (cProfile cannot see inside them); run "
                f"with {native.ENV}=off for the table")
    elif not args.no_profile:
        result["stages_us"] = stage_table(inputs, rules, us, every, kept, ordered)
        printer("  per stage (cProfile shares of the total):")
        for stage, value in result["stages_us"].items():
            printer(f"    {stage:<50} {value:7.1f} µs")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(result, f, indent=2)
    return result


if __name__ == "__main__":
    main()
    sys.exit(0)
