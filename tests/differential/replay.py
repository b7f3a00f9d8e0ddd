"""Run a seeded workload through the real job graph on a MiniCluster, and read what it emitted.

``workload(users, events, days, seed)`` builds the canonical input (generated with
``jobs.workload``, duplicates removed, sorted by event time); ``shuffled`` reorders it within the
out-of-orderness bound and adds duplicates; ``run_job`` runs ``jobs.job.build`` with collection
sources and the fake membership store of tests/pipeline/fakes.py and returns the decoded output
records by kind.
"""

from __future__ import annotations

import glob
import random
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from jobs.workload.workload import WorkloadSpec, generate_events, generate_users

DAY_MS = 86_400_000


@dataclass
class Workload:
    """Clicks (dicts, in event-time order, no duplicates) and every user's metadata."""

    clicks: list[dict[str, Any]]
    metadata: list[dict[str, Any]]


def workload(users: int, events: int, days: float, seed: int = 7) -> Workload:
    """A seeded workload of about ``days`` simulated days, in event-time order, deduplicated."""
    # the generator's span is about events / (users * sessions per day * 5.6) days
    rate = events / (users * 5.6 * days)
    spec = WorkloadSpec(users=users, events=events, seed=seed,
                        sessions_per_user_per_day=rate, duplicate_fraction=0.0)
    seen: set[str] = set()
    clicks = []
    for event in generate_events(spec):
        if event["event_id"] not in seen:
            seen.add(event["event_id"])
            clicks.append(event)
    clicks.sort(key=lambda e: (e["event_time"], e["event_id"]))
    metadata = sorted(generate_users(spec), key=lambda m: (m["updated_at"], m["user_id"]))
    return Workload(clicks, metadata)


def shuffled(clicks: list[dict[str, Any]], bound_ms: int, duplicates: float, seed: int
             ) -> list[dict[str, Any]]:
    """The clicks reordered within ``bound_ms`` of event time, with a share of duplicates.

    Each record is placed by its event time plus a random delay in [0, bound_ms): a record that
    arrives after another is at most ``bound_ms`` older than it, so none is behind the
    watermark. Duplicates (equal copies) are placed the same way, independently.
    """
    rng = random.Random(seed)
    keyed = [(e["event_time"] + rng.randrange(bound_ms), rng.random(), e) for e in clicks]
    keyed += [(e["event_time"] + rng.randrange(bound_ms), rng.random(), dict(e))
              for e in clicks if rng.random() < duplicates]
    keyed.sort(key=lambda k: (k[0], k[1]))
    return [e for _, _, e in keyed]


@dataclass
class JobOutput:
    """Decoded output records of one run, and how long it took."""

    changes: list[dict[str, Any]] = field(default_factory=list)
    triggers: list[dict[str, Any]] = field(default_factory=list)
    decisions: list[dict[str, Any]] = field(default_factory=list)
    dead_letters: list[dict[str, Any]] = field(default_factory=list)
    conversions: list[dict[str, Any]] = field(default_factory=list)  # CONVERTED outcomes
    seconds: float = 0.0

    def changes_by_key(self) -> dict[tuple[str, str], list[tuple[Any, ...]]]:
        """(user, segment) -> its changes in event-time order: (change, time, reason, version)."""
        out: dict[tuple[str, str], list[tuple[Any, ...]]] = defaultdict(list)
        for c in sorted(self.changes, key=lambda c: (c["event_time"], c["change_id"])):
            out[(c["user_id"], c["segment_id"])].append(
                (c["change"], c["event_time"], c["reason"], c["definition_version"]))
        return dict(out)


def run_job(env: Any, cfg: Any, clicks: list[dict[str, Any]],
            metadata: list[dict[str, Any]], store_path: str) -> JobOutput:
    """Run the job's graph over the given clicks and metadata (in that arrival order)."""
    from pyflink.common import Row

    from jobs.connectors import click_watermarks
    from jobs.job import build, file_definitions
    from schemas.codec import Codec
    from tests.pipeline.fakes import FileWriterFactory
    from udfs.flink.descriptors import SOURCE_RECORD_ROW

    codec = Codec.load()

    def rows(topic: str, records: list[dict[str, Any]], name: str, time_of: Any) -> list[Row]:
        return [Row(topic, 0, i, time_of(r), r["user_id"].encode(), codec.encode(name, r), None)
                for i, r in enumerate(records)]

    click_rows = rows("clicks", [{k: v for k, v in c.items() if k != "ingest_time"}
                                 for c in clicks], "ClickEvent", lambda r: r["event_time"])
    meta_rows = rows("user-metadata", metadata, "UserMetadata", lambda r: r["updated_at"])
    outputs = build(
        env.from_collection(click_rows, type_info=SOURCE_RECORD_ROW)
        .assign_timestamps_and_watermarks(click_watermarks(cfg)),
        env.from_collection(meta_rows, type_info=SOURCE_RECORD_ROW),
        env.from_collection([], type_info=SOURCE_RECORD_ROW),
        cfg, file_definitions(cfg), None, store=FileWriterFactory(store_path))
    from pyflink.common import Types

    from tests.differential.sink import AppendToFile

    out_path = store_path + ".out"
    outputs.all().process(AppendToFile(out_path), output_type=Types.STRING()).print()
    out = JobOutput()
    started = time.monotonic()
    env.execute("differential")
    out.seconds = time.monotonic() - started
    kinds = {"SegmentChange": out.changes, "TriggerEvent": out.triggers,
             "TriggerDecision": out.decisions, "DeadLetter": out.dead_letters,
             "CampaignOutcome": out.conversions}
    for part in sorted(glob.glob(out_path + ".*")):
        with open(part) as lines:
            for line in lines:
                name, record = codec.decode_named(bytes.fromhex(line.strip()))
                kinds[name].append(record)
    return out
