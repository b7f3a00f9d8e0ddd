"""``defs publish --backfill``'s pure parts: the backfill id, the pacing, reading what the job
applies and what the engine answered, the summary."""

from collections import Counter

import pytest

from jobs.cli import backfill


def test_the_id_depends_on_the_definitions_and_versions_only():
    a = backfill.backfill_id({"big-carts": 1, "big-cart-push": 2})
    assert a == backfill.backfill_id({"big-cart-push": 2, "big-carts": 1})
    assert a.startswith("bf-") and len(a) == 19
    assert a != backfill.backfill_id({"big-carts": 2, "big-cart-push": 2})


def test_the_pacer_keeps_the_rate():
    now = [100.0]
    slept = []

    def sleep(seconds):
        slept.append(seconds)
        now[0] += seconds

    pacer = backfill.Pacer(rate=200.0, clock=lambda: now[0], sleep=sleep)
    for _ in range(1000):
        pacer.wait()
    # the 1,000th item is due 999/200 s after the first: never earlier
    assert now[0] - 100.0 == pytest.approx(999 / 200)
    # a slow sender is not held back further: behind schedule, no sleep
    now[0] += 60
    slept.clear()
    for _ in range(100):
        pacer.wait()
    assert slept == []


def test_applied_versions_reads_the_jobs_redis_hash():
    raw = {b"big-carts": b"v3 UPSERT", "flash-sale-push": "v1 DELETE", b"odd": b"nothing"}
    assert backfill.applied_versions(raw) == {"big-carts": 3, "flash-sale-push": 1}


_NAME = "flink_taskmanager_job_task_operator_outcome_backfill_requests"
PAGE = "\n".join([
    f"# HELP {_NAME} backfill_requests",
    f'{_NAME}{{job_id="j",outcome="evaluated",subtask_index="0",}} 1200.0',
    f'{_NAME}{{job_id="j",outcome="evaluated",subtask_index="1",}} 800.0',
    f'{_NAME}{{job_id="j",outcome="current",subtask_index="1",}} 5.0',
    'flink_taskmanager_job_task_operator_reason_triggers_suppressed{reason="BACKFILL",} 7.0',
])


def test_the_answers_are_summed_over_subtasks():
    assert backfill.parse_outcomes(PAGE) == Counter(evaluated=2000, current=5)


def test_the_summary_says_what_each_request_did():
    report = backfill.BackfillReport("bf-1", {"big-carts": 1}, 2005, 41.2,
                                     Counter(evaluated=2000, current=5), measured=True)
    assert report.text() == (
        "backfill bf-1: 2,005 requests sent in 41 s\n"
        "  answered by the engine: 2,005 (evaluated 2,000, current 5, unknown 0, erased 0, "
        "stale 0)")
    stale = backfill.BackfillReport("bf-1", {}, 3, 1.0, Counter(stale=3), measured=True)
    assert "run the same command again: users already evaluated are skipped" in stale.text()
    unmeasured = backfill.BackfillReport("bf-1", {}, 3, 1.0)
    assert "not measured" in unmeasured.text()


def test_a_rate_that_is_not_positive_is_refused():
    with pytest.raises(backfill.BackfillError, match="--rate must be a positive number of "
                                                     "requests per second, got 0"):
        backfill.run_backfill(None, {}, rate=0)  # type: ignore[arg-type]


def test_the_json_report_lists_every_outcome():
    report = backfill.BackfillReport("bf-1", {"big-carts": 1}, 5, 2.04, Counter(evaluated=5),
                                     measured=True)
    assert report.as_dict() == {
        "backfill_id": "bf-1", "definitions": {"big-carts": 1}, "sent": 5, "seconds": 2.0,
        "answers": {"evaluated": 5, "current": 0, "unknown": 0, "erased": 0, "stale": 0}}
    assert backfill.BackfillReport("bf-1", {}, 5, 2.0).as_dict()["answers"] is None
