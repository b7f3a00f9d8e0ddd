#!/usr/bin/env bash
# Run the whole test suite: unit (pure Python), pipeline (PyFlink MiniCluster) and integration
# (the real Kafka, Cassandra, Redis and Flink of `nudgeflow stack`, started by the tests if they
# are not running and stopped again afterwards). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
# Debian packages, the venv, jars, and promtool in .venv/bin (tests/unit/test_prometheus_rules.py
# runs `promtool test rules` and fails without it)
bash infra/bootstrap.sh
.venv/bin/python -m ruff check jobs udfs schemas infra tests
# type checks of jobs, udfs, schemas and infra (files and settings: pyproject.toml [tool.mypy])
.venv/bin/python -m mypy
# the 30 slowest tests are listed at the end: where CI time goes
exec .venv/bin/python -m pytest tests --durations=30 "$@"
