"""Render the benchmark harness's results: a terminal report, a JSON file, a PNG plot, README text.

Pure: no pyflink, no Kafka. The input is the JSON-serialisable results dict of ``nudgeflow
bench`` (``"version": 1``). Any list in it may be empty and any figure may be None: tables show
None as "–" and plots leave it out. matplotlib is imported only inside :func:`draw_plot`, so
importing this module (e.g. by the CLI) stays cheap.
"""

from __future__ import annotations

import json
import shutil
import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import Any

SUPPORTED_VERSION = 1
README_BEGIN = "<!-- bench:begin -->"
README_END = "<!-- bench:end -->"
MISSING = "–"

# Used when an older results file lacks the goal figures: the benchmark issue's targets.
_DEFAULT_THROUGHPUT_GOAL = 15000.0
_DEFAULT_P99_GOAL_MS = 50.0

Row = Sequence[str]


# -- number formatting ------------------------------------------------------------------------


def _num(value: float | None, digits: int = 0) -> str:
    """``value`` with thousands separators and ``digits`` decimals, or "–" when None."""
    if value is None:
        return MISSING
    return f"{value:,.{digits}f}"


def _rate(value: float | None) -> str:
    """Events/s: whole numbers, except below 100 where a decimal still carries information."""
    if value is None:
        return MISSING
    return _num(value, 0 if abs(value) >= 100 else 1)


def _ms(value: float | None) -> str:
    """Milliseconds: one decimal below 10 ms (sub-ms differences matter there), else whole."""
    if value is None:
        return MISSING
    return _num(value, 1 if abs(value) < 10 else 0)


def _percent(value: float | None, digits: int = 1) -> str:
    """A percentage that is already in percent (e.g. CPU %)."""
    return MISSING if value is None else f"{_num(value, digits)}%"


def _fraction(value: float | None) -> str:
    """A 0..1 fraction as a percentage."""
    return MISSING if value is None else _percent(value * 100)


def _yes_no(flag: bool | None) -> str:
    return MISSING if flag is None else ("yes" if flag else "no")


def _met(flag: bool | None) -> str:
    return "unknown" if flag is None else ("met" if flag else "not met")


def _duration(seconds: float | None) -> str:
    """``170.2`` -> "2 min 50 s"; under a minute keeps a decimal."""
    if seconds is None:
        return MISSING
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, rest = divmod(round(seconds), 60)
    return f"{minutes} min {rest} s"


# -- access to the results dict ---------------------------------------------------------------


def _check(results: Any) -> None:
    """Refuse input this module cannot render, saying what was expected."""
    if not isinstance(results, dict):
        raise ValueError("bench results must be a dict (the harness's JSON object), "
                         f"got {type(results).__name__}")
    version = results.get("version")
    if version != SUPPORTED_VERSION:
        raise ValueError(
            f"bench results have version {version!r}, but this report reads version "
            f"{SUPPORTED_VERSION}; re-run `nudgeflow bench` to produce current results")


def _section(results: dict, key: str) -> dict:
    """A sub-dict of the results, ``{}`` when absent or None (so lookups fall back to "–")."""
    return results.get(key) or {}


def _entries(results: dict, key: str) -> list[dict]:
    """A list of the results, ``[]`` when absent or None."""
    return list(results.get(key) or [])


def _machine_line(results: dict) -> str:
    """The machine: CPUs, CPU model, memory, OS and the Python/Java/Flink versions."""
    m = _section(results, "machine")
    return (f"{m.get('cpus') or MISSING} CPUs ({m.get('cpu_model') or MISSING}), "
            f"{_num(m.get('memory_gib'), 1)} GiB memory, {m.get('os') or MISSING}, "
            f"Python {m.get('python') or MISSING}"
            + (f" ({m['python_build']})" if m.get("python_build") else "")
            + f", Java {m.get('java') or MISSING}, "
            f"Flink {m.get('flink') or MISSING}")


def _workload_line(results: dict) -> str:
    w = _section(results, "workload")
    return (f"{_num(w.get('users'))} users, {_num(w.get('backlog_events'))} backlog events, "
            f"seed {w.get('seed', MISSING)}")


def _ceiling_line(results: dict) -> str:
    c = _section(results, "ceiling")
    return (f"{_rate(c.get('events_per_s'))} events/s ({_num(c.get('events'))} events in "
            f"{_num(c.get('seconds'), 1)} s): {c.get('what') or MISSING}")


def _goals_line(results: dict) -> str:
    g = _section(results, "goals")
    return (f"throughput {_rate(g.get('throughput_events_per_s'))} events/s: "
            f"{_met(g.get('throughput_met'))} (best {_rate(g.get('best_events_per_s'))} "
            f"events/s); p99 at 5,000 events/s ≤ {_ms(g.get('p99_ms_at_5k'))} ms: "
            f"{_met(g.get('latency_met'))} (measured {_ms(g.get('p99_ms_at_5k_measured'))} ms)"
            + _above_floor_text(g) + _sustained_text(results))


def _above_floor_text(goals: dict) -> str:
    """The goal on the cost above the domain floor, when the run measured it."""
    if "above_floor_goal_us" not in goals:
        return ""  # results of a build before the floor was part of the run
    met = goals.get("above_floor_met")
    gap = goals.get("above_floor_us")
    verdict = _met(met) if met is not None or gap is None else "not resolved"
    return (f"; cost above the domain floor < {_num(goals['above_floor_goal_us'])} µs/event: "
            f"{verdict} (measured {_num(gap, 1)} µs)")


def _sustained_text(results: dict) -> str:
    """"; highest sustained rate: 500/s at-least-once, ..." from the latency steps."""
    best: dict[str, float] = {}
    for e in _entries(results, "latency"):
        if e.get("sustained") and e.get("offered_rate") is not None:
            best[e["delivery"]] = max(best.get(e["delivery"], 0), e["offered_rate"])
    modes = dict.fromkeys(e.get("delivery") for e in _entries(results, "latency"))
    if not modes:
        return ""
    return "; highest sustained rate: " + ", ".join(
        f"{_rate(best[m])}/s {m}" if m in best else f"none tried held ({m})" for m in modes)


# -- table rows, shared by the terminal report and the README ---------------------------------

_THROUGHPUT_HEAD = ("configuration", "events/s", "of ceiling")
_LATENCY_HEAD = ("delivery", "offered/s", "achieved/s", "sustained", "p50 ms", "p95 ms",
                 "p99 ms", "max ms", "triggers", "Prometheus p50/p99 ms")
_STAGES_HEAD = ("stage", "µs/event", "share")
_RESOURCES_HEAD = ("process", "CPU s", "CPU %", "peak RSS MiB")
_SWEEP_HEAD = ("knob", "value", "events/s", "p99 ms")
_ORDER_HEAD = ("configuration", "p50 ms", "p99 ms", "triggers", "to Kafka p99 ms",
               "in the job p50 / p99 ms", "to the consumer p99 ms")
_JOURNEYS_HEAD = ("p1 at-least-once", "events/s", "change", "state B/user")


def _throughput_rows(results: dict) -> list[Row]:
    return [(t.get("label") or MISSING, _rate(t.get("events_per_s")),
             _fraction(t.get("fraction_of_ceiling"))) for t in _entries(results, "throughput")]


def _p1_drains_line(results: dict) -> str | None:
    """How the p1 figure was made (``bench.p1_median``) and the profiled drain's rate, or None."""
    p1 = next((t for t in _entries(results, "throughput") if t.get("parallelism") == 1), {})
    drains = p1.get("drains_events_per_s")
    profiled = (results.get("profiled_drain") or {}).get("events_per_s")
    if not drains and profiled is None:
        return None
    parts = []
    if drains:
        parts.append(f"p1 at-least-once is the median of {len(drains)} drains of its "
                     f"configuration, none of them profiled (the throughput drain, then the "
                     f"journeys section's drains without journeys): "
                     + ", ".join(_rate(rate) for rate in drains) + " events/s")
    if profiled is not None:
        parts.append(f"the profiled drain (py-spy and perf attached; the stage costs and the "
                     f"code split below are its) read {_rate(profiled)} events/s and is not "
                     f"counted")
    text = "; ".join(parts)
    return text[0].upper() + text[1:]


def _ceiling_row(results: dict) -> Row:
    """The ceiling as a throughput row: the yardstick the configurations are a fraction of."""
    rate = _section(results, "ceiling").get("events_per_s")
    return ("ceiling", _rate(rate), MISSING if rate is None else _fraction(1.0))


def _latency_rows(results: dict) -> list[Row]:
    return [(e.get("delivery") or MISSING, _rate(e.get("offered_rate")),
             _rate(e.get("achieved_rate")), _yes_no(e.get("sustained")), _ms(e.get("p50_ms")),
             _ms(e.get("p95_ms")), _ms(e.get("p99_ms")), _ms(e.get("max_ms")),
             _num(e.get("triggers")), _engine_side(e.get("engine_histogram")))
            for e in _entries(results, "latency")]


def _engine_side(figures: dict | None) -> str:
    """The engine's own p50/p99 of a step (its histogram, read from Prometheus), or a dash."""
    if not figures:
        return MISSING
    return f"{_ms(figures.get('p50_ms'))} / {_ms(figures.get('p99_ms'))}"


def _stage_rows(stages: dict) -> list[Row]:
    """One row per stage plus the total; share is of the total, so the big costs stand out."""
    total = stages.get("total_us_per_event")
    rows: list[Row] = []
    for name, cost in (stages.get("us_per_event") or {}).items():
        share = cost / total if cost is not None and total else None
        rows.append((name, _num(cost), _fraction(share)))
    rows.append(("total", _num(total), _fraction(1.0) if total else MISSING))
    return rows


def _other_threads(stages: dict) -> str | None:
    """One line on the other Python operator threads of the interpreter, or None."""
    others = stages.get("other_threads_us_per_event") or {}
    if not others:
        return None
    listed = ", ".join(f"{name} {_num(cost)}" for name, cost in others.items())
    return (f"Other Python operator threads, µs/event of their samples (waits included; they "
            f"share the engine's interpreter): {listed}")


def threads_line(threads: Sequence[dict] | None) -> str | None:
    """The busiest threads of a drain's JVM (``bench.thread_shares``) on one line, or None."""
    if not threads:
        return None
    parts = []
    for t in threads:
        name = t["name"] if t.get("threads", 1) == 1 else f"{t['name']} (x{t['threads']})"
        parts.append(f"{name}: on a CPU {_fraction(t['on_cpu'])}, waiting for one "
                     f"{_fraction(t['waiting_for_cpu'])}, {_num(t.get('cpu_us_per_event'))} "
                     f"µs CPU/event")
    return "; ".join(parts)


def _p1_threads(results: dict) -> str | None:
    runs = [r for r in _entries(results, "throughput") if r.get("parallelism") == 1]
    line = threads_line(runs[0].get("threads")) if runs else None
    return None if line is None else (
        "Threads of the job's JVM during the p1 drain, busiest first (the kernel's run and "
        f"run-queue times; the rest of a thread's time it slept: locks, I/O, input): {line}")


def _floor_line(results: dict) -> str | None:
    """The domain floor against the engine's CPU per event (``bench.above_floor``), or None."""
    f = results.get("floor")
    if not f:
        return None
    line = (f"Domain floor: {_num(f.get('us_per_click'), 1)} µs of CPU per click, the pure engine "
            f"(decode, features, scoring, segments, campaigns, state encoding) over "
            f"{_num(f.get('clicks'))} clicks of {_num(f.get('users'))} users of the same "
            f"generator, seed and start, in one Python loop with no Flink, the watermark moved "
            f"every {_num(f.get('watermark_every'))} clicks as in the drain"
            + (f", state kept as bytes and decoded as the job does, {_num(f['decoded_users'])} "
               f"users' decoded state kept at most, as the job does" if f.get("decoded_users")
               else "")
            + (" (one pass)" if f.get("passes") == 1
               else f" (median of {f.get('passes', MISSING)} passes)"))
    if f.get("engine_cpu_us_per_event") is None:
        return line + "; the engine's CPU per event was not measured"
    return (line + f"; the engine's threads used {_num(f['engine_cpu_us_per_event'], 1)} µs "
            f"of CPU per event in the profiled p1 drain: {_num(f.get('above_floor_us'), 1)} µs "
            f"above the floor")


_CODE_HEAD = ("code", "floor µs/click", "engine µs/event", "difference")


def code_split(floor: dict) -> list[tuple[str, float, float]]:
    """(kind of code, floor µs, engine µs) per kind, the engine's largest first.

    ``floor``: the results' floor (``bench.above_floor``) with both sides' perf figures;
    empty when either side was not sampled.
    """
    ours = (floor.get("code") or {}).get("us_per_event")
    engine = (floor.get("engine_code") or {}).get("us_per_event")
    if not ours or not engine:
        return []
    kinds = sorted(set(ours) | set(engine), key=lambda k: -engine.get(k, 0.0))
    return [(kind, ours.get(kind, 0.0), engine.get(kind, 0.0)) for kind in kinds]


def _code_rows(results: dict) -> list[Row]:
    """The floor's and the engine threads' CPU by kind of code, the difference, the totals."""
    split = code_split(results.get("floor") or {})
    if not split:
        return []
    rows = [(kind, _num(ours, 1), _num(engine, 1), _num(engine - ours, 1))
            for kind, ours, engine in split]
    totals = (sum(s[1] for s in split), sum(s[2] for s in split))
    return [*rows, ("all kinds", _num(totals[0], 1), _num(totals[1], 1),
                    _num(totals[1] - totals[0], 1))]


def _code_caption(results: dict) -> str:
    f = results.get("floor") or {}
    samples = ((f.get("code") or {}).get("samples"), (f.get("engine_code") or {}).get("samples"))
    return ("Where the cost above the floor goes, by kind of code (perf's cpu-clock samples "
            f"by shared object: {_num(samples[0])} of the floor's timed pass, "
            f"{_num(samples[1])} of the engine's threads over the profiled p1 drain's timed "
            "span; each side's CPU per click split by its shares)")


def _code_missing(results: dict) -> str | None:
    """Why the by-code table is missing, when the run tried to sample."""
    f = results.get("floor") or {}
    errors = [f"{side}: {(f.get(key) or {}).get('error')}" for side, key in
              (("floor", "code"), ("engine", "engine_code"))
              if (f.get(key) or {}).get("error")]
    return "By kind of code: unavailable (" + "; ".join(errors) + ")" if errors else None


def _resource_rows(results: dict) -> list[Row]:
    return [(r.get("name") or MISSING, _num(r.get("cpu_s"), 1), _percent(r.get("cpu_percent"), 0),
             _num(r.get("peak_rss_mib"))) for r in _entries(results, "resources")]


def _drains(build: dict) -> str:
    """How a build's figure was made: "mean of N" drains, or "one drain" (quick mode)."""
    drains = build.get("drains") or len(build.get("runs_events_per_s") or []) or 2
    return "one drain" if drains == 1 else f"mean of {drains}"


def _journeys_rows(results: dict) -> list[Row]:
    """The same drain without and with the catalog journeys: events/s and state per user."""
    section = _section(results, "journeys")
    if not section:
        return []
    names = ", ".join(section.get("journeys") or []) or MISSING
    without, with_ = section.get("without") or {}, section.get("with") or {}
    change = section.get("throughput_change")
    return [(f"campaigns only ({_drains(without)})", _rate(without.get("events_per_s")), "",
             _num(without.get("state_bytes_per_user"))),
            (f"+ journeys ({names}; {_drains(with_)})", _rate(with_.get("events_per_s")),
             _fraction(change),
             _num(with_.get("state_bytes_per_user")))]


def _order_rows(results: dict) -> list[Row]:
    """The in-order delay probe: the defaults, the reordered-input profile, its extra delay."""
    delay = _section(results, "in_order_delay")
    rows: list[Row] = []
    for key, what in (("configured", "defaults"), ("reordered", "reordered-input profile")):
        step = delay.get(key) or {}
        if step:
            split = step.get("split") or {}
            rows.append((f"{what} ({_num(step.get('bound_ms'))} ms bound)",
                         _ms(step.get("p50_ms")),
                         _ms(step.get("p99_ms")), _num(step.get("triggers")),
                         _ms(split.get("to_kafka_p99_ms")),
                         f"{_ms(split.get('in_job_p50_ms'))} / {_ms(split.get('in_job_p99_ms'))}",
                         _ms(split.get("to_consumer_p99_ms"))))
    if rows:
        rows.append(("extra delay of the profile", _ms(delay.get("extra_p50_ms")),
                     _ms(delay.get("extra_p99_ms")), MISSING, MISSING, MISSING, MISSING))
    return rows


def defaults_behind_warning(delay: dict[str, Any]) -> str:
    """What a reader is told when the defaults' run was no faster than the profile's.

    The defaults' out-of-orderness bound is the shorter (``bound_ms`` of each run), so such a
    run fell behind for another reason (the engine, or the machine's other work); the engine's
    own histogram says whether the wait was inside the job.
    """
    configured = delay.get("configured") or {}
    engine = (configured.get("engine_histogram") or {}).get("p50_ms")
    return (f"WARNING: the defaults were no faster than the reordered-input profile in this run "
            f"(p50 {_ms(configured.get('p50_ms'))} against "
            f"{_ms((delay.get('reordered') or {}).get('p50_ms'))} ms; the engine's own "
            f"histogram: {_ms(engine)} ms): their run fell behind, so this is not the defaults' "
            f"figure; run the bench again")


def _order_warning(results: dict) -> list[str]:
    """The warning line of a run whose defaults fell behind, else nothing."""
    delay = _section(results, "in_order_delay")
    return [defaults_behind_warning(delay)] if delay.get("defaults_fell_behind") else []


def _sweep_rows(results: dict) -> list[Row]:
    return [(s.get("knob") or MISSING, str(s.get("value", MISSING)), _rate(s.get("events_per_s")),
             _ms(s.get("p99_ms"))) for s in _entries(results, "sweep")]


# -- terminal report --------------------------------------------------------------------------


def _text_table(head: Row, rows: Sequence[Row], left: int = 1) -> list[str]:
    """Aligned columns, indented; the first ``left`` columns are text, the rest right-aligned."""
    widths = [max(len(str(row[i])) for row in (head, *rows)) for i in range(len(head))]

    def line(row: Row) -> str:
        cells = [str(c).ljust(w) if i < left else str(c).rjust(w)
                 for i, (c, w) in enumerate(zip(row, widths, strict=True))]
        return "  " + "  ".join(cells).rstrip()

    return [line(head), "  " + "  ".join("-" * w for w in widths), *map(line, rows)]


def _text_block(title: str, head: Row, rows: Sequence[Row], left: int = 1) -> list[str]:
    if not rows:
        return [title, "  (none)"]
    return [title, *_text_table(head, rows, left)]


def format_report(results: dict) -> str:
    """A multi-section plain-text report of ``results`` for the terminal.

    Sections: header (mode, duration, machine), ceiling, throughput, latency, stage costs,
    resources, knob sweep, goals and the bottleneck paragraph. None figures show as "–".

    Raises:
        ValueError: ``results`` is not a version-1 results dict.
    """
    _check(results)
    lines = [
        f"nudgeflow bench ({results.get('mode') or MISSING}), "
        f"{_duration(results.get('duration_s'))}, started {results.get('started_at') or MISSING}",
        f"machine: {_machine_line(results)}",
        f"workload: {_workload_line(results)}",
        "",
        f"Ceiling: {_ceiling_line(results)}",
        "",
        *_text_block("Throughput", _THROUGHPUT_HEAD, _throughput_rows(results)),
        *([f"  {drains}"] if (drains := _p1_drains_line(results)) else []),
        "",
        *_text_block("Latency (click to trigger)", _LATENCY_HEAD, _latency_rows(results)),
        *(_text_block("In-order application (click to trigger, at-least-once, "
                      f"{_num((results.get('in_order_delay') or {}).get('rate'))}/s)",
                      _ORDER_HEAD, _order_rows(results)) if _order_rows(results) else []),
        *(f"  {line}" for line in _order_warning(results)),
        *(_text_block("Journeys (the same backlog with the catalog's journeys loaded)",
                      _JOURNEYS_HEAD, _journeys_rows(results))
          if _journeys_rows(results) else []),
        "",
    ]
    stages = results.get("stages")
    if stages:
        lines += [f"Stage costs ({stages.get('source') or 'source unknown'})",
                  *_text_table(_STAGES_HEAD, _stage_rows(stages))]
        if others := _other_threads(stages):
            lines += [f"  {others}"]
        if threads := _p1_threads(results):
            lines += [f"  {threads}"]
        if floor := _floor_line(results):
            lines += [f"  {floor}"]
        if code := _code_rows(results):
            lines += [_code_caption(results), *_text_table(_CODE_HEAD, code)]
        elif missing := _code_missing(results):
            lines += [f"  {missing}"]
    else:
        reason = results.get("stages_error") or "no reason given"
        lines += ["Stage costs", f"  unavailable: {reason}"]
    lines += [
        "",
        *_text_block("Resources (whole run)", _RESOURCES_HEAD, _resource_rows(results)),
        "",
        *_text_block("Knob sweep", _SWEEP_HEAD, _sweep_rows(results), left=2),
        "",
        f"Goals: {_goals_line(results)}",
        "",
        "Bottleneck:",
        textwrap.fill(results.get("bottleneck") or MISSING, width=100, initial_indent="  ",
                      subsequent_indent="  "),
    ]
    return "\n".join(lines) + "\n"


# -- JSON -------------------------------------------------------------------------------------


def write_json(results: dict, path: Path) -> None:
    """Write ``results`` to ``path`` as indented JSON, creating the parent directories.

    Raises:
        TypeError: ``results`` holds a value JSON cannot represent.
    """
    try:
        # serialise before opening the file, so a bad value leaves no half-written file behind
        text = json.dumps(results, indent=2, ensure_ascii=False)
    except TypeError as exc:
        raise TypeError(f"bench results cannot be written as JSON: {exc}") from exc
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text + "\n", encoding="utf-8")


# -- plot -------------------------------------------------------------------------------------


# a tick formatter spec (matplotlib turns a format string into a StrMethodFormatter)
_THOUSANDS = "{x:,.0f}"


def _bars(results: dict) -> list[tuple[str, float, str]]:
    """(label, events/s, colour) of the left panel, top to bottom; None figures left out."""
    ceiling = _section(results, "ceiling").get("events_per_s")
    bars = [("ceiling", ceiling, "0.55")]
    bars += [(t.get("label") or "?", t.get("events_per_s"), "tab:blue")
             for t in _entries(results, "throughput")]
    bars += [(f"{s.get('knob')}={s.get('value')}", s.get("events_per_s"), "tab:orange")
             for s in _entries(results, "sweep")]
    return [(label, value, colour) for label, value, colour in bars if value is not None]


def _draw_throughput(ax: Any, results: dict) -> None:
    goal = _section(results, "goals").get("throughput_events_per_s") or _DEFAULT_THROUGHPUT_GOAL
    bars = _bars(results)
    values = [value for _, value, _ in bars]
    positions = range(len(bars))
    ax.barh(positions, values, color=[colour for *_, colour in bars])
    ax.set_yticks(positions, [label for label, *_ in bars], fontsize=8)
    ax.invert_yaxis()  # ceiling on top, in the order the harness measured
    for y, value in zip(positions, values, strict=True):
        ax.text(value, y, f" {value:,.0f}", va="center", fontsize=7)
    # log scale only when linear would squash the small bars to nothing
    log = bool(values) and min(values) > 0 and max(values) / min(values) > 50
    if log:
        ax.set_xscale("log")
    # the goal is always drawn: the distance to it is the point of the chart
    ax.axvline(goal, color="tab:red", linestyle="--", linewidth=1,
               label=f"goal {goal:,.0f} events/s")
    top = max([*values, goal])
    if log:
        ax.set_xlim(min(values) / 2, top * 3)
    else:
        ax.set_xlim(0, top * 1.15)  # room for the value labels and the goal line
    if not bars:
        ax.text(0.5, 0.5, "no throughput figures", transform=ax.transAxes, ha="center")
    ax.xaxis.set_major_formatter(_THOUSANDS)
    ax.set_xlabel("events/s")
    ax.set_title("Throughput", fontsize=10)
    ax.legend(loc="lower right", fontsize=8)


_PERCENTILES = (("p50_ms", "p50", "tab:green"), ("p95_ms", "p95", "tab:orange"),
                ("p99_ms", "p99", "tab:red"))
# style and marker both per delivery mode: a mode measured at one rate has no line to tell by
_DELIVERY_STYLES = (("-", "o"), ("--", "s"), (":", "^"), ("-.", "D"))


def _draw_latency(ax: Any, results: dict) -> None:
    goal = _section(results, "goals").get("p99_ms_at_5k") or _DEFAULT_P99_GOAL_MS
    by_delivery: dict[str, list[dict]] = {}
    for entry in _entries(results, "latency"):
        by_delivery.setdefault(entry.get("delivery") or "?", []).append(entry)
    plotted = False
    behind_x: list[float] = []
    behind_y: list[float] = []
    for i, (delivery, entries) in enumerate(by_delivery.items()):
        entries = sorted((e for e in entries if e.get("offered_rate") is not None),
                         key=lambda e: e["offered_rate"])
        style, marker = _DELIVERY_STYLES[i % len(_DELIVERY_STYLES)]
        for key, name, colour in _PERCENTILES:
            # a log axis cannot show 0 ms, and None means no trigger arrived: both left out
            points = [(e["offered_rate"], e[key]) for e in entries
                      if e.get(key) is not None and e[key] > 0]
            if not points:
                continue
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, linestyle=style, marker=marker, markersize=5, color=colour,
                    label=f"{delivery} {name}")
            plotted = True
        for e in entries:
            if e.get("sustained") is False and (e.get("p99_ms") or 0) > 0:
                behind_x.append(e["offered_rate"])
                behind_y.append(e["p99_ms"])
    if behind_x:
        # the job fell behind at these rates: their latencies grow with the run, not the load
        ax.scatter(behind_x, behind_y, marker="x", s=60, color="black", zorder=3,
                   label="fell behind")
    ax.axhline(goal, color="tab:red", linestyle="--", linewidth=1, label=f"goal {goal:,.0f} ms")
    ax.set_yscale("log")
    if plotted:
        ax.xaxis.set_major_formatter(_THOUSANDS)  # not on the empty 0..1 axis: it would show 0, 1
    else:
        ax.text(0.5, 0.5, "no latency figures", transform=ax.transAxes, ha="center")
    ax.set_xlabel("offered rate (events/s)")
    ax.set_ylabel("click to trigger (ms)")
    ax.set_title("Latency", fontsize=10)
    ax.legend(fontsize=7)


def draw_plot(results: dict, path: Path) -> None:
    """Save a two-panel PNG of ``results`` to ``path``, creating the parent directories.

    Left: events/s of the ceiling, each configuration and each sweep point, with the throughput
    goal. Right: p50/p95/p99 latency against offered rate, a line style per delivery mode, with
    the latency goal. None figures are left out.

    Raises:
        ValueError: ``results`` is not a version-1 results dict.
    """
    _check(results)
    import matplotlib

    matplotlib.use("Agg")  # no display on the benchmark machine or in CI
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 5))
    try:
        _draw_throughput(left, results)
        _draw_latency(right, results)
        cpus = _section(results, "machine").get("cpus") or MISSING
        fig.suptitle(f"nudgeflow bench ({results.get('mode') or MISSING}) on {cpus} CPUs")
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)  # pyplot keeps every open figure alive otherwise


# -- README -----------------------------------------------------------------------------------


def _md_cell(text: str) -> str:
    return str(text).replace("|", "\\|")


def _md_table(head: Row, rows: Sequence[Row], left: int = 1) -> list[str]:
    """A Markdown table; the first ``left`` columns left-aligned, the figures right-aligned."""
    rule = ["---" if i < left else "---:" for i in range(len(head))]
    return ["| " + " | ".join(_md_cell(c) for c in row) + " |"
            for row in (head, rule, *rows)]


def readme_section(results: dict) -> str:
    """The README's benchmark block: machine, date, command, tables and goals, between markers.

    Starts with ``<!-- bench:begin -->`` and ends with ``<!-- bench:end -->`` (no newline after
    it), so :func:`replace_readme_section` can swap it for a newer one. Tables whose list is
    empty are left out.

    Raises:
        ValueError: ``results`` is not a version-1 results dict.
    """
    _check(results)
    started = results.get("started_at") or ""
    date = started[:10] or MISSING  # the day is what a reader needs; the ISO time is in the JSON
    lines = [
        README_BEGIN,
        f"Measured on {_machine_line(results)}, on {date} ({results.get('mode') or MISSING} "
        f"mode, {_duration(results.get('duration_s'))}; workload: {_workload_line(results)}). "
        f"Reproduce with `{results.get('command') or 'nudgeflow bench'}`.",
        "",
        "**Throughput** (the ceiling: "
        f"{_section(results, 'ceiling').get('what') or 'no processing'}):",
        "",
        *_md_table(_THROUGHPUT_HEAD, [_ceiling_row(results), *_throughput_rows(results)]),
    ]
    if drains := _p1_drains_line(results):
        lines += ["", drains + "."]
    if latency := _latency_rows(results):
        lines += ["", "**Latency** (click to trigger):", "", *_md_table(_LATENCY_HEAD, latency)]
    if order := _order_rows(results):
        delay = _section(results, "in_order_delay")
        lines += ["", f"**In-order application** (click to trigger, at-least-once, "
                  f"{_num(delay.get('rate'))}/s, the last of its steps; the reordered-input "
                  f"profile is `{delay.get('profile') or 'jobs/profiles/reordered-input.yaml'}`):",
                  "",
                  *_md_table(_ORDER_HEAD, order)]
        for line in _order_warning(results):
            lines += ["", f"**{line}**"]
    if journeys := _journeys_rows(results):
        lines += ["", "**Journeys** (the same backlog with the catalog's journeys loaded):", "",
                  *_md_table(_JOURNEYS_HEAD, journeys)]
    stages = results.get("stages")
    if stages:
        lines += ["", f"**Stage costs** ({stages.get('source') or 'source unknown'}):", "",
                  *_md_table(_STAGES_HEAD, _stage_rows(stages))]
        if others := _other_threads(stages):
            lines += ["", others + "."]
        if threads := _p1_threads(results):
            lines += ["", threads + "."]
        if floor := _floor_line(results):
            lines += ["", floor + "."]
        if code := _code_rows(results):
            lines += ["", f"**{_code_caption(results)}:**", "", *_md_table(_CODE_HEAD, code)]
        elif missing := _code_missing(results):
            lines += ["", missing + "."]
    if resources := _resource_rows(results):
        lines += ["", "**Resources** (whole run):", "", *_md_table(_RESOURCES_HEAD, resources)]
    if sweep := _sweep_rows(results):
        lines += ["", "**Knob sweep:**", "", *_md_table(_SWEEP_HEAD, sweep, left=2)]
    lines += ["", f"**Goals:** {_goals_line(results)}.", README_END]
    return "\n".join(lines)


def replace_readme_section(readme_text: str, section: str) -> str:
    """``readme_text`` with its marker block (markers included) replaced by ``section``.

    Raises:
        ValueError: the README lacks a single begin/end marker pair in that order, or
            ``section`` is not itself a marker block (it would lose the markers for next time).
    """
    if not (section.startswith(README_BEGIN) and section.rstrip().endswith(README_END)):
        raise ValueError(f"the new section must start with {README_BEGIN} and end with "
                         f"{README_END}; build it with readme_section()")
    for marker in (README_BEGIN, README_END):
        count = readme_text.count(marker)
        if count != 1:
            found = "no" if count == 0 else f"{count}"
            raise ValueError(
                f"README has {found} {marker} marker line(s), expected exactly one: put "
                f"{README_BEGIN} and {README_END} on their own lines where the benchmark "
                "results belong")
    begin = readme_text.index(README_BEGIN)
    end = readme_text.index(README_END)
    if end < begin:
        raise ValueError(f"README has {README_END} before {README_BEGIN}; swap them")
    return readme_text[:begin] + section + readme_text[end + len(README_END):]


#: the files next to the updated page that hold the same run (its section links them)
DOCS_JSON = "bench-results.json"
DOCS_PLOT = "bench-results.png"


def update_docs(page: Path, results: dict, plot: Path | None) -> None:
    """Put a run on ``page``: its results section, and its JSON and plot next to it.

    The section, ``bench-results.json`` and ``bench-results.png`` (beside the page) always
    describe the same run: a section replaced alone would sit under the plot of an older one.
    ``plot``: the run's PNG (``draw_plot``); None or missing leaves no plot of an older run.

    Raises:
        ValueError: the page lacks its marker pair (``replace_readme_section``).
    """
    text = replace_readme_section(page.read_text(), readme_section(results))
    write_json(results, page.parent / DOCS_JSON)
    old_plot = page.parent / DOCS_PLOT
    if plot is not None and plot.is_file():
        shutil.copyfile(plot, old_plot)
    else:
        old_plot.unlink(missing_ok=True)
    page.write_text(text)

