"""nudgeflow's Redis keys, spelled in one place.

Every key starts with the configured prefix (``redis_key_prefix``, default ``nudgeflow``), so
several deployments or test runs can share one Redis.

| key | type | written by | holds |
|---|---|---|---|
| ``<prefix>:user:<user_id>`` | set | the engine | the user's segment ids (30-day TTL) |
| ``<prefix>:user:<user_id>:churn`` | hash | the engine | latest churn score, model, time |
| ``<prefix>:segment-sizes`` | hash | the engine | member count per segment |
| ``<prefix>:definitions`` | hash | the engine | definition id -> version applied |
| ``<prefix>:sent:<trigger_id>`` | string | ``nudgeflow sender`` | a delivered trigger (dedupe) |
"""

from __future__ import annotations


def user_segments(prefix: str, user_id: str) -> str:
    """The set of a user's segment ids."""
    return f"{prefix}:user:{user_id}"


def user_churn(prefix: str, user_id: str) -> str:
    """The hash of a user's latest churn score, model version and event time."""
    return f"{user_segments(prefix, user_id)}:churn"


def segment_sizes(prefix: str) -> str:
    """The hash segment id -> member count (the priority matrix's audience factor)."""
    return f"{prefix}:segment-sizes"


def definitions(prefix: str) -> str:
    """The hash definition id -> the version the running job applies (``defs list``)."""
    return f"{prefix}:definitions"


def sent(prefix: str, trigger_id: str) -> str:
    """The sender's record that a trigger was delivered (dedupe across restarts)."""
    return f"{prefix}:sent:{trigger_id}"
