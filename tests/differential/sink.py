"""A test sink that appends the job's output rows to files from inside the job.

``execute_and_collect`` brings each record to the test through one py4j call (about a
millisecond each on this machine): the thousands of records of a differential run are written
to files by the job instead, one per subtask, and read afterwards.
"""

from __future__ import annotations

import uuid
from typing import Any

from pyflink.datastream import ProcessFunction, RuntimeContext


class AppendToFile(ProcessFunction):
    """Appends each (topic, key, value) row's value, hex-encoded, to ``<path>.<instance>``."""

    def __init__(self, path: str) -> None:
        self.path = path

    def open(self, runtime_context: RuntimeContext) -> None:
        """One file per instance (the subtask index is not reachable in thread mode)."""
        self.out = open(f"{self.path}.{uuid.uuid4().hex}", "a")  # noqa: SIM115 - see close()

    def process_element(self, value: Any, ctx: Any) -> Any:
        """Write the row's value; emit nothing."""
        self.out.write(bytes(value[2]).hex() + "\n")
        return iter(())

    def close(self) -> None:
        """Flush and close the file."""
        out = getattr(self, "out", None)
        if out is not None:
            out.close()
