"""The schema registry on a store whose first start was cut short, with the real Apicurio and H2.

Apicurio creates its tables one statement at a time on an empty store, its schema version
first; a first start killed part-way leaves a store that says it is set up and lacks tables,
and every later start fails. Here such a store is made with the registry's own DDL and H2:
unmarked (made before ``stack up`` marked first starts) it fails with what to do; marked, it is
moved aside and the registry starts empty.
"""

import subprocess
import zipfile
from pathlib import Path

import pytest

from infra import stack
from infra.paths import StackPaths
from infra.servers import registry
from infra.servers.kafka import java_executable
from infra.servers.registry import FIRST_START, RegistryServer
from infra.stack import StackError
from tests.ports import free_port

#: runs the given SQL statements on an H2 file database as the registry's user
_RUN_SQL = """
import java.nio.file.*;
import java.sql.*;
public class RunSql {
  public static void main(String[] a) throws Exception {
    try (Connection c = DriverManager.getConnection(a[0], "sa", "sa")) {
      for (String sql : Files.readString(Path.of(a[1])).split(";\\n")) {
        if (!sql.isBlank()) c.createStatement().execute(sql);
      }
    }
  }
}
"""


def _half_made_store(install: Path, data: Path, tmp_path: Path) -> None:
    """The registry's H2 DDL up to its ``groups`` table: what a first start killed there left."""
    ddl = zipfile.ZipFile(install / registry.RUNNER).read(
        "io/apicurio/registry/storage/impl/sql/h2.ddl").decode()
    lines = [line for line in ddl.splitlines() if line.strip() and not line.startswith("--")]
    statements = "\n".join(lines).split(";\n")
    cut = next(i for i, sql in enumerate(statements) if sql.startswith("CREATE TABLE groups"))
    (tmp_path / "half.sql").write_text(";\n".join(statements[:cut]) + ";\n")
    (tmp_path / "RunSql.java").write_text(_RUN_SQL)
    [h2] = (install / "lib").glob("*h2database.h2-*.jar")
    data.mkdir(parents=True)
    subprocess.run([java_executable(), "-cp", str(h2), str(tmp_path / "RunSql.java"),
                    f"jdbc:h2:file:{data / 'registry'}", str(tmp_path / "half.sql")],
                   check=True, timeout=120)


@pytest.mark.parametrize("marked", [False, True], ids=["made-before-the-mark", "marked"])
def test_a_store_whose_first_start_was_cut_short(tmp_path, marked):
    install = registry.install(StackPaths.from_env())  # the stack's copy (bootstrap installs it)
    paths = StackPaths(tmp_path / "home")
    paths.jars("registry").parent.mkdir(parents=True)
    paths.jars("registry").symlink_to(install)
    data = paths.data("registry")
    _half_made_store(install, data, tmp_path)
    if marked:
        (data / FIRST_START).write_text("the first start never answered\n")
    server = RegistryServer(port=free_port())
    try:
        if not marked:
            with pytest.raises(StackError, match="lacks tables it says it has") as info:
                stack.up(paths, [server], say=lambda _: None)
            assert f"`mv {data} {data}.broken`" in str(info.value)
            return
        stack.up(paths, [server], say=lambda _: None)
        server.probe(paths)  # Confluent's API answers on the new, empty store
        [aside] = data.parent.glob("data.unfinished-*")
        assert (aside / "registry.mv.db").exists() and (aside / FIRST_START).exists()
        assert not (data / FIRST_START).exists()  # it answered: the next start keeps it
    finally:
        stack.down(paths, [server], say=lambda _: None)
