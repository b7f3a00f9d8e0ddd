"""``nudgeflow journeys show FILE``: a journey as a picture (PNG) and as Graphviz DOT text.

Inputs: one journey YAML file (``kind: journey``), validated as ``nudgeflow defs validate``
does; optionally the pages of Flink's Prometheus reporter (``--metrics URL``), whose per-node
``journey_<what>`` counters are summed over subtasks and shown on the nodes. Outputs: the DOT
text (stdout or ``--dot``) and a PNG drawn with matplotlib (no Graphviz binary needed), written
to ``--out`` or ``<journey id>.png``. State: none.

The graph itself (labels, edges, layers, layout, DOT) is ``udfs.journeys.graph`` (pure); this
module reads the file and the metrics, parses the Prometheus text (``parse_node_counts``, pure)
and draws.
"""

from __future__ import annotations

import http.client
import math
import re
import sys
import textwrap
import urllib.request
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from udfs.catalog.files import load_catalog, validate_files
from udfs.definitions.diagnostics import InvalidDefinitions, format_errors
from udfs.journeys.grammar import Journey
from udfs.journeys.graph import COUNTS, KIND_STYLES, describe_counts, describe_node, place, to_dot

#: what the CLI's --metrics example and errors point at (the first port of the reporter's range)
EXAMPLE_METRICS_URL = "http://127.0.0.1:9249/metrics"
METRICS_TIMEOUT_S = 5.0
#: a line of Prometheus' text format: name{labels} value [timestamp]
_PROM_LINE = re.compile(r"^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<labels>.*)\}\s+(?P<value>\S+)")
_PROM_LABEL = re.compile(r'([A-Za-z_][A-Za-z0-9_]*)="((?:[^"\\]|\\.)*)"')
_PROM_ESCAPES = {"\\\\": "\\", '\\"': '"', "\\n": "\n"}


class JourneyShowError(RuntimeError):
    """The journey cannot be shown; the message says what, where and what to do."""


# --- the journey ---------------------------------------------------------------------------------


def load_journey(file: str | Path) -> Journey:
    """The one journey of a YAML file, validated as ``nudgeflow defs validate`` does.

    It may name the segments of the shipped catalog.

    Raises:
        InvalidDefinitions: The file does not validate; ``.errors`` has every error.
        JourneyShowError: The path is not a file, or the file holds no journey.
    """
    path = Path(file)
    if path.is_dir():
        raise JourneyShowError(f"{path} is a directory; give one journey file, e.g. "
                               "udfs/catalog/journeys/cart-abandonment-chain.yaml")
    known = [s.id for s in load_catalog().segments]
    found, errors = validate_files([path], known)
    if errors:
        raise InvalidDefinitions(errors)
    if not found.journeys:
        held = ", ".join(f"{d.id} ({type(d).__name__.lower()})" for d in found.all()) or \
            "nothing"
        raise JourneyShowError(f"{path} holds {held}, not a journey; `journeys show` draws "
                               "documents with `kind: journey` (see udfs/journeys/JOURNEYS.md)")
    return found.journeys[0]


# --- the counters --------------------------------------------------------------------------------


def _label_form(value: str) -> str:
    """A label value as Flink's Prometheus reporter writes it by default (``-`` becomes ``_``)."""
    return re.sub(r"[^A-Za-z0-9:_]", "_", value)


def _labels(text: str) -> dict[str, str]:
    return {name: re.sub(r"\\[\\\"n]", lambda m: _PROM_ESCAPES[m.group(0)], value)
            for name, value in _PROM_LABEL.findall(text)}


def parse_node_counts(metrics_text: str, journey_id: str, node_ids: Iterable[str]
                      ) -> dict[str, dict[str, float]]:
    """The journey's per-node counters in a Prometheus text page, summed over other labels.

    A counter is a line whose metric name ends with ``journey_<what>`` (``what`` one of
    ``udfs.journeys.graph.COUNTS``) and whose labels include ``journey="<journey_id>"`` and
    ``node="<node id>"``, e.g. ``..._journey_node_journey_sent{journey="j",node="email",
    subtask_index="0",...} 12.0``; lines of other subtasks (labels) are added up. Label values
    also match as the reporter rewrites them by default (``cart_abandonment_chain``). Counters of
    nodes not in ``node_ids`` (an older version's) and values that are not finite are left out.

    Returns:
        Per node id, {what: total}; nodes without counters are absent.
    """
    nodes = list(node_ids)
    by_form: dict[str, list[str]] = {}
    for node_id in nodes:
        by_form.setdefault(_label_form(node_id), []).append(node_id)
    counts: dict[str, dict[str, float]] = {}
    for line in metrics_text.splitlines():
        match = _PROM_LINE.match(line.strip())
        if match is None:
            continue  # comments (# HELP, # TYPE), blank lines, metrics without labels
        what = next((w for w in COUNTS if match["name"].endswith(f"journey_{w}")), None)
        if what is None:
            continue
        labels = _labels(match["labels"])
        journey, node = labels.get("journey"), labels.get("node")
        if journey is None or node is None or (
                journey != journey_id and _label_form(journey) != _label_form(journey_id)):
            continue
        same = [node] if node in nodes else by_form.get(_label_form(node), [])
        try:
            value = float(match["value"])
        except ValueError:
            continue
        if len(same) != 1 or not math.isfinite(value):
            continue
        per_node = counts.setdefault(same[0], {})
        per_node[what] = per_node.get(what, 0.0) + value
    return counts


def read_metrics(url: str, timeout_s: float = METRICS_TIMEOUT_S) -> str:
    """The text of a Prometheus reporter's page.

    Raises:
        JourneyShowError: The URL is not http(s), or the page cannot be read.
    """
    if urlparse(url).scheme not in ("http", "https"):
        raise JourneyShowError(f"--metrics {url!r} is not an http(s) URL; give a Prometheus "
                               f"reporter's page, e.g. {EXAMPLE_METRICS_URL}")
    try:
        # the scheme is checked above: no file:// or custom schemes
        with urllib.request.urlopen(url, timeout=timeout_s) as page:  # noqa: S310
            text: str = page.read().decode("utf-8", "replace")
            return text
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = getattr(exc, "reason", None) or exc
        raise JourneyShowError(
            f"cannot read the metrics at {url} ({reason}); is the job running with the "
            "Prometheus reporter (`nudgeflow run` sets it up, on the first free port of "
            "9249-9259)? Leave out --metrics to draw the journey without counts") from exc


def _merge(pages: Sequence[Mapping[str, Mapping[str, float]]]) -> dict[str, dict[str, float]]:
    """Counts of several pages (TaskManagers) added up."""
    total: dict[str, dict[str, float]] = {}
    for page in pages:
        for node_id, per_node in page.items():
            into = total.setdefault(node_id, {})
            for what, value in per_node.items():
                into[what] = into.get(what, 0.0) + value
    return total


# --- the picture ---------------------------------------------------------------------------------

_DPI = 110
_ID_SIZE = 10.0  # points
_TEXT_SIZE = 9.0
_WRAP = 40  # characters per line of a node's text
_PAD = 0.1  # inches inside a box
_GAP_X, _GAP_Y = 0.45, 0.6  # inches between boxes
_MARGIN = 0.3
_LINE = 1.3  # line height, in font sizes
_EDGE_COLOUR = "#444444"
_BOW = 1.2  # how far apart two edges between the same nodes bow (matplotlib's arc3 rad)
_COUNT_COLOUR = "#a01c1c"
_BOX_SHAPES = {"entry": ("round,pad=0,rounding_size=0.2", "-", 1.0),
               "send": ("round,pad=0,rounding_size=0.08", "-", 1.0),
               "sync_audience": ("round,pad=0,rounding_size=0.08", "-", 1.0),
               "wait": ("round,pad=0,rounding_size=0.08", "--", 1.0),
               "condition": ("square,pad=0", "-", 1.0),
               "split": ("square,pad=0", "-", 1.0),
               "exit": ("round,pad=0,rounding_size=0.2", "-", 2.0)}


def _wrap(text: str, width: int) -> list[str]:
    """Lines of at most ``width`` characters, never breaking an id at its hyphens."""
    return textwrap.wrap(text, width, break_on_hyphens=False, break_long_words=False)


def _box_lines(journey: Journey, node_id: str, counts: Mapping[str, Mapping[str, float]]
               ) -> list[tuple[str, float, str, str]]:
    """(text, size, weight, colour) of each line in a node's box."""
    node = journey.nodes[node_id]
    lines = [(node_id, _ID_SIZE, "bold", "black")]
    for line in describe_node(node):
        lines += [(part, _TEXT_SIZE, "normal", "black") for part in _wrap(line, _WRAP)]
    shown = describe_counts(counts.get(node_id))
    lines += [(part, _TEXT_SIZE, "bold", _COUNT_COLOUR) for part in _wrap(shown, _WRAP)]
    return lines


def draw_png(journey: Journey, path: Path,
             counts: Mapping[str, Mapping[str, float]] | None = None, note: str = "") -> None:
    """Draw the journey top to bottom and save it as a PNG at ``path`` (parents created).

    One box per node, coloured by kind (``udfs.journeys.graph.KIND_STYLES``) and laid out by
    ``udfs.journeys.graph.place``; arrows with their edge labels; the title is the journey's id
    and version, under it its description, its goal and ``note``; a legend of the kinds.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display on servers or in CI
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_agg import RendererAgg
    from matplotlib.font_manager import FontProperties
    from matplotlib.patches import FancyArrowPatch, FancyBboxPatch, Patch

    counts = counts or {}
    placement = place(journey)
    measure = RendererAgg(10, 10, 72)  # at 72 dpi, text sizes come out in points

    def width_in(text: str, size: float, weight: str = "normal") -> float:
        width, _, _ = measure.get_text_width_height_descent(
            text, FontProperties(size=size, weight=weight), ismath=False)
        return float(width) / 72

    lines = {v: _box_lines(journey, v, counts) for v in placement.x}
    size = {v: (max(width_in(t, s, w) for t, s, w, _ in rows) + 2 * _PAD,
                sum(s * _LINE for _, s, _, _ in rows) / 72 + 2 * _PAD)
            for v, rows in lines.items()}
    box_w = max(w for w, _ in size.values())
    box_h = max(h for _, h in size.values())
    pitch_x, pitch_y = box_w + _GAP_X, box_h + _GAP_Y
    rows = max(placement.layer.values()) + 1

    header = [(f"{journey.id} v{journey.version}" + ("" if journey.enabled else " (disabled)"),
               14.0, "bold", "black")]
    drawing_w = box_w + placement.width * pitch_x
    wrap_at = max(40, int(drawing_w * 72 / (_TEXT_SIZE * 0.55)))
    subtitle = [journey.description]
    if journey.goal is not None:
        subtitle.append(f"goal: {journey.goal.label} ends an instance as converted, wherever "
                        "it is")
    if note:
        subtitle.append(note)
    header += [(part, _TEXT_SIZE, "normal", "#444444")
               for line in subtitle for part in _wrap(line, wrap_at)]
    header_h = sum(s * _LINE for _, s, _, _ in header) / 72 + 0.2
    legend_h = 0.5
    fig_w = max(drawing_w, *(width_in(t, s, w) for t, s, w, _ in header), 5.5) + 2 * _MARGIN
    fig_h = _MARGIN + header_h + rows * pitch_y - _GAP_Y + legend_h + _MARGIN
    left = (fig_w - drawing_w) / 2 + box_w / 2

    def at(x: float, layer: int) -> tuple[float, float]:
        return left + x * pitch_x, fig_h - _MARGIN - header_h - box_h / 2 - layer * pitch_y

    fig = plt.figure(figsize=(fig_w, fig_h))
    try:
        ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
        ax.set_xlim(0, fig_w)
        ax.set_ylim(0, fig_h)
        ax.axis("off")
        y = fig_h - _MARGIN
        for text, font_pt, weight, colour in header:
            ax.text(fig_w / 2, y, text, ha="center", va="top", fontsize=font_pt,
                    fontweight=weight, color=colour, parse_math=False)
            y -= font_pt * _LINE / 72
        boxes: dict[str, Any] = {}
        for v, (w, h) in size.items():
            cx, cy = at(placement.x[v], placement.layer[v])
            kind = journey.nodes[v].kind
            shape, line_style, line_width = _BOX_SHAPES[kind]
            box = FancyBboxPatch((cx - w / 2, cy - h / 2), w, h, boxstyle=shape,
                                 facecolor=KIND_STYLES[kind].fill, edgecolor="#555555",
                                 linestyle=line_style, linewidth=line_width, zorder=2)
            ax.add_patch(box)
            boxes[v] = box
            y = cy + h / 2 - _PAD
            for text, font_pt, weight, colour in lines[v]:
                ax.text(cx, y, text, ha="center", va="top", fontsize=font_pt, fontweight=weight,
                        color=colour, zorder=3, parse_math=False)
                y -= font_pt * _LINE / 72
        # edges between the same two nodes (an until wait whose both branches go to one
        # node) bow out to either side instead of lying on top of each other
        twins: dict[tuple[str, str], int] = {}
        for route in placement.routes:
            pair = (route.edge.source, route.edge.target)
            twins[pair] = twins.get(pair, 0) + 1
        seen: dict[tuple[str, str], int] = {}
        for route in placement.routes:
            source, target = pair = route.edge.source, route.edge.target
            points = [at(placement.x[source], placement.layer[source]),
                      *(at(x, layer) for x, layer in route.bends),
                      at(placement.x[target], placement.layer[target])]
            last = len(points) - 2
            seen[pair] = seen.get(pair, 0) + 1
            bow = (seen[pair] - 1 - (twins[pair] - 1) / 2) * _BOW if not route.bends else 0.0
            for k in range(last + 1):
                ax.add_patch(FancyArrowPatch(
                    points[k], points[k + 1], arrowstyle="-|>" if k == last else "-",
                    connectionstyle=f"arc3,rad={bow}", mutation_scale=12, color=_EDGE_COLOUR,
                    linewidth=1.1, zorder=1, patchA=boxes[source] if k == 0 else None,
                    patchB=boxes[target] if k == last else None, shrinkA=0,
                    shrinkB=1 if k == last else 0))
            if route.edge.label:
                (x0, y0), (x1, y1) = points[0], points[1]
                below = y0 - size[source][1] / 2
                above = y1 + (size[target][1] if last == 0 else box_h) / 2
                t = (y0 - (below + above) / 2) / (y0 - y1)
                # on the arc: the straight line plus 2t(1-t) times the control point's offset
                # (matplotlib's arc3 puts it at rad * (dy, -dx) from the middle)
                x_label = x0 + (x1 - x0) * t + 2 * t * (1 - t) * bow * (y1 - y0)
                y_label = y0 + (y1 - y0) * t - 2 * t * (1 - t) * bow * (x1 - x0)
                ax.text(x_label, y_label, route.edge.label, ha="center", va="center",
                        fontsize=8, fontstyle="italic", color="#222222", zorder=4,
                        parse_math=False,
                        bbox={"boxstyle": "round,pad=0.15", "facecolor": "white",
                              "edgecolor": "#bbbbbb", "linewidth": 0.6})
        kinds = [k for k in KIND_STYLES if any(n.kind == k for n in journey.nodes.values())]
        ax.legend(handles=[Patch(facecolor=KIND_STYLES[k].fill, edgecolor="#555555",
                                 label=k.replace("_", " ")) for k in kinds],
                  loc="lower center", bbox_to_anchor=(0.5, _MARGIN / 2 / fig_h),
                  ncol=len(kinds), frameon=False, fontsize=8, handlelength=1.2,
                  columnspacing=1.2)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=_DPI)
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive otherwise


# --- the command ---------------------------------------------------------------------------------


def show(file: str, out: str | None = None, dot: str | None = None,
         metrics: Sequence[str] = (), say: Callable[[str], None] | None = None) -> int:
    """``nudgeflow journeys show FILE``: DOT text to stdout (or ``dot``), a PNG to ``out``.

    ``out`` defaults to ``<journey id>.png`` in the current directory. With ``metrics`` (the
    pages of one or more Prometheus reporters: one per TaskManager), the journey's per-node
    counters are added up and shown on the nodes. Notes (where files went) go to ``say``,
    stderr by default, so the DOT text alone goes to stdout.

    Returns:
        0, or 1 when the file does not validate (every error is printed to stderr).

    Raises:
        JourneyShowError: Not a journey file, metrics that cannot be read, a file that cannot be
            written.
    """
    def to_stderr(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    note = say or to_stderr
    try:
        journey = load_journey(file)
    except InvalidDefinitions as exc:
        to_stderr(f"{format_errors(exc.errors)}\n{len(exc.errors)} error(s) in {file}")
        return 1
    counts: dict[str, dict[str, float]] | None = None
    if metrics:
        counts = _merge([parse_node_counts(read_metrics(url), journey.id, journey.nodes)
                         for url in metrics])
        if counts:
            note(f"counts of {len(counts)} node(s) of {journey.id} from {', '.join(metrics)}")
        else:
            note(f"no journey counters of {journey.id} at {', '.join(metrics)} (counters appear "
                 "once an instance moves; is the journey published and the job running?); "
                 "drawing it without counts")
    text = to_dot(journey, counts)
    png = Path(out) if out else Path.cwd() / f"{journey.id}.png"
    source = f"counts from {', '.join(metrics)}" if counts else ""
    try:
        if dot:
            Path(dot).write_text(text, encoding="utf-8")
            note(f"wrote the DOT text to {dot} (render it with: dot -Tsvg {dot} -o "
                 f"{Path(dot).with_suffix('.svg')})")
        else:
            print(text, end="", flush=True)
        draw_png(journey, png, counts, source)
    except OSError as exc:
        raise JourneyShowError(f"cannot write {exc.filename or png}: {exc.strerror or exc}; "
                               "choose another path with --out / --dot") from exc
    note(f"wrote the picture of {journey.id} v{journey.version} to {png} "
         f"({png.stat().st_size:,} bytes)")
    return 0
