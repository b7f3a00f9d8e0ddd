"""Every test session runs the engine's compiled modules (``udfs.native``), as the job does.

The build (``infra.native.ensure``) happens here, before any test module imports the engine:
about a minute when a module of udfs or schemas changed since the last build, nothing
otherwise. ``NUDGEFLOW_NATIVE=off`` runs everything as Python instead.
"""

import sys

from infra import native as native_build
from udfs import native

native_build.ensure(say=lambda line: print(line, file=sys.stderr))
native.install()


def pytest_report_header(config):
    """The first lines of the session say which engine modules it tests."""
    return f"engine modules: {native.status()}"
