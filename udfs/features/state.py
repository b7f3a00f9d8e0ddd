"""Behavioural features of one user: bounded keyed state, its update and its feature vector.

Inputs: valid ClickEvent dicts (the fields of ``schemas/ClickEvent.avsc``; times are epoch-ms
ints; extra keys such as ``ingest_time`` are ignored) and, when it has arrived, the user's
UserMetadata dict. State: one :class:`UserFeatures` per user, kept by the Flink adapter as bytes
(:func:`encode_state` / :func:`decode_state`, a versioned Avro record). Outputs: the feature
vector (:func:`vector`, :func:`vector_list`) in the order of :data:`FEATURE_SPEC` - the one spec
shared by serving and churn-model training - and :class:`FeatureView`, the
:class:`udfs.view.UserView` that segment conditions read.

Pure: no pyflink, no wall clock. ``now_ms`` is always an event time handed in (the event's or a
timer's). ``udfs/FEATURES.md`` is the written spec: the feature table, the bucket scheme, the
state-size bounds, where arrival order matters, and the dedup semantics.

Why the state is packed: fastavro costs about half a microsecond per decoded item, so a state of
a few hundred counters and a few dozen recent events as Avro arrays of records costs hundreds of
microseconds per event. The Avro record therefore has twenty flat fields, most of them
``bytes`` holding little-endian numeric arrays whose layout the field docs spell out; encoding
and decoding are a few ``array.frombytes``/``tobytes`` calls.
"""

from __future__ import annotations

import hashlib
import io
import math
import sys
from array import array
from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from itertools import repeat
from typing import TYPE_CHECKING, Any, NamedTuple

import fastavro

from udfs.features.view import RecentEvent

if TYPE_CHECKING:
    from udfs.features.view import UserView

__all__ = [
    "DAY_MS",
    "DEFAULT_BOUNDS",
    "EVENT_TYPES",
    "FEATURE_NAMES",
    "FEATURE_SPEC",
    "HORIZONS",
    "HOUR_MS",
    "MAX_ID_BYTES",
    "NEVER_SECONDS",
    "SLOT_MS",
    "SOURCES",
    "STATE_SCHEMA",
    "STATE_SCHEMA_VERSION",
    "CartLine",
    "FeatureBounds",
    "FeatureSpec",
    "FeatureView",
    "UserFeatures",
    "decode_state",
    "encode_state",
    "expired",
    "horizon_start_ms",
    "max_state_bytes",
    "state_size_bytes",
    "update",
    "vector",
    "vector_list",
    "window_leave_ms",
]

# --- vocabulary ---------------------------------------------------------------------------------

#: ClickEvent ``EventType`` symbols (version 2), in schema order. Part of state version 1: the
#: counters are indexed by position here, so a new symbol means a new state version (append it).
EVENT_TYPES: tuple[str, ...] = (
    "PAGE_VIEW", "PRODUCT_VIEW", "SEARCH", "ADD_TO_CART", "REMOVE_FROM_CART", "CHECKOUT",
    "PURCHASE", "APP_OPEN", "STORE_VISIT", "UNKNOWN",
)
#: ClickEvent ``EventSource`` symbols, in schema order (same rule as EVENT_TYPES).
SOURCES: tuple[str, ...] = ("WEB", "MOBILE", "OFFLINE", "UNKNOWN")
_TYPE_INDEX = {name: i for i, name in enumerate(EVENT_TYPES)}
_SOURCE_INDEX = {name: i for i, name in enumerate(SOURCES)}
_UNKNOWN_TYPE = _TYPE_INDEX["UNKNOWN"]
_UNKNOWN_SOURCE = _SOURCE_INDEX["UNKNOWN"]
_MOBILE = _SOURCE_INDEX["MOBILE"]
_OFFLINE = _SOURCE_INDEX["OFFLINE"]

# --- time buckets -------------------------------------------------------------------------------

SLOT_MS = 5 * 60_000  #: width of the buckets behind the 1 h horizon
HOUR_MS = 3_600_000  #: width of the buckets behind the 24 h horizon
DAY_MS = 86_400_000  #: width of the (UTC) day buckets behind the 7 d and 30 d horizons
_SLOTS, _HOURS, _DAYS = 12, 24, 30  # ring sizes: 12 x 5 min = 1 h, 24 x 1 h, 30 x 1 d
_SLOT_OFF, _HOUR_OFF, _DAY_OFF = 0, _SLOTS, _SLOTS + _HOURS  # ring offsets inside a type block
_BLOCK = _SLOTS + _HOURS + _DAYS  # counters per event type (66)

#: Horizon label -> (bucket width in ms, number of buckets counted, including the current one).
HORIZONS: dict[str, tuple[int, int]] = {
    "1h": (SLOT_MS, 12),
    "24h": (HOUR_MS, 24),
    "7d": (DAY_MS, 7),
    "30d": (DAY_MS, 30),
}

#: Value of ``seconds_since_*`` when the thing never happened (10 years of 365 days).
NEVER_SECONDS = 10 * 365 * 86_400.0

_I32_MAX = 2**31 - 1
_M32 = 0xFFFFFFFF
_NAN = math.nan
_LITTLE = sys.byteorder == "little"
if array("i").itemsize != 4:  # pragma: no cover - every platform Flink runs on
    raise ImportError("udfs.features needs a 4-byte C int for its packed counters")


def horizon_start_ms(horizon: str, now_ms: int) -> int:
    """The earliest event time counted in ``horizon`` (``1h``, ``24h``, ``7d``, ``30d``) at now_ms.

    A horizon counts whole buckets: the bucket holding ``now_ms`` and the ones before it, e.g.
    1 h = the current 5-minute slot and the 11 before it (55 to 60 minutes of history).

    Args:
        horizon: One of :data:`HORIZONS`.
        now_ms: Event time of the evaluation.

    Returns:
        The first millisecond of the oldest bucket counted.
    """
    width, n = HORIZONS[horizon]
    return (now_ms // width - n + 1) * width


def window_leave_ms(horizon: str, event_time_ms: int) -> int:
    """The first evaluation time at which an event is no longer counted in ``horizon``.

    Args:
        horizon: One of :data:`HORIZONS`.
        event_time_ms: The event's time.

    Returns:
        Start of the bucket ``n`` buckets after the event's own (at most ``horizon`` later).
    """
    width, n = HORIZONS[horizon]
    return (event_time_ms // width + n) * width


# --- the feature spec ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSpec:
    """One entry of the feature vector.

    Attributes:
        name: Feature name (stable: the churn model and segment definitions refer to it).
        dtype: ``int`` (a count; still delivered as a float) or ``float``.
        default: The value when there is no data (no state, no metadata, never happened).
        unit: Unit of the value.
        description: What it measures, precisely enough to recompute it.
    """

    name: str
    dtype: str
    default: float
    unit: str
    description: str


_HORIZON_TEXT = {
    "1h": "the last hour (the current 5-minute slot and the 11 before it: 55-60 min)",
    "24h": "the last 24 h (the current clock hour and the 23 before it: 23-24 h)",
    "7d": "the last 7 days (the current UTC day and the 6 before it)",
    "30d": "the last 30 days (the current UTC day and the 29 before it)",
}


def _count_specs() -> list[FeatureSpec]:
    specs = []
    for label, what in [("total", "events of any type")] + [
        (t.lower(), f"{t} events") for t in EVENT_TYPES
    ]:
        for horizon in HORIZONS:
            specs.append(FeatureSpec(
                f"events_{label}_{horizon}", "int", 0.0, "events",
                f"Number of {what} in {_HORIZON_TEXT[horizon]}.",
            ))
    return specs


#: The feature vector, in order. Shared by serving and churn-model training: append new
#: features at the end and never reuse a name for a different meaning.
FEATURE_SPEC: tuple[FeatureSpec, ...] = (
    *_count_specs(),
    FeatureSpec("sessions_7d", "int", 0.0, "session-days",
                "Distinct (session id, UTC day) pairs among the events of the last 7 days: a "
                "session crossing midnight UTC counts on both days; events without a session "
                "(offline) add none; at most sessions_per_day (32) a day."),
    FeatureSpec("sessions_30d", "int", 0.0, "session-days",
                "As sessions_7d, over the last 30 days."),
    FeatureSpec("seconds_since_last_event", "float", NEVER_SECONDS, "s",
                "now - time of the latest event seen (0 if that is after now); NEVER_SECONDS "
                "without events."),
    FeatureSpec("seconds_since_last_purchase", "float", NEVER_SECONDS, "s",
                "now - time of the latest PURCHASE (0 if after now); NEVER_SECONDS if none."),
    FeatureSpec("seconds_since_last_add_to_cart", "float", NEVER_SECONDS, "s",
                "now - time of the latest ADD_TO_CART (0 if after now); NEVER_SECONDS if none."),
    FeatureSpec("days_since_first_event", "float", 0.0, "days",
                "now - time of the earliest event held in this state (state starts again "
                "after the inactivity TTL)."),
    FeatureSpec("cart_lines", "int", 0.0, "products",
                "Products in the cart: the cart events up to now applied in event-time order "
                "(see FEATURES.md); a line untouched for 30 UTC days has expired."),
    FeatureSpec("cart_items", "int", 0.0, "units", "Sum of quantities in the cart."),
    FeatureSpec("cart_value", "float", 0.0, "currency units",
                "Sum over cart lines of quantity x latest unit price (lines without a price "
                "add 0), in the events' currency, unconverted."),
    FeatureSpec("orders_30d", "int", 0.0, "orders",
                "Distinct (order id, UTC day) pairs among PURCHASE events of the last 30 days "
                "(a PURCHASE without order id is an order of its own; at most orders_per_day "
                "(16) a day)."),
    FeatureSpec("revenue_30d", "float", 0.0, "currency units",
                "Sum of price x quantity (quantity defaults to 1) of PURCHASE events of the "
                "last 30 days, in the events' currency, unconverted."),
    FeatureSpec("orders_total", "int", 0.0, "orders",
                "Orders since the state began (see days_since_first_event): a PURCHASE is a "
                "new order unless its order id was seen in the last 30 days."),
    FeatureSpec("revenue_total", "float", 0.0, "currency units",
                "Purchase revenue since the state began, as revenue_30d."),
    FeatureSpec("avg_order_value", "float", 0.0, "currency units",
                "revenue_total / orders_total; 0 without orders."),
    FeatureSpec("mobile_share_30d", "float", 0.0, "ratio",
                "Share of the last 30 days' events with source MOBILE; 0 without events."),
    FeatureSpec("offline_share_30d", "float", 0.0, "ratio",
                "Share of the last 30 days' events with source OFFLINE; 0 without events."),
    FeatureSpec("has_metadata", "int", 0.0, "flag",
                "1 when the user's UserMetadata has arrived, else 0."),
    FeatureSpec("days_since_signup", "float", -1.0, "days",
                "now - UserMetadata.signup_time (0 if signup is after now); -1 without "
                "metadata."),
    FeatureSpec("lifetime_value", "float", 0.0, "USD",
                "UserMetadata.lifetime_value; 0 without metadata."),
)
#: Feature names in vector order.
FEATURE_NAMES: tuple[str, ...] = tuple(spec.name for spec in FEATURE_SPEC)
_DEFAULTS: dict[str, float] = {spec.name: float(spec.default) for spec in FEATURE_SPEC}
_COUNT_NAMES: tuple[tuple[str, str, str, str], ...] = tuple(
    (f"events_{t.lower()}_1h", f"events_{t.lower()}_24h", f"events_{t.lower()}_7d",
     f"events_{t.lower()}_30d")
    for t in EVENT_TYPES
)
#: Count feature name -> (event-type index, None for all types; horizon).
_COUNT_FEATURES: dict[str, tuple[int | None, str]] = {
    f"events_{label}_{horizon}": (ti, horizon)
    for label, ti in [("total", None), *((t.lower(), i) for i, t in enumerate(EVENT_TYPES))]
    for horizon in HORIZONS
}
#: Defaults of the features that are not counts.
_REST_DEFAULTS: dict[str, float] = {
    name: value for name, value in _DEFAULTS.items() if name not in _COUNT_FEATURES
}

# --- bounds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureBounds:
    """What keeps a user's state bounded, and the lateness that arrival order may have.

    Attributes:
        lateness_ms: Cart events are resolved in event-time order when they arrive at most
            this far behind the user's newest event time (rounded up to whole 5-minute slots);
            later ones are applied on arrival. Keep it above the job's watermark
            out-of-orderness plus allowed lateness (5 s + 60 s by default).
        dedup_window_ms: Event ids are remembered for this long behind the newest event time
            (rounded up to whole 5-minute slots) ...
        dedup_ids: ... and at most this many (the newest by event time, then id hash).
        recent_events: Length of the recent-events log (newest by event time, within 30 days).
        cart_lines: Products held in the cart; adding one more drops the line updated longest
            ago.
        cart_pending: Cart events held for event-time resolution; beyond it the oldest is
            applied early.
        sessions_per_day: Distinct session ids kept per UTC day (the smallest hashes); a busier
            day counts this many.
        orders_per_day: Distinct order ids kept per UTC day, likewise.
    """

    lateness_ms: int = 10 * 60_000
    dedup_window_ms: int = 60 * 60_000
    dedup_ids: int = 512
    recent_events: int = 50
    cart_lines: int = 50
    cart_pending: int = 32
    sessions_per_day: int = 32
    orders_per_day: int = 16

    @property
    def lateness_slots(self) -> int:
        """lateness_ms in whole slots, rounded up."""
        return -(-self.lateness_ms // SLOT_MS)

    @property
    def dedup_slots(self) -> int:
        """dedup_window_ms in whole slots, rounded up."""
        return -(-self.dedup_window_ms // SLOT_MS)


DEFAULT_BOUNDS = FeatureBounds()

#: Identifiers kept in state (event, product, category) are cut to this many UTF-8 bytes, and
#: currency codes to _MAX_CURRENCY_BYTES, so that the state has a hard size bound.
MAX_ID_BYTES = 64
_MAX_CURRENCY_BYTES = 8


def _clip(value: str, limit: int = MAX_ID_BYTES) -> str:
    """A string as stored in state: separators (NUL, U+001F) replaced, cut to ``limit`` bytes."""
    if "\x00" in value or "\x1f" in value:
        value = value.replace("\x00", "\ufffd").replace("\x1f", "\ufffd")
    if len(value) * 4 <= limit:
        return value
    raw = value.encode()
    if len(raw) <= limit:
        return value
    return raw[:limit].decode("utf-8", "ignore")


def _hash64(value: str) -> int:
    """A stable signed 64-bit hash (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(value.encode(), digest_size=8).digest(), "little",
                          signed=True)


# --- state --------------------------------------------------------------------------------------


class CartLine(NamedTuple):
    """One product in the cart."""

    quantity: int
    price: float | None  # unit price of the latest ADD_TO_CART that carried one
    updated_ms: int  # event time of the latest ADD/REMOVE applied to the line


class _CartOp(NamedTuple):
    """A cart event waiting for event-time resolution (sorted by time, then event id)."""

    event_time: int
    event_id: str
    kind: int  # index into _CART_KINDS
    product_id: str | None
    quantity: int | None
    price: float | None


_CART_KINDS = ("ADD_TO_CART", "REMOVE_FROM_CART", "PURCHASE")
_ADD, _REMOVE, _PURCHASE = 0, 1, 2
_CART_KIND_OF = {_TYPE_INDEX[name]: i for i, name in enumerate(_CART_KINDS)}

#: Field separator inside a recent-events row (rows are joined with NUL in the encoding).
_SEP = "\x1f"


def _new_ring(size: int, typecode: str = "i") -> array[int]:
    return array(typecode, bytes(array(typecode).itemsize * size))


@dataclass
class UserFeatures:
    """Everything the features of one user are computed from; bounded (see FeatureBounds).

    Time: buckets are aligned to the epoch (UTC) and held in rings at index ``bucket % size``;
    every ring's newest bucket is the one holding ``last_event_ms`` (the newest event time
    seen) and buckets older than a ring's span are zero. An event too old for a ring is still
    counted in the longer rings it fits (an event 2 h old counts in 24 h, 7 d and 30 d, not in
    1 h). Nothing is kept of events older than 30 days except the lifetime totals.

    Arrival order does not matter (the same set of events gives the same state and the same
    encoded bytes) for the counters, recency (max/min), sessions and orders (sets of (day, id
    hash); a full day keeps its smallest hashes), revenue (integer milli-units, so sums are
    exact), the recent-events log (the newest N by (event time, event id)) and the dedup memory
    (the newest N of a set), as long as the events are within the spans of the rings they land
    in. It still matters:

    * for the cart, when a cart event arrives more than ``lateness_ms`` (in whole slots)
      behind the newest event time: it is applied to the resolved cart at once, after cart
      events that are later in event time. Within that lateness, cart events are held and
      applied in (event time, event id) order, so even ties in event time are resolved the same
      way whatever the arrival order;
    * for ``orders_total``, which counts a PURCHASE as a new order when its order id is not
      held for any of the last 30 days: an order id reused more than 30 days apart, a line
      older than 30 days, or a line on a day whose ``orders_per_day`` cap dropped its order id
      count again, in arrival order;
    * beyond the caps: more than ``cart_pending`` held cart events, or an add to a full cart,
      resolve early; dedup misses ids it no longer holds (see ``is_duplicate``).

    Attributes:
        first_event_ms: Earliest event time seen; 0 before the first event.
        last_event_ms: Newest event time seen (the rings' head); 0 before the first event.
        last_purchase_ms: Newest PURCHASE time; 0 if none.
        last_add_to_cart_ms: Newest ADD_TO_CART time; 0 if none.
        orders_total: Distinct orders since the state began.
        revenue_total_milli: Purchase revenue since the state began, in 1/1000 currency units.
        type_counts: Event-type index -> 66 int32 counters: 12 five-minute slots, 24 hours,
            30 UTC days (three rings). Only types with a non-zero counter are present.
        source_counts: Source index -> 30 int32 day counters (a ring); non-zero ones only.
        revenue_days: 30 int64: purchase revenue per day in milli-units (ring); None while zero.
        session_keys: Sorted ``day << 32 | hash32(session_id)``: the sessions seen on each day
            of the 30, at most ``sessions_per_day`` a day (the smallest hashes).
        order_keys: Sorted ``day << 32 | hash32(order id)``, likewise (``orders_per_day``).
        seen_hashes: Sorted 64-bit hashes of the event ids remembered for dedup.
        seen_slots: The 5-minute slot of each remembered id's event (parallel to seen_hashes).
        recent: The recent-events log, one row per event, sorted: the event time as 15 zero-
            padded digits, event_id, event_type, source, product_id, category, price (repr),
            quantity, currency, joined with U+001F ('' = null). Sorting the rows sorts by event
            time, then by event id.
        cart: The cart resolved up to the held cart events: product id -> line.
        cart_pending: Cart events not yet resolved, in (event time, event id) order.
    """

    first_event_ms: int = 0
    last_event_ms: int = 0
    last_purchase_ms: int = 0
    last_add_to_cart_ms: int = 0
    orders_total: int = 0
    revenue_total_milli: int = 0
    type_counts: dict[int, array[int]] = field(default_factory=dict)
    source_counts: dict[int, array[int]] = field(default_factory=dict)
    revenue_days: array[int] | None = None
    session_keys: array[int] = field(default_factory=lambda: array("q"))
    order_keys: array[int] = field(default_factory=lambda: array("q"))
    seen_hashes: array[int] = field(default_factory=lambda: array("q"))
    seen_slots: array[int] = field(default_factory=lambda: array("i"))
    recent: list[str] = field(default_factory=list)
    cart: dict[str, CartLine] = field(default_factory=dict)
    cart_pending: list[_CartOp] = field(default_factory=list)

    def is_duplicate(self, event_id: str) -> bool:
        """Whether an event with this id was already applied (and is still remembered).

        Ids are remembered (as 64-bit hashes) while their event is within ``dedup_window_ms``
        of the newest event time, up to ``dedup_ids`` of them (the newest); an older duplicate
        is not recognised and is counted again. A hash collision (odds about 3e-17 per check
        with 512 ids held) would drop a genuine event.

        Args:
            event_id: The ClickEvent's event_id.

        Returns:
            True if an event with this id was applied.
        """
        seen = self.seen_hashes
        h = _hash64(event_id)
        i = bisect_left(seen, h)
        return i < len(seen) and seen[i] == h

    def recent_events(self, now_ms: int | None = None) -> tuple[RecentEvent, ...]:
        """The recent-events log, oldest first; only events up to ``now_ms`` when given.

        Args:
            now_ms: Evaluation time, or None for the whole log.

        Returns:
            At most ``recent_events`` events of the last 30 days (UTC day buckets).
        """
        rows = self.recent
        if now_ms is not None:  # rows sort by their zero-padded time first
            rows = rows[: bisect_left(rows, f"{now_ms + 1:015d}")]
        return tuple(map(_parse_row, rows))

    def cart_at(self, now_ms: int | None = None) -> dict[str, CartLine]:
        """The cart after the cart events up to ``now_ms`` (all when None), in event-time order.

        Args:
            now_ms: Evaluation time, or None for every cart event seen.

        Returns:
            Product id -> line; a new dict (the state is not changed).
        """
        cart = dict(self.cart)
        for op in self.cart_pending:
            if now_ms is not None and op.event_time > now_ms:
                break
            _apply_cart(cart, op, None)
        return cart


def _row(t: int, event_id: str, ti: int, si: int, event: Mapping[str, Any]) -> str:
    """A recent-events row (see UserFeatures.recent)."""
    price = event.get("price")
    quantity = event.get("quantity")
    product_id = event.get("product_id")
    category = event.get("category")
    currency = event.get("currency")
    return _SEP.join((
        f"{t:015d}", event_id, EVENT_TYPES[ti], SOURCES[si],
        _clip(product_id) if product_id else "",
        _clip(category) if category else "",
        repr(float(price)) if price is not None and price == price else "",
        str(int(quantity)) if quantity else "",
        _clip(currency, _MAX_CURRENCY_BYTES) if currency else "",
    ))


@lru_cache(maxsize=1 << 16)
def _parse_row(row: str) -> RecentEvent:
    # cached: a row stays in a user's log for up to 50 events and is parsed at each evaluation
    # that reads recent events (3 µs a parse, 0.1 µs a cache hit); RecentEvent is immutable
    t, event_id, event_type, source, product_id, category, price, quantity, currency = (
        row.split(_SEP))
    return RecentEvent(
        event_id, event_type, int(t), source, product_id or None, category or None,
        float(price) if price else None, int(quantity) if quantity else None, currency or None,
    )


def _op_key(op: _CartOp) -> tuple[int, str]:
    return op.event_time, op.event_id


# --- update -------------------------------------------------------------------------------------


def update(
    state: UserFeatures | None, event: Mapping[str, Any], bounds: FeatureBounds = DEFAULT_BOUNDS
) -> UserFeatures:
    """Apply one valid ClickEvent to a user's features.

    Mutates and returns ``state`` (a new UserFeatures when ``state`` is None); never changes
    ``event``. A duplicate (``state.is_duplicate(event_id)``) and an event with a non-positive
    event time (validation rejects those upstream) leave the state as it was.

    Args:
        state: The user's features, None for a user without state.
        event: A ClickEvent dict.
        bounds: The state bounds and the cart lateness.

    Returns:
        The updated state.
    """
    if state is None:
        state = UserFeatures()
    event_id = event["event_id"]
    h = _hash64(event_id)
    seen = state.seen_hashes
    pos = bisect_left(seen, h)
    if pos < len(seen) and seen[pos] == h:
        return state
    t = int(event["event_time"])
    if t <= 0:
        return state
    ti = _TYPE_INDEX.get(event.get("event_type") or "", _UNKNOWN_TYPE)
    si = _SOURCE_INDEX.get(event.get("source") or "", _UNKNOWN_SOURCE)

    head = state.last_event_ms
    if head == 0:
        state.first_event_ms = state.last_event_ms = head = t
    elif t > head:
        if t // SLOT_MS != head // SLOT_MS:
            _advance(state, head, t, bounds)
            seen = state.seen_hashes  # pruning may have replaced it
            pos = bisect_left(seen, h)
        state.last_event_ms = head = t
    elif t < state.first_event_ms:
        state.first_event_ms = t
    slot, day = t // SLOT_MS, t // DAY_MS
    head_slot, head_day = head // SLOT_MS, head // DAY_MS

    if slot >= head_slot - bounds.dedup_slots:  # remember the id while it is in the window
        seen.insert(pos, h)
        state.seen_slots.insert(pos, slot)
        if len(seen) > bounds.dedup_ids:
            _evict_oldest_id(state)

    clipped_id = _clip(event_id)
    in_days = day > head_day - _DAYS
    if in_days:
        block = state.type_counts.get(ti)
        if block is None:
            block = state.type_counts[ti] = _new_ring(_BLOCK)
        if slot > head_slot - _SLOTS:
            _bump(block, _SLOT_OFF + slot % _SLOTS)
        hour = t // HOUR_MS
        if hour > head // HOUR_MS - _HOURS:
            _bump(block, _HOUR_OFF + hour % _HOURS)
        _bump(block, _DAY_OFF + day % _DAYS)
        sblock = state.source_counts.get(si)
        if sblock is None:
            sblock = state.source_counts[si] = _new_ring(_DAYS)
        _bump(sblock, day % _DAYS)
        session_id = event.get("session_id")
        if session_id:
            _add_distinct(state.session_keys, day, _hash64(session_id) & _M32,
                          bounds.sessions_per_day)
        _log(state.recent, t, clipped_id, ti, si, event, bounds.recent_events)

    kind = _CART_KIND_OF.get(ti)
    if kind is not None:
        if kind == _ADD:
            state.last_add_to_cart_ms = max(state.last_add_to_cart_ms, t)
        elif kind == _PURCHASE:
            state.last_purchase_ms = max(state.last_purchase_ms, t)
            _purchase(state, day, in_days, event_id, event, bounds)
        _cart_event(state, t, slot, head_slot, kind, clipped_id, event, bounds)
    return state


def _bump(ring: array[int], index: int) -> None:
    if ring[index] < _I32_MAX:  # saturate rather than overflow
        ring[index] += 1


def _ring_clear(ring: array[int], off: int, size: int, old: int, new: int) -> None:
    """Zero the buckets ``old + 1 .. new`` of a ring whose head moves from ``old`` to ``new``."""
    if new - old == 1:
        ring[off + new % size] = 0
        return
    if new - old >= size:
        ring[off:off + size] = _new_ring(size, ring.typecode)
        return
    a, b = (old + 1) % size, new % size
    if a <= b:
        ring[off + a:off + b + 1] = _new_ring(b - a + 1, ring.typecode)
    else:
        ring[off + a:off + size] = _new_ring(size - a, ring.typecode)
        ring[off:off + b + 1] = _new_ring(b + 1, ring.typecode)


def _window(off: int, size: int, head: int, lo: int, hi: int) -> tuple[slice, slice]:
    """Where buckets ``lo..hi`` lie in a ring whose newest bucket is ``head``: two slices."""
    lo = max(lo, head - size + 1)
    hi = min(hi, head)
    if lo > hi:
        return _EMPTY, _EMPTY
    a, b = lo % size, hi % size
    if a <= b:
        return slice(off + a, off + b + 1), _EMPTY
    return slice(off + a, off + size), slice(off, off + b + 1)


_EMPTY = slice(0, 0)


def _advance(state: UserFeatures, old: int, new: int, bounds: FeatureBounds) -> None:
    """Move every ring's head from event time ``old`` to ``new`` (another 5-minute slot).

    Everything is pruned at slot boundaries only (hour and day boundaries are slot
    boundaries), so the state after a given newest event time does not depend on the event
    times the head passed through on the way.
    """
    s0, s1 = old // SLOT_MS, new // SLOT_MS
    h0, h1 = old // HOUR_MS, new // HOUR_MS
    d0, d1 = old // DAY_MS, new // DAY_MS
    for block in state.type_counts.values():
        _ring_clear(block, _SLOT_OFF, _SLOTS, s0, s1)
        if h1 > h0:
            _ring_clear(block, _HOUR_OFF, _HOURS, h0, h1)
        if d1 > d0:
            _ring_clear(block, _DAY_OFF, _DAYS, d0, d1)
    seen_slots = state.seen_slots
    keep_from = s1 - bounds.dedup_slots
    if seen_slots and min(seen_slots) < keep_from:
        keep = [i for i, s in enumerate(seen_slots) if s >= keep_from]
        hashes = state.seen_hashes
        state.seen_hashes = array("q", [hashes[i] for i in keep])
        state.seen_slots = array("i", [seen_slots[i] for i in keep])
    pending = state.cart_pending
    fold_before = (s1 - bounds.lateness_slots) * SLOT_MS
    if pending and pending[0].event_time < fold_before:  # beyond the lateness: resolve them
        n = bisect_left(pending, fold_before, key=lambda op: op.event_time)
        for op in pending[:n]:
            _apply_cart(state.cart, op, bounds.cart_lines)
        del pending[:n]
    if d1 > d0:  # after resolving the cart: lines resolved now may have expired
        _prune_days(state, d0, d1)


def _prune_days(state: UserFeatures, d0: int, d1: int) -> None:
    """The day rings move from day d0 to d1: drop what left the 30 days."""
    for index, block in list(state.type_counts.items()):
        if not any(block):
            del state.type_counts[index]
    for index, sblock in list(state.source_counts.items()):
        _ring_clear(sblock, 0, _DAYS, d0, d1)
        if not any(sblock):
            del state.source_counts[index]
    revenue = state.revenue_days
    if revenue is not None:
        _ring_clear(revenue, 0, _DAYS, d0, d1)
        if not any(revenue):
            state.revenue_days = None
    first_day = d1 - _DAYS + 1
    for keys in (state.session_keys, state.order_keys):
        if keys and keys[0] < first_day << 32:
            del keys[:bisect_left(keys, first_day << 32)]
    recent = state.recent
    first_ms = f"{first_day * DAY_MS:015d}"
    if recent and recent[0] < first_ms:
        del recent[:bisect_left(recent, first_ms)]
    cart = state.cart
    first_ms_int = first_day * DAY_MS
    for product_id in [p for p, line in cart.items() if line.updated_ms < first_ms_int]:
        del cart[product_id]


def _evict_oldest_id(state: UserFeatures) -> None:
    """Drop the remembered id with the smallest (slot, hash): the cap keeps the newest."""
    slots, hashes = state.seen_slots, state.seen_hashes
    oldest = slots.index(min(slots))  # ids are in hash order: the first is the smallest hash
    del slots[oldest]
    del hashes[oldest]


def _add_distinct(keys: array[int], day: int, h32: int, cap: int) -> bool:
    """Add ``day << 32 | h32`` to sorted keys, keeping the ``cap`` smallest hashes of each day.

    Returns:
        True if the key is held now and was not before.
    """
    key = (day << 32) | h32
    i = bisect_left(keys, key)
    if i < len(keys) and keys[i] == key:
        return False
    end = bisect_left(keys, (day + 1) << 32, lo=i)
    if end - bisect_left(keys, day << 32, hi=i) >= cap:
        if i == end:  # larger than every hash the full day holds
            return False
        del keys[end - 1]  # the day's largest makes room
    keys.insert(i, key)
    return True


def _log(rows: list[str], t: int, event_id: str, ti: int, si: int, event: Mapping[str, Any],
         cap: int) -> None:
    """Insert the event into the recent log (the newest ``cap`` rows)."""
    row = _row(t, event_id, ti, si, event)
    if not rows or row > rows[-1]:
        rows.append(row)
    else:
        if len(rows) >= cap and row < rows[0]:
            return
        i = bisect_left(rows, row)
        prefix = row[:row.index(_SEP, 16) + 1]  # time and id
        if i < len(rows) and rows[i].startswith(prefix) or i and rows[i - 1].startswith(prefix):
            return  # the same id again, beyond the dedup memory: keep the log unique
        rows.insert(i, row)
    if len(rows) > cap:
        del rows[0]


def _purchase(state: UserFeatures, day: int, in_days: bool, event_id: str,
              event: Mapping[str, Any], bounds: FeatureBounds) -> None:
    order_id = event.get("order_id") or "\x00event:" + event_id  # no order id: its own order
    price = event.get("price")
    milli = 0
    if price is not None and price == price:
        milli = round(float(price) * (event.get("quantity") or 1) * 1000)
    state.revenue_total_milli += milli
    h32 = _hash64(order_id) & _M32
    keys = state.order_keys
    if not any(k & _M32 == h32 for k in keys):  # not held for any of the 30 days
        state.orders_total += 1
    if not in_days:
        return
    _add_distinct(keys, day, h32, bounds.orders_per_day)
    if milli:
        if state.revenue_days is None:
            state.revenue_days = _new_ring(_DAYS, "q")
        state.revenue_days[day % _DAYS] += milli


def _cart_event(state: UserFeatures, t: int, slot: int, head_slot: int, kind: int,
                event_id: str, event: Mapping[str, Any], bounds: FeatureBounds) -> None:
    product_id = event.get("product_id")
    price = event.get("price")
    op = _CartOp(
        t, event_id, kind, _clip(product_id) if product_id else None,
        int(event["quantity"]) if event.get("quantity") else None,
        float(price) if price is not None and price == price else None,
    )
    if slot < head_slot - bounds.lateness_slots:  # beyond the lateness: applied as it comes
        _apply_cart(state.cart, op, bounds.cart_lines)
        return
    pending = state.cart_pending
    if not pending or _op_key(op) > _op_key(pending[-1]):
        pending.append(op)
    else:
        insort(pending, op, key=_op_key)
    if len(pending) > bounds.cart_pending:
        _apply_cart(state.cart, pending.pop(0), bounds.cart_lines)


def _apply_cart(cart: dict[str, CartLine], op: _CartOp, max_lines: int | None) -> None:
    """Apply one cart event to a cart (in event-time order)."""
    product_id = op.product_id
    if op.kind == _PURCHASE:
        if product_id is None:
            cart.clear()
        else:
            cart.pop(product_id, None)
        return
    if product_id is None:
        return
    line = cart.get(product_id)
    if op.kind == _ADD:
        quantity = op.quantity or 1
        if line is None:
            if max_lines is not None and len(cart) >= max_lines:
                del cart[min(cart, key=lambda p: (cart[p].updated_ms, p))]
            cart[product_id] = CartLine(quantity, op.price, op.event_time)
        else:
            cart[product_id] = CartLine(
                min(line.quantity + quantity, _I32_MAX),
                op.price if op.price is not None else line.price,
                max(line.updated_ms, op.event_time),
            )
    elif line is not None:  # REMOVE_FROM_CART; without a quantity the whole line goes
        remaining = line.quantity - op.quantity if op.quantity else 0
        if remaining <= 0:
            del cart[product_id]
        else:
            cart[product_id] = CartLine(remaining, line.price,
                                        max(line.updated_ms, op.event_time))


# --- the vector ---------------------------------------------------------------------------------


def vector(
    state: UserFeatures | None, now_ms: int, metadata: Mapping[str, Any] | None = None
) -> dict[str, float]:
    """The feature vector of a user at event time ``now_ms``.

    Windows are relative to ``now_ms``: buckets after the one holding ``now_ms`` are not
    counted (a late event is evaluated as of its own time, as far as the buckets allow), and
    buckets that fell out of the state's rings count as empty.

    Args:
        state: The user's features, None for a user without events.
        now_ms: Event time of the evaluation.
        metadata: The user's UserMetadata dict, None if it has not arrived.

    Returns:
        Feature name -> value (a float), for every name in FEATURE_NAMES.
    """
    out = dict(_DEFAULTS)
    if state is not None and state.last_event_ms:
        _counts(out, state, now_ms)
    _rest(out, state, now_ms, metadata)
    return out


def vector_list(
    state: UserFeatures | None, now_ms: int, metadata: Mapping[str, Any] | None = None
) -> list[float]:
    """The feature vector as a list in FEATURE_NAMES order (the churn model's input).

    Args:
        state: The user's features, None for a user without events.
        now_ms: Event time of the evaluation.
        metadata: The user's UserMetadata dict, None if it has not arrived.

    Returns:
        One float per FEATURE_SPEC entry.
    """
    values = vector(state, now_ms, metadata)
    return [values[name] for name in FEATURE_NAMES]


def _seconds_since(then: int, now_ms: int) -> float:
    return max(0, now_ms - then) / 1000.0 if then else NEVER_SECONDS


#: Horizon -> (offset, size) of the ring that holds it inside a type block.
_RING_OF = {"1h": (_SLOT_OFF, _SLOTS), "24h": (_HOUR_OFF, _HOURS), "7d": (_DAY_OFF, _DAYS),
            "30d": (_DAY_OFF, _DAYS)}


def _count(state: UserFeatures, now: int, ti: int | None, horizon: str) -> int:
    """One count feature: events of type ``ti`` (all when None) in ``horizon`` at ``now``."""
    width, n = HORIZONS[horizon]
    off, size = _RING_OF[horizon]
    bucket = now // width
    a, b = _window(off, size, state.last_event_ms // width, bucket - n + 1, bucket)
    if ti is not None:
        block = state.type_counts.get(ti)
        return 0 if block is None else sum(block[a]) + sum(block[b])
    return sum(sum(block[a]) + sum(block[b]) for block in state.type_counts.values())


def _counts(out: dict[str, float], state: UserFeatures, now: int) -> None:
    """Every count feature of a state with events."""
    head = state.last_event_ms
    hd, nd = head // DAY_MS, now // DAY_MS
    ns, nh = now // SLOT_MS, now // HOUR_MS
    a1, b1 = _window(_SLOT_OFF, _SLOTS, head // SLOT_MS, ns - _SLOTS + 1, ns)
    a24, b24 = _window(_HOUR_OFF, _HOURS, head // HOUR_MS, nh - _HOURS + 1, nh)
    a7, b7 = _window(_DAY_OFF, _DAYS, hd, nd - 6, nd)
    a30, b30 = _window(_DAY_OFF, _DAYS, hd, nd - _DAYS + 1, nd)
    t1 = t24 = t7 = t30 = 0
    for ti, block in state.type_counts.items():
        c1 = sum(block[a1]) + sum(block[b1])
        c24 = sum(block[a24]) + sum(block[b24])
        c7 = sum(block[a7]) + sum(block[b7])
        c30 = sum(block[a30]) + sum(block[b30])
        n1, n24, n7, n30 = _COUNT_NAMES[ti]
        out[n1], out[n24], out[n7], out[n30] = float(c1), float(c24), float(c7), float(c30)
        t1 += c1
        t24 += c24
        t7 += c7
        t30 += c30
    out["events_total_1h"], out["events_total_24h"] = float(t1), float(t24)
    out["events_total_7d"], out["events_total_30d"] = float(t7), float(t30)


def _rest(out: dict[str, float], state: UserFeatures | None, now: int,
          metadata: Mapping[str, Any] | None) -> None:
    """Every feature but the counts (``out`` holds their defaults)."""
    if metadata is not None:
        out["has_metadata"] = 1.0
        signup = metadata.get("signup_time")
        if signup is not None:
            out["days_since_signup"] = max(0, now - int(signup)) / DAY_MS
        ltv = metadata.get("lifetime_value")
        if ltv is not None:
            out["lifetime_value"] = float(ltv)
    if state is None or not state.last_event_ms:
        return
    head = state.last_event_ms
    hd, nd = head // DAY_MS, now // DAY_MS
    d30a, d30b = _window(0, _DAYS, hd, nd - _DAYS + 1, nd)
    out["sessions_7d"] = float(_count_days(state.session_keys, nd - 6, nd))
    out["sessions_30d"] = float(_count_days(state.session_keys, nd - _DAYS + 1, nd))
    out["orders_30d"] = float(_count_days(state.order_keys, nd - _DAYS + 1, nd))
    if state.revenue_days is not None:
        out["revenue_30d"] = (sum(state.revenue_days[d30a]) + sum(state.revenue_days[d30b])) / 1000
    sources = {i: sum(ring[d30a]) + sum(ring[d30b]) for i, ring in state.source_counts.items()}
    events_30d = sum(sources.values())  # = events_total_30d: every event has one source
    if events_30d:
        out["mobile_share_30d"] = sources.get(_MOBILE, 0) / events_30d
        out["offline_share_30d"] = sources.get(_OFFLINE, 0) / events_30d

    out["seconds_since_last_event"] = _seconds_since(head, now)
    out["seconds_since_last_purchase"] = _seconds_since(state.last_purchase_ms, now)
    out["seconds_since_last_add_to_cart"] = _seconds_since(state.last_add_to_cart_ms, now)
    out["days_since_first_event"] = max(0, now - state.first_event_ms) / DAY_MS

    cart = state.cart_at(now) if state.cart_pending else state.cart
    if cart:
        oldest = (nd - _DAYS + 1) * DAY_MS  # lines untouched for 30 days have expired
        lines = items = 0
        value = 0.0
        for product_id in sorted(cart):  # a fixed order keeps the float sum reproducible
            line = cart[product_id]
            if line.updated_ms < oldest:
                continue
            lines += 1
            items += line.quantity
            if line.price is not None:
                value += line.quantity * line.price
        out["cart_lines"], out["cart_items"], out["cart_value"] = float(lines), float(items), value

    out["orders_total"] = float(state.orders_total)
    out["revenue_total"] = state.revenue_total_milli / 1000
    if state.orders_total:
        out["avg_order_value"] = state.revenue_total_milli / 1000 / state.orders_total


def _count_days(keys: array[int], first_day: int, last_day: int) -> int:
    """How many (day, hash) keys fall on days ``first_day..last_day``."""
    return bisect_left(keys, (last_day + 1) << 32) - bisect_left(keys, first_day << 32)


# --- the view segments read ---------------------------------------------------------------------


class FeatureView:
    """A read-only :class:`udfs.view.UserView` of one user at one event time.

    Features are computed on first use and cached (a count on its own, the others together),
    as are the recent events: build a new view per evaluation.
    """

    def __init__(
        self,
        state: UserFeatures | None,
        metadata: Mapping[str, Any] | None,
        now_ms: int,
        churn_score: float | None = None,
        vector: list[float] | None = None,
    ) -> None:
        self._state = state
        self._metadata = metadata
        self._now_ms = now_ms
        self._churn_score = churn_score
        # ``vector``: the vector_list of the same state, metadata and time, when the caller
        # already has it (the engine scores it): no feature is computed twice
        self._values: dict[str, float] = (
            dict(zip(FEATURE_NAMES, vector, strict=True)) if vector is not None else {})
        self._rest_done = vector is not None
        self._recent: tuple[RecentEvent, ...] | None = None

    @property
    def now_ms(self) -> int:
        """Event time of the evaluation."""
        return self._now_ms

    def feature(self, name: str) -> float | None:
        """A feature of FEATURE_SPEC by name (as in ``vector``); None for an unknown name."""
        values = self._values
        value = values.get(name)
        if value is not None:
            return value
        count = _COUNT_FEATURES.get(name)
        if count is not None:
            state = self._state
            value = 0.0
            if state is not None and state.last_event_ms:
                value = float(_count(state, self._now_ms, *count))
            values[name] = value
            return value
        if not self._rest_done:
            rest = dict(_REST_DEFAULTS)
            _rest(rest, self._state, self._now_ms, self._metadata)
            values.update(rest)
            self._rest_done = True
        return values.get(name)

    def metadata(self, field: str) -> Any:
        """A UserMetadata field, dotted for nested ones (``opt_ins.email``).

        Returns:
            The value; None before the metadata arrived or for a field it does not have.
        """
        value: Any = self._metadata
        for part in field.split("."):
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value

    def recent_events(self) -> tuple[RecentEvent, ...]:
        """The recent events up to now_ms, oldest first (see UserFeatures.recent_events)."""
        if self._recent is None:
            state = self._state
            self._recent = () if state is None else state.recent_events(self._now_ms)
        return self._recent

    @property
    def last_event_ms(self) -> int | None:
        """Time of the user's newest event seen (after now_ms when evaluating a late event)."""
        state = self._state
        return state.last_event_ms if state is not None and state.last_event_ms else None

    @property
    def churn_score(self) -> float | None:
        """The churn score handed in, or None."""
        return self._churn_score


if TYPE_CHECKING:
    _VIEW_CHECK: UserView = FeatureView(None, None, 0)


# --- TTL ----------------------------------------------------------------------------------------


def expired(state: UserFeatures | None, now_ms: int, ttl_ms: int) -> bool:
    """Whether the user has been idle (in event time) for longer than the TTL.

    Args:
        state: The user's features.
        now_ms: Event time of the check (a timer's time).
        ttl_ms: The inactivity TTL.

    Returns:
        True when there is no event in the state or ``now_ms - last_event_ms > ttl_ms``.
    """
    if state is None or not state.last_event_ms:
        return True
    return now_ms - state.last_event_ms > ttl_ms


# --- encoding -----------------------------------------------------------------------------------

#: Version of the encoded state, written as its first byte. Bump it when the layout or
#: EVENT_TYPES/SOURCES change, and keep a decoder of the old version in _DECODERS that returns
#: a current UserFeatures (the migration).
STATE_SCHEMA_VERSION = 1

#: The Avro schema of the encoded state after the version byte (version 1).
STATE_SCHEMA: dict[str, Any] = {
    "type": "record",
    "name": "UserFeaturesState",
    "namespace": "io.nudgeflow.state",
    "doc": "Behavioural feature state of one user (udfs.features.UserFeatures), version 1. "
           "Stored as one version byte (1) followed by this record in Avro binary "
           "(schemaless). Times are epoch ms, 0 = none. A ring holds buckets aligned to the "
           "epoch at index bucket % size; its newest bucket is the one holding last_event_ms. "
           "Packed numbers are little-endian. Type and source indexes refer to "
           "udfs.features.EVENT_TYPES and SOURCES of version 1.",
    "fields": [
        {"name": "first_event_ms", "type": "long", "doc": "Earliest event time; 0 = none."},
        {"name": "last_event_ms", "type": "long", "doc": "Newest event time; 0 = none."},
        {"name": "last_purchase_ms", "type": "long", "doc": "Newest PURCHASE; 0 = none."},
        {"name": "last_add_to_cart_ms", "type": "long", "doc": "Newest ADD_TO_CART; 0 = none."},
        {"name": "orders_total", "type": "long", "doc": "Distinct orders since state start."},
        {"name": "revenue_total_milli", "type": "long",
         "doc": "Purchase revenue since state start, in 1/1000 currency units."},
        {"name": "type_mask", "type": "long",
         "doc": "Bit i set: EVENT_TYPES[i] has a block in type_counts (ascending i)."},
        {"name": "type_counts", "type": "bytes",
         "doc": "Per type present, 66 int32 rings: 12 five-minute slots, 24 hours, 30 days."},
        {"name": "source_mask", "type": "long",
         "doc": "Bit i set: SOURCES[i] has a block in source_counts (ascending i)."},
        {"name": "source_counts", "type": "bytes",
         "doc": "Per source present, a ring of 30 int32 day counts."},
        {"name": "revenue_days", "type": "bytes",
         "doc": "Empty, or a ring of 30 int64: purchase revenue per day in milli-units."},
        {"name": "session_keys", "type": "bytes",
         "doc": "Sorted int64: day << 32 | low 32 bits of the BLAKE2b-64 hash of session_id."},
        {"name": "order_keys", "type": "bytes",
         "doc": "Sorted int64: day << 32 | low 32 bits of the hash of order_id (of NUL "
                "'event:' event_id for a PURCHASE without one)."},
        {"name": "seen_hashes", "type": "bytes",
         "doc": "Sorted int64: BLAKE2b-64 hashes of the event ids remembered for dedup."},
        {"name": "seen_slots", "type": "bytes",
         "doc": "int32 five-minute slot (event_time // 300000) of each id, parallel."},
        {"name": "recent", "type": "string",
         "doc": "Recent events, oldest first, joined with NUL; per event: time as 15 digits, "
                "event_id, event_type, source, product_id, category, price (Python repr), "
                "quantity, currency, joined with U+001F ('' = null)."},
        {"name": "cart_numbers", "type": "bytes",
         "doc": "Cart of n lines in product-id order, columns: int32 quantity[n], float64 "
                "price[n] (NaN = null), int64 updated_ms[n]."},
        {"name": "cart_products", "type": "string",
         "doc": "The cart's product ids in order, joined with NUL."},
        {"name": "pending_numbers", "type": "bytes",
         "doc": "n held cart events in (time, id) order, columns: int64 event_time[n], "
                "int32 quantity[n] (0 = null), float64 price[n] (NaN = null), uint8 kind[n] "
                "(0 ADD_TO_CART, 1 REMOVE_FROM_CART, 2 PURCHASE)."},
        {"name": "pending_strings", "type": "string",
         "doc": "Per held cart event: event_id, product_id ('' = null); all joined with NUL."},
    ],
}
_PARSED = fastavro.parse_schema(STATE_SCHEMA)
_VERSION_BYTE = bytes((STATE_SCHEMA_VERSION,))


def _pack(values: array[Any]) -> bytes:
    if _LITTLE:
        return values.tobytes()
    swapped = array(values.typecode, values)  # pragma: no cover - big-endian hosts
    swapped.byteswap()  # pragma: no cover
    return swapped.tobytes()  # pragma: no cover


def _unpack(typecode: str, data: bytes | memoryview) -> array[Any]:
    values = array(typecode)
    values.frombytes(data)
    if not _LITTLE:  # pragma: no cover - big-endian hosts
        values.byteswap()
    return values


def _pack_ring(ring: array[int] | None) -> bytes:
    return _pack(ring) if ring is not None and any(ring) else b""


def _unpack_ring(typecode: str, data: bytes) -> array[int] | None:
    if not data:
        return None
    ring = _unpack(typecode, data)
    if len(ring) != _DAYS:
        raise ValueError(f"malformed feature state: a day ring of {len(ring)} entries")
    return ring


def encode_state(state: UserFeatures) -> bytes:
    """Encode a state for Flink state: a version byte, then the Avro record (STATE_SCHEMA).

    The encoding is canonical: equal states give equal bytes, and so do the same events in any
    arrival order within the bounds documented on UserFeatures.

    Args:
        state: The user's features.

    Returns:
        The bytes to store.
    """
    type_mask, type_counts = _pack_blocks(state.type_counts)
    source_mask, source_counts = _pack_blocks(state.source_counts)
    cart, pending = state.cart, state.cart_pending
    products = sorted(cart)
    lines = [cart[p] for p in products]
    record = {
        "first_event_ms": state.first_event_ms,
        "last_event_ms": state.last_event_ms,
        "last_purchase_ms": state.last_purchase_ms,
        "last_add_to_cart_ms": state.last_add_to_cart_ms,
        "orders_total": state.orders_total,
        "revenue_total_milli": state.revenue_total_milli,
        "type_mask": type_mask,
        "type_counts": type_counts,
        "source_mask": source_mask,
        "source_counts": source_counts,
        "revenue_days": _pack_ring(state.revenue_days),
        "session_keys": _pack(state.session_keys),
        "order_keys": _pack(state.order_keys),
        "seen_hashes": _pack(state.seen_hashes),
        "seen_slots": _pack(state.seen_slots),
        "recent": "\x00".join(state.recent),
        "cart_numbers": b"".join((
            _pack(array("i", [line.quantity for line in lines])),
            _pack(array("d", [_NAN if line.price is None else line.price for line in lines])),
            _pack(array("q", [line.updated_ms for line in lines])),
        )) if lines else b"",
        "cart_products": "\x00".join(products),
        "pending_numbers": b"".join((
            _pack(array("q", [op.event_time for op in pending])),
            _pack(array("i", [op.quantity or 0 for op in pending])),
            _pack(array("d", [_NAN if op.price is None else op.price for op in pending])),
            bytes([op.kind for op in pending]),
        )) if pending else b"",
        "pending_strings": "\x00".join(f"{op.event_id}\x00{op.product_id or ''}"
                                       for op in pending),
    }
    out = io.BytesIO()
    out.write(_VERSION_BYTE)
    fastavro.schemaless_writer(out, _PARSED, record)
    return out.getvalue()


def _pack_blocks(blocks: dict[int, array[int]]) -> tuple[int, bytes]:
    mask = 0
    packed = []
    for index in sorted(blocks):
        block = blocks[index]
        if any(block):
            mask |= 1 << index
            packed.append(_pack(block))
    return mask, b"".join(packed)


def decode_state(data: bytes) -> UserFeatures:
    """Decode bytes written by encode_state (of this version, or an older one it migrates).

    Args:
        data: The stored bytes.

    Returns:
        The state.

    Raises:
        ValueError: Empty input, an unknown version, or bytes that do not match the schema.
    """
    if not data:
        raise ValueError("empty feature state")
    decoder = _DECODERS.get(data[0])
    if decoder is None:
        raise ValueError(
            f"feature state version {data[0]} is unknown to this build (it reads versions "
            f"{sorted(_DECODERS)}); was it written by a newer nudgeflow?"
        )
    try:
        return decoder(data)
    except ValueError:
        raise
    except Exception as exc:  # fastavro raises EOFError, UnicodeDecodeError, ...
        raise ValueError(f"malformed feature state (version {data[0]}): {exc!r}") from exc


def _decode_v1(data: bytes) -> UserFeatures:
    buf = io.BytesIO(data)
    buf.seek(1)
    rec: Any = fastavro.schemaless_reader(buf, _PARSED, None)
    if buf.read(1):
        raise ValueError("malformed feature state: bytes after the record")
    state = UserFeatures(
        first_event_ms=rec["first_event_ms"],
        last_event_ms=rec["last_event_ms"],
        last_purchase_ms=rec["last_purchase_ms"],
        last_add_to_cart_ms=rec["last_add_to_cart_ms"],
        orders_total=rec["orders_total"],
        revenue_total_milli=rec["revenue_total_milli"],
        type_counts=_unpack_blocks(rec["type_mask"], rec["type_counts"], _BLOCK,
                                   len(EVENT_TYPES)),
        source_counts=_unpack_blocks(rec["source_mask"], rec["source_counts"], _DAYS,
                                     len(SOURCES)),
        revenue_days=_unpack_ring("q", rec["revenue_days"]),
        session_keys=_unpack("q", rec["session_keys"]),
        order_keys=_unpack("q", rec["order_keys"]),
        seen_hashes=_unpack("q", rec["seen_hashes"]),
        seen_slots=_unpack("i", rec["seen_slots"]),
        recent=rec["recent"].split("\x00") if rec["recent"] else [],
        cart=_unpack_cart(rec["cart_numbers"], rec["cart_products"]),
        cart_pending=_unpack_pending(rec["pending_numbers"], rec["pending_strings"]),
    )
    if len(state.seen_hashes) != len(state.seen_slots):
        raise ValueError("malformed feature state: seen_hashes and seen_slots differ in length")
    return state


def _unpack_blocks(mask: int, data: bytes, size: int, limit: int) -> dict[int, array[int]]:
    indexes = [i for i in range(limit) if mask >> i & 1]
    step = 4 * size
    if mask >> limit or len(data) != step * len(indexes):
        raise ValueError(f"malformed feature state: mask {mask:#x} does not match "
                         f"{len(data)} bytes of counters")
    counters = _unpack("i", data)
    return {index: counters[k * size:(k + 1) * size] for k, index in enumerate(indexes)}


def _unpack_cart(numbers: bytes, products: str) -> dict[str, CartLine]:
    n, rest = divmod(len(numbers), 20)
    names = products.split("\x00") if n else []
    if rest or len(names) != n:
        raise ValueError("malformed feature state: cart columns do not match")
    view = memoryview(numbers)
    prices = [None if p != p else p for p in _unpack("d", view[4 * n:12 * n])]
    lines = map(tuple.__new__, repeat(CartLine),
                zip(_unpack("i", view[:4 * n]), prices, _unpack("q", view[12 * n:20 * n]),
                    strict=True))
    return dict(zip(names, lines, strict=True))


def _unpack_pending(numbers: bytes, strings: str) -> list[_CartOp]:
    n, rest = divmod(len(numbers), 21)
    parts = strings.split("\x00") if n else []
    if rest or len(parts) != 2 * n:
        raise ValueError("malformed feature state: pending cart columns do not match")
    view = memoryview(numbers)
    times = _unpack("q", view[:8 * n])
    quantities = _unpack("i", view[8 * n:12 * n])
    prices = _unpack("d", view[12 * n:20 * n])
    kinds = numbers[20 * n:21 * n]
    return [
        _CartOp(t, event_id, kind, product_id or None, q or None, None if p != p else p)
        for t, event_id, kind, product_id, q, p in zip(
            times, parts[0::2], kinds, parts[1::2], quantities, prices, strict=True)
    ]


#: Decoders by version byte; an old version's decoder returns a current UserFeatures.
_DECODERS = {1: _decode_v1}


def state_size_bytes(state: UserFeatures) -> int:
    """Size of the encoded state in bytes (what Flink stores for the user)."""
    return len(encode_state(state))


#: Longest recent-events row: 15 digits, 8 separators, 3 ids, type and source names, a price
#: repr (at most 24 characters), an int32 quantity (11), a currency, and the NUL joining rows.
_MAX_ROW_BYTES = (15 + 8 + 3 * MAX_ID_BYTES + max(map(len, EVENT_TYPES))
                  + max(map(len, SOURCES)) + 24 + 11 + _MAX_CURRENCY_BYTES + 1)


def max_state_bytes(bounds: FeatureBounds = DEFAULT_BOUNDS) -> int:
    """An upper bound of ``state_size_bytes`` for any state kept within ``bounds``.

    Args:
        bounds: The bounds the state was updated with.

    Returns:
        Bytes: the version byte, Avro varints and length prefixes, and every packed section at
        its cap (identifiers at MAX_ID_BYTES).
    """
    fixed = 1 + 8 * 10 + 12 * 3  # version; 8 longs <= 10 bytes; 12 length prefixes <= 3 bytes
    rings = 4 * (_BLOCK * len(EVENT_TYPES) + _DAYS * len(SOURCES)) + 8 * _DAYS
    keys = 8 * _DAYS * (bounds.sessions_per_day + bounds.orders_per_day)
    seen = 12 * bounds.dedup_ids
    recent = bounds.recent_events * _MAX_ROW_BYTES
    cart = bounds.cart_lines * (20 + MAX_ID_BYTES + 1)
    pending = bounds.cart_pending * (21 + 2 * MAX_ID_BYTES + 2)
    return fixed + rings + keys + seen + recent + cart + pending
