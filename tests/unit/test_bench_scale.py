"""Tests for the pure parts of jobs.bench.scale: shapes, speed-ups, machine and process CPU."""

from __future__ import annotations

import http.server
import os
import threading
import time

import pytest

from jobs.bench import scale


def test_shapes_are_taskmanagers_by_parallelism() -> None:
    assert scale.Shape.parse("2x2") == scale.Shape(2, 2)
    assert str(scale.Shape.parse(" 1x4 ")) == "1x4"
    for bad in ("2", "x2", "2x", "0x1", "9x1", "1x0", "ax2", "2*2"):
        with pytest.raises(ValueError, match="expected TxP"):
            scale.Shape.parse(bad)


def test_a_bad_shape_is_a_usage_error(capsys) -> None:
    with pytest.raises(SystemExit):
        scale.main(["--shapes", "1x1,2"])
    assert "shape '2': expected TxP" in capsys.readouterr().err


def test_speedups_are_medians_over_the_single_taskmanagers() -> None:
    drains = [{"shape": "1x1", "events_per_s": 1_000.0}, {"shape": "2x2", "events_per_s": 1_500.0},
              {"shape": "2x2", "events_per_s": 1_700.0}, {"shape": "1x1", "events_per_s": 1_200.0}]
    summary = scale.speedups(drains)
    assert summary["1x1"] == {"runs": [1_000.0, 1_200.0], "median_events_per_s": 1_100.0,
                              "speedup": 1.0}
    assert summary["2x2"]["median_events_per_s"] == 1_600.0
    assert summary["2x2"]["speedup"] == round(1_600 / 1_100, 2)
    assert scale.speedups([{"shape": "2x2", "events_per_s": 5.0}])["2x2"]["speedup"] is None


def test_the_machine_share_counts_every_cpu() -> None:
    cores = len(os.sched_getaffinity(0))
    # half of all ticks busy for 10 s at 100 events/s: half the cores' 10 s over 1,000 events
    figures = scale.machine_share((100, 1_000), (600, 2_000), 10.0, 100.0)
    assert figures["busy_share"] == 0.5
    assert figures["cpu_us_per_event"] == pytest.approx(0.5 * cores * 10 * 1e6 / 1_000, rel=1e-3)
    before = scale.machine_busy()
    assert 0 < before[0] <= before[1]


def test_processes_are_accounted_to_their_roles() -> None:
    assert scale.role_of("python -m udfs.stores.client_process").startswith("store clients")
    assert scale.role_of("java ... org.apache.flink.runtime.taskexecutor.TaskManagerRunner "
                         "--configDir x").startswith("TaskManagers")
    assert scale.role_of("java -cp kafka.jar kafka.Kafka server.properties") == "Kafka"
    assert scale.role_of("/usr/bin/redis-server 127.0.0.1:6379") == "Redis"
    assert scale.role_of("sleep 5") == "other"
    # a local run's JVM names the Prometheus reporter's jar: it is not Prometheus
    assert scale.role_of("java -cp flink-metrics-prometheus-2.2.1.jar:flink-dist.jar "
                         "org.apache.flink.client.python.PythonGatewayServer").startswith(
                             "a local run's JVM")
    assert scale.role_of("/work/.venv/bin/prometheus --config.file=/s/conf/prometheus/"
                         "prometheus.yml --web.listen-address=127.0.0.1:9090") == "Prometheus"
    tick_us = 1e6 / os.sysconf("SC_CLK_TCK")
    before = {1: ("Kafka", 100), 2: ("Redis", 50), 3: ("Kafka", 10)}
    after = {1: ("Kafka", 300), 2: ("Redis", 50), 4: ("Cassandra", 20)}  # 3 ended, 4 started
    shares = scale.role_shares(before, after, 1_000)
    assert list(shares) == ["Kafka", "Cassandra"]  # busiest first; Redis spent nothing
    assert shares["Kafka"] == pytest.approx(200 * tick_us / 1_000, abs=0.1)
    assert shares["Cassandra"] == pytest.approx(20 * tick_us / 1_000, abs=0.1)


def test_this_process_is_seen_spending_cpu() -> None:
    before = scale.process_ticks()
    deadline = time.process_time() + 0.3
    while time.process_time() < deadline:
        pass
    after = scale.process_ticks()
    mine = os.getpid()
    assert after[mine][1] - before[mine][1] >= 0.2 * os.sysconf("SC_CLK_TCK")


class _Pages(http.server.BaseHTTPRequestHandler):
    pages: dict[int, str] = {}

    def do_GET(self) -> None:  # noqa: N802 - the handler's protocol
        body = self.pages[self.server.server_address[1]].encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def _engine_line(job: str, subtask: int, value: int) -> str:
    from jobs.names import USER_ENGINE_NAME

    return (f'flink_taskmanager_job_task_operator_clicks_done{{job_name="{job}",'
            f'operator_name="{USER_ENGINE_NAME}",subtask_index="{subtask}",}} {value}.0\n')


def test_a_cluster_jobs_progress_is_summed_over_its_taskmanagers_reporters() -> None:
    servers = [http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Pages) for _ in range(3)]
    ports = [s.server_address[1] for s in servers]
    _Pages.pages = {ports[0]: _engine_line("scale-a", 0, 120),
                    ports[1]: _engine_line("scale-a", 1, 30) + _engine_line("other", 0, 999),
                    ports[2]: _engine_line("other", 0, 5)}
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        progress = scale.ClusterProgress("scale-a")
        progress.ports = [*ports, _closed_port()]
        assert progress.clicks_done() == 150
        missing = scale.ClusterProgress("scale-z", wait_s=0)
        missing.ports = ports
        with pytest.raises(RuntimeError, match="scale-z"):
            missing.clicks_done()
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def _closed_port() -> int:
    from tests.ports import free_port

    return free_port()
