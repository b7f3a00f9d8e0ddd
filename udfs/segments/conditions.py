"""Compiled segment conditions and their evaluation against one user at one event time.

Inputs: a compiled ``Segment`` (built by ``udfs.segments.compiler``) and, per evaluation, one
``udfs.features.view.UserView``. Outputs: ``Evaluation`` results (member?, when could that change
without new input?, why?). State: none.

The time semantics are documented in ``udfs/segments/SEGMENTS.md``; keep the two in step.
Everything is event time: ``view.now_ms`` is the time of the event or timer being evaluated,
never the wall clock. All YAML, regex and name lookups happen at parse time; ``evaluate`` only
calls precompiled node objects.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Final

from udfs.definitions.comparisons import Test
from udfs.definitions.diagnostics import format_number
from udfs.definitions.durations import format_duration, parse_duration
from udfs.definitions.event_filter import EventFilter
from udfs.definitions.vocabulary import FEATURE_WINDOWS
from udfs.features.view import UserView

#: Recommended housekeeping interval: while a user has keyed state, the engine keeps an
#: event-time timer no later than the next multiple of this, so a definition added, changed or
#: deleted reaches users who send no events and have no other timer within this much event time
#: (see "Change policy" in SEGMENTS.md).
MEMBERSHIP_RECHECK_MS: Final = 24 * 3_600_000


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


# --- evaluation results and AST -----------------------------------------------------------------

#: (member, next_change_ms, reason) as every node returns it
_Result = tuple[bool, int | None, str]


class Evaluation:
    """The outcome of evaluating one segment for one user at one event time.

    A plain class with its own ``__init__``, neither a dataclass nor a named tuple: one is built
    per segment per evaluation (~7 an input), and compiled (``udfs.native``) a plain class is
    built natively, where a named tuple's constructor and a dataclass's generated ``__init__``
    are interpreted functions (~0.1-0.3 µs more each).

    Attributes:
        member: Whether the user is in the segment at ``view.now_ms``.
        next_change_ms: The earliest event time after ``now_ms`` at which ``member`` could change
            without a new event or metadata record (a lower bound: at that time the engine
            re-evaluates, and may find nothing changed); None when only new input can change it.
        reason: Short human-readable explanation, e.g. ``cart_value 142.5 > 100``.
    """

    def __init__(self, member: bool, next_change_ms: int | None, reason: str) -> None:
        self.member = member
        self.next_change_ms = next_change_ms
        self.reason = reason

    def __repr__(self) -> str:
        return (f"Evaluation(member={self.member!r}, next_change_ms={self.next_change_ms!r}, "
                f"reason={self.reason!r})")


class Condition:
    """A node of a compiled segment condition."""

    __slots__ = ()

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """(member, next_change_ms, reason) of this node for ``view`` at event time ``now``.

        ``explain=False``: the reason is left empty (""). Member and next_change_ms are the
        same either way; building the reasons costs more than deciding, and the engine needs
        one only when membership changes (then it evaluates again, explaining).
        """
        raise NotImplementedError

    def children(self) -> tuple[Condition, ...]:
        """The direct sub-conditions (empty for leaves)."""
        return ()

    def walk(self) -> Iterator[Condition]:
        """This node and all nodes below it, depth first."""
        yield self
        for child in self.children():
            yield from child.walk()


@dataclass(frozen=True, slots=True)
class AllOf(Condition):
    """``all: [...]``: true when every child is true.

    next_change_ms: when true, the earliest of the children's (any child turning false turns
    this false); when false, the first false child's (this cannot turn true before it does).
    """

    conditions: tuple[Condition, ...]

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        soonest: int | None = None
        reasons = []
        for child in self.conditions:
            member, nxt, reason = child.evaluate(view, now, explain)
            if not member:
                return False, nxt, reason
            soonest = _earliest(soonest, nxt)
            if explain:
                reasons.append(reason)
        return True, soonest, " and ".join(reasons) if explain else ""

    def children(self) -> tuple[Condition, ...]:
        """The ``all`` list."""
        return self.conditions


@dataclass(frozen=True, slots=True)
class AnyOf(Condition):
    """``any: [...]``: true when at least one child is true.

    next_change_ms: when true, the first true child's (this stays true while it does); when
    false, the earliest of the children's.
    """

    conditions: tuple[Condition, ...]

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        soonest: int | None = None
        reasons = []
        for child in self.conditions:
            member, nxt, reason = child.evaluate(view, now, explain)
            if member:
                return True, nxt, reason
            soonest = _earliest(soonest, nxt)
            if explain:
                reasons.append(reason)
        return False, soonest, " and ".join(reasons) if explain else ""

    def children(self) -> tuple[Condition, ...]:
        """The ``any`` list."""
        return self.conditions


@dataclass(frozen=True, slots=True)
class Not(Condition):
    """``not: cond``: the negation; same next_change_ms, and the child's reason (a fact)."""

    condition: Condition

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        member, nxt, reason = self.condition.evaluate(view, now, explain)
        return not member, nxt, reason

    def children(self) -> tuple[Condition, ...]:
        """The negated condition."""
        return (self.condition,)


@dataclass(frozen=True, slots=True)
class FeatureClock:
    """How a feature moves with event time alone (no new event).

    ``age`` features (``seconds_since_*``, ``days_since_*``) grow by one unit per ``unit_ms``;
    ``window`` features (``*_1h`` ... ``*_30d``) change when one of the counted events leaves
    the window (``types`` None = every event type); ``cart`` features (``cart_lines``,
    ``cart_items``, ``cart_value``) fall when a cart line expires (30 UTC days untouched);
    ``decreasing`` says the value can only fall then (counts and sums, not shares).
    """

    kind: str  # age | window | cart
    unit_ms: int  # age: milliseconds per unit of the value; window: window length
    types: frozenset[str] | None = None
    decreasing: bool = True


#: features of the cart's lines: they fall when a line expires
CART_FEATURES: Final = frozenset({"cart_lines", "cart_items", "cart_value"})


def feature_clock(name: str) -> FeatureClock | None:
    """The time behaviour of a feature, inferred from its name; None for event-driven ones."""
    if name.startswith("seconds_since_"):
        return FeatureClock("age", 1000)
    if name.startswith("days_since_"):
        return FeatureClock("age", 86_400_000)
    if name in CART_FEATURES:
        return FeatureClock("cart", 30 * 86_400_000)
    for window in FEATURE_WINDOWS:
        if not name.endswith("_" + window):
            continue
        stem = name[: -len(window) - 1]
        types: frozenset[str] | None = None
        if stem.startswith("events_") and stem != "events_total":
            types = frozenset({stem[len("events_"):].upper()})
        elif stem in ("orders", "revenue"):
            types = frozenset({"PURCHASE"})
        decreasing = not stem.endswith("_share")
        return FeatureClock("window", parse_duration(window), types, decreasing)
    return None


def _age_next_change(op: str, value: Any, v: float, now: int, unit_ms: int) -> int | None:
    """When a value growing by 1 per ``unit_ms`` from ``v`` at ``now`` flips ``v <op> value``."""

    def reach(x: float) -> int:  # first ms at which the value is >= x
        return now + math.ceil((x - v) * unit_ms)

    def pass_(x: float) -> int:  # first ms at which the value is > x
        return now + math.floor((x - v) * unit_ms) + 1

    result: int | None
    if op == "between":
        lo, hi = value
        result = reach(lo) if v < lo else pass_(hi) if v <= hi else None
    elif op in (">", "<="):
        result = pass_(value) if v <= value else None
    elif op in (">=", "<"):
        result = reach(value) if v < value else None
    else:  # == and != change when the value reaches it and right after
        result = reach(value) if v < value else now + 1 if v == value else None
    return None if result is None else max(result, now + 1)


def _window_next_change(view: UserView, now: int, clock: FeatureClock) -> int | None:
    """When the oldest counted event still inside the window leaves it (see FeatureClock)."""
    start = now - clock.unit_ms
    types = clock.types
    for event in view.recent_events():  # oldest first
        t = event.event_time
        if t <= start:
            continue
        if t > now:
            break
        if types is None or event.event_type in types:
            return t + clock.unit_ms
    return None


@dataclass(frozen=True, slots=True)
class FeatureCondition(Condition):
    """``feature: {name, op, value}``: compare a behavioural feature; unknown (None) is false.

    Time-dependent features get a next_change_ms: age features when they will cross the
    threshold, window features when the oldest counted event leaves the window (only when that
    can flip the outcome).
    """

    name: str
    op: str
    value: float | tuple[float, float]
    test: Test = field(repr=False, compare=False)
    clock: FeatureClock | None = field(repr=False, compare=False)
    shown: str = field(repr=False, compare=False)
    show: Callable[[Any], str] = field(default=format_number, repr=False, compare=False)

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        v = view.feature(self.name)
        if v is None:
            return False, None, f"{self.name} unknown" if explain else ""
        member = self.test(v)
        reason = "" if not explain else (
            f"{self.name} {self.show(v)} {self.shown}" if member
            else f"{self.name} {self.show(v)} not {self.shown}")
        clock = self.clock
        if clock is None:
            return member, None, reason
        if clock.kind == "age":
            return member, _age_next_change(self.op, self.value, v, now, clock.unit_ms), reason
        if clock.decreasing and (
            (self.op in (">", ">=") and not member) or (self.op in ("<", "<=") and member)
        ):
            return member, None, reason  # falling counts cannot flip these
        if clock.kind == "cart":
            return member, view.cart_expiry_ms(), reason
        return member, _window_next_change(view, now, clock), reason


@dataclass(frozen=True, slots=True)
class MetadataCondition(Condition):
    """``metadata: {field, op, value}``: compare a UserMetadata field; missing metadata is false.

    ``within_last`` (time fields): true while ``now - field < value``; turns false at
    ``field + value``, which is its next_change_ms.
    """

    field: str
    op: str
    value: Any
    test: Test = dataclasses.field(repr=False, compare=False)
    shown: str = dataclasses.field(repr=False, compare=False)

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        actual = view.metadata(self.field)
        if actual is None:
            return False, None, f"no metadata {self.field}" if explain else ""
        if self.op == "within_last":
            age = now - actual
            if age < self.value:
                return (True, actual + self.value,
                        f"{self.field} {format_duration(max(age, 0))} ago, within the last "
                        f"{format_duration(self.value)}" if explain else "")
            return (False, None, f"{self.field} {format_duration(age)} ago, not within the last "
                    f"{format_duration(self.value)}" if explain else "")
        member = self.test(actual)
        if not explain:
            return member, None, ""
        if member:
            return True, None, f"{self.field} {format_number(actual)} {self.shown}"
        return False, None, f"{self.field} {format_number(actual)} not {self.shown}"


@dataclass(frozen=True, slots=True)
class EventCondition(Condition):
    """``event: {type, within, where, min_count}``: enough matching recent events in the window.

    True when at least ``min_count`` events match and ``now - within < event_time <= now``.

    next_change_ms: when true, the time the ``min_count``-th newest match leaves the window;
    when false, only a new event can add matches (None), except for events timestamped after
    ``now`` (out of order), which enter the window at their own time.
    """

    match: EventFilter
    within_ms: int
    min_count: int = 1

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        start = now - self.within_ms
        need = self.min_count
        count = 0
        future: int | None = None
        types, matches = self.match.types, self.match.matches
        for event in reversed(view.recent_events()):  # newest first
            t = event.event_time
            if t > now:
                if event.event_type in types and matches(event):
                    future = t
                continue
            if t <= start:
                break
            if event.event_type in types and matches(event):
                count += 1
                if count == need:
                    return (True, _earliest(t + self.within_ms, future),
                            f"{count} {self.match.label} within {format_duration(self.within_ms)}"
                            if explain else "")
        return (False, future,
                f"{count} {self.match.label} within {format_duration(self.within_ms)}, "
                f"fewer than {need}" if explain else "")


@dataclass(frozen=True, slots=True)
class AbsenceCondition(Condition):
    """``absence: {after, missing, within, expires_after}``: "after X, no Y within W".

    Looks at the latest ``after`` event A with ``A.t <= now``. True once ``now >= A.t + within``
    and no ``missing`` event follows A (up to ``now``); stays true until a ``missing`` event
    arrives or a newer ``after`` event restarts the window; with ``expires_after`` E it turns
    false at ``A.t + within + E``. next_change_ms: the window end while waiting, the expiry
    while true.
    """

    after: EventFilter
    missing: EventFilter
    within_ms: int
    expires_after_ms: int | None = None

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        after, missing = self.after, self.missing
        after_types, missing_types = after.types, missing.types
        future: int | None = None
        missed_at: int | None = None
        anchor: int | None = None
        for event in reversed(view.recent_events()):  # newest first
            kind = event.event_type
            if kind not in after_types and kind not in missing_types:
                continue  # the cheap test first: most events are of neither type
            is_after = kind in after_types and after.matches(event)
            if not is_after and not (kind in missing_types and missing.matches(event)):
                continue
            t = event.event_time
            if t > now:
                future = t
            elif is_after:
                anchor = t
                break
            else:
                missed_at = t
        if anchor is None:
            return False, future, f"no {after.label} in recent events" if explain else ""
        if missed_at is not None:
            return (False, future, f"{missing.label} {format_duration(missed_at - anchor)} after "
                    f"{after.label}" if explain else "")
        deadline = anchor + self.within_ms
        if now < deadline:
            return (False, _earliest(deadline, future),
                    f"{after.label} {format_duration(now - anchor)} ago, waiting "
                    f"{format_duration(deadline - now)} more for {missing.label}"
                    if explain else "")
        reason = (f"{after.label} {format_duration(now - anchor)} ago, no {missing.label} "
                  f"within {format_duration(self.within_ms)}") if explain else ""
        if self.expires_after_ms is None:
            return True, future, reason
        expiry = deadline + self.expires_after_ms
        if now >= expiry:
            return (False, future, f"{reason}, expired after "
                    f"{format_duration(self.expires_after_ms)}" if explain else "")
        return True, _earliest(expiry, future), reason


@dataclass(frozen=True, slots=True)
class InactiveCondition(Condition):
    """``inactive: {for}``: true when ``now - last_event_ms >= for``; false for unseen users.

    next_change_ms: while active, ``last_event_ms + for``; once inactive, only an event changes
    it (None).
    """

    for_ms: int

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        last = view.last_event_ms
        if last is None:
            return False, None, "no event seen yet"
        idle = now - last
        if idle >= self.for_ms:
            return True, None, f"no event for {format_duration(idle)}" if explain else ""
        return (False, last + self.for_ms,
                f"last event {format_duration(max(idle, 0))} ago, less than "
                f"{format_duration(self.for_ms)}" if explain else "")


@dataclass(frozen=True, slots=True)
class ChurnScoreCondition(Condition):
    """``churn_score: {op, value}``: reserved hook; false while the view's score is None."""

    op: str
    value: float | tuple[float, float]
    test: Test = field(repr=False, compare=False)
    shown: str = field(repr=False, compare=False)

    def evaluate(self, view: UserView, now: int, explain: bool = True) -> _Result:
        """See class docstring."""
        score = view.churn_score
        if score is None:
            return False, None, "no churn score yet"
        member = self.test(score)
        if not explain:
            return member, None, ""
        if member:
            return True, None, f"churn score {format_number(score)} {self.shown}"
        return False, None, f"churn score {format_number(score)} not {self.shown}"


@dataclass(frozen=True)
class Segment:
    """A validated, compiled segment definition.

    Attributes:
        id: Unique id (kebab or snake case); the DefinitionUpdate ``definition_id``.
        version: Version, >= 1; strictly increasing per id.
        description: What the segment is for (for people).
        enabled: A disabled segment has no members (its members EXIT when next evaluated).
        condition: The compiled condition tree.
        document: The document as written (JSON-able), published as DefinitionUpdate.body.
        source: Where it came from: a file path or ``definition <id> v<version>``.
    """

    id: str
    version: int
    description: str
    enabled: bool
    condition: Condition
    document: dict[str, Any] = field(repr=False, compare=False, hash=False)
    source: str = field(default="", compare=False)

    @property
    def uses_churn_score(self) -> bool:
        """Whether any node reads the churn score (SegmentChange then carries it)."""
        return any(isinstance(node, ChurnScoreCondition) for node in self.condition.walk())


def evaluate(segment: Segment, view: UserView, explain: bool = True) -> Evaluation:
    """Evaluate a segment for one user at ``view.now_ms`` (pure, no I/O, no parsing).

    Args:
        segment: A compiled segment.
        view: The user's state at the event time being processed.
        explain: build the reason; False leaves it empty ("") and is several times cheaper
            (membership and next_change_ms are the same either way).

    Returns:
        Membership, the earliest time it could change without new input, and why.
    """
    if not segment.enabled:
        return Evaluation(False, None, f"segment {segment.id} is disabled in v{segment.version}"
                          if explain else "")
    member, next_change, reason = segment.condition.evaluate(view, view.now_ms, explain)
    return Evaluation(member, next_change, reason)
