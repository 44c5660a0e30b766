"""Chunked LM-head cross-entropy (crma_core.loss): equal to the unchunked loss and gradients,
Gemma-2 soft-capping included, and never more than one chunk of logits alive at a time."""

import pytest
import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode

from crma_core.loss import LOGITS_BUDGET, LossOptions, chunk_size, lm_head_loss, \
    reference_lm_head_loss


def _case(*, n=70, d=24, vocab=101, dtype=torch.float32, trainable=False, bias=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    head = nn.Linear(d, vocab, bias=bias).to(dtype)
    with torch.no_grad():
        head.weight.copy_(torch.randn(vocab, d, generator=generator) * 0.5)
        if bias:
            head.bias.copy_(torch.randn(vocab, generator=generator))
    head.requires_grad_(trainable)
    hidden = (torch.randn(n, d, generator=generator) * 2).to(dtype).requires_grad_()
    targets = torch.randint(0, vocab, (n,), generator=generator)
    return hidden, head, targets


def _loss_and_grads(fn, hidden, head, targets, scale=0.37, **kwargs):
    hidden.grad = None
    head.zero_grad(set_to_none=True)
    loss = fn(hidden, head, targets, **kwargs)
    (loss * scale).backward()  # a non-unit upstream gradient, like loss_sum / n
    grads = [hidden.grad.clone()] + [p.grad.clone() for p in head.parameters() if p.grad is not None]
    return loss.detach(), grads


@pytest.mark.parametrize("softcap", [None, 3.0])
@pytest.mark.parametrize("chunk", [1, 16, 70, 1000])
@pytest.mark.parametrize("trainable", [False, True])
def test_chunked_loss_and_gradients_equal_the_unchunked_ones(softcap, chunk, trainable):
    hidden, head, targets = _case(trainable=trainable, bias=trainable)
    ref_loss, ref_grads = _loss_and_grads(reference_lm_head_loss, hidden, head, targets,
                                          softcap=softcap)
    loss, grads = _loss_and_grads(lm_head_loss, hidden, head, targets, softcap=softcap,
                                  options=LossOptions(chunk_tokens=chunk))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-5)
    assert len(grads) == len(ref_grads) == (3 if trainable else 1)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_softcapping_is_applied():
    hidden, head, targets = _case()
    capped = lm_head_loss(hidden, head, targets, softcap=0.5)
    plain = lm_head_loss(hidden, head, targets)
    # Logits capped at ±0.5 over 101 classes: the loss is close to log(101).
    capped, plain = float(capped.detach()), float(plain.detach())
    assert abs(capped / len(targets) - torch.log(torch.tensor(101.0))) < 0.5
    assert abs(capped - plain) > 1.0


@pytest.mark.parametrize("softcap", [None, 30.0])
def test_bfloat16_matches_the_unchunked_bfloat16_computation(softcap):
    hidden, head, targets = _case(n=64, d=32, vocab=257, dtype=torch.bfloat16)
    ref_loss, ref_grads = _loss_and_grads(reference_lm_head_loss, hidden, head, targets,
                                          softcap=softcap)
    loss, grads = _loss_and_grads(lm_head_loss, hidden, head, targets, softcap=softcap,
                                  options=LossOptions(chunk_tokens=24))
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-3)
    assert grads[0].dtype == torch.bfloat16
    # Same bf16 product of the same float32 softmax gradient; the upstream scale is applied
    # before rounding in one and after in the other: a bf16 ulp or two.
    torch.testing.assert_close(grads[0].float(), ref_grads[0].float(), rtol=2e-2, atol=2e-3)


def test_no_grad_and_empty_inputs():
    hidden, head, targets = _case()
    with torch.no_grad():
        chunked = lm_head_loss(hidden, head, targets, options=LossOptions(chunk_tokens=8))
        reference = reference_lm_head_loss(hidden, head, targets)
    assert chunked.grad_fn is None
    torch.testing.assert_close(chunked, reference, rtol=1e-6, atol=1e-5)
    empty = lm_head_loss(hidden[:0], head, targets[:0])
    assert float(empty) == 0.0
    empty.backward()  # a batch without scored tokens still gives a backward-able zero


class _LargestTensor(TorchDispatchMode):
    """Records the largest tensor any aten op returns (what a chunk materialises)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for value in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(value, torch.Tensor):
                self.largest = max(self.largest, value.numel())
        return out


@pytest.mark.parametrize("trainable", [False, True])
def test_peak_logits_are_bounded_by_one_chunk(trainable):
    n, vocab, chunk = 96, 211, 8
    hidden, head, targets = _case(n=n, vocab=vocab, trainable=trainable)
    with _LargestTensor() as unchunked:
        reference_lm_head_loss(hidden, head, targets, softcap=5.0).backward()
    assert unchunked.largest >= n * vocab
    hidden.grad = None
    with _LargestTensor() as chunked:
        lm_head_loss(hidden, head, targets, softcap=5.0,
                     options=LossOptions(chunk_tokens=chunk)).backward()
    # Nothing bigger than one chunk's logits (or the head weight itself) is ever created.
    assert chunked.largest <= max(chunk * vocab, head.weight.numel())


def test_chunk_size_follows_the_vocabulary():
    assert chunk_size(32000) == LOGITS_BUDGET // 32000 >= 8192  # one chunk for 8×1024
    assert 1000 <= chunk_size(256000) <= 1100
    assert chunk_size(256000, 512) == 512
    with pytest.raises(ValueError):
        LossOptions(chunk_tokens=0)


@pytest.mark.parametrize("backend", ["aot_eager", pytest.param("inductor", marks=pytest.mark.slow)])
@pytest.mark.parametrize("softcap", [None, 3.0])
def test_compiled_chunk_math_matches_eager(backend, softcap):
    hidden, head, targets = _case(n=50)  # chunks of 16: the last one is shorter
    ref_loss, ref_grads = _loss_and_grads(reference_lm_head_loss, hidden, head, targets,
                                          softcap=softcap)
    for _ in range(2):
        loss, grads = _loss_and_grads(
            lm_head_loss, hidden, head, targets, softcap=softcap,
            options=LossOptions(chunk_tokens=16, compile_backend=backend))
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(grads[0], ref_grads[0], rtol=1e-4, atol=1e-6)
