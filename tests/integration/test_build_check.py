"""The build check on the real stack (udfs/build.py, infra/deploy.py):

- a job whose build id is not the build its TaskManager runs fails at open with BuildMismatch,
  naming both builds and what to do (no silent run of other code);
- `nudgeflow run` restarts the local TaskManager when it may hold another build.
"""

import os
import subprocess
import time

import pytest

from infra import deploy, stack
from infra.paths import StackPaths
from infra.servers.flink import FlinkTaskManager, loaded_code_file
from jobs.cli import wiring
from jobs.config import as_flags
from tests.integration import flink_jobs
from udfs.build import BUILD_ID_ENV

pytestmark = pytest.mark.integration


def test_a_job_of_another_build_fails_at_open_naming_both_builds(isolated_cfg):
    cfg = isolated_cfg
    archive = deploy.shipped_archive()
    cmd = deploy.flink_run_command(cfg.flink_rest_url, [
        *as_flags(cfg), "--starting-offsets", "earliest", *wiring.cluster_job_flags(cfg)],
        archive)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300,
                          env={**os.environ, BUILD_ID_ENV: "0" * 64})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    job_id = proc.stdout.split("JobID ")[1].split()[0]
    try:
        deadline = time.monotonic() + 120
        entries = []
        while not entries:
            assert time.monotonic() < deadline, "the job never failed"
            time.sleep(2)
            history = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}/exceptions")
            entries = history.get("exceptionHistory", {}).get("entries", [])
    finally:
        flink_jobs.cancel(cfg, job_id)
    trace = entries[0]["stacktrace"]
    assert "BuildMismatch" in trace
    assert "submitted as build 000000000000" in trace
    assert "restart the TaskManager" in trace.replace("Restart", "restart")


def test_nudgeflow_run_restarts_a_taskmanager_that_may_hold_another_build(isolated_cfg):
    cfg = isolated_cfg
    paths = StackPaths.from_env()
    taskmanager = FlinkTaskManager()
    before = stack.running_pid(taskmanager, paths)
    loaded_code_file(paths).write_text(f"{'f' * 64} {before}\n")
    job_id = flink_jobs.submit(cfg)
    flink_jobs.wait_until_open(cfg, job_id)  # not cancelled while its operators load
    flink_jobs.cancel(cfg, job_id)
    after = stack.running_pid(taskmanager, paths)
    assert after is not None and after != before
    build, pid = loaded_code_file(paths).read_text().split()
    assert pid == str(after) and build != "f" * 64
