"""jobs.bench.report: terminal report, JSON, PNG plot and README section of bench results."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from jobs.bench import report as br

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def sample_results() -> dict:
    """Results as the harness writes them: two of everything, a None p50, an unsustained rate."""
    return {
        "version": 1,
        "mode": "quick",
        "command": "nudgeflow bench --quick",
        "started_at": "2026-11-24T06:30:00Z",
        "duration_s": 170.2,
        "machine": {"cpus": 2, "cpu_model": "AMD EPYC 7B13", "memory_gib": 23.5,
                    "os": "Linux 6.1.0-28-cloud-amd64", "python": "3.11.2", "java": "17.0.12",
                    "flink": "2.2.1"},
        "workload": {"users": 2000, "backlog_events": 20000, "seed": 7},
        "ceiling": {"events": 20000, "seconds": 4.1, "events_per_s": 4878.0,
                    "what": "kafka-python consume + produce of the same records, no processing"},
        "throughput": [
            {"label": "p1 at-least-once", "parallelism": 1, "delivery": "at-least-once",
             "execution_mode": "thread", "events": 20000, "seconds": 25.0,
             "events_per_s": 800.0, "fraction_of_ceiling": 0.164},
            {"label": "p2 exactly-once", "parallelism": 2, "delivery": "exactly-once",
             "execution_mode": "process", "events": 20000, "seconds": 16.3,
             "events_per_s": 1226.4, "fraction_of_ceiling": 0.2514},
        ],
        "latency": [
            {"delivery": "at-least-once", "offered_rate": 1000, "achieved_rate": 998.0,
             "sustained": True, "triggers": 240, "segment_changes": 80,
             "p50_ms": 40.0, "p95_ms": 90.0, "p99_ms": 120.0, "max_ms": 150.0},
            {"delivery": "at-least-once", "offered_rate": 5000, "achieved_rate": 1100.0,
             "sustained": False, "triggers": 1310, "segment_changes": 402,
             "p50_ms": None, "p95_ms": 850.0, "p99_ms": 900.0, "max_ms": 1210.0},
            {"delivery": "exactly-once", "offered_rate": 1000, "achieved_rate": 997.0,
             "sustained": True, "triggers": 238, "segment_changes": 79,
             "p50_ms": 5.5, "p95_ms": 640.0, "p99_ms": 1050.0, "max_ms": 1100.0,
             "engine_histogram": {"p50_ms": 4.9, "p95_ms": 300.0, "p99_ms": 420.5}},
        ],
        "stages": {"source": "py-spy samples of the job's Python operator thread",
                   "us_per_event": {"decode": 40.0, "engine": 300.0, "scoring": 200.0,
                                    "arbitration": 100.0, "sinks": 280.0, "state": 120.0,
                                    "flink": 60.0},
                   "total_us_per_event": 1100.0},
        "resources": [
            {"name": "job JVM (Flink + embedded Python)", "cpu_s": 120.0, "cpu_percent": 85.0,
             "peak_rss_mib": 900.0},
            {"name": "Kafka broker", "cpu_s": 31.4, "cpu_percent": 18.0, "peak_rss_mib": 1432.0},
        ],
        "sweep": [
            {"knob": "bundle_size", "value": "100", "events_per_s": 700.0, "p99_ms": 80.0},
            {"knob": "bundle_size", "value": "1000", "events_per_s": 950.0, "p99_ms": None},
        ],
        "goals": {"throughput_events_per_s": 15000, "p99_ms_at_5k": 50,
                  "best_events_per_s": 1226.4, "p99_ms_at_5k_measured": 900.0,
                  "throughput_met": False, "latency_met": False},
        "bottleneck": "The Python operator: per-element state and row conversions dominate.",
    }


def empty_results() -> dict:
    """A run where nothing was measured: empty lists, no profile, no figures at all."""
    results = sample_results()
    for key in ("throughput", "latency", "resources", "sweep"):
        results[key] = []
    results["stages"] = None
    results["stages_error"] = "py-spy is not installed"
    results["ceiling"] = {"events": None, "seconds": None, "events_per_s": None, "what": None}
    results["goals"] = {key: None for key in results["goals"]}
    return results


def line_with(text: str, needle: str) -> str:
    """The one line of ``text`` containing ``needle``."""
    lines = [line for line in text.splitlines() if needle in line]
    assert len(lines) == 1, (needle, lines)
    return lines[0]


# -- format_report ----------------------------------------------------------------------------


def test_report_formats_figures_with_separators_and_labels():
    report = br.format_report(sample_results())
    assert "nudgeflow bench (quick), 2 min 50 s" in report
    assert "2 CPUs (AMD EPYC 7B13), 23.5 GiB memory" in report
    assert "4,878 events/s (20,000 events in 4.1 s)" in line_with(report, "Ceiling:")
    assert line_with(report, "p1 at-least-once").split()[-2:] == ["800", "16.4%"]
    assert line_with(report, "p2 exactly-once").split()[-2:] == ["1,226", "25.1%"]
    assert "1,432" in line_with(report, "Kafka broker")


def test_report_latency_rows_show_sustained_and_missing_percentile():
    report = br.format_report(sample_results())
    unsustained = line_with(report, "1,310").split()
    assert unsustained == ["at-least-once", "5,000", "1,100", "no", "–", "850", "900", "1,210",
                           "1,310", "–"]  # no Prometheus figures
    exactly_once = line_with(report, "  exactly-once  ").split()
    assert exactly_once[3:5] == ["yes", "5.5"]  # sub-10 ms keeps its decimal
    assert exactly_once[-3:] == ["4.9", "/", "420"]  # the engine's histogram: p50 / p99


def test_report_stage_costs_have_share_and_total():
    report = br.format_report(sample_results())
    assert "py-spy samples of the job's Python operator thread" in report
    assert line_with(report, "engine").split() == ["engine", "300", "27.3%"]
    assert line_with(report, "total").split() == ["total", "1,100", "100.0%"]


def test_report_sweep_none_p99_and_goals():
    report = br.format_report(sample_results())
    assert line_with(report, "1000").split() == ["bundle_size", "1000", "950", "–"]
    goals = line_with(report, "Goals:")
    assert "throughput 15,000 events/s: not met (best 1,226 events/s)" in goals
    assert "≤ 50 ms: not met (measured 900 ms)" in goals
    # the highest offered rate each delivery mode held (5,000 did not hold at-least-once)
    assert goals.endswith("highest sustained rate: 1,000/s at-least-once, "
                          "1,000/s exactly-once")
    assert "per-element state and row conversions" in report


def test_report_table_columns_are_aligned():
    report = br.format_report(sample_results())
    block = report.split("Throughput\n")[1].split("\n\n")[0].splitlines()
    assert len({len(line) for line in block}) == 1, block


def test_report_of_empty_results_says_none_and_why_stages_are_missing():
    report = br.format_report(empty_results())
    assert report.count("(none)") == 4  # throughput, latency, resources, sweep
    assert "unavailable: py-spy is not installed" in report
    assert "Ceiling: – events/s (– events in – s)" in report
    assert "throughput – events/s: unknown" in report


def test_report_rejects_other_versions_with_a_hint():
    results = sample_results()
    results["version"] = 2
    with pytest.raises(ValueError, match=r"version 2.*re-run `nudgeflow bench`"):
        br.format_report(results)
    with pytest.raises(ValueError, match="must be a dict"):
        br.format_report([])  # type: ignore[arg-type]


# -- write_json -------------------------------------------------------------------------------


def test_json_round_trips_and_creates_directories(tmp_path: Path):
    path = tmp_path / "out" / "nested" / "bench.json"
    results = sample_results()
    br.write_json(results, path)
    assert json.loads(path.read_text(encoding="utf-8")) == results
    assert path.read_text(encoding="utf-8").startswith('{\n  "version": 1,')


def test_json_refuses_unserialisable_values_without_writing(tmp_path: Path):
    path = tmp_path / "bench.json"
    results = sample_results()
    results["started_at"] = object()
    with pytest.raises(TypeError, match="cannot be written as JSON"):
        br.write_json(results, path)
    assert not path.exists()


# -- draw_plot --------------------------------------------------------------------------------


def test_plot_writes_a_png(tmp_path: Path):
    path = tmp_path / "plots" / "bench.png"
    br.draw_plot(sample_results(), path)
    data = path.read_bytes()
    assert data.startswith(PNG_SIGNATURE)
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (13 * 110, 5 * 110)


def test_plot_of_empty_results_still_writes_a_png(tmp_path: Path):
    path = tmp_path / "empty.png"
    br.draw_plot(empty_results(), path)
    assert path.read_bytes().startswith(PNG_SIGNATURE)


def test_plot_closes_its_figure(tmp_path: Path):
    import matplotlib.pyplot as plt

    before = len(plt.get_fignums())
    br.draw_plot(sample_results(), tmp_path / "a.png")
    assert len(plt.get_fignums()) == before


def test_plot_uses_log_scale_only_for_wide_ranges(tmp_path: Path, monkeypatch):
    import matplotlib.figure

    scales: list[str] = []
    real_savefig = matplotlib.figure.Figure.savefig

    def spy(fig, *args, **kwargs):
        scales.append(fig.axes[0].get_xscale())
        return real_savefig(fig, *args, **kwargs)

    monkeypatch.setattr(matplotlib.figure.Figure, "savefig", spy)
    br.draw_plot(sample_results(), tmp_path / "narrow.png")  # 700..4,878: ratio < 50
    wide = sample_results()
    wide["sweep"][0]["events_per_s"] = 20.0  # 20..4,878: ratio > 50
    br.draw_plot(wide, tmp_path / "wide.png")
    assert scales == ["linear", "log"]


# -- readme_section ---------------------------------------------------------------------------


def test_readme_section_has_markers_machine_and_command():
    section = br.readme_section(sample_results())
    assert section.startswith("<!-- bench:begin -->\n")
    assert section.endswith("\n<!-- bench:end -->")
    assert "2 CPUs (AMD EPYC 7B13), 23.5 GiB memory" in section
    assert "Python 3.11.2, Java 17.0.12, Flink 2.2.1" in section  # a run from before the field
    results = sample_results()
    results["machine"]["python_build"] = "PGO+LTO"
    assert "Python 3.11.2 (PGO+LTO), Java 17.0.12" in br.readme_section(results)
    assert "on 2026-11-24" in section
    assert "`nudgeflow bench --quick`" in section


def test_readme_section_tables():
    section = br.readme_section(sample_results())
    rows = [line for line in section.splitlines() if line.startswith("| ")]
    assert "| ceiling | 4,878 | 100.0% |" in rows
    assert "| p1 at-least-once | 800 | 16.4% |" in rows
    assert "| p2 exactly-once | 1,226 | 25.1% |" in rows
    assert rows.index("| ceiling | 4,878 | 100.0% |") + 1 == rows.index(
        "| p1 at-least-once | 800 | 16.4% |")
    assert "| at-least-once | 5,000 | 1,100 | no | – | 850 | 900 | 1,210 | 1,310 | – |" in rows
    assert "| bundle_size | 1000 | 950 | – |" in rows
    assert "| engine | 300 | 27.3% |" in rows
    assert "| job JVM (Flink + embedded Python) | 120.0 | 85% | 900 |" in rows
    assert "**Goals:** throughput 15,000 events/s: not met" in section
    # every table row has as many cells as its header
    for table in re.split(r"\n\n", section):
        lines = [line for line in table.splitlines() if line.startswith("| ")]
        assert len({line.count(" | ") for line in lines}) <= 1, lines


def test_readme_section_omits_empty_tables():
    section = br.readme_section(empty_results())
    assert "**Latency**" not in section
    assert "**Stage costs**" not in section
    assert "**Resources**" not in section
    assert "**Knob sweep:**" not in section
    assert "| ceiling | – | – |" in section  # the throughput table always has its ceiling row
    assert section.endswith("<!-- bench:end -->")


def test_readme_section_escapes_pipes_in_cells():
    results = sample_results()
    results["throughput"][0]["label"] = "p1 | batched"
    assert "| p1 \\| batched | 800 | 16.4% |" in br.readme_section(results)


# -- replace_readme_section -------------------------------------------------------------------

README = """# nudgeflow

## Performance so far

<!-- bench:begin -->
old figures
| a | b |
<!-- bench:end -->

## Development
"""


def test_replace_swaps_exactly_the_marker_block():
    section = br.readme_section(sample_results())
    updated = br.replace_readme_section(README, section)
    before, after = README.split("<!-- bench:begin -->")[0], README.split("<!-- bench:end -->")[1]
    assert updated == before + section + after
    assert "old figures" not in updated
    assert updated.count("<!-- bench:begin -->") == 1


def test_replace_is_repeatable():
    once = br.replace_readme_section(README, br.readme_section(sample_results()))
    twice = br.replace_readme_section(once, br.readme_section(empty_results()))
    assert twice == br.replace_readme_section(README, br.readme_section(empty_results()))


@pytest.mark.parametrize("readme", [
    "# nudgeflow\n\nno markers here\n",
    "# nudgeflow\n<!-- bench:begin -->\nunterminated\n",
    "# nudgeflow\n<!-- bench:end -->\n<!-- bench:begin -->\n",
    README + README,
])
def test_replace_without_one_marker_pair_raises(readme: str):
    with pytest.raises(ValueError, match="bench:"):
        br.replace_readme_section(readme, br.readme_section(sample_results()))


def test_replace_refuses_a_section_without_markers():
    with pytest.raises(ValueError, match="build it with readme_section"):
        br.replace_readme_section(README, "just text")


# -- journeys ---------------------------------------------------------------------------------


def with_journeys(results: dict) -> dict:
    results["journeys"] = {
        "journeys": ["cart-abandonment-chain", "re-engagement-30d", "welcome-drip"],
        "without": {"events_per_s": 1031.0, "state_bytes_per_user": 3812.4},
        "with": {"events_per_s": 963.0, "state_bytes_per_user": 4101.0},
        "throughput_change": -0.066,
    }
    return results


def test_report_shows_journeys_against_campaigns_only():
    report = br.format_report(with_journeys(sample_results()))
    assert line_with(report, "campaigns only").split()[-2:] == ["1,031", "3,812"]
    assert line_with(report, "+ journeys").split()[-3:] == ["963", "-6.6%", "4,101"]
    assert "welcome-drip" in line_with(report, "+ journeys")
    section = br.readme_section(with_journeys(sample_results()))
    assert "**Journeys**" in section and "| 963 | -6.6% | 4,101 |" in section


def test_report_names_the_other_python_operator_threads_under_the_stages():
    results = sample_results()
    assert "Other Python operator threads" not in br.format_report(results)
    results["stages"]["other_threads_us_per_event"] = {"CampaignStatsFunction": 412.5,
                                                       "MembershipWriteFunction": 88.0}
    line = line_with(br.format_report(results), "Other Python operator threads")
    assert "CampaignStatsFunction 412" in line and "MembershipWriteFunction 88" in line
    assert "CampaignStatsFunction 412" in br.readme_section(results)


def test_report_says_how_many_drains_each_journeys_figure_is():
    results = with_journeys(sample_results())
    assert "(mean of 2)" in line_with(br.format_report(results), "campaigns only")
    for build in ("without", "with"):  # the quick run's AB: one drain each
        results["journeys"][build]["drains"] = 1
    report = br.format_report(results)
    assert "(one drain)" in line_with(report, "campaigns only")
    assert "; one drain)" in line_with(report, "+ journeys")


def test_report_without_a_journeys_section_leaves_it_out():
    assert "Journeys" not in br.format_report(sample_results())
    assert "Journeys" not in br.readme_section(sample_results())


def test_report_lists_the_busiest_jvm_threads_of_the_p1_drain():
    results = sample_results()
    assert "Threads of the job's JVM" not in br.format_report(results)
    [p1] = [r for r in results["throughput"] if r["parallelism"] == 1]
    p1["threads"] = [
        {"name": "per-user engine", "threads": 1, "on_cpu": 0.761, "waiting_for_cpu": 0.19,
         "cpu_us_per_event": 760.4},
        {"name": "C2 CompilerThre", "threads": 2, "on_cpu": 0.31, "waiting_for_cpu": 0.17,
         "cpu_us_per_event": 310.0}]
    line = line_with(br.format_report(results), "Threads of the job's JVM")
    assert ("per-user engine: on a CPU 76.1%, waiting for one 19.0%, 760 µs CPU/event; "
            "C2 CompilerThre (x2): on a CPU 31.0%") in line
    assert "per-user engine: on a CPU 76.1%" in br.readme_section(results)


def test_report_puts_the_domain_floor_next_to_the_engines_cpu():
    results = sample_results()
    assert "Domain floor" not in br.format_report(results)
    assert "above the domain floor" not in br.format_report(results)  # older results
    results["floor"] = {"clicks": 12000, "users": 1000, "inputs": 13000, "passes": 3,
                        "watermark_every": 460,
                        "us_per_input": 200.0, "us_per_click": 216.7,
                        "engine_cpu_us_per_event": 231.0, "above_floor_us": 14.3}
    results["goals"].update(above_floor_goal_us=30.0, above_floor_us=14.3,
                            above_floor_met=True)
    text = br.format_report(results)
    line = line_with(text, "Domain floor")
    assert "216.7 µs of CPU per click" in line and "12,000 clicks of 1,000 users" in line
    assert "the watermark moved every 460 clicks" in line and "decoded as the job" not in line
    results["floor"]["decoded_users"] = 6_000
    assert "6,000 users' decoded state kept" in line_with(br.format_report(results),
                                                          "Domain floor")
    assert "231.0 µs of CPU per event in the profiled p1 drain: 14.3 µs above the floor" in line
    assert "cost above the domain floor < 30 µs/event: met (measured 14.3 µs)" in text
    assert "14.3 µs above the floor" in br.readme_section(results)
    results["goals"].update(above_floor_us=-18.2, above_floor_met=None)
    assert ("cost above the domain floor < 30 µs/event: not resolved (measured -18.2 µs)"
            in br.format_report(results))
    results["floor"].update(engine_cpu_us_per_event=None, above_floor_us=None)
    assert "was not measured" in line_with(br.format_report(results), "Domain floor")


def test_update_docs_puts_the_section_its_json_and_its_plot_of_one_run(tmp_path):
    page = tmp_path / "performance.md"
    page.write_text(README)
    (tmp_path / "bench-results.png").write_bytes(b"an older run's plot")
    (tmp_path / "bench-results.json").write_text("{}")
    plot = tmp_path / "out" / "results.png"
    plot.parent.mkdir()
    plot.write_bytes(b"this run's plot")
    results = sample_results()
    br.update_docs(page, results, plot)
    assert page.read_text() == br.replace_readme_section(README, br.readme_section(results))
    assert json.loads((tmp_path / "bench-results.json").read_text()) == json.loads(
        json.dumps(results))
    assert (tmp_path / "bench-results.png").read_bytes() == b"this run's plot"
    br.update_docs(page, results, tmp_path / "no-plot.png")  # no plot drawn: none of an older run
    assert not (tmp_path / "bench-results.png").exists()


def test_report_splits_the_cost_above_the_floor_by_kind_of_code():
    results = sample_results()
    results["floor"] = {"clicks": 12000, "users": 1000, "inputs": 13000, "passes": 1,
                        "watermark_every": 460, "us_per_input": 140.0, "us_per_click": 150.0,
                        "engine_cpu_us_per_event": 210.0, "above_floor_us": 60.0,
                        "code": {"samples": 900, "shares": {},
                                 "us_per_event": {"Python interpreter": 142.0,
                                                  "C library": 8.0}},
                        "engine_code": {"samples": 800, "shares": {},
                                        "us_per_event": {"Python interpreter": 170.0,
                                                         "JVM (HotSpot, JIT-compiled Java)": 15.0,
                                                         "kernel": 13.0, "C library": 12.0}}}
    text = br.format_report(results)
    assert "(one pass)" in line_with(text, "Domain floor")
    assert "900 of the floor's timed pass, 800 of the engine's threads" in text
    row = line_with(text, "JVM (HotSpot")
    assert "0.0" in row and "15.0" in row
    assert "28.0" in line_with(text, "Python interpreter")
    assert "60.0" in line_with(text, "all kinds")
    section = br.readme_section(results)
    assert "| Python interpreter | 142.0 | 170.0 | 28.0 |" in section
    assert "| all kinds | 150.0 | 210.0 | 60.0 |" in section
    results["floor"]["engine_code"] = {"error": "perf is not installed (Debian: linux-perf)"}
    text = br.format_report(results)
    assert "JVM (HotSpot" not in text
    assert "By kind of code: unavailable (engine: perf is not installed" in text


def test_report_says_how_the_p1_figure_was_made_and_what_the_profiled_drain_read():
    results = sample_results()
    assert br._p1_drains_line(results) is None  # an older run: no drains listed, no line
    results["throughput"][0].update(drains_events_per_s=[7100.0, 6900.5, 7400.0],
                                    events_per_s=7100.0, first_drain_events_per_s=7100.0)
    results["profiled_drain"] = {"events_per_s": 6500.0, "seconds": 70.1}
    for text in (br.format_report(results), br.readme_section(results)):
        line = line_with(text, "is the median of 3 drains")
        assert "P1 at-least-once is the median of 3 drains" in line
        assert "7,100, 6,900, 7,400 events/s" in line  # every drain, the throughput drain first
        assert "the profiled drain (py-spy and perf attached" in line
        assert "read 6,500 events/s and is not counted" in line
