"""Records for tests of every tier: a click, a user's metadata, and their Avro bytes.

Each builder fills every field of the schema (``schemas/*.avsc``) with a plain default, so a test
names only what it is about:

    click("e1", "ann", "ADD_TO_CART", T0, product_id="p1", price=150.0, quantity=1)
    click("e1", "ann", "ADD_TO_CART", T0, **CART)
    metadata("ann", "Europe/Berlin", at=NOON, email=True, sms=True)
"""

from __future__ import annotations

from typing import Any

DAY_MS = 86_400_000

#: opt-ins of a user who consented to nothing (UserMetadata.opt_ins)
NO_CONSENT = {"email": False, "sms": False, "push": False, "in_app": False,
              "paid_social": False}

#: a click's fields for one cart line worth $150: over high-value-cart's $100 threshold
CART = {"product_id": "p1", "price": 150.0, "quantity": 1, "currency": "USD"}


def click(event_id: str, user: str, event_type: str, t: int, **fields: Any) -> dict[str, Any]:
    """A ClickEvent dict: the given fields over defaults (web, one session per user).

    ``currency`` defaults to USD when a price is given. ``ingest_time`` (the Kafka append time
    the engine adds to a decoded click) may be given too; it is not a schema field.
    """
    event: dict[str, Any] = {
        "event_id": event_id, "user_id": user, "event_type": event_type, "event_time": t,
        "source": "WEB", "session_id": f"{user}-s", "page_url": None, "product_id": None,
        "category": None, "search_query": None, "order_id": None, "currency": None,
        "price": None, "quantity": None, "properties": {},
    }
    event.update(fields)
    if event["price"] is not None and "currency" not in fields:
        event["currency"] = "USD"
    return event


def metadata(user: str, tz: str = "UTC", *, at: int, signup_time: int | None = None,
             **opt_ins: bool) -> dict[str, Any]:
    """A UserMetadata dict updated a day before ``at``, for a user who signed up 60 days before
    (or at ``signup_time``: a recent one makes a new sign-up).

    Keyword flags (``email=True``, ``sms=True``, ...) give consent to those channels.
    """
    signed_up = at - 60 * DAY_MS if signup_time is None else signup_time
    return {"user_id": user, "country": "DE", "time_zone": tz, "plan": "FREE",
            "signup_time": signed_up, "lifetime_value": 10.0,
            "opt_ins": {**NO_CONSENT, **opt_ins}, "updated_at": at - DAY_MS}


def click_bytes(codec: Any, event_id: str, user: str, event_type: str, t: int,
                **fields: Any) -> bytes:
    """A click as the producer writes it (Avro single-object bytes)."""
    event = click(event_id, user, event_type, t, **fields)
    event.pop("ingest_time", None)
    return codec.encode("ClickEvent", event)


def metadata_bytes(codec: Any, user: str, tz: str = "UTC", *, at: int,
                   signup_time: int | None = None, **opt_ins: bool) -> bytes:
    """A user's metadata as the producer writes it (Avro single-object bytes)."""
    return codec.encode("UserMetadata",
                        metadata(user, tz, at=at, signup_time=signup_time, **opt_ins))
