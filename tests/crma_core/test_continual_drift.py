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


def test_a_stage_worse_than_the_base_model_is_flagged():
    """The diverged-stage case the benchmark met: the domain's own loss after its stage
    above the untrained model's."""
    report = continual_report([[2.0], [2.0, 3.3]], ["medical", "finance"], [2.5, 3.0])
    [warning] = report["warnings"]
    assert warning["domain"] == "finance" and warning["code"] == "stage_worse_than_base_model"
    assert warning["own_improvement_pct"] == pytest.approx(-10.0)
    assert "10.00% above the untrained base model" in warning["message"]


def test_report_and_validation(tmp_path):
    matrix = [[2.0], [2.2, 1.5]]
    report = continual_report(matrix, ["medical", "legal"], [2.5, 3.0])
    assert report["drift_pct"] == {"medical": pytest.approx(10.0)}
    assert report["matrix_square"] == [[2.0, None], [2.2, 1.5]] == square_matrix(matrix)
    assert report["own_improvement_pct"] == pytest.approx([20.0, 50.0])
    assert report["warnings"] == []
    assert report["bwt"] == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="row 1"):
        drift_pct([[1.0], [1.0]])
    with pytest.raises(ValueError):
        drift_pct([[1.0], [math.nan, 1.0]])
    with pytest.raises(ValueError, match="domain names"):
        continual_report(matrix, ["medical"])
    png = plot_loss_matrix(matrix, ["medical", "legal"], tmp_path / "m.png", title="t")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_serving_takes_the_shared_crma_only_within_budget():
    from crma_core.serving import choose_serving, explain, served_matrix, serving_history

    # Domain 0: the shared CRMA drifts +0.4% after stage 1 (within 0.5%), +2% after stage 2
    # (over: keeps the stage-1 state). Domain 1: +1% after stage 2 (over: its own state).
    matrix = [[1.0], [1.004, 2.0], [1.02, 2.02, 3.0]]
    history = serving_history(matrix, 0.5)
    assert history == [[0], [1, 1], [1, 1, 2]]
    assert choose_serving(matrix, history[1], 0.5) == [1, 1, 2]
    assert served_matrix(matrix, history) == [[1.0], [1.004, 2.0], [1.004, 2.0, 3.0]]
    assert drift_pct(served_matrix(matrix, history)) == pytest.approx([0.4, 0.0])
    why = explain(matrix, history, 0.5, ["a", "b", "c"])
    assert [w["crma_state"] for w in why] == ["earlier", "own", "shared"]
    assert "kept the CRMA after stage 1 (b)" in why[0]["reason"]
    assert why[1]["shared_drift_pct"] == pytest.approx(1.0) and why[1]["drift_pct"] == 0.0
    # Budget 0: only a shared state that is no worse is taken; a better one always is.
    assert serving_history([[1.0], [0.99, 2.0]], 0.0)[-1] == [1, 1]
    assert serving_history([[1.0], [1.0001, 2.0]], 0.0)[-1] == [0, 1]
    with pytest.raises(ValueError, match="earlier domains"):
        choose_serving(matrix, None, 0.5)


def test_report_with_serving_baseline_and_general():
    from crma_core.serving import serving_history

    matrix = [[1.0], [1.1, 2.0]]
    report = continual_report(matrix, ["a", "b"], serving=serving_history(matrix, 0.5),
                              budget_pct=0.5, baseline_losses=[1.02, 1.9],
                              general={"base_loss": 3.0, "served": [3.3, 3.0],
                                       "baseline": [3.6, 3.3]})
    assert report["matrix"] == [[1.0], [1.0, 2.0]] and report["drift_mean_pct"] == 0.0
    assert report["shared_drift_mean_pct"] == pytest.approx(10.0)
    versus = report["versus_baseline"]
    assert versus["backward_pct"] == {"a": pytest.approx(100 * 0.02 / 1.02)}
    assert versus["forward_pct"]["b"] == pytest.approx(-100 * 0.1 / 1.9)
    general = report["general_retention"]
    assert general["served"]["a"]["change_pct"] == pytest.approx(10.0)
    assert general["baseline_mean_change_pct"] == pytest.approx(15.0)
