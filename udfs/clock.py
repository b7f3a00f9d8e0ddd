"""A user's clock: what the engine has applied, what waits, and when the user is due next.

The engine applies a user's inputs (clicks, metadata) in event-time order and runs every
time-driven check at its own due time (see udfs/segments/SEGMENTS.md, "Time semantics").
``UserClock`` is the small part of a user's state that makes this possible without reading the
rest of it:

- ``clock_ms``: the event time of what was last applied to the user (an input or a check);
- ``pending``: inputs that arrived but are not applied yet, because the watermark has not
  passed their time (Avro bytes as they arrived, decoded only when applied);
- ``due_ms``: the next time a segment could change without input (a lower bound);
- ``campaign_due_ms``: when the earliest deferred campaign candidate falls due;
- ``recheck_ms``: the next definitions recheck of an idle user (housekeeping, daily);
- ``expiry_ms``: when the user's state expires if nothing arrives (the state TTL, day-rounded);
- ``timer_ms``: the one Flink event-time timer registered for the user (its earliest wake);
- ``quiet_ms`` and ``quiet_watermark_ms``: the one processing-time timer that releases the
  pending inputs if the stream goes quiet (``quiet_release_ms``), and the watermark when it was
  set (``arm_quiet_release``, ``quiet_release_action``);
- ``defs_fp``: a fingerprint of the definition versions the user was last evaluated against.

Encoded as versioned little-endian bytes (``encode_clock``/``decode_clock``) for one keyed
ValueState; a user without that state (a savepoint from before the clock existed) starts with an
empty clock, which the engine sets from the rest of the state at the next step.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

#: the encoding's version byte; 2 added each pending input's trace context (version 1, from
#: savepoints of earlier builds, is read as pending inputs without one); 3 added the quiet
#: release timer (versions 1 and 2 are read without one)
CLOCK_VERSION = 3
_READABLE = (1, 2, 3)

#: apply order of inputs with the same event time: metadata valid at t is seen by a click at t;
#: an engagement outcome (opened, clicked, ...) at t after both
METADATA_RANK = 0
CLICK_RANK = 1
OUTCOME_RANK = 2

_NONE = -(2**63)
_HEADER_V2 = struct.Struct("<Bqqqqqqqi")
_HEADER = struct.Struct("<Bqqqqqqqqqi")  # + quiet_ms, quiet_watermark_ms
_ENTRY_V1 = struct.Struct("<qBqHI")
_ENTRY = struct.Struct("<qBqHIB")  # + the trace context's length


@dataclass(frozen=True)
class Pending:
    """An input waiting for the watermark.

    Attributes:
        time_ms: its event time (a click's or outcome's ``event_time``, metadata's
            ``updated_at``).
        rank: ``METADATA_RANK``, ``CLICK_RANK`` or ``OUTCOME_RANK`` (order among inputs at the
            same time).
        key: the dedup and tie-break key: the event id, ``metadata@<updated_at>`` or
            ``outcome@<outcome_id>``.
        payload: the record's Avro single-object bytes (decoded only when applied); empty for
            an input handed to the engine already decoded (``item``).
        ingest_time: Kafka append time of its record (trigger latency).
        item: the decoded input, when the caller has it (never encoded).
        trace: a click's W3C ``traceparent`` (``udfs.tracing``), kept until it is applied so
            what it causes joins its trace; empty for other inputs.
    """

    time_ms: int
    rank: int
    key: str
    payload: bytes
    ingest_time: int = 0
    item: Any = field(default=None, compare=False)
    trace: str = ""

    def order(self) -> tuple[int, int, str]:
        """The apply order: event time, metadata first, then the key."""
        return (self.time_ms, self.rank, self.key)


@dataclass
class UserClock:
    """The user's clock, pending inputs and next due times (see the module docstring)."""

    clock_ms: int | None = None
    due_ms: int | None = None
    campaign_due_ms: int | None = None
    recheck_ms: int | None = None
    expiry_ms: int | None = None
    timer_ms: int | None = None
    defs_fp: int = 0
    pending: list[Pending] = field(default_factory=list)
    quiet_ms: int | None = None
    quiet_watermark_ms: int | None = None

    def add(self, item: Pending) -> bool:
        """Buffer an input; False (nothing added) when one with the same key is pending."""
        if any(p.key == item.key and p.rank == item.rank for p in self.pending):
            return False
        self.pending.append(item)
        return True

    def first_pending(self) -> Pending | None:
        """The pending input to apply first, or None."""
        return min(self.pending, key=Pending.order) if self.pending else None

    def next_check_ms(self) -> int | None:
        """The earliest time-driven check (due change, recheck or expiry), or None."""
        times = [t for t in (self.due_ms, self.campaign_due_ms, self.recheck_ms, self.expiry_ms)
                 if t is not None]
        return min(times) if times else None

    def wake_ms(self) -> int | None:
        """When the user must be stepped next: the earliest pending input or check."""
        times = [p.time_ms for p in self.pending]
        check = self.next_check_ms()
        if check is not None:
            times.append(check)
        return min(times) if times else None

    def is_due(self, watermark_ms: int) -> bool:
        """Whether anything is to be applied or checked at a watermark (cheap: no decoding)."""
        wake = self.wake_ms()
        return wake is not None and wake <= watermark_ms

    def is_empty(self) -> bool:
        """Nothing worth keeping: no clock set and nothing pending."""
        return self.clock_ms is None and not self.pending


def _opt(value: int | None) -> int:
    return _NONE if value is None else value


def _unopt(value: int) -> int | None:
    return None if value == _NONE else value


def encode_clock(clock: UserClock) -> bytes:
    """The clock as versioned bytes (pending inputs as their Avro payloads)."""
    parts = [_HEADER.pack(CLOCK_VERSION, _opt(clock.clock_ms), _opt(clock.due_ms),
                          _opt(clock.campaign_due_ms), _opt(clock.recheck_ms),
                          _opt(clock.expiry_ms), _opt(clock.timer_ms), _opt(clock.quiet_ms),
                          _opt(clock.quiet_watermark_ms), clock.defs_fp, len(clock.pending))]
    for p in clock.pending:
        if p.item is not None and not p.payload:
            raise ValueError(f"pending input {p.key!r} has no payload to store")
        key = p.key.encode()
        trace = p.trace.encode("ascii")
        parts.append(_ENTRY.pack(p.time_ms, p.rank, p.ingest_time, len(key), len(p.payload),
                                 len(trace)))
        parts.append(key)
        parts.append(p.payload)
        parts.append(trace)
    return b"".join(parts)


def decode_clock(raw: bytes | None) -> UserClock:
    """The clock of ``encode_clock`` bytes; an empty clock for None (no state yet).

    Raises:
        ValueError: an unknown version or malformed bytes.
    """
    if not raw:
        return UserClock()
    version = raw[0]
    if version not in _READABLE:
        raise ValueError(f"user clock state has version {version}; this build reads versions "
                         f"{' and '.join(map(str, _READABLE))}")
    entry = _ENTRY_V1 if version == 1 else _ENTRY
    quiet = quiet_watermark = _NONE
    try:
        if version == 3:
            _, clock_ms, due, campaign_due, recheck, expiry, timer, quiet, quiet_watermark, \
                fp, n = _HEADER.unpack_from(raw, 0)
            offset = _HEADER.size
        else:
            _, clock_ms, due, campaign_due, recheck, expiry, timer, fp, n = \
                _HEADER_V2.unpack_from(raw, 0)
            offset = _HEADER_V2.size
        pending = []
        for _ in range(n):
            time_ms, rank, ingest, klen, plen, *tlen = entry.unpack_from(raw, offset)
            offset += entry.size
            key = raw[offset:offset + klen].decode()
            offset += klen
            payload = bytes(raw[offset:offset + plen])
            offset += plen
            trace = ""
            if tlen:
                trace = raw[offset:offset + tlen[0]].decode("ascii")
                offset += tlen[0]
            pending.append(Pending(time_ms, rank, key, payload, ingest, trace=trace))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed user clock state: {exc}") from exc
    return UserClock(_unopt(clock_ms), _unopt(due), _unopt(campaign_due), _unopt(recheck),
                     _unopt(expiry), _unopt(timer), fp, pending, _unopt(quiet),
                     _unopt(quiet_watermark))


def arm_quiet_release(clock: UserClock, now_ms: int, watermark_ms: Callable[[], int],
                      quiet_release_ms: int) -> tuple[int | None, int | None]:
    """After a step: the processing-time timer to (register, delete) for the quiet release.

    One timer per stretch of waiting: set ``quiet_release_ms`` after inputs start to wait,
    deleted when none waits any more. (One timer per input, deleted never, cost a Python call
    per input ~3 s later that found nothing to release: more than half of the engine's time in
    a drain, issue 13.) ``watermark_ms`` is asked only when a timer is set. Updates ``clock``
    (``quiet_ms``, ``quiet_watermark_ms``); the caller stores it when a time is returned.
    """
    if clock.pending and clock.quiet_ms is None and quiet_release_ms > 0:
        clock.quiet_ms, clock.quiet_watermark_ms = now_ms + quiet_release_ms, watermark_ms()
        return clock.quiet_ms, None
    if not clock.pending and clock.quiet_ms is not None:
        stale, clock.quiet_ms, clock.quiet_watermark_ms = clock.quiet_ms, None, None
        return None, stale
    return None, None


#: what a quiet-release timer does (``quiet_release_action``)
RELEASE, REARM, IGNORE = "release", "rearm", "ignore"


def quiet_release_action(clock: UserClock, timer_ms: int, watermark_ms: int) -> str:
    """What a quiet-release timer firing at ``timer_ms`` does, at watermark ``watermark_ms``.

    Clears the clock's timer when it is this one (the caller stores the clock).

    - ``RELEASE``: apply what waits: the watermark has not moved since the timer was set (the
      stream is quiet), or the timer is an older build's (one per input; its clock has none);
    - ``REARM``: the watermark moved meanwhile, so the stream is not quiet and the inputs will
      be passed by event time: set the timer again (``arm_quiet_release``);
    - ``IGNORE``: nothing waits, or the timer is not the clock's (an older build's, outlived).
    """
    own = clock.quiet_ms is not None and clock.quiet_ms == timer_ms
    watermark_at_arming = clock.quiet_watermark_ms
    if own:
        clock.quiet_ms = clock.quiet_watermark_ms = None
    if not clock.pending or (clock.quiet_ms is not None and not own):
        return IGNORE
    if own and watermark_at_arming is not None and watermark_ms > watermark_at_arming:
        return REARM
    return RELEASE
