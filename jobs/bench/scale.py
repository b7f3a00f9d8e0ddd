"""Scale-out on the local stack's cluster: the same backlog drained by 1 and 2 TaskManagers.

    python -m jobs.bench.scale [--shapes 1x1,2x2,2x2,1x1] [--backlog 40000] [--users 3000]
        [--out DIR]

A shape ``TxP`` runs the job at parallelism P on T TaskManagers of the stack (``nudgeflow stack
up --taskmanagers T``; every TaskManager restarted fresh before each drain, so each starts with
a cold interpreter and JIT alike). In thread mode each TaskManager embeds one Python
interpreter, so the engine subtasks of one TaskManager share one interpreter lock, and those of
two TaskManagers do not: ``2x2`` is scale-out, ``1x2`` two subtasks on one interpreter.

Each drain is submitted as a user submits (``nudgeflow run``: the shipped archive, the cluster's
configuration), reads the one backlog (loaded once) with a consumer group and outputs of its
own, and is timed as ``nudgeflow bench`` times its drains: from 5% of the backlog to all of it,
by the engine's ``clicks_done`` counters, here summed over every TaskManager's Prometheus
reporter. Each TaskManager's busiest threads (``jobs.bench.bench.thread_shares``) are read
from the kernel over the same span, and the TaskManagers that ran the engine's subtasks from
Flink's REST API (the figure of a shape whose subtasks shared a TaskManager is not scale-out).
Needs the local stack (``nudgeflow stack up``); leaves it with the TaskManager count it had.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.bench.bench import (
    QUICK,
    Bench,
    EngineProgress,
    ThreadTimes,
    delete_run_topics,
    fresh_config,
    thread_shares,
    thread_times,
)
from jobs.bench.report import threads_line


@dataclass(frozen=True)
class Shape:
    """T TaskManagers, the job at parallelism P."""

    taskmanagers: int
    parallelism: int

    @classmethod
    def parse(cls, text: str) -> Shape:
        """``2x2`` -> Shape(2, 2).

        Raises:
            ValueError: not ``TxP`` with T in 1..8 and P >= 1.
        """
        left, sep, right = text.strip().partition("x")
        if not sep or not left.isdigit() or not right.isdigit() or not 1 <= int(left) <= 8 \
                or int(right) < 1:
            raise ValueError(f"shape {text!r}: expected TxP, T TaskManagers (1-8) and "
                             "parallelism P (e.g. 2x2)")
        return cls(int(left), int(right))

    def __str__(self) -> str:
        return f"{self.taskmanagers}x{self.parallelism}"


class ClusterProgress(EngineProgress):
    """The engine's progress summed over every reporter that reports the job.

    ``EngineProgress`` keeps the one port of a MiniCluster's reporter; a cluster job's subtasks
    report on their TaskManagers' own ports, so every port is read at every poll (a refused
    connection costs nothing, and a page asks for its one metric).
    """

    def _read(self, metric: str, combine: Callable[[list[float]], float] = sum
              ) -> float | None:
        from jobs import names
        from jobs.bench.bench import OPERATOR_METRIC, engine_metric

        values = []
        for port in self.ports:
            text = self._page(port, OPERATOR_METRIC.format(metric))
            value = None if text is None else engine_metric(text, self.job_name,
                                                            names.USER_ENGINE_NAME, metric,
                                                            combine)
            if value is not None:
                values.append(value)
        if values:
            return combine(values)
        if time.monotonic() > self.deadline:
            raise RuntimeError(f"no Prometheus page on ports {self.ports[0]}-{self.ports[-1]} "
                               f"reports the engine of job {self.job_name!r}")
        return None


def speedups(drains: Sequence[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per shape: its drains' events/s, their median, and that median over ``1x1``'s."""
    by_shape: dict[str, list[float]] = {}
    for drain in drains:
        by_shape.setdefault(drain["shape"], []).append(drain["events_per_s"])
    summary: dict[str, dict[str, Any]] = {
        shape: {"runs": rates, "median_events_per_s": statistics.median(rates)}
        for shape, rates in by_shape.items()}
    base = summary.get("1x1", {}).get("median_events_per_s")
    for figures in summary.values():
        figures["speedup"] = round(figures["median_events_per_s"] / base, 2) if base else None
    return summary


def machine_busy() -> tuple[int, int]:
    """(busy, total) clock ticks of every CPU since boot, from ``/proc/stat``.

    Busy is user, nice, system, irq, softirq and steal time; idle and I/O wait are not.
    """
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(f) for f in stat.readline().split()[1:9]]
    user, nice, system, idle, iowait, irq, softirq, steal = fields
    busy = user + nice + system + irq + softirq + steal
    return busy, busy + idle + iowait


def machine_share(before: tuple[int, int], after: tuple[int, int], seconds: float,
                  events_per_s: float) -> dict[str, float]:
    """The whole machine's CPU over a span: busy share of all CPUs, CPU µs per event."""
    busy, total = after[0] - before[0], after[1] - before[1]
    share = busy / total if total else 0.0
    cpu_seconds = share * _cores() * seconds
    events = events_per_s * seconds
    return {"busy_share": round(share, 3),
            "cpu_us_per_event": round(cpu_seconds * 1e6 / events, 1) if events else 0.0}


#: a process's role, by the first of these found in its command line (else ``other``); a
#: needle names the program (a class, a config file), not a word a jar's name could hold: a
#: local run's JVM lists flink-metrics-prometheus among its jars
ROLES = (("udfs.stores.client_process", "store clients (Python children of the engine)"),
         ("TaskManagerRunner", "TaskManagers (JVM with the embedded Python)"),
         ("StandaloneSessionClusterEntrypoint", "JobManager"),
         ("PythonGatewayServer", "a local run's JVM (MiniCluster)"),
         ("kafka.Kafka", "Kafka"), ("CassandraDaemon", "Cassandra"),
         ("redis-server", "Redis"), ("prometheus.yml", "Prometheus"),
         ("apicurio", "schema registry"), ("jobs.bench", "the bench"))


def role_of(cmdline: str) -> str:
    """The role of a process with this command line (``ROLES``)."""
    return next((role for needle, role in ROLES if needle in cmdline), "other")


def process_ticks() -> dict[int, tuple[str, int]]:
    """Every process: pid -> (role, user + system clock ticks so far)."""
    out = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                "utf-8", "replace")
        except OSError:
            continue  # gone meanwhile
        out[int(entry.name)] = (role_of(cmdline), int(stat[11]) + int(stat[12]))
    return out


def role_shares(before: dict[int, tuple[str, int]], after: dict[int, tuple[str, int]],
                events: float) -> dict[str, float]:
    """CPU µs per event of each role over a span, busiest first (processes seen at both ends).

    A process started during the span is counted from its start; one that ended in it is not.
    """
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    spent: dict[str, float] = {}
    for pid, (role, ticks) in after.items():
        start = before.get(pid, (role, 0))[1]
        spent[role] = spent.get(role, 0.0) + (ticks - start) * tick_us
    return {role: round(us / events, 1) for role, us in
            sorted(spent.items(), key=lambda item: -item[1]) if events and us > 0}


class ScaleBench(Bench):
    """Drains on the stack's cluster (``nudgeflow run``), not on a MiniCluster."""

    def __init__(self, out: Path, say: Callable[[str], None] = print) -> None:
        super().__init__(QUICK, out, say)

    def resize(self, count: int) -> list[int]:
        """Restart the stack's TaskManagers, ``count`` of them, fresh; their pids."""
        from infra import stack
        from infra.servers.flink import FlinkTaskManager, set_taskmanager_count

        quiet: Callable[[str], None] = lambda _: None  # noqa: E731
        stack.down(self.paths, [FlinkTaskManager(i) for i in range(1, 9)], say=quiet)
        set_taskmanager_count(self.paths, count)
        managers = [FlinkTaskManager(i) for i in range(1, count + 1)]
        stack.up(self.paths, managers, say=quiet)
        pids = [stack.running_pid(m, self.paths) for m in managers]
        return [pid for pid in pids if pid is not None]

    def submit(self, cfg: Any, parallelism: int) -> str:
        """``nudgeflow run --no-watch`` of ``cfg`` from earliest; the running job's id."""
        from infra import deploy
        from jobs.config import ISOLATION_FIELDS, as_flags

        cmd = [sys.executable, "-m", "jobs.cli", "run", "--no-watch",
               *as_flags(cfg, (*ISOLATION_FIELDS, "job_name")), "--starting-offsets",
               "earliest", "--parallelism", str(parallelism), "--delivery-guarantee",
               "at-least-once", "--checkpoint-interval-ms", "1000"]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        found = re.search(r"job ([0-9a-f]{32}) submitted", proc.stdout)
        if proc.returncode != 0 or found is None:
            raise RuntimeError(f"nudgeflow run failed (exit {proc.returncode}): "
                               f"{(proc.stdout + proc.stderr)[-3000:]}")
        deploy.wait_for_state(cfg.flink_rest_url, found.group(1), {"RUNNING"}, 120)
        return found.group(1)

    def engine_hosts(self, cfg: Any, job_id: str) -> list[str]:
        """The TaskManagers (ids) that run the engine's subtasks, one entry per subtask."""
        from infra import deploy
        from jobs import names

        vertices = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}")["vertices"]
        engine = next(v for v in vertices if v["name"].startswith(names.USER_ENGINE_NAME))
        detail = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}/vertices/{engine['id']}")
        return sorted(str(s.get("taskmanager-id", "?")) for s in detail.get("subtasks", []))

    def cluster_drain(self, cfg: Any, shape: Shape, timeout_s: float = 1800.0
                      ) -> dict[str, Any]:
        """Events/s of one drain of ``cfg``'s backlog by ``shape`` (see the module docs)."""
        from infra import deploy

        pids = self.resize(shape.taskmanagers)
        target = self._end_offsets(cfg, cfg.clicks_topic)
        self._end_markers(cfg)
        job_id = self.submit(cfg, shape.parallelism)
        progress = ClusterProgress(cfg.job_name)
        result: dict[str, Any] = {"shape": str(shape), "taskmanagers": shape.taskmanagers,
                                  "parallelism": shape.parallelism, "events": target}
        start: tuple[float, int] | None = None
        before: dict[int, ThreadTimes] = {}
        machine_before = (0, 0)
        processes_before: dict[int, tuple[str, int]] = {}
        deadline = time.monotonic() + timeout_s
        state_checked = time.monotonic()
        try:
            while True:
                done, now = progress.clicks_done(), time.monotonic()
                if start is None and done >= target * 0.05:
                    start = (now, done)
                    before = {pid: thread_times(pid) for pid in pids}
                    machine_before = machine_busy()
                    processes_before = process_ticks()
                    result["engine_hosts"] = self.engine_hosts(cfg, job_id)
                elif start is not None and done >= target:
                    seconds = now - start[0]
                    rate = (done - start[1]) / seconds
                    result.update(seconds=round(seconds, 2), events_per_s=round(rate, 1),
                                  timed_records=done - start[1])
                    result["machine"] = machine_share(machine_before, machine_busy(),
                                                      seconds, rate)
                    result["processes_us_per_event"] = role_shares(
                        processes_before, process_ticks(), done - start[1])
                    result["threads"] = {
                        str(pid): thread_shares(before[pid], thread_times(pid), seconds, rate)
                        for pid in pids}
                    break
                if now - state_checked >= 5.0:  # not every poll: the JobManager's CPU is in the
                    state_checked = now  # figures
                    state = deploy.job_state(cfg.flink_rest_url, job_id)
                    if state not in {"RUNNING", "CREATED", "INITIALIZING", "RESTARTING"}:
                        raise RuntimeError(f"drain {shape}: job {job_id} is {state}; read its "
                                           f"exceptions at {cfg.flink_rest_url}")
                if now > deadline:
                    raise RuntimeError(f"drain {shape}: not caught up in {timeout_s:.0f} s")
                # fine-grained until the span starts, so that it starts close to 5% of the
                # backlog (at 0.5 s a short backlog's first reading could be past a quarter)
                time.sleep(0.1 if start is None else 0.5)
        finally:
            try:
                deploy.cancel(cfg.flink_rest_url, job_id)
                deploy.wait_for_state(cfg.flink_rest_url, job_id, {"CANCELED"}, 60)
            except deploy.DeployError:
                pass  # a job that failed cannot be cancelled; the next resize stops its
                # TaskManagers anyway, and the drain's own error is the one to report
        hosts = result.get("engine_hosts", [])
        result["engine_taskmanagers"] = len(set(hosts))
        return result


def run(shapes: Sequence[Shape], backlog: int, users: int, out: Path,
        say: Callable[[str], None] = print) -> dict[str, Any]:
    """Drain one backlog once per shape, in the order given; the figures."""
    from infra.servers.flink import taskmanager_count

    bench = ScaleBench(out, say)
    had = taskmanager_count(bench.paths)
    base = fresh_config()
    say(f"  loading {backlog:,} events of {users:,} users ...")
    bench.load_backlog(base, backlog, users)
    drains = []
    try:
        for shape in shapes:
            say(f"  drain {shape} ({shape.parallelism} engine subtasks on "
                f"{shape.taskmanagers} TaskManager(s)) ...")
            drain = bench.cluster_drain(fresh_config(base), shape)
            drains.append(drain)
            say(f"    {drain['events_per_s']:,.0f} events/s ({drain['timed_records']:,} clicks "
                f"in {drain['seconds']} s; engine subtasks on {drain['engine_taskmanagers']} "
                "TaskManager(s); the machine's CPUs "
                f"{drain['machine']['busy_share']:.0%} busy, "
                f"{drain['machine']['cpu_us_per_event']:,.0f} µs CPU per event in all)")
            say("      CPU µs per event: " + ", ".join(
                f"{role} {us:,.0f}" for role, us in drain["processes_us_per_event"].items()))
            for pid, rows in drain["threads"].items():
                say(f"      TaskManager pid {pid}: {threads_line(rows)}")
    finally:
        bench.resize(had)
    return {"backlog_events": backlog, "users": users, "cores": _cores(),
            "timing": "engine clicks_done summed over the TaskManagers' reporters",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "drains": drains, "shapes": speedups(drains)}


def _cores() -> int:
    return len(os.sched_getaffinity(0))


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m jobs.bench.scale [--shapes 1x1,2x2,2x2,1x1] ...``."""
    parser = argparse.ArgumentParser(prog="python -m jobs.bench.scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shapes", default="1x1,2x2,2x2,1x1",
                        help="drains in order, TaskManagers x parallelism (default "
                             "1x1,2x2,2x2,1x1: ABBA, so a drift of the machine weighs on both)")
    parser.add_argument("--backlog", type=int, default=40_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    try:
        shapes = [Shape.parse(s) for s in args.shapes.split(",")]
    except ValueError as exc:
        parser.error(str(exc))
    out = args.out or Path(tempfile.mkdtemp(prefix="nudgeflow-scale-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"nudgeflow bench scale (results in {out})")
    try:
        result = run(shapes, args.backlog, args.users, out)
    finally:
        delete_run_topics()
    (out / "scale.json").write_text(json.dumps(result, indent=2))
    for shape, figures in result["shapes"].items():
        runs = ", ".join(f"{f:,.0f}" for f in figures["runs"])
        print(f"  {shape}: median {figures['median_events_per_s']:,.0f} events/s ({runs}); "
              f"x{figures['speedup']} of 1x1")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
