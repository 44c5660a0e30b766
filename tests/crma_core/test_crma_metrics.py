"""T13: drift sign convention, advantage, mean ± sample std (crma_core.drift, the one
implementation the continual runner and the benchmark report use)."""

import pytest

from crma_core.drift import advantage_pct, backward_transfer, drift_pct, mean_std


def test_drift_sign():
    assert drift_pct([[1.0], [1.1, 0.5]]) == [pytest.approx(10.0)]
    assert drift_pct([[1.0], [0.9, 0.5]]) == [pytest.approx(-10.0)]


def test_drift_opposes_backward_transfer():
    # Task 0 gets worse after task 1: its loss rises, so drift is positive and BWT negative.
    losses = [[0.5], [0.6, 0.4]]
    assert drift_pct(losses)[0] > 0
    assert backward_transfer(losses) < 0


def test_advantage_and_mean_std():
    assert advantage_pct([[1.0], [1.0, 1.0]], [[1.0], [0.98, 1.0]]) == [pytest.approx(2.0)]
    mean, std = mean_std([1.46, 1.97, 2.54])
    assert round(mean, 2) == 1.99 and round(std, 3) == 0.540
    assert mean_std([1.0]) == (1.0, None)
    with pytest.raises(ValueError):
        mean_std([])
    with pytest.raises(ValueError):
        drift_pct([[0.0], [1.0, 1.0]])
