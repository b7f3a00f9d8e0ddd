"""nudgeflow's Redis keys, spelled in one place.

Every key starts with the configured prefix (``redis_key_prefix``, default ``nudgeflow``), so
several deployments or test runs can share one Redis.

| key | type | written by | holds |
|---|---|---|---|
| ``<prefix>:user:<user_id>`` | set | the engine | the user's segment ids (30-day TTL) |
| ``<prefix>:user:<user_id>:churn`` | hash | the engine | latest churn score, model, time |
| ``<prefix>:segment-sizes`` | hash | the engine | member count per segment |
| ``<prefix>:definitions`` | hash | the engine | definition id -> version applied |
| ``<prefix>:sent:<group>:<channel>:<trigger_id>`` | string | ``nudgeflow sender`` | a trigger the
  sender group delivered on that channel, or dropped as expired (dedupe; expires) |
| ``<prefix>:budgets:<group>`` | hash | ``nudgeflow sender`` (``--budget``, ``budgets set``) |
  channel -> its send budget (``50/s@10,2000/min@2000``), read at every admission |
| ``<prefix>:budget-state:<group>:<channel>`` | hash | the sender's admission script | limit ->
  GCRA theoretical arrival time (ms; expires) |
| ``<prefix>:budget-used:<group>:<channel>`` | hash | the same | epoch second -> admissions
  (two minutes) |
| ``<prefix>:rebuild-marker`` | string | the engine, ``stores rebuild-redis`` | run_id of the Redis
  process that holds everything in Cassandra (missing or another run_id: rebuild) |
| ``<prefix>:rebuild-lock`` | string | the same | who is rebuilding (expires) |
| ``<prefix>:campaign-stats`` | hash | the engine's per-campaign statistics | campaign or journey
  id -> its statistics as JSON (``udfs.attribution.stats``), read by ``nudgeflow report`` |
"""

from __future__ import annotations

#: user sets and churn hashes expire if a user is not touched for this long (Cassandra stays)
USER_TTL_S = 30 * 24 * 3600


def user_segments(prefix: str, user_id: str) -> str:
    """The set of a user's segment ids."""
    return f"{prefix}:user:{user_id}"


def user_churn(prefix: str, user_id: str) -> str:
    """The hash of a user's latest churn score, model version and event time."""
    return f"{user_segments(prefix, user_id)}:churn"


def segment_sizes(prefix: str) -> str:
    """The hash segment id -> member count (the priority matrix's audience factor)."""
    return f"{prefix}:segment-sizes"


def segment_sizes_at(prefix: str) -> str:
    """The hash segment id -> wall-clock ms of the last membership change written for it."""
    return f"{prefix}:segment-sizes-at"


def campaign_stats(prefix: str) -> str:
    """The hash campaign (or journey) id -> its closed-loop statistics as JSON."""
    return f"{prefix}:campaign-stats"


def definitions(prefix: str) -> str:
    """The hash definition id -> the version the running job applies (``defs list``)."""
    return f"{prefix}:definitions"


def sent(prefix: str, group: str, channel: str, trigger_id: str) -> str:
    """The record that sender group ``group`` delivered a trigger on ``channel`` (dedupe).

    The group and the channel are part of the key so that senders of different channels or
    groups sharing one Redis never take each other's deliveries for their own. (Up to issue 18
    the key was ``<prefix>:sent:<trigger_id>``; such keys are no longer read.)
    """
    return f"{prefix}:sent:{group}:{channel}:{trigger_id}"


def budgets(prefix: str, group: str) -> str:
    """The hash channel -> send budget of sender group ``group`` (jobs.sender.budgets)."""
    return f"{prefix}:budgets:{group}"


def budget_state(prefix: str, group: str, channel: str) -> str:
    """The hash limit -> GCRA theoretical arrival time of a group's channel budget."""
    return f"{prefix}:budget-state:{group}:{channel}"


def budget_used(prefix: str, group: str, channel: str) -> str:
    """The hash epoch second -> admissions of a group on a channel (budget utilisation)."""
    return f"{prefix}:budget-used:{group}:{channel}"


def rebuild_marker(prefix: str) -> str:
    """The run_id of the Redis process known to hold every membership of Cassandra."""
    return f"{prefix}:rebuild-marker"


def rebuild_lock(prefix: str) -> str:
    """Held (with an expiry) by whoever rebuilds Redis from Cassandra, so only one does."""
    return f"{prefix}:rebuild-lock"


def user_id_of(prefix: str, key: str) -> tuple[str, str] | None:
    """(user id, ``segments`` or ``churn``) of a user key of ``prefix``; None for other keys."""
    head = f"{prefix}:user:"
    if not key.startswith(head):
        return None
    rest = key[len(head):]
    if rest.endswith(":churn"):
        return rest[: -len(":churn")], "churn"
    return rest, "segments"
