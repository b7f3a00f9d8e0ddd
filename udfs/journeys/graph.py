"""A journey as a picture: its nodes' labels, its edges, a layered layout and Graphviz DOT text.

Inputs: a validated ``Journey`` (``udfs.journeys.compiler`` guarantees a DAG whose every node
the entry reaches) and, optionally, per-node counts (node id -> {what: number}, ``what`` one of
``COUNTS``: the engine's ``journey_<what>`` counters). Outputs: DOT text (``to_dot``), the
longest-path layers from the entry (``layers``) and a placement of every node and edge on a
grid of layers and columns (``place``) that ``nudgeflow journeys show`` draws with matplotlib.
State: none. Pure: no pyflink, no matplotlib, no Graphviz.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from udfs.definitions.durations import format_duration
from udfs.definitions.event_filter import EventFilter, type_label
from udfs.definitions.vocabulary import event_types
from udfs.journeys.grammar import Condition, Journey, Node

#: the per-node counters of the engine (``journey_<what>``), in the order labels show them
COUNTS = ("entered", "sent", "waiting", "converted", "exited")


@dataclass(frozen=True)
class KindStyle:
    """How a node kind looks: a fill colour (both pictures) and a Graphviz shape."""

    fill: str
    shape: str
    style: str = "filled"


#: per node kind (``udfs.journeys.grammar.NODE_KINDS``)
KIND_STYLES: dict[str, KindStyle] = {
    "entry": KindStyle("#cdebc5", "invhouse"),
    "send": KindStyle("#cfe2f7", "box", "rounded,filled"),
    "sync_audience": KindStyle("#e2d5f3", "component"),
    "wait": KindStyle("#fbeec2", "hexagon"),
    "condition": KindStyle("#fbd9bf", "diamond"),
    "split": KindStyle("#f6d3e4", "trapezium"),
    "exit": KindStyle("#e3e3e3", "doubleoctagon"),
}
#: an event filter naming more types than this is shown by its count of types
_MAX_TYPES_SHOWN = 3


@dataclass(frozen=True)
class Edge:
    """A move between two nodes; ``label`` says when it is taken ("" when always)."""

    source: str
    target: str
    label: str = ""


# --- what a node does --------------------------------------------------------------------------


def _event_text(event: EventFilter) -> str:
    """An event filter in a few words: long type lists are counted, not listed."""
    types = type_label(event.types)
    tail = event.label[len(types):] if event.label.startswith(types) else ""
    if event.types == frozenset(event_types()):
        return "any event" + tail
    if len(event.types) > _MAX_TYPES_SHOWN:
        return f"any of {len(event.types)} event types{tail}"
    return event.label or types


def describe_condition(condition: Condition) -> str:
    """A condition in a few words: ``email opened``, ``PURCHASE since entry``, ``(a and b)``."""
    if condition.outcome is not None:
        return f"{condition.outcome[0]} {condition.outcome[1].lower()}"
    if condition.event is not None:
        return f"{_event_text(condition.event)} since entry"
    if condition.all_of or condition.any_of:
        joined = " and " if condition.all_of else " or "
        return "(" + joined.join(describe_condition(c)
                                 for c in (*condition.all_of, *condition.any_of)) + ")"
    return condition.describe()


def describe_node(node: Node) -> list[str]:
    """What a node does, as the lines under its id (``send EMAIL cart-chain-email-v1``)."""
    if node.entry is not None:
        again = {"never": "once per user", "always": "re-entry at once"}.get(
            node.entry.reentry, f"re-entry after {format_duration(node.entry.cooldown_ms)}")
        return [f"entry: {node.entry.trigger.describe()}", again]
    if node.send is not None:
        return [f"send {'/'.join(node.send.channels)} {node.send.template}"]
    if node.audience is not None:
        return [f"sync audience {node.audience}"]
    if node.wait is not None:
        wait = node.wait
        if wait.until is not None and wait.timeout_ms is not None:
            return [f"wait until {describe_condition(wait.until)}, "
                    f"{format_duration(wait.timeout_ms)}"]
        return [f"wait {format_duration(wait.duration_ms or 0)}"]
    if node.condition is not None:
        return [f"if {describe_condition(node.condition)}"]
    if node.kind == "split":
        return [f"split {len(node.branches)} ways"]
    return [f"exit: {node.exit_reason}"]


def _number(value: float) -> str:
    return f"{value:,.0f}" if float(value).is_integer() else f"{value:,.1f}"


def describe_counts(counts: Mapping[str, float] | None) -> str:
    """A node's counts as one line, in ``COUNTS`` order: ``entered 40, sent 38`` ("" if none)."""
    if not counts:
        return ""
    known = [what for what in COUNTS if what in counts]
    others = sorted(what for what in counts if what not in COUNTS)
    return ", ".join(f"{what} {_number(counts[what])}" for what in (*known, *others))


def node_lines(node: Node, counts: Mapping[str, float] | None = None) -> list[str]:
    """A node's label: its id, what it does and, when given, its counts (one line each)."""
    shown = describe_counts(counts)
    return [node.id, *describe_node(node), *([shown] if shown else [])]


def edges(journey: Journey) -> list[Edge]:
    """Every edge of the journey, node by node in written order, labelled where it matters.

    An ``until`` wait's ``next`` is labelled with what it waits for (``opened`` for an outcome,
    else ``met``) and its ``on_timeout`` ``timeout``; a condition's ``then``/``else``; a split's
    branches their percent. Edges that are always taken have no label.
    """
    found: list[Edge] = []
    for node in journey.nodes.values():
        if node.kind == "wait" and node.wait is not None and node.wait.until is not None:
            until = node.wait.until
            met = until.outcome[1].lower() if until.outcome is not None else "met"
            if node.next is not None:
                found.append(Edge(node.id, node.next, met))
            if node.on_timeout is not None:
                found.append(Edge(node.id, node.on_timeout, "timeout"))
        elif node.kind == "condition":
            if node.then is not None:
                found.append(Edge(node.id, node.then, "then"))
            if node.otherwise is not None:
                found.append(Edge(node.id, node.otherwise, "else"))
        elif node.kind == "split":
            found.extend(Edge(node.id, b.next, f"{b.percent:g}%") for b in node.branches)
        else:
            found.extend(Edge(node.id, target) for target in node.successors())
    return found


# --- layers ------------------------------------------------------------------------------------


def layers(journey: Journey) -> list[list[str]]:
    """The nodes by longest path from the entry: layer 0 is the entry, ids in written order.

    A node sits one layer below the lowest of the nodes that lead to it, so every edge points
    down. Nodes the entry does not reach are left out (the compiler rejects them).

    Raises:
        ValueError: The graph has a cycle (the compiler rejects those too).
    """
    reached = {journey.entry_id}
    todo = [journey.entry_id]
    while todo:
        for target in journey.nodes[todo.pop()].successors():
            if target not in reached:
                reached.add(target)
                todo.append(target)
    waiting = {node_id: 0 for node_id in reached}
    for node_id in reached:
        for target in set(journey.nodes[node_id].successors()):
            waiting[target] += 1
    depth = dict.fromkeys(reached, 0)
    ready = [journey.entry_id]
    placed = 0
    while ready:
        node_id = ready.pop()
        placed += 1
        for target in set(journey.nodes[node_id].successors()):
            depth[target] = max(depth[target], depth[node_id] + 1)
            waiting[target] -= 1
            if waiting[target] == 0:
                ready.append(target)
    if placed != len(reached):
        stuck = [n for n in journey.nodes if n in reached and waiting[n] > 0]
        raise ValueError(f"journey {journey.id} has a cycle through {', '.join(stuck)}; "
                         "validate it with `nudgeflow defs validate`")
    out: list[list[str]] = [[] for _ in range(max(depth.values()) + 1)]
    for node_id in journey.nodes:  # written order within a layer
        if node_id in depth:
            out[depth[node_id]].append(node_id)
    return out


# --- placement ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Route:
    """An edge as drawn: through ``bends`` (x, layer), one per layer it crosses."""

    edge: Edge
    bends: tuple[tuple[float, int], ...] = ()


@dataclass(frozen=True)
class Placement:
    """Where each node goes: ``x`` in columns (0 is the leftmost), ``layer`` its row.

    ``routes``: every edge, in ``edges`` order; an edge that spans several layers bends at a
    point of each layer between, placed like a thin node so it passes beside the boxes.
    """

    x: dict[str, float]
    layer: dict[str, int]
    routes: list[Route]

    @property
    def width(self) -> float:
        """Columns from the leftmost to the rightmost node or bend."""
        xs = [*self.x.values(), *(x for r in self.routes for x, _ in r.bends)]
        return max(xs) - min(xs)


#: the least distance, in columns, between two nodes, a node and a bend, two bends
_SEPARATION = {(False, False): 1.0, (False, True): 0.65, (True, False): 0.65, (True, True): 0.3}
#: the prefix of a bend's name in the layout (a node id cannot start with it)
_BEND = "\0"
_ORDER_SWEEPS = 8
_POSITION_SWEEPS = 5  # odd: the last sweep goes down, from the entry


def _crossings(rows: Sequence[Sequence[str]], links: Sequence[tuple[str, str]]) -> int:
    at = {v: (r, i) for r, row in enumerate(rows) for i, v in enumerate(row)}
    count = 0
    for i, (a, b) in enumerate(links):
        for c, d in links[i + 1:]:
            if at[a][0] == at[c][0] and (at[a][1] - at[c][1]) * (at[b][1] - at[d][1]) < 0:
                count += 1
    return count


def _median(values: Sequence[float]) -> float:
    ordered = sorted(values)
    middle = len(ordered) // 2
    return ordered[middle] if len(ordered) % 2 else (ordered[middle - 1] + ordered[middle]) / 2


def _align_row(row: Sequence[str], x: dict[str, float], near: Mapping[str, Sequence[str]],
               gap: Callable[[str, str], float]) -> None:
    """Move each of a layer's nodes to the median column of its neighbours in ``near``.

    Real nodes first (the median of their real neighbours when they have any, so a chain of
    nodes stays straight): as close to it as ``gap`` between neighbours allows, siblings that
    want the same column spread evenly around it. Then the bends of long edges, each as close
    to its own median as the nodes around it allow, so long edges go round the boxes.
    """
    def wanted(v: str) -> float:
        real = [x[n] for n in near[v] if not n.startswith(_BEND)]
        return _median(real or [x[n] for n in near[v]]) if near[v] else x[v]

    def span(a: int, b: int) -> float:
        return sum(gap(row[k], row[k + 1]) for k in range(a, b))

    reals = [j for j, v in enumerate(row) if not v.startswith(_BEND)]
    if reals:
        right = [wanted(row[j]) for j in reals]
        left = list(right)
        for i in range(1, len(reals)):
            right[i] = max(right[i], right[i - 1] + span(reals[i - 1], reals[i]))
        for i in range(len(reals) - 2, -1, -1):
            left[i] = min(left[i], left[i + 1] - span(reals[i], reals[i + 1]))
        for i, j in enumerate(reals):
            x[row[j]] = (right[i] + left[i]) / 2
    placed = {j: x[row[j]] for j in reals}
    for j, v in enumerate(row):
        if j in placed:
            continue
        low = max((at + span(i, j) for i, at in placed.items() if i < j), default=float("-inf"))
        high = min((at - span(j, i) for i, at in placed.items() if i > j), default=float("inf"))
        placed[j] = x[v] = min(max(wanted(v), low), high)


def place(journey: Journey) -> Placement:
    """Lay the journey out top to bottom: ``layers``, then an order and a column per node.

    The classic layered (Sugiyama) steps, small enough for journeys of tens of nodes: long
    edges get a bend per layer they cross, barycenter sweeps order each layer for few crossings
    (written order breaks ties), then sweeps down and up move each node to the median column of
    its neighbours above (below), keeping ``_SEPARATION`` from the next in its layer.
    """
    rows = [list(row) for row in layers(journey)]
    rank = {v: r for r, row in enumerate(rows) for v in row}
    bend_names: list[list[str]] = []
    links: list[tuple[str, str]] = []
    for i, edge in enumerate(edges(journey)):
        chain = [edge.source]
        for r in range(rank[edge.source] + 1, rank[edge.target]):
            bend = f"{_BEND}{i}:{r}"  # cannot clash with a node id
            rows[r].append(bend)
            chain.append(bend)
        chain.append(edge.target)
        links.extend(zip(chain, chain[1:], strict=False))
        bend_names.append(chain[1:-1])
    up: dict[str, list[str]] = {v: [] for row in rows for v in row}
    down: dict[str, list[str]] = {v: [] for row in rows for v in row}
    for a, b in links:
        down[a].append(b)
        up[b].append(a)

    def sweep(order: list[list[str]], downward: bool) -> list[list[str]]:
        new = [list(row) for row in order]
        span = range(1, len(new)) if downward else range(len(new) - 2, -1, -1)
        for r in span:
            ref = {v: i for i, v in enumerate(new[r - 1 if downward else r + 1])}

            def key(pair: tuple[int, str], ref: dict[str, int] = ref) -> float:
                seen = [ref[n] for n in (up if downward else down)[pair[1]] if n in ref]
                return sum(seen) / len(seen) if seen else float(pair[0])

            new[r] = [v for _, v in sorted(enumerate(new[r]), key=key)]
        return new

    best, fewest = rows, _crossings(rows, links)
    current = rows
    for i in range(_ORDER_SWEEPS):
        current = sweep(current, downward=i % 2 == 0)
        count = _crossings(current, links)
        if count < fewest:
            best, fewest = current, count

    def gap(a: str, b: str) -> float:
        return _SEPARATION[(a.startswith(_BEND), b.startswith(_BEND))]

    x: dict[str, float] = {}
    for row in best:
        at = 0.0
        for i, v in enumerate(row):
            at = at + gap(row[i - 1], v) if i else 0.0
            x[v] = at
        for v in row:
            x[v] -= at / 2
    for i in range(_POSITION_SWEEPS):
        downward = i % 2 == 0
        for row in best if downward else best[::-1]:
            _align_row(row, x, up if downward else down, gap)
    lowest = min(x.values())
    routes = [Route(edge, tuple((round(x[b] - lowest, 6), rank[edge.source] + k + 1)
                                for k, b in enumerate(bends)))
              for edge, bends in zip(edges(journey), bend_names, strict=True)]
    nodes = [v for row in best for v in row if not v.startswith(_BEND)]
    return Placement({v: round(x[v] - lowest, 6) for v in nodes}, {v: rank[v] for v in nodes},
                     routes)


# --- DOT ---------------------------------------------------------------------------------------


def dot_quote(text: str) -> str:
    r"""``text`` as a DOT quoted string: ``"`` and ``\`` escaped, line breaks as ``\n``."""
    escaped = text.replace("\\", "\\\\").replace('"', '\\"')
    return '"' + escaped.replace("\r\n", "\n").replace("\n", "\\n") + '"'


def to_dot(journey: Journey, counts: Mapping[str, Mapping[str, float]] | None = None) -> str:
    """Graphviz DOT text of the journey: one node per journey node, one edge per move.

    Each node is labelled with its id, what it does and (when ``counts`` has it) its counts;
    its shape and fill colour say its kind (``KIND_STYLES``). Render it with
    ``dot -Tsvg journey.dot -o journey.svg``.

    Args:
        journey: A validated journey.
        counts: Per node id, {what: number}, ``what`` one of ``COUNTS``; None: no counts.
    """
    counts = counts or {}
    title = f"{journey.id} v{journey.version}" + ("" if journey.enabled else " (disabled)")
    lines = [
        f"digraph {dot_quote(journey.id)} {{",
        f"  label={dot_quote(title)};",
        "  labelloc=t;",
        "  rankdir=TB;",
        '  node [fontname="Helvetica", fontsize=11];',
        '  edge [fontname="Helvetica", fontsize=10];',
    ]
    for node in journey.nodes.values():
        style = KIND_STYLES[node.kind]
        label = "\n".join(node_lines(node, counts.get(node.id)))
        lines.append(f"  {dot_quote(node.id)} [label={dot_quote(label)}, shape={style.shape}, "
                     f"style={dot_quote(style.style)}, fillcolor={dot_quote(style.fill)}];")
    for edge in edges(journey):
        attributes = f" [label={dot_quote(edge.label)}]" if edge.label else ""
        lines.append(f"  {dot_quote(edge.source)} -> {dot_quote(edge.target)}{attributes};")
    lines.append("}")
    return "\n".join(lines) + "\n"
