"""A CRMA checkpoint written before CRMA's read/write projections got their own optimizer group
(lr_rw) cannot be resumed: a clear StaleCheckpointError, which a job reports as such (free),
never a crash inside the optimizer."""

from __future__ import annotations

import json
import shutil

import pytest

from app.domain.job_state import ErrorCode
from app.services.job_errors import classify
from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig
from crma_core.errors import StaleCheckpointError


def _recipe(model_dir, chat_files, *, crma=CRMAConfig()) -> Recipe:
    train_file, _ = chat_files
    return Recipe(model_dir=model_dir, train_file=train_file, crma=crma,
                  lora=LoraSettings(r=4, alpha=8),
                  train=TrainConfig(epochs=1, batch_size=4, max_seq_len=64, max_steps=1))


def _as_before_lr_rw(checkpoint) -> None:
    """What the trainer wrote before lr_rw existed: no lr_rw in the run settings, and the
    read/write projections inside the LoRA's optimizer group."""
    meta_path = checkpoint / "trainer.json"
    meta = json.loads(meta_path.read_text())
    del meta["run"]["train"]["lr_rw"]
    meta_path.write_text(json.dumps(meta))
    optimizer_path = checkpoint / "optimizer.json"
    optimizer = json.loads(optimizer_path.read_text())
    groups = {g["name"]: g for g in optimizer["param_groups"]}
    groups["main"]["params"] += groups.pop("rw")["params"]
    optimizer["param_groups"] = list(groups.values())
    optimizer_path.write_text(json.dumps(optimizer))


def test_a_crma_checkpoint_from_before_lr_rw_is_a_clear_error(tiny_model_dirs, chat_files,
                                                               tmp_path):
    model_dir = tiny_model_dirs["llama"]
    recipe = _recipe(model_dir, chat_files)
    recipe.setup()
    recipe.train()
    recipe.save_checkpoint(tmp_path / "new")
    recipe.cleanup()
    shutil.copytree(tmp_path / "new", tmp_path / "old")
    _as_before_lr_rw(tmp_path / "old")

    resumed = _recipe(model_dir, chat_files)
    with pytest.raises(StaleCheckpointError, match="lr_rw") as caught:
        resumed.setup(resume_from=tmp_path / "old")
    resumed.cleanup()
    code, message = classify(caught.value)
    assert code == ErrorCode.INTERNAL_ERROR  # our update's fault: free of charge
    assert "own optimizer group" in message and "not be charged" in message

    today = _recipe(model_dir, chat_files)  # today's checkpoints still resume
    today.setup(resume_from=tmp_path / "new")
    assert today.state.step == 1
    today.cleanup()


def test_a_plain_lora_checkpoint_from_before_lr_rw_is_the_same_clear_error(
        tiny_model_dirs, chat_files, tmp_path):
    """Its optimizer groups did not change, but its settings lack lr_rw: refused the same
    way rather than as an unexplained settings difference."""
    model_dir = tiny_model_dirs["llama"]
    recipe = _recipe(model_dir, chat_files, crma=None)
    recipe.setup()
    recipe.train()
    recipe.save_checkpoint(tmp_path / "c")
    recipe.cleanup()
    meta = json.loads((tmp_path / "c" / "trainer.json").read_text())
    del meta["run"]["train"]["lr_rw"]
    (tmp_path / "c" / "trainer.json").write_text(json.dumps(meta))
    resumed = _recipe(model_dir, chat_files, crma=None)
    with pytest.raises(StaleCheckpointError, match="own optimizer group"):
        resumed.setup(resume_from=tmp_path / "c")
    resumed.cleanup()
