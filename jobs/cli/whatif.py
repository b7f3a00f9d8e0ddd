"""``nudgeflow defs what-if FILES... --from TIME [--to TIME]``: try definitions on history first.

Two bounded runs of the job's own engine (``jobs.whatif``, each in its own embedded
MiniCluster) over the same history: one with the definitions in force (the job's definition
files plus what the control topic holds), one with the candidate files on top (a candidate with
the id of a live definition replaces it, as publishing it would). Nothing goes to the production
topics, Cassandra or Redis; Redis is only read once, for the live segment sizes the priority
matrix weighs audiences with.

History is the clicks, user-metadata and outcomes topics as Kafka retains them, from their
first record (the engine builds up state the way the live job did) to their end; or a file of
ClickEvents (``--clicks-file``: JSON lines or an Avro container file), for teams whose topics
keep little. The report (``jobs.cli.whatif_report``) covers ``--from`` .. ``--to`` in event
time; a range the history does not cover is refused before anything runs.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import pickle
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from jobs.cli.whatif_report import Comparison, Side, Window, summarize
from jobs.config import NudgeflowConfig, replace
from schemas.codec import Codec, CodecError

#: the Avro object container file's magic bytes
AVRO_MAGIC = b"Obj\x01"


class WhatIfError(RuntimeError):
    """A what-if run cannot be made as asked; the message says why and what to do."""


_EPOCH_MS = re.compile(r"^\d{12,14}$")


def parse_time(text: str, flag: str) -> int:
    """``--from``/``--to``: an ISO 8601 time (UTC unless it says), a date, or epoch milliseconds.

    Raises:
        WhatIfError: the text is none of these.
    """
    value = text.strip()
    if _EPOCH_MS.match(value):
        return int(value)
    try:
        parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise WhatIfError(f"{flag} {text!r}: not a time; give an ISO 8601 time such as "
                          "2026-11-30T12:00:00Z, a date such as 2026-11-30 (midnight UTC), or "
                          "epoch milliseconds") from None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return int(parsed.timestamp() * 1000)


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class History:
    """The events a what-if run replays and the event-time range they span."""

    first_ms: int
    last_ms: int
    clicks: int
    description: str
    click_records: list[tuple[bytes, bytes, int]] | None = None  # from a file; None: the topic

    def window(self, start_ms: int, end_ms: int | None) -> Window:
        """The report's window, checked against what the history covers.

        Raises:
            WhatIfError: the range is empty or reaches outside the history.
        """
        end = self.last_ms if end_ms is None else end_ms
        if start_ms < self.first_ms:
            raise WhatIfError(
                f"--from {_iso(start_ms)} is before the history starts: {self.description} "
                f"begins at {_iso(self.first_ms)}; give --from {_iso(self.first_ms)} or later, "
                "or replay a file that goes further back (--clicks-file)")
        if end > self.last_ms:
            raise WhatIfError(
                f"--to {_iso(end)} is after the history ends: {self.description} ends at "
                f"{_iso(self.last_ms)}; give --to {_iso(self.last_ms)} or earlier (or leave it "
                "out)")
        if end < start_ms:
            raise WhatIfError(f"--to {_iso(end)} is before --from {_iso(start_ms)}")
        return Window(start_ms, end)


def topic_history(cfg: NudgeflowConfig, codec: Codec) -> History:
    """The clicks topic's retained history: every record read once for its event time.

    Raises:
        WhatIfError: the topic does not exist, cannot be read, or holds no valid click.
    """
    from jobs.cli.wiring import TopicMissing, TopicStalled, topic_values

    try:
        times = [t for value in topic_values(cfg, cfg.clicks_topic)
                 if (t := _event_time(codec, value)) is not None]
    except TopicMissing:
        raise WhatIfError(f"the clicks topic {cfg.clicks_topic!r} does not exist at "
                          f"{cfg.kafka_bootstrap}; check --clicks-topic, or replay a file "
                          "(--clicks-file)") from None
    except TopicStalled as exc:
        raise WhatIfError(str(exc)) from None
    if not times:
        raise WhatIfError(f"the clicks topic {cfg.clicks_topic!r} holds no valid ClickEvent: "
                          "nothing to replay")
    return History(min(times), max(times), len(times), f"the topic {cfg.clicks_topic}")


def _event_time(codec: Codec, value: bytes | None) -> int | None:
    if value is None:
        return None
    try:
        record = codec.decode(value, expect="ClickEvent")
    except CodecError:
        return None  # the engine dead-letters it
    return int(record["event_time"])


def file_history(path: Path, codec: Codec) -> History:
    """ClickEvents from a JSON-lines file (one record per line) or an Avro container file.

    Raises:
        WhatIfError: the file cannot be read, or a record is not a valid ClickEvent (the message
            names the line or record number and the problem).
    """
    try:
        head = path.open("rb").read(4)
    except OSError as exc:
        raise WhatIfError(f"--clicks-file {path}: {exc.strerror or exc}") from None
    records: list[tuple[bytes, bytes, int]] = []
    for where, record in (_avro_records(path) if head == AVRO_MAGIC else _json_lines(path)):
        try:
            value = codec.encode("ClickEvent", record)
        except (CodecError, ValueError, TypeError, KeyError) as exc:
            raise WhatIfError(f"{path}:{where}: not a valid ClickEvent: {exc}") from None
        t = int(record["event_time"])
        records.append((str(record["user_id"]).encode(), value, t))
    if not records:
        raise WhatIfError(f"--clicks-file {path} holds no ClickEvent: nothing to replay")
    times = [t for _, _, t in records]
    return History(min(times), max(times), len(records), f"the file {path}",
                   click_records=records)


def _json_lines(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    with path.open(encoding="utf-8", errors="strict") as lines:
        try:
            for number, line in enumerate(lines, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise WhatIfError(f"{path}:{number}: not JSON ({exc.msg} at column "
                                      f"{exc.colno}); the file must hold one ClickEvent JSON "
                                      "object per line, or be an Avro container file") from None
                if not isinstance(record, dict):
                    raise WhatIfError(f"{path}:{number}: a JSON {type(record).__name__}, not a "
                                      "ClickEvent object")
                yield f"line {number}", record
        except UnicodeDecodeError as exc:
            raise WhatIfError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start}) and "
                              "not an Avro container file") from None


def _avro_records(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    import fastavro

    with path.open("rb") as handle:
        try:
            for number, record in enumerate(fastavro.reader(handle), 1):
                if not isinstance(record, dict):
                    raise WhatIfError(f"{path}: record {number} is not a record")
                yield f"record {number}", record
        except (ValueError, EOFError) as exc:
            raise WhatIfError(f"{path}: a broken Avro container file: {exc}") from None


def live_definitions(cfg: NudgeflowConfig) -> list[dict[str, Any]]:
    """What the running job applies: its definition files, then the control topic's updates."""
    from jobs.cli.defs import published_updates
    from jobs.job import file_definitions
    from udfs.catalog.registries import Registries

    updates = [*file_definitions(cfg), *published_updates(cfg).values()]
    return Registries.from_updates(updates).updates()


def with_candidates(live: list[dict[str, Any]], candidates: list[dict[str, Any]]
                    ) -> list[dict[str, Any]]:
    """``live`` with the candidates on top: each one replaces a live definition of its id.

    A candidate's version is raised above the live one's when it is not already (trying a
    changed file should not need a version bump to take effect).
    """
    from udfs.catalog.registries import Registries

    live_versions = {u["definition_id"]: u["version"] for u in live}
    bumped = [_with_version(u, max(u["version"], live_versions.get(u["definition_id"], 0) + 1))
              for u in candidates]
    return Registries.from_updates([*live, *bumped]).updates()


def _with_version(update: dict[str, Any], version: int) -> dict[str, Any]:
    """An UPSERT at another version: the body carries it too, and the checksum covers the body."""
    from udfs.definitions.envelope import canonical_body, checksum

    if version == update["version"]:
        return update
    body = canonical_body({**json.loads(update["body"]), "version": version})
    return {**update, "version": version, "body": body, "checksum": checksum(body)}


def live_audience_sizes(cfg: NudgeflowConfig) -> tuple[dict[str, int], str | None]:
    """The segment sizes the running job keeps in Redis, and a note when they were not read."""
    from jobs.cli.segments import live_sizes

    try:
        return live_sizes(cfg), None
    except Exception as exc:  # noqa: BLE001 - any failure: run without them, and say so
        return {}, (f"note: the live segment sizes could not be read from {cfg.redis_url} "
                    f"({type(exc).__name__}); the audience factor of the priority matrix is 0")


def run_config(cfg: NudgeflowConfig) -> NudgeflowConfig:
    """``cfg`` for one side's job: a bounded replay under a consumer group of its own.

    Checkpointing is off (a bounded run needs none, and the sources commit no offset without
    it), so the live job's consumer group never moves.
    """
    from jobs.cli.wiring import job_jars
    from jobs.job import bounded_replay

    return bounded_replay(replace(
        cfg, consumer_group=f"{cfg.consumer_group}-what-if-{uuid.uuid4().hex[:8]}",
        starting_offsets="earliest", checkpoint_interval_ms=0,
        delivery_guarantee="at-least-once", jars=cfg.jars or job_jars()))


class Progress:
    """A one-line progress bar on stderr (a line per tenth when stderr is not a terminal)."""

    def __init__(self, label: str, first_ms: int, last_ms: int, enabled: bool = True) -> None:
        self.label, self.first_ms, self.span = label, first_ms, max(1, last_ms - first_ms)
        self.enabled = enabled
        self.tty = sys.stderr.isatty()
        self.shown = -1

    def update(self, reached_ms: int, records: int) -> None:
        """Event time ``reached_ms`` with ``records`` emitted so far."""
        if not self.enabled:
            return
        share = min(1.0, max(0.0, (reached_ms - self.first_ms) / self.span))
        step = int(share * 100) if self.tty else int(share * 10) * 10
        if step == self.shown:
            return
        self.shown = step
        bar = "#" * int(share * 30)
        line = f"{self.label:<18} [{bar:<30}] {share:4.0%}  event time {_iso(reached_ms)}  " \
               f"{records:,} records"
        print("\r" + line if self.tty else line, end="" if self.tty else "\n",
              file=sys.stderr, flush=True)

    def done(self, records: int, seconds: float) -> None:
        """The side finished."""
        if self.enabled:
            print(("\r" if self.tty else "") + f"{self.label:<18} done: {records:,} records in "
                  f"{seconds:.0f} s" + " " * 30, file=sys.stderr, flush=True)


def _record_time(name: str, record: dict[str, Any]) -> int | None:
    field = {"SegmentChange": "event_time", "TriggerEvent": "cause_event_time",
             "TriggerDecision": "decided_at"}.get(name)
    return int(record[field]) if field else None


def run_side(plan: Any, label: str, work: Path, codec: Codec, progress: Progress,
             timeout_s: float) -> list[tuple[str, dict[str, Any]]]:
    """Run one side's job (``python -m jobs.whatif``) and decode what it emitted.

    Raises:
        WhatIfError: the job failed or ran out of time (the message names its log).
    """
    plan_path, out_path, log_path = (work / f"{label}.plan", work / f"{label}.out",
                                     work / f"{label}.log")
    with os.fdopen(os.open(plan_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as f:
        pickle.dump(plan, f)  # the configuration may hold secrets: readable by us alone
    out_path.touch()
    records: list[tuple[str, dict[str, Any]]] = []
    started = time.monotonic()
    reached = progress.first_ms
    with log_path.open("wb") as log, out_path.open("r", encoding="ascii") as out:
        child = subprocess.Popen([sys.executable, "-m", "jobs.whatif", str(plan_path),
                                  str(out_path)], stdout=log, stderr=subprocess.STDOUT)
        try:
            pending = ""
            while True:
                finished = child.poll() is not None
                pending += out.read()
                *lines, pending = pending.split("\n")
                for line in lines:
                    name, record = codec.decode_named(base64.b64decode(line))
                    records.append((name, record))
                    t = _record_time(name, record)
                    if t is not None and t > reached:
                        reached = t
                progress.update(reached, len(records))
                if finished:
                    break
                if time.monotonic() - started > timeout_s:
                    raise WhatIfError(f"the {label} run did not finish in {timeout_s:.0f} s; "
                                      f"its log: {log_path}")
                time.sleep(0.5)
        finally:
            if child.poll() is None:
                child.kill()
                child.wait()
    if child.returncode != 0:
        tail = log_path.read_text(errors="replace").strip().splitlines()[-15:]
        raise WhatIfError(f"the {label} run failed (exit {child.returncode}); its log: "
                          f"{log_path}\n" + "\n".join(tail))
    progress.done(len(records), time.monotonic() - started)
    return records


@dataclass(frozen=True)
class WhatIfRequest:
    """What ``nudgeflow defs what-if`` was asked."""

    files: Sequence[str]
    start_ms: int
    end_ms: int | None = None
    clicks_file: Path | None = None
    samples: int = 5
    timeout_s: float = 3600.0
    progress: bool = True
    keep_dir: Path | None = None  # keep the runs' plans, outputs and logs here


def what_if(cfg: NudgeflowConfig, request: WhatIfRequest,
            say: Callable[[str], None] = print) -> Comparison:
    """Run both sides over the history and compare them.

    Raises:
        udfs.definitions.diagnostics.InvalidDefinitions: a candidate file does not validate.
        WhatIfError: the history does not cover the window, or a run failed.
    """
    from jobs.whatif import WhatIfPlan
    from udfs.catalog.files import load_files
    from udfs.definitions.envelope import SEGMENT_KIND

    codec = Codec.load()
    live = live_definitions(cfg)
    # a candidate may name the live segments as well as its own
    live_segments = [u["definition_id"] for u in live
                     if u["kind"] == SEGMENT_KIND and u["action"] == "UPSERT"]
    candidates = load_files([Path(f) for f in request.files],
                            known_segments=live_segments).updates(0, "what-if")
    candidate_ids = tuple(sorted({u["definition_id"] for u in candidates}))
    history = (file_history(request.clicks_file, codec) if request.clicks_file
               else topic_history(cfg, codec))
    window = history.window(request.start_ms, request.end_ms)
    say(f"history: {history.clicks:,} clicks in {history.description}, "
        f"{_iso(history.first_ms)} .. {_iso(history.last_ms)}")
    sizes, note = live_audience_sizes(cfg)
    notes = (note,) if note else ()
    side_cfg = run_config(cfg)
    sides: dict[str, Side] = {}
    with contextlib.ExitStack() as stack:
        if request.keep_dir is not None:
            work = request.keep_dir
            work.mkdir(parents=True, exist_ok=True)
        else:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="what-if-")))
        for label, definitions in (("live", live),
                                   ("live+candidate", with_candidates(live, candidates))):
            plan = WhatIfPlan(side_cfg, definitions, sizes, history.click_records)
            progress = Progress(label, history.first_ms, history.last_ms, request.progress)
            records = run_side(plan, label, work, codec, progress, request.timeout_s)
            sides[label] = summarize(records, window, candidate_ids, request.samples)
    return Comparison(window, sides["live"], sides["live+candidate"], candidate_ids,
                      f"{history.clicks:,} clicks in {history.description}", notes)
