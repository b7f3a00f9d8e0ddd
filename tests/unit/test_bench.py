"""Tests for the pure parts of jobs.bench.bench: percentiles, sustained rates, py-spy stages,
/proc."""

from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path

import pytest

from jobs.bench import bench

OP = "TwoInputFunctionOperation.process_element1 (pyflink/fn_execution/embedded/operations.py:132)"
ENGINE = "UserEngineFunction.process_element (udfs/flink/user_engine.py:391)"


def _line(*frames: str, count: int) -> str:
    return ";".join(frames) + f" {count}"


def test_percentiles_by_nearest_rank() -> None:
    values = list(range(1, 101))
    assert bench.percentile(values, 0.5) == 50
    assert bench.percentile(values, 0.99) == 99
    assert bench.percentile([], 0.5) is None
    assert bench.latency_figures([5.0, 1.0, 3.0]) == {
        "p50_ms": 3.0, "p95_ms": 5.0, "p99_ms": 5.0, "max_ms": 5.0}


def test_a_steady_latency_is_sustained_a_growing_one_is_not() -> None:
    steady = [(t * 10.0, 40.0 + (t % 3)) for t in range(30)]
    growing = [(t * 10.0, 40.0 + 90.0 * t) for t in range(30)]  # slope 9: 10x the capacity
    assert bench.latency_slope(steady) == pytest.approx(0.0, abs=0.01)
    assert bench.latency_slope(growing) == pytest.approx(9.0)
    assert bench.sustained(steady, 30, 30, offered_rate=1000, capacity=1000)
    assert not bench.sustained(growing, 30, 30, offered_rate=1000, capacity=1000)
    assert not bench.sustained(steady[:20], 30, 20, offered_rate=1000, capacity=1000)
    # a rate beyond what the job drains is not sustained, however flat a short step looked
    assert not bench.sustained(steady, 30, 30, offered_rate=5000, capacity=1000)


def test_the_max_rate_probes_step_down_from_the_drained_capacity() -> None:
    assert bench.max_rate_probes(1_151) == [900, 500, 200]
    assert bench.max_rate_probes(150) == [100]


def test_samples_are_sorted_into_stages_and_other_threads_ignored() -> None:
    lines = [
        _line(OP, ENGINE, "on_event (udfs/engine.py:69)", "_reevaluate (udfs/engine.py:147)",
              "MeasuredScorer.score (udfs/flink/metrics.py:230)", count=30),
        _line(OP, ENGINE, "on_event (udfs/engine.py:69)",
              "evaluate (udfs/segments/conditions.py:804)", count=20),
        _line(OP, ENGINE, "UserEngineFunction._step (udfs/flink/user_engine.py:446)",
              "UserEngineFunction._segment_changes (udfs/flink/user_engine.py:466)", count=15),
        _line(OP, ENGINE, "UserEngineFunction._step (udfs/flink/user_engine.py:446)",
              "UserEngineFunction._store_state (udfs/flink/user_engine.py:420)",
              "encode_state (udfs/features/codec.py:232)", count=5),
        _line(OP, ENGINE, "UserEngineFunction._step (udfs/flink/user_engine.py:446)",
              "step (udfs/engine.py:146)", "_campaigns (udfs/engine.py:187)", count=6),
        _line(OP, ENGINE, "UserEngineFunction._step (udfs/flink/user_engine.py:446)",
              "UserEngineFunction._triggers (udfs/flink/user_engine.py:499)", count=4),
        _line(OP, ENGINE, "UserEngineFunction.process_element (udfs/flink/user_engine.py:258)",
              "decode_click (udfs/intake.py:221)", count=8),
        _line(OP, "RowDataConverter.to_internal (converters.py:105)", count=12),
        _line("Thread._bootstrap (threading.py:1002)",
              "LibevLoop._run_loop (cassandra/io/libevreactor.py:104)", count=500),
        # the membership writer's operator thread: not the engine's
        _line("OneInputFunctionOperation.process_element (pyflink/.../operations.py:98)",
              "MembershipWriteFunction.process_element (udfs/flink/membership_writes.py:9)",
              "CassandraRedisWriter.write_many (udfs/stores/membership.py:445)", count=70),
        "garbage line without count",
    ]
    per_stage, total = bench.classify_samples(lines)
    assert total == 100
    assert per_stage == {"scoring": 30, "engine": 20, "sinks": 15, "state": 5,
                         "arbitration": 10, "decode": 8, "flink": 12}


def test_with_thread_ids_only_the_engines_threads_are_staged_and_the_others_named() -> None:
    """py-spy ``--threads``: the campaign statistics' and the writer's threads run Python too
    (and wait on Redis with --idle); before thread ids they inflated the engine's stages."""
    engine, stats, writer, loop = (f"thread (0x{n}): " for n in ("A1", "B2", "C3", "D4"))
    engine_op = "UserEngineFunction.on_timer (udfs/flink/user_engine.py:471)"
    stats_op = "CampaignStatsFunction.process_element (udfs/flink/campaign_stats.py:69)"
    writer_op = "MembershipWriteFunction.process_element (udfs/flink/membership_writes.py:9)"
    lines = [
        _line(engine + "pemja", OP, engine_op, "on_event (udfs/engine.py:69)",
              "MeasuredScorer.score (udfs/flink/metrics.py:230)", count=30),
        # the engine's thread in PyFlink's code only (no engine frame): still its samples
        _line(engine + "pemja", "FunctionOperation._output_elements (operations.py:57)",
              count=10),
        _line(stats + "pemja", "OneInputFunctionOperation.process_element (operations.py:93)",
              stats_op, "RedisStatsStore.write (udfs/stores/campaign_stats.py:33)", count=44),
        _line(stats + "pemja", "OneInputFunctionOperation.process_element (operations.py:93)",
              count=6),
        _line(writer + "pemja", "OneInputFunctionOperation.process_element (operations.py:93)",
              writer_op, count=7),
        _line(loop + "Thread-3", "Thread._bootstrap (threading.py:1002)",
              "LibevLoop._run_loop (cassandra/io/libevreactor.py:104)", count=500),
    ]
    per_stage, total = bench.classify_samples(lines)
    assert total == 40
    assert per_stage == {"scoring": 30, "flink": 10}
    assert bench.operator_threads(lines) == {"CampaignStatsFunction": 50,
                                             "MembershipWriteFunction": 7}
    # without thread ids the old rule holds, and other threads cannot be named
    untagged = [line.split(": ", 1)[1].split(";", 1)[1] for line in lines]
    assert bench.classify_samples(untagged)[1] == 40 + 44 + 6  # the statistics counted in
    assert bench.operator_threads(untagged) == {}


def test_stage_costs_share_an_events_time_by_samples() -> None:
    per_stage, total = bench.classify_samples([
        _line(OP, ENGINE, "on_event (e.py:1)", count=600),
        _line(OP, "RowDataConverter.to_internal (c.py:1)", count=300)])
    # 10 s at 100 Hz = 1000 samples of which 900 busy; 1,000 events/s = 1,000 µs an event
    costs = bench.stage_costs(per_stage, total, seconds=10, rate_hz=100, events_per_s=1000)
    assert costs["us_per_event"]["engine"] == 600.0
    assert costs["us_per_event"]["flink"] == 300.0
    assert costs["us_per_event"]["idle"] == 100.0
    assert costs["total_us_per_event"] == 1000.0
    assert costs["python_thread_busy"] == 0.9


def test_proc_figures_of_this_process_and_a_gone_one() -> None:
    cpu_s, peak = bench.read_proc(os.getpid())
    assert cpu_s > 0 and peak > 10  # a Python with pytest loaded holds more than 10 MiB
    assert bench.read_proc(2**22 + 12345) is None


def test_the_monitor_accounts_processes_to_roles() -> None:
    monitor = bench.ResourceMonitor(interval_s=0.05)
    monitor.watch(os.getpid(), "tests")
    monitor.watch(None, "nothing")
    before, _ = bench.read_proc(os.getpid())
    monitor.start()
    sum(i * i for i in range(3_000_000))  # some CPU to account
    after, _ = bench.read_proc(os.getpid())
    [entry] = monitor.stop()
    assert entry["name"] == "tests"
    # only the CPU used while watched is counted, not the process's whole life
    assert 0 < entry["cpu_s"] <= after - before + 0.15
    assert entry["peak_rss_mib"] > 10


def test_thread_times_read_the_kernels_run_and_wait_times_of_each_thread() -> None:
    import threading
    import time

    done = threading.Event()

    def spin() -> None:
        while not done.is_set():
            sum(i * i for i in range(1_000))

    spinner = threading.Thread(target=spin, name="spinner")
    spinner.start()
    try:
        before = bench.thread_times(os.getpid())
        time.sleep(0.3)
        after = bench.thread_times(os.getpid())
    finally:
        done.set()
        spinner.join()
    assert spinner.native_id in before and threading.get_native_id() in after
    rows = bench.thread_shares(before, after, 0.3, events_per_s=1_000.0)
    # the spinning thread is the busiest; the kernel's name is the process's (pthread names
    # are not set by Python), so it is summed with the main thread's under one name
    assert rows[0]["on_cpu"] > 0.2 and rows[0]["threads"] >= 2
    assert bench.thread_times(2**22 + 12345) == {}


def test_thread_shares_sum_threads_of_a_name_and_skip_threads_started_meanwhile() -> None:
    s = 1_000_000_000
    before = {1: ("per-user engine", 10 * s, 1 * s), 2: ("C2 CompilerThre", 2 * s, 0),
              3: ("C2 CompilerThre", 1 * s, 0), 4: ("GC Thread#0", 0, 0),
              5: ("old name", 0, 0)}
    after = {1: ("per-user engine", 17 * s + s // 2, 3 * s), 2: ("C2 CompilerThre", 4 * s, s),
             3: ("C2 CompilerThre", 2 * s, 0), 4: ("GC Thread#0", 0, 0),
             5: ("new name", 5 * s, 0),  # an id reused by a new thread: not measured
             6: ("kafka-producer-", 9 * s, 0)}  # started during the span: not measured
    rows = bench.thread_shares(before, after, seconds=10.0, events_per_s=1_000.0)
    assert rows == [
        {"name": "per-user engine", "threads": 1, "on_cpu": 0.75, "waiting_for_cpu": 0.2,
         "cpu_us_per_event": 750.0},
        {"name": "C2 CompilerThre", "threads": 2, "on_cpu": 0.3, "waiting_for_cpu": 0.1,
         "cpu_us_per_event": 300.0},
    ]  # the idle GC thread is left out
    assert len(bench.thread_shares(before, after, 10.0, 1_000.0, top=1)) == 1


def test_the_bottleneck_says_whether_the_engine_thread_is_bound_by_its_cpu() -> None:
    results = {"ceiling": {"events_per_s": 50_000.0}, "goals": {"best_events_per_s": 1_000.0}}
    engine = {"name": "per-user engine", "threads": 1, "on_cpu": 0.76,
              "waiting_for_cpu": 0.19, "cpu_us_per_event": 760.0}
    results["throughput"] = [{"parallelism": 1, "events_per_s": 1_000.0, "threads": [engine]}]
    text = bench.bottleneck(results)
    assert "was on a CPU 76% of the p1 drain and waited for one 19% (760 µs" in text
    assert "bound by its own CPU work" in text and "other processes and threads" in text
    engine.update(on_cpu=0.4, waiting_for_cpu=0.05)
    text = bench.bottleneck(results)
    assert "it slept 55% of the time" in text and "other processes" not in text
    results["throughput"][0]["threads"] = [{**engine, "name": "kafka-producer-"}]
    assert "engine's thread" not in bench.bottleneck(results)
    assert "pure domain code" not in bench.bottleneck(results)
    results["floor"] = {"us_per_click": 540.0, "above_floor_us": 220.0}
    assert ("The pure domain code over the same workload, with no Flink, costs 540 µs of CPU per "
            "event in one Python loop: the job spends 220 µs of the engine's CPU per event "
            "above it.") in bench.bottleneck(results)
    assert "one state value per user" in bench.bottleneck(results)  # 220 µs above it
    results["floor"] = {"us_per_click": 190.0, "above_floor_us": 12.0}
    text = bench.bottleneck(results)
    assert "less work in the domain code itself" in text
    assert "one state value per user" not in text
    results["floor"] = {"us_per_click": 236.0, "above_floor_us": -18.2}
    assert ("the engine's threads used 18 µs per event less than that, so what the job adds "
            "to the domain code is below what these two measurements tell apart"
            ) in bench.bottleneck(results)


def test_a_negative_cost_above_the_floor_is_not_called_met() -> None:
    assert bench.floor_goal_met(12.0) is True
    assert bench.floor_goal_met(0.0) is True
    assert bench.floor_goal_met(30.0) is False
    assert bench.floor_goal_met(-18.2) is None
    assert bench.floor_goal_met(None) is None


def test_the_bottleneck_names_the_largest_stages() -> None:
    results = {
        "ceiling": {"events_per_s": 50_000.0},
        "goals": {"best_events_per_s": 1_000.0},
        "stages": {"us_per_event": {"decode": 40.0, "engine": 300.0, "scoring": 200.0,
                                    "arbitration": 50.0, "sinks": 250.0, "state": 100.0,
                                    "flink": 60.0, "idle": 0.0},
                   "total_us_per_event": 1000.0, "python_thread_busy": 0.98},
    }
    results["throughput"] = [{"parallelism": 1, "events_per_s": 1_000.0},
                             {"parallelism": 2, "events_per_s": 950.0}]
    text = bench.bottleneck(results)
    assert "1,000 events/s, 2.0% of the 50,000" in text
    assert "engine 300 µs, sinks 250 µs, scoring 200 µs" in text
    assert "py-spy found its Python frames in 98% of its samples" in text
    assert "(950 against 1,000 events/s at parallelism 1)" in text
    assert "By kind of code" not in text  # no floor, no perf figures
    results["floor"] = {"us_per_click": 800.0, "above_floor_us": 200.0,
                        "code": {"us_per_event": {"Python interpreter": 790.0, "kernel": 10.0}},
                        "engine_code": {"us_per_event": {"Python interpreter": 900.0,
                                                         "JVM (HotSpot, JIT-compiled Java)": 60.0,
                                                         "kernel": 40.0}}}
    text = bench.bottleneck(results)
    assert ("By kind of code (perf), the engine's threads against the floor: Python interpreter "
            "+110.0 µs, JVM (HotSpot, JIT-compiled Java) +60.0 µs, kernel +30.0 µs.") in text


def test_a_daytime_zone_has_no_quiet_hours_at_the_instants() -> None:
    from datetime import datetime
    from zoneinfo import ZoneInfo

    noon_utc = 1_764_072_000_000  # 2025-11-25 12:00 UTC
    zone = bench.daytime_zone(noon_utc, noon_utc + 3 * 3_600_000)
    hours = [datetime.fromtimestamp(t / 1000, tz=ZoneInfo(zone)).hour
             for t in (noon_utc, noon_utc + 3 * 3_600_000)]
    assert all(10 <= hour < 18 for hour in hours)


@pytest.mark.parametrize("day", ["2026-01-15", "2026-07-15"])  # winter and summer offsets
def test_a_span_of_five_hours_has_a_daytime_zone_at_any_time_of_day(day: str) -> None:
    # the e2e tests ask for spans up to 4 h starting at whatever time CI runs
    from datetime import datetime, timezone

    midnight = int(datetime.fromisoformat(day).replace(tzinfo=timezone.utc).timestamp() * 1000)
    for quarter in range(96):
        start = midnight + quarter * 900_000
        bench.daytime_zone(start, start + 5 * 3_600_000)  # raises when none fits


def test_plans_ask_for_what_the_issue_names() -> None:
    assert bench.FULL.backlog == 1_000_000
    knobs = {point.knob for point in bench.FULL.sweep}
    assert {"execution_mode", "bundle_size", "bundle_time_ms", "buffer_timeout_ms",
            "state_backend", "checkpoint_interval_ms", "parallelism", "delivery"} <= knobs
    # quick mode: a smaller backlog, no sweep, shorter steps (it must stay under 3 minutes)
    assert bench.QUICK.backlog < bench.FULL.backlog and bench.QUICK.sweep == ()
    assert bench.QUICK.step_s < bench.FULL.step_s


def test_the_in_order_delay_is_the_difference_of_the_profile_and_the_defaults() -> None:
    from jobs.bench.bench import in_order_delay
    from jobs.bench.report import format_report, readme_section

    configured = {"bound_ms": 20, "p50_ms": 60.0, "p99_ms": 145.0, "triggers": 100}
    reordered = {"bound_ms": 1000, "p50_ms": 1180.0, "p99_ms": 1420.5, "triggers": 100}
    delay = in_order_delay(configured, reordered)
    assert (delay["extra_p50_ms"], delay["extra_p99_ms"]) == (1120.0, 1275.5)
    assert in_order_delay({"bound_ms": 20}, reordered)["extra_p99_ms"] is None
    text = format_report({"version": 1, "mode": "quick", "in_order_delay": delay})
    assert "In-order application" in text and "defaults (20 ms bound)" in text
    assert "reordered-input profile (1,000 ms bound)" in text
    assert "extra delay of the profile" in text
    page = readme_section({"version": 1, "mode": "quick", "in_order_delay": {
        **delay, "rate": 1000, "profile": "jobs/profiles/reordered-input.yaml"}})
    assert "**In-order application**" in page and "| defaults (20 ms bound) | 60 |" in page
    assert "`jobs/profiles/reordered-input.yaml`" in page
    assert delay["defaults_fell_behind"] is False
    assert "no faster than" not in text + page


def test_a_triggers_latency_splits_at_its_kafka_append_and_its_emission() -> None:
    from jobs.bench.bench import latency_parts, latency_split
    from jobs.bench.report import readme_section

    trigger = {"cause_event_time": 1_000, "ingest_time": 1_004, "emit_time": 1_052}
    assert latency_parts(trigger, 1_060.5) == (4, 48, 8.5)  # parts add up to the whole
    parts = [(1.0, 40.0 + i, 5.0) for i in range(98)] + [(30.0, 400.0, 90.0)] * 2
    split = latency_split(parts)
    assert split["in_job_p50_ms"] == 89.0 and split["in_job_p99_ms"] == 400.0
    assert (split["to_kafka_p99_ms"], split["to_consumer_p99_ms"]) == (30.0, 90.0)
    assert set(latency_split([]).values()) == {None}
    configured = {"bound_ms": 20, "p50_ms": 60.0, "p99_ms": 145.0, "triggers": 100,
                  "split": split}
    page = readme_section({"version": 1, "mode": "quick", "in_order_delay": {
        "configured": configured,
        "reordered": {"bound_ms": 1000, "p50_ms": 1180.0, "p99_ms": 1420.5, "triggers": 100},
        "extra_p50_ms": 1120.0, "extra_p99_ms": 1275.5, "rate": 1000}})
    assert "| defaults (20 ms bound) | 60 | 145 | 100 | 30 | 89 / 400 | 90 |" in page
    assert "| reordered-input profile (1,000 ms bound) | 1,180 | 1,420 | 100 | – | – / – | – |" \
        in page


def test_a_defaults_run_no_faster_than_the_profile_is_flagged() -> None:
    # one CI run (the probe's sides the other way round then): the faster-bound run fell 1.7 s
    # behind while the other did not
    from jobs.bench.bench import in_order_delay
    from jobs.bench.report import format_report, readme_section

    configured = {"bound_ms": 20, "p50_ms": 1693.2, "p99_ms": 2039.5, "triggers": 500,
                  "engine_histogram": {"p50_ms": 1696.6}}
    reordered = {"bound_ms": 1000, "p50_ms": 1379.0, "p99_ms": 1555.0, "triggers": 500}
    delay = in_order_delay(configured, reordered)
    assert delay["extra_p50_ms"] == -314.2 and delay["defaults_fell_behind"] is True
    for shown in (format_report({"version": 1, "mode": "quick", "in_order_delay": delay}),
                  readme_section({"version": 1, "mode": "quick", "in_order_delay": delay})):
        assert ("the defaults were no faster than the reordered-input profile in this run (p50 "
                "1,693 against 1,379 ms; the engine's own histogram: 1,697 ms)") in shown
    # equal medians are no evidence for the defaults either; a missing figure is not a warning
    assert in_order_delay({**configured, "p50_ms": 1379.0}, reordered)["defaults_fell_behind"]
    assert in_order_delay({"bound_ms": 20}, reordered)["defaults_fell_behind"] is False


def test_the_defaults_are_live_and_the_reordered_input_profile_trades_latency_for_order() -> None:
    from jobs.config import REORDERED_INPUT_PROFILE, NudgeflowConfig, load_config

    profile, defaults = load_config(REORDERED_INPUT_PROFILE, env={}), NudgeflowConfig()
    assert (defaults.max_out_of_orderness_ms, defaults.watermark_interval_ms) == (20, 10)
    assert defaults.trigger_path_buffer_timeout_ms == 5
    # backlogs and replays still hand a session's clicks on together (ClickWatermarks)
    assert defaults.catch_up_watermark_interval_ms == 200
    assert profile.max_out_of_orderness_ms == 1_000 and profile.watermark_interval_ms == 200
    assert profile.delivery_guarantee == defaults.delivery_guarantee  # only event time changes


ENGINE = "per_user_engine:_features,_churn,_segments,_campaigns"  # as the reporter writes it


def _series(name, job, operator, subtask, value):
    return (f'flink_taskmanager_job_task_operator_{name}{{job_name="{job}",'
            f'operator_name="{operator}",subtask_index="{subtask}",}} {value}')


PAGE = "\n".join([
    "# TYPE flink_taskmanager_job_task_operator_numRecordsIn gauge",
    _series("numRecordsIn", "nudgeflow_bench_ab12", ENGINE, 0, "1200.0"),
    _series("numRecordsIn", "nudgeflow_bench_ab12", ENGINE, 1, "34.0"),
    _series("numRecordsIn", "nudgeflow_bench_ab12", "decode_and_validate_clicks", 0, "99999.0"),
    _series("numRecordsIn", "nudgeflow_bench_zz99", ENGINE, 0, "777.0"),
    _series("numRecordsOut", "nudgeflow_bench_ab12", ENGINE, 0, "5.0"),
    _series("currentOutputWatermark", "nudgeflow_bench_ab12", ENGINE, 0, "1.700000009E12"),
    _series("currentOutputWatermark", "nudgeflow_bench_ab12", ENGINE, 1, "1.7E12"),
])


def test_engine_metrics_are_the_engines_subtasks_of_one_job_combined() -> None:
    from jobs import names

    def read(text, job, metric="numRecordsIn", combine=sum):
        return bench.engine_metric(text, job, names.USER_ENGINE_NAME, metric, combine)

    assert read(PAGE, "nudgeflow-bench-ab12") == 1234
    assert read(PAGE, "nudgeflow-bench-zz99") == 777
    assert read(PAGE, "nudgeflow-bench-none") is None
    assert read("", "nudgeflow-bench-ab12") is None
    assert read(PAGE, "nudgeflow-bench-ab12", "currentOutputWatermark", min) == 1_700_000_000_000
    assert read(PAGE, "nudgeflow-bench-ab12", "currentOutputWatermark", max) == 1_700_000_009_000


def test_figures_above_the_ceiling_or_beyond_linear_scaling_are_refused() -> None:
    p1 = {"label": "p1", "parallelism": 1, "events_per_s": 1_000.0}
    assert bench.implausible([p1, {"label": "p2", "parallelism": 2, "events_per_s": 1_900.0}],
                             50_000, 2) == []
    # the quick bench once reported p2 = 23,524 events/s against p1 = 699 on 2 cores
    too_good = {"label": "p2", "parallelism": 2, "events_per_s": 23_524.0}
    [problem] = bench.implausible([{**p1, "events_per_s": 699.0}, too_good], 68_000, 2)
    assert "parallelism 2" in problem and "2x parallelism 1" in problem
    # on one core, parallelism 2 cannot be faster than parallelism 1 at all
    assert bench.implausible([p1, {"label": "p2", "parallelism": 2, "events_per_s": 1_100.0}],
                             50_000, 1)
    [above] = bench.implausible([{**p1, "events_per_s": 60_000.0}], 50_000, 2)
    assert "above the ceiling" in above


def test_compare_takes_named_checkouts_only(tmp_path, capsys) -> None:
    from jobs.bench import compare

    for spec in (f"before={tmp_path}", str(tmp_path), "=."):
        with pytest.raises(SystemExit):
            compare.main([spec])
        assert "expected NAME=DIR" in capsys.readouterr().err


def test_a_comparison_warms_up_first_then_drains_abba() -> None:
    from jobs.bench.compare import drain_order

    assert drain_order(["a", "b"], 2, 1) == [
        ("a", "warm-up 1"), ("a", "round 1"), ("b", "round 1"), ("b", "round 2"),
        ("a", "round 2")]
    assert drain_order(["a", "b"], 1, 3) == [
        ("a", "warm-up 1"), ("b", "warm-up 2"), ("a", "warm-up 3"), ("a", "round 1"),
        ("b", "round 1")]
    assert drain_order(["a"], 2, 0) == [("a", "round 1"), ("a", "round 2")]


def test_a_warm_up_drain_is_reported_but_never_counted(tmp_path, monkeypatch) -> None:
    from jobs.bench import compare

    drained: list[str] = []
    rates = iter([100.0, 1_000.0, 2_000.0, 3_000.0, 4_000.0])

    class FakeBench:
        def __init__(self, build, out) -> None:
            self.name = build.name

        def load_backlog(self, cfg, events, users) -> None:
            pass

        def drain(self, cfg, flags, label, code_profile=False):
            assert code_profile is False  # perf only when asked for (--perf)
            drained.append(label)
            return {"events_per_s": next(rates), "timed_records": 10, "seconds": 1.0}

    monkeypatch.setattr(compare.Build, "prepare", classmethod(
        lambda cls, name, root, out, extra=(): cls(name, root, out, sys.executable,
                                                 tuple(extra), {})))
    monkeypatch.setattr(compare, "BuildBench", FakeBench)
    monkeypatch.setattr(compare, "fresh_config", lambda base=None: object())
    result = compare.compare([("a", tmp_path), ("b", tmp_path)], 2, 100, 10, 1, tmp_path,
                             say=lambda _: None, warmup=1)
    assert drained == ["a p1 warm-up 1", "a p1 round 1", "b p1 round 1", "b p1 round 2",
                       "a p1 round 2"]
    assert result["warmup"] == [{"build": "a", "events_per_s": 100.0}]
    assert result["results"]["a"] == {"runs": [1_000.0, 4_000.0],
                                      "median_events_per_s": 2_500.0}
    assert result["results"]["b"]["runs"] == [2_000.0, 3_000.0]


def test_compare_refuses_a_negative_warm_up(tmp_path, capsys) -> None:
    from jobs.bench import compare

    (tmp_path / "jobs").mkdir()
    (tmp_path / "jobs" / "job.py").write_text("")
    with pytest.raises(SystemExit):
        compare.main([f"a={tmp_path}", "--warmup", "-1"])
    assert "no negative number of warm-ups" in capsys.readouterr().err


def test_a_compared_build_starts_its_jobs_from_its_own_checkout(tmp_path) -> None:
    from jobs.bench.compare import Build, BuildBench

    build = Build("before", tmp_path / "old", tmp_path / "home", "/old/.venv/bin/python",
                  ("--jars", "file:///old.jar"), {"NUDGEFLOW_HOME": str(tmp_path / "home")})
    python, flags, cwd, env, label = BuildBench(build, tmp_path)._launch(None)
    assert (python, flags, cwd, env, label) == (
        "/old/.venv/bin/python", ["--jars", "file:///old.jar"], tmp_path / "old", build.env,
        "before")


def test_a_compared_build_runs_with_its_checkouts_own_virtualenv(tmp_path) -> None:
    from jobs.bench.compare import interpreter

    assert interpreter(tmp_path) == sys.executable  # none of its own: this process's
    own = tmp_path / ".venv" / "bin" / "python"
    own.parent.mkdir(parents=True)
    own.write_text("")
    assert interpreter(tmp_path) == str(own)


def test_the_newest_completed_checkpoint_is_measured(tmp_path) -> None:
    assert bench.newest_checkpoint(tmp_path) is None
    for number, files in ((9, {"_metadata": 10, "state-a": 100}),
                          (10, {"_metadata": 20, "state-a": 300, "state-b": 5}),
                          (11, {"state-a": 999})):  # still being written: no _metadata yet
        folder = tmp_path / "job-1" / f"chk-{number}"
        folder.mkdir(parents=True)
        for name, size in files.items():
            (folder / name).write_bytes(b"x" * size)
    (tmp_path / "job-1" / "shared").mkdir()
    number, folder = bench.newest_checkpoint(tmp_path)
    assert number == 10 and folder.name == "chk-10"
    assert bench.checkpoint_bytes(folder) == 325
    # a checkpoint subsumed (deleted by Flink) while it was measured
    assert bench.checkpoint_bytes(tmp_path / "job-1" / "chk-8") is None


def test_the_cost_above_the_floor_is_the_engine_threads_cpu_less_the_floor() -> None:
    floor = {"clicks": 100, "us_per_click": 200.0}
    p1 = {"parallelism": 1, "threads": [
        {"name": "per-user engine", "threads": 2, "cpu_us_per_event": 231.5},
        {"name": "C2 CompilerThre", "threads": 1, "cpu_us_per_event": 80.0}]}
    assert bench.above_floor(p1, floor) == {**floor, "engine_cpu_us_per_event": 231.5,
                                            "above_floor_us": 31.5}
    gone = bench.above_floor({"parallelism": 1, "threads": [p1["threads"][1]]}, floor)
    assert gone["engine_cpu_us_per_event"] is None and gone["above_floor_us"] is None
    assert bench.above_floor({}, floor)["above_floor_us"] is None
    # the profiled drain, which the bench passes, is not a throughput row (no parallelism key)
    profiled = {"label": "p1 at-least-once, profiled", "threads": p1["threads"]}
    assert bench.above_floor(profiled, floor)["above_floor_us"] == 31.5


def test_the_floor_plays_the_backlogs_whole_workload(tmp_path, monkeypatch) -> None:
    """A cut workload fires fewer timers per click: the floor plays every click and user of
    the backlog, one timed pass above FLOOR_ONE_PASS_CLICKS, three below."""
    from jobs.bench import domain
    from jobs.config import load_config

    calls = []
    monkeypatch.setattr(domain, "floor", lambda *args, **kw: calls.append((args, kw)) or {
        "clicks": args[0], "us_per_click": 150.0})
    runner = bench.Bench(bench.QUICK, tmp_path, say=lambda _: None)
    runner.backlog_start_ms = 1_700_000_000_000
    p1 = {"parallelism": 1, "events_per_s": 3_000.0}
    for backlog, users, passes in ((500_000, 50_000, 1), (12_000, 1_000, 3)):
        plan = dataclasses.replace(bench.QUICK, backlog=backlog, users=users)
        runner._floor(p1, plan)
        (args, kw) = calls[-1]
        assert args == (backlog, users)
        assert kw["passes"] == passes and kw["watermark_every"] == 600
        assert kw["start_ms"] == 1_700_000_000_000 and kw["seed"] == 7
        assert kw["decoded_users"] == load_config(env={}).decoded_state_users


def test_perf_samples_are_told_apart_by_the_code_they_ran() -> None:
    lines = [
        "     7ff5c8795db0 (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)",
        "     7ff5c8795db1 (/root/.pyenv/versions/3.11.7/lib/libpython3.11.so.1.0)",
        "           c2a3d (/x/site-packages/numpy/core/_multiarray_umath.cpython-311-x86_64"
        "-linux-gnu.so)",
        "     8babcc (/usr/lib/jvm/java-17-openjdk-amd64/lib/server/libjvm.so)",
        "     7ff5ada6ac80 (/tmp/perf-5460.map)",
        " ffffffff82242f24 ([kernel.kallsyms])",
        "     16d86a (/usr/lib/x86_64-linux-gnu/libc.so.6)",
        "     16d86b (/opt/something/else.so)",
        "",  # a blank line between samples, and a line that is no sample
        "perf: some warning",
    ]
    counts = bench.code_samples(lines)
    assert counts == {"Python interpreter": 2, "Python extension modules": 1,
                      "JVM (HotSpot, JIT-compiled Java)": 2, "kernel": 1, "C library": 1,
                      "other": 1}
    costs = bench.code_costs(dict(counts), 200.0)
    assert costs["samples"] == 8 and list(costs["shares"])[0] == "Python interpreter"
    assert costs["us_per_event"]["Python interpreter"] == 50.0
    assert sum(costs["us_per_event"].values()) == pytest.approx(200.0, abs=0.1)
    assert bench.code_costs({}, 200.0) == {"samples": 0, "shares": {}, "us_per_event": {}}
    assert bench.code_costs(dict(counts), None)["us_per_event"] is None


def test_the_cost_above_the_floor_is_split_by_code_when_both_sides_were_sampled() -> None:
    floor = {"clicks": 100, "us_per_click": 100.0,
             "code": {"samples": {"Python interpreter": 9, "C library": 1}}}
    p1 = {"parallelism": 1, "code": {"samples": {"Python interpreter": 3, "kernel": 1}},
          "threads": [{"name": "per-user engine", "threads": 1, "cpu_us_per_event": 160.0}]}
    out = bench.above_floor(p1, floor)
    assert out["code"]["us_per_event"] == {"Python interpreter": 90.0, "C library": 10.0}
    assert out["engine_code"]["us_per_event"] == {"Python interpreter": 120.0, "kernel": 40.0}
    missing = bench.above_floor({**p1, "code": {"error": "perf is not installed"}}, floor)
    assert missing["engine_code"] == {"error": "perf is not installed"}


def test_a_code_profile_without_perf_says_so(tmp_path, monkeypatch) -> None:
    import shutil

    monkeypatch.setattr(shutil, "which", lambda _: None)
    assert bench.CodeProfile([1], tmp_path / "x").stop() == {
        "error": "perf is not installed (Debian: linux-perf)"}


def test_a_compared_drain_prints_its_engine_cpu_by_kind_of_code() -> None:
    from jobs.bench.compare import code_line

    assert code_line({"events_per_s": 1.0}) is None  # not asked for
    assert code_line({"code": {"error": "perf is not installed"}}) == (
        "by kind of code: unavailable (perf is not installed)")
    sampled = {"code": {"samples": {"Python interpreter": 3, "kernel": 1}}}
    assert code_line(sampled) == "by kind of code: Python interpreter 75.0%, kernel 25.0%"
    sampled["threads"] = [{"name": "per-user engine", "threads": 2, "cpu_us_per_event": 200.0}]
    assert code_line(sampled) == (
        "by kind of code, µs CPU/event: Python interpreter 150.0, kernel 50.0")


def test_the_p1_figure_is_the_median_of_its_configurations_drains() -> None:
    p1 = {"label": "p1 at-least-once", "events_per_s": 6000.0, "fraction_of_ceiling": 0.02}
    bench.p1_median(p1, [7000.0, 6500.0], ceiling=260_000.0)
    assert p1["events_per_s"] == 6500.0  # the median, not the first drain nor the best
    assert p1["drains_events_per_s"] == [6000.0, 7000.0, 6500.0]
    assert p1["first_drain_events_per_s"] == 6000.0
    assert p1["fraction_of_ceiling"] == round(6500.0 / 260_000.0, 4)
    assert p1["label"] == "p1 at-least-once (median of 3 drains)"
    two = {"label": "p1 at-least-once", "events_per_s": 1000.0}
    bench.p1_median(two, [2000.0], ceiling=10_000.0)
    assert two["events_per_s"] == 1500.0  # the quick run's two drains: their mean
    alone = {"label": "p1 at-least-once", "events_per_s": 1000.0}
    bench.p1_median(alone, [], ceiling=10_000.0)
    assert alone["events_per_s"] == 1000.0 and alone["label"] == "p1 at-least-once"


def test_compare_without_the_stack_says_to_start_it(tmp_path, capsys, monkeypatch) -> None:
    from kafka.errors import KafkaTimeoutError

    from jobs.bench import compare

    def no_kafka(*args, **kwargs):
        raise KafkaTimeoutError("Unable to bootstrap from ['127.0.0.1:9092']")

    monkeypatch.setattr(compare, "compare", no_kafka)
    monkeypatch.setattr(compare, "delete_run_topics", lambda: None)
    checkout = Path(__file__).resolve().parents[2]
    assert compare.main([f"a={checkout}", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "Kafka did not answer" in err and "`nudgeflow stack up`" in err
    assert not (tmp_path / "compare.json").exists()


def test_the_machine_says_how_its_python_was_optimized() -> None:
    assert bench.python_build("'--enable-shared' '--enable-optimizations' '--with-lto'") == (
        "PGO+LTO")
    assert bench.python_build("'--enable-optimizations'") == "PGO"
    assert bench.python_build("'--prefix=/root/.pyenv/versions/3.11.7' '--enable-shared'") == (
        "no PGO/LTO")
    assert bench.machine()["python_build"] == bench.python_build()


class _RecordingProducer:
    """What ``Bench._send`` produced, in order (a stand-in for the librdkafka producer)."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, bytes]] = []

    def produce(self, topic: str, key: bytes, value: bytes) -> None:
        self.sent.append((topic, value))

    def flush(self, timeout: float) -> int:
        return 0


def test_a_latency_step_goes_on_past_its_last_timed_click(tmp_path) -> None:
    """Live traffic at a steady rate does not stop: a step's tail keeps clicks coming after its
    last timed one (else that click waits for the ticker to move event time past it), and
    nothing in the tail is a buyer's or carries the step's prefix, so none of it is timed."""
    runner = bench.Bench(bench.QUICK, tmp_path, say=lambda _: None)
    runner.step_tail_s = 0.05
    producer = _RecordingProducer()
    buyers = [f"b{i}" for i in range(10)]
    started = time.monotonic()
    runner._send(producer, "clicks", "r1000-x-", buyers, rate=1000, count=100)
    whole_s = time.monotonic() - started
    events = [runner.codec.decode(value, expect="ClickEvent") for _, value in producer.sent]
    assert len(events) == 100 + 50
    timed, tail = events[:100], events[100:]
    assert all(e["event_id"].startswith("r1000-x-") for e in timed)
    assert sum(e["event_type"] == "ADD_TO_CART" for e in timed) == 10 and buyers == []
    assert all(not e["event_id"].startswith("r1000-x-") and e["event_type"] == "PAGE_VIEW"
               for e in tail)
    # the step's send time is its own clicks' (paced: the tail's first is due at 0.1 s), not
    # the tail's
    assert 0.099 <= runner.last_send_s < whole_s
    assert runner.last_unsent == 0

    runner.step_tail_s = 0.0  # no tail: the step's clicks only
    producer = _RecordingProducer()
    runner._send(producer, "clicks", "r1000-y-", [], rate=1000, count=20)
    assert len(producer.sent) == 20
