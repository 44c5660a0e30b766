"""The usual knobs reach what they configure (optimizer, schedule, clipper, peft, loss mask,
evaluation and checkpoint steps), bad values are refused, and per-model bounds hold."""

import math

import pytest

from crma_core import CRMAConfig, LoraSettings, Recipe, TrainCallbacks, TrainConfig
from crma_core.catalog import CATALOG
from crma_core.clipping import MaxNormClip, NoClip, ZClip
from crma_core.data import load_examples
from crma_core.errors import ConfigError
from crma_core.limits import limit_issues, model_limits
from crma_core.loop import evenly_spaced
from crma_core.recipe import load_tokenizer


def _run(model_dir, chat_files, *, lora=LoraSettings(r=4, alpha=8), steps=None, evals=None,
         checkpoints=None, **train):
    callbacks = TrainCallbacks(
        on_step=steps.append if steps is not None else None,
        on_eval=evals.append if evals is not None else None,
        on_checkpoint=(lambda step, d: checkpoints.append(step)) if checkpoints is not None
        else None)
    recipe = Recipe(model_dir=model_dir, train_file=chat_files[0],
                    validation_file=chat_files[1], lora=lora, crma=CRMAConfig(),
                    train=TrainConfig(**{"epochs": 1, "batch_size": 4, "max_seq_len": 128,
                                         **train}),
                    callbacks=callbacks)
    recipe.setup()
    return recipe


def test_optimizer_schedule_and_warmup_ratio(tiny_model_dirs, chat_files):
    steps = []
    recipe = _run(tiny_model_dirs["llama"], chat_files, steps=steps, lr_main=1e-3,
                  weight_decay=0.05, warmup_ratio=0.34, lr_schedule="cosine")
    try:
        groups = {g["name"]: g for g in recipe.optimizer.param_groups}
        assert groups["main"]["weight_decay"] == 0.05
        assert groups["mix"]["weight_decay"] == groups["gate"]["weight_decay"] == 0.0
        assert recipe.plan.warmup_steps == math.ceil(0.34 * 6) == 3
        recipe.train()
    finally:
        recipe.cleanup()
    lrs = [s.lr for s in steps]
    assert lrs[:3] == pytest.approx([1e-3 / 3, 2e-3 / 3, 1e-3])  # linear warm-up
    assert lrs[3:] == pytest.approx([1e-3 * 0.5 * (1 + math.cos(math.pi * k / 3))
                                     for k in range(3)])  # cosine over the other 3 steps


@pytest.mark.parametrize(("clip", "max_norm", "kind"), [("none", None, NoClip),
                                                         ("max_norm", 0.5, MaxNormClip),
                                                         ("zclip", 2.0, ZClip)])
def test_clipping_choice_reaches_the_clipper(tiny_model_dirs, chat_files, clip, max_norm, kind):
    steps = []
    recipe = _run(tiny_model_dirs["llama"], chat_files, steps=steps, clip=clip,
                  max_grad_norm=max_norm, max_steps=2, lr_main=1e-2)
    try:
        recipe.train()
        groups = {g["name"] for g in recipe.optimizer.param_groups}
    finally:
        recipe.cleanup()
    # One clipper of the chosen kind per optimizer group.
    clippers = recipe.clipper.clippers
    assert set(clippers) == groups and len(groups) > 1
    assert all(isinstance(c, kind) and getattr(c, "max_grad_norm", None) == max_norm
               for c in clippers.values())
    if clip == "none":
        assert not any(s.clipped for s in steps)


def test_lora_knobs_reach_peft(tiny_model_dirs, chat_files):
    lora = LoraSettings(r=6, alpha=3, dropout=0.2, target_modules=("q_proj", "v_proj"))
    recipe = _run(tiny_model_dirs["llama"], chat_files, lora=lora)
    try:
        config = recipe.built.model.peft_config["default"]
        assert (config.r, config.lora_alpha, config.lora_dropout) == (6, 3, 0.2)
        assert set(config.target_modules) == {"q_proj", "v_proj"}
        adapted = {name.split(".")[-4] for name, _ in recipe.built.model.named_parameters()
                   if "lora_A" in name}
        assert adapted == {"q_proj", "v_proj"}
    finally:
        recipe.cleanup()


def test_train_on_inputs_puts_the_prompt_in_the_loss(tiny_model_dirs, chat_files, tmp_path):
    from crma_core.testing import write_jsonl

    tokenizer = load_tokenizer(tiny_model_dirs["llama"])
    responses, _ = load_examples(chat_files[0], tokenizer, max_seq_len=128)
    everything, _ = load_examples(chat_files[0], tokenizer, max_seq_len=128,
                                  train_on_inputs=True)
    for masked, full in zip(responses, everything):
        assert full.input_ids == masked.input_ids and full.labels == full.input_ids
        assert masked.trained_tokens < full.trained_tokens
    pc = write_jsonl(tmp_path / "pc.jsonl", [{"prompt": "what is 2 plus 2? ", "completion": "4"}])
    (masked,), _ = load_examples(pc, tokenizer, max_seq_len=64)
    (full,), _ = load_examples(pc, tokenizer, max_seq_len=64, train_on_inputs=True)
    assert full.trained_tokens == len(full.input_ids) > masked.trained_tokens
    steps = {}
    for flag in (False, True):
        steps[flag] = []
        recipe = _run(tiny_model_dirs["llama"], chat_files, steps=steps[flag], max_steps=1,
                      train_on_inputs=flag)
        recipe.train()
        recipe.cleanup()
    assert steps[True][0].scored_tokens > steps[False][0].scored_tokens


def test_n_evals_and_n_checkpoints_place_their_steps(tiny_model_dirs, chat_files):
    assert evenly_spaced(3, 12) == {4, 8, 12} and evenly_spaced(4, 6) == {2, 3, 5, 6}
    assert evenly_spaced(10, 3) == {1, 2, 3} and evenly_spaced(0, 5) == frozenset()
    evals, checkpoints = [], []
    recipe = _run(tiny_model_dirs["llama"], chat_files, evals=evals, checkpoints=checkpoints,
                  epochs=2, n_evals=3, n_checkpoints=2)  # 12 steps
    try:
        result = recipe.train()
    finally:
        recipe.cleanup()
    assert [e.step for e in evals] == [4, 6, 8, 12]  # n_evals at 4, 8, 12; checkpoint at 6
    assert checkpoints == [6, 12]
    assert result.full_valid_loss == evals[-1].val_loss


@pytest.mark.parametrize("bad", [
    dict(warmup_ratio=1.0), dict(warmup_ratio=-0.1), dict(warmup_ratio=0.1, warmup_steps=2),
    dict(clip="adaptive"), dict(max_grad_norm=0.0), dict(lr_schedule="step"),
    dict(micro_batch_size=0), dict(memory_budget_mb=0), dict(n_evals=-1),
    dict(n_checkpoints=-2), dict(eval_every=2, n_evals=3), dict(weight_decay=-0.1)])
def test_bad_train_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        TrainConfig(**bad)


@pytest.mark.parametrize("bad", [dict(r=0), dict(dropout=1.0), dict(target_modules="every"),
                                 dict(target_modules=()), dict(target_modules=("",))])
def test_bad_lora_settings_are_refused(bad):
    with pytest.raises(ConfigError):
        LoraSettings(**bad)


def test_settings_round_trip_through_dicts():
    train = TrainConfig(warmup_ratio=0.1, n_evals=4, train_on_inputs=True, clip="none",
                        micro_batch_size=2, memory_budget_mb=512)
    lora = LoraSettings(dropout=0.05, target_modules=("q_proj", "down_proj"))
    assert TrainConfig.from_dict(train.to_dict()) == train
    assert LoraSettings.from_dict(lora.to_dict()) == lora


def test_model_limits_per_catalog_model():
    for model in CATALOG.values():
        limits = model_limits(model)
        data = limits.to_dict()
        assert data["train"]["max_seq_len"]["max"] == model.context_length
        assert data["lora"]["r"]["max"] == min(256, model.hidden_size // 4)
        assert data["quantization"] == (["nf4"] if model.qlora else [])
        assert "all-linear" in data["target_modules"]
        assert limit_issues(model, train=TrainConfig(), lora=LoraSettings()) == []
    smol = CATALOG["smollm2-135m-instruct"]
    issues = limit_issues(smol, train=TrainConfig(max_seq_len=16384, batch_size=4,
                                                  micro_batch_size=8, n_evals=500),
                          lora=LoraSettings(r=256, target_modules=("q_proj", "lm_head"),
                                            quantization="nf4"))
    fields = {i.field for i in issues}
    assert fields == {"train.max_seq_len", "train.micro_batch_size", "train.n_evals", "lora.r",
                      "lora.target_modules", "lora.quantization"}
    assert any("lm_head" in i.message for i in issues)
    assert all("smollm2-135m-instruct" in i.message for i in issues
               if i.field != "train.micro_batch_size")
