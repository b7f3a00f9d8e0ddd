"""W3C trace context from a click to what it causes (pure: no pyflink, no OpenTelemetry).

Inputs: a click's Kafka header ``traceparent`` (``00-<trace id>-<parent id>-<flags>``, W3C Trace
Context), or none. Outputs: the click's context (``at_ingestion``), and the context its segment
changes and triggers carry in their own ``traceparent`` headers (``engine_context``): the same
trace, with the engine's span as their parent. State: none; the click's context waits with the
click in the user's clock (``udfs.clock.Pending.trace``).

- A click with a valid header keeps its trace and its sampling decision (parent-based).
- A click without one (or with one that is not valid W3C) gets a trace created at ingestion: the
  trace id is a hash of its event id, so the same click replayed is the same trace; it is
  sampled when the trace id falls under ``ratio`` (as OpenTelemetry's ``TraceIdRatioBased``
  decides on the id's low 8 bytes), so every stage decides alike with no coordination.
- The engine's span id is a hash of the trace id and the event id: a replay writes the same
  headers, and a consumer's span that names it as parent finds it in the exported trace.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

#: the Kafka header a click's producer sets and nudgeflow's outputs carry
HEADER = "traceparent"
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_INVALID_TRACE = "0" * 32
_INVALID_SPAN = "0" * 16
_SAMPLED = 0x01


@dataclass(frozen=True)
class TraceContext:
    """One span's context: its trace id and span id (lower-case hex) and whether sampled."""

    trace_id: str
    span_id: str
    sampled: bool

    def traceparent(self) -> str:
        """The W3C ``traceparent`` value naming this span as the parent."""
        return f"00-{self.trace_id}-{self.span_id}-{'01' if self.sampled else '00'}"


def parse(traceparent: str | bytes | None) -> TraceContext | None:
    """The context of a ``traceparent`` value, or None when absent or not valid W3C.

    Valid: version 00, lower-case hex, trace and parent ids not all zeros.
    """
    if traceparent is None:
        return None
    if isinstance(traceparent, bytes):
        try:
            traceparent = traceparent.decode("ascii")
        except UnicodeDecodeError:
            return None
    match = _TRACEPARENT.fullmatch(traceparent.strip())
    if match is None or match[1] == _INVALID_TRACE or match[2] == _INVALID_SPAN:
        return None
    return TraceContext(match[1], match[2], bool(int(match[3], 16) & _SAMPLED))


def _hex_hash(text: str, size: int) -> str:
    return hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=size).hexdigest()


def sampled_by_ratio(trace_id: str, ratio: float) -> bool:
    """Whether a trace created here is sampled: its id's low 8 bytes under ``ratio`` * 2^64."""
    if ratio >= 1.0:
        return True
    if ratio <= 0.0:
        return False
    return int(trace_id[16:], 16) < int(ratio * (1 << 64))


def at_ingestion(traceparent: str | bytes | None, event_id: str, ratio: float) -> TraceContext:
    """A click's context: its producer's, or one created from its event id (see the module)."""
    given = parse(traceparent)
    if given is not None:
        return given
    trace_id = _hex_hash(f"click:{event_id}", 16)
    span_id = _hex_hash(f"ingest:{event_id}", 8)
    return TraceContext(trace_id, span_id, sampled_by_ratio(trace_id, ratio))


def engine_context(click: TraceContext, event_id: str) -> TraceContext:
    """The engine's span for a click: same trace and sampling, a span id of its own."""
    return TraceContext(click.trace_id, _hex_hash(f"engine:{click.trace_id}:{event_id}", 8),
                        click.sampled)
