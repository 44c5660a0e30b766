"""Run-level metrics: loss-relative drift, advantage over a baseline, mean ± sample std.

Sign convention (CRMA paper, footnote 1): positive drift means the prior-task loss went up
(forgetting), the opposite sign of accuracy-based backward transfer.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def drift_pct(loss_before: float, loss_after: float) -> float:
    """100·(L_after − L_before)/L_before; positive = forgetting."""
    if loss_before <= 0:
        raise ValueError("loss_before must be positive")
    return 100.0 * (loss_after - loss_before) / loss_before


def advantage_pct(loss_baseline: float, loss_method: float) -> float:
    """100·(L_baseline − L_method)/L_baseline; positive = the method has lower loss."""
    if loss_baseline <= 0:
        raise ValueError("loss_baseline must be positive")
    return 100.0 * (loss_baseline - loss_method) / loss_baseline


def backward_transfer(accuracy: Sequence[Sequence[float]]) -> float:
    """Accuracy BWT (Lopez-Paz & Ranzato 2017): mean_{i<T} R[T][i] − R[i][i]; positive =
    improvement. ``accuracy[j][i]`` is task i's accuracy after training through task j."""
    last = len(accuracy) - 1
    if last < 1:
        raise ValueError("need at least two tasks")
    return sum(accuracy[last][i] - accuracy[i][i] for i in range(last)) / last


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof = 1, the convention of the published ±)."""
    n = len(values)
    if n < 2:
        raise ValueError("need at least two values for a sample standard deviation")
    mean = sum(values) / n
    return mean, math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))
