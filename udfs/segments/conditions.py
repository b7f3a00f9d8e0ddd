"""Segment definitions as data: parse and validate YAML, evaluate against a user, version them.

Inputs: segment documents (YAML files at job start, JSON bodies of DefinitionUpdate records at
runtime) and, per evaluation, one ``udfs.view.UserView``. Outputs: ``Segment`` objects (a small
precompiled AST plus the original document), ``Evaluation`` results (member?, when could that
change without new input?, why?) and ``DefinitionError`` items (file, path in the document,
message). State: none here; ``SegmentRegistry`` holds the current definitions by id and is what
the engine keeps in (and rebuilds from) Flink broadcast state.

The grammar, the time semantics and the change policy are documented in ``udfs/SEGMENTS.md``;
keep the two in step. Everything is event time: ``view.now_ms`` is the time of the event or
timer being evaluated, never the wall clock. All YAML, regex and name lookups happen at parse
time; ``evaluate`` only calls precompiled node objects.
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import importlib
import json
import math
import operator
import re
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from functools import lru_cache
from importlib.resources import files
from pathlib import Path
from types import MappingProxyType
from typing import Any

import yaml

from udfs.view import RecentEvent, UserView

#: Where the shipped segment catalog lives (one YAML file per segment).
CATALOG_DIR = Path(__file__).resolve().parent / "catalog" / "segments"

#: Recommended housekeeping interval: while a user has keyed state, the engine keeps an
#: event-time timer no later than the next multiple of this, so a definition added, changed or
#: deleted reaches users who send no events and have no other timer within this much event time
#: (see "Change policy" in SEGMENTS.md).
MEMBERSHIP_RECHECK_MS = 24 * 3_600_000

SEGMENT_KIND = "SEGMENT"
UPSERT = "UPSERT"
DELETE = "DELETE"

_MAX_VERSION = 2**31 - 1  # DefinitionUpdate.version is an Avro int
_DURATION_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
_ID_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
_ID_MAX_LEN = 100

NUMERIC_OPS = ("<", "<=", ">", ">=", "==", "!=", "between")
EQUALITY_OPS = ("==", "!=", "in", "not_in")
BOOLEAN_OPS = ("==", "!=")
TIME_OPS = ("within_last", *NUMERIC_OPS)

#: Typical misspellings of operators, suggested before difflib's guess.
_OP_ALIASES = {
    "=": "==", "=>": ">=", "=<": "<=", "<>": "!=", "gt": ">", "ge": ">=", "gte": ">=",
    "lt": "<", "le": "<=", "lte": "<=", "eq": "==", "ne": "!=", "neq": "!=", "not in": "not_in",
    "notin": "not_in", "nin": "not_in", "range": "between",
}

CONDITION_KINDS = (
    "all", "any", "not", "feature", "metadata", "event", "absence", "inactive", "churn_score",
)
SEGMENT_KEYS = ("id", "version", "description", "enabled", "condition")
_REQUIRED_SEGMENT_KEYS = ("id", "version", "description", "condition")
WHERE_FIELDS = ("price", "value", "category", "source", "product_id")
_NUMERIC_WHERE_FIELDS = ("price", "value")

#: Feature names documented by the features issue; used only when ``udfs.features`` cannot be
#: imported (then ``events_<event type lower|total>_<window>`` is accepted as well).
FALLBACK_FEATURE_NAMES = (
    "events_total_24h", "sessions_7d", "seconds_since_last_event", "seconds_since_last_purchase",
    "cart_items", "cart_value", "orders_30d", "revenue_30d", "orders_total", "revenue_total",
    "avg_order_value", "mobile_share_30d", "days_since_signup", "lifetime_value",
)
FEATURE_WINDOWS = ("1h", "24h", "7d", "30d")


# --- errors -------------------------------------------------------------------------------------


class DefinitionError(ValueError):
    """One thing wrong with a definition: where (file, path in the document) and what.

    Attributes:
        file: The file name, or ``definition <id> v<version>`` for a DefinitionUpdate body.
        path: Location in the document, e.g. ``segments[2].condition.all[1].feature.op``; empty
            for the document as a whole.
        message: What is wrong and what is allowed.
        line: 1-based line in the file when known (YAML files), else None.
    """

    def __init__(self, file: str, path: str, message: str, line: int | None = None) -> None:
        super().__init__(file, path, message, line)
        self.file = file
        self.path = path
        self.message = message
        self.line = line

    @property
    def errors(self) -> tuple[DefinitionError, ...]:
        """Every error this exception stands for (just itself)."""
        return (self,)

    def __str__(self) -> str:
        return format_errors(self.errors)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, DefinitionError) or isinstance(other, InvalidDefinitions):
            return NotImplemented
        return (self.file, self.path, self.message, self.line) == (
            other.file, other.path, other.message, other.line
        )

    def __hash__(self) -> int:
        return hash((self.file, self.path, self.message, self.line))


class InvalidDefinitions(DefinitionError):
    """Several ``DefinitionError`` items raised at once; file, path and message are the first's."""

    def __init__(self, errors: Sequence[DefinitionError]) -> None:
        if not errors:
            raise ValueError("InvalidDefinitions needs at least one error")
        first = errors[0]
        super().__init__(first.file, first.path, first.message, first.line)
        self._errors = tuple(errors)

    @property
    def errors(self) -> tuple[DefinitionError, ...]:
        """Every error found, in document order."""
        return self._errors

    def __reduce__(self) -> tuple[Any, ...]:
        return (InvalidDefinitions, (list(self._errors),))

    __hash__ = DefinitionError.__hash__


def format_errors(errors: Iterable[DefinitionError]) -> str:
    """Render errors one per line as ``file:path: message``, with `` (line N)`` when known.

    Args:
        errors: The errors, typically from ``validate_files`` or ``InvalidDefinitions.errors``.

    Returns:
        The lines joined with newlines (no trailing newline).
    """
    lines = []
    for error in errors:
        where = f"{error.file}:{error.path}" if error.path else error.file
        suffix = f" (line {error.line})" if error.line is not None else ""
        lines.append(f"{where}: {error.message}{suffix}")
    return "\n".join(lines)


# --- vocabulary from the Avro contracts ---------------------------------------------------------


@lru_cache(maxsize=None)
def _schema(name: str) -> dict[str, Any]:
    text = files("schemas").joinpath(f"{name}.avsc").read_text(encoding="utf-8")
    return dict(json.loads(text))


def _enum_symbols(schema: dict[str, Any], field_name: str) -> tuple[str, ...]:
    for entry in schema["fields"]:
        if entry["name"] == field_name:
            return tuple(entry["type"]["symbols"])
    raise KeyError(field_name)


@lru_cache(maxsize=None)
def event_types() -> tuple[str, ...]:
    """The ClickEvent ``EventType`` symbols (read once from ``schemas/ClickEvent.avsc``)."""
    return _enum_symbols(_schema("ClickEvent"), "event_type")


@lru_cache(maxsize=None)
def event_sources() -> tuple[str, ...]:
    """The ClickEvent ``EventSource`` symbols (WEB, MOBILE, OFFLINE, UNKNOWN)."""
    return _enum_symbols(_schema("ClickEvent"), "source")


@dataclass(frozen=True, slots=True)
class MetadataField:
    """A UserMetadata field a ``metadata`` condition may read, and how it may be compared."""

    name: str
    kind: str  # string | enum | time | number | boolean
    symbols: tuple[str, ...] = ()

    @property
    def ops(self) -> tuple[str, ...]:
        """The operators allowed on this field."""
        return {
            "string": EQUALITY_OPS,
            "enum": EQUALITY_OPS,
            "time": TIME_OPS,
            "number": NUMERIC_OPS,
            "boolean": BOOLEAN_OPS,
        }[self.kind]


@lru_cache(maxsize=None)
def metadata_fields() -> dict[str, MetadataField]:
    """The UserMetadata fields by dotted name (``opt_ins.email``), derived from its schema."""
    out: dict[str, MetadataField] = {}

    def add(prefix: str, fields_: list[dict[str, Any]]) -> None:
        for entry in fields_:
            name, kind = prefix + entry["name"], entry["type"]
            if isinstance(kind, dict) and kind.get("type") == "record":
                add(name + ".", kind["fields"])
            elif isinstance(kind, dict) and kind.get("type") == "enum":
                out[name] = MetadataField(name, "enum", tuple(kind["symbols"]))
            elif isinstance(kind, dict) and kind.get("logicalType") == "timestamp-millis":
                out[name] = MetadataField(name, "time")
            elif kind in ("double", "float", "int", "long"):
                out[name] = MetadataField(name, "number")
            elif kind == "boolean":
                out[name] = MetadataField(name, "boolean")
            elif kind == "string":
                out[name] = MetadataField(name, "string")

    add("", _schema("UserMetadata")["fields"])
    return out


def known_feature_names() -> tuple[frozenset[str], str]:
    """The feature names conditions may use, and where they came from.

    Imports ``udfs.features`` lazily (it may not exist yet, or may import what a validator
    does not need) and uses its ``FEATURE_NAMES``; falls back to ``FALLBACK_FEATURE_NAMES`` plus
    the ``events_<event type lower|total>_<1h|24h|7d|30d>`` pattern when that import fails.

    Returns:
        (names, source) where source is ``udfs.features.FEATURE_NAMES`` or ``fallback``.
    """
    try:
        features = importlib.import_module("udfs.features")  # lazy on purpose, see above
        names = frozenset(str(name) for name in features.FEATURE_NAMES)
    except (ImportError, AttributeError):
        return _fallback_feature_names(), "fallback"
    return names, "udfs.features.FEATURE_NAMES"


@lru_cache(maxsize=1)
def _fallback_feature_names() -> frozenset[str]:
    per_type = [t.lower() for t in event_types()] + ["total"]
    patterned = {f"events_{t}_{w}" for t in per_type for w in FEATURE_WINDOWS}
    return frozenset(FALLBACK_FEATURE_NAMES) | patterned


# --- durations ----------------------------------------------------------------------------------


def parse_duration(text: str) -> int:
    """Milliseconds of a duration such as ``500ms``, ``90s``, ``30m``, ``24h`` or ``7d``.

    Args:
        text: A positive whole number followed by one unit: ms, s, m, h or d.

    Returns:
        The duration in milliseconds.

    Raises:
        ValueError: The text is not such a duration, or is zero.
    """
    match = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    ms = int(match[1]) * _DURATION_UNITS[match[2]]
    if ms <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    return ms


def format_duration(ms: int | float) -> str:
    """A short human form of a duration: ``45m``, ``1d 2h``, ``90s`` -> ``1m 30s``, ``500ms``."""
    ms = int(ms)
    if ms < 1000:
        return f"{ms}ms"
    parts = []
    rest = ms
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
        if len(parts) == 2:
            break
    return " ".join(parts)


def _num(value: Any) -> str:
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.4f}".rstrip("0").rstrip(".")
    return str(value)


def _shown(op: str, value: Any) -> str:
    if op == "between":
        return f"between {_num(value[0])} and {_num(value[1])}"
    if op in ("in", "not_in"):
        return f"{op.replace('_', ' ')} [{', '.join(_num(v) for v in value)}]"
    return f"{op} {_num(value)}"


def _earliest(a: int | None, b: int | None) -> int | None:
    if a is None:
        return b
    if b is None:
        return a
    return a if a <= b else b


# --- evaluation results and AST -----------------------------------------------------------------

#: (member, next_change_ms, reason) as every node returns it
_Result = tuple[bool, int | None, str]
_Test = Callable[[Any], bool]


@dataclass(frozen=True, slots=True)
class Evaluation:
    """The outcome of evaluating one segment for one user at one event time.

    Attributes:
        member: Whether the user is in the segment at ``view.now_ms``.
        next_change_ms: The earliest event time after ``now_ms`` at which ``member`` could change
            without a new event or metadata record (a lower bound: at that time the engine
            re-evaluates, and may find nothing changed); None when only new input can change it.
        reason: Short human-readable explanation, e.g. ``cart_value 142.5 > 100``.
    """

    member: bool
    next_change_ms: int | None
    reason: str


def _make_test(op: str, value: Any) -> _Test:
    """A predicate for ``<actual> <op> <value>``; None (unknown) never matches, for any op."""
    if op == "between":
        lo, hi = value
        return lambda v: v is not None and lo <= v <= hi
    if op == "in":
        allowed = frozenset(value)
        return lambda v: v is not None and v in allowed
    if op == "not_in":
        banned = frozenset(value)
        return lambda v: v is not None and v not in banned
    compare: Callable[[Any, Any], bool] = {
        "<": operator.lt, "<=": operator.le, ">": operator.gt, ">=": operator.ge,
        "==": operator.eq, "!=": operator.ne,
    }[op]
    return lambda v: v is not None and compare(v, value)


class Condition:
    """A node of a compiled segment condition."""

    __slots__ = ()

    def evaluate(self, view: UserView, now: int) -> _Result:
        """(member, next_change_ms, reason) of this node for ``view`` at event time ``now``."""
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

    def evaluate(self, view: UserView, now: int) -> _Result:
        """See class docstring."""
        soonest: int | None = None
        reasons = []
        for child in self.conditions:
            member, nxt, reason = child.evaluate(view, now)
            if not member:
                return False, nxt, reason
            soonest = _earliest(soonest, nxt)
            reasons.append(reason)
        return True, soonest, " and ".join(reasons)

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

    def evaluate(self, view: UserView, now: int) -> _Result:
        """See class docstring."""
        soonest: int | None = None
        reasons = []
        for child in self.conditions:
            member, nxt, reason = child.evaluate(view, now)
            if member:
                return True, nxt, reason
            soonest = _earliest(soonest, nxt)
            reasons.append(reason)
        return False, soonest, " and ".join(reasons)

    def children(self) -> tuple[Condition, ...]:
        """The ``any`` list."""
        return self.conditions


@dataclass(frozen=True, slots=True)
class Not(Condition):
    """``not: cond``: the negation; same next_change_ms, and the child's reason (a fact)."""

    condition: Condition

    def evaluate(self, view: UserView, now: int) -> _Result:
        """See class docstring."""
        member, nxt, reason = self.condition.evaluate(view, now)
        return not member, nxt, reason

    def children(self) -> tuple[Condition, ...]:
        """The negated condition."""
        return (self.condition,)


@dataclass(frozen=True, slots=True)
class FeatureClock:
    """How a feature moves with event time alone (no new event).

    ``age`` features (``seconds_since_*``, ``days_since_*``) grow by one unit per ``unit_ms``;
    ``window`` features (``*_1h`` ... ``*_30d``) change when one of the counted events leaves
    the window (``types`` None = every event type); ``decreasing`` says the value can only fall
    then (counts and sums, not shares).
    """

    kind: str  # age | window
    unit_ms: int  # age: milliseconds per unit of the value; window: window length
    types: frozenset[str] | None = None
    decreasing: bool = True


def feature_clock(name: str) -> FeatureClock | None:
    """The time behaviour of a feature, inferred from its name; None for event-driven ones."""
    if name.startswith("seconds_since_"):
        return FeatureClock("age", 1000)
    if name.startswith("days_since_"):
        return FeatureClock("age", 86_400_000)
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
    test: _Test = field(repr=False, compare=False)
    clock: FeatureClock | None = field(repr=False, compare=False)
    shown: str = field(repr=False, compare=False)
    show: Callable[[Any], str] = field(default=_num, repr=False, compare=False)

    def evaluate(self, view: UserView, now: int) -> _Result:
        """See class docstring."""
        v = view.feature(self.name)
        if v is None:
            return False, None, f"{self.name} unknown"
        member = self.test(v)
        reason = (f"{self.name} {self.show(v)} {self.shown}" if member
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
    test: _Test = dataclasses.field(repr=False, compare=False)
    shown: str = dataclasses.field(repr=False, compare=False)

    def evaluate(self, view: UserView, now: int) -> _Result:
        """See class docstring."""
        actual = view.metadata(self.field)
        if actual is None:
            return False, None, f"no metadata {self.field}"
        if self.op == "within_last":
            age = now - actual
            if age < self.value:
                return (True, actual + self.value,
                        f"{self.field} {format_duration(max(age, 0))} ago, within the last "
                        f"{format_duration(self.value)}")
            return (False, None, f"{self.field} {format_duration(age)} ago, not within the last "
                    f"{format_duration(self.value)}")
        if self.test(actual):
            return True, None, f"{self.field} {_num(actual)} {self.shown}"
        return False, None, f"{self.field} {_num(actual)} not {self.shown}"


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events count: one of ``types``, and every ``where`` test on its fields."""

    types: frozenset[str]
    where: tuple[tuple[str, str, Any], ...] = ()  # (field, op, value)
    tests: tuple[tuple[Callable[[RecentEvent], Any], _Test], ...] = field(
        default=(), repr=False, compare=False
    )
    label: str = field(default="", repr=False, compare=False)

    def matches(self, event: RecentEvent) -> bool:
        """Whether the event passes the type and every where-test."""
        if event.event_type not in self.types:
            return False
        for get, test in self.tests:
            if not test(get(event)):
                return False
        return True


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

    def evaluate(self, view: UserView, now: int) -> _Result:
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
                            f"{count} {self.match.label} within {format_duration(self.within_ms)}")
        return (False, future,
                f"{count} {self.match.label} within {format_duration(self.within_ms)}, "
                f"fewer than {need}")


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

    def evaluate(self, view: UserView, now: int) -> _Result:
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
            return False, future, f"no {after.label} in recent events"
        if missed_at is not None:
            return (False, future, f"{missing.label} {format_duration(missed_at - anchor)} after "
                    f"{after.label}")
        deadline = anchor + self.within_ms
        if now < deadline:
            return (False, _earliest(deadline, future),
                    f"{after.label} {format_duration(now - anchor)} ago, waiting "
                    f"{format_duration(deadline - now)} more for {missing.label}")
        reason = (f"{after.label} {format_duration(now - anchor)} ago, no {missing.label} "
                  f"within {format_duration(self.within_ms)}")
        if self.expires_after_ms is None:
            return True, future, reason
        expiry = deadline + self.expires_after_ms
        if now >= expiry:
            return (False, future, f"{reason}, expired after "
                    f"{format_duration(self.expires_after_ms)}")
        return True, _earliest(expiry, future), reason


@dataclass(frozen=True, slots=True)
class InactiveCondition(Condition):
    """``inactive: {for}``: true when ``now - last_event_ms >= for``; false for unseen users.

    next_change_ms: while active, ``last_event_ms + for``; once inactive, only an event changes
    it (None).
    """

    for_ms: int

    def evaluate(self, view: UserView, now: int) -> _Result:
        """See class docstring."""
        last = view.last_event_ms
        if last is None:
            return False, None, "no event seen yet"
        idle = now - last
        if idle >= self.for_ms:
            return True, None, f"no event for {format_duration(idle)}"
        return (False, last + self.for_ms,
                f"last event {format_duration(max(idle, 0))} ago, less than "
                f"{format_duration(self.for_ms)}")


@dataclass(frozen=True, slots=True)
class ChurnScoreCondition(Condition):
    """``churn_score: {op, value}``: reserved hook; false while the view's score is None."""

    op: str
    value: float | tuple[float, float]
    test: _Test = field(repr=False, compare=False)
    shown: str = field(repr=False, compare=False)

    def evaluate(self, view: UserView, now: int) -> _Result:
        """See class docstring."""
        score = view.churn_score
        if score is None:
            return False, None, "no churn score yet"
        if self.test(score):
            return True, None, f"churn score {_num(score)} {self.shown}"
        return False, None, f"churn score {_num(score)} not {self.shown}"


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


def evaluate(segment: Segment, view: UserView) -> Evaluation:
    """Evaluate a segment for one user at ``view.now_ms`` (pure, no I/O, no parsing).

    Args:
        segment: A compiled segment.
        view: The user's state at the event time being processed.

    Returns:
        Membership, the earliest time it could change without new input, and why.
    """
    if not segment.enabled:
        return Evaluation(False, None, f"segment {segment.id} is disabled in v{segment.version}")
    member, next_change, reason = segment.condition.evaluate(view, view.now_ms)
    return Evaluation(member, next_change, reason)


# --- validation and compilation -----------------------------------------------------------------


def _join(path: str, key: str) -> str:
    return f"{path}.{key}" if path else key


def _describe(value: Any) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"the boolean {str(value).lower()}"
    if isinstance(value, int | float):
        return f"the number {_num(value)}"
    if isinstance(value, str):
        return f"the string {value!r}"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return f"a {type(value).__name__}"


def _suggest(word: str, choices: Iterable[str], aliases: Mapping[str, str] | None = None) -> str:
    """``; did you mean 'x'?`` or the empty string."""
    choices = list(choices)
    if aliases and word in aliases and aliases[word] in choices:
        return f"; did you mean {aliases[word]!r}?"
    for choice in choices:
        if choice.lower() == word.lower():
            return f"; did you mean {choice!r}?"
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"; did you mean {close[0]!r}?" if close else ""


def _listing(choices: Sequence[str]) -> str:
    return ", ".join(choices)


class _Compiler:
    """Validates one document tree and compiles it; collects every error, not just the first."""

    def __init__(self, file: str, lines: Mapping[str, int] | None = None) -> None:
        self.file = file
        self.lines = lines or {}
        self.errors: list[DefinitionError] = []
        self._features: tuple[frozenset[str], str] | None = None

    # helpers

    def error(self, path: str, message: str) -> None:
        self.errors.append(DefinitionError(self.file, path, message, self._line(path)))

    def _line(self, path: str) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""

    def features(self) -> tuple[frozenset[str], str]:
        if self._features is None:
            self._features = known_feature_names()
        return self._features

    def mapping(self, data: Any, path: str, what: str, allowed: Sequence[str],
                required: Sequence[str]) -> dict[str, Any] | None:
        """Check a mapping's type and keys; None if it is not a mapping."""
        if not isinstance(data, dict):
            self.error(path, f"{what} must be a mapping with keys {_listing(allowed)}; "
                             f"got {_describe(data)}")
            return None
        for key in data:
            if not isinstance(key, str):
                self.error(path, f"{what}: keys must be strings, got {_describe(key)}")
            elif key not in allowed:
                self.error(_join(path, key), f"unknown key {key!r} in {what}: allowed: "
                                             f"{_listing(allowed)}{_suggest(key, allowed)}")
        for key in required:
            if key not in data:
                self.error(path, f"{what} is missing required key {key!r} "
                                 f"(required: {_listing(required)})")
        return data

    def duration(self, data: Any, path: str) -> int | None:
        if isinstance(data, str):
            try:
                return parse_duration(data)
            except ValueError:
                pass
        hint = ""
        if isinstance(data, int | float) and not isinstance(data, bool):
            hint = f" (a bare number has no unit: write e.g. {_num(data)}m or {_num(data)}s)"
        elif isinstance(data, str) and data.strip().startswith(("0ms", "0s", "0m", "0h", "0d")):
            hint = " (must be longer than zero)"
        self.error(path, f"bad duration {data!r}: expected a whole number and one unit of "
                         f"ms, s, m, h, d, e.g. 500ms, 90s, 30m, 24h, 7d{hint}")
        return None

    def number(self, data: Any, path: str, what: str) -> float | None:
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.error(path, f"{what} must be a number, got {_describe(data)}")
            return None
        if not math.isfinite(data):
            self.error(path, f"{what} must be a finite number, got {data}")
            return None
        return data

    def op(self, data: Any, path: str, allowed: Sequence[str], what: str) -> str | None:
        if not isinstance(data, str) or data not in allowed:
            shown = repr(data) if isinstance(data, str) else _describe(data)
            hint = _suggest(data, allowed, _OP_ALIASES) if isinstance(data, str) else ""
            self.error(path, f"unknown op {shown} for {what}: allowed: "
                             f"{_listing(allowed)}{hint}")
            return None
        return data

    def operand(self, op: str, data: Any, path: str, what: str,
                scalar: Callable[[Any, str], Any]) -> Any:
        """The value of a comparison: a pair for between, a list for in/not_in, else a scalar.

        ``scalar(item, path)`` checks one item and returns it (or None after an error).
        """
        if op == "between":
            if not isinstance(data, list) or len(data) != 2:
                self.error(path, f"between needs a list of two numbers [low, high] for {what}, "
                                 f"got {_describe(data)}")
                return None
            lo, hi = scalar(data[0], f"{path}[0]"), scalar(data[1], f"{path}[1]")
            if lo is None or hi is None:
                return None
            if lo > hi:
                self.error(path, f"between [{_num(lo)}, {_num(hi)}]: low is greater than high")
                return None
            return (lo, hi)
        if op in ("in", "not_in"):
            if not isinstance(data, list) or not data:
                self.error(path, f"{op} needs a non-empty list of values for {what}, "
                                 f"got {_describe(data)}")
                return None
            items = [scalar(item, f"{path}[{i}]") for i, item in enumerate(data)]
            return None if any(item is None for item in items) else tuple(items)
        return scalar(data, path)

    # documents

    def segment_document(self, data: Any, path: str, source: str) -> Segment | None:
        doc = self.mapping(data, path, "a segment", SEGMENT_KEYS, _REQUIRED_SEGMENT_KEYS)
        if doc is None:
            return None
        before = len(self.errors)
        seg_id = doc.get("id")
        if "id" in doc and not (isinstance(seg_id, str) and _ID_RE.match(seg_id)
                                and len(seg_id) <= _ID_MAX_LEN):
            self.error(_join(path, "id"), f"bad id {seg_id!r}: use kebab-case or snake_case "
                       f"(lower-case letters, digits, '-' or '_', starting with a letter, at most "
                       f"{_ID_MAX_LEN} characters), e.g. cart-abandoners")
        version = doc.get("version")
        if "version" in doc and (isinstance(version, bool) or not isinstance(version, int)
                                 or not 1 <= version <= _MAX_VERSION):
            self.error(_join(path, "version"), f"bad version {version!r}: expected a whole "
                       f"number from 1 to {_MAX_VERSION}; raise it on every change")
        description = doc.get("description")
        if "description" in doc and not (isinstance(description, str) and description.strip()):
            self.error(_join(path, "description"), "description must be a non-empty string, "
                       f"got {_describe(description)}")
        enabled = doc.get("enabled", True)
        if not isinstance(enabled, bool):
            self.error(_join(path, "enabled"), f"enabled must be true or false, got "
                       f"{_describe(enabled)}")
        condition = None
        if "condition" in doc:
            condition = self.condition(doc["condition"], _join(path, "condition"))
        if len(self.errors) > before or condition is None:
            return None
        assert isinstance(seg_id, str) and isinstance(version, int)  # checked above
        document = json.loads(json.dumps(doc))
        return Segment(seg_id, version, str(description), bool(enabled), condition, document,
                       source)

    # conditions

    def condition(self, data: Any, path: str) -> Condition | None:
        if isinstance(data, list):
            self.error(path, "a condition must be a mapping with exactly one key "
                             f"({_listing(CONDITION_KINDS)}), got a list; to combine "
                             "conditions use all: [...] or any: [...]")
            return None
        if not isinstance(data, dict) or len(data) != 1:
            if isinstance(data, dict) and len(data) > 1:
                keys = ", ".join(repr(k) for k in data)
                self.error(path, f"a condition has exactly one key, got {keys}; to require "
                                 "several, list them under all: [...]")
            else:
                self.error(path, "a condition must be a mapping with exactly one key "
                                 f"({_listing(CONDITION_KINDS)}), got {_describe(data)}")
            return None
        ((kind, body),) = data.items()
        sub = _join(path, str(kind))
        if kind in ("all", "any"):
            return self._combination(kind, body, sub)
        if kind == "not":
            if isinstance(body, list):
                self.error(sub, "not takes one condition (a mapping), got a list; to negate "
                                "several, write not: {any: [...]}")
                return None
            child = self.condition(body, sub)
            return None if child is None else Not(child)
        compile_leaf = {
            "feature": self._feature, "metadata": self._metadata, "event": self._event,
            "absence": self._absence, "inactive": self._inactive,
            "churn_score": self._churn_score,
        }.get(str(kind))
        if compile_leaf is None:
            self.error(sub, f"unknown condition {kind!r}: allowed: {_listing(CONDITION_KINDS)}"
                            f"{_suggest(str(kind), CONDITION_KINDS)}")
            return None
        return compile_leaf(body, sub)

    def _combination(self, kind: str, body: Any, path: str) -> Condition | None:
        if not isinstance(body, list) or not body:
            self.error(path, f"{kind} needs a non-empty list of conditions, "
                             f"got {_describe(body)}")
            return None
        children = [self.condition(item, f"{path}[{i}]") for i, item in enumerate(body)]
        if any(child is None for child in children):
            return None
        items = tuple(child for child in children if child is not None)
        return AllOf(items) if kind == "all" else AnyOf(items)

    def _feature(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "feature", ("name", "op", "value"),
                            ("name", "op", "value"))
        if spec is None or any(k not in spec for k in ("name", "op", "value")):
            return None
        before = len(self.errors)
        name = spec["name"]
        names, source = self.features()
        if not isinstance(name, str) or name not in names:
            shown = repr(name) if isinstance(name, str) else _describe(name)
            hint = _suggest(name, sorted(names)) if isinstance(name, str) else ""
            origin = source if source != "fallback" else "the fallback list in udfs.segments"
            self.error(_join(path, "name"), f"unknown feature {shown}: allowed: one of the "
                       f"{len(names)} names of {origin} (e.g. cart_value, sessions_7d, "
                       f"events_<event type lower>_<1h|24h|7d|30d>; see SEGMENTS.md){hint}")
        op = self.op(spec["op"], _join(path, "op"), NUMERIC_OPS, "a feature")
        if len(self.errors) > before or op is None:
            return None
        assert isinstance(name, str)
        clock = feature_clock(name)

        def scalar(item: Any, where: str) -> float | None:
            if clock is not None and clock.kind == "age" and isinstance(item, str):
                ms = self.duration(item, where)
                return None if ms is None else ms / clock.unit_ms
            return self.number(item, where, f"the value of feature {name}")

        value = self.operand(op, spec["value"], _join(path, "value"), f"feature {name}", scalar)
        if value is None:
            return None
        if clock is not None and clock.kind == "age":  # show ages as durations: 34d 17h
            unit = clock.unit_ms

            def show(v: Any) -> str:
                return format_duration(v * unit)

            shown_value = ((show(value[0]), show(value[1])) if isinstance(value, tuple)
                           else show(value))
            return FeatureCondition(name, op, value, _make_test(op, value), clock,
                                    _shown(op, shown_value), show)
        return FeatureCondition(name, op, value, _make_test(op, value), clock, _shown(op, value))

    def _metadata(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "metadata", ("field", "op", "value"),
                            ("field", "op", "value"))
        if spec is None or any(k not in spec for k in ("field", "op", "value")):
            return None
        fields_ = metadata_fields()
        name = spec["field"]
        meta = fields_.get(name) if isinstance(name, str) else None
        if meta is None:
            shown = repr(name) if isinstance(name, str) else _describe(name)
            hint = _suggest(name, list(fields_)) if isinstance(name, str) else ""
            self.error(_join(path, "field"), f"unknown metadata field {shown}: allowed: "
                       f"{_listing(list(fields_))}{hint}")
            return None
        op = self.op(spec["op"], _join(path, "op"), meta.ops,
                     f"metadata field {name} ({meta.kind})")
        if op is None:
            return None
        value_path = _join(path, "value")
        if op == "within_last":
            ms = self.duration(spec["value"], value_path)
            if ms is None:
                return None
            return MetadataCondition(name, op, ms, _make_test("<", ms),
                                     f"within the last {format_duration(ms)}")

        def scalar(item: Any, where: str) -> Any:
            if meta.kind == "boolean":
                if not isinstance(item, bool):
                    self.error(where, f"metadata field {name} is true or false, got "
                                      f"{_describe(item)}")
                    return None
                return item
            if meta.kind in ("string", "enum"):
                if not isinstance(item, str):
                    self.error(where, f"metadata field {name} is a string, got {_describe(item)}"
                                      + ("; quote it" if isinstance(item, bool | int) else ""))
                    return None
                if meta.kind == "enum" and item not in meta.symbols:
                    self.error(where, f"{item!r} is not a value of {name}: allowed: "
                                      f"{_listing(meta.symbols)}{_suggest(item, meta.symbols)}")
                    return None
                return item
            what = f"metadata field {name}" + (" (epoch milliseconds)" if meta.kind == "time"
                                               else "")
            return self.number(item, where, what)

        value = self.operand(op, spec["value"], value_path, f"metadata field {name}", scalar)
        if value is None:
            return None
        return MetadataCondition(name, op, value, _make_test(op, value), _shown(op, value))

    def _event_filter(self, data: Any, path: str, extra: Sequence[str] = ()) -> EventFilter | None:
        """An event filter: a type symbol, or a mapping with type (+ where, + extra keys)."""
        if isinstance(data, str):
            types = self._event_types(data, path)
            return None if types is None else EventFilter(types, label=_type_label(types))
        spec = self.mapping(data, path, "an event filter", ("type", "where", *extra), ("type",))
        if spec is None or "type" not in spec:
            return None
        types = self._event_types(spec["type"], _join(path, "type"))
        where: list[tuple[str, str, Any]] = []
        ok = types is not None
        if "where" in spec:
            parsed = self._where(spec["where"], _join(path, "where"))
            ok = ok and parsed is not None
            where = parsed or []
        if not ok or types is None:
            return None
        tests = tuple((operator.attrgetter(f), _make_test(op, v)) for f, op, v in where)
        label = _type_label(types) + "".join(f" with {f} {_shown(op, v)}" for f, op, v in where)
        return EventFilter(types, tuple(where), tests, label)

    def _event_types(self, data: Any, path: str) -> frozenset[str] | None:
        symbols = event_types()
        items = data if isinstance(data, list) else [data]
        if not items:
            self.error(path, "type needs at least one event type")
            return None
        ok = True
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if isinstance(data, list) else path
            if not isinstance(item, str) or item not in symbols:
                shown = repr(item) if isinstance(item, str) else _describe(item)
                hint = _suggest(item, symbols) if isinstance(item, str) else ""
                self.error(where, f"unknown event type {shown}: allowed: "
                                  f"{_listing(symbols)}{hint}")
                ok = False
        return frozenset(items) if ok else None

    def _where(self, data: Any, path: str) -> list[tuple[str, str, Any]] | None:
        spec = self.mapping(data, path, "where", WHERE_FIELDS, ())
        if spec is None:
            return None
        out: list[tuple[str, str, Any]] = []
        ok = True
        for name, tests in spec.items():
            if name not in WHERE_FIELDS:
                ok = False
                continue
            sub = _join(path, name)
            numeric = name in _NUMERIC_WHERE_FIELDS
            allowed = NUMERIC_OPS if numeric else EQUALITY_OPS
            shorthand = not isinstance(tests, dict)
            if shorthand:  # a value means ==, a list means in (between [lo, hi] for numbers)
                list_op = "between" if numeric else "in"
                tests = {list_op if isinstance(tests, list) else "==": tests}
            if not tests:
                self.error(sub, f"where.{name} needs at least one test like {{op: value}}")
                ok = False
            for op_key, raw in tests.items():
                op = self.op(op_key, _join(sub, str(op_key)), allowed, f"event field {name}")
                if op is None:
                    ok = False
                    continue
                value = self.operand(op, raw, sub if shorthand else _join(sub, op),
                                     f"event field {name}", self._where_scalar(name))
                if value is None:
                    ok = False
                    continue
                out.append((name, op, value))
        return out if ok else None

    def _where_scalar(self, name: str) -> Callable[[Any, str], Any]:
        def scalar(item: Any, where: str) -> Any:
            if name in _NUMERIC_WHERE_FIELDS:
                return self.number(item, where, f"event field {name}")
            if not isinstance(item, str):
                self.error(where, f"event field {name} is a string, got {_describe(item)}")
                return None
            if name == "source" and item not in event_sources():
                self.error(where, f"unknown source {item!r}: allowed: "
                                  f"{_listing(event_sources())}{_suggest(item, event_sources())}")
                return None
            return item
        return scalar

    def _event(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "event", ("type", "within", "where", "min_count"),
                            ("type", "within"))
        if spec is None:
            return None
        match = self._event_filter({k: v for k, v in spec.items() if k in ("type", "where")},
                                   path) if "type" in spec else None
        within = self.duration(spec["within"], _join(path, "within")) if "within" in spec else None
        min_count = spec.get("min_count", 1)
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            self.error(_join(path, "min_count"), f"min_count must be a whole number >= 1, got "
                       f"{_describe(min_count)}")
            return None
        if match is None or within is None:
            return None
        return EventCondition(match, within, min_count)

    def _absence(self, body: Any, path: str) -> Condition | None:
        keys = ("after", "missing", "within", "expires_after")
        spec = self.mapping(body, path, "absence", keys, ("after", "missing", "within"))
        if spec is None:
            return None
        after = self._event_filter(spec["after"], _join(path, "after")) \
            if "after" in spec else None
        missing = self._event_filter(spec["missing"], _join(path, "missing")) \
            if "missing" in spec else None
        within = self.duration(spec["within"], _join(path, "within")) if "within" in spec else None
        expires = None
        if "expires_after" in spec:
            expires = self.duration(spec["expires_after"], _join(path, "expires_after"))
            if expires is None:
                return None
        if after is None or missing is None or within is None:
            return None
        return AbsenceCondition(after, missing, within, expires)

    def _inactive(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "inactive", ("for",), ("for",))
        if spec is None or "for" not in spec:
            return None
        for_ms = self.duration(spec["for"], _join(path, "for"))
        return None if for_ms is None else InactiveCondition(for_ms)

    def _churn_score(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "churn_score", ("op", "value"), ("op", "value"))
        if spec is None or "op" not in spec or "value" not in spec:
            return None
        op = self.op(spec["op"], _join(path, "op"), NUMERIC_OPS, "churn_score")
        if op is None:
            return None

        def scalar(item: Any, where: str) -> float | None:
            number = self.number(item, where, "a churn score")
            if number is not None and not 0 <= number <= 1:
                self.error(where, f"churn scores are probabilities from 0 to 1, got "
                                  f"{_num(number)}")
                return None
            return number

        value = self.operand(op, spec["value"], _join(path, "value"), "churn_score", scalar)
        if value is None:
            return None
        return ChurnScoreCondition(op, value, _make_test(op, value), _shown(op, value))


def _type_label(types: frozenset[str]) -> str:
    return "/".join(sorted(types))


# --- loading files ------------------------------------------------------------------------------


class _Loader(yaml.SafeLoader):
    """Safe YAML without the YAML 1.1 surprises.

    ``NO``/``yes``/``on`` stay strings (country codes!) and dates stay strings; only true and
    false are booleans.
    """


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers
            if tag not in ("tag:yaml.org,2002:bool", "tag:yaml.org,2002:timestamp")]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def _read_yaml(text: str, file: str) -> tuple[Any, dict[str, int], list[DefinitionError]]:
    """Parse YAML; also map document paths to line numbers and report duplicate keys."""
    loader = _Loader(text)
    try:
        node = loader.get_single_node()
        data = loader.construct_document(node) if node is not None else None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = mark.line + 1 if mark is not None else None
        problem = getattr(exc, "problem", None) or str(exc)
        return None, {}, [DefinitionError(file, "", f"not valid YAML: {problem}", line)]
    finally:
        loader.dispose()
    lines: dict[str, int] = {}
    errors: list[DefinitionError] = []

    def walk(n: yaml.Node, path: str) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for key_node, value_node in n.value:
                key = str(key_node.value)
                child = _join(path, key)
                if key in seen:
                    errors.append(DefinitionError(
                        file, child, f"duplicate key {key!r}: YAML keeps only the last one; "
                                     "remove or merge the others", key_node.start_mark.line + 1))
                seen.add(key)
                lines[child] = key_node.start_mark.line + 1
                walk(value_node, child)
        elif isinstance(n, yaml.SequenceNode):
            for i, item in enumerate(n.value):
                walk(item, f"{path}[{i}]")

    if node is not None:
        walk(node, "")
    return data, lines, errors


def _segments_in(data: Any, file: str, compiler: _Compiler) -> list[tuple[str, Segment | None]]:
    """Compile one file's content: a single segment document or ``segments: [...]``."""
    if data is None:
        compiler.error("", "empty file: expected a segment document (id, version, description, "
                           "condition) or a mapping with a 'segments' list")
        return []
    if isinstance(data, dict) and "segments" in data:
        compiler.mapping(data, "", "a segment file", ("segments",), ("segments",))
        items = data["segments"]
        if not isinstance(items, list) or not items:
            compiler.error("segments", f"segments must be a non-empty list of segment documents, "
                                       f"got {_describe(items)}")
            return []
        return [(f"segments[{i}]", compiler.segment_document(item, f"segments[{i}]", file))
                for i, item in enumerate(items)]
    if not isinstance(data, dict):
        compiler.error("", "expected a segment document (a mapping with id, version, "
                           f"description, condition) or a mapping with a 'segments' list, got "
                           f"{_describe(data)}")
        return []
    return [("", compiler.segment_document(data, "", file))]


def validate_documents(
    documents: Iterable[tuple[str, Any]],
    lines: Mapping[str, Mapping[str, int]] | None = None,
) -> tuple[list[Segment], list[DefinitionError]]:
    """Validate already-loaded documents (one per file) and check ids are unique across them.

    Args:
        documents: ``(file name, content)`` pairs, where content is a segment document or a
            mapping with a ``segments`` list, as YAML or JSON would load it.
        lines: Optional line numbers by file and document path, for error messages.

    Returns:
        The compiled segments (only of valid documents) and every error found, in order.
    """
    segments: list[Segment] = []
    errors: list[DefinitionError] = []
    first_seen: dict[str, str] = {}
    for file, data in documents:
        compiler = _Compiler(file, (lines or {}).get(file))
        for path, segment in _segments_in(data, file, compiler):
            if segment is None:
                continue
            where = f"{file}:{path}" if path else file
            if segment.id in first_seen:
                compiler.error(_join(path, "id"), f"duplicate segment id {segment.id!r}: already "
                                                  f"defined in {first_seen[segment.id]}; ids "
                                                  "must be unique across all files")
                continue
            first_seen[segment.id] = where
            segments.append(segment)
        errors.extend(compiler.errors)
    return segments, errors


def _expand(paths: Iterable[str | Path]) -> list[Path]:
    out: list[Path] = []
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            out.extend(sorted(p for p in path.iterdir() if p.suffix in (".yaml", ".yml")))
        else:
            out.append(path)
    return out


def validate_files(
    paths: Iterable[str | Path],
) -> tuple[list[Segment], list[DefinitionError]]:
    """Read, validate and compile segment files (directories expand to their *.yaml files).

    Never raises for bad content: unreadable files, YAML syntax errors, grammar errors and ids
    duplicated across files all come back as errors. This is what ``nudgeflow defs validate``
    runs.

    Args:
        paths: YAML files or directories of them.

    Returns:
        The segments of the valid documents, and every error found.
    """
    documents: list[tuple[str, Any]] = []
    lines: dict[str, dict[str, int]] = {}
    errors: list[DefinitionError] = []
    for path in _expand(paths):
        file = str(path)
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            errors.append(DefinitionError(file, "", f"cannot read file: {exc}"))
            continue
        data, file_lines, yaml_errors = _read_yaml(text, file)
        if yaml_errors:
            errors.extend(yaml_errors)
            if data is None:
                continue
        documents.append((file, data))
        lines[file] = file_lines
    segments, grammar_errors = validate_documents(documents, lines)
    errors.extend(grammar_errors)
    return segments, errors


def load_segment_files(paths: Iterable[str | Path]) -> list[Segment]:
    """Like ``validate_files`` but raises when anything is wrong.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    segments, errors = validate_files(paths)
    if errors:
        raise InvalidDefinitions(errors)
    return segments


def load_segment_file(path: str | Path) -> list[Segment]:
    """The segments of one YAML file (one document, or a ``segments`` list).

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    return load_segment_files([path])


def load_catalog(directory: str | Path = CATALOG_DIR) -> list[Segment]:
    """The shipped catalog (every *.yaml in ``udfs/catalog/segments``), sorted by id.

    Raises:
        InvalidDefinitions: The catalog does not validate.
    """
    return sorted(load_segment_files([directory]), key=lambda s: s.id)


def parse_segment(document: Any, file: str = "<document>") -> Segment:
    """Validate and compile one segment document (a dict as YAML or JSON would load it).

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    compiler = _Compiler(file)
    segment = compiler.segment_document(document, "", file)
    if compiler.errors or segment is None:
        raise InvalidDefinitions(compiler.errors or [DefinitionError(file, "", "invalid")])
    return segment


def validate_command(paths: Sequence[str | Path]) -> tuple[int, str]:
    """What ``nudgeflow defs validate FILE...`` prints and its exit code.

    Args:
        paths: Files or directories given on the command line.

    Returns:
        (0, a summary) when everything is valid, else (1, the errors and a count).
    """
    if not paths:
        return 2, "nothing to validate: give segment YAML files or directories"
    files_ = _expand(paths)
    segments, errors = validate_files(files_)
    if errors:
        return 1, (f"{format_errors(errors)}\n{len(errors)} error(s) in "
                   f"{len({e.file for e in errors})} of {len(files_)} file(s)")
    ids = ", ".join(f"{s.id} v{s.version}" for s in segments)
    return 0, f"ok: {len(segments)} segment(s) in {len(files_)} file(s): {ids}"


# --- DefinitionUpdate records and the registry --------------------------------------------------


def checksum(body: str) -> str:
    """Lower-case hex SHA-256 of the UTF-8 bytes of a DefinitionUpdate body."""
    return hashlib.sha256(body.encode("utf-8")).hexdigest()


def _body(document: Mapping[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def definition_to_update(
    definition: Any, kind: str, published_at_ms: int, published_by: str | None = None
) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate record publishing a definition (body = canonical JSON).

    Args:
        definition: A validated definition with ``id``, ``version`` and ``document``
            (a ``Segment``, ``udfs.campaigns.Campaign`` or ``PriorityPolicy``).
        kind: Its DefinitionKind symbol (SEGMENT, CAMPAIGN, PRIORITY_WEIGHTS).
        published_at_ms: Publication time, epoch ms.
        published_by: Who or what publishes it, or None.

    Returns:
        A dict shaped like the DefinitionUpdate Avro record.
    """
    body = _body(definition.document)
    return {
        "definition_id": definition.id,
        "kind": kind,
        "action": UPSERT,
        "version": definition.version,
        "body": body,
        "checksum": checksum(body),
        "published_at": published_at_ms,
        "published_by": published_by,
    }


def segment_to_update(
    segment: Segment, published_at_ms: int, published_by: str | None = None
) -> dict[str, Any]:
    """The UPSERT DefinitionUpdate record publishing a segment (body = canonical JSON)."""
    return definition_to_update(segment, SEGMENT_KIND, published_at_ms, published_by)


def delete_update(
    definition_id: str, version: int, published_at_ms: int, published_by: str | None = None,
    kind: str = SEGMENT_KIND,
) -> dict[str, Any]:
    """The DELETE DefinitionUpdate record for a definition (a DELETE takes a new version too)."""
    return {
        "definition_id": definition_id,
        "kind": kind,
        "action": DELETE,
        "version": version,
        "body": "",
        "checksum": checksum(""),
        "published_at": published_at_ms,
        "published_by": published_by,
    }


def _update_label(update: Mapping[str, Any]) -> str:
    return f"definition {update.get('definition_id')!s} v{update.get('version')!s}"


def _envelope_errors(update: Mapping[str, Any]) -> list[DefinitionError]:
    """Problems with a DefinitionUpdate's fields other than the body's content."""
    file = _update_label(update)
    errors = []
    def_id = update.get("definition_id")
    if not isinstance(def_id, str) or not def_id:
        errors.append(DefinitionError(file, "definition_id", "definition_id must be a non-empty "
                                      f"string, got {_describe(def_id)}"))
    version = update.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        errors.append(DefinitionError(file, "version", "version must be a whole number >= 1, "
                                      f"got {_describe(version)}"))
    if update.get("action") not in (UPSERT, DELETE):
        errors.append(DefinitionError(file, "action", f"unknown action "
                                      f"{update.get('action')!r}: allowed: {UPSERT}, {DELETE}"))
    body = update.get("body")
    if not isinstance(body, str):
        errors.append(DefinitionError(file, "body", f"body must be a string, got "
                                      f"{_describe(body)}"))
    elif checksum(body) != update.get("checksum"):
        errors.append(DefinitionError(file, "checksum", f"checksum {update.get('checksum')!r} "
                                      "does not match the SHA-256 of body "
                                      f"({checksum(body)}); the update is corrupt or was "
                                      "edited after publishing"))
    return errors


def update_document(update: Mapping[str, Any], kind: str) -> tuple[str, Any]:
    """The JSON document an UPSERT DefinitionUpdate of ``kind`` carries, envelope checked.

    Returns:
        (a label naming the definition id and version, for errors; the parsed body).

    Raises:
        DefinitionError: wrong kind or action, checksum mismatch, body not JSON.
    """
    file = _update_label(update)
    errors = _envelope_errors(update)
    if update.get("kind") != kind:
        errors.append(DefinitionError(file, "kind", f"kind is {update.get('kind')!r}, not "
                                      f"{kind}"))
    if update.get("action") == DELETE:
        errors.append(DefinitionError(file, "action", "a DELETE carries no definition"))
    if errors:
        raise InvalidDefinitions(errors)
    try:
        return file, json.loads(update["body"])
    except ValueError as exc:
        raise DefinitionError(file, "body", f"body is not JSON: {exc}") from None


def check_identity(compiler: _Compiler, definition: Any, update: Mapping[str, Any]) -> None:
    """Record an error when a body's id or version differs from its update's envelope."""
    if definition.id != update["definition_id"]:
        compiler.error("id", f"id {definition.id!r} differs from the update's definition_id "
                             f"{update['definition_id']!r}")
    if definition.version != update["version"]:
        compiler.error("version", f"version {definition.version} differs from the update's "
                                  f"version {update['version']}")


def update_to_segment(update: Mapping[str, Any]) -> Segment:
    """The segment an UPSERT DefinitionUpdate carries, validated.

    Args:
        update: A dict shaped like the DefinitionUpdate record, kind SEGMENT, action UPSERT.

    Returns:
        The compiled segment; its ``source`` is ``definition <id> v<version>``.

    Raises:
        DefinitionError: The envelope or body is bad (wrong kind or action, checksum mismatch,
            not JSON, invalid segment, id or version differing from the envelope's); the file
            of each error names the definition id and version.
    """
    file, document = update_document(update, SEGMENT_KIND)
    compiler = _Compiler(file)
    segment = compiler.segment_document(document, "", file)
    if segment is not None:
        check_identity(compiler, segment, update)
    if compiler.errors or segment is None:
        raise InvalidDefinitions(compiler.errors or [DefinitionError(file, "", "invalid")])
    return segment


class ChangeOutcome(str, Enum):
    """What ``SegmentRegistry.apply`` did with an update."""

    ADDED = "ADDED"  # a new id (or one deleted before) now has a definition
    REPLACED = "REPLACED"  # a newer version replaced the held one
    DELETED = "DELETED"  # the definition is gone (a tombstone version is kept)
    STALE = "STALE"  # version not greater than the held one: ignored
    REJECTED = "REJECTED"  # bad update (checksum, body, envelope): ignored, see errors
    IGNORED = "IGNORED"  # another kind of definition: not this registry's business


@dataclass(frozen=True)
class RegistryChange:
    """The outcome of one update.

    Attributes:
        definition_id: The update's definition id.
        outcome: What happened.
        version: The update's version.
        previous_version: The version held before (a tombstone's too), or None.
        segment: The new definition for ADDED and REPLACED, else None.
        message: One human-readable line for logs.
        errors: Why it was REJECTED.
    """

    definition_id: str
    outcome: ChangeOutcome
    version: int | None
    previous_version: int | None
    segment: Segment | None
    message: str
    errors: tuple[DefinitionError, ...] = ()

    @property
    def changed(self) -> bool:
        """Whether the registry's content changed."""
        return self.outcome in (ChangeOutcome.ADDED, ChangeOutcome.REPLACED,
                                ChangeOutcome.DELETED)


class SegmentRegistry:
    """The current segment definitions by id, versioned; what the engine's broadcast state holds.

    Versions are per id and only go up: an update whose version is not greater than the one
    held (including the version of a DELETE, kept as a tombstone) is STALE and ignored, so
    updates may be replayed or arrive in any order and the result is the same. ``updates()`` is
    what to store in broadcast state; ``from_updates`` rebuilds from it.

    Subclasses hold other kinds of definition (``udfs.campaigns``): they set ``kind`` and
    ``noun`` and override ``_from_update``.
    """

    kind = SEGMENT_KIND
    noun = "segment"

    def _to_update(self, definition: Any, published_at_ms: int,
                   published_by: str | None) -> dict[str, Any]:
        return definition_to_update(definition, self.kind, published_at_ms, published_by)

    @staticmethod
    def _from_update(update: Mapping[str, Any]) -> Any:
        return update_to_segment(update)

    def __init__(self, segments: Iterable[Segment] = ()) -> None:
        self._segments: dict[str, Segment] = {}
        self._updates: dict[str, dict[str, Any]] = {}
        self._sorted: tuple[Segment, ...] = ()
        self._by_id: Mapping[str, Segment] = MappingProxyType({})
        for segment in segments:
            change = self.upsert(segment, 0, f"file:{segment.source}" if segment.source else None)
            if change.outcome is ChangeOutcome.STALE:
                raise ValueError(f"segment {segment.id!r} given twice: {change.message}")

    @classmethod
    def from_updates(cls, updates: Iterable[Mapping[str, Any]]) -> SegmentRegistry:
        """A registry with the updates applied in order (bad ones are skipped)."""
        registry = cls()
        for update in updates:
            registry.apply(update)
        return registry

    def __len__(self) -> int:
        return len(self._segments)

    def __contains__(self, definition_id: object) -> bool:
        return definition_id in self._segments

    def get(self, definition_id: str) -> Segment | None:
        """The current definition, or None (unknown or deleted)."""
        return self._segments.get(definition_id)

    def segments(self) -> tuple[Segment, ...]:
        """All current definitions sorted by id (the same tuple until something changes)."""
        return self._sorted

    def by_id(self) -> Mapping[str, Segment]:
        """All current definitions as a read-only mapping id -> segment, in id order."""
        return self._by_id

    def version_of(self, definition_id: str) -> int | None:
        """The version held for an id, including a DELETE's; None if never seen."""
        update = self._updates.get(definition_id)
        return None if update is None else int(update["version"])

    def deleted_version(self, definition_id: str) -> int | None:
        """The DELETE version if the id is deleted (the version members EXIT with), else None."""
        update = self._updates.get(definition_id)
        return int(update["version"]) if update and update["action"] == DELETE else None

    def updates(self) -> tuple[dict[str, Any], ...]:
        """The accepted update per id (DELETEs included), sorted by id: the broadcast state."""
        return tuple(dict(self._updates[k]) for k in sorted(self._updates))

    def upsert(
        self, segment: Segment, published_at_ms: int = 0, published_by: str | None = None
    ) -> RegistryChange:
        """Add or replace a validated segment (e.g. from a file) under the version rule."""
        update = self._to_update(segment, published_at_ms, published_by)
        return self._accept(update) or self._store(update, segment)

    def apply(self, update: Mapping[str, Any]) -> RegistryChange:
        """Apply one DefinitionUpdate (a dict shaped like the Avro record).

        Order of checks: kind (non-SEGMENT is IGNORED), envelope and checksum (REJECTED),
        version (STALE unless greater than the held one), then for UPSERT the body (REJECTED if
        invalid). A rejected or stale update leaves the registry unchanged.

        Returns:
            What happened; never raises for a bad update.
        """
        def_id = str(update.get("definition_id"))
        version = update.get("version")
        version_int = version if isinstance(version, int) and not isinstance(version, bool) \
            else None
        if update.get("kind") != self.kind:
            return RegistryChange(def_id, ChangeOutcome.IGNORED, version_int,
                                  self.version_of(def_id), None,
                                  f"{def_id}: kind {update.get('kind')!r} is not a {self.noun}")
        errors = _envelope_errors(update)
        if errors:
            return self._rejected(def_id, version_int, errors)
        stale = self._accept(update)
        if stale is not None:
            return stale
        if update["action"] == DELETE:
            return self._store(dict(update), None)
        try:
            segment = self._from_update(update)
        except DefinitionError as exc:
            return self._rejected(def_id, version_int, list(exc.errors))
        return self._store(dict(update), segment)

    def _rejected(self, def_id: str, version: int | None,
                  errors: list[DefinitionError]) -> RegistryChange:
        return RegistryChange(def_id, ChangeOutcome.REJECTED, version, self.version_of(def_id),
                              None, f"{def_id} v{version}: rejected: {errors[0].message}",
                              tuple(errors))

    def _accept(self, update: Mapping[str, Any]) -> RegistryChange | None:
        """None when the update's version is newer than the held one, else the STALE change."""
        def_id = str(update["definition_id"])
        version = int(update["version"])
        held = self._updates.get(def_id)
        if held is None or version > int(held["version"]):
            return None
        if version == int(held["version"]):
            detail = ("duplicate delivery" if held["checksum"] == update["checksum"] else
                      "conflict: a different definition with this version is already held; "
                      "publish a new version")
        else:
            detail = f"older than the held v{held['version']}"
        return RegistryChange(def_id, ChangeOutcome.STALE, version, int(held["version"]),
                              None, f"{def_id} v{version} ignored: {detail}")

    def _store(self, update: dict[str, Any], segment: Segment | None) -> RegistryChange:
        def_id = str(update["definition_id"])
        version = int(update["version"])
        previous = self.version_of(def_id)
        existed = def_id in self._segments
        self._updates[def_id] = update
        if segment is None:
            self._segments.pop(def_id, None)
            outcome = ChangeOutcome.DELETED
            message = (f"{def_id} deleted in v{version}" if existed else
                       f"{def_id} v{version}: DELETE of an unknown {self.noun}; tombstone kept")
        else:
            self._segments[def_id] = segment
            outcome = ChangeOutcome.REPLACED if existed else ChangeOutcome.ADDED
            message = (f"{def_id} v{previous} replaced by v{version}" if existed else
                       f"{def_id} v{version} added")
        self._sorted = tuple(self._segments[k] for k in sorted(self._segments))
        self._by_id = MappingProxyType({s.id: s for s in self._sorted})
        return RegistryChange(def_id, outcome, version, previous, segment, message)
