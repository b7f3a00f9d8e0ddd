"""Drain one backlog with several builds of nudgeflow, alternating, in one run on one machine.

    python -m jobs.bench.compare before=/path/to/old/checkout after=. [--rounds 2] [--warmup 1]
        [--backlog 40000] [--users 3000] [--parallelism 1] [--out DIR]
        [--job-flags 'NAME=--flag value ...'] [--perf]

``--job-flags`` adds job flags to one build's runs, so one checkout can be compared with itself
under two settings (``plain=. journeys=. --job-flags 'journeys=--journeys-dir
udfs/catalog/journeys'``).

``--perf`` samples the engine's threads in every drain with perf and prints where their CPU
per event went by kind of code (Python interpreter, extension modules, JVM, kernel, C library:
``bench.CodeProfile``), so a change's gain or loss shows where it fell.

A throughput change is only worth what its comparison is: this machine is noisy, so every build
drains the same backlog (loaded once) in every round, in ABBA order (the second round reversed,
so a drift in the machine's speed weighs on both alike), and the median per build is reported.
Before the timed rounds, ``--warmup`` drains (one by default) are run and reported but not
counted: the first drain after the backlog is loaded was the slowest of its run in every
compare of 2026-12-04 (877 against 1,049-1,533 events/s, and 1,588 against 1,957-2,096), a
bias by position that ABBA's reversal does not cancel, as it falls on one build only.

Each build is a checkout with its own code, jars and ``NUDGEFLOW_HOME`` (``OUT/home-<name>``):
its job runs from its own directory, with the jars its own sources give, and with its own
virtualenv's Python when it has a ``.venv`` (so two interpreters can be compared as two
builds: a checkout whose ``.venv`` was made from another Python). The drains are timed
as ``nudgeflow bench`` times them (``Bench.drain``: the engine's ``clicks_done`` counter, read
from the job's Prometheus reporter), so a build older than that counter needs it added (a
six-line patch to ``udfs/flink/user_engine.py``; see docs/performance.md). Needs the local stack
(``nudgeflow stack up``).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from jobs.bench.bench import (
    QUICK,
    Bench,
    code_costs,
    delete_run_topics,
    engine_thread_of,
    fresh_config,
)
from jobs.bench.report import threads_line

#: what a build's own code says about how to run its local job (printed as JSON)
_LAUNCH = """
import json
try:  # a checkout with compiled engine modules: current before its drains (they import them)
    from infra import native
    native.ensure(say=lambda line: None)
except ImportError:
    pass
from infra.paths import StackPaths
from infra.servers.flink import local_run_env
from jobs.cli.wiring import local_job_flags
from jobs.config import load_config
env = local_run_env(StackPaths.from_env(), env={})
print(json.dumps({"flags": local_job_flags(load_config(env={})), "env": env}))
"""


@dataclass(frozen=True)
class Build:
    """One checkout to measure: its name in the report, its directory and its launch."""

    name: str
    root: Path
    home: Path
    python: str
    flags: tuple[str, ...]
    env: dict[str, str]

    @classmethod
    def prepare(cls, name: str, root: Path, out: Path, extra: Sequence[str] = ()) -> Build:
        """Resolve the build's jars in its own home and read how its local job starts.

        ``extra``: job flags added to this build's runs (``--job-flags``).
        """
        home = out / f"home-{name}"
        python = interpreter(root)
        env = {**os.environ, "NUDGEFLOW_HOME": str(home), "PYTHONPATH": str(root)}
        proc = subprocess.run([python, "-c", _LAUNCH], cwd=root, env=env,
                              capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise RuntimeError(f"build {name!r} ({root}) could not prepare its job: "
                               f"{proc.stderr.strip()[-2000:]}")
        launch = json.loads(proc.stdout.strip().splitlines()[-1])
        return cls(name, root, home, python, (*launch["flags"], *extra),
                   {**env, **launch["env"]})


class BuildBench(Bench):
    """``Bench`` whose jobs run from one build's checkout, with that build's jars."""

    def __init__(self, build: Build, out: Path) -> None:
        super().__init__(QUICK, out)
        self.build = build

    def _launch(self, cfg: Any) -> tuple[str, list[str], Path | None, dict[str, str], str]:
        return (self.build.python, list(self.build.flags), self.build.root, self.build.env,
                self.build.name)


def interpreter(root: Path) -> str:
    """The Python a build's jobs run with: its checkout's ``.venv``, else this process's.

    A checkout with a virtualenv of its own is measured with it, so two interpreters (or two
    sets of pinned libraries) can be compared as two builds; the job's ``python.executable``
    is that interpreter, so its TaskManager embeds that interpreter's libpython.
    """
    own = root / ".venv" / "bin" / "python"
    return str(own) if own.is_file() else sys.executable


def code_line(result: dict[str, Any]) -> str | None:
    """A drain's engine CPU per event by kind of code (``--perf``), on one line, or None."""
    code = result.get("code")
    if code is None:
        return None
    if "samples" not in code:
        return f"by kind of code: unavailable ({code.get('error')})"
    engine = engine_thread_of(result)
    costs = code_costs(code["samples"], None if engine is None else engine["cpu_us_per_event"])
    if costs["us_per_event"] is None:
        return "by kind of code: " + ", ".join(f"{kind} {share:.1%}"
                                               for kind, share in costs["shares"].items())
    return "by kind of code, µs CPU/event: " + ", ".join(
        f"{kind} {us:,.1f}" for kind, us in costs["us_per_event"].items())


def drain_order(names: Sequence[str], rounds: int, warmup: int) -> list[tuple[str, str]]:
    """The drains of a comparison in order: (build name, label), the warm-ups first.

    Warm-up ``i`` drains with build ``i mod len(names)`` (labelled ``warm-up i``); then round
    ``r`` drains with every build, in the given order for odd ``r`` and reversed for even ``r``
    (ABBA). A label of a timed drain is ``round r``.
    """
    order = [(names[i % len(names)], f"warm-up {i + 1}") for i in range(warmup)]
    for round_no in range(rounds):
        for name in names if round_no % 2 == 0 else list(reversed(names)):
            order.append((name, f"round {round_no + 1}"))
    return order


def compare(builds: Sequence[tuple[str, Path]], rounds: int, backlog: int, users: int,
            parallelism: int, out: Path, say: Any = print,
            job_flags: dict[str, list[str]] | None = None, warmup: int = 1,
            perf: bool = False) -> dict[str, Any]:
    """Drain one backlog with every build, ``rounds`` times, alternating; the figures.

    ``warmup`` untimed drains run first (``drain_order``); their figures are reported apart
    (``warmup`` in the result), never in a build's runs or median. ``perf``: every drain's
    engine threads sampled by kind of code (``code_line``).
    """
    prepared = []
    for name, root in builds:
        say(f"  preparing {name} ({root}) ...")
        prepared.append(Build.prepare(name, root.resolve(), out, (job_flags or {}).get(name, [])))
    benches = {b.name: BuildBench(b, out) for b in prepared}
    base = fresh_config()
    say(f"  loading {backlog:,} events of {users:,} users ...")
    next(iter(benches.values())).load_backlog(base, backlog, users)
    runs: dict[str, list[float]] = {b.name: [] for b in prepared}
    warmups: list[dict[str, Any]] = []
    for name, label in drain_order([b.name for b in prepared], rounds, warmup):
        result = benches[name].drain(
            fresh_config(base), ("--parallelism", str(parallelism),
                                 "--delivery-guarantee", "at-least-once"),
            f"{name} p{parallelism} {label}", code_profile=perf)
        if label.startswith("warm-up"):
            warmups.append({"build": name, "events_per_s": result["events_per_s"]})
        else:
            runs[name].append(result["events_per_s"])
        say(f"    {name} {label}: {result['events_per_s']:,.0f} events/s "
            f"({result['timed_records']:,} clicks in {result['seconds']} s)"
            + (" (not counted)" if label.startswith("warm-up") else ""))
        if threads := threads_line(result.get("threads")):
            say(f"      threads: {threads}")
        if code := code_line(result):
            say(f"      {code}")
    summary = {name: {"runs": figures, "median_events_per_s": statistics.median(figures)}
               for name, figures in runs.items()}
    return {"backlog_events": backlog, "users": users, "parallelism": parallelism,
            "rounds": rounds, "warmup": warmups, "timing": "engine clicks_done (Prometheus)",
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "builds": {b.name: str(b.root) for b in prepared}, "results": summary}


def main(argv: Sequence[str] | None = None) -> int:
    """Command line: ``python -m jobs.bench.compare NAME=DIR NAME=DIR ...``."""
    parser = argparse.ArgumentParser(prog="python -m jobs.bench.compare", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("builds", nargs="+", metavar="NAME=DIR",
                        help="a build to measure: a name and a nudgeflow checkout")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1,
                        help="untimed drains before the rounds (default 1; 0 for none)")
    parser.add_argument("--backlog", type=int, default=40_000)
    parser.add_argument("--users", type=int, default=3_000)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--job-flags", action="append", default=[], metavar="NAME=FLAGS",
                        help="job flags added to build NAME's runs (repeatable)")
    parser.add_argument("--perf", action="store_true",
                        help="sample the engine's threads with perf: CPU per event by kind of "
                             "code, per drain")
    args = parser.parse_args(argv)
    if args.warmup < 0 or args.rounds < 1:
        parser.error(f"--rounds {args.rounds} --warmup {args.warmup}: expected at least one "
                     "round and no negative number of warm-ups")
    job_flags: dict[str, list[str]] = {}
    for spec in args.job_flags:
        name, sep, flags = spec.partition("=")
        if not sep or not name:
            parser.error(f"--job-flags {spec!r}: expected NAME=FLAGS")
        job_flags.setdefault(name, []).extend(shlex.split(flags))
    builds = []
    for spec in args.builds:
        name, sep, root = spec.partition("=")
        if not sep or not name or not (Path(root) / "jobs" / "job.py").is_file():
            parser.error(f"{spec!r}: expected NAME=DIR, DIR a nudgeflow checkout "
                         "(with jobs/job.py)")
        builds.append((name, Path(root)))
    out = args.out or Path(tempfile.mkdtemp(prefix="nudgeflow-compare-"))
    out.mkdir(parents=True, exist_ok=True)
    print(f"nudgeflow bench compare (results and job logs in {out})")
    from kafka.errors import KafkaError

    try:
        result = compare(builds, args.rounds, args.backlog, args.users, args.parallelism, out,
                         job_flags=job_flags, warmup=args.warmup, perf=args.perf)
    except KafkaError as exc:
        print(f"nudgeflow bench compare: Kafka did not answer ({type(exc).__name__}: {exc}); "
              "the comparison needs the local stack: `nudgeflow stack up`, then run it again",
              file=sys.stderr)
        return 2
    finally:
        delete_run_topics()
    (out / "compare.json").write_text(json.dumps(result, indent=2))
    for name, figures in result["results"].items():
        runs = ", ".join(f"{f:,.0f}" for f in figures["runs"])
        print(f"  {name}: median {figures['median_events_per_s']:,.0f} events/s ({runs})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
