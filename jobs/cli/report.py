"""``nudgeflow report campaigns``: sends, conversions, holdouts and measured lift per campaign.

Inputs: the per-campaign statistics the job keeps (``udfs.attribution.stats``), read from
Redis (``udfs.stores.campaign_stats``). Outputs: a text table (or JSON) and a PNG: the lift of
each campaign or journey with its 95% interval, and conversions per day, treated against held
out. State: none.

The lift is the treated arm's conversion rate minus the holdout arm's, with Newcombe's hybrid
score interval (``udfs.attribution.lift``); a unit with no holdout (``holdout`` not set) shows
its rates and revenue per send, and no lift. ``ROI in use`` is what the closed loop last
published for the unit (``udfs.attribution.roi``; only with ``roi_feedback`` in the policy).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from udfs.attribution.holdout import CONTROL, HOLDOUT, TREATED
from udfs.attribution.stats import DAY_MS, UnitStats

HEAD = ("campaign / journey", "sends", "conv", "rate", "held out", "conv", "rate",
        "lift (95% interval)", "relative", "revenue/send", "ROI in use", "control")
MISSING = "–"


def _rate(value: float | None) -> str:
    return MISSING if value is None else f"{value * 100:.2f}%"


def _points(value: float | None) -> str:
    """A difference of rates in percentage points."""
    return MISSING if value is None else f"{value * 100:+.2f} pp"


def rows(stats: Mapping[str, UnitStats]) -> list[tuple[str, ...]]:
    """One row per unit, most sends first (ties: by id)."""
    out: list[tuple[str, ...]] = []
    for unit in sorted(stats, key=lambda u: (-stats[u].arm(TREATED).assigned, u)):
        s = stats[unit]
        treated, holdout, control = s.arm(TREATED), s.arm(HOLDOUT), s.arm(CONTROL)
        lift = s.lift()
        interval = (f"{_points(lift.difference)} [{_points(lift.low)}, {_points(lift.high)}]"
                    if lift.enough_data else lift.note or MISSING)
        out.append((unit, f"{treated.assigned:,}", f"{treated.converted:,}", _rate(treated.rate),
                    f"{holdout.assigned:,}", f"{holdout.converted:,}", _rate(holdout.rate),
                    interval,
                    MISSING if lift.relative is None else f"{lift.relative * 100:+.1f}%",
                    MISSING if lift.revenue_per_send is None else f"${lift.revenue_per_send:,.2f}",
                    MISSING if s.roi.in_use is None else f"${s.roi.in_use:,.2f}",
                    f"{control.assigned:,}"))
    return out


def format_table(stats: Mapping[str, UnitStats]) -> str:
    """The report as an aligned text table (a line saying so when there is nothing yet)."""
    if not stats:
        return ("no campaign statistics yet: the job writes them once a campaign is sent or "
                "held out (is the job running with this Redis and key prefix?)\n")
    table = [HEAD, *rows(stats)]
    widths = [max(len(r[i]) for r in table) for i in range(len(HEAD))]
    lines = ["  ".join(cell.ljust(w) if i == 0 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(r, widths, strict=True)))
             for r in table]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines) + "\n"


def to_json(stats: Mapping[str, UnitStats]) -> dict[str, Any]:
    """The report as data: per unit, the arms' counts and the lift."""
    out: dict[str, Any] = {}
    for unit, s in sorted(stats.items()):
        lift = s.lift()
        out[unit] = {
            "arms": {arm: {"assigned": c.assigned, "converted": c.converted,
                           "revenue": round(c.revenue, 2), "rate": c.rate}
                     for arm, c in ((a, s.arm(a)) for a in sorted(s.arms))},
            "lift": {"difference": lift.difference, "low": lift.low, "high": lift.high,
                     "relative": lift.relative, "revenue_per_send": lift.revenue_per_send,
                     "confidence": lift.confidence, "method": lift.method, "note": lift.note},
            "roi_in_use": s.roi.in_use, "roi_version": s.roi.version or None,
            "last_at_ms": s.last_at_ms,
        }
    return out


def _day(day: int) -> datetime:
    """An event-time day number (ms since the epoch // DAY_MS) as its UTC midnight."""
    return datetime.fromtimestamp(day * DAY_MS / 1000, tz=UTC)


def draw(stats: Mapping[str, UnitStats], path: Path, top: int = 8) -> None:
    """The PNG: lift with its interval per unit (left), conversions per day (right)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.dates import DateFormatter, DayLocator

    units = sorted(stats, key=lambda u: (-stats[u].arm(TREATED).assigned, u))[:top]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, max(3.5, 0.5 * len(units) + 2)))
    try:
        measured = [(u, stats[u].lift()) for u in units]
        shown = [(u, lift) for u, lift in measured if lift.enough_data]
        for y, (_unit, lift) in enumerate(shown):
            assert lift.difference is not None and lift.low is not None and lift.high is not None
            left.errorbar(lift.difference * 100, y,
                          xerr=[[(lift.difference - lift.low) * 100],
                                [(lift.high - lift.difference) * 100]],
                          fmt="o", capsize=4, color="tab:blue")
        left.axvline(0, color="grey", linewidth=1)
        left.set_yticks(range(len(shown)), [u for u, _ in shown])
        left.set_xlabel("lift: treated minus held-out conversion rate (percentage points)")
        left.set_title("Lift with 95% interval (Newcombe)")
        if not shown:
            left.text(0.5, 0.5, "no campaign with a holdout has data yet",
                      transform=left.transAxes, ha="center")
        for unit in units[:5]:
            for arm, style in ((TREATED, "-"), (HOLDOUT, "--")):
                days = sorted(d for d, cells in stats[unit].daily.items() if arm in cells)
                if days:
                    right.plot([_day(d) for d in days],
                               [stats[unit].daily[d][arm][1] for d in days], style, marker="o",
                               label=f"{unit} ({arm})")
        right.set_xlabel("event-time day (UTC)")
        right.xaxis.set_major_locator(DayLocator())
        right.xaxis.set_major_formatter(DateFormatter("%b %d"))
        right.set_ylabel("conversions")
        right.set_title("Conversions per day")
        if right.lines:
            right.legend(fontsize=7)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
    finally:
        plt.close(fig)


def campaigns(stats: Mapping[str, UnitStats], out: Path | None, as_json: bool,
              say: Any = print) -> int:
    """Print the report (table or JSON) and, with ``out``, write the PNG."""
    if as_json:
        say(json.dumps(to_json(stats), indent=2))
    else:
        say(format_table(stats), end="")
    if out is not None:
        draw(stats, out)
        if not as_json:
            say(f"picture: {out}")
    return 0


def read_stats(cfg: Any) -> dict[str, UnitStats]:
    """The statistics in ``cfg``'s Redis."""
    from jobs.cli import wiring
    from udfs.stores.campaign_stats import RedisStatsStore

    store = RedisStatsStore(wiring.redis_client(cfg, socket_timeout=10), cfg.redis_key_prefix)
    try:
        return store.read_all()
    finally:
        store.close()


__all__: Sequence[str] = ("campaigns", "draw", "format_table", "read_stats", "rows", "to_json")
