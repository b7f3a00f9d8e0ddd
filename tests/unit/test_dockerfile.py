"""infra/docker/Dockerfile's pins agree with setup.py and the poms.

No container engine runs here, so the image is not built in CI; these checks keep its versions
(Flink, Java, Python, connector, project jar, job archive) from drifting away from the ones the
tests run with.
"""

import fnmatch
import re
import shlex
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from packaging.specifiers import SpecifierSet

from infra import package
from infra.paths import INFRA_DIR, REPO_DIR

DOCKERFILE = INFRA_DIR / "docker" / "Dockerfile"
_POM_NS = {"m": "http://maven.apache.org/POM/4.0.0"}


def instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs: comments dropped, continuation lines joined."""
    logical, current = [], ""
    for line in text.splitlines():
        if line.lstrip().startswith("#"):
            continue  # Docker drops comment lines, inside a continued RUN too
        current += line.rstrip()
        if current.endswith("\\"):
            current = current[:-1] + " "
            continue
        if current.strip():
            keyword, _, rest = current.strip().partition(" ")
            logical.append((keyword.upper(), rest.strip()))
        current = ""
    return logical


@pytest.fixture(scope="module")
def steps() -> list[tuple[str, str]]:
    return instructions(DOCKERFILE.read_text())


def arg_defaults(steps) -> dict[str, str]:
    return dict(a.split("=", 1) for kind, a in steps if kind == "ARG" and "=" in a)


def env_values(steps) -> dict[str, str]:
    values = {}
    for kind, args in steps:
        if kind == "ENV":
            for pair in shlex.split(args):
                key, _, value = pair.partition("=")
                values[key] = value
    return values


def pom(component: str) -> ET.Element:
    return ET.parse(INFRA_DIR / "jars" / component / "pom.xml").getroot()


def pom_text(root: ET.Element, path: str) -> str:
    return root.findtext(path, namespaces=_POM_NS).strip()


def dependency_version(root: ET.Element, artifact: str) -> str:
    for dep in root.iterfind(".//m:dependency", _POM_NS):
        if pom_text(dep, "m:artifactId") == artifact:
            version = pom_text(dep, "m:version")
            match = re.fullmatch(r"\$\{(.+)\}", version)
            return pom_text(root, f"m:properties/m:{match.group(1)}") if match else version
    raise AssertionError(f"{artifact} is not in the pom")


def setup_pin(name: str) -> str:
    """The version setup.py pins ``name`` to, in its runtime requirements or an extra."""
    match = re.search(rf'"{re.escape(name)}==([^"]+)"', (REPO_DIR / "setup.py").read_text())
    assert match, f"{name} is not pinned in setup.py"
    return match.group(1)


def stages(steps) -> dict[str, list[tuple[str, str]]]:
    """Each build stage's instructions, by its name (``FROM ... AS name``; the last: "image")."""
    named: dict[str, list[tuple[str, str]]] = {}
    current: list[tuple[str, str]] = []
    for kind, args in steps:
        if kind == "FROM":
            words = args.split()
            current = named.setdefault(words[2] if len(words) > 2 else "image", [])
        current.append((kind, args))
    return named


def test_the_flink_image_is_the_flink_and_java_of_setup_py_and_the_poms(steps):
    flink = pom("flink")
    flink_version = pom_text(flink, "m:properties/m:flink.version")
    java = pom_text(flink, "m:properties/m:maven.compiler.release")
    assert setup_pin("apache-flink") == flink_version
    assert dependency_version(pom("metrics"), "flink-metrics-prometheus") == flink_version
    # the official image's tag format: <version>-java<release> (flink-docker's release.metadata)
    assert arg_defaults(steps)["FLINK_IMAGE"] == f"flink:{flink_version}-java{java}"
    bases = [args.split()[0] for kind, args in steps if kind == "FROM"]
    assert bases.count("${FLINK_IMAGE}") == 2  # Python is built on the image it runs on
    maven = next(b for b in bases if b.startswith("maven:"))
    assert maven.endswith(f"-eclipse-temurin-{java}")


def test_python_is_the_version_setup_py_allows(steps):
    python = arg_defaults(steps)["PYTHON_VERSION"]
    assert python in SpecifierSet(package.setup_metadata().python_requires)


def test_the_jars_are_the_poms_connector_and_project_jar(steps):
    flink = pom("flink")
    connector = dependency_version(flink, "flink-sql-connector-kafka")
    assert connector.endswith("-" + ".".join(setup_pin("apache-flink").split(".")[:2]))
    project = pom_text(flink, "m:version")
    jars = env_values(steps)["NUDGEFLOW_JARS"].split(";")
    assert jars == [
        f"file:///opt/nudgeflow/jars/flink-sql-connector-kafka-{connector}.jar",
        f"file:///opt/nudgeflow/jars/{pom_text(flink, 'm:artifactId')}-{project}.jar",
    ]


def test_flink_python_is_on_the_cluster_classpath(steps):
    runs = [args for kind, args in steps if kind == "RUN"]
    assert "cp /opt/flink/opt/flink-python-*.jar /opt/flink/lib/" in runs


def test_jars_are_resolved_the_way_infra_jars_resolves_them(steps):
    runs = [args for kind, args in steps if kind == "RUN" and "mvn " in args]
    assert len(runs) == 1
    for part in ("-f infra/jars/flink/pom.xml", "package", "dependency:copy-dependencies",
                 "-DincludeScope=runtime"):
        assert part in runs[0]
    source = (INFRA_DIR / "jars.py").read_text()
    assert '"dependency:copy-dependencies"' in source and '"-DincludeScope=runtime"' in source


def test_the_archive_and_requirements_are_what_nudgeflow_package_writes(steps, tmp_path):
    version = package.setup_metadata().version
    assert arg_defaults(steps)["NUDGEFLOW_VERSION"] == version
    archive, requirements = package.package(tmp_path)
    copies = [shlex.split(args)[0] for kind, args in steps if kind == "COPY"]
    archive_copy = f"dist/nudgeflow-job-{version}.zip"
    assert archive.name == Path(archive_copy).name
    assert "dist/nudgeflow-job-${NUDGEFLOW_VERSION}.zip" in copies
    assert f"dist/{requirements.name}" in copies
    # the runtime dependencies only: never the package's bench or dev extras (mypy is installed
    # in the native stage alone, which the image does not copy its virtualenv from)
    by_stage = stages(steps)
    installs = [args for kind, args in by_stage["python"]
                if kind == "RUN" and "pip install" in args]
    assert installs and all("-r /opt/nudgeflow/requirements.txt" in a for a in installs)
    assert not [a for a in installs if "[dev]" in a or "[bench]" in a]
    image = by_stage["image"]
    assert ("COPY", "--from=python /opt/nudgeflow/venv /opt/nudgeflow/venv") in image
    assert not [a for k, a in image if k == "COPY" and "--from=native" in a and "venv" in a]


def test_the_image_archive_carries_modules_compiled_for_the_image_python(steps):
    by_stage = stages(steps)
    native = by_stage["native"]
    assert native[0] == ("FROM", "python AS native")  # the image's own CPython compiles them
    assert arg_defaults(native)["MYPY_VERSION"] == setup_pin("mypy")
    runs = " ".join(args for kind, args in native if kind == "RUN")
    assert "python -m zipfile -e /tmp/nudgeflow-job.zip ." in runs
    assert "python -m infra.native --archive /tmp/nudgeflow-job-native.zip" in runs
    assert ("COPY", "pyproject.toml /tmp/job/pyproject.toml") in native  # mypy's settings
    assert ("COPY", "--from=native /tmp/nudgeflow-job-native.zip "
                    "/opt/flink/usrlib/nudgeflow-job.zip") in by_stage["image"]


def test_python_is_built_shared_for_the_taskmanagers_to_embed(steps):
    """pemja (thread mode) loads libpython3.11.so, found by find_libpython; a static build has
    none, and no Python operator could start."""
    runs = [args for kind, args in stages(steps)["python"] if kind == "RUN"]
    configure = next(a for a in runs if "./configure" in a)
    for flag in ("--enable-shared", "-Wl,-rpath,/opt/python/lib", "--enable-optimizations",
                 "--with-lto"):
        assert flag in configure, flag


def test_the_build_context_lets_in_what_the_dockerfile_copies(steps):
    ignore = (REPO_DIR / ".dockerignore").read_text().splitlines()
    rules = [line.strip() for line in ignore if line.strip() and not line.startswith("#")]

    def included(path: str) -> bool:
        keep = True
        for rule in rules:  # Docker's rule: the last matching pattern wins
            negated = rule.startswith("!")
            pattern = rule.lstrip("!").rstrip("/")
            if fnmatch.fnmatch(path, pattern) or path.startswith(pattern + "/"):
                keep = negated
        return keep

    version = package.setup_metadata().version
    for path in ("dist/requirements.txt", f"dist/nudgeflow-job-{version}.zip",
                 "schemas/ClickEvent.avsc", "infra/jars/flink/pom.xml", "pyproject.toml"):
        assert included(path), path
    for path in (".venv/bin/python", "tests/unit/test_package.py", ".git/HEAD",
                 "infra/jars/flink/target/nudgeflow-flink-0.1.0.jar"):
        assert not included(path), path
