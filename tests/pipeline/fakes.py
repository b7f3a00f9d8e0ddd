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


def source_rows(topic, payloads, timestamp):
    """Kafka source rows (SOURCE_RECORD_ROW) of ``payloads``, over two partitions."""
    from pyflink.common import Row

    return [Row(topic, i % 2, i, timestamp, b"k", p, None) for i, p in enumerate(payloads)]


def scripted_outputs(env, cfg, tmp_path, clicks, clicks_at, metadata, metadata_at,
                     outcomes=(), outcomes_at=None, **build_kwargs):
    """The job's graph (``jobs.job.build``) over a scripted scenario of encoded records.

    ``clicks`` carry the job's click watermarks and the Kafka timestamp ``clicks_at``,
    ``metadata`` the timestamp ``metadata_at``, ``outcomes`` (read when given) ``outcomes_at``;
    no definition records (the definition files apply); the membership store writes to a file
    in ``tmp_path``. Returns the ``JobOutputs``.
    """
    from jobs.connectors import click_watermarks
    from jobs.job import build, file_definitions
    from udfs.flink.descriptors import SOURCE_RECORD_ROW

    if outcomes:
        build_kwargs["outcomes"] = env.from_collection(
            source_rows(cfg.outcomes_topic, outcomes, outcomes_at), type_info=SOURCE_RECORD_ROW)
    return build(
        env.from_collection(source_rows(cfg.clicks_topic, clicks, clicks_at),
                            type_info=SOURCE_RECORD_ROW)
        .assign_timestamps_and_watermarks(click_watermarks(cfg)),
        env.from_collection(source_rows(cfg.user_metadata_topic, metadata, metadata_at),
                            type_info=SOURCE_RECORD_ROW),
        env.from_collection([], type_info=SOURCE_RECORD_ROW),
        cfg, file_definitions(cfg), None,
        store=FileWriterFactory(str(tmp_path / "written.jsonl")), **build_kwargs)
