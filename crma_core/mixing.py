"""Sinkhorn in the log domain: (..., n, n) logits → doubly stochastic mixing matrices."""

from __future__ import annotations

import torch


def sinkhorn(
    logits: torch.Tensor,
    iters: int = 20,
    *,
    tau: float = 1.0,
    tol: float | None = None,
    max_iters: int = 1000,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Doubly stochastic matrices from logits, batched over leading dimensions.

    logits: (..., n, n). Returns (..., n, n) in ``dtype`` (float32 or wider), with every
    column summing to 1 up to rounding and every row to within the convergence error.

    Runs ``iters`` alternating row/column log-normalisations, each subtracting a logsumexp
    (so large logits never overflow). If ``tol`` is set, it keeps iterating in blocks of
    ``iters`` until the largest row-sum error is <= tol or ``max_iters`` is reached; this
    costs one host sync per block, and makes peaked learned logits converge. Differentiable
    (autograd unrolls the iterations).
    """
    if logits.dim() < 2 or logits.shape[-1] != logits.shape[-2]:
        raise ValueError(f"expected (..., n, n) logits, got shape {tuple(logits.shape)}")
    if dtype not in (torch.float32, torch.float64):
        raise ValueError("Sinkhorn must run in float32 or float64")
    log_k = logits.to(dtype) / tau
    u = torch.zeros(log_k.shape[:-1], dtype=dtype, device=log_k.device)  # row potentials
    v = torch.zeros_like(u)  # column potentials
    done = 0
    while True:
        for _ in range(iters):
            u = -torch.logsumexp(log_k + v.unsqueeze(-2), dim=-1)
            v = -torch.logsumexp(log_k + u.unsqueeze(-1), dim=-2)
        done += iters
        log_m = log_k + u.unsqueeze(-1) + v.unsqueeze(-2)
        if tol is None or done + iters > max_iters:
            break
        with torch.no_grad():
            row_error = (log_m.exp().sum(-1) - 1).abs().max().item()
        if row_error <= tol:
            break
    return log_m.exp()


def marginal_error(m: torch.Tensor) -> torch.Tensor:
    """Largest |row sum − 1| or |column sum − 1| of each (..., n, n) matrix → (...)."""
    rows = (m.sum(-1) - 1).abs().amax(-1)
    cols = (m.sum(-2) - 1).abs().amax(-1)
    return torch.maximum(rows, cols)
