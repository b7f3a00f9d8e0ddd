"""A user's journey instances: what the engine keeps between steps (inside the campaign state).

Inputs: none. Outputs: ``Instance`` (one run of a journey), ``JourneyState`` (a user's
instances and re-entry bookkeeping) and their JSON form (``to_doc`` / ``from_doc``), which the
campaign state's encoding (``udfs.campaigns.arbitration.encode_state``) embeds. State: the
types themselves; ``udfs.journeys.runner`` moves instances.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class Instance:
    """One run of a journey for one user.

    Attributes:
        journey_id, version: the journey and the version the instance is on now.
        number: 1 for the user's first run of this journey, 2 after a re-entry, ...
        node: the node it is at (a wait, between steps).
        entered_ms: event time it started; ``node_ms``: event time it reached ``node``.
        sends: send/sync_audience node id -> the trigger id handed to arbitration there.
        outcomes: send node id -> the outcomes its trigger got (OPENED, CLICKED, ...).
        seen: event condition key -> event time of the first matching click since entry.
    """

    journey_id: str
    version: int
    number: int
    node: str
    entered_ms: int
    node_ms: int
    sends: dict[str, str] = field(default_factory=dict)
    outcomes: dict[str, list[str]] = field(default_factory=dict)
    seen: dict[str, int] = field(default_factory=dict)
    due_ms: int | None = None


@dataclass
class JourneyState:
    """One user's journeys.

    ``instances``: the running instance of each journey, by journey id; ``started`` and
    ``ended``, per journey id: how many instances the user started, when the last one ended.
    """

    instances: dict[str, Instance] = field(default_factory=dict)
    started: dict[str, int] = field(default_factory=dict)
    ended: dict[str, int] = field(default_factory=dict)

    def __init__(self, instances: dict[str, Instance] | None = None,
                 started: dict[str, int] | None = None,
                 ended: dict[str, int] | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        self.instances = {} if instances is None else instances
        self.started = {} if started is None else started
        self.ended = {} if ended is None else ended

    def next_due_ms(self) -> int | None:
        """When the earliest waiting instance's wait ends, or None."""
        return min((i.due_ms for i in self.instances.values() if i.due_ms is not None),
                   default=None)

    def is_empty(self) -> bool:
        """Nothing to keep."""
        return not (self.instances or self.started or self.ended)


def to_doc(state: JourneyState) -> dict[str, Any]:
    """The state as a JSON-ready dict (kept inside the campaign state's JSON)."""
    return {"instances": [asdict(i) for i in state.instances.values()],
            "started": state.started, "ended": state.ended}


def from_doc(doc: Mapping[str, Any] | None) -> JourneyState:
    """``to_doc``'s dict back (None: no journeys yet, e.g. a savepoint from before journeys)."""
    if not doc:
        return JourneyState()
    instances = [Instance(**i) for i in doc.get("instances", [])]
    return JourneyState({i.journey_id: i for i in instances},
                        {k: int(v) for k, v in doc.get("started", {}).items()},
                        {k: int(v) for k, v in doc.get("ended", {}).items()})


