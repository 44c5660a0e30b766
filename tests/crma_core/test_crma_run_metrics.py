"""Metrics under OpenAI's names on a tiny run: mean token accuracy as defined, per-eval and
per-checkpoint valid_*, full_valid_* at the end, the LoRA-alone figure, the best checkpoint
by validation loss (tracked, kept, exported as best/ and loadable)."""

import json

import pytest
import torch

from crma_core import CRMAConfig, LoraSettings, Recipe, TrainCallbacks, TrainConfig
from crma_core.callbacks import CHECKPOINT_METRICS, CheckpointMetrics
from crma_core.data import collate, tokenize_example
from crma_core.loop import evaluate, score_batch
from crma_core.recipe import load_tokenizer
from crma_core.testing import arithmetic_chat_rows, make_tiny_model_dir, write_jsonl


def test_score_batch_accuracy_is_the_argmax_share_of_scored_tokens(tiny_model_dirs):
    from transformers import AutoModelForCausalLM

    tokenizer = load_tokenizer(tiny_model_dirs["gemma2"])
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dirs["gemma2"],
                                                 local_files_only=True).eval()
    rows = [tokenize_example(r, "chat", tokenizer) for r in arithmetic_chat_rows(4)]
    batch = collate(rows, tokenizer.pad_token_id)
    with torch.no_grad():
        _, n, correct = score_batch(model, batch)
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits[:, :-1]
    targets = batch["labels"][:, 1:]
    scored = targets != -100
    assert n == int(scored.sum())
    assert correct == int(((logits.argmax(-1) == targets) & scored).sum())
    result = evaluate(model, [batch])
    assert result.tokens == n and result.accuracy == correct / n


@pytest.fixture(scope="module")
def overfit_files(tmp_path_factory):
    """Train on one answer, validate on its opposite: validation loss first falls (the chat
    format is learned) and then rises as the trained answer crowds out the validated one.
    (Arithmetic answers on both sides kept improving together on the tiny model, so the best
    evaluation was the last one.)"""
    root = tmp_path_factory.mktemp("overfit")

    def rows(answer: str) -> list[dict]:
        return [{"messages": [{"role": "user", "content": f"what is {i} plus {i}?"},
                              {"role": "assistant", "content": answer}]} for i in range(8)]

    return (write_jsonl(root / "train.jsonl", rows("yes yes yes yes.")),
            write_jsonl(root / "val.jsonl", rows("no no no no.")))


def _overfitting_recipe(model_dir, files, **callbacks):
    return Recipe(model_dir=model_dir, train_file=files[0], validation_file=files[1],
                  crma=CRMAConfig(), lora=LoraSettings(r=8, alpha=16),
                  train=TrainConfig(epochs=12, batch_size=4, max_seq_len=64, lr_main=3e-2,
                                    lr_rw=1e-2, clip="none", lr_schedule="constant",
                                    n_evals=12, n_checkpoints=3),
                  callbacks=TrainCallbacks(**callbacks))


def test_metrics_best_checkpoint_and_export(tiny_model_dirs, overfit_files, tmp_path):
    steps, evals, checkpoints = [], [], {}

    def on_checkpoint(step, directory):
        checkpoints[step] = CheckpointMetrics.from_dict(
            json.loads((directory / CHECKPOINT_METRICS).read_text()))

    recipe = _overfitting_recipe(tiny_model_dirs["llama"], overfit_files,
                                 on_step=steps.append, on_eval=evals.append,
                                 on_checkpoint=on_checkpoint)
    recipe.setup()
    try:
        result = recipe.train()
        val_losses = [e.val_loss for e in evals]
        assert result.steps == 24 and [e.step for e in evals] == list(range(2, 25, 2))
        best = min(evals, key=lambda e: e.val_loss)
        assert result.best_step == best.step and result.best_valid_loss == best.val_loss
        assert [e.is_best for e in evals] == [
            e.val_loss < min(val_losses[:i], default=float("inf")) for i, e in enumerate(evals)]
        assert best.step < result.steps, "the set-up must overfit so the best is not the last"
        # full_valid_* is the final model on the whole file; the LoRA-alone figure is the
        # same model with CRMA off.
        final = recipe.evaluate_metrics()
        assert result.full_valid_loss == pytest.approx(final.loss, abs=1e-6)
        assert result.full_valid_mean_token_accuracy == final.accuracy
        recipe.built.crma.enabled = False
        assert result.full_valid_loss_lora_only == pytest.approx(recipe.evaluate(), abs=1e-6)
        recipe.built.crma.enabled = True
        manifest = recipe.export_artifacts(tmp_path / "bundle")
    finally:
        recipe.cleanup()

    assert all(0.0 <= s.mean_token_accuracy <= 1.0 and s.scored_tokens > 0 for s in steps)
    assert result.final_train_mean_token_accuracy == steps[-1].mean_token_accuracy
    assert sorted(checkpoints) == [8, 16, 24]
    for step, metrics in checkpoints.items():
        at = next(e for e in evals if e.step == step)
        assert (metrics.train_loss, metrics.valid_loss) == (steps[step - 1].loss, at.val_loss)
        assert metrics.valid_mean_token_accuracy == at.val_mean_token_accuracy
        assert metrics.is_best == (min(e.val_loss for e in evals if e.step <= step) == at.val_loss)
    assert checkpoints[24].full_valid_loss == result.full_valid_loss
    assert checkpoints[8].full_valid_loss is None

    bundle = tmp_path / "bundle"
    records = [json.loads(line) for line in (bundle / "metrics.jsonl").read_text().splitlines()]
    summary = records[-1]
    assert summary["type"] == "summary" and summary["best_step"] == best.step
    assert {k: summary[k] for k in ("full_valid_loss", "full_valid_mean_token_accuracy",
                                    "train_loss", "train_mean_token_accuracy")} == {
        "full_valid_loss": result.full_valid_loss,
        "full_valid_mean_token_accuracy": result.full_valid_mean_token_accuracy,
        "train_loss": result.final_train_loss,
        "train_mean_token_accuracy": result.final_train_mean_token_accuracy}
    assert [r["step"] for r in records if r["type"] == "checkpoint"] == [8, 16, 24]
    # Every line carries OpenAI's names: steps train_*, evaluations valid_*, checkpoints all.
    for record in records:
        if record["type"] == "step":
            assert record["train_loss"] == record["loss"]
            assert record["train_mean_token_accuracy"] == record["mean_token_accuracy"]
        elif record["type"] == "eval":
            assert record["valid_loss"] == record["val_loss"]
            assert record["valid_mean_token_accuracy"] == record["val_mean_token_accuracy"]
        elif record["type"] == "checkpoint":
            assert {"train_loss", "train_mean_token_accuracy", "valid_loss",
                    "valid_mean_token_accuracy", "full_valid_loss"} <= set(record)
    assert {r["type"] for r in records} >= {"step", "eval", "checkpoint", "summary"}
    assert manifest["best"] == {"step": best.step, "valid_loss": best.val_loss}
    assert manifest["best_dir"] == "best"
    names = {f["name"] for f in manifest["files"]}
    assert {"best/lora/adapter_model.safetensors", "best/lora/adapter_config.json",
            "best/crma.safetensors", "best/crma_config.json", "README.md",
            "lora/README.md"} <= names

    # The exported best/ adapter is the model of the best step.
    from crma_core.data import load_eval_batches
    from crma_core.loader import load_for_generation

    model_dir = tiny_model_dirs["llama"]
    tokenizer = load_tokenizer(model_dir)
    batches = load_eval_batches(overfit_files[1], tokenizer, max_seq_len=64, batch_size=4)
    model, _ = load_for_generation(model_dir, bundle / "best")
    assert evaluate(model, batches).loss == pytest.approx(best.val_loss, abs=1e-5)
    model, _ = load_for_generation(model_dir, bundle)
    assert evaluate(model, batches).loss == pytest.approx(result.full_valid_loss, abs=1e-5)


def test_no_validation_file_means_no_valid_metrics(tiny_model_dirs, chat_files, tmp_path):
    recipe = Recipe(model_dir=tiny_model_dirs["llama"], train_file=chat_files[0],
                    train=TrainConfig(epochs=1, batch_size=4, max_seq_len=128, n_evals=2))
    recipe.setup()
    try:
        result = recipe.train()
        assert recipe.checkpoint_metrics().valid_loss is None
        manifest = recipe.export_artifacts(tmp_path)
    finally:
        recipe.cleanup()
    assert (result.full_valid_loss, result.best_step, result.full_valid_loss_lora_only) == (
        None, None, None)
    assert result.final_train_mean_token_accuracy is not None
    assert manifest["best_dir"] is None and not (tmp_path / "best").exists()


def test_family_without_crma_has_no_lora_only_figure(tmp_path, chat_files):
    model_dir = make_tiny_model_dir(tmp_path / "m", "mistral")
    recipe = Recipe(model_dir=model_dir, train_file=chat_files[0],
                    validation_file=chat_files[1], crma=None,
                    train=TrainConfig(epochs=1, batch_size=8, max_seq_len=128))
    recipe.setup()
    try:
        result = recipe.train()
    finally:
        recipe.cleanup()
    assert result.full_valid_loss is not None and result.full_valid_loss_lora_only is None
