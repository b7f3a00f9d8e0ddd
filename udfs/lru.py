"""Decoded copies of keyed state, kept in memory by user, the least recently used evicted.

Inputs: a user id, the bytes keyed state holds for one of the user's values, and the object
those bytes decode to (or were encoded from). Outputs: the object again, when asked with the
same bytes. State: at most ``max_users`` entries of one operator instance's memory; not keyed
state, so a restore starts empty and every miss costs a decode.

Why least recently used: a user's next step comes after many other users' steps, and an
engine instance sees more users than it can keep decoded (50,000 users of the full bench,
against 10,000 kept per cache before 2026-12-05). A cache emptied when full forgets the users
still active along with the rest, and each of them decodes its features (~20-26 µs), metadata,
campaign state and clock again at its next step. Evicting only the user seen longest ago keeps
the active users decoded (measured, the decodes of evicted users cost ~6 µs per click at a
fifth of the users kept: docs/performance.md, 2026-12-05); an ``OrderedDict`` moves an entry
to the end and drops the oldest in constant time.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

V = TypeVar("V")


class LruCache(Generic[V]):
    """Objects by user, each with the bytes it stands for; at most ``max_users`` of them.

    The bytes are the truth (checkpoints hold them): ``get`` and ``take`` hand an object back
    only when the caller's bytes are the ones it was kept with, so state written by another
    instance, or restored, is never answered from here.
    """

    __slots__ = ("max_users", "_entries")

    def __init__(self, max_users: int) -> None:
        if max_users < 1:
            raise ValueError(f"a cache of decoded state keeps at least 1 user, not {max_users}")
        self.max_users = max_users
        self._entries: OrderedDict[str, tuple[bytes, V]] = OrderedDict()

    def get(self, user_id: str, raw: bytes) -> V | None:
        """The object kept for the user with ``raw``, now the most recently used; else None."""
        entry = self._entries.get(user_id)
        if entry is None or entry[0] != raw:
            return None
        self._entries.move_to_end(user_id)
        return entry[1]

    def take(self, user_id: str, raw: bytes | None) -> V | None:
        """Like ``get``, but the entry leaves the cache (whatever its bytes).

        For an object the caller will change: it is kept again with its new bytes
        (``put``), and a step that fails half-way leaves nothing behind that differs from them.
        """
        entry = self._entries.pop(user_id, None)
        if entry is None or not raw or entry[0] != raw:
            return None
        return entry[1]

    def get_any(self, user_id: str) -> V | None:
        """The object kept for the user whatever its bytes (for values not checked by bytes)."""
        entry = self._entries.get(user_id)
        if entry is None:
            return None
        self._entries.move_to_end(user_id)
        return entry[1]

    def put(self, user_id: str, raw: bytes, value: V) -> None:
        """Keep ``value`` for the user with the bytes it stands for; evict the oldest if full."""
        entries = self._entries
        entries[user_id] = (raw, value)
        entries.move_to_end(user_id)
        if len(entries) > self.max_users:
            entries.popitem(last=False)

    def pop(self, user_id: str) -> None:
        """Forget the user's entry, if any."""
        self._entries.pop(user_id, None)

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, user_id: object) -> bool:
        return user_id in self._entries
