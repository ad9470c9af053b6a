"""recipe.spikes: what the detector calls a spike, and that its history survives a checkpoint."""

import json

import pytest

from recipe.spikes import SpikeDetector


def test_only_a_value_far_above_a_full_window_is_a_spike():
    detector = SpikeDetector(window=4, zscore=3.0)
    assert [detector.observe(loss=loss, grad_norm=None) for loss in (4.0, 4.2, 3.8, 4.0)] == [None] * 4  # warm-up
    assert detector.observe(loss=4.3, grad_norm=None) is None  # 2.1 standard deviations above the mean 4.0
    spike = detector.observe(loss=9.0, grad_norm=None)  # window 4.2, 3.8, 4.0, 4.3: mean 4.075, variance 0.036875
    assert spike.series == "loss" and spike.value == 9.0 and spike.mean == 4.075
    assert spike.zscore == pytest.approx((9.0 - 4.075) / 0.036875 ** 0.5)
    assert detector.observe(loss=3.0, grad_norm=None) is None  # far below is no spike


def test_a_lasting_change_of_level_is_accepted_after_a_few_steps():
    """Every value enters the window, the skipped ones too: a new level stops being a spike once the window holds
    enough of it, instead of every later step being skipped. Once the window of W holds m steps of the new level,
    the next one is sqrt((W - m) / m) standard deviations above its mean: for W = 128, 11.3 and 7.9 after one and
    two such steps (spikes), 6.5 after three (not)."""
    detector = SpikeDetector(window=128, zscore=7.0)
    for step in range(128):
        detector.observe(loss=3.0 + 0.01 * (step % 2), grad_norm=1.0 + 0.01 * (step % 3))
    spikes = [detector.observe(loss=6.0, grad_norm=1.0) is not None for _ in range(128)]
    assert spikes == [True] * 3 + [False] * 125


def test_the_history_round_trips_through_json():
    detector = SpikeDetector(window=3, zscore=2.0)
    for loss, norm in [(5.1, 0.9), (5.05, 1.1), (4.93, 1.0), (4.9, 0.95)]:
        detector.observe(loss=loss, grad_norm=norm)
    restored = SpikeDetector(window=3, zscore=2.0)
    restored.load_state_dict(json.loads(json.dumps(detector.state_dict())))
    assert restored.history == detector.history
    assert restored.observe(loss=8.0, grad_norm=1.0) == detector.observe(loss=8.0, grad_norm=1.0) != None  # noqa: E711
