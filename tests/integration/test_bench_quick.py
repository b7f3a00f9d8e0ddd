"""`nudgeflow bench --quick` on the real stack: it runs, prints the report, and its JSON and plot
hold every figure the benchmark promises (throughput at p1 and p2 against the ceiling, latency
at every offered rate in both delivery modes, cost per stage, resources)."""

import json
import statistics
import subprocess
import sys
import time

import pytest

from jobs.bench import bench

pytestmark = pytest.mark.integration

PERCENTILES = ("p50_ms", "p95_ms", "p99_ms")
STAGES = {"decode", "engine", "scoring", "arbitration", "sinks", "state", "flink", "idle"}


# about 390 s on a quiet 2-core machine; a slow one (CPU stolen by its host) took just over
# 600 s: this times out a hung bench, not a slow one
@pytest.mark.timeout(1500)
def test_quick_bench_reports_every_figure(local_stack, tmp_path):
    run = subprocess.run([sys.executable, "-m", "jobs.bench.bench", "--quick",
                          "--out", str(tmp_path)], capture_output=True, text=True, timeout=1400)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    for heading in ("Ceiling:", "Throughput", "Latency (click to trigger)", "Stage costs",
                    "Resources", "Goals:", "Bottleneck:"):
        assert heading in run.stdout

    results = json.loads((tmp_path / "results.json").read_text())
    assert results["mode"] == "quick"
    assert results["workload"]["backlog_events"] == bench.QUICK.backlog
    ceiling = results["ceiling"]["events_per_s"]
    assert ceiling > 0

    throughput = {r["parallelism"]: r for r in results["throughput"]}
    assert set(throughput) == {1, 2}
    for entry in throughput.values():
        assert entry["events"] >= bench.QUICK.backlog
        assert entry["events_per_s"] > 0
        assert entry["fraction_of_ceiling"] == pytest.approx(entry["events_per_s"] / ceiling,
                                                             abs=1e-3)
        # timed on the clicks the engine has done with, over most of the backlog (not on its
        # intake, which runs ahead of applying, nor on committed offsets)
        assert entry["progress"] == "engine clicks done (Prometheus)"
        # (the first reading comes a second or two after the job starts: the 5% mark is
        # often passed by then)
        assert entry["timed_records"] >= 0.5 * bench.QUICK.backlog
    assert bench.implausible(list(throughput.values()), ceiling, 2) == []
    # p1 is the median of its configuration's unprofiled drains (the quick run: the throughput
    # drain and the journeys section's one drain without journeys); the profilers had a drain
    # of their own, reported apart
    p1 = throughput[1]
    assert p1["drains_events_per_s"][0] == p1["first_drain_events_per_s"]
    assert p1["drains_events_per_s"][1:] == results["journeys"]["without"]["runs_events_per_s"]
    assert p1["events_per_s"] == pytest.approx(
        statistics.median(p1["drains_events_per_s"]), abs=0.1)
    assert results["profiled_drain"]["events_per_s"] > 0
    assert "is the median of 2 drains" in run.stdout

    by_mode: dict[str, list[dict]] = {}
    for step in results["latency"]:
        by_mode.setdefault(step["delivery"], []).append(step)
    assert set(by_mode) == {"at-least-once", "exactly-once"}
    for steps in by_mode.values():
        rates = [step["offered_rate"] for step in steps]
        assert set(bench.LADDER_RATES) <= set(rates)
        assert sum(step["max_probe"] for step in steps) >= 1  # the highest sustained rate
        for step in steps:
            # every buyer's trigger arrived and was timed from its click's event time
            assert step["triggers"] == step["expected_triggers"] > 0
            assert 0 < step["p50_ms"] <= step["p95_ms"] <= step["p99_ms"] <= step["max_ms"]
            assert step["segment_changes"] > 0

    # the engine's own trigger-latency histogram, as the stack's Prometheus computes its
    # percentiles, against the bench's measurement from outside. The engine times a part of
    # what the bench times (from the click's Kafka append to the trigger's emission; the
    # bench's span runs from the click's send to its consumer's read), in buckets 15% wide: at
    # no at-least-once step more than the bench's figure but for a bucket. The same part the
    # bench reads from each trigger's own times (its split, "in the job"): the two agree within
    # 20% at every step with enough triggers, in both delivery modes (within 10% in one CI
    # run). The whole click-to-consumer latency is no such measure any more: with the 20 ms
    # bound the ways into and out of Kafka are a third of it at 1,000/s
    compared = []
    for step in results["latency"]:
        engine, split = step["engine_histogram"], step["split"]
        assert engine is not None, "the stack's Prometheus did not answer"
        print(f"{step['delivery']} {step['offered_rate']}/s: bench {[step[k] for k in PERCENTILES]}"
              f", in the job {[split['in_job_p50_ms'], split['in_job_p99_ms']]}, Prometheus "
              f"{[engine[k] for k in PERCENTILES]}")
        if step["triggers"] >= 50:
            if step["delivery"] == "at-least-once":
                for key in PERCENTILES:
                    assert engine[key] <= step[key] * 1.2, (key, step)
            for key in ("p50_ms", "p99_ms"):
                assert engine[key] == pytest.approx(split[f"in_job_{key}"], rel=0.2), (key, step)
            compared.append((step["delivery"], step["offered_rate"]))
    assert ("at-least-once", 1_000) in compared and ("exactly-once", 1_000) in compared, compared

    # the live segment sizes the engines read from Redis reached the stack's Prometheus too
    sizes = bench.prometheus_query(
        bench.PROMETHEUS_URL, "max by (segment) (max_over_time("
        "flink_taskmanager_job_task_operator_segment_segment_size[30m]))", time.time())
    assert sizes and max(float(r["value"][1]) for r in sizes) > 0, sizes

    # in-order application waits for the watermark: both runs are reported with their bounds
    # and the profile's extra delay is their difference; neither waited for the quiet release
    # (3 s), which every probe click did while the probe ran before the job's event time was
    # live. Which run was faster is a figure the bench prints, not asserted here: on this 2-core
    # machine the shorter bound's run has fallen behind the longer's (p50 1,693 against 1,379
    # ms in one CI run), and the report says so when it does
    delay = results["in_order_delay"]
    configured, reordered = delay["configured"], delay["reordered"]
    assert configured["bound_ms"] < reordered["bound_ms"]
    assert configured["triggers"] == reordered["triggers"] > 0
    assert delay["extra_p50_ms"] == pytest.approx(
        reordered["p50_ms"] - configured["p50_ms"], abs=0.1)
    assert delay["defaults_fell_behind"] == (delay["extra_p50_ms"] <= 0)
    assert configured["p50_ms"] < 3_000 and reordered["p50_ms"] < 3_000
    # where the defaults' latency went: each part of it, from the triggers' own times
    split = configured["split"]
    assert 0 <= split["to_kafka_p50_ms"] and 0 <= split["to_consumer_p50_ms"]
    assert split["in_job_p50_ms"] <= configured["p50_ms"]
    if delay["defaults_fell_behind"]:
        assert "no faster than" in run.stdout

    stages = results["stages"]
    assert stages is not None, results.get("stages_error")
    assert set(stages["us_per_event"]) == STAGES
    assert sum(stages["us_per_event"].values()) == pytest.approx(
        stages["total_us_per_event"], rel=0.02)
    if results["engine_modules"].startswith("compiled"):
        # py-spy sees no frame inside the compiled engine: its time goes to the Python frame
        # that called it (the adapter's, "flink"), so only the total is checked
        assert stages["us_per_event"]["flink"] > 0
    else:
        assert stages["us_per_event"]["engine"] > 0

    # the pure domain loop over the same workload, next to the engine threads' CPU per event
    floor = results["floor"]
    assert floor["clicks"] == bench.QUICK.backlog and floor["users"] == bench.QUICK.users
    assert floor["us_per_click"] > 0 and floor["engine_cpu_us_per_event"] > 0
    assert floor["above_floor_us"] == pytest.approx(
        floor["engine_cpu_us_per_event"] - floor["us_per_click"], abs=0.11)
    assert "Domain floor:" in run.stdout and "cost above the domain floor" in run.stdout

    roles = {entry["name"]: entry for entry in results["resources"]}
    for role in ("job JVM (Flink + embedded Python)", "kafka", "cassandra", "redis"):
        assert roles[role]["peak_rss_mib"] > 0
    assert roles["job JVM (Flink + embedded Python)"]["cpu_s"] > 1

    goals = results["goals"]
    assert goals["best_events_per_s"] == max(r["events_per_s"] for r in throughput.values())
    assert results["bottleneck"]
    assert (tmp_path / "results.png").read_bytes()[:4] == b"\x89PNG"
