"""The ROI update rule (issue 15): minimum sample, smoothing, bounded step, named source."""

import pytest

from udfs.attribution.roi import RoiChoice, RoiFeedback, typed_roi, update_roi

FEEDBACK = RoiFeedback(min_sends=200, smoothing=0.2, max_step=0.25)


def test_without_feedback_the_typed_value_is_used():
    assert update_roi(60, None, 500.0, 10_000, None) == RoiChoice(60.0, "typed: 60", False)


def test_below_the_minimum_sample_the_typed_value_is_used():
    assert update_roi(60, None, 42.1, 199, FEEDBACK) == RoiChoice(60.0, "typed: 60")
    assert update_roi(60, 55.0, 42.1, 199, FEEDBACK).value == 60.0
    assert update_roi(60, None, None, 0, FEEDBACK) == typed_roi(60)


def test_at_the_minimum_sample_the_value_moves_a_smoothing_fraction_of_the_way():
    choice = update_roi(60, None, 50.0, 200, FEEDBACK)
    assert choice.value == pytest.approx(60 + 0.2 * (50 - 60))  # 58, within the 25% step
    assert choice.measured
    assert choice.source == "measured: 50.00 per send over 200 sends"


def test_smoothing_starts_from_the_roi_in_use():
    assert update_roi(60, 40.0, 50.0, 512, FEEDBACK).value == pytest.approx(42.0)


def test_the_step_is_bounded_up_and_down():
    up = update_roi(60, None, 1000.0, 512, FEEDBACK)       # smoothing alone: 248
    assert up.value == pytest.approx(75.0)                   # 60 + 25%
    down = update_roi(60, None, 0.0, 512, FEEDBACK)         # smoothing alone: 48
    assert down.value == pytest.approx(48.0)                 # within 25%: not bounded
    crash = update_roi(60, None, 0.0, 512, RoiFeedback(200, 1.0, 0.1))
    assert crash.value == pytest.approx(54.0)                # 60 - 10%


def test_repeated_updates_converge_on_the_measured_value():
    value = None
    for _ in range(60):
        value = update_roi(60, value, 42.10, 1000, FEEDBACK).value
    assert value == pytest.approx(42.10, abs=0.01)


def test_a_campaign_typed_at_zero_can_still_move():
    choice = update_roi(0, None, 30.0, 500, FEEDBACK)
    assert choice.value == pytest.approx(0.25)  # at least max_step USD per update
    assert update_roi(0, None, 0.0, 500, FEEDBACK).value == 0.0


def test_the_source_names_the_measurement():
    assert update_roi(60, None, 42.104, 512, FEEDBACK).source == \
        "measured: 42.10 per send over 512 sends"
    assert typed_roi(12.5).source == "typed: 12.5"


def test_bad_settings_are_refused():
    with pytest.raises(ValueError, match="roi_feedback needs"):
        RoiFeedback(0, 0.2, 0.25)
    with pytest.raises(ValueError, match="roi_feedback needs"):
        RoiFeedback(10, 0.0, 0.25)
