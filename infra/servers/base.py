"""What the stack needs to know of one local server.

A server is prepared (configuration written, storage formatted; idempotent), started as one
foreground child process whose pid ``nudgeflow stack`` records, and probed for readiness with a
real request (not just an open port).
"""

from __future__ import annotations

import urllib.error
import urllib.request
from abc import ABC, abstractmethod

from infra.paths import StackPaths


class NotReady(Exception):
    """A readiness probe failed; the message says what was tried and what came back."""


def probe_http(url: str, timeout_s: float = 2.0) -> None:
    """GET ``url`` (a server's own loopback address); raise ``NotReady`` unless it answers 200."""
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:  # noqa: S310
            if response.status != 200:
                raise NotReady(f"GET {url} answered {response.status}")
    except (urllib.error.URLError, OSError) as exc:
        raise NotReady(f"GET {url} failed: {exc}") from None


#: the line ``stack up`` writes into a server's console log before each start
START_MARKER = "--- nudgeflow stack up at"


class Server(ABC):
    """A server that ``nudgeflow stack up`` starts on loopback."""

    #: short name used for pid files, log directories and messages (kafka, cassandra, ...)
    name: str
    #: seconds ``stack up`` waits for readiness before failing with the log's path
    start_timeout_s: float = 120.0

    @property
    @abstractmethod
    def address(self) -> str:
        """Where clients reach it, e.g. ``127.0.0.1:9092``."""

    def listen_address(self) -> str | None:
        """The address this process binds (checked free before start); None if it binds none."""
        return self.address

    @abstractmethod
    def prepare(self, paths: StackPaths) -> None:
        """Write configuration and format storage; safe to call again."""

    @abstractmethod
    def command(self, paths: StackPaths) -> list[str]:
        """The argv of the foreground process to start."""

    def env(self, paths: StackPaths) -> dict[str, str]:
        """Extra environment variables for the process."""
        return {}

    @abstractmethod
    def probe(self, paths: StackPaths) -> None:
        """Make one real request; raise ``NotReady`` with the reason if it fails."""

    def log_file(self, paths: StackPaths) -> str:
        """The file that holds the process's console output."""
        return str(paths.logs(self.name) / f"{self.name}.out")

    def start_failure_hint(self, paths: StackPaths) -> str:
        """What to do about a start that failed, read from this start's log ("": nothing known)."""
        return ""

    def this_start_log(self, paths: StackPaths, limit: int = 1 << 20) -> str:
        """The console output of the latest start (after ``stack up``'s marker line), its tail."""
        try:
            with open(self.log_file(paths), "rb") as log:
                log.seek(0, 2)
                log.seek(max(0, log.tell() - limit))
                text = log.read().decode(errors="replace")
        except OSError:
            return ""
        return text.rsplit(START_MARKER, 1)[-1]
