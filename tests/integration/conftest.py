"""The real local stack, started once per pytest session.

If every server is already up (a developer's `nudgeflow stack up`), it is reused and left
running; otherwise the fixture starts what is missing and stops exactly that at the end.
Each test gets its own topics, consumer group and transactional id prefix, so tests never see
each other's records.
"""

import uuid

import pytest

from infra import stack
from infra.paths import StackPaths
from jobs.cli import wiring
from jobs.config import isolated, load_config, replace


@pytest.fixture(scope="session")
def local_stack():
    paths = StackPaths.from_env()
    servers = stack.default_servers()
    running_before = {s.name for s in servers if stack.running_pid(s, paths) is not None}
    stack.up(paths, servers)
    base_cfg = load_config(env={})
    wiring.provision_topics(base_cfg)
    wiring.provision_cassandra(base_cfg)
    yield paths
    started = [s for s in servers if s.name not in running_before]
    stack.down(paths, started)


@pytest.fixture
def isolated_cfg(local_stack):
    """A configuration whose topics, group and transactional ids are this test's alone."""
    run = uuid.uuid4().hex[:8]
    cfg = replace(isolated(load_config(env={}), f"it-{run}"), checkpoint_interval_ms=2000,
                  parallelism=2)
    wiring.provision_topics(cfg, say=lambda _: None)
    yield cfg
    wiring.delete_run_topics(cfg, f"it-{run}")
