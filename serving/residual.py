"""CRMA's residual in the serving forward pass, through hooks on the decoder layers.

Hooks are installed only while an adapter with a CRMA state is active: the base model and
LoRA-only adapters run without a single extra Python call. The per-layer work is the
crma_core function the trainer uses (``apply_adapter``: h + (h @ read) @ wm) on weights
folded once at load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crma_core.layer import apply_adapter
from crma_core.model import find_decoder
from serving.adapters import LoadedAdapter

# (layer index, hidden states B×T×d) -> adapted hidden states
LayerFn = Callable[[int, torch.Tensor], torch.Tensor]


def install_layer_hooks(decoder: nn.Module, attach: str, fn: LayerFn) -> list[Any]:
    """Hook ``fn`` onto every decoder layer's output (or input); returns the hook handles."""
    handles = []
    for index, layer in enumerate(decoder.layers):
        if attach == "output":
            def output_hook(module, args, output, index=index):  # noqa: ANN001
                if isinstance(output, tuple):
                    return (fn(index, output[0]), *output[1:])
                return fn(index, output)
            handles.append(layer.register_forward_hook(output_hook))
        else:
            def input_hook(module, args, kwargs, index=index):  # noqa: ANN001
                if args:
                    return (fn(index, args[0]), *args[1:]), kwargs
                return args, dict(kwargs, hidden_states=fn(index, kwargs["hidden_states"]))
            handles.append(layer.register_forward_pre_hook(input_hook, with_kwargs=True))
    return handles


def remove_hooks(handles: list[Any]) -> None:
    for handle in handles:
        handle.remove()
    handles.clear()


class CRMAResidual:
    """The CRMA of the active adapter, applied on every decoder layer."""

    def __init__(self, model: nn.Module):
        self.decoder = find_decoder(model)
        self.active: LoadedAdapter | None = None
        self._handles: list[Any] = []

    def activate(self, adapter: LoadedAdapter | None) -> None:
        if adapter is self.active:
            return
        remove_hooks(self._handles)
        self.active = adapter
        if adapter is None or not adapter.has_crma:
            return
        read, wm = adapter.crma_read, adapter.crma_wm
        self._handles = install_layer_hooks(
            self.decoder, adapter.crma_attach, lambda i, h: apply_adapter(h, read[i], wm[i]))

    def forget(self, adapter: LoadedAdapter) -> None:
        if self.active is adapter:
            self.activate(None)


def per_row_crma(adapters: list[LoadedAdapter | None], num_layers: int) -> LayerFn | None:
    """A layer function applying row i's adapter CRMA to row i of the batch (rows without
    CRMA pass unchanged), or None when no row has one."""
    with_crma = [a for a in adapters if a is not None and a.has_crma]
    if not with_crma:
        return None
    d, k = with_crma[0].crma_read.shape[1:]
    read = torch.zeros(len(adapters), num_layers, d, k, device=with_crma[0].crma_read.device)
    wm = torch.zeros(len(adapters), num_layers, k, d, device=read.device)
    for row, adapter in enumerate(adapters):
        if adapter is not None and adapter.has_crma:
            kk = adapter.crma_read.shape[2]
            read[row, :, :, :kk] = adapter.crma_read
            wm[row, :, :kk, :] = adapter.crma_wm

    def apply(index: int, h: torch.Tensor) -> torch.Tensor:
        z = torch.bmm(h.to(torch.float32), read[:, index])
        return h + torch.bmm(z, wm[:, index]).to(h.dtype)
    return apply
