"""Durations as definitions write them (``500ms``, ``90s``, ``30m``, ``24h``, ``7d``).

Inputs: duration text; outputs: milliseconds, and a short human form of milliseconds for
explanations. State: none.
"""

from __future__ import annotations

import re

_DURATION_UNITS = {"ms": 1, "s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_DURATION_RE = re.compile(r"^([0-9]+)(ms|s|m|h|d)$")
#: the longest duration a definition may give: an event time plus it must still be a timestamp
#: (an Avro long of milliseconds) with centuries to spare
MAX_DURATION_MS = 36_500 * 86_400_000


def parse_duration(text: str) -> int:
    """Milliseconds of a duration such as ``500ms``, ``90s``, ``30m``, ``24h`` or ``7d``.

    Args:
        text: A positive whole number followed by one unit: ms, s, m, h or d.

    Returns:
        The duration in milliseconds.

    Raises:
        ValueError: The text is not such a duration, is zero, or is longer than
            ``MAX_DURATION_MS`` (100 years).
    """
    match = _DURATION_RE.match(text.strip()) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"not a duration: {text!r}")
    ms = int(match[1]) * _DURATION_UNITS[match[2]]
    if ms <= 0:
        raise ValueError(f"duration must be positive: {text!r}")
    if ms > MAX_DURATION_MS:
        raise ValueError(f"duration too long: {text!r} is over 36500d (100 years)")
    return ms


def format_duration(ms: int | float) -> str:
    """A short human form of a duration: ``45m``, ``1d 2h``, ``90s`` -> ``1m 30s``, ``500ms``."""
    ms = int(ms)
    if ms < 1000:
        return f"{ms}ms"
    parts = []
    rest = ms
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if rest >= size:
            parts.append(f"{rest // size}{unit}")
            rest %= size
        if len(parts) == 2:
            break
    return " ".join(parts)
