"""The alert rules: promtool checks and unit-tests them; every metric they read is exported.

promtool comes from Debian's ``prometheus`` package; ``infra/bootstrap.sh`` extracts it into
``.venv/bin`` without installing the package (no Prometheus service). Its absence fails these
tests: rules that are never evaluated are the ones that break unnoticed.
"""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from infra.prometheus import metrics
from infra.servers.flink import REPORTER_EXCLUDES

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "infra" / "prometheus" / "rules.yml"
RULES_TEST = ROOT / "infra" / "prometheus" / "rules_test.yml"


def promtool() -> str:
    """$PROMTOOL, promtool on PATH, or the one bootstrap.sh put beside the venv's python."""
    candidates = [os.environ.get("PROMTOOL"), shutil.which("promtool"),
                  str(Path(sys.executable).parent / "promtool")]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    pytest.fail("promtool not found ($PROMTOOL, PATH, or next to the venv's python): run "
                "`bash infra/bootstrap.sh`, which extracts it from Debian's prometheus package "
                "into .venv/bin, or `apt-get install prometheus` (then stop its service)")


def run_promtool(*args: str) -> str:
    result = subprocess.run([promtool(), *args], capture_output=True, text=True, timeout=120,
                            cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout + result.stderr


def rule_file():
    return yaml.safe_load(RULES.read_text())


def all_rules():
    return [rule for group in rule_file()["groups"] for rule in group["rules"]]


def test_promtool_accepts_the_rules() -> None:
    assert "SUCCESS" in run_promtool("check", "rules", str(RULES))


def test_promtool_unit_tests_of_the_rules_pass() -> None:
    assert "SUCCESS" in run_promtool("test", "rules", str(RULES_TEST))


def test_every_alert_says_what_to_do_and_has_a_test_that_fires_it() -> None:
    alerts = [rule for rule in all_rules() if "alert" in rule]
    assert len(alerts) >= 10
    tests = yaml.safe_load(RULES_TEST.read_text())["tests"]
    fired = {case["alertname"] for test in tests for case in test.get("alert_rule_test", [])
             if case["exp_alerts"]}
    for alert in alerts:
        name = alert["alert"]
        assert alert["labels"]["severity"] in ("critical", "warning"), name
        assert alert["annotations"]["summary"], name
        assert len(alert["annotations"]["description"]) > 100, name
        assert name in fired, f"{name} has no promtool test that expects it to fire"


def test_every_metric_the_rules_read_is_exported() -> None:
    recorded = {rule["record"] for rule in all_rules() if "record" in rule}
    exported = metrics.exported()
    for rule in all_rules():
        for name in metrics.promql_names(str(rule["expr"])):
            if ":" in name:
                assert name in recorded, f"{rule}: {name} is no recording rule"
            else:
                assert name in exported, f"{rule}: {name} is not exported (metrics.py)"


def test_promql_names_are_the_metrics_not_the_labels_or_functions() -> None:
    expr = ('sum by (job_name, reason) (rate(flink_a{job_name=~"$job_name",x="}"}'
            '[$__rate_interval])) / 1e3 > 0.8 * scalar(nudgeflow:b_ms) and on (job) up == 0')
    assert metrics.promql_names(expr) == {"flink_a", "nudgeflow:b_ms", "up"}


# --- the list of metrics against the code that registers them ---------------------------------

FLINK_CODE = ROOT / "udfs" / "flink"
# metrics.counter("x"), group.distribution("x"), ... (also over a line break)
BY_NAME = re.compile(r'\b(?:metrics|group)\.(?:counter|distribution|gauge|meter)\(\s*"(\w+)"')
LABELLED = re.compile(r'LabelledCounters\([^,]+,\s*"(\w+)",\s*"(\w+)"\)')
LAST_VALUES = re.compile(r'LabelledLastValues\([^,]+,\s*"(\w+)",\s*"(\w+)"\)')
# Histogram(metrics, "x", ...) and LabelledHistograms(metrics, "key", "x", ...)
HISTOGRAM = re.compile(r'\bHistogram\(\s*\w+,\s*"(\w+)"')
LABELLED_HISTOGRAM = re.compile(r'LabelledHistograms\(\s*\w+,\s*"(\w+)",\s*"(\w+)"')


def registered_in_code():
    text = "\n".join(path.read_text() for path in sorted(FLINK_CODE.glob("*.py")))
    histograms = {(name, ()) for name in HISTOGRAM.findall(text)}
    histograms |= {(name, (key,)) for key, name in LABELLED_HISTOGRAM.findall(text)}
    return (set(BY_NAME.findall(text)), set(LABELLED.findall(text)), histograms,
            set(LAST_VALUES.findall(text)))


def test_the_metric_list_is_what_the_flink_functions_register() -> None:
    by_name, labelled, histograms, last_values = registered_in_code()
    listed = set(metrics.ENGINE_METRICS) | set(metrics.CAMPAIGN_STATS_METRICS)
    assert by_name == listed, "udfs/flink registers other metrics than infra/prometheus/" \
        f"metrics.py lists: missing {by_name - listed}, gone {listed - by_name}"
    assert labelled == set(metrics.LABELLED_METRICS)
    assert histograms == set(metrics.HISTOGRAMS)
    assert last_values == set(metrics.LABELLED_LAST_VALUES)
    assert 'add_group("nudgeflow")' in (FLINK_CODE / "campaign_stats.py").read_text()
    assert 'counter(f"journey_{what}")' in (FLINK_CODE / "metrics.py").read_text()


def test_journey_moves_are_the_runners() -> None:
    from udfs.journeys.graph import COUNTS

    assert metrics.JOURNEY_MOVES == COUNTS


def test_the_sender_metric_list_is_what_prometheus_client_serves() -> None:
    from prometheus_client import generate_latest

    from jobs.sender.kpis import Delivery, PrometheusKpis

    kpis = PrometheusKpis(port=0, serve=False)
    kpis.record([Delivery("P0", "SMS", 1_000, 2_000, 1_500)], [("P1", "EMAIL")], {"P0": 1})
    kpis.set_utilisation({"SMS": 0.5})
    served = {line.split("{")[0].split(" ")[0]
              for line in generate_latest(kpis.registry).decode().splitlines()
              if line and not line.startswith("#")}
    assert served == set(metrics.SENDER_METRICS)


def test_exported_names_follow_the_reporters_scopes() -> None:
    exported = metrics.exported()
    assert "flink_taskmanager_job_task_operator_tier_triggers" in exported
    assert "flink_taskmanager_job_task_operator_reason_triggers_suppressed" in exported
    assert "flink_taskmanager_job_task_operator_nudgeflow_campaign_stats_facts" in exported
    assert "flink_taskmanager_job_task_operator_journey_node_journey_sent" in exported
    assert "flink_jobmanager_job_lastCheckpointDuration" in exported
    assert "flink_taskmanager_job_task_operator_tier_le_trigger_latency_ms_bucket" in exported
    assert "flink_taskmanager_job_task_operator_tier_trigger_latency_ms_count" in exported
    assert "flink_taskmanager_job_task_operator_le_user_state_bytes_bucket" in exported
    assert "flink_taskmanager_job_task_operator_pendingRecords" in exported


def excluded_by_reporter_filter(exported_name: str) -> bool:
    """Whether ``REPORTER_EXCLUDES`` leaves ``exported_name`` out of the reporter's page.

    As Flink's ``DefaultMetricFilter``: ``<scopes>:<names>``, each a ``,`` list of globs (``*``
    any characters) matched against the whole logical scope (``taskmanager.job.task.operator``
    and its groups, ``.``-joined) and the metric's own name. The reporter joins the two with
    ``_`` behind ``flink_``, so every split of the exported name at a ``_`` is tried.
    """
    scopes, _, names = REPORTER_EXCLUDES.partition(":")

    def glob(alternatives: str) -> re.Pattern[str]:
        globs = alternatives.split(",")
        return re.compile("|".join(re.escape(g).replace(r"\*", ".*") for g in globs))

    scope_re, name_re = glob(scopes), glob(names or "*")
    body = exported_name.removeprefix("flink_")
    cuts = [i for i, char in enumerate(body) if char == "_"]
    return any(scope_re.fullmatch(body[:i].replace("_", ".")) and name_re.fullmatch(body[i + 1:])
               for i in cuts)


def test_the_reporter_filter_leaves_out_no_metric_the_rules_or_dashboard_read() -> None:
    # the filter does exclude what it names (a wrong glob would exclude nothing, silently)
    assert excluded_by_reporter_filter(
        "flink_taskmanager_job_task_operator_KafkaSourceReader_KafkaConsumer_records_lag_max")
    assert excluded_by_reporter_filter(
        "flink_taskmanager_job_task_Shuffle_Netty_Input_Buffers_inPoolUsage")
    assert excluded_by_reporter_filter(
        "flink_taskmanager_job_task_operator_split_watermark_currentWatermark")
    assert not excluded_by_reporter_filter("flink_taskmanager_job_task_operator_numRecordsIn")
    for name in metrics.exported():
        if name.startswith("flink_"):
            assert not excluded_by_reporter_filter(name), f"{name} is left out by the reporter"
