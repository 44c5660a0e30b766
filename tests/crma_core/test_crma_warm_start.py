"""Starting a run from an earlier run's adapter (crma_core.warm_start): from a checkpoint or a
finished bundle the new model holds exactly the source's LoRA and CRMA, its first step's loss
continues the source's curve instead of the base model's, and a mismatched source is refused."""

from __future__ import annotations

import shutil

import pytest
import torch

from crma_core import CRMAConfig, LoraSettings, Recipe, TrainCallbacks, TrainConfig
from crma_core.errors import CheckpointError
from crma_core.io import load_tensors
from crma_core.loader import load_for_generation
from crma_core.warm_start import load_adapter_weights, source_kind

LORA = LoraSettings(r=4, alpha=8)
PROMPT = torch.tensor([[5, 17, 33, 90, 4, 61, 12]])


def recipe(model_dir, chat_files, *, crma=CRMAConfig(), lora=LORA, callbacks=None, **train):
    settings = dict(epochs=3, batch_size=4, max_seq_len=128, lr_main=1e-2, lr_rw=1e-3, seed=0)
    return Recipe(model_dir=model_dir, train_file=chat_files[0], validation_file=None,
                  crma=crma, lora=lora, train=TrainConfig(**{**settings, **train}),
                  callbacks=callbacks)


def step_losses(r: Recipe) -> list[float]:
    return [h["loss"] for h in r.state.history if h["type"] == "step"]


@pytest.fixture(scope="module")
def source(tiny_model_dirs, chat_files, tmp_path_factory):
    """A trained source run: its last checkpoint (step 15 of 18), its bundle, its losses."""
    root = tmp_path_factory.mktemp("warm-source")
    saved = root / "checkpoint"

    def keep(step, directory):
        if step == 15:
            shutil.copytree(directory, saved)

    run = recipe(tiny_model_dirs["llama"], chat_files, checkpoint_every_steps=15,
                 callbacks=TrainCallbacks(on_checkpoint=keep))
    run.setup()
    try:
        run.train()
        run.export_artifacts(root / "bundle")
        losses = step_losses(run)
    finally:
        run.cleanup()
    return {"checkpoint": saved, "bundle": root / "bundle", "losses": losses}


def test_from_a_checkpoint_the_model_holds_its_weights(tiny_model_dirs, chat_files, source):
    assert source_kind(source["checkpoint"]) == "checkpoint"
    run = recipe(tiny_model_dirs["llama"], chat_files)
    run.setup()
    try:
        info = load_adapter_weights(model=run.built.model, crma=run.built.crma,
                                    source=source["checkpoint"])
        # 2 layers × 7 projections × (A, B)
        assert info == {"kind": "checkpoint", "lora_tensors": 28, "crma": True}
        saved = load_tensors(source["checkpoint"] / "trainable.safetensors")
        own = {n: p for n, p in run.built.model.named_parameters() if p.requires_grad}
        assert own.keys() == saved.keys()
        assert all(torch.equal(own[n], saved[n]) for n in own)
        crma_saved = load_tensors(source["checkpoint"] / "crma.safetensors")
        crma_own = run.built.crma.state_dict()
        assert all(torch.equal(crma_own[k], crma_saved[k]) for k in crma_saved)
        # The optimizer still points at the very parameters that were loaded.
        optimized = {id(p) for g in run.optimizer.param_groups for p in g["params"]}
        assert {id(p) for p in own.values()} <= optimized
    finally:
        run.cleanup()


def test_from_a_bundle_the_model_is_the_trained_model(tiny_model_dirs, chat_files, source):
    assert source_kind(source["bundle"]) == "bundle"
    run = recipe(tiny_model_dirs["llama"], chat_files)
    run.setup()
    try:
        load_adapter_weights(model=run.built.model, crma=run.built.crma,
                             source=source["bundle"])
        reference, _ = load_for_generation(tiny_model_dirs["llama"], source["bundle"])
        run.built.model.eval()
        with torch.no_grad():
            torch.testing.assert_close(run.built.model(PROMPT).logits,
                                       reference(PROMPT).logits, rtol=1e-5, atol=1e-5)
    finally:
        run.cleanup()


def test_the_first_step_continues_the_source_curve(tiny_model_dirs, chat_files, source):
    fresh = recipe(tiny_model_dirs["llama"], chat_files, max_steps=1)
    fresh.setup()
    fresh.train()
    fresh.cleanup()
    warm = recipe(tiny_model_dirs["llama"], chat_files, max_steps=1)
    warm.setup()
    load_adapter_weights(model=warm.built.model, crma=warm.built.crma,
                         source=source["checkpoint"])
    warm.train()
    warm.cleanup()
    fresh_first, warm_first = step_losses(fresh)[0], step_losses(warm)[0]
    source_last = source["losses"][14]  # the loss of step 15, the checkpoint's step
    learned = fresh_first - source_last
    assert learned > 0.5  # the source really trained
    assert abs(warm_first - source_last) < 0.25 * learned


@pytest.mark.parametrize("crma,lora,match", [
    (CRMAConfig(n=2), LORA, "n=4, r=1; this run's has n=2"),
    (CRMAConfig(), LoraSettings(r=8, alpha=16), "shape"),
    (CRMAConfig(), LoraSettings(r=4, alpha=8, target_modules=("q_proj", "v_proj")),
     "does not match"),
    (None, LORA, "trained with CRMA"),
])
def test_a_mismatched_source_is_refused(tiny_model_dirs, chat_files, source, crma, lora,
                                        match):
    run = recipe(tiny_model_dirs["llama"], chat_files, crma=crma, lora=lora)
    run.setup()
    try:
        before = {n: p.clone() for n, p in run.built.model.named_parameters()
                  if p.requires_grad}
        for where in ("checkpoint", "bundle"):
            with pytest.raises(CheckpointError, match=match):
                load_adapter_weights(model=run.built.model, crma=run.built.crma,
                                     source=source[where])
        after = {n: p for n, p in run.built.model.named_parameters() if p.requires_grad}
        assert all(torch.equal(before[n], after[n]) for n in before)  # nothing half-loaded
    finally:
        run.cleanup()


def test_a_lora_only_source_cannot_start_a_crma_run(tiny_model_dirs, chat_files, tmp_path):
    plain = recipe(tiny_model_dirs["llama"], chat_files, crma=None, max_steps=1)
    plain.setup()
    plain.train()
    plain.export_artifacts(tmp_path / "bundle")
    plain.cleanup()
    run = recipe(tiny_model_dirs["llama"], chat_files)
    run.setup()
    try:
        with pytest.raises(CheckpointError, match="no CRMA weights"):
            load_adapter_weights(model=run.built.model, crma=run.built.crma,
                                 source=tmp_path / "bundle")
    finally:
        run.cleanup()
    with pytest.raises(CheckpointError, match="neither"):
        source_kind(tmp_path)
