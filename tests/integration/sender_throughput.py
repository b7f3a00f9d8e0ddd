"""Measure `nudgeflow sender`'s throughput and CPU cost on the running local stack (not a test).

    .venv/bin/python -m tests.integration.sender_throughput [--triggers 20000] [--code DIR]

Produces a backlog of ``--triggers`` TriggerEvents, spread evenly over the four tier topics and
the channels, into topics of its own (``it-<run>-*``, deleted at the end), then runs one
``python -m jobs.cli sender`` process (console adapter, Redis dedupe, default batch size and
starvation limit) with the source tree ``--code`` (default: this checkout) and reads its
stdout. Printed: deliveries per second and CPU seconds (user + system, every thread of the
sender) per 1,000 deliveries, both over the span from the first to the last delivery, so that
start-up (imports, joining the group) is not counted; the whole run's CPU is printed too.

It needs Kafka and Redis up (it never starts or stops the stack) and prints figures only:
there is no timing assertion.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

from jobs.cli import wiring
from jobs.config import as_flags, isolated, load_config
from schemas.codec import Codec
from tests.integration.test_sender_e2e import produce_transactions
from tests.unit.test_sender import make_trigger
from udfs.campaigns.grammar import CHANNELS, TIERS

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """User + system CPU of a live process, all its threads (/proc/<pid>/stat fields 14, 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def produce_backlog(cfg, triggers: int) -> None:
    codec = Codec.load()
    records = []
    for i in range(triggers):
        tier = TIERS[i % len(TIERS)]
        trigger = make_trigger(f"t-{i:06d}", tier=tier, user_id=f"u-{i % 997}",
                               channel=CHANNELS[i % len(CHANNELS)])
        records.append((cfg.trigger_topic(tier), trigger["user_id"].encode(),
                        codec.encode("TriggerEvent", trigger)))
    produce_transactions(cfg, [(records[i:i + 1000], True) for i in range(0, len(records), 1000)])


def measure(cfg, code: Path, triggers: int) -> dict[str, float]:
    cmd = [sys.executable, "-m", "jobs.cli", "sender", *as_flags(cfg), "--group",
           f"{cfg.consumer_group}-sender", "--max-triggers", str(triggers), "--report-every", "0",
           "--dedupe-ttl", "600"]
    env = {**os.environ, "PYTHONPATH": str(code)}
    started = time.monotonic()
    proc = subprocess.Popen(cmd, cwd=code, env=env, stdout=subprocess.PIPE, text=True, bufsize=1)
    assert proc.stdout is not None
    delivered = 0
    first = last = (0.0, 0.0)
    tail = []
    for line in proc.stdout:
        if line.startswith("[P"):
            mark = (time.monotonic(), cpu_seconds(proc.pid))
            if delivered == 0:
                first = mark
            delivered += 1
            if delivered == triggers:
                last = mark
        else:
            tail.append(line.rstrip())
    _, status, usage = os.wait4(proc.pid, 0)
    total = time.monotonic() - started
    if os.waitstatus_to_exitcode(status) != 0 or delivered != triggers:
        raise SystemExit(f"the sender in {code} exited with {status} after {delivered} of "
                         f"{triggers} deliveries:\n" + "\n".join(tail[-30:]))
    span = last[0] - first[0]
    return {"span_s": span, "per_s": (delivered - 1) / span,
            "cpu_per_1000": (last[1] - first[1]) / (delivered - 1) * 1000,
            "run_s": total, "run_cpu_s": usage.ru_utime + usage.ru_stime}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--triggers", type=int, default=20_000)
    parser.add_argument("--code", type=Path, default=Path(__file__).resolve().parents[2],
                        help="source tree whose jobs.cli sender runs (default: this checkout)")
    args = parser.parse_args(argv)
    cfg = isolated(load_config(env={}), f"it-{uuid.uuid4().hex[:8]}")
    wiring.provision_topics(cfg, say=lambda _: None)
    try:
        produce_backlog(cfg, args.triggers)
        figures = measure(cfg, args.code.resolve(), args.triggers)
    finally:
        wiring.delete_run_topics(cfg, cfg.consumer_group)
    print(f"sender at {args.code}: {args.triggers:,} deliveries, "
          f"{figures['per_s']:,.0f} deliveries/s and {figures['cpu_per_1000']:.3f} CPU s per "
          f"1,000 deliveries (first to last delivery, {figures['span_s']:.2f} s); whole run "
          f"{figures['run_s']:.1f} s, {figures['run_cpu_s']:.2f} CPU s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
