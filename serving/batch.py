"""Several sequences decoding in one forward pass: their KV caches side by side, left-padded
to one width, with an attention mask hiding the padding and each row's own positions.

A sequence joins after its own prefill (its cache is padded into the batch) and leaves when
it finishes (its row is dropped and the padding every remaining row shares is trimmed), so
requests join and leave between any two decode steps (continuous batching). Only caches of
plain full-attention layers can be padded this way; for other caches (sliding windows) each
sequence decodes in a batch of its own.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from transformers.cache_utils import DynamicCache, DynamicLayer


def can_batch(cache: DynamicCache) -> bool:
    return all(type(layer) is DynamicLayer for layer in cache.layers)


class DecodeBatch:
    def __init__(self, row: Any, cache: DynamicCache, length: int):
        self.rows: list[Any] = [row]
        self.cache = cache
        self.lengths = [length]  # real tokens of each row in the cache
        self.width = length  # cache positions (real + left padding)

    def __len__(self) -> int:
        return len(self.rows)

    def add(self, row: Any, cache: DynamicCache, length: int) -> None:
        """Pad a single-row cache (batch 1, ``length`` tokens) into the batch."""
        width = max(self.width, length)
        for mine, theirs in zip(self.cache.layers, cache.layers, strict=True):
            mine.keys = torch.cat([_left_pad(mine.keys, width - self.width),
                                   _left_pad(theirs.keys, width - length)])
            mine.values = torch.cat([_left_pad(mine.values, width - self.width),
                                     _left_pad(theirs.values, width - length)])
        self.rows.append(row)
        self.lengths.append(length)
        self.width = width

    def remove(self, rows: list[Any]) -> None:
        """Drop finished rows and the left padding every remaining row shares."""
        if not rows:
            return
        gone = {id(r) for r in rows}
        keep = [i for i, r in enumerate(self.rows) if id(r) not in gone]
        self.rows = [self.rows[i] for i in keep]
        self.lengths = [self.lengths[i] for i in keep]
        if not keep:
            self.cache = None
            self.width = 0
            return
        trim = self.width - max(self.lengths)
        index = torch.tensor(keep, dtype=torch.long)
        for layer in self.cache.layers:
            index = index.to(layer.keys.device)
            layer.keys = layer.keys.index_select(0, index)[..., trim:, :]
            layer.values = layer.values.index_select(0, index)[..., trim:, :]
        self.width -= trim

    def step_inputs(self, device: torch.device) -> dict[str, torch.Tensor]:
        """attention_mask (B×(width+1)) and position_ids (B×1) for the next decode step; none
        when nothing is padded (the model then counts positions from the cache itself, the
        very call ``generate`` makes)."""
        if all(length == self.width for length in self.lengths):
            return {}
        positions = torch.tensor(self.lengths, dtype=torch.long, device=device).unsqueeze(1)
        mask = torch.zeros(len(self.rows), self.width + 1, dtype=torch.long, device=device)
        for i, length in enumerate(self.lengths):
            mask[i, self.width - length:] = 1
        return {"attention_mask": mask, "position_ids": positions}

    def advance(self) -> None:
        self.lengths = [length + 1 for length in self.lengths]
        self.width += 1

    def nbytes(self) -> int:
        if self.cache is None:
            return 0
        return sum(t.numel() * t.element_size() for layer in self.cache.layers
                   for t in (layer.keys, layer.values) if t is not None)


def _left_pad(tensor: torch.Tensor, count: int) -> torch.Tensor:
    """Pad B×H×T×D with ``count`` zero positions before the first (masked out anyway)."""
    return F.pad(tensor, (0, 0, count, 0)) if count else tensor
