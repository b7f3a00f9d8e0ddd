"""The Grafana dashboard: valid JSON, every panel queries Prometheus, only exported metrics."""

import json
from pathlib import Path

import yaml

from infra.prometheus import metrics

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "infra" / "grafana" / "nudgeflow.json"
RULES = ROOT / "infra" / "prometheus" / "rules.yml"


def dashboard():
    return json.loads(DASHBOARD.read_text())


def graphs():
    return [panel for panel in dashboard()["panels"] if panel["type"] != "row"]


def test_every_panel_has_a_datasource_and_a_query() -> None:
    assert dashboard()["uid"] == "nudgeflow"
    variables = {v["name"] for v in dashboard()["templating"]["list"]}
    assert {"datasource", "job_name"} <= variables
    for panel in graphs():
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], panel["title"]
        assert all(target["expr"] for target in panel["targets"]), panel["title"]
        assert panel["description"], panel["title"]


def test_ids_are_unique_and_panels_do_not_overlap() -> None:
    panels = dashboard()["panels"]
    assert len({p["id"] for p in panels}) == len(panels)
    cells = set()
    for panel in panels:
        pos = panel["gridPos"]
        assert pos["x"] + pos["w"] <= 24, panel["title"]
        area = {(x, y) for x in range(pos["x"], pos["x"] + pos["w"])
                for y in range(pos["y"], pos["y"] + pos["h"])}
        assert not cells & area, panel["title"]
        cells |= area


def test_every_metric_the_dashboard_queries_is_exported() -> None:
    recorded = {rule["record"] for group in yaml.safe_load(RULES.read_text())["groups"]
                for rule in group["rules"] if "record" in rule}
    exported = metrics.exported()
    # the job variable is Grafana's label_values(metric, label), not PromQL
    variable = dashboard()["templating"]["list"][1]["definition"]
    assert variable == "label_values(flink_jobmanager_job_uptime, job_name)"
    assert "flink_jobmanager_job_uptime" in exported
    for expr in [target["expr"] for panel in graphs() for target in panel["targets"]]:
        names = metrics.promql_names(expr)
        assert names, expr
        for name in names:
            assert name in (recorded if ":" in name else exported), f"{expr}: {name}"


def test_the_dashboard_covers_what_operators_ask() -> None:
    queried = {name for panel in graphs() for target in panel["targets"]
               for name in metrics.promql_names(target["expr"])}
    op = "flink_taskmanager_job_task_operator_"
    engine = ["events_in", "pendingRecords", "tier_le_trigger_latency_ms_bucket", "tier_triggers",
              "campaign_triggers", "reason_triggers_suppressed", "reason_triggers_deferred",
              "segment_enters", "segment_exits", "le_user_state_bytes_bucket",
              "segment_segment_size",
              "reason_events_dead_lettered", "store_retries", "le_membership_write_lag_ms_bucket"]
    for wanted in [*(op + name for name in engine),
                   "flink_jobmanager_job_lastCheckpointDuration",
                   "flink_jobmanager_job_numberOfFailedCheckpoints",
                   "nudgeflow_sender_delivered_on_time_total",
                   "nudgeflow_sender_queue_wait_seconds_bucket",
                   "nudgeflow_sender_budget_utilisation"]:
        assert wanted in queried, wanted
