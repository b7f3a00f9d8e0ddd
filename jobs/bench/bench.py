"""``nudgeflow bench``: throughput, latency, cost per stage and resources of the whole job.

Every run starts from a known state (fresh topics, consumer groups and Redis keys of its own on
the local stack), loads a seeded generated workload into Kafka and measures:

1. **ceiling**: the same clicks through the job's Kafka source and sink with no processing
   (``jobs.bench.ceiling_job``), events/s;
2. **throughput**: the job draining the pre-loaded backlog from earliest until caught up, at
   parallelism 1 and 2 (at-least-once), events/s from 5% of the backlog to all of it, with no
   profiler attached; the p1 figure is the median of every p1 drain of the run (``p1_median``:
   the throughput drain and the journeys section's drains without journeys);
3. **cost per stage**: py-spy samples of the engine's Python operator thread during a p1 drain
   of their own (its rate is reported, not counted: the profilers take CPU), sorted into
   decode, engine, scoring, arbitration, sinks, state and Flink, in µs per event; the other
   Python operator threads of the interpreter (membership writer, campaign statistics) are
   told apart by thread id and reported on their own; the domain floor over the backlog's
   whole workload next to the engine threads' CPU per event, and both split by kind of code
   from perf samples (``CodeProfile``: Python, extension modules, JVM, kernel, libc);
4. **latency**: clicks sent at fixed rates (the highest the job sustained, 1k, 5k, 10k/s) while
   a consumer reads the P1 trigger topic and segment-changes (read committed); event time of the
   cause -> trigger visible, p50/p95/p99/max, at-least-once and exactly-once;
5. **resources**: CPU and peak memory (VmHWM) of the job's JVM (which embeds Python), the job
   client, Kafka, Cassandra, Redis and this process (generator and consumers);
6. **knob sweep** (full mode): one knob at a time against the baseline.

It prints the report, writes ``results.json`` and ``results.png`` under ``--out`` and, with
``--update-docs``, the results section of docs/performance.md with the run's JSON and plot
beside it (``bench-results.json``, ``bench-results.png``). The figures are the product's;
the report (``jobs.bench.report``) names the bottleneck.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import itertools
import json
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: what the issue asks of the job on 2 cores
GOAL_EVENTS_PER_S = 15_000
GOAL_P99_MS_AT_5K = 50.0
#: what issue 13 asks of the job's cost above the pure domain code, µs per event
GOAL_ABOVE_FLOOR_US = 30.0
#: Flink's ``pipeline.auto-watermark-interval`` (the job keeps the default): in a drain the
#: watermark moves once per interval, so the domain floor moves it every ``rate x interval``
#: clicks, as the drain it stands next to did
WATERMARK_INTERVAL_S = 0.2
#: the domain floor runs over the backlog's own workload (every click, every user): a sample
#: is not the same work. 60,000 clicks of 6,000 users (the 10 clicks a user of a 300,000-click
#: backlog of 30,000) fired a third fewer timers per click and cost 138 µs an input against 175
#: for the whole workload (2026-12-05, watermark every 479 clicks). Above this many clicks the
#: floor times one pass, not three (a pass over 500,000 takes about two minutes), and its
#: untimed warm-up plays only this many records
FLOOR_ONE_PASS_CLICKS = 60_000
#: offered rates of the latency ladder (the highest sustained rate is added per run)
LADDER_RATES = (1_000, 5_000, 10_000)


@dataclasses.dataclass(frozen=True)
class SweepPoint:
    """One knob setting of the sweep: its name, value and the job flags that set it."""

    knob: str
    value: str
    flags: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class Plan:
    """The sizes of a benchmark run."""

    mode: str
    users: int
    backlog: int
    step_s: float  # seconds of sending per latency step
    profile_s: float  # seconds of py-spy sampling during the profiled p1 drain
    #: the journeys section's drains: ABBA, or AB where the run is only a smoke check
    journey_order: tuple[str, ...] = ("without", "with", "with", "without")
    sweep_backlog: int = 0
    sweep: tuple[SweepPoint, ...] = ()


SWEEP = (
    SweepPoint("baseline", "defaults", ()),
    SweepPoint("execution_mode", "process", ("--execution-mode", "process")),
    SweepPoint("execution_mode", "process, parallelism 2",
               ("--execution-mode", "process", "--parallelism", "2")),
    SweepPoint("bundle_size", "100", ("--bundle-size", "100")),
    SweepPoint("bundle_size", "10000", ("--bundle-size", "10000")),
    SweepPoint("bundle_time_ms", "5", ("--bundle-time-ms", "5")),
    SweepPoint("buffer_timeout_ms", "5", ("--buffer-timeout-ms", "5")),
    SweepPoint("state_backend", "rocksdb", ("--state-backend", "rocksdb")),
    SweepPoint("checkpoint_interval_ms", "200", ("--checkpoint-interval-ms", "200")),
    SweepPoint("checkpoint_interval_ms", "5000", ("--checkpoint-interval-ms", "5000")),
    SweepPoint("parallelism", "2", ("--parallelism", "2")),
    SweepPoint("parallelism", "4", ("--parallelism", "4")),
    SweepPoint("delivery", "exactly-once", ("--delivery-guarantee", "exactly-once")),
    SweepPoint("low latency", "bundle 5 ms + buffer 5 ms",
               ("--bundle-time-ms", "5", "--buffer-timeout-ms", "5")),
)

QUICK = Plan("quick", users=1_000, backlog=12_000, step_s=1.0, profile_s=5.0,
             journey_order=("without", "with"))
FULL = Plan("full", users=50_000, backlog=1_000_000, step_s=5.0, profile_s=20.0,
            sweep_backlog=20_000, sweep=SWEEP)

#: the sweep's latency probe: a rate every configuration sustains
SWEEP_RATE = 300
#: a sweep point still draining after this long is timed on what it did (process mode is slow)
SWEEP_MAX_S = 90.0


# --- pure helpers (unit-tested) ------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float | None:
    """The q-quantile (0..1) by nearest rank; None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


#: a line of Prometheus' text format: name{labels} value
_PROM_LINE = re.compile(r'^(?P<name>[A-Za-z_:][A-Za-z0-9_:]*)\{(?P<labels>.*)\}\s+(?P<value>\S+)')
_PROM_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')
#: Flink's Prometheus reporter's names of the engine operator's metrics the bench reads
OPERATOR_METRIC = "flink_taskmanager_job_task_operator_{}"
CLICKS_DONE = "clicks_done"
ENGINE_WATERMARK = "currentOutputWatermark"


def _words(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def engine_metric(metrics_text: str, job_name: str, operator_name: str, metric: str,
                  combine: Callable[[list[float]], float] = sum) -> float | None:
    """One metric of the engine operator of ``job_name``, combined over its subtasks, or None.

    Read from a Flink Prometheus reporter's ``/metrics`` page, e.g. ``numRecordsIn`` (summed:
    counted by Flink as each record is handed to the operator) or ``currentInputWatermark``
    (``combine=min``: the event time every subtask has reached). Names are compared with every
    non-alphanumeric run as one underscore (the reporter rewrites some characters).
    """
    values = []
    wanted, job, operator = OPERATOR_METRIC.format(metric), _words(job_name), \
        _words(operator_name)
    for line in metrics_text.splitlines():
        match = _PROM_LINE.match(line)
        if match is None or match["name"] != wanted:
            continue
        labels = dict(_PROM_LABEL.findall(match["labels"]))
        if _words(labels.get("job_name", "")) == job and \
                _words(labels.get("operator_name", "")).startswith(operator):
            values.append(float(match["value"]))
    return combine(values) if values else None


#: the local stack's Prometheus server (infra/servers/prometheus.py): the bench reads the engine's
#: own trigger-latency histogram there, next to what it measures from outside
PROMETHEUS_URL = "http://127.0.0.1:9090"
#: waited after a latency step before Prometheus is asked: the engine flushes its histograms
#: within a second (FLUSH_AFTER_S) and Prometheus scrapes every 5 s
PROMETHEUS_SETTLE_S = 7.0
TRIGGER_LATENCY_BUCKETS = OPERATOR_METRIC.format("tier_le_trigger_latency_ms_bucket")


def step_quantile_query(job_name: str, tier: str, q: float, span_ms: int) -> str:
    """PromQL: the q-quantile of ``job_name``'s trigger latency in ``tier`` over ``span_ms``.

    Its bucket counts now minus those ``span_ms`` ago (a bucket absent then counts from 0), so
    exactly the triggers recorded in between, whatever the scrape times.
    """
    label = re.sub(r"[^A-Za-z0-9_:]", "_", job_name)  # as the reporter writes label values
    series = f'{TRIGGER_LATENCY_BUCKETS}{{job_name="{label}",tier="{tier}"}}'
    now = f"sum by (le) ({series})"
    before = f"sum by (le) ({series} offset {span_ms}ms)"
    return f"histogram_quantile({q}, {now} - ({before} or {now} * 0))"


def prometheus_query(url: str, query: str, at_s: float) -> list[dict[str, Any]] | None:
    """An instant query of Prometheus's HTTP API at ``at_s``; None if no server answers."""
    params = urllib.parse.urlencode({"query": query, "time": f"{at_s:.3f}"})
    try:
        with urllib.request.urlopen(f"{url}/api/v1/query?{params}",  # noqa: S310
                                    timeout=5) as response:
            body = json.load(response)
    except (urllib.error.URLError, OSError, ValueError):
        return None
    return list(body.get("data", {}).get("result", [])) if body.get("status") == "success" \
        else None


def prometheus_step_latency(url: str, job_name: str, tier: str, started_s: float,
                            ended_s: float) -> dict[str, float | None] | None:
    """p50/p95/p99 (ms) of the triggers the engine recorded in [started, ended].

    As Prometheus computes them from the engine's histogram; None when no server answers.
    """
    span_ms = int((ended_s - started_s) * 1000)
    figures: dict[str, float | None] = {}
    for key, q in (("p50_ms", 0.5), ("p95_ms", 0.95), ("p99_ms", 0.99)):
        result = prometheus_query(url, step_quantile_query(job_name, tier, q, span_ms), ended_s)
        if result is None:
            return None
        value = float(result[0]["value"][1]) if result else math.nan
        figures[key] = None if math.isnan(value) else round(value, 1)
    return figures


def implausible(throughput: Sequence[dict[str, Any]], ceiling_events_per_s: float,
                cores: int) -> list[str]:
    """Why these drain figures cannot be true (empty when they can).

    A job cannot beat the pass-through of the same source and sink on the same machine, and
    parallelism N cannot be more than min(N, cores) times parallelism 1 (both share the cores).
    """
    problems = []
    for run in throughput:
        if run["events_per_s"] > ceiling_events_per_s:
            problems.append(f"{run['label']}: {run['events_per_s']:,.0f} events/s is above the "
                            f"ceiling ({ceiling_events_per_s:,.0f}), the same source and sink "
                            f"with nothing in between")
    by_parallelism = {run.get("parallelism"): run["events_per_s"] for run in throughput}
    base = by_parallelism.get(1)
    for parallelism, rate in by_parallelism.items():
        if base and parallelism and parallelism > 1 and \
                rate > base * min(parallelism, max(cores, 1)):
            problems.append(f"parallelism {parallelism}: {rate:,.0f} events/s is more than "
                            f"{min(parallelism, cores)}x parallelism 1 ({base:,.0f}) on "
                            f"{cores} cores")
    return problems


def latency_figures(latencies: Sequence[float]) -> dict[str, float | None]:
    """p50/p95/p99/max (ms) of some latencies; None each when there are none."""
    return {"p50_ms": percentile(latencies, 0.50), "p95_ms": percentile(latencies, 0.95),
            "p99_ms": percentile(latencies, 0.99),
            "max_ms": max(latencies) if latencies else None}


#: the parts of a click-to-trigger latency (``latency_parts``), in order
LATENCY_PARTS = ("to_kafka", "in_job", "to_consumer")


def latency_parts(trigger: dict[str, Any], visible_ms: float) -> tuple[float, float, float]:
    """Where one trigger's latency went (ms), from the times its record carries.

    ``to_kafka``: the click's event time (the bench stamps it when it sends) to its Kafka append
    time (``ingest_time``: the clicks topic keeps LogAppendTime); ``in_job``: that to the
    trigger's ``emit_time`` (the engine's clock when it emitted it: the source, the wait for the
    watermark, the engine's work); ``to_consumer``: that to when the bench's consumer read it
    (the sink, the broker, the poll). One machine's clock throughout.
    """
    caused, ingest, emit = (trigger["cause_event_time"], trigger["ingest_time"],
                            trigger["emit_time"])
    return (ingest - caused, emit - ingest, visible_ms - emit)


def latency_split(parts: Sequence[tuple[float, ...]]) -> dict[str, float | None]:
    """p50 and p99 of each of ``LATENCY_PARTS`` over some triggers' ``latency_parts``."""
    out: dict[str, float | None] = {}
    for i, name in enumerate(LATENCY_PARTS):
        values = [p[i] for p in parts]
        out[f"{name}_p50_ms"] = percentile(values, 0.50)
        out[f"{name}_p99_ms"] = percentile(values, 0.99)
    return out


#: how often the latency ladder's ticker sends a page view to every clicks partition
TICK_S = 0.1
#: a latency step goes on this long after its last timed click, at its rate, with page views
#: of users of its own that nothing times: live traffic at a steady rate does not stop, and a
#: step that stopped left its last clicks waiting for the ticker (up to TICK_S) to move event
#: time past them (the engine applies a click once the watermark passes it), which put the
#: slowest of a 1,000/s step's triggers at ~140-175 ms against ~60 for the rest
STEP_TAIL_S = 0.25
#: how long a latency step waits for Kafka to acknowledge its clicks after sending them
SEND_FLUSH_S = 60.0
#: latency is probed once the engine's watermark is this close to now (event time is live)
LIVE_WATERMARK_MS = 5_000

#: the in-order delay probe: the defaults (a 20 ms out-of-orderness bound, watermarks every
#: 10 ms) against the reordered-input profile (``jobs.config.REORDERED_INPUT_PROFILE``: 1,000 ms,
#: 200 ms) at this rate, at-least-once, in steps of this many seconds; the first steps after a
#: job starts run cold (p99 606 ms against 145 ms for the next step of the same job,
#: 2026-12-05), so only the last of the steps counts
ORDER_PROBE_RATE = 1_000
ORDER_PROBE_STEP_S = 5.0
ORDER_PROBE_STEPS = 3


def in_order_delay(configured: dict[str, Any], reordered: dict[str, Any]) -> dict[str, Any]:
    """The click-to-trigger delay the reordered-input profile adds over the defaults.

    An input waits until the watermark passes it: the out-of-orderness bound plus up to the
    watermark interval (and the buffers on its way). ``configured`` and ``reordered`` are
    latency steps (``latency_figures`` plus ``bound_ms``) run with the defaults and with the
    profile; the profile's extra delay is the difference of their percentiles (None where
    either is missing). ``defaults_fell_behind`` marks a run whose defaults were no faster than
    the profile at the median: its figure is then the machine's, not the defaults'.
    """
    def diff(key: str) -> float | None:
        a, b = reordered.get(key), configured.get(key)
        return None if a is None or b is None else round(a - b, 1)

    extra_p50 = diff("p50_ms")
    return {"configured": configured, "reordered": reordered,
            "extra_p50_ms": extra_p50, "extra_p99_ms": diff("p99_ms"),
            "defaults_fell_behind": extra_p50 is not None and extra_p50 <= 0}


def max_rate_probes(capacity: float) -> list[int]:
    """Offered rates that look for the highest sustained one, highest first.

    80%, 50% and 25% of the capacity drained from the backlog, in hundreds (at least 100),
    without repeats.
    """
    rates = [max(100, int(capacity * share) // 100 * 100) for share in (0.8, 0.5, 0.25)]
    return list(dict.fromkeys(rates))


def latency_slope(samples: Sequence[tuple[float, float]]) -> float:
    """Least-squares slope of latency (ms) over send time (ms) of (send time, latency) pairs.

    A job that keeps up has a flat latency (slope ~0); one that falls behind queues, and each
    later event waits longer: at offered rate R and capacity C the slope is R/C - 1.
    """
    if len(samples) < 2:
        return 0.0
    xs = [x for x, _ in samples]
    ys = [y for _, y in samples]
    mean_x, mean_y = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mean_x) ** 2 for x in xs)
    if var == 0:
        return 0.0
    return sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / var


def sustained(samples: Sequence[tuple[float, float]], expected: int, received: int,
              offered_rate: float, capacity: float) -> bool:
    """Whether the job kept up with an offered rate.

    It did when every trigger arrived, the latency did not grow over the step (slope under
    0.5: the queue grew by less than half the time elapsed) and the rate is within the
    capacity measured on the backlog (+10%): no job sustains more than it can drain, however
    short a step hides the queue (with exactly-once, triggers arrive in checkpoint-sized
    bursts, which flattens the slope of a short step).
    """
    if expected == 0 or received < expected:
        return False
    return latency_slope(samples) < 0.5 and offered_rate <= 1.1 * capacity


#: (stage, function names that put a sample of the operator thread in it), checked in order:
#: the first stage with a frame on the stack wins (scoring sits inside the engine's frames)
STAGE_FRAMES: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("decode", ("decode_click", "DecodeRecordsFunction.process_element")),
    ("scoring", ("MeasuredScorer.score", "vector", "vector_list")),
    # the engine step's campaign half, and the adapter encoding its triggers and decisions
    ("arbitration", ("_campaigns", "UserEngineFunction._triggers")),
    # handing a step's membership changes to the writer's thread (the writes themselves run
    # on that thread: ``WRITER_FRAME``, not counted here)
    ("sinks", ("UserEngineFunction._segment_changes",)),
    ("state", ("UserEngineFunction._load_state", "UserEngineFunction._store_state",
               "encode_state", "ValueStateImpl.value", "ValueStateImpl.update",
               "UserEngineFunction._decode_features")),
    ("engine", ("on_event", "on_metadata", "on_timer", "on_expiry", "_reevaluate")),
)
STAGES = ("decode", "engine", "scoring", "arbitration", "sinks", "state", "flink")
#: a frame of the membership writer's thread (``udfs.flink.membership_writes``), a Python
#: operator thread of its own: its samples are not the engine thread's
WRITER_FRAME = "MembershipWriteFunction.process_element"


#: py-spy's ``--threads`` root frame: ``thread (<id>): <name>``
_THREAD_FRAME = re.compile(r"^thread \((\w+)\)")
#: a frame of one of the project's operator functions (``UserEngineFunction.on_timer``, ...)
_OPERATOR_FRAME = re.compile(r"^(\w+Function)\.")
#: the engine's operator function: its thread is the one the stages describe
ENGINE_FUNCTION = "UserEngineFunction"


def _samples(lines: Iterable[str]) -> Iterator[tuple[str | None, list[str], int]]:
    """(thread id or None, function names outermost first, count) per py-spy raw line.

    A raw line is ``frame;frame;...;frame count``, each frame ``function (file:line)``; with
    ``--threads`` the first frame is ``thread (<id>): <name>``. Lines without a count are
    skipped.
    """
    for line in lines:
        stack, _, count = line.rstrip().rpartition(" ")
        if not stack or not count.isdigit():
            continue
        frames = stack.split(";")
        match = _THREAD_FRAME.match(frames[0])
        thread = match.group(1) if match else None
        functions = [frame.split(" (")[0] for frame in (frames[1:] if match else frames)]
        if functions:
            yield thread, functions, int(count)


def _operator_of(functions: Sequence[str]) -> str | None:
    """The project's operator function a stack runs in (``UserEngineFunction``), or None."""
    for function in functions:
        match = _OPERATOR_FRAME.match(function)
        if match:
            return match.group(1)
    return None


def classify_samples(lines: Iterable[str]) -> tuple[Counter[str], int]:
    """Samples of the engine's Python operator thread per stage, from py-spy's raw lines.

    With thread ids (``--threads``) only the threads that ran the engine
    (``ENGINE_FUNCTION``) count: every other Python operator thread of the interpreter (the
    membership writer, the campaign statistics) is ``operator_threads``'s. Without them,
    operator threads are told apart by their frames: the membership writer's is left out,
    others (the Cassandra driver's loop, Redis, pools) never count. What is on the engine's
    thread outside our stages (PyFlink's row conversion, timers, metrics) is ``flink``.
    Returns (per stage, engine samples).
    """
    samples = list(_samples(lines))
    by_thread = any(thread is not None for thread, _, _ in samples)
    engine_threads = {thread for thread, functions, _ in samples
                      if _operator_of(functions) == ENGINE_FUNCTION}
    per_stage: Counter[str] = Counter()
    total = 0
    for thread, functions, count in samples:
        if by_thread:
            if thread not in engine_threads:
                continue
        elif not ("Operation" in functions[0] or "on_timer" in functions[0]) \
                or WRITER_FRAME in functions:
            continue  # not an operator thread, or the membership writer's
        total += count
        names = set(functions)
        stage = next((name for name, frames in STAGE_FRAMES
                      if any(frame in names for frame in frames)), "flink")
        per_stage[stage] += count
    return per_stage, total


def operator_threads(lines: Iterable[str]) -> Counter[str]:
    """Samples per Python operator thread other than the engine's, by operator function.

    Needs py-spy's thread ids (``--threads``); a thread is named by the operator function its
    samples run most often (``MembershipWriteFunction``, ``CampaignStatsFunction``), and
    threads that never ran one (the Cassandra driver's loop) are left out. Their samples
    include their waits (``--idle``): a thread blocked on a store is not using the interpreter.
    """
    seen: defaultdict[str, Counter[str]] = defaultdict(Counter)
    totals: Counter[str] = Counter()
    for thread, functions, count in _samples(lines):
        if thread is None:
            continue
        totals[thread] += count
        operator = _operator_of(functions)
        if operator is not None:
            seen[thread][operator] += count
    named: Counter[str] = Counter()
    for thread, operators in seen.items():
        operator = operators.most_common(1)[0][0]
        if operator != ENGINE_FUNCTION:
            named[operator] += totals[thread]
    return named


def stage_costs(per_stage: Counter[str], operator_samples: int, seconds: float, rate_hz: int,
                events_per_s: float) -> dict[str, Any]:
    """µs per event of each stage, from the samples of ``seconds`` at ``rate_hz``.

    A sample stands for 1/rate_hz of the operator thread's time; at ``events_per_s`` an event
    owns 1e6/events_per_s µs of it. Time the thread spent outside Python (waiting for input,
    Java work on that thread) is ``idle``.
    """
    expected = seconds * rate_hz
    budget_us = 1e6 / events_per_s
    costs = {stage: per_stage.get(stage, 0) / expected * budget_us for stage in STAGES}
    costs["idle"] = max(0.0, expected - operator_samples) / expected * budget_us
    return {"us_per_event": {k: round(v, 1) for k, v in costs.items()},
            "total_us_per_event": round(budget_us, 1),
            "python_thread_busy": round(min(1.0, operator_samples / expected), 3)}


def floor_goal_met(above_floor_us: float | None) -> bool | None:
    """Whether the cost above the domain floor meets its goal; None when it cannot be told.

    A negative gap (the engine's threads used less CPU per event than the floor took) says
    the two figures, measured in two processes, differ by less than their noise; it is not
    reported as met.
    """
    if above_floor_us is None or above_floor_us < 0:
        return None
    return above_floor_us < GOAL_ABOVE_FLOOR_US


def at_least_once_flags(parallelism: int) -> tuple[str, ...]:
    """The job's flags of an at-least-once drain at ``parallelism``."""
    return ("--parallelism", str(parallelism), "--delivery-guarantee", "at-least-once")


#: the p1 configuration's flags: the throughput drain, the profiled drain and the journeys
#: section's drains without journeys (the drains ``p1_median`` takes the median of)
P1_FLAGS = at_least_once_flags(1)


def p1_median(p1: dict[str, Any], more: Sequence[float], ceiling: float) -> None:
    """Make ``p1``'s figure the median of its own drain and ``more`` drains of its configuration.

    ``p1``: the p1 throughput drain's result, updated in place: ``events_per_s`` becomes the
    median, ``drains_events_per_s`` lists every drain's figure (its own first), its own stays
    as ``first_drain_events_per_s``, and ``fraction_of_ceiling`` follows the median. Every
    drain counted ran without profilers.
    """
    drains = [p1["events_per_s"], *more]
    median = round(statistics.median(drains), 1)
    p1.update(first_drain_events_per_s=p1["events_per_s"], drains_events_per_s=drains,
              events_per_s=median, fraction_of_ceiling=round(median / ceiling, 4),
              label=f"p1 at-least-once (median of {len(drains)} drains)"
              if len(drains) > 1 else p1["label"])


def above_floor(p1: dict[str, Any], floor: dict[str, Any]) -> dict[str, Any]:
    """The domain floor next to the engine's CPU per event in a p1 drain, and their gap.

    ``p1``: a drain at parallelism 1 (its ``threads``, ``thread_shares``): the bench passes its
    profiled drain, whose perf samples split the engine's side by kind of code.

    Both are CPU time per click from the moment 5% of the clicks are done with (the users'
    metadata records, older than every click, are applied before). The engine's figure is
    the kernel's CPU time of its task threads: its Python, and the JVM work on the same
    threads (state, timers, rows in and out, the Java operators chained to it); the Kafka
    source, the sinks and the membership writer run on threads of their own (the threads
    line).
    """
    engine = engine_thread_of(p1)
    engine_us = None if engine is None else engine.get("cpu_us_per_event")
    gap = None if engine_us is None else round(engine_us - floor["us_per_click"], 1)
    out = {**floor, "engine_cpu_us_per_event": engine_us, "above_floor_us": gap}
    # where each side's CPU went by kind of code (perf, CodeProfile), when both were sampled
    for key, sampled, us in (("code", floor.get("code"), floor["us_per_click"]),
                             ("engine_code", p1.get("code"), engine_us)):
        if sampled is not None:
            out[key] = (code_costs(sampled["samples"], us) if "samples" in sampled
                        else {"error": sampled.get("error")})
    return out


ThreadTimes = dict[int, tuple[str, int, int]]


def thread_times(pid: int) -> ThreadTimes:
    """Each thread of a live process: id -> (name, ns on a CPU, ns waiting for a CPU).

    From ``/proc/<pid>/task/<tid>/schedstat`` (the scheduler's run and run-queue times) and
    ``comm`` (the thread's name, cut to 15 characters by the kernel); empty when the process is
    gone. Time neither on a CPU nor waiting for one is time the thread slept: blocked on a lock
    (the interpreter's included), on I/O, or waiting for input.
    """
    out: ThreadTimes = {}
    try:
        tids = [int(t.name) for t in Path(f"/proc/{pid}/task").iterdir()]
    except OSError:
        return out
    for tid in tids:
        try:
            name = Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
            run_ns, wait_ns = Path(f"/proc/{pid}/task/{tid}/schedstat").read_text().split()[:2]
        except (OSError, ValueError):
            continue  # the thread ended meanwhile
        out[tid] = (name, int(run_ns), int(wait_ns))
    return out


def thread_shares(before: ThreadTimes, after: ThreadTimes, seconds: float,
                  events_per_s: float, top: int = 6) -> list[dict[str, Any]]:
    """The threads that used the most CPU between two ``thread_times`` readings.

    Threads of one name (GC or compiler threads) are summed. Each row: ``name``, ``threads``,
    ``on_cpu`` and ``waiting_for_cpu`` (shares of the span, per thread of that name summed, so
    above 1 for several busy threads), ``cpu_us_per_event`` (their CPU over the events the span
    processed).
    """
    by_name: dict[str, list[float]] = {}
    for tid, (name, run_ns, wait_ns) in after.items():
        first = before.get(tid)
        if first is None or first[0] != name:
            continue  # started during the span (or a reused id): not measured from its start
        row = by_name.setdefault(name, [0, 0.0, 0.0])
        row[0] += 1
        row[1] += (run_ns - first[1]) / 1e9
        row[2] += (wait_ns - first[2]) / 1e9
    rows = sorted(by_name.items(), key=lambda item: -item[1][1])[:top]
    events = events_per_s * seconds
    return [{"name": name, "threads": int(n), "on_cpu": round(run / seconds, 3),
             "waiting_for_cpu": round(wait / seconds, 3),
             "cpu_us_per_event": round(run / events * 1e6, 1) if events else None}
            for name, (n, run, wait) in rows if run > 0]


def read_proc(pid: int) -> tuple[float, float] | None:
    """(CPU seconds, peak RSS MiB) of a live process from /proc; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    cpu_s = (int(fields[11]) + int(fields[12])) / ticks  # utime + stime
    peak_kib = next((int(line.split()[1]) for line in status.splitlines()
                     if line.startswith("VmHWM:")), 0)
    return cpu_s, peak_kib / 1024


class ResourceMonitor:
    """Samples CPU time and peak memory per role (a role may see several processes in turn)."""

    def __init__(self, interval_s: float = 0.5) -> None:
        self.interval_s = interval_s
        self.pids: dict[int, str] = {}
        self.last: dict[int, tuple[float, float]] = {}
        self.baseline: dict[int, float] = {}
        self.alive_s: defaultdict[str, float] = defaultdict(float)  # seconds seen alive
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._run, name="resources", daemon=True)

    def watch(self, pid: int | None, role: str) -> None:
        """Account ``pid`` to ``role`` from now on."""
        if pid is not None:
            # CPU is counted from now: a server started before the run (Kafka, Cassandra)
            # brings the CPU time of its own start-up
            figures = read_proc(pid)
            with self.lock:
                self.pids[pid] = role
                self.baseline[pid] = figures[0] if figures else 0.0

    def start(self) -> None:
        """Begin sampling."""
        self.thread.start()

    def _run(self) -> None:
        while not self.stopped.wait(self.interval_s):
            self.sample()

    def sample(self) -> None:
        """Read every watched process once."""
        with self.lock:
            roles_alive = set()
            for pid, role in self.pids.items():
                figures = read_proc(pid)
                if figures is not None:
                    self.last[pid] = figures
                    roles_alive.add(role)
            for role in roles_alive:
                self.alive_s[role] += self.interval_s

    def stop(self) -> list[dict[str, Any]]:
        """Stop sampling; the figures per role.

        CPU seconds used since watched, mean CPU % while alive during the run, peak RSS MiB
        (VmHWM: over the process's whole life).
        """
        self.stopped.set()
        self.thread.join()
        self.sample()
        by_role: dict[str, dict[str, float]] = {}
        for pid, (cpu_s, peak) in self.last.items():
            entry = by_role.setdefault(self.pids[pid], {"cpu_s": 0.0, "peak_rss_mib": 0.0})
            entry["cpu_s"] += cpu_s - self.baseline.get(pid, 0.0)
            entry["peak_rss_mib"] = max(entry["peak_rss_mib"], peak)
        return [{"name": role, "cpu_s": round(v["cpu_s"], 1),
                 "cpu_percent": round(100 * v["cpu_s"] / self.alive_s[role], 1)
                 if self.alive_s[role] else None,
                 "peak_rss_mib": round(v["peak_rss_mib"], 1)} for role, v in by_role.items()]


#: zones at most about two hours apart all round the clock (winter and summer offsets), so a
#: span of up to about five hours has one (a gap of 4.5 h once left a 4 h span at 09:00 UTC
#: without one)
_ZONES = ("UTC", "Europe/Berlin", "Europe/Athens", "Asia/Dubai", "Asia/Kolkata", "Asia/Bangkok",
          "Asia/Tokyo", "Australia/Sydney", "Pacific/Auckland", "Pacific/Honolulu",
          "America/Anchorage", "America/Los_Angeles", "America/Denver", "America/New_York",
          "America/Sao_Paulo", "Atlantic/Cape_Verde")


def daytime_zone(*instants_ms: int) -> str:
    """A time zone in which every instant is between 10:00 and 18:00 local (no quiet hours).

    Raises:
        ValueError: no zone of the list fits all the instants.
    """
    from zoneinfo import ZoneInfo

    for name in _ZONES:
        zone = ZoneInfo(name)
        if all(10 <= datetime.fromtimestamp(t / 1000, tz=zone).hour < 18 for t in instants_ms):
            return name
    raise ValueError(f"no daytime zone for the instants {instants_ms}")


#: the input topics a reader of another run's backlog keeps
_INPUT_TOPICS = ("clicks_topic", "user_metadata_topic", "definitions_topic")


#: this process's runs are tagged ``<RUN_TAG>-<n>``; ``delete_run_topics`` deletes their topics
RUN_TAG = f"bench-{uuid.uuid4().hex[:6]}"
_run_numbers = itertools.count(1)


def delete_run_topics() -> None:
    """Delete the topics of every run this process made (``fresh_config``'s)."""
    from jobs.cli import wiring
    from jobs.config import load_config

    try:
        wiring.delete_run_topics(load_config(env={}), RUN_TAG)
    except Exception as exc:  # noqa: BLE001 - cleanup must not hide the run's own outcome
        print(f"nudgeflow bench: could not delete the run's topics ({RUN_TAG}-*): {exc}",
              file=sys.stderr)


def fresh_config(base: Any = None) -> Any:
    """A configuration of the run's own, topics provisioned.

    Its topics, consumer group, transactional ids and Redis keys are this run's alone, so runs
    never read each other's records. With ``base``, the inputs stay ``base``'s (a reader of its
    backlog) and only the outputs, group, transactional ids and Redis keys are new.
    """
    from jobs.cli import wiring
    from jobs.config import ISOLATION_FIELDS, load_config, replace

    tag = f"{RUN_TAG}-{next(_run_numbers)}"
    topics = [f for f in ISOLATION_FIELDS if f.endswith("_topic")
              and (base is None or f not in _INPUT_TOPICS)]
    cfg = replace(load_config(env={}) if base is None else base, consumer_group=tag,
                  job_name=f"nudgeflow-{tag}",
                  transactional_id_prefix=tag, redis_key_prefix=tag,
                  trigger_topic_prefix=f"{tag}-triggers-",
                  **{f: f"{tag}-{f.removesuffix('_topic')}" for f in topics})
    wiring.provision_topics(cfg, say=lambda _: None)
    return cfg


def newest_checkpoint(directory: Path) -> tuple[int, Path] | None:
    """The newest completed checkpoint under ``directory``: (N, its folder), or None.

    Completed: ``<job id>/chk-N`` has its ``_metadata`` file (written last).
    """
    done = []
    for metadata in directory.glob("*/chk-*/_metadata"):
        number = metadata.parent.name.removeprefix("chk-")
        if number.isdigit():
            done.append((int(number), metadata.parent))
    return max(done, default=None)


def checkpoint_bytes(folder: Path) -> int | None:
    """The bytes of the files of one checkpoint folder.

    None if Flink removed it meanwhile (a newer checkpoint subsumed it).
    """
    try:
        if not folder.is_dir():
            return None
        return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())
    except FileNotFoundError:
        return None


def python_build(config_args: str | None = None) -> str:
    """How this CPython was optimized when built: "PGO+LTO", "PGO", "LTO" or "no PGO/LTO".

    Read from its configure arguments (``sysconfig``'s CONFIG_ARGS, or ``config_args``): the
    interpreter is most of the engine's CPU, and a profile-guided, link-time optimized build
    drained the bench's backlog 8-14% faster than a plain one (docs/performance.md), so figures
    are only comparable between interpreters built alike. Distributions that optimize in their
    own make targets (Debian's) show no flag and read "no PGO/LTO".
    """
    args = sysconfig.get_config_var("CONFIG_ARGS") if config_args is None else config_args
    args = args or ""
    kinds = [kind for flag, kind in (("--enable-optimizations", "PGO"), ("--with-lto", "LTO"))
             if flag in args]
    return "+".join(kinds) or "no PGO/LTO"


def machine() -> dict[str, Any]:
    """The machine the figures are from."""
    cpu_model = ""
    try:
        cpu_model = next((line.split(":", 1)[1].strip()
                          for line in Path("/proc/cpuinfo").read_text().splitlines()
                          if line.startswith("model name")), "")
    except OSError:
        pass
    memory_kib = 0
    try:
        memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    except (OSError, ValueError, IndexError):
        pass
    java = ""
    try:
        out = subprocess.run(["java", "-version"], capture_output=True, text=True, timeout=20)
        java = out.stderr.split('"')[1] if '"' in out.stderr else out.stderr.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    from importlib.metadata import version

    return {"cpus": os.cpu_count(), "cpu_model": cpu_model,
            "memory_gib": round(memory_kib / 1024 / 1024, 1),
            "os": f"{platform.system()} {platform.release()}",
            "python": platform.python_version(), "python_build": python_build(), "java": java,
            "flink": version("apache-flink")}


# --- the run -------------------------------------------------------------------------------------


class EngineProgress:
    """A local job's engine progress (clicks done, event time), from its Prometheus reporter.

    A local (MiniCluster) job's reporter listens on the first free port of
    ``infra.servers.flink.PROMETHEUS_PORTS`` (the stack's JobManager and TaskManager hold
    others); the page that names ``job_name`` is this job's.
    """

    def __init__(self, job_name: str, wait_s: float = 300.0) -> None:
        from infra.servers.flink import PROMETHEUS_PORTS

        first, last = (int(p) for p in PROMETHEUS_PORTS.split("-"))
        self.ports = list(range(first, last + 1))
        self.job_name = job_name
        self.port: int | None = None
        self.deadline = time.monotonic() + wait_s

    def _page(self, port: int, metric: str) -> str | None:
        """The reporter's page with only the samples of ``metric`` (a Prometheus name).

        The reporter renders only the metrics asked for (``name[]``): the whole page, polled
        every half second during a drain, took ~7% of a CPU from the job it was measuring.
        """
        query = urllib.parse.urlencode({"name[]": metric})
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics?{query}",
                                        timeout=2) as page:
                text: str = page.read().decode("utf-8", "replace")
                return text
        except OSError:
            return None

    def _read(self, metric: str, combine: Callable[[list[float]], float] = sum
              ) -> float | None:
        from jobs import names

        for port in [self.port] if self.port is not None else self.ports:
            text = self._page(port, OPERATOR_METRIC.format(metric))
            value = None if text is None else engine_metric(text, self.job_name,
                                                            names.USER_ENGINE_NAME, metric,
                                                            combine)
            if value is not None:
                self.port = port
                return value
        if time.monotonic() > self.deadline:
            raise RuntimeError(
                f"no Prometheus page on ports {self.ports[0]}-{self.ports[-1]} reports the "
                f"engine of job {self.job_name!r}: the bench reads its progress there. Is the "
                f"reporter jar in the local Flink lib (infra.servers.flink.local_lib_dir)?")
        return None

    def clicks_done(self) -> int:
        """Clicks applied, dropped as duplicates or dead-lettered so far (0 until it reports)."""
        return int(self._read(CLICKS_DONE) or 0)

    def watermark(self) -> int | None:
        """The event time every engine subtask has reached (None until they report).

        The engine's output watermark: its input watermark metric reads Long.MIN_VALUE (a
        two-input operator; the definitions input never moves), and it holds nothing back.
        """
        value = self._read(ENGINE_WATERMARK, min)
        return None if value is None else int(value)


class Bench:
    """One benchmark run on the local stack (``nudgeflow stack up`` must be running)."""

    def __init__(self, plan: Plan, out: Path, say: Callable[[str], None] = print) -> None:
        from infra.paths import StackPaths
        from schemas.codec import Codec

        self.plan = plan
        self.out = out
        self.say = say
        self.paths = StackPaths.from_env()
        self.codec = Codec.load()
        self.monitor = ResourceMonitor()
        self.monitor.watch(os.getpid(), "bench process (generator, consumers; Python)")
        self.last_send_s = 0.0  # how long the last latency step took to send
        self.step_tail_s = STEP_TAIL_S  # traffic after a step's last timed click (0: none)
        self.last_unsent = 0  # its clicks still not acknowledged by Kafka when it gave up
        self.backlog_start_ms: int | None = None  # the loaded backlog's first event time

    # -- jobs --

    def _launch(self, cfg: Any) -> tuple[str, list[str], Path | None, dict[str, str], str]:
        """How a local job starts: interpreter, completing flags, directory, environment, label.

        This checkout's code, jars and interpreter; ``jobs.bench.compare`` runs another
        checkout's.
        """
        from infra.servers.flink import local_run_env
        from jobs.cli.wiring import local_job_flags

        return sys.executable, local_job_flags(cfg), None, local_run_env(self.paths), "job"

    def _start_job(self, cfg: Any, flags: Sequence[str], module: str = "jobs.job"
                   ) -> subprocess.Popen[bytes]:
        from jobs.config import ISOLATION_FIELDS, as_flags

        python, own_flags, cwd, env, label = self._launch(cfg)
        log = self.out / f"{module.rsplit('.', 1)[1]}-{cfg.consumer_group}.log"
        with open(log, "wb") as sink:
            job = subprocess.Popen(
                [python, "-m", module, "--local", "--starting-offsets", "earliest",
                 *as_flags(cfg, (*ISOLATION_FIELDS, "job_name",
                                 *(("checkpoint_dir",) if cfg.checkpoint_dir else ()))),
                 *flags, *own_flags],
                stdout=sink, stderr=subprocess.STDOUT, cwd=cwd, env=env)
        self.monitor.watch(job.pid, f"{label} client (Python driver)")
        return job

    def _job_jvm(self, job: subprocess.Popen[bytes], timeout_s: float = 60) -> int | None:
        """The MiniCluster JVM the job's Python client started (its child)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and job.poll() is None:
            for stat in Path("/proc").glob("[0-9]*/stat"):
                try:
                    fields = stat.read_text().rsplit(")", 1)[1].split()
                    cmdline = (stat.parent / "cmdline").read_bytes()
                except OSError:
                    continue
                if int(fields[1]) == job.pid and b"java" in cmdline:  # fields[1]: the ppid
                    pid = int(stat.parent.name)
                    self.monitor.watch(pid, "job JVM (Flink + embedded Python)")
                    return pid
            time.sleep(0.2)
        return None

    @staticmethod
    def _stop(job: subprocess.Popen[bytes]) -> None:
        job.terminate()
        try:
            job.wait(60)
        except subprocess.TimeoutExpired:
            job.kill()
            job.wait(30)

    # -- setup --

    def load_backlog(self, cfg: Any, events: int, users: int) -> float:
        """Write the seeded workload to ``cfg``'s input topics; seconds it took."""
        from jobs.workload import generate
        from jobs.workload.workload import WorkloadSpec

        spec = WorkloadSpec(users=users, events=events, seed=7)
        spec = dataclasses.replace(spec, start_ms=generate.recent_start_ms(spec))
        self.backlog_start_ms = spec.start_ms  # the domain floor generates the same workload
        started = time.monotonic()
        generate.produce(spec, cfg.kafka_bootstrap, clicks_topic=cfg.clicks_topic,
                         metadata_topic=cfg.user_metadata_topic, progress=False)
        return time.monotonic() - started

    def publish_buyers(self, cfg: Any, buyers: Sequence[str], zone: str) -> None:
        """Metadata of the latency probe's buyers: SMS consent, daytime zone (no quiet hours)."""
        from kafka import KafkaProducer

        now = int(time.time() * 1000)
        producer = KafkaProducer(**cfg.python_client_kwargs(), acks=1, linger_ms=5)
        for user in buyers:
            producer.send(cfg.user_metadata_topic, key=user.encode(), value=self.codec.encode(
                "UserMetadata", {"user_id": user, "country": "DE", "time_zone": zone,
                                 "plan": "FREE", "signup_time": now - 90 * 86_400_000,
                                 "lifetime_value": 50.0,
                                 "opt_ins": {"email": False, "sms": True, "push": False,
                                             "in_app": False, "paid_social": False},
                                 "updated_at": now - 86_400_000}))
        producer.flush()
        producer.close()

    # -- measurements --

    def _end_offsets(self, cfg: Any, topic: str) -> int:
        from kafka import KafkaConsumer, TopicPartition

        consumer = KafkaConsumer(**cfg.python_client_kwargs(), group_id=None)
        try:
            parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
            return sum(consumer.end_offsets(parts).values())
        finally:
            consumer.close()

    def drain(self, cfg: Any, flags: Sequence[str], label: str, module: str = "jobs.job",
              profile_s: float = 0.0, timeout_s: float = 3600.0,
              after: Callable[[Any], dict[str, Any]] | None = None,
              copied_to: str | None = None, max_s: float | None = None,
              code_profile: bool = False) -> dict[str, Any]:
        """Events/s of a job reading ``cfg``'s clicks from earliest until caught up.

        The clock runs from 5% of the backlog to all of it (the job's start-up is not counted).
        Progress is the clicks the engine has done with (``clicks_done`` on the job's Prometheus
        reporter, polled every half second: applied, or dropped as duplicates, or
        dead-lettered), or, for a job that copies every click to ``copied_to``, that topic's end
        offsets (exact, polled every 20 ms). Not what the engine took in: it buffers each input
        until the watermark passes it, cheaply, and a drain timed on intake reported rates of
        buffering (5,009 events/s at parallelism 1). Not the consumer group's committed offsets
        either: they move once per checkpoint. The last backlog clicks are applied once the
        watermark passes them: an end marker on every partition, at event time now, does that.
        With ``profile_s``, py-spy samples the job's JVM meanwhile; with ``profile_s`` or
        ``code_profile``, perf samples the engine's threads over the timed span (``CodeProfile``:
        the result's ``code``). ``after`` runs on the
        still-running job once it has caught up (a latency probe). With ``max_s``, a job still
        draining that long after the 5% mark is timed on what it did so far (``partial``: a
        steady-state rate all the same, for configurations too slow to drain it all).
        """
        from kafka import KafkaConsumer, TopicPartition

        clicks = target = self._end_offsets(cfg, cfg.clicks_topic)
        if copied_to is None:
            self._end_markers(cfg)
        job = self._start_job(cfg, ("--checkpoint-interval-ms", "1000", *flags), module)
        jvm = self._job_jvm(job)
        watcher = KafkaConsumer(**cfg.python_client_kwargs(), group_id=None)
        group = cfg.consumer_group
        if copied_to is not None:
            parts = [TopicPartition(copied_to, p) for p in watcher.partitions_for_topic(copied_to)]

            def progress() -> int:
                return sum(watcher.end_offsets(parts).values())
        else:
            reporter = EngineProgress(cfg.job_name)
            progress = reporter.clicks_done
        profiler: subprocess.Popen[str] | None = None
        code: CodeProfile | None = None  # perf over the engine's threads, the timed span
        profile_file = self.out / f"profile-{group}.txt"
        result: dict[str, Any] = {"label": label, "events": clicks,
                                  "progress": "copied records" if copied_to else
                                  "engine clicks done (Prometheus)"}
        start: tuple[float, int] | None = None
        threads_at_start: ThreadTimes = {}
        deadline = time.monotonic() + timeout_s
        try:
            while True:
                done, now = progress(), time.monotonic()
                if start is None and done >= target * 0.05:
                    start = (now, done)
                    threads_at_start = thread_times(jvm) if jvm is not None else {}
                    if profile_s and jvm is not None:
                        profiler = _py_spy(jvm, profile_s, profile_file)
                    if (profile_s or code_profile) and jvm is not None:
                        code = CodeProfile(engine_tids(threads_at_start),
                                           self.out / f"perf-{group}.data")
                elif start is not None and (done >= target or (
                        max_s is not None and now - start[0] > max_s and done > start[1])):
                    result.update(seconds=round(now - start[0], 2),
                                  events_per_s=round((done - start[1]) / (now - start[0]), 1),
                                  timed_records=done - start[1])
                    if jvm is not None:
                        result["threads"] = thread_shares(
                            threads_at_start, thread_times(jvm), now - start[0],
                            result["events_per_s"])
                    if code is not None:
                        result["code"], code = code.stop(), None
                    if done < target:
                        result["partial"] = True
                        after = None  # the probe needs a job that has caught up
                    break
                if job.poll() is not None:
                    raise RuntimeError(f"{label}: the job exited with {job.returncode}; read "
                                       f"{self.out}/*-{group}.log")
                if now > deadline:
                    raise RuntimeError(f"{label}: the job did not catch up in {timeout_s:.0f} s")
                time.sleep(0.02 if copied_to else 0.5)
            if profiler is not None:
                result["profile"] = _finish_py_spy(profiler, profile_file, profile_s)
            if after is not None:
                result.update(after(job))
        finally:
            if code is not None:
                code.stop()
            self._stop(job)
            watcher.close()
        return result

    def own_checkpoints(self, cfg: Any, label: str) -> Any:
        """``cfg`` with a checkpoint directory of its own under ``--out``, to measure its state."""
        from jobs.config import replace

        return replace(cfg, checkpoint_dir=(self.out / f"checkpoints-{label}").resolve().as_uri())

    def state_size(self, cfg: Any, users: int) -> Callable[[Any], dict[str, Any]]:
        """A drain's ``after``: the job's state per user, from a checkpoint taken once caught up.

        The newest completed checkpoint (its ``_metadata`` written) after the drain caught up,
        summed over its files: all the job's state, keyed (features, profile, membership,
        campaigns and journeys) and operator state (offsets, a few hundred bytes), divided by
        the workload's users.
        """
        directory = Path(cfg.checkpoint_dir.removeprefix("file://"))

        def after(_job: Any) -> dict[str, Any]:
            seen = newest_checkpoint(directory)
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                time.sleep(0.5)
                now = newest_checkpoint(directory)
                if now is not None and (seen is None or now[0] > seen[0]):
                    size = checkpoint_bytes(now[1])
                    if size is not None:
                        return {"state_bytes": size,
                                "state_bytes_per_user": round(size / users, 1)}
            return {"state_error": f"no checkpoint completed in 30 s under {directory}"}

        return after

    def _journeys(self, base: Any, users: int, order: Sequence[str]) -> dict[str, Any]:
        """The p1 drain without and with the three catalog journeys loaded, in ``order``.

        The same backlog, parallelism, delivery and checkpoint interval; only
        ``--journeys-dir`` differs. The full run drains in the order plain, journeys, journeys,
        plain (ABBA), so a drift of the machine's speed during the run weighs on both builds
        alike; each build's figure is the mean of its drains, and its state per user is
        measured after each drain (``state_size``). The quick run drains each build once: a
        smoke check of the section, not a figure to compare.
        """
        from udfs.catalog.files import JOURNEY_CATALOG_DIR

        flags = P1_FLAGS
        builds = {"without": flags, "with": (*flags, "--journeys-dir", str(JOURNEY_CATALOG_DIR))}
        runs: dict[str, list[dict[str, Any]]] = {"without": [], "with": []}
        for n, build in enumerate(order):
            self.say(f"  journeys: {build} the three catalog journeys, drain {n + 1} of "
                     f"{len(order)} ...")
            cfg = self.own_checkpoints(fresh_config(base), f"journeys-{n + 1}-{build}")
            run = self.drain(cfg, builds[build], f"p1 at-least-once, {build} journeys",
                             after=self.state_size(cfg, users))
            runs[build].append(run)
            self.say(f"    {run['events_per_s']:,.0f} events/s")
        section: dict[str, Any] = {
            "journeys": sorted(p.stem for p in JOURNEY_CATALOG_DIR.glob("*.yaml")),
            "order": "".join("A" if b == "without" else "B" for b in order)
            + f" ({', '.join(order)})",
        }
        for build, pair in runs.items():
            rates = [r["events_per_s"] for r in pair]
            states = [r["state_bytes_per_user"] for r in pair if "state_bytes_per_user" in r]
            section[build] = {
                "events_per_s": round(sum(rates) / len(rates), 1),
                "runs_events_per_s": rates,
                "drains": len(rates),
                "state_bytes_per_user": round(sum(states) / len(states), 1) if states else None,
                "state_error": next((r["state_error"] for r in pair if "state_error" in r),
                                    None),
            }
        without, with_ = section["without"]["events_per_s"], section["with"]["events_per_s"]
        section["throughput_change"] = round(with_ / without - 1, 3) if without else None
        return section

    def _end_markers(self, cfg: Any) -> None:
        """A page view on every clicks partition at event time now, after the backlog.

        Read after the backlog on each partition, they move its watermark past the backlog's
        last events, so those are applied (and counted done) without waiting for the quiet
        release; the markers themselves wait, and are not counted.
        """
        from kafka import KafkaProducer

        producer = KafkaProducer(**cfg.python_client_kwargs(), acks="all")
        try:
            now = int(time.time() * 1000)
            for partition in sorted(producer.partitions_for(cfg.clicks_topic)):
                user = f"end-{partition}"
                producer.send(cfg.clicks_topic, key=user.encode(), partition=partition,
                              value=self._click(f"end-{uuid.uuid4().hex[:8]}-{partition}",
                                                user, "PAGE_VIEW", now))
            producer.flush()
        finally:
            producer.close()

    def latency_ladder(self, cfg: Any, job: subprocess.Popen[bytes] | None,
                       rates: Sequence[int], step_s: float, buyers: list[str],
                       delivery: str, drain_rate: float) -> list[dict[str, Any]]:
        """Send clicks at each rate in turn; latency of their triggers and segment changes.

        The probe's producer and consumer are librdkafka's (confluent-kafka): they share the
        machine's cores with the job, and kafka-python's took half a core at 1,000 clicks/s
        (docs/performance.md, eighteenth session).
        """
        from confluent_kafka import OFFSET_END, Consumer, Producer, TopicPartition

        # murmur2: a user's clicks land on the partition Java's and kafka-python's clients pick
        producer = Producer({**cfg.librdkafka_config(), "acks": 1, "linger.ms": 2,
                             "batch.size": 65536, "partitioner": "murmur2_random",
                             "socket.nagle.disable": True})
        consumer = Consumer({**cfg.librdkafka_config(), "group.id": f"bench-{uuid.uuid4().hex}",
                             "enable.auto.commit": False, "isolation.level": "read_committed",
                             "fetch.wait.max.ms": 10, "socket.nagle.disable": True})
        topics = [cfg.trigger_topic("P1"), cfg.segment_changes_topic]
        listed = consumer.list_topics(timeout=30).topics
        consumer.assign([TopicPartition(t, p, OFFSET_END) for t in topics
                         for p in sorted(listed[t].partitions)])
        seen: dict[str, list[tuple[float, float]]] = {"trigger": [], "change": []}
        split: list[tuple[float, float, float]] = []  # each trigger's latency_parts

        def read(until: float, prefix: str, wanted: int) -> None:
            while time.monotonic() < until and len(seen["trigger"]) < wanted:
                # consume() waits out its timeout unless the batch fills: poll for the first
                # message, then take what is already fetched without waiting
                first = consumer.poll(0.02)
                if first is None:
                    continue
                visible = time.time() * 1000
                for message in [first, *consumer.consume(num_messages=1000, timeout=0)]:
                    error, value = message.error(), message.value()
                    if error is not None:  # librdkafka retries what is transient itself
                        raise RuntimeError(f"the latency probe could not read "
                                           f"{message.topic()}: {error}")
                    if value is None:
                        continue  # no tombstones on these topics; nothing to time
                    if message.topic() == topics[0]:
                        record = self.codec.decode(value, expect="TriggerEvent")
                        if record["cause_event_id"].startswith(prefix):
                            seen["trigger"].append((record["cause_event_time"],
                                                    visible - record["cause_event_time"]))
                            split.append(latency_parts(record, visible))
                    else:
                        record = self.codec.decode(value, expect="SegmentChange")
                        if (record.get("cause_event_id") or "").startswith(prefix):
                            seen["change"].append((record["event_time"],
                                                   visible - record["event_time"]))

        results: list[dict[str, Any]] = []
        # live traffic never stops: the engine applies a click once the watermark passes it, and
        # a watermark moves only with later clicks on every partition; a ticker keeps one page
        # view per partition flowing (every TICK_S, event time = now) while steps are read
        ticking = threading.Event()
        ticker = threading.Thread(target=self._tick, args=(producer, cfg.clicks_topic, ticking),
                                  daemon=True)
        ticker.start()
        # the engine's own view of the same triggers, if the stack's Prometheus answers
        prometheus = prometheus_query(PROMETHEUS_URL, "up", time.time()) is not None
        try:
            self._warm_up(producer, cfg, buyers, read, seen, job)
            if prometheus:
                time.sleep(PROMETHEUS_SETTLE_S)  # the warm-up's triggers are scraped first
            for rate in rates:
                for kind in seen:
                    seen[kind].clear()
                split.clear()
                prefix = f"r{rate}-{uuid.uuid4().hex[:4]}-"
                count = max(10, int(rate * step_s))
                expected = count // 10
                step_buyers = [buyers.pop() for _ in range(expected)]
                sender = threading.Thread(target=self._send, args=(
                    producer, cfg.clicks_topic, prefix, step_buyers, rate, count))
                sent_at, started_s = time.monotonic(), time.time()
                sender.start()
                # wait for the step's triggers: the send time plus the time to work off what
                # the job could not keep up with, plus checkpoints (exactly-once)
                allowance = step_s + count / max(drain_rate, 1.0) + 15
                read(sent_at + allowance, prefix, expected)
                sender.join()
                if self.last_unsent:
                    raise RuntimeError(
                        f"{self.last_unsent:,} of the {rate:,}/s step's {count:,} clicks did not "
                        f"reach Kafka within {SEND_FLUSH_S:.0f} s: is the broker up "
                        "(`nudgeflow stack up`)?")
                achieved = count / self.last_send_s if self.last_send_s else None
                latencies = [lat for _, lat in seen["trigger"]]
                results.append({
                    "delivery": delivery, "offered_rate": rate,
                    "achieved_rate": round(achieved, 1) if achieved else None,
                    "triggers": len(latencies), "expected_triggers": expected,
                    "segment_changes": len(seen["change"]),
                    "segment_change_p99_ms": percentile([x for _, x in seen["change"]], 0.99),
                    "sustained": sustained(seen["trigger"], expected, len(latencies), rate,
                                           drain_rate),
                    **latency_figures(latencies),
                    "split": latency_split(split)})
                engine_side = None
                if prometheus:
                    time.sleep(PROMETHEUS_SETTLE_S)
                    engine_side = prometheus_step_latency(PROMETHEUS_URL, cfg.job_name, "P1",
                                                          started_s, time.time())
                # ingestion to emission, from the engine's histogram: the same triggers but for
                # the sink and the consumer (and, exactly-once, the checkpoint that commits them)
                results[-1]["engine_histogram"] = engine_side
                self.say(f"    {delivery} {rate:>6,}/s: {len(latencies)}/{expected} triggers, "
                         f"p99 {_fmt(results[-1]['p99_ms'])} ms (engine's histogram in "
                         f"Prometheus: {_fmt((engine_side or {}).get('p99_ms'))} ms)")
        finally:
            ticking.set()
            ticker.join()
            producer.flush(10)
            consumer.close()
        return results

    def _tick(self, producer: Any, topic: str, stop: threading.Event) -> None:
        """One page view per partition of ``topic`` every TICK_S until ``stop`` is set."""
        partitions = sorted(producer.list_topics(topic, timeout=30).topics[topic].partitions)
        n = 0
        while not stop.wait(TICK_S):
            t = int(time.time() * 1000)
            for partition in partitions:
                user = f"tick-{partition}"
                producer.produce(topic, key=user.encode(), partition=partition,
                                 value=self._click(f"tick-{partition}-{n}", user, "PAGE_VIEW", t))
            producer.poll(0)  # serve librdkafka's events (no delivery callbacks are set)
            n += 1

    def _warm_up(self, producer: Any, cfg: Any, buyers: list[str], read: Any,
                 seen: dict[str, list[tuple[float, float]]],
                 job: subprocess.Popen[bytes] | None) -> None:
        """Send one buyer's click until its trigger shows: the job is up and caught up."""
        warm = buyers.pop()
        deadline = time.monotonic() + 240
        n = 0
        while not seen["trigger"]:
            if (job is not None and job.poll() is not None) or time.monotonic() > deadline:
                raise RuntimeError("the job did not start (or produced no trigger)")
            t = int(time.time() * 1000)
            producer.produce(cfg.clicks_topic, key=warm.encode(), value=self._click(
                f"warm-{n}", warm, "ADD_TO_CART", t, product_id="p", price=150.0,
                quantity=1, currency="USD"))
            producer.flush(30)
            n += 1
            read(time.monotonic() + 3, "warm-", 1)
        self._wait_for_live_event_time(cfg, deadline)

    def _wait_for_live_event_time(self, cfg: Any, deadline: float) -> None:
        """Wait until the engine's watermark is within ``LIVE_WATERMARK_MS`` of now.

        A job that has just started holds event time back until it has read the user-metadata
        backlog and that topic has been quiet for ``idleness_ms``; the warm-up trigger may have
        come through the quiet release meanwhile. Probed before that, every latency would be
        the quiet release's, not the event-time delay's.
        """
        reporter = EngineProgress(cfg.job_name, wait_s=max(1.0, deadline - time.monotonic()))
        started = time.monotonic()
        while True:
            watermark = reporter.watermark()
            lag_ms = None if watermark is None else time.time() * 1000 - watermark
            if lag_ms is not None and lag_ms < LIVE_WATERMARK_MS:
                self.say(f"    event time live {time.monotonic() - started:.1f} s after the "
                         f"warm-up (watermark {lag_ms:,.0f} ms behind)")
                return
            if time.monotonic() > deadline:
                raise RuntimeError(
                    "the engine's watermark did not come within "
                    f"{LIVE_WATERMARK_MS} ms of now (last: "
                    f"{'none' if lag_ms is None else f'{lag_ms:,.0f} ms behind'})")
            time.sleep(0.5)

    def _send(self, producer: Any, topic: str, prefix: str, buyers: list[str], rate: int,
              count: int) -> None:
        """A step's ``count`` clicks at ``rate``, every tenth a buyer's, then its tail.

        The tail (``step_tail_s`` at the same rate) is page views of users of its own, with
        event ids outside ``prefix``: nothing reads or counts them, they only keep the traffic
        going past the step's last timed click. ``last_send_s`` times the step's clicks only.
        """
        start = time.monotonic()
        tail = int(rate * self.step_tail_s)
        sent_s = 0.0
        for n in range(count + tail):
            pause = start + n / rate - time.monotonic()
            if pause > 0:
                time.sleep(pause)
            t = int(time.time() * 1000)
            if n >= count:
                user = f"tail-{prefix}v{n % 500}"
                value = self._click(f"tail-{prefix}{n}", user, "PAGE_VIEW", t)
            elif n % 10 == 0 and buyers:
                user = buyers.pop()
                value = self._click(f"{prefix}{n}", user, "ADD_TO_CART", t, product_id="p",
                                    price=150.0, quantity=1, currency="USD")
            else:
                user = f"{prefix}v{n % 500}"
                value = self._click(f"{prefix}{n}", user, "PAGE_VIEW", t)
            producer.produce(topic, key=user.encode(), value=value)
            if n == count - 1:  # the step's last timed click
                sent_s = time.monotonic() - start
        self.last_unsent = producer.flush(SEND_FLUSH_S)
        self.last_send_s = sent_s

    def _click(self, event_id: str, user: str, event_type: str, t: int, **extra: Any) -> bytes:
        return self.codec.encode("ClickEvent", {
            "event_id": event_id, "user_id": user, "event_type": event_type, "event_time": t,
            "source": "WEB", "session_id": f"{user}-s", "properties": {}, **extra})

    def ceiling(self, base: Any) -> dict[str, Any]:
        """The pass-through job over ``base``'s clicks: events/s."""
        from kafka import KafkaAdminClient
        from kafka.admin import NewTopic

        cfg = fresh_config(base)
        target = f"{cfg.consumer_group}-pass-through"
        admin = KafkaAdminClient(**cfg.python_client_kwargs())
        try:
            admin.create_topics([NewTopic(target, 2, 1)])
        finally:
            admin.close()
        result = self.drain(cfg, ("--target-topic", target), "ceiling",
                            module="jobs.bench.ceiling_job", copied_to=target)
        result["what"] = ("the same clicks through the job's Kafka source and sink (Java "
                          "pass-through, no Python, at-least-once, parallelism 1)")
        return result

    # -- the whole run --

    def run(self, rates: Sequence[int] = LADDER_RATES) -> dict[str, Any]:
        """Every measurement of the plan; the results dict of ``jobs.bench.report``."""
        plan = self.plan
        started = time.monotonic()
        self.monitor.start()
        self._watch_stack()
        now = int(time.time() * 1000)
        zone = daytime_zone(now, now + 3 * 3_600_000)
        from udfs import native

        results: dict[str, Any] = {
            "version": 1, "mode": plan.mode,
            "command": "nudgeflow bench" + (" --quick" if plan.mode == "quick" else ""),
            "started_at": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "machine": machine(),
            "workload": {"users": plan.users, "backlog_events": plan.backlog, "seed": 7},
            # the job's and the floor's (py-spy and cProfile see no frame inside compiled code)
            "engine_modules": native.status(),
        }
        # 1. the backlog, read by every throughput run (each with its own group and outputs)
        base = fresh_config()
        self.say(f"  loading {plan.backlog:,} events of {plan.users:,} users ...")
        results["workload"]["load_seconds"] = round(
            self.load_backlog(base, plan.backlog, plan.users), 1)
        self.say("  ceiling (pass-through) ...")
        ceiling = self.ceiling(base)
        results["ceiling"] = {k: ceiling[k] for k in ("events", "seconds", "events_per_s",
                                                       "what")}
        self.say(f"    {ceiling['events_per_s']:,.0f} events/s")
        throughput = []
        for parallelism in (1, 2):
            self.say(f"  throughput at parallelism {parallelism} ...")
            run = self.drain(fresh_config(base), at_least_once_flags(parallelism),
                             f"p{parallelism} at-least-once")
            run.update(parallelism=parallelism, delivery="at-least-once",
                       execution_mode="thread",
                       fraction_of_ceiling=round(run["events_per_s"]
                                                 / ceiling["events_per_s"], 4))
            throughput.append(run)
            self.say(f"    {run['events_per_s']:,.0f} events/s")
        results["throughput"] = throughput
        problems = implausible(throughput, ceiling["events_per_s"], os.cpu_count() or 1)
        if problems:
            raise RuntimeError("figures that cannot be true (a measurement bug, not a result): "
                               + "; ".join(problems))
        p1 = throughput[0]
        # the profilers get a drain of their own: py-spy alone took a fifth of a core of this
        # two-core machine, and a p1 drain timed with them attached read ~5% slower (ABBA,
        # three each: median 6,437 against 6,755 events/s, docs/performance.md)
        self.say("  p1 again, profiled (py-spy and perf attached; not a throughput figure) ...")
        profiled = self.drain(fresh_config(base), P1_FLAGS, "p1 at-least-once, profiled",
                              profile_s=plan.profile_s)
        results["profiled_drain"] = {key: profiled[key] for key in (
            "label", "events", "seconds", "events_per_s", "timed_records") if key in profiled}
        self.say(f"    {profiled['events_per_s']:,.0f} events/s (profiled)")
        results.update(self._stages(profiled))
        results["floor"] = self._floor(profiled, plan)
        results["journeys"] = self._journeys(base, plan.users, plan.journey_order)
        # the journeys section's drains without journeys are p1 drains too: the p1 figure is
        # the median of all of them, as one drain on this machine moves by up to ±15%
        p1_median(p1, results["journeys"]["without"]["runs_events_per_s"],
                  ceiling["events_per_s"])
        self.say(f"  p1 at-least-once: {p1['events_per_s']:,.0f} events/s, the median of "
                 + ", ".join(f"{rate:,.0f}" for rate in p1["drains_events_per_s"]))
        # 2. latency, each delivery mode on topics of its own holding only the probe's users
        best = max(run["events_per_s"] for run in throughput)
        probes = max_rate_probes(p1["events_per_s"])
        latency = []
        for delivery in ("at-least-once", "exactly-once"):
            self.say(f"  latency, {delivery} ...")
            cfg = fresh_config()
            buyers = [f"{cfg.consumer_group}-b{i}" for i in
                      range(int((sum(probes) + sum(rates)) * plan.step_s) // 10 + 40)]
            self.publish_buyers(cfg, buyers, zone)
            job = self._start_job(cfg, ("--delivery-guarantee", delivery,
                                        "--checkpoint-interval-ms", "1000"))
            self._job_jvm(job)
            try:
                # the highest sustained rate: from 80% of the drained capacity down, until one
                # holds (the probe's users are all new, which costs more than the backlog's)
                for rate in probes:
                    [step] = self.latency_ladder(cfg, job, [rate], plan.step_s, buyers,
                                                 delivery, p1["events_per_s"])
                    step["max_probe"] = True
                    latency.append(step)
                    if step["sustained"]:
                        break
                for step in self.latency_ladder(cfg, job, sorted(rates), plan.step_s, buyers,
                                                delivery, p1["events_per_s"]):
                    step["max_probe"] = False
                    latency.append(step)
            finally:
                self._stop(job)
        results["latency"] = latency
        # 2b. what in-order application costs: the defaults against the reordered-input profile
        results["in_order_delay"] = self._in_order_delay(zone)
        # 3. the knobs, one at a time, on a smaller backlog with a latency probe each
        results["sweep"] = self._sweep(zone) if plan.sweep else []
        results["resources"] = self.monitor.stop()
        at_5k = next((s for s in latency if s["delivery"] == "at-least-once"
                      and s["offered_rate"] == 5_000), None)
        p99_5k = at_5k["p99_ms"] if at_5k else None
        results["goals"] = {
            "throughput_events_per_s": GOAL_EVENTS_PER_S, "p99_ms_at_5k": GOAL_P99_MS_AT_5K,
            "best_events_per_s": best, "p99_ms_at_5k_measured": p99_5k,
            "throughput_met": best >= GOAL_EVENTS_PER_S,
            "above_floor_goal_us": GOAL_ABOVE_FLOOR_US,
            "above_floor_us": results["floor"]["above_floor_us"],
            "above_floor_met": floor_goal_met(results["floor"]["above_floor_us"]),
            "latency_met": bool(at_5k and at_5k["sustained"] and p99_5k is not None
                                and p99_5k <= GOAL_P99_MS_AT_5K)}
        results["bottleneck"] = bottleneck(results)
        results["duration_s"] = round(time.monotonic() - started, 1)
        return results

    def _stages(self, p1: dict[str, Any]) -> dict[str, Any]:
        profile = p1.pop("profile", None)
        if not profile or "error" in profile:
            reason = (profile or {}).get("error", "the drain ended before py-spy started")
            return {"stages": None, "stages_error": reason}
        lines = Path(profile["file"]).read_text().splitlines()
        per_stage, total = classify_samples(lines)
        if not total:
            return {"stages": None,
                    "stages_error": "py-spy saw no sample of the engine's operator thread"}
        costs = stage_costs(per_stage, total, profile["seconds"], PY_SPY_RATE,
                            p1["events_per_s"])
        costs["source"] = (f"py-spy, {PY_SPY_RATE} samples/s of the engine's operator thread "
                           f"for {profile['seconds']:.0f} s of the profiled p1 drain; idle = "
                           f"samples with no Python frame on that thread: JVM work, waits, "
                           f"and Python py-spy could not read, most of it in thread mode "
                           f"(perf's view by kind of code is below)")
        expected = profile["seconds"] * PY_SPY_RATE
        costs["other_threads_us_per_event"] = {
            name: round(samples / expected * costs["total_us_per_event"], 1)
            for name, samples in sorted(operator_threads(lines).items())}
        return {"stages": costs}

    def _floor(self, p1: dict[str, Any], plan: Plan) -> dict[str, Any]:
        """The pure domain loop over the backlog's workload (``jobs.bench.domain.floor``).

        The same generator, seed, start, clicks and users as the backlog: the whole workload,
        as a cut one fires fewer timers per click (``FLOOR_ONE_PASS_CLICKS``). The watermark
        moves as often as in the profiled p1 drain (its rate x WATERMARK_INTERVAL_S clicks):
        once per click, every click would take a timer step of its own, which a drain does not
        (12,000 clicks of 1,000 users, wall time: 12,788 timers and 232 µs a click, against 3,251
        and 186-196 µs with the watermark every 460 clicks). Its caches keep as many users'
        decoded state as the job's (``decoded_state_users``).
        """
        from jobs.bench import domain
        from jobs.config import load_config

        every = max(1, round(p1["events_per_s"] * WATERMARK_INTERVAL_S))
        passes = 3 if plan.backlog <= FLOOR_ONE_PASS_CLICKS else 1
        self.say(f"  domain floor: {plan.backlog:,} clicks of {plan.users:,} users, the "
                 f"watermark every {every:,} clicks, {passes} timed pass(es), no Flink ...")
        cfg = load_config(env={})  # the job's defaults (no topics needed: nothing runs)
        profile: dict[str, Any] = {}

        @contextlib.contextmanager
        def sampled() -> Iterator[None]:  # perf over this thread during the timed passes
            code = CodeProfile([threading.get_native_id()], self.out / "perf-floor.data")
            try:
                yield
            finally:
                profile.update(code.stop())

        floor = domain.floor(plan.backlog, plan.users, seed=7, start_ms=self.backlog_start_ms,
                             passes=passes, watermark_every=every,
                             decoded_users=cfg.decoded_state_users,
                             gc_thresholds=cfg.gc_threshold_counts(),
                             warmup_records=FLOOR_ONE_PASS_CLICKS, around_passes=sampled,
                             ordered=cfg.input_order == "java")
        floor["code"] = profile
        return above_floor(p1, floor)

    def _in_order_delay(self, zone: str) -> dict[str, Any]:
        """Click-to-trigger latency with the defaults and with the reordered-input profile.

        Inputs wait in the engine until the watermark passes them (event-time order): this
        measures what the profile's longer wait costs against the defaults', p50/p99, at
        ``ORDER_PROBE_RATE`` at-least-once, on the last of ``ORDER_PROBE_STEPS`` steps.
        """
        from jobs.config import REORDERED_INPUT_PROFILE, load_config
        from udfs.build import ROOT

        profile = load_config(REORDERED_INPUT_PROFILE, env={})
        steps = {}
        for name, flags in (("configured", ()),
                            ("reordered", ("--config", str(REORDERED_INPUT_PROFILE)))):
            cfg = fresh_config()
            bound_ms = (profile if flags else cfg).max_out_of_orderness_ms
            self.say(f"  in-order delay, {'defaults' if name == 'configured' else name} "
                     f"(max-out-of-orderness {bound_ms} ms) ...")
            per_step = int(ORDER_PROBE_RATE * ORDER_PROBE_STEP_S) // 10
            buyers = [f"{cfg.consumer_group}-b{i}"
                      for i in range(per_step * ORDER_PROBE_STEPS + 40)]
            self.publish_buyers(cfg, buyers, zone)
            job = self._start_job(cfg, (*flags, "--delivery-guarantee", "at-least-once"))
            self._job_jvm(job)
            try:
                *_, step = self.latency_ladder(cfg, job, [ORDER_PROBE_RATE] * ORDER_PROBE_STEPS,
                                               ORDER_PROBE_STEP_S, buyers, "at-least-once",
                                               ORDER_PROBE_RATE * 2)
            finally:
                self._stop(job)
            steps[name] = {**step, "bound_ms": bound_ms}
        result = {**in_order_delay(steps["configured"], steps["reordered"]),
                  "rate": ORDER_PROBE_RATE,
                  "profile": str(REORDERED_INPUT_PROFILE.relative_to(ROOT))}
        self.say(f"    the reordered-input profile's extra delay over the defaults: p50 "
                 f"{_fmt(result['extra_p50_ms'])} ms, p99 {_fmt(result['extra_p99_ms'])} ms "
                 f"(the defaults: p99 {_fmt(steps['configured']['p99_ms'])} ms)")
        if result["defaults_fell_behind"]:
            from jobs.bench.report import defaults_behind_warning

            self.say("    " + defaults_behind_warning(result))
        return result

    def _sweep(self, zone: str) -> list[dict[str, Any]]:
        plan = self.plan
        base = fresh_config()
        buyers = [f"{base.consumer_group}-b{i}"
                  for i in range(len(plan.sweep) * (int(SWEEP_RATE * 10) // 10 + 30))]
        self.publish_buyers(base, buyers, zone)
        self.load_backlog(base, plan.sweep_backlog, max(100, plan.sweep_backlog // 50))
        points = []
        for point in plan.sweep:
            self.say(f"  sweep: {point.knob} = {point.value} ...")
            delivery = ("exactly-once" if "exactly-once" in point.flags else "at-least-once")

            cfg = fresh_config(base)

            def probe(job: subprocess.Popen[bytes], cfg: Any = cfg, delivery: str = delivery
                      ) -> dict[str, Any]:
                [step] = self.latency_ladder(cfg, job, [SWEEP_RATE], 10.0, buyers, delivery,
                                             500.0)
                return {"p99_ms": step["p99_ms"], "p50_ms": step["p50_ms"]}

            try:
                run = self.drain(cfg, point.flags, f"{point.knob}={point.value}",
                                 after=probe, max_s=SWEEP_MAX_S)
            except RuntimeError as exc:
                self.say(f"    failed: {exc}")
                points.append({"knob": point.knob, "value": point.value,
                               "events_per_s": None, "p99_ms": None, "error": str(exc)})
                continue
            points.append({"knob": point.knob, "value": point.value,
                           "events_per_s": run["events_per_s"], "p50_ms": run.get("p50_ms"),
                           "p99_ms": run.get("p99_ms"), "partial": run.get("partial", False)})
            self.say(f"    {run['events_per_s']:,.0f} events/s, p99 {_fmt(run.get('p99_ms'))} "
                     f"ms at {SWEEP_RATE}/s")
        return points

    def _watch_stack(self) -> None:
        from infra import stack

        for server in stack.default_servers():
            if server.name in ("kafka", "cassandra", "redis"):
                self.monitor.watch(stack.running_pid(server, self.paths), server.name)


PY_SPY_RATE = 100


def _py_spy(pid: int, seconds: float, out: Path) -> subprocess.Popen[str]:
    """py-spy sampling ``pid`` (non-blocking: the job is not paused) into ``out``."""
    py_spy = Path(sys.executable).with_name("py-spy")
    return subprocess.Popen(
        [str(py_spy if py_spy.exists() else "py-spy"), "record", "-p", str(pid), "-d",
         str(int(seconds)), "-r", str(PY_SPY_RATE), "--nonblocking", "--idle", "--threads",
         "--format",
         "raw", "-o", str(out)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish_py_spy(profiler: subprocess.Popen[str], out: Path, seconds: float
                   ) -> dict[str, Any]:
    try:
        output, _ = profiler.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        profiler.kill()
        return {"error": "py-spy did not finish"}
    if profiler.returncode != 0 or not out.exists():
        return {"error": f"py-spy failed ({profiler.returncode}): {output.strip()[-300:]}"}
    return {"file": str(out), "seconds": seconds}


#: perf's samples per second: ``cpu-clock``, a software clock, as these machines have no
#: hardware counters
PERF_RATE = 499
#: the kind of code a perf sample was in, by its shared object (the first match wins); the
#: JVM's JIT-compiled code is in no file: perf names it ``/tmp/perf-<pid>.map``
CODE_KINDS: tuple[tuple[str, tuple[str, ...]], ...] = (
    ("Python interpreter", ("libpython",)),
    ("Python extension modules", (".cpython-", "site-packages/", "lib-dynload/")),
    ("JVM (HotSpot, JIT-compiled Java)", ("libjvm", "perf-", "libjava", "libzip", "libnio",
                                          "libnet", "libverify", "libjimage")),
    ("kernel", ("[kernel",)),
    ("C library", ("libc.so", "libm.so", "ld-linux", "libstdc++", "libgcc_s",
                   "libpthread")),
)


def code_kind(dso: str) -> str:
    """The kind of code (``CODE_KINDS``) of a sample in shared object ``dso``."""
    for kind, marks in CODE_KINDS:
        if any(mark in dso for mark in marks):
            return kind
    return "other"


def code_samples(lines: Iterable[str]) -> Counter[str]:
    """Samples per kind of code from ``perf script -F ip,dso`` lines (``<ip> (<dso>)``)."""
    counts: Counter[str] = Counter()
    for line in lines:
        head, sep, dso = line.rstrip().rpartition(" (")
        if sep and head.strip() and dso.endswith(")"):
            counts[code_kind(dso[:-1])] += 1
    return counts


def code_costs(samples: dict[str, int], cpu_us_per_event: float | None) -> dict[str, Any]:
    """Each kind of code's share of the samples and, given the CPU per event, its µs."""
    total = sum(samples.values())
    shares = {kind: round(count / total, 4) for kind, count in
              sorted(samples.items(), key=lambda item: -item[1])} if total else {}
    return {"samples": total, "shares": shares,
            "us_per_event": None if cpu_us_per_event is None else
            {kind: round(share * cpu_us_per_event, 1) for kind, share in shares.items()}}


class CodeProfile:
    """perf sampling some threads until ``stop``: where their CPU went, by kind of code.

    ``cpu-clock`` at ``PERF_RATE``; the kinds are ``CODE_KINDS``.

    py-spy cannot tell this: in the job's thread mode it found Python frames on the engine's
    thread in 29% of its samples while perf found that thread in the Python interpreter or
    its extension modules in 83% of its own (2026-12-05, a 30,000-user drain). A machine
    without perf, or that refuses it, gets an ``error`` instead of figures.
    """

    def __init__(self, tids: Sequence[int], out: Path) -> None:
        import shutil

        self.out = out
        self.perf = shutil.which("perf")
        self.proc: subprocess.Popen[str] | None = None
        self.error: str | None = None
        if self.perf is None:
            self.error = "perf is not installed (Debian: linux-perf)"
        elif not tids:
            self.error = "no thread to sample"
        else:
            self.proc = subprocess.Popen(
                [self.perf, "record", "-q", "-e", "cpu-clock", "-F", str(PERF_RATE), "-t",
                 ",".join(str(tid) for tid in tids), "-o", str(out)],
                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)

    def stop(self) -> dict[str, Any]:
        """Stop sampling: ``{"samples": {kind: count}}``, or ``{"error": why}``."""
        import signal

        if self.proc is None:
            return {"error": self.error}
        self.proc.send_signal(signal.SIGINT)
        try:
            output, _ = self.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return {"error": "perf record did not stop"}
        if self.proc.returncode not in (0, -signal.SIGINT) or not self.out.exists():
            return {"error": f"perf record failed ({self.proc.returncode}): "
                             f"{output.strip()[-300:]}"}
        script = subprocess.run([str(self.perf), "script", "-i", str(self.out), "-F", "ip,dso"],
                                capture_output=True, text=True, timeout=300)
        samples = code_samples(script.stdout.splitlines())
        if not samples:
            return {"error": f"perf recorded no sample: {script.stderr.strip()[-300:]}"}
        return {"samples": dict(samples)}


def engine_thread_name() -> str:
    """The name of the engine's task threads: a task's, cut by the kernel to 15 characters."""
    from jobs import names

    return names.USER_ENGINE_NAME[:15]


def engine_tids(threads: ThreadTimes) -> list[int]:
    """The ids of the engine's task threads among a JVM's (``thread_times``)."""
    name = engine_thread_name()
    return [tid for tid, (thread, _, _) in threads.items() if thread == name]


def engine_thread_of(run: dict[str, Any]) -> dict[str, Any] | None:
    """The engine's task threads in one drain's thread table (``thread_shares``), or None."""
    name = engine_thread_name()
    return next((t for t in run.get("threads") or [] if t["name"] == name), None)


def engine_thread(results: dict[str, Any]) -> dict[str, Any] | None:
    """The engine's task threads in the p1 drain's thread table, or None."""
    for run in results.get("throughput") or []:
        if run.get("parallelism") == 1:
            return engine_thread_of(run)
    return None


def bottleneck(results: dict[str, Any]) -> str:
    """A paragraph naming where the time goes, from the figures of the run."""
    stages = results.get("stages")
    best = results["goals"]["best_events_per_s"]
    ceiling = results["ceiling"]["events_per_s"]
    text = (f"The job reaches {best:,.0f} events/s, {best / ceiling:.1%} of the "
            f"{ceiling:,.0f} events/s that the same Kafka source and sink move without "
            f"processing: Kafka and Flink's own path are not the limit, the per-user operator "
            f"is.")
    if stages:
        costs = stages["us_per_event"]
        busy = stages["python_thread_busy"]
        top = sorted(((v, k) for k, v in costs.items() if k != "idle"), reverse=True)[:3]
        text += (f" Each event costs {stages['total_us_per_event']:,.0f} µs of the operator "
                 f"thread. py-spy found its Python frames in {busy:.0%} of its samples "
                 f"(largest stages: "
                 + ", ".join(f"{k} {v:,.0f} µs" for v, k in top)
                 + f"); in the other {costs.get('idle', 0):,.0f} µs py-spy found no Python "
                 f"frame on that thread, which in thread mode is mostly Python it could not "
                 f"read, not Java (perf's view by kind of code, next to the domain floor).")
    engine = engine_thread(results)
    if engine is not None:
        on, waiting = engine["on_cpu"], engine["waiting_for_cpu"]
        text += (f" The engine's thread was on a CPU {on:.0%} of the p1 drain and waited for "
                 f"one {waiting:.0%} ({engine['cpu_us_per_event']:,.0f} µs of CPU per event; "
                 f"the kernel's figures)")
        text += (": it is bound by its own CPU work, so less work per event is what raises "
                 "the rate" if on + waiting >= 0.85 else
                 f": it slept {1 - on - waiting:.0%} of the time (the interpreter lock, the "
                 f"store clients' answers, input)")
        text += ("; the wait for a CPU is the other processes and threads on the same cores "
                 "(Kafka, Cassandra, the store clients' processes, the JVM's compiler and "
                 "garbage collector)." if waiting >= 0.1 else ".")
    floor = results.get("floor") or {}
    gap = floor.get("above_floor_us")
    if gap is not None:
        text += (f" The pure domain code over the same workload, with no Flink, costs "
                 f"{floor['us_per_click']:,.0f} µs of CPU per event in one Python loop: "
                 + (f"the job spends {gap:,.0f} µs of the engine's CPU per event above it."
                    if gap >= 0 else
                    f"the engine's threads used {-gap:,.0f} µs per event less than that, so "
                    f"what the job adds to the domain code is below what these two "
                    f"measurements tell apart; the domain code itself is the cost to cut."))
        from jobs.bench.report import code_split

        if split := code_split(floor):
            text += (" By kind of code (perf), the engine's threads against the floor: "
                     + ", ".join(f"{kind} {engine - ours:+,.1f} µs"
                                 for kind, ours, engine in split) + ".")
    rates = {run["parallelism"]: run["events_per_s"] for run in results.get("throughput", [])}
    if 1 in rates and 2 in rates:
        text += (f" In thread mode every Python operator of a TaskManager shares one "
                 f"interpreter and its GIL, so parallelism 2 adds no Python capacity "
                 f"({rates[2]:,.0f} against {rates[1]:,.0f} events/s at parallelism 1); process "
                 f"mode gives each subtask an interpreter of its own (see the sweep).")
    if gap is not None and gap < GOAL_ABOVE_FLOOR_US:
        # the framework is not where the time goes: say what is
        text += (" What would remove it: less work in the domain code itself (it is nearly all "
                 "of the engine's CPU: evaluate only what an input can change), fewer "
                 "processes competing for the engine's cores, more cores or TaskManagers, or "
                 "the per-user engine in a compiled language with Python kept for definitions "
                 "and models.")
        return text
    text += (" What would remove it: less Python per event (evaluate only the segments whose "
             "inputs changed), fewer crossings of the JVM boundary (one state value per user "
             "instead of five), micro-batches per "
             "shard with one scoring call per batch, more cores for process-mode workers, or "
             "the per-user engine in Java with Python kept for definitions and models.")
    return text


def _fmt(value: float | None) -> str:
    return "–" if value is None else f"{value:,.0f}"


def add_bench_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags of ``nudgeflow bench``."""
    parser.add_argument("--quick", action="store_true",
                        help="small backlog, short steps, no sweep (under 3 minutes)")
    parser.add_argument("--backlog", type=int, help="events of the throughput backlog "
                        f"(default: {QUICK.backlog:,} quick, {FULL.backlog:,} full)")
    parser.add_argument("--no-sweep", action="store_true", help="skip the knob sweep")
    parser.add_argument("--sweep-only", metavar="KNOB,...",
                        help="sweep only these knobs (of: "
                             + ", ".join(dict.fromkeys(p.knob for p in SWEEP)) + ")")
    parser.add_argument("--out", type=Path, default=None,
                        help="directory of results.json, results.png and the jobs' logs "
                             "(default: $NUDGEFLOW_HOME/bench/<time>)")
    parser.add_argument("--update-docs", type=Path, nargs="?",
                        const=Path("docs/performance.md"),
                        help="replace the results section of this page, and the "
                             "bench-results.json and .png beside it "
                             "(default docs/performance.md)")


#: set when ``run_bench`` restarted the process to load the compiled engine modules
_REEXEC_ENV = "NUDGEFLOW_BENCH_RESTARTED"


def run_bench(args: argparse.Namespace) -> int:
    """Start the stack if needed, run, print, write JSON and PNG (and the docs results section)."""
    # first, before any engine module is imported here: the domain floor (in this process)
    # must run the same modules as the job (the archive carries the compiled ones)
    from infra import native as native_build
    from udfs import native

    if native_build.ensure(say=print) and not native.install().startswith("compiled") \
            and os.environ.get(_REEXEC_ENV) != "1":
        # built after this process imported some of them as Python: start again, once, so
        # the floor runs the job's modules
        os.environ[_REEXEC_ENV] = "1"
        sys.stdout.flush()
        os.execv(sys.executable, sys.orig_argv)  # noqa: S606 (this same command again)
    print(f"engine modules (the job's and the floor's): {native.status()}")
    from infra import stack
    from infra.paths import StackPaths
    from jobs.bench import report as bench_report
    from jobs.cli import wiring
    from jobs.config import load_config

    plan = QUICK if args.quick else FULL
    if args.backlog:
        plan = dataclasses.replace(plan, backlog=args.backlog)
    if args.no_sweep:
        plan = dataclasses.replace(plan, sweep=())
    elif args.sweep_only:
        wanted = {knob.strip() for knob in args.sweep_only.split(",")}
        unknown = wanted - {point.knob for point in SWEEP}
        if unknown:
            print(f"nudgeflow bench: --sweep-only: unknown knob(s) {', '.join(sorted(unknown))}"
                  f"; the knobs are {', '.join(dict.fromkeys(p.knob for p in SWEEP))}",
                  file=sys.stderr)
            return 2
        plan = dataclasses.replace(plan, sweep=tuple(p for p in SWEEP if p.knob in wanted))
    paths = StackPaths.from_env()
    out = args.out or (paths.home / "bench" / datetime.now(UTC).strftime("%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"nudgeflow bench ({plan.mode} mode; results and job logs in {out})")
    stack.up(paths, say=lambda line: None)
    wiring.provision_cassandra(load_config(), say=lambda line: None)
    try:
        results = Bench(plan, out).run()
    except RuntimeError as exc:
        print(f"nudgeflow bench: {exc}", file=sys.stderr)
        return 1
    finally:
        delete_run_topics()
    bench_report.write_json(results, out / "results.json")
    bench_report.draw_plot(results, out / "results.png")
    print(bench_report.format_report(results))
    print(f"\nresults: {out / 'results.json'}, plot: {out / 'results.png'}")
    if args.update_docs:
        bench_report.update_docs(args.update_docs, results, out / "results.png")
        print(f"results section updated: {args.update_docs} (and its {bench_report.DOCS_JSON}"
              f", {bench_report.DOCS_PLOT})")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m jobs.bench.bench`` (the same as ``nudgeflow bench``)."""
    parser = argparse.ArgumentParser(prog="nudgeflow bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_bench_arguments(parser)
    return run_bench(parser.parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
