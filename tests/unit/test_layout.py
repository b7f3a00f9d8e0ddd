"""The layering rules of the code base, checked on every module's imports (ast, no import run).

- only ``udfs/flink/`` imports pyflink among the things that run inside operators;
- nothing in ``infra/``, ``schemas/`` or ``udfs/`` imports ``jobs`` (the layer above them);
- the job's own modules import neither ``models`` nor ``infra`` (jars, the model and settings
  reach the job as values: the job never resolves jars or runs Maven);
- across packages, only public names are imported.
"""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
JOB_MODULES = ("jobs/job.py", "jobs/env.py", "jobs/connectors.py", "jobs/config.py",
               "jobs/names.py")


def modules(*folders):
    for folder in folders:
        yield from sorted((ROOT / folder).rglob("*.py"))


def imports(path):
    """(module imported, names imported from it) of every import statement in a file."""
    tree = ast.parse(path.read_text(), filename=str(path))
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, ()
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, tuple(alias.name for alias in node.names)


def top(module):
    return module.split(".")[0]


def rel(path):
    return path.relative_to(ROOT).as_posix()


def test_only_the_flink_adapters_import_pyflink():
    offenders = [f"{rel(p)}: {m}" for p in modules("udfs", "schemas", "models")
                 if not rel(p).startswith("udfs/flink/")
                 for m, _ in imports(p) if top(m) == "pyflink"]
    assert offenders == []


def test_nothing_below_jobs_imports_jobs():
    offenders = [f"{rel(p)}: {m}" for p in modules("udfs", "schemas", "infra")
                 for m, _ in imports(p) if top(m) == "jobs"]
    assert offenders == []


@pytest.mark.parametrize("module", JOB_MODULES)
def test_the_job_imports_neither_models_nor_infra(module):
    path = ROOT / module
    assert path.exists(), f"{module} is one of the job's modules"
    offenders = [m for m, _ in imports(path) if top(m) in ("models", "infra")]
    assert offenders == []


def test_no_private_name_is_imported_across_packages():
    offenders = []
    for path in modules("jobs", "udfs", "schemas", "models", "infra"):
        package = rel(path.parent)
        for module, names in imports(path):
            if top(module) not in ("jobs", "udfs", "schemas", "models", "infra"):
                continue
            source_package = module.replace(".", "/")
            if (ROOT / source_package).is_dir():
                source_package = source_package  # a package: names are its modules
            else:
                source_package = source_package.rsplit("/", 1)[0]
            if source_package == package:
                continue
            offenders += [f"{rel(path)}: {module}.{n}" for n in names
                          if n.startswith("_") and not n.startswith("__")]
        offenders += [f"{rel(path)}: {use}" for use in private_uses(path)]
    assert offenders == []


def private_uses(path):
    """``alias._name`` where alias is a project module of another package."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = rel(path.parent).replace("/", ".")
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                aliases[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                aliases[alias.asname or alias.name] = alias.name
    for node in ast.walk(tree):
        if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name)
                and node.attr.startswith("_") and not node.attr.startswith("__")):
            module = aliases.get(node.value.id)
            if module is None or top(module) not in ("jobs", "udfs", "schemas", "models", "infra"):
                continue
            if module.rsplit(".", 1)[0] != package and module != package:
                yield f"{module}.{node.attr}"
