"""The base compiler: checks a definition document and reports every error with its path.

Inputs: one document tree (as YAML or JSON loads it), its file name and, for YAML files, the
line of every document path. Outputs: compiled values and, in ``errors``, every
``DefinitionError`` found (not just the first). State: the errors collected so far.

The compilers of each kind subclass ``Compiler`` (``udfs.segments.compiler.SegmentCompiler``,
``udfs.campaigns.compiler.CampaignCompiler``): it holds what they share - mappings and their
keys, durations, numbers, operators and operands, id/version/description, the ``enabled``
flag and event filters.
"""

from __future__ import annotations

import math
import operator
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from udfs.definitions.comparisons import (
    EQUALITY_OPS,
    NUMERIC_OPS,
    OP_ALIASES,
    make_test,
    show_comparison,
)
from udfs.definitions.diagnostics import (
    DefinitionError,
    InvalidDefinitions,
    describe,
    format_number,
    join_path,
    listing,
    suggest,
)
from udfs.definitions.durations import MAX_DURATION_MS, parse_duration
from udfs.definitions.envelope import check_identity
from udfs.definitions.event_filter import (
    NUMERIC_WHERE_FIELDS,
    WHERE_FIELDS,
    EventFilter,
    type_label,
)
from udfs.definitions.vocabulary import event_sources, event_types, known_feature_names

#: What an id looks like: kebab-case or snake_case, starting with a letter.
ID_RE = re.compile(r"^[a-z][a-z0-9]*(?:[-_][a-z0-9]+)*$")
ID_MAX_LEN = 100
MAX_VERSION = 2**31 - 1  # DefinitionUpdate.version is an Avro int

D = TypeVar("D")


class Compiler:
    """Validates one document tree and compiles it; collects every error, not just the first."""

    def __init__(self, file: str, lines: Mapping[str, int] | None = None) -> None:
        self.file = file
        self.lines = lines or {}
        self.errors: list[DefinitionError] = []

    # helpers

    def error(self, path: str, message: str) -> None:
        """Record an error at a document path (its line is looked up when known)."""
        self.errors.append(DefinitionError(self.file, path, message, self._line(path)))

    def _line(self, path: str) -> int | None:
        while True:
            if path in self.lines:
                return self.lines[path]
            if not path:
                return None
            cut = max(path.rfind("."), path.rfind("["))
            path = path[:cut] if cut > 0 else ""

    def result(self, definition: D | None, update: Mapping[str, Any] | None = None) -> D:
        """The compiled definition, checked against its update's envelope when one is given.

        Raises:
            InvalidDefinitions: At least one error was recorded; ``.errors`` has them all.
        """
        if definition is not None and update is not None:
            check_identity(definition, update, self.error)
        if self.errors or definition is None:
            raise InvalidDefinitions(self.errors or [DefinitionError(self.file, "", "invalid")])
        return definition

    def features(self) -> tuple[frozenset[str], str]:
        """The feature names conditions may use and their source."""
        return known_feature_names()

    def mapping(self, data: Any, path: str, what: str, allowed: Sequence[str],
                required: Sequence[str]) -> dict[str, Any] | None:
        """Check a mapping's type and keys; None if it is not a mapping."""
        if not isinstance(data, dict):
            self.error(path, f"{what} must be a mapping with keys {listing(allowed)}; "
                             f"got {describe(data)}")
            return None
        for key in data:
            if not isinstance(key, str):
                self.error(path, f"{what}: keys must be strings, got {describe(key)}")
            elif key not in allowed:
                self.error(join_path(path, key), f"unknown key {key!r} in {what}: allowed: "
                                                 f"{listing(allowed)}{suggest(key, allowed)}")
        for key in required:
            if key not in data:
                self.error(path, f"{what} is missing required key {key!r} "
                                 f"(required: {listing(required)})")
        return data

    def duration(self, data: Any, path: str) -> int | None:
        """Milliseconds of a duration such as ``30m``; None after an error."""
        if isinstance(data, str):
            try:
                return parse_duration(data)
            except ValueError as exc:
                if str(exc).startswith("duration too long"):
                    days = MAX_DURATION_MS // 86_400_000
                    self.error(path, f"bad duration {data!r}: at most {days}d ({days // 365} "
                                     "years); a time plus a longer one does not fit a timestamp")
                    return None
        hint = ""
        if isinstance(data, int | float) and not isinstance(data, bool):
            hint = (f" (a bare number has no unit: write e.g. {format_number(data)}m or "
                    f"{format_number(data)}s)")
        elif isinstance(data, str) and data.strip().startswith(("0ms", "0s", "0m", "0h", "0d")):
            hint = " (must be longer than zero)"
        self.error(path, f"bad duration {data!r}: expected a whole number and one unit of "
                         f"ms, s, m, h, d, e.g. 500ms, 90s, 30m, 24h, 7d{hint}")
        return None

    def number(self, data: Any, path: str, what: str) -> float | None:
        """A finite number (not a boolean); None after an error."""
        if isinstance(data, bool) or not isinstance(data, int | float):
            self.error(path, f"{what} must be a number, got {describe(data)}")
            return None
        if not math.isfinite(data):
            self.error(path, f"{what} must be a finite number, got {data}")
            return None
        return data

    def op(self, data: Any, path: str, allowed: Sequence[str], what: str) -> str | None:
        """One of the ``allowed`` operators; None after an error (with a did-you-mean)."""
        if not isinstance(data, str) or data not in allowed:
            shown = repr(data) if isinstance(data, str) else describe(data)
            hint = suggest(data, allowed, OP_ALIASES) if isinstance(data, str) else ""
            self.error(path, f"unknown op {shown} for {what}: allowed: "
                             f"{listing(allowed)}{hint}")
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
                                 f"got {describe(data)}")
                return None
            lo, hi = scalar(data[0], f"{path}[0]"), scalar(data[1], f"{path}[1]")
            if lo is None or hi is None:
                return None
            if lo > hi:
                self.error(path, f"between [{format_number(lo)}, {format_number(hi)}]: low is "
                                 "greater than high")
                return None
            return (lo, hi)
        if op in ("in", "not_in"):
            if not isinstance(data, list) or not data:
                self.error(path, f"{op} needs a non-empty list of values for {what}, "
                                 f"got {describe(data)}")
                return None
            items = [scalar(item, f"{path}[{i}]") for i, item in enumerate(data)]
            return None if any(item is None for item in items) else tuple(items)
        return scalar(data, path)

    # what every definition has

    def identity(self, doc: Mapping[str, Any], path: str, example: str,
                 mention_length: bool = False) -> bool:
        """Check ``id``, ``version`` and ``description``; whether they were all fine.

        Args:
            doc: The definition's mapping.
            path: Its document path.
            example: A good id, shown in the message about a bad one.
            mention_length: Whether that message states the maximum length.
        """
        before = len(self.errors)
        def_id = doc.get("id")
        if "id" in doc and not (isinstance(def_id, str) and ID_RE.match(def_id)
                                and len(def_id) <= ID_MAX_LEN):
            length = f", at most {ID_MAX_LEN} characters" if mention_length else ""
            self.error(join_path(path, "id"), f"bad id {def_id!r}: use kebab-case or snake_case "
                       "(lower-case letters, digits, '-' or '_', starting with a letter"
                       f"{length}), e.g. {example}")
        version = doc.get("version")
        if "version" in doc and (isinstance(version, bool) or not isinstance(version, int)
                                 or not 1 <= version <= MAX_VERSION):
            self.error(join_path(path, "version"), f"bad version {version!r}: expected a whole "
                       f"number from 1 to {MAX_VERSION}; raise it on every change")
        description = doc.get("description")
        if "description" in doc and not (isinstance(description, str) and description.strip()):
            self.error(join_path(path, "description"), "description must be a non-empty string, "
                       f"got {describe(description)}")
        return len(self.errors) == before

    def enabled(self, doc: Mapping[str, Any], path: str) -> bool:
        """The ``enabled`` flag (default true); an error unless it is a boolean."""
        enabled = doc.get("enabled", True)
        if not isinstance(enabled, bool):
            self.error(join_path(path, "enabled"), f"enabled must be true or false, got "
                       f"{describe(enabled)}")
            return True
        return enabled

    # event filters

    def event_filter(self, data: Any, path: str, extra: Sequence[str] = ()) -> EventFilter | None:
        """An event filter: a type symbol, or a mapping with type (+ where, + extra keys)."""
        if isinstance(data, str):
            types = self._event_types(data, path)
            return None if types is None else EventFilter(types, label=type_label(types))
        spec = self.mapping(data, path, "an event filter", ("type", "where", *extra), ("type",))
        if spec is None or "type" not in spec:
            return None
        types = self._event_types(spec["type"], join_path(path, "type"))
        where: list[tuple[str, str, Any]] = []
        ok = types is not None
        if "where" in spec:
            parsed = self._where(spec["where"], join_path(path, "where"))
            ok = ok and parsed is not None
            where = parsed or []
        if not ok or types is None:
            return None
        tests = tuple((operator.attrgetter(f), make_test(op, v)) for f, op, v in where)
        label = type_label(types) + "".join(f" with {f} {show_comparison(op, v)}"
                                            for f, op, v in where)
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
                shown = repr(item) if isinstance(item, str) else describe(item)
                hint = suggest(item, symbols) if isinstance(item, str) else ""
                self.error(where, f"unknown event type {shown}: allowed: "
                                  f"{listing(symbols)}{hint}")
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
            sub = join_path(path, name)
            numeric = name in NUMERIC_WHERE_FIELDS
            allowed = NUMERIC_OPS if numeric else EQUALITY_OPS
            shorthand = not isinstance(tests, dict)
            if shorthand:  # a value means ==, a list means in (between [lo, hi] for numbers)
                list_op = "between" if numeric else "in"
                tests = {list_op if isinstance(tests, list) else "==": tests}
            if not tests:
                self.error(sub, f"where.{name} needs at least one test like {{op: value}}")
                ok = False
            for op_key, raw in tests.items():
                op = self.op(op_key, join_path(sub, str(op_key)), allowed, f"event field {name}")
                if op is None:
                    ok = False
                    continue
                value = self.operand(op, raw, sub if shorthand else join_path(sub, op),
                                     f"event field {name}", self._where_scalar(name))
                if value is None:
                    ok = False
                    continue
                out.append((name, op, value))
        return out if ok else None

    def _where_scalar(self, name: str) -> Callable[[Any, str], Any]:
        def scalar(item: Any, where: str) -> Any:
            if name in NUMERIC_WHERE_FIELDS:
                return self.number(item, where, f"event field {name}")
            if not isinstance(item, str):
                self.error(where, f"event field {name} is a string, got {describe(item)}")
                return None
            if name == "source" and item not in event_sources():
                self.error(where, f"unknown source {item!r}: allowed: "
                                  f"{listing(event_sources())}{suggest(item, event_sources())}")
                return None
            return item
        return scalar
