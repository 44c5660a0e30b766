"""Gradient accumulation: k micro-batches give one batch's gradients; a batch that does not
fit a memory budget runs in planned micro-batches, and one that is forced in halves until it
fits (the on_memory callback hears of it); resume still reproduces the uninterrupted run."""

import shutil

import pytest
import torch

from crma_core import CRMAConfig, LoraSettings, Recipe, TrainCallbacks, TrainConfig
from crma_core.data import IGNORE_INDEX, Example, collate, split_batch
from crma_core.errors import ConfigError
from crma_core.loop import accumulate_gradients, score_batch
from crma_core.memory import MIB, ModelShape, memory_model, plan_micro_batch
from crma_core.recipe import optimizer_groups
from crma_core.testing import arithmetic_chat_rows, write_jsonl


def _uneven_batch(seed=0):
    """Rows of very different lengths and trained-token counts, so a mean of per-pass means
    would weight tokens differently from the batch's token mean."""
    generator = torch.Generator().manual_seed(seed)
    rows = []
    for length, prompt in ((30, 5), (6, 2), (19, 15), (11, 1), (25, 3), (8, 6), (14, 4)):
        ids = torch.randint(0, 384, (length,), generator=generator).tolist()
        rows.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return collate(rows, pad_id=0)


def _grads(model, handle, batch, micro):
    model.train()
    model.zero_grad(set_to_none=True)
    for p in handle.parameters():
        p.grad = None
    loss, scored, correct, passes = accumulate_gradients(model, batch, micro_batch_size=micro)
    params = optimizer_groups(model, handle)
    grads = [p.grad.clone() for group in params.values() for p in group]
    return loss, scored, correct, passes, grads


@pytest.mark.parametrize("family", ["llama", "gemma2"])
@pytest.mark.parametrize("micro", [1, 2, 3])
def test_micro_batches_give_the_full_batch_gradients(lora_crma_model, family, micro):
    model, handle = lora_crma_model(family)
    batch = _uneven_batch()
    full = _grads(model, handle, batch, None)
    split = _grads(model, handle, batch, micro)
    assert full[3] == 1 and split[3] == -(-7 // micro)
    assert split[1] == full[1] and split[2] == full[2]  # same scored and correct tokens
    assert split[0] == pytest.approx(full[0], rel=1e-5)
    assert len(full[4]) == len(split[4]) > 0
    for a, b in zip(full[4], split[4]):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_a_mean_of_per_pass_means_would_not_match(lora_crma_model):
    # The check above is sensitive: weighting each pass equally gives other gradients.
    model, handle = lora_crma_model()
    batch = _uneven_batch()
    full = _grads(model, handle, batch, None)[4]
    model.zero_grad(set_to_none=True)
    parts = split_batch(batch, 3)
    for part in parts:
        loss_sum, n, _ = score_batch(model, part)
        (loss_sum / n / len(parts)).backward()
    mean_of_means = [p.grad for group in optimizer_groups(model, handle).values() for p in group]
    assert max(float((a - b).abs().max()) for a, b in zip(full, mean_of_means)) > 1e-4


def test_split_batch_cuts_each_part_to_its_longest_row():
    batch = _uneven_batch()
    parts = split_batch(batch, 3)
    assert [p["input_ids"].shape for p in parts] == [(3, 30), (3, 25), (1, 14)]
    assert torch.equal(torch.cat([p["labels"][:, :14] for p in parts])[:, :6],
                       batch["labels"][:, :6])
    assert split_batch(batch, 7) == [batch]


@pytest.fixture(scope="module")
def big_chat_file(tmp_path_factory):
    return write_jsonl(tmp_path_factory.mktemp("acc") / "train.jsonl", arithmetic_chat_rows(128))


def _budget_below_64_rows(model_dir, train_file, lora):
    """A budget (MiB) that holds 8 rows of the file's longest row but not 64."""
    recipe = Recipe(model_dir=model_dir, train_file=train_file, crma=CRMAConfig(), lora=lora,
                    train=TrainConfig(batch_size=64, max_seq_len=128, memory_budget_mb=10_000))
    recipe.setup()
    try:
        base = recipe.built.model.get_base_model()
        frozen = [p for p in base.parameters() if not p.requires_grad]
        estimate = memory_model(
            ModelShape.of_config(base.config, parameters=sum(p.numel() for p in frozen)),
            lora=recipe.lora, train=recipe.train_config, crma_width=4,
            weight_bytes=sum(p.numel() * p.element_size() for p in frozen))
        width = recipe.memory_plan.width
    finally:
        recipe.cleanup()
    budget_mb = -(-estimate.step_bytes(8, width) // MIB)
    assert estimate.step_bytes(64, width) > budget_mb * MIB  # 64 rows at once do not fit
    return budget_mb


def test_batch_of_64_runs_in_micro_batches_under_a_budget_it_would_not_fit(
        tiny_model_dirs, big_chat_file):
    lora = LoraSettings(r=4, alpha=8)
    budget_mb = _budget_below_64_rows(tiny_model_dirs["llama"], big_chat_file, lora)
    steps, memory_events = [], []
    recipe = Recipe(model_dir=tiny_model_dirs["llama"], train_file=big_chat_file, lora=lora,
                    train=TrainConfig(epochs=1, batch_size=64, max_seq_len=128,
                                      memory_budget_mb=budget_mb, lr_main=1e-3),
                    callbacks=TrainCallbacks(on_step=steps.append, on_memory=memory_events.append))
    recipe.setup()
    try:
        plan = recipe.memory_plan
        assert plan.source == "budget" and 8 <= plan.micro_batch_size < 64
        assert plan.estimate_bytes <= budget_mb * MIB
        result = recipe.train()
    finally:
        recipe.cleanup()
    assert result.stop_reason == "completed" and result.steps == 2
    assert memory_events == []  # the plan fits: nothing had to be halved
    assert all(s.accumulation_steps == plan.accumulation_steps > 1 for s in steps)
    assert all(s.micro_batch_size == plan.micro_batch_size for s in steps)


def test_forced_micro_batch_halves_until_it_fits_and_matches_the_planned_run(
        tiny_model_dirs, big_chat_file):
    lora = LoraSettings(r=4, alpha=8, dropout=0.1)
    budget_mb = _budget_below_64_rows(tiny_model_dirs["llama"], big_chat_file, lora)
    runs = {}
    for micro in (64, 8):
        steps, events = [], []
        recipe = Recipe(model_dir=tiny_model_dirs["llama"], train_file=big_chat_file, lora=lora,
                        train=TrainConfig(epochs=1, batch_size=64, max_seq_len=128,
                                          memory_budget_mb=budget_mb, micro_batch_size=micro,
                                          lr_main=1e-3),
                        callbacks=TrainCallbacks(on_step=steps.append, on_memory=events.append))
        recipe.setup()
        try:
            result = recipe.train()
            history = list(recipe.state.history)
        finally:
            recipe.cleanup()
        runs[micro] = (result, steps, events, history)
    result, steps, events, history = runs[64]
    assert [(e.step, e.previous, e.micro_batch_size) for e in events] == [(1, 64, 32), (1, 32, 16),
                                                                          (1, 16, 8)]
    assert all("MiB budget" in e.message for e in events)
    assert [r["type"] for r in history[:3]] == ["memory"] * 3
    assert result.micro_batch_size == 8 and all(s.micro_batch_size == 8 for s in steps)
    # The retried step starts from the same RNG state (dropout masks), so it is the step a
    # run planned at 8 rows per pass takes.
    planned_result, planned_steps, planned_events, _ = runs[8]
    assert planned_events == []
    assert [s.loss for s in steps] == pytest.approx([s.loss for s in planned_steps], abs=1e-6)


def test_one_row_over_an_explicit_budget_is_a_clear_error(tiny_model_dirs, chat_files):
    recipe = Recipe(model_dir=tiny_model_dirs["llama"], train_file=chat_files[0],
                    train=TrainConfig(batch_size=4, max_seq_len=128, memory_budget_mb=1))
    with pytest.raises(ConfigError, match="memory budget"):
        recipe.setup()
    recipe.cleanup()


def test_resume_with_accumulation_reproduces_the_uninterrupted_run(
        tiny_model_dirs, chat_files, tmp_path):
    settings = dict(model_dir=tiny_model_dirs["llama"], train_file=chat_files[0],
                    validation_file=chat_files[1], lora=LoraSettings(r=4, alpha=8, dropout=0.1))
    config = TrainConfig(epochs=2, batch_size=8, micro_batch_size=3, max_seq_len=128,
                         lr_main=1e-3, checkpoint_every_steps=2, n_evals=3)
    full = Recipe(**settings, train=config)
    full.setup()
    full_result = full.train()
    full_losses = [r["loss"] for r in full.state.history if r["type"] == "step"]
    full.cleanup()

    saved = tmp_path / "ckpt"

    def keep(step, directory):
        if step == 2:
            shutil.copytree(directory, saved)

    first = Recipe(**settings, train=config, callbacks=TrainCallbacks(
        on_checkpoint=keep, should_stop=lambda: "cancelled" if saved.exists() else None))
    first.setup()
    first.train()
    first.cleanup()
    resumed = Recipe(**settings, train=config)
    resumed.setup(resume_from=saved)
    assert resumed.state.micro_batch_size == 3
    result = resumed.train()
    losses = [r["loss"] for r in resumed.state.history if r["type"] == "step"]
    resumed.cleanup()
    assert result.steps == full_result.steps == 6
    assert losses == pytest.approx(full_losses, abs=1e-6)
    assert result.full_valid_loss == pytest.approx(full_result.full_valid_loss, abs=1e-6)


def test_memory_model_orders_and_plans():
    from crma_core.catalog import CATALOG

    for model in CATALOG.values():
        shape = ModelShape.of_catalog(model)
        lora = LoraSettings()
        plain = memory_model(shape, lora=lora, train=TrainConfig(dtype="bfloat16"))
        checkpointed = memory_model(
            shape, lora=lora, train=TrainConfig(dtype="bfloat16", gradient_checkpointing=True))
        dropout = memory_model(shape, lora=LoraSettings(dropout=0.1),
                               train=TrainConfig(dtype="bfloat16"))
        assert checkpointed.per_token_bytes < plain.per_token_bytes < dropout.per_token_bytes
        assert plain.step_bytes(2, 512) > plain.step_bytes(1, 512) > plain.fixed_bytes
        assert plain.fixed_bytes > shape.parameters * 2  # bf16 weights + trainable state
        budget = 80 << 30
        plan = plan_micro_batch(plain, batch_size=256, width=1024, budget_bytes=budget)
        assert plan.estimate_bytes <= budget and 1 <= plan.micro_batch_size <= 256
        assert plan.micro_batch_size * plan.accumulation_steps >= 256
    assert (ModelShape.of_catalog(CATALOG["gemma-2-2b-it"]).eager_attention
            and memory_model(ModelShape.of_catalog(CATALOG["gemma-2-2b-it"]),
                             lora=LoraSettings(), train=TrainConfig()).per_token_pair_bytes > 0)


def test_balanced_micro_batches():
    from crma_core.memory import balanced_micro_batch

    assert balanced_micro_batch(64, 14) == 13  # 5 passes of 13 or fewer, not 14+14+14+14+8
    assert balanced_micro_batch(64, 64) == 64 and balanced_micro_batch(64, 1) == 1
    assert balanced_micro_batch(10, 4) == 4
