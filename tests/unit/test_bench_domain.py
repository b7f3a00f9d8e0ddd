"""The domain floor benchmark runs on a tiny workload and reports sane figures (no timings)."""

import json
import os
import subprocess
import sys

from jobs.bench import domain
from udfs import native
from udfs.build import ROOT

TINY = ["--clicks", "300", "--users", "20", "--repeat", "1", "--no-churn"]


def test_the_domain_bench_counts_every_input_and_reports_positive_figures(tmp_path):
    out = tmp_path / "domain.json"
    lines = []
    result = domain.main([*TINY, "--json", str(out)], printer=lines.append)
    assert result == json.loads(out.read_text())
    assert result["clicks"] == 300 and result["users"] == 20 and result["metadata"] == 20
    assert result["inputs"] == 320
    assert result["steps"] >= result["inputs"] - result["late"] - result["rejected"]
    assert result["us_per_input"] > 0 and result["state_bytes_per_input"] > 0
    assert any("µs per input" in line for line in lines)
    assert result["native"] == native.status()
    if native.active():  # compiled: cProfile cannot split the time; the report says so
        assert result["stages_us"] is None
        assert any("per stage: not with compiled modules" in line for line in lines)
    else:
        _check_stages(result["stages_us"])


def test_the_stage_table_of_the_python_modules(tmp_path):
    """Whatever this process loaded, the per-stage table of the modules run as Python."""
    out = tmp_path / "domain.json"
    env = {**os.environ, native.ENV: "off", "PYTHONPATH": str(ROOT)}
    subprocess.run([sys.executable, "-m", "jobs.bench.domain", *TINY, "--json", str(out)],
                   env=env, cwd=ROOT, check=True, capture_output=True)
    result = json.loads(out.read_text())
    assert result["native"].startswith("off")
    _check_stages(result["stages_us"])


def _check_stages(stages):
    assert {"decode", "features", "segments", "campaigns", "journeys", "state encoding"} <= set(
        stages)
    assert all(stages[s] > 0 for s in ("decode", "features", "segments", "state encoding"))
    assert stages["scoring: model"] == 0  # no model


def test_the_inputs_are_the_generated_workload_with_metadata_updates():
    inputs = domain.build_inputs(500, 30, seed=3, metadata_updates=0.1)
    kinds = [r[0] for r in inputs.records]
    assert kinds.count("click") == 500 and kinds.count("metadata") == inputs.metadata > 30
    assert inputs == domain.build_inputs(500, 30, seed=3, metadata_updates=0.1)  # seeded


def test_the_floor_counts_per_click_and_starts_where_it_is_told():
    figures = domain.floor(150, 15, seed=3, start_ms=1_700_000_000_000, passes=1)
    assert figures["clicks"] == 150 and figures["users"] == 15 and figures["inputs"] == 165
    # a warm-up on the first records only times the same whole pass
    prefix = domain.floor(150, 15, seed=3, start_ms=1_700_000_000_000, passes=1,
                          warmup_records=40)
    assert (prefix["inputs"], prefix["steps_per_click"]) == (165, figures["steps_per_click"])
    assert figures["us_per_click"] > 0 and figures["us_per_input"] > 0
    outcome = domain.play(domain.build_inputs(150, 15, seed=3), domain.shipped_rules(),
                          mark_done=7)
    # every click is done with by the end (applied, duplicate, late or invalid), and the mark
    # is taken once, at the first step that reached 7
    assert outcome.clicks == outcome.clicks_done == 150
    assert outcome.mark_ns is not None and 7 <= outcome.done_at_mark < 150
    inputs = domain.build_inputs(150, 15, seed=3, start_ms=1_700_000_000_000)
    clicks = [time for kind, _, time, _ in inputs.records if kind == "click"]
    assert min(clicks) >= 1_700_000_000_000 > max(
        time for kind, _, time, _ in inputs.records if kind == "metadata")
    assert inputs != domain.build_inputs(150, 15, seed=3)  # another start, other event times


def test_the_floor_runs_without_journeys_as_the_job_does_by_default():
    assert domain.shipped_rules(churn=False).registries.journey_map()
    assert not domain.shipped_rules(churn=False, journeys=False).registries.journey_map()
    assert domain.floor(50, 5, passes=1)["journeys"] is False


def test_a_watermark_moved_less_often_fires_fewer_timers_and_applies_every_click():
    inputs = domain.build_inputs(400, 20, seed=5)
    rules = domain.shipped_rules(journeys=False)
    each = domain.play(inputs, rules, keep=True)
    batched = domain.play(inputs, rules, keep=True, watermark_every=100)
    assert batched.timers < each.timers and batched.steps < each.steps
    applied = [sorted(c for _, step in o.emitted for c in step["clicks_applied"])
               for o in (each, batched)]
    assert applied[0] == applied[1] and len(applied[0]) > 350
    # event time decides, not when the watermark moved: the same changes and triggers
    for key, what in (("changes", "change_id"), ("triggers", "trigger_id")):
        records = [sorted(r[what] for _, step in o.emitted for r in step[key])
                   for o in (each, batched)]
        assert records[0] == records[1] and records[0], key


def _records_by_user(outcome):
    """Every record the steps emitted, per user in order (steps may split differently)."""
    out: dict = {}
    for user, step in outcome.emitted:
        mine = out.setdefault(user, {})
        for key in ("changes", "triggers", "decisions", "converted", "lift", "journey_moves",
                    "clicks_applied"):
            mine.setdefault(key, []).extend(step[key])
    return out


def test_inputs_handed_on_in_order_give_the_records_of_inputs_buffered_in_the_engine():
    """Metamorphic: the inputs reaching the engine as the Java operator hands them on
    (``ordered``: held until the watermark passes them, then in event-time order) or as they
    are read (waiting in the engine's clock) give every user the same records, in the same
    order, with the journeys on, at two watermark cadences; the ordered run needs fewer steps
    (no arrival step before the timer step that applies an input)."""
    inputs = domain.build_inputs(2_000, 80, seed=6, metadata_updates=0.05, days=3)
    rules = domain.shipped_rules()
    for every in (1, 40):
        buffered = domain.play(inputs, rules, keep=True, watermark_every=every)
        ordered = domain.play(inputs, rules, keep=True, watermark_every=every, ordered=True)
        want, got = _records_by_user(buffered), _records_by_user(ordered)
        assert got == want, every
        assert sum(len(r["changes"]) for r in want.values()) > 200
        assert any(r["triggers"] for r in want.values())
        assert ordered.steps < buffered.steps and ordered.timers < buffered.timers, every
        assert ordered.clicks_done == buffered.clicks_done == 2_000
    # the schedule: every record reaches the engine once; held ones with their user's others
    # at the watermark move that passed them, in event-time order, before the timers fire
    schedule = domain.arrivals(inputs, 40, ordered=True)
    arrived = [e[1] for e in schedule if e[0] == domain.ARRIVE]
    released = [e for e in schedule if e[0] == domain.RELEASE]
    held = [n for e in released for n in e[1]]
    assert sorted(arrived + held) == list(range(len(inputs.records)))
    assert len(held) > 1_500 and any(len(e[1]) > 1 for e in released)
    for _, positions, through, before in released:
        times = [inputs.records[n][2] for n in positions]
        assert times == sorted(times) and before < times[0] and times[-1] <= through
        assert len({inputs.records[n][1] for n in positions}) == 1


def test_state_kept_as_bytes_gives_the_same_records_whatever_the_cache_keeps(monkeypatch):
    """Differential: the floor's state as objects, as bytes with every user decoded and kept,
    and as bytes with 9 of 60 users kept (many steps decode): the same records and states."""
    from udfs.campaigns import arbitration
    from udfs.features.codec import encode_state

    inputs = domain.build_inputs(1_500, 60, seed=4, metadata_updates=0.05, days=3)
    rules = domain.shipped_rules()  # with the journeys: campaign state at many steps
    decodes = {"n": 0}
    real = domain.decode_state

    def counted(raw):
        decodes["n"] += 1
        return real(raw)

    monkeypatch.setattr(domain, "decode_state", counted)
    runs, counts = {}, {}
    for name, kept in (("objects", None), ("bytes, all kept", 1_000), ("bytes, 9 kept", 9)):
        decodes["n"] = 0
        runs[name] = domain.play(inputs, rules, keep=True, watermark_every=40,
                                 decoded_users=kept)
        # final_states decodes each user's last features once more
        counts[name] = decodes["n"] - (kept is not None) * sum(
            s.features is not None for s in runs[name].states.values())
    reference = runs.pop("objects")
    assert reference.emitted and any(step["triggers"] for _, step in reference.emitted)
    for name, run in runs.items():
        assert run.emitted == reference.emitted, name
        for user, state in reference.states.items():
            got = run.states[user]
            assert (encode_state(got.features) if got.features else None) == (
                encode_state(state.features) if state.features else None), (name, user)
            assert got.metadata == state.metadata and got.membership == state.membership
            assert got.clock == state.clock, (name, user)
            assert arbitration.encode_state(got.campaigns) == arbitration.encode_state(
                state.campaigns or arbitration.CampaignState()), (name, user)
    # the bound is what decides: all kept, no step decodes features; 9 kept, many do
    assert counts["objects"] == counts["bytes, all kept"] == 0
    assert counts["bytes, 9 kept"] > 100


def test_every_decoded_object_kept_is_what_its_bytes_decode_to(monkeypatch):
    """The caches' invariant, checked after every step: an object kept with bytes encodes to
    those bytes (a campaign state decided on but not stored, pruned in place, must not be
    kept with the bytes it was read from)."""
    from udfs.campaigns import arbitration
    from udfs.features.codec import encode_state

    checked = {"features": 0, "campaigns": 0}

    class Checked(domain.KeyedBytes):
        def store(self, user, state, step, clocks):
            written = super().store(user, state, step, clocks)
            for name, cache, encode in (("features", self.features, encode_state),
                                        ("campaigns", self.campaigns,
                                         arbitration.encode_state)):
                entry = cache._entries.get(user)
                if entry is not None:
                    assert encode(entry[1]) == entry[0], (name, user, step)
                    checked[name] += 1
            return written

    monkeypatch.setattr(domain, "KeyedBytes", Checked)
    # 20 days: sent triggers' touches age out of their attribution windows, and a goal click
    # then prunes them in place without storing (~120 such steps in this workload)
    inputs = domain.build_inputs(6_000, 60, seed=9, metadata_updates=0.05, days=20)
    outcome = domain.play(inputs, domain.shipped_rules(), watermark_every=30,
                          decoded_users=1_000)
    assert outcome.steps > 6_000 and checked["features"] > 2_000 and checked["campaigns"] > 600
