"""Submitting the job to the stack's Flink cluster from integration tests."""

import re
import subprocess
import sys
import time

from infra import deploy
from jobs.config import ISOLATION_FIELDS, as_flags


def submit(cfg, *extra, fields=ISOLATION_FIELDS):
    """``nudgeflow run --no-watch`` with ``cfg``'s ``fields`` as flags; the running job's id."""
    cmd = [sys.executable, "-m", "jobs.cli", "run", "--no-watch", *as_flags(cfg, fields),
           "--starting-offsets", "earliest", *extra]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = re.search(r"job ([0-9a-f]{32}) submitted", proc.stdout).group(1)
    deploy.wait_for_state(cfg.flink_rest_url, job_id, {"RUNNING"}, 120)
    return job_id


def cancel(cfg, job_id):
    """Cancel the job unless it already ended."""
    if deploy.job_state(cfg.flink_rest_url, job_id) not in {"FAILED", "FINISHED", "CANCELED"}:
        deploy.cancel(cfg.flink_rest_url, job_id)


def wait_until_open(cfg, job_id, timeout_s=120):
    """Wait until every task of the job is RUNNING: its operators opened, its modules loaded.

    A test that cancels a job at once cancels it while its Python operators are still loading;
    waiting first keeps every test's job a whole one.
    """
    deadline = time.monotonic() + timeout_s
    while True:
        vertices = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}").get("vertices", [])
        if vertices and all(v.get("status") == "RUNNING" for v in vertices):
            return
        assert time.monotonic() < deadline, f"job {job_id}: tasks not all RUNNING: " + ", ".join(
            f"{v.get('name')}: {v.get('status')}" for v in vertices) + _root_exception(cfg, job_id)
        time.sleep(0.5)


def _root_exception(cfg, job_id):
    """The job's latest root exception (why it restarts), for an assertion message."""
    try:
        history = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}/exceptions")
    except Exception as exc:  # noqa: BLE001 - only a diagnosis
        return f"; its exceptions could not be read: {exc}"
    entries = history.get("exceptionHistory", {}).get("entries", [])
    text = entries[0].get("stacktrace", "") if entries else history.get("root-exception", "")
    return f"; latest exception: {text[:3000]}" if text else "; no exception recorded"


def wait_until_read(cfg, job_id, source, count, timeout_s=120):
    """Wait until the vertex of the Kafka source ``source`` has passed on ``count`` records.

    For a test whose premise is that records reached the engine before what it sends next,
    in place of a sleep:

    - profiles before clicks: the metadata input goes idle for good once quiet for
      ``idleness_ms`` after its task starts running, so on a loaded machine a backlog read later
      than that no longer holds event time back, and a click sent at once could be applied first;
    - clicks before a click that moves event time on (a "clock"): with a short ``idleness_ms``
      a partition the source reads later than the clock's (a fresh topic's partitions are not
      always fetched at once) is idle by then, so the clock moves the watermark past the clicks
      before they are read, and they are late (seen in CI: a cart dead-lettered as late).

    ``count`` is the vertex's total since the job started. Flink's REST metrics lag by up to its
    fetcher interval (the local stack's ``metrics.fetcher.update-interval``: 1 s).
    """
    deadline = time.monotonic() + timeout_s
    while True:
        vertices = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}").get("vertices", [])
        written = [v.get("metrics", {}).get("write-records", 0) for v in vertices
                   if f"Kafka source: {source} " in v.get("name", "")]
        assert len(written) <= 1, f"more than one vertex reads {source}"
        if written and written[0] >= count:
            return
        assert time.monotonic() < deadline, (
            f"job {job_id}: {source} passed on {written[0] if written else 0} of {count} records "
            f"in {timeout_s} s" + _root_exception(cfg, job_id))
        time.sleep(0.5)
