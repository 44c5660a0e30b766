"""Continual-learning metrics on a loss matrix, and its heatmap (no torch).

The loss matrix is lower-triangular and ragged: ``matrix[t][i]`` (i ≤ t) is domain i's
holdout loss (mean response-token cross-entropy, per token over the whole holdout) after
training through domain t. With T the last row:

- drift_i = 100·(L[T][i] − L[i][i]) / L[i][i] for i < T; positive = forgetting;
- advantage of modular over frozen, per prior domain i < T:
  100·(L_frozen[T][i] − L_modular[T][i]) / L_frozen[T][i]; positive = modular better;
- loss-based backward transfer BWT = mean_{i<T} (L[i][i] − L[T][i]) in nats: the
  accuracy-style BWT of Lopez-Paz & Ranzato with loss in place of accuracy and the sign
  flipped, so it has the opposite sign to drift (positive = earlier domains got better);
- mean ± sample standard deviation (ddof = 1) across seeds.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

Matrix = Sequence[Sequence[float]]


def check_matrix(matrix: Matrix) -> None:
    """Raise ValueError unless row t has exactly t + 1 finite, positive losses."""
    for t, row in enumerate(matrix):
        if len(row) != t + 1:
            raise ValueError(f"row {t} of the loss matrix has {len(row)} entries, expected {t + 1}")
        for value in row:
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
                raise ValueError(f"row {t} holds a loss that is not a positive number: {value!r}")


def relative_change_pct(before: float, after: float) -> float:
    """100·(after − before)/before."""
    return 100.0 * (after - before) / before


def drift_pct(matrix: Matrix) -> list[float]:
    """[drift_i for i < T]: 100·(L[T][i] − L[i][i]) / L[i][i]; empty for a single domain."""
    check_matrix(matrix)
    last = matrix[-1] if matrix else []
    return [relative_change_pct(matrix[i][i], last[i]) for i in range(len(matrix) - 1)]


def mean_drift_pct(matrix: Matrix) -> float | None:
    """Mean of ``drift_pct`` over the prior domains (None with fewer than two domains)."""
    values = drift_pct(matrix)
    return sum(values) / len(values) if values else None


def backward_transfer(matrix: Matrix) -> float | None:
    """Loss-based BWT = mean_{i<T}(L[i][i] − L[T][i]) (nats; sign opposite to drift)."""
    check_matrix(matrix)
    if len(matrix) < 2:
        return None
    last = matrix[-1]
    values = [matrix[i][i] - last[i] for i in range(len(matrix) - 1)]
    return sum(values) / len(values)


def advantage_pct(frozen: Matrix, modular: Matrix) -> list[float]:
    """[100·(L_frozen[T][i] − L_modular[T][i]) / L_frozen[T][i] for i < T].

    Both matrices must cover the same domains (same number of rows). Positive = the
    modular run's prior-domain holdout loss is lower than the frozen run's.
    """
    check_matrix(frozen)
    check_matrix(modular)
    if len(frozen) != len(modular):
        raise ValueError(f"the runs cover {len(frozen)} and {len(modular)} domains")
    f_last, m_last = frozen[-1], modular[-1]
    return [100.0 * (f_last[i] - m_last[i]) / f_last[i] for i in range(len(frozen) - 1)]


def mean_advantage_pct(frozen: Matrix, modular: Matrix) -> float | None:
    values = advantage_pct(frozen, modular)
    return sum(values) / len(values) if values else None


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """(mean, sample standard deviation with ddof = 1); the std is None for one value."""
    if not values:
        raise ValueError("no values")
    mean = sum(values) / len(values)
    if len(values) < 2:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return mean, math.sqrt(var)


def square_matrix(matrix: Matrix) -> list[list[float | None]]:
    """The ragged matrix padded with None above the diagonal (T×T)."""
    n = len(matrix)
    return [list(row) + [None] * (n - len(row)) for row in matrix]


def continual_report(matrix: Matrix, domains: Sequence[str],
                     base_losses: Sequence[float | None] | None = None) -> dict[str, Any]:
    """Everything a run reports after its latest domain, as JSON-ready values.

    Keys: domains, matrix (ragged), matrix_square (None above the diagonal), diagonal,
    drift_pct (per prior domain, by name), drift_mean_pct, bwt (loss-based, nats), and, when
    ``base_losses`` (the untrained base model's loss per holdout) are given, base_losses and
    own_improvement_pct = 100·(base_i − L[i][i]) / base_i.
    """
    check_matrix(matrix)
    if len(domains) != len(matrix):
        raise ValueError(f"{len(domains)} domain names for {len(matrix)} matrix rows")
    drifts = drift_pct(matrix)
    report: dict[str, Any] = {
        "domains": list(domains),
        "matrix": [list(row) for row in matrix],
        "matrix_square": square_matrix(matrix),
        "diagonal": [matrix[i][i] for i in range(len(matrix))],
        "drift_pct": {domains[i]: d for i, d in enumerate(drifts)},
        "drift_mean_pct": mean_drift_pct(matrix),
        "bwt": backward_transfer(matrix),
    }
    if base_losses is not None:
        report["base_losses"] = list(base_losses)
        report["own_improvement_pct"] = [
            None if base is None else -relative_change_pct(base, matrix[i][i])
            for i, base in enumerate(base_losses)]
    return report


def plot_loss_matrix(matrix: Matrix, domains: Sequence[str], path: Path, *,
                     title: str | None = None) -> Path:
    """Heatmap PNG of L[t][i]: rows = after training domain t, columns = holdout of domain
    i, each cell annotated with its loss; the empty upper triangle stays blank."""
    import matplotlib

    matplotlib.use("Agg", force=True)  # headless
    import matplotlib.pyplot as plt
    import numpy as np

    check_matrix(matrix)
    n = len(matrix)
    grid = np.full((n, n), np.nan)
    for t, row in enumerate(matrix):
        grid[t, : len(row)] = row
    size = 1.6 + 1.1 * n
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=110)
    image = ax.imshow(np.ma.masked_invalid(grid), cmap="viridis_r")
    fig.colorbar(image, ax=ax, label="holdout loss (nats/token)")
    finite = grid[np.isfinite(grid)]
    middle = (finite.min() + finite.max()) / 2 if finite.size else 0.0
    for t in range(n):
        for i in range(t + 1):
            ax.text(i, t, f"{grid[t, i]:.3f}", ha="center", va="center", fontsize=9,
                    color="white" if grid[t, i] > middle else "black")
    ax.set_xticks(range(n), [f"{d}" for d in domains], rotation=30, ha="right")
    ax.set_yticks(range(n), [f"after {d}" for d in domains])
    ax.set_xlabel("holdout of domain")
    ax.set_ylabel("trained through domain")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
