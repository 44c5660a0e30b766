"""Next-token choice for one sequence: greedy at temperature 0, else temperature and nucleus
(top-p) sampling from a per-request generator, so a seed reproduces the draws."""

from __future__ import annotations

import secrets

import torch
from transformers.generation.logits_process import TopPLogitsWarper


class Sampler:
    def __init__(self, *, temperature: float, top_p: float, seed: int | None,
                 device: torch.device | str = "cpu"):
        self.temperature = temperature
        self.top_p = top_p
        self.seed = seed if seed is not None else secrets.randbits(63)
        self.generator = torch.Generator(device=device)
        self.generator.manual_seed(self.seed)
        self._top_p = TopPLogitsWarper(top_p) if top_p < 1.0 else None

    def __call__(self, logits: torch.Tensor) -> int:
        """logits (V,) of the next position → a token id."""
        if self.temperature == 0.0:
            return int(torch.argmax(logits))
        scores = (logits.to(torch.float32) / self.temperature).unsqueeze(0)
        if self._top_p is not None:
            scores = self._top_p(None, scores)
        probs = torch.softmax(scores, dim=-1)
        return int(torch.multinomial(probs, 1, generator=self.generator))
