"""MiniCluster fixtures: one PyFlink environment per test, parallelism 2 (key partitioning bugs
show up only with more than one subtask). The job's jars are resolved here (infra.jars) and
passed in the configuration, as the command line does."""

import pytest

from jobs.config import load_config, replace

PARALLELISM = 2


@pytest.fixture(scope="session")
def jar_urls():
    from infra.jars import jar_urls

    return ";".join(jar_urls("flink"))


@pytest.fixture
def cfg(jar_urls):
    # checkpoints off: the collection sources finish at once and nothing is transactional here;
    # idleness is wall-clock: on a busy machine a 10 s stall would let a split's watermark jump
    # ahead (outputs would depend on load), and the bounded sources end with a final watermark;
    # for the same reason no input is released by processing time (quiet_release_ms)
    return replace(load_config(env={}), parallelism=PARALLELISM, checkpoint_interval_ms=0,
                   delivery_guarantee="at-least-once", jars=jar_urls, idleness_ms=3_600_000,
                   quiet_release_ms=0)


@pytest.fixture
def env(cfg):
    from jobs.env import create_env

    return create_env(cfg, local=True)
