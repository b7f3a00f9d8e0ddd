"""Tests that patch an engine module run where the engine is Python.

A compiled module (``udfs.native``) calls its own functions and the other compiled modules'
directly, past any ``monkeypatch`` of their module attributes. Such a test calls
:func:`rerun_as_python` first: in a session running compiled modules it runs the same test in a
subprocess with ``NUDGEFLOW_NATIVE=off`` and fails if that run does not pass.
"""

import os
import subprocess
import sys

from udfs import native
from udfs.build import ROOT


def rerun_as_python(request) -> bool:
    """True when the test ran (and passed) in a Python-only subprocess; then return at once."""
    if not native.active():
        return False
    node = request.node.nodeid
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", node],
                          env={**os.environ, native.ENV: "off"}, cwd=ROOT,
                          capture_output=True, text=True, check=False)
    assert done.returncode == 0 and "1 passed" in done.stdout, (
        f"{node} as Python:\n{done.stdout[-3000:]}{done.stderr[-1000:]}")
    return True
