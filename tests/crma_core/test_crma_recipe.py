"""The single-task recipe on tiny models: T9, T15, resume, stop reasons, artifacts, loader."""

import json
import shutil

import pytest
import torch

from crma_core import (CRMAConfig, LoraSettings, Recipe, TrainCallbacks, TrainConfig,
                       load_for_generation)
from crma_core.artifacts import verify_bundle
from crma_core.data import epoch_batches
from crma_core.errors import CheckpointError, QuantizationUnavailableError
from crma_core.model import get_crma

FAMILIES = ("llama", "mistral", "gemma2")


def _config(**overrides) -> TrainConfig:
    base = dict(epochs=1, batch_size=4, max_seq_len=128, lr_main=1e-3, seed=0)
    return TrainConfig(**{**base, **overrides})


def _recipe(model_dir, chat_files, *, crma=CRMAConfig(), lora=LoraSettings(r=4, alpha=8),
            callbacks=None, validation=True, **train):
    train_file, val_file = chat_files
    return Recipe(model_dir=model_dir, train_file=train_file,
                  validation_file=val_file if validation else None, crma=crma, lora=lora,
                  train=_config(**train), callbacks=callbacks)


def test_t9_optimizer_groups(tiny_model_dirs, chat_files):
    recipe = _recipe(tiny_model_dirs["llama"], chat_files, lr_rw=2e-5, lr_mix=5e-3,
                     lr_gate=5e-5)
    recipe.setup()
    try:
        groups = {g["name"]: g for g in recipe.optimizer.param_groups}
        handle = recipe.built.crma
        ids = {name: {id(p) for p in g["params"]} for name, g in groups.items()}
        assert ids["mix"] == {id(layer.log_mix) for layer in handle.layers}
        assert ids["gate"] == {id(layer._log_alpha) for layer in handle.layers}
        assert groups["mix"]["lr"] == 5e-3 and groups["mix"]["weight_decay"] == 0.0
        assert groups["gate"]["lr"] == 5e-5 and groups["gate"]["weight_decay"] == 0.0
        assert groups["main"]["lr"] == 1e-3
        names = {id(p): n for n, p in recipe.built.model.named_parameters()}
        main_model = [names[i] for i in ids["main"] if i in names]
        assert main_model and all("lora_" in n for n in main_model)
        crma_rw = {id(layer.read) for layer in handle.layers} | {id(layer.write) for layer in handle.layers}
        # CRMA read/write have their own group and rate, apart from the LoRA's.
        assert ids["rw"] == crma_rw and not crma_rw & ids["main"]
        assert groups["rw"]["lr"] == 2e-5 and groups["rw"]["weight_decay"] == 0.01
        trainable = {id(p) for p in recipe.built.model.parameters() if p.requires_grad}
        assert ids["main"] == trainable  # every LoRA param, no base param
        base = [p for n, p in recipe.built.model.named_parameters() if "lora_" not in n]
        assert base and not any(p.requires_grad for p in base)
    finally:
        recipe.cleanup()


@pytest.mark.parametrize("family", FAMILIES)
def test_training_lowers_loss_and_logs_everything(tiny_model_dirs, chat_files, family, tmp_path):
    steps, evals = [], []
    recipe = _recipe(tiny_model_dirs[family], chat_files, epochs=3, eval_every=6,
                     callbacks=TrainCallbacks(on_step=steps.append, on_eval=evals.append))
    recipe.setup()
    try:
        before = recipe.evaluate()
        result = recipe.train()
        assert result.stop_reason == "completed" and result.steps == 18 == len(steps)
        assert result.final_val_loss < before
        assert [e.step for e in evals] == [6, 12, 18]
        assert result.peak_grad_norm == max(s.grad_norm for s in steps)
        assert result.mean_grad_norm == pytest.approx(sum(s.grad_norm for s in steps) / 18)
        assert result.trained_tokens == steps[-1].trained_tokens
        for s in steps:  # T15
            record = s.to_dict()
            json.dumps(record)
            assert set(record) >= {"step", "loss", "lr", "grad_norm", "clipped", "tokens_per_s",
                                   "trained_tokens", "crma"}
            assert len(s.crma["alpha"]) == len(s.crma["spectral_norm"]) == 2
            assert max(abs(x - 1) for x in s.crma["spectral_norm"]) <= 1e-6
            assert s.crma["max_marginal_error"] <= 1e-6
        handle = recipe.built.crma
        assert any(float((layer.log_mix - 3 * torch.eye(4)).abs().max()) > 0 for layer in handle.layers)
        manifest = recipe.export_artifacts(tmp_path / "bundle")
    finally:
        recipe.cleanup()
    names = {f["name"] for f in manifest["files"]}
    assert {"lora/adapter_config.json", "lora/adapter_model.safetensors", "crma.safetensors",
            "crma_config.json", "metrics.jsonl", "plots/loss.png", "plots/grad_norm.png"} <= names
    assert verify_bundle(tmp_path / "bundle") == manifest
    assert (tmp_path / "bundle" / "plots" / "loss.png").read_bytes()[:4] == b"\x89PNG"
    records = [json.loads(line) for line in
               (tmp_path / "bundle" / "metrics.jsonl").read_text().splitlines()]
    assert [r["type"] for r in records].count("step") == 18
    assert [r["type"] for r in records].count("eval") == 3
    assert records[-1]["type"] == "summary" and len(records) == 18 + 3 + 1


def test_t15_fifty_step_smoke(tiny_model_dirs, chat_files):
    deviations = []
    recipe = _recipe(tiny_model_dirs["llama"], chat_files, epochs=9, max_steps=50,
                     lr_mix=5e-2, validation=False,
                     callbacks=TrainCallbacks(on_step=lambda s: deviations.append(
                         max(abs(x - 1) for x in s.crma["spectral_norm"]))))
    recipe.setup()
    try:
        result = recipe.train()
    finally:
        recipe.cleanup()
    assert result.stop_reason == "max_steps" and len(deviations) == 50
    assert max(deviations) <= 1e-6


def _losses_of(recipe):
    return [r["loss"] for r in recipe.state.history if r["type"] == "step"]


def test_resume_reproduces_uninterrupted_run(tiny_model_dirs, chat_files, tmp_path):
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)  # dropout: the RNG state must resume too
    settings = dict(epochs=2, batch_size=4, checkpoint_every_steps=4, eval_every=5,
                    lora=lora, crma=CRMAConfig())
    full = _recipe(tiny_model_dirs["llama"], chat_files, **settings)
    full.setup()
    full_result = full.train()
    full_losses = _losses_of(full)
    full_best = full.best
    full.cleanup()

    saved = tmp_path / "ckpt"

    def keep_second(step, directory):
        if step == 8:  # after the evaluation at step 5: the best weights so far go along
            shutil.copytree(directory, saved)

    first = _recipe(tiny_model_dirs["llama"], chat_files, **settings,
                    callbacks=TrainCallbacks(on_checkpoint=keep_second,
                                             should_stop=lambda: "cancelled" if saved.exists() else None))
    first.setup()
    assert first.train().stop_reason == "cancelled"
    assert first.state.step == 8
    first.cleanup()
    assert sorted(p.name for p in saved.iterdir()) == sorted([
        "trainable.safetensors", "crma.safetensors", "crma_config.json", "optimizer.safetensors",
        "optimizer.json", "rng.safetensors", "trainer.json", "metrics.jsonl",
        "checkpoint_metrics.json", "best.safetensors"])

    resumed = _recipe(tiny_model_dirs["llama"], chat_files, **settings)
    resumed.setup(resume_from=saved)
    result = resumed.train()
    losses = _losses_of(resumed)
    resumed_best = resumed.best
    resumed.cleanup()
    assert result.steps == full_result.steps == 12
    assert result.trained_tokens == full_result.trained_tokens
    assert len(losses) == len(full_losses)
    assert max(abs(a - b) for a, b in zip(losses, full_losses)) <= 1e-6
    assert result.final_val_loss == pytest.approx(full_result.final_val_loss, abs=1e-6)
    assert (result.best_step, resumed_best.step) == (full_result.best_step, full_best.step)
    for name, tensor in full_best.tensors.items():
        torch.testing.assert_close(resumed_best.tensors[name], tensor, rtol=0, atol=1e-6)


def test_resume_refuses_other_settings(tiny_model_dirs, chat_files, tmp_path):
    recipe = _recipe(tiny_model_dirs["llama"], chat_files, max_steps=1, validation=False)
    recipe.setup()
    recipe.train()
    recipe.save_checkpoint(tmp_path / "c")
    recipe.cleanup()
    other = _recipe(tiny_model_dirs["llama"], chat_files, max_steps=1, validation=False,
                    crma=CRMAConfig(n=2))
    with pytest.raises(CheckpointError, match="crma"):
        other.setup(resume_from=tmp_path / "c")
    other.cleanup()


def test_should_stop_and_token_budget(tiny_model_dirs, chat_files, tmp_path):
    calls = []
    recipe = _recipe(tiny_model_dirs["mistral"], chat_files, validation=False,
                     callbacks=TrainCallbacks(
                         should_stop=lambda: "cancelled" if len(calls) >= 2 else None,
                         on_step=calls.append))
    recipe.setup()
    result = recipe.train()
    assert result.stop_reason == "cancelled" and result.steps == 2
    recipe.export_artifacts(tmp_path / "partial")  # a stopped run still exports
    recipe.cleanup()
    assert (tmp_path / "partial" / "lora" / "adapter_model.safetensors").is_file()

    steps = []
    recipe = _recipe(tiny_model_dirs["mistral"], chat_files, validation=False, token_budget=700,
                     callbacks=TrainCallbacks(on_step=steps.append))
    recipe.setup()
    result = recipe.train()
    recipe.cleanup()
    assert result.stop_reason == "budget"
    assert 0 < result.trained_tokens <= 700
    assert result.trained_tokens == sum(s.trained_tokens - (steps[i - 1].trained_tokens if i else 0)
                                        for i, s in enumerate(steps))


def test_checkpoint_callback_gets_a_fresh_directory_that_is_removed(tiny_model_dirs, chat_files):
    seen = []

    def on_checkpoint(step, directory):
        assert (directory / "trainer.json").is_file()
        seen.append((step, directory))

    recipe = _recipe(tiny_model_dirs["llama"], chat_files, validation=False,
                     checkpoint_every_steps=2, max_steps=4,
                     callbacks=TrainCallbacks(on_checkpoint=on_checkpoint))
    recipe.setup()
    recipe.train()
    recipe.cleanup()
    assert [s for s, _ in seen] == [2, 4]
    assert len({d for _, d in seen}) == 2 and not any(d.exists() for _, d in seen)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_bundle_reloads_through_peft_and_loader(tiny_model_dirs, chat_files, tmp_path, family):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model_dir = tiny_model_dirs[family]
    recipe = _recipe(model_dir, chat_files, max_steps=6, validation=False, lr_mix=1e-2)
    recipe.setup()
    recipe.train()
    recipe.export_artifacts(tmp_path)
    trained = recipe.built.model
    trained.eval()
    ids = torch.tensor([[1, 40, 50, 60, 70, 2]])
    with torch.no_grad():
        expected = trained(ids).logits
        recipe.built.crma.enabled = False
        lora_only = trained(ids).logits
    recipe.cleanup()

    base = AutoModelForCausalLM.from_pretrained(model_dir, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, lora_only, rtol=1e-5, atol=1e-5)

    model, tokenizer = load_for_generation(model_dir, tmp_path)
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-5, atol=1e-5)
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "what is 3 plus 3?"}],
                                           add_generation_prompt=True, return_tensors="pt",
                                           return_dict=True)
    out = model.generate(**prompt, max_new_tokens=5, do_sample=False)
    assert out.shape[1] > prompt["input_ids"].shape[1]
    get_crma(model).enabled = False
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, lora_only, rtol=1e-5, atol=1e-5)


def test_lora_only_run(tiny_model_dirs, chat_files, tmp_path):
    steps = []
    recipe = _recipe(tiny_model_dirs["gemma2"], chat_files, crma=None, max_steps=3,
                     callbacks=TrainCallbacks(on_step=steps.append))
    recipe.setup()
    recipe.train()
    assert [g["name"] for g in recipe.optimizer.param_groups] == ["main"]
    manifest = recipe.export_artifacts(tmp_path)
    recipe.cleanup()
    assert all(s.crma is None for s in steps)
    assert not (tmp_path / "crma.safetensors").exists() and manifest["crma"] is None
    model, _ = load_for_generation(tiny_model_dirs["gemma2"], tmp_path)
    assert get_crma(model) is None


def test_pissa_adapter_is_converted_for_the_original_base(tiny_model_dirs, chat_files, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    recipe = _recipe(tiny_model_dirs["llama"], chat_files, crma=None, max_steps=3,
                     validation=False, lora=LoraSettings(r=4, alpha=4, init="pissa"))
    recipe.setup()
    recipe.train()
    ids = torch.tensor([[1, 40, 50, 60, 70, 2]])
    recipe.built.model.eval()
    with torch.no_grad():
        expected = recipe.built.model(ids).logits
    recipe.export_artifacts(tmp_path)
    recipe.cleanup()
    base = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["llama"], local_files_only=True)
    model = PeftModel.from_pretrained(base, tmp_path / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU error")
def test_qlora_on_cpu_is_a_clear_error(tiny_model_dirs, chat_files):
    recipe = _recipe(tiny_model_dirs["llama"], chat_files,
                     lora=LoraSettings(quantization="nf4"))
    with pytest.raises(QuantizationUnavailableError, match="CUDA"):
        recipe.setup()
    recipe.cleanup()


def test_packing_and_text_data(tiny_model_dirs, tmp_path):
    from crma_core.testing import write_jsonl

    data = write_jsonl(tmp_path / "t.jsonl",
                       [{"text": f"the number {i} follows {i - 1}"} for i in range(1, 30)])
    recipe = Recipe(model_dir=tiny_model_dirs["mistral"], train_file=data,
                    train=_config(packing=True, max_seq_len=64))
    recipe.setup()
    assert len(recipe.rows) < 29
    result = recipe.train()
    recipe.cleanup()
    assert result.stop_reason == "completed" and result.steps == -(-len(recipe.rows) // 4)


def test_gradient_checkpointing_gives_the_same_step(tiny_model_dirs, chat_files):
    from crma_core.loop import loss_terms

    grads = []
    for checkpointing in (False, True):
        recipe = _recipe(tiny_model_dirs["gemma2"], chat_files, validation=False,
                         gradient_checkpointing=checkpointing, lora=LoraSettings(r=4, alpha=8))
        recipe.setup()
        handle = recipe.built.crma
        with torch.no_grad():
            for layer in handle.layers:
                layer.write.normal_(std=0.02)
        recipe.built.model.train()
        batch = next(iter(epoch_batches(
            recipe.rows, batch_size=4, seed=0, epoch=0, pad_id=recipe.built.tokenizer.pad_token_id)))[1]
        loss_sum, n = loss_terms(recipe.built.model, batch)
        (loss_sum / n).backward()
        grads.append([p.grad.clone() for g in handle.parameter_groups().values() for p in g])
        recipe.cleanup()
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_bfloat16_training_keeps_crma_in_float32(tiny_model_dirs, chat_files):
    steps = []
    recipe = _recipe(tiny_model_dirs["llama"], chat_files, validation=False, dtype="bfloat16",
                     max_steps=3, callbacks=TrainCallbacks(on_step=steps.append))
    recipe.setup()
    result = recipe.train()
    assert result.steps == 3 and all(torch.isfinite(torch.tensor(s.loss)) for s in steps)
    assert all(p.dtype == torch.float32 for p in recipe.built.crma.parameters())
    assert max(s.crma["max_marginal_error"] for s in steps) <= 1e-6
    recipe.cleanup()


def test_max_steps_equal_to_the_data_is_completed(tiny_model_dirs, chat_files):
    recipe = _recipe(tiny_model_dirs["llama"], chat_files, validation=False, max_steps=6)
    recipe.setup()
    assert recipe.train().stop_reason == "completed"  # 24 rows / 4 = 6 batches
    recipe.cleanup()


def test_public_names_resolve():
    import crma_core

    for name in crma_core.__all__:
        assert getattr(crma_core, name) is not None
    with pytest.raises(AttributeError):
        crma_core.not_a_name  # noqa: B018


def test_t13_peak_grad_norm_is_measured_before_clipping(tiny_model_dirs, chat_files):
    steps = []
    recipe = _recipe(tiny_model_dirs["llama"], chat_files, validation=False, clip="max_norm",
                     max_grad_norm=1e-3, max_steps=3, callbacks=TrainCallbacks(on_step=steps.append))
    recipe.setup()
    result = recipe.train()
    recipe.cleanup()
    assert all(s.clipped and s.grad_norm > 1e-3 for s in steps)
    assert result.peak_grad_norm == max(s.grad_norm for s in steps) > 1e-3


@pytest.mark.parametrize("family", FAMILIES)
def test_response_loss_matches_the_models_own_loss(tiny_model_dirs, family):
    from transformers import AutoModelForCausalLM

    from crma_core.data import collate, tokenize_example
    from crma_core.loop import loss_terms
    from crma_core.recipe import load_tokenizer
    from crma_core.testing import arithmetic_chat_rows

    tokenizer = load_tokenizer(tiny_model_dirs[family])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs[family], local_files_only=True).eval()
    rows = [tokenize_example(r, "chat", tokenizer) for r in arithmetic_chat_rows(3)]
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        loss_sum, n = loss_terms(model, batch)
        reference = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                          labels=batch["labels"]).loss
    torch.testing.assert_close(loss_sum / n, reference, rtol=1e-5, atol=1e-6)
