"""Rescaling by savepoint on the real stack: a job at parallelism 2 on two TaskManagers takes
the first half of a workload, is stopped with a savepoint, and is started from it at
parallelism 4 on four TaskManagers (Flink redistributes the keyed state by key group) for the
second half. Its outputs must equal an
uninterrupted run's at parallelism 2 over the whole workload, record for record: segment
changes, triggers and decisions. That needs every user's features, membership, clock (pending
inputs, due times), campaign state and event-time timer to survive the move to another subtask.

The workload has no out-of-order or duplicate clicks (an input behind its user's clock within
the lateness bound is applied at the clock, the one case where arrival order counts; a duplicate
sent long after its original, past the features' dedup window, is such an input), and the
priority policy's audience weight is 0 (the audience factor reads live segment sizes from Redis on a
wall-clock period): so both runs are functions of the events alone. Nothing is released by
processing time (``quiet_release_ms`` 0): a sentinel click after each half, in both runs, moves
event time past it, and the halves are split at a quiet stretch, so the second half's clicks
are never behind a check the first half's watermark already ran."""

from __future__ import annotations

import shutil
import time
import uuid
from collections import Counter

import pytest

from infra import deploy, stack
from infra.servers.flink import FlinkTaskManager, set_taskmanager_count, taskmanager_count
from jobs.cli import wiring
from jobs.config import ISOLATION_FIELDS, isolated, load_config, replace
from jobs.names import USER_ENGINE_NAME
from jobs.workload.workload import WorkloadSpec
from schemas.codec import Codec
from tests.builders import click
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw
from tests.integration.test_erasure_e2e import metric_total
from tests.integration.test_triggers_e2e import prometheus_lines
from tests.integration.workloads import recent_workload
from udfs.catalog.files import CAMPAIGN_CATALOG_DIR

pytestmark = pytest.mark.integration

SPEC = WorkloadSpec(users=150, events=3000, seed=23, out_of_order_fraction=0.0,
                    duplicate_fraction=0.0)
FIELDS = (*ISOLATION_FIELDS, "parallelism", "checkpoint_interval_ms", "idleness_ms",
          "allowed_lateness_ms", "quiet_release_ms", "campaigns_dir")
#: the quietest stretch between the workload's halves must be this long (see ``_split``)
GAP_MS = 10_000


@pytest.fixture
def reference_cfg(local_stack):
    """A second run's own topics (the uninterrupted run)."""
    tag = f"it-{uuid.uuid4().hex[:8]}"
    cfg = isolated(load_config(env={}), tag)
    wiring.provision_topics(cfg, say=lambda _: None)
    yield cfg
    wiring.delete_run_topics(cfg, tag)


@pytest.fixture
def scale_to(local_stack):
    """``scale_to(n)``: the stack runs n TaskManagers; the count before is restored after."""
    before = taskmanager_count(local_stack)

    def scale(count):
        set_taskmanager_count(local_stack, count)
        stack.down(local_stack, [FlinkTaskManager(i) for i in range(count + 1, 9)])
        stack.up(local_stack, [FlinkTaskManager(i) for i in range(1, count + 1)])

    yield scale
    scale(before)


def _engine_taskmanagers(cfg, job_id, expected, timeout_s=60):
    """The TaskManagers running the job's engine subtasks, once there are ``expected``."""
    deadline = time.monotonic() + timeout_s
    while True:
        vertices = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}")["vertices"]
        [engine] = [v for v in vertices if v["name"].startswith(USER_ENGINE_NAME)]
        placed = deploy.rest_get(cfg.flink_rest_url,
                                 f"/jobs/{job_id}/vertices/{engine['id']}/taskmanagers")
        found = {tm["taskmanager-id"] for tm in placed.get("taskmanagers", [])
                 if tm.get("status") == "RUNNING"}
        if len(found) >= expected or time.monotonic() > deadline:
            return found
        time.sleep(1)


def _campaigns_without_audience(target):
    campaigns = target / "campaigns"
    shutil.copytree(CAMPAIGN_CATALOG_DIR, campaigns)
    policy = (CAMPAIGN_CATALOG_DIR.parent / "priority-policy.yaml").read_text()
    assert "audience: 0.1," in policy
    (campaigns / "priority-policy.yaml").write_text(policy.replace("audience: 0.1,",
                                                                   "audience: 0.0,"))
    return campaigns


def _profiles_first(cfg, job_id, profiles):
    """Give the job the profiles before any click.

    The metadata backlog is not in ``updated_at`` order, so its watermark runs ahead of the
    profiles still unread; a click read meanwhile can be applied before its user's profile,
    which is then applied late (at the user's clock): an arrival-order effect. Waits until the
    metadata source passed on all ``profiles``.
    """
    flink_jobs.wait_until_open(cfg, job_id)
    flink_jobs.wait_until_read(cfg, job_id, "user-metadata", profiles)


def _wait_done(cfg, job_id, clicks, timeout_s=300):
    """Until the engine is done with ``clicks`` clicks (applied, duplicates, dead letters);
    none dead-lettered as late. (``inputs_applied_late`` is not 0: the conversions the job
    attributes come back through the outcomes topic a checkpoint later, behind their users'
    clocks; only journeys read them, and none runs here.)"""
    deadline = time.monotonic() + timeout_s
    while metric_total(lines := prometheus_lines(job_id), "clicks_done") < clicks:
        assert time.monotonic() < deadline, (
            f"job {job_id}: {metric_total(lines, 'clicks_done')} of {clicks} clicks done "
            f"after {timeout_s} s")
        time.sleep(1)
    assert metric_total(lines, "events_late") == 0


def _stop_and_read(cfg, job_id, readers, savepoints):
    """Stop the job with a savepoint, then read every output to its end; returns the savepoint.

    Exactly-once: the savepoint commits everything the job emitted before its barrier, which
    follows every click the job was given (``_wait_done`` saw them done, the timers their
    watermarks fired included), and nothing is written after it, so each topic's end is final.
    """
    savepoint = deploy.stop_with_savepoint(cfg.flink_rest_url, job_id, savepoints)
    for reader in readers:
        reader.read_to_end()
    return savepoint


def _outputs(changes, triggers, decisions):
    """The runs' records as multisets, without processing-time fields."""
    return (
        Counter((r["user_id"], r["segment_id"], r["change"], r["event_time"],
                 r["definition_version"], r["reason"], r["change_id"])
                for _, name, r in changes.records if name == "SegmentChange"),
        Counter((r["trigger_id"], r["campaign_id"], r["channel"], r["tier"],
                 r["cause_event_id"], r["cause_event_time"])
                for reader in triggers for _, name, r in reader.records
                if name == "TriggerEvent"),
        Counter((r["trigger_id"], r["campaign_id"], r["outcome"], r["reason_code"],
                 r["deferred_until"], r["decided_at"])
                for _, name, r in decisions.records if name == "TriggerDecision"),
    )


def _split(events):
    """The clicks before and after the quiet stretch (``GAP_MS`` at least) nearest the middle."""
    times = sorted(e["event_time"] for e in events)
    gaps = [i for i in range(1, len(times)) if times[i] - times[i - 1] >= GAP_MS]
    assert gaps, "the workload has no quiet stretch to split at"
    cut = times[min(gaps, key=lambda i: abs(i - len(times) // 2))]
    return ([e for e in events if e["event_time"] < cut],
            [e for e in events if e["event_time"] >= cut])


def _readers(cfg, codec):
    return (TopicReader(cfg, cfg.segment_changes_topic, codec),
            [TopicReader(cfg, topic, codec) for topic in cfg.trigger_topics().values()],
            TopicReader(cfg, cfg.trigger_decisions_topic, codec))


def test_a_savepoint_restored_at_twice_the_parallelism_gives_the_uninterrupted_outputs(
        isolated_cfg, reference_cfg, scale_to, tmp_path):
    codec = Codec.load()
    campaigns = str(_campaigns_without_audience(tmp_path))
    # idleness well above any fetch stall while a backlog is read: a partition counted idle
    # lets the others move event time on, and its clicks then arrive behind their users'
    # clocks (applied late: an arrival-order effect the comparison would show)
    common = {"checkpoint_interval_ms": 1000, "idleness_ms": 10_000, "quiet_release_ms": 0,
              "allowed_lateness_ms": 24 * 3_600_000, "campaigns_dir": campaigns}
    rescaled = replace(isolated_cfg, parallelism=2, **common)
    uninterrupted = replace(reference_cfg, parallelism=2, **common)
    users, events = recent_workload(SPEC, f"{rescaled.consumer_group}-")
    first, second = _split(events)
    sentinel = f"{rescaled.consumer_group}-sentinel"
    first, second = ([*half, click(f"{sentinel}-{n}", sentinel, "PAGE_VIEW",
                                   max(e["event_time"] for e in half) + GAP_MS // 2)]
                     for n, half in ((1, first), (2, second)))
    metadata = [(u["user_id"].encode(), codec.encode("UserMetadata", u)) for u in users]

    def clicks(part):
        return [(e["user_id"].encode(), codec.encode("ClickEvent", e)) for e in part]

    # the rescaled run: half at parallelism 2 on two TaskManagers, savepoint, the rest at
    # parallelism 4 on four
    scale_to(2)
    produce_raw(rescaled, rescaled.user_metadata_topic, metadata)
    outputs_r = _readers(rescaled, codec)
    job_id = flink_jobs.submit(rescaled, fields=FIELDS)
    try:
        _profiles_first(rescaled, job_id, len(users))
        assert len(_engine_taskmanagers(rescaled, job_id, 2)) == 2
        produce_raw(rescaled, rescaled.clicks_topic, clicks(first))
        _wait_done(rescaled, job_id, len(first) - 1)  # its sentinel waits for the next
        savepoint = _stop_and_read(rescaled, job_id, [outputs_r[0], outputs_r[2]],
                                   (tmp_path / "savepoints").as_uri())
        job_id = None
        scale_to(4)
        produce_raw(rescaled, rescaled.clicks_topic, clicks(second))
        job_id = flink_jobs.submit(replace(rescaled, parallelism=4), "--from-savepoint",
                                   savepoint, fields=FIELDS)
        vertices = deploy.rest_get(rescaled.flink_rest_url, f"/jobs/{job_id}")["vertices"]
        assert {v["parallelism"] for v in vertices if "engine" in v["name"].lower()} == {4}
        assert len(_engine_taskmanagers(rescaled, job_id, 4)) == 4
        # the first sentinel (restored, pending) and the second half but its sentinel
        _wait_done(rescaled, job_id, len(second))
        _stop_and_read(rescaled, job_id, [outputs_r[0], *outputs_r[1], outputs_r[2]],
                       (tmp_path / "savepoints").as_uri())
        job_id = None
    finally:
        if job_id is not None:
            flink_jobs.cancel(rescaled, job_id)

    # the uninterrupted run: everything at parallelism 2 on two TaskManagers
    scale_to(2)
    produce_raw(uninterrupted, uninterrupted.user_metadata_topic, metadata)
    outputs_u = _readers(uninterrupted, codec)
    job_id = flink_jobs.submit(uninterrupted, fields=FIELDS)
    try:
        _profiles_first(uninterrupted, job_id, len(users))
        produce_raw(uninterrupted, uninterrupted.clicks_topic, clicks([*first, *second]))
        _wait_done(uninterrupted, job_id, len(first) + len(second) - 1)
        _stop_and_read(uninterrupted, job_id, [outputs_u[0], *outputs_u[1], outputs_u[2]],
                       (tmp_path / "savepoints").as_uri())
        job_id = None
    finally:
        if job_id is not None:
            flink_jobs.cancel(uninterrupted, job_id)

    got, expected = _outputs(*outputs_r), _outputs(*outputs_u)
    for reader in (outputs_r[0], *outputs_r[1], outputs_r[2], outputs_u[0], *outputs_u[1],
                   outputs_u[2]):
        reader.close()
    # the second half leans on state from the first: memberships entered before the cut end
    # after it (a job without the restored state could not EXIT them)
    cut = min(e["event_time"] for e in second)
    entered = {(r["user_id"], r["segment_id"]) for _, n, r in outputs_r[0].records
               if n == "SegmentChange" and r["change"] == "ENTER" and r["event_time"] < cut}
    assert any((r["user_id"], r["segment_id"]) in entered
               for _, n, r in outputs_r[0].records
               if n == "SegmentChange" and r["change"] == "EXIT" and r["event_time"] >= cut)
    names = ("segment changes", "triggers", "decisions")
    assert sum(expected[0].values()) > 100 and sum(expected[1].values()) > 10, \
        "the workload must exercise segments and campaigns (else this proves nothing)"
    for name, mine, theirs in zip(names, got, expected, strict=True):
        assert mine == theirs, (f"{name} differ: only after the rescale "
                                f"{list((mine - theirs).items())[:5]}, only uninterrupted "
                                f"{list((theirs - mine).items())[:5]}")
