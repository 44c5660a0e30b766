"""The real SmolLM2-135M-Instruct: a LoRA-only adapter merged by crma_core.export generates,
through plain transformers, the same greedy tokens as base + adapter through peft.

The adapter's B matrices are drawn rather than trained (the merge does not care how they
were obtained, and a drawn B changes every projection); a job trained through the API is
exported in tests/app. The model is installed once per checkout under <repo>/.cache."""

from __future__ import annotations

import pytest
import torch

from crma_core.export import export_merged
from crma_core.loader import load_for_generation
from crma_core.settings import LoraSettings
from tests.crma_core.test_crma_export import make_bundle
from tests.serving.test_smollm2 import smollm2_dir

MESSAGES = [{"role": "user", "content": "Name three colours of the rainbow."}]


@pytest.fixture(scope="module")
def model_dir():
    return smollm2_dir()


def test_merged_smollm2_generates_what_peft_generates(model_dir, tmp_path):
    from transformers import AutoModelForCausalLM

    make_bundle(tmp_path / "bundle", model_dir, crma=None, lora=LoraSettings(r=8, alpha=16),
                scale=0.05)
    export_merged(model_dir=model_dir, bundle_dir=tmp_path / "bundle", out_dir=tmp_path / "out",
                  max_shard_size="200MB")
    assert len(list((tmp_path / "out").glob("model-*.safetensors"))) > 1

    reference, tokenizer = load_for_generation(model_dir, tmp_path / "bundle")
    prompt = tokenizer.apply_chat_template(MESSAGES, add_generation_prompt=True,
                                           return_tensors="pt", return_dict=True)["input_ids"]
    with torch.no_grad():
        expected = reference.generate(prompt, max_new_tokens=16, do_sample=False)
        with reference.disable_adapter():
            base_tokens = reference.generate(prompt, max_new_tokens=16, do_sample=False)
    del reference
    merged = AutoModelForCausalLM.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    with torch.no_grad():
        got = merged.generate(prompt, max_new_tokens=16, do_sample=False)
    assert got.tolist() == expected.tolist()
    assert expected.tolist() != base_tokens.tolist()  # the adapter changes the answer
