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
- ``defs_fp``: a fingerprint of the definition versions the user was last evaluated against.

Encoded as versioned little-endian bytes (``encode_clock``/``decode_clock``) for one keyed
ValueState; a user without that state (a savepoint from before the clock existed) starts with an
empty clock, which the engine sets from the rest of the state at the next step.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from udfs.lru import LruCache

#: the encoding's version byte; 2 added each pending input's trace context (version 1, from
#: savepoints of earlier builds, is read as pending inputs without one)
CLOCK_VERSION: Final = 2
_READABLE: Final = (1, 2)

#: apply order of inputs with the same event time: metadata valid at t is seen by a click at t;
#: an engagement outcome (opened, clicked, ...) at t after both
METADATA_RANK: Final = 0
CLICK_RANK: Final = 1
OUTCOME_RANK: Final = 2

_NONE: Final = -(2**63)
_HEADER: Final = struct.Struct("<Bqqqqqqqi")
_ENTRY_V1: Final = struct.Struct("<qBqHI")
_ENTRY: Final = struct.Struct("<qBqHIB")  # + the trace context's length


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

    def __init__(self, time_ms: int, rank: int, key: str, payload: bytes, ingest_time: int = 0,
                 item: Any = None, trace: str = "") -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        object.__setattr__(self, "time_ms", time_ms)
        object.__setattr__(self, "rank", rank)
        object.__setattr__(self, "key", key)
        object.__setattr__(self, "payload", payload)
        object.__setattr__(self, "ingest_time", ingest_time)
        object.__setattr__(self, "item", item)
        object.__setattr__(self, "trace", trace)

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

    def __init__(self, clock_ms: int | None = None, due_ms: int | None = None,
                 campaign_due_ms: int | None = None, recheck_ms: int | None = None,
                 expiry_ms: int | None = None, timer_ms: int | None = None, defs_fp: int = 0,
                 pending: list[Pending] | None = None) -> None:
        # written out, not the dataclass's: compiled, this one is native (``udfs.native``)
        self.clock_ms = clock_ms
        self.due_ms = due_ms
        self.campaign_due_ms = campaign_due_ms
        self.recheck_ms = recheck_ms
        self.expiry_ms = expiry_ms
        self.timer_ms = timer_ms
        self.defs_fp = defs_fp
        self.pending = [] if pending is None else pending

    def add(self, item: Pending) -> bool:
        """Buffer an input; False (nothing added) when one with the same key is pending."""
        key, rank = item.key, item.rank
        for waiting in self.pending:  # a plain loop: half the cost of any() over a generator
            if waiting.key == key and waiting.rank == rank:
                return False
        self.pending.append(item)
        return True

    def first_pending(self) -> Pending | None:
        """The pending input to apply first, or None."""
        pending = self.pending
        if len(pending) < 2:  # the common case: no ordering to do
            return pending[0] if pending else None
        return min(pending, key=Pending.order)

    def next_check_ms(self) -> int | None:
        """The earliest time-driven check (due change, recheck or expiry), or None."""
        # read several times a step: compared in place, no list built
        first = self.due_ms
        for t in (self.campaign_due_ms, self.recheck_ms, self.expiry_ms):
            if t is not None and (first is None or t < first):
                first = t
        return first

    def wake_ms(self) -> int | None:
        """When the user must be stepped next: the earliest pending input or check."""
        first = self.next_check_ms()
        for p in self.pending:
            if first is None or p.time_ms < first:
                first = p.time_ms
        return first

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
                          _opt(clock.expiry_ms), _opt(clock.timer_ms),
                          clock.defs_fp, len(clock.pending))]
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


def decode_clock(raw: bytes | None, items: Mapping[tuple[int, str], Any] | None = None
                 ) -> UserClock:
    """The clock of ``encode_clock`` bytes; an empty clock for None (no state yet).

    ``items``: decoded inputs by (rank, key), handed back on the pending entries they belong to
    (``PendingItems``), so those are not decoded again when applied.

    Raises:
        ValueError: an unknown version or malformed bytes.
    """
    if not raw:
        return UserClock()
    version = raw[0]
    if version not in _READABLE:
        raise ValueError(f"user clock state has version {version}; this build reads versions "
                         f"{' and '.join(map(str, _READABLE))}")
    entry = _ENTRY if version == 2 else _ENTRY_V1
    try:
        _, clock_ms, due, campaign_due, recheck, expiry, timer, fp, n = \
            _HEADER.unpack_from(raw, 0)
        offset = _HEADER.size
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
            item = items.get((rank, key)) if items else None
            pending.append(Pending(time_ms, rank, key, payload, ingest, item, trace))
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed user clock state: {exc}") from exc
    return UserClock(_unopt(clock_ms), _unopt(due), _unopt(campaign_due), _unopt(recheck),
                     _unopt(expiry), _unopt(timer), fp, pending)


class QuietTimers:
    """Which users already have a quiet-release timer on the way (one operator's memory).

    A quiet stream moves no watermark, so the adapter releases a user's pending inputs by
    processing time (``quiet_release_ms`` after an input arrived): whatever is pending when
    that timer fires is applied. An input arriving while the user's earlier quiet timer has not
    fired yet needs no timer of its own: that one releases it too, sooner. Registering and
    firing a Flink timer per input cost more than a third of a backlog drain (a JVM call each,
    and a Python call plus a state read per firing), so the adapter asks here first.

    Not keyed state, on purpose: after a restore this is empty and a user's next input registers
    a timer again (the restored one still fires; finding nothing pending, it does nothing). An
    entry lives from registration to firing, so this holds only the users with inputs in the
    last ``quiet_release_ms``.
    """

    def __init__(self, quiet_release_ms: int) -> None:
        self.quiet_release_ms = quiet_release_ms
        self._due: dict[str, int] = {}

    def register(self, user_id: str, now_ms: int) -> int | None:
        """The processing time to register a quiet timer at for the user, or None: one is due.

        Args:
            user_id: the user with pending inputs after a step.
            now_ms: the processing time now.
        """
        due = self._due.get(user_id)
        if due is not None and due >= now_ms:
            return None  # not fired yet: it releases this input as well
        due = now_ms + self.quiet_release_ms
        self._due[user_id] = due
        return due

    def fired(self, user_id: str, timestamp_ms: int) -> None:
        """The user's quiet timer for ``timestamp_ms`` fired (a later one may be registered)."""
        if self._due.get(user_id) == timestamp_ms:
            del self._due[user_id]

    def __len__(self) -> int:
        return len(self._due)


class PendingItems:
    """The users' clocks and waiting inputs, kept decoded between steps (one operator's memory).

    A click is decoded when it arrives (it is validated then) and waits in its user's clock as
    bytes until the watermark passes it; the clock is keyed state, so the next step reads it
    back as bytes and the click would be decoded a second time when applied. ``remember``
    keeps what a step left pending, ``for_user`` hands it to ``decode_clock``. An input's
    payload never changes while it waits (a second arrival with its key is a duplicate, not
    added), so the decoded item always matches the bytes it is attached to.

    The clock itself is kept too, with the bytes it was encoded to at the end of its step
    (``remember(..., encoded=...)``): ``take`` hands that object back when the state holds
    those same bytes, instead of decoding them (~10% of the domain loop). It is handed out once
    (taken, not shared): a step that fails half-way, or stores no clock, leaves no entry, so an
    object changed since its bytes were written is never handed back.

    Not keyed state: after a restore this is empty and the clocks and pending inputs are decoded
    from their bytes. Bounded: at most ``max_users`` users' clocks and as many users' inputs,
    the least recently stepped evicted (``udfs.lru``; a miss costs a decode).
    """

    def __init__(self, max_users: int) -> None:
        self._items: LruCache[dict[tuple[int, str], Any]] = LruCache(max_users)
        self._clocks: LruCache[UserClock] = LruCache(max_users)

    def for_user(self, user_id: str) -> Mapping[tuple[int, str], Any] | None:
        """The user's decoded pending inputs by (rank, key), or None."""
        return self._items.get_any(user_id)

    def take(self, user_id: str, raw: bytes | None) -> UserClock:
        """The user's clock for the state's bytes ``raw``: the kept object if they are its own.

        Otherwise (another instance wrote them, a restore, nothing kept) ``raw`` decoded, with
        the kept pending inputs handed back. Either way nothing stays kept for the user's clock
        until the next ``remember`` with its bytes.

        Raises:
            ValueError: unreadable bytes (``decode_clock``).
        """
        kept = self._clocks.take(user_id, raw)
        if kept is not None:
            return kept
        return decode_clock(bytes(raw) if raw else None, self._items.get_any(user_id))

    def remember(self, user_id: str, clock: UserClock, encoded: bytes | None = None) -> None:
        """Keep the user's clock after a step: its decoded inputs, and itself with ``encoded``.

        Args:
            user_id: the user.
            clock: the clock as the step left it.
            encoded: the bytes the clock was stored as at the end of this step; None when the
                step stored no clock (the object is then not kept: it may differ from the
                state's bytes).
        """
        if encoded is not None:
            self._clocks.put(user_id, encoded, clock)
        else:
            self._clocks.pop(user_id)
        items = {(p.rank, p.key): p.item for p in clock.pending if p.item is not None}
        if not items:
            self._items.pop(user_id)
            return
        self._items.put(user_id, b"", items)

    def __len__(self) -> int:
        return len(self._items)
