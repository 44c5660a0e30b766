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
- mean ± sample standard deviation (ddof = 1) across seeds;
- against a per-domain LoRA baseline B (frozen mode, or the baseline a run trains alongside):
  backward 100·(B_i − L[T][i]) / B_i (i < T), forward 100·(B_i − L[i][i]) / B_i; positive =
  CRMA better; general retention 100·(G_adapter − G_base) / G_base on text of no domain.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from crma_core.serving import DECISION_BASIS, explain, served_matrix

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


def versus_baseline(matrix: Matrix, baseline_losses: Sequence[float],
                    domains: Sequence[str]) -> dict[str, Any]:
    """What CRMA adds over the per-domain LoRA baseline (frozen: its losses never move).

    backward_pct (earlier domains, i < T): 100·(B_i − L[T][i]) / B_i, the final served loss
    against the baseline's; forward_pct (every domain): 100·(B_i − L[i][i]) / B_i, the
    domain's own loss right after its stage. Positive = CRMA better.
    """
    check_matrix(matrix)
    if len(baseline_losses) != len(matrix):
        raise ValueError(f"{len(baseline_losses)} baseline losses for {len(matrix)} domains")
    last = matrix[-1]
    backward = {domains[i]: -relative_change_pct(b, last[i])
                for i, b in enumerate(baseline_losses[:-1])}
    forward = {domains[i]: -relative_change_pct(b, matrix[i][i])
               for i, b in enumerate(baseline_losses)}
    return {"backward_pct": backward, "backward_mean_pct": _mean(backward.values()),
            "forward_pct": forward, "forward_mean_pct": _mean(forward.values()),
            "definition": "backward: 100·(B_i − L[T][i]) / B_i for earlier domains; forward: "
                          "100·(B_i − L[i][i]) / B_i; B_i = the frozen per-domain LoRA's "
                          "holdout loss (trained alongside, same init and batches); positive "
                          "= CRMA better"}


def general_retention(base_loss: float, served: Sequence[float | None], domains: Sequence[str],
                      baseline: Sequence[float | None] | None = None) -> dict[str, Any]:
    """Loss on a general-text holdout (no domain's) under each domain's served adapter (and
    the baseline LoRA's) vs the untrained base model: change_pct > 0 = general text got worse."""
    def rows(losses):
        return {domains[i]: {"loss": x, "change_pct": relative_change_pct(base_loss, x)}
                for i, x in enumerate(losses) if x is not None}

    out = {"base_loss": base_loss, "served": rows(served),
           "definition": "100·(G_adapter − G_base) / G_base on the general-text holdout; "
                         "positive = the adapter costs general capability"}
    out["served_mean_change_pct"] = _mean(v["change_pct"] for v in out["served"].values())
    if baseline is not None:
        out["baseline"] = rows(baseline)
        out["baseline_mean_change_pct"] = _mean(
            v["change_pct"] for v in out["baseline"].values())
    return out


def _mean(values) -> float | None:
    values = list(values)
    return sum(values) / len(values) if values else None


def continual_report(matrix: Matrix, domains: Sequence[str],
                     base_losses: Sequence[float | None] | None = None, *,
                     serving: Sequence[Sequence[int]] | None = None,
                     budget_pct: float | None = None,
                     baseline_losses: Sequence[float] | None = None,
                     general: dict[str, Any] | None = None) -> dict[str, Any]:
    """Everything a run reports after its latest domain, as JSON-ready values.

    ``matrix`` is what each stage measured (modular: every domain with the then-current
    shared CRMA). With ``serving`` (modular: ``crma_core.serving.serving_history``), the
    reported ``matrix`` is the served one (each domain with the CRMA state that serves it)
    and the raw one is ``shared_matrix``; the report then leads with ``versus_baseline``
    (when ``baseline_losses`` are given), ``general_retention`` (``general``: base_loss,
    served and baseline losses) and ``serving`` (per domain: which state and why).

    Keys: domains, matrix (ragged), matrix_square (None above the diagonal), diagonal,
    drift_pct (per prior domain, by name), drift_mean_pct, bwt (loss-based, nats), and, when
    ``base_losses`` (the untrained base model's loss per holdout) are given, base_losses and
    own_improvement_pct = 100·(base_i − L[i][i]) / base_i, with ``warnings`` for stages
    that left their own domain worse than the base model (``stage_warnings``).
    """
    check_matrix(matrix)
    if len(domains) != len(matrix):
        raise ValueError(f"{len(domains)} domain names for {len(matrix)} matrix rows")
    shown = served_matrix(matrix, serving) if serving is not None else matrix
    report: dict[str, Any] = {"domains": list(domains)}
    if baseline_losses is not None:
        report["versus_baseline"] = versus_baseline(shown, baseline_losses, domains)
    if general is not None:
        report["general_retention"] = general_retention(
            general["base_loss"], general["served"], domains, general.get("baseline"))
    if serving is not None:
        report["drift_budget_pct"] = budget_pct
        report["serving"] = explain(matrix, serving, budget_pct, domains)
        report["decision_basis"] = DECISION_BASIS
    drifts = drift_pct(shown)
    report.update({
        "matrix": [list(row) for row in shown],
        "matrix_square": square_matrix(shown),
        "diagonal": [matrix[i][i] for i in range(len(matrix))],
        "drift_pct": {domains[i]: d for i, d in enumerate(drifts)},
        "drift_mean_pct": mean_drift_pct(shown),
        "bwt": backward_transfer(shown),
    })
    if serving is not None:
        report["shared_matrix"] = [list(row) for row in matrix]
        report["shared_drift_pct"] = {domains[i]: d for i, d in enumerate(drift_pct(matrix))}
        report["shared_drift_mean_pct"] = mean_drift_pct(matrix)
    if baseline_losses is not None:
        report["baseline_losses"] = list(baseline_losses)
    if base_losses is not None:
        report["base_losses"] = list(base_losses)
        report["own_improvement_pct"] = [
            None if base is None else -relative_change_pct(base, matrix[i][i])
            for i, base in enumerate(base_losses)]
        report["warnings"] = stage_warnings(report["own_improvement_pct"], domains)
    return report


def stage_warnings(own_improvement_pct: Sequence[float | None],
                   domains: Sequence[str]) -> list[dict[str, Any]]:
    """A stage that left its own domain worse than the untrained base model diverged: the
    drift budget guards earlier domains against later stages, not a stage's own result, so
    the report says so for the user to retrain or serve the baseline instead."""
    return [{"domain": domains[i], "code": "stage_worse_than_base_model",
             "own_improvement_pct": pct,
             "message": f"training on {domains[i]} left its holdout loss {-pct:.2f}% above "
                        "the untrained base model's: the stage diverged; retrain it (another "
                        "seed or a lower learning rate) or use the baseline LoRA for it"}
            for i, pct in enumerate(own_improvement_pct) if pct is not None and pct < 0]


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
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    import matplotlib.pyplot as plt

    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_versus_baseline(report: dict[str, Any], path: Path, *, title: str | None = None) -> Path:
    """Bar chart per domain of what CRMA adds over the per-domain LoRA baseline: forward
    (own loss after its stage) and backward (final served loss), in percent of the
    baseline's loss; positive = CRMA better. Needs ``report["versus_baseline"]``."""
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    import numpy as np

    versus = report["versus_baseline"]
    domains = report["domains"]
    forward = [versus["forward_pct"][d] for d in domains]
    backward = [versus["backward_pct"].get(d, np.nan) for d in domains]
    x = np.arange(len(domains))
    fig, ax = plt.subplots(figsize=(2.2 + 1.3 * len(domains), 3.8), dpi=110)
    ax.bar(x - 0.2, forward, 0.4, label="forward: own loss after its stage")
    ax.bar(x + 0.2, backward, 0.4, label="backward: final served loss")
    ax.axhline(0.0, color="black", lw=0.8)
    for xi, value in zip(list(x - 0.2) + list(x + 0.2), forward + backward):
        if np.isfinite(value):
            ax.text(xi, value, f"{value:+.2f}", ha="center",
                    va="bottom" if value >= 0 else "top", fontsize=8)
    ax.set_xticks(x, domains, rotation=20, ha="right")
    ax.set_ylabel("vs per-domain LoRA (%; > 0 = CRMA better)")
    ax.legend(fontsize=8)
    ax.set_title(title or "CRMA vs the per-domain LoRA baseline", fontsize=10)
    return _save(fig, path)
