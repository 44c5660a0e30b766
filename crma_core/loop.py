"""The training loop written out in full: the loop over batches, evaluations, checkpoints.

Each piece is a plain function so other runners (continual learning) reuse them with their
own model, parameter sets and data. One step (loss, gradient accumulation, accuracy) is in
``crma_core.step``; its names are re-exported here.

A pass that runs out of memory (``torch.OutOfMemoryError``, or over the plan's budget)
restarts its step with half the rows per pass, from the same RNG state, and the smaller
micro-batch is kept for the rest of the run (and in checkpoints).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from crma_core.callbacks import EvalMetrics, MemoryEvent, StepMetrics, TrainCallbacks
from crma_core.data import Example, batch_trained_tokens, epoch_batches
from crma_core.loss import LossOptions
from crma_core.memory import MemoryLimit
from crma_core.optim import lr_factor, set_learning_rates
from crma_core.settings import planned_steps
from crma_core.step import (EvalResult, StepResult, accumulate_gradients, evaluate,
                            evaluate_loss, loss_terms, run_step, score_batch, train_step)

__all__ = ["LoopState", "LoopPlan", "train_loop", "run_evaluation", "evenly_spaced",
           "EvalResult", "StepResult", "accumulate_gradients", "evaluate", "evaluate_loss",
           "loss_terms", "run_step", "score_batch", "train_step"]


@dataclass
class LoopState:
    """Where training stands; everything here goes into a checkpoint as JSON.

    micro_batch_size: rows per forward/backward pass in use (None until the loop starts);
    best_*: the evaluation with the lowest validation loss so far.
    """

    step: int = 0
    epoch: int = 0
    batch_index: int = 0  # next batch to run within ``epoch``
    trained_tokens: int = 0
    grad_norm_sum: float = 0.0
    grad_norm_peak: float | None = None
    last_loss: float | None = None
    last_val_loss: float | None = None
    last_eval_step: int | None = None
    last_accuracy: float | None = None
    last_val_accuracy: float | None = None
    best_val_loss: float | None = None
    best_step: int | None = None
    micro_batch_size: int | None = None
    history: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "history"}

    @classmethod
    def from_dict(cls, data: dict[str, Any], history: list[dict[str, Any]]) -> LoopState:
        return cls(**data, history=history)

    @property
    def mean_grad_norm(self) -> float | None:
        return self.grad_norm_sum / self.step if self.step else None


def evenly_spaced(count: int | None, total: int) -> frozenset[int]:
    """``count`` steps spread over 1..``total``, the last one ``total`` (fewer if total is)."""
    if not count or total < 1:
        return frozenset()
    return frozenset(math.ceil(k * total / count) for k in range(1, count + 1))


@dataclass(frozen=True)
class LoopPlan:
    """The loop's fixed settings (a subset of TrainConfig, so other runners can build one).

    micro_batch_size: rows per pass (None: the whole batch at once); memory: the budget
    each pass is checked against (None: only the device's own out-of-memory errors).
    Evaluations run every ``eval_every`` steps and at ``n_evals`` evenly spaced steps;
    checkpoints every ``checkpoint_every_steps`` steps / ``checkpoint_every_seconds`` and at
    ``n_checkpoints`` evenly spaced steps, each of those also evaluated.
    """

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
    micro_batch_size: int | None = None
    memory: MemoryLimit | None = None
    n_evals: int | None = None
    n_checkpoints: int | None = None

    def total_steps(self, num_rows: int) -> int:
        return planned_steps(num_rows, epochs=self.epochs, batch_size=self.batch_size,
                             max_steps=self.max_steps)

    def checkpoint_due(self, step: int, total: int) -> bool:
        """A checkpoint by step count (the time interval is the loop's to check)."""
        every = self.checkpoint_every_steps
        return bool(every and step % every == 0) or step in evenly_spaced(self.n_checkpoints,
                                                                          total)

    def eval_due(self, step: int, total: int) -> bool:
        every = self.eval_every
        return (bool(every and step % every == 0) or step in evenly_spaced(self.n_evals, total)
                or step in evenly_spaced(self.n_checkpoints, total))


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


def _step_fitting_memory(model: nn.Module, batch: dict[str, torch.Tensor], *,
                         optimizer: torch.optim.Optimizer, clipper, state: LoopState,
                         plan: LoopPlan, callbacks: TrainCallbacks) -> StepResult:
    """``run_step`` with the state's micro-batch size, halved after each out-of-memory pass.

    The RNG state is restored before a retry, so the retried step draws the same dropout
    masks a run that used the smaller size from the start would. One row that does not
    fit re-raises the error.
    """
    while True:
        rng = torch.get_rng_state()
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        try:
            return run_step(model, batch, optimizer=optimizer, clipper=clipper,
                            loss_options=plan.loss, micro_batch_size=state.micro_batch_size,
                            memory=plan.memory)
        except torch.OutOfMemoryError as exc:
            if state.micro_batch_size <= 1:
                raise
            message = str(exc).splitlines()[0] if str(exc) else "out of memory"
        # Out of the except block: the traceback's frames (and their tensors) are gone.
        optimizer.zero_grad(set_to_none=True)
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
        torch.set_rng_state(rng)
        if cuda_rng is not None:
            torch.cuda.set_rng_state_all(cuda_rng)
        event = MemoryEvent(step=state.step + 1, previous=state.micro_batch_size,
                            micro_batch_size=max(1, state.micro_batch_size // 2),
                            message=message)
        state.micro_batch_size = event.micro_batch_size
        state.history.append({"type": "memory", **event.to_dict()})
        if callbacks.on_memory is not None:
            callbacks.on_memory(event)


def train_loop(*, model: nn.Module, rows: list[Example], optimizer: torch.optim.Optimizer,
               clipper, state: LoopState, plan: LoopPlan,
               callbacks: TrainCallbacks | None = None,
               crma_stats: Callable[[], dict[str, Any]] | None = None,
               evaluate: Callable[[], float | EvalResult] | None = None,
               checkpoint: Callable[[LoopState], None] | None = None,
               on_best: Callable[[LoopState], None] | None = None) -> str:
    """Train until the data, ``max_steps`` or the budget runs out or ``should_stop`` says so.

    Mutates ``state`` (position, counters, history of step/eval/memory records) and returns
    the stop reason: "completed", "max_steps", "budget" or the reason ``should_stop`` gave.
    ``evaluate`` runs at the plan's evaluation steps (``on_best(state)`` after one that sets
    a new lowest validation loss); ``checkpoint(state)`` at the checkpoint steps and
    interval. The same (seed, state) always yields the same batches, so a run resumed from
    a checkpoint continues exactly where it stopped.
    """
    callbacks = callbacks or TrainCallbacks()
    total = plan.total_steps(len(rows))
    if state.micro_batch_size is None:
        state.micro_batch_size = min(plan.micro_batch_size or plan.batch_size, plan.batch_size)
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
        tokens = batch_trained_tokens(batch)
        if plan.token_budget is not None and state.trained_tokens + tokens > plan.token_budget:
            return "budget"
        set_learning_rates(optimizer, lr_factor(state.step, total_steps=total,
                                                warmup_steps=plan.warmup_steps,
                                                schedule=plan.lr_schedule))
        lr = optimizer.param_groups[0]["lr"]
        started = time.perf_counter()
        result = _step_fitting_memory(model, batch, optimizer=optimizer, clipper=clipper,
                                      state=state, plan=plan, callbacks=callbacks)
        elapsed = time.perf_counter() - started
        state.step += 1
        state.batch_index = index + 1
        state.trained_tokens += tokens
        state.last_loss = result.loss
        state.last_accuracy = result.accuracy
        norm = result.grad_norm
        if math.isfinite(norm):
            state.grad_norm_sum += norm
            state.grad_norm_peak = max(norm, state.grad_norm_peak or 0.0)
        metrics = StepMetrics(
            step=state.step, epoch=state.epoch, loss=result.loss, lr=lr, grad_norm=norm,
            clipped=result.clipped, tokens_per_s=tokens / elapsed if elapsed > 0 else 0.0,
            trained_tokens=state.trained_tokens,
            crma=crma_stats() if crma_stats is not None else None,
            mean_token_accuracy=result.accuracy, scored_tokens=result.scored_tokens,
            micro_batch_size=state.micro_batch_size, accumulation_steps=result.passes,
        )
        state.history.append(metrics.record())
        if callbacks.on_step is not None:
            callbacks.on_step(metrics)
        if evaluate is not None and plan.eval_due(state.step, total):
            run_evaluation(evaluate, state, callbacks, on_best=on_best)
        due_time = (plan.checkpoint_every_seconds is not None
                    and time.monotonic() - last_checkpoint >= plan.checkpoint_every_seconds)
        if checkpoint is not None and (plan.checkpoint_due(state.step, total) or due_time):
            checkpoint(state)
            last_checkpoint = time.monotonic()


def run_evaluation(evaluate: Callable[[], float | EvalResult], state: LoopState,
                   callbacks: TrainCallbacks,
                   on_best: Callable[[LoopState], None] | None = None) -> float:
    """Evaluate now, record it in the state's history, track the best, tell ``on_eval``.

    ``evaluate`` returns the validation loss, or an ``EvalResult`` (loss and accuracy).
    """
    result = evaluate()
    val_loss = result.loss if isinstance(result, EvalResult) else float(result)
    accuracy = result.accuracy if isinstance(result, EvalResult) else None
    state.last_val_loss = val_loss
    state.last_val_accuracy = accuracy
    state.last_eval_step = state.step
    is_best = state.best_val_loss is None or val_loss < state.best_val_loss
    if is_best:
        state.best_val_loss, state.best_step = val_loss, state.step
    metrics = EvalMetrics(step=state.step, val_loss=val_loss, val_mean_token_accuracy=accuracy,
                          is_best=is_best)
    state.history.append(metrics.record())
    if is_best and on_best is not None:
        on_best(state)
    if callbacks.on_eval is not None:
        callbacks.on_eval(metrics)
    return val_loss
