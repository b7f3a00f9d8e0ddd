"""The journey grammar: what a journey (a multi-step campaign workflow, a DAG) is once validated.

Inputs: none (built by ``udfs.journeys.compiler``). Outputs: the definition types (``Journey``,
its nodes, the conditions nodes test) and the words of the grammar. State: none. The grammar is
documented in ``udfs/journeys/JOURNEYS.md``; keep the two in step.

A journey is a list of nodes, each with an id and an explicit next: one ``entry`` node (what
starts an instance for a user, and whether a user may start it again), then ``send``,
``sync_audience``, ``wait``, ``condition``, ``split`` and ``exit`` nodes. The compiler rejects
cycles, unreachable nodes, dangling edges, a wait on something without a timeout branch and more
than one entry, so an instance always reaches an exit or a wait in a bounded number of moves.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property
from typing import Any, Final

from udfs.attribution.attribution import AttributionRule
from udfs.campaigns.grammar import DEFAULT_GOAL, CampaignTrigger
from udfs.definitions.event_filter import EventFilter

JOURNEY_KEYS: Final = ("kind", "id", "version", "description", "enabled", "nodes", "goal",
                       "priority", "expires_after", "quiet_hours", "on_conflict", "on_backfill",
                       "valid_from", "valid_until", "attribution", "holdout")
REQUIRED_JOURNEY_KEYS: Final = ("kind", "id", "version", "description", "nodes", "priority")
#: the keys that say what a node is (exactly one per node)
NODE_KINDS: Final = ("entry", "send", "sync_audience", "wait", "condition", "split", "exit")
#: what an instance may start again after it ended: never, after a cool-down, or at once
REENTRY: Final = ("never", "after", "always")
#: what a condition may ask of an earlier send's outcomes (CampaignOutcome.outcome)
OUTCOMES: Final = ("DELIVERED", "OPENED", "CLICKED", "CONVERTED", "BOUNCED", "UNSUBSCRIBED",
                   "COMPLAINED", "EXPIRED", "FAILED")
#: the template id of an audience sync trigger (the audience is in the payload)
AUDIENCE_TEMPLATE: Final = "audience-sync"


@dataclass(frozen=True)
class Condition:
    """A test of the user or of the instance; exactly one of the fields is set.

    Attributes:
        outcome: (send node id, outcome) - the trigger that node sent in this instance got
            this outcome (OPENED, CLICKED, ...). False when that node sent nothing (suppressed).
        event: a click matching this filter happened since the instance entered.
        segment: the user is a member of this segment now.
        churn_above, churn_below: the churn score is >= / < this value (False without one).
        metadata: (field, value) - the user's metadata field equals the value.
        all_of, any_of: every / at least one of these conditions holds.
        key: where it was written (``nodes[3].condition``): the instance keeps what it saw of
            an ``event`` condition under this key.
    """

    outcome: tuple[str, str] | None = None
    event: EventFilter | None = None
    segment: str | None = None
    churn_above: float | None = None
    churn_below: float | None = None
    metadata: tuple[str, Any] | None = None
    all_of: tuple[Condition, ...] = ()
    any_of: tuple[Condition, ...] = ()
    key: str = ""

    def event_conditions(self) -> list[Condition]:
        """Every ``event`` condition in this tree (what instances must watch for)."""
        found = [self] if self.event is not None else []
        for child in (*self.all_of, *self.any_of):
            found.extend(child.event_conditions())
        return found

    def describe(self) -> str:
        """One line for explanations."""
        if self.outcome is not None:
            return f"{self.outcome[0]} was {self.outcome[1].lower()}"
        if self.event is not None:
            return f"{self.event.label} since entry"
        if self.segment is not None:
            return f"in segment {self.segment}"
        if self.churn_above is not None:
            return f"churn score >= {self.churn_above}"
        if self.churn_below is not None:
            return f"churn score < {self.churn_below}"
        if self.metadata is not None:
            return f"metadata {self.metadata[0]} = {self.metadata[1]!r}"
        joined = " and " if self.all_of else " or "
        return "(" + joined.join(c.describe() for c in (*self.all_of, *self.any_of)) + ")"


@dataclass(frozen=True)
class Entry:
    """What starts an instance (``trigger``: as a campaign's) and the re-entry policy.

    ``reentry``: ``never`` (a user runs the journey once), ``after`` (again once
    ``cooldown_ms`` has passed since the last instance ended) or ``always`` (again as soon as the
    last one ended). A user never has two instances of one journey at once.
    """

    trigger: CampaignTrigger
    reentry: str = "never"
    cooldown_ms: int = 0


@dataclass(frozen=True)
class Send:
    """A message: the first consented channel of ``channels``, as a campaign sends it.

    ``expires_after_ms`` overrides the journey's; the payload's placeholders are a campaign's.
    """

    channels: tuple[str, ...]
    template: str
    payload: tuple[tuple[str, str], ...] = ()
    expires_after_ms: int | None = None


@dataclass(frozen=True)
class Wait:
    """Wait ``duration_ms``; or until ``until`` holds, at most ``timeout_ms``.

    A duration wait goes to the node's ``next`` when it ends. An ``until`` wait goes to ``next``
    as soon as its condition holds, or to ``on_timeout`` when the timeout passes first.
    """

    duration_ms: int | None = None
    until: Condition | None = None
    timeout_ms: int | None = None


@dataclass(frozen=True)
class Branch:
    """One arm of a split: ``percent`` of the users go to ``next``."""

    percent: float
    next: str


@dataclass(frozen=True)
class Node:
    """One node of a journey; ``kind`` (a ``NODE_KINDS`` word) says which field is set.

    Edges: ``next`` (entry, send, sync_audience, wait), ``on_timeout`` (an ``until`` wait),
    ``then``/``otherwise`` (condition), the branches of a split; an exit has none.
    ``audience`` is a sync_audience node's audience name; ``exit_reason`` an exit node's.
    """

    id: str
    kind: str
    next: str | None = None
    entry: Entry | None = None
    send: Send | None = None
    audience: str | None = None
    wait: Wait | None = None
    condition: Condition | None = None
    then: str | None = None
    otherwise: str | None = None
    branches: tuple[Branch, ...] = ()
    on_timeout: str | None = None
    exit_reason: str = "completed"

    def successors(self) -> list[str]:
        """The node ids this node can move to, in the order written."""
        edges = [self.next, self.on_timeout, self.then, self.otherwise,
                 *(b.next for b in self.branches)]
        return [e for e in edges if e is not None]


@dataclass(frozen=True)
class Journey:
    """A validated journey definition.

    Attributes:
        id: Unique id across all definitions; the DefinitionUpdate ``definition_id``.
        version: Strictly increasing per id.
        description: For people.
        enabled: A disabled journey starts no instance; its running instances end at their
            next step (as if deleted).
        nodes: By id, in the order written; ``entry_id`` names the one entry node.
        goal: A click that ends an instance as converted, wherever it is (None: no goal).
        urgency, expected_roi, brand_significance: the priority matrix's inputs of its sends.
        expires_after_ms: A send is worthless this long after the instance reached its node.
        valid_from_ms, valid_until_ms: Instances start only in [from, until).
        bypass_quiet_hours, defer_on_conflict: as a campaign's.
        send_on_backfill: An entry caused by a backfill starts an instance (``on_backfill:
            send``), or not (``skip``, the default); its sends are campaigns' that say the same.
        document: The document as written (published as the DefinitionUpdate body).
        source: Where it came from.
        attribution: Window and model crediting conversions (its ``attribution_goal``) to its
            sends; the journey is one unit, so ``linear`` splits a conversion across its sends.
        holdout: The share of users (0..0.5) held out of every send of the journey (one arm
            per user for the whole journey: the hash is of the journey's id).
    """

    id: str
    version: int
    description: str
    enabled: bool
    nodes: dict[str, Node]
    entry_id: str
    goal: EventFilter | None
    urgency: float
    expected_roi: float
    brand_significance: float
    expires_after_ms: int | None = None
    valid_from_ms: int | None = None
    valid_until_ms: int | None = None
    bypass_quiet_hours: bool = False
    defer_on_conflict: bool = True
    send_on_backfill: bool = False
    document: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, hash=False)
    source: str = field(default="", compare=False)
    attribution: AttributionRule = AttributionRule()
    holdout: float = 0.0

    @property
    def attribution_goal(self) -> EventFilter:
        """What counts as its conversion: its ``goal``, or PURCHASE when it names none."""
        return self.goal if self.goal is not None else DEFAULT_GOAL

    @property
    def entry(self) -> Entry:
        """The entry node's trigger and re-entry policy."""
        entry = self.nodes[self.entry_id].entry
        assert entry is not None  # the compiler guarantees it
        return entry

    def conditions(self) -> list[Condition]:
        """Every condition of the journey (condition nodes and ``until`` waits)."""
        found = []
        for node in self.nodes.values():
            if node.condition is not None:
                found.append(node.condition)
            if node.wait is not None and node.wait.until is not None:
                found.append(node.wait.until)
        return found

    @cached_property
    def watched_events(self) -> tuple[Condition, ...]:
        """Every ``event`` condition, in conditions and waits: what a click is checked against.

        Read at every click of a user with a running instance; computed once per journey
        (a frozen dataclass: ``cached_property`` writes the instance dict directly).
        """
        return tuple(w for c in self.conditions() for w in c.event_conditions())

    def referenced_segments(self) -> set[str]:
        """Every segment id this journey names (entry trigger and conditions)."""
        names = set()
        if self.entry.trigger.segment_enter is not None:
            names.add(self.entry.trigger.segment_enter)

        def walk(condition: Condition) -> None:
            if condition.segment is not None:
                names.add(condition.segment)
            for child in (*condition.all_of, *condition.any_of):
                walk(child)

        for condition in self.conditions():
            walk(condition)
        return names

    def send_campaign_id(self, node_id: str) -> str:
        """The campaign id a send or sync_audience node competes as: ``<journey>/<node>``."""
        return f"{self.id}/{node_id}"
