"""One optimizer step and one evaluation pass: the loss, gradient accumulation, accuracy.

A step's batch may run as several micro-batches (gradient accumulation): each pass's
summed cross-entropy is divided by the scored tokens of the *whole* batch before backward,
so the accumulated gradient is the full batch's (a token-weighted mean, not a mean of
per-pass means) whatever the micro-batch size. A packed pass runs with its examples laid out
in rows as narrow as its longest example (``crma_core.data.narrow_packed``): the same
computation with a fraction of the attention's work.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from crma_core.data import IGNORE_INDEX, narrow_packed, scored_tokens, split_batch
from crma_core.loss import LossOptions, lm_head_loss_and_correct
from crma_core.memory import MemoryLimit

_MODEL_INPUTS = ("input_ids", "attention_mask", "position_ids")


def _causal_lm(model: nn.Module) -> nn.Module:
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def score_batch(model: nn.Module, batch: dict[str, torch.Tensor],
                options: LossOptions = LossOptions()) -> tuple[torch.Tensor, int, int]:
    """(sum of response-token cross-entropies, scored tokens, correctly predicted tokens).

    Runs the decoder, then the LM head only at positions whose next token is trained (the
    head over a 49k vocabulary costs as much as a small model's body, and masked prompt
    positions need no logits), in token chunks (``crma_core.loss``: peak logits memory is
    one chunk's). Matches the model's own loss, Gemma-2 soft-capping included. A token is
    correct when its arg-max logit is the target (mean token accuracy = correct / scored).
    """
    lm = _causal_lm(model)
    device = next(lm.parameters()).device
    inputs = {k: batch[k].to(device) for k in _MODEL_INPUTS if k in batch}
    targets = batch["labels"][:, 1:].to(device)
    hidden = lm.get_decoder()(**inputs, use_cache=False).last_hidden_state[:, :-1]
    keep = targets != IGNORE_INDEX
    cap = getattr(lm.config, "final_logit_softcapping", None)
    loss_sum, correct = lm_head_loss_and_correct(hidden[keep], lm.get_output_embeddings(),
                                                 targets[keep], softcap=cap, options=options)
    return loss_sum, int(keep.sum()), int(correct)


def loss_terms(model: nn.Module, batch: dict[str, torch.Tensor],
               options: LossOptions = LossOptions()) -> tuple[torch.Tensor, int]:
    """(sum of response-token cross-entropies, number of scored tokens) for one batch."""
    loss_sum, n, _ = score_batch(model, batch, options)
    return loss_sum, n


@dataclass(frozen=True)
class EvalResult:
    """Mean cross-entropy and mean token accuracy over ``tokens`` scored tokens."""

    loss: float
    accuracy: float
    tokens: int


@torch.no_grad()
def evaluate(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
             options: LossOptions = LossOptions()) -> EvalResult:
    """Loss and accuracy over all batches, per token (not per batch)."""
    was_training = model.training
    model.eval()
    total, count, correct = 0.0, 0, 0
    try:
        for batch in batches:
            loss_sum, n, right = score_batch(model, batch, options)
            total += float(loss_sum)
            count += n
            correct += right
    finally:
        model.train(was_training)
    if count == 0:
        raise ValueError("no scored tokens in the evaluation batches")
    return EvalResult(loss=total / count, accuracy=correct / count, tokens=count)


def evaluate_loss(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]],
                  options: LossOptions = LossOptions()) -> float:
    """Mean response-token cross-entropy over all batches (per token, not per batch)."""
    return evaluate(model, batches, options).loss


@dataclass(frozen=True)
class StepResult:
    """One optimizer step: mean loss over ``scored_tokens``, ``correct`` of them predicted,
    the gradient norm before clipping, and the number of forward/backward passes."""

    loss: float
    grad_norm: float
    clipped: bool
    scored_tokens: int
    correct: int
    passes: int

    @property
    def accuracy(self) -> float | None:
        return self.correct / self.scored_tokens if self.scored_tokens else None


def accumulate_gradients(model: nn.Module, batch: dict[str, torch.Tensor], *,
                         micro_batch_size: int | None = None,
                         loss_options: LossOptions = LossOptions(),
                         memory: MemoryLimit | None = None) -> tuple[float, int, int, int]:
    """Backward over ``batch`` in passes of ``micro_batch_size`` rows (all at once if None).

    Every pass's loss sum is divided by the whole batch's scored tokens, so the gradients
    add up to those of one pass over the batch. ``memory`` is checked before each pass
    (raises ``torch.OutOfMemoryError``). Returns (mean loss, scored tokens, correct, passes).
    """
    denominator = max(scored_tokens(batch), 1)
    parts = split_batch(batch, micro_batch_size or batch["input_ids"].shape[0])
    total = None
    scored = correct = 0
    for part in parts:
        if memory is not None:
            memory.check(*part["input_ids"].shape)  # as planned (narrowing keeps the tokens)
        loss_sum, n, right = score_batch(model, narrow_packed(part), loss_options)
        (loss_sum / denominator).backward()
        total = loss_sum.detach() if total is None else total + loss_sum.detach()
        scored += n
        correct += right
    return float(total / denominator), scored, correct, len(parts)


def run_step(model: nn.Module, batch: dict[str, torch.Tensor], *,
             optimizer: torch.optim.Optimizer, clipper,
             loss_options: LossOptions = LossOptions(), micro_batch_size: int | None = None,
             memory: MemoryLimit | None = None) -> StepResult:
    """One optimizer step over ``batch`` (see ``accumulate_gradients``), clipped.

    A non-finite gradient norm skips the update (the loss is still reported).
    """
    optimizer.zero_grad(set_to_none=True)
    loss, scored, correct, passes = accumulate_gradients(
        model, batch, micro_batch_size=micro_batch_size, loss_options=loss_options,
        memory=memory)
    norm, clipped = clipper.clip_groups([(group.get("name", str(i)), group["params"])
                                         for i, group in enumerate(optimizer.param_groups)])
    if math.isfinite(norm):
        optimizer.step()
    return StepResult(loss=loss, grad_norm=norm, clipped=clipped, scored_tokens=scored,
                      correct=correct, passes=passes)


def train_step(model: nn.Module, batch: dict[str, torch.Tensor], *,
               optimizer: torch.optim.Optimizer, clipper,
               loss_options: LossOptions = LossOptions(),
               micro_batch_size: int | None = None) -> tuple[float, float, bool]:
    """``run_step`` as (loss, grad norm before clipping, clipped)."""
    result = run_step(model, batch, optimizer=optimizer, clipper=clipper,
                      loss_options=loss_options, micro_batch_size=micro_batch_size)
    return result.loss, result.grad_norm, result.clipped
