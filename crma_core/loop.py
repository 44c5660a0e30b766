"""The training loop written out in full: loss, step, evaluation, and the loop over batches.

Each piece is a plain function so other runners (continual learning) reuse them with their
own model, parameter sets and data.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from crma_core.callbacks import EvalMetrics, StepMetrics, TrainCallbacks
from crma_core.data import IGNORE_INDEX, Example, epoch_batches
from crma_core.loss import LossOptions, lm_head_loss
from crma_core.optim import lr_factor, set_learning_rates, trainable_parameters
from crma_core.settings import planned_steps

_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def loss_terms(model: nn.Module, batch: dict[str, torch.Tensor],
               options: LossOptions = LossOptions()) -> tuple[torch.Tensor, int]:
    """(sum of response-token cross-entropies, number of scored tokens) for one batch.

    Runs the decoder, then the LM head only at positions whose next token is trained (the
    head over a 49k vocabulary costs as much as a small model's body, and masked prompt
    positions need no logits), in token chunks (``crma_core.loss``: peak logits memory is
    one chunk's). Matches the model's own loss, Gemma-2 soft-capping included.
    """
    lm = _causal_lm(model)
    device = next(lm.parameters()).device
    inputs = {k: batch[k].to(device) for k in _MODEL_INPUTS if k in batch}
    targets = batch["labels"][:, 1:].to(device)
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1]
    keep = targets != IGNORE_INDEX
    cap = getattr(lm.config, "final_logit_softcapping", None)
    loss_sum = lm_head_loss(hidden[keep], lm.get_output_embeddings(), targets[keep],
                            softcap=cap, options=options)
    return loss_sum, int(keep.sum())


@torch.no_grad()
def evaluate_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                  options: LossOptions = LossOptions()) -> float:
    """Mean response-token cross-entropy over all batches (per token, not per batch)."""
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    try:
        for batch in batches:
            loss_sum, n = loss_terms(model, batch, options)
            total += float(loss_sum)
            count += n
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no scored tokens in the evaluation batches")
    return total / count


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], *,
               optimizer: torch.optim.Optimizer, clipper,
               loss_options: LossOptions = LossOptions()) -> tuple[float, float, bool]:
    """One optimizer step; returns (loss, grad norm before clipping, clipped).

    A non-finite gradient norm skips the update (the loss is still reported).
    """
    optimizer.zero_grad(set_to_none=True)
    loss_sum, n = loss_terms(model, batch, loss_options)
    loss = loss_sum / max(n, 1)
    loss.backward()
    norm, clipped = clipper.clip(trainable_parameters(optimizer))
    if math.isfinite(norm):
        optimizer.step()
    return float(loss.detach()), norm, clipped


@dataclass
class LoopState:
    """Where training stands; everything here goes into a checkpoint as JSON."""

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next batch to run within ``epoch``
    trained_tokens: int = 0
    grad_norm_sum: float = 0.0
    grad_norm_peak: float | None = None
    last_loss: float | None = None
    last_val_loss: float | None = None
    last_eval_step: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "history"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], history: list[dict[str, Any]]) -> LoopState:
        return cls(**data, history=history)

    @property
    def mean_grad_norm(self) -> float | None:
        return self.grad_norm_sum / self.step if self.step else None


@dataclass(frozen=True)
class LoopPlan:
    """The loop's fixed settings (a subset of TrainConfig, so other runners can build one)."""

    epochs: int
    batch_size: int
    seed: int
    pad_id: int
    max_steps: int | None = None
    token_budget: int | None = None
    eval_every: int | None = None
    checkpoint_every_steps: int | None = None
    checkpoint_every_seconds: float | None = None
    lr_schedule: str = "linear"
    warmup_steps: int = 0
    loss: LossOptions = LossOptions()

    def total_steps(self, num_rows: int) -> int:
        return planned_steps(num_rows, epochs=self.epochs, batch_size=self.batch_size,
                             max_steps=self.max_steps)


def _next_batch(rows: list[Example], plan: LoopPlan, state: LoopState):
    """The batch at the state's data position, moving to the next epoch when one ends."""
    while state.epoch < plan.epochs:
        for index, batch in epoch_batches(rows, batch_size=plan.batch_size, seed=plan.seed,
                                          epoch=state.epoch, start=state.batch_index,
                                          pad_id=plan.pad_id):
            return index, batch
        state.epoch += 1
        state.batch_index = 0
    return None


def train_loop(*, model: nn.Module, rows: list[Example], optimizer: torch.optim.Optimizer,
               clipper, state: LoopState, plan: LoopPlan,
               callbacks: TrainCallbacks | None = None,
               crma_stats: Callable[[], dict[str, Any]] | None = None,
               evaluate: Callable[[], float] | None = None,
               checkpoint: Callable[[LoopState], None] | None = None) -> str:
    """Train until the data, ``max_steps`` or the budget runs out or ``should_stop`` says so.

    Mutates ``state`` (position, counters, history of step/eval records) and returns the
    stop reason: "completed", "max_steps", "budget" or the reason ``should_stop`` gave.
    ``evaluate`` runs every ``eval_every`` steps; ``checkpoint(state)`` at the checkpoint
    intervals. The same (seed, state) always yields the same batches, so a run resumed from
    a checkpoint continues exactly where it stopped.
    """
    callbacks = callbacks or TrainCallbacks()
    total = plan.total_steps(len(rows))
    last_checkpoint = time.monotonic()
    model.train()
    while True:
        position = _next_batch(rows, plan, state)
        if position is None:
            return "completed"
        if plan.max_steps is not None and state.step >= plan.max_steps:
            return "max_steps"
        if callbacks.should_stop is not None:
            reason = callbacks.should_stop()
            if reason:
                return reason
        index, batch = position
        tokens = int(batch["token_mask"].sum())
        if plan.token_budget is not None and state.trained_tokens + tokens > plan.token_budget:
            return "budget"
        set_learning_rates(optimizer, lr_factor(state.step, total_steps=total,
                                                warmup_steps=plan.warmup_steps,
                                                schedule=plan.lr_schedule))
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        loss, norm, clipped = train_step(model, batch, optimizer=optimizer, clipper=clipper,
                                         loss_options=plan.loss)
        elapsed = time.perf_counter() - started
        state.step += 1
        state.batch_index = index + 1
        state.trained_tokens += tokens
        state.last_loss = loss
        if math.isfinite(norm):
            state.grad_norm_sum += norm
            state.grad_norm_peak = max(norm, state.grad_norm_peak or 0.0)
        metrics = StepMetrics(
            step=state.step, epoch=state.epoch, loss=loss, lr=lr, grad_norm=norm,
            clipped=clipped, tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
            trained_tokens=state.trained_tokens,
            crma=crma_stats() if crma_stats is not None else None,
        )
        state.history.append({"type": "step", **metrics.to_dict()})
        if callbacks.on_step is not None:
            callbacks.on_step(metrics)
        if evaluate is not None and plan.eval_every and state.step % plan.eval_every == 0:
            run_evaluation(evaluate, state, callbacks)
        due_steps = plan.checkpoint_every_steps and state.step % plan.checkpoint_every_steps == 0
        due_time = (plan.checkpoint_every_seconds is not None
                    and time.monotonic() - last_checkpoint >= plan.checkpoint_every_seconds)
        if checkpoint is not None and (due_steps or due_time):
            checkpoint(state)
            last_checkpoint = time.monotonic()


def run_evaluation(evaluate: Callable[[], float], state: LoopState,
                   callbacks: TrainCallbacks) -> float:
    """Evaluate now, record it in the state's history and tell ``on_eval``."""
    val_loss = evaluate()
    state.last_val_loss = val_loss
    state.last_eval_step = state.step
    metrics = EvalMetrics(step=state.step, val_loss=val_loss)
    state.history.append({"type": "eval", **metrics.to_dict()})
    if callbacks.on_eval is not None:
        callbacks.on_eval(metrics)
    return val_loss
