"""The job is event-time exact: one seeded workload through the real job graph on a MiniCluster,
in event-time order at parallelism 1, shuffled within the out-of-orderness bound with 5%
duplicates at parallelism 4 (inputs held in order by the Java operator, ``input_order: java``,
and by the engine itself, ``engine``), and in order at parallelism 4, gives identical SegmentChange
sequences per (user, segment) (change, time, reason, version), identical triggers and
decisions (all fields but the wall-clock emit_time) and identical CONVERTED outcomes
(attributed conversions); the same as the pure step through the
adapter's stand-in; and, for four shipped segments, the same changes at the same times as an
independent reference implementation (tests/differential/reference.py).

The bounded input's end fires every timer, so each user is carried to the state TTL (90 days)
and past the 30-day inactivity horizon.
"""

import time

import pytest

from jobs.job import file_definitions
from jobs.workload.workload import USD_RATES
from tests.differential import compare
from tests.differential.conftest import DAYS, EVENTS, USERS
from tests.differential.reference import SEGMENTS, reference_changes
from tests.differential.replay import run_job, shuffled, workload
from tests.differential.sim import Simulator
from udfs.catalog.registries import Registries
from udfs.engine import Rules

pytestmark = pytest.mark.differential


@pytest.fixture(scope="module")
def data():
    return workload(USERS, EVENTS, DAYS, seed=11)


@pytest.fixture(scope="module")
def runs(data, make_cfg, tmp_path_factory):
    """The three runs of the job, each in its own MiniCluster environment."""
    from jobs.env import create_env

    out = {}
    bound = make_cfg(1).max_out_of_orderness_ms
    shuffled_clicks = shuffled(data.clicks, bound, 0.05, seed=5)
    plans = {
        "ordered-p1": (1, data.clicks, "java"),
        "shuffled-p4": (4, shuffled_clicks, "java"),
        "ordered-p4": (4, data.clicks, "java"),
        # the engine buffering its inputs itself, as before the Java operator did it
        "shuffled-p4-engine-order": (4, shuffled_clicks, "engine"),
    }
    for name, (parallelism, clicks, input_order) in plans.items():
        cfg = make_cfg(parallelism, input_order=input_order)
        started = time.monotonic()
        out[name] = run_job(create_env(cfg, local=True), cfg, clicks, data.metadata,
                            str(tmp_path_factory.mktemp(name) / "written.jsonl"))
        print(f"{name}: {len(clicks)} clicks in {time.monotonic() - started:.1f} s")
    return out


def _outputs(run):
    return (compare.changes_by_key(run.changes), compare.triggers(run.triggers),
            compare.decisions(run.decisions), sorted(map(_conversion, run.conversions)))


def _conversion(record):
    """A CONVERTED outcome as a comparable tuple (every field is derived from event time)."""
    return tuple(sorted(record.items()))


def test_the_workload_reaches_the_horizons(data, runs):
    span = data.clicks[-1]["event_time"] - data.clicks[0]["event_time"]
    assert len(data.metadata) >= 2_000  # users (with metadata; most of them also click)
    assert len({c["user_id"] for c in data.clicks}) >= 900
    assert span >= 10 * 86_400_000
    reasons = {c["reason"] for c in runs["ordered-p1"].changes}
    assert "user state expired: no event for 90 days" in reasons  # the TTL
    assert any(c["segment_id"] == "inactive-30d" and c["change"] == "ENTER"
               for c in runs["ordered-p1"].changes)  # the 30-day inactivity horizon
    assert runs["ordered-p1"].triggers and runs["ordered-p1"].decisions
    assert runs["ordered-p1"].conversions  # purchases after sends: attribution is compared


@pytest.mark.parametrize("other", ["shuffled-p4", "ordered-p4", "shuffled-p4-engine-order"])
def test_any_arrival_order_and_parallelism_give_the_same_output(runs, other):
    base, got = _outputs(runs["ordered-p1"]), _outputs(runs[other])
    assert got[0] == base[0], compare.first_difference(got[0], base[0])
    assert got[1] == base[1], compare.record_difference(runs[other].triggers,
                                                        runs["ordered-p1"].triggers)
    assert got[2] == base[2], compare.record_difference(runs[other].decisions,
                                                        runs["ordered-p1"].decisions)
    assert got[3] == base[3]  # the same conversions credited to the same triggers
    # the shuffled copy's duplicates were dropped, and nothing was late
    assert [d for d in runs[other].dead_letters if d["reason_code"] == "LATE_EVENT"] == []


def test_the_job_gives_what_the_pure_step_gives(data, runs, make_cfg):
    cfg = make_cfg(1)
    sim = Simulator(Rules(Registries.from_updates(file_definitions(cfg)), cfg.state_ttl_ms),
                    cfg.max_out_of_orderness_ms)
    for record in data.metadata:
        sim.metadata(record)
    for click in data.clicks:
        sim.click(click)
    sim.finish()
    job = _outputs(runs["ordered-p1"])
    assert compare.changes_by_key(sim.changes) == job[0]
    assert compare.triggers(sim.triggers) == job[1], compare.record_difference(
        sim.triggers, runs["ordered-p1"].triggers)
    assert compare.decisions(sim.decisions) == job[2], compare.record_difference(
        sim.decisions, runs["ordered-p1"].decisions)
    assert sorted(map(_conversion, sim.converted)) == job[3]


def test_four_shipped_segments_match_an_independent_reference(data, runs):
    expected = reference_changes(data.clicks, data.metadata, USD_RATES)
    got: dict = {}
    for c in sorted(runs["ordered-p1"].changes, key=lambda c: c["event_time"]):
        if c["segment_id"] in SEGMENTS:
            got.setdefault((c["user_id"], c["segment_id"]), []).append(
                (c["change"], c["event_time"]))
    assert sum(map(len, expected.values())) > 1_000
    assert got == expected, compare.first_difference(got, expected)
