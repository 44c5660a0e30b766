"""AdamW with the recipe's four parameter groups, and the learning-rate schedule."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

GROUP_NAMES = ("main", "rw", "mix", "gate")


def make_optimizer(*, main: Sequence[nn.Parameter], rw: Sequence[nn.Parameter] = (),
                   mix: Sequence[nn.Parameter] = (), gate: Sequence[nn.Parameter] = (),
                   lr_main: float = 2e-4, lr_rw: float | None = None, lr_mix: float = 1e-3,
                   lr_gate: float = 1e-4, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW over up to four groups, each tagged with ``name`` and its ``base_lr``.

    main: LoRA A/B; rw: CRMA read/write (both with weight decay ``weight_decay``); mix: CRMA
    log_mix; gate: CRMA _log_alpha. mix and gate never get weight decay (it would pull M
    toward the uniform matrix and α toward 1). ``lr_rw`` None means TrainConfig's default.
    Empty groups are left out.
    """
    if lr_rw is None:
        from crma_core.settings import TrainConfig

        lr_rw = TrainConfig.lr_rw
    groups = [
        {"name": "main", "params": list(main), "lr": lr_main, "base_lr": lr_main,
         "weight_decay": weight_decay},
        {"name": "rw", "params": list(rw), "lr": lr_rw, "base_lr": lr_rw,
         "weight_decay": weight_decay},
        {"name": "mix", "params": list(mix), "lr": lr_mix, "base_lr": lr_mix, "weight_decay": 0.0},
        {"name": "gate", "params": list(gate), "lr": lr_gate, "base_lr": lr_gate,
         "weight_decay": 0.0},
    ]
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ValueError("no trainable parameters")
    # foreach: one fused kernel per op over hundreds of small LoRA tensors (CPU too).
    return torch.optim.AdamW(groups, foreach=True)


def trainable_parameters(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """Every parameter the optimizer updates, in group order."""
    return [p for group in optimizer.param_groups for p in group["params"]]


def lr_factor(step: int, *, total_steps: int, warmup_steps: int = 0,
              schedule: str = "linear") -> float:
    """Multiplier of the base learning rate for optimizer step ``step`` (0-based)."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant" or total_steps <= warmup_steps:
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    if schedule == "linear":
        return 1.0 - progress
    if schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    raise ValueError(f"unknown schedule {schedule!r}")


def set_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = group["base_lr"] * factor
