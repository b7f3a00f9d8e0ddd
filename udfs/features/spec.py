"""The behavioural feature spec: vocabulary, horizons, the vector's entries and the state bounds.

Inputs: none (constants). Outputs: :data:`EVENT_TYPES` and :data:`SOURCES` (the ClickEvent
symbols; their positions index the state's counters), the time buckets and horizons
(:data:`HORIZONS`, :func:`horizon_start_ms`, :func:`window_leave_ms`), :data:`FEATURE_SPEC` and
:data:`FEATURE_NAMES` - the one spec shared by serving and churn-model training - and what keeps
a user's state bounded (:class:`FeatureBounds`, :data:`DEFAULT_BOUNDS`, the identifier limits).
State: none.

``udfs/features/FEATURES.md`` is the written spec: the feature table (a test checks it matches
:data:`FEATURE_SPEC`), the bucket scheme and the state-size bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

__all__ = [
    "DAY_MS",
    "DEFAULT_BOUNDS",
    "EVENT_TYPES",
    "FEATURE_NAMES",
    "FEATURE_SPEC",
    "HORIZONS",
    "HOUR_MS",
    "MAX_CURRENCY_BYTES",
    "MAX_ID_BYTES",
    "NEVER_SECONDS",
    "SLOT_MS",
    "SOURCES",
    "SOURCE_INDEX",
    "TYPE_INDEX",
    "FeatureBounds",
    "FeatureSpec",
    "horizon_start_ms",
    "window_leave_ms",
]

# --- vocabulary ---------------------------------------------------------------------------------

#: ClickEvent ``EventType`` symbols (version 2), in schema order. Part of state version 1: the
#: counters are indexed by position here, so a new symbol means a new state version (append it).
EVENT_TYPES: Final[tuple[str, ...]] = (
    "PAGE_VIEW", "PRODUCT_VIEW", "SEARCH", "ADD_TO_CART", "REMOVE_FROM_CART", "CHECKOUT",
    "PURCHASE", "APP_OPEN", "STORE_VISIT", "UNKNOWN",
)
#: ClickEvent ``EventSource`` symbols, in schema order (same rule as EVENT_TYPES).
SOURCES: Final[tuple[str, ...]] = ("WEB", "MOBILE", "OFFLINE", "UNKNOWN")
#: Event type -> its position in EVENT_TYPES (the key of its counters in the state).
TYPE_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(EVENT_TYPES)}
#: Source -> its position in SOURCES (the key of its counters in the state).
SOURCE_INDEX: Final[dict[str, int]] = {name: i for i, name in enumerate(SOURCES)}

# --- time buckets -------------------------------------------------------------------------------

SLOT_MS: Final = 5 * 60_000  #: width of the buckets behind the 1 h horizon
HOUR_MS: Final = 3_600_000  #: width of the buckets behind the 24 h horizon
DAY_MS: Final = 86_400_000  #: width of the (UTC) day buckets behind the 7 d and 30 d horizons

#: Horizon label -> (bucket width in ms, number of buckets counted, including the current one).
HORIZONS: Final[dict[str, tuple[int, int]]] = {
    "1h": (SLOT_MS, 12),
    "24h": (HOUR_MS, 24),
    "7d": (DAY_MS, 7),
    "30d": (DAY_MS, 30),
}

#: Value of ``seconds_since_*`` when the thing never happened (10 years of 365 days).
NEVER_SECONDS: Final = 10 * 365 * 86_400.0


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


_HORIZON_TEXT: Final = {
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
FEATURE_SPEC: Final[tuple[FeatureSpec, ...]] = (
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
    FeatureSpec("cart_value", "float", 0.0, "USD",
                "Sum over cart lines of quantity x latest unit price (lines without a price "
                "add 0), in USD (converted with the currency rate table)."),
    FeatureSpec("orders_30d", "int", 0.0, "orders",
                "Distinct (order id, UTC day) pairs among PURCHASE events of the last 30 days "
                "(a PURCHASE without order id is an order of its own; at most orders_per_day "
                "(16) a day)."),
    FeatureSpec("revenue_30d", "float", 0.0, "USD",
                "Sum of price x quantity (quantity defaults to 1) of PURCHASE events of the "
                "last 30 days, in USD (converted with the currency rate table)."),
    FeatureSpec("orders_total", "int", 0.0, "orders",
                "Orders since the state began (see days_since_first_event): a PURCHASE is a "
                "new order unless its order id was seen in the last 30 days."),
    FeatureSpec("revenue_total", "float", 0.0, "USD",
                "Purchase revenue since the state began, as revenue_30d."),
    FeatureSpec("avg_order_value", "float", 0.0, "USD",
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
FEATURE_NAMES: Final[tuple[str, ...]] = tuple(spec.name for spec in FEATURE_SPEC)

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


DEFAULT_BOUNDS: Final = FeatureBounds()

#: Identifiers kept in state (event, product, category) are cut to this many UTF-8 bytes, and
#: currency codes to MAX_CURRENCY_BYTES, so that the state has a hard size bound.
MAX_ID_BYTES: Final = 64
MAX_CURRENCY_BYTES: Final = 8
