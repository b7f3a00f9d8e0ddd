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
    # checkpoints off: the collection sources finish at once and nothing is transactional here
    return replace(load_config(env={}), parallelism=PARALLELISM, checkpoint_interval_ms=0,
                   delivery_guarantee="at-least-once", jars=jar_urls)


@pytest.fixture
def env(cfg):
    from jobs.env import create_env

    return create_env(cfg, local=True)
