"""An adapter read into memory for serving: LoRA factors per target module and the CRMA
residual with its Sinkhorn already folded in (the weights never change while serving, so
``mixing`` runs once per adapter, at load, not once per forward pass)."""

from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from crma_core.routing import CENTROID_FILE, load_centroid
from serving.errors import AdapterIncompatible
from serving.requests import AdapterSpec
from serving.sources import AdapterFiles

_PREFIX = "base_model.model."
# adapter_config.json settings a plain LoRA has; anything else changes the math we merge.
_UNSUPPORTED = {"use_dora": True, "fan_in_fan_out": True, "lora_bias": True}


@dataclass
class LoraFactor:
    """ΔW = scale · B @ A for one nn.Linear of the base model (W is out×in)."""

    module: str
    a: torch.Tensor  # r×in
    b: torch.Tensor  # out×r
    scale: float

    def delta(self) -> torch.Tensor:
        return (self.b @ self.a) * self.scale


@dataclass
class LoadedAdapter:
    """One adapter in the engine's memory (see ``load_adapter``)."""

    spec: AdapterSpec
    factors: list[LoraFactor]
    crma_read: torch.Tensor | None  # L×d×K float32
    crma_wm: torch.Tensor | None  # L×K×d float32, mixing and gate folded in
    crma_attach: str  # "output" or "input" of every decoder layer
    rank: int
    nbytes: int
    load_ms: float
    loaded_at: float
    route_centroid: torch.Tensor | None = None  # a continual domain's (crma_core.routing)

    @property
    def id(self) -> str:
        return self.spec.id

    @property
    def has_crma(self) -> bool:
        return self.crma_read is not None

    def info(self) -> dict[str, Any]:
        return {"id": self.id, "location": self.spec.location, "rank": self.rank,
                "lora_modules": len(self.factors), "crma": self.has_crma,
                "route_centroid": self.route_centroid is not None,
                "bytes": self.nbytes, "load_ms": round(self.load_ms, 3),
                "loaded_at": self.loaded_at}


def _read_lora_config(lora_dir: Path, adapter_id: str) -> dict[str, Any]:
    try:
        config = json.loads((lora_dir / "adapter_config.json").read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise AdapterIncompatible(f"adapter {adapter_id!r}: unreadable adapter_config.json "
                                  f"({error})", param="adapter") from None
    if config.get("peft_type", "LORA") != "LORA":
        raise AdapterIncompatible(f"adapter {adapter_id!r} is a {config.get('peft_type')} "
                                  "adapter; the engine serves LoRA", param="adapter")
    for key, bad in _UNSUPPORTED.items():
        if config.get(key) == bad:
            raise AdapterIncompatible(f"adapter {adapter_id!r}: {key}={bad} is not supported",
                                      param="adapter")
    if config.get("modules_to_save") or config.get("bias", "none") != "none":
        raise AdapterIncompatible(f"adapter {adapter_id!r} trains whole modules or biases "
                                  "(modules_to_save / bias); the engine serves plain LoRA",
                                  param="adapter")
    return config


def _scale(config: dict[str, Any], module: str, rank: int) -> float:
    """peft's scaling: alpha / r (alpha / sqrt(r) with rsLoRA), alpha per module pattern."""
    alpha = config.get("lora_alpha", 8)
    patterns = config.get("alpha_pattern") or {}
    if patterns:
        from peft.utils.other import get_pattern_key  # importing peft costs ~0.5 s: only here

        alpha = patterns.get(get_pattern_key(list(patterns), module), alpha)
    return alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank


def read_lora(lora_dir: Path, model: nn.Module, adapter_id: str, *,
              dtype: torch.dtype) -> list[LoraFactor]:
    """The LoRA factors of a PEFT directory, checked against ``model``'s linear layers."""
    config = _read_lora_config(lora_dir, adapter_id)
    tensors = load_file(str(lora_dir / "adapter_model.safetensors"))
    pairs: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in tensors.items():
        for part in ("lora_A", "lora_B"):
            suffix = f".{part}.weight"
            if key.startswith(_PREFIX) and key.endswith(suffix):
                pairs.setdefault(key[len(_PREFIX):-len(suffix)], {})[part] = tensor
                break
        else:
            raise AdapterIncompatible(f"adapter {adapter_id!r}: unexpected tensor {key!r} "
                                      "(only lora_A/lora_B are served)", param="adapter")
    if not pairs:
        raise AdapterIncompatible(f"adapter {adapter_id!r} has no LoRA tensors", param="adapter")
    factors = []
    for module_name in sorted(pairs):
        pair = pairs[module_name]
        try:
            module = model.get_submodule(module_name)
        except AttributeError:
            module = None
        if not isinstance(module, nn.Linear) or set(pair) != {"lora_A", "lora_B"}:
            raise AdapterIncompatible(f"adapter {adapter_id!r}: {module_name} is not a linear "
                                      "layer of this base model (adapter for another model?)",
                                      param="adapter")
        a, b = pair["lora_A"], pair["lora_B"]
        out_features, in_features = module.weight.shape
        rank = a.shape[0]
        if a.shape != (rank, in_features) or b.shape != (out_features, rank):
            raise AdapterIncompatible(
                f"adapter {adapter_id!r}: {module_name} LoRA shapes {tuple(a.shape)}, "
                f"{tuple(b.shape)} do not fit the layer's {out_features}×{in_features}",
                param="adapter")
        device = module.weight.device
        factors.append(LoraFactor(module_name, a.to(device, dtype), b.to(device, dtype),
                                  _scale(config, module_name, rank)))
    return factors


def read_crma(crma_dir: Path, *, hidden_size: int, num_layers: int, adapter_id: str,
              device: torch.device) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(read L×d×K, folded write L×K×d, attach point) of a saved CRMA state: the batched
    Sinkhorn of every layer's Λ and the gate, folded into the write weights once."""
    from crma_core.errors import CRMAError
    from crma_core.io import CRMA_WEIGHTS, read_crma_config
    from crma_core.layer import mixed_writes, mixing_matrices

    def refuse(why: str) -> AdapterIncompatible:
        return AdapterIncompatible(f"adapter {adapter_id!r}: unusable CRMA state ({why})",
                                   param="adapter")

    try:
        config, meta = read_crma_config(crma_dir)
        tensors = load_file(str(crma_dir / CRMA_WEIGHTS))
    except (CRMAError, OSError, ValueError, KeyError) as error:
        raise refuse(str(error)) from None
    if (meta.get("hidden_size"), meta.get("num_layers")) != (hidden_size, num_layers):
        raise AdapterIncompatible(
            f"adapter {adapter_id!r}: CRMA state is for hidden size {meta.get('hidden_size')} "
            f"× {meta.get('num_layers')} layers; this model has {hidden_size} × {num_layers}",
            param="adapter")
    shapes = {"read": (hidden_size, config.width), "write": (config.width, hidden_size),
              "log_mix": (config.n, config.n), "_log_alpha": ()}
    expected = {f"layers.{i}.{name}" for i in range(num_layers) for name in shapes}
    if set(tensors) != expected:
        raise refuse(f"tensors {sorted(set(tensors) ^ expected)[:3]} do not match its config")
    stacked = {}
    for name, shape in shapes.items():
        layers = [tensors[f"layers.{i}.{name}"].to(torch.float32) for i in range(num_layers)]
        if any(tuple(t.shape) != shape for t in layers):
            raise refuse(f"{name} is not {shape}")
        stacked[name] = torch.stack(layers)
    with torch.no_grad():
        mixing = mixing_matrices(stacked["log_mix"], config)
        wm = mixed_writes(mixing, stacked["write"], stacked["_log_alpha"], config)
    return stacked["read"].to(device), wm.to(device), config.attach


def load_adapter(spec: AdapterSpec, files: AdapterFiles, model: nn.Module, *,
                 hidden_size: int, num_layers: int) -> LoadedAdapter:
    """Read ``files`` for ``model`` (a plain transformers causal LM, never a PeftModel)."""
    started = time.perf_counter()
    weight = next(model.parameters())
    factors = read_lora(files.lora_dir, model, spec.id, dtype=weight.dtype)
    read = wm = None
    attach = "output"
    if files.crma_dir is not None:
        read, wm, attach = read_crma(files.crma_dir, hidden_size=hidden_size,
                                     num_layers=num_layers, adapter_id=spec.id,
                                     device=weight.device)
    centroid_file = files.lora_dir / CENTROID_FILE
    centroid = load_centroid(centroid_file) if centroid_file.is_file() else None
    if centroid is not None and centroid.shape != ((num_layers + 1) * hidden_size,):
        raise AdapterIncompatible(f"adapter {spec.id!r}: its routing centroid has shape "
                                  f"{tuple(centroid.shape)}, not this model's "
                                  f"({(num_layers + 1) * hidden_size},)", param="adapter")
    tensors = [t for f in factors for t in (f.a, f.b)] + [
        t for t in (read, wm, centroid) if t is not None]
    return LoadedAdapter(spec=spec, factors=factors, crma_read=read, crma_wm=wm,
                         route_centroid=centroid,
                         crma_attach=attach, rank=max(f.a.shape[0] for f in factors),
                         nbytes=sum(t.numel() * t.element_size() for t in tensors),
                         load_ms=(time.perf_counter() - started) * 1000, loaded_at=time.time())
