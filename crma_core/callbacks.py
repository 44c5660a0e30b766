"""What the training loop reports, and the hooks a caller injects (progress, stop, checkpoint)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step. ``grad_norm`` is the global norm before clipping; ``crma`` holds
    per-layer ``spectral_norm``, ``marginal_error`` and ``alpha`` lists (None without CRMA)."""

    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    clipped: bool
    tokens_per_s: float
    trained_tokens: int
    crma: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class EvalMetrics:
    """Validation loss (mean response-token cross-entropy) after ``step`` steps."""

    step: int
    val_loss: float

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class TrainCallbacks:
    """Optional hooks. ``should_stop`` is polled before every step and returns a reason
    (e.g. "cancelled", "budget") to stop cleanly; ``on_checkpoint(step, directory)`` gets a
    freshly written checkpoint directory that is deleted after the call returns."""

    on_step: Callable[[StepMetrics], None] | None = None
    on_eval: Callable[[EvalMetrics], None] | None = None
    should_stop: Callable[[], str | None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None


STOP_REASONS = ("completed", "cancelled", "budget", "max_steps")


@dataclass(frozen=True)
class TrainResult:
    """How a ``Recipe.train()`` call ended. Losses are None when never measured."""

    stop_reason: str
    steps: int
    trained_tokens: int
    final_train_loss: float | None
    final_val_loss: float | None
    peak_grad_norm: float | None
    mean_grad_norm: float | None

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)
