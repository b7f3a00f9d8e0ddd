"""A Flink standalone session cluster from the pyflink wheel's own distribution.

The apache-flink wheel carries a whole Flink (``pyflink/bin``, ``lib``, ``opt``, ``plugins``).
The JobManager and one TaskManager (or N: ``nudgeflow stack up --taskmanagers N``) run as
foreground processes (``jobmanager.sh start-foreground``), so ``nudgeflow stack`` owns their
pids. Configuration and
logs live under the stack directory (``FLINK_CONF_DIR``, ``FLINK_LOG_DIR``); Python UDFs run in
thread mode with this environment's interpreter.
"""

from __future__ import annotations

import json
import shutil
import site
import sys
import urllib.error
import urllib.request
from pathlib import Path

from infra.paths import StackPaths
from infra.servers.base import NotReady, Server

CONF_NAME = "flink"

#: Prometheus scrapes each Flink process on the first free port of this range (JobManager
#: first, then TaskManagers; a local MiniCluster is one process)
PROMETHEUS_PORTS = "9249-9259"

#: Metrics the Prometheus reporter leaves out (Flink's ``<scopes>:<names>`` filter, one spec so it
#: needs no ';' list): the Kafka clients' own metrics (~90 a consumer, ~80 a producer), the
#: network shuffle's buffers and the sources' per-split watermarks. Together they were ~830 of
#: the job's 2,041 series and ~44% of a 1.1-1.3 MB page that took the TaskManager 63-136 ms to
#: serve every scrape; nothing the rules or the dashboard read is among them
#: (``tests/unit/test_prometheus_rules.py``), and Flink's REST API still has them all.
REPORTER_EXCLUDES = ("*.KafkaSourceReader.KafkaConsumer,*.KafkaProducer,*.Shuffle.*,"
                     "*.split.watermark:*")


def reporter_ports() -> range:
    """The ports of ``PROMETHEUS_PORTS``, one per Flink process that may serve ``/metrics``."""
    first, _, last = PROMETHEUS_PORTS.partition("-")
    return range(int(first), int(last or first) + 1)


#: the most TaskManagers the local stack starts (each takes 3 GiB and a reporter port)
MAX_TASKMANAGERS = 8


def prometheus_settings() -> dict[str, str]:
    """Flink settings that export metrics to Prometheus (``/metrics`` on a port above).

    Every metric but ``REPORTER_EXCLUDES``.
    """
    return {
        "metrics.reporter.prom.factory.class":
            "org.apache.flink.metrics.prometheus.PrometheusReporterFactory",
        "metrics.reporter.prom.port": PROMETHEUS_PORTS,
        "metrics.reporter.prom.filter.excludes": REPORTER_EXCLUDES,
    }


def local_lib_dir(paths: StackPaths) -> Path:
    """A lib/ for local (MiniCluster) runs: the wheel's jars plus the Prometheus reporter.

    A metric reporter is loaded from the JVM's classpath at start, which PyFlink's gateway builds
    from ``FLINK_LIB_DIR``; a job's own jars come too late.
    """
    from infra.jars import ensure_jars

    lib = paths.jars("flink-local-lib")
    _link_jars(lib, [*(pyflink_home() / "lib").glob("*.jar"),
                     *ensure_jars("metrics", paths, quiet=True).glob("*.jar")])
    return lib


#: The JIT of the JVMs that run the job (a local run's MiniCluster, the TaskManagers): the
#: client compiler (C1) only. The job's Java is a few µs of an event (the Kafka source and sink,
#: state, the records to and from Python), but the server compiler (C2) kept compiling Flink's and
#: the Kafka client's code through every benchmark drain (35-77 s of a fresh JVM), at 11-15% of
#: a core (~15-23 µs of CPU an event) taken from the Python engine on a 2-core machine; without
#: it the same drains ran 12-17% faster, and the engine thread's JIT-compiled Java cost ~1 µs an
#: event more (docs/performance.md, the ninth session). On a machine whose cores sit idle, or
#: for a job that runs unchanged for days, C2 may pay back: ``JVM_ARGS=-XX:TieredStopAtLevel=4``
#: for a local run, ``env.java.opts.taskmanager`` in a cluster's config (docs/operations.md).
JIT_OPTS = "-XX:TieredStopAtLevel=1"


def local_run_env(paths: StackPaths, env: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of a ``python -m jobs.job --local`` process: Prometheus on its classpath.

    PyFlink starts its JVM when the job module is imported, with the classpath of
    ``FLINK_LIB_DIR``; so the variable is set for the child process, not inside it, together
    with ``FLINK_HOME`` (without it PyFlink resets ``FLINK_LIB_DIR`` to the wheel's lib/).
    """
    import os

    base = os.environ if env is None else env
    # PyFlink's launcher puts JVM_ARGS first on the java command line: the caller's own flags
    # come after ours, and a later HotSpot flag wins (``-XX:TieredStopAtLevel=4`` undoes it)
    jvm_args = f"{JIT_OPTS} {base.get('JVM_ARGS', '')}".strip()
    return {**base, "FLINK_HOME": str(pyflink_home()),
            "FLINK_LIB_DIR": str(local_lib_dir(paths)), "JVM_ARGS": jvm_args}


def _link_jars(lib: Path, jars: list[Path]) -> None:
    if lib.exists():
        shutil.rmtree(lib)
    lib.mkdir(parents=True)
    for jar in jars:
        (lib / jar.name).symlink_to(jar)


def pyflink_home() -> Path:
    """The Flink distribution inside the installed apache-flink wheel."""
    import pyflink

    return Path(pyflink.__file__).resolve().parent


def python_path_entries() -> list[str]:
    """Directories the embedded (thread mode) interpreter must see: this env's site-packages.

    The JVM embeds CPython through pemja, which does not read a virtualenv's ``.pth`` files, so
    site-packages (for pyflink and the job's libraries) goes on the TaskManager's PYTHONPATH.
    """
    return [p for p in site.getsitepackages() if Path(p).is_dir()]


def cluster_config(paths: StackPaths, rest_port: int, slots: int) -> str:
    """The session cluster's config.yaml (Flink 2.x nested YAML)."""
    checkpoints = (paths.stack / "flink" / "checkpoints").as_uri()
    savepoints = (paths.stack / "flink" / "savepoints").as_uri()
    doc = {
        "env": {"java": {"opts": {"all": _java_opts(), "taskmanager": JIT_OPTS}}},
        "jobmanager": {
            "bind-host": "127.0.0.1",
            "rpc": {"address": "127.0.0.1", "port": 6123},
            "memory": {"process": {"size": "1024m"}},
            "execution": {"failover-strategy": "region"},
        },
        "taskmanager": {
            "bind-host": "127.0.0.1",
            "host": "127.0.0.1",
            "numberOfTaskSlots": slots,
            "memory": {"process": {"size": "3072m"}},
            # with several TaskManagers, a job's slots are spread over them (not packed into
            # the first): parallelism 2 on two TaskManagers runs on both
            "load-balance": {"mode": "SLOTS"},
        },
        "parallelism": {"default": 1},
        "metrics": {
            "reporter": {"prom": {
                "factory": {"class": prometheus_settings()["metrics.reporter.prom.factory.class"]},
                "port": PROMETHEUS_PORTS,
                "filter": {"excludes": [REPORTER_EXCLUDES]}}},
            # the REST API's operator metrics (records read by a source: the tests wait on
            # them) are refreshed at most this often (Flink's default: 10 s), and only while
            # something asks for them
            "fetcher": {"update-interval": 1000},
        },
        "rest": {"address": "127.0.0.1", "bind-address": "127.0.0.1", "port": rest_port},
        "state": {"backend": {"type": "hashmap"}},
        "execution": {
            "checkpointing": {
                "dir": checkpoints,
                "savepoint-dir": savepoints,
                "externalized-checkpoint-retention": "RETAIN_ON_CANCELLATION",
            }
        },
        # a TaskManager that dies (kill -9, OOM) is noticed within 10 s instead of 50 s, and
        # the job keeps retrying with backoff until a TaskManager offers slots again
        "heartbeat": {"interval": 2000, "timeout": 10000},  # ms: valid as Long and Duration
        "restart-strategy": {
            "type": "exponential-delay",
            "exponential-delay": {"initial-backoff": "1 s", "max-backoff": "10 s",
                                  "backoff-multiplier": 2.0, "jitter-factor": 0.1},
        },
        "python": {
            "execution-mode": "thread",
            "executable": sys.executable,
            "client": {"executable": sys.executable},
        },
    }
    # JSON is valid YAML, and Flink 2.x reads config.yaml with a standard YAML parser
    return json.dumps(doc, indent=2) + "\n"


def _java_opts() -> str:
    conf = (pyflink_home() / "conf" / "config.yaml").read_text()
    for line in conf.splitlines():
        if line.strip().startswith("all: --add-exports"):
            return line.split("all:", 1)[1].strip()
    return ""


class _FlinkProcess(Server):
    role: str  # jobmanager | taskmanager

    def __init__(self, rest_port: int = 8081, slots: int = 4) -> None:
        self.rest_port = rest_port
        self.slots = slots

    @property
    def address(self) -> str:
        """The cluster's REST endpoint (web UI)."""
        return f"http://127.0.0.1:{self.rest_port}"

    def prepare(self, paths: StackPaths) -> None:
        """Copy the distribution's logging configs and write config.yaml into the stack."""
        conf = paths.conf(CONF_NAME)
        conf.mkdir(parents=True, exist_ok=True)
        paths.logs(CONF_NAME).mkdir(parents=True, exist_ok=True)
        (paths.stack / "flink" / "checkpoints").mkdir(parents=True, exist_ok=True)
        for source in (pyflink_home() / "conf").iterdir():
            if source.name != "config.yaml":
                shutil.copy2(source, conf / source.name)
        (conf / "config.yaml").write_text(cluster_config(paths, self.rest_port, self.slots))
        # The wheel's lib/ lacks flink-python (the client adds it for local runs); a cluster
        # needs it on the JobManager's and TaskManagers' classpath for Python operators.
        # The Prometheus reporter joins them (a reporter is loaded at process start).
        from infra.jars import ensure_jars

        home = pyflink_home()
        _link_jars(self._lib_dir(paths), [
            *(home / "lib").glob("*.jar"), *(home / "opt").glob("flink-python*.jar"),
            *ensure_jars("metrics", paths, quiet=True).glob("*.jar")])

    @staticmethod
    def _lib_dir(paths: StackPaths) -> Path:
        return paths.stack / "flink" / "lib"

    def command(self, paths: StackPaths) -> list[str]:
        """``<pyflink>/bin/<role>.sh start-foreground``; the script execs the JVM."""
        return ["bash", str(pyflink_home() / "bin" / f"{self.role}.sh"), "start-foreground"]

    def env(self, paths: StackPaths) -> dict[str, str]:
        """Point the scripts at the stack's conf, log and pid directories."""
        return {
            "FLINK_CONF_DIR": str(paths.conf(CONF_NAME)),
            "FLINK_LOG_DIR": str(paths.logs(CONF_NAME)),
            "FLINK_PID_DIR": str(paths.stack / "flink"),
            "FLINK_LIB_DIR": str(self._lib_dir(paths)),
            # The embedded interpreter takes its path from the process environment; the job's
            # configuration (which wins over config.yaml) does not carry python.pythonpath.
            "PYTHONPATH": ":".join(python_path_entries()),
        }

    def log_file(self, paths: StackPaths) -> str:
        """Console output of the process (the Flink log itself is next to it)."""
        return str(paths.logs(CONF_NAME) / f"{self.role}.out")

    def overview(self) -> dict[str, object]:
        """GET /overview of the REST API."""
        try:
            with urllib.request.urlopen(f"{self.address}/overview", timeout=3) as resp:  # noqa: S310
                return dict(json.load(resp))
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise NotReady(f"GET {self.address}/overview failed: {exc}") from None


class FlinkJobManager(_FlinkProcess):
    """The session cluster's JobManager (REST API and web UI)."""

    name = "flink-jobmanager"
    role = "jobmanager"
    start_timeout_s = 90.0

    def probe(self, paths: StackPaths) -> None:
        """The REST overview answers."""
        self.overview()


class FlinkTaskManager(_FlinkProcess):
    """A TaskManager of the session cluster (runs the job's tasks and Python UDFs).

    The first is ``flink-taskmanager``; with ``--taskmanagers N`` the others are
    ``flink-taskmanager-2`` ... ``-N``, each a process of its own with its own console log,
    Flink log and record of the job code it loaded.
    """

    name = "flink-taskmanager"
    role = "taskmanager"
    start_timeout_s = 90.0

    def __init__(self, index: int = 1, rest_port: int = 8081, slots: int = 4) -> None:
        super().__init__(rest_port, slots)
        if not 1 <= index <= MAX_TASKMANAGERS:
            raise ValueError(f"TaskManager index must be 1..{MAX_TASKMANAGERS}, got {index}")
        self.index = index
        if index > 1:
            self.name = f"flink-taskmanager-{index}"

    def env(self, paths: StackPaths) -> dict[str, str]:
        """The shared environment; a log name of its own (the scripts name logs by ident)."""
        env = super().env(paths)
        if self.index > 1:
            env["FLINK_IDENT_STRING"] = f"tm{self.index}"
        return env

    def log_file(self, paths: StackPaths) -> str:
        """Console output of this TaskManager."""
        suffix = "" if self.index == 1 else f"-{self.index}"
        return str(paths.logs(CONF_NAME) / f"{self.role}{suffix}.out")

    def listen_address(self) -> str | None:
        """The TaskManager serves no fixed port of its own (the REST port is the JobManager's)."""
        return None

    def prepare(self, paths: StackPaths) -> None:
        """Shared configuration, and a fresh TaskManager has loaded no job code yet."""
        super().prepare(paths)
        loaded_code_file(paths, self.index).write_text("fresh\n")

    def probe(self, paths: StackPaths) -> None:
        """The REST overview counts as many registered TaskManagers as this one's index."""
        overview = self.overview()
        registered = int(str(overview.get("taskmanagers", 0)))
        if registered < self.index:
            raise NotReady(f"the JobManager has {registered} registered TaskManager(s), "
                           f"waiting for {self.index}")


def taskmanager_count(paths: StackPaths) -> int:
    """How many TaskManagers the stack runs: what ``stack up --taskmanagers`` last set, or 1."""
    try:
        return int((paths.stack / CONF_NAME / "taskmanagers").read_text())
    except (OSError, ValueError):
        return 1


def set_taskmanager_count(paths: StackPaths, count: int) -> None:
    """Record how many TaskManagers the stack runs (``stack down`` and ``status`` read it)."""
    if not 1 <= count <= MAX_TASKMANAGERS:
        raise ValueError(f"--taskmanagers must be 1..{MAX_TASKMANAGERS}, got {count}")
    (paths.stack / CONF_NAME).mkdir(parents=True, exist_ok=True)
    (paths.stack / CONF_NAME / "taskmanagers").write_text(f"{count}\n")


def loaded_code_file(paths: StackPaths, index: int = 1) -> Path:
    """``<build> <pid>`` of the job code a local TaskManager imported, or ``fresh``.

    Thread mode runs every job's Python in the TaskManager's one embedded interpreter, which
    keeps imported modules across jobs: a job with changed code would run the old modules. So
    ``nudgeflow run`` restarts the local TaskManager unless this file proves it holds the same
    build (``udfs.build``; see ``infra.deploy.refresh_local_taskmanager``).
    """
    suffix = "" if index == 1 else f"-{index}"
    return paths.stack / "flink" / f"taskmanager{suffix}-code.sha256"
