"""CRMALayer: the adapter of one decoder layer (read, Sinkhorn stream mixing, gated write)."""

from __future__ import annotations

import math

import torch
from torch import nn

from crma_core.config import CRMAConfig
from crma_core.mixing import sinkhorn


def _torch_dtype(name: str) -> torch.dtype:
    return {"float32": torch.float32, "float64": torch.float64}[name]


class CRMALayer(nn.Module):
    """One CRMA adapter on a hidden state of width d (all parameters float32).

    Parameters: ``read`` R (d×K), ``write`` W (K×d), ``log_mix`` Λ (n×n),
    ``_log_alpha`` a (scalar); K = n·r.

    forward(h) for h (B×T×d, any float dtype):
        Z = (h @ R).view(B, T, n, r);  M = sinkhorn(Λ);  Z' = einsum("ij,btjr->btir", M, Z)
        h' = h + (exp(a) · Z'.view(B, T, K) @ W).to(h.dtype)
    computed as h + (h @ R) @ Wm with Wm = exp(a)·(Mᵀ ⊗ I_r)·W (K×d), the same linear map
    with one small matmul instead of an einsum over B×T (see ``mixed_write``).
    """

    def __init__(self, hidden_size: int, config: CRMAConfig, *, generator: torch.Generator | None = None):
        super().__init__()
        self.config = config
        self.hidden_size = hidden_size
        k = config.width
        self.read = nn.Parameter(torch.empty(hidden_size, k, dtype=torch.float32))
        self.write = nn.Parameter(torch.zeros(k, hidden_size, dtype=torch.float32))
        self.log_mix = nn.Parameter(torch.empty(config.n, config.n, dtype=torch.float32))
        self._log_alpha = nn.Parameter(torch.zeros((), dtype=torch.float32))
        self.reset_parameters(generator=generator)

    @torch.no_grad()
    def reset_parameters(self, *, generator: torch.Generator | None = None) -> None:
        """R orthonormal columns (QR of a Gaussian), Λ = κ·I, a = 0, W = 0 or tiny noise."""
        d, k = self.read.shape
        gaussian = torch.randn(d, k, dtype=torch.float64, generator=generator)
        q, r = torch.linalg.qr(gaussian)
        # Fix QR's sign ambiguity so the init depends only on the Gaussian draw.
        q = q * torch.sign(torch.diagonal(r)).where(torch.diagonal(r) != 0, torch.ones(()))
        self.read.copy_(q.to(torch.float32))
        self.log_mix.copy_(self.config.mix_init * torch.eye(self.config.n))
        self._log_alpha.zero_()
        if self.config.init == "identity":
            self.write.zero_()
        else:
            noise = torch.randn(self.write.shape, dtype=torch.float32, generator=generator)
            self.write.copy_(noise * self.config.near_identity_std)

    def alpha(self) -> torch.Tensor:
        """α = exp(a) > 0 (clamped to alpha_max if configured), float32 scalar."""
        return gate(self._log_alpha, self.config)

    def mixing_matrix(self) -> torch.Tensor:
        """M = sinkhorn(Λ), (n×n) float32 (computed in the configured wider dtype)."""
        return mixing_matrices(self.log_mix.unsqueeze(0), self.config)[0]

    def mixed_write(self, m: torch.Tensor) -> torch.Tensor:
        """Wm = α·(Mᵀ ⊗ I_r)·W, (K×d) float32, for a given M (n×n)."""
        return mixed_writes(m.unsqueeze(0), self.write.unsqueeze(0),
                            self._log_alpha.unsqueeze(0), self.config)[0]

    def forward(self, h: torch.Tensor, wm: torch.Tensor | None = None) -> torch.Tensor:
        """h (B×T×d) → h' (same shape and dtype). ``wm`` is a precomputed ``mixed_write``."""
        if wm is None:
            wm = self.mixed_write(self.mixing_matrix())
        return apply_adapter(h, self.read, wm)


def gate(log_alpha: torch.Tensor, config: CRMAConfig) -> torch.Tensor:
    """exp(a), optionally clamped at alpha_max (works elementwise on stacked gates)."""
    if config.alpha_max is not None:
        log_alpha = log_alpha.clamp(max=math.log(config.alpha_max))
    return log_alpha.exp()


def mixing_matrices(log_mix: torch.Tensor, config: CRMAConfig) -> torch.Tensor:
    """(L×n×n) logits → (L×n×n) float32 doubly stochastic matrices, in one batched Sinkhorn."""
    m = sinkhorn(log_mix, config.sinkhorn_iters, tau=config.tau, tol=config.sinkhorn_tol,
                 max_iters=config.sinkhorn_max_iters, dtype=_torch_dtype(config.sinkhorn_dtype))
    return m.to(torch.float32)


def mixed_writes(m: torch.Tensor, write: torch.Tensor, log_alpha: torch.Tensor,
                 config: CRMAConfig) -> torch.Tensor:
    """Fold mixing and gate into the write weights for all layers at once.

    m (L×n×n), write (L×K×d), log_alpha (L) → (L×K×d). Row-vector convention: mixing the
    streams is z' = z·(Mᵀ ⊗ I_r), so Δ = z'·W = z·((Mᵀ ⊗ I_r)·W).
    """
    r = config.r
    mix_t = m.transpose(-1, -2)
    if r > 1:
        eye = torch.eye(r, dtype=m.dtype, device=m.device)
        mix_t = torch.einsum("lij,st->lisjt", mix_t, eye).reshape(m.shape[0], config.width, config.width)
    alpha = gate(log_alpha, config).to(write.dtype)
    return torch.bmm(mix_t.to(write.dtype), write) * alpha[:, None, None]


def apply_adapter(h: torch.Tensor, read: torch.Tensor, wm: torch.Tensor) -> torch.Tensor:
    """h + ((h @ R) @ Wm) in float32, cast back to h's dtype only for the residual add."""
    if wm.device != h.device:
        wm = wm.to(h.device)
    shape = h.shape
    h2 = h.reshape(-1, shape[-1])
    if h.dtype == torch.float32:
        # One fused BLAS call for the write-back and the residual add.
        return torch.addmm(h2, h2 @ read, wm).view(shape)
    z = h2.to(torch.float32) @ read
    return (h2 + (z @ wm).to(h.dtype)).view(shape)
