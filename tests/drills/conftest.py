"""Drill fixtures: the real local stack (tests/integration/conftest.py), a configuration of
the drill's own (topics, Redis prefix, Cassandra keyspace), and the drill table printed at the
end of the session (and written to $NUDGEFLOW_HOME/drills/last.md)."""

import os
import uuid

import pytest

from infra.paths import StackPaths
from jobs.config import load_config
from tests.drills import runner
from tests.integration.conftest import local_stack  # noqa: F401 - the shared stack fixture

RESULTS: list[runner.DrillResult] = []


def full_form() -> bool:
    """NUDGEFLOW_DRILLS=full (``nudgeflow drills``) or the reduced form CI runs (default)."""
    return os.environ.get("NUDGEFLOW_DRILLS", "quick") == "full"


@pytest.fixture
def drill_stack(local_stack):  # noqa: F811 - the fixture imported above
    cfg = runner.drill_cfg(load_config(env={}), uuid.uuid4().hex[:8])
    yield runner.Stack(local_stack, cfg)
    runner.drop_drill(cfg)


@pytest.fixture
def record():
    def keep(result):
        RESULTS.append(result)
        print(f"\n{runner.format_table([result])}\n{result.details}", flush=True)
        return result

    return keep


def pytest_terminal_summary(terminalreporter):
    if not RESULTS:
        return
    table = runner.format_table(RESULTS)
    terminalreporter.write_sep("=", f"drill table ({'full' if full_form() else 'reduced'} form)")
    terminalreporter.write_line(table)
    out = StackPaths.from_env().home / "drills"
    out.mkdir(parents=True, exist_ok=True)
    (out / "last.md").write_text(table + "\n")
