"""Every metric nudgeflow exports, under the name Prometheus sees: one list for rules and dashboard.

Flink's Prometheus reporter names a metric by its scope and its groups, joined by ``_``:

- a metric of an operator (the engine's ``metrics.counter("events_in")``) is
  ``flink_taskmanager_job_task_operator_events_in``;
- a key-value group (``add_group("tier", "P0")``, as ``LabelledCounters`` makes) adds its key to
  the name and its value as a label: ``flink_taskmanager_job_task_operator_tier_triggers
  {tier="P0"}``; a plain group (``add_group("nudgeflow")``) adds its name only;
- a metric of a job on the JobManager is ``flink_jobmanager_job_<name>`` (checkpoints, uptime).

Counters are exported as gauges without ``_total`` (use ``rate``/``increase`` on them all the
same: they only grow, and reset when a task restarts). PyFlink's distributions are last-value
gauges in thread mode (``MetricDistribution`` is a ``Gauge<Long>``), so the latency and size
figures are ``Histogram``s made of counters instead (``HISTOGRAMS``):
``histogram_quantile(0.99, sum by (le, tier) (rate(<name>_bucket[5m])))`` reads them.

The sender's metrics come from prometheus-client (``jobs/sender/kpis.py``): counters end in
``_total``, the queue-wait histogram has ``_bucket``/``_sum``/``_count``.

``tests/unit/test_prometheus_rules.py`` checks these lists against the code that registers the
metrics, and every name ``rules.yml`` and the dashboard query against ``exported()``.
"""

from __future__ import annotations

import re

OPERATOR_SCOPE = "flink_taskmanager_job_task_operator"
"""The reporter's prefix of a metric registered on an operator (Python metrics included)."""

JOB_SCOPE = "flink_jobmanager_job"
"""The reporter's prefix of a job's metrics on the JobManager."""

JOBMANAGER_SCOPE = "flink_jobmanager"
"""The reporter's prefix of the JobManager's own metrics."""

ENGINE_METRICS = (
    # udfs/flink/user_engine.py: counters and (last-value) distributions, no groups
    "events_in", "events_valid", "engine_events", "clicks_done", "events_duplicate",
    "events_late", "inputs_applied_late", "timers_fired", "rechecks_skipped", "segment_enters",
    "segment_exits", "store_retries", "redis_rebuilds", "membership_write_batches",
    "quiet_releases",
    "definitions_rejected", "outcomes_in", "users_erased", "inputs_dropped_erased",
    "triggers_duplicate",
    # udfs/flink/metrics.py MeasuredScorer (with churn scoring on)
    "churn_scores", "churn_score_permille", "churn_scoring_us",
)
"""Metrics the engine operator registers by name on its own group."""

LABELLED_METRICS = (
    # (group key = the label, metric name): LabelledCounters in user_engine.py and decode.py
    ("tier", "triggers"), ("campaign", "triggers"), ("campaign", "conversions_attributed"),
    ("reason", "triggers_suppressed"), ("reason", "triggers_deferred"),
    ("reason", "events_dead_lettered"), ("currency", "money_unconverted"),
    ("segment", "segment_changes"), ("store", "store_rejected"),
    ("reason", "records_dead_lettered"), ("outcome", "backfill_requests"),
)
"""Counters under a key-value group: exported as ``<key>_<name>`` with the label ``<key>``."""

LABELLED_LAST_VALUES = (
    # (group key = the label, metric name): LabelledLastValues in user_engine.py; last-value
    # gauges (one per subtask, all reading the same store: take the max)
    ("segment", "segment_size"),
)

HISTOGRAMS = (
    # (metric name, label keys): udfs/flink/metrics.py Histogram, registered in user_engine.py
    # and membership_writes.py
    ("trigger_latency_ms", ("tier",)), ("user_state_bytes", ()),
    ("membership_write_lag_ms", ()),
)
"""Histograms of counters: ``<keys>_le_<name>_bucket{le=...}``, ``<keys>_<name>_sum`` and
``<keys>_<name>_count`` (the bucket counters sit in a group ``le``, so its key joins the name)."""

JOURNEY_MOVES = ("entered", "sent", "waiting", "converted", "exited")
"""``JourneyCounters``: ``journey_<move>`` under groups journey=<id>, node=<id>."""

CAMPAIGN_STATS_GROUP = "nudgeflow"
CAMPAIGN_STATS_METRICS = ("campaign_stats_facts", "roi_updates_published",
                          "campaign_stats_write_failures")
"""udfs/flink/campaign_stats.py: counters under the plain group ``nudgeflow``."""

FLINK_OPERATOR_METRICS = (
    # every operator (FLIP-33 / Flink's MetricNames)
    "numRecordsIn", "numRecordsInPerSecond", "numRecordsOut", "numRecordsOutPerSecond",
    "currentInputWatermark", "currentOutputWatermark",
    # KafkaSource readers: records behind the partitions' ends (sum over the reader's splits)
    "pendingRecords", "currentFetchEventTimeLag", "currentEmitEventTimeLag", "sourceIdleTime",
    # (the Kafka clients' own metrics are left out of the page: REPORTER_EXCLUDES in
    # infra/servers/flink.py)
)
"""Flink's and the Kafka connector's metrics of operators the job uses."""

FLINK_JOB_METRICS = (
    "lastCheckpointDuration", "lastCheckpointSize", "lastCheckpointFullSize",
    "numberOfCompletedCheckpoints", "numberOfFailedCheckpoints", "numberOfInProgressCheckpoints",
    "totalNumberOfCheckpoints",
    # ms since the job last switched to RUNNING; 0 while not running, -1 once terminal
    "uptime", "numRestarts",
)
"""Flink's metrics of a job on the JobManager (checkpoint statistics and status)."""

FLINK_JOBMANAGER_METRICS = ("numRunningJobs", "numRegisteredTaskManagers")
"""The JobManager's own metrics."""

SENDER_METRICS = (
    "nudgeflow_sender_delivered_total", "nudgeflow_sender_delivered_created",
    "nudgeflow_sender_delivered_on_time_total", "nudgeflow_sender_delivered_on_time_created",
    "nudgeflow_sender_expired_total", "nudgeflow_sender_expired_created",
    "nudgeflow_sender_deduped_total", "nudgeflow_sender_deduped_created",
    "nudgeflow_sender_queue_wait_seconds_bucket", "nudgeflow_sender_queue_wait_seconds_sum",
    "nudgeflow_sender_queue_wait_seconds_count", "nudgeflow_sender_queue_wait_seconds_created",
    "nudgeflow_sender_budget_utilisation",
)
"""jobs/sender/kpis.py ``PrometheusKpis``, as prometheus-client serves them."""

PROMETHEUS_METRICS = ("up",)
"""Series Prometheus writes itself for every scrape target (1: scraped, 0: not)."""


def operator_metric(name: str, *groups: str) -> str:
    """The exported name of an operator's metric under ``groups`` (keys of key-value groups)."""
    return "_".join([OPERATOR_SCOPE, *groups, name])


def exported() -> frozenset[str]:
    """Every metric name the job, Flink and the sender export (and Prometheus's ``up``)."""
    names = {operator_metric(name) for name in ENGINE_METRICS + FLINK_OPERATOR_METRICS}
    names |= {operator_metric(name, key) for key, name in LABELLED_METRICS + LABELLED_LAST_VALUES}
    for name, keys in HISTOGRAMS:
        names |= {operator_metric(f"{name}_bucket", *keys, "le"),
                  operator_metric(f"{name}_sum", *keys), operator_metric(f"{name}_count", *keys)}
    names |= {operator_metric(f"journey_{move}", "journey", "node") for move in JOURNEY_MOVES}
    names |= {operator_metric(name, CAMPAIGN_STATS_GROUP) for name in CAMPAIGN_STATS_METRICS}
    names |= {f"{JOB_SCOPE}_{name}" for name in FLINK_JOB_METRICS}
    names |= {f"{JOBMANAGER_SCOPE}_{name}" for name in FLINK_JOBMANAGER_METRICS}
    return frozenset(names | set(SENDER_METRICS) | set(PROMETHEUS_METRICS))


# a PromQL expression's parts that hold no metric name: strings (removed first: they may hold
# braces), label matchers, ranges, Grafana variables, the label lists of by/without/on/...
_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"')
_NOT_NAMES = re.compile(r"\{[^}]*\}|\[[^\]]*\]|\$\w+"
                        r"|\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
# an identifier not inside another (so no exponent of 1e3), with a "(" after it if a function
_WORD = re.compile(r"(?<![\w.:])([A-Za-z_:][\w:]*)(\s*\()?")
_KEYWORDS = frozenset({"and", "or", "unless", "bool", "offset", "inf", "nan"})


def promql_names(expr: str) -> set[str]:
    """The metric names (and recording-rule names, with a colon) a PromQL expression reads.

    Not a parser: enough for the rules and dashboard here, which tests check against
    ``exported()`` so that a typo or a renamed metric fails a test instead of a graph.
    """
    words = _WORD.finditer(_NOT_NAMES.sub(" ", _STRINGS.sub('""', expr)))
    return {m[1] for m in words if not m[2] and m[1].lower() not in _KEYWORDS}
