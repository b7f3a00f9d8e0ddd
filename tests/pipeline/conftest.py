"""MiniCluster fixtures: one PyFlink environment per test, parallelism 2 (key partitioning bugs
show up only with more than one subtask)."""

import pytest

from jobs.config import load_config, replace

PARALLELISM = 2


@pytest.fixture
def cfg():
    # checkpoints off: the collection sources finish at once and nothing is transactional here
    return replace(load_config(env={}), parallelism=PARALLELISM, checkpoint_interval_ms=0,
                   delivery_guarantee="at-least-once")


@pytest.fixture
def env(cfg):
    from jobs.job import create_env

    return create_env(cfg, local=True)
