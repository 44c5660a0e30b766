"""torch.compile for training (``TrainConfig.compile``), regional so hooks and peft keep working.

What gets compiled, and why this way:
- each decoder layer's ``forward`` (peft's LoRA layers inside it). Regional compilation: the
  layers share their code and their parameters are graph inputs, so one compiled graph
  serves every layer (two: the first layer's input needs no gradient) and compile time is
  one layer's, not the whole model's. Forward hooks stay outside the compiled region, so
  attaching, removing or disabling CRMA never recompiles a layer. (Compiling a layer
  *with* its hooks would recompile per layer: each CRMA hook closes over its own layer
  index, and dynamo specialises on it.)
- CRMA's per-layer adapter (read, mixed write, residual add; ``CRMAHandle.adapter_fn``):
  fused, and the partitioner saves the bf16 input for backward instead of its float32 copy.
- CRMA's batched Sinkhorn (``CRMAHandle.mixing_fn``), in compiled blocks of
  ``sinkhorn_iters`` iterations: eager, one forward + backward is ~430 tiny ops (~5 ms of
  launches per step on a GPU); the tolerance check between blocks stays a host sync,
  exactly as in ``crma_core.mixing.sinkhorn``, whose arithmetic this repeats.
- the LM-head loss's per-chunk arithmetic (``crma_core.loss.LossOptions.compile_backend``,
  set by the recipe).

Everything stays numerically the same function (tests/crma_core/test_crma_perf_compile.py).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from crma_core.config import CRMAConfig
from crma_core.layer import apply_adapter
from crma_core.model import CRMAHandle, find_decoder

DEFAULT_BACKEND = "inductor"
_MARK = "_crma_compiled_forward"
_DTYPES = {"float32": torch.float32, "float64": torch.float64}
# Graphs per layer forward: train/eval × first layer or not × static/dynamic shapes, and
# Gemma-2's alternating sliding/full attention doubles it. Dynamo's default of 8 would
# silently fall back to eager for the rest.
_RECOMPILE_LIMIT = 32


def compile_for_training(model: nn.Module, crma: CRMAHandle | None = None, *,
                         backend: str | None = None) -> None:
    """Compile ``model``'s decoder layers (and ``crma``'s adapter and Sinkhorn) in place.

    Idempotent; the model's parameters, state dict and peft adapters are untouched (only
    each layer's ``forward`` attribute is replaced by a compiled wrapper of itself).
    ``backend`` defaults to inductor; "aot_eager" checks graph capture without codegen.
    """
    backend = backend or DEFAULT_BACKEND
    _raise_recompile_limit()
    for layer in find_decoder(model).layers:
        if getattr(layer, _MARK, None) is None:
            original = layer.forward
            layer.forward = torch.compile(original, backend=backend)
            object.__setattr__(layer, _MARK, original)
    if crma is not None:
        compile_crma(crma, backend=backend)


def uncompile(model: nn.Module, crma: CRMAHandle | None = None) -> None:
    """Undo ``compile_for_training`` (eager layers, eager CRMA functions)."""
    from crma_core.layer import mixing_matrices

    for layer in find_decoder(model).layers:
        original = getattr(layer, _MARK, None)
        if original is not None:
            del layer.forward
            object.__setattr__(layer, _MARK, None)
    if crma is not None:
        crma.adapter_fn = apply_adapter
        crma.mixing_fn = mixing_matrices


def compile_crma(crma: CRMAHandle, *, backend: str | None = None) -> None:
    """Swap the handle's adapter and Sinkhorn for compiled versions of the same functions."""
    backend = backend or DEFAULT_BACKEND
    crma.adapter_fn = torch.compile(apply_adapter, backend=backend)
    crma.mixing_fn = CompiledMixing(backend)


def _raise_recompile_limit() -> None:
    config = torch._dynamo.config
    name = "recompile_limit" if hasattr(config, "recompile_limit") else "cache_size_limit"
    if getattr(config, name) < _RECOMPILE_LIMIT:
        setattr(config, name, _RECOMPILE_LIMIT)


def sinkhorn_block(log_k: torch.Tensor, u: torch.Tensor, v: torch.Tensor,
                   iters: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``iters`` row/column log-normalisations (as in ``crma_core.mixing.sinkhorn``).

    Returns (u, v, M = exp(log_k + u + v), largest |row sum − 1| of M, no gradient).
    """
    for _ in range(iters):
        u = -torch.logsumexp(log_k + v.unsqueeze(-2), dim=-1)
        v = -torch.logsumexp(log_k + u.unsqueeze(-1), dim=-2)
    m = (log_k + u.unsqueeze(-1) + v.unsqueeze(-2)).exp()
    row_error = (m.detach().sum(-1) - 1).abs().amax()
    return u, v, m, row_error


class CompiledMixing:
    """Drop-in for ``crma_core.layer.mixing_matrices`` with compiled Sinkhorn blocks.

    Same iteration, same stopping rule: blocks of ``sinkhorn_iters`` until the row error is
    within ``sinkhorn_tol`` or another block would pass ``sinkhorn_max_iters``.
    """

    def __init__(self, backend: str = DEFAULT_BACKEND):
        self.backend = backend
        self.block = torch.compile(sinkhorn_block, backend=backend)

    def __call__(self, log_mix: torch.Tensor, config: CRMAConfig) -> torch.Tensor:
        dtype = _DTYPES[config.sinkhorn_dtype]
        log_k = log_mix.to(dtype) / config.tau
        u = torch.zeros(log_k.shape[:-1], dtype=dtype, device=log_k.device)
        v = torch.zeros_like(u)
        done = 0
        while True:
            u, v, m, row_error = self.block(log_k, u, v, config.sinkhorn_iters)
            done += config.sinkhorn_iters
            if config.sinkhorn_tol is None or done + config.sinkhorn_iters > config.sinkhorn_max_iters:
                break
            if row_error.item() <= config.sinkhorn_tol:
                break
        return m.to(torch.float32)

    def __repr__(self) -> str:  # shows in handle dumps
        return f"CompiledMixing(backend={self.backend!r})"


def is_compiled(model: nn.Module) -> bool:
    """Whether ``compile_for_training`` has compiled this model's decoder layers."""
    return all(getattr(layer, _MARK, None) is not None for layer in find_decoder(model).layers)


def describe(model: nn.Module, crma: CRMAHandle | None = None) -> dict[str, Any]:
    """What is compiled (for logs and the benchmark's JSON)."""
    return {
        "layers": is_compiled(model),
        "crma_adapter": crma is not None and crma.adapter_fn is not apply_adapter,
        "crma_sinkhorn": crma is not None and isinstance(crma.mixing_fn, CompiledMixing),
    }
