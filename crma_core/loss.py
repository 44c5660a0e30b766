"""LM-head cross-entropy in token chunks, so peak logits memory is one chunk's, not N×V.

Gemma-2's 256k vocabulary makes full logits for 8×1024 trained tokens 8 GiB in float32
(twice that with the soft-capping intermediates and the gradient). ``lm_head_loss`` never
holds more than ``chunk`` rows of logits at once:

- frozen ``nn.Linear`` head (the recipe's case: peft's "all-linear" leaves the LM head out,
  and Gemma's tied head is the frozen embedding): each chunk's gradient with respect to the
  hidden states is computed in the forward pass, right after its loss (softmax − one-hot,
  times the soft-capping derivative, times the head weight), and the chunk's logits are
  freed. Backward only scales that stored gradient. No logits are recomputed, so this costs
  the same head FLOPs as the unchunked loss (activation checkpointing would add one more
  head matmul, 11% of Gemma-2-2B's FLOPs).
- any other head (trainable, or a peft-wrapped module): each chunk runs under activation
  checkpointing (``torch.utils.checkpoint``, non-reentrant), so backward recomputes one
  chunk's logits at a time.

Both equal the unchunked ``F.cross_entropy(softcap(head(h).float()), targets, "sum")`` and
its gradients within floating-point rounding (tests/crma_core/test_crma_perf_loss.py).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from crma_core.memory import LOGITS_BUDGET, chunk_size

__all__ = ["LOGITS_BUDGET", "LossOptions", "chunk_size", "lm_head_loss",
           "lm_head_loss_and_correct", "reference_lm_head_loss", "chunk_loss_and_grad",
           "compiled_chunk_math"]


@dataclass(frozen=True)
class LossOptions:
    """How ``crma_core.loop.loss_terms`` computes the LM-head loss.

    chunk_tokens: rows of logits per chunk; None picks ``LOGITS_BUDGET // vocab``.
    compile_backend: None runs each chunk's softmax/soft-cap/gradient arithmetic eagerly;
    a torch.compile backend name ("inductor") fuses its ten-odd passes over the chunk's
    logits into a few (worth it on a GPU for large vocabularies).
    """

    chunk_tokens: int | None = None
    compile_backend: str | None = None

    def __post_init__(self) -> None:
        if self.chunk_tokens is not None and self.chunk_tokens < 1:
            raise ValueError("chunk_tokens must be >= 1 or None")


def lm_head_loss(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                 softcap: float | None = None,
                 options: LossOptions = LossOptions()) -> torch.Tensor:
    """Sum over tokens of cross-entropy(softcap(head(hidden)), targets), float32 scalar.

    hidden: (N×d) final hidden states at scored positions (any float dtype); head: the LM
    head (d → V); targets: (N,) token ids, all scored (no ignore index); softcap: Gemma-2's
    ``final_logit_softcapping`` (logits → cap·tanh(logits/cap)) or None.
    """
    return lm_head_loss_and_correct(hidden, head, targets, softcap=softcap, options=options)[0]


def lm_head_loss_and_correct(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                             softcap: float | None = None,
                             options: LossOptions = LossOptions()
                             ) -> tuple[torch.Tensor, torch.Tensor]:
    """(``lm_head_loss``, number of tokens whose arg-max logit is the target: int64 scalar).

    The count is what mean token accuracy is made of (TRL's and OpenAI's
    ``mean_token_accuracy``); it is taken from each chunk's logits while they exist, and
    soft-capping (monotonic) does not change an arg-max.
    """
    if hidden.dim() != 2 or targets.shape != hidden.shape[:1]:
        raise ValueError(f"expected (N, d) hidden and (N,) targets, got {tuple(hidden.shape)} "
                         f"and {tuple(targets.shape)}")
    weight = getattr(head, "weight", None)
    vocab = weight.shape[0] if weight is not None else getattr(head, "out_features", 1)
    chunk = chunk_size(vocab, options.chunk_tokens)
    cap = float(softcap) if softcap else None
    correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
    if hidden.shape[0] == 0:
        return hidden.new_zeros((), dtype=torch.float32) + 0 * hidden.sum(), correct
    if _is_frozen_linear(head):
        math_fn = (compiled_chunk_math(options.compile_backend) if options.compile_backend
                   else chunk_loss_and_grad)
        bias = head.bias
        if torch.is_grad_enabled() and hidden.requires_grad:
            return _FusedHeadLoss.apply(hidden, head.weight, bias, targets, cap, chunk, math_fn)
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start in range(0, hidden.shape[0], chunk):
            logits = F.linear(hidden[start:start + chunk], head.weight, bias)
            part_targets = targets[start:start + chunk]
            correct = correct + _count_correct(logits, part_targets)
            total = total + math_fn(logits, part_targets, cap, False)[0]
        return total, correct
    total = torch.zeros((), dtype=torch.float32, device=hidden.device)
    use_checkpoint = torch.is_grad_enabled()
    for start in range(0, hidden.shape[0], chunk):
        args = (hidden[start:start + chunk], targets[start:start + chunk], head, cap)
        part, right = (checkpoint(_chunk_loss, *args, use_reentrant=False) if use_checkpoint
                       else _chunk_loss(*args))
        total = total + part
        correct = correct + right
    return total, correct


def reference_lm_head_loss(hidden: torch.Tensor, head: nn.Module, targets: torch.Tensor, *,
                           softcap: float | None = None) -> torch.Tensor:
    """The unchunked loss (all N×V logits at once), the definition the chunked one matches."""
    return _chunk_loss(hidden, targets, head, float(softcap) if softcap else None)[0]


def _count_correct(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return (logits.argmax(dim=-1) == targets).sum()


def _chunk_loss(hidden: torch.Tensor, targets: torch.Tensor, head: nn.Module,
                cap: float | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = head(hidden).float()
    correct = _count_correct(logits, targets)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return F.cross_entropy(logits, targets, reduction="sum"), correct


def _is_frozen_linear(head: nn.Module) -> bool:
    # Exactly nn.Linear: subclasses (peft's LoRA layers, bitsandbytes' Linear4bit) compute
    # something other than F.linear(x, weight, bias).
    return (type(head) is nn.Linear and not head.weight.requires_grad
            and (head.bias is None or not head.bias.requires_grad))


def chunk_loss_and_grad(logits: torch.Tensor, targets: torch.Tensor, cap: float | None,
                        want_grad: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
    """One chunk: (sum of cross-entropies, d loss / d logits in logits' dtype, or None).

    logits (n×V) straight from the head, in its dtype; the loss is computed in float32 after
    the optional soft-cap, as ``reference_lm_head_loss`` does. In-place steps keep at most
    three n×V float32 buffers alive in eager mode.
    """
    y = logits.float()
    t = None
    if cap:
        t = torch.tanh(y / cap)
        y = t * cap
    lse = torch.logsumexp(y, dim=-1)
    picked = y.gather(1, targets.unsqueeze(1)).squeeze(1)
    loss = (lse - picked).sum()
    if not want_grad:
        return loss, None
    # d/dy of logsumexp(y) - y[target] is softmax(y) - one_hot(target).
    if t is not None:
        grad = y.sub_(lse.unsqueeze(1)).exp_()  # y = t·cap is our own buffer
    else:
        grad = (y - lse.unsqueeze(1)).exp_()  # y may be the caller's float32 logits
    grad.scatter_add_(1, targets.unsqueeze(1),
                      torch.full((targets.shape[0], 1), -1.0, dtype=grad.dtype,
                                 device=grad.device))
    if t is not None:
        grad.mul_(t.mul_(t).neg_().add_(1))  # d(cap·tanh(x/cap))/dx = 1 - tanh²
    return loss, grad.to(logits.dtype)


_COMPILED: dict[str, object] = {}


def compiled_chunk_math(backend: str = "inductor"):
    """``chunk_loss_and_grad`` through torch.compile (one wrapper per backend, made once)."""
    fn = _COMPILED.get(backend)
    if fn is None:
        fn = _COMPILED[backend] = torch.compile(chunk_loss_and_grad, backend=backend)
    return fn


class _FusedHeadLoss(torch.autograd.Function):
    """Chunked head + cross-entropy with each chunk's input gradient made in forward."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, cap, chunk, math_fn):
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        correct = torch.zeros((), dtype=torch.int64, device=hidden.device)
        grad = torch.empty_like(hidden)
        for start in range(0, hidden.shape[0], chunk):
            part = hidden[start:start + chunk]
            part_targets = targets[start:start + chunk]
            logits = F.linear(part, weight, bias)
            correct = correct + _count_correct(logits, part_targets)
            loss, grad_logits = math_fn(logits, part_targets, cap, True)
            del logits
            total = total + loss
            # The product autograd would form: dL/dlogits (in the logits' dtype) @ W.
            grad[start:start + chunk] = grad_logits @ weight
        ctx.save_for_backward(grad)
        ctx.mark_non_differentiable(correct)
        return total, correct

    @staticmethod
    def backward(ctx, grad_output, _grad_correct):
        (grad,) = ctx.saved_tensors
        return ((grad.float() * grad_output).to(grad.dtype), None, None, None, None, None,
                None)
