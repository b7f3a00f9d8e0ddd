"""Local-time rules: the user's time zone, local days and weeks, quiet hours, frequency caps.

Inputs: event times (epoch ms), the user's metadata (``time_zone``), the ``PriorityPolicy``
(default zone, quiet hours) and a ``Cap``. Outputs: the user's ``ZoneInfo``, the start of the
next local day or ISO week, when quiet hours end, and when one more send fits a cap. State:
none. Local wall times are built on the right date, so a DST change moves them in UTC.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Final
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from udfs.campaigns.grammar import Cap, PriorityPolicy

#: every zone ``zone_of`` found, by name: ``ZoneInfo`` keeps only the last 8 names used
#: strongly, and a ninth drops the oldest, which is read from its file again at its next use
#: (users in more than eight zones made that most steps' cost: ~2% of the domain loop). Bounded
#: by the zone files that exist (a name that names none is not kept); a ZoneInfo is immutable.
_ZONES: Final[dict[str, ZoneInfo]] = {}


def zone_of(metadata: Mapping[str, Any] | None, policy: PriorityPolicy) -> ZoneInfo:
    """The user's time zone (metadata ``time_zone``), else the policy's default."""
    name = (metadata or {}).get("time_zone") or policy.default_time_zone
    zone = _ZONES.get(name)
    if zone is None:
        try:
            zone = ZoneInfo(name)
        except (ZoneInfoNotFoundError, ValueError):
            if name == policy.default_time_zone:
                raise
            return zone_of(None, policy)  # a name no zone file has: the policy's default
        _ZONES[name] = zone
    return zone


def _local(ms: int, zone: ZoneInfo) -> datetime:
    return datetime.fromtimestamp(ms / 1000, tz=zone)


def _instant(local: datetime) -> int:
    """Epoch ms of a local wall time; a time in a DST gap maps to just after the gap."""
    return int(local.timestamp() * 1000)


def next_local_midnight(ms: int, zone: ZoneInfo) -> int:
    """Start of the user's next local day."""
    day = _local(ms, zone).date() + timedelta(days=1)
    return _instant(datetime(day.year, day.month, day.day, tzinfo=zone))


def next_local_week(ms: int, zone: ZoneInfo) -> int:
    """Start of the user's next local ISO week (Monday 00:00)."""
    local = _local(ms, zone)
    day = local.date() + timedelta(days=7 - local.weekday())
    return _instant(datetime(day.year, day.month, day.day, tzinfo=zone))


def quiet_until(ms: int, zone: ZoneInfo, start_min: int, end_min: int) -> int | None:
    """If ``ms`` is in the user's local quiet hours, when they end; else None.

    Quiet hours are [start, end) in local wall time and wrap midnight when start > end. The end
    is built as a local wall time on the right date, so a DST change in between moves it in UTC.
    """
    if start_min == end_min:
        return None
    local = _local(ms, zone)
    minute = local.hour * 60 + local.minute
    quiet = (start_min <= minute < end_min) if start_min < end_min else \
        (minute >= start_min or minute < end_min)
    if not quiet:
        return None
    day = local.date()
    if start_min > end_min and minute >= start_min:
        day += timedelta(days=1)  # evening part: quiet ends tomorrow morning
    end = datetime(day.year, day.month, day.day, end_min // 60, end_min % 60, tzinfo=zone)
    return max(_instant(end), ms + 1)


def cap_free_at(times: Iterable[int], ms: int, zone: ZoneInfo, cap: Cap) -> int:
    """The earliest time >= ``ms`` at which one more send fits the cap (local day and week)."""
    local = _local(ms, zone)
    day = local.date()
    week = local.isocalendar()[:2]
    today = this_week = 0
    for t in times:
        sent = _local(t, zone)
        if sent.isocalendar()[:2] == week:
            this_week += 1
            if sent.date() == day:
                today += 1
    if cap.per_week is not None and this_week >= cap.per_week:
        return next_local_week(ms, zone)
    if cap.per_day is not None and today >= cap.per_day:
        return next_local_midnight(ms, zone)
    return ms
