"""Submit the job to a Flink cluster with ``flink run``, shipping the job's Python packages.

The packages (jobs, udfs, schemas, infra, models: code and data files) are zipped into one
archive (``infra.package``) that ``flink run -pyfs`` ships to the cluster and puts on the Python
path of the TaskManagers; the jars (Kafka connector, nudgeflow-flink) go with the job graph through
``pipeline.jars``. The cluster's own configuration names its Python interpreter (see
infra/servers/flink.py for the local one).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from urllib.parse import urlparse

from infra.package import archive_build, build_job_archive
from infra.paths import StackPaths
from infra.servers.flink import pyflink_home


class DeployError(RuntimeError):
    """Submitting or watching the job failed; the message carries Flink's answer."""


def shipped_archive(say: Callable[[str], None] = print) -> Path:
    """Build the job archive ``nudgeflow run`` ships (``infra.package``) under the home.

    The engine's compiled modules (``infra.native``) are built first when they are not
    current, so the archive carries them; if they cannot be built it carries the sources only
    and the engine runs as Python (``say`` tells why).
    """
    from infra import native as native_build

    native_build.ensure(say=say)
    return build_job_archive(StackPaths.from_env().home / "deploy" / "nudgeflow-job.zip")


def refresh_local_taskmanager(build: str, say: Callable[[str], None] = print,
                              rest_url: str = "http://127.0.0.1:8081") -> None:
    """Restart the local stack's TaskManagers unless each can only hold the modules of ``build``.

    ``build`` is the id of the code about to be shipped (``archive_build``).
    ``loaded_code_file`` records ``<build> <TaskManager pid>`` after each submission, or
    ``fresh`` when the TaskManager
    started; a TaskManager is trusted only if the file names this build and its current pid,
    or says ``fresh`` and no job has been active on the cluster since (a job restored onto a
    restarted TaskManager loads its modules without ``nudgeflow run``). Anything else may be
    another build: the TaskManager is restarted, or, while jobs run there, the submission is
    refused. Does nothing when the local TaskManager is not running.

    Raises:
        DeployError: the TaskManager may hold another build and jobs are running on it.
    """
    from infra import stack
    from infra.servers.flink import FlinkTaskManager, loaded_code_file

    paths = StackPaths.from_env()
    running = [(tm, pid) for tm in stack.default_servers(paths)
               if isinstance(tm, FlinkTaskManager)
               and (pid := stack.running_pid(tm, paths)) is not None]
    stale = []
    for taskmanager, pid in running:
        held = _held_build(loaded_code_file(paths, taskmanager.index), pid, rest_url)
        if held not in {build, "fresh"}:
            stale.append((taskmanager, "an unknown build" if held is None
                          else f"build {held[:12]}"))
    if stale:
        names = ", ".join(tm.name for tm, _ in stale)
        what = stale[0][1]
        jobs = _settled_jobs(rest_url)
        if jobs:
            raise DeployError(
                f"the local TaskManager ({names}) may hold the Python modules of {what}, not "
                f"this job's build {build[:12]}, and jobs are running there "
                f"({', '.join(j['id'] for j in jobs)}): thread mode keeps a job's modules "
                "loaded, so this job could run old code. Cancel them (`nudgeflow jobs cancel "
                "--all`) or stop them with a savepoint (`nudgeflow jobs stop ID`), then run "
                "again: the TaskManager is restarted with this build")
        say(f"the local TaskManager ({names}) may hold {what}: restarting it for build "
            f"{build[:12]} (thread mode keeps the old modules loaded)")
        restart = [tm for tm, _ in stale]
        stack.down(paths, restart, say=say)
        stack.up(paths, restart, say=say)
    for taskmanager, _ in running:
        pid = stack.running_pid(taskmanager, paths)
        loaded_code_file(paths, taskmanager.index).write_text(f"{build} {pid}\n")


def _settled_jobs(rest_url: str, timeout_s: float = 60.0) -> list[dict]:
    """The cluster's unfinished jobs, once those being cancelled have ended (or the timeout)."""
    deadline = time.monotonic() + timeout_s
    jobs = running_jobs(rest_url)
    while jobs and all(j["state"] == "CANCELLING" for j in jobs) and \
            time.monotonic() < deadline:
        time.sleep(1)
        jobs = running_jobs(rest_url)
    return jobs


def _held_build(loaded: Path, pid: int, rest_url: str) -> str | None:
    """The build the TaskManager ``pid`` may hold: a digest, ``fresh``, or None (unknown)."""
    try:
        fields = loaded.read_text().split()
        written_ms = loaded.stat().st_mtime * 1000
    except OSError:
        return None
    if fields == ["fresh"]:
        overview = rest_get(rest_url, "/jobs/overview").get("jobs", [])
        active = [j for j in overview
                  if j.get("end-time", -1) in (-1, None) or j["end-time"] >= written_ms]
        return None if active else "fresh"
    if len(fields) == 2 and fields[1] == str(pid):
        return fields[0]
    return None


def flink_run_command(
    rest_url: str,
    job_args: Sequence[str],
    archive: Path,
    detached: bool = True,
    python_executable: str = sys.executable,
    savepoint: str | None = None,
    allow_non_restored_state: bool = False,
) -> list[str]:
    """The ``flink run`` argv that submits ``python -m jobs.job <job_args>`` to a cluster.

    ``python_executable`` is the interpreter on the TaskManagers (``-pyexec``): this one for
    the local stack; the image's Python (e.g. ``python3``) on a real cluster. With
    ``savepoint``, ``allow_non_restored_state`` lets the job start although the savepoint holds
    state of an operator the new job no longer has (Flink's ``-n``: that state is dropped).
    """
    if allow_non_restored_state and not savepoint:
        raise DeployError("allow_non_restored_state applies only when starting from a "
                          "savepoint")
    address = urlparse(rest_url)
    return [
        str(pyflink_home() / "bin" / "flink"),
        "run",
        "-m",
        f"{address.hostname}:{address.port or 8081}",
        *(["-d"] if detached else []),
        *(["-s", savepoint] if savepoint else []),
        *(["-n"] if allow_non_restored_state else []),
        "-pym",
        "jobs.job",
        "-pyfs",
        str(archive),
        "-pyclientexec",
        sys.executable,
        "-pyexec",
        python_executable,
        *job_args,
    ]


def submit(
    rest_url: str,
    job_args: Sequence[str],
    detached: bool = True,
    python_executable: str = sys.executable,
    env: Mapping[str, str] | None = None,
    local_stack: bool = False,
    savepoint: str | None = None,
    allow_non_restored_state: bool = False,
) -> str:
    """Submit the job; return its Flink job id.

    ``env`` is the environment of ``flink run`` (and so of the job's ``main``): secrets travel
    there, never as arguments. ``local_stack``: the cluster is ``nudgeflow stack``'s, whose
    TaskManager is restarted first if it holds older job code.

    Raises:
        DeployError: ``flink run`` failed; the message holds the end of its output.
    """
    from udfs.build import BUILD_ID_ENV

    archive = shipped_archive()
    build = archive_build(archive)
    if local_stack:
        refresh_local_taskmanager(build, rest_url=rest_url)
    cmd = flink_run_command(rest_url, job_args, archive, detached, python_executable, savepoint,
                            allow_non_restored_state)
    # the job's client hands this id to the engines, which check their TaskManager runs it
    run_env = {**(os.environ if env is None else env), BUILD_ID_ENV: build}
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False, env=run_env)
    output = proc.stdout + proc.stderr
    match = re.search(r"JobID ([0-9a-f]{32})", output)
    if proc.returncode != 0 or match is None:
        tail = "\n".join(output.strip().splitlines()[-25:])
        raise DeployError(f"flink run failed (exit {proc.returncode}):\n{tail}")
    return match.group(1)


def rest_get(rest_url: str, path: str) -> dict:
    """GET a Flink REST resource as JSON."""
    try:
        with urllib.request.urlopen(f"{rest_url}{path}", timeout=5) as resp:  # noqa: S310
            return dict(json.load(resp))
    except (urllib.error.URLError, OSError, ValueError) as exc:
        raise DeployError(f"GET {rest_url}{path} failed: {exc}") from None


def job_state(rest_url: str, job_id: str) -> str:
    """The job's state (RUNNING, FINISHED, FAILED, ...)."""
    return str(rest_get(rest_url, f"/jobs/{job_id}")["state"])


def wait_for_state(rest_url: str, job_id: str, states: set[str], timeout_s: float) -> str:
    """Poll until the job reaches one of ``states``; return it."""
    deadline = time.monotonic() + timeout_s
    state = "UNKNOWN"
    while time.monotonic() < deadline:
        state = job_state(rest_url, job_id)
        if state in states:
            return state
        if state in {"FAILED", "CANCELED"}:
            raise DeployError(f"job {job_id} is {state}; see the JobManager log / web UI")
        time.sleep(1)
    raise DeployError(f"job {job_id} is still {state} after {timeout_s:.0f} s")


def cancel(rest_url: str, job_id: str) -> None:
    """Cancel a job (PATCH /jobs/<id>?mode=cancel)."""
    url = f"{rest_url}/jobs/{job_id}?mode=cancel"
    request = urllib.request.Request(url, method="PATCH")  # noqa: S310 - http(s) REST only
    try:
        urllib.request.urlopen(request, timeout=5).close()  # noqa: S310
    except (urllib.error.URLError, OSError) as exc:
        raise DeployError(f"cancelling job {job_id} failed: {exc}") from None


def stop_with_savepoint(rest_url: str, job_id: str, target_dir: str | None = None,
                        timeout_s: float = 300.0) -> str:
    """Stop a job with a savepoint (REST ``/jobs/<id>/stop``); return the savepoint's location.

    Every uid in ``jobs/names.py`` is stable, so a job restarted from it (``run
    --from-savepoint``) keeps all keyed and broadcast state, whatever else changed (the churn
    model, for one).
    """
    body: dict[str, object] = {"drain": False}
    if target_dir:
        body["targetDirectory"] = target_dir
    request = urllib.request.Request(  # noqa: S310 - http(s) REST only
        f"{rest_url}/jobs/{job_id}/stop", data=json.dumps(body).encode(), method="POST",
        headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:  # noqa: S310
            trigger = json.load(resp)["request-id"]
    except (urllib.error.URLError, OSError, ValueError, KeyError) as exc:
        raise DeployError(f"stopping job {job_id} with a savepoint failed: {exc}") from None
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = rest_get(rest_url, f"/jobs/{job_id}/savepoints/{trigger}")
        if status.get("status", {}).get("id") == "COMPLETED":
            operation = status.get("operation", {})
            if "location" in operation:
                return str(operation["location"])
            raise DeployError(f"the savepoint of job {job_id} failed: "
                              f"{operation.get('failure-cause', operation)}")
        time.sleep(1)
    raise DeployError(f"the savepoint of job {job_id} did not complete in {timeout_s:.0f} s")


def running_jobs(rest_url: str) -> list[dict]:
    """Jobs the cluster knows that are not finished (id, name, state)."""
    overview = rest_get(rest_url, "/jobs/overview")
    return [
        {"id": j["jid"], "name": j["name"], "state": j["state"]}
        for j in overview.get("jobs", [])
        if j["state"] not in {"FINISHED", "FAILED", "CANCELED"}
    ]
