"""The membership store's clients in a child process, out of the TaskManager's interpreter.

**Why.** In thread mode every Python operator of a TaskManager shares one interpreter lock.
cassandra-driver and redis-py are Python: building statements, the driver's event-loop thread
reading replies, the pipeline's encoding and parsing all take that lock from the engine's
thread, and every hand-back costs the engine up to the switch interval. Measured with a writer
that writes nothing, the store clients cost the job ~30% of its throughput, far more than their
own CPU (docs/performance.md). Here the clients run in a child Python process per writer; the
operator's thread only pickles a batch, writes it to a pipe and blocks on the reply (a blocking
read, which lets go of the lock).

**What holds as before.** Every call is synchronous: ``write_many`` returns once the child's
writer returned, i.e. once Cassandra and Redis acknowledged the changes (durable before
checkpointed, per-user order, backpressure during an outage). Retries and rebuilds are
reported to the caller's counters while they happen (a frame each), not at the end of the call.
An error the child's writer raises is raised here (``StoreConfigurationError`` as itself).

**When the child dies** (killed, out of memory): the next call raises ``StoreProcessDied``,
which fails the task; Flink restarts it from its last checkpoint, whose changes are all
durable, and the new writer starts a new child. When the parent dies, the child reads the end
of its input and exits.

The protocol, over the child's standard input and a private copy of its standard output (its
own standard output goes to standard error, so a stray print cannot corrupt a frame): frames of
a 4-byte big-endian length and a pickle. The parent sends ``(method, args)`` requests, the
first ``("connect", (factory,))``; the child answers each with ``("retry",)`` and
``("rebuild", report)`` events, then ``("ok", result)`` or ``("error", exception)``.

Pure: no pyflink (the child imports only the store modules).
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import struct
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import IO, Any

log = logging.getLogger(__name__)

#: the writer methods a parent may call (anything else is refused by the child)
METHODS = frozenset({"write_many", "erase_user", "record_definition", "segment_sizes"})

_LENGTH = struct.Struct(">I")


class StoreProcessDied(RuntimeError):
    """The child process that holds the store clients ended; the task fails and restarts."""


def _send(stream: IO[bytes], obj: Any) -> None:
    data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
    stream.write(_LENGTH.pack(len(data)) + data)
    stream.flush()


def _receive(stream: IO[bytes]) -> Any:
    """The next frame's object, or ``EOFError`` if the other side closed the pipe."""
    head = stream.read(_LENGTH.size)
    if len(head) < _LENGTH.size:
        raise EOFError
    size = _LENGTH.unpack(head)[0]
    data = stream.read(size)
    if len(data) < size:
        raise EOFError
    return pickle.loads(data)  # noqa: S301 - frames of our own parent or child, over a pipe


def python_executable() -> str:
    """The Python to start the child with: this interpreter's own program.

    In thread mode the interpreter is embedded in the TaskManager's JVM, where
    ``sys.executable`` may name no Python (or the JVM): then the ``python3`` of the running
    prefix (the virtualenv ``python.executable`` names), then the first on the PATH.
    """
    candidates = [sys.executable, str(Path(sys.prefix) / "bin" / "python3"),
                  str(Path(sys.prefix) / "bin" / "python"), shutil.which("python3") or ""]
    for candidate in candidates:
        if candidate and Path(candidate).name.startswith("python") and os.access(
                candidate, os.X_OK):
            return candidate
    raise StoreProcessDied(
        f"cannot find a Python to run the store clients in (tried {candidates}); set "
        f"store-clients to in-task, or make python3 available on the TaskManagers")


class ProcessWriter:
    """A ``MembershipWriter`` whose store clients run in a child process (see the module)."""

    def __init__(self, factory: Callable[..., Any], on_retry: Callable[[], None],
                 on_rebuild: Callable[[Any], None], nice: int = 0) -> None:
        """Start the child and have it connect ``factory``'s writer (blocks until it did).

        ``factory`` must be picklable and build the in-process writer when called with
        ``on_retry`` and ``on_rebuild`` (``CassandraRedisStore`` with ``client_process`` off).
        ``nice``: how much lower than this process's the child's scheduling priority is (0 to
        19; see ``store_clients_nice`` in ``jobs/config.py``).
        """
        self.on_retry = on_retry
        self.on_rebuild = on_rebuild
        env = dict(os.environ)
        # the embedded interpreter's path holds the job's packages and its site-packages
        env["PYTHONPATH"] = os.pathsep.join(dict.fromkeys(p for p in sys.path if p))
        self.process = subprocess.Popen(  # noqa: S603 - our own module, no shell
            [python_executable(), "-m", __name__, str(nice)], stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, env=env, close_fds=True)
        self.closed = False
        try:
            self._call("connect", factory)
        except BaseException:
            self.close()  # the child and its pipes, not left behind by a writer never made
            raise

    def write_many(self, changes: list[dict[str, Any]]) -> Any:
        """See ``CassandraRedisWriter.write_many``."""
        return self._call("write_many", changes)

    def erase_user(self, user_id: str, segment_ids: Iterable[str]) -> Any:
        """See ``CassandraRedisWriter.erase_user``."""
        return self._call("erase_user", user_id, list(segment_ids))

    def record_definition(self, definition_id: str, description: str) -> None:
        """See ``CassandraRedisWriter.record_definition``."""
        self._call("record_definition", definition_id, description)

    def segment_sizes(self) -> dict[str, int]:
        """See ``CassandraRedisWriter.segment_sizes``."""
        result: dict[str, int] = self._call("segment_sizes")
        return result

    def close(self) -> None:
        """Close the child's connections and wait for it to end (killed after 10 s)."""
        if self.closed:
            return
        self.closed = True
        try:
            self._call("close")
        except (StoreProcessDied, OSError) as exc:
            log.warning("the store process %d did not close cleanly: %s", self.process.pid, exc)
        finally:
            for stream in (self.process.stdin, self.process.stdout):
                if stream is not None:
                    try:
                        stream.close()
                    except OSError:  # a frame left unsent to a child that died
                        pass
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def _call(self, method: str, *args: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        try:
            _send(self.process.stdin, (method, args))
            while True:
                frame = _receive(self.process.stdout)
                if frame[0] == "retry":
                    self.on_retry()
                elif frame[0] == "rebuild":
                    self.on_rebuild(frame[1])
                elif frame[0] == "ok":
                    return frame[1]
                else:
                    raise frame[1]
        except (EOFError, BrokenPipeError) as exc:
            code = self.process.poll()
            raise StoreProcessDied(
                f"the process holding the membership store's clients (pid {self.process.pid}) "
                f"ended during {method} (exit code {code}); its messages are in the "
                f"TaskManager's standard error. The task restarts from its last checkpoint, "
                f"whose changes are all in the stores") from exc


def _portable(exc: BaseException) -> BaseException:
    """``exc`` if it survives pickling (the parent raises it as is), else its text."""
    try:
        pickle.loads(pickle.dumps(exc))  # noqa: S301 - the bytes were just made here
        return exc
    except Exception:  # noqa: BLE001 - any unpicklable exception is sent as its text
        return RuntimeError(f"{type(exc).__name__}: {exc}")


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """The child's loop: connect the factory sent first, then answer calls until closed."""

    def reply(frame: tuple[Any, ...]) -> None:
        _send(replies, frame)

    writer: Any = None
    while True:
        try:
            method, args = _receive(requests)
        except EOFError:  # the parent closed the pipe or died: close the connections
            if writer is not None:
                writer.close()
            break
        try:
            if method == "connect":
                writer = args[0](on_retry=lambda: reply(("retry",)),
                                 on_rebuild=lambda report: reply(("rebuild", report)))
                result = None
            elif method == "close":
                if writer is not None:
                    writer.close()
                reply(("ok", None))
                break
            elif method in METHODS and writer is not None:
                result = getattr(writer, method)(*args)
            else:
                raise ValueError(f"the store process cannot {method!r} (connected: "
                                 f"{writer is not None})")
        except Exception as exc:  # noqa: BLE001 - every error goes back to the caller
            log.exception("store process: %s failed", method)
            reply(("error", _portable(exc)))
            continue
        reply(("ok", result))


def main() -> None:
    """Entry point of the child (``python -m udfs.stores.client_process [NICE]``)."""
    # first, so that every thread the clients start inherits it (Linux keeps a nice value per
    # thread): on a busy machine the kernel then runs the engine's thread before the writes,
    # which wait for the stores anyway (docs/performance.md, "fifteenth session")
    nice = int(sys.argv[1]) if len(sys.argv) > 1 else 0
    if nice > 0:
        os.nice(nice)
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # a stray print goes to standard error, never into a frame
    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr,
        format=f"%(asctime)s %(levelname)s store-process[{os.getpid()}] %(name)s: %(message)s")
    serve(sys.stdin.buffer, replies)


if __name__ == "__main__":
    main()
