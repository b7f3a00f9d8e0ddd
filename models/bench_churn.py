"""Microseconds per scored event: ``python -m models.bench_churn [--users N --rounds R]``.

Inputs: the committed model (``models/churn.onnx`` + ``churn.json``) and the users of a small
churn simulation (:mod:`models.churn_labels`), replayed to their state at the observation
cutoff. Prints, per row: :meth:`udfs.churn.ChurnModel.score` one row per call,
:meth:`~udfs.churn.ChurnModel.score_batch` 64 rows per call, and ``vector_list`` + ``score``
together (what the operator adds to an event), with ``vector_list`` alone for reference. Each
figure is the median of ``--rounds`` rounds over every user (best round in brackets).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import onnxruntime as ort

from jobs.workload.workload import generate_users
from models import CHURN_META, CHURN_ONNX
from models.churn_labels import (
    ChurnSpec,
    apply_event,
    kept_events,
    shipped_rates,
    user_plans,
    workload_spec,
)
from udfs.churn import ChurnModel
from udfs.features.spec import FEATURE_NAMES
from udfs.features.state import UserFeatures
from udfs.features.vector import vector_list

BATCH = 64


def _states(spec: ChurnSpec) -> list[tuple[UserFeatures, dict[str, Any] | None]]:
    metas = generate_users(workload_spec(spec))
    plans = user_plans(spec, metas)
    by_id = {m["user_id"]: m for m in metas}
    per_usd = shipped_rates().per_usd
    states: dict[str, UserFeatures | None] = {}
    for ev in kept_events(spec, plans):
        if ev["event_time"] <= spec.cutoff_ms:
            states[ev["user_id"]], _ = apply_event(states.get(ev["user_id"]), ev, per_usd)
    return [(s, by_id[u]) for u, s in sorted(states.items()) if s is not None]


def _per_row(rounds: int, rows: int, work: Callable[[], object]) -> tuple[float, float]:
    """(median, best) microseconds per row of ``work``, which handles ``rows`` rows."""
    work()  # warm up
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter_ns()
        work()
        times.append((time.perf_counter_ns() - t0) / 1_000 / rows)
    return statistics.median(times), min(times)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the benchmark and print the figures."""
    parser = argparse.ArgumentParser(prog="python -m models.bench_churn",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, default=400, help="simulated users (default 400)")
    parser.add_argument("--seed", type=int, default=5, help="simulation seed (default 5)")
    parser.add_argument("--rounds", type=int, default=7, help="timed rounds (default 7)")
    args = parser.parse_args(argv)

    model = ChurnModel.load(CHURN_ONNX, CHURN_META)
    spec = ChurnSpec(users=args.users, seed=args.seed)
    states = _states(spec)
    now = spec.cutoff_ms
    vectors = [vector_list(s, now, m) for s, m in states]
    n = len(vectors)
    batches = [vectors[i:i + BATCH] for i in range(0, n - BATCH + 1, BATCH)]
    score, score_batch = model.score, model.score_batch

    def single() -> None:
        for v in vectors:
            score(v)

    def batched() -> None:
        for b in batches:
            score_batch(b)

    def vector_only() -> None:
        for s, m in states:
            vector_list(s, now, m)

    def vector_and_score() -> None:
        for s, m in states:
            score(vector_list(s, now, m))

    print(f"churn model {model.version} ({CHURN_ONNX.stat().st_size:,} bytes), onnxruntime "
          f"{ort.__version__}, 1 intra-op thread; {n} users' vectors "
          f"({len(FEATURE_NAMES)} features), median of {args.rounds} rounds [best]")
    for label, rows, work in [
        ("score, 1 row per call", n, single),
        (f"score_batch, {BATCH} rows per call", len(batches) * BATCH, batched),
        ("vector_list alone (reference)", n, vector_only),
        ("vector_list + score, per event", n, vector_and_score),
    ]:
        median, best = _per_row(args.rounds, rows, work)
        print(f"  {label:34s} {median:8.1f} µs/row  [{best:.1f}]")
    return 0


if __name__ == "__main__":
    sys.exit(main())
