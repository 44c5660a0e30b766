"""TrainConfig.compile / crma_core.compile: the compiled step computes the same function.

Fast tests use dynamo with the "eager" / "aot_eager" backends (graph capture, hooks, peft,
recompiles, autograd through the captured graphs); the inductor ones (real codegen: gcc on
the CPU, minutes on the 2-core box) are marked slow.
"""

import pytest
import torch

from crma_core import CRMAConfig, LoraSettings
from crma_core.compile import (CompiledMixing, compile_crma, compile_for_training, describe,
                               uncompile)
from crma_core.layer import mixing_matrices
from crma_core.loop import loss_terms, train_step
from crma_core.loss import LossOptions
from crma_core.mixing import sinkhorn
from crma_core.model import CRMAHandle, attach_crma
from crma_core.recipe import optimizer_groups, prepare_model
from crma_core.testing import make_tiny_model


def _model(family="llama", *, layers=3, gradient_checkpointing=False, seed=0):
    torch.manual_seed(seed)
    base = make_tiny_model(family, num_layers=layers, seed=seed).train()
    model, handle = prepare_model(base, lora=LoraSettings(r=4, alpha=8), crma=CRMAConfig(),
                                  gradient_checkpointing=gradient_checkpointing, seed=seed)
    with torch.no_grad():  # move off the exact-identity init so every path matters
        for layer in handle.layers:
            layer.write.normal_(std=0.05)
            layer.log_mix.add_(torch.randn(4, 4))
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(std=0.05)
    return model, handle


def _batch(seed=1, rows=2, length=24):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, 384, (rows, length), generator=generator)
    labels = ids.clone()
    labels[:, : length // 3] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def _loss_and_grads(model, handle, batch, options=LossOptions()):
    params = [p for p in model.parameters() if p.requires_grad] + list(handle.parameters())
    for p in params:
        p.grad = None
    loss_sum, n = loss_terms(model, batch, options)
    (loss_sum / n).backward()
    return loss_sum.detach(), [None if p.grad is None else p.grad.clone() for p in params]


@pytest.mark.parametrize("config", [
    CRMAConfig(),  # tol 1e-9: peaked logits need several blocks
    CRMAConfig(sinkhorn_iters=5, sinkhorn_max_iters=23, tau=0.5, sinkhorn_dtype="float32",
               sinkhorn_tol=1e-7),  # stops at the max_iters boundary (4 blocks, not 5)
    pytest.param(CRMAConfig(sinkhorn_tol=None), marks=pytest.mark.slow),
])
def test_compiled_sinkhorn_equals_the_eager_one(config):
    generator = torch.Generator().manual_seed(0)
    log_mix = (torch.randn(3, config.n, config.n, generator=generator) * 3).requires_grad_()
    compiled = CompiledMixing("aot_eager")
    got = compiled(log_mix, config)
    want = mixing_matrices(log_mix, config)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    weights = torch.randn(want.shape, generator=generator)
    (grad_got,) = torch.autograd.grad((got * weights).sum(), log_mix)
    (grad_want,) = torch.autograd.grad((want * weights).sum(), log_mix)
    torch.testing.assert_close(grad_got, grad_want, rtol=1e-5, atol=1e-6)
    # the same stopping rule as crma_core.mixing.sinkhorn
    reference = sinkhorn(log_mix.detach(), config.sinkhorn_iters, tau=config.tau,
                         tol=config.sinkhorn_tol, max_iters=config.sinkhorn_max_iters,
                         dtype=torch.float64)
    torch.testing.assert_close(got, reference.float(), rtol=0,
                               atol=1e-6 if config.sinkhorn_dtype == "float32" else 1e-7)


def test_compiled_crma_functions_match_on_an_eager_model():
    model, handle = _model()
    batch = _batch()
    ref_loss, ref_grads = _loss_and_grads(model, handle, batch)
    compile_crma(handle, backend="eager")
    assert describe(model, handle) == {"layers": False, "crma_adapter": True,
                                       "crma_sinkhorn": True}
    loss, grads = _loss_and_grads(model, handle, batch)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert handle.stats()["max_marginal_error"] <= 1e-6


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_compiled_layers_capture_without_graph_breaks_and_match(family):
    from torch._dynamo.utils import counters

    from torch._dynamo.eval_frame import _debug_get_cache_entry_list

    from crma_core.model import find_decoder

    torch._dynamo.reset()
    model, handle = _model(family, layers=6)
    batch = _batch()
    ref_loss, ref_grads = _loss_and_grads(model, handle, batch)
    counters.clear()
    compile_for_training(model, handle, backend="eager")
    compile_for_training(model, handle, backend="eager")  # idempotent
    loss, grads = _loss_and_grads(model, handle, batch)
    assert describe(model, handle) == {"layers": True, "crma_adapter": True,
                                       "crma_sinkhorn": True}
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    for got, want in zip(grads, ref_grads):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)
    assert not counters["graph_break"], dict(counters["graph_break"])
    # Regional compilation: one graph for the first layer (its input needs no gradient) and
    # one for the other five (twice that for Gemma-2's alternating sliding/full attention),
    # not one per layer.
    layer = find_decoder(model).layers[0]
    code = layer._crma_compiled_forward.__func__.__code__
    assert len(_debug_get_cache_entry_list(code)) <= (4 if family == "gemma2" else 2)
    # CRMA off and on again: the hooks are outside the compiled layers, nothing recompiles
    graphs = counters["stats"]["unique_graphs"]
    handle.enabled = False
    off_loss, _ = _loss_and_grads(model, handle, batch)
    handle.enabled = True
    again, _ = _loss_and_grads(model, handle, batch)
    handle.remove()  # hooks detached (the benchmark's "CRMA off") and attached again
    detached, _ = _loss_and_grads(model, handle, batch)
    handle.attach(find_decoder(model))
    reattached, _ = _loss_and_grads(model, handle, batch)
    assert counters["stats"]["unique_graphs"] == graphs
    assert float(off_loss) != float(loss) and float(again) == float(loss)
    assert float(detached) == float(off_loss) and float(reattached) == float(loss)
    uncompile(model, handle)
    assert describe(model, handle) == {"layers": False, "crma_adapter": False,
                                       "crma_sinkhorn": False}


def _train_two_steps(family, *, backend, gradient_checkpointing=False):
    model, handle = _model(family, gradient_checkpointing=gradient_checkpointing)
    if backend is not None:
        compile_for_training(model, handle, backend=backend)
    from crma_core.clipping import ZClip
    from crma_core.optim import make_optimizer

    optimizer = make_optimizer(**optimizer_groups(model, handle), lr_main=1e-2, lr_mix=1e-2)
    options = LossOptions(chunk_tokens=16, compile_backend=backend)
    losses = [train_step(model, _batch(seed), optimizer=optimizer, clipper=ZClip(),
                         loss_options=options)[0] for seed in (1, 2, 1)]
    state = {k: v.detach().clone() for k, v in handle.state_dict().items()}
    return losses, state


@pytest.mark.slow
@pytest.mark.parametrize("backend", ["aot_eager", "inductor"])
@pytest.mark.parametrize("gradient_checkpointing", [False, True])
def test_compiled_training_steps_match_eager(backend, gradient_checkpointing):
    eager_losses, eager_state = _train_two_steps("llama", backend=None,
                                                 gradient_checkpointing=gradient_checkpointing)
    losses, state = _train_two_steps("llama", backend=backend,
                                     gradient_checkpointing=gradient_checkpointing)
    assert eager_losses[2] < eager_losses[0]  # the steps did train
    torch.testing.assert_close(torch.tensor(losses), torch.tensor(eager_losses),
                               rtol=1e-5, atol=1e-5)
    for key, value in eager_state.items():
        torch.testing.assert_close(state[key], value, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_recipe_with_compile_trains_like_eager(tiny_model_dirs, chat_files):
    from crma_core import Recipe, TrainCallbacks, TrainConfig

    losses = {}
    for compile_ in (False, True):
        steps = []
        recipe = Recipe(model_dir=tiny_model_dirs["llama"], train_file=chat_files[0],
                        validation_file=chat_files[1], lora=LoraSettings(r=4, alpha=8),
                        train=TrainConfig(epochs=1, batch_size=4, max_seq_len=128,
                                          lr_main=1e-3, compile=compile_, max_steps=3),
                        callbacks=TrainCallbacks(on_step=steps.append))
        recipe.setup()
        result = recipe.train()
        losses[compile_] = [s.loss for s in steps] + [result.final_val_loss]
        recipe.cleanup()
    torch.testing.assert_close(torch.tensor(losses[True]), torch.tensor(losses[False]),
                               rtol=1e-4, atol=1e-4)


def test_compile_is_not_a_resume_setting():
    from crma_core.recipe import _RESUME_MAY_CHANGE

    assert {"compile", "loss_chunk_tokens"} <= set(_RESUME_MAY_CHANGE)
    handle = CRMAHandle(CRMAConfig(), hidden_size=8, num_layers=2)
    assert handle.adapter_fn.__name__ == "apply_adapter"  # eager by default
    assert attach_crma is not None
