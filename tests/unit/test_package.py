"""The job archive (``nudgeflow package``): what the job imports and reads, nothing else, and the
same bytes every time."""

import ast
import hashlib
import os
import shutil
import zipfile
from pathlib import Path

import pytest

from infra import package
from infra.paths import REPO_DIR
from jobs.cli.main import main
from udfs import build


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return package.build_job_archive(tmp_path_factory.mktemp("pkg") / "job.zip")


@pytest.fixture(scope="module")
def names(archive) -> set[str]:
    with zipfile.ZipFile(archive) as zipped:
        return set(zipped.namelist())


def _module_file(module: str) -> str | None:
    """The archive name of a project module (``pkg/mod.py`` or ``pkg/mod/__init__.py``)."""
    base = module.replace(".", "/")
    for candidate in (f"{base}.py", f"{base}/__init__.py"):
        if (REPO_DIR / candidate).is_file():
            return candidate
    return None


def _project_imports(relative: str) -> set[str]:
    """The project modules a module imports (at any depth in its body, lazy imports too)."""
    tree = ast.parse((REPO_DIR / relative).read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        modules = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from udfs.flink import decode` names a module too
            modules = [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
        for module in modules:
            if module.split(".")[0] in package.PACKAGES:
                found.add(module)
    return found


def _closure(start: str) -> set[str]:
    """Every project file reachable by imports from module ``start`` (packages' __init__ too)."""
    todo, seen = [start], set()
    while todo:
        module = todo.pop()
        parts = module.split(".")
        for depth in range(1, len(parts) + 1):  # importing a.b.c runs a and a.b first
            file = _module_file(".".join(parts[:depth]))
            if file and file not in seen:
                seen.add(file)
                todo.extend(_project_imports(file))
    return seen


def test_the_archive_holds_every_module_the_job_imports(names):
    needed = _closure("jobs.job")
    assert {"jobs/job.py", "udfs/engine.py", "schemas/codec.py"} <= needed
    assert needed - names == set()


def test_the_archive_holds_the_data_the_job_reads(names):
    assert {"models/churn.onnx", "models/churn.json"} <= names
    catalog = {p.relative_to(REPO_DIR).as_posix()
               for p in (REPO_DIR / "udfs" / "catalog").rglob("*.yaml")}
    assert catalog and catalog <= names
    schemas = {p.relative_to(REPO_DIR).as_posix() for p in (REPO_DIR / "schemas").rglob("*.avsc")}
    assert schemas and schemas <= names


def test_no_tests_caches_or_build_output(names):
    assert not [n for n in names if n.startswith("tests/")]
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [n for n in names if "/target/" in n or n.endswith((".jar", ".java"))]
    # deployment files (manifests, the operator's CRD schema) are not the job's
    assert not [n for n in names if n.startswith(("infra/k8s/", "infra/docker/"))]


def test_two_builds_are_the_same_bytes_whatever_the_checkout_and_mtimes(archive, tmp_path):
    # another checkout, made at another time: other paths, other modification times
    copy = tmp_path / "checkout"
    for name in package.PACKAGES:
        shutil.copytree(REPO_DIR / name, copy / name,
                        ignore=shutil.ignore_patterns("__pycache__", "target"))
    shutil.copy(REPO_DIR / "setup.py", copy / "setup.py")
    for path in copy.rglob("*"):
        os.utime(path, (1_700_000_000, 1_700_000_000))
    again = package.build_job_archive(tmp_path / "again.zip", root=copy)
    assert again.read_bytes() == archive.read_bytes()


def test_the_manifest_names_version_build_and_every_file_digest(archive, names):
    meta = package.read_manifest(archive)
    assert meta["version"] == package.setup_metadata().version
    # the id the engines check at open: that of the checkout and of the archive's own files
    assert meta["build"] == build.source_digest(build.ROOT) == package.archive_build(archive)
    assert set(meta["files"]) == names - {package.MANIFEST_NAME}
    with zipfile.ZipFile(archive) as zipped:
        for name, digest in meta["files"].items():
            assert hashlib.sha256(zipped.read(name)).hexdigest() == digest


def test_requirements_are_the_runtime_pins_only():
    meta = package.setup_metadata()
    assert "apache-flink==2.2.1" in meta.install_requires
    # the benchmark's and tests' libraries are extras, kept out of the image
    assert not [r for r in meta.install_requires
                if r.split("==")[0] in {"matplotlib", "py-spy", "pytest", "scikit-learn"}]


def test_nudgeflow_package_writes_archive_and_requirements(tmp_path, capsys):
    assert main(["package", "--out", str(tmp_path)]) == 0
    version = package.setup_metadata().version
    archive = tmp_path / f"nudgeflow-job-{version}.zip"
    assert package.read_manifest(archive)["build"] == build.source_digest(build.ROOT)
    lines = (tmp_path / "requirements.txt").read_text().splitlines()
    assert [line for line in lines if not line.startswith("#")] == \
        package.setup_metadata().install_requires
    assert "build " in capsys.readouterr().out


def test_a_checkout_without_a_package_is_refused_naming_it(tmp_path):
    with pytest.raises(package.PackageError, match="jobs is missing"):
        package.archive_files(tmp_path)


def test_an_installed_copy_without_setup_py_takes_the_distributions_version(tmp_path,
                                                                             monkeypatch):
    for name in package.PACKAGES:
        (tmp_path / name).mkdir()
    (tmp_path / "jobs" / "job.py").write_text("")
    monkeypatch.setattr(package.importlib.metadata, "version", lambda name: "9.9.9")
    archive = package.build_job_archive(tmp_path / "job.zip", root=tmp_path)
    assert package.read_manifest(archive)["version"] == "9.9.9"
