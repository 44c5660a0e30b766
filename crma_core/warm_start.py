"""Start a new run from an earlier run's adapter: a finished bundle (``Recipe.export_artifacts``)
or a training checkpoint (``Recipe.save_checkpoint``).

Only the weights carry over: the LoRA matrices and, when the run has CRMA, its read, write,
mixing logits and gate are copied into the freshly built model before its first step. The
optimizer's moments, the learning-rate schedule, the clipper and the data order start anew:
this is a new run that begins where the other one's adapter ended, not a resume (a resume
must reproduce the interrupted run bit for bit, and needs that run's exact settings and
data; ``Recipe.setup(resume_from=...)`` does that).

The source must have the same adapter shape (LoRA rank and targets, CRMA n and r, same base
model); anything else is a ``CheckpointError`` naming the first mismatch, never a partial
load.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from crma_core.artifacts import LORA_DIR
from crma_core.errors import CheckpointError
from crma_core.io import (CRMA_CONFIG, CRMA_WEIGHTS, load_crma_into, load_tensors,
                          read_crma_config)
from crma_core.model import CRMAHandle

CHECKPOINT_WEIGHTS = "trainable.safetensors"
BUNDLE_WEIGHTS = f"{LORA_DIR}/adapter_model.safetensors"


def source_kind(source: Path) -> str:
    """"checkpoint" or "bundle" (CheckpointError when ``source`` is neither)."""
    source = Path(source)
    if (source / CHECKPOINT_WEIGHTS).is_file():
        return "checkpoint"
    if (source / BUNDLE_WEIGHTS).is_file():
        return "bundle"
    raise CheckpointError(f"{source} holds neither a checkpoint ({CHECKPOINT_WEIGHTS}) nor "
                          f"an adapter bundle ({BUNDLE_WEIGHTS})")


def load_adapter_weights(*, model: nn.Module, crma: CRMAHandle | None,
                         source: Path) -> dict[str, Any]:
    """Copy the source's LoRA (and CRMA) weights into ``model`` (a PeftModel) and ``crma`` in
    place, so an optimizer built on those parameters keeps pointing at them.

    Returns {"kind": "checkpoint" | "bundle", "lora_tensors": int, "crma": bool}."""
    source = Path(source)
    kind = source_kind(source)
    has_crma = (source / CRMA_CONFIG).is_file()
    if crma is not None and not has_crma:
        raise CheckpointError(f"{source} has no CRMA weights, and this run trains CRMA")
    if crma is None and has_crma:
        raise CheckpointError(f"{source} was trained with CRMA, and this run has none: "
                              "dropping it would start from a different model")
    if crma is not None:  # checked before anything is copied: no partial load
        config, _ = read_crma_config(source)
        if (config.n, config.r) != (crma.config.n, crma.config.r):
            raise CheckpointError(f"the source's CRMA has n={config.n}, r={config.r}; this "
                                  f"run's has n={crma.config.n}, r={crma.config.r}")
        _require_same(crma.state_dict(), load_tensors(source / CRMA_WEIGHTS))
    if kind == "checkpoint":
        count = _copy_trainable(model, load_tensors(source / CHECKPOINT_WEIGHTS))
    else:
        count = _copy_peft_lora(model, load_tensors(source / BUNDLE_WEIGHTS))
    if crma is not None:
        load_crma_into(crma, source)
    return {"kind": kind, "lora_tensors": count, "crma": crma is not None}


def _copy_trainable(model: nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """A checkpoint's ``trainable.safetensors``: parameter names as in this PeftModel."""
    own = {name: p for name, p in model.named_parameters() if p.requires_grad}
    _require_same(own, tensors)
    with torch.no_grad():
        for name, parameter in own.items():
            parameter.copy_(tensors[name].to(parameter.device, parameter.dtype))
    return len(own)


def _copy_peft_lora(model: nn.Module, tensors: dict[str, torch.Tensor]) -> int:
    """A bundle's ``lora/adapter_model.safetensors``: peft's saved names (no adapter name)."""
    from peft.utils import get_peft_model_state_dict, set_peft_model_state_dict

    own = get_peft_model_state_dict(model, save_embedding_layers=False)
    _require_same(own, tensors)
    result = set_peft_model_state_dict(model, tensors)
    unexpected = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
    if unexpected:
        raise CheckpointError(f"LoRA tensors not loaded: {unexpected[:4]}")
    return len(own)


def _require_same(own: dict[str, torch.Tensor], saved: dict[str, torch.Tensor]) -> None:
    missing = sorted(set(own) - set(saved))
    extra = sorted(set(saved) - set(own))
    if missing or extra:
        raise CheckpointError(
            f"the source adapter does not match this model: missing {missing[:3]}, "
            f"unexpected {extra[:3]} (other target modules, or another base model?)")
    for name, tensor in own.items():
        if tuple(tensor.shape) != tuple(saved[name].shape):
            raise CheckpointError(
                f"{name} has shape {tuple(saved[name].shape)} in the source and "
                f"{tuple(tensor.shape)} here (another rank, or another base model?)")
