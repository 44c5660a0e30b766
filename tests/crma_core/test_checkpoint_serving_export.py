"""Recipe.export_adapter: the adapter a checkpoint carries for serving (worker/training.py
writes it into every checkpoint's `serving/`). It reloads as exactly the model at that step,
and writing it mid-training changes nothing in training (PiSSA included, whose conversion
loads and deletes a second adapter)."""

from __future__ import annotations

import shutil

import pytest
import torch

from crma_core import CRMAConfig, LoraSettings, Recipe, TrainCallbacks, TrainConfig
from crma_core.checkpoint import trainable_state
from crma_core.loader import load_for_generation

IDS = torch.tensor([[1, 40, 50, 60, 70, 2]])


def _recipe(model_dir, chat_files, *, lora, callbacks=None) -> Recipe:
    train_file, _ = chat_files
    return Recipe(model_dir=model_dir, train_file=train_file, crma=CRMAConfig(), lora=lora,
                  train=TrainConfig(epochs=1, batch_size=4, max_seq_len=128, lr_main=1e-3,
                                    lr_mix=1e-2, seed=0, max_steps=4, checkpoint_every_steps=2),
                  callbacks=callbacks)


@pytest.mark.parametrize("init", ["default", "pissa"])
def test_checkpoint_exports_serve_that_step_and_leave_training_alone(
        tiny_model_dirs, chat_files, tmp_path, init) -> None:
    model_dir = tiny_model_dirs["llama"]
    lora = LoraSettings(r=4, alpha=8, init=init)
    exported: dict[int, torch.Tensor] = {}
    recipe = None

    def on_checkpoint(step, directory) -> None:
        target = recipe.export_adapter(directory / "serving")
        shutil.copytree(target, tmp_path / f"step-{step}")
        model = recipe.built.model
        was_training = model.training
        model.eval()
        with torch.no_grad():
            exported[step] = model(IDS).logits
        model.train(was_training)

    recipe = _recipe(model_dir, chat_files, lora=lora,
                     callbacks=TrainCallbacks(on_checkpoint=on_checkpoint))
    recipe.setup()
    recipe.train()
    with_exports = {k: v.clone() for k, v in trainable_state(recipe.built.model).items()}
    recipe.cleanup()

    plain = _recipe(model_dir, chat_files, lora=lora,
                    callbacks=TrainCallbacks(on_checkpoint=lambda step, directory: None))
    plain.setup()
    plain.train()
    without = trainable_state(plain.built.model)
    plain.cleanup()
    assert with_exports.keys() == without.keys()
    for name, tensor in without.items():
        torch.testing.assert_close(with_exports[name], tensor, rtol=0, atol=0, msg=name)

    assert sorted(exported) == [2, 4]
    for step, logits in exported.items():
        assert (tmp_path / f"step-{step}" / "lora" / "adapter_model.safetensors").is_file()
        assert (tmp_path / f"step-{step}" / "crma.safetensors").is_file()
        model, _ = load_for_generation(model_dir, tmp_path / f"step-{step}")
        with torch.no_grad():
            torch.testing.assert_close(model(IDS).logits, logits, rtol=1e-4, atol=1e-4)
