"""Adapters with random weights, saved exactly as the trainer saves a bundle (lora/ with
peft's files, crma.safetensors + crma_config.json), for tests and benchmarks: generation
speed does not depend on the values, and random non-zero weights make every adapter change
the model's output visibly."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from crma_core.config import CRMAConfig


def write_random_adapter(model_dir: Path, out_dir: Path, *, seed: int, crma: bool = True,
                         rank: int = 16, alpha: int | None = None,
                         target_modules: str | list[str] = "all-linear",
                         lora_std: float = 0.3, write_std: float = 0.5,
                         crma_config: CRMAConfig | None = None) -> Path:
    """Write ``out_dir/lora`` (+ the CRMA files in ``out_dir`` unless ``crma`` is False;
    ``crma_config``: other than the default)."""
    from peft import LoraConfig, get_peft_model

    from crma_core.io import save_crma
    from crma_core.model import attach_crma
    from crma_core.recipe import load_base_model

    base = load_base_model(Path(model_dir))
    model = get_peft_model(base, LoraConfig(r=rank, lora_alpha=alpha or 2 * rank,
                                            target_modules=target_modules))
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "lora_" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * lora_std)
    model.save_pretrained(str(Path(out_dir) / "lora"), safe_serialization=True,
                          save_embedding_layers=False)
    if crma:
        handle = attach_crma(model, crma_config, seed=seed)
        with torch.no_grad():
            for layer in handle.layers:
                layer.write.copy_(torch.randn(layer.write.shape, generator=generator) * write_std)
                layer.log_mix.add_(torch.randn(layer.log_mix.shape, generator=generator))
        save_crma(handle, Path(out_dir))
    return Path(out_dir)
