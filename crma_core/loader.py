"""Put a trained bundle back together for generation: base + LoRA (peft) + CRMA."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from crma_core.artifacts import LORA_DIR
from crma_core.errors import CheckpointError
from crma_core.io import CRMA_CONFIG, load_crma
from crma_core.model import CRMAHandle, get_crma
from crma_core.recipe import load_base_model, load_tokenizer


def load_for_generation(model_dir: Path, bundle_dir: Path, device: str = "cpu",
                        dtype: str = "float32"):
    """(model, tokenizer) ready for ``model.generate``.

    ``model`` is a ``peft.PeftModel`` over the base in ``model_dir`` with the bundle's LoRA,
    in eval mode, with the bundle's CRMA attached when it has one (reach it with
    ``crma_core.model.get_crma(model)``; ``.enabled = False`` turns it off). Only local files
    are read, and only safetensors/JSON.
    """
    from peft import PeftModel

    bundle_dir = Path(bundle_dir)
    weights = bundle_dir / LORA_DIR / "adapter_model.safetensors"
    if not weights.is_file():
        # peft would fall back to a pickled adapter_model.bin (torch.load): refuse instead.
        raise CheckpointError(f"{weights} is missing: bundles load from safetensors only")
    tokenizer = load_tokenizer(Path(model_dir))
    base = load_base_model(Path(model_dir), device=device, dtype=dtype)
    base.config.use_cache = True
    model = PeftModel.from_pretrained(base, str(bundle_dir / LORA_DIR), is_trainable=False)
    if (bundle_dir / CRMA_CONFIG).is_file():
        load_crma(model, bundle_dir)
    model.eval()
    return model, tokenizer


def crma_of(model: nn.Module) -> CRMAHandle | None:
    """The CRMA handle of a model returned by ``load_for_generation`` (None if LoRA only)."""
    return get_crma(model)
