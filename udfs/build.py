"""The build id of the job's Python code, and the check that a TaskManager really runs it.

In thread mode a TaskManager embeds one Python interpreter for its whole life and keeps every
module a job imported: a later job from another checkout would run the old modules (or fail
with ``ModuleNotFoundError`` for a module the old build did not have). So:

- the client computes the build id (``digest_files``: SHA-256 of the relative paths and bytes
  of every ``.py`` file of the job's packages) and hands it to the engine in the job graph.
  ``nudgeflow run`` computes it from the archive it ships and passes it in ``BUILD_ID_ENV``
  (so the id is that of the code shipped, even if the checkout changes while the client
  starts); without it, the client's own modules (``IMPORTED_BUILD``) are the build;
- the engine's ``open()`` calls ``check_build``: the id of the modules actually imported in the
  TaskManager (``IMPORTED_BUILD``, computed from their files when this module was first
  imported there) must be the job's, and every loaded module of those packages must come from
  the same directory. Otherwise the task fails with ``BuildMismatch``, naming both builds and
  what to do;
- ``nudgeflow run`` restarts the local stack's TaskManager first when it may hold another
  build (``infra/deploy.py``).
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

#: the packages whose modules a job imports in the TaskManager
PACKAGES = ("jobs", "udfs", "schemas")

#: the compiled modules' build (``udfs.native``): part of the build, as the sources are
NATIVE_PREFIX = "udfs/_native/"

#: the directory holding the packages this interpreter imported
ROOT = Path(__file__).resolve().parents[1]


#: the environment variable in which ``nudgeflow run`` hands the shipped archive's build id to
#: the job's client (``jobs.job.main``)
BUILD_ID_ENV = "NUDGEFLOW_BUILD_ID"


class BuildMismatch(RuntimeError):
    """The TaskManager runs other modules than the job was built from."""


def is_build_file(relative_path: str) -> bool:
    """Whether a file (path relative to the packages' parent, ``/``-separated) is in the build."""
    parts = relative_path.split("/")
    return (len(parts) > 1 and parts[0] in PACKAGES and "__pycache__" not in parts
            and (relative_path.endswith(".py") or relative_path.startswith(NATIVE_PREFIX)))


def digest_files(files: Iterable[tuple[str, bytes]]) -> str:
    """The build id of (relative path, bytes) pairs: SHA-256 over the build's files, by path."""
    digest = hashlib.sha256()
    for name, data in sorted((n, d) for n, d in files if is_build_file(n)):
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(data)
    return digest.hexdigest()


def source_digest(root: Path) -> str:
    """The build id of the packages under ``root`` (a checkout or an unpacked archive)."""
    files = (path for package in PACKAGES for path in (root / package).rglob("*")
             if is_build_file(path.relative_to(root).as_posix()) and path.is_file())
    return digest_files((path.relative_to(root).as_posix(), path.read_bytes()) for path in files)


#: the build of the modules this interpreter imported (their files, read at first import)
IMPORTED_BUILD = source_digest(ROOT)


def _loaded_modules() -> list[tuple[str, Any]]:
    """A snapshot of ``sys.modules``, taken again if another thread imports meanwhile.

    The engine instances of a TaskManager open at once on JVM task threads (and the scoring
    thread imports onnxruntime), and a copy of ``sys.modules`` made while one of them imports
    failed once with "dictionary changed size during iteration" (CI, parallelism 2).
    """
    for _ in range(100):
        try:
            return list(sys.modules.copy().items())
        except RuntimeError:
            time.sleep(0.01)
    return list(sys.modules.copy().items())


def foreign_modules() -> list[str]:
    """Loaded modules of ``PACKAGES`` imported from another directory than ``ROOT``."""
    foreign = []
    for name, module in _loaded_modules():
        file = getattr(module, "__file__", None)
        if name.split(".")[0] in PACKAGES and file:
            if not Path(file).resolve().is_relative_to(ROOT):
                foreign.append(f"{name} ({file})")
    return sorted(foreign)


def check_build(expected: str | None) -> None:
    """Fail unless this interpreter's modules are build ``expected`` (None: no check).

    Raises:
        BuildMismatch: another build's modules are loaded; the message says what to do.
    """
    if expected is None:
        return
    foreign = foreign_modules()
    if IMPORTED_BUILD == expected and not foreign:
        return
    mixed = f"; modules from elsewhere: {', '.join(foreign[:5])}" if foreign else ""
    raise BuildMismatch(
        f"this TaskManager runs nudgeflow build {IMPORTED_BUILD[:12]} (modules imported from "
        f"{ROOT}{mixed}) but the job was submitted as build {expected[:12]}: in thread mode a "
        "TaskManager keeps the Python modules of earlier jobs. Cancel the job, restart the "
        "TaskManager (local stack: `nudgeflow stack down flink-taskmanager && nudgeflow stack "
        "up flink-taskmanager`; `nudgeflow run` does it by itself when no other job runs "
        "there) and submit again")
