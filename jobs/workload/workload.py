"""Reproducible synthetic workload for nudgeflow: users, their clickstream and broken payloads.

Everything here is pure and deterministic: the same :class:`WorkloadSpec` (seed included) always
yields the same users and the same events in the same order. Randomness comes only from
``random.Random`` instances seeded from the spec, and time only from ``WorkloadSpec.start_ms`` -
never from the global ``random`` module or the wall clock. Nothing here imports Kafka, PyFlink or
the Avro codec; :mod:`jobs.workload.generate` writes the records to Kafka.

The model:

- **Users** (:func:`generate_users`) get a country, a time zone of that country, a plan, a signup
  time, a lifetime value, per-channel opt-ins and a hidden activity weight (heavy-tailed: a few
  users do much of the traffic). A fraction of them (``inactive_fraction``) stops starting
  sessions at a point between 20% and 60% (``inactive_window``) of the expected event-time span.
- **Sessions** start as a Poisson process in event time (``sessions_per_user_per_day`` per user on
  average); each picks a user by activity weight, preferring users for whom it is daytime
  (``diurnal``) and who are not already in a session. Many sessions run at once, so users
  interleave. An online session (WEB, or MOBILE which opens with APP_OPEN) is a run of page
  views, searches and product views; some add products to a cart (``cart_fraction``), a share of
  those carts is abandoned (``abandon_fraction``, sometimes after CHECKOUT), the others check out
  and purchase (one PURCHASE per order line, sharing the order_id). An OFFLINE session is a
  STORE_VISIT, often followed by an in-store PURCHASE. Offline events have no session_id.
- **Emission order** is event-time order, disturbed on purpose: about ``out_of_order_fraction`` of
  the distinct events arrive late, i.e. after at least one event with a later event time, and at
  most ``max_disorder_ms`` behind the previous event; and ``duplicate_fraction`` of all emitted
  records are re-sends of an earlier event (an equal dict with the same event_id), emitted up to
  ``duplicate_max_lag`` records after the original.

Counting convention: ``WorkloadSpec.events`` is the exact number of records
:func:`generate_events` yields, duplicates included. Of those, exactly
``WorkloadSpec.duplicates`` (``round(events * duplicate_fraction)``, at most ``events // 2``)
are duplicates, so the number of distinct event_ids is ``events - duplicates``.
"""

from __future__ import annotations

import hashlib
import heapq
import json
import math
import random
from bisect import bisect_right
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from zoneinfo import ZoneInfo

__all__ = [
    "AVRO_SINGLE_OBJECT_MAGIC",
    "COUNTRIES",
    "CURRENCY_DECIMALS",
    "DEFAULT_START_MS",
    "EVENT_TYPES",
    "MALFORMED_KINDS",
    "OPT_IN_CHANNELS",
    "PLANS",
    "SOURCES",
    "USD_RATES",
    "WorkloadSpec",
    "WorkloadSummary",
    "generate_events",
    "generate_users",
    "inactive_user_ids",
    "invalid_events",
    "malformed_records",
]

#: Default start of event time: 2026-11-02T09:00:00Z.
DEFAULT_START_MS = int(datetime(2026, 11, 2, 9, 0, tzinfo=timezone.utc).timestamp() * 1000)

EVENT_TYPES = (
    "PAGE_VIEW",
    "PRODUCT_VIEW",
    "SEARCH",
    "ADD_TO_CART",
    "REMOVE_FROM_CART",
    "CHECKOUT",
    "PURCHASE",
    "APP_OPEN",
    "STORE_VISIT",
)
SOURCES = ("WEB", "MOBILE", "OFFLINE")
PLANS = ("FREE", "BASIC", "PREMIUM", "ENTERPRISE")
OPT_IN_CHANNELS = ("email", "sms", "push", "in_app", "paid_social")

#: country -> (weight, currency, ((IANA time zone, weight), ...))
COUNTRIES: dict[str, tuple[float, str, tuple[tuple[str, float], ...]]] = {
    "US": (
        0.30,
        "USD",
        (
            ("America/New_York", 0.45),
            ("America/Chicago", 0.20),
            ("America/Denver", 0.07),
            ("America/Los_Angeles", 0.28),
        ),
    ),
    "GB": (0.08, "GBP", (("Europe/London", 1.0),)),
    "DE": (0.10, "EUR", (("Europe/Berlin", 1.0),)),
    "FR": (0.06, "EUR", (("Europe/Paris", 1.0),)),
    "ES": (0.04, "EUR", (("Europe/Madrid", 1.0),)),
    "NL": (0.03, "EUR", (("Europe/Amsterdam", 1.0),)),
    "JP": (0.07, "JPY", (("Asia/Tokyo", 1.0),)),
    "IN": (0.08, "INR", (("Asia/Kolkata", 1.0),)),
    "BR": (0.07, "BRL", (("America/Sao_Paulo", 1.0),)),
    "MX": (0.03, "MXN", (("America/Mexico_City", 1.0),)),
    "CA": (0.05, "CAD", (("America/Toronto", 0.65), ("America/Vancouver", 0.35))),
    "AU": (0.04, "AUD", (("Australia/Sydney", 0.7), ("Australia/Perth", 0.3))),
}

#: Fixed exchange rates used to price the catalogue in local currency: units per 1 USD.
USD_RATES = {
    "USD": 1.0,
    "EUR": 0.92,
    "GBP": 0.79,
    "JPY": 150.0,
    "INR": 83.0,
    "BRL": 5.0,
    "MXN": 17.0,
    "CAD": 1.36,
    "AUD": 1.52,
}
CURRENCY_DECIMALS = {"JPY": 0}

# (category, min USD price, max USD price, search terms)
_CATEGORIES = (
    ("electronics", 15.0, 900.0, ("headphones", "usb c charger", "smart watch", "laptop", "tv")),
    ("books", 5.0, 60.0, ("thriller", "cookbook", "kids books", "sci fi", "biography")),
    ("fashion", 10.0, 250.0, ("sneakers", "winter jacket", "jeans", "dress", "scarf")),
    ("home", 8.0, 400.0, ("coffee maker", "bed sheets", "lamp", "vacuum", "knife set")),
    ("beauty", 4.0, 120.0, ("face cream", "perfume", "shampoo", "lipstick", "sunscreen")),
    ("sports", 10.0, 300.0, ("yoga mat", "running shoes", "dumbbells", "bike helmet", "tent")),
    ("toys", 5.0, 150.0, ("lego", "puzzle", "board game", "doll", "rc car")),
    ("grocery", 1.0, 40.0, ("coffee beans", "olive oil", "tea", "chocolate", "pasta")),
    ("garden", 5.0, 250.0, ("hose", "plant pot", "seeds", "grill", "lawn mower")),
    ("automotive", 10.0, 350.0, ("car wax", "dash cam", "floor mats", "jump starter", "tires")),
)
_QUALIFIERS = ("", "", "", "best ", "cheap ", "wireless ", "organic ", "black ", "large ", "gift ")
_WEB_ORIGIN = "https://shop.nudgeflow.example"
_APP_ORIGIN = "app://nudgeshop"
_REFERRERS = ("direct", "google", "newsletter", "facebook", "instagram", "affiliate")
_PAYMENT_METHODS = ("card", "card", "card", "paypal", "apple_pay", "gift_card")
_APP_VERSIONS = ("5.3.0", "5.3.1", "5.4.0")
_PLAN_WEIGHTS = (0.55, 0.25, 0.15, 0.05)
_PLAN_LTV_USD = {"FREE": 40.0, "BASIC": 180.0, "PREMIUM": 600.0, "ENTERPRISE": 2500.0}
_PLAN_ACTIVITY = {"FREE": 0.8, "BASIC": 1.0, "PREMIUM": 1.4, "ENTERPRISE": 1.6}

# Relative chance that a user starts a session at a given local hour (0-23).
_DIURNAL = (
    0.10, 0.06, 0.04, 0.04, 0.05, 0.10, 0.25, 0.45, 0.60, 0.65, 0.70, 0.75,
    0.80, 0.80, 0.75, 0.75, 0.80, 0.90, 1.00, 1.00, 1.00, 0.90, 0.60, 0.30,
)  # fmt: skip

# Internal step codes of a planned session.
_PV, _PRV, _SRCH, _ATC, _RFC, _CHK, _PUR, _OPEN, _VISIT = range(9)
_TYPE_NAMES = EVENT_TYPES  # indexed by step code

#: Mean number of events per session, measured with the default spec; used only to turn
#: ``sessions_per_user_per_day`` into an expected event-time span (for inactivity cut-offs).
_EVENTS_PER_SESSION = 5.6
_DAY_MS = 86_400_000


def _fraction_fields() -> tuple[str, ...]:
    return (
        "out_of_order_fraction",
        "duplicate_fraction",
        "inactive_fraction",
        "abandon_fraction",
        "cart_fraction",
        "mobile_fraction",
        "offline_fraction",
    )


@dataclass(frozen=True)
class WorkloadSpec:
    """What to generate. Every field has a default; the same spec always yields the same data.

    Attributes:
        users: Number of users (UserMetadata records); at least 1.
        events: Exact number of ClickEvent records yielded, duplicates included; at least 0.
        seed: Seed of every random choice.
        start_ms: Event time of the first session start, epoch milliseconds UTC. Signup and
            update times of users lie before it.
        out_of_order_fraction: Share of the distinct events that arrive late: after at least one
            event with a later event time (never more than ``max_disorder_ms`` behind the
            previous event). Approximate: a late event that no later event can overtake within
            ``max_disorder_ms`` stays in order. Best kept well under 0.5.
        max_disorder_ms: Largest gap between a late event's event time and the event time of
            the event emitted just before it; at least 1.
        duplicate_fraction: Share of all yielded records that are duplicates (exactly
            ``round(events * duplicate_fraction)``, capped at ``events // 2``); at most 0.5
            (each event is re-sent at most once).
        duplicate_max_lag: A duplicate is emitted 0 to this many records after its original.
        inactive_fraction: Share of users (rounded down) that stop starting sessions partway
            through; below 1 so that someone is left to produce events.
        inactive_window: ``(lo, hi)`` fractions of the expected event-time span between which
            each inactive user's cut-off is drawn uniformly; ``0 <= lo <= hi <= 1``.
        cart_fraction: Share of online sessions that add something to the cart.
        abandon_fraction: Share of those carts that are abandoned (no PURCHASE in the session).
        mobile_fraction: Share of online sessions on MOBILE (the rest are WEB), on average over
            users; each user has a personal share around it.
        offline_fraction: Share of sessions that are store visits (source OFFLINE).
        sessions_per_user_per_day: Mean session rate of a user, which sets the event-time
            density: the span is about ``events / (users * this * 5.6)`` days.
        products: Size of the product catalogue; at least 1.
        diurnal: Prefer users for whom it is daytime (in their time zone) when starting sessions.
        local_currencies: Price events in the user's local currency (see ``USD_RATES``);
            otherwise everything is in USD.
    """

    users: int = 1000
    events: int = 100_000
    seed: int = 42
    start_ms: int = DEFAULT_START_MS
    out_of_order_fraction: float = 0.02
    max_disorder_ms: int = 30_000
    duplicate_fraction: float = 0.01
    duplicate_max_lag: int = 50
    inactive_fraction: float = 0.1
    inactive_window: tuple[float, float] = (0.2, 0.6)
    cart_fraction: float = 0.35
    abandon_fraction: float = 0.6
    mobile_fraction: float = 0.5
    offline_fraction: float = 0.05
    sessions_per_user_per_day: float = 4.0
    products: int = 2000
    diurnal: bool = True
    local_currencies: bool = True

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.type in ("int", int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"WorkloadSpec.{f.name} must be an int, got {value!r}")
            elif f.type in ("float", float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"WorkloadSpec.{f.name} must be a number, got {value!r}")
                if not math.isfinite(value):
                    raise ValueError(f"WorkloadSpec.{f.name} must be finite, got {value!r}")
            elif f.type in ("bool", bool) and not isinstance(value, bool):
                raise ValueError(f"WorkloadSpec.{f.name} must be a bool, got {value!r}")
        if self.users < 1:
            raise ValueError(f"WorkloadSpec.users must be >= 1, got {self.users}")
        if self.events < 0:
            raise ValueError(f"WorkloadSpec.events must be >= 0, got {self.events}")
        if self.products < 1:
            raise ValueError(f"WorkloadSpec.products must be >= 1, got {self.products}")
        if self.start_ms < 0:
            raise ValueError(f"WorkloadSpec.start_ms must be >= 0, got {self.start_ms}")
        if self.max_disorder_ms < 1:
            raise ValueError(
                f"WorkloadSpec.max_disorder_ms must be >= 1, got {self.max_disorder_ms}"
            )
        if self.duplicate_max_lag < 0:
            raise ValueError(
                f"WorkloadSpec.duplicate_max_lag must be >= 0, got {self.duplicate_max_lag}"
            )
        for name in _fraction_fields():
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"WorkloadSpec.{name} must be in [0, 1], got {value!r}")
        if self.duplicate_fraction > 0.5:
            raise ValueError(
                "WorkloadSpec.duplicate_fraction must be <= 0.5 (each event is re-sent at most "
                f"once), got {self.duplicate_fraction!r}"
            )
        if self.inactive_fraction >= 1.0:
            raise ValueError(
                "WorkloadSpec.inactive_fraction must be < 1 (at least one user has to stay "
                f"active), got {self.inactive_fraction!r}"
            )
        window = self.inactive_window
        if (
            not isinstance(window, tuple)
            or len(window) != 2
            or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in window)
            or not 0.0 <= window[0] <= window[1] <= 1.0
        ):
            raise ValueError(
                "WorkloadSpec.inactive_window must be a tuple (lo, hi) with "
                f"0 <= lo <= hi <= 1, got {window!r}"
            )
        if not self.sessions_per_user_per_day > 0:
            raise ValueError(
                "WorkloadSpec.sessions_per_user_per_day must be > 0, got "
                f"{self.sessions_per_user_per_day!r}"
            )

    @property
    def duplicates(self) -> int:
        """Exact number of duplicate records among the ``events`` yielded."""
        return min(round(self.events * self.duplicate_fraction), self.events // 2)

    @property
    def distinct_events(self) -> int:
        """Number of distinct event_ids among the ``events`` yielded."""
        return self.events - self.duplicates

    @property
    def inactive_users(self) -> int:
        """Exact number of users that go inactive partway."""
        return int(self.users * self.inactive_fraction)

    @property
    def expected_span_ms(self) -> int:
        """Rough event-time span of the workload (first to last event), in milliseconds."""
        sessions_per_ms = self.users * self.sessions_per_user_per_day / _DAY_MS
        return int(self.distinct_events / (_EVENTS_PER_SESSION * sessions_per_ms))


@dataclass
class WorkloadSummary:
    """What a workload run produced; filled as events are yielded (and by the Kafka writer).

    Attributes:
        users: UserMetadata records (generated, or written by the Kafka writer).
        events: ClickEvent records yielded (or written), duplicates included.
        duplicates: Records among ``events`` that re-send an earlier event_id.
        out_of_order: Distinct events whose event time is earlier than that of the distinct
            event emitted before them.
        late_injected: Distinct events deliberately delayed (``out_of_order`` counts those
            that did end up behind a later event).
        sessions: Sessions started.
        orders: Orders placed (online and in-store).
        abandoned_carts: Finished online sessions that added to the cart but did not purchase.
        inactive_users: Users that stop starting sessions partway.
        by_type: Records per event_type, duplicates included.
        by_source: Records per source, duplicates included.
        first_event_ms: Smallest event_time yielded; None before the first event.
        last_event_ms: Largest event_time yielded; None before the first event.
        elapsed_s: Wall-clock seconds the Kafka writer spent (0 for pure generation).
    """

    users: int = 0
    events: int = 0
    duplicates: int = 0
    out_of_order: int = 0
    late_injected: int = 0
    sessions: int = 0
    orders: int = 0
    abandoned_carts: int = 0
    inactive_users: int = 0
    by_type: dict[str, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    first_event_ms: int | None = None
    last_event_ms: int | None = None
    elapsed_s: float = 0.0

    @property
    def distinct_events(self) -> int:
        """Records that are not duplicates."""
        return self.events - self.duplicates

    @property
    def span_ms(self) -> int:
        """Event-time span (last minus first event time), 0 before two events."""
        if self.first_event_ms is None or self.last_event_ms is None:
            return 0
        return self.last_event_ms - self.first_event_ms

    @property
    def events_per_s(self) -> float:
        """Records per wall-clock second of ``elapsed_s``; 0 when nothing was timed."""
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


# --------------------------------------------------------------------------------------------
# users


def _rng(seed: int, stream: str) -> random.Random:
    """An independent, reproducible random stream derived from the seed and a stream name."""
    digest = hashlib.sha256(f"nudgeflow/{seed}/{stream}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))  # noqa: S311 - simulation, not crypto


def _weighted(rng: random.Random, items: Sequence[tuple[str, float]]) -> str:
    return rng.choices([k for k, _ in items], weights=[w for _, w in items])[0]


@dataclass(frozen=True)
class _Profile:
    """Hidden per-user traits that shape the user's events."""

    metadata: dict
    currency: str
    utc_offset_ms: int
    activity: float
    mobile_share: float
    cutoff_ms: int | None  # inactive users start no session at or after this event time


def _profiles(spec: WorkloadSpec) -> list[_Profile]:
    rng = _rng(spec.seed, "users")
    countries = list(COUNTRIES)
    country_weights = [COUNTRIES[c][0] for c in countries]
    start_dt = datetime.fromtimestamp(spec.start_ms / 1000, tz=timezone.utc)
    offsets: dict[str, int] = {}
    m = spec.mobile_fraction
    profiles = []
    for i in range(spec.users):
        country = rng.choices(countries, weights=country_weights)[0]
        _, currency, zones = COUNTRIES[country]
        tz = _weighted(rng, zones)
        if tz not in offsets:
            delta = ZoneInfo(tz).utcoffset(start_dt)
            offsets[tz] = int(delta.total_seconds() * 1000) if delta is not None else 0
        plan = rng.choices(PLANS, weights=_PLAN_WEIGHTS)[0]
        activity = rng.lognormvariate(0.0, 1.0) * _PLAN_ACTIVITY[plan]
        # Personal mobile share around the requested mean, always within [0, 1].
        mobile_share = m + (rng.random() - 0.5) * 1.8 * min(m, 1.0 - m)
        signup = spec.start_ms - rng.randint(_DAY_MS, 3 * 365 * _DAY_MS)
        updated = rng.randint(signup, spec.start_ms - 60_000)
        ltv = 0.0
        if plan != "FREE" or rng.random() < 0.6:
            ltv = round(_PLAN_LTV_USD[plan] * activity * rng.lognormvariate(0.0, 0.5), 2)
        opt_ins = {
            "email": rng.random() < 0.7,
            "sms": rng.random() < 0.3,
            "push": rng.random() < 0.2 + 0.6 * mobile_share,
            "in_app": rng.random() < 0.8,
            "paid_social": rng.random() < 0.4,
        }
        metadata = {
            "user_id": f"u-{i:06d}",
            "country": country,
            "time_zone": tz,
            "plan": plan,
            "signup_time": signup,
            "lifetime_value": ltv,
            "opt_ins": opt_ins,
            "updated_at": updated,
        }
        profiles.append(
            _Profile(
                metadata=metadata,
                currency=currency if spec.local_currencies else "USD",
                utc_offset_ms=offsets[tz],
                activity=activity,
                mobile_share=mobile_share,
                cutoff_ms=None,
            )
        )
    # Inactive users: an exact count, chosen after the traits so changing it keeps the users.
    lo, hi = spec.inactive_window
    span = spec.expected_span_ms
    for i in sorted(rng.sample(range(spec.users), spec.inactive_users)):
        cutoff = spec.start_ms + int(span * rng.uniform(lo, hi))
        p = profiles[i]
        profiles[i] = _Profile(
            p.metadata, p.currency, p.utc_offset_ms, p.activity, p.mobile_share, cutoff
        )
    return profiles


def generate_users(spec: WorkloadSpec) -> list[dict]:
    """Generate the UserMetadata record of every user.

    Args:
        spec: The workload; only ``users``, ``seed``, ``start_ms`` and ``mobile_fraction``
            matter.

    Returns:
        ``spec.users`` dicts with user_id (``u-000000``, ``u-000001``, ...), country (ISO
        alpha-2), time_zone (an IANA zone of that country), plan, signup_time, lifetime_value
        (USD), opt_ins (bool per channel) and updated_at (before ``start_ms``).
    """
    return [{**p.metadata, "opt_ins": dict(p.metadata["opt_ins"])} for p in _profiles(spec)]


def inactive_user_ids(spec: WorkloadSpec) -> dict[str, int]:
    """Users that go inactive, with the event time from which they start no new session.

    Sessions already running at the cut-off still finish, so a user's last event can be a few
    minutes after it.
    """
    return {p.metadata["user_id"]: p.cutoff_ms for p in _profiles(spec) if p.cutoff_ms is not None}


# --------------------------------------------------------------------------------------------
# catalogue


class _Catalogue:
    """Products with a category and a USD price; popularity falls off with the index."""

    def __init__(self, rng: random.Random, size: int, local_currencies: bool) -> None:
        self.ids = [f"P{i:05d}" for i in range(size)]
        self.category = [rng.randrange(len(_CATEGORIES)) for _ in range(size)]
        self.usd = []
        for c in self.category:
            _, lo, hi, _ = _CATEGORIES[c]
            price = math.exp(rng.uniform(math.log(lo), math.log(hi)))
            self.usd.append(max(0.99, math.floor(price) + 0.99))
        self.by_category: list[list[int]] = [[] for _ in _CATEGORIES]
        for i, c in enumerate(self.category):
            self.by_category[c].append(i)
        self._prices: dict[str, list[float]] = {}

    def prices(self, currency: str) -> list[float]:
        """Unit prices in ``currency`` (fixed rates, rounded as the currency is)."""
        table = self._prices.get(currency)
        if table is None:
            rate = USD_RATES[currency]
            digits = CURRENCY_DECIMALS.get(currency, 2)
            table = [max(round(p * rate, digits), 1.0 if digits == 0 else 0.01) for p in self.usd]
            self._prices[currency] = table
        return table

    def popular(self, rng: random.Random) -> int:
        return int(len(self.ids) * rng.random() ** 3)

    def in_category(self, rng: random.Random, category: int) -> int:
        members = self.by_category[category]
        if not members:
            return self.popular(rng)
        return members[int(len(members) * rng.random() ** 2)]


# --------------------------------------------------------------------------------------------
# sessions


class _Session:
    __slots__ = (
        "user",
        "session_id",
        "source",
        "steps",
        "pos",
        "currency",
        "origin",
        "order_id",
        "had_cart",
        "purchased",
        "store_id",
    )

    def __init__(self, user: int, session_id: str | None, source: str, steps: list) -> None:
        self.user = user
        self.session_id = session_id
        self.source = source
        self.steps = steps
        self.pos = 0
        self.currency = "USD"
        self.origin = _APP_ORIGIN if source == "MOBILE" else _WEB_ORIGIN
        self.order_id: str | None = None
        self.had_cart = False
        self.purchased = False
        self.store_id: str | None = None


def _plan_online(
    rng: random.Random, cat: _Catalogue, mobile: bool, spec: WorkloadSpec
) -> list[tuple]:
    """Plan the steps ``(code, arg, quantity)`` of one web or app session.

    ``arg`` is a product, category or search-term index depending on the code.
    """
    rand = rng.random
    steps: list[tuple] = []
    if mobile:
        steps.append((_OPEN, None, None))
    steps.append((_PV, None, None))  # landing page / home screen
    viewed = None
    while rand() < 0.72 and len(steps) < 14:
        r = rand()
        if r < 0.22:
            steps.append((_PV, rng.randrange(len(_CATEGORIES)), None))
        elif r < 0.42:
            c = rng.randrange(len(_CATEGORIES))
            steps.append((_SRCH, c, rng.randrange(len(_CATEGORIES[c][3]))))
            if rand() < 0.8:
                viewed = cat.in_category(rng, c)
                steps.append((_PRV, viewed, None))
        else:
            viewed = cat.popular(rng)
            steps.append((_PRV, viewed, None))
    if rand() < spec.cart_fraction:
        lines: list[tuple[int, int]] = []
        n_items = 1 + (rand() < 0.35) + (rand() < 0.15)
        for k in range(n_items):
            if k == 0 and viewed is not None and rand() < 0.7:
                product = viewed
            else:
                product = cat.popular(rng)
                steps.append((_PRV, product, None))
            if any(p == product for p, _ in lines):
                continue
            qty = 1 if rand() < 0.8 else rng.randint(2, 4)
            lines.append((product, qty))
            steps.append((_ATC, product, qty))
        if len(lines) >= 2 and rand() < 0.2:
            product, qty = lines.pop(rng.randrange(len(lines)))
            steps.append((_RFC, product, qty))
        if rand() < spec.abandon_fraction:
            r = rand()
            if r < 0.3:
                steps.append((_CHK, len(lines), None))  # checkout started, never paid
            elif r < 0.7:
                steps.append((_PRV, cat.popular(rng), None))
        else:
            steps.append((_CHK, len(lines), None))
            for product, qty in lines:
                steps.append((_PUR, product, qty))
    return steps


def _plan_offline(rng: random.Random, cat: _Catalogue) -> list[tuple]:
    steps: list[tuple] = [(_VISIT, None, None)]
    if rng.random() < 0.65:
        for _ in range(1 + (rng.random() < 0.4) + (rng.random() < 0.2)):
            steps.append((_PUR, cat.popular(rng), 1 if rng.random() < 0.85 else 2))
    return steps


class _UserPicker:
    """Draws users by activity weight, skipping users past their inactivity cut-off."""

    def __init__(self, profiles: list[_Profile], rng: random.Random) -> None:
        self._profiles = profiles
        self._rng = rng
        self._cutoff = [p.cutoff_ms if p.cutoff_ms is not None else math.inf for p in profiles]
        self._rebuild(-math.inf)

    def _rebuild(self, now: float) -> None:
        self._ids = [i for i, c in enumerate(self._cutoff) if c > now]
        cum, total = [], 0.0
        for i in self._ids:
            total += self._profiles[i].activity
            cum.append(total)
        self._cum, self._total, self._misses = cum, total, 0

    def pick(self, now: float) -> int:
        while True:
            i = self._ids[bisect_right(self._cum, self._rng.random() * self._total)]
            if self._cutoff[i] > now:
                return i
            self._misses += 1
            if self._misses > 16:
                self._rebuild(now)


def _source_events(spec: WorkloadSpec, summary: WorkloadSummary) -> Iterator[dict]:
    """Exactly ``spec.distinct_events`` events in non-decreasing event-time order."""
    total = spec.distinct_events
    if total == 0:
        return
    profiles = _profiles(spec)
    rng = _rng(spec.seed, "events")
    rand = rng.random
    expo = rng.expovariate
    cat = _Catalogue(_rng(spec.seed, "catalogue"), spec.products, spec.local_currencies)
    picker = _UserPicker(profiles, rng)
    user_ids = [p.metadata["user_id"] for p in profiles]
    busy = [0] * spec.users
    tag = hashlib.sha256(repr(spec).encode()).hexdigest()[:8]
    n_event = n_session = n_order = 0
    session_rate = spec.users * spec.sessions_per_user_per_day / _DAY_MS  # per ms
    diurnal = spec.diurnal
    cats = _CATEGORIES
    heap: list[tuple[int, int, _Session]] = []
    next_start = float(spec.start_ms)
    produced = 0

    while produced < total:
        if not heap or next_start <= heap[0][0]:
            # Start a session: pick a user, preferring daytime and not already in a session.
            now = next_start
            next_start += expo(session_rate)
            user = picker.pick(now)
            for _ in range(12):
                hour = int((now + profiles[user].utc_offset_ms) // 3_600_000) % 24
                if not busy[user] and (not diurnal or rand() < _DIURNAL[hour]):
                    break
                user = picker.pick(now)
            profile = profiles[user]
            n_session += 1
            summary.sessions += 1
            if rand() < spec.offline_fraction:
                s = _Session(user, None, "OFFLINE", _plan_offline(rng, cat))
                s.store_id = f"store-{rng.randrange(40):03d}"
            else:
                mobile = rand() < profile.mobile_share
                s = _Session(
                    user,
                    f"s-{tag}-{n_session}",
                    "MOBILE" if mobile else "WEB",
                    _plan_online(rng, cat, mobile, spec),
                )
            s.currency = profile.currency
            busy[user] += 1
            heapq.heappush(heap, (int(now), n_session, s))
            continue

        t, key, s = heap[0]
        code, arg, qty = s.steps[s.pos]
        s.pos += 1
        n_event += 1
        ev = {
            "event_id": f"e-{tag}-{n_event}",
            "user_id": user_ids[s.user],
            "event_type": _TYPE_NAMES[code],
            "event_time": t,
            "source": s.source,
            "session_id": s.session_id,
            "page_url": None,
            "product_id": None,
            "category": None,
            "search_query": None,
            "order_id": None,
            "currency": None,
            "price": None,
            "quantity": None,
            "properties": {},
        }
        gap = 1500 + int(expo(1 / 22_000))
        if code == _PRV or code == _ATC or code == _RFC:
            c = cats[cat.category[arg]][0]
            ev["product_id"] = cat.ids[arg]
            ev["category"] = c
            ev["page_url"] = f"{s.origin}/p/{cat.ids[arg]}"
            if code != _PRV:
                ev["currency"] = s.currency
                ev["price"] = cat.prices(s.currency)[arg]
                ev["quantity"] = qty
                ev["page_url"] = f"{s.origin}/cart"
                if code == _ATC:
                    s.had_cart = True
                gap = 1000 + int(expo(1 / 12_000))
        elif code == _PV:
            if arg is None:
                ev["page_url"] = f"{s.origin}/"
                if s.pos == 1:
                    ev["properties"] = {"referrer": _REFERRERS[int(rand() * len(_REFERRERS))]}
            else:
                ev["category"] = cats[arg][0]
                ev["page_url"] = f"{s.origin}/c/{cats[arg][0]}"
        elif code == _SRCH:
            term = cats[arg][3][qty]
            query = _QUALIFIERS[int(rand() * len(_QUALIFIERS))] + term
            ev["search_query"] = query
            ev["category"] = cats[arg][0]
            ev["page_url"] = f"{s.origin}/search?q={query.replace(' ', '+')}"
            ev["properties"] = {"results": str(int(rand() * 120))}
            gap = 1000 + int(expo(1 / 8_000))
        elif code == _CHK:
            n_order += 1
            s.order_id = f"o-{tag}-{n_order}"
            ev["order_id"] = s.order_id
            ev["page_url"] = f"{s.origin}/checkout"
            ev["properties"] = {"items": str(arg)}
            gap = 5000 + int(expo(1 / 40_000))
        elif code == _PUR:
            if s.order_id is None:  # in-store purchase: no checkout step
                n_order += 1
                s.order_id = f"o-{tag}-{n_order}"
            if not s.purchased:
                s.purchased = True
                summary.orders += 1
            ev["order_id"] = s.order_id
            ev["product_id"] = cat.ids[arg]
            ev["category"] = cats[cat.category[arg]][0]
            ev["currency"] = s.currency
            ev["price"] = cat.prices(s.currency)[arg]
            ev["quantity"] = qty
            if s.source == "OFFLINE":
                ev["properties"] = {"store_id": s.store_id, "channel": "pos"}
            else:
                ev["page_url"] = f"{s.origin}/checkout/complete"
                ev["properties"] = {
                    "payment_method": _PAYMENT_METHODS[int(rand() * len(_PAYMENT_METHODS))]
                }
            gap = int(rand() * 400)  # order lines follow each other closely
        elif code == _OPEN:
            ev["properties"] = {
                "os": "ios" if rand() < 0.45 else "android",
                "app_version": _APP_VERSIONS[int(rand() * len(_APP_VERSIONS))],
            }
            gap = 800 + int(expo(1 / 3_000))
        else:  # _VISIT
            ev["properties"] = {"store_id": s.store_id}
            gap = 300_000 + int(expo(1 / 900_000))  # pay 5+ minutes after walking in

        if s.pos < len(s.steps):
            heapq.heapreplace(heap, (t + gap, key, s))
        else:
            heapq.heappop(heap)
            busy[s.user] -= 1
            if s.had_cart and not s.purchased:
                summary.abandoned_carts += 1
        produced += 1
        yield ev


def _reorder(
    events: Iterator[dict], spec: WorkloadSpec, summary: WorkloadSummary
) -> Iterator[dict]:
    """Delay exactly ``round(n * out_of_order_fraction)`` of the events (selection sampling).

    Each delayed event is emitted after at least one later event when one comes within
    ``max_disorder_ms``, and never more than ``max_disorder_ms`` behind the previous event.
    """
    n = spec.distinct_events
    want = round(n * spec.out_of_order_fraction)
    if want == 0:
        yield from events
        return
    rng = _rng(spec.seed, "disorder")
    rand = rng.random
    max_d = spec.max_disorder_ms
    held: list[tuple[int, int, int, dict]] = []  # (release at event time, seq, time, event)
    seen = 0
    for ev in events:
        t = ev["event_time"]
        deferred = None
        while held and held[0][0] <= t:
            item = heapq.heappop(held)
            if item[1] == seen - 1 and t - item[2] <= max_d:
                deferred = item  # held just before: let this event overtake it first
                continue
            yield item[3]
        if deferred is not None:
            heapq.heappush(held, deferred)
        if rand() * (n - seen) < want:
            want -= 1
            summary.late_injected += 1
            heapq.heappush(held, (t + 1 + int(rand() * max_d), seen, t, ev))
        else:
            yield ev
        seen += 1
    while held:
        yield heapq.heappop(held)[3]


def generate_events(spec: WorkloadSpec, summary: WorkloadSummary | None = None) -> Iterator[dict]:
    """Yield the ClickEvent records of the workload in emission order, lazily.

    Memory stays bounded by the sessions in flight, not by ``spec.events``, so millions of
    events stream fine.

    Args:
        spec: The workload.
        summary: Filled as records are yielded (counts, event-time span, ...). Its fields are
            current for every record already yielded.

    Yields:
        Exactly ``spec.events`` ClickEvent dicts (duplicates included), mostly in increasing
        event time. A duplicate is an equal (not the same) dict with the original's event_id.
    """
    summary = summary if summary is not None else WorkloadSummary()
    summary.users = spec.users
    summary.inactive_users = spec.inactive_users
    by_type = summary.by_type
    by_source = summary.by_source
    for name in EVENT_TYPES:
        by_type.setdefault(name, 0)
    for name in SOURCES:
        by_source.setdefault(name, 0)

    rng = _rng(spec.seed, "duplicates")
    rand = rng.random
    lag = spec.duplicate_max_lag
    distinct = spec.distinct_events
    want = spec.duplicates
    pending: list[tuple[int, int, dict]] = []  # (due at record index, seq, event)
    emitted = 0  # records yielded so far
    seen = 0  # distinct events yielded so far
    last_time = None  # event time of the previous distinct event
    lo = hi = None

    for ev in _reorder(_source_events(spec, summary), spec, summary):
        while pending and pending[0][0] <= emitted:
            dup = heapq.heappop(pending)[2]
            summary.duplicates += 1
            emitted += 1
            summary.events = emitted
            by_type[dup["event_type"]] += 1
            by_source[dup["source"]] += 1
            yield dup
        t = ev["event_time"]
        if last_time is not None and t < last_time:
            summary.out_of_order += 1
        last_time = t
        if lo is None or t < lo:
            lo = summary.first_event_ms = t
        if hi is None or t > hi:
            hi = summary.last_event_ms = t
        if want and rand() * (distinct - seen) < want:
            want -= 1
            copy = dict(ev)
            copy["properties"] = dict(ev["properties"])
            heapq.heappush(pending, (emitted + 1 + int(rand() * (lag + 1)), seen, copy))
        seen += 1
        emitted += 1
        summary.events = emitted
        by_type[ev["event_type"]] += 1
        by_source[ev["source"]] += 1
        yield ev
    while pending:
        dup = heapq.heappop(pending)[2]
        summary.duplicates += 1
        emitted += 1
        summary.events = emitted
        by_type[dup["event_type"]] += 1
        by_source[dup["source"]] += 1
        yield dup


# --------------------------------------------------------------------------------------------
# broken input for dead-letter tests

#: Avro single-object encoding marker (followed by an 8-byte little-endian CRC-64-AVRO
#: fingerprint of the writer schema, then the binary-encoded record).
AVRO_SINGLE_OBJECT_MAGIC = b"\xc3\x01"

MALFORMED_KINDS = ("random_bytes", "truncated", "unknown_fingerprint", "empty", "json_text")


def malformed_records(seed: int, n: int, samples: Sequence[bytes] = ()) -> list[bytes]:
    """Deliberately broken ClickEvent payloads, for dead-letter tests.

    The kinds rotate in the order of ``MALFORMED_KINDS``:

    - ``random_bytes``: 1-64 random bytes that do not start with the single-object marker;
    - ``truncated``: a valid payload from ``samples`` cut short inside its body (at least 1 byte
      removed), or, without samples, the single-object marker followed by an incomplete fingerprint;
    - ``unknown_fingerprint``: the single-object marker, a random 8-byte fingerprint that no
      schema has, then a plausible body;
    - ``empty``: zero bytes;
    - ``json_text``: a ClickEvent written as JSON instead of Avro.

    Args:
        seed: Seed of the random parts.
        n: Number of payloads; at least 0.
        samples: Valid encoded payloads (e.g. from ``Codec.encode``) to truncate.

    Returns:
        ``n`` payloads, deterministic given the arguments.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    rng = _rng(seed, "malformed")
    out: list[bytes] = []
    for i in range(n):
        kind = MALFORMED_KINDS[i % len(MALFORMED_KINDS)]
        if kind == "random_bytes":
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
            if data[:1] == b"\xc3":
                data = b"\x00" + data[1:]
        elif kind == "truncated":
            usable = [s for s in samples if len(s) > 1]
            if usable:
                sample = usable[rng.randrange(len(usable))]
                # cut inside the body when there is one (10 = marker plus fingerprint)
                data = sample[: rng.randint(min(11, len(sample) - 1), len(sample) - 1)]
            else:
                data = AVRO_SINGLE_OBJECT_MAGIC + rng.randbytes(rng.randint(0, 7))
        elif kind == "unknown_fingerprint":
            body = f"e-bad-{i}".encode()
            data = (
                AVRO_SINGLE_OBJECT_MAGIC
                + rng.randbytes(8)
                + bytes([len(body) * 2])
                + body
                + rng.randbytes(rng.randint(8, 40))
            )
        elif kind == "empty":
            data = b""
        else:
            data = json.dumps(
                {"event_id": f"e-json-{i}", "user_id": "u-000000", "event_type": "PAGE_VIEW"}
            ).encode()
        out.append(data)
    return out


def invalid_events(seed: int, n: int) -> list[dict]:
    """ClickEvent dicts that encode fine but carry invalid values, for validation tests.

    Each is a well-formed PURCHASE with one defect, rotating through: negative price, zero
    quantity, empty user_id, missing order_id, price without currency, event_time of 0.

    Args:
        seed: Seed of the random parts.
        n: Number of events; at least 0.

    Returns:
        ``n`` dicts, each with ``properties["defect"]`` naming what is wrong.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 0:
        raise ValueError(f"n must be an int >= 0, got {n!r}")
    rng = _rng(seed, "invalid")
    defects = (
        ("price", -round(rng.uniform(1, 50), 2)),
        ("quantity", 0),
        ("user_id", ""),
        ("order_id", None),
        ("currency", None),
        ("event_time", 0),
    )
    out = []
    for i in range(n):
        name, bad = defects[i % len(defects)]
        ev = {
            "event_id": f"e-invalid-{seed}-{i}",
            "user_id": f"u-{rng.randrange(1000):06d}",
            "event_type": "PURCHASE",
            "event_time": DEFAULT_START_MS + rng.randrange(3_600_000),
            "source": "WEB",
            "session_id": f"s-invalid-{i}",
            "page_url": f"{_WEB_ORIGIN}/checkout/complete",
            "product_id": f"P{rng.randrange(2000):05d}",
            "category": _CATEGORIES[rng.randrange(len(_CATEGORIES))][0],
            "search_query": None,
            "order_id": f"o-invalid-{i}",
            "currency": "USD",
            "price": round(rng.uniform(1, 200), 2),
            "quantity": 1,
            "properties": {"defect": name},
        }
        ev[name] = bad
        out.append(ev)
    return out
