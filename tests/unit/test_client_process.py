"""The store clients' child process (``udfs.stores.client_process``) with a fake writer.

A real child process (the protocol, errors, events, its death) around a writer of pure Python;
the real stores behind it are tested in tests/integration/test_store_errors.py.
"""

import os
import signal
import subprocess
from dataclasses import dataclass

import pytest

from udfs.stores.client_process import ProcessWriter, StoreProcessDied
from udfs.stores.membership import StoreConfigurationError, StoreRejection


class FakeWriter:
    """Records its calls; ``write_many`` reports a retry per change and rejects 'bad' users."""

    def __init__(self, on_retry, on_rebuild, fail_with: str) -> None:
        self.on_retry, self.on_rebuild, self.fail_with = on_retry, on_rebuild, fail_with
        self.written: list[dict] = []
        self.on_rebuild({"rebuilt": "at connect"})

    def write_many(self, changes):
        if self.fail_with == "config":
            raise StoreConfigurationError("cassandra refuses every write (test)")
        if self.fail_with == "unpicklable":
            raise _Unpicklable("a driver error with a lock inside")
        rejected = []
        for change in changes:
            self.on_retry()
            if change["user_id"] == "bad":
                rejected.append(StoreRejection(change, "redis", "EVALSHA", "WRONGTYPE"))
            else:
                self.written.append(change)
        return rejected

    def erase_user(self, user_id, segment_ids):
        return []

    def record_definition(self, definition_id, description):
        return None

    def segment_sizes(self):
        return {"s1": len(self.written)}

    def close(self):
        pass


class _Unpicklable(Exception):
    def __reduce__(self):
        raise TypeError("cannot pickle")


@dataclass(frozen=True)
class FakeFactory:
    fail_with: str = ""

    def __call__(self, on_retry, on_rebuild):
        if self.fail_with == "connect":
            raise StoreConfigurationError("keyspace nudgeflow does not exist (test)")
        return FakeWriter(on_retry, on_rebuild, self.fail_with)


def _writer(fail_with=""):
    events: list = []
    writer = ProcessWriter(FakeFactory(fail_with), on_retry=lambda: events.append("retry"),
                           on_rebuild=events.append)
    return writer, events


def test_calls_cross_to_the_child_and_events_reach_the_callbacks():
    writer, events = _writer()
    try:
        assert events == [{"rebuilt": "at connect"}]
        assert writer.process.pid != os.getpid()
        changes = [{"user_id": "u1", "change_id": "c1"}, {"user_id": "bad", "change_id": "c2"},
                   {"user_id": "u2", "change_id": "c3"}]
        rejected = writer.write_many(changes)
        assert [(r.change, r.store, r.error) for r in rejected] == [
            (changes[1], "redis", "WRONGTYPE")]
        assert events[1:] == ["retry", "retry", "retry"]  # one per change, as they happened
        assert writer.segment_sizes() == {"s1": 2}  # state lives in the child between calls
        assert writer.erase_user("u1", {"s1"}) == []
        assert writer.record_definition("d", "v1") is None
    finally:
        writer.close()
    assert writer.process.returncode == 0
    writer.close()  # twice is harmless


def test_errors_of_the_child_writer_are_raised_in_the_caller(monkeypatch):
    started = []
    real_popen = subprocess.Popen
    monkeypatch.setattr(subprocess, "Popen", lambda *a, **k: started.append(
        real_popen(*a, **k)) or started[-1])
    with pytest.raises(StoreConfigurationError, match="keyspace nudgeflow does not exist"):
        _writer("connect")
    # a writer that could not connect leaves no child and no open pipe behind
    assert started[0].returncode == 0 and started[0].stdin.closed and started[0].stdout.closed
    monkeypatch.undo()
    writer, _ = _writer("config")
    try:
        with pytest.raises(StoreConfigurationError, match="refuses every write"):
            writer.write_many([{"user_id": "u1", "change_id": "c1"}])
        writer.segment_sizes()  # the child goes on after an error
    finally:
        writer.close()
    writer, _ = _writer("unpicklable")
    try:
        with pytest.raises(RuntimeError, match="_Unpicklable: a driver error with a lock"):
            writer.write_many([{"user_id": "u1", "change_id": "c1"}])
    finally:
        writer.close()


def test_a_dead_child_fails_the_next_call_with_what_happened():
    writer, _ = _writer()
    try:
        os.kill(writer.process.pid, signal.SIGKILL)
        writer.process.wait()
        with pytest.raises(StoreProcessDied, match=r"ended during write_many \(exit code -9\)"):
            writer.write_many([{"user_id": "u1", "change_id": "c1"}])
    finally:
        writer.close()


def test_the_child_exits_when_its_parent_closes_the_pipe():
    writer, _ = _writer()
    writer.process.stdin.close()
    assert writer.process.wait(timeout=30) == 0
    writer.process.stdout.close()


def test_the_child_runs_at_the_niceness_it_is_given():
    base = os.getpriority(os.PRIO_PROCESS, 0)
    for nice in (0, 7):
        writer = ProcessWriter(FakeFactory(), on_retry=lambda: None, on_rebuild=lambda _: None,
                               nice=nice)
        try:
            writer.segment_sizes()  # connected: the child set its niceness before that
            assert os.getpriority(os.PRIO_PROCESS, writer.process.pid) == min(19, base + nice)
        finally:
            writer.close()
