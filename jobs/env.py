"""The job's Flink execution environment, configured from ``NudgeflowConfig``.

Input: the configuration (Python execution, bundles, buffers, state backend, checkpoints, the
job's jars, the Prometheus reporter's settings for local runs). Output: a
``StreamExecutionEnvironment``. Nothing here resolves jars or reads the machine's nudgeflow
home: the command line (``jobs.cli``) puts those values into the configuration.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

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
