"""Steady-state events/s of the job on the local stack, draining a pre-loaded backlog.

``python -m jobs.bench_engine [--events N] [--users U] [--parallelism P] [--churn on|off]
[--delivery-guarantee ...]`` loads a seeded workload into fresh topics, starts the job in an
embedded MiniCluster (unbounded) and times the consumer group's committed offsets from 5% of
the backlog to all of it (offsets commit on checkpoints: every 2 s here). It prints one line of
figures. The full benchmark harness (``nudgeflow bench``) is a later issue; this is the engine's
own yardstick, e.g. for churn scoring on versus off.
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import time
import uuid

from infra import provision
from infra.paths import StackPaths
from infra.servers.flink import local_run_env
from jobs import generate
from jobs.config import ISOLATION_FIELDS, NudgeflowConfig, as_flags, load_config, replace
from jobs.workload import WorkloadSpec

_TOPIC_FIELDS = tuple(f for f in ISOLATION_FIELDS if f.endswith("_topic"))


def fresh_config() -> tuple[str, NudgeflowConfig]:
    """A run tag and a configuration of the run's own (topics provisioned).

    Its topics, consumer group, transactional ids and Redis keys are this run's alone, so runs
    never read each other's records.
    """
    tag = f"bench-{uuid.uuid4().hex[:6]}"
    cfg = replace(load_config(env={}), consumer_group=tag, transactional_id_prefix=tag,
                  redis_key_prefix=tag, trigger_topic_prefix=f"{tag}-triggers-",
                  **{f: f"{tag}-{f.removesuffix('_topic')}" for f in _TOPIC_FIELDS})
    provision.provision_topics(cfg, say=lambda _: None)
    return tag, cfg


def measure(events: int, users: int, parallelism: int, guarantee: str, churn: str,
            timeout_s: float = 900.0) -> float:
    """Events/s of the job draining ``events`` generated clicks of ``users`` users."""
    from kafka import KafkaAdminClient

    tag, cfg = fresh_config()
    spec = WorkloadSpec(users=users, events=events, seed=3)
    spec = dataclasses.replace(spec, start_ms=generate.recent_start_ms(spec))
    generate.produce(spec, cfg.kafka_bootstrap, clicks_topic=cfg.clicks_topic,
                     metadata_topic=cfg.user_metadata_topic, progress=False)
    args = [sys.executable, "-m", "jobs.job", "--local", "--starting-offsets", "earliest",
            "--parallelism", str(parallelism), "--delivery-guarantee", guarantee,
            "--checkpoint-interval-ms", "2000", "--churn-model", "off" if churn == "off" else "",
            *as_flags(cfg)]
    job = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                           env=local_run_env(StackPaths.from_env()))
    admin = KafkaAdminClient(**cfg.python_client_kwargs())

    def committed() -> int:
        offsets = admin.list_group_offsets(tag).get(tag, {})
        return sum(meta.offset for tp, meta in offsets.items()
                   if tp.topic == cfg.clicks_topic and meta.offset > 0)

    start: tuple[float, int] | None = None
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            done, now = committed(), time.monotonic()
            if start is None and done >= events * 0.05:
                start = (now, done)
            if start is not None and done >= events:
                return (done - start[1]) / (now - start[0])
            if job.poll() is not None:
                raise RuntimeError(f"the job exited with {job.returncode}")
            time.sleep(0.5)
        raise RuntimeError(f"the job did not drain {events} events in {timeout_s:.0f} s")
    finally:
        job.terminate()
        job.wait(60)
        admin.close()


def main() -> None:
    """Run one measurement and print it."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=40_000)
    parser.add_argument("--users", type=int, default=2_000)
    parser.add_argument("--parallelism", type=int, default=1)
    parser.add_argument("--delivery-guarantee", default="at-least-once",
                        choices=["at-least-once", "exactly-once"])
    parser.add_argument("--churn", default="on", choices=["on", "off"])
    args = parser.parse_args()
    rate = measure(args.events, args.users, args.parallelism, args.delivery_guarantee,
                   args.churn)
    print(f"engine: {rate:,.0f} events/s  (events={args.events:,} users={args.users:,} "
          f"parallelism={args.parallelism} {args.delivery_guarantee} churn={args.churn})")


if __name__ == "__main__":
    main()
