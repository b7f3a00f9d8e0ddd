"""udfs.lru: the decoded-state cache hands back only its own bytes' object, evicts the oldest."""

from __future__ import annotations

import random

import pytest

from udfs.lru import LruCache


def test_an_object_comes_back_only_for_the_bytes_it_was_kept_with():
    cache: LruCache[str] = LruCache(4)
    cache.put("ann", b"v1", "decoded v1")
    assert cache.get("ann", b"v1") == "decoded v1"
    assert cache.get("ann", b"v2") is None  # another instance's or a restore's bytes
    assert cache.get("bob", b"v1") is None
    assert cache.take("ann", b"v2") is None and "ann" not in cache  # taken whatever the bytes
    cache.put("ann", b"v1", "decoded v1")
    assert cache.take("ann", None) is None and "ann" not in cache
    cache.put("ann", b"v1", "decoded v1")
    assert cache.take("ann", b"v1") == "decoded v1" and "ann" not in cache
    cache.put("ann", b"", "items")
    assert cache.get_any("ann") == "items"
    cache.pop("ann")
    assert cache.get_any("ann") is None and len(cache) == 0


def test_the_least_recently_used_user_goes_first():
    cache: LruCache[int] = LruCache(3)
    for n, user in enumerate(("a", "b", "c")):
        cache.put(user, b"x", n)
    assert cache.get("a", b"x") == 0  # a is now the most recent: b is the oldest
    cache.put("d", b"x", 3)
    assert "b" not in cache and {"a", "c", "d"} <= {u for u in "abcd" if u in cache}
    cache.get_any("c")
    cache.put("e", b"x", 4)  # a is the oldest now
    assert "a" not in cache and len(cache) == 3


def test_it_keeps_what_a_reference_lru_keeps_over_a_seeded_run():
    """Differential: a list-based LRU, written as the definition, against the cache."""
    rng = random.Random(11)
    cache: LruCache[int] = LruCache(20)
    reference: list[tuple[str, bytes, int]] = []  # oldest first

    def touch(user: str) -> tuple[str, bytes, int] | None:
        for i, entry in enumerate(reference):
            if entry[0] == user:
                return reference.pop(i)
        return None

    for n in range(5_000):
        user, raw = f"u{rng.randrange(40)}", bytes([rng.randrange(3)])
        op = rng.random()
        if op < 0.5:
            entry = next((e for e in reference if e[0] == user), None)
            expected = entry[2] if entry is not None and entry[1] == raw else None
            if expected is not None:
                reference.append(touch(user))  # type: ignore[arg-type]
            assert cache.get(user, raw) == expected
        elif op < 0.6:
            entry = touch(user)
            expected = entry[2] if entry is not None and entry[1] == raw else None
            assert cache.take(user, raw) == expected
        else:
            touch(user)
            reference.append((user, raw, n))
            del reference[:-20]
            cache.put(user, raw, n)
        assert {u for u, _, _ in reference} == {f"u{k}" for k in range(40) if f"u{k}" in cache}
        assert len(cache) == len(reference)


def test_a_cache_of_no_users_is_refused():
    with pytest.raises(ValueError, match="at least 1 user"):
        LruCache(0)
