"""Tests for infra.stack with a fake server: a sleeping Python process instead of Kafka & co.

Every process ``up`` starts is recorded (``_start`` is wrapped) and killed with its process group
in teardown, whatever the test did. No real server, no network except a loopback port check.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from infra import stack
from infra.paths import StackPaths
from infra.servers.base import START_MARKER, NotReady, Server
from infra.servers.registry import RegistryServer
from infra.stack import ServerStatus, StackError
from tests.ports import free_port

SLEEP = "import time; time.sleep(60)"


class FakeServer(Server):
    """A server whose process sleeps; its probe passes unless told otherwise."""

    def __init__(
        self,
        name: str = "fake",
        code: str = SLEEP,
        probe: Callable[[StackPaths], None] | None = None,
        listen: str | None = None,
        start_timeout_s: float = 10.0,
    ) -> None:
        self.name = name
        self.code = code
        self._probe = probe
        self.listen = listen
        self.start_timeout_s = start_timeout_s
        self.prepared = 0

    @property
    def address(self) -> str:
        return self.listen or "127.0.0.1:1"

    def listen_address(self) -> str | None:
        return self.listen

    def prepare(self, paths: StackPaths) -> None:
        self.prepared += 1

    def command(self, paths: StackPaths) -> list[str]:
        return [sys.executable, "-c", self.code]

    def env(self, paths: StackPaths) -> dict[str, str]:
        return {"FAKE_SERVER_NAME": self.name}

    def probe(self, paths: StackPaths) -> None:
        if self._probe is not None:
            self._probe(paths)


def _start_time(pid: int) -> str:
    """Field 22 of /proc/<pid>/stat, computed here independently of infra.stack."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2 :].split()[19]


@pytest.fixture
def started(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[subprocess.Popen[bytes]]]:
    """Every process ``stack._start`` launched during the test; all killed in teardown."""
    processes: list[subprocess.Popen[bytes]] = []
    original = stack._start

    def recording(server: Server, paths: StackPaths) -> subprocess.Popen[bytes]:
        process = original(server, paths)
        processes.append(process)
        return process

    monkeypatch.setattr(stack, "_start", recording)
    yield processes
    for process in processes:
        if process.poll() is None:
            try:
                os.killpg(process.pid, signal.SIGKILL)  # its own group (start_new_session)
            except ProcessLookupError:
                pass
        process.wait(timeout=10)


@pytest.fixture
def paths(tmp_path: Path) -> StackPaths:
    return StackPaths(tmp_path)


# --- up / status / down -------------------------------------------------------------------------


def test_up_starts_and_writes_pid_file(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer()
    said: list[str] = []
    timings = stack.up(paths, [server], say=said.append)

    assert len(started) == 1
    process = started[0]
    assert process.poll() is None
    assert set(timings) == {"fake"}
    assert timings["fake"] >= 0
    assert server.prepared == 1
    pid_text = paths.pid_file("fake").read_text()
    assert pid_text == f"{process.pid} {_start_time(process.pid)}\n"
    assert paths.pid_file("fake") == paths.home / "stack" / "fake.pid"
    assert stack.running_pid(server, paths) == process.pid
    assert any("starting" in line and "fake.out" in line for line in said)
    assert any("ready in" in line for line in said)
    log = Path(server.log_file(paths)).read_text()
    assert "--- nudgeflow stack up at" in log


def test_process_gets_its_own_session_and_env(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer()
    stack.up(paths, [server], say=lambda _: None)
    pid = started[0].pid
    assert os.getpgid(pid) == pid
    assert os.getsid(pid) == pid
    # /proc/<pid>/environ can read empty for a moment right after the start on a busy machine
    deadline = time.monotonic() + 5
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    while environ == [b""] and time.monotonic() < deadline:
        time.sleep(0.05)
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert b"FAKE_SERVER_NAME=fake" in environ


def test_second_up_does_not_start_another(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer()
    stack.up(paths, [server], say=lambda _: None)
    first = stack.running_pid(server, paths)
    said: list[str] = []
    timings = stack.up(paths, [server], say=said.append)

    assert len(started) == 1
    assert stack.running_pid(server, paths) == first == started[0].pid
    assert timings == {"fake": 0.0}
    assert server.prepared == 1
    assert any("already running" in line for line in said)


def test_status_reports_stopped_ready_and_unhealthy(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    healthy = {"ok": True}

    def probe(_: StackPaths) -> None:
        if not healthy["ok"]:
            raise NotReady("GET /health: connection refused")

    server = FakeServer(probe=probe)
    [row] = stack.status(paths, [server])
    assert (row.name, row.state, row.pid, row.detail) == ("fake", "stopped", None, "")

    stack.up(paths, [server], say=lambda _: None)
    [row] = stack.status(paths, [server])
    assert row == ServerStatus("fake", "ready", started[0].pid, "127.0.0.1:1", "",
                               server.log_file(paths))

    healthy["ok"] = False
    [row] = stack.status(paths, [server])
    assert (row.state, row.pid) == ("unhealthy", started[0].pid)
    assert row.detail == "GET /health: connection refused"


def test_down_stops_the_process(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer()
    stack.up(paths, [server], say=lambda _: None)
    process = started[0]
    said: list[str] = []

    assert stack.down(paths, [server], say=said.append, timeout_s=5) == ["fake"]
    assert process.wait(timeout=5) == -signal.SIGTERM
    assert not paths.pid_file("fake").exists()
    assert stack.running_pid(server, paths) is None
    assert said == [f"  {'fake':<18} stopped"]
    [row] = stack.status(paths, [server])
    assert row.state == "stopped"
    # nothing left to stop
    assert stack.down(paths, [server], say=said.append) == []


def test_down_stops_in_reverse_order(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    servers = [FakeServer("one"), FakeServer("two")]
    stack.up(paths, servers, say=lambda _: None)
    assert len(started) == 2
    assert stack.down(paths, servers, say=lambda _: None, timeout_s=5) == ["two", "one"]
    assert all(p.wait(timeout=5) == -signal.SIGTERM for p in started)


def test_down_with_no_servers_stops_nothing(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer()
    stack.up(paths, [server], say=lambda _: None)
    assert stack.down(paths, [], say=lambda _: None, timeout_s=1) == []
    assert started[0].poll() is None
    assert stack.running_pid(server, paths) == started[0].pid
    assert stack.status(paths, []) == []


def test_up_with_a_free_listen_port(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer(listen=f"127.0.0.1:{free_port()}")
    stack.up(paths, [server], say=lambda _: None)
    assert len(started) == 1
    assert stack.running_pid(server, paths) == started[0].pid


def test_up_refuses_a_port_in_use(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        server = FakeServer(listen=address)
        with pytest.raises(StackError, match="already in use") as info:
            stack.up(paths, [server], say=lambda _: None)
    assert address in str(info.value)
    assert started == []
    assert server.prepared == 0
    assert not paths.pid_file("fake").exists()


# --- stale pid files ----------------------------------------------------------------------------


def test_down_with_pid_that_is_not_running(paths: StackPaths) -> None:
    pid_max = int(Path("/proc/sys/kernel/pid_max").read_text())
    paths.stack.mkdir(parents=True)
    paths.pid_file("fake").write_text(f"{pid_max + 1} 12345\n")
    said: list[str] = []

    assert stack.down(paths, [FakeServer()], say=said.append) == []
    assert not paths.pid_file("fake").exists()
    assert said == [f"  {'fake':<18} was not running (stale pid file removed)"]


def test_down_with_recycled_pid_kills_nothing(paths: StackPaths) -> None:
    me = os.getpid()
    wrong = str(int(_start_time(me)) + 1)
    paths.stack.mkdir(parents=True)
    paths.pid_file("fake").write_text(f"{me} {wrong}\n")

    assert stack.running_pid(FakeServer(), paths) is None
    assert stack.down(paths, [FakeServer()], say=lambda _: None, timeout_s=1) == []
    assert not paths.pid_file("fake").exists()
    assert Path(f"/proc/{me}").exists()  # still here, obviously


def test_down_with_recycled_pid_of_a_group_leader_kills_nothing(paths: StackPaths) -> None:
    # a process that leads its own group, like the ones up starts: killpg would reach it
    bystander = subprocess.Popen([sys.executable, "-c", SLEEP], start_new_session=True)
    try:
        paths.stack.mkdir(parents=True)
        paths.pid_file("fake").write_text(f"{bystander.pid} 1\n")
        assert stack.down(paths, [FakeServer()], say=lambda _: None, timeout_s=1) == []
        assert not paths.pid_file("fake").exists()
        assert bystander.poll() is None
    finally:
        bystander.kill()
        bystander.wait(timeout=10)


@pytest.mark.parametrize("content", ["", "garbage", "12 34 56", "abc 1"])
def test_malformed_pid_file_means_not_running(paths: StackPaths, content: str) -> None:
    paths.stack.mkdir(parents=True)
    paths.pid_file("fake").write_text(content)
    assert stack.running_pid(FakeServer(), paths) is None


# --- start-up failures --------------------------------------------------------------------------


def _never_ready(_: StackPaths) -> None:
    raise NotReady("still warming up")


def test_process_that_exits_names_the_log(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer(code="print('boom: bad config', flush=True); raise SystemExit(3)",
                        probe=_never_ready, start_timeout_s=10)
    with pytest.raises(StackError, match="fake exited during start-up") as info:
        stack.up(paths, [server], say=lambda _: None)
    log = server.log_file(paths)
    assert log in str(info.value)
    assert started[0].wait(timeout=5) == 3
    assert "boom: bad config" in Path(log).read_text()


DAMAGED_H2 = ('Caused by: org.h2.jdbc.JdbcSQLSyntaxErrorException: Table "VERSIONS" not found; '
              'SQL statement:')


class ExitingRegistry(RegistryServer):
    """The registry's start-up diagnosis around a process that prints ``line`` and exits."""

    def __init__(self, line: str) -> None:
        super().__init__(port=free_port())
        self.line = line

    def prepare(self, paths: StackPaths) -> None:
        paths.logs(self.name).mkdir(parents=True, exist_ok=True)

    def command(self, paths: StackPaths) -> list[str]:
        return [sys.executable, "-c", f"print({self.line!r}); raise SystemExit(1)"]

    def probe(self, paths: StackPaths) -> None:
        raise NotReady("starting")


def test_a_registry_whose_store_lost_its_tables_says_what_to_do(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = ExitingRegistry(DAMAGED_H2)
    with pytest.raises(StackError, match="registry exited during start-up") as info:
        stack.up(paths, [server], say=lambda _: None)
    message = str(info.value)
    data = paths.data("registry")
    assert "H2 store" in message and f"`mv {data} {data}.broken`" in message
    assert server.log_file(paths) in message


def test_only_the_latest_start_of_the_registry_is_read_for_the_reason(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    log = Path(ExitingRegistry(DAMAGED_H2).log_file(paths))
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text(f"{START_MARKER} 2026-12-06 10:00:00\n{DAMAGED_H2}\n")  # an earlier start
    with pytest.raises(StackError) as info:
        stack.up(paths, [ExitingRegistry("Port 8085 seems to be in use")],
                 say=lambda _: None)
    assert "H2 store" not in str(info.value)
    assert "for the reason" in str(info.value)


def test_probe_that_never_passes_times_out(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    server = FakeServer(probe=_never_ready, start_timeout_s=1)
    with pytest.raises(StackError) as info:
        stack.up(paths, [server], say=lambda _: None)
    message = str(info.value)
    assert "fake was not ready after 1 s" in message
    assert "last probe: still warming up" in message
    assert server.log_file(paths) in message
    assert started[0].poll() is None  # left running for inspection; teardown kills it


def test_server_awaited_after_its_deadline_is_still_probed(
    paths: StackPaths, started: list[subprocess.Popen[bytes]]
) -> None:
    # servers are awaited in turn: while a slow one is awaited, a quick one's timeout may pass
    import time

    def slow(_: StackPaths) -> None:
        time.sleep(1.2)

    waiting = FakeServer(name="slow", probe=slow, start_timeout_s=10)
    quick = FakeServer(name="quick", start_timeout_s=0.5)
    timings = stack.up(paths, [waiting, quick], say=lambda _: None)
    assert timings["quick"] > quick.start_timeout_s


# --- select / format_status ---------------------------------------------------------------------


def test_select_flink_gives_both_processes() -> None:
    servers = stack.default_servers()
    chosen = stack.select(servers, ["flink"])
    assert [s.name for s in chosen] == ["flink-jobmanager", "flink-taskmanager"]


def test_select_keeps_start_order_and_defaults_to_all() -> None:
    servers = stack.default_servers()
    assert [s.name for s in stack.select(servers, ["redis", "kafka"])] == ["kafka", "redis"]
    assert [s.name for s in stack.select(servers, ["flink-taskmanager"])] == [
        "flink-taskmanager"]
    assert stack.select(servers, []) == servers
    assert stack.select(servers, None) == servers


def test_select_unknown_name_lists_known_ones() -> None:
    servers = stack.default_servers()
    with pytest.raises(StackError) as info:
        stack.select(servers, ["kafka", "kafak", "zookeeper"])
    assert str(info.value) == (
        "unknown server(s) kafak, zookeeper; known: kafka, cassandra, redis, prometheus, "
        "registry, flink-jobmanager, flink-taskmanager"
    )


def test_format_status_renders_a_table() -> None:
    rows = [
        ServerStatus("kafka", "ready", 4242, "127.0.0.1:9092", "", "/h/kafka.out"),
        ServerStatus("redis", "stopped", None, "127.0.0.1:6379", "", "/h/redis.out"),
        ServerStatus("cassandra", "unhealthy", 77, "127.0.0.1:9042", "no CQL answer",
                     "/h/cassandra.out"),
    ]
    lines = stack.format_status(rows).split("\n")
    assert lines[0].split() == ["server", "state", "pid", "address", "log"]
    assert lines[1] == (
        f"{'kafka':<18} {'ready':<10} {'4242':>7}  {'127.0.0.1:9092':<24} /h/kafka.out"
    )
    assert lines[2].split() == ["redis", "stopped", "-", "127.0.0.1:6379", "/h/redis.out"]
    assert lines[3].split() == ["cassandra", "unhealthy", "77", "127.0.0.1:9042",
                                "/h/cassandra.out"]
    assert lines[4] == " " * 19 + "no CQL answer"
    assert len(lines) == 5
    # columns line up: every row's state starts where the header's does
    assert {line.index(word) for line, word in zip(lines[1:4], ["ready", "stopped", "unhealthy"],
                                                   strict=True)} == {lines[0].index("state")}


# --- several TaskManagers -----------------------------------------------------------------------


def test_the_stack_runs_as_many_taskmanagers_as_last_set(paths: StackPaths) -> None:
    from infra.servers.flink import set_taskmanager_count, taskmanager_count

    names = [s.name for s in stack.default_servers(paths)]
    assert names == ["kafka", "cassandra", "redis", "prometheus", "registry", "flink-jobmanager",
                     "flink-taskmanager"]
    set_taskmanager_count(paths, 3)
    assert taskmanager_count(paths) == 3
    assert [s.name for s in stack.default_servers(paths)][-3:] == [
        "flink-taskmanager", "flink-taskmanager-2", "flink-taskmanager-3"]
    assert [s.name for s in stack.select(stack.default_servers(paths), ["flink"])] == [
        "flink-jobmanager", "flink-taskmanager", "flink-taskmanager-2", "flink-taskmanager-3"]
    with pytest.raises(ValueError, match="--taskmanagers must be 1..8, got 9"):
        set_taskmanager_count(paths, 9)


def test_each_taskmanager_has_its_own_log_and_code_record(paths: StackPaths) -> None:
    from infra.servers.flink import FlinkTaskManager, loaded_code_file

    first, third = FlinkTaskManager(), FlinkTaskManager(3)
    assert Path(first.log_file(paths)).name == "taskmanager.out"
    assert Path(third.log_file(paths)).name == "taskmanager-3.out"
    assert "FLINK_IDENT_STRING" not in first.env(paths)
    assert third.env(paths)["FLINK_IDENT_STRING"] == "tm3"  # Flink's own log file name
    assert loaded_code_file(paths, 1) != loaded_code_file(paths, 3)
    assert loaded_code_file(paths) == loaded_code_file(paths, 1)


def test_a_taskmanager_is_ready_when_as_many_have_registered(
        paths: StackPaths, monkeypatch: pytest.MonkeyPatch) -> None:
    from infra.servers.flink import FlinkTaskManager

    monkeypatch.setattr(FlinkTaskManager, "overview", lambda self: {"taskmanagers": 2})
    FlinkTaskManager(2).probe(paths)
    with pytest.raises(NotReady, match="has 2 registered TaskManager"):
        FlinkTaskManager(3).probe(paths)


def test_down_stops_taskmanagers_above_the_count_too(paths: StackPaths, started) -> None:
    from infra.servers.flink import FlinkTaskManager, set_taskmanager_count

    class SleepingTaskManager(FlinkTaskManager):
        def prepare(self, paths: StackPaths) -> None:
            paths.logs("flink").mkdir(parents=True, exist_ok=True)

        def command(self, paths: StackPaths) -> list[str]:
            return [sys.executable, "-c", SLEEP]

        def env(self, paths: StackPaths) -> dict[str, str]:
            return {}

        def probe(self, paths: StackPaths) -> None:
            pass

    set_taskmanager_count(paths, 2)
    stack.up(paths, [SleepingTaskManager(2)], say=lambda _: None)
    set_taskmanager_count(paths, 1)  # the count went down while the second still runs
    assert stack.running_pid(SleepingTaskManager(2), paths) is not None
    assert stack.down(paths, say=lambda _: None) == ["flink-taskmanager-2"]


def test_the_job_jvms_run_the_client_compiler_only(paths: StackPaths) -> None:
    """TaskManagers and a local run's MiniCluster get JIT_OPTS; a caller's JVM_ARGS come after
    them (a later HotSpot flag wins), so ``JVM_ARGS=-XX:TieredStopAtLevel=4`` undoes it."""
    import json

    from infra.servers.flink import JIT_OPTS, cluster_config, local_run_env

    assert JIT_OPTS == "-XX:TieredStopAtLevel=1"
    opts = json.loads(cluster_config(paths, 8081, 1))["env"]["java"]["opts"]
    assert opts["taskmanager"] == JIT_OPTS
    assert "jobmanager" not in opts
    assert local_run_env(paths, env={})["JVM_ARGS"] == JIT_OPTS
    mine = local_run_env(paths, env={"JVM_ARGS": "-XX:TieredStopAtLevel=4 -Xmx2g"})["JVM_ARGS"]
    assert mine == f"{JIT_OPTS} -XX:TieredStopAtLevel=4 -Xmx2g"


def _prepared_registry(paths: StackPaths, monkeypatch: pytest.MonkeyPatch) -> RegistryServer:
    from infra.servers import registry

    monkeypatch.setattr(registry, "install", lambda paths: paths.jars("registry"))
    server = RegistryServer(port=free_port())
    server.prepare(paths)
    return server


def test_a_registry_first_start_cut_short_is_moved_aside_and_the_next_starts_empty(
    paths: StackPaths, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from infra.servers.registry import FIRST_START

    server = _prepared_registry(paths, monkeypatch)
    data = paths.data("registry")
    assert (data / FIRST_START).exists()  # an empty store: its first start begins
    (data / "registry.mv.db").write_bytes(b"half-made tables")  # then killed before answering
    server.prepare(paths)
    [aside] = [d for d in data.parent.iterdir() if d.name.startswith("data.unfinished-")]
    assert (aside / "registry.mv.db").read_bytes() == b"half-made tables"  # kept, aside
    assert sorted(p.name for p in data.iterdir()) == [FIRST_START]  # empty, marked again
    assert f"moved aside to {aside}" in capsys.readouterr().err


def test_a_registry_store_that_answered_is_kept(
    paths: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.servers import registry

    server = _prepared_registry(paths, monkeypatch)
    data = paths.data("registry")
    (data / "registry.mv.db").write_bytes(b"schemas")
    probed: list[str] = []
    monkeypatch.setattr(registry, "probe_http", probed.append)
    server.probe(paths)  # it answered: its first start is over
    assert probed == [f"{server.url}/subjects"]
    server.prepare(paths)  # a later start, as for a store made before the mark existed
    assert sorted(p.name for p in data.iterdir()) == ["registry.mv.db"]
    assert (data / "registry.mv.db").read_bytes() == b"schemas"
    assert not [d for d in data.parent.iterdir() if d.name.startswith("data.")]


def test_a_registry_that_does_not_answer_keeps_its_first_start_mark(
    paths: StackPaths, monkeypatch: pytest.MonkeyPatch
) -> None:
    from infra.servers import registry

    server = _prepared_registry(paths, monkeypatch)

    def not_yet(url: str) -> None:
        raise NotReady("connection refused")

    monkeypatch.setattr(registry, "probe_http", not_yet)
    with pytest.raises(NotReady):
        server.probe(paths)
    assert (paths.data("registry") / registry.FIRST_START).exists()
