"""The segment grammar: validate segment documents and compile them into condition trees.

Inputs: segment documents (YAML files via ``udfs.catalog.files``, JSON bodies of
DefinitionUpdate records at runtime via ``udfs.segments.updates``). Outputs: ``Segment``
objects (a small precompiled condition tree plus the original document) and
``DefinitionError`` items (file, path in the document, message, line). State: none.

The grammar is documented in ``udfs/segments/SEGMENTS.md``; keep the two in step.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from udfs.definitions.comparisons import NUMERIC_OPS, make_test, show_comparison
from udfs.definitions.compiler import Compiler
from udfs.definitions.diagnostics import (
    DefinitionError,
    describe,
    format_number,
    join_path,
    listing,
    suggest,
)
from udfs.definitions.durations import format_duration
from udfs.definitions.vocabulary import metadata_fields
from udfs.segments.conditions import (
    AbsenceCondition,
    AllOf,
    AnyOf,
    ChurnScoreCondition,
    Condition,
    EventCondition,
    FeatureCondition,
    InactiveCondition,
    MetadataCondition,
    Not,
    Segment,
    feature_clock,
)

CONDITION_KINDS = (
    "all", "any", "not", "feature", "metadata", "event", "absence", "inactive", "churn_score",
)
SEGMENT_KEYS = ("id", "version", "description", "enabled", "condition")
_REQUIRED_SEGMENT_KEYS = ("id", "version", "description", "condition")


class SegmentCompiler(Compiler):
    """Validates segment documents and compiles their conditions; collects every error."""

    # documents

    def segment_document(self, data: Any, path: str, source: str) -> Segment | None:
        """One segment document (a mapping); None after an error."""
        doc = self.mapping(data, path, "a segment", SEGMENT_KEYS, _REQUIRED_SEGMENT_KEYS)
        if doc is None:
            return None
        before = len(self.errors)
        self.identity(doc, path, "cart-abandoners", mention_length=True)
        enabled = self.enabled(doc, path)
        condition = None
        if "condition" in doc:
            condition = self.condition(doc["condition"], join_path(path, "condition"))
        if len(self.errors) > before or condition is None:
            return None
        seg_id, version = doc.get("id"), doc.get("version")
        assert isinstance(seg_id, str) and isinstance(version, int)  # checked above
        document = json.loads(json.dumps(doc))
        return Segment(seg_id, version, str(doc.get("description")), enabled, condition,
                       document, source)

    # conditions

    def condition(self, data: Any, path: str) -> Condition | None:
        """A condition (a mapping with one key, see ``CONDITION_KINDS``); None after an error."""
        if isinstance(data, list):
            self.error(path, "a condition must be a mapping with exactly one key "
                             f"({listing(CONDITION_KINDS)}), got a list; to combine "
                             "conditions use all: [...] or any: [...]")
            return None
        if not isinstance(data, dict) or len(data) != 1:
            if isinstance(data, dict) and len(data) > 1:
                keys = ", ".join(repr(k) for k in data)
                self.error(path, f"a condition has exactly one key, got {keys}; to require "
                                 "several, list them under all: [...]")
            else:
                self.error(path, "a condition must be a mapping with exactly one key "
                                 f"({listing(CONDITION_KINDS)}), got {describe(data)}")
            return None
        ((kind, body),) = data.items()
        sub = join_path(path, str(kind))
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
            self.error(sub, f"unknown condition {kind!r}: allowed: {listing(CONDITION_KINDS)}"
                            f"{suggest(str(kind), CONDITION_KINDS)}")
            return None
        return compile_leaf(body, sub)

    def _combination(self, kind: str, body: Any, path: str) -> Condition | None:
        if not isinstance(body, list) or not body:
            self.error(path, f"{kind} needs a non-empty list of conditions, "
                             f"got {describe(body)}")
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
            shown = repr(name) if isinstance(name, str) else describe(name)
            hint = suggest(name, sorted(names)) if isinstance(name, str) else ""
            origin = source if source != "fallback" else \
                "the fallback list in udfs.definitions.vocabulary"
            self.error(join_path(path, "name"), f"unknown feature {shown}: allowed: one of the "
                       f"{len(names)} names of {origin} (e.g. cart_value, sessions_7d, "
                       f"events_<event type lower>_<1h|24h|7d|30d>; see SEGMENTS.md){hint}")
        op = self.op(spec["op"], join_path(path, "op"), NUMERIC_OPS, "a feature")
        if len(self.errors) > before or op is None:
            return None
        assert isinstance(name, str)
        clock = feature_clock(name)

        def scalar(item: Any, where: str) -> float | None:
            if clock is not None and clock.kind == "age" and isinstance(item, str):
                ms = self.duration(item, where)
                return None if ms is None else ms / clock.unit_ms
            return self.number(item, where, f"the value of feature {name}")

        value = self.operand(op, spec["value"], join_path(path, "value"), f"feature {name}", scalar)
        if value is None:
            return None
        if clock is not None and clock.kind == "age":  # show ages as durations: 34d 17h
            unit = clock.unit_ms

            def show(v: Any) -> str:
                return format_duration(v * unit)

            shown_value = ((show(value[0]), show(value[1])) if isinstance(value, tuple)
                           else show(value))
            return FeatureCondition(name, op, value, make_test(op, value), clock,
                                    show_comparison(op, shown_value), show)
        return FeatureCondition(name, op, value, make_test(op, value), clock,
                                show_comparison(op, value))

    def _metadata(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "metadata", ("field", "op", "value"),
                            ("field", "op", "value"))
        if spec is None or any(k not in spec for k in ("field", "op", "value")):
            return None
        fields_ = metadata_fields()
        name = spec["field"]
        meta = fields_.get(name) if isinstance(name, str) else None
        if meta is None:
            shown = repr(name) if isinstance(name, str) else describe(name)
            hint = suggest(name, list(fields_)) if isinstance(name, str) else ""
            self.error(join_path(path, "field"), f"unknown metadata field {shown}: allowed: "
                       f"{listing(list(fields_))}{hint}")
            return None
        op = self.op(spec["op"], join_path(path, "op"), meta.ops,
                     f"metadata field {name} ({meta.kind})")
        if op is None:
            return None
        value_path = join_path(path, "value")
        if op == "within_last":
            ms = self.duration(spec["value"], value_path)
            if ms is None:
                return None
            return MetadataCondition(name, op, ms, make_test("<", ms),
                                     f"within the last {format_duration(ms)}")

        def scalar(item: Any, where: str) -> Any:
            if meta.kind == "boolean":
                if not isinstance(item, bool):
                    self.error(where, f"metadata field {name} is true or false, got "
                                      f"{describe(item)}")
                    return None
                return item
            if meta.kind in ("string", "enum"):
                if not isinstance(item, str):
                    self.error(where, f"metadata field {name} is a string, got {describe(item)}"
                                      + ("; quote it" if isinstance(item, bool | int) else ""))
                    return None
                if meta.kind == "enum" and item not in meta.symbols:
                    self.error(where, f"{item!r} is not a value of {name}: allowed: "
                                      f"{listing(meta.symbols)}{suggest(item, meta.symbols)}")
                    return None
                return item
            what = f"metadata field {name}" + (" (epoch milliseconds)" if meta.kind == "time"
                                               else "")
            return self.number(item, where, what)

        value = self.operand(op, spec["value"], value_path, f"metadata field {name}", scalar)
        if value is None:
            return None
        return MetadataCondition(name, op, value, make_test(op, value), show_comparison(op, value))

    def _event(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "event", ("type", "within", "where", "min_count"),
                            ("type", "within"))
        if spec is None:
            return None
        match = self.event_filter({k: v for k, v in spec.items() if k in ("type", "where")},
                                   path) if "type" in spec else None
        within = self.duration(spec["within"], join_path(path, "within")) \
            if "within" in spec else None
        min_count = spec.get("min_count", 1)
        if isinstance(min_count, bool) or not isinstance(min_count, int) or min_count < 1:
            self.error(join_path(path, "min_count"), f"min_count must be a whole number >= 1, got "
                       f"{describe(min_count)}")
            return None
        if match is None or within is None:
            return None
        return EventCondition(match, within, min_count)

    def _absence(self, body: Any, path: str) -> Condition | None:
        keys = ("after", "missing", "within", "expires_after")
        spec = self.mapping(body, path, "absence", keys, ("after", "missing", "within"))
        if spec is None:
            return None
        after = self.event_filter(spec["after"], join_path(path, "after")) \
            if "after" in spec else None
        missing = self.event_filter(spec["missing"], join_path(path, "missing")) \
            if "missing" in spec else None
        within = self.duration(spec["within"], join_path(path, "within")) \
            if "within" in spec else None
        expires = None
        if "expires_after" in spec:
            expires = self.duration(spec["expires_after"], join_path(path, "expires_after"))
            if expires is None:
                return None
        if after is None or missing is None or within is None:
            return None
        return AbsenceCondition(after, missing, within, expires)

    def _inactive(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "inactive", ("for",), ("for",))
        if spec is None or "for" not in spec:
            return None
        for_ms = self.duration(spec["for"], join_path(path, "for"))
        return None if for_ms is None else InactiveCondition(for_ms)

    def _churn_score(self, body: Any, path: str) -> Condition | None:
        spec = self.mapping(body, path, "churn_score", ("op", "value"), ("op", "value"))
        if spec is None or "op" not in spec or "value" not in spec:
            return None
        op = self.op(spec["op"], join_path(path, "op"), NUMERIC_OPS, "churn_score")
        if op is None:
            return None

        def scalar(item: Any, where: str) -> float | None:
            number = self.number(item, where, "a churn score")
            if number is not None and not 0 <= number <= 1:
                self.error(where, f"churn scores are probabilities from 0 to 1, got "
                                  f"{format_number(number)}")
                return None
            return number

        value = self.operand(op, spec["value"], join_path(path, "value"), "churn_score", scalar)
        if value is None:
            return None
        return ChurnScoreCondition(op, value, make_test(op, value), show_comparison(op, value))


def segments_in(data: Any, file: str,
                compiler: SegmentCompiler) -> list[tuple[str, Segment | None]]:
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
                                       f"got {describe(items)}")
            return []
        return [(f"segments[{i}]", compiler.segment_document(item, f"segments[{i}]", file))
                for i, item in enumerate(items)]
    if not isinstance(data, dict):
        compiler.error("", "expected a segment document (a mapping with id, version, "
                           f"description, condition) or a mapping with a 'segments' list, got "
                           f"{describe(data)}")
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
        compiler = SegmentCompiler(file, (lines or {}).get(file))
        for path, segment in segments_in(data, file, compiler):
            if segment is None:
                continue
            where = f"{file}:{path}" if path else file
            if segment.id in first_seen:
                compiler.error(join_path(path, "id"),
                               f"duplicate segment id {segment.id!r}: already defined in "
                               f"{first_seen[segment.id]}; ids must be unique across all files")
                continue
            first_seen[segment.id] = where
            segments.append(segment)
        errors.extend(compiler.errors)
    return segments, errors


def parse_segment(document: Any, file: str = "<document>") -> Segment:
    """Validate and compile one segment document (a dict as YAML or JSON would load it).

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    compiler = SegmentCompiler(file)
    return compiler.result(compiler.segment_document(document, "", file))

