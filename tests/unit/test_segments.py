"""Tests for udfs.segments (and the udfs.definitions parts it uses): grammar, validation errors,
evaluation, next_change_ms, registry.

A plain ``FakeView`` dataclass stands in for ``udfs.features.view.UserView``; every timestamp
is fixed.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from schemas.codec import Codec
from udfs.catalog.files import (
    SEGMENT_CATALOG_DIR,
    load_catalog,
    load_files,
    validate_command,
    validate_files,
)
from udfs.definitions.diagnostics import DefinitionError, InvalidDefinitions, format_errors
from udfs.definitions.durations import format_duration, parse_duration
from udfs.definitions.envelope import checksum, delete_update
from udfs.definitions.versioning import ChangeOutcome
from udfs.definitions.vocabulary import event_types, known_feature_names
from udfs.features.spec import FEATURE_NAMES
from udfs.features.view import RecentEvent
from udfs.segments.compiler import parse_segment, validate_documents
from udfs.segments.conditions import (
    AbsenceCondition,
    AllOf,
    AnyOf,
    ChurnScoreCondition,
    Evaluation,
    EventCondition,
    FeatureCondition,
    InactiveCondition,
    MetadataCondition,
    Not,
    Segment,
    evaluate,
)
from udfs.segments.updates import SegmentRegistry, segment_to_update, update_to_segment

T0 = 1_700_000_000_000  # 2023-11-14T22:13:20Z
S = 1_000
M = 60 * S
H = 60 * M
D = 24 * H


@dataclass
class FakeView:
    now_ms: int
    features: dict[str, float] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)
    events: tuple[RecentEvent, ...] = ()
    last_event_ms: int | None = None
    churn_score: float | None = None

    def feature(self, name: str) -> float | None:
        return self.features.get(name)

    def metadata(self, field: str) -> Any:
        return self.meta.get(field)

    def recent_events(self) -> tuple[RecentEvent, ...]:
        return self.events

    def cart_expiry_ms(self) -> int | None:
        return None


def ev(event_type: str, t: int, **kw: Any) -> RecentEvent:
    kw.setdefault("source", "WEB")
    return RecentEvent(f"{event_type}-{t}", event_type, t, **kw)


def view(now: int, *events: RecentEvent, **kw: Any) -> FakeView:
    ordered = tuple(sorted(events, key=lambda e: e.event_time))
    kw.setdefault("last_event_ms", max((e.event_time for e in ordered), default=None))
    return FakeView(now, events=ordered, **kw)


def seg(condition: Any, **doc: Any) -> Segment:
    return parse_segment({"id": "t", "version": 1, "description": "test", "condition": condition,
                          **doc})


def check(condition: Any, v: FakeView) -> Evaluation:
    """The evaluation, checked against the engine's unexplained one (the reasons left out)."""
    segment = seg(condition)
    result = evaluate(segment, v)
    quiet = evaluate(segment, v, explain=False)
    assert (quiet.member, quiet.next_change_ms) == (result.member, result.next_change_ms)
    assert quiet.reason in ("", result.reason)
    return result


def errors_in(tmp_path: Path, text: str, name: str = "bad.yaml") -> list[DefinitionError]:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    _, errors = validate_files([path])
    assert errors, "expected validation errors"
    return errors


def only(errors: list[DefinitionError]) -> DefinitionError:
    assert len(errors) == 1, format_errors(errors)
    return errors[0]


GOOD_DOC = """\
id: {id}
version: 1
description: test segment
condition:
  feature: {{name: cart_value, op: ">", value: 100}}
"""

# --- durations ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "ms"), [
    ("500ms", 500), ("90s", 90 * S), ("30m", 30 * M), ("1h", H), ("24h", 24 * H), ("7d", 7 * D),
])
def test_parse_duration(text: str, ms: int) -> None:
    assert parse_duration(text) == ms


@pytest.mark.parametrize("text", ["30", "30 min", "1w", "0m", "-5m", "1.5h", "", "m"])
def test_parse_duration_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        parse_duration(text)


def test_format_duration() -> None:
    assert format_duration(500) == "500ms"
    assert format_duration(90 * S) == "1m 30s"
    assert format_duration(30 * D + 5 * H + 3 * M) == "30d 5h"


# --- parsing ------------------------------------------------------------------------------------

EVERY_NODE = """\
segments:
  - id: every_node
    version: 3
    description: uses every node
    enabled: false
    condition:
      all:
        - feature: {name: cart_value, op: between, value: [10, 100.5]}
        - metadata: {field: country, op: in, value: [DE, NO, SE]}
        - metadata: {field: signup_time, op: within_last, value: 7d}
        - metadata: {field: opt_ins.email, op: "==", value: true}
        - event:
            type: [PRODUCT_VIEW, ADD_TO_CART]
            within: 1h
            where: {price: {">=": 50}, category: shoes, source: {in: [WEB, MOBILE]}}
            min_count: 3
        - any:
            - absence:
                after: {type: ADD_TO_CART, where: {value: {">": 20}}}
                missing: PURCHASE
                within: 30m
                expires_after: 7d
            - inactive: {for: 90s}
        - not:
            churn_score: {op: ">=", value: 0.7}
        - feature: {name: seconds_since_last_purchase, op: ">", value: 30d}
"""


def test_parse_every_node(tmp_path: Path) -> None:
    path = tmp_path / "every.yaml"
    path.write_text(EVERY_NODE, encoding="utf-8")
    (s,) = load_files([path]).segments
    assert (s.id, s.version, s.description, s.enabled) == ("every_node", 3, "uses every node",
                                                           False)
    assert s.source == str(path)
    cond = s.condition
    assert isinstance(cond, AllOf)
    feature, country, signup, email, event, either, negated, age = cond.conditions
    assert isinstance(feature, FeatureCondition)
    assert (feature.name, feature.op, feature.value) == ("cart_value", "between", (10, 100.5))
    assert isinstance(country, MetadataCondition)
    assert (country.field, country.op, country.value) == ("country", "in", ("DE", "NO", "SE"))
    assert isinstance(signup, MetadataCondition) and signup.value == 7 * D
    assert isinstance(email, MetadataCondition) and email.value is True
    assert isinstance(event, EventCondition)
    assert event.match.types == {"PRODUCT_VIEW", "ADD_TO_CART"}
    assert event.within_ms == H and event.min_count == 3
    assert event.match.where == (("price", ">=", 50), ("category", "==", "shoes"),
                                 ("source", "in", ("WEB", "MOBILE")))
    assert isinstance(either, AnyOf)
    absence, inactive = either.conditions
    assert isinstance(absence, AbsenceCondition)
    assert absence.after.types == {"ADD_TO_CART"}
    assert absence.after.where == (("value", ">", 20),)
    assert absence.missing.types == {"PURCHASE"}
    assert (absence.within_ms, absence.expires_after_ms) == (30 * M, 7 * D)
    assert isinstance(inactive, InactiveCondition) and inactive.for_ms == 90 * S
    assert isinstance(negated, Not) and isinstance(negated.condition, ChurnScoreCondition)
    assert (negated.condition.op, negated.condition.value) == (">=", 0.7)
    assert isinstance(age, FeatureCondition) and age.value == 30 * D / S  # seconds
    assert s.uses_churn_score
    # the document is kept as written, JSON-able
    assert s.document["condition"]["all"][1]["metadata"]["value"] == ["DE", "NO", "SE"]
    assert json.loads(json.dumps(s.document)) == s.document
    assert "enabled" in s.document


def test_yaml_keeps_country_no_and_dates_as_strings() -> None:
    from udfs.definitions.yaml_source import read_yaml

    data, _, errors = read_yaml("a: NO\nb: yes\nc: 2024-01-01\nd: true\n", "x.yaml")
    assert not errors
    assert data == {"a": "NO", "b": "yes", "c": "2024-01-01", "d": True}


def test_where_shorthands() -> None:
    s = seg({"event": {"type": "PURCHASE", "within": "1h",
                       "where": {"category": ["shoes", "bags"], "price": [10, 20]}}})
    assert isinstance(s.condition, EventCondition)
    assert s.condition.match.where == (("category", "in", ("shoes", "bags")),
                                       ("price", "between", (10, 20)))


def test_enabled_defaults_to_true() -> None:
    assert seg({"inactive": {"for": "1d"}}).enabled is True


def test_event_types_come_from_the_click_schema() -> None:
    assert "STORE_VISIT" in event_types() and "ADD_TO_CART" in event_types()


def test_feature_names_are_udfs_features() -> None:
    names, source = known_feature_names()
    assert names == frozenset(FEATURE_NAMES) and source == "udfs.features.FEATURE_NAMES"
    assert {"cart_value", "cart_items", "sessions_7d", "events_product_view_7d"} <= names
    with pytest.raises(DefinitionError,
                       match=f"{len(FEATURE_NAMES)} names of udfs.features.FEATURE_NAMES"):
        seg({"feature": {"name": "no_such_feature", "op": ">", "value": 1}})


def test_invalid_definitions_pickle() -> None:
    with pytest.raises(InvalidDefinitions) as caught:
        seg({"inactive": {"for": "x"}}, version=0)
    again = pickle.loads(pickle.dumps(caught.value))
    assert again.errors == caught.value.errors and len(again.errors) == 2


# --- the shipped catalog ------------------------------------------------------------------------

CATALOG_FILES = sorted(SEGMENT_CATALOG_DIR.glob("*.yaml"))


@pytest.mark.parametrize("path", CATALOG_FILES, ids=[p.stem for p in CATALOG_FILES])
def test_catalog_file_validates(path: Path) -> None:
    (segment,) = load_files([path]).segments
    assert segment.id == path.stem
    assert segment.enabled


def test_catalog_has_the_issue_segments() -> None:
    assert [s.id for s in load_catalog().segments] == [
        "cart-abandoners", "churn-risk-high", "frequent-browsers", "high-value-cart",
        "inactive-30d", "lapsed-purchasers", "new-signups-7d",
    ]


def test_validate_command_on_catalog() -> None:
    code, text = validate_command([SEGMENT_CATALOG_DIR])
    assert code == 0
    assert text.startswith("ok: 7 segment(s) in 7 file(s)")


def test_catalog_typical_user() -> None:
    by_id = {s.id: s for s in load_catalog().segments}
    atc = ev("ADD_TO_CART", T0 - 45 * M, price=80.0, quantity=2)
    v = view(T0, ev("PRODUCT_VIEW", T0 - 2 * H), atc,
             features={"cart_items": 2, "cart_value": 160.0, "events_product_view_7d": 3,
                       "sessions_7d": 1, "orders_total": 2,
                       "seconds_since_last_purchase": 40 * D / S},
             meta={"signup_time": T0 - 3 * D})
    members = {i for i, s in by_id.items() if evaluate(s, v).member}
    assert members == {"cart-abandoners", "high-value-cart", "lapsed-purchasers", "new-signups-7d"}
    assert evaluate(by_id["cart-abandoners"], v).next_change_ms == T0 - 45 * M + 30 * M + 7 * D
    assert evaluate(by_id["high-value-cart"], v).reason == "cart_value 160 > 100"
    assert evaluate(by_id["churn-risk-high"], v).reason == "no churn score yet"


# --- validation errors --------------------------------------------------------------------------

THREE_SEGMENTS = """\
segments:
  - id: one
    version: 1
    description: first
    condition: {inactive: {for: 1d}}
  - id: two
    version: 1
    description: second
    condition: {inactive: {for: 2d}}
  - id: three
    version: 1
    description: third
    condition:
      all:
        - inactive: {for: 1d}
        - feature: {name: cart_value, op: "=>", value: 100}
"""


def test_error_unknown_op_with_path_and_allowed(tmp_path: Path) -> None:
    error = only(errors_in(tmp_path, THREE_SEGMENTS))
    assert error.file == str(tmp_path / "bad.yaml")
    assert error.path == "segments[2].condition.all[1].feature.op"
    assert "unknown op '=>'" in error.message
    assert "allowed: <, <=, >, >=, ==, !=, between" in error.message
    assert "did you mean '>='?" in error.message
    assert error.line == 16


def test_error_unknown_key_did_you_mean(tmp_path: Path) -> None:
    text = "id: a\nversion: 1\ndescripton: x\ncondition: {inactive: {for: 1d}}\n"
    errors = errors_in(tmp_path, text)
    paths = {e.path: e.message for e in errors}
    assert "unknown key 'descripton'" in paths["descripton"]
    assert "did you mean 'description'?" in paths["descripton"]
    assert "allowed: id, version, description, enabled, condition" in paths["descripton"]
    assert "missing required key 'description'" in paths[""]


def test_error_unknown_condition_kind(tmp_path: Path) -> None:
    text = GOOD_DOC.format(id="a").replace("  feature:", "  feture:")
    error = only(errors_in(tmp_path, text))
    assert error.path == "condition.feture"
    assert "unknown condition 'feture'" in error.message
    assert "did you mean 'feature'?" in error.message
    assert "allowed: all, any, not, feature" in error.message


@pytest.mark.parametrize(("bad", "hint"), [
    ("30 min", "e.g. 500ms, 90s, 30m, 24h, 7d"),
    ("30", "a bare number has no unit"),
    ("1w", "one unit of ms, s, m, h, d"),
    ("0m", "longer than zero"),
])
def test_error_bad_duration(tmp_path: Path, bad: str, hint: str) -> None:
    value = bad if bad == "30" else f"'{bad}'"
    text = f"id: a\nversion: 1\ndescription: x\ncondition:\n  inactive: {{for: {value}}}\n"
    error = only(errors_in(tmp_path, text))
    assert error.path == "condition.inactive.for"
    assert "bad duration" in error.message and hint in error.message


def test_error_unknown_feature(tmp_path: Path) -> None:
    text = GOOD_DOC.format(id="a").replace("cart_value", "cart_valu")
    error = only(errors_in(tmp_path, text))
    assert error.path == "condition.feature.name"
    assert error.message.startswith("unknown feature 'cart_valu': allowed: one of the ")
    assert error.message.endswith("; did you mean 'cart_value'?")


def test_error_unknown_event_type(tmp_path: Path) -> None:
    text = ("id: a\nversion: 1\ndescription: x\ncondition:\n"
            "  absence: {after: ADD_TO_CARD, missing: purchase, within: 30m}\n")
    errors = errors_in(tmp_path, text)
    by_path = {e.path: e.message for e in errors}
    assert "unknown event type 'ADD_TO_CARD': allowed: PAGE_VIEW" in \
        by_path["condition.absence.after"]
    assert by_path["condition.absence.after"].endswith("; did you mean 'ADD_TO_CART'?")
    assert "did you mean 'PURCHASE'?" in by_path["condition.absence.missing"]
    assert "allowed: PAGE_VIEW, PRODUCT_VIEW" in by_path["condition.absence.missing"]


def test_error_wrong_types(tmp_path: Path) -> None:
    text = ("id: Cart Abandoners\nversion: one\ndescription: ''\nenabled: 'yes'\ncondition:\n"
            "  feature: {name: cart_value, op: '>', value: '100'}\n")
    by_path = {e.path: e.message for e in errors_in(tmp_path, text)}
    assert "bad id 'Cart Abandoners': use kebab-case or snake_case" in by_path["id"]
    assert "bad version 'one': expected a whole number from 1" in by_path["version"]
    assert "description must be a non-empty string" in by_path["description"]
    assert "enabled must be true or false, got the string 'yes'" in by_path["enabled"]
    assert "the value of feature cart_value must be a number, got the string '100'" in \
        by_path["condition.feature.value"]


def test_error_duplicate_ids_across_files(tmp_path: Path) -> None:
    (tmp_path / "a.yaml").write_text(GOOD_DOC.format(id="same"), encoding="utf-8")
    (tmp_path / "b.yaml").write_text(GOOD_DOC.format(id="same"), encoding="utf-8")
    found, errors = validate_files([tmp_path / "a.yaml", tmp_path / "b.yaml"])
    assert [s.id for s in found.segments] == ["same"]
    error = only(errors)
    assert (error.file, error.path) == (str(tmp_path / "b.yaml"), "id")
    assert f"duplicate segment id 'same': already defined in {tmp_path / 'a.yaml'}" in \
        error.message


def test_error_missing_required_and_multi_key_condition(tmp_path: Path) -> None:
    text = ("id: a\nversion: 1\ndescription: x\ncondition:\n"
            "  feature: {name: cart_value, op: '>'}\n  inactive: {for: 1d}\n")
    error = only(errors_in(tmp_path, text))
    assert error.path == "condition"
    assert "a condition has exactly one key, got 'feature', 'inactive'" in error.message
    assert "all: [...]" in error.message
    text = "id: a\nversion: 1\ndescription: x\ncondition:\n  feature: {name: cart_value, op: '>'}\n"
    error = only(errors_in(tmp_path, text))
    assert error.path == "condition.feature"
    assert "missing required key 'value'" in error.message


def test_error_metadata_enum_and_field(tmp_path: Path) -> None:
    text = ("id: a\nversion: 1\ndescription: x\ncondition:\n  any:\n"
            "    - metadata: {field: plan, op: in, value: [PREMIUM, GOLD]}\n"
            "    - metadata: {field: contry, op: '==', value: DE}\n"
            "    - metadata: {field: country, op: within_last, value: 7d}\n")
    by_path = {e.path: e.message for e in errors_in(tmp_path, text)}
    assert "'GOLD' is not a value of plan: allowed: FREE, BASIC, PREMIUM, ENTERPRISE, UNKNOWN" \
        in by_path["condition.any[0].metadata.value[1]"]
    assert "unknown metadata field 'contry': allowed: user_id, country, time_zone" in \
        by_path["condition.any[1].metadata.field"]
    assert by_path["condition.any[1].metadata.field"].endswith("; did you mean 'country'?")
    assert "unknown op 'within_last' for metadata field country (string): allowed: ==, !=, in, " \
        "not_in" in by_path["condition.any[2].metadata.op"]


def test_error_churn_score_range_and_between(tmp_path: Path) -> None:
    text = ("id: a\nversion: 1\ndescription: x\ncondition:\n  all:\n"
            "    - churn_score: {op: '>=', value: 70}\n"
            "    - feature: {name: cart_value, op: between, value: [100, 10]}\n")
    by_path = {e.path: e.message for e in errors_in(tmp_path, text)}
    assert "churn scores are probabilities from 0 to 1, got 70" in \
        by_path["condition.all[0].churn_score.value"]
    assert "low is greater than high" in by_path["condition.all[1].feature.value"]


def test_error_yaml_syntax_and_duplicate_key(tmp_path: Path) -> None:
    error = only(errors_in(tmp_path, "id: a\nversion: [1\n"))
    assert error.path == "" and "not valid YAML" in error.message and error.line is not None
    text = GOOD_DOC.format(id="a") + "version: 2\n"
    error = only(errors_in(tmp_path, text))
    assert (error.path, error.line) == ("version", 6)
    assert "duplicate key 'version'" in error.message


def test_error_not_with_list_and_where(tmp_path: Path) -> None:
    text = ("id: a\nversion: 1\ndescription: x\ncondition:\n  all:\n"
            "    - not: [{inactive: {for: 1d}}]\n"
            "    - event: {type: PURCHASE, within: 1h, where: {colour: red, source: APP}}\n")
    by_path = {e.path: e.message for e in errors_in(tmp_path, text)}
    assert "not takes one condition (a mapping), got a list" in by_path["condition.all[0].not"]
    assert "unknown key 'colour' in where: allowed: price, value, category, source, " \
        "product_id" in by_path["condition.all[1].event.where.colour"]
    assert "unknown source 'APP': allowed: WEB, MOBILE, OFFLINE, UNKNOWN" in \
        by_path["condition.all[1].event.where.source"]


def test_errors_are_all_collected_and_formatted(tmp_path: Path) -> None:
    text = ("id: a\nversion: 0\ndescription: x\ncondition:\n  all:\n"
            "    - feature: {name: nope, op: '>', value: 1}\n"
            "    - inactive: {for: 5}\n"
            "    - event: {type: PURCHASE, within: 1h, min_count: 0}\n")
    errors = errors_in(tmp_path, text)
    assert [e.path for e in errors] == [
        "version", "condition.all[0].feature.name", "condition.all[1].inactive.for",
        "condition.all[2].event.min_count",
    ]
    rendered = format_errors(errors).splitlines()
    assert len(rendered) == 4
    assert rendered[0].startswith(f"{tmp_path / 'bad.yaml'}:version: bad version 0")
    assert rendered[0].endswith("(line 2)")
    code, text_out = validate_command([tmp_path / "bad.yaml"])
    assert code == 1 and text_out.endswith("4 error(s) in 1 of 1 file(s)")


def test_load_files_raises_with_all_errors(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("id: a\nversion: 0\ndescription: x\ncondition: {inactive: {for: 5}}\n",
                    encoding="utf-8")
    with pytest.raises(InvalidDefinitions) as caught:
        load_files([path])
    assert len(caught.value.errors) == 2
    assert isinstance(caught.value, DefinitionError)
    assert caught.value.path == "version"


def test_validate_documents_in_memory() -> None:
    good = {"id": "a", "version": 1, "description": "x", "condition": {"inactive": {"for": "1d"}}}
    segments, errors = validate_documents([("a.json", good), ("b.json", [good])])
    assert [s.id for s in segments] == ["a"]
    assert only(errors).file == "b.json" and "got a list" in errors[0].message


# --- evaluation: leaves -------------------------------------------------------------------------


@pytest.mark.parametrize(("op", "value", "actual", "member"), [
    (">", 100, 142.5, True), (">", 100, 100, False), (">=", 100, 100, True),
    ("<", 5, 4, True), ("<", 5, 5, False), ("<=", 5, 5, True), ("==", 2, 2, True),
    ("==", 2, 3, False), ("!=", 2, 3, True), ("!=", 2, 2, False),
    ("between", [1, 3], 1, True), ("between", [1, 3], 3, True), ("between", [1, 3], 3.01, False),
])
def test_feature_truth_table(op: str, value: Any, actual: float, member: bool) -> None:
    cond = {"feature": {"name": "cart_value", "op": op, "value": value}}
    result = check(cond, view(T0, features={"cart_value": actual}))
    assert result.member is member
    assert result.next_change_ms is None  # cart_value does not move with time alone


def test_feature_reason_and_unknown() -> None:
    cond = {"feature": {"name": "cart_value", "op": ">", "value": 100}}
    assert check(cond, view(T0, features={"cart_value": 142.5})).reason == "cart_value 142.5 > 100"
    assert check(cond, view(T0, features={"cart_value": 42})).reason == \
        "cart_value 42 not > 100"
    unknown = check({"feature": {"name": "cart_value", "op": "!=", "value": 1}}, view(T0))
    assert (unknown.member, unknown.reason) == (False, "cart_value unknown")


@pytest.mark.parametrize(("cond", "meta", "member"), [
    ({"field": "country", "op": "in", "value": ["DE", "NO"]}, {"country": "NO"}, True),
    ({"field": "country", "op": "in", "value": ["DE", "NO"]}, {"country": "FR"}, False),
    ({"field": "country", "op": "not_in", "value": ["DE"]}, {"country": "FR"}, True),
    ({"field": "country", "op": "not_in", "value": ["DE"]}, {}, False),
    ({"field": "plan", "op": "==", "value": "PREMIUM"}, {"plan": "PREMIUM"}, True),
    ({"field": "plan", "op": "!=", "value": "PREMIUM"}, {"plan": "FREE"}, True),
    ({"field": "plan", "op": "!=", "value": "PREMIUM"}, {}, False),
    ({"field": "opt_ins.email", "op": "==", "value": True}, {"opt_ins.email": False}, False),
    ({"field": "lifetime_value", "op": ">=", "value": 500}, {"lifetime_value": 500.0}, True),
    ({"field": "signup_time", "op": "<", "value": T0}, {"signup_time": T0 - 1}, True),
])
def test_metadata_truth_table(cond: dict[str, Any], meta: dict[str, Any], member: bool) -> None:
    assert check({"metadata": cond}, view(T0, meta=meta)).member is member


def test_metadata_within_last_and_next_change() -> None:
    cond = {"metadata": {"field": "signup_time", "op": "within_last", "value": "7d"}}
    signup = T0 - 3 * D
    fresh = check(cond, view(T0, meta={"signup_time": signup}))
    assert (fresh.member, fresh.next_change_ms) == (True, signup + 7 * D)
    assert fresh.reason == "signup_time 3d ago, within the last 7d"
    boundary = check(cond, view(signup + 7 * D, meta={"signup_time": signup}))
    assert (boundary.member, boundary.next_change_ms) == (False, None)
    assert check(cond, view(signup + 7 * D - 1, meta={"signup_time": signup})).member
    missing = check(cond, view(T0))
    assert (missing.member, missing.reason) == (False, "no metadata signup_time")


def test_event_occurrence_window_and_count() -> None:
    cond = {"event": {"type": "PRODUCT_VIEW", "within": "1h", "min_count": 2}}
    views = [ev("PRODUCT_VIEW", T0 - 50 * M), ev("PAGE_VIEW", T0 - 5 * M),
             ev("PRODUCT_VIEW", T0 - 10 * M)]
    result = check(cond, view(T0, *views))
    # true until the 2nd newest view (T0 - 50m) leaves the 1h window
    assert (result.member, result.next_change_ms) == (True, T0 + 10 * M)
    assert result.reason == "2 PRODUCT_VIEW within 1h"
    later = check(cond, view(T0 + 10 * M, *views))
    assert (later.member, later.next_change_ms) == (False, None)
    assert later.reason == "1 PRODUCT_VIEW within 1h, fewer than 2"
    assert check(cond, view(T0 + 10 * M - 1, *views)).member


def test_event_where_and_future_events() -> None:
    cond = {"event": {"type": "ADD_TO_CART", "within": "1h",
                      "where": {"value": {">": 100}, "category": {"in": ["shoes"]}}}}
    cheap = ev("ADD_TO_CART", T0 - M, price=30.0, quantity=2, category="shoes")
    pricey = ev("ADD_TO_CART", T0 - M, price=60.0, quantity=2, category="shoes")
    bag = ev("ADD_TO_CART", T0 - M, price=600.0, category="bags")
    assert not check(cond, view(T0, cheap, bag)).member
    assert check(cond, view(T0, pricey)).member
    # an event after now (processed out of order) does not count yet, but enters at its time
    future = ev("ADD_TO_CART", T0 + 5 * M, price=600.0, category="shoes")
    result = check(cond, view(T0, future))
    assert (result.member, result.next_change_ms) == (False, T0 + 5 * M)


ABSENCE = {"absence": {"after": "ADD_TO_CART", "missing": "PURCHASE", "within": "30m"}}


def test_absence_add_to_cart_without_purchase() -> None:
    atc = ev("ADD_TO_CART", T0)
    waiting = check(ABSENCE, view(T0, atc))
    assert (waiting.member, waiting.next_change_ms) == (False, T0 + 30 * M)
    almost = check(ABSENCE, view(T0 + 30 * M - 1, atc))
    assert (almost.member, almost.next_change_ms) == (False, T0 + 30 * M)
    assert almost.reason == "ADD_TO_CART 29m 59s ago, waiting 1ms more for PURCHASE"
    fired = check(ABSENCE, view(T0 + 30 * M, atc))  # the timer at the window end
    assert (fired.member, fired.next_change_ms) == (True, None)
    assert fired.reason == "ADD_TO_CART 30m ago, no PURCHASE within 30m"
    # stays true without expires_after
    assert check(ABSENCE, view(T0 + 90 * D, atc)).member


def test_absence_purchase_in_window_stays_false() -> None:
    atc, buy = ev("ADD_TO_CART", T0), ev("PURCHASE", T0 + 10 * M)
    for now in (T0 + 10 * M, T0 + 30 * M, T0 + 31 * M, T0 + 10 * D):
        result = check(ABSENCE, view(now, atc, buy))
        assert (result.member, result.next_change_ms) == (False, None), now
    assert check(ABSENCE, view(T0 + 30 * M, atc, buy)).reason == "PURCHASE 10m after ADD_TO_CART"


def test_absence_purchase_after_window_ends_membership() -> None:
    atc, late_buy = ev("ADD_TO_CART", T0), ev("PURCHASE", T0 + 2 * H)
    assert check(ABSENCE, view(T0 + H, atc)).member
    assert not check(ABSENCE, view(T0 + 2 * H, atc, late_buy)).member


def test_absence_new_after_event_restarts_window() -> None:
    first, buy, second = ev("ADD_TO_CART", T0), ev("PURCHASE", T0 + M), ev("ADD_TO_CART", T0 + H)
    result = check(ABSENCE, view(T0 + H + M, first, buy, second))
    assert (result.member, result.next_change_ms) == (False, T0 + H + 30 * M)
    assert check(ABSENCE, view(T0 + H + 30 * M, first, buy, second)).member


def test_absence_expires_after() -> None:
    cond = {"absence": {**ABSENCE["absence"], "expires_after": "7d"}}
    atc = ev("ADD_TO_CART", T0)
    member = check(cond, view(T0 + 30 * M, atc))
    assert (member.member, member.next_change_ms) == (True, T0 + 30 * M + 7 * D)
    assert check(cond, view(T0 + 30 * M + 7 * D - 1, atc)).member
    expired = check(cond, view(T0 + 30 * M + 7 * D, atc))
    assert (expired.member, expired.next_change_ms) == (False, None)
    assert "expired after 7d" in expired.reason


def test_absence_without_after_event() -> None:
    result = check(ABSENCE, view(T0, ev("PAGE_VIEW", T0 - M)))
    assert (result.member, result.next_change_ms, result.reason) == (
        False, None, "no ADD_TO_CART in recent events")


def test_inactive() -> None:
    cond = {"inactive": {"for": "30d"}}
    never = check(cond, view(T0))
    assert (never.member, never.next_change_ms, never.reason) == (False, None, "no event seen yet")
    active = check(cond, view(T0, ev("PAGE_VIEW", T0 - D)))
    assert (active.member, active.next_change_ms) == (False, T0 - D + 30 * D)
    assert not check(cond, view(T0 + 29 * D - 1, ev("PAGE_VIEW", T0 - D))).member
    idle = check(cond, view(T0 + 29 * D, ev("PAGE_VIEW", T0 - D)))
    assert (idle.member, idle.next_change_ms, idle.reason) == (True, None, "no event for 30d")


@pytest.mark.parametrize(("score", "member"), [(None, False), (0.69, False), (0.7, True)])
def test_churn_score_hook(score: float | None, member: bool) -> None:
    result = check({"churn_score": {"op": ">=", "value": 0.7}}, view(T0, churn_score=score))
    assert result.member is member and result.next_change_ms is None


def test_disabled_segment_has_no_members() -> None:
    s = seg({"inactive": {"for": "1d"}}, enabled=False, version=4)
    result = evaluate(s, view(T0 + 2 * D, ev("PAGE_VIEW", T0)))
    assert (result.member, result.reason) == (False, "segment t is disabled in v4")


# --- evaluation: time-dependent features --------------------------------------------------------


def test_age_feature_next_change() -> None:
    cond = {"feature": {"name": "seconds_since_last_purchase", "op": ">", "value": "30d"}}
    result = check(cond, view(T0, features={"seconds_since_last_purchase": 29 * D / S}))
    assert (result.member, result.next_change_ms) == (False, T0 + D + 1)
    assert result.reason == "seconds_since_last_purchase 29d not > 30d"
    after = check(cond, view(T0 + D + 1, features={"seconds_since_last_purchase": 30 * D / S
                                                   + 0.001}))
    assert (after.member, after.next_change_ms) == (True, None)
    below = check({"feature": {"name": "days_since_signup", "op": "<", "value": 7}},
                  view(T0, features={"days_since_signup": 6.5}))
    assert (below.member, below.next_change_ms) == (True, T0 + D // 2)


def test_window_feature_next_change() -> None:
    cond = {"feature": {"name": "events_product_view_1h", "op": ">=", "value": 2}}
    events = (ev("PRODUCT_VIEW", T0 - 70 * M), ev("PAGE_VIEW", T0 - 50 * M),
              ev("PRODUCT_VIEW", T0 - 40 * M), ev("PRODUCT_VIEW", T0 - 5 * M))
    result = check(cond, view(T0, *events, features={"events_product_view_1h": 2}))
    assert (result.member, result.next_change_ms) == (True, T0 + 20 * M)  # T0-40m leaves
    # a falling count cannot make ">= 2" true without a new event
    low = check(cond, view(T0, *events, features={"events_product_view_1h": 1}))
    assert (low.member, low.next_change_ms) == (False, None)


# --- combinations -------------------------------------------------------------------------------

HIGH_CART = {"feature": {"name": "cart_value", "op": ">", "value": 100}}
SIGNUP_7D = {"metadata": {"field": "signup_time", "op": "within_last", "value": "7d"}}
INACTIVE_1D = {"inactive": {"for": "1d"}}


@pytest.mark.parametrize(("cart", "signup_age", "expected"), [
    (150.0, D, (True, True, False)), (150.0, 8 * D, (False, True, True)),
    (50.0, D, (False, True, True)), (50.0, 8 * D, (False, False, True)),
])
def test_combinations_truth_table(cart: float, signup_age: int,
                                  expected: tuple[bool, bool, bool]) -> None:
    v = view(T0, features={"cart_value": cart}, meta={"signup_time": T0 - signup_age})
    got = tuple(check(c, v).member for c in (
        {"all": [HIGH_CART, SIGNUP_7D]}, {"any": [HIGH_CART, SIGNUP_7D]},
        {"not": {"all": [HIGH_CART, SIGNUP_7D]}},
    ))
    assert got == expected


def test_combinations_next_change() -> None:
    last = T0 - H
    v = view(T0, ev("PAGE_VIEW", last), features={"cart_value": 150.0},
             meta={"signup_time": T0 - 5 * D})
    # all true: earliest of the children (signup leaves 7d at +2d, inactivity at +23h)
    both = check({"all": [SIGNUP_7D, {"not": INACTIVE_1D}]}, v)
    assert (both.member, both.next_change_ms) == (True, last + D)
    assert both.reason == "signup_time 5d ago, within the last 7d and last event 1h ago, less " \
        "than 1d"
    # all false: the first false child's time
    blocked = check({"all": [INACTIVE_1D, SIGNUP_7D]}, v)
    assert (blocked.member, blocked.next_change_ms) == (False, last + D)
    # any true: the first true child's time (cart_value: never by itself)
    either = check({"any": [HIGH_CART, SIGNUP_7D]}, v)
    assert (either.member, either.next_change_ms) == (True, None)
    # any false: earliest of the children
    neither = check({"any": [INACTIVE_1D, {"not": SIGNUP_7D}]}, v)
    assert (neither.member, neither.next_change_ms) == (False, last + D)
    negated = check({"not": INACTIVE_1D}, v)
    assert (negated.member, negated.next_change_ms) == (True, last + D)


def test_lapsed_purchasers_needs_recent_activity() -> None:
    (lapsed,) = [s for s in load_catalog().segments if s.id == "lapsed-purchasers"]
    features = {"orders_total": 3, "seconds_since_last_purchase": 45 * D / S}
    assert evaluate(lapsed, view(T0, ev("PAGE_VIEW", T0 - 2 * D), features=features)).member
    gone = evaluate(lapsed, view(T0, ev("PAGE_VIEW", T0 - 31 * D), features=features))
    assert not gone.member and gone.reason == "no event for 31d"


# --- DefinitionUpdate and the registry ----------------------------------------------------------


def make(version: int, cart: int = 100, seg_id: str = "high-value-cart") -> Segment:
    return parse_segment({"id": seg_id, "version": version, "description": "cart",
                          "condition": {"feature": {"name": "cart_value", "op": ">",
                                                    "value": cart}}})


def test_update_round_trip_and_avro_shape() -> None:
    segment = make(2)
    update = segment_to_update(segment, T0, "alice")
    assert update["kind"] == "SEGMENT" and update["action"] == "UPSERT"
    assert update["checksum"] == checksum(update["body"])
    assert json.loads(update["body"]) == segment.document
    back = update_to_segment(update)
    assert (back.id, back.version, back.condition) == (segment.id, 2, segment.condition)
    assert back.source == "definition high-value-cart v2"
    codec = Codec.load()
    assert codec.decode(codec.encode("DefinitionUpdate", update)) == update
    gone = delete_update("high-value-cart", 3, T0)
    assert codec.decode(codec.encode("DefinitionUpdate", gone)) == gone


def test_update_to_segment_bad_body_names_definition() -> None:
    body = json.dumps({"id": "x", "version": 1, "description": "d",
                       "condition": {"inactive": {"for": "soon"}}})
    update = {"definition_id": "x", "kind": "SEGMENT", "action": "UPSERT", "version": 1,
              "body": body, "checksum": checksum(body), "published_at": T0}
    with pytest.raises(DefinitionError) as caught:
        update_to_segment(update)
    assert caught.value.file == "definition x v1"
    assert caught.value.path == "condition.inactive.for"
    mismatch = segment_to_update(make(1), T0) | {"definition_id": "other"}
    with pytest.raises(DefinitionError, match="differs from the update's definition_id"):
        update_to_segment(mismatch)


def test_registry_versions() -> None:
    registry = SegmentRegistry()
    added = registry.apply(segment_to_update(make(1), T0))
    assert (added.outcome, added.previous_version, added.changed) == (ChangeOutcome.ADDED, None,
                                                                      True)
    newer = registry.apply(segment_to_update(make(2, cart=200), T0))
    assert (newer.outcome, newer.previous_version) == (ChangeOutcome.REPLACED, 1)
    current = registry.get("high-value-cart")
    assert current is not None and current.version == 2
    older = registry.apply(segment_to_update(make(1), T0))
    assert older.outcome is ChangeOutcome.STALE and not older.changed
    assert "older than the held v2" in older.message
    same = registry.apply(segment_to_update(make(2, cart=200), T0))
    assert same.outcome is ChangeOutcome.STALE and "duplicate delivery" in same.message
    conflict = registry.apply(segment_to_update(make(2, cart=300), T0))
    assert conflict.outcome is ChangeOutcome.STALE and "conflict" in conflict.message
    current = registry.get("high-value-cart")
    assert current is not None and current.document["condition"]["feature"]["value"] == 200


def test_registry_delete_keeps_tombstone() -> None:
    registry = SegmentRegistry([make(2), make(1, seg_id="other")])
    assert [s.id for s in registry.definitions()] == ["high-value-cart", "other"]
    deleted = registry.apply(delete_update("high-value-cart", 3, T0))
    assert (deleted.outcome, deleted.previous_version) == (ChangeOutcome.DELETED, 2)
    assert registry.get("high-value-cart") is None and "high-value-cart" not in registry
    assert [s.id for s in registry.definitions()] == ["other"]
    assert list(registry.by_id()) == ["other"]
    assert registry.deleted_version("high-value-cart") == 3
    # a late UPSERT older than the DELETE is stale; a newer one brings it back
    assert registry.apply(segment_to_update(make(2), T0)).outcome is ChangeOutcome.STALE
    back = registry.apply(segment_to_update(make(4), T0))
    assert (back.outcome, back.previous_version) == (ChangeOutcome.ADDED, 3)
    assert registry.deleted_version("high-value-cart") is None


def test_registry_rejects_bad_updates() -> None:
    registry = SegmentRegistry([make(1)])
    tampered = segment_to_update(make(2, cart=5), T0) | {"checksum": "0" * 64}
    rejected = registry.apply(tampered)
    assert rejected.outcome is ChangeOutcome.REJECTED
    assert rejected.errors[0].path == "checksum"
    assert "does not match the SHA-256 of body" in rejected.errors[0].message
    body = '{"id": "high-value-cart", "version": 2}'
    invalid = registry.apply({"definition_id": "high-value-cart", "kind": "SEGMENT",
                              "action": "UPSERT", "version": 2, "body": body,
                              "checksum": checksum(body), "published_at": T0})
    assert invalid.outcome is ChangeOutcome.REJECTED
    assert invalid.errors[0].file == "definition high-value-cart v2"
    current = registry.get("high-value-cart")
    assert current is not None and current.version == 1
    ignored = registry.apply({"definition_id": "c", "kind": "CAMPAIGN", "action": "UPSERT",
                              "version": 1, "body": "{}", "checksum": checksum("{}")})
    assert ignored.outcome is ChangeOutcome.IGNORED


def test_registry_rebuilds_from_its_updates() -> None:
    registry = SegmentRegistry(load_catalog().segments)
    registry.apply(delete_update("inactive-30d", 2, T0))
    rebuilt = SegmentRegistry.from_updates(registry.updates())
    assert [s.id for s in rebuilt.definitions()] == [s.id for s in registry.definitions()]
    assert rebuilt.version_of("inactive-30d") == 2 and rebuilt.get("inactive-30d") is None
    assert len(rebuilt) == 6
