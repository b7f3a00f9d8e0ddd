"""The behavioural feature state of one user: bounded keyed state and its update.

Inputs: valid ClickEvent dicts (the fields of ``schemas/ClickEvent.avsc``; times are epoch-ms
ints; extra keys such as ``ingest_time`` are ignored), applied one by one with :func:`update`.
State: one :class:`UserFeatures` per user - counter rings per event type and source, session and
order keys, the dedup memory, the recent-events log and the cart - kept by the Flink adapter as
bytes (:mod:`udfs.features.codec`). Outputs: the updated state; :mod:`udfs.features.vector`
computes the feature vector from it, and :func:`expired` tells when the inactivity TTL is over.

Pure: no pyflink, no wall clock. ``now_ms`` is always an event time handed in (the event's or a
timer's). ``udfs/features/FEATURES.md`` describes the bucket scheme, the state-size bounds,
where arrival order matters, and the dedup semantics.
"""

from __future__ import annotations

import hashlib
from array import array
from bisect import bisect_left, insort
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Any, Final, NamedTuple

from udfs.features.spec import (
    DAY_MS,
    DEFAULT_BOUNDS,
    EVENT_TYPES,
    HOUR_MS,
    MAX_CURRENCY_BYTES,
    MAX_ID_BYTES,
    SLOT_MS,
    SOURCE_INDEX,
    SOURCES,
    TYPE_INDEX,
    FeatureBounds,
)
from udfs.features.view import RecentEvent

__all__ = [
    "BLOCK",
    "DAY_OFF",
    "EMPTY",
    "HOUR_OFF",
    "N_DAYS",
    "N_HOURS",
    "N_SLOTS",
    "SLOT_OFF",
    "CartLine",
    "CartOp",
    "UserFeatures",
    "expired",
    "ring_window",
    "update",
]

# --- ring layout --------------------------------------------------------------------------------

#: Ring sizes: 12 x 5 min = 1 h, 24 x 1 h, 30 x 1 d.
N_SLOTS: Final = 12
N_HOURS: Final = 24
N_DAYS: Final = 30
#: Ring offsets inside a type block.
SLOT_OFF: Final = 0
HOUR_OFF: Final = N_SLOTS
DAY_OFF: Final = N_SLOTS + N_HOURS
#: Counters per event type (66).
BLOCK: Final = N_SLOTS + N_HOURS + N_DAYS

_I32_MAX: Final = 2**31 - 1
_M32: Final = 0xFFFFFFFF
_UNKNOWN_TYPE: Final = TYPE_INDEX["UNKNOWN"]
_UNKNOWN_SOURCE: Final = SOURCE_INDEX["UNKNOWN"]


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


class CartOp(NamedTuple):
    """A cart event waiting for event-time resolution (sorted by time, then event id)."""

    event_time: int
    event_id: str
    kind: int  # index into _CART_KINDS
    product_id: str | None
    quantity: int | None
    price: float | None


_CART_KINDS: Final = ("ADD_TO_CART", "REMOVE_FROM_CART", "PURCHASE")
_ADD: Final = 0
_REMOVE: Final = 1
_PURCHASE: Final = 2
_CART_KIND_OF: Final = {TYPE_INDEX[name]: i for i, name in enumerate(_CART_KINDS)}

#: Field separator inside a recent-events row (rows are joined with NUL in the encoding).
_SEP: Final = "\x1f"


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
        revenue_total_milli: Purchase revenue since the state began, in 1/1000 USD.
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
    cart_pending: list[CartOp] = field(default_factory=list)

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
            return _parse_rows(rows[: bisect_left(rows, f"{now_ms + 1:015d}")])
        return _parse_rows(list(rows))

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
        _clip(currency, MAX_CURRENCY_BYTES) if currency else "",
    ))


#: the rows ``_parse_rows`` parsed last and their events, as one tuple (read and replaced
#: whole, so two engine threads of one interpreter never see one's rows with the other's events)
_last_parsed: tuple[list[str], tuple[RecentEvent, ...]] = ([], ())


def _parse_rows(rows: list[str]) -> tuple[RecentEvent, ...]:
    """The events of log rows (a list of its own: it is kept), reusing the last call's parses.

    A user's evaluations in one step read the same log, one or two new rows at its end and
    maybe its oldest ones gone: the rows the last call parsed keep their events, only the new
    ones are parsed (~50 cache lookups become a few; a row's event depends on the row alone,
    so this is exact). Anything else is parsed row by row. One entry is kept, not one a user:
    ~50 events of memory, not ~20 KB a user.
    """
    global _last_parsed
    old_rows, old_events = _last_parsed
    events: tuple[RecentEvent, ...] | None = None
    if rows and old_rows:
        try:
            k = old_rows.index(rows[0])
        except ValueError:
            k = -1
        kept = len(old_rows) - k
        if k >= 0 and kept <= len(rows) and rows[:kept] == old_rows[k:]:
            events = old_events[k:] + tuple(map(_parse_row, rows[kept:]))
    if events is None:
        events = tuple(map(_parse_row, rows))
    _last_parsed = (rows, events)
    return events


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


def _op_key(op: CartOp) -> tuple[int, str]:
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
    ti = TYPE_INDEX.get(event.get("event_type") or "", _UNKNOWN_TYPE)
    si = SOURCE_INDEX.get(event.get("source") or "", _UNKNOWN_SOURCE)

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
    in_days = day > head_day - N_DAYS
    if in_days:
        block = state.type_counts.get(ti)
        if block is None:
            block = state.type_counts[ti] = _new_ring(BLOCK)
        if slot > head_slot - N_SLOTS:
            _bump(block, SLOT_OFF + slot % N_SLOTS)
        hour = t // HOUR_MS
        if hour > head // HOUR_MS - N_HOURS:
            _bump(block, HOUR_OFF + hour % N_HOURS)
        _bump(block, DAY_OFF + day % N_DAYS)
        sblock = state.source_counts.get(si)
        if sblock is None:
            sblock = state.source_counts[si] = _new_ring(N_DAYS)
        _bump(sblock, day % N_DAYS)
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


def ring_window(off: int, size: int, head: int, lo: int, hi: int) -> tuple[slice, slice]:
    """Where buckets ``lo..hi`` lie in a ring whose newest bucket is ``head``: two slices.

    Args:
        off: Offset of the ring in its array (SLOT_OFF, HOUR_OFF, DAY_OFF, or 0).
        size: Number of buckets of the ring (N_SLOTS, N_HOURS, N_DAYS).
        head: Number of the ring's newest bucket (the one holding ``last_event_ms``).
        lo: First bucket number wanted.
        hi: Last bucket number wanted; buckets after ``head`` or older than the ring are empty.

    Returns:
        Two slices of the array whose sums add up to the buckets' total (empty when none);
        the second is ``EMPTY`` when one slice holds them all (the whole ring is one slice).
    """
    lo = max(lo, head - size + 1)
    hi = min(hi, head)
    if lo > hi:
        return EMPTY, EMPTY
    if hi - lo + 1 == size:  # the whole ring (the common case at an event's own time)
        return slice(off, off + size), EMPTY
    a, b = lo % size, hi % size
    if a <= b:
        return slice(off + a, off + b + 1), EMPTY
    return slice(off + a, off + size), slice(off, off + b + 1)


#: ``ring_window``'s empty slice: a caller may test ``is EMPTY`` to skip a sum of nothing
EMPTY: Final = slice(0, 0)


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
        _ring_clear(block, SLOT_OFF, N_SLOTS, s0, s1)
        if h1 > h0:
            _ring_clear(block, HOUR_OFF, N_HOURS, h0, h1)
        if d1 > d0:
            _ring_clear(block, DAY_OFF, N_DAYS, d0, d1)
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
        _ring_clear(sblock, 0, N_DAYS, d0, d1)
        if not any(sblock):
            del state.source_counts[index]
    revenue = state.revenue_days
    if revenue is not None:
        _ring_clear(revenue, 0, N_DAYS, d0, d1)
        if not any(revenue):
            state.revenue_days = None
    first_day = d1 - N_DAYS + 1
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
            state.revenue_days = _new_ring(N_DAYS, "q")
        state.revenue_days[day % N_DAYS] += milli


def _cart_event(state: UserFeatures, t: int, slot: int, head_slot: int, kind: int,
                event_id: str, event: Mapping[str, Any], bounds: FeatureBounds) -> None:
    product_id = event.get("product_id")
    price = event.get("price")
    op = CartOp(
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


def _apply_cart(cart: dict[str, CartLine], op: CartOp, max_lines: int | None) -> None:
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

