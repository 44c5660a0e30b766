"""T13: drift sign convention, advantage, mean ± sample std."""

import pytest

from crma_core.metrics import advantage_pct, backward_transfer, drift_pct, mean_std


def test_drift_sign():
    assert drift_pct(1.0, 1.1) == pytest.approx(10.0)
    assert drift_pct(1.0, 0.9) == pytest.approx(-10.0)


def test_drift_opposes_accuracy_bwt():
    # Task 0 gets worse after task 1: its loss rises, its accuracy falls.
    losses = [[0.5, None], [0.6, 0.4]]
    accuracy = [[0.9, None], [0.8, 0.95]]
    assert drift_pct(losses[0][0], losses[1][0]) > 0
    assert backward_transfer(accuracy) < 0


def test_advantage_and_mean_std():
    assert advantage_pct(1.0, 0.98) == pytest.approx(2.0)
    mean, std = mean_std([1.46, 1.97, 2.54])
    assert round(mean, 2) == 1.99 and round(std, 3) == 0.540
    with pytest.raises(ValueError):
        mean_std([1.0])
    with pytest.raises(ValueError):
        drift_pct(0.0, 1.0)
