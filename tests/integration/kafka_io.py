"""Small Kafka helpers for integration tests: produce raw records, read a topic to the end."""

import time

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from schemas.codec import Codec
from tests.builders import click_bytes


def produce_raw(cfg, topic, records, max_request_size=1_048_576):
    """Send (key, value) pairs and wait for every acknowledgement; raise if any failed.

    Batched (up to 256 KiB per partition, 20 ms linger): about 20,000 records of 130 bytes a
    second; records of kilobytes are bound by kafka-python's pure-Python CRC32C of each batch
    (about 5 MB/s, twice the unbatched producer's; the ``crc32c`` package would lift it).
    ``max_request_size`` bounds one record (the topic's ``max.message.bytes`` must allow it).
    """
    producer = KafkaProducer(**cfg.python_client_kwargs(), acks="all", linger_ms=20,
                             batch_size=262_144, max_request_size=max_request_size)
    try:
        futures = [producer.send(topic, key=key, value=value) for key, value in records]
        producer.flush(timeout=max(30, len(futures) / 500))
        failed = [f for f in futures if not f.is_done or f.failed()]
        if failed:
            first = failed[0].exception if failed[0].is_done else "no acknowledgement in time"
            raise RuntimeError(f"{len(failed)} of {len(futures)} records to {topic} were not "
                               f"acknowledged; the first: {first!r}")
    finally:
        producer.close()


def read_topic(cfg, topic, expected, timeout_s=120.0, codec=None):
    """Read committed records until ``expected`` arrived or ``timeout_s`` passed, then drain
    a little longer so that extra (duplicate) records would be seen too.

    Returns a list of (key bytes, record name, record dict).
    """
    reader = TopicReader(cfg, topic, codec)
    try:
        deadline = time.monotonic() + timeout_s
        while len(reader.records) < expected and time.monotonic() < deadline:
            reader.drain(0.5)
        return reader.drain()
    finally:
        reader.close()


def read_to_end(cfg, topic, timeout_s=60.0, codec=None):
    """Read ``topic`` (read committed) from its beginning to its end as of now.

    For a topic nothing writes to any more (a bounded run that exited, a job that was
    cancelled): its end is final, so reading to it sees every record, with no wait for late
    ones. Fails if the end is not reached within ``timeout_s``.
    Returns a list of (key bytes, record name, record dict).
    """
    reader = TopicReader(cfg, topic, codec)
    try:
        return reader.read_to_end(timeout_s)
    finally:
        reader.close()


class TopicReader:
    """Reads a topic (read committed) from the beginning and keeps what it saw."""

    def __init__(self, cfg, topic, codec=None):
        self.codec = codec or Codec.load()
        self.consumer = KafkaConsumer(
            **cfg.python_client_kwargs(), isolation_level="read_committed",
            enable_auto_commit=False, auto_offset_reset="earliest", group_id=None)
        # a topic created moments ago may not be in the broker's metadata yet (seen in CI:
        # "No partitions are currently assigned"); each call asks the cluster again
        deadline = time.monotonic() + 30
        while not (ids := self.consumer.partitions_for_topic(topic)):
            assert time.monotonic() < deadline, f"topic {topic} has no partitions after 30 s"
            time.sleep(0.2)
        partitions = [TopicPartition(topic, p) for p in ids]
        self.consumer.assign(partitions)
        self.consumer.seek_to_beginning(*partitions)
        self.records = []  # (key, record name, record)

    def wait_for(self, predicate, timeout_s=90.0, what="records"):
        """Poll until ``predicate(self.records)`` holds; fail with what was seen otherwise."""
        deadline = time.monotonic() + timeout_s
        while not predicate(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"timed out waiting for {what}; saw {self.records}")
            for batch in self.consumer.poll(timeout_ms=500).values():
                for message in batch:
                    name, record = self.codec.decode_named(message.value)
                    self.records.append((message.key, name, record))
        return self.records

    def drain(self, seconds=3.0):
        """Read whatever else arrives within ``seconds`` (to catch extra records)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            for batch in self.consumer.poll(timeout_ms=300).values():
                for message in batch:
                    name, record = self.codec.decode_named(message.value)
                    self.records.append((message.key, name, record))
        return self.records

    def read_to_end(self, timeout_s=60.0):
        """Read until every partition's position reaches its end offset as of this call.

        Read committed: the end is the last stable offset, and a transaction's commit marker
        moves the position past it without a record.
        """
        partitions = list(self.consumer.assignment())
        ends = self.consumer.end_offsets(partitions)
        deadline = time.monotonic() + timeout_s
        while behind := {tp.partition: (position, ends[tp]) for tp in partitions
                         if (position := self.consumer.position(tp)) < ends[tp]}:
            assert time.monotonic() < deadline, (
                f"{partitions[0].topic}: partitions (position, end) {behind} not read to their "
                f"end in {timeout_s:.0f} s")
            for batch in self.consumer.poll(timeout_ms=300).values():
                for message in batch:
                    name, record = self.codec.decode_named(message.value)
                    self.records.append((message.key, name, record))
        return self.records

    def close(self):
        self.consumer.close()


def tick_until(cfg, producer, codec, ticker, read, what, timeout_s=120.0):
    """Send page views of ``ticker``'s users until ``read()`` returns; return what it returned.

    A click is applied once the watermark passes it, and only later clicks move the watermark:
    the ticker's page views (ten at a time, eight users) do that. ``read`` is tried after each
    ten; it raises AssertionError when what it waits for is not there yet (a short timeout of
    its own). Fails with ``what`` after ``timeout_s``.
    """
    deadline, n = time.monotonic() + timeout_s, 0
    while True:
        for _ in range(10):
            n += 1
            user = f"{ticker}-{n % 8}"
            producer.send(cfg.clicks_topic, key=user.encode(),
                          value=click_bytes(codec, f"{ticker}-e{n}", user, "PAGE_VIEW",
                                            int(time.time() * 1000)))
        producer.flush()
        try:
            return read()
        except AssertionError:
            assert time.monotonic() < deadline, f"{what} after {timeout_s:.0f} s"
