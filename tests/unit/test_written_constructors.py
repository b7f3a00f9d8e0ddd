"""Dataclasses of the hot path whose ``__init__`` is written out must match their fields.

A dataclass's generated ``__init__`` is interpreted Python even in a compiled module
(``udfs.native``): ~0.3-0.8 µs a construction against ~0.02 for a written-out one, and the
engine builds several of these per input. A written-out ``__init__`` can drift from the field
list (a field added without a parameter, a default changed in one place only): here every
parameter sets its field, and every default is the field's.
"""

from __future__ import annotations

import ast
import dataclasses
from functools import cache
from pathlib import Path
from typing import Any

import pytest

from udfs.attribution.touches import TouchLog
from udfs.campaigns.arbitration import (
    CampaignState,
    Definitions,
    Firing,
    Outcome,
    StepFacts,
    UserFacts,
)
from udfs.clock import Pending, UserClock
from udfs.engine import Click, Released, Step, UserState
from udfs.features.state import UserFeatures
from udfs.features.view import RecentEvent
from udfs.intake import SourceRecord
from udfs.journeys.state import JourneyState

#: a value of each class-typed field's type (compiled, a parameter's type is checked)
_INSTANCES: dict[str, Any] = {
    "UserClock": lambda n: UserClock(clock_ms=n),
    "CampaignState": lambda n: CampaignState(decided={f"c{n}": n}),
    "JourneyState": lambda n: JourneyState(started={f"j{n}": n}),
    "TouchLog": lambda n: TouchLog(converted=frozenset({f"t{n}"})),
    "feature_state.UserFeatures": lambda n: UserFeatures(orders_total=n),
    "Callable": lambda n: (lambda *_: n),
    "Firing": lambda n: Firing(()),
}


def _sample(annotation: str, n: int) -> Any:
    """A value of the annotated type, different for each ``n`` (never a default)."""
    base = annotation.replace(" ", "").split("|")[0]
    simple: dict[str, Any] = {"int": 1_000 + n, "str": f"s{n}", "bytes": b"b%d" % n,
                              "float": n + 0.5, "bool": True}
    if base in simple:
        return simple[base]
    for prefix, make in (("dict[", lambda: {f"k{n}": n}), ("Mapping[", lambda: {f"k{n}": n}),
                         ("list[", lambda: [n]), ("tuple[", lambda: (n,)),
                         ("frozenset[", lambda: frozenset({f"x{n}"}))):
        if base.startswith(prefix):
            return make()
    for name, make in _INSTANCES.items():
        if base.startswith(name):
            return make(n)
    return object()  # Any, or a type a compiled constructor does not check


@cache
def _annotations(cls: type) -> dict[str, str]:
    """The class's field annotations as written in its source (compiled, ``fields`` holds
    only approximate runtime types)."""
    source = Path(__file__).resolve().parents[2] / (cls.__module__.replace(".", "/") + ".py")
    for node in ast.walk(ast.parse(source.read_text())):
        if isinstance(node, ast.ClassDef) and node.name == cls.__name__:
            return {item.target.id: ast.unparse(item.annotation) for item in node.body
                    if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    raise AssertionError(f"no class {cls.__name__} in {source}")


def _values(cls: type, fields: Any) -> dict[str, Any]:
    annotations = _annotations(cls)
    return {f.name: _sample(annotations[f.name], n) for n, f in enumerate(fields)}


WRITTEN_OUT = [Pending, UserClock, UserState, Click, Released, SourceRecord, StepFacts,
               CampaignState, Definitions, UserFacts, Outcome, JourneyState, TouchLog, RecentEvent,
               Step]


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=lambda c: c.__name__)
def test_every_field_is_a_parameter_that_sets_it(cls: type) -> None:
    fields = dataclasses.fields(cls)
    given = _values(cls, [f for f in fields if f.init])
    built = cls(**given)
    for name, value in given.items():
        kept = getattr(built, name)
        # compiled, an int is unboxed and boxed again: equal and of its type, not the object
        assert kept == value and type(kept) is type(value), \
            f"{cls.__name__}({name}=...) did not set {name}"


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=lambda c: c.__name__)
def test_defaults_are_the_fields_defaults(cls: type) -> None:
    fields = dataclasses.fields(cls)
    required = _values(cls, [f for f in fields if f.init and f.default is dataclasses.MISSING
                             and f.default_factory is dataclasses.MISSING])
    built = cls(**required)
    for f in fields:
        if f.name in required:
            continue
        expected = f.default_factory() if f.default is dataclasses.MISSING else f.default
        assert getattr(built, f.name) == expected, f"{cls.__name__}.{f.name}"
    if any(f.default_factory is not dataclasses.MISSING for f in fields):
        other = cls(**required)
        for f in fields:
            if f.default_factory is not dataclasses.MISSING:  # a new object each time
                assert getattr(other, f.name) is not getattr(built, f.name), f.name


@pytest.mark.parametrize("cls", WRITTEN_OUT, ids=lambda c: c.__name__)
def test_equality_and_replace_still_work(cls: type) -> None:
    fields = dataclasses.fields(cls)
    values = _values(cls, [f for f in fields if f.init])
    assert cls(**values) == cls(**values)
    first = next(f for f in fields if f.init and f.compare)
    other = _sample(_annotations(cls)[first.name], 99)
    changed = dataclasses.replace(cls(**values), **{first.name: other})
    assert getattr(changed, first.name) == other
    assert changed != cls(**values)
