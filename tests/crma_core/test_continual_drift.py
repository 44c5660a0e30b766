"""Continual-learning metrics on hand-made loss matrices (no model involved)."""

import math

import pytest

from crma_core.drift import (advantage_pct, backward_transfer, continual_report, drift_pct,
                             mean_advantage_pct, mean_drift_pct, mean_std, plot_loss_matrix,
                             square_matrix)


def test_drift_sign_and_size():
    assert drift_pct([[1.0], [1.1, 2.0]]) == pytest.approx([10.0])
    assert drift_pct([[1.0], [0.9, 2.0]]) == pytest.approx([-10.0])
    assert drift_pct([[2.0]]) == [] and mean_drift_pct([[2.0]]) is None


def test_mean_drift_and_bwt_over_prior_domains_only():
    matrix = [[1.0], [1.2, 2.0], [1.1, 2.5, 3.0]]
    # drift: (1.1-1)/1 = +10%, (2.5-2)/2 = +25%; the last domain is not a prior domain.
    assert drift_pct(matrix) == pytest.approx([10.0, 25.0])
    assert mean_drift_pct(matrix) == pytest.approx(17.5)
    # loss-based BWT = mean(L[i][i] - L[T][i]) = mean(-0.1, -0.5): forgetting is negative.
    assert backward_transfer(matrix) == pytest.approx(-0.3)
    assert backward_transfer([[1.0]]) is None


def test_paper_seed_spread_is_the_sample_std():
    mean, std = mean_std([1.46, 1.97, 2.54])
    assert round(mean, 2) == 1.99 and round(std, 3) == 0.540
    assert mean_std([3.0]) == (3.0, None)
    with pytest.raises(ValueError):
        mean_std([])


def test_advantage_of_modular_over_frozen():
    frozen = [[2.0], [2.0, 1.0], [2.0, 1.0, 3.0]]
    modular = [[1.9], [1.95, 1.1], [1.9, 1.02, 2.0]]
    # prior domains only: (2-1.9)/2 = +5%, (1-1.02)/1 = -2%
    assert advantage_pct(frozen, modular) == pytest.approx([5.0, -2.0])
    assert mean_advantage_pct(frozen, modular) == pytest.approx(1.5)
    with pytest.raises(ValueError, match="domains"):
        advantage_pct(frozen, modular[:2])


def test_report_and_validation(tmp_path):
    matrix = [[2.0], [2.2, 1.5]]
    report = continual_report(matrix, ["medical", "legal"], [2.5, 3.0])
    assert report["drift_pct"] == {"medical": pytest.approx(10.0)}
    assert report["matrix_square"] == [[2.0, None], [2.2, 1.5]] == square_matrix(matrix)
    assert report["own_improvement_pct"] == pytest.approx([20.0, 50.0])
    assert report["bwt"] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="row 1"):
        drift_pct([[1.0], [1.0]])
    with pytest.raises(ValueError):
        drift_pct([[1.0], [math.nan, 1.0]])
    with pytest.raises(ValueError, match="domain names"):
        continual_report(matrix, ["medical"])
    png = plot_loss_matrix(matrix, ["medical", "legal"], tmp_path / "m.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
