"""The drill runner: a workload on the real stack, faults injected mid-run, then the proof.

A drill is one function (``drill_taskmanager_kills``, ``drill_server_outage``) that takes a
``Stack`` (the running local stack and a configuration of its own), a ``RecordSource`` (what to
send, what is owed) and how many faults to inject; it returns a ``DrillResult``, one row of the
drill table. Every drill checks the same things (``verify``):

- triggers on the tier topics, read committed: every owed trigger once (lost, duplicated);
- memberships: the final state per (user, segment) on the segment-changes topic, compared
  with Cassandra's ``membership_by_user`` and Redis's user sets (lost = missing in a store,
  extra = in a store but not on the topic); no change id twice on the topic;
- dead letters: as many as the source's bad records, and as many per rule code;
- the job RUNNING at the end, and no restart caused by the job's Python code or input (an
  exception with a Python traceback); restarts caused by the fault itself are counted.

A drill of bad input is a ``RecordSource`` with ``bad_records`` set, its records mixed with the
valid ones, run by the same functions: ``drill_fuzz`` (``FuzzedWorkload``: bad records of every
class) and ``drill_burst`` (``BurstWorkload``: two bursts of future clicks, the outputs compared
with a run without them).
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import socket
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import redis

from infra import deploy, stack
from infra.servers.flink import FlinkTaskManager
from jobs.bench.bench import daytime_zone
from jobs.cli import wiring
from jobs.config import ISOLATION_FIELDS, NudgeflowConfig, isolated, replace
from jobs.workload import fuzz
from schemas.codec import Codec
from tests.builders import CART, click_bytes, metadata_bytes
from tests.integration import flink_jobs
from tests.integration.kafka_io import TopicReader, produce_raw, read_to_end
from udfs.campaigns.grammar import TIERS
from udfs.stores import keys

MIN = 60_000
#: event time between two batches of carts: more than drill_cfg's max_out_of_orderness_ms
BATCH_SPACING_MS = 3_000
#: once every owed trigger arrived, the job runs on this long (drill_cfg checkpoints every
#: second) before it is cancelled and every output read to its end: a late duplicate shows
LINGER_S = 6.0

#: the job's flags a drill sets (its own topics, keyspace, checkpointing, no churn model)
DRILL_FIELDS = (*ISOLATION_FIELDS, "cassandra_keyspace", "churn_model", "idleness_ms",
                "max_out_of_orderness_ms", "checkpoint_interval_ms", "parallelism",
                "delivery_guarantee")


# --- what a drill sends ------------------------------------------------------------------------


class RecordSource(Protocol):
    """What a drill sends and what it is owed."""

    name: str  # the "load" column of the table

    def metadata(self, cfg: NudgeflowConfig, codec: Codec) -> list[tuple[bytes, bytes]]:
        """(key, value) records for the user-metadata topic, sent before the job starts."""
        ...

    def click_batches(self, cfg: NudgeflowConfig, codec: Codec
                      ) -> Iterator[list[tuple[bytes | None, bytes]]]:
        """Batches of (key, value) records for the clicks topic; faults fall between batches."""
        ...

    def owed_triggers(self) -> set[tuple[str, str]]:
        """(user id, campaign id) of every trigger the run must deliver exactly once."""
        ...

    def users(self) -> list[str]:
        """The users whose memberships are compared across topic and stores."""
        ...

    def expected_reasons(self) -> dict[str, int]:
        """Rule code (a DeadLetter's ``problems[0].code``) -> how many dead letters must have it;
        the counts add up to ``bad_records`` ({} for a valid workload)."""
        ...

    bad_records: int  # records that must end in the dead-letter topic (0: a valid workload)


@dataclass
class OwedCartTriggers:
    """Each user: metadata with SMS consent, one add-to-cart over $100 -> exactly one
    high-value-cart-sms trigger (P1) and a high-value-cart membership; then a clock click
    moves event time on 31 minutes (every cart also enters cart-abandoners, by a timer).

    Batch ``i``'s carts are at ``t0 + i * BATCH_SPACING_MS``, more than the drills'
    out-of-orderness bound apart: the event-time engine applies a batch once the watermark
    passes it, so the next batch releases it (a fault after batch 1 meets a job with
    triggers out)."""

    count: int
    batch: int = 150
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:6])
    t0: int = field(default_factory=lambda: (int(time.time() * 1000) // MIN - 30) * MIN)
    bad_records: int = 0

    @property
    def name(self) -> str:
        """The load column."""
        return f"{self.count:,} users x 1 cart"

    def batch_time(self, i: int) -> int:
        """The event time of batch ``i``'s carts."""
        return self.t0 + i * BATCH_SPACING_MS

    def users(self) -> list[str]:
        """The drill's users."""
        return [f"d{self.run}-u{i:05d}" for i in range(self.count)]

    def metadata(self, cfg: NudgeflowConfig, codec: Codec) -> list[tuple[bytes, bytes]]:
        """Every user with SMS consent, in a time zone where it is daytime (no quiet hours)."""
        zone = daytime_zone(self.t0)
        return [(u.encode(), metadata_bytes(codec, u, zone, at=self.t0, sms=True))
                for u in self.users()]

    def click_batches(self, cfg: NudgeflowConfig, codec: Codec
                      ) -> Iterator[list[tuple[bytes | None, bytes]]]:
        """One add-to-cart per user, in batches; then the clock click."""
        users = self.users()
        for n in range(0, len(users), self.batch):
            yield [(u.encode(), click_bytes(codec, f"{u}-cart", u, "ADD_TO_CART",
                                            self.batch_time(n // self.batch), **CART))
                   for u in users[n:n + self.batch]]
        clock = f"d{self.run}-clock"
        yield [(clock.encode(), click_bytes(codec, f"{clock}-1", clock, "PAGE_VIEW",
                                            self.t0 + 31 * MIN))]

    def owed_triggers(self) -> set[tuple[str, str]]:
        """One high-value-cart-sms per user."""
        return {(u, "high-value-cart-sms") for u in self.users()}

    def expected_reasons(self) -> dict[str, int]:
        """No bad record."""
        return {}


#: fuzz classes of many bytes each (1 MB, 300 KB, 100 KB, 70 KB): at most ``heavy_cap`` each
#: (kafka-python's pure-Python CRC32C produces about 4 MB/s)
HEAVY_CLASSES = ("string_1mb", "poison_event_id", "user_id_100kb", "metadata_too_large")
#: fuzz classes the broker refuses, so they never reach the job: a null key on the compacted
#: user-metadata topic (``InvalidRecordException``); the clicks topic's ``null_key`` is sent
UNSENDABLE_CLASSES = ("metadata_null_key",)
#: the one class whose time must be taken from the broker's append time (wall clock); every
#: other class's time is relative to the valid records of its batch, so that a record only
#: Python rejects (its time inside the window, which the Java assigner lets count) moves event
#: time no further than the valid records around it (README, Decode and validate)
APPEND_TIME_CLASSES = ("eleven_minutes_ahead",)
#: the largest fuzzed record (``string_1mb``, just over 1 MiB): the fuzz drill raises the
#: clicks topic's max.message.bytes and the producer's max_request_size to this
FUZZ_MAX_RECORD_BYTES = 2 * 1_048_576


def _spread(total: int, parts: int, i: int) -> int:
    """Part ``i`` of ``total`` split as evenly as possible into ``parts``."""
    return total * (i + 1) // parts - total * i // parts


@dataclass
class FuzzedWorkload:
    """The valid workload (``OwedCartTriggers``) with ``fuzzed`` bad records of every class
    sendable to Kafka (``jobs/workload/fuzz.py``: 36 click classes, 9 metadata classes) mixed
    in: the bad metadata among the valid metadata, the bad clicks shuffled into every batch of
    valid clicks. Owed: the valid workload's triggers, and one dead letter per bad record with
    its class's rule code."""

    valid: OwedCartTriggers
    fuzzed: int
    heavy_cap: int = 50
    seed: int = 19
    bad_records: int = 0
    counts: dict[str, int] = field(default_factory=dict)  # class -> records
    reasons: dict[str, str] = field(default_factory=dict)  # class -> rule code

    def __post_init__(self) -> None:
        if self.fuzzed < 0:
            raise ValueError(f"fuzzed must be >= 0, got {self.fuzzed}")
        now = int(time.time() * 1000)
        self.reasons = {r.cls: r.expected_reason for r in
                        [*fuzz.fuzz_records(len(fuzz.CLICK_CLASSES), self.seed, now),
                         *fuzz.fuzz_metadata_records(len(fuzz.METADATA_CLASSES), self.seed,
                                                     now)]}
        classes = [c for c in (*fuzz.CLICK_CLASSES, *fuzz.METADATA_CLASSES)
                   if c not in UNSENDABLE_CLASSES]
        heavy = [c for c in classes if c in HEAVY_CLASSES]
        light = [c for c in classes if c not in HEAVY_CLASSES]
        per_heavy = min(self.heavy_cap, self.fuzzed // len(classes))
        rest = self.fuzzed - per_heavy * len(heavy)
        self.counts = {c: per_heavy for c in heavy}
        self.counts.update({c: _spread(rest, len(light), i) for i, c in enumerate(light)})
        self.bad_records = sum(self.counts.values())

    @property
    def name(self) -> str:
        """The load column."""
        return (f"{self.valid.name} + {self.bad_records:,} fuzzed "
                f"({sum(1 for n in self.counts.values() if n)} classes)")

    def users(self) -> list[str]:
        """The valid workload's users."""
        return self.valid.users()

    def owed_triggers(self) -> set[tuple[str, str]]:
        """The valid workload's triggers."""
        return self.valid.owed_triggers()

    def expected_reasons(self) -> dict[str, int]:
        """Every bad record's rule code."""
        out: Counter[str] = Counter()
        for cls, n in self.counts.items():
            out[self.reasons[cls]] += n
        return {code: n for code, n in out.items() if n}

    def metadata(self, cfg: NudgeflowConfig, codec: Codec) -> list[tuple[bytes, bytes]]:
        """The valid metadata and the bad metadata, shuffled together."""
        wanted = {c: n for c, n in self.counts.items() if c in fuzz.METADATA_CLASSES}
        made = fuzz.fuzz_metadata_records(max(wanted.values(), default=0)
                                          * len(fuzz.METADATA_CLASSES), self.seed,
                                          int(time.time() * 1000))
        bad: list[tuple[bytes, bytes]] = []
        for record in made:
            if wanted.get(record.cls, 0) > 0:
                wanted[record.cls] -= 1
                assert record.key is not None, f"{record.cls} cannot be sent: it has no key"
                bad.append((record.key, record.value))
        mixed = [*self.valid.metadata(cfg, codec), *bad]
        random.Random(self.seed).shuffle(mixed)  # noqa: S311 - test data, not crypto
        return mixed

    def click_batches(self, cfg: NudgeflowConfig, codec: Codec
                      ) -> Iterator[list[tuple[bytes | None, bytes]]]:
        """Each batch of valid clicks with its share of every bad click class, shuffled."""
        rng = random.Random(self.seed)  # noqa: S311 - test data, not crypto
        carts = -(-self.valid.count // self.valid.batch)  # the valid batches before the clock
        click_classes = [c for c in fuzz.CLICK_CLASSES if self.counts.get(c)]
        for i, batch in enumerate(self.valid.click_batches(cfg, codec)):
            if i >= carts:
                yield batch  # the clock click
                continue
            at = self.valid.batch_time(i)
            now = int(time.time() * 1000)  # about the records' append time
            mixed = list(batch)
            for n, cls in enumerate(click_classes):
                k = _spread(self.counts[cls], carts, i)
                if k:
                    mixed.extend((r.key, r.value) for r in fuzz.fuzz_records(
                        k, self.seed * 1_000_000 + i * 100 + n,
                        now if cls in APPEND_TIME_CLASSES else at, classes=(cls,)))
            rng.shuffle(mixed)
            yield mixed


@dataclass
class BurstWorkload:
    """The valid workload with two invalid bursts shuffled into its first two batches:
    ``burst`` clicks far in the future (2100, or about year 146 million) and ``burst`` clicks
    11 to 12 minutes ahead of the broker's append time, all rejected (``TIME_IN_FUTURE``)."""

    valid: OwedCartTriggers
    burst: int
    seed: int = 11
    bad_records: int = 0

    def __post_init__(self) -> None:
        self.bad_records = 2 * self.burst

    @property
    def name(self) -> str:
        """The load column."""
        return self.valid.name

    def users(self) -> list[str]:
        """The valid workload's users."""
        return self.valid.users()

    def owed_triggers(self) -> set[tuple[str, str]]:
        """The valid workload's triggers."""
        return self.valid.owed_triggers()

    def expected_reasons(self) -> dict[str, int]:
        """Every burst record is an event time in the future."""
        return {"TIME_IN_FUTURE": self.bad_records} if self.bad_records else {}

    def metadata(self, cfg: NudgeflowConfig, codec: Codec) -> list[tuple[bytes, bytes]]:
        """The valid metadata."""
        return self.valid.metadata(cfg, codec)

    def click_batches(self, cfg: NudgeflowConfig, codec: Codec
                      ) -> Iterator[list[tuple[bytes | None, bytes]]]:
        """The valid batches; the two bursts shuffled into the first two."""
        rng = random.Random(self.seed)  # noqa: S311 - test data, not crypto
        for i, batch in enumerate(self.valid.click_batches(cfg, codec)):
            if i < 2 and self.burst:
                now = int(time.time() * 1000)
                bursts = [*fuzz.fuzz_records(self.burst, self.seed * 10 + i, now,
                                             classes=("far_future", "eleven_minutes_ahead"))]
                half = [(r.key, r.value) for r in bursts]
                mixed = list(batch) + half
                rng.shuffle(mixed)
                yield mixed
            else:
                yield batch


# --- the stack and its faults ------------------------------------------------------------------


@dataclass
class Stack:
    """The running local stack and a drill's own configuration (topics, keyspace, prefix)."""

    paths: Any  # infra.paths.StackPaths
    cfg: NudgeflowConfig

    def server(self, name: str) -> Any:
        """The stack's server called ``name``."""
        return next(s for s in stack.default_servers() if s.name == name)

    def kill(self, name: str) -> None:
        """kill -9 a server's process (its process group: the JVM under its start script)."""
        pid = stack.running_pid(self.server(name), self.paths)
        assert pid is not None, f"{name} is not running"
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        deadline = time.monotonic() + 30
        listen = self.server(name).listen_address()
        # the group's other processes (e.g. Redis's fork writing its AOF) hold the port a
        # moment longer than the pid file's process
        while (stack.running_pid(self.server(name), self.paths) is not None
               or (listen and _listening(listen))):
            assert time.monotonic() < deadline, f"{name} survived kill -9"
            time.sleep(0.2)

    def stop(self, name: str) -> None:
        """Stop a server the way `nudgeflow stack down` does."""
        stack.down(self.paths, [self.server(name)], say=lambda _: None)

    def start(self, name: str) -> None:
        """Start a server and wait until it answers."""
        stack.up(self.paths, [self.server(name)], say=lambda _: None)

    def wipe_redis_data(self) -> None:
        """Delete Redis's data directory (snapshot and append-only file): it restarts empty."""
        data = self.paths.data("redis")
        shutil.rmtree(data, ignore_errors=True)
        data.mkdir(parents=True)


def _listening(address: str) -> bool:
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=1):
            return True
    except OSError:
        return False


Fault = Callable[[Stack], str]  # injects one fault; returns its description


def taskmanager_kill(st: Stack) -> str:
    """kill -9 the TaskManager and start a fresh one (the job restores onto it)."""
    st.kill(FlinkTaskManager.name)
    time.sleep(1)
    st.start(FlinkTaskManager.name)
    return "TaskManager kill -9"


def outage(name: str, seconds: float, wipe_redis: bool = False) -> Fault:
    """A server down for ``seconds`` (Redis: kill -9 and, with ``wipe_redis``, its data gone)."""

    def fault(st: Stack) -> str:
        if name == "redis":
            st.kill(name)
            if wipe_redis:
                st.wipe_redis_data()
        else:
            st.stop(name)
        time.sleep(seconds)
        st.start(name)
        how = "kill -9 + data wiped" if wipe_redis else ("kill -9" if name == "redis" else
                                                          "stopped")
        return f"{name} {how}, down {seconds:.0f} s"

    return fault


# --- results -------------------------------------------------------------------------------------


@dataclass
class DrillResult:
    """One row of the drill table, with what was compared."""

    drill: str
    load: str
    faults: str
    lost: int = 0
    duplicated: int = 0
    restarts: int = 0
    seconds: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    #: the run's outputs (records by kind: triggers, segment_changes, decisions), to compare runs
    outputs: dict[str, list[dict[str, Any]]] = field(default_factory=dict, repr=False)

    HEADER = ("drill", "load", "faults", "lost", "duplicated", "restarts", "duration")

    def row(self) -> tuple[str, ...]:
        """The table row."""
        return (self.drill, self.load, self.faults, str(self.lost), str(self.duplicated),
                str(self.restarts), f"{self.seconds:.0f} s")


def format_table(results: list[DrillResult]) -> str:
    """The drill table (markdown)."""
    rows = [DrillResult.HEADER, *(r.row() for r in results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(DrillResult.HEADER))]
    lines = ["| " + " | ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) + " |"
             for row in rows]
    lines.insert(1, "|" + "|".join("-" * (w + 2) for w in widths) + "|")
    return "\n".join(lines)


# --- running a drill ------------------------------------------------------------------------------


def drill_cfg(base: NudgeflowConfig, run: str) -> NudgeflowConfig:
    """A drill's own topics, group, transactional ids, Redis prefix and Cassandra keyspace."""
    cfg = replace(
        isolated(base, f"drill-{run}"), cassandra_keyspace=f"drill_{run}",
        checkpoint_interval_ms=1000, parallelism=2, idleness_ms=500,
        max_out_of_orderness_ms=2000, churn_model="off")
    wiring.provision_topics(cfg, say=lambda _: None)
    wiring.provision_cassandra(cfg, say=lambda _: None)
    return cfg


def drop_drill(cfg: NudgeflowConfig) -> None:
    """Drop a drill's keyspace and delete its topics (``drill_cfg``'s own)."""
    drop_keyspace(cfg)
    wiring.delete_run_topics(cfg, cfg.consumer_group)


def drop_keyspace(cfg: NudgeflowConfig) -> None:
    """Drop a drill's keyspace (drills leave no tables behind)."""
    session = wiring.cassandra_session(cfg)
    try:
        session.execute(f"DROP KEYSPACE IF EXISTS {cfg.cassandra_keyspace}", timeout=60)
    finally:
        session.cluster.shutdown()


def run_drill(st: Stack, drill: str, source: RecordSource, faults: list[Fault],
              fault_after_batches: list[int], timeout_s: float = 420.0,
              max_record_bytes: int = 1_048_576) -> DrillResult:
    """Send ``source``'s records, inject ``faults[i]`` after batch ``fault_after_batches[i]``,
    wait until every owed trigger and dead letter arrived, then verify everything (``verify``).
    ``max_record_bytes``: the producer's limit of one record (the topic's must allow it)."""
    cfg, codec = st.cfg, Codec.load()
    started = time.monotonic()
    produce_raw(cfg, cfg.user_metadata_topic, source.metadata(cfg, codec), max_record_bytes)
    tiers = {tier: TopicReader(cfg, cfg.trigger_topic(tier), codec) for tier in TIERS}
    letters = TopicReader(cfg, cfg.dead_letter_topic, codec)
    job_id = flink_jobs.submit(cfg, fields=DRILL_FIELDS)
    described: list[str] = []
    owed = source.owed_triggers()
    try:
        schedule = dict(zip(fault_after_batches, faults, strict=True))
        batches = list(source.click_batches(cfg, codec))
        deadline = time.monotonic() + timeout_s
        # the users' metadata in first, so whether a cart's trigger waits for it (DEFERRED,
        # AWAITING_METADATA: a race between two topics) cannot differ between two runs
        _wait_for_consumed(cfg, deadline, cfg.user_metadata_topic)
        for n, batch in enumerate(batches):
            if n == len(batches) - 1 and n > 0:
                # the last batch moves event time on by half an hour (the clock click): sent
                # once the job has read (and checkpointed) the carts, as live time would. Sent
                # into a backlog left by a fault, it could run ahead of the other partitions'
                # carts while their splits count as idle (idleness is wall-clock time and the
                # fault stalled them) and make those carts late: docs/operations.md, "Idleness
                # after a stall". (Not "once the triggers are out": a trigger deferred for the
                # user's metadata falls due only when event time moves on.)
                _wait_for_consumed(cfg, deadline)
            produce_raw(cfg, cfg.clicks_topic, batch, max_record_bytes)
            if n in schedule:
                _wait_for_some(tiers, 180)
                fault_at = int(time.time() * 1000)
                described.append(schedule[n](st))
                # the next fault (or the clock) meets a job that recovered from this one
                _wait_for_checkpoint(cfg, job_id, fault_at, 180)
            time.sleep(0.3)
        _wait_for_all(tiers, len(owed), deadline)
        while len(_dead_letters(letters)) < source.bad_records and time.monotonic() < deadline:
            letters.drain(0.5)
        # exactly-once: a duplicate would show within a checkpoint or two (1 s apart here);
        # the job runs on for several while every reader is polled in turn
        linger_until = time.monotonic() + LINGER_S
        while time.monotonic() < linger_until:
            for reader in (*tiers.values(), letters):
                reader.drain(0.3)
        state = deploy.job_state(cfg.flink_rest_url, job_id)
        exceptions = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}/exceptions")
    finally:
        try:
            _cancel_and_wait(cfg, job_id)
            # nothing is written any more: every reader reads its topic to the end
            for reader in (*tiers.values(), letters):
                reader.read_to_end()
        finally:
            for reader in (*tiers.values(), letters):
                reader.close()
    kinds = sorted({d.split(",")[0] for d in described})
    result = DrillResult(drill, source.name, f"{len(described)} x " + "; ".join(kinds)
                         if described else "none")
    verify(result, cfg, codec, source, _triggers(tiers), _dead_letters(letters), state,
           exceptions)
    result.seconds = time.monotonic() - started
    return result


def _cancel_and_wait(cfg: NudgeflowConfig, job_id: str) -> None:
    """Cancel the job and wait until it ended: its topics' ends are then final."""
    flink_jobs.cancel(cfg, job_id)
    deploy.wait_for_state(cfg.flink_rest_url, job_id, {"CANCELED", "FAILED", "FINISHED"}, 120)


def _dead_letters(reader: TopicReader) -> list[dict[str, Any]]:
    return [r for _, name, r in reader.records if name == "DeadLetter"]


def rule_code(dead_letter: dict[str, Any]) -> str:
    """A DeadLetter's rule code: its first problem's (``udfs.intake.RULE_CODES``), else its
    reason code (e.g. ``LATE_EVENT``)."""
    problems = dead_letter.get("problems") or []
    return str(problems[0]["code"] if problems else dead_letter["reason_code"])


def _triggers(tiers: dict[str, TopicReader]) -> list[tuple[str, dict[str, Any]]]:
    return [(tier, record) for tier, reader in tiers.items()
            for _, name, record in reader.records if name == "TriggerEvent"]


def _wait_for_consumed(cfg: NudgeflowConfig, deadline: float, topic: str | None = None) -> None:
    """Wait until the job's committed offsets (on checkpoints) reach ``topic``'s end (default:
    the clicks topic)."""
    from kafka import KafkaAdminClient, KafkaConsumer, TopicPartition

    admin = KafkaAdminClient(**cfg.python_client_kwargs())
    consumer = KafkaConsumer(**cfg.python_client_kwargs(), group_id=None)
    try:
        topic = topic or cfg.clicks_topic
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic)]
        end = consumer.end_offsets(parts)
        while time.monotonic() < deadline:
            group = admin.list_group_offsets(cfg.consumer_group).get(cfg.consumer_group, {})
            if all(group.get(tp) is not None and group[tp].offset >= end[tp] for tp in parts):
                return
            time.sleep(0.5)
    finally:
        admin.close()
        consumer.close()


def _wait_for_checkpoint(cfg: NudgeflowConfig, job_id: str, after_ms: int,
                         timeout_s: float) -> None:
    """Wait until a checkpoint of the job completes after ``after_ms`` (it recovered)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            stats = deploy.rest_get(cfg.flink_rest_url, f"/jobs/{job_id}/checkpoints")
            latest = ((stats.get("latest") or {}).get("completed") or {})
            if (latest.get("latest_ack_timestamp") or 0) > after_ms:
                return
        except Exception:  # noqa: BLE001 - the REST API may be down with the TaskManager
            pass
        time.sleep(0.5)


def _wait_for_all(tiers: dict[str, TopicReader], owed: int, deadline: float) -> None:
    """Read triggers until ``owed`` arrived or the deadline passed (verify counts the loss)."""
    while len(_triggers(tiers)) < owed and time.monotonic() < deadline:
        for reader in tiers.values():
            reader.drain(0.3)


def _wait_for_some(tiers: dict[str, TopicReader], timeout_s: float) -> None:
    """Faults hit a job that is processing: wait for its first triggers."""
    deadline = time.monotonic() + timeout_s
    while not _triggers(tiers):
        assert time.monotonic() < deadline, "no trigger arrived before the fault"
        for reader in tiers.values():
            reader.drain(0.3)


# --- verification ---------------------------------------------------------------------------------


def verify(result: DrillResult, cfg: NudgeflowConfig, codec: Codec, source: RecordSource,
           triggers: list[tuple[str, dict[str, Any]]], dead_letters: list[dict[str, Any]],
           state: str, exceptions: dict[str, Any]) -> None:
    """Fill ``result`` in: lost, duplicated, restarts, the problems found (if any) and the
    run's outputs (``result.outputs``)."""
    owed = source.owed_triggers()
    got = [(r["user_id"], r["campaign_id"]) for _, r in triggers]
    ids = [r["trigger_id"] for _, r in triggers]
    lost_triggers = len(owed - set(got))
    duplicate_triggers = len(ids) - len(set(ids))
    unexpected = len(set(got) - owed)

    # the job ended (run_drill waited for it): every topic is read to its final end
    records = read_to_end(cfg, cfg.segment_changes_topic, codec=codec)
    change_ids = [r["change_id"] for _, name, r in records if name == "SegmentChange"]
    duplicate_changes = len(change_ids) - len(set(change_ids))
    users = set(source.users())
    expected: dict[str, set[str]] = {u: set() for u in users}
    for _, name, r in records:
        if name == "SegmentChange" and r["user_id"] in users:
            (expected[r["user_id"]].add if r["change"] == "ENTER"
             else expected[r["user_id"]].discard)(r["segment_id"])
    in_cassandra = cassandra_memberships(cfg, users)
    in_redis = redis_memberships(cfg, users)
    lost_c, extra_c = _diff(expected, in_cassandra)
    lost_r, extra_r = _diff(expected, in_redis)

    decisions = [r for _, name, r in read_to_end(cfg, cfg.trigger_decisions_topic, codec=codec)
                 if name == "TriggerDecision"]
    result.outputs = {
        "triggers": [r for _, r in triggers],
        "segment_changes": [r for _, name, r in records if name == "SegmentChange"],
        "decisions": decisions,
    }
    reasons = Counter(rule_code(d) for d in dead_letters)
    expected_reasons = Counter(source.expected_reasons())

    entries = exceptions.get("exceptionHistory", {}).get("entries", [])
    python_failures = [e for e in entries if "Traceback (most recent call last)" in
                       (e.get("stacktrace") or "")]
    result.lost = lost_triggers + lost_c + lost_r
    result.duplicated = duplicate_triggers + duplicate_changes + extra_c + extra_r
    result.restarts = len(entries)
    result.details = {
        "triggers": len(got), "owed": len(owed), "lost_triggers": lost_triggers,
        "duplicate_triggers": duplicate_triggers, "unexpected_triggers": unexpected,
        "segment_changes": len(change_ids), "duplicate_changes": duplicate_changes,
        "memberships": sum(len(s) for s in expected.values()),
        "cassandra_lost": lost_c, "cassandra_extra": extra_c,
        "redis_lost": lost_r, "redis_extra": extra_r,
        "dead_letters": len(dead_letters), "dead_letter_codes": dict(sorted(reasons.items())),
        "state": state,
        "python_failures": len(python_failures),
    }
    problems = result.problems
    if result.lost or result.duplicated or unexpected:
        problems.append(f"lost/duplicated/unexpected: {result.details}")
    if state != "RUNNING":
        problems.append(f"the job is {state} at the end")
    if python_failures:
        problems.append("a restart caused by the job's Python (input or code): "
                        + python_failures[0].get("exceptionName", "?") + ": "
                        + (python_failures[0].get("stacktrace") or "")[:1500])
    if len(dead_letters) != source.bad_records:
        problems.append(f"{len(dead_letters)} dead letters, expected {source.bad_records}: "
                        f"{[d['reason'][:200] for d in dead_letters[:5]]}")
    if reasons != expected_reasons:
        missing, unexpected_codes = expected_reasons - reasons, reasons - expected_reasons
        examples = [d["reason"][:200] for d in dead_letters
                    if rule_code(d) in unexpected_codes][:3]
        problems.append(f"dead letters by rule code differ from the bad records': missing "
                        f"{dict(missing)}, unexpected {dict(unexpected_codes)} (e.g. {examples})")
    if result.details["memberships"] == 0:
        problems.append("no membership reached the segment-changes topic")


def _diff(expected: dict[str, set[str]], actual: dict[str, set[str]]) -> tuple[int, int]:
    lost = sum(len(segs - actual.get(u, set())) for u, segs in expected.items())
    extra = sum(len(actual.get(u, set()) - segs) for u, segs in expected.items())
    return lost, extra


def cassandra_memberships(cfg: NudgeflowConfig, users: set[str]) -> dict[str, set[str]]:
    """user -> segment ids in Cassandra's membership_by_user (the drill's users)."""
    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    try:
        found: dict[str, set[str]] = {}
        prepared = session.prepare("SELECT user_id, segment_id FROM membership_by_user "
                                   "WHERE user_id IN ?")
        ordered = sorted(users)
        for i in range(0, len(ordered), 100):
            for row in session.execute(prepared, (ordered[i:i + 100],), timeout=60):
                found.setdefault(row.user_id, set()).add(row.segment_id)
        return found
    finally:
        session.cluster.shutdown()


def redis_memberships(cfg: NudgeflowConfig, users: set[str]) -> dict[str, set[str]]:
    """user -> segment ids in Redis's user sets (the drill's users)."""
    client = redis.Redis.from_url(cfg.redis_url, decode_responses=True)
    try:
        ordered = sorted(users)
        pipe = client.pipeline(transaction=False)
        for user in ordered:
            pipe.smembers(keys.user_segments(cfg.redis_key_prefix, user))
        return {u: set(s) for u, s in zip(ordered, pipe.execute(), strict=True) if s}
    finally:
        client.close()


# --- the drills -----------------------------------------------------------------------------------


def drill_taskmanager_kills(st: Stack, source: RecordSource, kills: int) -> DrillResult:
    """kill -9 the TaskManager ``kills`` times mid-run (exactly-once sinks)."""
    batches = max(2, source_batches(source, st))
    points = sorted({1 + i * max(1, (batches - 2) // kills) for i in range(kills)})
    result = run_drill(st, "TaskManager kill -9", source, [taskmanager_kill] * len(points),
                       points)
    if result.restarts < len(points):
        result.problems.append(f"{result.restarts} restarts for {len(points)} kills: a kill "
                               "did not hit the job")
    return result


def drill_server_outage(st: Stack, source: RecordSource, server: str, seconds: float,
                        wipe_redis: bool = False) -> DrillResult:
    """One server down for ``seconds`` mid-run (Redis: kill -9, optionally its data wiped)."""
    batches = source_batches(source, st)
    return run_drill(st, f"{server} outage", source, [outage(server, seconds, wipe_redis)],
                     [max(1, batches // 3)])


def source_batches(source: RecordSource, st: Stack) -> int:
    """How many click batches ``source`` sends (faults are placed among them)."""
    return sum(1 for _ in source.click_batches(st.cfg, Codec.load()))


def drill_fuzz(st: Stack, valid: OwedCartTriggers, fuzzed: int, heavy_cap: int) -> DrillResult:
    """``fuzzed`` bad records of every class mixed into the valid workload (``FuzzedWorkload``):
    dead letters == bad records, in count and per rule code (none LATE_EVENT: no rejected
    record moved event time past a valid one), the valid workload's triggers and memberships
    exactly once, 0 restarts."""
    source = FuzzedWorkload(valid, fuzzed, heavy_cap)
    allow_large_records(st.cfg, st.cfg.clicks_topic, FUZZ_MAX_RECORD_BYTES)
    result = run_drill(st, "fuzz", source, [], [], timeout_s=900.0,
                       max_record_bytes=FUZZ_MAX_RECORD_BYTES)
    result.faults = f"{source.bad_records:,} bad records mixed in"
    if result.restarts:
        result.problems.append(f"{result.restarts} restarts: bad input must not restart the job")
    return result


def allow_large_records(cfg: NudgeflowConfig, topic: str, max_bytes: int) -> None:
    """Raise ``topic``'s max.message.bytes to ``max_bytes`` (the fuzz drill's 1 MB strings)."""
    from kafka.admin import ConfigResource, ConfigResourceType, KafkaAdminClient

    admin = KafkaAdminClient(**cfg.python_client_kwargs())
    try:
        admin.alter_configs([ConfigResource(ConfigResourceType.TOPIC, topic,
                                            configs={"max.message.bytes": str(max_bytes)})])
    finally:
        admin.close()


#: output fields that depend on when a record was processed, left out when runs are compared:
#: processing or append time, and the live audience size (each segment's member count, read
#: from Redis every 10 s of processing time: README, Priority matrix) with what it enters, the
#: priority score and the explanation's reason and audience features. The tier, from that score,
#: is compared (for this workload's campaign any audience size gives P1).
NONDETERMINISTIC_FIELDS: dict[str, tuple[str, ...]] = {
    "triggers": ("emit_time", "ingest_time", "priority_score", "explanation.reason",
                 "explanation.features.audience_size", "explanation.features.priority.audience"),
    "segment_changes": ("emitted_at",),
    "decisions": ("emit_time", "priority_score", "reason"),
}


def drill_burst(st: Stack, users: int, burst: int) -> DrillResult:
    """The same valid workload twice, each run with its own topics, keyspace and Redis
    prefix: without, then with a ``burst``-record far-future and a ``burst``-record
    11-minutes-ahead invalid burst shuffled into its first batches; every output record
    (triggers, segment changes, trigger decisions, without their processing-dependent fields:
    ``NONDETERMINISTIC_FIELDS``) must be the same in both runs."""
    valid = OwedCartTriggers(users)
    plain_stack = Stack(st.paths, drill_cfg(st.cfg, uuid.uuid4().hex[:8]))
    try:
        plain = run_drill(plain_stack, "burst (run without)", valid, [], [])
    finally:
        drop_drill(plain_stack.cfg)
    with_burst = run_drill(st, "invalid bursts", BurstWorkload(valid, burst), [], [])
    result = DrillResult(
        "invalid bursts", f"{valid.name}, twice (with and without)",
        f"{burst:,} far-future + {burst:,} 11-min-ahead clicks",
        lost=plain.lost + with_burst.lost, duplicated=plain.duplicated + with_burst.duplicated,
        restarts=plain.restarts + with_burst.restarts,
        seconds=plain.seconds + with_burst.seconds,
        problems=[f"run without the bursts: {p}" for p in plain.problems] + with_burst.problems)
    missing, extra = compare_outputs(plain.outputs, with_burst.outputs)
    result.lost += sum(len(v) for v in missing.values())
    result.duplicated += sum(len(v) for v in extra.values())
    result.details = {
        "compared": {kind: len(records) for kind, records in plain.outputs.items()},
        "missing_with_burst": {kind: len(v) for kind, v in missing.items()},
        "extra_with_burst": {kind: len(v) for kind, v in extra.items()},
        "without": plain.details, "with": with_burst.details,
    }
    for kind in missing:
        if missing[kind] or extra[kind]:
            result.problems.append(
                f"{kind}: {len(missing[kind])} of the run without the bursts missing or "
                f"changed with them, {len(extra[kind])} new or changed; e.g. without: "
                f"{missing[kind][:2]}, with: {extra[kind][:2]}")
    if not plain.outputs.get("triggers"):
        result.problems.append("the run without the bursts emitted no trigger to compare")
    return result


def compare_outputs(a: dict[str, list[dict[str, Any]]], b: dict[str, list[dict[str, Any]]]
                    ) -> tuple[dict[str, list[str]], dict[str, list[str]]]:
    """Records of ``a`` not in ``b`` and of ``b`` not in ``a`` (as multisets, by kind), each
    without its processing-dependent fields (``NONDETERMINISTIC_FIELDS``), as canonical JSON."""
    missing: dict[str, list[str]] = {}
    extra: dict[str, list[str]] = {}
    for kind, skip in NONDETERMINISTIC_FIELDS.items():
        left = Counter(_canonical(r, skip) for r in a.get(kind, []))
        right = Counter(_canonical(r, skip) for r in b.get(kind, []))
        missing[kind] = sorted((left - right).elements())
        extra[kind] = sorted((right - left).elements())
    return missing, extra


def _canonical(record: dict[str, Any], skip: tuple[str, ...]) -> str:
    return json.dumps(_without(record, skip), sort_keys=True, default=str)


def _without(record: dict[str, Any], skip: tuple[str, ...]) -> dict[str, Any]:
    """``record`` without the fields named in ``skip`` (``a.b.c``: field ``b.c`` of record
    field ``a``, or field ``c`` of ``a.b``; map keys may contain dots)."""
    out = {k: v for k, v in record.items() if k not in skip}
    for name, value in out.items():
        nested = tuple(f[len(name) + 1:] for f in skip if f.startswith(name + "."))
        if nested and isinstance(value, dict):
            out[name] = _without(value, nested)
    return out
