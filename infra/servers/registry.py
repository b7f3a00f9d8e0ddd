"""A schema registry with Confluent's REST API: Apicurio Registry, on loopback.

The job's Confluent wire format option (``output_wire_format: confluent``) registers the output
topics' schemas here and frames each value as ``00 | 4-byte schema id | Avro body``, which
Confluent's deserializers, Kafka Connect's AvroConverter, ksqlDB and Flink's ``avro-confluent``
format read. Apicurio Registry (Apache 2.0) serves Confluent's API under ``/apis/ccompat/v7``;
Confluent's own registry is not on Maven Central and Karapace is not on PyPI, but Apicurio's
server is on Maven Central as one archive (a Quarkus runner jar and its ``lib/``).

``install`` downloads that archive once, checks its SHA-256 and unpacks it into
``$NUDGEFLOW_HOME/jars/registry`` (``infra/bootstrap.sh`` calls it; ``prepare`` does too, so
``stack up`` works without it). Storage: an H2 database file in the stack's data directory, so
schema ids survive a restart (records on the topics keep pointing at the right schema).
Runs on Java 17, the same ``java`` as Kafka's.
"""

from __future__ import annotations

import hashlib
import re
import shutil
import sys
import tarfile
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from infra.paths import StackPaths
from infra.servers.base import Server, probe_http
from infra.servers.kafka import java_executable

VERSION = "3.0.9"
#: Maven Central's copy of the server archive (io.apicurio:apicurio-registry-app:tar.gz:all)
ARCHIVE_URL = ("https://repo1.maven.org/maven2/io/apicurio/apicurio-registry-app/"
               f"{VERSION}/apicurio-registry-app-{VERSION}-all.tar.gz")
ARCHIVE_SHA256 = "2b28181501a20cbf6efcd77f9b7153908fc01f3d3a7c32024c0bd9e1b04c8a43"
RUNNER = f"apicurio-registry-app-{VERSION}-runner.jar"
#: the path of Confluent's REST API on an Apicurio server
CONFLUENT_API = "/apis/ccompat/v7"
DEFAULT_PORT = 8085
#: In the registry's data directory from before its first start on an empty store until it first
#: answered: found at a later start, that first start was cut short (see ``prepare``)
FIRST_START = "first-start"
#: H2's error for a table a query needs and the database lacks (one line of the registry's log)
_MISSING_TABLE = re.compile(r'JdbcSQLSyntaxErrorException: Table "[^"]+" not found')


def install_dir(paths: StackPaths) -> Path:
    """Where the unpacked server lives (its runner jar and ``lib/``)."""
    return paths.jars("registry")


def install(paths: StackPaths | None = None, quiet: bool = False) -> Path:
    """Download, check and unpack the server once; return its directory.

    Raises:
        RuntimeError: the download failed or its checksum is not the pinned one.
    """
    paths = paths or StackPaths.from_env()
    target = install_dir(paths)
    if (target / RUNNER).is_file():
        return target
    if not quiet:
        print(f"[registry] downloading Apicurio Registry {VERSION} (109 MB) from Maven Central "
              f"into {target} (first run only) ...", file=sys.stderr, flush=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as scratch:
        archive = Path(scratch) / "registry.tar.gz"
        sha256 = hashlib.sha256()  # hashed as it arrives: the archive is not read twice
        try:
            with urllib.request.urlopen(ARCHIVE_URL, timeout=60) as response, \
                    archive.open("wb") as out:  # noqa: S310 - a fixed https URL
                while chunk := response.read(1 << 20):
                    sha256.update(chunk)
                    out.write(chunk)
        except (urllib.error.URLError, OSError) as exc:
            raise RuntimeError(f"cannot download the schema registry from {ARCHIVE_URL}: {exc}; "
                               "check the machine reaches Maven Central and try again") from None
        digest = sha256.hexdigest()
        if digest != ARCHIVE_SHA256:
            raise RuntimeError(f"{ARCHIVE_URL} has SHA-256 {digest}, not the pinned "
                               f"{ARCHIVE_SHA256}: the download is corrupt or was replaced; "
                               "nothing was installed")
        unpacked = Path(scratch) / "unpacked"
        with tarfile.open(archive) as tar:
            tar.extractall(unpacked, filter="data")
        if target.exists():
            shutil.rmtree(target)
        unpacked.rename(target)
    return target


class RegistryServer(Server):
    """Apicurio Registry in the foreground, listening on loopback."""

    name = "registry"
    start_timeout_s = 90.0

    def __init__(self, port: int = DEFAULT_PORT) -> None:
        self.port = port

    @property
    def address(self) -> str:
        """Where the HTTP API answers."""
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The base URL of Confluent's API (what ``schema_registry_url`` is set to)."""
        return f"http://{self.address}{CONFLUENT_API}"

    def prepare(self, paths: StackPaths) -> None:
        """Install the server if needed; create the data and log directories.

        A first start cut short is not left to fail every later start. Apicurio creates its
        tables one statement at a time on an empty store, and writes its schema version
        first: a registry killed in between (``stack down`` during a slow first start, a kill,
        the machine going down) leaves a store that says it is set up but lacks tables, and
        every later start fails on it (seen 2026-12-06: 8 of its tables, ``db_version`` 101,
        no ``versions``). So an empty store gets a ``first-start`` mark, which the first probe
        that gets an answer removes; a store still marked at the next start never answered
        and so gave out no schema id: it is moved aside, and the registry starts empty.
        """
        install(paths)
        data = paths.data(self.name)
        for directory in (data, paths.logs(self.name)):
            directory.mkdir(parents=True, exist_ok=True)
        if (data / FIRST_START).exists():
            aside = data.with_name(f"{data.name}.unfinished-{time.strftime('%Y%m%d-%H%M%S')}")
            data.rename(aside)
            data.mkdir()
            print(f"[registry] its first start on {data} was cut short before it ever answered "
                  f"(the store may lack tables): moved aside to {aside}; starting on an empty "
                  "store (it gave out no schema ids)", file=sys.stderr, flush=True)
        if not (data / "registry.mv.db").exists():
            (data / FIRST_START).write_text(
                "the registry has not answered on this store yet (infra/servers/registry.py)\n")

    def command(self, paths: StackPaths) -> list[str]:
        """``java ... -jar apicurio-registry-app-<v>-runner.jar`` with its settings as -D flags."""
        database = paths.data(self.name) / "registry"
        return [java_executable(), "-Xms64m", "-Xmx384m", "-XX:+UseSerialGC",
                "-Dquarkus.http.host=127.0.0.1", f"-Dquarkus.http.port={self.port}",
                f"-Dapicurio.datasource.url=jdbc:h2:file:{database}",
                "-jar", str(install_dir(paths) / RUNNER)]

    def probe(self, paths: StackPaths) -> None:
        """Confluent's ``/subjects`` answers 200 (the store's first start is then over)."""
        probe_http(f"{self.url}/subjects")
        (paths.data(self.name) / FIRST_START).unlink(missing_ok=True)

    def start_failure_hint(self, paths: StackPaths) -> str:
        """A damaged H2 store (tables missing from a database that says it is set up) explained.

        Seen once (2026-12-06): a store whose first start had been cut short while Apicurio
        created its tables (``prepare`` now moves such a store aside itself, if it was made
        with the ``first-start`` mark); every start failed on ``SELECT MAX(globalId) FROM
        versions``. Apicurio does not repair it; only an empty store starts.
        """
        if not _MISSING_TABLE.search(self.this_start_log(paths)):
            return ""
        data = paths.data(self.name)
        return (f"its H2 store ({data}/registry.mv.db) lacks tables it says it has (most likely "
                "a first start cut short while the registry created them, on a store made "
                "before `stack up` marked first starts). Move the directory aside "
                f"(`mv {data} {data}.broken`) and run `nudgeflow stack up` again: the registry "
                "starts empty and jobs register their output schemas again, under new ids, and "
                "records already framed with the old ids (Confluent wire format) name ids the "
                "new registry does not hold, or holds for other schemas")


if __name__ == "__main__":
    install()
