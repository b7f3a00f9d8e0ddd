"""Event filters: which clicks count, shared by segment conditions and campaign triggers.

Inputs: a compiled filter (event types, ``where`` tests on event fields) and one
``udfs.features.view.RecentEvent``. Outputs: whether the event matches, and the filter's label for
explanations. State: none. ``udfs.definitions.compiler.Compiler.event_filter`` builds them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Final

from udfs.definitions.comparisons import Test
from udfs.features.view import RecentEvent

WHERE_FIELDS: Final = ("price", "value", "category", "source", "product_id")
NUMERIC_WHERE_FIELDS: Final = ("price", "value")


@dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events count: one of ``types``, and every ``where`` test on its fields."""

    types: frozenset[str]
    where: tuple[tuple[str, str, Any], ...] = ()  # (field, op, value)
    tests: tuple[tuple[Callable[[RecentEvent], Any], Test], ...] = field(
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


def type_label(types: frozenset[str]) -> str:
    """The event types of a filter as one label: ``ADD_TO_CART/PURCHASE``."""
    return "/".join(sorted(types))
