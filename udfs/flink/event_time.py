"""Event-time assigners of the job's Python-side streams (clicks get theirs in Java, in the source).

- ``EventTimeAssigner``: the ``event_time`` field of an engine input row (user metadata).
- ``NeutralTimeAssigner``: timestamp 0 for control records (definitions), so they never move
  the engine's event time.
"""

from __future__ import annotations

from pyflink.common import Row
from pyflink.common.watermark_strategy import TimestampAssigner


class EventTimeAssigner(TimestampAssigner):
    """Event time of an engine input row (its ``event_time`` field)."""

    def extract_timestamp(self, value: Row, record_timestamp: int) -> int:
        """The row's event time."""
        return int(value[2])


class NeutralTimeAssigner(TimestampAssigner):
    """Timestamp 0 for control records: their watermark never moves the engine's event time."""

    def extract_timestamp(self, value: Row, record_timestamp: int) -> int:
        """Always 0 (the epoch)."""
        return 0
