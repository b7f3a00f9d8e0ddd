"""The build id and the TaskManager's check that it runs the job's own modules."""

import pytest

from udfs import build


def test_the_build_id_covers_the_job_sources_and_changes_with_them(tmp_path):
    for package in build.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    first = build.source_digest(tmp_path)
    assert build.source_digest(tmp_path) == first
    (tmp_path / "udfs" / "engine.py").write_text("x = 1\n")
    second = build.source_digest(tmp_path)
    assert second != first
    (tmp_path / "udfs" / "notes.md").write_text("not code")
    assert build.source_digest(tmp_path) == second


def test_this_interpreter_runs_its_own_build():
    assert build.IMPORTED_BUILD == build.source_digest(build.ROOT)
    build.check_build(build.IMPORTED_BUILD)
    build.check_build(None)


def test_another_build_fails_with_both_ids_and_what_to_do():
    with pytest.raises(build.BuildMismatch) as failure:
        build.check_build("0" * 64)
    message = str(failure.value)
    assert build.IMPORTED_BUILD[:12] in message and "000000000000" in message
    assert "restart the TaskManager" in message.replace("Restart", "restart")


def test_an_archive_and_its_checkout_have_the_same_build(tmp_path):
    from infra.package import archive_build, build_job_archive

    archive = build_job_archive(tmp_path / "job.zip", root=build.ROOT)
    assert archive_build(archive) == build.source_digest(build.ROOT)


def test_only_python_sources_of_the_job_packages_are_the_build():
    assert build.is_build_file("udfs/engine.py")
    assert not build.is_build_file("udfs/catalog/segments/x.yaml")
    assert not build.is_build_file("infra/deploy.py")
    assert not build.is_build_file("udfs/__pycache__/engine.py")
    assert not build.is_build_file("setup.py")
