"""Sequence packing (TrainConfig.packing): positions restart per example, no attention
across examples, and a packed row scores exactly what the separate rows score."""

import pytest
import torch

from crma_core.data import IGNORE_INDEX, Example, collate, epoch_batches, pack_examples
from crma_core.loop import loss_terms
from crma_core.testing import make_tiny_model

FAMILIES = ("llama", "mistral", "gemma2")


def _examples(lengths, *, seed=0, vocab=384, prompt=3):
    generator = torch.Generator().manual_seed(seed)
    out = []
    for length in lengths:
        ids = torch.randint(0, vocab, (length,), generator=generator).tolist()
        labels = [IGNORE_INDEX] * prompt + ids[prompt:]
        out.append(Example(ids, labels))
    return out


def test_positions_restart_and_first_labels_are_dropped():
    examples = _examples([5, 7, 6, 9])
    rows = pack_examples(examples, max_seq_len=16)
    assert [len(r.input_ids) for r in rows] == [12, 15]
    assert rows[0].position_ids == list(range(5)) + list(range(7))
    assert rows[1].position_ids == list(range(6)) + list(range(9))
    assert rows[0].input_ids == examples[0].input_ids + examples[1].input_ids
    for row in rows:
        starts = [i for i, p in enumerate(row.position_ids) if p == 0]
        assert all(row.labels[i] == IGNORE_INDEX for i in starts)
    # an example whose first token is trained loses only that label
    trained = [Example([1, 2, 3], [1, 2, 3]), Example([4, 5], [4, 5])]
    assert pack_examples(trained, max_seq_len=8)[0].labels == [IGNORE_INDEX, 2, 3,
                                                                 IGNORE_INDEX, 5]
    batch = collate(rows, pad_id=0)
    assert "attention_mask" not in batch and batch["position_ids"][0, 12:].tolist() == [0, 1, 2]


@pytest.mark.parametrize("family", FAMILIES)
def test_packed_rows_score_exactly_the_separate_examples(family):
    model = make_tiny_model(family, num_layers=2)
    examples = _examples([9, 14, 6, 11], seed=1)
    for e in examples:  # fully trained examples: the boundary token would be scored if leaked
        e.labels = list(e.input_ids)
    rows = pack_examples(examples, max_seq_len=48)
    assert len(rows) == 1
    with torch.no_grad():
        packed_sum, packed_n = loss_terms(model, collate(rows, pad_id=0))
        separate = [loss_terms(model, collate([e], pad_id=0)) for e in examples]
    assert packed_n == sum(n for _, n in separate) == sum(len(e.input_ids) - 1 for e in examples)
    torch.testing.assert_close(packed_sum, sum(s for s, _ in separate), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_no_attention_across_packed_examples(family):
    model = make_tiny_model(family, num_layers=2)
    first, second = _examples([10, 12], seed=2)
    changed = Example([(t + 7) % 384 for t in first.input_ids], first.labels)
    hidden = []
    for lead in (first, changed):
        batch = collate(pack_examples([lead, second], max_seq_len=32), pad_id=0)
        with torch.no_grad():
            # as loss_terms calls it: transformers builds the block-diagonal mask from
            # position_ids only without a cache (use_cache=False)
            out = model.get_decoder()(input_ids=batch["input_ids"],
                                      position_ids=batch["position_ids"], use_cache=False)
        hidden.append(out.last_hidden_state[0])
    # the first example's states differ, the second example's are untouched by it
    assert not torch.allclose(hidden[0][:10], hidden[1][:10])
    torch.testing.assert_close(hidden[0][10:], hidden[1][10:], rtol=1e-5, atol=1e-5)
    with torch.no_grad():
        alone = model.get_decoder()(input_ids=torch.tensor([second.input_ids])).last_hidden_state[0]
    torch.testing.assert_close(hidden[0][10:], alone, rtol=1e-4, atol=1e-5)


def test_recipe_packs_with_position_ids(tiny_model_dirs, tmp_path):
    from crma_core import Recipe, TrainConfig
    from crma_core.testing import write_jsonl

    data = write_jsonl(tmp_path / "t.jsonl",
                       [{"text": f"the number {i} follows {i - 1}"} for i in range(1, 30)])
    recipe = Recipe(model_dir=tiny_model_dirs["llama"], train_file=data,
                    train=TrainConfig(epochs=1, batch_size=2, max_seq_len=48, packing=True))
    recipe.setup()
    try:
        assert len(recipe.rows) < 29 and all(r.position_ids is not None for r in recipe.rows)
        _, batch = next(iter(epoch_batches(recipe.rows, batch_size=2, seed=0, epoch=0,
                                           pad_id=recipe.built.tokenizer.pad_token_id)))
        assert "attention_mask" not in batch
        starts = batch["position_ids"] == 0
        assert (batch["labels"][starts] == IGNORE_INDEX).all()
        assert int(starts[:, 1:].sum()) >= 2  # several examples per row
    finally:
        recipe.cleanup()
