"""The journey compiler: validate journey documents and build ``Journey`` DAGs.

Inputs: journey documents (``kind: journey``), as YAML files (``udfs.catalog.files``) or JSON
bodies of DefinitionUpdate records (``udfs.journeys.updates``) load them. Outputs: ``Journey``
objects and ``DefinitionError`` items (file, path in the document, message, line). State: none.

The grammar is documented in ``udfs/journeys/JOURNEYS.md``; keep the two in step. A journey's
entry trigger, sends, priority, validity window, quiet-hours/conflict modes, attribution and
holdout are checked by ``udfs.campaigns.compiler.DeliveryCompiler`` exactly as a campaign's.
This module adds the nodes, the conditions they test, and the checks on the graph: one entry,
no dangling edge, no edge back into the entry, no cycle, nothing unreachable, every outcome
tested after its send.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from udfs.attribution.attribution import AttributionRule
from udfs.campaigns.compiler import DeliveryCompiler
from udfs.campaigns.grammar import PAYLOAD_METADATA_FIELDS
from udfs.definitions.compiler import ID_RE
from udfs.definitions.diagnostics import describe, join_path, listing, suggest
from udfs.definitions.event_filter import EventFilter
from udfs.definitions.vocabulary import metadata_fields
from udfs.journeys.grammar import (
    JOURNEY_KEYS,
    NODE_KINDS,
    OUTCOMES,
    REENTRY,
    REQUIRED_JOURNEY_KEYS,
    Branch,
    Condition,
    Entry,
    Journey,
    Node,
    Send,
    Wait,
)

#: the keys of a node that lead to another node (``else`` is ``Node.otherwise``)
EDGE_KEYS = ("next", "on_timeout", "then", "else")
NODE_KEYS = ("id", *NODE_KINDS, *EDGE_KEYS)
#: the edges each kind of node may have (a split's are in its branches; an exit has none)
NODE_EDGES = {"entry": ("next",), "send": ("next",), "sync_audience": ("next",),
              "wait": ("next", "on_timeout"), "condition": ("then", "else"), "split": (),
              "exit": ()}
#: the nodes whose outcomes (OPENED, CLICKED, ...) a condition may test
SENDING_KINDS = ("send", "sync_audience")
CONDITION_KINDS = ("outcome", "event", "segment", "churn_score", "metadata", "all", "any")
SEND_KEYS = ("channels", "template", "payload", "expires_after")
WAIT_KEYS = ("for", "until", "timeout")
#: split percentages may be written with decimals; they must add up to 100 within this
_PERCENT_TOLERANCE = 1e-6


@dataclass
class _Graph:
    """What the node pass found, for the checks on the whole graph.

    ``complete``: every node has a valid id and no id is used twice. Otherwise reachability,
    cycles and ancestry are not checked: a fixed id would change their answers anyway.
    """

    nodes: dict[str, Node] = field(default_factory=dict)
    paths: dict[str, str] = field(default_factory=dict)
    edges: list[tuple[str, str, str]] = field(default_factory=list)  # source, target, path
    outcomes: list[tuple[str, str, str]] = field(default_factory=list)  # tester, node, path
    #: (name, path) of every entry node and the kind of every node, with an id or not
    entries: list[tuple[str, str]] = field(default_factory=list)
    kinds: list[str] = field(default_factory=list)
    #: ids written in a bad form: an edge to one is not dangling (the id is the error)
    bad_ids: set[str] = field(default_factory=set)
    complete: bool = True

    def links(self, forward: bool = True) -> dict[str, list[tuple[str, str]]]:
        """Per node, (other node, edge path) of its edges out (forward) or in, in order.

        Leaves out dangling edges and edges into the entry: each is an error of its own, and
        following one would hide or invent cycles and ancestors.
        """
        out: dict[str, list[tuple[str, str]]] = {}
        for source, target, path in self.edges:
            if target not in self.nodes or self.nodes[target].kind == "entry":
                continue
            if forward:
                out.setdefault(source, []).append((target, path))
            else:
                out.setdefault(target, []).append((source, path))
        return out

    def reachable(self, start: str, forward: bool = True) -> set[str]:
        """The nodes reachable from ``start`` (forward: itself too), or that reach it."""
        links = self.links(forward)
        seen = {start} if forward else set()
        todo = [start]
        while todo:
            for other, _ in links.get(todo.pop(), []):
                if other not in seen:
                    seen.add(other)
                    todo.append(other)
        return seen


class JourneyCompiler(DeliveryCompiler):
    """Validates journey documents and compiles their nodes; collects every error."""

    def journey_document(self, data: Any, path: str, source: str) -> Journey | None:
        """One journey document (a mapping); None after an error."""
        doc = self.mapping(data, path, "a journey", JOURNEY_KEYS, REQUIRED_JOURNEY_KEYS)
        if doc is None:
            return None
        before = len(self.errors)
        self.identity(doc, path, "cart-abandonment-chain")
        name = doc["id"] if isinstance(doc.get("id"), str) else "(no id)"
        enabled = self.enabled(doc, path)
        priority = self.priority(doc["priority"], join_path(path, "priority"), audience=False) \
            if "priority" in doc else None
        expires_after = self.duration(doc["expires_after"], join_path(path, "expires_after")) \
            if "expires_after" in doc else None
        valid_from, valid_until = self.validity(doc, path)
        bypass_quiet_hours, defer_on_conflict, send_on_backfill = self.delivery_modes(doc, path)
        goal = self._goal(doc["goal"], join_path(path, "goal")) if "goal" in doc else None
        attribution = self.attribution(doc["attribution"], join_path(path, "attribution"),
                                       goal=False) if "attribution" in doc else None
        holdout = self.holdout(doc, path)
        graph = self._nodes(doc["nodes"], join_path(path, "nodes"), name) \
            if "nodes" in doc else None
        if len(self.errors) > before or priority is None or graph is None:
            return None
        entry_id = next(n.id for n in graph.nodes.values() if n.kind == "entry")
        return Journey(
            id=str(doc["id"]), version=int(doc["version"]), description=str(doc["description"]),
            enabled=enabled, nodes=graph.nodes, entry_id=entry_id, goal=goal,
            urgency=priority[0], expected_roi=priority[1], brand_significance=priority[2],
            expires_after_ms=expires_after, valid_from_ms=valid_from,
            valid_until_ms=valid_until, bypass_quiet_hours=bypass_quiet_hours,
            defer_on_conflict=defer_on_conflict, send_on_backfill=send_on_backfill,
            document=json.loads(json.dumps(doc)),
            source=source, attribution=attribution[0] if attribution else AttributionRule(),
            holdout=holdout,
        )

    def _goal(self, data: Any, path: str) -> EventFilter | None:
        spec = self.mapping(data, path, "goal", ("event",), ("event",))
        if spec is None or "event" not in spec:
            return None
        return self.event_filter(spec["event"], join_path(path, "event"))

    # nodes

    def _nodes(self, data: Any, path: str, journey: str) -> _Graph | None:
        if not isinstance(data, list) or not data:
            self.error(path, f"nodes must be a non-empty list of nodes (each an id, one of "
                             f"{listing(NODE_KINDS)}, and its edges), got {describe(data)}")
            return None
        graph = _Graph()
        for i, item in enumerate(data):
            self._node(item, f"{path}[{i}]", graph)
        self._check_graph(graph, path, journey)
        return graph

    def _node(self, data: Any, path: str, graph: _Graph) -> None:
        """One node: its id, its kind's body and its edges, recorded in ``graph``."""
        spec = self.mapping(data, path, "a node", NODE_KEYS, ("id",))
        if spec is None:
            graph.complete = False
            return
        node_id = spec.get("id")
        label = f"node {node_id!r}" if isinstance(node_id, str) and node_id else \
            f"the node at {path}"
        if not (isinstance(node_id, str) and ID_RE.match(node_id)):
            if "id" in spec:
                self.error(join_path(path, "id"), f"bad node id {node_id!r}: use kebab-case or "
                           "snake_case (lower-case letters, digits, '-' or '_', starting with a "
                           "letter), e.g. wait-open")
            if isinstance(node_id, str):
                graph.bad_ids.add(node_id)
            graph.complete = False
            node_id = None
        elif node_id in graph.paths:
            self.error(join_path(path, "id"), f"duplicate node id {node_id!r}: "
                       f"{graph.paths[node_id]} has it too; node ids must be unique within a "
                       "journey")
            graph.complete = False
            node_id = None
        kinds = [k for k in NODE_KINDS if k in spec]
        if len(kinds) != 1:
            got = "none" if not kinds else f"{len(kinds)}: {listing(kinds)}"
            self.error(path, f"{label} needs exactly one of {listing(NODE_KINDS)} (what the "
                             f"node does); got {got}")
        kind = kinds[0] if len(kinds) == 1 else ""
        graph.kinds.append(kind)
        if kind == "entry":
            graph.entries.append((repr(node_id) if node_id else path, path))
        edges = self._edges(spec, path, label, kind)
        outcomes: list[tuple[str, str]] = []
        node = Node(id=node_id or path, kind=kind, next=edges.get("next"),
                    on_timeout=edges.get("on_timeout"), then=edges.get("then"),
                    otherwise=edges.get("else"))
        sub = join_path(path, kind)
        if kind == "entry":
            node = replace(node, entry=self._entry(spec[kind], sub))
        elif kind == "send":
            node = replace(node, send=self._send(spec[kind], sub))
        elif kind == "sync_audience":
            node = replace(node, audience=self._audience(spec[kind], sub))
        elif kind == "wait":
            node = replace(node, wait=self._wait(spec[kind], sub, spec, label, outcomes))
        elif kind == "condition":
            node = replace(node, condition=self.condition(spec[kind], sub, outcomes))
        elif kind == "split":
            node = replace(node, branches=self._split(spec[kind], sub, label))
        elif kind == "exit":
            node = replace(node, exit_reason=self._exit(spec[kind], sub))
        if node_id is None:
            return
        graph.nodes[node_id] = node
        graph.paths[node_id] = path
        graph.edges.extend((node_id, target, join_path(path, key))
                           for key, target in edges.items())
        graph.edges.extend((node_id, b.next, f"{sub}[{i}].next")
                           for i, b in enumerate(node.branches))
        graph.outcomes.extend((node_id, ref, where) for ref, where in outcomes)

    def _edges(self, spec: dict[str, Any], path: str, label: str, kind: str) -> dict[str, str]:
        """The node's edges by key (only well-formed ones); reports missing and extra edges."""
        allowed = NODE_EDGES.get(kind, EDGE_KEYS)
        edges: dict[str, str] = {}
        for key in EDGE_KEYS:
            if key not in spec:
                continue
            where = join_path(path, key)
            target = spec[key]
            if kind == "exit":
                self.error(where, f"exit {label} has {key}, but an exit ends the instance: "
                                  f"remove {key}")
            elif key not in allowed:
                edges_of = f"its edges are {listing(allowed)}" if allowed else \
                    "its edges are the next of each branch"
                self.error(where, f"{kind} {label} has no {key} edge: {edges_of}")
            elif not (isinstance(target, str) and target):
                self.error(where, f"{key} must be the id of a node, got {describe(target)}")
            else:
                edges[key] = target
        if kind in ("entry", "send", "sync_audience", "wait") and "next" not in spec:
            self.error(path, f"{kind} {label} has no next: say which node comes after it")
        if kind == "condition":
            missing = [k for k in ("then", "else") if k not in spec]
            if missing:
                self.error(path, f"condition {label} needs then (where to go when it holds) and "
                                 f"else (where to go when it does not); missing: "
                                 f"{listing(missing)}")
        return edges

    def _entry(self, data: Any, path: str) -> Entry | None:
        spec = self.mapping(data, path, "an entry", ("trigger", "reentry"), ("trigger",))
        if spec is None or "trigger" not in spec:
            return None
        trigger = self.trigger(spec["trigger"], join_path(path, "trigger"))
        reentry, cooldown = self._reentry(spec.get("reentry", "never"),
                                          join_path(path, "reentry"))
        if trigger is None or reentry is None:
            return None
        return Entry(trigger, reentry, cooldown)

    def _reentry(self, data: Any, path: str) -> tuple[str | None, int]:
        """(policy, cool-down ms): never, always, or {after: <duration>}."""
        if data in ("never", "always"):
            return data, 0
        if isinstance(data, dict):
            spec = self.mapping(data, path, "reentry", ("after",), ("after",))
            if spec is None or "after" not in spec:
                return None, 0
            cooldown = self.duration(spec["after"], join_path(path, "after"))
            return (None, 0) if cooldown is None else ("after", cooldown)
        hint = " (after needs a cool-down: write {after: 7d})" if data == "after" else \
            suggest(data, REENTRY) if isinstance(data, str) else ""
        self.error(path, f"reentry must be never, always or {{after: <duration>}} (when a user "
                         f"may start the journey again), got {describe(data)}{hint}")
        return None, 0

    def _send(self, data: Any, path: str) -> Send | None:
        spec = self.mapping(data, path, "a send", SEND_KEYS, ("channels", "template"))
        if spec is None:
            return None
        channels = self.channels(spec["channels"], join_path(path, "channels")) \
            if "channels" in spec else ()
        template = self.template(spec["template"], join_path(path, "template")) \
            if "template" in spec else None
        payload = self.payload(spec.get("payload", {}), join_path(path, "payload"))
        expires = self.duration(spec["expires_after"], join_path(path, "expires_after")) \
            if "expires_after" in spec else None
        if not channels or template is None:
            return None
        return Send(channels, template, payload, expires)

    def _audience(self, data: Any, path: str) -> str | None:
        spec = self.mapping(data, path, "sync_audience", ("audience",), ("audience",))
        if spec is None or "audience" not in spec:
            return None
        audience = spec["audience"]
        if not (isinstance(audience, str) and ID_RE.match(audience)):
            self.error(join_path(path, "audience"), f"bad audience {audience!r}: the ad "
                       "platform's custom audience, in kebab-case or snake_case, e.g. "
                       "cart-retargeting")
            return None
        return audience

    def _wait(self, data: Any, path: str, node: dict[str, Any], label: str,
              outcomes: list[tuple[str, str]]) -> Wait | None:
        spec = self.mapping(data, path, "a wait", WAIT_KEYS, ())
        if spec is None:
            return None
        if "for" in spec:
            mixed = [k for k, holder in (("until", spec), ("timeout", spec), ("on_timeout", node))
                     if k in holder]
            if mixed:
                self.error(path, f"{label} waits a fixed time (for) and also has "
                                 f"{listing(mixed)}: write either for: <duration>, or until: "
                                 "<condition> with timeout and on_timeout")
            duration = self.duration(spec["for"], join_path(path, "for"))
            return None if duration is None or mixed else Wait(duration_ms=duration)
        if "until" not in spec:
            self.error(path, "a wait needs for: <duration> (a fixed time), or until: <condition> "
                             "with timeout: <duration> and on_timeout on the node")
            return None
        until = self.condition(spec["until"], join_path(path, "until"), outcomes)
        timeout = self.duration(spec["timeout"], join_path(path, "timeout")) \
            if "timeout" in spec else None
        missing = [k for k, holder in (("timeout", spec), ("on_timeout", node)) if k not in holder]
        if missing:
            self.error(path, f"a wait without a timeout branch: {label} waits until a "
                             "condition, so it needs timeout (how long at most, in the wait) and "
                             "on_timeout (the node to go to then); missing: "
                             f"{listing(missing)}")
            return None
        return None if until is None or timeout is None else Wait(until=until,
                                                                  timeout_ms=timeout)

    def _split(self, data: Any, path: str, label: str) -> tuple[Branch, ...]:
        if not isinstance(data, list) or len(data) < 2:
            got = f"{len(data)} branch(es)" if isinstance(data, list) else describe(data)
            self.error(path, f"{label} splits users, so it needs a list of at least 2 branches "
                             f"like {{percent: 50, next: a}}; got {got}")
            return ()
        branches = []
        for i, item in enumerate(data):
            where = f"{path}[{i}]"
            spec = self.mapping(item, where, "a split branch", ("percent", "next"),
                                ("percent", "next"))
            if spec is None or "percent" not in spec or "next" not in spec:
                continue
            percent = self.number(spec["percent"], join_path(where, "percent"), "percent")
            if percent is not None and percent <= 0:
                self.error(join_path(where, "percent"), f"percent must be above 0, got "
                           f"{spec['percent']}: remove a branch no user takes")
                percent = None
            target = spec["next"]
            if not (isinstance(target, str) and target):
                self.error(join_path(where, "next"), f"next must be the id of a node, got "
                                                     f"{describe(target)}")
                continue
            if percent is not None:
                branches.append(Branch(float(percent), target))
        if len(branches) == len(data):
            total = math.fsum(b.percent for b in branches)
            if abs(total - 100) > _PERCENT_TOLERANCE:
                self.error(path, f"the branches of {label} add up to {total:g} percent, not "
                                 "100: every user takes exactly one branch")
        return tuple(branches)

    def _exit(self, data: Any, path: str) -> str:
        spec = self.mapping({} if data is None else data, path, "an exit", ("reason",), ())
        reason = (spec or {}).get("reason", "completed")
        if not (isinstance(reason, str) and ID_RE.match(reason)):
            self.error(join_path(path, "reason"), f"bad exit reason {reason!r}: one word in "
                       "kebab-case or snake_case, e.g. converted (default completed)")
        return str(reason)

    # conditions

    def condition(self, data: Any, path: str,
                  outcomes: list[tuple[str, str]]) -> Condition | None:
        """A condition (a mapping with one key of ``CONDITION_KINDS``); None after an error.

        Args:
            data: The condition as written.
            path: Its document path; also its ``Condition.key``.
            outcomes: Collects (node id, path) of every ``outcome`` test, for the graph checks.
        """
        if not isinstance(data, dict) or len(data) != 1:
            count = f", got {len(data)} keys" if isinstance(data, dict) else \
                f", got {describe(data)}"
            self.error(path, f"a condition must be a mapping with exactly one of "
                             f"{listing(CONDITION_KINDS)}{count}")
            return None
        ((kind, body),) = data.items()
        sub = join_path(path, str(kind))
        if kind in ("all", "any"):
            if not isinstance(body, list) or not body:
                self.error(sub, f"{kind} needs a non-empty list of conditions, got "
                                f"{describe(body)}")
                return None
            children = [self.condition(item, f"{sub}[{i}]", outcomes)
                        for i, item in enumerate(body)]
            if any(child is None for child in children):
                return None
            items = tuple(c for c in children if c is not None)
            return Condition(all_of=items, key=path) if kind == "all" else \
                Condition(any_of=items, key=path)
        if kind == "outcome":
            outcome = self._outcome(body, sub)
            if outcome is not None:
                outcomes.append((outcome[0], join_path(sub, "node")))
            return None if outcome is None else Condition(outcome=outcome, key=path)
        if kind == "event":
            match = self.event_filter(body, sub)
            return None if match is None else Condition(event=match, key=path)
        if kind == "segment":
            if not (isinstance(body, str) and body):
                self.error(sub, f"segment needs a segment id, got {describe(body)}")
                return None
            return Condition(segment=body, key=path)
        if kind == "churn_score":
            return self._churn(body, sub, path)
        if kind == "metadata":
            metadata = self._metadata(body, sub)
            return None if metadata is None else Condition(metadata=metadata, key=path)
        self.error(sub, f"unknown condition {kind!r}: allowed: {listing(CONDITION_KINDS)}"
                        f"{suggest(str(kind), CONDITION_KINDS)}")
        return None

    def _outcome(self, data: Any, path: str) -> tuple[str, str] | None:
        spec = self.mapping(data, path, "outcome", ("node", "is"), ("node", "is"))
        if spec is None or "node" not in spec or "is" not in spec:
            return None
        node, outcome = spec["node"], spec["is"]
        ok = True
        if not (isinstance(node, str) and node):
            self.error(join_path(path, "node"), f"node must be the id of a send or "
                       f"sync_audience node, got {describe(node)}")
            ok = False
        if outcome not in OUTCOMES:
            shown = repr(outcome) if isinstance(outcome, str) else describe(outcome)
            hint = suggest(outcome, OUTCOMES) if isinstance(outcome, str) else ""
            self.error(join_path(path, "is"), f"unknown outcome {shown}: allowed: "
                       f"{listing(OUTCOMES)}{hint}")
            ok = False
        return (node, outcome) if ok else None

    def _churn(self, data: Any, path: str, key: str) -> Condition | None:
        spec = self.mapping(data, path, "churn_score", ("above", "below"), ())
        if spec is None:
            return None
        if len(spec) != 1:
            self.error(path, f"churn_score needs exactly one of above, below, got {len(spec)}")
            return None
        ((bound, value),) = spec.items()
        if bound not in ("above", "below"):
            return None  # reported by mapping()
        score = self.fraction(value, join_path(path, bound), f"churn_score {bound}")
        if score is None:
            return None
        return Condition(churn_above=score, key=key) if bound == "above" else \
            Condition(churn_below=score, key=key)

    def _metadata(self, data: Any, path: str) -> tuple[str, Any] | None:
        spec = self.mapping(data, path, "metadata", PAYLOAD_METADATA_FIELDS, ())
        if spec is None:
            return None
        if len(spec) != 1:
            self.error(path, f"metadata needs exactly one field (one of "
                             f"{listing(PAYLOAD_METADATA_FIELDS)}) and its value, got "
                             f"{len(spec)}")
            return None
        ((name, value),) = spec.items()
        if name not in PAYLOAD_METADATA_FIELDS:
            return None  # reported by mapping()
        where = join_path(path, name)
        meta = metadata_fields()[name]
        if meta.kind == "number":
            number = self.number(value, where, f"metadata field {name}")
            return None if number is None else (name, number)
        if not (isinstance(value, str) and value):
            self.error(where, f"metadata field {name} is text, got {describe(value)}")
            return None
        if meta.symbols and value not in meta.symbols:
            self.error(where, f"unknown {name} {value!r}: allowed: {listing(meta.symbols)}"
                              f"{suggest(value, meta.symbols)}")
            return None
        return (name, value)

    # the graph

    def _check_graph(self, graph: _Graph, path: str, journey: str) -> None:
        """The checks on the whole DAG; every problem is reported, each once."""
        ids = list(graph.nodes)
        if not graph.entries:
            self.error(path, f"journey {journey} has no entry node: add a node with entry: "
                             "{trigger: ...} (what starts an instance)")
        elif len(graph.entries) > 1:
            self.error(graph.entries[1][1], f"journey {journey} has {len(graph.entries)} entry "
                       f"nodes ({', '.join(name for name, _ in graph.entries)}); a journey has "
                       "exactly one")
        entries = [n for n in ids if graph.nodes[n].kind == "entry"]
        for source, target, where in graph.edges:
            if target in entries:
                self.error(where, f"node {source!r} goes to the entry node {target!r}: an "
                                  "instance starts only once; to let a user start again, set "
                                  "reentry on the entry node")
            elif target not in graph.nodes and target not in graph.bad_ids:
                self.error(where, f"no node {target!r} in journey {journey}"
                                  f"{suggest(target, ids)}")
        if graph.kinds and not any(k in SENDING_KINDS for k in graph.kinds):
            self.error(path, f"journey {journey} sends nothing: add a send or sync_audience "
                             "node")
        self._check_outcomes(graph, journey)
        if not graph.complete:
            return
        self._check_cycles(graph)
        if len(entries) != 1:
            return
        reached = graph.reachable(entries[0])
        unreached = [n for n in ids if n not in reached]
        if unreached:
            nodes, them = ("node", "it") if len(unreached) == 1 else ("nodes", "them")
            self.error(graph.paths[unreached[0]], f"{nodes} {_quoted(unreached)} cannot be "
                       f"reached from the entry node {entries[0]!r}: lead an edge to {them} or "
                       f"remove {them}")

    def _check_outcomes(self, graph: _Graph, journey: str) -> None:
        """An outcome is of a send or sync_audience node that comes before the node testing it."""
        for tester, ref, where in graph.outcomes:
            node = graph.nodes.get(ref)
            if node is None:
                if ref not in graph.bad_ids:
                    self.error(where, f"outcome of node {ref!r}: no node {ref!r} in journey "
                                      f"{journey}{suggest(ref, list(graph.nodes))}")
            elif node.kind and node.kind not in SENDING_KINDS:
                self.error(where, f"outcome of node {ref!r}: it is a {node.kind} node; only "
                                  "send and sync_audience nodes have outcomes")
            elif graph.complete and ref not in graph.reachable(tester, forward=False):
                self.error(where, f"outcome of node {ref!r}: {ref!r} does not come before "
                                  f"{tester!r} (no path leads from it to {tester!r}), so "
                                  f"{tester!r} could never see its outcome")

    def _check_cycles(self, graph: _Graph) -> None:
        """Report each edge that closes a loop, naming the loop (depth-first, iterative)."""
        links = graph.links()
        done: set[str] = set()
        for start in graph.nodes:
            if start in done:
                continue
            trail = [start]  # the path being explored, from ``start``
            pending = [iter(links.get(start, []))]
            while pending:
                step = next(pending[-1], None)
                if step is None:
                    done.add(trail.pop())
                    pending.pop()
                    continue
                target, where = step
                if target in done:
                    continue
                if target in trail:
                    loop = [*trail[trail.index(target):], target]
                    self.error(where, f"cycle: {' -> '.join(loop)}; a journey must not loop: "
                                      "every path must end at an exit (to run it again, set "
                                      "reentry on the entry node)")
                    continue
                trail.append(target)
                pending.append(iter(links.get(target, [])))


def _quoted(names: Iterable[str]) -> str:
    return ", ".join(repr(n) for n in names)


def parse_journey(document: Any, file: str = "<document>") -> Journey:
    """Validate and compile one journey document.

    Raises:
        InvalidDefinitions: At least one error; ``.errors`` has them all.
    """
    compiler = JourneyCompiler(file)
    return compiler.result(compiler.journey_document(document, "", file))
