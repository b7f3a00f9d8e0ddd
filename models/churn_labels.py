"""Labelled churn histories: the workload generator's users, some of whom fade out and stop.

Inputs: a :class:`ChurnSpec` (seeded). Outputs: the thinned ClickEvent stream
(:func:`kept_events`), the hidden truth of every user (:class:`UserPlan`) and labelled feature
snapshots (:class:`Snapshot`, :func:`labelled_snapshots`) whose vectors come from
``udfs.features.state.update`` and ``vector_list``: the code the per-user operator runs, so
training and serving share one feature path. Money too: every click's price is converted to US
dollars before the features see it, with ``udfs.currency.rates.to_reference`` and the shipped
catalog's rate table (``udfs/catalog/currency-rates.yaml``, loaded as the job loads it at start:
:func:`shipped_rates`), as the engine does (``udfs.engine``); a currency the table lacks loses
its money there as it does in serving. Deterministic: randomness comes from the spec's seed
only, time from ``ChurnSpec.start_ms``; no wall clock; the only I/O is reading the rate table.

How churn is simulated. :mod:`jobs.workload.workload` (not modified; its public functions only)
generates a busy population with nobody going inactive (``inactive_fraction=0``): sessions at
``sessions_per_user_per_day`` on average, heavy-tailed per-user activity, carts, purchases, 2 %
out-of-order and 1 % duplicate records. Each user then gets a hidden :class:`UserPlan`, and each
session of the user is kept with the plan's probability at the session's first event time
(the decision is a hash of seed and session key, so duplicates of a kept event are kept too):

- everyone: ``base_keep`` times a slowly drifting daily activity level (a clipped log random
  walk), zero before the user joins (``new_user_fraction`` join partway, the others are there
  from the start);
- a **churner** (more likely on cheaper plans and for new users) fades linearly to zero over
  ``decay_days`` before a stop time drawn between a few days after joining and
  ``stop_after_cutoff_days`` after the observation cutoff, so some are still fading at the
  cutoff. Before fading it stops buying: from ``lull_lead_days`` before the fade, only
  ``lull_keep`` of its cart, checkout and purchase events are kept (browsing goes on). Noise:
  ``blip_fraction`` of churners come back for one or two short windows after the stop,
  ``return_fraction`` resume for good some weeks later;
- a **stayer** keeps going; noise: ``quiet_fraction`` of stayers have a quiet spell of
  ``quiet_days`` somewhere (it can cover the label window), ``lull_fraction`` have a commerce
  lull of ``lull_days`` like a churner's, and low-activity stayers can go two weeks without a
  session by chance.

The label is what the data shows, not the hidden plan: a snapshot at time ``t`` is labelled 1
(churned) when the user has no kept event in ``(t + gap, t + gap + horizon]`` (the gap, an hour,
keeps the rest of the session being scored from counting as staying). Two snapshots per user:

- ``cutoff``: at the observation cutoff, as a timer would score (the user's events up to it);
- ``event``: right after the user's first event at or after a random time in the
  ``event_snapshot_days`` before the cutoff, as the operator scores on an event (recency is
  about zero there, so the model must also read the trend of the counts).

Users with no event before the cutoff have no state in the operator and yield no snapshot.
"""

from __future__ import annotations

import hashlib
import math
import random
from bisect import bisect_right
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from jobs.workload.workload import DEFAULT_START_MS, WorkloadSpec, generate_events, generate_users
from udfs.catalog.files import RATES_FILE, load_files
from udfs.catalog.registries import Registries
from udfs.currency.rates import RATES_ID, CurrencyRates, to_reference
from udfs.features.spec import DAY_MS
from udfs.features.state import UserFeatures, update
from udfs.features.vector import vector_list

__all__ = [
    "SNAPSHOT_KINDS",
    "ChurnSpec",
    "LabelledData",
    "Snapshot",
    "UserPlan",
    "apply_event",
    "churn_label",
    "kept_events",
    "labelled_snapshots",
    "shipped_rates",
    "snapshot_vector",
    "user_plans",
    "workload_spec",
]

#: Snapshot kinds: at the observation cutoff (timer-like) and right after an event.
SNAPSHOT_KINDS = ("cutoff", "event")
_EVENTS_PER_SESSION = 5.6  # mean events per session of the workload generator (its docs)
_COMMERCE = frozenset({"ADD_TO_CART", "REMOVE_FROM_CART", "CHECKOUT", "PURCHASE"})


@dataclass(frozen=True)
class ChurnSpec:
    """What to simulate. Every field has a default; the same spec always yields the same data.

    Attributes:
        users: Users of the underlying workload.
        seed: Seed of the workload and of every churn decision.
        start_ms: Event time at which the workload starts.
        observation_days: Days from ``start_ms`` to the observation cutoff.
        horizon_days: Label window: churned = no event in the this many days after a snapshot.
        sessions_per_user_per_day: Session rate of the workload before thinning.
        base_keep: Share of sessions kept at activity level 1 (the level drifts in
            ``drift_range``; ``base_keep * drift_range[1]`` must be at most 1).
        drift_sigma: Daily standard deviation of the log activity level's random walk.
        drift_range: Bounds of the activity level.
        churn_by_plan: Probability of being a churner by UserMetadata plan.
        new_user_churn_bonus: Added to a new user's churn probability.
        new_user_fraction: Share of users who join partway (uniformly between the start and
            ``min_history_days`` before the cutoff); the others are there from the start.
        min_history_days: New users join at least this long before the cutoff.
        decay_days: (lo, hi) length of a churner's fade, uniform.
        stop_after_cutoff_days: A churner's stop time lies between 3 days after joining and
            this many days after the cutoff, uniform.
        blip_fraction: Share of churners active again in one or two windows after the stop.
        blip_days: Length of a blip window.
        return_fraction: Share of churners who resume for good ...
        return_after_days: ... this (lo, hi) many days after the stop.
        quiet_fraction: Share of stayers with one quiet spell ...
        quiet_days: ... of this (lo, hi) many days, placed anywhere in the data.
        lull_lead_days: A churner stops buying first: a commerce lull starts this (lo, hi)
            many days before the fade and lasts until the stop.
        lull_fraction: Share of stayers with a commerce lull of their own ...
        lull_days: ... of this (lo, hi) many days, placed anywhere in the data.
        lull_keep: Share of cart, checkout and purchase events kept during a lull.
        missing_metadata_fraction: Share of users whose UserMetadata is withheld (the
            operator may score a user before the metadata arrives).
        event_snapshot_days: The event snapshot's target time is uniform in this many days
            before the cutoff.
        label_gap_minutes: The label window starts this long after the snapshot, so that the
            rest of the session being scored does not count as staying.
    """

    users: int = 8000
    seed: int = 20261101
    start_ms: int = DEFAULT_START_MS
    observation_days: int = 45
    horizon_days: int = 14
    sessions_per_user_per_day: float = 0.8
    base_keep: float = 0.5
    drift_sigma: float = 0.12
    drift_range: tuple[float, float] = (0.25, 2.0)
    churn_by_plan: Mapping[str, float] = field(default_factory=lambda: {
        "FREE": 0.45, "BASIC": 0.35, "PREMIUM": 0.25, "ENTERPRISE": 0.15})
    new_user_churn_bonus: float = 0.15
    new_user_fraction: float = 0.25
    min_history_days: int = 7
    decay_days: tuple[float, float] = (2.0, 21.0)
    stop_after_cutoff_days: float = 10.0
    blip_fraction: float = 0.35
    blip_days: float = 2.0
    return_fraction: float = 0.1
    return_after_days: tuple[float, float] = (5.0, 30.0)
    quiet_fraction: float = 0.25
    quiet_days: tuple[float, float] = (4.0, 20.0)
    lull_lead_days: tuple[float, float] = (5.0, 25.0)
    lull_fraction: float = 0.2
    lull_days: tuple[float, float] = (10.0, 30.0)
    lull_keep: float = 0.15
    missing_metadata_fraction: float = 0.05
    event_snapshot_days: int = 30
    label_gap_minutes: int = 60

    def __post_init__(self) -> None:
        if self.users < 1:
            raise ValueError(f"ChurnSpec.users must be >= 1, got {self.users}")
        if self.horizon_days < 1 or self.observation_days <= self.min_history_days:
            raise ValueError("ChurnSpec needs horizon_days >= 1 and "
                             "observation_days > min_history_days")
        if not 0 < self.base_keep * self.drift_range[1] <= 1:
            raise ValueError("ChurnSpec.base_keep * drift_range[1] must be in (0, 1]")

    @property
    def cutoff_ms(self) -> int:
        """The observation cutoff."""
        return self.start_ms + self.observation_days * DAY_MS

    @property
    def horizon_ms(self) -> int:
        """The label window."""
        return self.horizon_days * DAY_MS

    @property
    def label_gap_ms(self) -> int:
        """Start of the label window after the snapshot."""
        return self.label_gap_minutes * 60_000

    @property
    def end_ms(self) -> int:
        """Events are needed up to here (a label window after the cutoff)."""
        return self.cutoff_ms + self.label_gap_ms + self.horizon_ms


def workload_spec(spec: ChurnSpec) -> WorkloadSpec:
    """The underlying workload: long enough to cover the cutoff and the label window."""
    days = spec.observation_days + spec.horizon_days + 3
    distinct = days * spec.users * spec.sessions_per_user_per_day * _EVENTS_PER_SESSION * 1.1
    return WorkloadSpec(
        users=spec.users,
        events=math.ceil(distinct / 0.99),
        seed=spec.seed,
        start_ms=spec.start_ms,
        inactive_fraction=0.0,
        sessions_per_user_per_day=spec.sessions_per_user_per_day,
    )


# --- the hidden truth ---------------------------------------------------------------------------


@dataclass(frozen=True)
class UserPlan:
    """The hidden truth of one user: when and how likely each of their sessions is kept.

    Attributes:
        user_id: The user.
        plan: UserMetadata plan (drives the churn probability).
        churner: Whether the user was made to fade out and stop.
        join_ms: No session before this.
        stop_ms: A churner's stop (None for stayers).
        decay_ms: Length of the churner's fade before the stop.
        blips: (start, end) windows of activity after a churner's stop.
        return_ms: A returning churner is active again from here (None otherwise).
        quiet: A stayer's quiet spell (start, end), or None.
        lull: (start, end) of a commerce lull, or None.
        drift: Activity level of each day from the workload start.
        has_metadata: Whether the user's UserMetadata is handed to the features.
        snapshot_ms: Target time of the event snapshot.
        base_keep: Share of sessions kept at activity level 1.
        start_ms: Start of the workload (day 0 of ``drift``).
        lull_keep: Share of commerce events kept during the lull.
    """

    user_id: str
    plan: str
    churner: bool
    join_ms: int
    stop_ms: int | None
    decay_ms: int
    blips: tuple[tuple[int, int], ...]
    return_ms: int | None
    quiet: tuple[int, int] | None
    lull: tuple[int, int] | None
    drift: tuple[float, ...]
    has_metadata: bool
    snapshot_ms: int
    base_keep: float
    start_ms: int
    lull_keep: float

    def keep_probability(self, t: int) -> float:
        """Probability that a session starting at event time ``t`` is kept."""
        if t < self.join_ms:
            return 0.0
        if self.quiet is not None and self.quiet[0] <= t < self.quiet[1]:
            return 0.0
        day = min(max((t - self.start_ms) // DAY_MS, 0), len(self.drift) - 1)
        p = self.base_keep * self.drift[day]
        stop = self.stop_ms
        if stop is None or (self.return_ms is not None and t >= self.return_ms):
            return p
        if t >= stop:
            return p if any(lo <= t < hi for lo, hi in self.blips) else 0.0
        if t >= stop - self.decay_ms:
            return p * (stop - t) / self.decay_ms
        return p

    def keeps_commerce(self, t: int) -> float:
        """Probability that a cart, checkout or purchase event at ``t`` of a kept session stays."""
        lull = self.lull
        return self.lull_keep if lull is not None and lull[0] <= t < lull[1] else 1.0


def _rng(seed: int, stream: str) -> random.Random:
    digest = hashlib.sha256(f"nudgeflow-churn/{seed}/{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - simulation


def _uniform01(seed: int, key: str) -> float:
    digest = hashlib.blake2b(f"{seed}/{key}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


def user_plans(spec: ChurnSpec, users: list[dict[str, Any]]) -> dict[str, UserPlan]:
    """Draw every user's hidden plan (independent streams per user: stable under N changes)."""
    start, cutoff, end = spec.start_ms, spec.cutoff_ms, spec.end_ms
    days = (end - start) // DAY_MS + 2
    lo_level, hi_level = math.log(spec.drift_range[0]), math.log(spec.drift_range[1])
    plans = {}
    for meta in users:
        uid = meta["user_id"]
        rng = _rng(spec.seed, uid)
        level = rng.gauss(0.0, 0.3)
        drift = []
        for _ in range(days):
            level = min(max(level + rng.gauss(0.0, spec.drift_sigma), lo_level), hi_level)
            drift.append(math.exp(level))
        new_user = rng.random() < spec.new_user_fraction
        join = start
        if new_user:
            join = start + int(rng.random() * (cutoff - spec.min_history_days * DAY_MS - start))
        p_churn = spec.churn_by_plan.get(meta["plan"], 0.3)
        p_churn = min(p_churn + (spec.new_user_churn_bonus if new_user else 0.0), 0.9)
        churner = rng.random() < p_churn
        stop = None
        decay = 0
        blips: list[tuple[int, int]] = []
        back = None
        quiet = lull = None
        if churner:
            first = join + 3 * DAY_MS
            last = cutoff + int(spec.stop_after_cutoff_days * DAY_MS)
            stop = first + int(rng.random() * (last - first))
            decay = int(rng.uniform(*spec.decay_days) * DAY_MS)
            if rng.random() < spec.blip_fraction and stop < end:
                for _ in range(1 + (rng.random() < 0.4)):
                    b = stop + int(rng.random() * (end - stop))
                    blips.append((b, b + int(spec.blip_days * DAY_MS)))
            if rng.random() < spec.return_fraction:
                back = stop + int(rng.uniform(*spec.return_after_days) * DAY_MS)
            lull = (stop - decay - int(rng.uniform(*spec.lull_lead_days) * DAY_MS), stop)
        else:
            if rng.random() < spec.quiet_fraction:
                q = start + int(rng.random() * (end - start))
                quiet = (q, q + int(rng.uniform(*spec.quiet_days) * DAY_MS))
            if rng.random() < spec.lull_fraction:
                q = start + int(rng.random() * (end - start))
                lull = (q, q + int(rng.uniform(*spec.lull_days) * DAY_MS))
        plans[uid] = UserPlan(
            user_id=uid,
            plan=meta["plan"],
            churner=churner,
            join_ms=join,
            stop_ms=stop,
            decay_ms=max(decay, 1),
            blips=tuple(sorted(blips)),
            return_ms=back,
            quiet=quiet,
            lull=lull,
            drift=tuple(drift),
            has_metadata=rng.random() >= spec.missing_metadata_fraction,
            snapshot_ms=cutoff - int(rng.random() * spec.event_snapshot_days * DAY_MS),
            base_keep=spec.base_keep,
            start_ms=start,
            lull_keep=spec.lull_keep,
        )
    return plans


# --- the event stream ---------------------------------------------------------------------------


def kept_events(spec: ChurnSpec, plans: Mapping[str, UserPlan]) -> Iterator[dict[str, Any]]:
    """The workload's ClickEvents thinned by the plans, in emission order, up to ``end_ms``.

    A session (session id; an offline order; else the single event) is kept or dropped as a
    whole, decided at its first event: kept when a hash of (seed, key) falls below the plan's
    keep probability then. In a kept session, a cart, checkout or purchase event during a
    commerce lull is kept when a hash of (seed, event id) falls below ``lull_keep``. Duplicates
    share their original's decisions.

    Raises:
        RuntimeError: When the workload does not reach a day past ``spec.end_ms``.
    """
    decisions: dict[str, bool] = {}
    limit = spec.end_ms + DAY_MS
    reached = False
    for ev in generate_events(workload_spec(spec)):
        t = ev["event_time"]
        if t > limit:
            reached = True
            break
        key = ev["session_id"] or ev["order_id"] or ev["event_id"]
        keep = decisions.get(key)
        if keep is None:
            p = plans[ev["user_id"]].keep_probability(t)
            keep = decisions[key] = _uniform01(spec.seed, key) < p
        if not keep:
            continue
        if ev["event_type"] in _COMMERCE:
            p = plans[ev["user_id"]].keeps_commerce(t)
            if p < 1.0 and _uniform01(spec.seed, ev["event_id"]) >= p:
                continue
        yield ev
    if not reached:
        raise RuntimeError("the workload ended before the label window did; "
                           "raise workload_spec's margin")


# --- the serving path, replayed -----------------------------------------------------------------


def shipped_rates() -> CurrencyRates:
    """The shipped catalog's currency rate table, as the engine holds it after a job start.

    Read the way the job reads it (``load_files`` on ``udfs/catalog/currency-rates.yaml``, the
    file's DefinitionUpdate applied to ``Registries``): no second copy of the rates.

    Raises:
        udfs.definitions.diagnostics.InvalidDefinitions: the file does not validate.
    """
    registries = Registries.from_updates(load_files([RATES_FILE]).updates(0, "file"))
    table = registries.rates.get(RATES_ID)
    if not isinstance(table, CurrencyRates):
        raise RuntimeError(f"{RATES_FILE} holds no currency rate table")
    return table


def apply_event(state: UserFeatures | None, event: Mapping[str, Any],
                per_usd: Mapping[str, float] | None) -> tuple[UserFeatures | None, bool]:
    """Apply one event as the engine does: a duplicate is skipped (and not scored).

    The price is converted to USD first with the engine's conversion
    (``udfs.currency.rates.to_reference``) and ``per_usd``, the rate table in force (units per
    USD: ``shipped_rates().per_usd`` for the shipped catalog; None, no table: prices dropped).

    Returns:
        The state and whether the event was applied (False for a duplicate).
    """
    if state is not None and state.is_duplicate(event["event_id"]):
        return state, False
    converted, _ = to_reference(dict(event), per_usd)
    return update(state, converted), True


def snapshot_vector(state: UserFeatures | None, now_ms: int,
                    metadata: Mapping[str, Any] | None) -> list[float]:
    """The vector the operator scores at ``now_ms``: as of the user's newest event at least."""
    if state is not None:
        now_ms = max(now_ms, state.last_event_ms)
    return vector_list(state, now_ms, metadata)


def churn_label(times: list[int], now_ms: int, horizon_ms: int, gap_ms: int = 0) -> int:
    """1 when no time in the sorted ``times`` lies in ``(now + gap, now + gap + horizon]``."""
    start = now_ms + gap_ms
    i = bisect_right(times, start)
    return int(i == len(times) or times[i] > start + horizon_ms)


# --- labelled snapshots -------------------------------------------------------------------------


@dataclass(frozen=True)
class Snapshot:
    """One labelled row.

    Attributes:
        user_id: The user (train/validation/test are split by user).
        kind: ``cutoff`` or ``event`` (see the module docs).
        now_ms: Event time of the evaluation.
        vector: The feature vector, in ``FEATURE_NAMES`` order.
        label: 1 when the user has no event in ``(now_ms + gap, now_ms + gap + horizon]``.
        churner: The hidden truth (for analysis only; never a feature).
    """

    user_id: str
    kind: str
    now_ms: int
    vector: tuple[float, ...]
    label: int
    churner: bool


@dataclass(frozen=True)
class LabelledData:
    """The snapshots and how they came about.

    Attributes:
        spec: The simulation.
        rates: The currency rate table the prices were converted to USD with.
        snapshots: Cutoff snapshots in user order, then event snapshots in user order.
        plans: Every user's hidden plan.
        events_kept: Kept records (duplicates included) up to the end of the label window.
        events_fed: Records applied to the features (up to the cutoff, duplicates excluded).
    """

    spec: ChurnSpec
    rates: CurrencyRates
    snapshots: list[Snapshot]
    plans: dict[str, UserPlan]
    events_kept: int
    events_fed: int


def labelled_snapshots(spec: ChurnSpec, rates: CurrencyRates | None = None) -> LabelledData:
    """Simulate, replay every user's events up to the cutoff through the features, label.

    Args:
        spec: The simulation.
        rates: The currency rate table (default: the shipped catalog's, :func:`shipped_rates`).

    Returns:
        The labelled snapshots (see the module docs) and counts.
    """
    table = rates if rates is not None else shipped_rates()
    per_usd = table.per_usd
    users = generate_users(workload_spec(spec))
    plans = user_plans(spec, users)
    metadata = {u["user_id"]: (u if plans[u["user_id"]].has_metadata else None) for u in users}
    cutoff = spec.cutoff_ms
    states: dict[str, UserFeatures | None] = {}
    times: dict[str, list[int]] = {}
    at_event: dict[str, tuple[int, tuple[float, ...]]] = {}
    kept = fed = 0
    for ev in kept_events(spec, plans):
        kept += 1
        uid, t = ev["user_id"], ev["event_time"]
        times.setdefault(uid, []).append(t)
        if t > cutoff:
            continue
        state, applied = apply_event(states.get(uid), ev, per_usd)
        states[uid] = state
        fed += applied
        if applied and uid not in at_event and t >= plans[uid].snapshot_ms:
            now = max(t, state.last_event_ms) if state is not None else t
            at_event[uid] = (now, tuple(snapshot_vector(state, t, metadata[uid])))
    for ts in times.values():
        ts.sort()
    rows: list[Snapshot] = []
    horizon, gap = spec.horizon_ms, spec.label_gap_ms
    for uid in sorted(states):
        row = snapshot_vector(states[uid], cutoff, metadata[uid])
        rows.append(Snapshot(uid, "cutoff", cutoff, tuple(row),
                             churn_label(times[uid], cutoff, horizon, gap), plans[uid].churner))
    for uid in sorted(at_event):
        now, vec = at_event[uid]
        rows.append(Snapshot(uid, "event", now, vec, churn_label(times[uid], now, horizon, gap),
                             plans[uid].churner))
    return LabelledData(spec, table, rows, plans, kept, fed)
