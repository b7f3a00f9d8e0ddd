"""The domain floor benchmark runs on a tiny workload and reports sane figures (no timings)."""

import json

from jobs.bench import domain


def test_the_domain_bench_counts_every_input_and_reports_positive_figures(tmp_path):
    out = tmp_path / "domain.json"
    lines = []
    result = domain.main(["--clicks", "300", "--users", "20", "--repeat", "1", "--no-churn",
                          "--json", str(out)], printer=lines.append)
    assert result == json.loads(out.read_text())
    assert result["clicks"] == 300 and result["users"] == 20 and result["metadata"] == 20
    assert result["inputs"] == 320
    assert result["steps"] >= result["inputs"] - result["late"] - result["rejected"]
    assert result["us_per_input"] > 0 and result["state_bytes_per_input"] > 0
    stages = result["stages_us"]
    assert {"decode", "features", "segments", "campaigns", "journeys", "state encoding"} <= set(
        stages)
    assert all(stages[s] > 0 for s in ("decode", "features", "segments", "state encoding"))
    assert stages["scoring: model"] == 0  # no model
    assert any("µs per input" in line for line in lines)


def test_the_inputs_are_the_generated_workload_with_metadata_updates():
    inputs = domain.build_inputs(500, 30, seed=3, metadata_updates=0.1)
    kinds = [r[0] for r in inputs.records]
    assert kinds.count("click") == 500 and kinds.count("metadata") == inputs.metadata > 30
    assert inputs == domain.build_inputs(500, 30, seed=3, metadata_updates=0.1)  # seeded
