"""Where nudgeflow keeps what it downloads and what the local stack writes.

One root, ``$NUDGEFLOW_HOME`` (default ``~/.nudgeflow``), holds:

- ``jars/<component>/``: jars resolved from Maven Central, reused across runs;
- ``stack/<server>/data`` and ``stack/<server>/logs``: each local server's data and logs;
- ``stack/<server>.pid``: the pid of the process ``nudgeflow stack up`` started.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

INFRA_DIR = Path(__file__).resolve().parent
REPO_DIR = INFRA_DIR.parent


@dataclass(frozen=True)
class StackPaths:
    """The directories of one nudgeflow home."""

    home: Path

    @classmethod
    def from_env(cls) -> StackPaths:
        """Paths under ``$NUDGEFLOW_HOME``, or ``~/.nudgeflow`` when it is unset."""
        home = os.environ.get("NUDGEFLOW_HOME") or str(Path.home() / ".nudgeflow")
        return cls(Path(home).expanduser().resolve())

    def jars(self, component: str) -> Path:
        """Directory of the resolved jars of one component (kafka, cassandra, flink)."""
        return self.home / "jars" / component

    @property
    def stack(self) -> Path:
        """Root of the local stack's state."""
        return self.home / "stack"

    def data(self, server: str) -> Path:
        """Data directory of one local server."""
        return self.stack / server / "data"

    def logs(self, server: str) -> Path:
        """Log directory of one local server."""
        return self.stack / server / "logs"

    def conf(self, server: str) -> Path:
        """Generated configuration directory of one local server."""
        return self.stack / server / "conf"

    def pid_file(self, server: str) -> Path:
        """Pid file of the process ``stack up`` started for one server."""
        return self.stack / f"{server}.pid"
