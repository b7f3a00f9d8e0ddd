"""Comparisons as definitions write them: ``{op, value}`` with the operators of each value kind.

Inputs: an operator symbol and a (validated) value. Outputs: a predicate on the actual value
(``make_test``; unknown, i.e. None, never matches) and how the comparison reads in
explanations (``show_comparison``). State: none. Used by segment conditions and event filters.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from typing import Any, Final

from udfs.definitions.diagnostics import format_number

NUMERIC_OPS: Final = ("<", "<=", ">", ">=", "==", "!=", "between")
EQUALITY_OPS: Final = ("==", "!=", "in", "not_in")
BOOLEAN_OPS: Final = ("==", "!=")
TIME_OPS: Final = ("within_last", *NUMERIC_OPS)

#: Typical misspellings of operators, suggested before difflib's guess.
OP_ALIASES: Final = {
    "=": "==", "=>": ">=", "=<": "<=", "<>": "!=", "gt": ">", "ge": ">=", "gte": ">=",
    "lt": "<", "le": "<=", "lte": "<=", "eq": "==", "ne": "!=", "neq": "!=", "not in": "not_in",
    "notin": "not_in", "nin": "not_in", "range": "between",
}

#: A compiled comparison: the actual value -> whether it matches.
Test = Callable[[Any], bool]


def make_test(op: str, value: Any) -> Test:
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


def show_comparison(op: str, value: Any) -> str:
    """How ``<op> <value>`` reads in explanations: ``> 100``, ``between 1 and 5``, ``in [A]``."""
    if op == "between":
        return f"between {format_number(value[0])} and {format_number(value[1])}"
    if op in ("in", "not_in"):
        return f"{op.replace('_', ' ')} [{', '.join(format_number(v) for v in value)}]"
    return f"{op} {format_number(value)}"
