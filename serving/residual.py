"""CRMA's residual in the serving forward pass, through hooks on the decoder layers.

Two ways to hold the hooks:

- fixed (``fixed_hidden_size``; the engine's with its compiled decode step): installed once,
  reading one pair of buffers that activation fills, zeros for the base model and LoRA-only
  adapters (h + 0 is h, bit for bit). The compiled step (serving/compiled_decode.py) needs
  this: its graph is traced with the hooks in it, and a hook set that came and went would
  send it back to the compiler;
- otherwise installed only while an adapter with a CRMA state is active: the base model and
  LoRA-only adapters run without a single extra Python call.

The per-layer work is the crma_core function the trainer uses (``apply_adapter``:
h + (h @ read) @ wm) on weights folded once at load.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from crma_core.config import CRMAConfig
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

    def __init__(self, model: nn.Module, *, fixed_hidden_size: int | None = None):
        """``fixed_hidden_size``: hold fixed hooks (for a model of that hidden size) at CRMA's
        default attach point and width; an adapter's CRMA they do not fit gets its own."""
        self.decoder = find_decoder(model)
        self.active: LoadedAdapter | None = None
        self._handles: list[Any] = []
        self.fixed = fixed_hidden_size is not None
        if self.fixed:
            defaults = CRMAConfig()
            device = next(model.parameters()).device
            layers = len(self.decoder.layers)
            self._attach = defaults.attach
            # Zero-padded: a narrower CRMA's extra columns add exact zeros.
            self._read = torch.zeros(layers, fixed_hidden_size, defaults.width, device=device)
            self._wm = torch.zeros(layers, defaults.width, fixed_hidden_size, device=device)
            install_layer_hooks(self.decoder, self._attach,
                                lambda i, h: apply_adapter(h, self._read[i], self._wm[i]))

    def signature(self) -> tuple[str, int, bool] | None:
        """(attach point, width) of the fixed hooks, and whether hooks beyond them are on;
        None without fixed hooks."""
        if not self.fixed:
            return None
        return self._attach, self._read.shape[2], bool(self._handles)

    def activate(self, adapter: LoadedAdapter | None) -> None:
        if adapter is self.active:
            return
        self.active = adapter
        remove_hooks(self._handles)
        crma = adapter if adapter is not None and adapter.has_crma else None
        if self.fixed:
            self._read.zero_()
            self._wm.zero_()
            if crma is not None and self._fits(crma):
                width = crma.crma_read.shape[2]
                self._read[:, :, :width] = crma.crma_read
                self._wm[:, :width, :] = crma.crma_wm
                return
        if crma is None:
            return
        # Hooks of its own: no fixed hooks, or ones this adapter's CRMA does not fit.
        read, wm = crma.crma_read, crma.crma_wm
        self._handles = install_layer_hooks(
            self.decoder, crma.crma_attach, lambda i, h: apply_adapter(h, read[i], wm[i]))

    def _fits(self, adapter: LoadedAdapter) -> bool:
        return (adapter.crma_attach == self._attach
                and adapter.crma_read.shape[2] <= self._read.shape[2])

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
