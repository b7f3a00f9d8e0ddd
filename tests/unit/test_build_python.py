"""infra/build-python.sh builds the CPython the image builds: the same version and flags."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = (ROOT / "infra" / "build-python.sh").read_text()
DOCKERFILE = (ROOT / "infra" / "docker" / "Dockerfile").read_text()


def test_the_script_configures_cpython_as_the_image_does() -> None:
    [flags] = re.findall(r"^CONFIGURE_FLAGS=\((.*)\)$", SCRIPT, re.MULTILINE)
    [configure] = re.findall(r"\./configure ([^;]*);", DOCKERFILE.replace("\\\n", " "))
    image_flags = set(configure.split())
    assert set(flags.split()) <= image_flags
    # every optimizing or linking flag of the image's is the script's too (ensurepip aside)
    assert {f for f in image_flags if f.startswith(("--enable", "--with-lto"))} == set(
        flags.split())
    # rpath into its own lib, as the image's (the JVM loads libpython from there)
    assert 'LDFLAGS="-Wl,-rpath,$PREFIX/lib"' in SCRIPT
    assert 'LDFLAGS="-Wl,-rpath,/opt/python/lib"' in configure


def test_the_script_reads_the_images_python_version() -> None:
    assert re.search(r"^ARG PYTHON_VERSION=3\.11\.\d+$", DOCKERFILE, re.MULTILINE)
    assert "sed -n 's/^ARG PYTHON_VERSION=//p'" in SCRIPT
    assert "infra/docker/Dockerfile" in SCRIPT
