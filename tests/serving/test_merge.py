"""A merged LoRA (+ CRMA through hooks) generates what peft's unmerged LoRA + crma_core's
CRMA generate, and unmerging gives back the base weights bit for bit."""

from __future__ import annotations

import pytest
import torch

from crma_core.loader import load_for_generation
from crma_core.recipe import load_base_model
from tests.serving.conftest import spec, write_adapter

PROMPT = "the quick brown fox"


def _reference_text(model_dir, bundle_dir, *, crma: bool, max_new_tokens: int = 16) -> str:
    """Greedy text from peft (LoRA unmerged) with crma_core's CRMA hooks."""
    model, tokenizer = load_for_generation(model_dir, bundle_dir)
    if not crma:
        from crma_core.model import get_crma

        assert get_crma(model) is None
    ids = tokenizer(PROMPT, return_tensors="pt").input_ids
    with torch.no_grad():
        out = model.generate(input_ids=ids, max_new_tokens=max_new_tokens, do_sample=False)
    return tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True)


def _engine_text(engine, adapter: str | None, max_new_tokens: int = 16) -> str:
    request = {"prompt": PROMPT, "max_tokens": max_new_tokens, "temperature": 0}
    if adapter is not None:
        request["adapter"] = spec(adapter)
    return engine.submit(request).result().text


@pytest.mark.parametrize("name,crma", [("a1", True), ("lora-only", False),
                                       ("attention-only", True)])
def test_merged_adapter_generates_what_unmerged_peft_generates(engine, tiny_dir, adapter_root,
                                                               name, crma):
    expected = _reference_text(tiny_dir, adapter_root / name, crma=crma)
    assert _engine_text(engine, name) == expected
    assert engine.weights.merged.id == name
    base = _engine_text(engine, None)
    assert base != expected  # the adapter changes the output at all


def test_switching_adapters_restores_the_base_weights_exactly(engine, tiny_dir):
    before = _engine_text(engine, None)
    for name in ("a1", "a2", "lora-only", "a1", "attention-only"):
        _engine_text(engine, name, max_new_tokens=2)
    assert _engine_text(engine, None) == before
    fresh = load_base_model(tiny_dir).state_dict()
    for key, tensor in engine.model.state_dict().items():
        assert torch.equal(tensor, fresh[key]), key
    assert engine.weights.extra_bytes() == 0  # every W₀ came back from the safetensors file


def test_gemma2_merge_and_unbatched_decoding(make_engine, tmp_path):
    """Gemma-2 (sliding-window caches: each sequence decodes in its own batch)."""
    from crma_core.testing import make_tiny_model_dir
    from serving.engine import EngineConfig
    from serving.sources import LocalAdapterSource
    from serving.transformers_engine import TransformersEngine

    model_dir = make_tiny_model_dir(tmp_path / "gemma", "gemma2")
    write_adapter(model_dir, tmp_path / "adapters" / "g1", seed=5)
    engine = TransformersEngine(model_dir, model_id="tiny-gemma2",
                                source=LocalAdapterSource(tmp_path / "adapters"),
                                config=EngineConfig(compile=False))
    try:
        expected = _reference_text(model_dir, tmp_path / "adapters" / "g1", crma=True)
        streams = [engine.submit({"prompt": PROMPT, "max_tokens": 16, "temperature": 0,
                                  "adapter": spec("g1")}) for _ in range(2)]
        assert [s.result().text for s in streams] == [expected, expected]
    finally:
        engine.close()


def test_an_adapter_for_another_model_is_refused(engine, tmp_path):
    from crma_core.testing import make_tiny_model_dir
    from serving.errors import AdapterIncompatible

    from serving.sources import LocalAdapterSource

    other = make_tiny_model_dir(tmp_path / "wide", "llama", hidden_size=96)
    bundle = write_adapter(other, tmp_path / "wide-adapter", seed=1)
    engine.source = LocalAdapterSource(tmp_path)
    with pytest.raises(AdapterIncompatible) as info:
        engine.load_adapter(spec("wide", location=bundle.name))
    assert info.value.status_code == 400 and info.value.param == "adapter"
    assert "do not fit" in info.value.message


def test_a_damaged_crma_state_is_refused(engine, adapter_root, tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from serving.errors import AdapterIncompatible
    from serving.sources import LocalAdapterSource

    shutil.copytree(adapter_root / "a1", tmp_path / "damaged")
    tensors = load_file(str(tmp_path / "damaged" / "crma.safetensors"))
    del tensors["layers.1.write"]
    save_file(tensors, str(tmp_path / "damaged" / "crma.safetensors"))
    engine.source = LocalAdapterSource(tmp_path)
    with pytest.raises(AdapterIncompatible) as info:
        engine.submit({"prompt": PROMPT, "adapter": spec("damaged")})
    assert "layers.1.write" in info.value.message and info.value.status_code == 400


def test_bfloat16_weights_are_restored_exactly(make_engine, tiny_dir):
    """Merging rounds once in bfloat16; unmerging must not leave that rounding behind."""
    engine = make_engine(dtype="bfloat16")
    before = _engine_text(engine, None)
    assert _engine_text(engine, "a1") != before
    assert _engine_text(engine, None) == before
    fresh = load_base_model(tiny_dir, dtype="bfloat16").state_dict()
    assert all(torch.equal(t, fresh[k]) for k, t in engine.model.state_dict().items())
