"""The drill suite's bad-input sources and run comparison, without the stack."""

from schemas.codec import Codec
from tests.drills import runner


def test_fuzzed_workload_counts_every_sendable_class_and_caps_the_heavy_ones():
    source = runner.FuzzedWorkload(runner.OwedCartTriggers(20, batch=10), 1000, heavy_cap=5)
    assert source.bad_records == 1000 == sum(source.expected_reasons().values())
    assert "metadata_null_key" not in source.counts
    assert len(source.counts) == 45 and all(source.counts.values())
    assert all(source.counts[c] == 5 for c in runner.HEAVY_CLASSES)
    codec = Codec.load()
    metadata = source.metadata(None, codec)  # type: ignore[arg-type]
    batches = list(source.click_batches(None, codec))  # type: ignore[arg-type]
    sent = len(metadata) + sum(len(b) for b in batches)
    assert sent == 1000 + 20 + 20 + 1  # bad + valid metadata + valid carts + the clock click


def test_burst_workload_sends_both_bursts_early():
    source = runner.BurstWorkload(runner.OwedCartTriggers(30, batch=10), 100)
    batches = list(source.click_batches(None, Codec.load()))  # type: ignore[arg-type]
    assert [len(b) for b in batches] == [110, 110, 10, 1]
    assert source.expected_reasons() == {"TIME_IN_FUTURE": 200}


def test_compare_outputs_leaves_out_only_processing_dependent_fields():
    trigger = {"trigger_id": "t1", "tier": "P1", "emit_time": 1, "ingest_time": 2,
               "priority_score": 0.62, "cause_event_time": 5,
               "explanation": {"reason": "score 0.62", "features": {
                   "audience_size": 0.0, "priority.audience": 0.0, "event.value": 150.0}}}
    rescored = {**trigger, "emit_time": 9, "priority_score": 0.69, "explanation": {
        "reason": "score 0.69", "features": {"audience_size": 1997.0, "priority.audience": 0.66,
                                             "event.value": 150.0}}}
    assert runner.compare_outputs({"triggers": [trigger]}, {"triggers": [rescored]}) == (
        {"triggers": [], "segment_changes": [], "decisions": []},
        {"triggers": [], "segment_changes": [], "decisions": []})
    for changed in ({**trigger, "tier": "P0"}, {**trigger, "cause_event_time": 6},
                    {**rescored, "explanation": {"features": {"event.value": 1.0}}}):
        missing, extra = runner.compare_outputs({"triggers": [trigger]}, {"triggers": [changed]})
        assert len(missing["triggers"]) == len(extra["triggers"]) == 1
    missing, extra = runner.compare_outputs({"triggers": [trigger, trigger]},
                                            {"triggers": [trigger]})
    assert len(missing["triggers"]) == 1 and not extra["triggers"]
