"""Resolve the project's Java dependencies from Maven Central, once, into a cache.

Each component (``kafka``, ``cassandra``, ``flink``, ``metrics``, ``consumer``) has its own
``infra/jars/<component>/pom.xml`` so that their transitive dependencies never mix on one
classpath. ``ensure_jars`` copies a component's runtime dependencies into
``$NUDGEFLOW_HOME/jars/<component>/`` with ``mvn dependency:copy-dependencies`` and records the
pom's hash there; a later call with the same pom does nothing. ``jar_urls`` gives their
``file://`` URLs (what the command line puts into the job's ``jars`` setting).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path

from infra.paths import INFRA_DIR, REPO_DIR, StackPaths

COMPONENTS = ("kafka", "cassandra", "flink", "metrics", "consumer")
_STAMP = ".resolved-from"


class JarResolutionError(RuntimeError):
    """Maven could not resolve a component's jars."""


def pom_path(component: str) -> Path:
    """The pom that lists one component's Java dependencies."""
    return INFRA_DIR / "jars" / component / "pom.xml"


def _module_files(component: str) -> list[Path]:
    """The pom and any Java sources of a component (the flink module compiles its own jar).

    The flink jar also carries the schemas (its pom copies ``schemas/`` in, for
    SingleObjectDeserializer), so a changed schema rebuilds it too.
    """
    module = pom_path(component).parent
    schemas = sorted((REPO_DIR / "schemas").glob("**/*.avsc")) if component == "flink" else []
    return [pom_path(component), *sorted(module.glob("src/**/*.java")), *schemas]


def _pom_digest(component: str) -> str:
    digest = hashlib.sha256()
    for path in _module_files(component):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def is_resolved(component: str, paths: StackPaths) -> bool:
    """True when the cache holds the jars of the component's current pom."""
    stamp = paths.jars(component) / _STAMP
    return stamp.exists() and stamp.read_text().strip() == _pom_digest(component)


def ensure_jars(component: str, paths: StackPaths | None = None, quiet: bool = False) -> Path:
    """Resolve a component's jars into the cache if needed and return the jar directory."""
    if component not in COMPONENTS:
        raise ValueError(f"unknown jar component {component!r}; known: {', '.join(COMPONENTS)}")
    paths = paths or StackPaths.from_env()
    target = paths.jars(component)
    if is_resolved(component, paths):
        return target
    mvn = shutil.which("mvn")
    if mvn is None:
        raise JarResolutionError(
            "Maven ('mvn') is not on PATH; install it (apt-get install maven) and try again."
        )
    if not quiet:
        print(
            f"[jars] resolving {component} jars from Maven Central into {target} "
            "(first run only; this can take a few minutes) ...",
            file=sys.stderr,
            flush=True,
        )
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    has_sources = any(path.suffix == ".java" for path in _module_files(component))
    cmd = [
        mvn,
        "-B",
        "-q",
        "-f",
        str(pom_path(component)),
        *(["package"] if has_sources else []),
        "dependency:copy-dependencies",
        "-DincludeScope=runtime",
        f"-DoutputDirectory={target}",
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-20:])
        raise JarResolutionError(
            f"mvn could not resolve the {component} jars (exit {proc.returncode}).\n"
            f"command: {' '.join(cmd)}\n{tail}"
        )
    if has_sources:
        for built in (pom_path(component).parent / "target").glob("*.jar"):
            shutil.copy2(built, target / built.name)
    (target / _STAMP).write_text(_pom_digest(component) + "\n")
    if not quiet:
        count = len(list(target.glob("*.jar")))
        print(f"[jars] {component}: {count} jars ready", file=sys.stderr, flush=True)
    return target


def jar_urls(component: str, paths: StackPaths | None = None) -> list[str]:
    """``file://`` URLs of a component's jars, resolved first if needed (may run Maven).

    What the command line and the tests put into the job's ``jars`` setting (component
    ``flink``: the Kafka connector and nudgeflow-flink); the job itself never resolves jars.
    """
    return sorted(p.as_uri() for p in ensure_jars(component, paths).glob("*.jar"))


def classpath(component: str, paths: StackPaths | None = None) -> str:
    """The ``java -cp`` classpath of a component's resolved jars."""
    jar_dir = ensure_jars(component, paths, quiet=False)
    return ":".join(sorted(str(p) for p in jar_dir.glob("*.jar")))
