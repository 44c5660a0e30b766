"""Packed training computes what unpacked training computes: the same loss for every example
inside a packed row, the same gradients for a step over the same examples, the same first
step through the recipe; and nothing leaks across examples (transformers 5 turns the
restarting position_ids into a block-diagonal causal mask on eager and SDPA attention)."""

import pytest
import torch
import torch.nn.functional as F

from crma_core import LoraSettings, Recipe, TrainCallbacks, TrainConfig
from crma_core.data import IGNORE_INDEX, Example, collate, pack_examples
from crma_core.loop import accumulate_gradients
from crma_core.recipe import optimizer_groups
from crma_core.testing import make_tiny_model, write_jsonl

FAMILIES = ("llama", "mistral", "gemma2")


def _examples(seed=0):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for length, prompt in ((9, 3), (14, 6), (6, 1), (11, 4), (17, 9)):
        ids = torch.randint(0, 384, (length,), generator=generator).tolist()
        out.append(Example(ids, [IGNORE_INDEX] * prompt + ids[prompt:]))
    return out


def _token_losses(model, batch):
    """Per-position cross-entropy of the next token (0 where not scored)."""
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "position_ids") if k in batch}
    logits = model(**inputs, use_cache=False).logits[:, :-1].float()
    targets = batch["labels"][:, 1:]
    losses = F.cross_entropy(logits.transpose(1, 2), targets.clamp(min=0), reduction="none")
    return losses * (targets != IGNORE_INDEX)


@pytest.mark.parametrize("family", FAMILIES)
def test_every_example_in_a_packed_row_has_its_unpacked_loss(family):
    model = make_tiny_model(family)
    examples = _examples()
    rows = pack_examples(examples, max_seq_len=64)
    assert len(rows) == 1
    with torch.no_grad():
        packed = _token_losses(model, collate(rows, pad_id=0))[0]
        start = 0
        for example in examples:
            alone = _token_losses(model, collate([example], pad_id=0))[0]
            n = len(example.input_ids)
            # In the packed row, position start+i predicts token start+i+1; the first token
            # of the next example is never a target (its label is dropped when packing).
            inside = packed[start:start + n - 1]
            scored = alone != 0
            assert int(scored.sum()) > 0
            torch.testing.assert_close(inside, alone, rtol=1e-4, atol=1e-5)
            per_example_loss = inside.sum() / scored.sum()
            torch.testing.assert_close(per_example_loss, alone.sum() / scored.sum(),
                                       rtol=1e-5, atol=1e-6)
            start += n
        assert float(packed[start - 1:].abs().sum()) == 0.0  # padding and the boundary


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_a_packed_step_has_the_unpacked_steps_gradients(lora_crma_model, family):
    model, handle = lora_crma_model(family)
    model.train()
    examples = _examples(seed=3)
    results = []
    for batch in (collate(examples, pad_id=0), collate(pack_examples(examples, 32), pad_id=0)):
        model.zero_grad(set_to_none=True)
        for p in handle.parameters():
            p.grad = None
        loss, scored, correct, _ = accumulate_gradients(model, batch)
        grads = [p.grad.clone() for g in optimizer_groups(model, handle).values() for p in g]
        results.append((loss, scored, correct, grads))
    (loss_u, scored_u, correct_u, grads_u), (loss_p, scored_p, correct_p, grads_p) = results
    assert scored_p == scored_u and correct_p == correct_u
    assert loss_p == pytest.approx(loss_u, rel=1e-5)
    for a, b in zip(grads_u, grads_p):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)


def test_recipe_first_step_is_the_same_packed_or_not(tiny_model_dirs, tmp_path):
    # Five short examples: one unpacked batch of 5 rows, or one packed row (batch 1). Text
    # rows are fully trained, so a leak across examples would change the loss.
    data = write_jsonl(tmp_path / "t.jsonl", [{"text": f"the number {i} follows {i - 1} and "
                                                       f"precedes {i + 1}"} for i in range(5)])
    outcomes = {}
    for packing, batch_size in ((False, 5), (True, 1)):
        steps = []
        recipe = Recipe(model_dir=tiny_model_dirs["mistral"], train_file=data,
                        lora=LoraSettings(r=4, alpha=8),
                        train=TrainConfig(epochs=1, batch_size=batch_size, max_seq_len=256,
                                          packing=packing, lr_main=1e-2),
                        callbacks=TrainCallbacks(on_step=steps.append))
        recipe.setup()
        try:
            assert len(recipe.rows) == (1 if packing else 5)
            recipe.train()
            weights = {n: p.detach().clone() for n, p in recipe.built.model.named_parameters()
                       if p.requires_grad}
        finally:
            recipe.cleanup()
        assert len(steps) == 1
        outcomes[packing] = (steps[0], weights)
    unpacked, packed = outcomes[False][0], outcomes[True][0]
    assert packed.loss == pytest.approx(unpacked.loss, rel=1e-5)
    assert packed.mean_token_accuracy == unpacked.mean_token_accuracy
    assert packed.scored_tokens == unpacked.scored_tokens
    assert packed.trained_tokens == unpacked.trained_tokens
    for name, tensor in outcomes[False][1].items():
        torch.testing.assert_close(outcomes[True][1][name], tensor, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("family", ["llama", "gemma2"])
def test_narrowing_a_packed_batch_keeps_its_losses_and_gradients(lora_crma_model, family):
    """crma_core.data.narrow_packed: the packed examples in rows as wide as the longest one
    (less attention work); the same examples, loss, scored tokens and gradients."""
    from crma_core.data import narrow_packed
    from crma_core.step import score_batch

    model, handle = lora_crma_model(family)
    model.train()
    examples = _examples(seed=5) + _examples(seed=6)
    packed = collate(pack_examples(examples, 64), pad_id=0)
    narrow = narrow_packed(packed)
    assert narrow["input_ids"].shape[1] == max(len(e.input_ids) for e in examples) == 17
    assert narrow["input_ids"].shape[1] < packed["input_ids"].shape[1]
    assert int(narrow["token_mask"].sum()) == int(packed["token_mask"].sum())

    def examples_of(batch):  # each example's (ids, labels), found by its positions
        found = []
        for row in range(batch["input_ids"].shape[0]):
            n = int(batch["token_mask"][row].sum())
            starts = (batch["position_ids"][row, :n] == 0).nonzero().flatten().tolist()
            for a, b in zip(starts, starts[1:] + [n]):
                found.append((batch["input_ids"][row, a:b].tolist(),
                              batch["labels"][row, a:b].tolist()))
        return sorted(found)

    assert examples_of(narrow) == examples_of(packed)
    assert narrow_packed(collate(examples, pad_id=0))["input_ids"].shape == (len(examples), 17)
    results = []
    for batch in (packed, narrow):
        model.zero_grad(set_to_none=True)
        for p in handle.parameters():
            p.grad = None
        loss_sum, scored, correct = score_batch(model, batch)
        loss_sum.backward()
        grads = [p.grad.clone() for g in optimizer_groups(model, handle).values() for p in g]
        results.append((float(loss_sum), scored, correct, grads))
    (loss_a, scored_a, correct_a, grads_a), (loss_b, scored_b, correct_b, grads_b) = results
    assert (scored_b, correct_b) == (scored_a, correct_a)
    assert loss_b == pytest.approx(loss_a, rel=1e-5)
    for a, b in zip(grads_a, grads_b):
        torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-6)
