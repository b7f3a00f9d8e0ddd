"""The build id of the job's Python code, and the check that a TaskManager really runs it.

In thread mode a TaskManager embeds one Python interpreter for its whole life and keeps every
module a job imported: a later job from another checkout would run the old modules (or fail
with ``ModuleNotFoundError`` for a module the old build did not have). So:

- the client computes the build id (``source_digest``: SHA-256 of the relative paths and bytes
  of every ``.py`` file of the job's packages) and hands it to the engine in the job graph;
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
from pathlib import Path

#: the packages whose modules a job imports in the TaskManager
PACKAGES = ("jobs", "udfs", "schemas")

#: the directory holding the packages this interpreter imported
ROOT = Path(__file__).resolve().parents[1]


class BuildMismatch(RuntimeError):
    """The TaskManager runs other modules than the job was built from."""


def source_digest(root: Path) -> str:
    """SHA-256 of the ``.py`` files of ``PACKAGES`` under ``root`` (relative paths and bytes)."""
    digest = hashlib.sha256()
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            digest.update(path.relative_to(root).as_posix().encode())
            digest.update(b"\0")
            digest.update(path.read_bytes())
    return digest.hexdigest()


#: the build of the modules this interpreter imported (their files, read at first import)
IMPORTED_BUILD = source_digest(ROOT)


def foreign_modules() -> list[str]:
    """Loaded modules of ``PACKAGES`` imported from another directory than ``ROOT``."""
    foreign = []
    for name, module in list(sys.modules.items()):
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
