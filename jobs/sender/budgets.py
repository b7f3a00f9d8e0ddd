"""Per-channel send budgets shared by every sender of a group: GCRA in one Redis Lua script.

A budget caps how many triggers a sender group delivers on one channel: ``SMS=50/s`` (at most
50 per second), optionally several limits at once (``SMS=50/s,2000/min,20000/day``), each with
a burst (``50/s@10``: a bucket of 10). Budgets live in the Redis hash
``<prefix>:budgets:<group>`` (channel -> limits as text), which the admission script reads at
every admission: changing it (``nudgeflow sender budgets set SMS=80/s``, or a sender started
with ``--budget``) takes effect at the next admission of every sender of the group.

The algorithm: GCRA (the generic cell rate algorithm, virtual-scheduling form), per limit.
A limit of ``count`` per ``period`` with a burst of ``B`` has an emission interval
``T = period / count`` and a burst tolerance ``tau = (B - 1) * T``. Its state is one number,
the theoretical arrival time ``TAT`` (when the next cell is due at the sustained rate).
A cell asked for at ``now`` is admitted when ``now >= max(TAT, now) - tau``; then
``TAT = max(TAT, now) + T``. Otherwise it is refused, and the script answers how long until it
would be admitted: ``max(TAT, now) - tau - now`` ms, so a sender can wait exactly that long.
Consequence (the burst bound): in any window of length ``w`` at most ``B + w / T`` cells are
admitted, so in any second at most ``count_per_second + B`` (the budget plus one bucket).

Tiers. A trigger of tier ``k`` (P0 = 0 .. P3 = 3, of ``n = 4`` tiers) is judged with the
tolerance ``tau_k = tau * (n - k) / n``: P0 may use the whole bucket, P3 only its first
quarter. The sustained rate is the same for every tier (it is set by ``T``), but when the
bucket runs low the cells left are kept for the higher tiers: a P0 trigger is admitted
``tau - tau_k`` ms before a tier-k trigger would be, across every sender of the group. With
a bucket of 1 (``B = 1``, ``tau = 0``) the tiers are equal and only the senders' own ordering
(P0 batches first) remains.

Several limits: a cell is admitted only when every limit admits it (all TATs then move); the
wait is the longest of the refusals. One script call is one atomic admission. The clock is the
Redis server's (``TIME``), so the senders' own clocks need not agree. The script also counts
admissions per second of that clock in ``<prefix>:budget-used:<group>:<channel>`` (kept two
minutes), which gives the group's budget utilisation.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from udfs.campaigns.grammar import CHANNELS, TIERS
from udfs.stores import keys

UNITS_MS = {"s": 1000, "min": 60_000, "h": 3_600_000, "day": 86_400_000}
"""The periods a limit may be written in, in milliseconds."""

_LIMIT = re.compile(r"^\s*(\d+)\s*/\s*(s|min|h|day)\s*(?:@\s*(\d+))?\s*$")


class BudgetError(ValueError):
    """A budget is malformed; the message says which and how to write it."""


@dataclass(frozen=True)
class Limit:
    """``count`` cells per ``unit`` with a bucket (burst) of ``burst`` cells."""

    count: int
    unit: str
    burst: int

    @property
    def interval_ms(self) -> float:
        """The emission interval T: ms between cells at the sustained rate."""
        return UNITS_MS[self.unit] / self.count

    @property
    def tolerance_ms(self) -> float:
        """The burst tolerance tau = (burst - 1) * T."""
        return (self.burst - 1) * self.interval_ms

    @property
    def per_second(self) -> float:
        """The sustained rate in cells per second."""
        return 1000 / self.interval_ms

    def text(self) -> str:
        """The canonical spelling, ``count/unit@burst`` (what the Lua script parses)."""
        return f"{self.count}/{self.unit}@{self.burst}"


def parse_limits(text: str) -> tuple[Limit, ...]:
    """The limits of ``50/s@10,2000/min``; a limit without ``@burst`` has a bucket of one period.

    Raises:
        BudgetError: a limit is not ``COUNT/UNIT[@BURST]`` with COUNT, BURST >= 1.
    """
    limits = []
    for part in text.split(","):
        match = _LIMIT.match(part)
        if not match:
            raise BudgetError(f"budget limit {part.strip()!r} is not COUNT/UNIT[@BURST] with UNIT "
                              f"one of {', '.join(UNITS_MS)} (e.g. 50/s, 1000/min@100)")
        count, unit, burst = int(match[1]), match[2], int(match[3] or match[1])
        if count < 1 or burst < 1:
            raise BudgetError(f"budget limit {part.strip()!r}: count and burst must be >= 1")
        limits.append(Limit(count, unit, burst))
    return tuple(limits)


def parse_budget(text: str) -> tuple[str, tuple[Limit, ...]]:
    """A ``--budget`` value: ``SMS=50/s`` -> ``("SMS", (Limit(50, "s", 50),))``.

    Raises:
        BudgetError: no ``=``, an unknown channel, or a malformed limit.
    """
    channel, sep, limits = text.partition("=")
    channel = channel.strip()
    if not sep or not limits.strip():
        raise BudgetError(f"--budget {text!r} is not CHANNEL=COUNT/UNIT[@BURST][,...] "
                          "(e.g. SMS=50/s or EMAIL=1000/min,20000/day)")
    if channel not in CHANNELS:
        raise BudgetError(f"--budget {text!r}: unknown channel {channel!r}; the channels are "
                          f"{', '.join(CHANNELS)}")
    return channel, parse_limits(limits)


def budgets_text(limits: Iterable[Limit]) -> str:
    """The canonical text of a channel's limits, as stored in the budgets hash."""
    return ",".join(limit.text() for limit in limits)


def tier_tolerance_ms(limit: Limit, tier: int, tiers: int = len(TIERS)) -> float:
    """The burst tolerance a trigger of tier index ``tier`` is judged with (P0: all of it)."""
    return limit.tolerance_ms * (tiers - tier) / tiers


@dataclass(frozen=True)
class Admission:
    """One admission's answer: admitted, or the ms to wait until it would be."""

    admitted: bool
    wait_ms: float = 0.0
    budget: str = ""
    """The channel's limits as stored ("" when the channel has no budget)."""


def gcra(tat: float | None, now: float, interval: float, tolerance: float
         ) -> tuple[bool, float, float]:
    """One GCRA decision: (admitted, the new TAT, ms to wait when refused).

    ``tat`` is the stored theoretical arrival time (None: never used); on refusal the TAT is
    returned unchanged.
    """
    start = now if tat is None else max(tat, now)
    allow_at = start - tolerance
    if now < allow_at:
        return False, start, allow_at - now
    return True, start + interval, 0.0


def admit_limits(tats: Mapping[str, float], now: float, limits: Sequence[Limit], tier: int,
                 tiers: int = len(TIERS)) -> tuple[Admission, dict[str, float]]:
    """GCRA over several limits at once (what the Lua script does), without Redis.

    Returns the admission and the TATs to store (empty when refused: nothing moves).
    """
    wait, updates = 0.0, {}
    for limit in limits:
        ok, new_tat, limit_wait = gcra(tats.get(limit.text()), now, limit.interval_ms,
                                       tier_tolerance_ms(limit, tier, tiers))
        if ok:
            updates[limit.text()] = new_tat
        else:
            wait = max(wait, limit_wait)
    budget = budgets_text(limits)
    if wait > 0:
        return Admission(False, wait, budget), {}
    return Admission(True, 0.0, budget), updates


class Admitter(Protocol):
    """Asks the channel's budget for one cell."""

    def admit(self, channel: str, tier: str) -> Admission:
        """Admit one trigger of ``tier`` on ``channel`` now, or say how long to wait."""


class MemoryBudgets:
    """Budgets of one process (tests, ``--dedupe memory`` runs): the same GCRA, no Redis."""

    def __init__(self, budgets: Mapping[str, Sequence[Limit]], clock_ms: Any) -> None:
        self.budgets = {channel: tuple(limits) for channel, limits in budgets.items()}
        self.clock_ms = clock_ms
        self.tats: dict[str, dict[str, float]] = {}

    def admit(self, channel: str, tier: str) -> Admission:
        """See ``Admitter.admit``."""
        limits = self.budgets.get(channel)
        if not limits:
            return Admission(True)
        state = self.tats.setdefault(channel, {})
        admission, updates = admit_limits(state, self.clock_ms(), limits, TIERS.index(tier))
        state.update(updates)
        return admission


# KEYS: 1 the budgets hash, 2 the channel's TAT hash, 3 the channel's admissions per second.
# ARGV: 1 channel, 2 tier index, 3 number of tiers, 4 now in ms (tests only; else Redis TIME).
# Returns {admitted 0/1, wait ms as text (Lua numbers would be truncated to integers), budget}.
GCRA_LUA = """
local spec = redis.call('HGET', KEYS[1], ARGV[1])
if not spec or spec == '' then return {1, '0', ''} end
local now
if ARGV[4] and ARGV[4] ~= '' then
  now = tonumber(ARGV[4])
else
  local t = redis.call('TIME')
  now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
end
local tier, tiers = tonumber(ARGV[2]), tonumber(ARGV[3])
local units = {s = 1000, min = 60000, h = 3600000, day = 86400000}
local wait, updates, keep = 0, {}, 0
for count, unit, burst in string.gmatch(spec, '(%d+)/(%a+)@(%d+)') do
  local period = units[unit]
  if not period then return redis.error_reply('bad budget unit ' .. unit .. ' in ' .. spec) end
  local interval = period / tonumber(count)
  local tolerance = (tonumber(burst) - 1) * interval * (tiers - tier) / tiers
  local field = count .. '/' .. unit .. '@' .. burst
  local tat = tonumber(redis.call('HGET', KEYS[2], field) or now)
  if tat < now then tat = now end
  local allow_at = tat - tolerance
  if now < allow_at then
    if allow_at - now > wait then wait = allow_at - now end
  else
    updates[#updates + 1] = field
    updates[#updates + 1] = string.format('%.3f', tat + interval)
    if tat + interval - now > keep then keep = tat + interval - now end
  end
end
if wait > 0 then return {0, string.format('%.3f', wait), spec} end
if #updates > 0 then
  redis.call('HSET', KEYS[2], unpack(updates))
  redis.call('PEXPIRE', KEYS[2], math.ceil(keep) + 1000)
end
redis.call('HINCRBY', KEYS[3], tostring(math.floor(now / 1000)), 1)
redis.call('PEXPIRE', KEYS[3], 120000)
return {1, '0', spec}
"""


class RedisBudgets:
    """The group's budgets in Redis, admitted by ``GCRA_LUA`` (see the module docstring)."""

    def __init__(self, client: Any, prefix: str, group: str, refresh_s: float = 1.0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        self.client = client
        self.prefix = prefix
        self.group = group
        self.refresh_s = refresh_s
        self.monotonic = monotonic
        self.script = client.register_script(GCRA_LUA)
        self._limited: set[str] = set()
        self._read_at = -math.inf

    def limited(self) -> set[str]:
        """The channels that have a budget, re-read at most every ``refresh_s`` seconds."""
        now = self.monotonic()
        if now - self._read_at >= self.refresh_s:
            self._limited = {_text(c) for c in
                             self.client.hkeys(keys.budgets(self.prefix, self.group))}
            self._read_at = now
        return self._limited

    def admit(self, channel: str, tier: str, now_ms: float | None = None) -> Admission:
        """See ``Admitter.admit``; ``now_ms`` replaces the Redis clock (tests only).

        A channel without a budget is admitted without running the script (a round trip saved
        per trigger); so a budget set at runtime on a channel that had none applies within
        ``refresh_s``, a change of an existing budget at the next admission.
        """
        if channel not in self.limited():
            return Admission(True)
        admitted, wait, spec = self.script(
            keys=[keys.budgets(self.prefix, self.group),
                  keys.budget_state(self.prefix, self.group, channel),
                  keys.budget_used(self.prefix, self.group, channel)],
            args=[channel, TIERS.index(tier), len(TIERS), "" if now_ms is None else now_ms])
        return Admission(bool(admitted), float(wait), _text(spec))

    def set(self, budgets: Mapping[str, Sequence[Limit]]) -> None:
        """Store channels' limits (others are left as they are)."""
        if budgets:
            self.client.hset(keys.budgets(self.prefix, self.group),
                             mapping={c: budgets_text(limits) for c, limits in budgets.items()})

    def remove(self, channels: Iterable[str]) -> None:
        """Drop channels' budgets: they are no longer limited."""
        channels = list(channels)
        if channels:
            self.client.hdel(keys.budgets(self.prefix, self.group), *channels)

    def get(self) -> dict[str, tuple[Limit, ...]]:
        """The stored budgets by channel."""
        raw = self.client.hgetall(keys.budgets(self.prefix, self.group))
        return {_text(c): parse_limits(_text(v)) for c, v in raw.items()}

    def used(self, channel: str, seconds: Iterable[int]) -> dict[int, int]:
        """Admissions of the whole group on ``channel`` in the given epoch seconds (Redis clock)."""
        seconds = list(seconds)
        if not seconds:
            return {}
        values = self.client.hmget(keys.budget_used(self.prefix, self.group, channel),
                                   [str(s) for s in seconds])
        return {s: int(v or 0) for s, v in zip(seconds, values, strict=True)}

    def utilisation(self, channel: str, limits: Sequence[Limit], window_s: int = 10
                    ) -> float | None:
        """The group's share of the channel's budget over the last ``window_s`` whole seconds.

        Admissions counted by the script / the tightest limit's sustained rate (None: no limit).
        """
        if not limits:
            return None
        now_s = int(self.client.time()[0])
        used = self.used(channel, range(now_s - window_s, now_s))
        rate = min(limit.per_second for limit in limits)
        return sum(used.values()) / (rate * window_s)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
