"""Which CRMA state serves each domain of a modular continual run: the drift budget (no torch).

Every domain i keeps its own LoRA. After stage t the shared CRMA is CRMA_t (it keeps
training through every domain); CRMA_s is the snapshot taken after stage s. Domain i can be
served with its LoRA and any snapshot CRMA_s with i ≤ s ≤ t, whose holdout loss is L[s][i]
(measured after stage s; neither that LoRA nor that snapshot changes later, and scoring is
deterministic, so the loss is the same whenever it is computed again).

The rule, after every stage t, for every earlier domain i < t (``budget`` in percent):

    drift_t(i) = 100 · (L[t][i] − L[i][i]) / L[i][i]      (the shared CRMA's drift)
    serve CRMA_t            if drift_t(i) ≤ budget   (one CRMA for every domain that takes
                                                      it: simpler to serve; newest state)
    keep last stage's state otherwise                (it was within budget when chosen)

Domain t itself is served by CRMA_t (the state its own stage ended with, loss L[t][t]). By
induction every domain's served drift is ≤ budget, and exactly 0 where it is still served by
its own snapshot CRMA_i. The decision reads the losses of the run's holdouts: the same
numbers the report shows (see ``decision_basis``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

Matrix = Sequence[Sequence[float]]

DECISION_BASIS = (
    "each domain's holdout loss as the loss matrix reports it: the guard is exact on those "
    "numbers, and they are also the ones it selected on (a served shared state is one whose "
    "holdout drift was within budget)")


def drift_of(matrix: Matrix, stage: int, domain: int) -> float:
    """100·(L[stage][domain] − L[domain][domain]) / L[domain][domain]."""
    own = matrix[domain][domain]
    return 100.0 * (matrix[stage][domain] - own) / own


def choose_serving(matrix: Matrix, previous: Sequence[int] | None,
                   budget_pct: float) -> list[int]:
    """The stage whose CRMA snapshot serves each domain after the matrix's last stage.

    ``previous`` is the result for the matrix without its last row (None for one row)."""
    t = len(matrix) - 1
    if t == 0:
        return [0]
    if previous is None or len(previous) != t:
        raise ValueError(f"need the serving of the {t} earlier domains")
    served = []
    for i in range(t):
        served.append(t if drift_of(matrix, t, i) <= budget_pct else previous[i])
    return served + [t]


def serving_history(matrix: Matrix, budget_pct: float) -> list[list[int]]:
    """``choose_serving`` after every stage: row t lists the serving stage of domains 0..t."""
    history: list[list[int]] = []
    for t in range(len(matrix)):
        history.append(choose_serving(matrix[: t + 1], history[-1] if history else None,
                                      budget_pct))
    return history


def served_matrix(matrix: Matrix, history: Sequence[Sequence[int]]) -> list[list[float]]:
    """S[t][i] = L[history[t][i]][i]: each domain's loss with the pair that serves it."""
    return [[matrix[s][i] for i, s in enumerate(row)] for row in history]


def explain(matrix: Matrix, history: Sequence[Sequence[int]], budget_pct: float,
            names: Sequence[str]) -> list[dict[str, Any]]:
    """Per domain after the last stage: which CRMA state serves it and why."""
    t = len(matrix) - 1
    out = []
    for i, s in enumerate(history[-1]):
        shared = drift_of(matrix, t, i)
        served = drift_of(matrix, s, i)
        if i == t:
            reason = "the newest domain: served by the state its own stage ended with"
        elif s == t:
            reason = (f"the shared CRMA stays within the {budget_pct:g}% budget "
                      f"({shared:+.3f}%): one CRMA serves every such domain")
        elif s == i:
            reason = (f"the shared CRMA would drift {shared:+.3f}% (over the {budget_pct:g}% "
                      "budget): served by the CRMA its own stage ended with (drift 0)")
        else:
            reason = (f"the shared CRMA would drift {shared:+.3f}% (over the {budget_pct:g}% "
                      f"budget): kept the CRMA after stage {s} ({names[s]}), chosen when it was "
                      f"the shared one ({served:+.3f}%)")
        out.append({"domain": names[i], "index": i, "crma_stage": s,
                    "crma_state": "shared" if s == t else ("own" if s == i else "earlier"),
                    "loss": matrix[s][i], "drift_pct": served, "shared_drift_pct": shared,
                    "reason": reason})
    return out
