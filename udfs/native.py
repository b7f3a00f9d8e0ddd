"""The engine's hot modules compiled with mypyc, loaded when they match the sources.

**Why.** Since inputs wait for the watermark in Java (issue 13), the engine's CPU per event is
the domain code's (the bench: the engine's threads within a few µs of the pure loop). That code
is plain typed Python; mypyc (part of mypy) compiles such modules to C extensions with the same
behaviour. Compiled, the pure domain loop costs about a quarter less (docs/performance.md).

**What.** :data:`MODULES` are compiled together (``infra/native.py``, ``nudgeflow native``) into
``udfs/_native/``: one shared library, one small extension per module, and ``manifest.json``
(the digest of the sources they were built from, the interpreter's extension suffix, the
files). At ``import udfs`` (:func:`install`), when the manifest's digest is that of the
``.py`` sources beside it and the suffix is this interpreter's, an import hook loads those
modules from their extensions instead of their ``.py`` files; otherwise every module runs as
Python, and :func:`status` says why. The digest covers every ``.py`` file of ``udfs`` and
``schemas`` (the compiled code relies on their types), so a stale build is never loaded: edit
any module and the next run is pure Python until the build is redone.

``NUDGEFLOW_NATIVE=off`` (or ``0``, ``false``, ``no``) keeps everything in Python: the
profilers (cProfile, py-spy) cannot see inside compiled functions.

Pure: no pyflink, no mypy (the build, which needs mypy and a C compiler, is ``infra/native.py``).
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

#: the modules compiled, as paths under the packages' parent: the hot path of an engine step
MODULES: tuple[str, ...] = (
    "udfs/engine.py",
    "udfs/clock.py",
    "udfs/segments/conditions.py",
    "udfs/features/vector.py",
    "udfs/features/state.py",
    "udfs/features/codec.py",
    "udfs/journeys/runner.py",
    "udfs/tree_ensemble.py",
    "udfs/churn.py",
    "udfs/definitions/event_filter.py",
    "udfs/definitions/comparisons.py",
    "udfs/catalog/registries.py",
    "udfs/attribution/touches.py",
    "udfs/currency/rates.py",
    "udfs/lru.py",
    "udfs/campaigns/arbitration.py",
    "udfs/intake.py",
    "schemas/codec.py",
    "udfs/campaigns/local_time.py",
    "udfs/campaigns/priority.py",
    "udfs/campaigns/updates.py",
    "udfs/journeys/state.py",
    "udfs/journeys/grammar.py",
    "udfs/attribution/attribution.py",
    "udfs/attribution/roi.py",
    "udfs/attribution/holdout.py",
    "udfs/features/spec.py",
    "udfs/features/view.py",
    "udfs/definitions/versioning.py",
    "udfs/segments/updates.py",
    "udfs/journeys/updates.py",
)
#: the packages whose sources the compiled code depends on (the manifest's digest)
SOURCE_PACKAGES = ("udfs", "schemas")
#: the environment variable that turns the compiled modules off
ENV = "NUDGEFLOW_NATIVE"
#: where the build goes, under the packages' parent
NATIVE_DIR = "udfs/_native"
MANIFEST = "manifest.json"

ROOT = Path(__file__).resolve().parents[1]

_status = "not installed: udfs.native.install() was not called"
_loaded: dict[str, str] = {}


def module_name(path: str) -> str:
    """``udfs/engine.py`` -> ``udfs.engine``."""
    return path.removesuffix(".py").replace("/", ".")


def sources_digest(root: Path = ROOT) -> str:
    """SHA-256 over the relative paths and bytes of every ``.py`` of :data:`SOURCE_PACKAGES`."""
    digest = hashlib.sha256()
    files = sorted(path for package in SOURCE_PACKAGES for path in (root / package).rglob("*.py")
                   if "__pycache__" not in path.parts)
    for path in files:
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
    return digest.hexdigest()


def extension_suffix() -> str:
    """This interpreter's suffix of extension modules (``.cpython-311-x86_64-linux-gnu.so``)."""
    return importlib.machinery.EXTENSION_SUFFIXES[0]


def turned_off() -> bool:
    """Whether ``NUDGEFLOW_NATIVE`` asks for pure Python."""
    return os.environ.get(ENV, "").strip().lower() in ("0", "off", "false", "no")


def read_manifest(root: Path = ROOT) -> dict[str, Any] | None:
    """The build's manifest, None when there is no build."""
    path = root / NATIVE_DIR / MANIFEST
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def stale_reason(manifest: dict[str, Any] | None, root: Path = ROOT) -> str | None:
    """Why a build cannot be loaded here (None: it can)."""
    if manifest is None:
        return f"no build in {root / NATIVE_DIR} (build it: `nudgeflow native`)"
    if manifest.get("extension_suffix") != extension_suffix():
        return (f"built for {manifest.get('extension_suffix')}, this interpreter loads "
                f"{extension_suffix()} (rebuild it here: `nudgeflow native`)")
    if manifest.get("sources") != sources_digest(root):
        return ("built from other sources than these (a module of udfs or schemas changed "
                "since; rebuild: `nudgeflow native`)")
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return "the manifest lists no files (rebuild: `nudgeflow native`)"
    missing = [name for name in files.values() if not (root / NATIVE_DIR / name).is_file()]
    if missing:
        return f"files of the build are missing: {', '.join(missing[:3])} (rebuild)"
    return None


class _Finder(importlib.abc.MetaPathFinder):
    """Finds the compiled modules (and their shared library) in the build's directory."""

    def __init__(self, files: dict[str, Path]) -> None:
        self.files = files

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        file = self.files.get(fullname)
        if file is None:
            return None
        return importlib.util.spec_from_file_location(fullname, file)


def install(root: Path = ROOT) -> str:
    """Load :data:`MODULES` compiled from now on, if the build matches; returns :func:`status`.

    Called by ``udfs/__init__.py``, before any of those modules is imported. Safe to call
    again (the hook is installed once).
    """
    global _status
    if any(isinstance(finder, _Finder) for finder in sys.meta_path):
        return _status
    if turned_off():
        _status = f"off ({ENV}={os.environ.get(ENV)}): every module runs as Python"
        return _status
    manifest = read_manifest(root)
    reason = stale_reason(manifest, root)
    if reason is not None:
        _status = f"not loaded: {reason}; every module runs as Python"
        return _status
    assert manifest is not None
    already = sorted(name for name in manifest["files"] if name in sys.modules)
    if already:
        _status = (f"not loaded: {', '.join(already)} already imported as Python; every module "
                   "runs as Python")
        return _status
    files = {name: root / NATIVE_DIR / file for name, file in manifest["files"].items()}
    finder = _Finder(files)
    sys.meta_path.insert(0, finder)
    shared = [name for name in files if name.endswith("__mypyc")]
    try:  # the shared library holds all the compiled code: load it now, or not at all
        for name in shared:
            importlib.import_module(name)
    except ImportError as exc:  # e.g. built against a newer C library than this machine's
        sys.meta_path.remove(finder)
        _status = f"not loaded: the build does not load here ({exc}); every module runs as Python"
        return _status
    _loaded.update({name: str(path) for name, path in files.items()})
    _status = f"compiled: {len(MODULES)} modules (mypyc, {manifest.get('mypy', '?')})"
    return _status


def status() -> str:
    """One line: whether the compiled modules are in use, and why not when they are not."""
    return _status


def active() -> bool:
    """Whether the compiled modules are the ones imported (checked on the modules themselves)."""
    engine = sys.modules.get("udfs.engine")
    return bool(_loaded) and (engine is None or not str(engine.__file__).endswith(".py"))
