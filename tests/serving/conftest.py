"""Fixtures for the serving engine: a tiny random-weight model and adapters whose LoRA and
CRMA weights are random too (so each adapter visibly changes the model's output)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch


@pytest.fixture(autouse=True, scope="session")
def _quiet_and_one_thread():
    from transformers.utils import logging

    logging.disable_progress_bar()
    logging.set_verbosity_error()
    previous = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models; the 2-core box is shared
    yield
    torch.set_num_threads(previous)


def write_adapter(model_dir: Path, out_dir: Path, *, seed: int, crma: bool = True,
                  rank: int = 4, target_modules="all-linear") -> Path:
    """A bundle-shaped adapter (lora/ + crma.safetensors, crma_config.json) with random
    non-zero LoRA B and CRMA write weights, saved the way the trainer saves them."""
    from peft import LoraConfig, get_peft_model

    from crma_core.io import save_crma
    from crma_core.model import attach_crma
    from crma_core.recipe import load_base_model

    base = load_base_model(model_dir)
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=2 * rank,
                                            target_modules=target_modules))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.3)
    model.save_pretrained(str(out_dir / "lora"), safe_serialization=True,
                          save_embedding_layers=False)
    if crma:
        handle = attach_crma(model, seed=seed)
        with torch.no_grad():
            for layer in handle.layers:
                layer.write.copy_(torch.randn(layer.write.shape, generator=generator) * 0.5)
                layer.log_mix.add_(torch.randn(layer.log_mix.shape, generator=generator))
        save_crma(handle, out_dir)
    return out_dir


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory) -> Path:
    from crma_core.testing import make_tiny_model_dir

    return make_tiny_model_dir(tmp_path_factory.mktemp("serving-model") / "tiny-llama", "llama")


@pytest.fixture(scope="session")
def adapter_root(tiny_dir, tmp_path_factory) -> Path:
    """a1, a2: LoRA + CRMA; lora-only: no CRMA; attention-only: LoRA on q/v only."""
    root = tmp_path_factory.mktemp("serving-adapters")
    write_adapter(tiny_dir, root / "a1", seed=1)
    write_adapter(tiny_dir, root / "a2", seed=2)
    write_adapter(tiny_dir, root / "lora-only", seed=3, crma=False)
    write_adapter(tiny_dir, root / "attention-only", seed=4, rank=2,
                  target_modules=["q_proj", "v_proj"])
    return root


def spec(name: str, **extra) -> dict:
    return {"id": name, "location": name, **extra}


@pytest.fixture
def make_engine(tiny_dir, adapter_root):
    """Build engines on the tiny model (closed at the end of the test)."""
    from serving.engine import EngineConfig
    from serving.sources import LocalAdapterSource
    from serving.transformers_engine import TransformersEngine

    engines = []

    def build(**config):
        engine = TransformersEngine(tiny_dir, model_id="tiny-llama",
                                    source=LocalAdapterSource(adapter_root),
                                    config=EngineConfig(**config))
        engines.append(engine)
        return engine

    yield build
    for engine in engines:
        engine.close()


@pytest.fixture
def engine(make_engine):
    return make_engine()
