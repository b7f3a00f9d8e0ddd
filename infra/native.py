"""Build the engine's hot modules with mypyc into ``udfs/_native/`` (see ``udfs.native``).

``ensure`` builds when the build there is missing or was made from other sources, for another
interpreter or by another mypy; otherwise it does nothing. The build runs in a scratch copy of
``udfs`` and ``schemas`` (mypyc writes its C files and extensions beside the sources it
compiles, and the checkout must not hold extensions next to its ``.py`` files: Python would
load those even after the ``.py`` changed). It needs mypy (the ``dev`` extra) and a C compiler.
A clean build takes about a minute of CPU on one core.

``python -m infra.native --archive OUT``, run from a job archive extracted (its manifest at the
root), compiles that archive's own modules with the interpreter that runs it and writes the
archive again, with them, to ``OUT``: how the image (infra/docker/Dockerfile) gets modules that
load in its TaskManagers' Python.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

from infra import package
from infra.paths import REPO_DIR
from udfs import native


class NativeBuildError(RuntimeError):
    """The compiled modules could not be built; the message says why and what to do."""


def mypy_version() -> str | None:
    """The installed mypy's version, None without mypy."""
    try:
        return importlib.metadata.version("mypy")
    except importlib.metadata.PackageNotFoundError:
        return None


def not_current(root: Path = REPO_DIR) -> str | None:
    """Why ``root``'s build must be made again here (None: it is current)."""
    manifest = native.read_manifest(root)
    reason = native.stale_reason(manifest, root)
    if reason is None and manifest is not None and manifest.get("mypy") != mypy_version():
        reason = f"made by mypy {manifest.get('mypy')}, not the installed {mypy_version()}"
    return reason


def is_current(root: Path = REPO_DIR) -> bool:
    """Whether ``root``'s build is loadable here and made by the installed mypy."""
    return not_current(root) is None


def build(root: Path = REPO_DIR, say: Callable[[str], None] = print) -> Path:
    """Compile :data:`udfs.native.MODULES` of ``root`` into ``root/udfs/_native``; its path.

    Raises:
        NativeBuildError: no mypy, no C compiler, or mypyc failed (the end of its output).
    """
    version = mypy_version()
    if version is None:
        raise NativeBuildError("mypy is not installed, and mypyc (part of it) compiles the "
                               "engine's modules: install the dev extra "
                               "(`.venv/bin/pip install -e '.[dev]'`) or set "
                               f"{native.ENV}=off to run them as Python")
    if shutil.which("cc") is None and shutil.which("gcc") is None:
        raise NativeBuildError("no C compiler (cc or gcc) on PATH: mypyc needs one; install "
                               "gcc (Debian: `apt-get install gcc`) or set "
                               f"{native.ENV}=off to run the engine's modules as Python")
    digest = native.sources_digest(root)
    suffix = native.extension_suffix()
    say(f"compiling {len(native.MODULES)} engine modules with mypyc {version} ...")
    with tempfile.TemporaryDirectory(prefix="nudgeflow-native-") as scratch:
        work = Path(scratch)
        for package in native.SOURCE_PACKAGES:
            shutil.copytree(root / package, work / package,
                            ignore=shutil.ignore_patterns("__pycache__", "_native*", "*.so"))
        if (root / "pyproject.toml").is_file():  # the mypy settings (missing imports)
            shutil.copy2(root / "pyproject.toml", work / "pyproject.toml")
        proc = subprocess.run([sys.executable, "-m", "mypyc", *native.MODULES], cwd=work,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-25:])
            raise NativeBuildError(f"mypyc failed (exit {proc.returncode}); the engine's "
                                   f"modules stay Python. Its output ends:\n{tail}")
        files: dict[str, str] = {}
        staging = root / f"{native.NATIVE_DIR}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        for module in native.MODULES:
            relative = module.removesuffix(".py") + suffix
            (staging / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(work / relative, staging / relative)
            files[native.module_name(module)] = relative
        groups = sorted(work.glob(f"*__mypyc{suffix}"))
        if len(groups) != 1:
            raise NativeBuildError(f"mypyc left {len(groups)} shared libraries in {work}, "
                                   "expected one: a mypy version this build does not know?")
        shutil.copy2(groups[0], staging / groups[0].name)
        files[groups[0].name.removesuffix(suffix)] = groups[0].name
    manifest = {"sources": digest, "extension_suffix": suffix, "mypy": version,
                "python": sys.version.split()[0], "files": files}
    (staging / native.MANIFEST).write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n",
                                           encoding="utf-8")
    target = root / native.NATIVE_DIR
    shutil.rmtree(target, ignore_errors=True)
    staging.rename(target)
    return target


def ensure(root: Path = REPO_DIR, say: Callable[[str], None] = print) -> bool:
    """Build unless the build is current; True when it is current afterwards.

    A failed build is reported through ``say`` (the engine then runs as Python) unless
    ``NUDGEFLOW_NATIVE`` is off, when nothing is built.
    """
    if native.turned_off():
        return False
    if is_current(root):
        return True
    try:
        build(root, say)
    except NativeBuildError as exc:
        say(f"warning: {exc}")
        return False
    return is_current(root)


def archive_with_build(dest: Path, root: Path = REPO_DIR,
                       say: Callable[[str], None] = print) -> Path:
    """Build ``root``'s compiled modules, then write its job archive, with them, to ``dest``.

    ``root`` is a checkout or a job archive extracted (``package.MANIFEST_NAME`` at its root
    gives the version; a checkout's setup.py otherwise). The new archive's manifest and build id
    cover the compiled modules, so the engines of a cluster running it check those too.

    Raises:
        NativeBuildError: the modules could not be built (no archive is written then).
    """
    extracted = root / package.MANIFEST_NAME
    version = (json.loads(extracted.read_text(encoding="utf-8"))["version"]
               if extracted.is_file() else package.project_version(root))
    build(root, say)
    return package.build_job_archive(dest, root, version)


def main(argv: list[str] | None = None) -> int:
    """``python -m infra.native --archive OUT`` (building in place is ``nudgeflow native``)."""
    parser = argparse.ArgumentParser(prog="python -m infra.native", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--archive", type=Path, metavar="OUT", required=True,
                        help="write the job archive of this directory, with the compiled "
                             "modules, to OUT")
    args = parser.parse_args(argv)
    try:
        out = archive_with_build(args.archive)
    except NativeBuildError as exc:
        print(f"python -m infra.native: {exc}", file=sys.stderr)
        return 1
    print(f"{out}: the job archive with {len(native.MODULES)} compiled modules "
          f"(build {package.archive_build(out)[:12]})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
