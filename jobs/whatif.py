"""The what-if job: the engine of ``jobs.job`` over history, writing nothing anywhere.

``nudgeflow defs what-if`` (``jobs.cli.whatif``) starts this module once per side of its
comparison (the live definitions; the live plus the candidate ones) as
``python -m jobs.whatif PLAN OUT``. PLAN is a pickled ``WhatIfPlan``; OUT receives every record
the engine emits, one base64-encoded Avro record per line, flushed every quarter second, so the
parent can show progress while the job runs.

The graph is ``jobs.job.build`` itself, so the answer is the live job's answer; what differs:

- the inputs are bounded (the topics up to their end at start, or the records of a file), read
  under a consumer group of the run's own with checkpointing off, so no offset of the live job's
  group moves;
- the definitions are the plan's, given as the engine's initial definitions; the control topic
  is not read;
- segment membership goes nowhere (``udfs.stores.membership.DiscardingStore``; the audience
  sizes the priority matrix reads are the live ones the plan was given), there are no campaign
  statistics (no ROI is published), and the outputs are collected here, not sent to Kafka.
"""

from __future__ import annotations

import base64
import pickle
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from jobs.config import NudgeflowConfig


@dataclass(frozen=True)
class WhatIfPlan:
    """One side of a what-if comparison, handed from the CLI to the job process."""

    cfg: NudgeflowConfig  # a bounded replay's configuration (``jobs.job.bounded_replay``)
    definitions: list[dict[str, Any]]  # the DefinitionUpdates the engine starts from
    audience_sizes: dict[str, int]  # the live segment sizes, fixed for the run
    clicks: list[tuple[bytes, bytes, int]] | None = None  # (key, value, timestamp); None: topic
    metadata: list[tuple[bytes, bytes, int]] | None = None  # the same for UserMetadata


def _collection(env: Any, topic: str, records: list[tuple[bytes, bytes, int]]) -> Any:
    from pyflink.common import Row

    from udfs.flink.descriptors import SOURCE_RECORD_ROW

    rows = [Row(topic, 0, offset, timestamp, key, value, None)
            for offset, (key, value, timestamp) in enumerate(records)]
    return env.from_collection(rows, type_info=SOURCE_RECORD_ROW)


def run(plan: WhatIfPlan, out_path: str) -> int:
    """Run one side; every emitted record goes to ``out_path``. Returns the number written."""
    from pyflink.common import Types

    from jobs import names
    from jobs.connectors import click_watermarks, kafka_records
    from jobs.env import create_env
    from jobs.job import build, churn_model_files
    from udfs.stores.membership import DiscardingStore

    cfg = plan.cfg
    env = create_env(cfg, local=True)
    if plan.clicks is not None:
        clicks = _collection(env, cfg.clicks_topic, plan.clicks).assign_timestamps_and_watermarks(
            click_watermarks(cfg))
        outcomes = None  # outcomes answer sends of the topic's history, not of a file's
    else:
        clicks = kafka_records(env, cfg, cfg.clicks_topic, names.CLICKS_SOURCE_UID,
                               names.CLICKS_SOURCE_NAME, bounded=True,
                               watermarks=click_watermarks(cfg))
        outcomes = kafka_records(env, cfg, cfg.outcomes_topic, names.OUTCOMES_SOURCE_UID,
                                 names.OUTCOMES_SOURCE_NAME, bounded=True)
    if plan.metadata is not None:
        metadata = _collection(env, cfg.user_metadata_topic, plan.metadata)
    else:
        metadata = kafka_records(env, cfg, cfg.user_metadata_topic, names.METADATA_SOURCE_UID,
                                 names.METADATA_SOURCE_NAME, bounded=True)
    no_definitions = _collection(env, cfg.definitions_topic, [])
    outputs = build(clicks, metadata, no_definitions, cfg, plan.definitions,
                    churn_model_files(cfg),
                    DiscardingStore(tuple(sorted(plan.audience_sizes.items()))),
                    outcomes=outcomes, stats_store=None)
    # collected as text: a Java byte[] crosses to this process element by element (one Py4J
    # call per byte; 50,000 records took minutes), a String in one call
    lines = outputs.all().map(record_line, output_type=Types.STRING()).name("what-if records")
    written, flushed_at = 0, time.monotonic()
    with open(out_path, "w", encoding="ascii") as out, \
            lines.execute_and_collect(cfg.job_name + "-what-if") as results:
        for line in results:
            out.write(line + "\n")
            written += 1
            if time.monotonic() - flushed_at >= 0.25:  # the parent's progress bar reads it
                out.flush()
                flushed_at = time.monotonic()
    return written


def record_line(row: Any) -> str:
    """An output Row(topic, key, value) as one line: its Avro value in base64."""
    return base64.b64encode(bytes(row[2])).decode("ascii")


def _exit_with_parent() -> None:
    """End this process when the CLI that started it is gone (killed, or its terminal closed).

    Without it a killed ``defs what-if`` leaves its MiniCluster running for the whole replay.
    """
    import os
    import threading

    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1)
        os._exit(3)

    threading.Thread(target=watch, name="exit-with-parent", daemon=True).start()


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m jobs.whatif PLAN OUT`` (started by ``nudgeflow defs what-if``)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) != 2:
        raise SystemExit("usage: python -m jobs.whatif PLAN OUT (started by `nudgeflow defs "
                         "what-if`)")
    _exit_with_parent()
    with open(args[0], "rb") as handle:
        plan = pickle.load(handle)  # noqa: S301 - written by our own parent process
    run(plan, args[1])


if __name__ == "__main__":
    main()
