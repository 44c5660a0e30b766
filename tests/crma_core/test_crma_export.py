"""Merged-weights export (crma_core.export) on tiny random models of the three families.

A bundle with a LoRA whose B is drawn (so the merge changes every target weight) and, where
asked, CRMA with drawn writes; the exported folder is loaded the way a user would load it
(AutoModelForCausalLM alone, or with trust_remote_code for merged_crma) and compared with
base + adapter loaded through peft and crma_core.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from crma_core.artifacts import write_adapter
from crma_core.config import CRMAConfig
from crma_core.errors import ConfigError
from crma_core.export import CRMANotFoldable, crma_state, export_merged
from crma_core.io import sha256_file
from crma_core.loader import load_for_generation
from crma_core.recipe import build_model
from crma_core.settings import LoraSettings

FAMILIES = ("llama", "mistral", "gemma2")
PROMPT = torch.tensor([[5, 17, 33, 90, 4, 61, 12]])


def make_bundle(root: Path, model_dir: Path, *, crma: CRMAConfig | None,
                train_crma: bool = True, lora: LoraSettings = LoraSettings(r=4, alpha=8),
                scale: float = 0.3) -> Path:
    """A bundle as Recipe writes it, with LoRA B (std `scale`) and CRMA's writes drawn
    instead of trained."""
    built = build_model(model_dir, lora=lora, crma=crma, seed=0)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in built.model.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * scale)
        if built.crma is not None and train_crma:
            for layer in built.crma.layers:
                layer.write.copy_(torch.randn(layer.write.shape, generator=generator) * 0.5)
    write_adapter(root, model=built.model, crma=built.crma, info={})
    return root


def load_exported(path: Path, **kwargs):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(str(path), local_files_only=True, **kwargs).eval()


def greedy(model, steps: int = 12) -> list[int]:
    # eos disabled: every arm generates the full length, so the comparison covers all steps.
    with torch.no_grad():
        out = model.generate(PROMPT, max_new_tokens=steps, do_sample=False, eos_token_id=None,
                             pad_token_id=0)
    return out[0, PROMPT.shape[1]:].tolist()


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(PROMPT).logits.float()


@pytest.mark.parametrize("family", FAMILIES)
def test_merged_lora_loads_without_peft_and_generates_the_same(family, tiny_model_dirs,
                                                               tmp_path):
    model_dir = tiny_model_dirs[family]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=None)
    manifest = export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "out",
                             max_shard_size="40KB")

    reference, _ = load_for_generation(model_dir, bundle)
    merged = load_exported(tmp_path / "out")
    assert type(merged).__module__.startswith("transformers.models.")  # no remote code
    assert not any("lora" in name for name, _ in merged.named_parameters())
    torch.testing.assert_close(logits(merged), logits(reference), rtol=1e-4, atol=1e-4)
    assert greedy(merged) == greedy(reference)
    # The LoRA really changed the model (the comparison is not base vs base).
    base = load_exported(model_dir)
    assert not torch.allclose(logits(base), logits(reference), atol=1e-3)

    config = json.loads((tmp_path / "out" / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == family
    assert config["use_cache"] is True
    shards = sorted((tmp_path / "out").glob("model-*.safetensors"))
    assert len(shards) > 1
    assert (tmp_path / "out" / "generation_config.json").is_file()
    listed = {entry["name"]: entry for entry in manifest["files"]}
    assert {s.name for s in shards} <= set(listed)
    for name, entry in listed.items():
        assert sha256_file(tmp_path / "out" / name) == entry["sha256"]
    assert manifest["crma"] == "none" and manifest["export_format"] == "merged"


def test_exported_tokenizer_is_the_base_tokenizer(tiny_model_dirs, tmp_path):
    from transformers import AutoTokenizer

    model_dir = tiny_model_dirs["llama"]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=None)
    export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "out")
    ours = AutoTokenizer.from_pretrained(str(tmp_path / "out"), local_files_only=True)
    base = AutoTokenizer.from_pretrained(str(model_dir), local_files_only=True)
    chat = [{"role": "user", "content": "what is 3 plus 3?"}]
    assert ours.apply_chat_template(chat, tokenize=False) == \
        base.apply_chat_template(chat, tokenize=False)
    assert ours("hello world")["input_ids"] == base("hello world")["input_ids"]
    assert ours.eos_token == base.eos_token


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_export_is_the_float32_merge_rounded_once(dtype, tiny_model_dirs,
                                                                 tmp_path):
    model_dir = tiny_model_dirs["llama"]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=None)
    export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "f32")
    export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "half",
                  dtype=dtype)
    full, half = load_exported(tmp_path / "f32"), load_exported(tmp_path / "half")
    torch_dtype = getattr(torch, dtype)
    assert json.loads((tmp_path / "half" / "config.json").read_text())["dtype"] == dtype
    full_state = full.state_dict()
    for name, tensor in half.state_dict().items():
        assert tensor.dtype == torch_dtype, name
        assert torch.equal(tensor, full_state[name].to(torch_dtype)), name
    with safe_open(str(next((tmp_path / "half").glob("*.safetensors"))), "pt") as handle:
        assert all(handle.get_tensor(k).dtype == torch_dtype for k in handle.keys())


def test_trained_crma_is_refused_as_plain_merged(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=CRMAConfig())
    assert crma_state(bundle) == "trained"
    with pytest.raises(CRMANotFoldable, match="merged_crma"):
        export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_untrained_crma_is_the_identity_so_a_plain_merge_is_exact(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["mistral"]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=CRMAConfig(), train_crma=False)
    assert crma_state(bundle) == "identity"
    manifest = export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "out")
    assert manifest["crma"] == "identity"
    reference, _ = load_for_generation(model_dir, bundle)
    merged = load_exported(tmp_path / "out")
    torch.testing.assert_close(logits(merged), logits(reference), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("family,attach", [("llama", "output"), ("gemma2", "output"),
                                           ("mistral", "input")])
def test_merged_crma_keeps_crma_as_remote_code(family, attach, tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs[family]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=CRMAConfig(attach=attach))
    manifest = export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "out",
                             format="merged_crma")
    assert manifest["export_format"] == "merged_crma" and manifest["crma"] == "trained"
    assert "modeling_crma.py" in {entry["name"] for entry in manifest["files"]}

    reference, _ = load_for_generation(model_dir, bundle)
    exported = load_exported(tmp_path / "out", trust_remote_code=True)
    assert type(exported).__name__ == "CRMAForCausalLM"
    torch.testing.assert_close(logits(exported), logits(reference), rtol=1e-4, atol=1e-4)
    assert greedy(exported) == greedy(reference)
    # Without CRMA the same merged weights are another model: the residuals matter.
    lora_only = load_exported(tmp_path / "out", trust_remote_code=True)
    with torch.no_grad():
        lora_only.crma.write.zero_()
    assert not torch.allclose(logits(lora_only), logits(reference), atol=1e-3)


def test_merged_crma_does_not_load_silently_without_remote_code(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=CRMAConfig())
    export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "out",
                  format="merged_crma")
    with pytest.raises(ValueError, match="trust_remote_code"):
        load_exported(tmp_path / "out", trust_remote_code=False)


def test_merged_crma_in_bfloat16_keeps_the_residuals_in_float32(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    bundle = make_bundle(tmp_path / "bundle", model_dir, crma=CRMAConfig())
    export_merged(model_dir=model_dir, bundle_dir=bundle, out_dir=tmp_path / "out",
                  format="merged_crma", dtype="bfloat16")
    exported = load_exported(tmp_path / "out", trust_remote_code=True)
    assert exported.crma.read.dtype == torch.float32
    assert exported.model.layers[0].self_attn.q_proj.weight.dtype == torch.bfloat16
    reference, _ = load_for_generation(model_dir, bundle)
    # bfloat16 keeps about 3 significant digits: close, not equal.
    torch.testing.assert_close(logits(exported), logits(reference), rtol=0.05, atol=0.05)


def test_bad_requests_are_refused(tiny_model_dirs, tmp_path):
    model_dir = tiny_model_dirs["llama"]
    lora_only = make_bundle(tmp_path / "bundle", model_dir, crma=None)
    with pytest.raises(ConfigError, match="no CRMA half"):
        export_merged(model_dir=model_dir, bundle_dir=lora_only, out_dir=tmp_path / "a",
                      format="merged_crma")
    with pytest.raises(ConfigError, match="format must be one of"):
        export_merged(model_dir=model_dir, bundle_dir=lora_only, out_dir=tmp_path / "b",
                      format="gguf")
    with pytest.raises(ConfigError, match="dtype must be one of"):
        export_merged(model_dir=model_dir, bundle_dir=lora_only, out_dir=tmp_path / "c",
                      dtype="int8")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    with pytest.raises(ConfigError, match="not empty"):
        export_merged(model_dir=model_dir, bundle_dir=lora_only, out_dir=tmp_path / "d")
