"""An independent reference of four shipped segments, in plain Python over the event list.

It knows nothing of the engine: it reads the segment documents' meaning from SEGMENTS.md and
FEATURES.md and computes, per user, when membership changes:

- ``cart-abandoners``: the latest ADD_TO_CART A among the newest 50 events, no PURCHASE after it,
  ``A + 30m <= now < A + 30m + 7d``, and items in the cart;
- ``new-signups-7d``: metadata applied (at its ``updated_at``) and ``now - signup_time < 7d``;
- ``inactive-30d``: seen, and ``now - last event >= 30d``;
- ``high-value-cart``: the cart's value in USD above 100 (unit prices converted with
  ``per_usd``: units of the currency per US dollar).

The cart: ADD_TO_CART adds its quantity (1 when null) and takes its price when it has one;
REMOVE_FROM_CART subtracts (the whole line without a quantity); PURCHASE removes its product's
line, or empties the cart without a product id; a line untouched for 30 UTC days no longer
counts (from the start of the 30th day after its last update). Every input is applied in order
of (event time, metadata first, event id), a change that happens by time alone at T comes before
the inputs at T, and a user idle for more than the TTL leaves every segment at the next day
boundary (state expiry).
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

MIN = 60_000
DAY = 86_400_000
SEGMENTS = ("cart-abandoners", "high-value-cart", "inactive-30d", "new-signups-7d")


class _User:
    def __init__(self) -> None:
        self.events: list[tuple[int, str, dict[str, Any]]] = []  # applied, in order
        self.metadata: dict[str, Any] | None = None
        self.cart: dict[str, list[Any]] = {}  # product -> [quantity, usd price, updated]

    def apply(self, event: dict[str, Any], per_usd: dict[str, float]) -> None:
        t = event["event_time"]
        self.events.append((t, event["event_id"], event))
        kind, product = event["event_type"], event.get("product_id")
        if kind == "PURCHASE":
            if product is None:
                self.cart.clear()
            else:
                self.cart.pop(product, None)
        elif product is None:
            return
        elif kind == "ADD_TO_CART":
            price = event.get("price")
            usd = None if price is None else price / per_usd[event.get("currency") or "USD"]
            line = self.cart.get(product)
            quantity = event.get("quantity") or 1
            if line is None:
                self.cart[product] = [quantity, usd, t]
            else:
                line[0] += quantity
                line[1] = usd if usd is not None else line[1]
                line[2] = max(line[2], t)
        elif kind == "REMOVE_FROM_CART" and product in self.cart:
            line = self.cart[product]
            left = line[0] - event["quantity"] if event.get("quantity") else 0
            if left <= 0:
                del self.cart[product]
            else:
                line[0] = left
                line[2] = max(line[2], t)

    def _lines(self, now: int) -> list[list[Any]]:
        oldest = (now // DAY - 29) * DAY
        return [self.cart[p] for p in sorted(self.cart) if self.cart[p][2] >= oldest]

    def members(self, now: int) -> set[str]:
        out = set()
        lines = self._lines(now)
        value = 0.0
        for quantity, usd, _ in lines:
            if usd is not None:
                value += quantity * usd
        if value > 100:
            out.add("high-value-cart")
        if self.events and now - self.events[-1][0] >= 30 * DAY:
            out.add("inactive-30d")
        if self.metadata is not None and now - self.metadata["signup_time"] < 7 * DAY:
            out.add("new-signups-7d")
        recent = self.events[-50:]
        anchor = None
        for t, _, event in reversed(recent):
            if event["event_type"] == "PURCHASE":
                break
            if event["event_type"] == "ADD_TO_CART":
                anchor = t
                break
        if anchor is not None and anchor + 30 * MIN <= now < anchor + 30 * MIN + 7 * DAY and \
                sum(line[0] for line in lines) > 0:
            out.add("cart-abandoners")
        return out

    def edges(self) -> set[int]:
        """Times at which membership can change without input."""
        times = set()
        if self.events:
            times.add(self.events[-1][0] + 30 * DAY)
        for t, _, event in self.events[-50:]:
            if event["event_type"] == "ADD_TO_CART":
                times.update((t + 30 * MIN, t + 30 * MIN + 7 * DAY))
        for _, _, updated in self.cart.values():
            times.add((updated // DAY + 30) * DAY)
        if self.metadata is not None:
            times.add(self.metadata["signup_time"] + 7 * DAY)
        return times


def reference_changes(clicks: list[dict[str, Any]], metadata: list[dict[str, Any]],
                      per_usd: dict[str, float], ttl_ms: int = 90 * DAY
                      ) -> dict[tuple[str, str], list[tuple[str, int]]]:
    """(user, segment) -> [(ENTER or EXIT, event time)] for the four segments, in time order."""
    inputs: dict[str, list[tuple[int, int, str, dict[str, Any]]]] = defaultdict(list)
    for m in metadata:
        inputs[m["user_id"]].append((m["updated_at"], 0, "", m))
    seen = set()
    for c in clicks:
        if c["event_id"] not in seen:
            seen.add(c["event_id"])
            inputs[c["user_id"]].append((c["event_time"], 1, c["event_id"], c))
    out: dict[tuple[str, str], list[tuple[str, int]]] = defaultdict(list)
    for user_id, items in inputs.items():
        items.sort(key=lambda i: i[:3])
        run = _Run(user_id, ttl_ms, out)
        for t, rank, _key, record in items:
            run.until(t)
            run.clock = t if run.clock is None else max(run.clock, t)
            if rank == 0:
                meta = run.user.metadata
                if meta is None or record["updated_at"] >= meta["updated_at"]:
                    run.user.metadata = record
            else:
                run.user.apply(record, per_usd)
            run.settle(t)
        run.until(None)
    return dict(out)


class _Run:
    """One user's timeline: time-driven changes between inputs, expiry."""

    def __init__(self, user_id: str, ttl_ms: int,
                 out: dict[tuple[str, str], list[tuple[str, int]]]) -> None:
        self.user_id, self.ttl_ms, self.out = user_id, ttl_ms, out
        self.user = _User()
        self.members: set[str] = set()
        self.clock: int | None = None

    def settle(self, now: int) -> None:
        now_in = self.user.members(now)
        for seg in sorted(self.members - now_in):
            self.out[(self.user_id, seg)].append(("EXIT", now))
        for seg in sorted(now_in - self.members):
            self.out[(self.user_id, seg)].append(("ENTER", now))
        self.members = now_in

    def until(self, limit: int | None) -> None:
        """Every change by time alone at or before ``limit`` (None: forever), expiry included."""
        while True:
            user = self.user
            expiry = None
            if user.events:
                expiry = -(-(user.events[-1][0] + self.ttl_ms + 1) // DAY) * DAY
            times = [t for t in user.edges() if self.clock is None or t > self.clock]
            if expiry is not None:
                times = [t for t in times if t < expiry] + [expiry]
            nxt = min(times, default=None)
            if nxt is None or (limit is not None and nxt > limit):
                return
            self.clock = nxt
            if nxt == expiry:
                for seg in sorted(self.members):
                    self.out[(self.user_id, seg)].append(("EXIT", expiry))
                self.members = set()
                self.user = _User()  # the state is dropped, metadata included
                continue
            self.settle(nxt)
