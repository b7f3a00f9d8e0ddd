"""The feature vector of a user and the view segment conditions read.

Inputs: a user's :class:`~udfs.features.state.UserFeatures` (or None), the event time of the
evaluation and the user's UserMetadata dict when it has arrived. Outputs: the feature vector
(:func:`vector`, :func:`vector_list`) in the order of :data:`udfs.features.spec.FEATURE_SPEC`,
and :class:`FeatureView`, the :class:`udfs.features.view.UserView` that segment conditions read.
State: none (reads the state, never changes it).

Pure: no pyflink, no wall clock. Windows are relative to the ``now_ms`` handed in.
"""

from __future__ import annotations

from array import array
from bisect import bisect_left
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

from udfs.features.spec import (
    DAY_MS,
    EVENT_TYPES,
    FEATURE_NAMES,
    FEATURE_SPEC,
    HORIZONS,
    HOUR_MS,
    NEVER_SECONDS,
    SLOT_MS,
    SOURCE_INDEX,
)
from udfs.features.state import (
    DAY_OFF,
    EMPTY,
    HOUR_OFF,
    N_DAYS,
    N_HOURS,
    N_SLOTS,
    SLOT_OFF,
    UserFeatures,
    ring_window,
)
from udfs.features.view import RecentEvent

if TYPE_CHECKING:
    from udfs.features.view import UserView

__all__ = ["FeatureView", "as_list", "vector", "vector_list"]

_DEFAULTS: Final[dict[str, float]] = {spec.name: float(spec.default) for spec in FEATURE_SPEC}
_COUNT_NAMES: Final[tuple[tuple[str, str, str, str], ...]] = tuple(
    (f"events_{t.lower()}_1h", f"events_{t.lower()}_24h", f"events_{t.lower()}_7d",
     f"events_{t.lower()}_30d")
    for t in EVENT_TYPES
)
#: Count feature name -> (event-type index, None for all types; horizon).
_COUNT_FEATURES: Final[dict[str, tuple[int | None, str]]] = {
    f"events_{label}_{horizon}": (ti, horizon)
    for label, ti in [("total", None), *((t.lower(), i) for i, t in enumerate(EVENT_TYPES))]
    for horizon in HORIZONS
}
#: Defaults of the features that are not counts.
_REST_DEFAULTS: Final[dict[str, float]] = {
    name: value for name, value in _DEFAULTS.items() if name not in _COUNT_FEATURES
}
_MOBILE: Final = SOURCE_INDEX["MOBILE"]
_OFFLINE: Final = SOURCE_INDEX["OFFLINE"]

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
    return as_list(vector(state, now_ms, metadata))


def as_list(values: Mapping[str, float]) -> list[float]:
    """A ``vector`` dict as a list in FEATURE_NAMES order (the churn model's input)."""
    return [values[name] for name in FEATURE_NAMES]


def _seconds_since(then: int, now_ms: int) -> float:
    return max(0, now_ms - then) / 1000.0 if then else NEVER_SECONDS


#: Horizon -> (offset, size) of the ring that holds it inside a type block.
_RING_OF: Final = {"1h": (SLOT_OFF, N_SLOTS), "24h": (HOUR_OFF, N_HOURS), "7d": (DAY_OFF, N_DAYS),
                   "30d": (DAY_OFF, N_DAYS)}


def _count(state: UserFeatures, now: int, ti: int | None, horizon: str) -> int:
    """One count feature: events of type ``ti`` (all when None) in ``horizon`` at ``now``."""
    width, n = HORIZONS[horizon]
    off, size = _RING_OF[horizon]
    bucket = now // width
    a, b = ring_window(off, size, state.last_event_ms // width, bucket - n + 1, bucket)
    if ti is not None:
        block = state.type_counts.get(ti)
        return 0 if block is None else sum(block[a]) + sum(block[b])
    return sum(sum(block[a]) + sum(block[b]) for block in state.type_counts.values())


def _window_sum(ring: array[int], first: slice, second: slice) -> int:
    """The sum of a ``ring_window``'s two slices of ``ring``.

    Most windows are one slice (a whole ring at the event's own time, or no wrap); a sum of
    the empty second slice costs as much as a short one, so it is skipped (~3 µs a vector).
    """
    if second is EMPTY:
        return sum(ring[first])
    return sum(ring[first]) + sum(ring[second])


def _counts(out: dict[str, float], state: UserFeatures, now: int) -> None:
    """Every count feature of a state with events."""
    head = state.last_event_ms
    hd, nd = head // DAY_MS, now // DAY_MS
    ns, nh = now // SLOT_MS, now // HOUR_MS
    a1, b1 = ring_window(SLOT_OFF, N_SLOTS, head // SLOT_MS, ns - N_SLOTS + 1, ns)
    a24, b24 = ring_window(HOUR_OFF, N_HOURS, head // HOUR_MS, nh - N_HOURS + 1, nh)
    a7, b7 = ring_window(DAY_OFF, N_DAYS, hd, nd - 6, nd)
    a30, b30 = ring_window(DAY_OFF, N_DAYS, hd, nd - N_DAYS + 1, nd)
    t1 = t24 = t7 = t30 = 0
    for ti, block in state.type_counts.items():
        c1 = _window_sum(block, a1, b1)
        c24 = _window_sum(block, a24, b24)
        c7 = _window_sum(block, a7, b7)
        c30 = _window_sum(block, a30, b30)
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
    d30a, d30b = ring_window(0, N_DAYS, hd, nd - N_DAYS + 1, nd)
    out["sessions_7d"] = float(_count_days(state.session_keys, nd - 6, nd))
    out["sessions_30d"] = float(_count_days(state.session_keys, nd - N_DAYS + 1, nd))
    out["orders_30d"] = float(_count_days(state.order_keys, nd - N_DAYS + 1, nd))
    if state.revenue_days is not None:
        out["revenue_30d"] = _window_sum(state.revenue_days, d30a, d30b) / 1000
    sources = {i: _window_sum(ring, d30a, d30b) for i, ring in state.source_counts.items()}
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
        oldest = (nd - N_DAYS + 1) * DAY_MS  # lines untouched for 30 days have expired
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
    """A read-only :class:`udfs.features.view.UserView` of one user at one event time.

    Features are computed on first use and cached (a count on its own, the others together),
    as are the recent events: build a new view per evaluation.
    """

    def __init__(
        self,
        state: UserFeatures | None,
        metadata: Mapping[str, Any] | None,
        now_ms: int,
        churn_score: float | None = None,
        values: dict[str, float] | None = None,
    ) -> None:
        self._state = state
        self._metadata = metadata
        self._now_ms = now_ms
        self._churn_score = churn_score
        # ``values``: ``vector`` of the same state, metadata and time, when the caller already
        # has it (the engine scores it): no feature is computed twice. Taken as is, not copied
        # (the view only adds to it, and it is complete)
        self._values: dict[str, float] = values if values is not None else {}
        self._rest_done = values is not None
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
            # a dict first: an ABC's isinstance is an interpreted call (~0.3 µs), a dict's is not
            if not isinstance(value, dict) and not isinstance(value, Mapping):
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

    def cart_expiry_ms(self) -> int | None:
        """When the next cart line counted at now_ms expires (see the cart in FEATURES.md).

        A line untouched for 30 UTC days no longer counts: one last updated on day d counts up
        to the start of day d + 30.
        """
        state = self._state
        if state is None:
            return None
        cart = state.cart_at(self._now_ms) if state.cart_pending else state.cart
        oldest = (self._now_ms // DAY_MS - N_DAYS + 1) * DAY_MS
        return min(((line.updated_ms // DAY_MS + N_DAYS) * DAY_MS for line in cart.values()
                    if line.updated_ms >= oldest), default=None)


if TYPE_CHECKING:
    _VIEW_CHECK: UserView = FeatureView(None, None, 0)
