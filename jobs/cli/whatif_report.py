"""What a what-if run's records add up to, and how the two sides compare (pure: no Kafka, no Flink).

``summarize`` turns one side's records (SegmentChanges, TriggerEvents, TriggerDecisions,
DeadLetters, as decoded by ``schemas.codec.Codec.decode_named``) into a ``Side``: audience size
over time per segment, ENTER/EXIT counts, triggers per campaign, channel and tier,
suppressions and deferrals by reason, who lost the arbitration to whom, and sample triggers
with their explanation. Only records whose event time lies in the report's window count
(``Window``); a segment's size also counts the changes before the window (the state the live
job had built from the earlier history). ``render_text``, ``to_json`` and ``plot`` show the two
sides next to each other.

Event time of each record: a SegmentChange's ``event_time``, a TriggerEvent's
``cause_event_time``, a TriggerDecision's ``decided_at``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

#: points of each audience-size and trigger series over the window
SERIES_POINTS = 48


@dataclass(frozen=True)
class Window:
    """The event-time range a report covers, both ends included (epoch ms)."""

    start_ms: int
    end_ms: int

    def __contains__(self, t: object) -> bool:
        return isinstance(t, int) and self.start_ms <= t <= self.end_ms

    def points(self, n: int = SERIES_POINTS) -> list[int]:
        """``n`` evenly spaced times from start to end (both included)."""
        if n < 2 or self.end_ms == self.start_ms:
            return [self.end_ms]
        step = (self.end_ms - self.start_ms) / (n - 1)
        return [round(self.start_ms + i * step) for i in range(n)]


@dataclass
class Side:
    """One side's figures inside the window."""

    enters: Counter[str] = field(default_factory=Counter)  # segment -> ENTERs
    exits: Counter[str] = field(default_factory=Counter)  # segment -> EXITs
    sizes: dict[str, list[int]] = field(default_factory=dict)  # segment -> size at each point
    triggers: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # campaign/ch/tier
    trigger_series: dict[str, list[int]] = field(default_factory=dict)  # campaign -> cumulative
    decisions: Counter[tuple[str, str, str]] = field(default_factory=Counter)  # camp/outcome/rsn
    losses: Counter[tuple[str, str]] = field(default_factory=Counter)  # (loser, winner)
    dead_letters: Counter[str] = field(default_factory=Counter)  # reason code
    samples: list[dict[str, Any]] = field(default_factory=list)

    def triggers_by(self, index: int) -> Counter[str]:
        """Trigger counts by campaign (0), channel (1) or tier (2)."""
        counts: Counter[str] = Counter()
        for key, n in self.triggers.items():
            counts[key[index]] += n
        return counts

    def decisions_by_reason(self) -> Counter[tuple[str, str]]:
        """Decision counts by (outcome, reason code)."""
        counts: Counter[tuple[str, str]] = Counter()
        for (_, outcome, reason), n in self.decisions.items():
            counts[(outcome, reason)] += n
        return counts


def _cumulative(times: list[int], points: list[int]) -> list[int]:
    times = sorted(times)
    return [bisect.bisect_right(times, p) for p in points]


def summarize(records: Iterable[tuple[str, Mapping[str, Any]]], window: Window,
              sample_campaigns: Iterable[str] = (), samples: int = 5) -> Side:
    """Add one side's decoded records up over ``window``.

    ``sample_campaigns``: the campaigns whose triggers are shown as samples (the candidates);
    up to ``samples`` of them, the earliest first.
    """
    side = Side()
    wanted = set(sample_campaigns)
    points = window.points()
    enter_times: dict[str, list[int]] = {}
    exit_times: dict[str, list[int]] = {}
    trigger_times: dict[str, list[int]] = {}
    sample_pool: list[Mapping[str, Any]] = []
    for name, record in records:
        if name == "SegmentChange":
            segment, t = record["segment_id"], record["event_time"]
            entered = record["change"] == "ENTER"
            (enter_times if entered else exit_times).setdefault(segment, []).append(t)
            if t in window:
                (side.enters if entered else side.exits)[segment] += 1
        elif name == "TriggerEvent":
            t = record["cause_event_time"]
            if t not in window:
                continue
            campaign = record["campaign_id"]
            side.triggers[(campaign, record["channel"], record["tier"])] += 1
            trigger_times.setdefault(campaign, []).append(t)
            for rival in record["explanation"]["rivals"]:
                side.losses[(rival["campaign_id"], campaign)] += 1
            if campaign in wanted:
                sample_pool.append(record)
        elif name == "TriggerDecision":
            if record["decided_at"] in window:
                side.decisions[(record["campaign_id"], record["outcome"],
                                record["reason_code"])] += 1
        elif name == "DeadLetter":
            side.dead_letters[record["reason_code"]] += 1
    for segment in sorted(set(enter_times) | set(exit_times)):
        ins = _cumulative(enter_times.get(segment, []), points)
        outs = _cumulative(exit_times.get(segment, []), points)
        side.sizes[segment] = [a - b for a, b in zip(ins, outs, strict=True)]
    side.trigger_series = {c: _cumulative(ts, points) for c, ts in sorted(trigger_times.items())}
    sample_pool.sort(key=lambda r: (r["cause_event_time"], r["trigger_id"]))
    side.samples = [{"user_id": r["user_id"], "campaign_id": r["campaign_id"],
                     "channel": r["channel"], "tier": r["tier"],
                     "at": _iso(r["cause_event_time"]), "trigger_id": r["trigger_id"],
                     "reason": r["explanation"]["reason"]} for r in sample_pool[:samples]]
    return side


@dataclass(frozen=True)
class Comparison:
    """The two sides of a what-if run and what they were run on."""

    window: Window
    live: Side
    candidate: Side
    candidate_ids: tuple[str, ...]  # the definitions tried
    history: str  # where the events came from, for the reader
    notes: tuple[str, ...] = ()

    def lost_to_candidates(self) -> list[tuple[str, str, int, int]]:
        """(loser, winner, times on the candidate side, times live) for candidate winners."""
        ids = set(self.candidate_ids)
        rows = [(loser, winner, n, self.live.losses.get((loser, winner), 0))
                for (loser, winner), n in self.candidate.losses.items() if winner in ids]
        return sorted(rows, key=lambda r: (-r[2], r[0], r[1]))


def _iso(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    cells = [header, *[[f"{c:,}" if isinstance(c, int) else str(c) for c in r] for r in rows]]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = []
    for n, row in enumerate(cells):
        lines.append("  ".join(c.ljust(w) if i == 0 or not c.lstrip("+-")[:1].isdigit()
                               else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths,
                                                                              strict=True))))
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return lines


def _delta(a: int, b: int) -> str:
    return f"{b - a:+,}" if b != a else "0"


def render_text(comparison: Comparison) -> str:
    """The comparison as text tables: live, live + candidate, and the difference."""
    live, cand = comparison.live, comparison.candidate
    w = comparison.window
    out = [f"what-if {', '.join(comparison.candidate_ids)} over {_iso(w.start_ms)} .. "
           f"{_iso(w.end_ms)} ({comparison.history})", *comparison.notes, ""]
    segments = sorted(set(live.sizes) | set(cand.sizes))
    out += ["segments (ENTER/EXIT in the window, size at its end)"]
    rows = []
    for s in segments:
        size_live = live.sizes.get(s, [0])[-1]
        size_cand = cand.sizes.get(s, [0])[-1]
        rows.append([s, live.enters[s], cand.enters[s], live.exits[s], cand.exits[s],
                     size_live, size_cand, _delta(size_live, size_cand)])
    out += _table(["segment", "enter live", "enter cand", "exit live", "exit cand",
                   "size live", "size cand", "size change"], rows) if rows else ["  (none)"]
    out += ["", "triggers by campaign, channel and tier"]
    keys = sorted(set(live.triggers) | set(cand.triggers))
    rows = [[c, ch, tier, live.triggers[(c, ch, tier)], cand.triggers[(c, ch, tier)],
             _delta(live.triggers[(c, ch, tier)], cand.triggers[(c, ch, tier)])]
            for c, ch, tier in keys]
    rows.append(["total", "", "", sum(live.triggers.values()), sum(cand.triggers.values()),
                 _delta(sum(live.triggers.values()), sum(cand.triggers.values()))])
    out += _table(["campaign", "channel", "tier", "live", "cand", "change"], rows)
    out += ["", "suppressed and deferred, by reason"]
    by_live, by_cand = live.decisions_by_reason(), cand.decisions_by_reason()
    rows = [[outcome, reason, by_live[(outcome, reason)], by_cand[(outcome, reason)],
             _delta(by_live[(outcome, reason)], by_cand[(outcome, reason)])]
            for outcome, reason in sorted(set(by_live) | set(by_cand))]
    out += _table(["outcome", "reason", "live", "cand", "change"], rows) if rows \
        else ["  (none)"]
    out += ["", "campaigns that lose the arbitration to a candidate"]
    lost = comparison.lost_to_candidates()
    out += _table(["campaign", "lost to", "times", "live"], [list(r) for r in lost]) if lost \
        else ["  (none)"]
    out += ["", "sample triggers of the candidates"]
    out += [f"  {s['at']}  {s['user_id']}  {s['campaign_id']} {s['channel']} {s['tier']}: "
            f"{s['reason']}" for s in cand.samples] or ["  (none)"]
    if live.dead_letters or cand.dead_letters:
        out += ["", "records the engine refused (dead letters, the same on both sides): "
                + ", ".join(f"{k} {v:,}" for k, v in sorted(cand.dead_letters.items()))]
    return "\n".join(out)


def _side_json(side: Side, points: list[int]) -> dict[str, Any]:
    return {
        "segments": {s: {"enter": side.enters[s], "exit": side.exits[s],
                         "size_at_end": sizes[-1], "peak": max(sizes),
                         "series": [[p, n] for p, n in zip(points, sizes, strict=True)]}
                     for s, sizes in side.sizes.items()},
        "triggers": {"total": sum(side.triggers.values()),
                     "by_campaign": dict(sorted(side.triggers_by(0).items())),
                     "by_channel": dict(sorted(side.triggers_by(1).items())),
                     "by_tier": dict(sorted(side.triggers_by(2).items())),
                     "by_campaign_channel_tier": [[*k, n]
                                                  for k, n in sorted(side.triggers.items())]},
        "decisions": [[*k, n] for k, n in sorted(side.decisions.items())],
        "decisions_by_reason": [[*k, n] for k, n in sorted(side.decisions_by_reason().items())],
        "arbitration_losses": [[*k, n] for k, n in sorted(side.losses.items())],
        "dead_letters": dict(sorted(side.dead_letters.items())),
        "samples": side.samples,
    }


def to_json(comparison: Comparison) -> dict[str, Any]:
    """The comparison as a JSON document (``--json``)."""
    points = comparison.window.points()
    return {
        "window": {"from_ms": comparison.window.start_ms, "to_ms": comparison.window.end_ms,
                   "from": _iso(comparison.window.start_ms),
                   "to": _iso(comparison.window.end_ms)},
        "history": comparison.history,
        "candidates": list(comparison.candidate_ids),
        "notes": list(comparison.notes),
        "live": _side_json(comparison.live, points),
        "candidate": _side_json(comparison.candidate, points),
        "lost_to_candidates": [list(r) for r in comparison.lost_to_candidates()],
    }


def plot(comparison: Comparison, path: Path) -> None:
    """A PNG: audience size and cumulative triggers over the window, live dashed, candidate solid.

    Only what differs between the sides (and the candidates themselves) is drawn.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    live, cand = comparison.live, comparison.candidate
    ids = set(comparison.candidate_ids)
    times = [datetime.fromtimestamp(p / 1000, UTC) for p in comparison.window.points()]
    figure, (top, bottom) = plt.subplots(2, 1, figsize=(10, 7), sharex=True)
    for axis, live_series, cand_series, what in (
            (top, live.sizes, cand.sizes, "audience size"),
            (bottom, live.trigger_series, cand.trigger_series, "triggers (cumulative)")):
        names = sorted(n for n in set(live_series) | set(cand_series)
                       if n in ids or live_series.get(n) != cand_series.get(n))
        for n in names:
            line = None
            if n in cand_series:
                (line,) = axis.plot(times, cand_series[n], label=f"{n} (live + candidate)")
            if n in live_series:
                axis.plot(times, live_series[n], linestyle="--",
                          color=line.get_color() if line else None, label=f"{n} (live)")
        axis.set_ylabel(what)
        if names:
            axis.legend(fontsize="small", loc="upper left")
        else:
            axis.text(0.5, 0.5, "no difference", ha="center", transform=axis.transAxes)
    top.set_title(f"what-if: {', '.join(comparison.candidate_ids)}")
    bottom.set_xlabel("event time (UTC)")
    figure.autofmt_xdate()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
