"""The transformers + peft engine: one base model in memory, adapters attached on demand.

A request's adapter is loaded in the caller's thread (cold: from its source's files) and
pinned in the LRU; the engine thread (serving/scheduler.py) merges its LoRA into the weights
when its group runs and applies its CRMA through hooks.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

from serving.adapter_cache import AdapterCache
from serving.adapters import LoadedAdapter, load_adapter
from serving.compiled_decode import CompiledDecode
from serving.engine import EngineConfig
from serving.errors import EngineUnavailable, InvalidRequest
from serving.prompts import Prompt, build_prompt, eos_ids
from serving.requests import AdapterSpec, GenerationRequest, Routing, parse
from serving.residual import CRMAResidual
from serving.routing import choose_domain
from serving.scheduler import Scheduler
from serving.sequence import Sequence
from serving.sources import AdapterSource
from serving.stream import GenerationStream
from serving.weights import MergedWeights

log = logging.getLogger(__name__)


class TransformersEngine:
    def __init__(self, model_dir: Path, *, model_id: str, source: AdapterSource,
                 config: EngineConfig | None = None):
        from crma_core.model import find_decoder
        from crma_core.recipe import load_base_model, load_tokenizer

        self.config = config or EngineConfig()
        self.model_id = model_id
        self.model_dir = Path(model_dir)
        self.source = source
        self.started_at = time.time()
        self.model = load_base_model(self.model_dir, device=self.config.device,
                                     dtype=self.config.dtype).eval().requires_grad_(False)
        self.model.config.use_cache = True
        self.tokenizer = load_tokenizer(self.model_dir)
        decoder = find_decoder(self.model)
        self.num_layers = len(decoder.layers)
        text_config = self.model.config.get_text_config()
        self.hidden_size = int(text_config.hidden_size)
        model_context = int(getattr(text_config, "max_position_embeddings", 0) or 0) or 2048
        self.context_length = min(self.config.context_length or model_context, model_context)
        self.eos_ids = eos_ids(self.tokenizer, self.model.generation_config)
        self.weights = MergedWeights(self.model, self.model_dir)
        # Fixed hooks under the compiled decode step: its graph holds them (serving/residual.py).
        self.residual = CRMAResidual(
            self.model, fixed_hidden_size=self.hidden_size if self.config.compile else None)
        self.compiled = CompiledDecode(self.model, self.residual)
        if self.config.compile:
            self.compiled.warm_up(self.tokenizer("Warm up.").input_ids * 2)
        self.cache = AdapterCache(max_count=self.config.max_adapters,
                                  max_bytes=self.config.max_adapter_bytes,
                                  load=self._load, on_evict=self._evicted)
        self.scheduler = Scheduler(model=self.model, weights=self.weights,
                                   residual=self.residual, compiled=self.compiled,
                                   release=self.cache.release,
                                   num_layers=self.num_layers, max_batch=self.config.max_batch,
                                   max_waiting=self.config.max_waiting,
                                   switch_every=self.config.switch_every,
                                   batching=self.config.batching)
        self.scheduler.start()

    # -- adapters ------------------------------------------------------------------------------
    def _load(self, spec: AdapterSpec) -> LoadedAdapter:
        files = self.source.resolve(spec)
        adapter = load_adapter(spec, files, self.model, hidden_size=self.hidden_size,
                               num_layers=self.num_layers)
        self.weights.check(adapter)
        return adapter

    def _evicted(self, adapter: LoadedAdapter) -> None:
        """Unmerge an adapter leaving the cache, on the engine thread (between two steps)."""
        def forget() -> None:
            self.weights.forget(adapter)
            self.residual.forget(adapter)
        try:
            self.scheduler.call(forget)
        except EngineUnavailable:
            pass

    def load_adapter(self, spec: AdapterSpec | dict) -> dict[str, Any]:
        spec = spec if isinstance(spec, AdapterSpec) else parse(AdapterSpec, spec)
        adapter, cold = self.cache.acquire(spec)
        self.cache.release(adapter)
        return dict(adapter.info(), cold=cold)

    def unload_adapter(self, adapter_id: str) -> dict[str, Any]:
        adapter = self.cache.remove(adapter_id)
        return {"id": adapter.id, "unloaded": True}

    def adapters(self) -> dict[str, Any]:
        return self.cache.snapshot()

    # -- generation ----------------------------------------------------------------------------
    def _prepare(self, request: GenerationRequest | dict) -> tuple[GenerationRequest, Prompt]:
        request = request if isinstance(request, GenerationRequest) else parse(GenerationRequest,
                                                                              request)
        if request.model is not None and request.model != self.model_id:
            raise InvalidRequest(f"this engine serves {self.model_id!r}, not {request.model!r}",
                                 param="model", code="model_mismatch")
        if request.routes is not None and len(request.routes) > self.config.max_adapters:
            raise InvalidRequest(f"routes names {len(request.routes)} domains; this engine "
                                 f"holds at most {self.config.max_adapters} adapters at once",
                                 param="routes")
        prompt = build_prompt(self.tokenizer, request, context_length=self.context_length,
                              max_tokens_cap=self.config.max_tokens_cap)
        return request, prompt

    def _acquire_routes(self, request: GenerationRequest) -> list[tuple[str, LoadedAdapter]]:
        acquired: list[tuple[str, LoadedAdapter]] = []
        try:
            for route in request.routes:
                acquired.append((route.domain, self.cache.acquire(route.adapter)[0]))
        except BaseException:
            for _, adapter in acquired:
                self.cache.release(adapter)
            raise
        return acquired

    def submit(self, request: GenerationRequest | dict) -> GenerationStream:
        request, prompt = self._prepare(request)
        self.scheduler.check_room()  # refuse before paying for a cold adapter
        adapter = None
        candidates = None
        if request.adapter is not None:
            adapter = self.cache.acquire(request.adapter)[0]
        elif request.routes is not None:
            candidates = self._acquire_routes(request)
        stream = GenerationStream(request.request_id)
        seq = Sequence(request=request, prompt_ids=prompt.ids,
                       max_new_tokens=prompt.max_new_tokens, adapter=adapter,
                       candidates=candidates, tokenizer=self.tokenizer, eos_ids=self.eos_ids,
                       stream=stream, device=self.model.device)
        try:
            self.scheduler.submit(seq)
        except BaseException:
            for held in ([adapter] if adapter else []) + [a for _, a in candidates or ()]:
                self.cache.release(held)
            raise
        return stream

    def route(self, request: GenerationRequest | dict) -> Routing:
        request, prompt = self._prepare(request)
        if request.routes is None:
            raise InvalidRequest("route needs routes (the candidate domains)", param="routes")
        candidates = self._acquire_routes(request)
        try:
            future = self.scheduler.call(lambda: choose_domain(
                self.model, self.residual, prompt.ids, candidates, self.weights.merged,
                self.num_layers))
            return future.result()[1]
        finally:
            for _, adapter in candidates:
                self.cache.release(adapter)

    # -- state ---------------------------------------------------------------------------------
    def health(self) -> dict[str, Any]:
        parameters = sum(p.numel() for p in self.model.parameters())
        weight_bytes = sum(p.numel() * p.element_size() for p in self.model.parameters())
        adapters = self.cache.snapshot()
        merged = self.weights.merged
        return {
            "status": "ok",
            "model": {"id": self.model_id, "dtype": self.config.dtype,
                      "device": str(self.model.device), "context_length": self.context_length,
                      "parameters": parameters, "bytes": weight_bytes},
            "adapters": {key: adapters[key] for key in
                         ("count", "bytes", "max_count", "max_bytes", "hits", "misses")}
            | {"loaded": [a["id"] for a in adapters["adapters"]],
               "merged": merged.id if merged is not None else None,
               "switches": self.weights.switches},
            "scheduler": self.scheduler.stats(),
            "compiled_decode": self.compiled.stats(),
            "memory": {"rss_bytes": resident_bytes(), "model_bytes": weight_bytes,
                       "adapter_bytes": adapters["bytes"],
                       "kv_cache_bytes": self.scheduler.kv_bytes(),
                       "restore_copies_bytes": self.weights.extra_bytes()},
            "uptime_s": round(time.time() - self.started_at, 3),
        }

    def close(self) -> None:
        self.scheduler.close()


def resident_bytes() -> int | None:
    """This process's resident memory (Linux /proc), or None where that is not available."""
    try:
        with open("/proc/self/statm") as handle:
            pages = int(handle.read().split()[1])
    except (OSError, ValueError, IndexError):
        return None
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")
