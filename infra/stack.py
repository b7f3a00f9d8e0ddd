"""``nudgeflow stack up | down | status | logs``: the real servers on one machine, no Docker.

``up`` prepares and starts each server that is not already running as a child process in its own
session, records ``<pid> <start-time>`` in a pid file (the start time guards against a recycled
pid), waits until every server answers a real request, then provisions topics and tables.
``down`` stops exactly the processes whose pid files it finds, nothing else.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from infra.paths import StackPaths
from infra.servers.base import START_MARKER, NotReady, Server
from infra.servers.cassandra import CassandraServer
from infra.servers.flink import (
    MAX_TASKMANAGERS,
    FlinkJobManager,
    FlinkTaskManager,
    taskmanager_count,
)
from infra.servers.kafka import KafkaServer
from infra.servers.prometheus import PrometheusServer
from infra.servers.redis import RedisServer
from infra.servers.registry import RegistryServer


class StackError(RuntimeError):
    """A server could not be started or did not become ready; the message names its log."""


def default_servers(paths: StackPaths | None = None,
                    taskmanagers: int | None = None) -> list[Server]:
    """The local stack, in start order (the TaskManagers register with the JobManager).

    ``taskmanagers``: how many TaskManagers; default: what ``stack up --taskmanagers`` last
    recorded in the stack directory (1 if never).
    """
    count = taskmanagers if taskmanagers is not None else taskmanager_count(
        paths or StackPaths.from_env())
    return [
        KafkaServer(),
        CassandraServer(),
        RedisServer(),
        PrometheusServer(),
        RegistryServer(),
        FlinkJobManager(),
        *(FlinkTaskManager(index) for index in range(1, count + 1)),
    ]


def select(servers: Sequence[Server], names: Iterable[str] | None) -> list[Server]:
    """The servers named (``flink`` means both Flink processes); all when ``names`` is empty."""
    wanted = [n for n in (names or []) if n]
    if not wanted:
        return list(servers)
    chosen = [s for s in servers if s.name in wanted or s.name.split("-")[0] in wanted]
    unknown = set(wanted) - {s.name for s in chosen} - {s.name.split("-")[0] for s in chosen}
    if unknown:
        known = ", ".join(s.name for s in servers)
        raise StackError(f"unknown server(s) {', '.join(sorted(unknown))}; known: {known}")
    return chosen


# --- pid files ----------------------------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat).

    None when there is no such process, or it is a zombie: a killed server whose parent has
    not reaped it yet (in a container, pid 1 may never reap) is not running.
    """
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may hold spaces; fields after the closing parenthesis are fixed
    fields = stat.rsplit(")", 1)[1].split()
    return None if fields[0] in ("Z", "X") else fields[19]


def running_pid(server: Server, paths: StackPaths) -> int | None:
    """The pid of the server's process if the pid file names a live process we started."""
    pid_file = paths.pid_file(server.name)
    try:
        pid_text, started = pid_file.read_text().split()
        pid = int(pid_text)
    except (OSError, ValueError):
        return None
    if _start_time(pid) != started:
        return None  # exited, or the pid now belongs to someone else
    return pid


def _port_open(address: str) -> bool:
    host_port = address.rsplit("/", 1)[-1] if address.startswith("http") else address
    host, _, port = host_port.rpartition(":")
    try:
        with socket.create_connection((host or "127.0.0.1", int(port)), timeout=0.5):
            return True
    except OSError:
        return False


# --- up -----------------------------------------------------------------------------------------


@dataclass
class _Starting:
    server: Server
    started_at: float
    process: subprocess.Popen[bytes] | None  # None: it was already running


def _start(server: Server, paths: StackPaths) -> subprocess.Popen[bytes]:
    listen = server.listen_address()
    if listen and _port_open(listen):
        raise StackError(
            f"{server.name}: {listen} is already in use by a process nudgeflow did not "
            f"start (no live pid file in {paths.stack}); stop that process or free the port"
        )
    server.prepare(paths)
    log_path = Path(server.log_file(paths))
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"\n{START_MARKER} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode())
        log.flush()
        process = subprocess.Popen(
            server.command(paths),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, **server.env(paths)},
            start_new_session=True,  # its own process group: down stops it and its children
        )
    started = None
    for _ in range(50):  # /proc entry appears at once; be patient on a loaded machine
        started = _start_time(process.pid)
        if started:
            break
        time.sleep(0.01)
    paths.pid_file(server.name).write_text(f"{process.pid} {started}\n")
    return process


def up(
    paths: StackPaths | None = None,
    servers: Sequence[Server] | None = None,
    say: Callable[[str], None] = print,
) -> dict[str, float]:
    """Start what is not running, wait until everything is ready; return seconds to ready.

    Idempotent: a server that is already running and answers its probe is left alone.

    Raises:
        StackError: a server exited or did not become ready within its timeout; the message
            names the server, the last probe error and the log file to read.
    """
    paths = paths or StackPaths.from_env()
    servers = list(default_servers(paths) if servers is None else servers)
    paths.stack.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    pending: list[_Starting] = []
    for server in servers:
        if running_pid(server, paths) is not None:
            say(f"  {server.name:<18} already running ({server.address})")
            _wait_ready(_Starting(server, time.monotonic(), None), paths, say, quiet=True)
            timings[server.name] = 0.0
            continue
        say(f"  {server.name:<18} starting ... (log: {server.log_file(paths)})")
        starting = _Starting(server, time.monotonic(), _start(server, paths))
        if server.name == "flink-jobmanager":
            # the TaskManager registers with the JobManager, so that one is awaited at once;
            # Kafka, Cassandra and Redis start side by side and are awaited after the last launch
            timings[server.name] = _wait_ready(starting, paths, say)
        else:
            pending.append(starting)
    for starting in pending:
        timings[starting.server.name] = _wait_ready(starting, paths, say)
    return timings


def _wait_ready(
    starting: _Starting, paths: StackPaths, say: Callable[[str], None], quiet: bool = False
) -> float:
    server = starting.server
    deadline = starting.started_at + server.start_timeout_s
    last_error = "no probe yet"
    # probe at least once: servers are awaited one after another, so a quick server's deadline
    # may have passed while a slow one was awaited, though it has long been ready
    while True:
        # a child we started that exited stays a zombie (same /proc start time) until reaped,
        # so ask the Popen first; poll() also reaps it
        exited = starting.process is not None and starting.process.poll() is not None
        if exited or running_pid(server, paths) is None:
            hint = server.start_failure_hint(paths)
            raise StackError(
                f"{server.name} exited during start-up; "
                + (f"{hint}; its log: {server.log_file(paths)}" if hint else
                   f"read {server.log_file(paths)} (and the logs next to it) for the reason")
            )
        try:
            server.probe(paths)
        except NotReady as exc:
            last_error = str(exc)
            if time.monotonic() >= deadline:
                break
            time.sleep(0.5)
            continue
        elapsed = time.monotonic() - starting.started_at
        if not quiet:
            say(f"  {server.name:<18} ready in {elapsed:.1f} s ({server.address})")
        return elapsed
    raise StackError(
        f"{server.name} was not ready after {server.start_timeout_s:.0f} s; last probe: "
        f"{last_error}; read {server.log_file(paths)}"
    )


# --- down / status / logs -----------------------------------------------------------------------


def down(
    paths: StackPaths | None = None,
    servers: Sequence[Server] | None = None,
    say: Callable[[str], None] = print,
    timeout_s: float = 45.0,
) -> list[str]:
    """Stop the processes ``up`` started (reverse order), SIGTERM then SIGKILL; return names."""
    paths = paths or StackPaths.from_env()
    stopped = []
    # every TaskManager that may run, whatever the count now says: only pid files found count
    everything = default_servers(paths, MAX_TASKMANAGERS)
    for server in reversed(list(everything if servers is None else servers)):
        pid = running_pid(server, paths)
        pid_file = paths.pid_file(server.name)
        if pid is None:
            if pid_file.exists():
                pid_file.unlink()
                say(f"  {server.name:<18} was not running (stale pid file removed)")
            continue
        _terminate_group(pid, timeout_s)
        pid_file.unlink(missing_ok=True)
        stopped.append(server.name)
        say(f"  {server.name:<18} stopped")
    return stopped


def _terminate_group(pid: int, timeout_s: float) -> None:
    def signal_group(sig: int) -> None:
        try:
            os.killpg(pid, sig)  # the group leader's pid is the group id (start_new_session)
        except ProcessLookupError:
            pass

    signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not _group_alive(pid):
            return
        time.sleep(0.2)
    signal_group(signal.SIGKILL)
    while _group_alive(pid):
        time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:  # field 5: process group id
            return True
    return False


@dataclass(frozen=True)
class ServerStatus:
    """One line of ``stack status``."""

    name: str
    state: str  # ready | starting/unhealthy | stopped
    pid: int | None
    address: str
    detail: str
    log: str


def status(paths: StackPaths | None = None, servers: Sequence[Server] | None = None,
           ) -> list[ServerStatus]:
    """Each server's state: ready (answers its probe), unhealthy (running, no answer), stopped."""
    paths = paths or StackPaths.from_env()
    rows = []
    for server in default_servers(paths) if servers is None else servers:
        pid = running_pid(server, paths)
        if pid is None:
            state, detail = "stopped", ""
        else:
            try:
                server.probe(paths)
                state, detail = "ready", ""
            except NotReady as exc:
                state, detail = "unhealthy", str(exc)
        rows.append(ServerStatus(server.name, state, pid, server.address, detail,
                                 server.log_file(paths)))
    return rows


def format_status(rows: Sequence[ServerStatus]) -> str:
    """A table of ``status`` rows."""
    lines = [f"{'server':<18} {'state':<10} {'pid':>7}  {'address':<24} log"]
    for r in rows:
        pid = str(r.pid) if r.pid else "-"
        lines.append(f"{r.name:<18} {r.state:<10} {pid:>7}  {r.address:<24} {r.log}")
        if r.detail:
            lines.append(f"{'':<18} {r.detail}")
    return "\n".join(lines)


def tail_log(server: Server, paths: StackPaths, lines: int = 50, follow: bool = False) -> None:
    """Print the end of a server's console log (``tail -n``, ``-f`` to follow)."""
    log = server.log_file(paths)
    if not Path(log).exists():
        raise StackError(f"{server.name} has no log yet at {log}; has it been started?")
    args = ["tail", "-n", str(lines), *(["-f"] if follow else []), log]
    try:
        subprocess.run(args, check=False, stdout=sys.stdout)
    except KeyboardInterrupt:
        pass
