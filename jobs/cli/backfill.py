"""``nudgeflow defs publish FILES --backfill``: apply what was published to every known user now.

Without a backfill a new or changed definition reaches a user at their next event, metadata
update or daily recheck (udfs/segments/SEGMENTS.md, "Change policy"), so a new segment fills
over a day. A backfill sends one ``BackfillRequest`` per known user to the backfill-requests
topic, keyed by user: the running job's engine re-evaluates each at once, in its own keyed
state (``udfs.engine.Backfill``); nothing here scans Flink state.

1. Wait until the running job applies the published versions (the job records what it applies
   in Redis: ``nudgeflow defs list``), so no request overtakes its definitions.
2. The known users: every user with metadata on the compacted user-metadata topic (the latest
   record is not a tombstone) and every user with a membership row in Cassandra.
3. Send the requests at ``--rate`` per second (live traffic keeps its latency), with progress.
4. With the job's Prometheus pages (``--metrics``, default: the local stack's), wait until the
   engine has answered every request and report what each did: evaluated, current (already
   evaluated under these definitions: a second backfill is all ``current``), unknown (nothing
   of the user in the job's state), erased, stale (dead-lettered: the definitions were not in
   force there yet; run it again).

The backfill's id is a hash of the definitions and versions it was made for: running the same
backfill again gives the same id, so whatever it re-evaluates carries the same change ids.
"""

from __future__ import annotations

import hashlib
import re
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from infra.servers.flink import reporter_ports
from jobs.config import NudgeflowConfig
from schemas.codec import Codec
from udfs.engine import BACKFILL_OUTCOMES

#: default send rate, requests per second: about a quarter of what the local stack's engine
#: applies at parallelism 2 (~900/s); 400/s there took the live probe's p99 to 2.0x (see
#: docs/performance.md, "Backfill and live latency")
DEFAULT_RATE = 250.0
#: how long to wait for the running job to apply the published versions
APPLY_TIMEOUT_S = 120.0
#: the local stack's Prometheus reporter ports (``infra.servers.flink.PROMETHEUS_PORTS``)
LOCAL_METRICS = tuple(f"http://127.0.0.1:{port}/metrics" for port in reporter_ports())

_METRIC = re.compile(r'_backfill_requests\{[^}]*outcome="(?P<outcome>[a-z]+)"[^}]*\}\s+'
                     r"(?P<value>[0-9.eE+-]+)\s*$")


class BackfillError(RuntimeError):
    """A backfill could not be run; the message says why and what to do."""


def backfill_id(definitions: Mapping[str, int]) -> str:
    """The id of a backfill of these definitions (id -> version): the same for the same set."""
    text = "\n".join(f"{name}|{version}" for name, version in sorted(definitions.items()))
    return "bf-" + hashlib.sha256(text.encode()).hexdigest()[:16]


@dataclass
class Pacer:
    """Keeps a sender at ``rate`` items per second on average (``wait`` before each item)."""

    rate: float
    clock: Callable[[], float] = time.monotonic
    sleep: Callable[[float], None] = time.sleep
    started: float | None = None
    sent: int = 0

    def wait(self) -> None:
        """Sleep until the next item is due."""
        now = self.clock()
        if self.started is None:
            self.started = now
        due = self.started + self.sent / self.rate
        if due > now:
            self.sleep(due - now)
        self.sent += 1


@dataclass
class BackfillReport:
    """What a backfill did: requests sent, and the engine's answers by outcome (if measured)."""

    backfill_id: str
    definitions: dict[str, int]
    sent: int
    seconds: float
    outcomes: Counter[str] = field(default_factory=Counter)
    measured: bool = False

    def as_dict(self) -> dict[str, Any]:
        """The report for tools (``--json``): every outcome, 0 when none; None if unmeasured."""
        return {"backfill_id": self.backfill_id, "definitions": self.definitions,
                "sent": self.sent, "seconds": round(self.seconds, 1),
                "answers": {name: self.outcomes.get(name, 0) for name in BACKFILL_OUTCOMES}
                if self.measured else None}

    def text(self) -> str:
        """A summary for people."""
        lines = [f"backfill {self.backfill_id}: {self.sent:,} requests sent in "
                 f"{self.seconds:.0f} s"]
        if self.measured:
            answered = sum(self.outcomes.values())
            lines.append(f"  answered by the engine: {answered:,} ("
                         + ", ".join(f"{name} {self.outcomes.get(name, 0):,}"
                                     for name in BACKFILL_OUTCOMES) + ")")
            if self.outcomes.get("stale"):
                lines.append("  stale requests were dead-lettered (the job did not apply the "
                             "definitions yet); run the same command again: users already "
                             "evaluated are skipped")
        else:
            lines.append("  the engine's answers were not measured (no Prometheus page "
                         "answered); its counter is backfill_requests by outcome")
        return "\n".join(lines)


def applied_versions(raw: Mapping[Any, Any]) -> dict[str, int]:
    """Definition id -> version the running job applies, from its Redis hash (``vN action``)."""
    versions = {}
    for key, value in raw.items():
        name = key.decode() if isinstance(key, bytes) else str(key)
        text = value.decode() if isinstance(value, bytes) else str(value)
        match = re.match(r"v(\d+)", text)
        if match:
            versions[name] = int(match.group(1))
    return versions


def wait_until_applied(cfg: NudgeflowConfig, definitions: Mapping[str, int],
                       timeout_s: float = APPLY_TIMEOUT_S) -> None:
    """Return once the running job applies every definition at its version (or later).

    Raises:
        BackfillError: it did not within ``timeout_s`` (the message lists what is missing).
    """
    from jobs.cli import wiring
    from jobs.cli.defs import applied_definitions_key

    client = wiring.redis_client(cfg, socket_timeout=5)
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            applied = applied_versions(client.hgetall(applied_definitions_key(cfg)))
            missing = [f"{name} v{version}" for name, version in sorted(definitions.items())
                       if applied.get(name, 0) < version]
            if not missing:
                return
            if time.monotonic() > deadline:
                raise BackfillError(
                    f"the running job has not applied {', '.join(missing)} after "
                    f"{timeout_s:.0f} s, so a backfill now would evaluate users with older "
                    "definitions; is the job running (`nudgeflow defs list` shows what it "
                    "applies)? Nothing was sent")
            time.sleep(0.5)
    finally:
        client.close()


#: where ``known_users`` looks: ``all`` (the user-metadata topic and Cassandra) or ``metadata``
USER_SOURCES = ("all", "metadata")


def known_users(cfg: NudgeflowConfig, source: str = "all") -> list[str]:
    """Every user the stores know: metadata on the user-metadata topic, or a membership row.

    A user whose latest metadata record is a tombstone (erased) is left out unless Cassandra
    still holds a row of theirs. ``source="metadata"``: the topic alone (Cassandra's
    ``membership_by_user`` may hold users of other jobs sharing its keyspace, or anonymous
    users without a profile).
    """
    from jobs.cli import wiring

    latest: dict[str, bool] = {}
    for key, value in wiring.topic_records(cfg, cfg.user_metadata_topic):
        if key:
            latest[key.decode("utf-8", "replace")] = value is not None
    users = {user for user, alive in latest.items() if alive}
    if source == "metadata":
        return sorted(users)
    session = wiring.cassandra_session(cfg, cfg.cassandra_keyspace)
    try:
        rows = session.execute(
            f"SELECT DISTINCT user_id FROM {cfg.cassandra_keyspace}.membership_by_user")  # noqa: S608 - an identifier checked when provisioned
        users.update(row.user_id for row in rows)
    finally:
        session.cluster.shutdown()
    return sorted(users)


def request_bytes(codec: Codec, backfill: str, user_id: str, definitions: Mapping[str, int],
                  now_ms: int) -> bytes:
    """One BackfillRequest, Avro single-object encoded."""
    return codec.encode("BackfillRequest", {
        "backfill_id": backfill, "user_id": user_id, "requested_at": now_ms,
        "definitions": dict(definitions)})


def read_outcomes(urls: Iterable[str]) -> Counter[str] | None:
    """The engine's backfill answers by outcome, summed over the pages that answer (None: none)."""
    total: Counter[str] = Counter()
    answered = False
    for url in urls:
        try:
            with urllib.request.urlopen(url, timeout=3) as page:  # noqa: S310 - http(s) URLs
                text = page.read().decode("utf-8", "replace")
        except (OSError, ValueError):
            continue
        answered = True
        total += parse_outcomes(text)
    return total if answered else None


def parse_outcomes(text: str) -> Counter[str]:
    """The backfill answers by outcome on one Prometheus page (summed over subtasks)."""
    total: Counter[str] = Counter()
    for line in text.splitlines():
        match = _METRIC.search(line)
        if match:
            total[match.group("outcome")] += int(float(match.group("value")))
    return total


class _Progress:
    """One line on stderr, redrawn on a terminal, every tenth otherwise."""

    def __init__(self, total: int, enabled: bool) -> None:
        self.total, self.enabled, self.tty = max(1, total), enabled, sys.stderr.isatty()
        self.shown = -1

    def show(self, label: str, done: int) -> None:
        if not self.enabled:
            return
        share = min(1.0, done / self.total)
        step = int(share * 100) if self.tty else int(share * 10) * 10
        if step == self.shown:
            return
        self.shown = step
        line = f"{label:<10} [{'#' * int(share * 30):<30}] {share:4.0%}  {done:,}/{self.total:,}"
        print("\r" + line if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def end(self) -> None:
        if self.enabled and self.tty:
            print(file=sys.stderr, flush=True)
        self.shown = -1


def run_backfill(cfg: NudgeflowConfig, definitions: Mapping[str, int], rate: float = DEFAULT_RATE,
                 metrics_urls: Sequence[str] = LOCAL_METRICS, wait_s: float = 600.0,
                 progress: bool = True, say: Callable[[str], None] = print,
                 users_from: str = "all") -> BackfillReport:
    """Re-evaluate every known user (``known_users``) against ``definitions`` (id -> version).

    Raises:
        BackfillError: the job does not apply the definitions, or the rate is not positive.
    """
    from kafka import KafkaProducer

    if not rate > 0:
        raise BackfillError(f"--rate must be a positive number of requests per second, "
                            f"got {rate}")
    codec = Codec.load()
    wait_until_applied(cfg, definitions)
    targets = known_users(cfg, users_from)
    backfill = backfill_id(definitions)
    say(f"backfill {backfill}: {len(targets):,} known users, at most {rate:,.0f} requests/s")
    before = read_outcomes(metrics_urls)
    bar = _Progress(len(targets), progress)
    pacer = Pacer(rate)
    started = time.monotonic()
    producer = KafkaProducer(**cfg.python_client_kwargs(), acks="all", linger_ms=5)
    try:
        now_ms = int(time.time() * 1000)
        for sent, user in enumerate(targets, 1):
            pacer.wait()
            producer.send(cfg.backfill_topic, key=user.encode(),
                          value=request_bytes(codec, backfill, user, definitions, now_ms))
            bar.show("sent", sent)
        producer.flush(timeout=60)
    finally:
        producer.close()
    bar.end()
    report = BackfillReport(backfill, dict(definitions), len(targets),
                            time.monotonic() - started)
    if before is None:
        return report
    deadline = time.monotonic() + wait_s
    while True:
        now = read_outcomes(metrics_urls)
        if now is not None:
            report.outcomes = now - before
            report.measured = True
            answered = sum(report.outcomes.values())
            bar.show("answered", answered)
            if answered >= len(targets):
                break
        if time.monotonic() > deadline:
            say(f"the engine answered {sum(report.outcomes.values()):,} of {len(targets):,} "
                f"requests in {wait_s:.0f} s; the rest are still queued or the job is down")
            break
        time.sleep(1.0)
    bar.end()
    report.seconds = time.monotonic() - started
    return report
