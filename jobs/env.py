"""The job's Flink execution environment, configured from ``NudgeflowConfig``.

Input: the configuration (Python execution, bundles, buffers, state backend, checkpoints, the
job's jars, the Prometheus reporter's settings for local runs). Output: a
``StreamExecutionEnvironment``. Nothing here resolves jars or reads the machine's nudgeflow
home: the command line (``jobs.cli``) puts those values into the configuration.
"""

from __future__ import annotations

import os
import sys
import threading
from pathlib import Path
from typing import IO, Any

from pyflink.common import Configuration
from pyflink.datastream import StreamExecutionEnvironment

from jobs.config import ConfigError, NudgeflowConfig


def python_worker_settings() -> dict[str, str]:
    """Settings that make an embedded MiniCluster run Python UDFs with this interpreter.

    Thread mode embeds CPython in the JVM, which ignores a virtualenv's .pth files, so this
    environment's site-packages and the folder holding the job's packages go on its path.
    """
    import site

    package_root = str(Path(__file__).resolve().parent.parent)
    paths = [package_root, *(p for p in site.getsitepackages() if Path(p).is_dir())]
    return {
        "python.executable": sys.executable,
        "python.client.executable": sys.executable,
        "python.pythonpath": ":".join(dict.fromkeys(paths)),
    }


def create_env(cfg: NudgeflowConfig, local: bool) -> StreamExecutionEnvironment:
    """An execution environment configured from ``cfg``.

    Args:
        cfg: the configuration; ``cfg.jars`` must name the job's jars.
        local: True for an embedded MiniCluster in this process; False when a cluster runs the
            job (``flink run``), whose own configuration names the Python interpreter.

    Raises:
        ConfigError: no jars are configured (the message names the setting).
    """
    jar_urls = cfg.jar_urls()
    if not jar_urls:
        raise ConfigError(
            "no jars configured: set jars (--jars or NUDGEFLOW_JARS) to the file:// URLs of the "
            "job's jars (Kafka connector and nudgeflow-flink), separated by ';'; `nudgeflow run` "
            "resolves them (`nudgeflow jars flink` puts them under $NUDGEFLOW_HOME/jars/flink)"
        )
    if local:
        drain_gateway_stderr()  # before anything starts the gateway (``Configuration`` does)
    conf = Configuration()
    settings = {
        "python.execution-mode": cfg.execution_mode,
        "python.fn-execution.bundle.size": str(cfg.bundle_size),
        "python.fn-execution.bundle.time": str(cfg.bundle_time_ms),
        "execution.buffer-timeout.interval": f"{cfg.buffer_timeout_ms} ms",
        "pipeline.auto-watermark-interval": f"{cfg.watermark_interval_ms} ms",
        "state.backend.type": cfg.state_backend,
        "pipeline.name": cfg.job_name,
        "pipeline.jars": ";".join(jar_urls),
    }
    if cfg.checkpoint_interval_ms:
        settings["execution.checkpointing.interval"] = f"{cfg.checkpoint_interval_ms} ms"
        settings["execution.checkpointing.externalized-checkpoint-retention"] = (
            "RETAIN_ON_CANCELLATION"
        )
        if cfg.checkpoint_dir:
            settings["execution.checkpointing.dir"] = cfg.checkpoint_dir
    if local:
        settings.update(python_worker_settings())
        if _has_prometheus_reporter():
            settings.update(cfg.prometheus_settings_map())
    for key, value in settings.items():
        conf.set_string(key, value)
    env = StreamExecutionEnvironment.get_execution_environment(conf)
    env.set_parallelism(cfg.parallelism)
    # explicit, so rescaling never depends on the parallelism the state was first taken at
    # (Flink's default is derived from it: 128 up to parallelism 85, more above)
    env.set_max_parallelism(cfg.max_parallelism)
    return env


def _has_prometheus_reporter() -> bool:
    """Whether this JVM's classpath holds the reporter (``infra.servers.flink.local_run_env``)."""
    lib = os.environ.get("FLINK_LIB_DIR")
    return lib is not None and any(Path(lib).glob("flink-metrics-prometheus*.jar"))


def drain_gateway_stderr() -> None:
    """Copy the embedded MiniCluster JVM's stderr to this process's, so it never fills up.

    PyFlink starts the JVM of a local run with ``stderr=PIPE`` and reads that pipe only when
    the JVM dies before it is up (``pyflink.pyflink_gateway_server``). Whatever the JVM and its
    children write to their stderr later (JVM warnings, the store clients' process's log: one
    WARNING per Cassandra request once the server attaches a warning to each reply) goes into
    a pipe that nobody reads: after 64 KiB the writer blocks for good, and the job with it (a
    drain of 2026-12-06 stopped that way, its membership writer waiting on a Cassandra reply
    that the driver's blocked event loop never read). From here on, a thread copies the pipe
    to file descriptor 2 (the terminal, or the log a tool sends the job's output to).

    Call it before the local gateway starts (``create_env`` does, for ``local=True``): it wraps
    PyFlink's launcher, and a gateway already running keeps its pipe. Calling it again does
    nothing.
    """
    from pyflink import java_gateway

    launch = java_gateway.launch_gateway_server_process
    if getattr(launch, "drains_stderr", False):
        return

    def launch_and_drain(env: dict[str, str], args: list[str]) -> Any:
        process = launch(env, args)
        if process.stderr is not None:
            threading.Thread(target=_copy_to_stderr, args=(process.stderr,),
                             name="gateway-stderr", daemon=True).start()
        return process

    launch_and_drain.drains_stderr = True  # type: ignore[attr-defined]
    java_gateway.launch_gateway_server_process = launch_and_drain


def _copy_to_stderr(stream: IO[bytes]) -> None:
    """Copy ``stream`` to file descriptor 2 until it ends; bytes fd 2 refuses are dropped."""
    read = getattr(stream, "read1", stream.read)
    while chunk := read(65536):
        view = memoryview(chunk)
        while view:
            try:
                written = os.write(2, view)
            except OSError:  # our stderr is gone: keep reading, so the JVM never blocks
                break
            view = view[written:]
