"""What the training loop reports, and the hooks a caller injects (progress, stop, checkpoint,
memory)."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class StepMetrics:
    """One optimizer step. ``loss`` is the mean cross-entropy over every scored token of the
    (effective) batch and ``mean_token_accuracy`` the share of them whose arg-max logit is
    the target (OpenAI's ``train_loss`` / ``train_mean_token_accuracy``). ``grad_norm`` is
    the global norm before clipping; ``crma`` holds per-layer ``spectral_norm``,
    ``marginal_error`` and ``alpha`` lists (None without CRMA). The batch ran as
    ``accumulation_steps`` passes of at most ``micro_batch_size`` rows."""

    step: int
    epoch: int
    loss: float
    lr: float
    grad_norm: float
    clipped: bool
    tokens_per_s: float
    trained_tokens: int
    crma: dict[str, Any] | None = None
    mean_token_accuracy: float | None = None
    scored_tokens: int = 0
    micro_batch_size: int | None = None
    accumulation_steps: int = 1

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl line: every field, plus OpenAI's names for the loss and the
        accuracy (``train_loss``, ``train_mean_token_accuracy``)."""
        return {"type": "step", **self.to_dict(), "train_loss": self.loss,
                "train_mean_token_accuracy": self.mean_token_accuracy}


@dataclass(frozen=True)
class EvalMetrics:
    """The whole validation file after ``step`` steps: mean response-token cross-entropy
    and mean token accuracy (OpenAI's ``valid_loss`` / ``valid_mean_token_accuracy``).
    ``is_best``: the lowest validation loss of the run so far."""

    step: int
    val_loss: float
    val_mean_token_accuracy: float | None = None
    is_best: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def record(self) -> dict[str, Any]:
        """The metrics.jsonl line: every field, plus OpenAI's names (``valid_loss``,
        ``valid_mean_token_accuracy``)."""
        return {"type": "eval", **self.to_dict(), "valid_loss": self.val_loss,
                "valid_mean_token_accuracy": self.val_mean_token_accuracy}


@dataclass(frozen=True)
class MemoryEvent:
    """A training pass did not fit in memory (``torch.OutOfMemoryError`` on a GPU, or over
    ``TrainConfig.memory_budget_mb``): step ``step`` is retried from the start with
    ``micro_batch_size`` rows per pass instead of ``previous``."""

    step: int
    previous: int
    micro_batch_size: int
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class CheckpointMetrics:
    """A checkpoint's metrics under OpenAI's names (``fine_tuning.job.checkpoint.metrics``).

    train_*: the step that ends at the checkpoint; valid_*: the validation file scored at
    that step (None when no evaluation ran there); full_valid_*: the final model on the
    whole validation file (the run's last checkpoint only). ``is_best``: its valid_loss is
    the lowest so far.
    """

    step: int
    train_loss: float | None
    train_mean_token_accuracy: float | None
    valid_loss: float | None = None
    valid_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    is_best: bool = False

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of_state(cls, state: Any, *, total_steps: int) -> CheckpointMetrics:
        """The metrics of a run's current step (``state``: a crma_core.loop.LoopState);
        full_valid_* only when the last planned step has just been evaluated."""
        scored = state.step > 0 and state.last_eval_step == state.step
        final = scored and state.step == total_steps
        return cls(
            step=state.step, train_loss=state.last_loss,
            train_mean_token_accuracy=state.last_accuracy,
            valid_loss=state.last_val_loss if scored else None,
            valid_mean_token_accuracy=state.last_val_accuracy if scored else None,
            full_valid_loss=state.last_val_loss if final else None,
            full_valid_mean_token_accuracy=state.last_val_accuracy if final else None,
            is_best=scored and state.best_step == state.step)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CheckpointMetrics:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


@dataclass
class TrainCallbacks:
    """Optional hooks. ``should_stop`` is polled before every step and returns a reason
    (e.g. "cancelled", "budget") to stop cleanly; ``on_checkpoint(step, directory)`` gets a
    freshly written checkpoint directory that is deleted after the call returns (its
    ``checkpoint_metrics.json`` holds the CheckpointMetrics); ``on_memory`` hears of every
    micro-batch halving after an out-of-memory pass."""

    on_step: Callable[[StepMetrics], None] | None = None
    on_eval: Callable[[EvalMetrics], None] | None = None
    should_stop: Callable[[], str | None] | None = None
    on_checkpoint: Callable[[int, Path], None] | None = None
    on_memory: Callable[[MemoryEvent], None] | None = None


STOP_REASONS = ("completed", "cancelled", "budget", "max_steps")
CHECKPOINT_METRICS = "checkpoint_metrics.json"  # in every checkpoint directory


@dataclass(frozen=True)
class TrainResult:
    """How a ``Recipe.train()`` call ended. Losses are None when never measured.

    full_valid_*: the final model on the whole validation file (OpenAI's names);
    full_valid_loss_lora_only: the same with CRMA switched off, i.e. what loading the LoRA
    alone in peft gives (None without CRMA). best_*: the evaluation with the lowest
    validation loss (``Recipe.export_artifacts`` writes those weights under ``best/`` when
    they are not the final ones). train_seconds / train_cpu_seconds: wall time and process
    CPU time (all threads) of the training loop.
    """

    stop_reason: str | None
    steps: int
    trained_tokens: int
    final_train_loss: float | None
    final_val_loss: float | None
    peak_grad_norm: float | None
    mean_grad_norm: float | None
    final_train_mean_token_accuracy: float | None = None
    full_valid_loss: float | None = None
    full_valid_mean_token_accuracy: float | None = None
    full_valid_loss_lora_only: float | None = None
    best_step: int | None = None
    best_valid_loss: float | None = None
    micro_batch_size: int | None = None
    train_seconds: float = 0.0
    train_cpu_seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def of_state(cls, state: Any, *, stop_reason: str | None, validated: bool,
                 lora_only: float | None = None, train_seconds: float = 0.0,
                 train_cpu_seconds: float = 0.0) -> TrainResult:
        """From a crma_core.loop.LoopState; ``validated``: the last evaluation scored the
        final model on the whole validation file."""
        full = validated and state.step > 0
        return cls(
            stop_reason=stop_reason, steps=state.step, trained_tokens=state.trained_tokens,
            final_train_loss=state.last_loss, final_val_loss=state.last_val_loss,
            peak_grad_norm=state.grad_norm_peak, mean_grad_norm=state.mean_grad_norm,
            final_train_mean_token_accuracy=state.last_accuracy,
            full_valid_loss=state.last_val_loss if full else None,
            full_valid_mean_token_accuracy=state.last_val_accuracy if full else None,
            full_valid_loss_lora_only=lora_only, best_step=state.best_step,
            best_valid_loss=state.best_val_loss, micro_batch_size=state.micro_batch_size,
            train_seconds=train_seconds, train_cpu_seconds=train_cpu_seconds)

    def summary(self) -> dict[str, Any]:
        """The run's results under OpenAI's names (metrics.jsonl's summary, the manifest)."""
        return {"step": self.steps, "train_loss": self.final_train_loss,
                "train_mean_token_accuracy": self.final_train_mean_token_accuracy,
                "full_valid_loss": self.full_valid_loss,
                "full_valid_mean_token_accuracy": self.full_valid_mean_token_accuracy,
                "full_valid_loss_lora_only": self.full_valid_loss_lora_only,
                "best_step": self.best_step, "best_valid_loss": self.best_valid_loss}
