"""Gradient clipping: ZClip (adaptive, z-score on an EMA of the norm), plain max-norm, or none,
applied per optimizer group (``PerGroupClip``, what ``make_clipper`` builds).

Each clips in place over a list of parameters (``norm``: their gradient norm when the caller
has it already) and return the L2 gradient norm *before* clipping (the number to log) and
whether clipping happened. Their state is a small dict of floats so checkpoints stay JSON.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch


def grad_norm(params: Iterable[torch.nn.Parameter]) -> float:
    """Global L2 norm over every gradient (per-tensor norms combined in float64)."""
    grads = [p.grad.detach() for p in params if p.grad is not None]
    if not grads:
        return 0.0
    # foreach: one kernel for all per-tensor norms instead of one call per parameter.
    norms = torch._foreach_norm(grads)
    return float(torch.linalg.vector_norm(torch.stack(norms).to(torch.float64)))


def scale_grads(params: Iterable[torch.nn.Parameter], norm: float, max_norm: float) -> bool:
    """Scale gradients so their global norm becomes ``max_norm``; True if scaled."""
    if not (norm > max_norm) or not math.isfinite(norm):
        return False
    factor = max_norm / (norm + 1e-6)
    torch._foreach_mul_([p.grad for p in params if p.grad is not None], factor)
    return True


# (group name, its parameters): what the optimizer step hands a clipper.
ParamGroups = Sequence[tuple[str, list[torch.nn.Parameter]]]


class _OneNorm:
    """A clipper over one norm: ``clip_groups`` clips every group's gradients together."""

    def clip_groups(self, groups: ParamGroups) -> tuple[float, bool]:
        return self.clip([p for _, params in groups for p in params])  # type: ignore[attr-defined]


class MaxNormClip(_OneNorm):
    """Classic clip-by-global-norm at a fixed ``max_grad_norm``."""

    def __init__(self, max_grad_norm: float = 1.0):
        self.max_grad_norm = max_grad_norm

    def clip(self, params: list[torch.nn.Parameter],
             norm: float | None = None) -> tuple[float, bool]:
        norm = grad_norm(params) if norm is None else norm
        return norm, scale_grads(params, norm, self.max_grad_norm)

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "max_norm", "max_grad_norm": self.max_grad_norm}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.max_grad_norm = float(state["max_grad_norm"])


class NoClip(_OneNorm):
    """No clipping; the norm is still measured (for the metrics and the non-finite check)."""

    def clip(self, params: list[torch.nn.Parameter],
             norm: float | None = None) -> tuple[float, bool]:
        return (grad_norm(params) if norm is None else norm), False

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "none"}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


@dataclass
class ZClip(_OneNorm):
    """ZClip (Kumar et al. 2025, arXiv 2504.02507), z-score mode with adaptive scaling.

    First ``warmup_steps`` steps: clip at the fixed ``max_grad_norm`` and collect the norms;
    then μ and v start from their mean and (population) variance. Afterwards, with
    z = (g − μ)/(√v + eps): if z > z_thresh the target norm is
    min(μ + z_thresh·√v/(z/z_thresh), max_grad_norm) (larger outliers clipped harder);
    otherwise nothing is clipped. The EMA (α = ``alpha``) is updated with the norm after
    clipping: μ ← αμ + (1−α)g', v ← αv + (1−α)(g' − μ)².
    """

    alpha: float = 0.97
    z_thresh: float = 2.5
    max_grad_norm: float | None = 1.0
    warmup_steps: int = 25
    eps: float = 1e-6
    step_count: int = 0
    mean: float | None = None
    var: float | None = None
    buffer: list[float] = field(default_factory=list)

    def threshold(self, norm: float) -> float | None:
        """The norm to clip to for an observed ``norm``, or None for no clipping."""
        if self.step_count < self.warmup_steps or self.mean is None:
            return self.max_grad_norm
        std = math.sqrt(max(self.var or 0.0, 0.0))
        z = (norm - self.mean) / (std + self.eps)
        if z <= self.z_thresh:
            return None
        target = self.mean + (self.z_thresh * std) / (z / self.z_thresh)
        if self.max_grad_norm is not None:
            target = min(target, self.max_grad_norm)
        return target

    def observe(self, norm: float) -> tuple[float, bool]:
        """Advance the statistics for a step with pre-clip ``norm``.

        Returns (target norm after clipping, clipped?). Split from ``clip`` so the rule can be
        tested on plain numbers.
        """
        target = self.threshold(norm)
        clipped = target is not None and math.isfinite(norm) and norm > target
        effective = target if clipped else norm
        if not math.isfinite(effective):
            # A NaN/inf step must not poison the statistics; the caller skips the update.
            self.step_count += 1
            return effective, clipped
        if self.step_count < self.warmup_steps:
            self.buffer.append(norm)
            if len(self.buffer) == self.warmup_steps:
                n = len(self.buffer)
                self.mean = sum(self.buffer) / n
                self.var = sum((x - self.mean) ** 2 for x in self.buffer) / n
                self.buffer = []
        else:
            self.mean = self.alpha * self.mean + (1 - self.alpha) * effective
            self.var = self.alpha * self.var + (1 - self.alpha) * (effective - self.mean) ** 2
        self.step_count += 1
        return effective, clipped

    def clip(self, params: list[torch.nn.Parameter],
             norm: float | None = None) -> tuple[float, bool]:
        norm = grad_norm(params) if norm is None else norm
        target, clipped = self.observe(norm)
        if clipped:
            scale_grads(params, norm, target)
        return norm, clipped

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "zclip", "alpha": self.alpha, "z_thresh": self.z_thresh,
                "max_grad_norm": self.max_grad_norm, "warmup_steps": self.warmup_steps,
                "eps": self.eps, "step_count": self.step_count, "mean": self.mean,
                "var": self.var, "buffer": list(self.buffer)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for key in ("alpha", "z_thresh", "max_grad_norm", "warmup_steps", "eps", "step_count",
                    "mean", "var"):
            setattr(self, key, state[key])
        self.buffer = [float(x) for x in state["buffer"]]


Clipper = ZClip | MaxNormClip | NoClip


class PerGroupClip:
    """One clipper per optimizer group (LoRA, CRMA read/write, mixing, gate), each clipping
    its group's gradients on that group's own norm.

    Why not one global norm: the group with the largest gradients then sets the scale for
    all. CRMA's read/write projections see the raw residual stream and their gradient norm
    runs about four times the LoRA's, so under a global clip the LoRA normally got a quarter of
    the allowed norm, while a LoRA gradient spike (which dominates the global norm) went
    through at the full norm: a step about four times the LoRA's usual. A continual stage on
    SmolLM2 diverged that way (docs/benchmarks.md). An optimizer with one group (LoRA only)
    clips exactly as the global rule did. The logged norm stays the global one.
    """

    def __init__(self, make: Callable[[], Clipper]):
        self._make = make
        self.clippers: dict[str, Clipper] = {}
        self._inherited: dict[str, Any] | None = None

    def _for(self, name: str) -> Clipper:
        if name not in self.clippers:
            clipper = self._make()
            if self._inherited is not None:
                clipper.load_state_dict(self._inherited)
            self.clippers[name] = clipper
        return self.clippers[name]

    def clip_groups(self, groups: ParamGroups) -> tuple[float, bool]:
        squares, clipped = 0.0, False
        for name, params in groups:
            norm = grad_norm(params)
            squares += norm * norm
            clipped = self._for(name).clip(params, norm)[1] or clipped
        return math.sqrt(squares), clipped

    def state_dict(self) -> dict[str, Any]:
        return {"kind": "per_group",
                "groups": {name: c.state_dict() for name, c in self.clippers.items()}}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if state.get("kind") != "per_group":
            # A checkpoint from before per-group clipping holds one global clipper: every
            # group continues from its statistics.
            self.clippers, self._inherited = {}, state
            return
        self.clippers, self._inherited = {}, None
        for name, group_state in state["groups"].items():
            self._for(name).load_state_dict(group_state)


def make_clipper(kind: str, max_grad_norm: float | None) -> PerGroupClip:
    """The recipe's clipper: "zclip" (default), "max_norm" or "none", per optimizer group."""
    one_clipper(kind, max_grad_norm)  # a bad kind fails here, not at the first step
    return PerGroupClip(lambda: one_clipper(kind, max_grad_norm))


def one_clipper(kind: str, max_grad_norm: float | None) -> Clipper:
    """"zclip", "max_norm" or "none" over one norm."""
    if kind == "zclip":
        return ZClip(max_grad_norm=max_grad_norm)
    if kind == "max_norm":
        if max_grad_norm is None:
            raise ValueError("max_norm clipping needs max_grad_norm")
        return MaxNormClip(max_grad_norm)
    if kind == "none":
        return NoClip()
    raise ValueError(f"clip must be 'zclip', 'max_norm' or 'none', got {kind!r}")
