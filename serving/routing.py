"""Routing a continual run's request to one of its domains (crma_core.routing's two routers).

Centroid router (every candidate carries its domain's centroid): the prompt's features from
the base model, nearest centroid. The merged adapter is taken out by hooks and the CRMA
residual switched off for that one pass, so the features are the base model's, as the
centroids are.

Loss router (otherwise): the domain whose adapter gives the prompt the lowest mean negative
log-likelihood. All candidates are scored in one forward pass: the prompt is repeated once
per candidate and hooks add, row by row, that candidate's LoRA delta and CRMA residual to
the base model (S-LoRA style). Whatever adapter is merged into the weights at the time is
taken out of every row by subtracting its delta, so routing never has to switch the merged
weights.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from crma_core.routing import centroid_scores, decoder_features, mean_prompt_nll, routing_window
from serving.adapters import LoadedAdapter
from serving.requests import Routing
from serving.residual import CRMAResidual, install_layer_hooks, per_row_crma, remove_hooks


def _lora_hooks(model: nn.Module, rows: Sequence[LoadedAdapter], merged: LoadedAdapter | None):
    """Forward hooks adding row i's LoRA delta (minus the merged adapter's) to each layer."""
    plan: dict[str, list[tuple[int | None, Any]]] = {}
    for row, adapter in enumerate(rows):
        for factor in adapter.factors:
            plan.setdefault(factor.module, []).append((row, factor))
    if merged is not None:
        for factor in merged.factors:
            plan.setdefault(factor.module, []).append((None, factor))
    handles = []
    for module_name, entries in plan.items():
        def hook(module, args, output, entries=entries):  # noqa: ANN001
            x = args[0]
            output = output.clone()
            for row, factor in entries:
                if row is None:  # the merged adapter: out of every row
                    output -= (x @ factor.a.T @ factor.b.T) * factor.scale
                else:
                    output[row] += (x[row] @ factor.a.T @ factor.b.T) * factor.scale
            return output
        handles.append(model.get_submodule(module_name).register_forward_hook(hook))
    return handles


@torch.inference_mode()
def prompt_losses(model: nn.Module, residual: CRMAResidual, prompt_ids: list[int],
                  adapters: Sequence[LoadedAdapter], merged: LoadedAdapter | None,
                  num_layers: int) -> list[float]:
    """Mean next-token NLL of the prompt under each adapter (LoRA + CRMA), one pass
    (crma_core.routing's scoring, which a run report's routing accuracy uses too)."""
    ids = routing_window(prompt_ids)
    if len(ids) < 2:
        return [0.0] * len(adapters)
    device = next(model.parameters()).device
    batch = torch.tensor([ids] * len(adapters), device=device)
    active = residual.active
    residual.activate(None)  # CRMA per row below, not the merged adapter's
    handles = _lora_hooks(model, adapters, merged)
    crma = per_row_crma(list(adapters), num_layers)
    attach = next((a.crma_attach for a in adapters if a.has_crma), "output")
    if crma is not None:
        handles += install_layer_hooks(residual.decoder, attach, crma)
    try:
        logits = model(input_ids=batch, use_cache=False).logits
    finally:
        remove_hooks(handles)
        residual.activate(active)
    return [float(v) for v in mean_prompt_nll(logits, batch)]


@torch.inference_mode()
def base_features(model: nn.Module, residual: CRMAResidual, prompt_ids: list[int],
                  merged: LoadedAdapter | None) -> torch.Tensor:
    """The base model's routing features of the prompt (crma_core.routing.decoder_features)
    while ``merged`` stays merged: its delta is subtracted by hooks, CRMA is off."""
    active = residual.active
    residual.activate(None)
    handles = _lora_hooks(model, [], merged)
    try:
        return decoder_features(model.get_decoder(), routing_window(prompt_ids))
    finally:
        remove_hooks(handles)
        residual.activate(active)


def choose_domain(model: nn.Module, residual: CRMAResidual, prompt_ids: list[int],
                  candidates: Sequence[tuple[str, LoadedAdapter]], merged: LoadedAdapter | None,
                  num_layers: int) -> tuple[int, Routing]:
    """(index of the chosen candidate, the decision with every domain's score)."""
    started = time.perf_counter()
    adapters = [a for _, a in candidates]
    if all(a.route_centroid is not None for a in adapters):
        router = "centroid"
        centroids = torch.stack([a.route_centroid for a in adapters])
        scores = centroid_scores(base_features(model, residual, prompt_ids, merged), centroids)
        best = max(range(len(candidates)), key=scores.__getitem__)
    else:
        router = "prompt_loss"
        scores = prompt_losses(model, residual, prompt_ids, adapters, merged, num_layers)
        best = min(range(len(candidates)), key=scores.__getitem__)
    named = {name: round(score, 6) for (name, _), score in zip(candidates, scores, strict=True)}
    return best, Routing(domain=candidates[best][0], scores=named, router=router,
                         ms=(time.perf_counter() - started) * 1000)
