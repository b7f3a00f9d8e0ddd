"""What segment conditions may read of a user: the contract between features and segments.

``udfs.features.state`` keeps the state, ``udfs.features.vector.FeatureView`` implements
``UserView`` over it; ``udfs.segments`` evaluates
definitions against any ``UserView`` (tests use a plain fake). Everything is in event time:
``now_ms`` is the time of the event or timer being processed, never the wall clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True)
class RecentEvent:
    """One event of a user's bounded recent history (what conditions on past events see)."""

    event_id: str
    event_type: str  # a ClickEvent EventType symbol, e.g. ADD_TO_CART
    event_time: int  # epoch ms
    source: str  # WEB | MOBILE | OFFLINE | UNKNOWN
    product_id: str | None = None
    category: str | None = None
    price: float | None = None  # unit price
    quantity: int | None = None
    currency: str | None = None

    def __init__(self, event_id: str, event_type: str, event_time: int, source: str,
                 product_id: str | None = None, category: str | None = None,
                 price: float | None = None, quantity: int | None = None,
                 currency: str | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``); one
        # is built for each row of a user's log the first time it is read
        object.__setattr__(self, "event_id", event_id)
        object.__setattr__(self, "event_type", event_type)
        object.__setattr__(self, "event_time", event_time)
        object.__setattr__(self, "source", source)
        object.__setattr__(self, "product_id", product_id)
        object.__setattr__(self, "category", category)
        object.__setattr__(self, "price", price)
        object.__setattr__(self, "quantity", quantity)
        object.__setattr__(self, "currency", currency)

    @property
    def value(self) -> float | None:
        """Price x quantity (quantity defaults to 1), None without a price."""
        if self.price is None:
            return None
        return self.price * (self.quantity or 1)


class UserView(Protocol):
    """A read-only view of one user at one event time."""

    @property
    def now_ms(self) -> int:
        """Event time of the evaluation (the event's time, or the timer's)."""
        ...

    def feature(self, name: str) -> float | None:
        """A behavioural feature by name (see ``udfs.features.spec.FEATURE_SPEC``); else None."""
        ...

    def metadata(self, field: str) -> Any:
        """A UserMetadata field by name; None before the user's metadata arrived.

        Fields: country, time_zone, plan, signup_time, lifetime_value, and the opt-ins as
        ``opt_ins.email``, ``opt_ins.sms``, ...
        """
        ...

    def recent_events(self) -> tuple[RecentEvent, ...]:
        """The user's recent events, oldest first, bounded (see ``udfs.features.state``)."""
        ...

    @property
    def last_event_ms(self) -> int | None:
        """Event time of the user's latest event, None if none was seen."""
        ...

    def cart_expiry_ms(self) -> int | None:
        """When the next cart line counted now stops counting (30 UTC days untouched), or None."""
        ...

    @property
    def churn_score(self) -> float | None:
        """The churn model's latest score (reserved: set by the churn issue), or None."""
        ...
