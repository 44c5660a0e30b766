"""The base model's weights with at most one adapter's LoRA merged into them.

Serving one adapter at the base model's speed means no LoRA branch in the forward pass:
W ← W₀ + s·B·A for every target layer. Unmerging restores W₀ exactly, bit for bit, instead
of subtracting the delta again (W + Δ − Δ drifts by a rounding error per switch, badly in
bfloat16). The exact W₀ comes from the model's own safetensors files (memory-mapped: the
page cache holds them, no second resident copy); a weight the files do not hold verbatim
(renamed on load, converted) is copied once into memory before it is first changed.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from serving.adapters import LoadedAdapter
from serving.errors import AdapterIncompatible


class MergedWeights:
    """Tracks which adapter's LoRA is merged into ``model`` and switches it."""

    def __init__(self, model: nn.Module, model_dir: Path | None):
        self.model = model
        self.merged: LoadedAdapter | None = None
        self.switches = 0
        self._files: dict[str, Path] = {}  # parameter name -> safetensors file holding it
        self._verified: set[str] = set()  # weights whose file copy equals the loaded one
        self._copies: dict[str, torch.Tensor] = {}  # W₀ of weights not verbatim in the files
        for path in sorted(Path(model_dir).glob("*.safetensors")) if model_dir else []:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    self._files.setdefault(key, path)
        shared: dict[int, int] = {}
        for _, parameter in model.named_parameters(remove_duplicate=False):
            shared[parameter.data_ptr()] = shared.get(parameter.data_ptr(), 0) + 1
        self._tied = {ptr for ptr, count in shared.items() if count > 1}

    def check(self, adapter: LoadedAdapter) -> None:
        """Refuse an adapter that would change a tied weight (e.g. an LM head shared with
        the embeddings): merging it would change both."""
        for factor in adapter.factors:
            if self._weight(factor.module).data_ptr() in self._tied:
                raise AdapterIncompatible(
                    f"adapter {adapter.id!r} targets {factor.module}, whose weight is tied to "
                    "another layer; it cannot be merged", param="adapter")

    def activate(self, adapter: LoadedAdapter | None) -> float:
        """Make ``adapter``'s LoRA (None: none) the merged one; returns the milliseconds spent."""
        if adapter is self.merged:
            return 0.0
        started = time.perf_counter()
        with torch.no_grad():
            if self.merged is not None:
                self._restore(self.merged)
                self.merged = None
            if adapter is not None:
                self._remember([factor.module for factor in adapter.factors])
                for factor in adapter.factors:
                    weight = self._weight(factor.module)
                    if weight.dtype == torch.float32:
                        weight.addmm_(factor.b, factor.a, alpha=factor.scale)
                    else:  # sum in float32, round once
                        merged = weight.float().addmm_(factor.b.float(), factor.a.float(),
                                                       alpha=factor.scale)
                        weight.copy_(merged)
                self.merged = adapter
        self.switches += 1
        return (time.perf_counter() - started) * 1000

    def forget(self, adapter: LoadedAdapter) -> None:
        """Unmerge ``adapter`` if it is the merged one (before it leaves the cache)."""
        if self.merged is adapter:
            self.activate(None)

    def _weight(self, module: str) -> torch.Tensor:
        return self.model.get_submodule(module).weight

    def _remember(self, modules: list[str]) -> None:
        """Before a weight first changes, make sure its W₀ can be restored: check once that
        the file holds it verbatim, else keep a copy."""
        unknown = [m for m in modules
                   if f"{m}.weight" not in self._verified and f"{m}.weight" not in self._copies]
        by_file: dict[Path | None, list[str]] = {}
        for module in unknown:
            by_file.setdefault(self._files.get(f"{module}.weight"), []).append(module)
        for path, group in by_file.items():
            handle = safe_open(str(path), framework="pt") if path is not None else None
            for module in group:
                name, weight = f"{module}.weight", self._weight(module)
                stored = handle.get_tensor(name) if handle is not None else None
                if stored is not None and stored.shape == weight.shape and \
                        torch.equal(stored.to(weight.device, weight.dtype), weight):
                    self._verified.add(name)
                else:
                    self._copies[name] = weight.detach().clone()

    def _restore(self, adapter: LoadedAdapter) -> None:
        by_file: dict[Path, list[str]] = {}
        for factor in adapter.factors:
            name = f"{factor.module}.weight"
            if name in self._copies:
                self._weight(factor.module).copy_(self._copies[name])
            else:
                by_file.setdefault(self._files[name], []).append(factor.module)
        for path, modules in by_file.items():
            with safe_open(str(path), framework="pt") as handle:
                for module in modules:
                    weight = self._weight(module)
                    weight.copy_(handle.get_tensor(f"{module}.weight").to(weight.dtype))

    def extra_bytes(self) -> int:
        """Memory held for restoring weights the files could not give back."""
        return sum(t.numel() * t.element_size() for t in self._copies.values())
