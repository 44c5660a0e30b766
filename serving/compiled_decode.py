"""One sequence's decode step through torch.compile.

Why: a decode step of a small model on CPU spends a large share of its time outside the
matrix products, in Python and in one dispatch per small op (norms, rotary embeddings,
residual adds: some 1,500 per step for a 30-layer model). Inductor fuses those into a few
kernels while the matrix products stay the same BLAS calls, so the tokens match eager
decoding (tests/serving/test_compiled_decode.py; docs/benchmarks.md has the speed).

Scope, and why:

- one sequence per forward pass: a batch already shares the per-op overhead among its rows,
  and a batch size other than 1 would be a second graph to compile (dynamo specialises a
  size of 1);
- compiled once, at engine start, on a short dummy sequence (``warm_up``), before the engine
  serves. Compiling needs the model to itself (a forward running on another thread
  meanwhile changes module state the trace guards on) and takes a minute or two on a small
  CPU (less from inductor's on-disk cache);
- nothing recompiles after that: a step the graph's guards do not cover (an adapter whose
  CRMA needs other hooks, see serving/residual.py) runs eagerly instead of stalling the
  engine for a compile.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import torch
from transformers.cache_utils import DynamicCache

from serving.residual import CRMAResidual

log = logging.getLogger(__name__)


class CompiledDecode:
    def __init__(self, model: Any, residual: CRMAResidual):
        self.model = model
        self.residual = residual
        self.state = "off"  # off | ready | failed
        self.error: str | None = None
        self.warm_s: float | None = None
        self.signature: tuple[str, int, bool] | None = None  # the CRMA hooks the graph holds
        self.steps = 0  # decode steps run compiled
        self.eager_steps = 0  # single-sequence steps the graph did not cover
        self.forward: Any = None  # the compiled model.forward, once warmed

    def warm_up(self, prompt_ids: list[int]) -> None:
        """Compile, on the thread about to serve nothing else; a failure leaves the engine
        decoding eagerly (``state`` "failed", ``error`` says why)."""
        if len(prompt_ids) < 2:
            raise ValueError("warm_up needs a prompt of at least 2 tokens (a length of 1 "
                             "would be compiled as a constant)")
        started = time.perf_counter()
        try:
            self.forward = torch.compile(self.model.forward, dynamic=True)
            with torch.inference_mode():
                cache = DynamicCache(config=self.model.config)
                ids = torch.tensor([prompt_ids], device=self.model.device)
                logits = self.model(input_ids=ids, cache=cache, use_cache=True,
                                    logits_to_keep=1).logits
                # The first step compiles; the second, under the serving stance, proves the
                # graph covers the next one (a longer cache) without recompiling.
                logits = self.forward(input_ids=_greedy(logits), cache=cache,
                                      use_cache=True).logits
                self._call(_greedy(logits), cache)
        except Exception as error:  # noqa: BLE001 - eager decoding still serves
            log.warning("compiling the decode step failed; decoding eagerly", exc_info=True)
            self.state, self.error = "failed", f"{type(error).__name__}: {error}"
            self.forward = None
            return
        self.signature = self.residual.signature()
        self.warm_s = round(time.perf_counter() - started, 3)
        self.state = "ready"
        log.info("decode step compiled in %.1f s", self.warm_s)

    def decode(self, tokens: torch.Tensor, cache: DynamicCache) -> torch.Tensor | None:
        """This step's logits (B×1×V), or None where the compiled graph does not cover it
        and nothing ran (the caller decodes eagerly)."""
        if self.state != "ready" or tokens.shape[0] != 1:
            return None
        if self.residual.signature() != self.signature:
            self.eager_steps += 1
            return None
        length = cache.get_seq_length()
        try:
            logits = self._call(tokens, cache)
        except Exception as error:  # noqa: BLE001
            if cache.get_seq_length() != length:
                raise  # it ran part of the way: the step fails like an eager one would
            if not self.eager_steps:
                log.warning("the compiled decode step refused a step (%s); such steps run "
                            "eagerly", error)
            self.eager_steps += 1
            return None
        self.steps += 1
        return logits

    def _call(self, tokens: torch.Tensor, cache: DynamicCache) -> torch.Tensor:
        # A recompile would hold the engine for a minute: raise instead (decode eagerly).
        with torch.compiler.set_stance("fail_on_recompile"):
            return self.forward(input_ids=tokens, cache=cache, use_cache=True).logits

    def stats(self) -> dict[str, Any]:
        return {"state": self.state, "warm_s": self.warm_s, "error": self.error,
                "signature": list(self.signature) if self.signature else None,
                "steps": self.steps, "eager_steps": self.eager_steps}


def _greedy(logits: torch.Tensor) -> torch.Tensor:
    return logits[:, -1:].argmax(-1)
