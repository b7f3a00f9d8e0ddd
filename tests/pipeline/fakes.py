"""Stand-ins for Cassandra/Redis in pipeline tests (the real ones are in integration tests).

The writer runs inside the Flink job's embedded Python, another process: it records what it
was asked to write in a JSON-lines file the test reads afterwards.
"""

import json


class FileWriter:
    """A MembershipWriter that appends each change to a file (erasures to ``<path>.erased``)."""

    def __init__(self, path):
        self.path = path

    def write_many(self, changes):
        with open(self.path, "a") as out:
            for change in changes:
                out.write(json.dumps(change, sort_keys=True) + "\n")

    def erase_user(self, user_id, segment_ids):
        with open(self.path + ".erased", "a") as out:
            out.write(json.dumps({"user_id": user_id, "segments": sorted(segment_ids)}) + "\n")
        return []

    def record_definition(self, definition_id, description):
        with open(self.path + ".definitions", "a") as out:
            out.write(f"{definition_id} {description}\n")

    def close(self):
        pass


class FileWriterFactory:
    """Picklable factory: the engine creates its writer in open()."""

    def __init__(self, path):
        self.path = path

    def __call__(self, on_retry=None, on_rebuild=None):
        return FileWriter(self.path)


def as_bytes(value):
    """execute_and_collect hands Java byte[] over as signed ints; UDFs receive bytes."""
    if value is None or isinstance(value, bytes | bytearray):
        return None if value is None else bytes(value)
    return bytes(b & 0xFF for b in value)
