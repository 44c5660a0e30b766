"""The estimate's packing factor (app/services/training_work.py) against what crma_core's
packing and batching really put through the model, on random length distributions."""

from __future__ import annotations

import random
from collections import Counter
from types import SimpleNamespace

import pytest

from app.domain.job_settings import Hyperparameters, JobSettings
from app.services import training_work
from crma_core.data import Example, pack_examples


def histogram(lengths: list[int]) -> dict:
    counts = Counter(lengths)
    return {"exact": True, "rows": len(lengths), "tokens": sum(lengths),
            "lengths": sorted(counts.items()), "first": []}


def padded_work(rows: list[list[int]], batch_size: int) -> int:
    """Tokens the batches put through the model, padding included (collate pads each batch
    to its longest row)."""
    return sum(max(len(r) for r in rows[i:i + batch_size]) * len(rows[i:i + batch_size])
               for i in range(0, len(rows), batch_size))


@pytest.mark.parametrize("seed", range(4))
def test_packed_and_unpacked_work_match_crma_cores_batches(seed: int) -> None:
    rng = random.Random(seed)
    max_seq_len, batch_size = 512, 4
    lengths = [min(max_seq_len, int(rng.lognormvariate(4.0, 0.9)) + 4) for _ in range(2000)]
    rng.shuffle(lengths)
    examples = [Example(list(range(n)), list(range(n))) for n in lengths]
    stored = histogram(lengths)

    unpacked = padded_work([e.input_ids for e in examples], batch_size)
    packed = padded_work([r.input_ids for r in pack_examples(examples, max_seq_len)],
                         batch_size)
    assert training_work.unpacked_work(stored, max_seq_len=max_seq_len, batch_size=batch_size) \
        == pytest.approx(unpacked, rel=0.1)
    assert training_work.packed_work(stored, max_seq_len=max_seq_len) \
        == pytest.approx(packed, rel=0.1)


def test_the_duration_factor_is_one_unpacked_and_below_one_when_packing_saves_work() -> None:
    model = "smollm2-135m-instruct"
    short = SimpleNamespace(token_lengths={model: histogram([20, 30, 40, 300] * 50)})

    def factor(file: SimpleNamespace, **hp: object) -> float:
        settings = JobSettings(hyperparameters=Hyperparameters(**hp))
        return training_work.duration_factor(file, model_id=model, settings=settings)

    assert factor(short, packing=False, batch_size=4) == 1.0
    assert factor(short, packing=True, batch_size=4, max_seq_len=1024) < 0.5
    # Rows already as long as max_seq_len: packing cannot save anything.
    full = SimpleNamespace(token_lengths={model: histogram([1024] * 40)})
    assert factor(full, packing=True, batch_size=4, max_seq_len=1024) == 1.0
    # No histogram for the model (it was not installed at upload): no claim.
    assert factor(SimpleNamespace(token_lengths=None), packing=True, batch_size=4) == 1.0
