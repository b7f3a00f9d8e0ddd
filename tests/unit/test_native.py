"""The compiled engine modules (``udfs.native``): loaded only when they match the sources, and
giving the records the Python modules give."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jobs.bench import domain
from udfs import native
from udfs.build import ROOT


def test_this_session_runs_the_compiled_modules_unless_turned_off():
    import udfs.engine
    import udfs.segments.conditions

    if native.turned_off():
        pytest.skip(f"{native.ENV}=off: this session runs the engine as Python on request")
    assert native.active(), native.status()
    assert native.status().startswith("compiled")
    for module in (udfs.engine, udfs.segments.conditions):
        assert module.__file__.endswith(native.extension_suffix())
        assert f"{native.NATIVE_DIR}/" in module.__file__


def test_the_compiled_modules_load_first_whichever_package_is_imported_first():
    """``import schemas`` before ``udfs`` (as the bench and the CLI do) still loads them all."""
    if native.turned_off():
        pytest.skip(f"{native.ENV}=off: this session did not build the compiled modules")
    probe = ("import schemas, schemas.codec as c, udfs.intake as i, udfs.native as n; "
             "print(n.status()); print(c.__file__); print(i.__file__)")
    env = {**os.environ}
    env.pop(native.ENV, None)
    lines = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, check=True,
                           capture_output=True, text=True).stdout.splitlines()
    assert lines[0].startswith("compiled"), lines[0]
    assert all(line.endswith(native.extension_suffix()) for line in lines[1:]), lines


def test_the_intake_limits_survive_pickling():
    """The job's functions are pickled with their ``Limits`` (a frozen dataclass, compiled)."""
    import pickle

    import cloudpickle

    from udfs.intake import Limits

    limits = Limits(max_price=5, max_event_age_ms=0)
    assert pickle.loads(pickle.dumps(limits)) == limits
    assert cloudpickle.loads(cloudpickle.dumps(limits)) == limits


def _copy_sources(tmp_path):
    for package in native.SOURCE_PACKAGES:
        shutil.copytree(ROOT / package, tmp_path / package,
                        ignore=shutil.ignore_patterns("__pycache__", "_native*"))
    return tmp_path


def _probe(root):
    """(status, udfs.engine's file) of a fresh interpreter importing the checkout at ``root``."""
    env = {**os.environ, "PYTHONPATH": str(root)}
    env.pop(native.ENV, None)
    probe = "import udfs.engine, udfs.native as n; print(n.status()); print(udfs.engine.__file__)"
    return subprocess.run([sys.executable, "-c", probe], cwd=root, env=env, check=True,
                          capture_output=True, text=True).stdout.splitlines()


def test_a_build_is_refused_when_it_is_missing_for_another_interpreter_or_stale(tmp_path):
    root = _copy_sources(tmp_path)
    assert "no build" in native.stale_reason(native.read_manifest(root), root)
    folder = root / native.NATIVE_DIR
    folder.mkdir(parents=True)
    (folder / "engine.so").write_bytes(b"")
    manifest = {"sources": native.sources_digest(root), "extension_suffix": ".other.so",
                "files": {"udfs.engine": "engine.so"}}
    (folder / native.MANIFEST).write_text(json.dumps(manifest))
    assert "built for .other.so" in native.stale_reason(native.read_manifest(root), root)
    manifest["extension_suffix"] = native.extension_suffix()
    (folder / native.MANIFEST).write_text(json.dumps(manifest))
    assert native.stale_reason(native.read_manifest(root), root) is None
    # any source of udfs or schemas changed since the build: refused
    with open(root / "schemas" / "__init__.py", "a", encoding="utf-8") as f:
        f.write("# edited\n")
    assert "other sources" in native.stale_reason(native.read_manifest(root), root)
    manifest["sources"] = native.sources_digest(root)
    manifest["files"]["udfs.clock"] = "clock.so"  # listed, not there
    (folder / native.MANIFEST).write_text(json.dumps(manifest))
    assert "missing: clock.so" in native.stale_reason(native.read_manifest(root), root)


def test_a_stale_build_is_not_loaded_and_the_status_says_why(tmp_path):
    """A copy of the checkout with its build, one module edited: the engine runs as Python."""
    if native.stale_reason(native.read_manifest()) is not None:
        pytest.skip(f"no current build here: {native.status()}")
    root = _copy_sources(tmp_path)
    shutil.copytree(ROOT / native.NATIVE_DIR, root / native.NATIVE_DIR)
    fresh = _probe(root)
    assert fresh[0].startswith("compiled") and fresh[1].endswith(native.extension_suffix())
    with open(root / "udfs" / "clock.py", "a", encoding="utf-8") as f:
        f.write("\n# an edit after the build\n")
    stale = _probe(root)
    assert stale[0].startswith("not loaded: built from other sources")
    assert stale[1] == str(root / "udfs" / "engine.py")


_RECORDS = """
import json, sys
from jobs.bench import domain
from udfs import native
inputs = domain.build_inputs(6000, 400, seed=11, metadata_updates=0.05)
rules = domain.shipped_rules(churn=True, journeys=True)
outcome = domain.play(inputs, rules, keep=True, watermark_every=97, decoded_users=150,
                      ordered=True)
json.dump({"status": native.status(), "emitted": outcome.emitted}, sys.stdout, sort_keys=True)
"""


def test_the_compiled_modules_emit_what_the_python_modules_emit():
    """A seeded workload (journeys on, metadata updates, a small decoded-state cache, the
    watermark moving every 97 clicks) through both: every record, in order, the same."""
    runs = {}
    for setting in ("", "off"):
        env = {**os.environ, native.ENV: setting, "PYTHONPATH": str(ROOT)}
        done = subprocess.run([sys.executable, "-c", _RECORDS], cwd=ROOT, env=env, check=True,
                              capture_output=True, text=True)
        runs[setting] = json.loads(done.stdout)
    if native.turned_off():
        pytest.skip(f"{native.ENV}=off: no compiled modules to compare")
    assert runs[""]["status"].startswith("compiled"), runs[""]["status"]
    assert runs["off"]["status"].startswith("off")
    compiled, python = runs[""]["emitted"], runs["off"]["emitted"]
    assert len(compiled) > 1000
    assert sum(len(step["changes"]) for _, step in compiled) > 500
    assert sum(len(step["triggers"]) for _, step in compiled) > 50
    assert compiled == python


def test_the_floor_runs_the_modules_this_process_loaded():
    lines = []
    result = domain.main(["--clicks", "200", "--users", "10", "--repeat", "1", "--no-profile"],
                         printer=lines.append)
    assert result["native"] == native.status()
    assert any(native.status() in line for line in lines)


def test_the_job_archive_carries_the_build_and_its_id_covers_it():
    from infra.package import archive_files
    from udfs.build import is_build_file

    manifest = native.read_manifest()
    if native.stale_reason(manifest) is not None:
        pytest.skip(f"no current build here: {native.status()}")
    names = {name for name, _ in archive_files()}
    shipped = {f"{native.NATIVE_DIR}/{file}" for file in manifest["files"].values()}
    assert shipped | {f"{native.NATIVE_DIR}/{native.MANIFEST}"} <= names
    assert all(is_build_file(name) for name in shipped)  # a TaskManager's build id sees them
    assert not any(name.startswith(f"{native.NATIVE_DIR}.tmp") for name in names)


def test_a_build_that_does_not_load_here_leaves_every_module_python(tmp_path):
    """A shared library this machine cannot load (another C library, a broken copy)."""
    if native.stale_reason(native.read_manifest()) is not None:
        pytest.skip(f"no current build here: {native.status()}")
    root = _copy_sources(tmp_path)
    shutil.copytree(ROOT / native.NATIVE_DIR, root / native.NATIVE_DIR)
    for shared in (root / native.NATIVE_DIR).glob("*__mypyc*"):
        shared.write_bytes(b"not an ELF file")
    lines = _probe(root)
    assert lines[0].startswith("not loaded: the build does not load here")
    assert lines[1] == str(root / "udfs" / "engine.py")


def test_an_archive_packaged_without_the_build_gets_one_that_loads(tmp_path, monkeypatch):
    """``python -m infra.native --archive``, as the image runs it on an extracted archive.

    The compilation itself is this session's build, copied in (mypyc takes a minute); what is
    checked is the repackaging: the new archive carries the build, its manifest and build id
    cover it, and an interpreter importing the archive's contents loads it.
    """
    import zipfile

    from infra import native as native_build
    from infra import package

    if native.stale_reason(native.read_manifest()) is not None:
        pytest.skip(f"no current build here: {native.status()}")
    plain = package.build_job_archive(tmp_path / "plain.zip", version="9.9.9")
    with zipfile.ZipFile(plain) as zipped:
        # as if packaged where no build was made: this checkout's build left out
        kept = [n for n in zipped.namelist() if not n.startswith(f"{native.NATIVE_DIR}/")]
        extracted = tmp_path / "extracted"
        zipped.extractall(extracted, kept)
    assert not (extracted / native.NATIVE_DIR).exists()

    def build(root, say):  # the compiled modules, as mypyc would write them for this Python
        shutil.copytree(ROOT / native.NATIVE_DIR, root / native.NATIVE_DIR)
        return root / native.NATIVE_DIR

    monkeypatch.setattr(native_build, "build", build)
    out = native_build.archive_with_build(tmp_path / "with-build.zip", extracted)

    meta = package.read_manifest(out)
    assert meta["version"] == "9.9.9"  # the extracted archive's, not this checkout's setup.py
    assert meta["build"] == package.archive_build(out)
    with zipfile.ZipFile(out) as zipped:
        names = set(zipped.namelist())
        zipped.extractall(tmp_path / "deployed")
    assert f"{native.NATIVE_DIR}/{native.MANIFEST}" in names
    assert {n for n in names if not n.startswith(native.NATIVE_DIR)} == set(kept)
    lines = _probe(tmp_path / "deployed")
    assert lines[0].startswith("compiled"), lines[0]
    assert lines[1].endswith(native.extension_suffix())


def test_an_archive_is_not_written_when_the_build_fails(tmp_path, monkeypatch):
    from infra import native as native_build

    def build(root, say):
        raise native_build.NativeBuildError("no C compiler (cc or gcc) on PATH")

    monkeypatch.setattr(native_build, "build", build)
    with pytest.raises(native_build.NativeBuildError):
        native_build.archive_with_build(tmp_path / "out.zip", _copy_sources(tmp_path / "src"))
    assert not (tmp_path / "out.zip").exists()
