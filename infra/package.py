"""The job archive: the Python code and data files a cluster needs to run ``jobs.job``.

Input: a checkout (``jobs/``, ``udfs/`` with the catalog, ``schemas/``, ``infra/``, ``models/``
with the churn model). Output: one zip, ``dist/nudgeflow-job-<version>.zip`` for ``nudgeflow
package`` (``nudgeflow run`` writes it under ``$NUDGEFLOW_HOME/deploy/``), which ``flink run
-pyfs`` ships to the TaskManagers and the image (infra/docker/Dockerfile) carries; and
``requirements.txt`` beside it, the runtime dependencies the image installs.

The archive is deterministic (sorted entries, a fixed timestamp and mode), so two builds of the
same checkout are the same bytes and an image layer or a cluster's cache is reused. Its
``MANIFEST_NAME`` entry records the version, the build id the engines check at open
(``udfs.build``), and every file's SHA-256.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.metadata
import json
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from infra.paths import REPO_DIR

#: the top-level packages shipped: the job's own (``udfs.build.PACKAGES``), the churn model's
#: and infra's (``jobs.cli`` imports it)
PACKAGES = ("jobs", "udfs", "schemas", "infra", "models")
#: sources and the data files the job reads (catalog YAML, Avro schemas, CQL, the model)
SHIPPED_SUFFIXES = frozenset({".py", ".avsc", ".yaml", ".cql", ".onnx", ".json"})
#: the engine's compiled modules (``udfs.native``), shipped when built: a TaskManager whose
#: interpreter loads them (the manifest's extension suffix) runs them, any other runs the sources
NATIVE = "udfs/_native/"
#: folders of those packages that only deploy the job (manifests, the CRD schema copy)
NOT_SHIPPED = ("infra/k8s", "infra/docker")
#: the manifest's name inside the archive (at its root, beside the packages)
MANIFEST_NAME = "nudgeflow-manifest.json"
# zip's earliest representable time: a fixed stamp keeps the bytes independent of file mtimes
_FIXED_TIME = (1980, 1, 1, 0, 0, 0)


class PackageError(RuntimeError):
    """The archive cannot be built (a missing package, an unreadable setup.py)."""


def archive_files(root: Path = REPO_DIR) -> list[tuple[str, Path]]:
    """The (archive name, file) pairs of the job archive, sorted by name.

    Caches, Maven's ``target/`` output, ``NOT_SHIPPED`` and files of other kinds (Java,
    Markdown, poms) stay out.

    Raises:
        PackageError: a package folder is missing under ``root``.
    """
    files = []
    for package in PACKAGES:
        folder = root / package
        if not folder.is_dir():
            raise PackageError(f"{folder} is missing: run `nudgeflow package` from a checkout "
                               f"holding {', '.join(PACKAGES)}")
        for path in folder.rglob("*"):
            parts = path.relative_to(root).parts
            name = path.relative_to(root).as_posix()
            if (path.is_file() and (path.suffix in SHIPPED_SUFFIXES or name.startswith(NATIVE))
                    and "__pycache__" not in parts and "target" not in parts
                    and not name.startswith(tuple(f"{n}/" for n in NOT_SHIPPED))):
                files.append((name, path))
    return sorted(files)


def manifest(files: Iterable[tuple[str, bytes]], version: str) -> dict:
    """The archive's manifest: version, build id (``udfs.build.digest_files``), file digests."""
    from udfs.build import digest_files

    contents = sorted(files)
    return {
        "name": "nudgeflow-job",
        "version": version,
        "build": digest_files(contents),
        "files": {name: hashlib.sha256(data).hexdigest() for name, data in contents},
    }


def build_job_archive(dest: Path, root: Path = REPO_DIR, version: str | None = None) -> Path:
    """Write the job archive of the checkout ``root`` to ``dest`` and return ``dest``.

    Raises:
        PackageError: a package folder is missing or setup.py cannot be read.
    """
    contents = [(name, path.read_bytes()) for name, path in archive_files(root)]
    meta = manifest(contents, version or project_version(root))
    entries = [*contents, (MANIFEST_NAME, (json.dumps(meta, indent=1) + "\n").encode())]
    dest.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in entries:
            info = zipfile.ZipInfo(name, date_time=_FIXED_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16  # rw-r--r--, whatever the checkout's umask
            archive.writestr(info, data)
    return dest


def read_manifest(archive: Path) -> dict:
    """The manifest of a job archive."""
    with zipfile.ZipFile(archive) as zipped:
        return dict(json.loads(zipped.read(MANIFEST_NAME)))


def archive_build(archive: Path) -> str:
    """The build id (``udfs.build.digest_files``) of the job code inside an archive.

    Computed from the files, not read from the manifest, so a hand-edited archive cannot claim
    another build.
    """
    from udfs.build import digest_files

    with zipfile.ZipFile(archive) as zipped:
        return digest_files((name, zipped.read(name)) for name in zipped.namelist())


@dataclass(frozen=True)
class SetupMetadata:
    """The version, Python range and runtime requirements of setup.py (read, never executed)."""

    version: str
    python_requires: str
    install_requires: list[str]


def setup_metadata(root: Path = REPO_DIR) -> SetupMetadata:
    """setup.py's ``version=``, ``python_requires=`` and ``INSTALL_REQUIRES``, parsed with ``ast``.

    Parsed rather than imported: importing setup.py runs ``setup()``.

    Raises:
        PackageError: setup.py lacks a literal version or INSTALL_REQUIRES list.
    """
    path = root / "setup.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    version = python = requires = None
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(
                isinstance(t, ast.Name) and t.id == "INSTALL_REQUIRES" for t in node.targets):
            requires = ast.literal_eval(node.value)
        if isinstance(node, ast.keyword) and node.arg == "version":
            version = ast.literal_eval(node.value)
        if isinstance(node, ast.keyword) and node.arg == "python_requires":
            python = ast.literal_eval(node.value)
    if not (isinstance(version, str) and isinstance(python, str) and isinstance(requires, list)):
        raise PackageError(f"{path}: expected literal version=..., python_requires=... and "
                           "INSTALL_REQUIRES = [...] (the archive's version, the image's Python "
                           "and its requirements)")
    return SetupMetadata(version, python, [str(r) for r in requires])


def project_version(root: Path = REPO_DIR) -> str:
    """The version of setup.py in ``root``, or of the installed distribution without one.

    An installed (not editable) nudgeflow has no setup.py beside its packages, and ``nudgeflow
    run`` still builds the archive it ships from them.

    Raises:
        PackageError: neither a setup.py nor an installed distribution says.
    """
    if (root / "setup.py").is_file():
        return setup_metadata(root).version
    try:
        return importlib.metadata.version("nudgeflow")
    except importlib.metadata.PackageNotFoundError:
        raise PackageError(f"no setup.py in {root} and nudgeflow is not installed: build the "
                           "archive from a checkout") from None


def package(out_dir: Path, root: Path = REPO_DIR) -> tuple[Path, Path]:
    """``nudgeflow package``: the archive and ``requirements.txt`` in ``out_dir``.

    Returns:
        The archive's path and the requirements file's path.
    """
    meta = setup_metadata(root)
    archive = build_job_archive(out_dir / f"nudgeflow-job-{meta.version}.zip", root, meta.version)
    requirements = out_dir / "requirements.txt"
    requirements.write_text(
        "# runtime dependencies of nudgeflow's job (setup.py INSTALL_REQUIRES); written by "
        "`nudgeflow package`\n" + "".join(f"{r}\n" for r in meta.install_requires))
    return archive, requirements
