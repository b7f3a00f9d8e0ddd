"""The definitions' vocabulary needs no package file once imported (udfs/definitions/vocabulary.py).

In thread mode a TaskManager keeps the modules a job imported for later jobs of the same build,
and those modules read package files from the first job's extracted directory, which Flink
deletes when that job ends: a later job whose engine first asked for the vocabulary then failed
in open() with FileNotFoundError (seen after a TaskManager kill, when the restored job never
asked for it). Here the packages are imported from a copy that is then deleted, as Flink does."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]

#: a fresh interpreter: nothing is cached before the copy is gone
#: (a job imports both packages; imported here, ``schemas`` cannot be found again elsewhere, e.g.
#: in the checkout an editable install points to)
ASK_AFTER_THE_DIRECTORY_IS_GONE = """
import shutil, sys
sys.path.insert(0, sys.argv[1])
import schemas
from udfs.definitions import vocabulary
for module in (schemas, vocabulary):
    assert module.__file__.startswith(sys.argv[1]), module.__file__
shutil.rmtree(sys.argv[1])
assert vocabulary.metadata_fields()["lifetime_value"].kind == "number"
assert "ADD_TO_CART" in vocabulary.event_types()
assert "WEB" in vocabulary.event_sources()
"""


def test_the_vocabulary_reads_no_package_file_after_import(tmp_path):
    job = tmp_path / "python-files" / "nudgeflow-job"
    for package in ("udfs", "schemas"):
        shutil.copytree(REPO / package, job / package,
                        ignore=shutil.ignore_patterns("_native", "__pycache__"))
    run = subprocess.run([sys.executable, "-c", ASK_AFTER_THE_DIRECTORY_IS_GONE, str(job)],
                         capture_output=True, text=True, timeout=120, cwd=tmp_path,
                         env={**os.environ, "NUDGEFLOW_NATIVE": "off", "PYTHONPATH": ""})
    assert run.returncode == 0, run.stderr[-3000:]
    assert not job.exists()
